//! The daemon's side of runs as Kubernetes resources (`runs.rs`):
//! what it says as jobs start and end, sent on without waiting for the
//! cluster. Apart from `runs` so that the daemon, which holds this, and
//! `runs`, which drives the daemon, do not import each other.

use chrono::{DateTime, Utc};
use kube::discovery::ApiResource;
use tokio::sync::mpsc;

use crate::model::Kind;
use crate::state::Outcome;

/// The kinds of run objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RunKind {
    Backup,
    Restore,
    Drill,
}

impl RunKind {
    pub const ALL: [RunKind; 3] = [RunKind::Backup, RunKind::Restore, RunKind::Drill];

    pub(crate) fn of(kind: Kind) -> Option<RunKind> {
        match kind {
            Kind::Backup => Some(RunKind::Backup),
            Kind::Restore => Some(RunKind::Restore),
            Kind::Drill => Some(RunKind::Drill),
            _ => None,
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            RunKind::Backup => "BackupRun",
            RunKind::Restore => "RestoreRun",
            RunKind::Drill => "DrillRun",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            RunKind::Backup => "backupruns",
            RunKind::Restore => "restoreruns",
            RunKind::Drill => "drillruns",
        }
    }

    pub(crate) fn resource(self) -> ApiResource {
        ApiResource {
            group: "tresor.dev".into(),
            version: "v1alpha1".into(),
            api_version: "tresor.dev/v1alpha1".into(),
            kind: self.kind().into(),
            plural: self.plural().into(),
        }
    }
}

/// What the daemon tells the runs as jobs start and end.
#[derive(Debug)]
pub(crate) enum Note {
    Started { actor: String, kind: RunKind, source: String, job: i64, at: DateTime<Utc> },
    Finished { actor: String, kind: RunKind, source: String, outcome: Box<Outcome>, retrying: bool, at: DateTime<Utc> },
}

/// The daemon's side: off (the default: no BackupPlan resource), or a
/// channel to `runs::follow`; its calls never wait for the cluster.
#[derive(Debug, Default)]
pub struct Runs {
    tx: Option<mpsc::UnboundedSender<Note>>,
}

/// What `runs::follow` reads from the daemon.
pub struct Notes(pub(crate) mpsc::UnboundedReceiver<Note>);

impl Runs {
    pub fn channel() -> (Runs, Notes) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Runs { tx: Some(tx) }, Notes(rx))
    }

    /// A job of the daemon's started (its id in the state).
    pub fn started(&self, actor: &str, kind: Kind, source: &str, job: Option<i64>, at: DateTime<Utc>) {
        if let (Some(tx), Some(kind), Some(job)) = (&self.tx, RunKind::of(kind), job) {
            let _ = tx.send(Note::Started { actor: actor.into(), kind, source: source.into(), job, at });
        }
    }

    /// A queued job ended (`retrying`: the daemon runs it again).
    pub fn finished(&self, actor: &str, kind: Kind, source: &str, outcome: &Outcome, retrying: bool, at: DateTime<Utc>) {
        if let (Some(tx), Some(kind)) = (&self.tx, RunKind::of(kind)) {
            let outcome = Box::new(outcome.clone());
            let _ = tx.send(Note::Finished { actor: actor.into(), kind, source: source.into(), outcome, retrying, at });
        }
    }
}
