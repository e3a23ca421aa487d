//! `--to redis://…`: load an RDB into a running instance the way Redis
//! itself does. tresor briefly plays master: the instance is told
//! `REPLICAOF` tresor's address, asks for a full resync, and receives the
//! RDB, which it loads exactly as a replica would (every type, encoding and
//! TTL). Then `REPLICAOF NO ONE` makes it a master again, also when the
//! restore fails: an instance left a replica of tresor's closed port would
//! refuse every write. No RDB parsing.

use std::io::{BufRead, BufReader, Write};
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

fn read_command(r: &mut impl BufRead) -> std::io::Result<Vec<String>> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let n: usize =
        line.trim().strip_prefix('*').and_then(|n| n.parse().ok()).ok_or_else(|| std::io::Error::other(format!("unexpected {line:?}")))?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line)?;
        let len: usize = line.trim().strip_prefix('$').and_then(|n| n.parse().ok()).ok_or_else(|| std::io::Error::other("bad bulk"))?;
        let mut buf = vec![0; len + 2];
        r.read_exact(&mut buf)?;
        buf.truncate(len);
        args.push(String::from_utf8_lossy(&buf).into_owned());
    }
    Ok(args)
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
