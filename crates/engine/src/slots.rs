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

/// Argon2id's settings for `p`, once they are within [`MAX_KDF`] and
/// [`MAX_KDF_WORK`] and valid for Argon2; else why not.
fn argon2_params(p: KdfParams) -> std::result::Result<Params, String> {
    let work = u64::from(p.memory_kib) * u64::from(p.iterations);
    if p.memory_kib > MAX_KDF.memory_kib || p.iterations > MAX_KDF.iterations || p.parallelism > MAX_KDF.parallelism || work > MAX_KDF_WORK
    {
        return Err(format!(
            "the key derivation asks for {} KiB and {} passes on {} lanes, beyond the 4 GiB, 64 passes, 16 lanes and 4 GiB of passes a key may ask",
            p.memory_kib, p.iterations, p.parallelism
        ));
    }
    Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32)).map_err(|e| format!("invalid key derivation parameters: {e}"))
}

fn derive_kek(password: &Password, salt: &[u8], params: Params) -> Result<MasterKey> {
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

/// The most a slot may ask of the key derivation. Slots are plaintext
/// JSON anyone with write access to the storage can change: unbounded
/// parameters would let such a file make every `open` take gigabytes for
/// minutes (4 GiB and 64 passes took 7 minutes) before it says "wrong
/// password". 4 GiB is the most `--kdf-memory` ever allowed (one pass at
/// that size; it allows 1 GiB now): a slot an older tresor wrote still
/// opens its repository.
pub const MAX_KDF: KdfParams = KdfParams { memory_kib: 4 << 20, iterations: 64, parallelism: 16 };

/// The most memory × passes (KiB) a slot may ask: one pass over 4 GiB,
/// four over 1 GiB, twenty times the default's work.
pub const MAX_KDF_WORK: u64 = 4 << 20;

/// The length of a slot's salt and of its wrapped secret (nonce, secret, tag).
const SALT_LEN: usize = 16;
const WRAPPED_LEN: usize = 12 + 32 + 16;

impl KeyFile {
    /// A slot as stored, whole and within [`MAX_KDF`]: a damaged one is
    /// known before any key derivation, and never taken for a wrong password.
    pub fn parse(id: &Id, bytes: &[u8]) -> Result<KeyFile> {
        let key: KeyFile = serde_json::from_slice(bytes).map_err(|e| Error::corrupt("key", id, e))?;
        key.checked().map_err(|why| Error::corrupt("key", id, why))?;
        Ok(key)
    }

    /// The salt, the wrapped secret and the derivation's settings, or why
    /// this slot cannot be tried.
    fn checked(&self) -> std::result::Result<(Vec<u8>, Vec<u8>, Params), String> {
        if self.kdf != "argon2id" {
            return Err(format!("unknown key derivation {:?}", self.kdf));
        }
        let params = argon2_params(self.params)?;
        let decode = |what: &str, text: &str, len: usize| match B64.decode(text) {
            Ok(bytes) if bytes.len() == len => Ok(bytes),
            Ok(bytes) => Err(format!("its {what} is {} bytes, not {len}", bytes.len())),
            Err(e) => Err(format!("its {what} is not base64: {e}")),
        };
        Ok((decode("salt", &self.salt, SALT_LEN)?, decode("wrapped secret", &self.data, WRAPPED_LEN)?, params))
    }

    pub fn create(master: &MasterKey, password: &Password, params: KdfParams, label: &str) -> Result<(Id, KeyFile)> {
        let id = Id::random();
        Ok((id, KeyFile::create_as(&id, master, password, params, label)?))
    }

    /// A slot to be stored as `keys/<id>`: the id is bound into its sealing.
    /// Refused beyond [`MAX_KDF`]: no slot is written that an unlock would skip.
    pub(crate) fn create_as(id: &Id, master: &MasterKey, password: &Password, params: KdfParams, label: &str) -> Result<KeyFile> {
        let argon2 = argon2_params(params).map_err(|why| Error::Invalid(format!("refusing a key: {why}")))?;
        let mut salt = [0u8; SALT_LEN];
        rand::fill(&mut salt);
        let kek = derive_kek(password, &salt, argon2)?;
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
        let (salt, data, params) = self.checked().map_err(|why| Error::corrupt("key", id, why))?;
        let kek = derive_kek(password, &salt, params)?;
        let secret = wrap_crypto(&kek)
            .open(&file_ad("key", id, 0), &data)
            .map_err(|_| Error::WrongPassword { slots: vec![*id], damaged: Vec::new() })?;
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

/// The slots as read: those that can be tried, those that cannot (by id,
/// and why), and the listing they were read from (sorted): a listed slot
/// in neither vanished between listing and reading (a concurrent `key
/// passwd` or `remove`).
pub(crate) struct Slots {
    pub(crate) usable: Vec<(Id, KeyFile)>,
    pub(crate) damaged: Vec<(Id, String)>,
    pub(crate) listed: Vec<Id>,
}

pub(crate) async fn read_slots(op: &Operator) -> Result<Slots> {
    let (mut usable, mut damaged) = (Vec::new(), Vec::new());
    let listed = slot_ids(op).await?;
    for id in &listed {
        let path = slot_path(id);
        match op.read(&path).await {
            Ok(buf) => match KeyFile::parse(id, &buf.to_vec()) {
                Ok(key) => usable.push((*id, key)),
                Err(Error::Corrupt { reason, .. }) => damaged.push((*id, reason)),
                Err(e) => return Err(e),
            },
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::storage("read", path, e)),
        }
    }
    Ok(Slots { usable, damaged, listed })
}

/// What an unlock found: the listing `password` was tried against
/// (sorted: a caller compares a later listing with it, so a slot listed
/// but unreadable counts as seen), the slots it skipped as damaged (by
/// path), and the first slot, in that order, that `password` opens and
/// `accept` takes, with its master secret.
pub(crate) struct Unlocked {
    pub(crate) listed: Vec<Id>,
    pub(crate) damaged: Vec<String>,
    pub(crate) opened: Option<(Id, MasterKey)>,
}

/// Try `password` on the slots. They are tried one at a time and the
/// search stops at the first that opens: each try is a full key
/// derivation. A damaged slot (malformed, or asking beyond [`MAX_KDF`]:
/// anyone who can write to the storage can make one) is skipped with a
/// warning naming it, and the others are still tried, so it locks no one
/// out. `accept` sees every slot that opens until one is taken (a tampered
/// config is reported by it, not here). A slot that vanished while being
/// read may have been replaced by one this password opens (`key passwd`):
/// the slots are then listed again.
pub(crate) async fn unlock(op: &Operator, password: &Password, mut accept: impl FnMut(&MasterKey) -> bool) -> Result<Unlocked> {
    let mut warned = std::collections::BTreeSet::new();
    let mut found = Unlocked { listed: Vec::new(), damaged: Vec::new(), opened: None };
    for _ in 0..4 {
        let slots = read_slots(op).await?;
        let vanished = slots.usable.len() + slots.damaged.len() != slots.listed.len();
        found.listed = slots.listed;
        found.damaged = slots.damaged.iter().map(|(id, _)| slot_path(id)).collect();
        for (id, why) in slots.damaged.iter().filter(|(id, _)| warned.insert(*id)) {
            tracing::warn!("key file {} is damaged, so it is skipped: {why}", slot_path(id));
        }
        let mut any_opened = false;
        for (id, key) in slots.usable {
            match key.unlock(&id, password) {
                Ok(m) if accept(&m) => {
                    found.opened = Some((id, m));
                    return Ok(found);
                }
                Ok(_) => any_opened = true,
                Err(Error::WrongPassword { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        if any_opened || !vanished {
            return Ok(found);
        }
    }
    Ok(found)
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

    /// A slot that is malformed or asks beyond the bounds is damaged, known
    /// from its file alone, before any derivation; never a wrong password.
    #[test]
    fn a_slot_malformed_or_beyond_the_bounds_is_damaged_before_any_derivation() {
        let id = Id([7; 32]);
        let (_, good) = KeyFile::create(&MasterKey::generate(), &Password::new("pw"), CHEAP, "").unwrap();
        let damage = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut slot = serde_json::to_value(&good).unwrap();
            change(&mut slot);
            KeyFile::parse(&id, &serde_json::to_vec(&slot).unwrap()).err().map(|e| e.to_string())
        };
        let said = |why: &str| Some(format!("key {id} is damaged: {why}"));
        let beyond = |m: u32, t: u32, p: u32| {
            said(&format!(
                "the key derivation asks for {m} KiB and {t} passes on {p} lanes, beyond the 4 GiB, 64 passes, 16 lanes and 4 GiB of passes a key may ask"
            ))
        };
        assert_eq!(damage(&|s| (s["memory_kib"], s["iterations"]) = (4194304.into(), 64.into())), beyond(4194304, 64, 1));
        assert_eq!(damage(&|s| (s["memory_kib"], s["iterations"]) = ((1 << 20).into(), 5.into())), beyond(1 << 20, 5, 1));
        assert_eq!(damage(&|s| s["parallelism"] = 17.into()), beyond(64, 1, 17));
        assert_eq!(damage(&|s| s["memory_kib"] = 0.into()), said("invalid key derivation parameters: memory cost is too small"));
        assert_eq!(damage(&|s| s["data"] = "".into()), said("its wrapped secret is 0 bytes, not 60"));
        assert_eq!(damage(&|s| s["salt"] = "!".into()), said("its salt is not base64: Invalid symbol 33, offset 0."));
        assert_eq!(damage(&|s| s["kdf"] = "scrypt".into()), said("unknown key derivation \"scrypt\""));
        assert_eq!(damage(&|s| (s["memory_kib"], s["iterations"]) = ((1 << 20).into(), 4.into())), None, "the most a slot may ask");
        // What `--kdf-memory 4G` wrote before it was bounded at 1G opens still.
        assert_eq!(damage(&|s| (s["memory_kib"], s["iterations"]) = ((4 << 20).into(), 1.into())), None, "an older tresor's largest");
        let refused = KeyFile::create(&MasterKey::generate(), &Password::new("pw"), KdfParams::with_memory(8 << 20), "").err().unwrap();
        assert_eq!(
            refused.to_string(),
            "refusing a key: the key derivation asks for 8388608 KiB and 1 passes on 1 lanes, beyond the 4 GiB, 64 passes, 16 lanes and 4 GiB of passes a key may ask"
        );
    }

    #[test]
    fn wrap_and_unwrap() {
        let master = MasterKey::generate();
        let (id, file) = KeyFile::create(&master, &Password::new("pw"), CHEAP, "").unwrap();
        let back = file.unlock(&id, &Password::new("pw")).unwrap();
        assert_eq!(&back.0[..], &master.0[..]);
        assert!(matches!(file.unlock(&id, &Password::new("nope")), Err(Error::WrongPassword { slots, .. }) if slots == [id]));
        // A slot copied under another id does not open: the id is bound in.
        assert!(file.unlock(&Id::random(), &Password::new("pw")).is_err());
        assert_eq!(format!("{:?}", Password::new("pw")), "Password(<redacted>)");
    }
}
