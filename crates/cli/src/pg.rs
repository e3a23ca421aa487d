//! `tresor pg`: PostgreSQL point-in-time recovery. Base backups are
//! `pg-base` snapshots, archived WAL files `pg-wal` named snapshots
//! (crate::pgwal); both carry the cluster's system identifier, which ties
//! them into one chain per cluster. The rules over those chains (which
//! base backup, which segments, which WAL retention may drop, what verify
//! reports) are tresor_sources::pitr's; this module reads the repository,
//! writes the data directory and prints.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, FixedOffset};
use serde_json::json;
use tresor_engine::{Repository, Snapshot};
use tresor_sources::pgwal::{self, WalKind};
use tresor_sources::pitr::{self, Stop, chains, point};
use tresor_sources::walarchive;

use crate::commands::{open, print_json};
use crate::opts::{Global, PgBackupArgs, PgCmd, PgCommand, PgRestoreArgs};

pub async fn pg(g: &Global, cmd: PgCmd) -> Result<u8> {
    match cmd.command {
        PgCommand::Backup(a) => backup(g, *a).await,
        PgCommand::WalPush(a) => crate::pgwal::push(g, a).await,
        PgCommand::WalFetch(a) => crate::pgwal::fetch(g, a).await,
        PgCommand::WalPrefetch { pgdata } => crate::pgspool::prefetch(g, pgdata).await,
        PgCommand::Restore(a) => restore(g, a).await,
        PgCommand::Verify => verify(g).await,
    }
}

/// A base backup of the cluster `pgbase://` names in a plan, then its
/// archive check (pgBackRest's archive-check; `data::backup` makes it for
/// every pgbase:// backup, the daemon's too): the WAL segment holding its
/// end must reach the repository within `--archive-timeout`, else no
/// recovery goes past the backup's end. The snapshot is valid data and
/// stays; the command fails (exit 1), so a scheduled backup alerts.
async fn backup(g: &Global, a: PgBackupArgs) -> Result<u8> {
    let PgBackupArgs { backup: mut args } = a;
    let url = match args.paths.as_slice() {
        [one] => one.to_string_lossy().to_string(),
        _ => bail!("give one cluster URL: postgres://USER@HOST:PORT"),
    };
    let rest = ["postgres://", "postgresql://", "pgbase://"].iter().find_map(|p| url.strip_prefix(p));
    let Some(rest) = rest else {
        bail!("{url} is no cluster URL: give postgres://USER@HOST:PORT (or the plan's pgbase://USER@HOST:PORT)");
    };
    args.paths = vec![format!("pgbase://{rest}").into()];
    crate::data::backup(g, args).await
}

/// How often the archive check looks for the segment in the repository.
const ARCHIVE_POLL: Duration = Duration::from_millis(250);

/// Wait until the segment holding `base`'s end is in the repository, or
/// fail with why not (walarchive::archive_verdict): asked of the cluster
/// first (archive_mode off: nothing will come) and when the wait is over.
pub(crate) async fn archive_check(repo: &Repository, base: &Snapshot, url: &str, wait: Duration) -> Result<()> {
    let (Some(segment), Some(system_id)) = (pitr::end_segment(base), point(base, "system_id").and_then(|s| s.parse().ok())) else {
        bail!("base backup {} does not record its end, so its archive check cannot run", base.id.short());
    };
    let name = pgwal::snapshot_name(system_id, &segment);
    let ask = |waited: bool| {
        let url = url.to_string();
        async move {
            let said = tokio::task::spawn_blocking(move || pgwal::archiver(&url)).await?;
            anyhow::Ok(walarchive::archive_verdict(said.as_ref().map_err(ToString::to_string), waited, wait.as_secs()))
        }
    };
    let started = Instant::now();
    let mut asked = false;
    loop {
        if repo.find_named(&name).await?.is_some() {
            return Ok(());
        }
        let waited = started.elapsed() >= wait;
        if !asked || waited {
            asked = true;
            if let Some(why) = ask(waited).await? {
                return Err(pitr::Error::EndNotArchived { base: base.id.short(), segment, why }.into());
            }
        }
        tokio::time::sleep(ARCHIVE_POLL).await;
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
fn recovery_settings(g: &Global, a: &PgRestoreArgs, stop: &Stop) -> Result<String> {
    let mut out = format!("\n{} pg restore.\n{}", tresor_sources::recovery_conf::MARK, restore_command(g)?);
    match stop {
        Stop::Time(t) => out += &format!("recovery_target_time = {}\n", conf(&t.format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string())),
        Stop::Lsn(l) => out += &format!("recovery_target_lsn = {}\n", conf(l)),
        Stop::Immediate => out += "recovery_target = 'immediate'\n",
        Stop::Name(n) => out += &format!("recovery_target_name = {}\n", conf(n)),
        Stop::Xid(x) => out += &format!("recovery_target_xid = {}\n", conf(x)),
        Stop::Latest => {}
    }
    out += &format!("recovery_target_action = 'promote'\nrecovery_target_timeline = {}\n", conf(&a.target_timeline));
    if a.no_archive {
        out += "archive_mode = 'off'\n";
    }
    Ok(out)
}

/// Where `a` says recovery stops.
fn stop_of(a: &PgRestoreArgs) -> Result<Stop> {
    Ok(match (&a.time, &a.lsn, &a.name, a.xid) {
        (Some(t), ..) => Stop::Time(crate::data::parse_time(t)?),
        (_, Some(l), ..) => Stop::Lsn(l.clone()),
        (_, _, Some(n), _) => Stop::Name(n.clone()),
        (.., Some(x)) => Stop::Xid(x.to_string()),
        _ if a.immediate => Stop::Immediate,
        _ if a.latest => Stop::Latest,
        _ => bail!("say where recovery stops: --time, --lsn, --name, --xid, --latest or --immediate"),
    })
}

/// The forks of `timeline`'s history, read from the archive (none for
/// timeline 1); a timeline named must have its history archived.
async fn forks(repo: &Repository, chain: &pitr::Chain<'_>, timeline: u32, named: bool) -> Result<Vec<pgwal::Fork>> {
    let Some(file) = pitr::history_file(chain, timeline, named)? else { return Ok(Vec::new()) };
    let system_id = chain.wal.iter().find(|(w, _)| w.name == file).and_then(|(_, s)| point(s, "system_id")).unwrap_or_default();
    let text = crate::pgwal::read_archived(repo, system_id.parse()?, &file).await?.with_context(|| format!("{file} left the archive"))?;
    pgwal::parse_history(&String::from_utf8_lossy(&text)).with_context(|| format!("the archived {file} is no timeline history"))
}

async fn restore(g: &Global, a: PgRestoreArgs) -> Result<u8> {
    let stop_at = stop_of(&a)?;
    let time = match stop_at {
        Stop::Time(t) => Some(t),
        _ => None,
    };
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
    // A base backup off the target timeline's history would have the
    // recovery read another timeline's WAL under its checkpoint.
    let on = pitr::target_timeline(chain, &a.target_timeline);
    let forks = match on {
        Some(t) => forks(&repo, chain, t, a.target_timeline != "latest").await?,
        None => Vec::new(),
    };
    let base = pitr::choose_base(&chain.bases, a.snapshot.as_deref(), &stop_at, on.map(|t| (t, forks.as_slice())))?;
    warn_short(chain, base, time);
    for (parent, at) in on.map(|_| pitr::ancestors_gone_on(chain, &forks)).unwrap_or_default() {
        let (t, lsn) = (on.unwrap_or_default(), format!("{:X}/{:X}", at >> 32, at as u32));
        eprintln!(
            "warning: timeline {parent} went on after timeline {t} branched off it at {lsn}: this recovery follows {t} and leaves \
             timeline {parent}'s newer WAL out (a restore that archives here, a test one too, makes such a branch); \
             --target-timeline {parent} recovers timeline {parent}"
        );
    }
    let settings = recovery_settings(g, &a, &stop_at)?;
    std::fs::create_dir_all(&a.target).with_context(|| format!("cannot create {}", a.target.display()))?;
    std::fs::set_permissions(&a.target, std::fs::Permissions::from_mode(0o700))?;
    let plan = pitr::recovery_plan(chain, base, &stop_at, a.prefetch).filter(|_| a.prefetch > 0);
    // Started first, so that it fetches while the base backup is restored;
    // as root only once the restored files say whose the cluster is.
    let mut prefetcher = match &plan {
        Some(plan) if !crate::pgspool::is_root() => Some(crate::pgspool::start(g, &repo, &a.target, plan, None)?),
        _ => None,
    };
    let mut unpack = tresor_sources::unpack_into(&a.target);
    let (_, bytes, _) = crate::sources::stream_into(&repo, base, unpack.as_mut(), false).await?;
    write_recovery(&a.target, &settings)?;
    let owner = give_to_owner(&a.target)?;
    if let (Some(plan), None) = (&plan, &prefetcher) {
        prefetcher = Some(crate::pgspool::start(g, &repo, &a.target, plan, owner)?);
    }
    let prefetch = prefetcher
        .map(|p| json!({"pid": p.hand_over(), "segments_planned": plan.as_ref().map_or(0, |p| p.segments.len()), "window": a.prefetch}));
    report_restore(g, &a, base, bytes, prefetch, &settings)?;
    Ok(0)
}

/// As root, tar restores the files as their owner (PostgreSQL's user)
/// but what tresor made would be root's: the directory (0700), which
/// PostgreSQL could not enter, recovery.signal and postgresql.auto.conf.
/// They go to the owner of the restored `PG_VERSION`, whom the prefetcher
/// then runs as; `None` when not root (all is the user's who ran it).
fn give_to_owner(dir: &Path) -> Result<Option<(u32, u32)>> {
    use std::os::unix::fs::MetadataExt;
    if !crate::pgspool::is_root() {
        return Ok(None);
    }
    let version = dir.join("PG_VERSION");
    let meta = std::fs::metadata(&version).with_context(|| format!("cannot read {}", version.display()))?;
    for path in [dir.to_path_buf(), dir.join("recovery.signal"), dir.join("postgresql.auto.conf")] {
        std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("cannot give {} to the owner of {}", path.display(), version.display()))?;
    }
    Ok(Some((meta.uid(), meta.gid())))
}

/// What was restored, where it recovers to, and what to reset once it
/// has (recovery_conf::reset_statements).
fn report_restore(
    g: &Global,
    a: &PgRestoreArgs,
    base: &Snapshot,
    bytes: u64,
    prefetch: Option<serde_json::Value>,
    settings: &str,
) -> Result<()> {
    let stop = match (&a.time, &a.lsn, &a.name, a.xid) {
        (Some(t), ..) => format!("time {t}"),
        (_, Some(l), ..) => format!("LSN {l}"),
        (_, _, Some(n), _) => format!("restore point {n}"),
        (.., Some(x)) => format!("the commit of transaction {x}"),
        _ if a.latest => "the end of the archived WAL".into(),
        _ => "the end of the base backup".into(),
    };
    let reset = tresor_sources::recovery_conf::reset_statements(settings);
    if g.json {
        return print_json(
            &json!({"base_backup": base.id, "bytes": bytes, "target": a.target, "recovers_to": stop, "prefetch": prefetch, "reset_after_recovery": reset}),
        );
    }
    say!(
        "restored base backup {} (WAL from {} on timeline {}) into {}; start PostgreSQL on it and it recovers to {stop}",
        base.id.short(),
        point(base, "start_lsn").unwrap_or("?"),
        base.source.consistency.get("timeline").map_or("?".into(), |t| t.to_string()),
        a.target.display()
    );
    say!(
        "note: once recovery has ended, run these (postgresql.auto.conf keeps the recovery settings, and a standby or clone made with pg_basebackup -R copies them, recovers to the same target and promotes itself):"
    );
    for line in reset {
        say!("  {line}");
    }
    if tresor_sources::recovery_conf::archives_off(settings) {
        say!(
            "note: archive_mode stays off, so this cluster archives nothing into the repository; should it become the primary, turn it on"
        );
    }
    Ok(())
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
