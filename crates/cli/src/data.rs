//! Commands that move data: backup, restore, ls, dump, diff.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, FixedOffset, Local, NaiveDateTime, TimeZone};
use serde_json::json;
use tresor_controller::secret_url::SecretUrl;
use tresor_engine::backup::{BackupOptions, Progress, backup as run_backup};
use tresor_engine::restore::{RestoreOptions, RestoreSummary, restore as run_restore};
use tresor_engine::walk::Unread;
use tresor_engine::{Node, NodeKind, Repository, Snapshot};

use crate::commands::{human, open, print_json};
use crate::opts::{BackupArgs, DiffArgs, DumpArgs, FindArgs, Global, LsArgs, RestoreArgs, SelectArgs};

pub fn parse_time(s: &str) -> Result<DateTime<FixedOffset>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t);
    }
    // As psql prints a timestamptz: `2026-12-07 20:24:10.2+00`.
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Ok(t);
    }
    let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .with_context(|| format!("cannot read time {s:?} (use RFC 3339 or \"YYYY-MM-DD HH:MM:SS\")"))?;
    let local = Local.from_local_datetime(&naive).single().with_context(|| format!("time {s:?} is ambiguous in the local time zone"))?;
    Ok(local.fixed_offset())
}

/// A progress line on a terminal, nothing otherwise.
fn progress_bar(g: &Global, p: Arc<Progress>, verb: &'static str) -> Option<tokio::task::JoinHandle<()>> {
    if g.quiet || g.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    Some(tokio::spawn(async move {
        loop {
            let files = p.files.load(std::sync::atomic::Ordering::Relaxed);
            let bytes = p.bytes.load(std::sync::atomic::Ordering::Relaxed);
            bar.set_message(format!("{verb} {files} files, {}", human(bytes)));
            bar.tick();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }))
}

fn read_excludes(a: &BackupArgs) -> Result<Vec<String>> {
    let mut out = a.excludes.clone();
    for f in &a.exclude_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read exclude file {}", f.display()))?;
        out.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from));
    }
    Ok(out)
}

/// A backup between its hooks. A failed pre-hook stops it (or, with
/// `--on-error continue`, is a warning); the post-hook always runs.
pub async fn backup(g: &Global, a: BackupArgs) -> Result<u8> {
    stored_name(&a.stdin_filename, "--stdin-filename")?;
    let timeout = crate::commands::parse_duration(&a.hook_timeout)?;
    let strict = a.on_error == "fail";
    let hook = |which: &str, cmd: &str, env: &[(&str, &str)]| -> Result<()> {
        match tokio::task::block_in_place(|| tresor_sources::run_hook(which, cmd, timeout, env)) {
            Err(e) if !strict => {
                eprintln!("warning: {e}");
                Ok(())
            }
            r => Ok(r?),
        }
    };
    let wait = crate::commands::parse_duration(&a.archive_timeout)?;
    let pgbase = match a.paths.as_slice() {
        [one] => one.to_str().filter(|u| u.starts_with("pgbase://") && !wait.is_zero()).map(String::from),
        _ => None,
    };
    if let Some(cmd) = &a.pre_hook {
        hook("pre", cmd, &[("TRESOR_HOOK", "pre")])?;
    }
    let post = a.post_hook.clone();
    let (result, id) = match backup_once(g, a).await {
        Ok((code, id)) => (Ok(code), Some(id)),
        Err(e) => (Err(e), None),
    };
    if let Some(cmd) = &post {
        let status = if result.is_ok() { "success" } else { "failure" };
        let id = id.map(|i| i.to_hex()).unwrap_or_default();
        let hooked = hook("post", cmd, &[("TRESOR_HOOK", "post"), ("TRESOR_BACKUP_STATUS", status), ("TRESOR_SNAPSHOT_ID", &id)]);
        if result.is_ok() {
            hooked?;
        }
    }
    // After the post-hook, which must not wait on it: a base backup whose
    // end is not archived recovers no further than its end, said and
    // failed (the daemon's scheduled ones too, so it alerts).
    match (result, id, &pgbase) {
        (Ok(code), Some(id), Some(url)) => {
            let repo = open(g).await?;
            crate::pg::archive_check(&repo, &repo.load_snapshot(&id).await?, url, wait).await.map(|()| code)
        }
        (result, ..) => result,
    }
}

async fn backup_once(g: &Global, a: BackupArgs) -> Result<(u8, tresor_engine::Id)> {
    if let [one] = a.paths.as_slice()
        && let Some(url) = one.to_str().filter(|u| u.starts_with("k8s://"))
    {
        let url = url.to_string();
        return backup_k8s(g, a, &url).await;
    }
    if let [one] = a.paths.as_slice()
        && let Some(url) = one.to_str().filter(|u| u.starts_with("redis-aof:"))
    {
        let aof = tresor_sources::AofDir::open(url)?;
        let time = a.time.as_deref().map(parse_time).transpose()?;
        let paths = vec![std::path::absolute(aof.dir())?];
        let repo = open(g).await?;
        let host = a.host.clone().unwrap_or_else(tresor_engine::hostname);
        let opts = BackupOptions { paths, host: Some(host), time, source: Some(Box::new(move || aof.confirm())), ..Default::default() };
        return run_and_report(g, repo, a, opts).await;
    }
    if let [one] = a.paths.as_slice()
        && let Some(url) = one.to_str().filter(|u| tresor_sources::bucket::is_bucket(u))
    {
        let url = url.to_string();
        return crate::sources::backup_bucket(g, a, &url).await;
    }
    if let [one] = a.paths.as_slice()
        && let Some(url) = one.to_str().filter(|u| tresor_sources::is_source(u))
    {
        let source = tresor_sources::from_url(url)?;
        return backup_source(g, a, source).await;
    }
    if a.stdin != a.paths.is_empty() {
        bail!("give either paths to back up or --stdin");
    }
    let excludes = read_excludes(&a)?;
    let mut paths: Vec<PathBuf> =
        a.paths.iter().map(|p| std::path::absolute(p).with_context(|| format!("bad path {}", p.display()))).collect::<Result<_>>()?;
    for (p, given) in paths.iter().zip(&a.paths) {
        // A mistyped source URL is taken for a path: named as given, redacted.
        std::fs::symlink_metadata(p).with_context(|| format!("cannot back up {}", tresor_storage::redact(&given.display().to_string())))?;
    }
    // As the snapshot will record them: the parent is found by them.
    tresor_engine::backup::resolve_parents(&mut paths)?;
    let time = a.time.as_deref().map(parse_time).transpose()?;
    let repo = open(g).await?;
    let host = a.host.clone().unwrap_or_else(tresor_engine::hostname);
    let parent = match (&a.parent, a.force) {
        (_, true) => None,
        (Some(spec), _) => Some(repo.find_snapshot(spec).await?),
        (None, _) => {
            let wanted: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            repo.snapshots().await?.into_iter().rev().find(|s| s.hostname == host && s.paths == wanted && !a.stdin)
        }
    };
    let stdin: Option<(String, Box<dyn std::io::Read + Send>)> =
        a.stdin.then(|| (a.stdin_filename.clone(), Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>));
    let opts = BackupOptions { paths, host: Some(host), excludes, parent, time, stdin, ..Default::default() };
    run_and_report(g, repo, a, opts).await
}

/// Back up a data source (`redis://…`, `command:…`): its one stream, checked
/// while it flows; the snapshot records the source and its consistency point.
async fn backup_source(g: &Global, a: BackupArgs, source: Box<dyn tresor_sources::Source>) -> Result<(u8, tresor_engine::Id)> {
    let time = a.time.as_deref().map(parse_time).transpose()?;
    let repo = open(g).await?;
    let opts = source_options(source, &a, time)?;
    run_and_report(g, repo, a, opts).await
}

/// Kubernetes resources: every matching object as a YAML file. Types the
/// API refused are named, and the backup is partial (exit 3).
async fn backup_k8s(g: &Global, a: BackupArgs, url: &str) -> Result<(u8, tresor_engine::Id)> {
    let time = a.time.as_deref().map(parse_time).transpose()?;
    let (files, info) = tresor_sources::k8s::collect(url, &a.k8s.filters()).await?;
    let refused: Vec<String> = info
        .consistency
        .get("refused")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let repo = open(g).await?;
    let host = a.host.clone().unwrap_or_else(tresor_engine::hostname);
    let opts =
        BackupOptions { host: Some(host), time, generated: Some(files), source: Some(Box::new(move || Ok(info))), ..Default::default() };
    let (code, id) = run_and_report(g, repo, a, opts).await?;
    for r in &refused {
        eprintln!("warning: not backed up: {r}");
    }
    if !refused.is_empty() {
        eprintln!("warning: partial backup: the API refused {} resource type(s); snapshot {} holds the rest", refused.len(), id.short());
        return Ok((crate::EXIT_INCOMPLETE, id));
    }
    Ok((code, id))
}

/// Open a source and describe its stream as a backup of one file.
pub fn source_options(
    mut source: Box<dyn tresor_sources::Source>,
    a: &BackupArgs,
    time: Option<DateTime<FixedOffset>>,
) -> Result<BackupOptions> {
    let stream = tokio::task::block_in_place(|| source.open())?;
    let name = if a.stdin_filename == "stdin" {
        stored_name(&stream.name, "the stream's name")?;
        stream.name
    } else {
        a.stdin_filename.clone()
    };
    let host = a.host.clone().unwrap_or_else(tresor_engine::hostname);
    let info = Box::new(move || Ok(source.info()));
    Ok(BackupOptions { host: Some(host), time, stdin: Some((name, stream.reader)), source: Some(info), ..Default::default() })
}

/// A stream is stored as one entry of the snapshot's root, and `dump`,
/// `restore` and `check` refuse a tree whose entry would leave its
/// directory: such a name would be saved as a snapshot nothing can read.
/// `what` says where the name came from (a source names its stream after
/// its database, which may hold a `/`).
pub fn stored_name(name: &str, what: &str) -> Result<()> {
    if !tresor_engine::walk::is_safe_name(name.as_bytes()) {
        bail!(
            "{what} {name:?} is not a file name: it must not be empty, \".\" or \"..\", nor hold a \"/\" (give e.g. --stdin-filename dump.sql)"
        );
    }
    Ok(())
}

pub async fn run_and_report(
    g: &Global,
    repo: Arc<tresor_engine::Repository>,
    a: BackupArgs,
    mut opts: BackupOptions,
) -> Result<(u8, tresor_engine::Id)> {
    let progress = Arc::new(Progress::default());
    let bar = progress_bar(g, progress.clone(), "backed up");
    opts.tags = a.tags;
    opts.one_file_system = a.one_file_system;
    opts.progress = Some(progress);
    opts.threads = a.threads.filter(|&n| n > 0);
    let snap = run_backup(repo, opts).await;
    if let Some(b) = bar {
        b.abort();
    }
    let snap = snap?;
    let s = snap.summary.clone().unwrap_or_default();
    if g.json {
        print_json(&json!({
            "message_type": "summary",
            "snapshot_id": snap.id,
            "files_new": s.files_new, "files_changed": s.files_changed, "files_unmodified": s.files_unmodified,
            "dirs_new": s.dirs_new, "dirs_changed": s.dirs_changed, "dirs_unmodified": s.dirs_unmodified,
            "data_blobs": s.data_blobs, "tree_blobs": s.tree_blobs,
            "data_added": s.data_added, "data_added_packed": s.data_added_packed,
            "total_files_processed": s.total_files_processed, "total_bytes_processed": s.total_bytes_processed,
            "total_duration": s.total_duration, "errors": snap.errors.len(),
        }))?;
    } else {
        say!("Files: {} new, {} changed, {} unmodified", s.files_new, s.files_changed, s.files_unmodified);
        say!("Dirs:  {} new, {} changed, {} unmodified", s.dirs_new, s.dirs_changed, s.dirs_unmodified);
        say!("Added to the repository: {} ({} stored)", human(s.data_added), human(s.data_added_packed));
        say!("processed {} files, {} in {:.2}s", s.total_files_processed, human(s.total_bytes_processed), s.total_duration);
        say!("snapshot {} saved", snap.id.short());
    }
    if !snap.errors.is_empty() {
        eprintln!("warning: {} files could not be read and are missing from snapshot {}", snap.errors.len(), snap.id.short());
        return Ok((crate::EXIT_INCOMPLETE, snap.id));
    }
    Ok((0, snap.id))
}

/// The snapshot a `SNAPSHOT[:PATH]` argument names, `latest` narrowed by
/// the filters, and the folder in it.
async fn resolve<'a>(repo: &Repository, spec: &'a str, select: &SelectArgs) -> Result<(Snapshot, Option<&'a str>)> {
    let (spec, folder) = tresor_engine::select::split_spec(spec);
    Ok((repo.find_filtered(spec, &select.filter()).await?, folder))
}

/// A path of the snapshot, below the folder a `SNAPSHOT:PATH` argument named.
fn in_folder(folder: Option<&str>, path: &str) -> String {
    match folder {
        Some(f) => format!("{}/{}", f.trim_end_matches('/'), path.trim_start_matches('/')),
        None => path.to_string(),
    }
}

/// A Kubernetes restore's options given to a restore that is none: refused,
/// not ignored.
fn kubernetes_only(a: &RestoreArgs) -> Result<()> {
    let given = [
        ("--server-dry-run", a.server_dry_run),
        ("--rehearsal", a.rehearsal),
        ("--namespace-mapping", !a.namespace_mapping.is_empty()),
        ("--storage-class-mapping", !a.storage_class_mapping.is_empty()),
        ("--image-registry-mapping", !a.image_registry_mapping.is_empty()),
        ("--transforms", a.transforms.is_some()),
    ];
    match given.iter().find(|(_, set)| *set) {
        Some((flag, _)) => bail!("{flag} works with --to k8s:// only"),
        None => Ok(()),
    }
}

pub async fn restore(g: &Global, mut a: RestoreArgs) -> Result<u8> {
    if !a.to.as_ref().is_some_and(|t| t.expose().starts_with("k8s://")) {
        kubernetes_only(&a)?;
        // Anywhere but a cluster a dry run is the preview: with --target it
        // restored, and with --delete deleted, for real.
        a.preview |= a.dry_run;
    }
    let repo = open(g).await?;
    let (snap, folder) = resolve(&repo, &a.snapshot, &a.select).await?;
    if folder.is_some() && a.to.is_some() {
        bail!("SNAPSHOT:PATH restores a folder into --target; --to takes a whole data-source snapshot");
    }
    let to = a.to.as_ref().map(SecretUrl::expose);
    if let Some(to) = to.filter(|t| t.starts_with("k8s://")) {
        let to = to.to_string();
        // A preview is the k8s restore's look at each object without a write.
        let a = RestoreArgs { dry_run: a.dry_run || a.preview, ..a };
        return crate::k8s::restore(g, &repo, &snap, &to, &a).await;
    }
    if let (true, Some(to)) = (a.preview, &a.to) {
        return crate::preview::service(g, &snap, to);
    }
    if a.preview {
        return crate::preview::directory(g, &repo, &snap, folder, &a).await;
    }
    if let Some(to) = to.filter(|t| tresor_sources::bucket::is_bucket(t)) {
        return crate::sources::restore_bucket(g, &repo, &snap, to, &a).await;
    }
    let Some(target) = a.target.clone() else {
        let to = to.expect("clap requires --target or --to");
        return crate::sources::restore_to(g, &repo, &snap, to, a.flush, a.jobs).await;
    };
    if (a.verify || a.verify_only) && !(a.includes.is_empty() && a.excludes.is_empty()) {
        bail!("--verify checks a whole restore: leave out --include and --exclude");
    }
    let tree = match folder {
        Some(f) => tresor_engine::walk::folder(&repo, snap.tree, f).await?,
        None => snap.tree,
    };
    if a.verify_only {
        return verify(g, &repo, &snap, tree, &target).await;
    }
    let progress = Arc::new(Progress::default());
    let bar = progress_bar(g, progress.clone(), "restored");
    // With --delete, an include the snapshot lacks asks the target to lack it too.
    let filtered = filters_named(&a.includes, &a.excludes).filter(|_| !a.delete);
    let opts = RestoreOptions {
        target: target.clone(),
        subfolder: folder.map(String::from),
        includes: a.includes,
        excludes: a.excludes,
        overwrite: a.overwrite.parse()?,
        delete: a.delete,
        progress: Some(progress),
    };
    let started = std::time::Instant::now();
    let summary = run_restore(repo.clone(), &snap, &opts).await;
    if let Some(b) = bar {
        b.abort();
    }
    let summary = summary.with_context(|| format!("restore of snapshot {} to {} failed", snap.id.short(), target.display()))?;
    if let Some(filters) = filtered.filter(|_| summary.selected == 0) {
        bail!("nothing in snapshot {} is selected by {filters} ({}); nothing was restored", snap.id.short(), holds(&snap));
    }
    report_restore(g, &snap, &target, &summary, started.elapsed().as_secs_f64())?;
    if a.verify {
        return verify(g, &repo, &snap, tree, &target).await;
    }
    Ok(0)
}

/// The filters given, as the user wrote them (`None`: no filter).
fn filters_named(includes: &[String], excludes: &[String]) -> Option<String> {
    let named = |flag: &str, v: &[String]| v.iter().map(|p| format!("{flag} '{p}'")).collect::<Vec<_>>();
    let all = [named("--include", includes), named("--exclude", excludes)].concat();
    (!all.is_empty()).then(|| all.join(" "))
}

/// The restore's summary; a restore with errors ends saying it failed.
fn report_restore(g: &Global, snap: &Snapshot, target: &std::path::Path, s: &RestoreSummary, seconds: f64) -> Result<()> {
    if g.json {
        let mut v = serde_json::to_value(s)?;
        v["message_type"] = json!("summary");
        v["snapshot_id"] = json!(snap.id);
        v["seconds_elapsed"] = json!(seconds);
        print_json(&v)?;
    }
    for e in &s.errors {
        eprintln!("error: {e}");
    }
    if !s.errors.is_empty() {
        if !g.json {
            say!(
                "restore of snapshot {} to {} failed: {} of {} files restored",
                snap.id.short(),
                target.display(),
                s.files_restored,
                s.total_files
            );
        }
        bail!("{} during restore", crate::commands::counted(s.errors.len(), "error"));
    }
    if !g.json {
        let mut line = format!(
            "restored snapshot {} to {}: {} files, {} dirs, {}",
            snap.id.short(),
            target.display(),
            s.files_restored,
            s.dirs_restored,
            human(s.bytes_restored)
        );
        if s.files_skipped > 0 {
            line += &format!("; {} files left as they were", s.files_skipped);
        }
        if s.files_deleted > 0 {
            line += &format!("; {} deleted", s.files_deleted);
        }
        say!("{line}");
    }
    Ok(())
}

/// Read a restored tree back and check it against the snapshot.
async fn verify(g: &Global, repo: &Repository, snap: &Snapshot, tree: tresor_engine::Id, target: &std::path::Path) -> Result<u8> {
    let report = tresor_engine::verify::verify_restored(repo, tree, target).await?;
    report.mismatched.iter().for_each(|m| eprintln!("differs: {m}"));
    let lost = name_lost(&report.unread, |u| u.to_string(), DIRECTORIES, "could not be read");
    if let Some(first) = report.mismatched.first() {
        bail!("{} of {} restored entries differ from the snapshot; first: {first}", report.mismatched.len(), report.entries);
    }
    if let Some(count) = lost {
        bail!("{count}");
    }
    if g.json {
        print_json(&json!({"message_type": "verified", "snapshot_id": snap.id, "files": report.files, "bytes": report.bytes}))?;
    } else {
        say!("verified {} files ({}) against the snapshot's content hashes", report.files, human(report.bytes));
    }
    Ok(0)
}

fn kind_char(n: &Node) -> char {
    match n.kind {
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Dev => 'b',
        NodeKind::Chardev => 'c',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 's',
        NodeKind::File => '-',
    }
}

pub async fn ls(g: &Global, a: LsArgs) -> Result<u8> {
    let repo = open(g).await?;
    let (snap, folder) = resolve(&repo, &a.snapshot, &a.select).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let base = in_folder(folder, a.path.as_deref().unwrap_or("/"));
    let lost = tresor_engine::walk::each(&repo, snap.tree, &base, &mut |path, n| {
        writeln!(out, "{}", ls_line(g.json, a.long, path, n)).map_err(tresor_engine::Error::Stream)
    })
    .await
    .map_err(|e| not_in(&snap, e))?;
    out.flush()?;
    unread(&in_snapshot(&snap, lost), "listed")
}

/// A path `snap` lacks, named with the snapshot and the paths it holds
/// (`latest` may be another backup's than meant).
fn not_in(snap: &Snapshot, e: tresor_engine::Error) -> anyhow::Error {
    match e {
        tresor_engine::Error::NoSuchPath(p) => anyhow::anyhow!("path {p:?} is not in snapshot {} ({})", snap.id.short(), holds(snap)),
        e => e.into(),
    }
}

/// What a snapshot holds, for a message that says it lacks something.
fn holds(snap: &Snapshot) -> String {
    match snap.paths.is_empty() {
        true => format!("a {} backup, of no paths", snap.source.kind),
        false => format!("its paths: {}", snap.paths.join(", ")),
    }
}

/// What a reader of `snap` went on without, each named with the snapshot.
pub fn in_snapshot(snap: &Snapshot, lost: Vec<Unread>) -> Vec<(String, Unread)> {
    lost.into_iter().map(|u| (format!("snapshot {}: ", snap.id.short()), u)).collect()
}

/// Name each damaged directory a reader went on without (after what it
/// did print), each after its prefix; the command then fails.
pub fn unread(lost: &[(String, Unread)], not: &str) -> Result<u8> {
    let line = |(prefix, u): &(String, Unread)| format!("{prefix}{}: its contents were not {not}: {}", u.path.display(), u.error);
    match name_lost(lost, line, DIRECTORIES, "could not be read") {
        None => Ok(0),
        Some(count) => bail!("{count}"),
    }
}

const DIRECTORIES: [&str; 2] = ["directory", "directories"];

/// Names each thing a command went on without, one `error:` line each
/// after what it did print, and returns how many there were as the
/// message the command then fails with; `noun` is singular and plural.
pub fn name_lost<T>(lost: &[T], line: impl Fn(&T) -> String, noun: [&str; 2], verdict: &str) -> Option<String> {
    lost.iter().for_each(|t| eprintln!("error: {}", line(t)));
    match lost.len() {
        0 => None,
        1 => Some(format!("1 {} {verdict}", noun[0])),
        n => Some(format!("{n} {} {verdict}", noun[1])),
    }
}

/// One node as `ls` prints it: a path, a long line or a JSON object.
fn ls_line(json: bool, long: bool, path: &std::path::Path, n: &Node) -> String {
    if json {
        json!({"message_type": "node", "struct_type": "node", "name": n.name, "path": path.to_string_lossy(), "type": n.kind, "mode": n.mode, "size": n.size, "uid": n.uid, "gid": n.gid, "mtime": n.mtime, "links": n.links}).to_string()
    } else if long {
        let t = DateTime::from_timestamp_nanos(n.mtime).with_timezone(&Local);
        format!(
            "{}{:04o} {:>6} {:>6} {:>12} {} {}",
            kind_char(n),
            n.mode,
            n.uid,
            n.gid,
            n.size,
            t.format("%Y-%m-%d %H:%M:%S"),
            path.display()
        ) + &n.os_link_target().map(|t| format!(" -> {}", std::path::Path::new(&t).display())).unwrap_or_default()
    } else {
        path.display().to_string()
    }
}

pub async fn dump(g: &Global, a: DumpArgs) -> Result<u8> {
    let repo = open(g).await?;
    let (snap, folder) = resolve(&repo, &a.snapshot, &a.select).await?;
    let mut path = std::ffi::OsString::from(in_folder(folder, ""));
    path.push(&a.path);
    let node = tresor_engine::walk::find(&repo, snap.tree, &path)
        .await
        .map_err(|e| not_in(&snap, e))?
        .with_context(|| format!("{path:?} names the snapshot root, not a file"))?;
    if !node.is_file() {
        bail!("{} is not a regular file", a.path.to_string_lossy());
    }
    let mut out = std::io::stdout().lock();
    for id in &node.content {
        out.write_all(&repo.load_blob(id).await?)?;
    }
    out.flush()?;
    Ok(0)
}

pub async fn diff(g: &Global, a: DiffArgs) -> Result<u8> {
    let repo = open(g).await?;
    let ((sa, fa), (sb, fb)) = (resolve(&repo, &a.a, &a.select).await?, resolve(&repo, &a.b, &a.select).await?);
    let left = tresor_engine::walk::folder(&repo, sa.tree, fa.unwrap_or("/")).await?;
    let right = tresor_engine::walk::folder(&repo, sb.tree, fb.unwrap_or("/")).await?;
    let mut counts = [0usize; 3];
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let lost = tresor_engine::diff::diff(&repo, left, right, &mut |change, path| {
        counts[change as usize] += 1;
        let line = match g.json {
            true => json!({"message_type": "change", "modifier": change.modifier(), "path": path.to_string_lossy()}).to_string(),
            false => format!("{}    {}", change.modifier(), path.display()),
        };
        writeln!(out, "{line}").map_err(tresor_engine::Error::Stream)
    })
    .await?;
    if !g.json {
        let [added, removed, modified] = counts;
        writeln!(out, "{added} added, {removed} removed, {modified} modified")?;
    }
    out.flush()?;
    let lost: Vec<_> = lost.into_iter().map(|u| (String::new(), u)).collect();
    unread(&lost, "compared")
}

/// Every snapshot the filters pass, oldest first, searched for the
/// patterns; a snapshot with matches is named before them.
pub async fn find(g: &Global, a: FindArgs) -> Result<u8> {
    let repo = open(g).await?;
    let snaps = tresor_engine::select::filter(repo.snapshots().await?, &a.select.filter(), false);
    let mut finder = tresor_engine::find::Finder::new(&repo, &a.patterns)?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let (mut matches, mut holding, mut lost) = (0, 0, Vec::new());
    for snap in &snaps {
        let mut first = true;
        let found = finder
            .search(snap.tree, &mut |path, n| {
                if first && !g.json {
                    let when = snap.time.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S");
                    writeln!(out, "Found matching entries in snapshot {} from {when}", snap.id.short()).map_err(tresor_engine::Error::Stream)?;
                }
                first = false;
                let line = match g.json {
                    true => json!({"message_type": "match", "snapshot_id": snap.id, "path": path.to_string_lossy(), "type": n.kind, "size": n.size, "mtime": n.mtime}).to_string(),
                    false => ls_line(false, a.long, path, n),
                };
                writeln!(out, "{line}").map_err(tresor_engine::Error::Stream)
            })
            .await?;
        matches += found.matches;
        holding += u64::from(found.matches > 0);
        lost.extend(in_snapshot(snap, found.unread));
    }
    if !g.json {
        writeln!(out, "{matches} matches in {holding} of {} snapshots", snaps.len())?;
    }
    out.flush()?;
    unread(&lost, "searched")
}
