//! Serving the HTTP side: plain, or HTTPS with a given certificate
//! (rustls with ring), HTTP/1.1 either way (no ALPN offers HTTP/2, and
//! HTTP/1.1 alone lets a request's headers have a time limit from the
//! first moment: version detection would wait for bytes without one).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{Error, Result};

/// A TLS acceptor for a PEM certificate chain and key, read again when
/// either file changes (a renewal by cert-manager, say) and kept as it was
/// while the new files do not make a usable pair.
pub fn tls(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let files = CertFiles { cert: cert.to_path_buf(), key: key.to_path_buf(), provider: provider.clone() };
    let loaded = files.load()?;
    let resolver = Reloading { files, loaded: std::sync::Mutex::new(loaded) };
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[derive(Debug)]
struct CertFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// The pair as loaded, with the files' modification times then.
type Loaded = (Option<std::time::SystemTime>, Option<std::time::SystemTime>, Arc<CertifiedKey>);

impl CertFiles {
    fn modified(&self) -> (Option<std::time::SystemTime>, Option<std::time::SystemTime>) {
        let at = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (at(&self.cert), at(&self.key))
    }

    fn load(&self) -> Result<Loaded> {
        let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
            Error::Invalid(format!("cannot read the TLS {what} {}: {e}", path.display()))
        };
        let (cert_at, key_at) = self.modified();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&self.cert).and_then(|it| it.collect()).map_err(|e| bad("certificate", &self.cert, &e))?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| bad("key", &self.key, &e))?;
        let certified =
            CertifiedKey::from_der(chain, key, &self.provider).map_err(|e| Error::Invalid(format!("unusable TLS certificate: {e}")))?;
        Ok((cert_at, key_at, Arc::new(certified)))
    }
}

#[derive(Debug)]
struct Reloading {
    files: CertFiles,
    loaded: std::sync::Mutex<Loaded>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut loaded = self.loaded.lock().expect("not poisoned");
        if self.files.modified() != (loaded.0, loaded.1) {
            match self.files.load() {
                Ok(fresh) => *loaded = fresh,
                Err(e) => tracing::warn!("the TLS certificate stays as it was: {e}"),
            }
        }
        Some(loaded.2.clone())
    }
}

/// How long a client may take over its TLS handshake, and over a
/// request's headers: one that connects and says nothing must not hold a
/// descriptor for ever.
const HANDSHAKE: Duration = Duration::from_secs(10);
const HEADERS: Duration = Duration::from_secs(30);

/// Serve `app` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, app: Router, tls: Option<TlsAcceptor>) {
    serve_with(listener, app, tls, HEADERS).await
}

/// [`serve`], a request's headers given `headers`.
async fn serve_with(listener: TcpListener, app: Router, tls: Option<TlsAcceptor>, headers: Duration) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: wait for some to close rather than spin.
                tracing::warn!("HTTP: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (acceptor, app) = (tls.clone(), app.clone());
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else { return connection(tcp, app, peer, headers).await };
            match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => connection(stream, app, peer, headers).await,
                Ok(Err(e)) => tracing::debug!("TLS handshake with {peer}: {e}"),
                Err(_) => tracing::debug!("TLS handshake with {peer}: nothing came for {} s", HANDSHAKE.as_secs()),
            }
        });
    }
}

/// Requests on one connection, plain or TLS.
async fn connection<I>(io: I, app: Router, peer: std::net::SocketAddr, headers: Duration)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(headers);
    if let Err(e) = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app)).await {
        tracing::debug!("connection from {peer}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Over plain HTTP, a client that connects and sends nothing is let go
    /// once the time for a request's headers is up; one that asks is answered.
    #[tokio::test]
    async fn a_silent_client_is_let_go() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" }));
        tokio::spawn(serve_with(listener, app, None, Duration::from_secs(1)));
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(60), silent.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "closed by the server: {read:?}");
        let mut asking = tokio::net::TcpStream::connect(addr).await.unwrap();
        asking.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        asking.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("ok\n"), "{answer}");
    }
}
