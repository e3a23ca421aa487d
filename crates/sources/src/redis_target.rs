//! `--to redis://…`: load an RDB into a running instance the way Redis
//! itself does. tresor briefly plays master: the instance is told
//! `REPLICAOF` tresor's address, asks for a full resync, and receives the
//! RDB, which it loads exactly as a replica would (every type, encoding and
//! TTL). Then `REPLICAOF NO ONE` makes it a master again, also when the
//! restore fails: an instance left a replica of tresor's closed port would
//! refuse every write. No RDB parsing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::redis::{Conn, RedisSource, key_count};
use crate::{Error, Result, Target};

pub struct RedisTarget {
    redis: RedisSource,
    control: Option<Conn>,
    replica: Option<TcpStream>,
    /// The instance was told to replicate from tresor, and not yet released.
    replicating: bool,
}

impl RedisTarget {
    pub fn new(redis: RedisSource) -> RedisTarget {
        RedisTarget { redis, control: None, replica: None, replicating: false }
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

    fn keys(&self, c: &mut Conn) -> Result<u64> {
        let info = c.call(&["INFO", "keyspace"]).map_err(|e| self.redis.fail(e))?;
        if info.starts_with('-') {
            return Err(self.redis.refused(&info));
        }
        Ok(key_count(&info))
    }

    /// Wait for the instance to connect, and answer its handshake up to
    /// `PSYNC`.
    fn accept(&self, listener: TcpListener) -> Result<TcpStream> {
        listener.set_nonblocking(true).map_err(|e| self.redis.fail(e))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(self.redis.fail(format!("the instance did not connect back to tresor: {e}"))),
            }
        };
        stream.set_nonblocking(false).map_err(|e| self.redis.fail(e))?;
        // A peer that connects and says nothing must not hold the restore.
        stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| self.redis.fail(e))?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| self.redis.fail(e))?);
        let mut writer = stream.try_clone().map_err(|e| self.redis.fail(e))?;
        loop {
            let args = read_command(&mut reader).map_err(|e| self.redis.fail(format!("replication handshake: {e}")))?;
            let reply: &[u8] = match args.first().map(|a| a.to_ascii_uppercase()).as_deref() {
                Some("PING") => b"+PONG\r\n",
                Some("PSYNC") | Some("SYNC") => return Ok(stream),
                _ => b"+OK\r\n",
            };
            writer.write_all(reply).map_err(|e| self.redis.fail(e))?;
        }
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
        let keys = self.keys(&mut c)?;
        if keys > 0 && !overwrite {
            return Err(self.redis.fail(format!("the instance holds {keys} keys; restoring replaces them all: add --flush to allow it")));
        }
        // The instance reaches tresor at the address it sees our connection from.
        let local = c.local;
        let listener = TcpListener::bind((local.ip(), 0)).map_err(|e| self.redis.fail(e))?;
        let port = listener.local_addr().map_err(|e| self.redis.fail(e))?.port();
        let reply = c.call(&["REPLICAOF", &local.ip().to_string(), &port.to_string()]).map_err(|e| self.redis.fail(e))?;
        if !reply.starts_with('+') {
            return Err(self.redis.fail(format!("the instance refused REPLICAOF: {}", reply.trim_start_matches('-'))));
        }
        self.replicating = true;
        let mut replica = self.accept(listener)?;
        let header = format!("+FULLRESYNC {} 0\r\n${len}\r\n", "7e5e".repeat(10));
        replica.write_all(header.as_bytes()).map_err(|e| self.redis.fail(e))?;
        self.control = Some(c);
        self.replica = Some(replica);
        Ok(())
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
        let keys = self.keys(&mut c)?;
        Ok(format!("{} loaded the RDB and holds {keys} keys", self.redis.url()))
    }

    /// Over a new connection: the control one may be what failed. An
    /// unfinished transfer ends with the link, and the instance keeps the
    /// data it had (it loads a replicated RDB only once it is whole).
    fn abort(&mut self) -> Result<()> {
        self.replica = None;
        self.control = None;
        if !self.replicating {
            return Ok(());
        }
        let released = self.redis.connect().and_then(|mut c| self.release(&mut c));
        released.map_err(|e| {
            let why = match e {
                Error::Failed { reason, .. } => reason,
                other => other.to_string(),
            };
            self.redis.fail(format!("the instance is left a replica of tresor, refusing writes, until it is given REPLICAOF NO ONE: {why}"))
        })
    }
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
}
