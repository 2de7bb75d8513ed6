//! The pvc-protection and pv-protection controllers (upstream's
//! `pkg/controller/volume/pvcprotection` and `pvprotection`).
//!
//! The StorageObjectInUseProtection admission plugin puts `kubernetes.io/pvc-protection`
//! on every claim and `kubernetes.io/pv-protection` on every volume. Deleting either only
//! marks it; these controllers remove the finalizer once the object is unused: a claim
//! when no scheduled, unfinished pod of its namespace uses it (by name, or as the claim of
//! an ephemeral volume), a volume when it is no longer `Bound`. Objects that lack the
//! finalizer (made before the plugin) get it.

use super::Ctx;
use crate::client::{gvr, ApiClient, Gvr};
use crate::informer::{key_of, split_key, Change, Informer};
use crate::runtime::{Action, Controller, Enqueue, ReconcileError, Reconciler};
use crate::volumes::{self as v, is_deleting, pod_active, pod_claims};
use actix::Actor;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::Arc;

struct Protection {
    client: ApiClient,
    gvr: Gvr,
    finalizer: &'static str,
    objects: Arc<Informer>,
    pods: Arc<Informer>,
}

fn finalizers(obj: &Value) -> Vec<&str> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

impl Protection {
    fn in_use(&self, obj: &Value) -> bool {
        if self.gvr == gvr::PERSISTENT_VOLUMES {
            return v::phase(obj) == "Bound";
        }
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
        let name = obj["metadata"]["name"].as_str().unwrap_or("");
        self.pods.list_ns(ns).iter().any(|p| pod_active(p) && pod_claims(p).iter().any(|c| c.claim == name))
    }
}

impl Reconciler for Protection {
    fn name(&self) -> &'static str {
        if self.gvr == gvr::PERSISTENT_VOLUMES {
            "pv-protection"
        } else {
            "pvc-protection"
        }
    }

    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            self.objects.wait_synced().await;
            self.pods.wait_synced().await;
            let Some(obj) = self.objects.get(&key) else { return Ok(Action::Done) };
            let has = finalizers(&obj).contains(&self.finalizer);
            let deleting = is_deleting(&obj);
            let list: Vec<&str> = match (deleting, has) {
                (false, false) => {
                    let mut l = finalizers(&obj);
                    l.push(self.finalizer);
                    l
                }
                (true, true) if !self.in_use(&obj) => {
                    finalizers(&obj).into_iter().filter(|f| *f != self.finalizer).collect()
                }
                _ => return Ok(Action::Done),
            };
            let (ns, name) = split_key(&key);
            let patch = json!({"metadata": {
                "resourceVersion": obj["metadata"]["resourceVersion"], "finalizers": list}});
            match self.client.merge_patch(self.gvr, ns, name, patch).await {
                Ok(_) => Ok(Action::Done),
                Err(e) if e.is_not_found() || e.is_conflict() => Ok(Action::Done),
                Err(e) => Err(e.into()),
            }
        })
    }
}

/// Starts both controllers.
pub fn start(ctx: &Ctx) {
    let pods = ctx.informers.get(gvr::PODS);
    for (g, finalizer) in
        [(gvr::PERSISTENT_VOLUME_CLAIMS, v::PVC_PROTECTION), (gvr::PERSISTENT_VOLUMES, v::PV_PROTECTION)]
    {
        let objects = ctx.informers.get(g);
        let r = Arc::new(Protection {
            client: ctx.client.clone(),
            gvr: g,
            finalizer,
            objects: objects.clone(),
            pods: pods.clone(),
        });
        let addr = Controller::new(r, 4).start();
        let (c, a) = (ctx.clone(), addr.clone());
        objects.on_change(Arc::new(move |ch: &Change| {
            if let Change::Applied { new, .. } = ch {
                let k = key_of(new);
                if c.owns(&k) {
                    a.do_send(Enqueue(k));
                }
            }
        }));
        if g == gvr::PERSISTENT_VOLUME_CLAIMS {
            // A pod ending or leaving may free its claims.
            let (c, claims) = (ctx.clone(), objects.clone());
            pods.on_change(Arc::new(move |ch: &Change| {
                let pod = ch.object();
                if matches!(ch, Change::Applied { .. }) && pod_active(pod) {
                    return;
                }
                let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
                for pc in pod_claims(pod) {
                    let k = format!("{ns}/{}", pc.claim);
                    if claims.get(&k).is_some_and(|cl| is_deleting(&cl)) && c.owns(&k) {
                        addr.do_send(Enqueue(k));
                    }
                }
            }));
        }
    }
}
