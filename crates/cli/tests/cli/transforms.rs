//! Restores into another cluster and rehearsals, against the fake API
//! server as the shipped service account: a namespace backed up from one
//! cluster comes back in a second with another storage class, another
//! registry and JSON patches, object for object as expected; a patch that
//! cannot apply fails its object alone; a rehearsal inside the live cluster
//! restores beside production (its Service internal: production's node
//! port is taken, as the fake API server checks) and leaves production as
//! it was.

use serde_json::{Value, json};

use super::k8s::{Cluster, shown, tresor};
use super::*;

const SHOP: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: fast
provisioner: ebs.csi.aws.com
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  namespace: shop
spec:
  storageClassName: fast
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 1Gi
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels:
    app: web
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      initContainers:
      - name: migrate
        image: old.registry/shop/migrate:1.0
      containers:
      - name: web
        image: old.registry/shop/web:1.0
      - name: proxy
        image: nginx:1.27
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
  namespace: shop
spec:
  replicas: 2
  serviceName: db
  selector:
    matchLabels:
      app: db
  template:
    metadata:
      labels:
        app: db
    spec:
      containers:
      - name: db
        image: old.registry/shop/db:15
  volumeClaimTemplates:
  - metadata:
      name: pgdata
    spec:
      storageClassName: fast
      accessModes: [ReadWriteOnce]
      resources:
        requests:
          storage: 5Gi
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: report
  namespace: shop
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: report
            image: old.registry/shop/report:2
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: shop
spec:
  tls:
  - hosts: [shop.example.com]
    secretName: shop-tls
  rules:
  - host: shop.example.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: web
            port:
              number: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector:
    app: web
  ports:
  - port: 80
    nodePort: 30080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
data:
  mode: fast
  greeting: hello
  debug: "true"
---
apiVersion: v1
kind: Pod
metadata:
  name: debug
  namespace: shop
spec:
  containers:
  - name: sh
    image: old.registry/tools/sh:1
"#;

/// What a second cluster needs that the first did not have.
const TRANSFORMS: &str = r#"rules:
- kinds: [apps/Deployment]
  names: ["web*"]
  selector:
    matchLabels: {app: web}
  patch:
  - {op: test, path: /spec/replicas, value: 3}
  - {op: replace, path: /spec/replicas, value: 1}
  - {op: add, path: /metadata/labels/site, value: b}
- kinds: [ConfigMap]
  namespaces: ["sh*"]
  patch:
  - {op: copy, from: /data/mode, path: /data/previous-mode}
  - {op: move, from: /data/greeting, path: /data/welcome}
  - {op: remove, path: /data/debug}
"#;

const KINDS: [(&str, &str); 6] = [
    ("persistentvolumeclaim", "data"),
    ("deployment", "web"),
    ("statefulset", "db"),
    ("cronjob", "report"),
    ("ingress", "web"),
    ("configmap", "settings"),
];

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the transforms should have made of the first cluster's objects.
fn expected(mut before: Vec<Value>) -> Vec<Value> {
    before[0]["spec"]["storageClassName"] = "standard".into();
    let web = &mut before[1];
    web["spec"]["replicas"] = 1.into();
    web["metadata"]["labels"]["site"] = "b".into();
    web["spec"]["template"]["spec"]["initContainers"][0]["image"] = "new.registry/shop/migrate:1.0".into();
    web["spec"]["template"]["spec"]["containers"][0]["image"] = "new.registry/shop/web:1.0".into();
    before[2]["spec"]["template"]["spec"]["containers"][0]["image"] = "new.registry/shop/db:15".into();
    before[2]["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] = "standard".into();
    before[3]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] = "new.registry/shop/report:2".into();
    before[5]["data"] = json!({"mode": "fast", "previous-mode": "fast", "welcome": "hello"});
    before
}

/// A repository with a backup of the first cluster's `shop`, and a second, empty cluster.
fn backed_up_and_a_second_cluster() -> (Env, Cluster, Cluster) {
    let env = Env::new();
    env.ok(&["init"]);
    let first = Cluster::start_with(SHOP);
    ok(&tresor(&env, &first, &["backup", "k8s://", "--include-namespaces", "shop"]));
    (env, first, Cluster::start_with(""))
}

#[test]
fn a_namespace_comes_back_in_another_cluster_with_its_storage_class_registry_and_patches() {
    let (env, first, second) = backed_up_and_a_second_cluster();
    let before: Vec<Value> = KINDS.iter().map(|(k, n)| shown(&first, k, "shop", n)).collect();
    fs::write(env.path("transforms.yaml"), TRANSFORMS).unwrap();
    let transforms = env.path("transforms.yaml").display().to_string();
    let restore = |extra: &[&str]| {
        let args = [
            &["restore", "latest", "--to", "k8s://", "--storage-class-mapping", "fast:standard"][..],
            &["--image-registry-mapping", "old.registry:new.registry", "--transforms", &transforms],
            extra,
        ];
        tresor(&env, &second, &args.concat())
    };

    // The preview says what each transform changes, and changes nothing.
    let text = ok(&restore(&["--dry-run"]));
    for lines in [
        "would create  PersistentVolumeClaim shop/data\n                storageClassName: fast -> standard\n",
        "would create  Deployment shop/web\n                image: old.registry/shop/migrate:1.0 -> new.registry/shop/migrate:1.0\n                image: old.registry/shop/web:1.0 -> new.registry/shop/web:1.0\n                rule 1: test /spec/replicas\n                rule 1: replace /spec/replicas\n                rule 1: add /metadata/labels/site\n",
        "would create  StatefulSet shop/db\n                volumeClaimTemplates[pgdata] storageClassName: fast -> standard\n                image: old.registry/shop/db:15 -> new.registry/shop/db:15\n",
        "would create  CronJob shop/report\n                image: old.registry/shop/report:2 -> new.registry/shop/report:2\n",
        "would create  ConfigMap shop/settings\n                rule 2: copy /data/mode to /data/previous-mode\n                rule 2: move /data/greeting to /data/welcome\n                rule 2: remove /data/debug\n",
        "would create  Ingress shop/web\n",
    ] {
        assert!(text.contains(lines), "{lines}\n{text}");
    }
    assert!(!second.kubectl(&["get", "namespace", "shop"]).status.success(), "a preview creates nothing");

    let out = ok(&restore(&["--json"]));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["status"], "completed");
    let pod = report["results"].as_array().unwrap().iter().find(|r| r["object"] == "Pod shop/debug").unwrap();
    assert_eq!(pod["changes"], json!(["image: old.registry/tools/sh:1 -> new.registry/tools/sh:1"]));
    let after: Vec<Value> = KINDS.iter().map(|(k, n)| shown(&second, k, "shop", n)).collect();
    assert_eq!(after, expected(before), "every object as the transforms made it, field by field");
}

#[test]
fn a_patch_that_cannot_apply_fails_its_object_and_the_rest_is_restored() {
    let (env, _first, second) = backed_up_and_a_second_cluster();
    let file = env.path("transforms.yaml");
    fs::write(
        &file,
        "rules:\n- kinds: [Deployment]\n  patch:\n  - {op: test, path: /spec/replicas, value: 5}\n  - {op: replace, path: /spec/replicas, value: 1}\n\
         - kinds: [v1/ConfigMap, core/ConfigMap]\n  patch:\n  - {op: replace, path: /data/nothing, value: x}\n",
    )
    .unwrap();
    let out = tresor(&env, &second, &["restore", "latest", "--to", "k8s://", "--transforms", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("failed        Deployment shop/web: transforms rule 1: test /spec/replicas failed: the value differs\n"),
        "{text}"
    );
    assert!(
        text.contains("failed        ConfigMap shop/settings: transforms rule 2: replace /data/nothing failed: the path does not exist\n"),
        "{text}"
    );
    assert!(text.contains("created       StatefulSet shop/db\n"), "{text}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tresor: restore partial: 2 of 13 objects failed; first: Deployment shop/web: transforms rule 1: test /spec/replicas failed: the value differs\n"
    );
    assert!(!second.kubectl(&["get", "deployment", "web", "-n", "shop"]).status.success(), "the failed object is not there");
    assert!(second.kubectl(&["get", "statefulset", "db", "-n", "shop"]).status.success());

    // A file that is no transforms file: one line, nothing restored.
    fs::write(&file, "rules:\n- kinds: [Deployment]\n  patch:\n  - {op: frobnicate, path: /x}\n").unwrap();
    let out = tresor(&env, &second, &["restore", "latest", "--to", "k8s://", "--transforms", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        format!(
            "tresor: error: {}: not a transforms file: rules[0].patch[0].op: unknown variant `frobnicate`, expected one of \
             `add`, `remove`, `replace`, `move`, `copy`, `test` at line 4 column 10\n",
            file.display()
        )
    );
}

#[test]
fn a_rehearsal_in_the_live_cluster_restores_beside_production_and_runs_nothing() {
    let env = Env::new();
    env.ok(&["init"]);
    let c = Cluster::start_with(SHOP);
    ok(&tresor(&env, &c, &["backup", "k8s://", "--include-namespaces", "shop", "--include-cluster-resources", "true"]));
    let production: Vec<Value> = KINDS.iter().map(|(k, n)| shown(&c, k, "shop", n)).collect();
    assert!(c.kubectl(&["delete", "storageclass", "fast"]).status.success());

    let refused = tresor(&env, &c, &["restore", "latest", "--to", "k8s://", "--rehearsal", "--namespace-mapping", "shop:shop"]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "tresor: error: k8s://: a rehearsal restores beside production: --namespace-mapping shop:shop would write into shop\n"
    );

    // Even replacing what exists, a rehearsal writes only into its own namespaces.
    let text = ok(&tresor(&env, &c, &["restore", "latest", "--to", "k8s://", "--rehearsal", "--existing", "update"]));
    for line in [
        "skipped       StorageClass fast: cluster-scoped: a rehearsal leaves it out (--include-cluster-resources true restores it)\n",
        "skipped       Pod shop-dr/debug: a rehearsal starts no Pods: their workloads come back scaled to 0\n",
        "created       Namespace shop-dr\n                label: tresor.dev/rehearsal=true\n",
        "created       Deployment shop-dr/web\n                replicas: 3 -> 0\n",
        "created       StatefulSet shop-dr/db\n                replicas: 2 -> 0\n",
        "created       CronJob shop-dr/report\n                suspend: false -> true\n",
        "created       Ingress shop-dr/web\n                host: shop.example.com -> dr-shop.example.com\n",
        "created       Service shop-dr/web\n                type: LoadBalancer -> ClusterIP\n                externalTrafficPolicy: removed\n                nodePort 30080: removed\n",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    let get = |kind: &str, path: &str| {
        String::from_utf8(c.kubectl(&["get", kind, "-n", "shop-dr", "-o", &format!("jsonpath={path}")]).stdout).unwrap()
    };
    assert_eq!(get("deployment/web", "{.spec.replicas}"), "0");
    assert_eq!(get("statefulset/db", "{.spec.replicas}"), "0");
    assert_eq!(get("cronjob/report", "{.spec.suspend}"), "true");
    assert_eq!(get("ingress/web", "{.spec.rules[0].host} {.spec.tls[0].hosts[0]}"), "dr-shop.example.com dr-shop.example.com");
    assert_eq!(get("pods", "{.items[*].metadata.name}"), "", "nothing runs in the rehearsal");
    let label = c.kubectl(&["get", "namespace", "shop-dr", "-o", "jsonpath={.metadata.labels.tresor\\.dev/rehearsal}"]);
    assert_eq!(label.stdout, b"true");
    assert!(!c.kubectl(&["get", "storageclass", "fast"]).status.success(), "no cluster-scoped object restored");
    let now: Vec<Value> = KINDS.iter().map(|(k, n)| shown(&c, k, "shop", n)).collect();
    assert_eq!(now, production, "production untouched");
}

/// A plan's `transforms:` is checked with the plan: only for `k8s://`
/// sources, and a file that is no transforms file is an error on its line.
#[test]
fn plan_check_reads_a_sources_transforms_file() {
    let env = Env::new();
    let good = env.path("dr-site.yaml");
    fs::write(&good, TRANSFORMS).unwrap();
    let bad = env.path("broken.yaml");
    fs::write(&bad, "rules:\n- names: ['[']\n  patch: []\n").unwrap();
    let plan = env.path("tresor.yaml");
    let source = |name: &str, url: &str, file: &Path| {
        format!("  - name: {name}\n    class: standard\n    url: {url}\n    schedule: \"@daily\"\n    transforms: {}\n", file.display())
    };
    fs::write(
        &plan,
        format!(
            "repositories:\n  primary:\n    url: /srv/repo\n    password_file: /etc/tresor/pw\n    init: true\nclasses:\n  standard:\n    \
             rpo: 1d\n    rto: 8h\n    offsite: primary\n    retention:\n      daily: 30\nsources:\n{}{}{}",
            source("cluster", "k8s://", &good),
            source("broken", "k8s://", &bad),
            source("files", "/srv/files", &good)
        ),
    )
    .unwrap();
    let out = env.run(&["plan", "check", plan.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let (p, b) = (plan.display(), bad.display());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{p}:23: error: source broken: transforms: {b}: transforms rule 1: bad pattern \"[\": error parsing glob '[': unclosed character class; missing ']'\n\
             {p}:28: error: source files: transforms: is for k8s:// sources, not a path\n\
             {p}: 3 sources, 1 class: 2 errors, 0 warnings\n"
        )
    );
}

/// A plan of one `k8s://` source, `cluster`, with `more` of its fields, scratch in the test's directory.
fn cluster_plan(env: &Env, more: &str) -> PathBuf {
    let plan = env.path("tresor.yaml");
    fs::write(
        &plan,
        format!(
            "repositories:\n  primary:\n    url: {}\n    password_file: {}\nclasses:\n  standard:\n    rpo: 1d\n    rto: 8h\n\
             sources:\n  - name: cluster\n    class: standard\n    url: k8s://\n    schedule: \"@daily\"\n{more}drills:\n  scratch_dir: {}\n",
            env.repo,
            env.path("pw").display(),
            env.path("").display()
        ),
    )
    .unwrap();
    plan
}

/// `dr rehearse` brings a plan's `k8s://` source back into the live cluster
/// as a rehearsal, through the source's `transforms:` file: beside
/// production in `shop-dr`, nothing running, serving or scheduled, its claims
/// on the new storage class; the namespace removed after unless `--keep`.
#[test]
fn a_rehearsal_restores_the_plans_cluster_into_dr_namespaces_through_its_transforms() {
    let env = Env::new();
    env.ok(&["init"]);
    let c = Cluster::start_with(SHOP);
    ok(&tresor(&env, &c, &["backup", "k8s://", "--include-namespaces", "shop", "--tag", "source=cluster"]));
    let production: Vec<Value> = KINDS.iter().map(|(k, n)| shown(&c, k, "shop", n)).collect();
    fs::write(env.path("dr-site.yaml"), "storage_classes:\n  fast: standard\n").unwrap();
    let plan = cluster_plan(&env, &format!("    transforms: {}\n", env.path("dr-site.yaml").display()));
    let rehearse = |extra: &[&str]| {
        let args = [&["dr", "rehearse", "--plan", plan.to_str().unwrap(), "--from", "primary", "--json"][..], extra].concat();
        let out = ok(&tresor(&env, &c, &args));
        serde_json::from_str::<Value>(out.lines().last().unwrap()).unwrap()
    };
    let r = rehearse(&["--keep"]);
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(
        r["steps"][0]["drill"]["checks"],
        json!([
            "8 objects restored into shop-dr (workloads at 0 replicas, CronJobs suspended, Ingress hosts dr-), 1 left out (cluster-scoped, Pods) or existing, 4 left to the cluster, which makes them itself",
            "7 objects rewritten by the source's transforms and the rehearsal's safety rewrites"
        ]),
        "{r:#}"
    );
    let get = |kind: &str, path: &str| {
        String::from_utf8(c.kubectl(&["get", kind, "-n", "shop-dr", "-o", &format!("jsonpath={path}")]).stdout).unwrap()
    };
    assert_eq!(get("deployment/web", "{.spec.replicas}"), "0");
    assert_eq!(get("statefulset/db", "{.spec.replicas} {.spec.volumeClaimTemplates[0].spec.storageClassName}"), "0 standard");
    assert_eq!(get("cronjob/report", "{.spec.suspend}"), "true");
    assert_eq!(get("ingress/web", "{.spec.rules[0].host}"), "dr-shop.example.com");
    assert_eq!(get("persistentvolumeclaim/data", "{.spec.storageClassName}"), "standard");
    assert_eq!(get("pods", "{.items[*].metadata.name}"), "", "nothing runs in the rehearsal");
    let now: Vec<Value> = KINDS.iter().map(|(k, n)| shown(&c, k, "shop", n)).collect();
    assert_eq!(now, production, "production untouched");

    // The next rehearsal removes the kept namespace first, and its own after.
    let r = rehearse(&[]);
    assert_eq!(r["passed"], true, "{r:#}");
    assert!(!c.kubectl(&["get", "namespace", "shop-dr"]).status.success(), "no rehearsal namespace stays");
    assert!(c.kubectl(&["get", "namespace", "shop"]).status.success());
}

/// A rehearsal namespace that cannot be removed fails the rehearsal with
/// one line that names it, never a silent leftover.
#[test]
fn a_rehearsal_whose_namespace_cannot_be_removed_fails_by_name() {
    let env = Env::new();
    env.ok(&["init"]);
    let c = Cluster::start_with(SHOP);
    ok(&tresor(&env, &c, &["backup", "k8s://", "--include-namespaces", "shop", "--tag", "source=cluster"]));
    let plan = cluster_plan(&env, "");
    // The restore role without its namespace delete rule.
    let patch = r#"{"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["create", "update"]}]}"#;
    assert!(c.kubectl(&["patch", "clusterrole", "tresor-restore", "--type=merge", "-p", patch]).status.success());
    let out = tresor(
        &env,
        &c,
        &["dr", "rehearse", "--plan", plan.to_str().unwrap(), "--from", "primary", "--scratch", env.path("").to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tresor: error: the rehearsal's scratch stays: k8s://: the rehearsal's namespace shop-dr stays: namespaces \"shop-dr\" is \
         forbidden: User \"system:serviceaccount:tresor:tresor\" cannot delete resource \"namespaces\" in API group \"\" at the cluster scope\n"
    );
    assert!(c.kubectl(&["get", "namespace", "shop-dr"]).status.success(), "the namespace the error names is there");
}
