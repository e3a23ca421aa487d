//! The walker: lists directories, decides what must be read, and hands file
//! jobs to the workers. It never waits for a file to finish.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use super::{DirState, FileJob, Parent, Shared, ThreadCtx};
use crate::fsmeta::{self, NameCache};
use crate::tree::{Node, NodeKind, Tree};
use crate::{Error, Id, Result};

/// The snapshot's root: the given paths with their ancestors, so that
/// `/home/a/docs` is stored as `home` → `a` → `docs`, as restic does.
pub(super) enum Entry {
    Walk(PathBuf),
    Ancestor(PathBuf, BTreeMap<OsString, Entry>),
}

pub(super) fn layout(paths: &[PathBuf]) -> Result<Entry> {
    let mut root = Entry::Ancestor(PathBuf::from("/"), BTreeMap::new());
    for p in paths {
        if !p.is_absolute() {
            return Err(Error::Invalid(format!("backup path {} must be absolute", p.display())));
        }
        let names: Vec<&OsStr> = p.components().filter_map(|c| if let Component::Normal(n) = c { Some(n) } else { None }).collect();
        let mut at = &mut root;
        let mut real = PathBuf::from("/");
        for (i, name) in names.iter().enumerate() {
            real.push(name);
            let kids = match at {
                Entry::Ancestor(_, kids) => kids,
                // Below a path given too: its walk covers this one, if it is a directory.
                Entry::Walk(outer) => return stored_as_a_directory(outer, p).map(|()| root),
            };
            let last = i + 1 == names.len();
            let next = kids.entry(name.to_os_string()).or_insert_with(|| Entry::Ancestor(real.clone(), BTreeMap::new()));
            if last {
                if let Entry::Ancestor(_, below) = next
                    && let Some(inner) = below.values().next()
                {
                    stored_as_a_directory(&real, inner.path())?;
                }
                *next = Entry::Walk(real.clone());
            }
            at = next;
        }
        if names.is_empty() {
            root = Entry::Walk(PathBuf::from("/"));
        }
    }
    Ok(root)
}

impl Entry {
    /// A path given, or the first one given below this ancestor.
    fn path(&self) -> &Path {
        match self {
            Entry::Walk(p) => p,
            Entry::Ancestor(p, kids) => kids.values().next().map_or(p.as_path(), Entry::path),
        }
    }
}

/// `inner`, a path given below `outer`, another, is saved by `outer`'s
/// walk only if every directory on the way, `outer` itself too, is one: the
/// walk stores a link as a link, and what is below it would silently be
/// missing.
fn stored_as_a_directory(outer: &Path, inner: &Path) -> Result<()> {
    let below: Vec<Component> = inner.strip_prefix(outer).map(|b| b.components().collect()).unwrap_or_default();
    let mut at = outer.to_path_buf();
    for step in std::iter::once(None).chain(below[..below.len().saturating_sub(1)].iter().map(Some)) {
        if let Some(c) = step {
            at.push(c);
        }
        if std::fs::symlink_metadata(&at).is_ok_and(|md| md.file_type().is_symlink()) {
            return Err(Error::Invalid(format!(
                "backup path {} is below {}, a symbolic link the backup stores as a link, so nothing below it would be saved; give the path it points to",
                inner.display(),
                at.display()
            )));
        }
    }
    Ok(())
}

/// The paths with each `..` resolved as the kernel resolves it, through the
/// links before it (`/srv/app/../data` is in the directory `/srv/app`'s
/// link points to, not in `/srv`); a path without one is kept as given.
pub fn resolve_parents(paths: &mut [PathBuf]) -> Result<()> {
    for p in paths.iter_mut() {
        let parts: Vec<Component> = p.components().collect();
        let Some(last_up) = parts.iter().rposition(|c| *c == Component::ParentDir) else { continue };
        let through: PathBuf = parts[..=last_up].iter().collect();
        let resolved = std::fs::canonicalize(&through).map_err(|e| Error::io(&through, e))?;
        *p = parts[last_up + 1..].iter().fold(resolved, |acc, c| acc.join(c));
    }
    Ok(())
}

pub(super) struct Walker<'a> {
    pub shared: &'a Shared,
    pub ctx: ThreadCtx,
    pub jobs: Sender<FileJob>,
    pub names: NameCache,
}

fn unchanged(old: &Node, new: &Node) -> bool {
    old.kind == NodeKind::File && old.size == new.size && old.mtime == new.mtime && old.ctime == new.ctime && old.inode == new.inode
}

pub(super) fn new_dir(node: Node, children: usize, parent: Parent, old_subtree: Option<Id>) -> Arc<Mutex<DirState>> {
    Arc::new(Mutex::new(DirState {
        node,
        slots: vec![None; children],
        pending: children + 1,
        parent: Some(parent),
        old_subtree,
        grow: false,
    }))
}

impl Walker<'_> {
    pub(super) fn old_tree(&self, id: Option<Id>) -> Option<Tree> {
        let repo = self.shared.repo.clone();
        // A parent tree that cannot be read only costs re-reading files.
        self.shared.rt.block_on(async move { repo.load_tree(&id?).await.ok() })
    }

    /// The walker's own "listing finished" count on a directory.
    pub(super) fn release(&mut self, dir: &Arc<Mutex<DirState>>) -> Result<()> {
        self.shared.fill(&mut self.ctx, dir, usize::MAX, None)
    }

    pub(super) fn walk_root(&mut self, root: &Entry, old_root: Option<Id>, done: Parent) -> Result<()> {
        match root {
            Entry::Walk(path) => {
                let md = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
                let node = fsmeta::node_from(OsStr::new(""), &md, &mut self.names);
                self.walk_dir(path, node, done, old_root, md.dev())
            }
            Entry::Ancestor(_, kids) => {
                let dir = new_dir(Node::default(), kids.len(), done, old_root);
                let old = self.old_tree(old_root);
                self.walk_ancestor(kids, &dir, old.as_ref())?;
                self.release(&dir)
            }
        }
    }

    fn walk_ancestor(&mut self, kids: &BTreeMap<OsString, Entry>, dir: &Arc<Mutex<DirState>>, old: Option<&Tree>) -> Result<()> {
        for (slot, (name, entry)) in kids.iter().enumerate() {
            if self.shared.stop.load(Relaxed) {
                return Err(Error::Interrupted);
            }
            let old_node = old.and_then(|t| t.find(name));
            match entry {
                Entry::Walk(path) => self.visit(path, name, dir, slot, old_node, None, None)?,
                Entry::Ancestor(path, grandkids) => {
                    // A link on the way to a path given (`/home` → `/srv/home`
                    // for `/home/alice`) is stored as the directory it leads
                    // to: a link holds no entries, and the snapshot would
                    // not restore whole.
                    let md = match std::fs::metadata(path).and_then(|md| match md.is_dir() {
                        true => Ok(md),
                        false => Err(std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory")),
                    }) {
                        Ok(md) => md,
                        Err(e) => {
                            self.shared.warn(path, e);
                            self.shared.fill(&mut self.ctx, dir, slot, None)?;
                            continue;
                        }
                    };
                    let node = fsmeta::node_from(name, &md, &mut self.names);
                    let old_sub = old_node.and_then(|n| n.subtree);
                    let child = new_dir(node, grandkids.len(), Parent::Dir(dir.clone(), slot), old_sub);
                    let old_child = self.old_tree(old_sub);
                    self.walk_ancestor(grandkids, &child, old_child.as_ref())?;
                    self.release(&child)?;
                }
            }
        }
        Ok(())
    }

    fn walk_dir(&mut self, path: &Path, node: Node, parent: Parent, old_subtree: Option<Id>, dev: u64) -> Result<()> {
        let old = self.old_tree(old_subtree);
        let entries = match read_entries(path) {
            Ok(n) => n,
            Err(e) => {
                self.shared.warn(path, e);
                Vec::new()
            }
        };
        let dir = new_dir(node, entries.len(), parent, old_subtree);
        for (slot, (name, md)) in entries.into_iter().enumerate() {
            if self.shared.stop.load(Relaxed) {
                return Err(Error::Interrupted);
            }
            let old_node = old.as_ref().and_then(|t| t.find(&name));
            self.visit(&path.join(&name), &name, &dir, slot, old_node, Some(dev), Some(md))?;
        }
        self.release(&dir)
    }

    /// `listed` is the entry's metadata as its directory listing gave it:
    /// an `fstatat` relative to the open directory, cheaper than a path walk.
    #[allow(clippy::too_many_arguments)]
    fn visit(
        &mut self,
        path: &Path,
        name: &OsStr,
        dir: &Arc<Mutex<DirState>>,
        slot: usize,
        old: Option<&Node>,
        dev: Option<u64>,
        listed: Option<std::io::Result<std::fs::Metadata>>,
    ) -> Result<()> {
        let shared = self.shared;
        if shared.excludes.matches(path) {
            return shared.fill(&mut self.ctx, dir, slot, None);
        }
        let md = match listed.unwrap_or_else(|| std::fs::symlink_metadata(path)) {
            Ok(md) => md,
            Err(e) => {
                shared.warn(path, e);
                return shared.fill(&mut self.ctx, dir, slot, None);
            }
        };
        let mut node = fsmeta::node_from(name, &md, &mut self.names);
        node.xattrs = fsmeta::read_xattrs(path);
        match node.kind {
            NodeKind::Dir => {
                let root_dev = dev.unwrap_or(md.dev());
                let parent = Parent::Dir(dir.clone(), slot);
                if shared.one_file_system && md.dev() != root_dev {
                    // The mount point is kept, empty, so a restore recreates it.
                    let empty = new_dir(node, 0, parent, None);
                    return self.release(&empty);
                }
                self.walk_dir(path, node, parent, old.and_then(|o| o.subtree), root_dev)
            }
            NodeKind::File => {
                if let Some(o) = old.filter(|o| unchanged(o, &node) && o.content.iter().all(|id| shared.index.contains(id))) {
                    node.content = o.content.clone();
                    shared.count_unmodified(node.size);
                    return shared.fill(&mut self.ctx, dir, slot, Some(node));
                }
                let job = FileJob { path: path.to_path_buf(), node, existed: old.is_some(), dir: dir.clone(), slot, content: None };
                self.jobs.send(job).map_err(|_| Error::Interrupted)
            }
            NodeKind::Symlink => {
                match std::fs::read_link(path) {
                    Ok(t) => node.set_link_target(t.as_os_str()),
                    Err(e) => {
                        shared.warn(path, e);
                        return shared.fill(&mut self.ctx, dir, slot, None);
                    }
                }
                shared.fill(&mut self.ctx, dir, slot, Some(node))
            }
            _ => shared.fill(&mut self.ctx, dir, slot, Some(node)),
        }
    }

    /// Back up files a source generated: directories 0755, files 0600,
    /// owned by this process, timed now.
    pub(super) fn generated(&mut self, root: &Generated, done: Parent) -> Result<()> {
        let Generated::Dir(kids) = root else { return Err(Error::Invalid("generated files need a directory root".into())) };
        let dir = new_dir(Node::default(), kids.len(), done, None);
        self.generated_dir(kids, &dir)?;
        self.release(&dir)
    }

    fn generated_dir(&mut self, kids: &BTreeMap<OsString, Generated>, dir: &Arc<Mutex<DirState>>) -> Result<()> {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        for (slot, (name, kid)) in kids.iter().enumerate() {
            let mut node = Node { mtime: now, atime: now, ctime: now, ..Node::default() };
            node.set_name(name);
            (node.uid, node.gid) = fsmeta::process_ids();
            match kid {
                Generated::File(data) => {
                    (node.kind, node.mode) = (NodeKind::File, 0o600);
                    self.shared.chunk_into(&mut self.ctx, *data, Some(data.len() as u64), &mut node)?;
                    self.shared.counters.files_new.fetch_add(1, Relaxed);
                    self.shared.fill(&mut self.ctx, dir, slot, Some(node))?;
                }
                Generated::Dir(grandkids) => {
                    (node.kind, node.mode) = (NodeKind::Dir, 0o755);
                    let child = new_dir(node, grandkids.len(), Parent::Dir(dir.clone(), slot), None);
                    self.generated_dir(grandkids, &child)?;
                    self.release(&child)?;
                }
            }
        }
        Ok(())
    }

    /// Back up one stream as the only file of the snapshot.
    pub(super) fn stream(&mut self, name: &str, reader: impl std::io::Read, done: Parent) -> Result<()> {
        let dir = new_dir(Node::default(), 1, done, None);
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let mut node = Node { kind: NodeKind::File, mode: 0o600, mtime: now, atime: now, ctime: now, ..Node::default() };
        node.set_name(OsStr::new(name));
        (node.uid, node.gid) = fsmeta::process_ids();
        // A stream that fails is fatal (no partial stream becomes a
        // snapshot), and its error already names its producer.
        self.shared.chunk_into(&mut self.ctx, reader, None, &mut node).map_err(|e| match e {
            Error::Io { source, .. } => Error::Stream(source),
            e => e,
        })?;
        self.shared.counters.files_new.fetch_add(1, Relaxed);
        self.shared.fill(&mut self.ctx, &dir, 0, Some(node))?;
        self.release(&dir)
    }
}

/// Files a source generated, as a directory tree.
pub(super) enum Generated<'a> {
    Dir(BTreeMap<OsString, Generated<'a>>),
    File(&'a [u8]),
}

pub(super) fn generated_tree(files: &BTreeMap<String, Vec<u8>>) -> Generated<'_> {
    let mut root = BTreeMap::new();
    for (path, data) in files {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut at = &mut root;
        for (i, part) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                at.insert(OsString::from(part), Generated::File(data));
                break;
            }
            let next = at.entry(OsString::from(part)).or_insert_with(|| Generated::Dir(BTreeMap::new()));
            let Generated::Dir(kids) = next else { break };
            at = kids;
        }
    }
    Generated::Dir(root)
}

type Listed = (OsString, std::io::Result<std::fs::Metadata>);

/// Entries with their metadata, sorted by name bytes (the order trees use).
fn read_entries(path: &Path) -> std::io::Result<Vec<Listed>> {
    let mut entries = std::fs::read_dir(path)?.map(|e| e.map(|e| (e.file_name(), e.metadata()))).collect::<std::io::Result<Vec<_>>>()?;
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(entries)
}
