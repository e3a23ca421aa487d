//! `find`: which snapshots hold paths matching patterns, and where.
//!
//! Snapshots of one source share most of their trees. A directory (a tree
//! at a path) found to hold no match in one snapshot holds none in any
//! other: it is remembered and not read again, so searching a hundred
//! snapshots costs about one walk plus what changed between them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::tree::Node;
use crate::walk::{PathFilter, Unread, child, entries};
use crate::{Error, Id, Repository, Result};

pub struct Finder<'a> {
    repo: &'a Repository,
    patterns: PathFilter,
    /// Directories, by tree and path, that hold no match.
    barren: HashSet<(Id, PathBuf)>,
    /// Trees read so far, over every search.
    pub trees_read: u64,
}

/// What one search found: how many paths matched, and the damaged
/// directories it could not look into.
#[derive(Debug, Default)]
pub struct Found {
    pub matches: u64,
    pub unread: Vec<Unread>,
}

/// A directory being searched: its tree, its path, its entries still to
/// come, and whether it must be searched again in another snapshot
/// (something at or below it matched, or could not be read).
struct Open {
    tree: Id,
    base: PathBuf,
    nodes: std::vec::IntoIter<Node>,
    again: bool,
}

impl<'a> Finder<'a> {
    /// Patterns as `restore --include` takes them: one with a `/` matches
    /// the whole path, one without matches a name.
    pub fn new(repo: &'a Repository, patterns: &[String]) -> Result<Finder<'a>> {
        if patterns.is_empty() {
            return Err(Error::Invalid("find needs a pattern".into()));
        }
        Ok(Finder { repo, patterns: PathFilter::new(patterns)?, barren: HashSet::new(), trees_read: 0 })
    }

    /// Call `visit` with every matching node below the tree `root`, in
    /// path order. A damaged directory, the root too, is passed over and
    /// named in what is returned.
    pub async fn search(&mut self, root: Id, visit: &mut (dyn FnMut(&Path, &Node) -> Result<()> + Send)) -> Result<Found> {
        let mut found = Found::default();
        let mut open = Vec::new();
        self.open(&mut open, &mut found, root, PathBuf::from("/")).await?;
        while let Some(top) = open.last_mut() {
            let Some(node) = top.nodes.next() else {
                let done = open.pop().expect("the top is open");
                match open.last_mut() {
                    Some(parent) if done.again => parent.again = true,
                    _ if !done.again => _ = self.barren.insert((done.tree, done.base)),
                    _ => {}
                }
                continue;
            };
            let path = child(&top.base, &node, &top.tree.to_hex())?;
            if self.patterns.matches(&path) {
                visit(&path, &node)?;
                top.again = true;
                found.matches += 1;
            }
            if let Some(sub) = node.subtree {
                self.open(&mut open, &mut found, sub, path).await?;
            }
        }
        Ok(found)
    }

    /// Search `tree` at `base` next, unless it is known to hold no match;
    /// a damaged one is noted, and its directory searched again next time.
    async fn open(&mut self, open: &mut Vec<Open>, found: &mut Found, tree: Id, base: PathBuf) -> Result<()> {
        let key = (tree, base);
        if self.barren.contains(&key) {
            return Ok(());
        }
        let (tree, base) = key;
        self.trees_read += 1;
        match entries(self.repo, tree, &base).await? {
            Ok(nodes) => open.push(Open { tree, base, nodes: nodes.into_iter(), again: false }),
            Err(lost) => {
                open.last_mut().into_iter().for_each(|parent| parent.again = true);
                found.unread.push(lost);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
