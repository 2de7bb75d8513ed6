//! DefaultTolerationSeconds: pods tolerate not-ready and unreachable nodes for 300 s
//! unless they say otherwise, so the node lifecycle controller evicts them after that.

use super::{Attributes, Context, Operation, Outcome, Plugin};
use crate::status::ApiResult;
use futures::future::BoxFuture;
use serde_json::{json, Value};

/// The DefaultTolerationSeconds plugin.
pub struct DefaultTolerationSeconds {
    seconds: i64,
}

impl DefaultTolerationSeconds {
    /// Tolerations of `seconds`.
    pub fn new(seconds: i64) -> DefaultTolerationSeconds {
        DefaultTolerationSeconds { seconds }
    }

    /// 300 s, or `CAPSTAN_DEFAULT_TOLERATION_SECONDS` (for tests of evictions).
    pub fn from_env() -> DefaultTolerationSeconds {
        let seconds = std::env::var("CAPSTAN_DEFAULT_TOLERATION_SECONDS")
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|s| *s >= 0)
            .unwrap_or(300);
        DefaultTolerationSeconds::new(seconds)
    }
}

impl Plugin for DefaultTolerationSeconds {
    fn name(&self) -> &'static str {
        "DefaultTolerationSeconds"
    }

    fn admit<'a>(
        &'a self,
        _ctx: &'a Context,
        a: &'a Attributes<'a>,
        obj: &'a mut Value,
        _out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            if a.is(Operation::Create, "", "Pod") {
                add_tolerations(obj, self.seconds);
            }
            Ok(())
        })
    }
}

fn add_tolerations(pod: &mut Value, seconds: i64) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if tolerations.is_null() {
        *tolerations = json!([]);
    }
    let Some(list) = tolerations.as_array_mut() else { return };
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let present = list.iter().any(|t| {
            let k = t.get("key").and_then(Value::as_str);
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            (k == Some(key) || (k.is_none() && t.get("operator").and_then(Value::as_str) == Some("Exists")))
                && (effect.is_empty() || effect == "NoExecute")
        });
        if !present {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::testing::context;
    use crate::auth::User;

    #[tokio::test]
    async fn adds_both_unless_tolerated() {
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
        let p = DefaultTolerationSeconds::new(300);
        let mut out = Outcome::default();
        let mut pod = json!({"spec": {}});
        p.admit(&ctx, &a, &mut pod, &mut out).await.unwrap();
        let t = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["tolerationSeconds"], 300);
        let mut all = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        p.admit(&ctx, &a, &mut all, &mut out).await.unwrap();
        assert_eq!(all["spec"]["tolerations"].as_array().unwrap().len(), 1);
        let mut one = json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}});
        p.admit(&ctx, &a, &mut one, &mut out).await.unwrap();
        let t = one["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["tolerationSeconds"], 5);
    }
}
