//! Fault injection: a layer that makes storage misbehave on purpose.
//!
//! Tests and restore drills use it to prove that temporary errors are retried
//! and that a full disk fails cleanly without leaving a referenced
//! half-written object. It is switched on by configuration only, never by
//! default.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use opendal::raw::*;
use opendal::{Buffer, Error, ErrorKind, Metadata, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::StorageError;

/// What to inject.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Probability that any single request fails with a temporary error.
    pub error_rate: f64,
    /// Seed for the pseudo-random choice, so a failing run can be replayed.
    pub seed: u64,
    /// After this many bytes were written, every write fails as a full disk would.
    pub write_limit: Option<u64>,
    /// Every read of a path starting with this fails, as storage that stopped
    /// answering would once the retries gave up: an outage, not damage.
    pub unreadable: Option<String>,
    /// Every object written under a path starting with this is stored with
    /// one byte changed (in the middle of its first piece), as storage that
    /// damages data silently would: only reading it back finds out.
    pub garble: Option<String>,
}

impl FaultConfig {
    /// Parse `error-rate=0.1,seed=7,write-limit=1000000,unreadable=data/,garble=data/`
    /// (every key optional).
    pub fn parse(text: &str) -> Result<FaultConfig, StorageError> {
        let bad = || StorageError::InvalidFaults(text.to_string());
        let mut cfg = FaultConfig { error_rate: 0.0, seed: 0, write_limit: None, unreadable: None, garble: None };
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(bad)?;
            match k.trim() {
                "error-rate" => cfg.error_rate = v.trim().parse().map_err(|_| bad())?,
                "seed" => cfg.seed = v.trim().parse().map_err(|_| bad())?,
                "write-limit" => cfg.write_limit = Some(v.trim().parse().map_err(|_| bad())?),
                "unreadable" => cfg.unreadable = Some(v.trim().to_string()),
                "garble" => cfg.garble = Some(v.trim().to_string()),
                _ => return Err(bad()),
            }
        }
        if !(0.0..=1.0).contains(&cfg.error_rate) {
            return Err(bad());
        }
        Ok(cfg)
    }
}

#[derive(Debug, Clone)]
pub struct FaultLayer {
    cfg: FaultConfig,
}

impl FaultLayer {
    pub fn new(cfg: FaultConfig) -> Self {
        Self { cfg }
    }
}

impl<A: Access> Layer<A> for FaultLayer {
    type LayeredAccess = FaultAccessor<A>;

    fn layer(&self, inner: A) -> Self::LayeredAccess {
        FaultAccessor {
            inner,
            state: Arc::new(FaultState {
                rng: Mutex::new(StdRng::seed_from_u64(self.cfg.seed)),
                written: AtomicU64::new(0),
                cfg: self.cfg.clone(),
            }),
        }
    }
}

#[derive(Debug)]
struct FaultState {
    cfg: FaultConfig,
    rng: Mutex<StdRng>,
    written: AtomicU64,
}

impl FaultState {
    fn roll(&self, op: &'static str, path: &str) -> Result<()> {
        let hit = self.rng.lock().map(|mut r| r.random::<f64>() < self.cfg.error_rate).unwrap_or(false);
        if hit {
            return Err(Error::new(ErrorKind::Unexpected, "injected temporary fault")
                .with_operation(op)
                .with_context("path", path)
                .set_temporary());
        }
        Ok(())
    }

    fn account_write(&self, len: u64) -> Result<()> {
        let Some(limit) = self.cfg.write_limit else { return Ok(()) };
        let total = self.written.fetch_add(len, Ordering::SeqCst) + len;
        if total > limit {
            // As a local disk says it: the OS error below OpenDAL's.
            return Err(Error::new(ErrorKind::Unexpected, "no storage space")
                .with_operation("write")
                .set_source(std::io::Error::from_raw_os_error(28)));
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct FaultAccessor<A> {
    inner: A,
    state: Arc<FaultState>,
}

impl<A: Access> LayeredAccess for FaultAccessor<A> {
    type Inner = A;
    type Reader = A::Reader;
    type Writer = FaultWriter<A::Writer>;
    type Lister = A::Lister;
    type Deleter = A::Deleter;

    fn inner(&self) -> &Self::Inner {
        &self.inner
    }

    async fn read(&self, path: &str, args: OpRead) -> Result<(RpRead, Self::Reader)> {
        self.state.roll("read", path)?;
        if self.state.cfg.unreadable.as_deref().is_some_and(|prefix| path.starts_with(prefix)) {
            return Err(Error::new(ErrorKind::Unexpected, "injected outage: storage does not answer")
                .with_operation("read")
                .with_context("path", path));
        }
        self.inner.read(path, args).await
    }

    async fn write(&self, path: &str, args: OpWrite) -> Result<(RpWrite, Self::Writer)> {
        self.state.roll("write", path)?;
        let (rp, w) = self.inner.write(path, args).await?;
        let garble = self.state.cfg.garble.as_deref().is_some_and(|prefix| path.starts_with(prefix));
        Ok((rp, FaultWriter { inner: w, state: self.state.clone(), garble }))
    }

    async fn stat(&self, path: &str, args: OpStat) -> Result<RpStat> {
        self.state.roll("stat", path)?;
        self.inner.stat(path, args).await
    }

    async fn list(&self, path: &str, args: OpList) -> Result<(RpList, Self::Lister)> {
        self.state.roll("list", path)?;
        self.inner.list(path, args).await
    }

    async fn delete(&self) -> Result<(RpDelete, Self::Deleter)> {
        self.state.roll("delete", "")?;
        self.inner.delete().await
    }
}

pub struct FaultWriter<W> {
    inner: W,
    state: Arc<FaultState>,
    /// A byte of the next non-empty piece is still to be changed.
    garble: bool,
}

impl<W: oio::Write> oio::Write for FaultWriter<W> {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        self.state.account_write(bs.len() as u64)?;
        if self.garble && !bs.is_empty() {
            self.garble = false;
            let mut bytes = bs.to_vec();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            return self.inner.write(Buffer::from(bytes)).await;
        }
        self.inner.write(bs).await
    }

    async fn close(&mut self) -> Result<Metadata> {
        self.inner.close().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_settings() {
        let cfg = FaultConfig::parse("error-rate=0.25,seed=9,write-limit=100,unreadable=data/,garble=index/").unwrap();
        let (unreadable, garble) = (Some("data/".into()), Some("index/".into()));
        assert_eq!(cfg, FaultConfig { error_rate: 0.25, seed: 9, write_limit: Some(100), unreadable, garble });
        assert!(FaultConfig::parse("error-rate=2").is_err());
        assert!(FaultConfig::parse("bogus=1").is_err());
    }
}
