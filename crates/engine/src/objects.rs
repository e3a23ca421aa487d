//! Where each kind of repository object is stored, in one place
//! (docs/FORMAT.md §1 is the contract), and the listings of them.
//!
//! It sits below the repository handle (`repo.rs`): key slots, sessions,
//! claims and the evidence log list and name their objects here without
//! reaching up into the module that unlocks them.

use futures::TryStreamExt;
use tresor_storage::Operator;

use crate::snapshot::Head;
use crate::{Error, Id, Result};

/// A kind of object in a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `config`: the one object with a fixed name.
    Config,
    /// `keys/<id>`: key slots.
    Key,
    /// `data/<hh>/<id>`: packs.
    Pack,
    /// `index/<id>`.
    Index,
    /// `snapshots/<id>`.
    Snapshot,
    /// `holds/<id>`: legal holds.
    Hold,
    /// `sessions/<sid>-<seq>`: writers' heartbeats.
    Session,
    /// `marks/<id>`: packs a prune marked for deletion.
    Mark,
    /// `quarantine/<id>`: blobs a repair found lost, with their packs.
    Quarantine,
    /// `locks/keys/<id>`: claims of running key commands.
    KeyClaim,
    /// `locks/evidence/<id>`: claims of evidence appenders.
    EvidenceClaim,
    /// `evidence/<seq>-<hash>`: the evidence log.
    Evidence,
}

impl Kind {
    /// The directory the kind's objects live under (`config`'s own name).
    pub const fn dir(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::Key => "keys/",
            Kind::Pack => "data/",
            Kind::Index => "index/",
            Kind::Snapshot => "snapshots/",
            Kind::Hold => "holds/",
            Kind::Session => "sessions/",
            Kind::Mark => "marks/",
            Kind::Quarantine => "quarantine/",
            Kind::KeyClaim => "locks/keys/",
            Kind::EvidenceClaim => "locks/evidence/",
            Kind::Evidence => "evidence/",
        }
    }

    /// What a sealed object of this kind is bound to in its associated
    /// data (FORMAT.md §9); claims of both kinds are `key claim`.
    pub const fn label(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::Key => "key",
            Kind::Pack => "pack",
            Kind::Index => "index",
            Kind::Snapshot => "snapshot",
            Kind::Hold => "hold",
            Kind::Session => "session",
            Kind::Mark => "mark",
            Kind::Quarantine => "quarantine",
            Kind::KeyClaim | Kind::EvidenceClaim => "key claim",
            Kind::Evidence => "evidence",
        }
    }

    /// The object named by `id`: packs one level down by their first two
    /// hex digits, the others directly in their directory.
    pub fn path(self, id: &Id) -> String {
        let hex = id.to_hex();
        match self {
            Kind::Config => self.dir().to_string(),
            Kind::Pack => format!("{}{}/{hex}", self.dir(), &hex[..2]),
            _ => format!("{}{hex}", self.dir()),
        }
    }

    /// The object of this kind named `name` (sessions' and evidence entries'
    /// names are not bare ids).
    pub fn named(self, name: &str) -> String {
        format!("{}{name}", self.dir())
    }
}

/// Names (last path component) of the objects of `kind`, recursively.
pub async fn list_names(op: &Operator, kind: Kind) -> Result<Vec<String>> {
    let Some(files) = files(op, kind.dir()).await? else { return Ok(Vec::new()) };
    files.map_ok(|e| e.name().to_string()).try_collect().await
}

/// The objects under `dir` as the listing streams in (hidden ones, a
/// backend's temporary files, left out); `None` if there is no `dir`.
async fn files<'a>(op: &Operator, dir: &'a str) -> Result<Option<impl futures::Stream<Item = Result<opendal::Entry>> + 'a>> {
    let lister = match op.lister_with(dir).recursive(true).await {
        Ok(l) => l,
        Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::storage("list", dir, e)),
    };
    Ok(Some(
        lister
            .map_err(move |e| Error::storage("list", dir, e))
            .try_filter(|e| std::future::ready(e.metadata().is_file() && !e.name().starts_with('.'))),
    ))
}

/// Call `f` with the name of each object of `kind` as the listing streams
/// in, so that a listing of millions of packs is never held whole.
pub async fn each_name(op: &Operator, kind: Kind, mut f: impl FnMut(&str)) -> Result<()> {
    let Some(files) = files(op, kind.dir()).await? else { return Ok(()) };
    let mut files = std::pin::pin!(files);
    while let Some(e) = files.try_next().await? {
        f(e.name());
    }
    Ok(())
}

/// Names and sizes of the objects of `kind` ([`each_with_size`]).
pub async fn list_with_size(op: &Operator, kind: Kind) -> Result<Vec<(String, u64)>> {
    let mut found = Vec::new();
    each_with_size(op, kind, |name, size| found.push((name.to_string(), size))).await?;
    Ok(found)
}

/// Call `f` with the name and size of each object of `kind` as the
/// listing streams in, so that a listing of millions of packs is never held
/// whole. A size the backend does not report in listings is fetched with a
/// `stat`; an object deleted between the listing and its `stat` is left out.
pub async fn each_with_size(op: &Operator, kind: Kind, mut f: impl FnMut(&str, u64)) -> Result<()> {
    let Some(files) = files(op, kind.dir()).await? else { return Ok(()) };
    let mut sized = files
        .map_ok(|e| async move {
            let len = e.metadata().content_length();
            if len > 0 {
                return Ok(Some((e, len)));
            }
            match op.stat(e.path()).await {
                Ok(meta) => Ok(Some((e, meta.content_length()))),
                Err(err) if err.kind() == opendal::ErrorKind::NotFound => Ok(None),
                Err(err) => Err(Error::storage("stat", e.path(), err)),
            }
        })
        .try_buffer_unordered(16);
    while let Some(found) = sized.try_next().await? {
        if let Some((e, len)) = found {
            f(e.name(), len);
        }
    }
    Ok(())
}

/// An evidence entry's name: its 12-digit number and its plaintext's hash.
pub fn evidence_name(seq: u64, hash: &Id) -> String {
    format!("{seq:012}-{}", hash.to_hex())
}

/// `<seq>-<hash>` back into its parts.
pub fn parse_evidence_name(name: &str) -> Option<(u64, Id)> {
    let (seq, hash) = name.split_once('-')?;
    let bytes: Vec<u8> = (0..hash.len()).step_by(2).map(|i| u8::from_str_radix(hash.get(i..i + 2)?, 16).ok()).collect::<Option<_>>()?;
    Some((seq.parse().ok()?, Id::from_slice(&bytes)?))
}

/// The evidence entries in order, (seq, hash), from the listing alone.
pub async fn evidence_entries(op: &Operator) -> Result<Vec<(u64, Id)>> {
    let mut out: Vec<(u64, Id)> =
        list_names(op, Kind::Evidence).await?.iter().filter_map(|n| parse_evidence_name(n.rsplit('/').next()?)).collect();
    out.sort();
    Ok(out)
}

/// The evidence log's newest entry, from the listing alone: what a snapshot
/// records when it is saved.
pub async fn evidence_head(op: &Operator) -> Result<Option<Head>> {
    Ok(evidence_entries(op).await?.last().map(|&(seq, hash)| Head { seq, hash }))
}

/// Whether `e` says the object was not there.
pub fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Storage { source, .. } if source.kind() == opendal::ErrorKind::NotFound)
}

/// Whether `e` says a read found its pack gone or its blob in no index: what
/// a concurrent prune (or forget and prune) does to a reader's plan.
pub fn vanished(e: &Error) -> bool {
    is_not_found(e) || matches!(e, Error::MissingBlob(_))
}

/// Whether `e` says an object the reader needs is damaged or gone: a
/// reader may go on without it, naming what it lost.
pub fn is_damage(e: &Error) -> bool {
    vanished(e) || matches!(e, Error::Corrupt { .. })
}

/// `None` for an object that was not there (listed, then deleted by a
/// concurrent command before it was read), else what `r` holds.
pub fn unless_gone<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Err(e) if is_not_found(&e) => Ok(None),
        r => r.map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout FORMAT.md §1 fixes, byte for byte.
    #[test]
    fn paths_follow_the_format() {
        let id: Id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".parse().unwrap();
        let hex = id.to_hex();
        assert_eq!(Kind::Config.path(&id), "config");
        assert_eq!(Kind::Pack.path(&id), format!("data/01/{hex}"));
        let flat = [
            (Kind::Key, "keys/"),
            (Kind::Index, "index/"),
            (Kind::Snapshot, "snapshots/"),
            (Kind::Hold, "holds/"),
            (Kind::Mark, "marks/"),
            (Kind::Quarantine, "quarantine/"),
            (Kind::KeyClaim, "locks/keys/"),
            (Kind::EvidenceClaim, "locks/evidence/"),
        ];
        for (kind, dir) in flat {
            assert_eq!(kind.path(&id), format!("{dir}{hex}"));
        }
        assert_eq!(Kind::Session.named(&format!("{hex}-0000000001")), format!("sessions/{hex}-0000000001"));
        assert_eq!(Kind::Evidence.named("000000000001-ab"), "evidence/000000000001-ab");
        assert_eq!(Kind::EvidenceClaim.label(), Kind::KeyClaim.label());
    }
}
