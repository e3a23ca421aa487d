//! Data sources: the agents that turn a service's data into one stream the
//! engine backs up, and put it back.
//!
//! Every source implements [`Source`]; a new one is one module. A source
//! verifies its data *while it flows*: the reader it hands out fails (and
//! so the backup fails, and no snapshot is saved) when the stream turns out
//! truncated or corrupt, or when the producing process reports an error.

pub mod bucket;
mod command;
pub mod etcd;
mod etcd_target;
#[doc(hidden)]
pub mod fuzzing;
mod hooks;
pub mod k8s;
pub mod k8s_pod;
pub mod k8s_restore;
pub mod k8s_standby;
pub mod k8s_transform;
pub mod k8s_volume;
mod percent;
mod pg_props;
mod pgbase;
mod pgurl;
pub mod pgwal;
pub mod pitr;
mod postgres;
pub mod probe;
mod rdb_head;
pub mod recovery_conf;
mod redis;
mod redis_aof;
mod redis_target;
pub mod restore_hooks;
mod tls;
pub mod walarchive;
pub mod walrecord;

use std::io::Read;

use tresor_engine::SourceInfo;

pub use command::{CommandSource, SECRET_VARS, kill_programs_when_stopped, last_line, shown_command, without_secrets};
pub use hooks::run_hook;
pub use pgbase::{KIND as PG_BASE, PgBase, unpack_into};
pub use pgurl::PgUrl;
pub use redis::{RedisSource, crc64};
pub use redis_aof::AofDir;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{source_name}: {reason}")]
    Failed { source_name: String, reason: String, kind: ErrorKind },
    #[error("unknown source {0:?} (expected redis://HOST:PORT, postgres://USER@HOST:PORT/DB, etcd://HOST:PORT or command:COMMAND)")]
    Unknown(String),
}

/// What kind of failure a source's [`Error`] is, set where it arises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The service did not answer (refused, unresolvable, timed out).
    Unreachable,
    /// The service refused the credentials.
    Auth,
    /// The data failed its check (a checksum, a truncated stream).
    Corrupt,
    /// A consistency hook failed or overran.
    Hook,
    /// Anything else: a bad URL, a missing program, a refusing target.
    Other,
}

impl Error {
    pub fn failed(source_name: impl Into<String>, reason: impl ToString) -> Error {
        Error::of(ErrorKind::Other, source_name, reason)
    }

    pub fn of(kind: ErrorKind, source_name: impl Into<String>, reason: impl ToString) -> Error {
        Error::Failed { source_name: source_name.into(), reason: reason.to_string(), kind }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Failed { kind, .. } => *kind,
            Error::Unknown(_) => ErrorKind::Other,
        }
    }

    /// Whether trying again later may succeed: a service that did not
    /// answer may be back; refused credentials or damaged data stay so.
    pub fn is_temporary(&self) -> bool {
        self.kind() == ErrorKind::Unreachable
    }

    /// This error inside an I/O error, as a stream's reader fails with it;
    /// [`Error::in_io`] finds it again.
    pub fn into_io(self) -> std::io::Error {
        let kind = if self.kind() == ErrorKind::Corrupt { std::io::ErrorKind::InvalidData } else { std::io::ErrorKind::Other };
        std::io::Error::new(kind, self)
    }

    /// The source's error an I/O error carries, if any.
    pub fn in_io(e: &std::io::Error) -> Option<&Error> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<Error>())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stream to back up: its file name in the snapshot and its bytes.
pub struct Stream {
    pub name: String,
    pub reader: Box<dyn Read + Send>,
}

/// One data source.
pub trait Source: Send {
    /// Connect or start, and hand out the data stream.
    fn open(&mut self) -> Result<Stream>;
    /// What the snapshot records: kind, URL without secrets, and the
    /// consistency point (known once the stream is open).
    fn info(&self) -> SourceInfo;
}

/// Where a stream is restored to: a running service or a program.
pub trait Target: Send {
    /// Prepare to receive one stream of `len` bytes. A target that holds
    /// data is refused unless `overwrite`.
    fn begin(&mut self, len: u64, overwrite: bool) -> Result<()>;
    fn write(&mut self, data: &[u8]) -> Result<()>;
    /// After the last byte: wait until the service has taken the data and
    /// say what it holds now, in one line.
    fn finish(&mut self) -> Result<String>;
    /// After `begin`, when the stream failed or `finish` did: put the service
    /// back as it was where it can be (a Redis instance made a master
    /// again), and remove what the restore wrote aside.
    fn abort(&mut self) -> Result<()> {
        Ok(())
    }
}

/// How a restore target works, beyond its URL.
#[derive(Clone, Debug, Default)]
pub struct TargetOptions {
    /// Parallel workers where the target has them (`pg_restore --jobs`).
    pub jobs: usize,
    /// What the snapshot recorded of its source beyond its data (a
    /// database's owners, privileges and settings: its consistency point's
    /// `properties`).
    pub recorded: serde_json::Value,
}

/// The restore target a URL names.
pub fn target_from_url(url: &str, opts: TargetOptions) -> Result<Box<dyn Target>> {
    if let Some(cmd) = url.strip_prefix("command:") {
        return Ok(Box::new(command::CommandTarget::new(cmd)?));
    }
    if url.starts_with("rediss://") {
        return Err(Error::failed(
            redis::url_without_secret(url),
            "restoring into a running instance over TLS is not supported: restore dump.rdb with --target and start Redis on it",
        ));
    }
    if url.starts_with("redis://") {
        return Ok(Box::new(redis_target::RedisTarget::new(RedisSource::parse(url)?)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(postgres::PostgresTarget::new(postgres::Postgres::parse(url)?, opts.jobs, opts.recorded)));
    }
    if url.starts_with("etcd-data:") {
        return Ok(Box::new(etcd_target::EtcdDataTarget::parse(url)?));
    }
    Err(Error::Unknown(tresor_storage::redact(url)))
}

/// Snapshot kinds that are a program's bytes, not a server's: what such a
/// stream holds is known only by looking at it.
const STREAMS: [&str; 2] = ["stdin", "command"];

/// Whether the restore target `url` takes a snapshot of `kind` whose stream
/// begins with `head`: its server's own kind, or a program's stream that
/// begins as the server's format does (a Redis RDB; the other servers'
/// tools check what they are given before they change anything). Asked
/// before the target is touched: a Redis handed an etcd snapshot flushed
/// itself, then failed to load it.
pub fn target_takes(url: &str, kind: &str, head: &[u8]) -> std::result::Result<(), String> {
    let (scheme, own, magic): (&str, &str, &[u8]) = match url {
        u if u.starts_with("redis://") || u.starts_with("rediss://") => ("redis://", "redis", b"REDIS"),
        u if u.starts_with("postgres://") || u.starts_with("postgresql://") => ("postgres://", "postgres", b""),
        u if u.starts_with("etcd-data:") => ("etcd-data:", "etcd", b""),
        _ => return Ok(()),
    };
    if kind == own || (STREAMS.contains(&kind) && head.starts_with(magic)) {
        return Ok(());
    }
    let what = if STREAMS.contains(&kind) { format!("a {kind} stream that holds no {own} data") } else { format!("a snapshot of {kind}") };
    Err(format!("it is {what}, and --to {scheme} takes a snapshot of {own}"))
}

/// Whether a backup argument names a source rather than a path.
pub fn is_source(arg: &str) -> bool {
    ["redis://", "rediss://", "postgres://", "postgresql://", "etcd://", "command:", "k8s://", "pgbase://"]
        .iter()
        .any(|p| arg.starts_with(p))
}

/// The source a URL names.
pub fn from_url(url: &str) -> Result<Box<dyn Source>> {
    if let Some(cmd) = url.strip_prefix("command:") {
        return Ok(Box::new(CommandSource::new(cmd)?));
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Ok(Box::new(RedisSource::parse(url)?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(postgres::Postgres::parse(url)?));
    }
    if url.starts_with("etcd://") {
        return Ok(Box::new(etcd::EtcdSource::parse(url)?));
    }
    if let Some(rest) = url.strip_prefix("pgbase://") {
        return Ok(Box::new(PgBase::parse(&format!("postgres://{rest}"))?));
    }
    Err(Error::Unknown(tresor_storage::redact(url)))
}

#[cfg(test)]
mod tests {
    /// A URL of a kind tresor does not know is named without its password.
    #[test]
    fn an_unknown_url_is_named_redacted() {
        for e in [
            super::from_url("mysql://root:pw-secret@db/shop").err(),
            super::target_from_url("mysql://root:pw-secret@db/shop", Default::default()).err(),
        ] {
            let said = e.expect("refused").to_string();
            assert!(said.starts_with("unknown source \"mysql://root:***@db/shop\""), "{said}");
        }
    }

    /// A server's target takes its own kind, and a program's stream that
    /// begins as its data does; nothing else.
    #[test]
    fn a_target_takes_its_own_kind_of_snapshot() {
        use super::target_takes;
        assert_eq!(target_takes("redis://h:6379", "redis", b""), Ok(()));
        assert_eq!(target_takes("redis://h:6379", "command", b"REDIS0011\xfa"), Ok(()));
        assert_eq!(
            target_takes("redis://h:6379", "etcd", b""),
            Err("it is a snapshot of etcd, and --to redis:// takes a snapshot of redis".into())
        );
        assert_eq!(
            target_takes("redis://h:6379", "stdin", b"hello\n"),
            Err("it is a stdin stream that holds no redis data, and --to redis:// takes a snapshot of redis".into())
        );
        assert_eq!(target_takes("etcd-data:/var/lib/etcd", "stdin", b"anything"), Ok(()));
        assert_eq!(
            target_takes("etcd-data:/var/lib/etcd", "redis", b"REDIS"),
            Err("it is a snapshot of redis, and --to etcd-data: takes a snapshot of etcd".into())
        );
        assert_eq!(
            target_takes("postgresql://u@h/db", "pg-base", b""),
            Err("it is a snapshot of pg-base, and --to postgres:// takes a snapshot of postgres".into())
        );
        assert_eq!(target_takes("command:cat > x", "etcd", b""), Ok(()));
    }
}
