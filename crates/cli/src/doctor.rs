//! `tresor plan check --connect`: reach every repository and source of a
//! plan with its credentials and say, one line each, what answered.

use anyhow::Result;

use crate::opts::{Global, PlanCheckArgs};

pub fn run(_g: &Global, _a: &PlanCheckArgs) -> Result<u8> {
    anyhow::bail!("plan check --connect is not built yet")
}
