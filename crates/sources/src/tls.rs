//! TLS client connections (rustls with ring) for sources that speak TLS.
//! Trust comes from a CA file when one is given, else from the system's
//! certificate store; a client certificate is offered when one is given.

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// Where the trust anchors and the client's own certificate come from.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// From `{PREFIX}CACERT`, `{PREFIX}CERT` and `{PREFIX}KEY`.
    pub fn from_env(prefix: &str) -> TlsFiles {
        let var = |name: &str| std::env::var_os(format!("{prefix}{name}")).map(PathBuf::from);
        TlsFiles { ca: var("CACERT"), cert: var("CERT"), key: var("KEY") }
    }

    fn config(&self) -> Result<ClientConfig, String> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("cannot read the CA file {}: {e}", ca.display()))? {
                    let cert = cert.map_err(|e| format!("cannot read the CA file {}: {e}", ca.display()))?;
                    roots.add(cert).map_err(|e| format!("unusable CA certificate in {}: {e}", ca.display()))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect())
                    .map_err(|e| format!("cannot read the client certificate {}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("cannot read the client key {}: {e}", key.display()))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| format!("unusable client certificate: {e}"))
            }
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err("a client certificate needs both the certificate and the key".into()),
        }
    }

    /// Wrap a connected socket, the handshake done within [`HANDSHAKE`]: a
    /// server that does not speak TLS (a plain Redis port) reads the hello
    /// as a command and waits for its end, and would otherwise hold the
    /// connection for the whole read timeout and fail with a bare EAGAIN.
    pub fn wrap(&self, mut tcp: TcpStream, host: &str) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host} is not a valid TLS server name: {e}"))?;
        let mut conn = ClientConnection::new(Arc::new(self.config()?), name).map_err(|e| e.to_string())?;
        let port = tcp.peer_addr().map(|a| a.port()).map_err(|e| e.to_string())?;
        let failed = |e: std::io::Error| format!("TLS handshake with {host}:{port} failed: {}", handshake_error(&e));
        let read_timeout = tcp.read_timeout().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + HANDSHAKE;
        while conn.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            tcp.set_read_timeout(Some(left)).and_then(|_| tcp.set_write_timeout(Some(left))).map_err(failed)?;
            conn.complete_io(&mut tcp).map_err(failed)?;
        }
        tcp.set_read_timeout(read_timeout).and_then(|_| tcp.set_write_timeout(None)).map_err(|e| e.to_string())?;
        Ok(StreamOwned::new(conn, tcp))
    }
}

/// How long a TLS handshake may take, from the hello to its end.
pub const HANDSHAKE: Duration = Duration::from_secs(10);

/// Why a handshake failed, with a hint where the server may not speak TLS
/// at all: it said nothing TLS within the time, hung up, or said something else.
fn handshake_error(e: &std::io::Error) -> String {
    const PLAIN: &str = "is the server serving TLS?";
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidMessage(_)) => format!("its answer is not TLS; {PLAIN}"),
        Some(other) => other.to_string(),
        None if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            format!("no answer within {} s; {PLAIN}", HANDSHAKE.as_secs())
        }
        None => format!("{e}; {PLAIN}"),
    }
}
