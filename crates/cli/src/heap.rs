//! How the allocator treats large buffers, per command: one table of the
//! settings and why each command has its own, applied before any thread
//! starts (`M_ARENA_MAX` must be).

use crate::opts::{Command, PgCmd, PgCommand};

/// glibc's `mallopt` settings a command runs with.
pub struct Heap {
    /// Allocations from this size on are mapped afresh and unmapped when freed.
    mmap_threshold: i32,
    /// Freed memory kept in the heap up to this before it is handed back.
    trim_threshold: Option<i32>,
    /// At most this many heaps (glibc's default: eight per core).
    arenas: Option<i32>,
}

/// Buffers of a MiB or more come and go by the thousand (chunks, pack pieces,
/// storage reads) across many threads; glibc would keep freed ones in
/// per-thread heaps and the process would hold twice its working set.
/// Mapping them directly hands the memory back: measured, backup peak memory
/// fell from 148 to 78 MiB on the Linux tree, at a cost of about a second of
/// page faults per 2.5 GB restored (docs/BENCHMARKS.md).
pub const DEFAULT: Heap = Heap { mmap_threshold: 128 * 1024, trim_threshold: None, arenas: None };

/// A restore (`restore`, `restore-app`, `pg restore`) reads every pack
/// range through OpenDAL's fs reader, which copies it through a 2 MiB
/// buffer of tokio's, new for every range, into another: mapped afresh each
/// time (as [`DEFAULT`] has it), they cost a page fault for every 4 KiB
/// restored and a third of a large file's restore time (docs/BENCHMARKS.md,
/// "Large files"). Served from one heap that keeps up to 16 MiB freed, they
/// are reused (one heap, not one per thread, so that little is kept);
/// larger buffers (chunks, the key derivation's 64 MiB) are still mapped
/// and handed back.
const RESTORE: Heap = Heap { mmap_threshold: 4 << 20, trim_threshold: Some(16 << 20), arenas: Some(1) };

/// The WAL prefetcher frees and allocates 16 MiB of blob buffers per
/// segment all its life: kept in the heap rather than mapped afresh each
/// time, they cost no page faults, which were a quarter of its CPU time.
const WAL_PREFETCH: Heap = Heap { mmap_threshold: 32 << 20, trim_threshold: Some(256 << 20), arenas: None };

impl Heap {
    /// The settings `command` runs with, where they are not [`DEFAULT`].
    pub fn of(command: &Command) -> Option<&'static Heap> {
        match command {
            Command::Pg(PgCmd { command: PgCommand::WalPrefetch { .. } }) => Some(&WAL_PREFETCH),
            Command::Restore(_) | Command::RestoreApp(_) | Command::Pg(PgCmd { command: PgCommand::Restore(_) }) => Some(&RESTORE),
            _ => None,
        }
    }

    /// Set them. Called before any thread starts.
    pub fn apply(&self) {
        // SAFETY: mallopt only sets allocator parameters.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, self.mmap_threshold);
            if let Some(trim) = self.trim_threshold {
                libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
            }
            if let Some(arenas) = self.arenas {
                libc::mallopt(libc::M_ARENA_MAX, arenas);
            }
        }
    }
}
