//! Append-only guard: an operator through which nothing is deleted and the
//! repository config is not rewritten. Every other object has a fresh name,
//! so no write can replace stored data.

use opendal::raw::*;
use opendal::{Error, ErrorKind, Result};

#[derive(Debug, Clone, Default)]
pub struct AppendOnlyLayer;

impl<A: Access> Layer<A> for AppendOnlyLayer {
    type LayeredAccess = AppendOnlyAccessor<A>;

    fn layer(&self, inner: A) -> Self::LayeredAccess {
        AppendOnlyAccessor { inner }
    }
}

#[derive(Debug)]
pub struct AppendOnlyAccessor<A> {
    inner: A,
}

fn refused(what: &str) -> Error {
    Error::new(ErrorKind::PermissionDenied, format!("the repository is append-only: {what} refused"))
}

impl<A: Access> LayeredAccess for AppendOnlyAccessor<A> {
    type Inner = A;
    type Reader = A::Reader;
    type Writer = A::Writer;
    type Lister = A::Lister;
    type Deleter = A::Deleter;

    fn inner(&self) -> &Self::Inner {
        &self.inner
    }

    async fn read(&self, path: &str, args: OpRead) -> Result<(RpRead, Self::Reader)> {
        self.inner.read(path, args).await
    }

    async fn write(&self, path: &str, args: OpWrite) -> Result<(RpWrite, Self::Writer)> {
        if path.trim_start_matches('/') == "config" {
            return Err(refused("rewriting the config"));
        }
        self.inner.write(path, args).await
    }

    async fn list(&self, path: &str, args: OpList) -> Result<(RpList, Self::Lister)> {
        self.inner.list(path, args).await
    }

    async fn delete(&self) -> Result<(RpDelete, Self::Deleter)> {
        Err(refused("deleting"))
    }
}
