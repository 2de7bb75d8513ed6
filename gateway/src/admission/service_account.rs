//! ServiceAccount: a pod without `serviceAccountName` runs as `default`.

use super::{Attributes, Context, Operation, Outcome, Plugin};
use crate::status::ApiResult;
use futures::future::BoxFuture;
use serde_json::{json, Value};

/// The ServiceAccount plugin.
pub struct ServiceAccount;

impl Plugin for ServiceAccount {
    fn name(&self) -> &'static str {
        "ServiceAccount"
    }

    fn admit<'a>(
        &'a self,
        _ctx: &'a Context,
        a: &'a Attributes<'a>,
        obj: &'a mut Value,
        _out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            if !a.is(Operation::Create, "", "Pod") {
                return Ok(());
            }
            let named =
                obj["spec"].get("serviceAccountName").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
            if !named {
                // The deprecated alias wins when set, as upstream's defaulting.
                let alias = obj["spec"]
                    .get("serviceAccount")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .unwrap_or("default")
                    .to_string();
                obj["spec"]["serviceAccountName"] = json!(alias);
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

    #[tokio::test]
    async fn pods_get_the_default_account() {
        let (ctx, _dir) = context().await;
        let u = User::system();
        let res = capstan_api::registry::find("", "v1", "pods").unwrap();
        let a = Attributes {
            operation: Operation::Create,
            res,
            subresource: None,
            namespace: Some("default"),
            name: "p",
            user: &u,
            old: None,
            dry_run: false,
        };
        let mut out = Outcome::default();
        let mut pod = json!({"spec": {"containers": []}});
        ServiceAccount.admit(&ctx, &a, &mut pod, &mut out).await.unwrap();
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        let mut named = json!({"spec": {"serviceAccountName": "builder"}});
        ServiceAccount.admit(&ctx, &a, &mut named, &mut out).await.unwrap();
        assert_eq!(named["spec"]["serviceAccountName"], "builder");
    }
}
