//! Shell completions and man pages, generated from the same definitions as
//! the help, so the three never disagree.

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::opts::{Cli, CompletionArgs, ManArgs};

pub fn completion(a: CompletionArgs) -> Result<u8> {
    let mut cmd = Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "tresor", &mut std::io::stdout());
    Ok(0)
}

/// `tresor.1` and one page per subcommand (`tresor-restore.1`, `tresor-pg-backup.1`, …).
pub fn man(a: ManArgs) -> Result<u8> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("cannot create {}", a.dir.display()))?;
    clap_mangen::generate_to(Cli::command(), &a.dir).with_context(|| format!("cannot write man pages into {}", a.dir.display()))?;
    Ok(0)
}
