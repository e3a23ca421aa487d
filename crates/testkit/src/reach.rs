//! Programs that tests run as another user (`postgres` for archive and
//! restore commands, `nobody` for unreadable files) must be reachable by
//! that user, wherever the checkout lives: a home directory like /root is
//! closed to others, so the test binary's own path may not be.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// A copy of `program` that every user can execute: under the system's
/// temporary directory, in a directory named after the program's path,
/// size and modification time (so a rebuilt binary gets a new copy, and
/// reruns reuse the old one).
pub fn reachable_by_all(program: &Path) -> PathBuf {
    static COPIES: OnceLock<Mutex<Vec<(PathBuf, PathBuf)>>> = OnceLock::new();
    let mut copies = COPIES.get_or_init(Default::default).lock().expect("not poisoned");
    if let Some((_, copy)) = copies.iter().find(|(p, _)| p == program) {
        return copy.clone();
    }
    let meta = std::fs::metadata(program).unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    let key = fnv1a(&format!("{}\0{}\0{mtime}", program.display(), meta.len()));
    let dir = std::env::temp_dir().join(format!("tresor-test-bin-{key:016x}"));
    let name = program.file_name().expect("a program has a file name");
    let copy = dir.join(name);
    if std::fs::metadata(&copy).ok().map(|m| m.len()) != Some(meta.len()) {
        std::fs::create_dir_all(&dir).expect("create the directory for the copy");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("open the directory to all");
        // Written under a private name, then renamed: a concurrent test
        // process never runs a half-written program.
        let part = dir.join(format!(".{}.{}", name.to_string_lossy(), std::process::id()));
        std::fs::copy(program, &part).expect("copy the program");
        std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o755)).expect("make the copy executable");
        std::fs::rename(&part, &copy).expect("put the copy in place");
    }
    copies.push((program.to_path_buf(), copy.clone()));
    copy
}

/// FNV-1a: a stable name, not a security property.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}
