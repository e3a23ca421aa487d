//! Commands that move data: backup, restore, ls, dump, diff.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, FixedOffset, Local, NaiveDateTime, TimeZone};
use serde_json::json;
use tresor_engine::backup::{BackupOptions, Progress, backup as run_backup};
use tresor_engine::restore::{RestoreOptions, restore as run_restore};
use tresor_engine::walk::{find, list};
use tresor_engine::{Node, NodeKind};

use crate::commands::{human, open, print_json};
use crate::opts::{BackupArgs, DiffArgs, DumpArgs, Global, LsArgs, RestoreArgs};

pub fn parse_time(s: &str) -> Result<DateTime<FixedOffset>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
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
    result
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
        && let Some(url) = one.to_str().filter(|u| tresor_sources::is_source(u))
    {
        let source = tresor_sources::from_url(url)?;
        return backup_source(g, a, source).await;
    }
    if a.stdin != a.paths.is_empty() {
        bail!("give either paths to back up or --stdin");
    }
    let excludes = read_excludes(&a)?;
    let paths: Vec<PathBuf> =
        a.paths.iter().map(|p| std::path::absolute(p).with_context(|| format!("bad path {}", p.display()))).collect::<Result<_>>()?;
    for p in &paths {
        std::fs::symlink_metadata(p).with_context(|| format!("cannot back up {}", p.display()))?;
    }
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
    let name = if a.stdin_filename == "stdin" { stream.name } else { a.stdin_filename.clone() };
    let host = a.host.clone().unwrap_or_else(tresor_engine::hostname);
    let info = Box::new(move || Ok(source.info()));
    Ok(BackupOptions { host: Some(host), time, stdin: Some((name, stream.reader)), source: Some(info), ..Default::default() })
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
        println!("Files: {} new, {} changed, {} unmodified", s.files_new, s.files_changed, s.files_unmodified);
        println!("Dirs:  {} new, {} changed, {} unmodified", s.dirs_new, s.dirs_changed, s.dirs_unmodified);
        println!("Added to the repository: {} ({} stored)", human(s.data_added), human(s.data_added_packed));
        println!("processed {} files, {} in {:.2}s", s.total_files_processed, human(s.total_bytes_processed), s.total_duration);
        println!("snapshot {} saved", snap.id.short());
    }
    if !snap.errors.is_empty() {
        eprintln!("warning: {} files could not be read and are missing from snapshot {}", snap.errors.len(), snap.id.short());
        return Ok((crate::EXIT_INCOMPLETE, snap.id));
    }
    Ok((0, snap.id))
}

pub async fn restore(g: &Global, a: RestoreArgs) -> Result<u8> {
    let repo = open(g).await?;
    let snap = repo.find_snapshot(&a.snapshot).await?;
    if let Some(to) = a.to.as_deref().filter(|t| t.starts_with("k8s://")) {
        let to = to.to_string();
        return crate::k8s::restore(g, &repo, &snap, &to, &a).await;
    }
    let Some(target) = a.target.clone() else {
        let to = a.to.as_deref().expect("clap requires --target or --to");
        return crate::sources::restore_to(g, &repo, &snap, to, a.flush, a.jobs).await;
    };
    if (a.verify || a.verify_only) && !(a.includes.is_empty() && a.excludes.is_empty()) {
        bail!("--verify checks a whole restore: leave out --include and --exclude");
    }
    if a.verify_only {
        return verify(g, &repo, &snap, &target).await;
    }
    let progress = Arc::new(Progress::default());
    let bar = progress_bar(g, progress.clone(), "restored");
    let opts = RestoreOptions { target: target.clone(), includes: a.includes, excludes: a.excludes, progress: Some(progress) };
    let summary = run_restore(repo.clone(), &snap, &opts).await;
    if let Some(b) = bar {
        b.abort();
    }
    let summary = summary?;
    if g.json {
        print_json(
            &json!({"message_type": "summary", "snapshot_id": snap.id, "files_restored": summary.files_restored, "dirs_restored": summary.dirs_restored, "bytes_restored": summary.bytes_restored, "errors": summary.errors}),
        )?;
    } else {
        println!(
            "restored snapshot {} to {}: {} files, {} dirs, {}",
            snap.id.short(),
            target.display(),
            summary.files_restored,
            summary.dirs_restored,
            human(summary.bytes_restored)
        );
    }
    for e in &summary.errors {
        eprintln!("error: {e}");
    }
    if !summary.errors.is_empty() {
        bail!("{} errors during restore", summary.errors.len());
    }
    if a.verify {
        return verify(g, &repo, &snap, &target).await;
    }
    Ok(0)
}

/// Read a restored tree back and check it against the snapshot.
async fn verify(g: &Global, repo: &tresor_engine::Repository, snap: &tresor_engine::Snapshot, target: &std::path::Path) -> Result<u8> {
    let report = tresor_engine::verify::verify_restored(repo, snap, target).await?;
    if let Some(first) = report.mismatched.first() {
        for m in &report.mismatched {
            eprintln!("differs: {m}");
        }
        bail!("{} of {} restored files differ from the snapshot; first: {first}", report.mismatched.len(), report.files);
    }
    if g.json {
        print_json(&json!({"message_type": "verified", "snapshot_id": snap.id, "files": report.files, "bytes": report.bytes}))?;
    } else {
        println!("verified {} files ({}) against the snapshot's content hashes", report.files, human(report.bytes));
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
    let snap = repo.find_snapshot(&a.snapshot).await?;
    let entries = list(&repo, snap.tree, a.path.as_deref().unwrap_or("/")).await?;
    let mut out = std::io::stdout().lock();
    for (path, n) in entries {
        if g.json {
            writeln!(
                out,
                "{}",
                json!({"path": path, "type": n.kind, "mode": n.mode, "size": n.size, "uid": n.uid, "gid": n.gid, "mtime": n.mtime, "links": n.links})
            )?;
        } else if a.long {
            let t = DateTime::from_timestamp_nanos(n.mtime).with_timezone(&Local);
            writeln!(
                out,
                "{}{:04o} {:>6} {:>6} {:>12} {} {}",
                kind_char(&n),
                n.mode,
                n.uid,
                n.gid,
                n.size,
                t.format("%Y-%m-%d %H:%M:%S"),
                path.display()
            )?;
        } else {
            writeln!(out, "{}", path.display())?;
        }
    }
    Ok(0)
}

pub async fn dump(g: &Global, a: DumpArgs) -> Result<u8> {
    let repo = open(g).await?;
    let snap = repo.find_snapshot(&a.snapshot).await?;
    let node = find(&repo, snap.tree, &a.path).await?.with_context(|| format!("{:?} names the snapshot root, not a file", a.path))?;
    if !node.is_file() {
        bail!("{} is not a regular file", a.path);
    }
    let mut out = std::io::stdout().lock();
    for id in &node.content {
        out.write_all(&repo.load_blob(id).await?)?;
    }
    out.flush()?;
    Ok(0)
}

fn same_content(a: &Node, b: &Node) -> bool {
    a.kind == b.kind
        && a.content == b.content
        && a.subtree.is_some() == b.subtree.is_some()
        && a.link_target == b.link_target
        && a.mode == b.mode
        && a.mtime == b.mtime
        && a.uid == b.uid
        && a.gid == b.gid
}

pub async fn diff(g: &Global, a: DiffArgs) -> Result<u8> {
    let repo = open(g).await?;
    let (sa, sb) = (repo.find_snapshot(&a.a).await?, repo.find_snapshot(&a.b).await?);
    let left: BTreeMap<PathBuf, Node> = list(&repo, sa.tree, "/").await?.into_iter().collect();
    let right: BTreeMap<PathBuf, Node> = list(&repo, sb.tree, "/").await?.into_iter().collect();
    let mut changes = Vec::new();
    for (p, n) in &left {
        match right.get(p) {
            None => changes.push(("-", p)),
            Some(m) if !n.is_dir() && !same_content(n, m) => changes.push(("M", p)),
            _ => {}
        }
    }
    changes.extend(right.keys().filter(|p| !left.contains_key(*p)).map(|p| ("+", p)));
    changes.sort_by(|x, y| x.1.cmp(y.1));
    for (m, p) in &changes {
        if g.json {
            println!("{}", json!({"modifier": m, "path": p}));
        } else {
            println!("{m}    {}", p.display());
        }
    }
    if !g.json {
        let count = |k: &str| changes.iter().filter(|(m, _)| *m == k).count();
        println!("{} added, {} removed, {} modified", count("+"), count("-"), count("M"));
    }
    Ok(0)
}
