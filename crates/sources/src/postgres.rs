//! PostgreSQL, logical: `pg_dump -Fc` of one database streamed into the
//! repository (no temporary file), and `pg_restore` from the stream into a
//! new or named database. The server's WAL position and timeline before the
//! dump are recorded as the consistency point.
//!
//! The PostgreSQL client programs come from `TRESOR_PG_BIN` (a directory),
//! else from `PATH`; the password from the URL, `TRESOR_PG_PASSWORD` or
//! `PGPASSWORD`, and is passed to them in their environment only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use tresor_engine::SourceInfo;

use crate::command::{CommandTarget, spawn_output};
use crate::{Error, Result, Source, Stream, Target};

pub struct Postgres {
    user: String,
    password: Option<String>,
    host: String,
    port: u16,
    pub(crate) db: String,
    point: BTreeMap<String, serde_json::Value>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").field("url", &self.url()).field("password", &self.password.as_ref().map(|_| "<redacted>")).finish()
    }
}

impl Postgres {
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]`: a whole cluster, reached
    /// through its `postgres` database.
    pub fn parse_cluster(url: &str) -> Result<Postgres> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let has_db = rest.rsplit_once('@').is_some_and(|(_, hp)| hp.contains('/'));
        let mut pg = Postgres::parse(&if has_db { url.to_string() } else { format!("{url}/postgres") })?;
        pg.db = "postgres".into();
        Ok(pg)
    }

    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`
    pub fn parse(url: &str) -> Result<Postgres> {
        let shown = crate::redis::url_without_secret(url);
        let bad = |why: &str| Error::failed(&shown, why);
        let rest =
            url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")).ok_or_else(|| bad("not a postgres:// URL"))?;
        let (auth, rest) = rest.rsplit_once('@').ok_or_else(|| bad("no user (postgres://USER@HOST/DB)"))?;
        let (user, password) = match auth.split_once(':') {
            Some((u, p)) => (u.to_string(), Some(p.to_string())),
            None => (auth.to_string(), None),
        };
        let (hostport, db) = rest.split_once('/').ok_or_else(|| bad("no database (postgres://USER@HOST/DB)"))?;
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("the port is not a number"))?),
            None => (hostport.to_string(), 5432),
        };
        if db.is_empty() || host.is_empty() || user.is_empty() {
            return Err(bad("user, host and database are required"));
        }
        let password = password.or_else(|| std::env::var("TRESOR_PG_PASSWORD").ok()).or_else(|| std::env::var("PGPASSWORD").ok());
        Ok(Postgres { user, password, host, port, db: db.to_string(), point: BTreeMap::new() })
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://{}@{}:{}/{}", self.user, self.host, self.port, self.db)
    }

    pub(crate) fn cluster_url(&self) -> String {
        format!("postgres://{}@{}:{}", self.user, self.host, self.port)
    }

    pub(crate) fn fail(&self, why: impl ToString) -> Error {
        Error::failed(self.url(), why)
    }

    /// A PostgreSQL client program connected to `db`.
    fn program(&self, name: &str, db: &str) -> Command {
        let mut cmd = self.server_program(name);
        cmd.args(["-d", db]);
        cmd
    }

    /// A PostgreSQL client program pointed at the server.
    pub(crate) fn server_program(&self, name: &str) -> Command {
        let bin = std::env::var_os("TRESOR_PG_BIN").map(|d| PathBuf::from(d).join(name)).unwrap_or_else(|| name.into());
        let mut cmd = Command::new(bin);
        cmd.args(["-h", &self.host, "-p", &self.port.to_string(), "-U", &self.user]);
        cmd.env("PGCONNECT_TIMEOUT", "10");
        match &self.password {
            Some(p) => cmd.env("PGPASSWORD", p),
            None => cmd.env_remove("PGPASSWORD"),
        };
        cmd
    }

    /// One query's result, as psql's unaligned text.
    pub(crate) fn query(&self, db: &str, sql: &str) -> Result<String> {
        let out = self
            .program("psql", db)
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .map_err(|e| self.fail(format!("cannot run psql: {e}")))?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            return Err(self.fail(
                text.lines()
                    .rfind(|l| !l.trim().is_empty())
                    .unwrap_or("psql failed")
                    .trim_start_matches("psql: ")
                    .trim_start_matches("error: "),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Source for Postgres {
    fn open(&mut self) -> Result<Stream> {
        let point = self.query(&self.db, "SELECT pg_current_wal_lsn(), timeline_id FROM pg_control_checkpoint()")?;
        let (lsn, timeline) = point.split_once('|').unwrap_or((point.as_str(), ""));
        self.point.insert("lsn".into(), lsn.into());
        self.point.insert("timeline".into(), timeline.parse::<u64>().unwrap_or_default().into());
        self.point.insert("database".into(), self.db.clone().into());
        let mut cmd = self.program("pg_dump", &self.db);
        cmd.arg("--format=custom");
        Ok(Stream { name: format!("{}.dump", self.db), reader: spawn_output(format!("pg_dump of {}", self.url()), cmd)? })
    }

    fn info(&self) -> SourceInfo {
        SourceInfo { kind: "postgres".into(), url: Some(self.url()), consistency: self.point.clone() }
    }
}

/// `--to postgres://…/DB`: `pg_restore` into DB, created when missing; a
/// database that has tables is refused unless `--flush` (then objects are
/// dropped and recreated).
pub struct PostgresTarget {
    pg: Postgres,
    inner: Option<CommandTarget>,
}

impl PostgresTarget {
    pub fn new(pg: Postgres) -> PostgresTarget {
        PostgresTarget { pg, inner: None }
    }
}

impl Target for PostgresTarget {
    fn begin(&mut self, len: u64, overwrite: bool) -> Result<()> {
        let quoted = self.pg.db.replace('\'', "''");
        let exists = self.pg.query("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{quoted}'"))? == "1";
        if !exists {
            self.pg.query("postgres", &format!("CREATE DATABASE \"{}\"", self.pg.db.replace('"', "\"\"")))?;
        }
        let tables: u64 = if exists {
            self.pg
                .query(&self.pg.db, "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")?
                .parse()
                .unwrap_or(0)
        } else {
            0
        };
        if tables > 0 && !overwrite {
            return Err(self.pg.fail(format!("the database has {tables} tables; restoring replaces them: add --flush to allow it")));
        }
        let mut cmd = self.pg.program("pg_restore", &self.pg.db);
        cmd.args(["--no-owner", "--exit-on-error"]);
        if tables > 0 {
            cmd.args(["--clean", "--if-exists"]);
        }
        let mut inner = CommandTarget::program(format!("pg_restore into {}", self.pg.url()), cmd);
        inner.begin(len, overwrite)?;
        self.inner = Some(inner);
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.inner.as_mut().expect("begun").write(data)
    }

    fn finish(&mut self) -> Result<String> {
        self.inner.take().expect("begun").finish()?;
        let tables =
            self.pg.query(&self.pg.db, "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")?;
        Ok(format!("{} restored, {tables} tables", self.pg.url()))
    }
}
