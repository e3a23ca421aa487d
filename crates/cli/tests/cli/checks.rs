//! The daemon's scheduled repository checks, with real children: damage
//! that no backup reads is found, typed and counted in the metrics.

use serde_json::json;

use super::daemon::{Daemon, count, http, plan_errors, set_clock, start_daemon, wait_jobs};
use super::*;

/// A daily check that reads every pack finds a byte flipped in a pack
/// after the backup: the job fails as a damaged repository, names the
/// first problem, and the metrics count it until a check passes again.
#[test]
fn a_scheduled_check_finds_damage_and_the_metrics_say_so() {
    let env = Env::new();
    fs::create_dir_all(env.path("files")).unwrap();
    fs::write(env.path("files/a.bin"), random_bytes(300_000, 7)).unwrap();
    let (d, clock) = checking_daemon(&env, 1);
    let metric = |name: &str| {
        let (_, text) = http(d.port, "GET", "/metrics", None);
        let line = format!("{name}{{repository=\"main\"}} ");
        text.lines().find_map(|l| l.strip_prefix(line.as_str()).map(String::from))
    };
    // The job is recorded a moment before its verdict reaches the metrics.
    let settled = |name: &str, want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while metric(name).as_deref() != Some(want) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        metric(name)
    };
    assert_eq!(metric("backup_repository_check_problems"), None, "no check has judged it yet");

    let pack = biggest(&Path::new(&env.repo).join("data"));
    let intact = fs::read(&pack).unwrap();
    flip_byte(&pack, 1000);
    set_clock(&clock, "2026-11-22T00:30:00Z");
    let j = wait_jobs(&d, "the check", |j| count(j, "main", "check", "failed") == 1);
    let check = j.iter().find(|x| x["kind"] == "check").unwrap();
    assert_eq!(check["reason"], "repository_damaged");
    let name = pack.file_name().unwrap().to_str().unwrap();
    let said = check["message"].as_str().unwrap();
    assert!(said.starts_with(&format!("check found 1 problem; first: pack {}: blob ", &name[..8])), "{said}");
    assert!(said.ends_with(" is damaged: it fails authentication"), "{said}");
    assert_eq!(settled("backup_repository_check_problems", "1").as_deref(), Some("1"));
    assert_eq!(metric("backup_repository_check_last_success_timestamp_seconds"), None);
    let row = || {
        let (_, page) = http(d.port, "GET", "/", Some("read-token"));
        page.lines().find(|l| l.contains("data-repository=\"main\"")).unwrap().to_string()
    };
    assert!(row().ends_with("<td class=\"bad\">1 problem found</td></tr>"), "{}", row());

    fs::write(&pack, intact).unwrap();
    set_clock(&clock, "2026-11-23T00:30:00Z");
    wait_jobs(&d, "the next check", |j| count(j, "main", "check", "succeeded") == 1);
    // 2026-11-23T00:30:00Z, by the daemon's clock.
    assert_eq!(settled("backup_repository_check_last_success_timestamp_seconds", "1795393800").as_deref(), Some("1795393800"));
    assert_eq!(metric("backup_repository_check_problems").as_deref(), Some("0"));
    assert!(row().ends_with("<td class=\"ok\">passed 2026-11-23 00:30:00 UTC</td></tr>"), "{}", row());
}

/// A daemon backing up `files` daily into the test's repository (made at
/// start unless it exists), checking it daily in `slices` slices; its
/// clock file, after the first backup.
fn checking_daemon(env: &Env, slices: u32) -> (Daemon, PathBuf) {
    let plan = env.path("plan.yaml");
    let text = format!(
        "repositories:\n  main:\n    url: {repo}\n    password_file: {pw}\n    init: true\n\
         classes:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
         sources:\n  - {{name: files, class: standard, url: {files}, schedule: '@daily'}}\n\
         daemon:\n  state: {state}\n  prune_schedule: null\n  check_schedule: '@daily'\n  check_slices: {slices}\n",
        repo = env.repo,
        pw = env.path("pw").display(),
        files = env.path("files").display(),
        state = env.path("state.db").display(),
    );
    fs::write(&plan, text).unwrap();
    let clock = env.path("clock");
    set_clock(&clock, "2026-11-21T10:07:00Z");
    let d = start_daemon(env, &plan, Some(&clock));
    wait_jobs(&d, "the first backup", |j| count(j, "files", "backup", "succeeded") == 1);
    (d, clock)
}

/// Damage in two packs, one in each of two slices: the first check finds
/// the one in its slice; the second reads the other slice and the pack
/// found damaged, and finds both (reading its first slice again, as the
/// daemon did before, it found one); with both mended the third passes.
#[test]
fn damage_found_is_read_again_while_the_slices_move_on() {
    let env = Env::new();
    // 24 packs: that all fall in one slice has odds of 2^-23.
    env.ok(&["init", "--pack-size-mib", "4"]);
    fs::create_dir_all(env.path("files")).unwrap();
    fs::write(env.path("files/a.bin"), random_bytes(96 << 20, 11)).unwrap();
    let (d, clock) = checking_daemon(&env, 2);
    let packs: Vec<PathBuf> =
        files_under(&Path::new(&env.repo).join("data")).into_iter().filter(|p| fs::metadata(p).unwrap().len() > 1 << 20).collect();
    // Slice 1 of 2 holds the packs whose id's first four bytes, read little-endian, are below 2^31.
    let in_first = |p: &PathBuf| p.file_name().unwrap().to_str().unwrap()[6..8] < *"80";
    let (first, second) = (packs.iter().find(|p| in_first(p)).unwrap().clone(), packs.iter().find(|p| !in_first(p)).unwrap().clone());
    let intact = [fs::read(&first).unwrap(), fs::read(&second).unwrap()];
    flip_byte(&first, 1000);
    flip_byte(&second, 1000);
    let name = |p: &PathBuf| p.file_name().unwrap().to_str().unwrap().to_string();
    let newest_check =
        |j: &[serde_json::Value]| j.iter().filter(|x| x["kind"] == "check").max_by_key(|x| x["id"].as_u64()).unwrap().clone();

    set_clock(&clock, "2026-11-22T00:30:00Z");
    let check = newest_check(&wait_jobs(&d, "the first check", |j| count(j, "main", "check", "failed") == 1));
    assert_eq!((check["problems"].clone(), check["damaged_packs"].clone()), (json!(1), json!([name(&first)])), "{check}");
    set_clock(&clock, "2026-11-23T00:30:00Z");
    let check = newest_check(&wait_jobs(&d, "the second check", |j| count(j, "main", "check", "failed") == 2));
    let mut both = [name(&first), name(&second)];
    both.sort();
    assert_eq!((check["problems"].clone(), check["damaged_packs"].clone()), (json!(2), json!(both)), "{check}");

    fs::write(&first, &intact[0]).unwrap();
    fs::write(&second, &intact[1]).unwrap();
    set_clock(&clock, "2026-11-24T00:30:00Z");
    let check = newest_check(&wait_jobs(&d, "the third check", |j| count(j, "main", "check", "succeeded") == 1));
    assert_eq!((check["problems"].clone(), check.get("damaged_packs")), (json!(0), None), "{check}");
}

/// `--read-data-subset N/T`: the slices 1/T … T/T read every pack once
/// between them; a slice outside 1..=T is refused. `--read-pack` reads a
/// pack besides, named by a prefix; one no index lists is an error.
#[test]
fn slices_of_the_packs_read_each_once() {
    let env = Env::new();
    env.ok(&["init", "--pack-size-mib", "4"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.bin"), random_bytes(40 << 20, 3)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let packs = env.json(&["check", "--read-data"])["packs_read"].as_u64().unwrap();
    let read: Vec<u64> =
        (1..=3).map(|n| env.json(&["check", "--read-data-subset", &format!("{n}/3")])["packs_read"].as_u64().unwrap()).collect();
    assert!(packs >= 8, "{packs} packs");
    assert_eq!(read.iter().sum::<u64>(), packs, "{read:?}");
    for bad in ["0/3", "4/3", "1/0"] {
        let err = env.fails(&["check", "--read-data-subset", bad], 1);
        assert_eq!(err, "tresor: error: --read-data-subset N/T wants 1 ≤ N ≤ T, such as 1/7\n");
    }
    // Both: the subset alone was read, and its clean result passed for a full read.
    let err = env.fails(&["check", "--read-data", "--read-data-subset", "10%"], 1);
    assert_eq!(err, "tresor: error: --read-data reads every pack and --read-data-subset a share of them: give one\n");
    // A slice of 1000 that no pack falls in reads nothing, and says so.
    let ids: Vec<u64> = files_under(&Path::new(&env.repo).join("data"))
        .iter()
        .map(|p| u64::from(u32::from_str_radix(&p.file_name().unwrap().to_str().unwrap()[..8], 16).unwrap().swap_bytes()))
        .collect();
    let empty = (0..1000).find(|n| ids.iter().all(|id| (id * 1000) >> 32 != *n)).unwrap() + 1;
    let said = env.ok(&["check", "--read-data-subset", &format!("{empty}/1000")]);
    assert!(said.contains("(0 packs read)\nnote: no pack falls in that share of the packs, so no data was read\n"), "{said}");
    // A pack named with --read-pack is read besides a slice it is not in
    // (its own: the first four bytes of its id, read little-endian, in thirds of 2^32).
    let pack = files_under(&Path::new(&env.repo).join("data"))[0].file_name().unwrap().to_str().unwrap().to_string();
    let third = (u64::from(u32::from_str_radix(&pack[..8], 16).unwrap().swap_bytes()) * 3) >> 32;
    let other = (third + 1) % 3;
    let besides = env.json(&["check", "--read-data-subset", &format!("{}/3", other + 1), "--read-pack", &pack[..8]]);
    assert_eq!(besides["packs_read"].as_u64(), Some(read[other as usize] + 1), "named by the 8 digits check prints");
    let err = env.fails(&["check", "--read-pack", &pack[..7]], 1);
    assert_eq!(err, format!("tresor: error: --read-pack wants a pack's id, or its first 8 hex digits or more, not {:?}\n", &pack[..7]));
    let none = "0".repeat(64);
    let err = env.fails(&["check", "--read-pack", &none], 1);
    assert_eq!(err, format!("tresor: error: --read-pack {none}: no pack stored has this id (mistyped, or deleted by a prune)\n"));
}

/// A damaged index file makes the blobs it lists pass for lost: check
/// names it and advises `repair index`, not `repair snapshots` (which would
/// save the snapshots without those blobs, still whole in their packs);
/// `--read-pack` finds its pack in the storage's listing, not in that index.
/// After `repair index` the check passes and the restore is whole.
#[test]
fn a_damaged_index_file_is_mended_by_repair_index_as_check_advises() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let data = random_bytes(300_000, 5);
    fs::write(src.join("a.bin"), &data).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let pack = name(&biggest(&Path::new(&env.repo).join("data")));
    let index = files_under(&Path::new(&env.repo).join("index"))[0].clone();
    let len = fs::metadata(&index).unwrap().len();
    flip_byte(&index, len / 2);

    let out = env.run(&["check", "--read-pack", &pack[..8], "--no-cache"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("error: index {}: ", &name(&index)[..8])), "{said}");
    assert!(said.ends_with("the index can be rebuilt from the packs: run `tresor repair index`, then check again\n"), "{said}");
    env.ok(&["repair", "index", "--no-cache"]);
    assert!(env.ok(&["check", "--read-data", "--no-cache"]).contains("no errors were found"));
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap(), "--no-cache"]);
    assert_eq!(fs::read(restored(&env, "out", &src).join("a.bin")).unwrap(), data);
}

/// A check schedule that does not parse, and zero slices, are plan errors
/// named by their lines, the daemon's and a repository's own.
#[test]
fn plan_check_refuses_a_bad_check_schedule_and_zero_slices() {
    let env = Env::new();
    let plan = env.path("tresor.yaml");
    fs::write(
        &plan,
        "repositories:\n  primary:\n    url: /srv/repo\n    password_file: /etc/tresor/pw\n\
         \x20 offsite:\n    url: /srv/offsite\n    password_file: /etc/tresor/pw\n    prune_schedule: '0 3 * *'\n    check_schedule: monthly\n    check_slices: 0\n\
         classes:\n  standard:\n    rpo: 1d\n    rto: 8h\n\
         sources:\n  - {name: wiki, class: standard, url: /srv/wiki, schedule: '@daily'}\n\
         daemon:\n  check_schedule: 'every sunday'\n  check_slices: 0\n",
    )
    .unwrap();
    let (errors, said) = plan_errors(&env, &plan);
    let p = plan.display();
    assert_eq!(
        errors,
        [
            format!(
                "{p}:8: error: repository offsite: schedule \"0 3 * *\" is not a cron expression of five fields (or @hourly, @daily, @weekly, @monthly, @yearly)"
            ),
            format!(
                "{p}:9: error: repository offsite: schedule \"monthly\" is not a cron expression of five fields (or @hourly, @daily, @weekly, @monthly, @yearly)"
            ),
            format!("{p}:10: error: repository offsite: check_slices must be at least 1 (1: every check reads every pack)"),
            format!(
                "{p}:18: error: schedule \"every sunday\" is not a cron expression of five fields (or @hourly, @daily, @weekly, @monthly, @yearly)"
            ),
            format!("{p}:19: error: check_slices must be at least 1 (1: every check reads every pack)"),
        ],
        "{said}"
    );
}

/// A schedule that never fires (31 February) is refused where it stands
/// (the daemon left it out of its runs, silently), and a daemon that
/// listens beyond loopback without a token file is warned of, as it will
/// not start without a token in its environment.
#[test]
fn plan_check_refuses_a_schedule_that_never_fires_and_warns_of_an_open_listen() {
    let env = Env::new();
    let plan = env.path("tresor.yaml");
    fs::write(
        &plan,
        "repositories:\n  primary:\n    url: /srv/repo\n    password_file: /etc/tresor/pw\n    check_schedule: '0 0 30 2 *'\n\
         classes:\n  standard:\n    rpo: 1d\n    rto: 8h\n    drill: {schedule: '0 0 31 2 *'}\n\
         sources:\n  - {name: wiki, class: standard, url: /srv/wiki, schedule: '@daily'}\n\
         daemon:\n  listen: 0.0.0.0:9750\n",
    )
    .unwrap();
    let (errors, said) = plan_errors(&env, &plan);
    let p = plan.display();
    assert_eq!(
        errors,
        [
            format!("{p}:5: error: repository primary: schedule \"0 0 30 2 *\" never fires: no month has that day"),
            format!("{p}:7: error: class standard: drill schedule \"0 0 31 2 *\" never fires: no month has that day"),
        ],
        "{said}"
    );
    let warning = format!(
        "{p}:14: warning: daemon.listen 0.0.0.0:9750 is no loopback address and the plan names no token file: the daemon starts only with TRESOR_API_TOKEN or TRESOR_API_READ_TOKEN set"
    );
    assert!(said.lines().any(|l| l == warning), "{said}");
}

/// A repository sources back up into that is never checked is a warning
/// at the line that says so (its own, or the daemon's); an off-site copy
/// left unchecked by choice (cold storage) is not.
#[test]
fn plan_check_warns_of_a_repository_backups_go_to_that_is_never_checked() {
    let env = Env::new();
    let plan = env.path("tresor.yaml");
    fs::write(
        &plan,
        "repositories:\n  primary:\n    url: /srv/repo\n    password_file: /etc/tresor/pw\n    check_schedule: never\n\
         \x20 offsite:\n    url: /srv/offsite\n    password_file: /etc/tresor/pw\n    check_schedule: null\n\
         classes:\n  standard:\n    rpo: 1d\n    rto: 8h\n    offsite: offsite\n    retention: {daily: 7}\n\
         sources:\n  - {name: wiki, class: standard, url: /srv/wiki, schedule: '@daily'}\n",
    )
    .unwrap();
    let out = env.run(&["plan", "check", plan.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    let warnings: Vec<&str> = said.lines().filter(|l| l.contains(": warning: ")).collect();
    let p = plan.display();
    let expected = format!(
        "{p}:5: warning: repository primary is never checked, though sources back up into it: damage in it goes unnoticed until a restore needs the data"
    );
    assert_eq!(warnings, [expected.as_str()], "{said}");
}

/// A source URL wrong without asking any server is an error at its line:
/// one the source's parser refuses, and a kind no source has (a restore
/// target's `etcd-data:` was read as a path and passed with 0 errors).
#[test]
fn plan_check_refuses_source_urls_no_source_takes() {
    let env = Env::new();
    let plan = env.path("tresor.yaml");
    fs::write(
        &plan,
        "repositories:\n  main:\n    url: /srv/repo\n    password_file: /etc/tresor/pw\n\
         classes:\n  standard:\n    rpo: 1d\n    rto: 8h\n\
         sources:\n  - name: cache\n    class: standard\n    url: redis://127.0.0.1:notaport\n    schedule: '@daily'\n\
         \x20 - name: etcd\n    class: standard\n    url: etcd-data:/var/lib/etcd\n    schedule: '@daily'\n\
         \x20 - name: files,eu\n    class: standard\n    url: /srv/files\n    schedule: '@daily'\n",
    )
    .unwrap();
    let out = env.run(&["plan", "check", plan.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    let errors: Vec<&str> = said.lines().filter(|l| l.contains(": error: ")).collect();
    let p = plan.display();
    assert_eq!(
        errors,
        [
            format!("{p}:12: error: source cache: redis://127.0.0.1:notaport: the port is not a number"),
            format!(
                "{p}:16: error: source etcd: no source is of kind etcd-data: (a path, or redis://, postgres://, etcd://, pgbase://, command:, k8s://, pvc://, redis-aof:, bucket+s3://, bucket+azblob://, bucket+gcs://)"
            ),
            format!(
                "{p}:18: error: source files,eu: a name may not hold a comma: its backups are tagged source=NAME, and tags split at commas"
            ),
        ],
        "{said}"
    );
    assert_eq!(out.status.code(), Some(1));
}
