//! Storage for tresor repositories.
//!
//! A repository lives behind an OpenDAL [`Operator`]; this crate turns a
//! repository location (a path or a URL) into an operator and stacks the thin
//! layers every backend shares: a timeout on every call, retries with back-off
//! for temporary errors, errors a user can act on, optional fault injection
//! for tests, and bandwidth limits. Nothing here knows
//! about the repository format: it moves opaque, immutable objects.

mod explain;
mod fault;
mod guard;
mod location;
mod octet;
mod sftp;
mod throttle;

use std::time::Duration;

use explain::ExplainLayer;
pub use fault::{FaultConfig, FaultLayer};
pub use guard::AppendOnlyLayer;
pub use location::{Location, redact, without_password};
pub use opendal::{Buffer, Error as OpError, ErrorKind as OpErrorKind, Operator};
pub use sftp::HostKeyCheck;
pub use throttle::ThrottleLayer;

/// Why storage could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid repository location {location:?}: {reason}")]
    InvalidLocation { location: String, reason: String },
    #[error("cannot set up {scheme} storage at {location}: {source}")]
    Setup {
        scheme: &'static str,
        location: String,
        #[source]
        source: Box<opendal::Error>,
    },
    #[error("invalid fault injection setting {0:?} (expected e.g. error-rate=0.1,seed=7,write-limit=1000000)")]
    InvalidFaults(String),
    #[error("invalid {TIMEOUT_VAR}={0:?} (expected seconds, e.g. 30, 30s or 2m)")]
    InvalidTimeout(String),
}

/// Options that shape the layers stacked on every operator.
#[derive(Debug, Clone, Default)]
pub struct StorageOptions {
    /// Inject failures (tests and drills only); see [`FaultConfig`].
    pub faults: Option<FaultConfig>,
    /// How many times a temporary error is retried before it is reported.
    pub max_retries: Option<usize>,
    /// Upload and download limits in bytes per second.
    pub limit_upload: Option<u64>,
    pub limit_download: Option<u64>,
    /// Credentials are looked up under this prefix first
    /// (`TRESOR_TO_AWS_ACCESS_KEY_ID` for a copy target), then without it.
    pub env_prefix: Option<&'static str>,
    /// How long any call may wait for an answer (default: [`TIMEOUT_VAR`], else 60 s).
    pub timeout: Option<Duration>,
}

/// How long any storage call may wait for an answer, retries included.
pub const TIMEOUT_VAR: &str = "TRESOR_STORAGE_TIMEOUT";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The storage timeout from [`TIMEOUT_VAR`]: `30`, `30s` or `2m`.
pub fn timeout() -> Duration {
    std::env::var(TIMEOUT_VAR).ok().and_then(|t| parse_timeout(&t)).unwrap_or(DEFAULT_TIMEOUT)
}

/// `30`, `30s` or `2m`; None for anything else, zero included.
pub fn parse_timeout(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (n, unit) = match t.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (t.strip_suffix('s').unwrap_or(t), 1),
    };
    n.parse::<u64>().ok().filter(|&n| n > 0).map(|n| Duration::from_secs(n * unit))
}

/// Build the operator for `location` with the shared layer stack.
///
/// Faults sit below the retry layer on purpose: injected temporary errors must
/// be absorbed by the same retry logic that absorbs real ones. The timeout
/// sits above it, so a server that stops answering ends the call after one
/// timeout rather than after one per retry; the bandwidth limit sits above
/// that, so waiting for the budget never counts as a silent server.
/// Errors are explained (a refused login, a missing bucket) above the
/// retries, once, from the last attempt's error.
pub fn open(location: &Location, options: &StorageOptions) -> Result<Operator, StorageError> {
    if let Ok(text) = std::env::var(TIMEOUT_VAR) {
        parse_timeout(&text).ok_or(StorageError::InvalidTimeout(text))?;
    }
    let limit = options.timeout.unwrap_or_else(timeout);
    let op = location.operator(options.env_prefix.unwrap_or(""), limit)?;
    let op = match &options.faults {
        Some(cfg) => op.layer(FaultLayer::new(cfg.clone())),
        None => op,
    };
    let retry = opendal::layers::RetryLayer::new()
        .with_jitter()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(options.max_retries.unwrap_or(8));
    let op = op
        .layer(retry)
        .layer(ExplainLayer::new(location, options.env_prefix.unwrap_or("")))
        .layer(opendal::layers::TimeoutLayer::new().with_timeout(limit).with_io_timeout(limit));
    Ok(if options.limit_upload.is_some() || options.limit_download.is_some() {
        op.layer(ThrottleLayer::new(options.limit_upload, options.limit_download))
    } else {
        op
    })
}

/// Whether an OpenDAL error is worth retrying at a higher level.
pub fn is_temporary(err: &opendal::Error) -> bool {
    err.is_temporary() || matches!(err.kind(), opendal::ErrorKind::RateLimited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timeouts() {
        assert_eq!(parse_timeout("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_timeout("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_timeout("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout("0"), None);
        assert_eq!(parse_timeout("soon"), None);
    }
}
