//! Prune beside other writers, at the exact points where their steps
//! would change its picture.

use std::sync::Arc;
use std::time::Duration;

use tresor_storage::Location;

use super::{PruneOptions, prune};
use crate::backup::{BackupOptions, backup};
use crate::index::{IndexFile, IndexedPack};
use crate::objects::Kind;
use crate::repo::interleave::Interleave;
use crate::repo::tests::{content, repo_opts, repository};
use crate::{Id, Repository};

/// A repair stores a pack and records it damaged while the prune lists the
/// packs: the listing lacks the pack, and a record read after the listing
/// would pass for one whose packs are all gone and be deleted, letting the
/// lost blobs back into the next `repair index`. Read before, it is not
/// seen, and kept.
#[tokio::test]
async fn a_quarantine_record_written_while_the_packs_are_listed_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let repo = Arc::new(repository(&root).await);
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), content("f", 200_000)).unwrap();
    let kept = backup(repo.clone(), BackupOptions { paths: vec![src], ..Default::default() }).await.unwrap();
    let (_, entry) = repo.index().await.unwrap().get(&kept.tree).unwrap();
    let (pack, blob) = (Id::random(), entry);
    let record = IndexFile { supersedes: Vec::new(), packs: vec![IndexedPack { id: pack, size: 1 << 20, entries: vec![blob] }] };
    // The other writer's objects, sealed ahead and taken away until its turn.
    let id = repo.save_file(Kind::Quarantine, &record.encode()).await.unwrap();
    let record_path = root.join(Kind::Quarantine.path(&id));
    let sealed = std::fs::read(&record_path).unwrap();
    std::fs::remove_file(&record_path).unwrap();
    let (pack_path, stored) = (root.join(Kind::Pack.path(&pack)), record_path.clone());
    let hook = Interleave::after_listing(
        Kind::Pack.dir(),
        Box::new(move || {
            Box::pin(async move {
                std::fs::create_dir_all(pack_path.parent().unwrap()).unwrap();
                std::fs::write(&pack_path, b"a pack the repair stored").unwrap();
                std::fs::write(&stored, sealed).unwrap();
            })
        }),
    );
    let pruning = Repository::open(&Location::Fs(root), &repo_opts()).await.unwrap().interleaved(&hook);
    prune(Arc::new(pruning), &PruneOptions { max_unused: 0.0, grace: Duration::ZERO, dry_run: false }).await.unwrap();
    assert!(hook.ran(), "the pack listing ended");
    assert!(record_path.exists(), "the record of a pack stored after the listing was deleted");
}
