//! Resource usage of the node, its pods and their containers, as the kubelet's resource
//! metrics (cAdvisor underneath) report it: every [`INTERVAL`] the agent reads each running
//! container's cgroup (v2: `cpu.stat` `usage_usec`, `memory.current` minus `inactive_file`
//! of `memory.stat`; v1: `cpuacct.usage`, `memory.usage_in_bytes` minus
//! `total_inactive_file`) and the node's `/proc/stat` and `/proc/meminfo`, turns the CPU
//! counters into cores over the span between two samples, and publishes a
//! [`UsageReport`] on the bus (`capstan_bus::usage`), which the gateways serve as
//! `metrics.k8s.io`. The last sample is also served on `nodes/proxy` as the kubelet's
//! `/metrics/resource` (cumulative counters, Prometheus text).

use super::Deps;
use crate::runtime::cgroups::Hierarchies;
use capstan_bus::usage::{node_usage, ContainerUsage, PodUsage, Usage, UsageReport};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How often usage is sampled and reported.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Cumulative counters of one cgroup at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// CPU time used, nanoseconds.
    pub cpu_ns: u64,
    /// Working set, bytes.
    pub working_set: u64,
}

/// Memory figures beyond the working set, for `/stats/summary`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryDetail {
    /// Usage, bytes (page cache included).
    pub usage: u64,
    /// Anonymous memory, bytes.
    pub rss: u64,
    /// Page faults.
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
}

/// One container's sample.
#[derive(Debug, Clone)]
pub(crate) struct ContainerSample {
    pub(crate) namespace: String,
    pub(crate) pod: String,
    pub(crate) uid: String,
    pub(crate) name: String,
    pub(crate) counters: Counters,
    pub(crate) memory: MemoryDetail,
    /// Its memory limit less its working set, when it has a limit.
    pub(crate) memory_available: Option<u64>,
    /// Processes in its cgroup.
    pub(crate) processes: u64,
    /// Its network namespace's interfaces (the pod's network), read through one of its
    /// processes.
    pub(crate) net: Option<Vec<super::summary::Interface>>,
    /// When it was first sampled.
    pub(crate) started: jiff::Timestamp,
}

/// One sample of everything.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) at: Instant,
    pub(crate) wall: jiff::Timestamp,
    pub(crate) node: Counters,
    pub(crate) node_memory: MemoryDetail,
    /// Memory capacity less the working set, as upstream reports a node's `availableBytes`.
    pub(crate) node_memory_available: Option<u64>,
    pub(crate) containers: Vec<ContainerSample>,
}

/// The sample before the latest and the latest: `/metrics/resource` serves the latest,
/// `/stats/summary` both (CPU rates).
static SAMPLES: LazyLock<Mutex<(Option<Sample>, Option<Sample>)>> =
    LazyLock::new(|| Mutex::new((None, None)));

/// When each container (pod uid, name) was first sampled.
static FIRST_SEEN: LazyLock<Mutex<HashMap<(String, String), jiff::Timestamp>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The value of `key` in a flat-keyed file (`memory.stat`, `cpu.stat`).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The counters of cgroup `path` (absolute, e.g. `/capstan/<pod>/<ctr>`).
pub fn cgroup_counters(h: &Hierarchies, path: &str) -> Option<Counters> {
    if h.unified() {
        let dir = h.dir("cpu", path)?;
        let cpu_ns = stat_value(&read(&dir.join("cpu.stat"))?, "usage_usec")? * 1000;
        let usage: u64 = read(&dir.join("memory.current"))?.trim().parse().ok()?;
        let inactive =
            read(&dir.join("memory.stat")).and_then(|s| stat_value(&s, "inactive_file")).unwrap_or(0);
        return Some(Counters { cpu_ns, working_set: usage.saturating_sub(inactive) });
    }
    let cpu_ns: u64 = read(&h.dir("cpuacct", path)?.join("cpuacct.usage"))?.trim().parse().ok()?;
    let mem = h.dir("memory", path)?;
    let usage: u64 = read(&mem.join("memory.usage_in_bytes"))?.trim().parse().ok()?;
    let inactive =
        read(&mem.join("memory.stat")).and_then(|s| stat_value(&s, "total_inactive_file")).unwrap_or(0);
    Some(Counters { cpu_ns, working_set: usage.saturating_sub(inactive) })
}

/// Memory details, the memory limit (none when unlimited), the processes and one process
/// id of cgroup `path`.
fn cgroup_details(h: &Hierarchies, path: &str) -> (MemoryDetail, Option<u64>, u64, Option<u32>) {
    let (dir, usage_file, limit_file, rss_key, pf_key, maj_key) = if h.unified() {
        (h.dir("memory", path), "memory.current", "memory.max", "anon", "pgfault", "pgmajfault")
    } else {
        (
            h.dir("memory", path),
            "memory.usage_in_bytes",
            "memory.limit_in_bytes",
            "total_rss",
            "total_pgfault",
            "total_pgmajfault",
        )
    };
    let Some(dir) = dir else { return Default::default() };
    let num = |f: &str| read(&dir.join(f)).and_then(|t| t.trim().parse::<u64>().ok());
    let stat = read(&dir.join("memory.stat")).unwrap_or_default();
    let m = MemoryDetail {
        usage: num(usage_file).unwrap_or(0),
        rss: stat_value(&stat, rss_key).unwrap_or(0),
        page_faults: stat_value(&stat, pf_key).unwrap_or(0),
        major_page_faults: stat_value(&stat, maj_key).unwrap_or(0),
    };
    // v1 says "unlimited" with a huge number.
    let limit = num(limit_file).filter(|l| *l < (1 << 60));
    let procs = read(&dir.join("cgroup.procs")).unwrap_or_default();
    let pids: Vec<u32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
    (m, limit, pids.len() as u64, pids.first().copied())
}

/// The node's memory details from /proc/meminfo and /proc/vmstat, and MemTotal.
fn node_memory() -> (MemoryDetail, u64) {
    let meminfo = read(Path::new("/proc/meminfo")).unwrap_or_default();
    let kb = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?.strip_prefix(':')?.split_whitespace().next()?.parse::<u64>().ok()
            })
            .unwrap_or(0)
            * 1024
    };
    let vmstat = read(Path::new("/proc/vmstat")).unwrap_or_default();
    let total = kb("MemTotal");
    let m = MemoryDetail {
        usage: total.saturating_sub(kb("MemFree")),
        rss: kb("AnonPages"),
        page_faults: stat_value(&vmstat, "pgfault").unwrap_or(0),
        major_page_faults: stat_value(&vmstat, "pgmajfault").unwrap_or(0),
    };
    (m, total)
}

/// The node's counters: busy CPU time from `/proc/stat` (everything but idle and iowait,
/// in USER_HZ ticks of 10 ms), working set from `/proc/meminfo` (total − free − inactive
/// file pages, as the root cgroup's usage minus `inactive_file`).
pub fn node_counters() -> Option<Counters> {
    let stat = read(Path::new("/proc/stat"))?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = cpu.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    let meminfo = read(Path::new("/proc/meminfo"))?;
    let kb = |key: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    let total = kb("MemTotal")?;
    let free = kb("MemFree").unwrap_or(0);
    let inactive = kb("Inactive(file)").unwrap_or(0);
    Some(Counters {
        cpu_ns: busy * 10_000_000,
        working_set: total.saturating_sub(free).saturating_sub(inactive) * 1024,
    })
}

fn take_sample(deps: &Deps) -> Sample {
    let h = deps.runtime.cgroups();
    let now = jiff::Timestamp::now();
    let mut containers = Vec::new();
    let mut first_seen = FIRST_SEEN.lock().unwrap_or_else(|e| e.into_inner());
    {
        let views = deps.views.lock().unwrap_or_else(|e| e.into_inner());
        for (key, view) in views.iter() {
            let Some((ns, pod)) = key.split_once('/') else { continue };
            for c in &view.containers {
                let Some(id) = c.id.as_ref().filter(|_| !*c.done.borrow()) else { continue };
                let path = deps.runtime.cgroup_path(&view.uid, id);
                let Some(counters) = cgroup_counters(h, &path) else {
                    continue;
                };
                let (memory, limit, processes, pid) = cgroup_details(h, &path);
                let net = pid
                    .and_then(|p| read(Path::new(&format!("/proc/{p}/net/dev"))))
                    .map(|t| super::summary::parse_net_dev(&t));
                let started = *first_seen.entry((view.uid.clone(), c.name.clone())).or_insert(now);
                containers.push(ContainerSample {
                    namespace: ns.to_string(),
                    pod: pod.to_string(),
                    uid: view.uid.clone(),
                    name: c.name.clone(),
                    counters,
                    memory,
                    memory_available: limit.map(|l| l.saturating_sub(counters.working_set)),
                    processes,
                    net,
                    started,
                });
            }
        }
    }
    first_seen.retain(|(uid, name), _| containers.iter().any(|c| c.uid == *uid && c.name == *name));
    host_sample(containers)
}

/// A sample of the host with these containers.
fn host_sample(containers: Vec<ContainerSample>) -> Sample {
    let node = node_counters().unwrap_or_default();
    let (node_memory, total) = node_memory();
    Sample {
        at: Instant::now(),
        wall: jiff::Timestamp::now(),
        node,
        node_memory,
        node_memory_available: (total > 0).then(|| total.saturating_sub(node.working_set)),
        containers,
    }
}

/// A sample of the host alone (tests).
#[cfg(test)]
pub(crate) fn sample_host_only() -> Sample {
    host_sample(Vec::new())
}

/// The kubelet's `/stats/summary` from the last two samples (none before the first).
pub fn summary(deps: &Deps) -> Option<serde_json::Value> {
    let (prev, cur) = SAMPLES.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let paths = super::summary::Paths { nodefs: &deps.dirs.pods, imagefs: deps.images.root() };
    Some(super::summary::summary(&deps.node, prev.as_ref(), cur.as_ref()?, &paths))
}

/// CPU in nanocores between two cumulative readings `span` apart; `None` when the counter
/// went back (a new container instance).
pub fn rate(before: u64, after: u64, span: Duration) -> Option<u64> {
    let nanos = span.as_nanos();
    if after < before || nanos == 0 {
        return None;
    }
    u64::try_from(u128::from(after - before) * 1_000_000_000 / nanos).ok()
}

/// The report two samples give.
fn report(node: &str, prev: &Sample, cur: &Sample) -> UsageReport {
    let span = cur.at.duration_since(prev.at);
    let before: HashMap<(&str, &str), u64> =
        prev.containers.iter().map(|c| ((c.uid.as_str(), c.name.as_str()), c.counters.cpu_ns)).collect();
    let mut pods: Vec<PodUsage> = Vec::new();
    for c in &cur.containers {
        let Some(&b) = before.get(&(c.uid.as_str(), c.name.as_str())) else { continue };
        let Some(cpu) = rate(b, c.counters.cpu_ns, span) else { continue };
        let usage = Usage { cpu_nanocores: cpu, memory_bytes: c.counters.working_set };
        let entry = ContainerUsage { name: c.name.clone(), usage };
        match pods.iter_mut().find(|p| p.uid == c.uid) {
            Some(p) => p.containers.push(entry),
            None => pods.push(PodUsage {
                namespace: c.namespace.clone(),
                name: c.pod.clone(),
                uid: c.uid.clone(),
                containers: vec![entry],
            }),
        }
    }
    let t = jiff::Timestamp::from_second(cur.wall.as_second()).unwrap_or(cur.wall);
    UsageReport {
        node: node.to_string(),
        timestamp: t.to_string(),
        window_millis: u64::try_from(span.as_millis()).unwrap_or(u64::MAX),
        node_usage: Usage {
            cpu_nanocores: rate(prev.node.cpu_ns, cur.node.cpu_ns, span).unwrap_or(0),
            memory_bytes: cur.node.working_set,
        },
        pods,
    }
}

/// Samples every [`INTERVAL`] and publishes a report after each sample but the first.
pub async fn run(deps: Arc<Deps>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev: Option<Sample> = None;
    loop {
        tick.tick().await;
        let d = deps.clone();
        let Ok(cur) = tokio::task::spawn_blocking(move || take_sample(&d)).await else { continue };
        {
            let mut samples = SAMPLES.lock().unwrap_or_else(|e| e.into_inner());
            samples.0 = samples.1.replace(cur.clone());
        }
        if let Some(p) = &prev {
            let r = report(&deps.node, p, &cur);
            match r.encode() {
                Ok(payload) => {
                    if let Err(e) = deps.client.bus().publish(node_usage(&deps.node), payload).await {
                        tracing::debug!("failed to publish a usage report: {e}");
                    }
                }
                Err(e) => tracing::warn!("failed to encode a usage report: {e}"),
            }
        }
        prev = Some(cur);
    }
}

/// The kubelet's `/metrics/resource`: the latest sample as Prometheus text, upstream's
/// metric names (cumulative CPU seconds, working set bytes, with the sample's time in ms).
pub fn resource_metrics() -> String {
    let latest = SAMPLES.lock().unwrap_or_else(|e| e.into_inner()).1.clone();
    let mut out = String::new();
    let Some(s) = latest else { return out };
    let ms = s.wall.as_millisecond();
    let secs = |ns: u64| ns as f64 / 1e9;
    out.push_str("# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds\n# TYPE container_cpu_usage_seconds_total counter\n");
    for c in &s.containers {
        out.push_str(&format!(
            "container_cpu_usage_seconds_total{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {ms}\n",
            c.name,
            c.namespace,
            c.pod,
            secs(c.counters.cpu_ns)
        ));
    }
    out.push_str("# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes\n# TYPE container_memory_working_set_bytes gauge\n");
    for c in &s.containers {
        out.push_str(&format!(
            "container_memory_working_set_bytes{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {ms}\n",
            c.name, c.namespace, c.pod, c.counters.working_set
        ));
    }
    out.push_str("# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds\n# TYPE node_cpu_usage_seconds_total counter\n");
    out.push_str(&format!("node_cpu_usage_seconds_total {} {ms}\n", secs(s.node.cpu_ns)));
    out.push_str("# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes\n# TYPE node_memory_working_set_bytes gauge\n");
    out.push_str(&format!("node_memory_working_set_bytes {} {ms}\n", s.node.working_set));
    let mut pods: Vec<(&str, &str, Counters)> = Vec::new();
    for c in &s.containers {
        match pods.iter_mut().find(|(ns, p, _)| *ns == c.namespace && *p == c.pod) {
            Some((_, _, t)) => {
                t.cpu_ns += c.counters.cpu_ns;
                t.working_set += c.counters.working_set;
            }
            None => pods.push((&c.namespace, &c.pod, c.counters)),
        }
    }
    out.push_str("# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds\n# TYPE pod_cpu_usage_seconds_total counter\n");
    for (ns, p, t) in &pods {
        out.push_str(&format!(
            "pod_cpu_usage_seconds_total{{namespace=\"{ns}\",pod=\"{p}\"}} {} {ms}\n",
            secs(t.cpu_ns)
        ));
    }
    out.push_str("# HELP pod_memory_working_set_bytes [STABLE] Current working set of the pod in bytes\n# TYPE pod_memory_working_set_bytes gauge\n");
    for (ns, p, t) in &pods {
        out.push_str(&format!(
            "pod_memory_working_set_bytes{{namespace=\"{ns}\",pod=\"{p}\"}} {} {ms}\n",
            t.working_set
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_stat_files() {
        assert_eq!(rate(0, 500_000_000, Duration::from_secs(1)), Some(500_000_000));
        assert_eq!(rate(1_000, 3_000, Duration::from_secs(2)), Some(1_000));
        assert_eq!(rate(10, 5, Duration::from_secs(1)), None);
        let stat = "usage_usec 1234\nuser_usec 1000\n";
        assert_eq!(stat_value(stat, "usage_usec"), Some(1234));
        assert_eq!(stat_value("total_inactive_file 42\ninactive_file 7\n", "inactive_file"), Some(7));
    }

    #[test]
    fn the_node_reads_its_own_counters() {
        let c = node_counters().expect("/proc/stat and /proc/meminfo");
        assert!(c.cpu_ns > 0 && c.working_set > 0, "{c:?}");
    }

    fn container(name: &str, cpu: u64) -> ContainerSample {
        ContainerSample {
            namespace: "ns".into(),
            pod: "p".into(),
            uid: "u".into(),
            name: name.into(),
            counters: Counters { cpu_ns: cpu, working_set: 4096 },
            memory: MemoryDetail { usage: 8192, rss: 1024, page_faults: 7, major_page_faults: 1 },
            memory_available: Some(1000),
            processes: 2,
            net: Some(vec![super::super::summary::Interface {
                name: "eth0".into(),
                rx_bytes: 10,
                rx_errors: 0,
                tx_bytes: 20,
                tx_errors: 0,
            }]),
            started: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
        }
    }

    fn sample(at: Instant, containers: Vec<ContainerSample>) -> Sample {
        Sample {
            at,
            wall: jiff::Timestamp::now(),
            node: Counters::default(),
            node_memory: MemoryDetail::default(),
            node_memory_available: None,
            containers,
        }
    }

    #[test]
    fn reports_rates_of_containers_seen_twice() {
        let t0 = Instant::now();
        let a = sample(t0, vec![container("c", 0)]);
        let b = sample(t0 + Duration::from_secs(2), vec![container("c", 1_000_000_000)]);
        let r = report("n", &a, &b);
        assert_eq!(r.window_millis, 2000);
        assert_eq!(r.pods.len(), 1);
        assert_eq!(r.pods[0].containers[0].usage, Usage { cpu_nanocores: 500_000_000, memory_bytes: 4096 });
    }

    #[test]
    fn the_summary_sums_a_pods_containers() {
        let t0 = Instant::now();
        let a = sample(t0, vec![container("a", 0), container("b", 0)]);
        let b = sample(
            t0 + Duration::from_secs(2),
            vec![container("a", 1_000_000_000), container("b", 3_000_000_000)],
        );
        let d = std::env::temp_dir();
        let s = super::super::summary::summary(
            "n",
            Some(&a),
            &b,
            &super::super::summary::Paths { nodefs: &d, imagefs: &d },
        );
        let pods = s["pods"].as_array().unwrap();
        assert_eq!(pods.len(), 1);
        let p = &pods[0];
        assert_eq!(p["podRef"], serde_json::json!({"name": "p", "namespace": "ns", "uid": "u"}));
        assert_eq!(p["startTime"], "2023-11-14T22:13:20Z");
        assert_eq!(p["cpu"]["usageNanoCores"], 2_000_000_000u64);
        assert_eq!(p["cpu"]["usageCoreNanoSeconds"], 4_000_000_000u64);
        assert_eq!(p["memory"]["workingSetBytes"], 8192);
        assert_eq!(p["memory"]["rssBytes"], 2048);
        assert_eq!(p["process_stats"]["process_count"], 4);
        assert_eq!(p["network"]["name"], "eth0");
        assert_eq!(p["network"]["txBytes"], 20);
        let c = &p["containers"][1];
        assert_eq!(
            (c["name"].as_str(), c["cpu"]["usageNanoCores"].as_u64()),
            (Some("b"), Some(1_500_000_000))
        );
        assert_eq!(c["memory"]["availableBytes"], 1000);
        assert_eq!(c["memory"]["majorPageFaults"], 1);
    }
}
