//! `restore-app --preview`: per source of an application, what its target
//! holds that the restore would replace (a Redis: its keys; a PostgreSQL
//! database: its tables) and the restore's predicted duration for the
//! snapshot's size from the source's drill history (the report's model,
//! `report::predict`). Nothing is written.

use serde::Serialize;

use crate::app_restore::Report;
use crate::model::DrillReport;

/// One source's preview.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub source: String,
    pub kind: String,
    pub snapshot: String,
    pub target: String,
    /// What the target holds that would be replaced, when tresor can tell.
    pub replaces: Option<String>,
    /// From the source's passed drills, for the snapshot's size.
    pub predicted_seconds: Option<f64>,
    /// How many drills the prediction rests on.
    pub drills: usize,
    /// Why there is no prediction though drills passed: they restored far
    /// less than the snapshot holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpredictable: Option<String>,
}

/// The preview of each source of a prepared (dry-run) restore.
pub fn preview(report: &Report, history: &[DrillReport]) -> Vec<Preview> {
    report
        .sources
        .iter()
        .map(|s| {
            let past: Vec<(u64, f64)> =
                history.iter().filter(|d| d.source == s.source && d.passed).map(|d| (d.bytes, d.rto_seconds)).collect();
            Preview {
                source: s.source.clone(),
                kind: s.kind.clone(),
                snapshot: s.snapshot.clone(),
                target: s.target.clone(),
                replaces: s
                    .spec
                    .to
                    .as_ref()
                    .and_then(|to| replaces(to.expose()).unwrap_or_else(|e| Some(format!("cannot tell what it holds: {e}")))),
                predicted_seconds: crate::report::predict(&past, s.bytes),
                unpredictable: crate::report::unpredictable(&past, s.bytes),
                drills: past.len(),
            }
        })
        .collect()
}

/// What a Redis or PostgreSQL target holds, which a restore there replaces:
/// "holds N keys and would be replaced"; other targets: none.
pub fn replaces(url: &str) -> Result<Option<String>, String> {
    match url.split_once("://").map_or("", |(scheme, _)| scheme) {
        "redis" | "rediss" => {
            let keys = tresor_sources::RedisSource::parse(url).and_then(|r| r.keys()).map_err(|e| e.to_string())?;
            Ok(Some(format!("holds {keys} keys and would be replaced")))
        }
        "postgres" | "postgresql" => {
            let db = crate::app_drill::database_of(url);
            let sql = "SELECT count(*) FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema')";
            let n = crate::app_hooks::psql_value(url, sql, None)?;
            Ok(Some(format!("database {db} holds {n} tables and would be replaced")))
        }
        _ => Ok(None),
    }
}
