//! The engine's error type.

use std::path::PathBuf;

use crate::Id;

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn skipped(damaged: &[String]) -> String {
    match damaged {
        [] => String::new(),
        _ => format!(" (damaged key files, not tried: {})", damaged.join(", ")),
    }
}

/// Everything that can go wrong in the engine. Each variant carries the
/// context a person needs to act on it; [`Error::is_temporary`] tells callers
/// (the scheduler, the retry loops) whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no repository at {location}: {reason}")]
    NoRepository { location: String, reason: String },
    #[error("{location} is not a tresor repository: {reason}")]
    NotARepository { location: String, reason: String },
    #[error("a repository already exists at {0}")]
    AlreadyExists(String),
    /// `slots`: the listing of key slots the password was tried against,
    /// sorted (a slot listed but gone when read counts, so a stale listing
    /// does not make a caller unlock again each time): a slot not among
    /// them is one a caller that remembers the refusal has to try.
    /// `damaged`: the key files skipped as damaged (`keys/<id>`), named
    /// because one of them may be the key this password was for.
    #[error("wrong password: no key of this repository opens with it{}", skipped(damaged))]
    WrongPassword { slots: Vec<Id>, damaged: Vec<String> },
    #[error("repository format version {found} is newer than this tresor supports (version {supported}); upgrade tresor to use it")]
    NewerFormat { found: u32, supported: u32 },
    #[error("storage {op} of {path} failed: {source}")]
    Storage {
        op: &'static str,
        path: String,
        #[source]
        source: Box<opendal::Error>,
    },
    #[error("{kind} {id} is damaged: {reason}")]
    Corrupt { kind: &'static str, id: String, reason: String },
    #[error("blob {0} is referenced but not in any index")]
    MissingBlob(Id),
    /// What `check` found, reported in full beside this.
    #[error("check found {problems} problem{}", if *problems == 1 { "" } else { "s" })]
    CheckFailed { problems: usize },
    #[error("no snapshot matches {0:?}")]
    NoSnapshot(String),
    /// `latest` with filters that no snapshot passes: what was asked for.
    #[error("no snapshot matches {0}")]
    NoMatch(String),
    /// A snapshot named by id that is not what was asked for (another
    /// source's, for the daemon's restore API).
    #[error("snapshot {snapshot} does not match {filter}")]
    FilteredOut { snapshot: String, filter: String },
    #[error("snapshot id prefix {0:?} is ambiguous; give more digits")]
    AmbiguousSnapshot(String),
    #[error("path {0:?} is not in the snapshot")]
    NoSuchPath(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("storage setup failed: {0}")]
    Setup(#[from] tresor_storage::StorageError),
    #[error("this writer's session lease lapsed ({secs}s without a stored heartbeat); nothing was committed, run it again")]
    LeaseExpired { secs: u64 },
    #[error("the repository is append-only: {0} refused (see `tresor append-only`)")]
    AppendOnly(String),
    #[error("interrupted")]
    Interrupted,
    /// Key slots change one command at a time (docs/ARCHITECTURE.md §7).
    #[error("another key command is running ({0}); try again once it has ended")]
    KeysBusy(String),
    /// The evidence log takes one appender at a time (docs/ARCHITECTURE.md §7).
    #[error("another writer is appending to the evidence log ({0}); try again once it has ended")]
    EvidenceBusy(String),
    /// A backed-up stream failed while it was read; its error names its
    /// producer (a source wraps a typed error of its own in it).
    #[error("{0}")]
    Stream(#[source] std::io::Error),
    /// Refused before any work under a memory limit (`--max-memory`).
    #[error(
        "this command would need about {} MiB of memory (an index of up to {blobs} blobs: {} MiB), more than the limit of {} MiB; it did not start",
        needed.div_ceil(1 << 20), index.div_ceil(1 << 20), limit >> 20
    )]
    MemoryLimit { needed: u64, index: u64, blobs: u64, limit: u64 },
    /// A copy's target failed (the source's errors are not wrapped): the
    /// daemon charges the off-site repository with it, not the source.
    #[error(transparent)]
    InTarget(Box<Error>),
}

/// What kind of failure an [`Error`] is, for those who act on it
/// differently (the daemon's reasons, its retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Nothing, or no tresor repository, at the location.
    NoRepository,
    WrongPassword,
    /// The storage (or a local disk) has no room left.
    StorageFull,
    /// The storage did not answer, or refused.
    Storage,
    /// The repository answered but cannot serve: newer, append-only.
    Repository,
    /// Something it stores does not read back whole: damaged or missing.
    Damaged,
    /// The stream being backed up failed.
    Stream,
    Interrupted,
    /// The request itself: a bad argument, a missing snapshot or path.
    Other,
}

/// Out of space, as an I/O error says it.
fn io_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// Out of space, somewhere below a storage error.
fn storage_full(e: &opendal::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>().is_some_and(io_full) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A storage error that may heal: temporary, or temporary until the
/// retry layer gave up on it (persistent), or throttled.
fn storage_may_heal(e: &opendal::Error) -> bool {
    !e.is_permanent() || matches!(e.kind(), opendal::ErrorKind::RateLimited)
}

impl Error {
    /// Whether repeating the operation later may succeed (network blips,
    /// throttling, a server restarting, a storage outage the retries did
    /// not outlast) as opposed to a permanent condition.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Storage { source, .. } => storage_may_heal(source) && !storage_full(source),
            Error::Setup(tresor_storage::StorageError::Setup { source, .. }) => storage_may_heal(source),
            Error::Io { source, .. } | Error::Stream(source) => {
                matches!(source.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
            }
            Error::Interrupted | Error::LeaseExpired { .. } | Error::KeysBusy(_) | Error::EvidenceBusy(_) => true,
            Error::InTarget(e) => e.is_temporary(),
            _ => false,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NoRepository { .. } | Error::NotARepository { .. } => ErrorKind::NoRepository,
            Error::WrongPassword { .. } => ErrorKind::WrongPassword,
            Error::Storage { source, .. } if storage_full(source) => ErrorKind::StorageFull,
            Error::Io { source, .. } if io_full(source) => ErrorKind::StorageFull,
            Error::Storage { .. } | Error::Setup(_) | Error::LeaseExpired { .. } => ErrorKind::Storage,
            Error::NewerFormat { .. } | Error::AppendOnly(_) | Error::AlreadyExists(_) => ErrorKind::Repository,
            Error::Corrupt { .. } | Error::MissingBlob(_) | Error::CheckFailed { .. } => ErrorKind::Damaged,
            Error::Stream(_) => ErrorKind::Stream,
            Error::Interrupted => ErrorKind::Interrupted,
            Error::NoSnapshot(_)
            | Error::NoMatch(_)
            | Error::FilteredOut { .. }
            | Error::AmbiguousSnapshot(_)
            | Error::NoSuchPath(_)
            | Error::KeysBusy(_)
            | Error::EvidenceBusy(_)
            | Error::Io { .. }
            | Error::MemoryLimit { .. }
            | Error::Invalid(_) => ErrorKind::Other,
            Error::InTarget(e) => e.kind(),
        }
    }

    /// This error, as one of a copy's target.
    pub fn in_target(self) -> Error {
        match self {
            Error::InTarget(_) => self,
            e => Error::InTarget(Box::new(e)),
        }
    }

    pub fn is_in_target(&self) -> bool {
        matches!(self, Error::InTarget(_))
    }

    /// A failed storage operation. The OpenDAL error is boxed: it is large,
    /// and every `Result` of the engine would otherwise carry its size.
    pub fn storage(op: &'static str, path: impl Into<String>, source: opendal::Error) -> Error {
        Error::Storage { op, path: path.into(), source: Box::new(source) }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }

    pub fn corrupt(kind: &'static str, id: impl ToString, reason: impl ToString) -> Error {
        Error::Corrupt { kind, id: id.to_string(), reason: reason.to_string() }
    }
}
