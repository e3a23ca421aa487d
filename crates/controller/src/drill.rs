//! Restore drills: the newest snapshot of a source restored into a scratch
//! target (a directory, or a scratch server on a free loopback port, never
//! the production service), validated against what the backup recorded and
//! the plan's checks, measured (RTO: start to validated; RPO: the restore
//! point's age), and cleaned up. Each drill is one protocol entry.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::child::Tresor;
use crate::model::{BackupCopy, DrillReport as Report, RestoreSpec};
use crate::plan::{Plan, SecretUrl, SourceSpec};
use crate::scratch::{self, Loaded};

pub use crate::origin::Origin;

/// How a drill runs: on its own, or as a step of a rehearsal.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mode {
    /// Leave the restored data in the scratch directory.
    pub keep: bool,
    /// Kubernetes objects restored for real beside production (`<ns>-dr`,
    /// nothing running), not sent as a server-side dry run.
    pub rehearsal: bool,
}

/// Drill one source into `scratch_root`, from the copy its class's `drill.from` names.
pub fn drill(exe: &Path, plan: &Plan, source: &SourceSpec, scratch_root: &Path) -> Report {
    drill_from(exe, plan, source, Origin::of_plan(plan, source), scratch_root, Mode::default())
}

/// Drill one source into `scratch_root` from `origin` (or fail with why there is none).
pub fn drill_from(exe: &Path, plan: &Plan, source: &SourceSpec, origin: Result<Origin, String>, scratch_root: &Path, mode: Mode) -> Report {
    let started = crate::clock::Clock::from_env().now();
    let t0 = Instant::now();
    let class = plan.classes.get(&source.class);
    let spec = class.and_then(|c| c.drill.as_ref());
    let mut r = Report {
        test_id: format!("DRILL-{}-{}", started.format("%Y%m%d-%H%M%S"), source.name),
        source: source.name.clone(),
        class: source.class.clone(),
        kind: String::new(),
        started,
        snapshot: None,
        snapshot_time: None,
        rto_seconds: 0.0,
        rpo_seconds: None,
        rto_target: class.map_or(0, |c| c.rto.secs()),
        rpo_target: class.map_or(0, |c| c.rpo.secs()),
        bytes: 0,
        passed: false,
        checks: Vec::new(),
        reasons: Vec::new(),
        silence: None,
        owner: spec.and_then(|d| d.owner.clone()),
        from: origin.as_ref().map_or(BackupCopy::Primary, |o| o.copy),
        repository: origin.as_ref().ok().map(|o| o.name.clone()),
        test: spec.and_then(|d| d.id.clone()),
        test_type: spec.map(|d| d.test_type.as_str().to_string()),
        application: None,
    };
    let dir = scratch_root.join(&r.test_id);
    let result = match &origin {
        Ok(o) => std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create the scratch directory {}: {e}", dir.display()))
            .and_then(|_| run(&Tresor::new(exe, &o.repo, &source.name), source, &dir, mode, &mut r)),
        Err(e) => Err(e.clone()),
    };
    r.ended(t0.elapsed());
    if let Err(e) = result {
        r.reasons.push(e);
    }
    r.passed = r.reasons.is_empty();
    if !mode.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    r
}

/// Pick the newest snapshot, restore it into `dir` the way its kind needs, validate.
fn run(t: &Tresor, source: &SourceSpec, dir: &Path, mode: Mode, r: &mut Report) -> Result<(), String> {
    let snaps = t.snapshots()?;
    let snap = snaps.as_array().and_then(|a| a.last()).ok_or("the source has no snapshot to restore")?.clone();
    let id = snap["id"].as_str().unwrap_or_default().to_string();
    r.snapshot = Some(id.clone());
    r.snapshot_time = snap["time"].as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc));
    r.kind = snap["source"]["kind"].as_str().unwrap_or("files").to_string();
    let point = &snap["source"]["consistency"];
    let target = dir.join("restore");
    let target_s = target.display().to_string();
    match r.kind.as_str() {
        "files" | "stdin" => {
            // The restore's last JSON line is its verification.
            let v = t.restore(&id, RestoreSpec { target: Some(target_s), verify: true, ..RestoreSpec::default() })?;
            r.bytes = v["bytes"].as_u64().unwrap_or(0);
            r.checks.push(format!("{} files ({} bytes) read back and matched the snapshot's content hashes", v["files"], r.bytes));
            Ok(())
        }
        "redis" | "redis-aof" => drill_redis(t, source, &id, &target, point, r),
        "postgres" | "pg-base" => crate::drill_pg::drill_postgres(t, source, &id, dir, point, r),
        "etcd" => drill_etcd(t, &id, dir, point, r),
        "command" => drill_command(t, source, &id, &target, r),
        "k8s" => drill_k8s(t, source, &snap, &id, mode, r),
        "bucket" => crate::drill_bucket::drill_bucket(t, &id, &target, point, r),
        other => Err(format!("no drill for sources of kind {other}")),
    }
}

/// Restore `id` into a member's data directory, serve it over TLS, and
/// compare its keys and revision with what the backup recorded.
fn drill_etcd(t: &Tresor, id: &str, dir: &Path, point: &Value, r: &mut Report) -> Result<(), String> {
    let member = dir.join("member");
    let v = t.restore_to(id, &format!("etcd-data:{}", member.display()))?;
    r.bytes = v["bytes"].as_u64().unwrap_or(0);
    let etcd = scratch::Etcd::start(&member, &dir.join("tls"))?;
    let (revision, keys) = etcd.count()?;
    let (want_rev, want_keys) = (point["revision"].as_i64().unwrap_or(0), point["keys"].as_i64().unwrap_or(0));
    if keys != want_keys {
        return Err(format!("the restored member holds {keys} keys, the backup recorded {want_keys}"));
    }
    if revision < want_rev {
        return Err(format!("the restored member is at revision {revision}, the backup recorded {want_rev}"));
    }
    r.checks.push(format!("{keys} keys at revision {revision}, as recorded at backup"));
    let version = etcd.version()?;
    r.checks.push(format!(
        "the restored member at {} (etcd {version}) was reached over TLS with the drill's client certificate, which it requires",
        etcd.endpoint()
    ));
    Ok(())
}

/// Restore `id` into `target` (`restore --target`); the bytes restored.
fn restore_to_dir(t: &Tresor, id: &str, target: &Path) -> Result<u64, String> {
    let v = t.restore_to_dir(id, target)?;
    Ok(v["bytes_restored"].as_u64().unwrap_or(0))
}

/// The one directory under `root` holding a file whose name ends with `suffix`.
fn find_file(root: &Path, suffix: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(root).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(found) = find_file(&p, suffix) {
                return Some(found);
            }
        } else if p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(suffix)) {
            return Some(p);
        }
    }
    None
}

fn drill_redis(t: &Tresor, source: &SourceSpec, id: &str, target: &Path, point: &Value, r: &mut Report) -> Result<(), String> {
    r.bytes = restore_to_dir(t, id, target)?;
    let server = if r.kind == "redis" {
        scratch::Redis::start(target, None)?
    } else {
        let manifest = find_file(target, ".manifest").ok_or("the restored AOF directory has no manifest")?;
        let aof_dir = manifest.parent().ok_or("no AOF directory")?;
        let name = aof_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        scratch::Redis::start(aof_dir.parent().ok_or("no AOF directory")?, Some(&name))?
    };
    // The backup counted every database, keys with a TTL among them; a
    // load drops those whose TTL has run out since.
    let loaded = server.loaded()?;
    let keys = loaded.keys;
    r.checks.push(key_count_check(&loaded, point)?);
    let sample: Vec<&str> = point["sample_keys"].as_array().map(|a| a.iter().filter_map(|k| k.as_str()).collect()).unwrap_or_default();
    for k in &sample {
        if !server.exists(k)? {
            return Err(format!("the sampled key {k:?} recorded at backup is missing from the restored data set"));
        }
    }
    if !sample.is_empty() {
        r.checks.push(format!("{} sampled keys present", sample.len()));
    }
    if let Some(min) = source.verify.min_keys {
        if keys < min {
            return Err(format!("{keys} keys, fewer than the plan's minimum {min}"));
        }
        r.checks.push(format!("at least {min} keys"));
    }
    Ok(())
}

/// The restored key count (those expired on load among them) against
/// what the backup recorded: the count at the fork, where the RDB's head
/// said it and the restore holds no other database (less those with a TTL
/// at most: one that runs out while the scratch instance loads, or before
/// it is counted, is counted nowhere); else the count before the fork and,
/// from backups that took it, after the transfer, which bound the fork's
/// while the count only grows or only shrinks, so with writes going on a
/// count in that range is taken for the data set whole.
fn key_count_check(loaded: &Loaded, point: &Value) -> Result<String, String> {
    let (keys, expired) = (loaded.keys, loaded.expired);
    let held = if expired == 0 { format!("{keys} keys") } else { format!("{keys} keys and {expired} expired since the backup") };
    let fork = &point["keys_at_fork"];
    if let (Some(db), Some(at_fork), Some(with_ttl)) = (fork["db"].as_u64(), fork["keys"].as_u64(), fork["with_ttl"].as_u64())
        && loaded.databases.iter().all(|&d| d == db)
    {
        let ttl = if with_ttl == 0 { String::new() } else { format!(", {with_ttl} of them with a TTL") };
        return match keys + expired {
            n if n == at_fork => Ok(format!("{held}, as the instance held when the backup forked")),
            n if n <= at_fork && n + with_ttl >= at_fork => {
                Ok(format!("{held}, of the {at_fork} the instance held when the backup forked{ttl} (run out since)"))
            }
            _ => Err(format!("the restored data set holds {held}, the instance held {at_fork} when the backup forked{ttl}")),
        };
    }
    let Some(before) = point["keys"].as_u64() else { return Ok(format!("{held} loaded")) };
    let (low, high) = match point["keys_after"].as_u64() {
        Some(after) => (before.min(after), before.max(after)),
        None => (before, before),
    };
    match (low == high, (low..=high).contains(&(keys + expired))) {
        (true, true) => Ok(format!("{held}, as recorded at backup")),
        (true, false) => Err(format!("the restored data set holds {held}, the backup recorded {low}")),
        (false, true) => Ok(format!("{held}, within the {low} to {high} the instance held around the backup")),
        (false, false) => Err(format!("the restored data set holds {held}, the instance held {low} to {high} around the backup")),
    }
}

fn drill_command(t: &Tresor, source: &SourceSpec, id: &str, target: &Path, r: &mut Report) -> Result<(), String> {
    r.bytes = restore_to_dir(t, id, target)?;
    let file = find_file(target, "").ok_or("the restore holds no file")?;
    let Some(cmd) = &source.verify.command else {
        r.checks.push(format!("restored {} bytes; the plan names no verify command", r.bytes));
        return Ok(());
    };
    let out = tresor_sources::without_secrets(&mut Command::new("sh"))
        .arg("-c")
        .arg(cmd)
        .env("TRESOR_DRILL_FILE", &file)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the verify command: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("the verify command failed ({}): {}", out.status, tresor_sources::last_line(&err).unwrap_or("no message")));
    }
    r.checks.push(format!("verify command passed: {}", tresor_sources::shown_command(cmd)));
    Ok(())
}

/// Kubernetes resources: every object sent to the API as a server-side
/// dry run into `<namespace>-drill` (created for the drill and removed
/// Restore `id`'s objects through the source's transforms: as a drill, a
/// server-side dry run into `<ns>-drill`; as a rehearsal's step, for real
/// into `<ns>-dr` with nothing running, serving or scheduled.
fn drill_k8s(t: &Tresor, source: &SourceSpec, snap: &Value, id: &str, mode: Mode, r: &mut Report) -> Result<(), String> {
    let url = SecretUrl::from(snap["source"]["url"].as_str().unwrap_or("k8s://"));
    let namespaces: Vec<String> = snap["source"]["consistency"]["namespaces"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let suffix = if mode.rehearsal { "-dr" } else { "-drill" };
    let into = namespaces.iter().map(|n| format!("{n}{suffix}")).collect::<Vec<_>>().join(", ");
    let transforms = source.transforms.as_deref().map(|f| std::path::absolute(f).unwrap_or_else(|_| f.to_path_buf()));
    let spec = if mode.rehearsal {
        RestoreSpec { to: Some(url), rehearsal: true, transforms, ..RestoreSpec::default() }
    } else {
        let namespace_mapping = namespaces.iter().map(|n| format!("{n}:{n}{suffix}")).collect();
        RestoreSpec { to: Some(url), server_dry_run: true, namespace_mapping, transforms, ..RestoreSpec::default() }
    };
    let v = t.restore(id, spec)?;
    let results = v["results"].as_array().cloned().unwrap_or_default();
    let count = |what: &str| results.iter().filter(|x| x["result"] == what).count();
    let made = results
        .iter()
        .filter(|x| x["result"] == "skipped" && x["detail"].as_str().is_some_and(|d| d.starts_with("made by the cluster")))
        .count();
    let transformed = results.iter().filter(|x| x["changes"].as_array().is_some_and(|c| !c.is_empty())).count();
    r.bytes = snap["summary"]["total_bytes_processed"].as_u64().unwrap_or(0);
    let (done, other) = if mode.rehearsal {
        let done =
            format!("{} objects restored into {into} (workloads at 0 replicas, CronJobs suspended, Ingress hosts dr-)", count("created"));
        (done, "left out (cluster-scoped, Pods) or existing")
    } else {
        (
            format!("{} objects accepted by the API in {into} (server-side dry run)", count("accepted")),
            "existing cluster objects left alone",
        )
    };
    r.checks.push(format!("{done}, {} {other}, {made} left to the cluster, which makes them itself", count("skipped") - made));
    if source.transforms.is_some() {
        let by = if mode.rehearsal { "the source's transforms and the rehearsal's safety rewrites" } else { "the source's transforms" };
        r.checks.push(format!("{transformed} objects rewritten by {by}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::key_count_check;
    use crate::scratch::Loaded;

    fn loaded(keys: u64, expired: u64) -> Loaded {
        Loaded { keys, expired, databases: vec![0] }
    }

    /// Keys expired on load count as restored; a busy instance's count is
    /// held to the range around its fork, an idle one's to the number, and
    /// either to the count at the fork where the backup read it.
    #[test]
    fn a_restored_key_count_is_held_to_what_the_backup_saw() {
        let around = |before: u64, after: Option<u64>| json!({"keys": before, "keys_after": after});
        assert_eq!(key_count_check(&loaded(10, 0), &around(10, Some(10))), Ok("10 keys, as recorded at backup".into()));
        let expired = key_count_check(&loaded(8, 2), &around(10, None));
        assert_eq!(expired, Ok("8 keys and 2 expired since the backup, as recorded at backup".into()));
        let short = key_count_check(&loaded(9, 0), &around(10, Some(10)));
        assert_eq!(short, Err("the restored data set holds 9 keys, the backup recorded 10".into()));
        let busy = key_count_check(&loaded(12, 0), &around(10, Some(15)));
        assert_eq!(busy, Ok("12 keys, within the 10 to 15 the instance held around the backup".into()));
        assert_eq!(key_count_check(&loaded(12, 0), &around(15, Some(10))), busy, "a shrinking instance too");
        let short = key_count_check(&loaded(9, 0), &around(10, Some(15)));
        assert_eq!(short, Err("the restored data set holds 9 keys, the instance held 10 to 15 around the backup".into()));
        assert_eq!(key_count_check(&loaded(7, 0), &json!({})), Ok("7 keys loaded".into()));
    }

    /// The count at the fork: exact, less the keys with a TTL at most (one
    /// that runs out while the scratch instance loads is counted nowhere),
    /// and only where the restore holds no database but the counted one.
    #[test]
    fn a_restored_key_count_is_held_to_the_fork_where_the_backup_read_it() {
        let fork =
            |keys: u64, with_ttl: u64| json!({"keys": 50, "keys_after": 50, "keys_at_fork": {"db": 0, "keys": keys, "with_ttl": with_ttl}});
        // A count that rose and fell back around the fork: outside the range, exact at the fork.
        let churned = key_count_check(&loaded(58, 2), &fork(60, 0));
        assert_eq!(churned, Ok("58 keys and 2 expired since the backup, as the instance held when the backup forked".into()));
        let within = json!({"keys": 50, "keys_after": 55, "keys_at_fork": {"db": 0, "keys": 53, "with_ttl": 0}});
        let lost = key_count_check(&loaded(52, 0), &within);
        assert_eq!(
            lost,
            Err("the restored data set holds 52 keys, the instance held 53 when the backup forked".into()),
            "in the range, one short"
        );
        let ran_out = key_count_check(&loaded(57, 1), &fork(60, 3));
        assert_eq!(ran_out, Ok("57 keys and 1 expired since the backup, of the 60 the instance held when the backup forked, 3 of them with a TTL (run out since)".into()));
        let short = key_count_check(&loaded(56, 0), &fork(60, 3));
        assert_eq!(
            short,
            Err("the restored data set holds 56 keys, the instance held 60 when the backup forked, 3 of them with a TTL".into())
        );
        // Another database in the restore: written and emptied between the two counts, it is in the RDB.
        let two = Loaded { keys: 61, expired: 0, databases: vec![0, 2] };
        let ranged = key_count_check(&two, &json!({"keys": 50, "keys_after": 62, "keys_at_fork": {"db": 0, "keys": 60, "with_ttl": 0}}));
        assert_eq!(ranged, Ok("61 keys, within the 50 to 62 the instance held around the backup".into()));
    }
}
