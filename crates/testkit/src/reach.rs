//! Programs that tests run as another user (`postgres` for archive and
//! restore commands, `nobody` for unreadable files) must be reachable by
//! that user, wherever the checkout lives: a home directory like /root is
//! closed to others, so the test binary's own path may not be.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// A copy of a rebuilt program that no test process has used for this long
/// is stale: every test process touches its copy when it starts, and no
/// suite runs this long, so removing it cannot pull a program from under a
/// running test. Without the sweep every rebuild left a copy of the binary
/// (hundreds of MiB) behind, and repeated runs filled the disk.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// A copy of `program` that every user can execute: under the system's
/// temporary directory, in a directory named after the program's path, one
/// version per size and modification time (so a rebuilt binary gets a new
/// copy, reruns reuse the old one, and the versions of earlier builds are
/// removed once no test has used them for an hour).
pub fn reachable_by_all(program: &Path) -> PathBuf {
    static COPIES: OnceLock<Mutex<Vec<(PathBuf, PathBuf)>>> = OnceLock::new();
    let mut copies = COPIES.get_or_init(Default::default).lock().expect("not poisoned");
    if let Some((_, copy)) = copies.iter().find(|(p, _)| p == program) {
        return copy.clone();
    }
    let meta = std::fs::metadata(program).unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    let home = std::env::temp_dir().join(format!("tresor-test-bin-{:016x}", fnv1a(&program.display().to_string())));
    let version = format!("{:016x}", fnv1a(&format!("{}\0{mtime}", meta.len())));
    let dir = home.join(&version);
    let name = program.file_name().expect("a program has a file name");
    let copy = dir.join(name);
    if std::fs::metadata(&copy).ok().map(|m| m.len()) != Some(meta.len()) {
        for d in [&home, &dir] {
            std::fs::create_dir_all(d).expect("create the directory for the copy");
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("open the directory to all");
        }
        // Written under a private name, then renamed: a concurrent test
        // process never runs a half-written program.
        let part = dir.join(format!(".{}.{}", name.to_string_lossy(), std::process::id()));
        std::fs::copy(program, &part).expect("copy the program");
        std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o755)).expect("make the copy executable");
        std::fs::rename(&part, &copy).expect("put the copy in place");
    }
    touch(&dir);
    remove_stale_versions(&home, &version);
    copies.push((program.to_path_buf(), copy.clone()));
    copy
}

fn touch(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        // Best effort: a copy whose time cannot be set is only swept early
        // by a later build's test, which then makes its own copy anew.
        let _ = handle.set_modified(SystemTime::now());
    }
}

fn remove_stale_versions(home: &Path, current: &str) {
    let Ok(entries) = std::fs::read_dir(home) else { return };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        if entry.file_name().to_str() == Some(current) {
            continue;
        }
        let idle = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| now.duration_since(t).ok());
        if idle.is_some_and(|idle| idle > STALE_AFTER) {
            // Another process may be sweeping the same version: whoever
            // loses the race finds it gone, which is the goal.
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// FNV-1a: a stable name, not a security property.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_idle_past_the_limit_is_removed_and_the_current_one_kept() {
        let home = tempfile::tempdir().expect("temp dir");
        for name in ["old", "recent", "current"] {
            std::fs::create_dir(home.path().join(name)).expect("version dir");
            std::fs::write(home.path().join(name).join("tresor"), b"x").expect("copy");
        }
        let long_ago = SystemTime::now() - STALE_AFTER - Duration::from_secs(60);
        for name in ["old", "current"] {
            std::fs::File::open(home.path().join(name)).expect("open").set_modified(long_ago).expect("age it");
        }
        remove_stale_versions(home.path(), "current");
        let mut left: Vec<String> =
            std::fs::read_dir(home.path()).expect("list").map(|e| e.expect("entry").file_name().into_string().expect("utf-8")).collect();
        left.sort();
        assert_eq!(left, ["current", "recent"]);
    }
}
