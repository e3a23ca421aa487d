//! Redis 7 multi-part AOF: a directory (`appendonlydir/`) with a manifest
//! naming one base file (RDB or AOF) and the incremental AOF files after it.
//! Backed up as files; the manifest is checked before (every file it names
//! is there, the base RDB passes its CRC64 check, AOF files start with a
//! command) and read again after: an AOF rewrite in between replaces the
//! files, so the copy is refused rather than saved inconsistent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tresor_engine::SourceInfo;

use crate::{Error, Result};

pub const KIND: &str = "redis-aof";

/// An AOF directory to back up, and its manifest as first read.
pub struct AofDir {
    dir: PathBuf,
    manifest: (PathBuf, String),
    info: SourceInfo,
}

pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) kind: String,
}

pub(crate) fn parse_manifest(text: &str) -> Option<Vec<Entry>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let field = |key: &str| words.chunks(2).find(|kv| kv[0] == key).and_then(|kv| kv.get(1)).map(|v| v.to_string());
            Some(Entry { name: field("file")?, kind: field("type")? })
        })
        .collect()
}

/// [`check_bytes`] of a file, read as it streams: a base RDB may be
/// larger than the memory tresor may use.
fn check_file(path: &Path, kind: &str) -> std::result::Result<u64, String> {
    use std::io::Read;
    let name = path.display().to_string();
    let cannot = |e: std::io::Error| format!("{name} is named in the manifest but cannot be read: {e}");
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    let len = file.metadata().map_err(cannot)?.len();
    let mut head = Vec::with_capacity(16);
    (&mut file).take(if len < 16 { 16 } else { 5 }).read_to_end(&mut head).map_err(cannot)?;
    if len < 16 || head != b"REDIS" {
        // All of a small file, or the first bytes of one that is no RDB, say what it is.
        return check_bytes(&name, kind, &head).map(|_| len);
    }
    let mut crc = crate::redis::crc64_update(0, &head);
    let mut body = (&mut file).take(len - 5 - 8);
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = body.read(&mut buf).map_err(cannot)?;
        if n == 0 {
            break;
        }
        crc = crate::redis::crc64_update(crc, &buf[..n]);
    }
    let mut trailer = [0u8; 8];
    file.read_exact(&mut trailer).map_err(cannot)?;
    let stored = u64::from_le_bytes(trailer);
    if stored != 0 && crc != stored {
        return Err(format!("{name} fails its CRC64 check"));
    }
    Ok(len)
}

/// An RDB (its CRC64 trailer) or an AOF (it starts with a command).
pub(crate) fn check_bytes(name: &str, kind: &str, data: &[u8]) -> std::result::Result<u64, String> {
    if data.starts_with(b"REDIS") {
        let (body, trailer) = data.split_at(data.len().saturating_sub(8));
        let stored = u64::from_le_bytes(trailer.try_into().map_err(|_| format!("{name} is too short for an RDB"))?);
        if stored != 0 && crate::crc64(body) != stored {
            return Err(format!("{name} fails its CRC64 check"));
        }
    } else if !data.is_empty() && data[0] != b'*' {
        return Err(format!("{name} is neither an RDB nor an AOF (type {kind})"));
    }
    Ok(data.len() as u64)
}

impl AofDir {
    /// `redis-aof:DIR`: check the directory's manifest and files.
    pub fn open(url: &str) -> Result<AofDir> {
        let dir = PathBuf::from(url.strip_prefix("redis-aof:").unwrap_or(url));
        let fail = |why: String| Error::failed(url, why);
        let manifests: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| fail(format!("cannot read the directory: {e}")))?
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "manifest"))
            .collect();
        let [manifest] = manifests.as_slice() else {
            return Err(fail(format!("expected one *.manifest (Redis 7 multi-part AOF), found {}", manifests.len())));
        };
        let text = std::fs::read_to_string(manifest).map_err(|e| fail(e.to_string()))?;
        let entries = parse_manifest(&text).ok_or_else(|| fail(format!("{} is not an AOF manifest", manifest.display())))?;
        let mut bytes = 0;
        let mut point = BTreeMap::new();
        for e in entries.iter().filter(|e| e.kind != "h") {
            bytes += check_file(&dir.join(&e.name), &e.kind).map_err(fail)?;
            if e.kind == "b" {
                point.insert("base".to_string(), e.name.clone().into());
            }
        }
        if !point.contains_key("base") {
            return Err(fail(format!("{} names no base file", manifest.display())));
        }
        point.insert("incr_files".into(), entries.iter().filter(|e| e.kind == "i").count().into());
        point.insert("bytes".into(), bytes.into());
        let info = SourceInfo { kind: KIND.into(), url: Some(format!("redis-aof:{}", dir.display())), consistency: point };
        Ok(AofDir { dir, manifest: (manifest.clone(), text), info })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// After the files were read: the same manifest, or no snapshot.
    pub fn confirm(self) -> std::result::Result<SourceInfo, String> {
        let (path, text) = &self.manifest;
        match std::fs::read_to_string(path) {
            Ok(now) if &now == text => Ok(self.info),
            _ => Err(format!(
                "redis-aof:{}: the AOF was rewritten during the backup (its manifest changed); no snapshot was saved: run it again",
                self.dir.display()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file read as it streams says what its bytes say whole.
    #[test]
    fn a_file_is_checked_as_its_bytes_are() {
        let dir = tempfile::tempdir().unwrap();
        let mut rdb = b"REDIS0011".to_vec();
        rdb.extend(std::iter::repeat_n(7u8, 3 << 20));
        rdb.extend(crate::crc64(&rdb).to_le_bytes());
        let mut flipped = rdb.clone();
        flipped[2 << 20] ^= 1;
        let cases: [(&str, &[u8], &str); 5] = [
            ("good.rdb", &rdb, "b"),
            ("flipped.rdb", &flipped, "b"),
            ("short.rdb", b"REDIS0011", "b"),
            ("incr.aof", b"*2\r\n$6\r\nSELECT\r\n", "i"),
            ("junk.aof", b"hello", "i"),
        ];
        for (name, bytes, kind) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let whole = check_bytes(&path.display().to_string(), kind, bytes);
            assert_eq!(check_file(&path, kind), whole, "{name}");
        }
        assert_eq!(
            check_file(&dir.path().join("flipped.rdb"), "b").unwrap_err(),
            format!("{}/flipped.rdb fails its CRC64 check", dir.path().display())
        );
    }
}
