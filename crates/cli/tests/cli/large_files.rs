//! Files of 16 MiB and more are read and chunked by their worker while
//! the backup's packer threads hash, compress, encrypt and pack
//! (engine/src/backup/pipeline.rs): what that stores must restore byte for
//! byte and in order, deduplicate as the one-thread path does and pass a
//! full check, also when several files share the packers at once; a
//! packer that fails stops the file's reader.

use std::fs;

use crate::{Env, random_bytes, restored};

#[test]
fn large_files_round_trip_and_deduplicate_through_the_packer_threads() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    // Three times the pipeline's threshold, and a small file beside it.
    let data = random_bytes(48 << 20, 11);
    fs::write(src.join("big.bin"), &data).unwrap();
    fs::write(src.join("small.txt"), "small\n").unwrap();
    env.ok(&["init"]);
    let first = env.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(first["total_bytes_processed"], (48 << 20) + 6);
    // The same content shifted by an insert: after the first cut point
    // the chunks line up again, so at most one maximum chunk (8 MiB) is new.
    let mut shifted = b"inserted".to_vec();
    shifted.extend_from_slice(&data);
    fs::write(src.join("shifted.bin"), &shifted).unwrap();
    let second = env.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(second["files_new"], 1);
    let added = second["data_added"].as_u64().unwrap();
    assert!(added > 0 && added <= 8 << 20, "{second}");
    env.ok(&["check", "--read-data"]);
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    let out = restored(&env, "out", &src);
    assert_eq!(fs::read(out.join("big.bin")).unwrap(), data);
    assert_eq!(fs::read(out.join("shifted.bin")).unwrap(), shifted);
    assert_eq!(fs::read(out.join("small.txt")).unwrap(), b"small\n");
}

#[test]
fn large_files_read_at_once_share_the_packers_and_restore_in_their_own_order() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    // Four workers and four large files: all read at once, their chunks
    // dealt to the same two packers; a chunk's id put back in the wrong
    // file or place would restore other bytes.
    let files: Vec<Vec<u8>> = (0..4).map(|i| random_bytes((17 << 20) + i * 4099, 20 + i as u64)).collect();
    for (i, data) in files.iter().enumerate() {
        fs::write(src.join(format!("big{i}.bin")), data).unwrap();
    }
    env.ok(&["init"]);
    let first = env.json(&["backup", "--threads", "4", src.to_str().unwrap()]);
    let total: usize = files.iter().map(Vec::len).sum();
    assert_eq!(first["total_bytes_processed"], total);
    assert_eq!(first["files_new"], 4);
    env.ok(&["check", "--read-data"]);
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    let out = restored(&env, "out", &src);
    for (i, data) in files.iter().enumerate() {
        assert!(fs::read(out.join(format!("big{i}.bin"))).unwrap() == *data, "big{i}.bin restored with other bytes");
    }
}

#[test]
fn a_full_disk_under_large_files_fails_in_one_line_without_a_snapshot() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    // Two files read at once, their chunks on the same packers, when the
    // disk fills: both readers must stop, not wait on each other.
    fs::write(src.join("big0.bin"), random_bytes(32 << 20, 12)).unwrap();
    fs::write(src.join("big1.bin"), random_bytes(32 << 20, 13)).unwrap();
    env.ok(&["init"]);
    let mut backup = env.cmd(&["backup", "--threads", "2", src.to_str().unwrap()]);
    let out = backup.env("TRESOR_FAULTS", "write-limit=20000000").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 0, "no snapshot from a failed backup");
    assert!(env.ok(&["check", "--read-data"]).contains("no errors were found"));
}

/// A file appended to while it is read (here the moment the backup opened
/// it, seen in its `/proc/PID/fd`; a debug build reads a sparse 256 MiB
/// in seconds, a release build 4 GiB) is named in a warning: what the snapshot holds of it may be torn.
/// The file beside it, left alone, is not.
#[test]
fn a_file_written_to_while_it_is_read_is_named() {
    use std::io::Write;
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let growing = src.join("growing.img");
    // The tresor run is built as this test is: a release build reads some 16 times faster.
    let size: u64 = if cfg!(debug_assertions) { 256 << 20 } else { 4 << 30 };
    fs::File::create(&growing).unwrap().set_len(size).unwrap();
    fs::write(src.join("still.txt"), "still\n").unwrap();
    let child = env.cmd(&["backup", src.to_str().unwrap()]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let fds = format!("/proc/{}/fd", child.id());
    let open = || fs::read_dir(&fds).into_iter().flatten().flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|p| p == growing));
    while !open() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    fs::OpenOptions::new().append(true).open(&growing).unwrap().write_all(b"tail").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let said = format!(
        " WARN {}: changed while it was read ({} bytes, then {}); the snapshot holds what was read\n",
        growing.display(),
        size,
        size + 4
    );
    assert_eq!((out.status.code(), stderr), (Some(0), said));
}
