//! A real Prometheus Alertmanager (Debian's `prometheus-alertmanager`) on a
//! free loopback port, alone (no cluster peers), routing every alert to a
//! receiver that sends nothing: what the tests read is its own API, the
//! alerts it holds active.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use tempfile::TempDir;

use crate::net::free_port;
use crate::tcp::{Spawned, spawn_listening};

const CONFIG: &str = "route:\n  receiver: none\n  group_wait: 0s\nreceivers:\n  - name: none\n";

pub struct AlertmanagerServer {
    _child: Spawned,
    port: u16,
    _dir: TempDir,
}

impl AlertmanagerServer {
    pub fn start() -> AlertmanagerServer {
        let dir = tempfile::Builder::new().prefix("tresor-alertmanager-").tempdir().expect("temp dir for alertmanager");
        let config = dir.path().join("alertmanager.yml");
        fs::write(&config, CONFIG).expect("alertmanager config");
        let port = free_port();
        let mut cmd = Command::new("prometheus-alertmanager");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=");
        let child = spawn_listening(cmd, port, &dir.path().join("alertmanager.log"));
        AlertmanagerServer { _child: child, port, _dir: dir }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// One request to its API: (status code, body).
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to alertmanager");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write to alertmanager");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read from alertmanager");
        let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (code, body)
    }

    /// The alerts it holds active now (neither resolved, silenced nor inhibited).
    pub fn active(&self) -> Vec<serde_json::Value> {
        let (code, body) = self.request("GET", "/api/v2/alerts?active=true&silenced=false&inhibited=false", "");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(dechunk(&body).trim()).expect("alertmanager's alert list")
    }

    /// Every silence it holds (active, pending or expired).
    pub fn silences(&self) -> Vec<serde_json::Value> {
        let (code, body) = self.request("GET", "/api/v2/silences", "");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(dechunk(&body).trim()).expect("alertmanager's silence list")
    }
}

/// A body sent with chunked transfer encoding, joined.
fn dechunk(body: &str) -> String {
    if body.trim_start().starts_with('[') {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}
