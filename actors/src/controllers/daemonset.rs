//! The daemonset controller: one pod per eligible node.
//!
//! A node is eligible when the pod template's nodeSelector and required node affinity
//! match it and its NoSchedule/NoExecute taints are tolerated; a pod already on a node
//! stays unless a NoExecute taint is not tolerated (upstream's `shouldRun` and
//! `shouldContinueRunning`). DaemonSet pods get upstream's automatic tolerations
//! (not-ready, unreachable, disk/memory/pid pressure, unschedulable, and
//! network-unavailable for host-network pods).
//!
//! Placement: the controller sets `spec.nodeName` itself (upstream's behaviour before
//! 1.12), and also writes the node affinity upstream uses (`matchFields metadata.name In
//! [node]`), so the pod says where it belongs even though the scheduler never sees it.
//!
//! Updates: pods carry `controller-revision-hash` (a hash of the template) and
//! `pod-template-generation`. RollingUpdate replaces old pods, unavailable ones first,
//! keeping at most `maxUnavailable` (int or percent of desired, rounded up) unavailable;
//! `maxSurge` is not implemented (treated as 0). OnDelete replaces nothing.

use super::Ctx;
use crate::client::{gvr, ApiClient};
use crate::events::Recorder;
use crate::informer::{split_key, Change, Informer};
use crate::runtime::{owner_key, Action, Controller, Enqueue, ReconcileError, Reconciler};
use actix::prelude::Addr;
use actix::Actor;
use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::job::workload as w;

/// The pod label with the template hash.
pub const REVISION_HASH: &str = "controller-revision-hash";
/// The pod label with the DaemonSet's generation at creation.
pub const TEMPLATE_GENERATION: &str = "pod-template-generation";

struct DaemonSets {
    client: ApiClient,
    daemonsets: Arc<Informer>,
    pods: Arc<Informer>,
    nodes: Arc<Informer>,
    recorder: Recorder,
    expectations: w::Expectations,
}

/// The tolerations every DaemonSet pod gets (upstream `AddOrUpdateDaemonPodTolerations`).
pub fn daemon_tolerations(host_network: bool) -> Vec<Value> {
    let mut t = vec![
        json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}),
    ];
    if host_network {
        t.push(json!({"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"}));
    }
    t
}

/// The template's pod spec with the automatic tolerations added (no duplicates).
fn with_daemon_tolerations(pod_spec: &Value) -> Value {
    let mut spec = pod_spec.clone();
    let host_network = w::bool_at(pod_spec, &["hostNetwork"]).unwrap_or(false);
    if let Some(s) = spec.as_object_mut() {
        let tol = s.entry("tolerations").or_insert_with(|| json!([]));
        if !tol.is_array() {
            *tol = json!([]);
        }
        if let Value::Array(list) = tol {
            for t in daemon_tolerations(host_network) {
                let dup =
                    list.iter().any(|x| x.get("key") == t.get("key") && x.get("effect") == t.get("effect"));
                if !dup {
                    list.push(t);
                }
            }
        }
    }
    spec
}

fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (t_key, t_val, t_eff) = (s(taint, "key"), s(taint, "value"), s(taint, "effect"));
    let (key, op, val, eff) =
        (s(toleration, "key"), s(toleration, "operator"), s(toleration, "value"), s(toleration, "effect"));
    if !eff.is_empty() && eff != t_eff {
        return false;
    }
    match op.as_str() {
        "Exists" => key.is_empty() || key == t_key,
        "" | "Equal" => key == t_key && val == t_val,
        _ => false,
    }
}

fn node_labels(node: &Value) -> BTreeMap<String, String> {
    capstan_api::meta::labels(node)
}

fn requirement_matches(expr: &Value, get: &dyn Fn(&str) -> Option<String>) -> bool {
    let key = expr.get("key").and_then(Value::as_str).unwrap_or("");
    let op = expr.get("operator").and_then(Value::as_str).unwrap_or("");
    let values: Vec<&str> = expr
        .get("values")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let have = get(key);
    match op {
        "In" => have.is_some_and(|h| values.contains(&h.as_str())),
        "NotIn" => have.is_none_or(|h| !values.contains(&h.as_str())),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        "Gt" | "Lt" => {
            let (Some(h), Some(v)) = (
                have.and_then(|h| h.parse::<i64>().ok()),
                values.first().and_then(|v| v.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" {
                h > v
            } else {
                h < v
            }
        }
        _ => false,
    }
}

/// Whether a node satisfies a `nodeSelectorTerm` (an empty term matches nothing).
fn term_matches(term: &Value, node: &Value) -> bool {
    let labels = node_labels(node);
    let node_name = w::name(node).to_string();
    let exprs = term.get("matchExpressions").and_then(Value::as_array).cloned().unwrap_or_default();
    let fields = term.get("matchFields").and_then(Value::as_array).cloned().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let by_label = |k: &str| labels.get(k).cloned();
    let by_field = |k: &str| (k == "metadata.name").then(|| node_name.clone());
    exprs.iter().all(|e| requirement_matches(e, &by_label))
        && fields.iter().all(|e| requirement_matches(e, &by_field))
}

/// Where a daemon pod may be: `(should_run, should_continue_running)` on `node` for a
/// pod spec (with its automatic tolerations already added).
pub fn placement(node: &Value, pod_spec: &Value) -> (bool, bool) {
    let labels = node_labels(node);
    if let Some(sel) = pod_spec.get("nodeSelector").and_then(Value::as_object) {
        let ok = sel.iter().all(|(k, v)| v.as_str().is_some_and(|v| labels.get(k).is_some_and(|l| l == v)));
        if !ok {
            return (false, false);
        }
    }
    let terms = pod_spec
        .get("affinity")
        .and_then(|a| a.get("nodeAffinity"))
        .and_then(|a| a.get("requiredDuringSchedulingIgnoredDuringExecution"))
        .and_then(|r| r.get("nodeSelectorTerms"))
        .and_then(Value::as_array);
    if let Some(terms) = terms {
        if !terms.iter().any(|t| term_matches(t, node)) {
            return (false, false);
        }
    }
    let tolerations = pod_spec.get("tolerations").and_then(Value::as_array).cloned().unwrap_or_default();
    let taints =
        node.get("spec").and_then(|s| s.get("taints")).and_then(Value::as_array).cloned().unwrap_or_default();
    let mut run = true;
    for taint in &taints {
        let effect = taint.get("effect").and_then(Value::as_str).unwrap_or("");
        if effect != "NoSchedule" && effect != "NoExecute" {
            continue;
        }
        if tolerations.iter().any(|t| tolerates(t, taint)) {
            continue;
        }
        if effect == "NoExecute" {
            return (false, false);
        }
        run = false;
    }
    (run, true)
}

/// `maxUnavailable` scaled against `desired` (percentages round up), at least 1.
fn max_unavailable(ds: &Value, desired: i64) -> i64 {
    let v = ds
        .get("spec")
        .and_then(|s| s.get("updateStrategy"))
        .and_then(|u| u.get("rollingUpdate"))
        .and_then(|r| r.get("maxUnavailable"));
    let n = match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(1),
        Some(Value::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) => (p.saturating_mul(desired) + 99) / 100,
            None => s.parse().unwrap_or(1),
        },
        _ => 1,
    };
    n.max(1)
}

/// A pod's node.
fn node_of(pod: &Value) -> &str {
    w::str_at(pod, &["spec", "nodeName"]).unwrap_or("")
}

/// Old pods to delete for a rolling update: unavailable ones first, then available ones
/// while the number of unavailable nodes stays within `max_unavailable`.
/// `nodes` lists, per desired node, whether its pod is available and whether it is old.
pub fn rolling_deletions(nodes: &[(String, bool, bool)], max_unavailable: i64) -> Vec<String> {
    let mut unavailable = nodes.iter().filter(|(_, available, _)| !available).count() as i64;
    let mut out: Vec<String> =
        nodes.iter().filter(|(_, available, old)| *old && !available).map(|(n, _, _)| n.clone()).collect();
    for (n, available, old) in nodes {
        if *old && *available && unavailable < max_unavailable {
            out.push(n.clone());
            unavailable += 1;
        }
    }
    out
}

impl DaemonSets {
    fn pod_for(&self, ds: &Value, node: &str, hash: &str, spec_with_tol: &Value) -> Value {
        let tmpl = ds.get("spec").and_then(|s| s.get("template")).cloned().unwrap_or(Value::Null);
        let md = tmpl.get("metadata");
        let mut labels: Map<String, Value> =
            md.and_then(|m| m.get("labels")).and_then(Value::as_object).cloned().unwrap_or_default();
        labels.insert(REVISION_HASH.into(), json!(hash));
        labels.insert(TEMPLATE_GENERATION.into(), json!(capstan_api::meta::generation(ds).to_string()));
        let mut spec = spec_with_tol.clone();
        spec["nodeName"] = json!(node);
        let aff = json!({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}});
        if !spec.get("affinity").is_some_and(Value::is_object) {
            spec["affinity"] = json!({});
        }
        spec["affinity"]["nodeAffinity"] = aff;
        let mut metadata = json!({
            "generateName": format!("{}-", w::name(ds)),
            "namespace": w::namespace(ds),
            "labels": labels,
            "ownerReferences": [w::owner_ref("apps/v1", "DaemonSet", ds)],
        });
        if let Some(a) = md.and_then(|m| m.get("annotations")).filter(|a| a.is_object()) {
            metadata["annotations"] = a.clone();
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
    }

    async fn reconcile_ds(&self, key: String) -> Result<Action, ReconcileError> {
        let Some(ds) = self.daemonsets.get(&key) else {
            self.expectations.forget(&key);
            return Ok(Action::Done);
        };
        if w::is_terminating(&ds) {
            return Ok(Action::Done);
        }
        let (ns, _) = split_key(&key);
        let ns = ns.unwrap_or("").to_string();
        let ds_uid = w::uid(&ds).to_string();
        let now = w::now();
        let tmpl = ds.get("spec").and_then(|s| s.get("template")).cloned().unwrap_or(Value::Null);
        let collisions = w::i64_at(&ds, &["status", "collisionCount"]).unwrap_or(0);
        let hash = w::hash_of(&tmpl, collisions);
        let spec_with_tol = with_daemon_tolerations(tmpl.get("spec").unwrap_or(&Value::Null));
        let min_ready = w::i64_at(&ds, &["spec", "minReadySeconds"]).unwrap_or(0);
        let rolling =
            w::str_at(&ds, &["spec", "updateStrategy", "type"]).unwrap_or("RollingUpdate") == "RollingUpdate";

        let pods: Vec<Arc<Value>> =
            self.pods.list_ns(&ns).into_iter().filter(|p| w::controlled_by(p, &ds_uid)).collect();
        let mut by_node: BTreeMap<String, Vec<Arc<Value>>> = BTreeMap::new();
        for p in &pods {
            by_node.entry(node_of(p).to_string()).or_default().push(p.clone());
        }
        let nodes = self.nodes.list();
        let mut create: Vec<String> = Vec::new();
        let mut delete: Vec<Arc<Value>> = Vec::new();
        // Per desired node: (node, available, old).
        let mut desired_nodes: Vec<(String, bool, bool)> = Vec::new();
        let (mut desired, mut current, mut misscheduled, mut ready, mut available, mut updated) =
            (0, 0, 0, 0, 0, 0);
        let mut requeue: Option<Duration> = None;

        for node in &nodes {
            let node_name = w::name(node).to_string();
            let (should_run, should_continue) = placement(node, &spec_with_tol);
            let mut running: Vec<Arc<Value>> = Vec::new();
            for p in by_node.remove(&node_name).unwrap_or_default() {
                if w::is_terminating(&p) {
                    continue;
                }
                if w::pod_finished(&p) {
                    // A daemon pod must keep running: replace failed (or exited) ones.
                    delete.push(p);
                    continue;
                }
                running.push(p);
            }
            running
                .sort_by_key(|p| w::str_at(p, &["metadata", "creationTimestamp"]).unwrap_or("").to_string());
            if should_run {
                desired += 1;
                if running.is_empty() {
                    create.push(node_name.clone());
                    desired_nodes.push((node_name, false, false));
                    continue;
                }
                // Duplicates: keep the oldest.
                delete.extend(running.iter().skip(1).cloned());
                let pod = &running[0];
                current += 1;
                let is_ready = w::pod_ready(pod);
                let is_available = w::pod_available(pod, min_ready, now);
                let is_updated =
                    w::str_at(pod, &["metadata", "labels", REVISION_HASH]) == Some(hash.as_str());
                ready += i64::from(is_ready);
                available += i64::from(is_available);
                updated += i64::from(is_updated);
                if is_ready && !is_available {
                    requeue = Some(Duration::from_secs(min_ready.max(1) as u64));
                }
                desired_nodes.push((node_name, is_available, !is_updated));
            } else if !running.is_empty() {
                misscheduled += 1;
                if !should_continue {
                    delete.extend(running);
                }
            }
        }
        // Pods on nodes that are gone.
        for (_, rest) in by_node {
            delete.extend(rest.into_iter().filter(|p| !w::is_terminating(p)));
        }
        if rolling {
            let old_nodes = rolling_deletions(&desired_nodes, max_unavailable(&ds, desired));
            for n in old_nodes {
                if let Some(p) =
                    pods.iter().find(|p| node_of(p) == n && !w::is_terminating(p) && !w::pod_finished(p))
                {
                    if !delete.iter().any(|d| w::uid(d) == w::uid(p)) {
                        delete.push(p.clone());
                    }
                }
            }
        }

        let pods_inf = self.pods.clone();
        let settled = self.expectations.satisfied(
            &key,
            |n| w::pod_seen(&pods_inf, &ns, n),
            |u| w::pod_gone(&pods_inf, &ns, u),
        );
        if settled {
            for p in &delete {
                match self.client.delete_uid(gvr::PODS, Some(&ns), w::name(p), w::uid(p), None).await {
                    Ok(_) => {
                        self.expectations.deleted(&key, w::uid(p));
                        let msg = format!("Deleted pod: {}", w::name(p));
                        self.recorder.event(&ds, "Normal", "SuccessfulDelete", &msg).await;
                    }
                    Err(e) if e.is_not_found() || e.is_conflict() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            for n in &create {
                let pod = self.pod_for(&ds, n, &hash, &spec_with_tol);
                match self.client.create(gvr::PODS, Some(&ns), pod).await {
                    Ok(p) => {
                        self.expectations.created(&key, w::name(&p));
                        let msg = format!("Created pod: {}", w::name(&p));
                        self.recorder.event(&ds, "Normal", "SuccessfulCreate", &msg).await;
                    }
                    Err(e) if e.is_not_found() => return Ok(Action::Done),
                    Err(e) => {
                        let msg = format!("Error creating: {e}");
                        self.recorder.event(&ds, "Warning", "FailedCreate", &msg).await;
                        return Err(e.into());
                    }
                }
            }
        } else if !create.is_empty() || !delete.is_empty() {
            requeue = Some(Duration::from_secs(1));
        }

        let status = ds.get("status").cloned().unwrap_or_else(|| json!({}));
        let mut new_status = status.as_object().cloned().unwrap_or_default();
        for (k, v) in [
            ("desiredNumberScheduled", desired),
            ("currentNumberScheduled", current),
            ("numberMisscheduled", misscheduled),
            ("numberReady", ready),
            ("numberAvailable", available),
            ("updatedNumberScheduled", updated),
            ("numberUnavailable", desired - available),
            ("observedGeneration", capstan_api::meta::generation(&ds)),
        ] {
            if k == "numberUnavailable" && v <= 0 {
                new_status.remove(k);
            } else {
                new_status.insert(k.into(), json!(v));
            }
        }
        let new_status = Value::Object(new_status);
        if new_status != status {
            let mut obj = (*ds).clone();
            obj["status"] = new_status;
            match self.client.update_status(gvr::DAEMON_SETS, Some(&ns), obj).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Action::Done),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(requeue.map_or(Action::Done, Action::RequeueAfter))
    }
}

impl Reconciler for DaemonSets {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move { self.reconcile_ds(key).await })
    }
}

/// Whether a node change can change placement (not just a heartbeat).
fn node_changed(old: Option<&Value>, new: &Value) -> bool {
    let Some(old) = old else { return true };
    let ready = |n: &Value| w::condition(n, "Ready").and_then(|c| c.get("status")).cloned();
    old.get("metadata").and_then(|m| m.get("labels")) != new.get("metadata").and_then(|m| m.get("labels"))
        || old.get("spec") != new.get("spec")
        || ready(old) != ready(new)
}

fn enqueue_all(ctx: &Ctx, daemonsets: &Informer, addr: &Addr<Controller<DaemonSets>>) {
    for ds in daemonsets.list() {
        let key = crate::informer::key_of(&ds);
        if ctx.owns(&key) {
            addr.do_send(Enqueue(key));
        }
    }
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let daemonsets = ctx.informers.get(gvr::DAEMON_SETS);
    let pods = ctx.informers.get(gvr::PODS);
    let nodes = ctx.informers.get(gvr::NODES);
    let r = Arc::new(DaemonSets {
        client: ctx.client.clone(),
        daemonsets: daemonsets.clone(),
        pods: pods.clone(),
        nodes: nodes.clone(),
        recorder: ctx.recorder.clone(),
        expectations: w::Expectations::default(),
    });
    let addr = Controller::new(r, 4).start();
    let (c1, a1) = (ctx.clone(), addr.clone());
    daemonsets.on_change(Arc::new(move |c: &Change| {
        let key = crate::informer::key_of(c.object());
        if c1.owns(&key) {
            a1.do_send(Enqueue(key));
        }
    }));
    let (c2, a2) = (ctx.clone(), addr.clone());
    pods.on_change(Arc::new(move |c: &Change| {
        if let Some(key) = owner_key(c.object(), "DaemonSet") {
            if c2.owns(&key) {
                a2.do_send(Enqueue(key));
            }
        }
    }));
    let c3 = ctx.clone();
    let ds_inf = daemonsets.clone();
    nodes.on_change(Arc::new(move |c: &Change| {
        let relevant = match c {
            Change::Applied { old, new } => node_changed(old.as_deref(), new),
            Change::Deleted(_) => true,
        };
        if relevant {
            enqueue_all(&c3, &ds_inf, &addr);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints}})
    }

    #[test]
    fn node_selector_and_affinity() {
        let n = node("sim-0", json!({"disk": "ssd", "zone": "a"}), json!([]));
        let spec = with_daemon_tolerations(&json!({"nodeSelector": {"disk": "ssd"}}));
        assert_eq!(placement(&n, &spec), (true, true));
        let spec = with_daemon_tolerations(&json!({"nodeSelector": {"disk": "hdd"}}));
        assert_eq!(placement(&n, &spec), (false, false));
        let aff = |expr: Value| {
            with_daemon_tolerations(
                &json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [expr]}}}}),
            )
        };
        assert!(
            placement(
                &n,
                &aff(json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}))
            )
            .0
        );
        assert!(
            !placement(
                &n,
                &aff(json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}))
            )
            .0
        );
        assert!(
            placement(
                &n,
                &aff(
                    json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["sim-0"]}]})
                )
            )
            .0
        );
        assert!(
            !placement(
                &n,
                &aff(
                    json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["sim-1"]}]})
                )
            )
            .0
        );
        assert!(!placement(&n, &aff(json!({}))).0);
    }

    #[test]
    fn taints_and_tolerations() {
        let spec = with_daemon_tolerations(&json!({}));
        // Automatic tolerations cover not-ready, unschedulable and pressure taints.
        let n = node(
            "a",
            json!({}),
            json!([
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"},
            {"key": "soft", "effect": "PreferNoSchedule"}]),
        );
        assert_eq!(placement(&n, &spec), (true, true));
        // A foreign NoSchedule taint: no new pod, but an existing one may stay.
        let n = node("b", json!({}), json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]));
        assert_eq!(placement(&n, &spec), (false, true));
        // NoExecute: the pod must go.
        let n = node("c", json!({}), json!([{"key": "dedicated", "value": "gpu", "effect": "NoExecute"}]));
        assert_eq!(placement(&n, &spec), (false, false));
        // Tolerated by an Equal toleration or an Exists with no key.
        let tol = with_daemon_tolerations(
            &json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu"}]}),
        );
        assert_eq!(placement(&n, &tol), (true, true));
        let tol = with_daemon_tolerations(&json!({"tolerations": [{"operator": "Exists"}]}));
        assert_eq!(placement(&n, &tol), (true, true));
        let tol = with_daemon_tolerations(
            &json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "cpu"}]}),
        );
        assert_eq!(placement(&n, &tol), (false, false));
        // Host-network pods also tolerate network-unavailable.
        let n = node(
            "d",
            json!({}),
            json!([{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]),
        );
        assert_eq!(placement(&n, &with_daemon_tolerations(&json!({}))), (false, true));
        assert_eq!(placement(&n, &with_daemon_tolerations(&json!({"hostNetwork": true}))), (true, true));
    }

    #[test]
    fn rolling_update_respects_max_unavailable() {
        let nodes = |v: &[(bool, bool)]| -> Vec<(String, bool, bool)> {
            v.iter().enumerate().map(|(i, (a, o))| (format!("n{i}"), *a, *o)).collect()
        };
        // All available and old: one at a time.
        assert_eq!(rolling_deletions(&nodes(&[(true, true), (true, true), (true, true)]), 1), vec!["n0"]);
        // One already unavailable (new pod starting): wait.
        assert!(rolling_deletions(&nodes(&[(false, false), (true, true), (true, true)]), 1).is_empty());
        // Unavailable old pods go first regardless.
        assert_eq!(rolling_deletions(&nodes(&[(true, true), (false, true)]), 1), vec!["n1"]);
        assert_eq!(
            rolling_deletions(&nodes(&[(true, true), (true, true), (true, false)]), 2),
            vec!["n0", "n1"]
        );
        let ds = json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": "25%"}}}});
        assert_eq!(max_unavailable(&ds, 10), 3);
        assert_eq!(max_unavailable(&json!({}), 10), 1);
    }
}
