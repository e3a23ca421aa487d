//! Scratch servers for drills: a `redis-server`, an `etcd` member or a
//! PostgreSQL cluster started on free loopback ports over restored data in a
//! scratch directory, never anything the plan backs up. Each is stopped when
//! dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn output(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot run {what}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{what}: {}", err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("failed").trim()));
    }
    Ok(text)
}

/// Poll `f` for up to `limit`; its last error if it never succeeds.
fn wait<T>(limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `redis-server` loading `dir` (dump.rdb, or an AOF directory).
pub struct Redis {
    port: u16,
    _child: Guard,
}

impl Redis {
    pub fn start(dir: &Path, aof_dir: Option<&str>) -> Result<Redis, String> {
        let port = free_port()?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"]).arg(dir).args(["--save", "", "--daemonize", "no"]);
        match aof_dir {
            Some(name) => cmd.args(["--appendonly", "yes", "--appenddirname", name]),
            None => cmd.args(["--appendonly", "no", "--dbfilename", "dump.rdb"]),
        };
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| format!("cannot start redis-server: {e}"))?;
        let r = Redis { port, _child: Guard(child) };
        wait(Duration::from_secs(120), || r.keys())?;
        Ok(r)
    }

    pub fn exists(&self, key: &str) -> Result<bool, String> {
        Ok(output(Command::new("redis-cli").args(["-p", &self.port.to_string(), "EXISTS", key]), "redis-cli EXISTS")? == "1")
    }

    /// Keys in the loaded data set (an error while it still loads).
    pub fn keys(&self) -> Result<u64, String> {
        let text = output(Command::new("redis-cli").args(["-p", &self.port.to_string(), "DBSIZE"]), "redis-cli DBSIZE")?;
        text.parse().map_err(|_| format!("redis-cli DBSIZE: {text}"))
    }
}

/// An etcd member serving a restored data directory.
pub struct Etcd {
    endpoint: String,
    _child: Guard,
}

impl Etcd {
    pub fn start(data: &Path) -> Result<Etcd, String> {
        let (port, peer) = (free_port()?, free_port()?);
        let client = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "drill", "--data-dir"])
            .arg(data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client, "--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url, "--initial-cluster", &format!("drill={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start etcd: {e}"))?;
        let e = Etcd { endpoint: client, _child: Guard(child) };
        wait(Duration::from_secs(60), || e.count())?;
        Ok(e)
    }

    /// (revision, key count): a range answer counts every match whatever
    /// its limit (etcdctl 3.4 has no --count-only).
    pub fn count(&self) -> Result<(i64, i64), String> {
        let text = output(
            Command::new("etcdctl").env("ETCDCTL_API", "3").args([
                "--endpoints",
                &self.endpoint,
                "get",
                "",
                "--prefix",
                "--keys-only",
                "--limit",
                "1",
                "-w",
                "json",
            ]),
            "etcdctl get",
        )?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("etcdctl get: {e}"))?;
        Ok((v["header"]["revision"].as_i64().unwrap_or(0), v["count"].as_i64().unwrap_or(0)))
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A PostgreSQL cluster in a scratch directory: a new one (`initdb`) or a
/// restored data directory. As root it runs as the `postgres` user.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
}

impl Postgres {
    pub fn bin_dir() -> PathBuf {
        std::env::var_os("TRESOR_PG_BIN").map(PathBuf::from).unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into())
    }

    fn as_owner(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe).current_dir("/");
            c
        } else {
            Command::new(exe)
        }
    }

    /// `initdb` a new cluster in `dir/data`, or start the one there with `fresh` false.
    pub fn start(dir: &Path, fresh: bool) -> Result<Postgres, String> {
        let pg = Postgres { port: free_port()?, bin: Self::bin_dir(), data: dir.join("data") };
        if is_root() {
            output(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir), "chown")?;
        }
        if fresh {
            output(
                pg.as_owner("initdb").arg("-D").arg(&pg.data).args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]),
                "initdb",
            )?;
        }
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", pg.port, dir.display());
        let log = dir.join("server.log");
        output(
            pg.as_owner("pg_ctl").arg("-D").arg(&pg.data).args(["-o", &opts, "-l"]).arg(&log).args(["-w", "-t", "120", "start"]),
            "pg_ctl start",
        )?;
        Ok(pg)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// One value from a query.
    pub fn query(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut c = Command::new(self.bin.join("psql"));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]);
        output(&mut c, &format!("query {sql:?}"))
    }

    /// Wait until recovery has ended (a restored cluster promotes itself).
    pub fn recovered(&self) -> Result<(), String> {
        wait(Duration::from_secs(600), || match self.query("postgres", "SELECT pg_is_in_recovery()")?.as_str() {
            "f" => Ok(()),
            other => Err(format!("still in recovery ({other})")),
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.as_owner("pg_ctl").arg("-D").arg(&self.data).args(["-m", "immediate", "-w", "stop"]).output();
    }
}
