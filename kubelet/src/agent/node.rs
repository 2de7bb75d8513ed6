//! The node's own objects: its Node (capacity and allocatable read from the host,
//! addresses, node info, conditions) and its Lease.

use capstan_actors::nodeobjects::{node_labels as labels, time, KUBELET_VERSION};
use serde_json::{json, Value};

/// What the host offers, read once at start.
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// Logical CPUs.
    pub cpus: usize,
    /// Memory in bytes (MemTotal).
    pub memory_bytes: u64,
    /// The address other nodes and the gateway reach this node at.
    pub internal_ip: String,
    /// `uname -r`.
    pub kernel: String,
    /// PRETTY_NAME from /etc/os-release.
    pub os_image: String,
    /// /etc/machine-id.
    pub machine_id: String,
    /// The kernel's boot id.
    pub boot_id: String,
    /// The runtime's version string (`runc://1.1.5`).
    pub runtime_version: String,
    /// The pressure the eviction manager sees now (shared, updated every period).
    pub pressure: std::sync::Arc<std::sync::Mutex<super::eviction::Pressure>>,
    /// The image store `status.images` lists (none before the runtime is set up).
    pub images: Images,
}

/// The image store whose images the Node lists in `status.images`.
#[derive(Clone, Default)]
pub struct Images(pub Option<crate::image::ImageStore>);

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Images(store)" } else { "Images(none)" })
    }
}

impl Images {
    /// `status.images`: upstream's 50 largest images, largest first.
    fn status(&self) -> Value {
        json!(self.0.as_ref().map(|s| s.node_images()).unwrap_or_default())
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The first non-loopback IPv4 address of the host's default-route interface, else
/// 127.0.0.1: learnt by "connecting" a UDP socket (no packet is sent).
fn primary_ip() -> String {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| {
        s.connect("192.0.2.1:9")?;
        s.local_addr()
    });
    match probe {
        Ok(addr) if !addr.ip().is_unspecified() => addr.ip().to_string(),
        _ => "127.0.0.1".into(),
    }
}

/// MemTotal of /proc/meminfo in bytes (0 when unreadable).
fn memory_total() -> u64 {
    read_trimmed("/proc/meminfo")
        .and_then(|m| {
            m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| {
                l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).map(|kb| kb * 1024)
            })
        })
        .unwrap_or(0)
}

/// What the node reports allocatable of a resource (`cpu` in thousandths, `memory` and
/// `ephemeral-storage` in bytes), as [`node_status`] computes it: what a container
/// without a limit may use (upstream fills unset limits with it for the downward API).
pub fn allocatable_milli(resource: &str) -> Option<i64> {
    match resource {
        "cpu" => {
            let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as i64;
            Some((cpus * 1000 - 100).max(0))
        }
        "memory" => Some((memory_total() as i64 - 100 * 1024 * 1024).max(0).saturating_mul(1000)),
        "ephemeral-storage" => Some((100i64 << 30) * 1000),
        _ => None,
    }
}

impl HostInfo {
    /// Reads the host.
    pub fn read(runtime_version: &str) -> HostInfo {
        let memory_bytes = memory_total();
        let os_image = read_trimmed("/etc/os-release")
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| "Linux".into());
        HostInfo {
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_bytes,
            internal_ip: primary_ip(),
            kernel: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
            os_image,
            machine_id: read_trimmed("/etc/machine-id").unwrap_or_default(),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default().replace('-', ""),
            runtime_version: runtime_version.to_string(),
            pressure: Default::default(),
            images: Images::default(),
        }
    }
}

/// Why the node cannot run pods, if it cannot (shown in the Ready condition).
pub type NotReady = Option<String>;

/// The node conditions, keeping each condition's transition time while its status holds.
pub fn conditions(now: &str, not_ready: &NotReady, current: Option<&Value>) -> Value {
    capstan_actors::nodeobjects::conditions_with(now, not_ready.as_deref(), current)
}

/// The conditions with MemoryPressure / DiskPressure / PIDPressure set as `pressure` says (upstream's
/// reasons and messages), each keeping its transition time while its status holds.
pub fn with_pressure(
    mut conditions: Value,
    pressure: super::eviction::Pressure,
    now: &str,
    current: Option<&Value>,
) -> Value {
    let before = |type_: &str| {
        current?["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).cloned()
    };
    for c in conditions.as_array_mut().into_iter().flatten() {
        let (on, reason, message) = match c["type"].as_str() {
            Some("MemoryPressure") if pressure.memory => {
                (true, "KubeletHasInsufficientMemory", "kubelet has insufficient memory available")
            }
            Some("DiskPressure") if pressure.disk => {
                (true, "KubeletHasDiskPressure", "kubelet has disk pressure")
            }
            Some("PIDPressure") if pressure.pid => {
                (true, "KubeletHasInsufficientPID", "kubelet has insufficient PID available")
            }
            _ => continue,
        };
        if on {
            c["status"] = json!("True");
            c["reason"] = json!(reason);
            c["message"] = json!(message);
            let since = before(c["type"].as_str().unwrap_or_default())
                .filter(|b| b["status"] == "True")
                .and_then(|b| b["lastTransitionTime"].as_str().map(str::to_string))
                .unwrap_or_else(|| now.to_string());
            c["lastTransitionTime"] = json!(since);
        }
    }
    conditions
}

/// The node's status.
pub fn node_status(name: &str, host: &HostInfo, not_ready: &NotReady, current: Option<&Value>) -> Value {
    let now = time(jiff::Timestamp::now());
    let memory_ki = host.memory_bytes / 1024;
    // Keep 100 MiB and a tenth of a CPU for the system, as a kubelet's reservations would.
    let alloc_memory_ki = memory_ki.saturating_sub(100 * 1024);
    let alloc_cpu_milli = (host.cpus as u64 * 1000).saturating_sub(100);
    json!({
        "capacity": {
            "cpu": host.cpus.to_string(), "memory": format!("{memory_ki}Ki"), "pods": "110",
            "ephemeral-storage": "100Gi", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
        },
        "allocatable": {
            "cpu": format!("{alloc_cpu_milli}m"), "memory": format!("{alloc_memory_ki}Ki"), "pods": "110",
            "ephemeral-storage": "100Gi", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
        },
        "addresses": [
            {"type": "InternalIP", "address": host.internal_ip},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": host.machine_id,
            "systemUUID": host.machine_id,
            "bootID": host.boot_id,
            "kernelVersion": host.kernel,
            "osImage": host.os_image,
            "containerRuntimeVersion": host.runtime_version,
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
        "images": host.images.status(),
        "conditions": with_pressure(
            conditions(&now, not_ready, current),
            *host.pressure.lock().unwrap_or_else(|e| e.into_inner()),
            &now,
            current,
        ),
    })
}

/// A new Node object.
///
/// `local_path_root`: where this node keeps local-path volumes (the provisioner reads it
/// from the `capstan.io/local-path-root` annotation).
pub fn node_object(
    name: &str,
    pod_cidr: &str,
    host: &HostInfo,
    not_ready: &NotReady,
    local_path_root: &str,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels(name),
            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                            capstan_actors::volumes::ANN_LOCAL_PATH_ROOT: local_path_root},
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": node_status(name, host, not_ready, None),
    })
}

/// The patch that adopts an existing Node object (after a restart).
pub fn adopt_patch(name: &str, pod_cidr: &str, local_path_root: &str) -> Value {
    json!({"metadata": {"labels": labels(name),
                        "annotations": {capstan_actors::volumes::ANN_LOCAL_PATH_ROOT: local_path_root}},
           "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_conditions() {
        let h = HostInfo::read("runc://1.1.5");
        assert!(h.cpus >= 1);
        assert!(h.memory_bytes > 0);
        let st = node_status("n", &h, &Some("runc is not installed".into()), None);
        let ready = st["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["message"], "runc is not installed");
        let st2 = node_status("n", &h, &None, Some(&json!({"status": st})));
        let ready2 = st2["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready2["status"], "True");
        *h.pressure.lock().unwrap() =
            crate::agent::eviction::Pressure { memory: true, disk: false, pid: true };
        let st3 = node_status("n", &h, &None, Some(&json!({"status": st2})));
        let get = |st: &Value, t: &str| {
            st["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).cloned().unwrap()
        };
        assert_eq!(get(&st3, "MemoryPressure")["status"], "True");
        assert_eq!(get(&st3, "MemoryPressure")["reason"], "KubeletHasInsufficientMemory");
        assert_eq!(get(&st3, "DiskPressure")["status"], "False");
        assert_eq!(get(&st3, "PIDPressure")["status"], "True");
        assert_eq!(get(&st3, "PIDPressure")["reason"], "KubeletHasInsufficientPID");
    }
}
