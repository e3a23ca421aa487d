//! Debug output of the plan's types that hold URLs: a URL's password is
//! shown as `***` (model::redact), so a plan logged or printed with `{:?}`
//! never shows one. Each impl lists the type's fields; the rest derive Debug.

use std::fmt;

use super::{HttpCheck, Query, Repository, SilenceSettings, SourceSpec, Standby, Webhook};
use crate::model::redact;

/// A URL (or a path, which has no password) as Debug shows it: redacted.
struct Url<'a>(&'a str);

impl fmt::Debug for Url<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact(self.0), f)
    }
}

fn url(u: &str) -> Url<'_> {
    Url(u)
}

impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceSpec")
            .field("name", &self.name)
            .field("class", &self.class)
            .field("url", &url(&self.url))
            .field("schedule", &self.schedule)
            .field("spread", &self.spread)
            .field("repository", &self.repository)
            .field("tags", &self.tags)
            .field("hooks", &self.hooks)
            .field("retries", &self.retries)
            .field("timeout", &self.timeout)
            .field("verify", &self.verify)
            .field("pod", &self.pod)
            .field("scope", &self.scope)
            .field("wal_archive", &self.wal_archive)
            .field("transforms", &self.transforms)
            .field("standby", &self.standby)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Standby {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Standby")
            .field("target", &url(&self.target.to_string_lossy()))
            .field("server", &self.server.as_deref().map(url))
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for HttpCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCheck")
            .field("url", &url(&self.url))
            .field("status", &self.status)
            .field("contains", &self.contains)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Query")
            .field("sql", &self.sql)
            .field("database", &self.database)
            .field("min", &self.min)
            .field("max_age", &self.max_age)
            .field("equals", &self.equals)
            .field("url", &self.url.as_deref().map(url))
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &url(&self.url))
            .field("format", &self.format)
            .field("token_file", &self.token_file)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("url", &url(&self.url))
            .field("password_file", &self.password_file)
            .field("init", &self.init)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SilenceSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SilenceSettings")
            .field("alertmanager", &url(&self.alertmanager))
            .field("matchers", &self.matchers)
            .field("margin", &self.margin)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::Plan;

    #[test]
    fn a_plan_formatted_for_debugging_shows_no_password() {
        let text = "repositories:\n  main:\n    url: s3://key:repo-secret@bucket/prefix\n    password_file: /pw\n\
            classes:\n  c:\n    rpo: 1h\n    rto: 1h\n\
            sources:\n  - name: cache\n    class: c\n    url: redis://default:source-secret@cache:6379\n    schedule: \"@hourly\"\n\
            \x20   standby:\n      target: redis://default:standby-secret@spare:6379\n\
            \x20   verify:\n      http:\n        - url: https://check:http-secret@app/health\n\
            \x20     queries:\n        - sql: SELECT 1\n          url: postgres://app:query-secret@db\n\
            \x20 - name: db\n    class: c\n    url: pgbase://postgres:pg-secret@db\n    schedule: \"@hourly\"\n\
            \x20   standby:\n      target: /srv/standby\n      server: postgres://postgres:server-secret@spare:5432\n\
            notifications:\n  - url: https://hook:hook-secret@example.org/x\n\
            drills:\n  silence:\n    alertmanager: http://am:am-secret@alertmanager:9093\n    matchers: []\n";
        let plan: Plan = serde_norway::from_str(text).unwrap();
        let shown = format!("{plan:?}");
        let secrets = ["repo", "source", "standby", "pg", "server", "hook", "http", "query", "am"].map(|s| format!("{s}-secret"));
        for secret in &secrets {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("redis://default:***@cache:6379") && shown.contains("\"/srv/standby\""), "{shown}");
        // The daemon's standby job for the Redis standby names it in its restore spec.
        let standby = plan.sources[0].standby.as_ref().unwrap();
        let work = format!("{:?}", crate::standby::restore_spec(standby, crate::standby::StandbyKind::Redis));
        assert!(!work.contains("standby-secret") && work.contains("redis://default:***@spare:6379"), "{work}");
    }
}
