//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's
//! leader election does it: a daemon runs jobs only while it holds the
//! lease; it renews it every third of the lease's duration and gives up
//! (cancels its jobs and stops) when it could not renew within two thirds,
//! before the lease can expire and a standby take over. A standby tries to
//! take the lease once it expired. Every write carries the
//! resourceVersion it read, so two candidates racing for it cannot both win.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use crate::Error;

pub struct Lease {
    api: Api<DynamicObject>,
    cluster: String,
    name: String,
    identity: String,
    duration: Duration,
}

fn resource() -> ApiResource {
    ApiResource {
        group: "coordination.k8s.io".into(),
        version: "v1".into(),
        api_version: "coordination.k8s.io/v1".into(),
        kind: "Lease".into(),
        plural: "leases".into(),
    }
}

fn micro(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// What a lease says: its holder, and until when it holds it.
fn held(lease: &Value) -> Option<(String, DateTime<Utc>)> {
    let spec = &lease["spec"];
    let holder = spec["holderIdentity"].as_str()?.to_string();
    let renewed = DateTime::parse_from_rfc3339(spec["renewTime"].as_str()?).ok()?.with_timezone(&Utc);
    let secs = spec["leaseDurationSeconds"].as_i64()?;
    Some((holder, renewed + chrono::Duration::seconds(secs)))
}

impl Lease {
    /// The lease `k8s://[CONTEXT]/NAMESPACE/NAME`, for this daemon (`identity`).
    pub async fn new(spec: &str, identity: &str, duration: Duration) -> crate::Result<Lease> {
        let r = crate::planwatch::PlanRef::parse(spec)?;
        let client = tresor_sources::k8s::client(&r.cluster).await.map_err(|e| Error::Invalid(e.to_string()))?;
        let api = Api::namespaced_with(client, &r.namespace, &resource());
        Ok(Lease { api, cluster: r.cluster, name: r.name, identity: identity.into(), duration })
    }

    /// Wait until this daemon holds the lease; its term (the lease's transitions).
    pub async fn acquire(&self) -> u64 {
        loop {
            match self.try_acquire().await {
                Ok(Some(term)) => return term,
                Ok(None) => {}
                Err(e) => tracing::warn!("leader election: {e}"),
            }
            tokio::time::sleep(self.duration / 4).await;
        }
    }

    /// Take or renew the lease if it is free, expired or ours: Some(term).
    async fn try_acquire(&self) -> Result<Option<u64>, String> {
        let now = Utc::now();
        let fail = |e: kube::Error| format!("{}: {}", self.cluster, tresor_sources::k8s::api_message(&e));
        let seconds = self.duration.as_secs().max(1);
        let Some(current) = self.api.get_opt(&self.name).await.map_err(fail)? else {
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": self.name},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": seconds, "acquireTime": micro(now),
                         "renewTime": micro(now), "leaseTransitions": 0}});
            let obj: DynamicObject = serde_json::from_value(lease).map_err(|e| e.to_string())?;
            return match self.api.create(&PostParams::default(), &obj).await {
                Ok(_) => Ok(Some(0)),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
                Err(e) => Err(fail(e)),
            };
        };
        let mut lease = serde_json::to_value(&current).map_err(|e| e.to_string())?;
        let transitions = lease["spec"]["leaseTransitions"].as_u64().unwrap_or(0);
        let term = match held(&lease) {
            Some((holder, _)) if holder == self.identity => transitions,
            Some((_, until)) if until > now => return Ok(None),
            _ => {
                lease["spec"]["holderIdentity"] = self.identity.clone().into();
                lease["spec"]["acquireTime"] = micro(now).into();
                transitions + 1
            }
        };
        lease["spec"]["renewTime"] = micro(now).into();
        lease["spec"]["leaseDurationSeconds"] = seconds.into();
        lease["spec"]["leaseTransitions"] = term.into();
        let obj: DynamicObject = serde_json::from_value(lease).map_err(|e| e.to_string())?;
        match self.api.replace(&self.name, &PostParams::default(), &obj).await {
            Ok(_) => Ok(Some(term)),
            // Someone else wrote it since we read it: they won this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(fail(e)),
        }
    }

    /// Renew while it can; returns once a renewal could not be made within
    /// two thirds of the lease's duration (or another holder has it).
    pub async fn hold(&self, term: u64) {
        let deadline = self.duration * 2 / 3;
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            // A renewal that hangs (a half-open connection) must not outlast
            // the lease: past the deadline another replica may lead.
            let left = deadline.saturating_sub(last.elapsed());
            match tokio::time::timeout(left, self.try_acquire()).await {
                Ok(Ok(Some(t))) if t == term => last = tokio::time::Instant::now(),
                Ok(Ok(_)) => return,
                Ok(Err(e)) => tracing::warn!("leader election: cannot renew: {e}"),
                Err(_) => tracing::warn!("leader election: the renewal did not answer in time"),
            }
            if last.elapsed() > deadline {
                return;
            }
        }
    }
}
