//! `restore --to URL`: a data-source snapshot back into a running service;
//! buckets, backed up and restored object by object.

use std::sync::mpsc::Receiver;

use anyhow::{Result, bail};
use serde_json::json;
use tresor_engine::backup::BackupOptions;
use tresor_engine::{Id, NodeKind, Repository, Snapshot};
use tresor_sources::Target;
use tresor_sources::bucket::{self, Bucket, BucketRestore, Listing, restore_into};

use crate::commands::{human, open, print_json, storage_options};
use crate::opts::{BackupArgs, Global, RestoreArgs};

/// Restore the snapshot's one stream into the service a URL names.
pub async fn restore_to(g: &Global, repo: &Repository, snap: &Snapshot, to: &str, flush: bool, jobs: usize) -> Result<u8> {
    // A data directory's tar is no stream a server loads; `latest` is the
    // newest snapshot of any kind, often a base backup beside the dumps.
    if snap.source.kind == tresor_sources::PG_BASE && !to.starts_with("command:") {
        let id = snap.id.short();
        bail!(
            "snapshot {id} is a PostgreSQL base backup: restore it with `tresor pg restore {id} --target DIR`, or name the dump to restore"
        );
    }
    let kind = snap.source.kind.as_str();
    let head = match kind {
        "stdin" | "command" => stream_head(repo, snap).await?,
        _ => Vec::new(),
    };
    if let Err(why) = tresor_sources::target_takes(to, kind, &head) {
        bail!("snapshot {} cannot be restored there: {why}; name one by its id, or narrow latest with --tag or --host", snap.id.short());
    }
    let recorded = snap.source.consistency.get("properties").cloned().unwrap_or_default();
    let mut target = tresor_sources::target_from_url(to, tresor_sources::TargetOptions { jobs, recorded })?;
    let (name, size, said) = stream_into(repo, snap, target.as_mut(), flush).await?;
    if g.json {
        print_json(&json!({"snapshot": snap.id, "bytes": size, "result": said}))?;
    } else {
        say!("restored {name} ({size} bytes) from snapshot {}: {said}", snap.id.short());
    }
    Ok(0)
}

/// The first bytes of a snapshot's one stream (none when it holds no file).
async fn stream_head(repo: &Repository, snap: &Snapshot) -> Result<Vec<u8>> {
    let root = repo.load_tree(&snap.tree).await?;
    match root.nodes.iter().find(|n| n.kind == NodeKind::File).and_then(|f| f.content.first()) {
        Some(id) => Ok(repo.load_blob(id).await?.into_iter().take(16).collect()),
        None => Ok(Vec::new()),
    }
}

/// Blobs read ahead of a target that is slower to take them.
const STREAM_AHEAD: usize = 2;

/// Stream the snapshot's one file into a target, blob by blob: the file's
/// name and size, and what the target said. The target takes the blobs on
/// a thread of its own while the next ones are read and decrypted: `tar -x`
/// or `pg_restore` at the other end of a pipe would otherwise wait while
/// tresor reads, and tresor while they write.
pub async fn stream_into(repo: &Repository, snap: &Snapshot, target: &mut dyn Target, flush: bool) -> Result<(String, u64, String)> {
    let root = repo.load_tree(&snap.tree).await?;
    let files: Vec<_> = root.nodes.iter().filter(|n| n.kind == NodeKind::File).collect();
    let [file] = files.as_slice() else {
        bail!("snapshot {} holds {} files at its root; --to takes a snapshot of one data-source stream", snap.id.short(), files.len());
    };
    let runtime = tokio::runtime::Handle::current();
    let said = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let (ahead, taken) = std::sync::mpsc::sync_channel::<Vec<u8>>(STREAM_AHEAD);
            let writer = scope.spawn(move || take_all(target, file.size, file.content.len(), flush, taken));
            let read = runtime.block_on(async {
                for id in &file.content {
                    // A writer that has stopped has failed: its error says why.
                    if ahead.send(repo.load_blob(id).await?).is_err() {
                        break;
                    }
                }
                anyhow::Ok(())
            });
            drop(ahead);
            // The writer's error first: a read that stopped because the
            // writer had failed did not fail itself.
            let said = writer.join().expect("the target's thread does not panic")?;
            read?;
            anyhow::Ok(said.expect("a target given every blob is finished"))
        })
    })?;
    Ok((file.name.clone(), file.size, said))
}

/// Give the target every one of `blobs` blobs, then finish it: `None` when
/// fewer came (a read failed), so that a partial stream is never finished
/// as if it were whole. A target that began and did not finish is aborted;
/// should that fail too, its error is a line of its own.
fn take_all(target: &mut dyn Target, len: u64, blobs: usize, flush: bool, taken: Receiver<Vec<u8>>) -> Result<Option<String>> {
    target.begin(len, flush)?;
    let given = give_all(target, blobs, taken);
    if !matches!(given, Ok(Some(_)))
        && let Err(e) = target.abort()
    {
        eprintln!("error: {e}");
    }
    given
}

fn give_all(target: &mut dyn Target, blobs: usize, taken: Receiver<Vec<u8>>) -> Result<Option<String>> {
    let mut count = 0;
    for blob in taken {
        target.write(&blob)?;
        count += 1;
    }
    if count < blobs {
        return Ok(None);
    }
    Ok(Some(target.finish()?))
}

/// Objects downloaded at once by a bucket backup unless --threads says otherwise:
/// the workers wait on the network more than they compute.
const BUCKET_DOWNLOADS: usize = 8;

/// Back up a bucket (`bucket+s3://…`): its listing streams into the
/// engine, objects the parent snapshot holds unchanged are not downloaded.
pub async fn backup_bucket(g: &Global, mut a: BackupArgs, url: &str) -> Result<(u8, Id)> {
    if !a.excludes.is_empty() || !a.exclude_file.is_empty() {
        bail!("--exclude and --exclude-file do not apply to a bucket source: back up a narrower prefix instead");
    }
    let time = a.time.as_deref().map(crate::data::parse_time).transpose()?;
    let bucket = Bucket::open(url, &storage_options(g)?)?;
    let listing = Listing::start(&bucket).await?;
    let repo = open(g).await?;
    let name = bucket.name();
    let parent = match (&a.parent, a.force) {
        (_, true) => None,
        (Some(spec), _) => Some(repo.find_snapshot(spec).await?),
        (None, _) => {
            repo.snapshots().await?.into_iter().rev().find(|s| s.source.kind == bucket::KIND && s.source.url.as_deref() == Some(&name))
        }
    };
    let report = listing.report();
    let (input, info) = listing.into_input();
    let host = a.host.clone().unwrap_or_else(tresor_engine::hostname);
    let opts = BackupOptions {
        host: Some(host),
        time,
        parent,
        entries: Some(input),
        source: Some(Box::new(move || Ok(info()))),
        ..Default::default()
    };
    a.threads = Some(a.threads.filter(|&n| n > 0).unwrap_or(BUCKET_DOWNLOADS));
    let (code, id) = crate::data::run_and_report(g, repo, a, opts).await?;
    let r = report.lock().expect("not poisoned");
    for c in &r.changed {
        eprintln!("warning: {}: {} while the backup ran", c.key, c.change);
    }
    if r.changed_count > r.changed.len() as u64 {
        eprintln!("warning: {} more objects changed while the backup ran", r.changed_count - r.changed.len() as u64);
    }
    if !g.json && !g.quiet {
        say!("{name}: {} objects ({}) listed, {} downloaded ({})", r.objects, human(r.bytes), r.downloaded, human(r.downloaded_bytes));
    }
    Ok((code, id))
}

/// Restore a snapshot's files into a bucket as objects, with their metadata.
pub async fn restore_bucket(g: &Global, repo: &Repository, snap: &Snapshot, to: &str, a: &RestoreArgs) -> Result<u8> {
    let target = Bucket::open(to, &storage_options(g)?)?;
    let opts = BucketRestore {
        flush: a.flush,
        includes: a.includes.clone(),
        excludes: a.excludes.clone(),
        concurrency: if a.jobs > 1 { a.jobs } else { BUCKET_DOWNLOADS },
    };
    let r = restore_into(repo, snap.tree, &target, &opts).await?;
    if g.json {
        print_json(&json!({"snapshot": snap.id, "target": target.name(), "result": r}))?;
    } else {
        let deleted =
            if r.deleted > 0 { format!(", then deleted {} objects the snapshot does not hold", r.deleted) } else { String::new() };
        say!("restored {} objects ({}) from snapshot {} into {}{deleted}", r.objects, human(r.bytes), snap.id.short(), target.name());
    }
    if r.metadata_not_set > 0 {
        eprintln!("warning: {} objects restored without some of their metadata, which {} cannot store", r.metadata_not_set, target.name());
    }
    let below = |(prefix, why): &(String, String)| format!("{prefix}*: these objects were not restored: {why}");
    let object = |(key, why): &(String, String)| format!("{key}: this object was not restored: {why}");
    let lost: Vec<String> = [
        crate::data::name_lost(&r.unread, below, ["key prefix", "key prefixes"], "could not be read"),
        crate::data::name_lost(&r.damaged, object, ["object", "objects"], "could not be read"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if lost.is_empty() { Ok(0) } else { anyhow::bail!("{}", lost.join("; ")) }
}
