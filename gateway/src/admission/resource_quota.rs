//! ResourceQuota: a create in a namespace with quotas is charged to every quota that covers
//! it, in the object's own transaction, as upstream's quota admission.
//!
//! Each covering quota is read from the store (not the cache) and written back with the
//! new `status.used`, guarded by its revision: of two creates racing for the last unit of a
//! quota, one commits and the other's transaction fails and is admitted again against the
//! new usage, so a quota is never exceeded. Usage goes down when the quota controller
//! recounts (after deletes), as upstream; the charge itself follows
//! [`capstan_api::quota`]. A quota whose status was not counted yet refuses what it limits
//! ("status unknown for quota"), as upstream.

use super::{Attributes, Context, Operation, Outcome, Plugin};
use crate::cache::decode_stored;
use crate::service::encode;
use crate::status::{ApiError, ApiResult};
use capstan_api::quota::{self, Usage};
use capstan_api::{meta, registry};
use capstan_storage::{Op, Precondition};
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The ResourceQuota plugin.
#[derive(Default)]
pub struct ResourceQuota {
    /// Per namespace, the lock its charges take in turn (in this process; several gateways
    /// on one store still never exceed a quota, they only conflict and retry more).
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ResourceQuota {
    async fn lock(&self, ns: &str) -> Arc<tokio::sync::OwnedMutexGuard<()>> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(ns.to_string()).or_default().clone()
        };
        Arc::new(m.lock_owned().await)
    }
}

impl Plugin for ResourceQuota {
    fn name(&self) -> &'static str {
        "ResourceQuota"
    }

    fn validate<'a>(
        &'a self,
        ctx: &'a Context,
        a: &'a Attributes<'a>,
        obj: &'a Value,
        out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            if a.operation != Operation::Create || a.subresource.is_some() {
                return Ok(());
            }
            let Some(ns) = a.namespace else { return Ok(()) };
            let Some(quotas) = registry::find("", "v1", "resourcequotas") else { return Ok(()) };
            let prefix = crate::keys::prefix(quotas, Some(ns));
            let end = capstan_storage::prefix_end(&prefix);
            // Cheap check first: most namespaces have no quota.
            if ctx.cache().list(&prefix, &end, 1, |_| true).0.is_empty() {
                return Ok(());
            }
            let charge = quota::usage(a.res.group, a.res.plural, obj);
            // Held until the write commits: the next charge reads this one's usage.
            out.guards.push(self.lock(ns).await);
            let stored = ctx.store().range(&prefix, &end, 0).await?;
            for kv in stored.kvs {
                let Some(mut q) = decode_stored(&kv.value, kv.mod_revision) else { continue };
                if !quota::covers(&q, a.res.group, a.res.plural, obj) {
                    continue;
                }
                let Some(used) = check(&q, a, obj, &charge)? else { continue };
                if a.dry_run {
                    continue;
                }
                q["status"]["used"] = Value::Object(
                    used.iter().map(|(r, v)| (r.clone(), Value::String(quota::format(*v)))).collect(),
                );
                meta::remove_meta(&mut q, "resourceVersion");
                out.reservations.ops.push(Op::put(
                    kv.key,
                    encode(&q)?,
                    Precondition::ModRevision(kv.mod_revision),
                ));
                // A quota changed meanwhile: admit the write again.
                out.reservations.on_conflict.push(None);
            }
            Ok(())
        })
    }
}

/// The usage of `q` after charging `charge`, or None when `q` limits none of it; a 403
/// when it would exceed `q` or `q`'s status is not known yet.
fn check(q: &Value, a: &Attributes<'_>, obj: &Value, charge: &Usage) -> ApiResult<Option<Usage>> {
    let name = meta::name(q).unwrap_or("").to_string();
    let hard: Map<String, Value> = q["spec"]["hard"].as_object().cloned().unwrap_or_default();
    let limited: Vec<&String> = hard.keys().filter(|r| charge.contains_key(*r)).collect();
    let is_pod = a.res.group.is_empty() && a.res.plural == "pods";
    if is_pod {
        let missing = quota::unspecified(&q["spec"]["hard"], obj);
        if !missing.is_empty() {
            let what: Vec<String> =
                missing.iter().map(|(r, cs)| format!("{r} for: {}", cs.join(","))).collect();
            return Err(ApiError::forbidden(
                a.res,
                a.name,
                &format!("failed quota: {name}: must specify {}", what.join("; ")),
            ));
        }
    }
    if limited.is_empty() {
        return Ok(None);
    }
    let status_used = q["status"]["used"].as_object();
    let unknown: Vec<&str> = limited
        .iter()
        .filter(|r| {
            status_used.and_then(|u| u.get(r.as_str())).is_none()
                || q["status"]["hard"].get(r.as_str()).is_none()
        })
        .map(|r| r.as_str())
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::forbidden(
            a.res,
            a.name,
            &format!("status unknown for quota: {name}, resources: {}", unknown.join(",")),
        ));
    }
    let mut used: Usage =
        status_used.into_iter().flatten().filter_map(|(r, v)| Some((r.clone(), quota::parse(v)?))).collect();
    let mut over = Vec::new();
    for r in &limited {
        let want = charge[r.as_str()];
        let now = used.get(r.as_str()).copied().unwrap_or(0);
        let limit = quota::parse(&hard[r.as_str()]).unwrap_or(0);
        if now + want > limit {
            over.push((r.as_str(), want, now, limit));
        }
        used.insert((*r).clone(), now + want);
    }
    if !over.is_empty() {
        // Which amount of each exceeded resource: 1 requested, 2 used, 3 limited.
        let list = |i: usize| {
            over.iter()
                .map(|o| format!("{}={}", o.0, quota::format([o.1, o.2, o.3][i - 1])))
                .collect::<Vec<_>>()
                .join(",")
        };
        return Err(ApiError::forbidden(
            a.res,
            a.name,
            &format!(
                "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
                list(1),
                list(2),
                list(3),
            ),
        ));
    }
    Ok(Some(used))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{context, put};
    use super::*;
    use crate::auth::User;
    use serde_json::json;

    fn attrs<'a>(res: &'a capstan_api::ResourceInfo, user: &'a User, name: &'a str) -> Attributes<'a> {
        Attributes {
            operation: Operation::Create,
            res,
            subresource: None,
            namespace: Some("ns"),
            name,
            user,
            old: None,
            dry_run: false,
        }
    }

    #[tokio::test]
    async fn charges_refuses_and_names_what_is_missing() {
        let (ctx, _dir) = context().await;
        put(
            &ctx,
            "resourcequotas",
            &json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q", "namespace": "ns", "uid": "u"},
                    "spec": {"hard": {"pods": "2", "requests.cpu": "1"}},
                    "status": {"hard": {"pods": "2", "requests.cpu": "1"}, "used": {"pods": "1", "requests.cpu": "500m"}}}),
        )
        .await;
        let cache_has_it = || {
            ctx.cache()
                .get(&crate::keys::object_key(
                    registry::find("", "v1", "resourcequotas").unwrap(),
                    Some("ns"),
                    "q",
                ))
                .is_some()
        };
        for _ in 0..200 {
            if cache_has_it() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let pods = registry::find("", "v1", "pods").unwrap();
        let user = User::default();
        let ok = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "250m"}}}]}});
        let mut out = Outcome::default();
        ResourceQuota::default()
            .validate(&ctx, &attrs(pods, &user, "p"), &ok, &mut out)
            .await
            .expect("admitted");
        assert_eq!(out.reservations.ops.len(), 1, "the quota's new usage commits with the pod");

        let big =
            json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "750m"}}}]}});
        let err = ResourceQuota::default()
            .validate(&ctx, &attrs(pods, &user, "p"), &big, &mut Outcome::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), 403);
        assert!(
            err.to_string().contains("exceeded quota: q, requested: requests.cpu=750m, used: requests.cpu=500m, limited: requests.cpu=1"),
            "{err}"
        );

        let none = json!({"spec": {"containers": [{"name": "a"}]}});
        let err = ResourceQuota::default()
            .validate(&ctx, &attrs(pods, &user, "p"), &none, &mut Outcome::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("failed quota: q: must specify requests.cpu for: a"), "{err}");

        // Objects the quota does not limit pass without touching it.
        let cms = registry::find("", "v1", "configmaps").unwrap();
        let mut out = Outcome::default();
        ResourceQuota::default()
            .validate(&ctx, &attrs(cms, &user, "c"), &json!({}), &mut out)
            .await
            .expect("admitted");
        assert!(out.reservations.ops.is_empty());
    }
}
