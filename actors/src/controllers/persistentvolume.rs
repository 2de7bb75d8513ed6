//! The PersistentVolume binder (upstream's PV controller, `syncClaim` and `syncVolume`).
//!
//! Claims: a claim without `spec.volumeName` is bound to the volume [`find_match`] picks
//! (a volume pre-bound to it through `claimRef`, else the smallest Available volume of its
//! class, volume mode, access modes, size and selector). A claim of a
//! `WaitForFirstConsumer` class waits until the scheduler names its node
//! (`volume.kubernetes.io/selected-node`), and only volumes usable on that node count. With
//! no match and a class with a provisioner, the claim is annotated
//! `volume.kubernetes.io/storage-provisioner` and left to the provisioner, whose volume
//! comes back pre-bound. A claim naming a volume is bound to it if it is free and fits.
//!
//! Binding writes, in upstream's order: the volume's `claimRef` (with the claim's uid),
//! the volume's phase `Bound`, the claim's `volumeName` with `pv.kubernetes.io/bind-completed`,
//! and the claim's status (`Bound`, the volume's capacity and access modes). Every write
//! carries the resourceVersion it read, so two binders never give one volume to two claims.
//!
//! Volumes: unclaimed or pre-bound → `Available`; claim present → `Bound`; claim gone (read
//! again from the API before believing the cache) → `Released`, then the reclaim policy:
//! `Retain` keeps it, `Delete` of a local-path volume is the node's work (it removes the
//! directory, then the volume), `Delete` or `Recycle` of anything else → `Failed`, as
//! upstream has no plugin to delete it. A bound claim whose volume vanished is `Lost`.

use super::Ctx;
use crate::client::{gvr, ApiClient, ClientError};
use crate::events::Recorder;
use crate::informer::{key_of, Change, Informer};
use crate::runtime::{Action, Controller, Enqueue, ReconcileError, Reconciler};
use crate::scheduler::model::NodeDef;
use crate::volumes::{self as v, annotation, claim_ref, find_match, is_deleting, phase};
use actix::{Actor, Addr};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The upstream message of a claim waiting for its consumer.
pub const WAITING_FOR_CONSUMER: &str = "waiting for first consumer to be created before binding";

struct Shared {
    client: ApiClient,
    recorder: Recorder,
    claims: Arc<Informer>,
    volumes: Arc<Informer>,
    classes: Arc<Informer>,
    nodes: Arc<Informer>,
    /// (uid, reason) of events already recorded, so a level-triggered loop does not repeat
    /// them on every pass.
    said: Mutex<HashSet<(String, String)>>,
}

impl Shared {
    async fn once(&self, obj: &Value, type_: &str, reason: &str, message: &str) {
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let fresh = {
            let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
            if said.len() > 50_000 {
                said.clear();
            }
            said.insert((uid, format!("{reason}/{message}")))
        };
        if fresh {
            self.recorder.event(obj, type_, reason, message).await;
        }
    }
}

struct Claims(Arc<Shared>);
struct Volumes(Arc<Shared>);

fn rv(obj: &Value) -> &str {
    obj["metadata"]["resourceVersion"].as_str().unwrap_or("")
}

fn set_annotation(obj: &mut Value, key: &str, value: &str) {
    let md = &mut obj["metadata"];
    if !md["annotations"].is_object() {
        md["annotations"] = json!({});
    }
    md["annotations"][key] = json!(value);
}

/// Upstream's `bind`: volume side first, then the claim.
async fn bind(sh: &Shared, pv: &Value, claim: &Value) -> Result<(), ReconcileError> {
    let claim_uid = claim["metadata"]["uid"].as_str().unwrap_or("");
    let mut pv = pv.clone();
    let by_controller = claim_ref(&pv).is_none();
    if claim_ref(&pv).is_none_or(|(_, _, uid)| uid != claim_uid) {
        pv["spec"]["claimRef"] = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "namespace": claim["metadata"]["namespace"], "name": claim["metadata"]["name"],
            "uid": claim_uid, "resourceVersion": rv(claim),
        });
        if by_controller {
            set_annotation(&mut pv, v::ANN_BOUND_BY_CONTROLLER, "yes");
        }
        pv = sh.client.update(gvr::PERSISTENT_VOLUMES, None, pv).await.map_err(ce)?;
    }
    if phase(&pv) != "Bound" {
        pv["status"] = json!({"phase": "Bound"});
        pv = sh.client.update_status(gvr::PERSISTENT_VOLUMES, None, pv).await.map_err(ce)?;
    }
    let pv_name = pv["metadata"]["name"].as_str().unwrap_or("");
    let ns = claim["metadata"]["namespace"].as_str().unwrap_or("");
    let mut claim = claim.clone();
    let named = claim["spec"]["volumeName"].as_str().unwrap_or("");
    if named != pv_name || annotation(&claim, v::ANN_BIND_COMPLETED) != "yes" {
        if named.is_empty() {
            set_annotation(&mut claim, v::ANN_BOUND_BY_CONTROLLER, "yes");
        }
        claim["spec"]["volumeName"] = json!(pv_name);
        set_annotation(&mut claim, v::ANN_BIND_COMPLETED, "yes");
        claim = sh.client.update(gvr::PERSISTENT_VOLUME_CLAIMS, Some(ns), claim).await.map_err(ce)?;
    }
    let status = json!({
        "phase": "Bound",
        "accessModes": pv["spec"]["accessModes"],
        "capacity": pv["spec"]["capacity"],
    });
    let current = &claim["status"];
    if current["phase"] != status["phase"]
        || current["accessModes"] != status["accessModes"]
        || current["capacity"] != status["capacity"]
    {
        claim["status"] = status;
        sh.client.update_status(gvr::PERSISTENT_VOLUME_CLAIMS, Some(ns), claim).await.map_err(ce)?;
        tracing::debug!(claim = %format!("{ns}/{}", v::key(&pv)), "bound");
    }
    Ok(())
}

async fn set_claim_phase(sh: &Shared, claim: &Value, phase_: &str) -> Result<(), ReconcileError> {
    if phase(claim) == phase_ {
        return Ok(());
    }
    let mut c = claim.clone();
    c["status"]["phase"] = json!(phase_);
    let ns = claim["metadata"]["namespace"].as_str().unwrap_or("");
    sh.client.update_status(gvr::PERSISTENT_VOLUME_CLAIMS, Some(ns), c).await.map_err(ce)?;
    Ok(())
}

async fn set_volume_phase(
    sh: &Shared,
    pv: &Value,
    phase_: &str,
    message: &str,
) -> Result<(), ReconcileError> {
    if phase(pv) == phase_ && pv["status"]["message"].as_str().unwrap_or("") == message {
        return Ok(());
    }
    let mut p = pv.clone();
    p["status"] = json!({"phase": phase_});
    if !message.is_empty() {
        p["status"]["message"] = json!(message);
    }
    sh.client.update_status(gvr::PERSISTENT_VOLUMES, None, p).await.map_err(ce)?;
    Ok(())
}

/// Marks a write that lost a resourceVersion race.
const CONFLICT: &str = "conflict";

fn ce(e: ClientError) -> ReconcileError {
    if e.is_conflict() {
        ReconcileError(CONFLICT.into())
    } else {
        e.into()
    }
}

fn conflict_ok(r: Result<(), ReconcileError>) -> Result<Action, ReconcileError> {
    match r {
        Ok(()) => Ok(Action::Done),
        // Someone else moved the object on: its change brings the key back.
        Err(e) if e.0 == CONFLICT => Ok(Action::Done),
        Err(e) => Err(e),
    }
}

impl Claims {
    async fn sync(&self, key: &str) -> Result<(), ReconcileError> {
        let sh = &self.0;
        let Some(claim) = sh.claims.get(key) else { return Ok(()) };
        if is_deleting(&claim) {
            return Ok(());
        }
        let volume_name = claim["spec"]["volumeName"].as_str().unwrap_or("").to_string();
        if !volume_name.is_empty() {
            return self.sync_named(&claim, &volume_name).await;
        }
        let class_name = v::claim_class(&claim).unwrap_or("").to_string();
        let class = if class_name.is_empty() { None } else { sh.classes.get(&class_name) };
        let delay = class.as_deref().is_some_and(v::delays_binding);
        let selected = annotation(&claim, v::ANN_SELECTED_NODE).to_string();
        let node = (!selected.is_empty()).then(|| {
            sh.nodes.get(&selected).map(|n| NodeDef::parse(&n)).unwrap_or_else(|| v::named_node(&selected))
        });
        let volumes = sh.volumes.list();
        if let Some(pv) = find_match(&claim, volumes.iter().map(|p| &**p), node.as_ref(), delay) {
            return bind(sh, pv, &claim).await;
        }
        if delay && selected.is_empty() {
            sh.once(&claim, "Normal", "WaitForFirstConsumer", WAITING_FOR_CONSUMER).await;
            return Ok(());
        }
        match class.as_deref() {
            Some(c)
                if !v::provisioner(c).is_empty() && v::provisioner(c) != "kubernetes.io/no-provisioner" =>
            {
                let p = v::provisioner(c).to_string();
                if annotation(&claim, v::ANN_STORAGE_PROVISIONER) != p {
                    let ns = claim["metadata"]["namespace"].as_str().unwrap_or("");
                    let name = claim["metadata"]["name"].as_str().unwrap_or("");
                    let patch = json!({"metadata": {"resourceVersion": rv(&claim), "annotations": {
                        v::ANN_STORAGE_PROVISIONER: p, v::ANN_BETA_STORAGE_PROVISIONER: p}}});
                    sh.client
                        .merge_patch(gvr::PERSISTENT_VOLUME_CLAIMS, Some(ns), name, patch)
                        .await
                        .map_err(ce)?;
                }
                let msg = format!(
                    "Waiting for a volume to be created either by the external provisioner '{p}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."
                );
                sh.once(&claim, "Normal", "ExternalProvisioning", &msg).await;
            }
            _ if !class_name.is_empty() && class.is_none() => {
                let msg = format!("storageclass.storage.k8s.io \"{class_name}\" not found");
                sh.once(&claim, "Warning", "ProvisioningFailed", &msg).await;
            }
            _ => {
                let msg = if class_name.is_empty() {
                    "no persistent volumes available for this claim and no storage class is set"
                } else {
                    "no persistent volumes available for this claim and the storage class has no provisioner"
                };
                sh.once(&claim, "Normal", "FailedBinding", msg).await;
            }
        }
        set_claim_phase(sh, &claim, "Pending").await
    }

    /// A claim that names its volume.
    async fn sync_named(&self, claim: &Value, volume_name: &str) -> Result<(), ReconcileError> {
        let sh = &self.0;
        let Some(pv) = sh.volumes.get(volume_name) else {
            // Not in the cache: ask the API before declaring it lost.
            return match sh.client.get(gvr::PERSISTENT_VOLUMES, None, volume_name).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_not_found() => {
                    if phase(claim) == "Bound" {
                        sh.once(
                            claim,
                            "Warning",
                            "ClaimLost",
                            "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
                        )
                        .await;
                        set_claim_phase(sh, claim, "Lost").await
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(e.into()),
            };
        };
        match claim_ref(&pv) {
            Some(_) if v::bound_to_claim(&pv, claim) => bind(sh, &pv, claim).await,
            None => match v::check_satisfies(&pv, claim) {
                Ok(()) => bind(sh, &pv, claim).await,
                Err(why) => {
                    let msg = format!("Cannot bind to requested volume \"{volume_name}\": {why}");
                    sh.once(claim, "Warning", "VolumeMismatch", &msg).await;
                    set_claim_phase(sh, claim, "Pending").await
                }
            },
            Some(_) => {
                if phase(claim) == "Bound" {
                    sh.once(
                        claim,
                        "Warning",
                        "ClaimMisbound",
                        "Two claims are bound to the same volume, this one is bound incorrectly",
                    )
                    .await;
                    set_claim_phase(sh, claim, "Lost").await
                } else {
                    Ok(())
                }
            }
        }
    }
}

impl Reconciler for Claims {
    fn name(&self) -> &'static str {
        "persistentvolume-binder-claims"
    }

    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            self.0.claims.wait_synced().await;
            self.0.volumes.wait_synced().await;
            self.0.classes.wait_synced().await;
            conflict_ok(self.sync(&key).await)
        })
    }
}

impl Volumes {
    async fn sync(&self, name: &str) -> Result<(), ReconcileError> {
        let sh = &self.0;
        let Some(pv) = sh.volumes.get(name) else { return Ok(()) };
        if is_deleting(&pv) && phase(&pv) != "Bound" {
            return Ok(());
        }
        let Some((ns, cname, uid)) = claim_ref(&pv) else {
            if phase(&pv) != "Failed" || pv["status"]["message"].is_null() {
                return set_volume_phase(sh, &pv, "Available", "").await;
            }
            return Ok(());
        };
        if uid.is_empty() {
            // Pre-bound by the user: waits for its claim.
            return set_volume_phase(sh, &pv, "Available", "").await;
        }
        let key = format!("{ns}/{cname}");
        let mut claim = sh.claims.get(&key).map(|c| (*c).clone());
        if claim.as_ref().is_none_or(|c| c["metadata"]["uid"].as_str() != Some(uid)) {
            // The cache may lag a fresh claim: ask the API before releasing.
            claim = match sh.client.get(gvr::PERSISTENT_VOLUME_CLAIMS, Some(ns), cname).await {
                Ok(c) => Some(c),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            };
        }
        match claim.filter(|c| c["metadata"]["uid"].as_str() == Some(uid)) {
            Some(c) => {
                let named = c["spec"]["volumeName"].as_str().unwrap_or("");
                if named == name {
                    set_volume_phase(sh, &pv, "Bound", "").await
                } else if named.is_empty() {
                    // Binding in progress: the claim's sync finishes it.
                    Ok(())
                } else if annotation(&pv, v::ANN_BOUND_BY_CONTROLLER) == "yes" {
                    // The claim went to another volume: give this one back.
                    let mut p = (*pv).clone();
                    p["spec"]["claimRef"] = Value::Null;
                    let p = sh.client.update(gvr::PERSISTENT_VOLUMES, None, p).await.map_err(ce)?;
                    set_volume_phase(sh, &p, "Available", "").await
                } else {
                    Ok(())
                }
            }
            None => self.released(&pv).await,
        }
    }

    /// The claim is gone: Released, then the reclaim policy.
    async fn released(&self, pv: &Value) -> Result<(), ReconcileError> {
        let sh = &self.0;
        if phase(pv) == "Failed" {
            return Ok(());
        }
        let name = pv["metadata"]["name"].as_str().unwrap_or("");
        match v::reclaim_policy(pv) {
            "Delete" if annotation(pv, v::ANN_PROVISIONED_BY) == v::LOCAL_PATH_PROVISIONER => {
                // The node holding the directory removes it, then the volume.
                set_volume_phase(sh, pv, "Released", "").await
            }
            "Delete" if !annotation(pv, v::ANN_PROVISIONED_BY).is_empty() => {
                set_volume_phase(sh, pv, "Released", "").await
            }
            "Delete" => {
                let msg = format!(
                    "error getting deleter volume plugin for volume \"{name}\": no deletable volume plugin matched"
                );
                sh.once(pv, "Warning", "VolumeFailedDelete", &msg).await;
                set_volume_phase(sh, pv, "Failed", &msg).await
            }
            "Recycle" => {
                let msg = format!(
                    "error getting recycler volume plugin for volume \"{name}\": no volume plugin matched"
                );
                sh.once(pv, "Warning", "VolumeFailedRecycle", &msg).await;
                set_volume_phase(sh, pv, "Failed", &msg).await
            }
            _ => set_volume_phase(sh, pv, "Released", "").await,
        }
    }
}

impl Reconciler for Volumes {
    fn name(&self) -> &'static str {
        "persistentvolume-binder-volumes"
    }

    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        Box::pin(async move {
            self.0.claims.wait_synced().await;
            self.0.volumes.wait_synced().await;
            conflict_ok(self.sync(&key).await)
        })
    }
}

fn enqueue_unbound(claims: &Informer, ctx: &Ctx, addr: &Addr<Controller<Claims>>) {
    for c in claims.list() {
        if c["spec"]["volumeName"].as_str().unwrap_or("").is_empty() && !is_deleting(&c) {
            let k = key_of(&c);
            if ctx.owns(&k) {
                addr.do_send(Enqueue(k));
            }
        }
    }
}

/// Starts the binder.
pub fn start(ctx: &Ctx) {
    let sh = Arc::new(Shared {
        client: ctx.client.clone(),
        recorder: Recorder::new(ctx.client.clone(), "persistentvolume-controller"),
        claims: ctx.informers.get(gvr::PERSISTENT_VOLUME_CLAIMS),
        volumes: ctx.informers.get(gvr::PERSISTENT_VOLUMES),
        classes: ctx.informers.get(gvr::STORAGE_CLASSES),
        nodes: ctx.informers.get(gvr::NODES),
        said: Mutex::new(HashSet::new()),
    });
    let claims_addr = Controller::new(Arc::new(Claims(sh.clone())), 32).start();
    let volumes_addr = Controller::new(Arc::new(Volumes(sh.clone())), 32).start();

    let (c, ca, va) = (ctx.clone(), claims_addr.clone(), volumes_addr.clone());
    sh.claims.on_change(Arc::new(move |ch: &Change| {
        let obj = ch.object();
        let k = key_of(obj);
        if c.owns(&k) {
            ca.do_send(Enqueue(k));
        }
        if let Some(vol) = obj["spec"]["volumeName"].as_str().filter(|n| !n.is_empty()) {
            if c.owns(vol) {
                va.do_send(Enqueue(vol.to_string()));
            }
        }
    }));
    let (c, ca, va, claims) = (ctx.clone(), claims_addr.clone(), volumes_addr.clone(), sh.claims.clone());
    sh.volumes.on_change(Arc::new(move |ch: &Change| {
        let obj = ch.object();
        let k = key_of(obj);
        if c.owns(&k) {
            va.do_send(Enqueue(k));
        }
        match claim_ref(obj) {
            Some((ns, name, _)) => {
                let ck = format!("{ns}/{name}");
                if c.owns(&ck) {
                    ca.do_send(Enqueue(ck));
                }
            }
            None if matches!(ch, Change::Applied { .. }) => enqueue_unbound(&claims, &c, &ca),
            None => {}
        }
    }));
    let (c, ca, claims) = (ctx.clone(), claims_addr, sh.claims.clone());
    sh.classes.on_change(Arc::new(move |_: &Change| enqueue_unbound(&claims, &c, &ca)));
}
