//! A `BackupPlan` resource (tresor.dev/v1alpha1, deploy/kubernetes/
//! crd-backupplan.yaml) as the daemon's plan, watched with kube-rs's
//! runtime. Each new spec is checked; an accepted one is written to the
//! plan file and reloaded, and the resource's status says which it was and
//! why: an invalid plan never replaces a running one.

use std::path::{Path, PathBuf};

use chrono::Utc;
use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

use crate::check::{Severity, check};
use crate::daemon::Command;
use crate::plan::Plan;
use crate::{Error, Result};

/// `k8s://[CONTEXT]/NAMESPACE/NAME`.
#[derive(Debug, Clone)]
pub struct PlanRef {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
}

impl PlanRef {
    pub fn parse(spec: &str) -> Result<PlanRef> {
        let bad = || Error::Invalid(format!("cannot read BackupPlan reference {spec:?} (use k8s://[CONTEXT]/NAMESPACE/NAME)"));
        let rest = spec.strip_prefix("k8s://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (ctx, ns, name) = match parts.as_slice() {
            [ns, name] => ("", *ns, *name),
            [ctx, ns, name] => (*ctx, *ns, *name),
            _ => return Err(bad()),
        };
        if ns.is_empty() || name.is_empty() {
            return Err(bad());
        }
        Ok(PlanRef { cluster: format!("k8s://{ctx}"), namespace: ns.into(), name: name.into() })
    }

    fn label(&self) -> String {
        format!("BackupPlan {}/{}", self.namespace, self.name)
    }
}

fn resource() -> ApiResource {
    ApiResource {
        group: "tresor.dev".into(),
        version: "v1alpha1".into(),
        api_version: "tresor.dev/v1alpha1".into(),
        kind: "BackupPlan".into(),
        plural: "backupplans".into(),
    }
}

async fn api(r: &PlanRef) -> Result<Api<DynamicObject>> {
    let client = tresor_sources::k8s::client(&r.cluster).await.map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(Api::namespaced_with(client, &r.namespace, &resource()))
}

/// Check a spec as a plan; write it to `file` when it is one. The plan's
/// size, or the first error (with the line in the rendered plan).
fn render(spec: &Value, file: &Path) -> std::result::Result<(usize, usize), String> {
    let text = serde_norway::to_string(spec).map_err(|e| e.to_string())?;
    let plan = Plan::parse(&text, file).map_err(|e| e.to_string())?;
    if let Some(first) = check(&plan, &text, Utc::now()).into_iter().find(|f| f.severity == Severity::Error) {
        return Err(format!("line {first}"));
    }
    write_private(file, &text).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok((plan.classes.len(), plan.sources.len()))
}

/// Write `text` readable by this user alone: a plan's URLs may hold
/// passwords. Written aside and renamed, so the daemon never reads half.
fn write_private(file: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let next = file.with_extension("next");
    tresor_engine::fsmeta::create_private(&next)?.write_all(text.as_bytes())?;
    std::fs::rename(next, file)
}

async fn set_status(api: &Api<DynamicObject>, name: &str, verdict: &std::result::Result<(usize, usize), String>) {
    let status = match verdict {
        Ok((classes, sources)) => json!({"accepted": "True", "message": "", "classes": classes, "sources": sources}),
        Err(why) => json!({"accepted": "False", "message": why}),
    };
    if let Err(e) = api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await {
        tracing::warn!("cannot set the status of BackupPlan {name}: {e}");
    }
}

/// Fetch the resource once and write its plan to `file` (before the daemon starts).
pub async fn fetch(r: &PlanRef, file: &Path) -> Result<()> {
    let api = api(r).await?;
    let obj = api.get(&r.name).await.map_err(|e| Error::Invalid(format!("{}: {}", r.label(), tresor_sources::k8s::api_message(&e))))?;
    let verdict = render(&obj.data["spec"], file);
    set_status(&api, &r.name, &verdict).await;
    verdict.map(|_| ()).map_err(|why| Error::Invalid(format!("{} is not a valid plan: {why}", r.label())))
}

/// Follow the resource: each changed spec checked, written and reloaded.
pub async fn watch(r: PlanRef, file: PathBuf, commands: UnboundedSender<Command>) {
    let api = match api(&r).await {
        Ok(api) => api,
        Err(e) => {
            tracing::error!("cannot watch {}: {e}; the plan stays as fetched at the start", r.label());
            return;
        }
    };
    let mut last: Option<Value> = None;
    // Back off on lasting errors (a role without watch, the CRD gone), as the runs' watcher does.
    let mut events = std::pin::pin!(watcher::watcher(api.clone(), watcher::Config::default()).default_backoff());
    while let Some(event) = events.next().await {
        let obj = match event {
            Ok(Event::Apply(o) | Event::InitApply(o)) if o.metadata.name.as_deref() == Some(r.name.as_str()) => o,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!("watching {}: {e}", r.label());
                continue;
            }
        };
        let spec = obj.data["spec"].clone();
        // Status updates (ours among them) change nothing to act on.
        if last.as_ref() == Some(&spec) {
            continue;
        }
        last = Some(spec.clone());
        let verdict = render(&spec, &file);
        set_status(&api, &r.name, &verdict).await;
        match &verdict {
            Ok(_) => {
                let _ = commands.send(Command::Reload { actor: r.label() });
            }
            Err(why) => tracing::error!("{} is not a valid plan, the running one stays: {why}", r.label()),
        }
    }
}
