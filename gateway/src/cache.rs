//! The watch cache: every object in memory plus a ring buffer of recent events, fed from
//! the store's change log.
//!
//! One feeder task tails [`Store::changes`] (woken by commit notifications, and polling once
//! a second for commits made by other gateways). Watchers pull events after their
//! revision from the ring buffer and wait on [`Cache::subscribe`] for more; lists are served
//! from the object map at the cache's revision. A watcher whose revision is older than
//! the buffer gets 410 Expired and relists.

use crate::status::{ApiError, ApiResult};
use capstan_storage::{Change, ChangeKind, Store};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Deref;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// The kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Removed.
    Deleted,
}

impl EventKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        }
    }
}

/// An object as the cache holds it: the decoded tree, and its JSON encoding made once, the
/// first time a LIST or watch needs it, then shared by every response that sends it (a
/// list of 10,000 pods copies bytes instead of serializing 10,000 trees; 1,000 watchers of
/// one change share one encoding). Dereferences to the tree.
#[derive(Debug)]
pub struct Object {
    value: Value,
    json: OnceLock<Box<[u8]>>,
}

impl Object {
    /// Wraps a decoded object.
    pub fn new(value: Value) -> Object {
        Object { value, json: OnceLock::new() }
    }

    /// The object's compact JSON, encoded on first use.
    pub fn json(&self) -> &[u8] {
        self.json.get_or_init(|| serde_json::to_vec(&self.value).unwrap_or_else(|_| b"{}".to_vec()).into())
    }

    /// The decoded tree.
    pub fn value(&self) -> &Value {
        &self.value
    }
}

impl Deref for Object {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.value
    }
}

impl From<Value> for Object {
    fn from(value: Value) -> Object {
        Object::new(value)
    }
}

/// A shared cached object.
pub type Obj = Arc<Object>;

/// One change of one object.
#[derive(Debug)]
pub struct Event {
    /// The revision of the change (the object's new resourceVersion).
    pub revision: u64,
    /// What happened.
    pub kind: EventKind,
    /// The storage key.
    pub key: Vec<u8>,
    /// The object after the change (for a delete: its final state).
    pub object: Obj,
    /// The object before the change, if it existed.
    pub prev: Option<Obj>,
}

/// An object with its storage key.
pub type Entry = (Vec<u8>, Obj);

struct State {
    revision: u64,
    /// Events with revision > `buffer_start` are all in `events`.
    buffer_start: u64,
    objects: BTreeMap<Vec<u8>, Obj>,
    events: VecDeque<Arc<Event>>,
}

/// The watch cache. Cheap to share behind an `Arc`.
pub struct Cache {
    state: RwLock<State>,
    head: watch::Sender<u64>,
    capacity: usize,
}

/// Decodes a stored object and stamps its resourceVersion.
pub fn decode_stored(value: &[u8], revision: u64) -> Option<Value> {
    let mut v: Value = rmp_serde::from_slice(value).ok()?;
    capstan_api::meta::set_meta_str(&mut v, "resourceVersion", &revision.to_string());
    Some(v)
}

impl Cache {
    /// Builds the cache from a full read of the store and starts the feeder task.
    pub async fn start(store: Arc<dyn Store>, capacity: usize) -> ApiResult<Arc<Cache>> {
        let (objects, revision) = load_all(store.as_ref()).await?;
        let (head, _) = watch::channel(revision);
        let cache = Arc::new(Cache {
            state: RwLock::new(State { revision, buffer_start: revision, objects, events: VecDeque::new() }),
            head,
            capacity: capacity.max(16),
        });
        let feeder = cache.clone();
        tokio::spawn(async move { feeder.feed(store).await });
        Ok(cache)
    }

    async fn feed(self: Arc<Self>, store: Arc<dyn Store>) {
        let mut commits = store.subscribe_commits();
        loop {
            let after = self.revision();
            match store.changes(after, 2048).await {
                Ok(changes) if !changes.is_empty() => {
                    self.apply(&changes);
                    continue;
                }
                Ok(_) => {}
                Err(capstan_storage::Error::Compacted { .. }) => {
                    tracing::warn!("watch cache fell behind the change log; reloading");
                    match load_all(store.as_ref()).await {
                        Ok((objects, revision)) => self.reset(objects, revision),
                        Err(e) => tracing::error!("failed to reload watch cache: {e}"),
                    }
                    continue;
                }
                Err(capstan_storage::Error::Closed) => return,
                Err(e) => tracing::warn!("failed to read change log: {e}"),
            }
            if Arc::strong_count(&self) == 1 {
                return;
            }
            tokio::select! {
                r = commits.changed() => { if r.is_err() { return; } }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    fn reset(&self, objects: BTreeMap<Vec<u8>, Obj>, revision: u64) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.objects = objects;
        st.revision = revision;
        st.buffer_start = revision;
        st.events.clear();
        drop(st);
        self.head.send_replace(revision);
    }

    fn apply(&self, changes: &[Change]) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        for c in changes {
            if c.revision <= st.revision {
                continue;
            }
            st.revision = c.revision;
            if !c.key.starts_with(crate::keys::ROOT) {
                continue;
            }
            let Some(obj) = decode_stored(&c.value, c.revision) else {
                tracing::warn!(revision = c.revision, "undecodable object in change log");
                continue;
            };
            let obj = Arc::new(Object::new(obj));
            let (kind, prev) = match c.kind {
                ChangeKind::Delete => (EventKind::Deleted, st.objects.remove(&c.key)),
                ChangeKind::Create | ChangeKind::Update => {
                    let prev = st.objects.insert(c.key.clone(), obj.clone());
                    (if prev.is_some() { EventKind::Modified } else { EventKind::Added }, prev)
                }
            };
            st.events.push_back(Arc::new(Event {
                revision: c.revision,
                kind,
                key: c.key.clone(),
                object: obj,
                prev,
            }));
            while st.events.len() > self.capacity {
                if let Some(e) = st.events.pop_front() {
                    st.buffer_start = e.revision;
                }
            }
        }
        let rev = st.revision;
        drop(st);
        self.head.send_replace(rev);
    }

    /// One object from the cache, if present (it may lag the store by a few milliseconds).
    pub fn get(&self, key: &[u8]) -> Option<Obj> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        st.objects.get(key).cloned()
    }

    /// The revision the cache has caught up to.
    pub fn revision(&self) -> u64 {
        *self.head.borrow()
    }

    /// A receiver notified whenever the cache advances.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Waits until the cache has caught up to `revision`, up to `timeout`.
    pub async fn wait_for(&self, revision: u64, timeout: Duration) -> ApiResult<()> {
        let mut rx = self.head.subscribe();
        let res = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await.map(|r| r.map(|_| ()));
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ApiError::Unavailable("watch cache stopped".into())),
            Err(_) => Err(ApiError::Timeout(format!(
                "Too large resource version: {revision}, current: {}",
                self.revision()
            ))),
        }
    }

    /// Objects with keys in `[start, end)` accepted by `filter`, at most `limit` (0: all).
    /// Returns the objects, the cache revision, and the key to continue from when more
    /// objects were left.
    pub fn list(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        filter: impl Fn(&Value) -> bool,
    ) -> (Vec<Obj>, u64, Option<Vec<u8>>) {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let mut next = None;
        for (k, v) in st.objects.range(start.to_vec()..end.to_vec()) {
            if filter(v) {
                if limit > 0 && out.len() == limit {
                    next = Some(k.clone());
                    break;
                }
                out.push(v.clone());
            }
        }
        (out, st.revision, next)
    }

    /// Every object with a key in `[start, end)`, with its key, and the cache revision.
    pub fn entries(&self, start: &[u8], end: &[u8]) -> (Vec<Entry>, u64) {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let out =
            st.objects.range(start.to_vec()..end.to_vec()).map(|(k, v)| (k.clone(), v.clone())).collect();
        (out, st.revision)
    }

    /// Events after `revision` accepted by `filter`, at most `max`. Returns the events and
    /// the revision scanned up to. 410 Expired when `revision` is older than the buffer.
    pub fn events_after(
        &self,
        revision: u64,
        max: usize,
        filter: impl Fn(&Event) -> bool,
    ) -> ApiResult<(Vec<Arc<Event>>, u64)> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        if revision < st.buffer_start {
            return Err(ApiError::Expired(format!(
                "too old resource version: {revision} ({})",
                st.buffer_start
            )));
        }
        let mut out = Vec::new();
        let mut scanned = revision.max(st.buffer_start);
        // Events are ordered by revision: find the first after `revision`.
        let first = st.events.partition_point(|e| e.revision <= revision);
        for e in st.events.iter().skip(first) {
            if out.len() >= max {
                return Ok((out, scanned));
            }
            scanned = e.revision;
            if filter(e) {
                out.push(e.clone());
            }
        }
        Ok((out, st.revision.max(scanned)))
    }
}

/// The ready endpoint addresses and the port number of `service`'s port named `port_name`
/// in `namespace`, from the first EndpointSlice of the Service that has that port and a
/// ready address (as the node's service proxy would pick them). `None` when there is none.
pub fn service_endpoints(
    cache: &Cache,
    namespace: &str,
    service: &str,
    port_name: &str,
) -> Option<(Vec<std::net::IpAddr>, i64)> {
    let slices = capstan_api::registry::find("discovery.k8s.io", "v1", "endpointslices")?;
    let prefix = crate::keys::prefix(slices, Some(namespace));
    let end = capstan_storage::prefix_end(&prefix);
    let (items, _, _) = cache.list(&prefix, &end, 0, |e| {
        e["metadata"]["labels"]["kubernetes.io/service-name"].as_str() == Some(service)
    });
    items.into_iter().find_map(|slice| {
        let port = slice["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str().unwrap_or("") == port_name)
            .and_then(|p| p["port"].as_i64())?;
        let ips: Vec<std::net::IpAddr> = slice["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["conditions"]["ready"].as_bool() != Some(false))
            .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
            .filter_map(|a| a.as_str()?.parse().ok())
            .collect();
        (!ips.is_empty()).then_some((ips, port))
    })
}

async fn load_all(store: &dyn Store) -> ApiResult<(BTreeMap<Vec<u8>, Obj>, u64)> {
    let end = capstan_storage::prefix_end(crate::keys::ROOT);
    let res = store.range(crate::keys::ROOT, &end, 0).await?;
    let mut objects = BTreeMap::new();
    for kv in res.kvs {
        match decode_stored(&kv.value, kv.mod_revision) {
            Some(v) => {
                objects.insert(kv.key, Arc::new(Object::new(v)));
            }
            None => tracing::warn!(key = %String::from_utf8_lossy(&kv.key), "undecodable stored object"),
        }
    }
    Ok((objects, res.revision))
}
