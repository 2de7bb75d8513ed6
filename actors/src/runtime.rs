//! The controller runtime: a [`Controller`] actor turns change notifications into keyed
//! reconcile requests, de-duplicated, one in flight per key, with capped concurrency,
//! back-off on error and requeue after a delay (as kube-runtime does).
//!
//! Reconcilers are level-triggered: they read the informer caches, compare desired with
//! observed state, act through the API (every write guarded by resourceVersion), and
//! return an [`Action`].

use crate::informer::Key;
use actix::prelude::*;
use futures::future::BoxFuture;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// Upstream's workqueue metrics (client-go `workqueue`), labelled by controller name.
struct QueueMetrics {
    adds: capstan_metrics::IntCounterVec,
    depth: capstan_metrics::IntGaugeVec,
    retries: capstan_metrics::IntCounterVec,
    work: capstan_metrics::HistogramVec,
    queued: capstan_metrics::HistogramVec,
}

static QUEUE: LazyLock<QueueMetrics> = LazyLock::new(|| QueueMetrics {
    adds: capstan_metrics::counters(
        "workqueue_adds_total",
        "Total number of adds handled by workqueue",
        &["name"],
    ),
    depth: capstan_metrics::gauges("workqueue_depth", "Current depth of workqueue", &["name"]),
    retries: capstan_metrics::counters(
        "workqueue_retries_total",
        "Total number of retries handled by workqueue",
        &["name"],
    ),
    work: capstan_metrics::histograms(
        "workqueue_work_duration_seconds",
        "How long in seconds processing an item from workqueue takes.",
        &["name"],
        capstan_metrics::WORK_BUCKETS,
    ),
    queued: capstan_metrics::histograms(
        "workqueue_queue_duration_seconds",
        "How long in seconds an item stays in workqueue before being requested.",
        &["name"],
        capstan_metrics::WORK_BUCKETS,
    ),
});

/// What to do after a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next change.
    Done,
    /// Reconcile this key again after the delay.
    RequeueAfter(Duration),
}

/// A failed reconcile (retried with back-off).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ReconcileError(pub String);

impl From<crate::client::ClientError> for ReconcileError {
    fn from(e: crate::client::ClientError) -> ReconcileError {
        ReconcileError(e.to_string())
    }
}

/// The reconcile logic of one controller.
pub trait Reconciler: Send + Sync + 'static {
    /// The controller's name, for logs.
    fn name(&self) -> &'static str;
    /// Brings the object named by `key` to its desired state.
    fn reconcile(self: Arc<Self>, key: Key) -> BoxFuture<'static, Result<Action, ReconcileError>>;
}

/// Which keys this member of a controller pool owns.
pub type Partition = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Asks the controller to reconcile a key.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Enqueue(pub Key);

/// Asks the controller to reconcile every key again (after a partition change).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct EnqueueAll(pub Vec<Key>);

#[derive(Message)]
#[rtype(result = "()")]
struct Finished {
    key: Key,
    result: Result<Action, ReconcileError>,
    took: Duration,
}

/// Asks how many keys are queued or in flight (for tests and metrics).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Pending;

/// The controller actor.
pub struct Controller<R: Reconciler> {
    reconciler: Arc<R>,
    queue: VecDeque<(Key, Instant)>,
    queued: HashSet<Key>,
    in_flight: HashSet<Key>,
    dirty: HashSet<Key>,
    failures: HashMap<Key, u32>,
    max_concurrent: usize,
    partition: Option<Partition>,
}

impl<R: Reconciler> Controller<R> {
    /// A controller running at most `max_concurrent` reconciles at once.
    pub fn new(reconciler: Arc<R>, max_concurrent: usize) -> Controller<R> {
        Controller {
            reconciler,
            queue: VecDeque::new(),
            queued: HashSet::new(),
            in_flight: HashSet::new(),
            dirty: HashSet::new(),
            failures: HashMap::new(),
            max_concurrent: max_concurrent.max(1),
            partition: None,
        }
    }

    /// Only reconcile keys this member owns.
    pub fn with_partition(mut self, p: Partition) -> Controller<R> {
        self.partition = Some(p);
        self
    }

    fn enqueue(&mut self, key: Key) {
        if let Some(p) = &self.partition {
            if !p(&key) {
                return;
            }
        }
        let name = self.reconciler.name();
        QUEUE.adds.with_label_values(&[name]).inc();
        if self.in_flight.contains(&key) {
            self.dirty.insert(key);
        } else if self.queued.insert(key.clone()) {
            self.queue.push_back((key, Instant::now()));
            QUEUE.depth.with_label_values(&[name]).set(self.queue.len() as i64);
        }
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        while self.in_flight.len() < self.max_concurrent {
            let Some((key, since)) = self.queue.pop_front() else { break };
            let name = self.reconciler.name();
            QUEUE.queued.with_label_values(&[name]).observe(since.elapsed().as_secs_f64());
            QUEUE.depth.with_label_values(&[name]).set(self.queue.len() as i64);
            self.queued.remove(&key);
            self.in_flight.insert(key.clone());
            let fut = self.reconciler.clone().reconcile(key.clone());
            let addr = ctx.address();
            actix::spawn(async move {
                let started = Instant::now();
                let result = fut.await;
                addr.do_send(Finished { key, result, took: started.elapsed() });
            });
        }
    }
}

impl<R: Reconciler> Actor for Controller<R> {
    type Context = Context<Self>;
}

impl<R: Reconciler> Handler<Enqueue> for Controller<R> {
    type Result = ();
    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) {
        self.enqueue(msg.0);
        self.pump(ctx);
    }
}

impl<R: Reconciler> Handler<EnqueueAll> for Controller<R> {
    type Result = ();
    fn handle(&mut self, msg: EnqueueAll, ctx: &mut Context<Self>) {
        for k in msg.0 {
            self.enqueue(k);
        }
        self.pump(ctx);
    }
}

impl<R: Reconciler> Handler<Pending> for Controller<R> {
    type Result = usize;
    fn handle(&mut self, _: Pending, _: &mut Context<Self>) -> usize {
        self.queue.len() + self.in_flight.len()
    }
}

impl<R: Reconciler> Handler<Finished> for Controller<R> {
    type Result = ();
    fn handle(&mut self, msg: Finished, ctx: &mut Context<Self>) {
        let key = msg.key;
        QUEUE.work.with_label_values(&[self.reconciler.name()]).observe(msg.took.as_secs_f64());
        self.in_flight.remove(&key);
        match msg.result {
            Ok(Action::Done) => {
                self.failures.remove(&key);
            }
            Ok(Action::RequeueAfter(d)) => {
                self.failures.remove(&key);
                let k = key.clone();
                ctx.run_later(d, move |act, ctx| {
                    act.enqueue(k);
                    act.pump(ctx);
                });
            }
            Err(e) => {
                QUEUE.retries.with_label_values(&[self.reconciler.name()]).inc();
                let n = self.failures.entry(key.clone()).or_insert(0);
                *n = n.saturating_add(1);
                let delay = Duration::from_millis(5u64.saturating_mul(1u64 << (*n).min(13)))
                    .min(Duration::from_secs(30));
                tracing::debug!(controller = self.reconciler.name(), key = %key, "reconcile failed (retry in {delay:?}): {e}");
                let k = key.clone();
                ctx.run_later(delay, move |act, ctx| {
                    act.enqueue(k);
                    act.pump(ctx);
                });
            }
        }
        if self.dirty.remove(&key) {
            self.enqueue(key);
        }
        self.pump(ctx);
    }
}

/// The key of an object's controller owner (`namespace/name` of the ownerReference with
/// `controller: true` and the given kind), if any.
pub fn owner_key(obj: &serde_json::Value, kind: &str) -> Option<Key> {
    let md = obj.get("metadata")?;
    let ns = md.get("namespace").and_then(serde_json::Value::as_str);
    let refs = md.get("ownerReferences")?.as_array()?;
    refs.iter()
        .find(|r| {
            r.get("kind").and_then(serde_json::Value::as_str) == Some(kind)
                && r.get("controller").and_then(serde_json::Value::as_bool) == Some(true)
        })
        .and_then(|r| r.get("name").and_then(serde_json::Value::as_str))
        .map(|name| match ns {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        calls: AtomicUsize,
        fail_first: bool,
    }

    impl Reconciler for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn reconcile(self: Arc<Self>, _key: Key) -> BoxFuture<'static, Result<Action, ReconcileError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                if self.fail_first && n == 0 {
                    return Err(ReconcileError("first call fails".into()));
                }
                Ok(Action::Done)
            })
        }
    }

    #[actix_rt::test]
    async fn dedupes_and_retries() {
        let r = Arc::new(Counting { calls: AtomicUsize::new(0), fail_first: true });
        let addr = Controller::new(r.clone(), 2).start();
        for _ in 0..10 {
            addr.do_send(Enqueue("ns/a".into()));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let pending = addr.send(Pending).await.unwrap_or(1);
            if pending == 0 && r.calls.load(Ordering::SeqCst) >= 2 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "controller did not settle");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // 10 enqueues of one key collapse to a few reconciles: the failed one is retried once.
        let calls = r.calls.load(Ordering::SeqCst);
        assert!((2..=3).contains(&calls), "{calls} reconciles");
    }

    #[test]
    fn owner() {
        let pod = serde_json::json!({"metadata": {"namespace": "ns", "ownerReferences": [
            {"kind": "ReplicaSet", "name": "rs1", "controller": true, "uid": "u"}]}});
        assert_eq!(owner_key(&pod, "ReplicaSet"), Some("ns/rs1".into()));
        assert_eq!(owner_key(&pod, "Job"), None);
    }
}
