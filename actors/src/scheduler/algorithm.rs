//! One scheduling decision: filter the nodes, score the feasible ones, pick the best.
//!
//! The filters and scores follow upstream's default plugins: NodeUnschedulable,
//! TaintToleration, NodeAffinity, NodeResourcesFit, PodTopologySpread and
//! InterPodAffinity filter; NodeResourcesFit (least allocated), BalancedAllocation,
//! NodeAffinity, TaintToleration, PodTopologySpread and InterPodAffinity score, with
//! upstream's weights. As upstream, a scan stops once enough feasible nodes are found
//! (`percentageOfNodesToScore`, adaptive) and the next scan starts where it stopped.

use super::cache::{Cache, NodeState};
use super::model::{tolerated, Labels, NodeDef, PodInfo, Spread, Taint, TAINT_UNSCHEDULABLE};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The highest score one plugin gives.
pub const MAX_SCORE: i64 = 100;

const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
const MIN_FEASIBLE_PERCENTAGE: usize = 5;

const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
const REASON_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
const REASON_TOO_MANY_PODS: &str = "Too many pods";
const REASON_SPREAD: &str = "node(s) didn't match pod topology spread constraints";
const REASON_SPREAD_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";
const REASON_AFFINITY: &str = "node(s) didn't match pod affinity rules";
const REASON_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
const REASON_EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

/// A small fast PRNG (xorshift64*) for tie-breaks.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Why no node fits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FitError {
    /// Nodes considered.
    pub total: usize,
    /// How many nodes failed for each reason.
    pub reasons: BTreeMap<String, usize>,
    /// Nodes where evicting pods could help (resources, anti-affinity, skew).
    pub resolvable: usize,
    /// Nodes where it could not (taints, affinity, cordon...).
    pub unresolvable: usize,
    /// The pod never preempts.
    pub never_preempt: bool,
}

impl FitError {
    /// Upstream's message: `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't
    /// match Pod's node affinity/selector. preemption: 0/3 nodes are available: 1 No
    /// preemption victims found for incoming pod, 2 Preemption is not helpful for
    /// scheduling.`
    pub fn message(&self) -> String {
        if self.total == 0 {
            return "no nodes available to schedule pods".to_string();
        }
        let mut parts: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        let mut msg = format!("0/{} nodes are available: {}.", self.total, parts.join(", "));
        if self.never_preempt {
            msg.push_str(" preemption: not eligible due to preemptionPolicy=Never.");
            return msg;
        }
        let mut pre = Vec::new();
        if self.resolvable > 0 {
            pre.push(format!("{} No preemption victims found for incoming pod", self.resolvable));
        }
        if self.unresolvable > 0 {
            pre.push(format!("{} Preemption is not helpful for scheduling", self.unresolvable));
        }
        pre.sort();
        msg.push_str(&format!(" preemption: 0/{} nodes are available: {}.", self.total, pre.join(", ")));
        msg
    }
}

/// Why one node does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfit {
    /// Reasons (resource fit may give several).
    pub reasons: Vec<Cow<'static, str>>,
    /// Preemption cannot help.
    pub unresolvable: bool,
}

impl Unfit {
    fn hard(r: impl Into<Cow<'static, str>>) -> Unfit {
        Unfit { reasons: vec![r.into()], unresolvable: true }
    }

    fn soft(r: impl Into<Cow<'static, str>>) -> Unfit {
        Unfit { reasons: vec![r.into()], unresolvable: false }
    }
}

/// A spread constraint's domain counts, computed once per decision.
#[derive(Debug)]
struct SpreadState {
    counts: HashMap<String, i64>,
    /// The smallest count (0 when fewer domains than `minDomains`).
    min: i64,
    self_match: i64,
    /// Upstream's `topologyNormalizingWeight`: log(domains + 2).
    weight: f64,
}

/// Per-decision precomputation (upstream's PreFilter/PreScore state).
#[derive(Debug, Default)]
pub struct PreState {
    spread: Vec<SpreadState>,
    /// Per required affinity term: topology values holding a matching pod.
    affinity: Vec<HashSet<String>>,
    /// No pod matches any affinity term but the pod matches its own terms: any node
    /// with the topology keys will do (upstream's first-pod special case).
    affinity_self_ok: bool,
    /// Per required anti-affinity term: topology values holding a matching pod.
    anti: Vec<HashSet<String>>,
    /// (topology key, value) pairs where an existing pod's anti-affinity forbids this pod.
    existing_anti: HashMap<String, HashSet<String>>,
    /// (topology key, value) → preferred pod affinity weight.
    preferred: HashMap<(usize, String), i64>,
}

fn node_matches_spread_policies(pod: &PodInfo, s: &Spread, node: &NodeDef) -> bool {
    (!s.honor_affinity || pod.matches_node_affinity(node))
        && (!s.honor_taints || pod.untolerated_taint(node).is_none())
}

impl PreState {
    /// Computes what the filters and scores need about other pods.
    pub fn compute(cache: &Cache, pod: &PodInfo, ns_labels: &dyn Fn(&str) -> Labels) -> PreState {
        let mut st = PreState::default();
        let hard_keys: Vec<&str> =
            pod.spread.iter().filter(|s| s.hard).map(|s| s.topology_key.as_str()).collect();
        for s in &pod.spread {
            // The domain of every eligible node (a node must carry all hard keys).
            let mut domain_of: HashMap<&str, &str> = HashMap::new();
            let mut counts: HashMap<String, i64> = HashMap::new();
            for (def, _) in cache.nodes() {
                let Some(v) = def.labels.get(&s.topology_key) else { continue };
                if s.hard && !hard_keys.iter().all(|k| def.labels.contains_key(*k)) {
                    continue;
                }
                if !node_matches_spread_policies(pod, s, def) {
                    continue;
                }
                domain_of.insert(def.name.as_str(), v.as_str());
                counts.entry(v.clone()).or_insert(0);
            }
            for p in cache.pods_in(&pod.namespace) {
                if p.terminating || !s.counts(&p.labels) {
                    continue;
                }
                if let Some(v) = domain_of.get(p.node.as_str()) {
                    if let Some(c) = counts.get_mut(*v) {
                        *c += 1;
                    }
                }
            }
            let domains = counts.len() as i64;
            let min = if domains < s.min_domains { 0 } else { counts.values().copied().min().unwrap_or(0) };
            st.spread.push(SpreadState {
                min,
                self_match: i64::from(s.counts(&pod.labels)),
                weight: ((counts.len() + 2) as f64).ln(),
                counts,
            });
        }
        let node_value = |node: &str, key: &str| -> Option<String> {
            cache.node(node).and_then(|n| n.def.as_ref()).and_then(|d| d.labels.get(key)).cloned()
        };
        let matching = |term: &super::model::PodTerm| -> HashSet<String> {
            let mut values = HashSet::new();
            let mut visit = |p: &super::cache::PodRecord| {
                if term.matches(&p.namespace, &p.labels, ns_labels) {
                    if let Some(v) = node_value(&p.node, &term.topology_key) {
                        values.insert(v);
                    }
                }
            };
            if term.namespaces.selector.is_none() {
                for ns in &term.namespaces.names {
                    cache.pods_in(ns).for_each(&mut visit);
                }
            } else {
                cache.all_pods().for_each(&mut visit);
            }
            values
        };
        st.affinity = pod.affinity.iter().map(matching).collect();
        st.affinity_self_ok = !pod.affinity.is_empty()
            && st.affinity.iter().all(HashSet::is_empty)
            && pod.affinity.iter().all(|t| t.matches(&pod.namespace, &pod.labels, ns_labels));
        st.anti = pod.anti_affinity.iter().map(matching).collect();
        for p in cache.pods_with_anti_affinity() {
            for t in &p.anti_affinity {
                if t.matches(&pod.namespace, &pod.labels, ns_labels) {
                    if let Some(v) = node_value(&p.node, &t.topology_key) {
                        st.existing_anti.entry(t.topology_key.clone()).or_default().insert(v);
                    }
                }
            }
        }
        for (i, (w, t)) in pod.preferred_pod_terms.iter().enumerate() {
            for v in matching(t) {
                *st.preferred.entry((i, v)).or_insert(0) += w;
            }
        }
        st
    }
}

/// Whether `pod` fits `node` (upstream's filter plugins, in their order).
pub fn filter(pod: &PodInfo, def: &NodeDef, st: &NodeState, pre: &PreState) -> Result<(), Unfit> {
    // NodeUnschedulable.
    if def.unschedulable {
        let cordon =
            Taint { key: TAINT_UNSCHEDULABLE.into(), value: String::new(), effect: "NoSchedule".into() };
        if !tolerated(&pod.tolerations, &cordon) {
            return Err(Unfit::hard(REASON_UNSCHEDULABLE));
        }
    }
    // TaintToleration.
    if let Some(t) = pod.untolerated_taint(def) {
        return Err(Unfit::hard(format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value)));
    }
    // NodeAffinity (with nodeSelector).
    if !pod.matches_node_affinity(def) {
        return Err(Unfit::hard(REASON_NODE_AFFINITY));
    }
    // NodeResourcesFit.
    let mut reasons: Vec<Cow<'static, str>> = Vec::new();
    let (req, used, alloc) = (&pod.requests.res, &st.usage.res, &def.allocatable);
    if st.usage.pods + 1 > def.pods {
        reasons.push(REASON_TOO_MANY_PODS.into());
    }
    let short = |want: i64, used: i64, have: i64| want > 0 && want > have.saturating_sub(used);
    if short(req.cpu, used.cpu, alloc.cpu) {
        reasons.push("Insufficient cpu".into());
    }
    if short(req.memory, used.memory, alloc.memory) {
        reasons.push("Insufficient memory".into());
    }
    if short(req.ephemeral, used.ephemeral, alloc.ephemeral) {
        reasons.push("Insufficient ephemeral-storage".into());
    }
    for (name, want) in &req.scalars {
        if short(*want, used.scalar(name), alloc.scalar(name)) {
            reasons.push(format!("Insufficient {name}").into());
        }
    }
    if !reasons.is_empty() {
        return Err(Unfit { reasons, unresolvable: false });
    }
    // VolumeBinding.
    if let Some(v) = &pod.volumes {
        v.check(def).map_err(Unfit::hard)?;
    }
    // PodTopologySpread.
    for (s, ss) in pod.spread.iter().zip(&pre.spread) {
        if !s.hard {
            continue;
        }
        let Some(v) = def.labels.get(&s.topology_key) else {
            return Err(Unfit::hard(REASON_SPREAD_LABEL));
        };
        let count = ss.counts.get(v).copied().unwrap_or(0);
        if count + ss.self_match - ss.min > s.max_skew {
            return Err(Unfit::soft(REASON_SPREAD));
        }
    }
    // InterPodAffinity.
    for (t, values) in pod.affinity.iter().zip(&pre.affinity) {
        let ok = match def.labels.get(&t.topology_key) {
            None => false,
            Some(v) => pre.affinity_self_ok || values.contains(v),
        };
        if !ok {
            return Err(Unfit::hard(REASON_AFFINITY));
        }
    }
    for (t, values) in pod.anti_affinity.iter().zip(&pre.anti) {
        if def.labels.get(&t.topology_key).is_some_and(|v| values.contains(v)) {
            return Err(Unfit::soft(REASON_ANTI_AFFINITY));
        }
    }
    for (key, values) in &pre.existing_anti {
        if def.labels.get(key).is_some_and(|v| values.contains(v)) {
            return Err(Unfit::soft(REASON_EXISTING_ANTI_AFFINITY));
        }
    }
    Ok(())
}

/// The raw scores of one feasible node, before normalisation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Raw {
    fit: i64,
    balanced: i64,
    node_affinity: i64,
    taints: i64,
    /// `None`: the node lacks a ScheduleAnyway topology key (scores 0).
    spread: Option<f64>,
    pod_affinity: i64,
}

/// NodeResourcesFit's LeastAllocated score (CPU and memory weighted equally).
pub fn least_allocated(pod: &PodInfo, def: &NodeDef, st: &NodeState) -> i64 {
    let one = |requested: i64, alloc: i64| {
        if alloc <= 0 || requested > alloc {
            0
        } else {
            (alloc - requested) * MAX_SCORE / alloc
        }
    };
    let cpu = one(st.usage.nonzero_cpu.saturating_add(pod.requests.nonzero_cpu), def.allocatable.cpu);
    let mem =
        one(st.usage.nonzero_memory.saturating_add(pod.requests.nonzero_memory), def.allocatable.memory);
    (cpu + mem) / 2
}

/// BalancedAllocation: favours nodes whose CPU and memory fractions stay close.
pub fn balanced(pod: &PodInfo, def: &NodeDef, st: &NodeState) -> i64 {
    let frac = |requested: i64, alloc: i64| {
        if alloc <= 0 {
            0.0
        } else {
            (requested as f64 / alloc as f64).min(1.0)
        }
    };
    let cpu = frac(st.usage.res.cpu.saturating_add(pod.requests.res.cpu), def.allocatable.cpu);
    let mem = frac(st.usage.res.memory.saturating_add(pod.requests.res.memory), def.allocatable.memory);
    let std = (cpu - mem).abs() / 2.0;
    ((1.0 - std) * MAX_SCORE as f64) as i64
}

fn raw_scores(pod: &PodInfo, def: &NodeDef, st: &NodeState, pre: &PreState) -> Raw {
    let node_affinity = pod.preferred_terms.iter().filter(|(_, t)| t.matches(def)).map(|(w, _)| *w).sum();
    let taints = def
        .taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(&pod.tolerations, t))
        .count() as i64;
    let mut spread = Some(0.0);
    for (s, ss) in pod.spread.iter().zip(&pre.spread) {
        if s.hard {
            continue;
        }
        match def.labels.get(&s.topology_key) {
            Some(v) => {
                let c = ss.counts.get(v).copied().unwrap_or(0);
                if let Some(x) = spread.as_mut() {
                    *x += (c + s.max_skew - 1) as f64 * ss.weight;
                }
            }
            None => spread = None,
        }
    }
    let pod_affinity = pod
        .preferred_pod_terms
        .iter()
        .enumerate()
        .filter_map(|(i, (_, t))| {
            let v = def.labels.get(&t.topology_key)?;
            pre.preferred.get(&(i, v.clone())).copied()
        })
        .sum();
    Raw {
        fit: least_allocated(pod, def, st),
        balanced: balanced(pod, def, st),
        node_affinity,
        taints,
        spread,
        pod_affinity,
    }
}

/// Weighted total scores of the feasible nodes (upstream weights: fit 1, balanced 1,
/// node affinity 2, taints 3, spread 2, pod affinity 2).
fn total_scores(pod: &PodInfo, raws: &[Raw]) -> Vec<i64> {
    let max_aff = raws.iter().map(|r| r.node_affinity).max().unwrap_or(0);
    let max_taints = raws.iter().map(|r| r.taints).max().unwrap_or(0);
    let has_soft_spread = pod.spread.iter().any(|s| !s.hard);
    let spread_vals: Vec<f64> = raws.iter().filter_map(|r| r.spread).collect();
    let (min_sp, max_sp) =
        spread_vals.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let min_pa = raws.iter().map(|r| r.pod_affinity).min().unwrap_or(0);
    let max_pa = raws.iter().map(|r| r.pod_affinity).max().unwrap_or(0);
    raws.iter()
        .map(|r| {
            let aff = if max_aff > 0 { r.node_affinity * MAX_SCORE / max_aff } else { 0 };
            let taints =
                if max_taints > 0 { MAX_SCORE - r.taints * MAX_SCORE / max_taints } else { MAX_SCORE };
            let spread = if !has_soft_spread {
                0
            } else {
                match r.spread {
                    None => 0,
                    Some(_) if max_sp <= 0.0 => MAX_SCORE,
                    Some(s) => (MAX_SCORE as f64 * (max_sp + min_sp - s) / max_sp) as i64,
                }
            };
            let pa =
                if max_pa > min_pa { (r.pod_affinity - min_pa) * MAX_SCORE / (max_pa - min_pa) } else { 0 };
            r.fit + r.balanced + 2 * aff + 3 * taints + 2 * spread + 2 * pa
        })
        .collect()
}

/// How many feasible nodes to find before scoring (upstream's adaptive percentage).
pub fn feasible_to_find(all: usize) -> usize {
    if all < MIN_FEASIBLE_NODES_TO_FIND {
        return all;
    }
    let pct = 50usize.saturating_sub(all / 125).max(MIN_FEASIBLE_PERCENTAGE);
    (all * pct / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// Picks a node for `pod`, or says why none fits.
pub fn schedule(
    cache: &mut Cache,
    pod: &PodInfo,
    ns_labels: &dyn Fn(&str) -> Labels,
    rng: &mut Rng,
) -> Result<String, FitError> {
    let n = cache.order().len();
    let mut err = FitError { total: n, never_preempt: pod.never_preempt, ..FitError::default() };
    if n == 0 {
        return Err(err);
    }
    let pre = PreState::compute(cache, pod, ns_labels);
    let want = feasible_to_find(n);
    let start = cache.next_start % n;
    let mut feasible: Vec<(&NodeDef, &NodeState)> = Vec::with_capacity(want.min(n));
    let mut processed = 0;
    for i in 0..n {
        processed = i + 1;
        let Some(st) = cache.slot(cache.order()[(start + i) % n]) else { continue };
        let Some(def) = st.def.as_ref() else { continue };
        let seen = cache.with_nominated(st, pod);
        match filter(pod, def, seen.as_ref().unwrap_or(st), &pre) {
            Ok(()) => {
                feasible.push((def, st));
                if feasible.len() >= want {
                    break;
                }
            }
            Err(u) => {
                for r in u.reasons {
                    *err.reasons.entry(r.into_owned()).or_insert(0) += 1;
                }
                if u.unresolvable {
                    err.unresolvable += 1;
                } else {
                    err.resolvable += 1;
                }
            }
        }
    }
    if feasible.is_empty() {
        cache.next_start = (start + processed) % n;
        return Err(err);
    }
    let raws: Vec<Raw> = feasible.iter().map(|(d, s)| raw_scores(pod, d, s, &pre)).collect();
    let totals = total_scores(pod, &raws);
    let mut best = 0;
    let mut ties = 0u64;
    for (i, &score) in totals.iter().enumerate() {
        if i == 0 || score > totals[best] {
            best = i;
            ties = 1;
        } else if score == totals[best] {
            ties += 1;
            if rng.below(ties) == 0 {
                best = i;
            }
        }
    }
    let chosen = feasible[best].0.name.clone();
    cache.next_start = (start + processed) % n;
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn node(name: &str, cpu: &str, labels: Value, taints: Value) -> NodeDef {
        NodeDef::parse(&json!({"metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": cpu, "memory": "32Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}))
    }

    fn hostnode(name: &str) -> NodeDef {
        node(
            name,
            "8",
            json!({"kubernetes.io/hostname": name, "zone": if name < "n2" { "a" } else { "b" }}),
            json!([]),
        )
    }

    fn pod(name: &str, spec: Value) -> PodInfo {
        PodInfo::parse(
            &json!({"metadata": {"name": name, "namespace": "d", "uid": name, "labels": {"app": "web"}},
            "spec": spec}),
        )
    }

    fn cpu_pod(name: &str, cpu: &str) -> PodInfo {
        pod(name, json!({"containers": [{"resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]}))
    }

    fn no_ns(_: &str) -> Labels {
        Labels::new()
    }

    fn cluster(nodes: Vec<NodeDef>) -> Cache {
        let mut c = Cache::new();
        for n in nodes {
            c.set_node(n);
        }
        c
    }

    fn place(c: &mut Cache, p: &PodInfo) -> Result<String, FitError> {
        let mut rng = Rng::new(7);
        let r = schedule(c, p, &no_ns, &mut rng);
        if let Ok(n) = &r {
            c.assume(p, Vec::new(), n);
        }
        r
    }

    #[test]
    fn resource_fit_and_message() {
        let mut c = cluster(vec![
            node("n0", "1", json!({"disk": "ssd"}), json!([])),
            node("n1", "8", json!({}), json!([])),
            node("n2", "8", json!({}), json!([])),
        ]);
        let big = pod(
            "big",
            json!({"nodeSelector": {"disk": "ssd"},
            "containers": [{"resources": {"requests": {"cpu": "2"}}}]}),
        );
        let e = place(&mut c, &big).err().unwrap_or_default();
        assert_eq!(
            e.message(),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector. \
             preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, \
             2 Preemption is not helpful for scheduling."
        );
        // Assumed pods count: two 3-cpu pods fill each 8-cpu node, a fifth fits nowhere,
        // a 2-cpu pod still does.
        for i in 0..4 {
            assert!(place(&mut c, &cpu_pod(&format!("p{i}"), "3")).is_ok());
        }
        let e = place(&mut c, &cpu_pod("p4", "3")).err().unwrap_or_default();
        assert_eq!(e.reasons.get("Insufficient cpu"), Some(&3));
        assert!(place(&mut c, &cpu_pod("p5", "2")).is_ok());
    }

    #[test]
    fn too_many_pods_and_no_nodes() {
        let mut c = cluster(vec![NodeDef::parse(&json!({"metadata": {"name": "tiny"},
            "status": {"allocatable": {"cpu": "8", "memory": "1Gi", "pods": "1"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}))]);
        assert!(place(&mut c, &pod("a", json!({"containers": [{}]}))).is_ok());
        let e = place(&mut c, &pod("b", json!({"containers": [{}]}))).err().unwrap_or_default();
        assert_eq!(e.reasons.get("Too many pods"), Some(&1));
        let e = place(&mut Cache::new(), &pod("c", json!({}))).err().unwrap_or_default();
        assert_eq!(e.message(), "no nodes available to schedule pods");
    }

    #[test]
    fn taints_cordon_and_readiness() {
        let tainted =
            node("t", "8", json!({}), json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]));
        let mut c = cluster(vec![tainted.clone()]);
        let e = place(&mut c, &pod("a", json!({}))).err().unwrap_or_default();
        assert_eq!(e.reasons.get("node(s) had untolerated taint {dedicated: gpu}"), Some(&1));
        assert_eq!(e.unresolvable, 1);
        let tol = pod(
            "b",
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
        );
        assert_eq!(place(&mut c, &tol).ok().as_deref(), Some("t"));
        let all = pod("c", json!({"tolerations": [{"operator": "Exists"}]}));
        assert!(place(&mut c, &all).is_ok());
        // PreferNoSchedule only lowers the score.
        let mut c = cluster(vec![
            node("a", "8", json!({}), json!([{"key": "x", "effect": "PreferNoSchedule"}])),
            node("b", "8", json!({}), json!([])),
        ]);
        for i in 0..5 {
            let p = pod(&format!("p{i}"), json!({}));
            assert_eq!(place(&mut c, &p).ok().as_deref(), Some("b"));
        }
        // Cordoned and not-ready nodes are out.
        let mut cordoned = node("k", "8", json!({}), json!([]));
        cordoned.unschedulable = true;
        let not_ready = NodeDef::parse(&json!({"metadata": {"name": "nr"},
            "status": {"allocatable": {"cpu": "8", "memory": "8Gi", "pods": "10"}}}));
        let mut c = cluster(vec![cordoned, not_ready]);
        let e = place(&mut c, &pod("a", json!({}))).err().unwrap_or_default();
        assert_eq!(e.reasons.get("node(s) were unschedulable"), Some(&1));
        assert_eq!(e.reasons.get("node(s) had untolerated taint {node.kubernetes.io/not-ready: }"), Some(&1));
    }

    #[test]
    fn anti_affinity_spreads_over_hosts() {
        let mut c = cluster(vec![hostnode("n0"), hostnode("n1"), hostnode("n2")]);
        let spec = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        let mut seen = HashSet::new();
        for i in 0..3 {
            let p = pod(&format!("w{i}"), spec.clone());
            let anti = p.anti_affinity.clone();
            let mut rng = Rng::new(i + 1);
            let n = schedule(&mut c, &p, &no_ns, &mut rng).unwrap_or_default();
            c.assume(&p, anti, &n);
            seen.insert(n);
        }
        assert_eq!(seen.len(), 3);
        let e = place(&mut c, &pod("w3", spec)).err().unwrap_or_default();
        assert_eq!(e.reasons.get(REASON_ANTI_AFFINITY), Some(&3));
        // The placed pods' own anti-affinity keeps other matching pods off too.
        let e = place(&mut c, &pod("plain", json!({}))).err().unwrap_or_default();
        assert_eq!(e.reasons.get(REASON_EXISTING_ANTI_AFFINITY), Some(&3));
    }

    #[test]
    fn pod_affinity_follows_matching_pods() {
        let mut c = cluster(vec![hostnode("n0"), hostnode("n1"), hostnode("n2")]);
        let spec = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}]}}});
        // The first pod matches its own term: it may go anywhere.
        let first = pod("a0", spec.clone());
        let n = place(&mut c, &first).unwrap_or_default();
        let zone = c.node(&n).and_then(|s| s.def.as_ref()).and_then(|d| d.labels.get("zone").cloned());
        for i in 1..6 {
            let n = place(&mut c, &pod(&format!("a{i}"), spec.clone())).unwrap_or_default();
            let z = c.node(&n).and_then(|s| s.def.as_ref()).and_then(|d| d.labels.get("zone").cloned());
            assert_eq!(z, zone);
        }
    }

    #[test]
    fn topology_spread_hard_and_missing_label() {
        let mut c = cluster(vec![
            hostnode("n0"),
            hostnode("n1"),
            hostnode("n2"),
            node("bare", "8", json!({}), json!([])),
        ]);
        let spec = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]});
        let mut per_zone: HashMap<String, i64> = HashMap::new();
        for i in 0..6 {
            let n = place(&mut c, &pod(&format!("s{i}"), spec.clone())).unwrap_or_default();
            let z = c.node(&n).and_then(|s| s.def.as_ref()).and_then(|d| d.labels.get("zone").cloned());
            *per_zone.entry(z.unwrap_or_default()).or_insert(0) += 1;
            let lo = per_zone.values().min().copied().unwrap_or(0);
            let hi = per_zone.values().max().copied().unwrap_or(0);
            assert!(per_zone.len() < 2 || hi - lo <= 1, "{per_zone:?}");
        }
        assert_eq!(per_zone.get("a"), Some(&3));
        // Only zone a (n0, n1) may take a pod that must avoid b: skew would break.
        let mut only_b = spec.clone();
        only_b["nodeSelector"] = json!({"zone": "b"});
        only_b["topologySpreadConstraints"][0]["nodeAffinityPolicy"] = json!("Ignore");
        assert!(place(&mut c, &pod("x", only_b.clone())).is_ok());
        let e = place(&mut c, &pod("y", only_b)).err().unwrap_or_default();
        assert_eq!(e.reasons.get(REASON_SPREAD), Some(&1));
        assert_eq!(e.reasons.get(REASON_NODE_AFFINITY), Some(&3));
        let e2 = place(&mut cluster(vec![node("bare", "8", json!({}), json!([]))]), &pod("z", spec))
            .err()
            .unwrap_or_default();
        assert_eq!(e2.reasons.get(REASON_SPREAD_LABEL), Some(&1));
    }

    #[test]
    fn scoring_prefers_emptier_and_preferred_nodes() {
        let mut c = cluster(vec![hostnode("n0"), hostnode("n1")]);
        // Load n0: the least allocated score sends the next pod to n1.
        let filler = cpu_pod("f", "6");
        c.assume(&filler, Vec::new(), "n0");
        assert_eq!(place(&mut c, &cpu_pod("p", "1")).ok().as_deref(), Some("n1"));
        // Preferred node affinity outweighs a small imbalance.
        let pref = pod(
            "q",
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n0"]}]}}]}},
            "containers": [{"resources": {"requests": {"cpu": "100m"}}}]}),
        );
        assert_eq!(place(&mut c, &pref).ok().as_deref(), Some("n0"));
        // Scores: an empty node scores higher than a loaded one.
        let st = NodeState::default();
        let def = hostnode("n9");
        let p = cpu_pod("s", "4");
        assert_eq!(least_allocated(&p, &def, &st), ((8000 - 4000) * 100 / 8000 + (32 - 1) * 100 / 32) / 2);
        assert!(balanced(&p, &def, &st) < MAX_SCORE);
        // ScheduleAnyway spread prefers the emptier host.
        let soft = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "other"}}}]});
        let mut c = cluster(vec![hostnode("n0"), hostnode("n1")]);
        let mut other = pod("o", json!({}));
        other.labels.insert("app".into(), "other".into());
        c.assume(&other, Vec::new(), "n0");
        let mut p = pod("p", soft);
        p.labels.insert("app".into(), "other".into());
        assert_eq!(place(&mut c, &p).ok().as_deref(), Some("n1"));
    }

    #[test]
    fn ties_are_broken_at_random_and_sampling() {
        let mut seen = HashSet::new();
        for seed in 1..40 {
            let mut c = cluster(vec![hostnode("n0"), hostnode("n1"), hostnode("n2")]);
            let mut rng = Rng::new(seed);
            seen.insert(schedule(&mut c, &pod("p", json!({})), &no_ns, &mut rng).unwrap_or_default());
        }
        assert!(seen.len() > 1, "{seen:?}");
        assert_eq!(feasible_to_find(50), 50);
        assert_eq!(feasible_to_find(1000), 420);
        assert_eq!(feasible_to_find(5000), 500);
        assert_eq!(feasible_to_find(100_000), 5000);
    }
}

#[cfg(test)]
mod bench {
    use super::*;
    use serde_json::json;

    /// Decision cost on 5,000 nodes (run with `--ignored --nocapture`, release mode).
    #[test]
    #[ignore]
    fn decisions_per_second() {
        let mut c = Cache::new();
        for i in 0..5000 {
            c.set_node(NodeDef::parse(&json!({"metadata": {"name": format!("sim-{i}"),
                "labels": {"kubernetes.io/hostname": format!("sim-{i}")}},
                "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                           "conditions": [{"type": "Ready", "status": "True"}]}})));
        }
        let pods: Vec<PodInfo> = (0..20_000)
            .map(|i| {
                PodInfo::parse(
                    &json!({"metadata": {"name": format!("p{i}"), "namespace": "d", "uid": format!("u{i}")},
                    "spec": {"containers": [{"resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}),
                )
            })
            .collect();
        let mut rng = Rng::new(3);
        let t = std::time::Instant::now();
        for p in &pods {
            let n = schedule(&mut c, p, &|_| Labels::new(), &mut rng).unwrap_or_default();
            c.assume(p, Vec::new(), &n);
        }
        let el = t.elapsed().as_secs_f64();
        eprintln!("{} decisions on 5000 nodes in {el:.3} s: {:.0}/s", pods.len(), pods.len() as f64 / el);
    }
}
