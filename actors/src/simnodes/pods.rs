//! The pods of the simulated nodes: what the sim runtime does with a pod bound to one of
//! its nodes (start it, complete it, finish its termination) and the status it writes.
//!
//! A pod moves through explicit states: `Pending → Running → (Succeeded)`, and from any of
//! them, once it carries a deletionTimestamp, `Terminating → gone`. [`plan`] looks at the
//! pod as cached and names the next step; the reconciler carries it out.

use super::objects::{pod_host, pod_ip};
use super::Shared;
use crate::client::{gvr, ApiClient};
use crate::informer::{split_key, Informer, Key};
use crate::nodeobjects::time;
use crate::runtime::{Action, ReconcileError, Reconciler};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Pod annotation: complete the pod (phase Succeeded) this many seconds after it started.
pub const COMPLETE_AFTER_ANNOTATION: &str = "capstan.io/sim-complete-after-seconds";
/// How long a Job's pod runs when it has no annotation.
const JOB_POD_SECONDS: u64 = 1;

/// The next step for a pod on a live simulated node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to do until the pod changes.
    Nothing,
    /// Write the Running status (phase Running, IPs, conditions, container statuses).
    Run,
    /// Check again after the delay (a run-to-completion pod still running).
    Wait(Duration),
    /// Write the Succeeded status (containers terminated with exit code 0).
    Complete,
    /// Being deleted: write terminated container statuses, then delete.
    Terminate,
    /// Being deleted and already stopped: delete with grace period 0.
    Delete,
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn list<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return &[],
        }
    }
    cur.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn condition_status<'a>(pod: &'a Value, type_: &str) -> Option<&'a str> {
    list(pod, &["status", "conditions"])
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
        .and_then(|c| c.get("status").and_then(Value::as_str))
}

/// How many seconds after it started the pod completes, if it is a run-to-completion pod:
/// restartPolicy Never or OnFailure and either the annotation or a Job owner.
pub fn completes_after(pod: &Value) -> Option<u64> {
    let policy = s(pod, &["spec", "restartPolicy"]).unwrap_or("Always");
    if policy != "Never" && policy != "OnFailure" {
        return None;
    }
    let annotated = s(pod, &["metadata", "annotations", COMPLETE_AFTER_ANNOTATION])
        .and_then(|v| v.trim().parse::<u64>().ok());
    if annotated.is_some() {
        return annotated;
    }
    let job_owned = list(pod, &["metadata", "ownerReferences"])
        .iter()
        .any(|r| r.get("kind").and_then(Value::as_str) == Some("Job"));
    job_owned.then_some(JOB_POD_SECONDS)
}

/// Whether the pod shows the Running status the sim writes.
fn running_ready(pod: &Value) -> bool {
    s(pod, &["status", "phase"]) == Some("Running")
        && s(pod, &["status", "podIP"]).is_some_and(|ip| !ip.is_empty())
        && condition_status(pod, "Ready") == Some("True")
        && list(pod, &["status", "containerStatuses"]).len() == list(pod, &["spec", "containers"]).len()
}

/// Whether every container of the pod is stopped (or never started).
fn all_stopped(pod: &Value) -> bool {
    let phase = s(pod, &["status", "phase"]).unwrap_or("Pending");
    if phase == "Succeeded" || phase == "Failed" {
        return true;
    }
    list(pod, &["status", "containerStatuses"]).iter().all(|c| {
        c.get("state").and_then(|st| st.get("running")).is_none()
            && c.get("state").and_then(|st| st.get("waiting")).is_none()
    })
}

/// The next step for `pod` at `now`.
pub fn plan(pod: &Value, now: jiff::Timestamp) -> Plan {
    if pod.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|v| !v.is_null()) {
        return if all_stopped(pod) { Plan::Delete } else { Plan::Terminate };
    }
    match s(pod, &["status", "phase"]) {
        Some("Succeeded") | Some("Failed") => return Plan::Nothing,
        _ => {}
    }
    if !running_ready(pod) {
        return Plan::Run;
    }
    let Some(secs) = completes_after(pod) else { return Plan::Nothing };
    let started =
        s(pod, &["status", "startTime"]).and_then(|t| t.parse::<jiff::Timestamp>().ok()).unwrap_or(now);
    let elapsed = now.duration_since(started).as_secs_f64().max(0.0);
    let left = secs as f64 - elapsed;
    if left <= 0.0 {
        Plan::Complete
    } else {
        Plan::Wait(Duration::from_secs_f64(left))
    }
}

/// Conditions with the given statuses; an unchanged condition keeps its transition time.
fn pod_conditions(pod: &Value, now: &str, wanted: &[(&str, &str, Option<&str>)]) -> Value {
    let existing = list(pod, &["status", "conditions"]);
    Value::Array(
        wanted
            .iter()
            .map(|(type_, status, reason)| {
                let transition = existing
                    .iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
                    .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
                    .and_then(|c| c.get("lastTransitionTime").and_then(Value::as_str))
                    .unwrap_or(now);
                let mut c = json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": transition});
                if let Some(r) = reason {
                    c["reason"] = json!(r);
                }
                c
            })
            // Conditions other writers own (DisruptionTarget, readiness gates) stay, as the
            // kubelet keeps them.
            .chain(
                existing
                    .iter()
                    .filter(|c| {
                        let t = c.get("type").and_then(Value::as_str).unwrap_or("");
                        !wanted.iter().any(|(w, _, _)| *w == t)
                    })
                    .cloned(),
            )
            .collect(),
    )
}

fn container_id(pod: &Value, name: &str) -> String {
    format!("sim://{}-{name}", s(pod, &["metadata", "uid"]).unwrap_or(""))
}

fn image(c: &Value) -> &str {
    c.get("image").and_then(Value::as_str).unwrap_or("")
}

/// The container statuses of `containers`, running (since `started`) or terminated.
fn container_statuses(pod: &Value, containers: &[Value], started: &str, finished: Option<&str>) -> Value {
    Value::Array(
        containers
            .iter()
            .map(|c| {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                let (state, running) = match finished {
                    None => (json!({"running": {"startedAt": started}}), true),
                    Some(f) => (
                        json!({"terminated": {
                            "exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": f,
                            "containerID": container_id(pod, name),
                        }}),
                        false,
                    ),
                };
                json!({
                    "name": name,
                    "image": image(c),
                    "imageID": format!("sim://{}", image(c)),
                    "containerID": container_id(pod, name),
                    "ready": running,
                    "started": running,
                    "restartCount": 0,
                    "state": state,
                    "lastState": {},
                })
            })
            .collect(),
    )
}

/// Init containers as the kubelet reports them once they have completed.
fn init_statuses(pod: &Value, started: &str) -> Option<Value> {
    let inits = list(pod, &["spec", "initContainers"]);
    if inits.is_empty() {
        return None;
    }
    Some(Value::Array(
        inits
            .iter()
            .map(|c| {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                json!({
                    "name": name, "image": image(c), "imageID": format!("sim://{}", image(c)),
                    "containerID": container_id(pod, name), "ready": true, "started": false,
                    "restartCount": 0, "lastState": {},
                    "state": {"terminated": {
                        "exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": started,
                        "containerID": container_id(pod, name),
                    }},
                })
            })
            .collect(),
    ))
}

/// The status patch of a pod that runs at `pod_ip` on a node at `host_ip`.
pub fn running_status(pod: &Value, host_ip: &str, pod_ip: &str, now: &str) -> Value {
    let started = s(pod, &["status", "startTime"]).unwrap_or(now).to_string();
    let mut status = json!({
        "phase": "Running",
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
        "startTime": started,
        "conditions": pod_conditions(pod, now, &[
            ("PodReadyToStartContainers", "True", None),
            ("Initialized", "True", None),
            ("Ready", "True", None),
            ("ContainersReady", "True", None),
            ("PodScheduled", "True", None),
        ]),
        "containerStatuses": container_statuses(pod, list(pod, &["spec", "containers"]), now, None),
    });
    if let Some(inits) = init_statuses(pod, &started) {
        status["initContainerStatuses"] = inits;
    }
    status
}

/// The status patch of a pod whose containers have all exited with code 0 (completed, or
/// stopped for deletion).
pub fn stopped_status(pod: &Value, now: &str) -> Value {
    let started = s(pod, &["status", "startTime"]).unwrap_or(now).to_string();
    // Keep each container's own start time when it had one.
    let mut statuses = container_statuses(pod, list(pod, &["spec", "containers"]), &started, Some(now));
    if let Some(arr) = statuses.as_array_mut() {
        for st in arr.iter_mut() {
            let name = st.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            let was = list(pod, &["status", "containerStatuses"])
                .iter()
                .find(|c| c.get("name").and_then(Value::as_str) == Some(name.as_str()))
                .and_then(|c| s(c, &["state", "running", "startedAt"]))
                .map(str::to_string);
            if let Some(w) = was {
                st["state"]["terminated"]["startedAt"] = json!(w);
            }
        }
    }
    json!({
        "phase": "Succeeded",
        "conditions": pod_conditions(pod, now, &[
            ("PodReadyToStartContainers", "False", None),
            ("Initialized", "True", Some("PodCompleted")),
            ("Ready", "False", Some("PodCompleted")),
            ("ContainersReady", "False", Some("PodCompleted")),
            ("PodScheduled", "True", None),
        ]),
        "containerStatuses": statuses,
    })
}

/// Pod addresses handed out per node: node index → host part → pod (key, uid).
#[derive(Default)]
pub struct Addresses {
    by_node: HashMap<usize, HashMap<u8, (Key, String)>>,
}

impl Addresses {
    /// Records `ip` (if it belongs to node `i`) as held by the pod.
    pub fn note(&mut self, i: usize, ip: &str, key: &str, uid: &str) {
        if let Some(h) = pod_host(i, ip) {
            self.by_node.entry(i).or_default().entry(h).or_insert_with(|| (key.to_string(), uid.to_string()));
        }
    }

    /// The address of the pod on node `i`: the one it already holds, else a free one.
    pub fn assign(&mut self, i: usize, key: &str, uid: &str, current: Option<&str>) -> Option<String> {
        let hosts = self.by_node.entry(i).or_default();
        if let Some(h) = current.and_then(|ip| pod_host(i, ip)) {
            match hosts.get(&h) {
                Some((k, u)) if k == key && u == uid => return Some(pod_ip(i, h)),
                None => {
                    hosts.insert(h, (key.to_string(), uid.to_string()));
                    return Some(pod_ip(i, h));
                }
                Some(_) => {}
            }
        }
        if let Some((h, _)) = hosts.iter().find(|(_, (k, u))| k == key && u == uid) {
            return Some(pod_ip(i, *h));
        }
        let free = (1..=254u8).find(|h| !hosts.contains_key(h))?;
        hosts.insert(free, (key.to_string(), uid.to_string()));
        Some(pod_ip(i, free))
    }

    /// Frees what the pod held on node `i`.
    pub fn release(&mut self, i: usize, key: &str, uid: &str) {
        if let Some(hosts) = self.by_node.get_mut(&i) {
            hosts.retain(|_, (k, u)| !(k == key && u == uid));
            if hosts.is_empty() {
                self.by_node.remove(&i);
            }
        }
    }
}

/// The reconciler of the pods bound to simulated nodes (keyed `namespace/name`).
pub struct SimPods {
    pub(super) client: ApiClient,
    pub(super) pods: Arc<Informer>,
    pub(super) shared: Arc<Shared>,
}

impl SimPods {
    async fn write_status(
        &self,
        ns: Option<&str>,
        name: &str,
        rv: &str,
        status: Value,
    ) -> Result<(), ReconcileError> {
        let patch = json!({"metadata": {"resourceVersion": rv}, "status": status});
        match self
            .client
            .patch(gvr::PODS, ns, name, "application/merge-patch+json", patch, Some("status"))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, ns: Option<&str>, name: &str, uid: &str) -> Result<(), ReconcileError> {
        match self.client.delete_uid(gvr::PODS, ns, name, uid, Some(0)).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            // Another incarnation of the name: not ours to delete.
            Err(e) if e.is_conflict() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Reconciler for SimPods {
    fn name(&self) -> &'static str {
        "sim-pods"
    }

    fn reconcile(self: Arc<Self>, key: Key) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            let Some(pod) = self.pods.get(&key) else { return Ok(Action::Done) };
            let Some(node) = s(&pod, &["spec", "nodeName"]) else { return Ok(Action::Done) };
            let Some(i) = self.shared.index_of(node) else { return Ok(Action::Done) };
            if !self.shared.is_live(i) {
                // Stopped heartbeats: the node is unreachable and leaves its pods alone.
                return Ok(Action::Done);
            }
            let (ns, name) = split_key(&key);
            let uid = s(&pod, &["metadata", "uid"]).unwrap_or("").to_string();
            let rv = s(&pod, &["metadata", "resourceVersion"]).unwrap_or("").to_string();
            let now = jiff::Timestamp::now();
            let now_s = time(now);
            match plan(&pod, now) {
                Plan::Nothing => Ok(Action::Done),
                Plan::Wait(d) => Ok(Action::RequeueAfter(d)),
                Plan::Run => {
                    let ip = self.shared.assign_ip(i, &key, &uid, s(&pod, &["status", "podIP"]));
                    let Some(ip) = ip else {
                        tracing::warn!(pod = %key, node, "no free pod address on the simulated node");
                        return Ok(Action::RequeueAfter(Duration::from_secs(10)));
                    };
                    let status = running_status(&pod, &super::objects::node_ip(i), &ip, &now_s);
                    self.write_status(ns, name, &rv, status).await?;
                    Ok(Action::Done)
                }
                Plan::Complete => {
                    self.write_status(ns, name, &rv, stopped_status(&pod, &now_s)).await?;
                    Ok(Action::Done)
                }
                Plan::Terminate => {
                    self.write_status(ns, name, &rv, stopped_status(&pod, &now_s)).await?;
                    self.delete(ns, name, &uid).await?;
                    Ok(Action::Done)
                }
                Plan::Delete => {
                    self.delete(ns, name, &uid).await?;
                    Ok(Action::Done)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra: Value) -> Value {
        let mut p = json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"nodeName": "sim-0", "containers": [{"name": "c", "image": "nginx:1"}]},
            "status": {"phase": "Pending"},
        });
        crate::simnodes::tests::merge(&mut p, extra);
        p
    }

    fn now() -> jiff::Timestamp {
        "2025-01-01T00:00:10Z".parse().unwrap()
    }

    #[test]
    fn pending_pod_runs() {
        let p = pod(json!({}));
        assert_eq!(plan(&p, now()), Plan::Run);
        let st = running_status(&p, "10.200.0.1", "10.128.0.5", "2025-01-01T00:00:10Z");
        let mut running = p.clone();
        running["status"] = st.clone();
        assert_eq!(plan(&running, now()), Plan::Nothing);
        assert_eq!(st["containerStatuses"][0]["containerID"], "sim://u1-c");
        assert_eq!(st["containerStatuses"][0]["imageID"], "sim://nginx:1");
        assert_eq!(st["containerStatuses"][0]["state"]["running"]["startedAt"], "2025-01-01T00:00:10Z");
        assert_eq!(st["podIPs"][0]["ip"], "10.128.0.5");
    }

    #[test]
    fn job_pods_complete_after_their_time() {
        let mut p = pod(json!({
            "metadata": {"ownerReferences": [{"kind": "Job", "name": "j", "uid": "x", "controller": true}]},
            "spec": {"restartPolicy": "Never"},
        }));
        p["status"] = running_status(&p, "h", "10.128.0.2", "2025-01-01T00:00:09.5Z");
        p["status"]["startTime"] = json!("2025-01-01T00:00:09.5Z");
        assert_eq!(plan(&p, now()), Plan::Wait(Duration::from_millis(500)));
        p["status"]["startTime"] = json!("2025-01-01T00:00:09Z");
        assert_eq!(plan(&p, now()), Plan::Complete);
        // The annotation sets the time; Always pods never complete.
        p["metadata"]["annotations"] = json!({COMPLETE_AFTER_ANNOTATION: "5"});
        assert!(matches!(plan(&p, now()), Plan::Wait(_)));
        p["spec"]["restartPolicy"] = json!("Always");
        assert_eq!(plan(&p, now()), Plan::Nothing);
        let done = stopped_status(&p, "2025-01-01T00:00:10Z");
        assert_eq!(done["phase"], "Succeeded");
        assert_eq!(done["containerStatuses"][0]["state"]["terminated"]["exitCode"], 0);
        assert_eq!(done["containerStatuses"][0]["state"]["terminated"]["reason"], "Completed");
    }

    #[test]
    fn deleted_pods_terminate_then_go() {
        let mut p = pod(json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}}));
        // Never started: just delete.
        assert_eq!(plan(&p, now()), Plan::Delete);
        p["status"] = running_status(&p, "h", "10.128.0.2", "2025-01-01T00:00:00Z");
        assert_eq!(plan(&p, now()), Plan::Terminate);
        p["status"] = stopped_status(&p, "2025-01-01T00:00:10Z");
        assert_eq!(plan(&p, now()), Plan::Delete);
    }

    #[test]
    fn addresses_are_unique_and_sticky() {
        let mut a = Addresses::default();
        a.note(1, "10.128.1.1", "ns/old", "u0");
        let ip = a.assign(1, "ns/p", "u1", None).unwrap();
        assert_eq!(ip, "10.128.1.2");
        assert_eq!(a.assign(1, "ns/p", "u1", None).unwrap(), ip);
        // A claimed address held by someone else is not handed out twice.
        assert_eq!(a.assign(1, "ns/q", "u2", Some("10.128.1.1")).unwrap(), "10.128.1.3");
        a.release(1, "ns/p", "u1");
        assert_eq!(a.assign(1, "ns/r", "u3", None).unwrap(), "10.128.1.2");
        for n in 0..251 {
            let _ = a.assign(2, &format!("ns/{n}"), "u", None);
        }
        assert!(a.assign(2, "ns/x", "u", None).is_some());
        assert!(a.assign(2, "ns/y", "u", None).is_some());
        assert!(a.assign(2, "ns/z", "u", None).is_some());
        assert!(a.assign(2, "ns/full", "u", None).is_none());
    }
}
