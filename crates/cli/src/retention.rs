//! `forget`, `hold`, `release` and `holds`.

use anyhow::{Result, bail};
use serde_json::json;
use tresor_engine::Snapshot;
use tresor_engine::forget::{self, Choice, Inventory};
use tresor_engine::holds::{hold as place_hold, holds as list_holds, release as release_hold};
use tresor_engine::retention::{GroupBy, Period, Policy, Span};

use crate::commands::{open, print_json};
use crate::opts::{ForgetArgs, Global, HoldArgs};

fn policy(a: &ForgetArgs) -> Result<Policy> {
    let periods = [
        (Period::Hourly, a.keep_hourly),
        (Period::Daily, a.keep_daily),
        (Period::Weekly, a.keep_weekly),
        (Period::Monthly, a.keep_monthly),
        (Period::Yearly, a.keep_yearly),
    ];
    let within = [
        (Period::Hourly, &a.keep_within_hourly),
        (Period::Daily, &a.keep_within_daily),
        (Period::Weekly, &a.keep_within_weekly),
        (Period::Monthly, &a.keep_within_monthly),
        (Period::Yearly, &a.keep_within_yearly),
    ];
    Ok(Policy {
        last: a.keep_last,
        periods: periods.into_iter().filter_map(|(p, n)| Some((p, n?))).collect(),
        within: a.keep_within.as_deref().map(Span::parse).transpose()?,
        within_periods: within
            .into_iter()
            .filter_map(|(p, s)| s.as_deref().map(|s| Span::parse(s).map(|s| (p, s))))
            .collect::<Result<_, _>>()?,
        tags: a.keep_tags.iter().map(|t| t.split(',').map(str::to_string).collect()).collect(),
    })
}

/// Refuse to remove archived WAL a base backup that stays needs.
fn keeps_chains(all: &[tresor_engine::Snapshot], removed: &tresor_engine::IdSet) -> Result<()> {
    if let Some((wal, base)) = tresor_sources::pitr::wal_still_needed(all, removed).first() {
        let file = tresor_sources::pitr::point(wal, "file").unwrap_or("?");
        bail!(
            "snapshot {} holds WAL {file}, which base backup {} needs to recover past its end: forgetting it would break the chain \
             (forget the base backups before it instead; their WAL goes with them)",
            wal.id.short(),
            base.id.short()
        );
    }
    Ok(())
}

pub async fn forget(g: &Global, a: ForgetArgs) -> Result<u8> {
    let repo = open(g).await?;
    if !a.dry_run {
        forget::allowed(&repo)?;
    }
    // A prune that cannot fit, or is asked for wrongly, must refuse before any snapshot goes.
    if a.prune {
        crate::prune::options(&a.prune_opts, a.dry_run)?;
        repo.ensure_memory().await?;
    }
    let inv = Inventory::load(&repo).await?;
    let mut plan = if a.snapshots.is_empty() {
        // Named pieces of an archive (WAL) follow their chain, below.
        let (filter, policy) = (a.select.filter(), policy(&a)?);
        let choice = Choice::Policy { filter: &filter, policy: &policy, by: GroupBy::parse(&a.group_by)?, allow_empty: a.allow_empty };
        forget::plan(&inv, choice, &chrono::Local)?
    } else {
        if !policy(&a)?.is_empty() {
            bail!("forget takes snapshots or a --keep policy, not both: the policy would be ignored");
        }
        forget::plan(&inv, Choice::Given { specs: &a.snapshots, filter: &a.select.filter() }, &chrono::Local)?
    };
    let removed = plan.removed();
    let Inventory { snapshots: all, held, .. } = inv;
    keeps_chains(&all, &removed)?;
    // The groups from here on remove named pieces of an archive (WAL files), shown by name.
    let named = plan.groups.len();
    let wal = tresor_sources::pitr::wal_to_forget(&all, &removed, &held);
    if !wal.is_empty() {
        let key = "pg-wal (no remaining base backup needs it)".to_string();
        plan.groups.push(forget::Group { key, keep: Vec::new(), remove: wal });
    }
    let report: Vec<serde_json::Value> = plan.groups.iter().enumerate().map(|(i, g)| group_json(g, i >= named)).collect();
    // Said once done: "removed" printed first was read as done when the removal then failed.
    let locked = match a.dry_run {
        true => 0,
        false => forget::execute(&repo, &plan).await?.locked.len(),
    };
    if !g.json && report.is_empty() && plan.unreadable.is_empty() {
        let filter = a.select.filter();
        match filter.is_empty() {
            true => say!("no snapshots: nothing was removed"),
            false => say!("no snapshot matches {}: nothing was removed", filter.describe()),
        }
    }
    if !g.json {
        print_report(&report, a.dry_run);
        let verb = if a.dry_run { "would remove" } else { "removed" };
        for id in &plan.unreadable {
            say!("{verb} snapshot {} (its file is damaged)", id.short());
        }
    }
    if locked > 0 {
        eprintln!("tresor: {locked} snapshot(s) are still under the storage's Object Lock and stay; forget them again once it expires");
    }
    let pruned = match a.prune {
        true => Some(crate::prune::pruned(&repo, &a.prune_opts, a.dry_run).await),
        false => None,
    };
    if g.json {
        // One document: the prune's report (or why it failed) beside the
        // forget's, which is done either way.
        let mut out = json!({"dry_run": a.dry_run, "groups": report, "unreadable": plan.unreadable});
        match &pruned {
            Some(Ok(p)) => out["prune"] = serde_json::to_value(p)?,
            Some(Err(e)) => out["prune"] = json!({"error": format!("{e:#}")}),
            None => {}
        }
        print_json(&out)?;
    } else if let Some(Ok(p)) = &pruned {
        crate::prune::print_report(p);
    }
    pruned.transpose()?;
    Ok(0)
}

/// A group as `forget` reports it; `named`: its removals are shown by name too.
fn group_json(group: &forget::Group, named: bool) -> serde_json::Value {
    let removal = |s: &Snapshot| match named {
        true => json!({"id": s.id, "time": s.time, "name": s.name}),
        false => json!({"id": s.id, "time": s.time}),
    };
    json!({
        "group": group.key,
        "keep": group.keep.iter().map(|v| json!({"id": v.snapshot.id, "time": v.snapshot.time, "reasons": v.reasons})).collect::<Vec<_>>(),
        "remove": group.remove.iter().map(removal).collect::<Vec<_>>(),
    })
}

fn print_report(report: &[serde_json::Value], dry_run: bool) {
    let short = |v: &serde_json::Value| v["id"].as_str().map(|s| s[..8].to_string()).unwrap_or_default();
    let verb = if dry_run { "would remove" } else { "removed" };
    for group in report {
        let (keep, gone) = (group["keep"].as_array().cloned().unwrap_or_default(), group["remove"].as_array().cloned().unwrap_or_default());
        say!("group {}: keep {}, {verb} {}", group["group"].as_str().unwrap_or(""), keep.len(), gone.len());
        for k in &keep {
            let reasons: Vec<&str> = k["reasons"].as_array().map(|r| r.iter().filter_map(|x| x.as_str()).collect()).unwrap_or_default();
            say!("  keep    {}  {}  {}", short(k), k["time"].as_str().unwrap_or(""), reasons.join(", "));
        }
        for r in &gone {
            say!("  remove  {}  {}", short(r), r["time"].as_str().unwrap_or(""));
        }
    }
}

pub async fn hold(g: &Global, a: HoldArgs) -> Result<u8> {
    let repo = open(g).await?;
    let snap = repo.find_snapshot(&a.snapshot).await?;
    let h = place_hold(&repo, snap.id, a.reason.as_deref().unwrap_or("")).await?;
    if g.json {
        return print_json(&json!({"snapshot": h.snapshot, "reason": h.reason, "by": h.by, "time": h.time})).map(|_| 0);
    }
    say!("snapshot {} is held: {} (by {})", snap.id.short(), h.reason, h.by);
    Ok(0)
}

pub async fn release(g: &Global, a: HoldArgs) -> Result<u8> {
    let repo = open(g).await?;
    let snap = repo.find_snapshot(&a.snapshot).await?;
    let n = release_hold(&repo, snap.id).await?;
    if g.json {
        return print_json(&json!({"snapshot": snap.id, "released": n})).map(|_| 0);
    }
    say!("released {n} hold(s) on snapshot {}", snap.id.short());
    Ok(0)
}

pub async fn holds(g: &Global) -> Result<u8> {
    let repo = open(g).await?;
    let all = list_holds(&repo).await?;
    if g.json {
        return print_json(
            &all.iter().map(|h| json!({"snapshot": h.snapshot, "reason": h.reason, "by": h.by, "time": h.time})).collect::<Vec<_>>(),
        )
        .map(|_| 0);
    }
    for h in &all {
        say!("{}  {}  {}  {}", h.snapshot.short(), h.time.format("%Y-%m-%d %H:%M:%S"), h.by, h.reason);
    }
    say!("{} holds", all.len());
    Ok(0)
}
