//! The service account controller: every active namespace has a `default` ServiceAccount.

use super::Ctx;
use crate::client::{gvr, ApiClient};
use crate::informer::{Change, Informer};
use crate::runtime::{Action, Controller, Enqueue, ReconcileError, Reconciler};
use actix::Actor;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::Arc;

struct ServiceAccounts {
    client: ApiClient,
    namespaces: Arc<Informer>,
    accounts: Arc<Informer>,
}

impl Reconciler for ServiceAccounts {
    fn name(&self) -> &'static str {
        "serviceaccount"
    }

    fn reconcile(self: Arc<Self>, ns: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            let Some(namespace) = self.namespaces.get(&ns) else { return Ok(Action::Done) };
            let terminating = namespace
                .get("metadata")
                .and_then(|m| m.get("deletionTimestamp"))
                .is_some_and(|v| !v.is_null());
            if terminating || self.accounts.get(&format!("{ns}/default")).is_some() {
                return Ok(Action::Done);
            }
            let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
            match self.client.create(gvr::SERVICE_ACCOUNTS, Some(&ns), sa).await {
                Ok(_) => Ok(Action::Done),
                Err(e) if e.is_already_exists() => Ok(Action::Done),
                Err(e) if e.is_not_found() => Ok(Action::Done),
                Err(e) => Err(e.into()),
            }
        })
    }
}

fn namespace_name(obj: &Value) -> Option<String> {
    obj.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str).map(str::to_string)
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let namespaces = ctx.informers.get(gvr::NAMESPACES);
    let accounts = ctx.informers.get(gvr::SERVICE_ACCOUNTS);
    let r = Arc::new(ServiceAccounts {
        client: ctx.client.clone(),
        namespaces: namespaces.clone(),
        accounts: accounts.clone(),
    });
    let addr = Controller::new(r, 4).start();
    let ctx2 = ctx.clone();
    let a = addr.clone();
    namespaces.on_change(Arc::new(move |c: &Change| {
        if let Change::Applied { new, .. } = c {
            if let Some(n) = new.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str) {
                if ctx2.owns(n) {
                    a.do_send(Enqueue(n.to_string()));
                }
            }
        }
    }));
    let ctx3 = ctx.clone();
    accounts.on_change(Arc::new(move |c: &Change| {
        if let Change::Deleted(old) = c {
            if let Some(ns) = namespace_name(old) {
                if ctx3.owns(&ns) {
                    addr.do_send(Enqueue(ns));
                }
            }
        }
    }));
}
