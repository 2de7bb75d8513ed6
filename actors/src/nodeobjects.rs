//! The Node and Lease objects a node agent writes, shared by the real node agent
//! (`capstan-kubelet`) and the simulated nodes ([`crate::simnodes`]): the well-known node
//! labels, node conditions, the node Lease and its renewal, and the API time formats.
//! No I/O.

use serde_json::{json, Value};

/// Namespace of the node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// `leaseDurationSeconds` of a node lease (upstream kubelet default).
pub const LEASE_DURATION_SECONDS: i64 = 40;
/// Kubelet version every node agent (real or simulated) reports.
pub const KUBELET_VERSION: &str = "v1.36.0-capstan";

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

/// Whether a node object (as cached) shows the conditions a healthy node posts
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
}
