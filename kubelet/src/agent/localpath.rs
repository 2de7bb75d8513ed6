//! Persistent volumes on the node: a pod's claims resolved to host directories, and the
//! local-path volumes' life on disk.
//!
//! Before a pod starts, each of its claims (`persistentVolumeClaim` volumes, and the
//! `<pod>-<volume>` claims of `ephemeral` volumes, which must be owned by the pod) is read:
//! it must exist, not be being deleted, and be Bound (else the pod waits, retried every
//! second); its PersistentVolume must be usable on this node and be a `local` or
//! `hostPath` volume. A local-path volume's directory (`<data-dir>/local-path/pvc-<uid>`,
//! the root this agent advertises in its Node's `capstan.io/local-path-root` annotation)
//! is made on first use, mode 0777 as Rancher's provisioner does; a hand-made `local`
//! volume's path must exist.
//!
//! [`sweep`] runs every few seconds: a local-path directory whose volume is Released with
//! reclaim policy `Delete` is renamed to `.deleting-<name>` (the commit point), the volume
//! is deleted, then the directory removed; a `.deleting-` directory left by a crash is
//! finished on the next sweep. `Retain` volumes, and directories whose volume is gone or
//! still bound, are left alone.

use capstan_actors::client::{gvr, ApiClient};
use capstan_actors::volumes::{self as v, annotation, is_deleting, local_node, owned_by, pod_claims};
use serde_json::Value;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The directory under the node's data dir holding local-path volumes.
pub const ROOT_DIR: &str = "local-path";
const DELETING: &str = ".deleting-";

/// A claim's volume, ready to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimVolume {
    /// The directory (or file, for a hostPath volume) on the host.
    pub path: PathBuf,
    /// The pod's `fsGroup` applies (local volumes; never hostPath ones).
    pub ownership: bool,
}

/// Why a pod's claims are not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    /// Not yet: a claim is not bound (retry soon).
    Wait(String),
    /// Cannot be mounted as it is.
    Fail(String),
}

/// Resolves every claim of `pod` to its volume on this node (`volume name → volume`).
pub async fn resolve(
    client: &ApiClient,
    pod: &Value,
    node: &str,
) -> Result<HashMap<String, ClaimVolume>, ClaimError> {
    let mut out = HashMap::new();
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or("");
    for pc in pod_claims(pod) {
        let what = format!("error processing PVC {ns}/{}", pc.claim);
        let claim = match client.get(gvr::PERSISTENT_VOLUME_CLAIMS, Some(ns), &pc.claim).await {
            Ok(c) => c,
            Err(e) if e.is_not_found() => {
                return Err(ClaimError::Wait(format!(
                    "{what}: persistentvolumeclaim \"{}\" not found",
                    pc.claim
                )))
            }
            Err(e) => return Err(ClaimError::Wait(format!("{what}: {e}"))),
        };
        if pc.ephemeral && !owned_by(&claim, pod) {
            return Err(ClaimError::Fail(format!(
                "{what}: PVC {ns}/{} was not created for pod {ns}/{pod_name} (pod is not owner)",
                pc.claim
            )));
        }
        if is_deleting(&claim) {
            return Err(ClaimError::Fail(format!("{what}: PVC is being deleted")));
        }
        let volume = claim["spec"]["volumeName"].as_str().unwrap_or("");
        if volume.is_empty() || v::phase(&claim) != "Bound" {
            return Err(ClaimError::Wait(format!("{what}: PVC is not bound")));
        }
        let pv = client
            .get(gvr::PERSISTENT_VOLUMES, None, volume)
            .await
            .map_err(|e| ClaimError::Wait(format!("{what}: failed to get persistentvolume {volume}: {e}")))?;
        if !v::usable_on(&pv, &v::named_node(node)) {
            return Err(ClaimError::Fail(format!(
                "{what}: volume {volume} has node affinity that does not match node {node}"
            )));
        }
        let spec = &pv["spec"];
        let resolved = if let Some(path) = spec["local"]["path"].as_str() {
            let path = PathBuf::from(path);
            let ours = annotation(&pv, v::ANN_PROVISIONED_BY) == v::LOCAL_PATH_PROVISIONER
                && local_node(&pv) == Some(node);
            if ours && !path.exists() {
                std::fs::create_dir_all(&path)
                    .and_then(|_| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)))
                    .map_err(|e| {
                        ClaimError::Fail(format!("{what}: failed to create {}: {e}", path.display()))
                    })?;
            }
            if !path.exists() {
                return Err(ClaimError::Fail(format!(
                    "MountVolume.NewMounter initialization failed for volume \"{volume}\" : path \"{}\" does not exist",
                    path.display()
                )));
            }
            ClaimVolume { path, ownership: true }
        } else if let Some(path) = spec["hostPath"]["path"].as_str() {
            let kind = spec["hostPath"]["type"].as_str().unwrap_or("");
            let path = super::volumes::host_path(Path::new(path), kind)
                .map_err(|e| ClaimError::Fail(format!("{what}: {e}")))?;
            ClaimVolume { path, ownership: false }
        } else {
            return Err(ClaimError::Fail(format!(
                "{what}: volume {volume} is of a type this node cannot mount (only local and hostPath)"
            )));
        };
        out.insert(pc.volume.clone(), resolved);
    }
    Ok(out)
}

/// Whether the node should delete this volume and its directory.
fn reclaimable(pv: &Value, node: &str) -> bool {
    annotation(pv, v::ANN_PROVISIONED_BY) == v::LOCAL_PATH_PROVISIONER
        && local_node(pv) == Some(node)
        && v::phase(pv) == "Released"
        && v::reclaim_policy(pv) == "Delete"
}

/// Removes released local-path volumes of this node (see the module docs). Returns the
/// names of the volumes removed.
pub async fn sweep(client: &ApiClient, root: &Path, node: &str) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else { return removed };
    let names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    for name in names {
        let (pv_name, dir) = match name.strip_prefix(DELETING) {
            Some(pv) => (pv.to_string(), root.join(&name)),
            None if name.starts_with("pvc-") => {
                match client.get(gvr::PERSISTENT_VOLUMES, None, &name).await {
                    Ok(pv) if reclaimable(&pv, node) => {}
                    _ => continue,
                }
                let doomed = root.join(format!("{DELETING}{name}"));
                if let Err(e) = std::fs::rename(root.join(&name), &doomed) {
                    tracing::warn!(volume = %name, "failed to mark the volume for deletion: {e}");
                    continue;
                }
                (name.clone(), doomed)
            }
            None => continue,
        };
        match client.delete(gvr::PERSISTENT_VOLUMES, None, &pv_name, None).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::warn!(volume = %pv_name, "failed to delete the released volume (retried): {e}");
                continue;
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(volume = %pv_name, dir = %dir.display(), "deleted released local-path volume");
                removed.push(pv_name);
            }
            Err(e) => tracing::warn!(dir = %dir.display(), "failed to remove the volume's directory: {e}"),
        }
    }
    removed
}
