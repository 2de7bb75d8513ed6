//! Priority, as upstream's admission plugin: a pod's `priorityClassName` is resolved to
//! `spec.priority` (and `spec.preemptionPolicy`) from its PriorityClass; a pod naming none
//! gets the class marked `globalDefault`, else priority 0. A class that does not exist →
//! 403 "no PriorityClass with name … was found"; a pod that sets `spec.priority` itself
//! must agree with its class.

use super::{Attributes, Context, Operation, Outcome, Plugin};
use crate::status::{ApiError, ApiResult};
use capstan_api::{meta, registry};
use futures::future::BoxFuture;
use serde_json::{json, Value};

/// The Priority plugin.
#[derive(Default)]
pub struct Priority;

impl Plugin for Priority {
    fn name(&self) -> &'static str {
        "Priority"
    }

    fn admit<'a>(
        &'a self,
        ctx: &'a Context,
        a: &'a Attributes<'a>,
        obj: &'a mut Value,
        _out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            if !a.is(Operation::Create, "", "Pod") {
                return Ok(());
            }
            let Some(res) = registry::find("scheduling.k8s.io", "v1", "priorityclasses") else {
                return Ok(());
            };
            let name = obj["spec"]["priorityClassName"].as_str().unwrap_or("").to_string();
            let class = if name.is_empty() {
                let prefix = crate::keys::prefix(res, None);
                let end = capstan_storage::prefix_end(&prefix);
                let (classes, _, _) =
                    ctx.cache().list(&prefix, &end, 0, |c| c["globalDefault"] == json!(true));
                // Several defaults: the lowest value wins, as upstream.
                classes.iter().min_by_key(|c| c["value"].as_i64().unwrap_or(0)).map(|c| (**c).clone())
            } else {
                match ctx.get(res, None, &name).await? {
                    Some(c) => Some(c),
                    None => {
                        return Err(ApiError::forbidden(
                            a.res,
                            a.name,
                            &format!("no PriorityClass with name {name} was found"),
                        ))
                    }
                }
            };
            let (value, policy) = match &class {
                Some(c) => (
                    c["value"].as_i64().unwrap_or(0),
                    c["preemptionPolicy"].as_str().unwrap_or("PreemptLowerPriority").to_string(),
                ),
                None => (0, "PreemptLowerPriority".to_string()),
            };
            if let Some(given) = obj["spec"]["priority"].as_i64() {
                if given != value {
                    return Err(ApiError::forbidden(
                        a.res,
                        a.name,
                        "the integer value of priority must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
                            .replace("{value}", &value.to_string())
                            .as_str(),
                    ));
                }
            }
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("priority".into(), json!(value));
                if let Some(c) = &class {
                    spec.insert("priorityClassName".into(), json!(meta::name(c).unwrap_or("")));
                }
                spec.entry("preemptionPolicy").or_insert(json!(policy));
            }
            Ok(())
        })
    }
}
