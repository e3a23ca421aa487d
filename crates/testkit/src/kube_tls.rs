//! HTTPS for the fake API server. kubectl (client-go) sends no bearer
//! token over plain HTTP, so an API server that authenticates must speak
//! TLS, as every real one does. One CA and one certificate for 127.0.0.1,
//! made by `openssl` once per process and held in memory; clients trust the
//! CA through `certificate-authority-data` in their kubeconfig.

use std::process::Command;
use std::sync::{Arc, OnceLock};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::oneshot;

/// The PEM texts: held in memory, not in a directory, because a process's
/// statics are never dropped: a temp dir kept in one stayed in /tmp after
/// every test process that started a `KubeServer`.
struct Certificates {
    ca: String,
    server: String,
    key: String,
}

fn certificates() -> &'static Certificates {
    static CERTS: OnceLock<Certificates> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("tresor-kube-tls-").tempdir().expect("temp dir");
        let script = "set -e; ec='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'; \
            openssl req -x509 $ec -keyout ca.key -out ca.crt -days 2 -subj '/CN=tresor fake kube-apiserver CA' 2>/dev/null; \
            openssl req $ec -keyout server.key -out server.csr -subj /CN=kube-apiserver 2>/dev/null; \
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext; \
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext 2>/dev/null";
        let out = Command::new("sh").arg("-c").arg(script).current_dir(dir.path()).output().expect("openssl (in the base image)");
        assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect("openssl's output");
        Certificates { ca: read("ca.crt"), server: read("server.crt"), key: read("server.key") }
    })
}

/// The CA, base64 PEM, as a kubeconfig's `certificate-authority-data` holds it.
pub fn ca_data() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(&certificates().ca)
}

fn server_config() -> Arc<rustls::ServerConfig> {
    let certs = certificates();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(certs.server.as_bytes()).collect::<Result<_, _>>().expect("server certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(certs.key.as_bytes()).expect("server key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Serve `app` over TLS on `listener` until `shutdown` fires.
pub async fn serve(listener: std::net::TcpListener, app: axum::Router, mut shutdown: oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config());
    let service = TowerToHyperService::new(app);
    while let Some(socket) = crate::net::accept_until(&listener, &mut shutdown).await {
        let (acceptor, service) = (acceptor.clone(), service.clone());
        tokio::spawn(async move {
            // A client that fails the handshake or hangs up is not a server failure.
            let Ok(tls) = acceptor.accept(socket).await else { return };
            let _ = ConnBuilder::new(TokioExecutor::new()).serve_connection_with_upgrades(TokioIo::new(tls), service).await;
        });
    }
}
