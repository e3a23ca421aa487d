//! A real PostgreSQL 15 cluster: `initdb` in a temp dir, started on a free
//! loopback port, stopped (immediate) and removed on drop. As root it runs
//! as the `postgres` user, which PostgreSQL requires.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::net::free_port;

pub struct PostgresServer {
    port: u16,
    dir: TempDir,
    bin: PathBuf,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

impl PostgresServer {
    /// Directory of the PostgreSQL 15 programs (`TRESOR_PG_BIN` overrides).
    pub fn bin_dir() -> PathBuf {
        std::env::var_os("TRESOR_PG_BIN").map(PathBuf::from).unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into())
    }

    pub fn start() -> PostgresServer {
        Self::start_with("")
    }

    /// A new cluster with `conf` appended to its `postgresql.conf`.
    pub fn start_with(conf: &str) -> PostgresServer {
        let dir = tempfile::Builder::new().prefix("tresor-pg-").tempdir().expect("temp dir");
        let server = PostgresServer { port: free_port(), dir, bin: Self::bin_dir() };
        server.own();
        server.run_as_owner("initdb", &["-D", &server.data(), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        let conf_file = server.dir.path().join("data/postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_file).expect("postgresql.conf");
        text.push_str(conf);
        std::fs::write(&conf_file, text).expect("write postgresql.conf");
        server.launch();
        server
    }

    /// Start the data directory `dir/data` (a restored one), on a new port.
    /// As root, `dir` and everything in it must be the postgres user's
    /// already: a chown here would race a process still writing into it
    /// (tresor's WAL prefetcher).
    pub fn adopt(dir: TempDir) -> PostgresServer {
        let server = PostgresServer { port: free_port(), dir, bin: Self::bin_dir() };
        server.launch();
        server
    }

    fn own(&self) {
        if is_root() {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(self.dir.path()).status().expect("chown");
            assert!(ok.success(), "chown the cluster directory to postgres");
        }
    }

    fn launch(&self) {
        let started = start(&self.bin, self.dir.path(), self.port);
        assert!(started, "pg_ctl start failed; the server's log:\n{}", self.log());
    }

    /// Start the data directory `dir/data` (a restored one), whose server
    /// must stop by itself within a minute (its recovery stopped): the
    /// server's log. Whether `pg_ctl` saw it start depends on how far
    /// recovery got before it stopped, so only the stop counts. `dir`
    /// stays the caller's, to start again.
    pub fn start_refused(dir: &TempDir) -> String {
        start(&Self::bin_dir(), dir.path(), free_port());
        let pid = dir.path().join("data/postmaster.pid");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while pid.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        assert!(!pid.exists(), "the server is still running; its log:\n{log}");
        log
    }

    /// Wait (up to a minute) until `sql` answers `want`; the last answer.
    pub fn wait_for(&self, db: &str, sql: &str, want: &str) -> String {
        let mut got = String::new();
        for _ in 0..600 {
            let out = self.client("psql", db).args(["-X", "-A", "-t", "-c", sql]).output().expect("run psql");
            got = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if got == want {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        got
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// `postgres://postgres@127.0.0.1:PORT`: the cluster.
    pub fn cluster_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run_as_owner(&self, program: &str, args: &[&str]) {
        let status = as_owner(&self.bin.join(program), args).status();
        assert!(status.expect("run a PostgreSQL program").success(), "{program} {args:?} failed; the server's log:\n{}", self.log());
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn client(&self, program: &str, db: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", db]);
        c
    }

    /// One SQL statement's result as psql prints it unaligned, trimmed.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.client("psql", db).args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]).output().expect("run psql");
        assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `pgbench -i -s SCALE` into `db`.
    pub fn pgbench_init(&self, db: &str, scale: u32) {
        let out = self.client("pgbench", db).args(["-i", "-q", "-s", &scale.to_string()]).output().expect("run pgbench");
        assert!(out.status.success(), "pgbench: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let data = self.data();
        let _ = as_owner(&exe, &["-D", data.as_str(), "-m", "immediate", "-w", "stop"]).output();
    }
}

/// A PostgreSQL program run as the cluster's owner: the postgres user when
/// run as root, which PostgreSQL requires.
fn as_owner(exe: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe).args(args).current_dir("/");
        c
    } else {
        let mut c = Command::new(exe);
        c.args(args);
        c
    }
}

/// `pg_ctl start` of `dir/data` on `port`, logging to `dir/log`; whether
/// the server started.
fn start(bin: &Path, dir: &Path, port: u16) -> bool {
    let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", dir.display());
    let (data, log) = (dir.join("data").display().to_string(), dir.join("log").display().to_string());
    let args = ["-D", &data, "-o", &opts, "-l", &log, "-w", "-t", "60", "start"];
    as_owner(&bin.join("pg_ctl"), &args).status().expect("run pg_ctl").success()
}
