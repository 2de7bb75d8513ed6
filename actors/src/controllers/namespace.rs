//! The namespace controller: empties a terminating namespace, then lets it go.
//!
//! As upstream's `pkg/controller/namespace`: when a namespace has a `deletionTimestamp`
//! and `spec.finalizers` holds `kubernetes`, every namespaced object in it is deleted
//! through the API (each stored namespaced resource of the registry: list, delete); once
//! nothing is left, `kubernetes` is removed from `spec.finalizers` with the
//! `namespaces/<name>/finalize` subresource, and the API service deletes the namespace when
//! no finalizer remains.

use super::Ctx;
use crate::client::{gvr, ApiClient, Gvr};
use crate::informer::{Change, Informer};
use crate::runtime::{Action, Controller, Enqueue, ReconcileError, Reconciler};
use actix::Actor;
use capstan_api::registry;
use capstan_bus::ApiRequest;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The finalizer this controller owns, in `spec.finalizers`.
pub const FINALIZER: &str = "kubernetes";

/// How long to wait before looking again at content that is still terminating.
const RECHECK: Duration = Duration::from_millis(500);

fn is_deleting(obj: &Value) -> bool {
    obj.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|v| !v.is_null())
}

fn spec_finalizers(ns: &Value) -> Vec<String> {
    ns.get("spec")
        .and_then(|s| s.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Whether the controller has work on this namespace.
fn needs_finalizing(ns: &Value) -> bool {
    is_deleting(ns) && spec_finalizers(ns).iter().any(|f| f == FINALIZER)
}

/// The body of the `finalize` call: the namespace without our finalizer.
fn finalize_body(ns: &Value) -> Value {
    let mut body = ns.clone();
    let rest: Vec<String> = spec_finalizers(ns).into_iter().filter(|f| f != FINALIZER).collect();
    if let Some(o) = body.as_object_mut() {
        let spec = o.entry("spec").or_insert_with(|| json!({}));
        if let Some(s) = spec.as_object_mut() {
            s.insert("finalizers".into(), json!(rest));
        }
    }
    body
}

/// Every resource whose objects live in namespaces and are stored.
fn namespaced_resources() -> impl Iterator<Item = Gvr> {
    // Custom kinds too: in `capstan up` the gateway's registry is this process's.
    registry::all()
        .into_iter()
        .filter(|r| r.namespaced() && r.stored && r.has_verb("list") && r.has_verb("delete"))
        .map(|r| Gvr::new(r.group, r.version, r.plural))
}

struct Namespaces {
    client: ApiClient,
    namespaces: Arc<Informer>,
}

impl Namespaces {
    /// Deletes what is in `ns`; returns how many objects were still there.
    async fn delete_contents(&self, ns: &str) -> Result<usize, ReconcileError> {
        let mut remaining = 0;
        for g in namespaced_resources() {
            let (items, _) = self.client.list_all(g, Some(ns), None).await?;
            for item in items {
                remaining += 1;
                if is_deleting(&item) {
                    continue;
                }
                let Some(name) = capstan_api::meta::name(&item) else { continue };
                match self.client.delete(g, Some(ns), name, Some("Background")).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() || e.is_conflict() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(remaining)
    }

    /// Removes our finalizer through `namespaces/<name>/finalize`.
    async fn finalize(&self, ns: &Value, name: &str) -> Result<(), ReconcileError> {
        let req = ApiRequest {
            verb: "update".into(),
            group: String::new(),
            version: "v1".into(),
            resource: "namespaces".into(),
            name: Some(name.to_string()),
            subresource: Some("finalize".into()),
            body: Some(finalize_body(ns)),
            ..Default::default()
        };
        match self.client.call(req).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Reconciler for Namespaces {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn reconcile(self: Arc<Self>, name: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            let Some(ns) = self.namespaces.get(&name) else { return Ok(Action::Done) };
            if !needs_finalizing(&ns) {
                return Ok(Action::Done);
            }
            // A first pass deletes; a second one sees what is left (terminating pods, objects
            // with finalizers of their own).
            if self.delete_contents(&name).await? > 0 {
                let left = self.delete_contents(&name).await?;
                if left > 0 {
                    tracing::debug!(namespace = %name, left, "namespace content is still terminating");
                    return Ok(Action::RequeueAfter(RECHECK));
                }
            }
            self.finalize(&ns, &name).await?;
            Ok(Action::Done)
        })
    }
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let namespaces = ctx.informers.get(gvr::NAMESPACES);
    let r = Arc::new(Namespaces { client: ctx.client.clone(), namespaces: namespaces.clone() });
    let addr = Controller::new(r, 4).start();
    let ctx2 = ctx.clone();
    namespaces.on_change(Arc::new(move |c: &Change| {
        if let Change::Applied { new, .. } = c {
            if !needs_finalizing(new) {
                return;
            }
            if let Some(n) = capstan_api::meta::name(new) {
                if ctx2.owns(n) {
                    addr.do_send(Enqueue(n.to_string()));
                }
            }
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalizing_needs_deletion_and_our_finalizer() {
        let active = json!({"metadata": {"name": "a"}, "spec": {"finalizers": ["kubernetes"]}});
        assert!(!needs_finalizing(&active));
        let term = json!({"metadata": {"name": "a", "deletionTimestamp": "2025-01-01T00:00:00Z"},
                          "spec": {"finalizers": ["example.com/x", "kubernetes"]}});
        assert!(needs_finalizing(&term));
        let body = finalize_body(&term);
        assert_eq!(body["spec"]["finalizers"], json!(["example.com/x"]));
        assert_eq!(body["metadata"]["name"], "a");
        let done = finalize_body(&body);
        assert!(!needs_finalizing(&done));
    }

    #[test]
    fn covers_namespaced_stored_resources_only() {
        let all: Vec<Gvr> = namespaced_resources().collect();
        assert!(all.contains(&gvr::PODS));
        assert!(all.contains(&gvr::CONFIG_MAPS));
        assert!(all.contains(&gvr::DEPLOYMENTS));
        assert!(!all.contains(&gvr::NAMESPACES));
        assert!(!all.contains(&gvr::NODES));
    }
}
