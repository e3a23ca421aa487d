//! `gcp-storage-emulator` (PyPI) over a temp directory: Google Cloud
//! Storage's JSON API with one bucket and no authentication.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::net::free_port;
use crate::tcp::{Spawned, spawn_listening};

const BUCKET: &str = "tresor";

/// Where the emulator is; `TRESOR_GCS_EMULATOR` overrides (scripts/test.sh installs it with pip).
fn emulator_bin() -> PathBuf {
    std::env::var_os("TRESOR_GCS_EMULATOR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("gcp-storage-emulator"))
}

/// A GCS endpoint on a free loopback port with the bucket
/// [`bucket`](Self::bucket), whose objects lie as files under
/// [`root`](Self::root). Dropping it stops the emulator and deletes them.
pub struct GcsServer {
    _child: Spawned,
    port: u16,
    dir: TempDir,
}

impl GcsServer {
    pub fn start() -> GcsServer {
        let dir = tempfile::Builder::new().prefix("tresor-gcs-").tempdir().expect("temp dir for the GCS emulator");
        let port = free_port();
        let mut cmd = Command::new(emulator_bin());
        cmd.arg("--data-dir").arg(dir.path()).args([
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--default-bucket",
            BUCKET,
            "--quiet",
        ]);
        let child = spawn_listening(cmd, port, &dir.path().join("emulator.log"));
        GcsServer { _child: child, port, dir }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bucket that exists.
    pub fn bucket(&self) -> &'static str {
        BUCKET
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where the bucket's objects are, one file per object name.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join(".cloudstorage").join(BUCKET)
    }

    /// The variable Google's own clients read an emulator's address from.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("STORAGE_EMULATOR_HOST".into(), self.endpoint())]
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
