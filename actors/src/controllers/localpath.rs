//! The local-path provisioner (`capstan.io/local-path`, the `local-path` StorageClass), in
//! the manner of Rancher's local-path-provisioner.
//!
//! A claim of a class with this provisioner, without a volume, whose node the scheduler
//! chose (`volume.kubernetes.io/selected-node`), gets a PersistentVolume `pvc-<claim uid>`:
//! a `local` volume at `<root>/pvc-<claim uid>` where `<root>` is the node's
//! `capstan.io/local-path-root` annotation (written by its node agent), node affinity
//! `kubernetes.io/hostname In [<node>]`, the claim's size, access modes and volume mode,
//! the class's reclaim policy, and a `claimRef` to the claim, so the binder binds the two.
//! The node agent creates the directory when a pod first mounts it and, for reclaim
//! `Delete`, removes it and the volume once the volume is Released.
//!
//! The volume's name is the claim's uid: a retried or duplicated provisioning finds the
//! volume already there (409 AlreadyExists) instead of making a second one.

use super::Ctx;
use crate::client::{gvr, ApiClient};
use crate::events::Recorder;
use crate::informer::{key_of, Change, Informer};
use crate::runtime::{Action, Controller, Enqueue, ReconcileError, Reconciler};
use crate::volumes::{self as v, annotation, is_deleting};
use actix::Actor;
use futures::future::BoxFuture;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

struct LocalPath {
    client: ApiClient,
    recorder: Recorder,
    claims: Arc<Informer>,
    volumes: Arc<Informer>,
    classes: Arc<Informer>,
    nodes: Arc<Informer>,
}

impl LocalPath {
    /// The claim's class, if local-path provisions it.
    fn class_of(&self, claim: &Value) -> Option<Arc<Value>> {
        let name = v::claim_class(claim).filter(|c| !c.is_empty())?;
        self.classes.get(name).filter(|c| v::provisioner(c) == v::LOCAL_PATH_PROVISIONER)
    }
}

impl Reconciler for LocalPath {
    fn name(&self) -> &'static str {
        "local-path-provisioner"
    }

    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            self.claims.wait_synced().await;
            self.classes.wait_synced().await;
            self.volumes.wait_synced().await;
            let Some(claim) = self.claims.get(&key) else { return Ok(Action::Done) };
            let node = annotation(&claim, v::ANN_SELECTED_NODE).to_string();
            let unbound = claim["spec"]["volumeName"].as_str().unwrap_or("").is_empty();
            if is_deleting(&claim) || !unbound || node.is_empty() {
                return Ok(Action::Done);
            }
            let Some(class) = self.class_of(&claim) else { return Ok(Action::Done) };
            let uid = claim["metadata"]["uid"].as_str().unwrap_or("");
            if self.volumes.get(&format!("pvc-{uid}")).is_some() {
                return Ok(Action::Done);
            }
            // A static volume the binder can use on that node wins over a new one.
            let all = self.volumes.list();
            let on = v::named_node(&node);
            if v::find_match(&claim, all.iter().map(|p| &**p), Some(&on), true).is_some() {
                return Ok(Action::Done);
            }
            if v::volume_mode(&claim) == "Block" {
                let msg = "failed to provision volume: the local-path provisioner supports only volumeMode Filesystem";
                self.recorder.event(&claim, "Warning", "ProvisioningFailed", msg).await;
                return Ok(Action::Done);
            }
            let root = self
                .nodes
                .get(&node)
                .map(|n| annotation(&n, v::ANN_LOCAL_PATH_ROOT).to_string())
                .unwrap_or_default();
            if root.is_empty() {
                let msg = format!(
                    "failed to provision volume: node \"{node}\" has no {} annotation (is its node agent running?)",
                    v::ANN_LOCAL_PATH_ROOT
                );
                self.recorder.event(&claim, "Warning", "ProvisioningFailed", &msg).await;
                return Ok(Action::RequeueAfter(Duration::from_secs(10)));
            }
            let pv = v::local_path_volume(&claim, &class, &node, &root);
            let name = v::key(&pv);
            match self.client.create(gvr::PERSISTENT_VOLUMES, None, pv).await {
                Ok(_) => {
                    let msg = format!("Successfully provisioned volume {name}");
                    self.recorder.event(&claim, "Normal", "ProvisioningSucceeded", &msg).await;
                    Ok(Action::Done)
                }
                Err(e) if e.is_already_exists() => Ok(Action::Done),
                Err(e) => {
                    let msg =
                        format!("failed to provision volume with StorageClass \"{}\": {e}", v::key(&class));
                    self.recorder.event(&claim, "Warning", "ProvisioningFailed", &msg).await;
                    Err(e.into())
                }
            }
        })
    }
}

/// Starts the provisioner.
pub fn start(ctx: &Ctx) {
    let r = Arc::new(LocalPath {
        client: ctx.client.clone(),
        recorder: Recorder::new(ctx.client.clone(), v::LOCAL_PATH_PROVISIONER),
        claims: ctx.informers.get(gvr::PERSISTENT_VOLUME_CLAIMS),
        volumes: ctx.informers.get(gvr::PERSISTENT_VOLUMES),
        classes: ctx.informers.get(gvr::STORAGE_CLASSES),
        nodes: ctx.informers.get(gvr::NODES),
    });
    let claims = r.claims.clone();
    let addr = Controller::new(r, 32).start();
    let c = ctx.clone();
    claims.on_change(Arc::new(move |ch: &Change| {
        if let Change::Applied { new, .. } = ch {
            let pending = new["spec"]["volumeName"].as_str().unwrap_or("").is_empty();
            if pending && !annotation(new, v::ANN_SELECTED_NODE).is_empty() {
                let k = key_of(new);
                if c.owns(&k) {
                    addr.do_send(Enqueue(k));
                }
            }
        }
    }));
}
