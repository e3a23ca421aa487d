//! The WAL spool of a point-in-time recovery. `tresor pg restore` plans
//! the segments the recovery will read (tresor_sources::pitr's
//! recovery_plan) and starts one prefetcher, `tresor pg wal-prefetch`:
//! handed the key `pg restore` unlocked, it keeps the next `window` segments of
//! that plan, fetched and checked against their BLAKE3, in
//! `pg_wal/tresor-prefetch/`, refilling as PostgreSQL takes them. The
//! restore_command (`tresor pg wal-fetch`) then only moves a file out of
//! the spool: no password, no unlock. A file the plan found not archived
//! (the segment after the last, a newer timeline's history) is asked of
//! the prefetcher (`.ask-NAME`), which looks in the repository, as the
//! primary may have archived it since the plan was made, and fetches it
//! into the spool or answers `.none-NAME`. Anything else (one gone from
//! the spool, a prefetcher that died or could not look) falls back to
//! fetching from the repository.
//!
//! Files in the spool besides the segments (all dot-named, so never taken
//! for WAL): `.plan` (the plan), `.pid` (the prefetcher), `.progress` (how
//! many planned segments it has finished, in plan order), `.served` and
//! `.fallback` (one line per restore_command answered from the spool or
//! from the repository). When recovery ends, the prefetcher writes
//! `tresor-prefetch.json` into the data directory and removes the spool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde_json::json;
use tresor_engine::Repository;
use tresor_sources::pgwal::WalFile;
use tresor_sources::pitr::Plan;

use crate::commands::open_handed;
use crate::opts::Global;
use crate::pgwal::{PREFETCHED, fetch_one};

const PLAN: &str = ".plan";
const PID: &str = ".pid";
const PROGRESS: &str = ".progress";
const SERVED: &str = ".served";
const FALLBACK: &str = ".fallback";
/// A segment handed out and kept for a second request: only the last
/// planned ones (pitr::KEPT).
const SERVED_COPY: &str = ".served-";
/// A restore_command's question about a file the plan lacks, and the
/// prefetcher's answers when it is not in the repository, or could not be
/// looked for (the restore_command then fetches it itself).
const ASK: &str = ".ask-";
const NONE: &str = ".none-";
const FAILED: &str = ".failed-";
/// How long a restore_command waits for the prefetcher's answer before it
/// fetches the file itself: its look is one lookup in the repository.
const ANSWER: Duration = Duration::from_secs(60);
/// The prefetcher's account of a recovery, in the data directory.
pub const REPORT: &str = "tresor-prefetch.json";
/// The report being written: there from before the spool is removed.
const DRAFT: &str = ".tresor-prefetch.json";
/// Fetches running at once: enough to hide a fetch's latency, few enough
/// to leave the cores to PostgreSQL's replay.
const PARALLEL: usize = 3;
/// How often the prefetcher looks at the spool and the server: its window
/// holds seconds of replay, so refilling late costs nothing.
const POLL: Duration = Duration::from_millis(50);
/// How often a restore_command waiting for a planned segment looks again:
/// replay stands still meanwhile.
const WAIT: Duration = Duration::from_millis(2);
/// A prefetcher whose server never starts gives up after this.
const NO_SERVER: Duration = Duration::from_secs(600);

fn spool(pgdata: &Path) -> PathBuf {
    pgdata.join(PREFETCHED)
}

/// A running prefetcher: stopped (and its spool removed) if the restore
/// that started it fails before handing it over.
pub struct Prefetcher {
    pid: Option<u32>,
}

impl Prefetcher {
    /// The restore succeeded: the prefetcher runs on after it.
    pub fn hand_over(mut self) -> Option<u32> {
        self.pid.take()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            // SAFETY: kill has no memory preconditions; the prefetcher
            // cleans up on SIGTERM.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Write the plan into the spool and start the prefetcher on it, handing
/// it the unlocked key on its standard input (`open_handed`). With an
/// `owner` (uid, gid; `pg restore` as root) the spool is theirs and the
/// prefetcher runs as them: PostgreSQL, as that user, takes its segments
/// over and must be able to write them when it recycles them.
pub fn start(g: &Global, repo: &Repository, pgdata: &Path, plan: &Plan, owner: Option<(u32, u32)>) -> Result<Prefetcher> {
    let dir = spool(pgdata);
    // A base backup of a recovered cluster carries that recovery's report.
    let _ = (std::fs::remove_file(pgdata.join(REPORT)), std::fs::remove_file(pgdata.join(DRAFT)));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join(PLAN), serde_json::to_vec(plan)?).with_context(|| format!("cannot write {}", dir.display()))?;
    let give = |path: &Path| match owner {
        Some((uid, gid)) => {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| format!("cannot give {} away", path.display()))
        }
        None => Ok(()),
    };
    give(&dir)?;
    give(&dir.join(PLAN))?;
    let exe = std::env::current_exe().context("cannot tell where tresor is installed")?;
    let mut cmd = std::process::Command::new(exe);
    // In the environment, not on the command line, which `ps` shows to
    // every user of the machine; the daemon passes its children the same.
    if let Some(repo) = &g.repo {
        cmd.env("TRESOR_REPOSITORY", repo.expose());
    }
    // Root's cache is no other user's to write.
    if g.no_cache || owner.is_some() {
        cmd.arg("--no-cache");
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, gid);
    }
    if let (Some(c), None) = (&g.cache_dir, owner) {
        cmd.arg("--cache-dir").arg(std::path::absolute(c)?);
    }
    cmd.args(["--quiet", "pg", "wal-prefetch", "--pgdata"]).arg(std::path::absolute(pgdata)?);
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
    // Its own session: the prefetcher outlives this process and must not
    // get the terminal's signals meant for it.
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        })
    };
    let mut child = cmd.spawn().context("cannot start the WAL prefetcher")?;
    let prefetcher = Prefetcher { pid: Some(child.id()) };
    let mut key = child.stdin.take().expect("piped");
    repo.hand_key(&mut key).context("cannot hand the key to the WAL prefetcher")?;
    std::fs::write(dir.join(PID), child.id().to_string()).with_context(|| format!("cannot write {}", dir.display()))?;
    give(&dir.join(PID))?;
    Ok(prefetcher)
}

/// How restore_command's request was answered from the spool.
#[derive(Debug, PartialEq)]
pub enum Take {
    /// Moved out of the spool into place.
    Served,
    /// Not archived (as planned): no need to ask the repository.
    Absent,
    /// To fetch from the repository; `record` when a prefetcher counts it.
    Fetch { record: bool },
    /// No prefetcher runs here: fetch as without one.
    NoPrefetcher,
    /// The prefetcher died without removing its spool: fetch from the
    /// repository, uncounted.
    Orphaned,
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn read_number(path: &Path) -> Option<usize> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Answer a restore_command for `wal` from the spool: at once if it is
/// there; if it is planned and not yet fetched, once the prefetcher has it.
/// `ask`: whether a file the plan lacks may be asked of the prefetcher;
/// not when the quick answer asked already and was told to fetch it.
pub fn take(pgdata: &Path, wal: &WalFile, dest: &Path, ask: bool) -> Result<Take> {
    let took = lookup(pgdata, wal, dest, ask)?;
    if took == Take::Orphaned {
        // A prefetcher killed outright leaves its spool; the first fetch
        // after it removes it, and later ones find no prefetcher.
        let _ = std::fs::remove_dir_all(spool(pgdata));
    }
    Ok(took)
}

/// `take` without touching a dead prefetcher's spool.
fn lookup(pgdata: &Path, wal: &WalFile, dest: &Path, may_ask: bool) -> Result<Take> {
    let dir = spool(pgdata);
    let Some(pid) = read_number(&dir.join(PID)) else {
        return Ok(Take::NoPrefetcher);
    };
    let plan: Plan = match std::fs::read(dir.join(PLAN)).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        Some(p) => p,
        None => return Ok(Take::NoPrefetcher),
    };
    // PostgreSQL asks for the segment where recovery stops a second time
    // when it ends recovery: the last planned segments are copied out and
    // kept for that. Every other one is moved (no 16 MiB copy); asked for
    // again (after a restart), it comes from the repository.
    let (index, last) = plan.place(&wal.name);
    let file = dir.join(&wal.name);
    let kept = dir.join(format!("{SERVED_COPY}{}", wal.name));
    loop {
        // A file asked of the prefetcher is kept too: it is the one past
        // the plan's end, where recovery stops and asks again.
        let served = if last || kept.exists() {
            (kept.exists() || std::fs::rename(&file, &kept).is_ok()) && std::fs::copy(&kept, dest).is_ok()
        } else {
            std::fs::rename(&file, dest).is_ok()
        };
        if served {
            note(&dir, SERVED, &wal.name);
            return Ok(Take::Served);
        }
        let waiting = index.is_some_and(|i| read_number(&dir.join(PROGRESS)).unwrap_or(0) <= i) && alive(pid as u32);
        if !waiting {
            break;
        }
        std::thread::sleep(WAIT);
    }
    if !alive(pid as u32) {
        return Ok(Take::Orphaned);
    }
    if plan.lacks(wal) && may_ask {
        return Ok(ask(&dir, pid as u32, wal, dest));
    }
    Ok(Take::Fetch { record: true })
}

/// A file the plan did not find archived when it was made: the primary may
/// have archived it since (its last segments, in a disaster). The
/// prefetcher, which holds the unlocked key, looks in the repository and
/// fetches it into the spool or says it is not there; saying "not archived"
/// from the plan alone ended recovery before WAL that was there.
fn ask(dir: &Path, pid: u32, wal: &WalFile, dest: &Path) -> Take {
    let (file, none, failed) = (dir.join(&wal.name), dir.join(format!("{NONE}{}", wal.name)), dir.join(format!("{FAILED}{}", wal.name)));
    let kept = dir.join(format!("{SERVED_COPY}{}", wal.name));
    // Answers to an earlier asking that was not there to take them.
    let _ = (std::fs::remove_file(&none), std::fs::remove_file(&failed));
    if std::fs::write(dir.join(format!("{ASK}{}", wal.name)), "").is_err() {
        return Take::Fetch { record: true };
    }
    let asked = Instant::now();
    loop {
        if std::fs::rename(&file, &kept).is_ok() && std::fs::copy(&kept, dest).is_ok() {
            note(dir, SERVED, &wal.name);
            return Take::Served;
        }
        if std::fs::remove_file(&none).is_ok() {
            return Take::Absent;
        }
        if std::fs::remove_file(&failed).is_ok() {
            return Take::Fetch { record: true };
        }
        if !alive(pid) {
            return Take::Orphaned;
        }
        // A prefetcher stopped, hung on its storage, or a pid reused after
        // it was killed: recovery must not wait on it for ever.
        if asked.elapsed() > ANSWER {
            return Take::Fetch { record: true };
        }
        std::thread::sleep(WAIT);
    }
}

/// Global options `pg restore` writes into the restore_command before
/// `pg wal-fetch` (crate::pg's restore_command), with a value and without.
const WITH_VALUE: [&str; 4] = ["--repo", "-r", "--password-file", "--cache-dir"];
const FLAGS: [&str; 3] = ["--no-cache", "--quiet", "-q"];

/// restore_command's quick answer, before the command line parser, the
/// logger and the runtime start: a run shaped as `pg restore` writes it
/// (`… pg wal-fetch %f %p`, in the data directory) whose file the spool
/// holds, or that the plan knows is not archived. Anything else (`None`)
/// goes the ordinary way.
pub fn serve_restore_command(args: &[std::ffi::OsString]) -> Option<u8> {
    let (wal, dest) = quick(args)?;
    let pgdata = std::env::current_dir().ok()?;
    match lookup(&pgdata, &wal, &dest, true).ok()? {
        Take::Served => Some(0),
        Take::Absent => Some(crate::pgwal::not_archived(&wal)),
        Take::Fetch { .. } | Take::NoPrefetcher | Take::Orphaned => None,
    }
}

/// Whether `args` are a restore_command `serve_restore_command` answers
/// first (so `wal-fetch` runs after it only when told to fetch).
pub fn serves_quickly(args: &[std::ffi::OsString]) -> bool {
    quick(args).is_some()
}

/// The file and destination of a restore_command shaped as `pg restore`
/// writes it.
fn quick(args: &[std::ffi::OsString]) -> Option<(WalFile, PathBuf)> {
    let args: Vec<&str> = args.iter().skip(1).map(|a| a.to_str()).collect::<Option<_>>()?;
    let [globals @ .., "pg", "wal-fetch", file, dest] = args.as_slice() else {
        return None;
    };
    let mut rest = globals.iter();
    while let Some(arg) = rest.next() {
        match *arg {
            a if WITH_VALUE.contains(&a) => rest.next()?,
            a if FLAGS.contains(&a) => a,
            _ => return None,
        };
    }
    Some((WalFile::parse(file)?, PathBuf::from(dest)))
}

/// One line for the prefetcher's account (appends of one short line do
/// not interleave).
pub fn note(dir: &Path, log: &str, name: &str) {
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(log))
        .and_then(|mut f| f.write_all(format!("{name}\n").as_bytes()));
}

pub fn note_fallback(pgdata: &Path, name: &str) {
    note(&spool(pgdata), FALLBACK, name);
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).map_or(Vec::new(), |t| t.lines().map(str::to_string).collect())
}

/// When to stop: recovery ended (PostgreSQL removes recovery.signal), the
/// server stopped, or it never started.
struct Watch {
    began: Instant,
    signal_seen: bool,
    server_seen: bool,
}

impl Watch {
    fn ended(&mut self, pgdata: &Path) -> Option<&'static str> {
        let signal = pgdata.join("recovery.signal").exists();
        let server = pgdata.join("postmaster.pid").exists();
        let ended = if self.signal_seen && !signal {
            Some("recovery ended")
        } else if self.server_seen && !server {
            Some("the server stopped")
        } else if !self.server_seen && self.began.elapsed() > NO_SERVER {
            Some("the server did not start")
        } else {
            None
        };
        self.signal_seen |= signal;
        self.server_seen |= server;
        ended
    }
}

/// Segments in the spool now (dot-named files are not).
fn spooled(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.filter_map(|e| e.ok()).filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count())
}

/// `tresor pg wal-prefetch`: the prefetcher `start` runs.
pub async fn prefetch(g: &Global, pgdata: PathBuf) -> Result<u8> {
    let dir = spool(&pgdata);
    let plan: Plan = serde_json::from_slice(&std::fs::read(dir.join(PLAN)).context("no prefetch plan")?)?;
    let mut warnings = Vec::new();
    let (ended, prefetched) = match open_handed(g).await {
        Ok(repo) => fill(&repo, &plan, &pgdata, &mut warnings).await?,
        Err(e) => {
            warnings.push(format!("cannot open the repository: {e:#}"));
            ("the repository could not be opened", 0)
        }
    };
    let report = json!({
        "segments_planned": plan.segments.len(),
        "segments_prefetched": prefetched,
        "window": plan.window,
        "served_from_spool": lines(&dir.join(SERVED)).len(),
        "fetched_by_fallback": lines(&dir.join(FALLBACK)).len(),
        "fallback_files": lines(&dir.join(FALLBACK)),
        "ended": ended,
        "warnings": warnings,
    });
    // The report appears once the spool is gone: whoever waits for it
    // finds the recovery's files as they stay. Its draft is there before
    // the spool goes, so a restore_command that finds neither spool nor
    // report cannot come between them and start a spool of its own (`ended`).
    let mut report = report;
    let draft = pgdata.join(DRAFT);
    std::fs::write(&draft, serde_json::to_vec_pretty(&report)?)?;
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        report["warnings"].as_array_mut().expect("an array").push(format!("cannot remove {}: {e}", dir.display()).into());
        std::fs::write(&draft, serde_json::to_vec_pretty(&report)?)?;
    }
    std::fs::rename(&draft, pgdata.join(REPORT))?;
    Ok(0)
}

/// Whether a prefetcher's recovery in `pgdata` has ended (its report, or
/// the draft it writes before it removes its spool, is there): a
/// restore_command called after it fetches its one file and makes no spool.
pub fn ended(pgdata: &Path) -> bool {
    pgdata.join(REPORT).exists() || pgdata.join(DRAFT).exists()
}

/// Files restore_commands ask about (`ask`) that are not being looked for yet.
fn questions(dir: &Path, asked: &mut std::collections::HashSet<String>) -> Vec<String> {
    let names = std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| e.file_name().into_string().ok());
    names.filter_map(|n| n.strip_prefix(ASK).map(str::to_string)).filter(|n| asked.insert(n.clone())).collect()
}

/// The answer to an `ask`: the file is in the spool already, or a marker
/// says it is not in the repository or could not be looked for.
fn answer(dir: &Path, result: Result<Option<Option<u64>>>, name: &str, warnings: &mut Vec<String>) {
    let marker = match result {
        Ok(Some(_)) => None,
        Ok(None) => Some(NONE),
        Err(e) => {
            warnings.push(format!("{name}: {e:#}"));
            Some(FAILED)
        }
    };
    if let Some(m) = marker {
        let _ = std::fs::write(dir.join(format!("{m}{name}")), "");
    }
    let _ = std::fs::remove_file(dir.join(format!("{ASK}{name}")));
}

/// Keep the window full until recovery ends; why it ended and how many
/// segments were fetched.
async fn fill(repo: &Repository, plan: &Plan, pgdata: &Path, warnings: &mut Vec<String>) -> Result<(&'static str, usize)> {
    use tokio::signal::unix::{SignalKind, signal};
    let dir = spool(pgdata);
    let mut term = signal(SignalKind::terminate())?;
    let mut watch = Watch { began: Instant::now(), signal_seen: false, server_seen: false };
    let mut running = FuturesOrdered::new();
    let (mut answers, mut asked) = (futures::stream::FuturesUnordered::new(), std::collections::HashSet::new());
    let (mut next, mut done, mut fetched) = (0, 0, 0);
    let ended = loop {
        if let Some(why) = watch.ended(pgdata) {
            break why;
        }
        let held = spooled(&dir);
        for _ in 0..plan.to_start(next, held, running.len(), PARALLEL) {
            let name = plan.segments[next].clone();
            let dest = dir.join(&name);
            running.push_back(async move { (fetch_one(repo, plan.system_id, &name, &dest).await, name) });
            next += 1;
        }
        for name in questions(&dir, &mut asked) {
            let dest = dir.join(&name);
            answers.push(async move { (fetch_one(repo, plan.system_id, &name, &dest).await, name) });
        }
        tokio::select! {
            Some((result, name)) = answers.next(), if !answers.is_empty() => {
                answer(&dir, result, &name, warnings);
                asked.remove(&name);
            }
            Some((result, name)) = running.next(), if !running.is_empty() => {
                done += 1;
                match result {
                    Ok(Some(_)) => fetched += 1,
                    Ok(None) => warnings.push(format!("{name} is no longer in the archive")),
                    Err(e) => warnings.push(format!("{name}: {e:#}")),
                }
                std::fs::write(dir.join(".progress.tmp"), done.to_string())?;
                std::fs::rename(dir.join(".progress.tmp"), dir.join(PROGRESS))?;
            }
            _ = term.recv() => break "stopped",
            _ = tokio::time::sleep(POLL) => {}
        }
    };
    Ok((ended, fetched))
}
