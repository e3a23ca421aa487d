//! [`SecretUrl`]: a URL of the plan and of the job protocol that Debug and
//! Display show redacted, and [`SecretString`]: a password they do not show.
//!
//! This module depends on no other module of the controller: the plan and
//! the job protocol's types both hold its types.

use std::fmt;
use std::path::Path;

/// A URL of the plan or of a job that may carry credentials (a service's
/// password in its user part, a webhook's token in its query), or a path.
/// Debug and Display
/// show it redacted ([`redact`]), so no `{:?}` or `{}` of a plan, a part of
/// it or a message naming the URL shows a secret; [`SecretUrl::expose`]
/// gives it whole to the code that connects with it. Read and written as the
/// plain string: plan files and the BackupPlan CRD's schema are those of a string.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL with its credentials: to connect with it, or for a child
    /// process's standard input; never for a message, a log line or a
    /// command line.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The scheme (`postgres` of `postgres://…`), none for a path: the kind
    /// of service, which holds no secret.
    pub fn scheme(&self) -> Option<&str> {
        self.0.split_once("://").map(|(scheme, _)| scheme)
    }

    /// Whether the URL starts with `prefix`, a scheme or a kind
    /// (`command:`), which holds no secret.
    pub fn starts_with(&self, prefix: &str) -> bool {
        self.0.starts_with(prefix)
    }

    /// Where a webhook goes, for messages and the audit trail:
    /// `scheme://host:port/…`. A receiver's path may be its token (Slack,
    /// Teams, Discord), which no redaction of names could know.
    pub fn origin(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else { return redact(&self.0) };
        // The user part ends at the last `@`: a raw password may hold a `/`.
        let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let more = if rest.len() > host.len() && rest[host.len()..] != *"/" { "/…" } else { "" };
        format!("{scheme}://{host}{more}")
    }

    /// A path (no scheme, so no credentials) as a path; none for a URL.
    pub fn as_path(&self) -> Option<&Path> {
        self.scheme().is_none().then(|| Path::new(&self.0))
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> SecretUrl {
        SecretUrl(url.into())
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> SecretUrl {
        SecretUrl(url)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact(&self.0), f)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

// By hand: a string's schema, inlined as a string's is, so the CRD does not change.
impl schemars::JsonSchema for SecretUrl {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        <String as schemars::JsonSchema>::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <String as schemars::JsonSchema>::json_schema(generator)
    }
}

/// A password in a job's spec: serialized as the plain string, never
/// shown by Debug; [`SecretString::expose`] gives it to the code that opens
/// the repository with it.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// The password itself: to open a repository with, never for a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretString {
    fn from(secret: String) -> SecretString {
        SecretString(secret)
    }
}

/// Zeroed on drop, as the engine's `Password` is, so a job spec's password
/// does not linger in freed memory.
impl Drop for SecretString {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl zeroize::ZeroizeOnDrop for SecretString {}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

pub use tresor_storage::redact;

#[cfg(test)]
mod tests {
    use super::SecretUrl;
    use crate::plan::Plan;

    /// A plan with a credential in every kind of URL it has, each secret named `KIND-secret`.
    const PLAN: &str = "repositories:\n  main:\n    url: s3://key:repo-secret@bucket/prefix\n    password_file: /pw\n\
        classes:\n  c:\n    rpo: 1h\n    rto: 1h\n\
        sources:\n  - name: cache\n    class: c\n    url: redis://:source-secret@cache:6379\n    schedule: \"@hourly\"\n\
        \x20   standby:\n      target: redis://default:standby-secret@spare:6379\n\
        \x20   verify:\n      http:\n        - url: https://check:http-secret@app/health\n\
        \x20     queries:\n        - sql: SELECT 1\n          url: postgres://app:query-secret@db\n\
        \x20 - name: db\n    class: c\n    url: pgbase://postgres:pg-secret@db\n    schedule: \"@hourly\"\n\
        \x20   standby:\n      target: /srv/standby\n      server: postgres://postgres:server-secret@spare:5432\n\
        notifications:\n  - url: https://hooks.example.org/x?channel=ops&token=hook-secret\n\
        drills:\n  silence:\n    alertmanager: http://am:am-secret@alertmanager:9093\n    matchers: []\n\
        applications:\n  - name: shop\n    sources:\n      - source: db\n        target: postgres://postgres:app-secret@new:5432\n";

    const SECRETS: [&str; 10] = ["repo", "source", "standby", "http", "query", "pg", "server", "hook", "am", "app"];

    #[test]
    fn a_plan_formatted_for_debugging_shows_no_password() {
        let plan = Plan::parse(PLAN, std::path::Path::new("plan.yaml")).unwrap();
        let shown = format!("{plan:?}");
        for secret in SECRETS.map(|s| format!("{s}-secret")) {
            assert!(!shown.contains(&secret), "{secret} in {shown}");
        }
        assert!(shown.contains("url: \"redis://:***@cache:6379\"") && shown.contains("target: \"/srv/standby\""), "{shown}");
        assert!(shown.contains("url: \"https://hooks.example.org/x?channel=ops&token=***\""), "{shown}");
        // The daemon's standby job for the Redis standby names it in its restore spec.
        let standby = plan.sources[0].standby.as_ref().unwrap();
        let work = format!("{:?}", crate::standby::restore_spec(standby, crate::standby::StandbyKind::Redis));
        assert!(!work.contains("standby-secret") && work.contains("redis://default:***@spare:6379"), "{work}");
        // And every job names its repository in its spec.
        let repo = format!("{:?}", crate::child::repository_spec(&plan.repositories["main"]));
        assert!(!repo.contains("repo-secret") && repo.contains("s3://key:***@bucket/prefix"), "{repo}");
    }

    #[test]
    fn each_url_of_a_plan_displays_redacted_and_exposes_whole() {
        let plan = Plan::parse(PLAN, std::path::Path::new("plan.yaml")).unwrap();
        let (cache, db) = (&plan.sources[0], &plan.sources[1]);
        let urls = [
            &plan.repositories["main"].url,
            &cache.url,
            &cache.standby.as_ref().unwrap().target,
            &cache.verify.http[0].url,
            cache.verify.queries[0].url.as_ref().unwrap(),
            &db.url,
            db.standby.as_ref().unwrap().server.as_ref().unwrap(),
            &plan.notifications[0].url,
            &plan.drills.silence.as_ref().unwrap().alertmanager,
            plan.applications[0].sources[0].target.as_ref().unwrap(),
        ];
        for (url, secret) in urls.iter().zip(SECRETS) {
            let secret = format!("{secret}-secret");
            assert!(url.expose().contains(&secret), "{secret} is what connects");
            for shown in [url.to_string(), format!("{url:?}"), format!("{url:#?}"), format!("{url:>80}")] {
                assert!(!shown.contains(&secret), "{secret} in {shown}");
            }
        }
        assert_eq!(plan.repositories["main"].url.to_string(), "s3://key:***@bucket/prefix");
        assert_eq!(format!("{:?}", db.standby.as_ref().unwrap().server.as_ref().unwrap()), "\"postgres://postgres:***@spare:5432\"");
    }

    #[test]
    fn a_webhooks_origin_shows_neither_its_path_nor_its_user() {
        let origin = |url: &str| SecretUrl::from(url).origin();
        assert_eq!(origin("https://hooks.slack.com/services/T0/B0/XXXX-secret"), "https://hooks.slack.com/…");
        assert_eq!(origin("http://u:pw-secret@127.0.0.1:9093/api/v2/alerts?token=t-secret"), "http://127.0.0.1:9093/…");
        assert_eq!(origin("https://alerts.example.com/"), "https://alerts.example.com");
        assert_eq!(origin("https://u:p/w-secret@alerts.example.com/hook"), "https://alerts.example.com/…");
        assert_eq!(origin("https://alerts.example.com?code=c-secret"), "https://alerts.example.com/…");
    }

    #[test]
    fn credentials_in_the_user_part_and_the_query_are_hidden_the_rest_shown() {
        let cases = [
            (
                "postgres://app:pa?ss@db:5432/shop?sslmode=require&password=x",
                "postgres://app:***@db:5432/shop?sslmode=require&password=***",
            ),
            ("redis://:pw@cache:6379", "redis://:***@cache:6379"),
            (
                "https://h.example/hook?X-Amz-Signature=s&X-Amz-Credential=c&api-key=k&sig=g",
                "https://h.example/hook?X-Amz-Signature=***&X-Amz-Credential=***&api-key=***&sig=***",
            ),
            ("https://h.example?access_token=t@x", "https://h.example?access_token=***"),
            ("pvc://ns/claim?secret=repo-settings&image=tresor", "pvc://ns/claim?secret=repo-settings&image=tresor"),
            ("etcd://10.0.0.1:2379?cacert=/ca.pem&key=/client.key", "etcd://10.0.0.1:2379?cacert=/ca.pem&key=/client.key"),
            ("postgres://app@db/shop", "postgres://app@db/shop"),
            ("/srv/backup", "/srv/backup"),
            ("command:pg_dumpall", "command:pg_dumpall"),
        ];
        for (url, shown) in cases {
            assert_eq!(SecretUrl::from(url).to_string(), shown);
            assert_eq!(SecretUrl::from(url).expose(), url);
        }
    }

    #[test]
    fn urls_read_and_write_as_the_plain_string() {
        let text = "\"postgres://app:s3cret@db:5432/shop?password=x\"";
        let url: SecretUrl = serde_json::from_str(text).unwrap();
        assert_eq!(url.expose(), "postgres://app:s3cret@db:5432/shop?password=x");
        assert_eq!(serde_json::to_string(&url).unwrap(), text);
        let yaml: SecretUrl = serde_norway::from_str("redis://:pw@cache:6379").unwrap();
        assert_eq!(serde_norway::to_string(&yaml).unwrap(), "redis://:pw@cache:6379\n");
        let plan = Plan::parse(PLAN, std::path::Path::new("plan.yaml")).unwrap();
        assert_eq!(plan.notifications[0].url.expose(), "https://hooks.example.org/x?channel=ops&token=hook-secret");
        assert_eq!(plan.sources[1].standby.as_ref().unwrap().directory(), std::path::Path::new("/srv/standby"));
        assert_eq!(plan.sources[0].standby.as_ref().unwrap().directory(), std::path::Path::new(""), "a Redis standby has none");
    }
}
