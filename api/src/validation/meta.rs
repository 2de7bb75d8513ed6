//! `ObjectMeta`, labels, annotations and label selectors.

use super::errs::{ar, ob, st, Errs};
use super::names;
use serde_json::{Map, Value};

/// Which name rule a kind uses.
#[derive(Clone, Copy)]
pub(crate) enum NameRule {
    Subdomain,
    Label,
    Dns1035,
    PathSegment,
}

/// Messages for `name` under `rule`.
pub(crate) fn check_name(rule: NameRule, name: &str) -> Vec<String> {
    match rule {
        NameRule::Subdomain => names::dns1123_subdomain(name),
        NameRule::Label => names::dns1123_label(name),
        NameRule::Dns1035 => names::dns1035_label(name),
        NameRule::PathSegment => names::path_segment_name(name),
    }
}

/// `ValidateObjectMeta` for a stored object.
pub(crate) fn object_meta(e: &mut Errs, obj: &Value, rule: NameRule, namespaced: bool) {
    let meta = obj.get("metadata");
    let name = st(meta, "name");
    if name.is_empty() {
        e.required("metadata.name", "name or generateName is required");
    } else {
        e.invalid_msgs("metadata.name", name, check_name(rule, name));
    }
    let ns = st(meta, "namespace");
    if namespaced {
        if !ns.is_empty() {
            e.invalid_msgs("metadata.namespace", ns, names::dns1123_label(ns));
        }
    } else if !ns.is_empty() {
        e.forbidden("metadata.namespace", "not allowed on this type");
    }
    e.nonnegative(meta, "generation", "metadata.generation");
    labels(e, meta.and_then(|m| m.get("labels")), "metadata.labels");
    annotations(e, meta.and_then(|m| m.get("annotations")), "metadata.annotations");
    for f in ar(meta, "finalizers") {
        let f = f.as_str().unwrap_or("");
        e.invalid_msgs("metadata.finalizers", f, names::qualified_name(f));
    }
    for r in ar(meta, "ownerReferences") {
        let r = Some(r);
        if st(r, "apiVersion").is_empty() {
            e.invalid("metadata.ownerReferences.apiVersion", "\"\"", "version must not be empty");
        }
        if st(r, "kind").is_empty() {
            e.invalid("metadata.ownerReferences.kind", "\"\"", "must not be empty");
        }
        if st(r, "name").is_empty() {
            e.invalid("metadata.ownerReferences.name", "\"\"", "must not be empty");
        }
        if st(r, "uid").is_empty() {
            e.invalid("metadata.ownerReferences.uid", "\"\"", "must not be empty");
        }
    }
}

/// `ValidateLabels`: qualified-name keys and label values, reported on the map's path.
pub(crate) fn labels(e: &mut Errs, m: Option<&Value>, path: &str) {
    let Some(m) = m.and_then(Value::as_object) else { return };
    for (k, v) in m {
        e.invalid_msgs(path, k, names::qualified_name(k));
        let v = v.as_str().unwrap_or("");
        e.invalid_msgs(path, v, names::label_value(v));
    }
}

const TOTAL_ANNOTATION_SIZE: usize = 256 * 1024;

/// `ValidateAnnotations`: qualified-name keys (case-insensitive) and at most 256 KiB.
pub(crate) fn annotations(e: &mut Errs, m: Option<&Value>, path: &str) {
    let Some(m) = m.and_then(Value::as_object) else { return };
    let mut total = 0usize;
    for (k, v) in m {
        let msgs = names::qualified_name(&k.to_lowercase());
        e.invalid_msgs(path, k, msgs);
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > TOTAL_ANNOTATION_SIZE {
        e.too_long(path, TOTAL_ANNOTATION_SIZE);
    }
}

/// `ValidateLabelSelector`.
pub(crate) fn label_selector(e: &mut Errs, sel: &Value, path: &str) {
    labels(e, sel.get("matchLabels"), &format!("{path}.matchLabels"));
    for (i, expr) in ar(Some(sel), "matchExpressions").iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = ar(Some(expr), "values");
        match st(Some(expr), "operator") {
            "In" | "NotIn" => {
                if values.is_empty() {
                    e.required(
                        &format!("{p}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    );
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    e.forbidden(
                        &format!("{p}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    );
                }
            }
            op => e.invalid_str(&format!("{p}.operator"), op, "not a valid selector operator"),
        }
        let key = st(Some(expr), "key");
        e.invalid_msgs(&format!("{p}.key"), key, names::qualified_name(key));
        for (j, v) in values.iter().enumerate() {
            let v = v.as_str().unwrap_or("");
            e.invalid_msgs(&format!("{p}.values[{j}]"), v, names::label_value(v));
        }
    }
}

/// Whether a selector has no requirements at all.
pub(crate) fn selector_empty(sel: &Value) -> bool {
    ob(Some(sel), "matchLabels").is_none_or(Map::is_empty) && ar(Some(sel), "matchExpressions").is_empty()
}

/// Whether `labels` satisfy the selector (a selector with bad operators matches nothing).
pub(crate) fn selector_matches(sel: &Value, labels: Option<&Map<String, Value>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    if let Some(ml) = ob(Some(sel), "matchLabels") {
        if !ml.iter().all(|(k, v)| get(k) == v.as_str()) {
            return false;
        }
    }
    ar(Some(sel), "matchExpressions").iter().all(|expr| {
        let key = st(Some(expr), "key");
        let mut values = ar(Some(expr), "values").iter().filter_map(Value::as_str);
        match st(Some(expr), "operator") {
            "In" => get(key).is_some_and(|v| values.any(|x| x == v)),
            "NotIn" => get(key).is_none_or(|v| !values.any(|x| x == v)),
            "Exists" => get(key).is_some(),
            "DoesNotExist" => get(key).is_none(),
            _ => false,
        }
    })
}
