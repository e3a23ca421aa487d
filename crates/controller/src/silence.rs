//! Alertmanager silences around drills: a drill restores into scratch
//! servers and may set off alerts (a failing check, a slow restore, a
//! scratch server's exporter), so it silences the alerts the plan names
//! (`drills.silence`) for its expected time plus a margin, and expires the
//! silence when it ends, passed or not (API v2: `POST /api/v2/silences`,
//! `DELETE /api/v2/silence/{id}`). An Alertmanager that cannot be reached
//! does not stop the drill; its protocol says that its alerts were not
//! silenced.
//!
//! [`Silence::begin`] gives a guard: [`Silence::end`] expires it and says
//! what happened for the protocol; dropped without, it expires the silence
//! in the background (best effort, on the runtime it was made on).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::model::{DrillReport, DrillSilence};
use crate::plan::{Plan, SecretUrl, SilenceSettings, SourceSpec};

/// The margin added to a drill's expected time when the plan gives none.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(600);

/// One matcher in Alertmanager's API form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Matcher {
    pub name: String,
    pub value: String,
    pub is_regex: bool,
    pub is_equal: bool,
}

/// Parse `name=value`, `name!=value`, `name=~regex` or `name!~regex`
/// (the value optionally in double quotes), with `{source}` and `{class}`
/// standing for the drilled source's.
pub fn matcher(text: &str, source: &str, class: &str) -> Result<Matcher, String> {
    let at = text
        .find(['=', '!'])
        .ok_or_else(|| format!("silence matcher {text:?}: expected name=value, name!=value, name=~regex or name!~regex"))?;
    let (name, rest) = text.split_at(at);
    let (is_equal, is_regex, value) = if let Some(v) = rest.strip_prefix("=~") {
        (true, true, v)
    } else if let Some(v) = rest.strip_prefix("!~") {
        (false, true, v)
    } else if let Some(v) = rest.strip_prefix("!=") {
        (false, false, v)
    } else if let Some(v) = rest.strip_prefix('=') {
        (true, false, v)
    } else {
        return Err(format!("silence matcher {text:?}: expected name=value, name!=value, name=~regex or name!~regex"));
    };
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("silence matcher {text:?}: {name:?} is not a label name"));
    }
    let value = value.trim();
    let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
    let value = value.replace("{source}", source).replace("{class}", class);
    Ok(Matcher { name: name.into(), value, is_regex, is_equal })
}

/// How long a drill of `source` is expected to take: the longest of its
/// passed drills in `history`, else the class's RTO target.
pub fn expected(history: &[DrillReport], source: &str, rto_target: Duration) -> Duration {
    history
        .iter()
        .filter(|d| d.source == source && d.passed)
        .map(|d| Duration::from_secs_f64(d.rto_seconds.max(0.0)))
        .max()
        .unwrap_or(rto_target)
}

/// A silence made for a drill, until [`Silence::end`].
pub struct Silence {
    record: DrillSilence,
    live: Option<Live>,
}

struct Live {
    client: reqwest::Client,
    /// Messages name it: redacted.
    base: SecretUrl,
    token: Option<String>,
    id: String,
}

impl Live {
    async fn expire(&self) -> Result<(), String> {
        let mut req = self.client.delete(format!("{}/api/v2/silence/{}", self.base.expose(), self.id)).timeout(Duration::from_secs(10));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("Alertmanager at {} answered {} to expiring silence {}", self.base, r.status(), self.id)),
            Err(e) => Err(format!("cannot expire silence {} at {}: {}", self.id, self.base, without_url(&e))),
        }
    }
}

/// A reqwest error's words without its URL (which the message names
/// already, redacted: the error's would show a password or token).
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    let mut words = e.to_string();
    if let Some(url) = e.url() {
        words = words.replace(&format!(" ({url})"), "").replace(url.as_str(), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        words = format!("{words}: {s}");
        source = s.source();
    }
    words
}

impl Silence {
    /// Silence the plan's matchers for `expected` plus the margin, from now.
    /// Never fails: what went wrong is in the record.
    pub async fn begin(settings: &SilenceSettings, source: &str, class: &str, expected: Duration, comment: &str) -> Silence {
        let mut record = DrillSilence { id: None, matchers: settings.matchers.clone(), until: None, expired: false, error: None };
        match Self::create(settings, source, class, expected, comment).await {
            Ok((live, until)) => {
                record.id = Some(live.id.clone());
                record.until = Some(until);
                Silence { record, live: Some(live) }
            }
            Err(e) => {
                record.error = Some(e);
                Silence { record, live: None }
            }
        }
    }

    async fn create(
        s: &SilenceSettings,
        source: &str,
        class: &str,
        expected: Duration,
        comment: &str,
    ) -> Result<(Live, DateTime<Utc>), String> {
        let matchers = s.matchers.iter().map(|m| matcher(m, source, class)).collect::<Result<Vec<_>, _>>()?;
        let token = match &s.token_file {
            Some(f) => Some(std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?.trim().to_string()),
            None => None,
        };
        let now = Utc::now();
        let until = now + (expected + s.margin.map_or(DEFAULT_MARGIN, |m| m.0));
        let body = json!({"matchers": matchers, "startsAt": now, "endsAt": until, "createdBy": "tresor", "comment": comment});
        let base = SecretUrl::from(s.alertmanager.expose().trim_end_matches('/'));
        let client = reqwest::Client::new();
        let mut req = client
            .post(format!("{}/api/v2/silences", base.expose()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(Duration::from_secs(10));
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        let answer = req.send().await.map_err(|e| format!("cannot reach Alertmanager at {base}: {}", without_url(&e)))?;
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("Alertmanager at {base} refused the silence ({status}): {}", text.trim()));
        }
        let id = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["silenceID"].as_str().map(String::from));
        let id = id.ok_or_else(|| format!("Alertmanager at {base} answered without a silence id: {}", text.trim()))?;
        Ok((Live { client, base, token, id }, until))
    }

    /// The silence's id, if one was made.
    pub fn id(&self) -> Option<&str> {
        self.record.id.as_deref()
    }

    /// Expire the silence (the drill ended); the protocol's record of it.
    pub async fn end(mut self) -> DrillSilence {
        let mut record = self.record.clone();
        if let Some(live) = self.live.take() {
            match live.expire().await {
                Ok(()) => record.expired = true,
                Err(e) => record.error = Some(e),
            }
        }
        record
    }
}

impl Drop for Silence {
    fn drop(&mut self) {
        if let (Some(live), Ok(rt)) = (self.live.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                if let Err(e) = live.expire().await {
                    tracing::warn!("{e}");
                }
            });
        }
    }
}

/// The silence for a drill of `source`, when the plan asks for one: for
/// its expected time (from `history`, else its class's RTO) plus the margin.
pub async fn for_drill(plan: &Plan, source: &SourceSpec, history: &[DrillReport]) -> Option<Silence> {
    let comment = format!("tresor: restore drill of {} ({})", source.name, source.class);
    for_name(plan, &source.name, &source.class, history, &comment).await
}

/// The silence for a drill of an application, as for a source's: its name
/// stands for `{source}`, its strictest class (the drill's) for `{class}`.
pub async fn for_app(plan: &Plan, app: &str, class: &str, history: &[DrillReport]) -> Option<Silence> {
    for_name(plan, app, class, history, &format!("tresor: restore drill of application {app}")).await
}

async fn for_name(plan: &Plan, name: &str, class: &str, history: &[DrillReport], comment: &str) -> Option<Silence> {
    let settings = plan.drills.silence.as_ref()?;
    let rto = plan.classes.get(class).map_or(Duration::ZERO, |c| c.rto.0);
    Some(Silence::begin(settings, name, class, expected(history, name, rto), comment).await)
}

/// What the drill's protocol says of its silence, in one line.
pub fn describe(s: &DrillSilence) -> String {
    match (&s.id, &s.error) {
        (Some(id), None) => {
            format!("alerts matching {} silenced by Alertmanager silence {id}, expired when the drill ended", s.matchers.join(", "))
        }
        (Some(id), Some(e)) => format!("alerts matching {} silenced by Alertmanager silence {id}; {e}", s.matchers.join(", ")),
        (None, e) => format!("its alerts were not silenced: {}", e.as_deref().unwrap_or("no silence was made")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_read_as_alertmanager_writes_them() {
        let m = |t: &str| matcher(t, "db", "critical");
        assert_eq!(m("source={source}").unwrap(), Matcher { name: "source".into(), value: "db".into(), is_regex: false, is_equal: true });
        assert_eq!(
            m(r#"alertname=~"Backup.*""#).unwrap(),
            Matcher { name: "alertname".into(), value: "Backup.*".into(), is_regex: true, is_equal: true }
        );
        assert_eq!(
            m("class!={class}").unwrap(),
            Matcher { name: "class".into(), value: "critical".into(), is_regex: false, is_equal: false }
        );
        assert!(m("severity!~page|info").unwrap().is_regex);
        assert_eq!(
            m("alertname"),
            Err("silence matcher \"alertname\": expected name=value, name!=value, name=~regex or name!~regex".into())
        );
        assert_eq!(m("a b=c"), Err("silence matcher \"a b=c\": \"a b\" is not a label name".into()));
    }

    #[test]
    fn a_drill_is_expected_to_take_its_longest_passed_drill_else_the_rto() {
        let d = |source: &str, rto: f64, passed: bool| {
            let r: DrillReport = serde_json::from_value(json!({
                "test_id": "x", "source": source, "class": "c", "kind": "files", "started": "2026-11-30T10:00:00Z",
                "snapshot": null, "snapshot_time": null, "rto_seconds": rto, "rpo_seconds": null, "rto_target": 0,
                "rpo_target": 0, "bytes": 0, "passed": passed, "checks": [], "reasons": [], "owner": null
            }))
            .unwrap();
            r
        };
        let history = [d("db", 120.0, true), d("db", 900.0, false), d("db", 300.5, true), d("other", 5000.0, true)];
        assert_eq!(expected(&history, "db", Duration::from_secs(3600)), Duration::from_secs_f64(300.5));
        assert_eq!(expected(&history, "new", Duration::from_secs(3600)), Duration::from_secs(3600));
    }

    #[test]
    fn an_alertmanager_out_of_reach_is_named_without_its_password() {
        // Port 1: nothing listens there, so the connection is refused at once.
        let settings: SilenceSettings = serde_norway::from_str("alertmanager: http://am:am-secret@127.0.0.1:1/\nmatchers: []\n").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let silence = rt.block_on(Silence::begin(&settings, "db", "c", Duration::from_secs(60), "drill"));
        let error = silence.record.error.clone().unwrap();
        assert!(error.starts_with("cannot reach Alertmanager at http://am:***@127.0.0.1:1: "), "{error}");
        assert!(!error.contains("am-secret"), "{error}");
    }
}
