//! `repair snapshots`: damaged snapshots are saved again without exactly the
//! files that cannot be restored, and the loss is named.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

fn data_files(env: &Env) -> BTreeSet<PathBuf> {
    files_under(&Path::new(&env.repo).join("data")).into_iter().collect()
}

#[test]
fn repair_snapshots_drops_and_names_what_is_lost() {
    let env = Env::new();
    env.ok(&["init", "--pack-size-mib", "4"]);
    let src = env.path("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("keep.bin"), random_bytes(5 << 20, 1)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let new_data_packs = |before: &BTreeSet<PathBuf>| -> Vec<PathBuf> {
        data_files(&env).difference(before).filter(|p| fs::metadata(p).unwrap().len() > 100 << 10).cloned().collect()
    };
    let before = data_files(&env);
    fs::write(src.join("dir/lose.bin"), random_bytes(5 << 20, 2)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let lost_packs = new_data_packs(&before);
    let before = data_files(&env);
    fs::write(src.join("damaged.bin"), random_bytes(5 << 20, 3)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let damaged_packs = new_data_packs(&before);
    let first = env.json(&["snapshots"])[0]["id"].as_str().unwrap().to_string();
    for p in &lost_packs {
        fs::remove_file(p).unwrap();
    }
    let dry = env.json(&["repair", "snapshots", "--dry-run"]);
    assert_eq!(dry.as_array().unwrap().len(), 2, "the first snapshot is intact: {dry}");
    let lose = format!("{}/dir/lose.bin", src.display());
    for s in dry.as_array().unwrap() {
        assert_eq!(s["lost"], serde_json::json!([lose]), "{dry}");
    }
    for p in &damaged_packs {
        flip_byte(p, 1000);
    }
    let names =
        |v: &serde_json::Value| v[1]["lost"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect::<BTreeSet<_>>();
    let without = env.json(&["repair", "snapshots", "--dry-run"]);
    assert_eq!(names(&without), BTreeSet::from([lose.clone()]), "a damaged blob is found only by reading");
    let with = env.json(&["repair", "snapshots", "--dry-run", "--read-data"]);
    assert_eq!(names(&with), BTreeSet::from([lose.clone(), format!("{}/damaged.bin", src.display())]));
    let done = env.json(&["repair", "snapshots", "--read-data", "--forget"]);
    let repaired: Vec<String> = done.as_array().unwrap().iter().map(|r| r["repaired"].as_str().unwrap().to_string()).collect();
    let snaps = env.json(&["snapshots"]);
    let ids: Vec<&str> = snaps.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [first.as_str(), repaired[0].as_str(), repaired[1].as_str()], "damaged snapshots were replaced by repaired copies");
    assert_eq!(snaps[2]["tags"], serde_json::json!(["repaired"]));
    let totals = |s: &serde_json::Value| (s["summary"]["total_files_processed"].as_u64(), s["summary"]["total_bytes_processed"].as_u64());
    assert_eq!([totals(&snaps[1]), totals(&snaps[2])], [(Some(1), Some(5 << 20)); 2], "a copy's totals leave out what it lost");
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    let out = restored(&env, "out", &src);
    assert_eq!(fs::read(out.join("keep.bin")).unwrap(), fs::read(src.join("keep.bin")).unwrap());
    assert!(!out.join("dir/lose.bin").exists() && !out.join("damaged.bin").exists());
    assert!(out.join("dir").is_dir());
    assert!(env.json(&["repair", "snapshots", "--dry-run"]).as_array().unwrap().is_empty(), "nothing left to repair");

    // The lost blobs are out of the index: the next backup stores their
    // data again instead of deduplicating against what cannot be read.
    env.ok(&["backup", src.to_str().unwrap()]);
    env.ok(&["restore", "latest", "--target", env.path("again").to_str().unwrap()]);
    let again = restored(&env, "again", &src);
    for f in ["keep.bin", "dir/lose.bin", "damaged.bin"] {
        assert_eq!(fs::read(again.join(f)).unwrap(), fs::read(src.join(f)).unwrap(), "{f}");
    }
    assert!(env.ok(&["check", "--read-data"]).contains("no errors were found"));
}

#[test]
fn restore_verify_reads_every_file_back_against_the_snapshot() {
    let env = Env::new();
    let src = crate::restore_safety::backed_up_sample(&env);
    let out = env.path("out");
    let said = env.ok(&["restore", "latest", "--target", out.to_str().unwrap(), "--verify"]);
    let files = inventory(&src).values().filter(|v| v.starts_with("file")).count();
    assert!(said.contains(&format!("verified {files} files (")), "{said}");
    let victim = biggest(&restored(&env, "out", &src));
    let mut bytes = fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    fs::write(&victim, &bytes).unwrap();
    let err = env.fails(&["restore", "latest", "--target", out.to_str().unwrap(), "--verify-only"], 1);
    let entries = env.ok(&["ls", "latest"]).lines().count();
    assert_eq!(
        err.lines().last().unwrap(),
        format!(
            "tresor: error: 1 of {entries} restored entries differ from the snapshot; first: {}: content differs from the snapshot",
            victim.display()
        )
    );
}

/// Writes each `(path, bytes)` below `root`, making the directories on the way.
pub(super) fn write_tree(root: &Path, files: &[(&str, &[u8])]) {
    for (name, bytes) in files {
        fs::create_dir_all(root.join(name).parent().unwrap()).unwrap();
        fs::write(root.join(name), bytes).unwrap();
    }
}

/// Flip a byte inside the stored tree of the directory `dir` in `snapshot`;
/// that tree's id.
pub(super) fn damage_tree(env: &Env, snapshot: &str, dir: &Path) -> tresor_engine::Id {
    damage_blob(env, snapshot, dir, |node| node.subtree.unwrap())
}

/// Flip a byte inside the stored blob that `pick` names of the node at
/// `path` in `snapshot`; that blob's id.
pub(super) fn damage_blob(
    env: &Env,
    snapshot: &str,
    path: &Path,
    pick: fn(&tresor_engine::Node) -> tresor_engine::Id,
) -> tresor_engine::Id {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let repo = fuzz_corpus::open_in_process(env).await;
        let snap = repo.find_snapshot(snapshot).await.unwrap();
        let blob = pick(&tresor_engine::walk::find(&repo, snap.tree, path.to_str().unwrap()).await.unwrap().unwrap());
        let (pack, e) = repo.index().await.unwrap().get(&blob).unwrap();
        flip_byte(&Path::new(&env.repo).join(tresor_engine::objects::Kind::Pack.path(&pack)), u64::from(e.offset + e.length / 2));
        blob
    })
}

/// A new repository with one snapshot of `src/a/data` and `src/b/data`
/// (200 kB of random bytes each): the source, both contents and the
/// snapshot's short id.
fn two_dirs_backed_up(env: &Env) -> (PathBuf, Vec<u8>, Vec<u8>, String) {
    env.ok(&["init"]);
    let src = env.path("src");
    let (a, b) = (random_bytes(200_000, 1), random_bytes(200_000, 2));
    write_tree(&src, &[("a/data", &a), ("b/data", &b)]);
    let id = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap()[..8].to_string();
    (src, a, b, id)
}

/// Without `--forget` the damaged original stays, and needs a blob the
/// repair took out of the index: a prune names it and deletes nothing
/// until it is forgotten; then the data backed up again restores exactly.
#[test]
fn a_kept_damaged_original_stops_prune_until_forgotten() {
    let env = Env::new();
    let (src, a, b, id) = two_dirs_backed_up(&env);
    let blob = damage_blob(&env, &id, &src.join("b/data"), |node| node.content[0]);
    let checked = env.run(&["check", "--read-data", "--no-cache"]);
    assert_eq!(
        (checked.status.code(), String::from_utf8_lossy(&checked.stderr).as_ref()),
        (Some(1), "tresor: error: check found 1 problem\n")
    );
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(said.contains(&format!("  damaged: {id}:{}/b/data\n", src.display())), "{said}");
    let advice = "to keep the rest: `tresor repair snapshots --read-data` saves each affected snapshot without what is lost (with --forget \
                  it removes the damaged one, which check reports until then); the next backup then stores that data anew\n";
    assert!(said.ends_with(advice), "{said}");
    let repaired = env.ok(&["repair", "snapshots", "--read-data", "--no-cache"]);
    let lines: Vec<&str> = repaired.lines().collect();
    assert!(lines[0].starts_with(&format!("snapshot {id} repaired as ")), "{repaired}");
    assert_eq!(lines[1..3], [format!("  {}/b/data", src.display()).as_str(), "1 damaged snapshot"], "{repaired}");
    let copied = lines[3].strip_prefix("taken out of the index: 1 blob lost, which the next backup of that data stores anew; ");
    assert!(copied.is_some_and(|c| c.ends_with(" readable from damaged packs copied to new packs")), "{repaired}");
    let copy = lines[0].strip_prefix(&format!("snapshot {id} repaired as ")).unwrap().trim_end_matches("; lost:").to_string();
    // Run again while the original is kept: no second copy.
    let snapshots = env.json(&["snapshots", "--no-cache"]).as_array().unwrap().len();
    let again = env.ok(&["repair", "snapshots", "--read-data", "--no-cache"]);
    let said = format!("snapshot {id} was repaired as {copy} before (forget it, or add --forget); it lost:");
    assert_eq!(again.lines().next(), Some(said.as_str()), "{again}");
    assert_eq!(env.json(&["snapshots", "--no-cache"]).as_array().unwrap().len(), snapshots);
    let stored = files_under(Path::new(&env.repo));
    let err = env.fails(&["prune", "--max-unused", "0", "--no-cache"], 1);
    let said = format!(
        "snapshot {id} needs blob {} that no index lists; nothing was deleted (run `tresor check`, then `tresor repair index`, \
         or forget it if `tresor repair snapshots` replaced it)",
        blob.short()
    );
    assert_eq!(err, format!("tresor: error: {said}\n"));
    assert_eq!(files_under(Path::new(&env.repo)), stored, "nothing stored was touched");
    // forget --prune --json: one document, the forget's, with why the prune failed.
    let out = env.run(&["forget", "--keep-last", "10", "--prune", "--max-unused", "0", "--json", "--no-cache"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!((doc["groups"][0]["keep"].as_array().map(Vec::len), &doc["prune"]["error"]), (Some(2), &serde_json::json!(said)), "{doc}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), format!("tresor: error: {said}\n"));
    let err = env.fails(&["forget", "--keep-last", "1", "--prune", "--max-unused", "200", "--no-cache"], 1);
    assert_eq!(err, "tresor: error: --max-unused is a percentage from 0 to 100\n");
    assert_eq!(files_under(Path::new(&env.repo)), stored, "a prune asked for wrongly is refused before forget removes anything");

    env.ok(&["forget", &id, "--no-cache"]);
    env.ok(&["prune", "--max-unused", "0", "--no-cache"]);
    env.ok(&["backup", src.to_str().unwrap(), "--no-cache"]);
    assert!(env.ok(&["check", "--read-data", "--no-cache"]).contains("no errors were found"));
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap(), "--no-cache"]);
    let out = restored(&env, "out", &src);
    assert_eq!((fs::read(out.join("a/data")).unwrap(), fs::read(out.join("b/data")).unwrap()), (a, b));
}

/// `repair index` reads every pack's trailer, the damaged one's too: after
/// a repair it leaves out what the repair found lost, so the next backup
/// stores that data anew. A prune then deletes the damaged pack and the
/// quarantine record naming it.
#[test]
fn repair_index_after_a_repair_leaves_the_lost_blob_out() {
    let env = Env::new();
    let (src, a, b, id) = two_dirs_backed_up(&env);
    let before: BTreeMap<PathBuf, Vec<u8>> = data_files(&env).into_iter().map(|p| (p.clone(), fs::read(&p).unwrap())).collect();
    damage_blob(&env, &id, &src.join("b/data"), |node| node.content[0]);
    let damaged: Vec<&PathBuf> = before.iter().filter(|(p, bytes)| fs::read(p).unwrap() != **bytes).map(|(p, _)| p).collect();
    assert_eq!(damaged.len(), 1);
    env.ok(&["repair", "snapshots", "--read-data", "--forget", "--no-cache"]);
    let said = env.ok(&["repair", "index", "--no-cache"]);
    assert!(said.ends_with("\nleft out 1 blob a repair found lost (1 damaged pack whole, which a prune deletes)\n"), "{said}");
    env.ok(&["backup", src.to_str().unwrap(), "--no-cache"]);
    assert!(env.ok(&["check", "--read-data", "--no-cache"]).contains("no errors were found"));
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap(), "--no-cache"]);
    let out = restored(&env, "out", &src);
    assert_eq!((fs::read(out.join("a/data")).unwrap(), fs::read(out.join("b/data")).unwrap()), (a, b));

    let quarantine = Path::new(&env.repo).join("quarantine");
    let record = files_under(&quarantine);
    assert_eq!(record.len(), 1);
    let intact = fs::read(&record[0]).unwrap();
    flip_byte(&record[0], 40);
    let err = env.fails(&["repair", "index", "--no-cache"], 1);
    let name = record[0].file_name().unwrap().to_str().unwrap();
    assert_eq!(
        err,
        format!(
            "tresor: error: quarantine {name} is damaged: it fails authentication, and may name blobs a repair found lost; \
             nothing was changed (to rebuild the index without it, delete quarantine/{name}, then run `tresor check --read-data`)\n"
        )
    );
    // Older than any live writer could be.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    fs::File::options().write(true).open(damaged[0]).unwrap().set_modified(hour_ago).unwrap();
    let pruned = env.ok(&["prune", "--no-cache"]);
    assert!(pruned.contains(", 1 unindexed packs deleted"), "{pruned}");
    assert!(!damaged[0].exists());
    assert_eq!(files_under(&quarantine), record, "a damaged record is kept for repair index to name");
    fs::write(&record[0], intact).unwrap();
    env.ok(&["prune", "--no-cache"]);
    assert!(!quarantine.exists() || files_under(&quarantine).is_empty(), "the record went once its pack was gone");
    assert!(env.ok(&["check", "--read-data", "--no-cache"]).contains("no errors were found"));
}

/// `ls`, `find`, `diff`, `stats`, `restore` and its verify go on past a
/// directory whose tree is damaged: what they can read is printed in full,
/// the directory is named with the damage, and they fail. `copy` copies the
/// other snapshot whole and names the damaged one.
#[test]
fn readers_name_a_damaged_directory_and_read_the_rest() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    write_tree(&src, &[("a/a.conf", b"a"), ("b/b.conf", b"b"), ("c/c.conf", b"c")]);
    let first = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap()[..8].to_string();
    fs::write(src.join("b/b.conf"), "b changed").unwrap();
    fs::write(src.join("c/c.conf"), "c changed").unwrap();
    let second = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap()[..8].to_string();
    let b = damage_tree(&env, &second, &src.join("b"));
    let damage = tresor_engine::Error::corrupt("blob", b, "it fails authentication");
    let (s, failed) = (src.display(), "tresor: error: 1 directory could not be read\n");
    let fails = |args: &[&str]| {
        let out = env.run(&[args, &["--no-cache"]].concat());
        assert_eq!(out.status.code(), Some(1), "tresor {args:?}");
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };

    let (listed, errors) = fails(&["ls", &second, src.to_str().unwrap()]);
    assert_eq!(listed, format!("{s}/a\n{s}/a/a.conf\n{s}/b\n{s}/c\n{s}/c/c.conf\n"));
    assert_eq!(errors, format!("error: snapshot {second}: {s}/b: its contents were not listed: {damage}\n{failed}"));

    let (found, errors) = fails(&["find", "*.conf"]);
    let found: Vec<&str> = found.lines().map(|l| l.split(" from ").next().unwrap()).collect();
    let named = |id: &str| format!("Found matching entries in snapshot {id}");
    let (a, b_, c) = (format!("{s}/a/a.conf"), format!("{s}/b/b.conf"), format!("{s}/c/c.conf"));
    let want = [named(&first), a.clone(), b_, c.clone(), named(&second), a, c, "5 matches in 2 of 2 snapshots".into()];
    assert_eq!(found, want);
    assert_eq!(errors, format!("error: snapshot {second}: {s}/b: its contents were not searched: {damage}\n{failed}"));

    let (changes, errors) = fails(&["diff", &first, &second]);
    assert_eq!(changes, format!("M    {s}/c/c.conf\n0 added, 0 removed, 1 modified\n"));
    assert_eq!(errors, format!("error: {s}/b: its contents were not compared: {damage}\n{failed}"));

    let (_, errors) = fails(&["stats"]);
    assert_eq!(errors, format!("error: snapshot {second}: {s}/b: its contents were not counted: {damage}\n{failed}"));

    let out = env.path("out");
    let restored_b = out.join(src.strip_prefix("/").unwrap()).join("b");
    let (_, errors) = fails(&["restore", &second, "--target", out.to_str().unwrap()]);
    assert!(errors.starts_with(&format!("error: {}: its contents were not restored: {damage}\n", restored_b.display())), "{errors}");
    let (_, errors) = fails(&["restore", &second, "--target", out.to_str().unwrap(), "--verify-only"]);
    assert_eq!(errors, format!("error: {}: its contents were not verified: {damage}\n{failed}", restored_b.display()));

    let offsite = env.path("offsite");
    assert!(env.cmd(&["init"]).env("TRESOR_REPOSITORY", &offsite).output().unwrap().status.success());
    let (offsite, pw) = (offsite.to_str().unwrap(), env.path("pw"));
    let (copied, errors) = fails(&["copy", "--to", offsite, "--to-password-file", pw.to_str().unwrap()]);
    assert!(copied.starts_with(&format!("copied snapshot {first} -> ")), "{copied}");
    let not_copied = format!("1 of the selected snapshots could not be copied, the others were: snapshot {second} is damaged: {damage}");
    assert_eq!(errors, format!("error: snapshot {second} was not copied: {damage}\ntresor: error: {not_copied}\n"));
}

/// A prune that meets a damaged tree deletes nothing and names the way
/// out; after `repair snapshots --read-data --forget` it succeeds, the
/// repository checks whole and the rest of the data restores exactly.
#[test]
fn prune_deletes_nothing_past_a_damaged_tree_and_repair_is_the_way_out() {
    let env = Env::new();
    let (src, _, _, id) = two_dirs_backed_up(&env);
    let b = damage_tree(&env, &id, &src.join("b"));
    let stored = files_under(Path::new(&env.repo));
    let err = env.fails(&["prune", "--max-unused", "0", "--no-cache"], 1);
    let damage = tresor_engine::Error::corrupt("blob", b, "it fails authentication");
    let way_out = "run `tresor check --read-data`, then `tresor repair snapshots --read-data`";
    let said = format!("snapshot {id} is damaged: its tree {} cannot be read ({damage}); nothing was deleted ({way_out})", b.short());
    assert_eq!(err, format!("tresor: error: {said}\n"));
    assert_eq!(files_under(Path::new(&env.repo)), stored, "nothing stored was touched");

    let repaired = env.json(&["repair", "snapshots", "--read-data", "--forget", "--no-cache"]);
    assert_eq!(repaired[0]["lost"], serde_json::json!([format!("{}/b/ (the directory listing)", src.display())]), "{repaired}");
    env.ok(&["prune", "--max-unused", "0", "--no-cache"]);
    assert!(env.ok(&["check", "--read-data", "--no-cache"]).contains("no errors were found"));
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap(), "--no-cache"]);
    let out = restored(&env, "out", &src);
    assert_eq!(fs::read(out.join("a/data")).unwrap(), fs::read(src.join("a/data")).unwrap());
    assert_eq!(fs::read_dir(out.join("b")).unwrap().count(), 0);
}

/// Storage that stops answering is an outage, not damage: `repair
/// snapshots`, `repair index`, `check` and `copy` fail with the storage's
/// error and change nothing.
/// (Before, the repair took every directory it could not read for lost, and
/// with `--forget` replaced the snapshot by an empty one.)
#[test]
fn an_outage_is_never_taken_for_damage() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(src.join("a")).unwrap();
    fs::write(src.join("a/data"), random_bytes(100_000, 5)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let offsite = env.path("offsite");
    assert!(env.cmd(&["init"]).env("TRESOR_REPOSITORY", &offsite).output().unwrap().status.success());
    let (snapshots, stored) = (env.ok(&["snapshots", "--json"]), files_under(Path::new(&env.repo)));
    let (offsite, pw) = (offsite.to_str().unwrap(), env.path("pw"));
    let checks: [&[&str]; 6] = [
        &["repair", "snapshots", "--forget"],
        &["repair", "snapshots", "--read-data", "--forget"],
        &["repair", "index"],
        &["check"],
        &["check", "--read-data"],
        &["copy", "--to", offsite, "--to-password-file", pw.to_str().unwrap()],
    ];
    let outages = checks.iter().map(|args| (*args, "data/")).chain([(&["check"][..], "index/"), (&["check"][..], "snapshots/")]);
    for (args, unreadable) in outages {
        let faults = format!("unreadable={unreadable}");
        let out = env.cmd(&[args, &["--no-cache"]].concat()).env("TRESOR_FAULTS", faults).output().unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "tresor {args:?}: {err}");
        assert!(err.starts_with("tresor: error: ") && err.contains("injected outage: storage does not answer"), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert_eq!(env.ok(&["snapshots", "--json"]), snapshots);
    assert_eq!(files_under(Path::new(&env.repo)), stored, "nothing stored was touched");
    let copies = env.cmd(&["snapshots", "--json"]).env("TRESOR_REPOSITORY", offsite).output().unwrap();
    assert_eq!(String::from_utf8(copies.stdout).unwrap().trim(), "[]", "an outage copies no snapshot, whole or damaged");
}

/// One snapshot file damaged (a flipped byte) stops nothing but itself:
/// every listing leaves it out with a warning, a backup finds its parent
/// among the others, a copy copies the others and then fails naming it,
/// and `forget` removes it by id.
#[test]
fn a_damaged_snapshot_file_stops_nothing_but_itself() {
    let env = Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    write_tree(&src, &[("a.conf", b"a")]);
    let first = env.json(&["backup", src.to_str().unwrap()])["snapshot_id"].as_str().unwrap().to_string();
    write_tree(&src, &[("b.conf", b"b")]);
    env.ok(&["backup", src.to_str().unwrap()]);
    flip_byte(&Path::new(&env.repo).join("snapshots").join(&first), 40);
    let short = &first[..8];
    let warning = format!(" WARN snapshot {short} cannot be read, so it is left out: it fails authentication\n");
    let fresh = |args: &[&str]| env.run(&[&["--no-cache"][..], args].concat());

    let listed = fresh(&["snapshots", "--json"]);
    assert_eq!(String::from_utf8_lossy(&listed.stderr), warning);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&listed.stdout).unwrap().as_array().unwrap().len(), 1);
    let backup = fresh(&["backup", src.to_str().unwrap()]);
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));
    assert!(String::from_utf8_lossy(&backup.stdout).contains("0 new, 0 changed, 2 unmodified"), "its parent was found");

    let offsite = env.path("offsite").display().to_string();
    env.ok(&["init", "-r", &offsite]);
    let pw = env.path("pw").display().to_string();
    let copy = fresh(&["copy", "--to", &offsite, "--to-password-file", &pw]);
    assert_eq!(copy.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&copy.stderr),
        format!(
            "{warning}error: snapshot {short} was not copied: it fails authentication\n\
             tresor: error: 1 of the selected snapshots could not be copied, the others were: \
             snapshot {short} is damaged: it fails authentication\n"
        )
    );
    assert_eq!(env.json(&["snapshots", "-r", &offsite]).as_array().unwrap().len(), 2, "the others are off site");

    let forgot = fresh(&["forget", short]);
    assert!(String::from_utf8_lossy(&forgot.stdout).contains(&format!("removed snapshot {short} (its file is damaged)")));
    let listed = fresh(&["snapshots"]);
    assert_eq!(String::from_utf8_lossy(&listed.stderr), "", "nothing left to warn of");
    assert!(!Path::new(&env.repo).join("snapshots").join(&first).exists());
}

/// A copy repaired off site no longer stands for its original, nor does
/// the damaged copy kept beside it: the next `copy` carries the source's
/// snapshot again, whole, and the data the repair lost is uploaded anew
/// rather than matched against the damage.
#[test]
fn a_copy_repaired_off_site_is_copied_again_whole() {
    copied_again_whole(&["--forget"]);
    copied_again_whole(&[]);
}

fn copied_again_whole(forget: &[&str]) {
    let env = Env::new();
    let primary = env.path("primary").display().to_string();
    env.ok(&["init", "-r", &primary]);
    let src = env.path("src");
    let (a, b) = (random_bytes(200_000, 1), random_bytes(200_000, 2));
    write_tree(&src, &[("a/data", &a), ("b/data", &b)]);
    env.ok(&["backup", "-r", &primary, src.to_str().unwrap()]);
    env.ok(&["init"]);
    let pw = env.path("pw").display().to_string();
    let copy = || env.json(&["copy", "-r", &primary, "--to", &env.repo, "--to-password-file", &pw, "--no-cache"]);
    assert_eq!(copy()["copied"].as_array().unwrap().len(), 1);
    let copied = env.json(&["snapshots"])[0]["id"].as_str().unwrap()[..8].to_string();
    damage_blob(&env, &copied, &src.join("b/data"), |node| node.content[0]);
    env.ok(&[&["repair", "snapshots", "--read-data", "--no-cache"][..], forget].concat());

    let again = copy();
    assert_eq!((again["present"].as_u64(), again["copied"].as_array().unwrap().len()), (Some(0), 1), "{again}");
    let whole = again["copied"][0][1].as_str().unwrap().to_string();
    env.ok(&["restore", &whole, "--target", env.path("out").to_str().unwrap(), "--no-cache"]);
    let out = restored(&env, "out", &src);
    assert_eq!((fs::read(out.join("a/data")).unwrap(), fs::read(out.join("b/data")).unwrap()), (a, b));
    assert_eq!(copy()["present"].as_u64(), Some(1), "and only once");
}
