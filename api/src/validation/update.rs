//! Update rules: immutable fields and the few allowed changes.

use super::errs::{ar, get, go_selector, go_strings, int, json_value, ob, q, st, Errs};
use super::kinds::PV_SOURCES;
use super::names;
use serde_json::{Map, Value};

/// Semantic equality as upstream's `Semantic.DeepEqual` sees JSON: a missing field, `null`
/// and an empty list or map are the same.
pub(crate) fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    fn blank(v: Option<&Value>) -> bool {
        match v {
            None | Some(Value::Null) => true,
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(m)) => m.is_empty(),
            _ => false,
        }
    }
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            x.iter().all(|(k, v)| same(Some(v), y.get(k)))
                && y.iter().all(|(k, v)| x.contains_key(k) || blank(Some(v)))
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, r)| same(Some(p), Some(r)))
        }
        (Some(x), Some(y)) if !x.is_null() && !y.is_null() => x == y,
        _ => blank(a) && blank(b),
    }
}

/// Kind-specific update checks.
pub(crate) fn validate(e: &mut Errs, group: &str, kind: &str, old: &Value, new: &Value) {
    let (os, ns) = (old.get("spec"), new.get("spec"));
    match (group, kind) {
        ("", "Pod") => pod(e, os, ns),
        ("", "Service") => service(e, os, ns),
        ("", "ConfigMap") => immutable_data(e, old, new, &["data", "binaryData"]),
        ("", "Secret") => {
            immutable_data(e, old, new, &["data"]);
            let (ot, nt) = (st(Some(old), "type"), st(Some(new), "type"));
            if ot != nt {
                e.invalid_str("type", nt, "field is immutable");
            }
        }
        ("", "PersistentVolumeClaim") => pvc(e, old, new),
        ("", "PersistentVolume") => {
            let changed = PV_SOURCES.iter().any(|k| !same(get(os, k), get(ns, k)));
            if changed {
                e.forbidden("spec.persistentvolumesource", "spec.persistentvolumesource is forbidden.");
            }
        }
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => selector(e, os, ns, "spec.selector"),
        ("apps", "StatefulSet") => {
            selector(e, os, ns, "spec.selector");
            let allowed = [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "revisionHistoryLimit",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ];
            if !same_except(os, ns, &allowed) {
                e.forbidden(
                    "spec",
                    "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                );
            }
        }
        ("batch", "Job") => {
            selector(e, os, ns, "spec.selector");
            let suspended = os.and_then(|s| s.get("suspend")).and_then(Value::as_bool) == Some(true);
            if !suspended && !same(get(os, "template"), get(ns, "template")) {
                e.invalid("spec.template", &json_value(get(ns, "template")), "field is immutable");
            }
            for k in ["completionMode", "podFailurePolicy"] {
                if !same(get(os, k), get(ns, k)) {
                    e.invalid(&format!("spec.{k}"), &json_value(get(ns, k)), "field is immutable");
                }
            }
            let indexed = st(ns, "completionMode") == "Indexed";
            if !indexed && !same(get(os, "completions"), get(ns, "completions")) {
                e.invalid("spec.completions", &json_value(get(ns, "completions")), "field is immutable");
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            let (or, nr) = (old.get("roleRef"), new.get("roleRef"));
            if !same(or, nr) {
                let v = format!(
                    "rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}",
                    q(st(nr, "apiGroup")),
                    q(st(nr, "kind")),
                    q(st(nr, "name"))
                );
                e.invalid("roleRef", &v, "cannot change roleRef");
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            if !same(old.get("parameters"), new.get("parameters")) {
                e.forbidden("parameters", "updates to parameters are forbidden.");
            }
            if st(Some(old), "provisioner") != st(Some(new), "provisioner") {
                e.forbidden("provisioner", "updates to provisioner are forbidden.");
            }
            if st(Some(old), "reclaimPolicy") != st(Some(new), "reclaimPolicy") {
                e.forbidden("reclaimPolicy", "updates to reclaimPolicy are forbidden.");
            }
            if st(Some(old), "volumeBindingMode") != st(Some(new), "volumeBindingMode") {
                e.invalid_str("volumeBindingMode", st(Some(new), "volumeBindingMode"), "field is immutable");
            }
        }
        ("discovery.k8s.io", "EndpointSlice")
            if st(Some(old), "addressType") != st(Some(new), "addressType") =>
        {
            e.invalid_str("addressType", st(Some(new), "addressType"), "field is immutable");
        }
        _ => {}
    }
}

/// Whether two objects agree on every key except `except`.
fn same_except(a: Option<&Value>, b: Option<&Value>, except: &[&str]) -> bool {
    let strip = |v: Option<&Value>| -> Value {
        let mut m = v.and_then(Value::as_object).cloned().unwrap_or_default();
        for k in except {
            m.remove(*k);
        }
        Value::Object(m)
    };
    same(Some(&strip(a)), Some(&strip(b)))
}

fn selector(e: &mut Errs, os: Option<&Value>, ns: Option<&Value>, path: &str) {
    let (o, n) = (get(os, "selector"), get(ns, "selector"));
    if o.is_some() && !same(o, n) {
        e.invalid(path, &go_selector(n), "field is immutable");
    }
}

const POD_UPDATE_MSG: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

fn pod(e: &mut Errs, os: Option<&Value>, ns: Option<&Value>) {
    // activeDeadlineSeconds may be set or lowered, never raised or removed.
    match (int(os, "activeDeadlineSeconds"), int(ns, "activeDeadlineSeconds")) {
        (_, Some(n)) if !(0..=i64::from(i32::MAX)).contains(&n) => {
            e.invalid(
                "spec.activeDeadlineSeconds",
                &n.to_string(),
                "must be between 0 and 2147483647, inclusive",
            );
            return;
        }
        (Some(o), Some(n)) if n > o => {
            e.invalid(
                "spec.activeDeadlineSeconds",
                &n.to_string(),
                "must be less than or equal to previous value",
            );
            return;
        }
        (Some(_), None) => {
            e.invalid(
                "spec.activeDeadlineSeconds",
                "null",
                "must not update from a positive integer to nil value",
            );
        }
        _ => {}
    }
    for key in ["containers", "initContainers"] {
        for (i, c) in ar(ns, key).iter().enumerate() {
            if st(Some(c), "image").is_empty() {
                e.required(&format!("spec.{key}[{i}].image"), "");
            }
        }
    }

    // Build the new spec with every allowed change undone, then compare with the old one.
    let mut munged: Map<String, Value> = ns.and_then(Value::as_object).cloned().unwrap_or_default();
    let old = os.and_then(Value::as_object);
    for key in ["containers", "initContainers"] {
        let old_list = ar(os, key);
        if let Some(list) = munged.get_mut(key).and_then(Value::as_array_mut) {
            if list.len() == old_list.len() {
                for (c, oc) in list.iter_mut().zip(old_list) {
                    if let (Some(c), Some(img)) = (c.as_object_mut(), oc.get("image")) {
                        c.insert("image".into(), img.clone());
                    }
                }
            }
        }
    }
    let restore = |m: &mut Map<String, Value>, key: &str| match old.and_then(|o| o.get(key)) {
        Some(v) => {
            m.insert(key.into(), v.clone());
        }
        None => {
            m.remove(key);
        }
    };
    restore(&mut munged, "activeDeadlineSeconds");
    // Tolerations may only grow: every old toleration must still be there.
    let old_tol = ar(os, "tolerations");
    let new_tol = ar(ns, "tolerations");
    if old_tol.iter().all(|t| new_tol.iter().any(|n| same(Some(t), Some(n)))) {
        restore(&mut munged, "tolerations");
    }
    // Scheduling gates may only be removed.
    let old_gates = ar(os, "schedulingGates");
    if ar(ns, "schedulingGates").iter().all(|g| old_gates.iter().any(|o| same(Some(g), Some(o)))) {
        restore(&mut munged, "schedulingGates");
    }
    if int(os, "terminationGracePeriodSeconds").is_some_and(|v| v < 0)
        && int(ns, "terminationGracePeriodSeconds") == Some(1)
    {
        restore(&mut munged, "terminationGracePeriodSeconds");
    }
    let munged = Value::Object(munged);
    if !same(Some(&munged), os) {
        let mut diff: Vec<String> = Vec::new();
        let empty = Map::new();
        let mo = munged.as_object().unwrap_or(&empty);
        let oo = old.unwrap_or(&empty);
        let mut keys: Vec<&String> = mo.keys().chain(oo.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            if !same(oo.get(k.as_str()), mo.get(k.as_str())) {
                diff.push(format!(
                    "  spec.{k}: {} -> {}",
                    json_value(oo.get(k.as_str())),
                    json_value(mo.get(k.as_str()))
                ));
            }
        }
        e.forbidden("spec", &format!("{POD_UPDATE_MSG}\n{}", diff.join("\n")));
    }
}

fn service(e: &mut Errs, os: Option<&Value>, ns: Option<&Value>) {
    if st(os, "type") == "ExternalName" || st(ns, "type") == "ExternalName" {
        return;
    }
    let (o, n) = (st(os, "clusterIP"), st(ns, "clusterIP"));
    // An empty clusterIP on update keeps the allocated one (upstream patches it in).
    if !o.is_empty() && !n.is_empty() && o != n {
        e.invalid("spec.clusterIPs[0]", &go_strings(get(ns, "clusterIPs")), "may not change once set");
    }
}

fn immutable_data(e: &mut Errs, old: &Value, new: &Value, fields: &[&str]) {
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return;
    }
    if new.get("immutable").and_then(Value::as_bool) != Some(true) {
        e.forbidden("immutable", "field is immutable when `immutable` is set");
    }
    for f in fields {
        if !same(old.get(*f), new.get(*f)) {
            e.forbidden(f, "field is immutable when `immutable` is set");
        }
    }
}

fn storage_request(spec: Option<&Value>) -> Option<&Value> {
    ob(get(spec, "resources"), "requests").and_then(|r| r.get("storage"))
}

fn pvc(e: &mut Errs, old: &Value, new: &Value) {
    let (os, ns) = (old.get("spec"), new.get("spec"));
    let bound = st(new.get("status"), "phase") == "Bound" || !st(os, "volumeName").is_empty();
    let mut o = os.cloned().unwrap_or(Value::Object(Map::new()));
    let mut n = ns.cloned().unwrap_or(Value::Object(Map::new()));
    // volumeName may be set once; requests.storage and volumeAttributesClassName may change
    // on bound claims.
    if st(os, "volumeName").is_empty() {
        if let (Some(om), Some(v)) = (o.as_object_mut(), ns.and_then(|s| s.get("volumeName"))) {
            om.insert("volumeName".into(), v.clone());
        }
    }
    if bound {
        for v in [&mut o, &mut n] {
            if let Some(m) = v.as_object_mut() {
                m.remove("volumeAttributesClassName");
                if let Some(req) =
                    m.get_mut("resources").and_then(|r| r.get_mut("requests")).and_then(Value::as_object_mut)
                {
                    req.remove("storage");
                }
            }
        }
    }
    if !same(Some(&o), Some(&n)) {
        e.forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        );
    }
    let qty = |v: Option<&Value>| v.and_then(Value::as_str).and_then(names::quantity);
    if let (Some(ov), Some(nv)) = (qty(storage_request(os)), qty(storage_request(ns))) {
        if nv < ov {
            e.forbidden("spec.resources.requests.storage", "field can not be less than previous value");
        }
    }
}
