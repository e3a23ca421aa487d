//! Entry points for the fuzzers in `fuzz/` and for the test that replays
//! their corpora: each takes arbitrary bytes, runs them through the parser
//! that reads such bytes from storage, and must return without panicking.
//!
//! Objects stored encrypted are only parsed after they authenticate, so a
//! fuzzer feeding ciphertext alone would never get past the AEAD. Each
//! entry's first byte therefore chooses: even, the rest is the object as
//! stored (what an attacker without the key can hand over); odd, the rest is
//! the plaintext behind the authentication (what a bug, or a key holder,
//! could produce), opened or sealed here with a fixed fuzzing key.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};

use crate::crypto::{Aead, Crypto, MasterKey, blob_ad, file_ad};
use crate::index::{self, IndexFile};
use crate::pack::{BlobKind, FLAG_ZSTD, PACK_MAGIC, PackEntry, PackWriter, open_blob, open_blob_into, read_trailer};
use crate::slots::{KdfParams, KeyFile, Password};
use crate::snapshot::Snapshot;
use crate::tree::Tree;
use crate::{Id, IdSet};

/// The id every fuzzed object is bound to.
pub const ID: Id = Id([1; 32]);
/// The password of the seed key slots.
pub const PASSWORD: &str = "fuzz";
/// A derivation cheap enough to run on every input that asks for no more.
const CHEAP: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
/// Blob lengths are authenticated metadata; beyond this a fuzzer would only
/// measure the allocator.
const MAX_RAW: u32 = 64 << 20;

pub fn crypto() -> &'static Crypto {
    static C: OnceLock<Crypto> = OnceLock::new();
    C.get_or_init(|| Crypto::new(&master(), Aead::Aes256Gcm))
}

fn master() -> MasterKey {
    MasterKey(zeroize::Zeroizing::new([0x5a; 32]))
}

/// The object's plaintext: opened with the fuzzing key, or given as is.
fn opened(kind: &'static str, data: &[u8]) -> Option<Vec<u8>> {
    let (&mode, rest) = data.split_first()?;
    if mode & 1 == 0 { crypto().open_file(kind, &ID, rest).ok() } else { Some(rest.to_vec()) }
}

/// `[mode][area length u16][blob area][tail]`: the tail is the pack's end
/// as stored (even mode) or the trailer's plaintext (odd mode). The mode's
/// other bits choose where restore's ranged read cuts each blob.
pub fn pack(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Some((len, rest)) = rest.split_first_chunk::<2>() else { return };
    let area = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (area, tail) = rest.split_at(area);
    let mut pack = area.to_vec();
    if mode & 1 == 0 {
        pack.extend_from_slice(tail);
    } else {
        let before = pack.len();
        crypto().seal_into(&file_ad("pack", &ID, 0), tail, &mut pack);
        let tlen = (pack.len() - before) as u32;
        pack.extend_from_slice(&tlen.to_le_bytes());
        pack.extend_from_slice(PACK_MAGIC);
    }
    let Ok(entries) = read_trailer(crypto(), &ID, &pack, pack.len() as u64) else { return };
    let stride = 1 + usize::from(mode >> 1).pow(2);
    for e in entries.into_iter().filter(|e| e.raw_length <= MAX_RAW) {
        let _ = open_whole_and_in_pieces(&e, &pack[e.offset as usize..(e.offset + e.length) as usize], stride);
    }
}

/// [`open_blob`] of `sealed`, which must agree with opening it as restore
/// does: from the pieces a ranged read delivers, here `stride` bytes each.
fn open_whole_and_in_pieces(e: &PackEntry, sealed: &[u8], stride: usize) -> crate::Result<Vec<u8>> {
    let whole = open_blob(crypto(), e, sealed);
    let mut plain = Vec::new();
    let cut = open_blob_into(crypto(), e, sealed.chunks(stride), sealed.len(), &mut plain, &mut Vec::new()).map(|()| plain);
    assert_eq!(outcome(&whole), outcome(&cut), "a blob opens the same in pieces");
    whole
}

fn outcome(r: &crate::Result<Vec<u8>>) -> Result<&[u8], String> {
    r.as_deref().map_err(ToString::to_string)
}

/// `[kind][flags][raw length u32][payload]`, the payload sealed here as
/// that blob and opened again: decompression and the length check.
pub fn blob(data: &[u8]) {
    let [kind, flags, a, b, c, d, payload @ ..] = data else { return };
    let Some(kind) = BlobKind::from_u8(*kind) else { return };
    let raw_length = u32::from_le_bytes([*a, *b, *c, *d]).min(MAX_RAW);
    let sealed = crypto().seal(&blob_ad(kind as u8, *flags, &ID), payload);
    let e = PackEntry { kind, flags: *flags, id: ID, offset: 0, length: sealed.len() as u32, raw_length };
    if let Ok(plain) = open_whole_and_in_pieces(&e, &sealed, 1 + sealed.len() % 61) {
        assert_eq!(plain.len(), raw_length as usize);
        if flags & FLAG_ZSTD == 0 {
            assert_eq!(plain, payload);
        }
    }
}

/// An index file, a prune's mark or a quarantine record (the same format): decoded, merged,
/// queried, and encoded back to the same bytes.
pub fn index(data: &[u8]) {
    let Some(plain) = opened("index", data) else { return };
    let Ok(file) = IndexFile::decode(&ID, &plain) else { return };
    assert_eq!(file.encode(), plain, "an index file encodes back to its bytes");
    let files = [(ID, file.clone())];
    let merged = index::merge(&files, &IdSet::default());
    for p in &file.packs {
        for e in &p.entries {
            assert!(merged.get(&e.id).is_some(), "every listed blob is found");
        }
    }
    assert_eq!(merged.pack_usage().count(), merged.packs().count());
}

pub fn snapshot(data: &[u8]) {
    let Some(plain) = opened("snapshot", data) else { return };
    let Ok(s) = crate::repo::parse_snapshot(&ID, &plain) else { return };
    let again = crate::repo::parse_snapshot(&ID, &serde_json::to_vec(&s).expect("snapshots serialize")).expect("a snapshot reads back");
    assert_eq!(again, s);
    let _ = s.to_json();
}

/// A tree blob's plaintext (trees are blobs: [`blob`] covers their envelope).
pub fn tree(data: &[u8]) {
    let Ok(t) = serde_json::from_slice::<Tree>(data) else { return };
    for n in &t.nodes {
        let _ = (n.os_name(), n.os_link_target(), n.name_bytes());
        let _ = t.find(&n.os_name());
    }
    let back: Tree = serde_json::from_slice(&t.encode()).expect("a tree reads back");
    assert_eq!(back, t);
}

/// The plaintext `config`, its MAC checked with the fuzzing key.
pub fn config(data: &[u8]) {
    let Ok(c) = crate::config::Config::parse("fuzz", data) else { return };
    let _ = c.verify(crypto());
    assert_eq!(crate::config::Config::parse("fuzz", &c.to_bytes()).expect("a config reads back"), c);
}

/// A plaintext key slot; unlocked when its derivation is cheap.
pub fn key(data: &[u8]) {
    let Ok(k) = KeyFile::parse(&ID, data) else { return };
    let p = k.params;
    if p.memory_kib <= 256 && p.iterations <= 2 && p.parallelism <= 4 {
        let _ = k.unlock(&ID, &Password::new(PASSWORD));
    }
}

pub fn hold(data: &[u8]) {
    let Some(plain) = opened("hold", data) else { return };
    let _ = crate::holds::parse(&ID, &plain);
}

/// `[name length][heartbeat name][heartbeat]`: the name as listed, the
/// heartbeat as [`opened`] reads it.
pub fn session(data: &[u8]) {
    let Some((name, rest)) = named(data) else { return };
    let _ = crate::session::parse_beat_name(name);
    let Some(plain) = opened("session", rest) else { return };
    let _ = crate::session::parse_beat(&ID, &plain, DateTime::<Utc>::UNIX_EPOCH);
}

/// `[name length][entry name][entry plaintext]`.
pub fn evidence(data: &[u8]) {
    let Some((name, plain)) = named(data) else { return };
    let _ = crate::objects::parse_evidence_name(name);
    let Ok(e) = serde_json::from_slice::<crate::evidence::Entry>(plain) else { return };
    let back: crate::evidence::Entry = serde_json::from_slice(&serde_json::to_vec(&e).expect("entries serialize")).expect("reads back");
    assert_eq!(back, e);
}

fn named(data: &[u8]) -> Option<(&str, &[u8])> {
    let (&n, rest) = data.split_first()?;
    let name = rest.get(..usize::from(n))?;
    Some((std::str::from_utf8(name).ok()?, &rest[usize::from(n)..]))
}

fn with_name(name: &str, body: &[u8]) -> Vec<u8> {
    let mut v = vec![name.len() as u8];
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(body);
    v
}

/// Sealed (even mode) and plaintext (odd mode) seeds of one object.
fn both(kind: &str, plain: &[u8]) -> [Vec<u8>; 2] {
    let mut sealed = vec![0];
    sealed.extend(crypto().seal_file(kind, &ID, plain));
    let mut open = vec![1];
    open.extend_from_slice(plain);
    [sealed, open]
}

/// Seed inputs per target, built from real objects of the engine's own
/// types with the fuzzing key; `scripts/fuzz.sh seeds` writes them out.
pub fn seeds(snapshot: &Snapshot, tree: &Tree) -> Vec<(&'static str, Vec<u8>)> {
    let c = crypto();
    let text = b"a line of a text file that compresses well\n".repeat(40);
    let mut z = Vec::new();
    crate::pack::Compressor::new(3).expect("zstd").compress(&text, &mut z);
    let mut w = PackWriter::new(BlobKind::Data, 4096);
    w.id = ID;
    let e1 = w.add(c, c.blob_id(&text), text.len(), FLAG_ZSTD, &z);
    let e2 = w.add(c, c.blob_id(b"raw"), 3, 0, b"raw");
    let sealed = w.finish(c);
    let area = (e2.offset + e2.length) as usize;
    let mut out = Vec::new();
    let mut stored = vec![0];
    stored.extend_from_slice(&(area as u16).to_le_bytes());
    stored.extend_from_slice(&sealed.bytes);
    out.push(("pack", stored));
    let mut plain_trailer = vec![1];
    plain_trailer.extend_from_slice(&(area as u16).to_le_bytes());
    plain_trailer.extend_from_slice(&sealed.bytes[..area]);
    plain_trailer.extend_from_slice(&2u32.to_le_bytes());
    e1.encode(&mut plain_trailer);
    e2.encode(&mut plain_trailer);
    out.push(("pack", plain_trailer));
    let mut zblob = vec![BlobKind::Data as u8, FLAG_ZSTD];
    zblob.extend_from_slice(&(text.len() as u32).to_le_bytes());
    zblob.extend_from_slice(&z);
    out.push(("blob", zblob));
    out.push(("blob", [&[BlobKind::Tree as u8, 0, 3, 0, 0, 0][..], b"raw"].concat()));
    let ifile = IndexFile {
        supersedes: vec![Id([2; 32])],
        packs: vec![crate::index::IndexedPack { id: ID, size: sealed.size, entries: sealed.entries.clone() }],
    };
    out.extend(both("index", &ifile.encode()).map(|v| ("index", v)));
    out.extend(both("snapshot", &serde_json::to_vec(snapshot).expect("serializes")).map(|v| ("snapshot", v)));
    out.push(("tree", tree.encode()));
    let mut config = crate::config::Config::new(Aead::Aes256Gcm, 3);
    config.sign(c);
    out.push(("config", config.to_bytes()));
    let key = KeyFile::create_as(&ID, &master(), &Password::new(PASSWORD), CHEAP, "seed").expect("a key");
    let key_json = serde_json::to_vec_pretty(&key).expect("serializes");
    out.push(("key", key_json));
    let hold = serde_json::json!({"snapshot": Id([3; 32]), "reason": "litigation 2026-114", "by": "ops@host", "time": "2026-11-30T10:00:00+01:00"});
    out.extend(both("hold", hold.to_string().as_bytes()).map(|v| ("hold", v)));
    let beat = serde_json::json!({"host": "host", "pid": 4242, "command": "backup", "started": "2026-11-30T10:00:00Z", "ended": false});
    let beat_name = format!("{}-{:010}", ID.to_hex(), 7);
    out.extend(both("session", beat.to_string().as_bytes()).map(|v| ("session", with_name(&beat_name, &v))));
    let entry = crate::evidence::Entry {
        seq: 2,
        prev: Some(Id([4; 32])),
        time: DateTime::parse_from_rfc3339("2026-11-30T10:00:00+01:00").expect("a time"),
        kind: "job".into(),
        writer: "ops@host".into(),
        term: Some(3),
        body: serde_json::json!({"id": "job-1", "state": "succeeded"}),
    };
    let entry = serde_json::to_vec(&entry).expect("serializes");
    let hash = Id(*blake3::hash(&entry).as_bytes());
    out.push(("evidence", with_name(&format!("{:012}-{}", 2, hash.to_hex()), &entry)));
    out
}
