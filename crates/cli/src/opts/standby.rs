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
    /// Make a source's standby (its plan's `standby:`) from the newest backup, if it is not made yet: for PostgreSQL a data directory with standby.signal and tresor's restore_command.
    Refresh(StandbyArgs),
    /// Each standby's lag: the age of the oldest archived commit it has not replayed, and its failovers.
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
    /// The source whose standby to promote.
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
