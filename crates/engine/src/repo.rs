//! The repository: opening, unlocking, and reading and writing its objects.
//!
//! Where each object lives is [`crate::objects`]' (details in docs/FORMAT.md).
//! Every object is written once under a fresh name and never modified.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use tresor_storage::{Location, Operator, StorageOptions};

use crate::cache::Cache;
use crate::config::Config;
use crate::crypto::{Aead, Crypto, MasterKey};
use crate::index::{IndexedPack, MemoryEstimate};
use crate::objects::{Kind, list_names, list_with_size, unless_gone};
use crate::pack::{BlobKind, PackEntry, SealedPack, open_blob, read_trailer};
use crate::select::SnapshotFilter;
use crate::slots::{KdfParams, KeyFile, Password};
use crate::snapshot::Snapshot;
use crate::tree::Tree;
use crate::{Error, Id, IdSet, Result};

mod handoff;
#[cfg(test)]
pub(crate) mod interleave;
mod reading;

pub use reading::Mark;
pub(crate) use reading::RELOCATIONS;

const CONFIG: &str = Kind::Config.dir();

/// How to reach and unlock a repository.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub password: Password,
    /// Root of the local cache; `None` disables it.
    pub cache_root: Option<PathBuf>,
    pub storage: StorageOptions,
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub open: OpenOptions,
    pub aead: Aead,
    pub compression: i32,
    pub kdf: KdfParams,
    pub pack_size: Option<u32>,
    /// Repository settings beyond the defaults (session timeout,
    /// append-only, Object Lock).
    pub settings: Settings,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    pub session_timeout_secs: Option<u64>,
    pub append_only: bool,
    pub object_lock_secs: Option<u64>,
}

/// How many tree packs stay in memory, least recently used out first. A
/// walk reads trees in about the order a backup wrote them, so it reads
/// each pack about once with two default (16 MiB) packs kept; a larger cap
/// only grows peak memory: at 256 MiB it was most of what `check` and prune
/// held beyond the index (docs/ARCHITECTURE.md §9).
const TREE_PACKS_IN_MEMORY: usize = 64;
const TREE_PACK_BYTES_IN_MEMORY: usize = 32 << 20;

pub struct Repository {
    op: Operator,
    /// The operator without the append-only guard: only for switching the
    /// mode itself.
    raw: Operator,
    location: Location,
    config: Config,
    crypto: Arc<Crypto>,
    master: MasterKey,
    key_id: Id,
    cache: Option<Cache>,
    tree_packs: Mutex<TreePacks>,
    /// Held while a tree pack is read: parallel tree loads that miss the
    /// same pack wait for one read instead of each holding a copy.
    tree_pack_read: tokio::sync::Mutex<()>,
    index: tokio::sync::Mutex<Option<reading::Reading>>,
    /// Snapshots already read and opened. A snapshot file is named by the
    /// hash of what it holds, or by its name for a piece of an archive that
    /// is stored once and never replaced, so a long-lived handle (the
    /// daemon's, which lists a WAL archive's thousands of snapshots every
    /// few seconds) reads each only once; the listing stays fresh, so a
    /// deleted snapshot is never served. `check` reads past this.
    opened: Mutex<HashMap<Id, Snapshot>>,
    /// Snapshot files the newest listing found damaged, and how.
    unreadable: Mutex<BTreeMap<Id, String>>,
    /// Bytes commands may use, 0 for no limit (`index/budget.rs`).
    memory_limit: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").field("location", &self.location).field("id", &self.config.id).finish()
    }
}

pub(crate) fn storage_err<'a>(op: &'static str, path: &'a str) -> impl FnOnce(opendal::Error) -> Error + 'a {
    move |source| Error::storage(op, path, source)
}

impl Repository {
    pub async fn init(location: &Location, opts: &InitOptions) -> Result<Repository> {
        if opts.open.password.is_empty() {
            return Err(Error::Invalid("refusing an empty password".into()));
        }
        let op = tresor_storage::open(location, &opts.open.storage)?;
        if op.exists(CONFIG).await.map_err(storage_err("stat", CONFIG))? {
            return Err(Error::AlreadyExists(location.to_string()));
        }
        let master = MasterKey::generate();
        let mut config = Config::new(opts.aead, opts.compression);
        if let Some(size) = opts.pack_size {
            config.pack_size = size;
        }
        if let Some(t) = opts.settings.session_timeout_secs {
            config.session_timeout_secs = t;
        }
        config.append_only = opts.settings.append_only;
        config.object_lock_secs = opts.settings.object_lock_secs;
        let crypto = Crypto::new(&master, opts.aead);
        config.sign(&crypto);
        let (key_id, key) = KeyFile::create(&master, &opts.open.password, opts.kdf, "initial key")?;
        let key_path = Kind::Key.path(&key_id);
        let key_json = serde_json::to_vec_pretty(&key).expect("key serializes");
        op.write(&key_path, key_json).await.map_err(storage_err("write", &key_path))?;
        // The config goes last: its presence is what makes this a repository.
        op.write(CONFIG, config.to_bytes()).await.map_err(storage_err("write", CONFIG))?;
        Ok(Self::assemble(guarded(op), location.clone(), config, (master, crypto), key_id, &opts.open))
    }

    fn assemble(
        ops: (Operator, Operator),
        location: Location,
        config: Config,
        keys: (MasterKey, Crypto),
        key_id: Id,
        opts: &OpenOptions,
    ) -> Repository {
        let (master, crypto) = keys;
        let (raw, op) = ops;
        let op = if config.append_only { op.layer(tresor_storage::AppendOnlyLayer) } else { op };
        let cache = opts.cache_root.as_ref().and_then(|root| Cache::new(root, &config.id));
        Repository {
            op,
            raw,
            location,
            config,
            crypto: Arc::new(crypto),
            master,
            key_id,
            cache,
            tree_packs: Mutex::new(TreePacks::default()),
            tree_pack_read: tokio::sync::Mutex::new(()),
            index: tokio::sync::Mutex::new(None),
            opened: Mutex::new(HashMap::new()),
            unreadable: Mutex::default(),
            memory_limit: Default::default(),
        }
    }

    pub async fn open(location: &Location, opts: &OpenOptions) -> Result<Repository> {
        let (op, config) = Self::locate(location, &opts.storage).await?;
        let mut tampered = None;
        let found = crate::slots::unlock(&op, &opts.password, |master| match config.verify(&Crypto::new(master, config.aead)) {
            Ok(()) => true,
            Err(e) => {
                tampered = Some(e);
                false
            }
        })
        .await?;
        if found.listed.is_empty() {
            return Err(Error::corrupt("repository", location, "it has no key files"));
        }
        match found.opened {
            Some((id, master)) => {
                let crypto = Crypto::new(&master, config.aead);
                Ok(Self::assemble(guarded(op), location.clone(), config, (master, crypto), id, opts))
            }
            None => Err(tampered.unwrap_or(Error::WrongPassword { slots: found.listed, damaged: found.damaged })),
        }
    }

    /// Is there a repository of a format this build reads? Answered without
    /// a password, so a person is not asked for one in vain.
    pub async fn probe(location: &Location, storage: &StorageOptions) -> Result<Config> {
        Ok(Self::locate(location, storage).await?.1)
    }

    /// The ids of the repository's key slots, sorted, from one listing and
    /// without a password: whoever remembers that a password was refused
    /// (and the slots [`Error::WrongPassword`] named) sees a slot added
    /// (`key add`) or replaced without an Argon2id run.
    pub async fn key_slots(location: &Location, storage: &StorageOptions) -> Result<Vec<Id>> {
        crate::slots::slot_ids(&Self::locate(location, storage).await?.0).await
    }

    /// The operator and the checked config of an existing repository.
    /// OpenDAL's fs backend creates its root: look before it can, so that
    /// opening a mistyped path neither succeeds nor leaves a directory.
    async fn locate(location: &Location, storage: &StorageOptions) -> Result<(Operator, Config)> {
        // A path that cannot be looked at (permissions, a stale mount) is
        // not a missing repository, which `tresor init` would mend.
        if let Some(p) = location.local_path() {
            let config = p.join(CONFIG);
            match config.try_exists() {
                Ok(true) => {}
                Ok(false) => return Err(Self::missing(location)),
                // A file where the repository should be is no repository; a
                // file further up the path is a path that cannot be looked at.
                Err(e) if e.kind() == std::io::ErrorKind::NotADirectory && p.exists() && !p.is_dir() => {
                    return Err(Self::missing(location));
                }
                Err(e) => return Err(Error::io(&config, e)),
            }
        }
        let op = tresor_storage::open(location, storage)?;
        let config = Self::read_config(&op, location).await?;
        Ok((op, config))
    }

    async fn read_config(op: &Operator, location: &Location) -> Result<Config> {
        match op.read(CONFIG).await {
            Ok(buf) => Config::parse(&location.to_string(), &buf.to_vec()),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Err(Self::missing(location)),
            Err(e) => Err(storage_err("read", CONFIG)(e)),
        }
    }

    fn missing(location: &Location) -> Error {
        match location.local_path() {
            Some(p) if p.is_dir() => Error::NotARepository {
                location: location.to_string(),
                reason: "the directory has no tresor config (run `tresor init` first)".into(),
            },
            Some(p) if p.exists() => Error::NotARepository { location: location.to_string(), reason: "it is not a directory".into() },
            _ => Error::NoRepository { location: location.to_string(), reason: "nothing is there (run `tresor init` first)".into() },
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn crypto(&self) -> &Arc<Crypto> {
        &self.crypto
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn operator(&self) -> &Operator {
        &self.op
    }

    pub fn key_id(&self) -> Id {
        self.key_id
    }

    /// This handle with another writer's step run at a point of its
    /// storage traffic, for tests of races.
    #[cfg(test)]
    pub(crate) fn interleaved(mut self, hook: &interleave::Interleave) -> Repository {
        self.op = self.op.layer(hook.clone());
        self
    }

    /// The master secret, for wrapping it in new key slots.
    pub(crate) fn master(&self) -> &MasterKey {
        &self.master
    }
}

fn guarded(op: Operator) -> (Operator, Operator) {
    (op.clone(), op)
}

impl Repository {
    /// Switch append-only mode by rewriting the config (signed again).
    /// Callers must have had the password confirmed: this is the one escape
    /// from the mode.
    pub async fn set_append_only(&self, on: bool) -> Result<()> {
        let mut config = self.config.clone();
        config.append_only = on;
        config.sign(&self.crypto);
        self.raw.write(CONFIG, config.to_bytes()).await.map_err(storage_err("write", CONFIG))?;
        Ok(())
    }

    /// Whether `password` opens this repository (any key slot).
    pub async fn confirms(&self, password: &Password) -> Result<bool> {
        Ok(crate::slots::unlock(&self.op, password, |m| *m.0 == *self.master.0).await?.opened.is_some())
    }
}

impl Repository {
    // ---- raw objects ------------------------------------------------------

    pub async fn read(&self, path: &str) -> Result<Vec<u8>> {
        Ok(self.op.read(path).await.map_err(storage_err("read", path))?.to_vec())
    }

    /// A byte range of an object, contiguous.
    pub async fn read_range(&self, path: &str, range: Range<u64>) -> Result<bytes::Bytes> {
        Ok(self.read_range_parts(path, range).await?.to_bytes())
    }

    /// A byte range as the backend delivered it, possibly in several pieces,
    /// for readers that can avoid gluing them together.
    pub async fn read_range_parts(&self, path: &str, range: Range<u64>) -> Result<opendal::Buffer> {
        self.op.read_with(path).range(range).await.map_err(storage_err("read", path))
    }

    pub async fn write(&self, path: &str, bytes: Vec<u8>) -> Result<()> {
        self.op.write(path, bytes).await.map_err(storage_err("write", path))?;
        Ok(())
    }

    /// Delete an object unless the storage refuses because it is locked
    /// (S3 Object Lock); whether it is gone.
    pub async fn delete_unless_locked(&self, path: &str) -> Result<bool> {
        match self.delete(path).await {
            Err(Error::Storage { source, .. }) if source.kind() == opendal::ErrorKind::PermissionDenied && !self.config.append_only => {
                Ok(false)
            }
            r => r.map(|()| true),
        }
    }

    /// Make sure an object is gone: one already deleted (by a concurrent
    /// forget or prune) is not an error. Its cached copy goes first (other
    /// hosts drop theirs at their next listing or index load).
    pub async fn delete(&self, path: &str) -> Result<()> {
        if let Some(c) = &self.cache {
            c.remove(path);
        }
        match self.op.delete(path).await {
            Err(e) if e.kind() != opendal::ErrorKind::NotFound => Err(storage_err("delete", path)(e)),
            _ => Ok(()),
        }
    }

    pub async fn size_of(&self, path: &str) -> Result<u64> {
        Ok(self.op.stat(path).await.map_err(storage_err("stat", path))?.content_length())
    }

    // ---- whole encrypted files --------------------------------------------

    /// Encrypt and store `plaintext` as a `kind` object under a fresh random id.
    pub async fn save_file(&self, kind: Kind, plaintext: &[u8]) -> Result<Id> {
        let id = Id::random();
        let sealed = self.crypto.seal_file(kind.label(), &id, plaintext);
        let path = kind.path(&id);
        if let Some(c) = &self.cache {
            c.put(&path, &sealed);
        }
        self.write(&path, sealed).await?;
        Ok(id)
    }

    pub async fn load_file(&self, kind: Kind, id: &Id) -> Result<Vec<u8>> {
        let path = kind.path(id);
        if let Some(bytes) = self.cache.as_ref().and_then(|c| c.get(&path))
            && let Ok(plain) = self.crypto.open_file(kind.label(), id, &bytes)
        {
            return Ok(plain);
        }
        let bytes = self.read(&path).await?;
        let plain = self.crypto.open_file(kind.label(), id, &bytes)?;
        if let Some(c) = &self.cache {
            c.put(&path, &bytes);
        }
        Ok(plain)
    }

    /// Read a file from storage, bypassing the cache: what `check` must judge.
    pub async fn load_file_uncached(&self, kind: Kind, id: &Id) -> Result<Vec<u8>> {
        let bytes = self.read(&kind.path(id)).await?;
        self.crypto.open_file(kind.label(), id, &bytes)
    }

    /// Seal `plaintext` as a `kind` object bound to `id` and store it as
    /// `name` (for objects named otherwise than by their id: evidence entries).
    pub(crate) async fn save_sealed_at(&self, kind: Kind, name: &str, id: &Id, plaintext: &[u8]) -> Result<()> {
        self.write(&kind.named(name), self.crypto.seal_file(kind.label(), id, plaintext)).await
    }

    /// Read and open the `kind` object `name`, bound to `id`, bypassing the cache.
    pub(crate) async fn load_sealed_at(&self, kind: Kind, name: &str, id: &Id) -> Result<Vec<u8>> {
        let bytes = self.read(&kind.named(name)).await?;
        self.crypto.open_file(kind.label(), id, &bytes)
    }

    /// Ids of the objects of `kind`.
    pub async fn list_ids(&self, kind: Kind) -> Result<Vec<Id>> {
        let names = list_names(&self.op, kind).await?;
        if let Some(c) = &self.cache {
            let listed: HashSet<&str> = names.iter().map(String::as_str).collect();
            c.retain(kind.dir(), |name| listed.contains(name));
        }
        Ok(names.iter().filter_map(|n| n.parse().ok()).collect())
    }

    /// The storage's modification time of an object: the one clock that
    /// every writer of a repository shares (sessions, marks, key claims).
    pub async fn stored_time(&self, path: &str) -> Result<chrono::DateTime<chrono::Utc>> {
        let meta = self.op.stat(path).await.map_err(storage_err("stat", path))?;
        let t = meta.last_modified().ok_or_else(|| Error::Invalid(format!("the storage reports no modification time for {path}")))?;
        Ok(chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::from(t)))
    }

    // ---- packs and blobs --------------------------------------------------

    /// Upload a sealed pack; what the index must record about it.
    pub async fn save_pack(&self, pack: SealedPack) -> Result<IndexedPack> {
        let path = Kind::Pack.path(&pack.id);
        if pack.kind == BlobKind::Tree
            && let Some(c) = &self.cache
        {
            c.put(&path, &pack.bytes);
        }
        let size = pack.bytes.len() as u64;
        self.op.write(&path, pack.bytes).await.map_err(storage_err("write", &path))?;
        Ok(IndexedPack { id: pack.id, size, entries: pack.entries })
    }

    /// A streaming writer for a pack. Nothing is visible under the pack's
    /// name before `close` succeeds (a renamed temp file on fs, a completed
    /// multipart upload on object stores).
    pub async fn pack_writer(&self, id: &Id) -> Result<opendal::Writer> {
        let path = Kind::Pack.path(id);
        let w = self.op.writer_with(&path);
        let w = if self.location.local_path().is_some() { w.await } else { w.chunk(8 << 20).await };
        w.map_err(storage_err("write", &path))
    }

    /// Tree packs are read whole and kept: a walk touches many small trees
    /// from few packs. `None` for a pack that was held and let go: a walk
    /// in another order than the packs were written (a backup's parallel
    /// lookups in its parent) would read every pack whole again at each
    /// turn, so its trees are read one by one from then on.
    async fn tree_pack(&self, id: &Id) -> Result<Option<Arc<Vec<u8>>>> {
        if let Some(p) = self.tree_packs.lock().expect("not poisoned").get(id) {
            return Ok(Some(p));
        }
        let _reading = self.tree_pack_read.lock().await;
        {
            let mut held = self.tree_packs.lock().expect("not poisoned");
            if let Some(p) = held.get(id) {
                return Ok(Some(p));
            }
            if held.let_go.contains(id) {
                return Ok(None);
            }
        }
        let path = Kind::Pack.path(id);
        let bytes =
            match self.cache.as_ref().and_then(|c| c.get(&path)).filter(|b| read_trailer(&self.crypto, id, b, b.len() as u64).is_ok()) {
                Some(b) => b,
                None => {
                    let b = self.read(&path).await?;
                    if let Some(c) = &self.cache {
                        c.put(&path, &b);
                    }
                    b
                }
            };
        let bytes = Arc::new(bytes);
        self.tree_packs.lock().expect("not poisoned").insert(*id, bytes.clone());
        Ok(Some(bytes))
    }

    /// A blob at a known place, for callers with an index of their own.
    pub async fn load_blob_at(&self, pack: Id, e: PackEntry) -> Result<Vec<u8>> {
        let range = u64::from(e.offset)..u64::from(e.offset) + u64::from(e.length);
        if e.kind == BlobKind::Tree
            && let Some(p) = self.tree_pack(&pack).await?
        {
            let cached = p
                .get(range.start as usize..range.end as usize)
                .ok_or_else(|| Error::corrupt("pack", pack, "it is shorter than the index says"));
            match cached.and_then(|sealed| open_blob(&self.crypto, &e, sealed)) {
                Ok(plain) => return Ok(plain),
                // The cached copy may be what is damaged: storage decides,
                // through the ranged read below.
                Err(_) => self.tree_packs.lock().expect("not poisoned").remove(&pack),
            }
        }
        let sealed = self.read_range(&Kind::Pack.path(&pack), range).await?;
        open_blob(&self.crypto, &e, &sealed)
    }

    pub async fn load_tree(&self, id: &Id) -> Result<Tree> {
        let bytes = self.load_blob(id).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::corrupt("tree", id, e))
    }

    // ---- snapshots --------------------------------------------------------

    /// Save a snapshot, recording where the evidence log stands (§12d).
    pub async fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        // A copy keeps the head its original recorded; its entries came along first.
        let evidence = match snap.evidence {
            Some(h) => Some(h),
            None => crate::objects::evidence_head(&self.op).await?,
        };
        let snap = Snapshot { evidence, ..snap.clone() };
        self.save_file(Kind::Snapshot, &serde_json::to_vec(&snap).expect("snapshots serialize")).await
    }

    /// The id a named snapshot is stored under: keyed, so names stay secret.
    pub fn named_snapshot_id(&self, name: &str) -> Id {
        Id(self.crypto.mac(format!("tresor snapshot name\0{name}").as_bytes()))
    }

    /// Store a named snapshot once: a name already taken is refused, so a
    /// stored piece of an archive is never replaced.
    pub async fn save_named_snapshot(&self, name: &str, snap: &Snapshot) -> Result<Id> {
        if self.find_named(name).await?.is_some() {
            return Err(Error::Invalid(format!("a snapshot named {name} exists already")));
        }
        let id = self.named_snapshot_id(name);
        let plain = serde_json::to_vec(snap).expect("snapshots serialize");
        let sealed = self.crypto.seal_file(Kind::Snapshot.label(), &id, &plain);
        self.write(&Kind::Snapshot.path(&id), sealed).await?;
        Ok(id)
    }

    /// The snapshot of this name, if stored.
    pub async fn find_named(&self, name: &str) -> Result<Option<Snapshot>> {
        let id = self.named_snapshot_id(name);
        unless_gone(self.load_file_uncached(Kind::Snapshot, &id).await)?.map(|bytes| parse_snapshot(&id, &bytes)).transpose()
    }

    pub async fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        parse_snapshot(id, &self.load_file(Kind::Snapshot, id).await?)
    }

    /// All snapshots, oldest first. One deleted between the listing and its
    /// read (a concurrent `forget`) is left out, as a later listing would;
    /// so is one whose file is damaged, with a warning, and it is named by
    /// [`Repository::unreadable_snapshots`]: one flipped byte must not stop
    /// every backup, copy and forget.
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let ids = self.list_ids(Kind::Snapshot).await?;
        // A snapshot file is never rewritten: one found damaged is not read again.
        let mut damaged = self.unreadable.lock().expect("not poisoned").clone();
        damaged.retain(|id, _| ids.contains(id));
        let (mut snaps, unread) = {
            let mut opened = self.opened.lock().expect("not poisoned");
            let listed: HashSet<Id> = ids.iter().copied().collect();
            opened.retain(|id, _| listed.contains(id));
            let (known, unread): (Vec<Id>, Vec<Id>) =
                ids.into_iter().filter(|id| !damaged.contains_key(id)).partition(|id| opened.contains_key(id));
            (known.iter().map(|id| opened[id].clone()).collect::<Vec<Snapshot>>(), unread)
        };
        let loaded: Vec<(Id, std::result::Result<Option<Snapshot>, String>)> = futures::stream::iter(unread)
            .map(|id| async move {
                match self.load_snapshot(&id).await {
                    Err(Error::Corrupt { reason, .. }) => Ok((id, Err(reason))),
                    r => unless_gone(r).map(|s| (id, Ok(s))),
                }
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let mut read = Vec::new();
        for (id, r) in loaded {
            match r {
                Ok(s) => read.extend(s),
                Err(why) => {
                    damaged.insert(id, why);
                }
            }
        }
        self.note_unreadable(damaged);
        self.opened.lock().expect("not poisoned").extend(read.iter().map(|s| (s.id, s.clone())));
        snaps.extend(read);
        snaps.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
        Ok(snaps)
    }

    /// Warn of each snapshot file found damaged that this handle has not
    /// warned of yet.
    fn note_unreadable(&self, now: BTreeMap<Id, String>) {
        let mut known = self.unreadable.lock().expect("not poisoned");
        for (id, why) in now.iter().filter(|(id, _)| !known.contains_key(id)) {
            tracing::warn!("snapshot {} cannot be read, so it is left out: {why}", id.short());
        }
        *known = now;
    }

    /// The snapshots the newest listing left out as damaged, and how.
    pub fn unreadable_snapshots(&self) -> Vec<(Id, String)> {
        self.unreadable.lock().expect("not poisoned").clone().into_iter().collect()
    }

    /// Delete snapshots (`forget`). A snapshot the storage's Object Lock
    /// still protects stays and is counted, so the rest go on.
    pub async fn remove_snapshots(&self, ids: &[Id]) -> Result<Removal> {
        let mut out = Removal::default();
        for id in ids {
            match self.delete(&Kind::Snapshot.path(id)).await {
                Err(Error::Storage { source, .. }) if source.kind() == opendal::ErrorKind::PermissionDenied => out.locked.push(*id),
                Err(e) => return Err(e),
                Ok(()) => out.removed.push(*id),
            }
        }
        Ok(out)
    }

    /// Resolve `latest`, a full id or a unique id prefix.
    pub async fn find_snapshot(&self, spec: &str) -> Result<Snapshot> {
        self.find_filtered(spec, &SnapshotFilter::default()).await
    }

    /// The snapshot `spec` names, `latest` narrowed by `filter` ([`crate::select`]).
    pub async fn find_filtered(&self, spec: &str, filter: &SnapshotFilter) -> Result<Snapshot> {
        crate::select::select(self.snapshots().await?, spec, filter)
    }
}

impl Repository {
    // ---- memory (`--max-memory`, `index/budget.rs`) ------------------------

    /// Limit the memory commands on this handle may use (`None`: no limit);
    /// [`Repository::ensure_memory`] holds them to it.
    pub fn set_memory_limit(&self, limit: Option<u64>) {
        self.memory_limit.store(limit.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn memory_limit(&self) -> Option<u64> {
        Some(self.memory_limit.load(std::sync::atomic::Ordering::Relaxed)).filter(|&l| l > 0)
    }

    /// The estimate from a listing of the index files and marks.
    pub async fn memory_estimate(&self) -> Result<MemoryEstimate> {
        let mut files = list_with_size(self.operator(), Kind::Index).await?;
        files.extend(list_with_size(self.operator(), Kind::Mark).await?);
        Ok(MemoryEstimate::of_stored(files.len(), files.iter().map(|(_, s)| s).sum()))
    }

    /// Under a memory limit, refuse before any work when the estimate
    /// exceeds it. Called where the index is loaded and where a writer's
    /// session starts, so nothing is read or written first.
    pub async fn ensure_memory(&self) -> Result<()> {
        let Some(limit) = self.memory_limit() else { return Ok(()) };
        let e = self.memory_estimate().await?;
        if e.total > limit {
            return Err(Error::MemoryLimit { needed: e.total, index: e.index, blobs: e.blobs, limit });
        }
        Ok(())
    }
}

/// Whole tree packs, least recently used first, within
/// [`TREE_PACKS_IN_MEMORY`] and [`TREE_PACK_BYTES_IN_MEMORY`] (the newest
/// one stays even when it alone is larger).
#[derive(Default)]
struct TreePacks {
    packs: Vec<(Id, Arc<Vec<u8>>)>,
    bytes: usize,
    /// Packs held once and pushed out by newer ones (a few per GiB of trees).
    let_go: IdSet,
}

impl TreePacks {
    fn get(&mut self, id: &Id) -> Option<Arc<Vec<u8>>> {
        let i = self.packs.iter().position(|(p, _)| p == id)?;
        let entry = self.packs.remove(i);
        let bytes = entry.1.clone();
        self.packs.push(entry);
        Some(bytes)
    }

    fn insert(&mut self, id: Id, bytes: Arc<Vec<u8>>) {
        self.remove(&id);
        self.bytes += bytes.len();
        self.packs.push((id, bytes));
        while self.packs.len() > 1 && (self.packs.len() > TREE_PACKS_IN_MEMORY || self.bytes > TREE_PACK_BYTES_IN_MEMORY) {
            let (id, old) = self.packs.remove(0);
            self.bytes -= old.len();
            self.let_go.insert(id);
        }
    }

    fn remove(&mut self, id: &Id) {
        if let Some(i) = self.packs.iter().position(|(p, _)| p == id) {
            let (_, old) = self.packs.remove(i);
            self.bytes -= old.len();
        }
    }
}

/// What [`Repository::remove_snapshots`] did.
#[derive(Debug, Default)]
pub struct Removal {
    pub removed: Vec<Id>,
    /// Left in place under the storage's Object Lock.
    pub locked: Vec<Id>,
}

pub fn parse_snapshot(id: &Id, bytes: &[u8]) -> Result<Snapshot> {
    let mut s: Snapshot = serde_json::from_slice(bytes).map_err(|e| Error::corrupt("snapshot", id, e))?;
    s.id = *id;
    Ok(s)
}

#[cfg(test)]
pub(crate) mod tests;
