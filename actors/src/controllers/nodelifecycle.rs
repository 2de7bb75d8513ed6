//! The node lifecycle controller: node health from leases, taints from health, and
//! eviction of pods from tainted or deleted nodes.
//!
//! - **Health.** A node is probed by its Lease in `kube-node-lease` (renewTime) and by its
//!   Ready condition's lastHeartbeatTime. When neither has changed for the grace period
//!   (`CAPSTAN_NODE_GRACE_SECONDS`, default 40 s as upstream's
//!   `--node-monitor-grace-period`; read once at start), its Ready, MemoryPressure,
//!   DiskPressure and PIDPressure conditions become `Unknown` (`NodeStatusUnknown`), and
//!   the Ready condition of its pods becomes False. Times are local observation times,
//!   not the timestamps written by the node, so clock skew does not matter.
//! - **Taints follow the Ready condition.** Unknown: `node.kubernetes.io/unreachable`
//!   NoSchedule and NoExecute; False: `node.kubernetes.io/not-ready` likewise; True: none
//!   of them. The kubelet posting Ready again removes them. MemoryPressure, DiskPressure
//!   and PIDPressure True add `node.kubernetes.io/memory-pressure` (`disk-pressure`,
//!   `pid-pressure`) NoSchedule, as upstream's TaintNodesByCondition.
//! - **Taint-based eviction.** A pod on a node with a NoExecute taint it does not tolerate
//!   is deleted at once; one tolerated for `tolerationSeconds` is deleted that long after
//!   the taint was added (its `timeAdded`, else when first seen).
//! - **Orphans.** Pods bound to a node that no longer exists (checked against the API
//!   after the grace period) are deleted with grace period 0, as the pod GC does.

use super::Ctx;
use crate::client::{gvr, ApiClient};
use crate::events::Recorder;
use crate::informer::{key_of, split_key, Change, Informer, Key};
use crate::nodeobjects::LEASE_NAMESPACE;
use crate::runtime::{Action, Controller, Enqueue, EnqueueAll, ReconcileError, Reconciler};
use actix::{Actor, Addr};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Taint key of nodes whose kubelet stopped posting status.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// Taint key of nodes that report Ready=False.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// Node conditions and the NoSchedule taints they bring (upstream's TaintNodesByCondition).
const PRESSURE_TAINTS: [(&str, &str); 3] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
];
/// Default grace period (upstream `--node-monitor-grace-period`).
const DEFAULT_GRACE_SECONDS: u64 = 40;
/// The node conditions the kubelet owns and this controller marks Unknown.
const NODE_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// The grace period from `CAPSTAN_NODE_GRACE_SECONDS` (whole seconds > 0), else 40 s.
pub fn grace_from_env(value: Option<&str>) -> Duration {
    let secs = value.and_then(|v| v.trim().parse::<u64>().ok()).filter(|s| *s > 0);
    Duration::from_secs(secs.unwrap_or(DEFAULT_GRACE_SECONDS))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn array_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(n) => cur = n,
            None => return &[],
        }
    }
    cur.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Now, as a seconds-precision RFC 3339 time.
fn now_time() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
}

fn name_of(v: &Value) -> &str {
    str_at(v, &["metadata", "name"]).unwrap_or("")
}

fn deleting(v: &Value) -> bool {
    v.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|d| !d.is_null())
}

/// The status of a node's Ready condition (`True`, `False`, `Unknown`), if it has one.
pub fn ready_status(node: &Value) -> Option<&str> {
    array_at(node, &["status", "conditions"])
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        .and_then(|c| c.get("status").and_then(Value::as_str))
}

/// The Ready heartbeat the kubelet last posted.
fn ready_heartbeat(node: &Value) -> Option<&str> {
    array_at(node, &["status", "conditions"])
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        .and_then(|c| c.get("lastHeartbeatTime").and_then(Value::as_str))
}

/// The conditions of a node whose kubelet stopped posting status at `now`, or `None` when
/// they already say so. Conditions the kubelet owns become Unknown (heartbeat times kept);
/// missing ones are added; others are left alone.
pub fn unknown_conditions(node: &Value, now: &str) -> Option<Value> {
    let mut list: Vec<Value> = array_at(node, &["status", "conditions"]).to_vec();
    let mut changed = false;
    for c in list.iter_mut() {
        let is_ours = c.get("type").and_then(Value::as_str).is_some_and(|t| NODE_CONDITIONS.contains(&t));
        if is_ours && c.get("status").and_then(Value::as_str) != Some("Unknown") {
            c["status"] = json!("Unknown");
            c["reason"] = json!("NodeStatusUnknown");
            c["message"] = json!("Kubelet stopped posting node status.");
            c["lastTransitionTime"] = json!(now);
            changed = true;
        }
    }
    let created = str_at(node, &["metadata", "creationTimestamp"]).unwrap_or(now).to_string();
    for t in NODE_CONDITIONS {
        if !list.iter().any(|c| c.get("type").and_then(Value::as_str) == Some(t)) {
            list.push(json!({
                "type": t, "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                "message": "Kubelet never posted node status.",
                "lastHeartbeatTime": created, "lastTransitionTime": now,
            }));
            changed = true;
        }
    }
    changed.then_some(Value::Array(list))
}

/// The taints a node should carry given its Ready condition, or `None` when it already
/// carries exactly those. Other taints are kept; kept taints keep their timeAdded.
pub fn desired_taints(node: &Value, now: &str) -> Option<Value> {
    let current = array_at(node, &["spec", "taints"]);
    let mut want: Vec<(&str, &str)> = match ready_status(node) {
        Some("Unknown") => vec![(UNREACHABLE_TAINT, "NoSchedule"), (UNREACHABLE_TAINT, "NoExecute")],
        Some("False") => vec![(NOT_READY_TAINT, "NoSchedule"), (NOT_READY_TAINT, "NoExecute")],
        _ => vec![],
    };
    // Taints by condition (upstream's TaintNodesByCondition): a pressure the kubelet reports
    // keeps new pods away.
    for (condition, key) in PRESSURE_TAINTS {
        let on = array_at(node, &["status", "conditions"]).iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some(condition)
                && c.get("status").and_then(Value::as_str) == Some("True")
        });
        if on {
            want.push((key, "NoSchedule"));
        }
    }
    let ours = |t: &Value| {
        let key = t.get("key").and_then(Value::as_str);
        (matches!(key, Some(UNREACHABLE_TAINT) | Some(NOT_READY_TAINT))
            && matches!(t.get("effect").and_then(Value::as_str), Some("NoSchedule") | Some("NoExecute")))
            || (PRESSURE_TAINTS.iter().any(|(_, k)| key == Some(k))
                && t.get("effect").and_then(Value::as_str) == Some("NoSchedule"))
    };
    let has = |key: &str, effect: &str| {
        current.iter().any(|t| {
            t.get("key").and_then(Value::as_str) == Some(key)
                && t.get("effect").and_then(Value::as_str) == Some(effect)
        })
    };
    let present_ours = current.iter().filter(|t| ours(t)).count();
    if present_ours == want.len() && want.iter().all(|(k, e)| has(k, e)) {
        return None;
    }
    let mut out: Vec<Value> = current
        .iter()
        .filter(|t| {
            !ours(t)
                || want.iter().any(|(k, e)| {
                    t.get("key").and_then(Value::as_str) == Some(k)
                        && t.get("effect").and_then(Value::as_str) == Some(e)
                })
        })
        .cloned()
        .collect();
    for (k, e) in &want {
        if !has(k, e) {
            let mut t = json!({"key": k, "effect": e});
            if *e == "NoExecute" {
                t["timeAdded"] = json!(now);
            }
            out.push(t);
        }
    }
    Some(Value::Array(out))
}

/// A NoExecute taint with the time it took effect.
#[derive(Debug, Clone, PartialEq)]
pub struct NoExecute {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Since when (timeAdded, or when first seen).
    pub added: jiff::Timestamp,
}

/// What taint-based eviction does with a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// The pod tolerates the taints for good (or there are none).
    Never,
    /// Delete the pod now.
    Now,
    /// Delete the pod after this long.
    After(Duration),
}

/// Whether `toleration` tolerates the NoExecute taint `taint` (upstream
/// `Toleration.ToleratesTaint`).
fn tolerates(toleration: &Value, taint: &NoExecute) -> bool {
    let effect = toleration.get("effect").and_then(Value::as_str).unwrap_or("");
    if !effect.is_empty() && effect != "NoExecute" {
        return false;
    }
    let key = toleration.get("key").and_then(Value::as_str).unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.get("operator").and_then(Value::as_str).unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            !key.is_empty() && toleration.get("value").and_then(Value::as_str).unwrap_or("") == taint.value
        }
        _ => false,
    }
}

/// Taint-based eviction of `pod` from a node with NoExecute `taints`, at `now` (upstream
/// taint eviction controller): any taint not tolerated → now; else the smallest
/// `tolerationSeconds` among the tolerations used, counted from when the earliest taint
/// took effect (and not before the pod existed); none set → never.
pub fn eviction(pod: &Value, taints: &[NoExecute], now: jiff::Timestamp) -> Eviction {
    if taints.is_empty() {
        return Eviction::Never;
    }
    let tolerations = array_at(pod, &["spec", "tolerations"]);
    let mut min_seconds: Option<i64> = None;
    for taint in taints {
        let used: Vec<&Value> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if used.is_empty() {
            return Eviction::Now;
        }
        for t in used {
            if let Some(secs) = t.get("tolerationSeconds").and_then(Value::as_i64) {
                min_seconds = Some(min_seconds.map_or(secs, |m| m.min(secs)));
            }
        }
    }
    let Some(secs) = min_seconds else { return Eviction::Never };
    if secs <= 0 {
        return Eviction::Now;
    }
    let mut start = taints.iter().map(|t| t.added).min().unwrap_or(now);
    if let Some(created) =
        str_at(pod, &["metadata", "creationTimestamp"]).and_then(|c| c.parse::<jiff::Timestamp>().ok())
    {
        start = start.max(created);
    }
    let elapsed = now.duration_since(start).as_secs_f64().max(0.0);
    let left = secs as f64 - elapsed;
    if left <= 0.0 {
        Eviction::Now
    } else {
        Eviction::After(Duration::from_secs_f64(left))
    }
}

/// Whether the node was last heard from longer than `grace` ago; else how long until it is.
pub fn overdue(last_heard: Instant, now: Instant, grace: Duration) -> Result<(), Duration> {
    let elapsed = now.saturating_duration_since(last_heard);
    if elapsed >= grace {
        Ok(())
    } else {
        Err(grace - elapsed)
    }
}

/// When each node was last heard from, by local clock.
#[derive(Default)]
struct Probes {
    nodes: HashMap<String, Probe>,
}

struct Probe {
    lease: Option<String>,
    heartbeat: Option<String>,
    at: Instant,
}

impl Probes {
    /// Records what the node showed; a change of either token means it was heard from.
    fn observe(&mut self, node: &str, lease: Option<&str>, heartbeat: Option<&str>, now: Instant) {
        match self.nodes.get_mut(node) {
            None => {
                self.nodes.insert(
                    node.to_string(),
                    Probe {
                        lease: lease.map(str::to_string),
                        heartbeat: heartbeat.map(str::to_string),
                        at: now,
                    },
                );
            }
            Some(p) => {
                if let Some(l) = lease.filter(|l| p.lease.as_deref() != Some(l)) {
                    p.lease = Some(l.to_string());
                    p.at = now;
                }
                if let Some(h) = heartbeat.filter(|h| p.heartbeat.as_deref() != Some(h)) {
                    p.heartbeat = Some(h.to_string());
                    p.at = now;
                }
            }
        }
    }

    fn last_heard(&mut self, node: &str, now: Instant) -> Instant {
        self.nodes.entry(node.to_string()).or_insert(Probe { lease: None, heartbeat: None, at: now }).at
    }
}

/// Shared state of the two reconcilers.
struct State {
    probes: Mutex<Probes>,
    /// Node → pods bound to it.
    pods_by_node: Mutex<HashMap<String, HashSet<Key>>>,
    /// Node → NoExecute taint (key, effect, value) → when first seen (for taints without
    /// timeAdded).
    taints_seen: Mutex<HashMap<String, HashMap<String, jiff::Timestamp>>>,
    /// Pod → when it was first seen bound to a missing node.
    orphans_seen: Mutex<HashMap<Key, Instant>>,
    /// Node → when its next health check is already scheduled (so that every change
    /// does not start another chain of timed checks).
    checks: Mutex<HashMap<String, Instant>>,
}

impl State {
    /// The action that has node `name` checked again at `at`, unless a check is already
    /// scheduled no later than that.
    fn check_at(&self, name: &str, now: Instant, at: Instant) -> Action {
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        match checks.get(name) {
            Some(pending) if *pending > now && *pending <= at => Action::Done,
            _ => {
                checks.insert(name.to_string(), at);
                Action::RequeueAfter(at.saturating_duration_since(now))
            }
        }
    }

    fn pods_of(&self, node: &str) -> Vec<Key> {
        self.pods_by_node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The node's NoExecute taints with their start times; remembers first sightings.
    fn no_execute(&self, node: &Value, now: jiff::Timestamp) -> Vec<NoExecute> {
        let name = name_of(node);
        let mut seen = self.taints_seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let mut current = HashSet::new();
        for t in array_at(node, &["spec", "taints"]) {
            if t.get("effect").and_then(Value::as_str) != Some("NoExecute") {
                continue;
            }
            let key = t.get("key").and_then(Value::as_str).unwrap_or("").to_string();
            let value = t.get("value").and_then(Value::as_str).unwrap_or("").to_string();
            let id = format!("{key}={value}");
            current.insert(id.clone());
            let first = *seen.entry(name.to_string()).or_default().entry(id).or_insert(now);
            let added =
                t.get("timeAdded").and_then(Value::as_str).and_then(|s| s.parse().ok()).unwrap_or(first);
            out.push(NoExecute { key, value, added });
        }
        if let Some(m) = seen.get_mut(name) {
            m.retain(|k, _| current.contains(k));
            if m.is_empty() {
                seen.remove(name);
            }
        }
        out
    }
}

/// Node health and taints (keyed by node name).
struct NodeHealth {
    client: ApiClient,
    nodes: Arc<Informer>,
    pods: Arc<Informer>,
    state: Arc<State>,
    recorder: Recorder,
    grace: Duration,
}

impl NodeHealth {
    /// Marks the Ready condition of the node's pods False (upstream `MarkPodsNotReady`).
    async fn mark_pods_not_ready(&self, node: &str, now: &str) -> Result<(), ReconcileError> {
        let mut failed = None;
        for key in self.state.pods_of(node) {
            let Some(pod) = self.pods.get(&key) else { continue };
            if str_at(&pod, &["spec", "nodeName"]) != Some(node) {
                continue;
            }
            let conditions = array_at(&pod, &["status", "conditions"]);
            let ready = conditions.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            });
            if !ready {
                continue;
            }
            let list: Vec<Value> = conditions
                .iter()
                .map(|c| {
                    let mut c = c.clone();
                    if c.get("type").and_then(Value::as_str) == Some("Ready") {
                        c["status"] = json!("False");
                        c["lastTransitionTime"] = json!(now);
                    }
                    c
                })
                .collect();
            let rv = str_at(&pod, &["metadata", "resourceVersion"]).unwrap_or("");
            let patch = json!({"metadata": {"resourceVersion": rv}, "status": {"conditions": list}});
            let (ns, name) = split_key(&key);
            match self
                .client
                .patch(gvr::PODS, ns, name, "application/merge-patch+json", patch, Some("status"))
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

impl Reconciler for NodeHealth {
    fn name(&self) -> &'static str {
        "nodelifecycle"
    }

    fn reconcile(self: Arc<Self>, name: Key) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            let Some(node) = self.nodes.get(&name) else {
                self.state.probes.lock().unwrap_or_else(|e| e.into_inner()).nodes.remove(&name);
                self.state.checks.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
                return Ok(Action::Done);
            };
            let now = Instant::now();
            let last = self.state.probes.lock().unwrap_or_else(|e| e.into_inner()).last_heard(&name, now);
            let stamp = now_time();
            let mut node: Value = (*node).clone();
            let mut next_check = now + self.grace;
            match overdue(last, now, self.grace) {
                Ok(()) => {
                    if let Some(conditions) = unknown_conditions(&node, &stamp) {
                        let rv = str_at(&node, &["metadata", "resourceVersion"]).unwrap_or("").to_string();
                        let patch = json!({"metadata": {"resourceVersion": rv}, "status": {"conditions": conditions}});
                        node = self
                            .client
                            .patch(
                                gvr::NODES,
                                None,
                                &name,
                                "application/merge-patch+json",
                                patch,
                                Some("status"),
                            )
                            .await?;
                        tracing::info!(node = %name, "node stopped posting status; marked Unknown");
                        self.recorder
                            .event(
                                &node,
                                "Normal",
                                "NodeNotReady",
                                &format!("Node {name} status is now: NodeNotReady"),
                            )
                            .await;
                    }
                }
                Err(left) => next_check = now + left + Duration::from_millis(50),
            }
            if let Some(taints) = desired_taints(&node, &stamp) {
                let rv = str_at(&node, &["metadata", "resourceVersion"]).unwrap_or("").to_string();
                let patch = json!({"metadata": {"resourceVersion": rv}, "spec": {"taints": taints}});
                self.client.merge_patch(gvr::NODES, None, &name, patch).await?;
            }
            if ready_status(&node) == Some("Unknown") {
                self.mark_pods_not_ready(&name, &stamp).await?;
            }
            Ok(self.state.check_at(&name, now, next_check))
        })
    }
}

/// Taint-based eviction and orphan GC (keyed by pod `namespace/name`).
struct PodEviction {
    client: ApiClient,
    nodes: Arc<Informer>,
    pods: Arc<Informer>,
    state: Arc<State>,
    recorder: Recorder,
    grace: Duration,
}

impl PodEviction {
    async fn orphan(&self, key: &str, pod: &Value, node: &str) -> Result<Action, ReconcileError> {
        if !self.nodes.is_synced() {
            return Ok(Action::RequeueAfter(Duration::from_secs(1)));
        }
        let now = Instant::now();
        let first = *self
            .state
            .orphans_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_insert(now);
        if let Err(left) = overdue(first, now, self.grace) {
            return Ok(Action::RequeueAfter(left + Duration::from_millis(50)));
        }
        // The cache may lag: ask the API before deleting.
        match self.client.get(gvr::NODES, None, node).await {
            Ok(_) => return Ok(Action::Done),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let (ns, name) = split_key(key);
        let uid = str_at(pod, &["metadata", "uid"]).unwrap_or("");
        tracing::info!(pod = %key, node, "deleting pod bound to a node that no longer exists");
        match self.client.delete_uid(gvr::PODS, ns, name, uid, Some(0)).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() || e.is_conflict() => {}
            Err(e) => return Err(e.into()),
        }
        self.state.orphans_seen.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        Ok(Action::Done)
    }
}

impl Reconciler for PodEviction {
    fn name(&self) -> &'static str {
        "taint-eviction"
    }

    fn reconcile(self: Arc<Self>, key: Key) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            let Some(pod) = self.pods.get(&key) else {
                self.state.orphans_seen.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                return Ok(Action::Done);
            };
            let Some(node_name) = str_at(&pod, &["spec", "nodeName"]).filter(|n| !n.is_empty()) else {
                return Ok(Action::Done);
            };
            let Some(node) = self.nodes.get(node_name) else {
                let node_name = node_name.to_string();
                return self.orphan(&key, &pod, &node_name).await;
            };
            self.state.orphans_seen.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            if deleting(&pod) {
                return Ok(Action::Done);
            }
            let now = jiff::Timestamp::now();
            let taints = self.state.no_execute(&node, now);
            match eviction(&pod, &taints, now) {
                Eviction::Never => Ok(Action::Done),
                Eviction::After(d) => Ok(Action::RequeueAfter(d + Duration::from_millis(20))),
                Eviction::Now => {
                    let (ns, name) = split_key(&key);
                    let uid = str_at(&pod, &["metadata", "uid"]).unwrap_or("");
                    tracing::info!(pod = %key, node = node_name, "evicting pod from a NoExecute-tainted node");
                    match self.client.delete_uid(gvr::PODS, ns, name, uid, None).await {
                        Ok(_) => {
                            self.recorder
                                .event(
                                    &pod,
                                    "Normal",
                                    "TaintManagerEviction",
                                    &format!("Marking for deletion Pod {key}"),
                                )
                                .await;
                            Ok(Action::Done)
                        }
                        Err(e) if e.is_not_found() || e.is_conflict() => Ok(Action::Done),
                        Err(e) => Err(e.into()),
                    }
                }
            }
        })
    }
}

fn has_no_execute(node: &Value) -> bool {
    array_at(node, &["spec", "taints"])
        .iter()
        .any(|t| t.get("effect").and_then(Value::as_str) == Some("NoExecute"))
}

fn no_execute_set(node: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = array_at(node, &["spec", "taints"])
        .iter()
        .filter(|t| t.get("effect").and_then(Value::as_str) == Some("NoExecute"))
        .map(|t| {
            (
                t.get("key").and_then(Value::as_str).unwrap_or("").to_string(),
                t.get("timeAdded").and_then(Value::as_str).unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn enqueue_pods(ctx: &Ctx, addr: &Addr<Controller<PodEviction>>, keys: Vec<Key>) {
    let keys: Vec<Key> = keys.into_iter().filter(|k| ctx.owns(k)).collect();
    if !keys.is_empty() {
        addr.do_send(EnqueueAll(keys));
    }
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let grace = grace_from_env(std::env::var("CAPSTAN_NODE_GRACE_SECONDS").ok().as_deref());
    let nodes = ctx.informers.get(gvr::NODES);
    let leases = ctx.informers.get(gvr::LEASES);
    let pods = ctx.informers.get(gvr::PODS);
    let state = Arc::new(State {
        probes: Mutex::new(Probes::default()),
        pods_by_node: Mutex::new(HashMap::new()),
        taints_seen: Mutex::new(HashMap::new()),
        orphans_seen: Mutex::new(HashMap::new()),
        checks: Mutex::new(HashMap::new()),
    });
    let health = Controller::new(
        Arc::new(NodeHealth {
            client: ctx.client.clone(),
            nodes: nodes.clone(),
            pods: pods.clone(),
            state: state.clone(),
            recorder: ctx.recorder.clone(),
            grace,
        }),
        8,
    )
    .start();
    let evict = Controller::new(
        Arc::new(PodEviction {
            client: ctx.client.clone(),
            nodes: nodes.clone(),
            pods: pods.clone(),
            state: state.clone(),
            recorder: ctx.recorder.clone(),
            grace,
        }),
        8,
    )
    .start();

    // Leases: a renewal is a probe; a node that looks unhealthy is looked at again at once.
    let (st, n, c, h) = (state.clone(), nodes.clone(), ctx.clone(), health.clone());
    leases.on_change(Arc::new(move |change: &Change| {
        let Change::Applied { new, .. } = change else { return };
        if str_at(new, &["metadata", "namespace"]) != Some(LEASE_NAMESPACE) {
            return;
        }
        let name = name_of(new);
        let renew = str_at(new, &["spec", "renewTime"]);
        st.probes.lock().unwrap_or_else(|e| e.into_inner()).observe(name, renew, None, Instant::now());
        let unhealthy = n
            .get(name)
            .is_some_and(|node| ready_status(&node) != Some("True") || desired_taints(&node, "").is_some());
        if unhealthy && c.owns(name) {
            h.do_send(Enqueue(name.to_string()));
        }
    }));

    // Nodes: the Ready heartbeat is a probe; taint changes re-check the node's pods.
    let (st, c, e) = (state.clone(), ctx.clone(), evict.clone());
    nodes.on_change(Arc::new(move |change: &Change| match change {
        Change::Applied { old, new } => {
            let name = name_of(new);
            st.probes.lock().unwrap_or_else(|e| e.into_inner()).observe(
                name,
                None,
                ready_heartbeat(new),
                Instant::now(),
            );
            if c.owns(name) {
                health.do_send(Enqueue(name.to_string()));
            }
            let before = old.as_deref().map(no_execute_set).unwrap_or_default();
            if before != no_execute_set(new) && (has_no_execute(new) || !before.is_empty()) {
                enqueue_pods(&c, &e, st.pods_of(name));
            }
        }
        Change::Deleted(old) => {
            let name = name_of(old);
            st.probes.lock().unwrap_or_else(|e| e.into_inner()).nodes.remove(name);
            st.taints_seen.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
            enqueue_pods(&c, &e, st.pods_of(name));
        }
    }));

    // Pods: keep the node index; look at pods on tainted or missing nodes.
    let (st, c, n) = (state, ctx.clone(), nodes);
    pods.on_change(Arc::new(move |change: &Change| {
        let obj = change.object();
        let Some(node) = str_at(obj, &["spec", "nodeName"]).filter(|n| !n.is_empty()) else { return };
        let key = key_of(obj);
        match change {
            Change::Deleted(_) => {
                let mut idx = st.pods_by_node.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(set) = idx.get_mut(node) {
                    set.remove(&key);
                    if set.is_empty() {
                        idx.remove(node);
                    }
                }
                drop(idx);
                if c.owns(&key) {
                    evict.do_send(Enqueue(key));
                }
            }
            Change::Applied { .. } => {
                st.pods_by_node
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(node.to_string())
                    .or_default()
                    .insert(key.clone());
                let needs_look = n.get(node).is_none_or(|nd| has_no_execute(&nd));
                if needs_look && c.owns(&key) {
                    evict.do_send(Enqueue(key));
                }
            }
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn unreachable(added: &str) -> NoExecute {
        NoExecute { key: UNREACHABLE_TAINT.into(), value: String::new(), added: ts(added) }
    }

    fn pod_with(tolerations: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "creationTimestamp": "2025-01-01T00:00:00Z"},
               "spec": {"tolerations": tolerations}})
    }

    #[test]
    fn grace_period_from_env() {
        assert_eq!(grace_from_env(None), Duration::from_secs(40));
        assert_eq!(grace_from_env(Some("4")), Duration::from_secs(4));
        assert_eq!(grace_from_env(Some("0")), Duration::from_secs(40));
        assert_eq!(grace_from_env(Some("soon")), Duration::from_secs(40));
    }

    #[test]
    fn overdue_after_grace() {
        let t0 = Instant::now();
        let g = Duration::from_secs(40);
        assert_eq!(overdue(t0, t0 + Duration::from_secs(30), g), Err(Duration::from_secs(10)));
        assert_eq!(overdue(t0, t0 + Duration::from_secs(40), g), Ok(()));
        assert_eq!(overdue(t0, t0 + Duration::from_secs(100), g), Ok(()));
    }

    #[test]
    fn probes_move_only_on_change() {
        let t0 = Instant::now();
        let mut p = Probes::default();
        p.observe("n", Some("r1"), None, t0);
        p.observe("n", Some("r1"), None, t0 + Duration::from_secs(5));
        assert_eq!(p.last_heard("n", t0 + Duration::from_secs(9)), t0);
        p.observe("n", None, Some("h1"), t0 + Duration::from_secs(6));
        assert_eq!(p.last_heard("n", t0 + Duration::from_secs(9)), t0 + Duration::from_secs(6));
        p.observe("n", Some("r2"), None, t0 + Duration::from_secs(7));
        assert_eq!(p.last_heard("n", t0 + Duration::from_secs(9)), t0 + Duration::from_secs(7));
        // A node never heard of gets the grace period from now.
        assert_eq!(p.last_heard("m", t0 + Duration::from_secs(9)), t0 + Duration::from_secs(9));
    }

    #[test]
    fn one_timed_check_per_node() {
        let state = State {
            probes: Mutex::new(Probes::default()),
            pods_by_node: Mutex::new(HashMap::new()),
            taints_seen: Mutex::new(HashMap::new()),
            orphans_seen: Mutex::new(HashMap::new()),
            checks: Mutex::new(HashMap::new()),
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(state.check_at("n", t0, t0 + s(40)), Action::RequeueAfter(s(40)));
        // Another change before then: the pending check covers it.
        assert_eq!(state.check_at("n", t0 + s(5), t0 + s(45)), Action::Done);
        // An earlier deadline gets its own check; after the check fired, a new one.
        assert_eq!(state.check_at("n", t0 + s(6), t0 + s(10)), Action::RequeueAfter(s(4)));
        assert_eq!(state.check_at("n", t0 + s(10), t0 + s(50)), Action::RequeueAfter(s(40)));
    }

    #[test]
    fn conditions_become_unknown_once() {
        let node = json!({"metadata": {"name": "n", "creationTimestamp": "2025-01-01T00:00:00Z"}, "status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": "2025-01-01T00:01:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z"},
            {"type": "MemoryPressure", "status": "False"},
            {"type": "NetworkUnavailable", "status": "False"},
        ]}});
        let cs = unknown_conditions(&node, "2025-01-01T00:05:00Z").unwrap();
        let get = |t: &str| cs.as_array().unwrap().iter().find(|c| c["type"] == t).unwrap().clone();
        assert_eq!(get("Ready")["status"], "Unknown");
        assert_eq!(get("Ready")["reason"], "NodeStatusUnknown");
        assert_eq!(get("Ready")["message"], "Kubelet stopped posting node status.");
        assert_eq!(get("Ready")["lastHeartbeatTime"], "2025-01-01T00:01:00Z");
        assert_eq!(get("Ready")["lastTransitionTime"], "2025-01-01T00:05:00Z");
        assert_eq!(get("MemoryPressure")["status"], "Unknown");
        assert_eq!(get("DiskPressure")["reason"], "NodeStatusNeverUpdated");
        assert_eq!(get("NetworkUnavailable")["status"], "False");
        let mut marked = node.clone();
        marked["status"]["conditions"] = cs;
        assert_eq!(unknown_conditions(&marked, "2025-01-01T00:06:00Z"), None);
    }

    #[test]
    fn taints_follow_ready() {
        let mut node = json!({"spec": {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(desired_taints(&node, "T"), None);
        node["status"]["conditions"][0]["status"] = json!("Unknown");
        let t = desired_taints(&node, "T").unwrap();
        assert_eq!(t.as_array().unwrap().len(), 3);
        assert!(t
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["key"] == UNREACHABLE_TAINT && x["effect"] == "NoExecute" && x["timeAdded"] == "T"));
        assert!(t
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["key"] == UNREACHABLE_TAINT && x["effect"] == "NoSchedule"));
        node["spec"]["taints"] = t;
        assert_eq!(desired_taints(&node, "T2"), None);
        // Ready=False swaps unreachable for not-ready; True removes ours and keeps the rest.
        node["status"]["conditions"][0]["status"] = json!("False");
        let t = desired_taints(&node, "T3").unwrap();
        assert!(t.as_array().unwrap().iter().all(|x| x["key"] != UNREACHABLE_TAINT));
        assert!(t.as_array().unwrap().iter().any(|x| x["key"] == NOT_READY_TAINT));
        node["status"]["conditions"][0]["status"] = json!("True");
        let t = desired_taints(&node, "T4").unwrap();
        assert_eq!(t, json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]));
        // MemoryPressure brings its NoSchedule taint, and takes it away.
        node["spec"]["taints"] = t;
        node["status"]["conditions"] =
            json!([{"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "True"}]);
        let t = desired_taints(&node, "T5").unwrap();
        assert_eq!(t.as_array().unwrap().len(), 2);
        assert!(t.as_array().unwrap().iter().any(|x| x["key"] == "node.kubernetes.io/memory-pressure"
            && x["effect"] == "NoSchedule"
            && x.get("timeAdded").is_none()));
        node["spec"]["taints"] = t;
        assert_eq!(desired_taints(&node, "T6"), None);
        node["status"]["conditions"][1]["status"] = json!("False");
        assert_eq!(
            desired_taints(&node, "T7").unwrap(),
            json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}])
        );
    }

    #[test]
    fn eviction_decisions() {
        let now = ts("2025-01-01T00:10:00Z");
        let taint = [unreachable("2025-01-01T00:09:58Z")];
        // No toleration: at once.
        assert_eq!(eviction(&pod_with(json!([])), &taint, now), Eviction::Now);
        // The default 300 s toleration: 298 s left.
        let default = json!([{"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]);
        assert_eq!(
            eviction(&pod_with(default.clone()), &taint, now),
            Eviction::After(Duration::from_secs(298))
        );
        // Expired.
        assert_eq!(eviction(&pod_with(default), &[unreachable("2025-01-01T00:00:00Z")], now), Eviction::Now);
        // Tolerated for good.
        let forever = json!([{"operator": "Exists"}]);
        assert_eq!(eviction(&pod_with(forever), &taint, now), Eviction::Never);
        // The smallest tolerationSeconds wins; a toleration of another effect does not count.
        let two = json!([
            {"key": UNREACHABLE_TAINT, "operator": "Exists", "tolerationSeconds": 60},
            {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10},
            {"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoSchedule"},
        ]);
        assert_eq!(eviction(&pod_with(two), &taint, now), Eviction::After(Duration::from_secs(8)));
        // Equal operator matches values; one untolerated taint evicts.
        let other = NoExecute { key: "k".into(), value: "v".into(), added: ts("2025-01-01T00:09:58Z") };
        let eq = json!([{"key": "k", "value": "v", "effect": "NoExecute"}]);
        assert_eq!(eviction(&pod_with(eq.clone()), std::slice::from_ref(&other), now), Eviction::Never);
        assert_eq!(
            eviction(&pod_with(eq), &[other, unreachable("2025-01-01T00:09:58Z")], now),
            Eviction::Now
        );
        let wrong = json!([{"key": "k", "value": "w", "effect": "NoExecute"}]);
        let other = NoExecute { key: "k".into(), value: "v".into(), added: now };
        assert_eq!(eviction(&pod_with(wrong), &[other], now), Eviction::Now);
        // No taints: nothing.
        assert_eq!(eviction(&pod_with(json!([])), &[], now), Eviction::Never);
        // The clock starts no earlier than the pod.
        let mut late = pod_with(json!([{"operator": "Exists", "tolerationSeconds": 30}]));
        late["metadata"]["creationTimestamp"] = json!("2025-01-01T00:09:50Z");
        assert_eq!(
            eviction(&late, &[unreachable("2025-01-01T00:00:00Z")], now),
            Eviction::After(Duration::from_secs(20))
        );
    }
}
