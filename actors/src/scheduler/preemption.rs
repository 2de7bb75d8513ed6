//! Preemption, as upstream's DefaultPreemption plugin: when a pod fits no node, find the
//! node where evicting lower-priority pods makes it fit with the least harm.
//!
//! On each node every pod of lower priority (not already terminating) is a potential
//! victim; if the pod does not fit even with all of them gone, the node is no candidate.
//! Otherwise victims are reprieved one at a time, most important first — those whose
//! eviction would violate a PodDisruptionBudget before the others — keeping each one the
//! pod still fits beside. Among candidates the node is chosen by, in order: fewest budget
//! violations, lowest highest-victim priority, lowest sum of victim priorities, fewest
//! victims, then scan order.
//!
//! The trial counts the pods nominated to the node that are at least as important (their
//! room is spoken for). Simplification: the filters re-run with the victims' requests and
//! pod count taken off the node; spread and inter-pod affinity counts are not recomputed
//! without them, so
//! preemption helps with resources (cpu, memory, pods, extended resources), not with
//! anti-affinity or skew.

use super::algorithm::{filter, PreState};
use super::cache::{Cache, NodeState, PodRecord};
use super::model::PodInfo;
use capstan_api::disruption as pdbs;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

/// A node where preemption makes the pod fit, and whom it evicts there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The node.
    pub node: String,
    /// Keys of the pods to evict.
    pub victims: Vec<String>,
    /// How many of them their budgets do not allow to go.
    pub violations: usize,
    highest: i64,
    sum: i64,
}

/// A potential victim: its key and record.
type Victim<'a> = (&'a String, &'a PodRecord);

fn as_pod(r: &PodRecord) -> Value {
    json!({"metadata": {"namespace": r.namespace, "labels": r.labels}})
}

/// Splits victims into (violating, not violating) their budgets, spending each budget's
/// `disruptionsAllowed` as upstream's `filterPodsWithPDBViolation` does.
fn split_by_budget<'a>(
    victims: Vec<Victim<'a>>,
    budgets: &[Arc<Value>],
) -> (Vec<Victim<'a>>, Vec<Victim<'a>>) {
    let mut allowed: Vec<i64> =
        budgets.iter().map(|b| b["status"]["disruptionsAllowed"].as_i64().unwrap_or(0)).collect();
    let (mut violating, mut fine) = (Vec::new(), Vec::new());
    for v in victims {
        let p = as_pod(v.1);
        let mut violates = false;
        for (i, b) in budgets.iter().enumerate() {
            if pdbs::selects(b, &p) {
                allowed[i] -= 1;
                if allowed[i] < 0 {
                    violates = true;
                }
            }
        }
        if violates {
            violating.push(v);
        } else {
            fine.push(v);
        }
    }
    (violating, fine)
}

/// The best candidate node for `pod`, if any.
pub fn find(cache: &Cache, pod: &PodInfo, pre: &PreState, budgets: &[Arc<Value>]) -> Option<Candidate> {
    let mut best: Option<Candidate> = None;
    for (def, st) in cache.nodes() {
        let mut victims: Vec<Victim> = st
            .pods
            .iter()
            .filter_map(|k| cache.pod(k).map(|r| (k, r)))
            .filter(|(_, r)| r.priority < pod.priority && !r.terminating)
            .collect();
        if victims.is_empty() {
            continue;
        }
        // With the pods nominated there that are at least as important (upstream runs the
        // victims' filters with them too): room freed for another preemptor is not free.
        let seen = cache.with_nominated(st, pod);
        let base = seen.as_ref().unwrap_or(st);
        let mut trial = NodeState {
            name: st.name.clone(),
            def: None,
            usage: base.usage.clone(),
            pods: base.pods.clone(),
        };
        for (k, r) in &victims {
            trial.usage.sub(&r.requests);
            trial.pods.remove(*k);
        }
        if filter(pod, def, &trial, pre).is_err() {
            continue;
        }
        // Most important first: higher priority, then the key for a stable order.
        victims.sort_by(|a, b| b.1.priority.cmp(&a.1.priority).then(a.0.cmp(b.0)));
        let (violating, fine) = split_by_budget(victims, budgets);
        let mut chosen = Vec::new();
        let mut violations = 0;
        let mut reprieve =
            |list: Vec<(&String, &PodRecord)>, violating: bool, chosen: &mut Vec<(String, i64)>| {
                for (k, r) in list {
                    trial.usage.add(&r.requests);
                    trial.pods.insert(k.clone());
                    if filter(pod, def, &trial, pre).is_err() {
                        trial.usage.sub(&r.requests);
                        trial.pods.remove(k);
                        chosen.push((k.clone(), r.priority));
                        if violating {
                            violations += 1;
                        }
                    }
                }
            };
        reprieve(violating, true, &mut chosen);
        reprieve(fine, false, &mut chosen);
        let c = Candidate {
            node: st.name.clone(),
            highest: chosen.iter().map(|(_, p)| *p).max().unwrap_or(i64::MIN),
            sum: chosen.iter().map(|(_, p)| *p).sum(),
            victims: chosen.into_iter().map(|(k, _)| k).collect(),
            violations,
        };
        let better = match &best {
            None => true,
            Some(b) => {
                (c.violations, c.highest, c.sum, c.victims.len())
                    < (b.violations, b.highest, b.sum, b.victims.len())
            }
        };
        if better {
            best = Some(c);
        }
    }
    best
}

/// Upstream's `PodEligibleToPreemptOthers`: a pod that already nominated a node where a
/// lower-priority pod is terminating waits for it instead of preempting again.
pub fn eligible(cache: &Cache, pod: &PodInfo, nominated: Option<&str>) -> bool {
    if pod.never_preempt {
        return false;
    }
    let Some(node) = nominated.and_then(|n| cache.node(n)) else { return true };
    let waiting: HashSet<&String> = node.pods.iter().collect();
    !waiting.iter().filter_map(|k| cache.pod(k)).any(|r| r.terminating && r.priority < pod.priority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::model::{Labels, NodeDef};

    fn node(name: &str) -> NodeDef {
        NodeDef::parse(&json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}))
    }

    fn pod(name: &str, cpu: &str, priority: i64, app: &str) -> PodInfo {
        PodInfo::parse(
            &json!({"metadata": {"name": name, "namespace": "d", "uid": name, "labels": {"app": app}},
            "spec": {"priority": priority, "containers": [{"resources": {"requests": {"cpu": cpu}}}]}}),
        )
    }

    fn no_ns(_: &str) -> Labels {
        Labels::new()
    }

    fn cluster() -> Cache {
        let mut c = Cache::new();
        c.set_node(node("n1"));
        c.set_node(node("n2"));
        // n1: two low pods of 1 cpu (priority 1 and 5); n2: one 2-cpu pod of priority 3.
        c.assume(&pod("a", "1", 1, "a"), Vec::new(), "n1");
        c.assume(&pod("b", "1", 5, "b"), Vec::new(), "n1");
        c.assume(&pod("c", "2", 3, "c"), Vec::new(), "n2");
        c
    }

    #[test]
    fn fewest_lowest_victims() {
        let c = cluster();
        let p = pod("hi", "1", 10, "hi");
        let pre = PreState::compute(&c, &p, &no_ns);
        let got = find(&c, &p, &pre, &[]).expect("a candidate");
        // n1 needs only `a` (priority 1) gone; n2 would lose a priority-3 pod.
        assert_eq!((got.node.as_str(), got.victims.clone()), ("n1", vec!["d/a".to_string()]));
        // At priority 4 only `a` may go on n1, which frees too little: n2's `c` goes.
        let p = pod("mid", "2", 4, "mid");
        let pre = PreState::compute(&c, &p, &no_ns);
        let got = find(&c, &p, &pre, &[]).expect("a candidate");
        assert_eq!((got.node.as_str(), got.victims.clone()), ("n2", vec!["d/c".to_string()]));
        let p = pod("low", "1", 0, "low");
        assert!(find(&c, &p, &PreState::compute(&c, &p, &no_ns), &[]).is_none());
    }

    #[test]
    fn budgets_steer_victims() {
        let c = cluster();
        let p = pod("hi", "2", 10, "hi");
        let pre = PreState::compute(&c, &p, &no_ns);
        // Without budgets: n1 (victims priority 1 and 5, highest 5) loses to n2 (highest 3).
        assert_eq!(find(&c, &p, &pre, &[]).map(|c| c.node), Some("n2".into()));
        // A budget allowing no disruption of `c` sends the preemption to n1.
        let pdb = Arc::new(
            json!({"metadata": {"namespace": "d"}, "spec": {"selector": {"matchLabels": {"app": "c"}}},
            "status": {"disruptionsAllowed": 0}}),
        );
        let got = find(&c, &p, &pre, &[pdb]).expect("a candidate");
        assert_eq!(got.node, "n1");
        assert_eq!(got.violations, 0);
        assert_eq!(got.victims.len(), 2);
    }

    #[test]
    fn nominated_room_is_kept_for_its_preemptor() {
        let mut c = Cache::new();
        c.set_node(node("n1"));
        let hi = pod("hi", "2", 10, "hi");
        c.nominate("d/hi", Some(("n1".into(), hi.requests.clone(), 10)));
        let mut rng = crate::scheduler::algorithm::Rng::new(1);
        let sched = |c: &mut Cache, p: &PodInfo, rng: &mut crate::scheduler::algorithm::Rng| {
            crate::scheduler::algorithm::schedule(c, p, &no_ns, rng)
        };
        assert!(sched(&mut c, &pod("low", "1", 5, "low"), &mut rng).is_err(), "a less important pod waits");
        assert_eq!(sched(&mut c, &hi, &mut rng), Ok("n1".to_string()));
        assert!(sched(&mut c, &pod("top", "1", 20, "top"), &mut rng).is_ok(), "a more important one may go");
        c.nominate("d/hi", None);
        assert!(sched(&mut c, &pod("low", "1", 5, "low"), &mut rng).is_ok());
    }

    #[test]
    fn victims_being_evicted_are_not_chosen_twice() {
        let mut c = Cache::new();
        c.set_node(node("n1"));
        c.set_node(node("n2"));
        c.assume(&pod("a", "2", 1, "a"), Vec::new(), "n1");
        c.assume(&pod("b", "2", 1, "b"), Vec::new(), "n2");
        let p1 = pod("hi1", "2", 10, "hi");
        let first = find(&c, &p1, &PreState::compute(&c, &p1, &no_ns), &[]).expect("a candidate");
        // What the scheduler records with its decision, before any informer update.
        for k in &first.victims {
            c.mark_evicting(k);
        }
        c.nominate("d/hi1", Some((first.node.clone(), p1.requests.clone(), 10)));
        let p2 = pod("hi2", "2", 10, "hi");
        let second = find(&c, &p2, &PreState::compute(&c, &p2, &no_ns), &[]).expect("another candidate");
        assert_ne!(second.node, first.node, "the second preemptor goes elsewhere");
        // An update of the victim that does not show its deletion yet keeps it terminating.
        let victim = first.victims[0].clone();
        let name = victim.trim_start_matches("d/");
        c.observe_pod(
            &victim,
            &json!({"metadata": {"name": name, "namespace": "d", "uid": name},
                "spec": {"nodeName": first.node, "priority": 1}}),
        );
        assert!(c.pod(&victim).is_some_and(|r| r.terminating));
        c.unmark_evicting(&victim);
        assert!(c.pod(&victim).is_some_and(|r| !r.terminating));
        // Once the victims are gone, the room is the first preemptor's: no other one of its
        // priority preempts (nothing) there.
        for k in &first.victims {
            c.delete_pod(k);
        }
        let third = find(&c, &p2, &PreState::compute(&c, &p2, &no_ns), &[]).expect("a candidate");
        assert_ne!(third.node, first.node, "nominated room is spoken for");
    }

    #[test]
    fn never_and_nominated_wait() {
        let mut c = cluster();
        let mut p = pod("hi", "1", 10, "hi");
        assert!(eligible(&c, &p, Some("n1")));
        c.observe_pod(
            "d/a",
            &json!({"metadata": {"name": "a", "namespace": "d", "uid": "a", "deletionTimestamp": "x"},
                "spec": {"nodeName": "n1", "priority": 1}}),
        );
        assert!(!eligible(&c, &p, Some("n1")));
        assert!(eligible(&c, &p, None));
        p.never_preempt = true;
        assert!(!eligible(&c, &p, None));
    }
}
