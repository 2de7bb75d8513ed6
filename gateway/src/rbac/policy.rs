//! The default policy every cluster starts with: upstream's bootstrap ClusterRoles and
//! ClusterRoleBindings (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`) that matter to
//! capstan's users, written as a compact table. The gateway creates what is missing at
//! start and brings roles marked `rbac.authorization.kubernetes.io/autoupdate: "true"` back
//! to these rules (as upstream's reconciliation).

use serde_json::{json, Value};

/// A rule as `verbs | groups | resources` (or `verbs | url:/path,...`), comma-separated.
type RuleSpec = &'static str;

const READ: &str = "get,list,watch";
const WRITE: &str = "create,delete,deletecollection,patch,update";

fn rule(spec: &str) -> Value {
    let parts: Vec<&str> = spec.split('|').map(str::trim).collect();
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(|x| if x == "core" { String::new() } else { x.to_string() })
            .collect()
    };
    let verbs = list(parts[0].replace("READ", READ).replace("WRITE", WRITE).as_str());
    if let Some(urls) = parts.get(1).and_then(|p| p.strip_prefix("url:")) {
        return json!({"verbs": verbs, "nonResourceURLs": list(urls)});
    }
    let mut r = json!({"verbs": verbs, "apiGroups": list(parts[1]), "resources": list(parts[2])});
    if let Some(names) = parts.get(3) {
        r["resourceNames"] = json!(list(names));
    }
    r
}

/// One default ClusterRole: name, labels, the label it aggregates from, rules.
type RoleSpec =
    (&'static str, &'static [(&'static str, &'static str)], Option<&'static str>, &'static [RuleSpec]);

const ROLES: &[RoleSpec] = &[
    ("cluster-admin", &[], None, &["* | * | *", "* | url:*"]),
    ("admin", &[], Some("rbac.authorization.k8s.io/aggregate-to-admin"), &[]),
    ("edit", &[("rbac.authorization.k8s.io/aggregate-to-admin", "true")], Some("rbac.authorization.k8s.io/aggregate-to-edit"), &[]),
    ("view", &[("rbac.authorization.k8s.io/aggregate-to-edit", "true")], Some("rbac.authorization.k8s.io/aggregate-to-view"), &[]),
    (
        "system:aggregate-to-admin",
        &[("rbac.authorization.k8s.io/aggregate-to-admin", "true")],
        None,
        &[
            "create | authorization.k8s.io | localsubjectaccessreviews",
            "READ,WRITE | rbac.authorization.k8s.io | rolebindings,roles",
        ],
    ),
    (
        "system:aggregate-to-edit",
        &[("rbac.authorization.k8s.io/aggregate-to-edit", "true")],
        None,
        &[
            "READ | core | pods/attach,pods/exec,pods/portforward,pods/proxy,secrets,services/proxy",
            "impersonate | core | serviceaccounts",
            "WRITE | core | pods,pods/attach,pods/exec,pods/portforward,pods/proxy",
            "create | core | pods/eviction",
            "WRITE | core | configmaps,events,persistentvolumeclaims,replicationcontrollers,replicationcontrollers/scale,secrets,serviceaccounts,services,services/proxy",
            "create | core | serviceaccounts/token",
            "WRITE | apps | daemonsets,deployments,deployments/rollback,deployments/scale,replicasets,replicasets/scale,statefulsets,statefulsets/scale",
            "WRITE | autoscaling | horizontalpodautoscalers",
            "WRITE | batch | cronjobs,jobs",
            "WRITE | policy | poddisruptionbudgets",
            "WRITE | networking.k8s.io | ingresses,networkpolicies",
            "READ,WRITE | coordination.k8s.io | leases",
        ],
    ),
    (
        "system:aggregate-to-view",
        &[("rbac.authorization.k8s.io/aggregate-to-view", "true")],
        None,
        &[
            "READ | core | configmaps,endpoints,persistentvolumeclaims,persistentvolumeclaims/status,pods,replicationcontrollers,replicationcontrollers/scale,serviceaccounts,services,services/status",
            "READ | core | bindings,events,limitranges,namespaces/status,pods/log,pods/status,replicationcontrollers/status,resourcequotas,resourcequotas/status",
            "READ | core | namespaces",
            "READ | discovery.k8s.io | endpointslices",
            "READ | apps | controllerrevisions,daemonsets,daemonsets/status,deployments,deployments/scale,deployments/status,replicasets,replicasets/scale,replicasets/status,statefulsets,statefulsets/scale,statefulsets/status",
            "READ | autoscaling | horizontalpodautoscalers,horizontalpodautoscalers/status",
            "READ | batch | cronjobs,cronjobs/status,jobs,jobs/status",
            "READ | policy | poddisruptionbudgets,poddisruptionbudgets/status",
            "READ | networking.k8s.io | ingresses,ingresses/status,networkpolicies",
        ],
    ),
    // metrics-server's reader role: `kubectl top` for whoever may view.
    (
        "system:aggregated-metrics-reader",
        &[
            ("rbac.authorization.k8s.io/aggregate-to-view", "true"),
            ("rbac.authorization.k8s.io/aggregate-to-edit", "true"),
            ("rbac.authorization.k8s.io/aggregate-to-admin", "true"),
        ],
        None,
        &["READ | metrics.k8s.io | pods,nodes"],
    ),
    (
        "system:basic-user",
        &[],
        None,
        &[
            "create | authorization.k8s.io | selfsubjectaccessreviews,selfsubjectrulesreviews",
            "create | authentication.k8s.io | selfsubjectreviews",
        ],
    ),
    (
        "system:discovery",
        &[],
        None,
        &["get | url:/api,/api/*,/apis,/apis/*,/healthz,/livez,/openapi,/openapi/*,/readyz,/version,/version/"],
    ),
    ("system:public-info-viewer", &[], None, &["get | url:/healthz,/livez,/readyz,/version,/version/"]),
    (
        "system:service-account-issuer-discovery",
        &[],
        None,
        &["get | url:/.well-known/openid-configuration,/.well-known/openid-configuration/,/openid/v1/jwks,/openid/v1/jwks/"],
    ),
    (
        "system:auth-delegator",
        &[],
        None,
        &["create | authentication.k8s.io | tokenreviews", "create | authorization.k8s.io | subjectaccessreviews"],
    ),
    (
        "system:node-bootstrapper",
        &[],
        None,
        &["create,get,list,watch | certificates.k8s.io | certificatesigningrequests"],
    ),
    (
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        &[],
        None,
        &["create | certificates.k8s.io | certificatesigningrequests/nodeclient"],
    ),
    (
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        &[],
        None,
        &["create | certificates.k8s.io | certificatesigningrequests/selfnodeclient"],
    ),
    (
        "system:certificates.k8s.io:kube-apiserver-client-approver",
        &[],
        None,
        &["approve | certificates.k8s.io | signers | kubernetes.io/kube-apiserver-client"],
    ),
    (
        "system:certificates.k8s.io:kube-apiserver-client-kubelet-approver",
        &[],
        None,
        &["approve | certificates.k8s.io | signers | kubernetes.io/kube-apiserver-client-kubelet"],
    ),
    (
        "system:certificates.k8s.io:kubelet-serving-approver",
        &[],
        None,
        &["approve | certificates.k8s.io | signers | kubernetes.io/kubelet-serving"],
    ),
    (
        "system:kube-scheduler",
        &[],
        None,
        &[
            "create,patch,update | core,events.k8s.io | events",
            "create | coordination.k8s.io | leases",
            "get,update | coordination.k8s.io | leases | kube-scheduler",
            "READ | core | nodes",
            "READ | core | namespaces",
            "delete,get,list,watch | core | pods",
            "create | core | bindings,pods/binding",
            "patch,update | core | pods/status",
            "READ | core | replicationcontrollers,services",
            "READ | apps,extensions | replicasets",
            "READ | apps | statefulsets",
            "READ | policy | poddisruptionbudgets",
            "READ | core | persistentvolumeclaims,persistentvolumes",
            "create | authentication.k8s.io | tokenreviews",
            "create | authorization.k8s.io | subjectaccessreviews",
            "READ | storage.k8s.io | csidrivers,csinodes,csistoragecapacities,storageclasses",
        ],
    ),
    // capstan's controllers run in one pool (one bus identity) rather than with a
    // ServiceAccount per controller as upstream's controller manager: they need to read and
    // write every kind (the garbage collector and the namespace controller touch all of
    // them) and to write ClusterRoles with any rule (aggregation), but never to
    // impersonate, approve or sign.
    (
        "system:capstan:controllers",
        &[],
        None,
        &["READ,WRITE | * | *", "escalate,bind | rbac.authorization.k8s.io | clusterroles,roles"],
    ),
    // The simulated nodes (`capstan sim-nodes`, `up --sim-nodes`): one process speaking for
    // many nodes, so not a `system:node:<name>`; it registers and heartbeats its nodes,
    // reports the status of their pods, and removes released volumes pinned to them.
    (
        "system:capstan:sim-nodes",
        &[],
        None,
        &[
            "READ,create,patch,update,delete | core | nodes",
            "patch,update | core | nodes/status",
            "READ,create,patch,update | coordination.k8s.io | leases",
            "READ,delete | core | pods",
            "patch,update | core | pods/status",
            "READ,delete | core | persistentvolumes",
            "create,patch,update | core,events.k8s.io | events",
        ],
    ),
    (
        "system:monitoring",
        &[],
        None,
        &["get | url:/healthz,/healthz/*,/livez,/livez/*,/readyz,/readyz/*,/metrics,/metrics/slis"],
    ),
    (
        "system:volume-scheduler",
        &[],
        None,
        &[
            "READ,patch,update | core | persistentvolumes",
            "READ | storage.k8s.io | storageclasses",
            "READ,patch,update | core | persistentvolumeclaims",
        ],
    ),
];

/// (binding name, role, subjects as `User:x` / `Group:x`)
const BINDINGS: &[(&str, &str, &[&str])] = &[
    ("cluster-admin", "cluster-admin", &["Group:system:masters"]),
    ("system:basic-user", "system:basic-user", &["Group:system:authenticated"]),
    ("system:discovery", "system:discovery", &["Group:system:authenticated"]),
    (
        "system:public-info-viewer",
        "system:public-info-viewer",
        &["Group:system:authenticated", "Group:system:unauthenticated"],
    ),
    (
        "system:service-account-issuer-discovery",
        "system:service-account-issuer-discovery",
        &["Group:system:serviceaccounts"],
    ),
    ("system:monitoring", "system:monitoring", &["Group:system:monitoring"]),
    ("system:kube-scheduler", "system:kube-scheduler", &["User:system:kube-scheduler"]),
    ("system:volume-scheduler", "system:volume-scheduler", &["User:system:kube-scheduler"]),
    ("system:capstan:controllers", "system:capstan:controllers", &["User:system:kube-controller-manager"]),
    ("system:capstan:sim-nodes", "system:capstan:sim-nodes", &["User:system:capstan:sim-nodes"]),
    // Node join with bootstrap tokens (as kubeadm sets it up): bootstrappers may ask for node
    // client certificates, which are approved automatically; nodes may renew their own.
    ("system:node-bootstrapper", "system:node-bootstrapper", &["Group:system:bootstrappers"]),
    (
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        &["Group:system:bootstrappers"],
    ),
    (
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        &["Group:system:nodes"],
    ),
];

fn bootstrap_meta(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut l = serde_json::Map::new();
    l.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    for (k, v) in labels {
        l.insert((*k).into(), json!(v));
    }
    json!({"name": name, "labels": l, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}})
}

/// The default ClusterRoles.
pub fn default_cluster_roles() -> Vec<Value> {
    ROLES
        .iter()
        .map(|(name, labels, aggregate, rules)| {
            let mut r = json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": bootstrap_meta(name, labels),
                "rules": rules.iter().map(|s| rule(s)).collect::<Vec<_>>(),
            });
            if let Some(label) = aggregate {
                r["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {*label: "true"}}]});
            }
            r
        })
        .collect()
}

/// The default ClusterRoleBindings.
pub fn default_bindings() -> Vec<Value> {
    BINDINGS
        .iter()
        .map(|(name, role, subjects)| {
            let subjects: Vec<Value> = subjects
                .iter()
                .filter_map(|s| s.split_once(':'))
                .map(|(kind, n)| json!({"kind": kind, "apiGroup": "rbac.authorization.k8s.io", "name": n}))
                .collect();
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": bootstrap_meta(name, &[]),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": subjects,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_reads_as_policy_rules() {
        assert_eq!(
            rule("READ | core,apps | pods,deployments"),
            json!({"verbs": ["get", "list", "watch"], "apiGroups": ["", "apps"], "resources": ["pods", "deployments"]})
        );
        assert_eq!(
            rule("get | url:/healthz,/api/*"),
            json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/api/*"]})
        );
        assert_eq!(
            rule("get,update | coordination.k8s.io | leases | kube-scheduler")["resourceNames"],
            json!(["kube-scheduler"])
        );
        let roles = default_cluster_roles();
        let admin = roles.iter().find(|r| r["metadata"]["name"] == "admin").unwrap();
        assert_eq!(
            admin["aggregationRule"]["clusterRoleSelectors"][0]["matchLabels"]
                ["rbac.authorization.k8s.io/aggregate-to-admin"],
            "true"
        );
        let b = default_bindings();
        assert_eq!(
            b[0]["subjects"][0],
            json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:masters"})
        );
        assert_eq!(b[3]["subjects"].as_array().unwrap().len(), 2);
    }
}
