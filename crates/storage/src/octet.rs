//! Every object written as `application/octet-stream`: tresor's objects
//! are opaque bytes. Real GCS assumes that type when none is given;
//! gcp-storage-emulator records none, and OpenDAL rejects the `null` it
//! then answers with, so GCS writes always name it.

use opendal::Result;
use opendal::raw::*;

#[derive(Debug, Clone, Default)]
pub struct OctetStreamLayer;

impl<A: Access> Layer<A> for OctetStreamLayer {
    type LayeredAccess = OctetStreamAccessor<A>;

    fn layer(&self, inner: A) -> Self::LayeredAccess {
        OctetStreamAccessor { inner }
    }
}

#[derive(Debug)]
pub struct OctetStreamAccessor<A> {
    inner: A,
}

impl<A: Access> LayeredAccess for OctetStreamAccessor<A> {
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
        let args = if args.content_type().is_none() { args.with_content_type("application/octet-stream") } else { args };
        self.inner.write(path, args).await
    }

    async fn list(&self, path: &str, args: OpList) -> Result<(RpList, Self::Lister)> {
        self.inner.list(path, args).await
    }

    async fn delete(&self) -> Result<(RpDelete, Self::Deleter)> {
        self.inner.delete().await
    }
}
