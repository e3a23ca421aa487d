//! OpenSSH's own sshd, run for one test: its own host key, one authorized
//! client key and a config in a temp dir, on a free loopback port.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::net::free_port;
use crate::tcp::{Spawned, spawn_listening};

/// Where sshd is; `TRESOR_SSHD` overrides (scripts/test.sh installs Debian's).
fn sshd_bin() -> PathBuf {
    std::env::var_os("TRESOR_SSHD").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/sbin/sshd"))
}

/// An SFTP server (`internal-sftp`) that lets the current user in with
/// [`key`](Self::key) only. Dropping it stops sshd and deletes its files.
pub struct SshServer {
    _child: Spawned,
    port: u16,
    dir: TempDir,
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tresor-test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    String::from_utf8(out.stdout).expect("user name").trim().to_string()
}

impl SshServer {
    pub fn start() -> SshServer {
        let dir = tempfile::Builder::new().prefix("tresor-sshd-").tempdir().expect("temp dir for sshd");
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        keygen(&d.join("stranger_key"));
        fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
        let port = free_port();
        // StrictModes would refuse keys under /tmp, which anyone may write to.
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\n",
            d = d.display()
        );
        fs::write(d.join("sshd_config"), config).expect("write sshd_config");
        // As root, sshd insists on its privilege separation directory.
        let _ = fs::create_dir_all("/run/sshd");
        let mut cmd = Command::new(sshd_bin());
        cmd.args(["-D", "-e", "-f"]).arg(d.join("sshd_config"));
        let child = spawn_listening(cmd, port, &d.join("sshd.log"));
        SshServer { _child: child, port, dir }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> String {
        current_user()
    }

    /// The private key the server accepts.
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// A valid private key the server does not accept.
    pub fn stranger_key(&self) -> PathBuf {
        self.dir.path().join("stranger_key")
    }

    /// A known_hosts file that vouches for this server's host key.
    pub fn known_hosts(&self) -> PathBuf {
        let path = self.dir.path().join("known_hosts");
        let public = fs::read_to_string(self.dir.path().join("host_key.pub")).expect("host key");
        let mut parts = public.split_whitespace();
        let (kind, key) = (parts.next().expect("key type"), parts.next().expect("key"));
        fs::write(&path, format!("[127.0.0.1]:{} {kind} {key}\n", self.port)).expect("write known_hosts");
        path
    }

    /// A directory on the server's file system that the tests may use.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
