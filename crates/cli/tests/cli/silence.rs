//! Drills silence their alerts in a real Alertmanager (Debian's
//! `prometheus-alertmanager`) while they run and expire the silence after;
//! an unreachable Alertmanager does not stop a drill, whose protocol says
//! its alerts were not silenced.

use chrono::{DateTime, SubsecRound, Utc};
use tresor_testkit::AlertmanagerServer;

use super::*;

/// A repository with one `command:` source backed up, and a plan whose
/// drills silence through `alertmanager`; the drill's verify command
/// writes the silences Alertmanager holds while it runs to `during.json`.
fn setup(env: &Env, alertmanager: &str) -> PathBuf {
    env.ok(&["init"]);
    env.ok(&["backup", "command:printf hello", "--tag", "source=orders"]);
    let plan = env.path("plan.yaml");
    let during = env.path("during.json");
    let text = format!(
        "repositories:\n  main:\n    url: {repo}\n    password_file: {pw}\nclasses:\n  shop:\n    rpo: 1d\n    rto: 30m\n\
         sources:\n  - name: orders\n    class: shop\n    url: \"command:printf hello\"\n    schedule: \"@daily\"\n    verify:\n      \
         command: \"curl -s {alertmanager}/api/v2/silences > {during}; true\"\n\
         daemon:\n  state: {state}\ndrills:\n  silence:\n    alertmanager: {alertmanager}\n    \
         matchers: ['alertname=~\"Backup.*\"', 'source={{source}}']\n    margin: 5m\n",
        repo = env.repo,
        pw = env.path("pw").display(),
        during = during.display(),
        state = env.path("state.db").display(),
    );
    fs::write(&plan, text).unwrap();
    plan
}

fn drill(env: &Env, plan: &Path) -> serde_json::Value {
    let out = env.ok(&["drill", "--plan", plan.to_str().unwrap(), "--json"]);
    let reports: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(reports.as_array().unwrap().len(), 1, "{reports}");
    reports[0].clone()
}

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap().with_timezone(&Utc)
}

#[test]
fn a_drill_silences_its_alerts_while_it_runs_and_expires_the_silence_after() {
    let am = AlertmanagerServer::start();
    let env = Env::new();
    let url = format!("http://127.0.0.1:{}", am.port());
    let plan = setup(&env, &url);
    let report = drill(&env, &plan);
    assert_eq!(report["passed"], true, "{report}");
    let silence = &report["silence"];
    let id = silence["id"].as_str().expect("a silence id in the protocol").to_string();
    assert_eq!((silence["expired"].as_bool(), &silence["error"]), (Some(true), &serde_json::Value::Null), "{silence}");
    // Made for the class's RTO (no drill history yet) plus the margin.
    let started = time(&report["started"]);
    let planned = (time(&silence["until"]) - started).num_seconds();
    assert!((34 * 60..=35 * 60).contains(&planned), "{planned} s");

    // While the drill ran: the silence active, with the plan's matchers for this source.
    let during: Vec<serde_json::Value> = serde_json::from_str(&fs::read_to_string(env.path("during.json")).unwrap()).unwrap();
    let then = during.iter().find(|s| s["id"] == id.as_str()).expect("the drill's silence while it ran");
    assert_eq!(then["status"]["state"], "active");
    assert_eq!(
        then["matchers"],
        serde_json::json!([
            {"name": "alertname", "value": "Backup.*", "isRegex": true, "isEqual": true},
            {"name": "source", "value": "orders", "isRegex": false, "isEqual": true}
        ])
    );
    assert_eq!((then["createdBy"].as_str(), then["comment"].as_str()), (Some("tresor"), Some("tresor: restore drill of orders (shop)")));

    // After: the one silence is expired, and it covered the whole drill.
    let all = am.silences();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!((all[0]["id"].as_str(), all[0]["status"]["state"].as_str()), (Some(id.as_str()), Some("expired")));
    assert!(time(&all[0]["startsAt"]) <= started, "{} after the drill started {started}", all[0]["startsAt"]);
    // Alertmanager writes its times to the millisecond, cut, not rounded.
    let ended = (started + chrono::Duration::milliseconds((report["rto_seconds"].as_f64().unwrap() * 1000.0) as i64)).trunc_subsecs(3);
    assert!(time(&all[0]["endsAt"]) >= ended, "{} before the drill ended {ended}", all[0]["endsAt"]);

    // The protocol keeps it; the text says it; a second drill makes a second silence, for its history's time.
    let out = env.ok(&["report", "--plan", plan.to_str().unwrap(), "--format", "json"]);
    let protocol = &serde_json::from_str::<serde_json::Value>(&out).unwrap()["protocol"];
    assert_eq!(protocol[0]["silence"]["id"], id.as_str());
    let text = env.ok(&["drill", "--plan", plan.to_str().unwrap()]);
    let line = text.lines().find(|l| l.contains("silenced by Alertmanager silence")).unwrap_or_else(|| panic!("{text}"));
    let second = am.silences().into_iter().find(|s| s["id"] != id.as_str()).unwrap();
    assert_eq!(
        line,
        format!(
            "  alerts matching alertname=~\"Backup.*\", source={{source}} silenced by Alertmanager silence {}, expired when the drill ended",
            second["id"].as_str().unwrap()
        )
    );
    assert_eq!(second["status"]["state"], "expired");
}

#[test]
fn an_unreachable_alertmanager_does_not_stop_the_drill_which_says_its_alerts_were_not_silenced() {
    let env = Env::new();
    let port = tresor_testkit::net::free_port();
    let plan = setup(&env, &format!("http://127.0.0.1:{port}"));
    let report = drill(&env, &plan);
    assert_eq!(report["passed"], true, "{report}");
    let silence = &report["silence"];
    assert_eq!((&silence["id"], silence["expired"].as_bool()), (&serde_json::Value::Null, Some(false)), "{silence}");
    let error = silence["error"].as_str().unwrap();
    assert!(error.starts_with(&format!("cannot reach Alertmanager at http://127.0.0.1:{port}: ")), "{error}");
    let text = env.ok(&["drill", "--plan", plan.to_str().unwrap()]);
    assert!(text.starts_with("PASS orders (shop) DRILL-"), "{text}");
    assert!(text.contains(&format!("\n  its alerts were not silenced: cannot reach Alertmanager at http://127.0.0.1:{port}: ")), "{text}");
    // A matcher Alertmanager would not take is the plan's error, by line.
    fs::write(&plan, fs::read_to_string(&plan).unwrap().replace("'source={source}'", "'source'")).unwrap();
    let out = env.run(&["plan", "check", plan.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(":19: error: silence matcher \"source\": expected name=value, name!=value, name=~regex or name!~regex\n"),
        "{said}"
    );
}
