//! `--max-memory`: a command whose index would not fit stops before it
//! starts, with one line naming the estimate and the limit; one that fits
//! completes within the limit.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Env, inventory};

const MIB: u64 = 1 << 20;

/// The estimate as docs/ARCHITECTURE.md §9 defines it: every 32 stored bytes
/// of index files and marks may be one entry, each a 36-byte slot, plus the
/// 96 MiB a command works in.
fn expected_refusal(repo: &Path, limit_mib: u64) -> String {
    let stored: u64 = ["index", "marks"]
        .iter()
        .filter_map(|d| fs::read_dir(repo.join(d)).ok())
        .flatten()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let blobs = stored / 32;
    let index = blobs * 36;
    format!(
        "tresor: error: this command would need about {} MiB of memory (an index of up to {blobs} blobs: {} MiB), \
         more than the limit of {limit_mib} MiB; it did not start\n",
        (index + 96 * MIB).div_ceil(MIB),
        index.div_ceil(MIB)
    )
}

/// Run `c` and return its exit code and peak RSS in KiB, as GNU time
/// measures it. Not wait4's own figure: a child spawned from this test
/// process keeps, across its exec, the high-water mark of the memory it was
/// spawned from (the whole test binary's), which says nothing of tresor.
fn run_measured(c: Command) -> (i32, u64) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut timed = Command::new("/usr/bin/time");
    timed.args(["-f", "%M", "-o"]).arg(report.path()).arg(c.get_program()).args(c.get_args());
    timed.env_clear().envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let status = timed.stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
    let peak = fs::read_to_string(report.path()).unwrap();
    let peak = peak.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("GNU time said {peak:?}"));
    (status.code().unwrap(), peak)
}

/// A repository of 100,000 synthetic blobs, and a small directory to back up.
fn synthetic() -> (Env, PathBuf) {
    let env = Env::new();
    env.ok(&["init"]);
    env.ok(&["synth", "--blobs", "100000"]);
    let data = env.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("a"), b"a small file").unwrap();
    (env, data)
}

#[test]
fn a_repository_past_the_memory_limit_is_refused_before_work() {
    let (env, data) = synthetic();
    let repo = Path::new(&env.repo);
    let before = inventory(repo);
    // 100,000 blobs need about 4 MiB of index on top of the 96: 98 MiB is too little.
    let refusal = expected_refusal(repo, 98);
    assert_eq!(env.fails(&["check", "--max-memory", "98M"], 1), refusal);
    assert_eq!(env.fails(&["forget", "latest", "--prune", "--max-memory", "98M"], 1), refusal);
    let mut backup = env.cmd(&["backup", data.to_str().unwrap()]);
    let out = backup.env("TRESOR_MAX_MEMORY", "98M").output().unwrap();
    assert_eq!((out.status.code(), String::from_utf8(out.stderr).unwrap()), (Some(1), refusal));
    assert_eq!(inventory(repo), before, "a refused command changed the repository");
    assert_eq!(
        env.fails(&["check", "--max-memory", "lots"], 1),
        "tresor: error: cannot read --max-memory (TRESOR_MAX_MEMORY) \"lots\" (bytes, e.g. 512M or 4G)\n"
    );
    assert_eq!(
        env.fails(&["synth", "--blobs", "10", "--blobs-per-pack", "0"], 1),
        "tresor: error: a synthetic repository needs at least one blob, and at least one to a pack\n"
    );
}

#[test]
fn a_command_within_the_memory_limit_completes_within_it() {
    let (env, data) = synthetic();
    for args in [vec!["check"], vec!["backup", data.to_str().unwrap()]] {
        let mut c = env.cmd(&args);
        c.env("TRESOR_MAX_MEMORY", "160M");
        let (code, peak_kib) = run_measured(c);
        assert_eq!(code, 0, "tresor {args:?} under a sufficient limit failed");
        assert!(peak_kib * 1024 <= 160 * MIB, "tresor {args:?} peaked at {peak_kib} KiB, over its 160 MiB limit");
    }
    assert_eq!(env.json(&["snapshots"]).as_array().map(Vec::len), Some(2));
}

/// Check judges packs from a streamed listing, by pack number: the packs of
/// a mark not swept yet are stored and fine, a stray pack is unindexed, an
/// indexed pack storage lost is missing and blames its snapshot.
#[test]
fn check_judges_marked_stray_and_missing_packs_from_the_listing() {
    let env = Env::new();
    env.ok(&["init"]);
    let mut taken = Vec::new();
    for (name, len, seed) in [("old", 1 << 20, 1), ("new", 3 << 20, 2)] {
        let dir = env.path(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("f"), super::random_bytes(len, seed)).unwrap();
        taken.push(env.json(&["backup", dir.to_str().unwrap()])["snapshot_id"].as_str().unwrap().to_string());
    }
    env.ok(&["forget", &taken[0], "--prune", "--grace", "1h"]);
    let repo = Path::new(&env.repo);
    assert_eq!(fs::read_dir(repo.join("marks")).unwrap().count(), 1, "the old snapshot's packs wait in a mark");
    let stray = "ab".repeat(32);
    fs::create_dir_all(repo.join("data/ab")).unwrap();
    fs::write(repo.join("data/ab").join(&stray), b"left by a killed writer").unwrap();
    let report = env.json(&["check"]);
    assert_eq!((report["problems"].as_array().map(Vec::len), &report["unindexed_packs"]), (Some(0), &serde_json::json!([stray])));
    let lost = super::biggest(&repo.join("data"));
    fs::remove_file(&lost).unwrap();
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let short = &lost.file_name().unwrap().to_str().unwrap()[..8];
    assert!(
        text.contains(&format!("error: pack {short}: it is missing from storage\n  affects snapshots: {}\n", &taken[1][..8])),
        "{text}"
    );
}

/// The generator writes packs many at a time; every one it counts is
/// indexed, no index file lists more than a backup's checkpoint of 32, and
/// the repository checks whole.
#[test]
fn a_synthetic_repository_at_16_blobs_to_a_pack_is_whole() {
    let env = Env::new();
    env.ok(&["init"]);
    let mut made: serde_json::Value = serde_json::from_str(&env.ok(&["synth", "--blobs", "1000", "--blobs-per-pack", "16"])).unwrap();
    made.as_object_mut().unwrap().remove("snapshot");
    // 63 data packs (62 of 16, one of 8) and one tree pack; 63 = 32 + 31.
    assert_eq!(made, serde_json::json!({"blobs": 1000, "trees": 2, "packs": 64, "index_files": 3}));
    assert_eq!(fs::read_dir(Path::new(&env.repo).join("index")).unwrap().count(), 3);
    env.ok(&["check", "--read-data"]);
}
