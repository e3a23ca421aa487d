//! Cold-start rehearsals (`tresor dr rehearse`): every source of the plan
//! brought back from one repository — what the loss of a site leaves,
//! usually the off-site copy — into scratch targets, in dependency order
//! (cluster configuration and secrets, then databases, then volumes and
//! files), each validated as its drill validates it. The platform RTO runs
//! from the start to the last source validated, against the plan's
//! `drills.platform_rto`. A rehearsal reads no state: it must work where
//! the daemon and its state are gone. Kubernetes objects come back for
//! real beside production (`<ns>-dr`, nothing running, serving or
//! scheduled), through the sources' transforms. Its scratch space is one
//! directory and the namespaces labelled as a rehearsal's, which the next
//! rehearsal empties first: what a killed (or a kept) rehearsal left —
//! directories, namespaces, and the scratch servers it started (the
//! markers in `scratch.rs`) — is gone before anything is restored again.

use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::drill::{Mode, Origin, drill_from};
use crate::model::{DrillReport, EvidenceRecord};
use crate::plan::{Plan, SourceSpec};

/// What a rehearsal brings back, the whole plan, as the job history, the
/// drill metrics, the test plan and annotations name it.
pub const PLATFORM: &str = "platform";

/// One source brought back: its place in the order and its drill's protocol.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    pub tier: String,
    /// Seconds from the rehearsal's start to this step's end.
    pub done_after_seconds: f64,
    pub drill: DrillReport,
}

/// A rehearsal's protocol: an evidence entry of kind `rehearsal` (FORMAT.md §12d).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rehearsal {
    /// The protocol entry's id (`REHEARSAL-20261130-171500`), which `drill annotate` takes.
    pub test_id: String,
    /// The test plan's id, type and owner (`drills.rehearsal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub started: DateTime<Utc>,
    /// The repository the platform came back from.
    pub from: String,
    /// Where the restored data is, while it is kept.
    pub scratch: PathBuf,
    pub steps: Vec<Step>,
    /// Start to the last source validated.
    pub rto_seconds: f64,
    pub rto_target: Option<u64>,
    pub rto_met: Option<bool>,
    /// Every source back and validated, and no scratch left behind.
    pub passed: bool,
    /// Scratch that could not be removed (a namespace, a directory), and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_behind: Vec<String>,
    /// Where the protocol joined the evidence logs: set once appended, so
    /// absent from the entry itself; says why not where a log was out of reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<EvidenceRecord>,
}

/// The order sources come back in: what the others need first.
pub fn tier(source: &SourceSpec) -> (u8, &'static str) {
    let scheme = source.url.scheme().unwrap_or("");
    match scheme {
        "etcd" | "k8s" => (0, "cluster configuration and secrets"),
        "redis" | "postgres" | "postgresql" | "pgbase" => (1, "databases"),
        _ => (2, "volumes and files"),
    }
}

/// Bring every source of `plan` back from the origin `origin_of` gives it, in order.
pub fn rehearse(
    exe: &Path,
    plan: &Plan,
    from: &str,
    origin_of: impl Fn(&SourceSpec) -> Result<Origin, String>,
    scratch: &Path,
    keep: bool,
) -> Rehearsal {
    let started = crate::clock::Clock::from_env().now();
    let t0 = Instant::now();
    let root = scratch.join("tresor-rehearsal");
    let mut left_behind = clean(plan, &root);
    if let Err(e) = std::fs::create_dir_all(&root) {
        left_behind.push(format!("cannot create the scratch directory {}: {e}", root.display()));
    }
    let mut order: Vec<&SourceSpec> = plan.sources.iter().collect();
    order.sort_by_key(|s| tier(s).0);
    let mode = Mode { keep, rehearsal: true };
    let steps: Vec<Step> = order
        .into_iter()
        .map(|s| {
            let drill = drill_from(exe, plan, s, origin_of(s), &root, mode);
            Step { tier: tier(s).1.into(), done_after_seconds: t0.elapsed().as_secs_f64(), drill }
        })
        .collect();
    let rto_seconds = t0.elapsed().as_secs_f64();
    if !keep {
        left_behind.extend(clean(plan, &root));
    }
    let rto_target = plan.drills.platform_rto.map(|s| s.secs());
    let spec = plan.drills.rehearsal.as_ref();
    Rehearsal {
        test_id: format!("REHEARSAL-{}", started.format("%Y%m%d-%H%M%S")),
        test: spec.and_then(|r| r.id.clone()),
        test_type: spec.map(|r| r.test_type.as_str().to_string()),
        owner: spec.and_then(|r| r.owner.clone()),
        started,
        from: from.into(),
        scratch: root,
        passed: left_behind.is_empty() && steps.iter().all(|s| s.drill.passed),
        steps,
        rto_seconds,
        rto_met: rto_target.map(|t| rto_seconds <= t as f64),
        rto_target,
        left_behind,
        evidence: None,
    }
}

/// Remove what a rehearsal leaves: its scratch servers, its directory, and
/// the rehearsal namespaces of each cluster the plan backs up. What stays, and why.
pub fn clean(plan: &Plan, root: &Path) -> Vec<String> {
    let mut left = crate::scratch::stop_servers(root);
    if let Err(e) = std::fs::remove_dir_all(root)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        left.push(format!("the scratch directory {} stays: {e}", root.display()));
    }
    let clusters: std::collections::BTreeSet<&str> =
        plan.sources.iter().filter(|s| s.url.starts_with("k8s://")).map(|s| s.url.expose()).collect();
    for url in clusters {
        if let Err(e) = on_runtime(tresor_sources::k8s_restore::remove_rehearsal_namespaces(url)) {
            left.push(e.to_string());
        }
    }
    left
}

/// Run `f` to its end from synchronous code: on the runtime this thread
/// blocks for (the CLI's `block_in_place`, the daemon's blocking tasks), or a runtime of its own.
fn on_runtime<T>(f: impl std::future::Future<Output = T>) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h.block_on(f),
        Err(_) => tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime").block_on(f),
    }
}
