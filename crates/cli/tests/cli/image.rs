//! The image of deploy/image, built by scripts/build-image.sh around this
//! build's binary and started by runc as the Deployment of deploy/kubernetes
//! starts it: its user and group, a read-only root, no new privileges, no
//! capabilities, a tmpfs for every emptyDir, its environment; the host's
//! network, so the harness servers on 127.0.0.1 are reached. Inside it: a
//! backup restored byte for byte from the in-process S3 server, a PostgreSQL
//! logical backup restored with every row, and drills whose scratch
//! redis-server and PostgreSQL run in the container.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use tresor_testkit::{PostgresServer, RedisServer, S3Server};

use super::sources::{fill, row_counts};
use super::*;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const PASSWORD_FILE: &str = "/etc/tresor-secrets/repository-password";

/// What the image must hold: every program tresor runs (PostgreSQL's from
/// `TRESOR_PG_BIN`, the rest from `PATH`).
const PROGRAMS: &[&str] = &["tini", "tresor", "sh", "tar", "ssh", "redis-server", "redis-cli", "etcd", "etcdctl"];
const PG_PROGRAMS: &[&str] = &["pg_dump", "pg_restore", "pg_dumpall", "pg_basebackup", "psql", "initdb", "pg_ctl", "postgres"];

/// The tresor container of deploy/kubernetes/deployment.yaml, as read at
/// test time.
struct Pod {
    user: u64,
    group: u64,
    fs_group: u64,
    read_only_root: bool,
    no_new_privileges: bool,
    drop_all_capabilities: bool,
    /// The mount path of every emptyDir volume.
    empty_dirs: Vec<String>,
    /// (volume name, mount path, read-only) of every other volume.
    volumes: Vec<(String, String, bool)>,
    env: Vec<(String, String)>,
}

fn deployment_pod() -> Pod {
    let path = format!("{ROOT}/deploy/kubernetes/deployment.yaml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let docs: Vec<Value> = text.split("\n---\n").map(|doc| serde_norway::from_str(doc).unwrap_or_else(|e| panic!("{path}: {e}"))).collect();
    let spec =
        &docs.iter().find(|d| d["kind"] == "Deployment").unwrap_or_else(|| panic!("{path}: no Deployment"))["spec"]["template"]["spec"];
    let container = spec["containers"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "tresor")).expect("a container named tresor");
    let (pod_sc, sc) = (&spec["securityContext"], &container["securityContext"]);
    // A container's own setting wins over the pod's, as in Kubernetes.
    let id = |key: &str| sc[key].as_u64().or(pod_sc[key].as_u64()).unwrap_or_else(|| panic!("{path}: no {key}"));
    let volume = |name: &Value| spec["volumes"].as_array().and_then(|v| v.iter().find(|v| v["name"] == *name)).cloned().unwrap_or_default();
    let (mut empty_dirs, mut volumes) = (Vec::new(), Vec::new());
    for m in container["volumeMounts"].as_array().expect("volumeMounts") {
        let mount_path = m["mountPath"].as_str().expect("mountPath").to_string();
        if volume(&m["name"]).get("emptyDir").is_some() {
            empty_dirs.push(mount_path);
        } else {
            volumes.push((m["name"].as_str().unwrap().to_string(), mount_path, m["readOnly"] == true));
        }
    }
    let env =
        container["env"].as_array().into_iter().flatten().filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())));
    let pod = Pod {
        user: id("runAsUser"),
        group: id("runAsGroup"),
        fs_group: pod_sc["fsGroup"].as_u64().unwrap_or_else(|| panic!("{path}: no fsGroup")),
        read_only_root: sc["readOnlyRootFilesystem"] == true,
        no_new_privileges: sc["allowPrivilegeEscalation"] == false,
        drop_all_capabilities: sc["capabilities"]["drop"].as_array().is_some_and(|d| d.iter().any(|c| c == "ALL")),
        empty_dirs,
        volumes,
        env: env.collect(),
    };
    assert!(pod_sc["runAsNonRoot"] != true || pod.user != 0, "{path}: runAsNonRoot with runAsUser 0");
    pod
}

fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    assert!(found, "missing tool: {tool} (Debian package {package}; scripts/test.sh installs it)");
}

fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The image archive's configuration, checked against its manifest and
/// against the `manifest.json` that engines without OCI support load.
fn image_config(layout: &Path) -> (String, Value) {
    let blob = |digest: &Value| layout.join("blobs/sha256").join(digest.as_str().unwrap().trim_start_matches("sha256:"));
    let index = read_json(&layout.join("index.json"));
    let descriptor = &index["manifests"][0];
    let reference = descriptor["annotations"]["org.opencontainers.image.ref.name"].as_str().expect("a reference name").to_string();
    let manifest = read_json(&blob(&descriptor["digest"]));
    let docker = &read_json(&layout.join("manifest.json"))[0];
    let layers: Vec<Value> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| json!(format!("blobs/sha256/{}", &l["digest"].as_str().unwrap()[7..])))
        .collect();
    assert_eq!(docker["Layers"], json!(layers), "manifest.json names the OCI manifest's layers");
    assert_eq!(docker["Config"].as_str(), blob(&manifest["config"]["digest"]).strip_prefix(layout).unwrap().to_str());
    assert_eq!(docker["RepoTags"], json!([reference]));
    assert_eq!(layers.len(), 2, "the Debian layer and the binary's, apart so the first is cached");
    (reference, read_json(&blob(&manifest["config"]["digest"])))
}

/// A runc bundle of the image, configured as the Deployment's container.
struct Container {
    dir: tempfile::TempDir,
    config: Value,
    entrypoint: Vec<String>,
    runs: AtomicUsize,
}

impl Container {
    /// Build (or take from the cache) the image with this build's binary,
    /// unpack it with umoci and configure it from `pod`; `binds` are
    /// (host path, container path, read-only), `volumes` the host paths of
    /// the Deployment's other volumes by name.
    fn build(pod: &Pod, volumes: &[(&str, &Path)], binds: &[(&Path, &str, bool)], env: &[(String, String)]) -> Container {
        for (tool, package) in [("runc", "runc"), ("umoci", "umoci"), ("mmdebstrap", "mmdebstrap")] {
            require(tool, package);
        }
        let dir = tempfile::Builder::new().prefix("tresor-image-").tempdir().unwrap();
        let archive = dir.path().join("tresor.tar");
        let started = std::time::Instant::now();
        let script = format!("{ROOT}/scripts/build-image.sh");
        run_ok(Command::new(&script).args(["--binary", BIN, "--out"]).arg(&archive), "scripts/build-image.sh");
        eprintln!("image built in {:.1}s: {} MB", started.elapsed().as_secs_f64(), fs::metadata(&archive).unwrap().len() >> 20);
        let layout = dir.path().join("layout");
        fs::create_dir(&layout).unwrap();
        run_ok(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&layout), "unpack the image archive");
        let (reference, image) = image_config(&layout);
        assert_eq!(image["config"]["User"], format!("{}:{}", pod.user, pod.group), "the image's user is the Deployment's");
        let bundle = dir.path().join("bundle");
        let image_ref = format!("{}:{reference}", layout.display());
        run_ok(Command::new("umoci").args(["unpack", "--image", &image_ref]).arg(&bundle), "umoci unpack");
        let mut config = read_json(&bundle.join("config.json"));
        configure(&mut config, pod, volumes, binds, env);
        let entrypoint =
            image["config"]["Entrypoint"].as_array().expect("an Entrypoint").iter().map(|a| a.as_str().unwrap().into()).collect();
        Container { dir, config, entrypoint, runs: AtomicUsize::new(0) }
    }

    /// Run `argv` as the container's process; its output.
    fn exec(&self, argv: &[String]) -> Output {
        let mut config = self.config.clone();
        config["process"]["args"] = json!(argv);
        let bundle = self.dir.path().join("bundle");
        fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let id = format!("tresor-image-{}-{}", std::process::id(), self.runs.fetch_add(1, Ordering::Relaxed));
        Command::new("runc").args(["run", "--bundle"]).arg(&bundle).arg(&id).stdin(Stdio::null()).output().expect("run runc")
    }

    /// `tresor ARGS` through the image's entrypoint; stdout, demanding success.
    fn tresor(&self, args: &[&str]) -> String {
        let argv: Vec<String> = self.entrypoint.iter().cloned().chain(args.iter().map(|a| a.to_string())).collect();
        let out = self.exec(&argv);
        assert!(
            out.status.success(),
            "tresor {args:?} in the container: {:?}: {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn tresor_json(&self, args: &[&str]) -> Value {
        let text = self.tresor(&[args, &["--json"]].concat());
        serde_json::from_str(text.lines().last().unwrap_or("null")).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }
}

/// The runtime configuration umoci made from the image (its user,
/// entrypoint, environment and working directory), with the Deployment's
/// security context, mounts and environment applied.
fn configure(config: &mut Value, pod: &Pod, volumes: &[(&str, &Path)], binds: &[(&Path, &str, bool)], env: &[(String, String)]) {
    let process = &mut config["process"];
    process["terminal"] = json!(false);
    process["user"] = json!({"uid": pod.user, "gid": pod.group, "additionalGids": [pod.fs_group]});
    process["noNewPrivileges"] = json!(pod.no_new_privileges);
    if pod.drop_all_capabilities {
        process["capabilities"] = json!({"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []});
    }
    let vars = process["env"].as_array_mut().expect("the image's environment");
    vars.extend(pod.env.iter().chain(env).map(|(k, v)| json!(format!("{k}={v}"))));
    config["root"]["readonly"] = json!(pod.read_only_root);
    let mounts = config["mounts"].as_array_mut().unwrap();
    for path in &pod.empty_dirs {
        // runc gives a tmpfs the mode of the directory beneath: the image's (deploy/image/setup.sh).
        mounts.push(json!({"destination": path, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}));
    }
    let bind = |host: &Path, path: &str, ro: bool| {
        let mut options = vec!["rbind", "nosuid", "nodev"];
        options.extend(ro.then_some("ro"));
        json!({"destination": path, "type": "bind", "source": host, "options": options})
    };
    // A volume the test does not provide is left out, as an optional Secret that does not exist.
    for (name, path, ro) in &pod.volumes {
        if let Some((_, host)) = volumes.iter().find(|(n, _)| n == name) {
            mounts.push(bind(host, path, *ro));
        }
    }
    mounts.extend(binds.iter().map(|(host, path, ro)| bind(host, path, *ro)));
    // The host's network: the harness servers listen on 127.0.0.1.
    config["linux"]["namespaces"].as_array_mut().unwrap().retain(|ns| ns["type"] != "network");
    config["hostname"] = json!("tresor");
}

/// A directory the container's user may enter: the test's temporary
/// directories are root's alone.
fn host_dir(parent: &Path, name: &str, owner: Option<u64>) -> PathBuf {
    let dir = parent.join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    if let Some(uid) = owner {
        run_ok(Command::new("chown").arg("-R").arg(format!("{uid}:{uid}")).arg(&dir), "chown");
    }
    dir
}

fn files_to_back_up(src: &Path, owner: u64) {
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(src.join("small.txt"), b"hello from the image\n").unwrap();
    fs::write(src.join("sub/big.bin"), random_bytes(3 << 20, 7)).unwrap();
    fs::write(src.join("sub/deeper/text.log"), "line of text\n".repeat(20_000)).unwrap();
    std::os::unix::fs::symlink("sub/big.bin", src.join("link")).unwrap();
    fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(src.join("small.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    // The restore runs as the container's user and so owns what it writes:
    // the originals are that user's too, so that ownership compares.
    run_ok(Command::new("chown").arg("-hR").arg(format!("{owner}:{owner}")).arg(src), "chown");
}

fn plan(repo: &str, redis: &RedisServer, pg: &PostgresServer) -> String {
    format!(
        "repositories:\n  primary:\n    url: {repo}\n    password_file: {PASSWORD_FILE}\n\
         classes:\n  critical:\n    rpo: 15m\n    rto: 2h\n\
         sources:\n  - name: sessions\n    class: critical\n    url: {}\n    schedule: \"*/15 * * * *\"\n    verify:\n      min_keys: 2000\n\
         \x20 - name: shop-db\n    class: critical\n    url: {}\n    schedule: \"*/15 * * * *\"\n\
         daemon:\n  state: /var/lib/tresor/state.db\n\
         drills:\n  scratch_dir: /var/tmp/tresor\n",
        redis.url(),
        pg.url("shop")
    )
}

/// The container's own view: PID 1, its identity and privileges, its root
/// file system, and every program tresor runs (the missing ones by name).
fn check_inside(c: &Container, pod: &Pod) {
    assert_eq!(c.entrypoint, ["tini", "--", "tresor"], "tini is PID 1 and runs tresor");
    let script = format!(
        "echo \"pid1=$(cat /proc/1/comm)\"; echo \"user=$(id -u):$(id -g)\"; \
         sed -n 's/^CapBnd:\\t/capabilities=/p; s/^NoNewPrivs:\\t/no_new_privileges=/p' /proc/self/status; \
         sed -n 's#^[^ ]* / [^ ]* \\([^,]*\\).*#root=\\1#p' /proc/mounts; \
         for p in {}; do command -v \"$p\" >/dev/null || echo \"missing=$p\"; done; \
         for p in {}; do [ -x \"$TRESOR_PG_BIN/$p\" ] || echo \"missing=$p (in TRESOR_PG_BIN=$TRESOR_PG_BIN)\"; done",
        PROGRAMS.join(" "),
        PG_PROGRAMS.join(" ")
    );
    let argv: Vec<String> = ["tini", "--", "sh", "-c", &script].iter().map(|a| a.to_string()).collect();
    let out = c.exec(&argv);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sh in the container: {text}{}", String::from_utf8_lossy(&out.stderr));
    let facts: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let fact = |key: &str| facts.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v).collect::<Vec<_>>().join(", ");
    assert_eq!(fact("missing"), "", "the image (deploy/image/packages.txt) lacks programs tresor runs");
    assert_eq!(fact("pid1"), "tini");
    assert_eq!(fact("user"), format!("{}:{}", pod.user, pod.group));
    assert_eq!(fact("no_new_privileges"), if pod.no_new_privileges { "1" } else { "0" });
    assert_eq!(fact("root"), if pod.read_only_root { "ro" } else { "rw" });
    if pod.drop_all_capabilities {
        assert_eq!(fact("capabilities"), "0000000000000000", "no capability, not even in the bounding set");
    }
}

#[test]
fn the_image_backs_up_restores_and_drills_as_the_deployment_runs_it() {
    let pod = deployment_pod();
    let work = tempfile::Builder::new().prefix("tresor-image-run-").tempdir().unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // Restored files land in a host directory bound in for the test, so the host can compare them.
    let (data, out) = (host_dir(work.path(), "data", None), host_dir(work.path(), "out", Some(pod.user)));
    let (plan_dir, secrets) = (host_dir(work.path(), "plan", None), host_dir(work.path(), "secrets", None));
    fs::write(secrets.join("repository-password"), "correct horse\n").unwrap();
    files_to_back_up(&data.join("src"), pod.user);
    let s3 = S3Server::start();
    let repo = format!("s3://{}/team/prod", s3.bucket());
    let mut env = s3.env();
    env.extend(
        [("TRESOR_REPOSITORY", repo.as_str()), ("TRESOR_PASSWORD_FILE", PASSWORD_FILE), ("TRESOR_KDF_MEMORY", "1M")]
            .map(|(k, v)| (k.into(), v.into())),
    );
    let volumes = [("plan", plan_dir.as_path()), ("secrets", secrets.as_path())];
    let c = Container::build(&pod, &volumes, &[(&data, "/data", true), (&out, "/out", false)], &env);
    check_inside(&c, &pod);

    // Files: backed up to S3 and restored, byte for byte.
    c.tresor(&["init"]);
    let backup = c.tresor_json(&["backup", "/data/src"]);
    assert_eq!(backup["files_new"], 4, "the four regular files: {backup}");
    c.tresor(&["restore", backup["snapshot_id"].as_str().unwrap(), "--target", "/out/restored"]);
    assert_eq!(inventory(&out.join("restored/data/src")), inventory(&data.join("src")));

    // PostgreSQL: pg_dump and pg_restore of the image against a harness server.
    let pg = PostgresServer::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.pgbench_init("shop", 1);
    let before = row_counts(&pg, "shop");
    assert!(before.starts_with("100000,1,10,"), "{before}");
    let dump = c.tresor_json(&["backup", &pg.url("shop"), "--tag", "source=shop-db"]);
    c.tresor(&["restore", dump["snapshot_id"].as_str().unwrap(), "--to", &pg.url("shop_restored")]);
    assert_eq!(row_counts(&pg, "shop_restored"), before, "every row restored from inside the image");

    // Drills: the scratch redis-server and PostgreSQL run in the container,
    // in its emptyDir scratch.
    let redis = RedisServer::start(&[]);
    fill(&redis);
    c.tresor(&["backup", &redis.url(), "--tag", "source=sessions"]);
    fs::write(plan_dir.join("tresor.yaml"), plan(&repo, &redis, &pg)).unwrap();
    let reports = c.tresor_json(&["drill", "--plan", "/etc/tresor/tresor.yaml"]);
    let by = |name: &str| reports.as_array().unwrap().iter().find(|r| r["source"] == name).unwrap_or_else(|| panic!("{reports}")).clone();
    let (sessions, shop) = (by("sessions"), by("shop-db"));
    assert_eq!((sessions["passed"].as_bool(), shop["passed"].as_bool()), (Some(true), Some(true)), "{reports:#}");
    assert_eq!(
        sessions["checks"],
        json!(["2007 keys, as the instance held when the backup forked", "5 sampled keys present", "at least 2000 keys"])
    );
    assert!(shop["checks"][0].as_str().unwrap().starts_with("pg_restore into a scratch cluster"), "{shop}");
    assert!(shop["checks"][1].as_str().unwrap().starts_with("row counts of "), "{shop}");
    assert_eq!(redis.cli(&["DBSIZE"]), "2007", "the drill left production alone");
}
