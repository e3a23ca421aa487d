//! Plain TCP helpers for the backend harnesses: waiting for a spawned server
//! to listen, and servers that misbehave on purpose.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Polls until something accepts on `port` (true), `child` exits or 20 s
/// pass (false).
fn wait_for_port(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return true;
        }
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A spawned server, killed when dropped.
pub struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with its stderr in `log` and waits until it listens on
/// `port`; panics with the log (or how to install it) otherwise.
pub fn spawn_listening(mut cmd: Command, port: u16, log: &Path) -> Spawned {
    let file = std::fs::File::create(log).expect("server log");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {:?} (scripts/test.sh installs it): {e}", cmd.get_program()));
    let mut spawned = Spawned(child);
    if !wait_for_port(port, &mut spawned.0) {
        panic!("{:?} did not listen on {port}: {}", cmd.get_program(), std::fs::read_to_string(log).unwrap_or_default());
    }
    spawned
}

/// What a [`RudeServer`] does with each connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rudeness {
    /// Accepts and never answers, reading whatever comes.
    Silent,
    /// Accepts and closes at once.
    HangsUp,
}

/// A loopback server that accepts connections and then misbehaves; stopped on drop.
pub struct RudeServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RudeServer {
    pub fn start(rudeness: Rudeness) -> RudeServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let port = listener.local_addr().expect("address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) if rudeness == Rudeness::Silent => held.push(conn),
                    Ok((conn, _)) => drop(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
                for conn in &mut held {
                    let _ = conn.set_nonblocking(true);
                    let _ = conn.read(&mut [0u8; 4096]);
                }
            }
        });
        RudeServer { port, stop, thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RudeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
