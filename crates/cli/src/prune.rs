//! `prune`, and `forget --prune`.

use std::sync::Arc;

use anyhow::{Result, bail};
use tresor_engine::Repository;
use tresor_engine::prune::{PruneOptions, PruneReport, prune as run_prune};

use crate::commands::{open, parse_duration, print_json};
use crate::opts::{Global, PruneArgs, PruneCmd};

pub async fn prune(g: &Global, a: PruneCmd) -> Result<u8> {
    let repo = open(g).await?;
    run(g, &repo, &a.opts, a.dry_run).await?;
    Ok(0)
}

pub async fn run(g: &Global, repo: &Arc<Repository>, a: &PruneArgs, dry_run: bool) -> Result<()> {
    let r = pruned(repo, a, dry_run).await?;
    if g.json {
        return print_json(&r);
    }
    print_report(&r);
    Ok(())
}

/// Prune as `a` asks: what it did.
pub async fn pruned(repo: &Arc<Repository>, a: &PruneArgs, dry_run: bool) -> Result<PruneReport> {
    Ok(run_prune(repo.clone(), &options(a, dry_run)?).await?)
}

/// The prune `a` asks for, refused before anything is done when it cannot be.
pub fn options(a: &PruneArgs, dry_run: bool) -> Result<PruneOptions> {
    if !(0.0..=100.0).contains(&a.max_unused) {
        bail!("--max-unused is a percentage from 0 to 100");
    }
    Ok(PruneOptions { max_unused: a.max_unused / 100.0, grace: parse_duration(&a.grace)?, dry_run })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

pub fn print_report(r: &PruneReport) {
    let would = if r.dry_run { "would be " } else { "" };
    say!(
        "{} snapshots reach {} of {} blobs in {} packs; {} unused in indexed packs",
        r.snapshots,
        r.used_blobs,
        r.blobs,
        r.packs,
        mib(r.unused_bytes)
    );
    say!(
        "{} packs {would}marked for deletion ({}), {} of them {would}repacked ({} still used, copied)",
        r.marked_packs,
        mib(r.marked_bytes),
        r.repacked_packs,
        mib(r.repacked_bytes)
    );
    if r.dry_run {
        return;
    }
    say!("{} packs deleted ({}), {} unindexed packs deleted", r.deleted_packs, mib(r.deleted_bytes), r.orphan_packs_deleted);
    if r.rescued_packs > 0 {
        say!("{} marked packs put back in the index: a snapshot written meanwhile needs them", r.rescued_packs);
    }
    if r.locked_packs > 0 {
        say!("{} packs are still under Object Lock; a later prune deletes them", r.locked_packs);
    }
    if r.stale_temporaries.0 > 0 {
        say!("{} temporary files cut-short writes left removed ({})", r.stale_temporaries.0, mib(r.stale_temporaries.1));
    }
    for w in &r.waiting {
        say!("{w}");
    }
}
