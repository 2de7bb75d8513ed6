//! The scheduler's view of the cluster: every node with the resources its pods request,
//! kept current from the informers, plus the pods this scheduler has assumed onto a node
//! while their binding is in flight (so a burst of decisions cannot overcommit a node).

use super::model::{
    labels_of, required_anti_affinity, Labels, NodeDef, PodInfo, PodTerm, Requests, Resources,
};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// A pod the scheduler accounts on a node.
#[derive(Debug, Clone)]
pub struct PodRecord {
    /// The node it is bound (or assumed) to.
    pub node: String,
    /// Namespace.
    pub namespace: String,
    /// UID.
    pub uid: String,
    /// Labels.
    pub labels: Labels,
    /// What it requests.
    pub requests: Requests,
    /// Its required anti-affinity terms (other pods must respect them too).
    pub anti_affinity: Vec<PodTerm>,
    /// Assumed by this scheduler; the binding is not observed yet.
    pub assumed: bool,
    /// Has a deletionTimestamp.
    pub terminating: bool,
    /// `spec.priority`.
    pub priority: i64,
}

/// The requests summed over a node's pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Requested resources.
    pub res: Resources,
    /// Requested CPU with defaults for containers requesting none.
    pub nonzero_cpu: i64,
    /// Requested memory with defaults for containers requesting none.
    pub nonzero_memory: i64,
    /// Number of pods.
    pub pods: i64,
}

impl Usage {
    /// Adds a pod's requests.
    pub fn add(&mut self, r: &Requests) {
        self.res.add(&r.res);
        self.nonzero_cpu = self.nonzero_cpu.saturating_add(r.nonzero_cpu);
        self.nonzero_memory = self.nonzero_memory.saturating_add(r.nonzero_memory);
        self.pods += 1;
    }

    /// Removes a pod's requests.
    pub fn sub(&mut self, r: &Requests) {
        self.res.sub(&r.res);
        self.nonzero_cpu = self.nonzero_cpu.saturating_sub(r.nonzero_cpu);
        self.nonzero_memory = self.nonzero_memory.saturating_sub(r.nonzero_memory);
        self.pods -= 1;
    }
}

/// One node: its definition (once the node informer has it) and what its pods use.
#[derive(Debug, Default)]
pub struct NodeState {
    /// The node's name.
    pub name: String,
    /// The node, `None` while only pods bound to it are known.
    pub def: Option<NodeDef>,
    /// Summed requests.
    pub usage: Usage,
    /// Keys of its pods.
    pub pods: HashSet<String>,
}

/// What a pod change did to the accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodEffect {
    /// Nothing the scheduler cares about.
    None,
    /// A pod now occupies a node (or changed labels there).
    Added,
    /// A pod left a node: room was freed.
    Freed,
}

/// The scheduler's cluster state.
#[derive(Debug, Default)]
pub struct Cache {
    /// Node slots (a slab: scans index it without hashing names).
    slots: Vec<NodeState>,
    /// Unused slots.
    free: Vec<usize>,
    /// Node name → slot.
    index: HashMap<String, usize>,
    /// Slots of the nodes with a definition, sorted by name: the scan order.
    order: Vec<usize>,
    /// Where the next scan starts (rotates so load spreads over all nodes).
    pub next_start: usize,
    pods: HashMap<String, PodRecord>,
    by_namespace: HashMap<String, HashSet<String>>,
    with_anti_affinity: HashSet<String>,
    /// Unbound pods nominated to a node by preemption: key → (node, requests, priority).
    nominated: HashMap<String, (String, Requests, i64)>,
    /// Pods this scheduler is evicting (key → uid): terminating to it before the informer
    /// shows their deletion.
    evicting: HashMap<String, String>,
}

fn is_terminal(pod: &Value) -> bool {
    matches!(
        pod.get("status").and_then(|s| s.get("phase")).and_then(Value::as_str),
        Some("Succeeded") | Some("Failed")
    )
}

/// The node a pod is bound to, if any.
pub fn node_name(pod: &Value) -> Option<&str> {
    pod.get("spec").and_then(|s| s.get("nodeName")).and_then(Value::as_str).filter(|n| !n.is_empty())
}

/// Whether the pod is being deleted.
pub fn is_terminating(pod: &Value) -> bool {
    pod.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|v| !v.is_null())
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Cache {
        Cache::default()
    }

    /// The slot of `name`, made if missing.
    fn slot_for(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let st = NodeState { name: name.to_string(), ..NodeState::default() };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = st;
                i
            }
            None => {
                self.slots.push(st);
                self.slots.len() - 1
            }
        };
        self.index.insert(name.to_string(), i);
        i
    }

    /// Frees the slot if it holds neither a node nor pods.
    fn release(&mut self, i: usize) {
        let st = &mut self.slots[i];
        if st.def.is_none() && st.pods.is_empty() {
            self.index.remove(&st.name);
            *st = NodeState::default();
            self.free.push(i);
        }
    }

    fn order_position(&self, name: &str) -> Result<usize, usize> {
        self.order.binary_search_by(|&i| self.slots[i].name.as_str().cmp(name))
    }

    /// Records (or clears) the node a pending pod was nominated to by preemption.
    pub fn nominate(&mut self, key: &str, nomination: Option<(String, Requests, i64)>) {
        match nomination {
            Some(n) => {
                self.nominated.insert(key.to_string(), n);
            }
            None => {
                self.nominated.remove(key);
            }
        }
    }

    /// `st` as `pod` must see it: with the requests of the other pods nominated to it that
    /// are at least as important (upstream's `addGENominatedPods`), so the room preemption
    /// freed is kept for its preemptor. `None` when no such pod is nominated there.
    pub fn with_nominated(&self, st: &NodeState, pod: &PodInfo) -> Option<NodeState> {
        let mut out: Option<NodeState> = None;
        for (k, (node, req, prio)) in &self.nominated {
            if *node != st.name || *k == pod.key || *prio < pod.priority {
                continue;
            }
            let o = out.get_or_insert_with(|| NodeState {
                name: st.name.clone(),
                def: None,
                usage: st.usage.clone(),
                pods: st.pods.clone(),
            });
            o.usage.add(req);
        }
        out
    }

    /// Adds or updates a node; true if anything the scheduler decides on changed.
    pub fn set_node(&mut self, def: NodeDef) -> bool {
        let i = self.slot_for(&def.name);
        let st = &mut self.slots[i];
        if st.def.as_ref() == Some(&def) {
            return false;
        }
        let new = st.def.is_none();
        let name = def.name.clone();
        st.def = Some(def);
        if new {
            if let Err(pos) = self.order_position(&name) {
                self.order.insert(pos, i);
            }
        }
        true
    }

    /// Removes a node (its pods stay accounted until they go).
    pub fn remove_node(&mut self, name: &str) {
        if let Ok(pos) = self.order_position(name) {
            self.order.remove(pos);
        }
        if let Some(&i) = self.index.get(name) {
            self.slots[i].def = None;
            self.release(i);
        }
    }

    /// The scan order: slots of the defined nodes, by name.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// A node by slot.
    pub fn slot(&self, i: usize) -> Option<&NodeState> {
        self.slots.get(i)
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.index.get(name).and_then(|&i| self.slots.get(i))
    }

    /// Every node with a definition.
    pub fn nodes(&self) -> impl Iterator<Item = (&NodeDef, &NodeState)> {
        self.order.iter().filter_map(|&i| self.slots.get(i)).filter_map(|st| st.def.as_ref().map(|d| (d, st)))
    }

    /// Whether this scheduler assumed the pod and awaits its binding.
    pub fn is_assumed(&self, key: &str) -> bool {
        self.pods.get(key).is_some_and(|p| p.assumed)
    }

    /// Accounted pods of a namespace.
    pub fn pods_in(&self, ns: &str) -> impl Iterator<Item = &PodRecord> {
        self.by_namespace.get(ns).into_iter().flatten().filter_map(|k| self.pods.get(k))
    }

    /// One accounted pod.
    pub fn pod(&self, key: &str) -> Option<&PodRecord> {
        self.pods.get(key)
    }

    /// Every accounted pod.
    pub fn all_pods(&self) -> impl Iterator<Item = &PodRecord> {
        self.pods.values()
    }

    /// Pods with required anti-affinity terms.
    pub fn pods_with_anti_affinity(&self) -> impl Iterator<Item = &PodRecord> {
        self.with_anti_affinity.iter().filter_map(|k| self.pods.get(k))
    }

    fn insert(&mut self, key: String, rec: PodRecord) {
        let i = self.slot_for(&rec.node);
        let st = &mut self.slots[i];
        st.usage.add(&rec.requests);
        st.pods.insert(key.clone());
        self.by_namespace.entry(rec.namespace.clone()).or_default().insert(key.clone());
        if rec.anti_affinity.is_empty() {
            self.with_anti_affinity.remove(&key);
        } else {
            self.with_anti_affinity.insert(key.clone());
        }
        self.pods.insert(key, rec);
    }

    /// Stops accounting a pod.
    pub fn remove_pod(&mut self, key: &str) -> Option<PodRecord> {
        let rec = self.pods.remove(key)?;
        if let Some(&i) = self.index.get(&rec.node) {
            let st = &mut self.slots[i];
            st.usage.sub(&rec.requests);
            st.pods.remove(key);
            self.release(i);
        }
        if let Some(set) = self.by_namespace.get_mut(&rec.namespace) {
            set.remove(key);
            if set.is_empty() {
                self.by_namespace.remove(&rec.namespace);
            }
        }
        self.with_anti_affinity.remove(key);
        Some(rec)
    }

    /// Accounts `pod` on `node` before its binding is observed.
    pub fn assume(&mut self, pod: &PodInfo, anti_affinity: Vec<PodTerm>, node: &str) {
        self.remove_pod(&pod.key);
        let rec = PodRecord {
            node: node.to_string(),
            namespace: pod.namespace.clone(),
            uid: pod.uid.clone(),
            labels: pod.labels.clone(),
            requests: pod.requests.clone(),
            anti_affinity,
            assumed: true,
            terminating: false,
            priority: pod.priority,
        };
        self.insert(pod.key.clone(), rec);
    }

    /// Drops an assumption (the binding failed).
    pub fn forget(&mut self, key: &str) {
        if self.is_assumed(key) {
            self.remove_pod(key);
        }
    }

    /// Applies an observed pod (from the informer).
    pub fn observe_pod(&mut self, key: &str, pod: &Value) -> PodEffect {
        let uid = pod.get("metadata").and_then(|m| m.get("uid")).and_then(Value::as_str).unwrap_or("");
        let node = match node_name(pod) {
            Some(n) if !is_terminal(pod) => n,
            _ => {
                // Unbound (an assumption stays until its binding shows up) or finished.
                let keep = self.pods.get(key).is_some_and(|r| r.assumed && r.uid == uid && !is_terminal(pod));
                if !keep && self.remove_pod(key).is_some() {
                    return PodEffect::Freed;
                }
                return PodEffect::None;
            }
        };
        let spec = pod.get("spec").unwrap_or(&Value::Null);
        let rec = PodRecord {
            node: node.to_string(),
            namespace: pod
                .get("metadata")
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            uid: uid.to_string(),
            labels: labels_of(pod),
            requests: super::model::pod_requests(spec),
            anti_affinity: required_anti_affinity(pod),
            assumed: false,
            terminating: is_terminating(pod) || self.evicting.get(key).is_some_and(|u| u == uid),
            priority: spec.get("priority").and_then(Value::as_i64).unwrap_or(0),
        };
        let effect = match self.pods.get(key) {
            None => PodEffect::Added,
            Some(old) if old.node != rec.node || old.requests != rec.requests || old.labels != rec.labels => {
                PodEffect::Freed
            }
            Some(old)
                if !old.assumed
                    && old.uid == rec.uid
                    && old.terminating == rec.terminating
                    && old.priority == rec.priority
                    && old.anti_affinity == rec.anti_affinity =>
            {
                // Nothing the scheduler accounts changed.
                return PodEffect::None;
            }
            // An assumption confirmed, or the pod started terminating.
            Some(_) => PodEffect::None,
        };
        self.remove_pod(key);
        self.insert(key.to_string(), rec);
        effect
    }

    /// Marks a pod this scheduler is evicting as terminating before the informer shows its
    /// deletion, so the next preemption does not pick it (or its node's room) again.
    pub fn mark_evicting(&mut self, key: &str) {
        if let Some(r) = self.pods.get_mut(key) {
            r.terminating = true;
            self.evicting.insert(key.to_string(), r.uid.clone());
        }
    }

    /// Undoes [`Cache::mark_evicting`] (its deletion failed).
    pub fn unmark_evicting(&mut self, key: &str) {
        if self.evicting.remove(key).is_some() {
            if let Some(r) = self.pods.get_mut(key) {
                r.terminating = false;
            }
        }
    }

    /// Applies a pod deletion; true if it was accounted on a node.
    pub fn delete_pod(&mut self, key: &str) -> bool {
        self.evicting.remove(key);
        self.remove_pod(key).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> NodeDef {
        NodeDef::parse(&json!({"metadata": {"name": name},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}))
    }

    fn pod(name: &str, node: Option<&str>, cpu: &str) -> Value {
        let mut p = json!({"metadata": {"name": name, "namespace": "d", "uid": format!("u-{name}")},
            "spec": {"containers": [{"resources": {"requests": {"cpu": cpu}}}]}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        p
    }

    #[test]
    fn accounts_bound_pods_and_assumptions() {
        let mut c = Cache::new();
        assert!(c.set_node(node("n1")));
        assert!(!c.set_node(node("n1")));
        assert_eq!(c.observe_pod("d/a", &pod("a", Some("n1"), "1")), PodEffect::Added);
        assert_eq!(c.node("n1").map(|n| n.usage.res.cpu), Some(1000));
        // Assume b onto n1; an unbound update keeps the assumption, the binding confirms it.
        let info = PodInfo::parse(&pod("b", None, "500m"));
        c.assume(&info, Vec::new(), "n1");
        assert_eq!(c.node("n1").map(|n| n.usage.res.cpu), Some(1500));
        c.observe_pod("d/b", &pod("b", None, "500m"));
        assert!(c.is_assumed("d/b"));
        c.observe_pod("d/b", &pod("b", Some("n1"), "500m"));
        assert!(!c.is_assumed("d/b"));
        assert_eq!(c.node("n1").map(|n| (n.usage.res.cpu, n.usage.pods)), Some((1500, 2)));
        // A finished pod frees its room; a deleted one too.
        let mut done = pod("a", Some("n1"), "1");
        done["status"] = json!({"phase": "Succeeded"});
        assert_eq!(c.observe_pod("d/a", &done), PodEffect::Freed);
        assert!(c.delete_pod("d/b"));
        assert_eq!(c.node("n1").map(|n| n.usage.clone()), Some(Usage::default()));
        // A forgotten assumption gives its room back.
        c.assume(&info, Vec::new(), "n1");
        c.forget("d/b");
        assert_eq!(c.node("n1").map(|n| n.usage.pods), Some(0));
    }

    #[test]
    fn pods_on_unknown_nodes() {
        let mut c = Cache::new();
        c.observe_pod("d/a", &pod("a", Some("later"), "1"));
        assert!(c.order().is_empty());
        c.set_node(node("later"));
        assert_eq!(c.order().len(), 1);
        assert_eq!(c.nodes().map(|(d, _)| d.name.clone()).collect::<Vec<_>>(), ["later"]);
        assert_eq!(c.node("later").map(|n| n.usage.res.cpu), Some(1000));
        c.remove_node("later");
        assert!(c.order().is_empty());
        c.delete_pod("d/a");
        assert!(c.node("later").is_none());
        // Slots are reused; the scan stays sorted by name.
        for n in ["b", "c", "a"] {
            c.set_node(node(n));
        }
        let names: Vec<String> = c.nodes().map(|(d, _)| d.name.clone()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        c.remove_node("b");
        let names: Vec<String> = c.nodes().map(|(d, _)| d.name.clone()).collect();
        assert_eq!(names, ["a", "c"]);
    }
}
