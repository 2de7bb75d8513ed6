//! Pods: `Pending` with a QoS class on create; a DELETE of a pod running on a node is
//! graceful (the node agent stops it and then removes it).

use super::{Deletion, Strategy};
use crate::service::DeleteOptions;
use serde_json::{json, Value};

/// The strategy of Pods.
pub struct PodStrategy;

impl Strategy for PodStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Pending", "qosClass": qos_class(obj)});
    }

    fn deletion(&self, obj: &Value, opts: &DeleteOptions) -> Deletion {
        let bound = obj["spec"].get("nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        let finished = obj["status"]
            .get("phase")
            .and_then(Value::as_str)
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if !bound || finished || opts.grace_period_seconds == Some(0) {
            return Deletion::Immediate;
        }
        let grace = opts
            .grace_period_seconds
            .or_else(|| obj["spec"].get("terminationGracePeriodSeconds").and_then(Value::as_i64))
            .unwrap_or(30);
        Deletion::Graceful(grace)
    }
}

/// The pod's QoS class, as upstream's `GetPodQOS`.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers = pod["spec"].get("containers").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.get("resources").and_then(|r| r.get("requests")).and_then(Value::as_object);
        let lim = c.get("resources").and_then(|r| r.get("limits")).and_then(Value::as_object);
        if req.is_some_and(|m| !m.is_empty()) || lim.is_some_and(|m| !m.is_empty()) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|m| m.get(r));
            let q = req.and_then(|m| m.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed && !containers.is_empty() {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos() {
        let best = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(qos_class(&best), "BestEffort");
        let g = json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}});
        assert_eq!(qos_class(&g), "Guaranteed");
        let b = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}});
        assert_eq!(qos_class(&b), "Burstable");
    }

    #[test]
    fn graceful_only_when_running_on_a_node() {
        let s = PodStrategy;
        let o = DeleteOptions::default();
        let pending = json!({"spec": {}, "status": {"phase": "Pending"}});
        assert_eq!(s.deletion(&pending, &o), Deletion::Immediate);
        let bound = json!({"spec": {"nodeName": "n", "terminationGracePeriodSeconds": 7}, "status": {"phase": "Running"}});
        assert_eq!(s.deletion(&bound, &o), Deletion::Graceful(7));
        let now = DeleteOptions { grace_period_seconds: Some(0), ..Default::default() };
        assert_eq!(s.deletion(&bound, &now), Deletion::Immediate);
        let done = json!({"spec": {"nodeName": "n"}, "status": {"phase": "Succeeded"}});
        assert_eq!(s.deletion(&done, &o), Deletion::Immediate);
    }
}
