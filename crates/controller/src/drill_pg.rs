//! PostgreSQL drills: a logical backup restored into a new scratch cluster
//! (`initdb` on a free port), a base backup recovered into one, the roles
//! of a globals backup replayed into one; then the plan's queries.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::child::Tresor;
use crate::model::DrillReport as Report;
use crate::model::RestoreSpec;
use crate::plan::{Query, SourceSpec};
use crate::scratch::Postgres;

pub(crate) fn drill_postgres(t: &Tresor, source: &SourceSpec, id: &str, dir: &Path, point: &Value, r: &mut Report) -> Result<(), String> {
    let pgdir = dir.join("pg");
    std::fs::create_dir_all(&pgdir).map_err(|e| format!("cannot create {}: {e}", pgdir.display()))?;
    let (pg, db) = if r.kind == "pg-base" {
        let data = pgdir.join("data").display().to_string();
        let v = t.restore(id, RestoreSpec { target: Some(data), base_backup: true, ..RestoreSpec::default() })?;
        r.bytes = v["bytes"].as_u64().unwrap_or(0);
        let pg = Postgres::start(&pgdir, false)?;
        pg.recovered()?;
        r.checks.push("the base backup recovered to a consistent state and was promoted".into());
        (pg, "postgres".to_string())
    } else if point["globals"].as_bool() == Some(true) {
        let pg = Postgres::start(&pgdir, true)?;
        let v = t.restore_to(id, pg.url("").trim_end_matches('/'))?;
        r.bytes = v["bytes"].as_u64().unwrap_or(0);
        let roles = pg.query("postgres", "SELECT count(*) FROM pg_roles WHERE rolname !~ '^pg_'")?;
        r.checks.push(format!("{roles} roles replayed"));
        (pg, "postgres".to_string())
    } else {
        let db = point["database"].as_str().unwrap_or("postgres").to_string();
        let pg = Postgres::start(&pgdir, true)?;
        let v = t.restore_to(id, &pg.url(&db))?;
        r.bytes = v["bytes"].as_u64().unwrap_or(0);
        r.checks.push(format!("pg_restore into a scratch cluster: {}", v["result"].as_str().unwrap_or("done")));
        compare_rows(&pg, &db, &point["row_estimates"], r)?;
        (pg, db)
    };
    for q in &source.verify.queries {
        r.checks.push(run_query(&pg, q, &db, r.snapshot_time)?);
    }
    Ok(())
}

/// Exact row counts of the restored tables against the live-row counts
/// PostgreSQL's statistics showed at backup time (within 10 %: they are
/// estimates).
fn compare_rows(pg: &Postgres, db: &str, estimates: &Value, r: &mut Report) -> Result<(), String> {
    let Some(tables) = estimates.as_object() else { return Ok(()) };
    let mut compared = 0;
    for (table, est) in tables {
        let est = est.as_i64().unwrap_or(0);
        if est <= 0 {
            continue;
        }
        let quoted: Vec<String> = table.splitn(2, '.').map(|p| format!("\"{}\"", p.replace('"', "\"\""))).collect();
        let exact: i64 = pg.query(db, &format!("SELECT count(*) FROM {}", quoted.join("."))).map(|v| v.parse().unwrap_or(-1))?;
        if (exact - est).abs() > (est / 10).max(1) {
            return Err(format!("table {table} has {exact} rows restored; the backup's statistics showed {est}"));
        }
        compared += 1;
    }
    if compared > 0 {
        r.checks.push(format!("row counts of {compared} tables match the backup's statistics (within 10 %)"));
    }
    Ok(())
}

/// One validation query; what it showed, or why it failed.
fn run_query(pg: &Postgres, q: &Query, db: &str, point: Option<DateTime<Utc>>) -> Result<String, String> {
    let value = pg.query(q.database.as_deref().unwrap_or(db), &q.sql)?;
    match q.judge(&value, point) {
        Ok(met) if met.is_empty() => Ok(format!("{} = {value}", q.sql)),
        Ok(met) => Ok(format!("{} = {value} ({met})", q.sql)),
        Err(why) => Err(format!("{}: {why}", q.sql)),
    }
}
