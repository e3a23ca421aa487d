//! `tresor pg`: PostgreSQL point-in-time recovery. Base backups are
//! `pg-base` snapshots, archived WAL files `pg-wal` named snapshots
//! (crate::pgwal); both carry the cluster's system identifier, which ties
//! them into one chain per cluster.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, FixedOffset};
use serde_json::json;
use tresor_engine::{Id, IdSet, Snapshot};
use tresor_sources::PG_BASE;
use tresor_sources::pgwal::{self, ArchivedSegment, RecoveryEnd, WalFile, WalKind};

use crate::commands::{open, print_json};
use crate::opts::{Global, PgCmd, PgCommand, PgRestoreArgs};
use crate::pgwal::KIND as PG_WAL;

pub async fn pg(g: &Global, cmd: PgCmd) -> Result<u8> {
    match cmd.command {
        PgCommand::Backup(mut a) => {
            // The same source a plan names as pgbase://.
            let url = match a.paths.as_slice() {
                [one] => one.to_string_lossy().to_string(),
                _ => bail!("give one cluster URL: postgres://USER@HOST:PORT"),
            };
            let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")).unwrap_or(&url);
            a.paths = vec![format!("pgbase://{rest}").into()];
            crate::data::backup(g, *a).await
        }
        PgCommand::WalPush(a) => crate::pgwal::push(g, a).await,
        PgCommand::WalFetch(a) => crate::pgwal::fetch(g, a).await,
        PgCommand::WalPrefetch { pgdata } => crate::pgspool::prefetch(g, pgdata).await,
        PgCommand::Restore(a) => restore(g, a).await,
        PgCommand::Verify => verify(g).await,
    }
}

fn point<'a>(s: &'a Snapshot, key: &str) -> Option<&'a str> {
    s.source.consistency.get(key).and_then(|v| v.as_str())
}

fn seg_size(s: &Snapshot) -> u64 {
    s.source.consistency.get("wal_segment_size").and_then(|v| v.as_u64()).unwrap_or(16 << 20)
}

/// One cluster's chain: its base backups (oldest first) and archived WAL.
#[derive(Default)]
struct Chain<'a> {
    bases: Vec<&'a Snapshot>,
    wal: Vec<(WalFile, &'a Snapshot)>,
}

impl Chain<'_> {
    fn seg_size(&self) -> u64 {
        self.bases.first().copied().or(self.wal.first().map(|(_, s)| *s)).map_or(16 << 20, seg_size)
    }

    /// The first segment the oldest of these base backups needs.
    fn oldest_start(&self, bases: &[&Snapshot]) -> Option<u64> {
        let size = self.seg_size();
        bases.iter().filter_map(|b| WalFile::parse(point(b, "start_wal")?)).map(|w| w.segno(size)).min()
    }
}

fn chains(snaps: &[Snapshot]) -> BTreeMap<String, Chain<'_>> {
    let mut out: BTreeMap<String, Chain> = BTreeMap::new();
    for s in snaps {
        let Some(system_id) = point(s, "system_id") else { continue };
        match s.source.kind.as_str() {
            PG_BASE => out.entry(system_id.into()).or_default().bases.push(s),
            PG_WAL => {
                if let Some(w) = point(s, "file").and_then(WalFile::parse) {
                    out.entry(system_id.into()).or_default().wal.push((w, s));
                }
            }
            _ => {}
        }
    }
    out
}

/// WAL that forgetting `removed` leaves no base backup needing: per
/// cluster that loses a base backup, the files before the oldest base
/// backup that stays. Held files stay.
pub fn wal_to_forget(all: &[Snapshot], removed: &IdSet, held: &HashMap<Id, String>) -> Vec<Snapshot> {
    let mut out = Vec::new();
    for chain in chains(all).values() {
        if !chain.bases.iter().any(|b| removed.contains(&b.id)) {
            continue;
        }
        let staying: Vec<&Snapshot> = chain.bases.iter().copied().filter(|b| !removed.contains(&b.id)).collect();
        let files: Vec<WalFile> = chain.wal.iter().map(|(w, _)| w.clone()).collect();
        let gone: Vec<&WalFile> = pgwal::unneeded(&files, chain.oldest_start(&staying), chain.seg_size());
        for (w, s) in &chain.wal {
            if gone.contains(&w) && !removed.contains(&s.id) && !held.contains_key(&s.id) {
                out.push((*s).clone());
            }
        }
    }
    out
}

fn base_end(b: &Snapshot) -> DateTime<FixedOffset> {
    b.summary.as_ref().and_then(|s| s.backup_end).unwrap_or(b.time)
}

/// The base backup to start from: the one asked for, or the newest that
/// was complete before the recovery target.
fn choose_base<'a>(a: &PgRestoreArgs, bases: &[&'a Snapshot], time: Option<DateTime<FixedOffset>>) -> Result<&'a Snapshot> {
    if let Some(spec) = &a.snapshot {
        let chosen = tresor_engine::select::select(bases.iter().map(|b| (*b).clone()).collect(), spec, &Default::default())
            .with_context(|| format!("no base backup {spec}"))?;
        return Ok(bases.iter().find(|b| b.id == chosen.id).expect("selected from these"));
    }
    let lsn = a.lsn.as_deref().map(|l| pgwal::parse_lsn(l).with_context(|| format!("cannot read LSN {l:?} (use X/Y)"))).transpose()?;
    let fits = |b: &&&Snapshot| match (time, lsn) {
        (Some(t), _) => base_end(b) <= t,
        (_, Some(l)) => point(b, "end_lsn").and_then(pgwal::parse_lsn).is_some_and(|e| e <= l),
        _ => true,
    };
    let found = bases.iter().rev().find(fits).copied();
    found.with_context(|| match bases.first() {
        Some(b) => format!("no base backup was complete before the target; the oldest ended at {}", base_end(b).to_rfc3339()),
        None => "the repository holds no base backup (tresor pg backup)".into(),
    })
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// tresor's `restore_command` for the repository of `g`, as a setting.
pub(crate) fn restore_command(g: &Global) -> Result<String> {
    let exe = std::env::current_exe().context("cannot tell where tresor is installed")?;
    let repo = g.repo.as_deref().context("no repository given")?;
    let pw = g.password_file.as_deref().context(
        "pg restore writes a restore_command that reads the repository password from a file: give --password-file (or TRESOR_PASSWORD_FILE)",
    )?;
    let pw = std::path::absolute(pw)?;
    let command = format!(
        "{} --repo {} --password-file {} --no-cache --quiet pg wal-fetch %f %p",
        shell_quote(&exe.display().to_string()),
        shell_quote(repo),
        shell_quote(&pw.display().to_string())
    );
    Ok(format!("restore_command = {}\n", conf(&command)))
}

fn conf(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// The recovery settings appended to `postgresql.auto.conf`.
fn recovery_settings(g: &Global, a: &PgRestoreArgs, time: Option<DateTime<FixedOffset>>) -> Result<String> {
    let mut out = format!("\n# Written by tresor pg restore.\n{}", restore_command(g)?);
    match (time, &a.lsn, a.immediate) {
        (Some(t), _, _) => out += &format!("recovery_target_time = {}\n", conf(&t.format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string())),
        (_, Some(l), _) => out += &format!("recovery_target_lsn = {}\n", conf(l)),
        (_, _, true) => out += "recovery_target = 'immediate'\n",
        _ => {}
    }
    out += "recovery_target_action = 'promote'\nrecovery_target_timeline = 'latest'\n";
    if a.no_archive {
        out += "archive_mode = 'off'\n";
    }
    Ok(out)
}

async fn restore(g: &Global, a: PgRestoreArgs) -> Result<u8> {
    if a.time.is_none() && a.lsn.is_none() && !a.latest && !a.immediate {
        bail!("say where recovery stops: --time, --lsn, --latest or --immediate");
    }
    let time = a.time.as_deref().map(crate::data::parse_time).transpose()?;
    if std::fs::read_dir(&a.target).is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} is not empty; pg restore builds a new data directory", a.target.display());
    }
    let repo = open(g).await?;
    let snaps = repo.snapshots().await?;
    let all = chains(&snaps);
    let chain = match (&a.system_id, all.len()) {
        (Some(id), _) => all.get(id).with_context(|| format!("the repository holds no base backup of cluster {id}"))?,
        (None, 1) => all.values().next().expect("one"),
        (None, 0) => bail!("the repository holds no base backup (tresor pg backup)"),
        (None, _) => bail!(
            "the repository holds {} clusters ({}): choose one with --system-id",
            all.len(),
            all.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    let base = choose_base(&a, &chain.bases, time)?;
    let settings = recovery_settings(g, &a, time)?;
    std::fs::create_dir_all(&a.target).with_context(|| format!("cannot create {}", a.target.display()))?;
    std::fs::set_permissions(&a.target, std::fs::Permissions::from_mode(0o700))?;
    // Started first, so that its unlock overlaps the base backup's restore.
    let prefetcher = match recovery_plan(chain, base, &a, time) {
        Some(plan) if a.prefetch > 0 => Some(crate::pgspool::start(g, &a.target, &plan).map(|p| (p, plan.segments.len()))?),
        _ => None,
    };
    let mut unpack = tresor_sources::unpack_into(&a.target);
    let (_, bytes, _) = crate::sources::stream_into(&repo, base, unpack.as_mut(), false).await?;
    write_recovery(&a.target, &settings)?;
    let prefetch = prefetcher.map(|(p, planned)| json!({"pid": p.hand_over(), "segments_planned": planned, "window": a.prefetch}));
    let stop = match (&a.time, &a.lsn, a.latest) {
        (Some(t), _, _) => format!("time {t}"),
        (_, Some(l), _) => format!("LSN {l}"),
        (_, _, true) => "the end of the archived WAL".into(),
        _ => "the end of the base backup".into(),
    };
    if g.json {
        print_json(&json!({"base_backup": base.id, "bytes": bytes, "target": a.target, "recovers_to": stop, "prefetch": prefetch}))?;
    } else {
        println!(
            "restored base backup {} (WAL from {} on timeline {}) into {}; start PostgreSQL on it and it recovers to {stop}",
            base.id.short(),
            point(base, "start_lsn").unwrap_or("?"),
            base.source.consistency.get("timeline").map_or("?".into(), |t| t.to_string()),
            a.target.display()
        );
    }
    Ok(0)
}

/// The segments this recovery will read (tresor_sources::pgwal's
/// recovery_chain), for the prefetcher; `None` when the base backup does
/// not say where its WAL starts.
fn recovery_plan(chain: &Chain, base: &Snapshot, a: &PgRestoreArgs, time: Option<DateTime<FixedOffset>>) -> Option<crate::pgspool::Plan> {
    let size = chain.seg_size();
    let start = WalFile::parse(point(base, "start_wal")?)?;
    let end = match (time, &a.lsn, a.immediate) {
        (Some(t), _, _) => RecoveryEnd::AfterCommit(t.timestamp_micros()),
        (_, Some(l), _) => RecoveryEnd::Segment(pgwal::lsn_segno(l, size)?),
        (_, _, true) => RecoveryEnd::Segment(point(base, "end_lsn").and_then(|l| pgwal::lsn_segno(l, size)).unwrap_or(start.segno(size))),
        _ => RecoveryEnd::Latest,
    };
    let archived: Vec<ArchivedSegment> = chain
        .wal
        .iter()
        .map(|(w, s)| ArchivedSegment {
            file: w.clone(),
            last_commit_micros: point(s, "last_commit").and_then(|c| DateTime::parse_from_rfc3339(c).ok()).map(|c| c.timestamp_micros()),
        })
        .collect();
    let mut last_segment = BTreeMap::new();
    for (w, _) in chain.wal.iter().filter(|(w, _)| w.kind == WalKind::Segment) {
        let last = last_segment.entry(w.timeline).or_insert(0);
        *last = w.segno(size).max(*last);
    }
    Some(crate::pgspool::Plan {
        system_id: point(base, "system_id")?.parse().ok()?,
        window: a.prefetch,
        segments: pgwal::recovery_chain(&archived, start.timeline, start.segno(size), end, size),
        history: chain.wal.iter().filter(|(w, _)| w.kind == WalKind::History).map(|(w, _)| w.name.clone()).collect(),
        last_segment,
        seg_size: size,
    })
}

fn write_recovery(dir: &Path, settings: &str) -> Result<()> {
    let auto = dir.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(settings);
    std::fs::write(&auto, text).with_context(|| format!("cannot write {}", auto.display()))?;
    std::fs::write(dir.join("recovery.signal"), "").context("cannot write recovery.signal")?;
    Ok(())
}

async fn verify(g: &Global) -> Result<u8> {
    let repo = open(g).await?;
    let snaps = repo.snapshots().await?;
    let mut problems = 0;
    let mut report = Vec::new();
    for (system_id, chain) in chains(&snaps) {
        let size = chain.seg_size();
        let files: Vec<WalFile> = chain.wal.iter().map(|(w, _)| w.clone()).collect();
        let (ranges, gaps) = pgwal::gaps(&files, size);
        let mut notes: Vec<String> = gaps
            .iter()
            .map(|gap| format!("gap on timeline {}: {} … {} ({} segments missing)", gap.timeline, gap.first, gap.last, gap.count))
            .collect();
        for b in &chain.bases {
            let (Some(end), Some(tli)) = (point(b, "end_lsn").and_then(|e| pgwal::lsn_segno(e, size)), point_u32(b, "timeline")) else {
                continue;
            };
            if let Some(lo) = ranges.get(&tli).map(|r| r.first).filter(|lo| *lo > end + 1) {
                notes.push(format!(
                    "base backup {}: the archived WAL starts at {}, after its end {}: it recovers no further than its end",
                    b.id.short(),
                    pgwal::segment_name(tli, lo, size),
                    pgwal::segment_name(tli, end, size)
                ));
            }
        }
        problems += notes.len();
        let timelines: Vec<_> = ranges
            .iter()
            .map(|(tli, r)| json!({"timeline": tli, "first": pgwal::segment_name(*tli, r.first, size), "last": pgwal::segment_name(*tli, r.last, size), "segments": r.count}))
            .collect();
        let histories = files.iter().filter(|f| f.kind == WalKind::History).count();
        report.push(json!({"system_id": system_id, "base_backups": chain.bases.len(), "wal_files": files.len(), "history_files": histories, "timelines": timelines, "problems": notes}));
    }
    if g.json {
        print_json(&report)?;
    } else {
        for c in &report {
            println!("cluster {}: {} base backups, {} WAL files", c["system_id"].as_str().unwrap_or(""), c["base_backups"], c["wal_files"]);
            for t in c["timelines"].as_array().into_iter().flatten() {
                println!(
                    "  timeline {}: {} … {} ({} segments)",
                    t["timeline"],
                    t["first"].as_str().unwrap_or(""),
                    t["last"].as_str().unwrap_or(""),
                    t["segments"]
                );
            }
            for p in c["problems"].as_array().into_iter().flatten() {
                println!("  {}", p.as_str().unwrap_or(""));
            }
        }
        if report.is_empty() {
            println!("no PostgreSQL base backups or WAL in this repository");
        }
    }
    if problems > 0 {
        eprintln!("tresor: error: the WAL archive has {problems} problem(s); point-in-time recovery across them is impossible");
        return Ok(crate::EXIT_ERROR);
    }
    Ok(0)
}

fn point_u32(s: &Snapshot, key: &str) -> Option<u32> {
    s.source.consistency.get(key).and_then(|v| v.as_u64()).and_then(|v| u32::try_from(v).ok())
}
