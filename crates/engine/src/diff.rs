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
use crate::walk::{Unread, child, entries};
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
/// below `/`, in path order. A directory damaged on either side, the root
/// too, is not compared: it is returned, and what changed below it is not
/// reported.
pub async fn diff(
    repo: &Repository,
    left: Id,
    right: Id,
    visit: &mut (dyn FnMut(Change, &Path) -> Result<()> + Send),
) -> Result<Vec<Unread>> {
    let (mut open, mut unread) = (Vec::new(), Vec::new());
    if left != right {
        frame(repo, &mut open, &mut unread, PathBuf::from("/"), Some(left), Some(right)).await?;
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
            frame(repo, &mut open, &mut unread, path, below_l, below_r).await?;
        }
    }
    Ok(unread)
}

/// Compare the directory at `base` next; one damaged on a side is noted.
async fn frame(
    repo: &Repository,
    open: &mut Vec<Frame>,
    unread: &mut Vec<Unread>,
    base: PathBuf,
    left: Option<Id>,
    right: Option<Id>,
) -> Result<()> {
    let sides = match side(repo, left, &base).await? {
        Ok(left) => side(repo, right, &base).await?.map(|right| (left, right)),
        Err(lost) => Err(lost),
    };
    match sides {
        Ok((left, right)) => open.push(Frame { base, left, right }),
        Err(lost) => unread.push(lost),
    }
    Ok(())
}

/// The entries of one side's `tree`, none when the side lacks the directory.
async fn side(repo: &Repository, tree: Option<Id>, base: &Path) -> Result<std::result::Result<Nodes, Unread>> {
    Ok(match tree {
        Some(id) => entries(repo, id, base).await?.map(|nodes| nodes.into_iter().peekable()),
        None => Ok(Vec::new().into_iter().peekable()),
    })
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
