//! `find`: which snapshots hold paths matching patterns, and where.
//!
//! Snapshots of one source share most of their trees. A directory (a tree
//! at a path) found to hold no match in one snapshot holds none in any
//! other: it is remembered and not read again, so searching a hundred
//! snapshots costs about one walk plus what changed between them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::tree::Node;
use crate::walk::{PathFilter, child};
use crate::{Error, Id, Repository, Result};

pub struct Finder<'a> {
    repo: &'a Repository,
    patterns: PathFilter,
    /// Directories, by tree and path, that hold no match.
    barren: HashSet<(Id, PathBuf)>,
    /// Trees read so far, over every search.
    pub trees_read: u64,
}

/// A directory being searched: its tree, its path, its entries still to
/// come, and whether anything at or below them matched so far.
struct Open {
    tree: Id,
    base: PathBuf,
    nodes: std::vec::IntoIter<Node>,
    matched: bool,
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
    /// path order; how many matched.
    pub async fn search(&mut self, root: Id, visit: &mut (dyn FnMut(&Path, &Node) -> Result<()> + Send)) -> Result<u64> {
        let mut open = Vec::new();
        if !self.barren.contains(&(root, PathBuf::from("/"))) {
            open.push(self.open(root, PathBuf::from("/")).await?);
        }
        let mut found = 0;
        while let Some(top) = open.last_mut() {
            let Some(node) = top.nodes.next() else {
                let done = open.pop().expect("the top is open");
                match open.last_mut() {
                    Some(parent) if done.matched => parent.matched = true,
                    _ if !done.matched => _ = self.barren.insert((done.tree, done.base)),
                    _ => {}
                }
                continue;
            };
            let path = child(&top.base, &node, &top.tree.to_hex())?;
            if self.patterns.matches(&path) {
                visit(&path, &node)?;
                top.matched = true;
                found += 1;
            }
            if let Some(sub) = node.subtree {
                let key = (sub, path);
                if !self.barren.contains(&key) {
                    open.push(self.open(key.0, key.1).await?);
                }
            }
        }
        Ok(found)
    }

    async fn open(&mut self, tree: Id, base: PathBuf) -> Result<Open> {
        self.trees_read += 1;
        let nodes = self.repo.load_tree(&tree).await?.nodes.into_iter();
        Ok(Open { tree, base, nodes, matched: false })
    }
}

#[cfg(test)]
mod tests;
