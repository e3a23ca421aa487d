//! The daemon's scheduled repository checks, with real children: damage
//! that no backup reads is found, typed and counted in the metrics.

use super::daemon::{count, http, set_clock, start_daemon, wait_jobs};
use super::*;

/// A daily check that reads every pack finds a byte flipped in a pack
/// after the backup: the job fails as a damaged repository, names the
/// first problem, and the metrics count it until a check passes again.
#[test]
fn a_scheduled_check_finds_damage_and_the_metrics_say_so() {
    let env = Env::new();
    fs::create_dir_all(env.path("files")).unwrap();
    fs::write(env.path("files/a.bin"), random_bytes(300_000, 7)).unwrap();
    let plan = env.path("plan.yaml");
    let text = format!(
        "repositories:\n  main:\n    url: {repo}\n    password_file: {pw}\n    init: true\n\
         classes:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
         sources:\n  - {{name: files, class: standard, url: {files}, schedule: '@daily'}}\n\
         daemon:\n  state: {state}\n  prune_schedule: null\n  check_schedule: '@daily'\n  check_slices: 1\n",
        repo = env.repo,
        pw = env.path("pw").display(),
        files = env.path("files").display(),
        state = env.path("state.db").display(),
    );
    fs::write(&plan, text).unwrap();
    let clock = env.path("clock");
    set_clock(&clock, "2026-11-21T10:07:00Z");
    let d = start_daemon(&env, &plan, Some(&clock));
    wait_jobs(&d, "the first backup", |j| count(j, "files", "backup", "succeeded") == 1);
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

/// `--read-data-subset N/T`: the slices 1/T … T/T read every pack once
/// between them; a slice outside 1..=T is refused.
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
}

/// A check schedule that does not parse, and zero slices, are plan errors
/// named by their lines.
#[test]
fn plan_check_refuses_a_bad_check_schedule_and_zero_slices() {
    let env = Env::new();
    let plan = env.path("tresor.yaml");
    fs::write(
        &plan,
        "repositories:\n  primary:\n    url: /srv/repo\n    password_file: /etc/tresor/pw\nclasses:\n  standard:\n    rpo: 1d\n    rto: 8h\n\
         sources:\n  - {name: wiki, class: standard, url: /srv/wiki, schedule: '@daily'}\n\
         daemon:\n  check_schedule: 'every sunday'\n  check_slices: 0\n",
    )
    .unwrap();
    let out = env.run(&["plan", "check", plan.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout);
    let errors: Vec<&str> = said.lines().filter(|l| l.contains(": error: ")).collect();
    let p = plan.display();
    assert_eq!(
        errors,
        [
            format!(
                "{p}:12: error: schedule \"every sunday\" is not a cron expression of five fields (or @hourly, @daily, @weekly, @monthly, @yearly)"
            ),
            format!("{p}:13: error: check_slices must be at least 1 (1: every check reads every pack)"),
        ],
        "{said}"
    );
}
