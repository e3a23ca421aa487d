//! Networking helpers shared by the server harnesses.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

/// Returns a loopback port that was free a moment ago, and that this
/// process has not handed out before.
///
/// The port is released before returning, so another process could grab it
/// before the caller binds it; harnesses spawning external servers (redis,
/// postgres, etcd) accept that small race because those servers must bind
/// the port themselves. Within one test process the race is closed: the
/// kernel may offer a released port again, to a test starting its server
/// beside one whose server has not bound yet. In-process servers should
/// bind `127.0.0.1:0` directly.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("bind 127.0.0.1:0 to find a free port")
            .port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// A loopback listener on a port below the kernel's ephemeral range, which
/// neither `bind(0)` nor an outgoing connection is ever given: a test can
/// close it and bind the same port again later (to take a server off the
/// network for a while) without another socket having taken the port
/// meanwhile, as one from the ephemeral range can be.
pub fn reserved_listener() -> TcpListener {
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
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return listener;
        }
    }
    panic!("no loopback port free in {floor}..{low}");
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
