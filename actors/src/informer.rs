//! Informers: a local cache of one resource kept current from the bus.
//!
//! List (a snapshot at revision R, paged through the API over the bus), then consume the
//! event stream after R; on a gap, an error or the end of the stream, list again. After
//! every (re)list, handlers see the difference to what they saw before, so nothing is
//! missed across a relist.

use crate::client::{ApiClient, Gvr};
use capstan_bus::{subjects, EventEnvelope, StartAt, StreamItem};
use futures::StreamExt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// A cache key: `namespace/name`, or `name` for cluster-scoped objects.
pub type Key = String;

/// The key of an object.
pub fn key_of(obj: &Value) -> Key {
    let md = obj.get("metadata");
    let name = md.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("");
    match md.and_then(|m| m.get("namespace")).and_then(Value::as_str).filter(|n| !n.is_empty()) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Splits a key into namespace and name.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

/// What changed in the cache.
#[derive(Debug, Clone)]
pub enum Change {
    /// Added or updated (`old` is the previous version, if any).
    Applied {
        /// Previous version.
        old: Option<Arc<Value>>,
        /// New version.
        new: Arc<Value>,
    },
    /// Removed (the last known version).
    Deleted(Arc<Value>),
}

impl Change {
    /// The object the change is about (the new version, or the deleted one).
    pub fn object(&self) -> &Arc<Value> {
        match self {
            Change::Applied { new, .. } => new,
            Change::Deleted(o) => o,
        }
    }
}

/// A change handler.
pub type Handler = Arc<dyn Fn(&Change) + Send + Sync>;

/// One informer per resource, shared by every actor of a process.
pub struct Informers {
    client: ApiClient,
    map: Mutex<std::collections::HashMap<Gvr, Arc<Informer>>>,
}

impl Informers {
    /// An empty set of informers using `client`.
    pub fn new(client: ApiClient) -> Arc<Informers> {
        Arc::new(Informers { client, map: Mutex::new(std::collections::HashMap::new()) })
    }

    /// The (started) informer for `gvr`.
    pub fn get(&self, gvr: Gvr) -> Arc<Informer> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(gvr)
            .or_insert_with(|| {
                let inf = Informer::new(self.client.clone(), gvr);
                inf.start();
                inf
            })
            .clone()
    }

    /// Replays every cached object to every handler (after a partition change).
    pub fn resync_all(&self) {
        let all: Vec<Arc<Informer>> =
            self.map.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for i in all {
            i.resync();
        }
    }

    /// Waits until every informer created so far has synced.
    pub async fn wait_synced(&self) {
        let all: Vec<Arc<Informer>> =
            self.map.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for i in all {
            i.wait_synced().await;
        }
    }
}

/// A local cache of one resource.
pub struct Informer {
    client: ApiClient,
    gvr: Gvr,
    cache: RwLock<BTreeMap<Key, Arc<Value>>>,
    handlers: Mutex<Vec<Handler>>,
    synced: watch::Sender<bool>,
    revision: std::sync::atomic::AtomicU64,
    filter: Option<Filter>,
}

/// Which objects an informer keeps (see [`Informer::filtered`]).
pub type Filter = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

fn revision_of(obj: &Value) -> u64 {
    obj.get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Informer {
    /// An informer for `gvr` (all namespaces). Call [`Informer::start`] to run it.
    pub fn new(client: ApiClient, gvr: Gvr) -> Arc<Informer> {
        Informer::build(client, gvr, None)
    }

    /// An informer that keeps only the objects `filter` accepts (a node agent's own pods).
    /// An object that stops matching is reported as deleted.
    pub fn filtered(client: ApiClient, gvr: Gvr, filter: Filter) -> Arc<Informer> {
        Informer::build(client, gvr, Some(filter))
    }

    fn build(client: ApiClient, gvr: Gvr, filter: Option<Filter>) -> Arc<Informer> {
        let (synced, _) = watch::channel(false);
        Arc::new(Informer {
            client,
            gvr,
            cache: RwLock::new(BTreeMap::new()),
            handlers: Mutex::new(Vec::new()),
            synced,
            revision: std::sync::atomic::AtomicU64::new(0),
            filter,
        })
    }

    /// The resource.
    pub fn gvr(&self) -> Gvr {
        self.gvr
    }

    /// Registers a handler. It first sees every object already cached (as `Applied`
    /// with no old version), then every change.
    pub fn on_change(&self, h: Handler) {
        let mut handlers = self.handlers.lock().unwrap_or_else(|e| e.into_inner());
        let current: Vec<Arc<Value>> = self.list();
        for obj in current {
            h(&Change::Applied { old: None, new: obj });
        }
        handlers.push(h);
    }

    /// Runs the informer on the current runtime until the returned handle is aborted.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.run().await })
    }

    /// Waits until the first list has been applied.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Whether the first list has been applied.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// The latest revision applied.
    pub fn revision(&self) -> u64 {
        self.revision.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One object.
    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.cache.read().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Every object.
    pub fn list(&self) -> Vec<Arc<Value>> {
        self.cache.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Every object in one namespace.
    pub fn list_ns(&self, ns: &str) -> Vec<Arc<Value>> {
        let prefix = format!("{ns}/");
        let end = format!("{ns}0"); // '0' follows '/'
        self.cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .range(prefix..end)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Replays every cached object to the handlers as `Applied` (old = new).
    pub fn resync(&self) {
        let changes: Vec<Change> =
            self.list().into_iter().map(|o| Change::Applied { old: Some(o.clone()), new: o }).collect();
        self.notify(&changes);
    }

    fn notify(&self, changes: &[Change]) {
        let handlers = self.handlers.lock().unwrap_or_else(|e| e.into_inner());
        for c in changes {
            for h in handlers.iter() {
                h(c);
            }
        }
    }

    fn replace(&self, items: Vec<Value>, revision: u64) {
        let mut changes = Vec::new();
        {
            let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
            let mut fresh = BTreeMap::new();
            for it in items {
                if self.filter.as_ref().is_some_and(|f| !f(&it)) {
                    continue;
                }
                fresh.insert(key_of(&it), Arc::new(it));
            }
            for (k, old) in cache.iter() {
                if !fresh.contains_key(k) {
                    changes.push(Change::Deleted(old.clone()));
                }
            }
            for (k, new) in &fresh {
                let old = cache.get(k).cloned();
                if old.as_ref().map(|o| revision_of(o)) != Some(revision_of(new)) {
                    changes.push(Change::Applied { old, new: new.clone() });
                }
            }
            *cache = fresh;
        }
        self.revision.store(revision, std::sync::atomic::Ordering::Relaxed);
        self.notify(&changes);
        self.synced.send_replace(true);
    }

    fn apply(&self, env: EventEnvelope) {
        let obj = Arc::new(env.object);
        let key = key_of(&obj);
        let change = {
            let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
            let unwanted = self.filter.as_ref().is_some_and(|f| !f(&obj));
            if env.type_ == "DELETED" || unwanted {
                let was_cached = cache.remove(&key).is_some();
                if unwanted && !was_cached {
                    drop(cache);
                    self.revision.store(env.revision, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                Change::Deleted(obj)
            } else {
                let old = cache.insert(key, obj.clone());
                Change::Applied { old, new: obj }
            }
        };
        self.revision.store(env.revision, std::sync::atomic::Ordering::Relaxed);
        self.notify(std::slice::from_ref(&change));
    }

    async fn run(self: Arc<Self>) {
        let filter = subjects::events_of(self.gvr.group, self.gvr.resource, None);
        let mut backoff = Duration::from_millis(100);
        loop {
            let (items, rv) = match self.client.list_all(self.gvr, None, None).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(resource = self.gvr.resource, "informer list failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            self.replace(items, rv);
            let mut stream = match self.client.bus().events(filter.clone(), StartAt::AfterRevision(rv)).await
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(resource = self.gvr.resource, "informer cannot follow events: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let mut last = rv;
            while let Some(item) = stream.next().await {
                match item {
                    StreamItem::Gap => {
                        tracing::info!(resource = self.gvr.resource, "informer saw a gap; relisting");
                        break;
                    }
                    StreamItem::Event { payload, revision, .. } => {
                        if revision <= last {
                            continue;
                        }
                        last = revision;
                        match EventEnvelope::from_bytes(&payload) {
                            Ok(env) => self.apply(env),
                            Err(e) => tracing::warn!(revision, "informer skipped an undecodable event: {e}"),
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys() {
        assert_eq!(key_of(&json!({"metadata": {"name": "a", "namespace": "ns"}})), "ns/a");
        assert_eq!(key_of(&json!({"metadata": {"name": "n1"}})), "n1");
        assert_eq!(split_key("ns/a"), (Some("ns"), "a"));
        assert_eq!(split_key("n1"), (None, "n1"));
    }
}
