//! The fuzzers' corpora as plain tests: every input committed under
//! fuzz/corpus/TARGET (seeds, and every crash the fuzzers found, once
//! fixed) goes through the entry point its fuzz target calls, so CI keeps
//! them passing without cargo-fuzz. `regenerate_seed_corpus` (ignored)
//! rebuilds the seeds from real objects and real servers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};

use super::*;

type Entry = fn(&[u8]);

fn plan(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tresor_controller::plan::Plan::parse(text, Path::new("plan.yaml"));
    }
}

/// Each fuzz target and the function it calls (fuzz/fuzz_targets/TARGET.rs).
const TARGETS: &[(&str, Entry)] = &[
    ("pack", tresor_engine::fuzzing::pack),
    ("blob", tresor_engine::fuzzing::blob),
    ("index", tresor_engine::fuzzing::index),
    ("snapshot", tresor_engine::fuzzing::snapshot),
    ("tree", tresor_engine::fuzzing::tree),
    ("config", tresor_engine::fuzzing::config),
    ("key", tresor_engine::fuzzing::key),
    ("hold", tresor_engine::fuzzing::hold),
    ("session", tresor_engine::fuzzing::session),
    ("evidence", tresor_engine::fuzzing::evidence),
    ("redis_replication", tresor_sources::fuzzing::redis_replication),
    ("aof_manifest", tresor_sources::fuzzing::aof_manifest),
    ("aof_file", tresor_sources::fuzzing::aof_file),
    ("wal_names", tresor_sources::fuzzing::wal_names),
    ("wal_segment", tresor_sources::fuzzing::wal_segment),
    ("etcd_snapshot", tresor_sources::fuzzing::etcd_snapshot),
    ("k8s_object", tresor_sources::fuzzing::k8s_object),
    ("plan", plan),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn every_corpus_input_passes_through_its_parser() {
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let mut declared: Vec<&str> =
        manifest.lines().filter_map(|l| l.strip_prefix("name = \"")?.strip_suffix('"')).filter(|n| *n != "tresor-fuzz").collect();
    let mut known: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    declared.sort();
    known.sort();
    assert_eq!(declared, known, "fuzz/Cargo.toml and this table name the same targets");
    let mut replayed = 0;
    for (name, entry) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let inputs: Vec<PathBuf> =
            fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
        assert!(!inputs.is_empty(), "{name} has a seed corpus");
        for input in inputs {
            entry(&fs::read(&input).unwrap());
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len(), "{replayed} inputs replayed");
}

/// Replace the seeds of `target` with `inputs`, named by their BLAKE3 hash
/// (as libFuzzer names what it keeps) so reruns do not duplicate them.
fn write_seeds(target: &str, inputs: &[Vec<u8>]) {
    let dir = fuzz_dir().join("corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    for old in fs::read_dir(&dir).unwrap() {
        let old = old.unwrap().path();
        if old.file_name().unwrap().to_string_lossy().starts_with("seed-") {
            fs::remove_file(old).unwrap();
        }
    }
    for input in inputs {
        fs::write(dir.join(format!("seed-{}", &blake3_hex(input)[..16])), input).unwrap();
    }
}

fn blake3_hex(b: &[u8]) -> String {
    tresor_engine::fuzzing::crypto().blob_id(b).to_hex()
}

/// The Env's repository, opened by the engine in this process.
pub(super) async fn open_in_process(env: &Env) -> tresor_engine::Repository {
    let location = tresor_storage::Location::parse(&env.repo).unwrap();
    let password = tresor_engine::Password::new("correct horse");
    let opts = tresor_engine::OpenOptions { password, cache_root: None, storage: Default::default() };
    tresor_engine::Repository::open(&location, &opts).await.unwrap()
}

/// A snapshot and its root tree from a real backup.
fn real_snapshot_and_tree() -> (tresor_engine::Snapshot, tresor_engine::Tree) {
    let env = &Env::new();
    env.ok(&["init"]);
    let src = env.path("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/app.conf"), "listen 8080\n").unwrap();
    fs::write(src.join(std::ffi::OsStr::from_bytes(b"caf\xe9")), "not UTF-8\n").unwrap();
    std::os::unix::fs::symlink("etc/app.conf", src.join("current")).unwrap();
    env.ok(&["backup", "--tag", "seed", src.to_str().unwrap()]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let repo = open_in_process(env).await;
        let snap = repo.find_snapshot("latest").await.unwrap();
        let tree = repo.load_tree(&snap.tree).await.unwrap();
        let sub = tree.nodes.iter().find_map(|n| n.subtree).unwrap();
        let mut tree = tree;
        tree.nodes.extend(repo.load_tree(&sub).await.unwrap().nodes);
        (snap, tree)
    })
}

/// Everything a Redis server sends a backup, recorded through a proxy.
fn recorded_redis_exchange() -> Vec<u8> {
    let redis = tresor_testkit::RedisServer::start(&[]);
    redis.script("SET order:1 paid\nSET order:2 open\nHSET customer:7 name Ada city Berlin\nRPUSH queue a b c\n");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let (rec, upstream) = (recorded.clone(), redis.port());
    let proxy = std::thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        let mut server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
        let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || std::io::copy(&mut c2, &mut s2));
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = server.read(&mut buf) {
            rec.lock().unwrap().extend_from_slice(&buf[..n]);
            if client.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut source = tresor_sources::from_url(&format!("redis://127.0.0.1:{port}")).unwrap();
    let mut stream = source.open().unwrap();
    std::io::copy(&mut stream.reader, &mut std::io::sink()).unwrap();
    drop(stream);
    drop(source);
    proxy.join().unwrap();
    recorded.lock().unwrap().clone()
}

/// A Redis 7 AOF directory's manifest and files, written by a real server.
fn real_aof() -> (Vec<u8>, Vec<Vec<u8>>) {
    let redis = tresor_testkit::RedisServer::start(&["--appendonly", "yes"]);
    redis.script("SET order:1 paid\nINCR counter\n");
    redis.cli(&["BGREWRITEAOF"]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    redis.script("SET order:2 open\n");
    let dir = redis.dir().join("appendonlydir");
    let mut manifest = Vec::new();
    let mut files = Vec::new();
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let bytes = fs::read(&p).unwrap();
        if p.extension().is_some_and(|x| x == "manifest") {
            manifest = bytes;
        } else {
            let kind = if p.to_string_lossy().contains(".base.") { 0 } else { 1 };
            files.push([vec![kind], bytes].concat());
        }
    }
    (manifest, files)
}

/// A WAL page header as PostgreSQL writes it (pgwal.rs's layout).
fn wal_header(name: &str, segno: u64, seg_size: u32) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0..2].copy_from_slice(&0xD113u16.to_le_bytes());
    h[2..4].copy_from_slice(&2u16.to_le_bytes());
    h[4..8].copy_from_slice(&1u32.to_le_bytes());
    h[8..16].copy_from_slice(&(segno * u64::from(seg_size)).to_le_bytes());
    h[24..32].copy_from_slice(&7_301_234_567_890_123_456u64.to_le_bytes());
    h[32..36].copy_from_slice(&seg_size.to_le_bytes());
    h[36..40].copy_from_slice(&8192u32.to_le_bytes());
    [vec![name.len() as u8], name.as_bytes().to_vec(), h].concat()
}

fn sha256_trailed(body: &[u8]) -> Vec<u8> {
    let out = std::process::Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    out.stdin.as_ref().unwrap().write_all(body).unwrap();
    let hex = String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap();
    let digest: Vec<u8> = (0..64).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    [body, &digest].concat()
}

/// Objects as the deploy manifests hold them: a CRD, RBAC, a Deployment…
fn kubernetes_objects() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes");
    let mut files: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let docs = files.iter().flat_map(|f| fs::read_to_string(f).unwrap().split("\n---\n").map(String::from).collect::<Vec<_>>());
    docs.filter(|d| d.contains("\nkind: ") && d.len() < 4096).take(8).map(String::into_bytes).collect()
}

#[test]
#[ignore = "rewrites fuzz/corpus/*/seed-*: run by hand after a format change"]
fn regenerate_seed_corpus() {
    let (snap, tree) = real_snapshot_and_tree();
    let mut by_target: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
    for (t, input) in tresor_engine::fuzzing::seeds(&snap, &tree) {
        by_target.entry(t).or_default().push(input);
    }
    by_target.insert("redis_replication", vec![recorded_redis_exchange()]);
    let (manifest, files) = real_aof();
    by_target.insert("aof_manifest", vec![manifest]);
    by_target.insert("aof_file", files);
    let names = "000000010000000000000001\n000000010000000000000002\n000000010000000000000004\n00000002.history\n\
                 000000020000000000000004.partial\n000000010000000000000002.00000028.backup\n0/3000028\n";
    by_target.insert("wal_names", vec![names.as_bytes().to_vec()]);
    by_target.insert(
        "wal_segment",
        vec![wal_header("000000010000000000000003.partial", 3, 16 << 20), wal_header("000000010000000100000000.partial", 256, 16 << 20)],
    );
    let bolt = b"\x00\x10\x00\x00bolt meta page, then buckets: key, meta, members, lease\x00\x01".repeat(4);
    by_target.insert("etcd_snapshot", vec![[vec![31], sha256_trailed(&bolt)].concat(), [vec![255], sha256_trailed(b"")].concat()]);
    let plans = [fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tresor.yaml")).unwrap()];
    by_target.insert("plan", plans.to_vec());
    by_target.insert("k8s_object", kubernetes_objects());
    for (t, inputs) in &by_target {
        write_seeds(t, inputs);
    }
    assert_eq!(by_target.len(), TARGETS.len(), "every target has seeds");
}
