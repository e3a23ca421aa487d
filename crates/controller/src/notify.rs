//! Webhooks: a source whose backups start failing, and one that recovers,
//! is announced to every configured receiver, as generic JSON or as an
//! Alertmanager alert (which starts on the failure and ends on the
//! recovery, and is sent again every minute in between, as Alertmanager
//! resolves an alert it no longer hears of). Deliveries are retried with
//! doubling back-off; each is written to the audit trail, but of the
//! re-sends only one that fails after the last arrived, or arrives after
//! the last failed.
//!
//! Each (source, receiver) pair has its own queue, delivered in order: a
//! failure still being retried when its recovery comes goes out first,
//! and no re-send follows the recovery. The other order would re-open a
//! resolved alert in Alertmanager.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use tokio::sync::mpsc;

use crate::clock::Clock;
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

/// What happens once a delivery arrived or was given up (the audit trail),
/// and once a firing alert's re-sends stop or start getting through.
pub type Done = Arc<dyn Fn(&Webhook, &Event, Result<(), String>) + Send + Sync>;

/// How often a firing Alertmanager alert is sent again. Alertmanager
/// resolves an alert it has not heard of for its `resolve_timeout` (5 m by
/// default) unless it carries an `endsAt`, which a firing one cannot; so
/// clients re-send firing alerts, and Prometheus does it every minute.
pub const RESEND_EVERY: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// The daemon's say over re-sends: its clock (which tests move), how often
/// a queue looks whether one is due, and whether a source's alert still
/// fires for a receiver (a receiver or source gone from the plan has none).
pub struct Resend {
    pub clock: Clock,
    pub tick: Duration,
    pub firing: StillFiring,
}

/// What becomes of a source's firing alert for a receiver (its URL).
pub type StillFiring = Box<dyn Fn(&str, &SecretUrl) -> Still + Send + Sync>;

/// A firing alert's fate at a re-send.
pub enum Still {
    /// Sent again, to the receiver as the plan has it now (its token file
    /// and retries may have changed since the failure).
    Fires(Webhook),
    /// Not now: the daemon is not ready, or does not lead.
    Held,
    /// Never again: its source or receiver left the plan, or it recovered.
    Over,
}

enum Item {
    /// An event, delivered with retries.
    Deliver(Webhook, Event, Done),
    /// A failure that fires already (as the job history says after a
    /// restart): re-sent from now on, the first time at once.
    Firing(Webhook, Event, Done),
}

/// One (source, receiver) pair's deliveries, in the order of their events.
type Queue = mpsc::UnboundedSender<Item>;

/// The deliveries of every source to every receiver, one ordered queue each.
pub struct Notifier {
    client: reqwest::Client,
    queues: Mutex<HashMap<(String, SecretUrl), Queue>>,
    /// Set when the daemon starts; no alert is re-sent before.
    resend: Arc<OnceLock<Resend>>,
}

/// The notifier the daemon shares.
pub fn client() -> Notifier {
    Notifier { client: reqwest::Client::new(), queues: Mutex::default(), resend: Arc::default() }
}

impl Notifier {
    /// Queue `event` for `hook` behind the source's earlier events for the
    /// same receiver; `done` learns how it went. Needs a tokio runtime.
    pub fn send(&self, hook: Webhook, event: Event, done: impl Fn(&Webhook, &Event, Result<(), String>) + Send + Sync + 'static) {
        let key = (event.source.clone(), hook.url.clone());
        self.queue(key, Item::Deliver(hook, event, Arc::new(done)));
    }

    /// From now on firing Alertmanager alerts are re-sent as `resend` says,
    /// starting with `firing`, the failures the job history says still
    /// fire (sent again at once: the daemon may have been down for longer
    /// than Alertmanager waits). Once, as the daemon starts.
    pub fn resume(&self, resend: Resend, firing: Vec<(Webhook, Event)>, done: Done) {
        let _ = self.resend.set(resend);
        for (hook, event) in firing.into_iter().filter(|(hook, event)| fires(hook, event)) {
            let key = (event.source.clone(), hook.url.clone());
            self.queue(key, Item::Firing(hook, event, done.clone()));
        }
    }

    fn queue(&self, key: (String, SecretUrl), item: Item) {
        let mut queues = self.queues.lock().expect("not poisoned");
        let queue = queues.entry(key).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel::<Item>();
            tokio::spawn(work(self.client.clone(), rx, self.resend.clone()));
            tx
        });
        // The worker only ends when its sender is dropped, which is never
        // while the map holds it.
        let _ = queue.send(item);
    }
}

/// Whether `event` starts an alert that fires until its recovery, and so
/// is re-sent: generic JSON receivers are told once, as their format says.
fn fires(hook: &Webhook, event: &Event) -> bool {
    hook.format == WebhookFormat::Alertmanager && event.change == Change::Failure
}

/// The alert a queue keeps sending until its recovery comes through it.
struct Firing {
    hook: Webhook,
    event: Event,
    done: Done,
    due: DateTime<Utc>,
    /// Whether its last sending arrived: the audit trail hears of a change
    /// only, not of each re-send.
    arrived: bool,
}

/// One queue's worker: each item in turn, and between them, while an
/// alert fires, its re-sends. An item waiting goes first, so no re-send
/// can follow the recovery queued behind it.
async fn work(client: reqwest::Client, mut rx: mpsc::UnboundedReceiver<Item>, resend: Arc<OnceLock<Resend>>) {
    let mut firing: Option<Firing> = None;
    loop {
        let item = match (firing.as_mut(), resend.get()) {
            (Some(f), Some(r)) => tokio::select! {
                biased;
                item = rx.recv() => item,
                () = tokio::time::sleep(r.tick) => {
                    if !again(&client, r, f).await {
                        firing = None;
                    }
                    continue;
                }
            },
            _ => rx.recv().await,
        };
        let now = resend.get().map(|r| r.clock.now());
        firing = match item {
            None => return,
            Some(Item::Deliver(hook, event, done)) => {
                let result = deliver(&client, &hook, &event).await;
                done(&hook, &event, result.clone());
                let due = now.map(|now| now + RESEND_EVERY).filter(|_| fires(&hook, &event));
                due.map(|due| Firing { hook, event, done, due, arrived: result.is_ok() })
            }
            Some(Item::Firing(hook, event, done)) => now.map(|due| Firing { hook, event, done, due, arrived: true }),
        };
    }
}

/// Send a firing alert again if it is due and still fires: once, as the
/// next re-send comes soon, and a retry would hold up a recovery behind it.
/// False once it never will again, so its queue stops waking for it.
async fn again(client: &reqwest::Client, r: &Resend, f: &mut Firing) -> bool {
    let now = r.clock.now();
    if now < f.due {
        return true;
    }
    match (r.firing)(&f.event.source, &f.hook.url) {
        Still::Fires(hook) => f.hook = hook,
        Still::Held => return true,
        Still::Over => return false,
    }
    f.due = now + RESEND_EVERY;
    let result = post(client, &f.hook, &f.event).await;
    if result.is_ok() != f.arrived {
        f.arrived = result.is_ok();
        (f.done)(&f.hook, &f.event, result.map_err(|e| format!("re-sending the firing alert: {e}")));
    }
    true
}

/// Deliver one event to one receiver, retrying; the last error if it never arrives.
async fn deliver(client: &reqwest::Client, hook: &Webhook, e: &Event) -> Result<(), String> {
    let mut wait = Duration::from_secs(1);
    let mut last = String::new();
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        match post(client, hook, e).await {
            Ok(()) => return Ok(()),
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// One attempt to deliver one event.
async fn post(client: &reqwest::Client, hook: &Webhook, e: &Event) -> Result<(), String> {
    let payload = serde_json::to_vec(&body(hook, e)).expect("JSON serializes");
    let token = hook.token_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).map(|t| t.trim().to_string());
    let mut req = client.post(hook.url.expose()).header("content-type", "application/json").body(payload).timeout(Duration::from_secs(10));
    if let Some(t) = &token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("{} answered {}", hook.url.origin(), r.status())),
        Err(err) => Err(format!("{}: {}", hook.url.origin(), crate::silence::without_url(&err))),
    }
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
