//! 32-byte object identifiers and a hasher that exploits their randomness.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The id of a blob, pack, index file or snapshot.
///
/// Blob ids are keyed BLAKE3 hashes of the plaintext; every other id is
/// random. Either way the bytes are uniformly distributed, which
/// [`IdBuildHasher`] relies on.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    pub fn random() -> Id {
        let mut b = [0u8; 32];
        rand::fill(&mut b);
        Id(b)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The 8-character form shown to people.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_slice(b: &[u8]) -> Option<Id> {
        Some(Id(b.try_into().ok()?))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl FromStr for Id {
    type Err = String;
    fn from_str(s: &str) -> Result<Id, String> {
        let v = hex::decode(s).map_err(|_| format!("{s:?} is not a hex id"))?;
        Id::from_slice(&v).ok_or_else(|| format!("{s:?} is not a 64-digit hex id"))
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Hashes an [`Id`] by taking 8 of its already-random bytes: no need to run
/// SipHash over 32 bytes for every lookup in an index of millions of blobs.
#[derive(Clone, Copy, Default)]
pub struct IdBuildHasher;

impl BuildHasher for IdBuildHasher {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `Id` hashes as its array, which writes the 32 bytes in one call;
        // anything shorter (a length prefix) is folded in.
        if bytes.len() >= 8 {
            self.0 ^= u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        } else {
            for b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(*b);
            }
        }
    }
}

pub type IdMap<V> = std::collections::HashMap<Id, V, IdBuildHasher>;
pub type IdSet = std::collections::HashSet<Id, IdBuildHasher>;
