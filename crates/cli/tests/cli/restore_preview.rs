//! `restore --preview` against the restore it previews: each test runs
//! both on copies of one target and asserts they agree.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::Env;
use super::restic::{MODES, overwrite_target};

/// `--preview --overwrite MODE` lists as changed exactly the files the
/// restore then writes with other bytes, and nothing as added.
#[test]
fn a_preview_changes_only_what_overwrite_lets_the_restore_change() {
    let (env, src, dir) = overwrite_target();
    let spec = format!("latest:{}", src.display());
    for (mode, written, _, _) in MODES {
        let (promised, done, _) = previewed_and_done(&env, &[&spec, "--overwrite", mode], &dir, mode);
        assert_eq!(promised, done, "{mode}");
        assert_eq!((promised.changed, promised.added), (written.iter().map(|c| c.to_string()).collect(), vec![]), "{mode}");
    }
}

/// What `restore --preview` lists, or what a restore did to its target as
/// the preview lists it, each path relative to the target, sorted.
#[derive(Debug, PartialEq)]
struct Listed {
    /// Files the target did not have.
    added: Vec<String>,
    /// Files it had with other content (or as a link).
    changed: Vec<String>,
    /// What went from it, all below a directory that went with it.
    removed: Vec<String>,
    /// The restore's count of those.
    deleted: u64,
    /// Where the restore reported an error.
    unrestorable: Vec<String>,
}

/// `restore SPEC.. --target` previewed on one copy of `target` and done on
/// another (`cp -a`: times and links kept), both named after `name`: what
/// the preview listed, what the restore did, and where it did it.
fn previewed_and_done(env: &Env, args: &[&str], target: &Path, name: &str) -> (Listed, Listed, PathBuf) {
    let copy = |to: String| {
        let copy = env.path(&to);
        let out = Command::new("cp").arg("-a").arg(target).arg(&copy).output().unwrap();
        assert!(out.status.success(), "cp: {}", String::from_utf8_lossy(&out.stderr));
        copy
    };
    let (seen, done) = (copy(format!("{name}-preview")), copy(format!("{name}-restore")));
    let run = |at: &Path, extra: &[&str]| env.run(&[&["restore"][..], args, &["--target", at.to_str().unwrap(), "--json"], extra].concat());
    let p = run(&seen, &["--preview"]);
    assert!(p.status.success(), "preview: {}", String::from_utf8_lossy(&p.stderr));
    let p: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    let list = |key: &str| {
        let mut v: Vec<String> = p[key].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
        v.sort();
        v
    };
    let (removed, mut unrestorable) = (list("removed"), list("unrestorable"));
    // A damaged directory is where the restore reports an error too.
    unrestorable.extend(p["damaged"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap().to_string()));
    unrestorable.sort();
    let promised = Listed { added: list("added"), changed: list("changed"), deleted: removed.len() as u64, removed, unrestorable };
    let before = super::inventory(&done);
    let out = run(&done, &[]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let after = super::inventory(&done);
    // The file's type and content, not its metadata.
    let what = |v: &String| v.split(" mode=").next().unwrap().to_string();
    let file = |k: &String| after[k].starts_with("file ");
    let gone = |k: &String| !after.contains_key(k);
    let prefix = format!("{}/", done.display());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let mut unrestorable: Vec<String> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("error: ")?.strip_prefix(&prefix)?.split_once(": ").map(|(path, _)| path.to_string()))
        .collect();
    unrestorable.sort();
    let did = Listed {
        added: after.keys().filter(|k| !before.contains_key(*k) && file(k)).cloned().collect(),
        changed: after.keys().filter(|k| before.get(*k).is_some_and(|b| file(k) && what(b) != what(&after[*k]))).cloned().collect(),
        removed: before.keys().filter(|k| gone(k) && k.rsplit_once('/').is_none_or(|(up, _)| !gone(&up.to_string()))).cloned().collect(),
        deleted: summary["files_deleted"].as_u64().unwrap(),
        unrestorable,
    };
    assert_eq!(out.status.code(), Some(if did.unrestorable.is_empty() { 0 } else { 1 }), "{stderr}");
    (promised, did, done)
}

/// A directory damaged in the repository: the preview names it, as the
/// restore then reports it, and with `--delete` neither removes what the
/// target holds there.
#[test]
fn a_preview_names_a_damaged_directory_as_the_restore_does() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    super::repair::write_tree(&src, &[("a/f", b"a"), ("b/f", b"b")]);
    env.ok(&["backup", src.to_str().unwrap()]);
    super::repair::damage_tree(&env, "latest", &src.join("b"));
    let target = env.path("target");
    fs::create_dir_all(target.join("b")).unwrap();
    fs::write(target.join("b/held"), "held").unwrap();
    fs::write(target.join("extra"), "not in the snapshot").unwrap();
    let spec = format!("latest:{}", src.display());
    let (promised, done, at) = previewed_and_done(&env, &[&spec, "--delete", "--no-cache"], &target, "damaged");
    assert_eq!(promised, done);
    assert_eq!((done.added, done.removed, done.unrestorable), (vec!["a/f".to_string()], vec!["extra".to_string()], vec!["b".to_string()]));
    assert_eq!(fs::read(at.join("b/held")).unwrap(), b"held");
}

/// `--preview --delete` lists what `--delete` removes: never anything
/// beyond a link to outside the target. A link the snapshot lacks is
/// removed as a link; one where it has a directory is replaced by it.
#[test]
fn a_preview_of_delete_never_lists_through_a_link() {
    use std::os::unix::fs::symlink;
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::write(src.join("keep/f"), "snapshot f").unwrap();
    fs::write(src.join("readme"), "hi").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("t");
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("readme"), "hi").unwrap();
    for name in ["keep", "gone"] {
        let outside = env.path(&format!("outside-{name}"));
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("v"), "not the target's").unwrap();
        symlink(&outside, target.join(name)).unwrap();
    }
    let spec = format!("latest:{}", src.display());
    let args = ["restore", spec.as_str(), "--target", target.to_str().unwrap(), "--delete"];
    assert_eq!(
        env.ok(&[&args[..], &["--preview"]].concat()),
        format!(
            "+    keep/f\n-    gone\n1 added, 0 changed, 1 removed, 0 not restorable in {} (preview: nothing changed)\n",
            target.display()
        )
    );
    let done = env.json(&args);
    assert_eq!((done["files_restored"].as_u64(), done["files_deleted"].as_u64()), (Some(2), Some(1)), "{done}");
    assert_eq!(super::inventory(&target).keys().cloned().collect::<Vec<_>>(), ["keep", "keep/f", "readme"]);
    for name in ["keep", "gone"] {
        assert_eq!(fs::read(env.path(&format!("outside-{name}/v"))).unwrap(), b"not the target's", "{name}");
    }
}

/// `--preview` with `--include` and `--exclude` says what the restore does
/// with them: it adds and changes only what they select and, with
/// `--delete`, removes only within it, a directory that goes whole as one
/// entry, as the restore counts it, and within one that keeps what is
/// excluded what goes; what they leave out stays.
#[test]
fn a_preview_with_filters_lists_only_what_they_select() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(src.join("conf")).unwrap();
    for (file, text) in [("conf/app.conf", "x=1"), ("conf/trace.log", "snapshot log"), ("readme", "hi")] {
        fs::write(src.join(file), text).unwrap();
    }
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("t");
    let mine = [("conf/debug.log", "mine"), ("conf/older.d/keep.log", "mine"), ("notes", "mine"), ("readme", "mine")];
    let stale = [
        ("conf/old.d/a.conf", "stale"),
        ("conf/old.d/sub/b.conf", "stale"),
        ("conf/older.d/a.conf", "stale"),
        ("conf/stale.conf", "stale"),
    ];
    for (file, text) in stale.iter().chain(&mine) {
        fs::create_dir_all(target.join(file).parent().unwrap()).unwrap();
        fs::write(target.join(file), text).unwrap();
    }
    let spec = format!("latest:{}", src.display());
    let args = [spec.as_str(), "--delete", "--include", "/conf", "--exclude", "*.log"];
    let preview = [&["restore"][..], &args, &["--target", target.to_str().unwrap(), "--preview"]].concat();
    assert_eq!(
        env.ok(&preview),
        format!(
            "+    conf/app.conf\n-    conf/old.d\n-    conf/older.d/a.conf\n-    conf/stale.conf\n\
             1 added, 0 changed, 3 removed, 0 not restorable in {} (preview: nothing changed)\n",
            target.display()
        )
    );
    let (promised, did, done) = previewed_and_done(&env, &args, &target, "filtered");
    assert_eq!(promised, did);
    assert_eq!(did.deleted, 3);
    assert_eq!(
        super::inventory(&done).keys().cloned().collect::<Vec<_>>(),
        ["conf", "conf/app.conf", "conf/debug.log", "conf/older.d", "conf/older.d/keep.log", "notes", "readme"]
    );
    assert_eq!(fs::read(done.join("conf/app.conf")).unwrap(), b"x=1");
    for (file, text) in mine {
        assert_eq!(fs::read(done.join(file)).unwrap(), text.as_bytes(), "{file}");
    }
}

/// What the target holds where the restore cannot restore is not promised
/// as added or changed: a file where the snapshot has a directory (itself,
/// or one above an included path), into which nothing is restored, and a
/// directory where it has a file, which is not replaced. The preview lists
/// each (`!`) where the restore reports an error, and what `--delete`
/// removes in that directory.
#[test]
fn a_preview_names_what_stands_in_the_restores_way() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    for file in ["a/b/c", "a/d", "ok", "top", "x/y/z"] {
        fs::create_dir_all(src.join(file).parent().unwrap()).unwrap();
        fs::write(src.join(file), file).unwrap();
    }
    env.ok(&["backup", src.to_str().unwrap()]);
    let spec = format!("latest:{}", src.display());
    let cases = [
        (
            "whole",
            &[spec.as_str(), "--delete"][..],
            "+    ok\n+    x/y/z\n-    top/inner\n!    a\n!    top\n2 added, 0 changed, 1 removed, 2",
        ),
        ("included", &[spec.as_str(), "--include", "/x/y/z"], "!    x\n0 added, 0 changed, 0 removed, 1"),
    ];
    for (name, args, said) in cases {
        let target = env.path(name);
        fs::create_dir_all(target.join("top")).unwrap();
        for (file, text) in [("a", "mine"), ("top/inner", "mine")] {
            fs::write(target.join(file), text).unwrap();
        }
        if name == "included" {
            fs::write(target.join("x"), "mine").unwrap();
        }
        let preview = [&["restore"][..], args, &["--target", target.to_str().unwrap(), "--preview"]].concat();
        assert_eq!(env.ok(&preview), format!("{said} not restorable in {} (preview: nothing changed)\n", target.display()), "{name}");
        let (promised, did, done) = previewed_and_done(&env, args, &target, name);
        assert_eq!(promised, did, "{name}");
        assert_eq!(fs::read(done.join("a")).unwrap(), b"mine", "{name}");
    }
}

/// `--preview` sees the target as the restore does, never through a link:
/// a file below a link to a directory is new (the restore makes the link a
/// directory of its own), a link where the snapshot has a file is changed
/// (the restore replaces it), whatever they point at holds. The target
/// itself may be a link, which both follow.
#[test]
fn a_preview_never_compares_through_a_link() {
    use std::os::unix::fs::symlink;
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let files = [("same", "same"), ("small", "snapshot small"), ("sub/inner", "snapshot inner")];
    for (file, text) in files {
        fs::write(src.join(file), text).unwrap();
    }
    env.ok(&["backup", src.to_str().unwrap()]);
    // Outside the target: the snapshot's bytes behind one link, others behind the other.
    let victim = env.path("victim");
    fs::create_dir_all(victim.join("sub")).unwrap();
    let outside = [("small", "snapshot small"), ("sub/inner", "victim inner")];
    for (file, text) in outside {
        fs::write(victim.join(file), text).unwrap();
    }
    let (real, target) = (env.path("real"), env.path("t"));
    fs::create_dir_all(&real).unwrap();
    symlink(&real, &target).unwrap();
    fs::write(real.join("same"), "same").unwrap();
    for name in ["small", "sub"] {
        symlink(victim.join(name), real.join(name)).unwrap();
    }
    let spec = format!("latest:{}", src.display());
    let args = ["restore", spec.as_str(), "--target", target.to_str().unwrap()];
    let preview = [&args[..], &["--preview"]].concat();
    let said = |text: &str| format!("{text} in {} (preview: nothing changed)\n", target.display());
    assert_eq!(env.ok(&preview), said("+    sub/inner\nM    small\n1 added, 1 changed, 0 removed, 0 not restorable"));
    let done = env.json(&args);
    assert_eq!(done["files_restored"].as_u64(), Some(3), "{done}");
    for name in ["small", "sub"] {
        assert!(!fs::symlink_metadata(real.join(name)).unwrap().is_symlink(), "{name} is still a link");
    }
    for (file, text) in files {
        assert_eq!(fs::read(real.join(file)).unwrap(), text.as_bytes(), "{file}");
    }
    for (file, text) in outside {
        assert_eq!(fs::read(victim.join(file)).unwrap(), text.as_bytes(), "{file}");
    }
    // The restore did all the preview said: nothing is left to add or change.
    assert_eq!(env.ok(&preview), said("0 added, 0 changed, 0 removed, 0 not restorable"));
}

/// Every path of a hard-linked file obeys `--overwrite`, the first as the
/// later ones: `never` keeps each file the target holds, and a path it
/// lacks gets the snapshot's bytes, never a link to a kept file that holds
/// other bytes. A path written links to the first that holds the
/// snapshot's content. The preview says the same.
#[test]
fn every_path_of_a_hard_linked_file_obeys_overwrite() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), "snapshot bytes").unwrap();
    for name in ["b", "c"] {
        fs::hard_link(src.join("a"), src.join(name)).unwrap();
    }
    env.ok(&["backup", src.to_str().unwrap()]);
    let spec = format!("latest:{}", src.display());
    // What the target holds before, and each file's bytes after `--overwrite never`.
    let cases = [
        ("all-there", &[("a", "mine a"), ("b", "mine b"), ("c", "mine c")][..], ["mine a", "mine b", "mine c"], (0, 3)),
        ("first-there", &[("a", "mine a")][..], ["mine a", "snapshot bytes", "snapshot bytes"], (2, 1)),
    ];
    for (name, held, after, (restored, skipped)) in cases {
        let target = env.path(name);
        fs::create_dir_all(&target).unwrap();
        for (file, text) in held {
            fs::write(target.join(file), text).unwrap();
        }
        let (promised, did, done) = previewed_and_done(&env, &[&spec, "--overwrite", "never"], &target, name);
        assert_eq!(promised, did, "{name}");
        let read = |file: &str| fs::read_to_string(done.join(file)).unwrap();
        assert_eq!(["a", "b", "c"].map(read), after, "{name}");
        let inode = |file: &str| fs::metadata(done.join(file)).unwrap().ino();
        assert_ne!(inode("a"), inode("b"), "{name}: a kept file is never linked");
        assert_eq!(inode("b") == inode("c"), name == "first-there", "{name}: the paths written share one inode");
        let s = env.json(&["restore", &spec, "--target", target.to_str().unwrap(), "--overwrite", "never"]);
        assert_eq!((s["files_restored"].as_u64(), s["files_skipped"].as_u64()), (Some(restored), Some(skipped)), "{name}: {s}");
    }
}

/// `--dry-run` with a directory target is the preview: it restored, and
/// with `--delete` deleted, for real (it is a Kubernetes restore's flag,
/// and was ignored). The other Kubernetes-only flags are refused there.
#[test]
fn a_dry_run_into_a_directory_changes_nothing() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    super::repair::write_tree(&src, &[("a", b"from the snapshot")]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("live");
    super::repair::write_tree(&target, &[("a", b"production v2"), ("b.db", b"keep")]);
    let spec = format!("latest:{}", src.display());
    let out = env.ok(&["restore", &spec, "--target", target.to_str().unwrap(), "--dry-run", "--delete"]);
    let last = format!("0 added, 1 changed, 1 removed, 0 not restorable in {} (preview: nothing changed)\n", target.display());
    assert!(out.ends_with(&last), "{out}");
    assert_eq!(
        (fs::read(target.join("a")).unwrap(), fs::read(target.join("b.db")).unwrap()),
        (b"production v2".to_vec(), b"keep".to_vec())
    );
    let refused = env.run(&["restore", &spec, "--target", target.to_str().unwrap(), "--rehearsal"]);
    let said = "tresor: error: --rehearsal works with --to k8s:// only\n";
    assert_eq!((refused.status.code(), String::from_utf8(refused.stderr).unwrap().as_str()), (Some(1), said));
}
