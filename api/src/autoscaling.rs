//! HorizontalPodAutoscaler conversion between `autoscaling/v2` (the stored version) and
//! `autoscaling/v1`, as upstream's `pkg/apis/autoscaling/v1/conversion.go`: v1 has only a
//! CPU utilization target (`targetCPUUtilizationPercentage`) and its current value; what v1
//! cannot say travels in annotations — the other metrics
//! (`autoscaling.alpha.kubernetes.io/metrics`), `behavior`
//! (`autoscaling.alpha.kubernetes.io/behavior`) and the conditions
//! (`autoscaling.alpha.kubernetes.io/conditions`) — so a v1 read-modify-write keeps them.

use serde_json::{json, Map, Value};

const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";

fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["type"] == "Utilization"
}

fn annotations(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if !obj["metadata"]["annotations"].is_object() {
        obj["metadata"]["annotations"] = json!({});
    }
    obj["metadata"]["annotations"].as_object_mut().expect("an object")
}

fn drop_empty_annotations(obj: &mut Value) {
    if obj["metadata"]["annotations"].as_object().is_some_and(Map::is_empty) {
        if let Some(md) = obj["metadata"].as_object_mut() {
            md.remove("annotations");
        }
    }
}

/// A stored (v2) autoscaler as `autoscaling/v1` shows it.
pub fn v2_to_v1(v2: &Value) -> Value {
    let spec = &v2["spec"];
    let metrics = spec["metrics"].as_array().cloned().unwrap_or_default();
    let cpu = metrics.iter().find(|m| is_cpu_utilization(m));
    let others: Vec<Value> = metrics.iter().filter(|m| !is_cpu_utilization(m)).cloned().collect();
    let mut out = json!({
        "apiVersion": "autoscaling/v1",
        "kind": "HorizontalPodAutoscaler",
        "metadata": v2["metadata"].clone(),
        "spec": {
            "scaleTargetRef": spec["scaleTargetRef"].clone(),
            "maxReplicas": spec["maxReplicas"].clone(),
        },
        "status": {
            "currentReplicas": v2["status"]["currentReplicas"].as_i64().unwrap_or(0),
            "desiredReplicas": v2["status"]["desiredReplicas"].as_i64().unwrap_or(0),
        },
    });
    if let Some(m) = spec.get("minReplicas").filter(|m| !m.is_null()) {
        out["spec"]["minReplicas"] = m.clone();
    }
    if let Some(u) = cpu.and_then(|m| m["resource"]["target"]["averageUtilization"].as_i64()) {
        out["spec"]["targetCPUUtilizationPercentage"] = json!(u);
    }
    for key in ["observedGeneration", "lastScaleTime"] {
        if let Some(v) = v2["status"].get(key).filter(|v| !v.is_null()) {
            out["status"][key] = v.clone();
        }
    }
    let current = v2["status"]["currentMetrics"].as_array().cloned().unwrap_or_default();
    if let Some(u) = current
        .iter()
        .find(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")
        .and_then(|m| m["resource"]["current"]["averageUtilization"].as_i64())
    {
        out["status"]["currentCPUUtilizationPercentage"] = json!(u);
    }
    let a = annotations(&mut out);
    for k in [METRICS, BEHAVIOR, CONDITIONS, CURRENT_METRICS] {
        a.remove(k);
    }
    if !others.is_empty() {
        a.insert(METRICS.into(), json!(Value::Array(others).to_string()));
    }
    if let Some(b) = spec.get("behavior").filter(|b| b.is_object()) {
        a.insert(BEHAVIOR.into(), json!(b.to_string()));
    }
    if let Some(c) = v2["status"].get("conditions").filter(|c| c.as_array().is_some_and(|c| !c.is_empty())) {
        a.insert(CONDITIONS.into(), json!(c.to_string()));
    }
    if !current.is_empty() {
        a.insert(CURRENT_METRICS.into(), json!(Value::Array(current).to_string()));
    }
    drop_empty_annotations(&mut out);
    out
}

/// An `autoscaling/v1` autoscaler in the stored version.
pub fn v1_to_v2(v1: &Value) -> Value {
    let spec = &v1["spec"];
    let mut md = v1["metadata"].clone();
    let ann = |k: &str| -> Option<Value> {
        md["annotations"][k].as_str().and_then(|s| serde_json::from_str(s).ok())
    };
    let mut metrics: Vec<Value> = Vec::new();
    if let Some(u) = spec["targetCPUUtilizationPercentage"].as_i64() {
        metrics.push(json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": u}}}));
    }
    if let Some(Value::Array(others)) = ann(METRICS) {
        metrics.extend(others);
    }
    let behavior = ann(BEHAVIOR);
    let conditions = ann(CONDITIONS);
    let current = ann(CURRENT_METRICS);
    let mut out = json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": Value::Null,
        "spec": {
            "scaleTargetRef": spec["scaleTargetRef"].clone(),
            "maxReplicas": spec["maxReplicas"].clone(),
        },
    });
    if let Some(a) = md.get_mut("annotations").and_then(Value::as_object_mut) {
        for k in [METRICS, BEHAVIOR, CONDITIONS, CURRENT_METRICS] {
            a.remove(k);
        }
    }
    out["metadata"] = md;
    drop_empty_annotations(&mut out);
    if let Some(m) = spec.get("minReplicas").filter(|m| !m.is_null()) {
        out["spec"]["minReplicas"] = m.clone();
    }
    if !metrics.is_empty() {
        out["spec"]["metrics"] = Value::Array(metrics);
    }
    if let Some(b) = behavior {
        out["spec"]["behavior"] = b;
    }
    if let Some(st) = v1.get("status").filter(|s| s.is_object()) {
        let mut s = json!({
            "currentReplicas": st["currentReplicas"].as_i64().unwrap_or(0),
            "desiredReplicas": st["desiredReplicas"].as_i64().unwrap_or(0),
        });
        for key in ["observedGeneration", "lastScaleTime"] {
            if let Some(v) = st.get(key).filter(|v| !v.is_null()) {
                s[key] = v.clone();
            }
        }
        if let Some(c) = conditions {
            s["conditions"] = c;
        }
        if let Some(c) = current {
            s["currentMetrics"] = c;
        }
        out["status"] = s;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_v1() {
        let v2 = json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "h", "namespace": "d"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
                "minReplicas": 1,
                "maxReplicas": 3,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "10Mi"}}}
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}}
            },
            "status": {
                "currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 90, "averageValue": "90m"}}}],
                "conditions": [{"type": "AbleToScale", "status": "True"}]
            }
        });
        let v1 = v2_to_v1(&v2);
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 90);
        assert!(v1["spec"].get("metrics").is_none());
        assert_eq!(v1_to_v2(&v1), v2);
        // A plain v1 object.
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "w"}, "maxReplicas": 2, "targetCPUUtilizationPercentage": 60}});
        let v2 = v1_to_v2(&v1);
        assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60);
        assert!(v2.get("status").is_none());
        assert!(v2["metadata"].get("annotations").is_none());
    }
}
