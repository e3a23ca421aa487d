//! Verify a restore against its snapshot: every restored file is read back
//! from disk, cut where the snapshot's blobs end (their plaintext lengths,
//! from the index) and each piece's keyed id compared with the snapshot's
//! content list. What reached the disk is checked, not what the restore
//! meant to write. Cutting by the blobs rather than with this repository's
//! chunker verifies a snapshot `copy` brought from a repository of another
//! chunker key as well: it keeps the source's cuts.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::crypto::Crypto;
use crate::{Id, NodeKind, Repository, Result};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct VerifyReport {
    pub files: u64,
    pub bytes: u64,
    /// Restored files that differ from the snapshot, and how.
    pub mismatched: Vec<String>,
}

/// A restored file's path, its blobs with their plain lengths, its size.
type Expected = (PathBuf, Vec<(Id, usize)>, u64);

/// Check every regular file of the snapshot tree `tree` (the root, or the
/// folder a `SNAPSHOT:PATH` restore took) under `target`, laid out as
/// `restore` writes it.
pub async fn verify_restored(repo: &Repository, tree: crate::Id, target: &Path) -> Result<VerifyReport> {
    let index = repo.index().await?;
    let files: Vec<Expected> = crate::walk::list(repo, tree, "")
        .await?
        .into_iter()
        .filter(|(_, n)| n.kind == NodeKind::File)
        .map(|(p, n)| {
            let blobs = n.content.iter().map(|id| (*id, index.get(id).map_or(0, |(_, e)| e.raw_length as usize))).collect();
            (target.join(p.strip_prefix("/").unwrap_or(&p)), blobs, n.size)
        })
        .collect();
    let crypto = repo.crypto().clone();
    tokio::task::spawn_blocking(move || {
        let mut report = VerifyReport::default();
        let mut buf = Vec::new();
        for (path, want, size) in files {
            report.files += 1;
            match check_file(&path, &want, size, &crypto, &mut buf) {
                Ok(()) => report.bytes += size,
                Err(why) => report.mismatched.push(format!("{}: {why}", path.display())),
            }
        }
        report
    })
    .await
    .map_err(|e| crate::Error::Invalid(format!("verify thread failed: {e}")))
}

/// One restored file against its blobs: its length, then each piece's id.
fn check_file(path: &Path, want: &[(Id, usize)], size: u64, crypto: &Crypto, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let n = f.metadata().map_err(|e| e.to_string())?.len();
    if n != size {
        return Err(format!("{n} bytes, the snapshot has {size}"));
    }
    let differs = || "content differs from the snapshot".to_string();
    if want.iter().map(|(_, len)| *len as u64).sum::<u64>() != size {
        return Err(differs());
    }
    for (id, len) in want {
        buf.resize(*len, 0);
        f.read_exact(buf).map_err(|e| e.to_string())?;
        if crypto.blob_id(buf) != *id {
            return Err(differs());
        }
    }
    Ok(())
}
