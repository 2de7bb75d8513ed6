//! Volume binding, as upstream's VolumeBinding plugin.
//!
//! PreFilter ([`VolumeFilter::prepare`]): every claim the pod uses must exist, not be
//! being deleted, be owned by the pod when it is an ephemeral volume's, and be either
//! bound or of a `WaitForFirstConsumer` class (an unbound claim of an `Immediate` class
//! waits for the binder). Filter ([`VolumeFilter::check`]): a bound claim's volume must be
//! usable on the node (its node affinity); an unbound delayed claim needs a free static
//! volume usable there, or a provisioner that can make one there (local-path needs the
//! node's agent to name its volume root). PreBind ([`VolumeFilter::plan`]): for the node
//! chosen, the static volume is pre-bound to the claim (`claimRef`), or the claim gets
//! `volume.kubernetes.io/selected-node`; the binder and the provisioner do the rest.
//!
//! Unlike upstream, the pod is bound right after these writes instead of after the claims
//! are Bound: its node agent waits for them before mounting.

use super::model::NodeDef;
use crate::informer::Informer;
use crate::volumes::{self as v, find_match, owned_by, pod_claims, usable_on};
use serde_json::Value;
use std::sync::Arc;

/// Upstream's reason for a node a bound volume cannot reach.
pub const REASON_NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
/// Upstream's reason for a node where an unbound claim can get no volume.
pub const REASON_BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";

/// What one pod's claims require of a node.
#[derive(Debug, Default, Clone)]
pub struct VolumeFilter {
    /// The volumes of bound claims.
    bound: Vec<Arc<Value>>,
    /// Unbound claims of `WaitForFirstConsumer` classes, with the class's provisioner.
    delayed: Vec<(Arc<Value>, String)>,
    /// Every volume (for static matches of delayed claims).
    volumes: Vec<Arc<Value>>,
}

/// A write to make before the pod is bound.
#[derive(Debug, Clone)]
pub enum PreBind {
    /// Pre-bind this static volume to the claim.
    Volume {
        /// The volume.
        pv: Arc<Value>,
        /// The claim.
        claim: Arc<Value>,
    },
    /// Ask for provisioning on the node.
    SelectNode {
        /// The claim.
        claim: Arc<Value>,
    },
}

fn can_provision(provisioner: &str, node: &NodeDef) -> bool {
    match provisioner {
        "" | "kubernetes.io/no-provisioner" => false,
        v::LOCAL_PATH_PROVISIONER => node.local_path,
        _ => true,
    }
}

impl VolumeFilter {
    /// The pod's claims as the filter needs them; `Ok(None)` when it uses none, `Err` with
    /// upstream's message when it cannot be scheduled anywhere yet.
    pub fn prepare(
        pod: &Value,
        claims: &Informer,
        volumes: &Informer,
        classes: &Informer,
    ) -> Result<Option<VolumeFilter>, String> {
        let list = pod_claims(pod);
        if list.is_empty() {
            return Ok(None);
        }
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let pod_name = pod["metadata"]["name"].as_str().unwrap_or("");
        let mut f = VolumeFilter::default();
        for pc in list {
            let Some(claim) = claims.get(&format!("{ns}/{}", pc.claim)) else {
                return Err(if pc.ephemeral {
                    format!(
                        "waiting for ephemeral volume controller to create the persistentvolumeclaim \"{}\"",
                        pc.claim
                    )
                } else {
                    format!("persistentvolumeclaim \"{}\" not found", pc.claim)
                });
            };
            if pc.ephemeral && !owned_by(&claim, pod) {
                return Err(format!(
                    "PVC {ns}/{} was not created for pod {ns}/{pod_name} (pod is not owner)",
                    pc.claim
                ));
            }
            if v::is_deleting(&claim) {
                return Err(format!("persistentvolumeclaim \"{}\" is being deleted", pc.claim));
            }
            let volume = claim["spec"]["volumeName"].as_str().unwrap_or("");
            if !volume.is_empty() {
                match volumes.get(volume) {
                    Some(pv) => f.bound.push(pv),
                    None => return Err("pvc(s) bound to non-existent pv(s)".into()),
                }
                continue;
            }
            let class = v::claim_class(&claim).filter(|c| !c.is_empty()).and_then(|c| classes.get(c));
            match class {
                Some(c) if v::delays_binding(&c) => {
                    let p = v::provisioner(&c).to_string();
                    f.delayed.push((claim, p));
                }
                _ => return Err("pod has unbound immediate PersistentVolumeClaims".into()),
            }
        }
        if !f.delayed.is_empty() {
            f.volumes = volumes.list();
        }
        Ok(Some(f))
    }

    /// Whether the pod's volumes allow `node`, and how: the writes to make if it is chosen.
    pub fn plan(&self, node: &NodeDef) -> Result<Vec<PreBind>, &'static str> {
        if self.bound.iter().any(|pv| !usable_on(pv, node)) {
            return Err(REASON_NODE_CONFLICT);
        }
        let mut out = Vec::new();
        let mut taken: Vec<&str> = Vec::new();
        for (claim, provisioner) in &self.delayed {
            let free = self
                .volumes
                .iter()
                .filter(|pv| !taken.contains(&pv["metadata"]["name"].as_str().unwrap_or("")))
                .map(|pv| &**pv);
            if let Some(pv) = find_match(claim, free, Some(node), true) {
                let name = pv["metadata"]["name"].as_str().unwrap_or("");
                taken.push(name);
                if let Some(arc) = self.volumes.iter().find(|p| p["metadata"]["name"].as_str() == Some(name))
                {
                    out.push(PreBind::Volume { pv: arc.clone(), claim: claim.clone() });
                }
            } else if can_provision(provisioner, node) {
                out.push(PreBind::SelectNode { claim: claim.clone() });
            } else {
                return Err(REASON_BIND_CONFLICT);
            }
        }
        Ok(out)
    }

    /// Whether the pod's volumes allow `node`.
    pub fn check(&self, node: &NodeDef) -> Result<(), &'static str> {
        self.plan(node).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn local_pv(name: &str, node: &str, claim: Option<&str>) -> Arc<Value> {
        let mut pv = json!({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": "local-path", "local": {"path": "/x"},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}},
            "status": {"phase": "Available"},
        });
        if let Some(c) = claim {
            pv["spec"]["claimRef"] = json!({"namespace": "ns", "name": c, "uid": "u"});
            pv["status"]["phase"] = json!("Bound");
        }
        Arc::new(pv)
    }

    fn claim() -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": "c", "namespace": "ns", "uid": "cu"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                     "storageClassName": "local-path"}}))
    }

    fn node(name: &str, local_path: bool) -> NodeDef {
        let mut n = v::named_node(name);
        n.local_path = local_path;
        n
    }

    #[test]
    fn bound_volumes_pin_the_node() {
        let f = VolumeFilter { bound: vec![local_pv("pv1", "n1", Some("c"))], ..Default::default() };
        assert!(f.check(&node("n1", false)).is_ok());
        assert_eq!(f.check(&node("n2", true)).unwrap_err(), REASON_NODE_CONFLICT);
    }

    #[test]
    fn delayed_claims_take_static_volumes_or_provision() {
        let f = VolumeFilter {
            delayed: vec![(claim(), String::new())],
            volumes: vec![local_pv("pv1", "n1", None)],
            ..Default::default()
        };
        // Only n1 has a free static volume, and the class cannot provision.
        assert!(matches!(f.plan(&node("n1", true)).unwrap()[..], [PreBind::Volume { .. }]));
        assert_eq!(f.check(&node("n2", true)).unwrap_err(), REASON_BIND_CONFLICT);
        // local-path provisions on nodes whose agent names a root.
        let f = VolumeFilter { delayed: vec![(claim(), v::LOCAL_PATH_PROVISIONER.into())], ..f };
        assert!(matches!(f.plan(&node("n2", true)).unwrap()[..], [PreBind::SelectNode { .. }]));
        assert_eq!(f.check(&node("n3", false)).unwrap_err(), REASON_BIND_CONFLICT);
        // Two claims never get the same static volume.
        let two = VolumeFilter {
            delayed: vec![(claim(), String::new()), (claim(), String::new())],
            volumes: vec![local_pv("pv1", "n1", None)],
            ..Default::default()
        };
        assert_eq!(two.check(&node("n1", true)).unwrap_err(), REASON_BIND_CONFLICT);
    }
}
