//! A PostgreSQL connection URL read the way libpq reads one, so that a URL
//! that works with `psql` works here too: percent-escapes, `[v6]` hosts and
//! query parameters such as `?sslmode=require`. Every PostgreSQL client
//! program tresor runs gets the connection through [`PgUrl::apply`], in its
//! environment, where a password stays out of `ps`.

use std::process::Command;

use crate::percent::decode;

/// The URL query parameters libpq takes, each with the environment variable
/// that sets it for a client program.
const SETTINGS: &[(&str, &str)] = &[
    ("application_name", "PGAPPNAME"),
    ("channel_binding", "PGCHANNELBINDING"),
    ("client_encoding", "PGCLIENTENCODING"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("gssencmode", "PGGSSENCMODE"),
    ("gsslib", "PGGSSLIB"),
    ("hostaddr", "PGHOSTADDR"),
    ("krbsrvname", "PGKRBSRVNAME"),
    ("load_balance_hosts", "PGLOADBALANCEHOSTS"),
    ("options", "PGOPTIONS"),
    ("passfile", "PGPASSFILE"),
    ("require_auth", "PGREQUIREAUTH"),
    ("requirepeer", "PGREQUIREPEER"),
    ("service", "PGSERVICE"),
    ("ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION"),
    ("ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION"),
    ("sslcert", "PGSSLCERT"),
    ("sslcrl", "PGSSLCRL"),
    ("sslcrldir", "PGSSLCRLDIR"),
    ("sslkey", "PGSSLKEY"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslsni", "PGSSLSNI"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
];

#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    pub user: Option<String>,
    password: Option<String>,
    /// A host name, an address, or a socket directory (`/run/postgresql`).
    pub host: String,
    pub port: u16,
    pub database: Option<String>,
    /// The query's parameters, as (environment variable, value).
    settings: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

impl PgUrl {
    /// `postgres[ql]://[USER[:PASSWORD]@]HOST[:PORT][/DATABASE][?PARAM=VALUE&…]`;
    /// the error says what is wrong and never holds the password.
    pub fn parse(url: &str) -> Result<PgUrl, String> {
        let rest = url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")).ok_or("not a postgres:// URL")?;
        // The last `@` ends the user part: a password may hold one, or a `/`.
        let (auth, rest) = rest.rsplit_once('@').map_or((None, rest), |(a, r)| (Some(a), r));
        let (user, password) = match auth.map(|a| a.split_once(':').map_or((a, None), |(u, p)| (u, Some(p)))) {
            Some((u, p)) => (Some(decode(u)?).filter(|u| !u.is_empty()), p.map(decode).transpose()?),
            None => (None, None),
        };
        let (rest, query) = rest.split_once('?').map_or((rest, None), |(r, q)| (r, Some(q)));
        let (hostport, database) = rest.split_once('/').map_or((rest, None), |(h, d)| (h, Some(d)));
        let (host, port) = split_port(hostport)?;
        let mut url = PgUrl {
            user,
            password,
            host: decode(host)?,
            port,
            database: database.map(decode).transpose()?.filter(|d| !d.is_empty()),
            settings: Vec::new(),
        };
        for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| format!("the query parameter {key:?} has no value", key = pair))?;
            url.set(key, decode(value)?)?;
        }
        if url.host.is_empty() {
            return Err("no host (postgres://USER@HOST:PORT/DB)".into());
        }
        Ok(url)
    }

    fn set(&mut self, key: &str, value: String) -> Result<(), String> {
        match key {
            "host" => self.host = value,
            "port" => self.port = value.parse().map_err(|_| "the port is not a number")?,
            "user" => self.user = Some(value),
            "password" => self.password = Some(value),
            "dbname" => self.database = Some(value),
            // libpq's reading of JDBC's spelling.
            "ssl" if value == "true" => self.settings.push(("PGSSLMODE", "require".into())),
            _ => match SETTINGS.iter().find(|(name, _)| *name == key) {
                Some((_, var)) => self.settings.push((var, value)),
                None => return Err(format!("unknown query parameter {key:?}")),
            },
        }
        Ok(())
    }

    /// The password from the URL, else `TRESOR_PG_PASSWORD`, else `PGPASSWORD`.
    pub fn with_password_from_env(mut self) -> PgUrl {
        self.password = self.password.or_else(|| std::env::var("TRESOR_PG_PASSWORD").ok()).or_else(|| std::env::var("PGPASSWORD").ok());
        self
    }

    /// Point a client program at the server, its database left to the
    /// caller; a password in the program's environment is replaced or removed.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("PGHOST", &self.host).env("PGPORT", self.port.to_string());
        match &self.user {
            Some(u) => cmd.env("PGUSER", u),
            None => cmd.env_remove("PGUSER"),
        };
        match &self.password {
            Some(p) => cmd.env("PGPASSWORD", p),
            None => cmd.env_remove("PGPASSWORD"),
        };
        cmd.envs(self.settings.iter().map(|(k, v)| (k, v)));
    }

    /// `postgres://USER@HOST:PORT`, no password and no parameters: the server,
    /// as it is named in messages and snapshots.
    pub fn shown(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match &self.user {
            Some(u) => format!("postgres://{u}@{host}:{}", self.port),
            None => format!("postgres://{host}:{}", self.port),
        }
    }
}

fn split_port(hostport: &str) -> Result<(&str, u16), String> {
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or("an unclosed [ in the host")?;
            (host, after.strip_prefix(':'))
        }
        None => hostport.rsplit_once(':').map_or((hostport, None), |(h, p)| (h, Some(p))),
    };
    let port = port.filter(|p| !p.is_empty()).map_or(Ok(5432), |p| p.parse().map_err(|_| "the port is not a number"))?;
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(url: &PgUrl) -> Vec<(String, Option<String>)> {
        let mut cmd = Command::new("psql");
        url.apply(&mut cmd);
        cmd.get_envs().map(|(k, v)| (k.to_string_lossy().into(), v.map(|v| v.to_string_lossy().into()))).collect()
    }

    #[test]
    fn the_parts_of_a_url_are_read_as_libpq_reads_them() {
        let u = PgUrl::parse("postgresql://app:p%40ss@w/rd@db.example:6432/sh%20op?sslmode=require&application_name=tresor").unwrap();
        assert_eq!((u.user.as_deref(), u.host.as_str(), u.port, u.database.as_deref()), (Some("app"), "db.example", 6432, Some("sh op")));
        let env = env_of(&u);
        let has = |k: &str, v: &str| env.contains(&(k.to_string(), Some(v.to_string())));
        assert!(has("PGPASSWORD", "p@ss@w/rd") && has("PGSSLMODE", "require") && has("PGAPPNAME", "tresor"), "{env:?}");
        assert_eq!(u.shown(), "postgres://app@db.example:6432");
        assert!(!format!("{u:?}").contains("ss@w"), "{u:?}");

        let u = PgUrl::parse("postgres://[::1]/shop?ssl=true&port=7000&user=x&dbname=y").unwrap();
        assert_eq!((u.user.as_deref(), u.host.as_str(), u.port, u.database.as_deref()), (Some("x"), "::1", 7000, Some("y")));
        assert!(env_of(&u).contains(&("PGSSLMODE".into(), Some("require".into()))));
        assert_eq!(u.shown(), "postgres://x@[::1]:7000");

        let u = PgUrl::parse("postgres://%2Frun%2Fpostgresql/").unwrap();
        assert_eq!((u.user, u.host.as_str(), u.port, u.database), (None, "/run/postgresql", 5432, None));
        assert!(env_of(&PgUrl::parse("postgres://db").unwrap()).contains(&("PGPASSWORD".into(), None)), "an inherited password is removed");
    }

    #[test]
    fn a_bad_url_is_named_for_what_is_wrong() {
        for (url, why) in [
            ("mysql://db/shop", "not a postgres:// URL"),
            ("postgres://app:s3cret@db:port/shop", "the port is not a number"),
            ("postgres://app:s3cret@db/shop?sslmod=require", "unknown query parameter \"sslmod\""),
            ("postgres://app:s3cret@db/shop?sslmode", "the query parameter \"sslmode\" has no value"),
            ("postgres://app:s3cret@/shop", "no host (postgres://USER@HOST:PORT/DB)"),
            ("postgres://app:s3cret@[::1/shop", "an unclosed [ in the host"),
            ("postgres://app:s3%zzt@db/shop", "a bad %-escape"),
        ] {
            assert_eq!(PgUrl::parse(url).unwrap_err(), why, "{url}");
        }
    }
}
