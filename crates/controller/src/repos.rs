//! Reads of the plan's repositories — snapshot lists, legal holds, the
//! report's facts — through one unlocked handle per repository, opened on
//! first use and kept: no child process and no key derivation per request.
//! The handles are dropped, and with them their keys (zeroized on drop),
//! when the plan is reloaded and when the daemon stops.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tresor_engine::evidence::Head;
use tresor_engine::{Error, Id, OpenOptions, Password, Repository};
use tresor_storage::{Location, StorageOptions};

use crate::model::{EvidenceRecord, NotRecorded};
use crate::plan::{self, Plan};
use crate::rehearse::Rehearsal;
use crate::report::RepoFacts;
use crate::state::{AuditEntry, Job, State};

/// Each repository's evidence head, by URL (`None`: a log not started).
type Heads = Vec<(plan::SecretUrl, Option<Head>)>;

/// Where the daemon appends evidence about `concerning` (a repository, or the
/// whole plan): that repository, unless it is a class's off-site copy, whose
/// log `copy` fills from its primary and which a direct append would fork;
/// evidence about it, or about the plan, goes to every primary repository.
pub fn evidence_targets(plan: &Plan, concerning: Option<&plan::Repository>) -> Vec<plan::Repository> {
    let offsite: Vec<&plan::SecretUrl> =
        plan.classes.values().filter_map(|c| c.offsite.as_deref()).filter_map(|n| plan.repositories.get(n)).map(|r| &r.url).collect();
    match concerning {
        Some(r) if !offsite.contains(&&r.url) => vec![r.clone()],
        _ => plan.repositories.values().filter(|r| !offsite.contains(&&r.url)).cloned().collect(),
    }
}

/// Shared by clones (a spawned append holds one).
#[derive(Clone, Default)]
pub struct Handles {
    inner: Arc<Inner>,
}

/// Keyed by the repository's URL, so a renamed plan entry keeps its handle.
struct Inner {
    open: tokio::sync::Mutex<BTreeMap<plan::SecretUrl, Arc<Repository>>>,
    /// One evidence appender per repository at a time: two would fork the chain.
    appending: tokio::sync::Mutex<()>,
    /// The leader's term under leader election (`u64::MAX`: none), recorded in every entry.
    term: std::sync::atomic::AtomicU64,
    /// Appends started in the background and not yet done.
    pending: std::sync::atomic::AtomicUsize,
    /// The rehearsals' protocols as last read from the logs, and those appended since (for the status page).
    rehearsals: std::sync::Mutex<Vec<Rehearsal>>,
    /// Each repository's evidence head (by URL) when the rehearsals were last read; `None`: not read yet.
    heads: std::sync::Mutex<Option<Heads>>,
    /// Repositories that refused their password (by URL), not tried again
    /// with the same password file and key slots: each try costs a key derivation.
    refused: std::sync::Mutex<BTreeMap<plan::SecretUrl, Refused>>,
    /// Opens attempted: each one that finds a repository derives a key.
    #[cfg(test)]
    opens: std::sync::atomic::AtomicU64,
    /// Listings of key slots besides those the opens make themselves.
    #[cfg(test)]
    listings: std::sync::atomic::AtomicU64,
}

/// A refused open and what it was tried with.
struct Refused {
    tried: Tried,
    /// The key slots the refused open tried the password on, as its own
    /// unlock listed them: a slot added since is missing from them.
    slots: Vec<Id>,
    error: String,
}

/// A plan entry's password file as an open read it: a change of its path,
/// size or modification time (or of the entry's `init`) is a new password.
#[derive(PartialEq)]
struct Tried {
    password_file: std::path::PathBuf,
    init: bool,
    file: Option<(u64, Option<std::time::SystemTime>)>,
}

impl Tried {
    fn of(r: &plan::Repository) -> Tried {
        let file = std::fs::metadata(&r.password_file).ok().map(|m| (m.len(), m.modified().ok()));
        Tried { password_file: r.password_file.clone(), init: r.init, file }
    }
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            open: Default::default(),
            appending: Default::default(),
            term: std::sync::atomic::AtomicU64::new(u64::MAX),
            pending: Default::default(),
            rehearsals: Default::default(),
            heads: Default::default(),
            refused: Default::default(),
            #[cfg(test)]
            opens: Default::default(),
            #[cfg(test)]
            listings: Default::default(),
        }
    }
}

impl Handles {
    /// The plan repository `r`, unlocked once. One that refused its
    /// password answers with that refusal until its password file or its
    /// key slots change (on each read while refused, a config read and one
    /// listing, no key derivation); one missing or unreachable (no key
    /// derived) is tried each time.
    pub async fn get(&self, r: &plan::Repository) -> Result<Arc<Repository>, String> {
        let mut open = self.inner.open.lock().await;
        if let Some(h) = open.get(&r.url) {
            return Ok(h.clone());
        }
        // Looked at before the password is read: a change in between is seen next time.
        let tried = Tried::of(r);
        let location = Location::parse(r.url.expose()).map_err(|e| e.to_string())?;
        let storage = StorageOptions::default();
        let remembered = self
            .inner
            .refused
            .lock()
            .expect("not poisoned")
            .get(&r.url)
            .filter(|f| f.tried == tried)
            .map(|f| (f.slots.clone(), f.error.clone()));
        if let Some((slots, error)) = remembered {
            // Only a remembered refusal costs a listing; a repository that cannot be listed could not be opened either.
            #[cfg(test)]
            self.inner.listings.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if Repository::key_slots(&location, &storage).await.map_err(|e| e.to_string())? == slots {
                return Err(error);
            }
        }
        let password =
            Password::read_file(&r.password_file).map_err(|e| format!("cannot read password file {}: {e}", r.password_file.display()))?;
        let opts = OpenOptions { password, cache_root: None, storage };
        #[cfg(test)]
        self.inner.opens.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let opened = Repository::open(&location, &opts).await;
        let mut refused = self.inner.refused.lock().expect("not poisoned");
        let repo = match opened {
            Ok(repo) => Arc::new(repo),
            Err(e) => {
                let error = e.to_string();
                if let Error::WrongPassword { slots, .. } = e {
                    refused.insert(r.url.clone(), Refused { tried, slots, error: error.clone() });
                }
                return Err(error);
            }
        };
        refused.remove(&r.url);
        open.insert(r.url.clone(), repo.clone());
        Ok(repo)
    }

    /// How many opens were attempted (those that found a repository derived a key).
    #[cfg(test)]
    fn opens(&self) -> u64 {
        self.inner.opens.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many listings of key slots were made besides the opens' own.
    #[cfg(test)]
    fn listings(&self) -> u64 {
        self.inner.listings.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// From now on, entries carry this leader's term: a job run twice by two leaders shows.
    pub fn set_term(&self, term: u64) {
        self.inner.term.store(term, std::sync::atomic::Ordering::SeqCst);
    }

    /// Append an evidence entry to the repository's log (FORMAT.md §12d).
    pub async fn append(&self, r: &plan::Repository, kind: &str, body: Value) -> Result<tresor_engine::evidence::Head, String> {
        let repo = self.get(r).await?;
        let _one = self.inner.appending.lock().await;
        let term = Some(self.inner.term.load(std::sync::atomic::Ordering::SeqCst)).filter(|t| *t != u64::MAX);
        tresor_engine::evidence::append(&repo, kind, term, body).await.map_err(|e| e.to_string())
    }

    /// Append an entry to each of `targets` in the background (from code that cannot wait); [`flush`](Self::flush) waits for it.
    pub fn append_later(&self, targets: Vec<plan::Repository>, kind: &'static str, body: Value) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let handles = self.clone();
        handles.inner.pending.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        rt.spawn(async move {
            for r in targets {
                if let Err(err) = handles.append(&r, kind, body.clone()).await {
                    tracing::warn!("the {kind} entry stays local: {err}");
                }
            }
            handles.inner.pending.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }

    /// Wait until the background appends are done (a stopping daemon loses none).
    pub async fn flush(&self) {
        while self.inner.pending.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// What the repository's packs take in storage, from one listing (no index read, no child).
    pub async fn stored_size(&self, r: &plan::Repository) -> Result<u64, String> {
        let repo = self.get(r).await?;
        let packs =
            tresor_engine::objects::list_with_size(repo.operator(), tresor_engine::objects::Kind::Pack).await.map_err(|e| e.to_string())?;
        Ok(packs.iter().map(|(_, size)| size).sum())
    }

    /// Forget every handle and refusal (a reload, a stop): the next read unlocks again.
    pub async fn clear(&self) {
        self.inner.open.lock().await.clear();
        self.inner.refused.lock().expect("not poisoned").clear();
    }

    /// The snapshots of a source (tagged `source=NAME`), or every one (also
    /// the hidden pieces of archives) without a source, oldest first, as
    /// `tresor snapshots --json` lists them.
    pub async fn snapshots(&self, r: &plan::Repository, source: Option<&str>) -> Result<Vec<Value>, String> {
        let repo = self.get(r).await?;
        let all = repo.snapshots().await.map_err(|e| e.to_string())?;
        let filter = tresor_engine::select::SnapshotFilter {
            tags: source.map(|s| format!("source={s}")).into_iter().collect(),
            ..Default::default()
        };
        let chosen = tresor_engine::select::filter(all, &filter, source.is_none());
        Ok(chosen.iter().map(tresor_engine::snapshot::Snapshot::to_json).collect())
    }

    /// The snapshot `spec` (an id or a prefix of one) names among source
    /// `source`'s: its full id, or why none (the engine's error: none such,
    /// ambiguous, or another source's).
    pub async fn snapshot_of(
        &self,
        r: &plan::Repository,
        source: &str,
        spec: &str,
    ) -> Result<Result<String, tresor_engine::Error>, String> {
        let repo = self.get(r).await?;
        let all = repo.snapshots().await.map_err(|e| e.to_string())?;
        let filter = tresor_engine::select::SnapshotFilter { tags: vec![format!("source={source}")], ..Default::default() };
        // An id names its snapshot whatever the filters (as restic has it): the source is asked of it here.
        Ok(tresor_engine::select::select(all, spec, &Default::default()).and_then(|s| match filter.matches(&s) {
            true => Ok(s.id.to_hex()),
            false => Err(tresor_engine::Error::FilteredOut { snapshot: s.id.short(), filter: filter.describe() }),
        }))
    }

    /// Fill an empty state from the repositories' evidence logs: every job
    /// (each once, whichever copy of the log it is read from, the daemon's
    /// rehearsals among them) and the drill protocols inside drill jobs; how
    /// many of each.
    pub async fn rebuild(&self, plan: &Plan, state: &State) -> Result<(usize, usize), String> {
        let (mut jobs, mut drills) = (0, 0);
        // The same audit entry read from two copies of a log is one.
        let mut audited = std::collections::BTreeSet::new();
        for r in plan.repositories.values() {
            let repo = self.get(r).await?;
            for e in tresor_engine::evidence::entries(&repo).await.map_err(|e| e.to_string())? {
                if e.kind == "audit" && audited.insert(e.body.to_string()) {
                    let entry: AuditEntry =
                        serde_json::from_value(e.body.clone()).map_err(|err| format!("evidence entry {}: {err}", e.seq))?;
                    state.audit(&entry).map_err(|err| err.to_string())?;
                }
                // A rehearsal the daemon ran carries its job; one run by hand has none.
                let body = match e.kind.as_str() {
                    "job" => &e.body,
                    crate::model::REHEARSAL if e.body.get("job").is_some() => &e.body["job"],
                    _ => continue,
                };
                let job: Job = serde_json::from_value(body.clone()).map_err(|err| format!("evidence entry {}: {err}", e.seq))?;
                if !state.import_job(&job).map_err(|err| err.to_string())? {
                    continue;
                }
                jobs += 1;
                for d in body["drills"].as_array().into_iter().flatten() {
                    let report: crate::model::DrillReport =
                        serde_json::from_value(d.clone()).map_err(|err| format!("evidence entry {}: {err}", e.seq))?;
                    state.record_drill(&report).map_err(|err| err.to_string())?;
                    drills += 1;
                }
            }
        }
        Ok((jobs, drills))
    }

    /// The report's facts from the repositories that answer: legal holds per
    /// repository, and the WAL archive lag of each PostgreSQL base-backup
    /// source; those that do not are named with why, so that the report
    /// never says "none" of what it could not read.
    pub async fn facts(&self, plan: &Plan, now: DateTime<Utc>) -> RepoFacts {
        let (mut holds, mut listings, mut unread) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (name, r) in &plan.repositories {
            let wanted =
                plan.sources.iter().any(|s| s.url.starts_with("pgbase://") && plan.repository_of(s).is_some_and(|(n, _)| n == name));
            let repo = match self.get(r).await {
                Ok(repo) => repo,
                Err(why) => {
                    unread.insert(name.clone(), why);
                    continue;
                }
            };
            match tresor_engine::holds::holds(&repo).await {
                Ok(h) => {
                    holds.insert(name.clone(), h.len() as u64);
                }
                Err(e) => {
                    unread.insert(name.clone(), e.to_string());
                }
            }
            if wanted {
                match self.snapshots(r, None).await {
                    Ok(list) => {
                        listings.insert(name.clone(), list);
                    }
                    Err(why) => {
                        unread.entry(name.clone()).or_insert(why);
                    }
                }
            }
        }
        let wal = crate::walrpo::points(plan, &listings).await;
        let lags = wal.iter().map(|(s, p)| (s.clone(), p.lag(now))).collect();
        let wal_rpo = wal.iter().map(|(s, p)| (s.clone(), p.rpo(now))).collect();
        RepoFacts { lags, wal_rpo, holds, annotations: self.annotations(plan).await, rehearsals: self.rehearsals(plan).await, unread }
    }

    /// Append `body` to the evidence log of every primary repository (what
    /// concerns the whole plan: a rehearsal); where it went, and where not and why.
    pub async fn record(&self, plan: &Plan, kind: &str, body: Value) -> EvidenceRecord {
        let mut out = EvidenceRecord::default();
        for r in evidence_targets(plan, None) {
            let name = plan.repositories.iter().find(|(_, p)| p.url == r.url).map_or_else(|| r.url.to_string(), |(n, _)| n.clone());
            match self.append(&r, kind, body.clone()).await {
                Ok(_) => out.recorded_in.push(name),
                Err(reason) => out.not_recorded.push(NotRecorded { repository: name, reason }),
            }
        }
        if kind == crate::model::REHEARSAL
            && let Ok(r) = serde_json::from_value::<Rehearsal>(body)
        {
            self.inner.rehearsals.lock().expect("not poisoned").push(r);
        }
        out
    }

    /// The entries of `kind` in the logs of the repositories that answer,
    /// each once however many logs (a primary's, its off-site copy's) hold it.
    async fn entries_of<T: serde::de::DeserializeOwned + PartialEq>(&self, plan: &Plan, kind: &str) -> Vec<T> {
        let mut out: Vec<T> = Vec::new();
        for r in plan.repositories.values() {
            let Ok(repo) = self.get(r).await else { continue };
            let Ok(entries) = tresor_engine::evidence::entries(&repo).await else { continue };
            for e in entries.into_iter().filter(|e| e.kind == kind) {
                if let Ok(a) = serde_json::from_value(e.body)
                    && !out.contains(&a)
                {
                    out.push(a);
                }
            }
        }
        out
    }

    /// The drill annotations in the evidence logs, oldest first.
    pub async fn annotations(&self, plan: &Plan) -> Vec<crate::model::Annotation> {
        let mut out: Vec<crate::model::Annotation> = self.entries_of(plan, crate::model::ANNOTATION).await;
        out.sort_by_key(|a| a.time);
        out
    }

    /// The cold-start rehearsals' protocols in the evidence logs, oldest first.
    pub async fn rehearsals(&self, plan: &Plan) -> Vec<Rehearsal> {
        let mut out: Vec<Rehearsal> = self.entries_of(plan, crate::model::REHEARSAL).await;
        out.sort_by_key(|r| r.started);
        out.clone_into(&mut self.inner.rehearsals.lock().expect("not poisoned"));
        out
    }

    /// Read the rehearsals again when an evidence log's head moved since
    /// they were last read here (a stand-alone `dr rehearse`, a `copy`):
    /// one listing per repository, the logs' entries only on a change.
    pub async fn refresh_rehearsals(&self, plan: &Plan) {
        let mut heads = Vec::new();
        for r in plan.repositories.values() {
            let head = match self.get(r).await {
                Ok(repo) => tresor_engine::evidence::head(&repo).await.ok().flatten(),
                Err(_) => None,
            };
            heads.push((r.url.clone(), head));
        }
        if self.inner.heads.lock().expect("not poisoned").as_ref() == Some(&heads) {
            return;
        }
        // The heads are taken before the entries: an entry appended in between moves a head the next refresh sees.
        self.rehearsals(plan).await;
        *self.inner.heads.lock().expect("not poisoned") = Some(heads);
    }

    /// The rehearsals as last read by [`rehearsals`](Self::rehearsals), and those recorded since, oldest first.
    pub fn known_rehearsals(&self) -> Vec<Rehearsal> {
        self.inner.rehearsals.lock().expect("not poisoned").clone()
    }
}

#[cfg(test)]
mod tests {
    use tresor_engine::{InitOptions, KdfParams};

    use super::*;

    fn entry(dir: &std::path::Path, password: &str) -> plan::Repository {
        let password_file = dir.join("pw");
        std::fs::write(&password_file, password).unwrap();
        plan::Repository::new(dir.join("repo").to_str().unwrap().into(), password_file)
    }

    /// Key slots cheap to derive: the tests count unlocks, not their cost.
    const KDF: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };

    fn open_with(password: &str) -> OpenOptions {
        OpenOptions { password: Password::new(password), cache_root: None, storage: StorageOptions::default() }
    }

    async fn init(r: &plan::Repository, password: &str) {
        let opts = InitOptions {
            open: open_with(password),
            aead: Default::default(),
            compression: 3,
            kdf: KDF,
            pack_size: None,
            settings: Default::default(),
        };
        Repository::init(&Location::parse(r.url.expose()).unwrap(), &opts).await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_password_is_tried_again_only_once_its_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let r = entry(dir.path(), "wrong");
        let text = format!(
            "repositories:\n  main:\n    url: {}\n    password_file: {}\nclasses: {{}}\nsources: []\n",
            r.url.expose(),
            r.password_file.display()
        );
        let plan = Plan::parse(&text, "plan.yaml".as_ref()).unwrap();
        let handles = Handles::default();
        let missing = handles.get(&r).await.unwrap_err();
        assert!(missing.starts_with("no repository at "), "{missing}");
        assert_eq!((handles.get(&r).await.unwrap_err(), handles.opens()), (missing, 2), "a missing repository is looked for each time");
        init(&r, "right").await;
        let refused = "wrong password: no key of this repository opens with it";
        assert_eq!(handles.get(&r).await.unwrap_err(), refused);
        for _ in 0..3 {
            handles.refresh_rehearsals(&plan).await;
        }
        assert_eq!((handles.get(&r).await.unwrap_err(), handles.opens()), (refused.to_string(), 3), "refused once, not every refresh");
        std::fs::write(&r.password_file, "right").unwrap();
        handles.get(&r).await.expect("the mended password file opens it");
        handles.refresh_rehearsals(&plan).await;
        assert_eq!(handles.opens(), 4, "and the open handle is kept");
    }

    #[tokio::test]
    async fn a_refused_password_is_tried_again_once_a_key_is_added_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = entry(dir.path(), "daemon's");
        init(&r, "operator's").await;
        let handles = Handles::default();
        let refused = "wrong password: no key of this repository opens with it";
        assert_eq!(handles.get(&r).await.unwrap_err(), refused);
        assert_eq!(handles.listings(), 0, "the refused open's own listing is remembered");
        assert_eq!((handles.get(&r).await.unwrap_err(), handles.opens()), (refused.to_string(), 1), "the same slots are not tried again");
        assert_eq!(handles.listings(), 1);
        // The operator's mend, as `tresor key add` makes it.
        let location = Location::parse(r.url.expose()).unwrap();
        let operator = Repository::open(&location, &open_with("operator's")).await.unwrap();
        operator.add_key(&Password::new("daemon's"), KDF, "daemon").await.unwrap();
        handles.get(&r).await.expect("the added key opens it");
        handles.get(&r).await.unwrap();
        assert_eq!((handles.opens(), handles.listings()), (2, 2), "opened once and kept");
    }

    #[tokio::test]
    async fn a_first_open_lists_no_key_slots_besides_its_unlock() {
        let dir = tempfile::tempdir().unwrap();
        let r = entry(dir.path(), "right");
        init(&r, "right").await;
        let handles = Handles::default();
        handles.get(&r).await.unwrap();
        assert_eq!((handles.opens(), handles.listings()), (1, 0));
    }
}
