//! Restore beside a prune (docs/ARCHITECTURE.md §7.3a), and of a
//! snapshot whose trees are damaged.

use std::sync::Arc;

use tresor_storage::Location;

use super::{RestoreOptions, restore};
use crate::backup::{BackupOptions, backup};
use crate::objects::{Kind, is_not_found};
use crate::prune::{PruneOptions, prune};
use crate::repo::tests::{content, damaged, repo_opts, repository};
use crate::{Id, Repository};

/// A repository in `dir/repo` whose one snapshot (returned) of `dir/src`
/// shares packs with a forgotten one, so that a prune both repacks and
/// deletes: files f0..f7 of 200,000 bytes, f0..f3 rewritten since.
pub(crate) async fn forgotten_old_snapshot(dir: &std::path::Path) -> (Arc<Repository>, crate::Snapshot) {
    let repo = Arc::new(repository(&dir.join("repo")).await);
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    for n in 0..8 {
        std::fs::write(src.join(format!("f{n}")), content(&format!("old {n}"), 200_000)).unwrap();
    }
    let snap = |repo: &Arc<Repository>| backup(repo.clone(), BackupOptions { paths: vec![src.clone()], ..Default::default() });
    let old = snap(&repo).await.unwrap();
    for n in 0..4 {
        std::fs::write(src.join(format!("f{n}")), content(&format!("new {n}"), 200_000)).unwrap();
    }
    let kept = snap(&repo).await.unwrap();
    repo.remove_snapshots(&[old.id]).await.unwrap();
    (repo, kept)
}

/// Writes each `(name, seed)` below `root` as 1,000 bytes of
/// `content(seed)`, making the directories on the way.
pub(crate) fn write_files(root: &std::path::Path, files: &[(&str, &str)]) {
    for (name, seed) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content(seed, 1000)).unwrap();
    }
}

/// Damages the tree of the directory `path` below the snapshot tree `root`
/// in the repository stored at `dir` (see `repo::tests::damaged`); returns
/// the repository opened afresh and the damaged tree's id.
pub(crate) async fn damaged_dir(repo: &Repository, dir: &std::path::Path, root: Id, path: &std::path::Path) -> (Repository, Id) {
    let tree = crate::walk::find(repo, root, path.to_str().unwrap()).await.unwrap().unwrap().subtree.unwrap();
    (damaged(repo, dir, &tree).await, tree)
}

/// Readers hold no session, so a prune does not wait for them: a reader
/// that loaded its index before a prune repacked and deleted the packs it
/// planned to read finds the blobs where the newer index puts them. A pack
/// gone while the index files and marks stayed as they were is missing,
/// not moved: that read fails at once.
#[tokio::test]
async fn reads_follow_blobs_a_prune_moved_after_the_index_was_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, kept) = forgotten_old_snapshot(dir.path()).await;
    let src = dir.path().join("src");

    let location = Location::Fs(dir.path().join("repo"));
    let (restorer, loader) =
        (Arc::new(Repository::open(&location, &repo_opts()).await.unwrap()), Repository::open(&location, &repo_opts()).await.unwrap());
    let stale = restorer.index().await.unwrap();
    loader.index().await.unwrap();
    let unchanged = crate::walk::list(&restorer, kept.tree, "").await.unwrap().into_iter().find(|(p, _)| p.ends_with("f7")).unwrap().1;
    let (blob, (before, _)) = (unchanged.content[0], stale.get(&unchanged.content[0]).unwrap());

    let report = prune(repo.clone(), &PruneOptions { max_unused: 0.0, grace: std::time::Duration::ZERO, dry_run: false }).await.unwrap();
    assert!(report.repacked_packs > 0, "{report:?}");
    assert!(!dir.path().join("repo").join(Kind::Pack.path(&before)).exists(), "the pack the readers planned to read is gone");

    let out = dir.path().join("out");
    let summary = restore(restorer.clone(), &kept, &RestoreOptions { target: out.clone(), ..Default::default() }).await.unwrap();
    assert_eq!(summary.errors, Vec::<String>::new());
    let restored = out.join(src.strip_prefix("/").unwrap());
    for n in 0..8 {
        assert_eq!(std::fs::read(restored.join(format!("f{n}"))).unwrap(), std::fs::read(src.join(format!("f{n}"))).unwrap(), "f{n}");
    }
    assert_eq!(loader.load_blob(&blob).await.unwrap(), content("old 7", 200_000));

    let (after, _) = loader.index().await.unwrap().get(&blob).unwrap();
    std::fs::remove_file(dir.path().join("repo").join(Kind::Pack.path(&after))).unwrap();
    let e = loader.load_blob(&blob).await.err().unwrap();
    assert!(is_not_found(&e), "{e}");
}

/// A long-lived handle finds a blob a backup stored after it loaded its
/// index; one no index file lists is missing, at once.
#[tokio::test]
async fn a_blob_stored_after_the_index_was_loaded_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let writer = Arc::new(repository(&dir.path().join("repo")).await);
    let reader = Repository::open(&Location::Fs(dir.path().join("repo")), &repo_opts()).await.unwrap();
    let before = reader.index().await.unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("later"), content("later", 100_000)).unwrap();
    let snap = backup(writer, BackupOptions { paths: vec![src], ..Default::default() }).await.unwrap();
    let file = crate::walk::list(&reader, snap.tree, "").await.unwrap().into_iter().find(|(p, _)| p.ends_with("later")).unwrap().1;
    assert!(!before.contains(&file.content[0]));
    assert_eq!(reader.load_blob(&file.content[0]).await.unwrap(), content("later", 100_000));
    let e = reader.load_blob(&crate::Id([7; 32])).await.err().unwrap();
    assert!(matches!(e, crate::Error::MissingBlob(_)), "{e}");
}

/// A directory whose tree fails to open is reported, with the rest of the
/// snapshot restored: restore aborts only when it cannot reach storage.
#[tokio::test]
async fn a_damaged_directory_loses_its_contents_not_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(repository(&dir.path().join("repo")).await);
    let src = dir.path().join("src");
    write_files(&src, &[("a/x", "x"), ("a/y", "y"), ("b/z", "z"), ("c", "c")]);
    let snap = backup(repo.clone(), BackupOptions { paths: vec![src.clone()], ..Default::default() }).await.unwrap();
    let (fresh, tree) = damaged_dir(&repo, &dir.path().join("repo"), snap.tree, &src.join("b")).await;
    let fresh = Arc::new(fresh);
    let out = dir.path().join("out");
    let summary = restore(fresh.clone(), &snap, &RestoreOptions { target: out.clone(), ..Default::default() }).await.unwrap();
    let restored = out.join(src.strip_prefix("/").unwrap());
    let damage = crate::Error::corrupt("blob", tree, "it fails authentication");
    assert_eq!(summary.errors, vec![format!("{}: its contents were not restored: {damage}", restored.join("b").display())]);
    for (name, seed) in [("a/x", "x"), ("a/y", "y"), ("c", "c")] {
        assert_eq!(std::fs::read(restored.join(name)).unwrap(), content(seed, 1000), "{name}");
    }
    assert_eq!(std::fs::read_dir(restored.join("b")).unwrap().count(), 0);

    // With `delete`, what the target holds in the damaged directory stays:
    // what the snapshot holds there is unknown.
    let held = dir.path().join("held");
    let b = held.join(src.strip_prefix("/").unwrap()).join("b");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("kept"), "k").unwrap();
    let summary = restore(fresh, &snap, &RestoreOptions { target: held.clone(), delete: true, ..Default::default() }).await.unwrap();
    assert_eq!((summary.files_deleted, summary.errors.len()), (0, 1));
    assert_eq!(std::fs::read(b.join("kept")).unwrap(), b"k");
}
