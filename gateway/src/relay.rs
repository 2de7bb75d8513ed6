//! The event relay: the store's change log → the bus's event stream.
//!
//! Exactly one relay is active in a cluster: it holds the store lease `relay`. It resumes
//! from the last revision the event stream holds, appends every object change in revision
//! order (message id = revision, so a change appended twice is stored once) and retries
//! from the same revision after a bus failure, so integrators see no gap and no reordering.

use crate::cache::decode_stored;
use capstan_bus::{subjects, Bus, EventEnvelope};
use capstan_storage::{ChangeKind, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The lease that elects the active relay.
pub const LEASE: &str = "capstan/relay";

const TTL: Duration = Duration::from_secs(10);

/// Splits an object key into (group, resource, namespace, name).
fn parse_key(key: &[u8]) -> Option<(String, String, Option<String>, String)> {
    let s = std::str::from_utf8(key).ok()?.strip_prefix("/registry/")?;
    let parts: Vec<&str> = s.split('/').collect();
    let group = |g: &str| if g == "core" { String::new() } else { g.to_string() };
    match parts.as_slice() {
        [g, r, ns, name] => Some((group(g), r.to_string(), Some(ns.to_string()), name.to_string())),
        [g, r, name] => Some((group(g), r.to_string(), None, name.to_string())),
        _ => None,
    }
}

/// The annotation on a Secret event whose data was left out.
pub const REDACTED: &str = "capstan.io/data-redacted";

/// Secrets go on the bus without their values: `data` and `stringData` are dropped and the
/// annotation [`REDACTED`] says so. A subscriber that needs the values reads the Secret
/// through the API, which authorizes it; the event stream (and JetStream's files) never
/// hold a Secret's plaintext.
pub fn redact(group: &str, resource: &str, mut object: serde_json::Value) -> serde_json::Value {
    if group.is_empty() && resource == "secrets" {
        if let Some(o) = object.as_object_mut() {
            o.remove("data");
            o.remove("stringData");
        }
        if let Some(m) = object.get_mut("metadata").and_then(serde_json::Value::as_object_mut) {
            let annotations = m.entry("annotations").or_insert_with(|| serde_json::json!({}));
            if let Some(a) = annotations.as_object_mut() {
                a.insert(REDACTED.into(), serde_json::json!("true"));
                // kubectl apply keeps the whole object, values included, in this annotation.
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
            }
        }
    }
    object
}

/// Runs the relay until the store closes. `holder` identifies this process; `progress`
/// is set to the last revision known to be in the event stream (the compactor keeps the
/// change log from there on).
pub async fn run(store: Arc<dyn Store>, bus: Arc<dyn Bus>, holder: String, progress: Arc<AtomicU64>) {
    let mut commits = store.subscribe_commits();
    loop {
        // Become the active relay.
        let lease = match store.acquire_lease(LEASE, &holder, TTL).await {
            Ok(l) => l,
            Err(capstan_storage::Error::Closed) => return,
            Err(e) => {
                tracing::debug!("relay standing by: {e}");
                tokio::time::sleep(TTL / 3).await;
                continue;
            }
        };
        tracing::info!(token = lease.token, "event relay active");
        let mut renew_at = tokio::time::Instant::now() + TTL / 3;
        let mut after = loop {
            match bus.last_event_revision().await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!("relay cannot read the event stream yet: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        'active: loop {
            progress.store(after, Ordering::Relaxed);
            if tokio::time::Instant::now() >= renew_at {
                match store.acquire_lease(LEASE, &holder, TTL).await {
                    Ok(_) => renew_at = tokio::time::Instant::now() + TTL / 3,
                    Err(capstan_storage::Error::Closed) => return,
                    Err(e) => {
                        tracing::warn!("relay lost its lease: {e}");
                        break 'active;
                    }
                }
            }
            let changes = match store.changes(after, 1024).await {
                Ok(c) => c,
                Err(capstan_storage::Error::Compacted { oldest, .. }) => {
                    tracing::error!(
                        after,
                        oldest,
                        "event stream fell behind compaction; events were lost, consumers must relist"
                    );
                    after = oldest.saturating_sub(1);
                    continue;
                }
                Err(capstan_storage::Error::Closed) => return,
                Err(e) => {
                    tracing::warn!("relay failed to read the change log: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if changes.is_empty() {
                tokio::select! {
                    r = commits.changed() => { if r.is_err() { return; } }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            for c in changes {
                let Some((group, resource, ns, name)) = parse_key(&c.key) else {
                    after = c.revision;
                    continue;
                };
                let Some(object) = decode_stored(&c.value, c.revision) else {
                    tracing::warn!(revision = c.revision, "relay skipped an undecodable object");
                    after = c.revision;
                    continue;
                };
                let type_ = match c.kind {
                    ChangeKind::Create => "ADDED",
                    ChangeKind::Update => "MODIFIED",
                    ChangeKind::Delete => "DELETED",
                };
                let object = redact(&group, &resource, object);
                let env = EventEnvelope { type_: type_.into(), revision: c.revision, object };
                let payload = match env.to_bytes() {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(revision = c.revision, "relay failed to encode an event: {e}");
                        after = c.revision;
                        continue;
                    }
                };
                let subject = subjects::event(&group, &resource, ns.as_deref(), &name);
                // Retry the same revision until the bus takes it: no gaps, no reordering.
                let mut backoff = Duration::from_millis(50);
                loop {
                    match bus.append_event(subject.clone(), payload.clone(), c.revision).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(
                                revision = c.revision,
                                "relay failed to append an event, retrying: {e}"
                            );
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                            if tokio::time::Instant::now() >= renew_at {
                                continue 'active;
                            }
                        }
                    }
                }
                after = c.revision;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_leave_without_values() {
        let s = serde_json::json!({"kind": "Secret", "metadata": {"name": "s", "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"k\":\"c2VjcmV0\"}}"}},
            "data": {"k": "c2VjcmV0"}, "stringData": {"x": "y"}, "type": "Opaque"});
        let r = redact("", "secrets", s.clone());
        assert!(r.get("data").is_none() && r.get("stringData").is_none());
        assert_eq!(r["metadata"]["annotations"][REDACTED], "true");
        assert!(!r.to_string().contains("c2VjcmV0"));
        assert_eq!(r["type"], "Opaque");
        let cm = serde_json::json!({"kind": "ConfigMap", "data": {"k": "v"}});
        assert_eq!(redact("", "configmaps", cm.clone()), cm);
    }

    #[test]
    fn keys() {
        assert_eq!(
            parse_key(b"/registry/core/pods/default/x"),
            Some((String::new(), "pods".into(), Some("default".into()), "x".into()))
        );
        assert_eq!(parse_key(b"/registry/apps/deployments/ns/d").map(|k| k.0), Some("apps".into()));
        assert_eq!(parse_key(b"/registry/core/nodes/n1").map(|k| k.2), Some(None));
        assert_eq!(parse_key(b"/other"), None);
    }
}
