//! Node pressure and eviction, as upstream's kubelet eviction manager (`pkg/kubelet/eviction`):
//! every monitoring period the agent observes its signals — `memory.available`
//! (MemAvailable of /proc/meminfo), `nodefs.available` (the filesystem of the node's data
//! directory), `imagefs.available` (that of the image store) and `pid.available` (the
//! smaller of `kernel.pid_max` and `kernel.threads-max`, less the tasks running, as
//! upstream's `pidlimit`) — and compares them with the thresholds:
//!
//! - a signal below its **hard** threshold (`evictionHard`) or its **soft** threshold
//!   (`evictionSoft`) sets the Node's MemoryPressure, DiskPressure or PIDPressure condition
//!   (at once, as upstream: the conditions follow the observed thresholds);
//! - a hard threshold crossed evicts one pod per period at once (no grace period); a soft
//!   threshold evicts only once it has been crossed for its `evictionSoftGracePeriod`
//!   without a break, and then gives the pod `min(terminationGracePeriodSeconds,
//!   evictionMaxPodGracePeriod)` seconds to stop (upstream's default maximum 0: at once).
//!
//! An evicted pod is reported `Failed` with reason `Evicted`, upstream's message and a
//! Warning Event `Evicted`. Pods are ranked as upstream: BestEffort first, then Burstable,
//! then Guaranteed; within a class the lower priority first, then, for memory, the larger
//! memory usage (the pod's cgroup) first. Critical pods (priority of a system class) are
//! never evicted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_actors::informer::Informer;
use serde_json::Value;

/// What is under pressure.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    /// `memory.available` is below its threshold.
    pub memory: bool,
    /// `nodefs.available` or `imagefs.available` is below its threshold.
    pub disk: bool,
    /// `pid.available` is below its threshold.
    pub pid: bool,
}

/// An eviction signal (upstream's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    /// `memory.available`.
    MemoryAvailable,
    /// `nodefs.available`.
    NodefsAvailable,
    /// `imagefs.available`.
    ImagefsAvailable,
    /// `pid.available`.
    PidAvailable,
}

impl Signal {
    /// Every signal this agent observes.
    pub const ALL: [Signal; 4] =
        [Signal::MemoryAvailable, Signal::NodefsAvailable, Signal::ImagefsAvailable, Signal::PidAvailable];

    /// The signal named `name` (`memory.available`, ...).
    pub fn parse(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Upstream's name.
    pub fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodefsAvailable => "nodefs.available",
            Signal::ImagefsAvailable => "imagefs.available",
            Signal::PidAvailable => "pid.available",
        }
    }

    /// The resource upstream names in the eviction message.
    fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodefsAvailable | Signal::ImagefsAvailable => "ephemeral-storage",
            Signal::PidAvailable => "pids",
        }
    }

    /// The signal's quantity as upstream prints it (`Ki` for bytes, a count for pids).
    fn quantity(self, n: u64) -> String {
        match self {
            Signal::PidAvailable => n.to_string(),
            _ => ki(n),
        }
    }
}

/// A threshold: an absolute quantity (bytes; a count for `pid.available`), or a percentage
/// of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Bytes (or a count).
    Bytes(u64),
    /// Percent of capacity.
    Percent(f64),
}

impl Threshold {
    /// Parses `100Mi` or `10%`.
    pub fn parse(s: &str) -> Option<Threshold> {
        match s.trim().strip_suffix('%') {
            Some(p) => {
                p.trim().parse::<f64>().ok().filter(|p| (0.0..=100.0).contains(p)).map(Threshold::Percent)
            }
            None => capstan_api::quantity::parse_value(s)
                .and_then(|v| u64::try_from(v).ok())
                .map(Threshold::Bytes),
        }
    }

    /// The threshold in bytes for a resource of `capacity`.
    pub fn bytes(&self, capacity: u64) -> u64 {
        match self {
            Threshold::Bytes(b) => *b,
            Threshold::Percent(p) => (capacity as f64 * p / 100.0) as u64,
        }
    }
}

/// A soft threshold: evicts once crossed for `grace` without a break.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Soft {
    /// The threshold.
    pub threshold: Threshold,
    /// How long it must stay crossed (`evictionSoftGracePeriod`).
    pub grace: Duration,
}

/// Eviction settings (upstream's `evictionHard` defaults, `evictionSoft`,
/// `evictionSoftGracePeriod`, `evictionMaxPodGracePeriod`, housekeeping period).
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionConfig {
    /// `memory.available` (default `100Mi`).
    pub memory_available: Option<Threshold>,
    /// `nodefs.available` (upstream's default `10%`; off by default here, see [`EvictionConfig::default`]).
    pub nodefs_available: Option<Threshold>,
    /// `imagefs.available` (upstream's default `15%`; off by default here).
    pub imagefs_available: Option<Threshold>,
    /// `pid.available` (off by default, as upstream on Linux).
    pub pid_available: Option<Threshold>,
    /// Soft thresholds by signal (none by default).
    pub soft: BTreeMap<Signal, Soft>,
    /// The longest grace period a pod evicted for a soft threshold gets
    /// (`evictionMaxPodGracePeriod`, default 0 as upstream).
    pub max_pod_grace_period: Duration,
    /// How often signals are measured (default 10 s).
    pub period: Duration,
}

impl Default for EvictionConfig {
    /// `memory.available` 100Mi as upstream; the disk signals are off unless configured
    /// (upstream: 10 % and 15 %), because on shared machines of this project's kind statvfs
    /// reports a few percent available on a disk that is far from full (quota), and every
    /// pod would be evicted at once.
    fn default() -> Self {
        EvictionConfig {
            memory_available: Some(Threshold::Bytes(100 << 20)),
            nodefs_available: None,
            imagefs_available: None,
            pid_available: None,
            soft: BTreeMap::new(),
            max_pod_grace_period: Duration::ZERO,
            period: Duration::from_secs(10),
        }
    }
}

impl EvictionConfig {
    /// The hard threshold of `signal`.
    pub fn hard(&self, signal: Signal) -> Option<Threshold> {
        match signal {
            Signal::MemoryAvailable => self.memory_available,
            Signal::NodefsAvailable => self.nodefs_available,
            Signal::ImagefsAvailable => self.imagefs_available,
            Signal::PidAvailable => self.pid_available,
        }
    }

    /// Sets the hard threshold of `signal`.
    pub fn set_hard(&mut self, signal: Signal, t: Option<Threshold>) {
        match signal {
            Signal::MemoryAvailable => self.memory_available = t,
            Signal::NodefsAvailable => self.nodefs_available = t,
            Signal::ImagefsAvailable => self.imagefs_available = t,
            Signal::PidAvailable => self.pid_available = t,
        }
    }

    /// Whether any threshold watches `signal` (else it is not measured).
    fn watches(&self, signal: Signal) -> bool {
        self.hard(signal).is_some() || self.soft.contains_key(&signal)
    }
}

/// Bytes as upstream prints quantities in eviction messages (`Ki`).
fn ki(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

fn threshold_text(signal: Signal, t: &Threshold) -> String {
    match t {
        Threshold::Bytes(b) if signal == Signal::PidAvailable => b.to_string(),
        Threshold::Bytes(b) if b % (1 << 20) == 0 => format!("{}Mi", b >> 20),
        Threshold::Bytes(b) => ki(*b),
        Threshold::Percent(p) => format!("{p}%"),
    }
}

/// MemTotal and MemAvailable in bytes.
fn meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// The smaller of `kernel.pid_max` and `kernel.threads-max`, and the tasks (threads) running
/// now (the 4th field of /proc/loadavg, as sysinfo's `procs`).
pub fn pid_counts() -> Option<(u64, u64)> {
    let read = |p: &str| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
    let max = match (read("/proc/sys/kernel/pid_max"), read("/proc/sys/kernel/threads-max")) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    let running = loadavg.split_whitespace().nth(3)?.split('/').nth(1)?.parse::<u64>().ok()?;
    Some((max, running))
}

/// One observed signal: the capacity and what is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The signal.
    pub signal: Signal,
    /// Its capacity (bytes, or the pid limit).
    pub capacity: u64,
    /// What is available.
    pub available: u64,
}

/// Observes the signals some threshold of `cfg` watches (blocking: statvfs, /proc).
pub fn observe(
    cfg: &EvictionConfig,
    nodefs: &std::path::Path,
    imagefs: &std::path::Path,
) -> Vec<Observation> {
    let mut out = Vec::new();
    for signal in Signal::ALL.into_iter().filter(|s| cfg.watches(*s)) {
        let seen = match signal {
            Signal::MemoryAvailable => meminfo(),
            Signal::NodefsAvailable => super::imagegc::fs_usage(nodefs).ok(),
            Signal::ImagefsAvailable => super::imagegc::fs_usage(imagefs).ok(),
            Signal::PidAvailable => pid_counts().map(|(max, running)| (max, max.saturating_sub(running))),
        };
        if let Some((capacity, available)) = seen {
            out.push(Observation { signal, capacity, available });
        }
    }
    out
}

/// What the eviction manager concludes from one round of observations.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The conditions to report.
    pub pressure: Pressure,
    /// A pod must go: the resource, upstream's message, and whether a soft threshold (met
    /// for its grace period) asks for it, so the pod gets a grace period.
    pub evict: Option<(&'static str, String, bool)>,
}

/// Soft thresholds crossed and since when (the eviction manager's memory between rounds).
pub type FirstObserved = BTreeMap<Signal, Instant>;

/// Compares `observations` with the thresholds at `now`: pressure from every threshold
/// crossed; an eviction for the first hard threshold crossed, else for the first soft one
/// crossed for its whole grace period. `first` keeps when each soft threshold was first
/// seen crossed; one not crossed now is forgotten (its grace period starts again).
pub fn evaluate(
    cfg: &EvictionConfig,
    observations: &[Observation],
    first: &mut FirstObserved,
    now: Instant,
) -> Verdict {
    let mut pressure = Pressure::default();
    let (mut hard, mut soft) = (None, None);
    let message = |o: &Observation, t: &Threshold| {
        format!(
            "The node was low on resource: {}. Threshold quantity: {}, available: {}. ",
            o.signal.resource(),
            threshold_text(o.signal, t),
            o.signal.quantity(o.available)
        )
    };
    let mut crossed_soft = Vec::new();
    for o in observations {
        let below = |t: &Threshold| o.available < t.bytes(o.capacity);
        let hard_crossed = cfg.hard(o.signal).filter(|t| below(t));
        let soft_crossed = cfg.soft.get(&o.signal).filter(|s| below(&s.threshold));
        if hard_crossed.is_none() && soft_crossed.is_none() {
            continue;
        }
        match o.signal {
            Signal::MemoryAvailable => pressure.memory = true,
            Signal::NodefsAvailable | Signal::ImagefsAvailable => pressure.disk = true,
            Signal::PidAvailable => pressure.pid = true,
        }
        if let Some(t) = hard_crossed {
            hard.get_or_insert_with(|| (o.signal.resource(), message(o, &t), false));
        }
        if let Some(s) = soft_crossed {
            crossed_soft.push(o.signal);
            let since = *first.entry(o.signal).or_insert(now);
            if now.saturating_duration_since(since) >= s.grace {
                soft.get_or_insert_with(|| (o.signal.resource(), message(o, &s.threshold), true));
            }
        }
    }
    first.retain(|s, _| crossed_soft.contains(s));
    Verdict { pressure, evict: hard.or(soft) }
}

/// The grace period a pod evicted for a soft threshold gets: its own
/// `terminationGracePeriodSeconds` (default 30), at most `max`.
pub fn soft_grace(pod: &Value, max: Duration) -> Duration {
    let own = pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    Duration::from_secs(own).min(max)
}

/// 0 BestEffort, 1 Burstable, 2 Guaranteed (from `status.qosClass`, as the API sets it).
fn qos_rank(pod: &Value) -> u8 {
    match pod["status"]["qosClass"].as_str() {
        Some("BestEffort") => 0,
        Some("Guaranteed") => 2,
        _ => 1,
    }
}

/// Priorities at or above this are system-critical (`system-cluster-critical`).
const CRITICAL_PRIORITY: i64 = 2_000_000_000;

/// The pods that may be evicted, in eviction order; `usage` gives a pod's memory usage by
/// uid.
pub fn rank(pods: &[Arc<Value>], usage: impl Fn(&str) -> u64) -> Vec<Arc<Value>> {
    let mut out: Vec<Arc<Value>> = pods
        .iter()
        .filter(|p| {
            p["metadata"]["deletionTimestamp"].is_null()
                && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                && p["spec"]["priority"].as_i64().unwrap_or(0) < CRITICAL_PRIORITY
        })
        .cloned()
        .collect();
    out.sort_by_key(|p| {
        let uid = p["metadata"]["uid"].as_str().unwrap_or_default();
        (qos_rank(p), p["spec"]["priority"].as_i64().unwrap_or(0), std::cmp::Reverse(usage(uid)))
    });
    out
}

/// Runs the eviction manager forever: measures, publishes the pressure, and evicts one pod
/// per period while a threshold is crossed. `on_change` is called when the pressure changes
/// (the agent then posts its Node status at once).
pub async fn run(
    cfg: EvictionConfig,
    deps: Arc<super::Deps>,
    pods: Arc<Informer>,
    pressure: Arc<std::sync::Mutex<Pressure>>,
    nodefs: PathBuf,
    on_change: impl Fn() + Send + 'static,
) {
    pods.wait_synced().await;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + cfg.period, cfg.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = FirstObserved::new();
    loop {
        tick.tick().await;
        let (c, n, i) = (cfg.clone(), nodefs.clone(), deps.images.root().to_path_buf());
        let Ok(seen) = tokio::task::spawn_blocking(move || observe(&c, &n, &i)).await else { continue };
        let Verdict { pressure: now, evict } = evaluate(&cfg, &seen, &mut first, Instant::now());
        let changed = {
            let mut p = pressure.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *p, now) != now
        };
        if changed {
            tracing::info!(memory = now.memory, disk = now.disk, pid = now.pid, "node pressure changed");
            on_change();
        }
        let Some((resource, message, soft)) = evict else { continue };
        let usage = |uid: &str| deps.runtime.pod_memory_usage(uid).unwrap_or(0);
        let ranked = rank(&pods.list(), usage);
        let victim = ranked.iter().find_map(|p| {
            let uid = p["metadata"]["uid"].as_str()?;
            let worker = deps.workers.lock().unwrap_or_else(|e| e.into_inner()).get(uid).cloned()?;
            Some((p.clone(), worker))
        });
        if let Some((pod, worker)) = victim {
            let grace = if soft { soft_grace(&pod, cfg.max_pod_grace_period) } else { Duration::ZERO };
            tracing::info!(pod = %pod["metadata"]["name"], resource, soft, grace = grace.as_secs(), "evicting a pod: {message}");
            worker.do_send(super::pod::Evict { message, grace });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn thresholds_parse() {
        assert_eq!(Threshold::parse("100Mi"), Some(Threshold::Bytes(100 << 20)));
        assert_eq!(Threshold::parse("10%"), Some(Threshold::Percent(10.0)));
        assert_eq!(Threshold::parse("101%"), None);
        assert_eq!(Threshold::parse("x"), None);
        assert_eq!(Threshold::Percent(10.0).bytes(1000), 100);
        assert_eq!(threshold_text(Signal::MemoryAvailable, &Threshold::Bytes(100 << 20)), "100Mi");
        assert_eq!(threshold_text(Signal::PidAvailable, &Threshold::Bytes(1000)), "1000");
        assert_eq!(Signal::parse("pid.available"), Some(Signal::PidAvailable));
        assert_eq!(Signal::parse("pids.available"), None);
    }

    #[test]
    fn ranks_by_qos_priority_then_usage() {
        let pod = |name: &str, qos: &str, prio: i64| {
            Arc::new(json!({"metadata": {"name": name, "uid": name}, "spec": {"priority": prio},
                            "status": {"phase": "Running", "qosClass": qos}}))
        };
        let pods = vec![
            pod("g", "Guaranteed", 0),
            pod("b-high", "Burstable", 100),
            pod("b-low-small", "Burstable", 0),
            pod("b-low-big", "Burstable", 0),
            pod("be", "BestEffort", 0),
            pod("critical", "BestEffort", 2_000_001_000),
            Arc::new(json!({"metadata": {"name": "done", "uid": "done"}, "status": {"phase": "Succeeded"}})),
        ];
        let usage = |uid: &str| if uid == "b-low-big" { 500 } else { 10 };
        let order: Vec<String> =
            rank(&pods, usage).iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect();
        assert_eq!(order, ["be", "b-low-big", "b-low-small", "b-high", "g"]);
    }

    #[test]
    fn a_threshold_of_all_memory_is_always_crossed() {
        let cfg = EvictionConfig {
            memory_available: Threshold::parse("100%"),
            period: Duration::from_secs(1),
            ..EvictionConfig::default()
        };
        let seen = observe(&cfg, std::path::Path::new("/"), std::path::Path::new("/"));
        assert_eq!(seen.len(), 1, "only the watched signal is observed: {seen:?}");
        let v = evaluate(&cfg, &seen, &mut FirstObserved::new(), Instant::now());
        assert_eq!(v.pressure, Pressure { memory: true, ..Pressure::default() });
        let (resource, message, soft) = v.evict.unwrap();
        assert_eq!((resource, soft), ("memory", false));
        assert!(message
            .starts_with("The node was low on resource: memory. Threshold quantity: 100%, available: "));
        let none = EvictionConfig { memory_available: None, ..cfg };
        assert!(observe(&none, std::path::Path::new("/"), std::path::Path::new("/")).is_empty());
    }

    #[test]
    fn pid_available_is_observed_from_the_kernel() {
        let cfg = EvictionConfig {
            memory_available: None,
            pid_available: Threshold::parse("100%"),
            ..EvictionConfig::default()
        };
        let seen = observe(&cfg, std::path::Path::new("/"), std::path::Path::new("/"));
        let o = seen.first().expect("pid.available observed");
        assert_eq!(o.signal, Signal::PidAvailable);
        assert!(o.capacity >= 1000 && o.available < o.capacity, "{o:?}");
        let v = evaluate(&cfg, &seen, &mut FirstObserved::new(), Instant::now());
        assert_eq!(v.pressure, Pressure { pid: true, ..Pressure::default() });
        let (resource, message, _) = v.evict.unwrap();
        assert_eq!(resource, "pids");
        assert!(
            message.starts_with("The node was low on resource: pids. Threshold quantity: 100%, available: ")
        );
    }

    #[test]
    fn soft_thresholds_wait_for_their_grace_period() {
        let mut cfg = EvictionConfig { memory_available: None, ..EvictionConfig::default() };
        cfg.soft.insert(
            Signal::MemoryAvailable,
            Soft { threshold: Threshold::Bytes(500 << 20), grace: Duration::from_secs(30) },
        );
        cfg.memory_available = Some(Threshold::Bytes(100 << 20));
        let obs =
            |available: u64| [Observation { signal: Signal::MemoryAvailable, capacity: 8 << 30, available }];
        let t0 = Instant::now();
        let mut first = FirstObserved::new();
        // Above both: nothing.
        let v = evaluate(&cfg, &obs(1 << 30), &mut first, t0);
        assert_eq!((v.pressure, v.evict), (Pressure::default(), None));
        // Below the soft threshold: pressure at once, no eviction before the grace period.
        let v = evaluate(&cfg, &obs(300 << 20), &mut first, t0);
        assert!(v.pressure.memory);
        assert_eq!(v.evict, None);
        let v = evaluate(&cfg, &obs(300 << 20), &mut first, t0 + Duration::from_secs(29));
        assert_eq!(v.evict, None);
        let v = evaluate(&cfg, &obs(300 << 20), &mut first, t0 + Duration::from_secs(30));
        let (resource, message, soft) = v.evict.expect("soft eviction after 30 s");
        assert_eq!((resource, soft), ("memory", true));
        assert_eq!(
            message,
            "The node was low on resource: memory. Threshold quantity: 500Mi, available: 307200Ki. "
        );
        // A break resets the grace period.
        let v = evaluate(&cfg, &obs(1 << 30), &mut first, t0 + Duration::from_secs(31));
        assert!(!v.pressure.memory && first.is_empty());
        let v = evaluate(&cfg, &obs(300 << 20), &mut first, t0 + Duration::from_secs(40));
        assert_eq!(v.evict, None);
        // Below the hard threshold: evicted at once, without a grace period.
        let v = evaluate(&cfg, &obs(50 << 20), &mut first, t0 + Duration::from_secs(41));
        let (_, message, soft) = v.evict.expect("hard eviction at once");
        assert!(!soft);
        assert!(message.contains("Threshold quantity: 100Mi"), "{message}");
    }

    #[test]
    fn soft_evictions_cap_the_pods_grace_period() {
        let pod = |g: Option<u64>| json!({"spec": {"terminationGracePeriodSeconds": g}});
        assert_eq!(soft_grace(&pod(Some(60)), Duration::from_secs(20)), Duration::from_secs(20));
        assert_eq!(soft_grace(&pod(Some(5)), Duration::from_secs(20)), Duration::from_secs(5));
        assert_eq!(soft_grace(&pod(None), Duration::from_secs(90)), Duration::from_secs(30));
        assert_eq!(soft_grace(&pod(Some(60)), Duration::ZERO), Duration::ZERO);
    }
}
