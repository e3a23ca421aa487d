//! In-process S3 server: s3s over an s3s-fs store in a temp directory.

use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::s3_rules::{RuledStore, Rules};

const BUCKET: &str = "tresor-test";
const ACCESS_KEY: &str = "tresor-test-key";
const SECRET_KEY: &str = "tresor-test-secret";
const REGION: &str = "us-east-1";

/// A SigV4-authenticated S3 endpoint on `127.0.0.1:<free port>` with one
/// bucket ([`bucket`](Self::bucket)), stored as plain files under
/// [`root`](Self::root). Clients must use path-style addressing.
///
/// The server runs on its own thread with its own tokio runtime, so it can be
/// used from sync tests and from `#[tokio::test]`s alike (a server on the test's
/// own current-thread runtime would deadlock against blocking client calls).
/// Dropping it stops the server and deletes the store.
pub struct S3Server {
    endpoint: String,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    // Declared last so it is removed only after `Drop::drop` has joined the server thread.
    dir: TempDir,
}

impl S3Server {
    /// Starts a server; returns once its listener is bound, so connections
    /// made right away are queued rather than refused.
    ///
    /// Panics if the temp dir, bucket directory, listener or thread can't be set up.
    pub fn start() -> S3Server {
        Self::start_with(Rules::None)
    }

    /// A server whose bucket has S3 Object Lock with this default retention:
    /// objects younger than it cannot be deleted or overwritten.
    pub fn with_object_lock(retention: Duration) -> S3Server {
        Self::start_with(Rules::ObjectLock(retention))
    }

    /// A server on which the first GET of object `read` deletes object
    /// `delete` of the same bucket before it is answered.
    pub fn deleting_on_read(read: &str, delete: &str) -> S3Server {
        Self::start_with(Rules::Tripwire { read: read.to_string(), delete: delete.to_string() })
    }

    fn start_with(rules: Rules) -> S3Server {
        let dir = tempfile::Builder::new().prefix("tresor-s3-").tempdir().expect("create temp dir for the S3 store");
        // s3s-fs maps each top-level directory of its root to a bucket.
        std::fs::create_dir(dir.path().join(BUCKET)).expect("create bucket directory");
        let store = s3s_fs::FileSystem::new(dir.path()).expect("open s3s-fs store");
        let root = dir.path().to_path_buf();

        let mut builder = match rules {
            Rules::None => S3ServiceBuilder::new(store),
            rules => S3ServiceBuilder::new(RuledStore::new(store, root, rules)),
        };
        // With auth set, s3s verifies SigV4 signatures and rejects anonymous requests.
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        // No `set_host`: without a base domain s3s parses every request as
        // path-style, which is what the clients (OpenDAL's default) send.
        let service = builder.build();

        // Bind here rather than on the server thread so the port is known and
        // accepting before `start` returns, with no handshake needed. Below
        // the ephemeral range: a test that drops the server to meet a storage
        // that is down finds its port closed, not taken by another test's
        // bind(0) (answering as another S3 server, or as something else).
        let listener = crate::net::reserved_listener();
        // tokio's `TcpListener::from_std` requires a non-blocking socket.
        listener.set_nonblocking(true).expect("make listener non-blocking");
        let port = listener.local_addr().expect("listener address").port();

        let (shutdown, shutdown_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("s3-server-{port}"))
            .spawn(move || serve(listener, service, shutdown_rx))
            .expect("spawn S3 server thread");

        S3Server { endpoint: format!("http://127.0.0.1:{port}"), shutdown: Some(shutdown), thread: Some(thread), dir }
    }

    /// Base URL, e.g. `http://127.0.0.1:40123` (no trailing slash).
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// The one bucket that exists.
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// Region to sign with; s3s accepts any region, this is the conventional default.
    pub fn region(&self) -> &str {
        REGION
    }

    /// Directory backing the store. Objects live at `root/<bucket>/<key>`;
    /// s3s-fs also keeps dot-file sidecars (ETag, checksums, metadata,
    /// multipart parts) directly in `root`.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the file holding object `key`, for tests that inspect or corrupt it.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root().join(BUCKET).join(key)
    }

    /// Standard AWS variables pointing a child process at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", REGION),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // A failed send means the server thread already exited; joining reports why.
        let _ = self.shutdown.take().map(|tx| tx.send(()));
        if let Some(thread) = self.thread.take()
            && let Err(panic) = thread.join()
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Server thread body: accepts HTTP/1.1 connections until `shutdown` fires
/// (or its sender is dropped).
fn serve(listener: StdTcpListener, service: S3Service, mut shutdown: oneshot::Receiver<()>) {
    // One thread is plenty for tests; s3s-fs's file I/O runs on tokio's blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("build S3 server runtime");
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener).expect("register listener with tokio");
        let http = ConnBuilder::new(TokioExecutor::new()).http1_only();
        while let Some(socket) = crate::net::accept_until(&listener, &mut shutdown).await {
            let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
            tokio::spawn(async move {
                // A client hanging up mid-request is not a server failure.
                let _ = conn.await;
            });
        }
    });
    // Dropping the runtime here cancels the connection tasks, closing their
    // sockets, and waits for in-flight blocking file I/O, so the store can be
    // deleted safely afterwards. No graceful drain: the test is done with it.
}
