//! The statefulset controller: pods with stable names, hostnames and volumes.
//!
//! Pods are `<set>-<ordinal>` (from `spec.ordinals.start`), with `hostname` = the pod
//! name, `subdomain` = `spec.serviceName`, labels `statefulset.kubernetes.io/pod-name`,
//! `apps.kubernetes.io/pod-index` and `controller-revision-hash`. Each
//! volumeClaimTemplate gives a PVC `<claim>-<set>-<ordinal>`, created before the pod and
//! kept on scale down (with `persistentVolumeClaimRetentionPolicy.whenDeleted: Delete`
//! the PVCs are owned by the set, so the garbage collector removes them with it).
//!
//! OrderedReady creates ordinal i only when every lower ordinal is Running, Ready (and
//! available for minReadySeconds); it scales down from the highest ordinal, one pod at a
//! time, waiting for each to be gone. Parallel creates and deletes without waiting.
//! Updates: every template is stored as a ControllerRevision `<set>-<hash>`; RollingUpdate
//! deletes, from the highest ordinal down to `partition`, one pod whose revision is not
//! the update revision at a time, after the pods above it are healthy again, and the pod
//! is recreated at the new revision. OnDelete recreates only pods deleted by someone else.

use super::Ctx;
use crate::client::{gvr, ApiClient, Gvr};
use crate::events::Recorder;
use crate::informer::{split_key, Change, Informer};
use crate::runtime::{owner_key, Action, Controller, Enqueue, ReconcileError, Reconciler};
use actix::Actor;
use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::job::workload as w;

/// PersistentVolumeClaims.
pub const PVCS: Gvr = Gvr::new("", "v1", "persistentvolumeclaims");
/// The pod label with the pod's name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The pod label with the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// The pod (and revision) label with the revision name.
pub const REVISION_LABEL: &str = "controller-revision-hash";

struct StatefulSets {
    client: ApiClient,
    sets: Arc<Informer>,
    pods: Arc<Informer>,
    pvcs: Arc<Informer>,
    revisions: Arc<Informer>,
    recorder: Recorder,
}

/// What the planner needs to know about one existing pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// Running, Ready and available for minReadySeconds.
    pub healthy: bool,
    /// Has a deletionTimestamp.
    pub terminating: bool,
    /// Phase Failed or Succeeded: must be replaced.
    pub finished: bool,
    /// Its revision (`controller-revision-hash`).
    pub revision: String,
}

/// One change the planner asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Create the pod with this ordinal.
    Create(i64),
    /// Delete the pod with this ordinal.
    Delete(i64),
}

/// The set's settings the planner needs.
#[derive(Debug, Clone)]
pub struct Policy {
    /// First ordinal.
    pub start: i64,
    /// `spec.replicas`.
    pub replicas: i64,
    /// `podManagementPolicy: Parallel`.
    pub parallel: bool,
    /// RollingUpdate partition (`None`: OnDelete).
    pub partition: Option<i64>,
}

/// The next steps for a set (upstream's `updateStatefulSet`): `pods` by ordinal.
pub fn plan(p: &Policy, pods: &BTreeMap<i64, PodState>, update_revision: &str) -> Vec<Step> {
    let ordered = !p.parallel;
    let end = p.start + p.replicas.max(0);
    let mut steps = Vec::new();
    // Replicas: replace finished pods, create missing ones, wait for each in order.
    for ord in p.start..end {
        match pods.get(&ord) {
            None => {
                steps.push(Step::Create(ord));
                if ordered {
                    return steps;
                }
            }
            Some(s) if s.finished && !s.terminating => {
                steps.push(Step::Delete(ord));
                if ordered {
                    return steps;
                }
            }
            Some(s) if ordered && (s.terminating || !s.healthy) => return steps,
            Some(_) => {}
        }
    }
    // Condemned: highest first; in order, one at a time and only when all others are healthy.
    let condemned: Vec<(i64, &PodState)> =
        pods.iter().rev().filter(|(o, _)| **o < p.start || **o >= end).map(|(o, s)| (*o, s)).collect();
    for (ord, s) in &condemned {
        if s.terminating {
            if ordered {
                return steps;
            }
            continue;
        }
        // In order, an unhealthy condemned pod goes only if it is the only unhealthy one.
        if ordered && !s.healthy && pods.iter().any(|(o, x)| o != ord && (!x.healthy || x.terminating)) {
            return steps;
        }
        steps.push(Step::Delete(*ord));
        if ordered {
            return steps;
        }
    }
    if !steps.is_empty() && ordered {
        return steps;
    }
    // Rolling update: highest first, down to the partition, one at a time.
    if let Some(partition) = p.partition {
        let low = partition.max(p.start);
        for ord in (low..end).rev() {
            let Some(s) = pods.get(&ord) else { continue };
            if s.revision != update_revision && !s.terminating {
                steps.push(Step::Delete(ord));
                break;
            }
            if !s.healthy || s.terminating {
                break;
            }
        }
    }
    steps
}

/// The volume claims of a set's pod: `(volume name, claim name)`.
fn claim_names(set: &Value, ord: i64) -> Vec<(String, String, Value)> {
    let set_name = w::name(set);
    set.get("spec")
        .and_then(|s| s.get("volumeClaimTemplates"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let n = w::name(t);
            (!n.is_empty()).then(|| (n.to_string(), format!("{n}-{set_name}-{ord}"), t.clone()))
        })
        .collect()
}

/// A set's pod for `ord` from `template`.
fn pod_for(set: &Value, template: &Value, revision: &str, ord: i64) -> Value {
    let set_name = w::name(set);
    let pod_name = format!("{set_name}-{ord}");
    let md = template.get("metadata");
    let mut labels: Map<String, Value> =
        md.and_then(|m| m.get("labels")).and_then(Value::as_object).cloned().unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), json!(pod_name));
    labels.insert(POD_INDEX_LABEL.into(), json!(ord.to_string()));
    labels.insert(REVISION_LABEL.into(), json!(revision));
    let mut spec = template.get("spec").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    spec["hostname"] = json!(pod_name);
    if let Some(svc) = w::str_at(set, &["spec", "serviceName"]).filter(|s| !s.is_empty()) {
        spec["subdomain"] = json!(svc);
    }
    let claims = claim_names(set, ord);
    if !claims.is_empty() {
        let mut volumes: Vec<Value> =
            spec.get("volumes").and_then(Value::as_array).cloned().unwrap_or_default();
        volumes.retain(|v| {
            let n = v.get("name").and_then(Value::as_str).unwrap_or("");
            !claims.iter().any(|(c, _, _)| c == n)
        });
        for (vol, claim, _) in &claims {
            volumes.push(json!({"name": vol, "persistentVolumeClaim": {"claimName": claim}}));
        }
        spec["volumes"] = json!(volumes);
    }
    let mut metadata = json!({
        "name": pod_name,
        "namespace": w::namespace(set),
        "labels": labels,
        "ownerReferences": [w::owner_ref("apps/v1", "StatefulSet", set)],
    });
    if let Some(a) = md.and_then(|m| m.get("annotations")).filter(|a| a.is_object()) {
        metadata["annotations"] = a.clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

/// The PVC for one claim template.
fn pvc_for(set: &Value, claim: &str, template: &Value) -> Value {
    let mut labels: Map<String, Value> = template
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(ml) = set
        .get("spec")
        .and_then(|s| s.get("selector"))
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object)
    {
        for (k, v) in ml {
            labels.insert(k.clone(), v.clone());
        }
    }
    let mut metadata = json!({"name": claim, "namespace": w::namespace(set), "labels": labels});
    if let Some(a) = template.get("metadata").and_then(|m| m.get("annotations")).filter(|a| a.is_object()) {
        metadata["annotations"] = a.clone();
    }
    if w::str_at(set, &["spec", "persistentVolumeClaimRetentionPolicy", "whenDeleted"]) == Some("Delete") {
        metadata["ownerReferences"] = json!([w::owner_ref("apps/v1", "StatefulSet", set)]);
    }
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata,
           "spec": template.get("spec").cloned().unwrap_or_else(|| json!({}))})
}

impl StatefulSets {
    /// Makes sure the ControllerRevision for `template` exists; returns its name.
    async fn ensure_revision(
        &self,
        set: &Value,
        template: &Value,
        owned: &[Arc<Value>],
    ) -> Result<String, ReconcileError> {
        let collisions = w::i64_at(set, &["status", "collisionCount"]).unwrap_or(0);
        let name = format!("{}-{}", w::name(set), w::hash_of(template, collisions));
        if owned.iter().any(|r| w::name(r) == name) {
            return Ok(name);
        }
        let number =
            owned.iter().filter_map(|r| r.get("revision").and_then(Value::as_i64)).max().unwrap_or(0) + 1;
        let mut labels: Map<String, Value> = set
            .get("spec")
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("metadata"))
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        labels.insert(REVISION_LABEL.into(), json!(name));
        let mut data_template = template.clone();
        if let Some(o) = data_template.as_object_mut() {
            o.insert("$patch".into(), json!("replace"));
        }
        let cr = json!({
            "apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {"name": name, "namespace": w::namespace(set), "labels": labels,
                         "ownerReferences": [w::owner_ref("apps/v1", "StatefulSet", set)]},
            "data": {"spec": {"template": data_template}},
            "revision": number,
        });
        match self.client.create(gvr::CONTROLLER_REVISIONS, Some(w::namespace(set)), cr).await {
            Ok(_) => Ok(name),
            Err(e) if e.is_already_exists() => Ok(name),
            Err(e) => Err(e.into()),
        }
    }

    /// The template stored in revision `name` (falls back to `current`).
    fn template_of(&self, ns: &str, name: &str, current: &Value) -> Value {
        self.revisions
            .get(&format!("{ns}/{name}"))
            .and_then(|r| r.get("data").and_then(|d| d.get("spec")).and_then(|s| s.get("template")).cloned())
            .map(|mut t| {
                if let Some(o) = t.as_object_mut() {
                    o.remove("$patch");
                }
                t
            })
            .unwrap_or_else(|| current.clone())
    }

    async fn ensure_pvcs(&self, set: &Value, ord: i64) -> Result<(), ReconcileError> {
        let ns = w::namespace(set);
        for (_, claim, template) in claim_names(set, ord) {
            if self.pvcs.get(&format!("{ns}/{claim}")).is_some() {
                continue;
            }
            match self.client.create(PVCS, Some(ns), pvc_for(set, &claim, &template)).await {
                Ok(_) => {
                    let msg = format!(
                        "create Claim {claim} Pod {}-{ord} in StatefulSet {} success",
                        w::name(set),
                        w::name(set)
                    );
                    self.recorder.event(set, "Normal", "SuccessfulCreate", &msg).await;
                }
                Err(e) if e.is_already_exists() => {}
                Err(e) => {
                    let msg = format!("create Claim {claim} for Pod {}-{ord} failed: {e}", w::name(set));
                    self.recorder.event(set, "Warning", "FailedCreate", &msg).await;
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    async fn reconcile_set(&self, key: String) -> Result<Action, ReconcileError> {
        let Some(set) = self.sets.get(&key) else { return Ok(Action::Done) };
        if w::is_terminating(&set) {
            return Ok(Action::Done);
        }
        let (ns, set_name) = split_key(&key);
        let (ns, set_name) = (ns.unwrap_or("").to_string(), set_name.to_string());
        let set_uid = w::uid(&set).to_string();
        let now = w::now();
        let template = set.get("spec").and_then(|s| s.get("template")).cloned().unwrap_or_else(|| json!({}));
        let min_ready = w::i64_at(&set, &["spec", "minReadySeconds"]).unwrap_or(0);
        let rolling = w::str_at(&set, &["spec", "updateStrategy", "type"]).unwrap_or("RollingUpdate")
            == "RollingUpdate";
        let policy = Policy {
            start: w::i64_at(&set, &["spec", "ordinals", "start"]).unwrap_or(0).max(0),
            replicas: w::i64_at(&set, &["spec", "replicas"]).unwrap_or(1).max(0),
            parallel: w::str_at(&set, &["spec", "podManagementPolicy"]) == Some("Parallel"),
            partition: rolling.then(|| {
                w::i64_at(&set, &["spec", "updateStrategy", "rollingUpdate", "partition"]).unwrap_or(0)
            }),
        };

        let owned_revisions: Vec<Arc<Value>> =
            self.revisions.list_ns(&ns).into_iter().filter(|r| w::controlled_by(r, &set_uid)).collect();
        let update_revision = self.ensure_revision(&set, &template, &owned_revisions).await?;
        let status = set.get("status").cloned().unwrap_or_else(|| json!({}));
        let mut current_revision = w::str_at(&status, &["currentRevision"])
            .filter(|r| !r.is_empty())
            .unwrap_or(&update_revision)
            .to_string();

        let prefix = format!("{set_name}-");
        let mut pods: BTreeMap<i64, Arc<Value>> = BTreeMap::new();
        for p in self.pods.list_ns(&ns) {
            if !w::controlled_by(&p, &set_uid) {
                continue;
            }
            let n = w::name(&p);
            if let Some(ord) =
                n.strip_prefix(&prefix).and_then(|rest| w::ordinal_suffix(&format!("x-{rest}")))
            {
                pods.insert(ord, p.clone());
            }
        }
        let mut requeue: Option<Duration> = None;
        let states: BTreeMap<i64, PodState> = pods
            .iter()
            .map(|(o, p)| {
                let healthy = w::pod_available(p, min_ready, now) && !w::is_terminating(p);
                if w::pod_ready(p) && !healthy {
                    requeue = Some(Duration::from_secs(min_ready.max(1) as u64));
                }
                let s = PodState {
                    healthy,
                    terminating: w::is_terminating(p),
                    finished: w::pod_finished(p),
                    revision: w::str_at(p, &["metadata", "labels", REVISION_LABEL]).unwrap_or("").to_string(),
                };
                (*o, s)
            })
            .collect();

        for step in plan(&policy, &states, &update_revision) {
            match step {
                Step::Create(ord) => {
                    self.ensure_pvcs(&set, ord).await?;
                    let below_partition = policy.partition.is_some_and(|p| ord < p);
                    let rev =
                        if below_partition { current_revision.clone() } else { update_revision.clone() };
                    let tmpl = if rev == update_revision {
                        template.clone()
                    } else {
                        self.template_of(&ns, &rev, &template)
                    };
                    match self.client.create(gvr::PODS, Some(&ns), pod_for(&set, &tmpl, &rev, ord)).await {
                        Ok(p) => {
                            let msg =
                                format!("create Pod {} in StatefulSet {set_name} successful", w::name(&p));
                            self.recorder.event(&set, "Normal", "SuccessfulCreate", &msg).await;
                        }
                        // The cache is behind; the pod's event will bring us back.
                        Err(e) if e.is_already_exists() => {}
                        Err(e) if e.is_not_found() => return Ok(Action::Done),
                        Err(e) => {
                            let msg = format!(
                                "create Pod {set_name}-{ord} in StatefulSet {set_name} failed error: {e}"
                            );
                            self.recorder.event(&set, "Warning", "FailedCreate", &msg).await;
                            return Err(e.into());
                        }
                    }
                }
                Step::Delete(ord) => {
                    let Some(p) = pods.get(&ord) else { continue };
                    match self.client.delete_uid(gvr::PODS, Some(&ns), w::name(p), w::uid(p), None).await {
                        Ok(_) => {
                            let msg =
                                format!("delete Pod {} in StatefulSet {set_name} successful", w::name(p));
                            self.recorder.event(&set, "Normal", "SuccessfulDelete", &msg).await;
                        }
                        Err(e) if e.is_not_found() || e.is_conflict() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }

        // Status, from what the cache shows (the writes above come back as events).
        let (mut replicas, mut ready, mut available, mut current, mut updated) =
            (0i64, 0i64, 0i64, 0i64, 0i64);
        for p in pods.values() {
            replicas += 1;
            if w::pod_ready(p) {
                ready += 1;
                if w::pod_available(p, min_ready, now) {
                    available += 1;
                }
            }
            if !w::is_terminating(p) {
                let rev = w::str_at(p, &["metadata", "labels", REVISION_LABEL]).unwrap_or("");
                current += i64::from(rev == current_revision);
                updated += i64::from(rev == update_revision);
            }
        }
        if rolling && updated == replicas && ready == replicas && replicas == policy.replicas {
            current_revision = update_revision.clone();
            current = updated;
        }
        let mut new_status = status.as_object().cloned().unwrap_or_default();
        for (k, v) in [
            ("observedGeneration", json!(capstan_api::meta::generation(&set))),
            ("replicas", json!(replicas)),
            ("readyReplicas", json!(ready)),
            ("availableReplicas", json!(available)),
            ("currentReplicas", json!(current)),
            ("updatedReplicas", json!(updated)),
            ("currentRevision", json!(current_revision)),
            ("updateRevision", json!(update_revision)),
            ("collisionCount", json!(w::i64_at(&status, &["collisionCount"]).unwrap_or(0))),
        ] {
            new_status.insert(k.into(), v);
        }
        let new_status = Value::Object(new_status);
        if new_status != status {
            let mut obj = (*set).clone();
            obj["status"] = new_status;
            match self.client.update_status(gvr::STATEFUL_SETS, Some(&ns), obj).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Action::Done),
                Err(e) => return Err(e.into()),
            }
        }
        self.prune_revisions(&set, &owned_revisions, &pods, &current_revision, &update_revision).await?;
        Ok(requeue.map_or(Action::Done, Action::RequeueAfter))
    }

    /// Deletes the oldest unused revisions beyond `revisionHistoryLimit`.
    async fn prune_revisions(
        &self,
        set: &Value,
        owned: &[Arc<Value>],
        pods: &BTreeMap<i64, Arc<Value>>,
        current: &str,
        update: &str,
    ) -> Result<(), ReconcileError> {
        let limit = w::i64_at(set, &["spec", "revisionHistoryLimit"]).unwrap_or(10).max(0) as usize;
        let mut unused: Vec<&Arc<Value>> = owned
            .iter()
            .filter(|r| {
                let n = w::name(r);
                n != current
                    && n != update
                    && !pods
                        .values()
                        .any(|p| w::str_at(p, &["metadata", "labels", REVISION_LABEL]) == Some(n))
            })
            .collect();
        if unused.len() <= limit {
            return Ok(());
        }
        unused.sort_by_key(|r| r.get("revision").and_then(Value::as_i64).unwrap_or(0));
        let extra = unused.len() - limit;
        for r in unused.into_iter().take(extra) {
            match self.client.delete(gvr::CONTROLLER_REVISIONS, Some(w::namespace(r)), w::name(r), None).await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

impl Reconciler for StatefulSets {
    fn name(&self) -> &'static str {
        "statefulset"
    }

    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move { self.reconcile_set(key).await })
    }
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let sets = ctx.informers.get(gvr::STATEFUL_SETS);
    let pods = ctx.informers.get(gvr::PODS);
    let r = Arc::new(StatefulSets {
        client: ctx.client.clone(),
        sets: sets.clone(),
        pods: pods.clone(),
        pvcs: ctx.informers.get(PVCS),
        revisions: ctx.informers.get(gvr::CONTROLLER_REVISIONS),
        recorder: ctx.recorder.clone(),
    });
    let addr = Controller::new(r, 4).start();
    let (c1, a1) = (ctx.clone(), addr.clone());
    sets.on_change(Arc::new(move |c: &Change| {
        if let Change::Applied { .. } = c {
            let key = crate::informer::key_of(c.object());
            if c1.owns(&key) {
                a1.do_send(Enqueue(key));
            }
        }
    }));
    let c2 = ctx.clone();
    pods.on_change(Arc::new(move |c: &Change| {
        if let Some(key) = owner_key(c.object(), "StatefulSet") {
            if c2.owns(&key) {
                addr.do_send(Enqueue(key));
            }
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(healthy: bool, rev: &str) -> PodState {
        PodState { healthy, terminating: false, finished: false, revision: rev.into() }
    }

    fn ordered(replicas: i64) -> Policy {
        Policy { start: 0, replicas, parallel: false, partition: Some(0) }
    }

    fn pods(v: &[(i64, PodState)]) -> BTreeMap<i64, PodState> {
        v.iter().cloned().collect()
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time() {
        let p = ordered(3);
        assert_eq!(plan(&p, &pods(&[]), "r1"), vec![Step::Create(0)]);
        // web-0 exists but is not ready: wait.
        assert!(plan(&p, &pods(&[(0, st(false, "r1"))]), "r1").is_empty());
        assert_eq!(plan(&p, &pods(&[(0, st(true, "r1"))]), "r1"), vec![Step::Create(1)]);
        assert_eq!(plan(&p, &pods(&[(0, st(true, "r1")), (1, st(true, "r1"))]), "r1"), vec![Step::Create(2)]);
        // A missing lower ordinal is recreated first.
        assert_eq!(plan(&p, &pods(&[(1, st(true, "r1"))]), "r1"), vec![Step::Create(0)]);
        // A failed pod is deleted (then recreated).
        let failed = PodState { finished: true, ..st(false, "r1") };
        assert_eq!(plan(&p, &pods(&[(0, failed)]), "r1"), vec![Step::Delete(0)]);
    }

    #[test]
    fn parallel_creates_all() {
        let p = Policy { parallel: true, ..ordered(3) };
        assert_eq!(plan(&p, &pods(&[]), "r1"), vec![Step::Create(0), Step::Create(1), Step::Create(2)]);
        assert_eq!(plan(&p, &pods(&[(1, st(false, "r1"))]), "r1"), vec![Step::Create(0), Step::Create(2)]);
        let down = Policy { parallel: true, ..ordered(1) };
        let all = pods(&[(0, st(true, "r1")), (1, st(true, "r1")), (2, st(false, "r1"))]);
        assert_eq!(plan(&down, &all, "r1"), vec![Step::Delete(2), Step::Delete(1)]);
    }

    #[test]
    fn ordered_scale_down_highest_first_waiting() {
        let p = ordered(1);
        let all = pods(&[(0, st(true, "r1")), (1, st(true, "r1")), (2, st(true, "r1"))]);
        assert_eq!(plan(&p, &all, "r1"), vec![Step::Delete(2)]);
        // web-2 terminating: wait for it to be gone.
        let mut t = all.clone();
        t.insert(2, PodState { terminating: true, ..st(true, "r1") });
        assert!(plan(&p, &t, "r1").is_empty());
        // web-2 gone: web-1 next.
        let mut g = all.clone();
        g.remove(&2);
        assert_eq!(plan(&p, &g, "r1"), vec![Step::Delete(1)]);
        // A replica that stays is unhealthy: do not delete anything.
        let mut u = all.clone();
        u.insert(0, st(false, "r1"));
        assert!(plan(&p, &u, "r1").is_empty());
        // The condemned pod itself unhealthy: it may go.
        let mut c = all;
        c.insert(2, st(false, "r1"));
        assert_eq!(plan(&p, &c, "r1"), vec![Step::Delete(2)]);
    }

    #[test]
    fn rolling_update_from_highest() {
        let p = ordered(3);
        let all = pods(&[(0, st(true, "r1")), (1, st(true, "r1")), (2, st(true, "r1"))]);
        assert_eq!(plan(&p, &all, "r2"), vec![Step::Delete(2)]);
        // web-2 recreated at r2 but not ready yet: wait.
        let mut w2 = all.clone();
        w2.insert(2, st(false, "r2"));
        assert!(plan(&p, &w2, "r2").is_empty());
        w2.insert(2, st(true, "r2"));
        assert_eq!(plan(&p, &w2, "r2"), vec![Step::Delete(1)]);
        // Partition 2: only ordinals >= 2 update.
        let part = Policy { partition: Some(2), ..ordered(3) };
        assert!(plan(&part, &w2, "r2").is_empty());
        // OnDelete: never.
        let on_delete = Policy { partition: None, ..ordered(3) };
        assert!(plan(&on_delete, &all, "r2").is_empty());
    }

    #[test]
    fn pod_identity() {
        let set = json!({"metadata": {"name": "web", "namespace": "ns", "uid": "u"},
            "spec": {"serviceName": "nginx", "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {}}]}});
        let tmpl = json!({"metadata": {"labels": {"app": "nginx"}},
            "spec": {"containers": [{"name": "c"}], "volumes": [{"name": "www", "emptyDir": {}}]}});
        let p = pod_for(&set, &tmpl, "web-abc", 1);
        assert_eq!(p["metadata"]["name"], "web-1");
        assert_eq!(p["metadata"]["labels"][POD_NAME_LABEL], "web-1");
        assert_eq!(p["metadata"]["labels"][POD_INDEX_LABEL], "1");
        assert_eq!(p["metadata"]["labels"][REVISION_LABEL], "web-abc");
        assert_eq!(p["spec"]["hostname"], "web-1");
        assert_eq!(p["spec"]["subdomain"], "nginx");
        assert_eq!(
            p["spec"]["volumes"],
            json!([{"name": "www", "persistentVolumeClaim": {"claimName": "www-web-1"}}])
        );
    }
}
