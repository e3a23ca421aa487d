//! Files of 16 MiB and more are read and chunked by their worker while a
//! packer thread beside it hashes, compresses, encrypts and packs
//! (engine/src/backup/pipeline.rs): what that stores must restore byte for
//! byte, deduplicate as the one-thread path does and pass a full check.

use std::fs;

use crate::{Env, random_bytes, restored};

#[test]
fn large_files_round_trip_and_deduplicate_through_the_packer_thread() {
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
