//! ValidatingAdmissionPolicy (`admissionregistration.k8s.io/v1`): CEL validations bound to
//! requests by ValidatingAdmissionPolicyBindings, as upstream's
//! `k8s.io/apiserver/pkg/admission/plugin/policy/validating`.
//!
//! On every write (validating turn, before the validating webhooks), each binding whose
//! policy exists is considered: the policy's `matchConstraints` and the binding's
//! `matchResources` must both match (rules with `excludeResourceRules`, namespace and
//! object selectors, as for webhooks). With a `paramKind`, the binding's `paramRef` picks
//! the params (by name, or every object its selector matches, in the request's namespace
//! when none is given for a namespaced kind); none found is a denial under
//! `parameterNotFoundAction: Deny` and a pass under `Allow`. The policy's `matchConditions`
//! then its `validations` are evaluated with `object`, `oldObject`, `request`, `params`,
//! `namespaceObject` and `variables` (the policy's `variables`, evaluated in order). A
//! false validation is a violation with `message`, the string `messageExpression` yields, or
//! `failed expression: <expr>`; the binding's `validationActions` decide: `Deny` refuses the
//! write with upstream's Status (`<resource> "<name>" is forbidden: ValidatingAdmissionPolicy
//! '<p>' with binding '<b>' denied request: <message>`, reason from the validation, Invalid
//! (422) by default, the message also as a cause so kubectl prints it), `Warn` adds a
//! `Warning` header, `Audit` is logged. An expression that fails to evaluate follows the
//! policy's `failurePolicy`.
//!
//! Not done as upstream: `status.typeChecking` (expressions are only checked when they
//! run; one that does not compile fails at evaluation), `auditAnnotations`,
//! `authorizer.serviceAccount(...)` (the `authorizer` variable checks for the request's
//! user, see [`super::webhook::Authz`]), and a static cost estimate at creation: expressions are capped
//! only at run time, by upstream's per-call cost limit estimated from the sizes of the
//! values (`capstan_api::crd::cost::check_call_with`).

use super::webhook::{exempt, namespace_matches, object_matches, objects, request, rule_matches, to_cel};
use super::{Attributes, Context, Plugin};
use crate::status::{ApiError, ApiResult, Details};
use capstan_api::selectors::LabelSelector;
use capstan_api::{meta, registry};
use futures::future::BoxFuture;
use serde_json::Value;
use std::collections::HashMap;

const GROUP: &str = "admissionregistration.k8s.io";

/// The ValidatingAdmissionPolicy plugin.
#[derive(Default)]
pub struct ValidatingAdmissionPolicy;

fn all(ctx: &Context, plural: &str) -> Vec<crate::cache::Obj> {
    let res = registry::find(GROUP, "v1", plural).expect("registered");
    let prefix = crate::keys::prefix(res, None);
    let end = capstan_storage::prefix_end(&prefix);
    ctx.cache().list(&prefix, &end, 0, |_| true).0
}

/// Whether a `MatchResources` matches (None: no constraint).
async fn resources_match(
    ctx: &Context,
    m: Option<&Value>,
    attrs: &Attributes<'_>,
    obj: &Value,
) -> ApiResult<bool> {
    let Some(m) = m.filter(|m| m.is_object()) else { return Ok(true) };
    if !namespace_matches(ctx, m.get("namespaceSelector"), attrs, obj).await? {
        return Ok(false);
    }
    if !object_matches(m.get("objectSelector"), attrs, obj).map_err(ApiError::Internal)? {
        return Ok(false);
    }
    let rules = |k: &str| m.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
    if rules("excludeResourceRules").iter().any(|r| rule_matches(r, attrs)) {
        return Ok(false);
    }
    let include = rules("resourceRules");
    Ok(include.is_empty() || include.iter().any(|r| rule_matches(r, attrs)))
}

/// The params a binding selects: `Ok(None)` when the policy has no `paramKind`.
async fn params(
    ctx: &Context,
    policy: &Value,
    binding: &Value,
    attrs: &Attributes<'_>,
) -> Result<Option<Vec<Value>>, String> {
    let Some(kind) = policy["spec"].get("paramKind").filter(|k| k.is_object()) else { return Ok(None) };
    let api_version = kind["apiVersion"].as_str().unwrap_or("");
    let kind_name = kind["kind"].as_str().unwrap_or("");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let Some(res) =
        registry::find_kind(group, kind_name).filter(|r| r.version == version || r.custom.is_some())
    else {
        return Err(format!("failed to configure policy: failed to find resource referenced by paramKind: '{api_version}, Kind={kind_name}'"));
    };
    let Some(r) = binding["spec"].get("paramRef").filter(|p| p.is_object()) else {
        return Err("failed to configure binding: paramRef is required when paramKind is set".into());
    };
    let ns = match r["namespace"].as_str().filter(|s| !s.is_empty()) {
        Some(ns) => Some(ns.to_string()),
        None if res.namespaced() => attrs.namespace.map(str::to_string),
        None => None,
    };
    if res.namespaced() && ns.is_none() {
        return Err("failed to configure binding: cannot use a namespaced paramRef in a cluster-scoped request without a namespace".into());
    }
    let found: Vec<Value> = match r["name"].as_str().filter(|s| !s.is_empty()) {
        Some(name) => {
            ctx.get(res, ns.as_deref(), name).await.map_err(|e| e.to_string())?.into_iter().collect()
        }
        None => {
            let sel = LabelSelector::from_label_selector_json(r.get("selector").unwrap_or(&Value::Null))?;
            let prefix = crate::keys::prefix(res, ns.as_deref());
            let end = capstan_storage::prefix_end(&prefix);
            let (items, _, _) = ctx.cache().list(&prefix, &end, 0, |o| sel.matches(&meta::labels(o)));
            items.iter().map(|v| (**v).clone()).collect()
        }
    };
    if found.is_empty() {
        return match r["parameterNotFoundAction"].as_str().unwrap_or("Deny") {
            "Allow" => Ok(Some(Vec::new())),
            _ => Err("failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction".into()),
        };
    }
    Ok(Some(found))
}

/// A violation or an evaluation error of one validation.
struct Violation {
    message: String,
    reason: String,
}

/// Evaluates the policy against one params object (Null without params). `Err` is an
/// evaluation failure (for `failurePolicy`).
fn evaluate(
    policy: &Value,
    vars: &[(&str, cel::Value)],
    authz: Option<&super::webhook::Authz>,
) -> Result<Vec<Violation>, String> {
    let spec = &policy["spec"];
    // Variables, in order, each seeing those before it.
    let mut vars: Vec<(&str, cel::Value)> = vars.to_vec();
    let mut defined: HashMap<String, cel::Value> = HashMap::new();
    for v in spec["variables"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("");
        let mut with = vars.clone();
        with.push(("variables", cel::Value::from(defined.clone())));
        if let Ok(value) =
            super::webhook::cel_eval_authz(v["expression"].as_str().unwrap_or(""), &with, authz)
        {
            defined.insert(name.to_string(), value);
        }
    }
    vars.push(("variables", cel::Value::from(defined)));
    for c in spec["matchConditions"].as_array().into_iter().flatten() {
        let expr = c["expression"].as_str().unwrap_or("");
        match super::webhook::cel_eval_authz(expr, &vars, authz) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => return Ok(Vec::new()),
            Ok(_) => {
                return Err(format!(
                    "matchCondition '{}' must evaluate to bool",
                    c["name"].as_str().unwrap_or("")
                ))
            }
            Err(e) => {
                return Err(format!(
                    "matchCondition '{}' resulted in error: {e}",
                    c["name"].as_str().unwrap_or("")
                ))
            }
        }
    }
    let mut out = Vec::new();
    for v in spec["validations"].as_array().into_iter().flatten() {
        let expr = v["expression"].as_str().unwrap_or("");
        let ok = match super::webhook::cel_eval_authz(expr, &vars, authz) {
            Ok(cel::Value::Bool(b)) => b,
            Ok(_) => return Err(format!("expression '{expr}' resulted in error: must evaluate to bool")),
            Err(e) => return Err(format!("expression '{expr}' resulted in error: {e}")),
        };
        if ok {
            continue;
        }
        let from_expr = v["messageExpression"].as_str().and_then(|m| {
            match super::webhook::cel_eval_authz(m, &vars, authz) {
                Ok(cel::Value::String(s)) if !s.trim().is_empty() && !s.contains('\n') => Some(s.to_string()),
                _ => None,
            }
        });
        let message = from_expr
            .or_else(|| v["message"].as_str().filter(|m| !m.is_empty()).map(str::to_string))
            .unwrap_or_else(|| format!("failed expression: {expr}"));
        out.push(Violation { message, reason: v["reason"].as_str().unwrap_or("Invalid").to_string() });
    }
    Ok(out)
}

fn reason_code(reason: &str) -> u16 {
    match reason {
        "Forbidden" => 403,
        "Unauthorized" => 401,
        "RequestEntityTooLarge" => 413,
        _ => 422,
    }
}

/// Upstream's denial: `admission.NewForbidden` with the validation's reason and code and the
/// message as a cause.
fn denial(attrs: &Attributes<'_>, policy: &str, binding: &str, v: &Violation) -> ApiError {
    let msg = format!(
        "ValidatingAdmissionPolicy '{policy}' with binding '{binding}' denied request: {}",
        v.message
    );
    let what = if attrs.name.is_empty() {
        attrs.res.group_resource()
    } else {
        format!("{} \"{}\"", attrs.res.group_resource(), attrs.name)
    };
    let message = format!("{what} is forbidden: {msg}");
    let details = Details {
        name: attrs.name.to_string(),
        group: attrs.res.group.to_string(),
        kind: attrs.res.plural.to_string(),
        causes: vec![(String::new(), msg, String::new())],
        retry_after_seconds: None,
    };
    match v.reason.as_str() {
        "Invalid" | "" => ApiError::Invalid { message, details },
        "Forbidden" => ApiError::Forbidden { message, details: Some(details) },
        r => ApiError::Relayed { code: reason_code(r), reason: r.to_string(), message },
    }
}

impl Plugin for ValidatingAdmissionPolicy {
    fn name(&self) -> &'static str {
        "ValidatingAdmissionPolicy"
    }

    fn validate<'a>(
        &'a self,
        ctx: &'a Context,
        attrs: &'a Attributes<'a>,
        obj: &'a Value,
        out: &'a mut super::Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            if exempt(attrs) {
                return Ok(());
            }
            let bindings = all(ctx, "validatingadmissionpolicybindings");
            if bindings.is_empty() {
                return Ok(());
            }
            let policies: HashMap<String, crate::cache::Obj> = all(ctx, "validatingadmissionpolicies")
                .into_iter()
                .map(|p| (meta::name(&p).unwrap_or("").to_string(), p))
                .collect();
            let (new, old) = objects(attrs, obj);
            let req = request(attrs, "");
            let namespace_object = match attrs.namespace.filter(|_| attrs.res.namespaced()) {
                Some(ns) => {
                    let nss = registry::find("", "v1", "namespaces").expect("registered");
                    ctx.get(nss, None, ns).await?.unwrap_or(Value::Null)
                }
                None => Value::Null,
            };
            let authz = super::webhook::authz_for(ctx, attrs);
            let base = [
                ("object", to_cel(&new)),
                ("oldObject", to_cel(&old)),
                ("request", to_cel(&req)),
                ("namespaceObject", to_cel(&namespace_object)),
            ];
            for binding in bindings {
                let bname = meta::name(&binding).unwrap_or("");
                let Some(policy) = binding["spec"]["policyName"].as_str().and_then(|p| policies.get(p))
                else {
                    continue;
                };
                let pname = meta::name(policy).unwrap_or("");
                if !resources_match(ctx, policy["spec"].get("matchConstraints"), attrs, obj).await?
                    || !resources_match(ctx, binding["spec"].get("matchResources"), attrs, obj).await?
                {
                    continue;
                }
                let actions: Vec<&str> = binding["spec"]["validationActions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let ignore = policy["spec"]["failurePolicy"].as_str() == Some("Ignore");
                let fail = |message: String| Violation { message, reason: "Invalid".into() };
                let mut violations = Vec::new();
                match params(ctx, policy, &binding, attrs).await {
                    Err(e) if ignore => {
                        tracing::warn!(policy = pname, binding = bname, error = %e, "policy skipped");
                    }
                    Err(e) => violations.push(fail(e)),
                    Ok(params) => {
                        let sets = match params {
                            None => vec![Value::Null],
                            Some(p) => p,
                        };
                        for p in sets {
                            let mut vars = base.to_vec();
                            vars.push(("params", to_cel(&p)));
                            match evaluate(policy, &vars, authz.as_ref()) {
                                Ok(mut v) => violations.append(&mut v),
                                Err(e) if ignore => {
                                    tracing::warn!(policy = pname, binding = bname, error = %e, "policy skipped");
                                }
                                Err(e) => violations.push(fail(e)),
                            }
                        }
                    }
                }
                for v in &violations {
                    if actions.contains(&"Warn") {
                        out.warnings.push(format!(
                            "Validation failed for ValidatingAdmissionPolicy '{pname}' with binding '{bname}': {}",
                            v.message
                        ));
                    }
                    if actions.contains(&"Audit") {
                        tracing::info!(policy = pname, binding = bname, message = %v.message, "policy violation (Audit)");
                    }
                }
                if actions.contains(&"Deny") {
                    if let Some(v) = violations.first() {
                        return Err(denial(attrs, pname, bname, v));
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn vars(obj: &Value, params: &Value) -> Vec<(&'static str, cel::Value)> {
        vec![
            ("object", to_cel(obj)),
            ("oldObject", cel::Value::Null),
            ("request", to_cel(&json!({"operation": "CREATE"}))),
            ("params", to_cel(params)),
        ]
    }

    #[test]
    fn validations_messages_and_variables() {
        let policy = json!({"spec": {
        "variables": [{"name": "limit", "expression": "params != null ? int(params.data.max) : 5"}],
        "validations": [
            {"expression": "object.spec.replicas <= variables.limit"},
            {"expression": "object.spec.replicas % 2 == 0", "message": "replicas must be even"},
            {"expression": "object.spec.replicas < 3",
             "messageExpression": "'replicas ' + string(object.spec.replicas) + ' is not below 3'",
             "reason": "Forbidden"},
        ]}});
        let obj = json!({"spec": {"replicas": 7}});
        let v = evaluate(&policy, &vars(&obj, &Value::Null), None).expect("evaluates");
        let msgs: Vec<&str> = v.iter().map(|v| v.message.as_str()).collect();
        assert_eq!(
            msgs,
            vec![
                "failed expression: object.spec.replicas <= variables.limit",
                "replicas must be even",
                "replicas 7 is not below 3"
            ]
        );
        assert_eq!(v[2].reason, "Forbidden");
        let v = evaluate(&policy, &vars(&obj, &json!({"data": {"max": "10"}})), None).expect("evaluates");
        assert_eq!(v.len(), 2);
        let bad = json!({"spec": {"validations": [{"expression": "object.nope.deeper"}]}});
        assert!(evaluate(&bad, &vars(&obj, &Value::Null), None).is_err());
    }

    #[test]
    fn the_authorizer_variable_checks_with_the_services_authorizer() {
        let policy = json!({"spec": {"validations": [
            {"expression": "authorizer.group('apps').resource('deployments').namespace('default').check('create').allowed()",
             "message": "may not create deployments"},
            {"expression": "authorizer.requestResource.check('update').allowed() && !authorizer.path('/healthz').check('get').errored()",
             "messageExpression": "authorizer.requestResource.check('update').reason()"},
        ]}});
        let authz = |user: crate::auth::User| super::super::webhook::Authz {
            authorizer: Arc::new(crate::auth::MastersOnly),
            user,
            request: ["apps".into(), "deployments".into(), String::new(), "default".into(), "web".into()],
        };
        let obj = json!({"spec": {"replicas": 1}});
        let admin = crate::auth::User::new("admin", vec!["system:masters".into()]);
        let v = evaluate(&policy, &vars(&obj, &Value::Null), Some(&authz(admin))).expect("evaluates");
        assert!(v.is_empty(), "{:?}", v.iter().map(|v| &v.message).collect::<Vec<_>>());
        let nobody = crate::auth::User::new("nobody", vec![]);
        let v = evaluate(&policy, &vars(&obj, &Value::Null), Some(&authz(nobody))).expect("evaluates");
        let msgs: Vec<&str> = v.iter().map(|v| v.message.as_str()).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert_eq!(msgs[0], "may not create deployments");
        assert!(!msgs[1].is_empty() && msgs[1] != "failed expression", "{msgs:?}");
    }

    #[test]
    fn denial_is_upstreams_status() {
        let user = crate::auth::User::new("u", vec![]);
        let res = registry::find("apps", "v1", "deployments").expect("registered");
        let attrs = Attributes {
            operation: super::super::Operation::Create,
            res,
            subresource: None,
            namespace: Some("default"),
            name: "web",
            user: &user,
            old: None,
            dry_run: false,
        };
        let e = denial(&attrs, "p", "b", &Violation { message: "too many".into(), reason: "Invalid".into() });
        assert_eq!(e.code(), 422);
        assert_eq!(
            e.to_string(),
            "deployments.apps \"web\" is forbidden: ValidatingAdmissionPolicy 'p' with binding 'b' denied request: too many"
        );
        let s = e.to_status();
        assert_eq!(s["details"]["kind"], "deployments");
        assert_eq!(
            s["details"]["causes"][0]["message"],
            "ValidatingAdmissionPolicy 'p' with binding 'b' denied request: too many"
        );
    }
}
