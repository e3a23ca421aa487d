//! The index: loading it from the index files and marks, the one a process
//! reads through, and finding blobs again after a concurrent prune moved
//! them (docs/ARCHITECTURE.md §7.3a).

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use super::Repository;
use crate::index::{FileSummary, Index, IndexBuilder, IndexFile};
use crate::objects::{Kind, is_damage, is_not_found, unless_gone, vanished};
use crate::{Error, Id, IdSet, Result};

/// How often one read follows its blob to a newer index before it gives
/// up: each time a prune must have rewritten index files or marks between
/// the load and the read, so more than a few means something is wrong.
pub(crate) const RELOCATIONS: usize = 8;

/// The index a process reads through, with the index files and marks it
/// was built from (sorted; `None` when a command built it itself).
pub(super) struct Reading {
    index: Arc<Index>,
    built_from: Option<Vec<Id>>,
}

/// Packs marked for deletion by a prune, as stored under `marks/`.
#[derive(Debug, Clone)]
pub struct Mark {
    pub id: Id,
    /// When the storage stored the mark.
    pub time: chrono::DateTime<chrono::Utc>,
    pub file: IndexFile,
}

impl Repository {
    /// The index of every index file, without the packs in `without`, and
    /// what each file held. Files are added as they arrive and dropped, so
    /// the index is all that stays (docs/ARCHITECTURE.md, "Index memory").
    /// A file deleted between the listing and its read was superseded by one
    /// written before the deletion: list again.
    pub async fn load_index(&self, without: &IdSet) -> Result<(Index, Vec<FileSummary>)> {
        self.ensure_memory().await?;
        let mut attempts = 0;
        loop {
            let ids = self.list_ids(Kind::Index).await?;
            let mut builder = IndexBuilder::default();
            let mut loaded = futures::stream::iter(ids)
                .map(|id| async move { Ok::<_, Error>((id, self.load_file(Kind::Index, &id).await?)) })
                .buffer_unordered(8);
            let added = async {
                while let Some((id, plain)) = loaded.try_next().await? {
                    builder.add_file(id, &plain)?;
                }
                Ok::<_, Error>(())
            };
            match added.await {
                Err(e) if is_not_found(&e) && attempts < 5 => attempts += 1,
                Err(e) => return Err(e),
                Ok(()) => return Ok(builder.finish(without)),
            }
        }
    }

    /// The packs prune has marked for deletion (docs/ARCHITECTURE.md §7),
    /// with the storage time of each mark. A mark removed meanwhile is
    /// skipped: its packs are gone or back in the index.
    pub async fn load_marks(&self) -> Result<Vec<Mark>> {
        let mut out = Vec::new();
        for id in self.list_ids(Kind::Mark).await? {
            let path = Kind::Mark.path(&id);
            let loaded = async { Ok::<_, Error>((self.load_file_uncached(Kind::Mark, &id).await?, self.stored_time(&path).await?)) };
            if let Some((plain, time)) = unless_gone(loaded.await)? {
                out.push(Mark { id, time, file: IndexFile::decode(&id, &plain)? });
            }
        }
        Ok(out)
    }

    /// The quarantine records (docs/FORMAT.md §12e): per record, the packs
    /// a repair found damaged or gone, each with the blobs it lost, or the
    /// damage that keeps it from being read. One removed meanwhile is
    /// skipped: a prune found its packs gone.
    pub async fn load_quarantine(&self) -> Result<Vec<(Id, Result<IndexFile>)>> {
        let mut out = Vec::new();
        for id in self.list_ids(Kind::Quarantine).await? {
            let record = match unless_gone(self.load_file_uncached(Kind::Quarantine, &id).await) {
                Ok(None) => continue,
                Ok(Some(plain)) => IndexFile::decode(&id, &plain),
                Err(e) if is_damage(&e) => Err(e),
                Err(e) => return Err(e),
            };
            out.push((id, record));
        }
        Ok(out)
    }

    /// The repository index for reading, loaded once per process: the index
    /// files, and behind them the marked packs (a snapshot committed by a
    /// writer that started before the mark may still need them).
    pub async fn index(&self) -> Result<Arc<Index>> {
        let mut slot = self.index.lock().await;
        if let Some(r) = slot.as_ref() {
            return Ok(r.index.clone());
        }
        let reading = self.load_reading().await?;
        let index = reading.index.clone();
        *slot = Some(reading);
        Ok(index)
    }

    async fn load_reading(&self) -> Result<Reading> {
        let (mut index, files) = self.load_index(&IdSet::default()).await?;
        let mut built_from: Vec<Id> = files.iter().map(|f| f.id).collect();
        for m in self.load_marks().await? {
            built_from.push(m.id);
            for p in &m.file.packs {
                index.add_pack(p.id, p.size, &p.entries);
            }
        }
        built_from.sort_unstable();
        index.seal();
        // A pack a concurrent writer on this host cached before indexing it
        // may go too: that costs a download, never a wrong read.
        if let Some(c) = &self.cache {
            c.retain(Kind::Pack.dir(), |name| name.parse::<Id>().map_or(true, |p| index.has_pack(&p)));
        }
        Ok(Reading { index: Arc::new(index), built_from: Some(built_from) })
    }

    /// A read through `stale` found a pack gone, or a blob missing from it.
    /// Readers hold no session, so a concurrent prune may sweep a pack they
    /// planned to read, but only after it rewrote index files or marks to
    /// say where the blobs it kept are now (§7.2); a blob a backup stored
    /// after the load is in an index file written since. So: the reading
    /// index again when those changed since it was built (or another read
    /// already loaded a newer one); `None` when they did not, and the pack
    /// or blob is missing, not moved. The caller hands over its `stale`
    /// index, which is let go before the newer one is built: a reader that
    /// holds no other copy holds one index at a time, as `--max-memory`
    /// foresees.
    pub async fn relocated(&self, stale: Arc<Index>) -> Result<Option<Arc<Index>>> {
        let mut slot = self.index.lock().await;
        if let Some(r) = slot.as_ref()
            && !Arc::ptr_eq(&r.index, &stale)
        {
            return Ok(Some(r.index.clone()));
        }
        if let Some(built_from) = slot.as_ref().and_then(|r| r.built_from.as_ref())
            && &self.index_and_marks().await? == built_from
        {
            return Ok(None);
        }
        *slot = None;
        drop(stale);
        let reading = self.load_reading().await?;
        let index = reading.index.clone();
        *slot = Some(reading);
        Ok(Some(index))
    }

    /// The ids of the index files and marks storage holds, sorted: what a
    /// prune changes before it deletes a pack.
    pub async fn index_and_marks(&self) -> Result<Vec<Id>> {
        let mut ids = self.list_ids(Kind::Index).await?;
        ids.extend(self.list_ids(Kind::Mark).await?);
        ids.sort_unstable();
        Ok(ids)
    }

    /// The index a writer deduplicates against: marked packs left out, so
    /// that nothing new comes to depend on them. Call it only after the
    /// writer's session has started.
    ///
    /// With no marks before the load and none after it, it is what
    /// [`Repository::index`] would load now, and becomes the reading index
    /// unless one is loaded: a backup that reads its parent's trees then
    /// holds one index, not two (at 36 bytes a blob, 72 MiB a copy at two
    /// million files).
    pub async fn writer_index(&self) -> Result<Arc<Index>> {
        let marked: IdSet = self.load_marks().await?.iter().flat_map(|m| m.file.packs.iter().map(|p| p.id)).collect();
        let (index, files) = self.load_index(&marked).await?;
        let index = Arc::new(index);
        if marked.is_empty() && self.load_marks().await?.is_empty() {
            let mut built_from: Vec<Id> = files.iter().map(|f| f.id).collect();
            built_from.sort_unstable();
            self.index.lock().await.get_or_insert_with(|| Reading { index: index.clone(), built_from: Some(built_from) });
        }
        Ok(index)
    }

    /// Read through `index`, an index this command built itself.
    pub async fn set_index(&self, index: Arc<Index>) {
        *self.index.lock().await = Some(Reading { index, built_from: None });
    }

    /// Forget the loaded index (after this process changed it).
    pub async fn reset_index(&self) {
        *self.index.lock().await = None;
    }

    pub async fn save_index(&self, file: &IndexFile) -> Result<Id> {
        self.save_file(Kind::Index, &file.encode()).await
    }

    /// A blob's plaintext, found through the reading index, and through a
    /// newer one when a concurrent prune moved it or a backup stored it
    /// after the index was loaded (a long-lived handle's: `relocated`).
    pub async fn load_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let mut index = self.index().await?;
        let mut moves = 0;
        loop {
            let loaded = match index.get(id) {
                Some((pack, e)) => self.load_blob_at(pack, e).await,
                None => Err(Error::MissingBlob(*id)),
            };
            match loaded {
                Err(err) if vanished(&err) && moves < RELOCATIONS => match self.relocated(index).await? {
                    Some(newer) => (index, moves) = (newer, moves + 1),
                    None => return Err(err),
                },
                loaded => return loaded,
            }
        }
    }
}
