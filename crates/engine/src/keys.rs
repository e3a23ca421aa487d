//! Key slots: the master secret wrapped by keys derived from passwords.
//!
//! Each slot is a small JSON file under `keys/`. Adding, removing or changing
//! a password touches only slots, never data, so rotation is instant. Key
//! commands run one at a time per repository, through claims under
//! `locks/keys/`, and a removal needs the remover's own slot to stay: the
//! last usable slot is never removed (docs/ARCHITECTURE.md §7).

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use tresor_storage::Operator;

use crate::crypto::{Aead, Crypto, MasterKey, file_ad};
use crate::objects::{Kind, is_not_found, list_names};
use crate::{Error, Id, Repository, Result};

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

    /// Unwrap the master secret; `Error::WrongPassword` if this slot does not
    /// open with `password`.
    pub fn unlock(&self, id: &Id, password: &Password) -> Result<MasterKey> {
        if self.kdf != "argon2id" {
            return Err(Error::corrupt("key", id, format!("unknown key derivation {:?}", self.kdf)));
        }
        let salt = B64.decode(&self.salt).map_err(|e| Error::corrupt("key", id, e))?;
        let data = B64.decode(&self.data).map_err(|e| Error::corrupt("key", id, e))?;
        let kek = derive_kek(password, &salt, self.params)?;
        let secret = wrap_crypto(&kek).open(&file_ad("key", id, 0), &data).map_err(|_| Error::WrongPassword)?;
        let bytes: [u8; 32] = secret.as_slice().try_into().map_err(|_| Error::corrupt("key", id, "wrapped secret has the wrong length"))?;
        Ok(MasterKey(Zeroizing::new(bytes)))
    }
}

/// How often a key command looks again for a moment no other runs.
const CLAIM_ATTEMPTS: u32 = 40;

/// Who holds a claim, for the message of whoever waits, and whether the
/// process is still alive.
#[derive(Serialize, Deserialize)]
struct Claim {
    host: String,
    pid: u32,
    command: String,
}

/// The right to change key slots, held while a [`Claim`] of this process
/// is the only live one (docs/ARCHITECTURE.md §7). Dropped by [`Exclusive::release`].
pub(crate) struct Exclusive<'a> {
    repo: &'a Repository,
    path: String,
}

impl Exclusive<'_> {
    /// Remove the claim. Where nothing can be deleted (append-only, Object
    /// Lock) it stays, and counts as stale once this process has ended.
    pub(crate) async fn release(self) -> Result<()> {
        self.repo
            .delete_unless_locked(&self.path)
            .await
            .map(|_| ())
            .or_else(|e| if self.repo.config().append_only { Ok(()) } else { Err(e) })
    }
}

/// Whether a claim's writer is gone: a process of this host that no longer
/// runs, or a claim older than the session timeout (by the storage's clock).
fn stale(claim: &Claim, age: chrono::Duration, timeout_secs: u64) -> bool {
    let here_and_dead = claim.host == crate::hostname() && !std::path::Path::new(&format!("/proc/{}", claim.pid)).exists();
    here_and_dead || age.num_seconds() > timeout_secs as i64
}

/// Write a claim, then list the others: if a live one is there, withdraw
/// and look again later. Two commands that claim at once both see the
/// other and withdraw; one that lists before another claims is seen by it
/// (listings show every completed write), so two never both proceed.
async fn exclusive<'a>(repo: &'a Repository, command: &str) -> Result<Exclusive<'a>> {
    exclusive_in(repo, Kind::KeyClaim, command, Error::KeysBusy).await
}

/// The same claim as a `kind` object (the evidence log's appenders take
/// theirs in `locks/evidence/`); `busy` names the holder when it never ends.
pub(crate) async fn exclusive_in<'a>(repo: &'a Repository, kind: Kind, command: &str, busy: fn(String) -> Error) -> Result<Exclusive<'a>> {
    let body =
        serde_json::to_vec(&Claim { host: crate::hostname(), pid: std::process::id(), command: command.into() }).expect("claims serialize");
    let mut holder = String::new();
    for attempt in 0..CLAIM_ATTEMPTS {
        let mine = repo.save_file(kind, &body).await?;
        let path = kind.path(&mine);
        let now = repo.stored_time(&path).await?;
        let mut live = None;
        for other in repo.list_ids(kind).await?.into_iter().filter(|id| *id != mine) {
            let other_path = kind.path(&other);
            let read = async {
                let plain = repo.load_file_uncached(kind, &other).await?;
                Ok::<_, Error>((
                    serde_json::from_slice::<Claim>(&plain).map_err(|e| Error::corrupt("key claim", other, e))?,
                    repo.stored_time(&other_path).await?,
                ))
            };
            match read.await {
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
                Ok((claim, at)) if stale(&claim, now - at, repo.config().session_timeout_secs) => {
                    let _ = repo.delete_unless_locked(&other_path).await;
                }
                // One an earlier turn of this process could not delete (append-only storage).
                Ok((claim, _)) if claim.host == crate::hostname() && claim.pid == std::process::id() => {}
                Ok((claim, _)) => live = Some(format!("`tresor {}` on {}, process {}", claim.command, claim.host, claim.pid)),
            }
        }
        let Some(h) = live else { return Ok(Exclusive { repo, path }) };
        holder = h;
        Exclusive { repo, path }.release().await?;
        // Apart at random, so that two that keep meeting stop meeting.
        let pause = 20 + rand::random::<u64>() % (40 + 10 * u64::from(attempt));
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
    Err(busy(holder))
}

fn slot_path(id: &Id) -> String {
    Kind::Key.path(id)
}

/// Every readable slot, and whether one vanished between listing and
/// reading (a concurrent `key passwd` or `remove`).
pub(crate) async fn read_slots(op: &Operator) -> Result<(Vec<(Id, KeyFile)>, bool)> {
    let mut out = Vec::new();
    let mut vanished = false;
    for name in list_names(op, Kind::Key).await? {
        let Ok(id) = name.parse::<Id>() else { continue };
        let path = slot_path(&id);
        match op.read(&path).await {
            Ok(buf) => out.push((id, KeyFile::parse(&id, &buf.to_vec())?)),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => vanished = true,
            Err(e) => return Err(Error::storage("read", path, e)),
        }
    }
    Ok((out, vanished))
}

/// How many slots there are, and those `password` opens with the master
/// secret in each. A slot that vanished while being read may have been
/// replaced by one this password opens (`key passwd`): the slots are then
/// listed again.
pub(crate) async fn unlock(op: &Operator, password: &Password) -> Result<(usize, Vec<(Id, MasterKey)>)> {
    let mut seen = 0;
    for _ in 0..4 {
        let (slots, vanished) = read_slots(op).await?;
        seen = slots.len();
        let mut opened = Vec::new();
        for (id, key) in slots {
            match key.unlock(&id, password) {
                Ok(m) => opened.push((id, m)),
                Err(Error::WrongPassword) => continue,
                Err(e) => return Err(e),
            }
        }
        if !opened.is_empty() || !vanished {
            return Ok((seen, opened));
        }
    }
    Ok((seen, Vec::new()))
}

impl Repository {
    pub async fn keys(&self) -> Result<Vec<(Id, KeyFile)>> {
        Ok(read_slots(self.operator()).await?.0)
    }

    /// Wrap the master secret under another password: rotation touches no data.
    pub async fn add_key(&self, password: &Password, kdf: KdfParams, label: &str) -> Result<Id> {
        let claim = exclusive(self, "key add").await?;
        let added = self.write_slot(password, kdf, label).await;
        claim.release().await?;
        added
    }

    /// Store a new slot, never over an existing object: where the store
    /// has conditional writes, the write itself says so.
    async fn write_slot(&self, password: &Password, kdf: KdfParams, label: &str) -> Result<Id> {
        if password.is_empty() {
            return Err(Error::Invalid("refusing an empty password".into()));
        }
        let (id, key) = KeyFile::create(self.master(), password, kdf, label)?;
        let path = slot_path(&id);
        let op = self.operator();
        let json = serde_json::to_vec_pretty(&key).expect("key serializes");
        let conditional = op.info().full_capability().write_with_if_not_exists;
        op.write_with(&path, json).if_not_exists(conditional).await.map_err(|e| Error::storage("write", &path, e))?;
        Ok(id)
    }

    /// Remove another slot. Under the key claim, the slot this process
    /// opened with must still be there: so one usable slot always stays,
    /// whatever other key commands do.
    pub async fn remove_key(&self, id: &Id) -> Result<()> {
        if *id == self.key_id() {
            return Err(Error::Invalid("refusing to remove the key in use; open with another key to remove this one".into()));
        }
        let claim = exclusive(self, "key remove").await?;
        let removed = async {
            let keys = self.keys().await?;
            if !keys.iter().any(|(k, _)| k == id) {
                return Err(Error::Invalid(format!("no key {}", id.short())));
            }
            self.require_own_slot(&keys)?;
            self.delete(&slot_path(id)).await
        }
        .await;
        claim.release().await?;
        removed
    }

    /// Replace the slot this process opened with by one for `password`:
    /// the new slot is written and read back before the old one goes.
    pub async fn change_password(&self, password: &Password, kdf: KdfParams, label: &str) -> Result<Id> {
        let claim = exclusive(self, "key passwd").await?;
        let changed = async {
            self.require_own_slot(&self.keys().await?)?;
            let id = self.write_slot(password, kdf, label).await?;
            let back = self
                .keys()
                .await?
                .into_iter()
                .find(|(k, _)| *k == id)
                .ok_or_else(|| Error::corrupt("key", id, "it is not there after it was written"))?;
            back.1.unlock(&id, password)?;
            self.delete(&slot_path(&self.key_id())).await?;
            Ok(id)
        }
        .await;
        claim.release().await?;
        changed
    }

    fn require_own_slot(&self, keys: &[(Id, KeyFile)]) -> Result<()> {
        if keys.iter().any(|(k, _)| *k == self.key_id()) {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "the key this command opened the repository with ({}) was removed meanwhile; nothing changed",
            self.key_id().short()
        )))
    }
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
        assert!(matches!(file.unlock(&id, &Password::new("nope")), Err(Error::WrongPassword)));
        // A slot copied under another id does not open: the id is bound in.
        assert!(file.unlock(&Id::random(), &Password::new("pw")).is_err());
        assert_eq!(format!("{:?}", Password::new("pw")), "Password(<redacted>)");
    }
}
