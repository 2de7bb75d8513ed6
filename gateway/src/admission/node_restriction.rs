//! NodeRestriction: a node may change only its own Node (and not the labels reserved for
//! the control plane), create only mirror pods bound to itself, and update the status of,
//! delete or evict only pods bound to it — as upstream's plugin. capstan's node agent also
//! deletes the local-path volumes it cleaned up: a node may delete only a PersistentVolume
//! the local-path provisioner made for it (pinned to it by node affinity) once it is
//! Released or Failed.

use super::{Attributes, Context, Operation, Outcome, Plugin};
use crate::rbac::node::node_name;
use crate::status::{ApiError, ApiResult};
use capstan_api::meta;
use futures::future::BoxFuture;
use serde_json::Value;

/// The label prefix only the control plane may set on Nodes.
const RESERVED_LABELS: &str = "node-restriction.kubernetes.io/";

/// The NodeRestriction plugin.
pub struct NodeRestriction;

/// The node a local-path volume is pinned to (its single `kubernetes.io/hostname In [n]`).
fn local_path_node(pv: &Value) -> Option<&str> {
    if meta::string_map(pv, "annotations").get("pv.kubernetes.io/provisioned-by").map(String::as_str)
        != Some("capstan.io/local-path")
    {
        return None;
    }
    let terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"].as_array()?;
    let [term] = terms.as_slice() else { return None };
    let [e] = term["matchExpressions"].as_array()?.as_slice() else { return None };
    if e["key"] != "kubernetes.io/hostname" || e["operator"] != "In" {
        return None;
    }
    match e["values"].as_array()?.as_slice() {
        [v] => v.as_str(),
        _ => None,
    }
}

fn bound_to(pod: Option<&Value>) -> &str {
    pod.and_then(|p| p["spec"].get("nodeName")).and_then(Value::as_str).unwrap_or("")
}

impl Plugin for NodeRestriction {
    fn name(&self) -> &'static str {
        "NodeRestriction"
    }

    fn validate<'a>(
        &'a self,
        _ctx: &'a Context,
        a: &'a Attributes<'a>,
        obj: &'a Value,
        _out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let Some(node) = node_name(a.user) else { return Ok(()) };
            let forbid = |msg: String| Err(ApiError::forbidden(a.res, a.name, &msg));
            match (a.res.group, a.res.kind) {
                ("", "Node") => {
                    if a.name != node {
                        return forbid(format!("node {node:?} is not allowed to modify node {:?}", a.name));
                    }
                    let old = a.old.map(meta::labels).unwrap_or_default();
                    for (k, v) in meta::labels(obj) {
                        if k.starts_with(RESERVED_LABELS) && old.get(&k) != Some(&v) {
                            return forbid(format!(
                                "is not allowed to modify labels: {k} (node {node:?} cannot set labels with the prefix {RESERVED_LABELS})"
                            ));
                        }
                    }
                    Ok(())
                }
                ("coordination.k8s.io", "Lease")
                    if a.name != node || a.namespace != Some("kube-node-lease") =>
                {
                    forbid(format!("node {node:?} can only access its own lease in kube-node-lease"))
                }
                ("", "Pod") => match (a.operation, a.subresource) {
                    (Operation::Create, None) => {
                        let mirror =
                            meta::string_map(obj, "annotations").contains_key("kubernetes.io/config.mirror");
                        if !mirror {
                            return forbid(format!(
                                "pod does not have \"kubernetes.io/config.mirror\" annotation, node {node:?} can only create mirror pods"
                            ));
                        }
                        if bound_to(Some(obj)) != node {
                            return forbid(format!(
                                "node {node:?} can only create pods with spec.nodeName set to itself"
                            ));
                        }
                        Ok(())
                    }
                    (Operation::Update, Some("status")) if bound_to(a.old) != node => forbid(format!(
                        "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
                    )),
                    (Operation::Update, Some("status")) => Ok(()),
                    (Operation::Delete, None) if bound_to(a.old) != node => {
                        forbid(format!("node {node:?} can only delete pods with spec.nodeName set to itself"))
                    }
                    (Operation::Delete, None) => Ok(()),
                    _ => forbid(format!(
                        "node {node:?} can only change the status of, or delete, pods bound to it"
                    )),
                },
                ("", "PersistentVolume") => {
                    let pv = a.old.unwrap_or(obj);
                    let released = matches!(pv["status"]["phase"].as_str(), Some("Released" | "Failed"));
                    if a.operation == Operation::Delete && local_path_node(pv) == Some(node) && released {
                        Ok(())
                    } else {
                        forbid(format!(
                            "node {node:?} can only delete released local-path persistentvolumes on itself"
                        ))
                    }
                }
                _ => Ok(()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::testing::context;
    use crate::auth::User;
    use serde_json::json;

    #[tokio::test]
    async fn a_node_touches_only_its_own() {
        let (ctx, _dir) = context().await;
        let n1 = User::new("system:node:n1", vec!["system:nodes".into()]);
        let admin = User::system();
        let nodes = capstan_api::registry::find("", "v1", "nodes").unwrap();
        let pods = capstan_api::registry::find("", "v1", "pods").unwrap();
        let mut out = Outcome::default();
        let at = |op, res, sub, name, user, old| Attributes {
            operation: op,
            res,
            subresource: sub,
            namespace: None,
            name,
            user,
            old,
            dry_run: false,
        };
        let p = NodeRestriction;
        let own = json!({"metadata": {"name": "n1"}});
        assert!(p
            .validate(&ctx, &at(Operation::Update, nodes, None, "n1", &n1, None), &own, &mut out)
            .await
            .is_ok());
        let e = p
            .validate(&ctx, &at(Operation::Update, nodes, None, "n2", &n1, None), &own, &mut out)
            .await
            .unwrap_err();
        assert_eq!(e.code(), 403);
        assert!(e.to_string().contains("node \"n1\" is not allowed to modify node \"n2\""), "{e}");
        let labelled =
            json!({"metadata": {"name": "n1", "labels": {"node-restriction.kubernetes.io/pool": "gold"}}});
        assert!(p
            .validate(&ctx, &at(Operation::Update, nodes, None, "n1", &n1, None), &labelled, &mut out)
            .await
            .is_err());
        // Others are not restricted.
        assert!(p
            .validate(&ctx, &at(Operation::Update, nodes, None, "n2", &admin, None), &own, &mut out)
            .await
            .is_ok());
        let mine = json!({"spec": {"nodeName": "n1"}});
        let theirs = json!({"spec": {"nodeName": "n2"}});
        let status = |old| at(Operation::Update, pods, Some("status"), "p", &n1, Some(old));
        assert!(p.validate(&ctx, &status(&mine), &mine, &mut out).await.is_ok());
        assert!(p.validate(&ctx, &status(&theirs), &theirs, &mut out).await.is_err());
        let del = |old| at(Operation::Delete, pods, None, "p", &n1, Some(old));
        assert!(p.validate(&ctx, &del(&mine), &mine, &mut out).await.is_ok());
        assert!(p.validate(&ctx, &del(&theirs), &theirs, &mut out).await.is_err());
        let create = at(Operation::Create, pods, None, "p", &n1, None);
        assert!(p.validate(&ctx, &create, &mine, &mut out).await.is_err(), "only mirror pods");
        let spec_change = at(Operation::Update, pods, None, "p", &n1, Some(&mine));
        assert!(p.validate(&ctx, &spec_change, &mine, &mut out).await.is_err());
        // Local-path volumes: only released ones pinned to this node.
        let pvs = capstan_api::registry::find("", "v1", "persistentvolumes").unwrap();
        let pv = |node: &str, phase: &str| {
            json!({"metadata": {"name": "v", "annotations": {"pv.kubernetes.io/provisioned-by": "capstan.io/local-path"}},
                "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}},
                "status": {"phase": phase}})
        };
        let mut hand_made = pv("n1", "Released");
        hand_made["metadata"]["annotations"] = json!({});
        for (obj, ok) in [
            (pv("n1", "Released"), true),
            (pv("n2", "Released"), false),
            (pv("n1", "Bound"), false),
            (hand_made, false),
        ] {
            let a = Attributes {
                operation: Operation::Delete,
                res: pvs,
                subresource: None,
                namespace: None,
                name: "v",
                user: &n1,
                old: Some(&obj),
                dry_run: false,
            };
            assert_eq!(p.validate(&ctx, &a, &obj, &mut out).await.is_ok(), ok, "{obj}");
        }
    }
}
