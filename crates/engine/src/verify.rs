//! Verify a restore against its snapshot: every restored file is read back
//! from disk, cut with the repository's chunker and each chunk's keyed id
//! compared with the snapshot's content list. What reached the disk is
//! checked, not what the restore meant to write.

use std::path::{Path, PathBuf};

use crate::chunker::Chunker;
use crate::{NodeKind, Repository, Result};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct VerifyReport {
    pub files: u64,
    pub bytes: u64,
    /// Restored files that differ from the snapshot, and how.
    pub mismatched: Vec<String>,
}

/// Check every regular file of the snapshot tree `tree` (the root, or the
/// folder a `SNAPSHOT:PATH` restore took) under `target`, laid out as
/// `restore` writes it.
pub async fn verify_restored(repo: &Repository, tree: crate::Id, target: &Path) -> Result<VerifyReport> {
    let files: Vec<(PathBuf, Vec<crate::Id>, u64)> = crate::walk::list(repo, tree, "")
        .await?
        .into_iter()
        .filter(|(_, n)| n.kind == NodeKind::File)
        .map(|(p, n)| (target.join(p.strip_prefix("/").unwrap_or(&p)), n.content, n.size))
        .collect();
    let chunker = Chunker::new(repo.crypto().gear_seed(), repo.config().chunker);
    let crypto = repo.crypto().clone();
    tokio::task::spawn_blocking(move || {
        let mut report = VerifyReport::default();
        let mut buf = Vec::new();
        for (path, want, size) in files {
            report.files += 1;
            let mut ids = Vec::with_capacity(want.len());
            let read = std::fs::File::open(&path).map_err(std::io::Error::other).and_then(|f| {
                chunker.chunk_stream::<_, std::io::Error>(f, Some(size), &mut buf, |chunk| {
                    ids.push(crypto.blob_id(chunk));
                    Ok(())
                })
            });
            match read {
                Ok(n) if n == size && ids == want => report.bytes += n,
                Ok(n) if n != size => report.mismatched.push(format!("{}: {n} bytes, the snapshot has {size}", path.display())),
                Ok(_) => report.mismatched.push(format!("{}: content differs from the snapshot", path.display())),
                Err(e) => report.mismatched.push(format!("{}: {e}", path.display())),
            }
        }
        report
    })
    .await
    .map_err(|e| crate::Error::Invalid(format!("verify thread failed: {e}")))
}
