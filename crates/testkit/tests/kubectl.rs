//! Real kubectl against the fake API server: what a cluster answers, the
//! fake answers, word for word (CRUD, selectors, conflicts, CRDs), and it
//! refuses what a cluster refuses (unknown tokens, RBAC).

use std::path::{Path, PathBuf};
use std::process::Command;

use tresor_testkit::KubeServer;

struct Kubectl {
    server: KubeServer,
    dir: tempfile::TempDir,
    admin: PathBuf,
}

impl Kubectl {
    fn start() -> Kubectl {
        let server = KubeServer::start();
        let dir = tempfile::tempdir().unwrap();
        let admin = server.kubeconfig(dir.path());
        Kubectl { server, dir, admin }
    }

    /// (exit success, stdout, stderr) of kubectl with this kubeconfig. The
    /// fake serves no OpenAPI documents, so `-f` files go with
    /// `--validate=false` (client-side schema validation needs them).
    fn run_with(&self, kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", kubeconfig)
            .arg(format!("--cache-dir={}", self.dir.path().join("cache").display()))
            .args(args)
            .output()
            .expect("kubectl (in the base image)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    }

    /// As the administrator.
    fn k(&self, args: &[&str]) -> (bool, String, String) {
        self.run_with(&self.admin, args)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// A kubeconfig for service account `ns/name`, with a token from `kubectl create token`.
    fn as_service_account(&self, ns: &str, name: &str) -> PathBuf {
        let (ok, token, err) = self.k(&["create", "token", name, "-n", ns]);
        assert!(ok && !token.is_empty(), "{err}");
        self.server.kubeconfig_with_token(&self.dir.path().join(format!("kubeconfig-{ns}-{name}")), name, &token)
    }
}

const CM: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: shop\n  labels:\n    app: shop\ndata:\n  mode: fast\n";
const CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.example.com\nspec:\n  group: example.com\n  scope: Namespaced\n  names:\n    plural: widgets\n    singular: widget\n    kind: Widget\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    subresources:\n      status: {}\n    schema:\n      openAPIV3Schema:\n        type: object\n        x-kubernetes-preserve-unknown-fields: true\n";
const WIDGET: &str = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\n  namespace: shop\nspec:\n  size: 3\n";

#[test]
fn real_kubectl_works_against_the_fake() {
    let c = Kubectl::start();
    let k = |args: &[&str]| c.k(args);
    let (ok, out, err) = k(&["version", "-o", "json"]);
    assert!(ok && out.contains("\"gitVersion\": \"v1.30.0-tresor-fake\""), "{out}{err}");
    let (_, out, _) = k(&["api-resources", "--no-headers"]);
    assert!(out.lines().any(|l| l.starts_with("deployments ") && l.contains("apps/v1") && l.contains("Deployment")), "{out}");
    assert_eq!(k(&["create", "namespace", "shop"]).1, "namespace/shop created");
    let cm = c.file("cm.yaml", CM);
    let (_, out, err) = k(&["create", "--validate=false", "-f", &cm]);
    assert_eq!(out, "configmap/settings created", "{err}");
    let (ok, _, err) = k(&["create", "--validate=false", "-f", &cm]);
    assert!(!ok && err.ends_with("configmaps \"settings\" already exists"), "{err}");
    assert_eq!(k(&["get", "cm", "-n", "shop", "-l", "app=shop", "-o", "jsonpath={.items[*].metadata.name}"]).1, "settings");
    assert_eq!(k(&["get", "cm", "-n", "shop", "-l", "app!=shop", "-o", "name"]).1, "configmap/kube-root-ca.crt");
    assert_eq!(k(&["get", "cm", "settings", "-n", "shop", "-o", "jsonpath={.data.mode}"]).1, "fast");
    let stale = c.file("stale.yaml", &CM.replace("  name: settings\n", "  name: settings\n  resourceVersion: \"1\"\n"));
    let (ok, _, err) = k(&["replace", "--validate=false", "-f", &stale]);
    assert!(!ok && err.contains("Operation cannot be fulfilled on configmaps \"settings\": the object has been modified"), "{err}");
    assert_eq!(k(&["label", "namespace", "shop", "team=a"]).1, "namespace/shop labeled");
    assert_eq!(k(&["get", "namespaces", "-l", "team=a", "-o", "name"]).1, "namespace/shop");
    assert_eq!(
        k(&["create", "--validate=false", "-f", &c.file("crd.yaml", CRD)]).1,
        "customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"
    );
    assert_eq!(k(&["create", "--validate=false", "-f", &c.file("w.yaml", WIDGET)]).1, "widget.example.com/w1 created");
    assert_eq!(k(&["get", "widgets", "-n", "shop", "-o", "name"]).1, "widget.example.com/w1");
    assert_eq!(k(&["delete", "cm", "settings", "-n", "shop"]).1, "configmap \"settings\" deleted");
    let (ok, _, err) = k(&["get", "cm", "settings", "-n", "shop"]);
    assert!(!ok && err == "Error from server (NotFound): configmaps \"settings\" not found", "{err}");
}

#[test]
fn a_token_from_kubectl_create_token_is_a_service_account_that_rbac_governs() {
    let c = Kubectl::start();
    assert!(c.k(&["create", "namespace", "shop"]).0);
    assert!(c.k(&["create", "namespace", "tresor"]).0);
    let (ok, _, err) = c.k(&["create", "token", "tresor", "-n", "tresor"]);
    assert!(!ok && err == "error: failed to create token: serviceaccounts \"tresor\" not found", "{err}");
    assert_eq!(c.k(&["create", "serviceaccount", "tresor", "-n", "tresor"]).1, "serviceaccount/tresor created");
    let sa = c.as_service_account("tresor", "tresor");
    let run = |args: &[&str]| c.run_with(&sa, args);

    // Nothing bound yet: discovery and self-reviews only, as the bootstrap policy allows.
    assert!(run(&["version"]).0);
    assert_eq!(run(&["auth", "can-i", "list", "pods", "-n", "shop"]), (false, "no".into(), String::new()));
    let (ok, _, err) = run(&["get", "pods", "-n", "shop"]);
    assert!(!ok);
    assert_eq!(
        err,
        "Error from server (Forbidden): pods is forbidden: User \"system:serviceaccount:tresor:tresor\" cannot list resource \"pods\" in API group \"\" in the namespace \"shop\""
    );
    let (ok, _, err) = run(&["create", "namespace", "drill"]);
    assert!(!ok);
    assert_eq!(
        err,
        "Error from server (Forbidden): namespaces is forbidden: User \"system:serviceaccount:tresor:tresor\" cannot create resource \"namespaces\" in API group \"\" at the cluster scope"
    );

    // A Role in shop, bound to the account's namespace group; a ClusterRole for jobs' status only.
    assert!(c.k(&["create", "role", "reader", "-n", "shop", "--verb=get,list", "--resource=pods,configmaps"]).0);
    assert!(c.k(&["create", "rolebinding", "reader", "-n", "shop", "--role=reader", "--group=system:serviceaccounts:tresor"]).0);
    assert!(c.k(&["create", "clusterrole", "job-status", "--verb=patch", "--resource=jobs/status"]).0);
    assert!(c.k(&["create", "clusterrolebinding", "job-status", "--clusterrole=job-status", "--serviceaccount=tresor:tresor"]).0);
    assert!(c.k(&["create", "role", "one-map", "-n", "shop", "--verb=delete", "--resource=configmaps", "--resource-name=settings"]).0);
    assert!(c.k(&["create", "rolebinding", "one-map", "-n", "shop", "--role=one-map", "--serviceaccount=tresor:tresor"]).0);
    let yes = |args: &[&str]| run(&[&["auth", "can-i"], args].concat()).1;
    assert_eq!(yes(&["list", "pods", "-n", "shop"]), "yes");
    assert_eq!(yes(&["list", "pods", "-n", "default"]), "no", "a Role is for its namespace only");
    assert_eq!(yes(&["watch", "pods", "-n", "shop"]), "no");
    assert_eq!(yes(&["patch", "jobs", "--subresource=status", "-n", "shop"]), "yes");
    assert_eq!(yes(&["patch", "jobs", "-n", "shop"]), "no", "the status subresource is not the object");
    assert_eq!(yes(&["delete", "configmap/settings", "-n", "shop"]), "yes");
    assert_eq!(yes(&["delete", "configmap/other", "-n", "shop"]), "no", "resourceNames");
    assert_eq!(run(&["get", "pods", "-n", "shop", "-o", "name"]), (true, String::new(), String::new()));
    let (_, list, _) = run(&["auth", "can-i", "--list", "-n", "shop", "--no-headers"]);
    assert!(list.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["pods", "[]", "[]", "[get", "list]"]), "{list}");
    assert!(list.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["jobs.batch/status", "[]", "[]", "[patch]"]), "{list}");

    // A token nobody issued is not an identity: 401.
    let forged = c.server.kubeconfig_with_token(&c.dir.path().join("forged"), "x", "not-a-token");
    let (ok, _, err) = c.run_with(&forged, &["get", "pods", "-n", "shop"]);
    assert!(!ok && err.ends_with("error: You must be logged in to the server (Unauthorized)"), "{err}");

    // The test knob refuses a resource to everyone but the administrator, in the same words.
    c.server.forbid("configmaps");
    let (ok, _, err) = run(&["get", "configmaps", "-n", "shop"]);
    assert!(!ok && err.starts_with("Error from server (Forbidden): configmaps is forbidden: User \"system:serviceaccount:tresor:tresor\" cannot list resource \"configmaps\""), "{err}");
    assert!(c.k(&["get", "configmaps", "-n", "shop"]).0);
}

#[test]
fn status_is_a_subresource_the_object_cannot_change() {
    let c = Kubectl::start();
    assert!(c.k(&["create", "namespace", "shop"]).0);
    assert!(c.k(&["create", "--validate=false", "-f", &c.file("crd.yaml", CRD)]).0);
    assert!(c.k(&["create", "--validate=false", "-f", &c.file("w.yaml", &format!("{WIDGET}status:\n  ready: true\n"))]).0);
    let ready = || c.k(&["get", "widget", "w1", "-n", "shop", "-o", "jsonpath={.status.ready}"]).1;
    assert_eq!(ready(), "", "a new object's status is the server's to set");
    assert!(c.k(&["patch", "widget", "w1", "-n", "shop", "--type=merge", "-p", r#"{"status":{"ready":true},"spec":{"size":4}}"#]).0);
    assert_eq!(ready(), "", "the object's own endpoint leaves status alone");
    assert_eq!(c.k(&["get", "widget", "w1", "-n", "shop", "-o", "jsonpath={.spec.size}"]).1, "4");
    let (ok, _, err) = c.k(&[
        "patch",
        "widget",
        "w1",
        "-n",
        "shop",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"ready":true},"spec":{"size":5}}"#,
    ]);
    assert!(ok, "{err}");
    assert_eq!(ready(), "true");
    assert_eq!(c.k(&["get", "widget", "w1", "-n", "shop", "-o", "jsonpath={.spec.size}"]).1, "4", "and status leaves the rest alone");
    let (ok, _, err) = c.k(&["patch", "widget", "w1", "-n", "shop", "--type=json", "-p", r#"[{"op":"remove","path":"/spec/size"}]"#]);
    assert!(!ok, "a JSON patch is refused, not misread as a merge patch");
    assert_eq!(
        err,
        "error: application/json-patch+json is not supported by example.com/v1, Kind=Widget: this fake applies merge patches only (not JSON patches)"
    );
    assert_eq!(c.k(&["get", "widget", "w1", "-n", "shop", "-o", "jsonpath={.spec.size}"]).1, "4");
}

const RESTRICTED_VIOLATIONS: &str = "allowPrivilegeEscalation != false (container \"NAME\" must set securityContext.allowPrivilegeEscalation=false), \
     unrestricted capabilities (container \"NAME\" must set securityContext.capabilities.drop=[\"ALL\"]), \
     runAsNonRoot != true (pod or container \"NAME\" must set securityContext.runAsNonRoot=true), \
     seccompProfile (pod or container \"NAME\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")";

#[test]
fn pod_security_refuses_pods_and_the_job_controller_reports_it() {
    let c = Kubectl::start();
    assert!(c.k(&["create", "namespace", "hard"]).0);
    assert!(c.k(&["label", "namespace", "hard", "pod-security.kubernetes.io/enforce=restricted"]).0);
    let (ok, _, err) = c.k(&["run", "plain", "--image=busybox", "-n", "hard"]);
    assert!(!ok);
    let violations = RESTRICTED_VIOLATIONS.replace("NAME", "plain");
    assert_eq!(
        err,
        format!("Error from server (Forbidden): pods \"plain\" is forbidden: violates PodSecurity \"restricted:latest\": {violations}")
    );

    // A Job is admitted with a warning; its pod is refused when the job controller makes it.
    let (ok, out, err) = c.k(&["create", "job", "backup", "--image=busybox", "-n", "hard"]);
    assert!(ok, "{err}");
    assert_eq!(out, "job.batch/backup created");
    let violations = RESTRICTED_VIOLATIONS.replace("NAME", "backup");
    assert_eq!(err, format!("Warning: would violate PodSecurity \"restricted:latest\": {violations}"));
    let events = |name: &str, what: &str| {
        let selector = format!("involvedObject.name={name}");
        c.k(&["get", "events", "-n", "hard", "--field-selector", &selector, "-o", &format!("jsonpath={what}")]).1
    };
    assert_eq!(events("backup", "{.items[*].reason}"), "FailedCreate");
    let message = events("backup", "{.items[0].message}");
    assert!(message.starts_with("Error creating: pods \"backup-"), "{message}");
    assert!(message.ends_with(&format!("is forbidden: violates PodSecurity \"restricted:latest\": {violations}")), "{message}");
    assert_eq!(c.k(&["get", "pods", "-n", "hard", "-o", "name"]).1, "");

    // `warn` admits, with the same words.
    assert!(c.k(&["create", "namespace", "soft"]).0);
    assert!(c.k(&["label", "namespace", "soft", "pod-security.kubernetes.io/warn=restricted"]).0);
    let (ok, out, err) = c.k(&["run", "plain", "--image=busybox", "-n", "soft"]);
    assert!(ok && out == "pod/plain created", "{err}");
    assert_eq!(
        err,
        format!("Warning: would violate PodSecurity \"restricted:latest\": {}", RESTRICTED_VIOLATIONS.replace("NAME", "plain"))
    );
}

#[test]
fn controllers_make_what_a_cluster_makes_and_collect_what_it_collects() {
    let c = Kubectl::start();
    assert!(c.k(&["create", "namespace", "shop"]).0);
    assert_eq!(
        c.k(&["get", "serviceaccounts,configmaps", "-n", "shop", "-o", "name"]).1,
        "serviceaccount/default\nconfigmap/kube-root-ca.crt"
    );
    assert!(c.k(&["create", "service", "clusterip", "api", "--tcp=80:8080", "-n", "shop"]).0);
    assert_eq!(c.k(&["get", "endpoints", "api", "-n", "shop", "-o", "name"]).1, "endpoints/api");
    let slices = c.k(&[
        "get",
        "endpointslices",
        "-n",
        "shop",
        "-l",
        "kubernetes.io/service-name=api",
        "-o",
        "jsonpath={.items[*].metadata.ownerReferences[0].name}",
    ]);
    assert_eq!(slices.1, "api");

    // A job's pod runs on the node, and its success completes the Job.
    assert!(c.k(&["create", "job", "once", "--image=busybox", "-n", "shop"]).0);
    let pod = c.k(&["get", "pods", "-n", "shop", "-l", "job-name=once", "-o", "jsonpath={.items[0].metadata.name}"]).1;
    assert!(pod.starts_with("once-"), "{pod}");
    assert_eq!(c.k(&["get", "pod", &pod, "-n", "shop", "-o", "jsonpath={.spec.nodeName}"]).1, "fake-node");
    let done = r#"{"status":{"phase":"Succeeded"}}"#;
    assert!(c.k(&["patch", "pod", &pod, "-n", "shop", "--subresource=status", "--type=merge", "-p", done]).0);
    assert_eq!(c.k(&["get", "job", "once", "-n", "shop", "-o", "jsonpath={.status.succeeded}"]).1, "1");

    // kubectl deletes in the background: the pod goes with its Job.
    assert_eq!(c.k(&["delete", "job", "once", "-n", "shop"]).1, "job.batch \"once\" deleted");
    assert_eq!(c.k(&["get", "pods", "-n", "shop", "-o", "name"]).1, "");
    // Orphaned, the pod stays and forgets its owner.
    assert!(c.k(&["create", "job", "twice", "--image=busybox", "-n", "shop"]).0);
    assert!(c.k(&["delete", "job", "twice", "-n", "shop", "--cascade=orphan"]).0);
    let left = c.k(&["get", "pods", "-n", "shop", "-o", "jsonpath={.items[*].metadata.ownerReferences}"]);
    assert_eq!(left, (true, String::new(), String::new()));
    assert_eq!(c.k(&["get", "pods", "-n", "shop", "-o", "name"]).1.lines().count(), 1);

    // A pod no node takes stays Pending, and the scheduler says why.
    assert!(c.k(&["run", "picky", "--image=busybox", "-n", "shop", "--overrides", r#"{"spec":{"nodeSelector":{"disk":"ssd"}}}"#]).0);
    let selector = "involvedObject.name=picky";
    let why =
        c.k(&["get", "events", "-n", "shop", "--field-selector", selector, "-o", "jsonpath={.items[*].reason}: {.items[*].message}"]).1;
    assert_eq!(
        why,
        "FailedScheduling: 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    );
}

/// What a restore rewrites is validated as a cluster validates it: a
/// namespace name (a rehearsal's `<ns>-dr`) is a DNS label of at most 63
/// characters, an Ingress host (a rehearsal's `dr-` prefix) a DNS
/// subdomain or `*.` and one, a node port (which a rehearsal drops) one
/// Service's and only an external one's; kubectl prints the refusals as for
/// a cluster.
#[test]
fn what_a_restore_rewrites_is_validated_as_a_cluster_validates_it() {
    let c = Kubectl::start();
    let long = "a".repeat(64);
    let (ok, _, err) = c.k(&["create", "namespace", &long]);
    assert!(!ok);
    assert_eq!(
        err,
        format!("The Namespace \"{long}\" is invalid: metadata.name: Invalid value: \"{long}\": must be no more than 63 characters")
    );
    assert_eq!(c.k(&["create", "namespace", &"a".repeat(63)]).1, format!("namespace/{} created", "a".repeat(63)));
    assert!(c.k(&["create", "namespace", "shop"]).0);
    let ingress = |host: &str| {
        let tls = "  tls:\n  - hosts: [\"shop.example.com\"]\n";
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web\n  namespace: shop\nspec:\n{tls}  rules:\n  - host: \"{host}\"\n"
        )
    };
    let (ok, _, err) = c.k(&["create", "--validate=false", "-f", &c.file("bad.yaml", &ingress("dr-*.example.com"))]);
    assert!(!ok);
    assert_eq!(
        err,
        "The Ingress \"web\" is invalid: spec.rules[0].host: Invalid value: \"dr-*.example.com\": a wildcard DNS-1123 subdomain must start \
         with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with \
         an alphanumeric character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    );
    let (_, out, err) = c.k(&["create", "--validate=false", "-f", &c.file("good.yaml", &ingress("*.dr-example.com"))]);
    assert_eq!(out, "ingress.networking.k8s.io/web created", "{err}");
    assert_eq!(c.k(&["get", "ing", "web", "-n", "shop", "-o", "jsonpath={.spec.rules[0].host}"]).1, "*.dr-example.com");
    let (ok, _, err) =
        c.k(&["patch", "ingress", "web", "-n", "shop", "--type=merge", "-p", r#"{"spec":{"rules":[{"host":"Shop.example.com"}]}}"#]);
    assert!(
        !ok && err.starts_with(
            "The Ingress \"web\" is invalid: spec.rules[0].host: Invalid value: \"Shop.example.com\": a lowercase RFC 1123 subdomain"
        ),
        "{err}"
    );

    // A node port belongs to one Service, and only to an externally reachable one.
    let service = |name: &str, kind: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  type: {kind}\n  ports:\n  - port: 80\n    nodePort: 30080\n"
        )
    };
    let (_, out, err) = c.k(&["create", "--validate=false", "-f", &c.file("a.yaml", &service("web", "NodePort"))]);
    assert_eq!(out, "service/web created", "{err}");
    let (ok, _, err) = c.k(&["create", "--validate=false", "-f", &c.file("b.yaml", &service("web-dr", "LoadBalancer"))]);
    assert!(!ok);
    assert_eq!(err, "The Service \"web-dr\" is invalid: spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated");
    let (ok, _, err) = c.k(&["create", "--validate=false", "-f", &c.file("c.yaml", &service("internal", "ClusterIP"))]);
    assert!(!ok);
    assert_eq!(err, "The Service \"internal\" is invalid: spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'");
}

#[test]
fn a_deleted_namespace_is_terminating_before_it_is_gone() {
    let c = Kubectl::start();
    c.server.terminate_namespaces_in(std::time::Duration::from_secs(600));
    assert_eq!(c.k(&["create", "namespace", "shop"]).1, "namespace/shop created");
    assert_eq!(c.k(&["create", "configmap", "settings", "-n", "shop"]).1, "configmap/settings created");
    let deleted = std::time::Instant::now();
    let (_, out, err) = c.k(&["delete", "namespace", "shop", "--wait=false"]);
    assert_eq!(out, "namespace \"shop\" deleted", "{err}");
    assert_eq!(c.k(&["get", "ns", "shop", "-o", "jsonpath={.status.phase}"]).1, "Terminating");
    assert_eq!(c.k(&["get", "cm", "-n", "shop", "-o", "name"]).1, "", "its objects go first");
    let (ok, _, err) = c.k(&["create", "configmap", "again", "-n", "shop"]);
    assert!(!ok);
    assert_eq!(
        err,
        "error: failed to create configmap: configmaps \"again\" is forbidden: unable to create new content in namespace shop because it is being terminated"
    );
    let (ok, _, err) = c.k(&["create", "namespace", "shop"]);
    assert!(!ok);
    assert_eq!(err, "Error from server (AlreadyExists): namespaces \"shop\" already exists");
    let (ok, _, err) = c.k(&["delete", "namespace", "shop", "--wait=false"]);
    assert!(!ok);
    assert_eq!(
        err,
        "Error from server (Conflict): Operation cannot be fulfilled on namespaces \"shop\": The system is ensuring all content is \
         removed from this namespace.  Upon completion, this namespace will automatically be purged by the system."
    );
    // Its time up while kubectl watches for its deletion, the watch sees it go.
    c.server.terminate_namespaces_in(deleted.elapsed() + std::time::Duration::from_secs(10));
    let (_, out, err) = c.k(&["wait", "--for=delete", "namespace/shop", "--timeout=30s"]);
    assert_eq!(out, "namespace/shop condition met", "{err}");
    let (ok, _, err) = c.k(&["get", "ns", "shop"]);
    assert!(!ok && err == "Error from server (NotFound): namespaces \"shop\" not found", "{err}");
    assert_eq!(c.k(&["create", "namespace", "shop"]).1, "namespace/shop created");
}
