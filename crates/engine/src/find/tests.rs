use std::path::PathBuf;
use std::sync::Arc;

use super::Finder;
use crate::backup::{BackupOptions, backup};
use crate::repo::tests::{content, repository};

/// The second snapshot's search reads only the directories that changed
/// and those that matched: the eight others, found barren in the first,
/// are not read again.
#[tokio::test]
async fn a_directory_without_a_match_is_read_once_over_all_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(repository(&dir.path().join("repo")).await);
    let src = dir.path().join("src");
    for d in 0..10 {
        std::fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..5 {
            std::fs::write(src.join(format!("d{d}/f{f}")), content(&format!("{d} {f}"), 100)).unwrap();
        }
    }
    std::fs::write(src.join("d3/config.yaml"), "a: 1\n").unwrap();
    let snap = |repo: &Arc<crate::Repository>| backup(repo.clone(), BackupOptions { paths: vec![src.clone()], ..Default::default() });
    let first = snap(&repo).await.unwrap();
    std::fs::write(src.join("d7/f1"), "changed").unwrap();
    let second = snap(&repo).await.unwrap();

    let mut finder = Finder::new(&repo, &["config.yaml".into(), "**/d7/f1".into()]).unwrap();
    let mut seen: Vec<PathBuf> = Vec::new();
    for s in [&first, &second] {
        let found = finder
            .search(s.tree, &mut |p, _| {
                seen.push(p.strip_prefix(&src).unwrap().to_path_buf());
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(found, 2);
    }
    let want: Vec<PathBuf> = ["d3/config.yaml", "d7/f1", "d3/config.yaml", "d7/f1"].iter().map(PathBuf::from).collect();
    assert_eq!(seen, want);
    // The trees from the root to src, then src's ten directories.
    let path_trees = src.components().count() as u64;
    assert_eq!(finder.trees_read, (path_trees + 10) + (path_trees + 2));

    let mut none = Finder::new(&repo, &["nothing-like-it".into()]).unwrap();
    assert_eq!(none.search(first.tree, &mut |_, _| Ok(())).await.unwrap(), 0);
    assert_eq!(none.search(second.tree, &mut |_, _| Ok(())).await.unwrap(), 0);
    assert_eq!(none.trees_read, (path_trees + 10) + (path_trees + 1), "only what changed is read again");
    assert!(Finder::new(&repo, &[]).is_err());
}
