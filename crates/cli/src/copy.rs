//! `copy`: replicate snapshots into another repository.

use anyhow::{Context, Result};
use tresor_engine::copy::{CopyOptions, copy as run_copy};
use tresor_engine::{Password, Repository, Snapshot};

use crate::commands::{location, open, open_options, print_json, prompt, read_password_file};
use crate::opts::{CopyArgs, Global};

fn target_password(a: &CopyArgs) -> Result<Password> {
    if let Some(p) = &a.to_password {
        return Ok(p.clone());
    }
    if let Some(f) = &a.to_password_file {
        return read_password_file(f);
    }
    if let Ok(p) = std::env::var("TRESOR_TO_PASSWORD") {
        return Ok(Password::new(p));
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        anyhow::bail!("no password given for the target repository: set TRESOR_TO_PASSWORD, use --to-password-file, or run on a terminal");
    }
    prompt("target repository password", false)
}

/// Whether two locations are one repository: local ones by their real
/// paths (a trailing slash, a relative path or a link named the source as
/// another, and each copy doubled every snapshot in it).
fn same_place(a: &tresor_storage::Location, b: &tresor_storage::Location) -> bool {
    match (a.local_path().map(std::fs::canonicalize), b.local_path().map(std::fs::canonicalize)) {
        (Some(Ok(x)), Some(Ok(y))) => x == y,
        _ => a.to_string().trim_end_matches('/') == b.to_string().trim_end_matches('/'),
    }
}

/// The snapshots `a` selects (given ids, else the filters, newest N per
/// host and path set), and the WAL that continues the base backups among
/// them, which carries no tags a filter could select it by.
fn select(all: Vec<Snapshot>, a: &CopyArgs) -> Result<Vec<Snapshot>> {
    let filter = a.select.filter();
    let mut selected = if !a.snapshots.is_empty() {
        a.snapshots.iter().map(|spec| Ok(tresor_engine::select::select(all.clone(), spec, &filter)?)).collect::<Result<Vec<_>>>()?
    } else {
        // Named pieces of continuous archives (WAL) go off-site too. Only
        // what matches is cloned: a cluster's archive may be many thousand pieces.
        let matching: Vec<Snapshot> = all.iter().filter(|s| filter.matches(s)).cloned().collect();
        match a.latest {
            // The newest N backups: a piece of an archive (a WAL file, newer
            // than every base backup it continues) is none, and comes along
            // with the base backups it continues (below).
            Some(n) => tresor_engine::select::newest_per_host_and_paths(matching.into_iter().filter(|s| s.name.is_none()).collect(), n),
            None => matching,
        }
    };
    let wal: Vec<Snapshot> = tresor_sources::pitr::continuing_wal(&selected, &all)
        .into_iter()
        .filter(|w| !selected.iter().any(|s| s.id == w.id))
        .cloned()
        .collect();
    selected.extend(wal);
    Ok(selected)
}

/// The context of a failure to reach or open the target: typed, so that a
/// copy job's result can say the off-site repository failed, not the source.
#[derive(Debug)]
pub struct InTarget;

impl std::fmt::Display for InTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("target")
    }
}

pub async fn copy(g: &Global, a: CopyArgs) -> Result<u8> {
    let src = open(g).await?;
    let to = tresor_storage::Location::parse(a.to.expose())?;
    if same_place(&to, &location(g)?) {
        anyhow::bail!("--to names the source repository itself");
    }
    let mut opts = open_options(g, Password::new(""))?;
    opts.storage.env_prefix = Some("TRESOR_TO_");
    Repository::probe(&to, &opts.storage).await.context(InTarget)?;
    opts.password = target_password(&a)?;
    let dst = std::sync::Arc::new(Repository::open(&to, &opts).await.context(InTarget)?);
    dst.set_memory_limit(crate::commands::max_memory(g)?);
    let selected = select(src.snapshots().await?, &a)?;
    let unreadable = src.unreadable_snapshots();
    let mut r = run_copy(src, dst, selected, &CopyOptions { dry_run: a.dry_run, verify: !a.no_verify }).await?;
    // Whether a filter would have selected one is unknown: each is named, and fails the copy.
    r.damaged.extend(unreadable);
    if g.json {
        print_json(&r)?;
        return damaged(&r);
    }
    for (from, to) in &r.copied {
        if a.dry_run {
            say!("would copy snapshot {}", from.short());
        } else {
            say!("copied snapshot {} -> {}", from.short(), to.short());
        }
    }
    for id in &r.forgotten {
        say!("snapshot {} was forgotten in the source while it was copied: skipped", id.short());
    }
    say!("{} selected snapshots were in the target already", r.present);
    if !a.dry_run {
        say!(
            "{} blobs ({:.1} MiB packed) transferred, {} reused from the target; {} new packs, {} read back and verified",
            r.blobs_copied,
            r.bytes_copied as f64 / (1 << 20) as f64,
            r.blobs_reused,
            r.packs_written,
            r.packs_verified
        );
    }
    if r.holds_carried > 0 {
        say!("{} legal holds carried to the copies of held snapshots", r.holds_carried);
    }
    match (r.newest_missing, r.lag_seconds) {
        // With none there yet, the lag runs from the oldest snapshot it lacked.
        (Some(_), Some(lag)) if r.present == 0 => say!("replication lag before this run: {lag}s (the target held none of them)"),
        (Some(t), Some(lag)) => say!("replication lag before this run: {lag}s (newest missing snapshot from {t})"),
        _ => say!("replication lag: none, the target had every selected snapshot"),
    }
    damaged(&r)
}

/// Name each selected snapshot, and each evidence entry, the source holds
/// damaged; the copy then fails with the first one's damage, which says
/// why to the daemon too.
fn damaged(r: &tresor_engine::copy::CopyReport) -> Result<u8> {
    let line = |(id, why): &(tresor_engine::Id, String)| format!("snapshot {} was not copied: {why}", id.short());
    let selected = ["of the selected snapshots"; 2];
    let snapshots = crate::data::name_lost(&r.damaged, line, selected, "could not be copied, the others were");
    let line = |(seq, why): &(u64, String)| format!("evidence entry {seq} was not copied: {why}");
    let entries = crate::data::name_lost(&r.evidence_damaged, line, ["evidence entry", "evidence entries"], "could not be copied");
    if let (Some(count), Some((first, why))) = (snapshots, r.damaged.first()) {
        return Err(anyhow::Error::new(tresor_engine::Error::corrupt("snapshot", first.short(), why)).context(count));
    }
    match (entries, r.evidence_damaged.first()) {
        (Some(count), Some((seq, why))) => {
            Err(anyhow::Error::new(tresor_engine::Error::corrupt("evidence entry", seq, why)).context(count))
        }
        _ => Ok(0),
    }
}
