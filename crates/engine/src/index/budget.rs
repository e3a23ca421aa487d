//! A command's memory, estimated before it starts: `--max-memory`.
//!
//! The index is what grows with a repository (docs/ARCHITECTURE.md §9), and
//! its size is bounded by the size of the index files and marks that feed
//! it, known from a listing before any is read. A command whose estimate
//! exceeds the limit stops there, having read and changed nothing.

use std::sync::atomic::Ordering;

use crate::objects::{Kind, list_with_size};
use crate::{Error, Repository, Result};

/// Bytes of an index slot in memory (`compact.rs`).
const SLOT: u64 = 36;
/// Stored bytes per entry at least: every entry holds a 32-byte keyed hash,
/// which no compression shrinks. A pack's header (its id) counts as one
/// more entry, which pays for its interned id.
const STORED_PER_ENTRY: u64 = 32;
/// What a command holds besides its index: the runtime and its threads, I/O
/// and compression buffers, the tree-pack cache (32 MiB), a walk's trees in
/// flight, a small backup's pipeline. Measured peaks minus the index stay
/// below it (docs/BENCHMARKS.md, "Index memory per blob").
pub const WORKING_SET: u64 = 96 << 20;

/// What a command over this repository's index will need at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Index files and marks.
    pub files: usize,
    /// Their size as stored.
    pub stored: u64,
    /// Entries they can hold at most.
    pub blobs: u64,
    /// The index of those entries.
    pub index: u64,
    /// The index and [`WORKING_SET`].
    pub total: u64,
}

impl MemoryEstimate {
    pub fn of_stored(files: usize, stored: u64) -> MemoryEstimate {
        let blobs = stored / STORED_PER_ENTRY;
        let index = blobs * SLOT;
        MemoryEstimate { files, stored, blobs, index, total: index + WORKING_SET }
    }
}

impl Repository {
    /// Limit the memory commands on this handle may use (`None`: no limit);
    /// [`Repository::ensure_memory`] holds them to it.
    pub fn set_memory_limit(&self, limit: Option<u64>) {
        self.memory_limit.store(limit.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn memory_limit(&self) -> Option<u64> {
        Some(self.memory_limit.load(Ordering::Relaxed)).filter(|&l| l > 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_bounds_the_slots() {
        let e = MemoryEstimate::of_stored(2, 32_000_000);
        assert_eq!((e.blobs, e.index, e.total), (1_000_000, 36_000_000, 36_000_000 + WORKING_SET));
        assert_eq!(MemoryEstimate::of_stored(0, 0).total, WORKING_SET);
    }
}
