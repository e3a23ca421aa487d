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
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{Error, Result};

/// A TLS acceptor for a PEM certificate chain and key.
pub fn tls(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let bad =
        |what: &str, path: &Path, e: &dyn std::fmt::Display| Error::Invalid(format!("cannot read the TLS {what} {}: {e}", path.display()));
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).and_then(|it| it.collect()).map_err(|e| bad("certificate", cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key", key, &e))?;
    let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Invalid(format!("unusable TLS certificate: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
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
