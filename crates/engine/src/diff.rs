//! `diff`: what changed between two snapshot trees, walked side by side.
//!
//! Both trees are read one directory at a time, in name order, so the
//! changes come out in path order and only the directories on the way to
//! the current one are held. A subtree with the same id on both sides holds
//! the same entries: it is skipped unread, so a diff costs what changed,
//! not the size of the snapshots.

use std::iter::Peekable;
use std::path::{Path, PathBuf};

use crate::tree::Node;
use crate::walk::child;
use crate::{Id, Repository, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    /// A file, link or other non-directory whose content or metadata
    /// differs, or that became a directory. A directory itself is never
    /// modified: what changed is below it.
    Modified,
}

impl Change {
    /// As restic prints it.
    pub fn modifier(self) -> &'static str {
        match self {
            Change::Added => "+",
            Change::Removed => "-",
            Change::Modified => "M",
        }
    }
}

type Nodes = Peekable<std::vec::IntoIter<Node>>;

/// One directory being compared: its path and the entries still to come on
/// each side (none on a side that lacks it).
struct Frame {
    base: PathBuf,
    left: Nodes,
    right: Nodes,
}

/// Call `visit` with every change from tree `left` to tree `right`, paths
/// below `/`, in path order.
pub async fn diff(repo: &Repository, left: Id, right: Id, visit: &mut (dyn FnMut(Change, &Path) -> Result<()> + Send)) -> Result<()> {
    let mut open = Vec::new();
    if left != right {
        open.push(frame(repo, PathBuf::from("/"), Some(left), Some(right)).await?);
    }
    while let Some(top) = open.last_mut() {
        let (l, r) = match (top.left.peek(), top.right.peek()) {
            (None, None) => {
                open.pop();
                continue;
            }
            (Some(l), Some(r)) => match l.name_bytes().cmp(&r.name_bytes()) {
                std::cmp::Ordering::Less => (top.left.next(), None),
                std::cmp::Ordering::Greater => (None, top.right.next()),
                std::cmp::Ordering::Equal => (top.left.next(), top.right.next()),
            },
            (Some(_), None) => (top.left.next(), None),
            (None, Some(_)) => (None, top.right.next()),
        };
        let node = l.as_ref().or(r.as_ref()).expect("one side has the entry");
        let path = child(&top.base, node, &format!("at {}", top.base.display()))?;
        match (&l, &r) {
            (Some(_), None) => visit(Change::Removed, &path)?,
            (None, Some(_)) => visit(Change::Added, &path)?,
            (Some(l), Some(r)) if !l.is_dir() && !same_content(l, r) => visit(Change::Modified, &path)?,
            _ => {}
        }
        let (below_l, below_r) = (l.and_then(|n| n.subtree), r.and_then(|n| n.subtree));
        if below_l != below_r {
            open.push(frame(repo, path, below_l, below_r).await?);
        }
    }
    Ok(())
}

async fn frame(repo: &Repository, base: PathBuf, left: Option<Id>, right: Option<Id>) -> Result<Frame> {
    Ok(Frame { base, left: nodes(repo, left).await?, right: nodes(repo, right).await? })
}

async fn nodes(repo: &Repository, tree: Option<Id>) -> Result<Nodes> {
    let nodes = match tree {
        Some(id) => repo.load_tree(&id).await?.nodes,
        None => Vec::new(),
    };
    Ok(nodes.into_iter().peekable())
}

/// The same entry as far as a restore can tell: kind, content, link target
/// and the metadata `diff` reports.
fn same_content(a: &Node, b: &Node) -> bool {
    a.kind == b.kind
        && a.content == b.content
        && a.subtree.is_some() == b.subtree.is_some()
        && a.link_target == b.link_target
        && a.mode == b.mode
        && a.mtime == b.mtime
        && a.uid == b.uid
        && a.gid == b.gid
}

#[cfg(test)]
mod tests;
