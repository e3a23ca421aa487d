//! Kubernetes resources against the in-process fake API server, populated
//! with real kubectl as the cluster's administrator, while tresor runs as
//! the shipped service account (deploy/kubernetes's namespace, account
//! and roles, with a token from `kubectl create token`): backup with
//! filters, runtime fields stripped, one YAML file per object.

use tresor_testkit::KubeServer;

use super::*;

pub(super) struct Cluster {
    pub server: KubeServer,
    /// tresor's: the shipped service account `tresor/tresor`.
    pub kubeconfig: PathBuf,
    /// The harness's: the administrator, for kubectl.
    admin: PathBuf,
    dir: tempfile::TempDir,
}

/// What deploy/kubernetes gives tresor's identity, applied as a cluster administrator would.
const SHIPPED: [&str; 4] = ["namespace.yaml", "serviceaccount.yaml", "rbac.yaml", "leader-election.yaml"];

const OBJECTS: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    team: web
    pod-security.kubernetes.io/enforce: restricted
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 80
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
  labels:
    app: web
data:
  mode: fast
  greeting: hello
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: shop
type: Opaque
data:
  password: czNjcmV0
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  namespace: shop
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 1Gi
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
---
apiVersion: example.com/v1
kind: Widget
metadata:
  name: w1
  namespace: shop
spec:
  size: 3
---
apiVersion: v1
kind: Event
metadata:
  name: web.1
  namespace: shop
reason: Scheduled
message: noise
---
apiVersion: v1
kind: Namespace
metadata:
  name: other
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: elsewhere
  namespace: other
data:
  x: y
"#;

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(OBJECTS)
    }

    /// A cluster with tresor's shipped identity and these objects (YAML documents).
    pub fn start_with(objects: &str) -> Cluster {
        let server = KubeServer::start();
        let dir = tempfile::tempdir().unwrap();
        let admin = server.kubeconfig(dir.path());
        let mut c = Cluster { server, kubeconfig: admin.clone(), admin, dir };
        for file in SHIPPED {
            let path = format!("{}/../../deploy/kubernetes/{file}", env!("CARGO_MANIFEST_DIR"));
            c.kubectl_stdin(&["create", "--validate=false", "-f", "-"], &fs::read_to_string(path).unwrap());
        }
        let token = c.kubectl(&["create", "token", "tresor", "-n", "tresor"]);
        assert!(token.status.success(), "kubectl create token: {}", String::from_utf8_lossy(&token.stderr));
        let token = String::from_utf8(token.stdout).unwrap();
        c.kubeconfig = c.server.kubeconfig_with_token(&c.dir.path().join("kubeconfig-tresor"), "tresor", token.trim());
        let file = c.dir.path().join("objects.yaml");
        fs::write(&file, objects).unwrap();
        // Namespaces and the CRD first, as kubectl needs them to exist.
        let first = |d: &&str| d.contains("kind: Namespace") || d.contains("kind: CustomResourceDefinition");
        for doc in objects.split("---\n").filter(first) {
            c.kubectl_stdin(&["create", "--validate=false", "-f", "-"], doc);
        }
        for doc in objects.split("---\n").filter(|d| !d.trim().is_empty() && !first(d)) {
            c.kubectl_stdin(&["create", "--validate=false", "-f", "-"], doc);
        }
        c
    }

    pub(super) fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .env("KUBECONFIG", &self.admin)
            .arg(format!("--cache-dir={}", self.dir.path().join("cache").display()))
            .args(args)
            .output()
            .unwrap()
    }

    pub(super) fn kubectl_stdin(&self, args: &[&str], input: &str) {
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", &self.admin)
            .arg(format!("--cache-dir={}", self.dir.path().join("cache").display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

pub(super) fn tresor(env: &Env, c: &Cluster, args: &[&str]) -> Output {
    env.cmd(args).env("KUBECONFIG", &c.kubeconfig).output().unwrap()
}

/// A cluster, and a repository holding one backup of its `shop` namespace.
fn shop_backed_up() -> (Env, Cluster) {
    let env = Env::new();
    env.ok(&["init"]);
    let c = Cluster::start();
    assert!(tresor(&env, &c, &["backup", "k8s://", "--include-namespaces", "shop"]).status.success());
    (env, c)
}

#[test]
fn a_namespace_is_backed_up_object_by_object_without_runtime_fields() {
    let env = Env::new();
    env.ok(&["init"]);
    let c = Cluster::start();
    let out = tresor(&env, &c, &["backup", "k8s://", "--include-namespaces", "sh*"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = env.ok(&["ls", "latest"]);
    // The slice's name is the endpoint slice controller's to choose.
    let files: Vec<&str> = listing
        .lines()
        .filter(|l| l.ends_with(".yaml"))
        .map(|l| if l.starts_with("/namespaces/shop/discovery.k8s.io/EndpointSlice/web-") { "EndpointSlice web-*" } else { l })
        .collect();
    assert_eq!(
        files,
        [
            "/cluster/apiextensions.k8s.io/CustomResourceDefinition/widgets.example.com.yaml",
            "/cluster/core/Namespace/shop.yaml",
            "/namespaces/shop/apps/Deployment/web.yaml",
            "/namespaces/shop/core/ConfigMap/kube-root-ca.crt.yaml",
            "/namespaces/shop/core/ConfigMap/settings.yaml",
            "/namespaces/shop/core/Endpoints/web.yaml",
            "/namespaces/shop/core/PersistentVolumeClaim/data.yaml",
            "/namespaces/shop/core/Secret/creds.yaml",
            "/namespaces/shop/core/Service/web.yaml",
            "/namespaces/shop/core/ServiceAccount/default.yaml",
            "EndpointSlice web-*",
            "/namespaces/shop/example.com/Widget/w1.yaml",
        ],
        "events, other namespaces and unrelated cluster objects are left out"
    );
    let cm = env.ok(&["dump", "latest", "/namespaces/shop/core/ConfigMap/settings.yaml"]);
    let v: serde_json::Value = serde_json::to_value(serde_norway::from_str::<serde_json::Value>(&cm).unwrap()).unwrap();
    assert_eq!(v["data"]["greeting"], "hello");
    assert_eq!((v["apiVersion"].as_str(), v["kind"].as_str()), (Some("v1"), Some("ConfigMap")));
    for gone in ["uid", "resourceVersion", "creationTimestamp", "managedFields", "generation"] {
        assert!(v["metadata"].get(gone).is_none(), "{gone} stripped: {cm}");
    }
    let snap = &env.json(&["snapshots"])[0];
    assert_eq!(snap["source"]["kind"], "k8s");
    assert_eq!(snap["source"]["consistency"]["objects"], 12);
    assert_eq!(snap["source"]["consistency"]["namespaces"], serde_json::json!(["shop"]));

    // A selector, and a resource the API refuses: the rest is saved, the refusal named, exit 3.
    c.server.forbid("secrets");
    let out =
        tresor(&env, &c, &["backup", "k8s://", "--include-namespaces", "shop", "--include-cluster-resources", "false", "-l", "app=web"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("warning: not backed up: secrets: secrets is forbidden: User \"system:serviceaccount:tresor:tresor\" cannot list resource \"secrets\" in API group \"\" at the cluster scope\n"),
        "{err}"
    );
    let listing = env.ok(&["ls", "latest"]);
    let files: Vec<&str> = listing.lines().filter(|l| l.ends_with(".yaml")).collect();
    assert_eq!(files, ["/namespaces/shop/apps/Deployment/web.yaml", "/namespaces/shop/core/ConfigMap/settings.yaml"]);

    // A custom resource's definition the API refuses: named, never dropped
    // in silence, for the resource cannot be restored into a new cluster without it.
    c.server.forbid("customresourcedefinitions");
    let out = tresor(&env, &c, &["backup", "k8s://", "--include-namespaces", "shop"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let crd = "customresourcedefinitions.apiextensions.k8s.io widgets.example.com: customresourcedefinitions.apiextensions.k8s.io \"widgets.example.com\" is forbidden: \
               User \"system:serviceaccount:tresor:tresor\" cannot get resource \"customresourcedefinitions\" in API group \"apiextensions.k8s.io\" at the cluster scope";
    assert!(err.contains(&format!("warning: not backed up: {crd}\n")), "{err}");
    assert!(env.ok(&["ls", "latest"]).contains("/namespaces/shop/example.com/Widget/"), "the custom resources themselves are saved");

    let dead = tresor_testkit::net::free_port();
    let cfg = env.path("dead-kubeconfig");
    fs::write(&cfg, fs::read_to_string(&c.kubeconfig).unwrap().replace(&c.server.url(), &format!("http://127.0.0.1:{dead}"))).unwrap();
    let out = env.cmd(&["backup", "k8s://"]).env("KUBECONFIG", &cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err, "tresor: error: k8s://: API discovery failed: cannot reach the API server: Connection refused (os error 111)\n");
}

/// An object as kubectl shows it, without what the API sets at runtime.
pub(super) fn shown(c: &Cluster, kind: &str, ns: &str, name: &str) -> serde_json::Value {
    let out = c.kubectl(&["get", kind, name, "-n", ns, "-o", "json"]);
    assert!(out.status.success(), "kubectl get {kind} {ns}/{name}: {}", String::from_utf8_lossy(&out.stderr));
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = v["metadata"].as_object_mut().unwrap();
    for k in ["uid", "resourceVersion", "creationTimestamp", "managedFields", "generation", "namespace"] {
        m.remove(k);
    }
    v.as_object_mut().unwrap().remove("status");
    if kind == "service" {
        v["spec"].as_object_mut().unwrap().remove("clusterIP");
    }
    v
}

const KINDS: [(&str, &str); 6] = [
    ("deployment", "web"),
    ("service", "web"),
    ("configmap", "settings"),
    ("secret", "creds"),
    ("persistentvolumeclaim", "data"),
    ("widget", "w1"),
];

#[test]
fn a_namespace_round_trips_under_a_new_name_field_by_field() {
    let env = Env::new();
    env.ok(&["init"]);
    let c = Cluster::start();
    let before: Vec<serde_json::Value> = KINDS.iter().map(|(k, n)| shown(&c, k, "shop", n)).collect();
    let out = tresor(&env, &c, &["backup", "k8s://", "--include-namespaces", "shop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(c.kubectl(&["delete", "namespace", "shop"]).status.success());
    assert!(c.kubectl(&["delete", "crd", "widgets.example.com"]).status.success());

    // The plan first: nothing changes.
    let plan = tresor(&env, &c, &["restore", "latest", "--to", "k8s://", "--namespace-mapping", "shop:shop-restored", "--dry-run"]);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.contains("\nwould create  CustomResourceDefinition widgets.example.com\nwould create  Namespace shop-restored\n"),
        "{text}"
    );
    assert!(text.ends_with("12 objects: 0 created, 0 updated, 4 skipped, 0 failed (dry run: nothing changed)\n"), "{text}");
    assert!(!c.kubectl(&["get", "namespace", "shop-restored"]).status.success(), "a dry run creates nothing");

    // Velero's spelling, several pairs after one flag.
    let mappings = ["--namespace-mappings", "shop:shop-restored,absent:elsewhere"];
    let out = tresor(&env, &c, &[&["restore", "latest", "--to", "k8s://", "--json"][..], &mappings].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "completed");
    let results = report["results"].as_array().unwrap().iter();
    let order: Vec<&str> = results.filter(|r| r["result"] != "skipped").map(|r| r["object"].as_str().unwrap()).collect();
    assert_eq!(
        order,
        [
            "CustomResourceDefinition widgets.example.com",
            "Namespace shop-restored",
            "PersistentVolumeClaim shop-restored/data",
            "ConfigMap shop-restored/settings",
            "Secret shop-restored/creds",
            "Deployment shop-restored/web",
            "Service shop-restored/web",
            "Widget shop-restored/w1",
        ],
        "dependency order"
    );
    let after: Vec<serde_json::Value> = KINDS.iter().map(|(k, n)| shown(&c, k, "shop-restored", n)).collect();
    assert_eq!(after, before, "every object, field by field");

    // Again onto the existing objects: skipped and said so, or updated when asked.
    let out = tresor(&env, &c, &["restore", "latest", "--to", "k8s://", "--namespace-mapping", "shop:shop-restored"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("skipped       ConfigMap shop-restored/settings: it exists; --existing update replaces it\n"), "{text}");
    assert!(text.ends_with("12 objects: 0 created, 0 updated, 12 skipped, 0 failed\n"), "{text}");
    assert!(c.kubectl(&["patch", "configmap", "settings", "-n", "shop-restored", "-p", r#"{"data":{"mode":"slow"}}"#]).status.success());
    let out =
        tresor(&env, &c, &["restore", "latest", "--to", "k8s://", "--namespace-mapping", "shop:shop-restored", "--existing", "update"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("12 objects: 0 created, 9 updated, 3 skipped, 0 failed\n"), "the default account is updated too: {text}");
    assert_eq!(shown(&c, "configmap", "shop-restored", "settings"), before[2], "updated back to the snapshot's version");
}

/// The cluster's controllers make Endpoints, EndpointSlices, default
/// ServiceAccounts and `kube-root-ca.crt` as soon as a Service or a
/// namespace exists, and may make any object between tresor's look and its
/// create: restores complete every time, and say what they left to the cluster.
#[test]
fn restores_meet_live_controllers_and_complete_every_time() {
    let (env, c) = shop_backed_up();
    let out = tresor(&env, &c, &["restore", "latest", "--to", "k8s://", "--namespace-mapping", "shop:copy"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "skipped       ConfigMap copy/kube-root-ca.crt: made by the cluster in every namespace: the API server's CA\n",
        "skipped       Endpoints copy/web: made by the cluster: the endpoints of a Service with a selector\n",
        "skipped       ServiceAccount copy/default: made by the cluster in every namespace; --existing update restores its settings\n",
    ] {
        assert!(text.contains(line), "{line}{text}");
    }
    assert!(
        text.lines().any(|l| l.starts_with("skipped       EndpointSlice copy/web-")
            && l.ends_with(": made by the cluster: the endpoint slice of a Service with a selector")),
        "{text}"
    );
    assert!(c.kubectl(&["get", "endpoints", "web", "-n", "copy"]).status.success(), "the cluster made them");

    // A controller makes the ConfigMaps between tresor's look and its create: 409, taken as existing.
    c.server.race("configmaps");
    let out = tresor(&env, &c, &["restore", "latest", "--to", "k8s://", "--namespace-mapping", "shop:raced"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("skipped       ConfigMap raced/settings: made meanwhile by the cluster; --existing update replaces it\n"),
        "{text}"
    );
    let out = tresor(&env, &c, &["restore", "latest", "--to", "k8s://", "--namespace-mapping", "shop:raced2", "--existing", "update"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("updated       ConfigMap raced2/settings: made meanwhile by the cluster, then replaced\n"), "{text}");
    assert!(text.contains("updated       ServiceAccount raced2/default\n"), "{text}");
    assert_eq!(c.kubectl(&["get", "cm", "settings", "-n", "raced2", "-o", "jsonpath={.data.greeting}"]).stdout, b"hello");

    // A namespace the objects need but the snapshot lacks is made when
    // missing and never replaced, even with `--existing update`.
    assert!(c.kubectl(&["label", "namespace", "copy", "pod-security.kubernetes.io/enforce=restricted"]).status.success());
    // The Namespace object matches no selector of the workload's.
    let without_namespaces = ["backup", "k8s://", "--include-namespaces", "shop", "-l", "app=web"];
    assert!(tresor(&env, &c, &without_namespaces).status.success());
    let out = tresor(&env, &c, &["restore", "latest", "--to", "k8s://", "--namespace-mapping", "shop:copy", "--existing", "update"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let labels = &shown(&c, "namespace", "", "copy")["metadata"]["labels"];
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted", "{labels}");
}

#[test]
fn a_failing_custom_resource_is_reported_and_the_rest_is_restored() {
    let (env, c) = shop_backed_up();
    c.server.deny_create("widgets");
    let out = tresor(&env, &c, &["restore", "latest", "--to", "k8s://", "--namespace-mapping", "shop:copy"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "failed        Widget copy/w1: admission webhook \"validate.example.com\" denied the request: Widget w1 is not allowed here\n"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("12 objects: 6 created, 0 updated, 5 skipped, 1 failed\n"),
        "the CRD exists still (skipped), the rest created: {text}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tresor: restore partial: 1 of 12 objects failed; first: Widget copy/w1: admission webhook \"validate.example.com\" denied the request: Widget w1 is not allowed here\n"
    );
    assert!(c.kubectl(&["get", "deployment", "web", "-n", "copy"]).status.success());
}

/// A directory of objects damaged in the repository is one failed result,
/// named with the damage; the other objects are restored.
#[test]
fn a_damaged_directory_of_objects_is_reported_and_the_rest_is_restored() {
    let (env, c) = shop_backed_up();
    let widgets = Path::new("/namespaces/shop/example.com/Widget");
    let tree = super::repair::damage_tree(&env, "latest", widgets);
    let out = tresor(&env, &c, &["restore", "latest", "--to", "k8s://", "--namespace-mapping", "shop:copy", "--no-cache"]);
    assert_eq!(out.status.code(), Some(3));
    let damage = tresor_engine::Error::corrupt("blob", tree, "it fails authentication");
    let failed = format!("{}/: its objects were not read: {damage}", widgets.display());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("failed        {failed}\n")), "{text}");
    assert!(text.ends_with("12 objects: 6 created, 0 updated, 5 skipped, 1 failed\n"), "the rest restored: {text}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), format!("tresor: restore partial: 1 of 12 objects failed; first: {failed}\n"));
    assert!(c.kubectl(&["get", "deployment", "web", "-n", "copy"]).status.success());
}

/// Against a real cluster when `TRESOR_E2E_KUBECONFIG` names its kubeconfig:
/// a throwaway namespace with a ConfigMap and a Secret is backed up,
/// deleted, restored under another name and compared. Skipped (and said
/// so) without it.
#[test]
fn end_to_end_against_a_real_cluster_when_one_is_given() {
    let Some(kubeconfig) = std::env::var_os("TRESOR_E2E_KUBECONFIG") else {
        eprintln!("skipped: TRESOR_E2E_KUBECONFIG is not set (no real cluster to test against)");
        return;
    };
    let env = Env::new();
    env.ok(&["init"]);
    let ns = format!("tresor-e2e-{}", std::process::id());
    let kubectl = |args: &[&str]| Command::new("kubectl").env("KUBECONFIG", &kubeconfig).args(args).output().unwrap();
    assert!(kubectl(&["create", "namespace", &ns]).status.success());
    assert!(kubectl(&["-n", &ns, "create", "configmap", "settings", "--from-literal=mode=fast"]).status.success());
    assert!(kubectl(&["-n", &ns, "create", "secret", "generic", "creds", "--from-literal=password=s3cret"]).status.success());
    let run = |args: &[&str]| env.cmd(args).env("KUBECONFIG", &kubeconfig).output().unwrap();
    assert!(run(&["backup", "k8s://", "--include-namespaces", &ns]).status.success());
    assert!(kubectl(&["delete", "namespace", &ns, "--wait=true"]).status.success());
    let copy = format!("{ns}-restored");
    let out = run(&["restore", "latest", "--to", "k8s://", "--namespace-mapping", &format!("{ns}:{copy}")]);
    let restored = kubectl(&["-n", &copy, "get", "configmap", "settings", "-o", "jsonpath={.data.mode}"]);
    let _ = kubectl(&["delete", "namespace", &copy, "--wait=false"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&restored.stdout), "fast");
}

pub(super) fn names(c: &Cluster, what: &str) -> Vec<String> {
    let out = c.kubectl(&["get", what, "-n", "shop", "-o", "name"]);
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

/// A daemon on BackupPlan shop/nightly (there already), once it is ready; its log in `daemon.log`.
pub(super) fn plan_daemon(env: &Env) -> super::daemon::Daemon {
    let port = tresor_testkit::net::free_port();
    let data = env.path("data");
    let child = env
        .cmd(&[
            "daemon",
            "--plan-resource",
            "k8s://shop/nightly",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("TRESOR_TICK_MS", "100")
        .stderr(fs::File::create(env.path("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let d = super::daemon::Daemon { child, port };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while super::daemon::http(port, "GET", "/readyz", None).0 != 200 {
        assert!(std::time::Instant::now() < deadline, "the daemon did not start: {}", fs::read_to_string(env.path("daemon.log")).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    d
}

#[test]
fn the_daemon_follows_a_backupplan_resource_and_refuses_a_bad_one() {
    let mut env = Env::new();
    let c = Cluster::start();
    env.vars.push(("KUBECONFIG".into(), c.kubeconfig.display().to_string()));
    c.kubectl_stdin(
        &["create", "--validate=false", "-f", "-"],
        &fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kubernetes/crd-backupplan.yaml")).unwrap(),
    );
    fs::create_dir_all(env.path("files")).unwrap();
    fs::write(env.path("files/a"), "a").unwrap();
    let source = |name: &str| {
        format!(r#"{{"name": "{name}", "class": "standard", "url": "{}", "schedule": "@daily"}}"#, env.path("files").display())
    };
    let plan = format!(
        r#"{{"apiVersion": "tresor.dev/v1alpha1", "kind": "BackupPlan", "metadata": {{"name": "nightly", "namespace": "shop"}}, "spec": {{
            "repositories": {{"main": {{"url": "{}", "password_file": "{}", "init": true}}}},
            "classes": {{"standard": {{"rpo": "1d", "rto": "4h"}}}},
            "sources": [{}], "daemon": {{"state": "{}"}}}}}}"#,
        env.repo,
        env.path("pw").display(),
        source("files"),
        env.path("state.db").display()
    );
    c.kubectl_stdin(&["create", "--validate=false", "-f", "-"], &plan);
    let d = plan_daemon(&env);
    let port = d.port;
    super::daemon::wait_jobs(&d, "the first backup", |j| super::daemon::count(j, "files", "backup", "succeeded") == 1);
    let status = || c.server.object("tresor.dev", "backupplans", Some("shop"), "nightly").unwrap()["status"].clone();
    assert_eq!((status()["accepted"].as_str(), status()["sources"].as_u64()), (Some("True"), Some(1)));
    // The plan as written for the daemon: its URLs may hold passwords.
    let rendered = fs::metadata(env.path("data/backupplan-shop-nightly.yaml")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&rendered.permissions()) & 0o777, 0o600);

    let sources = || super::daemon::http(port, "GET", "/api/v1/sources", Some("read-token")).1;
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "{what}: {}", sources());
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let more = format!(r#"{{"spec": {{"sources": [{}, {}]}}}}"#, source("files"), source("more"));
    assert!(c.kubectl(&["patch", "backupplan", "nightly", "-n", "shop", "--type", "merge", "-p", &more]).status.success());
    wait_for("the new source", &|| sources().contains("\"name\":\"more\""));
    assert_eq!(status()["sources"], 2);

    let bad = r#"{"spec": {"classes": {"standard": {"rpo": "soon", "rto": "4h"}}}}"#;
    assert!(c.kubectl(&["patch", "backupplan", "nightly", "-n", "shop", "--type", "merge", "-p", bad]).status.success());
    wait_for("the refusal", &|| status()["accepted"] == "False");
    assert!(status()["message"].as_str().unwrap().contains("cannot read duration \"soon\""), "{}", status());
    assert!(sources().contains("\"name\":\"more\""), "the running plan stays");
}

/// The Prometheus operator's resources, as a cluster that has it knows them.
const MONITORING_CRDS: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: servicemonitors.monitoring.coreos.com\nspec:\n  group: monitoring.coreos.com\n  scope: Namespaced\n  names: {plural: servicemonitors, singular: servicemonitor, kind: ServiceMonitor}\n  versions:\n  - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: prometheusrules.monitoring.coreos.com\nspec:\n  group: monitoring.coreos.com\n  scope: Namespaced\n  names: {plural: prometheusrules, singular: prometheusrule, kind: PrometheusRule}\n  versions:\n  - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}\n";

/// `kubectl kustomize deploy/kubernetes`, applied to a cluster that
/// enforces `restricted` where the set asks for it: accepted without a
/// single Pod Security warning, and the daemon's pod itself admitted.
#[test]
fn deploy_kubernetes_renders_a_set_that_a_restricted_cluster_runs() {
    let server = KubeServer::start();
    let dir = tempfile::tempdir().unwrap();
    let admin = server.kubeconfig(dir.path());
    let kubectl = |args: &[&str], input: Option<&str>| {
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", &admin)
            .arg(format!("--cache-dir={}", dir.path().join("cache").display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.unwrap_or_default().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kubernetes");
    let (ok, rendered, err) = kubectl(&["kustomize", deploy], None);
    assert!(ok, "{err}");
    assert!(kubectl(&["create", "--validate=false", "-f", "-"], Some(MONITORING_CRDS)).0);
    let (ok, out, err) = kubectl(&["create", "--validate=false", "-f", "-"], Some(&rendered));
    assert!(ok, "{err}");
    assert_eq!(err, "", "no warnings, Pod Security's least of all");
    assert!(out.contains("deployment.apps/tresor created\n"), "{out}");
    let (_, labels, _) =
        kubectl(&["get", "namespace", "tresor", "-o", "jsonpath={.metadata.labels.pod-security\\.kubernetes\\.io/enforce}"], None);
    assert_eq!(labels, "restricted");

    // The daemon's pod, as the Deployment's controller would make it.
    let (_, deployment, _) = kubectl(&["get", "deployment", "tresor", "-n", "tresor", "-o", "json"], None);
    let deployment: serde_json::Value = serde_json::from_str(&deployment).unwrap();
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tresor-0", "namespace": "tresor"},
        "spec": deployment["spec"]["template"]["spec"]});
    let (ok, out, err) = kubectl(&["create", "--validate=false", "-f", "-"], Some(&pod.to_string()));
    assert!(ok && err.is_empty(), "{err}");
    assert_eq!(out, "pod/tresor-0 created\n");
    let mounts = &deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
    let writable: Vec<&str> =
        mounts.as_array().unwrap().iter().filter(|m| m["readOnly"] != true).filter_map(|m| m["mountPath"].as_str()).collect();
    assert_eq!(writable, ["/var/lib/tresor", "/tmp", "/var/tmp/tresor", "/var/cache/tresor"], "state, and scratch on a read-only root");
}

/// Least privilege, shown: the requests tresor made as the shipped service
/// account, against deploy/kubernetes's roles: nothing it needed is
/// missing, and every granted verb was used. The requests are a whole
/// suite's when `TRESOR_KUBE_AUDIT_CHECK` names the finished log of a run
/// with `TRESOR_KUBE_AUDIT_LOG` (tests run at once and test binaries apart,
/// so only a log written before this test starts is complete), else this
/// test's own backup, restores and drill-like dry run, which exercise the
/// backup and restore roles only.
#[test]
fn the_shipped_roles_allow_what_tresor_does_and_no_more() {
    let suite = std::env::var_os("TRESOR_KUBE_AUDIT_CHECK")
        .map(PathBuf::from)
        .filter(|p| fs::read_to_string(p).is_ok_and(|t| t.lines().any(|l| l.contains("\"user\":\"system:serviceaccount:tresor:tresor\""))));
    let c = Cluster::start();
    let log = match &suite {
        Some(log) => log.clone(),
        None => {
            let log = c.dir.path().join("requests.jsonl");
            c.server.record_requests_to(&log);
            let env = Env::new();
            env.ok(&["init"]);
            assert!(tresor(&env, &c, &["backup", "k8s://", "--include-namespaces", "shop"]).status.success());
            for extra in [&[][..], &["--existing", "update"][..]] {
                let out =
                    tresor(&env, &c, &[&["restore", "latest", "--to", "k8s://", "--namespace-mapping", "shop:copy"][..], extra].concat());
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            }
            let out =
                tresor(&env, &c, &["restore", "latest", "--to", "k8s://", "--namespace-mapping", "shop:shop-drill", "--server-dry-run"]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            log
        }
    };
    let seen = c.server.coverage(&log, "tresor", "tresor");
    assert_eq!(seen.missing, Vec::<String>::new(), "needed and not granted");
    let unused: Vec<&str> = seen.unused.iter().map(String::as_str).collect();
    if suite.is_some() {
        assert_eq!(unused, Vec::<&str>::new(), "granted and never used by the suite");
    } else {
        // What the daemon (watching its BackupPlan, saying so in its status, keeping its runs as objects) and volume Jobs use.
        let theirs = [
            "ClusterRoleBinding \"tresor-backup\" of ClusterRole \"tresor-backup\": watch */*",
            "ClusterRoleBinding \"tresor-plans\" of ClusterRole \"tresor-plans\": patch tresor.dev/backupplans/status",
            "ClusterRoleBinding \"tresor-runs\" of ClusterRole \"tresor-runs\": create tresor.dev/backupruns",
            "ClusterRoleBinding \"tresor-runs\" of ClusterRole \"tresor-runs\": create tresor.dev/drillruns",
            "ClusterRoleBinding \"tresor-runs\" of ClusterRole \"tresor-runs\": create tresor.dev/restoreruns",
            "ClusterRoleBinding \"tresor-runs\" of ClusterRole \"tresor-runs\": delete tresor.dev/backupruns",
            "ClusterRoleBinding \"tresor-runs\" of ClusterRole \"tresor-runs\": delete tresor.dev/drillruns",
            "ClusterRoleBinding \"tresor-runs\" of ClusterRole \"tresor-runs\": delete tresor.dev/restoreruns",
            "ClusterRoleBinding \"tresor-runs\" of ClusterRole \"tresor-runs\": patch tresor.dev/backupruns/status",
            "ClusterRoleBinding \"tresor-runs\" of ClusterRole \"tresor-runs\": patch tresor.dev/drillruns/status",
            "ClusterRoleBinding \"tresor-runs\" of ClusterRole \"tresor-runs\": patch tresor.dev/restoreruns/status",
            "ClusterRoleBinding \"tresor-volume-jobs\" of ClusterRole \"tresor-volume-jobs\": create batch/jobs",
            "ClusterRoleBinding \"tresor-volume-jobs\" of ClusterRole \"tresor-volume-jobs\": create snapshot.storage.k8s.io/volumesnapshots",
            "ClusterRoleBinding \"tresor-volume-jobs\" of ClusterRole \"tresor-volume-jobs\": delete batch/jobs",
            "ClusterRoleBinding \"tresor-volume-jobs\" of ClusterRole \"tresor-volume-jobs\": delete persistentvolumeclaims",
            "ClusterRoleBinding \"tresor-volume-jobs\" of ClusterRole \"tresor-volume-jobs\": delete snapshot.storage.k8s.io/volumesnapshots",
            "RoleBinding \"tresor/tresor-leader-election\" of Role \"tresor-leader-election\": create coordination.k8s.io/leases",
            "RoleBinding \"tresor/tresor-leader-election\" of Role \"tresor-leader-election\": get coordination.k8s.io/leases",
            "RoleBinding \"tresor/tresor-leader-election\" of Role \"tresor-leader-election\": update coordination.k8s.io/leases",
        ];
        assert_eq!(unused, theirs, "granted and never used");
    }
}

/// A drill's scratch namespace that cannot be removed is a failure the
/// restore reports, never a silent leftover.
#[test]
fn a_scratch_namespace_that_cannot_be_removed_is_reported() {
    let (env, c) = shop_backed_up();
    // The restore role without its namespace delete rule.
    let patch = r#"{"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["create", "update"]}]}"#;
    let out = c.kubectl(&["patch", "clusterrole", "tresor-restore", "--type=merge", "-p", patch]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tresor(&env, &c, &["restore", "latest", "--to", "k8s://", "--namespace-mapping", "shop:shop-drill", "--server-dry-run"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tresor: restore partial: 1 of 13 objects failed; first: Namespace shop-drill: the drill's scratch namespace stays: \
         namespaces \"shop-drill\" is forbidden: User \"system:serviceaccount:tresor:tresor\" cannot delete resource \"namespaces\" \
         in API group \"\" at the cluster scope\n"
    );
    assert!(c.kubectl(&["get", "namespace", "shop-drill"]).status.success(), "the namespace the report names is there");
}

/// A drill killed before it removed its scratch namespace leaves it behind,
/// with whatever came into it since. The next drill of that namespace
/// removes it, waits while it terminates (the fake's 1 s), makes it anew
/// and removes it after; a namespace without the scratch label is never
/// touched.
#[test]
fn the_next_drill_removes_the_scratch_namespace_a_killed_drill_left() {
    let (env, c) = shop_backed_up();
    let drill = || {
        let out = tresor(&env, &c, &["restore", "latest", "--to", "k8s://", "--namespace-mapping", "shop:shop-drill", "--server-dry-run"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    for args in [
        &["create", "namespace", "shop-drill"][..],
        &["label", "namespace", "shop-drill", "tresor.dev/scratch=true"],
        &["create", "configmap", "leftover", "-n", "shop-drill"],
    ] {
        let out = c.kubectl(args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    drill();
    let out = c.kubectl(&["get", "namespace", "shop-drill"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "Error from server (NotFound): namespaces \"shop-drill\" not found\n");

    // Someone's own namespace of that name stays, and what it holds.
    for args in [&["create", "namespace", "shop-drill"][..], &["create", "configmap", "mine", "-n", "shop-drill"]] {
        assert!(c.kubectl(args).status.success());
    }
    drill();
    let out = c.kubectl(&["get", "configmap", "mine", "-n", "shop-drill", "-o", "name"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configmap/mine\n");
}
