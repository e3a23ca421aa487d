//! `restore --preview`: what a restore would change in its target, before
//! anything does. A directory: the files it would add, change (content
//! differs and `--overwrite` lets it write) and, with --delete, remove, and
//! what stands in its way; Kubernetes: each object's would-be result and
//! why (the `--dry-run` the k8s restore has).

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

/// What `tresor_engine::restore::restore` would do in its target, each
/// path relative to it.
#[derive(Default)]
pub struct Plan {
    /// Files restored where the target has nothing.
    pub added: Vec<PathBuf>,
    /// Files the target holds with other content, which the restore writes.
    pub changed: Vec<PathBuf>,
    /// What `delete` removes, a directory removed whole as one entry.
    pub removed: Vec<PathBuf>,
    /// Where what the target holds stops the restore: it reports an error
    /// for each, once, and restores nothing there or below.
    pub unrestorable: Vec<PathBuf>,
    /// Directories whose tree is damaged in the repository, with why: the
    /// restore reports each, restores nothing below and deletes nothing
    /// there.
    pub damaged: Vec<(PathBuf, String)>,
}

/// [`planned`] for a whole folder: restore-app's directory sources take no filters.
pub async fn changes(repo: &Repository, snap: &Snapshot, base: &str, target: &Path, delete: bool) -> Result<Plan> {
    let opts = RestoreOptions { target: target.to_path_buf(), subfolder: Some(base.to_string()), delete, ..Default::default() };
    planned(repo, snap, &opts).await
}

/// What `tresor_engine::restore::restore(repo, snap, opts)` would do,
/// found as it finds it: the same walk, the same `wanted` for what is
/// restored and what the walk goes into, the same `--overwrite` rule, and
/// for `delete` the same selection of what the target holds.
pub async fn planned(repo: &Repository, snap: &Snapshot, opts: &RestoreOptions) -> Result<Plan> {
    let root = match &opts.subfolder {
        Some(folder) => tresor_engine::walk::folder(repo, snap.tree, folder).await?,
        None => snap.tree,
    };
    let (includes, excludes) = (PathFilter::new(&opts.includes)?, PathFilter::new(&opts.excludes)?);
    let mut plan = Plan::default();
    // What the walk restores or goes into: `delete` leaves these.
    let mut kept = HashSet::new();
    let mut walker = Walker::new(repo);
    walker.enter(root, Path::new("/")).await?;
    while let Some((path, node)) = walker.next_node()? {
        let (take, descend) = wanted(&path, &node, &includes, &excludes);
        let rel = path.strip_prefix("/").unwrap_or(&path).to_path_buf();
        if descend && let Some(sub) = node.subtree {
            if let Some(lost) = walker.descend(sub, &path).await? {
                plan.damaged.push((rel.clone(), lost.error.to_string()));
            }
            kept.insert(rel.clone());
        }
        if !take {
            continue;
        }
        kept.insert(rel.clone());
        // The walk meets all below a path together: only the last one in the way can hold this.
        if plan.unrestorable.last().is_some_and(|at| rel.starts_with(at)) {
            continue;
        }
        let held = held(&opts.target, &rel, node.is_dir());
        if let Held::InTheWay(at) = held {
            plan.unrestorable.push(at);
            continue;
        }
        if node.kind != NodeKind::File {
            continue;
        }
        match held {
            Held::Nothing => plan.added.push(rel),
            Held::File(md) if opts.overwrite.keeps(&md, &node) || same(repo, &node, &opts.target.join(&rel)).await? => {}
            _ => plan.changed.push(rel),
        }
    }
    if opts.delete {
        let damaged: Vec<&Path> = plan.damaged.iter().map(|(p, _)| p.as_path()).collect();
        plan.removed = removed(&opts.target, &kept, &damaged, &includes, &excludes);
    }
    Ok(plan)
}

/// What `delete` removes (`existing::delete_extra`): what the target holds
/// that `removes` selects, but a directory holding what `delete` leaves,
/// which is left too, and what lies below a directory removed whole, which
/// goes with it as one entry (`existing::remove`); what a damaged directory
/// holds, which the restore never looks into.
fn removed(target: &Path, kept: &HashSet<PathBuf>, damaged: &[&Path], includes: &PathFilter, excludes: &PathFilter) -> Vec<PathBuf> {
    let present = present(target);
    let left = |p: &Path| !deletable(&Path::new("/").join(p), includes, excludes) || damaged.iter().any(|d| p.starts_with(d));
    let stays: HashSet<&Path> = present.iter().filter(|p| left(p)).flat_map(|p| p.ancestors()).collect();
    let gone: HashSet<&Path> =
        present.iter().filter(|p| !stays.contains(p.as_path()) && removes(p, kept, includes, excludes)).map(PathBuf::as_path).collect();
    // All below a directory that goes goes: whatever stays keeps the directories above it.
    present.iter().filter(|p| gone.contains(p.as_path()) && !p.parent().is_some_and(|d| gone.contains(d))).cloned().collect()
}

/// What the target holds where the snapshot has an entry, seen as the
/// restore sees it.
enum Held {
    /// Nothing, or nothing reached without a link: a link above it is
    /// replaced by a directory of the restore's own.
    Nothing,
    /// A regular file, where the snapshot has one.
    File(std::fs::Metadata),
    /// What the restore replaces or keeps as it is: a link or special
    /// file where the snapshot has a file, a directory where it has one.
    Other,
    /// What the restore neither replaces nor restores into (`make_dir`
    /// refuses what is not a directory or a link; a directory is never
    /// removed to make room for anything else): where it stands.
    InTheWay(PathBuf),
}

/// What the target holds at `rel`, where the snapshot has a directory
/// (`dir`) or something else, each component's own type (lstat),
/// outermost first. The target itself may be a link: the restore follows it.
fn held(target: &Path, rel: &Path, dir: bool) -> Held {
    let mut at = target.to_path_buf();
    let mut parts = rel.components().peekable();
    while let Some(part) = parts.next() {
        at.push(part);
        let Ok(md) = std::fs::symlink_metadata(&at) else { return Held::Nothing };
        let (kind, last) = (md.file_type(), parts.peek().is_none());
        let way = || Held::InTheWay(at.strip_prefix(target).unwrap_or(&at).to_path_buf());
        if !last || dir {
            if kind.is_symlink() {
                return Held::Nothing;
            }
            if !kind.is_dir() {
                return way();
            }
            continue;
        }
        return if kind.is_dir() {
            way()
        } else if kind.is_file() {
            Held::File(md)
        } else {
            Held::Other
        };
    }
    Held::Other
}

/// Whether `delete` removes `rel` (as `existing::delete_extra` selects),
/// unless it holds what `delete` leaves: it, or a directory above it, is
/// neither restored nor gone into, and it is `deletable` (within what the
/// filters select, below no exclude).
fn removes(rel: &Path, kept: &HashSet<PathBuf>, includes: &PathFilter, excludes: &PathFilter) -> bool {
    deletable(&Path::new("/").join(rel), includes, excludes) && rel.ancestors().any(|a| !a.as_os_str().is_empty() && !kept.contains(a))
}

/// The preview of restoring `snap` (its `folder`) into `a.target`: a line
/// a path, marked `+` added, `M` changed, `-` removed, `!` not restorable
/// (in the restore's way), then the counts.
pub async fn directory(g: &Global, repo: &Repository, snap: &Snapshot, folder: Option<&str>, a: &RestoreArgs) -> Result<u8> {
    let Some(target) = a.target.clone() else { bail!("--preview takes --target DIR or --to k8s://") };
    let opts = RestoreOptions {
        target,
        subfolder: folder.map(String::from),
        includes: a.includes.clone(),
        excludes: a.excludes.clone(),
        overwrite: a.overwrite.parse()?,
        delete: a.delete,
        progress: None,
    };
    let Plan { added, changed, removed, unrestorable, damaged } = planned(repo, snap, &opts).await?;
    let target = &opts.target;
    let show = |v: &[PathBuf]| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
    if g.json {
        print_json(&json!({
            "snapshot": snap.id, "target": target.to_string_lossy(), "added": show(&added), "changed": show(&changed), "removed": show(&removed),
            "unrestorable": show(&unrestorable),
            "damaged": damaged.iter().map(|(p, why)| json!({"path": p.to_string_lossy(), "error": why})).collect::<Vec<_>>(),
        }))?;
    } else {
        for (mark, list) in [("+", &added), ("M", &changed), ("-", &removed), ("!", &unrestorable)] {
            for p in list.iter() {
                say!("{mark}    {}", p.display());
            }
        }
        for (p, why) in &damaged {
            say!("!    {}/: its contents cannot be read: {why}", p.display());
        }
        let damaged = if damaged.is_empty() { String::new() } else { format!(", {} damaged", damaged.len()) };
        say!(
            "{} added, {} changed, {} removed, {} not restorable{damaged} in {} (preview: nothing changed)",
            added.len(),
            changed.len(),
            removed.len(),
            unrestorable.len(),
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
        say!("{shown} {replaces} (preview: nothing changed)");
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
