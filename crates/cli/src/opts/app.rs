//! Command-line syntax of `tresor restore-app`: a whole application of the
//! plan back as of a moment.

use std::path::PathBuf;

use clap::Args;

use super::{KUBERNETES, TARGET};

#[derive(Args)]
pub struct RestoreAppArgs {
    /// The application, by its name in the plan's `applications:`.
    pub app: String,
    /// The plan file (tresor.yaml).
    #[arg(long, env = "TRESOR_PLAN")]
    pub plan: PathBuf,
    /// Bring every source back as it was at this moment (RFC 3339 or "YYYY-MM-DD HH:MM:SS" local time).
    #[arg(long, required_unless_present = "latest")]
    pub time: Option<String>,
    /// Bring every source back at its newest restore point.
    #[arg(long, conflicts_with = "time")]
    pub latest: bool,
    /// Say which restore point and target each source would take; touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Say, per source, what its target holds that the restore would replace and how long it is predicted to take (from the drill history); touch nothing.
    #[arg(long)]
    pub preview: bool,
    /// SOURCE=TARGET: restore this source there instead of the plan's target (a service URL or a directory; repeatable).
    #[arg(long = "target", value_name = "SOURCE=TARGET", help_heading = TARGET)]
    pub targets: Vec<String>,
    /// For k8s:// sources: OLD:NEW, restore namespace OLD's objects into NEW (repeatable, or
    /// several separated by commas, as Velero's --namespace-mappings takes them).
    #[arg(long, visible_alias = "namespace-mappings", value_delimiter = ',', help_heading = KUBERNETES)]
    pub namespace_mapping: Vec<String>,
}
