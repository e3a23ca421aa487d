//! `tresor restore-app APP --time T`: an application of the plan back as
//! of a moment (tresor_controller::app_restore does it), said per source
//! and as a whole.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use tresor_controller::app_restore::{Report, Request, SourcePoint, restore_app as run};
use tresor_controller::daemon::load_plan;
use tresor_controller::plan::Plan;

use crate::commands::print_json;
use crate::opts::{Global, RestoreAppArgs};

pub async fn restore_app(g: &Global, a: RestoreAppArgs) -> Result<u8> {
    let plan = load_plan(&a.plan, Utc::now())?;
    let Some(app) = plan.applications.iter().find(|x| x.name == a.app).cloned() else {
        let known: Vec<&str> = plan.applications.iter().map(|x| x.name.as_str()).collect();
        bail!(
            "the plan has no application {:?} (applications: {})",
            a.app,
            if known.is_empty() { "none".into() } else { known.join(", ") }
        );
    };
    let time = a.time.as_deref().map(crate::data::parse_time).transpose()?.map(|t| t.with_timezone(&Utc));
    let mut targets = BTreeMap::new();
    for t in &a.targets {
        let Some((source, target)) = t.split_once('=') else { bail!("cannot read target {t:?} (use SOURCE=TARGET)") };
        if !app.sources.iter().any(|s| s.source == source) {
            bail!("--target {source}=…: application {} has no source {source:?}", app.name);
        }
        targets.insert(source.to_string(), target.to_string());
    }
    for m in &a.namespace_mapping {
        if m.split_once(':').is_none() {
            bail!("cannot read namespace mapping {m:?} (use OLD:NEW)");
        }
    }
    let exe = std::env::current_exe().context("cannot tell where tresor is installed")?;
    let state = crate::drill::state_of(&plan, &std::path::absolute(&a.plan)?);
    let (namespace_mapping, dry_run) = (a.namespace_mapping.clone(), a.dry_run || a.preview);
    let shared = plan.clone();
    let report = tokio::task::spawn_blocking(move || {
        run(&Request { exe: &exe, plan: &shared, app: &app, time, targets, namespace_mapping, dry_run, scratch: false })
    })
    .await?;
    if a.preview {
        preview(g, &plan, &report, &state).await?;
    } else if g.json {
        print_json(&report)?;
    } else {
        print(&report);
    }
    match &report.error {
        Some(e) => bail!("{e}"),
        None => Ok(0),
    }
}

fn print(r: &Report) {
    let verb = if r.dry_run { "would restore" } else { "restored" };
    for s in &r.sources {
        let exact = if s.exact { ", recovered exactly to it through the archived WAL" } else { "" };
        say!(
            "{verb} {} ({}) to {}: snapshot {} of {}, point {}{exact}{}",
            s.source,
            s.kind,
            s.target,
            &s.snapshot[..8.min(s.snapshot.len())],
            s.snapshot_time.to_rfc3339(),
            s.point.to_rfc3339(),
            if s.result.is_empty() { String::new() } else { format!(": {}", s.result) }
        );
    }
    for o in r.hooks.iter().chain(&r.checks) {
        say!("{}", crate::app_drill::outcome_line(o));
    }
    if !r.sources.is_empty() {
        say!("application {}: consistency window {:.1} s between its sources' points", r.application, r.consistency_window_seconds);
    }
    if r.passed && !r.dry_run {
        say!("application {} restored in {:.1} s; {} smoke checks passed", r.application, r.seconds, r.checks.len());
    }
}

/// `--preview`: per source what would be replaced and the predicted duration.
async fn preview(g: &Global, plan: &Plan, r: &Report, state: &std::path::Path) -> Result<()> {
    let history = match state.exists() {
        true => tresor_controller::state::State::open(state)?.drills(chrono::DateTime::<Utc>::UNIX_EPOCH)?,
        false => Vec::new(),
    };
    let mut previews = tresor_controller::app_preview::preview(r, &history);
    for (p, s) in previews.iter_mut().zip(&r.sources) {
        match s.kind.as_str() {
            "files" => p.replaces = Some(files(g, plan, s).await?),
            "k8s" => p.replaces = Some(objects(g, plan, s).await?),
            _ => {}
        }
    }
    let total: Option<f64> = previews.iter().map(|p| p.predicted_seconds).sum();
    if g.json {
        return print_json(
            &serde_json::json!({"application": r.application, "sources": previews, "predicted_seconds": total, "error": r.error}),
        );
    }
    for p in &previews {
        let replaces = p.replaces.as_deref().unwrap_or("restored there");
        let predicted = match p.predicted_seconds {
            Some(s) => format!("predicted {s:.1} s from {} drills", p.drills),
            None => p.unpredictable.clone().unwrap_or_else(|| "no drill history to predict its duration".into()),
        };
        say!("{} ({}) snapshot {} into {}: {replaces}; {predicted}", p.source, p.kind, &p.snapshot[..8.min(p.snapshot.len())], p.target);
    }
    if let Some(t) = total {
        say!("application {}: predicted {t:.1} s (preview: nothing changed)", r.application);
    }
    Ok(())
}

/// A directory source's preview (`restore --preview`'s): what it would
/// add, change and remove, and what stands in its way if anything does.
async fn files(g: &Global, plan: &Plan, s: &SourcePoint) -> Result<String> {
    let (repository, snap, folder) = open(g, plan, s).await?;
    let target = std::path::Path::new(&s.target);
    let p = crate::preview::changes(&repository, &snap, &folder, target, s.spec.delete).await?;
    let names = |v: &[std::path::PathBuf]| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ");
    let mut text = format!(
        "{} added ({}), {} changed ({}), {} removed ({})",
        p.added.len(),
        names(&p.added),
        p.changed.len(),
        names(&p.changed),
        p.removed.len(),
        names(&p.removed)
    );
    if !p.unrestorable.is_empty() {
        text += &format!(", {} not restorable ({})", p.unrestorable.len(), names(&p.unrestorable));
    }
    if !p.damaged.is_empty() {
        let damaged: Vec<String> = p.damaged.iter().map(|(dir, why)| format!("{}/: {why}", dir.display())).collect();
        text += &format!(", {} damaged ({})", damaged.len(), damaged.join("; "));
    }
    Ok(text)
}

/// The source's repository, its snapshot and the folder in it the restore takes.
async fn open(g: &Global, plan: &Plan, s: &SourcePoint) -> Result<(tresor_engine::Repository, tresor_engine::Snapshot, String)> {
    let spec = plan.sources.iter().find(|p| p.name == s.source).context("prepared from the plan")?;
    let (_, repo) = plan.repository_of(spec).context("prepared from the plan")?;
    let password = tresor_engine::Password::read_file(&repo.password_file)
        .with_context(|| format!("cannot read password file {}", repo.password_file.display()))?;
    let location = tresor_storage::Location::parse(repo.url.expose())?;
    let repository = tresor_engine::Repository::open(&location, &crate::commands::open_options(g, password)?).await?;
    let (id, folder) = s.spec.snapshot.as_deref().unwrap_or_default().split_once(':').unwrap_or((s.snapshot.as_str(), "/"));
    let snap = repository.find_snapshot(id).await?;
    Ok((repository, snap, folder.to_string()))
}

/// A `k8s://` source's preview (`restore --preview`'s): each object's would-be result.
async fn objects(g: &Global, plan: &Plan, s: &SourcePoint) -> Result<String> {
    let (repository, snap, _) = open(g, plan, s).await?;
    let opts = tresor_sources::k8s_restore::RestoreOptions {
        mapping: crate::k8s::pairs("namespace mapping", &s.spec.namespace_mapping)?,
        dry_run: true,
        ..Default::default()
    };
    let to = s.spec.to.as_ref().map_or("k8s://", |to| to.expose());
    let (objects, lost) = crate::k8s::objects(&repository, &snap).await?;
    let mut results = tresor_sources::k8s_restore::restore(to, objects, &opts).await?;
    results.extend(lost);
    let mut said: Vec<String> = ["would create", "would update", "would skip"]
        .iter()
        .map(|what| {
            let names: Vec<&str> = results.iter().filter(|r| r.result == *what).map(|r| r.object.as_str()).collect();
            format!("{} {what} ({})", names.len(), names.join(" "))
        })
        .collect();
    let failed: Vec<String> = results.iter().filter(|r| r.result == "failed").map(|r| format!("{}: {}", r.object, r.detail)).collect();
    if !failed.is_empty() {
        said.push(format!("{} failed ({})", failed.len(), failed.join("; ")));
    }
    Ok(said.join(", "))
}
