//! What the HTTP API and the status page both show: each class's state
//! now, and source URLs with their passwords masked.

use serde_json::json;

use crate::daemon::Shared;
pub use crate::secret_url::redact;

/// Each class with its targets and its state now: `green` (newest point
/// within the RPO, last job of every source succeeded), `amber` (within the
/// RPO, but a job failed since), `red` (RPO missed). A source without a
/// backup yet is `pending`: it counts from when the daemon took it on
/// (`Metrics::rpo_ages`), so it turns its class red only once it has gone
/// longer than the RPO without one.
pub fn class_states(shared: &Shared) -> Vec<serde_json::Value> {
    let plan = shared.plan();
    let now = shared.clock.now();
    let ages = shared.metrics.rpo_ages(&plan, now);
    let pending = shared.metrics.pending(&plan);
    plan.classes
        .iter()
        .map(|(name, c)| {
            let age = ages.get(name).copied().unwrap_or(0.0);
            let last_drill = shared.state.last_drill(name).ok().flatten().map(
                |d| json!({"time": d.started, "passed": d.passed, "rto_seconds": d.measured_rto(), "test_id": d.test_id, "source": d.source}),
            );
            let failing: Vec<String> = plan
                .sources
                .iter()
                .filter(|s| &s.class == name)
                .filter(|s| {
                    shared
                        .state
                        .jobs(1, Some(&s.name))
                        .ok()
                        .and_then(|j| j.into_iter().next())
                        .is_some_and(|j| j.outcome.status == "failed")
                })
                .map(|s| s.name.clone())
                .collect();
            let state = if age > c.rpo.secs() as f64 {
                "red"
            } else if failing.is_empty() {
                "green"
            } else {
                "amber"
            };
            json!({
                "name": name, "description": c.description, "rpo": c.rpo.to_string(), "rto": c.rto.to_string(),
                "rpo_seconds": c.rpo.secs(), "rto_seconds": c.rto.secs(), "age_seconds": age,
                "pending": pending.iter().filter(|p| plan.sources.iter().any(|s| s.name == **p && &s.class == name)).collect::<Vec<_>>(),
                "state": state, "failing": failing, "offsite": c.offsite, "last_drill": last_drill,
            })
        })
        .collect()
}
