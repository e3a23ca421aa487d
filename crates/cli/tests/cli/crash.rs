//! Crash safety: `forget`, `copy` and `key` commands killed at random
//! moments leave repositories that check clean and restore, and the next
//! run finishes the job. (Backups and prunes: main.rs and prune.rs.)

use std::time::Duration;

use super::*;

/// Delays spread over a command's run, from a fixed seed so a failure replays.
fn delays(seed: u64, n: usize, max_ms: u64) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) % max_ms
        })
        .collect()
}

fn kill_after(mut c: Command, ms: u64) {
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
}

fn assert_checks(env: &Env, what: &str) {
    let out = env.run(&["check", "--read-data"]);
    assert!(out.status.success(), "{what}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn killed_forget_copy_and_key_commands_leave_consistent_repositories() {
    let env = Env::new();
    env.ok(&["init", "--pack-size-mib", "4"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..6 {
        fs::write(src.join(format!("f{i}")), random_bytes(3 << 20, 50 + i)).unwrap();
        env.ok(&["backup", src.to_str().unwrap()]);
    }
    let expected = inventory(&src);

    let target = env.path("offsite").display().to_string();
    let dst = Env::with_repo(tempfile::tempdir().unwrap(), target.clone(), Vec::new());
    dst.ok(&["init"]);
    let pw = dst.path("pw").display().to_string();
    for (round, ms) in delays(11, 6, 700).into_iter().enumerate() {
        kill_after(env.cmd(&["copy", "--to", &target, "--to-password-file", &pw]), ms);
        assert_checks(&dst, &format!("copy killed after {ms} ms (round {round})"));
    }
    env.ok(&["copy", "--to", &target, "--to-password-file", &pw]);
    assert_eq!(dst.json(&["snapshots"]).as_array().unwrap().len(), 6, "the next copy finished the job");
    dst.ok(&["restore", "latest", "--target", dst.path("out").to_str().unwrap()]);
    assert_eq!(inventory(&restored(&dst, "out", &src)), expected);

    for (round, ms) in delays(12, 4, 120).into_iter().enumerate() {
        kill_after(env.cmd(&["forget", "--keep-last", &(5 - round).to_string()]), ms);
        assert_checks(&env, &format!("forget killed after {ms} ms"));
    }
    env.ok(&["forget", "--keep-last", "2"]);
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2);

    fs::write(env.path("pw-new"), "a new password\n").unwrap();
    for (round, ms) in delays(13, 6, 150).into_iter().enumerate() {
        let mut c = env.cmd(&["key", "passwd"]);
        c.env("TRESOR_NEW_PASSWORD", "a new password");
        kill_after(c, ms);
        // Killed before, between or after its two steps: one of the two
        // passwords opens the repository, and the data is whole.
        let old = env.run(&["snapshots"]);
        let new = env.as_holder_of("pw-new", &["snapshots"]);
        assert!(old.status.success() || new.status.success(), "round {round}: no password opens the repository");
        if !old.status.success() {
            fs::copy(env.path("pw-new"), env.path("pw")).unwrap();
        }
        assert_checks(&env, &format!("key passwd killed after {ms} ms"));
    }
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    assert_eq!(inventory(&restored(&env, "out", &src)), expected);
}
