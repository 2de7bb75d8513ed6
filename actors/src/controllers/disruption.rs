//! The disruption controller (upstream's `pkg/controller/disruption`): keeps each
//! PodDisruptionBudget's `status` current — `expectedPods`, `currentHealthy`,
//! `desiredHealthy`, `disruptionsAllowed`, `disruptedPods`, `observedGeneration` and the
//! `DisruptionAllowed` condition.
//!
//! The pods a budget covers are those of its namespace its selector matches (an empty
//! selector matches all, none matches nothing). Healthy means Ready and not deleting, and
//! not evicted within the last two minutes (`status.disruptedPods`, written by the eviction
//! subresource). `minAvailable` as a number counts the selected pods; `maxUnavailable` and
//! a percent `minAvailable` need the expected scale: the summed `spec.replicas` of the
//! pods' controllers (a ReplicaSet's Deployment, a ReplicaSet, a ReplicationController, a
//! StatefulSet). A pod without such a controller makes the sync fail safe: no disruption
//! allowed, condition reason `SyncFailed`, and a warning event on the budget.
//!
//! The eviction subresource decrements `disruptionsAllowed` in the budget's own
//! resourceVersion-guarded write; this controller's status write is guarded the same way,
//! so neither can overwrite the other.

use super::Ctx;
use crate::client::{gvr, ApiClient, Gvr};
use crate::events::Recorder;
use crate::informer::{key_of, split_key, Change, Informer};
use crate::runtime::{Action, Controller, Enqueue, ReconcileError, Reconciler};
use actix::Actor;
use capstan_api::disruption as pdbs;
use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// PodDisruptionBudgets.
pub const PODDISRUPTIONBUDGETS: Gvr = Gvr::new("policy", "v1", "poddisruptionbudgets");

struct Disruption {
    client: ApiClient,
    recorder: Recorder,
    pdbs: Arc<Informer>,
    pods: Arc<Informer>,
    replica_sets: Arc<Informer>,
    deployments: Arc<Informer>,
    stateful_sets: Arc<Informer>,
    rcs: Arc<Informer>,
}

fn replicas(obj: &Value) -> i64 {
    obj["spec"]["replicas"].as_i64().unwrap_or(1)
}

fn uid(obj: &Value) -> String {
    obj["metadata"]["uid"].as_str().unwrap_or("").to_string()
}

impl Disruption {
    /// The controller of `pod` that has a scale, as `(uid, replicas)` (upstream's finders:
    /// ReplicationController, Deployment, ReplicaSet, StatefulSet).
    fn controller_scale(&self, pod: &Value) -> Result<(String, i64), String> {
        let name = pod["metadata"]["name"].as_str().unwrap_or("");
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let Some(r) = pod["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["controller"] == true))
        else {
            return Err(format!("found no controller ref for pod \"{name}\""));
        };
        let (kind, owner, owner_uid) = (
            r["kind"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            r["uid"].as_str().unwrap_or(""),
        );
        let key = format!("{ns}/{owner}");
        let found = |inf: &Informer| inf.get(&key).filter(|o| uid(o) == owner_uid);
        let apps = r["apiVersion"].as_str().unwrap_or("").starts_with("apps/");
        match kind {
            "ReplicationController" if r["apiVersion"] == "v1" => {
                if let Some(rc) = found(&self.rcs) {
                    return Ok((uid(&rc), replicas(&rc)));
                }
            }
            "ReplicaSet" if apps => {
                if let Some(rs) = found(&self.replica_sets) {
                    let dep = rs["metadata"]["ownerReferences"].as_array().and_then(|rs| {
                        rs.iter().find(|r| r["controller"] == true && r["kind"] == "Deployment")
                    });
                    if let Some(d) = dep {
                        let dkey = format!("{ns}/{}", d["name"].as_str().unwrap_or(""));
                        if let Some(dep) =
                            self.deployments.get(&dkey).filter(|o| uid(o) == d["uid"].as_str().unwrap_or(""))
                        {
                            return Ok((uid(&dep), replicas(&dep)));
                        }
                    }
                    return Ok((uid(&rs), replicas(&rs)));
                }
            }
            "StatefulSet" if apps => {
                if let Some(ss) = found(&self.stateful_sets) {
                    return Ok((uid(&ss), replicas(&ss)));
                }
            }
            _ => {}
        }
        Err(format!("found no controllers for pod \"{name}\""))
    }

    /// `(status, requeue)` for `pdb` over `pods` at `now`.
    fn status(
        &self,
        pdb: &Value,
        pods: &[Arc<Value>],
        now: jiff::Timestamp,
    ) -> Result<(Value, Option<Duration>), String> {
        let scale = if pdbs::needs_scale(pdb) {
            let mut seen = BTreeMap::new();
            for p in pods {
                let (u, n) = self.controller_scale(p)?;
                seen.insert(u, n);
            }
            Some(seen.values().sum())
        } else {
            None
        };
        let (expected, desired) = pdbs::expected_and_desired(pdb, pods.len() as i64, scale);
        // Evictions not yet seen as deletions keep their pods out of the healthy count
        // until DeletionTimeout.
        let old = pdb["status"]["disruptedPods"].as_object();
        let mut disrupted = Map::new();
        let mut recheck: Option<Duration> = None;
        for p in pods.iter().filter(|p| !pdbs::deleting(p)) {
            let name = p["metadata"]["name"].as_str().unwrap_or("");
            let Some(at) = old.and_then(|m| m.get(name)).and_then(Value::as_str) else { continue };
            let Ok(t) = at.parse::<jiff::Timestamp>() else { continue };
            let left = t.as_second() + pdbs::DELETION_TIMEOUT_SECONDS - now.as_second();
            if left > 0 {
                disrupted.insert(name.to_string(), json!(at));
                let d = Duration::from_secs(left as u64);
                recheck = Some(recheck.map_or(d, |r| r.min(d)));
            }
        }
        let healthy = pods
            .iter()
            .filter(|p| !pdbs::deleting(p) && pdbs::pod_ready(p))
            .filter(|p| !disrupted.contains_key(p["metadata"]["name"].as_str().unwrap_or("")))
            .count() as i64;
        let mut allowed = healthy - desired;
        if expected <= 0 || allowed <= 0 {
            allowed = 0;
        }
        let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(1);
        let now_s = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string();
        let mut status = json!({
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "expectedPods": expected,
            "disruptionsAllowed": allowed,
            "observedGeneration": generation,
            "conditions": pdbs::conditions(&pdb["status"]["conditions"], allowed, generation, &now_s),
        });
        if !disrupted.is_empty() {
            status["disruptedPods"] = Value::Object(disrupted);
        }
        Ok((status, recheck))
    }
}

/// Whether two statuses say the same (ignoring condition times).
fn same_status(a: &Value, b: &Value) -> bool {
    let strip = |s: &Value| {
        let mut s = s.clone();
        if let Some(cs) = s["conditions"].as_array_mut() {
            for c in cs {
                if let Some(c) = c.as_object_mut() {
                    c.remove("lastTransitionTime");
                }
            }
        }
        if s["disruptedPods"].as_object().is_some_and(Map::is_empty) {
            if let Some(m) = s.as_object_mut() {
                m.remove("disruptedPods");
            }
        }
        s
    };
    strip(a) == strip(b)
}

impl Reconciler for Disruption {
    fn name(&self) -> &'static str {
        "disruption"
    }

    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            for inf in [
                &self.pdbs,
                &self.pods,
                &self.replica_sets,
                &self.deployments,
                &self.stateful_sets,
                &self.rcs,
            ] {
                inf.wait_synced().await;
            }
            let Some(pdb) = self.pdbs.get(&key) else { return Ok(Action::Done) };
            if pdbs::deleting(&pdb) {
                return Ok(Action::Done);
            }
            let (ns, _) = split_key(&key);
            let ns = ns.unwrap_or("");
            let pods: Vec<Arc<Value>> =
                self.pods.list_ns(ns).into_iter().filter(|p| pdbs::selects(&pdb, p)).collect();
            let now = jiff::Timestamp::now();
            let (status, requeue) = match self.status(&pdb, &pods, now) {
                Ok(s) => s,
                Err(msg) => {
                    // Fail safe: nothing may be disrupted while the budget cannot be computed.
                    self.recorder.event(&pdb, "Warning", "CalculateExpectedPodCountFailed", &msg).await;
                    let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(1);
                    let now_s = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string();
                    let mut s = pdb["status"].clone();
                    if !s.is_object() {
                        s = json!({});
                    }
                    s["disruptionsAllowed"] = json!(0);
                    s["conditions"] = pdbs::conditions_with(
                        &pdb["status"]["conditions"],
                        false,
                        "SyncFailed",
                        &msg,
                        generation,
                        &now_s,
                    );
                    (s, Some(Duration::from_secs(10)))
                }
            };
            let done = match requeue {
                Some(d) => Action::RequeueAfter(d),
                None => Action::Done,
            };
            if same_status(&pdb["status"], &status) {
                return Ok(done);
            }
            let mut new = (*pdb).clone();
            new["status"] = status;
            match self.client.update_status(PODDISRUPTIONBUDGETS, Some(ns), new).await {
                Ok(_) => Ok(done),
                Err(e) if e.is_not_found() => Ok(Action::Done),
                // An eviction decremented the budget meanwhile: compute again.
                Err(e) if e.is_conflict() => Ok(Action::RequeueAfter(Duration::ZERO)),
                Err(e) => Err(e.into()),
            }
        })
    }
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let pdbs_inf = ctx.informers.get(PODDISRUPTIONBUDGETS);
    let pods = ctx.informers.get(gvr::PODS);
    let r = Arc::new(Disruption {
        client: ctx.client.clone(),
        recorder: ctx.recorder.clone(),
        pdbs: pdbs_inf.clone(),
        pods: pods.clone(),
        replica_sets: ctx.informers.get(gvr::REPLICA_SETS),
        deployments: ctx.informers.get(gvr::DEPLOYMENTS),
        stateful_sets: ctx.informers.get(gvr::STATEFUL_SETS),
        rcs: ctx.informers.get(super::replicaset::REPLICATION_CONTROLLERS),
    });
    let addr = Controller::new(r.clone(), 4).start();
    {
        let (ctx, addr) = (ctx.clone(), addr.clone());
        pdbs_inf.on_change(Arc::new(move |c: &Change| {
            if let Change::Applied { new, .. } = c {
                let k = key_of(new);
                if ctx.owns(&k) {
                    addr.do_send(Enqueue(k));
                }
            }
        }));
    }
    // A pod's change touches the budgets that select it (before or after).
    {
        let (ctx, addr, pdbs_inf) = (ctx.clone(), addr.clone(), pdbs_inf.clone());
        pods.on_change(Arc::new(move |c: &Change| {
            let (old, new) = match c {
                Change::Applied { old, new } => (old.clone(), Some(new.clone())),
                Change::Deleted(o) => (Some(o.clone()), None),
            };
            let ns = c.object()["metadata"]["namespace"].as_str().unwrap_or("").to_string();
            for pdb in pdbs_inf.list_ns(&ns) {
                let hit = |p: &Option<Arc<Value>>| p.as_ref().is_some_and(|p| pdbs::selects(&pdb, p));
                if hit(&old) || hit(&new) {
                    let k = key_of(&pdb);
                    if ctx.owns(&k) {
                        addr.do_send(Enqueue(k));
                    }
                }
            }
        }));
    }
    // A controller's scale changes what maxUnavailable and percents mean.
    for inf in [&r.replica_sets, &r.deployments, &r.stateful_sets, &r.rcs] {
        let (ctx, addr, pdbs_inf) = (ctx.clone(), addr.clone(), pdbs_inf.clone());
        inf.on_change(Arc::new(move |c: &Change| {
            let ns = c.object()["metadata"]["namespace"].as_str().unwrap_or("").to_string();
            for pdb in pdbs_inf.list_ns(&ns) {
                if pdbs::needs_scale(&pdb) {
                    let k = key_of(&pdb);
                    if ctx.owns(&k) {
                        addr.do_send(Enqueue(k));
                    }
                }
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_comparison_ignores_times() {
        let a = json!({"currentHealthy": 1, "conditions": [{"type": "DisruptionAllowed", "lastTransitionTime": "a"}]});
        let b = json!({"currentHealthy": 1, "conditions": [{"type": "DisruptionAllowed", "lastTransitionTime": "b"}], "disruptedPods": {}});
        assert!(same_status(&a, &b));
        assert!(!same_status(&a, &json!({"currentHealthy": 2, "conditions": b["conditions"].clone()})));
    }
}
