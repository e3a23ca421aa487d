//! etcd with authentication on: the user and password come from the
//! environment, both or neither (one alone was dropped, and etcd answered
//! only "user name is empty").

use tresor_testkit::EtcdServer;

use super::*;

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
