//! The kubelet's Summary API, `/stats/summary` (`k8s.io/kubelet/pkg/apis/stats/v1alpha1`),
//! built from the usage sampler's last two samples ([`super::usage`]) and what the host says
//! now: the node's CPU (nanocores over the last sampling interval, cumulative core
//! nanoseconds), memory (`/proc/meminfo`), network (`/proc/net/dev`), the node and image
//! filesystems (statvfs) and pid limits; per pod and container the same CPU and memory
//! figures from their cgroups, the pod's network from its network namespace (through a
//! process of its first container) and its process count.
//!
//! metrics-server reads `/metrics/resource` since v0.6; this endpoint serves tools that
//! still read the summary (`kubectl get --raw /api/v1/nodes/<n>/proxy/stats/summary`,
//! monitoring agents). Served on `nodes/proxy` like the agent's other endpoints, behind the
//! gateway's authentication and authorization.

use super::usage::{rate, MemoryDetail, Sample};
use serde_json::{json, Map, Value};
use std::path::Path;

/// One network interface's counters (`/proc/net/dev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Send errors.
    pub tx_errors: u64,
}

/// The interfaces of a `/proc/net/dev` text, loopback left out.
pub fn parse_net_dev(text: &str) -> Vec<Interface> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            (name != "lo" && f.len() >= 16).then(|| Interface {
                name: name.to_string(),
                rx_bytes: f[0],
                rx_errors: f[2],
                tx_bytes: f[8],
                tx_errors: f[10],
            })
        })
        .collect()
}

fn interface_json(i: &Interface) -> Value {
    json!({"name": i.name, "rxBytes": i.rx_bytes, "rxErrors": i.rx_errors,
           "txBytes": i.tx_bytes, "txErrors": i.tx_errors})
}

/// `NetworkStats`: the interface named `default` (else the first) flattened in, and all.
fn network_json(time: &str, ifaces: &[Interface], default: &str) -> Option<Value> {
    let main = ifaces.iter().find(|i| i.name == default).or(ifaces.first())?;
    let mut v = interface_json(main);
    v["time"] = json!(time);
    v["interfaces"] = Value::Array(ifaces.iter().map(interface_json).collect());
    Some(v)
}

/// The interface of the host's default route (`/proc/net/route`), else `eth0`.
fn default_interface() -> String {
    std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| {
            t.lines().skip(1).find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(1) == Some(&"00000000")).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| "eth0".into())
}

/// `FsStats` of the filesystem holding `path`.
fn fs_json(time: &str, path: &Path) -> Option<Value> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = st.fragment_size() as u64;
    let (capacity, free, available) =
        (st.blocks() as u64 * frag, st.blocks_free() as u64 * frag, st.blocks_available() as u64 * frag);
    let (inodes, inodes_free) = (st.files() as u64, st.files_free() as u64);
    Some(json!({
        "time": time, "availableBytes": available, "capacityBytes": capacity,
        "usedBytes": capacity.saturating_sub(free), "inodesFree": inodes_free, "inodes": inodes,
        "inodesUsed": inodes.saturating_sub(inodes_free),
    }))
}

fn cpu_json(time: &str, before: Option<u64>, now: u64, span: std::time::Duration) -> Value {
    let mut v = json!({"time": time, "usageCoreNanoSeconds": now});
    if let Some(n) = before.and_then(|b| rate(b, now, span)) {
        v["usageNanoCores"] = json!(n);
    }
    v
}

fn memory_json(time: &str, working_set: u64, m: &MemoryDetail, available: Option<u64>) -> Value {
    let mut v = json!({
        "time": time, "usageBytes": m.usage, "workingSetBytes": working_set, "rssBytes": m.rss,
        "pageFaults": m.page_faults, "majorPageFaults": m.major_page_faults,
    });
    if let Some(a) = available {
        v["availableBytes"] = json!(a);
    }
    v
}

/// Where the node keeps its data and its images (the node and image filesystems).
pub struct Paths<'a> {
    /// The node filesystem (`nodefs`).
    pub nodefs: &'a Path,
    /// The image filesystem (`imagefs`).
    pub imagefs: &'a Path,
}

/// The summary for node `node` from the samples (`prev` may be missing right after start).
pub(crate) fn summary(node: &str, prev: Option<&Sample>, cur: &Sample, paths: &Paths<'_>) -> Value {
    let time = jiff::Timestamp::from_second(cur.wall.as_second()).unwrap_or(cur.wall).to_string();
    let span = prev.map(|p| cur.at.duration_since(p.at)).unwrap_or_default();
    let mut n = Map::new();
    n.insert("nodeName".into(), json!(node));
    n.insert("systemContainers".into(), json!([]));
    if let Some(boot) = boot_time() {
        n.insert("startTime".into(), json!(boot));
    }
    n.insert("cpu".into(), cpu_json(&time, prev.map(|p| p.node.cpu_ns), cur.node.cpu_ns, span));
    n.insert(
        "memory".into(),
        memory_json(&time, cur.node.working_set, &cur.node_memory, cur.node_memory_available),
    );
    let ifaces = std::fs::read_to_string("/proc/net/dev").map(|t| parse_net_dev(&t)).unwrap_or_default();
    if let Some(net) = network_json(&time, &ifaces, &default_interface()) {
        n.insert("network".into(), net);
    }
    if let Some(fs) = fs_json(&time, paths.nodefs) {
        n.insert("fs".into(), fs);
    }
    if let Some(fs) = fs_json(&time, paths.imagefs) {
        n.insert("runtime".into(), json!({"imageFs": fs.clone(), "containerFs": fs}));
    }
    if let Some((max, running)) = super::eviction::pid_counts() {
        n.insert("rlimit".into(), json!({"time": time, "maxpid": max, "curproc": running}));
    }
    let before: std::collections::HashMap<(&str, &str), u64> = prev
        .map(|p| {
            p.containers.iter().map(|c| ((c.uid.as_str(), c.name.as_str()), c.counters.cpu_ns)).collect()
        })
        .unwrap_or_default();
    // Pods in the order their containers were sampled.
    let mut pods: Vec<Value> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for c in &cur.containers {
        let started = c.started.to_string();
        let cpu =
            cpu_json(&time, before.get(&(c.uid.as_str(), c.name.as_str())).copied(), c.counters.cpu_ns, span);
        let container = json!({
            "name": c.name, "startTime": started, "cpu": cpu,
            "memory": memory_json(&time, c.counters.working_set, &c.memory, c.memory_available),
        });
        let i = *index.entry(c.uid.as_str()).or_insert_with(|| {
            let mut p = json!({
                "podRef": {"name": c.pod, "namespace": c.namespace, "uid": c.uid},
                "startTime": started, "containers": [],
                "cpu": {"time": time, "usageCoreNanoSeconds": 0u64},
                "memory": {"time": time, "usageBytes": 0u64, "workingSetBytes": 0u64, "rssBytes": 0u64,
                           "pageFaults": 0u64, "majorPageFaults": 0u64},
                "process_stats": {"process_count": 0u64},
            });
            if let Some(net) = c.net.as_deref().and_then(|i| network_json(&time, i, "eth0")) {
                p["network"] = net;
            }
            pods.push(p);
            pods.len() - 1
        });
        let p = &mut pods[i];
        let add = |v: &mut Value, by: &Value| {
            let sum = v.as_u64().unwrap_or(0) + by.as_u64().unwrap_or(0);
            *v = json!(sum);
        };
        for k in ["usageCoreNanoSeconds", "usageNanoCores"] {
            if !container["cpu"][k].is_null() {
                add(&mut p["cpu"][k], &container["cpu"][k]);
            }
        }
        for k in ["usageBytes", "workingSetBytes", "rssBytes", "pageFaults", "majorPageFaults"] {
            add(&mut p["memory"][k], &container["memory"][k]);
        }
        add(&mut p["process_stats"]["process_count"], &json!(c.processes));
        if started.as_str() < p["startTime"].as_str().unwrap_or_default() {
            p["startTime"] = json!(started);
        }
        if let Some(list) = p["containers"].as_array_mut() {
            list.push(container);
        }
    }
    json!({"node": n, "pods": pods})
}

/// When the host booted (`btime` of /proc/stat), RFC 3339.
fn boot_time() -> Option<String> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: i64 = stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    Some(jiff::Timestamp::from_second(secs).ok()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0: 5000      40    2    0    0     0          0         0     7000      50    3    0    0     0       0          0
";

    #[test]
    fn net_dev_is_read_without_loopback() {
        let i = parse_net_dev(NET_DEV);
        assert_eq!(
            i,
            vec![Interface {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_errors: 2,
                tx_bytes: 7000,
                tx_errors: 3
            }]
        );
        let v = network_json("t", &i, "eth0").unwrap();
        assert_eq!(v["name"], "eth0");
        assert_eq!(v["rxBytes"], 5000);
        assert_eq!(v["interfaces"][0]["txErrors"], 3);
        assert!(network_json("t", &[], "eth0").is_none());
    }

    #[test]
    fn the_summary_of_the_host_has_upstreams_shape() {
        let d = std::env::temp_dir();
        let cur = super::super::usage::sample_host_only();
        let s = summary("n1", None, &cur, &Paths { nodefs: &d, imagefs: &d });
        let n = &s["node"];
        assert_eq!(n["nodeName"], "n1");
        assert!(n["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap() > 0, "{n}");
        assert!(n["cpu"]["usageNanoCores"].is_null(), "no rate from one sample");
        assert!(n["memory"]["workingSetBytes"].as_u64().unwrap() > 0, "{n}");
        assert!(n["memory"]["availableBytes"].as_u64().unwrap() > 0, "{n}");
        assert!(n["fs"]["capacityBytes"].as_u64().unwrap() > 0, "{n}");
        assert!(n["runtime"]["imageFs"]["inodes"].as_u64().unwrap() > 0, "{n}");
        assert!(n["rlimit"]["maxpid"].as_u64().unwrap() >= 1000, "{n}");
        assert!(n["startTime"].as_str().unwrap().ends_with('Z'), "{n}");
        assert_eq!(s["pods"], json!([]));
    }
}
