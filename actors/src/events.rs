//! Core Events (`kubectl describe` shows them): a small recorder writing through the API.

use crate::client::{gvr, ApiClient};
use serde_json::{json, Value};

/// Writes core/v1 Events about objects.
#[derive(Clone)]
pub struct Recorder {
    client: ApiClient,
    component: String,
}

impl Recorder {
    /// A recorder reporting as `component` (e.g. `default-scheduler`).
    pub fn new(client: ApiClient, component: &str) -> Recorder {
        Recorder { client, component: component.to_string() }
    }

    /// Records an event of `type_` (`Normal` or `Warning`) about `obj`. Failures are
    /// logged, never returned: events are best effort.
    pub async fn event(&self, obj: &Value, type_: &str, reason: &str, message: &str) {
        let md = obj.get("metadata");
        let s = |k: &str| md.and_then(|m| m.get(k)).and_then(Value::as_str).unwrap_or("").to_string();
        let (name, ns, uid, rv) = (s("name"), s("namespace"), s("uid"), s("resourceVersion"));
        let ns = if ns.is_empty() { "default".to_string() } else { ns };
        let now = jiff::Timestamp::now();
        let secs = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string();
        let micro = now.to_string();
        let ev = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": format!("{name}.{:x}", now.as_nanosecond() as u64), "namespace": ns},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion").cloned().unwrap_or(Value::Null),
                "kind": obj.get("kind").cloned().unwrap_or(Value::Null),
                "name": name, "namespace": md.and_then(|m| m.get("namespace")).cloned().unwrap_or(Value::Null),
                "uid": uid, "resourceVersion": rv,
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.component,
            "firstTimestamp": secs,
            "lastTimestamp": secs,
            "eventTime": micro,
            "action": reason,
            "count": 1,
        });
        if let Err(e) = self.client.create(gvr::EVENTS, Some(&ns), ev).await {
            tracing::debug!(reason, "failed to record event: {e}");
        }
    }
}
