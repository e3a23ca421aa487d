//! etcd: a snapshot through the Maintenance API, its SHA-256 trailer
//! checked while it streams; revision and key count recorded. Restore the
//! stored `etcd.db` with `etcdctl snapshot restore` (or `etcdutl`).

mod client;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, sync_channel};

use sha2::{Digest, Sha256};
use tresor_engine::SourceInfo;

use client::Client;
pub use client::{Config, MemberStatus, Tls};

use crate::{Error, ErrorKind, Result, Source, Stream};

const HASH_LEN: usize = 32;

/// How long the snapshot stream may send nothing: a member that froze, or
/// a connection left half open, must not hold a backup for ever.
const STALL: std::time::Duration = std::time::Duration::from_secs(120);

/// The stream's next message, unless `limit` passes first.
async fn within<T, E: std::fmt::Display>(
    limit: std::time::Duration,
    next: impl std::future::Future<Output = std::result::Result<Option<T>, E>>,
) -> std::result::Result<Option<T>, String> {
    match tokio::time::timeout(limit, next).await {
        Ok(r) => r.map_err(|e| format!("the snapshot stream broke: {e}")),
        Err(_) => Err(format!("the snapshot stream stalled: nothing came for {} s", limit.as_secs())),
    }
}

const USAGE: &str = "expected etcd://HOST:PORT[,HOST:PORT…][?cacert=CA.pem&cert=CLIENT.pem&key=CLIENT-KEY.pem] \
     (credentials from TRESOR_ETCD_USER and TRESOR_ETCD_PASSWORD)";

pub struct EtcdSource {
    url: String,
    config: Config,
    point: BTreeMap<String, serde_json::Value>,
}

/// `etcd://HOST:PORT[,HOST:PORT…]`, TLS from the URL's `cacert`, `cert`
/// and `key` (or `TRESOR_ETCD_CACERT`, `_CERT`, `_KEY`, as etcdctl names
/// them; `tls=true` alone trusts the system's CAs); a user from
/// `TRESOR_ETCD_USER` and `TRESOR_ETCD_PASSWORD`.
pub fn parse(url: &str) -> Result<Config> {
    let rest = url.strip_prefix("etcd://").unwrap_or_default();
    let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
    // A refused URL is named without its query or the password of a user
    // part: either may be a credential put where tresor does not read one.
    // The password is hidden first: it may hold the `?` the query is cut at.
    let hidden = tresor_storage::without_password(url);
    let shown = hidden.split('?').next().unwrap_or_default().to_string();
    let endpoints: Vec<String> = hosts.trim_end_matches('/').split(',').filter(|h| !h.is_empty()).map(String::from).collect();
    if endpoints.is_empty() || hosts.contains('@') || hidden != url {
        return Err(Error::failed(shown, USAGE));
    }
    let param = |name: &str| -> Result<Option<String>> {
        let mut found = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if k == name => found = Some(v.to_string()),
                Some((k, _)) if ["cacert", "cert", "key", "tls"].contains(&k) => {}
                _ => {
                    let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                    return Err(Error::failed(shown.as_str(), format!("unknown parameter {key:?}; {USAGE}")));
                }
            }
        }
        Ok(found.or_else(|| std::env::var(format!("TRESOR_ETCD_{}", name.to_uppercase())).ok()))
    };
    let (ca, cert, key) = (param("cacert")?, param("cert")?, param("key")?);
    let tls_on = param("tls")?.is_some_and(|v| v == "true" || v == "1");
    let tls = (ca.is_some() || cert.is_some() || key.is_some() || tls_on).then(|| Tls {
        ca: ca.map(PathBuf::from),
        cert: cert.map(PathBuf::from),
        key: key.map(PathBuf::from),
    });
    // One without the other was dropped, and etcd said only "user name is empty".
    let user = match (std::env::var("TRESOR_ETCD_USER").ok(), std::env::var("TRESOR_ETCD_PASSWORD").ok()) {
        (Some(user), Some(password)) => Some((user, password)),
        (None, None) => None,
        (Some(_), None) => return Err(Error::failed(shown, "TRESOR_ETCD_USER is set and TRESOR_ETCD_PASSWORD is not: set both")),
        (None, Some(_)) => return Err(Error::failed(shown, "TRESOR_ETCD_PASSWORD is set and TRESOR_ETCD_USER is not: set both")),
    };
    Ok(Config { endpoints, tls, user })
}

/// The version and member id of the first member of `url` that answers.
pub async fn status(url: &str) -> Result<MemberStatus> {
    let config = parse(url)?;
    let mut client = Client::connect(&config).await.map_err(|e| failed(url, e))?;
    client.status().await.map_err(|e| failed(url, e))
}

/// A failed exchange as the source's error: a server out of reach is
/// `Unreachable`, which the daemon retries (as a Redis that refuses).
fn failed(url: &str, e: client::Failure) -> Error {
    Error::of(if e.unreachable { ErrorKind::Unreachable } else { ErrorKind::Other }, url, e.text)
}

impl EtcdSource {
    pub fn parse(url: &str) -> Result<EtcdSource> {
        Ok(EtcdSource { url: url.to_string(), config: parse(url)?, point: BTreeMap::new() })
    }
}

impl Source for EtcdSource {
    fn open(&mut self) -> Result<Stream> {
        let url = self.url.clone();
        let fail = |e: client::Failure| failed(&url, e);
        let rt = tokio::runtime::Handle::current();
        let (revision, keys, mut stream) = rt.block_on(async {
            let mut client = Client::connect(&self.config).await.map_err(fail)?;
            let (revision, keys) = client.count_keys().await.map_err(fail)?;
            let stream = client.snapshot().await.map_err(fail)?;
            Ok::<_, Error>((revision, keys, stream))
        })?;
        self.point.insert("revision".into(), revision.into());
        self.point.insert("keys".into(), keys.into());
        let (tx, rx) = sync_channel::<std::io::Result<Vec<u8>>>(8);
        let name = url.clone();
        rt.spawn(async move {
            loop {
                let next = match within(STALL, stream.message()).await {
                    Ok(Some(msg)) => Ok(msg.blob),
                    Ok(None) => break,
                    Err(why) => Err(std::io::Error::other(format!("{name}: {why}; no snapshot was saved"))),
                };
                let last = next.is_err();
                if tx.send(next).is_err() || last {
                    break;
                }
            }
        });
        let reader = SnapshotReader::new(url, rx);
        Ok(Stream { name: "etcd.db".into(), reader: Box::new(reader) })
    }

    fn info(&self) -> SourceInfo {
        SourceInfo { kind: "etcd".into(), url: Some(self.url.clone()), consistency: self.point.clone() }
    }
}

/// The snapshot bytes as they arrive; every byte but the last 32 is
/// hashed, and at the end the hash must equal those 32 bytes.
struct SnapshotReader {
    url: String,
    rx: Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
    hasher: Sha256,
    /// The newest bytes not hashed yet (at most 32 once a chunk is taken in).
    held: Vec<u8>,
    total: u64,
}

/// Chunks as the Maintenance API delivers them, read through the check.
pub(crate) fn read_checked(url: &str, chunks: impl IntoIterator<Item = Vec<u8>>) -> std::io::Result<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    for c in chunks {
        tx.send(Ok(c)).expect("the receiver is here");
    }
    drop(tx);
    let mut out = Vec::new();
    SnapshotReader::new(url.into(), rx).read_to_end(&mut out)?;
    Ok(out)
}

impl SnapshotReader {
    fn new(url: String, rx: Receiver<std::io::Result<Vec<u8>>>) -> SnapshotReader {
        SnapshotReader { url, rx, chunk: Vec::new(), at: 0, hasher: Sha256::new(), held: Vec::new(), total: 0 }
    }

    fn take_in(&mut self, chunk: &[u8]) {
        self.held.extend_from_slice(chunk);
        if self.held.len() > HASH_LEN {
            let cut = self.held.len() - HASH_LEN;
            self.hasher.update(&self.held[..cut]);
            self.held.drain(..cut);
        }
        self.total += chunk.len() as u64;
    }

    fn verify(&self) -> std::io::Result<()> {
        let digest = self.hasher.clone().finalize();
        if self.held.len() != HASH_LEN || digest.as_slice() != self.held.as_slice() {
            return Err(std::io::Error::other(format!(
                "{}: the snapshot ({} bytes) fails its SHA-256 check; no snapshot was saved",
                self.url, self.total
            )));
        }
        Ok(())
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.chunk = next?;
                    self.at = 0;
                    let chunk = std::mem::take(&mut self.chunk);
                    self.take_in(&chunk);
                    self.chunk = chunk;
                }
                Err(_) => {
                    self.verify()?;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_snapshot_stream_that_sends_nothing_is_a_failure() {
        let stalled = std::future::pending::<std::result::Result<Option<Vec<u8>>, String>>();
        let said = within(std::time::Duration::from_secs(1), stalled).await;
        assert_eq!(said, Err("the snapshot stream stalled: nothing came for 1 s".into()));
        let broke = within(STALL, async { Err::<Option<Vec<u8>>, _>("reset by peer") }).await;
        assert_eq!(broke, Err("the snapshot stream broke: reset by peer".into()));
    }

    /// A member that refuses the connection is out of reach, which the
    /// daemon retries (it was `Other`, a permanent failure, and a Redis
    /// refusing alike was retried).
    #[tokio::test]
    async fn a_refused_connection_is_unreachable() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("etcd://{}", closed.local_addr().unwrap());
        drop(closed);
        let e = status(&url).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    }

    fn read_all(data: Vec<u8>) -> std::io::Result<Vec<u8>> {
        read_checked("etcd://x", data.chunks(7).map(<[u8]>::to_vec))
    }

    #[test]
    fn the_sha256_trailer_is_checked_while_streaming() {
        let mut snap = b"bolt database pages".repeat(10);
        let hash = Sha256::digest(&snap);
        snap.extend_from_slice(&hash);
        assert_eq!(read_all(snap.clone()).unwrap(), snap, "every byte passes through, trailer included");
        snap[3] ^= 1;
        let err = read_all(snap).unwrap_err().to_string();
        assert_eq!(err, "etcd://x: the snapshot (222 bytes) fails its SHA-256 check; no snapshot was saved");
        assert!(read_all(b"short".to_vec()).is_err(), "a stream shorter than its hash is refused");
    }

    #[test]
    fn a_refused_url_is_named_without_its_credentials() {
        let refused = |url: &str| parse(url).unwrap_err().to_string();
        assert_eq!(
            refused("etcd://db:2379?cacert=/ca.pem&password=hunter2"),
            format!("etcd://db:2379: unknown parameter \"password\"; {USAGE}")
        );
        assert_eq!(refused("etcd://root:hunter2@db:2379"), format!("etcd://root:***@db:2379: {USAGE}"));
        // A password holding the `?` a query starts at, or a `/`.
        assert_eq!(refused("etcd://root:hu?nter2@db:2379"), format!("etcd://root:***@db:2379: {USAGE}"));
        assert_eq!(refused("etcd://root:hu/nter2@db:2379"), format!("etcd://root:***@db:2379: {USAGE}"));
    }
}
