//! Running an application's restore hooks and smoke checks: workloads
//! scaled (through `tresor_sources::restore_hooks`), commands, HTTP
//! requests, SQL queries; each with a time limit, each outcome kept.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tresor_sources::PgUrl;
use tresor_sources::restore_hooks::Workload;

use crate::model::HookOutcome;
use crate::plan::{HttpCheck, Query, RestoreHook, Scale, SecretUrl, Verify};

/// A hook's time limit when neither it nor its application sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// One hook or check, as it went (the protocol's type).
pub type Outcome = HookOutcome;

/// What a command hook or check finds in its environment besides
/// `TRESOR_HOOK`: each source's target, `TRESOR_TARGET_<SOURCE>` (upper
/// case, other than letters and digits `_`).
pub type HookEnv = [(String, String)];

/// A runtime for the hooks' network calls (they run on a thread of their own).
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("cannot start a runtime: {e}"))
}

pub fn workload(s: &Scale) -> Result<Workload, String> {
    Workload::parse(s.cluster.as_deref().unwrap_or("k8s://"), &s.namespace, &s.workload)
}

/// Run one hook; its outcome, and for a scale the replicas it had and has.
pub fn run_hook(
    rt: &tokio::runtime::Runtime,
    phase: &str,
    h: &RestoreHook,
    limit: Duration,
    env: &HookEnv,
) -> (Outcome, Option<(u32, u32)>) {
    let started = Instant::now();
    let mut scaled = None;
    let result: Result<String, String> = match (&h.scale, &h.command, &h.http) {
        (Some(s), _, _) => workload(s).and_then(|w| {
            let done = match s.replicas {
                Some(n) if phase == "pre" => rt.block_on(w.scale_to(n, limit)).map(Some),
                n => rt.block_on(w.scale_back(n, limit)),
            };
            match done.map_err(|e| e.to_string())? {
                Some((from, to)) => {
                    scaled = Some((from, to));
                    Ok(format!("{from} → {to} replicas, ready"))
                }
                None => Ok("no replicas remembered: left as it is".into()),
            }
        }),
        (_, Some(c), _) => command(phase, c, limit, env),
        (_, _, Some(check)) => rt.block_on(http(check, limit)),
        _ => Err("the hook says nothing to do".into()),
    };
    (outcome(phase, kind_of(h), h.describe(), result, started), scaled)
}

/// A command through `sh -c`; how it failed in its own last words (the hook's name is the outcome's).
fn command(phase: &str, c: &str, limit: Duration, env: &HookEnv) -> Result<String, String> {
    let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.push(("TRESOR_HOOK", phase));
    tresor_sources::run_hook(phase, c, limit, &vars).map(|_| "exit 0".into()).map_err(|e| {
        let said = e.to_string();
        said.strip_prefix(&format!("{phase} hook {:?}: ", tresor_sources::shown_command(c))).map_or(said.clone(), String::from)
    })
}

/// A hook's kind, as outcomes name it.
pub fn kind_of(h: &RestoreHook) -> &'static str {
    match (&h.scale, &h.command, &h.http) {
        (Some(_), _, _) => "scale",
        (_, Some(_), _) => "command",
        (_, _, Some(_)) => "http",
        _ => "nothing",
    }
}

pub fn outcome(phase: &str, kind: &str, what: String, result: Result<String, String>, started: Instant) -> Outcome {
    let seconds = started.elapsed().as_secs_f64();
    let (passed, detail) = match result {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Outcome { phase: phase.into(), kind: kind.into(), what, passed, detail, seconds }
}

/// One request: it must answer the status expected (and hold the text asked for).
pub async fn http(check: &HttpCheck, limit: Duration) -> Result<String, String> {
    let want = check.status.unwrap_or(200);
    let client = reqwest::Client::builder().timeout(limit).build().map_err(|e| e.to_string())?;
    let resp = client.get(check.url.expose()).send().await.map_err(|e| format!("GET {}: {}", check.url, root_cause(&e)))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let first = body.lines().next().unwrap_or("").chars().take(200).collect::<String>();
    if status != want {
        return Err(format!("GET {} answered {status}, not {want}: {first}", check.url));
    }
    if let Some(text) = &check.contains
        && !body.contains(text.as_str())
    {
        return Err(format!("GET {} answered {status} without {text:?}: {first}", check.url));
    }
    Ok(format!("answered {status}"))
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Where the application's smoke checks go: `postgres` is the server a
/// query without its own URL asks (the application's PostgreSQL target),
/// `point` the restore point a query's `max_age` counts back from.
pub struct CheckTarget<'a> {
    pub postgres: Option<&'a str>,
    pub point: Option<DateTime<Utc>>,
}

/// The application's smoke checks.
pub fn smoke_checks(rt: &tokio::runtime::Runtime, v: &Verify, to: CheckTarget, limit: Duration, env: &HookEnv) -> Vec<Outcome> {
    let mut out = Vec::new();
    for check in &v.http {
        let started = Instant::now();
        out.push(outcome("check", "http", format!("http {}", check.url), rt.block_on(http(check, limit)), started));
    }
    if let Some(c) = &v.command {
        let started = Instant::now();
        out.push(outcome(
            "check",
            "command",
            format!("command {:?}", tresor_sources::shown_command(c)),
            command("check", c, limit, env),
            started,
        ));
    }
    for q in &v.queries {
        let started = Instant::now();
        let ran = match q.url.as_ref().map(SecretUrl::expose).or(to.postgres) {
            Some(url) => query(url, q, to.point),
            None => Err("no server to ask: give the query a url".into()),
        };
        out.push(outcome("check", "sql", format!("sql {}", q.sql), ran, started));
    }
    out
}

/// One query through `psql`, judged against what the plan expects of it
/// at the restore point `point`.
pub(crate) fn query(url: &str, q: &Query, point: Option<DateTime<Utc>>) -> Result<String, String> {
    let value = psql_value(url, &q.sql, q.database.as_deref())?;
    let met = q.judge(&value, point)?;
    Ok(if met.is_empty() { format!("answered {value:?}") } else { format!("answered {value:?} ({met})") })
}

/// What one query through `psql` answers; the connection in its
/// environment, where a password is out of sight.
pub(crate) fn psql_value(url: &str, sql: &str, database: Option<&str>) -> Result<String, String> {
    let conn = PgUrl::parse(url).map_err(|why| format!("a query's url: {why}"))?;
    let db = database.or(conn.database.as_deref()).unwrap_or("postgres");
    let mut c = std::process::Command::new(crate::scratch::Postgres::bin_dir().join("psql"));
    c.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    conn.apply(&mut c);
    c.env("PGDATABASE", db);
    if conn.user.is_none() {
        c.env("PGUSER", "postgres");
    }
    let out = c.output().map_err(|e| format!("cannot run psql: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(tresor_sources::last_line(&err).unwrap_or("psql failed").to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
