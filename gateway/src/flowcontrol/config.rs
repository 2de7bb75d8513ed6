//! The flow-control configuration controller every gateway runs, as upstream's (the APF
//! config controller and the ensurer of the bootstrap configuration in k8s.io/apiserver):
//!
//! * **The bootstrap objects are maintained.** A missing default FlowSchema or
//!   PriorityLevelConfiguration is created again. The mandatory ones (`exempt` and
//!   `catch-all` of each kind) are put back to their default spec whenever someone changes
//!   it, whatever their `apf.kubernetes.io/autoupdate-spec` annotation says (it is set back
//!   to `"true"`); the suggested ones only while that annotation is `"true"` (or, without a
//!   boolean there, while the object was never edited: `generation` 1), so an operator
//!   keeps an edited suggested object by annotating it `"false"`. An object annotated
//!   `"true"` whose name is not among the defaults is deleted.
//! * **FlowSchema status.** Every FlowSchema has a `Dangling` condition: `True` with reason
//!   `NotFound` when the PriorityLevelConfiguration it names does not exist (such a schema
//!   classifies nothing), else `False` with reason `Found`, with upstream's messages; it is
//!   kubectl's MISSINGPL column.
//!
//! Upstream re-checks the bootstrap objects every minute; this controller acts on every
//! change of either kind instead, and once at start. Several gateways may run it at once:
//! every write carries the resourceVersion it was computed from, and a lost race is seen
//! again at the next change.

use super::{defaults, LEVELS, SCHEMAS};
use crate::auth::User;
use crate::service::{ApiService, DeleteOptions, WriteOptions};
use crate::status::{ApiError, ApiResult};
use capstan_api::{meta, registry, ResourceInfo};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

/// The annotation saying whether the server keeps a bootstrap object's spec.
pub const AUTO_UPDATE: &str = "apf.kubernetes.io/autoupdate-spec";
/// The names of the mandatory objects (of both kinds).
pub const MANDATORY: [&str; 2] = ["exempt", "catch-all"];
const PRODUCER: &str = "api-priority-and-fairness-config-producer-v1";
const CONSUMER: &str = "api-priority-and-fairness-config-consumer-v1";

fn resource(plural: &str) -> ApiResult<&'static ResourceInfo> {
    registry::find("flowcontrol.apiserver.k8s.io", "v1", plural)
        .ok_or_else(|| ApiError::Internal(format!("{plural} are not registered")))
}

fn list(svc: &ApiService, prefix: &[u8]) -> Vec<Value> {
    let end = capstan_storage::prefix_end(prefix);
    svc.cache().list(prefix, &end, 0, |_| true).0.iter().map(|o| o.value().clone()).collect()
}

/// Go's `strconv.ParseBool`, which upstream reads the annotation with.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn annotation(obj: &Value) -> Option<bool> {
    obj["metadata"]["annotations"][AUTO_UPDATE].as_str().and_then(parse_bool)
}

/// The object `current` must become to follow its bootstrap version, or `None` when it
/// already does: its spec is `bootstrap`'s when the server keeps it (always for a
/// mandatory object), and its annotation says whether the server keeps it.
pub fn revise(current: &Value, bootstrap: &Value, mandatory: bool) -> Option<Value> {
    let auto = mandatory || annotation(current).unwrap_or(meta::generation(current) == 1);
    let annotation_right = annotation(current) == Some(auto);
    let spec_differs = auto && current.get("spec") != bootstrap.get("spec");
    if annotation_right && !spec_differs {
        return None;
    }
    let mut out = current.clone();
    if spec_differs {
        out["spec"] = bootstrap["spec"].clone();
    }
    if !annotation_right {
        out["metadata"]["annotations"][AUTO_UPDATE] = json!(auto.to_string());
    }
    Some(out)
}

/// Whether an error of a write is a lost race (seen again at the next change).
fn raced(r: ApiResult<()>) -> ApiResult<()> {
    match r {
        Err(ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } | ApiError::NotFound { .. }) => Ok(()),
        r => r,
    }
}

/// Creates the missing bootstrap objects, restores those whose spec the server keeps, and
/// deletes the ones annotated `"true"` that are no longer defaults.
pub async fn ensure(svc: &ApiService) -> ApiResult<()> {
    let user = User::system();
    let opts = WriteOptions { field_manager: Some(PRODUCER.into()), ..WriteOptions::default() };
    let (schemas, levels) = defaults();
    // Levels first, so that a new schema is not dangling for a moment.
    for (plural, prefix, boots) in
        [("prioritylevelconfigurations", LEVELS, levels), ("flowschemas", SCHEMAS, schemas)]
    {
        let res = resource(plural)?;
        let current = list(svc, prefix);
        for boot in &boots {
            let name = meta::name(boot).unwrap_or("");
            let result = match current.iter().find(|o| meta::name(o) == Some(name)) {
                None => svc.create(&user, res, None, boot.clone(), &opts).await.map(|_| ()),
                Some(cur) => match revise(cur, boot, MANDATORY.contains(&name)) {
                    Some(new) => {
                        tracing::info!(
                            kind = res.kind,
                            name,
                            "restoring a bootstrap API Priority and Fairness object"
                        );
                        svc.update(&user, res, None, name, new, &opts, false).await.map(|_| ())
                    }
                    None => Ok(()),
                },
            };
            raced(result)?;
        }
        for cur in &current {
            let name = meta::name(cur).unwrap_or("");
            if annotation(cur) != Some(true) || boots.iter().any(|b| meta::name(b) == Some(name)) {
                continue;
            }
            let opts = DeleteOptions {
                precondition_rv: meta::meta_str(cur, "resourceVersion").map(str::to_string),
                ..DeleteOptions::default()
            };
            raced(svc.delete(&user, res, None, name, &opts).await.map(|_| ()))?;
        }
    }
    Ok(())
}

/// The `Dangling` condition a FlowSchema naming the level `level` should have.
fn dangling(level: &str, exists: bool) -> (&'static str, &'static str, String) {
    if exists {
        let m = format!(
            "This FlowSchema references the PriorityLevelConfiguration object named {level:?} and it exists"
        );
        ("False", "Found", m)
    } else {
        let m = format!(
            "This FlowSchema references the PriorityLevelConfiguration object named {level:?} but there is no such object"
        );
        ("True", "NotFound", m)
    }
}

/// Writes the `Dangling` condition of every FlowSchema whose condition is not as it should.
pub async fn statuses(svc: &ApiService) -> ApiResult<()> {
    let levels: HashSet<String> =
        list(svc, LEVELS).iter().filter_map(|l| meta::name(l).map(str::to_string)).collect();
    let res = resource("flowschemas")?;
    let opts = WriteOptions { field_manager: Some(CONSUMER.into()), ..WriteOptions::default() };
    for fs in list(svc, SCHEMAS) {
        let level = fs["spec"]["priorityLevelConfiguration"]["name"].as_str().unwrap_or("");
        let (status, reason, message) = dangling(level, levels.contains(level));
        let mut conditions = fs["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let old = conditions.iter().position(|c| c["type"] == "Dangling");
        if let Some(c) = old.map(|i| &conditions[i]) {
            if c["status"] == status && c["reason"] == reason && c["message"] == message.as_str() {
                continue;
            }
        }
        let cond = json!({"type": "Dangling", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()});
        match old {
            Some(i) => conditions[i] = cond,
            None => conditions.push(cond),
        }
        let mut new = fs.clone();
        new["status"]["conditions"] = Value::Array(conditions);
        let name = meta::name(&fs).unwrap_or("").to_string();
        let r = svc.update_sub(&User::system(), res, None, &name, new, &opts, Some("status")).await;
        raced(r.map(|_| ()))?;
    }
    Ok(())
}

async fn sync(svc: &ApiService) {
    if let Err(e) = ensure(svc).await {
        tracing::warn!("failed to maintain the API Priority and Fairness bootstrap configuration: {e}");
    }
    if let Err(e) = statuses(svc).await {
        tracing::warn!("failed to write the status of FlowSchemas: {e}");
    }
}

/// Brings the configuration and the FlowSchemas' status up to date, then follows changes of
/// FlowSchemas and PriorityLevelConfigurations.
pub async fn start(service: Arc<ApiService>) {
    // From before the first pass: changes the cache shows only after it are not missed.
    let cache = service.cache().clone();
    let mut head = cache.subscribe();
    let mut since = cache.revision();
    sync(&service).await;
    tokio::spawn(async move {
        while head.changed().await.is_ok() {
            let touched = match cache
                .events_after(since, usize::MAX, |e| e.key.starts_with(SCHEMAS) || e.key.starts_with(LEVELS))
            {
                Ok((events, scanned)) => {
                    since = scanned.max(since);
                    !events.is_empty()
                }
                Err(_) => {
                    since = cache.revision();
                    true
                }
            };
            if touched {
                sync(&service).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(objs: Vec<Value>, name: &str) -> Value {
        objs.into_iter().find(|o| o["metadata"]["name"] == name).expect("a default")
    }

    #[test]
    fn mandatory_objects_are_restored_whatever_their_annotation_says() {
        let boot = named(defaults().1, "catch-all");
        let mut edited = boot.clone();
        edited["metadata"]["generation"] = json!(2);
        assert_eq!(revise(&edited, &boot, true), None, "unchanged");
        edited["spec"]["limited"]["nominalConcurrencyShares"] = json!(50);
        edited["metadata"]["annotations"][AUTO_UPDATE] = json!("false");
        let revised = revise(&edited, &boot, true).expect("restored");
        assert_eq!(revised["spec"], boot["spec"]);
        assert_eq!(revised["metadata"]["annotations"][AUTO_UPDATE], "true");
        assert_eq!(revised["metadata"]["generation"], 2, "the rest is kept");
    }

    #[test]
    fn suggested_objects_follow_their_annotation() {
        let boot = named(defaults().0, "global-default");
        let mut edited = boot.clone();
        edited["spec"]["matchingPrecedence"] = json!(9800);
        edited["metadata"]["generation"] = json!(2);
        assert_eq!(revise(&edited, &boot, false).expect("restored")["spec"], boot["spec"]);
        edited["metadata"]["annotations"][AUTO_UPDATE] = json!("false");
        assert_eq!(revise(&edited, &boot, false), None, "kept as the operator wrote it");
        // No boolean there: kept once edited, restored (and annotated) while never edited.
        edited["metadata"]["annotations"] = json!({});
        let revised = revise(&edited, &boot, false).expect("annotated");
        assert_eq!(
            (
                revised["spec"]["matchingPrecedence"].as_i64(),
                revised["metadata"]["annotations"][AUTO_UPDATE].as_str()
            ),
            (Some(9800), Some("false"))
        );
        edited["metadata"]["generation"] = json!(1);
        let revised = revise(&edited, &boot, false).expect("restored");
        assert_eq!(
            (&revised["spec"], revised["metadata"]["annotations"][AUTO_UPDATE].as_str()),
            (&boot["spec"], Some("true"))
        );
    }

    #[test]
    fn dangling_conditions_say_upstreams_words() {
        let (status, reason, message) = dangling("nope", false);
        assert_eq!((status, reason), ("True", "NotFound"));
        assert_eq!(message, "This FlowSchema references the PriorityLevelConfiguration object named \"nope\" but there is no such object");
        assert_eq!(dangling("global-default", true).1, "Found");
    }
}
