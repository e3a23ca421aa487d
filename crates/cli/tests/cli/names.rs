//! What listings print: names that are not UTF-8, as Linux allows them,
//! listed, found and compared in text and JSON (with U+FFFD where a byte
//! is no UTF-8) and dumped by the name as it is on disk; link targets;
//! tables; a reader that stops early.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::*;

#[test]
fn names_that_are_not_utf8_are_listed_found_compared_and_dumped() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let name = OsStr::from_bytes(b"inv\xff\xfe");
    fs::write(src.join(name), "not UTF-8\n").unwrap();
    let at = src.to_str().unwrap();
    let first = env.json(&["backup", at])["snapshot_id"].as_str().unwrap().to_string();
    fs::write(src.join(name), "changed\n").unwrap();
    let second = env.json(&["backup", at])["snapshot_id"].as_str().unwrap().to_string();
    let lossy = format!("{at}/inv\u{fffd}\u{fffd}");
    let lines = |args: &[&str]| -> Vec<serde_json::Value> {
        env.ok(&[args, &["--json"]].concat()).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    assert!(lines(&["ls", &second, at]).iter().any(|n| n["path"] == lossy.as_str()), "ls --json");
    assert!(lines(&["find", "inv*"]).iter().any(|n| n["path"] == lossy.as_str()), "find --json");
    assert!(lines(&["diff", &first, &second]).iter().any(|c| c["path"] == lossy.as_str() && c["modifier"] == "M"), "diff --json");
    assert!(env.ok(&["ls", &second, at]).lines().any(|l| l == lossy), "ls");
    let dumped = env.cmd(&["dump", &second]).arg(src.join(name)).output().unwrap();
    assert_eq!((dumped.status.code(), String::from_utf8_lossy(&dumped.stdout).as_ref()), (Some(0), "changed\n"));
}

/// A listing piped into a reader that stops early (`| head -1`) ends
/// quietly by SIGPIPE, as `cat` does, not with a panic and exit 101.
#[test]
fn a_listing_whose_reader_stops_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for n in 0..3000 {
        fs::write(src.join(format!("file-with-a-long-name-{n:05}")), "x").unwrap();
    }
    env.ok(&["backup", src.to_str().unwrap()]);
    let mut ls = env.cmd(&["ls", "latest"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    drop(ls.stdout.take());
    let out = ls.wait_with_output().unwrap();
    assert_eq!((out.status.signal(), String::from_utf8_lossy(&out.stderr).as_ref()), (Some(libc::SIGPIPE), ""));
}

/// `ls --long` shows where a symbolic link points, as `ls -l` does.
#[test]
fn a_long_listing_shows_where_a_link_points() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/app.conf"), "listen 8080\n").unwrap();
    std::os::unix::fs::symlink("etc/app.conf", src.join("current")).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let listed = env.ok(&["ls", "--long", "latest", src.to_str().unwrap()]);
    let link = listed.lines().find(|l| l.starts_with('l')).unwrap();
    assert!(link.ends_with(&format!(" {}/current -> etc/app.conf", src.display())), "{listed}");
    assert!(listed.lines().filter(|l| !l.starts_with('l')).all(|l| !l.contains(" -> ")), "{listed}");
}

/// `snapshots` aligns every column under its head, however long a host or
/// tag list, and a backup of no paths shows its source.
#[test]
fn the_snapshot_table_aligns_its_columns_and_shows_a_streams_source() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    env.ok(&["backup", "--host", "a-rather-long-host-name.example", "--tag", "nightly,db,eu-west", src.to_str().unwrap()]);
    let stream = env.cmd(&["backup", "--stdin", "--stdin-filename", "app.dump"]).stdin(std::process::Stdio::null()).output().unwrap();
    assert!(stream.status.success(), "{stream:?}");
    let table = env.ok(&["snapshots"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let at = |head: &str| lines[0].find(head).unwrap();
    for (row, what) in [(lines[1], src.display().to_string()), (lines[2], "(stdin:app.dump)".to_string())] {
        assert_eq!(row.find(&what), Some(at("Paths")), "{table}");
        assert_eq!(row.find(&row[at("Time")..at("Time") + 19]), Some(at("Time")), "{table}");
    }
    assert_eq!(lines[1].find("a-rather-long-host-name.example"), Some(at("Host")), "{table}");
    assert_eq!(lines[1].find("nightly,db,eu-west"), Some(at("Tags")), "{table}");
    assert_eq!(lines[3], "2 snapshots");
}

/// A stream is stored as one entry of the snapshot's root: a name that is
/// a path, or `.`, `..` or nothing, is refused before the pre-hook runs or
/// the repository is written to, as `dump`, `restore` and `check` could
/// never read the snapshot it made.
#[test]
fn a_stream_name_that_is_no_file_name_is_refused_before_the_backup() {
    let env = Env::new();
    env.ok(&["init"]);
    let hooked = env.path("hooked");
    let hook = format!("touch {}", hooked.display());
    for bad in ["db/dump.sql", "..", "/etc/x", ".", ""] {
        let said = format!(
            "tresor: error: --stdin-filename {bad:?} is not a file name: it must not be empty, \".\" or \"..\", nor hold a \"/\" \
             (give e.g. --stdin-filename dump.sql)\n"
        );
        let stdin = env.cmd(&["backup", "--stdin", "--stdin-filename", bad, "--pre-hook", &hook]).stdin(Stdio::null()).output().unwrap();
        assert_eq!((stdin.status.code(), String::from_utf8_lossy(&stdin.stderr).as_ref()), (Some(1), said.as_str()), "--stdin {bad:?}");
        assert_eq!(env.fails(&["backup", "command:echo x", "--stdin-filename", bad, "--pre-hook", &hook], 1), said, "command: {bad:?}");
    }
    assert!(!hooked.exists(), "a pre-hook ran");
    assert_eq!(env.json(&["snapshots"]), serde_json::json!([]));
    env.ok(&["backup", "command:echo x", "--stdin-filename", "x.txt"]);
    assert_eq!(env.ok(&["dump", "latest", "x.txt"]), "x\n");
    env.ok(&["check"]);
}

/// Backup paths as the kernel reads them. A link on the way to a path
/// (`homes` → `srv/home` for `homes/alice`) is stored as the directory it
/// leads to: stored as a link, it held the path's entries, and the
/// snapshot did not restore whole while check passed. `..` is resolved
/// through the link before it, not dropped (`h3/../d` backed up `h3/d`).
/// A path below another given path that is a link is refused: the link is
/// stored as a link, and the path below it was silently missing.
#[test]
fn backup_paths_are_read_as_the_kernel_reads_them() {
    use std::os::unix::fs::symlink;
    let env = Env::new();
    env.ok(&["init"]);
    fs::create_dir_all(env.path("srv/home/alice/docs")).unwrap();
    fs::write(env.path("srv/home/alice/docs/letter.txt"), "letter\n").unwrap();
    symlink(env.path("srv/home"), env.path("homes")).unwrap();
    let named = env.path("homes/alice");
    env.ok(&["backup", named.to_str().unwrap()]);
    let out = env.path("out");
    env.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(restored(&env, "out", &named).join("docs/letter.txt")).unwrap(), "letter\n");
    assert!(env.ok(&["check"]).contains("no errors were found"));

    fs::create_dir_all(env.path("h3/d")).unwrap();
    fs::write(env.path("h3/d/wrong"), "wrong\n").unwrap();
    fs::create_dir_all(env.path("d")).unwrap();
    fs::write(env.path("d/right"), "right\n").unwrap();
    symlink(env.path("srv/home/alice"), env.path("app")).unwrap();
    for (given, meant) in [("h3/../d", env.path("d")), ("app/../alice/docs", env.path("srv/home/alice/docs"))] {
        env.ok(&["backup", env.path(given).to_str().unwrap()]);
        // Its parent is found by the path as resolved: nothing is read again.
        assert_eq!(env.json(&["backup", env.path(given).to_str().unwrap()])["files_unmodified"], 1, "{given}");
        let snaps = env.json(&["snapshots"]);
        let paths = &snaps.as_array().unwrap().last().unwrap()["paths"];
        assert_eq!(paths, &serde_json::json!([fs::canonicalize(meant).unwrap()]), "{given}");
    }

    symlink(env.path("d"), env.path("current")).unwrap();
    let (link, below) = (env.path("current"), env.path("current/right"));
    let said = format!(
        "tresor: error: backup path {} is below {}, a symbolic link the backup stores as a link, so nothing below it would be saved; give the path it points to\n",
        below.display(),
        link.display()
    );
    for paths in [[&link, &below], [&below, &link]] {
        let out = env.run(&["backup", paths[0].to_str().unwrap(), paths[1].to_str().unwrap()]);
        assert_eq!((out.status.code(), String::from_utf8(out.stderr).unwrap()), (Some(1), said.clone()));
    }
    // A link further down, between the two paths given, as well.
    let (outer, deep) = (env.path("srv"), env.path("srv/ext/right"));
    symlink(env.path("d"), env.path("srv/ext")).unwrap();
    let out = env.run(&["backup", outer.to_str().unwrap(), deep.to_str().unwrap()]);
    let said = format!(
        "tresor: error: backup path {} is below {}, a symbolic link the backup stores as a link, so nothing below it would be saved; give the path it points to\n",
        deep.display(),
        env.path("srv/ext").display()
    );
    assert_eq!((out.status.code(), String::from_utf8(out.stderr).unwrap()), (Some(1), said));
}
