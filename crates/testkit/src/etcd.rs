//! A real single-member `etcd` on free loopback ports, in a temp directory,
//! killed and removed on drop; `etcdctl` (API v3) for the tests' own use.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::net::free_port;

pub struct EtcdServer {
    port: u16,
    child: Child,
    dir: TempDir,
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        let dir = tempfile::Builder::new().prefix("tresor-etcd-").tempdir().expect("temp dir");
        let data = dir.path().join("data");
        Self::start_on(dir, &data)
    }

    /// A member serving an existing data directory (e.g. one restored from
    /// a snapshot), copied into the server's own directory first.
    pub fn with_data(data: &Path) -> EtcdServer {
        let dir = tempfile::Builder::new().prefix("tresor-etcd-").tempdir().expect("temp dir");
        let own = dir.path().join("data");
        let ok = Command::new("cp").arg("-a").arg(data).arg(&own).status().expect("cp");
        assert!(ok.success());
        Self::start_on(dir, &own)
    }

    fn start_on(dir: TempDir, data: &Path) -> EtcdServer {
        let (port, peer) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "tresor", "--data-dir"])
            .arg(data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("tresor={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (Debian package etcd-server)");
        let server = EtcdServer { port, child, dir };
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
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &format!("127.0.0.1:{}", self.port)])
            .args(args)
            .output()
            .expect("run etcdctl")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
