//! Key slots: the master secret wrapped by keys derived from passwords.
//!
//! Each slot is a small JSON file under `keys/`. Adding, removing or changing
//! a password touches only slots, never data, so rotation is instant.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{Aead, Crypto, MasterKey, file_ad};
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

impl KeyFile {
    pub fn create(master: &MasterKey, password: &Password, params: KdfParams, label: &str) -> Result<(Id, KeyFile)> {
        let id = Id::random();
        let mut salt = [0u8; 16];
        rand::fill(&mut salt);
        let kek = derive_kek(password, &salt, params)?;
        let sealed = wrap_crypto(&kek).seal(&file_ad("key", &id, 0), &master.0[..]);
        let file = KeyFile {
            version: 1,
            created: Utc::now(),
            hostname: crate::hostname(),
            username: crate::username(),
            label: label.to_string(),
            kdf: "argon2id".into(),
            params,
            salt: B64.encode(salt),
            data: B64.encode(sealed),
        };
        Ok((id, file))
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

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };

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
