//! The deployment controller: rolls a Deployment's pod template out through ReplicaSets.
//!
//! As upstream: each distinct template gets a ReplicaSet `<deployment>-<hash>` whose
//! selector and template carry the `pod-template-hash` label; the
//! `deployment.kubernetes.io/revision` annotation (on the ReplicaSets and the Deployment)
//! grows with each new template, and an old ReplicaSet whose template comes back (`kubectl
//! rollout undo`) is reused with the next revision. RollingUpdate keeps the pods within
//! `replicas + maxSurge` and the available pods at or above `replicas - maxUnavailable`
//! (see [`rollout`]); Recreate scales the old sets to zero, waits until their pods are
//! gone, then scales the new one up. Paused deployments and resizes mid-rollout only
//! scale (proportionally). Old ReplicaSets with no replicas beyond
//! `revisionHistoryLimit` are deleted. Status carries the counts kubectl reads and the
//! `Available` / `Progressing` conditions (with `ProgressDeadlineExceeded`).
//!
//! Counts come from the shared pod cache (active pods controlled by each ReplicaSet), so
//! the deployment's status never trails its ReplicaSets' status writes.

pub mod rollout;

use super::replicaset::{
    annotations_of, controller_ref, controller_ref_to, controller_uid, int_at, is_terminating, labels_of,
    meta_str, now_rfc3339, parse_time, pod_availability, pod_is_active, pod_is_ready, selector_of, Written,
};
use super::Ctx;
use crate::client::{gvr, ApiClient};
use crate::events::Recorder;
use crate::informer::{key_of, Change, Informer, Key};
use crate::runtime::{owner_key, Action, Controller, Enqueue, ReconcileError, Reconciler};
use actix::Actor;
use capstan_api::selectors::LabelSelector;
use futures::future::BoxFuture;
use rollout::{equal_ignore_hash, Counts, HASH_LABEL};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Deployment annotations not copied onto ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

const AVAILABLE: &str = "Available";
const PROGRESSING: &str = "Progressing";
const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
const TIMED_OUT: &str = "ProgressDeadlineExceeded";
const PAUSED: &str = "DeploymentPaused";
const RESUMED: &str = "DeploymentResumed";

struct Deployments {
    client: ApiClient,
    recorder: Recorder,
    deployments: Arc<Informer>,
    sets: Arc<Informer>,
    pods: Arc<Informer>,
    written: Written,
}

/// One ReplicaSet of the deployment during a sync.
#[derive(Debug, Clone)]
struct Rs {
    obj: Value,
    counts: Counts,
    ready: i64,
    /// Pods not finished, terminating ones included (Recreate waits for them).
    running: i64,
}

impl Rs {
    fn name(&self) -> String {
        meta_str(&self.obj, "name").unwrap_or("").to_string()
    }

    fn revision(&self) -> i64 {
        annotations_of(&self.obj).get(REVISION).and_then(|r| r.parse().ok()).unwrap_or(0)
    }

    fn annotation_i64(&self, k: &str) -> Option<i64> {
        annotations_of(&self.obj).get(k).and_then(|r| r.parse().ok())
    }

    fn created(&self) -> (Option<jiff::Timestamp>, String) {
        (meta_str(&self.obj, "creationTimestamp").and_then(parse_time), self.name())
    }
}

fn set_annotation(obj: &mut Value, k: &str, v: &str) {
    if !obj["metadata"]["annotations"].is_object() {
        obj["metadata"]["annotations"] = json!({});
    }
    obj["metadata"]["annotations"][k] = json!(v);
}

// ---- conditions --------------------------------------------------------------------------

fn get_cond<'a>(status: &'a Value, t: &str) -> Option<&'a Value> {
    status
        .get("conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
}

fn cond_str<'a>(c: Option<&'a Value>, field: &str) -> Option<&'a str> {
    c.and_then(|c| c.get(field)).and_then(Value::as_str)
}

fn new_cond(t: &str, status: &str, reason: &str, message: &str) -> Value {
    let now = now_rfc3339();
    json!({"type": t, "status": status, "reason": reason, "message": message,
        "lastUpdateTime": now, "lastTransitionTime": now})
}

fn remove_cond(status: &mut Value, t: &str) {
    if let Some(a) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        a.retain(|c| c.get("type").and_then(Value::as_str) != Some(t));
    }
}

/// Upstream `SetDeploymentCondition`: same status and reason changes nothing; same status
/// keeps the transition time.
fn set_cond(status: &mut Value, mut cond: Value) {
    let t = cond_str(Some(&cond), "type").unwrap_or("").to_string();
    let current = get_cond(status, &t).cloned();
    if let Some(cur) = &current {
        if cond_str(Some(cur), "status") == cond_str(Some(&cond), "status")
            && cond_str(Some(cur), "reason") == cond_str(Some(&cond), "reason")
        {
            return;
        }
        if cond_str(Some(cur), "status") == cond_str(Some(&cond), "status") {
            cond["lastTransitionTime"] = cur.get("lastTransitionTime").cloned().unwrap_or(Value::Null);
        }
    }
    remove_cond(status, &t);
    if !status["conditions"].is_array() {
        status["conditions"] = json!([]);
    }
    if let Some(a) = status["conditions"].as_array_mut() {
        a.push(cond);
    }
}

fn status_i64(status: &Value, field: &str) -> i64 {
    status.get(field).and_then(Value::as_i64).unwrap_or(0)
}

// ---- one sync ----------------------------------------------------------------------------

/// The state of one deployment's sync: the deployment as last written, its ReplicaSets
/// (oldest first) and which one runs the current template.
struct Sync<'a> {
    c: &'a Deployments,
    d: Value,
    ns: String,
    desired: i64,
    surge: i64,
    unavailable: i64,
    rolling: bool,
    rss: Vec<Rs>,
    new: Option<usize>,
    next_available: Option<Duration>,
}

impl Sync<'_> {
    fn name(&self) -> String {
        meta_str(&self.d, "name").unwrap_or("").to_string()
    }

    fn status(&self) -> Value {
        self.d.get("status").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}))
    }

    fn paused(&self) -> bool {
        self.d.pointer("/spec/paused").and_then(Value::as_bool).unwrap_or(false)
    }

    fn deadline(&self) -> Option<i64> {
        int_at(&self.d, "/spec/progressDeadlineSeconds").filter(|s| *s != i64::from(i32::MAX))
    }

    /// `MaxUnavailable(d)` as upstream: 0 unless rolling with replicas.
    fn max_unavailable(&self) -> i64 {
        if !self.rolling || self.desired == 0 {
            0
        } else {
            self.unavailable.min(self.desired)
        }
    }

    fn template(&self) -> Value {
        self.d.pointer("/spec/template").cloned().unwrap_or_else(|| json!({}))
    }

    fn old(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.rss.len()).filter(move |i| Some(*i) != self.new)
    }

    fn event(&self, type_: &'static str, reason: &'static str, message: String) {
        let recorder = self.c.recorder.clone();
        let obj = self.d.clone();
        tokio::spawn(async move { recorder.event(&obj, type_, reason, &message).await });
    }

    async fn write_status(&mut self, status: Value) -> Result<(), ReconcileError> {
        let mut obj = self.d.clone();
        obj["status"] = status;
        let updated = self.c.client.update_status(gvr::DEPLOYMENTS, Some(&self.ns), obj).await?;
        self.c.written.record(&updated);
        self.d = updated;
        Ok(())
    }

    async fn update_rs(&mut self, i: usize, obj: Value) -> Result<(), ReconcileError> {
        let updated = self.c.client.update(gvr::REPLICA_SETS, Some(&self.ns), obj).await?;
        self.c.written.record(&updated);
        if let Some(rs) = self.rss.get_mut(i) {
            rs.counts.spec = int_at(&updated, "/spec/replicas").unwrap_or(rs.counts.spec);
            rs.obj = updated;
        }
        Ok(())
    }

    /// Scales ReplicaSet `i` (and refreshes its replicas annotations). With `only_size`,
    /// nothing happens when the size is right.
    async fn scale(&mut self, i: usize, to: i64, only_size: bool) -> Result<bool, ReconcileError> {
        let Some(rs) = self.rss.get(i) else { return Ok(false) };
        let from = rs.counts.spec;
        let desired = self.desired.to_string();
        let max = (self.desired + if self.rolling { self.surge } else { 0 }).to_string();
        let ann = annotations_of(&rs.obj);
        let ann_changed = ann.get(DESIRED_REPLICAS) != Some(&desired) || ann.get(MAX_REPLICAS) != Some(&max);
        if from == to && (only_size || !ann_changed) {
            return Ok(false);
        }
        let mut obj = rs.obj.clone();
        obj["spec"]["replicas"] = json!(to);
        set_annotation(&mut obj, DESIRED_REPLICAS, &desired);
        set_annotation(&mut obj, MAX_REPLICAS, &max);
        let name = rs.name();
        self.update_rs(i, obj).await?;
        if from != to {
            let dir = if from < to { "up" } else { "down" };
            self.event(
                "Normal",
                "ScalingReplicaSet",
                format!("Scaled {dir} replica set {name} to {to} from {from}"),
            );
        }
        Ok(true)
    }

    /// Finds the ReplicaSet running the current template and brings revisions up to date
    /// (upstream `getAllReplicaSetsAndSyncRevision`); creates it when asked.
    async fn sync_revision(&mut self, create: bool) -> Result<(), ReconcileError> {
        let template = self.template();
        self.new = self
            .rss
            .iter()
            .position(|rs| rs.obj.pointer("/spec/template").is_some_and(|t| equal_ignore_hash(t, &template)));
        let max_old = self.old().filter_map(|i| self.rss.get(i)).map(Rs::revision).max().unwrap_or(0);
        let new_revision = max_old + 1;
        if let Some(i) = self.new {
            let Some(rs) = self.rss.get(i) else { return Ok(()) };
            let mut obj = rs.obj.clone();
            let mut changed = self.copy_annotations(&mut obj);
            let old_revision = rs.revision();
            if old_revision < new_revision {
                set_annotation(&mut obj, REVISION, &new_revision.to_string());
                if old_revision > 0 {
                    let history = annotations_of(&obj).get(REVISION_HISTORY).cloned().unwrap_or_default();
                    let history = if history.is_empty() {
                        old_revision.to_string()
                    } else {
                        format!("{history},{old_revision}")
                    };
                    set_annotation(&mut obj, REVISION_HISTORY, &history);
                }
                changed = true;
            }
            let min_ready = int_at(&self.d, "/spec/minReadySeconds").unwrap_or(0);
            if int_at(&obj, "/spec/minReadySeconds").unwrap_or(0) != min_ready {
                obj["spec"]["minReadySeconds"] = json!(min_ready);
                changed = true;
            }
            if changed {
                self.update_rs(i, obj).await?;
            }
            let revision = self.rss.get(i).map(Rs::revision).unwrap_or(new_revision);
            self.set_revision(revision).await?;
            if self.deadline().is_some() && get_cond(&self.status(), PROGRESSING).is_none() {
                let msg =
                    format!("Found new replica set {:?}", self.rss.get(i).map(Rs::name).unwrap_or_default());
                let mut status = self.status();
                set_cond(&mut status, new_cond(PROGRESSING, "True", "FoundNewReplicaSet", &msg));
                self.write_status(status).await?;
            }
            return Ok(());
        }
        if !create {
            return Ok(());
        }
        self.create_new(new_revision).await
    }

    fn copy_annotations(&self, rs: &mut Value) -> bool {
        let current = annotations_of(rs);
        let mut changed = false;
        for (k, v) in annotations_of(&self.d) {
            if NOT_COPIED.contains(&k.as_str()) || current.get(&k) == Some(&v) {
                continue;
            }
            set_annotation(rs, &k, &v);
            changed = true;
        }
        changed
    }

    async fn set_revision(&mut self, revision: i64) -> Result<(), ReconcileError> {
        let r = revision.to_string();
        if annotations_of(&self.d).get(REVISION) == Some(&r) {
            return Ok(());
        }
        let name = self.name();
        let patch = json!({"metadata": {"annotations": {REVISION: r}}});
        let updated = self.c.client.merge_patch(gvr::DEPLOYMENTS, Some(&self.ns), &name, patch).await?;
        self.c.written.record(&updated);
        self.d = updated;
        Ok(())
    }

    async fn create_new(&mut self, revision: i64) -> Result<(), ReconcileError> {
        let collisions = self.d.pointer("/status/collisionCount").and_then(Value::as_i64);
        let mut template = self.template();
        let hash = rollout::template_hash(&template, collisions);
        if !template["metadata"].is_object() {
            template["metadata"] = json!({});
        }
        if !template["metadata"]["labels"].is_object() {
            template["metadata"]["labels"] = json!({});
        }
        template["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut selector = self.d.pointer("/spec/selector").cloned().unwrap_or_else(|| json!({}));
        if !selector["matchLabels"].is_object() {
            selector["matchLabels"] = json!({});
        }
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let rs_name = format!("{}-{hash}", self.name());
        let replicas = if self.rolling {
            let mut all: Vec<Counts> = self.rss.iter().map(|r| r.counts).collect();
            all.push(Counts::default());
            rollout::new_rs_target(self.desired, self.surge, Counts::default(), &all)
        } else {
            self.desired
        };
        let mut obj = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": rs_name,
                "namespace": self.ns,
                "labels": template["metadata"]["labels"].clone(),
                "ownerReferences": [controller_ref_to(&self.d, "apps/v1", "Deployment")],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": int_at(&self.d, "/spec/minReadySeconds").unwrap_or(0),
                "selector": selector,
                "template": template,
            },
        });
        self.copy_annotations(&mut obj);
        set_annotation(&mut obj, REVISION, &revision.to_string());
        set_annotation(&mut obj, DESIRED_REPLICAS, &self.desired.to_string());
        let max = self.desired + if self.rolling { self.surge } else { 0 };
        set_annotation(&mut obj, MAX_REPLICAS, &max.to_string());
        let (created, already) = match self.c.client.create(gvr::REPLICA_SETS, Some(&self.ns), obj).await {
            Ok(rs) => (rs, false),
            Err(e) if e.is_already_exists() => {
                let rs = self.c.client.get(gvr::REPLICA_SETS, Some(&self.ns), &rs_name).await?;
                let ours = controller_uid(&rs, "Deployment") == meta_str(&self.d, "uid");
                let same =
                    rs.pointer("/spec/template").is_some_and(|t| equal_ignore_hash(t, &self.template()));
                if !(ours && same) {
                    // A hash collision: the next hash includes a bigger collision count.
                    let mut status = self.status();
                    status["collisionCount"] = json!(collisions.unwrap_or(0) + 1);
                    self.write_status(status).await?;
                    return Err(ReconcileError(format!("hash collision on replica set {rs_name}")));
                }
                (rs, true)
            }
            Err(e) => {
                if self.deadline().is_some() {
                    let mut status = self.status();
                    let msg = format!("Failed to create new replica set {rs_name:?}: {e}");
                    set_cond(&mut status, new_cond(PROGRESSING, "False", "ReplicaSetCreateError", &msg));
                    let _ = self.write_status(status).await;
                }
                self.event(
                    "Warning",
                    "FailedCreate",
                    format!("Failed to create new replica set {rs_name:?}: {e}"),
                );
                return Err(e.into());
            }
        };
        self.c.written.record(&created);
        if replicas > 0 && !already {
            self.event(
                "Normal",
                "ScalingReplicaSet",
                format!("Scaled up replica set {rs_name} to {replicas} from 0"),
            );
        }
        let counts =
            Counts { spec: int_at(&created, "/spec/replicas").unwrap_or(replicas), ..Counts::default() };
        self.rss.push(Rs { obj: created, counts, ready: 0, running: 0 });
        self.new = Some(self.rss.len() - 1);
        self.set_revision(revision).await?;
        if !already && self.deadline().is_some() {
            let mut status = self.status();
            let msg = format!("Created new replica set {rs_name:?}");
            set_cond(&mut status, new_cond(PROGRESSING, "True", "NewReplicaSetCreated", &msg));
            self.write_status(status).await?;
        }
        Ok(())
    }

    fn calculate_status(&self) -> Value {
        let mut status = self.status();
        let available: i64 = self.rss.iter().map(|r| r.counts.available).sum();
        let replicas: i64 = self.rss.iter().map(|r| r.counts.live).sum();
        let spec_total: i64 = self.rss.iter().map(|r| r.counts.spec).sum();
        let updated = self.new.and_then(|i| self.rss.get(i)).map(|r| r.counts.live).unwrap_or(0);
        status["observedGeneration"] = json!(int_at(&self.d, "/metadata/generation").unwrap_or(0));
        status["replicas"] = json!(replicas);
        status["updatedReplicas"] = json!(updated);
        status["readyReplicas"] = json!(self.rss.iter().map(|r| r.ready).sum::<i64>());
        status["availableReplicas"] = json!(available);
        status["unavailableReplicas"] = json!((spec_total - available).max(0));
        if available >= self.desired - self.max_unavailable() {
            set_cond(
                &mut status,
                new_cond(
                    AVAILABLE,
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.",
                ),
            );
        } else {
            set_cond(
                &mut status,
                new_cond(
                    AVAILABLE,
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.",
                ),
            );
        }
        status
    }

    fn complete(&self, status: &Value) -> bool {
        status_i64(status, "updatedReplicas") == self.desired
            && status_i64(status, "replicas") == self.desired
            && status_i64(status, "availableReplicas") == self.desired
            && status_i64(status, "observedGeneration")
                >= int_at(&self.d, "/metadata/generation").unwrap_or(0)
    }

    fn requeue(&self, extra: Option<Duration>) -> Action {
        match (self.next_available, extra) {
            (Some(a), Some(b)) => Action::RequeueAfter(a.min(b)),
            (Some(a), None) | (None, Some(a)) => Action::RequeueAfter(a),
            (None, None) => Action::Done,
        }
    }

    /// Status only (paused, scaling, deleting).
    async fn sync_status(&mut self) -> Result<Action, ReconcileError> {
        let status = self.calculate_status();
        if Some(&status) != self.d.get("status") {
            self.write_status(status).await?;
        }
        Ok(self.requeue(None))
    }

    /// Status and the Progressing condition (upstream `syncRolloutStatus`).
    async fn sync_rollout_status(&mut self) -> Result<Action, ReconcileError> {
        let mut status = self.calculate_status();
        let old = self.status();
        let deadline = self.deadline();
        if deadline.is_none() {
            remove_cond(&mut status, PROGRESSING);
        }
        let current = get_cond(&status, PROGRESSING).cloned();
        let new_name = self.new.and_then(|i| self.rss.get(i)).map(Rs::name);
        let complete_already = status_i64(&status, "replicas") == status_i64(&status, "updatedReplicas")
            && cond_str(current.as_ref(), "reason") == Some(NEW_RS_AVAILABLE);
        if let (Some(deadline), false) = (deadline, complete_already) {
            let progressing = status_i64(&status, "updatedReplicas") > status_i64(&old, "updatedReplicas")
                || status_i64(&status, "replicas") - status_i64(&status, "updatedReplicas")
                    < status_i64(&old, "replicas") - status_i64(&old, "updatedReplicas")
                || status_i64(&status, "readyReplicas") > status_i64(&old, "readyReplicas")
                || status_i64(&status, "availableReplicas") > status_i64(&old, "availableReplicas");
            if self.complete(&status) {
                let msg = match &new_name {
                    Some(n) => format!("ReplicaSet {n:?} has successfully progressed."),
                    None => "Deployment has successfully progressed.".into(),
                };
                set_cond(&mut status, new_cond(PROGRESSING, "True", NEW_RS_AVAILABLE, &msg));
            } else if progressing {
                let msg = match &new_name {
                    Some(n) => format!("ReplicaSet {n:?} is progressing."),
                    None => "Deployment is progressing.".into(),
                };
                let mut cond = new_cond(PROGRESSING, "True", "ReplicaSetUpdated", &msg);
                if cond_str(current.as_ref(), "status") == Some("True") {
                    cond["lastTransitionTime"] = current
                        .as_ref()
                        .and_then(|c| c.get("lastTransitionTime"))
                        .cloned()
                        .unwrap_or(Value::Null);
                    remove_cond(&mut status, PROGRESSING);
                }
                set_cond(&mut status, cond);
            } else if self.timed_out(&status, deadline) {
                let msg = match &new_name {
                    Some(n) => format!("ReplicaSet {n:?} has timed out progressing."),
                    None => "Deployment has timed out progressing.".into(),
                };
                set_cond(&mut status, new_cond(PROGRESSING, "False", TIMED_OUT, &msg));
            }
        }
        if Some(&status) != self.d.get("status") {
            self.write_status(status).await?;
            return Ok(self.requeue(None));
        }
        let stuck = self.stuck_requeue(&status, deadline);
        Ok(self.requeue(stuck))
    }

    fn since_last_update(cond: Option<&Value>) -> Option<i64> {
        let t = cond_str(cond, "lastUpdateTime").and_then(parse_time)?;
        Some(jiff::Timestamp::now().as_millisecond() - t.as_millisecond())
    }

    fn timed_out(&self, status: &Value, deadline: i64) -> bool {
        let cond = get_cond(status, PROGRESSING);
        match cond_str(cond, "reason") {
            None | Some(NEW_RS_AVAILABLE) => false,
            Some(TIMED_OUT) => true,
            Some(_) => Self::since_last_update(cond).is_some_and(|ms| ms > deadline.saturating_mul(1000)),
        }
    }

    fn stuck_requeue(&self, status: &Value, deadline: Option<i64>) -> Option<Duration> {
        let deadline = deadline?;
        let cond = get_cond(status, PROGRESSING)?;
        if self.complete(status) || cond_str(Some(cond), "reason") == Some(TIMED_OUT) {
            return None;
        }
        let left = deadline.saturating_mul(1000) - Self::since_last_update(Some(cond))?;
        Some(Duration::from_millis(left.max(100).unsigned_abs()))
    }

    async fn check_paused_conditions(&mut self) -> Result<(), ReconcileError> {
        if self.deadline().is_none() {
            return Ok(());
        }
        let status = self.status();
        let reason = cond_str(get_cond(&status, PROGRESSING), "reason").map(str::to_string);
        if reason.as_deref() == Some(TIMED_OUT) {
            return Ok(());
        }
        let paused_exists = reason.as_deref() == Some(PAUSED);
        let cond = if self.paused() && !paused_exists {
            new_cond(PROGRESSING, "Unknown", PAUSED, "Deployment is paused")
        } else if !self.paused() && paused_exists {
            new_cond(PROGRESSING, "Unknown", RESUMED, "Deployment is resumed")
        } else {
            return Ok(());
        };
        let mut status = status;
        set_cond(&mut status, cond);
        self.write_status(status).await
    }

    /// Whether an active ReplicaSet was sized for another `spec.replicas`.
    fn is_scaling_event(&self) -> bool {
        self.rss
            .iter()
            .filter(|r| r.counts.spec > 0)
            .any(|r| r.annotation_i64(DESIRED_REPLICAS).is_some_and(|d| d != self.desired))
    }

    /// Upstream `scale`: resizes the deployment's sets for a new `spec.replicas`.
    async fn scale_all(&mut self) -> Result<(), ReconcileError> {
        let active: Vec<usize> = (0..self.rss.len()).filter(|i| self.rss[*i].counts.spec > 0).collect();
        let target = match active.len() {
            0 => self.new.or_else(|| self.old().last()),
            1 => active.first().copied(),
            _ => None,
        };
        if let Some(i) = target {
            if self.rss[i].counts.spec != self.desired {
                self.scale(i, self.desired, false).await?;
            }
            return Ok(());
        }
        let saturated = self.new.and_then(|i| self.rss.get(i)).is_some_and(|r| {
            r.counts.spec == self.desired
                && r.annotation_i64(DESIRED_REPLICAS) == Some(self.desired)
                && r.counts.available == self.desired
        });
        if saturated {
            let old: Vec<usize> = self.old().filter(|i| self.rss[*i].counts.spec > 0).collect();
            for i in old {
                self.scale(i, 0, false).await?;
            }
            return Ok(());
        }
        if !self.rolling {
            return Ok(());
        }
        let total: i64 = active.iter().map(|i| self.rss[*i].counts.spec).sum();
        let allowed = if self.desired > 0 { self.desired + self.surge } else { 0 };
        let to_add = allowed - total;
        let mut order = active.clone();
        // Largest first; ties: newer first when growing, older first when shrinking.
        order.sort_by(|a, b| {
            let (ra, rb) = (&self.rss[*a], &self.rss[*b]);
            rb.counts.spec.cmp(&ra.counts.spec).then_with(|| {
                if to_add > 0 {
                    rb.created().cmp(&ra.created())
                } else {
                    ra.created().cmp(&rb.created())
                }
            })
        });
        let fallback = status_i64(&self.status(), "replicas");
        let mut sizes: HashMap<usize, i64> = HashMap::new();
        let mut added = 0;
        for i in &order {
            let rs = &self.rss[*i];
            let mut size = rs.counts.spec;
            if to_add != 0 {
                let p = rollout::proportion(
                    rs.counts.spec,
                    self.desired,
                    self.surge,
                    rs.annotation_i64(MAX_REPLICAS),
                    fallback,
                    to_add,
                    added,
                );
                size += p;
                added += p;
            }
            sizes.insert(*i, size);
        }
        if let (Some(first), true) = (order.first(), to_add != 0) {
            if let Some(s) = sizes.get_mut(first) {
                *s = (*s + to_add - added).max(0);
            }
        }
        for i in order {
            let size = sizes.get(&i).copied().unwrap_or(0);
            self.scale(i, size, false).await?;
        }
        Ok(())
    }

    async fn cleanup(&mut self) -> Result<(), ReconcileError> {
        let Some(limit) = int_at(&self.d, "/spec/revisionHistoryLimit") else { return Ok(()) };
        let mut alive: Vec<&Rs> =
            self.old().filter_map(|i| self.rss.get(i)).filter(|r| !is_terminating(&r.obj)).collect();
        let diff = alive.len() as i64 - limit;
        if diff <= 0 {
            return Ok(());
        }
        alive.sort_by(|a, b| a.revision().cmp(&b.revision()).then_with(|| a.created().cmp(&b.created())));
        let victims: Vec<(String, String)> = alive
            .iter()
            .take(diff as usize)
            .filter(|r| {
                r.counts.spec == 0
                    && r.running == 0
                    && int_at(&r.obj, "/status/replicas").unwrap_or(0) == 0
                    && int_at(&r.obj, "/metadata/generation").unwrap_or(0)
                        <= int_at(&r.obj, "/status/observedGeneration").unwrap_or(0)
            })
            .map(|r| (r.name(), meta_str(&r.obj, "uid").unwrap_or("").to_string()))
            .collect();
        for (name, uid) in victims {
            match self.c.client.delete_uid(gvr::REPLICA_SETS, Some(&self.ns), &name, &uid, None).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn rollout_rolling(&mut self) -> Result<Action, ReconcileError> {
        self.sync_revision(true).await?;
        if let Some(n) = self.new {
            let all: Vec<Counts> = self.rss.iter().map(|r| r.counts).collect();
            let target = rollout::new_rs_target(self.desired, self.surge, self.rss[n].counts, &all);
            if target != self.rss[n].counts.spec {
                self.scale(n, target, true).await?;
                return self.sync_rollout_status().await;
            }
        }
        let old: Vec<usize> = self.old().collect();
        let counts: Vec<Counts> = old.iter().map(|i| self.rss[*i].counts).collect();
        let new = self.new.map(|i| self.rss[i].counts);
        let targets = rollout::old_rs_targets(self.desired, self.max_unavailable(), new, &counts);
        let mut scaled = false;
        for (i, t) in old.into_iter().zip(targets) {
            if t != self.rss[i].counts.spec {
                scaled |= self.scale(i, t, true).await?;
            }
        }
        if scaled {
            return self.sync_rollout_status().await;
        }
        if self.complete(&self.calculate_status()) {
            self.cleanup().await?;
        }
        self.sync_rollout_status().await
    }

    async fn rollout_recreate(&mut self) -> Result<Action, ReconcileError> {
        self.sync_revision(false).await?;
        let active_old: Vec<usize> = self.old().filter(|i| self.rss[*i].counts.spec > 0).collect();
        let mut scaled = false;
        for i in active_old {
            scaled |= self.scale(i, 0, true).await?;
        }
        if scaled {
            return self.sync_rollout_status().await;
        }
        let old_running: i64 = self.old().map(|i| self.rss[i].running).sum();
        if old_running > 0 {
            return self.sync_rollout_status().await;
        }
        if self.new.is_none() {
            self.sync_revision(true).await?;
        }
        if let Some(n) = self.new {
            if self.rss[n].counts.spec != self.desired {
                self.scale(n, self.desired, true).await?;
            }
        }
        if self.complete(&self.calculate_status()) {
            self.cleanup().await?;
        }
        self.sync_rollout_status().await
    }
}

// ---- the controller ----------------------------------------------------------------------

impl Deployments {
    /// Adopts orphan ReplicaSets matching the selector, releases owned ones that no longer
    /// match; returns the owned ones.
    async fn claim(&self, d: &Value, selector: &LabelSelector) -> Result<Vec<Value>, ReconcileError> {
        let ns = meta_str(d, "namespace").unwrap_or("");
        let uid = meta_str(d, "uid").unwrap_or("");
        let mut owned = Vec::new();
        for rs in self.sets.list_ns(ns) {
            let matches = selector.matches(&labels_of(&rs));
            let name = meta_str(&rs, "name").unwrap_or("").to_string();
            let refs: Vec<Value> = rs
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match controller_ref(&rs) {
                Some(r) if r.get("uid").and_then(Value::as_str) == Some(uid) => {
                    if matches {
                        owned.push((*rs).clone());
                    } else if !is_terminating(d) {
                        let kept: Vec<Value> = refs
                            .into_iter()
                            .filter(|r| r.get("uid").and_then(Value::as_str) != Some(uid))
                            .collect();
                        let patch = json!({"metadata": {"ownerReferences": kept,
                            "resourceVersion": meta_str(&rs, "resourceVersion")}});
                        match self.client.merge_patch(gvr::REPLICA_SETS, Some(ns), &name, patch).await {
                            Ok(_) => {}
                            Err(e) if e.is_not_found() => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Some(_) => {}
                None if matches && !is_terminating(d) && !is_terminating(&rs) => {
                    let mut refs = refs;
                    refs.push(controller_ref_to(d, "apps/v1", "Deployment"));
                    let patch = json!({"metadata": {"ownerReferences": refs,
                        "resourceVersion": meta_str(&rs, "resourceVersion")}});
                    match self.client.merge_patch(gvr::REPLICA_SETS, Some(ns), &name, patch).await {
                        Ok(updated) => {
                            self.written.record(&updated);
                            owned.push(updated);
                        }
                        Err(e) if e.is_not_found() || e.is_conflict() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                None => {}
            }
        }
        Ok(owned)
    }

    async fn sync(self: Arc<Self>, key: Key) -> Result<Action, ReconcileError> {
        let Some(cached) = self.deployments.get(&key) else {
            self.written.forget(&key);
            return Ok(Action::Done);
        };
        if !self.written.fresh(&key, Some(cached.as_ref())) {
            return Ok(Action::RequeueAfter(Duration::from_secs(1)));
        }
        let d: Value = (*cached).clone();
        let ns = meta_str(&d, "namespace").unwrap_or("").to_string();
        let Some(selector) = selector_of(&d) else {
            self.recorder
                .event(
                    &d,
                    "Warning",
                    "SelectingAll",
                    "This deployment is selecting all pods. A non-empty selector is required.",
                )
                .await;
            return Ok(Action::Done);
        };
        let owned = self.claim(&d, &selector).await?;
        for rs in &owned {
            let k = key_of(rs);
            if !self.written.fresh(&k, self.sets.get(&k).as_deref()) {
                return Ok(Action::RequeueAfter(Duration::from_secs(1)));
            }
        }
        // Pods per ReplicaSet uid.
        let min_ready = int_at(&d, "/spec/minReadySeconds").unwrap_or(0);
        let now = jiff::Timestamp::now();
        let mut per_rs: HashMap<String, (Counts, i64, i64)> = HashMap::new();
        let mut next_available: Option<Duration> = None;
        for pod in self.pods.list_ns(&ns) {
            let Some(uid) = controller_uid(&pod, "ReplicaSet") else { continue };
            let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
            let e = per_rs.entry(uid.to_string()).or_default();
            if phase != "Succeeded" && phase != "Failed" {
                e.2 += 1;
            }
            if !pod_is_active(&pod) {
                continue;
            }
            e.0.live += 1;
            if pod_is_ready(&pod) {
                e.1 += 1;
            }
            match pod_availability(&pod, min_ready, now) {
                Ok(()) => e.0.available += 1,
                Err(Some(left)) => next_available = Some(next_available.map_or(left, |n| n.min(left))),
                Err(None) => {}
            }
        }
        let mut rss: Vec<Rs> = owned
            .into_iter()
            .map(|obj| {
                let uid = meta_str(&obj, "uid").unwrap_or("");
                let (mut counts, ready, running) = per_rs.get(uid).copied().unwrap_or_default();
                counts.spec = int_at(&obj, "/spec/replicas").unwrap_or(1);
                Rs { obj, counts, ready, running }
            })
            .collect();
        rss.sort_by_key(Rs::created);
        let desired = int_at(&d, "/spec/replicas").unwrap_or(1).max(0);
        let strategy = d.pointer("/spec/strategy/type").and_then(Value::as_str).unwrap_or("RollingUpdate");
        let rolling = strategy != "Recreate";
        let (surge, unavailable) = if rolling {
            let ru = d.pointer("/spec/strategy/rollingUpdate");
            match rollout::resolve_fenceposts(
                ru.and_then(|r| r.get("maxSurge")),
                ru.and_then(|r| r.get("maxUnavailable")),
                desired,
            ) {
                Ok(v) => v,
                Err(e) => {
                    self.recorder.event(&d, "Warning", "InvalidStrategy", &e).await;
                    return Ok(Action::Done);
                }
            }
        } else {
            (0, 0)
        };
        let mut s = Sync {
            c: &self,
            d,
            ns,
            desired,
            surge,
            unavailable,
            rolling,
            rss,
            new: None,
            next_available: next_available.map(|d| d + Duration::from_millis(50)),
        };
        if is_terminating(&s.d) {
            s.sync_revision(false).await?;
            return s.sync_status().await;
        }
        s.check_paused_conditions().await?;
        if s.paused() || s.is_scaling_event() {
            s.sync_revision(false).await?;
            s.scale_all().await?;
            if s.paused() {
                s.cleanup().await?;
            }
            return s.sync_status().await;
        }
        if rolling {
            s.rollout_rolling().await
        } else {
            s.rollout_recreate().await
        }
    }
}

impl Reconciler for Deployments {
    fn name(&self) -> &'static str {
        "deployment"
    }

    fn reconcile(self: Arc<Self>, key: Key) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(self.sync(key))
    }
}

/// Deployments in the object's namespace whose selector matches it (for orphans).
fn matching_deployments(deployments: &Informer, obj: &Value) -> Vec<Key> {
    let ns = meta_str(obj, "namespace").unwrap_or("");
    let labels = labels_of(obj);
    deployments
        .list_ns(ns)
        .iter()
        .filter(|d| selector_of(d).is_some_and(|s| s.matches(&labels)))
        .map(|d| key_of(d))
        .collect()
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let deployments = ctx.informers.get(gvr::DEPLOYMENTS);
    let sets = ctx.informers.get(gvr::REPLICA_SETS);
    let pods = ctx.informers.get(gvr::PODS);
    let r = Arc::new(Deployments {
        client: ctx.client.clone(),
        recorder: ctx.recorder.clone(),
        deployments: deployments.clone(),
        sets: sets.clone(),
        pods: pods.clone(),
        written: Written::default(),
    });
    let mut controller = Controller::new(r, 8);
    if let Some(p) = &ctx.partition {
        controller = controller.with_partition(p.clone());
    }
    let addr = controller.start();

    let (a, c) = (addr.clone(), ctx.clone());
    deployments.on_change(Arc::new(move |ch: &Change| {
        if let Change::Applied { new, .. } = ch {
            let key = key_of(new);
            if c.owns(&key) {
                a.do_send(Enqueue(key));
            }
        }
    }));

    let (a, c) = (addr.clone(), ctx.clone());
    let deps = deployments.clone();
    sets.on_change(Arc::new(move |ch: &Change| {
        let mut targets: Vec<Key> = Vec::new();
        let owner = owner_key(ch.object(), "Deployment");
        match ch {
            Change::Applied { old, new } => {
                match &owner {
                    Some(o) => targets.push(o.clone()),
                    None => targets.extend(matching_deployments(&deps, new)),
                }
                if let Some(o) = old.as_ref().and_then(|o| owner_key(o, "Deployment")) {
                    targets.push(o);
                }
            }
            Change::Deleted(_) => targets.extend(owner),
        }
        targets.sort();
        targets.dedup();
        for t in targets {
            if c.owns(&t) {
                a.do_send(Enqueue(t));
            }
        }
    }));

    let c = ctx.clone();
    let sets2 = sets.clone();
    pods.on_change(Arc::new(move |ch: &Change| {
        let Some(rs_key) = owner_key(ch.object(), "ReplicaSet") else { return };
        let Some(rs) = sets2.get(&rs_key) else { return };
        if let Some(d) = owner_key(&rs, "Deployment") {
            if c.owns(&d) {
                addr.do_send(Enqueue(d));
            }
        }
    }));
}
