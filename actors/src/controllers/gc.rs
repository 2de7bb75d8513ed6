//! The garbage collector: a dependency graph from `metadata.ownerReferences`.
//!
//! As upstream's `pkg/controller/garbagecollector`:
//! - a dependent whose owners are all *absent* (no object of that name and uid) is deleted,
//!   with a uid precondition, using the propagation its own finalizers ask for (background);
//! - a dependent with at least one live owner only loses its references to absent owners and
//!   to owners deleting in the foreground;
//! - an owner with `deletionTimestamp` and the `foregroundDeletion` finalizer gets its
//!   dependents deleted; once none with `blockOwnerDeletion: true` is left the finalizer goes;
//! - an owner with the `orphan` finalizer has the references to it removed from its
//!   dependents, then the finalizer goes.
//!
//! The graph covers the resources in [`MONITORED`] and the custom kinds of established
//! CustomResourceDefinitions; owners of other kinds are looked up through the API. The cache's "absent" is always confirmed by a live read before acting.

use super::Ctx;
use crate::client::{gvr, ApiClient, ClientError, Gvr};
use crate::informer::{key_of, split_key, Change, Informer, Key};
use crate::runtime::{Action, Controller, Enqueue, ReconcileError, Reconciler};
use actix::{Actor, Addr};
use capstan_api::registry;
use capstan_bus::ApiRequest;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The resources the collector watches, as dependents and as owners.
pub const MONITORED: &[Gvr] = &[
    gvr::PODS,
    gvr::CONFIG_MAPS,
    Gvr::new("", "v1", "secrets"),
    gvr::SERVICES,
    gvr::SERVICE_ACCOUNTS,
    Gvr::new("", "v1", "persistentvolumeclaims"),
    gvr::NODES,
    gvr::DEPLOYMENTS,
    gvr::REPLICA_SETS,
    gvr::STATEFUL_SETS,
    gvr::DAEMON_SETS,
    gvr::CONTROLLER_REVISIONS,
    gvr::JOBS,
    gvr::CRON_JOBS,
    gvr::ENDPOINT_SLICES,
    gvr::LEASES,
    super::replicaset::REPLICATION_CONTROLLERS,
];

/// The finalizer of an owner deleting in the foreground.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of an owner whose dependents are to be orphaned.
pub const ORPHAN: &str = "orphan";

/// How long an owner in foreground deletion waits before looking at its dependents again
/// (their deletions wake it earlier).
const FOREGROUND_RECHECK: Duration = Duration::from_secs(2);
/// How long to wait for the informers to sync.
const SYNC_WAIT: Duration = Duration::from_millis(100);

// ---- object accessors -------------------------------------------------------------------

fn uid(obj: &Value) -> &str {
    capstan_api::meta::meta_str(obj, "uid").unwrap_or("")
}

fn is_deleting(obj: &Value) -> bool {
    obj.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|v| !v.is_null())
}

fn has_finalizer(obj: &Value, f: &str) -> bool {
    capstan_api::meta::finalizers(obj).iter().any(|x| x == f)
}

/// One `metadata.ownerReferences` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnerRef {
    api_version: String,
    kind: String,
    name: String,
    uid: String,
    block: bool,
}

fn owner_refs(obj: &Value) -> Vec<OwnerRef> {
    let Some(refs) = obj.get("metadata").and_then(|m| m.get("ownerReferences")).and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let s = |r: &Value, k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    refs.iter()
        .map(|r| OwnerRef {
            api_version: s(r, "apiVersion"),
            kind: s(r, "kind"),
            name: s(r, "name"),
            uid: s(r, "uid"),
            block: r.get("blockOwnerDeletion").and_then(Value::as_bool).unwrap_or(false),
        })
        .filter(|r| !r.uid.is_empty())
        .collect()
}

/// Whether `dep` blocks the foreground deletion of the owner with `owner_uid`.
fn blocks(dep: &Value, owner_uid: &str) -> bool {
    owner_refs(dep).iter().any(|r| r.uid == owner_uid && r.block)
}

/// The resource an ownerReference names, and whether it is namespaced.
fn resolve(api_version: &str, kind: &str) -> Option<(Gvr, bool)> {
    let (group, version) = registry::split_api_version(api_version);
    let res = registry::RESOURCES
        .iter()
        .find(|r| r.stored && r.group == group && r.version == version && r.kind == kind)
        .or_else(|| registry::find_kind(group, kind).filter(|r| r.stored))?;
    Some((Gvr::new(res.group, res.version, res.plural), res.namespaced()))
}

/// The kinds in the graph: [`MONITORED`] first, then the storage versions of established
/// custom kinds as they appear. Only ever grows, so an index names one kind for good.
#[derive(Default)]
struct Kinds(std::sync::RwLock<Vec<(Gvr, Arc<Informer>)>>);

impl Kinds {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<(Gvr, Arc<Informer>)>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a kind, returning its index (or None when it is there already).
    fn push(&self, g: Gvr, inf: Arc<Informer>) -> Option<usize> {
        let mut v = self.0.write().unwrap_or_else(|e| e.into_inner());
        if v.iter().any(|(k, _)| k.group == g.group && k.resource == g.resource) {
            return None;
        }
        v.push((g, inf));
        Some(v.len() - 1)
    }

    fn informer(&self, i: usize) -> Option<Arc<Informer>> {
        self.read().get(i).map(|(_, inf)| inf.clone())
    }

    fn gvr(&self, i: usize) -> Option<Gvr> {
        self.read().get(i).map(|(g, _)| *g)
    }

    fn index_of(&self, g: Gvr) -> Option<usize> {
        self.read().iter().position(|(m, _)| m.group == g.group && m.resource == g.resource)
    }

    fn get(&self, i: usize, key: &str) -> Option<Arc<Value>> {
        self.informer(i)?.get(key)
    }

    fn all_synced(&self) -> bool {
        self.read().iter().all(|(_, i)| i.is_synced())
    }
}

/// The cache key of the owner an ownerReference of a dependent in `dep_ns` names.
fn owner_location(r: &OwnerRef, dep_ns: Option<&str>) -> Option<(Gvr, Option<String>, Key)> {
    let (g, namespaced) = resolve(&r.api_version, &r.kind)?;
    if namespaced {
        let ns = dep_ns?;
        Some((g, Some(ns.to_string()), format!("{ns}/{}", r.name)))
    } else {
        Some((g, None, r.name.clone()))
    }
}

// ---- the graph --------------------------------------------------------------------------

/// A node of the graph: an object of a monitored resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Node {
    kind: usize,
    key: Key,
    uid: String,
}

impl Node {
    fn of(kind: usize, obj: &Value) -> Node {
        Node { kind, key: key_of(obj), uid: uid(obj).to_string() }
    }
}

/// Owner uid → the nodes that reference it.
#[derive(Default)]
struct Graph {
    dependents: HashMap<String, BTreeSet<Node>>,
}

impl Graph {
    fn add(&mut self, node: &Node, refs: &[OwnerRef]) {
        for r in refs {
            self.dependents.entry(r.uid.clone()).or_default().insert(node.clone());
        }
    }

    fn remove(&mut self, node: &Node, refs: &[OwnerRef]) {
        for r in refs {
            if let Some(set) = self.dependents.get_mut(&r.uid) {
                set.remove(node);
                if set.is_empty() {
                    self.dependents.remove(&r.uid);
                }
            }
        }
    }

    fn dependents_of(&self, owner_uid: &str) -> Vec<Node> {
        self.dependents.get(owner_uid).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    fn has_dependents(&self, owner_uid: &str) -> bool {
        self.dependents.get(owner_uid).is_some_and(|s| !s.is_empty())
    }
}

// ---- decisions --------------------------------------------------------------------------

/// What an owner reference points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnerState {
    /// Exists and is not deleting its dependents (or cannot be resolved: left alone).
    Solid,
    /// No object of that name and uid.
    Absent,
    /// Exists, deleting in the foreground.
    DeletingDependents,
}

fn state_of(owner: &Value) -> OwnerState {
    if is_deleting(owner) && has_finalizer(owner, FOREGROUND) {
        OwnerState::DeletingDependents
    } else {
        OwnerState::Solid
    }
}

/// What to do with a dependent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DependentAction {
    /// Nothing.
    Keep,
    /// Remove the references to these owner uids.
    RemoveReferences(Vec<String>),
    /// Delete it with this propagation policy.
    Delete(&'static str),
}

/// Upstream's `attemptToDeleteItem` decision: `owners` are (uid, state) of every reference,
/// `has_dependents` whether the item owns anything, `finalizers` its own finalizers.
fn decide_dependent(
    owners: &[(String, OwnerState)],
    has_dependents: bool,
    finalizers: &[String],
) -> DependentAction {
    if owners.is_empty() {
        return DependentAction::Keep;
    }
    let solid = owners.iter().any(|(_, s)| *s == OwnerState::Solid);
    let gone: Vec<String> =
        owners.iter().filter(|(_, s)| *s != OwnerState::Solid).map(|(u, _)| u.clone()).collect();
    if solid {
        return if gone.is_empty() { DependentAction::Keep } else { DependentAction::RemoveReferences(gone) };
    }
    let waiting = owners.iter().any(|(_, s)| *s == OwnerState::DeletingDependents);
    if waiting && has_dependents {
        // Its own dependents must go first, so the owner's wait covers them too.
        return DependentAction::Delete("Foreground");
    }
    let policy = if finalizers.iter().any(|f| f == ORPHAN) {
        "Orphan"
    } else if finalizers.iter().any(|f| f == FOREGROUND) {
        "Foreground"
    } else {
        "Background"
    };
    DependentAction::Delete(policy)
}

/// The merge patch that removes the references to `uids`, if any reference matches.
fn remove_references_patch(obj: &Value, uids: &[String]) -> Option<Value> {
    let refs = obj.get("metadata").and_then(|m| m.get("ownerReferences")).and_then(Value::as_array)?;
    let keep: Vec<Value> = refs
        .iter()
        .filter(|r| !r.get("uid").and_then(Value::as_str).is_some_and(|u| uids.iter().any(|x| x == u)))
        .cloned()
        .collect();
    if keep.len() == refs.len() {
        return None;
    }
    let value = if keep.is_empty() { Value::Null } else { Value::Array(keep) };
    Some(json!({"metadata": {"ownerReferences": value}}))
}

/// The merge patch that removes finalizer `f`, if present.
fn remove_finalizer_patch(obj: &Value, f: &str) -> Option<Value> {
    let fins = capstan_api::meta::finalizers(obj);
    if !fins.iter().any(|x| x == f) {
        return None;
    }
    let rest: Vec<String> = fins.into_iter().filter(|x| x != f).collect();
    let value = if rest.is_empty() { Value::Null } else { json!(rest) };
    Some(json!({"metadata": {"finalizers": value}}))
}

// ---- work queue keys --------------------------------------------------------------------

fn dependent_key(kind: usize, key: &str) -> String {
    format!("d{kind}|{key}")
}

fn owner_key(kind: usize, key: &str) -> String {
    format!("o{kind}|{key}")
}

/// Splits a queue key into (is_owner, monitored index, object key).
fn parse_key(k: &str) -> Option<(bool, usize, &str)> {
    let (head, key) = k.split_once('|')?;
    let owner = match head.as_bytes().first()? {
        b'o' => true,
        b'd' => false,
        _ => return None,
    };
    let kind: usize = head.get(1..)?.parse().ok()?;
    Some((owner, kind, key))
}

// ---- the reconciler ---------------------------------------------------------------------

struct GarbageCollector {
    client: ApiClient,
    kinds: Arc<Kinds>,
    graph: Arc<Mutex<Graph>>,
}

impl GarbageCollector {
    fn synced(&self) -> bool {
        self.kinds.all_synced()
    }

    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the owner of `r` stands: the cache answers "exists"; "absent" is confirmed
    /// through the API.
    async fn owner_state(&self, r: &OwnerRef, dep_ns: Option<&str>) -> Result<OwnerState, ClientError> {
        let Some((g, namespaced)) = resolve(&r.api_version, &r.kind) else {
            tracing::debug!(kind = %r.kind, api_version = %r.api_version, "owner of an unknown kind is left alone");
            return Ok(OwnerState::Solid);
        };
        if namespaced && dep_ns.is_none() {
            // A cluster-scoped object cannot have a namespaced owner: the reference is
            // unresolvable and (as upstream since 1.20) the dependent is not collected.
            return Ok(OwnerState::Solid);
        }
        let ns = if namespaced { dep_ns } else { None };
        let key = match ns {
            Some(n) => format!("{n}/{}", r.name),
            None => r.name.clone(),
        };
        if let Some(i) = self.kinds.index_of(g) {
            if let Some(o) = self.kinds.get(i, &key) {
                if uid(&o) == r.uid {
                    return Ok(state_of(&o));
                }
            }
        }
        if r.name.is_empty() {
            return Ok(OwnerState::Absent);
        }
        match self.client.get(g, ns, &r.name).await {
            Ok(o) if uid(&o) == r.uid => Ok(state_of(&o)),
            Ok(_) => Ok(OwnerState::Absent),
            Err(e) if e.is_not_found() => Ok(OwnerState::Absent),
            Err(e) => Err(e),
        }
    }

    /// Applies a merge patch computed by `f` from the object, pinned to its uid and
    /// resourceVersion; on a conflict, reads it again and retries.
    async fn patch_pinned(
        &self,
        g: Gvr,
        obj: &Value,
        f: impl Fn(&Value) -> Option<Value>,
    ) -> Result<(), ReconcileError> {
        let key = key_of(obj);
        let (ns, name) = split_key(&key);
        let want_uid = uid(obj).to_string();
        let mut cur = obj.clone();
        for _ in 0..4 {
            let Some(mut patch) = f(&cur) else { return Ok(()) };
            let rv = capstan_api::meta::meta_str(&cur, "resourceVersion").unwrap_or("").to_string();
            if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("uid".into(), json!(want_uid));
                if !rv.is_empty() {
                    m.insert("resourceVersion".into(), json!(rv));
                }
            }
            match self.client.merge_patch(g, ns, name, patch).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) if e.is_conflict() => match self.client.get(g, ns, name).await {
                    Ok(fresh) if uid(&fresh) == want_uid => cur = fresh,
                    Ok(_) => return Ok(()),
                    Err(e) if e.is_not_found() => return Ok(()),
                    Err(e) => return Err(e.into()),
                },
                Err(e) => return Err(e.into()),
            }
        }
        Err(ReconcileError(format!("kept conflicting while patching {} {key}", g.resource)))
    }

    async fn delete(&self, g: Gvr, obj: &Value, policy: &str) -> Result<(), ReconcileError> {
        let key = key_of(obj);
        let (ns, name) = split_key(&key);
        let req = ApiRequest {
            verb: "delete".into(),
            group: g.group.into(),
            version: g.version.into(),
            resource: g.resource.into(),
            namespace: ns.map(str::to_string),
            name: Some(name.to_string()),
            body: Some(json!({"propagationPolicy": policy, "preconditions": {"uid": uid(obj)}})),
            ..Default::default()
        };
        match self.client.call(req).await {
            Ok(_) => {
                tracing::debug!(resource = g.resource, key = %key, policy, "garbage collector deleted a dependent");
                Ok(())
            }
            // Gone already, or replaced by a new incarnation (uid precondition).
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// A dependent: delete it when its owners are gone, or drop dangling references.
    async fn process_dependent(&self, kind: usize, key: &str) -> Result<Action, ReconcileError> {
        let (Some(obj), Some(g)) = (self.kinds.get(kind, key), self.kinds.gvr(kind)) else {
            return Ok(Action::Done);
        };
        if is_deleting(&obj) {
            return Ok(Action::Done);
        }
        let refs = owner_refs(&obj);
        if refs.is_empty() {
            return Ok(Action::Done);
        }
        if !self.synced() {
            return Ok(Action::RequeueAfter(SYNC_WAIT));
        }
        let (ns, _) = split_key(key);
        let mut owners = Vec::with_capacity(refs.len());
        for r in &refs {
            owners.push((r.uid.clone(), self.owner_state(r, ns).await?));
        }
        let has_dependents = self.graph().has_dependents(uid(&obj));
        let finalizers = capstan_api::meta::finalizers(&obj);
        match decide_dependent(&owners, has_dependents, &finalizers) {
            DependentAction::Keep => {}
            DependentAction::RemoveReferences(uids) => {
                self.patch_pinned(g, &obj, |o| remove_references_patch(o, &uids)).await?;
            }
            DependentAction::Delete(policy) => self.delete(g, &obj, policy).await?,
        }
        Ok(Action::Done)
    }

    /// An owner being deleted with the `orphan` or `foregroundDeletion` finalizer.
    async fn process_owner(&self, kind: usize, key: &str) -> Result<Action, ReconcileError> {
        let (Some(obj), Some(g)) = (self.kinds.get(kind, key), self.kinds.gvr(kind)) else {
            return Ok(Action::Done);
        };
        if !is_deleting(&obj) {
            return Ok(Action::Done);
        }
        let orphan = has_finalizer(&obj, ORPHAN);
        let foreground = has_finalizer(&obj, FOREGROUND);
        if !orphan && !foreground {
            return Ok(Action::Done);
        }
        if !self.synced() {
            return Ok(Action::RequeueAfter(SYNC_WAIT));
        }
        let owner_uid = uid(&obj).to_string();
        let dependents = self.graph().dependents_of(&owner_uid);
        let live = |n: &Node| self.kinds.get(n.kind, &n.key).filter(|d| uid(d) == n.uid);
        if orphan {
            let uids = [owner_uid.clone()];
            for n in &dependents {
                if let (Some(d), Some(dg)) = (live(n), self.kinds.gvr(n.kind)) {
                    self.patch_pinned(dg, &d, |o| remove_references_patch(o, &uids)).await?;
                }
            }
            self.patch_pinned(g, &obj, |o| remove_finalizer_patch(o, ORPHAN)).await?;
            return Ok(Action::Done);
        }
        let mut blocking = 0usize;
        for n in &dependents {
            let Some(d) = live(n) else { continue };
            if blocks(&d, &owner_uid) {
                blocking += 1;
            }
            if !is_deleting(&d) {
                self.process_dependent(n.kind, &n.key).await?;
            }
        }
        if blocking > 0 {
            return Ok(Action::RequeueAfter(FOREGROUND_RECHECK));
        }
        self.patch_pinned(g, &obj, |o| remove_finalizer_patch(o, FOREGROUND)).await?;
        Ok(Action::Done)
    }
}

impl Reconciler for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbagecollector"
    }

    fn reconcile(self: Arc<Self>, key: Key) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            let Some((owner, kind, obj_key)) = parse_key(&key) else { return Ok(Action::Done) };
            if owner {
                self.process_owner(kind, obj_key).await
            } else {
                self.process_dependent(kind, obj_key).await
            }
        })
    }
}

/// Turns informer changes of monitored resource `kind` into graph updates and work.
struct Watcher {
    kind: usize,
    ctx: Ctx,
    kinds: Arc<Kinds>,
    graph: Arc<Mutex<Graph>>,
    addr: Addr<Controller<GarbageCollector>>,
}

impl Watcher {
    fn enqueue(&self, kind: usize, key: &str, owner: bool) {
        if self.ctx.owns(key) {
            let k = if owner { owner_key(kind, key) } else { dependent_key(kind, key) };
            self.addr.do_send(Enqueue(k));
        }
    }

    fn enqueue_dependents(&self, owner_uid: &str) {
        let deps = self.graph.lock().unwrap_or_else(|e| e.into_inner()).dependents_of(owner_uid);
        for n in deps {
            self.enqueue(n.kind, &n.key, false);
        }
    }

    /// Wakes owners in foreground deletion that `refs` point at.
    fn enqueue_deleting_owners(&self, refs: &[OwnerRef], dep_ns: Option<&str>) {
        for r in refs {
            let Some((g, _, key)) = owner_location(r, dep_ns) else { continue };
            let Some(i) = self.kinds.index_of(g) else { continue };
            if self.kinds.get(i, &key).is_some_and(|o| is_deleting(&o)) {
                self.enqueue(i, &key, true);
            }
        }
    }

    fn handle(&self, change: &Change) {
        match change {
            Change::Applied { old, new } => {
                let key = key_of(new);
                let node = Node::of(self.kind, new);
                let new_refs = owner_refs(new);
                let old_refs = old.as_ref().map(|o| owner_refs(o)).unwrap_or_default();
                {
                    let mut g = self.graph.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(o) = old {
                        g.remove(&Node::of(self.kind, o), &old_refs);
                    }
                    g.add(&node, &new_refs);
                }
                if let Some(o) = old {
                    if uid(o) != node.uid {
                        // Replaced under the same name: the old incarnation's dependents lost their owner.
                        self.enqueue_dependents(uid(o));
                    }
                }
                if !new_refs.is_empty() && (old.is_none() || old_refs != new_refs) {
                    self.enqueue(self.kind, &key, false);
                }
                if is_deleting(new) && (has_finalizer(new, FOREGROUND) || has_finalizer(new, ORPHAN)) {
                    self.enqueue(self.kind, &key, true);
                    if has_finalizer(new, FOREGROUND) {
                        self.enqueue_dependents(&node.uid);
                    }
                }
                let dropped: Vec<OwnerRef> =
                    old_refs.iter().filter(|r| !new_refs.contains(r)).cloned().collect();
                let (ns, _) = split_key(&key);
                self.enqueue_deleting_owners(&dropped, ns);
            }
            Change::Deleted(o) => {
                let key = key_of(o);
                let refs = owner_refs(o);
                let node = Node::of(self.kind, o);
                self.graph.lock().unwrap_or_else(|e| e.into_inner()).remove(&node, &refs);
                self.enqueue_dependents(&node.uid);
                let (ns, _) = split_key(&key);
                self.enqueue_deleting_owners(&refs, ns);
            }
        }
    }
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let kinds = Arc::new(Kinds::default());
    for g in MONITORED {
        kinds.push(*g, ctx.informers.get(*g));
    }
    let graph = Arc::new(Mutex::new(Graph::default()));
    let gc =
        Arc::new(GarbageCollector { client: ctx.client.clone(), kinds: kinds.clone(), graph: graph.clone() });
    let addr = Controller::new(gc, 8).start();
    let watcher = |kind: usize| Watcher {
        kind,
        ctx: ctx.clone(),
        kinds: kinds.clone(),
        graph: graph.clone(),
        addr: addr.clone(),
    };
    for kind in 0..MONITORED.len() {
        let w = watcher(kind);
        if let Some(inf) = kinds.informer(kind) {
            inf.on_change(Arc::new(move |c: &Change| w.handle(c)));
        }
    }
    monitor_custom_kinds(ctx, watcher(0));
}

/// Custom kinds join the graph when their CRD is established: the storage version of each
/// is watched like a monitored kind, as dependent and as owner (foreground and orphan
/// deletion included).
fn monitor_custom_kinds(ctx: &Ctx, template: Watcher) {
    let informers = ctx.informers.clone();
    let crds = ctx.informers.get(super::customresources::CRDS);
    crds.on_change(Arc::new(move |c: &Change| {
        let Change::Applied { new, .. } = c else { return };
        let spec = &new["spec"];
        let (group, plural) =
            (spec["group"].as_str().unwrap_or(""), spec["names"]["plural"].as_str().unwrap_or(""));
        let storage = spec["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["storage"].as_bool() == Some(true))
            .and_then(|v| v["name"].as_str())
            .unwrap_or("");
        // Installed in this process's registry by `customresources` (its handler runs first).
        let Some(res) = registry::find(group, storage, plural) else { return };
        let g = Gvr::new(res.group, res.version, res.plural);
        let inf = informers.get(g);
        let Some(kind) = template.kinds.push(g, inf.clone()) else { return };
        let w = Watcher {
            kind,
            ctx: template.ctx.clone(),
            kinds: template.kinds.clone(),
            graph: template.graph.clone(),
            addr: template.addr.clone(),
        };
        inf.on_change(Arc::new(move |c: &Change| w.handle(c)));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(uid_: &str, refs: Value) -> Value {
        json!({"metadata": {"name": "d", "namespace": "ns", "uid": uid_, "ownerReferences": refs}})
    }

    fn states(s: &[(&str, OwnerState)]) -> Vec<(String, OwnerState)> {
        s.iter().map(|(u, st)| (u.to_string(), *st)).collect()
    }

    #[test]
    fn all_owners_absent_deletes_in_background() {
        let d = decide_dependent(&states(&[("a", OwnerState::Absent)]), false, &[]);
        assert_eq!(d, DependentAction::Delete("Background"));
        let d = decide_dependent(&states(&[("a", OwnerState::Absent), ("b", OwnerState::Absent)]), true, &[]);
        assert_eq!(d, DependentAction::Delete("Background"));
        // The dependent's own finalizers choose the propagation.
        let d = decide_dependent(&states(&[("a", OwnerState::Absent)]), true, &[ORPHAN.to_string()]);
        assert_eq!(d, DependentAction::Delete("Orphan"));
    }

    #[test]
    fn a_live_owner_keeps_the_dependent_and_drops_dangling_references() {
        let d = decide_dependent(&states(&[("a", OwnerState::Solid)]), false, &[]);
        assert_eq!(d, DependentAction::Keep);
        let d = decide_dependent(
            &states(&[
                ("a", OwnerState::Solid),
                ("b", OwnerState::Absent),
                ("c", OwnerState::DeletingDependents),
            ]),
            false,
            &[],
        );
        assert_eq!(d, DependentAction::RemoveReferences(vec!["b".into(), "c".into()]));
        assert_eq!(decide_dependent(&[], false, &[]), DependentAction::Keep);
    }

    #[test]
    fn foreground_owner_deletes_dependents_and_cascades_foreground() {
        let d = decide_dependent(&states(&[("a", OwnerState::DeletingDependents)]), false, &[]);
        assert_eq!(d, DependentAction::Delete("Background"));
        let d = decide_dependent(&states(&[("a", OwnerState::DeletingDependents)]), true, &[]);
        assert_eq!(d, DependentAction::Delete("Foreground"));
    }

    #[test]
    fn patches_keep_other_references_and_finalizers() {
        let o = owned(
            "d1",
            json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "a", "uid": "ua"},
                   {"apiVersion": "v1", "kind": "ConfigMap", "name": "b", "uid": "ub", "blockOwnerDeletion": true}]),
        );
        let p = remove_references_patch(&o, &["ua".into()]).expect("patch");
        assert_eq!(p["metadata"]["ownerReferences"].as_array().map(Vec::len), Some(1));
        assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], "ub");
        assert_eq!(remove_references_patch(&o, &["zz".into()]), None);
        let p = remove_references_patch(&o, &["ua".into(), "ub".into()]).expect("patch");
        assert!(p["metadata"]["ownerReferences"].is_null());
        assert!(blocks(&o, "ub"));
        assert!(!blocks(&o, "ua"));

        let f = json!({"metadata": {"finalizers": ["example.com/x", "foregroundDeletion"]}});
        let p = remove_finalizer_patch(&f, FOREGROUND).expect("patch");
        assert_eq!(p["metadata"]["finalizers"], json!(["example.com/x"]));
        assert_eq!(remove_finalizer_patch(&f, ORPHAN), None);
        let only = json!({"metadata": {"finalizers": ["orphan"]}});
        assert!(remove_finalizer_patch(&only, ORPHAN).expect("patch")["metadata"]["finalizers"].is_null());
    }

    #[test]
    fn graph_tracks_dependents_by_owner_uid() {
        let mut g = Graph::default();
        let o = owned("d1", json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "a", "uid": "ua"}]));
        let n = Node::of(1, &o);
        g.add(&n, &owner_refs(&o));
        assert!(g.has_dependents("ua"));
        assert_eq!(g.dependents_of("ua"), vec![n.clone()]);
        g.remove(&n, &owner_refs(&o));
        assert!(!g.has_dependents("ua"));
        assert!(g.dependents.is_empty());
    }

    #[test]
    fn keys_and_resolution() {
        let k = owner_key(3, "ns/a");
        assert_eq!(parse_key(&k), Some((true, 3, "ns/a")));
        assert_eq!(parse_key(&dependent_key(0, "n1")), Some((false, 0, "n1")));
        assert_eq!(parse_key("x|y"), None);
        // Unknown kind indexes parse; the reconciler finds no informer for them.
        assert_eq!(parse_key("d999|y"), Some((false, 999, "y")));
        assert_eq!(resolve("apps/v1", "ReplicaSet"), Some((gvr::REPLICA_SETS, true)));
        assert_eq!(resolve("v1", "Node"), Some((gvr::NODES, false)));
        assert_eq!(resolve("example.com/v1", "Widget"), None);
        let r = OwnerRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "a".into(),
            uid: "u".into(),
            block: false,
        };
        assert_eq!(owner_location(&r, Some("ns")).map(|l| l.2), Some("ns/a".to_string()));
        assert_eq!(owner_location(&r, None), None);
        assert!(MONITORED.contains(&gvr::CONFIG_MAPS));
    }
}
