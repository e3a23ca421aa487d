//! etcd: snapshots through the Maintenance API, restored as files and
//! into data directories, over TLS with client certificates, and with
//! authentication on.

use tresor_testkit::{Certs, EtcdServer};

use super::*;

/// The user and password come from the environment, both or neither (one
/// alone was dropped, and etcd answered only "user name is empty").
#[test]
fn an_etcd_with_auth_is_backed_up_with_both_variables_and_one_alone_is_refused() {
    let env = Env::new();
    env.ok(&["init"]);
    let etcd = EtcdServer::start();
    for args in [&["put", "app/a", "1"][..], &["user", "add", "root:s3cret-pw", "--interactive=false"], &["auth", "enable"]] {
        let out = etcd.ctl(args);
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let url = etcd.url();
    let with = |vars: &[(&str, &str)]| {
        let mut c = env.cmd(&["backup", &url]);
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = with(&[("TRESOR_ETCD_USER", "root")]);
    let said = format!("tresor: error: {url}: TRESOR_ETCD_USER is set and TRESOR_ETCD_PASSWORD is not: set both\n");
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stderr).as_ref()), (Some(1), said.as_str()));
    let out = with(&[("TRESOR_ETCD_USER", "root"), ("TRESOR_ETCD_PASSWORD", "s3cret-pw")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps[0]["source"]["consistency"]["keys"], 1);
    assert!(!snaps.to_string().contains("s3cret-pw"), "no password in the snapshot: {snaps}");
}

#[test]
fn etcd_snapshot_round_trip_keeps_keys_and_revision() {
    let env = Env::new();
    env.ok(&["init"]);
    let etcd = EtcdServer::start();
    for i in 0..150 {
        assert!(etcd.ctl(&["put", &format!("/registry/configmaps/cm{i}"), &format!("value {i}")]).status.success());
    }
    let keys = |e: &EtcdServer| String::from_utf8(e.ctl(&["get", "--prefix", ""]).stdout).unwrap();
    let revision = |e: &EtcdServer| {
        let out = String::from_utf8(e.ctl(&["get", "x", "-w", "json"]).stdout).unwrap();
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["header"]["revision"].as_i64().unwrap()
    };
    let before = keys(&etcd);
    env.ok(&["backup", &etcd.url()]);
    let snap = &env.json(&["snapshots"])[0];
    assert_eq!(snap["source"]["kind"], "etcd");
    assert_eq!(snap["source"]["consistency"]["keys"], 150);
    assert_eq!(snap["source"]["consistency"]["revision"], revision(&etcd));
    env.ok(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    let db = env.path("out").join("etcd.db");
    let data = env.path("restored-data");
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore", db.to_str().unwrap(), "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdctl snapshot restore (it checks the hash): {}", String::from_utf8_lossy(&out.stderr));
    let restored = EtcdServer::with_data(&data);
    assert_eq!(keys(&restored), before, "every key and value");
    assert!(revision(&restored) >= revision(&etcd), "the revision is kept");
    drop(restored);

    // Straight into a data directory; one that holds data only with --flush,
    // and then the old one is kept beside it.
    let member = env.path("member");
    let to = format!(
        "etcd-data:{}?name=m1&initial-cluster=m1=http://127.0.0.1:2380&initial-advertise-peer-urls=http://127.0.0.1:2380",
        member.display()
    );
    let out = env.json(&["restore", "latest", "--to", &to]);
    assert_eq!(out["result"], format!("etcd data directory {0} written; start etcd with --data-dir {0}", member.display()));
    let err = env.fails(&["restore", "latest", "--to", &to], 1);
    assert_eq!(
        err,
        format!(
            "tresor: error: {to}: the directory holds data; restoring replaces it: add --flush to allow it (the old one is kept beside it)\n"
        )
    );
    env.ok(&["restore", "latest", "--to", &to, "--flush"]);
    let kept: Vec<_> = fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("member.before-restore-"))
        .collect();
    assert_eq!(kept.len(), 1, "the replaced directory is kept");
    let member_server = EtcdServer::with_data(&member);
    assert_eq!(keys(&member_server), before, "every key and value, from the data directory tresor wrote");
    drop(member_server);
    // Not under a running member: what it wrote meanwhile would be lost at its restart.
    let live = EtcdServer::in_place(&member);
    let err = env.fails(&["restore", "latest", "--to", &to, "--flush"], 1);
    let said = format!(
        "tresor: error: {to}: an etcd is running on the directory (it holds member/snap/db locked): stop it first, or what it writes meanwhile is lost\n"
    );
    assert_eq!(err, said);
    assert_eq!(keys(&live), before, "the running member is left alone");
    drop(live);
    // The tool failing, the old directory is put back, and the snapshot file removed.
    let out = env.cmd(&["restore", "latest", "--to", &to, "--flush"]).env("PATH", "/nonexistent").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "tresor: error: {to}: cannot run etcdutl or etcdctl: No such file or directory (os error 2) (the old directory is back in place)\n"
        )
    );
    assert!(!env.path("member.tresor-snapshot.db").exists(), "the snapshot file is removed");
    assert_eq!(keys(&EtcdServer::with_data(&member)), before, "the member's data is where it was");
    // A stream the tool refuses leaves no half-written directory behind.
    let mut stream = env.cmd(&["backup", "--stdin", "--stdin-filename", "etcd.db"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut stream.stdin.take().unwrap(), &random_bytes(1 << 20, 5)).unwrap();
    assert!(stream.wait_with_output().unwrap().status.success());
    let fresh = env.path("fresh");
    let to_fresh = to.replace(&member.display().to_string(), &fresh.display().to_string());
    let err = env.fails(&["restore", "latest", "--to", &to_fresh], 1);
    assert!(err.starts_with(&format!("tresor: error: {to_fresh}: ")) && err.lines().count() == 1, "{err}");
    assert!(!fresh.exists(), "nothing is left where the restore failed");
    env.ok(&["forget", "latest"]);

    let dead = format!("etcd://127.0.0.1:{}", tresor_testkit::net::free_port());
    let err = env.fails(&["backup", &dead], 1);
    assert!(err.starts_with(&format!("tresor: error: {dead}: ")) && err.lines().count() == 1, "{err}");
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 1);
}

#[test]
fn etcd_over_tls_with_client_certificates() {
    let env = Env::new();
    env.ok(&["init"]);
    let certs = Certs::make(&env.path("tls"));
    let [ca, client_crt, client_key, expired, other_ca, foreign] =
        [&certs.ca, &certs.client_cert, &certs.client_key, &certs.expired_client_cert, &certs.foreign_ca, &certs.foreign_client_cert]
            .map(|p| p.display().to_string());
    let etcd = EtcdServer::start_tls(certs.etcd_tls());
    for i in 0..20 {
        assert!(etcd.ctl(&["put", &format!("/registry/secrets/s{i}"), &format!("value {i}")]).status.success());
    }
    let dead = format!("127.0.0.1:{}", tresor_testkit::net::free_port());
    let endpoints = format!("{},{}", dead, etcd.url().trim_start_matches("etcd://"));
    let url = format!("etcd://{endpoints}?cacert={ca}&cert={client_crt}&key={client_key}");
    env.ok(&["backup", &url]);
    let snap = &env.json(&["snapshots"])[0];
    assert_eq!(snap["source"]["consistency"]["keys"], 20, "the second endpoint answered, over TLS: {snap}");
    let plain = format!("etcd://{endpoints}");
    let with_env = env
        .cmd(&["backup", &plain])
        .env("TRESOR_ETCD_CACERT", &ca)
        .env("TRESOR_ETCD_CERT", &client_crt)
        .env("TRESOR_ETCD_KEY", &client_key)
        .output()
        .unwrap();
    assert!(
        with_env.status.success(),
        "TLS files from the environment, as etcdctl takes them: {}",
        String::from_utf8_lossy(&with_env.stderr)
    );

    let refused = |url: &str| env.fails(&["backup", url], 1);
    let single = etcd.url();
    let wrong_ca = format!("{single}?cacert={other_ca}&cert={client_crt}&key={client_key}");
    let port = single.rsplit(':').next().unwrap();
    assert_eq!(
        refused(&wrong_ca),
        format!(
            "tresor: error: {wrong_ca}: 127.0.0.1:{port}: the server's certificate is not trusted (BadSignature): is cacert= the CA that signed it?\n"
        )
    );
    let no_cert = format!("{single}?cacert={ca}");
    assert_eq!(
        refused(&no_cert),
        format!(
            "tresor: error: {no_cert}: the server wants a client certificate: give cert= and key= (or TRESOR_ETCD_CERT and TRESOR_ETCD_KEY)\n"
        )
    );
    let old = format!("{single}?cacert={ca}&cert={expired}&key={client_key}");
    assert_eq!(
        refused(&old),
        format!(
            "tresor: error: {old}: the server refused the client certificate {expired} (expired, or not signed by a CA the server trusts)\n"
        )
    );
    let stranger = format!("{single}?cacert={ca}&cert={foreign}&key={client_key}");
    assert_eq!(
        refused(&stranger),
        format!(
            "tresor: error: {stranger}: the server refused the client certificate {foreign} (expired, or not signed by a CA the server trusts)\n"
        )
    );
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 2, "no snapshot from a refused connection");
}
