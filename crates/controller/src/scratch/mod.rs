//! Scratch servers for drills: a `redis-server`, an `etcd` member (over
//! TLS, with certificates of a CA made for the drill) or a PostgreSQL
//! cluster started on free loopback ports over restored data in a scratch
//! directory, never anything the plan backs up. Each is stopped when
//! dropped.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tresor_sources::last_line;

mod redis_log;

use redis_log::redis_reason;

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Whether another process holds `port` on loopback: what tells a server
/// that exited at start because its port was taken from one that failed
/// for a reason of its own (whose error is then the drill's).
fn taken(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
}

/// Whether a server that exited at start lost one of `ports`: held now, or
/// held when it bound and let go since (a process that probed for a free
/// port of its own), which only the server's log still tells, in the
/// system's words for `EADDRINUSE`.
fn lost_port(ports: &[u16], log: &Path) -> bool {
    let said = std::fs::read_to_string(log).unwrap_or_default().to_ascii_lowercase();
    ports.iter().any(|p| taken(*p)) || said.contains("address already in use")
}

/// How often a scratch server is started on another port when the one
/// found free was taken before the server could bind it.
const PORT_TRIES: usize = 3;

/// `start_on` a port from `ports` (a free one, in a drill), and on others
/// while it answers `None`: the server exited at start as its port was
/// taken in between. [`PORT_TRIES`] tries.
fn on_free_port<T>(
    what: &str,
    mut ports: impl FnMut() -> Result<u16, String>,
    mut start_on: impl FnMut(u16) -> Result<Option<T>, String>,
) -> Result<T, String> {
    let mut port = ports()?;
    for _ in 1..PORT_TRIES {
        match start_on(port)? {
            Some(server) => return Ok(server),
            None => port = ports()?,
        }
    }
    start_on(port)?.ok_or_else(|| format!("{what} exited at start: port {port} taken"))
}

fn output(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot run {what}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(format!("{what}: {}", last_line(&String::from_utf8_lossy(&out.stderr)).map_or("failed", str::trim)));
    }
    Ok(text)
}

/// `cmd` with its output and errors both to a new log file `dir/name`:
/// what a server that exits at start says why in.
fn log_to(cmd: &mut Command, dir: &Path, name: &str) -> Result<PathBuf, String> {
    let path = dir.join(name);
    let file = tresor_engine::fsmeta::create_private(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let copy = file.try_clone().map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(copy);
    Ok(path)
}

/// A server's exit at start with its own reason: what `reason` picks from
/// its `log`.
fn exit_error(what: &str, status: ExitStatus, log: &Path, reason: fn(&str) -> Option<&str>) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    match reason(&String::from_utf8_lossy(&text)) {
        Some(line) => format!("{what} exited at start ({status}): {line}"),
        None => format!("{what} exited at start ({status})"),
    }
}

/// The last line of a server's log, for a server (etcd) whose last word
/// at start is its reason.
fn last_log_line(log: &str) -> Option<&str> {
    last_line(log).map(str::trim)
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

/// The file a scratch server's pid is recorded in, in its directory, as
/// soon as it starts: a drill killed before it could stop the server
/// leaves it, and the next rehearsal stops what it names (PostgreSQL's own
/// `postmaster.pid` serves the same end).
const SERVER_MARKER: &str = ".tresor-scratch-server";

impl Guard {
    fn recorded(child: Child, dir: &Path) -> Result<Guard, String> {
        let g = Guard(child);
        let marker = dir.join(SERVER_MARKER);
        std::fs::write(&marker, format!("{}\n", g.0.id())).map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
        Ok(g)
    }
}

/// Stop every scratch server a drill started below `root` and left running:
/// each marker's (or `postmaster.pid`'s) process, if it still serves that
/// directory (a pid the system gave to another process since is left
/// alone). What could not be stopped, and why.
pub fn stop_servers(root: &Path) -> Vec<String> {
    let mut markers = Vec::new();
    find_markers(root, &mut markers);
    let mut left = Vec::new();
    for (file, dir, signal) in markers {
        let pid = std::fs::read_to_string(&file).ok().and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
        let Some(pid) = pid.filter(|p| *p > 0) else { continue };
        if !serves(pid, &dir) {
            continue;
        }
        // SAFETY: kill(2) with a pid and a signal touches no memory.
        unsafe { libc::kill(pid, signal) };
        if wait(Duration::from_secs(60), || if running(pid) { Err(format!("pid {pid}")) } else { Ok(()) }).is_err() {
            left.push(format!("the scratch server {pid} in {} does not stop", dir.display()));
        }
    }
    left
}

/// Markers below `dir`: (file, the server's directory, the signal that stops it).
fn find_markers(dir: &Path, out: &mut Vec<(PathBuf, PathBuf, i32)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        match e.file_name().to_str() {
            Some(SERVER_MARKER) => out.push((path, dir.to_path_buf(), libc::SIGKILL)),
            // PostgreSQL's immediate shutdown: the postmaster takes its backends with it.
            Some("postmaster.pid") => out.push((path, dir.to_path_buf(), libc::SIGQUIT)),
            _ if e.file_type().is_ok_and(|t| t.is_dir()) => find_markers(&path, out),
            _ => {}
        }
    }
}

/// Whether `pid` is the server of `dir`: its working directory (Redis and
/// PostgreSQL move there, and Redis rewrites its command line) or its command line names it.
fn serves(pid: i32, dir: &Path) -> bool {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cwd.as_deref() == Some(dir) || String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy())
}

/// Whether `pid` runs (a zombie, dead but not yet reaped by its new parent, does not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z"))
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `redis-server` loading `dir` (dump.rdb, or an AOF directory).
pub struct Redis {
    port: u16,
    child: Guard,
}

/// What a scratch Redis holds once it loaded: its keys, those it dropped
/// as expired while loading, and the databases that hold keys.
#[derive(Debug)]
pub struct Loaded {
    pub keys: u64,
    pub expired: u64,
    pub databases: Vec<u64>,
}

impl Redis {
    pub fn start(dir: &Path, aof_dir: Option<&str>) -> Result<Redis, String> {
        Self::start_with(dir, aof_dir, free_port)
    }

    /// [`start`](Self::start) with its port from `ports`.
    fn start_with(dir: &Path, aof_dir: Option<&str>, ports: impl FnMut() -> Result<u16, String>) -> Result<Redis, String> {
        on_free_port("redis-server", ports, |port| Self::start_on(port, dir, aof_dir))
    }

    /// The server on `port` once it has loaded `dir`; `None` if it exited
    /// first with the port taken, its own error (from its log,
    /// `dir/redis-server.log`: [`redis_reason`]) if it exited for another reason. Until it is
    /// ours that answers, a server of someone else's on the port would
    /// otherwise pass for the drill's (a listener that never answers holds
    /// a try for the client's 60 s).
    fn start_on(port: u16, dir: &Path, aof_dir: Option<&str>) -> Result<Option<Redis>, String> {
        let mut cmd = Command::new("redis-server");
        tresor_sources::without_secrets(&mut cmd);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"]).arg(dir).args(["--save", "", "--daemonize", "no"]);
        match aof_dir {
            Some(name) => cmd.args(["--appendonly", "yes", "--appenddirname", name]),
            None => cmd.args(["--appendonly", "no", "--dbfilename", "dump.rdb"]),
        };
        let log = log_to(&mut cmd, dir, "redis-server.log")?;
        let child = cmd.spawn().map_err(|e| format!("cannot start redis-server: {e}"))?;
        let mut r = Redis { port, child: Guard::recorded(child, dir)? };
        let pid = r.child.0.id();
        let exit = wait(Duration::from_secs(120), || {
            if let Some(status) = r.child.0.try_wait().map_err(|e| e.to_string())? {
                return Ok(Some(status));
            }
            let answering = tresor_sources::RedisSource::parse(&r.url()).and_then(|s| s.server_pid()).map_err(|e| e.to_string())?;
            match answering {
                Some(p) if p == pid => r.keys().map(|_| None),
                _ => Err(format!("another server answers on 127.0.0.1:{port}")),
            }
        })?;
        match exit {
            None => Ok(Some(r)),
            Some(_) if lost_port(&[port], &log) => Ok(None),
            Some(status) => Err(exit_error("redis-server", status, &log, redis_reason)),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn exists(&self, key: &str) -> Result<bool, String> {
        Ok(output(Command::new("redis-cli").args(["-p", &self.port.to_string(), "EXISTS", key]), "redis-cli EXISTS")? == "1")
    }

    /// Once loaded: the keys of every database, and those the load dropped
    /// as expired (Redis 7's `rdb_last_load_keys_expired`; 0 before it).
    pub fn loaded(&self) -> Result<Loaded, String> {
        let source = tresor_sources::RedisSource::parse(&self.url()).map_err(|e| e.to_string())?;
        let (keys, databases) = source.keyspace().map_err(|e| e.to_string())?;
        let info = output(Command::new("redis-cli").args(["-p", &self.port.to_string(), "INFO", "persistence"]), "redis-cli INFO")?;
        let expired = info.lines().find_map(|l| l.trim().strip_prefix("rdb_last_load_keys_expired:")?.parse().ok()).unwrap_or(0);
        Ok(Loaded { keys, expired, databases })
    }

    /// Keys in database 0 (an error while the data set still loads).
    pub fn keys(&self) -> Result<u64, String> {
        let text = output(Command::new("redis-cli").args(["-p", &self.port.to_string(), "DBSIZE"]), "redis-cli DBSIZE")?;
        text.parse().map_err(|_| format!("redis-cli DBSIZE: {text}"))
    }
}

/// The drill's own CA and its certificates for the scratch etcd member
/// and for tresor, as PEM files only this user may read, in the drill's
/// scratch directory (removed with it). The CA's key never leaves memory.
#[derive(Clone)]
struct EtcdTls {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// Valid from yesterday to a week ahead: longer than any drill, so a
/// certificate left behind by a killed drill is soon worthless.
fn validity(params: &mut CertificateParams) {
    let day = |d: chrono::NaiveDate| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    let today = chrono::Utc::now().date_naive();
    params.not_before = day(today - chrono::Days::new(1));
    params.not_after = day(today + chrono::Days::new(7));
}

/// A key and a certificate for it, signed by `issuer`: (certificate PEM, key PEM).
fn leaf(cn: &str, sans: &[&str], usages: &[ExtendedKeyUsagePurpose], issuer: &Issuer<KeyPair>) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = usages.to_vec();
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    Ok((params.signed_by(&key, issuer)?.pem(), key.serialize_pem()))
}

impl EtcdTls {
    fn make(dir: &Path) -> Result<EtcdTls, String> {
        let fail = |e: rcgen::Error| format!("cannot make the scratch member's certificates: {e}");
        let ca_key = KeyPair::generate().map_err(fail)?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name.push(DnType::CommonName, "tresor drill CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut ca);
        let ca_pem = ca.self_signed(&ca_key).map_err(fail)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        // The member presents its certificate to peers too, as a client.
        let both = [ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let (server_cert, server_key) = leaf("tresor drill etcd", &["127.0.0.1"], &both, &issuer).map_err(fail)?;
        // A member whose restored data has auth enabled takes a client
        // certificate's common name as the user; root exists wherever
        // auth is enabled, and may read every key.
        let (client_cert, client_key) = leaf("root", &[], &[ExtendedKeyUsagePurpose::ClientAuth], &issuer).map_err(fail)?;
        std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let write = |name: &str, pem: &str| -> Result<PathBuf, String> {
            let path = dir.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            f.write_all(pem.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(path)
        };
        Ok(EtcdTls {
            ca: write("ca.crt", &ca_pem)?,
            server_cert: write("server.crt", &server_cert)?,
            server_key: write("server.key", &server_key)?,
            client_cert: write("client.crt", &client_cert)?,
            client_key: write("client.key", &client_key)?,
        })
    }
}

/// An etcd member serving a restored data directory over TLS only, to
/// clients with a certificate of the drill's CA: the data may be a
/// cluster's Secrets, and any local process could otherwise read them.
pub struct Etcd {
    port: u16,
    tls: EtcdTls,
    _child: Guard,
}

impl Etcd {
    /// Start a member on `data`, with certificates made in `tls_dir`.
    pub fn start(data: &Path, tls_dir: &Path) -> Result<Etcd, String> {
        Self::start_with(data, tls_dir, free_port)
    }

    /// [`start`](Self::start) with its client port from `ports`.
    fn start_with(data: &Path, tls_dir: &Path, ports: impl FnMut() -> Result<u16, String>) -> Result<Etcd, String> {
        if tls_dir.to_string_lossy().contains('&') {
            return Err(format!("the scratch directory {} holds '&', which an etcd:// URL cannot carry", tls_dir.display()));
        }
        let tls = EtcdTls::make(tls_dir)?;
        on_free_port("etcd", ports, |port| Self::start_on(port, data, &tls, tls_dir))
    }

    /// The member serving on `port` once it answers; `None` if it exited
    /// first with its client or peer port taken (it binds both before it
    /// opens `data`, so the next try finds the data as it was), its own
    /// error (the last line of `tls_dir/etcd.log`) if for another reason.
    fn start_on(port: u16, data: &Path, tls: &EtcdTls, tls_dir: &Path) -> Result<Option<Etcd>, String> {
        let peer = free_port()?;
        let client = format!("https://127.0.0.1:{port}");
        // etcd serves its whole client API on the peer port as well, so
        // the peer port wants TLS and a client certificate just as much.
        let peer_url = format!("https://127.0.0.1:{peer}");
        let mut cmd = Command::new("etcd");
        tresor_sources::without_secrets(&mut cmd);
        cmd.args(["--name", "drill", "--data-dir"])
            .arg(data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client, "--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url, "--initial-cluster", &format!("drill={peer_url}")]);
        for side in ["", "peer-"] {
            cmd.arg(format!("--{side}cert-file")).arg(&tls.server_cert).arg(format!("--{side}key-file")).arg(&tls.server_key);
            cmd.arg(format!("--{side}trusted-ca-file")).arg(&tls.ca).arg(format!("--{side}client-cert-auth"));
        }
        let log = log_to(&mut cmd, tls_dir, "etcd.log")?;
        let child = cmd.spawn().map_err(|e| format!("cannot start etcd: {e}"))?;
        let mut member = Etcd { port, tls: tls.clone(), _child: Guard::recorded(child, tls_dir)? };
        let exited = wait(Duration::from_secs(60), || match member._child.0.try_wait().map_err(|e| e.to_string())? {
            Some(status) => Ok(Some(status)),
            None => member.count().map(|_| None),
        })?;
        match exited {
            None => Ok(Some(member)),
            Some(_) if lost_port(&[port, peer], &log) => Ok(None),
            Some(status) => Err(exit_error("etcd", status, &log, last_log_line)),
        }
    }

    /// The member's client URL.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// (revision, key count) of the member's data: a range answer counts
    /// every match whatever its limit (etcdctl 3.4 has no --count-only).
    pub fn count(&self) -> Result<(i64, i64), String> {
        let tls = &self.tls;
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3").args(["--endpoints", &self.endpoint()]);
        cmd.arg("--cacert").arg(&tls.ca).arg("--cert").arg(&tls.client_cert).arg("--key").arg(&tls.client_key);
        cmd.args(["get", "", "--prefix", "--keys-only", "--limit", "1", "-w", "json"]);
        let text = output(&mut cmd, "etcdctl get")?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("etcdctl get: {e}"))?;
        Ok((v["header"]["revision"].as_i64().unwrap_or(0), v["count"].as_i64().unwrap_or(0)))
    }

    /// The member's etcd version, as tresor's own client reads it over TLS
    /// with the drill's client certificate.
    pub fn version(&self) -> Result<String, String> {
        let (tls, port) = (&self.tls, self.port);
        let url = format!(
            "etcd://127.0.0.1:{port}?cacert={}&cert={}&key={}",
            tls.ca.display(),
            tls.client_cert.display(),
            tls.client_key.display()
        );
        member_status(&url).map(|s| s.version)
    }
}

fn member_status(url: &str) -> Result<tresor_sources::etcd::MemberStatus, String> {
    // Drills run on a blocking thread (block_in_place), where a runtime of
    // their own may be entered.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("no async runtime: {e}"))?;
    rt.block_on(tresor_sources::etcd::status(url)).map_err(|e| e.to_string())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `bin/program`, run as the `postgres` user when tresor runs as root.
fn as_owner(bin: &Path, program: &str) -> Command {
    let exe = bin.join(program);
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe).current_dir("/");
        c
    } else {
        Command::new(exe)
    };
    tresor_sources::without_secrets(&mut c);
    c
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
        as_owner(&self.bin, program)
    }

    /// `initdb` a new cluster in `dir/data`, or start the one there with `fresh` false.
    pub fn start(dir: &Path, fresh: bool) -> Result<Postgres, String> {
        Self::start_with(dir, fresh, free_port)
    }

    /// [`start`](Self::start) with its port from `ports`.
    fn start_with(dir: &Path, fresh: bool, ports: impl FnMut() -> Result<u16, String>) -> Result<Postgres, String> {
        let (bin, data) = (Self::bin_dir(), dir.join("data"));
        if is_root() {
            output(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir), "chown")?;
        }
        if fresh {
            output(
                as_owner(&bin, "initdb").arg("-D").arg(&data).args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]),
                "initdb",
            )?;
        }
        on_free_port("PostgreSQL", ports, |port| {
            let pg = Postgres { port, bin: bin.clone(), data: data.clone() };
            let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", dir.display());
            let log = dir.join("server.log");
            // pg_ctl appends: an earlier try's words must not speak for this one.
            let _ = std::fs::remove_file(&log);
            let started = output(
                pg.as_owner("pg_ctl").arg("-D").arg(&pg.data).args(["-o", &opts, "-l"]).arg(&log).args(["-w", "-t", "120", "start"]),
                "pg_ctl start",
            );
            let Err(e) = started else { return Ok(Some(pg)) };
            // Stopped first (a server that outlived pg_ctl's wait), so only another process can hold the port.
            drop(pg);
            // The postmaster binds its port before it reads the data, which the next try finds as it was.
            if lost_port(&[port], &log) { Ok(None) } else { Err(e) }
        })
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The port of the member's `--listen-peer-urls`, from its command line.
    fn peer_port(etcd: &Etcd) -> u16 {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", etcd._child.0.id())).unwrap();
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).to_string()).collect();
        let at = args.iter().position(|a| a == "--listen-peer-urls").unwrap();
        args[at + 1].rsplit(':').next().unwrap().parse().unwrap()
    }

    #[test]
    fn a_server_already_on_the_port_never_passes_for_the_drills_redis() {
        let other = tresor_testkit::RedisServer::start(&[]);
        let port = other.port();
        let dir = tempfile::tempdir().unwrap();
        assert!(Redis::start_on(port, dir.path(), None).unwrap().is_none(), "the other server answered for the drill's");
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        assert!(Redis::start_on(port, dir.path(), None).unwrap().is_none(), "a listener that never answers");
        let r = Redis::start(dir.path(), None).unwrap();
        assert_eq!(r.keys().unwrap(), 0);
    }

    /// A port a listener holds, and ports that offer it first, then free ones: the port found free taken before the server binds it.
    fn taken_first() -> (std::net::TcpListener, impl FnMut() -> Result<u16, String>) {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut first = Some(holder.local_addr().unwrap().port());
        (holder, move || first.take().map_or_else(free_port, Ok))
    }

    /// A port held when the server bound it, and let go before the server's
    /// exit was looked at, is told by the server's log.
    #[test]
    fn a_port_lost_for_a_moment_is_told_by_the_servers_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("etcd.log");
        let port = free_port().unwrap();
        std::fs::write(&log, "etcdmain: listen tcp 127.0.0.1:43423: bind: address already in use\n").unwrap();
        assert!(lost_port(&[port], &log));
        std::fs::write(&log, "FATAL:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n").unwrap();
        assert!(lost_port(&[port], &log));
        std::fs::write(&log, "FATAL:  data directory \"/x\" has invalid permissions\n").unwrap();
        assert!(!lost_port(&[port], &log), "a failure of its own");
    }

    #[test]
    fn a_port_taken_before_the_drills_postgresql_binds_it_is_left_for_another() {
        let (holder, ports) = taken_first();
        let held = holder.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let pg = Postgres::start_with(dir.path(), true, ports).unwrap();
        assert_ne!(pg.port, held);
        assert_eq!(pg.query("postgres", "SELECT current_setting('port')").unwrap(), pg.port.to_string());
        let data = pg.query("postgres", "SELECT current_setting('data_directory')").unwrap();
        assert_eq!(data, dir.path().join("data").display().to_string(), "the drill's own cluster answers");
    }

    #[test]
    fn a_postgresql_that_fails_for_its_own_reason_is_not_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut asked = 0;
        let err = Postgres::start_with(dir.path(), false, counted(&mut asked)).err().unwrap();
        let missing = format!("pg_ctl start: pg_ctl: directory \"{}\" does not exist", dir.path().join("data").display());
        assert_eq!((err, asked), (missing, 1), "pg_ctl's reason, after one try");
    }

    /// `free_port`, counting how often it was asked.
    fn counted(asked: &mut usize) -> impl FnMut() -> Result<u16, String> + '_ {
        move || {
            *asked += 1;
            free_port()
        }
    }

    #[test]
    fn a_redis_that_fails_for_its_own_reason_is_started_once_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        // The real case: a dump of an RDB version this redis-server cannot read.
        std::fs::write(dir.path().join("dump.rdb"), b"REDIS0099").unwrap();
        let mut asked = 0;
        let err = Redis::start_with(dir.path(), None, counted(&mut asked)).err().unwrap();
        assert_eq!(asked, 1, "started once: {err}");
        assert_eq!(err, "redis-server exited at start (exit status: 1): Fatal error loading the DB: Invalid argument. Exiting.");
        let log = std::fs::read_to_string(dir.path().join("redis-server.log")).unwrap();
        assert!(log.contains("# Can't handle RDB format version 99\n"), "the log keeps the whole reason: {log}");
    }

    #[test]
    fn an_etcd_that_fails_for_its_own_reason_is_started_once_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let member = dir.path().join("member");
        std::fs::write(&member, b"a file, not a data directory").unwrap();
        let mut asked = 0;
        let err = Etcd::start_with(&member, &dir.path().join("tls"), counted(&mut asked)).err().unwrap();
        assert_eq!(asked, 1, "started once: {err}");
        let (ours, line) = err.split_once("): ").unwrap();
        assert_eq!(ours, "etcd exited at start (exit status: 1");
        assert!(line.ends_with(&format!("etcdmain: error listing data dir: {}", member.display())), "its log's last line: {line}");
    }

    #[test]
    fn a_port_taken_before_the_drills_etcd_binds_it_is_left_for_another() {
        let (holder, ports) = taken_first();
        let held = holder.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let etcd = Etcd::start_with(&dir.path().join("member"), &dir.path().join("tls"), ports).unwrap();
        assert_ne!(etcd.port, held);
        assert_eq!(etcd.count().unwrap().1, 0, "the drill's own member answers, over its TLS");
        let pid = std::fs::read_to_string(dir.path().join("tls").join(SERVER_MARKER)).unwrap();
        assert_eq!(pid, format!("{}\n", etcd._child.0.id()), "the marker names the member that runs");
    }

    #[test]
    fn the_scratch_etcd_member_serves_tls_to_the_drills_client_certificate_only() {
        let dir = tempfile::tempdir().unwrap();
        let tls_dir = dir.path().join("tls");
        let etcd = Etcd::start(&dir.path().join("member"), &tls_dir).unwrap();
        assert_eq!(etcd.count().unwrap().1, 0, "a new member holds no key");
        assert!(!etcd.version().unwrap().is_empty(), "tresor's own client reads its status over TLS");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tls_dir), 0o700);
        let pid = std::fs::read_to_string(tls_dir.join(SERVER_MARKER)).unwrap();
        assert_eq!(pid, format!("{}\n", etcd._child.0.id()), "the member's pid, for the next rehearsal to stop a killed one");
        let mut files: Vec<(String, u32)> = std::fs::read_dir(&tls_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().to_string(), mode(&p)))
            .filter(|(name, _)| name != SERVER_MARKER)
            .collect();
        files.sort();
        let want = ["ca.crt", "client.crt", "client.key", "etcd.log", "server.crt", "server.key"].map(|n| (n.to_string(), 0o600));
        assert_eq!(files, want, "no CA key on disk; the rest, and the member's log, for this user only");

        let other = EtcdTls::make(&dir.path().join("other")).unwrap();
        let ca = etcd.tls.ca.display().to_string();
        for port in [etcd.port, peer_port(&etcd)] {
            let plain = format!("etcd://127.0.0.1:{port}");
            let err = member_status(&plain).unwrap_err();
            assert!(err.starts_with(&format!("{plain}: ")), "no plain HTTP: {err}");
            let no_cert = format!("{plain}?cacert={ca}");
            assert_eq!(
                member_status(&no_cert).unwrap_err(),
                format!("{no_cert}: the server wants a client certificate: give cert= and key= (or TRESOR_ETCD_CERT and TRESOR_ETCD_KEY)")
            );
            let (cert, key) = (other.client_cert.display(), other.client_key.display());
            let foreign = format!("{plain}?cacert={ca}&cert={cert}&key={key}");
            assert_eq!(
                member_status(&foreign).unwrap_err(),
                format!("{foreign}: the server refused the client certificate {cert} (expired, or not signed by a CA the server trusts)")
            );
        }
    }
}
