//! A command's memory, estimated before it starts: `--max-memory`.
//!
//! The index is what grows with a repository (docs/ARCHITECTURE.md §9), and
//! its size is bounded by the size of the index files and marks that feed
//! it, known from a listing before any is read. A command whose estimate
//! exceeds the limit stops there, having read and changed nothing.

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
