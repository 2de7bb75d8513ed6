//! The root CA publisher: every active namespace has the ConfigMap `kube-root-ca.crt`
//! holding the cluster CA (`ca.crt`), which pods' `kube-api-access-*` volumes project, as
//! upstream's `root-ca-cert-publisher`.

use super::Ctx;
use crate::client::{gvr, ApiClient};
use crate::informer::{Change, Informer};
use crate::runtime::{Action, Controller, Enqueue, ReconcileError, Reconciler};
use actix::Actor;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::Arc;

/// The ConfigMap's name.
pub const NAME: &str = "kube-root-ca.crt";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

struct Publisher {
    client: ApiClient,
    namespaces: Arc<Informer>,
    config_maps: Arc<Informer>,
    ca: Arc<str>,
}

impl Reconciler for Publisher {
    fn name(&self) -> &'static str {
        "root-ca-cert-publisher"
    }

    fn reconcile(self: Arc<Self>, ns: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            let Some(namespace) = self.namespaces.get(&ns) else { return Ok(Action::Done) };
            let terminating = namespace
                .get("metadata")
                .and_then(|m| m.get("deletionTimestamp"))
                .is_some_and(|v| !v.is_null());
            if terminating {
                return Ok(Action::Done);
            }
            let want = json!({"ca.crt": &*self.ca});
            match self.config_maps.get(&format!("{ns}/{NAME}")) {
                Some(cm) if cm.get("data") == Some(&want) => Ok(Action::Done),
                Some(cm) => {
                    let mut new = (*cm).clone();
                    new["data"] = want;
                    match self.client.update(gvr::CONFIG_MAPS, Some(&ns), new).await {
                        Ok(_) => Ok(Action::Done),
                        Err(e) if e.is_not_found() || e.is_conflict() => Ok(Action::Done),
                        Err(e) => Err(e.into()),
                    }
                }
                None => {
                    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": NAME, "namespace": ns, "annotations": {"kubernetes.io/description": DESCRIPTION}},
                        "data": want});
                    match self.client.create(gvr::CONFIG_MAPS, Some(&ns), cm).await {
                        Ok(_) => Ok(Action::Done),
                        Err(e) if e.is_already_exists() || e.is_not_found() => Ok(Action::Done),
                        Err(e) => Err(e.into()),
                    }
                }
            }
        })
    }
}

fn meta_str(obj: &Value, f: &str) -> Option<String> {
    obj.get("metadata").and_then(|m| m.get(f)).and_then(Value::as_str).map(str::to_string)
}

/// Starts the publisher when the controllers know the cluster CA.
pub fn start(ctx: &Ctx) {
    let Some(ca) = ctx.root_ca.clone() else {
        tracing::info!("no root CA given: kube-root-ca.crt ConfigMaps are not published");
        return;
    };
    let namespaces = ctx.informers.get(gvr::NAMESPACES);
    let config_maps = ctx.informers.get(gvr::CONFIG_MAPS);
    let r = Arc::new(Publisher {
        client: ctx.client.clone(),
        namespaces: namespaces.clone(),
        config_maps: config_maps.clone(),
        ca,
    });
    let addr = Controller::new(r, 4).start();
    let (c1, a1) = (ctx.clone(), addr.clone());
    namespaces.on_change(Arc::new(move |c: &Change| {
        if let Change::Applied { new, .. } = c {
            if let Some(n) = meta_str(new, "name").filter(|n| c1.owns(n)) {
                a1.do_send(Enqueue(n));
            }
        }
    }));
    let c2 = ctx.clone();
    config_maps.on_change(Arc::new(move |c: &Change| {
        let obj = match c {
            Change::Applied { new, .. } => new,
            Change::Deleted(old) => old,
        };
        if meta_str(obj, "name").as_deref() == Some(NAME) {
            if let Some(ns) = meta_str(obj, "namespace").filter(|n| c2.owns(n)) {
                addr.do_send(Enqueue(ns));
            }
        }
    }));
}
