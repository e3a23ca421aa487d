//! Key slots as stored: the master secret wrapped by keys derived from
//! passwords, one small JSON file per slot under `keys/`, read and unlocked
//! here. A layer below the repository handle, which opens through
//! [`unlock`]; the key commands that change slots are in `keys.rs`, above it.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use tresor_storage::Operator;

use crate::crypto::{Aead, Crypto, MasterKey, file_ad};
use crate::objects::{Kind, list_names};
use crate::{Error, Id, Result};

/// A password, zeroed on drop and never printed.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl Password {
    pub fn new(s: impl Into<String>) -> Password {
        Password(Zeroizing::new(s.into()))
    }

    /// A password file's content, without its final line break (`\n` or `\r\n`).
    pub fn read_file(path: &std::path::Path) -> std::io::Result<Password> {
        let text = Zeroizing::new(std::fs::read_to_string(path)?);
        let pw = text.strip_suffix('\n').unwrap_or(&text);
        Ok(Password::new(pw.strip_suffix('\r').unwrap_or(pw)))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Argon2id cost settings, stored in each slot so they can grow over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB and 3 passes: about a quarter second on a current core.
    fn default() -> Self {
        KdfParams { memory_kib: 64 * 1024, iterations: 3, parallelism: 1 }
    }
}

impl KdfParams {
    /// The default's cost in another amount of memory: below 64 MiB the passes
    /// rise (at most [`MAX_KDF`]'s 64) so that an unlock still does the default's
    /// work, and so takes about as long; what is lost is memory-hardness, which
    /// falls with the memory. For unlocking in small containers, and for tests.
    pub fn with_memory(memory_kib: u32) -> KdfParams {
        let d = KdfParams::default();
        let memory_kib = memory_kib.max(8 * d.parallelism);
        let work = u64::from(d.memory_kib) * u64::from(d.iterations);
        let passes = work.div_ceil(u64::from(memory_kib)).clamp(1, u64::from(MAX_KDF.iterations));
        KdfParams { memory_kib, iterations: passes as u32, ..d }
    }
}

/// The on-disk form of a key slot (`keys/<id>`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    pub created: DateTime<Utc>,
    pub hostname: String,
    pub username: String,
    #[serde(default)]
    pub label: String,
    pub kdf: String,
    #[serde(flatten)]
    pub params: KdfParams,
    pub salt: String,
    /// base64 of `nonce || AES-256-GCM(master secret) || tag`.
    pub data: String,
}

fn derive_kek(password: &Password, salt: &[u8], p: KdfParams) -> Result<MasterKey> {
    let params = Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
        .map_err(|e| Error::Invalid(format!("invalid key derivation parameters: {e}")))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password.as_bytes(), salt, &mut out[..])
        .map_err(|e| Error::Invalid(format!("key derivation failed: {e}")))?;
    Ok(MasterKey(out))
}

/// The wrapping key is itself run through the object KDF so it is only ever
/// used for this one purpose.
fn wrap_crypto(kek: &MasterKey) -> Crypto {
    Crypto::new(kek, Aead::Aes256Gcm)
}

/// The most a stored slot may ask of the key derivation. Slots are plaintext
/// JSON anyone with write access to the storage can change: unbounded
/// parameters would let such a file make every `open` allocate terabytes.
pub const MAX_KDF: KdfParams = KdfParams { memory_kib: 4 << 20, iterations: 64, parallelism: 64 };

impl KeyFile {
    /// A slot as stored, its derivation parameters within [`MAX_KDF`].
    pub fn parse(id: &Id, bytes: &[u8]) -> Result<KeyFile> {
        let key: KeyFile = serde_json::from_slice(bytes).map_err(|e| Error::corrupt("key", id, e))?;
        let p = key.params;
        if p.memory_kib > MAX_KDF.memory_kib || p.iterations > MAX_KDF.iterations || p.parallelism > MAX_KDF.parallelism {
            return Err(Error::corrupt("key", id, "its key derivation parameters exceed 4 GiB, 64 passes or 64 lanes"));
        }
        Ok(key)
    }

    pub fn create(master: &MasterKey, password: &Password, params: KdfParams, label: &str) -> Result<(Id, KeyFile)> {
        let id = Id::random();
        Ok((id, KeyFile::create_as(&id, master, password, params, label)?))
    }

    /// A slot to be stored as `keys/<id>`: the id is bound into its sealing.
    pub(crate) fn create_as(id: &Id, master: &MasterKey, password: &Password, params: KdfParams, label: &str) -> Result<KeyFile> {
        let mut salt = [0u8; 16];
        rand::fill(&mut salt);
        let kek = derive_kek(password, &salt, params)?;
        let sealed = wrap_crypto(&kek).seal(&file_ad("key", id, 0), &master.0[..]);
        Ok(KeyFile {
            version: 1,
            created: Utc::now(),
            hostname: crate::hostname(),
            username: crate::username(),
            label: label.to_string(),
            kdf: "argon2id".into(),
            params,
            salt: B64.encode(salt),
            data: B64.encode(sealed),
        })
    }

    /// Unwrap the master secret; `Error::WrongPassword` (naming this slot) if
    /// it does not open with `password`.
    pub fn unlock(&self, id: &Id, password: &Password) -> Result<MasterKey> {
        if self.kdf != "argon2id" {
            return Err(Error::corrupt("key", id, format!("unknown key derivation {:?}", self.kdf)));
        }
        let salt = B64.decode(&self.salt).map_err(|e| Error::corrupt("key", id, e))?;
        let data = B64.decode(&self.data).map_err(|e| Error::corrupt("key", id, e))?;
        let kek = derive_kek(password, &salt, self.params)?;
        let secret = wrap_crypto(&kek).open(&file_ad("key", id, 0), &data).map_err(|_| Error::WrongPassword { slots: vec![*id] })?;
        let bytes: [u8; 32] = secret.as_slice().try_into().map_err(|_| Error::corrupt("key", id, "wrapped secret has the wrong length"))?;
        Ok(MasterKey(Zeroizing::new(bytes)))
    }
}

pub(crate) fn slot_path(id: &Id) -> String {
    Kind::Key.path(id)
}

/// The ids of the stored slots, sorted, from one listing (other names under `keys/` left out).
pub(crate) async fn slot_ids(op: &Operator) -> Result<Vec<Id>> {
    let mut ids: Vec<Id> = list_names(op, Kind::Key).await?.iter().filter_map(|name| name.parse().ok()).collect();
    ids.sort();
    Ok(ids)
}

/// Every readable slot, and the listing they were read from (sorted): a
/// listed slot missing from the first vanished between listing and reading
/// (a concurrent `key passwd` or `remove`).
pub(crate) async fn read_slots(op: &Operator) -> Result<(Vec<(Id, KeyFile)>, Vec<Id>)> {
    let mut out = Vec::new();
    let listed = slot_ids(op).await?;
    for id in &listed {
        let path = slot_path(id);
        match op.read(&path).await {
            Ok(buf) => out.push((*id, KeyFile::parse(id, &buf.to_vec())?)),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::storage("read", path, e)),
        }
    }
    Ok((out, listed))
}

/// The listing `password` was tried against (sorted: a caller compares a
/// later listing with it, so a slot listed but unreadable counts as seen),
/// and the first slot, in that order, that `password` opens and `accept`
/// takes, with its master secret. Slots are tried one at a time and the
/// search stops there: each try is a full key derivation. `accept` sees
/// every slot that opens until one is taken (a tampered config is reported
/// by it, not here). A slot that vanished while being read may have been
/// replaced by one this password opens (`key passwd`): the slots are then
/// listed again.
pub(crate) async fn unlock(
    op: &Operator,
    password: &Password,
    mut accept: impl FnMut(&MasterKey) -> bool,
) -> Result<(Vec<Id>, Option<(Id, MasterKey)>)> {
    let mut tried = Vec::new();
    for _ in 0..4 {
        let (slots, listed) = read_slots(op).await?;
        let vanished = slots.len() != listed.len();
        tried = listed;
        let mut any_opened = false;
        for (id, key) in slots {
            match key.unlock(&id, password) {
                Ok(m) if accept(&m) => return Ok((tried, Some((id, m)))),
                Ok(_) => any_opened = true,
                Err(Error::WrongPassword { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        if any_opened || !vanished {
            return Ok((tried, None));
        }
    }
    Ok((tried, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };

    #[test]
    fn less_memory_buys_more_passes_for_the_same_work() {
        assert_eq!(KdfParams::with_memory(64 * 1024), KdfParams::default());
        assert_eq!(KdfParams::with_memory(16 * 1024), KdfParams { memory_kib: 16 * 1024, iterations: 12, parallelism: 1 });
        assert_eq!(KdfParams::with_memory(20 * 1024), KdfParams { memory_kib: 20 * 1024, iterations: 10, parallelism: 1 });
        assert_eq!(KdfParams::with_memory(1 << 20), KdfParams { memory_kib: 1 << 20, iterations: 1, parallelism: 1 });
        // Tiny test keys: the passes stop at what a stored slot may ask for, the memory at Argon2's least.
        assert_eq!(KdfParams::with_memory(64), KdfParams { memory_kib: 64, iterations: 64, parallelism: 1 });
        assert_eq!(KdfParams::with_memory(0).memory_kib, 8);
    }

    #[test]
    fn wrap_and_unwrap() {
        let master = MasterKey::generate();
        let (id, file) = KeyFile::create(&master, &Password::new("pw"), CHEAP, "").unwrap();
        let back = file.unlock(&id, &Password::new("pw")).unwrap();
        assert_eq!(&back.0[..], &master.0[..]);
        assert!(matches!(file.unlock(&id, &Password::new("nope")), Err(Error::WrongPassword { slots }) if slots == [id]));
        // A slot copied under another id does not open: the id is bound in.
        assert!(file.unlock(&Id::random(), &Password::new("pw")).is_err());
        assert_eq!(format!("{:?}", Password::new("pw")), "Password(<redacted>)");
    }
}
