//! A bucket snapshot written back into a bucket: each file of the snapshot
//! is the object its names decode to, below the target's prefix, with the
//! metadata recorded at backup, as far as the target store takes it.

use futures::StreamExt;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;
use tresor_engine::{Id, Node, Repository};

use super::{Bucket, names};
use crate::{Error, Result};

/// How a restore into a bucket runs.
#[derive(Debug, Default, Clone)]
pub struct BucketRestore {
    /// Replace what the target holds below its prefix: the snapshot's
    /// objects are written first, and only once all are written are the
    /// objects it does not hold deleted, so a restore that fails midway
    /// loses nothing the target held.
    pub flush: bool,
    /// Keys to restore: a pattern with `*`, `?` or `[` is a glob over the
    /// whole key (`*` crosses `/`), any other a key prefix. Empty: all.
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
    /// Objects written at once.
    pub concurrency: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct RestoreReport {
    pub objects: u64,
    pub bytes: u64,
    /// Objects the snapshot does not hold, deleted from the target after
    /// the restore (`--flush`).
    pub deleted: u64,
    /// Objects whose recorded metadata the target store cannot set.
    pub metadata_not_set: u64,
    /// Key prefixes whose listing is damaged in the repository, each with
    /// why: their objects were not restored, and `--flush` kept what the
    /// target holds below them.
    pub unread: Vec<(String, String)>,
    /// Objects whose content is damaged in the repository, in key order,
    /// each with why: not restored, and what the target held under their
    /// key kept.
    pub damaged: Vec<(String, String)>,
}

/// How much of an object is read, and so authenticated, before its key in
/// the target is opened for writing: the writer's chunk, which it holds
/// before sending anything anyway.
const READ_AHEAD: u64 = 8 << 20;

/// What became of one object of the snapshot.
enum Put {
    /// Its key, size, and whether every recorded piece of metadata was set.
    Written(String, u64, bool),
    /// Its key and the damage that kept it from the target.
    Damaged(String, String),
}

/// Key prefixes and globs.
struct KeyFilter {
    prefixes: Vec<String>,
    globs: GlobSet,
}

impl KeyFilter {
    fn new(patterns: &[String]) -> Result<KeyFilter> {
        let mut globs = GlobSetBuilder::new();
        let mut prefixes = Vec::new();
        for p in patterns {
            if p.contains(['*', '?', '[']) {
                globs.add(Glob::new(p).map_err(|e| Error::failed("bucket restore", format!("bad pattern {p:?}: {e}")))?);
            } else {
                prefixes.push(p.clone());
            }
        }
        let globs = globs.build().map_err(|e| Error::failed("bucket restore", e))?;
        Ok(KeyFilter { prefixes, globs })
    }

    fn is_empty(&self) -> bool {
        self.prefixes.is_empty() && self.globs.is_empty()
    }

    fn matches(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str())) || self.globs.is_match(key)
    }
}

/// Restore the snapshot's tree `root` into `bucket`.
pub async fn restore_into(repo: &Repository, root: Id, bucket: &Bucket, opts: &BucketRestore) -> Result<RestoreReport> {
    let (includes, excludes) = (KeyFilter::new(&opts.includes)?, KeyFilter::new(&opts.excludes)?);
    let mut report = RestoreReport::default();
    let mut held = bucket.op.lister_with("").recursive(true).await.map_err(|e| bucket.error(e))?;
    if let Some(first) = held.next().await.transpose().map_err(|e| bucket.error(e))?.filter(|e| e.path() != "/")
        && !opts.flush
    {
        let why = format!("it holds objects ({} and maybe more); restore with --flush to replace them", first.path());
        return Err(Error::failed(bucket.name(), why));
    }
    // Keys a flush keeps: those written, and those of damaged objects.
    let mut kept = std::collections::HashSet::new();
    let (tx, rx) = tokio::sync::mpsc::channel::<(String, Node)>(256);
    let walked = async move {
        let (mut dirs, mut unread) = (vec![(root, String::new())], Vec::new());
        while let Some((tree, prefix)) = dirs.pop() {
            let tree = match repo.load_tree(&tree).await {
                Ok(tree) => tree,
                Err(e) if tresor_engine::objects::is_damage(&e) => {
                    unread.push((prefix, e.to_string()));
                    continue;
                }
                Err(e) => return Err(Error::failed(bucket.name(), e)),
            };
            for node in tree.nodes {
                let name = names::names_to_key([node.os_name().as_os_str()])
                    .ok_or_else(|| Error::failed(bucket.name(), format!("{:?} is not a name a bucket backup makes", node.name)))?;
                let key = format!("{prefix}{name}");
                match node.subtree {
                    Some(sub) if node.is_dir() => dirs.push((sub, format!("{key}/"))),
                    _ if node.is_file() => {
                        let wanted = (includes.is_empty() || includes.matches(&key)) && !excludes.matches(&key);
                        if wanted && tx.send((key, node)).await.is_err() {
                            return Ok(unread);
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok::<_, Error>(unread)
    };
    let objects = tokio_stream(rx).map(|(key, node)| put(repo, bucket, key, node)).buffer_unordered(opts.concurrency.max(1));
    let written = async {
        let mut objects = std::pin::pin!(objects);
        while let Some(done) = objects.next().await {
            let (key, bytes, all_metadata) = match done? {
                Put::Written(key, bytes, all) => (key, bytes, all),
                Put::Damaged(key, why) => {
                    kept.insert(key.clone());
                    report.damaged.push((key, why));
                    continue;
                }
            };
            if opts.flush {
                kept.insert(key);
            }
            report.objects += 1;
            report.bytes += bytes;
            report.metadata_not_set += u64::from(!all_metadata);
        }
        report.damaged.sort();
        Ok::<_, Error>(())
    };
    let (walked, written) = futures::join!(walked, written);
    written?;
    report.unread = walked?;
    if opts.flush {
        let keep = |key: &str| kept.contains(key) || report.unread.iter().any(|(prefix, _)| key.starts_with(prefix.as_str()));
        report.deleted = delete_others(bucket, &keep).await?;
    }
    Ok(report)
}

fn tokio_stream<T>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// Delete every object below the target's prefix but those to keep.
async fn delete_others(bucket: &Bucket, keep: &dyn Fn(&str) -> bool) -> Result<u64> {
    let mut count = 0;
    let mut lister = bucket.op.lister_with("").recursive(true).await.map_err(|e| bucket.error(e))?;
    while let Some(entry) = lister.next().await.transpose().map_err(|e| bucket.error(e))? {
        if entry.path() != "/" && !keep(entry.path()) {
            bucket.op.delete(entry.path()).await.map_err(|e| bucket.error(e))?;
            count += 1;
        }
    }
    Ok(count)
}

/// Write one object, its bytes and the metadata the store takes; an
/// object whose content is damaged in the repository leaves the target's
/// object under its key as it was: what is read ahead is authenticated
/// before the key is opened, and a damaged blob after that aborts the
/// write, which the store then never completes.
async fn put(repo: &Repository, bucket: &Bucket, key: String, node: Node) -> Result<Put> {
    let fail = |e: opendal::Error| bucket.error(e);
    if key.ends_with('/') && node.size == 0 {
        bucket.op.create_dir(&key).await.map_err(fail)?;
        return Ok(Put::Written(key, 0, true));
    }
    let load = async |id: &Id| match repo.load_blob(id).await {
        Ok(blob) => Ok(Ok(blob)),
        Err(e) if tresor_engine::objects::is_damage(&e) => Ok(Err(e.to_string())),
        Err(e) => Err(Error::failed(bucket.name(), format!("{key}: {e}"))),
    };
    let (mut ahead, mut read) = (Vec::new(), 0u64);
    let mut blobs = node.content.iter();
    while read < READ_AHEAD
        && let Some(id) = blobs.next()
    {
        match load(id).await? {
            Ok(blob) => {
                read += blob.len() as u64;
                ahead.push(blob);
            }
            Err(why) => return Ok(Put::Damaged(key, why)),
        }
    }
    let (mut writer, all) = open_writer(bucket, &key, &node).await?;
    // The rest of the object; the damage met, if any.
    let rest = async {
        for blob in ahead {
            writer.write(blob).await.map_err(fail)?;
        }
        for id in blobs {
            match load(id).await? {
                Ok(blob) => writer.write(blob).await.map_err(fail)?,
                Err(why) => return Ok(Some(why)),
            }
        }
        Ok::<_, Error>(None)
    };
    match rest.await {
        Ok(None) => {
            writer.close().await.map_err(fail)?;
            Ok(Put::Written(key, node.size, all))
        }
        Ok(Some(why)) => {
            let aborted = writer.abort().await.map_err(|e| {
                let why = format!("{key}: {why}; its write could not be aborted, so the target may hold it in part: {e}");
                Error::failed(bucket.name(), why)
            });
            aborted.map(|()| Put::Damaged(key, why))
        }
        Err(e) => {
            // An outage: no upload is left open in the target either.
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

/// A writer for `key` with the metadata recorded in `node` that the store
/// takes, and whether it takes all of it.
async fn open_writer(bucket: &Bucket, key: &str, node: &Node) -> Result<(opendal::Writer, bool)> {
    let cap = bucket.op.info().full_capability();
    let meta = node.object.clone().unwrap_or_default();
    let mut all = true;
    let mut w = bucket.op.writer_with(key).chunk(READ_AHEAD as usize);
    let mut set = |value: &Option<String>, able: bool| {
        all &= value.is_none() || able;
        value.as_deref().filter(|_| able).map(String::from)
    };
    if let Some(v) = set(&meta.content_type, cap.write_with_content_type) {
        w = w.content_type(&v);
    }
    if let Some(v) = set(&meta.content_encoding, cap.write_with_content_encoding) {
        w = w.content_encoding(&v);
    }
    if let Some(v) = set(&meta.content_disposition, cap.write_with_content_disposition) {
        w = w.content_disposition(&v);
    }
    if let Some(v) = set(&meta.cache_control, cap.write_with_cache_control) {
        w = w.cache_control(&v);
    }
    if !meta.user_metadata.is_empty() {
        all &= cap.write_with_user_metadata;
        if cap.write_with_user_metadata {
            w = w.user_metadata(meta.user_metadata.clone());
        }
    }
    Ok((w.await.map_err(|e| bucket.error(e))?, all))
}
