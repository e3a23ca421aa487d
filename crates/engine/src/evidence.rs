//! The evidence log: finished jobs, audit entries and drill protocols (and
//! whatever later kinds of proof the controller records) kept in the
//! repository itself, so they survive the loss of the daemon's state and
//! travel with `copy` to the off-site repository. Each entry is an
//! immutable, encrypted object `evidence/<seq>-<hash>` (FORMAT.md §12d):
//! numbered from 1, naming the BLAKE3 hash of its predecessor's plaintext,
//! its own hash in its name. Appended to, never edited. Every snapshot
//! records the head of the log when it was saved, so removing the newest
//! entries is found as well as altering or removing one in the middle.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::snapshot::Head;

use crate::objects::{Kind, evidence_entries, evidence_name as name_of};
use crate::{Error, Id, Repository, Result};

/// One entry: its place in the chain, when and by whom, and what it proves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// The predecessor's plaintext hash; none for the first entry.
    pub prev: Option<Id>,
    pub time: DateTime<FixedOffset>,
    /// `job`, `audit`, `drill`, …: what `body` holds.
    pub kind: String,
    /// Who appended it (`user@host`) and, under leader election, in which term.
    pub writer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    pub body: Value,
}

/// The entries' names in order: (seq, hash), as listed (no object read).
pub async fn names(repo: &Repository) -> Result<Vec<(u64, Id)>> {
    evidence_entries(repo.operator()).await
}

/// The newest entry, from the listing alone.
pub async fn head(repo: &Repository) -> Result<Option<Head>> {
    crate::objects::evidence_head(repo.operator()).await
}

/// Store a sealed entry under its name; the name is the plaintext's own hash.
pub(crate) async fn store(repo: &Repository, plaintext: &[u8]) -> Result<Head> {
    let entry: Entry = serde_json::from_slice(plaintext).map_err(|e| Error::Invalid(format!("not an evidence entry: {e}")))?;
    let hash = Id(*blake3::hash(plaintext).as_bytes());
    repo.save_sealed_at(Kind::Evidence, &name_of(entry.seq, &hash), &hash, plaintext).await?;
    Ok(Head { seq: entry.seq, hash })
}

/// Append an entry after the current head; the new head. Appenders take
/// turns through a claim in the repository (the daemon's, `drill annotate`'s,
/// on any host): two reading the same head would fork the chain.
pub async fn append(repo: &Repository, kind: &str, term: Option<u64>, body: Value) -> Result<Head> {
    // The claim keeps other processes out; a process's own tasks take turns here,
    // since a claim of this process that append-only storage kept is not another's.
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = TURN.lock().await;
    let claim = crate::keys::exclusive_in(repo, Kind::EvidenceClaim, &format!("evidence append {kind}"), Error::EvidenceBusy).await?;
    let appended = append_claimed(repo, kind, term, body).await;
    claim.release().await?;
    appended
}

async fn append_claimed(repo: &Repository, kind: &str, term: Option<u64>, body: Value) -> Result<Head> {
    let prev = head(repo).await?;
    let entry = Entry {
        seq: prev.map_or(1, |h| h.seq + 1),
        prev: prev.map(|h| h.hash),
        time: chrono::Local::now().fixed_offset(),
        kind: kind.into(),
        writer: format!("{}@{}", crate::username(), crate::hostname()),
        term,
        body,
    };
    store(repo, &serde_json::to_vec(&entry).expect("entries serialize")).await
}

/// An entry's plaintext, checked against the hash its name gives.
pub async fn load_plain(repo: &Repository, seq: u64, hash: &Id) -> Result<Vec<u8>> {
    let plain = repo.load_sealed_at(Kind::Evidence, &name_of(seq, hash), hash).await?;
    if blake3::hash(&plain).as_bytes() != hash.as_bytes() {
        return Err(Error::corrupt("evidence entry", *hash, "its content does not match its name"));
    }
    Ok(plain)
}

/// Every entry, in order.
pub async fn entries(repo: &Repository) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (seq, hash) in names(repo).await? {
        let plain = load_plain(repo, seq, &hash).await?;
        out.push(serde_json::from_slice(&plain).map_err(|e| Error::corrupt("evidence entry", hash, e))?);
    }
    Ok(out)
}

/// What `audit verify` found: the entries read, the head, and every problem.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Verification {
    pub entries: u64,
    pub head: Option<Head>,
    pub problems: Vec<String>,
}

/// Check the chain: every entry readable and matching its name, numbered
/// without gaps or forks, each naming its predecessor; and every
/// snapshot's recorded head present in it (so the newest entries cannot go
/// unnoticed either).
pub async fn verify(repo: &Repository) -> Result<Verification> {
    let names = names(repo).await?;
    let mut v =
        Verification { entries: names.len() as u64, head: names.last().map(|&(seq, hash)| Head { seq, hash }), ..Default::default() };
    let mut prev: Option<(u64, Id)> = None;
    for &(seq, hash) in &names {
        let name = Kind::Evidence.named(&name_of(seq, &hash));
        match prev {
            Some((p, _)) if p == seq => v.problems.push(format!("{name}: a second entry number {seq}: two appenders forked the log")),
            Some((p, _)) if p + 1 != seq => v.problems.push(format!("entries {} to {} are missing (before {name})", p + 1, seq - 1)),
            None if seq != 1 => v.problems.push(format!("entries 1 to {} are missing (before {name})", seq - 1)),
            _ => {}
        }
        match load_plain(repo, seq, &hash)
            .await
            .and_then(|p| serde_json::from_slice::<Entry>(&p).map_err(|e| Error::corrupt("evidence entry", hash, e)))
        {
            // Storage that does not answer says nothing of the log: no false alarm.
            Err(e) if !crate::objects::is_damage(&e) => return Err(e),
            Err(e) => v.problems.push(format!("{name}: altered: {e}")),
            Ok(e) if e.seq != seq => v.problems.push(format!("{name}: altered: it says it is entry {}", e.seq)),
            Ok(e) => {
                let expected = prev.filter(|(p, _)| *p + 1 == seq).map(|(_, h)| h);
                if prev.is_some_and(|(p, _)| p + 1 == seq) && e.prev != expected {
                    v.problems.push(format!("{name}: its predecessor is not the entry before it"));
                }
            }
        }
        prev = Some((seq, hash));
    }
    let present: std::collections::BTreeSet<(u64, Id)> = names.iter().copied().collect();
    let last = names.last().map_or(0, |&(seq, _)| seq);
    for s in repo.snapshots().await? {
        let Some(h) = s.evidence else { continue };
        if h.seq > last {
            v.problems.push(format!(
                "entries {} to {} are gone: snapshot {} recorded the log at entry {}",
                last + 1,
                h.seq,
                s.id.short(),
                h.seq
            ));
        } else if !present.contains(&(h.seq, h.hash)) {
            v.problems.push(format!("entry {} is not the one snapshot {} recorded: replaced or removed", h.seq, s.id.short()));
        }
    }
    v.problems.sort();
    v.problems.dedup();
    Ok(v)
}
