//! End-to-end tests of the `tresor` binary on a local repository and on an
//! in-process S3 server. Every test asserts outcomes: restored bytes and
//! metadata, counts, exit codes and the exact error text.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tresor_testkit::S3Server;

mod app_drill;
mod apps;
mod backends;
mod bucket;
mod checks;
mod conformance;
mod crash;
mod daemon;
mod deploy;
mod doctor;
mod drill;
mod etcd;
mod evidence;
mod forget;
mod fuzz_corpus;
mod help;
mod image;
mod jobs;
mod k8s;
mod key_slots;
mod large_files;
mod memory;
mod names;
mod pitr;
mod prune;
mod rehearse;
mod repair;
mod replicate;
mod restic;
mod restore_batches;
mod restore_preview;
mod restore_safety;
mod runs;
mod silence;
mod soak;
mod sources;
mod standby;
mod stops;
mod transforms;
mod volumes;
mod walrpo;
mod warm_standby;

const BIN: &str = env!("CARGO_BIN_EXE_tresor");

/// The binary for runs as another user, who may not reach the checkout.
fn shared_bin() -> PathBuf {
    tresor_testkit::reachable_by_all(Path::new(BIN))
}

struct Env {
    dir: tempfile::TempDir,
    repo: String,
    vars: Vec<(String, String)>,
    /// Run tresor as this user (when the tests run as root).
    user: Option<&'static str>,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo").display().to_string();
        Env::with_repo(dir, repo, Vec::new())
    }

    fn with_repo(dir: tempfile::TempDir, repo: String, mut vars: Vec<(String, String)>) -> Env {
        fs::write(dir.path().join("pw"), "correct horse\n").unwrap();
        vars.push(("TRESOR_PASSWORD_FILE".into(), dir.path().join("pw").display().to_string()));
        vars.push(("TRESOR_CACHE_DIR".into(), dir.path().join("cache").display().to_string()));
        vars.push(("TRESOR_KDF_MEMORY".into(), "1M".into()));
        Env { dir, repo, vars, user: None }
    }

    fn s3(server: &S3Server) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let repo = format!("s3://{}/team/prod", server.bucket());
        Env::with_repo(dir, repo, server.env())
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = match self.user {
            Some(user) => {
                // setpriv execs tresor in its own place (runuser would stay its parent), so
                // killing the child kills tresor: a daemon never outlives its test.
                let mut c = Command::new("setpriv");
                c.args([&format!("--reuid={user}"), &format!("--regid={user}"), "--init-groups", "--"]).arg(shared_bin());
                c
            }
            None => Command::new(BIN),
        };
        c.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).env("TRESOR_REPOSITORY", &self.repo);
        if let Some(user) = self.user {
            // What runuser would set.
            let home = format!("/var/lib/{user}");
            c.env("HOME", if Path::new(&home).is_dir() { home.as_str() } else { "/" }).env("USER", user).env("LOGNAME", user);
        }
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Run and demand success; stdout as text.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tresor {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ok(&a);
        serde_json::from_str(text.lines().last().unwrap_or("null")).unwrap()
    }

    /// Run with another password file.
    fn as_holder_of(&self, password_file: &str, args: &[&str]) -> Output {
        self.cmd(args).env("TRESOR_PASSWORD_FILE", self.path(password_file)).output().unwrap()
    }

    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(code), "tresor {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stderr).unwrap()
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    v
}

/// Everything a restore must preserve, per relative path.
fn inventory(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            // Gone since it was listed: a writer at work (a standby refresh a test kills midway).
            let md = match fs::symlink_metadata(&p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                md => md.unwrap(),
            };
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let ft = md.file_type();
            let what = if ft.is_symlink() {
                format!("link->{}", fs::read_link(&p).unwrap().display())
            } else if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_file() {
                let data = match fs::read(&p) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    data => data.unwrap(),
                };
                format!("file {}", blake3::hash(&data).to_hex())
            } else {
                format!("special {:o}", md.mode() & 0o170000)
            };
            let mtime = if ft.is_dir() { 0 } else { md.mtime() * 1_000_000_000 + md.mtime_nsec() };
            out.insert(
                rel,
                format!(
                    "{what} mode={:o} uid={} gid={} mtime={mtime} nlink={}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid(),
                    if ft.is_file() { md.nlink() } else { 0 }
                ),
            );
        }
    }
    out
}

fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("small.txt"), b"hello tresor\n").unwrap();
    fs::write(root.join("sub/big.bin"), random_bytes(3 << 20, 1)).unwrap();
    fs::write(root.join("sub/deeper/text.log"), "line of text\n".repeat(50_000)).unwrap();
    fs::write(root.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"caf\xe9.txt")), b"latin-1 name").unwrap();
    std::os::unix::fs::symlink("sub/big.bin", root.join("link")).unwrap();
    fs::hard_link(root.join("small.txt"), root.join("sub/hardlink.txt")).unwrap();
    let fifo = std::ffi::CString::new(root.join("fifo").display().to_string()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(root.join("small.txt"), fs::Permissions::from_mode(0o4751)).unwrap();
    let sparse = fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"end of a sparse file", (64 << 20) - 100).unwrap();
}

fn restored(env: &Env, target: &str, source: &Path) -> PathBuf {
    env.path(target).join(source.strip_prefix("/").unwrap())
}

/// One suite for every backend: only where the backend keeps its objects on
/// disk (for the tampering step) differs.
fn conformance(env: &Env, data_dir: &Path) {
    let src = env.path("src");
    sample_tree(&src);
    env.ok(&["init"]);
    let summary = env.json(&["backup", src.to_str().unwrap()]);
    for key in [
        "snapshot_id",
        "files_new",
        "files_changed",
        "files_unmodified",
        "dirs_new",
        "data_added",
        "total_files_processed",
        "total_bytes_processed",
        "total_duration",
    ] {
        assert!(summary.get(key).is_some(), "summary lacks {key}: {summary}");
    }
    assert_eq!(summary["files_new"], 7);
    fs::write(src.join("sub/deeper/text.log"), "rewritten\n").unwrap();
    let second = env.json(&["backup", src.to_str().unwrap()]);
    assert_eq!((second["files_changed"].as_u64(), second["files_unmodified"].as_u64()), (Some(1), Some(6)), "{second}");
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    let out = restored(env, "out", &src);
    assert_eq!(inventory(&src), inventory(&out));
    let orig = fs::metadata(src.join("small.txt")).unwrap();
    let back = fs::metadata(out.join("small.txt")).unwrap();
    assert_eq!(fs::metadata(out.join("sub/hardlink.txt")).unwrap().ino(), back.ino(), "hard link restored as a link");
    assert_eq!(back.mode() & 0o7777, orig.mode() & 0o7777);
    let sparse = fs::metadata(out.join("sparse.img")).unwrap();
    assert_eq!(sparse.len(), 64 << 20);
    assert!(sparse.blocks() * 512 < 1 << 20, "sparse file kept its holes: {} blocks", sparse.blocks());
    assert!(env.ok(&["check", "--read-data"]).contains("no errors were found"));
    flip_byte(&biggest(data_dir), 500);
    let out = env.run(&["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("fails authentication"));
}

#[test]
fn conformance_fs() {
    let env = Env::new();
    conformance(&env, &Path::new(&env.repo).join("data"));
}

#[test]
fn conformance_s3() {
    let server = S3Server::start();
    let env = Env::s3(&server);
    conformance(&env, &server.object_path("team/prod/data"));
}

#[test]
fn dedup_incremental_diff_ls_dump_and_stdin() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let data = random_bytes(5 << 20, 7);
    fs::write(src.join("a.bin"), &data).unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    env.ok(&["init"]);
    let first = env.json(&["backup", src.to_str().unwrap(), "--tag", "one"]);
    fs::write(src.join("copy.bin"), &data).unwrap();
    fs::write(src.join("f3.txt"), "changed\n").unwrap();
    let second = env.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(second["files_new"], 1);
    assert_eq!(second["files_changed"], 1);
    assert_eq!(second["files_unmodified"], 20);
    assert!(second["data_added"].as_u64().unwrap() < 64 * 1024, "a copy adds no data: {second}");
    let third = env.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(third["files_unmodified"], 22);
    // No file data is read or stored again. Trees may be: the snapshot keeps
    // the ancestors of src, and /tmp changes whenever another test runs.
    assert_eq!(third["data_blobs"], 0);
    assert!(third["data_added"].as_u64().unwrap() < 4096, "{third}");

    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 3);
    assert_eq!(snaps[0]["tags"], serde_json::json!(["one"]));
    let first_id = first["snapshot_id"].as_str().unwrap();
    let second_id = second["snapshot_id"].as_str().unwrap();
    let diff = env.ok(&["diff", &first_id[..8], &second_id[..10]]);
    let s = src.display();
    assert_eq!(diff, format!("+    {s}/copy.bin\nM    {s}/f3.txt\n1 added, 0 removed, 1 modified\n"));

    // Each snapshot with matches is named (its time cut off here), then its
    // matches in path order.
    let found = env.ok(&["find", "f3.txt", "copy.bin"]);
    let found: Vec<&str> = found.lines().map(|l| l.split(" from ").next().unwrap()).collect();
    let third_id = third["snapshot_id"].as_str().unwrap();
    let named = |id: &str| format!("Found matching entries in snapshot {}", &id[..8]);
    let (copy, f3) = (format!("{s}/copy.bin"), format!("{s}/f3.txt"));
    let want = [named(first_id), f3.clone(), named(second_id), copy.clone(), f3.clone(), named(third_id), copy, f3];
    assert_eq!(found[..8], want);
    assert_eq!(found[8..], ["5 matches in 3 of 3 snapshots"]);
    let as_json = env.ok(&["find", "--json", "--tag", "one", "*.txt"]);
    assert_eq!(as_json.lines().count(), 20);
    assert!(as_json.starts_with("{\"message_type\":\"match\",\"mtime\":"), "{as_json}");
    let bad = env.fails(&["find", "["], 1);
    assert!(bad.starts_with("tresor: error: bad pattern \"[\": "), "{bad}");

    let ls = env.ok(&["ls", "latest", src.to_str().unwrap()]);
    assert_eq!(ls.lines().count(), 22);
    let dumped = env.run(&["dump", "latest", &format!("{}/a.bin", src.display())]);
    assert!(dumped.status.success());
    assert_eq!(dumped.stdout, data);

    let mut child = env
        .cmd(&["backup", "--stdin", "--stdin-filename", "db.sql", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stream = random_bytes(9 << 20, 3);
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    let back = env.run(&["dump", "latest", "db.sql"]);
    assert_eq!(blake3::hash(&back.stdout), blake3::hash(&stream));

    let stats = env.json(&["stats"]);
    assert_eq!(stats["snapshots_count"], 4);
    assert!(stats["total_stored_size"].as_u64().unwrap() < (5 + 9 + 1) << 20);

    env.ok(&["restore", second_id, "--target", env.path("part").to_str().unwrap(), "--include", "*.bin", "--exclude", "copy.bin"]);
    let part = restored(&env, "part", &src);
    assert_eq!(fs::read(part.join("a.bin")).unwrap(), data);
    assert!(!part.join("copy.bin").exists() && !part.join("f1.txt").exists());
}

#[test]
fn excludes_and_exclude_file() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::write(src.join("keep.txt"), "k").unwrap();
    fs::write(src.join("drop.log"), "d").unwrap();
    fs::write(src.join("cache/x"), "c").unwrap();
    fs::write(env.path("excl"), "# comment\n*.log\n").unwrap();
    env.ok(&["init"]);
    env.ok(&[
        "backup",
        src.to_str().unwrap(),
        "--exclude-file",
        env.path("excl").to_str().unwrap(),
        "--exclude",
        &format!("{}/cache", src.display()),
    ]);
    let ls = env.ok(&["ls", "latest", src.to_str().unwrap()]);
    assert_eq!(ls.lines().map(|l| l.rsplit('/').next().unwrap()).collect::<Vec<_>>(), ["keep.txt"]);
}

#[test]
fn bad_input_gets_one_clear_line_and_the_right_exit_code() {
    let env = Env::new();
    let err = env.fails(&["snapshots"], 10);
    assert_eq!(err, format!("tresor: error: no repository at {}: nothing is there (run `tresor init` first)\n", env.repo));
    fs::create_dir_all(&env.repo).unwrap();
    let err = env.fails(&["snapshots"], 10);
    assert_eq!(
        err,
        format!("tresor: error: {} is not a tresor repository: the directory has no tresor config (run `tresor init` first)\n", env.repo)
    );
    env.ok(&["init"]);
    assert!(env.fails(&["init"], 1).contains("a repository already exists at"));
    let mut wrong = env.cmd(&["snapshots"]);
    wrong.env_remove("TRESOR_PASSWORD_FILE").env("TRESOR_PASSWORD", "guess");
    let out = wrong.output().unwrap();
    assert_eq!(out.status.code(), Some(12));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "tresor: error: wrong password: no key of this repository opens with it\n");
    let err = env.fails(&["restore", "deadbeef", "--target", "/tmp/x"], 1);
    assert_eq!(err, "tresor: error: no snapshot matches \"deadbeef\"\n");
    let err = env.fails(&["backup", "/definitely/not/here"], 1);
    assert!(err.starts_with("tresor: error: cannot back up /definitely/not/here: No such file or directory"), "{err}");
    let config = Path::new(&env.repo).join("config");
    let text = fs::read_to_string(&config).unwrap().replace("\"version\": 1", "\"version\": 2");
    fs::write(&config, text).unwrap();
    let err = env.fails(&["snapshots"], 1);
    assert_eq!(
        err,
        "tresor: error: repository format version 2 is newer than this tresor supports (version 1); upgrade tresor to use it\n"
    );
    // Said before any password is asked for: none is needed to learn it.
    let out = env.cmd(&["snapshots"]).env_remove("TRESOR_PASSWORD_FILE").stdin(Stdio::null()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), err);
}

#[test]
fn tampered_config_is_detected() {
    let env = Env::new();
    env.ok(&["init"]);
    let config = Path::new(&env.repo).join("config");
    let text = fs::read_to_string(&config).unwrap().replace("\"compression\": 3", "\"compression\": 0");
    fs::write(&config, text).unwrap();
    let err = env.fails(&["snapshots"], 1);
    assert!(err.contains("its MAC does not match: it was altered"), "{err}");
}

#[test]
fn key_rotation_without_touching_data() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "data").unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let data_before = inventory(&Path::new(&env.repo).join("data"));
    fs::write(env.path("pw2"), "second password").unwrap();
    env.ok(&["key", "add", "--new-password-file", env.path("pw2").to_str().unwrap(), "--label", "ops"]);
    let keys = env.json(&["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    assert!(env.as_holder_of("pw2", &["snapshots"]).status.success());
    fs::write(env.path("pw3"), "third password").unwrap();
    env.ok(&["key", "passwd", "--new-password-file", env.path("pw3").to_str().unwrap()]);
    env.fails(&["snapshots"], 12);
    assert!(env.as_holder_of("pw3", &["snapshots"]).status.success());
    let listed: serde_json::Value = serde_json::from_slice(&env.as_holder_of("pw2", &["key", "list", "--json"]).stdout).unwrap();
    let id_of = |current: bool| {
        listed.as_array().unwrap().iter().find(|k| k["current"] == current).unwrap()["id"].as_str().unwrap()[..8].to_string()
    };
    let (mine, other) = (id_of(true), id_of(false));
    let refused = env.as_holder_of("pw2", &["key", "remove", &mine]);
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "tresor: error: refusing to remove the key in use; open with another key to remove this one\n"
    );
    assert!(env.as_holder_of("pw2", &["key", "remove", &other]).status.success());
    assert_eq!(env.as_holder_of("pw3", &["snapshots"]).status.code(), Some(12), "the removed key no longer opens");
    assert_eq!(inventory(&Path::new(&env.repo).join("data")), data_before, "rotation rewrote no data");
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    let i = (at as usize).min(bytes.len() - 1);
    bytes[i] ^= 0x55;
    fs::write(path, bytes).unwrap();
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
    }
    out.sort();
    out
}

fn biggest(dir: &Path) -> PathBuf {
    files_under(dir).into_iter().max_by_key(|p| fs::metadata(p).unwrap().len()).unwrap()
}

#[test]
fn check_names_damaged_objects_and_what_they_affect() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("precious.bin"), random_bytes(2 << 20, 11)).unwrap();
    fs::write(src.join("other.txt"), "fine").unwrap();
    env.ok(&["init"]);
    let snap = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap()[..8].to_string();
    assert!(env.ok(&["check", "--read-data"]).contains("no errors were found"));
    let repo = Path::new(&env.repo);
    let pack = biggest(&repo.join("data"));
    flip_byte(&pack, 1000);
    assert!(env.ok(&["check"]).contains("no errors were found"), "structure alone cannot see a flipped byte");
    let out = env.run(&["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let pack_id = pack.file_name().unwrap().to_str().unwrap();
    assert!(text.contains(&format!("error: pack {}: blob", &pack_id[..8])) && text.contains("fails authentication"), "{text}");
    assert!(text.contains(&format!("affects snapshots: {snap}")), "{text}");
    assert!(text.contains(&format!("damaged: {snap}:{}/precious.bin", src.display())), "{text}");
    assert!(!text.contains("other.txt"), "undamaged files are not blamed: {text}");
    let restore = env.run(&["restore", "latest", "--target", env.path("r").to_str().unwrap()]);
    assert_eq!(restore.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&restore.stderr).contains("precious.bin: blob"));
    assert_eq!(fs::read(restored(&env, "r", &src).join("other.txt")).unwrap(), b"fine");

    fs::write(&pack, &fs::read(&pack).unwrap()[..100]).unwrap();
    let text = String::from_utf8(env.run(&["check"]).stdout).unwrap();
    assert!(text.contains(&format!("error: pack {}: it is 100 bytes, the index says", &pack_id[..8])), "{text}");

    let snapshot_file = files_under(&repo.join("snapshots")).remove(0);
    flip_byte(&snapshot_file, 40);
    let text = String::from_utf8(env.run(&["check"]).stdout).unwrap();
    assert!(text.contains(&format!("error: snapshot {snap}: snapshot")) && text.contains("is damaged: it fails authentication"), "{text}");
    let index_file = files_under(&repo.join("index")).remove(0);
    flip_byte(&index_file, 30);
    let out = env.run(&["--no-cache", "check"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("error: index"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn unreadable_files_are_recorded_and_exit_3() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("secret"), "no access").unwrap();
    fs::write(src.join("public"), "readable").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    env.ok(&["init"]);
    let mut cmd = env.cmd(&["backup", src.to_str().unwrap()]);
    // root reads anything, so the backup runs as nobody when the test is root.
    if unsafe { libc::geteuid() } == 0 {
        for p in [env.dir.path(), Path::new(&env.repo)] {
            Command::new("chmod").args(["-R", "a+rwX"]).arg(p).status().unwrap();
        }
        fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
        let args: Vec<String> =
            std::iter::once(shared_bin().display().to_string()).chain(["backup".into(), src.display().to_string()]).collect();
        cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).args(&args).env("TRESOR_REPOSITORY", &env.repo);
        for (k, v) in &env.vars {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}/secret: Permission denied", src.display())), "{err}");
    assert!(err.contains("warning: 1 files could not be read"), "{err}");
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps[0]["errors"][0]["path"], format!("{}/secret", src.display()));
    let ls = env.ok(&["ls", "latest", src.to_str().unwrap()]);
    assert!(ls.contains("/public") && !ls.contains("/secret"), "{ls}");
}

#[test]
fn killed_backups_leave_a_repository_that_checks_and_restores() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("base.txt"), "the first snapshot").unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let before = inventory(&src);
    let big = src.join("big");
    fs::create_dir_all(&big).unwrap();
    for i in 0..12 {
        fs::write(big.join(format!("{i}.bin")), random_bytes(6 << 20, 100 + i)).unwrap();
    }
    for (round, delay_ms) in [40u64, 150, 300, 600, 900].into_iter().enumerate() {
        let mut child = env.cmd(&["backup", src.to_str().unwrap(), "--force"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let check = env.run(&["check", "--read-data"]);
        assert!(check.status.success(), "round {round}: {}", String::from_utf8_lossy(&check.stdout));
    }
    let snaps = env.json(&["snapshots"]);
    let first = snaps[0]["id"].as_str().unwrap();
    env.ok(&["restore", first, "--target", env.path("first").to_str().unwrap()]);
    let out = restored(&env, "first", &src);
    assert_eq!(inventory(&out)["base.txt"], before["base.txt"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    env.ok(&["restore", "latest", "--target", env.path("last").to_str().unwrap()]);
    assert_eq!(inventory(&src), inventory(&restored(&env, "last", &src)));
}

#[test]
fn s3_wrong_credentials_and_unreachable_endpoint_fail_cleanly() {
    let server = S3Server::start();
    let mut env = Env::s3(&server);
    env.vars.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    env.vars.push(("AWS_SECRET_ACCESS_KEY".into(), "wrong-secret".into()));
    let err = env.fails(&["init"], 1);
    assert!(err.starts_with("tresor: error: storage") && err.contains("PermissionDenied"), "{err}");
    assert!(!err.contains("wrong-secret") && !err.contains(server.secret_key()), "secrets stay out of errors: {err}");
    assert_eq!(err.lines().count(), 1);
    let mut dead = Env::s3(&server);
    let port = tresor_testkit::net::free_port();
    dead.vars.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
    dead.vars.push(("AWS_ENDPOINT_URL".into(), format!("http://127.0.0.1:{port}")));
    dead.vars.push(("TRESOR_FAULTS".into(), String::new()));
    let err = dead.fails(&["snapshots"], 1);
    assert!(err.starts_with("tresor: error: storage read of config failed"), "{err}");
}

#[test]
fn flaky_storage_is_retried_and_a_full_disk_fails_cleanly() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..30 {
        fs::write(src.join(format!("{i}.bin")), random_bytes(200_000, i)).unwrap();
    }
    env.ok(&["init"]);
    let mut flaky = env.cmd(&["backup", src.to_str().unwrap()]);
    flaky.env("TRESOR_FAULTS", "error-rate=0.1,seed=42");
    let out = flaky.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut flaky_restore = env.cmd(&["restore", "latest", "--target", env.path("r").to_str().unwrap()]);
    flaky_restore.env("TRESOR_FAULTS", "error-rate=0.1,seed=43");
    assert!(flaky_restore.output().unwrap().status.success());
    assert_eq!(inventory(&src), inventory(&restored(&env, "r", &src)));
    let snapshots_before = env.json(&["snapshots"]).as_array().unwrap().len();

    fs::write(src.join("huge.bin"), random_bytes(8 << 20, 99)).unwrap();
    let mut full = env.cmd(&["backup", src.to_str().unwrap()]);
    full.env("TRESOR_FAULTS", "write-limit=1000000");
    let out = full.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), snapshots_before, "no snapshot from a failed backup");
    assert!(env.ok(&["check", "--read-data"]).contains("no errors were found"));

    // Prune and copy under the same 10% of failing requests.
    fs::remove_file(src.join("huge.bin")).unwrap();
    fs::remove_file(src.join("0.bin")).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    env.ok(&["forget", "--keep-last", "1"]);
    let flaky = |args: &[&str], seed: u32| {
        let out = env.cmd(args).env("TRESOR_FAULTS", format!("error-rate=0.1,seed={seed}")).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    flaky(&["prune", "--max-unused", "0"], 44);
    assert!(env.ok(&["check", "--read-data"]).contains("no errors were found"));
    let target = env.path("offsite").display().to_string();
    env.ok(&["-r", &target, "init"]);
    flaky(&["copy", "--to", &target, "--to-password-file", env.path("pw").to_str().unwrap()], 45);
    env.ok(&["-r", &target, "restore", "latest", "--target", env.path("r2").to_str().unwrap()]);
    assert_eq!(inventory(&src), inventory(&restored(&env, "r2", &src)));
}

#[test]
fn demo_runs_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["demo", "--dir"]).arg(dir.path()).env("TRESOR_CACHE_DIR", dir.path().join("cache")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("every restored file is byte-identical to its original"), "{text}");
    assert!(text.contains("22 files, 0 new, 22 unchanged"), "{text}");
}

#[test]
fn forget_by_policy_with_reasons_holds_and_the_empty_guard() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    env.ok(&["init"]);
    for day in 1..=6 {
        fs::write(src.join("f"), format!("day {day}")).unwrap();
        env.ok(&["backup", src.to_str().unwrap(), "--time", &format!("2026-03-0{day}T12:00:00+00:00")]);
    }
    let ids: Vec<String> = env.json(&["snapshots"]).as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    let oldest = &ids[0];
    let held = env.ok(&["hold", &oldest[..8], "--reason", "audit 2026-Q1"]);
    assert!(held.starts_with(&format!("snapshot {} is held: audit 2026-Q1 (by ", &oldest[..8])), "{held}");

    let dry = env.json(&["forget", "--keep-daily", "3", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    let group = &dry["groups"][0];
    assert_eq!(group["keep"].as_array().unwrap().len(), 4);
    assert_eq!(group["remove"].as_array().unwrap().len(), 2);
    let reasons: Vec<String> = group["keep"].as_array().unwrap().iter().map(|k| k["reasons"][0].as_str().unwrap().to_string()).collect();
    assert_eq!(reasons[..3], ["daily snapshot", "daily snapshot", "daily snapshot"]);
    assert!(reasons[3].starts_with("legal hold: audit 2026-Q1"), "{reasons:?}");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 6, "a dry run removes nothing");

    let text = env.ok(&["forget", "--keep-daily", "3"]);
    assert!(text.starts_with(&format!("group host={} paths={}: keep 4, removed 2", tresor_host(), src.display())), "{text}");
    let left: Vec<String> = env.json(&["snapshots"]).as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(left, [ids[0].clone(), ids[3].clone(), ids[4].clone(), ids[5].clone()]);

    let err = env.fails(&["forget", &oldest[..8]], 1);
    assert!(err.starts_with(&format!("tresor: error: snapshot {} is under legal hold: audit 2026-Q1 (", &oldest[..8])), "{err}");
    assert_eq!(env.fails(&["forget"], 1), "tresor: error: no retention rule given (e.g. --keep-daily 7); nothing was removed\n");

    env.ok(&["release", &oldest[..8]]);
    assert_eq!(env.json(&["holds"]).as_array().unwrap().len(), 0);
    env.ok(&["forget", &oldest[..8]]);
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 3);
    let err = env.fails(&["forget", "--keep-tag", "nonexistent"], 1);
    let group = format!("host={} paths={}", tresor_host(), src.display());
    assert_eq!(
        err,
        format!(
            "tresor: error: the policy would remove all 3 snapshots of group {group:?}; nothing was removed (pass --allow-empty to allow it)\n"
        )
    );
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 3, "a refused policy removes nothing");
    env.ok(&["restore", "latest", "--target", env.path("r").to_str().unwrap()]);
    assert_eq!(fs::read(restored(&env, "r", &src).join("f")).unwrap(), b"day 6");
    assert!(env.ok(&["check"]).contains("no errors were found"));
}

fn tresor_host() -> String {
    let out = Command::new("hostname").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn repair_index_rebuilds_from_packs_alone() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..5 {
        fs::write(src.join(format!("{i}.bin")), random_bytes(700_000, 50 + i)).unwrap();
    }
    env.ok(&["init"]);
    env.ok(&["backup", src.to_str().unwrap()]);
    fs::write(src.join("later.txt"), "second snapshot").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let index_dir = Path::new(&env.repo).join("index");
    for f in files_under(&index_dir) {
        fs::remove_file(f).unwrap();
    }
    let out = env.run(&["--no-cache", "check"]);
    assert_eq!(out.status.code(), Some(1), "without an index the snapshots are unreachable");
    let report = env.json(&["--no-cache", "repair", "index"]);
    assert_eq!(report["packs"], files_under(&Path::new(&env.repo).join("data")).len());
    assert!(report["blobs"].as_u64().unwrap() >= 7, "{report}");
    assert!(env.ok(&["--no-cache", "check", "--read-data"]).contains("no errors were found"));
    env.ok(&["--no-cache", "restore", "latest", "--target", env.path("r").to_str().unwrap()]);
    assert_eq!(inventory(&src), inventory(&restored(&env, "r", &src)));
    let again = env.json(&["--no-cache", "repair", "index"]);
    assert_eq!(again["index_files_removed"], report["index_files_written"]);
    assert_eq!(files_under(&index_dir).len(), again["index_files_written"].as_u64().unwrap() as usize);
}

/// Two snapshots, the second adding `kept.txt`, with the pack that holds
/// the first one's `lost.bin` deleted: the source and that pack's path.
fn with_lost_pack(env: &Env) -> (PathBuf, PathBuf) {
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    env.ok(&["init"]);
    fs::write(src.join("lost.bin"), random_bytes(3 << 20, 77)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let lost_pack = biggest(&Path::new(&env.repo).join("data"));
    fs::write(src.join("kept.txt"), "still here").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    fs::remove_file(&lost_pack).unwrap();
    (src, lost_pack)
}

/// The restore of the latest snapshot fails with one error, the last line
/// of stderr, and restores `kept.txt`: stderr, and the restored source.
fn restore_with_one_error(env: &Env, src: &Path) -> (String, PathBuf) {
    let out = env.run(&["--no-cache", "restore", "latest", "--target", env.path("r").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.ends_with("tresor: error: 1 error during restore\n"), "{err}");
    let back = restored(env, "r", src);
    assert_eq!(fs::read(back.join("kept.txt")).unwrap(), b"still here");
    (err, back)
}

#[test]
fn restore_reports_and_leaves_out_files_whose_blobs_are_gone() {
    let env = Env::new();
    let (src, _) = with_lost_pack(&env);
    env.ok(&["--no-cache", "repair", "index"]);
    let (err, back) = restore_with_one_error(&env, &src);
    assert!(err.contains("lost.bin: blob") && err.contains("is referenced but not in any index"), "{err}");
    assert!(!back.join("lost.bin").exists(), "no file of guessed content is left behind");
}

/// A pack missing from storage while the index still lists it fails the
/// files that need it, by name; the rest of the snapshot is restored.
#[test]
fn restore_restores_what_a_missing_pack_does_not_hold() {
    let env = Env::new();
    let (src, lost_pack) = with_lost_pack(&env);
    let (err, _) = restore_with_one_error(&env, &src);
    let pack = lost_pack.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(&format!("lost.bin: pack {pack} is damaged: it is missing from storage\n")), "{err}");
}
