//! Certificates for TLS tests, made by `openssl` as an operator's would be
//! (never by the generator of the code under test, so the two are checked
//! against each other): a CA, a server certificate for 127.0.0.1, a client
//! certificate, one that expired in 2020, and a foreign CA with a client
//! certificate of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::EtcdTls;

/// PEM files in one directory; every certificate but the foreign ones is
/// signed by `ca`, and every client certificate is for `client_key`.
#[derive(Clone, Debug)]
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Valid on 1 January 2020 only.
    pub expired_client_cert: PathBuf,
    /// A CA with the same name as `ca` and a key of its own, as two
    /// clusters' kubeadm CAs are (`etcd-ca` both).
    pub foreign_ca: PathBuf,
    pub foreign_client_cert: PathBuf,
}

// `openssl x509 -req` cannot backdate; `openssl ca` can, with a config and
// an index file of its own.
const SCRIPT: &str = "set -e; ec='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'; \
    for ca in ca foreign-ca; do openssl req -x509 $ec -keyout $ca.key -out $ca.crt -days 2 -subj '/CN=tresor test CA'; done; \
    openssl req $ec -keyout server.key -out server.csr -subj /CN=127.0.0.1; \
    echo subjectAltName=IP:127.0.0.1 > server.ext; \
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext; \
    openssl req $ec -keyout client.key -out client.csr -subj /CN=tresor; \
    echo extendedKeyUsage=clientAuth > client.ext; \
    for ca in ca foreign-ca; do \
        openssl x509 -req -in client.csr -CA $ca.crt -CAkey $ca.key -CAcreateserial -out $ca-client.crt -days 2 -extfile client.ext; \
    done; \
    printf '[ca]\\ndefault_ca=d\\n[d]\\ndatabase=index.txt\\nnew_certs_dir=.\\nserial=ca.srl\\ndefault_md=sha256\\npolicy=p\\nx509_extensions=x\\n[p]\\ncommonName=supplied\\n[x]\\nextendedKeyUsage=clientAuth\\n' > ca.cnf; \
    : > index.txt; \
    openssl ca -batch -notext -config ca.cnf -cert ca.crt -keyfile ca.key -in client.csr -out expired.crt \
        -startdate 20200101000000Z -enddate 20200102000000Z";

impl Certs {
    /// Make every file in `dir` (created if missing); panics with openssl's
    /// message if it fails.
    pub fn make(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).expect("certificate directory");
        let out = Command::new("sh").arg("-c").arg(SCRIPT).current_dir(dir).output().expect("openssl (Debian package openssl)");
        assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
        let file = |name: &str| dir.join(name);
        Certs {
            ca: file("ca.crt"),
            server_cert: file("server.crt"),
            server_key: file("server.key"),
            client_cert: file("ca-client.crt"),
            client_key: file("client.key"),
            expired_client_cert: file("expired.crt"),
            foreign_ca: file("foreign-ca.crt"),
            foreign_client_cert: file("foreign-ca-client.crt"),
        }
    }

    /// An etcd member serving `server_cert` to clients of `ca` only, its
    /// harness's etcdctl presenting `client_cert`.
    pub fn etcd_tls(&self) -> EtcdTls {
        EtcdTls {
            ca: self.ca.clone(),
            server_cert: self.server_cert.clone(),
            server_key: self.server_key.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_after(cert: &Path) -> String {
        let out = Command::new("openssl").args(["x509", "-noout", "-enddate", "-in"]).arg(cert).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn verifies(ca: &Path, cert: &Path) -> bool {
        Command::new("openssl").args(["verify", "-CAfile"]).arg(ca).arg(cert).output().unwrap().status.success()
    }

    #[test]
    fn each_certificate_is_what_its_name_says() {
        let dir = tempfile::tempdir().unwrap();
        let c = Certs::make(dir.path());
        assert_eq!(not_after(&c.expired_client_cert), "notAfter=Jan  2 00:00:00 2020 GMT");
        assert!(!verifies(&c.ca, &c.expired_client_cert), "expired, so openssl refuses it");
        assert!(verifies(&c.ca, &c.server_cert) && verifies(&c.ca, &c.client_cert));
        assert!(verifies(&c.foreign_ca, &c.foreign_client_cert));
        assert!(!verifies(&c.ca, &c.foreign_client_cert), "the foreign CA's certificate is not the CA's");
        assert!(!verifies(&c.foreign_ca, &c.server_cert));
    }
}
