//! `forget`, `hold`, `release` and `holds`.

use std::collections::HashMap;

use anyhow::{Result, bail};
use serde_json::json;
use tresor_engine::holds::{hold as place_hold, holds as list_holds, release as release_hold};
use tresor_engine::retention::{GroupBy, Period, Policy, Span, plan};
use tresor_engine::{Id, Snapshot};

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

pub async fn forget(g: &Global, a: ForgetArgs) -> Result<u8> {
    let repo = open(g).await?;
    if repo.config().append_only && !a.dry_run {
        return Err(tresor_engine::Error::AppendOnly("forget".into()).into());
    }
    // A prune that cannot fit must refuse before any snapshot goes.
    if a.prune {
        repo.ensure_memory().await?;
    }
    let held: HashMap<Id, String> =
        list_holds(&repo).await?.into_iter().map(|h| (h.snapshot, format!("{} ({})", h.reason, h.by))).collect();
    let all = repo.snapshots().await?;
    let mut remove: Vec<Snapshot> = Vec::new();
    let mut report = Vec::new();
    if a.snapshots.is_empty() {
        // Named pieces of an archive (WAL) follow their chain, below.
        let chosen = tresor_engine::select::filter(all.clone(), &a.select.filter(), false);
        let groups = plan(chosen, &policy(&a)?, GroupBy::parse(&a.group_by)?, &chrono::Local, &held, a.allow_empty)?;
        for group in groups {
            let (keep, gone): (Vec<_>, Vec<_>) = group.verdicts.into_iter().partition(|v| v.keep());
            report.push(json!({
                "group": group.key,
                "keep": keep.iter().map(|v| json!({"id": v.snapshot.id, "time": v.snapshot.time, "reasons": v.reasons})).collect::<Vec<_>>(),
                "remove": gone.iter().map(|v| json!({"id": v.snapshot.id, "time": v.snapshot.time})).collect::<Vec<_>>(),
            }));
            remove.extend(gone.into_iter().map(|v| v.snapshot));
        }
    } else {
        for spec in &a.snapshots {
            let s = tresor_engine::select::select(all.clone(), spec, &Default::default())?;
            if let Some(reason) = held.get(&s.id) {
                bail!("snapshot {} is under legal hold: {reason}; release it first", s.id.short());
            }
            remove.push(s);
        }
        report.push(
            json!({"group": "given", "keep": [], "remove": remove.iter().map(|s| json!({"id": s.id, "time": s.time})).collect::<Vec<_>>()}),
        );
    }
    let removed: tresor_engine::IdSet = remove.iter().map(|s| s.id).collect();
    let wal = crate::pg::wal_to_forget(&all, &removed, &held);
    if !wal.is_empty() {
        report.push(json!({
            "group": "pg-wal (no remaining base backup needs it)",
            "keep": [],
            "remove": wal.iter().map(|s| json!({"id": s.id, "time": s.time, "name": s.name})).collect::<Vec<_>>(),
        }));
        remove.extend(wal);
    }
    if g.json {
        print_json(&json!({"dry_run": a.dry_run, "groups": report}))?;
    } else {
        print_report(&report, a.dry_run);
    }
    if !a.dry_run {
        let ids: Vec<Id> = remove.iter().map(|s| s.id).collect();
        let locked = repo.remove_snapshots(&ids).await?.locked.len();
        if locked > 0 {
            eprintln!("tresor: {locked} snapshot(s) are still under the storage's Object Lock and stay; forget them again once it expires");
        }
    }
    if a.prune {
        crate::prune::run(g, &repo, &a.prune_opts, a.dry_run).await?;
    }
    Ok(0)
}

fn print_report(report: &[serde_json::Value], dry_run: bool) {
    let short = |v: &serde_json::Value| v["id"].as_str().map(|s| s[..8].to_string()).unwrap_or_default();
    let verb = if dry_run { "would remove" } else { "removed" };
    for group in report {
        let (keep, gone) = (group["keep"].as_array().cloned().unwrap_or_default(), group["remove"].as_array().cloned().unwrap_or_default());
        println!("group {}: keep {}, {verb} {}", group["group"].as_str().unwrap_or(""), keep.len(), gone.len());
        for k in &keep {
            let reasons: Vec<&str> = k["reasons"].as_array().map(|r| r.iter().filter_map(|x| x.as_str()).collect()).unwrap_or_default();
            println!("  keep    {}  {}  {}", short(k), k["time"].as_str().unwrap_or(""), reasons.join(", "));
        }
        for r in &gone {
            println!("  {}  {}  {}", if dry_run { "remove?" } else { "remove " }, short(r), r["time"].as_str().unwrap_or(""));
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
    println!("snapshot {} is held: {} (by {})", snap.id.short(), h.reason, h.by);
    Ok(0)
}

pub async fn release(g: &Global, a: HoldArgs) -> Result<u8> {
    let repo = open(g).await?;
    let snap = repo.find_snapshot(&a.snapshot).await?;
    let n = release_hold(&repo, snap.id).await?;
    if g.json {
        return print_json(&json!({"snapshot": snap.id, "released": n})).map(|_| 0);
    }
    println!("released {n} hold(s) on snapshot {}", snap.id.short());
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
        println!("{}  {}  {}  {}", h.snapshot.short(), h.time.format("%Y-%m-%d %H:%M:%S"), h.by, h.reason);
    }
    println!("{} holds", all.len());
    Ok(0)
}
