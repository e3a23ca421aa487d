//! TLS client connections (rustls with ring) for sources that speak TLS.
//! Trust comes from a CA file when one is given, else from the system's
//! certificate store; a client certificate is offered when one is given.

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

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

    /// Wrap a connected socket; the handshake happens on first use.
    pub fn wrap(&self, tcp: TcpStream, host: &str) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host} is not a valid TLS server name: {e}"))?;
        let conn = ClientConnection::new(Arc::new(self.config()?), name).map_err(|e| e.to_string())?;
        Ok(StreamOwned::new(conn, tcp))
    }
}
