//! Disaster recovery: `tresor dr rehearse`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct DrCmd {
    #[command(subcommand)]
    pub command: DrCommand,
}

#[derive(Subcommand)]
pub enum DrCommand {
    /// A cold-start rehearsal: every source of the plan restored from one repository (the off-site copy) into scratch, in dependency order, validated, timed against the plan's drills.platform_rto; needs no state.
    Rehearse(RehearseArgs),
}

#[derive(Args)]
pub struct RehearseArgs {
    /// The plan file (tresor.yaml).
    #[arg(long, env = "TRESOR_PLAN")]
    pub plan: PathBuf,
    /// The repository to come back from: one of the plan's by name, `offsite` (each class's off-site repository), or any repository's URL.
    #[arg(long, value_name = "REPOSITORY")]
    pub from: String,
    /// The password file of a --from repository given by URL (default: each source's repository's).
    #[arg(long, value_name = "FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Scratch space for restored data (overrides the plan's drills.scratch_dir).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Leave the restored data in the scratch space (the next rehearsal removes it).
    #[arg(long)]
    pub keep: bool,
}
