//! `rclone serve webdav` over a temp directory, with basic authentication.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::net::free_port;
use crate::tcp::{Spawned, spawn_listening};

const USER: &str = "tresor";
const PASSWORD: &str = "tresor-webdav-secret";

/// Where rclone is; `TRESOR_RCLONE` overrides (scripts/test.sh installs Debian's).
fn rclone_bin() -> PathBuf {
    std::env::var_os("TRESOR_RCLONE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("rclone"))
}

/// A WebDAV server on a free loopback port whose files lie under
/// [`root`](Self::root). Dropping it stops rclone and deletes the files.
pub struct WebdavServer {
    _child: Spawned,
    port: u16,
    dir: TempDir,
}

impl WebdavServer {
    pub fn start() -> WebdavServer {
        let dir = tempfile::Builder::new().prefix("tresor-webdav-").tempdir().expect("temp dir for webdav");
        fs::create_dir(dir.path().join("files")).expect("files dir");
        let port = free_port();
        let mut cmd = Command::new(rclone_bin());
        cmd.args(["serve", "webdav", "--config", "/dev/null", "--addr", &format!("127.0.0.1:{port}"), "--user", USER, "--pass", PASSWORD])
            .arg(dir.path().join("files"));
        let child = spawn_listening(cmd, port, &dir.path().join("rclone.log"));
        WebdavServer { _child: child, port, dir }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory served as `/`.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    pub fn password(&self) -> &'static str {
        PASSWORD
    }

    /// The variables tresor reads the credentials from.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("TRESOR_WEBDAV_USER".into(), USER.into()), ("TRESOR_WEBDAV_PASSWORD".into(), PASSWORD.into())]
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
