//! Walking snapshot trees, and the glob filters commands share.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::tree::Node;
use crate::{Error, Id, Repository, Result};

/// Glob patterns over paths. A pattern with a `/` matches the whole path,
/// one without matches any file name, as in restic and .gitignore.
pub struct PathFilter {
    names: GlobSet,
    paths: GlobSet,
    empty: bool,
}

impl PathFilter {
    pub fn new(patterns: &[String]) -> Result<PathFilter> {
        let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        for p in patterns {
            let glob = Glob::new(p).map_err(|e| Error::Invalid(format!("bad pattern {p:?}: {e}")))?;
            if p.contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| Error::Invalid(format!("bad patterns: {e}")));
        Ok(PathFilter { names: build(names)?, paths: build(paths)?, empty: patterns.is_empty() })
    }

    pub fn is_empty(&self) -> bool {
        self.empty
    }

    pub fn matches(&self, path: &Path) -> bool {
        !self.empty && (path.file_name().is_some_and(|n| self.names.is_match(n)) || self.paths.is_match(path))
    }
}

/// A name that stays inside its directory when joined to it: tresor never
/// stores another, so a tree holding one was not made by it.
pub fn is_safe_name(name: &[u8]) -> bool {
    !matches!(name, b"" | b"." | b"..") && !name.contains(&b'/') && !name.contains(&0)
}

/// Where `node` of the tree `tree` (named for the error) at `base` is: a
/// name that would leave `base` makes the tree damaged.
pub(crate) fn child(base: &Path, node: &Node, tree: &str) -> Result<PathBuf> {
    let name = node.os_name();
    if !is_safe_name(name.as_bytes()) {
        return Err(Error::Corrupt { kind: "tree", id: tree.to_string(), reason: format!("unsafe entry name {name:?}") });
    }
    Ok(base.join(name))
}

/// A directory whose tree is damaged or gone: a reader went on without
/// what is below it.
#[derive(Debug)]
pub struct Unread {
    pub path: PathBuf,
    pub tree: Id,
    pub error: Error,
}

/// The entries of `tree`, the directory at `path`; when the tree is damaged
/// or gone (`objects::is_damage`), the directory a reader goes on without.
pub(crate) async fn entries(repo: &Repository, tree: Id, path: &Path) -> Result<std::result::Result<Vec<Node>, Unread>> {
    match repo.load_tree(&tree).await {
        Ok(t) => Ok(Ok(t.nodes)),
        Err(error) if crate::objects::is_damage(&error) => Ok(Err(Unread { path: path.to_path_buf(), tree, error })),
        Err(e) => Err(e),
    }
}

/// Visit every node below `tree`, depth first in name order. The visitor
/// returns whether to descend into a directory. A damaged directory below
/// `tree` is passed over and returned; a damaged `tree` ends the walk.
pub async fn walk(
    repo: &Repository,
    tree: Id,
    base: &Path,
    visit: &mut (dyn FnMut(&Path, &Node) -> Result<bool> + Send),
) -> Result<Vec<Unread>> {
    let mut walker = Walker::new(repo);
    walker.enter(tree, base).await?;
    let mut unread = Vec::new();
    while let Some((path, node)) = walker.next_node()? {
        if visit(&path, &node)?
            && let Some(sub) = node.subtree
        {
            unread.extend(walker.descend(sub, &path).await?);
        }
    }
    Ok(unread)
}

/// The nodes below a tree one at a time, depth first in name order, for
/// callers that await between nodes (restore writes as it walks). Only the
/// trees on the way to the current node are held, not the whole snapshot.
pub struct Walker<'a> {
    repo: &'a Repository,
    /// Each directory being visited: its tree, its path, its nodes still to come.
    open: Vec<(Id, PathBuf, std::vec::IntoIter<Node>)>,
}

impl<'a> Walker<'a> {
    pub fn new(repo: &'a Repository) -> Walker<'a> {
        Walker { repo, open: Vec::new() }
    }

    /// Visit the nodes of `tree`, named below `base`, before the rest.
    pub async fn enter(&mut self, tree: Id, base: &Path) -> Result<()> {
        match self.descend(tree, base).await? {
            Some(lost) => Err(lost.error),
            None => Ok(()),
        }
    }

    /// [`Walker::enter`], but a damaged or missing `tree` is passed over and
    /// returned rather than ending the walk.
    pub async fn descend(&mut self, tree: Id, base: &Path) -> Result<Option<Unread>> {
        Ok(match entries(self.repo, tree, base).await? {
            Ok(nodes) => {
                self.open.push((tree, base.to_path_buf(), nodes.into_iter()));
                None
            }
            Err(lost) => Some(lost),
        })
    }

    /// The next node with its path; `None` when every entered tree is done.
    pub fn next_node(&mut self) -> Result<Option<(PathBuf, Node)>> {
        while let Some((tree, base, nodes)) = self.open.last_mut() {
            let Some(node) = nodes.next() else {
                self.open.pop();
                continue;
            };
            return Ok(Some((child(base, &node, &tree.to_hex())?, node)));
        }
        Ok(None)
    }
}

/// The node at `path` (`/` or empty for the root) of a snapshot tree; a
/// path need not be UTF-8, as names on Linux need not.
pub async fn find(repo: &Repository, root: Id, path: &(impl AsRef<std::ffi::OsStr> + ?Sized)) -> Result<Option<Node>> {
    use std::os::unix::ffi::OsStrExt;
    let path = path.as_ref();
    let missing = || Error::NoSuchPath(path.to_string_lossy().into_owned());
    let mut tree = root;
    let parts: Vec<&[u8]> = path.as_bytes().split(|b| *b == b'/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Ok(None);
    }
    for (i, part) in parts.iter().enumerate() {
        let t = repo.load_tree(&tree).await?;
        let node = t.nodes.into_iter().find(|n| n.os_name().as_bytes() == *part).ok_or_else(missing)?;
        if i + 1 == parts.len() {
            return Ok(Some(node));
        }
        tree = node.subtree.ok_or_else(missing)?;
    }
    unreachable!("loop returns on the last part")
}

/// The tree of the folder at `path` (restic's `SNAPSHOT:PATH`); the root for `/`.
pub async fn folder(repo: &Repository, root: Id, path: &str) -> Result<Id> {
    match find(repo, root, path).await? {
        None => Ok(root),
        Some(n) => n.subtree.filter(|_| n.is_dir()).ok_or_else(|| Error::Invalid(format!("{path} is not a folder of the snapshot"))),
    }
}

/// Call `visit` with every node below the path `base` of a snapshot (the
/// node itself when it is not a directory) and its path, in order,
/// holding only the trees on the way to the current node; the damaged
/// directories passed over ([`walk`]).
pub async fn each(
    repo: &Repository,
    root: Id,
    base: &str,
    visit: &mut (dyn FnMut(&Path, &Node) -> Result<()> + Send),
) -> Result<Vec<Unread>> {
    let start = match find(repo, root, base).await? {
        None => root,
        Some(n) if n.is_dir() => n.subtree.ok_or_else(|| Error::NoSuchPath(base.to_string()))?,
        Some(n) => return visit(&PathBuf::from("/").join(base.trim_start_matches('/')), &n).map(|()| Vec::new()),
    };
    let prefix = PathBuf::from("/").join(base.trim_start_matches('/'));
    walk(repo, start, &prefix, &mut |p, n| visit(p, n).map(|()| true)).await
}

/// Every node of a snapshot with its path, in order ([`each`], held); a
/// damaged directory is an error, as the list would be incomplete.
pub async fn list(repo: &Repository, root: Id, base: &str) -> Result<Vec<(PathBuf, Node)>> {
    let mut out = Vec::new();
    let unread = each(repo, root, base, &mut |p, n| {
        out.push((p.to_path_buf(), n.clone()));
        Ok(())
    })
    .await?;
    match unread.into_iter().next() {
        Some(lost) => Err(lost.error),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::path::Path;

    use super::child;
    use crate::tree::Node;

    /// A name that would leave its directory, or that no directory can
    /// hold, makes the tree damaged, whichever reader meets it.
    #[test]
    fn a_name_that_leaves_its_directory_is_damage() {
        let named = |name: &[u8]| {
            let mut n = Node::default();
            n.set_name(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name));
            n
        };
        assert_eq!(child(Path::new("/srv"), &named(b"app.conf"), "t").unwrap(), Path::new("/srv/app.conf"));
        for (name, shown) in [(&b".."[..], "\"..\""), (b"a/b", "\"a/b\""), (b"", "\"\""), (b"nul\0", "\"nul\\0\"")] {
            let e = child(Path::new("/srv"), &named(name), "1a2b").unwrap_err();
            assert_eq!(e.to_string(), format!("tree 1a2b is damaged: unsafe entry name {shown}"));
        }
    }
}
