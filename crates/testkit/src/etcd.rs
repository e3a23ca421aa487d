//! A real single-member `etcd` on free loopback ports, in a temp directory,
//! killed and removed on drop; `etcdctl` (API v3) for the tests' own use.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::net::free_port;

pub struct EtcdServer {
    port: u16,
    child: Child,
    dir: TempDir,
    tls: Option<EtcdTls>,
}

/// A member that serves TLS only and asks every client for a certificate
/// (`--client-cert-auth`), as a kubeadm control plane's etcd does.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// What the harness's own etcdctl presents.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        let dir = tempfile::Builder::new().prefix("tresor-etcd-").tempdir().expect("temp dir");
        let data = dir.path().join("data");
        Self::start_on(dir, &data, None)
    }

    pub fn start_tls(tls: EtcdTls) -> EtcdServer {
        let dir = tempfile::Builder::new().prefix("tresor-etcd-").tempdir().expect("temp dir");
        let data = dir.path().join("data");
        Self::start_on(dir, &data, Some(tls))
    }

    /// A member serving an existing data directory (e.g. one restored from
    /// a snapshot), copied into the server's own directory first.
    pub fn with_data(data: &Path) -> EtcdServer {
        let dir = tempfile::Builder::new().prefix("tresor-etcd-").tempdir().expect("temp dir");
        let own = dir.path().join("data");
        let ok = Command::new("cp").arg("-a").arg(data).arg(&own).status().expect("cp");
        assert!(ok.success());
        Self::start_on(dir, &own, None)
    }

    /// A server on the data directory `data` itself (not a copy): what a
    /// restore into a live member's directory meets.
    pub fn in_place(data: &Path) -> EtcdServer {
        let dir = tempfile::Builder::new().prefix("tresor-etcd-").tempdir().expect("temp dir");
        Self::start_on(dir, data, None)
    }

    fn start_on(dir: TempDir, data: &Path, tls: Option<EtcdTls>) -> EtcdServer {
        let (port, peer) = (free_port(), free_port());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut etcd = Command::new("etcd");
        if let Some(t) = &tls {
            etcd.arg("--cert-file").arg(&t.server_cert).arg("--key-file").arg(&t.server_key);
            etcd.arg("--trusted-ca-file").arg(&t.ca).arg("--client-cert-auth");
        }
        let child = etcd
            .args(["--name", "tresor", "--data-dir"])
            .arg(data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("tresor={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        let server = EtcdServer { port, child, dir, tls };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server.ctl(&["endpoint", "health"]).status.success() {
            assert!(Instant::now() < deadline, "etcd on port {port} did not become healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `etcdctl` against this member.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut ctl = Command::new("etcdctl");
        ctl.env("ETCDCTL_API", "3").args(["--endpoints", &format!("127.0.0.1:{}", self.port)]);
        if let Some(t) = &self.tls {
            ctl.arg("--cacert").arg(&t.ca).arg("--cert").arg(&t.client_cert).arg("--key").arg(&t.client_key);
        }
        ctl.args(args).output().expect("run etcdctl")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
