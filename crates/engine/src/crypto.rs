//! Keys and authenticated encryption.
//!
//! One random 32-byte master secret is made at `init`. Every key the engine
//! uses is derived from it with BLAKE3's key derivation, each under its own
//! context string, so no key is ever used for two purposes.

use std::fmt;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::Id;

pub const TAG_LEN: usize = 16;

/// The AEAD a repository encrypts with, fixed at `init`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Aead {
    /// AES-256-GCM with a random 96-bit nonce: fastest where the CPU has AES-NI.
    #[default]
    Aes256Gcm,
    /// XChaCha20-Poly1305 with a random 192-bit nonce: fast without AES hardware.
    Xchacha20Poly1305,
}

impl Aead {
    pub fn nonce_len(self) -> usize {
        match self {
            Aead::Aes256Gcm => 12,
            Aead::Xchacha20Poly1305 => 24,
        }
    }

    /// Bytes an encrypted object is longer than its plaintext.
    pub fn overhead(self) -> usize {
        self.nonce_len() + TAG_LEN
    }
}

/// The repository's master secret. Never printed, zeroed on drop.
#[derive(Clone)]
pub struct MasterKey(pub(crate) Zeroizing<[u8; 32]>);

impl MasterKey {
    pub fn generate() -> MasterKey {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::fill(&mut k[..]);
        MasterKey(k)
    }

    fn derive(&self, context: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(context, &self.0[..]))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

enum Cipher {
    /// ring's AES-GCM (BoringSSL's assembly): restore and backup move
    /// gigabytes through it, and the pure-Rust GHASH took a fifth of their
    /// CPU. Same standard AES-256-GCM, so the format is unchanged.
    Aes(Box<LessSafeKey>),
    XChaCha(Box<XChaCha20Poly1305>),
}

/// Everything needed to read and write a repository's objects.
pub struct Crypto {
    aead: Aead,
    cipher: Cipher,
    id_key: Zeroizing<[u8; 32]>,
    gear_key: Zeroizing<[u8; 32]>,
    mac_key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crypto").field("aead", &self.aead).field("keys", &"<redacted>").finish()
    }
}

/// Authentication failed: the data was altered, or the key is wrong.
#[derive(Debug, Clone, Copy)]
pub struct AuthError;

impl Crypto {
    pub fn new(master: &MasterKey, aead: Aead) -> Crypto {
        let enc = master.derive("tresor v1 2024 object encryption");
        let cipher = match aead {
            Aead::Aes256Gcm => Cipher::Aes(Box::new(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &enc[..]).expect("32-byte key")))),
            Aead::Xchacha20Poly1305 => Cipher::XChaCha(Box::new(XChaCha20Poly1305::new_from_slice(&enc[..]).expect("32-byte key"))),
        };
        Crypto {
            aead,
            cipher,
            id_key: master.derive("tresor v1 2024 blob id"),
            gear_key: master.derive("tresor v1 2024 chunker gear table"),
            mac_key: master.derive("tresor v1 2024 config mac"),
        }
    }

    pub fn aead(&self) -> Aead {
        self.aead
    }

    /// The id of a blob: BLAKE3 keyed with a repository secret, so ids reveal
    /// nothing about content to someone without the key.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    pub fn gear_seed(&self) -> &[u8; 32] {
        &self.gear_key
    }

    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.mac_key, data).as_bytes()
    }

    /// Append `nonce || ciphertext || tag` of `plaintext` to `out`.
    pub fn seal_into(&self, ad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let nlen = self.aead.nonce_len();
        let start = out.len();
        out.resize(start + nlen, 0);
        rand::fill(&mut out[start..start + nlen]);
        out.extend_from_slice(plaintext);
        let (head, body) = out.split_at_mut(start + nlen);
        let nonce = &head[start..];
        let tag: [u8; TAG_LEN] = match &self.cipher {
            Cipher::Aes(c) => {
                let nonce = Nonce::try_assume_unique_for_key(nonce).expect("12-byte nonce");
                let tag = c.seal_in_place_separate_tag(nonce, Aad::from(ad), body).expect("plaintext within AEAD limits");
                tag.as_ref().try_into().expect("16-byte tag")
            }
            Cipher::XChaCha(c) => {
                c.encrypt_in_place_detached(XNonce::from_slice(nonce), ad, body).expect("plaintext within AEAD limits").into()
            }
        };
        out.extend_from_slice(&tag);
    }

    pub fn seal(&self, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + self.aead.overhead());
        self.seal_into(ad, plaintext, &mut out);
        out
    }

    /// Decrypt `nonce || ciphertext || tag`.
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
        let mut buf = Vec::new();
        self.open_pieces_into(ad, [sealed], sealed.len(), &mut buf)?;
        Ok(buf)
    }

    /// Decrypt `nonce || ciphertext || tag`, `len` bytes given in pieces as
    /// a ranged read delivers them, into `out`, a buffer the caller reuses
    /// (restore decrypts gigabytes, and a fresh allocation per blob would
    /// cost a mapping each): the ciphertext is copied once, into `out`, and
    /// decrypted there, never glued together first.
    pub fn open_pieces_into<P: AsRef<[u8]>>(
        &self,
        ad: &[u8],
        pieces: impl IntoIterator<Item = P>,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), AuthError> {
        let nlen = self.aead.nonce_len();
        if len < nlen + TAG_LEN {
            return Err(AuthError);
        }
        let (mut nonce, mut tag, ct_end) = ([0u8; 24], [0u8; TAG_LEN], len - TAG_LEN);
        out.clear();
        out.reserve(ct_end - nlen);
        let mut at = 0;
        for piece in pieces {
            let piece = piece.as_ref();
            let (i, n) = overlap(piece, at, 0..nlen);
            nonce[i..i + n.len()].copy_from_slice(n);
            out.extend_from_slice(overlap(piece, at, nlen..ct_end).1);
            let (i, t) = overlap(piece, at, ct_end..len);
            tag[i..i + t.len()].copy_from_slice(t);
            at += piece.len();
        }
        if at != len {
            return Err(AuthError);
        }
        let nonce = &nonce[..nlen];
        match &self.cipher {
            Cipher::Aes(c) => {
                let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| AuthError)?;
                let tag = Tag::from(tag);
                c.open_in_place_separate_tag(nonce, Aad::from(ad), tag, out, 0..).map(|_| ()).map_err(|_| AuthError)
            }
            Cipher::XChaCha(c) => c
                .decrypt_in_place_detached(XNonce::from_slice(nonce), ad, out, chacha20poly1305::Tag::from_slice(&tag))
                .map_err(|_| AuthError),
        }
    }
}

/// The part of `piece`, which starts at byte `at` of the whole, that lies in
/// `region` of the whole, with its offset into the region (an empty part's
/// offset is within the region too, so it can be copied like any other).
fn overlap(piece: &[u8], at: usize, region: std::ops::Range<usize>) -> (usize, &[u8]) {
    let end = at + piece.len();
    let (from, to) = (region.start.clamp(at, end), region.end.clamp(at, end));
    (from.saturating_sub(region.start).min(region.len()), &piece[from - at..to - at])
}

/// Flag byte of a sealed file: the plaintext was zstd-compressed first.
pub const FILE_ZSTD: u8 = 1;

impl Crypto {
    /// The envelope of index, snapshot and other whole files:
    /// `flags || nonce || ciphertext || tag`, the flags authenticated too.
    pub fn seal_file(&self, kind: &str, id: &Id, plaintext: &[u8]) -> Vec<u8> {
        let compressed = zstd::bulk::compress(plaintext, 3).ok().filter(|z| z.len() < plaintext.len());
        let (flags, body) = match &compressed {
            Some(z) => (FILE_ZSTD, z.as_slice()),
            None => (0, plaintext),
        };
        let mut out = Vec::with_capacity(body.len() + 1 + self.aead.overhead());
        out.push(flags);
        self.seal_into(&file_ad(kind, id, flags), body, &mut out);
        out
    }

    pub fn open_file(&self, kind: &'static str, id: &Id, sealed: &[u8]) -> crate::Result<Vec<u8>> {
        let (&flags, rest) = sealed.split_first().ok_or_else(|| crate::Error::corrupt(kind, id, "it is empty"))?;
        let body =
            self.open(&file_ad(kind, id, flags), rest).map_err(|AuthError| crate::Error::corrupt(kind, id, "it fails authentication"))?;
        if flags & FILE_ZSTD == 0 {
            return Ok(body);
        }
        let mut out = Vec::new();
        zstd::stream::copy_decode(body.as_slice(), &mut out)
            .map_err(|e| crate::Error::corrupt(kind, id, format!("it does not decompress: {e}")))?;
        Ok(out)
    }
}

/// Associated data for a blob: its type, its flags and its id, so a blob
/// cannot be moved under another id or have its compression flag flipped.
pub fn blob_ad(kind: u8, flags: u8, id: &Id) -> [u8; 34] {
    let mut ad = [0u8; 34];
    ad[0] = kind;
    ad[1] = flags;
    ad[2..].copy_from_slice(id.as_bytes());
    ad
}

/// Associated data for a whole file (`index`, `snapshot`, `pack trailer`, …).
pub fn file_ad(kind: &str, id: &Id, flags: u8) -> Vec<u8> {
    let mut ad = Vec::with_capacity(kind.len() + 34);
    ad.extend_from_slice(b"tresor:");
    ad.extend_from_slice(kind.as_bytes());
    ad.push(0);
    ad.extend_from_slice(id.as_bytes());
    ad.push(flags);
    ad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        for aead in [Aead::Aes256Gcm, Aead::Xchacha20Poly1305] {
            let c = Crypto::new(&MasterKey::generate(), aead);
            let sealed = c.seal(b"ad", b"hello");
            assert_eq!(sealed.len(), 5 + aead.overhead());
            assert_eq!(c.open(b"ad", &sealed).unwrap(), b"hello");
            assert!(c.open(b"other ad", &sealed).is_err());
            let mut bad = sealed.clone();
            bad[aead.nonce_len()] ^= 1;
            assert!(c.open(b"ad", &bad).is_err());
            assert!(c.open(b"ad", &sealed[..3]).is_err());
        }
    }

    /// A sealed blob opens the same however a ranged read cut it, the cuts
    /// inside the nonce and the tag too; pieces short of or past its length,
    /// or one changed byte in any of them, fail.
    #[test]
    fn pieces_open_wherever_they_are_cut() {
        for aead in [Aead::Aes256Gcm, Aead::Xchacha20Poly1305] {
            let c = Crypto::new(&MasterKey::generate(), aead);
            let plain: Vec<u8> = (0..300u32).map(|i| (i * 13) as u8).collect();
            let sealed = c.seal(b"ad", &plain);
            let len = sealed.len();
            let mut out = Vec::new();
            for a in 0..=len {
                for b in [a, a + 1, (a + len) / 2, len - 1, len].into_iter().filter(|&b| a <= b && b <= len) {
                    let pieces = [&sealed[..a], &sealed[a..b], &sealed[b..]];
                    c.open_pieces_into(b"ad", pieces, len, &mut out).unwrap();
                    assert!(out == plain, "cut at {a} and {b}");
                }
                let mut bad = sealed.clone();
                bad[a.min(len - 1)] ^= 1;
                assert!(c.open_pieces_into(b"ad", [&bad[..a], &bad[a..]], len, &mut out).is_err(), "byte {a} changed");
            }
            assert!(c.open_pieces_into(b"ad", [&sealed[..len - 1]], len, &mut out).is_err());
            assert!(c.open_pieces_into(b"ad", [&sealed[..], b"x"], len, &mut out).is_err());
        }
    }

    /// ring seals what the pure-Rust aes-gcm crate (the implementation
    /// repositories were written with before) opens, and the other way round.
    #[test]
    fn aes_gcm_agrees_with_the_reference_implementation() {
        use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
        let master = MasterKey::generate();
        let c = Crypto::new(&master, Aead::Aes256Gcm);
        let reference = aes_gcm::Aes256Gcm::new_from_slice(&master.derive("tresor v1 2024 object encryption")[..]).unwrap();
        let plain: Vec<u8> = (0..100_003u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let sealed = c.seal(b"ad", &plain);
        let (nonce, body) = sealed.split_at(12);
        let opened = reference.decrypt(aes_gcm::Nonce::from_slice(nonce), Payload { msg: body, aad: b"ad" }).unwrap();
        assert_eq!(opened, plain);
        let mut theirs = nonce.to_vec();
        theirs.extend(reference.encrypt(aes_gcm::Nonce::from_slice(nonce), Payload { msg: &plain[..], aad: b"ad" }).unwrap());
        assert_eq!(theirs, sealed, "same key, nonce and input: same bytes");
        assert_eq!(c.open(b"ad", &theirs).unwrap(), plain);
        assert!(c.open(b"other", &theirs).is_err());
    }

    #[test]
    fn debug_hides_keys() {
        let m = MasterKey::generate();
        assert_eq!(format!("{m:?}"), "MasterKey(<redacted>)");
        let c = Crypto::new(&m, Aead::Aes256Gcm);
        assert!(format!("{c:?}").contains("<redacted>"));
    }
}
