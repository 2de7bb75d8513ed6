//! Resource quota accounting, as upstream's quota evaluators (`pkg/quota/v1/evaluator`):
//! what one object charges to a `ResourceQuota`, which quotas' scopes cover it, and the
//! quantities in the form `status.used` shows.
//!
//! Shared by the API service's ResourceQuota admission (charging at create, in the
//! object's own transaction) and the quota controller (recounting `status.used` as objects
//! come and go). Amounts are kept in thousandths (milli-units) so CPU and memory add up
//! exactly.

use crate::quantity::parse_milli;
use serde_json::Value;
use std::collections::BTreeMap;

/// Amounts per quota resource name, in milli-units.
pub type Usage = BTreeMap<String, i64>;

/// The compute resources of a pod a quota may limit; a pod must state each one its
/// namespace's quota limits ("must specify").
const COMPUTE: &[&str] = &[
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
];

/// The legacy object-count names (`pods`, `services`...) of core resources.
fn legacy_count(group: &str, plural: &str) -> Option<&'static str> {
    if !group.is_empty() {
        return None;
    }
    Some(match plural {
        "pods" => "pods",
        "services" => "services",
        "configmaps" => "configmaps",
        "secrets" => "secrets",
        "persistentvolumeclaims" => "persistentvolumeclaims",
        "replicationcontrollers" => "replicationcontrollers",
        "resourcequotas" => "resourcequotas",
        _ => return None,
    })
}

/// The `count/<resource>[.<group>]` name of a resource.
pub fn count_name(group: &str, plural: &str) -> String {
    if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    }
}

/// Whether a pod has ended (Succeeded or Failed): it no longer uses its quota.
pub fn pod_terminal(pod: &Value) -> bool {
    matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// What `obj` (of `group`/`plural`) charges, before scopes. A finished pod charges nothing.
pub fn usage(group: &str, plural: &str, obj: &Value) -> Usage {
    let mut u = Usage::new();
    if group.is_empty() && plural == "pods" && pod_terminal(obj) {
        return u;
    }
    u.insert(count_name(group, plural), 1000);
    if let Some(name) = legacy_count(group, plural) {
        u.insert(name.to_string(), 1000);
    }
    match (group, plural) {
        ("", "pods") => pod_usage(obj, &mut u),
        ("", "services") => {
            let ty = obj["spec"]["type"].as_str().unwrap_or("ClusterIP");
            if ty == "NodePort" || ty == "LoadBalancer" {
                let ports = obj["spec"]["ports"].as_array().map_or(0, Vec::len) as i64;
                u.insert("services.nodeports".into(), ports * 1000);
            }
            if ty == "LoadBalancer" {
                u.insert("services.loadbalancers".into(), 1000);
            }
        }
        ("", "persistentvolumeclaims") => {
            let storage =
                obj["spec"]["resources"]["requests"]["storage"].as_str().and_then(parse_milli).unwrap_or(0);
            u.insert("requests.storage".into(), storage);
            if let Some(class) = obj["spec"]["storageClassName"].as_str().filter(|c| !c.is_empty()) {
                u.insert(format!("{class}.storageclass.storage.k8s.io/requests.storage"), storage);
                u.insert(format!("{class}.storageclass.storage.k8s.io/persistentvolumeclaims"), 1000);
            }
        }
        _ => {}
    }
    u
}

/// A pod's requests and limits: the larger of its containers' (and sidecars') sum and its
/// biggest init container, plus its overhead, as upstream's `PodRequests`/`PodLimits`.
fn pod_usage(pod: &Value, u: &mut Usage) {
    for (kind, prefix) in [("requests", "requests."), ("limits", "limits.")] {
        let mut total: BTreeMap<String, i64> = BTreeMap::new();
        let mut sidecars: BTreeMap<String, i64> = BTreeMap::new();
        let add = |into: &mut BTreeMap<String, i64>, c: &Value| {
            for (r, q) in c["resources"][kind].as_object().into_iter().flatten() {
                *into.entry(r.clone()).or_default() += q.as_str().and_then(parse_milli).unwrap_or(0);
            }
        };
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            add(&mut total, c);
        }
        let mut init_max: BTreeMap<String, i64> = BTreeMap::new();
        for c in pod["spec"]["initContainers"].as_array().into_iter().flatten() {
            if c["restartPolicy"].as_str() == Some("Always") {
                add(&mut sidecars, c);
                continue;
            }
            let mut one = BTreeMap::new();
            add(&mut one, c);
            for (r, v) in one {
                // An init container runs beside the sidecars started before it.
                let with = v + sidecars.get(&r).copied().unwrap_or(0);
                let e = init_max.entry(r).or_default();
                *e = (*e).max(with);
            }
        }
        for (r, v) in sidecars {
            *total.entry(r).or_default() += v;
        }
        for (r, v) in init_max {
            let e = total.entry(r).or_default();
            *e = (*e).max(v);
        }
        for (r, q) in pod["spec"]["overhead"].as_object().into_iter().flatten() {
            *total.entry(r.clone()).or_default() += q.as_str().and_then(parse_milli).unwrap_or(0);
        }
        for (r, v) in total {
            if kind == "requests" && matches!(r.as_str(), "cpu" | "memory" | "ephemeral-storage") {
                u.insert(r.clone(), v);
            }
            u.insert(format!("{prefix}{r}"), v);
        }
    }
}

/// Whether the pod has no requests or limits in any container (the BestEffort QoS class).
fn best_effort(pod: &Value) -> bool {
    ["containers", "initContainers"].iter().all(|list| {
        pod["spec"][list].as_array().into_iter().flatten().all(|c| {
            ["requests", "limits"].iter().all(|k| c["resources"][k].as_object().is_none_or(|m| m.is_empty()))
        })
    })
}

fn scope_matches(scope: &str, operator: &str, values: &[&str], obj: &Value, is_pod: bool) -> bool {
    if !is_pod {
        // Scopes select pods only; a scoped quota does not count other objects.
        return false;
    }
    let terminating = obj["spec"]["activeDeadlineSeconds"].as_i64().is_some_and(|s| s >= 0);
    match scope {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => best_effort(obj),
        "NotBestEffort" => !best_effort(obj),
        "PriorityClass" => {
            let class = obj["spec"]["priorityClassName"].as_str().unwrap_or("");
            match operator {
                "In" => values.contains(&class),
                "NotIn" => !values.contains(&class),
                "Exists" => !class.is_empty(),
                "DoesNotExist" => class.is_empty(),
                _ => false,
            }
        }
        _ => false,
    }
}

/// Whether `quota`'s `scopes` and `scopeSelector` cover `obj` (every one must match).
pub fn covers(quota: &Value, group: &str, plural: &str, obj: &Value) -> bool {
    let is_pod = group.is_empty() && plural == "pods";
    let scopes: Vec<&str> =
        quota["spec"]["scopes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let exprs = quota["spec"]["scopeSelector"]["matchExpressions"].as_array().cloned().unwrap_or_default();
    scopes.iter().all(|s| scope_matches(s, "Exists", &[], obj, is_pod))
        && exprs.iter().all(|e| {
            let values: Vec<&str> =
                e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            scope_matches(
                e["scopeName"].as_str().unwrap_or(""),
                e["operator"].as_str().unwrap_or(""),
                &values,
                obj,
                is_pod,
            )
        })
}

/// The resources of `hard` a pod fails to state ("must specify"): for each limited compute
/// resource, the containers without it.
pub fn unspecified(hard: &Value, pod: &Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for r in hard.as_object().into_iter().flat_map(|m| m.keys()) {
        if !COMPUTE.contains(&r.as_str()) {
            continue;
        }
        let (kind, name) = match r.split_once('.') {
            Some((k, n)) => (k, n),
            None => ("requests", r.as_str()),
        };
        let missing: Vec<String> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["resources"][kind][name].is_null())
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        if !missing.is_empty() {
            out.push((r.clone(), missing));
        }
    }
    out
}

/// Parses a quota amount (`hard` and `used` values) into milli-units.
pub fn parse(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => parse_milli(s),
        Value::Number(n) => n.as_i64().map(|n| n.saturating_mul(1000)),
        _ => None,
    }
}

/// A milli-amount as a quantity: whole units when exact (with a binary suffix for
/// multiples of 1Ki), else `<n>m`.
pub fn format(milli: i64) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let v = milli / 1000;
    for (suffix, unit) in [
        ("Ei", 1i64 << 60),
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if v != 0 && v % unit == 0 {
            return format!("{}{suffix}", v / unit);
        }
    }
    v.to_string()
}

/// The usage of `objects` (of `group`/`plural`) that `quota` covers, for the resources
/// its `hard` names.
pub fn recount<'a>(
    quota: &Value,
    group: &str,
    plural: &str,
    objects: impl Iterator<Item = &'a Value>,
) -> Usage {
    let hard = &quota["spec"]["hard"];
    let mut used = Usage::new();
    for obj in objects {
        if !covers(quota, group, plural, obj) {
            continue;
        }
        for (r, v) in usage(group, plural, obj) {
            if hard.get(&r).is_some() {
                *used.entry(r).or_default() += v;
            }
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: Value) -> Value {
        json!({"spec": {"containers": containers}})
    }

    #[test]
    fn pods_charge_their_requests_and_limits() {
        let p = pod(json!([
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m"}}}
        ]));
        let u = usage("", "pods", &p);
        assert_eq!(u["pods"], 1000);
        assert_eq!(u["count/pods"], 1000);
        assert_eq!(u["requests.cpu"], 500);
        assert_eq!(u["cpu"], 500);
        assert_eq!(u["requests.memory"], 64 * 1024 * 1024 * 1000);
        assert_eq!(u["limits.cpu"], 1000);
        assert_eq!(format(u["requests.memory"]), "64Mi");
        assert_eq!(format(u["requests.cpu"]), "500m");
    }

    #[test]
    fn init_containers_count_by_their_peak_and_sidecars_add_up() {
        let mut p = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "100m"}}}]));
        p["spec"]["initContainers"] = json!([
            {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
            {"name": "big", "resources": {"requests": {"cpu": "500m"}}}
        ]);
        // max(100m + 100m, 500m + 100m) = 600m
        assert_eq!(usage("", "pods", &p)["requests.cpu"], 600);
    }

    #[test]
    fn finished_pods_charge_nothing() {
        let mut p = pod(json!([{"name": "a"}]));
        p["status"] = json!({"phase": "Succeeded"});
        assert!(usage("", "pods", &p).is_empty());
    }

    #[test]
    fn services_and_claims() {
        let s = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]}});
        let u = usage("", "services", &s);
        assert_eq!((u["services"], u["services.nodeports"], u["services.loadbalancers"]), (1000, 2000, 1000));
        let c = json!({"spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}});
        let u = usage("", "persistentvolumeclaims", &c);
        assert_eq!(u["requests.storage"], (1i64 << 30) * 1000);
        assert_eq!(u["fast.storageclass.storage.k8s.io/persistentvolumeclaims"], 1000);
        assert_eq!(usage("apps", "deployments", &json!({}))["count/deployments.apps"], 1000);
    }

    #[test]
    fn scopes_select_pods() {
        let be = pod(json!([{"name": "a"}]));
        let mut burst = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "1"}}}]));
        burst["spec"]["priorityClassName"] = json!("high");
        let q = |spec: Value| json!({"spec": spec});
        assert!(covers(&q(json!({"scopes": ["BestEffort"]})), "", "pods", &be));
        assert!(!covers(&q(json!({"scopes": ["BestEffort"]})), "", "pods", &burst));
        assert!(covers(&q(json!({"scopes": ["NotBestEffort", "NotTerminating"]})), "", "pods", &burst));
        let high = q(json!({"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}));
        assert!(covers(&high, "", "pods", &burst));
        assert!(!covers(&high, "", "pods", &be));
        assert!(covers(&q(json!({"hard": {"pods": "1"}})), "", "configmaps", &json!({})));
        assert!(!covers(&q(json!({"scopes": ["BestEffort"]})), "", "configmaps", &json!({})));
    }

    #[test]
    fn must_specify_names_the_containers() {
        let p = pod(json!([{"name": "a", "resources": {"requests": {"cpu": "1"}}}, {"name": "b"}]));
        let missing = unspecified(&json!({"requests.cpu": "2", "limits.memory": "1Gi", "pods": "3"}), &p);
        assert_eq!(
            missing,
            vec![
                ("limits.memory".to_string(), vec!["a".to_string(), "b".to_string()]),
                ("requests.cpu".to_string(), vec!["b".to_string()])
            ]
        );
    }
}
