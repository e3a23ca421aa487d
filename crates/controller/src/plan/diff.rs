//! What a plan reload changed, for the audit trail: repositories, classes,
//! sources and applications added, removed or changed (which fields), and
//! the other sections' fields. Values are shown only for fields that can
//! hold no secret (targets, schedules, retention); a URL or a password is
//! named, never shown.

use serde_json::Value;

/// Fields whose values are shown: none of them can hold a secret.
const SHOWN: [&str; 24] = [
    "rpo",
    "rto",
    "schedule",
    "priority",
    "offsite",
    "class",
    "spread",
    "retries",
    "timeout",
    "last",
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "within",
    "minimum",
    "check_schedule",
    "prune_schedule",
    "check_slices",
    "concurrency",
    "owner",
    "from",
    "platform_rto",
];

/// The sections whose entries have names: a map by key, a list by `name`.
const NAMED: [(&str, &str); 4] =
    [("repositories", "repository"), ("classes", "class"), ("sources", "source"), ("applications", "application")];

/// The changes from plan `old` to plan `new` (each the plan file's YAML
/// as JSON), one line each; none when they mean the same.
pub fn changes(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (section, what) in NAMED {
        let (before, after) = (entries(&old[section]), entries(&new[section]));
        for (name, value) in &after {
            match before.iter().find(|(n, _)| n == name) {
                None => out.push(format!("{what} {name} added")),
                Some((_, was)) if was != value => out.push(format!("{what} {name}: {}", fields(was, value, "").join(", "))),
                Some(_) => {}
            }
        }
        for (name, _) in before.iter().filter(|(n, _)| !after.iter().any(|(a, _)| a == n)) {
            out.push(format!("{what} {name} removed"));
        }
    }
    let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    let mut others: Vec<String> = keys(old).into_iter().chain(keys(new)).filter(|k| !NAMED.iter().any(|(s, _)| s == k)).collect();
    others.sort();
    others.dedup();
    for section in others {
        if old[&section] != new[&section] {
            out.push(format!("{section}: {}", fields(&old[&section], &new[&section], "").join(", ")));
        }
    }
    out
}

/// The daemon settings read only when it starts (the address it serves,
/// its state, its token and certificate files), which a reload changes
/// nothing of.
const AT_START: [&str; 6] = ["listen", "state", "admin_token_file", "read_token_file", "tls_cert_file", "tls_key_file"];

/// The settings among [`AT_START`] that differ between the two plans, as
/// `daemon.NAME`.
pub fn at_next_start(old: &Value, new: &Value) -> Vec<String> {
    AT_START.iter().filter(|k| old["daemon"][**k] != new["daemon"][**k]).map(|k| format!("daemon.{k}")).collect()
}

/// A section's entries by name: a map's keys, a list's `name`s.
fn entries(section: &Value) -> Vec<(String, Value)> {
    match section {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Value::Array(items) => items.iter().map(|v| (v["name"].as_str().unwrap_or("?").to_string(), v.clone())).collect(),
        _ => Vec::new(),
    }
}

/// The paths of the fields that differ between `old` and `new`, with
/// their values where [`SHOWN`] allows.
fn fields(old: &Value, new: &Value, path: &str) -> Vec<String> {
    if let (Value::Object(a), Value::Object(b)) = (old, new) {
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        let nested = |k: &String| if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
        let (null, mut out) = (Value::Null, Vec::new());
        for k in keys {
            let (x, y) = (a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null));
            if x != y {
                out.extend(fields(x, y, &nested(k)));
            }
        }
        return out;
    }
    let leaf = path.rsplit('.').next().unwrap_or(path);
    let scalar = |v: &Value| !v.is_object() && !v.is_array();
    if SHOWN.contains(&leaf) && scalar(old) && scalar(new) {
        return vec![format!("{path} {} → {}", shown(old), shown(new))];
    }
    vec![path.to_string()]
}

fn shown(v: &Value) -> String {
    match v {
        Value::Null => "(none)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_norway::from_str(text).unwrap()
    }

    #[test]
    fn a_reload_says_what_changed_and_shows_no_secret() {
        let old = yaml(
            "repositories:\n  main: {url: 's3://k:old-secret@b/p', password: hunter2}\n\
             classes:\n  critical: {rpo: 15m, rto: 2h, retention: {daily: 30}}\n  gone: {rpo: 1d, rto: 1d}\n\
             sources:\n  - {name: db, class: critical, url: 'postgres://u:pw@h/db', schedule: '*/10 * * * *'}\n\
             daemon: {concurrency: 2}\n",
        );
        let new = yaml(
            "repositories:\n  main: {url: 's3://k:new-secret@b/p', password: hunter3}\n\
             classes:\n  critical: {rpo: 20m, rto: 2h, retention: {daily: 30, monthly: 1y}}\n\
             sources:\n  - {name: db, class: critical, url: 'postgres://u:pw2@h/db', schedule: '*/15 * * * *'}\n  - {name: wiki, class: critical, url: /srv/wiki}\n\
             daemon: {concurrency: 3}\n",
        );
        assert_eq!(
            changes(&old, &new),
            [
                "repository main: password, url",
                "class critical: retention.monthly (none) → 1y, rpo 15m → 20m",
                "class gone removed",
                "source db: schedule */10 * * * * → */15 * * * *, url",
                "source wiki added",
                "daemon: concurrency 2 → 3",
            ]
        );
        assert_eq!(changes(&old, &old), Vec::<String>::new());
        let moved = yaml("daemon: {concurrency: 3, listen: '0.0.0.0:9750', state: /srv/state.db}\n");
        assert_eq!(at_next_start(&new, &moved), ["daemon.listen", "daemon.state"]);
        assert_eq!(at_next_start(&new, &new), Vec::<String>::new());
    }
}
