//! The endpoints and endpointslice controllers (one reconciler, keyed by Service).
//!
//! For every Service with a selector, as upstream's `pkg/controller/endpoint` and
//! `pkg/controller/endpointslice`:
//! - an `Endpoints` object of the same name: pods with an IP, ready ones in `addresses`,
//!   the others in `notReadyAddresses`, grouped into subsets by their resolved ports (named
//!   target ports are looked up in each pod's container ports);
//! - `EndpointSlice`s named `<service>-<random>` (labels `kubernetes.io/service-name` and
//!   `endpointslice.kubernetes.io/managed-by`), one per port set, at most 100 endpoints
//!   each, with `ready`/`serving`/`terminating` conditions; owned by the Service (so the
//!   garbage collector removes them too), IPv4 only.
//!
//! When the Service goes, its Endpoints and slices are deleted.

use super::Ctx;
use crate::client::{gvr, ApiClient, ClientError};
use crate::informer::{key_of, split_key, Change, Informer, Key};
use crate::runtime::{Action, Controller, Enqueue, ReconcileError, Reconciler};
use actix::{Actor, Addr};
use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming a slice's manager.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Label upstream puts on the Endpoints and slices of headless Services.
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// At most this many endpoints per slice.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

const SYNC_WAIT: Duration = Duration::from_millis(100);
const CATCH_UP_WAIT: Duration = Duration::from_millis(20);

// ---- pods and services -------------------------------------------------------------------

fn is_deleting(obj: &Value) -> bool {
    obj.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|v| !v.is_null())
}

fn meta_str<'a>(obj: &'a Value, f: &str) -> &'a str {
    capstan_api::meta::meta_str(obj, f).unwrap_or("")
}

fn labels(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(|m| m.get("labels")).and_then(Value::as_object)
}

/// The Service's selector, if it has a non-empty one.
fn selector(svc: &Value) -> Option<&Map<String, Value>> {
    svc.get("spec").and_then(|s| s.get("selector")).and_then(Value::as_object).filter(|m| !m.is_empty())
}

fn selects(sel: &Map<String, Value>, pod: &Value) -> bool {
    let l = labels(pod);
    sel.iter().all(|(k, v)| l.and_then(|l| l.get(k)) == Some(v))
}

fn is_headless(svc: &Value) -> bool {
    svc.get("spec").and_then(|s| s.get("clusterIP")).and_then(Value::as_str) == Some("None")
}

fn publish_not_ready(svc: &Value) -> bool {
    svc.get("spec").and_then(|s| s.get("publishNotReadyAddresses")).and_then(Value::as_bool).unwrap_or(false)
}

/// The pod's IPv4 address, if it has one.
fn pod_ipv4(pod: &Value) -> Option<String> {
    let status = pod.get("status")?;
    let from_list = status
        .get("podIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("ip").and_then(Value::as_str));
    let single = status.get("podIP").and_then(Value::as_str);
    from_list
        .chain(single)
        .find(|ip| !ip.is_empty() && ip.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
}

fn is_ready(pod: &Value) -> bool {
    pod.get("status").and_then(|s| s.get("conditions")).and_then(Value::as_array).is_some_and(|c| {
        c.iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Ready")
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
    })
}

fn is_terminal(pod: &Value) -> bool {
    matches!(
        pod.get("status").and_then(|s| s.get("phase")).and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

/// A Service port.
#[derive(Debug, Clone)]
struct ServicePort {
    name: String,
    protocol: String,
    app_protocol: Option<String>,
    target: Target,
}

#[derive(Debug, Clone)]
enum Target {
    Number(i64),
    Name(String),
}

fn service_ports(svc: &Value) -> Vec<ServicePort> {
    let Some(ports) = svc.get("spec").and_then(|s| s.get("ports")).and_then(Value::as_array) else {
        return Vec::new();
    };
    ports
        .iter()
        .filter_map(|p| {
            let port = p.get("port").and_then(Value::as_i64)?;
            let target = match p.get("targetPort") {
                Some(Value::Number(n)) => Target::Number(n.as_i64().unwrap_or(port)),
                Some(Value::String(s)) if !s.is_empty() => Target::Name(s.clone()),
                _ => Target::Number(port),
            };
            Some(ServicePort {
                name: p.get("name").and_then(Value::as_str).unwrap_or("").to_string(),
                protocol: p.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_string(),
                app_protocol: p.get("appProtocol").and_then(Value::as_str).map(str::to_string),
                target,
            })
        })
        .collect()
}

/// The pod's port for a Service port (upstream `FindPort`): a number as is, a name looked
/// up in the containers' ports with the same protocol.
fn resolve_port(pod: &Value, sp: &ServicePort) -> Option<i64> {
    match &sp.target {
        Target::Number(n) => Some(*n),
        Target::Name(name) => pod
            .get("spec")
            .and_then(|s| s.get("containers"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("ports").and_then(Value::as_array))
            .flatten()
            .find(|p| {
                p.get("name").and_then(Value::as_str) == Some(name.as_str())
                    && p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == sp.protocol
            })
            .and_then(|p| p.get("containerPort").and_then(Value::as_i64)),
    }
}

fn target_ref(pod: &Value) -> Value {
    json!({"kind": "Pod", "namespace": meta_str(pod, "namespace"), "name": meta_str(pod, "name"), "uid": meta_str(pod, "uid")})
}

/// The hostname a pod gets in a Service: `spec.hostname` when `spec.subdomain` names it.
fn hostname(svc: &Value, pod: &Value) -> Option<String> {
    let spec = pod.get("spec")?;
    let h = spec.get("hostname").and_then(Value::as_str).filter(|h| !h.is_empty())?;
    (spec.get("subdomain").and_then(Value::as_str) == Some(meta_str(svc, "name"))).then(|| h.to_string())
}

fn node_name(pod: &Value) -> Option<&str> {
    pod.get("spec").and_then(|s| s.get("nodeName")).and_then(Value::as_str).filter(|n| !n.is_empty())
}

// ---- Endpoints ---------------------------------------------------------------------------

fn endpoints_port(sp: &ServicePort, port: i64) -> Value {
    let mut p = json!({"port": port, "protocol": sp.protocol});
    if !sp.name.is_empty() {
        p["name"] = json!(sp.name);
    }
    if let Some(a) = &sp.app_protocol {
        p["appProtocol"] = json!(a);
    }
    p
}

/// The subsets of a Service's Endpoints over `pods` (already selected, in its namespace).
fn endpoints_subsets(svc: &Value, pods: &[Arc<Value>]) -> Vec<Value> {
    let tolerate = publish_not_ready(svc);
    let ports = service_ports(svc);
    if ports.is_empty() && !is_headless(svc) {
        return Vec::new();
    }
    // Port set (as JSON text, for ordering) → (ports, ready, not ready).
    type Group = (Vec<Value>, Vec<Value>, Vec<Value>);
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for pod in pods {
        if is_terminal(pod) || (!tolerate && is_deleting(pod)) {
            continue;
        }
        let Some(ip) = pod_ipv4(pod) else { continue };
        let mut addr = json!({"ip": ip, "targetRef": target_ref(pod)});
        if let Some(n) = node_name(pod) {
            addr["nodeName"] = json!(n);
        }
        if let Some(h) = hostname(svc, pod) {
            addr["hostname"] = json!(h);
        }
        let mut pod_ports: Vec<Value> =
            ports.iter().filter_map(|sp| resolve_port(pod, sp).map(|n| endpoints_port(sp, n))).collect();
        if pod_ports.is_empty() && !ports.is_empty() {
            continue;
        }
        pod_ports.sort_by_key(|p| p.to_string());
        let group_key = Value::Array(pod_ports.clone()).to_string();
        let g = groups.entry(group_key).or_insert_with(|| (pod_ports, Vec::new(), Vec::new()));
        if tolerate || is_ready(pod) {
            g.1.push(addr);
        } else {
            g.2.push(addr);
        }
    }
    let by_ip = |a: &Value| a.get("ip").and_then(Value::as_str).unwrap_or("").to_string();
    groups
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            ready.sort_by_key(by_ip);
            not_ready.sort_by_key(by_ip);
            let mut s = Map::new();
            if !ready.is_empty() {
                s.insert("addresses".into(), Value::Array(ready));
            }
            if !not_ready.is_empty() {
                s.insert("notReadyAddresses".into(), Value::Array(not_ready));
            }
            if !ports.is_empty() {
                s.insert("ports".into(), Value::Array(ports));
            }
            Value::Object(s)
        })
        .collect()
}

/// Labels of the Endpoints and slices: the Service's, plus the headless marker.
fn service_labels(svc: &Value) -> Map<String, Value> {
    let mut l = labels(svc).cloned().unwrap_or_default();
    if is_headless(svc) {
        l.insert(HEADLESS_LABEL.into(), json!(""));
    } else {
        l.remove(HEADLESS_LABEL);
    }
    l
}

// ---- EndpointSlices ----------------------------------------------------------------------

/// The contents of one slice: its ports and endpoints.
#[derive(Debug, Clone, PartialEq)]
struct SliceContent {
    ports: Vec<Value>,
    endpoints: Vec<Value>,
}

fn slice_port(sp: &ServicePort, port: i64) -> Value {
    let mut p = json!({"name": sp.name, "port": port, "protocol": sp.protocol});
    if let Some(a) = &sp.app_protocol {
        p["appProtocol"] = json!(a);
    }
    p
}

/// The slices a Service should have over `pods`: one group per port set, chunked; a
/// placeholder without endpoints when there are none (as upstream).
fn desired_slices(svc: &Value, pods: &[Arc<Value>]) -> Vec<SliceContent> {
    let tolerate = publish_not_ready(svc);
    let ports = service_ports(svc);
    // Port set (as JSON text) → (ports, (ip, endpoint)).
    type Group = (Vec<Value>, Vec<(String, Value)>);
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for pod in pods {
        if is_terminal(pod) {
            continue;
        }
        let Some(ip) = pod_ipv4(pod) else { continue };
        let terminating = is_deleting(pod);
        let serving = tolerate || is_ready(pod);
        let ready = tolerate || (serving && !terminating);
        let mut ep = json!({
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            "targetRef": target_ref(pod),
        });
        if let Some(n) = node_name(pod) {
            ep["nodeName"] = json!(n);
        }
        if let Some(h) = hostname(svc, pod) {
            ep["hostname"] = json!(h);
        }
        let pod_ports: Vec<Value> =
            ports.iter().filter_map(|sp| resolve_port(pod, sp).map(|n| slice_port(sp, n))).collect();
        let group_key = Value::Array(pod_ports.clone()).to_string();
        groups.entry(group_key).or_insert_with(|| (pod_ports, Vec::new())).1.push((ip, ep));
    }
    let mut out = Vec::new();
    for (_, (ports, mut eps)) in groups {
        eps.sort_by(|a, b| a.0.cmp(&b.0));
        let eps: Vec<Value> = eps.into_iter().map(|(_, e)| e).collect();
        for chunk in eps.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push(SliceContent { ports: ports.clone(), endpoints: chunk.to_vec() });
        }
    }
    if out.is_empty() {
        out.push(SliceContent { ports: Vec::new(), endpoints: Vec::new() });
    }
    out
}

fn slice_labels(svc: &Value) -> Map<String, Value> {
    let mut l = service_labels(svc);
    l.insert(SERVICE_NAME_LABEL.into(), json!(meta_str(svc, "name")));
    l.insert(MANAGED_BY_LABEL.into(), json!(MANAGED_BY));
    l
}

fn service_owner_ref(svc: &Value) -> Value {
    json!([{
        "apiVersion": "v1", "kind": "Service", "name": meta_str(svc, "name"), "uid": meta_str(svc, "uid"),
        "controller": true, "blockOwnerDeletion": true,
    }])
}

fn array_of(v: Option<&Value>) -> Vec<Value> {
    v.and_then(Value::as_array).cloned().unwrap_or_default()
}

fn slice_content(slice: &Value) -> SliceContent {
    SliceContent { ports: array_of(slice.get("ports")), endpoints: array_of(slice.get("endpoints")) }
}

/// Whether a slice is one of this controller's for the Service `svc_name`.
fn is_managed_slice(slice: &Value, svc_name: &str) -> bool {
    let l = labels(slice);
    let get = |k: &str| l.and_then(|l| l.get(k)).and_then(Value::as_str);
    get(SERVICE_NAME_LABEL) == Some(svc_name) && get(MANAGED_BY_LABEL) == Some(MANAGED_BY)
}

/// The Service a slice of this controller belongs to (`namespace/name`).
fn slice_service_key(slice: &Value) -> Option<Key> {
    let l = labels(slice)?;
    if l.get(MANAGED_BY_LABEL).and_then(Value::as_str) != Some(MANAGED_BY) {
        return None;
    }
    let svc = l.get(SERVICE_NAME_LABEL).and_then(Value::as_str)?;
    Some(format!("{}/{svc}", meta_str(slice, "namespace")))
}

/// Pairs desired slice contents with existing slices: same ports first, then any; returns
/// (index of desired, index of existing or None to create), and existing slices left over.
fn plan_slices(
    desired: &[SliceContent],
    existing: &[SliceContent],
) -> (Vec<(usize, Option<usize>)>, Vec<usize>) {
    let mut used = vec![false; existing.len()];
    let mut assigned: Vec<Option<usize>> = vec![None; desired.len()];
    // Identical contents, then the same ports, then anything.
    for pass in 0..3 {
        for (d, want) in desired.iter().enumerate() {
            if assigned[d].is_some() {
                continue;
            }
            let found = existing.iter().enumerate().find(|(e, have)| {
                !used[*e]
                    && match pass {
                        0 => *have == want,
                        1 => have.ports == want.ports,
                        _ => true,
                    }
            });
            if let Some((e, _)) = found {
                used[e] = true;
                assigned[d] = Some(e);
            }
        }
    }
    let leftover = used.iter().enumerate().filter(|(_, u)| !**u).map(|(e, _)| e).collect();
    (assigned.into_iter().enumerate().collect(), leftover)
}

// ---- the reconciler ----------------------------------------------------------------------

fn revision(obj: &Value) -> u64 {
    meta_str(obj, "resourceVersion").parse().unwrap_or(0)
}

/// Writes not yet seen by the caches, per Service: (endpoints revision, slices revision).
type Written = HashMap<Key, (u64, u64)>;

struct EndpointsController {
    client: ApiClient,
    services: Arc<Informer>,
    pods: Arc<Informer>,
    endpoints: Arc<Informer>,
    slices: Arc<Informer>,
    written: Mutex<Written>,
}

fn ignorable_create_error(e: &ClientError) -> bool {
    // The namespace is gone or terminating.
    matches!(e, ClientError::Api { code: 403 | 404, .. })
}

impl EndpointsController {
    fn synced(&self) -> bool {
        [&self.services, &self.pods, &self.endpoints, &self.slices].iter().all(|i| i.is_synced())
    }

    /// Whether the caches have seen this controller's last writes for `key` (so a second
    /// reconcile does not create a slice twice).
    fn caught_up(&self, key: &str) -> bool {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let Some((eps, slices)) = w.get(key).copied() else { return true };
        if self.endpoints.revision() >= eps && self.slices.revision() >= slices {
            w.remove(key);
            return true;
        }
        false
    }

    fn note_write(&self, key: &str, endpoints_rv: u64, slices_rv: u64) {
        if endpoints_rv == 0 && slices_rv == 0 {
            return;
        }
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let e = w.entry(key.to_string()).or_insert((0, 0));
        e.0 = e.0.max(endpoints_rv);
        e.1 = e.1.max(slices_rv);
    }

    async fn delete_all(&self, key: &str) -> Result<(), ReconcileError> {
        let (ns, name) = split_key(key);
        if let Some(ep) = self.endpoints.get(key) {
            match self.client.delete_uid(gvr::ENDPOINTS, ns, name, meta_str(&ep, "uid"), None).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        for s in self.slices.list_ns(ns.unwrap_or("")).iter().filter(|s| is_managed_slice(s, name)) {
            match self
                .client
                .delete_uid(gvr::ENDPOINT_SLICES, ns, meta_str(s, "name"), meta_str(s, "uid"), None)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Brings the Endpoints object to `subsets`; returns the revision written, if any.
    async fn sync_endpoints(
        &self,
        svc: &Value,
        key: &str,
        subsets: Vec<Value>,
    ) -> Result<u64, ReconcileError> {
        let (ns, name) = split_key(key);
        let want_labels = service_labels(svc);
        match self.endpoints.get(key) {
            None => {
                let mut obj = json!({
                    "apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": name, "namespace": ns, "labels": want_labels},
                });
                if !subsets.is_empty() {
                    obj["subsets"] = Value::Array(subsets);
                }
                match self.client.create(gvr::ENDPOINTS, ns, obj).await {
                    Ok(o) => Ok(revision(&o)),
                    Err(e) if ignorable_create_error(&e) => Ok(0),
                    Err(e) => Err(e.into()),
                }
            }
            Some(cur) => {
                let same = array_of(cur.get("subsets")) == subsets
                    && labels(&cur).cloned().unwrap_or_default() == want_labels;
                if same {
                    return Ok(0);
                }
                let mut obj = (*cur).clone();
                obj["metadata"]["labels"] = Value::Object(want_labels);
                match obj.as_object_mut() {
                    Some(o) if subsets.is_empty() => {
                        o.remove("subsets");
                    }
                    Some(o) => {
                        o.insert("subsets".into(), Value::Array(subsets));
                    }
                    None => return Ok(0),
                }
                match self.client.update(gvr::ENDPOINTS, ns, obj).await {
                    Ok(o) => Ok(revision(&o)),
                    Err(e) if e.is_not_found() => Ok(0),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Brings the Service's slices to `desired`, noting each write.
    async fn sync_slices(
        &self,
        svc: &Value,
        key: &str,
        desired: Vec<SliceContent>,
    ) -> Result<(), ReconcileError> {
        let (ns, name) = split_key(key);
        let existing: Vec<Arc<Value>> =
            self.slices.list_ns(ns.unwrap_or("")).into_iter().filter(|s| is_managed_slice(s, name)).collect();
        let contents: Vec<SliceContent> = existing.iter().map(|s| slice_content(s)).collect();
        let (pairs, leftover) = plan_slices(&desired, &contents);
        let want_labels = slice_labels(svc);
        let owners = service_owner_ref(svc);
        for (d, e) in pairs {
            let want = &desired[d];
            match e {
                Some(e) => {
                    let cur = &existing[e];
                    let same = contents[e] == *want
                        && labels(cur).cloned().unwrap_or_default() == want_labels
                        && cur.get("metadata").and_then(|m| m.get("ownerReferences")) == Some(&owners)
                        && cur.get("addressType").and_then(Value::as_str) == Some("IPv4");
                    if same {
                        continue;
                    }
                    let mut obj = (**cur).clone();
                    obj["metadata"]["labels"] = Value::Object(want_labels.clone());
                    obj["metadata"]["ownerReferences"] = owners.clone();
                    obj["addressType"] = json!("IPv4");
                    obj["ports"] = Value::Array(want.ports.clone());
                    obj["endpoints"] = Value::Array(want.endpoints.clone());
                    match self.client.update(gvr::ENDPOINT_SLICES, ns, obj).await {
                        Ok(o) => self.note_write(key, 0, revision(&o)),
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                None => {
                    let obj = json!({
                        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {
                            "generateName": format!("{name}-"), "namespace": ns,
                            "labels": want_labels, "ownerReferences": owners,
                        },
                        "addressType": "IPv4",
                        "ports": want.ports,
                        "endpoints": want.endpoints,
                    });
                    match self.client.create(gvr::ENDPOINT_SLICES, ns, obj).await {
                        Ok(o) => self.note_write(key, 0, revision(&o)),
                        Err(e) if ignorable_create_error(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        for e in leftover {
            let s = &existing[e];
            match self
                .client
                .delete_uid(gvr::ENDPOINT_SLICES, ns, meta_str(s, "name"), meta_str(s, "uid"), None)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

impl Reconciler for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoints"
    }

    fn reconcile(self: Arc<Self>, key: Key) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            if !self.synced() {
                return Ok(Action::RequeueAfter(SYNC_WAIT));
            }
            if !self.caught_up(&key) {
                return Ok(Action::RequeueAfter(CATCH_UP_WAIT));
            }
            let (Some(ns), _) = split_key(&key) else { return Ok(Action::Done) };
            let Some(svc) = self.services.get(&key) else {
                self.delete_all(&key).await?;
                return Ok(Action::Done);
            };
            let external =
                svc.get("spec").and_then(|s| s.get("type")).and_then(Value::as_str) == Some("ExternalName");
            let Some(sel) = selector(&svc).filter(|_| !external) else {
                // Endpoints of Services without a selector are managed by their users.
                return Ok(Action::Done);
            };
            let pods: Vec<Arc<Value>> =
                self.pods.list_ns(ns).into_iter().filter(|p| selects(sel, p)).collect();
            let eps_rv = self.sync_endpoints(&svc, &key, endpoints_subsets(&svc, &pods)).await?;
            self.note_write(&key, eps_rv, 0);
            self.sync_slices(&svc, &key, desired_slices(&svc, &pods)).await?;
            Ok(Action::Done)
        })
    }
}

/// What about a pod matters to endpoints (so unrelated pod updates are skipped).
fn pod_fingerprint(pod: &Value) -> Value {
    let spec = pod.get("spec");
    let status = pod.get("status");
    json!([
        meta_str(pod, "uid"),
        labels(pod),
        is_deleting(pod),
        pod_ipv4(pod),
        is_ready(pod),
        is_terminal(pod),
        node_name(pod),
        spec.and_then(|s| s.get("hostname")),
        spec.and_then(|s| s.get("subdomain")),
        spec.and_then(|s| s.get("containers")).and_then(Value::as_array).map(|cs| {
            cs.iter().map(|c| c.get("ports").cloned().unwrap_or(Value::Null)).collect::<Vec<_>>()
        }),
        status.and_then(|s| s.get("phase")),
    ])
}

struct PodWatcher {
    ctx: Ctx,
    services: Arc<Informer>,
    addr: Addr<Controller<EndpointsController>>,
}

impl PodWatcher {
    fn enqueue_services_of(&self, pods: &[&Value]) {
        let Some(ns) = pods.first().map(|p| meta_str(p, "namespace")) else { return };
        for svc in self.services.list_ns(ns) {
            let Some(sel) = selector(&svc) else { continue };
            if pods.iter().any(|p| selects(sel, p)) {
                let key = key_of(&svc);
                if self.ctx.owns(&key) {
                    self.addr.do_send(Enqueue(key));
                }
            }
        }
    }

    fn handle(&self, c: &Change) {
        match c {
            Change::Applied { old: Some(old), new } => {
                if pod_fingerprint(old) != pod_fingerprint(new) {
                    self.enqueue_services_of(&[old, new]);
                }
            }
            Change::Applied { old: None, new } => self.enqueue_services_of(&[new]),
            Change::Deleted(old) => self.enqueue_services_of(&[old]),
        }
    }
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let services = ctx.informers.get(gvr::SERVICES);
    let pods = ctx.informers.get(gvr::PODS);
    let endpoints = ctx.informers.get(gvr::ENDPOINTS);
    let slices = ctx.informers.get(gvr::ENDPOINT_SLICES);
    let r = Arc::new(EndpointsController {
        client: ctx.client.clone(),
        services: services.clone(),
        pods: pods.clone(),
        endpoints: endpoints.clone(),
        slices: slices.clone(),
        written: Mutex::new(HashMap::new()),
    });
    let addr = Controller::new(r, 4).start();

    let enqueue = {
        let ctx = ctx.clone();
        let addr = addr.clone();
        move |key: Key| {
            if ctx.owns(&key) {
                addr.do_send(Enqueue(key));
            }
        }
    };
    let e = enqueue.clone();
    services.on_change(Arc::new(move |c: &Change| e(key_of(c.object()))));
    let e = enqueue.clone();
    endpoints.on_change(Arc::new(move |c: &Change| e(key_of(c.object()))));
    slices.on_change(Arc::new(move |c: &Change| {
        if let Some(k) = slice_service_key(c.object()) {
            enqueue(k);
        }
    }));
    let w = PodWatcher { ctx: ctx.clone(), services, addr };
    pods.on_change(Arc::new(move |c: &Change| w.handle(c)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ports: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid", "labels": {"app": "web"}},
               "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10", "ports": ports}})
    }

    fn pod(name: &str, ip: Option<&str>, ready: bool) -> Arc<Value> {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        });
        if let Some(ip) = ip {
            p["status"]["podIP"] = json!(ip);
            p["status"]["podIPs"] = json!([{"ip": ip}]);
        }
        Arc::new(p)
    }

    #[test]
    fn ready_and_not_ready_addresses_with_named_ports() {
        let s = svc(json!([{"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"},
                           {"name": "raw", "port": 81, "targetPort": 9090, "protocol": "TCP"}]));
        let pods = vec![
            pod("b", Some("10.244.0.6"), true),
            pod("a", Some("10.244.0.5"), true),
            pod("c", Some("10.244.0.7"), false),
            pod("d", None, true),
        ];
        let subsets = endpoints_subsets(&s, &pods);
        assert_eq!(subsets.len(), 1, "{subsets:?}");
        let ss = &subsets[0];
        let ips: Vec<&str> =
            ss["addresses"].as_array().into_iter().flatten().filter_map(|a| a["ip"].as_str()).collect();
        assert_eq!(ips, vec!["10.244.0.5", "10.244.0.6"]);
        assert_eq!(ss["notReadyAddresses"][0]["ip"], "10.244.0.7");
        assert_eq!(ss["addresses"][0]["nodeName"], "node-1");
        assert_eq!(
            ss["addresses"][0]["targetRef"],
            json!({"kind": "Pod", "namespace": "ns", "name": "a", "uid": "uid-a"})
        );
        let ports = ss["ports"].as_array().cloned().unwrap_or_default();
        assert!(ports.contains(&json!({"name": "web", "port": 8080, "protocol": "TCP"})), "{ports:?}");
        assert!(ports.contains(&json!({"name": "raw", "port": 9090, "protocol": "TCP"})), "{ports:?}");
    }

    #[test]
    fn pods_without_the_named_port_form_their_own_subset_or_none() {
        let s = svc(json!([{"port": 80, "targetPort": "http", "protocol": "TCP"}]));
        let mut other = (*pod("x", Some("10.244.0.9"), true)).clone();
        other["spec"]["containers"][0]["ports"][0]["name"] = json!("other");
        let subsets = endpoints_subsets(&s, &[pod("a", Some("10.244.0.5"), true), Arc::new(other)]);
        assert_eq!(subsets.len(), 1);
        assert_eq!(subsets[0]["addresses"].as_array().map(Vec::len), Some(1));
        assert_eq!(subsets[0]["ports"], json!([{"port": 8080, "protocol": "TCP"}]));
        assert!(endpoints_subsets(&s, &[]).is_empty());
    }

    #[test]
    fn terminating_and_terminal_pods() {
        let s = svc(json!([{"port": 80, "targetPort": 80, "protocol": "TCP"}]));
        let mut term = (*pod("t", Some("10.244.0.8"), true)).clone();
        term["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        let mut done = (*pod("f", Some("10.244.0.9"), true)).clone();
        done["status"]["phase"] = json!("Succeeded");
        let pods = vec![Arc::new(term), Arc::new(done)];
        assert!(endpoints_subsets(&s, &pods).is_empty());
        let slices = desired_slices(&s, &pods);
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].endpoints.len(), 1);
        assert_eq!(
            slices[0].endpoints[0]["conditions"],
            json!({"ready": false, "serving": true, "terminating": true})
        );
    }

    #[test]
    fn slices_group_by_ports_chunk_and_keep_a_placeholder() {
        let s = svc(json!([{"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"}]));
        let empty = desired_slices(&s, &[]);
        assert_eq!(empty, vec![SliceContent { ports: vec![], endpoints: vec![] }]);
        let pods: Vec<Arc<Value>> = (0..150)
            .map(|i| pod(&format!("p{i}"), Some(&format!("10.244.{}.{}", i / 200, i % 200 + 1)), i % 2 == 0))
            .collect();
        let slices = desired_slices(&s, &pods);
        assert_eq!(slices.len(), 2);
        assert_eq!(slices[0].endpoints.len() + slices[1].endpoints.len(), 150);
        assert_eq!(slices[0].ports, vec![json!({"name": "web", "port": 8080, "protocol": "TCP"})]);
        let e = &slices[0].endpoints[0];
        assert_eq!(e["targetRef"]["kind"], "Pod");
        assert_eq!(e["nodeName"], "node-1");
        assert!(e["addresses"][0].is_string());
    }

    #[test]
    fn publish_not_ready_addresses() {
        let mut s = svc(json!([{"port": 80, "targetPort": 80, "protocol": "TCP"}]));
        s["spec"]["publishNotReadyAddresses"] = json!(true);
        let subsets = endpoints_subsets(&s, &[pod("a", Some("10.244.0.5"), false)]);
        assert_eq!(subsets[0]["addresses"][0]["ip"], "10.244.0.5");
        let slices = desired_slices(&s, &[pod("a", Some("10.244.0.5"), false)]);
        assert_eq!(slices[0].endpoints[0]["conditions"]["ready"], true);
    }

    #[test]
    fn headless_without_ports_and_ipv6_pods() {
        let mut s = svc(json!([]));
        assert!(endpoints_subsets(&s, &[pod("a", Some("10.244.0.5"), true)]).is_empty());
        s["spec"]["clusterIP"] = json!("None");
        let subsets =
            endpoints_subsets(&s, &[pod("a", Some("10.244.0.5"), true), pod("b", Some("fd00::1"), true)]);
        assert_eq!(subsets.len(), 1);
        assert_eq!(subsets[0]["addresses"].as_array().map(Vec::len), Some(1));
        assert!(subsets[0].get("ports").is_none());
        assert_eq!(service_labels(&s).get(HEADLESS_LABEL), Some(&json!("")));
    }

    #[test]
    fn slice_labels_owner_and_planning() {
        let s = svc(json!([]));
        let l = slice_labels(&s);
        assert_eq!(l.get(SERVICE_NAME_LABEL), Some(&json!("web")));
        assert_eq!(l.get(MANAGED_BY_LABEL), Some(&json!(MANAGED_BY)));
        assert_eq!(service_owner_ref(&s)[0]["controller"], true);
        let slice = json!({"metadata": {"namespace": "ns", "labels": l}});
        assert!(is_managed_slice(&slice, "web"));
        assert_eq!(slice_service_key(&slice), Some("ns/web".into()));

        let a = SliceContent { ports: vec![json!(1)], endpoints: vec![json!("x")] };
        let b = SliceContent { ports: vec![json!(2)], endpoints: vec![] };
        let c = SliceContent { ports: vec![json!(2)], endpoints: vec![json!("y")] };
        // b reuses the slice with its ports; a reuses the other; nothing left over.
        let (pairs, left) = plan_slices(&[a.clone(), b.clone()], &[c.clone(), a.clone()]);
        assert_eq!(pairs, vec![(0, Some(1)), (1, Some(0))]);
        assert!(left.is_empty());
        let (pairs, left) = plan_slices(std::slice::from_ref(&b), &[a.clone(), c.clone()]);
        assert_eq!(pairs, vec![(0, Some(1))]);
        assert_eq!(left, vec![0]);
        let (pairs, left) = plan_slices(&[a, b], &[]);
        assert_eq!(pairs, vec![(0, None), (1, None)]);
        assert!(left.is_empty());
    }

    #[test]
    fn pod_fingerprint_ignores_unrelated_changes() {
        let a = pod("a", Some("10.244.0.5"), true);
        let mut b = (*a).clone();
        b["metadata"]["annotations"] = json!({"x": "y"});
        assert_eq!(pod_fingerprint(&a), pod_fingerprint(&b));
        let c = pod("a", Some("10.244.0.5"), false);
        assert_ne!(pod_fingerprint(&a), pod_fingerprint(&c));
    }
}
