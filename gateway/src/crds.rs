//! The CustomResourceDefinition controller every gateway runs: it follows CRDs in the watch
//! cache and keeps the dynamic part of the registry (`capstan_api::registry`) equal to the
//! established ones, as upstream's naming, establishing and finalizer controllers do.
//!
//! * A CRD whose names clash with another accepted CRD of its group (or a built-in kind)
//!   gets `NamesAccepted=False` with upstream's reason (`PluralConflict`...) and is not
//!   served; otherwise its versions are installed and it gets `NamesAccepted=True`,
//!   `Established=True`, `status.acceptedNames` and `status.storedVersions`. A CRD is
//!   served from the moment the cache shows it, well within a second of its creation.
//! * A deleting CRD (it carries the `customresourcecleanup.apiextensions.k8s.io` finalizer
//!   from its creation) gets `Terminating=True`, refuses new objects, has every object
//!   deleted (their own finalizers respected), and loses the finalizer once none is left;
//!   when it is gone from the store its kind leaves discovery and OpenAPI.
//!
//! Several gateways may run this at once: every write is a guarded update, and a lost
//! race is simply seen again on the next change.

use crate::auth::User;
use crate::service::{ApiService, DeleteOptions, WriteOptions};
use crate::status::ApiError;
use capstan_api::crd::{self, CLEANUP_FINALIZER};
use capstan_api::{meta, registry, ResourceInfo};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

/// The key prefix of CRDs.
const PREFIX: &[u8] = b"/registry/apiextensions.k8s.io/customresourcedefinitions/";

/// CRDs being deleted: their kinds take no new objects.
static TERMINATING: LazyLock<RwLock<HashSet<String>>> = LazyLock::new(|| RwLock::new(HashSet::new()));

/// Whether the CRD `name` is being deleted (creates of its objects get 405, as upstream).
pub fn is_terminating(name: &str) -> bool {
    TERMINATING.read().unwrap_or_else(|e| e.into_inner()).contains(name)
}

fn crd_resource() -> Result<&'static ResourceInfo, ApiError> {
    registry::find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .ok_or_else(|| ApiError::Internal("customresourcedefinitions are not registered".into()))
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// The key prefix of a CRD's objects.
fn objects_prefix(crd: &Value) -> Vec<u8> {
    let spec = &crd["spec"];
    format!(
        "/registry/{}/{}/",
        spec["group"].as_str().unwrap_or(""),
        spec["names"]["plural"].as_str().unwrap_or("")
    )
    .into_bytes()
}

/// Installs the CRDs that are established already (called before the gateway serves, so a
/// restarted gateway serves custom kinds from its first request), then follows changes.
pub async fn start(service: Arc<ApiService>) {
    sync(&service).await;
    tokio::spawn(async move { follow(service).await });
}

async fn follow(service: Arc<ApiService>) {
    let cache = service.cache().clone();
    let mut head = cache.subscribe();
    let mut since = cache.revision();
    loop {
        let terminating = !TERMINATING.read().unwrap_or_else(|e| e.into_inner()).is_empty();
        tokio::select! {
            r = head.changed() => { if r.is_err() { return; } }
            // While a CRD is being cleaned up, look again now and then (objects with
            // finalizers go when their owners let them).
            _ = tokio::time::sleep(Duration::from_secs(1)), if terminating => {}
        }
        let terminating_prefixes: Vec<Vec<u8>> = if terminating {
            let (crds, _, _) = cache.list(PREFIX, &prefix_end(PREFIX), 0, |_| true);
            crds.iter().filter(|c| deleting(c)).map(|c| objects_prefix(c)).collect()
        } else {
            Vec::new()
        };
        let touched = match cache.events_after(since, usize::MAX, |e| {
            e.key.starts_with(PREFIX) || terminating_prefixes.iter().any(|p| e.key.starts_with(p))
        }) {
            Ok((events, scanned)) => {
                since = scanned.max(since);
                !events.is_empty()
            }
            Err(_) => {
                since = cache.revision();
                true
            }
        };
        if touched || terminating {
            sync(&service).await;
        }
    }
}

fn deleting(obj: &Value) -> bool {
    obj["metadata"].get("deletionTimestamp").is_some_and(|v| !v.is_null())
}

/// One level-triggered pass over every CRD.
async fn sync(service: &ApiService) {
    let cache = service.cache();
    let (crds, _, _) = cache.list(PREFIX, &prefix_end(PREFIX), 0, |_| true);
    let mut crds: Vec<Value> = crds.iter().map(|c| (**c).clone()).collect();
    let mut present = HashSet::new();
    let mut terminating = HashSet::new();
    for c in &crds {
        let name = meta::name(c).unwrap_or("").to_string();
        present.insert(name.clone());
        if deleting(c) {
            terminating.insert(name.clone());
        }
    }
    *TERMINATING.write().unwrap_or_else(|e| e.into_inner()) = terminating;
    for i in 0..crds.len() {
        let c = crds[i].clone();
        let name = meta::name(&c).unwrap_or("");
        let result = if deleting(&c) {
            cleanup(service, &c).await
        } else {
            // Names accepted in this pass count for the CRDs after it (of two CRDs created
            // at once with the same names, one is accepted).
            establish(service, &c, &crds).await.map(|status| crds[i]["status"] = status)
        };
        match result {
            Ok(()) | Err(ApiError::Conflict { .. }) | Err(ApiError::NotFound { .. }) => {}
            Err(e) => tracing::warn!(crd = name, "failed to reconcile a CustomResourceDefinition: {e}"),
        }
    }
    for gone in registry::custom_crds().into_iter().filter(|n| !present.contains(n)) {
        registry::remove_custom(&gone);
        tracing::info!(crd = gone, "stopped serving a custom resource");
    }
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()})
}

/// Sets conditions on `status`, keeping `lastTransitionTime` of those whose status stays.
fn set_conditions(status: &mut Value, conds: Vec<Value>) {
    let mut list: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
    for c in conds {
        match list.iter_mut().find(|o| o["type"] == c["type"]) {
            Some(o) => {
                let keep = o["status"] == c["status"];
                let ltt = o["lastTransitionTime"].clone();
                *o = c;
                if keep {
                    o["lastTransitionTime"] = ltt;
                }
            }
            None => list.push(c),
        }
    }
    status["conditions"] = Value::Array(list);
}

/// Writes `status` on the CRD if it differs from what is stored.
async fn write_status(service: &ApiService, crd: &Value, status: Value) -> Result<(), ApiError> {
    if crd["status"] == status {
        return Ok(());
    }
    let res = crd_resource()?;
    let mut obj = crd.clone();
    obj["status"] = status;
    let name = meta::name(crd).unwrap_or("").to_string();
    service
        .update_sub(&User::system(), res, None, &name, obj, &WriteOptions::default(), Some("status"))
        .await?;
    Ok(())
}

/// Accepts the names of a CRD and serves it, or reports the conflict; returns the status.
async fn establish(service: &ApiService, crd: &Value, all: &[Value]) -> Result<Value, ApiError> {
    let name = meta::name(crd).unwrap_or("").to_string();
    let mut status = crd["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    match crd::name_conflicts(crd, all) {
        Some((reason, message)) => {
            set_conditions(
                &mut status,
                vec![
                    condition("NamesAccepted", "False", reason, &message),
                    condition("Established", "False", "NotAccepted", "not all names are accepted"),
                ],
            );
        }
        None => {
            if registry::install_custom(&name, &crd::fingerprint(crd), || crd::resources_of(crd)) {
                tracing::info!(crd = name, "serving a custom resource");
            }
            status["acceptedNames"] = crd::accepted_names(crd);
            let storage = crd["spec"]["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["storage"].as_bool() == Some(true))
                .and_then(|v| v["name"].as_str())
                .unwrap_or("")
                .to_string();
            let mut stored: Vec<Value> = status["storedVersions"].as_array().cloned().unwrap_or_default();
            if !storage.is_empty() && !stored.contains(&json!(storage)) {
                stored.push(json!(storage));
            }
            status["storedVersions"] = Value::Array(stored);
            set_conditions(
                &mut status,
                vec![
                    condition("NamesAccepted", "True", "NoConflicts", "no conflicts found"),
                    condition(
                        "Established",
                        "True",
                        "InitialNamesAccepted",
                        "the initial names have been accepted",
                    ),
                ],
            );
        }
    }
    write_status(service, crd, status.clone()).await?;
    Ok(status)
}

/// Deletes every object of a deleting CRD, then lets the CRD go.
async fn cleanup(service: &ApiService, crd: &Value) -> Result<(), ApiError> {
    let name = meta::name(crd).unwrap_or("").to_string();
    if !meta::finalizers(crd).iter().any(|f| f == CLEANUP_FINALIZER) {
        return Ok(());
    }
    let mut status = crd["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    set_conditions(
        &mut status,
        vec![condition(
            "Terminating",
            "True",
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
        )],
    );
    write_status(service, crd, status).await?;
    // The objects are deleted through a served version (installing it if this gateway has
    // never served the CRD: a restart during the deletion).
    let spec = &crd["spec"];
    let (group, plural) =
        (spec["group"].as_str().unwrap_or(""), spec["names"]["plural"].as_str().unwrap_or(""));
    let served = |v: &Value| registry::find(group, v["name"].as_str().unwrap_or(""), plural);
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let mut res = versions.iter().find_map(served);
    if res.is_none() {
        registry::install_custom(&name, &crd::fingerprint(crd), || crd::resources_of(crd));
        res = versions.iter().find_map(served);
    }
    let prefix = objects_prefix(crd);
    let (objects, _, _) = service.cache().list(&prefix, &prefix_end(&prefix), 0, |_| true);
    if let Some(res) = res {
        let system = User::system();
        for o in objects.iter().filter(|o| !deleting(o)) {
            let n = meta::name(o).unwrap_or("");
            match service.delete(&system, res, meta::namespace(o), n, &DeleteOptions::default()).await {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if !objects.is_empty() {
        // Seen again when they are gone.
        return Ok(());
    }
    let res = crd_resource()?;
    let mut obj = crd.clone();
    let rest: Vec<String> = meta::finalizers(crd).into_iter().filter(|f| f != CLEANUP_FINALIZER).collect();
    obj["metadata"]["finalizers"] = json!(rest);
    service.update(&User::system(), res, None, &name, obj, &WriteOptions::default(), false).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::MastersOnly;
    use crate::cache::Cache;
    use capstan_storage::Store;

    /// The registry is the process's: tests whose syncs would uninstall each other's CRDs
    /// take turns.
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    async fn service() -> (Arc<ApiService>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store: Arc<dyn Store> =
            Arc::new(capstan_storage::RedbStore::open(&dir.path().join("s.redb")).expect("open store"));
        let cache = Cache::start(store.clone(), 10_000).await.expect("cache");
        let svc = ApiService::new(store, cache, Arc::new(MastersOnly));
        crate::bootstrap::cluster(&svc).await.expect("bootstrap");
        (Arc::new(svc), dir)
    }

    fn crd(plural: &str, group: &str, kind: &str) -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.{group}")},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"plural": plural, "kind": kind},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                                   "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
        })
    }

    async fn settle(svc: &ApiService) {
        let rev = svc.store().current_revision().await.expect("revision");
        svc.cache().wait_for(rev, Duration::from_secs(3)).await.expect("cache caught up");
    }

    async fn get(svc: &ApiService, name: &str) -> Option<Value> {
        svc.get(&User::system(), crd_resource().unwrap(), None, name).await.ok()
    }

    fn cond<'a>(c: &'a Value, t: &str) -> &'a Value {
        c["status"]["conditions"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["type"] == t))
            .unwrap_or(&Value::Null)
    }

    #[tokio::test]
    async fn of_two_crds_with_one_kind_created_at_once_one_is_accepted() {
        let _turn = TURN.lock().await;
        let (svc, _dir) = service().await;
        let res = crd_resource().unwrap();
        let opts = WriteOptions::default();
        for plural in ["alphas", "betas"] {
            svc.create(&User::system(), res, None, crd(plural, "race.example.com", "Same"), &opts)
                .await
                .unwrap();
        }
        settle(&svc).await;
        sync(&svc).await;
        settle(&svc).await;
        let a = get(&svc, "alphas.race.example.com").await.unwrap();
        let b = get(&svc, "betas.race.example.com").await.unwrap();
        assert_eq!(cond(&a, "Established")["status"], "True");
        assert_eq!(cond(&b, "NamesAccepted")["status"], "False");
        // The singular defaults to the lower-cased kind, so it clashes first.
        assert_eq!(cond(&b, "NamesAccepted")["reason"], "SingularConflict");
        assert!(registry::find("race.example.com", "v1", "alphas").is_some());
        assert!(registry::find("race.example.com", "v1", "betas").is_none());
    }

    #[tokio::test]
    async fn deleting_a_crd_deletes_its_objects_first() {
        let _turn = TURN.lock().await;
        let (svc, _dir) = service().await;
        let res = crd_resource().unwrap();
        let opts = WriteOptions::default();
        let system = User::system();
        svc.create(&system, res, None, crd("gizmos", "cleanup.example.com", "Gizmo"), &opts).await.unwrap();
        settle(&svc).await;
        sync(&svc).await;
        let gizmos = registry::find("cleanup.example.com", "v1", "gizmos").expect("served");
        for n in ["a", "b"] {
            let obj = json!({"apiVersion": "cleanup.example.com/v1", "kind": "Gizmo", "metadata": {"name": n}, "x": 1});
            svc.create(&system, gizmos, Some("default"), obj, &opts).await.unwrap();
        }
        svc.delete(&system, res, None, "gizmos.cleanup.example.com", &DeleteOptions::default())
            .await
            .unwrap();
        settle(&svc).await;
        sync(&svc).await;
        assert!(is_terminating("gizmos.cleanup.example.com"));
        // Terminating: no new objects.
        let obj = json!({"apiVersion": "cleanup.example.com/v1", "kind": "Gizmo", "metadata": {"name": "c"}});
        let r = svc.create(&system, gizmos, Some("default"), obj, &opts).await;
        assert!(matches!(r, Err(ApiError::MethodNotAllowed(_))), "creates refused while terminating");
        settle(&svc).await;
        sync(&svc).await;
        settle(&svc).await;
        assert!(get(&svc, "gizmos.cleanup.example.com").await.is_none(), "finalizer removed, CRD gone");
        let left = svc
            .store()
            .range(b"/registry/cleanup.example.com/", b"/registry/cleanup.example.com0", 0)
            .await
            .unwrap();
        assert!(left.kvs.is_empty());
        sync(&svc).await;
        assert!(registry::find("cleanup.example.com", "v1", "gizmos").is_none(), "no longer served");
    }
}
