//! `tresor pg`: PostgreSQL point-in-time recovery. Base backups are
//! `pg-base` snapshots, archived WAL files `pg-wal` named snapshots
//! (crate::pgwal); both carry the cluster's system identifier, which ties
//! them into one chain per cluster. The rules over those chains (which
//! base backup, which segments, which WAL retention may drop, what verify
//! reports) are tresor_sources::pitr's; this module reads the repository,
//! writes the data directory and prints.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, FixedOffset};
use serde_json::json;
use tresor_sources::pgwal::{self, WalKind};
use tresor_sources::pitr::{self, Stop, chains, point};

use crate::commands::{open, print_json};
use crate::opts::{Global, PgCmd, PgCommand, PgRestoreArgs};

pub async fn pg(g: &Global, cmd: PgCmd) -> Result<u8> {
    match cmd.command {
        PgCommand::Backup(mut a) => {
            // The same source a plan names as pgbase://.
            let url = match a.paths.as_slice() {
                [one] => one.to_string_lossy().to_string(),
                _ => bail!("give one cluster URL: postgres://USER@HOST:PORT"),
            };
            let rest = ["postgres://", "postgresql://", "pgbase://"].iter().find_map(|p| url.strip_prefix(p));
            let Some(rest) = rest else {
                bail!("{url} is no cluster URL: give postgres://USER@HOST:PORT (or the plan's pgbase://USER@HOST:PORT)");
            };
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

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// tresor's `restore_command` for the repository of `g`, as a setting.
pub(crate) fn restore_command(g: &Global) -> Result<String> {
    let exe = std::env::current_exe().context("cannot tell where tresor is installed")?;
    // Safe to write into PostgreSQL's settings and its command line: a
    // repository URL holds no password (Location::parse refuses one).
    let repo = g.repo.as_ref().context("no repository given")?.expose();
    // PostgreSQL runs restore_command in the data directory: a local
    // repository given relative to where `pg restore` ran would not be found.
    let repo = match tresor_storage::Location::parse(repo)? {
        tresor_storage::Location::Fs(path) => std::path::absolute(path)?.display().to_string(),
        _ => repo.to_string(),
    };
    let pw = g.password_file.as_deref().context(
        "pg restore writes a restore_command that reads the repository password from a file: give --password-file (or TRESOR_PASSWORD_FILE)",
    )?;
    let pw = std::path::absolute(pw)?;
    let command = format!(
        "{} --repo {} --password-file {} --no-cache --quiet pg wal-fetch %f %p",
        shell_quote(&exe.display().to_string()),
        shell_quote(&repo),
        shell_quote(&pw.display().to_string())
    );
    Ok(format!("restore_command = {}\n", conf(&command)))
}

fn conf(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// The recovery settings appended to `postgresql.auto.conf`.
fn recovery_settings(g: &Global, a: &PgRestoreArgs, time: Option<DateTime<FixedOffset>>) -> Result<String> {
    let mut out = format!("\n{} pg restore.\n{}", tresor_sources::recovery_conf::MARK, restore_command(g)?);
    match (time, &a.lsn, a.immediate) {
        (Some(t), _, _) => out += &format!("recovery_target_time = {}\n", conf(&t.format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string())),
        (_, Some(l), _) => out += &format!("recovery_target_lsn = {}\n", conf(l)),
        (_, _, true) => out += "recovery_target = 'immediate'\n",
        _ => {}
    }
    out += &format!("recovery_target_action = 'promote'\nrecovery_target_timeline = {}\n", conf(&a.target_timeline));
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
    if !tresor_controller::standby::unmade(&a.target).with_context(|| format!("cannot read {}", a.target.display()))? {
        bail!("{} is not empty; pg restore builds a new data directory", a.target.display());
    }
    let repo = open(g).await?;
    let snaps = repo.snapshots().await?;
    let all = chains(&snaps);
    // A base backup named by id names its cluster too.
    let named = a.snapshot.as_deref().and_then(|id| {
        let mut of = all.iter().filter(|(_, c)| c.bases.iter().any(|b| b.id.to_hex().starts_with(id)));
        of.next().filter(|_| of.next().is_none()).map(|(system_id, _)| system_id.as_str())
    });
    let chain = pitr::chain_of(&all, a.system_id.as_deref().or(named))?;
    let stop_at = match (time, &a.lsn, a.immediate) {
        (Some(t), _, _) => Stop::Time(t),
        (_, Some(l), _) => Stop::Lsn(l.clone()),
        (_, _, true) => Stop::Immediate,
        _ => Stop::Latest,
    };
    let base = pitr::choose_base(&chain.bases, a.snapshot.as_deref(), &stop_at)?;
    warn_short(chain, base, time);
    let settings = recovery_settings(g, &a, time)?;
    std::fs::create_dir_all(&a.target).with_context(|| format!("cannot create {}", a.target.display()))?;
    std::fs::set_permissions(&a.target, std::fs::Permissions::from_mode(0o700))?;
    // Started first, so that it fetches while the base backup is restored.
    let prefetcher = match pitr::recovery_plan(chain, base, &stop_at, a.prefetch) {
        Some(plan) if a.prefetch > 0 => Some(crate::pgspool::start(g, &repo, &a.target, &plan).map(|p| (p, plan.segments.len()))?),
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
        say!(
            "restored base backup {} (WAL from {} on timeline {}) into {}; start PostgreSQL on it and it recovers to {stop}",
            base.id.short(),
            point(base, "start_lsn").unwrap_or("?"),
            base.source.consistency.get("timeline").map_or("?".into(), |t| t.to_string()),
            a.target.display()
        );
    }
    Ok(0)
}

/// What the archive says before the recovery runs into it: a gap it
/// cannot cross, and a target time after its newest commit (PostgreSQL
/// then refuses to finish: "recovery ended before configured recovery
/// target was reached", unless the WAL to it is archived meanwhile).
fn warn_short(chain: &pitr::Chain, base: &tresor_engine::Snapshot, time: Option<DateTime<FixedOffset>>) {
    // Gaps past where the base backup's WAL starts (WAL file names sort
    // by timeline, then position); another base backup's problems are not this recovery's.
    let start = point(base, "start_wal").unwrap_or_default();
    for p in pitr::verify(chain).1 {
        if matches!(&p, pitr::Problem::Gap(g) if g.last.as_str() >= start) {
            eprintln!("warning: the WAL archive: {p}; recovery cannot cross it (tresor pg verify)");
        }
    }
    let newest = chain.wal.iter().filter_map(|(_, s)| point(s, "last_commit")).filter_map(|c| DateTime::parse_from_rfc3339(c).ok()).max();
    if let (Some(t), Some(c)) = (time, newest)
        && t > c
    {
        eprintln!(
            "warning: the newest commit the archive holds is at {c}, before {t}: recovery stops short of the target unless the WAL to it is archived meanwhile"
        );
    }
}

/// The settings into `postgresql.auto.conf` (those of an earlier recovery
/// taken out) and `recovery.signal`.
fn write_recovery(dir: &Path, settings: &str) -> Result<()> {
    use tresor_sources::recovery_conf::{archives_off, with_recovery_settings};
    let auto = dir.join("postgresql.auto.conf");
    let text = with_recovery_settings(&std::fs::read_to_string(&auto).unwrap_or_default(), settings);
    if archives_off(&text) && !archives_off(settings) {
        eprintln!(
            "warning: {} keeps archive_mode = 'off' (an earlier restore's --no-archive, its mark gone with an ALTER SYSTEM): the cluster archives no WAL until ALTER SYSTEM RESET archive_mode",
            auto.display()
        );
    }
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
        let (ranges, found) = pitr::verify(&chain);
        let notes: Vec<String> = found.iter().map(ToString::to_string).collect();
        problems += notes.len();
        let timelines: Vec<_> = ranges
            .iter()
            .map(|(tli, r)| json!({"timeline": tli, "first": pgwal::segment_name(*tli, r.first, size), "last": pgwal::segment_name(*tli, r.last, size), "segments": r.count}))
            .collect();
        let histories = chain.wal.iter().filter(|(f, _)| f.kind == WalKind::History).count();
        report.push(json!({"system_id": system_id, "base_backups": chain.bases.len(), "wal_files": chain.wal.len(), "history_files": histories, "timelines": timelines, "problems": notes}));
    }
    if g.json {
        print_json(&report)?;
    } else {
        for c in &report {
            say!("cluster {}: {} base backups, {} WAL files", c["system_id"].as_str().unwrap_or(""), c["base_backups"], c["wal_files"]);
            for t in c["timelines"].as_array().into_iter().flatten() {
                say!(
                    "  timeline {}: {} … {} ({} segments)",
                    t["timeline"],
                    t["first"].as_str().unwrap_or(""),
                    t["last"].as_str().unwrap_or(""),
                    t["segments"]
                );
            }
            for p in c["problems"].as_array().into_iter().flatten() {
                say!("  {}", p.as_str().unwrap_or(""));
            }
        }
        if report.is_empty() {
            say!("no PostgreSQL base backups or WAL in this repository");
        }
    }
    if problems > 0 {
        eprintln!("tresor: error: the WAL archive has {problems} problem(s); point-in-time recovery across them is impossible");
        return Ok(crate::EXIT_ERROR);
    }
    Ok(0)
}
