//! `restore --preview`: what a restore would change in its target, before
//! anything does. A directory: the files it would add, change (content
//! differs) and, with --delete, remove; Kubernetes: each object's would-be
//! result and why (the `--dry-run` the k8s restore has).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde_json::json;
use tresor_controller::secret_url::SecretUrl;
use tresor_engine::restore::{RestoreOptions, deletable, wanted};
use tresor_engine::walk::{PathFilter, Walker};
use tresor_engine::{Node, NodeKind, Repository, Snapshot};

use crate::commands::print_json;
use crate::opts::{Global, RestoreArgs};

/// What a restore would add, change and (with `delete`) remove in its target.
pub type Changes = (Vec<PathBuf>, Vec<PathBuf>, Vec<PathBuf>);

/// [`planned`] for a whole folder: restore-app's directory sources take no filters.
pub async fn changes(repo: &Repository, snap: &Snapshot, base: &str, target: &Path, delete: bool) -> Result<Changes> {
    let opts = RestoreOptions { target: target.to_path_buf(), subfolder: Some(base.to_string()), delete, ..Default::default() };
    planned(repo, snap, &opts).await
}

/// What `tresor_engine::restore::restore(repo, snap, opts)` would add,
/// change and remove, found as it finds them: the same walk, the same
/// `wanted` for what is restored and what the walk goes into, and for
/// `delete` the same selection of what the target holds.
pub async fn planned(repo: &Repository, snap: &Snapshot, opts: &RestoreOptions) -> Result<Changes> {
    let root = match &opts.subfolder {
        Some(folder) => tresor_engine::walk::folder(repo, snap.tree, folder).await?,
        None => snap.tree,
    };
    let (includes, excludes) = (PathFilter::new(&opts.includes)?, PathFilter::new(&opts.excludes)?);
    let (mut added, mut changed) = (Vec::new(), Vec::new());
    // What the walk restores or goes into: `delete` leaves these.
    let mut kept = HashSet::new();
    let mut walker = Walker::new(repo);
    walker.enter(root, Path::new("/")).await?;
    while let Some((path, node)) = walker.next()? {
        let (take, descend) = wanted(&path, &node, &includes, &excludes);
        let rel = path.strip_prefix("/").unwrap_or(&path).to_path_buf();
        if descend && let Some(sub) = node.subtree {
            walker.enter(sub, &path).await?;
            kept.insert(rel.clone());
        }
        if !take {
            continue;
        }
        kept.insert(rel.clone());
        if node.kind == NodeKind::File {
            match held(&opts.target, &rel) {
                None => added.push(rel),
                Some(true) if same(repo, &node, &opts.target.join(&rel)).await? => {}
                Some(_) => changed.push(rel),
            }
        }
    }
    let mut removed = Vec::new();
    if opts.delete {
        let present = present(&opts.target);
        // A directory holding what `delete` leaves is left too (`existing::remove`).
        let stays: HashSet<&Path> =
            present.iter().filter(|p| !deletable(&Path::new("/").join(p), &includes, &excludes)).flat_map(|p| p.ancestors()).collect();
        removed = present.iter().filter(|p| !stays.contains(p.as_path()) && removes(p, &kept, &includes, &excludes)).cloned().collect();
    }
    Ok((added, changed, removed))
}

/// What the target holds at `rel` where the snapshot has a file, seen as
/// the restore sees it, each component's own type (lstat), outermost
/// first. `None`: nothing reached without a link, so the file is new, as a
/// link above it is replaced by a directory of the restore's own. Else
/// whether it is a regular file; a link there is not one, the restore
/// replaces it. The target itself may be a link: the restore follows it.
fn held(target: &Path, rel: &Path) -> Option<bool> {
    let mut at = target.to_path_buf();
    let mut parts = rel.components().peekable();
    while let Some(part) = parts.next() {
        at.push(part);
        let kind = std::fs::symlink_metadata(&at).ok()?.file_type();
        if parts.peek().is_none() {
            return Some(kind.is_file());
        }
        if !kind.is_dir() {
            return None;
        }
    }
    None
}

/// Whether `delete` removes `rel` (as `existing::delete_extra` selects),
/// unless it holds what `delete` leaves: it, or a directory above it, is
/// neither restored nor gone into, and it is `deletable` (within what the
/// filters select, below no exclude).
fn removes(rel: &Path, kept: &HashSet<PathBuf>, includes: &PathFilter, excludes: &PathFilter) -> bool {
    deletable(&Path::new("/").join(rel), includes, excludes) && rel.ancestors().any(|a| !a.as_os_str().is_empty() && !kept.contains(a))
}

/// The preview of restoring `snap` (its `folder`) into `a.target`.
pub async fn directory(g: &Global, repo: &Repository, snap: &Snapshot, folder: Option<&str>, a: &RestoreArgs) -> Result<u8> {
    let Some(target) = a.target.clone() else { bail!("--preview takes --target DIR or --to k8s://") };
    let opts = RestoreOptions {
        target,
        subfolder: folder.map(String::from),
        includes: a.includes.clone(),
        excludes: a.excludes.clone(),
        delete: a.delete,
        ..Default::default()
    };
    let (added, changed, removed) = planned(repo, snap, &opts).await?;
    let target = &opts.target;
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

/// The file's bytes are the node's content; one that cannot be read is not.
async fn same(repo: &Repository, node: &Node, file: &Path) -> Result<bool> {
    let Ok(have) = std::fs::read(file) else { return Ok(false) };
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
