//! `restore --preview`: what a restore would change in its target, before
//! anything does. A directory: the files it would add, change (content
//! differs) and, with --delete, remove; Kubernetes: each object's would-be
//! result and why (the `--dry-run` the k8s restore has).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde_json::json;
use tresor_controller::secret_url::SecretUrl;
use tresor_engine::{Node, NodeKind, Repository, Snapshot};

use crate::commands::print_json;
use crate::opts::{Global, RestoreArgs};

/// What restoring `snap`'s `base` into `target` would add, change and (with `delete`) remove.
pub type Changes = (Vec<PathBuf>, Vec<PathBuf>, Vec<PathBuf>);

pub async fn changes(repo: &Repository, snap: &Snapshot, base: &str, target: &Path, delete: bool) -> Result<Changes> {
    let mut added = Vec::new();
    let mut changed = Vec::new();
    let mut wanted = BTreeSet::new();
    for (path, node) in tresor_engine::walk::list(repo, snap.tree, base).await? {
        let rel = path.strip_prefix(Path::new("/").join(base.trim_start_matches('/'))).unwrap_or(&path).to_path_buf();
        wanted.insert(rel.clone());
        if node.kind != NodeKind::File {
            continue;
        }
        match std::fs::read(target.join(&rel)) {
            Err(_) => added.push(rel),
            Ok(have) if !same(repo, &node, &have).await? => changed.push(rel),
            Ok(_) => {}
        }
    }
    let removed: Vec<PathBuf> = if delete { present(target).into_iter().filter(|p| !wanted.contains(p)).collect() } else { Vec::new() };
    Ok((added, changed, removed))
}

/// The preview of restoring `snap` (its `folder`) into `a.target`.
pub async fn directory(g: &Global, repo: &Repository, snap: &Snapshot, folder: Option<&str>, a: &RestoreArgs) -> Result<u8> {
    let Some(target) = a.target.as_deref() else { bail!("--preview takes --target DIR or --to k8s://") };
    let (added, changed, removed) = changes(repo, snap, folder.unwrap_or("/"), target, a.delete).await?;
    let show = |v: &[PathBuf]| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
    if g.json {
        print_json(
            &json!({"snapshot": snap.id, "target": target, "added": show(&added), "changed": show(&changed), "removed": show(&removed)}),
        )?;
    } else {
        for (mark, list) in [("+", &added), ("M", &changed), ("-", &removed)] {
            for p in list.iter() {
                println!("{mark}    {}", p.display());
            }
        }
        println!(
            "{} added, {} changed, {} removed in {} (preview: nothing changed)",
            added.len(),
            changed.len(),
            removed.len(),
            target.display()
        );
    }
    Ok(0)
}

/// The preview of restoring into a Redis or PostgreSQL target: what it holds that would be replaced.
pub fn service(g: &Global, snap: &Snapshot, to: &SecretUrl) -> Result<u8> {
    let Some(replaces) = tresor_controller::app_preview::replaces(to.expose()).map_err(|e| anyhow::anyhow!("{e}"))? else {
        bail!("--preview takes --target DIR, --to k8s://, redis:// or postgres://");
    };
    // The target as said: without its password.
    let shown = to.to_string();
    if g.json {
        print_json(&json!({"snapshot": snap.id, "target": shown, "replaces": replaces}))?;
    } else {
        println!("{shown} {replaces} (preview: nothing changed)");
    }
    Ok(0)
}

/// The file's bytes are the node's content.
async fn same(repo: &Repository, node: &Node, have: &[u8]) -> Result<bool> {
    if have.len() as u64 != node.size {
        return Ok(false);
    }
    let mut at = 0;
    for id in &node.content {
        let blob = repo.load_blob(id).await?;
        if have.get(at..at + blob.len()) != Some(&blob[..]) {
            return Ok(false);
        }
        at += blob.len();
    }
    Ok(true)
}

/// Every entry below `root`, relative to it, as `--delete` sees them: a
/// link is an entry of its own and never followed, so nothing beyond one is
/// listed. `--delete` removes a link the snapshot lacks as a link, and a
/// link where the snapshot has a directory is replaced by one, so what it
/// points at is never the target's.
fn present(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            // The entry's own type (lstat), unlike `Path::is_dir`.
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p.clone());
            }
            out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
        }
    }
    out.sort();
    out
}
