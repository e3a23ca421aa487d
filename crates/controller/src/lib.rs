//! The controller: the backup plan and its checks, the daemon that runs it
//! on schedule (retries, priorities, catch-up, graceful stop), its state in
//! SQLite (job history and audit trail), and the HTTP side (API, status
//! page, Prometheus metrics).
//!
//! Jobs run as `tresor job run` child processes (see [`child`] and the
//! protocol's types in [`model`]): a job that hangs or is cancelled is
//! killed without taking the daemon down, and the engine's own guarantees
//! (no snapshot without all of its data) make a killed job harmless to the
//! repository.

pub mod api;
pub mod app;
pub mod app_drill;
pub mod app_hooks;
pub mod app_preview;
pub mod app_restore;
pub mod check;
pub mod child;
pub mod clock;
pub mod coverage;
pub mod crd;
pub mod daemon;
pub mod drill;
mod drill_bucket;
mod drill_pg;
pub mod failure;
pub mod leader;
pub mod metrics;
#[cfg(test)]
mod metrics_doc;
pub mod model;
pub mod notify;
pub mod origin;
pub mod plan;
pub mod planwatch;
pub mod rehearse;
pub mod report;
pub mod report_html;
pub mod repos;
pub mod runner;
pub mod runs;
pub mod runs_hook;
pub mod schedule;
#[cfg(test)]
mod scheduler_tests;
pub mod scratch;
pub mod secret_url;
pub mod serve;
pub mod silence;
pub mod standby;
pub mod state;
pub mod status;
pub mod view;
pub mod walrpo;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", plan_where(.file, .line, .message))]
    Plan { file: PathBuf, line: usize, message: String },
    #[error("the plan has {count} error(s); first: {first}")]
    PlanCheck { count: usize, first: String },
    #[error("state database {}: {source}", path.display())]
    State { path: PathBuf, source: rusqlite::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// `FILE:LINE: message`; without the line where there is none (the file
/// cannot be read).
fn plan_where(file: &std::path::Path, line: &usize, message: &str) -> String {
    match line {
        0 => format!("{}: {message}", file.display()),
        n => format!("{}:{n}: {message}", file.display()),
    }
}

impl Error {
    /// Worth trying again later (a busy state database, a port in use).
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::State { source, .. } => {
                matches!(source.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
            }
            Error::Listen { source, .. } => source.kind() == std::io::ErrorKind::AddrInUse,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    /// No module reaches itself through the modules it imports: the
    /// crate's layers stay a tree (model at the bottom, the daemon above).
    #[test]
    fn modules_import_each_other_without_cycles() {
        tresor_testkit::imports::assert_layered(env!("CARGO_MANIFEST_DIR"));
    }
}
