//! PodDisruptionBudget rules shared by the disruption controller, the eviction subresource
//! and the scheduler's preemption (upstream's `pkg/controller/disruption`,
//! `pkg/registry/core/pod/storage/eviction.go` and `pkg/apis/policy`).

use crate::selectors::LabelSelector;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The message of a 429 from the eviction subresource, word for word upstream's.
pub const VIOLATION_MESSAGE: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// `StatusCause.type` of the cause attached to that 429.
pub const DISRUPTION_BUDGET_CAUSE: &str = "DisruptionBudget";

/// How long an eviction recorded in `status.disruptedPods` keeps its pod out of the
/// healthy count while the pod is not yet deleting (upstream's `DeletionTimeout`).
pub const DELETION_TIMEOUT_SECONDS: i64 = 120;

/// The pod condition eviction and preemption add before deleting a pod.
pub const DISRUPTION_TARGET: &str = "DisruptionTarget";

/// The labels of an object.
pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

/// Whether `pdb` covers `pod`: same namespace, and the selector matches the pod's labels.
/// In `policy/v1` an empty selector selects every pod of the namespace and a missing one
/// selects none.
pub fn selects(pdb: &Value, pod: &Value) -> bool {
    if pdb["metadata"]["namespace"] != pod["metadata"]["namespace"] {
        return false;
    }
    let sel = &pdb["spec"]["selector"];
    if sel.is_null() {
        return false;
    }
    LabelSelector::from_label_selector_json(sel).is_ok_and(|s| s.matches(&labels(pod)))
}

/// Whether the pod's `Ready` condition is `True` (upstream's `IsPodReady`, the PDB's
/// notion of healthy).
pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Whether the pod carries a deletionTimestamp.
pub fn deleting(obj: &Value) -> bool {
    !obj["metadata"]["deletionTimestamp"].is_null()
}

/// An int-or-percent: `(value, is_percent)`.
pub fn int_or_percent(v: &Value) -> Option<(i64, bool)> {
    match v {
        Value::String(s) => match s.strip_suffix('%') {
            Some(n) => n.parse().ok().map(|n| (n, true)),
            None => s.parse().ok().map(|n| (n, false)),
        },
        n => n.as_i64().map(|n| (n, false)),
    }
}

/// Upstream's `GetScaledValueFromIntOrPercent(v, total, roundUp=true)`.
pub fn scaled(v: &Value, total: i64) -> Option<i64> {
    let (n, pct) = int_or_percent(v)?;
    Some(if pct { (n * total + 99) / 100 } else { n })
}

/// Whether computing the budget needs the scale of the pods' controllers (maxUnavailable,
/// or minAvailable as a percent); otherwise the expected count is the number of pods.
pub fn needs_scale(pdb: &Value) -> bool {
    let spec = &pdb["spec"];
    if !spec["maxUnavailable"].is_null() {
        return true;
    }
    matches!(int_or_percent(&spec["minAvailable"]), Some((_, true)))
}

/// `(expectedPods, desiredHealthy)` given the pods the budget selects and, when
/// [`needs_scale`], the summed scale of their controllers.
pub fn expected_and_desired(pdb: &Value, pods: i64, scale: Option<i64>) -> (i64, i64) {
    let spec = &pdb["spec"];
    if !spec["maxUnavailable"].is_null() {
        let expected = scale.unwrap_or(0);
        let max = scaled(&spec["maxUnavailable"], expected).unwrap_or(0);
        return (expected, (expected - max).max(0));
    }
    match int_or_percent(&spec["minAvailable"]) {
        Some((n, false)) => (pods, n),
        Some((_, true)) => {
            let expected = scale.unwrap_or(0);
            (expected, scaled(&spec["minAvailable"], expected).unwrap_or(0))
        }
        None => (pods, 0),
    }
}

/// The `DisruptionAllowed` condition for `allowed` disruptions, keeping the transition
/// time of `old` conditions when the status does not change (as `meta.SetStatusCondition`).
pub fn conditions(old: &Value, allowed: i64, generation: i64, now: &str) -> Value {
    conditions_with(
        old,
        allowed > 0,
        if allowed > 0 { "SufficientPods" } else { "InsufficientPods" },
        "",
        generation,
        now,
    )
}

/// The `DisruptionAllowed` condition with an explicit reason and message (`SyncFailed`).
pub fn conditions_with(
    old: &Value,
    ok: bool,
    reason: &str,
    message: &str,
    generation: i64,
    now: &str,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let mut out: Vec<Value> = old
        .as_array()
        .map(|cs| cs.iter().filter(|c| c["type"] != "DisruptionAllowed").cloned().collect())
        .unwrap_or_default();
    let prev = old.as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionAllowed"));
    let since = match prev {
        Some(p) if p["status"] == status => p["lastTransitionTime"].as_str().unwrap_or(now).to_string(),
        _ => now.to_string(),
    };
    out.push(json!({
        "type": "DisruptionAllowed",
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }));
    Value::Array(out)
}

/// The `DisruptionTarget` condition the eviction subresource adds to a pod.
pub fn disruption_target(reason: &str, message: &str, now: &str) -> Value {
    json!({
        "type": DISRUPTION_TARGET,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
    })
}

/// Sets (or replaces) the condition of `cond`'s type in `pod.status.conditions`.
pub fn set_pod_condition(pod: &mut Value, cond: Value) {
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    let t = cond["type"].clone();
    let cs = pod["status"]
        .as_object_mut()
        .map(|s| s.entry("conditions").or_insert_with(|| json!([])))
        .and_then(Value::as_array_mut);
    if let Some(cs) = cs {
        match cs.iter_mut().find(|c| c["type"] == t) {
            Some(c) if c["status"] == cond["status"] && c["reason"] == cond["reason"] => {}
            Some(c) => *c = cond,
            None => cs.push(cond),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(spec: Value) -> Value {
        json!({"metadata": {"namespace": "a", "name": "b"}, "spec": spec})
    }

    #[test]
    fn selection_follows_policy_v1() {
        let pod = json!({"metadata": {"namespace": "a", "labels": {"app": "web"}}});
        assert!(selects(&pdb(json!({"selector": {"matchLabels": {"app": "web"}}})), &pod));
        assert!(!selects(&pdb(json!({"selector": {"matchLabels": {"app": "db"}}})), &pod));
        assert!(selects(&pdb(json!({"selector": {}})), &pod), "empty selects all");
        assert!(!selects(&pdb(json!({})), &pod), "missing selects none");
        let other = json!({"metadata": {"namespace": "z", "labels": {"app": "web"}}});
        assert!(!selects(&pdb(json!({"selector": {}})), &other));
    }

    #[test]
    fn budgets_as_upstream() {
        assert_eq!(expected_and_desired(&pdb(json!({"minAvailable": 2})), 3, None), (3, 2));
        assert_eq!(expected_and_desired(&pdb(json!({"minAvailable": "50%"})), 3, Some(3)), (3, 2));
        assert_eq!(expected_and_desired(&pdb(json!({"maxUnavailable": 1})), 3, Some(4)), (4, 3));
        assert_eq!(expected_and_desired(&pdb(json!({"maxUnavailable": "30%"})), 3, Some(4)), (4, 2));
        assert_eq!(expected_and_desired(&pdb(json!({"maxUnavailable": 9})), 3, Some(4)), (4, 0));
        assert!(needs_scale(&pdb(json!({"maxUnavailable": 1}))));
        assert!(!needs_scale(&pdb(json!({"minAvailable": 1}))));
    }

    #[test]
    fn condition_keeps_transition_time() {
        let c = conditions(&Value::Null, 1, 1, "t1");
        assert_eq!(c[0]["reason"], "SufficientPods");
        let c2 = conditions(&c, 2, 2, "t2");
        assert_eq!(c2[0]["lastTransitionTime"], "t1");
        let c3 = conditions(&c2, 0, 2, "t3");
        assert_eq!(
            (c3[0]["status"].as_str(), c3[0]["lastTransitionTime"].as_str()),
            (Some("False"), Some("t3"))
        );
    }
}
