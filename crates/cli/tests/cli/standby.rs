//! Two daemons, one Lease (the shipped Deployment's two replicas), against
//! the fake API server as the shipped service account: the standby runs
//! nothing while the leader holds the lease, takes over once the killed
//! leader's lease expired, reruns the interrupted backup once, and the
//! repository ends with one snapshot and an intact evidence log. And a
//! leader whose renewals hang stops leading.

use super::daemon::{Daemon, count, http, jobs, spawn_daemon, start_daemon, wait_jobs};
use super::k8s::Cluster;
use super::*;

fn plan(env: &Env, name: &str, source: &str) -> PathBuf {
    let plan = env.path(&format!("{name}.yaml"));
    fs::write(
        &plan,
        format!(
            "repositories:\n  main:\n    url: {}\n    password_file: {}\n    init: true\nclasses:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
             sources:\n  - name: slow\n    class: standard\n    url: \"{source}\"\n    schedule: \"@daily\"\ndaemon:\n  state: {}\n",
            env.repo,
            env.path("pw").display(),
            env.path(&format!("{name}.db")).display()
        ),
    )
    .unwrap();
    plan
}

fn running(d: &Daemon) -> bool {
    count(&jobs(d), "slow", "backup", "running") == 1
}

/// An environment that elects its daemons' leader by a 3 s Lease on `c`.
fn electing(c: &Cluster) -> Env {
    let mut env = Env::new();
    env.vars.push(("KUBECONFIG".into(), c.kubeconfig.display().to_string()));
    env.vars.push(("TRESOR_LEADER_ELECTION".into(), "k8s://tresor/tresor-leader".into()));
    env.vars.push(("TRESOR_LEASE_DURATION".into(), "3s".into()));
    env
}

/// A daemon that leads and runs its backup of `source`.
fn leading(env: &Env, source: &str) -> Daemon {
    let leader = start_daemon(env, &plan(env, "a", source), None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !running(&leader) {
        assert!(std::time::Instant::now() < deadline, "the leader never started its backup: {:?}", jobs(&leader));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    leader
}

#[test]
fn a_standby_takes_over_when_the_leader_is_killed_mid_backup() {
    let c = Cluster::start();
    let env = electing(&c);
    let mark = env.path("first-run");
    let source = format!("command:test -e {m} || {{ touch {m}; sleep 60; }}; echo payload", m = mark.display());
    let mut leader = leading(&env, &source);
    let standby = spawn_daemon(&env, &plan(&env, "b", &source), None, "/healthz");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(jobs(&standby), Vec::<serde_json::Value>::new(), "a standby runs nothing");
    assert_eq!(http(standby.port, "GET", "/readyz", None).0, 503, "and is not ready, so a Service sends nobody to it");
    let (status, body) = http(standby.port, "POST", "/api/v1/sources/slow/backup", Some("admin-token"));
    assert_eq!(status, 503, "a job asked of a standby would not run: {body}");
    assert!(body.contains("this replica runs no jobs now (standing by for the lease, starting or stopping)"), "{body}");
    let lease = c.server.object("coordination.k8s.io", "leases", Some("tresor"), "tresor-leader").expect("the lease");
    let first = lease["spec"]["holderIdentity"].as_str().unwrap().to_string();
    assert!(first.ends_with(&format!("-{}", leader.child.id())), "{lease}");

    // SIGKILL: no renewal, no clean stop; its job goes with it.
    leader.child.kill().unwrap();
    leader.child.wait().unwrap();
    let done = wait_jobs(&standby, "the takeover", |j| count(j, "slow", "backup", "succeeded") == 1);
    assert_eq!(count(&done, "slow", "backup", "failed"), 0, "{done:?}");
    let lease = c.server.object("coordination.k8s.io", "leases", Some("tresor"), "tresor-leader").unwrap();
    assert_ne!(lease["spec"]["holderIdentity"].as_str().unwrap(), first, "the standby holds it now");
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
    assert_eq!(env.json(&["snapshots", "--tag", "source=slow"]).as_array().unwrap().len(), 1, "one snapshot from the two leaders");
    let verified = env.json(&["audit", "verify"]);
    assert_eq!(verified["problems"], serde_json::json!([]));
    assert_eq!(verified["entries"], 2, "only the finished run is evidence: its job and its audit entry");
}

/// A renewal that never answers (a hung API server, a half-open connection)
/// must not keep a replica leading past its lease, when another may lead:
/// the leader stops, its running backup with it, and says why.
#[test]
fn a_leader_whose_renewals_hang_stops_leading() {
    let c = Cluster::start();
    let env = electing(&c);
    let mut leader = leading(&env, "command:sleep 60; echo payload");
    c.server.stall("leases");
    // A watchdog far past the 2 s the lease allows, not a measurement.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = leader.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still leading a minute after its renewals stopped answering");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut leader.child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("leader election: the renewal did not answer in time"), "{err}");
    assert!(err.ends_with("tresor: error: lost the lease: another replica leads now\n"), "{err}");
    assert_eq!(env.json(&["snapshots"]), serde_json::json!([]), "the backup stopped with the lead");
}
