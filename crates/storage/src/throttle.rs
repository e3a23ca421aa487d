//! Bandwidth limits: one budget for uploads and one for downloads, shared by
//! every request of an operator.
//!
//! A token bucket that may go into debt: a request takes its bytes at once
//! and the next one waits until the debt is paid, so large objects are not
//! held back by a burst size.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opendal::raw::*;
use opendal::{Buffer, Metadata, Result};

#[derive(Debug)]
struct Bucket {
    rate: f64,
    /// Bytes that may pass now; negative when in debt.
    balance: f64,
    last: Instant,
}

#[derive(Debug, Clone)]
struct Limiter(Arc<Mutex<Bucket>>);

impl Limiter {
    fn new(bytes_per_sec: u64) -> Limiter {
        let rate = bytes_per_sec.max(1) as f64;
        // One tenth of a second's worth may pass at once, so short bursts
        // of small requests are not delayed one by one.
        Limiter(Arc::new(Mutex::new(Bucket { rate, balance: rate / 10.0, last: Instant::now() })))
    }

    async fn take(&self, n: usize) {
        let wait = {
            let mut b = self.0.lock().expect("not poisoned");
            let now = Instant::now();
            let cap = b.rate / 10.0;
            b.balance = (b.balance + now.duration_since(b.last).as_secs_f64() * b.rate).min(cap);
            b.last = now;
            b.balance -= n as f64;
            if b.balance >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-b.balance / b.rate) }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Limits on bytes per second; `None` leaves a direction unlimited.
#[derive(Debug, Clone)]
pub struct ThrottleLayer {
    upload: Option<Limiter>,
    download: Option<Limiter>,
}

impl ThrottleLayer {
    pub fn new(upload: Option<u64>, download: Option<u64>) -> Self {
        ThrottleLayer { upload: upload.map(Limiter::new), download: download.map(Limiter::new) }
    }
}

impl<A: Access> Layer<A> for ThrottleLayer {
    type LayeredAccess = ThrottleAccessor<A>;

    fn layer(&self, inner: A) -> Self::LayeredAccess {
        ThrottleAccessor { inner, limits: self.clone() }
    }
}

#[derive(Debug)]
pub struct ThrottleAccessor<A> {
    inner: A,
    limits: ThrottleLayer,
}

impl<A: Access> LayeredAccess for ThrottleAccessor<A> {
    type Inner = A;
    type Reader = Throttled<A::Reader>;
    type Writer = Throttled<A::Writer>;
    type Lister = A::Lister;
    type Deleter = A::Deleter;

    fn inner(&self) -> &Self::Inner {
        &self.inner
    }

    async fn read(&self, path: &str, args: OpRead) -> Result<(RpRead, Self::Reader)> {
        let (rp, r) = self.inner.read(path, args).await?;
        Ok((rp, Throttled { inner: r, limiter: self.limits.download.clone() }))
    }

    async fn write(&self, path: &str, args: OpWrite) -> Result<(RpWrite, Self::Writer)> {
        let (rp, w) = self.inner.write(path, args).await?;
        Ok((rp, Throttled { inner: w, limiter: self.limits.upload.clone() }))
    }

    async fn list(&self, path: &str, args: OpList) -> Result<(RpList, Self::Lister)> {
        self.inner.list(path, args).await
    }

    async fn delete(&self) -> Result<(RpDelete, Self::Deleter)> {
        self.inner.delete().await
    }
}

pub struct Throttled<T> {
    inner: T,
    limiter: Option<Limiter>,
}

impl<R: oio::Read> oio::Read for Throttled<R> {
    async fn read(&mut self) -> Result<Buffer> {
        let buf = self.inner.read().await?;
        if let Some(l) = &self.limiter {
            l.take(buf.len()).await;
        }
        Ok(buf)
    }
}

impl<W: oio::Write> oio::Write for Throttled<W> {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        if let Some(l) = &self.limiter {
            l.take(bs.len()).await;
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
