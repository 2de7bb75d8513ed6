//! The in-process backend: core pub/sub, queue groups, request/reply and an in-memory event
//! stream, all inside one process.
//!
//! Core messages go through one bounded queue per subscription; when it is full the message
//! is dropped for that subscriber and a warning is logged (at most once, like NATS).
//!
//! The event stream is one shared, bounded log (oldest events dropped first). Each consumer
//! reads it with its own cursor, so a slow consumer never blocks an appender and never
//! silently loses an event: if its cursor falls behind what the log retains, it gets a
//! [`StreamItem::Gap`] and continues from the oldest retained event.

use crate::{
    subjects, BoxFuture, Bus, Error, EventStream, Message, Result, StartAt, StreamItem, Subscription,
};
use bytes::Bytes;
use futures::Stream;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How many matching events an event consumer takes from the log per lock.
const EVENT_BATCH: usize = 256;
/// How many log entries an event consumer scans per lock.
const EVENT_SCAN: usize = 4096;

/// Settings of an [`InProcBus`].
#[derive(Debug, Clone)]
pub struct InProcConfig {
    /// How many events the event stream retains; the oldest are dropped first. A consumer
    /// asking for older history, or falling further behind, gets a [`StreamItem::Gap`].
    /// Default 1,000,000; at least 1.
    pub max_events: usize,
    /// The queue length of each core subscription. When it is full, further messages for
    /// that subscriber are dropped (and logged). Default 65,536.
    pub subscription_capacity: usize,
}

impl Default for InProcConfig {
    fn default() -> Self {
        InProcConfig { max_events: 1_000_000, subscription_capacity: 65_536 }
    }
}

/// The in-process bus. Cheap to clone: clones share one bus.
#[derive(Clone)]
pub struct InProcBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InProcBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcBus").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Default for InProcBus {
    fn default() -> Self {
        InProcBus::new()
    }
}

struct Inner {
    config: InProcConfig,
    core: Mutex<Core>,
    log: Mutex<Log>,
    /// The log's end position, bumped after every append.
    log_end: watch::Sender<u64>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct Core {
    /// Reply inboxes of requests in flight: an exact-subject lookup, so replies don't scan
    /// the subscriptions.
    inboxes: HashMap<String, tokio::sync::oneshot::Sender<Bytes>>,
    subs: Vec<Arc<Sub>>,
    /// Round-robin counters of queue groups, keyed by (pattern, group).
    round_robin: HashMap<(String, String), usize>,
}

struct Sub {
    id: u64,
    pattern: String,
    queue: Option<String>,
    tx: mpsc::Sender<Message>,
    dropped: AtomicU64,
}

impl Sub {
    /// Queues a message; false when the queue is full or closed.
    fn offer(&self, msg: Message) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // Log the first drop and then every power of two, not every message.
                if n.is_power_of_two() {
                    tracing::warn!(
                        subject = %msg.subject,
                        pattern = %self.pattern,
                        dropped = n,
                        "slow subscriber: its queue is full, dropping core message"
                    );
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

struct LogEntry {
    revision: u64,
    subject: String,
    payload: Bytes,
}

#[derive(Default)]
struct Log {
    entries: VecDeque<LogEntry>,
    /// Absolute position of `entries[0]`.
    base: u64,
    /// Whether any event was ever dropped by retention.
    evicted: bool,
    last_revision: u64,
}

impl Log {
    fn end(&self) -> u64 {
        self.base + self.entries.len() as u64
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl InProcBus {
    /// A new bus with default settings.
    pub fn new() -> InProcBus {
        InProcBus::with_config(InProcConfig::default())
    }

    /// A new bus with the given settings.
    pub fn with_config(mut config: InProcConfig) -> InProcBus {
        config.max_events = config.max_events.max(1);
        config.subscription_capacity = config.subscription_capacity.max(1);
        let (log_end, _) = watch::channel(0);
        InProcBus {
            inner: Arc::new(Inner {
                config,
                core: Mutex::new(Core::default()),
                log: Mutex::new(Log::default()),
                log_end,
                next_id: AtomicU64::new(1),
            }),
        }
    }

    fn add_sub(&self, pattern: String, queue: Option<String>, capacity: usize) -> InProcSubscription {
        let (tx, rx) = mpsc::channel(capacity);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.core).subs.push(Arc::new(Sub {
            id,
            pattern,
            queue,
            tx,
            dropped: AtomicU64::new(0),
        }));
        InProcSubscription { rx, _guard: SubGuard { inner: self.inner.clone(), id } }
    }

    /// Delivers a message to every matching plain subscriber and to one member of each
    /// matching queue group. Returns how many subscribers or groups matched.
    fn deliver(&self, msg: Message) -> usize {
        let mut core = lock(&self.inner.core);
        if let Some(tx) = core.inboxes.remove(&msg.subject) {
            // A reply to a request in flight (the requester may have timed out).
            let _ = tx.send(msg.payload);
            return 1;
        }
        let Core { subs, round_robin, .. } = &mut *core;
        let mut matched = 0;
        let mut groups: HashMap<(&str, &str), Vec<&Arc<Sub>>> = HashMap::new();
        for sub in subs.iter().filter(|s| subjects::matches(&s.pattern, &msg.subject)) {
            match &sub.queue {
                None => {
                    matched += 1;
                    sub.offer(msg.clone());
                }
                Some(q) => groups.entry((sub.pattern.as_str(), q.as_str())).or_default().push(sub),
            }
        }
        for ((pattern, group), members) in groups {
            matched += 1;
            let counter = round_robin.entry((pattern.to_string(), group.to_string())).or_insert(0);
            let start = *counter;
            *counter = counter.wrapping_add(1);
            // Try the chosen member first, then the others, so that one slow member does not
            // make the group drop a message another member could take.
            let delivered =
                (0..members.len()).any(|i| members[(start + i) % members.len()].offer(msg.clone()));
            if !delivered {
                tracing::warn!(subject = %msg.subject, group, "every member of the queue group is full or gone, dropping core message");
            }
        }
        matched
    }

    fn do_append(&self, subject: String, payload: Bytes, revision: u64) -> Result<()> {
        if !subjects::is_event_subject(&subject) {
            return Err(Error::InvalidSubject(subject));
        }
        let end = {
            let mut log = lock(&self.inner.log);
            if revision <= log.last_revision {
                return Ok(());
            }
            log.entries.push_back(LogEntry { revision, subject, payload });
            log.last_revision = revision;
            while log.entries.len() > self.inner.config.max_events {
                log.entries.pop_front();
                log.base += 1;
                log.evicted = true;
            }
            log.end()
        };
        self.inner.log_end.send_replace(end);
        Ok(())
    }

    fn do_events(&self, filter: String, start: StartAt) -> Result<EventStream> {
        if !subjects::is_valid_pattern(&filter) {
            return Err(Error::InvalidSubject(filter));
        }
        let mut pending = VecDeque::new();
        let cursor = {
            let log = lock(&self.inner.log);
            match start {
                StartAt::New => log.end(),
                StartAt::AfterRevision(r) => {
                    let missing =
                        log.evicted && log.entries.front().is_some_and(|e| r.saturating_add(1) < e.revision);
                    if missing {
                        pending.push_back(StreamItem::Gap);
                    }
                    log.base + log.entries.partition_point(|e| e.revision <= r) as u64
                }
            }
        };
        let state = EventCursor {
            inner: self.inner.clone(),
            end: self.inner.log_end.subscribe(),
            filter,
            cursor,
            pending,
        };
        Ok(Box::pin(futures::stream::unfold(state, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        })))
    }
}

/// One consumer's position in the event log.
struct EventCursor {
    inner: Arc<Inner>,
    end: watch::Receiver<u64>,
    filter: String,
    /// Absolute position of the next entry to read.
    cursor: u64,
    pending: VecDeque<StreamItem>,
}

impl EventCursor {
    async fn next(&mut self) -> Option<StreamItem> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            // Mark the current end as seen before reading, so an append racing with the read
            // below still wakes the wait at the bottom.
            self.end.borrow_and_update();
            let caught_up = {
                let log = lock(&self.inner.log);
                if self.cursor < log.base {
                    self.pending.push_back(StreamItem::Gap);
                    self.cursor = log.base;
                }
                let from = (self.cursor - log.base) as usize;
                let mut scanned = 0;
                for e in log.entries.range(from..).take(EVENT_SCAN) {
                    scanned += 1;
                    if subjects::matches(&self.filter, &e.subject) {
                        self.pending.push_back(StreamItem::Event {
                            subject: e.subject.clone(),
                            payload: e.payload.clone(),
                            revision: e.revision,
                        });
                        if self.pending.len() >= EVENT_BATCH {
                            break;
                        }
                    }
                }
                self.cursor += scanned as u64;
                self.cursor >= log.end()
            };
            if self.pending.is_empty() && caught_up {
                // The sender lives in `inner`, which this cursor holds: this cannot fail.
                self.end.changed().await.ok()?;
            }
        }
    }
}

/// Removes a subscription from the table when dropped.
struct InboxGuard {
    inner: Arc<Inner>,
    inbox: String,
}

impl Drop for InboxGuard {
    fn drop(&mut self) {
        lock(&self.inner.core).inboxes.remove(&self.inbox);
    }
}

struct SubGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        lock(&self.inner.core).subs.retain(|s| s.id != self.id);
    }
}

struct InProcSubscription {
    rx: mpsc::Receiver<Message>,
    _guard: SubGuard,
}

impl Stream for InProcSubscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Bus for InProcBus {
    fn publish(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if !subjects::is_valid_subject(&subject) {
                return Err(Error::InvalidSubject(subject));
            }
            self.deliver(Message { subject, payload, reply: None });
            Ok(())
        })
    }

    fn subscribe(&self, subject: String, queue_group: Option<String>) -> BoxFuture<'_, Result<Subscription>> {
        Box::pin(async move {
            if !subjects::is_valid_pattern(&subject) {
                return Err(Error::InvalidSubject(subject));
            }
            let sub = self.add_sub(subject, queue_group, self.inner.config.subscription_capacity);
            Ok(Box::pin(sub) as Subscription)
        })
    }

    fn request(&self, subject: String, payload: Bytes, timeout: Duration) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            if !subjects::is_valid_subject(&subject) {
                return Err(Error::InvalidSubject(subject));
            }
            let inbox = format!("_INBOX.capstan.{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed));
            let (tx, rx) = tokio::sync::oneshot::channel();
            lock(&self.inner.core).inboxes.insert(inbox.clone(), tx);
            // Removes the inbox however this request ends.
            let _guard = InboxGuard { inner: self.inner.clone(), inbox: inbox.clone() };
            if self.deliver(Message { subject: subject.clone(), payload, reply: Some(inbox) }) == 0 {
                return Err(Error::NoResponders { subject });
            }
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(Error::Closed),
                Err(_) => Err(Error::Timeout { subject }),
            }
        })
    }

    fn append_event(&self, subject: String, payload: Bytes, revision: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.do_append(subject, payload, revision) })
    }

    fn last_event_revision(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move { Ok(lock(&self.inner.log).last_revision) })
    }

    fn events(&self, filter: String, start: StartAt) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(async move { self.do_events(filter, start) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    const T: Duration = Duration::from_secs(5);

    fn ev(n: &str) -> String {
        subjects::event("", "pods", Some("default"), n)
    }

    async fn next_event(s: &mut EventStream) -> StreamItem {
        tokio::time::timeout(T, s.next()).await.unwrap().unwrap()
    }

    fn rev(item: &StreamItem) -> Option<u64> {
        match item {
            StreamItem::Event { revision, .. } => Some(*revision),
            StreamItem::Gap => None,
        }
    }

    #[tokio::test]
    async fn common_semantics() {
        crate::conformance::run_all(&InProcBus::new()).await;
    }

    #[tokio::test]
    async fn slow_core_subscriber_drops_without_blocking() {
        let bus = InProcBus::with_config(InProcConfig { subscription_capacity: 4, ..Default::default() });
        let mut sub = bus.subscribe("x".into(), None).await.unwrap();
        for i in 0..10u8 {
            bus.publish("x".into(), Bytes::from(vec![i])).await.unwrap();
        }
        let mut got = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await {
            got.push(m.payload[0]);
        }
        assert_eq!(got, vec![0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn queue_group_skips_a_full_member() {
        let bus = InProcBus::with_config(InProcConfig { subscription_capacity: 1, ..Default::default() });
        let mut a = bus.subscribe("q".into(), Some("g".into())).await.unwrap();
        let mut b = bus.subscribe("q".into(), Some("g".into())).await.unwrap();
        bus.publish("q".into(), "1".into()).await.unwrap();
        bus.publish("q".into(), "2".into()).await.unwrap();
        // Both queues hold one message now; a third has nowhere to go and is dropped.
        bus.publish("q".into(), "3".into()).await.unwrap();
        let x = a.next().await.unwrap();
        let y = b.next().await.unwrap();
        let mut got = vec![x.payload, y.payload];
        got.sort();
        assert_eq!(got, vec![Bytes::from("1"), Bytes::from("2")]);
    }

    #[tokio::test]
    async fn gap_when_history_was_dropped() {
        let bus = InProcBus::with_config(InProcConfig { max_events: 5, ..Default::default() });
        for r in 1..=10 {
            bus.append_event(ev("a"), "p".into(), r).await.unwrap();
        }
        // Retained: 6..=10. Asking for everything after 2 misses 3..=5.
        let mut s = bus.events(subjects::all_events(), StartAt::AfterRevision(2)).await.unwrap();
        assert!(matches!(next_event(&mut s).await, StreamItem::Gap));
        for r in 6..=10 {
            assert_eq!(rev(&next_event(&mut s).await), Some(r));
        }
        // After 5 nothing is missing.
        let mut s = bus.events(subjects::all_events(), StartAt::AfterRevision(5)).await.unwrap();
        assert_eq!(rev(&next_event(&mut s).await), Some(6));
    }

    #[tokio::test]
    async fn gap_when_a_consumer_falls_behind_then_continues() {
        let bus = InProcBus::with_config(InProcConfig { max_events: 10, ..Default::default() });
        let mut s = bus.events(subjects::all_events(), StartAt::AfterRevision(0)).await.unwrap();
        bus.append_event(ev("a"), "p".into(), 1).await.unwrap();
        assert_eq!(rev(&next_event(&mut s).await), Some(1));
        // The consumer does not read while 30 more events are appended: the appender is not
        // blocked, and the consumer learns that it missed some.
        for r in 2..=31 {
            bus.append_event(ev("a"), "p".into(), r).await.unwrap();
        }
        assert!(matches!(next_event(&mut s).await, StreamItem::Gap));
        for r in 22..=31 {
            assert_eq!(rev(&next_event(&mut s).await), Some(r));
        }
        bus.append_event(ev("a"), "p".into(), 32).await.unwrap();
        assert_eq!(rev(&next_event(&mut s).await), Some(32));
    }

    #[tokio::test]
    async fn no_gap_without_eviction() {
        let bus = InProcBus::new();
        bus.append_event(ev("a"), "p".into(), 100).await.unwrap();
        let mut s = bus.events(subjects::all_events(), StartAt::AfterRevision(0)).await.unwrap();
        assert_eq!(rev(&next_event(&mut s).await), Some(100));
    }

    #[tokio::test]
    async fn invalid_subjects_are_rejected() {
        let bus = InProcBus::new();
        assert!(matches!(bus.publish("a.*".into(), "x".into()).await, Err(Error::InvalidSubject(_))));
        assert!(matches!(bus.subscribe("a.>.b".into(), None).await, Err(Error::InvalidSubject(_))));
        assert!(matches!(
            bus.append_event("other.subject".into(), "x".into(), 1).await,
            Err(Error::InvalidSubject(_))
        ));
    }

    #[tokio::test]
    async fn dropping_a_subscription_unsubscribes() {
        let bus = InProcBus::new();
        let sub = bus.subscribe("svc".into(), None).await.unwrap();
        drop(sub);
        let err = bus.request("svc".into(), "x".into(), T).await.unwrap_err();
        assert!(matches!(err, Error::NoResponders { .. }));
    }
}
