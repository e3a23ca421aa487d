//! restic's habits: `latest` narrowed by host, tag and path, `SNAPSHOT:PATH`,
//! `snapshots --latest/--group-by`, `restore --overwrite/--delete`, and a
//! restore that failed saying so.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use super::{Env, random_bytes, restored};

/// Four snapshots of two folders from two hosts, one second apart:
///
/// | # | host | folder | tags       | a/data.txt |
/// |---|------|--------|------------|------------|
/// | 1 | w1   | A      | daily      | one        |
/// | 2 | w2   | A      | daily, web | two        |
/// | 3 | w1   | B      | web        | three      |
/// | 4 | w2   | B      | (none)     | four       |
struct Fleet {
    env: Env,
    a: PathBuf,
    b: PathBuf,
    ids: Vec<String>,
}

fn fleet() -> Fleet {
    let env = Env::new();
    env.ok(&["init"]);
    let (a, b) = (env.path("A"), env.path("B"));
    let mut ids = Vec::new();
    for (n, (host, dir, tags, text)) in
        [("w1", &a, &["daily"][..], "one"), ("w2", &a, &["daily", "web"], "two"), ("w1", &b, &["web"], "three"), ("w2", &b, &[], "four")]
            .into_iter()
            .enumerate()
    {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("data.txt"), text).unwrap();
        let time = format!("2025-01-01T00:00:0{}Z", n + 1);
        let mut args = vec!["backup", dir.to_str().unwrap(), "--host", host, "--time", &time];
        for t in tags {
            args.extend(["--tag", t]);
        }
        ids.push(env.json(&args)["snapshot_id"].as_str().unwrap().to_string());
    }
    Fleet { env, a, b, ids }
}

impl Fleet {
    /// Restore with `args` into a fresh directory: what came back, as
    /// (folder, content) of the one folder restored.
    fn restore(&self, target: &str, args: &[&str]) -> (&'static str, String) {
        let mut all = vec!["restore"];
        all.extend(args);
        let dir = self.env.path(target);
        all.extend(["--target", dir.to_str().unwrap()]);
        self.env.ok(&all);
        let (in_a, in_b) = (restored(&self.env, target, &self.a), restored(&self.env, target, &self.b));
        match (in_a.exists(), in_b.exists()) {
            (true, false) => ("A", fs::read_to_string(in_a.join("data.txt")).unwrap()),
            (false, true) => ("B", fs::read_to_string(in_b.join("data.txt")).unwrap()),
            other => panic!("restore {args:?} brought back A and B as {other:?}"),
        }
    }
}

#[test]
fn latest_is_narrowed_by_host_tag_and_path() {
    let f = fleet();
    assert_eq!(f.restore("t0", &["latest"]), ("B", "four".into()));
    assert_eq!(f.restore("t1", &["latest", "--host", "w1"]), ("B", "three".into()));
    assert_eq!(f.restore("t2", &["latest", "--tag", "daily"]), ("A", "two".into()));
    assert_eq!(f.restore("t3", &["latest", "--tag", "daily,web"]), ("A", "two".into()));
    assert_eq!(f.restore("t4", &["latest", "--tag", "daily", "--tag", "web"]), ("B", "three".into()));
    assert_eq!(f.restore("t5", &["latest", "--path", f.a.to_str().unwrap()]), ("A", "two".into()));
    assert_eq!(f.restore("t6", &["latest", "--host", "w1", "--path", f.a.to_str().unwrap()]), ("A", "one".into()));
    assert_eq!(f.restore("t7", &["latest", "--host", "w1", "--host", "w2", "--tag", "daily"]), ("A", "two".into()));
    assert_eq!(f.restore("t8", &[&f.ids[0][..8], "--host", "w2"]), ("A", "one".into()), "an id names its snapshot whatever the filters");
    let dumped = f.env.ok(&["dump", "latest", &format!("{}/data.txt", f.a.display()), "--host", "w1", "--path", f.a.to_str().unwrap()]);
    assert_eq!(dumped, "one");
    let listed = f.env.ok(&["ls", "latest", "--tag", "web", "--host", "w1"]);
    assert!(listed.lines().any(|l| l == format!("{}/data.txt", f.b.display())), "{listed}");
    let diff = f.env.ok(&["diff", &f.ids[0], "latest", "--host", "w1"]);
    assert!(diff.ends_with("2 added, 2 removed, 0 modified\n"), "{diff}");
}

#[test]
fn no_snapshot_matches_names_the_filter_in_one_line() {
    let f = fleet();
    let t = f.env.path("t").display().to_string();
    let err = |extra: &[&str]| {
        let mut args = vec!["restore", "latest", "--target", &t];
        args.extend(extra);
        f.env.fails(&args, 1)
    };
    assert_eq!(err(&["--host", "nosuchhost"]), "tresor: error: no snapshot matches host nosuchhost\n");
    assert_eq!(err(&["--tag", "monthly"]), "tresor: error: no snapshot matches tag monthly\n");
    assert_eq!(err(&["--path", "/nowhere"]), "tresor: error: no snapshot matches path /nowhere\n");
    assert_eq!(
        err(&["--host", "w1", "--tag", "daily,web", "--tag", "x"]),
        "tresor: error: no snapshot matches host w1, tag daily,web or x\n"
    );
    assert!(!f.env.path("t").exists(), "a refused restore writes nothing");
}

#[test]
fn a_folder_of_a_snapshot_by_latest_path_and_id_path() {
    let f = fleet();
    fs::create_dir_all(f.a.join("sub")).unwrap();
    fs::write(f.a.join("sub/deep.txt"), "deep").unwrap();
    f.env.ok(&["backup", f.a.to_str().unwrap(), "--host", "w3", "--time", "2025-01-01T00:00:09Z"]);
    let t = f.env.path("t");
    f.env.ok(&["restore", &format!("latest:{}", f.a.display()), "--target", t.to_str().unwrap()]);
    let mut names: Vec<String> = fs::read_dir(&t).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["data.txt", "sub"]);
    assert_eq!(fs::read_to_string(t.join("sub/deep.txt")).unwrap(), "deep");
    let by_id = f.env.path("by-id");
    f.env.ok(&["restore", &format!("{}:{}", &f.ids[1][..8], f.a.display()), "--target", by_id.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(by_id.join("data.txt")).unwrap(), "two");
    assert_eq!(f.env.ok(&["dump", &format!("latest:{}", f.a.display()), "sub/deep.txt"]), "deep");
    let listed = f.env.ok(&["ls", &format!("latest:{}/sub", f.a.display())]);
    assert_eq!(listed, format!("{}/sub/deep.txt\n", f.a.display()));
    let err = f.env.fails(&["restore", &format!("latest:{}/data.txt", f.a.display()), "--target", t.to_str().unwrap()], 1);
    assert_eq!(err, format!("tresor: error: {}/data.txt is not a folder of the snapshot\n", f.a.display()));
}

/// Each file of [`overwrite_target`]: its name, its bytes in the snapshot
/// (dated 2024-06-01) and in the target, and how much later the target's
/// is dated, in seconds. `sneaky.txt` has other bytes of the snapshot's
/// size and mtime.
pub(super) const OVERWRITTEN: [(&str, &str, &str, i64); 4] = [
    ("keep.txt", "snapshot keep", "local, newer than the snapshot", 3600),
    ("new.txt", "snapshot new", "local, older", -3600),
    ("same.txt", "same bytes", "same bytes", 60),
    ("sneaky.txt", "snapshot sneaky", "local sneaky!!!", 0),
];

/// Per `--overwrite` mode, the files the restore writes with other bytes
/// (same size and mtime count as the same content, as in restic), and
/// the files it restores and leaves as they were.
pub(super) const MODES: [(&str, &[&str], u64, u64); 4] = [
    ("always", &["keep.txt", "new.txt", "sneaky.txt"], 4, 0),
    ("never", &[], 0, 4),
    ("if-newer", &["new.txt"], 1, 3),
    ("if-changed", &["keep.txt", "new.txt"], 2, 2),
];

/// A snapshot of the files of [`OVERWRITTEN`] and a target where each
/// already exists in another state: the source and the folder of the
/// target it restores to.
pub(super) fn overwrite_target() -> (Env, PathBuf, PathBuf) {
    let env = Env::new();
    env.ok(&["init"]);
    let (src, dir) = (env.path("src"), restored(&env, "t", &env.path("src")));
    let write = |path: PathBuf, text: &str, later: i64| {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs((1_717_200_000 + later) as u64);
        fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
    };
    for (name, snapshot, _, _) in OVERWRITTEN {
        write(src.join(name), snapshot, 0);
    }
    env.ok(&["backup", src.to_str().unwrap()]);
    for (name, _, local, later) in OVERWRITTEN {
        write(dir.join(name), local, later);
    }
    (env, src, dir)
}

#[test]
fn overwrite_modes_decide_what_happens_to_files_that_exist() {
    for (mode, written, restored, skipped) in MODES {
        let (env, _, dir) = overwrite_target();
        let s = env.json(&["restore", "latest", "--target", env.path("t").to_str().unwrap(), "--overwrite", mode]);
        let read = |file: &str| fs::read_to_string(dir.join(file)).unwrap();
        let now: Vec<_> = OVERWRITTEN.iter().map(|f| (f.0, read(f.0))).collect();
        let expected: Vec<_> = OVERWRITTEN.iter().map(|f| (f.0, if written.contains(&f.0) { f.1 } else { f.2 }.to_string())).collect();
        assert_eq!(now, expected, "{mode}");
        assert_eq!((s["files_restored"].as_u64(), s["files_skipped"].as_u64()), (Some(restored), Some(skipped)), "{mode}");
        if mode == "if-changed" {
            let mtime = fs::metadata(dir.join("same.txt")).unwrap().modified().unwrap();
            assert_eq!(
                mtime,
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_717_200_000),
                "an unchanged file gets the snapshot's metadata"
            );
        }
    }
}

/// Links the target holds where the snapshot has a one-chunk file, a file
/// of several chunks and a directory are replaced, never restored through:
/// what they point at keeps its bytes and mode.
#[test]
fn links_in_the_target_are_replaced_never_written_through() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let big = random_bytes(8 << 20, 7);
    fs::write(src.join("small"), "snapshot small").unwrap();
    fs::write(src.join("big"), &big).unwrap();
    fs::write(src.join("sub/inner"), "snapshot inner").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let victim = env.path("victim");
    fs::create_dir_all(victim.join("sub")).unwrap();
    for name in ["small", "big", "sub/inner"] {
        fs::write(victim.join(name), "victim").unwrap();
        fs::set_permissions(victim.join(name), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let dir = restored(&env, "t", &src);
    fs::create_dir_all(&dir).unwrap();
    for name in ["small", "big", "sub"] {
        symlink(victim.join(name), dir.join(name)).unwrap();
    }
    let target = env.path("t").display().to_string();
    env.ok(&["restore", "latest", "--target", &target]);
    for name in ["small", "big", "sub/inner"] {
        let md = fs::metadata(victim.join(name)).unwrap();
        assert_eq!((fs::read_to_string(victim.join(name)).unwrap(), md.permissions().mode() & 0o7777), ("victim".into(), 0o600), "{name}");
    }
    for name in ["small", "big", "sub"] {
        assert!(!fs::symlink_metadata(dir.join(name)).unwrap().file_type().is_symlink(), "{name} is still a link");
    }
    assert_eq!(fs::read(dir.join("big")).unwrap(), big);
    assert_eq!(fs::read_to_string(dir.join("small")).unwrap(), "snapshot small");
    assert_eq!(fs::read_to_string(dir.join("sub/inner")).unwrap(), "snapshot inner");
}

/// The directories above an included path, which the walk does not
/// restore, are made as the walk makes its own: a link standing where one
/// goes is replaced, never followed, so nothing lands outside the target.
#[test]
fn ancestors_of_an_included_path_replace_links_never_follow_them() {
    use std::os::unix::fs::symlink;
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    for (file, text) in [("a/b/c", "snapshot c"), ("x/y/z", "snapshot z")] {
        fs::create_dir_all(src.join(file).parent().unwrap()).unwrap();
        fs::write(src.join(file), text).unwrap();
    }
    env.ok(&["backup", src.to_str().unwrap()]);
    let outside = env.path("outside");
    fs::create_dir_all(&outside).unwrap();
    let dir = restored(&env, "t", &src);
    fs::create_dir_all(dir.join("x")).unwrap();
    symlink(&outside, dir.join("a")).unwrap();
    symlink(&outside, dir.join("x/y")).unwrap();
    let target = env.path("t").display().to_string();
    let (c, z) = (format!("{}/a/b/c", src.display()), format!("{}/x/y/z", src.display()));
    let out = env.run(&["restore", "latest", "--target", &target, "--include", &c, "--include", &z]);
    assert_eq!((out.status.code(), String::from_utf8(out.stderr).unwrap()), (Some(0), String::new()));
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "something was restored through a link");
    for ancestor in ["a", "a/b", "x", "x/y"] {
        assert!(fs::symlink_metadata(dir.join(ancestor)).unwrap().is_dir(), "{ancestor} is not a directory");
    }
    assert_eq!(fs::read(dir.join("a/b/c")).unwrap(), b"snapshot c");
    assert_eq!(fs::read(dir.join("x/y/z")).unwrap(), b"snapshot z");
}

/// A file standing where the snapshot has a directory, an included path's
/// ancestor or a directory the walk restores, is left as it is (bytes and
/// mode) and nothing is restored into it; the restore says so, with the
/// entries it kept out (counted in the files to restore), and goes on.
#[test]
fn a_file_where_a_directory_goes_is_kept_and_reported() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(src.join("a/b/c"), "snapshot c").unwrap();
    fs::write(src.join("top"), "snapshot top").unwrap();
    let id = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap()[..8].to_string();
    let target = env.path("t");
    let dir = restored(&env, "t", &src);
    fs::create_dir_all(&dir).unwrap();
    // Below `a` the walk restores `b` and `c`, `c` alone with the include.
    for (in_the_way, include, restored, files, below) in
        [("a", Some("a/b/c"), 0, 1, "1 entry"), ("a/b", Some("a/b/c"), 0, 1, "1 entry"), ("a", None, 1, 2, "2 entries")]
    {
        let _ = fs::remove_file(dir.join("a"));
        let _ = fs::remove_dir_all(dir.join("a"));
        fs::create_dir_all(dir.join(in_the_way).parent().unwrap()).unwrap();
        fs::write(dir.join(in_the_way), "mine").unwrap();
        fs::set_permissions(dir.join(in_the_way), fs::Permissions::from_mode(0o600)).unwrap();
        let include = include.map(|p| format!("{}/{p}", src.display()));
        let mut args = vec!["restore", "latest", "--target", target.to_str().unwrap()];
        args.extend(include.iter().flat_map(|p| ["--include", p.as_str()]));
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(1), "{in_the_way}, {include:?}");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("restore of snapshot {id} to {} failed: {restored} of {files} files restored\n", target.display())
        );
        assert_eq!(
            String::from_utf8(out.stderr).unwrap(),
            format!(
                "error: {}: not a directory, so nothing is restored into it; {below} below it not restored\n\
                 tresor: error: 1 error during restore\n",
                dir.join(in_the_way).display()
            )
        );
        let md = fs::symlink_metadata(dir.join(in_the_way)).unwrap();
        assert_eq!((fs::read_to_string(dir.join(in_the_way)).unwrap(), md.permissions().mode() & 0o7777), ("mine".into(), 0o600));
    }
    assert_eq!(fs::read(dir.join("top")).unwrap(), b"snapshot top");
}

/// Many included files below one file in the way: the restore says so once
/// for each file in the way, with the count of the entries it keeps out
/// (not a line for each), and counts each as one error.
#[test]
fn a_file_in_the_way_of_many_included_files_is_reported_once() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    for file in ["a/b/c1.txt", "a/b/c2.txt", "a/b/c3.txt", "d/e/f1.txt", "d/e/f2.txt", "top.txt"] {
        fs::create_dir_all(src.join(file).parent().unwrap()).unwrap();
        fs::write(src.join(file), file).unwrap();
    }
    let id = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap()[..8].to_string();
    let target = env.path("t");
    let dir = restored(&env, "t", &src);
    fs::create_dir_all(dir.join("d")).unwrap();
    let mine = random_bytes(4096, 3);
    for in_the_way in ["a", "d/e"] {
        fs::write(dir.join(in_the_way), &mine).unwrap();
    }
    let out = env.run(&["restore", "latest", "--target", target.to_str().unwrap(), "--include", "*.txt"]);
    assert_eq!(
        (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap()),
        (
            Some(1),
            format!("restore of snapshot {id} to {} failed: 1 of 6 files restored\n", target.display()),
            format!(
                "error: {}: not a directory, so nothing is restored into it; 3 entries below it not restored\n\
                 error: {}: not a directory, so nothing is restored into it; 2 entries below it not restored\n\
                 tresor: error: 2 errors during restore\n",
                dir.join("a").display(),
                dir.join("d/e").display()
            )
        )
    );
    for in_the_way in ["a", "d/e"] {
        assert_eq!(fs::read(dir.join(in_the_way)).unwrap(), mine, "{in_the_way}");
    }
    assert_eq!(fs::read(dir.join("top.txt")).unwrap(), b"top.txt");
}

/// `--delete` never lists or deletes through a link: an included path the
/// snapshot lacks, below a directory the walk passes through but does not
/// restore, which the target holds as a link (or below a link above it),
/// is beyond the target. The link is left as it is. Links within the
/// target are deleted as links.
#[test]
fn delete_never_reaches_through_a_link() {
    use std::os::unix::fs::symlink;
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(src.join("d1")).unwrap();
    let id = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap()[..8].to_string();
    let target = env.path("t");
    let dir = restored(&env, "t", &src);
    let gone = format!("{}/d1/gone", src.display());
    // The repro (T/src/d1 a link), then a link one above it (T/src).
    for (link, outside) in [(dir.join("d1"), env.path("outside")), (dir.clone(), env.path("outside2").join("d1"))] {
        fs::create_dir_all(outside.join("gone")).unwrap();
        fs::write(outside.join("gone/v"), "not the target's").unwrap();
        let _ = fs::remove_file(&dir);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        symlink(if link == dir { outside.parent().unwrap() } else { &outside }, &link).unwrap();
        let out = env.run(&["restore", "latest", "--target", target.to_str().unwrap(), "--delete", "--include", &gone]);
        assert_eq!(
            (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap()),
            (Some(0), format!("restored snapshot {id} to {}: 0 files, 0 dirs, 0 B\n", target.display()), String::new()),
            "{link:?}"
        );
        assert_eq!(fs::read(outside.join("gone/v")).unwrap(), b"not the target's", "{link:?}");
        assert!(fs::symlink_metadata(&link).unwrap().is_symlink(), "{link:?} was not left");
    }
    // Within the target, a link is deleted as a link: gone itself, or one inside it.
    let _ = fs::remove_file(&dir);
    fs::create_dir_all(dir.join("d1")).unwrap();
    let outside = env.path("outside3");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("v"), "not the target's").unwrap();
    for link in [dir.join("d1/gone"), dir.join("d1/gone/l")] {
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        symlink(&outside, &link).unwrap();
        let out = env.run(&["restore", "latest", "--target", target.to_str().unwrap(), "--delete", "--include", &gone]);
        assert_eq!(
            (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap()),
            (Some(0), format!("restored snapshot {id} to {}: 0 files, 0 dirs, 0 B; 1 deleted\n", target.display()), String::new()),
            "{link:?}"
        );
        assert!(fs::symlink_metadata(dir.join("d1/gone")).is_err(), "{link:?}");
        assert_eq!(fs::read(outside.join("v")).unwrap(), b"not the target's", "{link:?}");
    }
}

#[test]
fn delete_removes_what_the_snapshot_lacks_within_what_is_restored() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(src.join("conf")).unwrap();
    fs::write(src.join("conf/app.conf"), "x=1").unwrap();
    fs::write(src.join("readme"), "hi").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("t").display().to_string();
    let dir = restored(&env, "t", &src);
    fs::create_dir_all(dir.join("conf/old.d")).unwrap();
    fs::write(dir.join("conf/old.d/a.conf"), "stale").unwrap();
    fs::write(dir.join("conf/stale.conf"), "stale").unwrap();
    fs::write(dir.join("notes"), "mine").unwrap();
    let s = env.json(&["restore", "latest", "--target", &target, "--delete", "--include", &format!("{}/conf", src.display())]);
    assert_eq!(s["files_deleted"], 2, "{s}");
    assert_eq!(super::inventory(&dir).keys().cloned().collect::<Vec<_>>(), ["conf", "conf/app.conf", "notes"]);
    let out = env.ok(&["restore", "latest", "--target", &target, "--delete"]);
    assert!(out.ends_with("; 1 deleted\n"), "{out}");
    assert_eq!(super::inventory(&dir).keys().cloned().collect::<Vec<_>>(), ["conf", "conf/app.conf", "readme"]);
}

/// `--delete` removes only what the filters select: nothing at or below
/// an excluded path, whether a directory (`logs`) or a glob (`*.log`)
/// names it, is the restore's, not even inside a directory the snapshot
/// lacks and the rest of which goes (`gone`). `--preview` lists just what goes.
#[test]
fn delete_leaves_what_is_excluded_alone() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    for (file, text) in [("a/keep", "k"), ("logs/app", "snapshot log")] {
        fs::create_dir_all(src.join(file).parent().unwrap()).unwrap();
        fs::write(src.join(file), text).unwrap();
    }
    let id = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap()[..8].to_string();
    let target = env.path("t");
    let (stale, mine) = (["a/stale", "extra", "gone/f"], ["a/x.log", "gone/logs/kept", "logs/mine", "logs/sub/deep"]);
    for file in stale.iter().chain(&mine) {
        fs::create_dir_all(target.join(file).parent().unwrap()).unwrap();
        fs::write(target.join(file), file).unwrap();
    }
    let before = super::inventory(&target);
    let spec = format!("latest:{}", src.display());
    let args = ["restore", spec.as_str(), "--target", target.to_str().unwrap(), "--delete", "--exclude", "logs", "--exclude", "*.log"];
    assert_eq!(
        env.ok(&[&args[..], &["--preview"]].concat()),
        format!(
            "+    a/keep\n-    a/stale\n-    extra\n-    gone/f\n1 added, 0 changed, 3 removed, 0 not restorable in {} (preview: nothing changed)\n",
            target.display()
        )
    );
    assert_eq!(env.ok(&args), format!("restored snapshot {id} to {}: 1 files, 1 dirs, 1 B; 3 deleted\n", target.display()));
    let after = super::inventory(&target);
    let gone: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).cloned().collect();
    assert_eq!(gone, stale);
    for file in mine {
        assert_eq!((after.get(file), fs::read(target.join(file)).unwrap()), (before.get(file), file.as_bytes().to_vec()), "{file}");
    }
    assert_eq!(fs::read(target.join("a/keep")).unwrap(), b"k");
}

/// A tmpfs with the given limits, unmounted however the test ends.
pub(super) struct Tmpfs(pub(super) PathBuf);

impl Tmpfs {
    pub(super) fn mount(at: PathBuf, limits: &str) -> Tmpfs {
        fs::create_dir_all(&at).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", limits, "tmpfs"]).arg(&at).output().unwrap();
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A disk that fills up fails the restore, naming the file that did not
/// fit; what fitted is restored. Out of bytes and out of inodes are two
/// cases: which of two files meets a disk full of bytes first depends on
/// which fetch the restore finishes first, while a file's inode is taken in
/// a fixed order (a file of several chunks when the walk meets it, a
/// one-chunk file at its only write). big.bin is larger than the largest
/// chunk, so it has several whatever the repository's chunker seed: at
/// 3 MiB it was now and then one chunk, and then which file met the last
/// inode depended on which fetch finished first.
#[test]
fn a_restore_onto_a_full_disk_ends_saying_it_failed() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("small.txt"), "fits").unwrap();
    let big = random_bytes(9 << 20, 5);
    fs::write(src.join("big.bin"), &big).unwrap();
    let id = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap()[..8].to_string();
    let full = |disk: &Tmpfs, args: &[&str], restored: usize, files: usize, failed: &str| {
        let out = env.run(&[&["restore", "latest", "--target", disk.0.to_str().unwrap()], args].concat());
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout, format!("restore of snapshot {id} to {} failed: {restored} of {files} files restored\n", disk.0.display()));
        let failed = super::restored(&env, disk.0.file_name().unwrap().to_str().unwrap(), &src).join(failed);
        assert_eq!(
            String::from_utf8(out.stderr).unwrap(),
            format!("error: {}: No space left on device (os error 28)\ntresor: error: 1 error during restore\n", failed.display())
        );
    };
    let bytes = Tmpfs::mount(env.path("bytes"), "size=1m");
    full(&bytes, &["--include", &format!("{}/big.bin", src.display())], 0, 1, "big.bin");
    // The root, the directories down to the source's, and big.bin.
    let inodes = format!("size=16m,nr_inodes={}", src.components().count() + 1);
    let few = Tmpfs::mount(env.path("inodes"), &inodes);
    full(&few, &[], 1, 2, "small.txt");
    assert_eq!(fs::read(restored(&env, "inodes", &src).join("big.bin")).unwrap(), big);
}

#[test]
fn snapshots_latest_and_group_by() {
    let f = fleet();
    fs::write(f.a.join("data.txt"), "five").unwrap();
    let fifth = f.env.json(&["backup", f.a.to_str().unwrap(), "--host", "w1", "--time", "2025-01-01T00:00:05Z"]);
    let ids = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let latest = f.env.json(&["snapshots", "--latest", "1"]);
    assert_eq!(ids(&latest), [&f.ids[1], &f.ids[2], &f.ids[3], fifth["snapshot_id"].as_str().unwrap()]);
    let grouped = f.env.json(&["snapshots", "--group-by", "host"]);
    let shape: Vec<(serde_json::Value, Vec<String>)> =
        grouped.as_array().unwrap().iter().map(|g| (g["group_key"].clone(), ids(&g["snapshots"]))).collect();
    let fifth = fifth["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(
        shape,
        [
            (serde_json::json!({"hostname": "w1", "paths": null, "tags": null}), vec![f.ids[0].clone(), f.ids[2].clone(), fifth.clone()]),
            (serde_json::json!({"hostname": "w2", "paths": null, "tags": null}), vec![f.ids[1].clone(), f.ids[3].clone()]),
        ]
    );
    let by_paths = f.env.json(&["snapshots", "--group-by", "host,paths", "--latest", "1", "--tag", "web"]);
    let keys: Vec<_> = by_paths.as_array().unwrap().iter().map(|g| (g["group_key"].clone(), ids(&g["snapshots"]))).collect();
    assert_eq!(
        keys,
        [
            (serde_json::json!({"hostname": "w2", "paths": [f.a.display().to_string()], "tags": null}), vec![f.ids[1].clone()]),
            (serde_json::json!({"hostname": "w1", "paths": [f.b.display().to_string()], "tags": null}), vec![f.ids[2].clone()]),
        ]
    );
    let text = f.env.ok(&["snapshots", "--group-by", "host", "--host", "w2"]);
    let heads: Vec<&str> = text.lines().filter(|l| l.starts_with("snapshots for") || l.ends_with(" snapshots")).collect();
    assert_eq!(heads, ["snapshots for (host [w2]):", "2 snapshots"]);
}
