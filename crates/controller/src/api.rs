//! The daemon's HTTP side: health and readiness, `/metrics`, a JSON API
//! (bearer tokens: read-only and admin scopes), and the routes of the pages
//! people read (`status.rs`; the same tokens, which a browser gives as
//! HTTP Basic credentials).
//! `docs/openapi.yaml` describes the API.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::daemon::{Command, Shared};
use crate::runner::RestoreSpec;
use crate::view::class_states;

/// Bearer tokens. With none configured the API is open (the daemon then
/// listens on loopback only).
#[derive(Clone, Default)]
pub struct Tokens {
    pub admin: Token,
    pub read: Token,
}

/// One scope's token: none, one given at start (an environment variable),
/// or a file read on every request, so that a rotated file (a Kubernetes
/// Secret updated) takes effect at once and the old token stops working.
#[derive(Clone, Default)]
pub enum Token {
    #[default]
    Unset,
    Given(String),
    File(std::path::PathBuf),
}

impl Token {
    /// The token as it is now; none while its file cannot be read, so
    /// that no request passes on a token that may have been revoked.
    fn current(&self) -> Option<String> {
        match self {
            Token::Unset => None,
            Token::Given(t) => Some(t.clone()),
            Token::File(path) => match std::fs::read_to_string(path) {
                Ok(t) => Some(t.trim().to_string()).filter(|t| !t.is_empty()),
                Err(e) => {
                    tracing::warn!("cannot read the token file {}: {e}", path.display());
                    None
                }
            },
        }
    }
}

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    tokens: Arc<Tokens>,
}

#[derive(PartialEq, PartialOrd)]
enum Scope {
    Read,
    Admin,
}

/// Why a request is refused.
enum Denied {
    Unauthorized,
    Forbidden,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Unauthorized => error(StatusCode::UNAUTHORIZED, "a valid bearer token is required"),
            Denied::Forbidden => error(StatusCode::FORBIDDEN, "this token may only read"),
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

impl App {
    /// 401 without a valid token, 403 with a read-only one on a write endpoint.
    fn allow(&self, headers: &HeaderMap, need: Scope) -> Result<String, Denied> {
        let t = &self.tokens;
        if matches!((&t.admin, &t.read), (Token::Unset, Token::Unset)) {
            return Ok("anonymous".into());
        }
        let (admin, read) = (t.admin.current(), t.read.current());
        let given = offered(headers);
        let given = given.as_deref().map(String::as_str);
        // Compared as BLAKE3 hashes, whose equality takes the same time
        // however many leading bytes match: a guess learns nothing from it.
        let is =
            |token: &Option<String>, g: &str| token.as_deref().is_some_and(|t| blake3::hash(t.as_bytes()) == blake3::hash(g.as_bytes()));
        let scope = match given {
            Some(g) if is(&admin, g) => Scope::Admin,
            Some(g) if is(&read, g) => Scope::Read,
            _ => return Err(Denied::Unauthorized),
        };
        if scope < need {
            return Err(Denied::Forbidden);
        }
        Ok(if scope == Scope::Admin { "api:admin" } else { "api:read" }.into())
    }
}

/// The token a request offers: a bearer token (API clients), or the
/// password of HTTP Basic credentials (what a browser sends once the
/// pages' 401 asked for them; the user name is not looked at).
fn offered(headers: &HeaderMap) -> Option<Zeroizing<String>> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(Zeroizing::new(token.to_string()));
    }
    let encoded = value.strip_prefix("Basic ")?;
    let plain = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?);
    let (_, password) = std::str::from_utf8(&plain).ok()?.split_once(':')?;
    Some(Zeroizing::new(password.to_string()))
}

/// The pages are read as the API is: with a token configured, a browser is
/// asked for it (any user name, the read or admin token as password).
fn page_allowed(app: &App, headers: &HeaderMap) -> bool {
    app.allow(headers, Scope::Read).is_ok()
}

fn ask_for_token() -> Response {
    let ask = [(header::WWW_AUTHENTICATE, "Basic realm=\"tresor\", charset=\"UTF-8\"")];
    (StatusCode::UNAUTHORIZED, ask, "a valid token is required: any user name, the read token as password\n").into_response()
}

pub fn router(shared: Arc<Shared>, tokens: Tokens) -> Router {
    let app = App { shared, tokens: Arc::new(tokens) };
    Router::new()
        .route("/", get(status_page))
        .route("/sources/{name}", get(source_page))
        .route("/report", get(report_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/v1/classes", get(classes))
        .route("/api/v1/sources", get(sources))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/sources/{name}/snapshots", get(snapshots))
        .route("/api/v1/sources/{name}/backup", post(trigger_backup))
        .route("/api/v1/sources/{name}/restore", post(trigger_restore))
        .route("/api/v1/sources/{name}/drill", post(trigger_drill))
        .route("/api/v1/reload", post(reload))
        .with_state(app)
}

async fn status_page(State(app): State<App>, headers: HeaderMap) -> Response {
    if !page_allowed(&app, &headers) {
        return ask_for_token();
    }
    Html(crate::status::page(&app.shared)).into_response()
}

async fn source_page(State(app): State<App>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if !page_allowed(&app, &headers) {
        return ask_for_token();
    }
    crate::status::source_page(&app.shared, &name).await
}

async fn report_page(State(app): State<App>, headers: HeaderMap) -> Response {
    if !page_allowed(&app, &headers) {
        return ask_for_token();
    }
    crate::status::report(&app.shared).await
}

async fn ready(State(app): State<App>) -> Response {
    if app.shared.ready.load(Ordering::SeqCst) {
        "ready\n".into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "starting or stopping")
    }
}

/// OpenMetrics to a scraper that asks for it (Prometheus does), else the
/// classic text format, which `promtool check metrics` and older scrapers read.
async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    let body = app.shared.metrics.render(&app.shared.plan(), app.shared.clock.now());
    let accept = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).unwrap_or_default();
    if accept.contains("application/openmetrics-text") {
        return ([(header::CONTENT_TYPE, crate::metrics::OPENMETRICS)], body).into_response();
    }
    ([(header::CONTENT_TYPE, crate::metrics::CLASSIC)], crate::metrics::classic(&body)).into_response()
}

async fn classes(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(r) = app.allow(&headers, Scope::Read) {
        return r.into_response();
    }
    axum::Json(class_states(&app.shared)).into_response()
}

async fn sources(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(r) = app.allow(&headers, Scope::Read) {
        return r.into_response();
    }
    let plan = app.shared.plan();
    let next = app.shared.next_runs.lock().expect("not poisoned").clone();
    let out: Vec<_> = plan
        .sources
        .iter()
        .map(|s| {
            let last = app.shared.state.last_success(&s.name).ok().flatten();
            json!({
                "name": s.name, "class": s.class, "url": s.url.to_string(), "schedule": s.schedule,
                "next_run": next.get(&s.name), "last_success": last.and_then(|j| j.ended_at),
            })
        })
        .collect();
    axum::Json(out).into_response()
}

#[derive(Deserialize)]
struct JobQuery {
    limit: Option<usize>,
    source: Option<String>,
}

async fn jobs(State(app): State<App>, headers: HeaderMap, q: Result<Query<JobQuery>, QueryRejection>) -> Response {
    if let Err(r) = app.allow(&headers, Scope::Read) {
        return r.into_response();
    }
    let Query(q) = match q {
        Ok(q) => q,
        // In the API's error schema (it was axum's plain text), once the caller is known to be allowed.
        Err(e) => return error(e.status(), &e.body_text()),
    };
    match app.shared.state.jobs(q.limit.unwrap_or(50).min(1000), q.source.as_deref()) {
        Ok(j) => axum::Json(j).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn job(State(app): State<App>, headers: HeaderMap, id: Result<Path<i64>, PathRejection>) -> Response {
    if let Err(r) = app.allow(&headers, Scope::Read) {
        return r.into_response();
    }
    let Path(id) = match id {
        Ok(id) => id,
        // In the API's error schema (it was axum's plain text), once the caller is known to be allowed.
        Err(e) => return error(e.status(), &e.body_text()),
    };
    match app.shared.state.job(id) {
        Ok(Some(j)) => axum::Json(j).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no job {id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn audit(State(app): State<App>, headers: HeaderMap, q: Result<Query<JobQuery>, QueryRejection>) -> Response {
    if let Err(r) = app.allow(&headers, Scope::Read) {
        return r.into_response();
    }
    let Query(q) = match q {
        Ok(q) => q,
        // In the API's error schema (it was axum's plain text), once the caller is known to be allowed.
        Err(e) => return error(e.status(), &e.body_text()),
    };
    match app.shared.state.audit_log(q.limit.unwrap_or(100).min(10_000)) {
        Ok(a) => axum::Json(a).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// A source's snapshots, newest last, as `tresor snapshots --json` lists them.
async fn snapshots(State(app): State<App>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = app.allow(&headers, Scope::Read) {
        return r.into_response();
    }
    let plan = app.shared.plan();
    let Some((_, repo)) = plan.sources.iter().find(|s| s.name == name).and_then(|s| plan.repository_of(s)) else {
        return error(StatusCode::NOT_FOUND, &format!("no source {name} in the plan"));
    };
    match app.shared.repos.snapshots(repo, Some(&name)).await {
        Ok(list) => axum::Json(list).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, &e),
    }
}

async fn trigger_backup(State(app): State<App>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    trigger(&app, &headers, name, |source, actor| Command::Backup { source, actor })
}

async fn trigger_drill(State(app): State<App>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    trigger(&app, &headers, name, |source, actor| Command::Drill { source, actor })
}

/// Queue a job for a source of the plan (admin scope).
fn trigger(app: &App, headers: &HeaderMap, name: String, job: impl FnOnce(String, String) -> Command) -> Response {
    let actor = match app.allow(headers, Scope::Admin) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    if !app.shared.plan().sources.iter().any(|s| s.name == name) {
        return error(StatusCode::NOT_FOUND, &format!("no source {name} in the plan"));
    }
    if let Some(refused) = queue(app, job(name.clone(), actor)) {
        return refused;
    }
    (StatusCode::ACCEPTED, axum::Json(json!({"queued": name}))).into_response()
}

/// Hand a job to the scheduler, which runs it only on a leading replica
/// that is not stopping: elsewhere a 202 would promise what never runs
/// (the refusal, then).
fn queue(app: &App, cmd: Command) -> Option<Response> {
    let not_leading = "this replica runs no jobs now (standing by for the lease, starting or stopping): ask the one that leads";
    let refused = !app.shared.ready.load(Ordering::SeqCst) || app.shared.commands.send(cmd).is_err();
    refused.then(|| error(StatusCode::SERVICE_UNAVAILABLE, not_leading))
}

/// Restore a source's newest backup (or the snapshot named, or the newest
/// of those from the hosts, tags and paths named) into a service or a
/// directory, as a job with its own history, audit entry and metrics.
async fn trigger_restore(
    State(app): State<App>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<axum::Json<RestoreSpec>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let actor = match app.allow(&headers, Scope::Admin) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    // A body that is no JSON restore request (no `Content-Type:
    // application/json`: 415, a field unknown: 422) answers in the API's error schema too.
    let mut spec = match body {
        Ok(axum::Json(spec)) => spec,
        Err(e) => return error(e.status(), &e.body_text()),
    };
    // A file on the daemon's host, which the job would read: the plan
    // names a source's transforms, a request does not.
    if spec.transforms.is_some() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "\"transforms\" is the source's, from the plan: a request cannot name a file");
    }
    if !app.shared.plan().sources.iter().any(|s| s.name == name) {
        return error(StatusCode::NOT_FOUND, &format!("no source {name} in the plan"));
    }
    if spec.to.is_some() == spec.target.is_some() {
        return error(StatusCode::BAD_REQUEST, "give exactly one of \"to\" (a service URL) and \"target\" (a directory)");
    }
    let narrowed = !(spec.host.is_empty() && spec.tag.is_empty() && spec.path.is_empty());
    if let Some(given) = spec.snapshot.clone() {
        match own_snapshot(&app, &name, &given).await {
            Ok(id) => spec.snapshot = Some(id),
            Err(refused) => return refused,
        }
    }
    if spec.snapshot.is_none() && !narrowed {
        match app.shared.state.last_success(&name) {
            Ok(Some(j)) if j.outcome.snapshot.is_some() => spec.snapshot = j.outcome.snapshot,
            Ok(_) => return error(StatusCode::NOT_FOUND, &format!("source {name} has no successful backup to restore")),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }
    let snapshot = spec.snapshot.clone();
    if let Some(refused) = queue(&app, Command::Restore { source: name.clone(), spec: Box::new(spec), actor }) {
        return refused;
    }
    (StatusCode::ACCEPTED, axum::Json(json!({"queued": name, "snapshot": snapshot}))).into_response()
}

/// The full id of the snapshot `given` names among source `name`'s, or the
/// answer why not: a snapshot of another source restored into this one's
/// target (the job took any id), and one that did not exist was accepted.
async fn own_snapshot(app: &App, name: &str, given: &str) -> Result<String, Response> {
    let plan = app.shared.plan();
    let Some((_, repo)) = plan.sources.iter().find(|s| s.name == name).and_then(|s| plan.repository_of(s)) else {
        return Err(error(StatusCode::NOT_FOUND, &format!("no source {name} in the plan")));
    };
    match app.shared.repos.snapshot_of(repo, name, given).await {
        Ok(Ok(id)) => Ok(id),
        Ok(Err(e @ tresor_engine::Error::FilteredOut { .. })) => {
            Err(error(StatusCode::UNPROCESSABLE_ENTITY, &format!("{e}: it is not a snapshot of source {name}")))
        }
        Ok(Err(e)) => Err(error(StatusCode::NOT_FOUND, &e.to_string())),
        Err(e) => Err(error(StatusCode::BAD_GATEWAY, &format!("cannot read the snapshots of source {name}: {e}"))),
    }
}

async fn reload(State(app): State<App>, headers: HeaderMap) -> Response {
    let actor = match app.allow(&headers, Scope::Admin) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let _ = app.shared.commands.send(Command::Reload { actor });
    (StatusCode::ACCEPTED, axum::Json(json!({"reload": "requested"}))).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::model::{Kind, Reason, Trigger};

    /// docs/openapi.yaml lists for a job every kind and trigger the code
    /// writes, no more, and names every failure reason.
    #[test]
    fn the_apis_description_lists_the_codes_job_values() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.yaml")).expect("the description");
        let doc: serde_json::Value = serde_norway::from_str(&text).expect("YAML");
        let job = &doc["components"]["schemas"]["Job"]["properties"];
        let listed =
            |field: &str| -> BTreeSet<&str> { job[field]["enum"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect() };
        assert_eq!(listed("kind"), Kind::ALL.map(Kind::as_str).into());
        assert_eq!(listed("trigger"), Trigger::ALL.map(Trigger::as_str).into());
        let reasons = job["reason"]["description"].as_str().expect("the reasons");
        let missing: Vec<&str> = Reason::ALL.map(Reason::as_str).into_iter().filter(|r| !reasons.contains(r)).collect();
        assert_eq!(missing, Vec::<&str>::new());
    }

    #[test]
    fn passwords_are_left_out_of_urls() {
        assert_eq!(crate::view::redact("postgres://app:s3cret@db:5432/shop"), "postgres://app:***@db:5432/shop");
        assert_eq!(crate::view::redact("redis://10.0.0.5:6379"), "redis://10.0.0.5:6379");
    }

    #[test]
    fn a_token_is_offered_as_bearer_or_as_a_basic_password() {
        let offered = |value: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
            super::offered(&h).map(|t| t.to_string())
        };
        assert_eq!(offered("Bearer read-token").as_deref(), Some("read-token"));
        // "anyone:read-token", and a password may hold colons (RFC 7617).
        assert_eq!(offered("Basic YW55b25lOnJlYWQtdG9rZW4=").as_deref(), Some("read-token"));
        assert_eq!(offered("Basic OmE6Yg==").as_deref(), Some("a:b"));
        assert_eq!(offered("Basic bm9jb2xvbg=="), None, "no colon: no password");
        assert_eq!(offered("Basic !!!"), None);
        assert_eq!(offered("Digest x"), None);
        assert!(super::offered(&axum::http::HeaderMap::new()).is_none());
    }
}
