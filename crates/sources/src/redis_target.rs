//! `--to redis://…`: load an RDB into a running instance the way Redis
//! itself does. tresor briefly plays master: the instance is told
//! `REPLICAOF` tresor's address, asks for a full resync, and receives the
//! RDB, which it loads exactly as a replica would (every type, encoding and
//! TTL). Then `REPLICAOF NO ONE` makes it a master again, also when the
//! restore fails: an instance left a replica of tresor's closed port would
//! refuse every write. No RDB parsing.
//!
//! Only the instance may receive the data: before `REPLICAOF` it is given a
//! one-time `masterauth`, and a peer that connects to tresor's port without
//! that password is turned away (its old `masterauth` is put back after).
//! Where `CONFIG` is refused, the peer must come from the address the
//! instance was reached at.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::redis::{Conn, RedisSource, info_field, key_count};
use crate::{Error, Result, Target};

pub struct RedisTarget {
    redis: RedisSource,
    control: Option<Conn>,
    replica: Option<TcpStream>,
    /// The instance was told to replicate from tresor, and not yet released.
    replicating: bool,
    /// The instance's `masterauth` before tresor set its own, to put back.
    masterauth: Option<String>,
    /// Keys the instance had evicted before the restore (INFO stats).
    evicted: u64,
}

/// How a peer that connects to tresor's port is known to be the instance.
enum Expect {
    /// It authenticates with the one-time password it was given.
    Password(String),
    /// `CONFIG` is refused: it connects from the address it was reached at.
    Address(IpAddr),
}

impl RedisTarget {
    pub fn new(redis: RedisSource) -> RedisTarget {
        RedisTarget { redis, control: None, replica: None, replicating: false, masterauth: None, evicted: 0 }
    }

    /// Give the instance a one-time `masterauth`, keeping its old one; the
    /// instance's address instead where `CONFIG` is refused.
    fn expect(&mut self, c: &mut Conn) -> Result<Expect> {
        c.send(&["CONFIG", "GET", "masterauth"]).map_err(|e| self.redis.fail(e))?;
        let head = c.line().map_err(|e| self.redis.fail(e))?;
        if head != "*2" {
            tracing::warn!("the instance refused CONFIG GET ({head}): the peer that connects back is known by its address only");
            return Ok(Expect::Address(c.peer.ip()));
        }
        let mut value = None;
        for _ in 0..2 {
            let line = c.line().map_err(|e| self.redis.fail(e))?;
            value = c.bulk(&line).map_err(|e| self.redis.fail(e))?;
        }
        let secret: String = rand::random::<[u8; 24]>().iter().map(|b| format!("{b:02x}")).collect();
        let reply = c.call(&["CONFIG", "SET", "masterauth", &secret]).map_err(|e| self.redis.fail(e))?;
        if !reply.starts_with('+') {
            tracing::warn!("the instance refused CONFIG SET: the peer that connects back is known by its address only");
            return Ok(Expect::Address(c.peer.ip()));
        }
        self.masterauth = Some(value.unwrap_or_default());
        Ok(Expect::Password(secret))
    }

    /// Put the instance's own `masterauth` back.
    fn restore_masterauth(&mut self, c: &mut Conn) -> Result<()> {
        let Some(old) = self.masterauth.take() else { return Ok(()) };
        let reply = c.call(&["CONFIG", "SET", "masterauth", &old]).map_err(|e| self.redis.fail(e))?;
        if !reply.starts_with('+') {
            return Err(self.redis.fail(format!("putting its masterauth back failed: {}", reply.trim_start_matches('-'))));
        }
        Ok(())
    }

    /// `REPLICAOF NO ONE` on `c`: the instance is a master again.
    fn release(&mut self, c: &mut Conn) -> Result<()> {
        let reply = c.call(&["REPLICAOF", "NO", "ONE"]).map_err(|e| self.redis.fail(e))?;
        if !reply.starts_with('+') {
            return Err(self.redis.fail(format!("REPLICAOF NO ONE failed: {}", reply.trim_start_matches('-'))));
        }
        self.replicating = false;
        Ok(())
    }

    /// Whether the instance holds the whole RDB it loaded: one whose
    /// `maxmemory` is below the data evicts keys as it loads them (and said
    /// it held them all), or, without eviction, holds more than it may and
    /// refuses every write.
    fn whole(&self, c: &mut Conn) -> Result<()> {
        let stats = c.call(&["INFO", "stats"]).map_err(|e| self.redis.fail(e))?;
        let memory = c.call(&["INFO", "memory"]).map_err(|e| self.redis.fail(e))?;
        // As Redis counts it for eviction: replicas' and the AOF's buffers left out.
        let used = info_number(&memory, "used_memory").saturating_sub(info_number(&memory, "mem_not_counted_for_evict"));
        let max = info_number(&memory, "maxmemory");
        let evicted = info_number(&stats, "evicted_keys").saturating_sub(self.evicted);
        if evicted > 0 {
            return Err(self.redis.fail(format!(
                "the instance evicted {evicted} keys while it loaded the RDB (maxmemory {max} bytes): it does not hold the whole snapshot; raise its maxmemory and restore again"
            )));
        }
        if max > 0 && used > max {
            return Err(self.redis.fail(format!(
                "the instance holds {used} bytes, more than its maxmemory of {max}: it refuses writes; raise its maxmemory"
            )));
        }
        Ok(())
    }

    fn keys(&self, c: &mut Conn) -> Result<u64> {
        let info = c.call(&["INFO", "keyspace"]).map_err(|e| self.redis.fail(e))?;
        if info.starts_with('-') {
            return Err(self.redis.refused(&info));
        }
        Ok(key_count(&info))
    }

    /// Tell the instance to replicate from tresor, and take its connection.
    fn replicate(&mut self, mut c: Conn, len: u64, expect: &Expect) -> Result<()> {
        // The instance reaches tresor at the address it sees our connection from.
        let local = c.local;
        let listener = TcpListener::bind((local.ip(), 0)).map_err(|e| self.redis.fail(e))?;
        let port = listener.local_addr().map_err(|e| self.redis.fail(e))?.port();
        let reply = c.call(&["REPLICAOF", &local.ip().to_string(), &port.to_string()]).map_err(|e| self.redis.fail(e))?;
        if !reply.starts_with('+') {
            return Err(self.redis.fail(format!("the instance refused REPLICAOF: {}", reply.trim_start_matches('-'))));
        }
        self.replicating = true;
        let mut replica = self.accept(listener, expect)?;
        let header = format!("+FULLRESYNC {} 0\r\n${len}\r\n", "7e5e".repeat(10));
        replica.write_all(header.as_bytes()).map_err(|e| self.redis.fail(e))?;
        self.control = Some(c);
        self.replica = Some(replica);
        Ok(())
    }

    /// Wait for the instance to connect, and answer its handshake up to
    /// `PSYNC`; any other peer is turned away, and the wait goes on.
    fn accept(&self, listener: TcpListener, expect: &Expect) -> Result<TcpStream> {
        listener.set_nonblocking(true).map_err(|e| self.redis.fail(e))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (stream, from) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => return Err(self.redis.fail(format!("the instance did not connect back to tresor: {e}"))),
            };
            let refused = match expect {
                Expect::Address(ip) if from.ip() != *ip => Some(format!(
                    "it connects from {}, not from the address the instance was reached at, {ip} (CONFIG, which would let the \
                     instance prove itself with a password, is refused)",
                    from.ip()
                )),
                _ => self.handshake(&stream, expect)?,
            };
            match refused {
                None => return Ok(stream),
                Some(why) if Instant::now() < deadline => tracing::warn!("a peer at {from} was turned away from the restore: {why}"),
                Some(why) => return Err(self.redis.fail(format!("no peer that connected back to tresor was the instance: {why}"))),
            }
        }
    }

    /// Answer a peer's handshake up to `PSYNC`; why it is not the instance,
    /// if it is not.
    fn handshake(&self, stream: &TcpStream, expect: &Expect) -> Result<Option<String>> {
        stream.set_nonblocking(false).map_err(|e| self.redis.fail(e))?;
        // A peer that connects and says nothing must not hold the restore.
        stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| self.redis.fail(e))?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| self.redis.fail(e))?);
        let mut writer = stream.try_clone().map_err(|e| self.redis.fail(e))?;
        let password = match expect {
            Expect::Password(p) => Some(p.as_str()),
            Expect::Address(_) => None,
        };
        match answer(&mut reader, &mut writer, password) {
            Ok(verdict) => Ok(verdict.err()),
            Err(e) => Ok(Some(format!("replication handshake: {e}"))),
        }
    }
}

/// Answer a would-be replica up to its `PSYNC`: `Err(why)` when, with a
/// `password` expected, it asks for anything but `PING` before it gave
/// that password.
fn answer(reader: &mut impl BufRead, writer: &mut impl Write, password: Option<&str>) -> std::io::Result<Result<(), String>> {
    let mut authenticated = password.is_none();
    loop {
        let args = read_command(reader)?;
        let word = args.first().map(|a| a.to_ascii_uppercase()).unwrap_or_default();
        let reply: &[u8] = match word.as_str() {
            "PING" => b"+PONG\r\n",
            // The last word is the password, with or without a user name.
            "AUTH" => {
                let given = args.last().map(|p| blake3::hash(p.as_bytes()));
                if password.is_some_and(|p| Some(blake3::hash(p.as_bytes())) == given) {
                    authenticated = true;
                    b"+OK\r\n"
                } else {
                    writer.write_all(b"-WRONGPASS invalid password\r\n")?;
                    return Ok(Err("it gave a wrong password".into()));
                }
            }
            _ if !authenticated => {
                writer.write_all(b"-NOAUTH Authentication required.\r\n")?;
                return Ok(Err(format!("it sent {word} without the restore's password")));
            }
            "PSYNC" | "SYNC" => return Ok(Ok(())),
            _ => b"+OK\r\n",
        };
        writer.write_all(reply)?;
    }
}

/// What went wrong, without the instance's URL `Error::Failed` puts first.
fn reason(e: Error) -> String {
    match e {
        Error::Failed { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// The most a replica's handshake command may hold: its words are few and short.
const MAX_ARGS: usize = 16;
const MAX_ARG: usize = 4096;

fn read_command(r: &mut impl BufRead) -> std::io::Result<Vec<String>> {
    let n = read_count(r, '*', MAX_ARGS)?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let len = read_count(r, '$', MAX_ARG)?;
        let mut buf = vec![0; len + 2];
        r.read_exact(&mut buf)?;
        buf.truncate(len);
        args.push(String::from_utf8_lossy(&buf).into_owned());
    }
    Ok(args)
}

/// A `*N` or `$N` line, N at most `max`; a line is read no further than a
/// number's length.
fn read_count(r: &mut impl BufRead, mark: char, max: usize) -> std::io::Result<usize> {
    let mut line = String::new();
    r.take(64).read_line(&mut line)?;
    line.trim()
        .strip_prefix(mark)
        .and_then(|n| n.parse().ok())
        .filter(|n| *n <= max)
        .ok_or_else(|| std::io::Error::other(format!("unexpected {line:?}")))
}

impl Target for RedisTarget {
    fn begin(&mut self, len: u64, overwrite: bool) -> Result<()> {
        let mut c = self.redis.connect()?;
        // Made a replica of tresor, a replica leaves its master for good and
        // ends a master itself: its master's data no longer reaches it.
        let replication = c.call(&["INFO", "replication"]).map_err(|e| self.redis.fail(e))?;
        if let Some(master) = info_field(&replication, "role").filter(|r| *r == "slave").and(master_of(&replication)) {
            return Err(self.redis.fail(format!(
                "the instance is a replica of {master}: restoring would detach it from its master and make it one; restore into the master, or detach this one first (REPLICAOF NO ONE)"
            )));
        }
        self.evicted = info_number(&c.call(&["INFO", "stats"]).map_err(|e| self.redis.fail(e))?, "evicted_keys");
        let keys = self.keys(&mut c)?;
        if keys > 0 && !overwrite {
            return Err(self.redis.fail(format!("the instance holds {keys} keys; restoring replaces them all: add --flush to allow it")));
        }
        let expect = self.expect(&mut c)?;
        // Undone here: a restore whose begin failed is not aborted.
        self.replicate(c, len, &expect).map_err(|e| match self.abort() {
            Ok(()) => e,
            Err(undo) => self.redis.fail(format!("{}; and {}", reason(e), reason(undo))),
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        let r = self.replica.as_mut().expect("begun");
        r.write_all(data).map_err(|e| Error::failed(self.redis.url(), format!("sending the RDB: {e}")))
    }

    fn finish(&mut self) -> Result<String> {
        let mut c = self.control.take().expect("begun");
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let info = c.call(&["INFO", "replication"]).map_err(|e| self.redis.fail(e))?;
            if info.contains("master_link_status:up") {
                break;
            }
            if Instant::now() > deadline {
                return Err(self.redis.fail("the instance did not finish loading the RDB within 5 minutes"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.replica = None;
        self.release(&mut c)?;
        self.restore_masterauth(&mut c)?;
        let keys = self.keys(&mut c)?;
        self.whole(&mut c)?;
        let s = if keys == 1 { "" } else { "s" };
        Ok(format!("{} loaded the RDB and holds {keys} key{s}", self.redis.url()))
    }

    /// Over a new connection: the control one may be what failed. An
    /// unfinished transfer ends with the link, and the instance keeps the
    /// data it had (it loads a replicated RDB only once it is whole).
    fn abort(&mut self) -> Result<()> {
        self.replica = None;
        self.control = None;
        if !self.replicating && self.masterauth.is_none() {
            return Ok(());
        }
        let mut c = self.redis.connect()?;
        if self.replicating {
            self.release(&mut c).map_err(|e| {
                let why = reason(e);
                self.redis
                    .fail(format!("the instance is left a replica of tresor, refusing writes, until it is given REPLICAOF NO ONE: {why}"))
            })?;
        }
        self.restore_masterauth(&mut c)
    }
}

/// A number of an INFO reply, 0 when it has none.
fn info_number(info: &str, name: &str) -> u64 {
    info_field(info, name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// A replica's master, `host:port`.
fn master_of(info: &str) -> Option<String> {
    Some(format!("{}:{}", info_field(info, "master_host")?, info_field(info, "master_port")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer's handshake is read within bounds: a huge count or length, or
    /// an endless line, is refused before anything is allocated for it.
    #[test]
    fn a_handshake_command_is_read_within_bounds() {
        let read = |bytes: &[u8]| read_command(&mut std::io::Cursor::new(bytes.to_vec())).map_err(|e| e.to_string());
        assert_eq!(read(b"*2\r\n$8\r\nREPLCONF\r\n$4\r\ncapa\r\n"), Ok(vec!["REPLCONF".into(), "capa".into()]));
        assert_eq!(read(b"*99999\r\n"), Err("unexpected \"*99999\\r\\n\"".into()));
        assert_eq!(read(b"*1\r\n$18446744073709551615\r\n"), Err("unexpected \"$18446744073709551615\\r\\n\"".into()));
        assert!(read(&[b'x'; 100_000]).unwrap_err().starts_with("unexpected \"xxxx"));
    }

    fn resp(words: &[&str]) -> String {
        words.iter().fold(format!("*{}\r\n", words.len()), |out, w| format!("{out}${}\r\n{w}\r\n", w.len()))
    }

    /// With a password expected, a peer gets as far as `PING` without it,
    /// and no further; the right one, with or without a user name, opens
    /// the way to `PSYNC`.
    #[test]
    fn a_peer_without_the_password_is_turned_away() {
        let talk = |lines: &[&[&str]], password: Option<&str>| {
            let input: String = lines.iter().map(|l| resp(l)).collect();
            let mut replies = Vec::new();
            let verdict = answer(&mut std::io::Cursor::new(input.into_bytes()), &mut replies, password).unwrap();
            (verdict, String::from_utf8(replies).unwrap())
        };
        let (ping, capa, psync): (&[&str], &[&str], &[&str]) = (&["PING"], &["REPLCONF", "capa", "psync2"], &["PSYNC", "?", "-1"]);
        assert_eq!(talk(&[ping, &["AUTH", "s3cret"], capa, psync], Some("s3cret")), (Ok(()), "+PONG\r\n+OK\r\n+OK\r\n".into()));
        assert_eq!(talk(&[&["AUTH", "default", "s3cret"], psync], Some("s3cret")).0, Ok(()));
        assert_eq!(talk(&[ping, capa, psync], None), (Ok(()), "+PONG\r\n+OK\r\n".into()));
        let refused = talk(&[ping, psync], Some("s3cret"));
        assert_eq!(
            refused,
            (Err("it sent PSYNC without the restore's password".into()), "+PONG\r\n-NOAUTH Authentication required.\r\n".into())
        );
        assert_eq!(talk(&[capa, psync], Some("s3cret")).0, Err("it sent REPLCONF without the restore's password".into()));
        assert_eq!(
            talk(&[&["AUTH", "guess"], psync], Some("s3cret")),
            (Err("it gave a wrong password".into()), "-WRONGPASS invalid password\r\n".into())
        );
    }

    /// A peer that connects first without the password is turned away, and
    /// the one that gives it is the replica the data goes to.
    #[test]
    fn the_restore_waits_past_a_peer_that_is_not_the_instance() {
        let target = RedisTarget::new(RedisSource::parse("redis://127.0.0.1:1").unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        let peers = std::thread::spawn(move || {
            let mut intruder = TcpStream::connect(at).unwrap();
            intruder.write_all(resp(&["PSYNC", "?", "-1"]).as_bytes()).unwrap();
            let mut turned_away = String::new();
            intruder.read_to_string(&mut turned_away).unwrap();
            let mut instance = TcpStream::connect(at).unwrap();
            instance.write_all(format!("{}{}", resp(&["AUTH", "s3cret"]), resp(&["PSYNC", "?", "-1"])).as_bytes()).unwrap();
            let mut got = [0u8; 10];
            instance.read_exact(&mut got).unwrap();
            (turned_away, got)
        });
        let mut replica = target.accept(listener, &Expect::Password("s3cret".into())).unwrap();
        replica.write_all(b"DATA!").unwrap();
        let (turned_away, got) = peers.join().unwrap();
        assert_eq!(turned_away, "-NOAUTH Authentication required.\r\n");
        assert_eq!(&got, b"+OK\r\nDATA!", "its password taken, the data goes to the instance, not the intruder");
    }
}
