//! One restore of a whole application as of a moment: per source the
//! newest restore point at or before it (a PostgreSQL base backup
//! recovered through the archived WAL exactly to it), every target known
//! and every point found before anything is touched; then the pre-hooks,
//! the sources in the application's order, the post-hooks and the smoke
//! checks. A failed pre-hook undoes the scale-downs before it and restores
//! nothing. The report names each source's point and the application's
//! consistency window (the spread between those points).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::app_hooks::{CheckTarget, DEFAULT_TIMEOUT, HookEnv, Outcome, outcome, run_hook, runtime, smoke_checks};
use crate::child::Tresor;
use crate::model::RestoreSpec;
pub use crate::model::SourcePoint;
use crate::plan::{AppSource, Application, Plan, Repository, RestoreHook, Scale, SecretUrl, SourceSpec};

/// What to restore: the application, the moment, where to.
pub struct Request<'a> {
    pub exe: &'a Path,
    pub plan: &'a Plan,
    pub app: &'a Application,
    /// `None`: the newest point of each source.
    pub time: Option<DateTime<Utc>>,
    /// A source's target instead of the plan's (`SOURCE=URL|DIR`).
    pub targets: BTreeMap<String, String>,
    /// For `k8s://` sources: `OLD:NEW`.
    pub namespace_mapping: Vec<String>,
    /// Say what would be done; do nothing.
    pub dry_run: bool,
    /// Into scratch targets (a drill): scale hooks, which act on the
    /// application's own workloads, are skipped and said to be.
    pub scratch: bool,
}

/// The whole restore, as it went.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub application: String,
    pub time: Option<DateTime<Utc>>,
    pub dry_run: bool,
    pub sources: Vec<SourcePoint>,
    /// The spread between the sources' points.
    pub consistency_window_seconds: f64,
    pub hooks: Vec<Outcome>,
    pub checks: Vec<Outcome>,
    /// Workloads scaled up by the post-hooks (`deployment/web in shop: 0 → 2`).
    pub scaled_up: Vec<String>,
    pub passed: bool,
    pub error: Option<String>,
    pub seconds: f64,
}

/// Find every point and target, or say why not; nothing is touched.
pub fn prepare(r: &Request) -> Result<Report, String> {
    let order = r.app.order()?;
    let mut sources = Vec::new();
    for entry in order {
        let spec = r.plan.sources.iter().find(|s| s.name == entry.source).ok_or_else(|| format!("unknown source {:?}", entry.source))?;
        sources.push(point_of(r, entry, spec)?);
    }
    let points: Vec<DateTime<Utc>> = sources.iter().map(|s| s.point).collect();
    let window = match (points.iter().min(), points.iter().max()) {
        (Some(lo), Some(hi)) => (*hi - *lo).num_milliseconds() as f64 / 1000.0,
        _ => 0.0,
    };
    Ok(Report { sources, consistency_window_seconds: window, ..empty(r) })
}

/// A report with nothing done yet.
fn empty(r: &Request) -> Report {
    Report {
        application: r.app.name.clone(),
        time: r.time,
        dry_run: r.dry_run,
        sources: Vec::new(),
        consistency_window_seconds: 0.0,
        hooks: Vec::new(),
        checks: Vec::new(),
        scaled_up: Vec::new(),
        passed: false,
        error: None,
        seconds: 0.0,
    }
}

fn time_of(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}

/// The source's snapshot at or before the time, its point and its restore.
fn point_of(r: &Request, entry: &AppSource, spec: &SourceSpec) -> Result<SourcePoint, String> {
    let (_, repo) = r.plan.repository_of(spec).ok_or_else(|| format!("source {}: its repository is not in the plan", spec.name))?;
    let t = Tresor::new(r.exe, repo, &spec.name);
    let snaps = t.snapshots()?;
    let snaps: Vec<&Value> = snaps.as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let (snap, snapshot_time) = chosen(r, spec, &snaps)?;
    let kind = snap["source"]["kind"].as_str().unwrap_or("files").to_string();
    // A service's URL, for the restore's spec (a child's standard input), redacted where shown.
    let target = r.targets.get(&spec.name).cloned().or_else(|| entry.target.as_ref().map(|t| t.expose().to_string()));
    let id = snap["id"].as_str().unwrap_or_default().to_string();
    let mut out = SourcePoint {
        bytes: snap["summary"]["total_bytes_processed"].as_u64().unwrap_or(0),
        source: spec.name.clone(),
        kind,
        snapshot: id.clone(),
        snapshot_time,
        point: snapshot_time,
        exact: false,
        target: String::new(),
        result: String::new(),
        spec: RestoreSpec { snapshot: Some(id.clone()), flush: entry.flush, ..RestoreSpec::default() },
    };
    aim(&mut out, r, spec, repo, snap, target)?;
    Ok(out)
}

/// The newest snapshot ready at or before the request's time (a base
/// backup is a point once it was complete; the others are their start's),
/// and that moment.
fn chosen<'s>(r: &Request, spec: &SourceSpec, snaps: &[&'s Value]) -> Result<(&'s Value, DateTime<Utc>), String> {
    let oldest = snaps.first().ok_or_else(|| format!("source {} has no restore point", spec.name))?;
    let ready = |s: &Value| match s["source"]["kind"] == "pg-base" {
        true => time_of(&s["summary"]["backup_end"]).or_else(|| time_of(&s["time"])),
        false => time_of(&s["time"]),
    };
    let chosen = match r.time {
        None => snaps.last().copied(),
        Some(at) => snaps.iter().rev().find(|s| ready(s).is_some_and(|e| e <= at)).copied(),
    };
    let Some(snap) = chosen else {
        return Err(format!(
            "source {} has no restore point at or before {}: its oldest is {}",
            spec.name,
            r.time.map(|t| t.to_rfc3339()).unwrap_or_default(),
            ready(oldest).map(|t| t.to_rfc3339()).unwrap_or_default()
        ));
    };
    Ok((snap, ready(snap).unwrap_or_default()))
}

/// Where and how one source's point comes back, by the snapshot's kind.
fn aim(
    out: &mut SourcePoint,
    r: &Request,
    spec: &SourceSpec,
    repo: &Repository,
    snap: &Value,
    target: Option<String>,
) -> Result<(), String> {
    let (id, snapshot_time) = (out.snapshot.clone(), out.snapshot_time);
    match out.kind.as_str() {
        "pg-base" => {
            let dir = target
                .ok_or_else(|| format!("source {}: a base backup comes back as a new data directory: give it a target", spec.name))?;
            let wal = newest_wal(&Tresor::new(r.exe, repo, ""), snap)?;
            out.spec.base_backup = true;
            out.spec.target = Some(dir.clone());
            (out.point, out.exact) = match (r.time, wal) {
                (Some(at), Some(w)) if w >= at => (at, true),
                (_, Some(w)) => (w.max(snapshot_time), false),
                (_, None) => (snapshot_time, false),
            };
            out.spec.recover_to = Some(if out.exact { out.point.to_rfc3339() } else { "latest".into() });
            out.target = dir;
        }
        "files" => {
            // A directory comes back where it was, as it was: what was added since goes.
            let path = snap["paths"][0].as_str().unwrap_or("/").to_string();
            let dir = target.unwrap_or_else(|| path.clone());
            out.spec.snapshot = Some(format!("{id}:{path}"));
            out.spec.target = Some(dir.clone());
            out.spec.delete = true;
            out.target = dir;
        }
        "k8s" | "redis" | "redis-aof" | "postgres" => {
            out.aim_to(target.map_or_else(|| spec.url.clone(), SecretUrl::from));
            if out.kind == "k8s" {
                out.spec.namespace_mapping = r.namespace_mapping.clone();
            }
        }
        other => {
            out.aim_to(SecretUrl::from(target.ok_or_else(|| format!("source {}: a {other} snapshot needs a target", spec.name))?));
        }
    }
    Ok(())
}

/// When the newest WAL segment of the base backup's cluster was archived.
fn newest_wal(all: &Tresor, base: &Value) -> Result<Option<DateTime<Utc>>, String> {
    let system = &base["source"]["consistency"]["system_id"];
    let snaps = all.snapshots()?;
    Ok(snaps
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["source"]["kind"] == "pg-wal" && s["source"]["consistency"]["system_id"] == *system)
        .filter_map(|s| time_of(&s["time"]))
        .max())
}

fn limit_of(app: &Application, h: &RestoreHook) -> Duration {
    h.timeout.or(app.hooks.timeout).map_or(DEFAULT_TIMEOUT, |s| s.0)
}

/// Prepare, then (unless a dry run) run it all.
pub fn restore_app(r: &Request) -> Report {
    let started = Instant::now();
    let mut report = match prepare(r) {
        Ok(rep) => rep,
        Err(e) => return Report { error: Some(e), ..empty(r) },
    };
    if !r.dry_run
        && let Err(e) = run(r, &mut report)
    {
        report.error = Some(e);
    }
    report.passed = report.error.is_none() && report.hooks.iter().chain(&report.checks).all(|o| o.passed);
    report.seconds = started.elapsed().as_secs_f64();
    report
}

fn run(r: &Request, report: &mut Report) -> Result<(), String> {
    let rt = runtime()?;
    let scaled_down = pre_hooks(&rt, r, report)?;
    restore_sources(r, report, &scaled_down)?;
    post_hooks(&rt, r, report)?;
    let postgres = report.sources.iter().find(|s| s.kind == "postgres").and_then(|s| s.spec.to.clone());
    smoke(&rt, r, report, postgres.as_ref().map(SecretUrl::expose))
}

/// Each source's target for the hooks' commands (`TRESOR_TARGET_<SOURCE>`).
pub fn hook_env(report: &Report) -> Vec<(String, String)> {
    report
        .sources
        .iter()
        .map(|s| {
            let name: String = s.source.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
            // An environment variable of the hook's process: the URL whole.
            let to =
                s.spec.to.as_ref().map(|u| u.expose().to_string()).or_else(|| s.spec.target.clone()).unwrap_or_else(|| s.target.clone());
            (format!("TRESOR_TARGET_{name}"), to)
        })
        .collect()
}

/// One hook; into scratch targets a scale is skipped (it would act on production).
fn hook(rt: &tokio::runtime::Runtime, r: &Request, phase: &str, h: &RestoreHook, env: &HookEnv) -> (Outcome, Option<(u32, u32)>) {
    if r.scratch && h.scale.is_some() {
        let skipped = Ok("skipped: a drill restores into scratch targets and leaves the application's workloads alone".to_string());
        return (outcome(phase, "scale", h.describe(), skipped, Instant::now()), None);
    }
    run_hook(rt, phase, h, limit_of(r.app, h), env)
}

/// The pre-hooks, in order; the scale-downs they made. A failure undoes those and restores nothing.
pub(crate) fn pre_hooks<'a>(rt: &tokio::runtime::Runtime, r: &Request<'a>, report: &mut Report) -> Result<Vec<&'a RestoreHook>, String> {
    let env = hook_env(report);
    let mut scaled_down = Vec::new();
    for h in &r.app.hooks.pre {
        let (o, scaled) = hook(rt, r, "pre", h, &env);
        let failed = (!o.passed).then(|| format!("pre-restore hook {} failed: {}", o.what, o.detail));
        report.hooks.push(o);
        if let Some(why) = failed {
            let undone = undo(rt, r.app, &scaled_down, report);
            return Err(format!("{why}; nothing restored{undone}"));
        }
        if scaled.is_some() {
            scaled_down.push(h);
        }
    }
    Ok(scaled_down)
}

/// Each source restored, in the application's order.
pub(crate) fn restore_sources(r: &Request, report: &mut Report, scaled_down: &[&RestoreHook]) -> Result<(), String> {
    for i in 0..report.sources.len() {
        let s = &report.sources[i];
        let spec = r.plan.sources.iter().find(|p| p.name == s.source).expect("prepared from the plan");
        let (_, repo) = r.plan.repository_of(spec).expect("prepared from the plan");
        // The spec's snapshot may name a folder in it (`ID:PATH`).
        let snapshot = s.spec.snapshot.clone().unwrap_or_default();
        let done = Tresor::new(r.exe, repo, &spec.name).restore(&snapshot, s.spec.clone());
        match done {
            Ok(v) => report.sources[i].result = said(&v),
            Err(e) => {
                let down: Vec<String> = scaled_down.iter().map(|h| h.describe()).collect();
                let left = if down.is_empty() { String::new() } else { format!("; left as the pre-hooks made them: {}", down.join(", ")) };
                return Err(format!("restore of source {} failed: {e}{left}", spec.name));
            }
        }
    }
    Ok(())
}

/// The post-hooks, in order; the first that fails stops them.
pub(crate) fn post_hooks(rt: &tokio::runtime::Runtime, r: &Request, report: &mut Report) -> Result<(), String> {
    let env = hook_env(report);
    for h in &r.app.hooks.post {
        let (o, scaled) = hook(rt, r, "post", h, &env);
        if let (Some((from, to)), Some(s)) = (scaled, &h.scale) {
            report.scaled_up.push(format!("{} in {}: {from} → {to}", s.workload, s.namespace));
        }
        let failed = (!o.passed).then(|| format!("post-restore hook {} failed: {}", o.what, o.detail));
        report.hooks.push(o);
        if let Some(why) = failed {
            return Err(why);
        }
    }
    Ok(())
}

/// The smoke checks; `postgres` is the server a query without a URL asks.
pub(crate) fn smoke(rt: &tokio::runtime::Runtime, r: &Request, report: &mut Report, postgres: Option<&str>) -> Result<(), String> {
    let limit = r.app.hooks.timeout.map_or(DEFAULT_TIMEOUT, |s| s.0);
    // A query's max_age counts back from the point its database is back at
    // (without a PostgreSQL source, the application's newest point).
    let databases = report.sources.iter().filter(|s| s.kind == "postgres" || s.kind == "pg-base").map(|s| s.point).max();
    let to = CheckTarget { postgres, point: databases.or_else(|| report.sources.iter().map(|s| s.point).max()) };
    report.checks = smoke_checks(rt, &r.app.verify, to, limit, &hook_env(report));
    if let Some(bad) = report.checks.iter().find(|c| !c.passed) {
        let up = if report.scaled_up.is_empty() { "none".to_string() } else { report.scaled_up.join(", ") };
        return Err(format!("smoke check {} failed: {}; scaled up before it: {up}", bad.what, bad.detail));
    }
    Ok(())
}

/// Scale back what the pre-hooks scaled down: ", replicas restored: …".
fn undo(rt: &tokio::runtime::Runtime, app: &Application, down: &[&RestoreHook], report: &mut Report) -> String {
    let mut back = Vec::new();
    for h in down.iter().rev() {
        let Some(s) = &h.scale else { continue };
        let undo = RestoreHook { scale: Some(Scale { replicas: None, ..s.clone() }), ..Default::default() };
        let (o, scaled) = run_hook(rt, "undo", &undo, limit_of(app, h), &[]);
        if let Some((from, to)) = scaled {
            back.push(format!("{} in {}: {from} → {to}", s.workload, s.namespace));
        }
        report.hooks.push(o);
    }
    if back.is_empty() { String::new() } else { format!("; replicas restored: {}", back.join(", ")) }
}

/// A restore's own words, in a line.
fn said(v: &Value) -> String {
    if let Some(s) = v["status"].as_str() {
        let results = v["results"].as_array().map_or(0, Vec::len);
        return format!("{results} objects, {s}");
    }
    if let Some(s) = v["recovers_to"].as_str() {
        return format!("base backup restored; it recovers to {s}");
    }
    if let Some(s) = v["result"].as_str() {
        return s.to_string();
    }
    match v["files_restored"].as_u64() {
        Some(n) => format!("{n} files restored, {} deleted", v["files_deleted"].as_u64().unwrap_or(0)),
        None => "restored".into(),
    }
}
