//! A store wrapper for races a test must win every time: the first read of
//! one object deletes another before it is answered, so "deleted between
//! listing and download" happens at a known moment instead of after a sleep.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

pub struct Tripwire {
    pub(crate) inner: s3s_fs::FileSystem,
    pub(crate) root: PathBuf,
    /// The object whose first GET springs the wire.
    pub(crate) read: String,
    /// The object it deletes.
    pub(crate) delete: String,
    pub(crate) sprung: AtomicBool,
}

#[async_trait::async_trait]
impl S3 for Tripwire {
    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        if req.input.key == self.read && !self.sprung.swap(true, Ordering::SeqCst) {
            let victim = self.root.join(&req.input.bucket).join(&self.delete);
            std::fs::remove_file(&victim).unwrap_or_else(|e| panic!("tripwire: delete {}: {e}", victim.display()));
        }
        self.inner.get_object(req).await
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.inner.head_object(req).await
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.inner.head_bucket(req).await
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.inner.list_objects_v2(req).await
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.inner.put_object(req).await
    }
}
