//! ClusterRole aggregation, as upstream's `clusterrole-aggregation` controller: a ClusterRole
//! with an `aggregationRule` gets, as its `rules`, the union of the rules of every ClusterRole
//! its selectors pick (in name order, without repeats), kept current as they change. (The
//! authorizer aggregates on its own too, so access never waits for this write.)

use super::Ctx;
use crate::client::{ApiClient, Gvr};
use crate::informer::{Change, Informer};
use crate::runtime::{Action, Controller, Enqueue, ReconcileError, Reconciler};
use actix::Actor;
use capstan_api::selectors::LabelSelector;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

const CLUSTER_ROLES: Gvr = Gvr::new("rbac.authorization.k8s.io", "v1", "clusterroles");

struct Aggregation {
    client: ApiClient,
    roles: Arc<Informer>,
}

fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default()
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

impl Reconciler for Aggregation {
    fn name(&self) -> &'static str {
        "clusterrole-aggregation"
    }

    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            let Some(role) = self.roles.get(&key) else { return Ok(Action::Done) };
            let Some(sels) = role["aggregationRule"].get("clusterRoleSelectors").and_then(Value::as_array)
            else {
                return Ok(Action::Done);
            };
            let sels: Vec<LabelSelector> =
                sels.iter().filter_map(|s| LabelSelector::from_label_selector_json(s).ok()).collect();
            let mut others = self.roles.list();
            others.sort_by(|a, b| name(a).cmp(name(b)));
            let mut rules: Vec<Value> = Vec::new();
            for o in others.iter().filter(|o| name(o) != key) {
                if !sels.iter().any(|s| s.matches(&labels(o))) {
                    continue;
                }
                for r in o.get("rules").and_then(Value::as_array).into_iter().flatten() {
                    if !rules.contains(r) {
                        rules.push(r.clone());
                    }
                }
            }
            let current = role.get("rules").cloned().unwrap_or(Value::Null);
            let want = json!(rules);
            if current == want || (current.is_null() && rules.is_empty()) {
                return Ok(Action::Done);
            }
            let mut new = (*role).clone();
            new["rules"] = want;
            match self.client.update(CLUSTER_ROLES, None, new).await {
                Ok(_) => Ok(Action::Done),
                Err(e) if e.is_conflict() || e.is_not_found() => Ok(Action::Done),
                Err(e) => Err(e.into()),
            }
        })
    }
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let roles = ctx.informers.get(CLUSTER_ROLES);
    let r = Arc::new(Aggregation { client: ctx.client.clone(), roles: roles.clone() });
    let addr = Controller::new(r, 2).start();
    let (c, watched) = (ctx.clone(), roles.clone());
    roles.on_change(Arc::new(move |ch: &Change| {
        // Any ClusterRole change may change any aggregate: requeue the aggregates.
        let _ = ch;
        for role in watched.list() {
            if role.get("aggregationRule").is_some_and(|a| !a.is_null()) && c.owns(name(&role)) {
                addr.do_send(Enqueue(name(&role).to_string()));
            }
        }
    }));
}
