//! The objects a simulated node writes: its Node (labels, capacity, addresses, node info,
//! conditions), its Lease, and the fake addresses it hands out. No I/O.

use serde_json::{json, Value};

/// Namespace of the node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// `leaseDurationSeconds` of a node lease (upstream kubelet default).
pub const LEASE_DURATION_SECONDS: i64 = 40;
/// Node annotation that stops a simulated node's heartbeats (lease and status).
pub const STOP_HEARTBEAT_ANNOTATION: &str = "capstan.io/sim-stop-heartbeat";
/// Kubelet version every simulated node reports.
pub const KUBELET_VERSION: &str = "v1.34.0-capstan";

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

/// Seconds-precision RFC 3339 time (`metav1.Time`).
pub fn time(ts: jiff::Timestamp) -> String {
    jiff::Timestamp::from_second(ts.as_second()).unwrap_or(ts).to_string()
}

/// Microsecond-precision RFC 3339 time (`metav1.MicroTime`), e.g.
/// `2025-01-02T03:04:05.123456Z`.
pub fn micro_time(ts: jiff::Timestamp) -> String {
    let secs = jiff::Timestamp::from_second(ts.as_second()).unwrap_or(ts).to_string();
    let base = secs.strip_suffix('Z').unwrap_or(&secs);
    format!("{base}.{:06}Z", ts.subsec_microsecond())
}

/// The well-known labels every node carries (as the kubelet sets them).
pub fn node_labels(name: &str) -> Value {
    json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
    })
}

/// The labels of a simulated node: a node's, and `capstan.io/sim-node`.
fn labels(name: &str) -> Value {
    let mut l = node_labels(name);
    l["capstan.io/sim-node"] = json!("true");
    l
}

/// One node condition as the kubelet posts it: (type, status, reason, message).
const CONDITIONS: [(&str, &str, &str, &str); 4] = [
    ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
];

/// The conditions a healthy node posts at `now`; a condition whose status is unchanged
/// from `current` (the node as last seen) keeps its lastTransitionTime.
pub fn conditions(now: &str, current: Option<&Value>) -> Value {
    conditions_with(now, None, current)
}

/// The conditions a node posts at `now`: healthy, or with `not_ready` as the message of a
/// Ready=False condition (a node that cannot run containers); transition times are kept
/// while a condition's status holds.
pub fn conditions_with(now: &str, not_ready: Option<&str>, current: Option<&Value>) -> Value {
    let existing =
        current.and_then(|n| n.get("status")).and_then(|s| s.get("conditions")).and_then(Value::as_array);
    let list: Vec<Value> = CONDITIONS
        .iter()
        .map(|&(type_, status, reason, message)| {
            let (status, reason, message) = match not_ready {
                Some(why) if type_ == "Ready" => ("False", "KubeletNotReady", why),
                _ => (status, reason, message),
            };
            let transition = existing
                .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(type_)))
                .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
                .and_then(|c| c.get("lastTransitionTime").and_then(Value::as_str))
                .unwrap_or(now);
            json!({
                "type": type_, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": transition,
            })
        })
        .collect();
    Value::Array(list)
}

/// Whether a node object (as cached) shows the conditions a healthy simulated node posts
/// (statuses only; timestamps are the heartbeat's business).
pub fn conditions_healthy(node: &Value) -> bool {
    let Some(cs) = node.get("status").and_then(|s| s.get("conditions")).and_then(Value::as_array) else {
        return false;
    };
    CONDITIONS.iter().all(|(type_, status, ..)| {
        cs.iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some(type_)
                && c.get("status").and_then(Value::as_str) == Some(status)
        })
    })
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
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"podCIDR": pod_cidr(i), "podCIDRs": [pod_cidr(i)]},
        "status": node_status(i, name, now, None),
    })
}

/// The merge patch that adopts an existing Node object: our labels and spec fields (the
/// status goes through the status subresource).
pub fn adopt_patch(i: usize, name: &str) -> Value {
    json!({
        "metadata": {"labels": labels(name)},
        "spec": {"podCIDR": pod_cidr(i), "podCIDRs": [pod_cidr(i)]},
    })
}

/// A new Lease for node `name` (owned by the Node with `node_uid`).
pub fn lease_object(name: &str, node_uid: Option<&str>, renew: &str) -> Value {
    let mut lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": renew},
    });
    if let Some(uid) = node_uid.filter(|u| !u.is_empty()) {
        lease["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}]);
    }
    lease
}

/// The merge patch that renews a lease.
pub fn lease_renewal(name: &str, renew: &str) -> Value {
    json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": renew}})
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
    fn micro_time_has_microseconds() {
        let ts: jiff::Timestamp = "2025-01-02T03:04:05.123456789Z".parse().unwrap();
        assert_eq!(micro_time(ts), "2025-01-02T03:04:05.123456Z");
        assert_eq!(time(ts), "2025-01-02T03:04:05Z");
    }

    #[test]
    fn conditions_keep_transition_times() {
        let old = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"},
            {"type": "MemoryPressure", "status": "Unknown", "lastTransitionTime": "2020-01-01T00:00:00Z"},
        ]}});
        let cs = conditions("2025-01-01T00:00:00Z", Some(&old));
        let get = |t: &str| cs.as_array().unwrap().iter().find(|c| c["type"] == t).unwrap().clone();
        assert_eq!(get("Ready")["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(get("MemoryPressure")["lastTransitionTime"], "2025-01-01T00:00:00Z");
        assert_eq!(get("Ready")["lastHeartbeatTime"], "2025-01-01T00:00:00Z");
        assert!(!conditions_healthy(&old));
        assert!(conditions_healthy(&json!({"status": {"conditions": cs}})));
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
