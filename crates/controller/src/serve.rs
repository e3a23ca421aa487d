//! Serving the HTTP side: plain, or HTTPS with a given certificate
//! (rustls with ring), HTTP/1.1 and HTTP/2 either way.

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
    let Some(acceptor) = tls else {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("HTTP server: {e}");
        }
        return;
    };
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: wait for some to close rather than spin.
                tracing::warn!("HTTPS: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!("TLS handshake with {peer}: {e}"),
                Err(_) => return tracing::debug!("TLS handshake with {peer}: nothing came for {} s", HANDSHAKE.as_secs()),
            };
            let service = TowerToHyperService::new(app);
            let mut builder = Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADERS);
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!("HTTPS connection from {peer}: {e}");
            }
        });
    }
}
