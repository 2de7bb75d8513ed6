//! The RBAC index against objects in a temporary store.

use super::*;
use crate::admission::testing::context;
use crate::service::encode;
use capstan_storage::{Op, Precondition, Txn};

async fn put(ctx: &Context, plural: &str, obj: Value) {
    let res = capstan_api::registry::find(GROUP, "v1", plural).unwrap();
    let key = crate::keys::object_key(res, meta::namespace(&obj), meta::name(&obj).unwrap());
    let r = ctx
        .store()
        .commit(Txn::single(Op::put(key, encode(&obj).unwrap(), Precondition::None)))
        .await
        .unwrap();
    ctx.cache().wait_for(r.revisions[0], Duration::from_secs(3)).await.unwrap();
}

fn attrs(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
    Attributes {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        subresource: sub.into(),
        namespace: ns.into(),
        name: name.into(),
        path: None,
    }
}

fn path(verb: &str, p: &str) -> Attributes {
    Attributes { path: Some(p.into()), ..attrs(verb, "", "", "", "", "") }
}

fn allowed(r: &Rbac, u: &User, a: &Attributes) -> bool {
    matches!(r.authorize(u, a), Decision::Allow(_))
}

#[test]
fn rules_match_as_upstream() {
    let r = Rule::from_json(
        &json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods", "pods/log", "*/scale"], "resourceNames": ["a"]}),
    );
    assert!(r.allows(&attrs("get", "", "pods", "", "ns", "a")));
    assert!(!r.allows(&attrs("get", "", "pods", "", "ns", "b")), "resourceNames");
    assert!(!r.allows(&attrs("list", "", "pods", "", "ns", "a")), "verb");
    assert!(r.allows(&attrs("get", "", "pods", "log", "ns", "a")), "subresource");
    assert!(!r.allows(&attrs("get", "", "pods", "exec", "ns", "a")), "other subresource");
    assert!(r.allows(&attrs("get", "", "deployments", "scale", "ns", "a")), "*/scale");
    assert!(!r.allows(&attrs("get", "apps", "pods", "", "ns", "a")), "group");
    let u = Rule::from_json(&json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/api/*"]}));
    assert!(u.allows(&path("get", "/healthz")));
    assert!(u.allows(&path("get", "/api/v1")));
    assert!(!u.allows(&path("get", "/apis")));
    assert!(!u.allows(&attrs("get", "", "pods", "", "", "")), "a URL rule grants no resource");
}

#[tokio::test]
async fn bindings_roles_groups_and_service_accounts() {
    let (ctx, _dir) = context().await;
    for r in default_cluster_roles() {
        put(&ctx, "clusterroles", r).await;
    }
    for b in default_bindings() {
        put(&ctx, "clusterrolebindings", b).await;
    }
    put(
        &ctx,
        "roles",
        json!({"kind": "Role", "metadata": {"name": "pod-reader", "namespace": "dev"},
        "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"]}]}),
    )
    .await;
    put(
        &ctx,
        "rolebindings",
        json!({"kind": "RoleBinding", "metadata": {"name": "read", "namespace": "dev"},
        "roleRef": {"kind": "Role", "name": "pod-reader", "apiGroup": GROUP},
        "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "bot"}]}),
    )
    .await;
    put(
        &ctx,
        "rolebindings",
        json!({"kind": "RoleBinding", "metadata": {"name": "editors", "namespace": "dev"},
        "roleRef": {"kind": "ClusterRole", "name": "edit", "apiGroup": GROUP},
        "subjects": [{"kind": "Group", "name": "devs"}]}),
    )
    .await;
    let rbac = Rbac::start(ctx.cache().clone());
    let alice = User::new("alice", vec![]);
    let bot = User::new("system:serviceaccount:dev:bot", vec!["system:serviceaccounts".into()]);
    let dev = User::new("carol", vec!["devs".into()]);
    let nobody = User::new("mallory", vec![]);
    assert!(allowed(&rbac, &alice, &attrs("get", "", "pods", "", "dev", "x")));
    assert!(allowed(&rbac, &alice, &attrs("get", "", "pods", "log", "dev", "x")));
    assert!(!allowed(&rbac, &alice, &attrs("get", "", "pods", "", "prod", "x")), "other namespace");
    assert!(!allowed(&rbac, &alice, &attrs("delete", "", "pods", "", "dev", "x")));
    assert!(
        allowed(&rbac, &bot, &attrs("list", "", "pods", "", "dev", "")),
        "ServiceAccount subject in the binding's namespace"
    );
    // edit aggregates view: carol can read and write deployments and read pods' logs.
    assert!(allowed(&rbac, &dev, &attrs("create", "apps", "deployments", "", "dev", "")));
    assert!(allowed(&rbac, &dev, &attrs("get", "", "pods", "log", "dev", "p")));
    assert!(
        !allowed(&rbac, &dev, &attrs("create", GROUP, "rolebindings", "", "dev", "")),
        "edit cannot bind"
    );
    // Everyone authenticated: basic-user and discovery.
    assert!(allowed(
        &rbac,
        &nobody,
        &attrs("create", "authorization.k8s.io", "selfsubjectaccessreviews", "", "", "")
    ));
    assert!(allowed(&rbac, &nobody, &path("get", "/apis/apps/v1")));
    assert!(!allowed(&rbac, &nobody, &attrs("list", "", "pods", "", "dev", "")));
    // Anonymous: only public info.
    let anon = User::anonymous();
    assert!(allowed(&rbac, &anon, &path("get", "/version")));
    assert!(!allowed(&rbac, &anon, &path("get", "/apis")));
    let masters = User::new("admin", vec!["system:masters".into()]);
    assert!(allowed(&rbac, &masters, &attrs("delete", "", "nodes", "", "", "n")));
    // The simulated nodes: their nodes and pods' status, no Secrets, no workloads.
    let sim = crate::busapi::user_for_identity("sim-nodes");
    assert!(allowed(&rbac, &sim, &attrs("patch", "", "nodes", "status", "", "n")));
    assert!(allowed(&rbac, &sim, &attrs("patch", "", "pods", "status", "dev", "p")));
    assert!(allowed(
        &rbac,
        &sim,
        &attrs("update", "coordination.k8s.io", "leases", "", "kube-node-lease", "n")
    ));
    assert!(!allowed(&rbac, &sim, &attrs("get", "", "secrets", "", "dev", "s")));
    assert!(!allowed(&rbac, &sim, &attrs("create", "apps", "deployments", "", "dev", "")));
    assert!(!allowed(&rbac, &sim, &attrs("update", "", "pods", "", "dev", "p")));
    // What alice may do in dev.
    let rules = rbac.rules(&alice, "dev");
    assert!(rules.resource_rules.iter().any(|r| r["resources"] == json!(["pods", "pods/log"])), "{rules:?}");
    assert!(!rules.resource_rules.iter().any(|r| r["resources"] == json!(["*"])));
    // A change is seen after settle.
    let r = ctx
        .store()
        .commit(Txn::single(Op::delete(
            crate::keys::object_key(
                capstan_api::registry::find(GROUP, "v1", "rolebindings").unwrap(),
                Some("dev"),
                "read",
            ),
            Precondition::None,
        )))
        .await
        .unwrap();
    rbac.settle(r.revisions[0]).await;
    assert!(!allowed(&rbac, &alice, &attrs("get", "", "pods", "", "dev", "x")));
}

#[tokio::test]
async fn escalation_is_measured_against_what_the_user_holds() {
    let (ctx, _dir) = context().await;
    put(&ctx, "roles", json!({"kind": "Role", "metadata": {"name": "r", "namespace": "dev"},
        "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]},
                  {"verbs": ["*"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cfg"]}]})).await;
    put(&ctx, "rolebindings", json!({"kind": "RoleBinding", "metadata": {"name": "b", "namespace": "dev"},
        "roleRef": {"kind": "Role", "name": "r", "apiGroup": GROUP}, "subjects": [{"kind": "User", "name": "bob"}]})).await;
    let rbac = Rbac::start(ctx.cache().clone());
    let bob = User::new("bob", vec![]);
    let want = |v: Value| vec![Rule::from_json(&v)];
    assert!(rbac
        .missing(&bob, "dev", &want(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]})))
        .is_empty());
    let m = rbac.missing(
        &bob,
        "dev",
        &want(json!({"verbs": ["get", "delete"], "apiGroups": [""], "resources": ["pods"]})),
    );
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].verbs, vec!["delete"]);
    assert!(!rbac
        .missing(&bob, "prod", &want(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]})))
        .is_empty());
    // A wildcard is only covered by a wildcard.
    assert!(!rbac
        .missing(&bob, "dev", &want(json!({"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]})))
        .is_empty());
    // resourceNames narrow what is held.
    assert!(rbac.missing(&bob, "dev", &want(json!({"verbs": ["update"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cfg"]}))).is_empty());
    assert!(!rbac
        .missing(
            &bob,
            "dev",
            &want(json!({"verbs": ["update"], "apiGroups": [""], "resources": ["configmaps"]}))
        )
        .is_empty());
}
