//! What a restore that cannot finish tells: every entry it kept out is
//! accounted for, not only the directory that stopped it.

use super::*;
use crate::restic::Tmpfs;

/// A file of several chunks (longer than the largest chunk, 8 MiB), mostly
/// a hole: the restore creates it when the walk meets it, so it takes its
/// inode in walk order, and writes only its tail.
fn several_chunks(name: &str) -> Vec<u8> {
    [vec![0; (8 << 20) + 1], name.as_bytes().to_vec()].concat()
}

/// A target out of inodes partway: each directory the restore could not
/// make is reported once, with the count of the entries below it (files,
/// directories, links) it did not restore; its files count among the
/// files to restore, and only those on disk, byte for byte, as restored.
/// The walk goes by name, and takes one inode for each directory and file
/// (a file of one chunk would take its inode only when written, after the
/// walk): `a` and `b` with their files fit, `c` and `d` do not. Restoring
/// an included path, the directories above it are made as the walk
/// reaches it, and the first that does not fit is the one reported.
#[test]
fn a_directory_a_full_disk_keeps_out_is_reported_with_all_below_it() {
    use std::os::unix::fs::symlink;
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    let files = ["a/f1", "a/f2", "b/f1", "b/f2", "c/f1", "c/f2", "c/sub/g1", "c/sub/g2", "d/f1"];
    for file in files {
        fs::create_dir_all(src.join(file).parent().unwrap()).unwrap();
        fs::write(src.join(file), several_chunks(file)).unwrap();
    }
    symlink("f1", src.join("d/link")).unwrap();
    let id = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap().to_string();
    // The tmpfs root and the directories down to the source's.
    let above = src.components().count();
    let c_sub = format!("{}/c/sub", src.display());
    // Inodes, options, the files the snapshot has there, those restored, and each directory reported with its count.
    let cases = [
        ("whole", above + 6, vec![], 9, &["a/f1", "a/f2", "b/f1", "b/f2"][..], &[("c", 5), ("d", 2)][..]),
        ("included", above, vec!["--include", c_sub.as_str()], 2, &[][..], &[("c", 3)][..]),
    ];
    for (name, inodes, options, total, present, reported) in cases {
        let disk = Tmpfs::mount(env.path(name), &format!("size=16m,nr_inodes={inodes}"));
        let out = env.run(&[&["restore", &id, "--target", disk.0.to_str().unwrap(), "--json"][..], &options].concat());
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let dir = restored(&env, name, &src);
        let mut stderr: String = reported
            .iter()
            .map(|(d, n)| {
                format!("error: {}: No space left on device (os error 28); {n} entries below it not restored\n", dir.join(d).display())
            })
            .collect();
        let n = reported.len();
        stderr += &format!("tresor: error: {n} error{} during restore\n", if n == 1 { "" } else { "s" });
        assert_eq!((out.status.code(), String::from_utf8(out.stderr).unwrap()), (Some(1), stderr), "{name}");
        let on_disk: Vec<&str> = files.into_iter().filter(|f| fs::read(dir.join(f)).is_ok_and(|b| b == several_chunks(f))).collect();
        assert_eq!(on_disk, present, "{name}");
        assert_eq!(
            (summary["total_files"].as_u64(), summary["files_restored"].as_u64()),
            (Some(total), Some(present.len() as u64)),
            "{name}: {summary}"
        );
    }
}

/// A restore over a target replaces each file it writes, never writes
/// through it: a hard link from outside the target to a restored file keeps
/// the local edit it holds, and the restored path holds the snapshot's
/// content in a file of its own; a file of several chunks alike.
#[test]
fn a_restore_replaces_files_and_never_writes_through_a_hard_link() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("conf"), "from the snapshot\n").unwrap();
    fs::write(src.join("big"), several_chunks("big")).unwrap();
    let id = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap().to_string();
    let target = env.path("live");
    env.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    let live = restored(&env, "live", &src);
    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    for name in ["conf", "big"] {
        fs::write(live.join(name), format!("local edit of {name}\n")).unwrap();
        fs::hard_link(live.join(name), outside.join(name)).unwrap();
    }
    env.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(live.join("conf")).unwrap(), "from the snapshot\n");
    assert!(fs::read(live.join("big")).unwrap() == several_chunks("big"));
    for name in ["conf", "big"] {
        assert_eq!(fs::read_to_string(outside.join(name)).unwrap(), format!("local edit of {name}\n"), "written through the link");
        assert_ne!(fs::metadata(outside.join(name)).unwrap().ino(), fs::metadata(live.join(name)).unwrap().ino());
    }
    // A file found to hold the snapshot's content (`if-changed`) but with
    // another name outside is written anew too: its mode set in place
    // would be set on the outside name as well.
    use std::os::unix::fs::PermissionsExt;
    let private = outside.join("private");
    fs::write(
        &private,
        "from the snapshot
",
    )
    .unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(live.join("conf")).unwrap();
    fs::hard_link(&private, live.join("conf")).unwrap();
    env.ok(&["restore", &id, "--target", target.to_str().unwrap(), "--overwrite", "if-changed"]);
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!((mode(&private), mode(&live.join("conf"))), (0o600, 0o644));
    assert_ne!(fs::metadata(&private).unwrap().ino(), fs::metadata(live.join("conf")).unwrap().ino());
}

/// A filter that selects nothing, or a path the snapshot lacks, is an
/// error naming the snapshot and the paths it holds: `latest` is the
/// newest backup of any path, here a stream's, not the directory's.
#[test]
fn a_filter_that_selects_nothing_and_a_path_not_there_name_the_snapshot() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("app.conf"), "listen 8080\n").unwrap();
    let dir = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap()[..8].to_string();
    let stream =
        env.cmd(&["backup", "--stdin", "--stdin-filename", "app.dump", "--json"]).stdin(std::process::Stdio::null()).output().unwrap();
    assert!(stream.status.success(), "{stream:?}");
    let latest =
        env.json(&["snapshots"]).as_array().unwrap().iter().map(|s| s["short_id"].as_str().unwrap().to_string()).next_back().unwrap();
    assert_ne!(latest, dir);
    let target = env.path("restored");
    let fails = |args: &[&str]| {
        let out = env.run(args);
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
    };
    let at = src.to_str().unwrap();
    assert_eq!(
        fails(&["ls", "latest", at]),
        (Some(1), format!("tresor: error: path {at:?} is not in snapshot {latest} (a stdin backup, of no paths)\n"))
    );
    let selected = |id: &str, filters: &str, holds: &str| {
        format!("tresor: error: nothing in snapshot {id} is selected by {filters} ({holds}); nothing was restored\n")
    };
    let t = target.to_str().unwrap();
    assert_eq!(
        fails(&["restore", "latest", "--target", t, "--include", "*.conf"]),
        (Some(1), selected(&latest, "--include '*.conf'", "a stdin backup, of no paths"))
    );
    assert_eq!(
        fails(&["restore", &dir, "--target", t, "--include", "app.conf", "--exclude", "*"]),
        (Some(1), selected(&dir, "--include 'app.conf' --exclude '*'", &format!("its paths: {at}")))
    );
    env.ok(&["restore", &dir, "--target", t, "--include", "*.conf"]);
    assert_eq!(fs::read_to_string(restored(&env, "restored", &src).join("app.conf")).unwrap(), "listen 8080\n");
}

/// A new repository holding one backup of `sample_tree` at `src`.
pub(super) fn backed_up_sample(env: &Env) -> PathBuf {
    env.ok(&["init"]);
    let src = env.path("src");
    sample_tree(&src);
    env.ok(&["backup", src.to_str().unwrap()]);
    src
}

/// `--verify-only` checks every entry, not only the files' content: one
/// gone, a link pointing elsewhere, changed permission bits and (run as
/// root) a changed owner are each named.
#[test]
fn verify_only_names_every_entry_changed_since_the_restore() {
    use std::os::unix::fs::symlink;
    let env = Env::new();
    let src = backed_up_sample(&env);
    let out = env.path("out");
    let t = out.to_str().unwrap();
    env.ok(&["restore", "latest", "--target", t]);
    assert!(env.ok(&["restore", "latest", "--target", t, "--verify-only"]).starts_with("verified "));
    let at = restored(&env, "out", &src);
    let root = unsafe { libc::geteuid() } == 0;
    let mut differs = Vec::new();
    if root {
        std::os::unix::fs::chown(at.join("empty"), Some(1), Some(1)).unwrap();
        differs.push(format!("{}: owner 1:1, the snapshot has 0:0", at.join("empty").display()));
    }
    fs::remove_file(at.join("fifo")).unwrap();
    differs.push(format!("{}: No such file or directory (os error 2)", at.join("fifo").display()));
    fs::remove_file(at.join("link")).unwrap();
    symlink("/etc/shadow", at.join("link")).unwrap();
    differs.push(format!("{}: a link to /etc/shadow, the snapshot's points to sub/big.bin", at.join("link").display()));
    fs::set_permissions(at.join("sub/deeper/text.log"), fs::Permissions::from_mode(0o777)).unwrap();
    differs.push(format!("{}: mode 0777, the snapshot has 0644", at.join("sub/deeper/text.log").display()));
    let entries = env.ok(&["ls", "latest"]).lines().count();
    let err = env.fails(&["restore", "latest", "--target", t, "--verify-only"], 1);
    let mut expected: String = differs.iter().map(|d| format!("differs: {d}\n")).collect();
    expected +=
        &format!("tresor: error: {} of {entries} restored entries differ from the snapshot; first: {}\n", differs.len(), differs[0]);
    assert_eq!(err, expected);
}

/// A restore run again by a user who is not root, into a target whose
/// directory the first restore made read-only (the snapshot's 0555):
/// the file there cannot be unlinked and replaced, so it is rewritten in
/// place (it has no other name), and the restore succeeds as it did the
/// first time.
#[test]
fn a_restore_again_into_a_read_only_directory_rewrites_its_files() {
    use std::os::unix::fs::PermissionsExt;
    let env = crate::pitr::postgres_env();
    let Some(user) = env.user else { return eprintln!("needs root, to run tresor as another user") };
    let src = env.path("src");
    // Made by that user: the backup reads it, the restores write it.
    let script = format!("mkdir -p {s}/ro && echo kept > {s}/ro/f && chmod 0555 {s}/ro", s = src.display());
    let mut made = Command::new("setpriv");
    made.args([&format!("--reuid={user}"), &format!("--regid={user}"), "--init-groups", "--", "sh", "-c", &script]);
    assert!(made.status().unwrap().success());
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("t");
    for _ in 0..2 {
        env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    }
    let dir = restored(&env, "t", &src);
    assert_eq!(fs::metadata(dir.join("ro")).unwrap().permissions().mode() & 0o777, 0o555);
    assert_eq!(fs::read_to_string(dir.join("ro/f")).unwrap(), "kept\n");
}

/// A target that fills up names the first ten files it kept out, then
/// counts the rest in one line with their size, not one line each.
#[test]
fn a_full_target_names_ten_files_and_counts_the_rest() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for n in 0..40 {
        fs::write(src.join(format!("f{n:02}")), random_bytes(100 << 10, n)).unwrap();
    }
    let id = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap().to_string();
    let disk = Tmpfs::mount(env.path("small"), "size=1m");
    let out = env.run(&["restore", &id, "--target", disk.0.to_str().unwrap(), "--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept_out = 40 - summary["files_restored"].as_u64().unwrap();
    assert!(kept_out > 10, "{summary}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.iter().filter(|l| l.ends_with(": No space left on device (os error 28)")).count(), 10, "{stderr}");
    let more = format!(
        "error: … and {} more files ({:.1} MiB) not restored: the target is full",
        kept_out - 10,
        (kept_out - 10) as f64 * 0.09765625
    );
    assert_eq!((out.status.code(), &lines[10..]), (Some(1), &[more.as_str(), "tresor: error: 11 errors during restore"][..]), "{stderr}");
}
