//! The storage admission plugins, as upstream's:
//!
//! - **DefaultStorageClass** fills `spec.storageClassName` of a new claim that names no
//!   class (not even `""`) with the default StorageClass (annotation
//!   `storageclass.kubernetes.io/is-default-class: "true"`); with several defaults, the
//!   newest wins (ties: the name first in order), as upstream since 1.26.
//! - **StorageObjectInUseProtection** adds `kubernetes.io/pvc-protection` to new claims
//!   and `kubernetes.io/pv-protection` to new volumes; the protection controllers remove
//!   them once the object is unused.

use super::{Attributes, Context, Operation, Outcome, Plugin};
use crate::status::ApiResult;
use futures::future::BoxFuture;
use serde_json::{json, Value};

const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const BETA_DEFAULT_CLASS: &str = "storageclass.beta.kubernetes.io/is-default-class";

/// The DefaultStorageClass plugin.
pub struct DefaultStorageClass;

/// The default class among `classes`, if any.
fn pick_default(classes: &[crate::cache::Obj]) -> Option<String> {
    let is_default = |c: &Value| {
        let a = &c["metadata"]["annotations"];
        a[DEFAULT_CLASS].as_str() == Some("true") || a[BETA_DEFAULT_CLASS].as_str() == Some("true")
    };
    let mut best: Option<(&str, &str)> = None;
    for c in classes.iter().filter(|c| is_default(c)) {
        let name = c["metadata"]["name"].as_str().unwrap_or("");
        let created = c["metadata"]["creationTimestamp"].as_str().unwrap_or("");
        // RFC 3339 times of one format order as strings.
        let newer = match best {
            None => true,
            Some((n, t)) => created > t || (created == t && name < n),
        };
        if newer {
            best = Some((name, created));
        }
    }
    best.map(|(n, _)| n.to_string())
}

impl Plugin for DefaultStorageClass {
    fn name(&self) -> &'static str {
        "DefaultStorageClass"
    }

    fn admit<'a>(
        &'a self,
        ctx: &'a Context,
        a: &'a Attributes<'a>,
        obj: &'a mut Value,
        _out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            if !a.is(Operation::Create, "", "PersistentVolumeClaim") {
                return Ok(());
            }
            let named = obj["spec"].get("storageClassName").is_some_and(|c| !c.is_null())
                || obj["metadata"]["annotations"].get("volume.beta.kubernetes.io/storage-class").is_some();
            if named || !obj["spec"].is_object() {
                return Ok(());
            }
            let Some(res) = capstan_api::registry::find("storage.k8s.io", "v1", "storageclasses") else {
                return Ok(());
            };
            let prefix = crate::keys::prefix(res, None);
            let end = capstan_storage::prefix_end(&prefix);
            let (classes, _, _) = ctx.cache().list(&prefix, &end, 0, |_| true);
            if let Some(name) = pick_default(&classes) {
                obj["spec"]["storageClassName"] = json!(name);
            }
            Ok(())
        })
    }
}

/// The StorageObjectInUseProtection plugin.
pub struct StorageObjectInUseProtection;

impl Plugin for StorageObjectInUseProtection {
    fn name(&self) -> &'static str {
        "StorageObjectInUseProtection"
    }

    fn admit<'a>(
        &'a self,
        _ctx: &'a Context,
        a: &'a Attributes<'a>,
        obj: &'a mut Value,
        _out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let finalizer = if a.is(Operation::Create, "", "PersistentVolumeClaim") {
                "kubernetes.io/pvc-protection"
            } else if a.is(Operation::Create, "", "PersistentVolume") {
                "kubernetes.io/pv-protection"
            } else {
                return Ok(());
            };
            let Some(md) = obj.get_mut("metadata").and_then(Value::as_object_mut) else { return Ok(()) };
            let list = md.entry("finalizers").or_insert_with(|| json!([]));
            if list.is_null() {
                *list = json!([]);
            }
            if let Some(l) = list.as_array_mut() {
                if !l.iter().any(|f| f.as_str() == Some(finalizer)) {
                    l.push(json!(finalizer));
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::testing::context;
    use crate::auth::User;
    use capstan_storage::{Op, Precondition, Txn};

    async fn put_class(ctx: &Context, name: &str, default: bool, created: &str) {
        let res = capstan_api::registry::find("storage.k8s.io", "v1", "storageclasses").unwrap();
        let mut c = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name, "creationTimestamp": created}, "provisioner": "x"});
        if default {
            c["metadata"]["annotations"] = json!({DEFAULT_CLASS: "true"});
        }
        let key = crate::keys::object_key(res, None, name);
        ctx.store()
            .commit(Txn::single(Op::put(key, crate::service::encode(&c).unwrap(), Precondition::None)))
            .await
            .unwrap();
    }

    async fn admit(ctx: &Context, plugin: &dyn Plugin, plural: &str, obj: &mut Value) {
        let u = User::system();
        let res = capstan_api::registry::find("", "v1", plural).unwrap();
        let a = Attributes {
            operation: Operation::Create,
            res,
            subresource: None,
            namespace: Some("default"),
            name: "c",
            user: &u,
            old: None,
            dry_run: false,
        };
        plugin.admit(ctx, &a, obj, &mut Outcome::default()).await.unwrap();
    }

    async fn settle(ctx: &Context) {
        let rev = ctx.store().current_revision().await.unwrap();
        ctx.cache().wait_for(rev, std::time::Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn fills_the_newest_default_class() {
        let (ctx, _dir) = context().await;
        let mut claim = json!({"spec": {"accessModes": ["ReadWriteOnce"]}});
        admit(&ctx, &DefaultStorageClass, "persistentvolumeclaims", &mut claim).await;
        assert!(claim["spec"].get("storageClassName").is_none(), "no default class: unchanged");
        put_class(&ctx, "slow", false, "2026-01-01T00:00:00Z").await;
        put_class(&ctx, "old-default", true, "2026-01-01T00:00:00Z").await;
        put_class(&ctx, "new-default", true, "2026-02-01T00:00:00Z").await;
        settle(&ctx).await;
        admit(&ctx, &DefaultStorageClass, "persistentvolumeclaims", &mut claim).await;
        assert_eq!(claim["spec"]["storageClassName"], "new-default");
        // An explicit class, even "", is kept.
        let mut none = json!({"spec": {"storageClassName": ""}});
        admit(&ctx, &DefaultStorageClass, "persistentvolumeclaims", &mut none).await;
        assert_eq!(none["spec"]["storageClassName"], "");
        let mut slow = json!({"spec": {"storageClassName": "slow"}});
        admit(&ctx, &DefaultStorageClass, "persistentvolumeclaims", &mut slow).await;
        assert_eq!(slow["spec"]["storageClassName"], "slow");
    }

    #[tokio::test]
    async fn protects_claims_and_volumes() {
        let (ctx, _dir) = context().await;
        let mut claim = json!({"metadata": {"name": "c"}, "spec": {}});
        admit(&ctx, &StorageObjectInUseProtection, "persistentvolumeclaims", &mut claim).await;
        admit(&ctx, &StorageObjectInUseProtection, "persistentvolumeclaims", &mut claim).await;
        assert_eq!(claim["metadata"]["finalizers"], json!(["kubernetes.io/pvc-protection"]));
        let mut pv = json!({"metadata": {"name": "v", "finalizers": ["x"]}, "spec": {}});
        admit(&ctx, &StorageObjectInUseProtection, "persistentvolumes", &mut pv).await;
        assert_eq!(pv["metadata"]["finalizers"], json!(["x", "kubernetes.io/pv-protection"]));
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {}});
        admit(&ctx, &StorageObjectInUseProtection, "pods", &mut pod).await;
        assert!(pod["metadata"].get("finalizers").is_none());
    }
}
