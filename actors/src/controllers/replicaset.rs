//! The replicaset controller: keeps `spec.replicas` pods matching a ReplicaSet's selector
//! running, with the ReplicaSet as their controller owner.
//!
//! As upstream: active pods (not terminating, not Succeeded/Failed) are claimed (orphans
//! matching the selector are adopted, owned pods that no longer match are released);
//! missing pods are created in slow-start batches (1, 2, 4, …), surplus pods are deleted
//! preferring unscheduled < pending < not ready < ready, newer first. Expectations keep a
//! burst of watch events from double-creating: after asking for N creations (or deletions)
//! the ReplicaSet is not managed again until the informer has observed them (or they
//! expire). Status (`replicas`, `fullyLabeledReplicas`, `readyReplicas`,
//! `availableReplicas`, `observedGeneration`) goes through `update_status`.
//!
//! The same controller runs for ReplicationControllers (`v1`), whose selector is a map of
//! labels matched by equality ([`Flavor`]).
//!
//! The small helpers on pods, owner references and write freshness here are shared with
//! the deployment controller.

use super::Ctx;
use crate::client::{gvr, ApiClient, Gvr};
use crate::events::Recorder;
use crate::informer::{key_of, Change, Informer, Key};
use crate::runtime::{owner_key, Action, Controller, Enqueue, ReconcileError, Reconciler};
use actix::Actor;
use capstan_api::selectors::LabelSelector;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// At most this many creations or deletions per sync (upstream `burstReplicas`).
const BURST_REPLICAS: usize = 500;
/// Expectations older than this are considered satisfied (a lost event cannot wedge a set).
const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);
/// How long a write waits for the informer to show it before acting on the cache anyway.
const FRESHNESS_TTL: Duration = Duration::from_secs(10);

// ---- small object helpers (shared with the deployment controller) ------------------------

/// `metadata.<field>` as a string.
pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str)
}

/// Whether the object has a deletionTimestamp.
pub(crate) fn is_terminating(obj: &Value) -> bool {
    obj.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|v| !v.is_null())
}

/// A string map (`metadata.labels`, `metadata.annotations`).
pub(crate) fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default()
}

/// `metadata.labels`.
pub(crate) fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    string_map(obj.get("metadata").and_then(|m| m.get("labels")))
}

/// `metadata.annotations`.
pub(crate) fn annotations_of(obj: &Value) -> BTreeMap<String, String> {
    string_map(obj.get("metadata").and_then(|m| m.get("annotations")))
}

/// An integer at a JSON pointer.
pub(crate) fn int_at(obj: &Value, pointer: &str) -> Option<i64> {
    obj.pointer(pointer).and_then(Value::as_i64)
}

/// The ownerReference with `controller: true`, if any.
pub(crate) fn controller_ref(obj: &Value) -> Option<&Value> {
    obj.get("metadata")
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
}

/// The uid of the controller owner, when it is of `kind`.
pub(crate) fn controller_uid<'a>(obj: &'a Value, kind: &str) -> Option<&'a str> {
    controller_ref(obj)
        .filter(|r| r.get("kind").and_then(Value::as_str) == Some(kind))
        .and_then(|r| r.get("uid"))
        .and_then(Value::as_str)
}

/// An ownerReference making `owner` the controller.
pub(crate) fn controller_ref_to(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "name": meta_str(owner, "name").unwrap_or(""),
        "uid": meta_str(owner, "uid").unwrap_or(""),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Parses an RFC 3339 timestamp.
pub(crate) fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// Now, RFC 3339 with second precision (as Kubernetes writes condition times).
pub(crate) fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
}

/// The selector of a workload (`spec.selector`). `None` when it is missing, invalid or
/// empty: a controller never manages "every pod".
pub(crate) fn selector_of(obj: &Value) -> Option<LabelSelector> {
    let sel = obj.pointer("/spec/selector")?;
    LabelSelector::from_label_selector_json(sel).ok().filter(|s| !s.is_empty())
}

/// A pod that counts: not terminating and not finished.
pub(crate) fn pod_is_active(pod: &Value) -> bool {
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
    !is_terminating(pod) && phase != "Succeeded" && phase != "Failed"
}

/// The pod's `Ready` condition, when True: since when (if known).
fn ready_condition(pod: &Value) -> Option<Option<jiff::Timestamp>> {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        .filter(|c| c.get("status").and_then(Value::as_str) == Some("True"))
        .map(|c| c.get("lastTransitionTime").and_then(Value::as_str).and_then(parse_time))
}

/// Whether the pod is Ready.
pub(crate) fn pod_is_ready(pod: &Value) -> bool {
    ready_condition(pod).is_some()
}

/// Availability of a pod given `minReadySeconds`: `Ok(())` when available, `Err(Some(d))`
/// when it becomes available in `d`, `Err(None)` when it is not ready.
pub(crate) fn pod_availability(
    pod: &Value,
    min_ready_seconds: i64,
    now: jiff::Timestamp,
) -> Result<(), Option<Duration>> {
    let Some(since) = ready_condition(pod) else { return Err(None) };
    if min_ready_seconds <= 0 {
        return Ok(());
    }
    // A Ready pod with no transition time counts as available (as upstream).
    let Some(since) = since else { return Ok(()) };
    let at = since.as_millisecond().saturating_add(min_ready_seconds.saturating_mul(1000));
    let left = at.saturating_sub(now.as_millisecond());
    if left <= 0 {
        Ok(())
    } else {
        Err(Some(Duration::from_millis(left.unsigned_abs())))
    }
}

fn resource_version(obj: &Value) -> u64 {
    meta_str(obj, "resourceVersion").and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Remembers the resourceVersion of our own writes so a reconcile does not act on a cache
/// that does not show them yet (the informer's event for the write re-enqueues the key).
#[derive(Default)]
pub(crate) struct Written {
    map: Mutex<HashMap<Key, (u64, Instant)>>,
}

impl Written {
    /// Records that `obj` (as returned by the API) was written.
    pub(crate) fn record(&self, obj: &Value) {
        let rv = resource_version(obj);
        if rv > 0 {
            self.map.lock().unwrap_or_else(|e| e.into_inner()).insert(key_of(obj), (rv, Instant::now()));
        }
    }

    /// Whether the cached version of `key` shows every write we made to it.
    pub(crate) fn fresh(&self, key: &str, cached: Option<&Value>) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let Some((rv, at)) = map.get(key).copied() else { return true };
        let seen = cached.map(resource_version).unwrap_or(0);
        if seen >= rv || at.elapsed() > FRESHNESS_TTL {
            map.remove(key);
            return true;
        }
        false
    }

    /// Forgets a key (object deleted).
    pub(crate) fn forget(&self, key: &str) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

// ---- expectations ------------------------------------------------------------------------

struct Expectation {
    adds: i64,
    dels: HashSet<Key>,
    at: Instant,
}

/// Creations and deletions a ReplicaSet waits to observe before acting again.
#[derive(Default)]
pub(crate) struct Expectations {
    map: Mutex<HashMap<Key, Expectation>>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Expectation>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Expects `adds` creations and the deletion of `dels`.
    pub(crate) fn expect(&self, key: &str, adds: i64, dels: HashSet<Key>) {
        self.lock().insert(key.to_string(), Expectation { adds, dels, at: Instant::now() });
    }

    /// A pod of `key` was observed created (or a creation will never happen).
    pub(crate) fn creation_observed(&self, key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.adds -= 1;
        }
    }

    /// A pod of `key` was observed deleted (or a deletion failed).
    pub(crate) fn deletion_observed(&self, key: &str, pod: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.dels.remove(pod);
        }
    }

    /// Whether `key` may act: nothing pending, or the record expired.
    pub(crate) fn satisfied(&self, key: &str) -> bool {
        match self.lock().get(key) {
            None => true,
            Some(e) => (e.adds <= 0 && e.dels.is_empty()) || e.at.elapsed() > EXPECTATIONS_TTL,
        }
    }

    /// Drops the record of `key`.
    pub(crate) fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

// ---- the controller ----------------------------------------------------------------------

/// What differs between ReplicaSets and ReplicationControllers.
#[derive(Clone, Copy)]
struct Flavor {
    gvr: Gvr,
    api_version: &'static str,
    kind: &'static str,
    name: &'static str,
    /// `spec.selector` is a plain label map (ReplicationController).
    map_selector: bool,
}

const REPLICA_SET: Flavor = Flavor {
    gvr: gvr::REPLICA_SETS,
    api_version: "apps/v1",
    kind: "ReplicaSet",
    name: "replicaset",
    map_selector: false,
};

/// ReplicationControllers.
pub const REPLICATION_CONTROLLERS: Gvr = Gvr::new("", "v1", "replicationcontrollers");

const REPLICATION_CONTROLLER: Flavor = Flavor {
    gvr: REPLICATION_CONTROLLERS,
    api_version: "v1",
    kind: "ReplicationController",
    name: "replicationcontroller",
    map_selector: true,
};

impl Flavor {
    /// The selector of a set; `None` when missing, invalid or empty.
    fn selector(&self, obj: &Value) -> Option<LabelSelector> {
        if !self.map_selector {
            return selector_of(obj);
        }
        let sel = obj.pointer("/spec/selector").filter(|v| v.is_object())?;
        LabelSelector::from_label_selector_json(&json!({"matchLabels": sel})).ok().filter(|s| !s.is_empty())
    }
}

struct ReplicaSets {
    flavor: Flavor,
    client: ApiClient,
    recorder: Recorder,
    pods: Arc<Informer>,
    sets: Arc<Informer>,
    expectations: Expectations,
    written: Written,
}

/// Order of deletion: the first pods are deleted first (upstream `ActivePodsWithRanks`
/// without the co-location rank).
fn deletion_order(a: &Value, b: &Value) -> Ordering {
    let node = |p: &Value| p.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
    let phase = |p: &Value| match p.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending") {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    };
    let ready_since = |p: &Value| ready_condition(p).flatten();
    let restarts = |p: &Value| {
        p.pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter().filter_map(|c| c.get("restartCount").and_then(Value::as_i64)).max().unwrap_or(0)
            })
            .unwrap_or(0)
    };
    let created = |p: &Value| meta_str(p, "creationTimestamp").and_then(parse_time);
    node(a)
        .cmp(&node(b))
        .then(phase(a).cmp(&phase(b)))
        .then(pod_is_ready(a).cmp(&pod_is_ready(b)))
        // Ready for a shorter time first.
        .then_with(|| match (pod_is_ready(a), ready_since(a), ready_since(b)) {
            (true, Some(x), Some(y)) => y.cmp(&x),
            _ => Ordering::Equal,
        })
        // More restarts first.
        .then(restarts(b).cmp(&restarts(a)))
        // Newer first.
        .then_with(|| created(b).cmp(&created(a)))
}

/// Status fields of a ReplicaSet computed from its active pods.
fn compute_status(rs: &Value, pods: &[Arc<Value>], now: jiff::Timestamp) -> (Value, Option<Duration>) {
    let template_labels = string_map(rs.pointer("/spec/template/metadata/labels"));
    let min_ready = int_at(rs, "/spec/minReadySeconds").unwrap_or(0);
    let (mut fully, mut ready, mut available) = (0i64, 0i64, 0i64);
    let mut next: Option<Duration> = None;
    for p in pods {
        let labels = labels_of(p);
        if template_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            fully += 1;
        }
        if pod_is_ready(p) {
            ready += 1;
        }
        match pod_availability(p, min_ready, now) {
            Ok(()) => available += 1,
            Err(Some(d)) => next = Some(next.map_or(d, |n| n.min(d))),
            Err(None) => {}
        }
    }
    let mut status = rs.get("status").cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    status["replicas"] = json!(pods.len());
    status["fullyLabeledReplicas"] = json!(fully);
    status["readyReplicas"] = json!(ready);
    status["availableReplicas"] = json!(available);
    status["observedGeneration"] = json!(int_at(rs, "/metadata/generation").unwrap_or(0));
    (status, next)
}

impl ReplicaSets {
    /// Adopts matching orphans and releases owned pods that no longer match. Returns the
    /// active pods the ReplicaSet controls.
    async fn claim(&self, rs: &Value, selector: &LabelSelector) -> Result<Vec<Arc<Value>>, ReconcileError> {
        let ns = meta_str(rs, "namespace").unwrap_or("");
        let uid = meta_str(rs, "uid").unwrap_or("");
        let mut owned = Vec::new();
        for pod in self.pods.list_ns(ns) {
            if !pod_is_active(&pod) {
                continue;
            }
            let matches = selector.matches(&labels_of(&pod));
            let name = meta_str(&pod, "name").unwrap_or("").to_string();
            match controller_ref(&pod) {
                Some(r) if r.get("uid").and_then(Value::as_str) == Some(uid) => {
                    if matches {
                        owned.push(pod);
                    } else if !is_terminating(rs) {
                        let refs: Vec<Value> = pod
                            .pointer("/metadata/ownerReferences")
                            .and_then(Value::as_array)
                            .map(|a| {
                                a.iter()
                                    .filter(|r| r.get("uid").and_then(Value::as_str) != Some(uid))
                                    .cloned()
                                    .collect()
                            })
                            .unwrap_or_default();
                        let patch = json!({"metadata": {
                            "ownerReferences": refs,
                            "uid": meta_str(&pod, "uid"),
                            "resourceVersion": meta_str(&pod, "resourceVersion"),
                        }});
                        match self.client.merge_patch(gvr::PODS, Some(ns), &name, patch).await {
                            Ok(_) => {}
                            Err(e) if e.is_not_found() => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Some(_) => {}
                None if matches && !is_terminating(rs) => {
                    let mut refs: Vec<Value> = pod
                        .pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    refs.push(controller_ref_to(rs, self.flavor.api_version, self.flavor.kind));
                    let patch = json!({"metadata": {
                        "ownerReferences": refs,
                        "uid": meta_str(&pod, "uid"),
                        "resourceVersion": meta_str(&pod, "resourceVersion"),
                    }});
                    match self.client.merge_patch(gvr::PODS, Some(ns), &name, patch).await {
                        Ok(p) => owned.push(Arc::new(p)),
                        Err(e) if e.is_not_found() || e.is_conflict() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                None => {}
            }
        }
        Ok(owned)
    }

    fn pod_from_template(&self, rs: &Value) -> Value {
        let name = meta_str(rs, "name").unwrap_or("");
        let mut prefix = format!("{name}-");
        if prefix.len() > 58 {
            prefix.truncate(58);
        }
        let tmeta = rs.pointer("/spec/template/metadata");
        let mut meta = json!({
            "generateName": prefix,
            "namespace": meta_str(rs, "namespace"),
            "ownerReferences": [controller_ref_to(rs, self.flavor.api_version, self.flavor.kind)],
        });
        for field in ["labels", "annotations", "finalizers"] {
            if let Some(v) = tmeta.and_then(|m| m.get(field)).filter(|v| !v.is_null()) {
                meta[field] = v.clone();
            }
        }
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": rs.pointer("/spec/template/spec").cloned().unwrap_or_else(|| json!({})),
        })
    }

    async fn create_pods(
        self: &Arc<Self>,
        rs: &Value,
        key: &str,
        count: usize,
    ) -> Result<(), ReconcileError> {
        let ns = meta_str(rs, "namespace").unwrap_or("").to_string();
        self.expectations.expect(key, count as i64, HashSet::new());
        let mut remaining = count;
        let mut batch = 1usize;
        let mut first_error: Option<crate::client::ClientError> = None;
        while remaining > 0 && first_error.is_none() {
            let n = batch.min(remaining);
            let calls = (0..n).map(|_| self.client.create(gvr::PODS, Some(&ns), self.pod_from_template(rs)));
            let results = futures::future::join_all(calls).await;
            for r in results {
                match r {
                    Ok(pod) => {
                        let msg = format!("Created pod: {}", meta_str(&pod, "name").unwrap_or(""));
                        self.event(rs, "Normal", "SuccessfulCreate", msg);
                    }
                    Err(e) => {
                        self.expectations.creation_observed(key);
                        if first_error.is_none() {
                            self.event(rs, "Warning", "FailedCreate", format!("Error creating: {e}"));
                            first_error = Some(e);
                        }
                    }
                }
            }
            remaining -= n;
            batch = batch.saturating_mul(2);
        }
        // Creations never attempted will never be observed.
        for _ in 0..remaining {
            self.expectations.creation_observed(key);
        }
        match first_error {
            // The namespace is going away: nothing to retry.
            Some(e) if matches!(&e, crate::client::ClientError::Api { code: 403, .. }) => Ok(()),
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn delete_pods(
        self: &Arc<Self>,
        rs: &Value,
        key: &str,
        victims: Vec<Arc<Value>>,
    ) -> Result<(), ReconcileError> {
        let ns = meta_str(rs, "namespace").unwrap_or("").to_string();
        let keys: HashSet<Key> = victims.iter().map(|p| key_of(p)).collect();
        self.expectations.expect(key, 0, keys);
        let calls = victims.iter().map(|p| {
            let name = meta_str(p, "name").unwrap_or("").to_string();
            let uid = meta_str(p, "uid").unwrap_or("").to_string();
            let ns = ns.clone();
            async move {
                let r = self.client.delete_uid(gvr::PODS, Some(&ns), &name, &uid, None).await;
                (name, r)
            }
        });
        let results = futures::future::join_all(calls).await;
        let mut first_error = None;
        for (name, r) in results {
            match r {
                Ok(_) => self.event(rs, "Normal", "SuccessfulDelete", format!("Deleted pod: {name}")),
                Err(e) => {
                    self.expectations.deletion_observed(key, &format!("{ns}/{name}"));
                    if !e.is_not_found() && first_error.is_none() {
                        self.event(rs, "Warning", "FailedDelete", format!("Error deleting: {e}"));
                        first_error = Some(e);
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    fn event(&self, obj: &Value, type_: &'static str, reason: &'static str, message: String) {
        let recorder = self.recorder.clone();
        let obj = obj.clone();
        tokio::spawn(async move { recorder.event(&obj, type_, reason, &message).await });
    }

    async fn sync(self: Arc<Self>, key: Key) -> Result<Action, ReconcileError> {
        let Some(rs) = self.sets.get(&key) else {
            self.expectations.forget(&key);
            self.written.forget(&key);
            return Ok(Action::Done);
        };
        if !self.written.fresh(&key, Some(rs.as_ref())) {
            return Ok(Action::RequeueAfter(Duration::from_secs(1)));
        }
        let Some(selector) = self.flavor.selector(&rs) else {
            tracing::debug!(key = %key, "replicaset has no usable selector");
            return Ok(Action::Done);
        };
        // Only decide with satisfied expectations, read before the cache.
        let satisfied = self.expectations.satisfied(&key);
        let pods = self.claim(&rs, &selector).await?;
        let mut result = Ok(());
        if satisfied && !is_terminating(&rs) {
            let desired = int_at(&rs, "/spec/replicas").unwrap_or(1).max(0) as usize;
            if pods.len() < desired {
                let n = (desired - pods.len()).min(BURST_REPLICAS);
                result = self.create_pods(&rs, &key, n).await;
            } else if pods.len() > desired {
                let n = (pods.len() - desired).min(BURST_REPLICAS);
                let mut ranked = pods.clone();
                ranked.sort_by(|a, b| deletion_order(a, b));
                ranked.truncate(n);
                result = self.delete_pods(&rs, &key, ranked).await;
            }
        }
        let (status, next) = compute_status(&rs, &pods, jiff::Timestamp::now());
        if rs.get("status") != Some(&status) {
            let mut obj = (*rs).clone();
            obj["status"] = status;
            let ns = meta_str(&rs, "namespace").map(str::to_string);
            match self.client.update_status(self.flavor.gvr, ns.as_deref(), obj).await {
                Ok(updated) => self.written.record(&updated),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        result?;
        Ok(match next {
            Some(d) => Action::RequeueAfter(d + Duration::from_millis(50)),
            None => Action::Done,
        })
    }
}

impl Reconciler for ReplicaSets {
    fn name(&self) -> &'static str {
        self.flavor.name
    }

    fn reconcile(self: Arc<Self>, key: Key) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(self.sync(key))
    }
}

/// ReplicaSets in the pod's namespace whose selector matches it (for orphans).
fn matching_sets(flavor: Flavor, sets: &Informer, pod: &Value) -> Vec<Key> {
    let ns = meta_str(pod, "namespace").unwrap_or("");
    let labels = labels_of(pod);
    sets.list_ns(ns)
        .iter()
        .filter(|rs| flavor.selector(rs).is_some_and(|s| s.matches(&labels)))
        .map(|rs| key_of(rs))
        .collect()
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    start_flavor(ctx, REPLICA_SET);
}

/// Starts the ReplicationController controller (the same logic over `v1`).
pub fn start_replication_controllers(ctx: &Ctx) {
    start_flavor(ctx, REPLICATION_CONTROLLER);
}

fn start_flavor(ctx: &Ctx, flavor: Flavor) {
    let pods = ctx.informers.get(gvr::PODS);
    let sets = ctx.informers.get(flavor.gvr);
    let r = Arc::new(ReplicaSets {
        flavor,
        client: ctx.client.clone(),
        recorder: ctx.recorder.clone(),
        pods: pods.clone(),
        sets: sets.clone(),
        expectations: Expectations::default(),
        written: Written::default(),
    });
    let mut controller = Controller::new(r.clone(), 8);
    if let Some(p) = &ctx.partition {
        controller = controller.with_partition(p.clone());
    }
    let addr = controller.start();

    let (a, c) = (addr.clone(), ctx.clone());
    let r1 = r.clone();
    sets.on_change(Arc::new(move |ch: &Change| {
        let key = key_of(ch.object());
        if let Change::Deleted(_) = ch {
            r1.expectations.forget(&key);
            r1.written.forget(&key);
            return;
        }
        if c.owns(&key) {
            a.do_send(Enqueue(key));
        }
    }));

    let c = ctx.clone();
    let sets2 = sets.clone();
    pods.on_change(Arc::new(move |ch: &Change| {
        let pod = ch.object();
        let pod_key = key_of(pod);
        let mut targets: Vec<Key> = Vec::new();
        let owner = owner_key(pod, flavor.kind);
        match ch {
            Change::Applied { old: None, new } => {
                if let Some(o) = &owner {
                    if is_terminating(new) {
                        r.expectations.deletion_observed(o, &pod_key);
                    } else {
                        r.expectations.creation_observed(o);
                    }
                    targets.push(o.clone());
                } else {
                    targets.extend(matching_sets(flavor, &sets2, new));
                }
            }
            Change::Applied { old: Some(old), new } => {
                if let Some(o) = &owner {
                    if is_terminating(new) && !is_terminating(old) {
                        r.expectations.deletion_observed(o, &pod_key);
                    }
                    targets.push(o.clone());
                }
                let old_owner = owner_key(old, flavor.kind);
                if let Some(o) = old_owner.filter(|o| Some(o) != owner.as_ref()) {
                    targets.push(o);
                }
                if owner.is_none() && labels_of(old) != labels_of(new)
                    || owner.is_none() && old_owner_released(old, new)
                {
                    targets.extend(matching_sets(flavor, &sets2, new));
                }
            }
            Change::Deleted(_) => {
                if let Some(o) = &owner {
                    r.expectations.deletion_observed(o, &pod_key);
                    targets.push(o.clone());
                }
            }
        }
        targets.sort();
        targets.dedup();
        for t in targets {
            if c.owns(&t) {
                addr.do_send(Enqueue(t));
            }
        }
    }));
}

fn old_owner_released(old: &Value, new: &Value) -> bool {
    controller_ref(old).is_some() && controller_ref(new).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: bool, phase: &str, ready: Option<&str>, created: &str) -> Value {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
            "spec": {},
            "status": {"phase": phase},
        });
        if node {
            p["spec"]["nodeName"] = json!("n1");
        }
        if let Some(t) = ready {
            p["status"]["conditions"] = json!([{"type": "Ready", "status": "True", "lastTransitionTime": t}]);
        }
        p
    }

    #[test]
    fn deletion_prefers_unscheduled_pending_notready_newer() {
        let mut pods = [
            pod("ready-old", true, "Running", Some("2024-01-01T00:00:00Z"), "2024-01-01T00:00:00Z"),
            pod("ready-new", true, "Running", Some("2024-01-02T00:00:00Z"), "2024-01-01T00:00:00Z"),
            pod("notready", true, "Running", None, "2024-01-01T00:00:00Z"),
            pod("pending", true, "Pending", None, "2024-01-01T00:00:00Z"),
            pod("unscheduled-old", false, "Pending", None, "2024-01-01T00:00:00Z"),
            pod("unscheduled-new", false, "Pending", None, "2024-01-03T00:00:00Z"),
        ];
        pods.sort_by(deletion_order);
        let names: Vec<&str> = pods.iter().map(|p| meta_str(p, "name").unwrap_or("")).collect();
        assert_eq!(
            names,
            ["unscheduled-new", "unscheduled-old", "pending", "notready", "ready-new", "ready-old"]
        );
    }

    #[test]
    fn expectations_block_until_observed() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs"));
        e.expect("ns/rs", 2, HashSet::new());
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(e.satisfied("ns/rs"));
        e.expect("ns/rs", 0, ["ns/p1".to_string()].into_iter().collect());
        assert!(!e.satisfied("ns/rs"));
        e.deletion_observed("ns/rs", "ns/p1");
        assert!(e.satisfied("ns/rs"));
    }

    #[test]
    fn status_counts_ready_and_available() {
        let rs = json!({
            "metadata": {"name": "rs", "namespace": "ns", "generation": 3},
            "spec": {"minReadySeconds": 10, "template": {"metadata": {"labels": {"app": "web"}}}},
        });
        let now: jiff::Timestamp = "2024-01-01T00:01:00Z".parse().expect("time");
        let mut a = pod("a", true, "Running", Some("2024-01-01T00:00:00Z"), "2024-01-01T00:00:00Z");
        a["metadata"]["labels"] = json!({"app": "web"});
        let b = pod("b", true, "Running", Some("2024-01-01T00:00:55Z"), "2024-01-01T00:00:00Z");
        let c = pod("c", false, "Pending", None, "2024-01-01T00:00:00Z");
        let pods: Vec<Arc<Value>> = [a, b, c].into_iter().map(Arc::new).collect();
        let (status, next) = compute_status(&rs, &pods, now);
        assert_eq!(status["replicas"], 3);
        assert_eq!(status["fullyLabeledReplicas"], 1);
        assert_eq!(status["readyReplicas"], 2);
        assert_eq!(status["availableReplicas"], 1);
        assert_eq!(status["observedGeneration"], 3);
        assert_eq!(next, Some(Duration::from_secs(5)));
    }
}
