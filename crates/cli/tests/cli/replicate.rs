//! Off-site copies, append-only repositories, S3 Object Lock and bandwidth
//! limits.

use std::time::{Duration, Instant};

use super::*;

fn snapshot_count(env: &Env, extra: &[(&str, &str)]) -> usize {
    let mut c = env.cmd(&["snapshots", "--json"]);
    for (k, v) in extra {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().len()
}

/// The target's view: its own repository and password.
fn target(env: &Env, repo: &str, extra: &[(String, String)]) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut vars: Vec<(String, String)> = env.vars.iter().filter(|(k, _)| !k.starts_with("TRESOR_PASSWORD")).cloned().collect();
    vars.extend(extra.iter().cloned());
    let t = Env::with_repo(dir, repo.to_string(), vars);
    fs::write(t.path("pw"), "the off-site password\n").unwrap();
    t
}

fn copy_round_trip(src: &Env, dst: &Env, to: &str, to_env: &[(&str, &str)]) {
    let data = src.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("a.bin"), random_bytes(3 << 20, 11)).unwrap();
    src.ok(&["backup", data.to_str().unwrap(), "--time", "2026-03-01 10:00:00"]);
    fs::write(data.join("b.bin"), random_bytes(2 << 20, 12)).unwrap();
    src.ok(&["backup", data.to_str().unwrap(), "--time", "2026-03-01 11:00:00"]);
    dst.ok(&["init"]);
    let pw = dst.path("pw").display().to_string();
    let copy = |extra: &[&str]| {
        let mut args = vec!["copy", "--to", to, "--to-password-file", &pw, "--json"];
        args.extend_from_slice(extra);
        let mut c = src.cmd(&args);
        for (k, v) in to_env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "copy {extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let dry = copy(&["--dry-run"]);
    assert_eq!(dry["copied"].as_array().unwrap().len(), 2, "{dry}");
    assert_eq!(snapshot_count(dst, &[]), 0, "a dry run copies nothing");
    let first = copy(&[]);
    assert_eq!(first["copied"].as_array().unwrap().len(), 2, "{first}");
    assert!(first["packs_verified"].as_u64().unwrap() > 0 && first["packs_verified"] == first["packs_written"], "{first}");
    fs::write(data.join("c.bin"), random_bytes(1 << 20, 13)).unwrap();
    src.ok(&["backup", data.to_str().unwrap(), "--time", "2026-03-01 12:30:00"]);
    let dry = copy(&["--dry-run"]);
    assert_eq!(dry["lag_seconds"], 5400, "the newest copy is from 11:00, the newest snapshot from 12:30: {dry}");
    let second = copy(&[]);
    assert_eq!((second["copied"].as_array().unwrap().len(), second["present"].as_u64()), (1, Some(2)), "{second}");
    assert!(second["bytes_copied"].as_u64().unwrap() < 1100 << 10, "only the new file and trees travel: {second}");
    assert!(second["blobs_reused"].as_u64().unwrap() >= 2, "a.bin and b.bin are not copied again: {second}");
    assert_eq!(copy(&[])["copied"].as_array().unwrap().len(), 0, "nothing left to copy");
    assert!(dst.ok(&["check", "--read-data"]).contains("no errors were found"));
    dst.ok(&["restore", "latest", "--target", dst.path("out").to_str().unwrap()]);
    assert_eq!(inventory(&data), inventory(&restored(dst, "out", &data)));
    let wrong = {
        let mut c = src.cmd(&["copy", "--to", to]);
        c.env("TRESOR_TO_PASSWORD", "not it");
        for (k, v) in to_env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    assert_eq!(wrong.status.code(), Some(12));
    assert_eq!(String::from_utf8_lossy(&wrong.stderr), "tresor: error: target: wrong password: no key of this repository opens with it\n");
}

#[test]
fn copy_from_fs_to_s3_then_s3_to_s3() {
    let server = S3Server::start();
    let src = Env::new();
    src.ok(&["init"]);
    let to = format!("s3://{}/offsite", server.bucket());
    let dst = target(&src, &to, &server.env());
    let env_pairs: Vec<(String, String)> = server.env().into_iter().map(|(k, v)| (format!("TRESOR_TO_{k}"), v)).collect();
    let to_env: Vec<(&str, &str)> = env_pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    copy_round_trip(&src, &dst, &to, &to_env);

    // S3 to S3: the target's endpoint comes from TRESOR_TO_*, the source's
    // from AWS_*; only the newest snapshot of the host goes.
    let second = S3Server::start();
    let from = Env::s3(&server);
    let from = Env::with_repo(tempfile::tempdir().unwrap(), to.clone(), from.vars.clone());
    fs::write(from.path("pw"), "the off-site password\n").unwrap();
    let to2 = format!("s3://{}/third", second.bucket());
    let third = target(&from, &to2, &second.env());
    third.ok(&["init"]);
    let endpoint = second.endpoint();
    let out = from
        .cmd(&["copy", "--to", &to2, "--latest", "1", "--json"])
        .env("TRESOR_TO_AWS_ENDPOINT_URL", &endpoint)
        .env("TRESOR_TO_PASSWORD", "the off-site password")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(snapshot_count(&third, &[]), 1);
    assert!(third.ok(&["check", "--read-data"]).contains("no errors were found"));
}

#[test]
fn append_only_refuses_deletion_until_switched_off_with_the_password_twice() {
    let env = Env::new();
    env.ok(&["init", "--append-only"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "kept forever").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    env.ok(&["backup", src.to_str().unwrap()]);
    assert_eq!(
        env.fails(&["forget", "--keep-last", "1"], 1),
        "tresor: error: the repository is append-only: forget refused (see `tresor append-only`)\n"
    );
    assert_eq!(env.fails(&["prune"], 1), "tresor: error: the repository is append-only: prune refused (see `tresor append-only`)\n");
    fs::write(env.path("pw2"), "second key\n").unwrap();
    let out = env.cmd(&["key", "add"]).env("TRESOR_NEW_PASSWORD", "second key").output().unwrap();
    assert!(out.status.success());
    let keys = env.json(&["key", "list"]);
    let other = keys.as_array().unwrap().iter().find(|k| k["current"] == false).unwrap()["id"].as_str().unwrap().to_string();
    let err = env.fails(&["key", "remove", &other[..8]], 1);
    assert_eq!(err, "tresor: error: the repository is append-only: key remove refused (see `tresor append-only`)\n");
    // Refused before its new slot is written: the old one could not go, and both passwords opened the repository.
    let out = env.cmd(&["key", "passwd"]).env("TRESOR_NEW_PASSWORD", "third key").output().unwrap();
    let said = "tresor: error: the repository is append-only: key passwd refused (see `tresor append-only`)\n";
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stderr).as_ref()), (Some(1), said));
    assert_eq!(env.json(&["key", "list"]).as_array().unwrap().len(), 2, "no slot was added");
    fs::write(env.path("wrong"), "not the password\n").unwrap();
    let err = env.fails(&["append-only", "off", "--confirm-password-file", env.path("wrong").to_str().unwrap()], 1);
    assert_eq!(err, "tresor: error: the confirmation password does not open this repository; append-only mode stays on\n");
    assert_eq!(snapshot_count(&env, &[]), 2);
    env.ok(&["append-only", "off", "--confirm-password-file", env.path("pw").to_str().unwrap()]);
    env.ok(&["forget", "--keep-last", "1"]);
    assert_eq!(snapshot_count(&env, &[]), 1);
    env.ok(&["append-only", "on"]);
    env.fails(&["forget", "--keep-last", "1"], 1);
}

/// Every pack stored under `dir` (the S3 server's files) as if written
/// `ago`: the modification time the storage reports it under.
fn age_packs(dir: &Path, ago: Duration) {
    for e in fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            age_packs(&path, ago);
        } else if path.components().any(|c| c.as_os_str() == "data") {
            let then = std::time::SystemTime::now() - ago;
            fs::File::options().write(true).open(&path).unwrap().set_modified(then).unwrap();
        }
    }
}

#[test]
fn object_lock_keeps_prune_from_deleting_until_the_retention_ends() {
    // The bucket locks objects for 1 s; the repository is told an hour, so
    // prune must hold back by its own account after the server would allow.
    // Not 5 s, as it was: the first prune must come within the lock of packs
    // written two commands and a pause before it, and on a loaded machine
    // that took longer; the hour passes by the packs' stored times instead.
    let server = S3Server::with_object_lock(Duration::from_secs(1));
    let env = Env::s3(&server);
    env.ok(&["init", "--object-lock", "1h"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("old"), random_bytes(2 << 20, 5)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    fs::remove_file(src.join("old")).unwrap();
    fs::write(src.join("new"), random_bytes(1 << 20, 6)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(1500));
    env.ok(&["forget", "--keep-last", "1"]);
    let r = env.json(&["prune"]);
    assert!(r["locked_packs"].as_u64().unwrap() > 0 && r["deleted_packs"] == 0, "{r}");
    assert!(env.ok(&["check", "--read-data"]).contains("no errors were found"));
    age_packs(server.root(), Duration::from_secs(2 * 3600));
    let r = env.json(&["prune"]);
    assert!(r["deleted_packs"].as_u64().unwrap() > 0 && r["locked_packs"] == 0, "{r}");
    assert!(env.ok(&["check", "--read-data"]).contains("no errors were found"));
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    assert_eq!(inventory(&src), inventory(&restored(&env, "out", &src)));

    // A repository that does not know of the lock learns of it from the
    // server's refusal: the snapshot stays, and says why.
    let locked = S3Server::with_object_lock(Duration::from_secs(3600));
    let env = Env::s3(&locked);
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let out = env.run(&["forget", "latest"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tresor: 1 snapshot(s) are still under the storage's Object Lock and stay; forget them again once it expires\n"
    );
    assert_eq!(snapshot_count(&env, &[]), 1);
}

#[test]
fn bandwidth_limits_slow_uploads_and_downloads() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), random_bytes(3 << 20, 9)).unwrap();
    let started = Instant::now();
    env.ok(&["backup", src.to_str().unwrap(), "--limit-upload", "1M"]);
    assert!(started.elapsed() >= Duration::from_secs(2), "3 MiB at 1 MiB/s took {:?}", started.elapsed());
    let started = Instant::now();
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap(), "--limit-download", "2M", "--no-cache"]);
    assert!(started.elapsed() >= Duration::from_millis(1200), "3 MiB at 2 MiB/s took {:?}", started.elapsed());
    assert_eq!(inventory(&src), inventory(&restored(&env, "out", &src)));
    assert_eq!(
        env.fails(&["snapshots", "--limit-upload", "fast"], 1),
        "tresor: error: cannot read rate \"fast\" (bytes per second, e.g. 500K or 10M)\n"
    );
}

/// The source named another way (a trailing slash, a relative path, a
/// link) is the source still: each such copy doubled every snapshot in it.
/// A target without a password names the target's own variables.
#[test]
fn a_copy_into_the_source_itself_is_refused_however_it_is_named() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("d");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), "x\n").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let link = env.path("same");
    std::os::unix::fs::symlink(&env.repo, &link).unwrap();
    let relative = Path::new(&env.repo).strip_prefix(env.dir.path()).unwrap().to_str().unwrap().to_string();
    for to in [format!("{}/", env.repo), link.display().to_string(), relative] {
        let out = env
            .cmd(&["copy", "--to", &to, "--to-password-file", env.path("pw").to_str().unwrap()])
            .current_dir(env.dir.path())
            .output()
            .unwrap();
        assert_eq!(
            (out.status.code(), String::from_utf8_lossy(&out.stderr).as_ref()),
            (Some(1), "tresor: error: --to names the source repository itself\n"),
            "{to}"
        );
    }
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);
    let other = env.path("offsite");
    env.ok(&["init", "--repo", other.to_str().unwrap()]);
    let out = env.cmd(&["copy", "--to", other.to_str().unwrap()]).stdin(std::process::Stdio::null()).output().unwrap();
    let said = "tresor: error: no password given for the target repository: set TRESOR_TO_PASSWORD, use --to-password-file, or run on a terminal\n";
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stderr).as_ref()), (Some(1), said));
}

/// A legal hold binds the off-site copy too: the copy of a held snapshot
/// is held there (the copy's own retention removed it), once, with the
/// source's reason; a copy run again places no second hold.
#[test]
fn a_copy_carries_legal_holds_to_the_copies() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("d");
    fs::create_dir_all(&src).unwrap();
    for day in 1..=3 {
        fs::write(src.join("f"), format!("day {day}")).unwrap();
        env.ok(&["backup", src.to_str().unwrap(), "--time", &format!("2026-03-0{day}T12:00:00+00:00")]);
    }
    let oldest = env.json(&["snapshots"])[0]["id"].as_str().unwrap()[..8].to_string();
    env.ok(&["hold", &oldest, "--reason", "litigation 2026-17"]);
    let offsite = env.path("offsite");
    env.ok(&["init", "--repo", offsite.to_str().unwrap()]);
    let pw = env.path("pw");
    let said = env.ok(&["copy", "--to", offsite.to_str().unwrap(), "--to-password-file", pw.to_str().unwrap()]);
    assert!(said.contains("1 legal holds carried to the copies of held snapshots\n"), "{said}");
    let again = env.ok(&["copy", "--to", offsite.to_str().unwrap(), "--to-password-file", pw.to_str().unwrap()]);
    assert!(!again.contains("legal holds carried"), "{again}");
    let there = |args: &[&str]| env.json(&[&["--repo", offsite.to_str().unwrap()][..], args].concat());
    let holds = there(&["holds"]);
    let holds = holds.as_array().unwrap();
    assert_eq!(holds.len(), 1, "{holds:?}");
    let reason = holds[0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("litigation 2026-17 (held in the source repository by "), "{reason}");
    there(&["forget", "--keep-last", "1"]);
    let left = there(&["snapshots"]);
    let originals: Vec<&str> = left.as_array().unwrap().iter().map(|s| &s["original"].as_str().unwrap()[..8]).collect();
    assert!(originals.contains(&oldest.as_str()) && originals.len() == 2, "{originals:?}");
}
