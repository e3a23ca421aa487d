//! A real `redis-server` on a free loopback port, in a temp directory,
//! stopped (SIGKILL) and removed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::net::free_port;

pub struct RedisServer {
    port: u16,
    child: Child,
    dir: TempDir,
}

impl RedisServer {
    /// An empty server. Panics if `redis-server` is missing or never answers.
    pub fn start(extra: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new().prefix("tresor-redis-").tempdir().expect("temp dir");
        Self::start_in(dir, extra)
    }

    /// A server that loads `dump.rdb` from `data` (copied into its own directory).
    pub fn with_rdb(rdb: &Path) -> RedisServer {
        let dir = tempfile::Builder::new().prefix("tresor-redis-").tempdir().expect("temp dir");
        std::fs::copy(rdb, dir.path().join("dump.rdb")).expect("copy the RDB");
        Self::start_in(dir, &[])
    }

    /// A server that loads a Redis 7 AOF directory (copied into its own
    /// directory as `appendonlydir`).
    pub fn with_aof(aof_dir: &Path) -> RedisServer {
        let dir = tempfile::Builder::new().prefix("tresor-redis-").tempdir().expect("temp dir");
        let ok = Command::new("cp").arg("-a").arg(aof_dir).arg(dir.path().join("appendonlydir")).status().expect("cp");
        assert!(ok.success(), "copy the AOF directory");
        Self::start_in(dir, &["--appendonly", "yes"])
    }

    fn start_in(dir: TempDir, extra: &[&str]) -> RedisServer {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(dir.path())
            .args(["--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("start redis-server (Debian package redis-server)");
        let server = RedisServer { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.ping().is_none() {
            assert!(Instant::now() < deadline, "redis-server on port {port} did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn ping(&self) -> Option<()> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.write_all(b"*1\r\n$4\r\nPING\r\n").ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).ok()?;
        // A server still loading its RDB answers -LOADING; one with a
        // password, -NOAUTH: it is up.
        (buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH")).then_some(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Run many commands, one per line, through one `redis-cli`.
    pub fn script(&self, commands: &str) {
        let mut child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("run redis-cli");
        child.stdin.take().expect("piped").write_all(commands.as_bytes()).expect("feed redis-cli");
        assert!(child.wait().expect("redis-cli").success());
    }

    /// Run `redis-cli` against this server; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
