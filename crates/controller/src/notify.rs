//! Webhooks: a source whose backups start failing, and one that recovers,
//! is announced to every configured receiver, as generic JSON or as an
//! Alertmanager alert (which starts on the failure and ends on the
//! recovery). Deliveries are retried with doubling back-off; one that
//! never arrives is written to the audit trail.
//!
//! Each (source, receiver) pair has its own queue, delivered in order: a
//! failure still being retried when its recovery comes goes out first.
//! The other order would re-open a resolved alert in Alertmanager.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use tokio::sync::mpsc;

use crate::plan::{SecretUrl, Webhook, WebhookFormat};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Failure,
    Recovery,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub change: Change,
    pub source: String,
    pub class: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub time: DateTime<Utc>,
    /// When the failure began (for a recovery: the alert's start).
    pub since: DateTime<Utc>,
}

fn body(hook: &Webhook, e: &Event) -> serde_json::Value {
    let change = match e.change {
        Change::Failure => "failure",
        Change::Recovery => "recovery",
    };
    match hook.format {
        WebhookFormat::Json => json!({
            "event": change, "source": e.source, "class": e.class, "reason": e.reason, "message": e.message,
            "time": e.time, "failing_since": e.since,
        }),
        WebhookFormat::Alertmanager => {
            // The labels are the alert's identity: the recovery must carry exactly the
            // failure's, so the reason (which a recovery has not) is an annotation.
            let mut alert = json!({
                "labels": {"alertname": "TresorBackupFailed", "source": e.source, "class": e.class, "severity": "critical"},
                "annotations": {"summary": format!("Backups of {} ({}) fail", e.source, e.class), "description": e.message.clone().unwrap_or_default(),
                                "reason": e.reason.clone().unwrap_or_default()},
                "startsAt": e.since,
            });
            if e.change == Change::Recovery {
                alert["endsAt"] = json!(e.time);
            }
            json!([alert])
        }
    }
}

/// What happens once a delivery arrived or was given up.
type Done = Box<dyn FnOnce(&Webhook, &Event, Result<(), String>) + Send>;
/// One (source, receiver) pair's deliveries, in the order of their events.
type Queue = mpsc::UnboundedSender<(Webhook, Event, Done)>;

/// The deliveries of every source to every receiver, one ordered queue each.
pub struct Notifier {
    client: reqwest::Client,
    queues: Mutex<HashMap<(String, SecretUrl), Queue>>,
}

/// The notifier the daemon shares.
pub fn client() -> Notifier {
    Notifier { client: reqwest::Client::new(), queues: Mutex::default() }
}

impl Notifier {
    /// Queue `event` for `hook` behind the source's earlier events for the
    /// same receiver; `done` learns how it went. Needs a tokio runtime.
    pub fn send(&self, hook: Webhook, event: Event, done: impl FnOnce(&Webhook, &Event, Result<(), String>) + Send + 'static) {
        let key = (event.source.clone(), hook.url.clone());
        let mut queues = self.queues.lock().expect("not poisoned");
        let queue = queues.entry(key).or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<(Webhook, Event, Done)>();
            let client = self.client.clone();
            tokio::spawn(async move {
                while let Some((hook, event, done)) = rx.recv().await {
                    let result = deliver(&client, &hook, &event).await;
                    done(&hook, &event, result);
                }
            });
            tx
        });
        // The worker only ends when its sender is dropped, which is never
        // while the map holds it.
        let _ = queue.send((hook, event, Box::new(done)));
    }
}

/// Deliver one event to one receiver, retrying; the last error if it never arrives.
async fn deliver(client: &reqwest::Client, hook: &Webhook, e: &Event) -> Result<(), String> {
    let payload = serde_json::to_vec(&body(hook, e)).expect("JSON serializes");
    let token = hook.token_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).map(|t| t.trim().to_string());
    let mut wait = Duration::from_secs(1);
    let mut last = String::new();
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        let mut req = client
            .post(hook.url.expose())
            .header("content-type", "application/json")
            .body(payload.clone())
            .timeout(Duration::from_secs(10));
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("{} answered {}", hook.url.origin(), r.status()),
            Err(err) => last = format!("{}: {}", hook.url.origin(), crate::silence::without_url(&err)),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_that_fails_names_the_receiver_without_its_token() {
        // Port 1: nothing listens there, so the connection is refused at once.
        let hook: Webhook = serde_norway::from_str("url: http://127.0.0.1:1/hook?channel=ops&token=hook-secret\nretries: 0\n").unwrap();
        let now = Utc::now();
        let event =
            Event { change: Change::Failure, source: "db".into(), class: "c".into(), reason: None, message: None, time: now, since: now };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let err = rt.block_on(deliver(&reqwest::Client::new(), &hook, &event)).unwrap_err();
        assert!(err.starts_with("http://127.0.0.1:1/…: "), "{err}");
        assert!(!err.contains("hook-secret"), "{err}");
    }
}
