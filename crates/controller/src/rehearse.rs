//! Cold-start rehearsals (`tresor dr rehearse`): every source of the plan
//! brought back from one repository — what the loss of a site leaves,
//! usually the off-site copy — into scratch targets, in dependency order
//! (cluster configuration and secrets, then databases, then volumes and
//! files), each validated as its drill validates it. The platform RTO runs
//! from the start to the last source validated, against the plan's
//! `drills.platform_rto`. A rehearsal reads no state: it must work where
//! the daemon and its state are gone. Its scratch space is one directory,
//! which the next rehearsal empties first: what a killed (or a kept)
//! rehearsal left is gone before anything is restored again.

use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::drill::{Origin, drill_from};
use crate::model::DrillReport;
use crate::plan::{Plan, SourceSpec};

/// One source brought back: its place in the order and its drill's protocol.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub tier: &'static str,
    /// Seconds from the rehearsal's start to this step's end.
    pub done_after_seconds: f64,
    pub drill: DrillReport,
}

/// A rehearsal's protocol.
#[derive(Debug, Clone, Serialize)]
pub struct Rehearsal {
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
    /// Every source back and validated.
    pub passed: bool,
}

/// The order sources come back in: what the others need first.
pub fn tier(source: &SourceSpec) -> (u8, &'static str) {
    let scheme = source.url.split_once("://").map_or("", |(s, _)| s);
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
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::create_dir_all(&root);
    let mut order: Vec<&SourceSpec> = plan.sources.iter().collect();
    order.sort_by_key(|s| tier(s).0);
    let steps: Vec<Step> = order
        .into_iter()
        .map(|s| {
            let drill = drill_from(exe, plan, s, origin_of(s), &root, keep);
            Step { tier: tier(s).1, done_after_seconds: t0.elapsed().as_secs_f64(), drill }
        })
        .collect();
    let rto_seconds = t0.elapsed().as_secs_f64();
    if !keep {
        let _ = std::fs::remove_dir_all(&root);
    }
    let rto_target = plan.drills.platform_rto.map(|s| s.secs());
    Rehearsal {
        started,
        from: from.into(),
        scratch: root,
        passed: steps.iter().all(|s| s.drill.passed),
        steps,
        rto_seconds,
        rto_met: rto_target.map(|t| rto_seconds <= t as f64),
        rto_target,
    }
}
