//! The Node authorizer, as upstream's (`plugin/pkg/auth/authorizer/node`): a node
//! (`system:node:<name>` in `system:nodes`) may read the Secrets, ConfigMaps and claims of
//! the pods bound to it and no others, ask for tokens only of the ServiceAccounts those pods
//! run as, touch only its own Lease, and otherwise has upstream's `system:node` rules plus
//! what capstan's node agent also does as service proxy and DNS (`system:node-proxier`'s
//! EndpointSlice reads, Service status for LoadBalancer addresses). Writes to Nodes and Pods
//! are narrowed further by the NodeRestriction admission plugin. Everyone else, and whatever
//! the node rules do not cover, is decided by RBAC.

use super::{Rbac, Rule};
use crate::auth::{Attributes, Authorizer, Decision, RuleList, User};
use crate::cache::Cache;
use capstan_api::podrefs::pod_refs;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};

/// The name of the node `user` is, if it is one.
pub fn node_name(user: &User) -> Option<&str> {
    if !user.in_group("system:nodes") {
        return None;
    }
    user.name.strip_prefix("system:node:").filter(|n| !n.is_empty())
}

fn node_rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        let r = |verbs: &[&str], groups: &[&str], resources: &[&str]| {
            Rule::from_json(&json!({"verbs": verbs, "apiGroups": groups, "resources": resources}))
        };
        vec![
            r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
            r(&["create"], &["authorization.k8s.io"], &["localsubjectaccessreviews", "subjectaccessreviews"]),
            r(&["get", "list", "watch"], &[""], &["services", "endpoints", "nodes", "pods", "namespaces"]),
            r(&["create", "patch", "update"], &[""], &["nodes", "nodes/status"]),
            r(&["create", "patch", "update"], &["", "events.k8s.io"], &["events"]),
            r(&["create", "delete"], &[""], &["pods"]),
            // get as well: a node may read its pods anyway, and `kubectl patch
            // --subresource=status` reads before it writes.
            r(&["get", "patch", "update"], &[""], &["pods/status", "nodes/status"]),
            r(&["create"], &[""], &["pods/eviction"]),
            // delete: the node removes released local-path volumes it cleaned up (narrowed
            // to those by NodeRestriction).
            r(&["get"], &[""], &["persistentvolumes"]),
            r(&["delete"], &[""], &["persistentvolumes"]),
            r(&["get", "list", "watch"], &["storage.k8s.io"], &["csidrivers", "storageclasses"]),
            r(&["get", "list", "watch"], &["node.k8s.io"], &["runtimeclasses"]),
            r(&["create", "get", "list", "watch"], &["certificates.k8s.io"], &["certificatesigningrequests"]),
            // capstan's node agent is also the service proxy and the cluster DNS.
            r(&["list", "watch"], &["discovery.k8s.io"], &["endpointslices"]),
            r(&["patch", "update"], &[""], &["services/status"]),
        ]
    })
}

/// Node, then RBAC.
pub struct NodeAuthorizer {
    cache: Arc<Cache>,
    rbac: Arc<Rbac>,
}

impl NodeAuthorizer {
    /// The Node authorizer in front of `rbac`, reading pods from `cache`.
    pub fn new(cache: Arc<Cache>, rbac: Arc<Rbac>) -> NodeAuthorizer {
        NodeAuthorizer { cache, rbac }
    }

    /// The pods bound to `node` in `namespace`.
    fn pods_on(&self, node: &str, namespace: &str) -> Vec<crate::cache::Obj> {
        let Some(pods) = capstan_api::registry::find("", "v1", "pods") else { return Vec::new() };
        let prefix = crate::keys::prefix(pods, Some(namespace));
        let end = capstan_storage::prefix_end(&prefix);
        self.cache
            .list(&prefix, &end, 0, |p| p["spec"].get("nodeName").and_then(Value::as_str) == Some(node))
            .0
    }

    /// `Some(decision)` when the node authorizer decides, `None` for RBAC.
    fn decide(&self, node: &str, a: &Attributes) -> Option<Decision> {
        if a.path.is_some() {
            return None;
        }
        let allow = || Some(Decision::Allow(format!("node {node:?} may do this")));
        let deny = |why: String| Some(Decision::Deny(why));
        match (a.group.as_str(), a.resource.as_str(), a.subresource.as_str()) {
            ("", kind @ ("secrets" | "configmaps" | "persistentvolumeclaims"), sub) => {
                let read = a.verb == "get"
                    && (sub.is_empty() || (kind == "persistentvolumeclaims" && sub == "status"));
                let claim_status = kind == "persistentvolumeclaims"
                    && sub == "status"
                    && matches!(a.verb.as_str(), "patch" | "update");
                if !(read || claim_status) {
                    return deny(format!("node {node:?} can only get individual {kind}"));
                }
                let used = self.pods_on(node, &a.namespace).iter().any(|p| {
                    let r = pod_refs(p);
                    match kind {
                        "secrets" => r.secrets.contains(&a.name),
                        "configmaps" => r.config_maps.contains(&a.name),
                        _ => r.claims.contains(&a.name),
                    }
                });
                if used {
                    allow()
                } else {
                    deny(format!("no relationship found between node {node:?} and this object"))
                }
            }
            ("", "serviceaccounts", "token") => {
                if a.verb != "create" {
                    return deny(format!(
                        "node {node:?} can only create tokens for individual service accounts"
                    ));
                }
                let used =
                    self.pods_on(node, &a.namespace).iter().any(|p| pod_refs(p).service_account == a.name);
                if used {
                    allow()
                } else {
                    deny(format!("no relationship found between node {node:?} and this object"))
                }
            }
            ("coordination.k8s.io", "leases", "") => {
                // A create names no object in its URL: NodeRestriction checks its name.
                let own = a.namespace == "kube-node-lease"
                    && (a.name == node || (a.verb == "create" && a.name.is_empty()));
                if own && matches!(a.verb.as_str(), "get" | "create" | "update" | "patch" | "delete") {
                    allow()
                } else {
                    deny(format!("node {node:?} can only access its own lease in kube-node-lease"))
                }
            }
            _ => {
                if node_rules().iter().any(|r| r.allows(a)) {
                    allow()
                } else {
                    None
                }
            }
        }
    }
}

impl Authorizer for NodeAuthorizer {
    fn authorize(&self, user: &User, a: &Attributes) -> Decision {
        if let Some(node) = node_name(user) {
            if let Some(d) = self.decide(node, a) {
                // A node's own denial is final only where upstream's is (its graph); RBAC
                // may still grant a node more through a binding.
                return match d {
                    Decision::Allow(_) => d,
                    Decision::Deny(why) => match self.rbac.authorize(user, a) {
                        Decision::Allow(r) => Decision::Allow(r),
                        Decision::Deny(_) => Decision::Deny(why),
                    },
                };
            }
        }
        self.rbac.authorize(user, a)
    }

    fn settle(&self, revision: u64) -> BoxFuture<'_, ()> {
        Box::pin(self.rbac.settle(revision))
    }

    fn rules(&self, user: &User, namespace: &str) -> RuleList {
        let mut list = self.rbac.rules(user, namespace);
        if node_name(user).is_some() {
            list.resource_rules.extend(node_rules().iter().map(Rule::to_json));
            list.incomplete = true; // the graph-dependent permissions are not listed
        }
        list
    }
}
