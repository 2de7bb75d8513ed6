//! The resource metrics API, `metrics.k8s.io/v1beta1` NodeMetrics and PodMetrics, as
//! metrics-server serves it: the latest usage report of each node agent (or of the
//! simulated nodes), received on the bus (`capstan_bus::usage`), held in memory and
//! answered on get and list. Nothing is stored: a gateway that starts knows nothing until
//! the next reports arrive (every few seconds), as metrics-server after a restart.
//!
//! The group is built in (`capstan_api::registry`, verbs get and list) and so appears in
//! discovery and as a local APIService `v1beta1.metrics.k8s.io`, authorized by RBAC on
//! `nodes`/`pods` of `metrics.k8s.io` like any other resource.

use crate::auth::User;
use crate::service::{ApiService, ListOptions, ListPage};
use crate::status::{ApiError, ApiResult};
use capstan_api::{meta, registry, ResourceInfo};
use capstan_bus::usage::{self, Usage, UsageReport};
use capstan_bus::Bus;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

/// How long a node's report is served after it arrived (metrics-server drops a node it
/// could not scrape for a while; ours publish every 5 s).
const STALE_AFTER: Duration = Duration::from_secs(60);

/// Node name → (when it arrived, the report).
type Reports = HashMap<String, (Instant, Arc<UsageReport>)>;
static REPORTS: LazyLock<RwLock<Reports>> = LazyLock::new(|| RwLock::new(HashMap::new()));

/// Takes `report` in (what the bus subscription does; tests call it directly).
pub fn record(report: UsageReport) {
    REPORTS
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(report.node.clone(), (Instant::now(), Arc::new(report)));
}

fn fresh_reports() -> Vec<Arc<UsageReport>> {
    let mut map = REPORTS.write().unwrap_or_else(|e| e.into_inner());
    map.retain(|_, (at, _)| at.elapsed() < STALE_AFTER);
    map.values().map(|(_, r)| r.clone()).collect()
}

/// Follows the usage reports on the bus until the bus ends the subscription.
pub async fn follow(bus: Arc<dyn Bus>) {
    let mut sub = match bus.subscribe(usage::all_node_usage(), None).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("failed to subscribe to node usage reports: {e}");
            return;
        }
    };
    while let Some(msg) = sub.next().await {
        match UsageReport::decode(&msg.payload) {
            // The subject proves which node sent it (each node's credential publishes only on
            // its own); a report naming another node is dropped.
            Ok(r) if usage::node_usage(&r.node) == msg.subject => record(r),
            Ok(r) => {
                tracing::debug!(node = r.node, subject = msg.subject, "usage report on a foreign subject")
            }
            Err(e) => tracing::debug!("undecodable usage report: {e}"),
        }
    }
}

/// Whether `res` is a resource of the metrics group.
pub fn serves(res: &ResourceInfo) -> bool {
    res.group == registry::METRICS_GROUP
}

/// A CPU quantity from nanocores, as metrics-server writes it (`NewScaledQuantity(n, -9)`,
/// canonical: `250m`, `1`, `1234567n`).
pub fn cpu_quantity(nanocores: u64) -> String {
    if nanocores == 0 {
        "0".into()
    } else if nanocores.is_multiple_of(1_000_000_000) {
        format!("{}", nanocores / 1_000_000_000)
    } else if nanocores.is_multiple_of(1_000_000) {
        format!("{}m", nanocores / 1_000_000)
    } else if nanocores.is_multiple_of(1_000) {
        format!("{}u", nanocores / 1_000)
    } else {
        format!("{nanocores}n")
    }
}

/// A memory quantity from bytes in canonical binary SI form (`NewQuantity(b, BinarySI)`).
pub fn memory_quantity(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    for (shift, suffix) in [(60, "Ei"), (50, "Pi"), (40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A Go `time.Duration` string of whole milliseconds (`5s`, `5.012s`).
fn window(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        let frac = format!("{:03}", millis % 1000);
        format!("{}.{}s", millis / 1000, frac.trim_end_matches('0'))
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({"cpu": cpu_quantity(u.cpu_nanocores), "memory": memory_quantity(u.memory_bytes)})
}

fn now() -> String {
    let t = jiff::Timestamp::now();
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()
}

fn metadata(obj: &Value, namespace: Option<&str>, name: &str) -> Value {
    let mut md = json!({"name": name, "creationTimestamp": now()});
    if let Some(ns) = namespace {
        md["namespace"] = json!(ns);
    }
    if let Some(l) = obj["metadata"].get("labels").filter(|l| l.is_object()) {
        md["labels"] = l.clone();
    }
    md
}

/// The NodeMetrics and PodMetrics the fresh reports give, for the nodes and pods that exist
/// in the cache (with their labels).
fn objects(svc: &ApiService, res: &'static ResourceInfo, namespace: Option<&str>) -> Vec<Value> {
    let cache = svc.cache();
    let mut out = Vec::new();
    let nodes = registry::find("", "v1", "nodes").expect("nodes");
    let pods = registry::find("", "v1", "pods").expect("pods");
    for r in fresh_reports() {
        if res.plural == "nodes" {
            let Some(node) = cache.get(&crate::keys::object_key(nodes, None, &r.node)) else { continue };
            out.push(json!({
                "kind": res.kind,
                "apiVersion": res.api_version(),
                "metadata": metadata(&node, None, &r.node),
                "timestamp": r.timestamp,
                "window": window(r.window_millis),
                "usage": usage_json(&r.node_usage),
            }));
            continue;
        }
        for p in &r.pods {
            if namespace.is_some_and(|ns| ns != p.namespace) || p.containers.is_empty() {
                continue;
            }
            let Some(pod) = cache.get(&crate::keys::object_key(pods, Some(&p.namespace), &p.name)) else {
                continue;
            };
            if pod["metadata"]["uid"].as_str() != Some(p.uid.as_str()) {
                continue;
            }
            let containers: Vec<Value> =
                p.containers.iter().map(|c| json!({"name": c.name, "usage": usage_json(&c.usage)})).collect();
            out.push(json!({
                "kind": res.kind,
                "apiVersion": res.api_version(),
                "metadata": metadata(&pod, Some(&p.namespace), &p.name),
                "timestamp": r.timestamp,
                "window": window(r.window_millis),
                "containers": containers,
            }));
        }
    }
    out.sort_by(|a, b| {
        let k = |o: &Value| {
            (meta::namespace(o).unwrap_or("").to_string(), meta::name(o).unwrap_or("").to_string())
        };
        k(a).cmp(&k(b))
    });
    out
}

fn not_found(res: &ResourceInfo, name: &str) -> ApiError {
    ApiError::NotFound {
        message: format!("{}.{} \"{name}\" not found", res.singular, res.group),
        details: Some(crate::status::Details {
            name: name.into(),
            group: res.group.into(),
            kind: res.plural.into(),
            ..Default::default()
        }),
    }
}

/// GET of one NodeMetrics or PodMetrics.
pub fn get(
    svc: &ApiService,
    user: &User,
    res: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
) -> ApiResult<Value> {
    svc.authorize(user, "get", res, None, namespace, Some(name))?;
    objects(svc, res, namespace)
        .into_iter()
        .find(|o| meta::name(o) == Some(name))
        .ok_or_else(|| not_found(res, name))
}

/// LIST of NodeMetrics or PodMetrics (label and field selectors apply).
pub fn list(
    svc: &ApiService,
    user: &User,
    res: &'static ResourceInfo,
    namespace: Option<&str>,
    opts: &ListOptions,
) -> ApiResult<ListPage> {
    svc.authorize(user, "list", res, None, namespace, None)?;
    let items = objects(svc, res, namespace)
        .into_iter()
        .filter(|o| opts.label_selector.matches(&meta::labels(o)) && opts.field_selector.matches(o))
        .map(|o| Arc::new(crate::cache::Object::new(o)))
        .collect();
    Ok(ListPage { items, revision: svc.cache().revision(), continue_token: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_as_metrics_server_writes_them() {
        assert_eq!(cpu_quantity(0), "0");
        assert_eq!(cpu_quantity(2_000_000_000), "2");
        assert_eq!(cpu_quantity(250_000_000), "250m");
        assert_eq!(cpu_quantity(1_234_567), "1234567n");
        assert_eq!(memory_quantity(1 << 20), "1Mi");
        assert_eq!(memory_quantity(3 << 10), "3Ki");
        assert_eq!(memory_quantity(1000), "1000");
        assert_eq!(window(5000), "5s");
        assert_eq!(window(5120), "5.12s");
    }
}
