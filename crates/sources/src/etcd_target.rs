//! `--to etcd-data:DIR`: an etcd snapshot turned into a member's data
//! directory by `etcdutl snapshot restore` (or, where only etcd 3.4 is
//! installed, `etcdctl snapshot restore`), which checks the snapshot's
//! SHA-256 trailer again. The snapshot passes through a file beside DIR
//! (mode 0600: it holds every Secret of a Kubernetes cluster), removed
//! afterwards. With `--flush`, a DIR that holds data is moved aside only
//! once the snapshot is whole, and moved back when the tool fails.
//!
//! Member settings come as query parameters and are handed to the tool:
//! `etcd-data:/var/lib/etcd?name=m1&initial-cluster=m1=http://10.0.0.1:2380&initial-advertise-peer-urls=http://10.0.0.1:2380`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result, Target};

const SETTINGS: [&str; 4] = ["name", "initial-cluster", "initial-cluster-token", "initial-advertise-peer-urls"];

pub struct EtcdDataTarget {
    url: String,
    dir: PathBuf,
    settings: Vec<(String, String)>,
    file: Option<(PathBuf, std::fs::File)>,
}

impl EtcdDataTarget {
    pub fn parse(url: &str) -> Result<EtcdDataTarget> {
        let rest = url.strip_prefix("etcd-data:").unwrap_or_default();
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(Error::failed(url, "expected etcd-data:DIRECTORY"));
        }
        let mut settings = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !SETTINGS.contains(&k) {
                return Err(Error::failed(url, format!("unknown setting {k:?} (known: {})", SETTINGS.join(", "))));
            }
            settings.push((k.to_string(), v.to_string()));
        }
        Ok(EtcdDataTarget { url: url.to_string(), dir: PathBuf::from(path), settings, file: None })
    }

    fn fail(&self, why: impl ToString) -> Error {
        Error::failed(&self.url, why)
    }

    fn beside(&self, suffix: &str) -> PathBuf {
        let name = self.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "etcd".into());
        self.dir.with_file_name(format!("{name}{suffix}"))
    }

    fn restore_command(&self, snapshot: &Path) -> Command {
        let etcdutl = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("etcdutl").is_file()));
        let mut cmd = Command::new(if etcdutl { "etcdutl" } else { "etcdctl" });
        cmd.env("ETCDCTL_API", "3").args(["snapshot", "restore"]).arg(snapshot).arg("--data-dir").arg(&self.dir);
        for (k, v) in &self.settings {
            cmd.arg(format!("--{k}={v}"));
        }
        cmd
    }
}

impl EtcdDataTarget {
    fn holds_data(&self) -> bool {
        std::fs::read_dir(&self.dir).is_ok_and(|mut d| d.next().is_some())
    }

    /// Whether a running etcd holds the directory's database: bbolt locks
    /// it (`flock`) while it is open.
    fn in_use(&self) -> bool {
        use std::os::fd::AsRawFd;
        let Ok(db) = std::fs::File::open(self.dir.join("member/snap/db")) else { return false };
        // SAFETY: an open descriptor; the lock, if taken, goes with the file when it is closed.
        let rc = unsafe { libc::flock(db.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
    }

    /// Move a directory that holds data aside (an empty one is removed):
    /// where it is kept.
    fn move_aside(&self) -> Result<Option<PathBuf>> {
        if !self.holds_data() {
            if self.dir.exists() {
                std::fs::remove_dir(&self.dir).map_err(|e| self.fail(e))?;
            }
            return Ok(None);
        }
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // Two restores within a second would name the same directory, and
        // the second rename fails on the first one's (not empty).
        let kept = (0..)
            .map(|n| match n {
                0 => self.beside(&format!(".before-restore-{secs}")),
                n => self.beside(&format!(".before-restore-{secs}-{n}")),
            })
            .find(|p| !p.exists())
            .expect("an unused name");
        std::fs::rename(&self.dir, &kept).map_err(|e| self.fail(format!("cannot move the old directory aside: {e}")))?;
        Ok(Some(kept))
    }

    /// After the tool failed (`why`): what it left in DIR goes (DIR was
    /// missing or empty, or moved aside: a half-written directory made the
    /// next restore ask for --flush, and looked like data), and the old
    /// directory comes back; the error says where the old one is.
    fn put_back(&self, kept: Option<PathBuf>, why: &str) -> Error {
        let _ = std::fs::remove_dir_all(&self.dir);
        let Some(kept) = kept else { return self.fail(why) };
        match std::fs::rename(&kept, &self.dir) {
            Ok(()) => self.fail(format!("{why} (the old directory is back in place)")),
            Err(e) => self.fail(format!("{why} (the old directory is in {}: cannot move it back: {e})", kept.display())),
        }
    }
}

impl Target for EtcdDataTarget {
    fn begin(&mut self, _len: u64, overwrite: bool) -> Result<()> {
        if self.holds_data() && !overwrite {
            return Err(
                self.fail("the directory holds data; restoring replaces it: add --flush to allow it (the old one is kept beside it)")
            );
        }
        if self.in_use() {
            return Err(self.fail(
                "an etcd is running on the directory (it holds member/snap/db locked): stop it first, or what it writes meanwhile is lost",
            ));
        }
        let path = self.beside(".tresor-snapshot.db");
        let file = tresor_engine::fsmeta::create_private(&path).map_err(|e| self.fail(format!("cannot write {}: {e}", path.display())))?;
        self.file = Some((path, file));
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        let (path, file) = self.file.as_mut().expect("begun");
        file.write_all(data).map_err(|e| Error::failed(&self.url, format!("cannot write {}: {e}", path.display())))
    }

    fn finish(&mut self) -> Result<String> {
        let (path, file) = self.file.take().expect("begun");
        drop(file);
        let kept = match self.move_aside() {
            Ok(kept) => kept,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        let out = self.restore_command(&path).output();
        let _ = std::fs::remove_file(&path);
        let failed = match &out {
            Err(e) => Some(format!("cannot run etcdutl or etcdctl: {e}")),
            Ok(o) if !o.status.success() => {
                Some(crate::last_line(&String::from_utf8_lossy(&o.stderr)).unwrap_or("snapshot restore failed").trim().to_string())
            }
            Ok(_) => None,
        };
        if let Some(why) = failed {
            return Err(self.put_back(kept, &why));
        }
        let dir = self.dir.display();
        Ok(match kept {
            Some(kept) => {
                format!("etcd data directory {dir} written (the old one is in {}); start etcd with --data-dir {dir}", kept.display())
            }
            None => format!("etcd data directory {dir} written; start etcd with --data-dir {dir}"),
        })
    }

    fn abort(&mut self) -> Result<()> {
        if let Some((path, _)) = self.file.take() {
            std::fs::remove_file(&path).map_err(|e| self.fail(format!("cannot remove {}: {e}", path.display())))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::EtcdDataTarget;

    /// Directories replaced twice within one second are both kept, each
    /// under its own name.
    #[test]
    fn directories_moved_aside_within_a_second_keep_their_own_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("member");
        let target = EtcdDataTarget::parse(&format!("etcd-data:{}", dir.display())).unwrap();
        let mut kept = Vec::new();
        for round in ["first", "second"] {
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("db"), round).unwrap();
            kept.push(target.move_aside().unwrap().unwrap());
        }
        assert_ne!(kept[0], kept[1]);
        let held: Vec<String> = kept.iter().map(|k| std::fs::read_to_string(k.join("db")).unwrap()).collect();
        assert_eq!(held, ["first", "second"]);
    }
}
