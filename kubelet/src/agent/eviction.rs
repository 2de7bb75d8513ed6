//! Node pressure and eviction, as upstream's kubelet eviction manager (`pkg/kubelet/eviction`)
//! with hard thresholds only: every monitoring period the agent measures
//! `memory.available` (MemAvailable of /proc/meminfo), `nodefs.available` (the filesystem of
//! the node's data directory) and `imagefs.available` (that of the image store); a signal
//! below its threshold sets the Node's MemoryPressure or DiskPressure condition and evicts
//! one pod per period: the pod is stopped at once (hard eviction: no grace period) and
//! reported `Failed` with reason `Evicted`, upstream's message and a Warning Event `Evicted`.
//! Pods are ranked as upstream: BestEffort first, then Burstable, then Guaranteed; within a
//! class the lower priority first, then, for memory, the larger memory usage (the pod's
//! cgroup) first. Critical pods (priority of a system class) are never evicted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capstan_actors::informer::Informer;
use serde_json::Value;

/// What is under pressure.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    /// `memory.available` is below its threshold.
    pub memory: bool,
    /// `nodefs.available` or `imagefs.available` is below its threshold.
    pub disk: bool,
}

/// A threshold: an absolute quantity in bytes, or a percentage of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Bytes.
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

/// Eviction settings (upstream's `evictionHard` defaults and housekeeping period).
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionConfig {
    /// `memory.available` (default `100Mi`).
    pub memory_available: Option<Threshold>,
    /// `nodefs.available` (upstream's default `10%`; off by default here, see [`EvictionConfig::default`]).
    pub nodefs_available: Option<Threshold>,
    /// `imagefs.available` (upstream's default `15%`; off by default here).
    pub imagefs_available: Option<Threshold>,
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
            period: Duration::from_secs(10),
        }
    }
}

/// Bytes as upstream prints quantities in eviction messages (`Ki`).
fn ki(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

fn threshold_text(t: &Threshold) -> String {
    match t {
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

/// The resource under pressure and why (upstream's message start), if any; and the pressure.
pub fn measure(
    cfg: &EvictionConfig,
    nodefs: &std::path::Path,
    imagefs: &std::path::Path,
) -> (Pressure, Option<(&'static str, String)>) {
    let mut pressure = Pressure::default();
    let mut why = None;
    let low = |resource: &'static str, t: &Threshold, capacity: u64, available: u64| {
        let limit = t.bytes(capacity);
        (available < limit).then(|| {
            (
                resource,
                format!(
                    "The node was low on resource: {resource}. Threshold quantity: {}, available: {}. ",
                    threshold_text(t),
                    ki(available)
                ),
            )
        })
    };
    if let (Some(t), Some((total, available))) = (&cfg.memory_available, meminfo()) {
        if let Some(w) = low("memory", t, total, available) {
            pressure.memory = true;
            why = Some(w);
        }
    }
    for (t, path, resource) in [
        (&cfg.nodefs_available, nodefs, "ephemeral-storage"),
        (&cfg.imagefs_available, imagefs, "ephemeral-storage"),
    ] {
        let (Some(t), Ok((capacity, available))) = (t, super::imagegc::fs_usage(path)) else { continue };
        if let Some(w) = low(resource, t, capacity, available) {
            pressure.disk = true;
            why.get_or_insert(w);
        }
    }
    (pressure, why)
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
    loop {
        tick.tick().await;
        let (c, n, i) = (cfg.clone(), nodefs.clone(), deps.images.root().to_path_buf());
        let Ok((now, why)) = tokio::task::spawn_blocking(move || measure(&c, &n, &i)).await else { continue };
        let changed = {
            let mut p = pressure.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *p, now) != now
        };
        if changed {
            tracing::info!(memory = now.memory, disk = now.disk, "node pressure changed");
            on_change();
        }
        let Some((resource, message)) = why else { continue };
        let usage = |uid: &str| deps.runtime.pod_memory_usage(uid).unwrap_or(0);
        let ranked = rank(&pods.list(), usage);
        let victim = ranked.iter().find_map(|p| {
            let uid = p["metadata"]["uid"].as_str()?;
            let worker = deps.workers.lock().unwrap_or_else(|e| e.into_inner()).get(uid).cloned()?;
            Some((p.clone(), worker))
        });
        if let Some((pod, worker)) = victim {
            tracing::info!(pod = %pod["metadata"]["name"], resource, "evicting a pod: {message}");
            worker.do_send(super::pod::Evict(message));
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
        assert_eq!(threshold_text(&Threshold::Bytes(100 << 20)), "100Mi");
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
            nodefs_available: None,
            imagefs_available: None,
            period: Duration::from_secs(1),
        };
        let (p, why) = measure(&cfg, std::path::Path::new("/"), std::path::Path::new("/"));
        assert_eq!(p, Pressure { memory: true, disk: false });
        let (resource, message) = why.unwrap();
        assert_eq!(resource, "memory");
        assert!(message
            .starts_with("The node was low on resource: memory. Threshold quantity: 100%, available: "));
        let none = EvictionConfig { memory_available: None, ..cfg };
        assert_eq!(
            measure(&none, std::path::Path::new("/"), std::path::Path::new("/")).0,
            Pressure::default()
        );
    }
}
