//! Copy beside a forget and prune in the source (docs/ARCHITECTURE.md §7.3a).

use std::sync::Arc;

use tresor_storage::Location;

use super::{CopyOptions, copy};
use crate::Repository;
use crate::backup::{BackupOptions, backup};
use crate::prune::{PruneOptions, prune};
use crate::repo::tests::{content, damaged, repo_opts, repository};

/// A selected snapshot that the source forgets, and whose data a prune
/// sweeps, before the copy reaches it is skipped and named; the others are
/// copied whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_forgotten_in_the_source_meanwhile_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (Arc::new(repository(&dir.path().join("src")).await), Arc::new(repository(&dir.path().join("dst")).await));
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let snap = |seed: &'static str| {
        std::fs::write(data.join("f"), content(seed, 200_000)).unwrap();
        backup(src.clone(), BackupOptions { paths: vec![data.clone()], ..Default::default() })
    };
    let gone = snap("gone").await.unwrap();
    let kept = snap("kept").await.unwrap();
    let selected = src.snapshots().await.unwrap();

    let other = Arc::new(Repository::open(&Location::Fs(dir.path().join("src")), &repo_opts()).await.unwrap());
    other.remove_snapshots(&[gone.id]).await.unwrap();
    let pruned = prune(other, &PruneOptions { max_unused: 0.0, grace: std::time::Duration::ZERO, dry_run: false }).await.unwrap();
    assert!(pruned.deleted_packs > 0, "{pruned:?}");

    let report = copy(src, dst.clone(), selected, &CopyOptions::default()).await.unwrap();
    assert_eq!(report.forgotten, [gone.id]);
    assert_eq!(report.copied.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [kept.id]);
    let copied = dst.snapshots().await.unwrap();
    let file = crate::walk::list(&dst, copied[0].tree, "").await.unwrap().into_iter().find(|(p, _)| p.ends_with("f")).unwrap().1;
    assert_eq!(dst.load_blob(&file.content[0]).await.unwrap(), content("kept", 200_000));
}

/// A snapshot with a damaged blob in the source is named and not copied;
/// those before and after it are copied whole, and the next copy tries
/// only it again. A damaged tree of a snapshot already copied costs only
/// what learning from it would have saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_is_named_and_the_others_copied() {
    let dir = tempfile::tempdir().unwrap();
    let src = Arc::new(repository(&dir.path().join("src")).await);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut snaps = Vec::new();
    for seed in ["one", "two", "three"] {
        std::fs::write(data.join("f"), content(seed, 100_000)).unwrap();
        snaps.push(backup(src.clone(), BackupOptions { paths: vec![data.clone()], ..Default::default() }).await.unwrap());
    }
    let f = data.join("f").to_str().unwrap().to_string();
    let blob = crate::walk::find(&src, snaps[1].tree, &f).await.unwrap().unwrap().content[0];
    let src = Arc::new(damaged(&src, &dir.path().join("src"), &blob).await);
    let dst = Arc::new(repository(&dir.path().join("dst")).await);

    let report = copy(src.clone(), dst.clone(), snaps.clone(), &CopyOptions::default()).await.unwrap();
    assert_eq!(report.copied.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [snaps[0].id, snaps[2].id]);
    let damage = crate::Error::corrupt("blob", blob, "it fails authentication");
    assert_eq!(report.damaged, [(snaps[1].id, damage.to_string())]);
    for (from, to) in &report.copied {
        let seed = if *from == snaps[0].id { "one" } else { "three" };
        let copied = dst.snapshots().await.unwrap().into_iter().find(|s| s.id == *to).unwrap();
        let file = crate::walk::find(&dst, copied.tree, &f).await.unwrap().unwrap();
        assert_eq!(dst.load_blob(&file.content[0]).await.unwrap(), content(seed, 100_000));
    }

    let root = src.load_tree(&snaps[0].tree).await.unwrap();
    let src = Arc::new(damaged(&src, &dir.path().join("src"), &root.nodes[0].subtree.unwrap()).await);
    let again = copy(src, dst, snaps, &CopyOptions::default()).await.unwrap();
    assert_eq!((again.present, again.copied.len(), again.damaged.len()), (2, 0, 1));
}

/// An evidence entry damaged in the source is named and not carried: the
/// snapshots and the other entries are copied all the same (evidence is
/// never deleted, so one damaged entry must not stop every copy for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_evidence_entry_is_named_and_the_rest_copied() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (Arc::new(repository(&dir.path().join("src")).await), Arc::new(repository(&dir.path().join("dst")).await));
    for n in 0..3 {
        crate::evidence::append(&src, "job", None, serde_json::json!({"n": n})).await.unwrap();
    }
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("f"), content("evidence", 10_000)).unwrap();
    let snap = backup(src.clone(), BackupOptions { paths: vec![data.clone()], ..Default::default() }).await.unwrap();
    let mut entries: Vec<_> = std::fs::read_dir(dir.path().join("src/evidence")).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    let mut bytes = std::fs::read(&entries[1]).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&entries[1], bytes).unwrap();

    let report = copy(src.clone(), dst.clone(), src.snapshots().await.unwrap(), &CopyOptions::default()).await.unwrap();
    assert_eq!(report.copied.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [snap.id]);
    assert_eq!((report.evidence_copied, report.evidence_damaged.len()), (2, 1));
    let (seq, why) = &report.evidence_damaged[0];
    assert_eq!((*seq, why.as_str()), (crate::evidence::names(&src).await.unwrap()[1].0, "it fails authentication"));
}

/// A source repository `src` with one snapshot of `data/f` (300 kB of
/// `seed`'s content) and an empty target `dst`, both under `dir`.
async fn one_snapshot_and_a_target(dir: &std::path::Path, seed: &str) -> (Arc<Repository>, crate::Snapshot) {
    let src = Arc::new(repository(&dir.join("src")).await);
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("f"), content(seed, 300_000)).unwrap();
    let snap = backup(src.clone(), BackupOptions { paths: vec![data], ..Default::default() }).await.unwrap();
    repository(&dir.join("dst")).await;
    (src, snap)
}

/// The repository `name` under `dir`, opened with these faults injected.
async fn open_with_faults(dir: &std::path::Path, name: &str, faults: &str) -> Arc<Repository> {
    let mut opts = repo_opts();
    opts.storage.faults = Some(tresor_storage::FaultConfig::parse(faults).unwrap());
    Arc::new(Repository::open(&Location::Fs(dir.join(name)), &opts).await.unwrap())
}

/// `verify` reads back what the copy wrote before the snapshot needing it
/// is saved: with the target storing every pack damaged, the copy fails
/// and saves nothing, and what did not read back is out of the target's
/// index, so the next copy uploads it again and its snapshot reads back
/// exactly (were it left indexed, that copy would deduplicate against it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_stops_at_what_the_target_stored_damaged_and_the_next_copy_uploads_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let (src, snap) = one_snapshot_and_a_target(dir.path(), "verify").await;
    let verify = CopyOptions { verify: true, ..Default::default() };

    let garbling = open_with_faults(dir.path(), "dst", "garble=data/").await;
    let err = copy(src.clone(), garbling, vec![snap.clone()], &verify).await.unwrap_err().to_string();
    let next = "it is out of the target's index now, and the next copy uploads what it held again";
    assert!(err.contains(" is damaged: it did not read back from the target (blob ") && err.ends_with(next), "{err}");
    let dst = open_with_faults(dir.path(), "dst", "").await;
    assert!(dst.snapshots().await.unwrap().is_empty(), "nothing saved");
    let report = copy(src, dst.clone(), vec![snap], &verify).await.unwrap();
    assert_eq!((report.copied.len(), report.packs_verified), (1, report.packs_written));
    let copied = dst.snapshots().await.unwrap();
    let f = dir.path().join("data/f");
    let file = crate::walk::find(&dst, copied[0].tree, f.to_str().unwrap()).await.unwrap().unwrap();
    let mut read = Vec::new();
    for blob in &file.content {
        read.extend(dst.load_blob(blob).await.unwrap());
    }
    assert_eq!(read, content("verify", 300_000));
}

/// A copy's error says whether the target failed (the daemon charges the
/// off-site repository then) or the source did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_says_which_side_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (src, snap) = one_snapshot_and_a_target(dir.path(), "sides").await;
    let no_verify = CopyOptions::default();

    let full = copy(src, open_with_faults(dir.path(), "dst", "write-limit=1000").await, vec![snap.clone()], &no_verify).await;
    let full = full.unwrap_err();
    let said = "no storage space, source: No space left on device (os error 28)";
    assert_eq!((full.is_in_target(), full.kind()), (true, crate::ErrorKind::StorageFull), "{full}");
    assert!(full.to_string().ends_with(said), "{full}");
    let (src, dst) = (open_with_faults(dir.path(), "src", "unreadable=data/").await, open_with_faults(dir.path(), "dst", "").await);
    let down = copy(src, dst, vec![snap], &no_verify).await.unwrap_err();
    assert!(!down.is_in_target() && down.to_string().ends_with("injected outage: storage does not answer"), "{down}");
}
