//! Structural schemas of CustomResourceDefinitions: pruning, defaulting and validation of
//! custom objects against a version's `openAPIV3Schema`, as upstream's apiextensions server
//! (`pkg/apiserver/schema/{pruning,defaulting}`, kube-openapi's validator) does.
//!
//! Schemas are kept in their JSON form (a `JSONSchemaProps`). Paths are dotted from the
//! object's root (`spec.replicas`, `spec.ports[0].name`), messages as upstream renders them
//! (`Invalid value: "integer": spec.cronSpec in body must be of type string: "integer"`).

use crate::Cause;
use serde_json::{Map, Value};

/// Deepest nesting walked; deeper input is left alone (bodies are bounded anyway).
const MAX_DEPTH: usize = 64;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn properties(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

/// The schema of map values (`additionalProperties` as a schema).
fn additional(schema: &Value) -> Option<&Value> {
    schema.get("additionalProperties").filter(|a| a.is_object())
}

/// Removes the fields `schema` does not name from `obj`, recording each removed field's
/// path in `unknown`. `root` is true for the object itself (whose `apiVersion`, `kind` and
/// `metadata` are always kept; `metadata` is normalised elsewhere).
pub fn prune(schema: &Value, obj: &mut Value, unknown: &mut Vec<String>) {
    prune_at(schema, obj, "", true, unknown, 0);
}

fn prune_at(schema: &Value, v: &mut Value, path: &str, root: bool, unknown: &mut Vec<String>, depth: usize) {
    if depth > MAX_DEPTH || flag(schema, "x-kubernetes-int-or-string") {
        return;
    }
    match v {
        Value::Object(m) => {
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
            let embedded = root || flag(schema, "x-kubernetes-embedded-resource");
            let props = properties(schema);
            if let Some(add) = additional(schema) {
                for (k, val) in m.iter_mut() {
                    prune_at(add, val, &join(path, k), false, unknown, depth + 1);
                }
                return;
            }
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    if k == "metadata" && !root {
                        if let Some(Value::Object(md)) = m.get_mut("metadata") {
                            // Embedded objects keep only ObjectMeta's usual fields.
                            md.retain(|f, _| {
                                matches!(
                                    f.as_str(),
                                    "name"
                                        | "namespace"
                                        | "generateName"
                                        | "labels"
                                        | "annotations"
                                        | "finalizers"
                                )
                            });
                        }
                    }
                    continue;
                }
                match props.and_then(|p| p.get(&k)) {
                    Some(sub) => {
                        if let Some(val) = m.get_mut(&k) {
                            prune_at(sub, val, &join(path, &k), false, unknown, depth + 1);
                        }
                    }
                    None if preserve => {}
                    None => {
                        m.remove(&k);
                        unknown.push(join(path, &k));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items").filter(|i| i.is_object()) {
                for (i, val) in items.iter_mut().enumerate() {
                    prune_at(item, val, &format!("{path}[{i}]"), false, unknown, depth + 1);
                }
            }
        }
        _ => {}
    }
}

/// Fills in the `default`s of `schema` on `obj`, as upstream's structural defaulting: a
/// missing field (or a `null` one that is not nullable) with a default gets it, then
/// defaulting goes on inside.
pub fn apply_defaults(schema: &Value, obj: &mut Value) {
    default_at(schema, obj, 0);
}

fn default_at(schema: &Value, v: &mut Value, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match v {
        Value::Object(m) => {
            if let Some(props) = properties(schema) {
                for (k, sub) in props {
                    let Some(def) = sub.get("default") else { continue };
                    let missing = match m.get(k) {
                        None => true,
                        Some(Value::Null) => !flag(sub, "nullable"),
                        _ => false,
                    };
                    if missing {
                        m.insert(k.clone(), def.clone());
                    }
                }
                for (k, sub) in props {
                    if let Some(val) = m.get_mut(k) {
                        default_at(sub, val, depth + 1);
                    }
                }
            } else if let Some(add) = additional(schema) {
                for val in m.values_mut() {
                    default_at(add, val, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items").filter(|i| i.is_object()) {
                for val in items.iter_mut() {
                    default_at(item, val, depth + 1);
                }
            }
        }
        _ => {}
    }
}

/// Validates `obj` against `schema`; every failing field is one [`Cause`]. The root's
/// `apiVersion`, `kind` and `metadata` are checked elsewhere.
pub fn validate(schema: &Value, obj: &Value) -> Vec<Cause> {
    validate_update(schema, obj, None)
}

/// As [`validate`], on an update from `old`: CEL transition rules (`oldSelf`) run where
/// the old object has a value at the same place.
pub fn validate_update(schema: &Value, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    validate_at(schema, obj, old, "", true, &mut out, 0);
    out
}

/// The old item of a `x-kubernetes-list-type: map` list with the same keys as `item`.
fn old_map_item<'a>(schema: &Value, old: Option<&'a Value>, item: &Value) -> Option<&'a Value> {
    if schema.get("x-kubernetes-list-type").and_then(Value::as_str) != Some("map") {
        return None;
    }
    let keys: Vec<&str> = schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|k| k.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    old?.as_array()?.iter().find(|o| keys.iter().all(|k| o.get(*k) == item.get(*k)))
}

/// The value as upstream quotes it in `Invalid value: ...`.
fn quoted(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        Value::Null => "\"null\"".into(),
        other => other.to_string(),
    }
}

/// The JSON type name of a value, as kube-openapi's validator names it.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn invalid(out: &mut Vec<Cause>, path: &str, v: &Value, detail: String) {
    let field = if path.is_empty() { "<root>".to_string() } else { path.to_string() };
    out.push(Cause::invalid(field, format!("Invalid value: {}: {detail}", quoted(v))));
}

fn body(path: &str) -> String {
    if path.is_empty() {
        "body".into()
    } else {
        format!("{path} in body")
    }
}

fn validate_at(
    schema: &Value,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    root: bool,
    out: &mut Vec<Cause>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        return;
    }
    if v.is_null() {
        if !flag(schema, "nullable") && schema.get("type").is_some() {
            let t = schema["type"].as_str().unwrap_or("");
            out.push(Cause {
                reason: "FieldValueTypeInvalid",
                field: path.to_string(),
                message: format!("Invalid value: \"null\": {} must be of type {t}: \"null\"", body(path)),
            });
        }
        return;
    }
    // Type.
    if flag(schema, "x-kubernetes-int-or-string") {
        if !matches!(type_name(v), "integer" | "string") {
            out.push(Cause {
                reason: "FieldValueTypeInvalid",
                field: path.to_string(),
                message: format!(
                    "Invalid value: \"{}\": {} must be of type integer or string: \"{}\"",
                    type_name(v),
                    body(path),
                    type_name(v)
                ),
            });
            return;
        }
    } else if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(v);
        let ok = actual == t || (t == "number" && actual == "integer");
        if !ok {
            out.push(Cause {
                reason: "FieldValueTypeInvalid",
                field: path.to_string(),
                message: format!(
                    "Invalid value: \"{actual}\": {} must be of type {t}: \"{actual}\"",
                    body(path)
                ),
            });
            return;
        }
    }
    // Enum.
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        if !values.contains(v) {
            let list: Vec<String> = values.iter().map(quoted).collect();
            out.push(Cause::not_supported(
                path,
                format!("Unsupported value: {}: supported values: {}", quoted(v), list.join(", ")),
            ));
        }
    }
    match v {
        Value::String(s) => string_checks(schema, v, s, path, out),
        Value::Number(n) => number_checks(schema, v, n.as_f64().unwrap_or(0.0), path, out),
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64).filter(|m| len > *m) {
                out.push(Cause {
                    reason: "FieldValueTooMany",
                    field: path.to_string(),
                    message: format!("Too many: {len}: must have at most {max} items"),
                });
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64).filter(|m| len < *m) {
                invalid(out, path, v, format!("{} should have at least {min} items", body(path)));
            }
            list_type_checks(schema, items, path, out);
            if let Some(item) = schema.get("items").filter(|i| i.is_object()) {
                for (i, val) in items.iter().enumerate() {
                    let o = old_map_item(schema, old, val);
                    validate_at(item, val, o, &format!("{path}[{i}]"), false, out, depth + 1);
                }
            }
        }
        Value::Object(m) => {
            let embedded = flag(schema, "x-kubernetes-embedded-resource");
            if embedded {
                for f in ["apiVersion", "kind"] {
                    if m.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                        out.push(Cause::required(join(path, f)));
                    }
                }
            }
            let n = m.len() as u64;
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64).filter(|x| n > *x) {
                out.push(Cause {
                    reason: "FieldValueTooMany",
                    field: path.to_string(),
                    message: format!("Too many: {n}: must have at most {max} items"),
                });
            }
            if let Some(min) = schema.get("minProperties").and_then(Value::as_u64).filter(|x| n < *x) {
                invalid(out, path, v, format!("{} should have at least {min} properties", body(path)));
            }
            for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                let Some(r) = r.as_str() else { continue };
                if !m.contains_key(r) {
                    out.push(Cause::required(join(path, r)));
                }
            }
            let props = properties(schema);
            for (k, val) in m {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let o = old.and_then(|o| o.get(k));
                if let Some(sub) = props.and_then(|p| p.get(k)) {
                    validate_at(sub, val, o, &join(path, k), false, out, depth + 1);
                } else if let Some(add) = additional(schema) {
                    validate_at(add, val, o, &join(path, k), false, out, depth + 1);
                }
            }
        }
        _ => {}
    }
    // Value validations combined by the logical junctors (structural schemas allow them).
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate_at(s, v, old, path, root, out, depth + 1);
        }
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        let passes = any.iter().any(|s| {
            let mut o = Vec::new();
            validate_at(s, v, old, path, root, &mut o, depth + 1);
            o.is_empty()
        });
        if !passes && !any.is_empty() {
            invalid(out, path, v, format!("{} must validate at least one schema (anyOf)", body(path)));
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let passing = one
            .iter()
            .filter(|s| {
                let mut o = Vec::new();
                validate_at(s, v, old, path, root, &mut o, depth + 1);
                o.is_empty()
            })
            .count();
        if passing != 1 && !one.is_empty() {
            invalid(out, path, v, format!("{} must validate one and only one schema (oneOf)", body(path)));
        }
    }
    if let Some(not) = schema.get("not").filter(|n| n.is_object()) {
        let mut o = Vec::new();
        validate_at(not, v, old, path, root, &mut o, depth + 1);
        if o.is_empty() {
            invalid(out, path, v, format!("{} must not validate the schema (not)", body(path)));
        }
    }
    super::rules::check(schema, v, old, path, out);
}

fn string_checks(schema: &Value, v: &Value, s: &str, path: &str, out: &mut Vec<Cause>) {
    let len = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64).filter(|m| len > *m) {
        out.push(Cause {
            reason: "FieldValueTooLong",
            field: path.to_string(),
            message: format!("Too long: may not be more than {max} bytes"),
        });
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64).filter(|m| len < *m) {
        invalid(out, path, v, format!("{} should be at least {min} chars long", body(path)));
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        // Patterns were checked when the CRD was accepted; one that does not compile here
        // matches nothing rather than everything.
        let ok = pattern(p).is_some_and(|re| re.is_match(s));
        if !ok {
            invalid(out, path, v, format!("{} should match '{p}'", body(path)));
        }
    }
    if let Some(f) = schema.get("format").and_then(Value::as_str) {
        if !format_ok(f, s) {
            invalid(out, path, v, format!("{} must be of type {f}: {}", body(path), quoted(v)));
        }
    }
}

/// A compiled `pattern` (cached: the same few run on every write of a kind).
fn pattern(p: &str) -> Option<std::sync::Arc<regex::Regex>> {
    use std::collections::HashMap;
    use std::sync::{Arc, LazyLock, Mutex};
    static CACHE: LazyLock<Mutex<HashMap<String, Option<Arc<regex::Regex>>>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(re) = cache.get(p) {
        return re.clone();
    }
    let re = regex::Regex::new(p).ok().map(Arc::new);
    if cache.len() > 10_000 {
        cache.clear();
    }
    cache.insert(p.to_string(), re.clone());
    re
}

fn number_checks(schema: &Value, v: &Value, n: f64, path: &str, out: &mut Vec<Cause>) {
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let excl = flag(schema, "exclusiveMaximum");
        if (excl && n >= max) || n > max {
            let rel = if excl { "less than" } else { "less than or equal to" };
            invalid(out, path, v, format!("{} should be {rel} {}", body(path), num(max)));
        }
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let excl = flag(schema, "exclusiveMinimum");
        if (excl && n <= min) || n < min {
            let rel = if excl { "greater than" } else { "greater than or equal to" };
            invalid(out, path, v, format!("{} should be {rel} {}", body(path), num(min)));
        }
    }
    if let Some(m) = schema.get("multipleOf").and_then(Value::as_f64).filter(|m| *m > 0.0) {
        if (n / m).fract().abs() > f64::EPSILON {
            invalid(out, path, v, format!("{} should be a multiple of {}", body(path), num(m)));
        }
    }
    if let Some(f) = schema.get("format").and_then(Value::as_str) {
        let fits = match f {
            "int32" => n.fract() == 0.0 && n >= f64::from(i32::MIN) && n <= f64::from(i32::MAX),
            "int64" => n.fract() == 0.0,
            _ => true,
        };
        if !fits {
            invalid(out, path, v, format!("{} must be of type {f}: {}", body(path), num(n)));
        }
    }
}

fn num(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        f.to_string()
    }
}

/// kube-openapi's string formats (the ones upstream's CRD validation knows); unknown
/// formats accept anything, as upstream.
fn format_ok(format: &str, s: &str) -> bool {
    use std::net::IpAddr;
    match format {
        "int32" => s.parse::<i32>().is_ok(),
        "int64" => s.parse::<i64>().is_ok(),
        "byte" => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        "date-time" | "datetime" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.parse::<jiff::civil::Date>().is_ok() && s.len() == 10,
        "uuid" => {
            let hex = |p: &str, n: usize| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit());
            let parts: Vec<&str> = s.split('-').collect();
            parts.len() == 5
                && hex(parts[0], 8)
                && hex(parts[1], 4)
                && hex(parts[2], 4)
                && hex(parts[3], 4)
                && hex(parts[4], 12)
        }
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "ip" => s.parse::<IpAddr>().is_ok(),
        "cidr" => s.split_once('/').is_some_and(|(ip, bits)| {
            ip.parse::<IpAddr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 128)
        }),
        "hostname" => {
            !s.is_empty()
                && s.len() <= 253
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                })
        }
        "email" => s.split_once('@').is_some_and(|(a, b)| !a.is_empty() && b.contains('.')),
        _ => true,
    }
}

/// `x-kubernetes-list-type: set` (no duplicates) and `map` (unique keys).
fn list_type_checks(schema: &Value, items: &[Value], path: &str, out: &mut Vec<Cause>) {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for (i, a) in items.iter().enumerate() {
                if items[..i].contains(a) {
                    out.push(Cause {
                        reason: "FieldValueDuplicate",
                        field: format!("{path}[{i}]"),
                        message: format!("Duplicate value: {}", a),
                    });
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let key_of = |v: &Value| -> Vec<Value> {
                keys.iter().map(|k| v.get(*k).cloned().unwrap_or(Value::Null)).collect()
            };
            for (i, a) in items.iter().enumerate() {
                let ka = key_of(a);
                if items[..i].iter().any(|b| key_of(b) == ka) {
                    let shown: Map<String, Value> =
                        keys.iter().zip(ka.iter()).map(|(k, v)| (k.to_string(), v.clone())).collect();
                    out.push(Cause {
                        reason: "FieldValueDuplicate",
                        field: format!("{path}[{i}]"),
                        message: format!("Duplicate value: {}", Value::Object(shown)),
                    });
                }
            }
        }
        _ => {}
    }
}

/// Checks that a schema is structural enough to be served (upstream's
/// `ValidateStructural`, in part): every object names a `type` (or is int-or-string or
/// preserves unknown fields), patterns compile, and `default`s are not given at the root.
/// Causes are reported under `field` (e.g.
/// `spec.versions[0].schema.openAPIV3Schema`).
pub fn check_structural(schema: &Value, field: &str, out: &mut Vec<Cause>) {
    structural_at(schema, field, true, out, 0);
    super::cost::check_schema(schema, field, out);
}

fn structural_at(schema: &Value, field: &str, root: bool, out: &mut Vec<Cause>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    let Some(obj) = schema.as_object() else {
        out.push(Cause::invalid(field, "Invalid value: must be an object"));
        return;
    };
    let typed = obj.get("type").and_then(Value::as_str).is_some_and(|t| !t.is_empty());
    if !typed
        && !flag(schema, "x-kubernetes-int-or-string")
        && !flag(schema, "x-kubernetes-preserve-unknown-fields")
    {
        out.push(Cause::required(format!("{field}.type")));
    }
    if root && typed && obj["type"] != "object" {
        out.push(Cause::invalid(
            format!("{field}.type"),
            format!("Invalid value: {}: must be object at the root", obj["type"]),
        ));
    }
    if let Some(t) = obj.get("type").and_then(Value::as_str) {
        if !matches!(t, "object" | "array" | "string" | "integer" | "number" | "boolean") {
            out.push(Cause::not_supported(
                format!("{field}.type"),
                format!(
                    "Unsupported value: {t:?}: supported values: \"array\", \"boolean\", \"integer\", \"number\", \"object\", \"string\""
                ),
            ));
        }
    }
    if root && obj.contains_key("default") {
        out.push(Cause::forbidden(format!("{field}.default"), "Forbidden: must not be set at the root"));
    }
    super::rules::check_definitions(schema, field, out);
    if let Some(p) = obj.get("pattern").and_then(Value::as_str) {
        if let Err(e) = regex::Regex::new(p) {
            out.push(Cause::invalid(
                format!("{field}.pattern"),
                format!("Invalid value: {p:?}: must be a valid regular expression, but isn't: {e}"),
            ));
        }
    }
    if obj.get("type").and_then(Value::as_str) == Some("array")
        && !obj.get("items").is_some_and(Value::is_object)
    {
        out.push(Cause::required(format!("{field}.items")));
    }
    if obj.contains_key("properties") && additional(schema).is_some() {
        out.push(Cause::forbidden(
            format!("{field}.additionalProperties"),
            "Forbidden: additionalProperties and properties are mutual exclusive",
        ));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, sub) in props {
            structural_at(sub, &format!("{field}.properties[{k}]"), false, out, depth + 1);
        }
    }
    if let Some(items) = obj.get("items").filter(|i| i.is_object()) {
        structural_at(items, &format!("{field}.items"), false, out, depth + 1);
    }
    if let Some(add) = additional(schema) {
        structural_at(add, &format!("{field}.additionalProperties"), false, out, depth + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crontab_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["cronSpec"],
                    "properties": {
                        "cronSpec": {"type": "string", "pattern": "^(\\d+|\\*)(/\\d+)?(\\s+(\\d+|\\*)(/\\d+)?){4}$"},
                        "image": {"type": "string", "maxLength": 20},
                        "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                        "policy": {"type": "string", "enum": ["Allow", "Forbid"], "default": "Allow"},
                        "port": {"x-kubernetes-int-or-string": true},
                        "when": {"type": "string", "format": "date-time"},
                        "note": {"type": "string", "nullable": true},
                        "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                                     "x-kubernetes-preserve-unknown-fields": true},
                        "ports": {"type": "array", "items": {"type": "object", "properties": {
                            "name": {"type": "string"}, "protocol": {"type": "string", "default": "TCP"}}}},
                    }
                },
                "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}},
            }
        })
    }

    #[test]
    fn prunes_unknown_fields_and_keeps_preserved_ones() {
        let mut obj = json!({
            "apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "a"},
            "spec": {"cronSpec": "* * * * */5", "bogus": 1, "extra": {"anything": {"x": 1}},
                     "labels": {"a": "b"}, "ports": [{"name": "p", "junk": true}],
                     "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "uid": "u"}, "spec": {}}},
            "top": "level",
        });
        let mut unknown = Vec::new();
        prune(&crontab_schema(), &mut obj, &mut unknown);
        assert_eq!(unknown, vec!["spec.bogus", "spec.ports[0].junk", "top"]);
        assert!(obj.get("top").is_none());
        assert_eq!(obj["spec"]["extra"]["anything"]["x"], 1);
        assert_eq!(obj["spec"]["labels"]["a"], "b");
        assert_eq!(obj["spec"]["template"]["metadata"], json!({"name": "x"}));
        assert_eq!(obj["metadata"]["name"], "a");
    }

    #[test]
    fn defaults_fill_missing_and_non_nullable_nulls() {
        let mut obj = json!({"spec": {"cronSpec": "x", "policy": null, "ports": [{"name": "a"}]}});
        apply_defaults(&crontab_schema(), &mut obj);
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["spec"]["policy"], "Allow");
        assert_eq!(obj["spec"]["ports"][0]["protocol"], "TCP");
        // No spec: nothing below it is invented.
        let mut empty = json!({"metadata": {}});
        apply_defaults(&crontab_schema(), &mut empty);
        assert!(empty.get("spec").is_none());
    }

    #[test]
    fn validation_names_each_failing_field() {
        let obj = json!({"spec": {
            "cronSpec": 5, "image": "a-very-long-image-name-indeed", "replicas": 11,
            "policy": "Maybe", "port": true, "when": "yesterday", "tags": ["a", "a"],
            "labels": {"x": 1}, "template": {"spec": {}},
        }});
        let causes = validate(&crontab_schema(), &obj);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.cronSpec",
                "spec.image",
                "spec.labels.x",
                "spec.policy",
                "spec.port",
                "spec.replicas",
                "spec.tags[1]",
                "spec.template.apiVersion",
                "spec.template.kind",
                "spec.when",
            ]
        );
        assert_eq!(
            causes[0].message,
            "Invalid value: \"integer\": spec.cronSpec in body must be of type string: \"integer\""
        );
        assert_eq!(
            causes[5].message,
            "Invalid value: 11: spec.replicas in body should be less than or equal to 10"
        );
        assert_eq!(causes[3].reason, "FieldValueNotSupported");
        assert_eq!(
            causes[3].message,
            "Unsupported value: \"Maybe\": supported values: \"Allow\", \"Forbid\""
        );
        let missing = validate(&crontab_schema(), &json!({"spec": {}}));
        assert_eq!(missing, vec![Cause::required("spec.cronSpec")]);
        let pattern = validate(&crontab_schema(), &json!({"spec": {"cronSpec": "nope"}}));
        assert!(pattern[0].message.contains("should match"), "{pattern:?}");
        let ok = validate(
            &crontab_schema(),
            &json!({"spec": {"cronSpec": "* * * * */5", "port": "http", "note": null, "when": "2024-01-01T00:00:00Z"}}),
        );
        assert!(ok.is_empty(), "{ok:?}");
    }

    #[test]
    fn structural_check_reports_missing_types_and_bad_patterns() {
        let mut out = Vec::new();
        check_structural(
            &json!({"type": "object", "properties": {"a": {}, "b": {"type": "string", "pattern": "("},
                    "c": {"type": "array"}}}),
            "s",
            &mut out,
        );
        let fields: Vec<&str> = out.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["s.properties[a].type", "s.properties[b].pattern", "s.properties[c].items"]);
        let mut ok = Vec::new();
        check_structural(&crontab_schema(), "s", &mut ok);
        assert!(ok.is_empty(), "{ok:?}");
    }
}
