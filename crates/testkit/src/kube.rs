//! An in-process fake Kubernetes API server: discovery for the core and
//! named groups (and groups CRDs add), CRUD on namespaced and cluster
//! objects, label selectors, resourceVersion, watches (events streamed
//! for a few seconds at a time), server-side dry runs, `status`
//! subresources, the tables `kubectl get` prints from a CRD's printer
//! columns, and the API's 401/403/404/409 Status answers. Every
//! request is authenticated (bearer tokens: the harness's administrator,
//! or service accounts' tokens from TokenRequest) and authorized by RBAC
//! from the stored roles and bindings (kube_auth), and recorded when
//! `TRESOR_KUBE_AUDIT_LOG` names a file (kube_audit). Plain HTTP on a free
//! loopback port. Real `kubectl` works against it (tests/kubectl.rs),
//! which is what makes it a faithful stand-in where no cluster can run.
//! Pod Security admission runs on every create (kube_admission), and the
//! controllers a cluster runs beside the API server (namespace defaults,
//! endpoints, jobs and their pods, scheduling, garbage collection) act
//! inside the writes that trigger them (kube_controllers).
//! Not served: OpenAPI documents (kubectl's client-side validation),
//! subresources other than `status` and `token`, server-side apply,
//! finalizers (a deleted namespace is Terminating for a set time, rather
//! than until its finalizers are done), aggregated ClusterRoles.

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

use crate::kube_audit::{self, Coverage};
use crate::kube_auth::{self, ADMIN_TOKEN, Attrs, Identity};
use crate::kube_controllers::{self as controllers, Propagation};
use crate::kube_store::{ApiError, Part, Res, Store, key};
use crate::kube_tls;

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
        let mut store = Store::new();
        store.audit = std::env::var_os(kube_audit::AUDIT_LOG_VAR).map(PathBuf::from);
        let store = Arc::new(Mutex::new(store));
        let (shutdown, rx) = oneshot::channel::<()>();
        let app = axum::Router::new().fallback(handle).with_state(store.clone());
        let thread = std::thread::Builder::new()
            .name(format!("kube-api-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(kube_tls::serve(listener, app, rx));
            })
            .expect("spawn the API server thread");
        KubeServer { port, store, shutdown: Some(shutdown), thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The administrator's kubeconfig (context `fake`), written into `dir`:
    /// for the harness to set clusters up, never for the program under test.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        self.kubeconfig_with_token(&dir.join("kubeconfig"), "admin", ADMIN_TOKEN)
    }

    /// A kubeconfig at `path` that authenticates with `token` (from `kubectl create token`).
    pub fn kubeconfig_with_token(&self, path: &Path, user: &str, token: &str) -> PathBuf {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    token: {token}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: {user}\ncurrent-context: fake\n",
            self.url(),
            kube_tls::ca_data()
        );
        std::fs::write(path, text).expect("write kubeconfig");
        path.to_path_buf()
    }

    /// Every request for this resource (plural) by anyone but the administrator
    /// is refused with 403 from now on, as a role without it would be.
    pub fn forbid(&self, plural: &str) {
        self.store.lock().expect("not poisoned").forbidden.push(plural.into());
    }

    /// From now on, requests for this resource (plural) by anyone but the
    /// administrator are taken and never answered, as by a hung API server.
    pub fn stall(&self, plural: &str) {
        self.store.lock().expect("not poisoned").stalled.push(plural.into());
    }

    /// Creating objects of this resource (plural) is denied by an admission webhook.
    pub fn deny_create(&self, plural: &str) {
        self.store.lock().expect("not poisoned").denied.push(plural.into());
    }

    /// From now on, a controller makes an object of this resource (plural)
    /// between a client's GET that found it missing and the client's create,
    /// which then answers 409 AlreadyExists: the race with live controllers, met every time.
    pub fn race(&self, plural: &str) {
        self.store.lock().expect("not poisoned").racing.push(plural.into());
    }

    /// The next replace of an object of this resource (plural) meets another
    /// writer's update made since the client read it: 409 Conflict, as a
    /// real API server answers a stale resourceVersion. Once per call.
    pub fn contend(&self, plural: &str) {
        self.store.lock().expect("not poisoned").contended.push(plural.into());
    }

    /// A deleted namespace stays Terminating this long after its delete (1 s
    /// unless set; it counts for those terminating already); zero removes
    /// it at the next request.
    pub fn terminate_namespaces_in(&self, time: std::time::Duration) {
        self.store.lock().expect("not poisoned").namespace_termination = time;
    }

    /// Record every request but the administrator's to this file (one JSON line each, appended).
    pub fn record_requests_to(&self, path: &Path) {
        self.store.lock().expect("not poisoned").audit = Some(path.to_path_buf());
    }

    /// The stored object, as a client would get it.
    pub fn object(&self, group: &str, plural: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        let mut store = self.store.lock().expect("not poisoned");
        controllers::purge_namespaces(&mut store);
        let res = store.resources.iter().find(|r| r.group == group && r.plural == plural)?.clone();
        store.get(&res, ns, name).ok()
    }

    /// The requests of service account `ns/name` in a request log, against the roles bound to it here.
    pub fn coverage(&self, log: &Path, ns: &str, name: &str) -> Coverage {
        let id = Identity::service_account(ns, name);
        let requests = kube_audit::read(log, &id.user);
        kube_audit::coverage(&self.store.lock().expect("not poisoned"), &id, &requests)
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
fn watch(shared: Arc<Mutex<Store>>, res: Res, ns: Option<String>, fields: Option<String>, since: u64, limit: u64) -> Response {
    if let Err(e) = shared.lock().expect("not poisoned").events_after(&res, None, fields.as_deref(), u64::MAX) {
        return fail(e);
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(limit);
    let stream = futures::stream::unfold((shared, since), move |(shared, mut at)| {
        let (res, ns, fields) = (res.clone(), ns.clone(), fields.clone());
        async move {
            loop {
                let (events, rv) = {
                    let mut s = shared.lock().expect("not poisoned");
                    controllers::purge_namespaces(&mut s);
                    (s.events_after(&res, ns.as_deref(), fields.as_deref(), at).unwrap_or_default(), s.rv)
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

/// A request taken and never answered, until the server stops (which
/// drops its task).
fn stall() -> futures::future::BoxFuture<'static, Response> {
    Box::pin(std::future::pending())
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
            let list: Vec<Value> =
                store.resources.iter().filter(|r| r.group == group && r.version == *v).flat_map(|r| r.describe()).collect();
            let gv = if group.is_empty() { v.to_string() } else { format!("{group}/{v}") };
            (!list.is_empty()).then(|| json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}))
        }
        _ => None,
    }
}

/// Where a resource request points: `/api/v1/namespaces/NS/PLURAL/NAME/SUB` and its shorter forms.
struct Target<'a> {
    group: &'a str,
    version: &'a str,
    ns: Option<&'a str>,
    plural: &'a str,
    name: Option<&'a str>,
    sub: Option<&'a str>,
}

fn target<'a>(segs: &[&'a str]) -> Option<Target<'a>> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    // `namespaces/NAME/status` is the namespace's own subresource, not a resource in it.
    let (ns, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() && !matches!(tail, ["status" | "finalize"]) => (Some(*ns), tail),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(*n), None),
        [p, n, s] => (*p, Some(*n), Some(*s)),
        _ => return None,
    };
    Some(Target { group, version, ns, plural, name, sub })
}

/// The authorizer's view of a request (verb from method and shape, as the API server's request info does).
fn attributes(method: &Method, path: &str, t: Option<&Target>, watching: bool) -> Attrs {
    let Some(t) = t else {
        return Attrs { verb: method.as_str().to_lowercase(), path: Some(path.to_string()), ..Attrs::default() };
    };
    let verb = match (method, t.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if watching => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "",
    };
    Attrs {
        verb: verb.into(),
        group: t.group.into(),
        resource: t.plural.into(),
        subresource: t.sub.unwrap_or_default().into(),
        namespace: t.ns.unwrap_or_default().into(),
        name: t.name.unwrap_or_default().into(),
        path: None,
    }
}

fn not_served() -> Response {
    fail(ApiError::new(404, "NotFound", "the server could not find the requested resource".into()))
}

async fn handle(
    State(shared): State<Arc<Mutex<Store>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if stalled(&shared, &uri, &headers) {
        return stall().await;
    }
    answer(shared, method, uri, headers, q, body)
}

/// Whether the request is for a resource [`KubeServer::stall`] named, by
/// anyone but the administrator.
fn stalled(shared: &Mutex<Store>, uri: &Uri, headers: &HeaderMap) -> bool {
    let store = shared.lock().expect("not poisoned");
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let bearer = headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let id = kube_auth::authenticate(&store, bearer);
    id.is_some_and(|id| !id.is_admin()) && target(&segs).is_some_and(|t| store.stalled.iter().any(|p| p == t.plural))
}

fn answer(
    shared: Arc<Mutex<Store>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    q: std::collections::HashMap<String, String>,
    body: Bytes,
) -> Response {
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let mut store = shared.lock().expect("not poisoned");
    controllers::purge_namespaces(&mut store);
    store.warnings.clear();
    let bearer = headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok());
    let Some(id) = kube_auth::authenticate(&store, bearer) else {
        return fail(kube_auth::unauthorized());
    };
    let t = target(&segs);
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let attrs = attributes(&method, uri.path(), t.as_ref(), watching);
    let refused = !id.is_admin() && store.forbidden.contains(&attrs.resource);
    let allowed = !refused && kube_auth::authorize(&store, &id, &attrs).is_some();
    kube_audit::record(&store, &id, &attrs, allowed);
    if !allowed {
        return fail(kube_auth::forbidden(&id, &attrs));
    }
    let Some(t) = t else {
        let port = headers.get(header::HOST).and_then(|h| h.to_str().ok()).and_then(|h| h.rsplit(':').next()).and_then(|p| p.parse().ok());
        return match discovery(&store, &segs, port) {
            Some(d) if method == Method::GET => reply(StatusCode::OK, d),
            _ => not_served(),
        };
    };
    let Some(res) = store.find(t.group, t.version, t.plural) else { return not_served() };
    if watching && method == Method::GET && t.name.is_none() {
        let since = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(store.rv);
        let limit = q.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(5u64).min(5);
        drop(store);
        return watch(shared.clone(), res, t.ns.map(String::from), q.get("fieldSelector").cloned(), since, limit);
    }
    let parsed = serde_json::from_slice::<Value>(&body).map_err(|e| ApiError::new(400, "BadRequest", format!("the body is not JSON: {e}")));
    let result = match (t.sub, res.create_only) {
        (None, true) if method == Method::POST => parsed.and_then(|b| review(&store, &id, &res, b)),
        (_, true) => Err(ApiError::new(405, "MethodNotAllowed", format!("{method} is not supported here"))),
        (Some("token"), _) if res.plural == "serviceaccounts" && method == Method::POST => {
            let (ns, name) = (t.ns.unwrap_or_default(), t.name.unwrap_or_default());
            parsed.and_then(|b| kube_auth::token_request(&mut store, ns, name, &b)).map(|v| (StatusCode::CREATED, v))
        }
        (Some("status"), _) if res.status => crud(&mut store, &res, &t, &method, &q, parsed, Part::Status),
        (Some(_), _) => return not_served(),
        (None, false) => crud(&mut store, &res, &t, &method, &q, parsed, Part::Main),
    };
    if method == Method::GET
        && let (Err(e), Some(name)) = (&result, t.name)
        && e.code == 404
        && store.racing.contains(&res.plural)
    {
        let k = key(&res, t.ns, name);
        store.race_armed.insert(k);
    }
    let tabled = method == Method::GET && headers.get(header::ACCEPT).and_then(|h| h.to_str().ok()).is_some_and(|a| a.contains("as=Table"));
    let mut response = match result {
        Ok((code, v)) if tabled => reply(code, table(&store, &res, v)),
        Ok((code, v)) => reply(code, v),
        Err(e) => fail(e),
    };
    for w in store.warnings.drain(..) {
        if let Ok(v) = header::HeaderValue::from_str(&format!("299 - {w:?}")) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

/// A list or an object as `kubectl get` asks for it (`as=Table`): the
/// columns its CRD prints (`additionalPrinterColumns`) as the API server
/// renders them. Other resources answer as they are, and kubectl prints
/// their names and ages itself.
fn table(store: &Store, res: &Res, body: Value) -> Value {
    let crd = store.objects.get(&format!("apiextensions.k8s.io/customresourcedefinitions//{}.{}", res.plural, res.group));
    let version = crd.and_then(|c| c["spec"]["versions"].as_array()).into_iter().flatten().find(|v| v["name"] == res.version.as_str());
    let Some(columns) = version.and_then(|v| v["additionalPrinterColumns"].as_array()).filter(|c| !c.is_empty()) else { return body };
    let items = body["items"].as_array().cloned().unwrap_or_else(|| vec![body.clone()]);
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    defs.extend(columns.iter().map(|c| {
        json!({"name": c["name"], "type": c["type"], "format": c["format"].as_str().unwrap_or(""),
            "description": c["description"].as_str().unwrap_or(""), "priority": c["priority"].as_i64().unwrap_or(0)})
    }));
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            cells.extend(columns.iter().map(|c| cell(o, c)));
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
        "columnDefinitions": defs, "rows": rows})
}

/// One cell: the value at the column's path (dotted fields only: no
/// filters or indices), a date as its age.
fn cell(o: &Value, column: &Value) -> Value {
    let path = column["jsonPath"].as_str().unwrap_or_default();
    let v = path.split('.').filter(|s| !s.is_empty()).fold(o, |v, k| &v[k]);
    match (column["type"].as_str(), v.as_str()) {
        (Some("date"), Some(t)) => chrono::DateTime::parse_from_rfc3339(t)
            .map_or_else(|_| "<invalid>".into(), |t| age((chrono::Utc::now() - t.to_utc()).num_seconds()).into()),
        _ => v.clone(),
    }
}

/// An age as the API server prints one (apimachinery's `duration.HumanDuration`).
fn age(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    let two =
        |big: i64, unit: &str, small: i64, sub: &str| if small == 0 { format!("{big}{unit}") } else { format!("{big}{unit}{small}{sub}") };
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        two(m, "m", s % 60, "s")
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        two(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        two(d, "d", h % 24, "h")
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        two(d / 365, "y", d % 365, "d")
    } else {
        format!("{}y", d / 365)
    }
}

fn review(store: &Store, id: &Identity, res: &Res, body: Value) -> Result<(StatusCode, Value), ApiError> {
    let answer = match res.plural.as_str() {
        "selfsubjectaccessreviews" => kube_auth::access_review(store, id, body),
        _ => kube_auth::rules_review(store, id, body)?,
    };
    Ok((StatusCode::CREATED, answer))
}

fn crud(
    store: &mut Store,
    res: &Res,
    t: &Target,
    method: &Method,
    q: &std::collections::HashMap<String, String>,
    body: Result<Value, ApiError>,
    part: Part,
) -> Result<(StatusCode, Value), ApiError> {
    let (ns, name) = (t.ns, t.name);
    let ok = |v: Value| (StatusCode::OK, v);
    // A server-side dry run answers as the write would, and stores nothing.
    let dry = q.contains_key("dryRun");
    match (method, name) {
        (&Method::GET, None) => {
            store.list(res, ns, q.get("labelSelector").map(String::as_str), q.get("fieldSelector").map(String::as_str)).map(ok)
        }
        (&Method::GET, Some(n)) => store.get(res, ns, n).map(ok),
        (&Method::POST, None) if dry => body.and_then(|b| store.clone().create(res, ns, b)).map(|v| (StatusCode::CREATED, v)),
        (&Method::POST, None) => body.and_then(|b| store.create(res, ns, b)).map(|v| (StatusCode::CREATED, v)),
        (&Method::PUT, Some(n)) if dry => body.and_then(|b| store.clone().replace(res, ns, n, b, part)).map(ok),
        (&Method::PUT, Some(n)) => body.and_then(|b| store.replace(res, ns, n, b, part)).map(ok),
        // JSON patches (arrays of operations) are not applied by this fake:
        // refused plainly rather than misread as a merge patch.
        (&Method::PATCH, Some(_)) if body.as_ref().is_ok_and(|b| !b.is_object()) => {
            Err(ApiError::new(415, "UnsupportedMediaType", "this fake applies merge patches only (not JSON patches)".into()))
        }
        (&Method::PATCH, Some(n)) => body.and_then(|b| store.patch(res, ns, n, &b, part)).map(ok),
        (&Method::DELETE, Some(n)) if part == Part::Main => {
            let options = body.unwrap_or(Value::Null);
            store.delete(res, ns, n, Propagation::of(res, &options, q.get("propagationPolicy").map(String::as_str))).map(ok)
        }
        _ => Err(ApiError::new(405, "MethodNotAllowed", format!("{method} is not supported here"))),
    }
}
