//! Key slots under concurrency (docs/ARCHITECTURE.md §7): `key remove`,
//! `key passwd` and opens racing each other, on a local repository and on
//! S3, never leave a repository without a slot that opens it.

use std::process::Child;

use super::*;

const PW2: &str = "second password";
const PW3: &str = "third password";

/// A repository with two slots: `pw` (the Env's) and `pw2`.
fn two_slots(env: &Env) -> (String, String) {
    env.ok(&["init"]);
    fs::write(env.path("pw2"), format!("{PW2}\n")).unwrap();
    fs::write(env.path("pw3"), format!("{PW3}\n")).unwrap();
    env.ok(&["key", "add", "--new-password-file", env.path("pw2").to_str().unwrap()]);
    let listed = env.json(&["key", "list"]);
    let id =
        |current: bool| listed.as_array().unwrap().iter().find(|k| k["current"] == current).unwrap()["id"].as_str().unwrap().to_string();
    (id(true), id(false))
}

fn spawn(mut c: Command) -> Child {
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn finish(c: Child) -> (bool, String) {
    let out = c.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Which of the three passwords still open the repository.
fn openers(env: &Env) -> Vec<&'static str> {
    [("pw", "correct horse"), ("pw2", PW2), ("pw3", PW3)]
        .into_iter()
        .filter(|(file, _)| env.as_holder_of(file, &["snapshots"]).status.success())
        .map(|(_, pw)| pw)
        .collect()
}

/// What a losing command may say: it opened after its slot went, found it
/// gone under the claim, or found its target gone (under the claim, or
/// already when the CLI matched the id).
fn is_a_clean_refusal(stderr: &str) -> bool {
    stderr == "tresor: error: wrong password: no key of this repository opens with it\n"
        || (stderr.starts_with("tresor: error: the key this command opened the repository with (")
            && stderr.ends_with(") was removed meanwhile; nothing changed\n"))
        || (stderr.starts_with("tresor: error: no key ") && stderr.lines().count() == 1)
        || (stderr.starts_with("tresor: error: 0 keys match ") && stderr.ends_with("; give a unique id prefix\n"))
}

fn removes_race(new_env: impl Fn(usize) -> Env) {
    for round in 0..6 {
        let env = new_env(round);
        let (a, b) = two_slots(&env);
        // Each removes the other's slot: done at once without care, none would remain.
        let p1 = spawn(env.cmd(&["key", "remove", &b]));
        let mut c2 = env.cmd(&["key", "remove", &a]);
        c2.env("TRESOR_PASSWORD_FILE", env.path("pw2"));
        let p2 = spawn(c2);
        let (r1, r2) = (finish(p1), finish(p2));
        assert!(r1.0 != r2.0, "round {round}: exactly one removal succeeds: {r1:?} {r2:?}");
        let loser = if r1.0 { &r2.1 } else { &r1.1 };
        assert!(is_a_clean_refusal(loser), "round {round}: {loser}");
        let expected = if r1.0 { vec!["correct horse"] } else { vec![PW2] };
        assert_eq!(openers(&env), expected, "round {round}: the winner's slot alone remains");
        assert_eq!(env.as_holder_of(if r1.0 { "pw" } else { "pw2" }, &["key", "list", "--json"]).status.code(), Some(0));
    }
}

fn passwd_and_remove_race(new_env: impl Fn(usize) -> Env) {
    for round in 0..4 {
        let env = new_env(round);
        let (a, _) = two_slots(&env);
        let p1 = spawn(env.cmd(&["key", "passwd", "--new-password-file", env.path("pw3").to_str().unwrap()]));
        let mut c2 = env.cmd(&["key", "remove", &a]);
        c2.env("TRESOR_PASSWORD_FILE", env.path("pw2"));
        let p2 = spawn(c2);
        let (r1, r2) = (finish(p1), finish(p2));
        for (ok, stderr) in [&r1, &r2] {
            assert!(*ok || is_a_clean_refusal(stderr), "round {round}: {stderr}");
        }
        let open = openers(&env);
        assert!(open.contains(&PW2), "round {round}: the remover's own slot stays: {open:?}");
        assert!(!open.contains(&"correct horse"), "round {round}: slot a went, replaced or removed: {open:?}");
        assert_eq!(open.contains(&PW3), r1.0, "round {round}: the new password opens exactly when passwd succeeded");
    }
}

/// Opens during `key passwd`: each one either opens (with the old slot or
/// the new) or says the password is wrong, never a storage error about a
/// slot that vanished while it was read.
fn opens_during_passwd(env: &Env) {
    two_slots(env);
    let mut expect_new = false;
    for round in 0..6 {
        let (from, to) = if expect_new { ("pw3", "pw") } else { ("pw", "pw3") };
        let mut c = env.cmd(&["key", "passwd", "--new-password-file", env.path(to).to_str().unwrap()]);
        c.env("TRESOR_PASSWORD_FILE", env.path(from));
        let passwd = spawn(c);
        let opener = |f: &str| {
            let mut c = env.cmd(&["snapshots"]);
            c.env("TRESOR_PASSWORD_FILE", env.path(f));
            spawn(c)
        };
        let opens: Vec<Child> = [from, to, from, to].into_iter().map(opener).collect();
        assert_eq!(finish(passwd), (true, String::new()), "round {round}");
        for o in opens {
            let (ok, stderr) = finish(o);
            assert!(ok || stderr == "tresor: error: wrong password: no key of this repository opens with it\n", "round {round}: {stderr}");
        }
        expect_new = !expect_new;
        assert!(env.as_holder_of(to, &["snapshots"]).status.success(), "round {round}: the new password opens");
        assert!(!env.as_holder_of(from, &["snapshots"]).status.success(), "round {round}: the old one no longer does");
    }
    assert!(env.as_holder_of("pw2", &["snapshots"]).status.success(), "the other slot was never touched");
}

fn races(new_env: impl Fn(usize) -> Env) {
    removes_race(&new_env);
    passwd_and_remove_race(|round| new_env(round + 10));
    opens_during_passwd(&new_env(20));
}

#[test]
fn key_commands_racing_on_a_local_repository_keep_a_usable_slot() {
    let dir = tempfile::tempdir().unwrap();
    races(|round| Env::with_repo(tempfile::tempdir().unwrap(), dir.path().join(format!("r{round}")).display().to_string(), Vec::new()));
}

#[test]
fn key_commands_racing_on_s3_keep_a_usable_slot() {
    let server = S3Server::start();
    races(|round| Env::with_repo(tempfile::tempdir().unwrap(), format!("s3://{}/keys{round}", server.bucket()), server.env()));
}

/// A key command waits for a live claim and names it; the claim of a
/// process that is gone is taken over.
#[test]
fn a_live_claim_holds_key_commands_back_and_a_dead_ones_does_not() {
    let env = Env::new();
    env.ok(&["init"]);
    fs::write(env.path("pw2"), format!("{PW2}\n")).unwrap();
    let pw2 = env.path("pw2").display().to_string();
    let add = ["key", "add", "--new-password-file", &pw2];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let here = fs::read_link("/proc/self/ns/pid").unwrap().display().to_string();
    let claim = |pid: u32, pid_ns: &str| {
        rt.block_on(async {
            let repo = super::fuzz_corpus::open_in_process(&env).await;
            let body =
                serde_json::json!({"host": tresor_engine::hostname(), "pid": pid, "command": "key remove", "pid_ns": pid_ns}).to_string();
            repo.save_file(tresor_engine::objects::Kind::KeyClaim, body.as_bytes()).await.unwrap()
        })
    };
    let claim_file = |id: tresor_engine::Id| Path::new(&env.repo).join("locks/keys").join(id.to_hex());
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    // Live here, and of a process id no longer in use here but in another
    // PID namespace (a container beside this one), where it may run.
    for (pid, pid_ns) in [(std::process::id(), here.as_str()), (dead_pid, "pid:[1]")] {
        let held = claim(pid, pid_ns);
        let out = env.run(&add);
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "tresor: error: another key command is running (`tresor key remove` on {}, process {pid}); try again once it has ended\n",
                tresor_engine::hostname(),
            )
        );
        assert_eq!(env.json(&["key", "list"]).as_array().unwrap().len(), 1, "nothing was added");
        fs::remove_file(claim_file(held)).unwrap();
    }
    let dead = claim(dead_pid, &here);
    env.ok(&add);
    assert_eq!(env.json(&["key", "list"]).as_array().unwrap().len(), 2);
    assert!(!claim_file(dead).exists(), "the dead process's claim was removed");
    assert_eq!(fs::read_dir(Path::new(&env.repo).join("locks/keys")).unwrap().count(), 0, "and the command's own");
}

#[test]
fn a_key_with_less_memory_takes_more_passes_and_opens() {
    let env = Env::new();
    assert_eq!(
        env.fails(&["init", "--kdf-memory", "0"], 1),
        "tresor: error: cannot read --kdf-memory (TRESOR_KDF_MEMORY) \"0\" (from 1M to 1G, e.g. 16M)\n"
    );
    assert!(!env.path("repo").exists(), "a refused init creates nothing");
    env.ok(&["init", "--kdf-memory", "16M"]);
    let dir = env.path("repo/keys");
    let slots: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(slots.len(), 1);
    let slot: serde_json::Value = serde_json::from_slice(&fs::read(&slots[0]).unwrap()).unwrap();
    assert_eq!((slot["memory_kib"].as_u64(), slot["iterations"].as_u64()), (Some(16384), Some(12)));
    env.ok(&["snapshots"]);
    for bad in ["8K", "1023K", "2G", "5G", "lots"] {
        let err = env.fails(&["key", "add", "--kdf-memory", bad, "--new-password-file", env.path("pw").to_str().unwrap()], 1);
        assert_eq!(err, format!("tresor: error: cannot read --kdf-memory (TRESOR_KDF_MEMORY) {bad:?} (from 1M to 1G, e.g. 16M)\n"));
    }
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "a refused key add writes no slot");
}

/// A local repository's root is its owner's alone, whatever the umask: the
/// key files below it are what a password is guessed against offline. An
/// empty directory given to init is made so too; one that holds other
/// files keeps its mode.
#[test]
fn init_makes_a_local_repository_readable_by_its_owner_only() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let init = |repo: &Path| {
        let mut c = env.cmd(&["init"]);
        // SAFETY: umask(2) is async-signal-safe and touches only the child.
        unsafe {
            c.env("TRESOR_REPOSITORY", repo).pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            })
        };
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let made = env.path("made/by/init");
    init(&made);
    assert_eq!((mode(&made), mode(made.parent().unwrap())), (0o700, 0o755));
    assert_eq!(fs::read_dir(made.join("keys")).unwrap().count(), 1);
    let empty = env.path("empty");
    fs::create_dir(&empty).unwrap();
    fs::set_permissions(&empty, fs::Permissions::from_mode(0o755)).unwrap();
    init(&empty);
    assert_eq!(mode(&empty), 0o700);
    let shared = env.path("shared");
    fs::create_dir(&shared).unwrap();
    fs::write(shared.join("README"), "backups of host1\n").unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o750)).unwrap();
    init(&shared);
    assert_eq!(mode(&shared), 0o750);
}

/// A key file anyone with write access to the storage changed is skipped
/// with a warning naming it, however much it asks of the key derivation,
/// and the other slots still open; a password that opens none is wrong,
/// and the error names the skipped file. Removing it is the remedy.
#[test]
fn a_damaged_key_file_is_skipped_with_a_warning_and_named() {
    let env = Env::new();
    let (_, other) = two_slots(&env);
    let slot = Path::new(&env.repo).join("keys").join(&other);
    let stored: serde_json::Value = serde_json::from_slice(&fs::read(&slot).unwrap()).unwrap();
    let holder = |args: &[&str]| env.as_holder_of("pw2", args);
    let damages: [(&str, serde_json::Value, &str); 3] = [
        ("memory_kib", 0.into(), "invalid key derivation parameters: memory cost is too small"),
        ("data", "".into(), "its wrapped secret is 0 bytes, not 60"),
        (
            "memory_kib",
            4194304.into(),
            "the key derivation asks for 4194304 KiB and 64 passes on 1 lanes, beyond the 4 GiB, 64 passes, 16 lanes and 4 GiB of passes a key may ask",
        ),
    ];
    for (field, value, why) in damages {
        let mut damaged = stored.clone();
        damaged[field] = value;
        fs::write(&slot, serde_json::to_vec_pretty(&damaged).unwrap()).unwrap();
        let warning = format!(" WARN key file keys/{other} is damaged, so it is skipped: {why}\n");
        let out = env.run(&["snapshots"]);
        assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stderr).as_ref()), (Some(0), warning.as_str()), "{field}");
        let out = holder(&["snapshots"]);
        let refused = format!(
            "tresor: error: wrong password: no key of this repository opens with it (damaged key files, not tried: keys/{other})\n"
        );
        assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()), (Some(12), warning + &refused), "{field}");
    }
    env.ok(&["key", "remove", &other[..8]]);
    let out = holder(&["snapshots"]);
    let said = "tresor: error: wrong password: no key of this repository opens with it\n";
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stderr).as_ref()), (Some(12), said));
}
