//! Helpers shared by the workload controllers (Job, CronJob, DaemonSet, StatefulSet):
//! reading pod state, owner references, template hashes, times and creation/deletion
//! expectations.

use jiff::Timestamp;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A string at a path of nested objects.
pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

/// An integer at a path of nested objects.
pub fn i64_at(v: &Value, path: &[&str]) -> Option<i64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_i64()
}

/// A boolean at a path of nested objects.
pub fn bool_at(v: &Value, path: &[&str]) -> Option<bool> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_bool()
}

/// `metadata.name`.
pub fn name(obj: &Value) -> &str {
    str_at(obj, &["metadata", "name"]).unwrap_or("")
}

/// `metadata.namespace`.
pub fn namespace(obj: &Value) -> &str {
    str_at(obj, &["metadata", "namespace"]).unwrap_or("")
}

/// `metadata.uid`.
pub fn uid(obj: &Value) -> &str {
    str_at(obj, &["metadata", "uid"]).unwrap_or("")
}

/// Whether `metadata.deletionTimestamp` is set.
pub fn is_terminating(obj: &Value) -> bool {
    obj.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|v| !v.is_null())
}

/// `status.phase` of a pod (`Pending` when unset).
pub fn pod_phase(pod: &Value) -> &str {
    str_at(pod, &["status", "phase"]).unwrap_or("Pending")
}

/// Whether a pod has finished (Succeeded or Failed).
pub fn pod_finished(pod: &Value) -> bool {
    matches!(pod_phase(pod), "Succeeded" | "Failed")
}

/// The pod's condition of `type_`.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(type_)))
}

/// Whether the object has a condition of `type_` with status True.
pub fn condition_true(obj: &Value, type_: &str) -> bool {
    condition(obj, type_).and_then(|c| c.get("status")).and_then(Value::as_str) == Some("True")
}

/// Whether the pod is Running with its Ready condition True.
pub fn pod_ready(pod: &Value) -> bool {
    pod_phase(pod) == "Running" && condition_true(pod, "Ready")
}

/// Whether the pod has been ready for at least `min_ready_seconds` at `now`.
pub fn pod_available(pod: &Value, min_ready_seconds: i64, now: Timestamp) -> bool {
    if !pod_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    let since = condition(pod, "Ready")
        .and_then(|c| c.get("lastTransitionTime"))
        .and_then(Value::as_str)
        .and_then(parse_time);
    match since {
        Some(t) => t.as_second().saturating_add(min_ready_seconds) <= now.as_second(),
        None => false,
    }
}

/// Whether `obj` has a controller ownerReference with `owner_uid`.
pub fn controlled_by(obj: &Value, owner_uid: &str) -> bool {
    obj.get("metadata").and_then(|m| m.get("ownerReferences")).and_then(Value::as_array).is_some_and(|refs| {
        refs.iter().any(|r| {
            r.get("controller").and_then(Value::as_bool) == Some(true)
                && r.get("uid").and_then(Value::as_str) == Some(owner_uid)
        })
    })
}

/// A controller ownerReference to `owner`.
pub fn owner_ref(api_version: &str, kind: &str, owner: &Value) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "name": name(owner),
        "uid": uid(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// The current time, to the second.
pub fn now() -> Timestamp {
    let t = Timestamp::now();
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// RFC 3339 at second precision (`2024-01-02T03:04:05Z`).
pub fn rfc3339(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()
}

/// Parses an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok()
}

/// JSON with object keys sorted at every level (a stable form to hash).
pub fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push(':');
                    if let Some(x) = m.get(*k) {
                        write(x, out);
                    }
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// A short hash of a value, encoded as upstream's `rand.SafeEncodeString` of the
/// decimal FNV-1a 32 hash (no vowels, no look-alike characters).
pub fn hash_of(v: &Value, collision_count: i64) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(canonical_json(v).as_bytes());
    if collision_count > 0 {
        feed(&collision_count.to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string().bytes().map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()])).collect()
}

/// A pod's ordinal as upstream's `getOrdinal`: the number after the last `-`.
pub fn ordinal_suffix(name: &str) -> Option<i64> {
    let (_, n) = name.rsplit_once('-')?;
    if n.is_empty() || n.len() > 1 && n.starts_with('0') {
        return None;
    }
    n.parse().ok()
}

/// Pod creations and deletions a controller has asked for but its cache has not shown
/// yet (upstream's "expectations"): until they are seen, or time out, a reconcile must
/// not create or delete more pods on stale data.
#[derive(Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Pending>>,
}

struct Pending {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Instant,
}

/// How long an unobserved expectation blocks further changes.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

impl Expectations {
    /// Records that `pod_name` was created for `key`.
    pub fn created(&self, key: &str, pod_name: &str) {
        self.with(key, |p| {
            p.creates.insert(pod_name.to_string());
        });
    }

    /// Records that the pod with `pod_uid` was deleted for `key`.
    pub fn deleted(&self, key: &str, pod_uid: &str) {
        self.with(key, |p| {
            p.deletes.insert(pod_uid.to_string());
        });
    }

    fn with(&self, key: &str, f: impl FnOnce(&mut Pending)) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let p = m.entry(key.to_string()).or_insert_with(|| Pending {
            creates: HashSet::new(),
            deletes: HashSet::new(),
            since: Instant::now(),
        });
        p.since = Instant::now();
        f(p);
    }

    /// Whether everything expected for `key` has been observed: `created(name)` says a
    /// created pod is in the cache, `gone(uid)` that a deleted pod is gone or terminating.
    pub fn satisfied(&self, key: &str, created: impl Fn(&str) -> bool, gone: impl Fn(&str) -> bool) -> bool {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = m.get_mut(key) else { return true };
        p.creates.retain(|n| !created(n));
        p.deletes.retain(|u| !gone(u));
        if (p.creates.is_empty() && p.deletes.is_empty()) || p.since.elapsed() > EXPECTATION_TIMEOUT {
            m.remove(key);
            return true;
        }
        false
    }

    /// Forgets `key` (its object is gone).
    pub fn forget(&self, key: &str) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// Whether the named pods are in `pods` (by `ns/name`) or gone (by uid), for
/// [`Expectations::satisfied`].
pub fn pod_seen(pods: &crate::informer::Informer, ns: &str, pod_name: &str) -> bool {
    pods.get(&format!("{ns}/{pod_name}")).is_some()
}

/// Whether no pod with `pod_uid` remains in `ns` except terminating ones.
pub fn pod_gone(pods: &crate::informer::Informer, ns: &str, pod_uid: &str) -> bool {
    !pods.list_ns(ns).iter().any(|p| uid(p) == pod_uid && !is_terminating(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_order_free() {
        let a = json!({"b": 1, "a": {"y": [1, 2], "x": "s"}});
        let b = json!({"a": {"x": "s", "y": [1, 2]}, "b": 1});
        assert_eq!(hash_of(&a, 0), hash_of(&b, 0));
        assert_ne!(hash_of(&a, 0), hash_of(&a, 1));
        assert!(hash_of(&a, 0).chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn ordinals() {
        assert_eq!(ordinal_suffix("web-0"), Some(0));
        assert_eq!(ordinal_suffix("my-web-12"), Some(12));
        assert_eq!(ordinal_suffix("web-01"), None);
        assert_eq!(ordinal_suffix("web"), None);
    }

    #[test]
    fn availability() {
        let pod = json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}});
        let t = |s: &str| parse_time(s).unwrap_or_default();
        assert!(pod_available(&pod, 0, t("2024-01-01T00:00:00Z")));
        assert!(!pod_available(&pod, 10, t("2024-01-01T00:00:05Z")));
        assert!(pod_available(&pod, 10, t("2024-01-01T00:00:10Z")));
    }

    #[test]
    fn expectations() {
        let e = Expectations::default();
        assert!(e.satisfied("k", |_| false, |_| false));
        e.created("k", "p1");
        e.deleted("k", "u1");
        assert!(!e.satisfied("k", |_| true, |_| false));
        assert!(e.satisfied("k", |_| false, |_| true));
    }
}
