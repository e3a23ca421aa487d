//! The repository config: format version and the choices fixed at `init`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::{Aead, Crypto};
use crate::pack::BlobKind;
use crate::{Error, Id, Result};

/// The format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams { min: 512 * 1024, avg: 1024 * 1024, max: 8 * 1024 * 1024 }
    }
}

/// `config` at the repository root: plaintext JSON (it holds no secret), with
/// a MAC under a key derived from the master secret so that tampering is
/// detected as soon as the repository is opened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub format: String,
    pub version: u32,
    pub id: Id,
    pub created: DateTime<Utc>,
    pub aead: Aead,
    /// zstd level; 0 stores everything uncompressed.
    pub compression: i32,
    pub chunker: ChunkerParams,
    /// Packs are sealed once they reach this many bytes.
    pub pack_size: u32,
    #[serde(default)]
    pub append_only: bool,
    /// A writer whose heartbeat is older than this is presumed dead
    /// (docs/ARCHITECTURE.md §7); writers beat six times per period.
    #[serde(default = "default_session_timeout")]
    pub session_timeout_secs: u64,
    /// The bucket's Object Lock retention: objects younger than this cannot
    /// be deleted, so prune leaves them for a later run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock_secs: Option<u64>,
    #[serde(default)]
    pub mac: String,
}

fn default_session_timeout() -> u64 {
    900
}

#[derive(Deserialize)]
struct Probe {
    format: Option<String>,
    version: Option<u32>,
}

/// Tree packs are sealed at this size when `pack_size` is larger: a writer
/// holds its tree pack whole until it is sealed (one per thread, and more
/// on their way to storage), where data packs stream out in pieces, and a
/// walk caches tree packs whole.
pub const TREE_PACK_MAX: usize = 4 << 20;

impl Config {
    /// The size at which a writer seals a pack of `kind`.
    pub fn pack_target(&self, kind: BlobKind) -> usize {
        match kind {
            BlobKind::Data => self.pack_size as usize,
            BlobKind::Tree => (self.pack_size as usize).min(TREE_PACK_MAX),
        }
    }

    pub fn new(aead: Aead, compression: i32) -> Config {
        Config {
            format: "tresor".into(),
            version: FORMAT_VERSION,
            id: Id::random(),
            created: Utc::now(),
            aead,
            compression,
            chunker: ChunkerParams::default(),
            pack_size: 16 * 1024 * 1024,
            append_only: false,
            session_timeout_secs: default_session_timeout(),
            object_lock_secs: None,
            mac: String::new(),
        }
    }

    /// Check the format and version before anything else, so a newer
    /// repository is refused with a clear message rather than misread.
    pub fn parse(location: &str, bytes: &[u8]) -> Result<Config> {
        let not_repo = |reason: String| Error::NotARepository { location: location.to_string(), reason };
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| not_repo(format!("config is not valid JSON: {e}")))?;
        if probe.format.as_deref() != Some("tresor") {
            return Err(not_repo("config does not name the tresor format".into()));
        }
        match probe.version {
            Some(v) if v > FORMAT_VERSION => {
                return Err(Error::NewerFormat { found: v, supported: FORMAT_VERSION });
            }
            Some(_) => {}
            None => return Err(not_repo("config has no format version".into())),
        }
        let config: Config = serde_json::from_slice(bytes).map_err(|e| not_repo(format!("config is malformed: {e}")))?;
        let c = config.chunker;
        let valid = 64 <= c.min && c.min <= c.avg && c.avg <= c.max && c.avg >= 256 && c.avg <= 4 << 20 && c.max <= 16 << 20;
        if !valid || config.pack_size < 1 << 20 || config.session_timeout_secs < 2 {
            return Err(Error::corrupt("config", config.id, "its chunker or pack settings are out of range"));
        }
        Ok(config)
    }

    fn mac_input(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.mac.clear();
        serde_json::to_vec(&unsigned).expect("config serializes")
    }

    pub fn sign(&mut self, crypto: &Crypto) {
        self.mac = hex::encode(crypto.mac(&self.mac_input()));
    }

    pub fn verify(&self, crypto: &Crypto) -> Result<()> {
        if hex::encode(crypto.mac(&self.mac_input())) != self.mac {
            return Err(Error::corrupt("config", self.id, "its MAC does not match: it was altered"));
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("config serializes");
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tree packs are sealed at 4 MiB unless packs are smaller; data packs
    /// at the pack size.
    #[test]
    fn tree_packs_are_sealed_at_four_mib_at_most() {
        let mut c = Config::new(Aead::Aes256Gcm, 3);
        assert_eq!((c.pack_target(BlobKind::Data), c.pack_target(BlobKind::Tree)), (16 << 20, 4 << 20));
        c.pack_size = 2 << 20;
        assert_eq!((c.pack_target(BlobKind::Data), c.pack_target(BlobKind::Tree)), (2 << 20, 2 << 20));
    }

    #[test]
    fn refuses_newer_and_foreign_configs() {
        let newer = br#"{"format":"tresor","version":99}"#;
        let err = Config::parse("r", newer).unwrap_err().to_string();
        assert_eq!(err, "repository format version 99 is newer than this tresor supports (version 1); upgrade tresor to use it");
        let foreign = br#"{"version":1,"id":"x"}"#;
        assert!(matches!(Config::parse("r", foreign), Err(Error::NotARepository { .. })));
        let c = Config::new(Aead::Aes256Gcm, 3);
        assert_eq!(Config::parse("r", &c.to_bytes()).unwrap(), c);
    }
}
