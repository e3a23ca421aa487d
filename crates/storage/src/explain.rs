//! Errors a user can act on: a refused login, a missing bucket or
//! container, or a server nothing answers for, reported as what it is and
//! what to check, instead of the raw HTTP exchange OpenDAL wraps it in.

use opendal::raw::*;
use opendal::{Buffer, Error, ErrorKind, Metadata, Result};

use crate::Location;

/// What a backend's errors are explained with.
#[derive(Debug, Clone)]
pub struct ExplainLayer {
    why: Why,
}

#[derive(Debug, Clone)]
struct Why {
    scheme: &'static str,
    /// The variables that hold the credentials, for a refused login.
    credentials: &'static str,
    /// `bucket x` or `container x`, with the error codes that say it is missing.
    bucket: Option<(String, &'static [&'static str])>,
    /// The server the backend connects to, where the configuration names one.
    endpoint: Option<String>,
}

impl ExplainLayer {
    pub fn new(location: &Location, env_prefix: &str) -> ExplainLayer {
        let (credentials, bucket) = match location {
            Location::S3 { bucket, .. } => {
                ("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", Some((format!("bucket {bucket}"), &["NoSuchBucket"][..])))
            }
            Location::Azblob { container, .. } => {
                ("AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY", Some((format!("container {container}"), &["ContainerNotFound"][..])))
            }
            Location::Gcs { bucket, .. } => (
                "GOOGLE_APPLICATION_CREDENTIALS",
                Some((format!("bucket {bucket}"), &["The specified bucket does not exist", "Bucket not found"][..])),
            ),
            Location::Webdav { .. } => ("TRESOR_WEBDAV_USER and TRESOR_WEBDAV_PASSWORD", None),
            Location::Fs(_) | Location::Sftp { .. } => ("", None),
        };
        ExplainLayer { why: Why { scheme: location.scheme(), credentials, bucket, endpoint: location.endpoint(env_prefix) } }
    }
}

impl Why {
    /// The explained error, or `err` itself when there is nothing to add.
    /// OpenDAL keeps the HTTP status and the server's error code only in
    /// the error's text, so that is what is read.
    fn explain(&self, op: &'static str, path: &str, err: Error) -> Error {
        let text = err.to_string();
        // A refused delete may be S3 Object Lock at work, not a login: left as it is.
        let login = !self.credentials.is_empty() && op != "delete";
        let (kind, message) = if login && text.contains("status: 401") {
            (ErrorKind::PermissionDenied, format!("the server refused the credentials (HTTP 401 Unauthorized): check {}", self.credentials))
        } else if login && text.contains("status: 403") {
            (ErrorKind::PermissionDenied, format!("the server refused access (HTTP 403 Forbidden): check {}", self.credentials))
        } else if let Some((name, _)) = self.bucket.as_ref().filter(|(_, codes)| {
            // Creating an object is refused with 404 only when its bucket is
            // missing (gcp-storage-emulator says no more than that).
            codes.iter().any(|c| text.contains(c)) || (op == "write" && err.kind() == ErrorKind::NotFound)
        }) {
            // The kind stays: a missing config reads as no repository, and
            // doctor tells a missing S3 bucket by its listing's kind.
            (err.kind(), format!("the {name} does not exist (tresor does not create it)"))
        } else if self.scheme == "gcs" && text.contains("no valid credential found") {
            let fix = "set GOOGLE_APPLICATION_CREDENTIALS, or run where the metadata server answers (GCE, GKE workload identity)";
            (ErrorKind::ConfigInvalid, format!("no Google credentials: {fix}"))
        } else if let Some(cause) = self.unreachable(&err) {
            // Past the retries, yet as temporary or not as it came: a job
            // retried later may find the server up.
            let message = match &self.endpoint {
                Some(at) => format!("cannot connect to {at}: {cause}; check that the server runs there"),
                None => format!("cannot connect to the {} service: {cause}", self.scheme),
            };
            let explained = Error::new(err.kind(), message).with_operation(op).with_context("service", self.scheme);
            let explained = explained.with_context("path", path).with_temporary(err.is_temporary());
            return explained.with_persistent(err.is_persistent());
        } else {
            return err;
        };
        Error::new(kind, message).with_operation(op).with_context("service", self.scheme).with_context("path", path).set_persistent()
    }
}

impl Why {
    /// Why a connection to the server could not be made, from the error's
    /// chain of causes (an HTTP backend's socket error is at its end); not
    /// for a connection lost midway, which is no wrong address.
    fn unreachable(&self, err: &Error) -> Option<String> {
        use std::io::ErrorKind as Io;
        if matches!(self.scheme, "fs" | "sftp") {
            return None;
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                let refused =
                    matches!(io.kind(), Io::ConnectionRefused | Io::HostUnreachable | Io::NetworkUnreachable | Io::AddrNotAvailable);
                return refused.then(|| io.to_string());
            }
            cause = e.source();
        }
        None
    }
}

impl<A: Access> Layer<A> for ExplainLayer {
    type LayeredAccess = ExplainAccessor<A>;

    fn layer(&self, inner: A) -> Self::LayeredAccess {
        ExplainAccessor { inner, why: self.why.clone() }
    }
}

#[derive(Debug)]
pub struct ExplainAccessor<A> {
    inner: A,
    why: Why,
}

impl<A: Access> LayeredAccess for ExplainAccessor<A> {
    type Inner = A;
    type Reader = Explained<A::Reader>;
    type Writer = Explained<A::Writer>;
    type Lister = Explained<A::Lister>;
    type Deleter = Explained<A::Deleter>;

    fn inner(&self) -> &Self::Inner {
        &self.inner
    }

    async fn read(&self, path: &str, args: OpRead) -> Result<(RpRead, Self::Reader)> {
        let (rp, r) = self.inner.read(path, args).await.map_err(|e| self.why.explain("read", path, e))?;
        Ok((rp, self.wrap(path, r)))
    }

    async fn write(&self, path: &str, args: OpWrite) -> Result<(RpWrite, Self::Writer)> {
        let (rp, w) = self.inner.write(path, args).await.map_err(|e| self.why.explain("write", path, e))?;
        Ok((rp, self.wrap(path, w)))
    }

    async fn stat(&self, path: &str, args: OpStat) -> Result<RpStat> {
        self.inner.stat(path, args).await.map_err(|e| self.why.explain("stat", path, e))
    }

    async fn list(&self, path: &str, args: OpList) -> Result<(RpList, Self::Lister)> {
        let (rp, l) = self.inner.list(path, args).await.map_err(|e| self.why.explain("list", path, e))?;
        Ok((rp, self.wrap(path, l)))
    }

    async fn delete(&self) -> Result<(RpDelete, Self::Deleter)> {
        let (rp, d) = self.inner.delete().await.map_err(|e| self.why.explain("delete", "", e))?;
        Ok((rp, self.wrap("", d)))
    }
}

impl<A> ExplainAccessor<A> {
    fn wrap<T>(&self, path: &str, inner: T) -> Explained<T> {
        Explained { inner, path: path.to_string(), why: self.why.clone() }
    }
}

pub struct Explained<T> {
    inner: T,
    path: String,
    why: Why,
}

impl<T: oio::Read> oio::Read for Explained<T> {
    async fn read(&mut self) -> Result<Buffer> {
        self.inner.read().await.map_err(|e| self.why.explain("read", &self.path, e))
    }
}

impl<T: oio::Write> oio::Write for Explained<T> {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        self.inner.write(bs).await.map_err(|e| self.why.explain("write", &self.path, e))
    }

    async fn close(&mut self) -> Result<Metadata> {
        self.inner.close().await.map_err(|e| self.why.explain("write", &self.path, e))
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await.map_err(|e| self.why.explain("write", &self.path, e))
    }
}

impl<T: oio::List> oio::List for Explained<T> {
    async fn next(&mut self) -> Result<Option<oio::Entry>> {
        self.inner.next().await.map_err(|e| self.why.explain("list", &self.path, e))
    }
}

impl<T: oio::Delete> oio::Delete for Explained<T> {
    fn delete(&mut self, path: &str, args: OpDelete) -> Result<()> {
        self.inner.delete(path, args).map_err(|e| self.why.explain("delete", path, e))
    }

    async fn flush(&mut self) -> Result<usize> {
        self.inner.flush().await.map_err(|e| self.why.explain("delete", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(url: &str) -> Why {
        ExplainLayer::new(&Location::parse(url).unwrap(), "").why
    }

    #[test]
    fn explains_refused_logins_and_missing_containers() {
        let raw = Error::new(ErrorKind::Unexpected, "Unauthorized").with_context("response", "Parts { status: 401, headers: {} }");
        let err = why("webdav://h/r").explain("read", "config", raw).to_string();
        assert_eq!(
            err,
            "PermissionDenied (persistent) at read, context: { service: webdav, path: config } => \
             the server refused the credentials (HTTP 401 Unauthorized): check TRESOR_WEBDAV_USER and TRESOR_WEBDAV_PASSWORD"
        );
        let raw = Error::new(ErrorKind::NotFound, "AzblobError { code: \"ContainerNotFound\" }");
        let err = why("azblob://nope/r").explain("write", "keys/1", raw);
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().ends_with("=> the container nope does not exist (tresor does not create it)"), "{err}");
        let plain = || Error::new(ErrorKind::NotFound, "no such object");
        assert_eq!(why("azblob://c/r").explain("read", "config", plain()).to_string(), plain().to_string());
    }

    /// A connection nobody accepts names the server and keeps its status;
    /// one lost midway is left as it is.
    #[test]
    fn explains_a_server_nobody_answers_for() {
        let io = |kind| Error::new(ErrorKind::Unexpected, "send http request").set_source(std::io::Error::from(kind)).set_persistent();
        let err = why("s3://b/r?endpoint=http://127.0.0.1:1").explain("read", "config", io(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(
            err.to_string(),
            "Unexpected (persistent) at read, context: { service: s3, path: config } => \
             cannot connect to http://127.0.0.1:1: connection refused; check that the server runs there"
        );
        let err = why("gcs://b/r").explain("list", "data/", io(std::io::ErrorKind::HostUnreachable).set_temporary());
        assert!(err.is_temporary() && err.to_string().ends_with("=> cannot connect to the gcs service: host unreachable"), "{err}");
        let reset = io(std::io::ErrorKind::ConnectionReset);
        assert_eq!(why("s3://b/r").explain("read", "config", io(std::io::ErrorKind::ConnectionReset)).to_string(), reset.to_string());
    }
}
