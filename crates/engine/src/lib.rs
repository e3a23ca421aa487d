//! The tresor repository engine.
//!
//! Data flows one way: a source's bytes are chunked, hashed, compressed and
//! encrypted on a pool of threads ([`backup`]), gathered into packs, and
//! uploaded through the storage crate's OpenDAL operator. Restores run the
//! same path backwards ([`restore`]). `docs/ARCHITECTURE.md` explains the
//! invariants; `docs/FORMAT.md` the bytes.

pub mod backup;
mod bufpool;
pub mod cache;
pub mod check;
pub mod chunker;
pub mod config;
pub mod copy;
pub mod crypto;
pub mod diff;
mod error;
pub mod evidence;
pub mod find;
pub mod forget;
pub mod fsmeta;
#[doc(hidden)]
pub mod fuzzing;
pub mod holds;
mod id;
pub mod index;
pub mod keys;
pub mod objects;
pub mod pack;
pub mod prune;
pub mod repair;
pub mod repair_snapshots;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod salvage;
pub mod select;
pub mod session;
pub mod sink;
pub mod slots;
pub mod snapshot;
#[doc(hidden)]
pub mod synth;
pub mod tree;
pub mod verify;
pub mod walk;

pub use error::{Error, ErrorKind, Result};
pub use fsmeta::{hostname, username};
pub use id::{Id, IdBuildHasher, IdMap, IdSet};
pub use repo::{InitOptions, OpenOptions, Repository, Settings};
pub use slots::{KdfParams, Password};
pub use snapshot::{Snapshot, SourceInfo, Summary};
pub use tree::{Node, NodeKind, ObjectMeta, Tree};

#[cfg(test)]
mod tests {
    /// No module reaches itself through the modules it imports: the object
    /// layout below the repository handle, the commands above it.
    #[test]
    fn modules_import_each_other_without_cycles() {
        tresor_testkit::imports::assert_layered(env!("CARGO_MANIFEST_DIR"));
    }
}
