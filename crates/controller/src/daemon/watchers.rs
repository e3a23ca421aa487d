//! The daemon's background watchers: the cluster's unprotected claims, the
//! WAL archives and standbys, the rehearsals in the evidence logs, and the
//! repositories' sizes. Each runs beside the job loop and only feeds the
//! metrics and the status page.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Shared;

/// How often the cluster's claims are surveyed for ones no source backs up.
const SURVEY_EVERY: Duration = Duration::from_secs(300);

/// Survey the cluster's claims now and every few minutes, while the plan has Kubernetes sources.
pub(super) fn survey_volumes(shared: &Arc<Shared>) {
    let shared = shared.clone();
    tokio::spawn(async move {
        loop {
            let plan = shared.plan();
            if crate::coverage::wanted(&plan) {
                match crate::coverage::survey().await {
                    Ok((namespaces, claims)) => {
                        let found = crate::coverage::unprotected(&plan, &namespaces, &claims);
                        shared.metrics.set_unprotected(&found);
                        *shared.unprotected.lock().expect("not poisoned") = found;
                    }
                    Err(e) => tracing::warn!("cannot survey the cluster's volumes: {e}"),
                }
            }
            tokio::time::sleep(SURVEY_EVERY).await;
        }
    });
}

/// How often the daemon looks at the WAL archives.
const WAL_EVERY: Duration = Duration::from_secs(15);

/// The WAL-archiving sources' RPO and archive lag (crate::walrpo) and the
/// standbys' lag (crate::standby) in the metrics, now and every few seconds.
pub(super) fn watch_wal(shared: &Arc<Shared>) {
    let shared = shared.clone();
    tokio::spawn(async move {
        loop {
            let plan = shared.plan();
            let mut listings = BTreeMap::new();
            for (name, r) in &plan.repositories {
                if crate::walrpo::pg_sources(&plan, name).next().is_some() || crate::standby::wanted(&plan, name) {
                    match shared.repos.snapshots(r, None).await {
                        Ok(list) => {
                            listings.insert(name.clone(), list);
                        }
                        Err(e) => tracing::warn!("cannot list repository {name} for its WAL archives: {e}"),
                    }
                }
            }
            let fresh = crate::walrpo::points(&plan, &listings).await;
            // A source whose archive could not be read this time keeps its
            // last figures, but nothing says its newer commits are archived.
            for s in plan.sources.iter().filter(|s| !fresh.contains_key(&s.name)) {
                shared.metrics.wal_unconfirmed(&s.name);
            }
            for (source, p) in fresh {
                shared.metrics.wal_point(&plan, &source, p);
            }
            for (source, p) in crate::standby::points(&plan, &listings).await {
                shared.metrics.standby_point(&source, p);
            }
            tokio::time::sleep(WAL_EVERY).await;
        }
    });
}

/// How often, by the daemon's clock, the evidence logs' heads are looked at for rehearsals run without the daemon.
const REHEARSALS_EVERY: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// The status page's rehearsals from the logs, now and whenever a log's head
/// moved (checked every [`REHEARSALS_EVERY`]): those before a restart and
/// stand-alone ones (`tresor dr rehearse` by hand) too, without reading
/// every log on every page view.
pub(super) fn watch_rehearsals(shared: &Arc<Shared>) {
    let shared = shared.clone();
    tokio::spawn(async move {
        let (mut last, mut measured): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = (None, None);
        loop {
            let now = shared.clock.now();
            // A clock set back starts the interval again.
            if last.is_none_or(|l| now < l || now >= l + REHEARSALS_EVERY) {
                let plan = shared.plan();
                shared.repos.refresh_rehearsals(&plan).await;
                if plan.drills.rehearsal.is_some() {
                    rehearsal_figures(&shared, &mut measured);
                }
                last = Some(now);
            }
            tokio::time::sleep(shared.tick).await;
        }
    });
}

/// The figures of the newest rehearsal that passed, from the evidence
/// logs: the job history keeps a rehearsal's verdict but not what it
/// measured, so a restart (or a rehearsal run by hand) left the platform's
/// RTO series empty until the next scheduled run. The verdict stays the
/// history's: a rehearsal that failed before writing a protocol is in no log.
fn rehearsal_figures(shared: &Shared, measured: &mut Option<DateTime<Utc>>) {
    let known = shared.repos.known_rehearsals();
    let Some(newest) = known.iter().rev().find(|r| r.passed) else { return };
    if measured.is_some_and(|m| m >= newest.started) {
        return;
    }
    *measured = Some(newest.started);
    shared.metrics.drill_figures(super::REHEARSAL, "", &serde_json::to_value(newest).unwrap_or_default());
}

/// How long after measuring a repository its size is measured again at
/// the soonest: a remote one's measure lists every pack, which jobs
/// writing to it one after another must not repeat for each.
const MEASURE_GAP: Duration = Duration::from_secs(60);

/// The repositories being measured, each with whether a job wrote to it
/// since its measurement started: then it is measured once more, after
/// [`MEASURE_GAP`], however many jobs wrote meanwhile.
#[derive(Default)]
pub(super) struct Sizes(Arc<Mutex<BTreeMap<String, bool>>>);

impl Sizes {
    /// Measure repository `name` in the background (a local one by its
    /// files, a remote one by listing its packs through the daemon's
    /// handle), or once more after the measurement running.
    pub(super) fn measure(&self, shared: &Arc<Shared>, name: &str) {
        {
            let mut running = self.0.lock().expect("not poisoned");
            if let Some(again) = running.get_mut(name) {
                *again = true;
                return;
            }
            running.insert(name.to_string(), false);
        }
        let (shared, name, running) = (shared.clone(), name.to_string(), self.0.clone());
        tokio::spawn(async move {
            loop {
                measure_repository(&shared, &name).await;
                {
                    let mut running = running.lock().expect("not poisoned");
                    if running.get(&name) != Some(&true) {
                        running.remove(&name);
                        return;
                    }
                    running.insert(name.clone(), false);
                }
                tokio::time::sleep(MEASURE_GAP).await;
            }
        });
    }
}

async fn measure_repository(shared: &Shared, name: &str) {
    let Some(repo) = shared.plan().repositories.get(name).cloned() else { return };
    let bytes = match repo.url.as_path().map(std::path::Path::to_path_buf) {
        Some(dir) => tokio::task::spawn_blocking(move || crate::metrics::tree_size(&dir)).await.ok(),
        None => shared.repos.stored_size(&repo).await.ok(),
    };
    if let Some(bytes) = bytes {
        shared.metrics.repository_size(name, bytes);
    }
}
