//! A bucket's listing as the engine's virtual input: one entry per object,
//! listed page by page in key order (so memory does not grow with the
//! bucket), downloaded on the engine's workers only when the parent
//! snapshot does not already hold it, and checked again after download.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::{Buf, Bytes};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use opendal::{FuturesBytesStream, Lister, Metadata, Operator};
use serde::Serialize;
use serde_json::json;
use tokio::runtime::Handle;
use tresor_engine::backup::{VirtualEntry, VirtualFile, VirtualInput};
use tresor_engine::{Node, NodeKind, ObjectMeta, SourceInfo};

use super::{Bucket, KIND, names};
use crate::Result;

/// How many changed objects a snapshot names; more are only counted.
const CHANGES_NAMED: usize = 1000;
/// Objects whose content hash the snapshot records for drills: the first
/// few listed, then every thousandth, up to this many.
const SAMPLE: usize = 32;
const SAMPLE_FIRST: u64 = 8;
const SAMPLE_EVERY: u64 = 1000;

/// What a backup of a bucket found, recorded in the snapshot's consistency.
#[derive(Debug, Default, Serialize)]
pub struct ListingReport {
    pub listing_started: Option<DateTime<Utc>>,
    pub listing_ended: Option<DateTime<Utc>>,
    pub objects: u64,
    pub bytes: u64,
    /// Objects read from the bucket in this run (the rest came unchanged
    /// from the parent snapshot).
    pub downloaded: u64,
    pub downloaded_bytes: u64,
    /// Objects that changed or were deleted between the listing and the
    /// check after their download (the first [`CHANGES_NAMED`]).
    pub changed: Vec<Change>,
    pub changed_count: u64,
    /// Objects listed but gone when downloaded: left out of the snapshot.
    pub vanished: u64,
    /// Content hashes a drill compares restored files with.
    pub sample: Vec<Sampled>,
}

/// One object of the sample: where it lies in a restore (its names joined
/// by `/`), its size and the BLAKE3 of its bytes as backed up.
#[derive(Debug, Serialize)]
pub struct Sampled {
    pub key: String,
    pub path: String,
    pub size: u64,
    pub blake3: String,
}

#[derive(Debug, Serialize)]
pub struct Change {
    pub key: String,
    /// `changed` (another ETag, size or time) or `deleted`.
    pub change: &'static str,
}

impl ListingReport {
    fn sample(&mut self, key: &str, size: u64, hash: Option<&str>) {
        let Some(hash) = hash else { return };
        let names: Vec<String> = names::key_to_names(key).into_iter().map(|n| n.to_string_lossy().into_owned()).collect();
        self.sample.push(Sampled { key: key.to_string(), path: names.join("/"), size, blake3: hash.to_string() });
    }

    fn record(&mut self, key: &str, change: &'static str) {
        self.changed_count += 1;
        if self.changed.len() < CHANGES_NAMED {
            self.changed.push(Change { key: key.to_string(), change });
        }
    }
}

/// A bucket's objects under its prefix, streaming.
pub struct Listing {
    name: String,
    op: Operator,
    rt: Handle,
    lister: Lister,
    first: Option<opendal::Entry>,
    last_key: Option<String>,
    report: Arc<Mutex<ListingReport>>,
}

impl Listing {
    /// Start listing: the first page is fetched now, so a refused login,
    /// a missing bucket or a silent endpoint fail before any backup starts.
    pub async fn start(bucket: &Bucket) -> Result<Listing> {
        let started = Utc::now();
        let mut lister = bucket.op.lister_with("").recursive(true).await.map_err(|e| bucket.error(e))?;
        let first = lister.next().await.transpose().map_err(|e| bucket.error(e))?;
        let report = ListingReport { listing_started: Some(started), ..Default::default() };
        Ok(Listing {
            name: bucket.name(),
            op: bucket.op.clone(),
            rt: Handle::current(),
            lister,
            first,
            last_key: None,
            report: Arc::new(Mutex::new(report)),
        })
    }

    /// The engine's input, and what the snapshot records once it was read.
    pub fn into_input(self) -> (VirtualInput, impl FnOnce() -> SourceInfo + Send + 'static) {
        let (report, name) = (self.report.clone(), self.name.clone());
        let info = move || {
            let r = report.lock().expect("not poisoned");
            let consistency = match json!(&*r) {
                serde_json::Value::Object(map) => map.into_iter().collect(),
                _ => Default::default(),
            };
            SourceInfo { kind: KIND.into(), url: Some(name), consistency }
        };
        (VirtualInput { entries: Box::new(self), rename_clash: names::mark_clash }, info)
    }

    /// The report so far (the counters a caller prints).
    pub fn report(&self) -> Arc<Mutex<ListingReport>> {
        self.report.clone()
    }

    fn fail(&self, reason: impl ToString) -> tresor_engine::Error {
        tresor_engine::Error::Stream(crate::Error::failed(self.name.clone(), reason).into_io())
    }

    fn entry(&mut self, key: String, meta: &Metadata) -> VirtualEntry {
        let mut node = Node { kind: NodeKind::File, mode: 0o644, size: meta.content_length(), ..Node::default() };
        node.mtime = meta.last_modified().map_or(0, |t| nanos(t.into()));
        node.object = Some(Box::new(ObjectMeta { etag: meta.etag().map(String::from), ..ObjectMeta::default() }));
        let mut r = self.report.lock().expect("not poisoned");
        r.objects += 1;
        r.bytes += node.size;
        let sampled = (r.objects <= SAMPLE_FIRST || r.objects.is_multiple_of(SAMPLE_EVERY)) && r.sample.len() < SAMPLE;
        drop(r);
        let tap = Tap { rt: self.rt.clone(), hasher: Arc::new(Mutex::new(blake3::Hasher::new())), report: self.report.clone() };
        let content = Content { op: self.op.clone(), listed: node.clone(), addressable: addressable(&key), key: key.clone(), sampled, tap };
        VirtualEntry { path: names::key_to_names(&key), node, unchanged: same_object, content: Box::new(content) }
    }
}

impl Iterator for Listing {
    type Item = tresor_engine::Result<VirtualEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let next = match self.first.take() {
                Some(e) => Some(Ok(e)),
                None => self.rt.block_on(self.lister.next()),
            };
            let entry = match next {
                None => {
                    self.report.lock().expect("not poisoned").listing_ended = Some(Utc::now());
                    return None;
                }
                Some(Err(e)) => return Some(Err(self.fail(e))),
                Some(Ok(entry)) => entry,
            };
            let key = entry.path().to_string();
            if key.is_empty() || key == "/" {
                continue;
            }
            // A directory of the tree must be one run of the listing.
            if self.last_key.as_ref().is_some_and(|last| *last >= key) {
                return Some(Err(self.fail(format!("the listing is not in key order at {key:?}"))));
            }
            self.last_key = Some(key.clone());
            return Some(Ok(self.entry(key, entry.metadata())));
        }
    }
}

fn nanos(t: SystemTime) -> i64 {
    DateTime::<Utc>::from(t).timestamp_nanos_opt().unwrap_or(0)
}

/// OpenDAL trims blanks and leading `/`, collapses `//`, and HTTP clients
/// resolve `.` and `..`: such a key would read another object, so it is
/// reported instead.
fn addressable(key: &str) -> bool {
    let pieces: Vec<&str> = key.trim_end_matches('/').split('/').collect();
    key.trim() == key && pieces.iter().all(|p| !matches!(*p, "" | "." | ".."))
}

/// The parent snapshot's object is this one: same size and time, and the
/// same ETag where the listing gives one (s3s-fs and some others do not).
fn same_object(old: &Node, new: &Node) -> bool {
    let etag = |n: &Node| n.object.as_ref().and_then(|o| o.etag.clone());
    old.size == new.size && old.mtime == new.mtime && (etag(new).is_none() || etag(old) == etag(new))
}

/// What a download reports to: the runtime it blocks on, the object's
/// content hash and the run's report.
#[derive(Clone)]
struct Tap {
    rt: Handle,
    hasher: Arc<Mutex<blake3::Hasher>>,
    report: Arc<Mutex<ListingReport>>,
}

/// One object's content, downloaded on a worker.
struct Content {
    op: Operator,
    key: String,
    listed: Node,
    addressable: bool,
    sampled: bool,
    tap: Tap,
}

impl VirtualFile for Content {
    fn open(&mut self) -> std::io::Result<Box<dyn Read + Send>> {
        if !self.addressable {
            return Err(std::io::Error::other("a key with empty, `.` or `..` pieces or blanks at its ends cannot be read exactly"));
        }
        if self.key.ends_with('/') {
            // A "folder" marker: OpenDAL reads no key ending in `/`.
            return match self.listed.size {
                0 => Ok(Box::new(std::io::empty())),
                _ => Err(std::io::Error::other("an object whose key ends in / and holds data cannot be read")),
            };
        }
        let stream = self.tap.rt.block_on(async { self.op.reader_with(&self.key).chunk(8 << 20).await?.into_bytes_stream(..).await });
        let stream = stream.map_err(|e| match e.kind() {
            opendal::ErrorKind::NotFound => vanished(&self.tap.report),
            _ => std::io::Error::other(e),
        })?;
        Ok(Box::new(ObjectReader { stream, piece: Bytes::new(), tap: self.tap.clone() }))
    }

    fn reused(&mut self, old: &Node) {
        if self.sampled {
            let hash = old.object.as_ref().and_then(|o| o.blake3.as_deref());
            self.tap.report.lock().expect("not poisoned").sample(&self.key, old.size, hash);
        }
    }

    /// The check after download: the object's metadata as it is now (HEAD).
    fn finish(&mut self, node: &mut Node) -> std::io::Result<()> {
        let hash = self.tap.hasher.lock().expect("not poisoned").finalize().to_hex().to_string();
        let mut report = self.tap.report.lock().expect("not poisoned");
        report.downloaded += 1;
        report.downloaded_bytes += node.size;
        if self.sampled {
            report.sample(&self.key, node.size, Some(&hash));
        }
        if self.key.ends_with('/') {
            node.object.get_or_insert_default().blake3 = Some(hash);
            return Ok(());
        }
        drop(report);
        let stat = self.tap.rt.block_on(self.op.stat(&self.key));
        let mut report = self.tap.report.lock().expect("not poisoned");
        let meta = match stat {
            Ok(meta) => meta,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
                report.record(&self.key, "deleted");
                node.object.get_or_insert_default().blake3 = Some(hash);
                return Ok(());
            }
            Err(e) => return Err(std::io::Error::other(e)),
        };
        let now = Node { size: meta.content_length(), mtime: meta.last_modified().map_or(0, |t| nanos(t.into())), ..Node::default() };
        let listed_etag = self.listed.object.as_ref().and_then(|o| o.etag.as_deref());
        let changed = now.size != self.listed.size
            || now.mtime != self.listed.mtime
            || listed_etag.is_some_and(|l| Some(l) != meta.etag())
            || node.size != self.listed.size;
        if changed {
            report.record(&self.key, "changed");
        }
        node.object = Some(Box::new(object_meta(&meta, hash)));
        Ok(())
    }
}

fn object_meta(meta: &Metadata, hash: String) -> ObjectMeta {
    let text = |v: Option<&str>| v.map(String::from);
    ObjectMeta {
        etag: text(meta.etag()),
        content_type: text(meta.content_type()),
        content_encoding: text(meta.content_encoding()),
        content_disposition: text(meta.content_disposition()),
        cache_control: text(meta.cache_control()),
        user_metadata: meta.user_metadata().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default(),
        version_id: text(meta.version()),
        blake3: Some(hash),
    }
}

/// An object deleted between its listing and its download.
fn vanished(report: &Mutex<ListingReport>) -> std::io::Error {
    report.lock().expect("not poisoned").vanished += 1;
    std::io::Error::new(std::io::ErrorKind::NotFound, "deleted after it was listed: not in this snapshot")
}

/// An object's bytes as they arrive, hashed on the way.
struct ObjectReader {
    stream: FuturesBytesStream,
    piece: Bytes,
    tap: Tap,
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.piece.is_empty() {
            match self.tap.rt.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(piece)) => self.piece = piece,
                Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Err(vanished(&self.tap.report)),
                Some(Err(e)) => return Err(e),
            }
        }
        let n = out.len().min(self.piece.len());
        out[..n].copy_from_slice(&self.piece[..n]);
        self.piece.advance(n);
        self.tap.hasher.lock().expect("not poisoned").update(&out[..n]);
        Ok(n)
    }
}
