//! LimitRanger, as upstream's: the LimitRanges of a namespace fill in containers' missing
//! requests and limits (`defaultRequest`, `default`) and refuse pods and claims outside
//! their `min`, `max` and `maxLimitRequestRatio` (per Container, per Pod, per
//! PersistentVolumeClaim) with 403 and upstream's messages.
//!
//! A LimitRange item's omitted fields take upstream's defaults: `default` from `max`,
//! `defaultRequest` from `default`, then from `min`.

use super::{Attributes, Context, Operation, Outcome, Plugin};
use crate::status::{ApiError, ApiResult};
use capstan_api::quantity::parse_milli;
use capstan_api::{quota, registry};
use futures::future::BoxFuture;
use serde_json::{Map, Value};

/// The LimitRanger plugin.
#[derive(Default)]
pub struct LimitRanger;

/// The annotation naming what the plugin filled in.
const ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// The items of the namespace's LimitRanges of `kind` (`Container`, `Pod`,
/// `PersistentVolumeClaim`), with upstream's defaults applied.
fn items(ctx: &Context, ns: &str, kind: &str) -> Vec<Value> {
    let Some(res) = registry::find("", "v1", "limitranges") else { return Vec::new() };
    let prefix = crate::keys::prefix(res, Some(ns));
    let end = capstan_storage::prefix_end(&prefix);
    let (ranges, _, _): (Vec<crate::cache::Obj>, _, _) = ctx.cache().list(&prefix, &end, 0, |_| true);
    let mut out = Vec::new();
    for lr in ranges {
        for item in lr["spec"]["limits"].as_array().into_iter().flatten() {
            if item["type"].as_str() != Some(kind) {
                continue;
            }
            let mut item = item.clone();
            if kind == "Container" {
                fill(&mut item, "default", "max");
                fill(&mut item, "defaultRequest", "default");
                fill(&mut item, "defaultRequest", "min");
            }
            out.push(item);
        }
    }
    out
}

/// Copies the amounts of `from` that `into` lacks.
fn fill(item: &mut Value, into: &str, from: &str) {
    let Some(src) = item[from].as_object().cloned() else { return };
    if !item[into].is_object() {
        item[into] = Value::Object(Map::new());
    }
    if let Some(dst) = item[into].as_object_mut() {
        for (r, q) in src {
            dst.entry(r).or_insert(q);
        }
    }
}

fn amount(v: &Value) -> Option<i64> {
    v.as_str().and_then(parse_milli).or_else(|| quota::parse(v))
}

fn shown(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())
}

/// The violations of `item` by requests and limits of one thing (`what`: Container, Pod,
/// PersistentVolumeClaim).
fn violations(
    item: &Value,
    what: &str,
    requests: &Map<String, Value>,
    limits: &Map<String, Value>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (r, min) in item["min"].as_object().into_iter().flatten() {
        let (Some(m), req) = (amount(min), requests.get(r)) else { continue };
        match req.and_then(amount) {
            Some(q) if q < m => out.push(format!(
                "minimum {r} usage per {what} is {}, but request is {}",
                shown(min),
                shown(&requests[r])
            )),
            None => {
                out.push(format!("minimum {r} usage per {what} is {}.  No request is specified", shown(min)))
            }
            _ => {}
        }
    }
    for (r, max) in item["max"].as_object().into_iter().flatten() {
        let Some(m) = amount(max) else { continue };
        // A claim states only requests: its max bounds them.
        let (have, word) =
            if what == "PersistentVolumeClaim" { (requests, "request") } else { (limits, "limit") };
        match have.get(r).and_then(amount) {
            Some(q) if q > m => out.push(format!(
                "maximum {r} usage per {what} is {}, but {word} is {}",
                shown(max),
                shown(&have[r])
            )),
            None => {
                out.push(format!("maximum {r} usage per {what} is {}.  No {word} is specified", shown(max)))
            }
            _ => {}
        }
    }
    for (r, ratio) in item["maxLimitRequestRatio"].as_object().into_iter().flatten() {
        let Some(m) = amount(ratio) else { continue };
        let (Some(l), Some(q)) = (limits.get(r).and_then(amount), requests.get(r).and_then(amount)) else {
            continue;
        };
        if q > 0 && (l as f64 / q as f64) > m as f64 / 1000.0 {
            out.push(format!(
                "{r} max limit to request ratio per {what} is {}, but provided ratio is {:.6}",
                shown(ratio),
                l as f64 / q as f64
            ));
        }
    }
    out
}

fn resources(c: &Value, kind: &str) -> Map<String, Value> {
    c["resources"][kind].as_object().cloned().unwrap_or_default()
}

/// A pod's total requests and limits (its containers', as upstream's Pod limit checks).
fn pod_totals(pod: &Value, kind: &str) -> Map<String, Value> {
    let mut sum: std::collections::BTreeMap<String, i64> = Default::default();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for (r, q) in resources(c, kind) {
            *sum.entry(r).or_default() += amount(&q).unwrap_or(0);
        }
    }
    sum.into_iter().map(|(r, v)| (r, Value::String(quota::format(v)))).collect()
}

impl Plugin for LimitRanger {
    fn name(&self) -> &'static str {
        "LimitRanger"
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
            let Some(ns) = a.namespace else { return Ok(()) };
            let ranges = items(ctx, ns, "Container");
            if ranges.is_empty() {
                return Ok(());
            }
            let mut set = Vec::new();
            for list in ["initContainers", "containers"] {
                let Some(cs) = obj["spec"][list].as_array_mut() else { continue };
                for c in cs {
                    let name = c["name"].as_str().unwrap_or("").to_string();
                    for (field, kind, word) in
                        [("defaultRequest", "requests", "request"), ("default", "limits", "limit")]
                    {
                        let mut filled = Vec::new();
                        for item in &ranges {
                            for (r, q) in item[field].as_object().into_iter().flatten() {
                                if c["resources"][kind][r].is_null() {
                                    if !c["resources"].is_object() {
                                        c["resources"] = Value::Object(Map::new());
                                    }
                                    if !c["resources"][kind].is_object() {
                                        c["resources"][kind] = Value::Object(Map::new());
                                    }
                                    c["resources"][kind][r] = q.clone();
                                    filled.push(r.clone());
                                }
                            }
                        }
                        if !filled.is_empty() {
                            set.push(format!(
                                "{} {word} for {} {name}",
                                filled.join(", "),
                                if list == "containers" { "container" } else { "init container" }
                            ));
                        }
                    }
                }
            }
            if !set.is_empty() {
                let md = &mut obj["metadata"];
                if !md["annotations"].is_object() {
                    md["annotations"] = Value::Object(Map::new());
                }
                md["annotations"][ANNOTATION] =
                    Value::String(format!("LimitRanger plugin set: {}", set.join("; ")));
            }
            Ok(())
        })
    }

    fn validate<'a>(
        &'a self,
        ctx: &'a Context,
        a: &'a Attributes<'a>,
        obj: &'a Value,
        _out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let Some(ns) = a.namespace else { return Ok(()) };
            let mut errs = Vec::new();
            if a.is(Operation::Create, "", "Pod") {
                for item in items(ctx, ns, "Container") {
                    for list in ["initContainers", "containers"] {
                        for c in obj["spec"][list].as_array().into_iter().flatten() {
                            errs.extend(violations(
                                &item,
                                "Container",
                                &resources(c, "requests"),
                                &resources(c, "limits"),
                            ));
                        }
                    }
                }
                for item in items(ctx, ns, "Pod") {
                    errs.extend(violations(
                        &item,
                        "Pod",
                        &pod_totals(obj, "requests"),
                        &pod_totals(obj, "limits"),
                    ));
                }
            } else if a.is(Operation::Create, "", "PersistentVolumeClaim") {
                let requests = obj["spec"]["resources"]["requests"].as_object().cloned().unwrap_or_default();
                for item in items(ctx, ns, "PersistentVolumeClaim") {
                    errs.extend(violations(&item, "PersistentVolumeClaim", &requests, &Map::new()));
                }
            }
            match errs.len() {
                0 => Ok(()),
                1 => Err(ApiError::forbidden(a.res, a.name, &errs[0])),
                _ => Err(ApiError::forbidden(a.res, a.name, &format!("[{}]", errs.join(", ")))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_follow_upstream() {
        let mut item = json!({"type": "Container", "max": {"cpu": "2"}, "min": {"memory": "16Mi"}});
        fill(&mut item, "default", "max");
        fill(&mut item, "defaultRequest", "default");
        fill(&mut item, "defaultRequest", "min");
        assert_eq!(item["default"], json!({"cpu": "2"}));
        assert_eq!(item["defaultRequest"], json!({"cpu": "2", "memory": "16Mi"}));
    }

    #[test]
    fn messages_are_upstreams() {
        let item = json!({"min": {"cpu": "100m"}, "max": {"cpu": "1"}, "maxLimitRequestRatio": {"cpu": "2"}});
        let req = json!({"cpu": "50m"}).as_object().cloned().unwrap();
        let lim = json!({"cpu": "2"}).as_object().cloned().unwrap();
        assert_eq!(
            violations(&item, "Container", &req, &lim),
            vec![
                "minimum cpu usage per Container is 100m, but request is 50m".to_string(),
                "maximum cpu usage per Container is 1, but limit is 2".to_string(),
                "cpu max limit to request ratio per Container is 2, but provided ratio is 40.000000"
                    .to_string(),
            ]
        );
        let claim = json!({"max": {"storage": "1Gi"}});
        let req = json!({"storage": "2Gi"}).as_object().cloned().unwrap();
        assert_eq!(
            violations(&claim, "PersistentVolumeClaim", &req, &Map::new()),
            vec!["maximum storage usage per PersistentVolumeClaim is 1Gi, but request is 2Gi".to_string()]
        );
    }
}
