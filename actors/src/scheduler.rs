//! The scheduler: places pods that name no node onto nodes, through `pods/binding`.
//!
//! Pods whose `spec.schedulerName` is `default-scheduler` (or unset), with no
//! `spec.nodeName`, not terminating and not finished, are reconcile keys of a
//! [`Controller`]. A reconcile takes one decision against the in-memory cache —
//! per-node summed requests kept current from the pod and node informers, plus the pods
//! this scheduler *assumed* onto a node while their binding is in flight — then binds
//! over the bus. Decisions are taken one at a time (under the cache lock, without
//! awaiting); up to [`MAX_BINDS_IN_FLIGHT`] bindings travel concurrently.
//!
//! A pod that fits nowhere gets a `FailedScheduling` Warning event and the condition
//! `PodScheduled=False, reason Unschedulable` with upstream's message, and waits in the
//! unschedulable set. It is tried again when the cluster changes in a way that may help
//! (a node added or changed, a pod leaving a node, its own spec changing), after a
//! per-pod back-off (1 s doubling to 10 s), and at the latest every 10 s.
//!
//! The filters and scores are upstream's default plugins (module `algorithm`). A pod that
//! fits nowhere may preempt lower-priority pods on one node (module `preemption`): the
//! victims get the `DisruptionTarget` condition and are deleted gracefully, the pod's
//! `status.nominatedNodeName` names the node, and it binds once they are gone.

mod algorithm;
mod cache;
pub(crate) mod model;
mod preemption;
mod volumes;

use crate::client::{gvr, ApiClient};
use crate::events::Recorder;
use crate::informer::{key_of, split_key, Change, Informer, Informers, Key};
use crate::runtime::{Action, Controller, Enqueue, EnqueueAll, ReconcileError, Reconciler};
use actix::Actor;
use algorithm::Rng;
use cache::{is_terminating, node_name, Cache, PodEffect};
use futures::future::BoxFuture;
use model::{labels_of, NodeDef, PodInfo};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;
use volumes::{PreBind, VolumeFilter};

/// The scheduler name this scheduler serves.
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// How many bindings (or unschedulable reports) may be in flight at once.
pub const MAX_BINDS_IN_FLIGHT: usize = 64;
/// How often the unschedulable set is checked for pods due another try.
const RETRY_TICK: Duration = Duration::from_millis(200);
/// The longest an unschedulable pod waits before it is tried again.
const PERIODIC_RETRY: Duration = Duration::from_secs(10);
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a preemptor waits for the victims it chose before it may choose again.
const PREEMPTION_WAIT: Duration = Duration::from_secs(300);

/// An unschedulable pod waiting for another try.
#[derive(Debug, Clone)]
struct Waiting {
    attempts: u32,
    /// The cluster-change count at the last attempt: a later change may help.
    seen: u64,
    /// No event-driven retry before this.
    backoff_until: Instant,
    /// Retry at this time regardless.
    retry_at: Instant,
    /// The pod has required pod affinity: a pod landing somewhere may help it.
    needs_pods: bool,
}

fn backoff(attempts: u32) -> Duration {
    INITIAL_BACKOFF.saturating_mul(1u32 << attempts.saturating_sub(1).min(8)).min(MAX_BACKOFF)
}

/// Everything guarded by one lock: the cache, the unschedulable set, the change count.
struct State {
    cache: Cache,
    waiting: HashMap<Key, Waiting>,
    /// Waiting pods with `needs_pods`.
    waiting_for_pods: usize,
    /// Counts cluster changes that may make a waiting pod schedulable.
    moves: u64,
    rng: Rng,
    /// Preemptions made: preemptor → its victims (key, uid) and when. While one of them is
    /// still in the cache the preemptor waits, even when the informer has not yet shown
    /// the victim terminating or the preemptor's nominated node (else a retry racing those
    /// updates would evict a second set of victims).
    preempting: HashMap<Key, (Vec<(Key, String)>, Instant)>,
}

impl State {
    fn new(seed: u64) -> State {
        State {
            cache: Cache::new(),
            waiting: HashMap::new(),
            waiting_for_pods: 0,
            moves: 0,
            rng: Rng::new(seed),
            preempting: HashMap::new(),
        }
    }

    fn stop_waiting(&mut self, key: &str) {
        if let Some(w) = self.waiting.remove(key) {
            if w.needs_pods {
                self.waiting_for_pods -= 1;
            }
        }
    }

    fn failed(&mut self, key: &str, needs_pods: bool) {
        let now = Instant::now();
        let moves = self.moves;
        let w = self.waiting.entry(key.to_string()).or_insert_with(|| Waiting {
            attempts: 0,
            seen: moves,
            backoff_until: now,
            retry_at: now,
            needs_pods: false,
        });
        let was = w.needs_pods;
        w.attempts = w.attempts.saturating_add(1);
        w.seen = moves;
        w.backoff_until = now + backoff(w.attempts);
        w.retry_at = now + PERIODIC_RETRY;
        w.needs_pods = needs_pods;
        match (was, needs_pods) {
            (false, true) => self.waiting_for_pods += 1,
            (true, false) => self.waiting_for_pods -= 1,
            _ => {}
        }
    }

    /// Waiting pods due another try; they are marked as tried.
    fn due(&mut self, now: Instant) -> Vec<Key> {
        let moves = self.moves;
        let mut keys = Vec::new();
        for (k, w) in self.waiting.iter_mut() {
            let moved = w.seen < moves && now >= w.backoff_until;
            if moved || now >= w.retry_at {
                w.seen = moves;
                w.retry_at = now + PERIODIC_RETRY;
                keys.push(k.clone());
            }
        }
        keys
    }
}

/// Whether this scheduler should place `pod`.
fn wants(pod: &Value) -> bool {
    let spec = pod.get("spec");
    let name = spec.and_then(|s| s.get("schedulerName")).and_then(Value::as_str).unwrap_or("");
    let phase = pod.get("status").and_then(|s| s.get("phase")).and_then(Value::as_str).unwrap_or("");
    (name.is_empty() || name == SCHEDULER_NAME)
        && node_name(pod).is_none()
        && !is_terminating(pod)
        && phase != "Succeeded"
        && phase != "Failed"
}

struct Scheduler {
    client: ApiClient,
    recorder: Recorder,
    pods: Arc<Informer>,
    nodes: Arc<Informer>,
    namespaces: Arc<Informer>,
    claims: Arc<Informer>,
    volumes: Arc<Informer>,
    classes: Arc<Informer>,
    budgets: Arc<Informer>,
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

enum Decision {
    Skip,
    Bind(String),
    Unschedulable(String),
    /// Evict `victims` (key, uid) on `node`, nominate it, and wait.
    Preempt {
        node: String,
        victims: Vec<(String, String)>,
        message: String,
    },
}

impl Scheduler {
    fn decide(&self, key: &str, info: &PodInfo, nominated: Option<&str>) -> Decision {
        let ns_labels = |ns: &str| self.namespaces.get(ns).map(|n| labels_of(&n)).unwrap_or_default();
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        if st.cache.is_assumed(key) {
            return Decision::Skip;
        }
        match algorithm::schedule(&mut st.cache, info, &ns_labels, &mut st.rng) {
            Ok(node) => {
                st.cache.assume(info, info.anti_affinity.clone(), &node);
                st.stop_waiting(key);
                st.preempting.remove(key);
                Decision::Bind(node)
            }
            Err(fit) => {
                st.failed(key, !info.affinity.is_empty());
                let victims_left = st.preempting.get(key).is_some_and(|(victims, at)| {
                    at.elapsed() < PREEMPTION_WAIT
                        && victims.iter().any(|(k, uid)| st.cache.pod(k).is_some_and(|r| r.uid == *uid))
                });
                if !victims_left {
                    st.preempting.remove(key);
                }
                if fit.resolvable > 0 && !victims_left && preemption::eligible(&st.cache, info, nominated) {
                    let pre = algorithm::PreState::compute(&st.cache, info, &ns_labels);
                    let budgets = self.budgets.list();
                    if let Some(c) = preemption::find(&st.cache, info, &pre, &budgets) {
                        let victims: Vec<(String, String)> = c
                            .victims
                            .iter()
                            .filter_map(|k| st.cache.pod(k).map(|r| (k.clone(), r.uid.clone())))
                            .collect();
                        // Upstream reports the filters' verdict; preemption succeeded.
                        let full = fit.message();
                        let message = full.split(" preemption:").next().unwrap_or(&full).to_string();
                        st.preempting.retain(|_, (_, at)| at.elapsed() < PREEMPTION_WAIT);
                        st.preempting.insert(key.to_string(), (victims.clone(), Instant::now()));
                        // As upstream's nominator: the decision counts at once, not when the
                        // informer shows the victims terminating and the nomination (a burst
                        // of preemptors would otherwise all pick the first node and its
                        // victims, and wait on each other).
                        for (k, _) in &victims {
                            st.cache.mark_evicting(k);
                        }
                        st.cache.nominate(key, Some((c.node.clone(), info.requests.clone(), info.priority)));
                        return Decision::Preempt { node: c.node, victims, message };
                    }
                }
                Decision::Unschedulable(fit.message())
            }
        }
    }

    /// Records `FailedScheduling` and sets `PodScheduled=False` (when it differs).
    async fn report_unschedulable(&self, pod: &Value, message: &str) {
        self.recorder.event(pod, "Warning", "FailedScheduling", message).await;
        let conditions: Vec<Value> = match pod.get("status").and_then(|s| s.get("conditions")) {
            Some(Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        };
        let old = conditions.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("PodScheduled"));
        let field = |c: Option<&Value>, f: &str| {
            c.and_then(|c| c.get(f)).and_then(Value::as_str).unwrap_or("").to_string()
        };
        if field(old, "status") == "False"
            && field(old, "reason") == "Unschedulable"
            && field(old, "message") == message
        {
            return;
        }
        let since = if field(old, "status") == "False" && !field(old, "lastTransitionTime").is_empty() {
            field(old, "lastTransitionTime")
        } else {
            let now = jiff::Timestamp::now();
            jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
        };
        let mut list: Vec<Value> = conditions
            .iter()
            .filter(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"))
            .cloned()
            .collect();
        list.push(json!({
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
            "lastProbeTime": null, "lastTransitionTime": since,
        }));
        let md = pod.get("metadata");
        let s = |k: &str| md.and_then(|m| m.get(k)).and_then(Value::as_str).unwrap_or("");
        let patch =
            json!({"metadata": {"resourceVersion": s("resourceVersion")}, "status": {"conditions": list}});
        let ns = s("namespace");
        if let Err(e) = self
            .client
            .patch(gvr::PODS, Some(ns), s("name"), "application/merge-patch+json", patch, Some("status"))
            .await
        {
            tracing::debug!(pod = %format!("{ns}/{}", s("name")), "failed to set PodScheduled: {e}");
        }
    }
}

impl Scheduler {
    /// Evicts the victims (DisruptionTarget condition, then graceful deletion of that
    /// incarnation) and nominates `node` for `pod`.
    async fn preempt(&self, pod: &Value, node: &str, victims: &[(String, String)]) {
        let now = jiff::Timestamp::now();
        let now = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string();
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
        for (key, vuid) in victims {
            let (ns, name) = split_key(key);
            let cond = capstan_api::disruption::disruption_target(
                "PreemptionByScheduler",
                &format!("{SCHEDULER_NAME}: preempting to accommodate a higher priority pod"),
                &now,
            );
            let patch = json!({"status": {"conditions": [cond]}});
            let ct = "application/strategic-merge-patch+json";
            if let Err(e) = self.client.patch(gvr::PODS, ns, name, ct, patch, Some("status")).await {
                tracing::debug!(pod = %key, "failed to mark preemption victim: {e}");
            }
            match self.client.delete_uid(gvr::PODS, ns, name, vuid, None).await {
                Ok(_) => {
                    if let Some(v) = self.pods.get(key) {
                        let msg = format!("Preempted by pod {uid} on node {node}");
                        self.recorder.event(&v, "Normal", "Preempted", &msg).await;
                    }
                }
                Err(e) => {
                    tracing::debug!(pod = %key, "failed to preempt: {e}");
                    lock(&self.state).cache.unmark_evicting(key);
                }
            }
        }
        let (ns, name) =
            (pod["metadata"]["namespace"].as_str(), pod["metadata"]["name"].as_str().unwrap_or(""));
        let patch = json!({"status": {"nominatedNodeName": node}});
        if let Err(e) = self
            .client
            .patch(gvr::PODS, ns, name, "application/merge-patch+json", patch, Some("status"))
            .await
        {
            tracing::debug!(pod = %name, "failed to nominate node {node}: {e}");
        }
    }

    /// VolumeBinding's PreBind: pre-binds the static volumes chosen on `node` and asks
    /// for the others to be provisioned there.
    async fn prebind(&self, f: &VolumeFilter, node: &str) -> Result<(), crate::ClientError> {
        let def = match self.nodes.get(node) {
            Some(n) => NodeDef::parse(&n),
            None => crate::volumes::named_node(node),
        };
        let Ok(plan) = f.plan(&def) else { return Ok(()) };
        for step in plan {
            match step {
                PreBind::Volume { pv, claim } => {
                    if crate::volumes::bound_to_claim(&pv, &claim) {
                        continue;
                    }
                    let mut pv = (*pv).clone();
                    pv["spec"]["claimRef"] = json!({
                        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "namespace": claim["metadata"]["namespace"], "name": claim["metadata"]["name"],
                        "uid": claim["metadata"]["uid"], "resourceVersion": claim["metadata"]["resourceVersion"],
                    });
                    if !pv["metadata"]["annotations"].is_object() {
                        pv["metadata"]["annotations"] = json!({});
                    }
                    pv["metadata"]["annotations"][crate::volumes::ANN_BOUND_BY_CONTROLLER] = json!("yes");
                    self.client.update(gvr::PERSISTENT_VOLUMES, None, pv).await?;
                }
                PreBind::SelectNode { claim } => {
                    if crate::volumes::annotation(&claim, crate::volumes::ANN_SELECTED_NODE) == node {
                        continue;
                    }
                    let ns = claim["metadata"]["namespace"].as_str().unwrap_or("");
                    let name = claim["metadata"]["name"].as_str().unwrap_or("");
                    let patch =
                        json!({"metadata": {"annotations": {crate::volumes::ANN_SELECTED_NODE: node}}});
                    self.client.merge_patch(gvr::PERSISTENT_VOLUME_CLAIMS, Some(ns), name, patch).await?;
                }
            }
        }
        Ok(())
    }
}

fn volume_claims_of(pod: &Value) -> Vec<crate::volumes::PodClaim> {
    crate::volumes::pod_claims(pod)
}

/// Upstream's `scheduler_schedule_attempts_total` and
/// `scheduler_scheduling_attempt_duration_seconds`, by result.
static ATTEMPTS: std::sync::LazyLock<(capstan_metrics::IntCounterVec, capstan_metrics::HistogramVec)> =
    std::sync::LazyLock::new(|| {
        (
            capstan_metrics::counters(
                "scheduler_schedule_attempts_total",
                "Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be scheduled, while 'error' means an internal scheduler problem.",
                &["result", "profile"],
            ),
            capstan_metrics::histograms(
                "scheduler_scheduling_attempt_duration_seconds",
                "Scheduling attempt latency in seconds (scheduling algorithm + binding)",
                &["result", "profile"],
                capstan_metrics::WORK_BUCKETS,
            ),
        )
    });

/// Counts a scheduling attempt that ended with `r` (`result` unless it failed).
fn attempted(
    started: std::time::Instant,
    r: Result<Action, ReconcileError>,
    result: &str,
) -> Result<Action, ReconcileError> {
    let result = if r.is_err() { "error" } else { result };
    ATTEMPTS.0.with_label_values(&[result, "default-scheduler"]).inc();
    ATTEMPTS.1.with_label_values(&[result, "default-scheduler"]).observe(started.elapsed().as_secs_f64());
    r
}

impl Reconciler for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn reconcile(self: Arc<Self>, key: Key) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            self.nodes.wait_synced().await;
            self.pods.wait_synced().await;
            let Some(pod) = self.pods.get(&key).filter(|p| wants(p)) else {
                lock(&self.state).stop_waiting(&key);
                return Ok(Action::Done);
            };
            let mut info = PodInfo::parse(&pod);
            if !volume_claims_of(&pod).is_empty() {
                self.claims.wait_synced().await;
                self.volumes.wait_synced().await;
                self.classes.wait_synced().await;
                match VolumeFilter::prepare(&pod, &self.claims, &self.volumes, &self.classes) {
                    Ok(f) => info.volumes = f.map(Arc::new),
                    Err(why) => {
                        let n = {
                            let mut st = lock(&self.state);
                            st.failed(&key, false);
                            st.cache.order().len()
                        };
                        let message = format!(
                            "0/{n} nodes are available: {why}. preemption: 0/{n} nodes are available: {n} Preemption is not helpful for scheduling."
                        );
                        tracing::debug!(pod = %key, "unschedulable: {message}");
                        self.report_unschedulable(&pod, &message).await;
                        return attempted(started, Ok(Action::Done), "unschedulable");
                    }
                }
            }
            let nominated = pod["status"]["nominatedNodeName"].as_str().filter(|n| !n.is_empty());
            match self.decide(&key, &info, nominated) {
                Decision::Skip => Ok(Action::Done),
                Decision::Preempt { node, victims, message } => {
                    tracing::debug!(pod = %key, node = %node, victims = victims.len(), "preempting");
                    self.report_unschedulable(&pod, &message).await;
                    self.preempt(&pod, &node, &victims).await;
                    Ok(Action::Done)
                }
                Decision::Unschedulable(message) => {
                    tracing::debug!(pod = %key, "unschedulable: {message}");
                    self.report_unschedulable(&pod, &message).await;
                    attempted(started, Ok(Action::Done), "unschedulable")
                }
                Decision::Bind(node) => {
                    let (ns, name) = split_key(&key);
                    if let Some(f) = &info.volumes {
                        if let Err(e) = self.prebind(f, &node).await {
                            lock(&self.state).cache.forget(&key);
                            let e = ReconcileError(format!(
                                "failed to bind volumes of pod {key} on node {node}: {e}"
                            ));
                            return attempted(started, Err(e), "error");
                        }
                    }
                    let bound = match self.client.bind(ns.unwrap_or(""), name, &node).await {
                        Ok(_) => Ok(Action::Done),
                        Err(e) => {
                            lock(&self.state).cache.forget(&key);
                            if e.is_not_found() || matches!(e, crate::ClientError::Api { code: 409, .. }) {
                                // Gone, or bound by someone else: the informer tells the rest.
                                Ok(Action::Done)
                            } else {
                                Err(ReconcileError(format!("failed to bind pod {key} to node {node}: {e}")))
                            }
                        }
                    };
                    attempted(started, bound, "scheduled")
                }
            }
        })
    }
}

fn labels_or_spec_changed(old: &Value, new: &Value) -> bool {
    old.get("spec") != new.get("spec") || labels_of(old) != labels_of(new)
}

/// Starts the scheduler actor. Must run inside an actix system.
pub fn start(client: ApiClient, informers: Arc<Informers>, recorder: Recorder) {
    let pods = informers.get(gvr::PODS);
    let nodes = informers.get(gvr::NODES);
    let namespaces = informers.get(gvr::NAMESPACES);
    let claims = informers.get(gvr::PERSISTENT_VOLUME_CLAIMS);
    let volumes = informers.get(gvr::PERSISTENT_VOLUMES);
    let classes = informers.get(gvr::STORAGE_CLASSES);
    let budgets = informers.get(crate::controllers::disruption::PODDISRUPTIONBUDGETS);
    let seed = uuid::Uuid::new_v4().as_u64_pair().0;
    let state = Arc::new(Mutex::new(State::new(seed)));
    let sched = Arc::new(Scheduler {
        client,
        recorder,
        pods: pods.clone(),
        nodes: nodes.clone(),
        namespaces,
        claims: claims.clone(),
        volumes: volumes.clone(),
        classes: classes.clone(),
        budgets,
        state: state.clone(),
    });
    // A claim, volume or class appearing or changing may make a waiting pod schedulable.
    for inf in [&claims, &volumes, &classes] {
        let st = state.clone();
        inf.on_change(Arc::new(move |_: &Change| lock(&st).moves += 1));
    }
    let addr = Controller::new(sched, MAX_BINDS_IN_FLIGHT).start();

    let st = state.clone();
    nodes.on_change(Arc::new(move |c: &Change| {
        let mut s = lock(&st);
        match c {
            Change::Applied { new, .. } => {
                if s.cache.set_node(NodeDef::parse(new)) {
                    s.moves += 1;
                }
            }
            Change::Deleted(old) => s.cache.remove_node(&key_of(old)),
        }
    }));

    let st = state.clone();
    let a = addr.clone();
    pods.on_change(Arc::new(move |c: &Change| {
        let mut enqueue = None;
        {
            let mut s = lock(&st);
            match c {
                Change::Applied { old, new } => {
                    let key = key_of(new);
                    let nominated = new["status"]["nominatedNodeName"]
                        .as_str()
                        .filter(|n| !n.is_empty() && wants(new))
                        .map(|n| {
                            let p = PodInfo::parse(new);
                            (n.to_string(), p.requests, p.priority)
                        });
                    // A nomination this scheduler just made stays until the pod shows it
                    // (its own earlier status writes do not carry it yet).
                    if nominated.is_some() || !wants(new) || !s.preempting.contains_key(&key) {
                        s.cache.nominate(&key, nominated);
                    }
                    match s.cache.observe_pod(&key, new) {
                        PodEffect::Freed => s.moves += 1,
                        PodEffect::Added if s.waiting_for_pods > 0 => s.moves += 1,
                        _ => {}
                    }
                    if !wants(new) {
                        s.stop_waiting(&key);
                    } else if let Some(w) = s.waiting.get_mut(&key) {
                        // Waiting already: only a change of its own spec or labels may help
                        // (its status changes are this scheduler's own reports).
                        if old.as_ref().is_none_or(|o| labels_or_spec_changed(o, new)) {
                            w.seen = 0;
                            w.backoff_until = Instant::now();
                        }
                    } else {
                        enqueue = Some(key);
                    }
                }
                Change::Deleted(old) => {
                    let key = key_of(old);
                    s.cache.nominate(&key, None);
                    if s.cache.delete_pod(&key) {
                        s.moves += 1;
                    }
                    s.stop_waiting(&key);
                }
            }
        }
        if let Some(k) = enqueue {
            a.do_send(Enqueue(k));
        }
    }));

    actix::spawn(async move {
        let mut tick = tokio::time::interval(RETRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !addr.connected() {
                return;
            }
            let due = lock(&state).due(Instant::now());
            if !due.is_empty() {
                addr.do_send(EnqueueAll(due));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_pods() {
        assert!(wants(&json!({"metadata": {"name": "p"}, "spec": {}})));
        assert!(wants(&json!({"spec": {"schedulerName": "default-scheduler"}})));
        assert!(!wants(&json!({"spec": {"schedulerName": "other"}})));
        assert!(!wants(&json!({"spec": {"nodeName": "n1"}})));
        assert!(!wants(&json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}, "spec": {}})));
        assert!(!wants(&json!({"spec": {}, "status": {"phase": "Failed"}})));
    }

    #[test]
    fn waiting_pods_back_off_and_retry_on_changes() {
        let mut s = State::new(1);
        let t0 = Instant::now();
        s.failed("d/p", false);
        assert_eq!(s.waiting.get("d/p").map(|w| w.attempts), Some(1));
        // Nothing changed: not due before the periodic retry.
        assert!(s.due(t0).is_empty());
        assert_eq!(s.due(t0 + PERIODIC_RETRY + Duration::from_millis(1)), vec!["d/p".to_string()]);
        // A change after the back-off makes it due at once, and only once.
        s.failed("d/p", false);
        s.moves += 1;
        assert!(s.due(Instant::now()).is_empty(), "still backing off");
        let later = Instant::now() + backoff(2) + Duration::from_millis(1);
        assert_eq!(s.due(later).len(), 1);
        assert!(s.due(later).is_empty());
        s.failed("d/q", true);
        assert_eq!(s.waiting_for_pods, 1);
        s.stop_waiting("d/q");
        assert_eq!(s.waiting_for_pods, 0);
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
