//! The cronjob controller: creates a Job at each scheduled time.
//!
//! Jobs are named `<cronjob>-<scheduled time in minutes since the epoch>` (so a retry
//! after a crash finds the same name), owned by the CronJob, and annotated with
//! `batch.kubernetes.io/cronjob-scheduled-timestamp`. concurrencyPolicy Allow, Forbid and
//! Replace, startingDeadlineSeconds, suspend and the history limits work as upstream.
//! `spec.timeZone` names an IANA zone from the system's tz database (default UTC); an
//! unknown zone or a bad schedule gives a Warning event and no jobs.

use super::Ctx;
use crate::client::{gvr, ApiClient};
use crate::events::Recorder;
use crate::informer::{split_key, Change, Informer};
use crate::runtime::{owner_key, Action, Controller, Enqueue, ReconcileError, Reconciler};
use actix::Actor;
use futures::future::BoxFuture;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

pub mod schedule;

use super::job::workload as w;
pub use schedule::Schedule;

/// The annotation on a created Job with its scheduled time.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Upstream warns when more start times than this were missed.
const MAX_MISSED: usize = 100;

struct CronJobs {
    client: ApiClient,
    cronjobs: Arc<Informer>,
    jobs: Arc<Informer>,
    recorder: Recorder,
}

/// The time zone a CronJob names (`None`: UTC).
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        None | Some("") | Some("UTC") | Some("Etc/UTC") => Ok(TimeZone::UTC),
        Some(n) => TimeZone::get(n).map_err(|e| format!("unknown time zone {n:?}: {e}")),
    }
}

/// The name of the Job for a scheduled time.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// What to do at `now` given the schedule and the last scheduled time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Nothing is due; the next time is at the given instant (if any).
    Wait(Option<Timestamp>),
    /// The most recent missed time is too old to start (startingDeadlineSeconds).
    TooLate { scheduled: Timestamp, next: Option<Timestamp> },
    /// Start a job for `scheduled`; `missed` times were due since the last one.
    Start { scheduled: Timestamp, missed: usize, next: Option<Timestamp> },
}

/// The scheduling decision, as upstream's `getNextScheduleTime` and `syncCronJob`.
pub fn due(
    sched: &Schedule,
    tz: &TimeZone,
    created: Timestamp,
    last_schedule: Option<Timestamp>,
    starting_deadline: Option<i64>,
    now: Timestamp,
) -> Due {
    let mut earliest = last_schedule.unwrap_or(created);
    if let Some(d) = starting_deadline {
        let bound = Timestamp::from_second(now.as_second().saturating_sub(d)).unwrap_or(now);
        if bound > earliest {
            earliest = bound;
        }
    }
    let next = sched.next_after(now, tz);
    match sched.most_recent(earliest, now, tz, MAX_MISSED) {
        None => Due::Wait(next),
        Some((scheduled, missed)) => {
            if starting_deadline.is_some_and(|d| scheduled.as_second().saturating_add(d) < now.as_second()) {
                Due::TooLate { scheduled, next }
            } else {
                Due::Start { scheduled, missed, next }
            }
        }
    }
}

/// The Job a CronJob creates for `scheduled`.
fn job_for(cj: &Value, scheduled: Timestamp) -> Value {
    let tmpl = cj.get("spec").and_then(|s| s.get("jobTemplate")).cloned().unwrap_or(Value::Null);
    let md = tmpl.get("metadata");
    let labels =
        md.and_then(|m| m.get("labels")).cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
    let mut annotations: Map<String, Value> =
        md.and_then(|m| m.get("annotations")).and_then(Value::as_object).cloned().unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), json!(w::rfc3339(scheduled)));
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(w::name(cj), scheduled),
            "namespace": w::namespace(cj),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [w::owner_ref("batch/v1", "CronJob", cj)],
        },
        "spec": tmpl.get("spec").cloned().unwrap_or_else(|| json!({})),
    })
}

fn job_ref(job: &Value) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": w::name(job),
        "namespace": w::namespace(job),
        "uid": w::uid(job),
        "resourceVersion": w::str_at(job, &["metadata", "resourceVersion"]).unwrap_or(""),
    })
}

fn failed(job: &Value) -> bool {
    w::condition_true(job, "Failed")
}

fn start_key(job: &Value) -> String {
    w::str_at(job, &["status", "startTime"])
        .or_else(|| w::str_at(job, &["metadata", "creationTimestamp"]))
        .unwrap_or("")
        .to_string()
}

impl CronJobs {
    async fn reconcile_cronjob(&self, key: String) -> Result<Action, ReconcileError> {
        let Some(cj) = self.cronjobs.get(&key) else { return Ok(Action::Done) };
        if w::is_terminating(&cj) {
            return Ok(Action::Done);
        }
        let (ns, _) = split_key(&key);
        let ns = ns.unwrap_or("").to_string();
        let now = w::now();
        let cj_uid = w::uid(&cj).to_string();
        let mut owned: Vec<Arc<Value>> =
            self.jobs.list_ns(&ns).into_iter().filter(|j| w::controlled_by(j, &cj_uid)).collect();
        owned.sort_by_key(|j| start_key(j));
        let status = cj.get("status").cloned().unwrap_or_else(|| json!({}));
        let prev_active: Vec<String> = status
            .get("active")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string))
            .collect();

        // Active jobs and the last success, from the cache.
        let mut active: Vec<Value> = Vec::new();
        let mut last_success = w::str_at(&status, &["lastSuccessfulTime"]).and_then(w::parse_time);
        for j in &owned {
            if crate::controllers::job::is_finished(j) {
                if prev_active.iter().any(|u| u == w::uid(j)) {
                    let state = if failed(j) { "Failed" } else { "Complete" };
                    self.recorder
                        .event(
                            &cj,
                            "Normal",
                            "SawCompletedJob",
                            &format!("Saw completed job: {}, condition: {state}", w::name(j)),
                        )
                        .await;
                }
                if w::condition_true(j, "Complete") {
                    let t = w::str_at(j, &["status", "completionTime"]).and_then(w::parse_time);
                    if t > last_success {
                        last_success = t;
                    }
                }
            } else if !w::is_terminating(j) {
                active.push(job_ref(j));
            }
        }

        // History limits: the oldest finished jobs go first.
        let keep_ok = w::i64_at(&cj, &["spec", "successfulJobsHistoryLimit"]).unwrap_or(3).max(0) as usize;
        let keep_failed = w::i64_at(&cj, &["spec", "failedJobsHistoryLimit"]).unwrap_or(1).max(0) as usize;
        let finished_ok: Vec<&Arc<Value>> =
            owned.iter().filter(|j| w::condition_true(j, "Complete") && !w::is_terminating(j)).collect();
        let finished_failed: Vec<&Arc<Value>> =
            owned.iter().filter(|j| failed(j) && !w::is_terminating(j)).collect();
        for (list, keep) in [(finished_ok, keep_ok), (finished_failed, keep_failed)] {
            let extra = list.len().saturating_sub(keep);
            for j in list.into_iter().take(extra) {
                self.delete_job(&cj, j, "SuccessfulDelete").await?;
            }
        }

        let mut last_schedule = w::str_at(&status, &["lastScheduleTime"]).and_then(w::parse_time);
        let mut action = Action::Done;
        let suspended = w::bool_at(&cj, &["spec", "suspend"]).unwrap_or(false);
        let plan = self.plan(&cj, now, last_schedule).await;
        if let (false, Some(d)) = (suspended, plan) {
            let next = match &d {
                Due::Wait(n) | Due::TooLate { next: n, .. } | Due::Start { next: n, .. } => *n,
            };
            if let Due::TooLate { scheduled, .. } = &d {
                self.recorder
                    .event(
                        &cj,
                        "Warning",
                        "MissSchedule",
                        &format!("Missed scheduled time to start a job: {}", w::rfc3339(*scheduled)),
                    )
                    .await;
            }
            if let Due::Start { scheduled, missed, .. } = d {
                if missed > MAX_MISSED {
                    self.recorder
                        .event(
                            &cj,
                            "Warning",
                            "TooManyMissedTimes",
                            "too many missed start times (> 100); check clock skew",
                        )
                        .await;
                }
                if let Some(job) = self.start_job(&cj, scheduled, &mut active).await? {
                    active.push(job_ref(&job));
                    last_schedule = Some(scheduled);
                }
            }
            if let Some(n) = next {
                let secs = (n.as_second() - now.as_second()).max(0) as u64;
                action = Action::RequeueAfter(Duration::from_secs(secs) + Duration::from_millis(100));
            }
        }

        let mut new_status = status.as_object().cloned().unwrap_or_default();
        if active.is_empty() {
            new_status.remove("active");
        } else {
            new_status.insert("active".into(), json!(active));
        }
        if let Some(t) = last_schedule {
            new_status.insert("lastScheduleTime".into(), json!(w::rfc3339(t)));
        }
        if let Some(t) = last_success {
            new_status.insert("lastSuccessfulTime".into(), json!(w::rfc3339(t)));
        }
        let new_status = Value::Object(new_status);
        if new_status != status {
            let mut updated = (*cj).clone();
            updated["status"] = new_status;
            match self.client.update_status(gvr::CRON_JOBS, Some(&ns), updated).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => return Ok(Action::Done),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(action)
    }

    /// The scheduling decision, or `None` (with a Warning event) when the schedule or
    /// the time zone is unusable.
    async fn plan(&self, cj: &Value, now: Timestamp, last: Option<Timestamp>) -> Option<Due> {
        let spec = w::str_at(cj, &["spec", "schedule"]).unwrap_or("");
        let sched = match Schedule::parse(spec) {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("unparseable schedule {spec:?}: {e}");
                self.recorder.event(cj, "Warning", "UnparseableSchedule", &msg).await;
                return None;
            }
        };
        let tz = match time_zone(w::str_at(cj, &["spec", "timeZone"])) {
            Ok(tz) => tz,
            Err(e) => {
                self.recorder.event(cj, "Warning", "UnknownTimeZone", &e).await;
                return None;
            }
        };
        let created =
            w::str_at(cj, &["metadata", "creationTimestamp"]).and_then(w::parse_time).unwrap_or(now);
        let deadline = w::i64_at(cj, &["spec", "startingDeadlineSeconds"]);
        Some(due(&sched, &tz, created, last, deadline, now))
    }

    /// Starts the job for `scheduled` following the concurrency policy; `Some(job)` when
    /// one was created (or had been created before for this time).
    async fn start_job(
        &self,
        cj: &Value,
        scheduled: Timestamp,
        active: &mut Vec<Value>,
    ) -> Result<Option<Value>, ReconcileError> {
        let name = job_name(w::name(cj), scheduled);
        if active.iter().any(|r| r.get("name").and_then(Value::as_str) == Some(&name)) {
            return Ok(None);
        }
        let policy = w::str_at(cj, &["spec", "concurrencyPolicy"]).unwrap_or("Allow");
        if policy == "Forbid" && !active.is_empty() {
            self.recorder
                .event(
                    cj,
                    "Normal",
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid",
                )
                .await;
            return Ok(None);
        }
        if policy == "Replace" {
            for r in std::mem::take(active) {
                let ns = r.get("namespace").and_then(Value::as_str).unwrap_or("");
                let jn = r.get("name").and_then(Value::as_str).unwrap_or("");
                if let Some(j) = self.jobs.get(&format!("{ns}/{jn}")) {
                    self.delete_job(cj, &j, "SuccessfulDelete").await?;
                }
            }
        }
        let ns = w::namespace(cj).to_string();
        match self.client.create(gvr::JOBS, Some(&ns), job_for(cj, scheduled)).await {
            Ok(job) => {
                self.recorder.event(cj, "Normal", "SuccessfulCreate", &format!("Created job {name}")).await;
                Ok(Some(job))
            }
            Err(e) if e.is_already_exists() => {
                // Created by an earlier attempt (ours), or a stranger holds the name.
                match self.client.get(gvr::JOBS, Some(&ns), &name).await {
                    Ok(j) if w::controlled_by(&j, w::uid(cj)) => Ok(Some(j)),
                    Ok(_) => {
                        let msg = format!("a job named {name} exists and is not owned by this cronjob");
                        self.recorder.event(cj, "Warning", "FailedCreate", &msg).await;
                        Ok(None)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => {
                self.recorder.event(cj, "Warning", "FailedCreate", &format!("Error creating job: {e}")).await;
                Err(e.into())
            }
        }
    }

    async fn delete_job(&self, cj: &Value, job: &Value, reason: &str) -> Result<(), ReconcileError> {
        match self.client.delete(gvr::JOBS, Some(w::namespace(job)), w::name(job), Some("Background")).await {
            Ok(_) => {
                self.recorder.event(cj, "Normal", reason, &format!("Deleted job {}", w::name(job))).await;
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Reconciler for CronJobs {
    fn name(&self) -> &'static str {
        "cronjob"
    }

    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move { self.reconcile_cronjob(key).await })
    }
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let cronjobs = ctx.informers.get(gvr::CRON_JOBS);
    let jobs = ctx.informers.get(gvr::JOBS);
    let r = Arc::new(CronJobs {
        client: ctx.client.clone(),
        cronjobs: cronjobs.clone(),
        jobs: jobs.clone(),
        recorder: ctx.recorder.clone(),
    });
    let addr = Controller::new(r, 4).start();
    let (c1, a1) = (ctx.clone(), addr.clone());
    cronjobs.on_change(Arc::new(move |c: &Change| {
        if let Change::Applied { .. } = c {
            let key = crate::informer::key_of(c.object());
            if c1.owns(&key) {
                a1.do_send(Enqueue(key));
            }
        }
    }));
    let c2 = ctx.clone();
    jobs.on_change(Arc::new(move |c: &Change| {
        if let Some(key) = owner_key(c.object(), "CronJob") {
            if c2.owns(&key) {
                addr.do_send(Enqueue(key));
            }
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap_or_default()
    }

    #[test]
    fn names_and_zones() {
        assert_eq!(job_name("hello", ts("2024-01-01T00:01:00Z")), "hello-28401121");
        assert!(time_zone(None).is_ok());
        assert!(time_zone(Some("Etc/UTC")).is_ok());
        assert!(time_zone(Some("Not/AZone")).is_err());
    }

    #[test]
    fn due_decisions() {
        let s = Schedule::parse("*/1 * * * *").unwrap_or_else(|e| panic!("{e}"));
        let utc = TimeZone::UTC;
        let created = ts("2024-01-01T10:00:30Z");
        assert_eq!(
            due(&s, &utc, created, None, None, ts("2024-01-01T10:00:40Z")),
            Due::Wait(Some(ts("2024-01-01T10:01:00Z")))
        );
        assert_eq!(
            due(&s, &utc, created, None, None, ts("2024-01-01T10:01:02Z")),
            Due::Start {
                scheduled: ts("2024-01-01T10:01:00Z"),
                missed: 1,
                next: Some(ts("2024-01-01T10:02:00Z"))
            }
        );
        // Already started for 10:01.
        assert_eq!(
            due(&s, &utc, created, Some(ts("2024-01-01T10:01:00Z")), None, ts("2024-01-01T10:01:30Z")),
            Due::Wait(Some(ts("2024-01-01T10:02:00Z")))
        );
        // startingDeadlineSeconds: only times within the deadline count.
        let hourly = Schedule::parse("@hourly").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            due(&hourly, &utc, created, None, Some(60), ts("2024-01-01T11:05:00Z")),
            Due::Wait(Some(ts("2024-01-01T12:00:00Z")))
        );
        assert_eq!(
            due(&hourly, &utc, created, None, Some(600), ts("2024-01-01T11:05:00Z")),
            Due::Start {
                scheduled: ts("2024-01-01T11:00:00Z"),
                missed: 1,
                next: Some(ts("2024-01-01T12:00:00Z"))
            }
        );
    }

    #[test]
    fn job_template() {
        let cj = json!({"metadata": {"name": "hello", "namespace": "ns", "uid": "u"},
            "spec": {"jobTemplate": {"metadata": {"labels": {"a": "b"}}, "spec": {"template": {}}}}});
        let j = job_for(&cj, ts("2024-01-01T00:01:00Z"));
        assert_eq!(j["metadata"]["name"], "hello-28401121");
        assert_eq!(j["metadata"]["labels"]["a"], "b");
        assert_eq!(j["metadata"]["annotations"][SCHEDULED_TIMESTAMP], "2024-01-01T00:01:00Z");
        assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    }
}
