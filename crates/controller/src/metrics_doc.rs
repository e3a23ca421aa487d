//! docs/METRICS.md's table is the registry's: every family the daemon
//! exports, its type and help, and the shipped alerts that watch it. The
//! test below fails when the two differ; `TRESOR_WRITE_DOCS=1` makes it
//! write the table instead.

use std::collections::BTreeMap;

use crate::metrics::{Metrics, classic};
use crate::plan::Plan;
use crate::standby::StandbyPoint;
use crate::state::Outcome;
use crate::walrpo::{Chain, WalPoint};

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/METRICS.md");
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/prometheus/tresor-rules.yaml");
const BEGIN: &str = "<!-- the registry's table: crates/controller/src/metrics_doc.rs -->\n";
const END: &str = "<!-- end of the registry's table -->\n";

/// A plan of one source, `a` of class `standard`, its repository `dir`.
fn plan(dir: &std::path::Path) -> Plan {
    let text = format!(
        "repositories:\n  main:\n    url: {}\n    password_file: /nonexistent/pw\n\
         classes:\n  standard:\n    rpo: 1d\n    rto: 4h\n\
         sources:\n  - {{name: a, class: standard, url: /srv/a, schedule: '@daily'}}\n",
        dir.display()
    );
    Plan::parse(&text, "tresor.yaml".as_ref()).expect("a plan")
}

/// Metrics with a series in every family: the exposition leaves out a
/// family that has none.
fn every_family(plan: &Plan) -> Metrics {
    let (m, now) = (Metrics::new(), chrono::Utc::now());
    m.declare(plan);
    m.plan_loaded(now);
    let ok = Outcome { status: "succeeded".into(), bytes_processed: Some(1), bytes_added: Some(1), ..Default::default() };
    m.backup_done("a", "standard", &ok, 1.0, now);
    m.backup_done("a", "standard", &Outcome { status: "failed".into(), ..Default::default() }, 1.0, now);
    m.job_failed("a", "standard", "copy");
    m.restore_done("a", "standard", false, "error", 1.0);
    m.drill_done("a", "standard", &serde_json::json!({"passed": true, "rto_seconds": 1.0, "rpo_seconds": 1.0}), "", 1.0);
    m.set_running(1);
    m.set_queued(1);
    m.repository_size("main", 1);
    m.repository_failed("main");
    m.check_done("main", Some(now), Some(0));
    m.set_unprotected(&BTreeMap::from([("ns".to_string(), vec!["claim".to_string()])]));
    m.not_yet_offsite("a", now);
    let chain = Chain { newest_segment: None, end_lsn: 0, newest_commit: now, archived_at: now, gap_segments: 0 };
    m.wal_point(plan, "a", WalPoint { chain, caught_up: false });
    m.standby_point("a", StandbyPoint::default());
    m
}

/// Each family's type and help, by name as its samples are named.
fn families() -> BTreeMap<String, (String, String)> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let plan = plan(dir.path());
    let text = classic(&every_family(&plan).render(&plan, chrono::Utc::now()));
    let mut out: BTreeMap<String, (String, String)> = BTreeMap::new();
    for line in text.lines() {
        if let Some((name, help)) = line.strip_prefix("# HELP ").and_then(|l| l.split_once(' ')) {
            out.entry(name.into()).or_default().1 = help.replace('|', "\\|");
        }
        if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|l| l.split_once(' ')) {
            out.entry(name.into()).or_default().0 = kind.into();
        }
    }
    let registered = include_str!("metrics.rs").matches("r.register(").count();
    assert_eq!(out.len(), registered, "a family without a series here: {:?}", out.keys());
    out
}

/// The shipped alerts whose expression names `family` (a histogram by its
/// `_bucket`, `_sum` or `_count` too).
fn alerts_on(rules: &serde_json::Value, family: &str) -> Vec<String> {
    let names = |expr: &str| -> bool {
        expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == family || ["_bucket", "_sum", "_count"].iter().any(|s| w.strip_suffix(s) == Some(family)))
    };
    let groups = rules["groups"].as_array().into_iter().flatten();
    let rules = groups.flat_map(|g| g["rules"].as_array().into_iter().flatten());
    rules.filter(|r| r["expr"].as_str().is_some_and(names)).filter_map(|r| r["alert"].as_str().map(|a| format!("`{a}`"))).collect()
}

fn table() -> String {
    let rules: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(RULES).expect("the rules")).expect("YAML");
    let mut out = String::from("| metric | type | what it says | alerts on it |\n|---|---|---|---|\n");
    for (name, (kind, help)) in families() {
        out += &format!("| `{name}` | {kind} | {help} | {} |\n", alerts_on(&rules, &name).join(", "));
    }
    out
}

#[test]
fn the_metrics_reference_is_the_registry() {
    let doc = std::fs::read_to_string(DOC).expect("docs/METRICS.md");
    let (head, rest) = doc.split_once(BEGIN).expect("the table's start marker");
    let (old, tail) = rest.split_once(END).expect("the table's end marker");
    let new = table();
    if std::env::var_os("TRESOR_WRITE_DOCS").is_some() {
        std::fs::write(DOC, format!("{head}{BEGIN}{new}{END}{tail}")).expect("written");
        return;
    }
    assert_eq!(old, new, "docs/METRICS.md is not the registry's: TRESOR_WRITE_DOCS=1 cargo test -p tresor-controller --lib metrics_doc");
}
