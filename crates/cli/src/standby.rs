//! `tresor standby refresh|status` and `tresor failover`: a source's warm
//! standby (the plan's `standby:`, tresor_controller::standby). For a
//! `pgbase://` source the standby is a data directory made once from the
//! newest base backup; the PostgreSQL server started on it keeps itself
//! current through `tresor pg wal-fetch`, and `failover` promotes it once
//! it has replayed the archive to its end.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tresor_controller::daemon::load_plan;
use tresor_controller::plan::{self, Plan, SourceSpec, Span, Standby};
use tresor_controller::repos::{Handles, evidence_targets};
use tresor_controller::standby::{FAILOVER, Failover};
use tresor_engine::Snapshot;
use tresor_sources::PG_BASE;
use tresor_sources::pgwal::{self, ReplayPosition};

use crate::commands::{open, print_json};
use crate::opts::{FailoverArgs, Global, StandbyArgs, StandbyCmd, StandbyCommand};

pub async fn standby(g: &Global, cmd: StandbyCmd) -> Result<u8> {
    match cmd.command {
        StandbyCommand::Refresh(a) => refresh(g, a).await,
        StandbyCommand::Status(a) => status(g, &a.plan).await,
    }
}

/// The plan, one of its sources with a standby, and that source's repository.
fn chosen(plan_file: &Path, name: &str) -> Result<(Plan, SourceSpec, Standby, plan::Repository)> {
    let plan = load_plan(&std::path::absolute(plan_file)?, Utc::now())?;
    let source = plan.sources.iter().find(|s| s.name == name).with_context(|| format!("the plan has no source {name}"))?.clone();
    let standby = source.standby.clone().with_context(|| format!("source {name} has no standby: in the plan"))?;
    if !source.url.starts_with("pgbase://") {
        bail!("source {name}: only a pgbase:// source has a standby so far");
    }
    let repo = plan.repository_of(&source).map(|(_, r)| r.clone()).with_context(|| format!("source {name} has no repository"))?;
    Ok((plan, source, standby, repo))
}

/// `g` with the repository of the plan.
fn global_for(g: &Global, repo: &plan::Repository) -> Global {
    let mut g = g.clone();
    g.repo = Some(repo.url.clone());
    g.password_file = Some(repo.password_file.clone());
    g
}

async fn refresh(g: &Global, a: StandbyArgs) -> Result<u8> {
    let (_, source, standby, repo) = chosen(&a.plan, &a.source)?;
    let target = &standby.target;
    if !tresor_controller::standby::unmade(target) {
        if !g.quiet {
            println!(
                "the standby of {} in {} is made already; the PostgreSQL server on it keeps it current from the WAL archive",
                source.name,
                target.display()
            );
        }
        return Ok(0);
    }
    let (base, bytes) = make_pg_standby(&global_for(g, &repo), &source.name, target).await?;
    if g.json {
        print_json(&json!({"source": source.name, "target": target, "base_backup": base.id, "bytes": bytes}))?;
    } else if !g.quiet {
        println!(
            "made the standby of {} in {} from base backup {} ({bytes} bytes); start PostgreSQL on it and it keeps replaying the WAL archive",
            source.name,
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
        .with_context(|| format!("the repository holds no base backup of {source}"))?;
    let settings =
        format!("\n# Written by tresor standby refresh.\n{}recovery_target_timeline = 'latest'\n", crate::pg::restore_command(g)?);
    std::fs::create_dir_all(target).with_context(|| format!("cannot create {}", target.display()))?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700))?;
    let mut unpack = tresor_sources::unpack_into(target);
    let (_, bytes, _) = crate::sources::stream_into(&repo, base, unpack.as_mut(), false).await?;
    let auto = target.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&auto).unwrap_or_default() + &settings;
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
    let mut out = Vec::new();
    for s in plan.sources.iter().filter(|s| s.standby.is_some()) {
        let (_, _, standby, repo) = chosen(plan_file, &s.name)?;
        let listing = handles.snapshots(&repo, None).await.map_err(anyhow::Error::msg)?;
        let replayed = match &standby.server {
            Some(server) => replay_position(server).await.ok(),
            None => None,
        };
        let point = tresor_controller::standby::point(&s.name, &listing, replayed.as_ref().and_then(|r| r.lsn));
        let gap = tresor_controller::walrpo::chain(&s.name, &listing).map_or(0, |c| c.gap_segments);
        out.push(json!({
            "source": s.name,
            "target": standby.target,
            "server_answered": replayed.is_some(),
            "in_recovery": replayed.as_ref().map(|r| r.in_recovery),
            "replayed_lsn": point.as_ref().map(|p| lsn(p.replayed_lsn)),
            "lag_seconds": point.as_ref().map(|p| p.lag(Utc::now())),
            "waiting_segments": point.as_ref().map(|p| p.waiting_segments),
            "gap_segments": gap,
            "failovers": failovers.iter().filter(|f| f.source == s.name).collect::<Vec<_>>(),
        }));
    }
    if g.json {
        print_json(&out)?;
        return Ok(0);
    }
    for s in &out {
        let lag = s["lag_seconds"].as_f64().map_or("unknown (no base backup)".into(), |l| format!("{l:.1} s"));
        println!("{}: lag {lag}, {} archived segments not replayed", s["source"].as_str().unwrap_or(""), s["waiting_segments"]);
    }
    Ok(0)
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
    let (plan, source, standby, repo) = chosen(&a.plan, &a.source)?;
    let name = &source.name;
    let server = standby.server.as_deref().with_context(|| format!("the standby of {name} names no server to promote (standby.server)"))?;
    let handles = Handles::default();
    let listing = handles.snapshots(&repo, None).await.map_err(anyhow::Error::msg)?;
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
        lsn: lsn(reached.lsn.unwrap_or_default()),
        archive_end_lsn: lsn(chain.end_lsn),
        last_commit: reached.last_commit_unix_micros.and_then(DateTime::from_timestamp_micros),
        gap_segments: chain.gap_segments,
        forced: a.force && chain.gap_segments > 0,
        author: format!("{}@{}", tresor_engine::username(), tresor_engine::hostname()),
    };
    let body: Value = serde_json::to_value(&record)?;
    for r in evidence_targets(&plan, Some(&repo)) {
        handles.append(&r, FAILOVER, body.clone()).await.map_err(|e| anyhow::anyhow!("promoted, but cannot record the failover: {e}"))?;
    }
    if g.json {
        print_json(&record)?;
    } else {
        println!(
            "promoted the standby of {name} in {:.1} s: it had replayed to {}, the archive's end {}; recorded in the evidence log",
            record.seconds, record.lsn, record.archive_end_lsn
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
