//! Check beside a prune (docs/ARCHITECTURE.md §7.3a): the prune lands
//! between the survey and the judging of one run, every time.

use std::time::Duration;

use tresor_storage::Location;

use super::{CheckOptions, Problem, ReadData, check, judge, settle, survey};
use crate::backup::{BackupOptions, backup};
use crate::objects::Kind;
use crate::prune::{PruneOptions, prune};
use crate::repo::tests::{damaged, repo_opts, repository};
use crate::restore::tests::{damaged_dir, forgotten_old_snapshot, write_files};
use crate::{Id, Repository};

/// Judged against a survey taken before the prune, the packs the prune
/// swept look damaged; the run that follows, against what storage holds
/// then, finds the repository whole.
#[tokio::test]
async fn a_prune_between_survey_and_judging_is_not_taken_for_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = forgotten_old_snapshot(dir.path()).await;
    let root = dir.path().join("repo");
    let checker = Repository::open(&Location::Fs(root.clone()), &repo_opts()).await.unwrap();
    let opts = CheckOptions { read_data: ReadData::ALL, ..Default::default() };
    let (stale, settled) = (survey(&checker).await.unwrap(), survey(&checker).await.unwrap());
    let packs: Vec<_> = stale.index.packs().map(|(p, _)| p).collect();
    let pruned = prune(repo.clone(), &prune_opts(Duration::ZERO)).await.unwrap();
    assert!(pruned.repacked_packs > 0 && pruned.deleted_packs > 0, "{pruned:?}");
    let mut swept: Vec<String> =
        packs.iter().filter(|p| !root.join(Kind::Pack.path(p)).exists()).map(|p| format!("pack {}", p.short())).collect();
    swept.sort();
    assert_eq!(swept.len(), pruned.deleted_packs);

    let (first, _, bad) = judge(&checker, &opts, stale, None).await.unwrap();
    let mut objects: Vec<String> = first.problems.iter().map(|p| p.object.clone()).collect();
    objects.sort();
    assert_eq!(objects, swept, "{:?}", first.problems);
    assert_eq!(bad.len(), swept.len());

    let report = settle(&checker, &opts, settled).await.unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    let stored = walkdir(&root.join("data"));
    assert_eq!((report.snapshots, report.packs), (1, stored));
}

fn prune_opts(grace: Duration) -> PruneOptions {
    PruneOptions { max_unused: 0.0, grace, dry_run: false }
}

/// Marked packs that a survey saw, swept before they are read, are no
/// damage by themselves: the first run finds the repository whole.
#[tokio::test]
async fn marked_packs_swept_after_the_survey_are_no_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = forgotten_old_snapshot(dir.path()).await;
    let marking = prune(repo.clone(), &prune_opts(Duration::from_secs(3600))).await.unwrap();
    assert!(marking.marked_packs > 0 && marking.deleted_packs == 0, "{marking:?}");
    let checker = Repository::open(&Location::Fs(dir.path().join("repo")), &repo_opts()).await.unwrap();
    let stale = survey(&checker).await.unwrap();
    let sweeping = prune(repo.clone(), &prune_opts(Duration::ZERO)).await.unwrap();
    assert_eq!(sweeping.deleted_packs, marking.marked_packs, "{sweeping:?}");

    let (report, _, bad) = judge(&checker, &CheckOptions { read_data: ReadData::ALL, ..Default::default() }, stale, None).await.unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(bad.len(), marking.marked_packs);
}

/// The files below `dir`, at any depth.
fn walkdir(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).map(|p| if p.is_dir() { walkdir(&p) } else { 1 }).sum()
}

/// Without reading the packs, a subtree that fails to open is found by the
/// walk: it is named with the paths it holds, and the walk goes on to the
/// rest of the snapshot.
#[tokio::test]
async fn a_tree_that_cannot_be_read_is_named_with_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let repo = std::sync::Arc::new(repository(&dir.path().join("repo")).await);
    let src = dir.path().join("src");
    write_files(&src, &[("a/f", "a"), ("b/f", "b")]);
    let snap = backup(repo.clone(), BackupOptions { paths: vec![src.clone()], ..Default::default() }).await.unwrap();
    let (checker, b) = damaged_dir(&repo, &dir.path().join("repo"), snap.tree, &src.join("b")).await;

    let report = check(&checker, CheckOptions { read_data: ReadData::NONE, ..Default::default() }).await.unwrap();
    let damage = crate::Error::corrupt("blob", b, "it fails authentication");
    let want = Problem {
        object: format!("tree {}", b.short()),
        error: format!("it cannot be read: {damage}"),
        snapshots: vec![snap.id.short()],
        files: vec![format!("{}:{}", snap.id.short(), src.join("b").display())],
    };
    assert_eq!(report.problems, vec![want]);
}

/// A repository below `dir` with one backup of one small file; where it
/// is stored, and the file's blob.
async fn one_file(dir: &std::path::Path) -> (std::sync::Arc<Repository>, std::path::PathBuf, Id) {
    let root = dir.join("repo");
    let repo = std::sync::Arc::new(repository(&root).await);
    let src = dir.join("src");
    write_files(&src, &[("a", "a")]);
    let snap = backup(repo.clone(), BackupOptions { paths: vec![src.clone()], ..Default::default() }).await.unwrap();
    let file = crate::walk::find(&repo, snap.tree, src.join("a").to_str().unwrap()).await.unwrap().unwrap();
    (repo, root, file.content[0])
}

/// A pack named besides the slice is read wherever it falls, so damage an
/// earlier check found is found again while the slices move on; the
/// report names the damaged packs by their full ids.
#[tokio::test]
async fn a_pack_named_besides_the_slice_is_read_and_its_damage_named() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, root, blob) = one_file(dir.path()).await;
    let checker = damaged(&repo, &root, &blob).await;
    let pack = checker.index().await.unwrap().pack_of(&blob).unwrap();
    let elsewhere = if ReadData::slice(1, 2).wants(&pack) { ReadData::slice(2, 2) } else { ReadData::slice(1, 2) };

    let slice_only = check(&checker, CheckOptions { read_data: elsewhere, ..Default::default() }).await.unwrap();
    assert!(slice_only.ok(), "{:?}", slice_only.problems);
    assert_eq!(slice_only.damaged_packs, Vec::<Id>::new());
    let also_read = [pack].into_iter().collect();
    let besides = check(&checker, CheckOptions { read_data: elsewhere, also_read }).await.unwrap();
    assert_eq!(besides.packs_read, slice_only.packs_read + 1);
    assert_eq!(besides.damaged_packs, vec![pack]);
    let objects: Vec<&str> = besides.problems.iter().map(|p| p.object.as_str()).collect();
    assert_eq!(objects, [format!("pack {}", pack.short())], "{:?}", besides.problems);
}

/// A pack storage lost is a problem every check finds, not one to read
/// again: the report does not name it among the damaged packs.
#[tokio::test]
async fn a_missing_pack_is_not_named_to_be_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, root, blob) = one_file(dir.path()).await;
    let pack = repo.index().await.unwrap().pack_of(&blob).unwrap();
    std::fs::remove_file(root.join(Kind::Pack.path(&pack))).unwrap();

    let checker = Repository::open(&Location::Fs(root), &repo_opts()).await.unwrap();
    let report = check(&checker, CheckOptions { read_data: ReadData::ALL, ..Default::default() }).await.unwrap();
    let missing: Vec<&str> =
        report.problems.iter().filter(|p| p.error == "it is missing from storage").map(|p| p.object.as_str()).collect();
    assert_eq!(missing, [format!("pack {}", pack.short())], "{:?}", report.problems);
    assert_eq!(report.damaged_packs, Vec::<Id>::new());
}

/// Successive slices read every pack exactly once, and a fraction reads
/// the packs of the slices it spans.
#[test]
fn slices_read_every_pack_once() {
    let ids: Vec<Id> = (0..4096u32).map(|i| Id(*blake3::hash(&i.to_le_bytes()).as_bytes())).chain([Id([0; 32]), Id([0xff; 32])]).collect();
    for of in [1, 3, 7] {
        for id in &ids {
            let slices: Vec<u32> = (1..=of).filter(|&n| ReadData::slice(n, of).wants(id)).collect();
            assert_eq!(slices.len(), 1, "{id:?} in slices {slices:?} of {of}");
        }
    }
    let seventh = ids.iter().filter(|id| ReadData::slice(1, 7).wants(id)).count();
    assert!((450..720).contains(&seventh), "{seventh} of {} packs in slice 1/7", ids.len());
    assert!(ids.iter().all(|id| ReadData::ALL.wants(id) && !ReadData::NONE.wants(id)));
    let half = ReadData::fraction(0.5);
    assert!(ids.iter().all(|id| half.wants(id) == (ReadData::slice(1, 2).wants(id))));
    // A window past the end wraps to the start: 3/4 … 1/4 is slices 4/4 and 1/4.
    let wrapped = ReadData::window(0.75, 0.5);
    assert!(ids.iter().all(|id| wrapped.wants(id) == (ReadData::slice(4, 4).wants(id) || ReadData::slice(1, 4).wants(id))));
    assert!(ids.iter().all(|id| ReadData::window(0.3, 1.0).wants(id)), "a whole window from anywhere reads all");
}
