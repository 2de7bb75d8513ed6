//! The objects a simulated node writes: its Node (labels, capacity, addresses, node info,
//! conditions) and the fake addresses it hands out; the builders it shares with the real
//! node agent (labels, conditions, Lease) live in [`crate::nodeobjects`]. No I/O.

use crate::nodeobjects::{conditions, node_labels, KUBELET_VERSION};
use serde_json::{json, Value};

/// Where a simulated node says its local-path volumes live (nothing is made there: its
/// pods run without containers, so their volumes are taken as present).
pub const SIM_LOCAL_PATH_ROOT: &str = "/var/lib/capstan-sim/local-path";

/// Node annotation that stops a simulated node's heartbeats (lease and status).
pub const STOP_HEARTBEAT_ANNOTATION: &str = "capstan.io/sim-stop-heartbeat";

/// How many nodes get a distinct pod CIDR (10.128.0.0/10 cut into /24s). Larger
/// simulations reuse CIDRs modulo this.
const POD_CIDRS: usize = 64 * 256;

/// The InternalIP of node `i`: 10.200.0.0/16 upwards, never contacted.
pub fn node_ip(i: usize) -> String {
    let i = i % (250 * 256 * 8);
    format!("10.{}.{}.{}", 200 + i / (250 * 256), (i / 250) % 256, i % 250 + 1)
}

/// The first two octets of node `i`'s /24 pod CIDR as (second, third) octet.
fn pod_net(i: usize) -> (usize, usize) {
    let i = i % POD_CIDRS;
    (128 + i / 256, i % 256)
}

/// The pod CIDR of node `i`.
pub fn pod_cidr(i: usize) -> String {
    let (b, c) = pod_net(i);
    format!("10.{b}.{c}.0/24")
}

/// Pod address `host` (1..=254) of node `i`.
pub fn pod_ip(i: usize, host: u8) -> String {
    let (b, c) = pod_net(i);
    format!("10.{b}.{c}.{host}")
}

/// The host part of `ip` if it lies in node `i`'s pod CIDR.
pub fn pod_host(i: usize, ip: &str) -> Option<u8> {
    let (b, c) = pod_net(i);
    let rest = ip.strip_prefix(&format!("10.{b}.{c}."))?;
    rest.parse::<u8>().ok().filter(|h| (1..=254).contains(h))
}

/// The labels of a simulated node: a node's, and `capstan.io/sim-node`.
fn labels(name: &str) -> Value {
    let mut l = node_labels(name);
    l["capstan.io/sim-node"] = json!("true");
    l
}

/// Whether the stop-heartbeat annotation is set on a node.
pub fn heartbeat_stopped(node: &Value) -> bool {
    node.get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(STOP_HEARTBEAT_ANNOTATION))
        .and_then(Value::as_str)
        == Some("true")
}

/// The full status of node `i` named `name` at `now`.
pub fn node_status(i: usize, name: &str, now: &str, current: Option<&Value>) -> Value {
    let resources = json!({
        "cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi",
        "hugepages-1Gi": "0", "hugepages-2Mi": "0",
    });
    json!({
        "capacity": resources,
        "allocatable": resources,
        "addresses": [
            {"type": "InternalIP", "address": node_ip(i)},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": format!("{i:032x}"),
            "systemUUID": format!("{i:032x}"),
            "bootID": format!("{i:032x}"),
            "kernelVersion": "6.1.0-capstan-sim",
            "osImage": "Capstan Simulated Node",
            "containerRuntimeVersion": "sim://1",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
        "conditions": conditions(now, current),
    })
}

/// A new Node object for node `i`.
pub fn node_object(i: usize, name: &str, now: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels(name),
            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                            crate::volumes::ANN_LOCAL_PATH_ROOT: SIM_LOCAL_PATH_ROOT},
        },
        "spec": {"podCIDR": pod_cidr(i), "podCIDRs": [pod_cidr(i)]},
        "status": node_status(i, name, now, None),
    })
}

/// The merge patch that adopts an existing Node object: our labels and spec fields (the
/// status goes through the status subresource).
pub fn adopt_patch(i: usize, name: &str) -> Value {
    json!({
        "metadata": {"labels": labels(name),
                     "annotations": {crate::volumes::ANN_LOCAL_PATH_ROOT: SIM_LOCAL_PATH_ROOT}},
        "spec": {"podCIDR": pod_cidr(i), "podCIDRs": [pod_cidr(i)]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(node_ip(0), "10.200.0.1");
        assert_eq!(node_ip(250), "10.200.1.1");
        assert_eq!(pod_cidr(0), "10.128.0.0/24");
        assert_eq!(pod_cidr(257), "10.129.1.0/24");
        assert_eq!(pod_ip(1, 7), "10.128.1.7");
        assert_eq!(pod_host(1, "10.128.1.7"), Some(7));
        assert_eq!(pod_host(2, "10.128.1.7"), None);
        assert_eq!(pod_host(1, "10.128.1.255"), None);
        // Node addresses stay distinct for 5,000 nodes and out of the pod range.
        let ips: std::collections::HashSet<String> = (0..5000).map(node_ip).collect();
        assert_eq!(ips.len(), 5000);
        assert!(ips.iter().all(|ip| ip.starts_with("10.200.")));
    }

    #[test]
    fn node_shape() {
        let n = node_object(3, "sim-3", "2025-01-01T00:00:00Z");
        assert_eq!(n["metadata"]["labels"]["kubernetes.io/hostname"], "sim-3");
        assert_eq!(n["status"]["capacity"]["pods"], "110");
        assert_eq!(n["status"]["addresses"][0]["address"], "10.200.0.4");
        assert_eq!(n["status"]["nodeInfo"]["kubeletVersion"], KUBELET_VERSION);
        assert!(!heartbeat_stopped(&n));
        let stopped = json!({"metadata": {"annotations": {STOP_HEARTBEAT_ANNOTATION: "true"}}});
        assert!(heartbeat_stopped(&stopped));
    }
}
