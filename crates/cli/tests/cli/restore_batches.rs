//! Restore walks and writes a few thousand files at a time (a batch,
//! engine/src/restore.rs) so its memory does not grow with the snapshot:
//! a tree of more than one batch must come back exact, with the metadata of
//! directories finished across batches, hard links whose first path was
//! written in an earlier batch, and content shared between batches.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::{Env, inventory, restored};

/// More entries than one batch holds (4,096).
const FILES: usize = 3_000;

/// The source's directories and the times they are given.
const TIMES: [(&str, u64); 5] = [("", 1_000_000), ("a", 2_000_000), ("b", 3_000_000), ("b/inner", 4_000_000), ("c", 5_000_000)];

/// A source of FILES files in `a` and in `b/inner`, and in `c` what `fill_c`
/// puts there, its directories' times set to [`TIMES`].
fn source(env: &Env, fill_c: impl FnOnce(&Path)) -> PathBuf {
    let src = env.path("src");
    for dir in ["a", "b/inner", "c"] {
        fs::create_dir_all(src.join(dir)).unwrap();
    }
    for i in 0..FILES {
        fs::write(src.join(format!("a/{i:05}")), format!("a file {i}\n")).unwrap();
        fs::write(src.join(format!("b/inner/{i:05}")), format!("b file {i}\n")).unwrap();
    }
    fill_c(&src.join("c"));
    for (dir, secs) in TIMES {
        fs::File::open(src.join(dir)).unwrap().set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)).unwrap();
    }
    src
}

#[test]
fn a_tree_of_several_batches_restores_exact_with_directory_times() {
    let env = Env::new();
    let src = source(&env, |c| {
        // The same content as a file of the first batch, and a second name for one.
        fs::write(c.join("same"), "a file 7\n").unwrap();
        fs::hard_link(c.join("../a/00007"), c.join("link")).unwrap();
    });
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
    for (dir, secs) in TIMES {
        assert_eq!(fs::metadata(out.join(dir)).unwrap().mtime(), secs as i64, "{dir}");
    }
}

/// Entries the target holds and the snapshot lacks, in each of three directories.
const STALE: usize = 1_500;

#[test]
fn delete_across_batches_removes_per_directory_what_the_snapshot_lacks() {
    let env = Env::new();
    let src = source(&env, |c| fs::write(c.join("kept"), "kept\n").unwrap());
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("out");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let out = restored(&env, "out", &src);
    // More than a batch of entries (4,096) the snapshot lacks, spread over its directories, and a tree of them.
    for i in 0..STALE {
        for dir in ["a", "b/inner", "c"] {
            fs::write(out.join(format!("{dir}/stale-{i:05}")), "stale\n").unwrap();
        }
    }
    fs::create_dir_all(out.join("b/old/deeper")).unwrap();
    fs::write(out.join("b/old/deeper/x"), "stale\n").unwrap();
    // An excluded name is not restored, so not deleted either.
    fs::write(out.join("c/notes.local"), "mine\n").unwrap();
    let s = env.json(&["restore", "latest", "--target", target.to_str().unwrap(), "--delete", "--exclude", "*.local"]);
    assert_eq!(s["files_deleted"], 3 * STALE as u64 + 1, "{s}");
    assert_eq!(s["errors"], serde_json::json!([]), "{s}");
    let mut left = inventory(&out);
    assert!(left.remove("c/notes.local").is_some_and(|f| f.starts_with(&format!("file {}", blake3::hash(b"mine\n").to_hex()))));
    assert_eq!(left, inventory(&src));
    // Each directory lost its extra entries before its times were set.
    for (dir, secs) in TIMES {
        assert_eq!(fs::metadata(out.join(dir)).unwrap().mtime(), secs as i64, "{dir}");
    }
}
