//! Restore hooks on Kubernetes workloads: a Deployment or StatefulSet
//! scaled before a restore and back after it. The replicas it had are
//! remembered in an annotation on the workload itself, so a tresor that
//! died between the two finds them there and scales back to them, not to
//! the zero it left. Each scale waits until the controller reports the
//! workload ready (or, at zero, empty).

use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};

use crate::{Error, ErrorKind, Result};

/// Where a workload's replicas before a restore are remembered.
pub const REPLICAS_ANNOTATION: &str = "tresor.dev/replicas-before-restore";

/// One workload: `deployment/NAME` or `statefulset/NAME` in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `k8s://` or `k8s://CONTEXT`.
    pub cluster: String,
    pub namespace: String,
    /// `Deployment` or `StatefulSet`.
    pub kind: &'static str,
    pub name: String,
}

impl Workload {
    /// `deployment/web` (or `deploy/`, `statefulset/`, `sts/`) in `namespace`.
    pub fn parse(cluster: &str, namespace: &str, spec: &str) -> std::result::Result<Workload, String> {
        let (kind, name) =
            spec.split_once('/').ok_or_else(|| format!("cannot read workload {spec:?} (use deployment/NAME or statefulset/NAME)"))?;
        let kind = match kind.to_lowercase().as_str() {
            "deployment" | "deployments" | "deploy" => "Deployment",
            "statefulset" | "statefulsets" | "sts" => "StatefulSet",
            other => return Err(format!("cannot scale a {other}: only deployment/NAME and statefulset/NAME")),
        };
        if name.is_empty() {
            return Err(format!("cannot read workload {spec:?} (use deployment/NAME or statefulset/NAME)"));
        }
        Ok(Workload { cluster: cluster.into(), namespace: namespace.into(), kind, name: name.into() })
    }

    fn label(&self) -> String {
        format!("{}/{} in {}", self.kind.to_lowercase(), self.name, self.namespace)
    }

    fn fail(&self, kind: ErrorKind, why: impl ToString) -> Error {
        Error::of(kind, self.label(), why)
    }

    async fn api(&self) -> Result<Api<DynamicObject>> {
        let client = crate::k8s::client(&self.cluster).await?;
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", self.kind));
        Ok(Api::namespaced_with(client, &self.namespace, &ar))
    }

    async fn get(&self, api: &Api<DynamicObject>) -> Result<Value> {
        let obj = api.get(&self.name).await.map_err(|e| self.fail(ErrorKind::Other, crate::k8s::api_message(&e)))?;
        serde_json::to_value(obj).map_err(|e| self.fail(ErrorKind::Other, e))
    }

    /// Read the workload, let `change` alter it, and write it back as an
    /// update, so that a concurrent change is a conflict, not lost; one that
    /// meets a conflict (an autoscaler, a controller's write) is read and
    /// changed afresh, a few times. `change` says what it found, or None to
    /// write nothing.
    async fn update<T>(&self, api: &Api<DynamicObject>, mut change: impl FnMut(&mut Value) -> Option<T>) -> Result<Option<T>> {
        let mut conflicts = 0;
        loop {
            let mut obj = self.get(api).await?;
            let Some(found) = change(&mut obj) else { return Ok(None) };
            let obj: DynamicObject = serde_json::from_value(obj).map_err(|e| self.fail(ErrorKind::Other, e))?;
            match api.replace(&self.name, &PostParams::default(), &obj).await {
                Ok(_) => return Ok(Some(found)),
                Err(kube::Error::Api(s)) if s.code == 409 && conflicts < 4 => conflicts += 1,
                Err(e) => return Err(self.fail(ErrorKind::Other, crate::k8s::api_message(&e))),
            }
        }
    }

    /// The replicas a scale-down remembered, if one did and was not undone.
    pub async fn remembered(&self) -> Result<Option<u32>> {
        let obj = self.get(&self.api().await?).await?;
        Ok(remembered_in(&obj))
    }

    /// Scale to `replicas`, remembering the count it had, unless an earlier
    /// run remembered one already (that one is the original). The replicas
    /// it had and has now.
    pub async fn scale_to(&self, replicas: u32, limit: Duration) -> Result<(u32, u32)> {
        let api = self.api().await?;
        let scaled = self.update(&api, |obj| {
            let had = obj["spec"]["replicas"].as_u64().unwrap_or(1) as u32;
            if remembered_in(obj).is_none() {
                obj["metadata"]["annotations"][REPLICAS_ANNOTATION] = json!(had.to_string());
            }
            obj["spec"]["replicas"] = json!(replicas);
            Some(had)
        });
        let had = scaled.await?.unwrap_or(replicas);
        self.wait_ready(&api, replicas, limit).await?;
        Ok((had, replicas))
    }

    /// Back to the remembered replicas (or `replicas`), the annotation
    /// removed; `None` when nothing was remembered and no count is given.
    pub async fn scale_back(&self, replicas: Option<u32>, limit: Duration) -> Result<Option<(u32, u32)>> {
        let api = self.api().await?;
        let scaled = self.update(&api, |obj| {
            let want = replicas.or(remembered_in(obj))?;
            let had = obj["spec"]["replicas"].as_u64().unwrap_or(1) as u32;
            if let Some(a) = obj["metadata"]["annotations"].as_object_mut() {
                a.remove(REPLICAS_ANNOTATION);
            }
            obj["spec"]["replicas"] = json!(want);
            Some((had, want))
        });
        let Some((had, want)) = scaled.await? else { return Ok(None) };
        self.wait_ready(&api, want, limit).await?;
        Ok(Some((had, want)))
    }

    /// Until the controller has seen the change and reports `replicas`
    /// ready (and no more running), or the time limit.
    async fn wait_ready(&self, api: &Api<DynamicObject>, replicas: u32, limit: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let obj = self.get(api).await?;
            let status = &obj["status"];
            let seen = obj["metadata"]["generation"].as_i64().is_none_or(|g| status["observedGeneration"].as_i64().is_some_and(|o| o >= g));
            let count = |k: &str| status[k].as_u64().unwrap_or(0);
            if seen && count("readyReplicas") == u64::from(replicas) && count("replicas") == u64::from(replicas) {
                return Ok(());
            }
            if started.elapsed() >= limit {
                return Err(self.fail(
                    ErrorKind::Hook,
                    format!(
                        "not ready within {}s: {} of {replicas} replicas ready, {} running",
                        limit.as_secs(),
                        count("readyReplicas"),
                        count("replicas")
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn remembered_in(obj: &Value) -> Option<u32> {
    obj["metadata"]["annotations"][REPLICAS_ANNOTATION].as_str().and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_read_as_kubectl_names_them() {
        let w = Workload::parse("k8s://", "shop", "deploy/web").unwrap();
        assert_eq!((w.kind, w.name.as_str(), w.label()), ("Deployment", "web", "deployment/web in shop".to_string()));
        assert_eq!(Workload::parse("k8s://", "shop", "sts/db").unwrap().kind, "StatefulSet");
        assert_eq!(
            Workload::parse("k8s://", "shop", "pod/x").unwrap_err(),
            "cannot scale a pod: only deployment/NAME and statefulset/NAME"
        );
        assert_eq!(
            Workload::parse("k8s://", "shop", "web").unwrap_err(),
            "cannot read workload \"web\" (use deployment/NAME or statefulset/NAME)"
        );
    }
}
