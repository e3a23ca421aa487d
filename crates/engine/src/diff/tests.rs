use std::path::Path;
use std::sync::Arc;

use super::{Change, diff};
use crate::backup::{BackupOptions, backup};
use crate::objects::Kind;
use crate::repo::tests::{content, repository};

fn write(root: &Path, files: &[(&str, &str)]) {
    for (name, seed) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content(seed, 1000)).unwrap();
    }
}

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
    write(&src, &same);
    write(&src, &[("a/x", "x"), ("a/y", "y"), ("b", "b"), ("c/z", "z"), ("c/deep/w", "w"), ("d", "d")]);
    let snap = |repo: &Arc<crate::Repository>| backup(repo.clone(), BackupOptions { paths: vec![src.clone()], ..Default::default() });
    let old = snap(&repo).await.unwrap();
    std::fs::remove_file(src.join("b")).unwrap();
    std::fs::remove_dir_all(src.join("c")).unwrap();
    write(&src, &[("a/x", "x changed"), ("b/q", "q"), ("a-b", "new"), ("e", "e")]);
    let new = snap(&repo).await.unwrap();

    let unchanged = crate::walk::find(&repo, new.tree, &format!("{}/same", src.display())).await.unwrap().unwrap().subtree.unwrap();
    let (pack, e) = repo.index().await.unwrap().get(&unchanged).unwrap();
    let stored = dir.path().join("repo").join(Kind::Pack.path(&pack));
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[(e.offset + e.length / 2) as usize] ^= 1;
    std::fs::write(&stored, bytes).unwrap();
    let repo =
        crate::Repository::open(&tresor_storage::Location::Fs(dir.path().join("repo")), &crate::repo::tests::repo_opts()).await.unwrap();

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
    let e = diff(&repo, crate::Id([9; 32]), new.tree, &mut |_, _| Ok(())).await.err().unwrap();
    assert!(matches!(e, crate::Error::MissingBlob(_)), "{e}");
    assert_eq!(Change::Removed.modifier(), "-");
}
