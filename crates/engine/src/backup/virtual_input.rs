//! A streaming input of virtual entries: files that are not on this
//! machine's file system (the objects of a bucket), each with its metadata
//! and a content opened only when it must be read.
//!
//! Entries come as an object store lists keys, in byte order, so every
//! directory is one contiguous run of entries: a stack
//! of open directories suffices, each sealed as soon as the listing leaves
//! it, and memory stays bounded however many entries there are.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};

use super::walker::{Walker, new_dir};
use super::{DirState, FileJob, Parent};
use crate::fsmeta;
use crate::tree::{Node, NodeKind, Tree};
use crate::{Error, Id, Result};

/// The content of a virtual entry, read on a worker thread.
pub trait VirtualFile: Send {
    /// Start reading (a download). A failure is a warning and leaves the
    /// entry out of the snapshot, as an unreadable file does.
    fn open(&mut self) -> std::io::Result<Box<dyn Read + Send>>;
    /// Called once the content was read to its end: complete the node
    /// (a content hash, what a re-check found).
    fn finish(&mut self, node: &mut Node) -> std::io::Result<()>;
    /// Called instead of [`open`](Self::open) when the parent snapshot's
    /// node `old` serves unchanged (what it recorded then holds now).
    fn reused(&mut self, _old: &Node) {}
}

/// One file of a virtual input. Entries must come so that each directory
/// is one contiguous run (as keys listed in byte order are): a directory
/// the input has left is sealed and never opened again.
pub struct VirtualEntry {
    /// Names from the root to the file, each a valid file name (no `/`,
    /// NUL, `.` or `..`), so the snapshot restores into a directory.
    pub path: Vec<OsString>,
    /// Kind `file`, with its size, mtime and metadata; `content` empty.
    pub node: Node,
    /// Whether the content may be taken from a parent snapshot's node of
    /// the same path (called with that node); else it is read.
    pub unchanged: fn(&Node, &Node) -> bool,
    pub content: Box<dyn VirtualFile>,
}

/// Entries, each directory's contiguous, with how to name a file
/// that shares its name with a directory (an object `a` beside `a/b`).
pub struct VirtualInput {
    pub entries: Box<dyn Iterator<Item = Result<VirtualEntry>> + Send>,
    pub rename_clash: fn(&OsStr) -> OsString,
}

/// A directory the listing is inside of.
struct Open {
    name: OsString,
    dir: Arc<Mutex<DirState>>,
    old: Option<Tree>,
}

fn grown_dir(node: Node, parent: Parent, old_subtree: Option<Id>) -> Arc<Mutex<DirState>> {
    let dir = new_dir(node, 0, parent, old_subtree);
    dir.lock().expect("not poisoned").grow = true;
    dir
}

/// A new slot in a directory still being listed.
fn add_slot(dir: &Arc<Mutex<DirState>>) -> usize {
    let mut d = dir.lock().expect("not poisoned");
    d.slots.push(None);
    d.pending += 1;
    d.slots.len() - 1
}

/// Sort a grown directory's children; a file named as a directory beside
/// it is renamed; the directory is dated by its newest child.
pub(super) fn settle(tree: &mut Tree, dir: &mut Node, rename: Option<fn(&OsStr) -> OsString>) {
    tree.sort();
    let clashes: Vec<usize> =
        tree.nodes.windows(2).enumerate().filter(|(_, w)| w[0].name_bytes() == w[1].name_bytes()).map(|(i, _)| i).collect();
    if let Some(rename) = rename.filter(|_| !clashes.is_empty()) {
        for i in clashes {
            let at = if tree.nodes[i].is_file() { i } else { i + 1 };
            let name = rename(&tree.nodes[at].os_name());
            tree.nodes[at].set_name(&name);
        }
        tree.sort();
    }
    dir.mtime = tree.nodes.iter().map(|n| n.mtime).max().unwrap_or(0);
}

impl Walker<'_> {
    pub(super) fn entries(&mut self, input: VirtualInput, old_root: Option<Id>, done: Parent) -> Result<()> {
        let root = grown_dir(Node::default(), done, old_root);
        let mut stack = vec![Open { name: OsString::new(), dir: root, old: self.old_tree(old_root) }];
        for entry in input.entries {
            if self.shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Error::Interrupted);
            }
            let mut entry = entry?;
            let Some(file) = entry.path.pop() else { continue };
            let dirs = &entry.path;
            let common = stack[1..].iter().zip(dirs).take_while(|(o, d)| o.name == **d).count();
            while stack.len() > common + 1 {
                let open = stack.pop().expect("more than the root");
                self.release(&open.dir)?;
            }
            for name in &dirs[common..] {
                let top = stack.last().expect("the root stays");
                let old_sub = top.old.as_ref().and_then(|t| t.find(name)).filter(|n| n.is_dir()).and_then(|n| n.subtree);
                let slot = add_slot(&top.dir);
                let mut node = Node { kind: NodeKind::Dir, mode: 0o755, ..Node::default() };
                node.set_name(name);
                (node.uid, node.gid) = fsmeta::process_ids();
                let dir = grown_dir(node, Parent::Dir(top.dir.clone(), slot), old_sub);
                stack.push(Open { name: name.clone(), dir, old: self.old_tree(old_sub) });
            }
            let top = stack.last().expect("the root stays");
            let old = top.old.as_ref().and_then(|t| t.find(&file)).filter(|o| o.is_file()).cloned();
            entry.path.push(file.clone());
            self.virtual_file(entry, &file, &top.dir, old)?;
        }
        while let Some(open) = stack.pop() {
            self.release(&open.dir)?;
        }
        Ok(())
    }

    fn virtual_file(&mut self, entry: VirtualEntry, name: &OsStr, dir: &Arc<Mutex<DirState>>, old: Option<Node>) -> Result<()> {
        let shared = self.shared;
        let slot = add_slot(dir);
        let VirtualEntry { path, mut node, unchanged, mut content } = entry;
        node.set_name(name);
        (node.uid, node.gid) = fsmeta::process_ids();
        if let Some(o) = old.as_ref().filter(|o| unchanged(o, &node) && o.content.iter().all(|id| shared.index.contains(id))) {
            node.content = o.content.clone();
            node.object = o.object.clone();
            content.reused(o);
            shared.count_unmodified(node.size);
            return shared.fill(&mut self.ctx, dir, slot, Some(node));
        }
        let job = FileJob { path: display(&path).into(), node, existed: old.is_some(), dir: dir.clone(), slot, content: Some(content) };
        self.jobs.send(job).map_err(|_| Error::Interrupted)
    }
}

fn display(path: &[OsString]) -> String {
    String::from_utf8_lossy(&path.iter().map(|n| n.as_bytes()).collect::<Vec<_>>().join(&b'/')).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str, kind: NodeKind, mtime: i64) -> Node {
        let mut n = Node { kind, mtime, ..Node::default() };
        n.set_name(OsStr::new(name));
        n
    }

    #[test]
    fn settling_sorts_renames_clashing_files_and_dates_the_directory() {
        let mut tree = Tree { nodes: vec![named("b", NodeKind::File, 5), named("a", NodeKind::Dir, 9), named("a", NodeKind::File, 7)] };
        let mut dir = Node::default();
        fn mark(n: &OsStr) -> OsString {
            let mut s = n.to_os_string();
            s.push("%");
            s
        }
        settle(&mut tree, &mut dir, Some(mark));
        let names: Vec<_> = tree.nodes.iter().map(|n| (n.name.as_str(), n.kind)).collect();
        assert_eq!(names, [("a", NodeKind::Dir), ("a%", NodeKind::File), ("b", NodeKind::File)]);
        assert_eq!(dir.mtime, 9);
    }
}
