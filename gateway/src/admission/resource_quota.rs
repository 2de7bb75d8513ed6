//! ResourceQuota: a create in a namespace with quotas is charged to every quota that covers
//! it, in the object's own transaction, as upstream's quota admission.
//!
//! The plugin checks the create against the quotas in the watch cache (a refusal needs no
//! store round trip) and adds to the create's transaction one [`Op::Update`] per covering
//! quota that limits it: when the transaction commits, the update checks the charge again
//! against the quota as stored then and writes the new `status.used`, or refuses and the
//! whole create fails with upstream's 403. Concurrent creates of one namespace thus commit
//! together in one group commit, each charged after the one before, with no lock and no
//! conflict; a quota is never exceeded, and a create that fails (its name taken) charges
//! nothing. Usage goes down when the quota controller recounts (after deletes), as
//! upstream; the charge itself follows [`capstan_api::quota`]. A quota whose status was not
//! counted yet refuses what it limits ("status unknown for quota"), as upstream.

use super::{Attributes, Context, Operation, Outcome, Plugin};
use crate::status::ApiResult;
use capstan_api::quota::{self, Usage};
use capstan_api::{meta, registry};
use capstan_storage::{Op, Update};
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The ResourceQuota plugin.
#[derive(Default)]
pub struct ResourceQuota;

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
            let (cached, _, _) = ctx.cache().list(&prefix, &end, 0, |_| true);
            if cached.is_empty() {
                return Ok(()); // most namespaces have no quota
            }
            let charge = Arc::new(quota::usage(a.res.group, a.res.plural, obj));
            let subject = Arc::new(Subject {
                group: a.res.group.to_string(),
                plural: a.res.plural.to_string(),
                obj: obj.clone(),
            });
            for q in cached {
                if !quota::covers(&q, a.res.group, a.res.plural, obj) {
                    continue;
                }
                let refuse = |reason: String| crate::status::ApiError::forbidden(a.res, a.name, &reason);
                if check(&q, &subject, &charge).map_err(refuse)?.is_none() || a.dry_run {
                    continue;
                }
                let Some(name) = meta::name(&q) else { continue };
                let (subject, charge) = (subject.clone(), charge.clone());
                // At commit: charge the quota as stored then (the cache may be behind).
                let update = Update::new(move |stored| {
                    let mut q: Value =
                        rmp_serde::from_slice(stored).map_err(|e| format!("a stored quota: {e}"))?;
                    let Some(used) = check(&q, &subject, &charge)? else { return Ok(stored.to_vec()) };
                    q["status"]["used"] = Value::Object(
                        used.iter().map(|(r, v)| (r.clone(), Value::String(quota::format(*v)))).collect(),
                    );
                    rmp_serde::to_vec_named(&q).map_err(|e| format!("a quota: {e}"))
                });
                out.reservations
                    .ops
                    .push(Op::Update { key: crate::keys::object_key(quotas, Some(ns), name), update });
                // The quota is gone meanwhile: admit the create again.
                out.reservations.on_conflict.push(None);
            }
            Ok(())
        })
    }
}

/// What is charged: the object and its resource.
struct Subject {
    group: String,
    plural: String,
    obj: Value,
}

/// The usage of `q` after charging `charge` for `s`, or None when `q` limits none of it;
/// the reason of the refusal when it would exceed `q` or `q`'s status is not known yet.
fn check(q: &Value, s: &Subject, charge: &Usage) -> Result<Option<Usage>, String> {
    let name = meta::name(q).unwrap_or("").to_string();
    let hard: Map<String, Value> = q["spec"]["hard"].as_object().cloned().unwrap_or_default();
    let limited: Vec<&String> = hard.keys().filter(|r| charge.contains_key(*r)).collect();
    let is_pod = s.group.is_empty() && s.plural == "pods";
    if is_pod {
        let missing = quota::unspecified(&q["spec"]["hard"], &s.obj);
        if !missing.is_empty() {
            let what: Vec<String> =
                missing.iter().map(|(r, cs)| format!("{r} for: {}", cs.join(","))).collect();
            return Err(format!("failed quota: {name}: must specify {}", what.join("; ")));
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
        return Err(format!("status unknown for quota: {name}, resources: {}", unknown.join(",")));
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
        return Err(format!(
            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
            list(1),
            list(2),
            list(3),
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
        ResourceQuota.validate(&ctx, &attrs(pods, &user, "p"), &ok, &mut out).await.expect("admitted");
        assert_eq!(out.reservations.ops.len(), 1, "the quota's new usage commits with the pod");

        let big =
            json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "750m"}}}]}});
        let err = ResourceQuota
            .validate(&ctx, &attrs(pods, &user, "p"), &big, &mut Outcome::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), 403);
        assert!(
            err.to_string().contains("exceeded quota: q, requested: requests.cpu=750m, used: requests.cpu=500m, limited: requests.cpu=1"),
            "{err}"
        );

        let none = json!({"spec": {"containers": [{"name": "a"}]}});
        let err = ResourceQuota
            .validate(&ctx, &attrs(pods, &user, "p"), &none, &mut Outcome::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("failed quota: q: must specify requests.cpu for: a"), "{err}");

        // Objects the quota does not limit pass without touching it.
        let cms = registry::find("", "v1", "configmaps").unwrap();
        let mut out = Outcome::default();
        ResourceQuota.validate(&ctx, &attrs(cms, &user, "c"), &json!({}), &mut out).await.expect("admitted");
        assert!(out.reservations.ops.is_empty());
    }

    #[tokio::test]
    async fn a_burst_commits_together_and_never_beyond_the_quota() {
        let (ctx, _dir) = context().await;
        put(
            &ctx,
            "resourcequotas",
            &json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q", "namespace": "ns", "uid": "u"},
                    "spec": {"hard": {"count/configmaps": "10"}},
                    "status": {"hard": {"count/configmaps": "10"}, "used": {"count/configmaps": "0"}}}),
        )
        .await;
        let quotas = registry::find("", "v1", "resourcequotas").unwrap();
        let key = crate::keys::object_key(quotas, Some("ns"), "q");
        for _ in 0..200 {
            if ctx.cache().get(&key).is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let cms = registry::find("", "v1", "configmaps").unwrap();
        let user = User::default();
        let names: Vec<String> = (0..25).map(|i| format!("c{i}")).collect();
        // Every create is admitted against the cached usage (0) and charged at commit.
        let results = futures::future::join_all(names.iter().map(|n| {
            let (ctx, user) = (&ctx, &user);
            async move {
                let mut out = Outcome::default();
                ResourceQuota
                    .validate(ctx, &attrs(cms, user, n), &json!({}), &mut out)
                    .await
                    .expect("admitted");
                let object = crate::keys::object_key(cms, Some("ns"), n);
                let mut ops = vec![Op::put(object, b"x".to_vec(), capstan_storage::Precondition::Absent)];
                ops.extend(out.reservations.ops);
                ctx.store().commit(capstan_storage::Txn { ops }).await
            }
        }))
        .await;
        let committed = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(committed, 10, "{results:?}");
        for r in &results {
            match r {
                Ok(_) => {}
                Err(capstan_storage::Error::Refused { index: 1, message }) => assert_eq!(
                    message,
                    "exceeded quota: q, requested: count/configmaps=1, used: count/configmaps=10, limited: count/configmaps=10"
                ),
                Err(e) => panic!("unexpected {e}"),
            }
        }
        let q = ctx.store().get(&key).await.unwrap().unwrap();
        let q = crate::cache::decode_stored(&q.value, q.mod_revision).unwrap();
        assert_eq!(q["status"]["used"]["count/configmaps"], "10");
        let prefix = crate::keys::prefix(cms, Some("ns"));
        let stored = ctx.store().range(&prefix, &capstan_storage::prefix_end(&prefix), 0).await.unwrap();
        assert_eq!(stored.kvs.len(), 10, "a refused create was written");
    }
}
