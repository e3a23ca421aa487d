//! A failing source's Alertmanager alert is sent again every minute by the
//! daemon's clock until the recovery, after a restart too, as Alertmanager
//! resolves an alert it no longer hears of; a generic JSON receiver is told
//! once. The audit trail hears of each delivery, but of the re-sends only
//! when they stop or start getting through.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

use super::*;

/// A webhook receiver on its own thread: what it took (answering 200)
/// while up, and how many it refused (503) while down.
#[derive(Clone)]
struct Receiver {
    port: u16,
    up: Arc<AtomicBool>,
    taken: Arc<Mutex<Vec<Value>>>,
    refused: Arc<Mutex<usize>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        let r = Receiver {
            port: listener.local_addr().expect("its address").port(),
            up: Arc::new(AtomicBool::new(true)),
            taken: Arc::default(),
            refused: Arc::default(),
        };
        let serving = r.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let body = read_body(&mut BufReader::new(&mut conn));
                let up = serving.up.load(Ordering::SeqCst);
                if up {
                    serving.taken.lock().expect("not poisoned").push(serde_json::from_slice(&body).expect("a JSON body"));
                } else {
                    *serving.refused.lock().expect("not poisoned") += 1;
                }
                let status = if up { "200 OK" } else { "503 Service Unavailable" };
                let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        r
    }

    fn taken(&self) -> Vec<Value> {
        self.taken.lock().expect("not poisoned").clone()
    }

    fn refused(&self) -> usize {
        *self.refused.lock().expect("not poisoned")
    }
}

/// One request's body, after its headers.
fn read_body(conn: &mut impl BufRead) -> Vec<u8> {
    let mut length = 0;
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).expect("a request") == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("a length");
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).expect("the body");
    body
}

fn plan(alertmanager: u16, json: u16) -> String {
    format!(
        "{PLAN}notifications:\n  - {{url: 'http://127.0.0.1:{alertmanager}/api/v2/alerts', format: alertmanager, retries: 0}}\n\
         \x20 - {{url: 'http://127.0.0.1:{json}/hook', retries: 0}}\n"
    )
}

/// The daemon's `notify` entries in the audit trail, in the order written: target, result, detail.
fn notified(d: &Started) -> Vec<(String, String, String)> {
    let log = d.shared.state.audit_log(100).expect("the audit trail");
    log.into_iter().rev().filter(|e| e.action == "notify").map(|e| (e.target, e.result, e.detail)).collect()
}

#[tokio::test]
async fn a_firing_alert_is_sent_again_every_minute_until_the_recovery_and_after_a_restart() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (am, json) = (Receiver::start(), Receiver::start());
    let wrong = || JobResult::failed(Reason::WrongPassword, false, "wrong password");
    let script = BTreeMap::from([(("locked".to_string(), 1), wrong())]);
    let d = started(dir.path(), &plan(am.port, json.port), Scripted { script, ..Scripted::default() });
    until("the failure's alert", || am.taken().len() == 1 && json.taken().len() == 1).await;
    let firing = am.taken()[0].clone();
    assert_eq!(firing[0]["startsAt"], "2026-11-21T10:00:00Z");
    assert_eq!((firing[0]["labels"]["source"].as_str(), firing[0].get("endsAt")), (Some("locked"), None));

    set(&d.clock_file, "2026-11-21T10:01:00Z");
    until("the first re-send", || am.taken().len() == 2).await;
    assert_eq!(am.taken()[1], firing, "the same alert, its start kept");

    // A re-send that fails after one arrived is audited, once; so is the
    // next that arrives. Those that arrive in a row are not.
    am.up.store(false, Ordering::SeqCst);
    set(&d.clock_file, "2026-11-21T10:02:00Z");
    until("a refused re-send", || am.refused() == 1).await;
    set(&d.clock_file, "2026-11-21T10:03:00Z");
    until("another refused re-send", || am.refused() == 2).await;
    am.up.store(true, Ordering::SeqCst);
    set(&d.clock_file, "2026-11-21T10:04:00Z");
    until("the re-send through again", || am.taken().len() == 3).await;
    let am_origin = format!("http://127.0.0.1:{}/…", am.port);
    let to = |what: &str, port: u16| format!("{what} of locked to http://127.0.0.1:{port}/…");
    let refused = format!("re-sending the firing alert: {am_origin} answered 503 Service Unavailable");
    let firing_trail = [
        (to("failure", am.port), "succeeded".to_string(), String::new()),
        (to("failure", json.port), "succeeded".into(), String::new()),
        (to("failure", am.port), "failed".into(), refused),
        (to("failure", am.port), "succeeded".into(), String::new()),
    ];
    until("the re-sends audited", || notified(&d).len() == 4).await;
    let mut trail = notified(&d);
    trail[..2].sort();
    let mut want = firing_trail.to_vec();
    want[..2].sort();
    assert_eq!(trail, want);
    d.stop().await;

    // Started again, its backup held: the history's alert at once, as it began.
    let hold = Some(("locked".to_string(), 1));
    let again = started(dir.path(), &plan(am.port, json.port), Scripted { hold, ..Scripted::default() });
    until("the re-send after the restart", || am.taken().len() == 4).await;
    assert_eq!(am.taken()[3], firing, "the alert as it began");
    assert_eq!(json.taken().len(), 1, "JSON is told once");

    // The recovery resolves it, and nothing is sent after it.
    set(&again.clock_file, "2026-11-21T10:00:30Z");
    let backup = crate::daemon::Command::Backup { source: "locked".into(), actor: "test".into() };
    again.shared.commands.send(backup).expect("the loop");
    until("the held backup", || again.jobs.calls("locked") == 1).await;
    again.jobs.release.notify_one();
    until("the recovery", || am.taken().len() == 5 && json.taken().len() == 2).await;
    let resolved = &am.taken()[4][0];
    assert_eq!((&resolved["labels"], &resolved["startsAt"]), (&firing[0]["labels"], &firing[0]["startsAt"]));
    assert_eq!(resolved["endsAt"], "2026-11-21T10:00:30Z");
    assert_eq!(json.taken()[1]["event"], "recovery");
    set(&again.clock_file, "2026-11-21T10:05:00Z");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(am.taken().len(), 5, "nothing after the recovery: {:#?}", am.taken());
    until("the recovery audited", || notified(&again).len() == 6).await;
    let mut recovered = notified(&again).split_off(4);
    recovered.sort();
    let mut want =
        [(to("recovery", am.port), "succeeded".to_string(), String::new()), (to("recovery", json.port), "succeeded".into(), String::new())];
    want.sort();
    assert_eq!(recovered, want, "the re-send after the restart arrived: not audited");
    again.stop().await;
}
