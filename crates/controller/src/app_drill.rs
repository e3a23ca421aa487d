//! Drills of a whole application (`tresor drill --app`): every source's
//! newest point restored into scratch targets (the servers source drills
//! start: an empty `redis-server`, a new PostgreSQL cluster, a restored
//! data directory started on a free port; a directory; Kubernetes objects
//! as a server-side dry run into `<ns>-drill`), in the application's order
//! between its hooks (scale hooks skipped: they would act on the
//! application's own workloads), then its smoke checks against the scratch
//! targets. One protocol entry: the application's RTO end to end, each
//! source's point, the consistency window, each hook's and check's outcome.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use tresor_sources::PgUrl;

use crate::app_hooks::runtime;
use crate::app_restore::{Report as Restore, Request, post_hooks, pre_hooks, prepare, restore_sources, smoke};
use crate::child::Tresor;
use crate::model::{AppDrill, BackupCopy, DrillReport};
use crate::plan::{Application, Plan, SecretUrl};
use crate::scratch;

/// Drill `app` into `scratch_root`; the protocol entry.
pub fn drill_app(exe: &Path, plan: &Plan, app: &Application, scratch_root: &Path) -> DrillReport {
    let started = crate::clock::Clock::from_env().now();
    let t0 = Instant::now();
    let (class, rto_target, rpo_target) = strictest(plan, app);
    let mut r = DrillReport {
        test_id: format!("DRILL-{}-{}", started.format("%Y%m%d-%H%M%S"), app.name),
        source: app.name.clone(),
        class,
        kind: "application".into(),
        started,
        snapshot: None,
        snapshot_time: None,
        rto_seconds: 0.0,
        rpo_seconds: None,
        rto_target,
        rpo_target,
        bytes: 0,
        passed: false,
        checks: Vec::new(),
        reasons: Vec::new(),
        silence: None,
        owner: app.drill.as_ref().and_then(|d| d.owner.clone()),
        from: BackupCopy::Primary,
        repository: None,
        test: app.drill.as_ref().and_then(|d| d.id.clone()),
        test_type: Some(app.drill.as_ref().map_or("restore", |d| d.test_type.as_str()).into()),
        application: None,
    };
    let dir = scratch_root.join(&r.test_id);
    let result = std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create the scratch directory {}: {e}", dir.display()))
        .and_then(|_| run(exe, plan, app, &dir, &mut r));
    // The application is as old as its oldest source's point.
    r.ended(t0.elapsed());
    if let Err(e) = result {
        r.reasons.push(e);
    }
    r.passed = r.reasons.is_empty();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// The class an application's drill counts under (the strictest of its sources').
pub fn class_of(plan: &Plan, app: &Application) -> String {
    strictest(plan, app).0
}

/// The class of the application's sources with the shortest RTO, which
/// the whole application must meet: (name, RTO, that class's RPO).
fn strictest(plan: &Plan, app: &Application) -> (String, u64, u64) {
    app.sources
        .iter()
        .filter_map(|a| plan.sources.iter().find(|s| s.name == a.source))
        .filter_map(|s| plan.classes.get(&s.class).map(|c| (s.class.clone(), c.rto.secs(), c.rpo.secs())))
        .min_by_key(|(_, rto, _)| *rto)
        .unwrap_or_default()
}

fn run(exe: &Path, plan: &Plan, app: &Application, dir: &Path, r: &mut DrillReport) -> Result<(), String> {
    // Every source gets a directory of its own; services get servers in it below.
    let targets: BTreeMap<String, String> =
        app.sources.iter().map(|s| (s.source.clone(), dir.join(&s.source).join("data").display().to_string())).collect();
    let req = Request { exe, plan, app, time: None, targets, namespace_mapping: Vec::new(), dry_run: false, scratch: true };
    let mut report = prepare(&req)?;
    let result = Scratch::retarget(exe, plan, dir, &mut report).and_then(|mut servers| {
        let rt = runtime()?;
        let down = pre_hooks(&rt, &req, &mut report)?;
        restore_sources(&req, &mut report, &down)?;
        let postgres = servers.start_restored(dir, &report, r)?;
        post_hooks(&rt, &req, &mut report)?;
        smoke(&rt, &req, &mut report, postgres.as_deref())
    });
    r.bytes = report.sources.iter().map(|s| s.bytes).sum();
    r.snapshot_time = report.sources.iter().map(|s| s.point).min();
    r.application = Some(AppDrill {
        sources: report.sources,
        consistency_window_seconds: report.consistency_window_seconds,
        hooks: report.hooks,
        smoke_checks: report.checks,
    });
    result
}

/// The scratch servers of one application drill, stopped when dropped.
#[derive(Default)]
struct Scratch {
    redis: Vec<(String, scratch::Redis)>,
    postgres: Vec<scratch::Postgres>,
}

impl Scratch {
    /// Point each service source at a scratch server of its own.
    fn retarget(exe: &Path, plan: &Plan, dir: &Path, report: &mut Restore) -> Result<Scratch, String> {
        let mut servers = Scratch::default();
        for s in &mut report.sources {
            let home = dir.join(&s.source);
            std::fs::create_dir_all(&home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
            let to: SecretUrl = match s.kind.as_str() {
                "redis" | "redis-aof" => {
                    let server = scratch::Redis::start(&home, None)?;
                    let url = server.url().into();
                    servers.redis.push((s.source.clone(), server));
                    url
                }
                "postgres" => {
                    let pg = scratch::Postgres::start(&home, true)?;
                    let spec = plan.sources.iter().find(|p| p.name == s.source).expect("prepared from the plan");
                    let url = pg.url(&database_of(&spec.url.to_string())).into();
                    servers.postgres.push(pg);
                    url
                }
                "k8s" => {
                    s.spec.server_dry_run = true;
                    s.spec.namespace_mapping =
                        namespaces(exe, plan, &s.source, &s.snapshot)?.iter().map(|n| format!("{n}:{n}-drill")).collect();
                    s.spec.to.clone().unwrap_or_else(|| "k8s://".into())
                }
                "pg-base" | "files" => continue,
                other => return Err(format!("source {}: no application drill for sources of kind {other}", s.source)),
            };
            // A new server holds nothing to replace.
            s.spec.flush = false;
            s.aim_to(to);
        }
        Ok(servers)
    }

    /// Start the restored data directories and count what came back; the
    /// PostgreSQL server a smoke check's query without a URL asks.
    fn start_restored(&mut self, dir: &Path, report: &Restore, r: &mut DrillReport) -> Result<Option<String>, String> {
        let mut asked = None;
        for s in &report.sources {
            r.checks.push(format!("{} ({}) restored to {}: {}", s.source, s.kind, s.point.to_rfc3339(), s.result));
            match s.kind.as_str() {
                "pg-base" => {
                    let pg = scratch::Postgres::start(&dir.join(&s.source), false)?;
                    pg.recovered()?;
                    r.checks.push(format!("{}: the restored cluster recovered and was promoted", s.source));
                    asked = asked.or(Some(pg.url("postgres")));
                    self.postgres.push(pg);
                }
                // To connect to.
                "postgres" => asked = asked.or_else(|| s.spec.to.as_ref().map(|u| u.expose().to_string())),
                "redis" | "redis-aof" => {
                    let (_, server) = self.redis.iter().find(|(n, _)| *n == s.source).expect("started in retarget");
                    r.checks.push(format!("{}: {} keys in the scratch Redis", s.source, server.loaded()?.keys));
                }
                _ => {}
            }
        }
        Ok(asked)
    }
}

/// The database a `postgres://…/DB` source backs up (`postgres` without one).
pub(crate) fn database_of(url: &str) -> String {
    PgUrl::parse(url).ok().and_then(|u| u.database).unwrap_or_else(|| "postgres".into())
}

/// The namespaces a `k8s://` snapshot holds.
fn namespaces(exe: &Path, plan: &Plan, source: &str, id: &str) -> Result<Vec<String>, String> {
    let spec = plan.sources.iter().find(|p| p.name == source).expect("prepared from the plan");
    let (_, repo) = plan.repository_of(spec).ok_or_else(|| format!("source {source}: its repository is not in the plan"))?;
    let snaps = Tresor::new(exe, repo, source).snapshots()?;
    let snap =
        snaps.as_array().into_iter().flatten().find(|s| s["id"] == id).ok_or_else(|| format!("source {source}: snapshot {id} is gone"))?;
    Ok(snap["source"]["consistency"]["namespaces"].as_array().into_iter().flatten().filter_map(|n| n.as_str().map(String::from)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sources_database_is_its_urls_path() {
        assert_eq!(database_of("postgres://app:secret@db:5432/registry?sslmode=disable"), "registry");
        assert_eq!(database_of("postgres://db:5432"), "postgres");
        assert_eq!(database_of("postgres://app:ab/cd@db/shop"), "shop", "a password with a slash is no database");
        assert_eq!(database_of("postgresql://db/"), "postgres");
        assert_eq!(database_of("postgres://db/sh%20op"), "sh op");
    }
}
