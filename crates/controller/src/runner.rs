//! Running one job: a `tresor` child process with the plan's settings,
//! its JSON summary read back, and a failure reduced to a typed reason.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;

use crate::plan::{Class, OnError, Repository, SourceSpec};
use crate::state::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Backup,
    Forget,
    Copy,
    Prune,
    Restore,
    Drill,
}

/// What a restore job restores, and where to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSpec {
    /// A snapshot id; default: the source's newest backup.
    pub snapshot: Option<String>,
    /// A service (`redis://…`, `postgres://…/DB`, `etcd-data:DIR`, `command:…`) …
    pub to: Option<String>,
    /// … or a directory for the raw files.
    pub target: Option<String>,
    #[serde(default)]
    pub flush: bool,
    /// Without a snapshot id: the newest backup of the source from one of
    /// these hosts, with one of these tag groups (`a,b`: both), of all
    /// these paths, as restic narrows `latest`.
    #[serde(default)]
    pub host: Vec<String>,
    #[serde(default)]
    pub tag: Vec<String>,
    #[serde(default)]
    pub path: Vec<String>,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Backup => "backup",
            Kind::Forget => "forget",
            Kind::Copy => "copy",
            Kind::Prune => "prune",
            Kind::Restore => "restore",
            Kind::Drill => "drill",
        }
    }
}

/// Everything one run needs, resolved from the plan.
#[derive(Debug, Clone)]
pub struct Work {
    pub kind: Kind,
    /// The source's name (for `prune`: the repository's).
    pub name: String,
    pub class: String,
    pub source: Option<SourceSpec>,
    pub class_spec: Option<Class>,
    pub repo: Repository,
    pub offsite: Option<Repository>,
    pub timeout: Option<Duration>,
    pub restore: Option<RestoreSpec>,
    /// The plan file (a drill reads it in its own process).
    pub plan_file: PathBuf,
}

/// Runs `tresor` (this very program, as a child).
#[derive(Debug, Clone)]
pub struct Runner {
    pub exe: PathBuf,
}

/// The options that point a `tresor` run at a repository, quietly.
pub fn repo_args(repo: &Repository) -> Vec<String> {
    vec!["--repo".into(), repo.url.clone(), "--password-file".into(), repo.password_file.display().to_string(), "--quiet".into()]
}

fn tag_args(w: &Work) -> Vec<String> {
    vec!["--tag".into(), format!("source={}", w.name)]
}

/// `restore latest` narrowed to the source's own backups: its tag joins
/// every tag group asked for (a repeated `--tag` means either).
fn latest_of(w: &Work, r: &RestoreSpec) -> Vec<String> {
    let own = format!("source={}", w.name);
    let mut a = vec!["restore".to_string(), "latest".into()];
    if r.tag.is_empty() {
        a.extend(["--tag".into(), own.clone()]);
    }
    for group in &r.tag {
        a.extend(["--tag".into(), format!("{own},{group}")]);
    }
    for (flag, values) in [("--host", &r.host), ("--path", &r.path)] {
        for v in values {
            a.extend([flag.to_string(), v.clone()]);
        }
    }
    a
}

impl Runner {
    fn args(&self, w: &Work) -> Vec<String> {
        let mut a = repo_args(&w.repo);
        a.push("--json".into());
        match w.kind {
            Kind::Backup if w.source.as_ref().is_some_and(|s| s.url.starts_with("pvc://")) => {
                a.extend(volume_args(&w.source.as_ref().expect("checked").url, w.timeout));
                a.extend(tag_args(w));
            }
            Kind::Backup => {
                let s = w.source.as_ref().expect("a backup has a source");
                a.extend(["backup".into(), s.url.clone()]);
                a.extend(tag_args(w));
                a.extend(["--tag".into(), format!("class={}", w.class)]);
                for t in &s.tags {
                    a.extend(["--tag".into(), t.clone()]);
                }
                let h = &s.hooks;
                for (flag, v) in [("--pre-hook", &h.pre), ("--post-hook", &h.post)] {
                    if let Some(v) = v {
                        a.extend([flag.into(), v.clone()]);
                    }
                }
                if let Some(t) = h.timeout {
                    a.extend(["--hook-timeout".into(), format!("{}s", t.secs())]);
                }
                if h.on_error == OnError::Continue {
                    a.extend(["--on-error".into(), "continue".into()]);
                }
            }
            Kind::Forget => {
                let r = &w.class_spec.as_ref().expect("forget has a class").retention;
                a.push("forget".into());
                a.extend(tag_args(w));
                if let Some(n) = r.last {
                    a.extend(["--keep-last".into(), n.to_string()]);
                }
                for (period, rule) in
                    [("hourly", r.hourly), ("daily", r.daily), ("weekly", r.weekly), ("monthly", r.monthly), ("yearly", r.yearly)]
                {
                    if let Some(rule) = rule {
                        a.extend(rule.args(period));
                    }
                }
            }
            Kind::Copy => {
                let to = w.offsite.as_ref().expect("copy has a target");
                a.extend([
                    "copy".into(),
                    "--to".into(),
                    to.url.clone(),
                    "--to-password-file".into(),
                    to.password_file.display().to_string(),
                ]);
                a.extend(tag_args(w));
            }
            Kind::Prune => a.push("prune".into()),
            Kind::Drill => a.extend(["drill".into(), w.name.clone(), "--plan".into(), w.plan_file.display().to_string()]),
            Kind::Restore => {
                let r = w.restore.as_ref().expect("a restore says what");
                match &r.snapshot {
                    Some(id) => a.extend(["restore".into(), id.clone()]),
                    None => a.extend(latest_of(w, r)),
                }
                match (&r.to, &r.target) {
                    (Some(to), _) => a.extend(["--to".into(), to.clone()]),
                    (None, Some(dir)) => a.extend(["--target".into(), dir.clone()]),
                    (None, None) => {}
                }
                if r.flush {
                    a.push("--flush".into());
                }
            }
        }
        a
    }

    /// `tresor --json` against a repository: its JSON answer, or its one-line error.
    async fn query(&self, repo: &Repository, args: &[&str]) -> Result<serde_json::Value, String> {
        let out = Command::new(&self.exe)
            .args(repo_args(repo))
            .arg("--json")
            .args(args)
            .env_remove("TRESOR_STATE")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().trim_start_matches("tresor: error: ").to_string());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// The snapshots of one source (`tresor snapshots --tag source=NAME`), as JSON.
    pub async fn snapshots(&self, repo: &Repository, source: &str) -> Result<serde_json::Value, String> {
        self.query(repo, &["snapshots", "--tag", &format!("source={source}")]).await
    }

    /// What a repository's blobs take in storage (`tresor stats`), if it answers.
    pub async fn repository_size(&self, repo: &Repository) -> Option<u64> {
        self.query(repo, &["stats"]).await.ok()?["total_stored_size"].as_u64()
    }

    /// Run to the end, the time limit, or cancellation.
    pub async fn run(&self, w: &Work, mut cancel: watch::Receiver<bool>) -> Outcome {
        let mut cmd = Command::new(&self.exe);
        // The daemon records its jobs itself.
        cmd.env_remove("TRESOR_STATE");
        cmd.args(self.args(w)).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        // A daemon that is killed takes its jobs with it: nothing runs on unsupervised.
        // SAFETY: prctl is async-signal-safe and touches only this (child) process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return failed("error", format!("cannot start {}: {e}", self.exe.display())),
        };
        let limit = w.timeout.unwrap_or(Duration::from_secs(24 * 3600));
        let output = child.wait_with_output();
        tokio::select! {
            out = output => match out {
                Ok(out) => outcome(out.status.code(), &String::from_utf8_lossy(&out.stdout), &String::from_utf8_lossy(&out.stderr)),
                Err(e) => failed("error", e.to_string()),
            },
            _ = tokio::time::sleep(limit) => failed("timeout", format!("cancelled after its time limit of {}s", limit.as_secs())),
            _ = cancel.wait_for(|c| *c) => Outcome { status: "cancelled".into(), reason: Some("shutdown".into()), message: Some("the daemon stopped".into()), ..Outcome::default() },
        }
    }
}

fn failed(reason: &str, message: String) -> Outcome {
    Outcome { status: "failed".into(), reason: Some(reason.into()), message: Some(message), ..Outcome::default() }
}

/// `pvc://NAMESPACE/CLAIM?secret=NAME[&csi-snapshot-class=C][&cluster=k8s://CTX]`:
/// a Job in the cluster backs the claim up; the daemon waits for it.
fn volume_args(url: &str, timeout: Option<Duration>) -> Vec<String> {
    let rest = url.trim_start_matches("pvc://");
    let (claim, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut a = vec!["volume".to_string(), "backup".into(), claim.into()];
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        a.extend([format!("--{k}"), v.to_string()]);
    }
    a.extend(["--wait".into(), format!("{}s", timeout.unwrap_or(Duration::from_secs(6 * 3600)).as_secs())]);
    a
}

/// Every reason a failed job can have.
pub const REASONS: [&str; 12] = [
    "source_unreachable",
    "source_auth",
    "source_corrupt",
    "hook_failed",
    "storage_full",
    "repository",
    "repository_missing",
    "wrong_password",
    "timeout",
    "interrupted",
    "shutdown",
    "error",
];

/// The reason behind a failure, from the exit code and tresor's one-line error.
pub fn reason(code: Option<i32>, error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| e.contains(w));
    match code {
        None => "interrupted",
        Some(10) => "repository_missing",
        Some(12) => "wrong_password",
        _ if has(&["hook"]) => "hook_failed",
        _ if has(&["no space left", "quota", "storage full"]) => "storage_full",
        _ if has(&["authentication", "noauth", "wrongpass", "password", "permission denied"]) => "source_auth",
        _ if has(&["crc64", "sha-256", "corrupt", "truncated", "closed the connection"]) => "source_corrupt",
        _ if has(&[
            "cannot connect",
            "connection refused",
            "could not connect",
            "connection to server",
            "unreachable",
            "timed out",
            "dns",
        ]) =>
        {
            "source_unreachable"
        }
        _ if has(&["storage", "repository"]) => "repository",
        _ => "error",
    }
}

/// The last few KiB a job printed on standard error, cut at a line.
fn tail(stderr: &str) -> Option<String> {
    const KEEP: usize = 4096;
    let t = stderr.trim_end();
    if t.is_empty() {
        return None;
    }
    let from = t.len().saturating_sub(KEEP);
    let from = t[from..].find('\n').filter(|_| from > 0).map_or(from, |i| from + i + 1);
    Some(t[from..].to_string())
}

fn outcome(code: Option<i32>, stdout: &str, stderr: &str) -> Outcome {
    let mut o = judge(code, stdout, stderr);
    o.log = tail(stderr);
    o
}

fn judge(code: Option<i32>, stdout: &str, stderr: &str) -> Outcome {
    let summary: Option<serde_json::Value> = stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok());
    let mut o = verdict(code, summary.clone(), stderr);
    o.summary = summary;
    o
}

fn verdict(code: Option<i32>, summary: Option<serde_json::Value>, stderr: &str) -> Outcome {
    if code == Some(0) || code == Some(3) {
        let s = summary.unwrap_or_default();
        let message = (code == Some(3)).then(|| "some files could not be read".to_string());
        return Outcome {
            status: "succeeded".into(),
            reason: None,
            message,
            snapshot: s["snapshot_id"].as_str().map(String::from),
            bytes_processed: s["total_bytes_processed"].as_u64(),
            bytes_added: s["data_added"].as_u64().or(s["bytes_copied"].as_u64()),
            lag_seconds: s["lag_seconds"].as_f64(),
            log: None,
            summary: None,
        };
    }
    let line = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim_start_matches("tresor: error: ").to_string();
    failed(reason(code, &line), if line.is_empty() { format!("exit code {code:?}") } else { line })
}

#[cfg(test)]
mod tests {
    use super::reason;

    #[test]
    fn a_volume_source_becomes_a_job_the_daemon_waits_for() {
        assert_eq!(
            super::volume_args("pvc://shop/data?secret=repo&csi-snapshot-class=csi", Some(std::time::Duration::from_secs(600))),
            ["volume", "backup", "shop/data", "--secret", "repo", "--csi-snapshot-class", "csi", "--wait", "600s"],
            "the daemon adds --tag source=NAME after these"
        );
    }

    #[test]
    fn failures_get_a_typed_reason() {
        assert_eq!(reason(Some(1), "redis://127.0.0.1:1: cannot connect: Connection refused (os error 111)"), "source_unreachable");
        assert_eq!(reason(Some(1), "redis://x:1: authentication failed: WRONGPASS"), "source_auth");
        assert_eq!(reason(Some(12), "wrong password"), "wrong_password");
        assert_eq!(reason(Some(10), "no repository at /x"), "repository_missing");
        assert_eq!(reason(Some(1), "storage write of data/ab failed: No space left on device"), "storage_full");
        assert_eq!(reason(None, ""), "interrupted");
        assert_eq!(reason(Some(1), "pre-hook failed (exit status: 2): boom"), "hook_failed");
    }
}
