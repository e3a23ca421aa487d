//! An in-process fake Kubernetes API server: discovery for the core and
//! named groups (and groups CRDs add), CRUD on namespaced and cluster
//! objects, label selectors, resourceVersion, watches (events streamed
//! for a few seconds at a time), server-side dry runs, and the API's
//! 404/409/403 Status answers. Plain HTTP on a free loopback port; any bearer token is
//! accepted. Real `kubectl` works against it (tested), which is what makes
//! it a faithful stand-in where no cluster can run. Not served: OpenAPI
//! documents (kubectl's client-side validation), subresources other than
//! `status` (which is the object itself here),
//! server-side apply, finalizers (a deleted namespace is gone at once).

use std::net::{Ipv4Addr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::kube_store::{ApiError, Res, Store};

pub struct KubeServer {
    port: u16,
    store: Arc<Mutex<Store>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl KubeServer {
    pub fn start() -> KubeServer {
        let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let port = listener.local_addr().expect("listener address").port();
        let store = Arc::new(Mutex::new(Store::new()));
        let (shutdown, rx) = oneshot::channel::<()>();
        let app = axum::Router::new().fallback(handle).with_state(store.clone());
        let thread = std::thread::Builder::new()
            .name(format!("kube-api-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let _ = axum::serve(listener, app).with_graceful_shutdown(async move { drop(rx.await) }).await;
                });
            })
            .expect("spawn the API server thread");
        KubeServer { port, store, shutdown: Some(shutdown), thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A kubeconfig for this server (context `fake`), written into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: tester\n  user:\n    token: fake-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\ncurrent-context: fake\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Every request for this resource (plural) is refused with 403 from now on.
    pub fn forbid(&self, plural: &str) {
        self.store.lock().expect("not poisoned").forbidden.push(plural.into());
    }

    /// Creating objects of this resource (plural) is denied by an admission webhook.
    pub fn deny_create(&self, plural: &str) {
        self.store.lock().expect("not poisoned").denied.push(plural.into());
    }

    /// The stored object, as a client would get it.
    pub fn object(&self, group: &str, plural: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        let store = self.store.lock().expect("not poisoned");
        let res = store.resources.iter().find(|r| r.group == group && r.plural == plural)?.clone();
        store.get(&res, ns, name).ok()
    }
}

impl Drop for KubeServer {
    fn drop(&mut self) {
        let _ = self.shutdown.take().map(|tx| tx.send(()));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A watch: one JSON event per line as changes happen, for up to `limit`
/// seconds; then the stream ends and the client watches again.
fn watch(shared: Arc<Mutex<Store>>, res: Res, ns: Option<String>, since: u64, limit: u64) -> Response {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(limit);
    let stream = futures::stream::unfold((shared, since), move |(shared, mut at)| {
        let (res, ns) = (res.clone(), ns.clone());
        async move {
            loop {
                let (events, rv) = {
                    let s = shared.lock().expect("not poisoned");
                    (s.events_after(&res, ns.as_deref(), at), s.rv)
                };
                if !events.is_empty() {
                    at = rv;
                    let lines: String = events.iter().map(|e| format!("{e}\n")).collect();
                    return Some((Ok::<_, std::convert::Infallible>(lines), (shared, at)));
                }
                if tokio::time::Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    });
    ([(header::CONTENT_TYPE, "application/json")], axum::body::Body::from_stream(stream)).into_response()
}

fn reply(code: StatusCode, body: Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn fail(e: ApiError) -> Response {
    reply(StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), e.body())
}

fn discovery(store: &Store, segs: &[&str], port: Option<u16>) -> Option<Value> {
    match segs {
        ["version"] => Some(json!({"major": "1", "minor": "30", "gitVersion": "v1.30.0-tresor-fake", "platform": "linux/amd64"})),
        ["api"] => Some(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{}", port.unwrap_or(0))}]}),
        ),
        ["apis"] => {
            let mut groups: Vec<(String, Vec<String>)> = Vec::new();
            for r in store.resources.iter().filter(|r| !r.group.is_empty()) {
                match groups.iter_mut().find(|(g, _)| g == &r.group) {
                    Some((_, vs)) if !vs.contains(&r.version) => vs.push(r.version.clone()),
                    Some(_) => {}
                    None => groups.push((r.group.clone(), vec![r.version.clone()])),
                }
            }
            let groups: Vec<Value> = groups
                .iter()
                .map(|(g, vs)| {
                    let versions: Vec<Value> = vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
                    json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["api", v] | ["apis", _, v] => {
            let group = if segs[0] == "api" { "" } else { segs[1] };
            let list: Vec<Value> = store.resources.iter().filter(|r| r.group == group && r.version == *v).map(Res::describe).collect();
            let gv = if group.is_empty() { v.to_string() } else { format!("{group}/{v}") };
            (!list.is_empty()).then(|| json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}))
        }
        _ => None,
    }
}

async fn handle(
    State(shared): State<Arc<Mutex<Store>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let mut store = shared.lock().expect("not poisoned");
    let port = headers.get(header::HOST).and_then(|h| h.to_str().ok()).and_then(|h| h.rsplit(':').next()).and_then(|p| p.parse().ok());
    if method == Method::GET
        && let Some(d) = discovery(&store, &segs, port)
    {
        return reply(StatusCode::OK, d);
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return fail(ApiError { code: 404, reason: "NotFound", message: "the server could not find the requested resource".into() }),
    };
    // The status subresource is the object itself here.
    let rest = rest.strip_suffix(&["status"]).filter(|r| r.len() == 2 || r.len() == 4).unwrap_or(rest);
    let (ns, plural, name) = match rest {
        ["namespaces", ns, plural, tail @ ..] if tail.len() <= 1 => (Some(*ns), *plural, tail.first().copied()),
        [plural, tail @ ..] if tail.len() <= 1 => (None, *plural, tail.first().copied()),
        _ => return fail(ApiError { code: 404, reason: "NotFound", message: "the server could not find the requested resource".into() }),
    };
    let Some(res) = store.find(group, version, plural) else {
        return fail(ApiError { code: 404, reason: "NotFound", message: "the server could not find the requested resource".into() });
    };
    if method == Method::GET && name.is_none() && q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let since = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(store.rv);
        let limit = q.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(5u64).min(5);
        drop(store);
        return watch(shared.clone(), res, ns.map(String::from), since, limit);
    }
    let parsed = || {
        serde_json::from_slice::<Value>(&body).map_err(|e| ApiError {
            code: 400,
            reason: "BadRequest",
            message: format!("the body is not JSON: {e}"),
        })
    };
    let ok = |v: Value| (StatusCode::OK, v);
    let result = match (&method, name) {
        (&Method::GET, None) => store.list(&res, ns, q.get("labelSelector").map(String::as_str)).map(ok),
        (&Method::GET, Some(n)) => store.get(&res, ns, n).map(ok),
        // A server-side dry run answers as the write would, and stores nothing.
        (&Method::POST, None) if q.contains_key("dryRun") => {
            parsed().and_then(|b| store.clone().create(&res, ns, b)).map(|v| (StatusCode::CREATED, v))
        }
        (&Method::POST, None) => parsed().and_then(|b| store.create(&res, ns, b)).map(|v| (StatusCode::CREATED, v)),
        (&Method::PUT, Some(n)) if q.contains_key("dryRun") => parsed().and_then(|b| store.clone().replace(&res, ns, n, b)).map(ok),
        (&Method::PUT, Some(n)) => parsed().and_then(|b| store.replace(&res, ns, n, b)).map(ok),
        (&Method::PATCH, Some(n)) => parsed().and_then(|b| store.patch(&res, ns, n, &b)).map(ok),
        (&Method::DELETE, Some(n)) => store.delete(&res, ns, n).map(ok),
        _ => Err(ApiError { code: 405, reason: "MethodNotAllowed", message: format!("{method} is not supported here") }),
    };
    match result {
        Ok((code, v)) => reply(code, v),
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::KubeServer;

    /// Real kubectl against the fake: (exit success, stdout, stderr).
    /// The fake serves no OpenAPI documents, so `-f` files go with
    /// `--validate=false` (client-side schema validation needs them).
    fn kubectl(server: &KubeServer, dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", server.kubeconfig(dir))
            .arg(format!("--cache-dir={}", dir.join("cache").display()))
            .args(args)
            .output()
            .expect("kubectl (in the base image)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    }

    const CM: &str =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: shop\n  labels:\n    app: shop\ndata:\n  mode: fast\n";
    const CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.example.com\nspec:\n  group: example.com\n  scope: Namespaced\n  names:\n    plural: widgets\n    singular: widget\n    kind: Widget\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        x-kubernetes-preserve-unknown-fields: true\n";
    const WIDGET: &str = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\n  namespace: shop\nspec:\n  size: 3\n";

    #[test]
    fn real_kubectl_works_against_the_fake() {
        let server = KubeServer::start();
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let k = |args: &[&str]| kubectl(&server, dir.path(), args);
        let (ok, out, err) = k(&["version", "-o", "json"]);
        assert!(ok && out.contains("\"gitVersion\": \"v1.30.0-tresor-fake\""), "{out}{err}");
        let (_, out, _) = k(&["api-resources", "--no-headers"]);
        assert!(out.lines().any(|l| l.starts_with("deployments ") && l.contains("apps/v1") && l.contains("Deployment")), "{out}");
        assert_eq!(k(&["create", "namespace", "shop"]).1, "namespace/shop created");
        let cm = file("cm.yaml", CM);
        let (_, out, err) = k(&["create", "--validate=false", "-f", &cm]);
        assert_eq!(out, "configmap/settings created", "{err}");
        let (ok, _, err) = k(&["create", "--validate=false", "-f", &cm]);
        assert!(!ok && err.ends_with("configmaps \"settings\" already exists"), "{err}");
        assert_eq!(k(&["get", "cm", "-n", "shop", "-l", "app=shop", "-o", "jsonpath={.items[*].metadata.name}"]).1, "settings");
        assert_eq!(k(&["get", "cm", "-n", "shop", "-l", "app!=shop", "-o", "name"]).1, "");
        assert_eq!(k(&["get", "cm", "settings", "-n", "shop", "-o", "jsonpath={.data.mode}"]).1, "fast");
        let stale = file("stale.yaml", &CM.replace("  name: settings\n", "  name: settings\n  resourceVersion: \"1\"\n"));
        let (ok, _, err) = k(&["replace", "--validate=false", "-f", &stale]);
        assert!(!ok && err.contains("Operation cannot be fulfilled on configmaps \"settings\": the object has been modified"), "{err}");
        assert_eq!(k(&["label", "namespace", "shop", "team=a"]).1, "namespace/shop labeled");
        assert_eq!(k(&["get", "namespaces", "-l", "team=a", "-o", "name"]).1, "namespace/shop");
        assert_eq!(
            k(&["create", "--validate=false", "-f", &file("crd.yaml", CRD)]).1,
            "customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"
        );
        assert_eq!(k(&["create", "--validate=false", "-f", &file("w.yaml", WIDGET)]).1, "widget.example.com/w1 created");
        assert_eq!(k(&["get", "widgets", "-n", "shop", "-o", "name"]).1, "widget.example.com/w1");
        assert_eq!(k(&["delete", "cm", "settings", "-n", "shop"]).1, "configmap \"settings\" deleted");
        let (ok, _, err) = k(&["get", "cm", "settings", "-n", "shop"]);
        assert!(!ok && err == "Error from server (NotFound): configmaps \"settings\" not found", "{err}");
        server.forbid("secrets");
        let (ok, _, err) = k(&["get", "secrets", "-n", "shop"]);
        assert!(
            !ok && err.starts_with("Error from server (Forbidden): secrets is forbidden: User \"tresor\" cannot list resource \"secrets\""),
            "{err}"
        );
    }
}
