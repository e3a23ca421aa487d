//! The daemon's state in SQLite: every job (scheduled, retried, manual)
//! with its outcome, and the audit trail of everything done to the data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tresor_engine::Id;

use crate::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    class TEXT NOT NULL,
    kind TEXT NOT NULL,
    trigger TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    scheduled_at TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    message TEXT,
    snapshot TEXT,
    bytes_processed INTEGER,
    bytes_added INTEGER,
    duration REAL,
    log TEXT,
    temporary INTEGER NOT NULL DEFAULT 0,
    problems INTEGER,
    damaged_packs TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_source ON jobs (source, id);
CREATE TABLE IF NOT EXISTS drills (
    id INTEGER PRIMARY KEY,
    test_id TEXT NOT NULL,
    started_at TEXT NOT NULL,
    source TEXT NOT NULL,
    class TEXT NOT NULL,
    passed INTEGER NOT NULL,
    report TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL,
    detail TEXT NOT NULL
);";

pub struct State {
    path: PathBuf,
    db: Mutex<Connection>,
}

/// One job as stored (and as the evidence log keeps it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub id: i64,
    pub source: String,
    pub class: String,
    /// `backup`, `forget`, `copy`, `prune`, `restore`, `drill`.
    pub kind: String,
    /// `schedule`, `first`, `catch-up`, `retry`, `api`.
    pub trigger: String,
    pub attempt: u32,
    pub scheduled_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration: Option<f64>,
    /// `running` until it ends.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// How a job ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    /// `running`, `succeeded`, `failed`, `cancelled`.
    pub status: String,
    pub reason: Option<String>,
    /// The failure may heal by itself (the daemon retries it).
    pub temporary: bool,
    pub message: Option<String>,
    pub snapshot: Option<String>,
    pub bytes_processed: Option<u64>,
    pub bytes_added: Option<u64>,
    /// For a check: the problems it found (0 when it passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<u64>,
    /// For a check that found damage: the packs it found damaged, which the
    /// next one reads again (none recorded by checks before they were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged_packs: Option<Vec<Id>>,
    /// The end of what the job printed on standard error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// For a copy: how far the off-site repository is behind (not stored).
    #[serde(skip)]
    pub lag_seconds: Option<f64>,
    /// The job's JSON summary, e.g. a drill's reports (not stored).
    #[serde(skip)]
    pub summary: Option<serde_json::Value>,
    /// For a copy: it failed in the off-site repository (not stored).
    #[serde(skip)]
    pub in_target: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub time: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub result: String,
    pub detail: String,
}

fn row_to_job(r: &rusqlite::Row) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        source: r.get(1)?,
        class: r.get(2)?,
        kind: r.get(3)?,
        trigger: r.get(4)?,
        attempt: r.get(5)?,
        scheduled_at: r.get(6)?,
        started_at: r.get(7)?,
        ended_at: r.get(8)?,
        duration: r.get(15)?,
        outcome: Outcome {
            status: r.get(9)?,
            reason: r.get(10)?,
            message: r.get(11)?,
            snapshot: r.get(12)?,
            bytes_processed: r.get(13)?,
            bytes_added: r.get(14)?,
            log: r.get(16)?,
            temporary: r.get(17)?,
            problems: r.get(18)?,
            damaged_packs: packs_from_sql(r.get(19)?)?,
            ..Outcome::default()
        },
    })
}

const JOB_COLUMNS: &str = "id, source, class, kind, trigger, attempt, scheduled_at, started_at, ended_at, status, reason, message, \
                           snapshot, bytes_processed, bytes_added, duration, log, temporary, problems, damaged_packs";

/// The packs as the state keeps them: a JSON list of ids; NULL where none
/// were recorded.
fn packs_to_sql(packs: Option<&Vec<Id>>) -> Option<String> {
    packs.map(|p| serde_json::to_string(p).expect("ids serialize"))
}

fn packs_from_sql(text: Option<String>) -> rusqlite::Result<Option<Vec<Id>>> {
    text.map(|t| serde_json::from_str(&t)).transpose().map_err(|e| rusqlite::Error::FromSqlConversionFailure(19, Type::Text, e.into()))
}

/// What a repository's checks so far say of its next one.
#[derive(Debug, Default, PartialEq)]
pub struct CheckHistory {
    /// Checks that judged it: passed, or found damage.
    pub judged: u64,
    /// Checks that passed, those from before problems were counted too.
    pub passed: u64,
    /// The packs the newest judged check found damaged; `None` when it
    /// found damage and recorded no packs (a check from before they were
    /// kept), so that its slice must be read again.
    pub damaged: Option<Vec<Id>>,
}

/// Columns added since the first schema, each with its definition, for
/// state written before them.
const ADDED_COLUMNS: [(&str, &str); 4] =
    [("log", "TEXT"), ("temporary", "INTEGER NOT NULL DEFAULT 0"), ("problems", "INTEGER"), ("damaged_packs", "TEXT")];

impl State {
    /// The database at `path`, made when missing: it and a directory made
    /// for it are the daemon's user's alone (0600, 0700), as the job history
    /// and audit trail name every repository, source and failure; SQLite
    /// gives its `-wal` and `-shm` files the database's mode.
    pub fn open(path: &Path) -> Result<State> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let fail = |source| Error::State { path: path.to_path_buf(), source };
        let cannot = |what: &Path, e: std::io::Error| Error::Invalid(format!("cannot create {}: {e}", what.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| cannot(dir, e))?;
        }
        std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(path).map_err(|e| cannot(path, e))?;
        let db = Connection::open(path).map_err(fail)?;
        Self::init(db, path)
    }

    /// A state that lives only in memory: a history rebuilt from the evidence for one report.
    pub fn in_memory() -> Result<State> {
        let path = Path::new(":memory:");
        Self::init(Connection::open_in_memory().map_err(|source| Error::State { path: path.to_path_buf(), source })?, path)
    }

    fn init(db: Connection, path: &Path) -> Result<State> {
        let fail = |source| Error::State { path: path.to_path_buf(), source };
        db.busy_timeout(std::time::Duration::from_secs(5)).map_err(fail)?;
        db.execute_batch("PRAGMA journal_mode = WAL;").map_err(fail)?;
        db.execute_batch(SCHEMA).map_err(fail)?;
        for (column, definition) in ADDED_COLUMNS {
            let has: bool =
                db.prepare("SELECT 1 FROM pragma_table_info('jobs') WHERE name = ?1").and_then(|mut q| q.exists([column])).map_err(fail)?;
            if !has {
                db.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {column} {definition}")).map_err(fail)?;
            }
        }
        Ok(State { path: path.to_path_buf(), db: Mutex::new(db) })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let db = self.db.lock().expect("not poisoned");
        f(&db).map_err(|source| Error::State { path: self.path.clone(), source })
    }

    /// Record a job as running; its id.
    pub fn start_job(&self, j: &Job) -> Result<i64> {
        self.with(|db| {
            db.execute(
                "INSERT INTO jobs (source, class, kind, trigger, attempt, scheduled_at, started_at, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'running')",
                params![j.source, j.class, j.kind, j.trigger, j.attempt, j.scheduled_at, j.started_at],
            )?;
            Ok(db.last_insert_rowid())
        })
    }

    pub fn finish_job(&self, id: i64, ended: DateTime<Utc>, o: &Outcome) -> Result<()> {
        self.with(|db| {
            db.execute(
                "UPDATE jobs SET ended_at = ?2, status = ?3, reason = ?4, message = ?5, snapshot = ?6, bytes_processed = ?7, bytes_added = ?8, \
                 duration = (julianday(?2) - julianday(started_at)) * 86400.0, log = ?9, temporary = ?10, problems = ?11, \
                 damaged_packs = ?12 WHERE id = ?1",
                params![
                    id,
                    ended,
                    o.status,
                    o.reason,
                    o.message,
                    o.snapshot,
                    o.bytes_processed,
                    o.bytes_added,
                    o.log,
                    o.temporary,
                    o.problems,
                    packs_to_sql(o.damaged_packs.as_ref())
                ],
            )
            .map(|_| ())
        })
    }

    /// Jobs a killed daemon left running: now failed (interrupted).
    pub fn mark_interrupted(&self, now: DateTime<Utc>) -> Result<Vec<Job>> {
        let jobs = self.with(|db| {
            let mut q = db.prepare(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE status = 'running' ORDER BY id"))?;
            q.query_map([], row_to_job)?.collect::<rusqlite::Result<Vec<Job>>>()
        })?;
        let outcome = Outcome {
            status: "failed".into(),
            reason: Some("interrupted".into()),
            temporary: true,
            message: Some("the daemon stopped while the job ran".into()),
            ..Outcome::default()
        };
        for j in &jobs {
            self.finish_job(j.id, now, &outcome)?;
        }
        Ok(jobs)
    }

    /// The newest jobs first, optionally of one source.
    pub fn jobs(&self, limit: usize, source: Option<&str>) -> Result<Vec<Job>> {
        self.with(|db| {
            let mut q =
                db.prepare(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR source = ?1) ORDER BY id DESC LIMIT ?2"))?;
            q.query_map(params![source, limit as i64], row_to_job)?.collect()
        })
    }

    pub fn job(&self, id: i64) -> Result<Option<Job>> {
        self.with(|db| db.query_row(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"), [id], row_to_job).optional())
    }

    /// The newest successful backup of a source.
    pub fn last_success(&self, source: &str) -> Result<Option<Job>> {
        self.with(|db| {
            db.query_row(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE source = ?1 AND kind = 'backup' AND status = 'succeeded' ORDER BY id DESC LIMIT 1"
                ),
                [source],
                row_to_job,
            )
            .optional()
        })
    }

    /// Whether the newest backup of a source that saved a snapshot (whole
    /// or partial) came after its newest successful copy: a copy failed
    /// for good, or the daemon stopped before it ran.
    pub fn copy_due(&self, source: &str) -> Result<bool> {
        self.with(|db| {
            db.query_row(
                "SELECT coalesce((SELECT max(id) FROM jobs WHERE source = ?1 AND kind = 'backup' \
                 AND (status = 'succeeded' OR reason = 'partial')) > \
                 coalesce((SELECT max(id) FROM jobs WHERE source = ?1 AND kind = 'copy' AND status = 'succeeded'), 0), 0)",
                [source],
                |r| r.get(0),
            )
        })
    }

    /// When the newest run of a schedule was due (for catch-up after downtime).
    pub fn last_scheduled(&self, source: &str, kind: &str) -> Result<Option<DateTime<Utc>>> {
        self.scheduled("max", source, kind)
    }

    /// When the first job of `kind` for `source` was due: a source never
    /// backed up has waited since then, however many retries came after.
    pub fn first_scheduled(&self, source: &str, kind: &str) -> Result<Option<DateTime<Utc>>> {
        self.scheduled("min", source, kind)
    }

    fn scheduled(&self, which: &str, source: &str, kind: &str) -> Result<Option<DateTime<Utc>>> {
        let sql = format!("SELECT {which}(scheduled_at) FROM jobs WHERE source = ?1 AND kind = ?2");
        self.with(|db| db.query_row(&sql, [source, kind], |r| r.get(0)).optional().map(Option::flatten))
    }

    /// What the checks of `repository` so far say of its next one.
    pub fn check_history(&self, repository: &str) -> Result<CheckHistory> {
        let judged = "FROM jobs WHERE source = ?1 AND kind = 'check' AND problems IS NOT NULL";
        self.with(|db| {
            let judged_n = db.query_row(&format!("SELECT count(*) {judged}"), [repository], |r| r.get(0))?;
            // As the rule before damaged packs were kept counted them: checks
            // from before problems were counted are among them.
            let passed = db.query_row(
                "SELECT count(*) FROM jobs WHERE source = ?1 AND kind = 'check' AND status = 'succeeded'",
                [repository],
                |r| r.get(0),
            )?;
            let newest: Option<(u64, Option<String>)> = db
                .query_row(&format!("SELECT problems, damaged_packs {judged} ORDER BY id DESC LIMIT 1"), [repository], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let damaged = match newest {
                None | Some((0, _)) => Some(Vec::new()),
                Some((_, packs)) => packs_from_sql(packs)?,
            };
            Ok(CheckHistory { judged: judged_n, passed, damaged })
        })
    }

    /// Whether no job was ever recorded: a new daemon, or one whose state was lost.
    pub fn is_empty(&self) -> Result<bool> {
        self.with(|db| db.prepare("SELECT 1 FROM jobs LIMIT 1").and_then(|mut q| q.exists([])).map(|any| !any))
    }

    /// A finished job from the evidence log, under its own id; false when
    /// that id is known (the same log read from a copy adds nothing).
    pub fn import_job(&self, j: &Job) -> Result<bool> {
        let o = &j.outcome;
        self.with(|db| {
            db.execute(
                "INSERT OR IGNORE INTO jobs (id, source, class, kind, trigger, attempt, scheduled_at, started_at, ended_at, status, reason, \
                 message, snapshot, bytes_processed, bytes_added, duration, temporary, problems, damaged_packs) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, (julianday(?9) - julianday(?8)) * 86400.0, ?16, ?17, ?18)",
                // The duration as finish_job computes it, so a rebuilt history reports the very same numbers.
                params![
                    j.id, j.source, j.class, j.kind, j.trigger, j.attempt, j.scheduled_at, j.started_at, j.ended_at, o.status, o.reason,
                    o.message, o.snapshot, o.bytes_processed, o.bytes_added, o.temporary, o.problems, packs_to_sql(o.damaged_packs.as_ref())
                ],
            )
            .map(|n| n == 1)
        })
    }

    /// Keep a drill as a protocol entry.
    pub fn record_drill(&self, r: &crate::model::DrillReport) -> Result<()> {
        let json = serde_json::to_string(r).expect("reports serialize");
        self.with(|db| {
            db.execute(
                "INSERT INTO drills (test_id, started_at, source, class, passed, report) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![r.test_id, r.started, r.source, r.class, r.passed, json],
            )
            .map(|_| ())
        })
    }

    /// Drills since `since`, oldest first.
    pub fn drills(&self, since: DateTime<Utc>) -> Result<Vec<crate::model::DrillReport>> {
        let texts: Vec<String> = self.with(|db| {
            let mut q = db.prepare("SELECT report FROM drills WHERE started_at >= ?1 ORDER BY id")?;
            q.query_map([since], |r| r.get(0))?.collect()
        })?;
        Ok(texts.iter().filter_map(|t| serde_json::from_str(t).ok()).collect())
    }

    /// The newest drill of a class.
    pub fn last_drill(&self, class: &str) -> Result<Option<crate::model::DrillReport>> {
        let text: Option<String> = self.with(|db| {
            db.query_row("SELECT report FROM drills WHERE class = ?1 ORDER BY id DESC LIMIT 1", [class], |r| r.get(0)).optional()
        })?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Per class, as each job ran under it: (succeeded, all) backups started since `since`.
    pub fn backup_counts(&self, since: DateTime<Utc>) -> Result<BTreeMap<String, (u64, u64)>> {
        self.with(|db| {
            let mut q = db.prepare(
                "SELECT class, sum(status = 'succeeded'), count(*) FROM jobs \
                 WHERE kind = 'backup' AND status != 'running' AND started_at >= ?1 GROUP BY class",
            )?;
            q.query_map([since], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?.collect()
        })
    }

    /// When each successful backup since `since` ended, per source, oldest
    /// first; each source's newest one before `since` leads, as the point
    /// the period opens with.
    pub fn restorable_points(&self, since: DateTime<Utc>) -> Result<Vec<(String, DateTime<Utc>)>> {
        self.with(|db| {
            let mut q = db.prepare(
                "SELECT source, max(ended_at) FROM jobs WHERE kind = 'backup' AND status = 'succeeded' AND ended_at < ?1 GROUP BY source \
                 UNION ALL SELECT source, ended_at FROM jobs WHERE kind = 'backup' AND status = 'succeeded' AND ended_at >= ?1 \
                 ORDER BY 2",
            )?;
            q.query_map([since], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })
    }

    /// A source's newest drills first.
    pub fn source_drills(&self, source: &str, limit: usize) -> Result<Vec<crate::model::DrillReport>> {
        let texts: Vec<String> = self.with(|db| {
            let mut q = db.prepare("SELECT report FROM drills WHERE source = ?1 ORDER BY id DESC LIMIT ?2")?;
            q.query_map(params![source, limit as i64], |r| r.get(0))?.collect()
        })?;
        Ok(texts.iter().filter_map(|t| serde_json::from_str(t).ok()).collect())
    }

    /// A source's newest failed jobs first, of every kind.
    pub fn failures(&self, source: &str, limit: usize) -> Result<Vec<Job>> {
        self.with(|db| {
            let mut q =
                db.prepare(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE source = ?1 AND status = 'failed' ORDER BY id DESC LIMIT ?2"))?;
            q.query_map(params![source, limit as i64], row_to_job)?.collect()
        })
    }

    /// Jobs since `since`, oldest first.
    pub fn jobs_since(&self, since: DateTime<Utc>) -> Result<Vec<Job>> {
        self.with(|db| {
            let mut q = db.prepare(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE started_at >= ?1 ORDER BY id"))?;
            q.query_map([since], row_to_job)?.collect()
        })
    }

    pub fn audit(&self, e: &AuditEntry) -> Result<()> {
        self.with(|db| {
            db.execute(
                "INSERT INTO audit (time, actor, action, target, result, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![e.time, e.actor, e.action, e.target, e.result, e.detail],
            )
            .map(|_| ())
        })
    }

    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        self.with(|db| {
            let mut q = db.prepare("SELECT time, actor, action, target, result, detail FROM audit ORDER BY id DESC LIMIT ?1")?;
            q.query_map([limit as i64], |r| {
                Ok(AuditEntry {
                    time: r.get(0)?,
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    result: r.get(4)?,
                    detail: r.get(5)?,
                })
            })?
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that has failed every backup since it was added has waited
    /// since its first attempt, however many retries the history holds.
    #[test]
    fn the_first_backup_attempt_is_found_past_any_number_of_retries() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let state = State::open(&dir.path().join("state.db")).expect("a state");
        let first = DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z").expect("a time").with_timezone(&Utc);
        let outcome = Outcome { status: "failed".into(), ..Outcome::default() };
        for n in 0..1500 {
            let at = first + chrono::Duration::minutes(5 * n);
            let job = Job {
                id: n + 1,
                source: "fresh".into(),
                class: "standard".into(),
                kind: "backup".into(),
                trigger: "retry".into(),
                attempt: 0,
                scheduled_at: at,
                started_at: at,
                ended_at: Some(at),
                duration: None,
                outcome: outcome.clone(),
            };
            assert!(state.import_job(&job).expect("imported"));
        }
        assert_eq!(state.first_scheduled("fresh", "backup").expect("asked"), Some(first));
        assert_eq!(state.last_scheduled("fresh", "backup").expect("asked"), Some(first + chrono::Duration::minutes(5 * 1499)));
        assert_eq!(state.first_scheduled("other", "backup").expect("asked"), None);
    }

    /// The state is its user's alone: the directory made for it 0700, the
    /// database and SQLite's files beside it 0600, whatever the umask lets
    /// others have.
    #[test]
    fn a_new_state_and_its_directory_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("tresor-data/state.db");
        let state = State::open(&path).expect("a state");
        let text = |s: &str| s.to_string();
        let entry =
            AuditEntry { time: Utc::now(), actor: text("t"), action: text("b"), target: text("r"), result: text("ok"), detail: text("") };
        state.audit(&entry).expect("recorded");
        let mode = |name: &str| std::fs::metadata(dir.path().join(name)).map(|m| m.permissions().mode() & 0o7777).ok();
        let modes = ["tresor-data", "tresor-data/state.db", "tresor-data/state.db-wal", "tresor-data/state.db-shm"].map(mode);
        assert_eq!(modes, [Some(0o700), Some(0o600), Some(0o600), Some(0o600)]);
    }
}
