use std::path::Path;
use std::sync::Arc;

use super::{Change, diff};
use crate::backup::{BackupOptions, backup};
use crate::repo::tests::repository;
use crate::restore::tests::{damaged_dir, write_files};

/// Every kind of change, in path order; an unchanged directory is not
/// read at all: its tree is damaged in storage, and the diff still
/// succeeds.
#[tokio::test]
async fn changes_come_in_path_order_and_an_unchanged_subtree_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(repository(&dir.path().join("repo")).await);
    let src = dir.path().join("src");
    let same: Vec<(String, String)> = (0..50).map(|n| (format!("same/f{n}"), format!("same {n}"))).collect();
    let same: Vec<(&str, &str)> = same.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    write_files(&src, &same);
    write_files(&src, &[("a/x", "x"), ("a/y", "y"), ("b", "b"), ("c/z", "z"), ("c/deep/w", "w"), ("d", "d")]);
    let snap = |repo: &Arc<crate::Repository>| backup(repo.clone(), BackupOptions { paths: vec![src.clone()], ..Default::default() });
    let old = snap(&repo).await.unwrap();
    std::fs::remove_file(src.join("b")).unwrap();
    std::fs::remove_dir_all(src.join("c")).unwrap();
    write_files(&src, &[("a/x", "x changed"), ("b/q", "q"), ("a-b", "new"), ("e", "e")]);
    let new = snap(&repo).await.unwrap();

    let (repo, unchanged) = damaged_dir(&repo, &dir.path().join("repo"), new.tree, &src.join("same")).await;

    assert!(repo.load_tree(&unchanged).await.is_err(), "the unchanged directory's tree is damaged");
    let mut seen = Vec::new();
    diff(&repo, old.tree, new.tree, &mut |c, p| {
        seen.push(format!("{} {}", c.modifier(), p.strip_prefix(&src).unwrap().display()));
        Ok(())
    })
    .await
    .unwrap();
    let expected = ["M a/x", "+ a-b", "M b", "+ b/q", "- c", "- c/deep", "- c/deep/w", "- c/z", "+ e"];
    assert_eq!(seen, expected);

    let mut none = 0;
    diff(&repo, new.tree, new.tree, &mut |_, _| {
        none += 1;
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(none, 0);
    let unread = diff(&repo, crate::Id([9; 32]), new.tree, &mut |_, _| Ok(())).await.unwrap();
    assert_eq!(unread.len(), 1);
    assert_eq!((unread[0].path.as_path(), unread[0].tree), (Path::new("/"), crate::Id([9; 32])));
    assert!(matches!(unread[0].error, crate::Error::MissingBlob(_)), "{}", unread[0].error);
    assert_eq!(Change::Removed.modifier(), "-");
}

/// A directory that changed but whose tree is damaged on one side is
/// named, and what changed elsewhere is still reported in full.
#[tokio::test]
async fn a_damaged_directory_is_named_and_the_rest_compared() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(repository(&dir.path().join("repo")).await);
    let src = dir.path().join("src");
    write_files(&src, &[("a/x", "x"), ("b/y", "y"), ("c/z", "z")]);
    let snap = |repo: &Arc<crate::Repository>| backup(repo.clone(), BackupOptions { paths: vec![src.clone()], ..Default::default() });
    let old = snap(&repo).await.unwrap();
    write_files(&src, &[("a/x", "x changed"), ("b/y", "y changed"), ("c/z", "z changed")]);
    let new = snap(&repo).await.unwrap();
    let (repo, b) = damaged_dir(&repo, &dir.path().join("repo"), new.tree, &src.join("b")).await;

    let mut seen = Vec::new();
    let unread = diff(&repo, old.tree, new.tree, &mut |c, p| {
        seen.push(format!("{} {}", c.modifier(), p.strip_prefix(&src).unwrap().display()));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(seen, ["M a/x", "M c/z"]);
    assert_eq!(unread.len(), 1);
    assert_eq!((unread[0].path.as_path(), unread[0].tree), (src.join("b").as_path(), b));
    assert_eq!(unread[0].error.to_string(), crate::Error::corrupt("blob", b, "it fails authentication").to_string());
}
