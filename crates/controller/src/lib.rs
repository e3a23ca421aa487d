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
    #[error("{}:{line}: {message}", file.display())]
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
    use std::collections::{BTreeMap, BTreeSet};

    /// Each module and the modules of this crate it names (`crate::NAME`).
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(dir).expect("the crate's sources") {
            let path = entry.expect("a source file").path();
            let Some(module) = path.file_stem().and_then(|s| s.to_str()).filter(|_| path.extension().is_some_and(|e| e == "rs")) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).expect("a readable source");
            let names: BTreeSet<String> = text
                .split("crate::")
                .skip(1)
                .filter_map(|rest| rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next())
                .filter(|name| !name.is_empty() && *name != module && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
                .map(String::from)
                .collect();
            out.insert(module.to_string(), names);
        }
        out
    }

    /// No module reaches itself through the modules it imports: the
    /// crate's layers stay a tree (model at the bottom, the daemon above).
    #[test]
    fn modules_import_each_other_without_cycles() {
        let graph = imports();
        for start in graph.keys().filter(|m| *m != "lib") {
            let mut stack: Vec<Vec<String>> = vec![vec![start.clone()]];
            while let Some(path) = stack.pop() {
                for next in graph.get(path.last().expect("non-empty")).into_iter().flatten() {
                    assert!(next != start, "an import cycle: {} -> {start}", path.join(" -> "));
                    if !path.contains(next) && graph.contains_key(next) {
                        stack.push([path.clone(), vec![next.clone()]].concat());
                    }
                }
            }
        }
    }
}
