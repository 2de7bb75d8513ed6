//! The three patch types of `PATCH`: JSON merge patch (RFC 7386), JSON patch (RFC 6902)
//! and strategic merge patch with the built-in merge keys and directives.
//!
//! The strategic merge patch schema is a small description of the built-in types: a
//! function from (group, kind, path of field names) to a [`ListStrategy`]. It is shared
//! with server-side apply ([`crate::ssa`]), which uses the same list identities.

use serde_json::{Map, Value};

/// Nesting bound for the recursive merges: deeper documents are rejected.
pub(crate) const MAX_DEPTH: usize = 100;

/// Why a patch could not be applied. The gateway answers these with 422 (or 400 for a
/// body that is not a patch at all).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    /// The patch document is malformed.
    #[error("{0}")]
    Malformed(String),
    /// The patch could not be applied to this object (a failed `test`, a missing path).
    #[error("{0}")]
    Failed(String),
}

// ---------------------------------------------------------------------------------------
// Schema of the built-in types.

/// How a list field of a built-in type merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The list is replaced wholesale (no merge key).
    Atomic,
    /// A list of maps identified by a key: `smp_key` is the strategic merge patch merge
    /// key, `ssa_keys` the server-side apply list-map keys.
    Keyed {
        /// `patchMergeKey` of the field.
        smp_key: &'static str,
        /// `x-kubernetes-list-map-keys` of the field.
        ssa_keys: &'static [&'static str],
    },
    /// A list of scalars merged as a set (`patchStrategy: merge` on a primitive list).
    Set,
}

const fn keyed(smp_key: &'static str, ssa_keys: &'static [&'static str]) -> ListStrategy {
    ListStrategy::Keyed { smp_key, ssa_keys }
}

const BY_NAME: ListStrategy = keyed("name", &["name"]);
const BY_TYPE: ListStrategy = keyed("type", &["type"]);
const BY_IP: ListStrategy = keyed("ip", &["ip"]);

/// Where a PodSpec sits in each built-in kind.
fn pod_spec_prefix(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (group, kind) {
        ("", "Pod") => Some(&["spec"]),
        ("", "PodTemplate") => Some(&["template", "spec"]),
        ("", "ReplicationController")
        | ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("batch", "Job") => Some(&["spec", "template", "spec"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    }
}

/// Where ObjectMeta appears besides `metadata` (pod templates, job templates).
fn nested_meta_prefixes(group: &str, kind: &str) -> &'static [&'static [&'static str]] {
    match (group, kind) {
        ("", "PodTemplate") => &[&["template", "metadata"]],
        ("", "ReplicationController")
        | ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("batch", "Job") => &[&["spec", "template", "metadata"]],
        ("batch", "CronJob") => {
            &[&["spec", "jobTemplate", "metadata"], &["spec", "jobTemplate", "spec", "template", "metadata"]]
        }
        _ => &[],
    }
}

fn object_meta_list(rest: &[&str]) -> ListStrategy {
    match rest {
        ["ownerReferences"] => keyed("uid", &["uid"]),
        ["finalizers"] => ListStrategy::Set,
        _ => ListStrategy::Atomic,
    }
}

fn pod_spec_list(rest: &[&str]) -> ListStrategy {
    const CONTAINERS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];
    match rest {
        [c] if CONTAINERS.contains(c) => BY_NAME,
        [c, field] if CONTAINERS.contains(c) => match *field {
            "ports" => keyed("containerPort", &["containerPort", "protocol"]),
            "env" => BY_NAME,
            "volumeMounts" => keyed("mountPath", &["mountPath"]),
            "volumeDevices" => keyed("devicePath", &["devicePath"]),
            "resizePolicy" => keyed("resourceName", &["resourceName"]),
            _ => ListStrategy::Atomic,
        },
        ["volumes"] | ["imagePullSecrets"] | ["resourceClaims"] | ["schedulingGates"] => BY_NAME,
        ["hostAliases"] => BY_IP,
        ["topologySpreadConstraints"] => keyed("topologyKey", &["topologyKey", "whenUnsatisfiable"]),
        _ => ListStrategy::Atomic,
    }
}

/// Whether `(group, kind)` is a built-in kind with a known schema.
fn builtin(group: &str, kind: &str) -> bool {
    crate::registry::RESOURCES.iter().any(|r| r.group == group && r.kind == kind)
        || pod_spec_prefix(group, kind).is_some()
}

/// How the list at `path` (field names from the object root, list positions omitted) of
/// an object of `group`/`kind` merges. Unknown kinds and fields are atomic.
pub fn list_strategy(group: &str, kind: &str, path: &[&str]) -> ListStrategy {
    if !builtin(group, kind) {
        return ListStrategy::Atomic;
    }
    if let Some(rest) = path.strip_prefix(&["metadata"][..]) {
        return object_meta_list(rest);
    }
    for prefix in nested_meta_prefixes(group, kind) {
        if let Some(rest) = path.strip_prefix(*prefix) {
            return object_meta_list(rest);
        }
    }
    if let Some(rest) = pod_spec_prefix(group, kind).and_then(|p| path.strip_prefix(p)) {
        return pod_spec_list(rest);
    }
    match (group, kind, path) {
        (_, _, ["status", "conditions"]) => BY_TYPE,
        ("", "Service", ["spec", "ports"]) => keyed("port", &["port", "protocol"]),
        ("", "Node", ["status", "addresses"]) => BY_TYPE,
        ("", "Node", ["spec", "podCIDRs"]) => ListStrategy::Set,
        ("", "Pod", ["status", "podIPs" | "hostIPs"]) => BY_IP,
        ("", "ServiceAccount", ["secrets"]) => BY_NAME,
        _ => ListStrategy::Atomic,
    }
}

/// Whether the map at `path` is atomic for server-side apply (owned and replaced as a
/// whole), as label selectors are.
pub fn atomic_map(group: &str, kind: &str, path: &[&str]) -> bool {
    matches!(
        (group, kind, path),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet", ["spec", "selector"])
            | ("batch", "Job", ["spec", "selector"])
            | ("", "Service" | "ReplicationController", ["spec", "selector"])
    )
}

// ---------------------------------------------------------------------------------------
// JSON merge patch and JSON patch.

fn merge_patch_into(target: &mut Value, patch: &Value, depth: usize) -> Result<(), PatchError> {
    if depth > MAX_DEPTH {
        return Err(PatchError::Malformed(format!("patch is nested more than {MAX_DEPTH} levels deep")));
    }
    let Value::Object(pm) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(tm) = target {
        for (k, v) in pm {
            if v.is_null() {
                tm.remove(k);
            } else {
                merge_patch_into(tm.entry(k.clone()).or_insert(Value::Null), v, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// Applies a JSON merge patch (RFC 7386). The patch must be a JSON object.
pub fn merge_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::Malformed("merge patch body must be a json object".into()));
    }
    let mut out = target.clone();
    merge_patch_into(&mut out, patch, 0)?;
    Ok(out)
}

fn op_name(op: &json_patch::PatchOperation) -> &'static str {
    match op {
        json_patch::PatchOperation::Add(_) => "add",
        json_patch::PatchOperation::Remove(_) => "remove",
        json_patch::PatchOperation::Replace(_) => "replace",
        json_patch::PatchOperation::Move(_) => "move",
        json_patch::PatchOperation::Copy(_) => "copy",
        json_patch::PatchOperation::Test(_) => "test",
    }
}

/// Applies a JSON patch (RFC 6902: a list of `add`, `remove`, `replace`, `move`, `copy`
/// and `test` operations; `-` appends to a list).
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_array() {
        return Err(PatchError::Malformed("json patch body must be a json array of operations".into()));
    }
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::Malformed(format!("invalid json patch: {e}")))?;
    let mut out = target.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| {
        let name = ops.0.get(e.operation).map(op_name).unwrap_or("unknown");
        PatchError::Failed(format!(
            "json patch operation {} ({name}) failed at path {:?}: {}",
            e.operation,
            e.path.as_str(),
            e.kind
        ))
    })?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Strategic merge patch.

const PATCH_DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

struct Smp<'a> {
    group: &'a str,
    kind: &'a str,
}

fn path_str(path: &[String]) -> String {
    if path.is_empty() {
        "<root>".to_string()
    } else {
        path.join(".")
    }
}

impl Smp<'_> {
    fn strategy(&self, path: &[String]) -> ListStrategy {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        list_strategy(self.group, self.kind, &p)
    }

    /// Merges a patch map into an (optional) original map. `None` means the map is
    /// deleted (`$patch: delete`).
    fn merge_map(
        &self,
        orig: Option<&Map<String, Value>>,
        patch: &Map<String, Value>,
        path: &mut Vec<String>,
        depth: usize,
    ) -> Result<Option<Map<String, Value>>, PatchError> {
        if depth > MAX_DEPTH {
            return Err(PatchError::Malformed(format!("patch is nested more than {MAX_DEPTH} levels deep")));
        }
        match patch.get(PATCH_DIRECTIVE) {
            None => {}
            Some(Value::String(s)) if s == "merge" => {}
            Some(Value::String(s)) if s == "delete" => return Ok(None),
            Some(Value::String(s)) if s == "replace" => {
                return self.merge_map(None, &without_directive(patch), path, depth);
            }
            Some(other) => {
                return Err(PatchError::Malformed(format!(
                    "unknown patch type {other} at {}",
                    path_str(path)
                )))
            }
        }
        let mut result = orig.cloned().unwrap_or_default();
        let mut orders: Vec<(&str, &Vec<Value>)> = Vec::new();
        let mut deletes: Vec<(&str, &Vec<Value>)> = Vec::new();
        let mut retain: Option<Vec<&str>> = None;
        for (k, v) in patch {
            if k == PATCH_DIRECTIVE {
                continue;
            }
            if k == RETAIN_KEYS {
                let keys = v
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
                    .filter(|keys| v.as_array().is_some_and(|a| a.len() == keys.len()))
                    .ok_or_else(|| {
                        PatchError::Malformed(format!(
                            "$retainKeys at {} must be a list of strings",
                            path_str(path)
                        ))
                    })?;
                retain = Some(keys);
                continue;
            }
            if let Some(field) = k.strip_prefix(SET_ORDER) {
                let list = v.as_array().ok_or_else(|| {
                    PatchError::Malformed(format!("{k} at {} must be a list", path_str(path)))
                })?;
                orders.push((field, list));
                continue;
            }
            if let Some(field) = k.strip_prefix(DELETE_PRIMITIVE) {
                let list = v.as_array().ok_or_else(|| {
                    PatchError::Malformed(format!("{k} at {} must be a list", path_str(path)))
                })?;
                deletes.push((field, list));
                continue;
            }
            if k.starts_with('$') {
                return Err(PatchError::Malformed(format!("unknown directive {k} at {}", path_str(path))));
            }
            if v.is_null() {
                result.remove(k);
                continue;
            }
            path.push(k.clone());
            let merged = self.merge_value(result.get(k), v, path, depth + 1);
            path.pop();
            match merged? {
                Some(x) => {
                    result.insert(k.clone(), x);
                }
                None => {
                    result.remove(k);
                }
            }
        }
        for (field, values) in deletes {
            if let Some(Value::Array(items)) = result.get_mut(field) {
                items.retain(|x| !values.contains(x));
            }
        }
        for (field, order) in orders {
            path.push(field.to_string());
            let strategy = self.strategy(path);
            path.pop();
            if let Some(Value::Array(items)) = result.get_mut(field) {
                apply_order(items, order, strategy);
            }
        }
        if let Some(keys) = retain {
            result.retain(|k, _| keys.contains(&k.as_str()));
        }
        Ok(Some(result))
    }

    /// Merges a patch value into an (optional) original value. `None` means delete.
    fn merge_value(
        &self,
        orig: Option<&Value>,
        patch: &Value,
        path: &mut Vec<String>,
        depth: usize,
    ) -> Result<Option<Value>, PatchError> {
        match patch {
            Value::Object(pm) => {
                let om = orig.and_then(Value::as_object);
                Ok(self.merge_map(om, pm, path, depth)?.map(Value::Object))
            }
            Value::Array(items) => {
                let orig_items: &[Value] = match orig {
                    Some(Value::Array(a)) => a,
                    _ => &[],
                };
                let merged = match self.strategy(path) {
                    ListStrategy::Keyed { smp_key, .. } if items.iter().all(Value::is_object) => {
                        self.merge_keyed(orig_items, items, smp_key, path, depth)?
                    }
                    ListStrategy::Set => merge_set(orig_items, items),
                    _ => self.replace_list(items, path, depth)?,
                };
                Ok(Some(Value::Array(merged)))
            }
            Value::Null => Ok(None),
            scalar => Ok(Some(scalar.clone())),
        }
    }

    /// An atomic list: the patch's items, with directives stripped from maps.
    fn replace_list(
        &self,
        items: &[Value],
        path: &mut Vec<String>,
        depth: usize,
    ) -> Result<Vec<Value>, PatchError> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::Object(m) if is_only_directive(m) => {}
                Value::Object(m) => {
                    if let Some(x) = self.merge_map(None, m, path, depth + 1)? {
                        out.push(Value::Object(x));
                    }
                }
                other => out.push(other.clone()),
            }
        }
        Ok(out)
    }

    fn merge_keyed(
        &self,
        orig: &[Value],
        patch: &[Value],
        key: &str,
        path: &mut Vec<String>,
        depth: usize,
    ) -> Result<Vec<Value>, PatchError> {
        let replace = patch.iter().any(|p| {
            p.get(PATCH_DIRECTIVE).and_then(Value::as_str) == Some("replace")
                && p.as_object().is_some_and(is_only_directive)
        });
        if replace {
            return self.replace_list(patch, path, depth);
        }
        let mut result: Vec<Value> = orig.to_vec();
        for p in patch {
            let Some(pm) = p.as_object() else { continue };
            if is_only_directive(pm) {
                continue;
            }
            let Some(kv) = pm.get(key) else {
                return Err(PatchError::Failed(format!(
                    "map: {p} does not contain declared merge key: {key}"
                )));
            };
            let directive = pm.get(PATCH_DIRECTIVE).and_then(Value::as_str);
            if directive == Some("delete") {
                result.retain(|item| item.get(key) != Some(kv));
                continue;
            }
            match result.iter().position(|item| item.get(key) == Some(kv)) {
                Some(i) => {
                    let merged = self.merge_map(result[i].as_object(), pm, path, depth + 1)?;
                    match merged {
                        Some(m) => result[i] = Value::Object(m),
                        None => {
                            result.remove(i);
                        }
                    }
                }
                None => {
                    if let Some(m) = self.merge_map(None, pm, path, depth + 1)? {
                        result.push(Value::Object(m));
                    }
                }
            }
        }
        Ok(result)
    }
}

fn is_only_directive(m: &Map<String, Value>) -> bool {
    m.len() == 1 && m.contains_key(PATCH_DIRECTIVE)
}

fn without_directive(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter().filter(|(k, _)| *k != PATCH_DIRECTIVE).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn merge_set(orig: &[Value], patch: &[Value]) -> Vec<Value> {
    let replace = patch.iter().any(|p| p.get(PATCH_DIRECTIVE).and_then(Value::as_str) == Some("replace"));
    let mut out: Vec<Value> = if replace { Vec::new() } else { orig.to_vec() };
    for p in patch {
        if p.is_object() {
            continue;
        }
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

/// Applies `$setElementOrder`: the items named in `order` take the positions such items
/// occupy in `items`, in the order given; other items keep their positions.
fn apply_order(items: &mut [Value], order: &[Value], strategy: ListStrategy) {
    let rank = |item: &Value| -> Option<usize> {
        match strategy {
            ListStrategy::Keyed { smp_key, .. } => {
                let kv = item.get(smp_key)?;
                order.iter().position(|o| o.get(smp_key) == Some(kv))
            }
            ListStrategy::Set => order.iter().position(|o| o == item),
            ListStrategy::Atomic => None,
        }
    };
    let slots: Vec<usize> = (0..items.len()).filter(|&i| rank(&items[i]).is_some()).collect();
    let mut ordered: Vec<(usize, Value)> =
        slots.iter().filter_map(|&i| rank(&items[i]).map(|r| (r, items[i].clone()))).collect();
    ordered.sort_by_key(|(r, _)| *r);
    for (slot, (_, v)) in slots.into_iter().zip(ordered) {
        items[slot] = v;
    }
}

/// Applies a strategic merge patch to an object of kind `group`/`kind`: maps merge,
/// `null` deletes, lists with a merge key merge by key, other lists are replaced, and
/// the `$patch`, `$setElementOrder`, `$deleteFromPrimitiveList` and `$retainKeys`
/// directives are honoured. Kinds without a known schema get JSON merge semantics.
pub fn strategic_merge_patch(
    target: &Value,
    patch: &Value,
    group: &str,
    kind: &str,
) -> Result<Value, PatchError> {
    let Value::Object(pm) = patch else {
        return Err(PatchError::Malformed("strategic merge patch body must be a json object".into()));
    };
    let smp = Smp { group, kind };
    let mut path = Vec::new();
    match smp.merge_map(target.as_object(), pm, &mut path, 0)? {
        Some(m) => Ok(Value::Object(m)),
        None => Err(PatchError::Malformed("a patch cannot delete the whole object".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                         "finalizers": ["a", "b"]},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {"name": "nginx", "image": "nginx:1.25",
                             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "x"}],
                             "ports": [{"containerPort": 80, "protocol": "TCP"}],
                             "args": ["a", "b"]},
                            {"name": "sidecar", "image": "busybox"}
                        ],
                        "tolerations": [{"key": "k", "operator": "Exists"}]
                    }
                }
            }
        })
    }

    fn smp(t: &Value, p: Value) -> Value {
        strategic_merge_patch(t, &p, "apps", "Deployment").unwrap()
    }

    #[test]
    fn merge_patch_basics() {
        let t = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        let out = merge_patch(&t, &json!({"a": {"b": null, "d": 3}, "l": [3]})).unwrap();
        assert_eq!(out, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
        let out = merge_patch(
            &json!({"metadata": {"labels": {"app": "x", "b": "1"}}}),
            &json!({"metadata": {"labels": {"app": null}}}),
        )
        .unwrap();
        assert_eq!(out, json!({"metadata": {"labels": {"b": "1"}}}));
        assert!(matches!(merge_patch(&t, &json!([1])), Err(PatchError::Malformed(_))));
    }

    #[test]
    fn merge_patch_depth_bound() {
        let mut p = json!(1);
        for _ in 0..150 {
            p = json!({ "a": p });
        }
        assert!(matches!(merge_patch(&json!({}), &p), Err(PatchError::Malformed(_))));
        assert!(matches!(strategic_merge_patch(&json!({}), &p, "", "Pod"), Err(PatchError::Malformed(_))));
    }

    #[test]
    fn json_patch_ops() {
        let t = json!({"spec": {"replicas": 1, "l": [1, 2]}});
        let p = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 5},
            {"op": "add", "path": "/spec/l/-", "value": 3},
            {"op": "copy", "from": "/spec/replicas", "path": "/spec/copy"},
            {"op": "move", "from": "/spec/copy", "path": "/spec/moved"},
            {"op": "remove", "path": "/spec/l/0"},
            {"op": "test", "path": "/spec/moved", "value": 5}
        ]);
        let out = json_patch(&t, &p).unwrap();
        assert_eq!(out, json!({"spec": {"replicas": 5, "l": [2, 3], "moved": 5}}));
        let e = json_patch(&t, &json!([{"op": "test", "path": "/spec/replicas", "value": 2}])).unwrap_err();
        assert_eq!(
            e,
            PatchError::Failed(
                "json patch operation 0 (test) failed at path \"/spec/replicas\": value did not match".into()
            )
        );
        let e = json_patch(&t, &json!([{"op": "remove", "path": "/spec/missing"}])).unwrap_err();
        assert!(
            matches!(e, PatchError::Failed(ref m) if m.contains("(remove)") && m.contains("/spec/missing")),
            "{e}"
        );
        assert!(matches!(json_patch(&t, &json!({"op": "add"})), Err(PatchError::Malformed(_))));
        assert!(matches!(
            json_patch(&t, &json!([{"op": "nope", "path": "/a"}])),
            Err(PatchError::Malformed(_))
        ));
    }

    #[test]
    fn smp_kubectl_apply_body() {
        let p = json!({"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{}\n"}},
            "spec":{"replicas":3,"template":{"spec":{"$setElementOrder/containers":[{"name":"nginx"}],
            "containers":[{"$setElementOrder/env":[{"name":"A"}],"env":[{"name":"A","value":"2"}],"image":"nginx:1.27","name":"nginx"}]}}}});
        let out = smp(&deployment(), p);
        assert_eq!(out["spec"]["replicas"], 3);
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c.as_array().unwrap().len(), 2);
        assert_eq!(c[0]["image"], "nginx:1.27");
        assert_eq!(c[0]["env"], json!([{"name": "A", "value": "2"}, {"name": "B", "value": "x"}]));
        assert_eq!(c[0]["ports"], json!([{"containerPort": 80, "protocol": "TCP"}]));
        assert_eq!(c[1]["name"], "sidecar");
        assert_eq!(
            out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
            "{}\n"
        );
        assert!(!out.to_string().contains('$'));
    }

    #[test]
    fn smp_set_image_and_patch_default() {
        let p = json!({"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.28"}]}}}});
        let out = smp(&deployment(), p);
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["image"], "nginx:1.28");
        assert_eq!(c[0]["env"].as_array().unwrap().len(), 2);
        assert_eq!(c[1]["image"], "busybox");
        // A new container is appended.
        let p = json!({"spec":{"template":{"spec":{"containers":[{"name":"new","image":"x"}]}}}});
        let out = smp(&deployment(), p);
        assert_eq!(out["spec"]["template"]["spec"]["containers"][2]["name"], "new");
    }

    #[test]
    fn smp_rollout_restart_and_cordon() {
        let p = json!({"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"2025-01-01T00:00:00Z"}}}}});
        let out = smp(&deployment(), p);
        assert_eq!(
            out["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"],
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(out["spec"]["template"]["metadata"]["labels"]["app"], "web");
        let node = json!({"kind": "Node", "metadata": {"name": "n"}, "spec": {"podCIDR": "10.0.0.0/24"}});
        let out = strategic_merge_patch(&node, &json!({"spec":{"unschedulable":true}}), "", "Node").unwrap();
        assert_eq!(out["spec"], json!({"podCIDR": "10.0.0.0/24", "unschedulable": true}));
        let out = strategic_merge_patch(&out, &json!({"spec":{"unschedulable":null}}), "", "Node").unwrap();
        assert_eq!(out["spec"], json!({"podCIDR": "10.0.0.0/24"}));
    }

    #[test]
    fn smp_set_element_order_reorders() {
        let p = json!({"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"sidecar"},{"name":"nginx"}]}}}});
        let out = smp(&deployment(), p);
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["name"], "sidecar");
        assert_eq!(c[1]["name"], "nginx");
    }

    #[test]
    fn smp_deletes_and_replaces() {
        let p = json!({"spec":{"template":{"spec":{"containers":[
            {"name":"sidecar","$patch":"delete"},
            {"name":"nginx","env":[{"name":"B","$patch":"delete"}],"args":["c"]}]}}}});
        let out = smp(&deployment(), p);
        let c = out["spec"]["template"]["spec"]["containers"].as_array().unwrap().clone();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0]["env"], json!([{"name": "A", "value": "1"}]));
        assert_eq!(c[0]["args"], json!(["c"]));
        // $patch: replace on a map.
        let p = json!({"spec":{"strategy":{"$patch":"replace","type":"Recreate"}}});
        let out = smp(&deployment(), p);
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        // $patch: replace in a keyed list.
        let p = json!({"spec":{"template":{"spec":{"containers":[{"$patch":"replace"},{"name":"only","image":"x"}]}}}});
        let out = smp(&deployment(), p);
        assert_eq!(out["spec"]["template"]["spec"]["containers"], json!([{"name":"only","image":"x"}]));
        // $patch: delete on a map.
        let p = json!({"spec":{"strategy":{"$patch":"delete"}}});
        let out = smp(&deployment(), p);
        assert!(out["spec"].get("strategy").is_none());
        // Atomic lists are replaced.
        let p = json!({"spec":{"template":{"spec":{"tolerations":[{"key":"other","operator":"Exists"}]}}}});
        let out = smp(&deployment(), p);
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key":"other","operator":"Exists"}])
        );
        // Unknown $patch value.
        let e =
            strategic_merge_patch(&deployment(), &json!({"spec":{"$patch":"bogus"}}), "apps", "Deployment");
        assert!(matches!(e, Err(PatchError::Malformed(_))));
        // Missing merge key.
        let e = strategic_merge_patch(
            &deployment(),
            &json!({"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}),
            "apps",
            "Deployment",
        );
        assert!(matches!(e, Err(PatchError::Failed(_))));
    }

    #[test]
    fn smp_retain_keys() {
        let p = json!({"spec":{"strategy":{"$retainKeys":["type"],"type":"Recreate"}}});
        let out = smp(&deployment(), p);
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn smp_primitive_sets() {
        let out = smp(&deployment(), json!({"metadata":{"finalizers":["b","c"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let out = smp(&deployment(), json!({"metadata":{"$deleteFromPrimitiveList/finalizers":["a"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        let out = smp(&deployment(), json!({"metadata":{"$setElementOrder/finalizers":["b","a"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "a"]));
        // Args are atomic.
        let out = smp(
            &deployment(),
            json!({"spec":{"template":{"spec":{"containers":[{"name":"nginx","args":["z"]}]}}}}),
        );
        assert_eq!(out["spec"]["template"]["spec"]["containers"][0]["args"], json!(["z"]));
    }

    #[test]
    fn smp_pod_and_service_and_status() {
        let pod = json!({"kind": "Pod", "spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80}]}],
            "volumes": [{"name": "v", "emptyDir": {}}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Initialized", "status": "True"}]}});
        let out = strategic_merge_patch(&pod, &json!({
            "spec": {"containers": [{"name": "a", "ports": [{"containerPort": 81}]}],
                     "volumes": [{"name": "w", "$retainKeys": ["name", "configMap"], "configMap": {"name": "c"}}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}), "", "Pod").unwrap();
        assert_eq!(
            out["spec"]["containers"][0]["ports"],
            json!([{"containerPort": 80}, {"containerPort": 81}])
        );
        assert_eq!(out["spec"]["volumes"].as_array().unwrap().len(), 2);
        assert_eq!(out["status"]["conditions"][0], json!({"type": "Ready", "status": "True"}));
        assert_eq!(out["status"]["conditions"][1]["type"], "Initialized");
        let svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}]}});
        let out = strategic_merge_patch(
            &svc,
            &json!({"spec": {"ports": [{"port": 443, "name": "https"}]}}),
            "",
            "Service",
        )
        .unwrap();
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
        let cj = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b"}]}}}}}});
        let out = strategic_merge_patch(&cj, &json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "2"}]}}}}}}), "batch", "CronJob").unwrap();
        assert_eq!(
            out["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(),
            2
        );
    }

    #[test]
    fn smp_unknown_kind_replaces_lists() {
        let t = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "m": {"x": 1}}});
        let out = strategic_merge_patch(
            &t,
            &json!({"spec": {"containers": [{"name": "c"}], "m": {"y": 2}}}),
            "example.com",
            "Widget",
        )
        .unwrap();
        assert_eq!(out, json!({"spec": {"containers": [{"name": "c"}], "m": {"x": 1, "y": 2}}}));
    }

    #[test]
    fn smp_new_field_strips_directives() {
        let t = json!({"spec": {}});
        let p = json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "a"}],
            "containers": [{"name": "a", "$setElementOrder/env": [{"name": "X"}], "env": [{"name": "X", "value": "1"}]},
                           {"name": "gone", "$patch": "delete"}]}}}});
        let out = smp(&t, p);
        assert_eq!(
            out,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}]}}}})
        );
    }
}
