//! The unlocked key handed to a tresor process this one starts (the WAL
//! prefetcher `pg restore` leaves running), so that the child opens the
//! repository without an Argon2id run of its own: on two cores that run
//! took a core from the restore beside it. Only ever through a pipe to the
//! child: never a file, the environment or a command line, which other
//! users of the machine can read. Raw bytes, not a serde value like the
//! jobs tresor hands its children: no copy of the key lands in a buffer
//! that is not zeroed.

use std::io::{Read, Write};

use tresor_storage::Location;
use zeroize::Zeroizing;

use super::{OpenOptions, Repository, guarded};
use crate::crypto::{Crypto, MasterKey};
use crate::{Error, Id, Result};

/// The key, then the id of the slot it was unlocked from.
const LEN: usize = 64;

impl Repository {
    /// Write the unlocked key, and the slot it came from, to `to`.
    pub fn hand_key(&self, to: &mut impl Write) -> std::io::Result<()> {
        let mut bytes = Zeroizing::new([0u8; LEN]);
        bytes[..32].copy_from_slice(&self.master.0[..]);
        bytes[32..].copy_from_slice(self.key_id.as_bytes());
        to.write_all(&bytes[..])
    }

    /// Open with what [`Repository::hand_key`] wrote: the key is checked
    /// against the config's MAC, as one unlocked from a slot is.
    pub async fn open_with_handed_key(location: &Location, opts: &OpenOptions, from: &mut impl Read) -> Result<Repository> {
        let mut bytes = Zeroizing::new([0u8; LEN]);
        from.read_exact(&mut bytes[..]).map_err(|e| Error::Invalid(format!("no key was handed over: {e}")))?;
        let (op, config) = Self::locate(location, &opts.storage).await?;
        let master = MasterKey(Zeroizing::new(bytes[..32].try_into().expect("32 bytes")));
        let key_id = Id(bytes[32..].try_into().expect("32 bytes"));
        let crypto = Crypto::new(&master, config.aead);
        config.verify(&crypto).map_err(|_| Error::Invalid("the key handed over does not open this repository".into()))?;
        Ok(Self::assemble(guarded(op), location.clone(), config, (master, crypto), key_id, opts))
    }
}
