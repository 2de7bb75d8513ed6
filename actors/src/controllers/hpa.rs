//! The HorizontalPodAutoscaler controller (upstream's `pkg/controller/podautoscaler`) for
//! `autoscaling/v2` Resource metrics (CPU and memory, `Utilization` and `AverageValue`
//! targets): every [`SYNC_PERIOD`] (and on each change of the autoscaler) it reads the
//! target's `scale` subresource, the pods its selector picks and their `metrics.k8s.io`
//! PodMetrics, computes the desired replicas as upstream's replica calculator does
//! ([`desired_replicas`]: `ceil(ready pods × usage / target)`, tolerance 0.1, pods without
//! metrics assumed at 100 % of their request when scaling down and at 0 when scaling up,
//! unready pods left out, and taken at 0 when scaling up; pods are grouped as upstream's
//! `groupPods`, [`counts`]: Pending pods are unready, and for CPU so is a pod not Ready or,
//! in its first 5 minutes, sampled less than a window after it became Ready), applies the behavior (stabilization windows: the
//! lowest recommendation of the scale-up window, the highest of the scale-down window;
//! rate policies; min/max replicas) and writes the new size through the `scale`
//! subresource, with a `SuccessfulRescale` event, and the status (`currentMetrics`,
//! `currentReplicas`, `desiredReplicas`, `lastScaleTime`, the conditions `AbleToScale`,
//! `ScalingActive`, `ScalingLimited`).

use super::Ctx;
use crate::client::{gvr, ApiClient, Gvr};
use crate::events::Recorder;
use crate::informer::{key_of, split_key, Change, Informer};
use crate::runtime::{Action, Controller, Enqueue, ReconcileError, Reconciler};
use actix::Actor;
use capstan_api::selectors::LabelSelector;
use capstan_api::{meta, quantity, registry};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// HorizontalPodAutoscalers.
pub const HPAS: Gvr = Gvr::new("autoscaling", "v2", "horizontalpodautoscalers");
/// PodMetrics.
pub const POD_METRICS: Gvr = Gvr::new("metrics.k8s.io", "v1beta1", "pods");
/// How often each autoscaler is evaluated (upstream's `--horizontal-pod-autoscaler-sync-period`).
pub const SYNC_PERIOD: Duration = Duration::from_secs(15);
/// Upstream's `--horizontal-pod-autoscaler-tolerance`.
pub const TOLERANCE: f64 = 0.1;
/// Upstream's `--horizontal-pod-autoscaler-cpu-initialization-period`: how long after its
/// start a pod's CPU sample is only used once taken a whole window after it became Ready.
pub const CPU_INITIALIZATION_PERIOD: Duration = Duration::from_secs(300);
/// Upstream's `--horizontal-pod-autoscaler-initial-readiness-delay`: a pod not Ready that
/// turned so within this long of its start has never been ready.
pub const INITIAL_READINESS_DELAY: Duration = Duration::from_secs(30);

/// What one metric gives.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricResult {
    /// The replica count this metric asks for.
    pub replicas: i64,
    /// Average utilization in percent of the request (Utilization targets).
    pub utilization: Option<i64>,
    /// Average usage per pod, in milli-units (milli-cores, milli-bytes).
    pub average_milli: i64,
}

/// One pod as the calculator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSample {
    /// Usage in milli-units, `None` without metrics.
    pub usage_milli: Option<i64>,
    /// The summed requests of its containers, in milli-units.
    pub request_milli: i64,
    /// Whether its sample counts (upstream's grouping, [`counts`]): a pod that does not is
    /// "unready", left out of the average and, when scaling up, taken at 0.
    pub ready: bool,
}

fn time_of(v: &Value) -> Option<jiff::Timestamp> {
    v.as_str()?.parse().ok()
}

/// A metrics window (`30s`, `15.5s`, `1m0s`) in milliseconds.
fn window_millis(w: &str) -> Option<i64> {
    let (mins, secs) = match w.split_once('m') {
        Some((m, rest)) => (m.parse::<f64>().ok()?, rest),
        None => (0.0, w),
    };
    let secs = match secs.strip_suffix('s') {
        Some(s) => s.parse::<f64>().ok()?,
        None if secs.is_empty() => 0.0,
        None => return None,
    };
    Some(((mins * 60.0 + secs) * 1000.0) as i64)
}

/// Upstream's `groupPods` for one pod with metrics `metric` (None: missing): whether its
/// sample counts. Pending pods never do; without metrics a pod is "missing" (it counts, at
/// its request or 0, see [`desired_replicas`]); for CPU, a pod counts once Ready, and during
/// its first [`CPU_INITIALIZATION_PERIOD`] only when Ready and sampled a whole window after
/// it became Ready; after that period, a pod not Ready counts unless it has never been
/// Ready (its condition turned within [`INITIAL_READINESS_DELAY`] of its start).
pub fn counts(pod: &Value, metric: Option<&Value>, resource: &str, now: jiff::Timestamp) -> bool {
    if pod["status"]["phase"] == "Pending" {
        return false;
    }
    let Some(metric) = metric else { return true };
    if resource != "cpu" {
        return true;
    }
    let ready =
        pod["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    let (Some(ready), Some(start)) = (ready, time_of(&pod["status"]["startTime"])) else { return false };
    let is_ready = ready["status"] == "True";
    let transition = time_of(&ready["lastTransitionTime"]).unwrap_or(start);
    let after = |t: jiff::Timestamp, d: Duration| t.checked_add(d).unwrap_or(t);
    if after(start, CPU_INITIALIZATION_PERIOD) > now {
        let window = metric["window"].as_str().and_then(window_millis).unwrap_or(0);
        let sampled = time_of(&metric["timestamp"]).unwrap_or(now);
        let settled = transition.checked_add(jiff::SignedDuration::from_millis(window)).unwrap_or(transition);
        is_ready && sampled >= settled
    } else {
        is_ready || after(start, INITIAL_READINESS_DELAY) <= transition
    }
}

/// Upstream's `GetResourceReplicas` (utilization when `target_utilization` is set, else
/// `GetRawResourceReplicas` against `target_average_milli` per pod).
pub fn desired_replicas(
    current: i64,
    pods: &[PodSample],
    target_utilization: Option<i64>,
    target_average_milli: i64,
) -> Result<MetricResult, String> {
    if pods.iter().all(|p| p.usage_milli.is_none()) {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let ready: Vec<&PodSample> = pods.iter().filter(|p| p.ready && p.usage_milli.is_some()).collect();
    if ready.is_empty() {
        return Err("did not receive metrics for any ready pods".into());
    }
    let missing = pods.iter().filter(|p| p.ready && p.usage_milli.is_none()).count();
    let unready = pods.iter().filter(|p| !p.ready).count();
    let usage: i64 = ready.iter().map(|p| p.usage_milli.unwrap_or(0)).sum();
    let requests: i64 = ready.iter().map(|p| p.request_milli).sum();
    let n = ready.len().max(1) as f64;
    let ratio_of = |usage: f64, requests: f64, count: f64| match target_utilization {
        Some(t) if requests > 0.0 => (usage * 100.0 / requests) / t as f64,
        Some(_) => f64::NAN,
        None => usage / count / target_average_milli.max(1) as f64,
    };
    let ratio = if ready.is_empty() { 0.0 } else { ratio_of(usage as f64, requests as f64, n) };
    if ratio.is_nan() {
        return Err("missing request for the resource".into());
    }
    let utilization = (target_utilization.is_some() && requests > 0).then(|| usage * 100 / requests);
    let average_milli = if ready.is_empty() { 0 } else { usage / ready.len() as i64 };
    let result = |replicas| MetricResult { replicas, utilization, average_milli };
    let rebalance_unready = ratio > 1.0 && unready > 0;
    if missing == 0 && !rebalance_unready {
        if (ratio - 1.0).abs() <= TOLERANCE {
            return Ok(result(current));
        }
        return Ok(result((ratio * ready.len() as f64).ceil() as i64));
    }
    // Missing pods: at their request (100 %) when scaling down, at 0 when scaling up;
    // unready pods at 0 when scaling up.
    let mut u = usage as f64;
    let mut r = requests as f64;
    let mut count = ready.len() as f64;
    for p in pods.iter().filter(|p| p.ready && p.usage_milli.is_none()) {
        if ratio < 1.0 {
            u += match target_utilization {
                Some(_) => p.request_milli as f64,
                None => target_average_milli as f64,
            };
        }
        r += p.request_milli as f64;
        count += 1.0;
    }
    if rebalance_unready {
        for p in pods.iter().filter(|p| !p.ready) {
            r += p.request_milli as f64;
            count += 1.0;
        }
    }
    let new_ratio = ratio_of(u, r, count);
    if (new_ratio - 1.0).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(result(current));
    }
    let replicas = (new_ratio * count).ceil() as i64;
    // Never move against the first estimate's direction.
    if (ratio < 1.0 && replicas > current) || (ratio > 1.0 && replicas < current) {
        return Ok(result(current));
    }
    Ok(result(replicas))
}

/// The scaling rules of one direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Stabilization window.
    pub window: Duration,
    /// `Max`, `Min` or `Disabled`.
    pub select: String,
    /// `(type, value, periodSeconds)`.
    pub policies: Vec<(String, i64, i64)>,
}

/// The rules of `dir` (`scaleUp`/`scaleDown`), defaults filled as upstream.
pub fn rules(hpa: &Value, dir: &str) -> Rules {
    let r = &hpa["spec"]["behavior"][dir];
    let up = dir == "scaleUp";
    let window = r["stabilizationWindowSeconds"].as_i64().unwrap_or(if up { 0 } else { 300 });
    let policies: Vec<(String, i64, i64)> = match r["policies"].as_array() {
        Some(ps) if !ps.is_empty() => ps
            .iter()
            .map(|p| {
                (
                    p["type"].as_str().unwrap_or("").to_string(),
                    p["value"].as_i64().unwrap_or(0),
                    p["periodSeconds"].as_i64().unwrap_or(15),
                )
            })
            .collect(),
        _ if up => vec![("Pods".into(), 4, 15), ("Percent".into(), 100, 15)],
        _ => vec![("Percent".into(), 100, 15)],
    };
    Rules {
        window: Duration::from_secs(window.max(0) as u64),
        select: r["selectPolicy"].as_str().unwrap_or("Max").to_string(),
        policies,
    }
}

/// Upstream's stabilization: the recommendation after the windows, given the earlier
/// recommendations `(age, replicas)`.
pub fn stabilize(current: i64, desired: i64, history: &[(Duration, i64)], up: &Rules, down: &Rules) -> i64 {
    let mut up_rec = desired;
    let mut down_rec = desired;
    for &(age, r) in history {
        if age < up.window {
            up_rec = up_rec.min(r);
        }
        if age < down.window {
            down_rec = down_rec.max(r);
        }
    }
    current.max(up_rec).min(down_rec)
}

/// The rate limit of the policies (upstream's `calculateScaleUpLimitWithScalingRules` and
/// `calculateScaleDownLimitWithBehaviors`): each policy counts from the replicas at the
/// start of its period, i.e. `current` minus what the scale events `(age, change)` of the
/// period added (scale up) or plus what they removed (scale down).
pub fn limit(current: i64, rules: &Rules, up: bool, events: &[(Duration, i64)]) -> Option<i64> {
    if rules.select == "Disabled" {
        return Some(current);
    }
    let limits: Vec<i64> = rules
        .policies
        .iter()
        .map(|(t, v, period)| {
            let recent = events.iter().filter(|(age, _)| age.as_secs() < (*period).max(0) as u64);
            let start = if up {
                current - recent.filter(|(_, d)| *d > 0).map(|(_, d)| d).sum::<i64>()
            } else {
                current + recent.filter(|(_, d)| *d < 0).map(|(_, d)| -d).sum::<i64>()
            };
            match (t.as_str(), up) {
                ("Pods", true) => start + v,
                ("Pods", false) => start - v,
                (_, true) => (start as f64 * (1.0 + *v as f64 / 100.0)).ceil() as i64,
                (_, false) => (start as f64 * (1.0 - *v as f64 / 100.0)) as i64,
            }
        })
        .collect();
    let pick_max = (rules.select == "Max") == up;
    if pick_max {
        limits.into_iter().max()
    } else {
        limits.into_iter().min()
    }
}

struct Hpa {
    client: ApiClient,
    recorder: Recorder,
    hpas: Arc<Informer>,
    pods: Arc<Informer>,
    /// Earlier recommendations per autoscaler key.
    history: Mutex<HashMap<String, Vec<(Instant, i64)>>>,
    /// Earlier rescales `(when, change)` per autoscaler key (for the rate policies).
    rescales: Mutex<HashMap<String, Vec<(Instant, i64)>>>,
}

fn condition(kind: &str, status: bool, reason: &str, message: &str, old: &Value, now: &str) -> Value {
    let status = if status { "True" } else { "False" };
    let since = old["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind && c["status"] == status))
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now)
        .to_string();
    json!({"type": kind, "status": status, "lastTransitionTime": since, "reason": reason, "message": message})
}

/// The summed requests of `resource` of a pod's containers, in milli-units; `Err` names the
/// container without one.
fn requests(p: &Value, resource: &str) -> Result<i64, String> {
    let mut sum = 0;
    for c in p["spec"]["containers"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        match c["resources"]["requests"][resource].as_str().and_then(quantity::parse_milli) {
            Some(m) => sum += m,
            None => {
                return Err(format!(
                    "missing request for {resource} in container {} of Pod {}",
                    c["name"].as_str().unwrap_or(""),
                    meta::name(p).unwrap_or("")
                ))
            }
        }
    }
    Ok(sum)
}

fn usage_milli(m: &Value, resource: &str) -> i64 {
    m["containers"]
        .as_array()
        .map(|cs| {
            cs.iter().filter_map(|c| c["usage"][resource].as_str().and_then(quantity::parse_milli)).sum()
        })
        .unwrap_or(0)
}

fn milli_quantity(m: i64) -> String {
    if m % 1000 == 0 {
        (m / 1000).to_string()
    } else {
        format!("{m}m")
    }
}

impl Hpa {
    /// Evaluates one Resource metric: the replicas it asks for and its status entry.
    async fn resource_metric(
        &self,
        ns: &str,
        selector: &str,
        current: i64,
        metric: &Value,
    ) -> Result<(i64, Value), String> {
        let src = &metric["resource"];
        let resource = src["name"].as_str().unwrap_or("cpu");
        let sel =
            LabelSelector::parse(selector).map_err(|e| format!("invalid selector {selector:?}: {e}"))?;
        let pods: Vec<Arc<Value>> = self
            .pods
            .list_ns(ns)
            .into_iter()
            .filter(|p| sel.matches(&meta::labels(p)))
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Failed" | "Succeeded")))
            .collect();
        if pods.is_empty() {
            return Err(format!("failed to get {resource} utilization: no pods found for the selector"));
        }
        let metrics = self
            .client
            .list_page(POD_METRICS, Some(ns), Some(selector), 0, None)
            .await
            .map_err(|e| format!("failed to get {resource} utilization: unable to get metrics for resource {resource}: unable to fetch metrics from resource metrics API: {e}"))?;
        let by_name: HashMap<&str, &Value> =
            metrics.items.iter().map(|m| (meta::name(m).unwrap_or(""), m)).collect();
        let target = &src["target"];
        let utilization = target["averageUtilization"].as_i64();
        let mut samples = Vec::new();
        let now = jiff::Timestamp::now();
        for p in &pods {
            let request = if utilization.is_some() {
                requests(p, resource).map_err(|e| format!("failed to get {resource} utilization: {e}"))?
            } else {
                0
            };
            let metric = by_name.get(meta::name(p).unwrap_or("")).copied();
            let usage = metric.map(|m| usage_milli(m, resource));
            let ready = counts(p, metric, resource, now);
            samples.push(PodSample { usage_milli: usage, request_milli: request, ready });
        }
        let avg_target = target["averageValue"].as_str().and_then(quantity::parse_milli).unwrap_or(0);
        let r = desired_replicas(current, &samples, utilization, avg_target)
            .map_err(|e| format!("failed to get {resource} utilization: {e}"))?;
        let mut cur = json!({"averageValue": milli_quantity(r.average_milli)});
        if let Some(u) = r.utilization {
            cur["averageUtilization"] = json!(u);
        }
        Ok((r.replicas, json!({"type": "Resource", "resource": {"name": resource, "current": cur}})))
    }

    async fn sync(&self, key: &str, hpa: &Value) -> Result<Action, ReconcileError> {
        let (ns, _) = split_key(key);
        let ns = ns.unwrap_or("");
        let now_t = jiff::Timestamp::now();
        let now = jiff::Timestamp::from_second(now_t.as_second()).unwrap_or(now_t).to_string();
        let old = &hpa["status"];
        let spec = &hpa["spec"];
        let target = &spec["scaleTargetRef"];
        let (group, _) = registry::split_api_version(target["apiVersion"].as_str().unwrap_or(""));
        let kind = target["kind"].as_str().unwrap_or("");
        let tname = target["name"].as_str().unwrap_or("");
        let min = spec["minReplicas"].as_i64().unwrap_or(1);
        let max = spec["maxReplicas"].as_i64().unwrap_or(1);
        let mut status = json!({
            "observedGeneration": hpa["metadata"]["generation"].as_i64().unwrap_or(1),
            "currentReplicas": old["currentReplicas"].as_i64().unwrap_or(0),
            "desiredReplicas": old["desiredReplicas"].as_i64().unwrap_or(0),
        });
        if let Some(t) = old.get("lastScaleTime").filter(|t| !t.is_null()) {
            status["lastScaleTime"] = t.clone();
        }
        let scale_res = registry::find_kind(group, kind).filter(|r| r.subresource("scale").is_some());
        let scale = match scale_res {
            Some(r) => {
                let g = Gvr::new(r.group, r.version, r.plural);
                self.client
                    .call(ApiClient::subresource_request("get", g, Some(ns), tname, "scale"))
                    .await
                    .map(|s| (g, s))
            }
            None => Err(crate::client::ClientError::Api {
                code: 404,
                reason: "NotFound".into(),
                message: format!("no matches for kind {kind:?} in group {group:?}"),
            }),
        };
        let (g, scale) = match scale {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("the HPA controller was unable to get the target's current scale: {e}");
                self.recorder.event(hpa, "Warning", "FailedGetScale", &e.to_string()).await;
                status["conditions"] =
                    json!([condition("AbleToScale", false, "FailedGetScale", &msg, old, &now)]);
                self.write_status(ns, hpa, status).await?;
                return Ok(Action::RequeueAfter(SYNC_PERIOD));
            }
        };
        let current = scale["spec"]["replicas"].as_i64().unwrap_or(0);
        let selector = scale["status"]["selector"].as_str().unwrap_or("").to_string();
        status["currentReplicas"] = json!(scale["status"]["replicas"].as_i64().unwrap_or(0));
        let mut conditions = Vec::new();
        let mut metrics_status = Vec::new();
        let (desired_raw, reason, active) = if current == 0 && min != 0 {
            conditions.push(condition(
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
                old,
                &now,
            ));
            (0, String::new(), false)
        } else if current > max {
            (max, "Current number of replicas above Spec.MaxReplicas".to_string(), true)
        } else if current < min {
            (min, "Current number of replicas below Spec.MinReplicas".to_string(), true)
        } else {
            let mut best: Option<(i64, String)> = None;
            let mut failure = None;
            for m in spec["metrics"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                if m["type"] != "Resource" {
                    failure = Some(format!(
                        "the HPA was unable to compute the replica count: metric type {:?} is not supported",
                        m["type"].as_str().unwrap_or("")
                    ));
                    continue;
                }
                match self.resource_metric(ns, &selector, current, m).await {
                    Ok((r, st)) => {
                        let name = m["resource"]["name"].as_str().unwrap_or("cpu");
                        let what = if m["resource"]["target"]["averageUtilization"].is_i64() {
                            format!("{name} resource utilization (percentage of request)")
                        } else {
                            format!("{name} resource")
                        };
                        metrics_status.push(st);
                        if best.as_ref().is_none_or(|(b, _)| r > *b) {
                            best = Some((r, what));
                        }
                    }
                    Err(e) => {
                        metrics_status.push(json!({"type": "Resource", "resource": {"name": m["resource"]["name"], "current": {}}}));
                        failure = Some(format!("the HPA was unable to compute the replica count: {e}"));
                    }
                }
            }
            match (best, failure) {
                (Some((r, what)), _) => {
                    conditions.push(condition(
                        "ScalingActive",
                        true,
                        "ValidMetricFound",
                        &format!("the HPA was able to successfully calculate a replica count from {what}"),
                        old,
                        &now,
                    ));
                    let reason = if r > current {
                        format!("{what} above target")
                    } else {
                        "All metrics below target".to_string()
                    };
                    (r, reason, true)
                }
                (None, Some(msg)) => {
                    self.recorder.event(hpa, "Warning", "FailedGetResourceMetric", &msg).await;
                    conditions.push(condition(
                        "ScalingActive",
                        false,
                        "FailedGetResourceMetric",
                        &msg,
                        old,
                        &now,
                    ));
                    (current, String::new(), false)
                }
                (None, None) => (current, String::new(), false),
            }
        };
        if !metrics_status.is_empty() {
            status["currentMetrics"] = Value::Array(metrics_status);
        }
        let mut desired = if active {
            let up = rules(hpa, "scaleUp");
            let down = rules(hpa, "scaleDown");
            let keep = up.window.max(down.window);
            let stabilized = {
                let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
                let list = h.entry(key.to_string()).or_default();
                list.retain(|(at, _)| at.elapsed() <= keep);
                let ages: Vec<(Duration, i64)> = list.iter().map(|(at, r)| (at.elapsed(), *r)).collect();
                list.push((Instant::now(), desired_raw));
                stabilize(current, desired_raw, &ages, &up, &down)
            };
            let events: Vec<(Duration, i64)> = {
                let mut all = self.rescales.lock().unwrap_or_else(|e| e.into_inner());
                let list = all.entry(key.to_string()).or_default();
                list.retain(|(at, _)| at.elapsed() < Duration::from_secs(1800));
                list.iter().map(|(at, d)| (at.elapsed(), *d)).collect()
            };
            let (mut d, mut limited) = (stabilized, None);
            if d > current {
                if let Some(l) = limit(current, &up, true, &events).filter(|l| d > *l) {
                    d = l;
                    limited = Some((
                        "ScaleUpLimit",
                        "the desired replica count is increasing faster than the maximum scale rate",
                    ));
                }
            } else if d < current {
                if let Some(l) = limit(current, &down, false, &events).filter(|l| d < *l) {
                    d = l;
                    limited = Some((
                        "ScaleDownLimit",
                        "the desired replica count is decreasing faster than the maximum scale rate",
                    ));
                }
            }
            if d > max {
                d = max;
                limited = Some((
                    "TooManyReplicas",
                    "the desired replica count is more than the maximum replica count",
                ));
            } else if d < min {
                d = min;
                limited = Some((
                    "TooFewReplicas",
                    "the desired replica count is less than the minimum replica count",
                ));
            }
            conditions.push(match limited {
                Some((reason, msg)) => condition("ScalingLimited", true, reason, msg, old, &now),
                None => condition(
                    "ScalingLimited",
                    false,
                    "DesiredWithinRange",
                    "the desired count is within the acceptable range",
                    old,
                    &now,
                ),
            });
            d
        } else {
            current
        };
        let able = if active && desired != current {
            let patch = json!({"spec": {"replicas": desired}});
            match self
                .client
                .patch(g, Some(ns), tname, "application/merge-patch+json", patch, Some("scale"))
                .await
            {
                Ok(_) => {
                    self.rescales
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(key.to_string())
                        .or_default()
                        .push((Instant::now(), desired - current));
                    let msg = format!("New size: {desired}; reason: {reason}");
                    self.recorder.event(hpa, "Normal", "SuccessfulRescale", &msg).await;
                    status["lastScaleTime"] = json!(now);
                    condition(
                        "AbleToScale",
                        true,
                        "SucceededRescale",
                        &format!("the HPA controller was able to update the target scale to {desired}"),
                        old,
                        &now,
                    )
                }
                Err(e) => {
                    let msg = format!("New size: {desired}; reason: {reason}; error: {e}");
                    self.recorder.event(hpa, "Warning", "FailedRescale", &msg).await;
                    desired = current;
                    condition(
                        "AbleToScale",
                        false,
                        "FailedUpdateScale",
                        &format!("the HPA controller was unable to update the target scale: {e}"),
                        old,
                        &now,
                    )
                }
            }
        } else {
            condition(
                "AbleToScale",
                true,
                "ReadyForNewScale",
                "recommended size matches current size",
                old,
                &now,
            )
        };
        conditions.insert(0, able);
        status["desiredReplicas"] = json!(desired);
        status["conditions"] = Value::Array(conditions);
        self.write_status(ns, hpa, status).await?;
        Ok(Action::RequeueAfter(SYNC_PERIOD))
    }

    async fn write_status(&self, ns: &str, hpa: &Value, status: Value) -> Result<(), ReconcileError> {
        if hpa["status"] == status {
            return Ok(());
        }
        let mut new = hpa.clone();
        new["status"] = status;
        match self.client.update_status(HPAS, Some(ns), new).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Reconciler for Hpa {
    fn name(&self) -> &'static str {
        "horizontalpodautoscaler"
    }

    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            self.hpas.wait_synced().await;
            self.pods.wait_synced().await;
            let Some(hpa) = self.hpas.get(&key) else {
                self.history.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                self.rescales.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                return Ok(Action::Done);
            };
            if !hpa["metadata"]["deletionTimestamp"].is_null() {
                return Ok(Action::Done);
            }
            self.sync(&key, &hpa).await
        })
    }
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let hpas = ctx.informers.get(HPAS);
    let r = Arc::new(Hpa {
        client: ctx.client.clone(),
        recorder: ctx.recorder.clone(),
        hpas: hpas.clone(),
        pods: ctx.informers.get(gvr::PODS),
        history: Mutex::new(HashMap::new()),
        rescales: Mutex::new(HashMap::new()),
    });
    let addr = Controller::new(r, 4).start();
    let ctx = ctx.clone();
    hpas.on_change(Arc::new(move |c: &Change| {
        if let Change::Applied { old, new } = c {
            // Status writes of its own do not trigger another evaluation before the period.
            if old.as_ref().is_some_and(|o| o["spec"] == new["spec"]) {
                return;
            }
            let k = key_of(new);
            if ctx.owns(&k) {
                addr.do_send(Enqueue(k));
            }
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(usage: Option<i64>, request: i64) -> PodSample {
        PodSample { usage_milli: usage, request_milli: request, ready: true }
    }

    #[test]
    fn cpu_samples_count_as_upstream_groups_pods() {
        let now: jiff::Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        let pod = |phase: &str, start: &str, ready: &str, since: &str| {
            json!({"status": {"phase": phase, "startTime": start,
                "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": since}]}})
        };
        let m = |at: &str| json!({"timestamp": at, "window": "30s"});
        let sample = m("2026-12-03T11:59:50Z");
        // Pending: never; without metrics: counts (as missing); memory: whatever readiness.
        assert!(!counts(
            &pod("Pending", "2026-12-03T10:00:00Z", "False", "2026-12-03T10:00:00Z"),
            Some(&sample),
            "cpu",
            now
        ));
        assert!(counts(
            &pod("Running", "2026-12-03T11:59:00Z", "False", "2026-12-03T11:59:00Z"),
            None,
            "cpu",
            now
        ));
        assert!(counts(
            &pod("Running", "2026-12-03T11:59:00Z", "False", "2026-12-03T11:59:00Z"),
            Some(&sample),
            "memory",
            now
        ));
        // In the initialization period: Ready and sampled a window after it became Ready.
        let young = pod("Running", "2026-12-03T11:58:00Z", "True", "2026-12-03T11:59:10Z");
        assert!(counts(&young, Some(&m("2026-12-03T11:59:45Z")), "cpu", now));
        assert!(
            !counts(&young, Some(&m("2026-12-03T11:59:30Z")), "cpu", now),
            "sampled before the window passed"
        );
        assert!(!counts(
            &pod("Running", "2026-12-03T11:58:00Z", "False", "2026-12-03T11:59:10Z"),
            Some(&sample),
            "cpu",
            now
        ));
        // After it: not Ready counts, unless it has never been Ready.
        assert!(counts(
            &pod("Running", "2026-12-03T11:00:00Z", "False", "2026-12-03T11:30:00Z"),
            Some(&sample),
            "cpu",
            now
        ));
        assert!(!counts(
            &pod("Running", "2026-12-03T11:00:00Z", "False", "2026-12-03T11:00:10Z"),
            Some(&sample),
            "cpu",
            now
        ));
        assert!(counts(
            &pod("Running", "2026-12-03T11:00:00Z", "True", "2026-12-03T11:00:10Z"),
            Some(&sample),
            "cpu",
            now
        ));
        assert_eq!(window_millis("1m0s"), Some(60_000));
        assert_eq!(window_millis("15.5s"), Some(15_500));
        // An unready pod is left out, and taken at 0 when scaling up: 2 ready pods at 100 %
        // of a 50 % target would ask 4; with a third at 0 it is ceil(200/300/0.5 * 3) = 4.
        let mut pods = vec![PodSample { usage_milli: Some(100), request_milli: 100, ready: true }; 2];
        pods.push(PodSample { usage_milli: Some(900), request_milli: 100, ready: false });
        assert_eq!(desired_replicas(3, &pods, Some(50), 0).unwrap().replicas, 4);
        pods[0].ready = false;
        pods[1].ready = false;
        assert!(desired_replicas(3, &pods, Some(50), 0).unwrap_err().contains("any ready pods"));
    }

    #[test]
    fn replicas_follow_utilization_with_tolerance() {
        // One pod at 200 % of a 50 % target: 4 replicas.
        let r = desired_replicas(1, &[pod(Some(200), 100)], Some(50), 0).unwrap();
        assert_eq!((r.replicas, r.utilization), (4, Some(200)));
        // 80 % against 50 % on 3 pods: ceil(3 * 1.6) = 5.
        let pods = vec![pod(Some(80), 100); 3];
        assert_eq!(desired_replicas(3, &pods, Some(50), 0).unwrap().replicas, 5);
        // Within the tolerance (54 % vs 50 %): unchanged.
        assert_eq!(desired_replicas(3, &vec![pod(Some(54), 100); 3], Some(50), 0).unwrap().replicas, 3);
        // Idle: scale down to ceil(3 * 0.02) = 1.
        assert_eq!(desired_replicas(3, &vec![pod(Some(1), 100); 3], Some(50), 0).unwrap().replicas, 1);
        // A pod without metrics counts at 100 % when scaling down: ceil((10+100)/200/0.5 * 2) = 3
        // would move up, so it stays.
        let mixed = vec![pod(Some(10), 100), pod(None, 100)];
        assert_eq!(desired_replicas(2, &mixed, Some(50), 0).unwrap().replicas, 2);
        // Average value targets: 300m per pod against 100m: 3 pods.
        assert_eq!(desired_replicas(1, &[pod(Some(300), 0)], None, 100).unwrap().replicas, 3);
        assert!(desired_replicas(1, &[pod(None, 100)], Some(50), 0).is_err());
    }

    #[test]
    fn stabilization_and_limits() {
        let up = Rules {
            window: Duration::ZERO,
            select: "Max".into(),
            policies: vec![("Pods".into(), 4, 15), ("Percent".into(), 100, 15)],
        };
        let down = Rules {
            window: Duration::from_secs(300),
            select: "Max".into(),
            policies: vec![("Percent".into(), 100, 15)],
        };
        // A recommendation of 3 a minute ago keeps a scale-down to 1 at 3.
        assert_eq!(stabilize(3, 1, &[(Duration::from_secs(60), 3)], &up, &down), 3);
        // Once it is older than the window, down to 1.
        assert_eq!(stabilize(3, 1, &[(Duration::from_secs(301), 3)], &up, &down), 1);
        // Scale-up is immediate.
        assert_eq!(stabilize(1, 3, &[(Duration::from_secs(5), 1)], &up, &down), 3);
        assert_eq!(limit(1, &up, true, &[]), Some(5));
        assert_eq!(limit(10, &up, true, &[]), Some(20));
        assert_eq!(limit(4, &down, false, &[]), Some(0));
        // 6 added 10 s ago (from 4 to 10): this period counts from 4, so at most 8 (4 + 4)
        // or 8 (4 × 2).
        let recent = [(Duration::from_secs(10), 6)];
        assert_eq!(limit(10, &up, true, &recent), Some(8));
        // Once the period is over, from 10 again.
        assert_eq!(limit(10, &up, true, &[(Duration::from_secs(20), 6)]), Some(20));
        // Scale down by at most 1 pod per 60 s: 1 removed 30 s ago leaves none this period.
        let slow =
            Rules { window: Duration::ZERO, select: "Max".into(), policies: vec![("Pods".into(), 1, 60)] };
        assert_eq!(limit(4, &slow, false, &[(Duration::from_secs(30), -1)]), Some(4));
    }

    #[test]
    fn rules_default_as_upstream() {
        let r = rules(&json!({"spec": {}}), "scaleDown");
        assert_eq!(r.window, Duration::from_secs(300));
        let r = rules(
            &json!({"spec": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}}}}),
            "scaleDown",
        );
        assert_eq!(r.window, Duration::from_secs(5));
    }
}
