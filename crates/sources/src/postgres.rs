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

use crate::command::{CommandTarget, spawn_output_heard};
use crate::pgurl::PgUrl;
use crate::{Error, ErrorKind, Result, Source, Stream, Target};

pub struct Postgres {
    conn: PgUrl,
    pub(crate) db: String,
    /// No database in the URL: the cluster's roles and tablespaces
    /// (`pg_dumpall --globals-only`).
    globals: bool,
    point: BTreeMap<String, serde_json::Value>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").field("url", &self.url()).finish_non_exhaustive()
    }
}

impl Postgres {
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]`: a whole cluster, reached
    /// through its `postgres` database.
    pub fn parse_cluster(url: &str) -> Result<Postgres> {
        let mut pg = Postgres::parse(url)?;
        pg.db = "postgres".into();
        pg.globals = false;
        Ok(pg)
    }

    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`, or without a
    /// database for the cluster's globals.
    pub fn parse(url: &str) -> Result<Postgres> {
        let conn = PgUrl::parse(url).map_err(|why| Error::failed(crate::redis::url_without_secret(url), why))?;
        if conn.user.is_none() {
            return Err(Error::failed(conn.shown(), "no user (postgres://USER@HOST:PORT/DB)"));
        }
        let globals = conn.database.is_none();
        let db = conn.database.clone().unwrap_or_else(|| "postgres".into());
        Ok(Postgres { conn: conn.with_password_from_env(), db, globals, point: BTreeMap::new() })
    }

    pub(crate) fn url(&self) -> String {
        if self.globals {
            return self.cluster_url();
        }
        format!("{}/{}", self.conn.shown(), self.db)
    }

    pub(crate) fn cluster_url(&self) -> String {
        self.conn.shown()
    }

    pub(crate) fn fail(&self, why: impl ToString) -> Error {
        Error::failed(self.url(), why)
    }

    /// psql exits 2 when it has no session with the server; the server is
    /// unreachable when its port takes no connection.
    fn failure_kind(&self, code: Option<i32>) -> ErrorKind {
        let reachable = || {
            let addr = std::net::ToSocketAddrs::to_socket_addrs(&(self.conn.host.as_str(), self.conn.port)).ok().and_then(|mut a| a.next());
            addr.is_some_and(|a| std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(5)).is_ok())
        };
        match code {
            Some(2) if !self.conn.host.starts_with('/') && !reachable() => ErrorKind::Unreachable,
            _ => ErrorKind::Other,
        }
    }

    /// A PostgreSQL client program connected to `db`.
    fn program(&self, name: &str, db: &str) -> Command {
        let mut cmd = self.server_program(name);
        cmd.args(["-d", db]);
        cmd
    }

    /// A PostgreSQL client program pointed at the server.
    pub(crate) fn server_program(&self, name: &str) -> Command {
        let mut cmd = Command::new(client_program(name));
        // The URL's `connect_timeout` comes after, and wins.
        cmd.env("PGCONNECT_TIMEOUT", "10");
        self.conn.apply(&mut cmd);
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
            let said = said(&String::from_utf8_lossy(&out.stderr)).unwrap_or_else(|| "psql failed".into());
            return Err(Error::of(self.failure_kind(out.status.code()), self.url(), said));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Postgres {
    /// The server's version, and whether the program that backs it up
    /// (`pg_dump`, `pg_dumpall`, or `pg_basebackup` when `physical`) is new
    /// enough for it: a client older than the server's major version
    /// refuses to dump it.
    pub(crate) fn describe(&self, physical: bool) -> Result<String> {
        let num: u32 =
            self.query(&self.db, "SHOW server_version_num")?.parse().map_err(|_| self.fail("the server did not say its version"))?;
        // 150008 is 15.8; before 10, 90603 was 9.6.3.
        let major = num / 10_000;
        let server = if num >= 100_000 { format!("{major}.{}", num % 100) } else { format!("{major}.{}.{}", num / 100 % 100, num % 100) };
        let tool = match (physical, self.globals) {
            (true, _) => "pg_basebackup",
            (false, true) => "pg_dumpall",
            (false, false) => "pg_dump",
        };
        let out = Command::new(client_program(tool)).arg("--version").output().map_err(|e| self.fail(format!("cannot run {tool}: {e}")))?;
        // `pg_dump (PostgreSQL) 15.8 (Debian 15.8-1.pgdg120+1)`
        let said = String::from_utf8_lossy(&out.stdout);
        let version = said.split_whitespace().nth(2).unwrap_or_default().to_string();
        let Some(tool_major) = version.split('.').next().and_then(|m| m.parse::<u32>().ok()) else {
            return Err(self.fail(format!("{tool} did not say its version: {:?}", said.trim())));
        };
        if tool_major < major {
            return Err(
                self.fail(format!("{tool} {tool_major} is older than the server's {major}: install PostgreSQL {major}'s client programs"))
            );
        }
        Ok(format!("PostgreSQL {server}; {tool} {version}"))
    }
}

/// A PostgreSQL client program: from `TRESOR_PG_BIN`, else from `PATH`.
fn client_program(name: &str) -> PathBuf {
    std::env::var_os("TRESOR_PG_BIN").map(|d| PathBuf::from(d).join(name)).unwrap_or_else(|| name.into())
}

impl Source for Postgres {
    fn open(&mut self) -> Result<Stream> {
        let point = self.query(&self.db, "SELECT pg_current_wal_lsn(), timeline_id FROM pg_control_checkpoint()")?;
        let (lsn, timeline) = point.split_once('|').unwrap_or((point.as_str(), ""));
        self.point.insert("lsn".into(), lsn.into());
        self.point.insert("timeline".into(), timeline.parse::<u64>().unwrap_or_default().into());
        if self.globals {
            self.point.insert("globals".into(), true.into());
            let mut cmd = self.server_program("pg_dumpall");
            cmd.args(["--globals-only", "-l", "postgres"]);
            let (reader, _) = spawn_output_heard(format!("pg_dumpall of {}", self.url()), cmd, said)?;
            return Ok(Stream { name: "globals.sql".into(), reader });
        }
        self.point.insert("database".into(), self.db.clone().into());
        self.point.insert("properties".into(), crate::pg_props::record(self)?);
        // The statistics' live-row counts: what a restore drill compares its exact counts with.
        let rows = self
            .query(&self.db, "SELECT coalesce(json_object_agg(schemaname || '.' || relname, n_live_tup), '{}') FROM pg_stat_user_tables")?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&rows) {
            self.point.insert("row_estimates".into(), v);
        }
        let mut cmd = self.program("pg_dump", &self.db);
        cmd.arg("--format=custom");
        let (reader, _) = spawn_output_heard(format!("pg_dump of {}", self.url()), cmd, said)?;
        Ok(Stream { name: format!("{}.dump", self.db), reader })
    }

    fn info(&self) -> SourceInfo {
        SourceInfo { kind: "postgres".into(), url: Some(self.url()), consistency: self.point.clone() }
    }
}

/// `--to postgres://…/DB`: `pg_restore` into DB, created when missing; a
/// database that has tables is refused unless `--flush` (then objects are
/// dropped and recreated).
///
/// With `jobs` > 1, `pg_restore --jobs` needs a file it can seek in: the
/// stream goes to a temporary file first, removed afterwards, and on every
/// path (a restore that fails mid-stream drops the target unfinished).
pub struct PostgresTarget {
    pg: Postgres,
    jobs: usize,
    inner: Option<CommandTarget>,
    spool: Option<(tempfile::NamedTempFile, Command)>,
    /// The snapshot's record of the database's owners and properties
    /// (`crate::pg_props`); null for a snapshot from before it.
    recorded: serde_json::Value,
    /// Why the objects' owners are not kept, when they are not.
    owners_lost: Option<String>,
    /// The restore made the database: its properties are the snapshot's.
    created: bool,
}

impl PostgresTarget {
    pub fn new(pg: Postgres, jobs: usize, recorded: serde_json::Value) -> PostgresTarget {
        PostgresTarget { pg, jobs, inner: None, spool: None, recorded, owners_lost: None, created: false }
    }

    /// Whether pg_restore can give the objects their owners: the roles
    /// must exist, and setting another role as owner takes a superuser.
    /// Why not, when not; nothing recorded keeps the old way (no owners).
    fn owners_lost(&self) -> Result<Option<String>> {
        let Some(missing) = crate::pg_props::missing_roles(&self.pg, &self.recorded)? else {
            return Ok(Some(String::new()));
        };
        if !missing.is_empty() {
            return Ok(Some(format!("roles {} do not exist here (restore the cluster's roles first)", missing.join(", "))));
        }
        if self.pg.query("postgres", "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")? != "t" {
            return Ok(Some("the restoring role is no superuser".into()));
        }
        Ok(None)
    }

    /// The database's privileges and settings, and its owner where the
    /// objects' owners are kept, on a database the restore made (one that
    /// was there keeps its own): a database closed to PUBLIC must not come
    /// back open to everyone because a role is missing here.
    fn give_properties(&self) -> Result<()> {
        let have = self.pg.query("postgres", "SELECT coalesce(json_agg(rolname), '[]') FROM pg_roles")?;
        let have: Vec<String> = serde_json::from_str(&have).unwrap_or_default();
        let owner_too = self.owners_lost.is_none();
        for statement in crate::pg_props::statements(&self.pg.db, &self.recorded, &|r| have.iter().any(|h| h == r), owner_too) {
            self.pg.query("postgres", &statement)?;
        }
        Ok(())
    }

    fn spool_to(&mut self, mut cmd: Command) -> Result<()> {
        let file = tempfile::Builder::new()
            .prefix("tresor-pg-restore-")
            .suffix(".dump")
            .tempfile()
            .map_err(|e| self.pg.fail(format!("cannot write a temporary file in {}: {e}", std::env::temp_dir().display())))?;
        cmd.arg(format!("--jobs={}", self.jobs)).arg(file.path());
        self.spool = Some((file, cmd));
        Ok(())
    }

    /// `pg_restore --jobs` on the spooled dump, run as the streamed one is.
    fn finish_spool(&mut self) -> Result<()> {
        let (file, cmd) = self.spool.take().expect("spooling");
        let mut restore = self.restore_program(cmd);
        let done = restore.begin(0, false).and_then(|()| restore.finish_with_stderr());
        drop(file);
        done.map(drop)
    }

    fn restore_program(&self, cmd: Command) -> CommandTarget {
        CommandTarget::program(format!("pg_restore into {}", self.pg.url()), cmd).heard(said)
    }
}

impl PostgresTarget {
    /// Roles and tablespaces through `psql`. Roles other than the one
    /// connecting make the cluster non-empty: their attributes and
    /// passwords would be set from the backup.
    fn begin_globals(&mut self, len: u64, overwrite: bool) -> Result<()> {
        let roles = self.pg.query(
            "postgres",
            "SELECT coalesce(string_agg(rolname, ', ' ORDER BY rolname), '') FROM pg_roles WHERE rolname !~ '^pg_' AND rolname <> current_user",
        )?;
        if !roles.is_empty() && !overwrite {
            return Err(self.pg.fail(format!(
                "the cluster has roles ({roles}); restoring sets their attributes and passwords from the backup: add --flush to allow it"
            )));
        }
        let mut cmd = self.pg.program("psql", "postgres");
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=0", "-f", "-"]);
        let mut inner = CommandTarget::program(format!("psql into {}", self.pg.url()), cmd).heard(said);
        inner.begin(len, overwrite)?;
        self.inner = Some(inner);
        Ok(())
    }

    /// Every error but "already exists" (the connecting role always does) fails the restore.
    fn finish_globals(&mut self) -> Result<String> {
        let said = self.inner.take().expect("begun").finish_with_stderr()?;
        if let Some(e) = said.lines().find(|l| l.contains("ERROR:") && !l.contains("already exists")) {
            return Err(self.pg.fail(e.split_once("ERROR:").map_or(e, |(_, m)| m).trim()));
        }
        let roles = self.pg.query("postgres", "SELECT count(*) FROM pg_roles WHERE rolname !~ '^pg_'")?;
        Ok(format!("{} restored, {roles} roles", self.pg.url()))
    }
}

impl Target for PostgresTarget {
    fn begin(&mut self, len: u64, overwrite: bool) -> Result<()> {
        if self.pg.globals {
            return self.begin_globals(len, overwrite);
        }
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
        if tables > 0 && self.jobs > 1 {
            return Err(self.pg.fail(format!(
                "the database has {tables} tables, and a parallel restore (--jobs {}) that fails halfway cannot be undone: restore with --jobs 1 (one transaction) or into an empty database",
                self.jobs
            )));
        }
        self.created = !exists;
        self.owners_lost = self.owners_lost()?;
        let mut cmd = self.pg.program("pg_restore", &self.pg.db);
        cmd.arg("--exit-on-error");
        if self.owners_lost.is_some() {
            cmd.arg("--no-owner");
        }
        if tables > 0 {
            cmd.args(["--clean", "--if-exists"]);
        }
        if self.jobs > 1 {
            return self.spool_to(cmd);
        }
        // One transaction: a restore that fails (a view of another schema
        // on a table it drops) leaves the database as it was; without it
        // the tables dropped so far stayed dropped.
        cmd.arg("--single-transaction");
        let mut inner = self.restore_program(cmd);
        inner.begin(len, overwrite)?;
        self.inner = Some(inner);
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        if let Some((file, _)) = &mut self.spool {
            return std::io::Write::write_all(file, data)
                .map_err(|e| Error::failed(self.pg.url(), format!("cannot write {}: {e}", file.path().display())));
        }
        self.inner.as_mut().expect("begun").write(data)
    }

    fn finish(&mut self) -> Result<String> {
        if self.pg.globals {
            return self.finish_globals();
        }
        match self.spool {
            Some(_) => self.finish_spool()?,
            None => _ = self.inner.take().expect("begun").finish()?,
        }
        if self.created {
            self.give_properties()?;
        }
        let tables =
            self.pg.query(&self.pg.db, "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")?;
        match self.owners_lost.as_deref().filter(|why| !why.is_empty()) {
            Some(why) => Ok(format!("{} restored, {tables} tables; owned by the restoring role, as {why}", self.pg.url())),
            None => Ok(format!("{} restored, {tables} tables", self.pg.url())),
        }
    }
}

/// What a PostgreSQL program said of its failure: its first error line
/// from the first `error:` (libpq's `prog: error: …`), `ERROR:` or
/// `FATAL:` on, with the server's `DETAIL:` after it; not its last line
/// (pg_restore's "Command was: …", psql's indented hint "Is the server
/// running on that host …").
pub(crate) fn said(text: &str) -> Option<String> {
    let mut lines = text.lines();
    let Some(first) = lines.by_ref().find(|l| ["error:", "ERROR:", "FATAL:"].iter().any(|m| l.contains(m))) else {
        return crate::last_line(text).map(|l| l.trim().to_string());
    };
    let at = ["ERROR:", "FATAL:", "error:"].iter().filter_map(|m| first.find(m).map(|i| i + m.len())).min().unwrap_or(0);
    let mut out = first[at..].trim().to_string();
    if let Some(detail) = lines.next().and_then(|l| l.strip_prefix("DETAIL:")) {
        out = format!("{out} ({})", detail.trim());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_programs_word_is_its_error_and_detail() {
        let restore = "pg_restore: error: could not execute query: ERROR:  cannot drop table public.marks because other objects depend on it\n\
                       DETAIL:  view public.vv depends on table public.marks\n\
                       HINT:  Use DROP ... CASCADE to drop the dependent objects too.\n\
                       Command was: DROP TABLE IF EXISTS public.marks;\n";
        let refused = "psql: error: connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n\
                       \tIs the server running on that host and accepting TCP/IP connections?\n";
        let wrong = "pg_dump: error: connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  password authentication failed for user \"app\"\n";
        let dropped = "could not execute query: ERROR:  cannot drop table public.marks because other objects depend on it \
                       (view public.vv depends on table public.marks)";
        assert_eq!(said(restore).as_deref(), Some(dropped));
        assert_eq!(said(refused).as_deref(), Some("connection to server at \"127.0.0.1\", port 1 failed: Connection refused"));
        let denied = "connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  password authentication failed for user \"app\"";
        assert_eq!(said(wrong).as_deref(), Some(denied));
        assert_eq!(said("psql:<stdin>:3: ERROR:  role \"x\" does not exist\n").as_deref(), Some("role \"x\" does not exist"));
        assert_eq!(said("  killed\n").as_deref(), Some("killed"));
    }

    /// The name a database source goes by shows no password, in the user
    /// part or in a libpq query string.
    #[test]
    fn a_database_is_named_without_its_password() {
        let pg = Postgres::parse("postgres://app:pw-secret@db/shop?password=q-secret&sslmode=disable").unwrap();
        assert_eq!(pg.url(), "postgres://app@db:5432/shop");
        assert!(!format!("{pg:?}").contains("secret"), "{pg:?}");
        let e = Postgres::parse("postgres://app:pw-secret@db:port/shop?password=q-secret").unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    /// A parallel restore that fails mid-stream leaves no copy of the dump
    /// behind in the temporary directory.
    #[test]
    fn a_parallel_restore_dropped_mid_stream_removes_its_spooled_dump() {
        let pg = Postgres::parse("postgres://app@127.0.0.1:1/shop").unwrap();
        let mut target = PostgresTarget::new(pg, 4, serde_json::Value::Null);
        target.spool_to(Command::new("pg_restore")).unwrap();
        target.write(b"PGDMP partial").unwrap();
        let path = target.spool.as_ref().map(|(file, _)| file.path().to_path_buf()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"PGDMP partial");
        drop(target);
        assert!(!path.exists(), "{} outlived its restore", path.display());
    }
}
