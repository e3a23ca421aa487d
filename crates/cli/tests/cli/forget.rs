//! Which snapshots `forget` takes, from a retention administrator's review
//! against restic: each case here removed a snapshot that should stay.

use super::*;

fn ids_of(env: &Env, host: &str) -> Vec<String> {
    let snaps = env.json(&["snapshots"]);
    snaps.as_array().unwrap().iter().filter(|s| s["hostname"] == host).map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

/// `forget latest --host w1` removes w1's newest (it removed w2's, the
/// newest of all); a policy beside given snapshots is refused, not ignored.
#[test]
fn given_snapshots_obey_the_filters_and_exclude_a_policy() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("d");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), "x\n").unwrap();
    for (host, time) in [("w1", "2026-01-01 10:00:00"), ("w1", "2026-01-02 10:00:00"), ("w2", "2026-01-03 10:00:00")] {
        env.ok(&["backup", src.to_str().unwrap(), "--host", host, "--time", time]);
    }
    let (w1, w2) = (ids_of(&env, "w1"), ids_of(&env, "w2"));
    env.ok(&["forget", "latest", "--host", "w1"]);
    assert_eq!((ids_of(&env, "w1"), ids_of(&env, "w2")), (w1[..1].to_vec(), w2.clone()));
    let out = env.run(&["forget", "--keep-last", "1", &w2[0][..8]]);
    let said = "tresor: error: forget takes snapshots or a --keep policy, not both: the policy would be ignored\n";
    assert_eq!((out.status.code(), String::from_utf8(out.stderr).unwrap().as_str()), (Some(1), said));
    assert_eq!(ids_of(&env, "w2"), w2, "nothing was removed");
    // A filter no snapshot passes says so (it printed nothing).
    assert_eq!(env.ok(&["forget", "--host", "nosuch", "--keep-last", "1"]), "no snapshot matches host nosuch: nothing was removed\n");
}

/// Streams of different names are groups of their own (all stdin backups
/// were one group, so `--keep-last 1` removed the only backup of the other
/// stream), and `--tag a,b` is two tags, as restic takes it (one tag "a,b"
/// matched no `--keep-tag`, and the snapshot went).
#[test]
fn streams_are_grouped_by_name_and_tags_split_at_commas() {
    let env = Env::new();
    env.ok(&["init"]);
    for (name, data) in [("vault.snap", "vault"), ("all.sql", "db")] {
        let mut child = env
            .cmd(&["backup", "--stdin", "--stdin-filename", name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), data.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    }
    env.ok(&["forget", "--keep-last", "1"]);
    let snaps = env.json(&["snapshots"]);
    let urls: Vec<&str> = snaps.as_array().unwrap().iter().map(|s| s["source"]["url"].as_str().unwrap()).collect();
    assert_eq!(urls, ["stdin:vault.snap", "stdin:all.sql"]);

    let src = env.path("d");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), "x\n").unwrap();
    let at = src.to_str().unwrap();
    let legal =
        env.json(&["backup", at, "--tag", "legal,q4", "--time", "2026-01-01 10:00:00"])["snapshot_id"].as_str().unwrap().to_string();
    env.ok(&["backup", at, "--time", "2026-01-02 10:00:00"]);
    env.ok(&["forget", "--path", at, "--keep-tag", "legal", "--keep-last", "1"]);
    let snaps = env.json(&["snapshots", "--path", at]);
    let kept: Vec<(&str, &serde_json::Value)> = snaps.as_array().unwrap().iter().map(|s| (s["id"].as_str().unwrap(), &s["tags"])).collect();
    assert_eq!(kept[0], (legal.as_str(), &serde_json::json!(["legal", "q4"])));
    assert_eq!(kept.len(), 2);
}

/// A backup or forget whose reader went away (`| head -0`) said so in
/// one line once its work was done; it panicked (exit 101) with the
/// snapshot already written, or already removed.
#[test]
fn a_closed_report_is_one_line_after_the_work() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("d");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), "x\n").unwrap();
    let unread = |args: &[&str]| {
        let mut child = env.cmd(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
    };
    let said = "tresor: error: cannot write to standard output (broken pipe): the work is done, only its report is lost\n";
    for _ in 0..2 {
        assert_eq!(unread(&["backup", src.to_str().unwrap()]), (Some(1), said.to_string()));
    }
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2);
    assert_eq!(unread(&["forget", "--keep-last", "1"]), (Some(1), said.to_string()));
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);
}
