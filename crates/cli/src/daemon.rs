//! `tresor daemon`, `tresor plan check`, `tresor jobs`, `tresor audit`.
//!
//! Without `--plan` the daemon runs on an embedded default under
//! `--data-dir`: a local repository and an off-site stand-in with a
//! generated password, the SQLite state, a sample folder and a ledger, two
//! classes and restore drills whose first run is two minutes after the start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Timelike, Utc};
use serde_json::json;
use tresor_controller::api::{Token, Tokens, router};
use tresor_controller::check::{Severity, check};
use tresor_controller::daemon::{Clock, Command, Shared, load_plan, run};
use tresor_controller::plan::Plan;
use tresor_controller::runner::Runner;
use tresor_controller::secret_url::SecretUrl;
use tresor_controller::state::State;

use crate::commands::print_json;
use crate::opts::{AuditArgs, AuditCommand, Cli, Command as Cmd, DaemonArgs, Global, JobsArgs, KeyCommand, PlanCheckArgs};

const DEFAULT_PLAN: &str = include_str!("default-plan.yaml");

/// The embedded default: written once, then left to the user to edit. Its
/// drills first run two minutes from `now`, so a newcomer sees one soon.
fn embedded_default(dir: &Path, now: DateTime<Utc>) -> Result<PathBuf> {
    let dir = std::path::absolute(dir)?;
    let sample = dir.join("sample");
    if !sample.exists() {
        std::fs::create_dir_all(sample.join("docs"))?;
        std::fs::write(sample.join("README.txt"), "This folder is backed up by tresor's embedded default plan every five minutes.\n")?;
        std::fs::write(sample.join("docs/notes.md"), "# Notes\n\nEdit me and watch the next backup add only the change.\n")?;
    }
    let ledger = dir.join("ledger.csv");
    if !ledger.exists() {
        std::fs::write(&ledger, "date,account,amount\n2026-01-05,rent,-1200.00\n2026-01-06,salary,3400.00\n2026-01-07,groceries,-86.40\n")?;
    }
    let plan = dir.join("tresor.yaml");
    if !plan.exists() {
        let first = now + chrono::Duration::minutes(2);
        let text = DEFAULT_PLAN
            .replace("MINUTE", &first.minute().to_string())
            .replace("HOUR", &first.hour().to_string())
            .replace("DATA", &dir.display().to_string());
        std::fs::write(&plan, text)?;
    }
    Ok(plan)
}

/// Create each repository the plan marks `init: true` that does not exist
/// yet, with a generated password file when there is none.
fn init_repositories(plan: &Plan, exe: &Path) -> Result<()> {
    for (name, r) in plan.repositories.iter().filter(|(_, r)| r.init) {
        if !r.password_file.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            let secret: [u8; 24] = rand::random();
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&r.password_file)?;
            std::io::Write::write_all(&mut f, format!("{}\n", hex::encode(secret)).as_bytes())?;
        }
        let base = |cmd: &str| {
            // The URL in the environment: a command line is anyone's to read.
            std::process::Command::new(exe)
                .env("TRESOR_REPOSITORY", r.url.expose())
                .args(["--password-file", &r.password_file.display().to_string(), "--quiet", cmd])
                .output()
                .with_context(|| format!("cannot run {}", exe.display()))
        };
        let probe = base("snapshots")?;
        if probe.status.code() == Some(crate::EXIT_NO_REPOSITORY as i32) {
            let out = base("init")?;
            if !out.status.success() {
                bail!("repository {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            eprintln!("tresor: created repository {name} at {}", r.url);
        }
    }
    Ok(())
}

/// A scope's token: its file (read here once, so that a daemon with an
/// unreadable one does not start; then on every request), else the
/// environment variable `var`.
fn read_token(file: Option<&Path>, var: &str) -> Result<Token> {
    if let Some(f) = file {
        let t = std::fs::read_to_string(f).with_context(|| format!("cannot read token file {}", f.display()))?;
        return Ok(if t.trim().is_empty() { Token::Unset } else { Token::File(f.to_path_buf()) });
    }
    Ok(std::env::var(var).ok().filter(|t| !t.is_empty()).map_or(Token::Unset, Token::Given))
}

pub async fn daemon(_g: &Global, a: DaemonArgs) -> Result<u8> {
    let clock = Clock::from_env();
    let resource = a.plan_resource.as_deref().map(tresor_controller::planwatch::PlanRef::parse).transpose()?;
    let plan_file = plan_file_of(&a, resource.as_ref(), &clock).await?;
    let plan = load_plan(&plan_file, clock.now())?;
    // Jobs run as this program itself, or as a wrapper (nice, ionice, a test's recorder) named in TRESOR_JOB_PROGRAM.
    let exe = match std::env::var_os("TRESOR_JOB_PROGRAM") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe().context("cannot tell where tresor is installed")?,
    };
    init_repositories(&plan, &exe)?;
    let listen = a.listen.clone().unwrap_or_else(|| plan.daemon.listen.clone());
    let addr: SocketAddr = listen.parse().with_context(|| format!("cannot read listen address {listen:?} (use HOST:PORT)"))?;
    let tokens = Tokens {
        admin: read_token(plan.daemon.admin_token_file.as_deref(), "TRESOR_API_TOKEN")?,
        read: read_token(plan.daemon.read_token_file.as_deref(), "TRESOR_API_READ_TOKEN")?,
    };
    if matches!((&tokens.admin, &tokens.read), (Token::Unset, Token::Unset)) && !addr.ip().is_loopback() {
        bail!(
            "listening on {addr} needs API tokens (daemon.admin_token_file or TRESOR_API_TOKEN); without them only a loopback address is allowed"
        );
    }
    let state_file = plan.daemon.state.clone().unwrap_or_else(|| plan_file.with_file_name("tresor-state.db"));
    let state = State::open(&state_file)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // Runs as Kubernetes objects only beside a BackupPlan resource: outside a cluster nothing changes.
    let (runs, notes) = match &resource {
        Some(_) => {
            let (runs, notes) = tresor_controller::runs::Runs::channel();
            (runs, Some(notes))
        }
        None => (Default::default(), None),
    };
    let tick = std::env::var("TRESOR_TICK_MS").ok().and_then(|t| t.parse().ok()).map_or(Duration::from_millis(500), Duration::from_millis);
    let summary = format!("{} sources in {} classes", plan.sources.len(), plan.classes.len());
    let shared = Arc::new(Shared {
        plan: std::sync::RwLock::new(plan),
        plan_file: plan_file.clone(),
        state,
        metrics: Default::default(),
        clock,
        runner: Runner::children(exe),
        next_runs: Default::default(),
        running: Default::default(),
        commands: tx.clone(),
        ready: Default::default(),
        tick,
        grace: crate::commands::parse_duration(&a.grace)?,
        failing: Default::default(),
        http: tresor_controller::notify::client(),
        unprotected: Default::default(),
        repos: Default::default(),
        runs,
        report: Default::default(),
    });
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|source| tresor_controller::Error::Listen { addr: listen.clone(), source })?;
    let bound = listener.local_addr()?;
    let scheme = start_serving(listener, &shared, tokens)?;
    if let Some(r) = resource {
        if let Some(notes) = notes {
            tokio::spawn(tresor_controller::runs::follow(r.clone(), shared.clone(), notes));
        }
        tokio::spawn(tresor_controller::planwatch::watch(r, plan_file.clone(), tx.clone()));
    }
    eprintln!("tresor daemon: plan {} ({summary}), state {}", plan_file.display(), state_file.display());
    eprintln!("tresor daemon: status page {scheme}://{bound}/  metrics {scheme}://{bound}/metrics");
    let Some(leader) = lead(&a, &shared, &tx).await? else { return Ok(0) };
    run_while_leading(shared, rx, tx, leader).await?;
    eprintln!("tresor daemon: stopped");
    Ok(0)
}
/// The plan to run: the file given, a BackupPlan resource's copy fetched
/// into the data directory, or the embedded example.
async fn plan_file_of(a: &DaemonArgs, resource: Option<&tresor_controller::planwatch::PlanRef>, clock: &Clock) -> Result<PathBuf> {
    Ok(match (&a.plan, resource) {
        (Some(p), _) => std::path::absolute(p)?,
        (None, Some(r)) => {
            std::fs::create_dir_all(&a.data_dir)?;
            let file = std::path::absolute(a.data_dir.join(format!("backupplan-{}-{}.yaml", r.namespace, r.name)))?;
            tresor_controller::planwatch::fetch(r, &file).await?;
            file
        }
        (None, None) => embedded_default(&a.data_dir, clock.now())?,
    })
}

/// Serves the API, status page and metrics, over TLS when the plan names a
/// certificate; returns the scheme it serves.
fn start_serving(listener: tokio::net::TcpListener, shared: &Arc<Shared>, tokens: Tokens) -> Result<&'static str> {
    let settings = shared.plan().daemon;
    let tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(cert), Some(key)) => Some(tresor_controller::serve::tls(cert, key)?),
        (None, None) => None,
        _ => bail!("daemon.tls_cert_file and daemon.tls_key_file go together"),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tokio::spawn(tresor_controller::serve::serve(listener, router(shared.clone(), tokens), tls));
    Ok(scheme)
}

/// Runs the scheduler until a signal stops it or, with leader election,
/// until the lease is lost.
async fn run_while_leading(
    shared: Arc<Shared>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Command>,
    tx: tokio::sync::mpsc::UnboundedSender<Command>,
    leader: Option<(tresor_controller::leader::Lease, u64)>,
) -> Result<()> {
    let lost = std::sync::atomic::AtomicBool::new(false);
    let held = async {
        match &leader {
            Some((lease, term)) => {
                lease.hold(*term).await;
                lost.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            None => std::future::pending().await,
        }
    };
    // A signal gives running jobs the grace `--grace` sets; a lost lease none, as
    // another replica leads by then.
    let grace = shared.grace;
    let stop = async {
        tokio::select! {
            _ = shutdown_signals(tx) => grace,
            _ = held => std::time::Duration::ZERO,
        }
    };
    run(shared, rx, stop).await?;
    if lost.load(std::sync::atomic::Ordering::SeqCst) {
        // Another replica leads now: stop, and come back as a standby.
        bail!("lost the lease: another replica leads now");
    }
    Ok(())
}

/// Under leader election, wait for the lease (a standby serves its page
/// and is not ready meanwhile): Some(the lease and its term), or Some(None)
/// without election; None when stopped while standing by.
async fn lead(
    a: &DaemonArgs,
    shared: &Arc<Shared>,
    tx: &tokio::sync::mpsc::UnboundedSender<Command>,
) -> Result<Option<Option<(tresor_controller::leader::Lease, u64)>>> {
    let Some(spec) = &a.leader_election else { return Ok(Some(None)) };
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}-{}", tresor_engine::hostname(), std::process::id()));
    let lease = tresor_controller::leader::Lease::new(spec, &identity, crate::commands::parse_duration(&a.lease_duration)?).await?;
    eprintln!("tresor daemon: standing by for the lease {spec} as {identity}");
    let term = tokio::select! {
        term = lease.acquire() => term,
        _ = shutdown_signals(tx.clone()) => return Ok(None),
    };
    shared.repos.set_term(term);
    eprintln!("tresor daemon: leading, term {term}");
    Ok(Some(Some((lease, term))))
}

/// SIGTERM or SIGINT stops the daemon; SIGHUP reloads the plan.
async fn shutdown_signals(tx: tokio::sync::mpsc::UnboundedSender<Command>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => { let _ = tx.send(Command::Reload { actor: "signal:SIGHUP".into() }); }
        }
    }
}

pub fn plan_check(g: &Global, a: PlanCheckArgs) -> Result<u8> {
    if a.connect {
        return crate::doctor::run(g, &a);
    }
    let (plan, text) = Plan::load(&a.plan)?;
    let findings = check(&plan, &text, chrono::Utc::now());
    let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
    if g.json {
        let items: Vec<_> = findings
            .iter()
            .map(|f| json!({"line": f.line, "severity": if f.severity == Severity::Error { "error" } else { "warning" }, "message": f.message}))
            .collect();
        print_json(&json!({"file": a.plan, "errors": errors, "findings": items}))?;
    } else {
        for f in &findings {
            say!("{}:{f}", a.plan.display());
        }
        let counted = crate::commands::counted;
        say!(
            "{}: {}, {}: {}, {}",
            a.plan.display(),
            counted(plan.sources.len(), "source"),
            counted(plan.classes.len(), "class"),
            counted(errors, "error"),
            counted(findings.len() - errors, "warning")
        );
    }
    Ok(if errors > 0 { crate::EXIT_ERROR } else { 0 })
}

pub fn jobs(g: &Global, a: JobsArgs) -> Result<u8> {
    let state = State::open(&a.state)?;
    let jobs = state.jobs(a.limit, a.source.as_deref())?;
    if g.json {
        return print_json(&jobs).map(|_| 0);
    }
    say!("{:>6}  {:<20} {:<8} {:<9} {:<20} {:<10} reason", "job", "source", "kind", "trigger", "started (UTC)", "status");
    for j in &jobs {
        let why = [j.outcome.reason.clone().unwrap_or_default(), j.outcome.message.clone().unwrap_or_default()].join(" ");
        say!(
            "{:>6}  {:<20} {:<8} {:<9} {:<20} {:<10} {}",
            j.id,
            j.source,
            j.kind,
            j.trigger,
            j.started_at.format("%Y-%m-%d %H:%M:%S"),
            j.outcome.status,
            why.trim()
        );
    }
    Ok(0)
}

pub async fn audit(g: &Global, a: AuditArgs) -> Result<u8> {
    if let Some(AuditCommand::Verify) = a.command {
        return verify_evidence(g).await;
    }
    let state = State::open(&a.state)?;
    let entries = state.audit_log(a.limit)?;
    if g.json {
        return print_json(&entries).map(|_| 0);
    }
    for e in &entries {
        say!("{}  {:<14} {:<8} {:<20} {:<10} {}", e.time.format("%Y-%m-%d %H:%M:%S"), e.actor, e.action, e.target, e.result, e.detail);
    }
    Ok(0)
}

/// `tresor audit verify`: the repository's evidence chain, entry by entry.
async fn verify_evidence(g: &Global) -> Result<u8> {
    let repo = crate::commands::open(g).await?;
    let v = tresor_engine::evidence::verify(&repo).await?;
    if g.json {
        print_json(&v)?;
    } else {
        let head = v.head.map_or("none".into(), |h| format!("{} ({})", h.seq, h.hash.short()));
        say!("evidence log: {} entries, head {head}", v.entries);
        for p in &v.problems {
            say!("problem: {p}");
        }
    }
    if v.problems.is_empty() {
        return Ok(0);
    }
    eprintln!("tresor: error: the evidence log is not intact: {} problems, first: {}", v.problems.len(), v.problems[0]);
    Ok(crate::EXIT_ERROR)
}

/// Commands that change or read back protected data, recorded in the audit
/// trail when `TRESOR_STATE` names the daemon's state database: the action
/// and its target. Each URL is shown as [`SecretUrl`] displays it, without
/// its password: the trail is read by whoever may read the state database.
pub fn audited(cli: &Cli) -> Option<(&'static str, String)> {
    std::env::var_os("TRESOR_STATE")?;
    let repo = cli.global.repo.as_ref().map(SecretUrl::to_string).unwrap_or_default();
    let (action, what) = match &cli.command {
        // A path to back up may be a data source's URL (redis://:PASSWORD@HOST).
        Cmd::Backup(a) => (
            "backup",
            a.paths.iter().map(|p| tresor_controller::secret_url::redact(&p.display().to_string())).collect::<Vec<_>>().join(" "),
        ),
        Cmd::Restore(a) => {
            let to = a.to.as_ref().map(SecretUrl::to_string).or(a.target.as_ref().map(|t| t.display().to_string()));
            ("restore", format!("{} to {}", a.snapshot, to.unwrap_or_default()))
        }
        Cmd::Forget(a) => ("forget", a.snapshots.join(" ")),
        Cmd::Prune(_) => ("prune", String::new()),
        Cmd::Copy(a) => ("copy", format!("to {}", a.to)),
        Cmd::AppendOnly(a) => ("append-only", a.mode.clone()),
        Cmd::Key(k) => match &k.command {
            KeyCommand::Add(_) => ("key add", String::new()),
            KeyCommand::Remove { id } => ("key remove", id.clone()),
            KeyCommand::Passwd(_) => ("key passwd", String::new()),
            KeyCommand::List => return None,
        },
        Cmd::Pg(_) => ("pg", String::new()),
        _ => return None,
    };
    Some((action, format!("{repo} {what}").trim().to_string()))
}

/// Append one entry for a command run from the command line.
pub fn audit_cli(action: &str, target: &str, result: std::result::Result<&u8, String>) {
    let Some(path) = std::env::var_os("TRESOR_STATE") else { return };
    let actor = format!("cli:{}@{}", tresor_engine::username(), tresor_engine::hostname());
    let (result, detail) = match result {
        Ok(0) => ("succeeded", String::new()),
        Ok(code) => ("partial", format!("exit code {code}")),
        Err(e) => ("failed", e),
    };
    let entry = tresor_controller::state::AuditEntry {
        time: chrono::Utc::now(),
        actor,
        action: action.into(),
        target: target.into(),
        result: result.into(),
        detail,
    };
    if let Err(e) = State::open(Path::new(&path)).and_then(|s| s.audit(&entry)) {
        eprintln!("warning: audit trail: {e}");
    }
}
