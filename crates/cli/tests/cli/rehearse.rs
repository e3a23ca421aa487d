//! Disaster rehearsals (issue 15): drills from the off-site copy (an S3
//! repository with its own password, filled by `copy`), the test plan's ids,
//! types and owners in the protocol, annotations appended to the evidence
//! log, and the report's ISO 27001 mapping. Real servers: Redis, the
//! in-process S3 server.

use tresor_testkit::{RedisServer, S3Server};

use super::sources::fill;
use super::*;

struct Site {
    env: Env,
    s3: Option<S3Server>,
    _redis: RedisServer,
    plan: PathBuf,
    offsite: String,
    scratch: tempfile::TempDir,
}

/// A plan of two classes, each copied to an off-site S3 repository with a
/// password of its own: `critical` (Redis) drills from the off-site copy as
/// test BT-DR-01, `archive` (a volume) from its primary as BT-VL-01.
fn site(drill_schedule: &str) -> Site {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").display().to_string();
    let env = Env::with_repo(dir, repo, s3.env());
    fs::write(env.path("offsite-pw"), "another horse\n").unwrap();
    let offsite = format!("s3://{}/offsite", s3.bucket());
    env.ok(&["init"]);
    let out = env.as_holder_of("offsite-pw", &["-r", &offsite, "init"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let redis = RedisServer::start(&[]);
    fill(&redis);
    let volume = env.path("volume");
    sample_tree(&volume);
    let scratch = super::drill::scratch_dir("tresor-rehearse-");
    let plan = env.path("tresor.yaml");
    fs::write(
        &plan,
        format!(
            r#"repositories:
  primary:
    url: {repo}
    password_file: {pw}
  offsite:
    url: {offsite}
    password_file: {offsite_pw}
classes:
  critical:
    rpo: 15m
    rto: 2h
    offsite: offsite
    drill:
      schedule: "{drill_schedule}"
      owner: Homelab Owner
      id: BT-DR-01
      type: dr
      from: offsite
  archive:
    rpo: 1d
    rto: 1d
    offsite: offsite
    drill:
      schedule: "0 3 1 */6 *"
      owner: Platform Lead
      id: BT-VL-01
      type: validation
sources:
  - name: sessions
    class: critical
    url: {redis}
    schedule: "*/15 * * * *"
    verify:
      min_keys: 2000
  - name: documents
    class: archive
    url: {volume}
    schedule: "@daily"
daemon:
  state: {state}
drills:
  scratch_dir: {scratch}
"#,
            repo = env.repo,
            pw = env.path("pw").display(),
            offsite_pw = env.path("offsite-pw").display(),
            redis = redis.url(),
            volume = volume.display(),
            state = env.path("state.db").display(),
            scratch = scratch.path().display(),
        ),
    )
    .unwrap();
    env.ok(&["backup", &redis.url(), "--tag", "source=sessions"]);
    env.ok(&["backup", volume.to_str().unwrap(), "--tag", "source=documents"]);
    env.ok(&["copy", "--to", &offsite, "--to-password-file", env.path("offsite-pw").to_str().unwrap()]);
    Site { env, s3: Some(s3), _redis: redis, plan, offsite, scratch }
}

impl Site {
    fn drill(&self, args: &[&str]) -> Output {
        let mut all = vec!["drill", "--plan", self.plan.to_str().unwrap(), "--json"];
        all.extend(args);
        self.env.run(&all)
    }

    fn reports(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let out = self.drill(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str::<serde_json::Value>(text.lines().last().unwrap()).unwrap().as_array().unwrap().clone()
    }

    fn protocol_entries(&self) -> usize {
        let drills = self.env.json(&["audit", "--state", self.env.path("state.db").to_str().unwrap()]);
        drills.as_array().unwrap().iter().filter(|a| a["action"] == "drill").count()
    }

    fn report(&self, format: &str) -> String {
        let out = self.env.run(&["report", "--plan", self.plan.to_str().unwrap(), "--format", format]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

fn fields(r: &serde_json::Value) -> (String, String, String, String, bool) {
    let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
    (s("source"), s("from"), s("repository"), s("test"), r["passed"].as_bool().unwrap())
}

#[test]
fn drills_restore_from_the_offsite_copy_and_the_report_shows_when_each_copy_was_proven() {
    let site = site("0 4 1 1 *");
    // The plan's drill.from: critical from the off-site copy, archive from its primary.
    let reports = site.reports(&[]);
    let got: Vec<_> = reports.iter().map(fields).collect();
    let want = [
        ("sessions".to_string(), "offsite".to_string(), "offsite".to_string(), "BT-DR-01".to_string(), true),
        ("documents".into(), "primary".into(), "primary".into(), "BT-VL-01".into(), true),
    ];
    assert_eq!(got, want, "{reports:#?}");
    assert_eq!(reports[0]["checks"][0], "2007 keys, as the instance held when the backup forked");
    assert_eq!((reports[0]["test_type"].as_str(), reports[1]["test_type"].as_str()), (Some("dr"), Some("validation")));
    assert_eq!(reports[0]["owner"], "Homelab Owner");
    assert!(reports[0]["rto_seconds"].as_f64().unwrap() > 0.0);

    // --from names the copy: the off-site repository by its plan name, or by URL with its password file.
    let by_name = site.reports(&["archive", "--from", "offsite"]);
    assert_eq!(fields(&by_name[0]), ("documents".into(), "offsite".into(), "offsite".into(), "BT-VL-01".into(), true));
    assert!(by_name[0]["checks"][0].as_str().unwrap().ends_with("read back and matched the snapshot's content hashes"));
    let pw = site.env.path("offsite-pw");
    let by_url = site.reports(&["documents", "--from", &site.offsite, "--from-password-file", pw.to_str().unwrap()]);
    assert_eq!(fields(&by_url[0]), ("documents".into(), "offsite".into(), site.offsite.clone(), "BT-VL-01".into(), true));
    assert_eq!(fs::read_dir(site.scratch.path()).unwrap().count(), 0, "scratch is removed after each drill");

    let text = site.env.ok(&["drill", "--plan", site.plan.to_str().unwrap(), "critical"]);
    assert!(
        text.starts_with("PASS sessions (critical) DRILL-") && text.lines().next().unwrap().ends_with(" from the off-site copy offsite"),
        "{text}"
    );

    let json: serde_json::Value = serde_json::from_str(&site.report("json")).unwrap();
    let class = |n: &str| json["classes"].as_array().unwrap().iter().find(|c| c["name"] == n).unwrap().clone();
    let (critical, archive) = (class("critical"), class("archive"));
    assert!(critical["last_proven_offsite"].is_string() && critical["last_proven_primary"].is_null(), "{critical}");
    assert!(archive["last_proven_offsite"].is_string() && archive["last_proven_primary"].is_string(), "{archive}");
    let md = site.report("md");
    let row = md.lines().find(|l| l.starts_with("| critical | 15m | ")).unwrap();
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(row.contains(&format!(" | never / {day} ")), "{row}");
    assert!(md.contains("| BT-DR-01 | dr | critical (sessions) | off-site | 0 4 1 1 * (every 365d) | Homelab Owner | "), "{md}");
    assert!(md.contains("| BT-VL-01 | validation | archive (documents) | primary | 0 3 1 */6 * (every "), "{md}");
    let sessions_row = md.lines().find(|l| l.contains(" | BT-DR-01 | off-site (offsite) | sessions (critical) | passed | ")).unwrap_or("");
    assert!(sessions_row.starts_with(&format!("| {day}")), "the protocol names the copy: {md}");
    assert!(md.contains("2 of 2 classes restored from their off-site copy in the period"), "{md}");

    // Faults: a wrong password, then an unreachable off-site repository:
    // one line, at once, and neither scratch nor the protocol touched.
    let entries = site.protocol_entries();
    let marker = site.scratch.path().join("left-alone");
    fs::write(&marker, "x").unwrap();
    let out = site.drill(&["documents", "--from", &site.offsite]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(12), "{err}");
    assert_eq!(
        err,
        format!(
            "tresor: error: cannot open the off-site repository {}; no drill ran: wrong password: no key of this repository opens with it\n",
            site.offsite
        )
    );
    let mut site = site;
    drop(site.s3.take());
    let started = std::time::Instant::now();
    let out =
        site.env.cmd(&["drill", "--plan", site.plan.to_str().unwrap(), "critical"]).env("TRESOR_STORAGE_TIMEOUT", "5s").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("tresor: error: cannot open the off-site repository offsite; no drill ran: storage read of config failed"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(
        fs::read_dir(site.scratch.path()).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>(),
        [marker.file_name().unwrap()]
    );
    assert_eq!(site.protocol_entries(), entries, "no protocol entry for a drill that never ran");
}

#[test]
fn annotations_join_the_protocol_through_the_evidence_log_and_plan_check_refuses_a_bad_drill_schedule() {
    let site = site("@yearly");
    let reports = site.reports(&["critical"]);
    let id = reports[0]["test_id"].as_str().unwrap().to_string();
    let out = site.env.ok(&[
        "drill",
        "annotate",
        "BT-DR-01",
        "--plan",
        site.plan.to_str().unwrap(),
        "--finding",
        "restore from off-site took 3x longer | link saturated",
        "--follow-up",
        "order a faster uplink (Homelab Owner)",
    ]);
    assert_eq!(out, format!("annotated {id} (sessions): recorded in the evidence log of primary\n"));
    let err = site.env.fails(&["drill", "annotate", "BT-XX-99", "--plan", site.plan.to_str().unwrap(), "--finding", "x"], 1);
    assert_eq!(err, "tresor: error: no drill BT-XX-99 in the protocol (give a drill's id, DRILL-…, or a test id of the plan's drills)\n");
    let err = site.env.fails(&["drill", "annotate", &id, "--plan", site.plan.to_str().unwrap()], 1);
    assert_eq!(err, "tresor: error: nothing to record: give --finding, --follow-up or both\n");

    // An appended entry of the chain, which stays intact; the off-site log is left to `copy`.
    let verify = site.env.json(&["audit", "verify"]);
    assert_eq!((verify["entries"].as_u64(), verify["problems"].as_array().map(Vec::len)), (Some(1), Some(0)), "{verify}");
    let md = site.report("md");
    let row = md.lines().find(|l| l.contains(&id)).unwrap();
    assert!(
        row.contains(
            " | finding: restore from off-site took 3x longer / link saturated; follow-up: order a faster uplink (Homelab Owner) ("
        ),
        "{row}"
    );
    let json: serde_json::Value = serde_json::from_str(&site.report("json")).unwrap();
    assert_eq!(json["annotations"].as_array().unwrap().len(), 1);
    assert_eq!(json["annotations"][0]["test"], "BT-DR-01");
    let controls: Vec<(String, String)> = json["compliance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["framework"].as_str().unwrap().to_string(), c["control"].as_str().unwrap().to_string()))
        .collect();
    assert!(controls.contains(&("ISO/IEC 27001:2022".into(), "A.5.30".into())), "{controls:?}");
    let continuity = json["compliance"].as_array().unwrap().iter().find(|c| c["control"] == "A.17.1.1").unwrap();
    assert_eq!(continuity["framework"], "ISO/IEC 27001:2013");
    let evidence = continuity["evidence"].as_str().unwrap();
    assert!(
        evidence.starts_with("test plan: 2 (BT-VL-01 (validation, 0 3 1 */6 *, Platform Lead); BT-DR-01 (dr, @yearly, Homelab Owner)); 1 protocol entries, 1 of them disaster-recovery exercises; 1 findings and follow-ups recorded; "),
        "{evidence}"
    );

    // An unparseable drill schedule is refused by line, not dropped.
    let text = fs::read_to_string(&site.plan).unwrap().replace("\"@yearly\"", "\"every new year\"");
    fs::write(&site.plan, text).unwrap();
    let out = site.env.run(&["plan", "check", site.plan.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = format!(
        "{}:14: error: class critical: drill schedule \"every new year\" is not a cron expression of five fields (or @hourly, @daily, @weekly, @monthly, @yearly)",
        site.plan.display()
    );
    assert_eq!(stdout.lines().filter(|l| l.contains(": error: ")).collect::<Vec<_>>(), [line.as_str()], "{stdout}");
    let err = site.env.fails(&["drill", "--plan", site.plan.to_str().unwrap()], 1);
    assert!(err.starts_with("tresor: error: the plan has 1 error(s); first: "), "{err}");
}

/// The drill tests' ERP-like platform (Redis, PostgreSQL, etcd, the cluster's
/// objects, a volume) lost but for its off-site copy: `dr rehearse` brings
/// every source back from it in dependency order with an empty state
/// directory, validates each, and times the platform against its target.
#[test]
fn a_cold_start_rehearsal_brings_the_platform_back_from_the_offsite_copy() {
    use tresor_testkit::{EtcdServer, PostgresServer};
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").display().to_string();
    let mut env = Env::with_repo(dir, repo, s3.env());
    env.vars.push(("TRESOR_PG_BIN".into(), PostgresServer::bin_dir().display().to_string()));
    fs::write(env.path("offsite-pw"), "another horse\n").unwrap();
    let offsite = format!("s3://{}/offsite", s3.bucket());
    env.ok(&["init"]);
    assert!(env.as_holder_of("offsite-pw", &["-r", &offsite, "init"]).status.success());
    let redis = RedisServer::start(&[]);
    fill(&redis);
    let pg = PostgresServer::start();
    pg.psql("postgres", "CREATE DATABASE erp");
    pg.pgbench_init("erp", 1);
    let cluster = super::k8s::Cluster::start();
    env.vars.push(("KUBECONFIG".into(), cluster.kubeconfig.display().to_string()));
    let etcd = EtcdServer::start();
    for i in 0..30 {
        assert!(etcd.ctl(&["put", &format!("/registry/configmaps/erp/cm{i}"), "v"]).status.success());
    }
    let volume = env.path("volume");
    sample_tree(&volume);
    let state_dir = env.path("empty-state");
    fs::create_dir_all(&state_dir).unwrap();
    let scratch = super::drill::scratch_dir("tresor-rehearse-");
    let sources = [
        ("sessions", "critical", redis.url()),
        ("erp-db", "critical", pg.url("erp")),
        ("documents", "archive", volume.display().to_string()),
        ("cluster-config", "standard", etcd.url()),
        ("k8s-config", "standard", "k8s://".to_string()),
    ];
    let listed: String = sources
        .iter()
        .map(|(name, class, url)| format!("  - name: {name}\n    class: {class}\n    url: \"{url}\"\n    schedule: \"@hourly\"\n"))
        .collect();
    let plan = env.path("tresor.yaml");
    fs::write(
        &plan,
        format!(
            "repositories:\n  primary:\n    url: {}\n    password_file: {}\n  offsite:\n    url: {offsite}\n    password_file: {}\n\
             classes:\n  critical:\n    rpo: 1h\n    rto: 2h\n    offsite: offsite\n  standard:\n    rpo: 1h\n    rto: 8h\n    offsite: offsite\n\
             \x20 archive:\n    rpo: 1d\n    rto: 1d\n    offsite: offsite\nsources:\n{listed}\
             daemon:\n  state: {}\ndrills:\n  scratch_dir: {}\n  platform_rto: 4h\n",
            env.repo,
            env.path("pw").display(),
            env.path("offsite-pw").display(),
            state_dir.join("state.db").display(),
            scratch.path().display()
        ),
    )
    .unwrap();
    for (name, _, url) in &sources[..4] {
        env.ok(&["backup", url, "--tag", &format!("source={name}")]);
    }
    env.ok(&["backup", "k8s://", "--include-namespaces", "shop", "--tag", "source=k8s-config"]);
    env.ok(&["copy", "--to", &offsite, "--to-password-file", env.path("offsite-pw").to_str().unwrap()]);

    let rehearse = |extra: &[&str]| {
        let mut args = vec!["dr", "rehearse", "--plan", plan.to_str().unwrap(), "--from", "offsite"];
        args.extend(extra);
        env.run(&args)
    };
    // What a killed rehearsal left in its scratch directory goes before anything is restored.
    let left = scratch.path().join("tresor-rehearsal/DRILL-20261130-000000-sessions/restore");
    fs::create_dir_all(&left).unwrap();
    fs::write(left.join("dump.rdb"), "half").unwrap();
    let out = rehearse(&["--json", "--keep"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let steps = r["steps"].as_array().unwrap();
    let order: Vec<(&str, &str, &str, bool)> = steps
        .iter()
        .map(|s| {
            let d = &s["drill"];
            (s["tier"].as_str().unwrap(), d["source"].as_str().unwrap(), d["repository"].as_str().unwrap(), d["passed"].as_bool().unwrap())
        })
        .collect();
    assert_eq!(
        order,
        [
            ("cluster configuration and secrets", "cluster-config", "offsite", true),
            ("cluster configuration and secrets", "k8s-config", "offsite", true),
            ("databases", "sessions", "offsite", true),
            ("databases", "erp-db", "offsite", true),
            ("volumes and files", "documents", "offsite", true),
        ],
        "{r:#}"
    );
    let done: Vec<f64> = steps.iter().map(|s| s["done_after_seconds"].as_f64().unwrap()).collect();
    assert!(done.windows(2).all(|w| w[0] < w[1]), "each step ends after the one before: {done:?}");
    assert_eq!((r["rto_target"].as_u64(), r["rto_met"].as_bool(), r["passed"].as_bool()), (Some(14_400), Some(true), Some(true)));
    assert!(r["rto_seconds"].as_f64().unwrap() >= done[4], "{r}");
    assert_eq!(fs::read_dir(&state_dir).unwrap().count(), 0, "a rehearsal needs no state and writes none");
    let mut kept: Vec<String> =
        fs::read_dir(r["scratch"].as_str().unwrap()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    kept.sort();
    let mut want: Vec<String> = steps.iter().map(|s| s["drill"]["test_id"].as_str().unwrap().to_string()).collect();
    want.sort();
    assert_eq!(kept, want, "--keep leaves each source's restored data, and nothing the killed run left");

    // A source the off-site copy lacks: the rest come back, the protocol names it.
    env.ok(&["backup", volume.to_str().unwrap(), "--tag", "source=uploads"]);
    let text = fs::read_to_string(&plan).unwrap().replace(
        "daemon:\n",
        &format!("  - name: uploads\n    class: archive\n    url: \"{}\"\n    schedule: \"@hourly\"\ndaemon:\n", volume.display()),
    );
    fs::write(&plan, text).unwrap();
    let out = rehearse(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.starts_with("rehearsal from offsite: 5 of 6 sources back and validated\n"), "{text}");
    assert!(text.contains("  6. volumes and files: FAIL uploads (archive) in "), "{text}");
    assert!(text.contains("     failed: the source has no snapshot to restore\n"), "{text}");
    let rto = text.lines().find(|l| l.starts_with("platform RTO ")).unwrap_or_default();
    assert!(rto.ends_with(" (target 4h): met"), "{text}");
    let last = text.lines().last().unwrap();
    assert!(
        last.starts_with("evidence: REHEARSAL-") && last.ends_with(" recorded in the evidence log of primary"),
        "a failed rehearsal is evidence too: {text}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().split(", platform RTO").next(),
        Some("tresor: error: the rehearsal failed: 1 of 6 sources not back")
    );
    assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0, "the kept data is gone, and this run's too");

    // The off-site copy's password wrong: one line, at once, scratch untouched.
    let out = env.run(&["dr", "rehearse", "--plan", plan.to_str().unwrap(), "--from", &offsite]);
    assert_eq!(out.status.code(), Some(12));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "tresor: error: cannot open the off-site repository {offsite}; no drill ran: wrong password: no key of this repository opens with it\n"
        )
    );
    assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0);
}

/// The pid in the first file below `dir` whose path ends with `name`, once one is there.
fn pid_in(dir: &Path, name: &str) -> u32 {
    fn find(dir: &Path, name: &str) -> Option<PathBuf> {
        fs::read_dir(dir).ok()?.flatten().find_map(|e| match e.path().to_string_lossy().ends_with(name) {
            true => Some(e.path()),
            false if e.path().is_dir() => find(&e.path(), name),
            false => None,
        })
    }
    // Polls for the file the rehearsal writes as the server starts: the event itself, not a guess at its time.
    for _ in 0..60_000 {
        let pid = find(dir, name).and_then(|f| fs::read_to_string(f).ok()?.lines().next()?.trim().parse().ok());
        if let Some(pid) = pid {
            return pid;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no {name} below {}", dir.display());
}

/// Whether `pid` runs (a zombie no longer does).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// A rehearsal of the drill tests' platform killed (SIGKILL) while its
/// scratch Redis runs, and the next one killed while its scratch PostgreSQL
/// runs: each next run stops the servers, removes the directories and the
/// `<ns>-dr` namespace the killed one left, and the last brings the
/// platform back and leaves nothing.
#[test]
fn a_rehearsal_killed_midway_leaves_nothing_the_next_run_does_not_clean() {
    let erp = super::drill::erp();
    let scratch = erp.scratch.path();
    let args = ["dr", "rehearse", "--plan", erp.plan.to_str().unwrap(), "--from", "primary"];
    let killed_at = |marker: &str| {
        let mut child = erp.env.cmd(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let pid = pid_in(scratch, marker);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(alive(pid), "the scratch server outlived the rehearsal it was started by");
        assert!(erp.cluster.kubectl(&["get", "namespace", "shop-dr"]).status.success(), "the cluster step was done");
        pid
    };
    let redis_server = killed_at("-sessions/restore/.tresor-scratch-server");
    let postgres = killed_at("postmaster.pid");
    assert!(!alive(redis_server), "the second run stopped the Redis the first left");

    let out = erp.env.run(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("rehearsal from primary: 5 of 5 sources back and validated\n"), "{text}");
    assert!(!alive(postgres), "the PostgreSQL the second run left is stopped");
    assert_eq!(fs::read_dir(scratch).unwrap().count(), 0, "no scratch directory stays");
    assert!(!erp.cluster.kubectl(&["get", "namespace", "shop-dr"]).status.success(), "no rehearsal namespace stays");
}

/// Appenders of the evidence log take turns through a claim in the
/// repository: eight `drill annotate` processes at once leave one chain of
/// eight entries, numbered without a gap or a fork.
#[test]
fn concurrent_appenders_leave_one_unbroken_evidence_chain() {
    let site = site("@yearly");
    site.reports(&["critical"]);
    let plan = site.plan.to_str().unwrap();
    let children: Vec<_> = (0..8)
        .map(|i| {
            let finding = format!("finding {i}");
            site.env.cmd(&["drill", "annotate", "BT-DR-01", "--plan", plan, "--finding", &finding]).stdout(Stdio::null()).spawn().unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let verify = site.env.json(&["audit", "verify"]);
    assert_eq!((verify["entries"].as_u64(), verify["problems"].as_array().map(Vec::len)), (Some(8), Some(0)), "{verify}");
    assert_eq!(verify["head"]["seq"], 8, "{verify}");
}

/// The site with a rehearsal in its test plan: BT-DR-01 from the off-site
/// copy on `schedule`, against a 4h platform target (the class's drills
/// take another id: a test id names one test).
fn with_rehearsal(site: &Site, schedule: &str) {
    let text = fs::read_to_string(&site.plan).unwrap().replace("id: BT-DR-01", "id: BT-OS-01");
    let rehearsal = format!(
        "  platform_rto: 4h\n  rehearsal:\n    schedule: \"{schedule}\"\n    from: offsite\n    id: BT-DR-01\n    owner: Platform Lead\n"
    );
    fs::write(&site.plan, text + &rehearsal).unwrap();
}

impl Site {
    fn rehearse(&self, json: bool) -> (Output, String) {
        let mut args = vec!["dr", "rehearse", "--plan", self.plan.to_str().unwrap(), "--from", "offsite"];
        if json {
            args.push("--json");
        }
        let out = self.env.run(&args);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
        (out, text)
    }

    /// (entries, problems) of a repository's evidence chain: the primary's, or with `offsite` the off-site copy's.
    fn chain(&self, offsite: bool) -> (u64, usize) {
        let out = match offsite {
            true => self.env.as_holder_of("offsite-pw", &["-r", &self.offsite, "audit", "verify", "--json"]),
            false => self.env.run(&["audit", "verify", "--json"]),
        };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (v["entries"].as_u64().unwrap(), v["problems"].as_array().unwrap().len())
    }
}

/// A rehearsal's protocol is one `rehearsal` entry of the primary's chain,
/// which `copy` carries to the off-site copy; annotated by its test id, it
/// shows in the report with its platform RTO and as ISO 27001 evidence. With
/// the primary lost, the rehearsal still passes and says it was not recorded.
#[test]
fn a_rehearsal_joins_the_primary_evidence_chain_which_copy_carries_off_site() {
    let site = site("@yearly");
    with_rehearsal(&site, "@yearly");
    let plan = site.plan.to_str().unwrap();
    let (_, text) = site.rehearse(true);
    let r: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let id = r["test_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("REHEARSAL-"), "{r}");
    assert_eq!((r["test"].as_str(), r["test_type"].as_str(), r["owner"].as_str()), (Some("BT-DR-01"), Some("dr"), Some("Platform Lead")));
    assert_eq!(r["evidence"], serde_json::json!({"recorded_in": ["primary"], "not_recorded": []}));
    assert_eq!(site.chain(false), (1, 0), "one entry in the primary's chain");
    assert_eq!(site.chain(true), (0, 0), "never appended to the off-site copy's chain");
    site.env.ok(&["copy", "--to", &site.offsite, "--to-password-file", site.env.path("offsite-pw").to_str().unwrap()]);
    assert_eq!(site.chain(true), (1, 0), "copy carried it");

    let out = site.env.ok(&[
        "drill",
        "annotate",
        "BT-DR-01",
        "--plan",
        plan,
        "--finding",
        "DNS came back last | 20 min lost",
        "--follow-up",
        "bring DNS back first (Platform Lead)",
    ]);
    assert_eq!(out, format!("annotated {id} (platform): recorded in the evidence log of primary\n"));
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let md = site.report("md");
    let row = md.lines().find(|l| l.starts_with(&format!("| BT-DR-01 | {day} "))).unwrap_or_default();
    assert!(row.starts_with(&format!("| BT-DR-01 | {day} ")) && row.contains(&format!(" | {id} | offsite | 2 of 2 | ")), "{md}");
    assert!(
        row.contains(" | 4h | met | passed | finding: DNS came back last / 20 min lost; follow-up: bring DNS back first (Platform Lead) ("),
        "{row}"
    );
    let planned = md.lines().find(|l| l.starts_with("| BT-DR-01 | dr | ")).unwrap_or_default();
    assert!(planned.starts_with("| BT-DR-01 | dr | platform (sessions, documents) | off-site | @yearly (every "), "{md}");
    assert!(planned.contains(" | Platform Lead | ") && planned.ends_with(" | passed |"), "{planned}");
    let json: serde_json::Value = serde_json::from_str(&site.report("json")).unwrap();
    let got = &json["rehearsals"][0];
    assert_eq!(json["rehearsals"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(
        (got["test"].as_str(), got["test_id"].as_str(), got["passed"].as_bool(), got["rto_target"].as_u64(), got["rto_met"].as_bool()),
        (Some("BT-DR-01"), Some(id.as_str()), Some(true), Some(14_400), Some(true))
    );
    for control in ["A.5.30", "A.17.1.1"] {
        let c = json["compliance"].as_array().unwrap().iter().find(|c| c["control"] == control).unwrap();
        let evidence = c["evidence"].as_str().unwrap();
        let cited = evidence.split("; cold-start rehearsals: ").nth(1).unwrap_or_default();
        assert!(
            cited.starts_with(&format!("BT-DR-01 {day} passed, platform RTO "))
                && cited.ends_with(&format!(" of 4h (evidence entry {id})")),
            "{control}: {evidence}"
        );
    }

    // The site lost with its primary repository: the rehearsal stands, and says what it could not record.
    let primary = PathBuf::from(&site.env.repo);
    let lost = site.env.path("repo-lost");
    fs::rename(&primary, &lost).unwrap();
    let (_, text) = site.rehearse(false);
    let said: Vec<&str> = text.lines().filter(|l| l.starts_with("evidence: ")).collect();
    let why = format!("no repository at {}: nothing is there (run `tresor init` first)", site.env.repo);
    assert_eq!(said, [format!("evidence: NOT recorded in the evidence log of primary: {why}").as_str()], "{text}");
    assert!(!text.contains("correct horse"), "{text}");
    let (_, text) = site.rehearse(true);
    let r: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!((r["passed"].as_bool(), r["evidence"]["recorded_in"].as_array().map(Vec::len)), (Some(true), Some(0)), "{r}");
    assert_eq!(r["evidence"]["not_recorded"], serde_json::json!([{"repository": "primary", "reason": why}]), "{r}");
    fs::rename(&lost, &primary).unwrap();
    assert_eq!(site.chain(false), (2, 0), "the rehearsal and its annotation; nothing half-written");
}

/// `plan check` refuses a rehearsal schedule it cannot parse, a copy to
/// rehearse from that is no repository, and a test id a class's drills use.
#[test]
fn plan_check_refuses_a_bad_rehearsal_schedule_an_unknown_copy_and_a_taken_id() {
    let env = Env::new();
    let plan = env.path("tresor.yaml");
    let check = |schedule: &str, from: &str, id: &str| {
        let text = format!(
            "repositories:\n  primary:\n    url: {repo}\n    password_file: {pw}\n  vault:\n    url: {repo}-vault\n    password_file: {pw}\n\
             classes:\n  standard:\n    rpo: 1d\n    rto: 8h\n    offsite: vault\n    retention:\n      daily: 7\n    drill:\n      schedule: \"@monthly\"\n      id: BT-VL-01\n\
             sources:\n  - name: documents\n    class: standard\n    url: /srv/documents\n    schedule: \"@daily\"\n\
             drills:\n  rehearsal:\n    schedule: \"{schedule}\"\n    from: {from}\n    id: {id}\n",
            repo = env.repo,
            pw = env.path("pw").display(),
        );
        fs::write(&plan, text).unwrap();
        let out = env.run(&["plan", "check", plan.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let errors: Vec<String> = stdout.lines().filter(|l| l.contains(": error: ")).map(String::from).collect();
        (out.status.code(), errors)
    };
    let at = |line: usize, message: &str| format!("{}:{line}: error: {message}", plan.display());
    assert_eq!(check("@yearly", "vault", "BT-DR-01"), (Some(0), vec![]));
    assert_eq!(check("0 4 1 1 *", "offsite", "BT-DR-01"), (Some(0), vec![]));
    assert_eq!(
        check("once a year", "vault", "BT-DR-01"),
        (
            Some(1),
            vec![at(
                25,
                "drills.rehearsal: schedule \"once a year\" is not a cron expression of five fields (or @hourly, @daily, @weekly, @monthly, @yearly)"
            )]
        )
    );
    assert_eq!(
        check("@yearly", "tape", "BT-DR-01"),
        (
            Some(1),
            vec![at(
                26,
                "drills.rehearsal: unknown repository \"tape\" to rehearse from (the plan's: primary, vault; or primary, offsite)"
            )]
        )
    );
    assert_eq!(
        check("@yearly", "vault", "BT-VL-01"),
        (Some(1), vec![at(27, "drills.rehearsal: test id \"BT-VL-01\" is class standard's drill id too")])
    );
}

/// A daemon over the site with its rehearsal on `schedule`, its clock at
/// 2026-11-30 10:00 and both sources' first backups done: the clock file,
/// the daemon, the jobs then.
fn daemon_with_rehearsal(site: &Site, schedule: &str) -> (PathBuf, super::daemon::Daemon, Vec<serde_json::Value>) {
    use super::daemon::{count, set_clock, start_daemon, wait_jobs};
    with_rehearsal(site, schedule);
    let clock = site.env.path("clock");
    set_clock(&clock, "2026-11-30T10:00:00Z");
    let d = start_daemon(&site.env, &site.plan, Some(&clock));
    let first = wait_jobs(&d, "first backups", |j| {
        count(j, "sessions", "backup", "succeeded") == 1 && count(j, "documents", "backup", "succeeded") == 1
    });
    (clock, d, first)
}

/// The daemon runs the plan's rehearsal when its schedule is due, as a job
/// of kind `rehearsal`: in the job history, in the drill metrics as source
/// `platform`, its protocol in the primary's evidence chain, where the
/// report and the status page's report find it.
#[test]
fn the_daemon_runs_a_due_rehearsal_and_records_its_protocol() {
    use super::daemon::{count, http, set_clock, start_daemon, wait_jobs};
    let site = site("@yearly");
    let (clock, d, first) = daemon_with_rehearsal(&site, "0 5 1 12 *");
    assert!(!first.iter().any(|j| j["kind"] == "rehearsal"), "not due yet");
    set_clock(&clock, "2026-12-01T05:00:01Z");
    let jobs = wait_jobs(&d, "the rehearsal", |j| count(j, "platform", "rehearsal", "succeeded") == 1);
    let job = jobs.iter().find(|j| j["kind"] == "rehearsal").unwrap();
    assert_eq!((job["trigger"].as_str(), job["attempt"].as_u64()), (Some("schedule"), Some(0)), "{job}");
    // The job is in the history before its protocol is appended and measured: wait for the measurement, then look.
    let measured = "restore_drill_success{source=\"platform\",class=\"\"} 1";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !http(d.port, "GET", "/metrics", None).1.contains(measured) {
        assert!(std::time::Instant::now() < deadline, "no {measured} in the metrics");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let metrics = http(d.port, "GET", "/metrics", None).1;
    let rto = metrics.lines().find(|l| l.starts_with("rto_achieved_seconds{source=\"platform\",class=\"\"} ")).map(str::to_string);
    let rto = rto.unwrap_or_else(|| panic!("no platform RTO in {metrics}"));
    let (_, page) = http(d.port, "GET", "/", Some("read-token"));
    let row = page.lines().find(|l| l.starts_with("<tr data-rehearsal=\"BT-DR-01\">")).unwrap_or_default();
    assert!(
        row.starts_with(
            "<tr data-rehearsal=\"BT-DR-01\"><td>BT-DR-01</td><td>2026-12-01 05:00:01 UTC</td><td>offsite</td><td>2 of 2</td><td>"
        ),
        "{page}"
    );
    assert!(row.ends_with(" (target 4.0 h)</td><td class=\"ok\">passed</td></tr>"), "{row}");
    let (status, page) = http(d.port, "GET", "/report", Some("read-token"));
    assert_eq!(status, 200);
    assert!(page.contains("<h2>Cold-start rehearsals</h2>") && page.contains("<td>BT-DR-01</td><td>2026-12-01 05:00</td>"), "{page}");
    drop(d);

    // The state lost: a new daemon has the rehearsal's job back from the evidence.
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = fs::remove_file(site.env.path(f));
    }
    let d = start_daemon(&site.env, &site.plan, Some(&clock));
    let jobs = wait_jobs(&d, "the rebuilt history", |j| count(j, "platform", "rehearsal", "succeeded") >= 1);
    let back = jobs.iter().find(|j| j["kind"] == "rehearsal" && j["started_at"] == job["started_at"]);
    assert_eq!(back.map(|j| (&j["trigger"], &j["ended_at"])), Some((&job["trigger"], &job["ended_at"])), "{jobs:?}");
    // And the RTO the rehearsal measured, which no job history keeps, from its protocol.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !http(d.port, "GET", "/metrics", None).1.lines().any(|l| l == rto) {
        assert!(std::time::Instant::now() < deadline, "no {rto} in the restarted daemon's metrics");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(d);

    let (entries, problems) = site.chain(false);
    assert_eq!(problems, 0, "{entries} entries");
    let json: serde_json::Value = serde_json::from_str(&site.report("json")).unwrap();
    let r = &json["rehearsals"];
    assert_eq!(r.as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(
        (r[0]["test"].as_str(), r[0]["last_run"].as_str(), r[0]["from"].as_str(), r[0]["passed"].as_bool(), r[0]["sources_back"].as_u64()),
        (Some("BT-DR-01"), Some("2026-12-01T05:00:01Z"), Some("offsite"), Some(true), Some(2))
    );
}

/// A rehearsal run by hand while the daemon runs shows on the status page
/// once the daemon's clock has moved a minute (the daemon looks at the
/// evidence logs' heads then, not on every page view); until then the page
/// shows what it last read.
#[test]
fn a_stand_alone_rehearsal_shows_on_the_running_daemons_status_page() {
    use super::daemon::{http, set_clock};
    let site = site("@yearly");
    let (clock, d, _) = daemon_with_rehearsal(&site, "@yearly");
    let row = || {
        let (status, page) = http(d.port, "GET", "/", Some("read-token"));
        assert_eq!(status, 200, "{page}");
        page.lines().find(|l| l.starts_with("<tr data-rehearsal=\"BT-DR-01\">")).map(str::to_string)
    };
    // When the rehearsal that printed `text` started.
    let started = |text: &str| {
        let r: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert!(r["test_id"].as_str().unwrap().starts_with("REHEARSAL-"), "{r}");
        r["started"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap()
    };
    // The last-run cell of the status page's row for the rehearsal that printed `text`.
    let cell = |text: &str| format!("<td>BT-DR-01</td><td>{} UTC</td>", started(text).format("%Y-%m-%d %H:%M:%S"));
    let wait_row = |want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let got = row();
            if got.as_deref().is_some_and(|r| r.contains(want)) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "no {want} on the status page: {got:?}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let (_, first) = site.rehearse(true);
    set_clock(&clock, "2026-11-30T10:01:00Z");
    wait_row(&cell(&first));

    // The daemon read the logs at 10:01: a second run shows after the next minute, not before.
    // The page shows a run's start to the second, so the second run starts in a later one.
    while chrono::Utc::now().timestamp() <= started(&first).timestamp() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (_, second) = site.rehearse(true);
    assert_ne!(cell(&first), cell(&second), "two runs, a second apart at least");
    assert!(row().is_some_and(|r| r.contains(&cell(&first))), "the page reads its list, not the logs");
    set_clock(&clock, "2026-11-30T10:02:00Z");
    wait_row(&cell(&second));
}
