//! Simulated nodes for scale tests: N Node objects with Leases, driven by one actor.
//!
//! Every simulated node registers (creates its Node, or adopts an existing one), renews its
//! Lease in `kube-node-lease` every renew period (10 s, as the kubelet: a quarter of the
//! 40 s lease) and posts its Ready heartbeat every 60 s. Pods bound to a simulated node
//! are marked Running and Ready at once (a fake pod IP from the node's /24), run-to-
//! completion pods complete, and deleted pods finish their graceful deletion as a kubelet
//! would. Nothing runs.
//!
//! The cost is what a scale test can afford: one [`SimNodes`] actor ticks once a second
//! for every node (no task per node), renewals are spread over the period in batches,
//! writes run in parallel under a concurrency cap, and there are three informers in all
//! (nodes, pods, persistent volumes). Pod work goes through a keyed [`Controller`]
//! ([`pods::SimPods`]).
//!
//! Volumes: a simulated node advertises a local-path root, so claims of the default class
//! are provisioned and bound for pods placed on it; its pods run whatever their volumes
//! (they are taken as present). A local-path volume of one of its nodes that is Released
//! with reclaim `Delete` is deleted, as a real node agent does after removing its
//! directory.
//!
//! For tests, a node with the annotation `capstan.io/sim-stop-heartbeat: "true"` stops
//! renewing its lease and posting status and leaves its pods alone, as an unreachable
//! node would; removing the annotation brings it back.
//!
//! `CAPSTAN_NODE_GRACE_SECONDS` (read once at start, as the node lifecycle controller
//! does) shortens the renew period to a quarter of the grace period, so a short grace
//! period in tests does not make healthy nodes look dead.

pub mod objects;
pub mod pods;

pub use crate::nodeobjects::LEASE_NAMESPACE;
pub use objects::STOP_HEARTBEAT_ANNOTATION;
pub use pods::COMPLETE_AFTER_ANNOTATION;

use crate::client::{gvr, ApiClient, ClientError};
use crate::informer::{key_of, Change, Informer, Informers, Key};
use crate::nodeobjects;
use crate::runtime::{Controller, Enqueue, EnqueueAll};
use actix::prelude::*;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Settings of the simulated nodes.
#[derive(Debug, Clone)]
pub struct Config {
    /// How many nodes.
    pub count: usize,
    /// Node name prefix (`sim-` gives `sim-0`, `sim-1`...).
    pub prefix: String,
}

/// How often the actor looks at its nodes.
const TICK: Duration = Duration::from_secs(1);
/// Default lease renew period (kubelet: 0.25 × 40 s).
const RENEW_SECONDS: u64 = 10;
/// How often a node posts its Ready heartbeat (node status) when nothing changes.
const HEARTBEAT_SECONDS: u64 = 60;
/// API writes in flight at once.
const MAX_IN_FLIGHT: usize = 64;
/// Pod reconciles in flight at once.
const POD_CONCURRENCY: usize = 64;

/// The renew period for a node grace period given in `CAPSTAN_NODE_GRACE_SECONDS`: a
/// quarter of it, between 1 and 10 seconds.
fn renew_ticks(grace_env: Option<&str>) -> u64 {
    let grace = grace_env.and_then(|s| s.trim().parse::<u64>().ok()).filter(|g| *g > 0);
    match grace {
        Some(g) => (g / 4).clamp(1, RENEW_SECONDS),
        None => RENEW_SECONDS,
    }
}

/// State shared by the node actor, the informer handlers and the pod reconciler.
pub struct Shared {
    prefix: String,
    count: usize,
    live: Vec<AtomicBool>,
    addresses: Mutex<pods::Addresses>,
    pods_by_node: Mutex<HashMap<usize, HashSet<Key>>>,
}

impl Shared {
    fn new(config: &Config) -> Shared {
        Shared {
            prefix: config.prefix.clone(),
            count: config.count,
            live: (0..config.count).map(|_| AtomicBool::new(true)).collect(),
            addresses: Mutex::new(pods::Addresses::default()),
            pods_by_node: Mutex::new(HashMap::new()),
        }
    }

    /// The index of node `name`, if it is one of ours.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        let rest = name.strip_prefix(self.prefix.as_str())?;
        let i: usize = rest.parse().ok()?;
        (i < self.count && i.to_string() == rest).then_some(i)
    }

    fn name_of(&self, i: usize) -> String {
        format!("{}{i}", self.prefix)
    }

    /// Whether node `i` is heartbeating (not stopped by annotation, not deleted).
    pub fn is_live(&self, i: usize) -> bool {
        self.live.get(i).is_some_and(|l| l.load(Ordering::Relaxed))
    }

    fn set_live(&self, i: usize, live: bool) {
        if let Some(l) = self.live.get(i) {
            l.store(live, Ordering::Relaxed);
        }
    }

    fn assign_ip(&self, i: usize, key: &str, uid: &str, current: Option<&str>) -> Option<String> {
        self.addresses.lock().unwrap_or_else(|e| e.into_inner()).assign(i, key, uid, current)
    }

    /// Keeps the per-node pod index and the address book current (informer handler).
    fn pod_changed(&self, change: &Change) -> Option<Key> {
        let obj = change.object();
        let node = obj.get("spec").and_then(|s| s.get("nodeName")).and_then(Value::as_str)?;
        let i = self.index_of(node)?;
        let key = key_of(obj);
        let uid = obj.get("metadata").and_then(|m| m.get("uid")).and_then(Value::as_str).unwrap_or("");
        let status = obj.get("status");
        let phase = status.and_then(|s| s.get("phase")).and_then(Value::as_str).unwrap_or("");
        let terminal = phase == "Succeeded" || phase == "Failed";
        match change {
            Change::Deleted(_) => {
                self.pods_by_node
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(i)
                    .or_default()
                    .remove(&key);
                self.addresses.lock().unwrap_or_else(|e| e.into_inner()).release(i, &key, uid);
                None
            }
            Change::Applied { .. } => {
                self.pods_by_node
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(i)
                    .or_default()
                    .insert(key.clone());
                let mut addrs = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
                if terminal {
                    // A finished pod's sandbox is gone; its address may be reused.
                    addrs.release(i, &key, uid);
                } else if let Some(ip) = status.and_then(|s| s.get("podIP")).and_then(Value::as_str) {
                    addrs.note(i, ip, &key, uid);
                }
                Some(key)
            }
        }
    }

    fn pods_of(&self, i: usize) -> Vec<Key> {
        self.pods_by_node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&i)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What one node knows about itself.
#[derive(Debug, Default, Clone)]
struct NodeState {
    registered: bool,
    deleted: bool,
    stopped: bool,
    busy: bool,
    repair: bool,
    /// Whether the node as last seen shows our healthy conditions (None: not seen since
    /// our last full status write).
    healthy: Option<bool>,
    renew_now: bool,
    uid: Option<String>,
}

/// The work for one node in one batch.
#[derive(Debug, Clone, Copy, Default)]
struct Work {
    i: usize,
    register: bool,
    full_status: bool,
    heartbeat: bool,
    renew: bool,
}

/// What came of one node's work.
#[derive(Debug)]
struct Outcome {
    i: usize,
    /// Registered with this Node uid.
    registered: Option<String>,
    /// The node object is gone.
    gone: bool,
    /// A write failed (retried at once next tick).
    failed: bool,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Begin;

#[derive(Message)]
#[rtype(result = "()")]
struct WorkDone(Outcome);

/// What the node informer saw about one of our nodes.
#[derive(Message)]
#[rtype(result = "()")]
struct NodeSeen {
    i: usize,
    stopped: bool,
    healthy: bool,
    uid: Option<String>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct NodeGone {
    i: usize,
}

/// The actor driving every simulated node.
pub struct SimNodes {
    client: ApiClient,
    nodes: Arc<Informer>,
    pods: Arc<Informer>,
    shared: Arc<Shared>,
    pod_controller: Addr<Controller<pods::SimPods>>,
    state: Vec<NodeState>,
    tick: u64,
    began: bool,
    renew_ticks: u64,
    heartbeat_ticks: u64,
    writes: Arc<tokio::sync::Semaphore>,
}

impl SimNodes {
    fn spawn_batch(&mut self, work: Vec<Work>, ctx: &mut Context<Self>) {
        if work.is_empty() {
            return;
        }
        for w in &work {
            if let Some(st) = self.state.get_mut(w.i) {
                st.busy = true;
                if w.full_status {
                    st.repair = false;
                    st.healthy = None;
                }
                if w.renew {
                    st.renew_now = false;
                }
            }
        }
        let uids: Vec<Option<String>> =
            work.iter().map(|w| self.state.get(w.i).and_then(|s| s.uid.clone())).collect();
        let runner =
            Runner { client: self.client.clone(), nodes: self.nodes.clone(), shared: self.shared.clone() };
        let sem = self.writes.clone();
        let addr = ctx.address();
        actix::spawn(async move {
            // Each node's outcome is reported as soon as it is known, so a node is busy
            // only while its own writes are in flight.
            futures::stream::iter(work.into_iter().zip(uids))
                .for_each_concurrent(MAX_IN_FLIGHT, |(w, uid)| {
                    let runner = runner.clone();
                    let sem = sem.clone();
                    let addr = addr.clone();
                    async move {
                        let _permit = sem.acquire_owned().await.ok();
                        addr.do_send(WorkDone(runner.run(w, uid).await));
                    }
                })
                .await;
        });
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        if !self.began {
            return;
        }
        self.tick = self.tick.wrapping_add(1);
        let mut work = Vec::new();
        for (i, st) in self.state.iter().enumerate() {
            if st.busy || st.deleted || st.stopped {
                continue;
            }
            let slot = i as u64;
            let w = Work {
                i,
                register: !st.registered,
                full_status: st.registered && (st.repair || st.healthy == Some(false)),
                heartbeat: slot % self.heartbeat_ticks == self.tick % self.heartbeat_ticks,
                renew: st.renew_now || slot % self.renew_ticks == self.tick % self.renew_ticks,
            };
            if w.register || w.full_status || w.heartbeat || w.renew {
                work.push(w);
            }
        }
        self.spawn_batch(work, ctx);
    }
}

impl Actor for SimNodes {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(TICK, |act, ctx| act.on_tick(ctx));
        let nodes = self.nodes.clone();
        let pods = self.pods.clone();
        let addr = ctx.address();
        actix::spawn(async move {
            nodes.wait_synced().await;
            pods.wait_synced().await;
            addr.do_send(Begin);
        });
    }
}

impl Handler<Begin> for SimNodes {
    type Result = ();
    fn handle(&mut self, _: Begin, ctx: &mut Context<Self>) {
        self.began = true;
        // Register (or adopt) everything at once; stopped nodes keep quiet.
        let work: Vec<Work> = (0..self.state.len())
            .filter(|i| self.state.get(*i).is_some_and(|s| !s.busy && !s.deleted && !s.stopped))
            .map(|i| Work { i, register: true, ..Work::default() })
            .collect();
        tracing::info!(nodes = work.len(), "registering simulated nodes");
        self.spawn_batch(work, ctx);
    }
}

impl Handler<WorkDone> for SimNodes {
    type Result = ();
    fn handle(&mut self, msg: WorkDone, _: &mut Context<Self>) {
        let o = msg.0;
        let Some(st) = self.state.get_mut(o.i) else { return };
        st.busy = false;
        if let Some(uid) = o.registered {
            st.registered = true;
            st.uid = Some(uid);
        }
        if o.gone {
            st.deleted = true;
            st.registered = false;
        }
        if o.failed {
            // Try the lease and the full status again on the next tick.
            st.renew_now = true;
            st.repair = st.registered;
        }
    }
}

impl Handler<NodeSeen> for SimNodes {
    type Result = ();
    fn handle(&mut self, msg: NodeSeen, _: &mut Context<Self>) {
        let Some(st) = self.state.get_mut(msg.i) else { return };
        let resumed = st.stopped && !msg.stopped;
        if st.deleted {
            // Someone created the node again: take it over.
            st.deleted = false;
            st.registered = false;
        }
        st.stopped = msg.stopped;
        st.healthy = Some(msg.healthy);
        if msg.uid.is_some() {
            st.uid = msg.uid;
        }
        if resumed {
            tracing::info!(node = %self.shared.name_of(msg.i), "simulated node resumes heartbeats");
            st.renew_now = true;
            st.repair = st.registered;
            self.pod_controller.do_send(EnqueueAll(self.shared.pods_of(msg.i)));
        }
        // A node seen unhealthy while live (the node lifecycle controller marked it
        // Unknown) posts its full status at the next tick, as a kubelet does at its next
        // sync: see `healthy` in `on_tick`.
    }
}

impl Handler<NodeGone> for SimNodes {
    type Result = ();
    fn handle(&mut self, msg: NodeGone, _: &mut Context<Self>) {
        if let Some(st) = self.state.get_mut(msg.i) {
            // As a kubelet, a deleted node is not registered again until restart.
            tracing::info!(node = %self.shared.name_of(msg.i), "simulated node was deleted");
            st.deleted = true;
            st.registered = false;
        }
    }
}

/// Carries out one node's work (runs outside the actor).
#[derive(Clone)]
struct Runner {
    client: ApiClient,
    nodes: Arc<Informer>,
    shared: Arc<Shared>,
}

impl Runner {
    async fn run(&self, w: Work, uid: Option<String>) -> Outcome {
        let mut out = Outcome { i: w.i, registered: None, gone: false, failed: false };
        let name = self.shared.name_of(w.i);
        let now = jiff::Timestamp::now();
        let mut uid = uid;
        if w.register {
            match self.register(w.i, &name, now).await {
                Ok(u) => {
                    uid = Some(u.clone());
                    out.registered = Some(u);
                }
                Err(e) => {
                    tracing::debug!(node = %name, "failed to register simulated node: {e}");
                    out.failed = true;
                    return out;
                }
            }
        } else if w.full_status || w.heartbeat {
            let cached = self.nodes.get(&name);
            let status = if w.full_status {
                objects::node_status(w.i, &name, &nodeobjects::time(now), cached.as_deref())
            } else {
                json!({"conditions": nodeobjects::conditions(&nodeobjects::time(now), cached.as_deref())})
            };
            match self.patch_status(&name, status).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {
                    out.gone = true;
                    return out;
                }
                Err(e) => {
                    tracing::debug!(node = %name, "failed to post simulated node status: {e}");
                    out.failed = true;
                }
            }
        }
        if w.renew || w.register {
            if let Err(e) = self.renew(&name, uid.as_deref(), now).await {
                tracing::debug!(node = %name, "failed to renew simulated node lease: {e}");
                out.failed = true;
            }
        }
        out
    }

    async fn patch_status(&self, name: &str, status: Value) -> Result<(), ClientError> {
        self.client
            .patch(
                gvr::NODES,
                None,
                name,
                "application/merge-patch+json",
                json!({"status": status}),
                Some("status"),
            )
            .await
            .map(|_| ())
    }

    /// Creates the Node, or adopts an existing one; returns its uid.
    async fn register(&self, i: usize, name: &str, now: jiff::Timestamp) -> Result<String, ClientError> {
        let uid_of = |v: &Value| {
            v.get("metadata").and_then(|m| m.get("uid")).and_then(Value::as_str).unwrap_or("").to_string()
        };
        let now_s = nodeobjects::time(now);
        match self.client.create(gvr::NODES, None, objects::node_object(i, name, &now_s)).await {
            Ok(created) => return Ok(uid_of(&created)),
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e),
        }
        let adopted = self.client.merge_patch(gvr::NODES, None, name, objects::adopt_patch(i, name)).await?;
        if !objects::heartbeat_stopped(&adopted) {
            self.patch_status(name, objects::node_status(i, name, &now_s, Some(&adopted))).await?;
        }
        Ok(uid_of(&adopted))
    }

    async fn renew(
        &self,
        name: &str,
        node_uid: Option<&str>,
        now: jiff::Timestamp,
    ) -> Result<(), ClientError> {
        let renew = nodeobjects::micro_time(now);
        let ns = Some(LEASE_NAMESPACE);
        match self.client.merge_patch(gvr::LEASES, ns, name, nodeobjects::lease_renewal(name, &renew)).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => {
                match self
                    .client
                    .create(gvr::LEASES, ns, nodeobjects::lease_object(name, node_uid, &renew))
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if e.is_already_exists() => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// Starts `config.count` simulated nodes. Must run inside an actix system.
pub fn start(client: ApiClient, informers: Arc<Informers>, config: Config) {
    let renew = renew_ticks(std::env::var("CAPSTAN_NODE_GRACE_SECONDS").ok().as_deref());
    let shared = Arc::new(Shared::new(&config));
    let nodes = informers.get(gvr::NODES);
    let pods = informers.get(gvr::PODS);
    let pod_controller = Controller::new(
        Arc::new(pods::SimPods { client: client.clone(), pods: pods.clone(), shared: shared.clone() }),
        POD_CONCURRENCY,
    )
    .start();
    let volume_client = client.clone();
    let actor = SimNodes {
        client,
        nodes: nodes.clone(),
        pods: pods.clone(),
        shared: shared.clone(),
        pod_controller: pod_controller.clone(),
        state: vec![NodeState::default(); config.count],
        tick: 0,
        began: false,
        renew_ticks: renew,
        heartbeat_ticks: HEARTBEAT_SECONDS,
        writes: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
    }
    .start();
    let sh = shared.clone();
    nodes.on_change(Arc::new(move |c: &Change| {
        let obj = c.object();
        let name = obj.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("");
        let Some(i) = sh.index_of(name) else { return };
        match c {
            Change::Applied { new, .. } => {
                let stopped = objects::heartbeat_stopped(new);
                sh.set_live(i, !stopped);
                let uid = new
                    .get("metadata")
                    .and_then(|m| m.get("uid"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                actor.do_send(NodeSeen { i, stopped, healthy: nodeobjects::conditions_healthy(new), uid });
            }
            Change::Deleted(_) => {
                sh.set_live(i, false);
                actor.do_send(NodeGone { i });
            }
        }
    }));
    tokio::spawn(report_usage(volume_client.bus().clone(), shared.clone(), pods.clone()));
    let sh = shared.clone();
    pods.on_change(Arc::new(move |c: &Change| {
        if let Some(key) = sh.pod_changed(c) {
            pod_controller.do_send(Enqueue(key));
        }
    }));
    let volumes = informers.get(gvr::PERSISTENT_VOLUMES);
    volumes.on_change(Arc::new(move |c: &Change| {
        let Change::Applied { new, .. } = c else { return };
        use crate::volumes as v;
        let ours = v::local_node(new).and_then(|n| shared.index_of(n)).is_some();
        if ours
            && !v::is_deleting(new)
            && v::annotation(new, v::ANN_PROVISIONED_BY) == v::LOCAL_PATH_PROVISIONER
            && v::phase(new) == "Released"
            && v::reclaim_policy(new) == "Delete"
        {
            let (client, name) = (volume_client.clone(), v::key(new));
            tokio::spawn(async move {
                match client.delete(gvr::PERSISTENT_VOLUMES, None, &name, None).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => tracing::warn!(volume = %name, "failed to delete a released volume: {e}"),
                }
            });
        }
    }));
}

/// How often the simulated nodes report their synthetic usage.
const USAGE_EVERY: Duration = Duration::from_secs(15);

/// Synthetic usage of one running pod: each container at half its CPU request (10m
/// without one) and at its memory request (16Mi without one).
pub fn synthetic_usage(pod: &Value) -> Vec<capstan_bus::usage::ContainerUsage> {
    use capstan_api::quantity::{parse_milli, parse_value};
    pod["spec"]["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|c| {
            let req = &c["resources"]["requests"];
            let cpu_milli = req["cpu"].as_str().and_then(parse_milli).unwrap_or(20).max(0) as u64;
            let mem = req["memory"].as_str().and_then(parse_value).unwrap_or(16 << 20).max(0) as u64;
            capstan_bus::usage::ContainerUsage {
                name: c["name"].as_str().unwrap_or("").to_string(),
                usage: capstan_bus::usage::Usage { cpu_nanocores: cpu_milli * 500_000, memory_bytes: mem },
            }
        })
        .collect()
}

/// Publishes every live node's synthetic usage report every [`USAGE_EVERY`]: its running
/// pods as [`synthetic_usage`] says, the node at their sum plus 100m and 256Mi.
async fn report_usage(
    bus: Arc<dyn capstan_bus::Bus>,
    shared: Arc<Shared>,
    pods: Arc<crate::informer::Informer>,
) {
    use capstan_bus::usage::{node_usage, PodUsage, Usage, UsageReport};
    let mut tick = tokio::time::interval(USAGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = jiff::Timestamp::now();
        let timestamp = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string();
        for i in (0..shared.count).filter(|i| shared.is_live(*i)) {
            let mut report = UsageReport {
                node: shared.name_of(i),
                timestamp: timestamp.clone(),
                window_millis: USAGE_EVERY.as_millis() as u64,
                node_usage: Usage { cpu_nanocores: 100_000_000, memory_bytes: 256 << 20 },
                pods: Vec::new(),
            };
            for key in shared.pods_of(i) {
                let Some(p) = pods.get(&key) else { continue };
                if p["status"]["phase"] != "Running" {
                    continue;
                }
                let containers = synthetic_usage(&p);
                for c in &containers {
                    report.node_usage.cpu_nanocores += c.usage.cpu_nanocores;
                    report.node_usage.memory_bytes += c.usage.memory_bytes;
                }
                report.pods.push(PodUsage {
                    namespace: p["metadata"]["namespace"].as_str().unwrap_or("").to_string(),
                    name: p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    uid: p["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                    containers,
                });
            }
            match report.encode() {
                Ok(payload) => {
                    if let Err(e) = bus.publish(node_usage(&report.node), payload).await {
                        tracing::debug!(node = report.node, "failed to publish a usage report: {e}");
                    }
                }
                Err(e) => tracing::warn!("failed to encode a usage report: {e}"),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deep-merges `extra` into `base` (test helper).
    pub(crate) fn merge(base: &mut Value, extra: Value) {
        match (base, extra) {
            (Value::Object(b), Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    #[test]
    fn names_and_indices() {
        let s = Shared::new(&Config { count: 3, prefix: "sim-".into() });
        assert_eq!(s.index_of("sim-2"), Some(2));
        assert_eq!(s.index_of("sim-3"), None);
        assert_eq!(s.index_of("sim-02"), None);
        assert_eq!(s.index_of("node-1"), None);
        assert_eq!(s.name_of(1), "sim-1");
    }

    #[test]
    fn renew_period_follows_grace() {
        assert_eq!(renew_ticks(None), 10);
        assert_eq!(renew_ticks(Some("40")), 10);
        assert_eq!(renew_ticks(Some("4")), 1);
        assert_eq!(renew_ticks(Some("12")), 3);
        assert_eq!(renew_ticks(Some("x")), 10);
    }

    #[test]
    fn pod_index_and_addresses() {
        let s = Shared::new(&Config { count: 3, prefix: "sim-".into() });
        let pod = Arc::new(json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"nodeName": "sim-1"}, "status": {"podIP": "10.128.1.9"}}));
        assert_eq!(s.pod_changed(&Change::Applied { old: None, new: pod.clone() }), Some("ns/p".into()));
        assert_eq!(s.pods_of(1), vec!["ns/p".to_string()]);
        assert_eq!(s.assign_ip(1, "ns/p", "u", None).as_deref(), Some("10.128.1.9"));
        assert_eq!(s.pod_changed(&Change::Deleted(pod)), None);
        assert!(s.pods_of(1).is_empty());
        let other =
            Arc::new(json!({"metadata": {"name": "q", "namespace": "ns"}, "spec": {"nodeName": "real"}}));
        assert_eq!(s.pod_changed(&Change::Applied { old: None, new: other }), None);
    }
}
