//! `tresor plan check --connect`: reach every repository and source of a
//! plan with its credentials and say, one line each, what answered.
//!
//! The checks run at once, each within [`LIMIT`], so one host that does not
//! answer costs seconds, not minutes. They only read: nothing is created,
//! backed up or cached.

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use serde_json::json;
use tresor_controller::check::{Finding, Severity, check};
use tresor_controller::plan::{self, Plan};
use tresor_engine::{OpenOptions, Repository};
use tresor_sources::probe;
use tresor_storage::{Location, OpErrorKind, StorageOptions};

use crate::commands::{human, open_options, print_json, read_password_file};
use crate::opts::{Global, PlanCheckArgs};

/// How long one check may take before it is reported as unanswered.
const LIMIT: Duration = Duration::from_secs(10);

/// One line of the report.
#[derive(Serialize)]
struct Check {
    kind: &'static str,
    name: String,
    ok: bool,
    detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {} — {}", self.kind, self.name, if self.ok { "ok" } else { "FAILED" }, self.detail)
    }
}

pub fn run(g: &Global, a: &PlanCheckArgs) -> Result<u8> {
    let (mut plan, text) = Plan::load(&a.plan)?;
    server_archive_timeouts(&mut plan);
    let findings = check(&plan, &text, chrono::Utc::now());
    let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
    // A plan that contradicts itself is not worth connecting for.
    let checks = if errors > 0 {
        Vec::new()
    } else {
        let all = checks(g, &plan)?;
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| rt.block_on(futures::future::join_all(all)))
    };
    let failed = checks.iter().filter(|c| !c.ok).count();
    if g.json {
        let findings: Vec<_> = findings.iter().map(finding_json).collect();
        print_json(&json!({
            "file": a.plan,
            "errors": errors,
            "findings": findings,
            "checks": checks,
            "summary": {"checks": checks.len(), "ok": checks.len() - failed, "failed": failed},
        }))?;
    } else {
        for f in &findings {
            say!("{}:{f}", a.plan.display());
        }
        if errors > 0 {
            // Said so: a WAL source's server may have been asked for its archive_timeout already.
            say!("{}: {}: the connections are checked once the plan has none", a.plan.display(), crate::commands::counted(errors, "error"));
        } else {
            for c in &checks {
                say!("{c}");
            }
            say!("{} checks: {} ok, {failed} failed", checks.len(), checks.len() - failed);
        }
    }
    Ok(if errors + failed > 0 { crate::EXIT_ERROR } else { 0 })
}

/// A WAL-archiving source's `archive_timeout` as its server has it, when
/// it answers (the check judges the RPO by it, not by the plan's word).
fn server_archive_timeouts(plan: &mut Plan) {
    for s in plan.sources.iter_mut().filter(|s| s.url.starts_with("pgbase://")) {
        let Some(w) = s.wal_archive.as_mut() else { continue };
        if let Ok(p) = tokio::task::block_in_place(|| tresor_sources::pgwal::server_position(s.url.expose())) {
            w.archive_timeout = Some(tresor_controller::plan::Span(std::time::Duration::from_secs(p.archive_timeout)));
        }
    }
}

fn finding_json(f: &Finding) -> serde_json::Value {
    let severity = if f.severity == Severity::Error { "error" } else { "warning" };
    json!({"line": f.line, "severity": severity, "message": f.message})
}

type Pending = std::pin::Pin<Box<dyn Future<Output = Check> + Send>>;

/// Every repository, then every source, in the plan's order.
fn checks(g: &Global, plan: &Plan) -> Result<Vec<Pending>> {
    let mut out: Vec<Pending> = Vec::new();
    for (name, r) in &plan.repositories {
        let mut opts = open_options(g, tresor_engine::Password::new(""))?;
        // A doctor reads: it leaves no cache behind, and reports the first
        // failure rather than retrying it past its time limit.
        opts.cache_root = None;
        opts.storage.max_retries = Some(0);
        out.push(Box::pin(timed("repository", name.clone(), repository(r.clone(), opts))));
    }
    for s in &plan.sources {
        // Told apart by the redacted URL, which keeps the scheme; the probe connects with the whole.
        let kind = kind_of(&s.url.to_string());
        out.push(Box::pin(timed(kind, s.name.clone(), source(kind, s.url.expose().to_string()))));
    }
    Ok(out)
}

/// Run `probe` on the runtime's workers, within [`LIMIT`].
async fn timed(kind: &'static str, name: String, probe: impl Future<Output = Result<String, String>> + Send + 'static) -> Check {
    let (ok, detail) = match tokio::time::timeout(LIMIT, tokio::spawn(probe)).await {
        Ok(Ok(Ok(detail))) => (true, detail),
        Ok(Ok(Err(reason))) => (false, reason),
        Ok(Err(e)) => (false, format!("the check stopped: {e}")),
        Err(_) => (false, format!("no answer within {}s", LIMIT.as_secs())),
    };
    Check { kind, name, ok, detail }
}

/// Reach the repository, unlock it, and say its format, size and (on a
/// local file system) free space.
async fn repository(r: plan::Repository, mut opts: OpenOptions) -> Result<String, String> {
    let failed = |e: anyhow::Error| crate::one_line(&e);
    let loc = Location::parse(r.url.expose()).map_err(|e| failed(e.into()))?;
    match Repository::probe(&loc, &opts.storage).await {
        Err(tresor_engine::Error::NoRepository { .. }) if r.init => {
            return Ok("not there yet: the daemon creates it when it starts (init: true)".into());
        }
        Err(e @ tresor_engine::Error::NoRepository { .. }) => {
            let why = missing_bucket(&loc, &opts.storage).await;
            return Err(why.map_or_else(|| failed(e.into()), |why| format!("no repository at {loc}: {why}")));
        }
        Err(e) => return Err(failed(e.into())),
        Ok(_) => {}
    }
    opts.password = read_password_file(&r.password_file).map_err(failed)?;
    let repo = Repository::open(&loc, &opts).await.map_err(|e| failed(e.into()))?;
    let stored: u64 = repo.index().await.map_err(|e| failed(e.into()))?.packs().map(|(_, size)| size).sum();
    let mut detail = format!("format {}, {} stored", repo.config().version, human(stored));
    if let Some((free, size)) = tresor_controller::metrics::local_space(&r.url) {
        detail.push_str(&format!(", {} free of {}", human(free), human(size)));
    }
    Ok(detail)
}

/// Why nothing is at an S3 location, when it is the bucket that is
/// missing: reading one object cannot tell (404 either way), listing can
/// (`NoSuchBucket`, which OpenDAL reports as a configuration error).
async fn missing_bucket(loc: &Location, storage: &StorageOptions) -> Option<String> {
    let Location::S3 { bucket, .. } = loc else { return None };
    match tresor_storage::open(loc, storage).ok()?.list("/").await {
        Err(e) if e.kind() == OpErrorKind::ConfigInvalid => Some(format!("the bucket {bucket} does not exist")),
        _ => None,
    }
}

type Probe = std::pin::Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// The kind of source a URL names, as the backup tells them apart.
fn kind_of(url: &str) -> &'static str {
    match url.split_once(':').map_or("", |(scheme, _)| scheme) {
        "redis" | "rediss" => "redis",
        "postgres" | "postgresql" => "postgres",
        "pgbase" => "pgbase",
        "etcd" => "etcd",
        "k8s" => "k8s",
        "pvc" => "pvc",
        "command" => "command",
        _ => "path",
    }
}

fn source(kind: &str, url: String) -> Probe {
    match kind {
        "redis" => Box::pin(off_thread(move || probe::redis(&url))),
        "postgres" => Box::pin(off_thread(move || probe::postgres(&url))),
        "pgbase" => Box::pin(off_thread(move || probe::pg_base(&url))),
        "etcd" => Box::pin(etcd(url)),
        "k8s" | "pvc" => Box::pin(async move { probe::kubernetes(&url).await.map_err(|e| e.to_string()) }),
        "command" => Box::pin(off_thread(move || probe::command(url.trim_start_matches("command:")))),
        _ => Box::pin(off_thread(move || probe::path(&url))),
    }
}

/// `etcd 3.5.16, member 8e9e05c52164694d, leader`: the member id in hex, as etcdctl prints it.
async fn etcd(url: String) -> Result<String, String> {
    let m = tresor_sources::etcd::status(&url).await.map_err(|e| e.to_string())?;
    let role = match (m.is_learner, m.member_id == m.leader) {
        (true, _) => "learner",
        (false, true) => "leader",
        (false, false) => "follower",
    };
    Ok(format!("etcd {}, member {:x}, {role}", m.version, m.member_id))
}

/// A blocking probe on a thread of its own rather than the runtime's
/// blocking pool: one that outlives its time limit is abandoned, and must
/// not hold up the exit.
async fn off_thread(f: impl FnOnce() -> tresor_sources::Result<String> + Send + 'static) -> Result<String, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || tx.send(f().map_err(|e| e.to_string())));
    rx.await.map_err(|_| "the check stopped unexpectedly".to_string())?
}
