//! NamespaceLifecycle: nothing new is created in a namespace that does not exist or is
//! being terminated, and the system namespaces cannot be deleted.

use super::{Attributes, Context, Operation, Outcome, Plugin};
use crate::status::{ApiError, ApiResult};
use capstan_api::registry;
use futures::future::BoxFuture;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The namespaces that exist from the start and cannot be deleted.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// How long after a namespace's deletion creates in it read the namespace from the store
/// rather than the watch cache, which may not have seen the deletion yet (upstream's
/// force-live-lookup window).
const LIVE_LOOKUP: Duration = Duration::from_secs(10);

/// The NamespaceLifecycle plugin.
#[derive(Default)]
pub struct NamespaceLifecycle {
    recently_deleted: Mutex<HashMap<String, Instant>>,
}

impl NamespaceLifecycle {
    fn needs_live_lookup(&self, ns: &str) -> bool {
        let mut map = self.recently_deleted.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, at| at.elapsed() < LIVE_LOOKUP);
        map.contains_key(ns)
    }
}

impl Plugin for NamespaceLifecycle {
    fn name(&self) -> &'static str {
        "NamespaceLifecycle"
    }

    fn validate<'a>(
        &'a self,
        ctx: &'a Context,
        a: &'a Attributes<'a>,
        _obj: &'a Value,
        _out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            if a.is(Operation::Delete, "", "Namespace") {
                if SYSTEM_NAMESPACES.contains(&a.name) {
                    return Err(ApiError::forbidden(a.res, a.name, "this namespace may not be deleted"));
                }
                self.recently_deleted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(a.name.to_string(), Instant::now());
            }
            if a.operation != Operation::Create || a.subresource.is_some() || !a.res.namespaced() {
                return Ok(());
            }
            let Some(ns) = a.namespace else { return Ok(()) };
            let Some(ns_res) = registry::find("", "v1", "namespaces") else {
                return Err(ApiError::Internal("namespaces are not registered".into()));
            };
            let nsobj = if self.needs_live_lookup(ns) {
                ctx.get_live(ns_res, None, ns).await?
            } else {
                ctx.get(ns_res, None, ns).await?
            };
            let Some(nsobj) = nsobj else {
                return Err(ApiError::namespace_not_found(ns));
            };
            let terminating =
                nsobj.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|v| !v.is_null());
            if terminating {
                return Err(ApiError::forbidden(
                    a.res,
                    a.name,
                    &format!("unable to create new content in namespace {ns} because it is being terminated"),
                ));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::testing::{context, put};
    use crate::auth::User;
    use serde_json::json;

    fn attrs<'a>(
        op: Operation,
        plural: &str,
        ns: Option<&'a str>,
        name: &'a str,
        user: &'a User,
    ) -> Attributes<'a> {
        let res = registry::find("", "v1", plural).unwrap();
        Attributes {
            operation: op,
            res,
            subresource: None,
            namespace: ns,
            name,
            user,
            old: None,
            dry_run: false,
        }
    }

    #[tokio::test]
    async fn creates_need_a_live_namespace() {
        let (ctx, _dir) = context().await;
        let u = User::system();
        put(&ctx, "namespaces", &json!({"metadata": {"name": "live"}})).await;
        put(
            &ctx,
            "namespaces",
            &json!({"metadata": {"name": "dying", "deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        )
        .await;
        let p = NamespaceLifecycle::default();
        let mut out = Outcome::default();
        let obj = json!({});
        let ok = attrs(Operation::Create, "configmaps", Some("live"), "c", &u);
        assert!(p.validate(&ctx, &ok, &obj, &mut out).await.is_ok());
        let missing = attrs(Operation::Create, "configmaps", Some("nope"), "c", &u);
        let e = p.validate(&ctx, &missing, &obj, &mut out).await.unwrap_err();
        assert_eq!(e.code(), 404);
        assert_eq!(e.to_string(), "namespaces \"nope\" not found");
        let dying = attrs(Operation::Create, "configmaps", Some("dying"), "c", &u);
        let e = p.validate(&ctx, &dying, &obj, &mut out).await.unwrap_err();
        assert_eq!(e.code(), 403);
        assert_eq!(
            e.to_string(),
            "configmaps \"c\" is forbidden: unable to create new content in namespace dying because it is being terminated"
        );
        // Updates in a terminating namespace go on (controllers finish their objects).
        let update = attrs(Operation::Update, "configmaps", Some("dying"), "c", &u);
        assert!(p.validate(&ctx, &update, &obj, &mut out).await.is_ok());
    }

    #[tokio::test]
    async fn system_namespaces_stay() {
        let (ctx, _dir) = context().await;
        let u = User::system();
        let mut out = Outcome::default();
        let del = attrs(Operation::Delete, "namespaces", None, "kube-system", &u);
        let e = NamespaceLifecycle::default().validate(&ctx, &del, &json!({}), &mut out).await.unwrap_err();
        assert_eq!(e.code(), 403);
        assert_eq!(
            e.to_string(),
            "namespaces \"kube-system\" is forbidden: this namespace may not be deleted"
        );
        let other = attrs(Operation::Delete, "namespaces", None, "mine", &u);
        assert!(NamespaceLifecycle::default().validate(&ctx, &other, &json!({}), &mut out).await.is_ok());
    }
}
