//! Repository-level commands and the plumbing every command shares.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;
use tresor_controller::secret_url::SecretUrl;
use tresor_engine::cache::Cache;
use tresor_engine::check::{CheckOptions, ReadData, check as run_check};
use tresor_engine::crypto::Aead;
use tresor_engine::retention::GroupBy;
use tresor_engine::{Id, InitOptions, KdfParams, OpenOptions, Password, Repository, Settings, Snapshot};
use tresor_storage::{FaultConfig, Location, StorageOptions};

use crate::opts::{CheckArgs, Global, InitArgs, RepairArgs, RepairWhat, SnapshotsArgs, StatsArgs, SynthArgs};

pub fn location(g: &Global) -> Result<Location> {
    let repo = g.repo.as_ref().map(SecretUrl::expose).ok_or_else(|| anyhow!("no repository given: use --repo or set TRESOR_REPOSITORY"))?;
    Ok(Location::parse(repo)?)
}

pub fn read_password_file(path: &Path) -> Result<Password> {
    Password::read_file(path).with_context(|| format!("cannot read password file {}", path.display()))
}

/// The password from `$TRESOR_PASSWORD`, the password file, or a prompt.
pub fn password(g: &Global, confirm: bool) -> Result<Password> {
    if let Some(p) = &g.password {
        return Ok(p.clone());
    }
    if let Some(f) = &g.password_file {
        return read_password_file(f);
    }
    if let Ok(p) = std::env::var("TRESOR_PASSWORD") {
        return Ok(Password::new(p));
    }
    prompt("repository password", confirm)
}

pub fn new_password(file: &Option<std::path::PathBuf>) -> Result<Password> {
    if let Some(f) = file {
        return read_password_file(f);
    }
    if let Ok(p) = std::env::var("TRESOR_NEW_PASSWORD") {
        return Ok(Password::new(p));
    }
    prompt("new password", true)
}

pub fn prompt(what: &str, confirm: bool) -> Result<Password> {
    if !std::io::stdin().is_terminal() {
        bail!("no password given: set TRESOR_PASSWORD, use --password-file, or run on a terminal");
    }
    let first = rpassword::prompt_password(format!("enter {what}: "))?;
    if confirm && rpassword::prompt_password(format!("enter {what} again: "))? != first {
        bail!("the passwords do not match");
    }
    Ok(Password::new(first))
}

/// `--kdf-memory` (TRESOR_KDF_MEMORY): the key derivation of the slots this command writes.
pub fn kdf(g: &Global) -> Result<KdfParams> {
    let Some(text) = g.kdf_memory.as_deref() else { return Ok(KdfParams::default()) };
    match parse_bytes(text).map(|b| b >> 10) {
        // Below 1 MiB, 64 passes (the most) do less than a third of the
        // default's work; above 1 GiB an unlock refuses the slot (MAX_KDF).
        Some(kib @ 1024..=0x10_0000) => Ok(KdfParams::with_memory(kib as u32)),
        _ => bail!("cannot read --kdf-memory (TRESOR_KDF_MEMORY) {text:?} (from 1M to 1G, e.g. 16M)"),
    }
}

pub fn open_options(g: &Global, password: Password) -> Result<OpenOptions> {
    let cache_root = if g.no_cache { None } else { g.cache_dir.clone().or_else(Cache::default_root) };
    Ok(OpenOptions { password, cache_root, storage: storage_options(g)? })
}

/// The storage layers' settings from the global flags (a bucket source
/// takes the same timeout and limits as the repository).
pub fn storage_options(g: &Global) -> Result<StorageOptions> {
    Ok(StorageOptions {
        faults: g.faults.as_deref().map(FaultConfig::parse).transpose()?,
        max_retries: None,
        limit_upload: g.limit_upload.as_deref().map(parse_rate).transpose()?,
        limit_download: g.limit_download.as_deref().map(parse_rate).transpose()?,
        env_prefix: None,
        timeout: g.storage_timeout.as_deref().map(storage_timeout).transpose()?,
    })
}

fn storage_timeout(text: &str) -> Result<std::time::Duration> {
    tresor_storage::parse_timeout(text)
        .ok_or_else(|| anyhow!("invalid --storage-timeout (TRESOR_STORAGE_TIMEOUT) {text:?} (expected seconds, e.g. 30, 30s or 2m)"))
}

/// `1048576`, `512K`, `10M`, `1G`: bytes per second, binary suffixes.
fn parse_rate(text: &str) -> Result<u64> {
    parse_bytes(text).ok_or_else(|| anyhow!("cannot read rate {text:?} (bytes per second, e.g. 500K or 10M)"))
}

/// `1048576`, `512K`, `10M`, `1G`: a positive number of bytes, binary suffixes.
fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let (n, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    n.parse::<u64>().ok().filter(|&v| v > 0).and_then(|v| v.checked_mul(mult))
}

pub async fn append_only(g: &Global, a: crate::opts::AppendOnlyArgs) -> Result<u8> {
    let repo = open(g).await?;
    let on = match a.mode.as_str() {
        "on" => true,
        "off" => false,
        other => bail!("append-only takes on or off, not {other:?}"),
    };
    if !on {
        let again = match &a.confirm_password_file {
            Some(f) => read_password_file(f)?,
            None => match std::env::var("TRESOR_CONFIRM_PASSWORD") {
                Ok(p) => Password::new(p),
                Err(_) => prompt("the repository password again to leave append-only mode", false)?,
            },
        };
        if !repo.confirms(&again).await? {
            bail!("the confirmation password does not open this repository; append-only mode stays on");
        }
    }
    repo.set_append_only(on).await?;
    if g.json {
        print_json(&json!({"append_only": on}))?;
    } else {
        say!("append-only mode is {}", if on { "on: nothing will be deleted or overwritten" } else { "off" });
    }
    Ok(0)
}

pub async fn open(g: &Global) -> Result<Arc<Repository>> {
    let loc = location(g)?;
    let storage = open_options(g, Password::new(""))?.storage;
    Repository::probe(&loc, &storage).await?;
    let opts = open_options(g, password(g, false)?)?;
    let repo = Repository::open(&loc, &opts).await?;
    repo.set_memory_limit(max_memory(g)?);
    Ok(Arc::new(repo))
}

/// Open with the key the tresor that started this one wrote on standard
/// input (`Repository::hand_key`): no password, no Argon2id run.
pub async fn open_handed(g: &Global) -> Result<Arc<Repository>> {
    let opts = open_options(g, Password::new(""))?;
    let repo = Repository::open_with_handed_key(&location(g)?, &opts, &mut std::io::stdin().lock()).await?;
    repo.set_memory_limit(max_memory(g)?);
    Ok(Arc::new(repo))
}

/// `--max-memory` (TRESOR_MAX_MEMORY) in bytes.
pub fn max_memory(g: &Global) -> Result<Option<u64>> {
    let Some(text) = g.max_memory.as_deref() else { return Ok(None) };
    match parse_bytes(text) {
        Some(v) => Ok(Some(v)),
        None => bail!("cannot read --max-memory (TRESOR_MAX_MEMORY) {text:?} (bytes, e.g. 512M or 4G)"),
    }
}

/// `90s`, `15min`, `36h`, `30d`, `2w`, `1y`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| anyhow!("cannot read duration {text:?} (use e.g. 90s, 15min, 36h, 30d)"))?;
    let secs = match unit {
        "" | "s" => 1,
        "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        _ => bail!("cannot read duration {text:?} (use e.g. 90s, 15min, 36h, 30d)"),
    };
    Ok(std::time::Duration::from_secs(n * secs))
}

/// A job child's JSON goes into its result, not to standard output.
static CAPTURED: std::sync::Mutex<Option<Vec<serde_json::Value>>> = std::sync::Mutex::new(None);

/// From now on, what commands print as JSON is kept for [`captured_json`].
pub fn capture_json() {
    *CAPTURED.lock().expect("not poisoned") = Some(Vec::new());
}

/// The JSON values printed since [`capture_json`].
pub fn captured_json() -> Vec<serde_json::Value> {
    CAPTURED.lock().expect("not poisoned").take().unwrap_or_default()
}

pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    if let Some(kept) = CAPTURED.lock().expect("not poisoned").as_mut() {
        kept.push(serde_json::to_value(v)?);
        return Ok(());
    }
    say!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// A local repository's root, made its owner's alone (0700) when init
/// creates it or finds it empty: the files below are written with the
/// umask (0644 key files in 0755 directories), and key files are what a
/// password is guessed against offline. A directory that already holds
/// other files keeps the mode its owner gave it.
pub fn private_root(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
    let mut entries = std::fs::read_dir(p).with_context(|| format!("cannot read {}", p.display()))?;
    if entries.next().is_none() {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("cannot restrict {}", p.display()))?;
    }
    Ok(())
}

pub async fn init(g: &Global, a: InitArgs) -> Result<u8> {
    let loc = location(g)?;
    let aead = match a.aead.as_str() {
        "aes-256-gcm" => Aead::Aes256Gcm,
        "xchacha20-poly1305" => Aead::Xchacha20Poly1305,
        other => bail!("unknown --aead {other:?} (aes-256-gcm or xchacha20-poly1305)"),
    };
    if !(0..=22).contains(&a.compression) {
        bail!("--compression must be a zstd level from 0 to 22");
    }
    if !(4..=512).contains(&a.pack_size_mib) {
        bail!("--pack-size-mib must be between 4 and 512");
    }
    let kdf = kdf(g)?;
    if let Some(p) = loc.local_path() {
        private_root(p)?;
    }
    let opts = InitOptions {
        open: open_options(g, password(g, true)?)?,
        aead,
        compression: a.compression,
        kdf,
        pack_size: Some(a.pack_size_mib * 1024 * 1024),
        settings: Settings {
            session_timeout_secs: a.session_timeout,
            append_only: a.append_only,
            object_lock_secs: a.object_lock.as_deref().map(parse_duration).transpose()?.map(|d| d.as_secs()),
        },
    };
    let repo = Repository::init(&loc, &opts).await?;
    if g.json {
        print_json(&json!({"message_type": "initialized", "id": repo.config().id, "repository": loc.to_string()}))?;
    } else {
        say!("created tresor repository {} at {loc}", repo.config().id.short());
        say!("Keep the password safe: without it the data cannot be recovered.");
    }
    Ok(0)
}

pub async fn snapshots(g: &Global, a: SnapshotsArgs) -> Result<u8> {
    let repo = open(g).await?;
    let snaps = tresor_engine::select::filter(repo.snapshots().await?, &a.select.filter(), a.all);
    let Some(by) = &a.group_by else {
        let snaps = match a.latest {
            Some(n) => tresor_engine::select::newest_per_host_and_paths(snaps, n),
            None => snaps,
        };
        if g.json {
            return print_json(&snaps.iter().map(Snapshot::to_json).collect::<Vec<_>>()).map(|_| 0);
        }
        snapshot_table(&snaps);
        return Ok(0);
    };
    let groups = tresor_engine::select::group(snaps, &GroupBy::parse(by)?, a.latest);
    if g.json {
        let v: Vec<_> = groups
            .iter()
            .map(|(key, s)| json!({"group_key": key, "snapshots": s.iter().map(Snapshot::to_json).collect::<Vec<_>>()}))
            .collect();
        return print_json(&v).map(|_| 0);
    }
    for (key, snaps) in &groups {
        let mut what = Vec::new();
        if !key.hostname.is_empty() {
            what.push(format!("host [{}]", key.hostname));
        }
        if let Some(p) = &key.paths {
            what.push(format!("paths [{}]", p.join(", ")));
        }
        if let Some(t) = &key.tags {
            what.push(format!("tags [{}]", t.join(", ")));
        }
        say!("snapshots for ({}):", what.join(", "));
        snapshot_table(snaps);
        say!();
    }
    Ok(0)
}

/// The snapshots as a table whose columns are as wide as what they hold;
/// a backup of no paths (a stream, a database) shows its source instead.
fn snapshot_table(snaps: &[Snapshot]) {
    let rows: Vec<[String; 6]> = snaps
        .iter()
        .map(|s| {
            let what = match s.paths.is_empty() {
                true => format!("({})", s.source.url.as_deref().unwrap_or(&s.source.kind)),
                false => s.paths.join(" "),
            };
            let size = s.summary.as_ref().map_or(0, |x| x.total_bytes_processed);
            let time = s.time.format("%Y-%m-%d %H:%M:%S %:z").to_string();
            [s.id.short(), time, s.hostname.clone(), s.tags.join(","), human(size), what]
        })
        .collect();
    let head = ["ID", "Time", "Host", "Tags", "Size", "Paths"].map(String::from);
    let width = |c: usize| std::iter::once(&head).chain(&rows).map(|r| r[c].chars().count()).max().unwrap_or(0);
    let widths = [width(0), width(1), width(2), width(3), width(4)];
    for r in std::iter::once(&head).chain(&rows) {
        let [id, time, host, tags, size, what] = r;
        let line = format!(
            "{id:<w0$}  {time:<w1$}  {host:<w2$}  {tags:<w3$}  {size:>w4$}  {what}",
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4]
        );
        say!("{}", line.trim_end());
    }
    say!("{}", counted(snaps.len(), "snapshot"));
}

pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.2} {}", UNITS[u]) }
}

/// Benchmarks only: fill the repository with synthetic blobs (bench/index.py).
pub async fn synth(g: &Global, a: SynthArgs) -> Result<u8> {
    let repo = open(g).await?;
    let made = tresor_engine::synth::generate(&repo, a.blobs, a.blobs_per_pack).await?;
    say!("{}", serde_json::to_string(&made)?);
    Ok(0)
}

pub async fn stats(g: &Global, a: StatsArgs) -> Result<u8> {
    let repo = open(g).await?;
    let index = repo.index().await?;
    let stored: u64 = index.packs().map(|(_, s)| s).sum();
    let raw: u64 = index.blobs().map(|(_, _, e)| u64::from(e.raw_length)).sum();
    let snaps = match &a.snapshot {
        Some(spec) => vec![repo.find_snapshot(spec).await?],
        None => repo.snapshots().await?,
    };
    let (mut files, mut bytes, mut lost) = (0u64, 0u64, Vec::new());
    for s in &snaps {
        let unread = tresor_engine::walk::each(&repo, s.tree, "/", &mut |_, n| {
            if n.is_file() {
                files += 1;
                bytes += n.size;
            }
            Ok(())
        })
        .await?;
        lost.extend(crate::data::in_snapshot(s, unread));
    }
    let v = json!({
        "snapshots_count": snaps.len(),
        "total_file_count": files,
        "total_size": bytes,
        "total_blob_count": index.blob_count(),
        "total_uncompressed_size": raw,
        "total_pack_count": index.packs().count(),
        "total_stored_size": stored,
        "compression_ratio": if stored > 0 { raw as f64 / stored as f64 } else { 0.0 },
        "dedup_ratio": if raw > 0 { bytes as f64 / raw as f64 } else { 0.0 },
    });
    if g.json {
        print_json(&v)?;
        return crate::data::unread(&lost, "counted");
    }
    say!("snapshots:            {}", snaps.len());
    say!("files (all snapshots): {files}, {}", human(bytes));
    say!("unique blobs:         {}, {}", index.blob_count(), human(raw));
    say!("stored in {} packs:   {}", index.packs().count(), human(stored));
    say!("compression ratio:    {:.2}", v["compression_ratio"].as_f64().unwrap_or(0.0));
    say!("deduplication ratio:  {:.2}", v["dedup_ratio"].as_f64().unwrap_or(0.0));
    crate::data::unread(&lost, "counted")
}

pub fn parse_subset(s: &str) -> Result<ReadData> {
    if let Some((n, of)) = s.split_once('/') {
        return match (n.parse::<u32>(), of.parse::<u32>()) {
            (Ok(n), Ok(of)) if (1..=of).contains(&n) => Ok(ReadData::slice(n, of)),
            _ => bail!("--read-data-subset N/T wants 1 ≤ N ≤ T, such as 1/7"),
        };
    }
    let v: f64 =
        s.trim_end_matches('%').parse().map_err(|_| anyhow!("--read-data-subset wants a percentage such as 10% or a slice such as 1/7"))?;
    if !(0.0..=100.0).contains(&v) || v == 0.0 {
        bail!("--read-data-subset wants more than 0% and at most 100%");
    }
    Ok(ReadData::window(rand::random::<f64>(), v / 100.0))
}

/// The packs `--read-pack` names, each by its id or a prefix of it that
/// one stored pack has (found in the storage's listing, not the index,
/// which may be what is damaged); a daemon's check passes full ids, of
/// which a prune may have deleted some since (`gone_ok`: not read, no error).
async fn named_packs(repo: &Repository, named: &[String], gone_ok: bool) -> Result<tresor_engine::IdSet> {
    if named.is_empty() {
        return Ok(Default::default());
    }
    if gone_ok && let Ok(ids) = named.iter().map(|p| p.parse::<Id>()).collect::<std::result::Result<_, _>>() {
        return Ok(ids);
    }
    let stored = repo.list_ids(tresor_engine::objects::Kind::Pack).await?;
    let mut out = tresor_engine::IdSet::default();
    for p in named {
        let prefix = p.to_ascii_lowercase();
        let found: Vec<&Id> = stored.iter().filter(|id| id.to_hex().starts_with(&prefix)).take(2).collect();
        match found[..] {
            [one] => _ = out.insert(*one),
            [] => bail!("--read-pack {p}: no pack stored has this id (mistyped, or deleted by a prune)"),
            _ => bail!("--read-pack {p}: more than one pack has an id that starts so; give more digits"),
        }
    }
    Ok(out)
}

pub async fn check(g: &Global, a: CheckArgs) -> Result<u8> {
    let read_data = match (&a.read_data_subset, a.read_data) {
        // As restic: the subset alone was read, and a clean result read as a full one.
        (Some(_), true) => bail!("--read-data reads every pack and --read-data-subset a share of them: give one"),
        (Some(s), false) => parse_subset(s)?,
        (None, true) => ReadData::ALL,
        (None, false) => ReadData::NONE,
    };
    for p in &a.read_packs {
        if !(8..=64).contains(&p.len()) || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("--read-pack wants a pack's id, or its first 8 hex digits or more, not {p:?}");
        }
    }
    let repo = open(g).await?;
    let also_read = named_packs(&repo, &a.read_packs, a.gone_packs_ok).await?;
    let report = run_check(&repo, CheckOptions { read_data, also_read }).await?;
    if g.json {
        print_json(&report)?;
    } else {
        say!(
            "checked {}, {}, {} ({} read)",
            counted(report.snapshots, "snapshot"),
            counted(report.packs, "pack"),
            counted(report.blobs, "blob"),
            counted(report.packs_read, "pack")
        );
        if read_data.any() && report.packs_read == 0 && report.packs > 0 {
            // The share is taken by pack id: a small one of a small repository may hold none.
            say!("note: no pack falls in that share of the packs, so no data was read");
        }
        if !report.unindexed_packs.is_empty() {
            let n = report.unindexed_packs.len();
            say!("note: {n} packs are not indexed (left by an interrupted backup, or taken out by a repair; a prune deletes them)");
        }
        for p in &report.problems {
            say!("error: {}: {}", p.object, p.error);
            if !p.snapshots.is_empty() {
                say!("  affects snapshots: {}", p.snapshots.join(", "));
            }
            for f in p.files.iter().take(20) {
                say!("  damaged: {f}");
            }
            if p.files.len() > 20 {
                say!("  … and {} more files", p.files.len() - 20);
            }
        }
        if report.ok() {
            say!("no errors were found");
        }
        if !report.damaged_packs.is_empty() {
            let ids: Vec<String> = report.damaged_packs.iter().map(|p| format!("--read-pack {}", p.to_hex())).collect();
            say!("to read the damaged packs again: tresor check {}", ids.join(" "));
        }
        if !report.damaged_index_files.is_empty() {
            // Not `repair snapshots` first: it would take the blobs the damaged
            // index files list, still whole in their packs, for lost.
            say!("the index can be rebuilt from the packs: run `tresor repair index`, then check again");
        } else if report.problems.iter().any(|p| !p.files.is_empty()) {
            say!(
                "to keep the rest: `tresor repair snapshots --read-data` saves each affected snapshot without what is lost \
                 (with --forget it removes the damaged one, which check reports until then); the next backup then stores that data anew"
            );
        }
    }
    match report.problems.len() {
        0 => Ok(0),
        problems => Err(tresor_engine::Error::CheckFailed { problems }.into()),
    }
}

pub async fn repair(g: &Global, a: RepairArgs) -> Result<u8> {
    let repo = open(g).await?;
    let dry_run = match a.what {
        RepairWhat::Index { dry_run } => dry_run,
        RepairWhat::Snapshots { dry_run, forget, read_data } => {
            let opts = tresor_engine::repair_snapshots::RepairSnapshotsOptions { dry_run, forget, read_data };
            return repair_snapshots(g, repo, &opts).await;
        }
    };
    let report = tresor_engine::repair::repair_index(&repo, dry_run).await?;
    if g.json {
        print_json(&report)?;
    } else {
        let verb = if dry_run { "would index" } else { "indexed" };
        say!(
            "{verb} {} blobs in {} packs; wrote {} index files, removed {}",
            report.blobs,
            report.packs,
            report.index_files_written,
            report.index_files_removed
        );
        if report.lost_blobs_left_out > 0 {
            say!(
                "left out {} a repair found lost ({} whole, which a prune deletes)",
                counted(report.lost_blobs_left_out, "blob"),
                counted(report.quarantined_packs, "damaged pack")
            );
        }
        for u in &report.unreadable {
            say!("unreadable pack {u}");
        }
        for p in &report.listed_as_before {
            say!("pack {p} indexed as the old index listed them: its trailer is damaged");
        }
        if !report.listed_as_before.is_empty() {
            say!("run `tresor repair snapshots --read-data` to copy their blobs into new packs");
        }
    }
    if report.unreadable.is_empty() { Ok(0) } else { bail!("{} packs could not be read", report.unreadable.len()) }
}

async fn repair_snapshots(g: &Global, repo: Arc<Repository>, opts: &tresor_engine::repair_snapshots::RepairSnapshotsOptions) -> Result<u8> {
    let tresor_engine::repair_snapshots::RepairReport { snapshots: report, index } =
        tresor_engine::repair_snapshots::repair_snapshots(repo, opts).await?;
    if g.json {
        print_json(&report)?;
        return Ok(0);
    }
    let damaged: Vec<Id> = report.iter().map(|r| r.id).collect();
    for r in &report {
        match (r.repaired, r.earlier) {
            (Some(new), true) => {
                let then = match (damaged.contains(&new), opts.forget, opts.dry_run) {
                    (true, _, _) => "; that copy is damaged too, so it stays",
                    (false, true, false) => ", and is forgotten now",
                    (false, true, true) => " (it would be forgotten)",
                    (false, false, _) => " (forget it, or add --forget)",
                };
                say!("snapshot {} was repaired as {} before{then}; it lost:", r.id.short(), new.short())
            }
            (Some(new), false) => say!("snapshot {} repaired as {}; lost:", r.id.short(), new.short()),
            (None, _) => say!("snapshot {} would be repaired; it lost:", r.id.short()),
        }
        for p in &r.lost {
            say!("  {p}");
        }
    }
    say!("{}", counted(report.len(), "damaged snapshot"));
    if index.dropped_blobs > 0 {
        say!(
            "taken out of the index: {} lost, which the next backup of that data stores anew; {} readable from damaged packs copied to new packs",
            counted(index.dropped_blobs, "blob"),
            counted(index.copied_blobs, "blob")
        );
    }
    Ok(0)
}

/// `1 blob`, `2 blobs`, `2 classes`.
pub(crate) fn counted(n: usize, noun: &str) -> String {
    let plural = if noun.ends_with('s') { "es" } else { "s" };
    format!("{n} {noun}{}", if n == 1 { "" } else { plural })
}
