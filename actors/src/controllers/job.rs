//! The job controller: runs a Job's pods to completion.
//!
//! NonIndexed and Indexed completion modes, parallelism, completions, backoffLimit (with
//! upstream's exponential delay before replacing failed pods), activeDeadlineSeconds,
//! suspend and ttlSecondsAfterFinished. Finishing follows upstream 1.31+: the job first
//! gets `SuccessCriteriaMet` (or `FailureTarget`), its remaining pods are removed, and
//! once none is left it gets `Complete` (or `Failed`).
//!
//! Counting: this controller does not put the `batch.kubernetes.io/job-tracking`
//! finalizer on pods; it counts finished pods from the pod informer and keeps the
//! counts in `status` monotonic (`max(recorded, observed)`), so a finished pod that is
//! removed later does not lower them. The cost, compared with upstream, is that a pod
//! deleted before this controller ever saw it finish is not counted (it is replaced
//! instead). `uncountedTerminatedPods` is therefore never used.

use super::Ctx;
use crate::client::{gvr, ApiClient};
use crate::events::Recorder;
use crate::informer::{split_key, Change, Informer};
use crate::runtime::{owner_key, Action, Controller, Enqueue, ReconcileError, Reconciler};
use actix::Actor;
use futures::future::BoxFuture;
use jiff::Timestamp;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

pub(crate) mod workload;

use workload as w;

/// The annotation (and label) carrying an Indexed job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// Pods created per reconcile at most.
const MAX_BATCH: usize = 500;
/// Upstream's pod failure back-off: 10 s doubling up to 6 min.
const BACKOFF_BASE_SECS: i64 = 10;
const BACKOFF_MAX_SECS: i64 = 360;

struct Jobs {
    client: ApiClient,
    jobs: Arc<Informer>,
    pods: Arc<Informer>,
    recorder: Recorder,
    expectations: w::Expectations,
}

/// What the job's pods look like right now.
#[derive(Debug, Default)]
struct Observed {
    active: Vec<Arc<Value>>,
    terminating: usize,
    succeeded: usize,
    failed: usize,
    ready: usize,
    succeeded_indexes: BTreeSet<i64>,
    /// When the latest pod failure happened (for the replacement back-off).
    last_failure: Option<Timestamp>,
}

fn observe(pods: &[Arc<Value>]) -> Observed {
    let mut o = Observed::default();
    for p in pods {
        match w::pod_phase(p) {
            "Succeeded" => {
                o.succeeded += 1;
                if let Some(i) = pod_index(p) {
                    o.succeeded_indexes.insert(i);
                }
            }
            "Failed" => {
                o.failed += 1;
                let t = finished_at(p);
                if t > o.last_failure {
                    o.last_failure = t;
                }
            }
            _ if w::is_terminating(p) => o.terminating += 1,
            _ => {
                if w::pod_ready(p) {
                    o.ready += 1;
                }
                o.active.push(p.clone());
            }
        }
    }
    o
}

/// When a finished pod's last container finished (falling back to its creation time).
fn finished_at(pod: &Value) -> Option<Timestamp> {
    let from_containers = pod
        .get("status")
        .and_then(|s| s.get("containerStatuses"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| w::str_at(c, &["state", "terminated", "finishedAt"]).and_then(w::parse_time))
        .max();
    from_containers.or_else(|| w::str_at(pod, &["metadata", "creationTimestamp"]).and_then(w::parse_time))
}

/// A pod's completion index (Indexed jobs).
fn pod_index(pod: &Value) -> Option<i64> {
    w::str_at(pod, &["metadata", "annotations", COMPLETION_INDEX])
        .or_else(|| w::str_at(pod, &["metadata", "labels", COMPLETION_INDEX]))
        .and_then(|s| s.parse().ok())
        .filter(|i| *i >= 0)
}

/// `0-2,4,6-7` as upstream's `completedIndexes`.
fn compress_indexes(set: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    out.join(",")
}

/// The job's settings the decisions need.
#[derive(Debug, Clone)]
struct JobSpec {
    parallelism: i64,
    completions: Option<i64>,
    indexed: bool,
    backoff_limit: i64,
    active_deadline: Option<i64>,
    suspend: bool,
    replace_only_failed: bool,
}

impl JobSpec {
    fn of(job: &Value) -> JobSpec {
        let spec = job.get("spec").cloned().unwrap_or(Value::Null);
        JobSpec {
            parallelism: w::i64_at(&spec, &["parallelism"]).unwrap_or(1).max(0),
            completions: w::i64_at(&spec, &["completions"]).map(|c| c.max(0)),
            indexed: w::str_at(&spec, &["completionMode"]) == Some("Indexed"),
            backoff_limit: w::i64_at(&spec, &["backoffLimit"]).unwrap_or(6).max(0),
            active_deadline: w::i64_at(&spec, &["activeDeadlineSeconds"]),
            suspend: w::bool_at(&spec, &["suspend"]).unwrap_or(false),
            replace_only_failed: w::str_at(&spec, &["podReplacementPolicy"]) == Some("Failed"),
        }
    }
}

/// Whether the job has met its success criteria with `succeeded` pods (or indexes).
fn success_reached(spec: &JobSpec, succeeded: i64, succeeded_indexes: &BTreeSet<i64>, active: usize) -> bool {
    match spec.completions {
        Some(c) if spec.indexed => (0..c).all(|i| succeeded_indexes.contains(&i)),
        Some(c) => succeeded >= c,
        // A work queue: done when one pod succeeded and the rest have stopped.
        None => succeeded > 0 && active == 0,
    }
}

/// How many pods should be active (NonIndexed).
fn want_active(spec: &JobSpec, succeeded: i64, active: i64) -> i64 {
    match spec.completions {
        Some(c) => spec.parallelism.min((c - succeeded).max(0)),
        None if succeeded > 0 => active.min(spec.parallelism),
        None => spec.parallelism,
    }
}

/// The indexes a new pod should get (Indexed): not succeeded, not running, lowest first.
fn indexes_to_create(spec: &JobSpec, succeeded: &BTreeSet<i64>, active: &[Arc<Value>]) -> Vec<i64> {
    let Some(c) = spec.completions else { return Vec::new() };
    let running: BTreeSet<i64> = active.iter().filter_map(|p| pod_index(p)).collect();
    let room = (spec.parallelism - active.len() as i64).max(0) as usize;
    (0..c).filter(|i| !succeeded.contains(i) && !running.contains(i)).take(room.min(MAX_BATCH)).collect()
}

fn new_condition(type_: &str, status: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastProbeTime": now, "lastTransitionTime": now})
}

/// Sets a condition in `conds`, keeping lastTransitionTime when the status is unchanged.
fn set_condition(conds: &mut Vec<Value>, c: Value) {
    let type_ = c.get("type").cloned();
    if let Some(old) = conds.iter_mut().find(|x| x.get("type") == type_.as_ref()) {
        if old.get("status") == c.get("status") && old.get("reason") == c.get("reason") {
            return;
        }
        *old = c;
    } else {
        conds.push(c);
    }
}

fn cond_true(conds: &[Value], type_: &str) -> bool {
    conds.iter().any(|c| {
        c.get("type").and_then(Value::as_str) == Some(type_)
            && c.get("status").and_then(Value::as_str) == Some("True")
    })
}

fn cond_time(conds: &[Value], type_: &str) -> Option<Timestamp> {
    conds
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
        .and_then(|c| c.get("lastTransitionTime"))
        .and_then(Value::as_str)
        .and_then(w::parse_time)
}

/// Whether a Job has finished (Complete or Failed is True).
pub fn is_finished(job: &Value) -> bool {
    w::condition_true(job, "Complete") || w::condition_true(job, "Failed")
}

/// The pod a job creates (`index` for Indexed jobs).
fn pod_for(job: &Value, index: Option<i64>) -> Value {
    let job_name = w::name(job);
    let template = job.get("spec").and_then(|s| s.get("template")).cloned().unwrap_or(Value::Null);
    let mut labels: Map<String, Value> = template
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in [
        ("batch.kubernetes.io/job-name", job_name),
        ("job-name", job_name),
        ("batch.kubernetes.io/controller-uid", w::uid(job)),
        ("controller-uid", w::uid(job)),
    ] {
        labels.entry(k).or_insert_with(|| json!(v));
    }
    let mut annotations: Map<String, Value> = template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut spec = template.get("spec").cloned().unwrap_or_else(|| json!({}));
    let generate_name = match index {
        Some(i) => {
            annotations.insert(COMPLETION_INDEX.into(), json!(i.to_string()));
            labels.insert(COMPLETION_INDEX.into(), json!(i.to_string()));
            if let Some(s) = spec.as_object_mut() {
                s.entry("hostname").or_insert_with(|| json!(format!("{job_name}-{i}")));
                if let Some(Value::Array(containers)) = s.get_mut("containers") {
                    for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                        let env = c.entry("env").or_insert_with(|| json!([]));
                        if let Value::Array(env) = env {
                            env.push(json!({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                                "fieldPath": format!("metadata.labels['{COMPLETION_INDEX}']")}}}));
                        }
                    }
                }
            }
            format!("{job_name}-{i}-")
        }
        None => format!("{job_name}-"),
    };
    let mut metadata = json!({
        "generateName": generate_name,
        "namespace": w::namespace(job),
        "labels": labels,
        "ownerReferences": [w::owner_ref("batch/v1", "Job", job)],
    });
    if !annotations.is_empty() {
        metadata["annotations"] = Value::Object(annotations);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

impl Jobs {
    async fn create_pods(
        &self,
        key: &str,
        job: &Value,
        indexes: Vec<Option<i64>>,
    ) -> Result<(), ReconcileError> {
        let ns = w::namespace(job).to_string();
        let futs = indexes.into_iter().map(|i| {
            let pod = pod_for(job, i);
            let client = self.client.clone();
            let ns = ns.clone();
            async move { client.create(gvr::PODS, Some(&ns), pod).await }
        });
        let mut first_err = None;
        for r in futures::future::join_all(futs).await {
            match r {
                Ok(p) => {
                    self.expectations.created(key, w::name(&p));
                    self.recorder
                        .event(job, "Normal", "SuccessfulCreate", &format!("Created pod: {}", w::name(&p)))
                        .await;
                }
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
            }
        }
        match first_err {
            // The namespace is going away: nothing to do.
            Some(e) if e.is_not_found() => Ok(()),
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn delete_pods(&self, key: &str, job: &Value, pods: &[Arc<Value>]) -> Result<(), ReconcileError> {
        for p in pods {
            match self.client.delete_uid(gvr::PODS, Some(w::namespace(p)), w::name(p), w::uid(p), None).await
            {
                Ok(_) => {
                    self.expectations.deleted(key, w::uid(p));
                    self.recorder
                        .event(job, "Normal", "SuccessfulDelete", &format!("Deleted pod: {}", w::name(p)))
                        .await;
                }
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn reconcile_job(&self, key: String) -> Result<Action, ReconcileError> {
        let Some(job) = self.jobs.get(&key) else {
            self.expectations.forget(&key);
            return Ok(Action::Done);
        };
        if w::is_terminating(&job) {
            return Ok(Action::Done);
        }
        let (ns, _) = split_key(&key);
        let ns = ns.unwrap_or("").to_string();
        let job_uid = w::uid(&job).to_string();
        let pods: Vec<Arc<Value>> =
            self.pods.list_ns(&ns).into_iter().filter(|p| w::controlled_by(p, &job_uid)).collect();
        let now = w::now();
        let now_s = w::rfc3339(now);
        let spec = JobSpec::of(&job);
        let status = job.get("status").cloned().unwrap_or_else(|| json!({}));
        let mut conds: Vec<Value> =
            status.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        let obs = observe(&pods);

        if is_finished(&job) {
            // Leftovers of a finished job go; then the TTL clock runs.
            let leftovers: Vec<Arc<Value>> = obs.active.clone();
            self.delete_pods(&key, &job, &leftovers).await?;
            return self.ttl(&job, &conds, now).await;
        }

        let succeeded = (w::i64_at(&status, &["succeeded"]).unwrap_or(0)).max(obs.succeeded as i64);
        let failed = (w::i64_at(&status, &["failed"]).unwrap_or(0)).max(obs.failed as i64);
        let mut succeeded_indexes = obs.succeeded_indexes.clone();
        if spec.indexed {
            if let Some(prev) = status.get("completedIndexes").and_then(Value::as_str) {
                succeeded_indexes.extend(parse_indexes(prev));
            }
        }
        let succeeded = if spec.indexed { succeeded.max(succeeded_indexes.len() as i64) } else { succeeded };

        let mut start_time = status.get("startTime").and_then(Value::as_str).map(str::to_string);
        let was_suspended = cond_true(&conds, "Suspended");
        let mut requeue: Option<Duration> = None;
        let mut delete: Vec<Arc<Value>> = Vec::new();
        let mut create: Vec<Option<i64>> = Vec::new();

        let finishing = cond_true(&conds, "SuccessCriteriaMet") || cond_true(&conds, "FailureTarget");
        if !finishing {
            if spec.suspend {
                if !was_suspended {
                    set_condition(
                        &mut conds,
                        new_condition("Suspended", "True", "JobSuspended", "Job suspended", &now_s),
                    );
                    self.recorder.event(&job, "Normal", "Suspended", "Job suspended").await;
                }
                delete.extend(obs.active.iter().cloned());
            } else {
                if was_suspended {
                    set_condition(
                        &mut conds,
                        new_condition("Suspended", "False", "JobResumed", "Job resumed", &now_s),
                    );
                    self.recorder.event(&job, "Normal", "Resumed", "Job resumed").await;
                    start_time = None;
                }
                if start_time.is_none() {
                    start_time = Some(now_s.clone());
                }
                let started = start_time.as_deref().and_then(w::parse_time).unwrap_or(now);
                let deadline_passed = spec
                    .active_deadline
                    .is_some_and(|d| started.as_second().saturating_add(d) <= now.as_second());
                if failed > spec.backoff_limit {
                    let msg = "Job has reached the specified backoff limit";
                    set_condition(
                        &mut conds,
                        new_condition("FailureTarget", "True", "BackoffLimitExceeded", msg, &now_s),
                    );
                    self.recorder.event(&job, "Warning", "BackoffLimitExceeded", msg).await;
                } else if deadline_passed {
                    let msg = "Job was active longer than specified deadline";
                    set_condition(
                        &mut conds,
                        new_condition("FailureTarget", "True", "DeadlineExceeded", msg, &now_s),
                    );
                    self.recorder.event(&job, "Warning", "DeadlineExceeded", msg).await;
                } else if success_reached(&spec, succeeded, &succeeded_indexes, obs.active.len()) {
                    let msg = "Reached expected number of succeeded pods";
                    set_condition(
                        &mut conds,
                        new_condition("SuccessCriteriaMet", "True", "CompletionsReached", msg, &now_s),
                    );
                } else {
                    if let Some(d) = spec.active_deadline {
                        let left = started.as_second().saturating_add(d) - now.as_second();
                        requeue = Some(Duration::from_secs(left.max(1) as u64));
                    }
                    // Replacement back-off after failures, as upstream: 10 s * 2^(n-1).
                    let wait = backoff_remaining(failed, obs.last_failure, now);
                    let in_progress = obs.active.len() as i64
                        + if spec.replace_only_failed { obs.terminating as i64 } else { 0 };
                    if spec.indexed {
                        if wait == 0 {
                            create.extend(
                                indexes_to_create(&spec, &succeeded_indexes, &obs.active)
                                    .into_iter()
                                    .map(Some),
                            );
                        }
                        // Duplicates of one index: keep the oldest.
                        delete.extend(duplicate_index_pods(&obs.active));
                    } else {
                        let want = want_active(&spec, succeeded, in_progress);
                        if in_progress < want && wait == 0 {
                            let n = ((want - in_progress) as usize).min(MAX_BATCH);
                            create.extend(std::iter::repeat_n(None, n));
                        } else if (obs.active.len() as i64) > want {
                            delete
                                .extend(excess_pods(&obs.active, (obs.active.len() as i64 - want) as usize));
                        }
                    }
                    if wait > 0 {
                        let w = Duration::from_secs(wait as u64);
                        requeue = Some(requeue.map_or(w, |r| r.min(w)));
                    }
                }
            }
        }
        let finishing = cond_true(&conds, "SuccessCriteriaMet") || cond_true(&conds, "FailureTarget");
        if finishing {
            create.clear();
            delete = obs.active.clone();
        }

        // Act only on a cache that shows our previous writes.
        let pods_inf = self.pods.clone();
        let settled = self.expectations.satisfied(
            &key,
            |n| w::pod_seen(&pods_inf, &ns, n),
            |u| w::pod_gone(&pods_inf, &ns, u),
        );
        let mut active_after = obs.active.len() as i64;
        let mut terminating_after = obs.terminating as i64;
        if settled {
            if !delete.is_empty() {
                self.delete_pods(&key, &job, &delete).await?;
                active_after -= delete.len() as i64;
                terminating_after += delete.len() as i64;
            }
            if !create.is_empty() {
                active_after += create.len() as i64;
                self.create_pods(&key, &job, create).await?;
            }
        } else if !delete.is_empty() || !create.is_empty() {
            requeue = Some(Duration::from_secs(1));
        }

        let mut completion_time = status.get("completionTime").cloned();
        if finishing && settled && obs.active.is_empty() && obs.terminating == 0 {
            if cond_true(&conds, "SuccessCriteriaMet") {
                let msg = "Reached expected number of succeeded pods";
                set_condition(
                    &mut conds,
                    new_condition("Complete", "True", "CompletionsReached", msg, &now_s),
                );
                completion_time = Some(json!(now_s));
                self.recorder.event(&job, "Normal", "Completed", "Job completed").await;
            } else {
                let (reason, msg) = conds
                    .iter()
                    .find(|c| c.get("type").and_then(Value::as_str) == Some("FailureTarget"))
                    .map(|c| {
                        (
                            c.get("reason").and_then(Value::as_str).unwrap_or("").to_string(),
                            c.get("message").and_then(Value::as_str).unwrap_or("").to_string(),
                        )
                    })
                    .unwrap_or_default();
                set_condition(&mut conds, new_condition("Failed", "True", &reason, &msg, &now_s));
            }
        } else if finishing {
            requeue = Some(requeue.map_or(Duration::from_secs(1), |r| r.min(Duration::from_secs(1))));
        }

        let mut new_status = status.as_object().cloned().unwrap_or_default();
        new_status.insert("active".into(), json!(active_after.max(0)));
        new_status.insert("ready".into(), json!(obs.ready));
        new_status.insert("succeeded".into(), json!(succeeded));
        new_status.insert("failed".into(), json!(failed));
        new_status.insert("terminating".into(), json!(terminating_after.max(0)));
        if spec.indexed {
            new_status.insert("completedIndexes".into(), json!(compress_indexes(&succeeded_indexes)));
        }
        match start_time {
            Some(t) => new_status.insert("startTime".into(), json!(t)),
            None => new_status.remove("startTime"),
        };
        if let Some(ct) = completion_time {
            new_status.insert("completionTime".into(), ct);
        }
        if !conds.is_empty() {
            new_status.insert("conditions".into(), json!(conds));
        }
        let new_status = Value::Object(new_status);
        if new_status != status {
            let mut updated = (*job).clone();
            updated["status"] = new_status;
            match self.client.update_status(gvr::JOBS, Some(&ns), updated).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Action::Done),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(requeue.map_or(Action::Done, Action::RequeueAfter))
    }

    /// Deletes a finished job once its ttlSecondsAfterFinished has passed.
    async fn ttl(&self, job: &Value, conds: &[Value], now: Timestamp) -> Result<Action, ReconcileError> {
        let Some(ttl) = w::i64_at(job, &["spec", "ttlSecondsAfterFinished"]) else { return Ok(Action::Done) };
        let finished = job
            .get("status")
            .and_then(|s| s.get("completionTime"))
            .and_then(Value::as_str)
            .and_then(w::parse_time)
            .or_else(|| cond_time(conds, "Complete"))
            .or_else(|| cond_time(conds, "Failed"))
            .unwrap_or(now);
        let left = finished.as_second().saturating_add(ttl) - now.as_second();
        if left > 0 {
            return Ok(Action::RequeueAfter(Duration::from_secs(left as u64)));
        }
        match self
            .client
            .delete_uid(gvr::JOBS, Some(w::namespace(job)), w::name(job), w::uid(job), None)
            .await
        {
            Ok(_) => Ok(Action::Done),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(Action::Done),
            Err(e) => Err(e.into()),
        }
    }
}

/// Seconds to wait before replacing failed pods (upstream's pod failure back-off).
fn backoff_remaining(failed: i64, last_failure: Option<Timestamp>, now: Timestamp) -> i64 {
    if failed <= 0 {
        return 0;
    }
    let Some(last) = last_failure else { return 0 };
    let shift = (failed - 1).clamp(0, 10) as u32;
    let delay = BACKOFF_BASE_SECS.saturating_mul(1i64 << shift).min(BACKOFF_MAX_SECS);
    (last.as_second().saturating_add(delay) - now.as_second()).max(0)
}

/// Parses `0-2,4` into indexes (bounded, so bad status cannot blow up memory).
fn parse_indexes(s: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<i64>(), b.trim().parse::<i64>()) {
            if a >= 0 && b >= a && b - a < 100_000 {
                out.extend(a..=b);
            }
        }
    }
    out
}

/// Which active pods to remove when there are too many: not-ready, then newest first.
fn excess_pods(active: &[Arc<Value>], n: usize) -> Vec<Arc<Value>> {
    let mut sorted: Vec<Arc<Value>> = active.to_vec();
    sorted.sort_by_key(|p| {
        (
            w::pod_ready(p),
            std::cmp::Reverse(w::str_at(p, &["metadata", "creationTimestamp"]).unwrap_or("").to_string()),
        )
    });
    sorted.into_iter().take(n).collect()
}

/// Active pods of an Indexed job that duplicate an index held by an older pod.
fn duplicate_index_pods(active: &[Arc<Value>]) -> Vec<Arc<Value>> {
    let mut sorted: Vec<Arc<Value>> = active.to_vec();
    sorted.sort_by_key(|p| w::str_at(p, &["metadata", "creationTimestamp"]).unwrap_or("").to_string());
    let mut seen = BTreeSet::new();
    sorted.into_iter().filter(|p| pod_index(p).is_some_and(|i| !seen.insert(i))).collect()
}

impl Reconciler for Jobs {
    fn name(&self) -> &'static str {
        "job"
    }

    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move { self.reconcile_job(key).await })
    }
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let jobs = ctx.informers.get(gvr::JOBS);
    let pods = ctx.informers.get(gvr::PODS);
    let r = Arc::new(Jobs {
        client: ctx.client.clone(),
        jobs: jobs.clone(),
        pods: pods.clone(),
        recorder: ctx.recorder.clone(),
        expectations: w::Expectations::default(),
    });
    let addr = Controller::new(r, 8).start();
    let (c1, a1) = (ctx.clone(), addr.clone());
    jobs.on_change(Arc::new(move |c: &Change| {
        let key = crate::informer::key_of(c.object());
        if c1.owns(&key) {
            a1.do_send(Enqueue(key));
        }
    }));
    let c2 = ctx.clone();
    pods.on_change(Arc::new(move |c: &Change| {
        if let Some(key) = owner_key(c.object(), "Job") {
            if c2.owns(&key) {
                addr.do_send(Enqueue(key));
            }
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(parallelism: i64, completions: Option<i64>) -> JobSpec {
        JobSpec {
            parallelism,
            completions,
            indexed: false,
            backoff_limit: 6,
            active_deadline: None,
            suspend: false,
            replace_only_failed: false,
        }
    }

    #[test]
    fn active_target() {
        assert_eq!(want_active(&spec(2, Some(3)), 0, 0), 2);
        assert_eq!(want_active(&spec(2, Some(3)), 2, 1), 1);
        assert_eq!(want_active(&spec(2, Some(3)), 3, 0), 0);
        assert_eq!(want_active(&spec(4, None), 0, 0), 4);
        assert_eq!(want_active(&spec(4, None), 1, 2), 2);
    }

    #[test]
    fn success() {
        let none = BTreeSet::new();
        assert!(success_reached(&spec(2, Some(3)), 3, &none, 0));
        assert!(!success_reached(&spec(2, Some(3)), 2, &none, 1));
        assert!(success_reached(&spec(2, None), 1, &none, 0));
        assert!(!success_reached(&spec(2, None), 1, &none, 1));
        let mut idx = spec(2, Some(3));
        idx.indexed = true;
        let s: BTreeSet<i64> = [0, 2].into_iter().collect();
        assert!(!success_reached(&idx, 2, &s, 0));
        let s: BTreeSet<i64> = [0, 1, 2].into_iter().collect();
        assert!(success_reached(&idx, 3, &s, 0));
    }

    #[test]
    fn indexes() {
        let s: BTreeSet<i64> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(compress_indexes(&s), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), s);
        let mut idx = spec(2, Some(5));
        idx.indexed = true;
        let running = vec![Arc::new(json!({"metadata": {"annotations": {COMPLETION_INDEX: "0"}}}))];
        assert_eq!(indexes_to_create(&idx, &[1].into_iter().collect(), &running), vec![2]);
    }

    #[test]
    fn backoff() {
        let t = |s: i64| Timestamp::from_second(s).unwrap_or_default();
        assert_eq!(backoff_remaining(0, Some(t(100)), t(100)), 0);
        assert_eq!(backoff_remaining(1, Some(t(100)), t(105)), 5);
        assert_eq!(backoff_remaining(2, Some(t(100)), t(105)), 15);
        assert_eq!(backoff_remaining(20, Some(t(100)), t(100)), 360);
    }

    #[test]
    fn pod_template() {
        let job = json!({"metadata": {"name": "pi", "namespace": "ns", "uid": "u1"},
            "spec": {"template": {"metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"}}}});
        let p = pod_for(&job, None);
        assert_eq!(p["metadata"]["generateName"], "pi-");
        assert_eq!(p["metadata"]["labels"]["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(p["metadata"]["labels"]["controller-uid"], "u1");
        assert_eq!(p["metadata"]["ownerReferences"][0]["controller"], true);
        let p = pod_for(&job, Some(2));
        assert_eq!(p["metadata"]["generateName"], "pi-2-");
        assert_eq!(p["metadata"]["annotations"][COMPLETION_INDEX], "2");
        assert_eq!(p["spec"]["hostname"], "pi-2");
    }

    #[test]
    fn counting() {
        let pods: Vec<Arc<Value>> = vec![
            Arc::new(json!({"status": {"phase": "Succeeded"}})),
            Arc::new(json!({"status": {"phase": "Failed"}})),
            Arc::new(
                json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
            ),
            Arc::new(
                json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}, "status": {"phase": "Running"}}),
            ),
        ];
        let o = observe(&pods);
        assert_eq!((o.succeeded, o.failed, o.active.len(), o.ready, o.terminating), (1, 1, 1, 1, 1));
    }
}
