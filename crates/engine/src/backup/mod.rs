//! The backup pipeline.
//!
//! ```text
//! walker thread ──file jobs──▶ worker threads ──sealed packs──▶ uploader (async)
//!   lstat, excludes,             read, chunk, hash, dedup,        writes packs, then
//!   parent-tree reuse            compress, encrypt, pack          index checkpoints
//! ```
//! Directories finish bottom-up without the walker ever waiting: each one
//! counts its unfinished children, and whichever thread completes the last
//! child seals the directory's tree and reports to its parent. A file of
//! 16 MiB or more is only read and chunked on its worker; the backup's
//! packer threads pack its chunks (`pipeline.rs`). Memory is bounded by the
//! job queue, one open pack per thread and the upload queue.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, FixedOffset, Local};
use crossbeam_channel::{Receiver, Sender};
use futures::StreamExt;

use crate::bufpool::BufPool;
use crate::chunker::Chunker;
use crate::fsmeta::{self, NameCache};
use crate::index::{BlobKey, Index, IndexedPack, KeySet, Unindexed};
use crate::pack::{BlobKind, Compressor, FLAG_ZSTD, PackEntry, PackWriter, SealedPack};
use crate::session::Session;
use crate::snapshot::{FileError, Snapshot, SourceInfo, Summary};
use crate::tree::{Node, Tree};
use crate::walk::PathFilter;
use crate::{Error, Id, Repository, Result};

use pack_sink::PackSink;

mod pack_sink;
mod pipeline;
mod virtual_input;
mod walker;

pub use virtual_input::{VirtualEntry, VirtualFile, VirtualInput};
pub use walker::resolve_parents;

pub type SourceFn = Box<dyn FnOnce() -> std::result::Result<SourceInfo, String> + Send>;

#[derive(Default)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub tags: Vec<String>,
    pub host: Option<String>,
    pub excludes: Vec<String>,
    pub one_file_system: bool,
    pub parent: Option<Snapshot>,
    pub time: Option<DateTime<FixedOffset>>,
    pub threads: Option<usize>,
    /// Back up this stream as one file of the given name instead of paths.
    pub stdin: Option<(String, Box<dyn Read + Send>)>,
    /// Or back up these files, made by a source (Kubernetes objects as
    /// YAML), by relative path (`namespaces/shop/apps/Deployment/web.yaml`).
    pub generated: Option<BTreeMap<String, Vec<u8>>>,
    /// Or back up these entries as they come, their content read only
    /// when it changed since the parent snapshot (objects of a bucket).
    pub entries: Option<VirtualInput>,
    /// What the data came from, asked once it has all been read: a source
    /// learns parts of its consistency point while it streams, and may
    /// find then that what it gave was not consistent (no snapshot).
    pub source: Option<SourceFn>,
    /// Save a named snapshot (see [`Snapshot::name`]).
    pub name: Option<String>,
    pub progress: Option<Arc<Progress>>,
}

/// Live counters for progress display.
#[derive(Default, Debug)]
pub struct Progress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
}

#[derive(Default)]
struct Counters {
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unmodified: AtomicU64,
    dirs_new: AtomicU64,
    dirs_changed: AtomicU64,
    dirs_unmodified: AtomicU64,
    data_blobs: AtomicU64,
    tree_blobs: AtomicU64,
    data_added: AtomicU64,
    data_added_packed: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    fn summary(&self, seconds: f64, start: DateTime<FixedOffset>, end: DateTime<FixedOffset>) -> Summary {
        let ld = |a: &AtomicU64| a.load(Relaxed);
        Summary {
            files_new: ld(&self.files_new),
            files_changed: ld(&self.files_changed),
            files_unmodified: ld(&self.files_unmodified),
            dirs_new: ld(&self.dirs_new),
            dirs_changed: ld(&self.dirs_changed),
            dirs_unmodified: ld(&self.dirs_unmodified),
            data_blobs: ld(&self.data_blobs),
            tree_blobs: ld(&self.tree_blobs),
            data_added: ld(&self.data_added),
            data_added_packed: ld(&self.data_added_packed),
            total_files_processed: ld(&self.files),
            total_bytes_processed: ld(&self.bytes),
            total_duration: seconds,
            backup_start: Some(start),
            backup_end: Some(end),
        }
    }
}

/// State shared by the walker and the workers.
struct Shared {
    repo: Arc<Repository>,
    rt: tokio::runtime::Handle,
    chunker: Chunker,
    index: Arc<Index>,
    /// Blobs stored by this run, by the index's key (docs/ARCHITECTURE.md
    /// §9: why 16 bytes of an id are enough), half an id's memory each.
    inflight: Mutex<KeySet>,
    uploads: tokio::sync::mpsc::Sender<PackMsg>,
    /// Pack pieces' buffers, back from storage for the next pieces.
    pieces: Arc<BufPool>,
    counters: Counters,
    progress: Arc<Progress>,
    errors: Mutex<Vec<FileError>>,
    failure: Mutex<Option<Error>>,
    stop: AtomicBool,
    excludes: PathFilter,
    one_file_system: bool,
    /// How a virtual input renames a file that shares its name with a directory.
    rename_clash: Option<fn(&std::ffi::OsStr) -> std::ffi::OsString>,
    /// A source judges what was read once it is all read (an AOF directory,
    /// whose files grow while read and are whole to any length): no file
    /// is reported as changed while it was read.
    source_judges: bool,
}

/// Data packs go to storage in pieces of this size while they are filled,
/// so a thread holds a piece of a pack rather than all of it. Small enough,
/// we infer, to still be in the core's cache when the kernel copies it into
/// the page cache: with 4 MiB pieces a large-file backup spent 1.7 times the system
/// time and took 1.27 times as long (docs/BENCHMARKS.md).
const STREAM_PIECE: usize = 256 << 10;

/// Messages to the uploader: a tree pack to store (tree packs stay whole in
/// memory, they are small and go to the local cache too), or a data pack a
/// worker has streamed to storage, for the uploader to close (closing may
/// wait for a flush to disk or a multipart completion; workers go on).
enum PackMsg {
    Upload(SealedPack),
    Close(PackSink, IndexedPack),
}

/// A data pack being streamed to storage.
struct OpenPack {
    pack: PackWriter,
    sink: PackSink,
}

/// What each thread owns: its open packs and its compression context.
struct ThreadCtx {
    data: Option<OpenPack>,
    tree: Option<PackWriter>,
    compressor: Compressor,
    buf: Vec<u8>,
    zbuf: Vec<u8>,
    /// Where this thread sends a large file's chunks (`pipeline.rs`); none
    /// on the packer threads themselves.
    pack_jobs: Option<Sender<pipeline::PackJob>>,
}

enum Parent {
    Dir(Arc<Mutex<DirState>>, usize),
    Root(Sender<Id>),
}

struct DirState {
    node: Node,
    slots: Vec<Option<Node>>,
    /// Unfinished children, plus one while the walker is still listing.
    pending: usize,
    parent: Option<Parent>,
    old_subtree: Option<Id>,
    /// Children arrive in any order (a virtual input): sort them when
    /// sealing, and date the directory by its newest child.
    grow: bool,
}

struct FileJob {
    /// The file to read, or (for a virtual entry) the name its errors carry.
    path: PathBuf,
    node: Node,
    existed: bool,
    dir: Arc<Mutex<DirState>>,
    slot: usize,
    content: Option<Box<dyn VirtualFile>>,
}

impl Shared {
    fn fail(&self, e: Error) {
        self.stop.store(true, Relaxed);
        let mut f = self.failure.lock().expect("not poisoned");
        f.get_or_insert(e);
    }

    fn warn(&self, path: &Path, err: impl std::fmt::Display) {
        tracing::warn!("{}: {err}", path.display());
        self.errors.lock().expect("not poisoned").push(FileError { path: path.display().to_string(), error: err.to_string() });
    }

    /// Store a blob unless the repository or this run already has it.
    fn add_blob(&self, ctx: &mut ThreadCtx, kind: BlobKind, data: &[u8]) -> Result<Id> {
        let crypto = self.repo.crypto();
        let id = crypto.blob_id(data);
        if self.index.contains(&id) || !self.inflight.lock().expect("not poisoned").insert(BlobKey::of(&id)) {
            return Ok(id);
        }
        let mut zbuf = std::mem::take(&mut ctx.zbuf);
        let (flags, payload) = if ctx.compressor.compress(data, &mut zbuf) { (FLAG_ZSTD, zbuf.as_slice()) } else { (0, data) };
        let entry = match kind {
            BlobKind::Tree => self.add_tree_blob(ctx, id, data.len(), flags, payload)?,
            BlobKind::Data => self.add_data_blob(ctx, id, data.len(), flags, payload)?,
        };
        ctx.zbuf = zbuf;
        let c = &self.counters;
        if kind == BlobKind::Tree { &c.tree_blobs } else { &c.data_blobs }.fetch_add(1, Relaxed);
        c.data_added.fetch_add(data.len() as u64, Relaxed);
        c.data_added_packed.fetch_add(u64::from(entry.length), Relaxed);
        Ok(id)
    }

    fn add_tree_blob(&self, ctx: &mut ThreadCtx, id: Id, raw: usize, flags: u8, payload: &[u8]) -> Result<PackEntry> {
        let target = self.repo.config().pack_target(BlobKind::Tree);
        let writer = ctx.tree.get_or_insert_with(|| PackWriter::new(BlobKind::Tree, 1 << 20));
        let entry = writer.add(self.repo.crypto(), id, raw, flags, payload);
        if writer.len() >= target {
            let full = ctx.tree.take().expect("just filled");
            self.send(PackMsg::Upload(full.finish(self.repo.crypto())))?;
        }
        Ok(entry)
    }

    fn add_data_blob(&self, ctx: &mut ThreadCtx, id: Id, raw: usize, flags: u8, payload: &[u8]) -> Result<PackEntry> {
        if ctx.data.is_none() {
            let mut buf = self.pieces.take();
            buf.reserve(STREAM_PIECE + (1 << 20));
            let pack = PackWriter::with_buffer(BlobKind::Data, buf);
            let sink = PackSink::new(pack.id, self.rt.block_on(self.repo.pack_writer(&pack.id))?);
            ctx.data = Some(OpenPack { pack, sink });
        }
        let open = ctx.data.as_mut().expect("just opened");
        let entry = open.pack.add(self.repo.crypto(), id, raw, flags, payload);
        let result = if open.pack.len() >= self.repo.config().pack_target(BlobKind::Data) {
            let open = ctx.data.take().expect("open");
            self.close_data_pack(open)
        } else if open.pack.buffered() >= STREAM_PIECE {
            // Lent: the buffer returns to the pool when the writer lets go of
            // it, so pieces reuse pages already faulted in (`bufpool.rs`).
            let pack = &mut open.pack;
            open.sink.write(&self.rt, || self.pieces.lend(pack.drain_into(self.pieces.take())))
        } else {
            Ok(())
        };
        if result.is_err()
            && let Some(open) = ctx.data.take()
        {
            self.rt.block_on(open.sink.abort());
        }
        result.map(|()| entry)
    }

    /// Write the rest and the trailer; the uploader closes the pack and only
    /// then lets the index know it exists.
    fn close_data_pack(&self, open: OpenPack) -> Result<()> {
        let OpenPack { pack, mut sink } = open;
        let sealed = pack.finish(self.repo.crypto());
        if let Err(e) = sink.write(&self.rt, || self.pieces.lend(sealed.bytes)) {
            self.rt.block_on(sink.abort());
            return Err(e);
        }
        self.send(PackMsg::Close(sink, IndexedPack { id: sealed.id, size: sealed.size, entries: sealed.entries }))
    }

    fn send(&self, msg: PackMsg) -> Result<()> {
        self.uploads.blocking_send(msg).map_err(|_| Error::Interrupted)
    }

    fn flush(&self, ctx: &mut ThreadCtx) -> Result<()> {
        if let Some(open) = ctx.data.take() {
            self.close_data_pack(open)?;
        }
        if let Some(tree) = ctx.tree.take() {
            self.send(PackMsg::Upload(tree.finish(self.repo.crypto())))?;
        }
        Ok(())
    }

    /// Record a finished child; the thread that finishes a directory's last
    /// child seals that directory, and so on up to the root.
    fn fill(&self, ctx: &mut ThreadCtx, dir: &Arc<Mutex<DirState>>, slot: usize, node: Option<Node>) -> Result<()> {
        let done = {
            let mut d = dir.lock().expect("not poisoned");
            if slot < d.slots.len() {
                d.slots[slot] = node;
            }
            d.pending -= 1;
            d.pending == 0
        };
        if done { self.seal_dir(ctx, dir) } else { Ok(()) }
    }

    fn seal_dir(&self, ctx: &mut ThreadCtx, dir: &Arc<Mutex<DirState>>) -> Result<()> {
        let (mut node, mut tree, parent, old, grow) = {
            let mut d = dir.lock().expect("not poisoned");
            let tree = Tree { nodes: std::mem::take(&mut d.slots).into_iter().flatten().collect() };
            (std::mem::take(&mut d.node), tree, d.parent.take(), d.old_subtree, d.grow)
        };
        if grow {
            virtual_input::settle(&mut tree, &mut node, self.rename_clash);
        }
        let id = self.add_blob(ctx, BlobKind::Tree, &tree.encode())?;
        let c = &self.counters;
        match old {
            Some(o) if o == id => c.dirs_unmodified.fetch_add(1, Relaxed),
            Some(_) => c.dirs_changed.fetch_add(1, Relaxed),
            None => c.dirs_new.fetch_add(1, Relaxed),
        };
        node.subtree = Some(id);
        match parent.expect("a directory is sealed once") {
            Parent::Dir(p, slot) => self.fill(ctx, &p, slot, Some(node)),
            Parent::Root(tx) => {
                let _ = tx.send(id);
                Ok(())
            }
        }
    }

    fn process_file(&self, ctx: &mut ThreadCtx, job: FileJob) -> Result<()> {
        let FileJob { path, mut node, existed, dir, slot, content } = job;
        if let Some(content) = content {
            return self.process_virtual(ctx, FileJob { path, node, existed, dir, slot, content: None }, content);
        }
        let file = match fsmeta::open_for_backup(&path, &mut node) {
            Ok((f, replaced)) => {
                if replaced {
                    tracing::warn!("{}: replaced while the backup ran; the snapshot holds the file there now", path.display());
                }
                f
            }
            Err(e) => {
                self.warn(&path, e);
                return self.fill(ctx, &dir, slot, None);
            }
        };
        let seen = fsmeta::seen(&node);
        let read = self.chunk_into(ctx, &file, Some(node.size), &mut node);
        if read.is_ok()
            && !self.source_judges
            && let Ok(after) = file.metadata()
            && let Some(why) = fsmeta::changed_while_read(seen, &after)
        {
            tracing::warn!("{}: {why}", path.display());
        }
        self.settle_file(ctx, read, FileJob { path, node, existed, dir, slot, content: None })
    }

    /// A virtual entry's content is opened here, on a worker, so that
    /// downloads run in parallel; what its source says once it was read
    /// completes the node.
    fn process_virtual(&self, ctx: &mut ThreadCtx, mut job: FileJob, mut content: Box<dyn VirtualFile>) -> Result<()> {
        let read = match content.open() {
            Ok(reader) => self.chunk_into(ctx, reader, Some(job.node.size), &mut job.node),
            Err(e) => Err(e.into()),
        };
        let read = read.and_then(|()| content.finish(&mut job.node).map_err(Error::from));
        self.settle_file(ctx, read, job)
    }

    /// A file that could not be read is a warning and a missing node.
    fn settle_file(&self, ctx: &mut ThreadCtx, read: Result<()>, job: FileJob) -> Result<()> {
        let FileJob { path, node, existed, dir, slot, .. } = job;
        match read {
            Ok(()) => {
                let c = &self.counters;
                if existed { &c.files_changed } else { &c.files_new }.fetch_add(1, Relaxed);
                self.fill(ctx, &dir, slot, Some(node))
            }
            Err(Error::Io { source, .. }) => {
                self.warn(&path, source);
                self.fill(ctx, &dir, slot, None)
            }
            Err(e) => Err(e),
        }
    }

    /// A file reused from the parent snapshot, unread.
    fn count_unmodified(&self, size: u64) {
        let c = &self.counters;
        c.files_unmodified.fetch_add(1, Relaxed);
        c.files.fetch_add(1, Relaxed);
        c.bytes.fetch_add(size, Relaxed);
        self.progress.files.fetch_add(1, Relaxed);
        self.progress.bytes.fetch_add(size, Relaxed);
    }

    fn chunk_into(&self, ctx: &mut ThreadCtx, reader: impl Read, size_hint: Option<u64>, node: &mut Node) -> Result<()> {
        let pipelined = ctx.pack_jobs.as_ref().filter(|_| size_hint.is_none_or(|s| s >= pipeline::PIPELINE_MIN));
        let result = if let Some(jobs) = pipelined {
            self.chunk_pipelined(jobs, reader)
        } else {
            let mut buf = std::mem::take(&mut ctx.buf);
            let mut content = Vec::new();
            let read = self.chunker.chunk_stream(reader, size_hint, &mut buf, |chunk: &[u8]| {
                content.push(self.add_blob(ctx, BlobKind::Data, chunk)?);
                self.progress.bytes.fetch_add(chunk.len() as u64, Relaxed);
                Ok::<_, Error>(())
            });
            ctx.buf = buf;
            read.map(|total| (total, content))
        };
        let (total, content) = result.map_err(|e| match e {
            Error::Io { source, .. } => Error::io(PathBuf::new(), source),
            other => other,
        })?;
        node.size = total;
        node.content = content;
        self.counters.files.fetch_add(1, Relaxed);
        self.counters.bytes.fetch_add(total, Relaxed);
        self.progress.files.fetch_add(1, Relaxed);
        Ok(())
    }
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Error {
        Error::Io { path: PathBuf::new(), source }
    }
}

impl ThreadCtx {
    fn new(level: i32, pack_jobs: Option<Sender<pipeline::PackJob>>) -> Result<ThreadCtx> {
        let compressor = Compressor::new(level).map_err(|e| Error::Invalid(format!("zstd level {level}: {e}")))?;
        Ok(ThreadCtx { data: None, tree: None, compressor, buf: Vec::new(), zbuf: Vec::new(), pack_jobs })
    }
}

fn worker(shared: &Shared, jobs: Receiver<FileJob>, pack_jobs: Sender<pipeline::PackJob>) {
    let mut ctx = match ThreadCtx::new(shared.repo.config().compression, Some(pack_jobs)) {
        Ok(c) => c,
        Err(e) => return shared.fail(e),
    };
    for job in jobs {
        if shared.stop.load(Relaxed) {
            continue;
        }
        if let Err(e) = shared.process_file(&mut ctx, job) {
            shared.fail(e);
        }
    }
    if let Err(e) = shared.flush(&mut ctx) {
        shared.fail(e);
    }
}

/// Back up `opts.paths` (or the stdin stream) and save a snapshot.
pub async fn backup(repo: Arc<Repository>, opts: BackupOptions) -> Result<Snapshot> {
    // The session comes first: a prune that marks packs after this point
    // must wait for this backup, and one that marked them before is seen in
    // the writer index, which leaves marked packs out.
    let session = Session::start(repo.clone(), "backup").await?;
    let result = run(repo.clone(), opts, &session).await;
    let ended = session.end().await;
    repo.reset_index().await;
    let snap = result?;
    ended?;
    Ok(snap)
}

async fn run(repo: Arc<Repository>, mut opts: BackupOptions, session: &Session) -> Result<Snapshot> {
    let started = Instant::now();
    let start_time = Local::now().fixed_offset();
    walker::resolve_parents(&mut opts.paths)?;
    let stream = opts.stdin.as_ref().map(|(name, _)| name.clone());
    let (tree, counters, errors) = archive_and_upload(&repo, &mut opts).await?;
    let summary = counters.summary(started.elapsed().as_secs_f64(), start_time, Local::now().fixed_offset());
    let mut snap = snapshot_of(opts, tree, start_time, summary, errors)?;
    // A stream's name is what tells its backups from another stream's: retention groups by it.
    if snap.source.kind == "stdin" && snap.source.url.is_none() {
        snap.source.url = stream.map(|name| format!("stdin:{name}"));
    }
    commit(&repo, session, &mut snap).await?;
    Ok(snap)
}

/// Read the input (taken out of `opts`: what it reads and the progress it
/// reports) into packs and trees, stored by the time this returns: the
/// root tree, the counts and the files that could not be read.
async fn archive_and_upload(repo: &Arc<Repository>, opts: &mut BackupOptions) -> Result<(Id, Counters, Vec<FileError>)> {
    let index = repo.writer_index().await?;
    // Queued messages are small (closes, and tree packs of a few MiB), so
    // several closes (each an fsync or a multipart completion) can overlap.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let concurrency = 8;
    let uploader = tokio::spawn(upload_packs(repo.clone(), rx, concurrency));
    let entries = opts.entries.take();
    let threads = opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1);
    let packers = pipeline::packer_count(threads);
    let shared = Arc::new(Shared {
        chunker: Chunker::new(repo.crypto().gear_seed(), repo.config().chunker),
        repo: repo.clone(),
        rt: tokio::runtime::Handle::current(),
        index,
        inflight: Mutex::new(KeySet::default()),
        uploads: tx,
        counters: Counters::default(),
        progress: opts.progress.take().unwrap_or_default(),
        errors: Mutex::new(Vec::new()),
        failure: Mutex::new(None),
        stop: AtomicBool::new(false),
        excludes: PathFilter::new(&opts.excludes)?,
        one_file_system: opts.one_file_system,
        rename_clash: entries.as_ref().map(|e| e.rename_clash),
        source_judges: opts.source.is_some(),
        // One spare piece for each open pack (the workers' and the
        // packers'): the one its writer lets go of at the next write.
        pieces: BufPool::new(threads + packers),
    });
    let parent_tree = opts.parent.as_ref().map(|p| p.tree);
    let job = {
        let shared = shared.clone();
        let paths = opts.paths.clone();
        let input = Input::chosen(opts.stdin.take(), opts.generated.take(), entries);
        tokio::task::spawn_blocking(move || archive(&shared, &paths, input, parent_tree, threads, packers))
    };
    let walked = job.await.map_err(|e| Error::Invalid(format!("backup thread failed: {e}")))?;
    let shared = Arc::into_inner(shared).expect("the pipeline threads have ended");
    let Shared { counters, errors, uploads, .. } = shared;
    drop(uploads);
    let uploaded = uploader.await.map_err(|e| Error::Invalid(format!("upload task failed: {e}")))?;
    // An upload error explains an interrupted pipeline, so it is reported first.
    uploaded?;
    Ok((walked?, counters, errors.into_inner().expect("not poisoned")))
}

/// The snapshot of a backup whose root tree is stored, described by the
/// rest of its options; its id is given when it is stored.
/// Tags as restic takes them: `--tag a,b` is two tags (one "a,b" no
/// `--tag` or `--keep-tag` filter could match, as they split at commas).
fn split_tags(given: &[String]) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for t in given.iter().flat_map(|t| t.split(',')).map(str::trim).filter(|t| !t.is_empty()) {
        if !tags.iter().any(|x| x == t) {
            tags.push(t.to_string());
        }
    }
    tags
}

fn snapshot_of(
    opts: BackupOptions,
    tree: Id,
    start_time: DateTime<FixedOffset>,
    summary: Summary,
    errors: Vec<FileError>,
) -> Result<Snapshot> {
    let BackupOptions { paths, tags, host, excludes, parent, time, source, name, .. } = opts;
    let stdin_name = paths.is_empty();
    let source = source.map(|f| f().map_err(Error::Invalid)).transpose()?;
    Ok(Snapshot {
        id: Id::default(),
        time: time.unwrap_or(start_time),
        tree,
        paths: paths.iter().map(|p| p.display().to_string()).collect(),
        hostname: host.unwrap_or_else(fsmeta::hostname),
        username: fsmeta::username(),
        uid: fsmeta::process_ids().0,
        gid: fsmeta::process_ids().1,
        tags: split_tags(&tags),
        name,
        source: source.unwrap_or_else(|| SourceInfo { kind: if stdin_name { "stdin" } else { "files" }.into(), ..Default::default() }),
        parent: parent.map(|p| p.id),
        original: None,
        evidence: None,
        excludes,
        program_version: concat!("tresor ", env!("CARGO_PKG_VERSION")).into(),
        summary: Some(summary),
        errors,
    })
}

/// Store the snapshot, under a live lease only. A lease that lapsed while
/// the snapshot was being stored may have let a prune sweep data it needs:
/// the snapshot is withdrawn again.
pub(crate) async fn commit(repo: &Repository, session: &Session, snap: &mut Snapshot) -> Result<()> {
    session.check_lease().await?;
    snap.id = match &snap.name {
        Some(name) => repo.save_named_snapshot(name, snap).await?,
        None => repo.save_snapshot(snap).await?,
    };
    if let Err(e) = session.check_lease().await {
        repo.delete(&crate::objects::Kind::Snapshot.path(&snap.id)).await?;
        return Err(e);
    }
    Ok(())
}

/// What a backup reads: paths, one stream, or files a source generated.
enum Input {
    Paths,
    Stream(String, Box<dyn Read + Send>),
    Generated(BTreeMap<String, Vec<u8>>),
    Virtual(VirtualInput),
}

impl Input {
    /// The stream if there is one, else generated files, else virtual
    /// entries, else the paths.
    fn chosen(
        stdin: Option<(String, Box<dyn Read + Send>)>,
        generated: Option<BTreeMap<String, Vec<u8>>>,
        entries: Option<VirtualInput>,
    ) -> Input {
        match (stdin, generated, entries) {
            (Some((name, reader)), _, _) => Input::Stream(name, reader),
            (None, Some(files), _) => Input::Generated(files),
            (None, None, Some(entries)) => Input::Virtual(entries),
            (None, None, None) => Input::Paths,
        }
    }
}

/// Run the walker on this thread and the workers and packers beside it;
/// the root tree id.
fn archive(shared: &Shared, paths: &[PathBuf], input: Input, parent_tree: Option<Id>, workers: usize, packers: usize) -> Result<Id> {
    let (job_tx, job_rx) = crossbeam_channel::bounded::<FileJob>(256);
    let (root_tx, root_rx) = crossbeam_channel::bounded::<Id>(1);
    // The packers end when the last sender, a worker's or the walker's, is
    // dropped with its thread's context.
    let (pack_tx, pack_rx) = crossbeam_channel::bounded::<pipeline::PackJob>(packers);
    std::thread::scope(|s| {
        for _ in 0..packers {
            let rx = pack_rx.clone();
            // Named, so that a profile or a thread listing tells packing
            // from reading.
            std::thread::Builder::new()
                .name(pipeline::PACKER_THREAD.into())
                .spawn_scoped(s, move || pipeline::packer(shared, rx))
                .expect("a packer thread can be started");
        }
        drop(pack_rx);
        for _ in 0..workers {
            let (rx, pack_tx) = (job_rx.clone(), pack_tx.clone());
            s.spawn(move || worker(shared, rx, pack_tx));
        }
        drop(job_rx);
        let run = || -> Result<()> {
            let ctx = ThreadCtx::new(shared.repo.config().compression, Some(pack_tx))?;
            let mut w = walker::Walker { shared, ctx, jobs: job_tx.clone(), names: NameCache::default() };
            let walked = match input {
                Input::Stream(name, reader) => w.stream(&name, reader, Parent::Root(root_tx)),
                Input::Generated(files) => w.generated(&walker::generated_tree(&files), Parent::Root(root_tx)),
                Input::Virtual(entries) => w.entries(entries, parent_tree, Parent::Root(root_tx)),
                Input::Paths => w.walk_root(&walker::layout(paths)?, parent_tree, Parent::Root(root_tx)),
            };
            let flushed = shared.flush(&mut w.ctx);
            walked.and(flushed)
        };
        if let Err(e) = run() {
            shared.fail(e);
        }
        drop(job_tx);
    });
    if let Some(e) = shared.failure.lock().expect("not poisoned").take() {
        return Err(e);
    }
    root_rx.try_recv().map_err(|_| Error::Interrupted)
}

/// Upload sealed packs as they come and write an index file whenever one
/// is due ([`Unindexed::due`]) and at the end. Index files only ever name
/// packs whose upload has completed.
async fn upload_packs(repo: Arc<Repository>, rx: tokio::sync::mpsc::Receiver<PackMsg>, concurrency: usize) -> Result<Vec<Id>> {
    let packs = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) });
    let repo = &repo;
    let store = |msg| async move {
        match msg {
            PackMsg::Upload(pack) => repo.save_pack(pack).await,
            PackMsg::Close(sink, done) => sink.close().await.map(|()| done),
        }
    };
    let mut uploads = std::pin::pin!(packs.map(store).buffer_unordered(concurrency));
    let (mut pending, mut files) = (Unindexed::default(), Vec::new());
    while let Some(done) = uploads.next().await {
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                // Index what did arrive, so a retried backup can reuse it.
                if !pending.is_empty() {
                    let _ = repo.save_index(&pending.take()).await;
                }
                return Err(e);
            }
        };
        pending.push(done);
        if pending.due() {
            files.push(repo.save_index(&pending.take()).await?);
        }
    }
    if !pending.is_empty() {
        files.push(repo.save_index(&pending.take()).await?);
    }
    Ok(files)
}
