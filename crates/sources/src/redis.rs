//! Redis: the RDB fetched over the replication protocol, as `redis-cli
//! --rdb` does (no shell or volume access on the server), verified by its
//! CRC64 trailer while it streams into the repository.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tresor_engine::SourceInfo;

use crate::rdb_head::{self, Head};
use crate::tls::TlsFiles;
use crate::{Error, ErrorKind, Result, Source, Stream};

pub struct RedisSource {
    host: String,
    port: u16,
    /// `rediss://`: TLS, trusting `TRESOR_REDIS_CACERT` (else the system
    /// store), with `TRESOR_REDIS_CERT`/`TRESOR_REDIS_KEY` for mutual TLS.
    pub(crate) tls: Option<TlsFiles>,
    user: Option<String>,
    password: Option<String>,
    /// Filled in once the stream is open.
    point: BTreeMap<String, serde_json::Value>,
    /// The databases that held keys before the fork.
    dbs_before: Vec<u64>,
    /// What the RDB's head says, once the stream has read it.
    head: Arc<Mutex<Head>>,
    /// How long a read waits for the server: a master sends a newline
    /// every second while it writes the RDB, so a longer silence is a
    /// server that took the connection and serves nothing.
    pub(crate) silence: Duration,
}

impl std::fmt::Debug for RedisSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSource").field("url", &self.url()).field("password", &self.password.as_ref().map(|_| "<redacted>")).finish()
    }
}

impl RedisSource {
    /// `redis[s]://[USER[:PASSWORD]@]HOST[:PORT]`; the password may instead
    /// come from `TRESOR_REDIS_PASSWORD` or `REDISCLI_AUTH`.
    pub fn parse(url: &str) -> Result<RedisSource> {
        let bad = |why: &str| Error::failed(url_without_secret(url), why);
        let tls = url.starts_with("rediss://").then(|| TlsFiles::from_env("TRESOR_REDIS_"));
        let rest = url.strip_prefix("redis://").or_else(|| url.strip_prefix("rediss://")).ok_or_else(|| bad("not a redis:// URL"))?;
        // The last `@` ends the user part, before any path: a password may hold a `/`.
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let hostport = hostport.split(['/', '?']).next().unwrap_or_default();
        let (user, password) = match auth.map(|a| a.split_once(':').unwrap_or((a, ""))) {
            Some((u, p)) => {
                let (u, p) = (crate::percent::decode(u).map_err(|e| bad(&e))?, crate::percent::decode(p).map_err(|e| bad(&e))?);
                ((!u.is_empty()).then_some(u), (!p.is_empty()).then_some(p))
            }
            None => (None, None),
        };
        let password = password.or_else(|| std::env::var("TRESOR_REDIS_PASSWORD").ok()).or_else(|| std::env::var("REDISCLI_AUTH").ok());
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("the port is not a number"))?),
            None => (hostport.to_string(), 6379),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let head = Arc::new(Mutex::new(Head::More));
        Ok(RedisSource {
            host,
            port,
            tls,
            user,
            password,
            point: BTreeMap::new(),
            dbs_before: Vec::new(),
            head,
            silence: Duration::from_secs(60),
        })
    }

    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        match &self.user {
            Some(u) => format!("{scheme}://{u}@{}:{}", self.host, self.port),
            None => format!("{scheme}://{}:{}", self.host, self.port),
        }
    }

    pub(crate) fn fail(&self, why: impl ToString) -> Error {
        Error::failed(self.url(), why)
    }

    fn fail_as(&self, kind: ErrorKind, why: impl ToString) -> Error {
        Error::of(kind, self.url(), why)
    }

    /// An error reply (`-CODE message`), typed by its code: the protocol's
    /// own word for refused credentials.
    pub(crate) fn refused(&self, reply: &str) -> Error {
        let reply = reply.trim_start_matches('-');
        let kind = match reply.split(' ').next() {
            Some("NOAUTH" | "WRONGPASS" | "NOPERM") => ErrorKind::Auth,
            _ => ErrorKind::Other,
        };
        self.fail_as(kind, reply)
    }

    pub(crate) fn connect(&self) -> Result<Conn> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| self.fail_as(ErrorKind::Unreachable, format!("cannot resolve the host: {e}")))?
            .next()
            .ok_or_else(|| self.fail_as(ErrorKind::Unreachable, "cannot resolve the host"))?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| self.fail_as(ErrorKind::Unreachable, format!("cannot connect: {e}")))?;
        tcp.set_read_timeout(Some(self.silence)).map_err(|e| self.fail(e))?;
        let local = tcp.local_addr().map_err(|e| self.fail(e))?;
        let stream: Box<dyn Duplex> = match &self.tls {
            Some(files) => Box::new(files.wrap(tcp, &self.host).map_err(|e| self.fail(e))?),
            None => Box::new(tcp),
        };
        let mut c = Conn { reader: BufReader::with_capacity(1 << 20, stream), local, peer: addr, silence: self.silence };
        if let Some(pw) = &self.password {
            let mut args = vec!["AUTH"];
            args.extend(self.user.as_deref());
            args.push(pw);
            let reply = c.call(&args).map_err(|e| self.fail(e))?;
            if !reply.starts_with('+') {
                return Err(self.fail_as(ErrorKind::Auth, format!("authentication failed: {}", reply.trim_start_matches('-'))));
            }
        }
        Ok(c)
    }
}

/// A connection, plain or TLS.
pub(crate) trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

pub(crate) struct Conn {
    pub(crate) reader: BufReader<Box<dyn Duplex>>,
    /// Our end of the connection, as the server sees it.
    pub(crate) local: SocketAddr,
    /// The server's address, as we reached it.
    pub(crate) peer: SocketAddr,
    /// The read timeout, for saying what ended a read.
    pub(crate) silence: Duration,
}

impl Conn {
    pub(crate) fn send(&mut self, args: &[&str]) -> std::io::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let w = self.reader.get_mut();
        w.write_all(&out)?;
        w.flush()
    }

    pub(crate) fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).map_err(|e| silent(e, self.silence))? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// A command with a one-line or bulk-string reply.
    pub(crate) fn call(&mut self, args: &[&str]) -> std::io::Result<String> {
        self.send(args)?;
        let first = self.line()?;
        Ok(self.bulk(&first)?.unwrap_or(first))
    }

    /// The body of a bulk string whose `$N` line was `header`; none for
    /// any other line.
    pub(crate) fn bulk(&mut self, header: &str) -> std::io::Result<Option<String>> {
        let Some(n) = header.strip_prefix('$').and_then(|n| n.parse::<i64>().ok()).filter(|n| *n >= 0) else { return Ok(None) };
        // Read as it arrives rather than allocated up front: the
        // length is the server's word, and may be absurd.
        let want = n as u64 + 2;
        let mut body = Vec::new();
        (&mut self.reader).take(want).read_to_end(&mut body).map_err(|e| silent(e, self.silence))?;
        if body.len() as u64 != want {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        body.truncate(n as usize);
        Ok(Some(String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A read the socket's timeout ended, said as what happened (it read
/// "Resource temporarily unavailable (os error 11)").
fn silent(e: std::io::Error, silence: Duration) -> std::io::Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s: the server took the connection and said nothing", silence.as_secs()),
        ),
        _ => e,
    }
}

impl RedisSource {
    /// How many keys the instance holds: what a restore into it would
    /// replace. Asked over tresor's own connection (TLS, AUTH), so no
    /// password goes onto a command line.
    pub fn keys(&self) -> Result<u64> {
        Ok(key_count(&self.info(&mut self.connect()?, "keyspace")?))
    }

    /// How many keys the instance holds, and the databases that hold them,
    /// from one `INFO keyspace`.
    pub fn keyspace(&self) -> Result<(u64, Vec<u64>)> {
        let info = self.info(&mut self.connect()?, "keyspace")?;
        Ok((key_count(&info), keyspace_dbs(&info)))
    }

    /// The process id the server reports: tells the server one started
    /// from another that answers on the same port.
    pub fn server_pid(&self) -> Result<Option<u32>> {
        Ok(field(&self.info(&mut self.connect()?, "server")?, "process_id").parse().ok())
    }

    /// What answers at the URL, in one line: `Redis 7.0.15, master` or
    /// `Redis 7.0.15, replica of 10.0.0.5:6379`.
    pub(crate) fn describe(&self) -> Result<String> {
        let mut c = self.connect()?;
        let (server, replication) = (self.info(&mut c, "server")?, self.info(&mut c, "replication")?);
        let role = match field(&replication, "role").as_str() {
            "slave" => format!("replica of {}:{}", field(&replication, "master_host"), field(&replication, "master_port")),
            other => other.to_string(),
        };
        Ok(format!("Redis {}, {role}", field(&server, "redis_version")))
    }

    /// One section of `INFO`; an error reply typed by its code.
    fn info(&self, c: &mut Conn, section: &str) -> Result<String> {
        match c.call(&["INFO", section]) {
            Ok(reply) if reply.starts_with('-') => Err(self.refused(&reply)),
            Ok(reply) => Ok(reply),
            Err(e) => Err(self.fail(e)),
        }
    }
}

/// A field of an `INFO` section (`key:value` lines), `unknown` if missing.
fn field(text: &str, key: &str) -> String {
    info_field(text, key).unwrap_or("unknown").to_string()
}

/// A field of an `INFO` section (`key:value` lines).
pub(crate) fn info_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')).map(str::trim)
}

/// The databases `INFO keyspace` lists (those that hold keys).
fn keyspace_dbs(info: &str) -> Vec<u64> {
    info.lines().filter_map(|l| l.strip_prefix("db")?.split_once(':')?.0.parse().ok()).collect()
}

/// Keys per the server's `INFO keyspace` (`db0:keys=3,expires=1,…`).
pub(crate) fn key_count(info: &str) -> u64 {
    info.lines().filter(|l| l.starts_with("db")).filter_map(|l| l.split(['=', ',']).nth(1)?.parse::<u64>().ok()).sum()
}

impl Source for RedisSource {
    fn open(&mut self) -> Result<Stream> {
        let c = self.connect()?;
        self.replicate(c)
    }

    fn info(&self) -> SourceInfo {
        let mut consistency = self.point.clone();
        // Counted again once the data is in: the count at the fork, which
        // a busy instance's writes move, lies between the two while the
        // count only grows or only shrinks (a drill holds the restored
        // count to them where the RDB's head does not say it).
        if consistency.contains_key("keys")
            && let Ok(info) = self.connect().and_then(|mut c| self.info(&mut c, "keyspace"))
        {
            consistency.insert("keys_after".into(), key_count(&info).into());
            if let Some(fork) = self.keys_at_fork(&keyspace_dbs(&info)) {
                consistency.insert("keys_at_fork".into(), fork);
            }
        }
        SourceInfo { kind: "redis".into(), url: Some(self.url()), consistency }
    }
}

impl RedisSource {
    /// The keys the data set held at the fork, from the RDB's head: its
    /// first database's number and count, and how many had a TTL; all of
    /// the data set when no other database held keys before the fork or
    /// after the transfer (a drill also looks at what the restore holds).
    fn keys_at_fork(&self, dbs_after: &[u64]) -> Option<serde_json::Value> {
        let (db, keys, with_ttl) = match *self.head.lock().expect("not poisoned") {
            Head::Empty => (0, 0, 0),
            Head::FirstDb { db, keys, expires } if self.dbs_before.iter().chain(dbs_after).all(|&d| d == db) => (db, keys, expires),
            _ => return None,
        };
        Some(serde_json::json!({"db": db, "keys": keys, "with_ttl": with_ttl}))
    }

    /// The exchange on an open connection: key count and sample, then the
    /// RDB through `PSYNC`, as a stream that checks it.
    pub(crate) fn replicate(&mut self, mut c: Conn) -> Result<Stream> {
        let info = c.call(&["INFO", "keyspace"]).map_err(|e| self.fail(e))?;
        if info.starts_with('-') {
            return Err(self.refused(&info));
        }
        // A few key names, for a restore drill to look for: without a TTL
        // (one may run out before the drill), and names that are text.
        let mut sample: Vec<String> = Vec::new();
        for _ in 0..10 {
            let k = c.call(&["RANDOMKEY"]).map_err(|e| self.fail(e))?;
            if sample.len() < 5 && !k.starts_with(['$', '-']) && !k.contains(char::REPLACEMENT_CHARACTER) && !sample.contains(&k) {
                let ttl = c.call(&["PTTL", &k]).map_err(|e| self.fail(e))?;
                if ttl == ":-1" {
                    sample.push(k);
                }
            }
        }
        self.point.insert("sample_keys".into(), sample.into());
        // Redis 7 can end the exchange after the RDB; older servers refuse
        // the option, which is harmless.
        let _ = c.call(&["REPLCONF", "rdb-only", "1"]).map_err(|e| self.fail(e))?;
        let mut reply = c.call(&["PSYNC", "?", "-1"]).map_err(|e| self.fail(e))?;
        // While a background save runs, the server holds its reply back
        // and keeps the link alive with a newline each second.
        while reply.is_empty() {
            reply = c.line().map_err(|e| self.fail(e))?;
        }
        let mut words = reply.split(' ');
        let (Some("+FULLRESYNC"), Some(replid), Some(offset)) = (words.next(), words.next(), words.next()) else {
            return Err(self.fail(format!("the server refused to send its data: {}", reply.trim_start_matches('-'))));
        };
        let len = loop {
            let line = c.line().map_err(|e| self.fail(e))?;
            if line.is_empty() {
                continue;
            }
            match line.strip_prefix('$').and_then(|n| n.parse::<u64>().ok()) {
                Some(n) if n >= 9 + 8 => break n,
                _ => return Err(self.fail(format!("unexpected reply before the RDB: {line:?}"))),
            }
        };
        self.point.insert("replication_id".into(), replid.into());
        self.point.insert("replication_offset".into(), offset.parse::<u64>().unwrap_or_default().into());
        self.point.insert("keys".into(), key_count(&info).into());
        self.point.insert("rdb_bytes".into(), len.into());
        self.dbs_before = keyspace_dbs(&info);
        // Its own: a reader of an earlier stream must not answer for this one.
        self.head = Arc::new(Mutex::new(Head::More));
        let reader = RdbReader {
            url: self.url(),
            inner: c.reader,
            len,
            pos: 0,
            crc: 0,
            trailer: [0; 8],
            magic: [0; 5],
            head: HeadRead { seen: Vec::new(), tried: 0, said: self.head.clone(), done: false },
        };
        Ok(Stream { name: "dump.rdb".into(), reader: Box::new(reader) })
    }
}

/// The RDB payload: exactly `len` bytes, the last 8 its CRC64 (little
/// endian) over all before; `REDIS` magic first.
struct RdbReader {
    url: String,
    inner: BufReader<Box<dyn Duplex>>,
    len: u64,
    pos: u64,
    crc: u64,
    trailer: [u8; 8],
    magic: [u8; 5],
    head: HeadRead,
}

/// The RDB's head as it streams by.
struct HeadRead {
    /// The bytes read while the head is not yet read through.
    seen: Vec<u8>,
    /// How many of them the last reading had.
    tried: usize,
    /// What the head says, for the source's `info()`.
    said: Arc<Mutex<Head>>,
    /// The head is read through: the rest of the stream passes untouched.
    done: bool,
}

/// How much of an RDB is read for its head: aux fields and function
/// libraries come before the first database; past this, it is not known.
const HEAD_MAX: usize = 1 << 20;

impl RdbReader {
    fn fail(&self, why: String) -> std::io::Error {
        Error::of(ErrorKind::Corrupt, &self.url, format!("{why}; no snapshot was saved")).into_io()
    }

    fn account(&mut self, bytes: &[u8]) {
        let body_end = self.len - 8;
        for (i, &b) in bytes.iter().enumerate() {
            let at = self.pos + i as u64;
            if at < 5 {
                self.magic[at as usize] = b;
            }
            if at < body_end {
                self.crc = crc64_update(self.crc, &[b]);
            } else {
                self.trailer[(at - body_end) as usize] = b;
            }
        }
        self.pos += bytes.len() as u64;
        self.read_head(bytes, self.pos == self.len);
    }

    fn read_head(&mut self, bytes: &[u8], last: bool) {
        let h = &mut self.head;
        if h.done {
            return;
        }
        let mut said = h.said.lock().expect("not poisoned");
        h.seen.extend_from_slice(&bytes[..bytes.len().min(HEAD_MAX.saturating_sub(h.seen.len()))]);
        // Read again once half as much more came: a server that sends its
        // head a byte at a time costs a few readings, not one a byte.
        if !last && h.seen.len() < HEAD_MAX && h.seen.len() < h.tried + h.tried / 2 {
            return;
        }
        h.tried = h.seen.len();
        *said = match rdb_head::read(&h.seen) {
            Head::More if h.seen.len() < HEAD_MAX && !last => return,
            Head::More => Head::Unknown,
            known => known,
        };
        h.seen = Vec::new();
        h.done = true;
    }

    fn verify(&self) -> std::io::Result<()> {
        if &self.magic != b"REDIS" {
            return Err(self.fail("the server did not send an RDB file".into()));
        }
        let stored = u64::from_le_bytes(self.trailer);
        // A server with `rdbchecksum no` writes zeros: nothing to compare.
        if stored != 0 && stored != self.crc {
            return Err(self.fail(format!("the RDB fails its CRC64 check (computed {:016x}, its trailer says {stored:016x})", self.crc)));
        }
        Ok(())
    }
}

impl Read for RdbReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len - self.pos;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(self.fail(format!("the server closed the connection after {} of {} bytes of the RDB", self.pos, self.len)));
        }
        self.account(&buf[..n]);
        if self.pos == self.len {
            self.verify()?;
        }
        Ok(n)
    }
}

const POLY: u64 = 0x95ac_9329_ac4b_c9b5;

const fn table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut k = 0;
        while k < 8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ POLY } else { crc >> 1 };
            k += 1;
        }
        t[i] = crc;
        i += 1;
    }
    t
}

static TABLE: [u64; 256] = table();

pub(crate) fn crc64_update(mut crc: u64, data: &[u8]) -> u64 {
    for &b in data {
        crc = TABLE[((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// Redis's CRC64 (Jones polynomial, reflected, no final xor).
pub fn crc64(data: &[u8]) -> u64 {
    crc64_update(0, data)
}

/// A URL with any password in its user part left out, and the values of
/// credential-like query parameters (`?password=`) hidden.
pub(crate) fn url_without_secret(url: &str) -> String {
    let shown = match url.split_once("://").and_then(|(s, rest)| Some((s, rest.rsplit_once('@')?))) {
        Some((scheme, (auth, host))) => format!("{scheme}://{}@{host}", auth.split(':').next().unwrap_or_default()),
        None => url.to_string(),
    };
    tresor_storage::redact(&shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_matches_redis() {
        // The check value from Redis's own crc64.c test.
        assert_eq!(crc64(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }

    #[test]
    fn urls_keep_secrets_out() {
        let s = RedisSource::parse("redis://backup:s3cret@10.0.0.5:6380").unwrap();
        assert_eq!(s.url(), "redis://backup@10.0.0.5:6380");
        assert!(!format!("{s:?}").contains("s3cret"));
        let err = RedisSource::parse("redis://u:s3cret@h:notaport").unwrap_err().to_string();
        assert_eq!(err, "redis://u@h:notaport: the port is not a number");
        // A password with a `/` (base64 has them) or a %-escape, and a database path.
        let s = RedisSource::parse("redis://backup:12/ab%40c@10.0.0.5:6380/0").unwrap();
        assert_eq!((s.url(), s.password.as_deref()), ("redis://backup@10.0.0.5:6380".to_string(), Some("12/ab@c")));
    }

    /// A server that takes the connection and never answers is said so,
    /// not "Resource temporarily unavailable (os error 11)".
    #[test]
    fn a_silent_server_is_said_silent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut s = RedisSource::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
        s.silence = Duration::from_secs(1);
        let err = s.keys().unwrap_err();
        drop(listener);
        assert_eq!(
            err.to_string(),
            format!("redis://127.0.0.1:{port}: no answer within 1 s: the server took the connection and said nothing")
        );
    }
}
