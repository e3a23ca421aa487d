//! Networking helpers shared by the server harnesses.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions, TryLockError};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// Returns a loopback port that was free a moment ago, and that this
/// process has not handed out before.
///
/// The port is released before returning, so that the server the caller
/// spawns (redis, postgres, etcd) can bind it. It lies below the kernel's
/// ephemeral range, like [`reserved_listener`]'s: from the ephemeral range,
/// any `bind(0)` in a test running beside (an in-process S3 or Kubernetes
/// server, a webhook receiver) or any outgoing connection could take it
/// before the server bound it, which then never started, or, if a test used
/// it as a port where nothing listens, turned it into one where something does.
pub fn free_port() -> u16 {
    reserved(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok().then_some(port))
}

/// A loopback listener on a port below the kernel's ephemeral range, which
/// neither `bind(0)` nor an outgoing connection is ever given: a test can
/// close it and bind the same port again later (to take a server off the
/// network for a while) without another socket having taken the port
/// meanwhile, as one from the ephemeral range can be.
pub fn reserved_listener() -> TcpListener {
    reserved(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).ok())
}

/// The first port below the ephemeral range that `take` accepts, going on
/// from the last one this process handed out, so that none is handed out
/// twice (the range is only gone round again after some 20 000 ports), and
/// that no other test process holds (see [`claim`]).
fn reserved<T>(mut take: impl FnMut(u16) -> Option<T>) -> T {
    static NEXT: Mutex<u16> = Mutex::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let floor = 10_000.min(low / 2);
    let span = low - floor;
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    if *next == 0 {
        // Test processes started side by side start at different places.
        *next = (std::process::id() % u32::from(span)) as u16;
    }
    for _ in 0..span {
        let port = floor + *next % span;
        *next = (*next + 1) % span;
        let Some(claimed) = claim(port) else { continue };
        if let Some(taken) = take(port) {
            let mut held = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
            if held.len() == HELD {
                held.pop_front();
            }
            held.extend(claimed);
            return taken;
        }
    }
    panic!("no loopback port free in {floor}..{low}");
}

/// The ports this process handed out last, each locked until it exits or
/// [`HELD`] newer ones push it out: long after its server bound it or its
/// test ended, and far within a fresh Debian's limit of 1,024 open files.
static CLAIMED: Mutex<VecDeque<File>> = Mutex::new(VecDeque::new());
const HELD: usize = 256;

/// A lock on `port` that no other test process holds (the kernel drops it
/// when the holder exits, even if it is killed). A port
/// [`free_port`] hands out is free only until the caller's server binds it:
/// test binaries run side by side (two checkouts, or copies of one binary
/// stressed at once) would otherwise hand out the same port and one server
/// would not start. `Some(None)` where the lock directory cannot be used:
/// the port is then taken on the bind alone, as before the locks.
fn claim(port: u16) -> Option<Option<File>> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("tresor-test-ports");
        std::fs::create_dir_all(&dir).is_ok().then_some(dir)
    });
    let opened = dir.as_ref().map(|d| OpenOptions::new().create(true).truncate(false).write(true).open(d.join(port.to_string())));
    let Some(Ok(file)) = opened else { return Some(None) };
    match file.try_lock() {
        Ok(()) => Some(Some(file)),
        Err(TryLockError::WouldBlock) => None,
        Err(TryLockError::Error(_)) => Some(None),
    }
}

/// The next connection to an in-process server, or `None` once `shutdown`
/// fires (or its sender is dropped).
pub(crate) async fn accept_until(
    listener: &tokio::net::TcpListener,
    shutdown: &mut tokio::sync::oneshot::Receiver<()>,
) -> Option<tokio::net::TcpStream> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => return Some(socket),
                // Per-connection failures (e.g. reset before accept) must not stop the server.
                Err(_) => continue,
            },
            _ = &mut *shutdown => return None,
        }
    }
}
