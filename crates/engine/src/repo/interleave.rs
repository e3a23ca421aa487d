//! A storage layer for tests of races: it runs another writer's step at an
//! exact point of a command's storage traffic (once a listing has been
//! read to its end, or once an object has been read whole), so that an
//! interleaving a real concurrent process hits only by chance happens
//! every time.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use opendal::raw::*;
use opendal::{Buffer, Result};

/// What the other writer does, once.
pub(crate) type Step = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

#[derive(Clone)]
enum When {
    /// A listing of a path starting with this has returned its last entry.
    Listed(String),
    /// This object has been read through.
    Read(String),
}

#[derive(Clone)]
pub(crate) struct Interleave {
    when: When,
    step: Arc<Mutex<Option<Step>>>,
}

impl Interleave {
    pub(crate) fn after_listing(prefix: &str, step: Step) -> Interleave {
        Interleave { when: When::Listed(prefix.into()), step: Arc::new(Mutex::new(Some(step))) }
    }

    pub(crate) fn after_reading(path: &str, step: Step) -> Interleave {
        Interleave { when: When::Read(path.into()), step: Arc::new(Mutex::new(Some(step))) }
    }

    /// Whether the step has run.
    pub(crate) fn ran(&self) -> bool {
        self.step.lock().unwrap().is_none()
    }

    async fn run(&self) {
        let step = self.step.lock().unwrap().take();
        if let Some(step) = step {
            step().await;
        }
    }
}

impl<A: Access> Layer<A> for Interleave {
    type LayeredAccess = Interleaved<A>;

    fn layer(&self, inner: A) -> Self::LayeredAccess {
        Interleaved { inner, hook: self.clone() }
    }
}

pub(crate) struct Interleaved<A> {
    inner: A,
    hook: Interleave,
}

impl<A: Access> std::fmt::Debug for Interleaved<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interleaved").finish_non_exhaustive()
    }
}

impl<A: Access> LayeredAccess for Interleaved<A> {
    type Inner = A;
    type Reader = oio::Reader;
    type Writer = A::Writer;
    type Lister = HookedLister<A::Lister>;
    type Deleter = A::Deleter;

    fn inner(&self) -> &Self::Inner {
        &self.inner
    }

    async fn read(&self, path: &str, args: OpRead) -> Result<(RpRead, Self::Reader)> {
        let (rp, mut r) = self.inner.read(path, args).await?;
        if !matches!(&self.hook.when, When::Read(p) if p == path) {
            return Ok((rp, Box::new(r)));
        }
        // Read through before the step, so that the step may delete the object.
        let whole: Buffer = oio::Read::read_all(&mut r).await?;
        self.hook.run().await;
        Ok((rp, Box::new(whole)))
    }

    async fn write(&self, path: &str, args: OpWrite) -> Result<(RpWrite, Self::Writer)> {
        self.inner.write(path, args).await
    }

    async fn list(&self, path: &str, args: OpList) -> Result<(RpList, Self::Lister)> {
        let (rp, l) = self.inner.list(path, args).await?;
        let hook = matches!(&self.hook.when, When::Listed(p) if path.starts_with(p.as_str())).then(|| self.hook.clone());
        Ok((rp, HookedLister { inner: l, hook }))
    }

    async fn delete(&self) -> Result<(RpDelete, Self::Deleter)> {
        self.inner.delete().await
    }
}

pub(crate) struct HookedLister<L> {
    inner: L,
    hook: Option<Interleave>,
}

impl<L: oio::List> oio::List for HookedLister<L> {
    async fn next(&mut self) -> Result<Option<oio::Entry>> {
        let entry = self.inner.next().await?;
        if entry.is_none()
            && let Some(hook) = self.hook.take()
        {
            hook.run().await;
        }
        Ok(entry)
    }
}
