//! Legal holds: a held snapshot is never forgotten or pruned, whatever a
//! policy says. Each hold is an encrypted file under `holds/` naming the
//! snapshot, who placed it, when and why.

use chrono::{DateTime, FixedOffset, Local};
use serde::{Deserialize, Serialize};

use crate::objects::{Kind, unless_gone};
use crate::{Error, Id, Repository, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    /// The hold file's own id, filled in when loaded.
    #[serde(skip)]
    pub id: Id,
    pub snapshot: Id,
    pub reason: String,
    /// `user@host` of whoever placed the hold.
    pub by: String,
    pub time: DateTime<FixedOffset>,
}

/// Every hold, oldest first; one released between the listing and its read
/// is left out.
pub async fn holds(repo: &Repository) -> Result<Vec<Hold>> {
    let mut out = Vec::new();
    for id in repo.list_ids(Kind::Hold).await? {
        if let Some(plain) = unless_gone(repo.load_file(Kind::Hold, &id).await)? {
            out.push(parse(&id, &plain)?);
        }
    }
    out.sort_by_key(|a| a.time);
    Ok(out)
}

/// A hold file's plaintext.
pub(crate) fn parse(id: &Id, plain: &[u8]) -> Result<Hold> {
    let h: Hold = serde_json::from_slice(plain).map_err(|e| Error::corrupt("hold", id, e))?;
    Ok(Hold { id: *id, ..h })
}

pub async fn hold(repo: &Repository, snapshot: Id, reason: &str) -> Result<Hold> {
    if reason.trim().is_empty() {
        return Err(Error::Invalid("a hold needs a reason (--reason)".into()));
    }
    let by = format!("{}@{}", crate::username(), crate::hostname());
    let mut h = Hold { id: Id::default(), snapshot, reason: reason.to_string(), by, time: Local::now().fixed_offset() };
    h.id = repo.save_file(Kind::Hold, &serde_json::to_vec(&h).expect("holds serialize")).await?;
    Ok(h)
}

/// Remove every hold on `snapshot`; how many there were.
pub async fn release(repo: &Repository, snapshot: Id) -> Result<usize> {
    let found: Vec<Hold> = holds(repo).await?.into_iter().filter(|h| h.snapshot == snapshot).collect();
    if found.is_empty() {
        return Err(Error::Invalid(format!("snapshot {} is not held", snapshot.short())));
    }
    for h in &found {
        repo.delete(&Kind::Hold.path(&h.id)).await?;
    }
    Ok(found.len())
}
