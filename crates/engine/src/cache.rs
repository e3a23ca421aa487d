//! A local cache of immutable repository objects (index files, snapshots and
//! tree packs), so repeated commands do not download them again.
//!
//! Objects are cached exactly as stored, still encrypted: the cache holds
//! nothing an attacker with the storage does not already have. An object
//! never changes once written, so a cached copy is valid until the object is
//! deleted from the repository: the process that deletes it drops its copy
//! (`remove`), a listing of index files or snapshots drops any copy another
//! process deleted (`retain`), and loading the index drops cached packs it
//! no longer lists (`retain` again), as `data/` is never listed whole.

use std::path::{Path, PathBuf};

use crate::Id;

#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// `$TRESOR_CACHE_DIR`, else `$XDG_CACHE_HOME/tresor`, else `~/.cache/tresor`,
    /// with one subdirectory per repository id.
    pub fn default_root() -> Option<PathBuf> {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        env("TRESOR_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("tresor")))
            .or_else(|| env("HOME").map(|p| p.join(".cache").join("tresor")))
    }

    pub fn new(root: &Path, repo_id: &Id) -> Option<Cache> {
        let dir = root.join(repo_id.to_hex());
        std::fs::create_dir_all(&dir).ok()?;
        Some(Cache { dir })
    }

    pub fn get(&self, path: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join(path)).ok()
    }

    /// Best effort: a cache that cannot be written only costs a download.
    pub fn put(&self, path: &str, bytes: &[u8]) {
        let target = self.dir.join(path);
        let Some(parent) = target.parent() else { return };
        if std::fs::create_dir_all(parent).is_err() {
            return;
        }
        let tmp = parent.join(format!(".tmp-{}", Id::random().short()));
        if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, &target).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// Drop the cached copy of an object deleted from the repository.
    pub fn remove(&self, path: &str) {
        let _ = std::fs::remove_file(self.dir.join(path));
    }

    /// Drop cached files of `dir` whose names `keep` refuses.
    pub fn retain(&self, dir: &str, keep: impl Fn(&str) -> bool) {
        let Ok(entries) = walk(&self.dir.join(dir)) else { return };
        for path in entries {
            if !keep(&path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            out.extend(walk(&e.path())?);
        } else {
            out.push(e.path());
        }
    }
    Ok(out)
}
