//! Pack files: many encrypted blobs followed by an encrypted trailer that
//! lists them, so every pack describes itself and the index can always be
//! rebuilt from the packs alone (see docs/FORMAT.md).

use std::io;

use serde::{Deserialize, Serialize};

use crate::crypto::{AuthError, Crypto, blob_ad, file_ad};
use crate::{Error, Id, Result};

pub const PACK_MAGIC: &[u8; 8] = b"TRESORP1";
pub const ENTRY_LEN: usize = 46;
/// Trailer length (u32 LE) and magic close every pack.
pub const FOOTER_LEN: usize = 12;
pub const FLAG_ZSTD: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum BlobKind {
    Data = 0,
    Tree = 1,
}

impl BlobKind {
    pub fn from_u8(b: u8) -> Option<BlobKind> {
        match b {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            _ => None,
        }
    }
}

/// Where one blob sits in its pack, and how to turn it back into plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub kind: BlobKind,
    pub flags: u8,
    pub id: Id,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

impl PackEntry {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.push(self.flags);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.raw_length.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> Option<PackEntry> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Some(PackEntry {
            kind: BlobKind::from_u8(b[0])?,
            flags: b[1],
            id: Id::from_slice(&b[2..34])?,
            offset: u32_at(34),
            length: u32_at(38),
            raw_length: u32_at(42),
        })
    }
}

/// Compresses blobs with one reusable zstd context per thread.
pub struct Compressor {
    level: i32,
    ctx: Option<zstd::bulk::Compressor<'static>>,
}

impl Compressor {
    pub fn new(level: i32) -> io::Result<Compressor> {
        let ctx = if level == 0 { None } else { Some(zstd::bulk::Compressor::new(level)?) };
        Ok(Compressor { level, ctx })
    }

    /// Compress into `out` (a buffer the caller reuses) and say whether that
    /// is worth storing: false means store the blob raw.
    ///
    /// Large blobs are probed first with a 16 KiB sample: already-compressed
    /// or encrypted data would otherwise cost a full zstd pass for nothing.
    pub fn compress(&mut self, data: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(ctx) = self.ctx.as_mut() else { return false };
        const SAMPLE: usize = 16 * 1024;
        out.clear();
        if data.len() > 8 * SAMPLE {
            out.reserve(SAMPLE);
            let Ok(n) = ctx.compress_to_buffer(&data[..SAMPLE], out) else { return false };
            if n * 100 > SAMPLE * 97 {
                return false;
            }
            out.clear();
        }
        // Written into spare capacity, no zeroing; zstd fails rather than
        // overflow when the output would not fit, which means no gain anyway.
        out.reserve(data.len());
        matches!(ctx.compress_to_buffer(data, out), Ok(n) if n < data.len())
    }

    pub fn level(&self) -> i32 {
        self.level
    }
}

/// A pack being filled. Blobs are encrypted straight into its buffer, which
/// a streaming writer may [`drain`](PackWriter::drain) at any time: offsets
/// keep counting from the start of the pack.
pub struct PackWriter {
    pub id: Id,
    pub kind: BlobKind,
    buf: Vec<u8>,
    drained: usize,
    entries: Vec<PackEntry>,
}

/// A finished pack. `bytes` is what was not drained yet (all of it for a
/// pack built in memory); `size` the length of the whole pack.
pub struct SealedPack {
    pub id: Id,
    pub kind: BlobKind,
    pub bytes: Vec<u8>,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

impl PackWriter {
    pub fn new(kind: BlobKind, capacity: usize) -> PackWriter {
        PackWriter::with_buffer(kind, Vec::with_capacity(capacity))
    }

    /// A pack filled into `buf` (cleared first), a buffer the caller recycles.
    pub fn with_buffer(kind: BlobKind, mut buf: Vec<u8>) -> PackWriter {
        buf.clear();
        PackWriter { id: Id::random(), kind, buf, drained: 0, entries: Vec::new() }
    }

    /// Length of the pack so far, drained bytes included.
    pub fn len(&self) -> usize {
        self.drained + self.buf.len()
    }

    /// Bytes added since the last drain.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Hand over the buffered bytes, e.g. to a storage writer; `next` (a
    /// buffer the caller recycles, cleared here) takes their place, so a
    /// streamed pack does not fault in fresh pages for every piece.
    pub fn drain_into(&mut self, mut next: Vec<u8>) -> Vec<u8> {
        next.clear();
        self.drained += self.buf.len();
        std::mem::replace(&mut self.buf, next)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Encrypt and append one blob; `payload` is the plaintext or its zstd form.
    pub fn add(&mut self, crypto: &Crypto, id: Id, raw_length: usize, flags: u8, payload: &[u8]) -> PackEntry {
        let start = self.buf.len();
        crypto.seal_into(&blob_ad(self.kind as u8, flags, &id), payload, &mut self.buf);
        let entry = PackEntry {
            kind: self.kind,
            flags,
            id,
            offset: (self.drained + start) as u32,
            length: (self.buf.len() - start) as u32,
            raw_length: raw_length as u32,
        };
        self.entries.push(entry);
        entry
    }

    /// Append a blob sealed elsewhere (its associated data names no pack,
    /// so prune moves blobs between packs without decrypting them).
    pub fn add_sealed(&mut self, from: &PackEntry, sealed: &[u8]) -> PackEntry {
        let entry = PackEntry { offset: self.len() as u32, ..*from };
        self.buf.extend_from_slice(sealed);
        self.entries.push(entry);
        entry
    }

    pub fn finish(mut self, crypto: &Crypto) -> SealedPack {
        let mut plain = Vec::with_capacity(4 + self.entries.len() * ENTRY_LEN);
        plain.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            e.encode(&mut plain);
        }
        let before = self.buf.len();
        crypto.seal_into(&file_ad("pack", &self.id, 0), &plain, &mut self.buf);
        let trailer_len = (self.buf.len() - before) as u32;
        self.buf.extend_from_slice(&trailer_len.to_le_bytes());
        self.buf.extend_from_slice(PACK_MAGIC);
        let size = (self.drained + self.buf.len()) as u64;
        SealedPack { id: self.id, kind: self.kind, bytes: self.buf, size, entries: self.entries }
    }
}

/// Read the entry list from the end of a pack. `tail` is the last bytes of
/// the pack (at least the footer and trailer); `pack_len` its full length.
pub fn read_trailer(crypto: &Crypto, id: &Id, tail: &[u8], pack_len: u64) -> Result<Vec<PackEntry>> {
    let corrupt = |why: &str| Error::corrupt("pack", id, why);
    if tail.len() < FOOTER_LEN || &tail[tail.len() - 8..] != PACK_MAGIC {
        return Err(corrupt("it does not end with the pack magic (truncated or not a pack)"));
    }
    let n = tail.len();
    let tlen = u32::from_le_bytes(tail[n - 12..n - 8].try_into().expect("4 bytes")) as usize;
    if tlen + FOOTER_LEN > n {
        return Err(corrupt("its trailer length is larger than the pack"));
    }
    let plain = crypto
        .open(&file_ad("pack", id, 0), &tail[n - FOOTER_LEN - tlen..n - FOOTER_LEN])
        .map_err(|AuthError| corrupt("its trailer fails authentication"))?;
    if plain.len() < 4 {
        return Err(corrupt("its trailer is too short"));
    }
    let count = u32::from_le_bytes(plain[..4].try_into().expect("4 bytes")) as usize;
    if plain.len() != 4 + count * ENTRY_LEN {
        return Err(corrupt("its trailer has the wrong length for its entry count"));
    }
    let data_end = pack_len.saturating_sub((tlen + FOOTER_LEN) as u64);
    plain[4..]
        .chunks_exact(ENTRY_LEN)
        .map(|b| {
            let e = PackEntry::decode(b).ok_or_else(|| corrupt("its trailer has an unknown blob type"))?;
            if u64::from(e.offset) + u64::from(e.length) > data_end {
                return Err(corrupt("a trailer entry points past the blob area"));
            }
            Ok(e)
        })
        .collect()
}

thread_local! {
    /// Creating a zstd context costs more than decompressing a small tree,
    /// and a walk decompresses thousands of them.
    static DECOMPRESSOR: std::cell::RefCell<zstd::bulk::Decompressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().expect("zstd context"));
}

/// Decrypt, decompress and check one blob.
pub fn open_blob(crypto: &Crypto, e: &PackEntry, sealed: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    open_blob_into(crypto, e, [sealed], sealed.len(), &mut out, &mut Vec::new())?;
    Ok(out)
}

/// [`open_blob`] of `len` sealed bytes given in pieces, into reusable
/// buffers: `out` gets the plaintext, `scratch` holds the compressed form
/// when there is one.
pub fn open_blob_into<P: AsRef<[u8]>>(
    crypto: &Crypto,
    e: &PackEntry,
    sealed: impl IntoIterator<Item = P>,
    len: usize,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let zstd = e.flags & FLAG_ZSTD != 0;
    let target = if zstd { &mut *scratch } else { &mut *out };
    crypto
        .open_pieces_into(&blob_ad(e.kind as u8, e.flags, &e.id), sealed, len, target)
        .map_err(|AuthError| Error::corrupt("blob", e.id, "it fails authentication"))?;
    if zstd {
        out.clear();
        out.reserve(e.raw_length as usize);
        DECOMPRESSOR
            .with(|d| d.borrow_mut().decompress_to_buffer(scratch.as_slice(), out))
            .map_err(|err| Error::corrupt("blob", e.id, format!("it does not decompress: {err}")))?;
    }
    if out.len() != e.raw_length as usize {
        return Err(Error::corrupt("blob", e.id, "its length differs from the index"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Aead, MasterKey};

    #[test]
    fn pack_round_trip_and_damage() {
        let c = Crypto::new(&MasterKey::generate(), Aead::Aes256Gcm);
        let mut w = PackWriter::new(BlobKind::Data, 1024);
        let mut comp = Compressor::new(3).unwrap();
        let text = b"abcabcabcabcabcabcabcabcabcabcabcabcabcabc".repeat(10);
        let mut z = Vec::new();
        assert!(comp.compress(&text, &mut z));
        assert!(!comp.compress(b"abc", &mut Vec::new()), "too small to shrink");
        let e1 = w.add(&c, c.blob_id(&text), text.len(), FLAG_ZSTD, &z);
        let e2 = w.add(&c, c.blob_id(b"raw"), 3, 0, b"raw");
        let p = w.finish(&c);
        let entries = read_trailer(&c, &p.id, &p.bytes, p.bytes.len() as u64).unwrap();
        assert_eq!(entries, vec![e1, e2]);
        let b1 = &p.bytes[e1.offset as usize..(e1.offset + e1.length) as usize];
        assert_eq!(open_blob(&c, &e1, b1).unwrap(), text);
        let mut bad = p.bytes.clone();
        bad[e2.offset as usize + 13] ^= 0xff;
        let b2 = &bad[e2.offset as usize..(e2.offset + e2.length) as usize];
        assert!(open_blob(&c, &e2, b2).unwrap_err().to_string().contains("fails authentication"));
        assert!(read_trailer(&c, &Id::random(), &p.bytes, p.bytes.len() as u64).is_err());
        assert!(read_trailer(&c, &p.id, &p.bytes[..p.bytes.len() - 1], 0).is_err());
    }
}
