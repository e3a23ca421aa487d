//! `tresor standby refresh|status` and `tresor failover`: a source's warm
//! standby (the plan's `standby:`, tresor_controller::standby). For a
//! `pgbase://` source the standby is a data directory made once from the
//! newest base backup; the PostgreSQL server started on it keeps itself
//! current through `tresor pg wal-fetch`, and `failover` promotes it once
//! it has replayed the archive to its end. A directory, claim or Redis standby is
//! refreshed from the newest snapshot (copy.rs), a claim by a Job in the
//! cluster; `failover` makes it current.
//! The daemon runs refreshes as `standby` jobs ([`job`]).

mod copy;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tresor_controller::daemon::{Clock, load_plan};
use tresor_controller::model::JobSpec;
use tresor_controller::plan::{self, Plan, SourceSpec, Span, Standby};
use tresor_controller::repos::{Handles, evidence_targets};
use tresor_controller::secret_url::SecretUrl;
use tresor_controller::standby::{FAILOVER, Failover, StandbyKind};
use tresor_engine::Snapshot;
use tresor_sources::PG_BASE;
use tresor_sources::k8s_pod::PodSettings;
use tresor_sources::pgwal::{self, ReplayPosition};

use crate::commands::{open, print_json};
use crate::opts::{FailoverArgs, Global, StandbyArgs, StandbyCmd, StandbyCommand};

pub async fn standby(g: &Global, cmd: StandbyCmd) -> Result<u8> {
    match cmd.command {
        StandbyCommand::Refresh(a) => refresh(g, a).await,
        StandbyCommand::Status(a) => status(g, &a.plan).await,
    }
}

/// One of the plan's sources with a standby.
struct Chosen {
    plan: Plan,
    source: SourceSpec,
    standby: Standby,
    kind: StandbyKind,
    repo: plan::Repository,
}

/// The plan and its source `name`, which has a standby.
fn chosen(plan_file: &Path, name: &str) -> Result<Chosen> {
    let plan = load_plan(&std::path::absolute(plan_file)?, Utc::now())?;
    let source = plan.sources.iter().find(|s| s.name == name).with_context(|| format!("the plan has no source {name}"))?.clone();
    let standby = source.standby.clone().with_context(|| format!("source {name} has no standby: in the plan"))?;
    // plan check refuses a standby of any other kind.
    let kind = StandbyKind::of(&source.url, &standby.target).with_context(|| format!("source {name}: its kind has no standby"))?;
    let repo = plan.repository_of(&source).map(|(_, r)| r.clone()).with_context(|| format!("source {name} has no repository"))?;
    Ok(Chosen { plan, source, standby, kind, repo })
}

/// `g` with the repository of the plan.
fn global_for(g: &Global, repo: &plan::Repository) -> Global {
    let mut g = g.clone();
    g.repo = Some(repo.url.clone());
    g.password_file = Some(repo.password_file.clone());
    g
}

async fn refresh(g: &Global, a: StandbyArgs) -> Result<u8> {
    let c = chosen(&a.plan, &a.source)?;
    let pod = c.source.pod.clone().unwrap_or_default();
    refresh_one(&global_for(g, &c.repo), &c.source.name, c.kind, &c.standby.target, &pod).await
}

/// The daemon's `standby` job: the source's URL and the standby say the
/// kind, the restore spec the standby (a directory, or a service or claim as `to`).
pub async fn job(g: &Global, spec: &JobSpec) -> Result<u8> {
    let source = spec.source.as_ref().context("a standby job names its source")?;
    let r = spec.restore.as_ref().context("a standby job names its standby")?;
    let target = r.to.clone().or_else(|| r.target.clone().map(SecretUrl::from)).context("a standby job names its standby")?;
    let kind = StandbyKind::of(&source.url, &target).with_context(|| format!("source {}: its kind has no standby", spec.name))?;
    refresh_one(g, &spec.name, kind, &target, &source.pod.clone().unwrap_or_default()).await
}

/// Make `source`'s standby at `target` current, and say so (`pod`: how a claim's Job runs).
async fn refresh_one(g: &Global, source: &str, kind: StandbyKind, target: &SecretUrl, pod: &PodSettings) -> Result<u8> {
    if kind != StandbyKind::Postgres {
        let r = copy::refresh(g, source, kind, target, pod).await?;
        if g.json {
            print_json(
                &json!({"source": source, "target": target.to_string(), "snapshot_id": r.snapshot.id, "current": r.current, "summary": r.summary}),
            )?;
        } else if !g.quiet {
            say!("{}", copy::said(source, target, &r));
        }
        return Ok(0);
    }
    // A PostgreSQL standby is a data directory: a path, which holds no secret.
    let target = Path::new(target.expose());
    let unmade = tresor_controller::standby::unmade(target).with_context(|| format!("cannot read {}", target.display()))?;
    if !unmade {
        if !g.quiet {
            say!(
                "the standby of {source} in {} is made already; the PostgreSQL server on it keeps it current from the WAL archive",
                target.display()
            );
        }
        return Ok(0);
    }
    let (base, bytes) = make_pg_standby(g, source, target).await?;
    if g.json {
        print_json(&json!({"source": source, "target": target, "base_backup": base.id, "bytes": bytes}))?;
    } else if !g.quiet {
        say!(
            "made the standby of {source} in {} from base backup {} ({bytes} bytes); start PostgreSQL on it and it keeps replaying the WAL archive",
            target.display(),
            base.id.short()
        );
    }
    Ok(0)
}

/// A standby data directory in `target` (new or empty) from the newest base
/// backup tagged `source=SOURCE`: `standby.signal`, tresor's
/// `restore_command` and the newest timeline, so a server started on it
/// keeps replaying the archive until it is promoted. The base backup and the
/// bytes written.
async fn make_pg_standby(g: &Global, source: &str, target: &Path) -> Result<(Snapshot, u64)> {
    let repo = open(g).await?;
    let tag = format!("source={source}");
    let snaps = repo.snapshots().await?;
    let base = snaps
        .iter()
        .filter(|s| s.source.kind == PG_BASE && s.tags.contains(&tag))
        .max_by_key(|s| s.time)
        .with_context(|| format!("the repository holds no base backup of {source} (one tagged {tag}, as the plan's pgbase:// source or `pg backup --tag {tag}` makes)"))?;
    let mark = tresor_sources::recovery_conf::MARK;
    let settings = format!("\n{mark} standby refresh.\n{}recovery_target_timeline = 'latest'\n", crate::pg::restore_command(g)?);
    std::fs::create_dir_all(target).with_context(|| format!("cannot create {}", target.display()))?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700))?;
    let mut unpack = tresor_sources::unpack_into(target);
    let (_, bytes, _) = crate::sources::stream_into(&repo, base, unpack.as_mut(), false).await?;
    let auto = target.join("postgresql.auto.conf");
    let text = tresor_sources::recovery_conf::with_recovery_settings(&std::fs::read_to_string(&auto).unwrap_or_default(), &settings);
    std::fs::write(&auto, text).with_context(|| format!("cannot write {}", auto.display()))?;
    std::fs::write(target.join("standby.signal"), "").context("cannot write standby.signal")?;
    Ok((base.clone(), bytes))
}

fn lsn(l: u64) -> String {
    format!("{:X}/{:X}", l >> 32, l as u32)
}

async fn replay_position(server: &str) -> Result<ReplayPosition> {
    let url = server.to_string();
    Ok(tokio::task::spawn_blocking(move || pgwal::replay_position(&url)).await??)
}

/// Each standby's figures, and the failovers the evidence logs record.
async fn status(g: &Global, plan_file: &Path) -> Result<u8> {
    let plan = load_plan(&std::path::absolute(plan_file)?, Utc::now())?;
    let handles = Handles::default();
    let failovers = failovers(&plan, &handles).await;
    // The daemon's clock (a test's, if it sets one): the lag of a stale source grows with it.
    let now = Clock::from_env().now();
    let mut out = Vec::new();
    for s in plan.sources.iter().filter(|s| s.standby.is_some()) {
        let c = chosen(plan_file, &s.name)?;
        let listing = handles.snapshots(&c.repo, None).await.map_err(anyhow::Error::msg)?;
        let mut v = match c.kind {
            StandbyKind::Postgres => pg_status(&c, &listing, now).await,
            _ => copy_status(&c, &listing, now),
        };
        v["source"] = json!(s.name);
        v["target"] = json!(c.standby.target.to_string());
        v["failovers"] = json!(failovers.iter().filter(|f| f.source == s.name).collect::<Vec<_>>());
        out.push(v);
    }
    if g.json {
        print_json(&out)?;
        return Ok(0);
    }
    for s in &out {
        let lag = s["lag_seconds"].as_f64().map_or("unknown (no backup yet)".into(), |l| format!("{l:.1} s"));
        let name = s["source"].as_str().unwrap_or("");
        match s.get("waiting_segments") {
            Some(n) => say!("{name}: lag {lag}, {n} archived segments not replayed"),
            None => {
                let held = s["snapshot"].as_str().map_or("nothing yet".into(), |id| format!("snapshot {}", &id[..id.len().min(8)]));
                say!("{name}: lag {lag}, holds {held}, {} newer snapshots not held", s["waiting_snapshots"]);
            }
        }
    }
    Ok(0)
}

async fn pg_status(c: &Chosen, listing: &[Value], now: DateTime<Utc>) -> Value {
    let name = &c.source.name;
    let replayed = match &c.standby.server {
        Some(server) => replay_position(server.expose()).await.ok(),
        None => None,
    };
    let point = tresor_controller::standby::point(name, listing, replayed.as_ref().and_then(|r| r.lsn));
    let gap = tresor_controller::walrpo::chain(name, listing).map_or(0, |c| c.gap_segments);
    json!({
        "kind": "postgres",
        "server_answered": replayed.is_some(),
        "in_recovery": replayed.as_ref().map(|r| r.in_recovery),
        "replayed_lsn": point.as_ref().map(|p| lsn(p.replayed_lsn)),
        "lag_seconds": point.as_ref().map(|p| p.lag(now)),
        "waiting_segments": point.as_ref().map(|p| p.waiting),
        "gap_segments": gap,
    })
}

fn copy_status(c: &Chosen, listing: &[Value], now: DateTime<Utc>) -> Value {
    use tresor_controller::standby::{copy_point, held, own_snapshots};
    let held = held(&c.source.name, c.kind, c.standby.directory());
    let rpo = c.plan.classes.get(&c.source.class).map_or(0, |k| k.rpo.secs());
    let point = copy_point(&own_snapshots(&c.source.name, listing), &held, rpo);
    json!({
        "kind": c.kind.name(),
        "snapshot": held.snapshot,
        "snapshot_time": held.snapshot_time,
        "refreshed": held.refreshed,
        "refreshing": held.refreshing,
        "lag_seconds": point.as_ref().map(|p| p.lag(now)),
        "waiting_snapshots": point.as_ref().map(|p| p.waiting),
    })
}

/// The failovers in the logs of the repositories that answer, each once, oldest first.
async fn failovers(plan: &Plan, handles: &Handles) -> Vec<Failover> {
    let mut out: Vec<Failover> = Vec::new();
    for r in evidence_targets(plan, None) {
        let Ok(repo) = handles.get(&r).await else { continue };
        let Ok(entries) = tresor_engine::evidence::entries(&repo).await else { continue };
        for e in entries.into_iter().filter(|e| e.kind == FAILOVER) {
            if let Ok(f) = serde_json::from_value(e.body)
                && !out.contains(&f)
            {
                out.push(f);
            }
        }
    }
    out.sort_by_key(|f| f.started);
    out
}

pub async fn failover(g: &Global, a: FailoverArgs) -> Result<u8> {
    let clock = Instant::now();
    let started = Utc::now();
    let timeout = Duration::from_secs(Span::parse(&a.timeout).map_err(anyhow::Error::msg)?.secs());
    let c = chosen(&a.plan, &a.source)?;
    if c.kind != StandbyKind::Postgres {
        return failover_copy(&global_for(g, &c.repo), &c, started, clock).await;
    }
    let name = &c.source.name;
    let server = c
        .standby
        .server
        .as_ref()
        .map(plan::SecretUrl::expose)
        .with_context(|| format!("the standby of {name} names no server to promote (standby.server)"))?;
    let handles = Handles::default();
    let listing = handles.snapshots(&c.repo, None).await.map_err(anyhow::Error::msg)?;
    let chain = tresor_controller::walrpo::chain(name, &listing)
        .with_context(|| format!("the repository holds no base backup with archived WAL of {name}"))?;
    if chain.gap_segments > 0 && !a.force {
        bail!(
            "the WAL archive of {name} misses {} segment(s) after {}: its standby cannot replay past them; give --force to promote it without the commits after the gap",
            chain.gap_segments,
            chain.newest_segment.as_deref().unwrap_or("its base backup")
        );
    }
    let reached = replayed_to(name, server, chain.end_lsn, clock + timeout).await?;
    let left = timeout.saturating_sub(clock.elapsed()).as_secs().max(1);
    let url = server.to_string();
    let promoted = tokio::task::spawn_blocking(move || pgwal::promote(&url, left as u32)).await??;
    if !promoted {
        bail!("the standby of {name} did not finish its promotion within {}", a.timeout);
    }
    let record = Failover {
        source: name.clone(),
        started,
        seconds: clock.elapsed().as_secs_f64(),
        lsn: Some(lsn(reached.lsn.unwrap_or_default())),
        archive_end_lsn: Some(lsn(chain.end_lsn)),
        snapshot: None,
        snapshot_time: None,
        last_commit: reached.last_commit_unix_micros.and_then(DateTime::from_timestamp_micros),
        gap_segments: chain.gap_segments,
        forced: a.force && chain.gap_segments > 0,
        author: author(),
    };
    record_failover(&c, &handles, &record, "promoted").await?;
    if g.json {
        print_json(&record)?;
    } else {
        say!(
            "promoted the standby of {name} in {:.1} s: it had replayed to {}, the archive's end {}; recorded in the evidence log",
            record.seconds,
            record.lsn.as_deref().unwrap_or_default(),
            record.archive_end_lsn.as_deref().unwrap_or_default()
        );
    }
    Ok(0)
}

fn author() -> String {
    format!("{}@{}", tresor_engine::username(), tresor_engine::hostname())
}

/// The failover as an entry of the evidence logs (`done`: what was done, should it fail).
async fn record_failover(c: &Chosen, handles: &Handles, record: &Failover, done: &str) -> Result<()> {
    let body: Value = serde_json::to_value(record)?;
    for r in evidence_targets(&c.plan, Some(&c.repo)) {
        handles.append(&r, FAILOVER, body.clone()).await.map_err(|e| anyhow::anyhow!("{done}, but cannot record the failover: {e}"))?;
    }
    Ok(())
}

/// A directory, claim or Redis standby's failover: a last refresh from the newest
/// snapshot, so the standby takes over current, recorded like a promotion.
async fn failover_copy(g: &Global, c: &Chosen, started: DateTime<Utc>, clock: Instant) -> Result<u8> {
    let (name, target) = (&c.source.name, &c.standby.target);
    let r = copy::refresh(g, name, c.kind, target, &c.source.pod.clone().unwrap_or_default()).await?;
    let record = Failover {
        source: name.clone(),
        started,
        seconds: clock.elapsed().as_secs_f64(),
        lsn: None,
        archive_end_lsn: None,
        snapshot: Some(r.snapshot.id.to_string()),
        snapshot_time: Some(r.snapshot.time.with_timezone(&Utc)),
        last_commit: None,
        gap_segments: 0,
        forced: false,
        author: author(),
    };
    record_failover(c, &Handles::default(), &record, "made current").await?;
    if g.json {
        print_json(&record)?;
    } else {
        say!(
            "made the standby of {name} at {target} current in {:.1} s: it holds the newest snapshot {}; recorded in the evidence log",
            record.seconds,
            r.snapshot.id.short()
        );
    }
    Ok(0)
}

/// Wait until the standby at `server` has replayed to `end`; where it stands then.
async fn replayed_to(name: &str, server: &str, end: u64, deadline: Instant) -> Result<ReplayPosition> {
    loop {
        let pos = replay_position(server).await.with_context(|| format!("cannot ask the standby of {name} how far it has replayed"))?;
        if !pos.in_recovery {
            bail!("the standby of {name} is not in recovery: it was promoted already");
        }
        if pos.lsn.is_some_and(|l| l >= end) {
            return Ok(pos);
        }
        if Instant::now() >= deadline {
            bail!(
                "the standby of {name} replayed only to {}, short of the archive's end {}, in the time allowed",
                pos.lsn.map_or("nothing".into(), lsn),
                lsn(end)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
