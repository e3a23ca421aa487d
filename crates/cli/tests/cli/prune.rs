//! Prune: space comes back, no snapshot loses a byte, with backups and other
//! prunes running at the same time and prunes killed at random moments.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tresor_engine::Id;
use tresor_engine::index::IndexFile;
use tresor_engine::objects::Kind;

use super::*;

/// The files of writer `w`'s `i`-th backup: one file every writer shares,
/// one carried over from the previous round, one new, and one scratch file
/// no later round keeps (so packs end up partly used once rounds go).
fn generation(dir: &Path, w: u64, i: u64) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("shared.bin"), random_bytes(3 << 20, 7)).unwrap();
    if i > 0 {
        fs::write(dir.join("previous.bin"), random_bytes(2 << 20, 1000 * w + i - 1)).unwrap();
    }
    fs::write(dir.join("new.bin"), random_bytes(2 << 20, 1000 * w + i)).unwrap();
    fs::write(dir.join("scratch.bin"), random_bytes(1 << 20, 500_000 + 1000 * w + i)).unwrap();
}

fn contents(dir: &Path) -> BTreeMap<String, String> {
    files_under(dir)
        .iter()
        .map(|p| (p.strip_prefix(dir).unwrap().display().to_string(), blake3::hash(&fs::read(p).unwrap()).to_hex().to_string()))
        .collect()
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// The packs (tree packs) in the local cache of `env`'s one repository.
fn cached_packs(env: &Env) -> BTreeSet<String> {
    files_under(&env.path("cache"))
        .iter()
        .filter(|p| p.parent().unwrap().parent().unwrap().ends_with("data"))
        .map(|p| file_name(p))
        .collect()
}

/// Every snapshot restores to exactly the files it was taken of.
fn assert_all_restore(env: &Env, taken: &[(String, u64, u64)], scratch: &str) {
    let snaps = env.json(&["snapshots"]);
    let alive: Vec<&str> = snaps.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert!(!alive.is_empty());
    for (id, w, i) in taken.iter().filter(|(id, _, _)| alive.contains(&id.as_str())) {
        let expected = env.path(&format!("{scratch}-expected"));
        generation(&expected, *w, *i);
        let target = env.path(&format!("{scratch}-{}", &id[..8]));
        env.ok(&["restore", id, "--target", target.to_str().unwrap()]);
        let src = env.path(&format!("w{w}"));
        assert_eq!(contents(&restored(env, target.file_name().unwrap().to_str().unwrap(), &src)), contents(&expected), "snapshot {id}");
        fs::remove_dir_all(&target).unwrap();
    }
}

/// Back up a generation; one thread packs the files in order, so a round's
/// new and scratch files share packs.
fn backup_generation(env: &Env, w: u64, i: u64) -> (String, u64, u64) {
    let dir = env.path(&format!("w{w}"));
    generation(&dir, w, i);
    let host = format!("writer{w}");
    let out = env.json(&["backup", dir.to_str().unwrap(), "--host", &host, "--threads", "1"]);
    (out["snapshot_id"].as_str().unwrap().to_string(), w, i)
}

fn prune_frees_space_and_keeps_every_snapshot_whole(env: &Env) {
    env.ok(&["init", "--pack-size-mib", "4"]);
    let mut taken = Vec::new();
    for i in 0..4 {
        taken.push(backup_generation(env, 0, i));
    }
    let out = env.ok(&["forget", "--keep-last", "1", "--prune", "--dry-run", "--json"]);
    let dry: serde_json::Value = serde_json::from_str(&out).expect("one JSON document, the prune's report in it");
    assert_eq!(dry["groups"][0]["remove"].as_array().map(Vec::len), Some(3), "{dry}");
    assert_eq!(dry["prune"]["marked_packs"], 0, "a dry run of forget reaches every snapshot still: {dry}");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 4);
    env.ok(&["forget", "--keep-last", "1"]);
    let before = env.json(&["stats"]);
    let dry = env.json(&["prune", "--dry-run"]);
    assert!(dry["marked_packs"].as_u64().unwrap() > 0, "{dry}");
    assert_eq!(env.json(&["stats"]), before, "a dry run changes nothing");
    let cached = cached_packs(env);
    let r = env.json(&["prune", "--max-unused", "0"]);
    assert_eq!(r["marked_packs"], dry["marked_packs"], "{r}");
    let still = cached_packs(env);
    assert!(still.is_subset(&cached) && still.len() < cached.len(), "the deleted tree packs left the cache: {cached:?} -> {still:?}");
    if Path::new(&env.repo).is_dir() {
        let stored: BTreeSet<String> = files_under(&Path::new(&env.repo).join("data")).iter().map(|p| file_name(p)).collect();
        assert!(still.is_subset(&stored), "every cached pack is still stored: {still:?}");
    }
    assert_eq!(r["deleted_packs"], r["marked_packs"], "nothing else writes, so the marks are swept at once: {r}");
    assert!(r["repacked_packs"].as_u64().unwrap() > 0, "packs mixing old and kept data were repacked: {r}");
    let after = env.json(&["stats"]);
    let (was, now) = (before["total_stored_size"].as_u64().unwrap(), after["total_stored_size"].as_u64().unwrap());
    assert!(now < was * 3 / 4, "space came back: {was} -> {now}");
    assert!(env.ok(&["check", "--read-data"]).contains("no errors were found"));
    assert_all_restore(env, &taken, "single");
    let again = env.json(&["prune", "--max-unused", "0"]);
    assert_eq!((again["marked_packs"].as_u64(), again["deleted_packs"].as_u64()), (Some(0), Some(0)), "{again}");
}

#[test]
fn prune_on_fs() {
    prune_frees_space_and_keeps_every_snapshot_whole(&Env::new());
}

#[test]
fn prune_on_s3() {
    let server = S3Server::start();
    prune_frees_space_and_keeps_every_snapshot_whole(&Env::s3(&server));
}

#[test]
fn prune_waits_for_a_backup_that_started_before_it() {
    let env = Env::new();
    env.ok(&["init", "--pack-size-mib", "4"]);
    let content = random_bytes(6 << 20, 42);
    let mut first =
        env.cmd(&["backup", "--stdin", "--stdin-filename", "db.dump"]).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    first.stdin.take().unwrap().write_all(&content).unwrap();
    assert!(first.wait().unwrap().success());
    // Older than any session by more than the storage clock's granularity.
    std::thread::sleep(Duration::from_millis(2500));
    // A second backup of the same bytes starts and loads the index, which
    // still lists the first backup's packs; then it waits for its input.
    let sessions = Path::new(&env.repo).join("sessions");
    let mut slow = env
        .cmd(&["backup", "--stdin", "--stdin-filename", "db.dump", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    while fs::read_dir(&sessions).map(|d| d.count()).unwrap_or(0) == 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    env.ok(&["forget", "latest"]);
    let r = env.json(&["prune"]);
    assert!(r["marked_packs"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["deleted_packs"], 0, "the older backup holds the sweep back: {r}");
    let why = r["waiting"][0].as_str().unwrap();
    assert!(why.contains("waits for backup") && why.contains("which began before it"), "{why}");
    // The backup now finishes, deduplicated against the marked packs.
    slow.stdin.take().unwrap().write_all(&content).unwrap();
    let out = slow.wait_with_output().unwrap();
    assert!(out.status.success());
    let summary: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["data_blobs"], 0, "it reused the marked data: {summary}");
    let r = env.json(&["prune"]);
    assert!(r["rescued_packs"].as_u64().unwrap() > 0, "the sweep put the needed packs back: {r}");
    assert!(env.ok(&["check", "--read-data"]).contains("no errors were found"));
    let out = env.cmd(&["dump", "latest", "db.dump"]).output().unwrap();
    assert!(out.stdout == content, "the snapshot restores byte for byte");
    env.ok(&["forget", "latest"]);
    let r = env.json(&["prune"]);
    assert!(r["deleted_packs"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(files_under(&Path::new(&env.repo).join("data")).len(), 0, "nothing is left once nothing is needed");
}

/// A snapshot no forget in the test removes, whose packs a prune repacks:
/// they also held a file only a forgotten snapshot had. Its id and files.
fn pinned_snapshot(env: &Env) -> (String, BTreeMap<String, String>) {
    let dir = env.path("pinned");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("keep.bin"), random_bytes(3 << 20, 900_001)).unwrap();
    fs::write(dir.join("scratch.bin"), random_bytes(2 << 20, 900_002)).unwrap();
    let backup =
        || env.json(&["backup", dir.to_str().unwrap(), "--host", "pinned", "--threads", "1"])["snapshot_id"].as_str().unwrap().to_string();
    let first = backup();
    fs::remove_file(dir.join("scratch.bin")).unwrap();
    let pinned = backup();
    env.ok(&["forget", &first]);
    (pinned, contents(&dir))
}

/// Checks and restores of the pinned snapshot while the others write and
/// prune: what they change under it is never reported as damage, and a
/// pack a prune moves is read where the newer index puts it.
fn read_until(env: &Env, done: &AtomicBool, (pinned, files): &(String, BTreeMap<String, String>)) {
    let mut round = 0;
    while !done.load(Ordering::Relaxed) || round == 0 {
        let check = env.run(&["check", "--read-data"]);
        assert!(check.status.success(), "check {round}: {}", String::from_utf8_lossy(&check.stdout));
        let target = env.path("reader");
        env.ok(&["restore", pinned, "--target", target.to_str().unwrap()]);
        assert_eq!(&contents(&restored(env, "reader", &env.path("pinned"))), files, "restore {round}");
        fs::remove_dir_all(&target).unwrap();
        round += 1;
    }
}

/// Three writers back up in rounds while another thread forgets and prunes
/// (repacking everything it can) as fast as it can; two prunes overlap; a
/// reader checks and restores all the while.
fn writers_and_prunes_at_once(env: &Env) {
    env.ok(&["init", "--pack-size-mib", "4"]);
    let pinned = pinned_snapshot(env);
    let taken = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let reader = {
            let (done, pinned) = (done.clone(), &pinned);
            s.spawn(move || read_until(env, &done, pinned))
        };
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let taken = taken.clone();
                s.spawn(move || {
                    for i in 0..4 {
                        let t = backup_generation(env, w, i);
                        taken.lock().unwrap().push(t);
                    }
                })
            })
            .collect();
        for _ in 0..2 {
            let done = done.clone();
            s.spawn(move || {
                let mut rounds = 0;
                while !done.load(Ordering::Relaxed) || rounds == 0 {
                    let out = env.run(&["forget", "--keep-last", "2", "--group-by", "host"]);
                    assert!(out.status.success() || String::from_utf8_lossy(&out.stderr).contains("no snapshot"), "{out:?}");
                    env.ok(&["prune", "--max-unused", "0"]);
                    rounds += 1;
                }
            });
        }
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        reader.join().unwrap();
    });
    env.ok(&["forget", "--keep-last", "2", "--group-by", "host"]);
    env.ok(&["prune", "--max-unused", "0"]);
    assert!(env.ok(&["check", "--read-data"]).contains("no errors were found"));
    let taken = taken.lock().unwrap();
    assert_eq!(taken.len(), 12);
    assert_all_restore(env, &taken, "many");
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 7, "the last two of each writer and the pinned one survive: {snaps}");
}

#[test]
fn writers_and_prunes_at_once_on_fs() {
    writers_and_prunes_at_once(&Env::new());
}

#[test]
fn writers_and_prunes_at_once_on_s3() {
    let server = S3Server::start();
    writers_and_prunes_at_once(&Env::s3(&server));
}

#[test]
fn killed_prunes_leave_a_repository_that_checks_and_restores() {
    let env = Env::new();
    env.ok(&["init", "--pack-size-mib", "4"]);
    let mut taken = Vec::new();
    for i in 0..6 {
        taken.push(backup_generation(&env, i % 2, i));
    }
    env.ok(&["forget", "--keep-last", "1", "--group-by", "host"]);
    let mut seed = 0x5eed_u64;
    for round in 0..8 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = 20 + (seed >> 33) % 400;
        let mut child = env.cmd(&["prune", "--max-unused", "0"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let check = env.run(&["check", "--read-data"]);
        assert!(check.status.success(), "round {round} (killed after {delay} ms): {}", String::from_utf8_lossy(&check.stdout));
        assert_all_restore(&env, &taken, "killed");
    }
    // The killed prunes left sessions that look alive until they time out;
    // a prune now marks and repacks, and sweeps what it can.
    env.ok(&["prune", "--max-unused", "0"]);
    assert!(env.ok(&["check", "--read-data"]).contains("no errors were found"));
    assert_all_restore(&env, &taken, "final");
}

/// A prune that dies after storing its new index files but before the one
/// superseding the old files leaves two live files listing the same packs
/// (here: one more file listing every pack). The next prune that deletes or
/// repacks such a pack rewrites both files, so none lists a deleted pack
/// and every snapshot restores from the copies that remain.
#[test]
fn a_pack_two_live_index_files_list_goes_from_both() {
    let env = Env::new();
    env.ok(&["init", "--pack-size-mib", "4"]);
    let taken: Vec<_> = (0..3).map(|i| backup_generation(&env, 0, i)).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listed_twice = rt.block_on(list_every_pack_again(&env));
    assert!(env.ok(&["check", "--read-data"]).contains("no errors were found"), "a pack two files list is no damage");
    env.ok(&["forget", "--keep-last", "1"]);
    let r = env.json(&["prune", "--max-unused", "0"]);
    let (marked, repacked) = (r["marked_packs"].as_u64().unwrap(), r["repacked_packs"].as_u64().unwrap());
    assert!(repacked > 0 && marked > repacked, "packs listed twice were repacked and others deleted unread: {r}");
    assert_eq!(r["deleted_packs"].as_u64(), Some(marked), "{r}");
    let (indexed, stored) = rt.block_on(indexed_and_stored_packs(&env));
    assert_eq!(indexed, stored, "the index lists exactly the packs storage holds");
    assert_eq!(listed_twice.difference(&stored).count() as u64, marked, "every pack that went was listed twice");
    assert!(env.ok(&["check", "--read-data"]).contains("no errors were found"));
    assert_all_restore(&env, &taken, "twice");
}

/// Store one more index file listing every pack the live files list, as a
/// prune that died before superseding them leaves it; the packs' ids.
async fn list_every_pack_again(env: &Env) -> BTreeSet<Id> {
    let repo = fuzz_corpus::open_in_process(env).await;
    let mut packs = Vec::new();
    for id in repo.list_ids(Kind::Index).await.unwrap() {
        packs.extend(IndexFile::decode(&id, &repo.load_file(Kind::Index, &id).await.unwrap()).unwrap().packs);
    }
    repo.save_index(&IndexFile { supersedes: Vec::new(), packs: packs.clone() }).await.unwrap();
    packs.iter().map(|p| p.id).collect()
}

/// The packs the live index files list, and those storage holds.
async fn indexed_and_stored_packs(env: &Env) -> (BTreeSet<Id>, BTreeSet<Id>) {
    let repo = fuzz_corpus::open_in_process(env).await;
    let (index, _) = repo.load_index(&Default::default()).await.unwrap();
    (index.packs().map(|(p, _)| p).collect(), repo.list_ids(Kind::Pack).await.unwrap().into_iter().collect())
}

/// A local repository whose disk a cut-short write filled: its temporary
/// file is space nothing uses, and prune could not even write its
/// heartbeat to free any. Prune removes temporary files older than an hour
/// first, and runs; one being written now stays.
#[test]
fn prune_frees_what_cut_short_writes_left_on_a_full_disk() {
    let env = Env::new();
    let disk = crate::restic::Tmpfs::mount(env.path("disk"), "size=8m");
    let repo = disk.0.join("repo");
    let at = repo.to_str().unwrap();
    env.ok(&["init", "--repo", at]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "data\n").unwrap();
    env.ok(&["backup", "--repo", at, src.to_str().unwrap()]);
    let (stale, fresh) = (repo.join(".tmp/stale"), repo.join(".tmp/fresh"));
    fs::create_dir_all(repo.join(".tmp")).unwrap();
    fs::write(&fresh, vec![1u8; 4096]).unwrap();
    let mut filler = fs::File::create(&stale).unwrap();
    let block = vec![0u8; 64 << 10];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    drop(filler);
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    fs::File::options().write(true).open(&stale).unwrap().set_modified(hour_ago).unwrap();
    let out = env.ok(&["prune", "--repo", at]);
    assert!(out.lines().any(|l| l.starts_with("1 temporary files cut-short writes left removed (")), "{out}");
    assert!(!stale.exists() && fresh.exists());
    assert!(env.ok(&["check", "--repo", at]).contains("no errors were found"));
}
