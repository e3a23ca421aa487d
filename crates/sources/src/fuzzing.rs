//! Entry points for the fuzzers in `fuzz/` and for the test that replays
//! their corpora: the bytes a service or its files hand a source, through
//! the code that checks them. Each must return without panicking.

use std::io::{BufReader, Cursor, Read, Write};

use crate::pgwal::{self, WalFile};
use crate::redis::{Conn, RedisSource};

/// A server that answers with the given bytes, whatever it is sent.
struct Replay(Cursor<Vec<u8>>);

impl Read for Replay {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Replay {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A Redis server's side of the exchange a backup makes (replies to INFO,
/// RANDOMKEY, REPLCONF and PSYNC, then the RDB), read to its end.
pub fn redis_replication(data: &[u8]) {
    let mut source = RedisSource::parse("redis://fuzz:6379").expect("a valid URL");
    let conn = Conn {
        reader: BufReader::new(Box::new(Replay(Cursor::new(data.to_vec())))),
        local: ([127, 0, 0, 1], 1).into(),
        peer: ([127, 0, 0, 1], 2).into(),
        silence: source.silence,
    };
    if let Ok(mut stream) = source.replicate(conn) {
        let _ = std::io::copy(&mut stream.reader, &mut std::io::sink());
    }
}

/// A multi-part AOF manifest.
pub fn aof_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = crate::redis_aof::parse_manifest(text);
}

/// `[type][file]`: a file an AOF manifest names, RDB or AOF.
pub fn aof_file(data: &[u8]) {
    let Some((&kind, file)) = data.split_first() else { return };
    let kind = if kind & 1 == 0 { "b" } else { "i" };
    if let Ok(n) = crate::redis_aof::check_bytes("fuzz", kind, file) {
        assert_eq!(n, file.len() as u64);
    }
}

const SEG_SIZES: [u64; 4] = [1 << 20, 16 << 20, 64 << 20, 1 << 30];

/// Archive file names, one a line, and the chain arithmetic over them.
pub fn wal_names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let files: Vec<WalFile> = text.lines().filter_map(WalFile::parse).collect();
    for line in text.lines() {
        let _ = (pgwal::parse_lsn(line), pgwal::lsn_segno(line, 16 << 20));
    }
    for seg_size in SEG_SIZES {
        let _ = pgwal::gaps(&files, seg_size);
        let oldest = files.first().map(|f| f.segno(seg_size));
        let _ = pgwal::unneeded(&files, oldest, seg_size);
        for f in &files {
            let _ = pgwal::segment_name(f.timeline, f.segno(seg_size), seg_size);
        }
    }
}

/// `[name length][file name][contents]`: a file the archiver hands over,
/// its header checked against its name.
pub fn wal_segment(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n).min(rest.len());
    let (name, contents) = rest.split_at(n);
    let name = std::str::from_utf8(name).ok().and_then(WalFile::parse);
    let file = name.unwrap_or_else(|| WalFile::parse("000000010000000000000001").expect("a segment name"));
    let _ = pgwal::check_segment(&file, contents);
}

/// `[chunk length][snapshot]`: an etcd snapshot as the Maintenance API
/// streams it, its SHA-256 trailer checked.
pub fn etcd_snapshot(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let chunks = rest.chunks(usize::from(n) + 1).map(<[u8]>::to_vec);
    if let Ok(out) = crate::etcd::read_checked("etcd://fuzz", chunks) {
        assert_eq!(out, rest);
    }
}

/// A Kubernetes object as a snapshot stores it (one YAML file), prepared
/// for a restore: filters, namespace mapping, the cluster's own objects
/// left out, and a rehearsal's rewrites (plurals as discovery would
/// guess them for unknown kinds; no cluster is asked).
pub fn k8s_object(data: &[u8]) {
    use crate::k8s::{Filters, Matcher};
    use crate::k8s_restore::{RestoreOptions, parse_objects, prepare};
    let files = [("namespaces/shop/apps/Deployment/web.yaml".to_string(), data.to_vec())];
    let Ok(objects) = parse_objects("k8s://fuzz", &files) else { return };
    let plurals: Vec<String> = objects.iter().map(|o| format!("{}s", o["kind"].as_str().unwrap_or_default().to_lowercase())).collect();
    let matcher = Matcher::new(&Filters::default()).expect("no filters");
    let mapped = RestoreOptions { mapping: [("shop".to_string(), "shop-2".to_string())].into(), ..RestoreOptions::default() };
    for options in [mapped, RestoreOptions::rehearsal()] {
        let transforms = options.transforms.compile().expect("no transforms");
        let _ = prepare(objects.clone(), plurals.clone(), &matcher, &options, &transforms);
    }
}

#[cfg(test)]
mod tests {
    /// Found writing the k8s_object target: a snapshot file that is YAML
    /// but not an object with metadata made the restore panic when it
    /// wrote the mapped name into it (corpus/k8s_object/crash-*).
    #[test]
    fn a_yaml_file_that_is_no_object_is_refused_in_one_line() {
        for (yaml, path) in [
            (&b"42\n"[..], "a.yaml"),
            (b"kind: ConfigMap\nmetadata: web\n", "b.yaml"),
            (b"- kind: Service\n", "c.yaml"),
            (b"kind: Deployment\nmetadata: {name: w}\nspec: [1]\n", "d.yaml"),
        ] {
            let err = crate::k8s_restore::parse_objects("k8s://x", &[(path.to_string(), yaml.to_vec())]).expect_err("refused");
            assert_eq!(
                err.to_string(),
                format!(
                    "k8s://x: {path} in the snapshot is not a Kubernetes object (a mapping with metadata, and mappings where a restore writes)"
                )
            );
        }
        super::k8s_object(b"kind: ConfigMap\nmetadata: web\n");
    }

    /// Found by the wal_names and wal_segment fuzzers: a name of the right
    /// length in bytes with a multi-byte character where the parser cuts
    /// it at fixed offsets panicked (corpus/wal_*/crash-*).
    #[test]
    fn a_wal_name_that_is_not_ascii_is_no_wal_name() {
        for name in ["000000010000000\u{48a}artial1", "0000000\u{420}00000tial    x", "000000010000000000000002.\u{420}0000028.backup"] {
            assert_eq!(crate::pgwal::WalFile::parse(name), None, "{name}");
        }
    }
}
