//! Restore walks and writes a few thousand files at a time (a batch,
//! engine/src/restore.rs) so its memory does not grow with the snapshot:
//! a tree of more than one batch must come back exact, with the metadata of
//! directories finished across batches, hard links whose first path was
//! written in an earlier batch, and content shared between batches.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

use crate::{Env, inventory, restored};

/// More entries than one batch holds (4,096).
const FILES: usize = 3_000;

#[test]
fn a_tree_of_several_batches_restores_exact_with_directory_times() {
    let env = Env::new();
    let src = env.path("src");
    for dir in ["a", "b/inner", "c"] {
        fs::create_dir_all(src.join(dir)).unwrap();
    }
    for i in 0..FILES {
        fs::write(src.join(format!("a/{i:05}")), format!("a file {i}\n")).unwrap();
        fs::write(src.join(format!("b/inner/{i:05}")), format!("b file {i}\n")).unwrap();
    }
    // The same content as a file of the first batch, and a second name for one.
    fs::write(src.join("c/same"), "a file 7\n").unwrap();
    fs::hard_link(src.join("a/00007"), src.join("c/link")).unwrap();
    let times: Vec<(&str, u64)> = vec![("", 1_000_000), ("a", 2_000_000), ("b", 3_000_000), ("b/inner", 4_000_000), ("c", 5_000_000)];
    for (dir, secs) in &times {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(*secs);
        fs::File::open(src.join(dir)).unwrap().set_modified(t).unwrap();
    }
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let s = env.json(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    // The directories above the source, the source's and its four.
    let dirs = src.components().count() - 1 + 4;
    let counts = [&s["total_files"], &s["files_restored"], &s["dirs_restored"], &s["bytes_restored"]].map(|v| v.as_u64());
    let bytes = fs::read_dir(src.join("a"))
        .unwrap()
        .chain(fs::read_dir(src.join("b/inner")).unwrap())
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum::<u64>()
        + 9;
    assert_eq!(counts, [Some(2 * FILES as u64 + 2), Some(2 * FILES as u64 + 2), Some(dirs as u64), Some(bytes)], "{s}");
    let out = restored(&env, "out", &src);
    assert_eq!(inventory(&out), inventory(&src));
    for (dir, secs) in &times {
        assert_eq!(fs::metadata(out.join(dir)).unwrap().mtime(), *secs as i64, "{dir}");
    }
}
