//! Helpers to read and write `metadata` on objects in their JSON form.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// `metadata` of an object, created empty when missing. Returns `None` when the object is
/// not a JSON object or `metadata` is not an object.
pub fn metadata_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let o = obj.as_object_mut()?;
    let m = o.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if m.is_null() {
        *m = Value::Object(Map::new());
    }
    m.as_object_mut()
}

/// A string field of `metadata`.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// `metadata.name`.
pub fn name(obj: &Value) -> Option<&str> {
    meta_str(obj, "name")
}

/// `metadata.namespace`.
pub fn namespace(obj: &Value) -> Option<&str> {
    meta_str(obj, "namespace")
}

/// Sets a string field of `metadata`.
pub fn set_meta_str(obj: &mut Value, field: &str, value: &str) {
    if let Some(m) = metadata_mut(obj) {
        m.insert(field.to_string(), Value::String(value.to_string()));
    }
}

/// Removes a field of `metadata`.
pub fn remove_meta(obj: &mut Value, field: &str) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove(field);
    }
}

/// A string map of `metadata` (`labels` or `annotations`), empty when missing.
pub fn string_map(obj: &Value, field: &str) -> BTreeMap<String, String> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default()
}

/// `metadata.labels`.
pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    string_map(obj, "labels")
}

/// `metadata.finalizers`.
pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// `metadata.generation`, 0 when missing.
pub fn generation(obj: &Value) -> i64 {
    obj.get("metadata").and_then(|m| m.get("generation")).and_then(Value::as_i64).unwrap_or(0)
}

/// Looks up a dotted path (`spec.nodeName`) in an object.
pub fn path<'a>(obj: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(obj, |v, part| v.get(part))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn read_and_write() {
        let mut o = json!({"kind": "Pod", "spec": {"nodeName": "n1"}});
        assert_eq!(name(&o), None);
        set_meta_str(&mut o, "name", "x");
        assert_eq!(name(&o), Some("x"));
        assert_eq!(path(&o, "spec.nodeName"), Some(&json!("n1")));
        assert!(labels(&o).is_empty());
        remove_meta(&mut o, "name");
        assert_eq!(name(&o), None);
    }
}
