//! `tresor pg wal-push` and `wal-fetch`: PostgreSQL's `archive_command`
//! and `restore_command`.
//!
//! Each WAL file becomes one named snapshot (`pg-wal/SYSTEM_ID/FILE`), so
//! it is compressed, deduplicated and encrypted like any backup, found by
//! name without listing, and kept by prune like any snapshot. A push checks
//! the segment's header against its name and cluster first and never
//! replaces a stored file; a fetch checks the BLAKE3 of what it wrote.
//!
//! Both run once per file and pay for unlocking the repository each time,
//! so each run does more than asked: a push also archives other files the
//! archiver has marked ready (and leaves a note, so their own push returns
//! at once). A fetch first looks in the spool of `tresor pg restore`'s
//! prefetcher (crate::pgspool), which answers without an unlock; without
//! a prefetcher it fetches the following segments in parallel into
//! `pg_wal/tresor-prefetch/` itself.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use tresor_engine::backup::{BackupOptions, backup};
use tresor_engine::{NodeKind, Repository, SourceInfo};
use tresor_sources::pgwal::{self, WalFile, WalKind};
use tresor_sources::pitr::recorded_seg_size;
use tresor_sources::walarchive::{self, Push};

use crate::commands::open;
use crate::opts::{Global, WalFetchArgs, WalPushArgs};

pub use tresor_sources::pgwal::KIND;
const PUSHED: &str = "pg_wal/tresor-pushed";
pub const PREFETCHED: &str = "pg_wal/tresor-prefetch";

fn pgdata(given: Option<PathBuf>) -> Result<PathBuf> {
    given.map_or_else(|| std::env::current_dir().context("cannot tell the working directory"), Ok)
}

/// Files the archiver has marked ready, other than `except`, oldest first
/// (walarchive::ready).
fn ready_files(pgdata: &Path, except: &str, limit: usize) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(pgdata.join("pg_wal/archive_status")) else {
        return Vec::new();
    };
    let names = entries.filter_map(|e| e.ok()?.file_name().into_string().ok());
    walarchive::ready(names, except, limit).into_iter().map(|n| pgdata.join("pg_wal").join(n)).collect()
}

pub async fn push(g: &Global, a: WalPushArgs) -> Result<u8> {
    let pgdata = pgdata(a.pgdata)?;
    let wal = walarchive::parse_path(&a.path)?;
    let data = std::fs::read(&a.path).with_context(|| format!("cannot read {}", a.path.display()))?;
    let hash = blake3::hash(&data).to_hex().to_string();
    let note = pgdata.join(PUSHED).join(&wal.name);
    if std::fs::read_to_string(&note).is_ok_and(|h| h == hash) {
        let _ = std::fs::remove_file(&note);
        if !g.quiet {
            say!("{} archived already (in an earlier batch)", wal.name);
        }
        return Ok(0);
    }
    let control = pgwal::system_id(&pgdata).ok();
    let repo = open_archive(g).await?;
    let said = push_one(&repo, control, &wal, data, hash).await?;
    if !g.quiet {
        say!("{} {said}", wal.name);
    }
    for path in ready_files(&pgdata, &wal.name, a.batch) {
        let Ok(wal) = walarchive::parse_path(&path) else { continue };
        let Ok(data) = std::fs::read(&path) else { continue };
        let hash = blake3::hash(&data).to_hex().to_string();
        match push_one(&repo, control, &wal, data, hash.clone()).await {
            Ok(_) => {
                let _ =
                    std::fs::create_dir_all(pgdata.join(PUSHED)).and_then(|_| std::fs::write(pgdata.join(PUSHED).join(&wal.name), &hash));
            }
            Err(e) => eprintln!("warning: {} not archived ahead: {e:#}", wal.name),
        }
    }
    Ok(0)
}

/// Check and store one WAL file (the rules: walarchive); what happened,
/// in a few words.
async fn push_one(repo: &Arc<Repository>, control: Option<u64>, wal: &WalFile, data: Vec<u8>, hash: String) -> Result<&'static str> {
    let who = walarchive::identify(wal, &data, control)?;
    let name = pgwal::snapshot_name(who.system_id, &wal.name);
    if walarchive::compare(wal, repo.find_named(&name).await?.as_ref(), &hash)? == Push::Identical {
        return Ok("archived already, identical");
    }
    let point = walarchive::recorded_point(wal, who, &hash, &data);
    let info = SourceInfo { kind: KIND.into(), url: None, consistency: point };
    let opts = BackupOptions {
        stdin: Some((wal.name.clone(), Box::new(std::io::Cursor::new(data)))),
        name: Some(name),
        source: Some(Box::new(move || Ok(info))),
        ..Default::default()
    };
    backup(repo.clone(), opts).await?;
    Ok("archived")
}

/// A failed fetch of an archived file, with what restore_command exits
/// with for it (walarchive::failed_fetch_exit).
#[derive(Debug)]
pub struct FetchFailed {
    file: String,
    pub exit: u8,
}

impl std::fmt::Display for FetchFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.exit == walarchive::STOP_RECOVERY {
            let how = "start the server again once it can be fetched, or recover to a point before it";
            write!(f, "cannot fetch {}, so recovery is stopped rather than ended without it ({how})", self.file)
        } else {
            write!(f, "cannot fetch {}; the standby asks for it again", self.file)
        }
    }
}

pub async fn fetch(g: &Global, a: WalFetchArgs) -> Result<u8> {
    let pgdata = pgdata(a.pgdata.clone())?;
    let failed = FetchFailed { file: a.file.clone(), exit: walarchive::failed_fetch_exit(pgdata.join("standby.signal").exists()) };
    fetch_into(g, a, pgdata).await.map_err(|e| e.context(failed))
}

async fn fetch_into(g: &Global, a: WalFetchArgs, pgdata: PathBuf) -> Result<u8> {
    let wal = walarchive::parse_name(&a.file)?;
    let spool = pgdata.join(PREFETCHED);
    // Shaped as pg restore writes it, the quick answer (crate::pgspool)
    // asked the prefetcher already: it said to fetch the file here.
    let asked = crate::pgspool::serves_quickly(&std::env::args_os().collect::<Vec<_>>());
    let (record, own_prefetch) = match crate::pgspool::take(&pgdata, &wal, &a.dest, !asked)? {
        crate::pgspool::Take::Served => return Ok(0),
        crate::pgspool::Take::Absent => return Ok(not_archived(&wal)),
        crate::pgspool::Take::Fetch { record } => (record, 0),
        crate::pgspool::Take::Orphaned => (false, 0),
        // After a prefetcher's recovery ended (its report is there), a
        // late call fetches its one file: a spool made now would stay in
        // pg_wal with nobody to empty it.
        crate::pgspool::Take::NoPrefetcher if crate::pgspool::ended(&pgdata) => (false, 0),
        crate::pgspool::Take::NoPrefetcher => (false, a.prefetch),
    };
    let spooled = spool.join(&wal.name);
    let running_low = || walarchive::running_low(std::fs::read_dir(&spool).map_or(0, |d| d.count()), own_prefetch);
    let from_spool = spooled.exists();
    if from_spool {
        move_file(&spooled, &a.dest)?;
        if !running_low() {
            return Ok(0);
        }
    }
    let system_id = pgwal::system_id(&pgdata)
        .with_context(|| format!("cannot read global/pg_control in {}: run in the data directory or give --pgdata", pgdata.display()))?;
    let repo = open_archive(g).await?;
    let seg_size = if from_spool {
        repo.find_named(&pgwal::snapshot_name(system_id, &wal.name)).await?.as_ref().and_then(recorded_seg_size)
    } else {
        match fetch_one(&repo, system_id, &wal.name, &a.dest).await? {
            Some(seg_size) => seg_size,
            None => return Ok(not_archived(&wal)),
        }
    };
    if record {
        crate::pgspool::note_fallback(&pgdata, &wal.name);
    }
    if let (WalKind::Segment, Some(seg_size)) = (wal.kind, seg_size) {
        prefetch(&repo, system_id, &wal, seg_size, &spool, own_prefetch).await;
    }
    Ok(0)
}

/// The repository, for PostgreSQL's archive_command and restore_command:
/// one that is not there is not to be made (`tresor init`, the advice
/// elsewhere), as an unmounted volume is the likelier cause. The error
/// stays the engine's NoRepository, so the exit code is 10 as for every
/// other command (README's exit codes).
async fn open_archive(g: &Global) -> Result<std::sync::Arc<Repository>> {
    open(g).await.map_err(|e| match e.downcast_ref::<tresor_engine::Error>() {
        Some(tresor_engine::Error::NoRepository { location, .. } | tresor_engine::Error::NotARepository { location, .. }) => {
            let reason = "check that its storage is mounted and reachable (the WAL archive never creates one)".into();
            tresor_engine::Error::NoRepository { location: location.clone(), reason }.into()
        }
        _ => e,
    })
}

pub(crate) fn not_archived(wal: &WalFile) -> u8 {
    eprintln!("tresor: {} is not in the archive", wal.name);
    walarchive::NOT_ARCHIVED_YET
}

/// The segments after `wal` into the spool, several at a time; those not
/// archived (yet) are skipped.
async fn prefetch(repo: &Repository, system_id: u64, wal: &WalFile, seg_size: u64, spool: &Path, count: usize) {
    if count == 0 || std::fs::create_dir_all(spool).is_err() {
        return;
    }
    let names: Vec<String> = walarchive::following(wal, seg_size, count).into_iter().filter(|n| !spool.join(n).exists()).collect();
    let fetched = futures::stream::iter(names)
        .map(|n| async move { fetch_one(repo, system_id, &n, &spool.join(&n)).await })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    for e in fetched.into_iter().filter_map(|r| r.err()) {
        eprintln!("warning: prefetch: {e:#}");
    }
}

/// Write one archived file to `dest` (whole or not at all); its segment
/// size if it is archived, `None` if not.
pub(crate) async fn fetch_one(repo: &Repository, system_id: u64, file: &str, dest: &Path) -> Result<Option<Option<u64>>> {
    let Some(snap) = repo.find_named(&pgwal::snapshot_name(system_id, file)).await? else {
        return Ok(None);
    };
    let tmp = dest.with_file_name(format!(".{file}.tresor-part"));
    let mut out = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Err(e) = copy_archived(repo, &snap, file, &mut out).await {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    out.sync_all()?;
    drop(out);
    move_file(&tmp, dest)?;
    Ok(Some(recorded_seg_size(&snap)))
}

/// An archived file's content (a timeline history: a few lines), if it
/// is archived.
pub(crate) async fn read_archived(repo: &Repository, system_id: u64, file: &str) -> Result<Option<Vec<u8>>> {
    let Some(snap) = repo.find_named(&pgwal::snapshot_name(system_id, file)).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    copy_archived(repo, &snap, file, &mut out).await?;
    Ok(Some(out))
}

/// The content of the archived `file` (its snapshot `snap`) into `out`,
/// checked against the BLAKE3 recorded when it was pushed.
async fn copy_archived(repo: &Repository, snap: &tresor_engine::Snapshot, file: &str, out: &mut impl Write) -> Result<()> {
    let root = repo.load_tree(&snap.tree).await?;
    let node = root.nodes.iter().find(|n| n.kind == NodeKind::File).with_context(|| format!("the archived {file} holds no file"))?;
    let mut hasher = blake3::Hasher::new();
    for id in &node.content {
        let blob = repo.load_blob(id).await?;
        hasher.update(&blob);
        out.write_all(&blob).with_context(|| format!("cannot write the fetched {file}"))?;
    }
    let want = snap.source.consistency.get("blake3").and_then(|v| v.as_str()).unwrap_or_default();
    if hasher.finalize().to_hex().as_str() != want {
        bail!("the archived {file} does not match the BLAKE3 recorded when it was pushed");
    }
    Ok(())
}

pub(crate) fn move_file(from: &Path, to: &Path) -> Result<()> {
    if std::fs::rename(from, to).is_err() {
        std::fs::copy(from, to).with_context(|| format!("cannot write {}", to.display()))?;
        let _ = std::fs::remove_file(from);
    }
    Ok(())
}
