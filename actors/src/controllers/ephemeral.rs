//! The ephemeral volume controller (upstream's `pkg/controller/volume/ephemeral`): every
//! `ephemeral` volume of a pod gets its claim `<pod>-<volume>` from the volume's
//! `volumeClaimTemplate`, owned by the pod (controller reference), so the garbage
//! collector removes it with the pod. A claim of that name the pod does not own is left
//! alone; the scheduler and the node refuse the pod then, as upstream.

use super::Ctx;
use crate::client::{gvr, ApiClient};
use crate::informer::{key_of, split_key, Change, Informer};
use crate::runtime::{Action, Controller, Enqueue, ReconcileError, Reconciler};
use crate::volumes::{is_deleting, pod_claims};
use actix::Actor;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::Arc;

struct Ephemeral {
    client: ApiClient,
    pods: Arc<Informer>,
    claims: Arc<Informer>,
}

/// The claim for the ephemeral volume `volume` of `pod`.
pub fn claim_for(pod: &Value, volume: &Value, claim: &str) -> Value {
    let t = &volume["ephemeral"]["volumeClaimTemplate"];
    let mut metadata = json!({
        "name": claim,
        "namespace": pod["metadata"]["namespace"],
        "ownerReferences": [{
            "apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"],
            "uid": pod["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
        }],
    });
    for k in ["labels", "annotations"] {
        if t["metadata"][k].is_object() {
            metadata[k] = t["metadata"][k].clone();
        }
    }
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": t["spec"]})
}

impl Reconciler for Ephemeral {
    fn name(&self) -> &'static str {
        "ephemeral-volume"
    }

    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            self.pods.wait_synced().await;
            self.claims.wait_synced().await;
            let Some(pod) = self.pods.get(&key) else { return Ok(Action::Done) };
            if is_deleting(&pod) {
                return Ok(Action::Done);
            }
            let (ns, _) = split_key(&key);
            let ns = ns.unwrap_or("");
            for pc in pod_claims(&pod).into_iter().filter(|c| c.ephemeral) {
                if self.claims.get(&format!("{ns}/{}", pc.claim)).is_some() {
                    continue;
                }
                let Some(vol) = pod["spec"]["volumes"]
                    .as_array()
                    .and_then(|vs| vs.iter().find(|v| v["name"].as_str() == Some(&pc.volume)))
                else {
                    continue;
                };
                let claim = claim_for(&pod, vol, &pc.claim);
                match self.client.create(gvr::PERSISTENT_VOLUME_CLAIMS, Some(ns), claim).await {
                    Ok(_) => {}
                    Err(e) if e.is_already_exists() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(Action::Done)
        })
    }
}

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let pods = ctx.informers.get(gvr::PODS);
    let r = Arc::new(Ephemeral {
        client: ctx.client.clone(),
        pods: pods.clone(),
        claims: ctx.informers.get(gvr::PERSISTENT_VOLUME_CLAIMS),
    });
    let addr = Controller::new(r, 4).start();
    let c = ctx.clone();
    pods.on_change(Arc::new(move |ch: &Change| {
        if let Change::Applied { old: None, new } = ch {
            if pod_claims(new).iter().any(|pc| pc.ephemeral) {
                let k = key_of(new);
                if c.owns(&k) {
                    addr.do_send(Enqueue(k));
                }
            }
        }
    }));
}
