//! The review resources: they answer a POST and store nothing.
//!
//! SelfSubjectAccessReview, SubjectAccessReview, LocalSubjectAccessReview (may a user do
//! this?), SelfSubjectRulesReview (what may I do here? `kubectl auth can-i --list`),
//! TokenReview (who is this token?) and SelfSubjectReview (`kubectl auth whoami`).

use crate::auth::{Attributes, Decision, User};
use crate::service::ApiService;
use crate::status::{ApiError, ApiResult};
use capstan_api::{Cause, ResourceInfo};
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn s(v: Option<&Value>, k: &str) -> String {
    v.and_then(|v| v.get(k)).and_then(Value::as_str).unwrap_or("").to_string()
}

/// The attributes a review's spec asks about.
fn attributes(res: &ResourceInfo, spec: &Value) -> ApiResult<Attributes> {
    let ra = spec.get("resourceAttributes").filter(|v| !v.is_null());
    let nra = spec.get("nonResourceAttributes").filter(|v| !v.is_null());
    match (ra, nra) {
        (Some(_), None) => Ok(Attributes {
            verb: s(ra, "verb"),
            group: s(ra, "group"),
            resource: s(ra, "resource"),
            subresource: s(ra, "subresource"),
            namespace: s(ra, "namespace"),
            name: s(ra, "name"),
            path: None,
        }),
        (None, Some(_)) => Ok(Attributes {
            verb: s(nra, "verb"),
            group: String::new(),
            resource: String::new(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
            path: Some(s(nra, "path")),
        }),
        (Some(_), Some(n)) => Err(ApiError::invalid(
            res.kind,
            res.group,
            "",
            vec![Cause::invalid(
                "spec.nonResourceAttributes",
                format!("Invalid value: {n}: cannot be specified in combination with resourceAttributes"),
            )],
        )),
        (None, None) => Err(ApiError::invalid(
            res.kind,
            res.group,
            "",
            vec![Cause::invalid(
                "spec.resourceAttributes",
                "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        )),
    }
}

/// The user a SubjectAccessReview asks about.
fn subject(res: &ResourceInfo, spec: &Value) -> ApiResult<User> {
    let name = spec.get("user").and_then(Value::as_str).unwrap_or("").to_string();
    let groups: Vec<String> = spec
        .get("groups")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    if name.is_empty() && groups.is_empty() {
        return Err(ApiError::invalid(
            res.kind,
            res.group,
            "",
            vec![Cause::invalid(
                "spec.user",
                "Invalid value: \"\": at least one of user or group must be specified",
            )],
        ));
    }
    let extra: BTreeMap<String, Vec<String>> =
        spec.get("extra").and_then(|e| serde_json::from_value(e.clone()).ok()).unwrap_or_default();
    Ok(User { name, groups, uid: s(Some(spec), "uid"), extra })
}

fn decision_status(d: Decision) -> Value {
    match d {
        Decision::Allow(r) => json!({"allowed": true, "reason": r}),
        Decision::Deny(r) => json!({"allowed": false, "reason": r}),
    }
}

/// Answers a review POSTed as `user` (namespace `ns` for LocalSubjectAccessReview).
pub async fn serve(
    svc: &ApiService,
    user: &User,
    res: &ResourceInfo,
    ns: Option<&str>,
    obj: Value,
) -> ApiResult<Value> {
    if !obj.is_object() {
        return Err(ApiError::BadRequest(format!("{}: the request body must be a JSON object", res.kind)));
    }
    match res.kind {
        "TokenReview" => return svc.token_review(user, res, obj).await,
        "SelfSubjectReview" => {
            svc.authorize(user, "create", res, None, None, None)?;
            return Ok(svc.self_subject_review(user, &obj));
        }
        _ => {}
    }
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    let mut out = obj.clone();
    out["apiVersion"] = json!(res.api_version());
    out["kind"] = json!(res.kind);
    if out.get("metadata").is_none() {
        out["metadata"] = json!({});
    }
    match res.kind {
        "SelfSubjectAccessReview" => {
            svc.authorize(user, "create", res, None, None, None)?;
            out["status"] = decision_status(svc.decide(user, &attributes(res, &spec)?));
        }
        "SubjectAccessReview" => {
            svc.authorize(user, "create", res, None, None, None)?;
            let who = subject(res, &spec)?;
            out["status"] = decision_status(svc.decide(&who, &attributes(res, &spec)?));
        }
        "LocalSubjectAccessReview" => {
            let ns = ns.unwrap_or("");
            svc.authorize(user, "create", res, None, Some(ns), None)?;
            let who = subject(res, &spec)?;
            let attrs = attributes(res, &spec)?;
            if attrs.path.is_some() {
                return Err(ApiError::BadRequest(
                    "spec.nonResourceAttributes: Forbidden: disallowed on this kind of request".into(),
                ));
            }
            if attrs.namespace != ns {
                return Err(ApiError::BadRequest(format!(
                    "spec.resourceAttributes.namespace must match metadata.namespace: {:?} != {ns:?}",
                    attrs.namespace
                )));
            }
            out["metadata"]["namespace"] = json!(ns);
            out["status"] = decision_status(svc.decide(&who, &attrs));
        }
        "SelfSubjectRulesReview" => {
            svc.authorize(user, "create", res, None, None, None)?;
            let namespace = spec.get("namespace").and_then(Value::as_str).unwrap_or("");
            let rules = svc.rules(user, namespace);
            out["status"] = json!({
                "resourceRules": rules.resource_rules,
                "nonResourceRules": rules.non_resource_rules,
                "incomplete": rules.incomplete,
            });
        }
        other => return Err(ApiError::MethodNotAllowed(format!("{other} cannot be created"))),
    }
    Ok(out)
}
