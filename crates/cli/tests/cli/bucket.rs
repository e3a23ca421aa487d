//! Buckets as a data source (issue 16): objects backed up as files with
//! their metadata, restored into another bucket (or a directory) object by
//! object, incremental by listing, and the faults a bucket has.

use opendal::{Operator, services};
use tresor_testkit::{AzuriteServer, GcsServer, RudeServer, Rudeness, S3Server};

use super::*;

/// Fails with exit 1 in one line holding `says`, and saves no snapshot.
fn fails_in_one_line(env: &Env, args: &[&str], says: &str) -> String {
    let err = env.fails(args, 1);
    assert!(err.starts_with("tresor: error: ") && err.lines().count() == 1 && err.contains(says), "{args:?}: {err}");
    err
}

/// A store the tests write and read objects in, outside tresor.
pub(super) struct Store {
    pub op: Operator,
    rt: tokio::runtime::Runtime,
}

/// What tresor must bring back of an object: size, content hash, content
/// type and user metadata.
pub(super) type Objects = BTreeMap<String, String>;

/// An object to write: key, content, content type, user metadata.
type Object = (String, Vec<u8>, Option<String>, Vec<(String, String)>);

impl Store {
    fn new(op: Operator) -> Store {
        Store { op, rt: tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap() }
    }

    pub fn s3(server: &S3Server, bucket: &str) -> Store {
        let b = services::S3::default()
            .bucket(bucket)
            .endpoint(&server.endpoint())
            .region(server.region())
            .access_key_id(server.access_key())
            .secret_access_key(server.secret_key());
        Store::new(Operator::new(b).unwrap().finish())
    }

    fn azure(server: &AzuriteServer, container: &str) -> Store {
        let b = services::Azblob::default()
            .container(container)
            .endpoint(&server.endpoint())
            .account_name("devstoreaccount1")
            .account_key(server.key());
        Store::new(Operator::new(b).unwrap().finish())
    }

    fn gcs(server: &GcsServer, root: &str) -> Store {
        let b = services::Gcs::default()
            .bucket(server.bucket())
            .root(root)
            .endpoint(&server.endpoint())
            .allow_anonymous()
            .disable_vm_metadata()
            .disable_config_load();
        Store::new(Operator::new(b).unwrap().finish())
    }

    pub fn put(&self, key: &str, data: Vec<u8>, content_type: Option<&str>, meta: &[(&str, &str)]) {
        self.put_all(vec![(
            key.to_string(),
            data,
            content_type.map(String::from),
            meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        )]);
    }

    /// Write many objects, 16 at a time.
    fn put_all(&self, objects: Vec<Object>) {
        use futures::StreamExt;
        let op = &self.op;
        self.rt.block_on(async {
            let puts = futures::stream::iter(objects).map(|(key, data, ct, meta)| async move {
                if key.ends_with('/') {
                    return op.create_dir(&key).await.unwrap();
                }
                let mut w = op.write_with(&key, data);
                if let Some(ct) = ct {
                    w = w.content_type(&ct);
                }
                if !meta.is_empty() {
                    w = w.user_metadata(meta);
                }
                w.await.unwrap_or_else(|e| panic!("put {key}: {e}"));
            });
            puts.buffer_unordered(16).collect::<Vec<()>>().await;
        });
    }

    /// Every object with what a restore must keep, read through the store's API.
    pub fn objects(&self) -> Objects {
        use futures::StreamExt;
        let op = &self.op;
        self.rt.block_on(async {
            let entries = op.list_with("").recursive(true).await.unwrap();
            let keys: Vec<String> = entries.into_iter().map(|e| e.path().to_string()).filter(|p| p != "/").collect();
            let described = futures::stream::iter(keys).map(|key| async move {
                let meta = op.stat(&key).await.unwrap();
                let hash = if key.ends_with('/') {
                    String::new()
                } else {
                    blake3::hash(&op.read(&key).await.unwrap().to_vec()).to_hex().to_string()
                };
                let user: BTreeMap<_, _> = meta.user_metadata().cloned().unwrap_or_default().into_iter().collect();
                let what = format!("{} {hash} {:?} {user:?}", meta.content_length(), meta.content_type());
                (key, what)
            });
            described.buffer_unordered(16).collect::<Vec<_>>().await.into_iter().collect()
        })
    }
}

/// The variables that point a bucket source (and target) at the server,
/// under the source prefix only: the repository is local.
pub(super) fn source_vars(server: &S3Server) -> Vec<(String, String)> {
    server.env().into_iter().map(|(k, v)| (format!("TRESOR_SOURCE_{k}"), v)).collect()
}

pub(super) fn s3_url(server: &S3Server, bucket: &str) -> String {
    format!("bucket+s3://{bucket}?endpoint={}&region={}", server.endpoint(), server.region())
}

fn env_for(vars: Vec<(String, String)>) -> Env {
    let mut env = Env::new();
    env.vars.extend(vars);
    env.ok(&["init"]);
    env
}

fn newest(env: &Env) -> serde_json::Value {
    env.json(&["snapshots"]).as_array().unwrap().last().unwrap().clone()
}

fn new_bucket(server: &S3Server, name: &str) -> Store {
    fs::create_dir(server.root().join(name)).unwrap();
    Store::s3(server, name)
}

#[test]
fn ten_thousand_objects_round_trip_into_a_fresh_bucket_and_an_unchanged_bucket_downloads_nothing() {
    let server = S3Server::start();
    let source = Store::s3(&server, server.bucket());
    let mut objects = Vec::new();
    for i in 0..10_000u64 {
        let key = format!("p{}/q{}/obj-{i:05}", i % 10, i % 7);
        let data = if i % 100 == 0 { Vec::new() } else { random_bytes(100 + (i as usize % 3000), i) };
        let ct = (i % 3 == 0).then(|| "application/x-tresor".to_string());
        let meta = if i % 5 == 0 { vec![("owner".to_string(), format!("team-{}", i % 4))] } else { Vec::new() };
        objects.push((key, data, ct, meta));
    }
    source.put_all(objects);
    source.put("big/layer.tar", random_bytes(100 << 20, 7), Some("application/octet-stream"), &[("digest", "sha256-of-nothing")]);
    let before = source.objects();
    assert_eq!(before.len(), 10_001);

    let env = env_for(source_vars(&server));
    let url = s3_url(&server, server.bucket());
    let out = env.ok(&["backup", &url]);
    assert!(out.contains("10001 objects"), "{out}");
    let first = newest(&env);
    assert_eq!(first["source"]["kind"], "bucket");
    let point = &first["source"]["consistency"];
    assert_eq!(
        (point["objects"].as_u64(), point["downloaded"].as_u64(), point["vanished"].as_u64()),
        (Some(10_001), Some(10_001), Some(0))
    );
    assert!(point["listing_started"].as_str() <= point["listing_ended"].as_str(), "{point}");

    let fresh = new_bucket(&server, "fresh");
    let id = first["id"].as_str().unwrap();
    let out = env.ok(&["restore", id, "--to", &s3_url(&server, "fresh")]);
    assert!(out.starts_with("restored 10001 objects"), "{out}");
    assert_eq!(fresh.objects(), before, "every object, its bytes and metadata");

    // Into the same bucket only with --flush.
    let err = env.fails(&["restore", id, "--to", &s3_url(&server, "fresh")], 1);
    assert!(err.contains("holds objects") && err.contains("--flush") && err.lines().count() == 1, "{err}");

    let out = env.ok(&["backup", &url]);
    assert!(out.contains("0 downloaded"), "{out}");
    let second = newest(&env);
    assert_eq!(second["source"]["consistency"]["downloaded"], 0);
    assert_eq!(second["tree"], first["tree"], "the same tree, not a byte read");
}

#[test]
fn a_bucket_snapshot_restores_into_a_directory_and_by_key_prefix_or_glob() {
    let server = S3Server::start();
    let source = Store::s3(&server, server.bucket());
    source.put("docs/readme.md", b"# hello\n".to_vec(), Some("text/markdown"), &[]);
    source.put("docs/img/logo.png", random_bytes(5000, 1), Some("image/png"), &[("alt", "logo")]);
    source.put("100%/ü 日本.txt", b"unicode".to_vec(), None, &[]);
    source.put("logs/2024.log", b"log".to_vec(), None, &[]);
    let env = env_for(source_vars(&server));
    env.ok(&["backup", &format!("bucket+s3://{}/?endpoint={}", server.bucket(), server.endpoint())]);
    let id = newest(&env)["id"].as_str().unwrap().to_string();

    let dir = env.path("restored");
    env.ok(&["restore", &id, "--target", dir.to_str().unwrap()]);
    assert_eq!(fs::read(dir.join("docs/readme.md")).unwrap(), b"# hello\n");
    assert_eq!(fs::read(dir.join("100%25/ü 日本.txt")).unwrap(), b"unicode", "% escaped, the rest kept");

    let fresh = new_bucket(&server, "picked");
    env.ok(&["restore", &id, "--to", &s3_url(&server, "picked"), "--include", "docs/", "--exclude", "*.png"]);
    assert_eq!(fresh.objects().keys().collect::<Vec<_>>(), ["docs/readme.md"]);
}

#[test]
fn a_flush_restore_overwrites_what_the_snapshot_holds_and_only_then_deletes_the_rest() {
    let server = S3Server::start();
    let source = Store::s3(&server, server.bucket());
    source.put("keep/a.txt", b"snapshot a".to_vec(), Some("text/plain"), &[]);
    source.put("keep/b.bin", random_bytes(3000, 7), None, &[("k", "v")]);
    let env = env_for(source_vars(&server));
    env.ok(&["backup", &s3_url(&server, server.bucket())]);
    let id = newest(&env)["id"].as_str().unwrap().to_string();
    let expected = source.objects();

    let target = new_bucket(&server, "busy");
    target.put("keep/a.txt", b"changed since".to_vec(), None, &[]);
    target.put("extra/one", b"not in the snapshot".to_vec(), None, &[]);
    target.put("extra/two", b"nor this".to_vec(), None, &[]);
    let out = env.ok(&["restore", &id, "--to", &s3_url(&server, "busy"), "--flush"]);
    assert!(
        out.starts_with("restored 2 objects") && out.trim_end().ends_with(", then deleted 2 objects the snapshot does not hold"),
        "{out}"
    );
    assert_eq!(target.objects(), expected, "exactly the snapshot's objects, bytes and metadata");
}

/// Restores the latest snapshot into the bucket `busy` with `--flush`,
/// which must restore one object, delete one and fail; what it wrote to
/// stderr.
fn restore_one_and_flush_one(env: &Env, server: &S3Server) -> String {
    let out = env.run(&["restore", "latest", "--to", &s3_url(server, "busy"), "--flush", "--no-cache"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("restored 1 objects") && said.trim_end().ends_with(", then deleted 1 objects the snapshot does not hold"),
        "{said}"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A key prefix whose listing is damaged in the repository is named and
/// not restored; the rest is, and `--flush` keeps what the target holds
/// below that prefix (it deletes only what the snapshot is known to lack).
#[test]
fn a_damaged_prefix_is_named_and_a_flush_keeps_what_the_target_holds_below_it() {
    let server = S3Server::start();
    let source = Store::s3(&server, server.bucket());
    source.put("keep/a.txt", b"snapshot a".to_vec(), Some("text/plain"), &[]);
    source.put("lost/b.txt", b"snapshot b".to_vec(), None, &[]);
    let env = env_for(source_vars(&server));
    env.ok(&["backup", &s3_url(&server, server.bucket())]);
    let listed = env.ok(&["ls", "latest"]);
    let lost = listed.lines().find(|l| l.ends_with("/lost")).unwrap_or_else(|| panic!("{listed}"));
    let tree = super::repair::damage_tree(&env, "latest", Path::new(lost));

    let target = new_bucket(&server, "busy");
    target.put("lost/old.txt", b"held before".to_vec(), None, &[]);
    target.put("extra/one", b"not in the snapshot".to_vec(), None, &[]);
    let errors = restore_one_and_flush_one(&env, &server);
    let damage = tresor_engine::Error::corrupt("blob", tree, "it fails authentication");
    let want = format!("error: lost/*: these objects were not restored: {damage}\ntresor: error: 1 key prefix could not be read\n");
    assert_eq!(errors, want);
    let held: Vec<String> = target.objects().keys().cloned().collect();
    assert_eq!(held, ["keep/a.txt", "lost/old.txt"], "the restored object, and the one below the damaged prefix kept");
}

/// An object whose content is damaged in the repository is named and not
/// restored, and the target's object under its key stays as it was: a
/// small one is authenticated before its key is opened, a large one's
/// write is aborted at the damaged blob, past its first part.
#[test]
fn a_damaged_object_is_named_and_the_targets_object_under_its_key_kept() {
    let server = S3Server::start();
    let source = Store::s3(&server, server.bucket());
    let big = random_bytes(24 << 20, 7);
    source.put("fine.txt", b"snapshot fine".to_vec(), None, &[]);
    source.put("small.txt", b"snapshot small".to_vec(), None, &[]);
    source.put("big.bin", big, None, &[]);
    let env = env_for(source_vars(&server));
    env.ok(&["backup", &s3_url(&server, server.bucket())]);
    let listed = env.ok(&["ls", "latest"]);
    let path = |name: &str| listed.lines().find(|l| l.ends_with(name)).unwrap_or_else(|| panic!("{listed}")).to_string();
    let small = super::repair::damage_blob(&env, "latest", Path::new(&path("/small.txt")), |n| n.content[0]);
    let last = super::repair::damage_blob(&env, "latest", Path::new(&path("/big.bin")), |n| *n.content.last().unwrap());

    let target = new_bucket(&server, "busy");
    let held_big = random_bytes(3 << 20, 8);
    target.put("small.txt", b"held small".to_vec(), None, &[]);
    target.put("big.bin", held_big.clone(), None, &[]);
    target.put("extra", b"not in the snapshot".to_vec(), None, &[]);
    let errors = restore_one_and_flush_one(&env, &server);
    let damage = |id| tresor_engine::Error::corrupt("blob", id, "it fails authentication");
    let want = format!(
        "error: big.bin: this object was not restored: {}\nerror: small.txt: this object was not restored: {}\ntresor: error: 2 objects could not be read\n",
        damage(last),
        damage(small)
    );
    assert_eq!(errors, want);
    let held = target.objects();
    assert_eq!(held.keys().cloned().collect::<Vec<_>>(), ["big.bin", "fine.txt", "small.txt"]);
    let hash = |key: &str| held[key].split(' ').nth(1).unwrap().to_string();
    let of = |bytes: &[u8]| blake3::hash(bytes).to_hex().to_string();
    assert_eq!(hash("fine.txt"), of(b"snapshot fine"));
    assert_eq!(hash("small.txt"), of(b"held small"));
    assert_eq!(hash("big.bin"), of(&held_big), "the large object's aborted write left the held one");
}

#[test]
fn wrong_credentials_a_missing_bucket_and_a_silent_endpoint_are_one_line_and_no_snapshot() {
    let server = S3Server::start();
    Store::s3(&server, server.bucket()).put("a", b"a".to_vec(), None, &[]);
    let mut env = env_for(source_vars(&server));
    let url = s3_url(&server, server.bucket());
    fails_in_one_line(&env, &["backup", &s3_url(&server, "no-such-bucket")], "bucket no-such-bucket does not exist");
    fails_in_one_line(&env, &["backup", &url, "--exclude", "*.log"], "do not apply to a bucket source");
    let silent = RudeServer::start(Rudeness::Silent);
    let quiet = format!("bucket+s3://{}?endpoint=http://127.0.0.1:{}", server.bucket(), silent.port());
    fails_in_one_line(&env, &["backup", &quiet, "--storage-timeout", "2s"], "timeout");
    env.vars.retain(|(k, _)| k != "TRESOR_SOURCE_AWS_SECRET_ACCESS_KEY");
    env.vars.push(("TRESOR_SOURCE_AWS_SECRET_ACCESS_KEY".into(), "wrong".into()));
    let err = fails_in_one_line(&env, &["backup", &url], "refused");
    assert!(!err.contains("wrong") && !err.contains(server.secret_key()), "{err}");
    assert_eq!(env.json(&["snapshots"]), serde_json::json!([]));
}

#[test]
fn an_object_deleted_between_listing_and_download_is_reported_and_the_rest_saved() {
    // Read in key order by one worker: reading a-big deletes z-gone, which
    // the listing (done before the first download) has seen.
    let server = S3Server::deleting_on_read("a-big", "z-gone");
    let source = Store::s3(&server, server.bucket());
    source.put("a-big", random_bytes(3 << 20, 3), None, &[]);
    source.put("b-kept", b"kept".to_vec(), None, &[]);
    source.put("z-gone", b"gone".to_vec(), None, &[]);
    let env = env_for(source_vars(&server));
    let out = env.cmd(&["backup", &s3_url(&server, server.bucket()), "--threads", "1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("z-gone: deleted after it was listed"), "{err}");
    let snap = newest(&env);
    assert_eq!(snap["source"]["consistency"]["vanished"], 1);
    assert_eq!(snap["errors"][0]["path"], "z-gone");
    let dir = env.path("out");
    env.ok(&["restore", snap["id"].as_str().unwrap(), "--target", dir.to_str().unwrap()]);
    assert_eq!(fs::read(dir.join("b-kept")).unwrap(), b"kept");
    assert_eq!(fs::metadata(dir.join("a-big")).unwrap().len(), 3 << 20);
    assert!(!dir.join("z-gone").exists());
}

/// Keys a file system cannot hold as they are come back exactly, and a
/// restore into a directory stays inside it.
#[test]
fn azure_blob_round_trips_with_keys_no_file_system_holds() {
    let server = AzuriteServer::start();
    let source = Store::azure(&server, server.container());
    source.put("shop/a", b"an object named as a prefix".to_vec(), Some("text/plain"), &[("k", "v")]);
    source.put("shop/a/b", b"below it".to_vec(), None, &[]);
    source.put("shop/folder/", Vec::new(), None, &[]);
    source.put("shop/x..y/%41/.hidden", b"dots".to_vec(), None, &[]);
    for i in 0..50 {
        source.put(&format!("shop/n/{i}"), random_bytes(i * 100, i as u64), Some("application/json"), &[("i", &i.to_string())]);
    }
    server.create_container("copy");
    let vars: Vec<(String, String)> = server.env().into_iter().map(|(k, v)| (format!("TRESOR_SOURCE_{k}"), v)).collect();
    let env = env_for(vars);
    env.ok(&["backup", &format!("bucket+azblob://{}/shop", server.container())]);
    let id = newest(&env)["id"].as_str().unwrap().to_string();
    env.ok(&["restore", &id, "--to", "bucket+azblob://copy/shop"]);
    let shop = Store::azure(&server, server.container());
    let copy = Store::azure(&server, "copy");
    assert_eq!(copy.objects(), shop.objects());
    assert_eq!(copy.objects().len(), 54);

    // Onto another store: the n/ objects into a bucket of the S3 server
    // (whose files cannot hold both a and a/b).
    let s3 = S3Server::start();
    let other = new_bucket(&s3, "other");
    let mut env = env;
    env.vars.extend(source_vars(&s3));
    env.ok(&["restore", &id, "--to", &s3_url(&s3, "other"), "--include", "n/"]);
    let n_objects: Objects =
        shop.objects().into_iter().filter(|(k, _)| k.starts_with("shop/n/")).map(|(k, v)| (k["shop/".len()..].to_string(), v)).collect();
    assert_eq!(other.objects(), n_objects);

    let dir = env.path("jail/restored");
    env.ok(&["restore", &id, "--target", dir.to_str().unwrap()]);
    assert_eq!(fs::read(dir.join("a%")).unwrap(), b"an object named as a prefix");
    assert_eq!(fs::read(dir.join("a/b")).unwrap(), b"below it");
    assert!(dir.join("folder/%").is_file());
    assert_eq!(fs::read(dir.join("x..y/%2541/.hidden")).unwrap(), b"dots");
    assert_eq!(fs::read_dir(env.path("jail")).unwrap().count(), 1, "nothing beside the target");
}

#[test]
fn gcs_round_trips_with_metadata() {
    let server = GcsServer::start();
    let source = Store::gcs(&server, "/uploads/");
    // gcp-storage-emulator drops the connection on an empty upload, so
    // every object here holds bytes.
    for i in 0..40 {
        source.put(&format!("{}/file-{i}", i % 4), random_bytes(1 + i * 700, i as u64), Some("image/jpeg"), &[("n", &i.to_string())]);
    }
    let env = env_for(server.env().into_iter().map(|(k, v)| (format!("TRESOR_SOURCE_{k}"), v)).collect());
    env.ok(&["backup", &format!("bucket+gcs://{}/uploads", server.bucket())]);
    let id = newest(&env)["id"].as_str().unwrap().to_string();
    env.ok(&["restore", &id, "--to", &format!("bucket+gcs://{}/restored", server.bucket())]);
    let restored = Store::gcs(&server, "/restored/");
    assert_eq!(restored.objects(), source.objects());
    assert_eq!(restored.objects().len(), 40);
}

/// A bucket drill restores into its scratch directory and checks the count,
/// the bytes and a sample of content hashes recorded at backup; a backup
/// that downloaded nothing still records the sample (from its parent).
#[test]
fn a_bucket_drill_counts_sums_and_reads_back_a_sample() {
    let server = S3Server::start();
    let source = Store::s3(&server, server.bucket());
    let objects: Vec<_> =
        (0..1500u64).map(|i| (format!("v2/blobs/{}/{i}", i % 16), random_bytes(10 + i as usize, i), None, Vec::new())).collect();
    source.put_all(objects);
    let env = env_for(source_vars(&server));
    let url = s3_url(&server, server.bucket());
    env.ok(&["backup", &url, "--tag", "source=registry"]);
    env.ok(&["backup", &url, "--tag", "source=registry"]);
    let point = &newest(&env)["source"]["consistency"];
    assert_eq!((point["downloaded"].as_u64(), point["sample"].as_array().map(Vec::len)), (Some(0), Some(9)), "{point}");
    let plan = env.path("tresor.yaml");
    fs::write(
        &plan,
        format!(
            "repositories:\n  primary:\n    url: {}\n    password_file: {}\nclasses:\n  standard:\n    rpo: 1h\n    rto: 1h\n\
             sources:\n  - name: registry\n    class: standard\n    url: \"{url}\"\n    schedule: \"@hourly\"\n\
             daemon:\n  state: {}\ndrills:\n  scratch_dir: {}\n",
            env.repo,
            env.path("pw").display(),
            env.path("state.db").display(),
            env.path("scratch").display()
        ),
    )
    .unwrap();
    let reports = env.json(&["drill", "--plan", plan.to_str().unwrap(), "registry"]);
    let r = &reports[0];
    assert_eq!(r["passed"], true, "{r}");
    let bytes: u64 = (0..1500u64).map(|i| 10 + i).sum();
    assert_eq!(
        r["checks"],
        serde_json::json!([
            format!("1500 objects ({bytes} bytes) restored, as the backup listed"),
            "9 sampled objects read back and matched the content hashes recorded at backup"
        ])
    );
}
