//! `tresor`: the command-line tool.

#[macro_use]
mod out;
mod app_drill;
mod commands;
mod copy;
mod daemon;
mod data;
mod demo;
mod doctor;
mod dr;
mod drill;
mod heap;
mod job;
mod k8s;
mod keys;
mod manual;
mod opts;
mod pg;
mod pgspool;
mod pgwal;
mod preview;
mod protocol;
mod prune;
mod restore_app;
mod retention;
mod sources;
mod standby;

use std::process::ExitCode;

use clap::Parser;
use tresor_engine::Error;

use opts::{Cli, Command};

/// Exit codes, as restic has them, so scripts written for it keep working.
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_INCOMPLETE: u8 = 3;
pub const EXIT_NO_REPOSITORY: u8 = 10;
pub const EXIT_WRONG_PASSWORD: u8 = 12;

fn main() -> ExitCode {
    // PostgreSQL starts a restore_command per WAL file: one the spool
    // answers starts nothing else (crate::pgspool).
    if let Some(code) = pgspool::serve_restore_command(&std::env::args_os().collect::<Vec<_>>()) {
        return ExitCode::from(code);
    }
    heap::DEFAULT.apply();
    let cli = Cli::parse();
    if let Some(heap) = heap::Heap::of(&cli.command) {
        heap.apply();
    }
    // An sftp repository is reached through an ssh child's pipes: one that
    // dies must be an error said, not a silent death by SIGPIPE.
    let sftp = cli.global.repo.as_ref().is_some_and(|r| r.expose().starts_with("sftp://"));
    if prints_a_listing(&cli.command) && !sftp {
        // A listing piped into `head` ends when its reader goes, by SIGPIPE
        // as `cat`'s does. The other commands keep Rust's ignored SIGPIPE:
        // a program they write to that quits early (a restore's `--to
        // command:`) is an error they report, and so is a closed standard
        // output, once their work is done (crate::out).
        // SAFETY: no other thread runs yet, and SIG_DFL is a valid handler.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // Libraries that log their own failures (kube's client) stay quiet: tresor's one-line error says it.
    let filter = if cli.global.verbose { "info" } else { "warn,kube_client=off" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TRESOR_LOG").unwrap_or_else(|_| filter.into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tresor: error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let audited = daemon::audited(&cli);
    let result = rt.block_on(run(cli));
    if let Some((action, target)) = audited {
        daemon::audit_cli(action, &target, result.as_ref().map_err(one_line));
    }
    match result {
        Ok(_) if let Some(e) = out::lost() => {
            eprintln!("tresor: error: cannot write to standard output ({e}): the work is done, only its report is lost");
            ExitCode::from(EXIT_ERROR)
        }
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tresor: error: {}", one_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let g = cli.global;
    match cli.command {
        Command::Init(a) => commands::init(&g, a).await,
        Command::Backup(a) => data::backup(&g, a).await,
        Command::Snapshots(a) => commands::snapshots(&g, a).await,
        Command::Ls(a) => data::ls(&g, a).await,
        Command::Restore(a) => data::restore(&g, a).await,
        Command::RestoreApp(a) => restore_app::restore_app(&g, a).await,
        Command::Dump(a) => data::dump(&g, a).await,
        Command::Diff(a) => data::diff(&g, a).await,
        Command::Find(a) => data::find(&g, a).await,
        Command::Stats(a) => commands::stats(&g, a).await,
        Command::Check(a) => commands::check(&g, a).await,
        Command::Key(a) => keys::key(&g, a).await,
        Command::Repair(a) => commands::repair(&g, a).await,
        Command::Forget(a) => retention::forget(&g, a).await,
        Command::Copy(a) => copy::copy(&g, a).await,
        Command::AppendOnly(a) => commands::append_only(&g, a).await,
        Command::Prune(a) => prune::prune(&g, a).await,
        Command::Hold(a) => retention::hold(&g, a).await,
        Command::Release(a) => retention::release(&g, a).await,
        Command::Holds => retention::holds(&g).await,
        Command::Demo(a) => demo::demo(a).await,
        Command::Pg(a) => pg::pg(&g, a).await,
        Command::Daemon(a) => daemon::daemon(&g, a).await,
        Command::Plan(a) => match a.command {
            opts::PlanCommand::Check(c) => daemon::plan_check(&g, c),
            opts::PlanCommand::Crd => {
                say_raw!("{}", tresor_controller::crd::backup_plan_crd());
                Ok(0)
            }
            opts::PlanCommand::RunCrds => {
                say_raw!("{}", tresor_controller::crd::run_crds());
                Ok(0)
            }
        },
        Command::Jobs(a) => daemon::jobs(&g, a),
        Command::Audit(a) => daemon::audit(&g, a).await,
        Command::Drill(a) => drill::drills(&g, a).await,
        Command::Report(a) => drill::report(a).await,
        Command::Dr(a) => dr::dr(&g, a).await,
        Command::Volume(a) => k8s::volume(&g, a).await,
        Command::Standby(a) => standby::standby(&g, a).await,
        Command::Failover(a) => standby::failover(&g, a).await,
        Command::Completion(a) => manual::completion(a),
        Command::Man(a) => manual::man(a),
        Command::Job(a) => match a.command {
            opts::JobCommand::Run => job::run(&g).await,
        },
        Command::Synth(a) => commands::synth(&g, a).await,
    }
}

/// Every error is one line: the context chain joined, never a backtrace.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

/// Commands that only print what they read, to be piped into a pager or `head`.
fn prints_a_listing(command: &Command) -> bool {
    matches!(
        command,
        Command::Snapshots(_)
            | Command::Ls(_)
            | Command::Dump(_)
            | Command::Diff(_)
            | Command::Find(_)
            | Command::Stats(_)
            | Command::Holds
            | Command::Jobs(_)
            | Command::Audit(_)
            | Command::Completion(_)
            | Command::Man(_)
    )
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(failed) = e.downcast_ref::<pgwal::FetchFailed>() {
        return failed.exit;
    }
    match e.downcast_ref::<Error>() {
        Some(Error::NoRepository { .. } | Error::NotARepository { .. }) => EXIT_NO_REPOSITORY,
        Some(Error::WrongPassword { .. }) => EXIT_WRONG_PASSWORD,
        _ => EXIT_ERROR,
    }
}
