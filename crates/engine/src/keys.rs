//! Key commands: adding, removing or changing a password touches only key
//! slots (`slots.rs`), never data, so rotation is instant. Key commands run
//! one at a time per repository, through claims under `locks/keys/`, and a
//! removal needs the remover's own slot to stay: the last usable slot is
//! never removed (docs/ARCHITECTURE.md §7).

use serde::{Deserialize, Serialize};

use crate::objects::{Kind, is_not_found};
use crate::slots::{KdfParams, KeyFile, Password, read_slots, slot_path};
use crate::{Error, Id, Repository, Result};

/// How often a key command looks again for a moment no other runs.
const CLAIM_ATTEMPTS: u32 = 40;

/// Who holds a claim, for the message of whoever waits, and whether the
/// process is still alive.
#[derive(Serialize, Deserialize)]
struct Claim {
    host: String,
    pid: u32,
    command: String,
    /// The writer's PID namespace (`pid:[4026531836]`): containers that
    /// share a host name need not share process ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid_ns: Option<String>,
}

impl Claim {
    fn mine(command: &str) -> Claim {
        Claim { host: crate::hostname(), pid: std::process::id(), command: command.into(), pid_ns: pid_namespace() }
    }
}

fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid").ok().map(|p| p.display().to_string())
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

/// Whether a claim's writer is gone: a process that no longer runs among
/// this one's (the same host and PID namespace; a claim that names no
/// namespace is another's), or a claim older than the session timeout (by
/// the storage's clock).
fn stale(claim: &Claim, age: chrono::Duration, timeout_secs: u64) -> bool {
    let here = claim.host == crate::hostname() && claim.pid_ns.is_some() && claim.pid_ns == pid_namespace();
    let here_and_dead = here && !std::path::Path::new(&format!("/proc/{}", claim.pid)).exists();
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
    let body = serde_json::to_vec(&Claim::mine(command)).expect("claims serialize");
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

impl Repository {
    /// The slots that can be tried (one damaged was warned of at open).
    pub async fn keys(&self) -> Result<Vec<(Id, KeyFile)>> {
        Ok(read_slots(self.operator()).await?.usable)
    }

    /// The ids of every stored slot, damaged ones too: what `key remove` may name.
    pub async fn key_ids(&self) -> Result<Vec<Id>> {
        crate::slots::slot_ids(self.operator()).await
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
        // Refused before anything is written, as forget and prune are.
        if self.config().append_only {
            return Err(Error::AppendOnly("key remove".into()));
        }
        if *id == self.key_id() {
            return Err(Error::Invalid("refusing to remove the key in use; open with another key to remove this one".into()));
        }
        let claim = exclusive(self, "key remove").await?;
        let removed = async {
            // A damaged slot is removed as any other: removing it is the remedy.
            let slots = read_slots(self.operator()).await?;
            if !slots.usable.iter().map(|(k, _)| k).chain(slots.damaged.iter().map(|(k, _)| k)).any(|k| k == id) {
                return Err(Error::Invalid(format!("no key {}", id.short())));
            }
            self.require_own_slot(&slots.usable)?;
            self.delete(&slot_path(id)).await
        }
        .await;
        claim.release().await?;
        removed
    }

    /// Replace the slot this process opened with by one for `password`:
    /// the new slot is written and read back before the old one goes.
    pub async fn change_password(&self, password: &Password, kdf: KdfParams, label: &str) -> Result<Id> {
        // Its old slot could not be deleted: the new one was added, the old
        // one stayed, and both passwords opened the repository.
        if self.config().append_only {
            return Err(Error::AppendOnly("key passwd".into()));
        }
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

    /// A dead writer is known only among this process's own: one of another
    /// PID namespace on the same host (a container beside this one) counts
    /// as live until the session timeout, as one that names no namespace.
    #[test]
    fn a_claim_is_stale_when_its_process_is_gone_here_or_it_timed_out() {
        let dead = |pid_ns: Option<String>| Claim { pid: u32::MAX, pid_ns, ..Claim::mine("key add") };
        let (young, old) = (chrono::Duration::seconds(10), chrono::Duration::seconds(601));
        assert!(pid_namespace().is_some_and(|ns| ns.starts_with("pid:[")), "{:?}", pid_namespace());
        assert!(stale(&dead(pid_namespace()), young, 600));
        assert!(!stale(&Claim::mine("key add"), young, 600), "this very process runs");
        assert!(!stale(&dead(Some("pid:[1]".into())), young, 600), "another namespace's process may run");
        assert!(!stale(&dead(None), young, 600));
        assert!(stale(&dead(Some("pid:[1]".into())), old, 600));
    }
}
