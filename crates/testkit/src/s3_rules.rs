//! The behaviours a test needs that s3s-fs lacks, as one store wrapper:
//! every request passes through to s3s-fs unless the server's [`Rules`]
//! say otherwise.
//!
//! - **Object Lock**: as S3 does for a bucket with a default retention
//!   period, deleting or overwriting an object younger than the retention
//!   is refused (403 AccessDenied), so tresor's handling of locked objects
//!   is tested against the same answer S3 gives.
//! - **Tripwire**: the first GET of one object deletes another before it
//!   is answered, so "deleted between listing and download" happens at a
//!   known moment instead of after a sleep.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};

/// What the server does beyond s3s-fs.
pub(crate) enum Rules {
    None,
    ObjectLock(Duration),
    /// The first GET of `read` deletes `delete` of the same bucket.
    Tripwire {
        read: String,
        delete: String,
    },
}

pub(crate) struct RuledStore {
    inner: s3s_fs::FileSystem,
    root: PathBuf,
    rules: Rules,
    sprung: AtomicBool,
}

const LOCKED: &str = "the object is under Object Lock retention";

impl RuledStore {
    pub(crate) fn new(inner: s3s_fs::FileSystem, root: PathBuf, rules: Rules) -> RuledStore {
        RuledStore { inner, root, rules, sprung: AtomicBool::new(false) }
    }

    fn locked(&self, bucket: &str, key: &str) -> bool {
        let Rules::ObjectLock(retention) = self.rules else { return false };
        let written = std::fs::metadata(self.root.join(bucket).join(key)).and_then(|m| m.modified());
        written.is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() < retention)
    }

    fn spring(&self, bucket: &str, key: &str) {
        let Rules::Tripwire { read, delete } = &self.rules else { return };
        if key == read && !self.sprung.swap(true, Ordering::SeqCst) {
            let victim = self.root.join(bucket).join(delete);
            std::fs::remove_file(&victim).unwrap_or_else(|e| panic!("tripwire: delete {}: {e}", victim.display()));
        }
    }
}

#[async_trait::async_trait]
impl S3 for RuledStore {
    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        if self.locked(&req.input.bucket, &req.input.key) {
            return Err(s3_error!(AccessDenied, "{LOCKED}"));
        }
        self.inner.delete_object(req).await
    }

    async fn delete_objects(&self, mut req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let bucket = req.input.bucket.clone();
        let (locked, free): (Vec<_>, Vec<_>) =
            std::mem::take(&mut req.input.delete.objects).into_iter().partition(|o| self.locked(&bucket, &o.key));
        req.input.delete.objects = free;
        let mut out = self.inner.delete_objects(req).await?;
        let errors = locked
            .into_iter()
            .map(|o| Error { code: Some("AccessDenied".into()), key: Some(o.key), message: Some(LOCKED.into()), version_id: o.version_id })
            .collect::<Vec<_>>();
        if !errors.is_empty() {
            out.output.errors = Some(errors);
        }
        Ok(out)
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        if self.locked(&req.input.bucket, &req.input.key) {
            return Err(s3_error!(AccessDenied, "{LOCKED}"));
        }
        self.inner.put_object(req).await
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        self.spring(&req.input.bucket, &req.input.key);
        self.inner.get_object(req).await
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.inner.head_object(req).await
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.inner.head_bucket(req).await
    }

    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        self.inner.list_buckets(req).await
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        self.inner.list_objects(req).await
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.inner.list_objects_v2(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.inner.create_multipart_upload(req).await
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        self.inner.upload_part(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.inner.complete_multipart_upload(req).await
    }

    async fn abort_multipart_upload(&self, req: S3Request<AbortMultipartUploadInput>) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.inner.abort_multipart_upload(req).await
    }
}
