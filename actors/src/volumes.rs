//! Persistent volume rules shared by the binder, the local-path provisioner, the scheduler's
//! volume binding step, the node agent and the simulated nodes: which claims a pod uses,
//! whether a PersistentVolume satisfies a claim, the best match among many (upstream's
//! `findMatchingVolume`), PV node affinity, and the annotations and finalizers of the
//! protocol (upstream's names).
//!
//! Everything here is pure: it reads objects in their JSON form and never panics on bad
//! input (the API validated them; a field of the wrong shape counts as absent).

use crate::scheduler::model::{NodeDef, NodeTerm};
use capstan_api::quantity::parse_value;
use capstan_api::selectors::LabelSelector;
use serde_json::Value;
use std::collections::BTreeMap;

/// The scheduler's choice of node for a WaitForFirstConsumer claim.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The provisioner asked to create a claim's volume.
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// The same, in its beta spelling (still written by upstream).
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// The provisioner that created a PersistentVolume.
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Set on a claim once the binder completed its binding.
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// Set on both sides when the binder (not the user) made the binding.
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// The old annotation naming a claim's or volume's class.
pub const ANN_BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
/// Marks the default StorageClass.
pub const ANN_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// The local-path provisioner's name.
pub const LOCAL_PATH_PROVISIONER: &str = "capstan.io/local-path";
/// The StorageClass capstan creates at start.
pub const LOCAL_PATH_CLASS: &str = "local-path";
/// The Node annotation naming the directory under which the local-path provisioner puts
/// that node's volumes (set by the node agent).
pub const ANN_LOCAL_PATH_ROOT: &str = "capstan.io/local-path-root";
/// The finalizer keeping a claim while a pod uses it.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// The finalizer keeping a volume while it is bound.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
/// The node label the local-path provisioner pins volumes with.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

/// An annotation of an object (`""` when absent).
pub fn annotation<'a>(obj: &'a Value, key: &str) -> &'a str {
    s(obj, &["metadata", "annotations", key])
}

/// `namespace/name` of an object (`name` when cluster-scoped).
pub fn key(obj: &Value) -> String {
    let (ns, name) = (s(obj, &["metadata", "namespace"]), s(obj, &["metadata", "name"]));
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

/// Whether the object has a deletionTimestamp.
pub fn is_deleting(obj: &Value) -> bool {
    obj.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|t| !t.is_null())
}

/// The claim's class: `spec.storageClassName`, else the beta annotation; `None` when the
/// claim names none at all (not even `""`).
pub fn claim_class(claim: &Value) -> Option<&str> {
    if let Some(c) = claim.get("spec").and_then(|s| s.get("storageClassName")).and_then(Value::as_str) {
        return Some(c);
    }
    claim
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(ANN_BETA_CLASS))
        .and_then(Value::as_str)
}

/// The volume's class (`""`: none).
pub fn volume_class(pv: &Value) -> &str {
    let c = s(pv, &["spec", "storageClassName"]);
    if c.is_empty() {
        annotation(pv, ANN_BETA_CLASS)
    } else {
        c
    }
}

/// The storage a claim asks for, in bytes.
pub fn claim_request(claim: &Value) -> i64 {
    parse_value(s(claim, &["spec", "resources", "requests", "storage"])).unwrap_or(0)
}

/// A volume's capacity, in bytes.
pub fn volume_capacity(pv: &Value) -> i64 {
    parse_value(s(pv, &["spec", "capacity", "storage"])).unwrap_or(0)
}

/// `spec.accessModes`.
pub fn access_modes(obj: &Value) -> Vec<&str> {
    obj.get("spec")
        .and_then(|s| s.get("accessModes"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// `spec.volumeMode` (default `Filesystem`).
pub fn volume_mode(obj: &Value) -> &str {
    let m = s(obj, &["spec", "volumeMode"]);
    if m.is_empty() {
        "Filesystem"
    } else {
        m
    }
}

/// The volume's phase (`Pending` when unset).
pub fn phase(obj: &Value) -> &str {
    let p = s(obj, &["status", "phase"]);
    if p.is_empty() {
        "Pending"
    } else {
        p
    }
}

/// `spec.persistentVolumeReclaimPolicy` (default `Retain`).
pub fn reclaim_policy(pv: &Value) -> &str {
    let p = s(pv, &["spec", "persistentVolumeReclaimPolicy"]);
    if p.is_empty() {
        "Retain"
    } else {
        p
    }
}

/// A volume's `claimRef`: (namespace, name, uid).
pub fn claim_ref(pv: &Value) -> Option<(&str, &str, &str)> {
    let r = pv.get("spec")?.get("claimRef")?;
    if !r.is_object() {
        return None;
    }
    Some((s(r, &["namespace"]), s(r, &["name"]), s(r, &["uid"])))
}

/// Whether `pv`'s claimRef names `claim` (same namespace and name, and same uid when the
/// reference carries one): upstream's `IsVolumeBoundToClaim`.
pub fn bound_to_claim(pv: &Value, claim: &Value) -> bool {
    let Some((ns, name, uid)) = claim_ref(pv) else { return false };
    ns == s(claim, &["metadata", "namespace"])
        && name == s(claim, &["metadata", "name"])
        && (uid.is_empty() || uid == s(claim, &["metadata", "uid"]))
}

/// Whether a volume offers every access mode the claim asks for.
pub fn modes_satisfied(pv: &Value, claim: &Value) -> bool {
    let have = access_modes(pv);
    access_modes(claim).iter().all(|m| have.contains(m))
}

fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj.get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

/// Whether the claim's `spec.selector` (if any) matches the volume's labels. A selector
/// that does not parse matches nothing.
pub fn selector_matches(pv: &Value, claim: &Value) -> bool {
    match claim.get("spec").and_then(|s| s.get("selector")) {
        None | Some(Value::Null) => true,
        Some(sel) => LabelSelector::from_label_selector_json(sel).is_ok_and(|sel| sel.matches(&labels(pv))),
    }
}

/// Why a volume cannot serve a claim (upstream's `checkVolumeSatisfyClaim`, for a claim
/// that names the volume): class, volume mode, access modes and capacity.
pub fn check_satisfies(pv: &Value, claim: &Value) -> Result<(), String> {
    let request = claim_request(claim);
    let capacity = volume_capacity(pv);
    if capacity < request {
        return Err("requested PV is too small".into());
    }
    if claim_class(claim).unwrap_or("") != volume_class(pv) {
        return Err("storageClassName does not match".into());
    }
    if volume_mode(pv) != volume_mode(claim) {
        return Err("incompatible volumeMode".into());
    }
    if !modes_satisfied(pv, claim) {
        return Err("incompatible accessMode".into());
    }
    Ok(())
}

/// The volume's required node affinity terms (`None`: the volume is reachable from every
/// node).
pub fn node_terms(pv: &Value) -> Option<Vec<NodeTerm>> {
    let req = pv.get("spec")?.get("nodeAffinity")?.get("required")?;
    let terms = req.get("nodeSelectorTerms")?.as_array()?;
    Some(terms.iter().map(NodeTerm::parse).collect())
}

/// Whether a volume may be used on `node` (its node affinity, if any, matches).
pub fn usable_on(pv: &Value, node: &NodeDef) -> bool {
    node_terms(pv).is_none_or(|terms| terms.iter().any(|t| t.matches(node)))
}

/// A node known by name only, with the hostname label every node carries (enough for
/// the local volumes' `kubernetes.io/hostname In [...]` affinity).
pub fn named_node(name: &str) -> NodeDef {
    let mut labels = BTreeMap::new();
    labels.insert(HOSTNAME_LABEL.to_string(), name.to_string());
    NodeDef {
        name: name.to_string(),
        labels,
        allocatable: Default::default(),
        pods: 0,
        taints: Vec::new(),
        unschedulable: false,
        local_path: false,
    }
}

/// Upstream's `findMatchingVolume`: the volume for `claim` among `volumes`.
///
/// A volume pre-bound to the claim (its claimRef names it) wins if it satisfies the
/// claim. Otherwise the smallest Available, unclaimed volume of the claim's class whose
/// labels match the claim's selector, whose volume mode is the claim's, that offers the
/// claim's access modes and at least its storage. With `node`, only volumes usable on that
/// node count; with `delay_binding` and no node, only pre-bound volumes do (the claim
/// waits for its first consumer).
pub fn find_match<'a>(
    claim: &Value,
    volumes: impl IntoIterator<Item = &'a Value>,
    node: Option<&NodeDef>,
    delay_binding: bool,
) -> Option<&'a Value> {
    let request = claim_request(claim);
    let class = claim_class(claim).unwrap_or("");
    let mut best: Option<(&Value, i64)> = None;
    for pv in volumes {
        if is_deleting(pv) {
            continue;
        }
        if node.is_some_and(|n| !usable_on(pv, n)) {
            continue;
        }
        let capacity = volume_capacity(pv);
        if bound_to_claim(pv, claim) {
            // Pre-bound: the user or the scheduler chose this volume for the claim.
            if check_satisfies(pv, claim).is_ok() {
                return Some(pv);
            }
            continue;
        }
        if node.is_none() && delay_binding {
            continue;
        }
        if phase(pv) != "Available" || claim_ref(pv).is_some() {
            continue;
        }
        if volume_class(pv) != class || volume_mode(pv) != volume_mode(claim) {
            continue;
        }
        if !selector_matches(pv, claim) || !modes_satisfied(pv, claim) || capacity < request {
            continue;
        }
        if best.is_none_or(|(_, c)| capacity < c) {
            best = Some((pv, capacity));
        }
    }
    best.map(|(pv, _)| pv)
}

/// One claim a pod uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodClaim {
    /// The pod's volume name.
    pub volume: String,
    /// The claim's name (`<pod>-<volume>` for an ephemeral volume).
    pub claim: String,
    /// An `ephemeral` volume (the claim must be owned by the pod).
    pub ephemeral: bool,
    /// `persistentVolumeClaim.readOnly`.
    pub read_only: bool,
}

/// The claims of a pod's volumes.
pub fn pod_claims(pod: &Value) -> Vec<PodClaim> {
    let name = s(pod, &["metadata", "name"]);
    let mut out = Vec::new();
    for v in pod.get("spec").and_then(|s| s.get("volumes")).and_then(Value::as_array).into_iter().flatten() {
        let vol = s(v, &["name"]);
        if let Some(c) = v.get("persistentVolumeClaim").filter(|c| c.is_object()) {
            out.push(PodClaim {
                volume: vol.to_string(),
                claim: s(c, &["claimName"]).to_string(),
                ephemeral: false,
                read_only: c.get("readOnly").and_then(Value::as_bool) == Some(true),
            });
        } else if v.get("ephemeral").is_some_and(Value::is_object) {
            out.push(PodClaim {
                volume: vol.to_string(),
                claim: format!("{name}-{vol}"),
                ephemeral: true,
                read_only: false,
            });
        }
    }
    out
}

/// Whether `claim` was made for `pod`'s ephemeral volume (the pod is its controller).
pub fn owned_by(claim: &Value, pod: &Value) -> bool {
    let uid = s(pod, &["metadata", "uid"]);
    claim
        .get("metadata")
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|r| s(r, &["uid"]) == uid && r.get("controller").and_then(Value::as_bool) == Some(true))
}

/// Whether a pod still counts as using its claims (upstream's pvc-protection
/// `podUsesPVC`: scheduled and not finished; a pod the node has not started yet counts).
pub fn pod_active(pod: &Value) -> bool {
    let phase = s(pod, &["status", "phase"]);
    !s(pod, &["spec", "nodeName"]).is_empty() && phase != "Succeeded" && phase != "Failed"
}

/// The class's `volumeBindingMode` is `WaitForFirstConsumer`.
pub fn delays_binding(class: &Value) -> bool {
    s(class, &["volumeBindingMode"]) == "WaitForFirstConsumer"
}

/// The class's provisioner.
pub fn provisioner(class: &Value) -> &str {
    s(class, &["provisioner"])
}

/// The node a local-path volume lives on: the single value of its hostname affinity.
pub fn local_node(pv: &Value) -> Option<&str> {
    let terms = pv.get("spec")?.get("nodeAffinity")?.get("required")?.get("nodeSelectorTerms")?.as_array()?;
    let [term] = terms.as_slice() else { return None };
    let exprs = term.get("matchExpressions")?.as_array()?;
    let [e] = exprs.as_slice() else { return None };
    if s(e, &["key"]) != HOSTNAME_LABEL || s(e, &["operator"]) != "In" {
        return None;
    }
    match e.get("values")?.as_array()?.as_slice() {
        [v] => v.as_str(),
        _ => None,
    }
}

/// The PersistentVolume the local-path provisioner makes for `claim` on `node`, whose
/// volumes live under `root`: named `pvc-<claim uid>`, pinned to the node, pre-bound to
/// the claim, with the class's reclaim policy.
pub fn local_path_volume(claim: &Value, class: &Value, node: &str, root: &str) -> Value {
    let name = format!("pvc-{}", s(claim, &["metadata", "uid"]));
    let reclaim = match s(class, &["reclaimPolicy"]) {
        "" => "Delete",
        p => p,
    };
    let path = format!("{}/{name}", root.trim_end_matches('/'));
    let mut modes: Vec<Value> = access_modes(claim).into_iter().map(|m| Value::from(m.to_string())).collect();
    if modes.is_empty() {
        modes.push("ReadWriteOnce".into());
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": {ANN_PROVISIONED_BY: LOCAL_PATH_PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": s(claim, &["spec", "resources", "requests", "storage"])},
            "accessModes": modes,
            "persistentVolumeReclaimPolicy": reclaim,
            "storageClassName": s(class, &["metadata", "name"]),
            "volumeMode": volume_mode(claim),
            "local": {"path": path},
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": s(claim, &["metadata", "namespace"]),
                "name": s(claim, &["metadata", "name"]),
                "uid": s(claim, &["metadata", "uid"]),
            },
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": HOSTNAME_LABEL, "operator": "In", "values": [node]},
            ]}]}},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(name: &str, size: &str, class: &str, modes: &[&str], labels: Value) -> Value {
        json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"capacity": {"storage": size}, "accessModes": modes, "storageClassName": class,
                     "volumeMode": "Filesystem", "hostPath": {"path": "/tmp"}},
            "status": {"phase": "Available"},
        })
    }

    fn claim(size: &str, class: Option<&str>, modes: &[&str]) -> Value {
        let mut c = json!({
            "metadata": {"name": "data", "namespace": "ns", "uid": "u1"},
            "spec": {"accessModes": modes, "resources": {"requests": {"storage": size}}},
        });
        if let Some(class) = class {
            c["spec"]["storageClassName"] = json!(class);
        }
        c
    }

    #[test]
    fn smallest_satisfying_volume_wins() {
        let vols = [
            pv("big", "10Gi", "", &["ReadWriteOnce"], json!({})),
            pv("small", "1Gi", "", &["ReadWriteOnce"], json!({})),
            pv("tiny", "100Mi", "", &["ReadWriteOnce"], json!({})),
            pv("mid", "2Gi", "", &["ReadWriteOnce", "ReadOnlyMany"], json!({})),
        ];
        let c = claim("500Mi", Some(""), &["ReadWriteOnce"]);
        assert_eq!(key(find_match(&c, &vols, None, false).unwrap()), "small");
        // Access modes: only "mid" offers ReadOnlyMany.
        let c = claim("500Mi", Some(""), &["ReadOnlyMany"]);
        assert_eq!(key(find_match(&c, &vols, None, false).unwrap()), "mid");
        // Too large for every volume.
        let c = claim("20Gi", Some(""), &["ReadWriteOnce"]);
        assert!(find_match(&c, &vols, None, false).is_none());
    }

    #[test]
    fn class_mode_phase_and_claim_ref_count() {
        let mut fast = pv("fast", "1Gi", "fast", &["ReadWriteOnce"], json!({}));
        let slow = pv("slow", "1Gi", "slow", &["ReadWriteOnce"], json!({}));
        let c = claim("1Gi", Some("fast"), &["ReadWriteOnce"]);
        assert_eq!(key(find_match(&c, [&fast, &slow], None, false).unwrap()), "fast");
        // A claim without a class matches only volumes without one.
        let none = claim("1Gi", None, &["ReadWriteOnce"]);
        assert!(find_match(&none, [&fast, &slow], None, false).is_none());
        // Block claims need Block volumes.
        let mut block = c.clone();
        block["spec"]["volumeMode"] = json!("Block");
        assert!(find_match(&block, [&fast], None, false).is_none());
        // Bound or released volumes are not offered.
        fast["status"]["phase"] = json!("Released");
        assert!(find_match(&c, [&fast], None, false).is_none());
        fast["status"]["phase"] = json!("Available");
        fast["spec"]["claimRef"] = json!({"namespace": "other", "name": "x"});
        assert!(find_match(&c, [&fast], None, false).is_none());
        // Being deleted: never.
        let mut gone = slow.clone();
        gone["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let sc = claim("1Gi", Some("slow"), &["ReadWriteOnce"]);
        assert!(find_match(&sc, [&gone], None, false).is_none());
    }

    #[test]
    fn selector_and_prebinding() {
        let a = pv("a", "1Gi", "", &["ReadWriteOnce"], json!({"tier": "gold"}));
        let b = pv("b", "1Gi", "", &["ReadWriteOnce"], json!({"tier": "silver"}));
        let mut c = claim("1Gi", Some(""), &["ReadWriteOnce"]);
        c["spec"]["selector"] = json!({"matchLabels": {"tier": "silver"}});
        assert_eq!(key(find_match(&c, [&a, &b], None, false).unwrap()), "b");
        c["spec"]["selector"] =
            json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold"]}]});
        assert_eq!(key(find_match(&c, [&a, &b], None, false).unwrap()), "a");
        c["spec"]["selector"] = json!({"matchLabels": {"tier": "bronze"}});
        assert!(find_match(&c, [&a, &b], None, false).is_none());
        // A volume pre-bound to the claim wins over a smaller free one, even when the
        // claim waits for its first consumer, as long as it satisfies the claim.
        let c = claim("1Gi", Some(""), &["ReadWriteOnce"]);
        let mut pre = pv("pre", "5Gi", "", &["ReadWriteOnce"], json!({}));
        pre["spec"]["claimRef"] = json!({"namespace": "ns", "name": "data"});
        pre["status"]["phase"] = json!("Available");
        assert_eq!(key(find_match(&c, [&a, &pre], None, false).unwrap()), "pre");
        assert_eq!(key(find_match(&c, [&a, &pre], None, true).unwrap()), "pre");
        assert!(find_match(&c, [&a], None, true).is_none(), "delayed binding waits for a node");
        // Pre-bound to another incarnation of the claim (uid differs): not this claim's.
        pre["spec"]["claimRef"]["uid"] = json!("old");
        assert_eq!(key(find_match(&c, [&a, &pre], None, false).unwrap()), "a");
        // Pre-bound but too small: not offered.
        let mut small = pv("small", "1Mi", "", &["ReadWriteOnce"], json!({}));
        small["spec"]["claimRef"] = json!({"namespace": "ns", "name": "data"});
        assert_eq!(check_satisfies(&small, &c).unwrap_err(), "requested PV is too small");
        assert!(find_match(&c, [&small], None, false).is_none());
    }

    #[test]
    fn node_affinity() {
        let mut local = pv("local", "1Gi", "", &["ReadWriteOnce"], json!({}));
        local["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}});
        let c = claim("1Gi", Some(""), &["ReadWriteOnce"]);
        assert!(find_match(&c, [&local], Some(&named_node("n2")), true).is_none());
        assert_eq!(key(find_match(&c, [&local], Some(&named_node("n1")), true).unwrap()), "local");
        assert_eq!(local_node(&local), Some("n1"));
        let anywhere = pv("any", "1Gi", "", &["ReadWriteOnce"], json!({}));
        assert!(usable_on(&anywhere, &named_node("n2")));
        assert_eq!(local_node(&anywhere), None);
    }

    #[test]
    fn pods_and_provisioned_volumes() {
        let pod = json!({"metadata": {"name": "p", "uid": "pu"}, "spec": {"volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "c1", "readOnly": true}},
            {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
            {"name": "e", "emptyDir": {}},
        ]}});
        let claims = pod_claims(&pod);
        assert_eq!(claims.len(), 2);
        assert!(claims[0].read_only && !claims[0].ephemeral);
        assert_eq!(claims[1].claim, "p-scratch");
        assert!(claims[1].ephemeral);
        let owned = json!({"metadata": {"ownerReferences": [{"uid": "pu", "controller": true}]}});
        assert!(owned_by(&owned, &pod));
        assert!(!owned_by(&json!({"metadata": {}}), &pod));
        let c = claim("1Gi", Some("local-path"), &["ReadWriteOnce"]);
        let class = json!({"metadata": {"name": "local-path"}, "provisioner": LOCAL_PATH_PROVISIONER,
                           "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer"});
        let v = local_path_volume(&c, &class, "n1", "/var/lib/capstan/local-path/");
        assert_eq!(key(&v), "pvc-u1");
        assert_eq!(v["spec"]["local"]["path"], "/var/lib/capstan/local-path/pvc-u1");
        assert_eq!(local_node(&v), Some("n1"));
        assert!(bound_to_claim(&v, &c));
        assert!(check_satisfies(&v, &c).is_ok());
        assert_eq!(reclaim_policy(&v), "Delete");
        assert!(delays_binding(&class));
    }
}
