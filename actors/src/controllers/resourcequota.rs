//! The resource quota controller, as upstream's: keeps each ResourceQuota's `status.hard`
//! (its spec) and `status.used` (a recount of what the quota covers in its namespace).
//!
//! The API service charges a create to the quota in the create's own transaction (the
//! ResourceQuota admission plugin, an update applied when it commits); this controller
//! gives back what deleted and finished objects no longer use, and counts a new quota's
//! namespace. A recount reads the quota first and lists the objects after, and writes
//! `status` guarded by the quota's resourceVersion: a create charged meanwhile makes the
//! write conflict and the recount run again, so a recount never drops a charge. Recounts follow changes of quotas and
//! deletions of pods, Services and ConfigMaps (and pods that finish), and every quota is
//! recounted every 30 s for the other kinds (`CAPSTAN_QUOTA_RESYNC_SECONDS`).

use super::Ctx;
use crate::client::{gvr, ApiClient, Gvr};
use crate::informer::{Change, Informer};
use crate::runtime::{Action, Controller, Enqueue, ReconcileError, Reconciler};
use actix::Actor;
use capstan_api::quota;
use futures::future::BoxFuture;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// ResourceQuotas.
pub const RESOURCE_QUOTAS: Gvr = Gvr::new("", "v1", "resourcequotas");

struct QuotaController {
    client: ApiClient,
}

/// The resources (group, plural) whose objects the quota resource `r` counts.
fn counted(r: &str) -> Option<(&'static str, &'static str)> {
    if let Some(rest) = r.strip_prefix("count/") {
        let (plural, group) = rest.split_once('.').unwrap_or((rest, ""));
        let info =
            capstan_api::registry::RESOURCES.iter().find(|i| i.group == group && i.plural == plural)?;
        return Some((info.group, info.plural));
    }
    Some(match r {
        "pods" | "cpu" | "memory" | "ephemeral-storage" => ("", "pods"),
        _ if r.starts_with("requests.") && r != "requests.storage" => ("", "pods"),
        _ if r.starts_with("limits.") => ("", "pods"),
        "services" | "services.nodeports" | "services.loadbalancers" => ("", "services"),
        "persistentvolumeclaims" | "requests.storage" => ("", "persistentvolumeclaims"),
        _ if r.contains(".storageclass.storage.k8s.io/") => ("", "persistentvolumeclaims"),
        "configmaps" => ("", "configmaps"),
        "secrets" => ("", "secrets"),
        "replicationcontrollers" => ("", "replicationcontrollers"),
        "resourcequotas" => ("", "resourcequotas"),
        _ => return None,
    })
}

impl Reconciler for QuotaController {
    fn name(&self) -> &'static str {
        "resourcequota"
    }

    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            let Some((ns, name)) = key.split_once('/') else { return Ok(Action::Done) };
            // The quota first, the objects after (see the module comment).
            let mut q = match self.client.get(RESOURCE_QUOTAS, Some(ns), name).await {
                Ok(q) => q,
                Err(e) if e.is_not_found() => return Ok(Action::Done),
                Err(e) => return Err(e.into()),
            };
            let hard = q["spec"]["hard"].as_object().cloned().unwrap_or_default();
            let kinds: BTreeSet<(&str, &str)> = hard.keys().filter_map(|r| counted(r)).collect();
            let mut used = quota::Usage::new();
            for (group, plural) in kinds {
                let Some(info) =
                    capstan_api::registry::RESOURCES.iter().find(|i| i.group == group && i.plural == plural)
                else {
                    continue;
                };
                let (items, _) = self
                    .client
                    .list_all(Gvr::new(info.group, info.version, info.plural), Some(ns), None)
                    .await?;
                for (r, v) in quota::recount(&q, group, plural, items.iter()) {
                    *used.entry(r).or_default() += v;
                }
            }
            let used: Map<String, Value> = hard
                .keys()
                .map(|r| (r.clone(), Value::String(quota::format(used.get(r).copied().unwrap_or(0)))))
                .collect();
            let status = json!({"hard": hard, "used": used});
            if same_amounts(&q["status"], &status) {
                return Ok(Action::Done);
            }
            q["status"] = status;
            match self.client.update_status(RESOURCE_QUOTAS, Some(ns), q).await {
                Ok(_) => Ok(Action::Done),
                Err(e) if e.is_not_found() => Ok(Action::Done),
                // A create was charged meanwhile: count again.
                Err(e) if e.is_conflict() => Ok(Action::RequeueAfter(Duration::ZERO)),
                Err(e) => Err(e.into()),
            }
        })
    }
}

/// Whether a change of a quota (from `old`) calls for a recount: a new quota, a changed
/// `spec.hard`, or a status that does not show the spec or lacks a usage yet. As upstream,
/// a change of `status.used` alone does not: every create's charge is one, and a recount
/// lists the whole namespace (the periodic resync catches the rest).
fn needs_count(new: &Value, old: Option<&Value>) -> bool {
    let hard = &new["spec"]["hard"];
    old.is_none_or(|o| o["spec"]["hard"] != *hard)
        || new["status"]["hard"] != *hard
        || hard.as_object().into_iter().flatten().any(|(r, _)| new["status"]["used"].get(r).is_none())
}

/// Whether two statuses hold the same amounts (`1000m` and `1` are the same).
fn same_amounts(a: &Value, b: &Value) -> bool {
    ["hard", "used"].iter().all(|f| {
        let (x, y) = (a[f].as_object(), b[f].as_object());
        match (x, y) {
            (Some(x), Some(y)) => {
                x.len() == y.len()
                    && x.iter().all(|(k, v)| y.get(k).and_then(quota::parse) == quota::parse(v))
            }
            _ => false,
        }
    })
}

fn meta_str(obj: &Value, f: &str) -> Option<String> {
    obj.get("metadata").and_then(|m| m.get(f)).and_then(Value::as_str).map(str::to_string)
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let quotas = ctx.informers.get(RESOURCE_QUOTAS);
    let r = Arc::new(QuotaController { client: ctx.client.clone() });
    let addr = Controller::new(r, 2).start();
    let enqueue_ns = {
        let (ctx, quotas, addr) = (ctx.clone(), quotas.clone(), addr.clone());
        move |ns: &str| {
            for q in quotas.list_ns(ns) {
                if let Some(name) = meta_str(&q, "name") {
                    let key = format!("{ns}/{name}");
                    if ctx.owns(&key) {
                        addr.do_send(Enqueue(key));
                    }
                }
            }
        }
    };
    {
        let (ctx, addr) = (ctx.clone(), addr.clone());
        quotas.on_change(Arc::new(move |c: &Change| {
            if let Change::Applied { new, old } = c {
                if !needs_count(new, old.as_deref()) {
                    return;
                }
                if let (Some(ns), Some(name)) = (meta_str(new, "namespace"), meta_str(new, "name")) {
                    let key = format!("{ns}/{name}");
                    if ctx.owns(&key) {
                        addr.do_send(Enqueue(key));
                    }
                }
            }
        }));
    }
    // What gives quota back: deletions, and pods that finish.
    let watch = |inf: Arc<Informer>, pods: bool| {
        let e = enqueue_ns.clone();
        inf.on_change(Arc::new(move |c: &Change| {
            let gone = match c {
                Change::Deleted(_) => true,
                Change::Applied { new, old } => {
                    pods && quota::pod_terminal(new) && !old.as_ref().is_some_and(|o| quota::pod_terminal(o))
                }
            };
            if gone {
                if let Some(ns) = meta_str(c.object(), "namespace") {
                    e(&ns);
                }
            }
        }));
    };
    watch(ctx.informers.get(gvr::PODS), true);
    watch(ctx.informers.get(gvr::SERVICES), false);
    watch(ctx.informers.get(gvr::CONFIG_MAPS), false);
    let every = std::env::var("CAPSTAN_QUOTA_RESYNC_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(30);
    let ctx = ctx.clone();
    actix::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(every));
        loop {
            tick.tick().await;
            for q in quotas.list() {
                if let (Some(ns), Some(name)) = (meta_str(&q, "namespace"), meta_str(&q, "name")) {
                    let key = format!("{ns}/{name}");
                    if ctx.owns(&key) {
                        addr.do_send(Enqueue(key));
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_spec_changes_and_missing_usage_call_for_a_recount() {
        let counted = json!({"spec": {"hard": {"pods": "2"}}, "status": {"hard": {"pods": "2"}, "used": {"pods": "1"}}});
        assert!(needs_count(&counted, None), "a new quota");
        let charged = json!({"spec": {"hard": {"pods": "2"}}, "status": {"hard": {"pods": "2"}, "used": {"pods": "2"}}});
        assert!(!needs_count(&charged, Some(&counted)), "a charge alone");
        let raised = json!({"spec": {"hard": {"pods": "3"}}, "status": {"hard": {"pods": "2"}, "used": {"pods": "2"}}});
        assert!(needs_count(&raised, Some(&charged)), "a new limit");
        let more = json!({"spec": {"hard": {"pods": "2", "secrets": "1"}}, "status": {"hard": {"pods": "2", "secrets": "1"}, "used": {"pods": "2"}}});
        assert!(needs_count(&more, Some(&more)), "a limit without usage");
    }

    #[test]
    fn quota_resources_name_what_they_count() {
        assert_eq!(counted("requests.cpu"), Some(("", "pods")));
        assert_eq!(counted("requests.storage"), Some(("", "persistentvolumeclaims")));
        assert_eq!(counted("count/deployments.apps"), Some(("apps", "deployments")));
        assert_eq!(counted("count/configmaps"), Some(("", "configmaps")));
        assert_eq!(counted("services.nodeports"), Some(("", "services")));
        assert_eq!(counted("count/nothing.example.com"), None);
    }

    #[test]
    fn amounts_compare_by_value() {
        let a = json!({"hard": {"cpu": "1"}, "used": {"cpu": "1000m"}});
        let b = json!({"hard": {"cpu": "1000m"}, "used": {"cpu": "1"}});
        assert!(same_amounts(&a, &b));
        assert!(!same_amounts(&a, &json!({"hard": {"cpu": "1"}, "used": {"cpu": "2"}})));
        assert!(!same_amounts(&json!({}), &b));
    }
}
