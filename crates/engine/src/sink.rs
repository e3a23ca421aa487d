//! A blob sink: stores whole plaintext blobs into a repository's packs,
//! skipping what it already holds, and indexes them. `copy` and
//! `repair snapshots` write through it; backup has its own streaming
//! pipeline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::index::{BlobKey, Index, KeySet, Unindexed};
use crate::pack::{BlobKind, Compressor, FLAG_ZSTD, PackWriter};
use crate::{Error, Id, Repository, Result};

/// One step of a recursive tree rewrite (`copy`, `repair snapshots`):
/// boxed, as async recursion needs.
pub(crate) type Step<'s, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 's>>;

pub struct BlobSink<'a> {
    repo: &'a Repository,
    /// What the repository held at the start (a writer index, so nothing
    /// new comes to depend on marked packs).
    index: Arc<Index>,
    added: KeySet,
    writers: [Option<PackWriter>; 2],
    compressor: Compressor,
    zbuf: Vec<u8>,
    unindexed: Unindexed,
    /// Packs written, in order.
    pub written: Vec<Id>,
    /// Blobs stored, and their packed bytes; blobs found present.
    pub stored: u64,
    pub stored_bytes: u64,
    pub present: u64,
}

impl<'a> BlobSink<'a> {
    /// Call after the writer's session started.
    pub async fn new(repo: &'a Repository) -> Result<BlobSink<'a>> {
        Ok(BlobSink {
            repo,
            index: repo.writer_index().await?,
            added: KeySet::default(),
            writers: [None, None],
            compressor: Compressor::new(repo.config().compression).map_err(|e| Error::Invalid(format!("zstd: {e}")))?,
            zbuf: Vec::new(),
            unindexed: Unindexed::default(),
            written: Vec::new(),
            stored: 0,
            stored_bytes: 0,
            present: 0,
        })
    }

    /// Whether the repository holds `id` (before or since this sink began).
    pub fn holds(&self, id: &Id) -> bool {
        self.index.contains(id) || self.added.contains(&BlobKey::of(id))
    }

    /// Store a blob unless the repository holds it; its id.
    pub async fn put(&mut self, kind: BlobKind, plain: &[u8]) -> Result<Id> {
        let id = self.repo.crypto().blob_id(plain);
        if self.index.contains(&id) || !self.added.insert(BlobKey::of(&id)) {
            self.present += 1;
            return Ok(id);
        }
        let target = self.repo.config().pack_target(kind);
        let slot = &mut self.writers[usize::from(kind == BlobKind::Tree)];
        let writer = slot.get_or_insert_with(|| PackWriter::new(kind, target));
        let (compressor, zbuf, crypto) = (&mut self.compressor, &mut self.zbuf, self.repo.crypto());
        let entry = tokio::task::block_in_place(|| {
            let (flags, payload) = if compressor.compress(plain, zbuf) { (FLAG_ZSTD, zbuf.as_slice()) } else { (0, plain) };
            writer.add(crypto, id, plain.len(), flags, payload)
        });
        self.stored += 1;
        self.stored_bytes += u64::from(entry.length);
        if writer.len() >= target {
            let full = slot.take().expect("present");
            self.store(full).await?;
            if self.unindexed.due() {
                self.index_stored().await?;
            }
        }
        Ok(id)
    }

    async fn store(&mut self, w: PackWriter) -> Result<()> {
        let sealed = tokio::task::block_in_place(|| w.finish(self.repo.crypto()));
        let packed = self.repo.save_pack(sealed).await?;
        self.written.push(packed.id);
        self.unindexed.push(packed);
        Ok(())
    }

    async fn index_stored(&mut self) -> Result<()> {
        if !self.unindexed.is_empty() {
            self.repo.save_index(&self.unindexed.take()).await?;
        }
        Ok(())
    }

    /// Seal the open packs and index everything stored: before a snapshot
    /// is committed, all it needs must be indexed.
    pub async fn flush(&mut self) -> Result<()> {
        for w in std::mem::take(&mut self.writers).into_iter().flatten() {
            self.store(w).await?;
        }
        self.index_stored().await
    }
}
