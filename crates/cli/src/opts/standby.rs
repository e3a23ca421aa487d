//! `tresor standby` and `tresor failover`: warm standbys of the plan's sources.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct StandbyCmd {
    #[command(subcommand)]
    pub command: StandbyCommand,
}

#[derive(Subcommand)]
pub enum StandbyCommand {
    /// Make a source's standby (its plan's `standby:`) current: a directory, claim (through a Job in its namespace) or Redis instance refreshed from the newest snapshot (only what changed is written); for PostgreSQL a data directory with standby.signal and tresor's restore_command, made once.
    Refresh(StandbyArgs),
    /// Each standby's lag (the age of the oldest archived commit or snapshot it lacks; past the RPO, of the newest), and its failovers.
    Status(StandbyStatusArgs),
}

#[derive(Args)]
pub struct StandbyArgs {
    /// The source whose standby to make.
    pub source: String,
    /// The plan file (tresor.yaml).
    #[arg(long, env = "TRESOR_PLAN")]
    pub plan: PathBuf,
}

#[derive(Args)]
pub struct StandbyStatusArgs {
    /// The plan file (tresor.yaml).
    #[arg(long, env = "TRESOR_PLAN")]
    pub plan: PathBuf,
}

#[derive(Args)]
pub struct FailoverArgs {
    /// The source whose standby to promote (PostgreSQL) or make current (a directory, a claim, a Redis instance).
    pub source: String,
    /// The plan file (tresor.yaml).
    #[arg(long, env = "TRESOR_PLAN")]
    pub plan: PathBuf,
    /// Promote even when the WAL archive has a gap (every commit after it is lost).
    #[arg(long)]
    pub force: bool,
    /// How long to wait for the standby to replay the archive to its end, then for the promotion, e.g. 5m.
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}
