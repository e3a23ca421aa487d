//! Writer sessions: how a prune knows who may still be writing.
//!
//! Every process that adds data (backup, copy, prune's repacking) announces
//! itself with heartbeat objects `sessions/<session id>-<sequence>`. Ages are
//! judged by the storage's clock alone: a session started when its first
//! heartbeat was stored, and was last known alive when its newest one was.
//! No host's clock is compared with another's.
//!
//! A writer that has not stored a heartbeat for half the repository's session
//! timeout has lost its lease and must not commit a snapshot: a prune may
//! already have taken it for dead (docs/ARCHITECTURE.md §7).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::objects::{Kind, list_names, unless_gone};
use crate::{Error, Id, Repository, Result};

#[derive(Serialize, Deserialize)]
struct Beat {
    host: String,
    pid: u32,
    command: String,
    /// Storage time of the first heartbeat, carried in the later ones
    /// (whose predecessors are deleted).
    started: Option<DateTime<Utc>>,
    /// The last heartbeat of a session that ended where heartbeats cannot
    /// be deleted (append-only, Object Lock).
    #[serde(default)]
    ended: bool,
}

/// A session as another process sees it.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: Id,
    pub host: String,
    pub pid: u32,
    pub command: String,
    pub started: DateTime<Utc>,
    pub last_beat: DateTime<Utc>,
    pub ended: bool,
}

struct BeatState {
    seq: u64,
    last_ok: Instant,
}

/// This process's session. Heartbeats run on a background task until
/// [`Session::end`].
pub struct Session {
    repo: Arc<Repository>,
    id: Id,
    command: String,
    started: DateTime<Utc>,
    state: Arc<tokio::sync::Mutex<BeatState>>,
    task: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

fn beat_path(id: &Id, seq: u64) -> String {
    Kind::Session.named(&format!("{}-{seq:010}", id.to_hex()))
}

impl Session {
    pub async fn start(repo: Arc<Repository>, command: &str) -> Result<Session> {
        // Every writer loads the index: one that cannot fit stops before its
        // session is the first thing it writes.
        repo.ensure_memory().await?;
        let id = Id::random();
        let timeout = Duration::from_secs(repo.config().session_timeout_secs);
        let issued = Instant::now();
        write_beat(&repo, &id, 0, Beat::new(command, None)).await?;
        let started = repo.stored_time(&beat_path(&id, 0)).await?;
        let state = Arc::new(tokio::sync::Mutex::new(BeatState { seq: 0, last_ok: issued }));
        let task = {
            let (repo, state, command) = (repo.clone(), state.clone(), command.to_string());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(timeout / 6).await;
                    if let Err(e) = beat(&repo, &id, &command, started, &state).await {
                        tracing::warn!("session heartbeat failed: {e}");
                    }
                }
            })
        };
        Ok(Session { repo, id, command: command.to_string(), started, state, task, timeout })
    }

    pub fn id(&self) -> Id {
        self.id
    }

    /// Storage time of the first heartbeat.
    pub fn started(&self) -> DateTime<Utc> {
        self.started
    }

    /// Store a heartbeat now; the storage's current time, as it stamped it.
    pub async fn storage_now(&self) -> Result<DateTime<Utc>> {
        beat(&self.repo, &self.id, &self.command, self.started, &self.state).await
    }

    /// Fails once the lease has lapsed: the last stored heartbeat was
    /// issued more than half the timeout ago.
    pub async fn check_lease(&self) -> Result<()> {
        let age = self.state.lock().await.last_ok.elapsed();
        if age > self.timeout / 2 {
            return Err(Error::LeaseExpired { secs: age.as_secs() });
        }
        Ok(())
    }

    /// Stop beating and remove the heartbeat. Where it cannot be removed
    /// (append-only, Object Lock), a last one says the session ended.
    pub async fn end(self) -> Result<()> {
        self.task.abort();
        let st = self.state.lock().await;
        let path = beat_path(&self.id, st.seq);
        if !self.repo.config().append_only && self.repo.delete_unless_locked(&path).await? {
            return Ok(());
        }
        let last = Beat { ended: true, ..Beat::new(&self.command, Some(self.started)) };
        write_beat(&self.repo, &self.id, st.seq + 1, last).await
    }
}

impl Beat {
    fn new(command: &str, started: Option<DateTime<Utc>>) -> Beat {
        Beat { host: crate::hostname(), pid: std::process::id(), command: command.to_string(), started, ended: false }
    }
}

async fn write_beat(repo: &Repository, id: &Id, seq: u64, b: Beat) -> Result<()> {
    let sealed = repo.crypto().seal_file(Kind::Session.label(), id, &serde_json::to_vec(&b).expect("beats serialize"));
    repo.write(&beat_path(id, seq), sealed).await
}

async fn beat(
    repo: &Repository,
    id: &Id,
    command: &str,
    started: DateTime<Utc>,
    state: &tokio::sync::Mutex<BeatState>,
) -> Result<DateTime<Utc>> {
    let mut st = state.lock().await;
    let issued = Instant::now();
    let seq = st.seq + 1;
    write_beat(repo, id, seq, Beat::new(command, Some(started))).await?;
    let now = repo.stored_time(&beat_path(id, seq)).await?;
    let previous = std::mem::replace(&mut st.seq, seq);
    st.last_ok = issued;
    if !repo.config().append_only {
        repo.delete_unless_locked(&beat_path(id, previous)).await?;
    }
    Ok(now)
}

/// `<session id>-<sequence>` back into its parts.
pub(crate) fn parse_beat_name(name: &str) -> Option<(Id, u64)> {
    name.split_once('-').and_then(|(i, s)| Some((i.parse::<Id>().ok()?, s.parse::<u64>().ok()?)))
}

async fn newest_beats(repo: &Repository) -> Result<HashMap<Id, (u64, String)>> {
    let mut newest: HashMap<Id, (u64, String)> = HashMap::new();
    for name in list_names(repo.operator(), Kind::Session).await? {
        let Some((id, seq)) = parse_beat_name(&name) else { continue };
        let slot = newest.entry(id).or_insert((seq, name.clone()));
        if seq >= slot.0 {
            *slot = (seq, name);
        }
    }
    Ok(newest)
}

/// Every session with a heartbeat in the repository, live or not.
pub async fn sessions(repo: &Repository) -> Result<Vec<SessionInfo>> {
    let mut pending = newest_beats(repo).await?;
    let mut out = Vec::new();
    // A heartbeat replaced between the listing and the read is looked up
    // again: its session is alive, and must not be missed.
    for _ in 0..8 {
        let mut vanished = Vec::new();
        for (id, (_, name)) in pending.drain() {
            match read_beat(repo, &id, &name).await? {
                Some(info) => out.push(info),
                None => vanished.push(id),
            }
        }
        if vanished.is_empty() {
            return Ok(out);
        }
        let again = newest_beats(repo).await?;
        pending = vanished.into_iter().filter_map(|id| Some((id, again.get(&id)?.clone()))).collect();
    }
    Err(Error::Invalid("sessions keep changing while they are read; try again".into()))
}

async fn read_beat(repo: &Repository, id: &Id, name: &str) -> Result<Option<SessionInfo>> {
    let path = Kind::Session.named(name);
    let Some(bytes) = unless_gone(repo.read(&path).await)? else { return Ok(None) };
    let Some(last_beat) = unless_gone(repo.stored_time(&path).await)? else { return Ok(None) };
    let plain = repo.crypto().open_file(Kind::Session.label(), id, &bytes)?;
    parse_beat(id, &plain, last_beat).map(Some)
}

/// A heartbeat's plaintext, as the session it describes.
pub(crate) fn parse_beat(id: &Id, plain: &[u8], last_beat: DateTime<Utc>) -> Result<SessionInfo> {
    let b: Beat = serde_json::from_slice(plain).map_err(|e| Error::corrupt("session", id, e))?;
    Ok(SessionInfo {
        id: *id,
        host: b.host,
        pid: b.pid,
        command: b.command,
        started: b.started.unwrap_or(last_beat),
        last_beat,
        ended: b.ended,
    })
}

/// Remove the heartbeats of a session presumed dead.
pub async fn remove(repo: &Repository, id: &Id) -> Result<()> {
    let prefix = format!("{}-", id.to_hex());
    for name in list_names(repo.operator(), Kind::Session).await? {
        if name.starts_with(&prefix) {
            repo.delete_unless_locked(&Kind::Session.named(&name)).await?;
        }
    }
    Ok(())
}
