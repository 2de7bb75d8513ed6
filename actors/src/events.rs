//! Core Events (`kubectl describe` shows them): a small recorder writing through the API,
//! with upstream's event correlation in front of it so a storm of events costs a handful
//! of writes.
//!
//! As client-go's `EventCorrelator`, per recorder:
//! - **spam filter**: a token bucket per involved object and source (burst 25, one more
//!   every 5 minutes); events beyond it are dropped;
//! - **deduplication**: an event equal to one recorded in the last 10 minutes (same
//!   object, type, reason and message) increments the stored Event's `count` and
//!   `lastTimestamp` with a merge patch instead of creating another object.
//!
//! And one capstan addition, for storms across objects (upstream writes one Event per pod
//! when 10,000 pods fail to schedule): `Warning` events of one reason share a token bucket
//! (burst 25, one more every 2 s). Normal events are never limited across objects.
//! Warnings beyond it are dropped and counted in `capstan_events_dropped_total`; the
//! objects still carry the information in their status (e.g. a pending pod's
//! `PodScheduled=False` condition with the scheduler's message).

use crate::client::{gvr, ApiClient};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Events one object may get at once from one source (upstream's `defaultSpamBurst`).
const OBJECT_BURST: f64 = 25.0;
/// One more per this long (upstream's `defaultSpamQPS`, 1/300).
const OBJECT_REFILL: Duration = Duration::from_secs(300);
/// Warnings of one reason that may be written at once across all objects.
const STORM_BURST: f64 = 25.0;
/// One more per this long.
const STORM_REFILL: Duration = Duration::from_secs(2);
/// How long an identical event is folded into the stored one (upstream: 10 minutes).
const DEDUP_WINDOW: Duration = Duration::from_secs(600);
/// Keys remembered; beyond this the oldest half is forgotten.
const MAX_KEYS: usize = 8192;

static DROPPED: LazyLock<capstan_metrics::IntCounterVec> = LazyLock::new(|| {
    capstan_metrics::counters(
        "capstan_events_dropped_total",
        "Events not written by the event correlator (spam filter per object, storm limit per Warning reason).",
        &["component", "reason", "limit"],
    )
});

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket { tokens: burst, at: now }
    }

    /// Takes a token if one is there, refilling first.
    fn take(&mut self, burst: f64, refill: Duration, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed / refill.as_secs_f64()).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone)]
struct Seen {
    name: String,
    count: u64,
    first: String,
    at: Instant,
}

/// What to do with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Write a new Event.
    Create,
    /// Fold it into the stored Event `name`, which then has `count` and `first` as its
    /// first timestamp.
    Patch { name: String, count: u64 },
    /// Drop it: `limit` says which limit it hit.
    Drop { limit: &'static str },
}

/// The correlation state of one recorder (shared by its clones).
#[derive(Default)]
struct Correlator {
    objects: HashMap<String, Bucket>,
    storms: HashMap<String, Bucket>,
    seen: HashMap<String, Seen>,
}

impl Correlator {
    fn decide(&mut self, object: &str, type_: &str, reason: &str, message: &str, now: Instant) -> Action {
        if self.objects.len() > MAX_KEYS {
            forget_oldest(&mut self.objects, |b| b.at);
        }
        if self.seen.len() > MAX_KEYS {
            forget_oldest(&mut self.seen, |s| s.at);
        }
        let bucket = self.objects.entry(object.to_string()).or_insert(Bucket::full(OBJECT_BURST, now));
        if !bucket.take(OBJECT_BURST, OBJECT_REFILL, now) {
            return Action::Drop { limit: "object" };
        }
        let key = format!("{object}\u{0}{type_}\u{0}{reason}\u{0}{message}");
        if let Some(s) = self.seen.get_mut(&key) {
            if now.saturating_duration_since(s.at) < DEDUP_WINDOW {
                s.count += 1;
                s.at = now;
                return Action::Patch { name: s.name.clone(), count: s.count };
            }
            self.seen.remove(&key);
        }
        if type_ == "Warning" {
            let storm = self.storms.entry(reason.to_string()).or_insert(Bucket::full(STORM_BURST, now));
            if !storm.take(STORM_BURST, STORM_REFILL, now) {
                return Action::Drop { limit: "storm" };
            }
        }
        Action::Create
    }

    /// Remembers the Event created for a key.
    fn created(
        &mut self,
        object: &str,
        type_: &str,
        reason: &str,
        message: &str,
        name: String,
        first: String,
    ) {
        let key = format!("{object}\u{0}{type_}\u{0}{reason}\u{0}{message}");
        self.seen.insert(key, Seen { name, count: 1, first, at: Instant::now() });
    }

    /// Forgets a key whose stored Event is gone (the next one is created anew).
    fn forget(&mut self, object: &str, type_: &str, reason: &str, message: &str) {
        let key = format!("{object}\u{0}{type_}\u{0}{reason}\u{0}{message}");
        self.seen.remove(&key);
    }

    fn first_timestamp(&self, object: &str, type_: &str, reason: &str, message: &str) -> Option<String> {
        let key = format!("{object}\u{0}{type_}\u{0}{reason}\u{0}{message}");
        self.seen.get(&key).map(|s| s.first.clone())
    }
}

/// Drops the older half of `map` by the time `at` gives.
fn forget_oldest<V>(map: &mut HashMap<String, V>, at: impl Fn(&V) -> Instant) {
    let mut times: Vec<Instant> = map.values().map(&at).collect();
    times.sort();
    let cut = times[times.len() / 2];
    map.retain(|_, v| at(v) > cut);
}

/// Writes core/v1 Events about objects.
#[derive(Clone)]
pub struct Recorder {
    client: ApiClient,
    component: String,
    correlator: Arc<Mutex<Correlator>>,
}

impl Recorder {
    /// A recorder reporting as `component` (e.g. `default-scheduler`).
    pub fn new(client: ApiClient, component: &str) -> Recorder {
        Recorder { client, component: component.to_string(), correlator: Arc::default() }
    }

    /// Records an event of `type_` (`Normal` or `Warning`) about `obj`. Failures are
    /// logged, never returned: events are best effort.
    pub async fn event(&self, obj: &Value, type_: &str, reason: &str, message: &str) {
        let md = obj.get("metadata");
        let s = |k: &str| md.and_then(|m| m.get(k)).and_then(Value::as_str).unwrap_or("").to_string();
        let (name, ns, uid, rv) = (s("name"), s("namespace"), s("uid"), s("resourceVersion"));
        let ns = if ns.is_empty() { "default".to_string() } else { ns };
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let object = format!("{kind}/{ns}/{name}/{uid}");
        let now = jiff::Timestamp::now();
        let secs = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string();
        let action = self.lock().decide(&object, type_, reason, message, Instant::now());
        match action {
            Action::Drop { limit } => {
                DROPPED.with_label_values(&[&self.component, reason, limit]).inc();
                tracing::debug!(reason, limit, object = %object, "event dropped by the correlator");
                return;
            }
            Action::Patch { name: event, count } => {
                let first = self.lock().first_timestamp(&object, type_, reason, message);
                let mut patch = json!({"count": count, "lastTimestamp": secs});
                if let Some(f) = first {
                    patch["firstTimestamp"] = json!(f);
                }
                match self.client.merge_patch(gvr::EVENTS, Some(&ns), &event, patch).await {
                    Ok(_) => return,
                    Err(e) => {
                        // Gone (expired, deleted): record it anew below.
                        tracing::debug!(reason, "failed to update event {event}: {e}");
                        self.lock().forget(&object, type_, reason, message);
                    }
                }
            }
            Action::Create => {}
        }
        let event_name = format!("{name}.{:x}", now.as_nanosecond() as u64);
        let ev = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event_name, "namespace": ns},
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
            "eventTime": now.to_string(),
            "action": reason,
            "count": 1,
        });
        match self.client.create(gvr::EVENTS, Some(&ns), ev).await {
            Ok(_) => self.lock().created(&object, type_, reason, message, event_name, secs),
            Err(e) => tracing::debug!(reason, "failed to record event: {e}"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Correlator> {
        self.correlator.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_events_fold_into_one_with_a_count() {
        let mut c = Correlator::default();
        let t = Instant::now();
        assert_eq!(c.decide("Pod/ns/a/u", "Normal", "Pulled", "pulled", t), Action::Create);
        c.created("Pod/ns/a/u", "Normal", "Pulled", "pulled", "a.1".into(), "T".into());
        assert_eq!(
            c.decide("Pod/ns/a/u", "Normal", "Pulled", "pulled", t),
            Action::Patch { name: "a.1".into(), count: 2 }
        );
        assert_eq!(
            c.decide("Pod/ns/a/u", "Normal", "Pulled", "pulled", t),
            Action::Patch { name: "a.1".into(), count: 3 }
        );
        // Another message is another Event.
        assert_eq!(c.decide("Pod/ns/a/u", "Normal", "Pulled", "other", t), Action::Create);
        // After the window, a new Event.
        let later = t + DEDUP_WINDOW + Duration::from_secs(1);
        assert_eq!(c.decide("Pod/ns/a/u", "Normal", "Pulled", "pulled", later), Action::Create);
    }

    #[test]
    fn one_object_gets_a_burst_then_one_per_refill() {
        let mut c = Correlator::default();
        let t = Instant::now();
        for i in 0..25 {
            assert_ne!(
                c.decide("Pod/ns/a/u", "Normal", "R", &format!("m{i}"), t),
                Action::Drop { limit: "object" }
            );
        }
        assert_eq!(c.decide("Pod/ns/a/u", "Normal", "R", "m25", t), Action::Drop { limit: "object" });
        // Another object is not limited by this one.
        assert_eq!(c.decide("Pod/ns/b/u", "Normal", "R", "m", t), Action::Create);
        assert_eq!(c.decide("Pod/ns/a/u", "Normal", "R", "m26", t + OBJECT_REFILL), Action::Create);
    }

    #[test]
    fn a_warning_storm_across_objects_writes_a_handful() {
        let mut c = Correlator::default();
        let t = Instant::now();
        let mut created = 0;
        // 10,000 pods failing to schedule within 10 seconds.
        for i in 0..10_000u64 {
            let at = t + Duration::from_millis(i);
            if c.decide(&format!("Pod/ns/p{i}/u{i}"), "Warning", "FailedScheduling", "0/0 nodes", at)
                == Action::Create
            {
                created += 1;
            }
        }
        assert!((25..=31).contains(&created), "{created} events created");
        // Normal events are not limited across objects.
        for i in 0..1000 {
            assert_eq!(c.decide(&format!("Pod/ns/n{i}/u"), "Normal", "Scheduled", "ok", t), Action::Create);
        }
    }
}
