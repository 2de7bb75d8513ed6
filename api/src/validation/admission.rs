//! `admissionregistration.k8s.io/v1`: webhook configurations, ValidatingAdmissionPolicies
//! and their bindings, as upstream's `pkg/apis/admissionregistration/validation` (the
//! checks a user meets first; CEL expressions must compile).

use super::errs::{ar, get, go_strings, int, st, Errs};
use serde_json::Value;
use std::collections::HashSet;

fn cel(e: &mut Errs, field: &str, expr: &str) {
    if expr.is_empty() {
        e.required(field, "");
    } else if let Err(msg) = crate::crd::rules::compile(expr) {
        e.invalid_str(field, expr, &msg);
    }
}

fn match_conditions(e: &mut Errs, v: Option<&Value>, field: &str) {
    let mut names = HashSet::new();
    for (i, c) in ar(v, "matchConditions").iter().enumerate() {
        let f = format!("{field}.matchConditions[{i}]");
        let name = st(Some(c), "name");
        if name.is_empty() {
            e.required(&format!("{f}.name"), "");
        } else if !names.insert(name) {
            e.duplicate(&format!("{f}.name"), &super::errs::q(name));
        }
        cel(e, &format!("{f}.expression"), st(Some(c), "expression"));
    }
}

fn rule(e: &mut Errs, r: &Value, field: &str) {
    for (k, detail) in [("operations", ""), ("apiGroups", ""), ("apiVersions", ""), ("resources", "")] {
        if ar(Some(r), k).is_empty() {
            e.required(&format!("{field}.{k}"), detail);
        }
    }
    for (i, op) in ar(Some(r), "operations").iter().enumerate() {
        let op = op.as_str().unwrap_or("");
        if !matches!(op, "*" | "CREATE" | "UPDATE" | "DELETE" | "CONNECT") {
            e.not_supported(
                &format!("{field}.operations[{i}]"),
                op,
                &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"],
            );
        }
    }
    let scope = st(Some(r), "scope");
    if !matches!(scope, "" | "*" | "Cluster" | "Namespaced") {
        e.not_supported(&format!("{field}.scope"), scope, &["*", "Cluster", "Namespaced"]);
    }
}

fn one_of(e: &mut Errs, v: Option<&Value>, key: &str, field: &str, valid: &[&str]) {
    let s = st(v, key);
    if !s.is_empty() && !valid.contains(&s) {
        e.not_supported(&format!("{field}.{key}"), s, valid);
    }
}

pub(crate) fn client_config(e: &mut Errs, cc: Option<&Value>, field: &str) {
    let f = format!("{field}.clientConfig");
    let url = get(cc, "url");
    let svc = get(cc, "service");
    match (url, svc) {
        (Some(_), Some(_)) | (None, None) => e.required(&f, "exactly one of url or service is required"),
        (Some(u), None) => {
            let u = u.as_str().unwrap_or("");
            if u.starts_with("bus:") {
                // Served on the bus (docs/BUS.md).
            } else if !u.starts_with("https://") {
                e.invalid_str(&format!("{f}.url"), u, "'https' is the only allowed URL scheme");
            } else if u.contains('#') {
                e.invalid_str(&format!("{f}.url"), u, "fragments are not permitted");
            }
        }
        (None, Some(s)) => {
            let sf = format!("{f}.service");
            if st(Some(s), "namespace").is_empty() {
                e.required(&format!("{sf}.namespace"), "service namespace is required");
            }
            if st(Some(s), "name").is_empty() {
                e.required(&format!("{sf}.name"), "service name is required");
            }
            if let Some(p) = int(Some(s), "port") {
                if !(1..=65535).contains(&p) {
                    e.invalid(
                        &format!("{sf}.port"),
                        &p.to_string(),
                        "port is not valid: must be between 1 and 65535, inclusive",
                    );
                }
            }
            let path = st(Some(s), "path");
            if !path.is_empty() && !path.starts_with('/') {
                e.invalid_str(&format!("{sf}.path"), path, "must start with a '/'");
            }
        }
    }
}

/// Mutating- and ValidatingWebhookConfiguration.
pub(crate) fn webhook_configuration(e: &mut Errs, obj: &Value, mutating: bool) {
    let mut names = HashSet::new();
    for (i, w) in ar(Some(obj), "webhooks").iter().enumerate() {
        let f = format!("webhooks[{i}]");
        let w = Some(w);
        let name = st(w, "name");
        if name.is_empty() {
            e.required(&format!("{f}.name"), "");
        } else if name.split('.').count() < 3 || name.split('.').any(str::is_empty) {
            e.invalid_str(
                &format!("{f}.name"),
                name,
                "should be a domain with at least three segments separated by dots",
            );
        } else if !names.insert(name) {
            e.duplicate(&format!("{f}.name"), &super::errs::q(name));
        }
        for (j, r) in ar(w, "rules").iter().enumerate() {
            rule(e, r, &format!("{f}.rules[{j}]"));
        }
        one_of(e, w, "failurePolicy", &f, &["Fail", "Ignore"]);
        one_of(e, w, "matchPolicy", &f, &["Equivalent", "Exact"]);
        if mutating {
            one_of(e, w, "reinvocationPolicy", &f, &["IfNeeded", "Never"]);
        }
        match st(w, "sideEffects") {
            "" => e.required(&format!("{f}.sideEffects"), "must specify one of None, NoneOnDryRun"),
            "None" | "NoneOnDryRun" => {}
            other => e.not_supported(&format!("{f}.sideEffects"), other, &["None", "NoneOnDryRun"]),
        }
        let versions = ar(w, "admissionReviewVersions");
        if versions.is_empty() {
            e.required(&format!("{f}.admissionReviewVersions"), "must specify one of v1, v1beta1");
        } else if !versions.iter().any(|v| v == "v1" || v == "v1beta1") {
            e.invalid(
                &format!("{f}.admissionReviewVersions"),
                &go_strings(get(w, "admissionReviewVersions")),
                "must include at least one of v1, v1beta1",
            );
        }
        if let Some(t) = int(w, "timeoutSeconds") {
            if !(1..=30).contains(&t) {
                e.invalid(
                    &format!("{f}.timeoutSeconds"),
                    &t.to_string(),
                    "the timeout value must be between 1 and 30 seconds",
                );
            }
        }
        client_config(e, get(w, "clientConfig"), &f);
        match_conditions(e, w, &f);
    }
}

/// ValidatingAdmissionPolicy.
pub(crate) fn policy(e: &mut Errs, obj: &Value) {
    let spec = get(Some(obj), "spec");
    if ar(spec, "validations").is_empty() && ar(spec, "auditAnnotations").is_empty() {
        e.required("spec.validations", "validations or auditAnnotations must contain at least one item");
    }
    for (i, v) in ar(spec, "validations").iter().enumerate() {
        let f = format!("spec.validations[{i}]");
        cel(e, &format!("{f}.expression"), st(Some(v), "expression"));
        let m = st(Some(v), "messageExpression");
        if !m.is_empty() {
            cel(e, &format!("{f}.messageExpression"), m);
        }
        let reason = st(Some(v), "reason");
        let reasons = ["Unauthorized", "Forbidden", "Invalid", "RequestEntityTooLarge"];
        if !reason.is_empty() && !reasons.contains(&reason) {
            e.not_supported(&format!("{f}.reason"), reason, &reasons);
        }
    }
    for (i, v) in ar(spec, "variables").iter().enumerate() {
        let f = format!("spec.variables[{i}]");
        if st(Some(v), "name").is_empty() {
            e.required(&format!("{f}.name"), "");
        }
        cel(e, &format!("{f}.expression"), st(Some(v), "expression"));
    }
    one_of(e, spec, "failurePolicy", "spec", &["Fail", "Ignore"]);
    match get(spec, "matchConstraints") {
        None => e.required("spec.matchConstraints", ""),
        Some(m) => {
            if ar(Some(m), "resourceRules").is_empty() {
                e.required("spec.matchConstraints.resourceRules", "");
            }
            for (j, r) in ar(Some(m), "resourceRules").iter().enumerate() {
                rule(e, r, &format!("spec.matchConstraints.resourceRules[{j}]"));
            }
        }
    }
    if let Some(p) = get(spec, "paramKind") {
        if st(Some(p), "apiVersion").is_empty() {
            e.required("spec.paramKind.apiVersion", "");
        }
        if st(Some(p), "kind").is_empty() {
            e.required("spec.paramKind.kind", "");
        }
    }
    match_conditions(e, spec, "spec");
}

/// ValidatingAdmissionPolicyBinding.
pub(crate) fn binding(e: &mut Errs, obj: &Value) {
    let spec = get(Some(obj), "spec");
    if st(spec, "policyName").is_empty() {
        e.required("spec.policyName", "");
    }
    let actions: Vec<&str> = ar(spec, "validationActions").iter().filter_map(Value::as_str).collect();
    if actions.is_empty() {
        e.required("spec.validationActions", "at least one validation action is required");
    }
    let mut seen = HashSet::new();
    for (i, a) in actions.iter().enumerate() {
        if !["Audit", "Deny", "Warn"].contains(a) {
            e.not_supported(&format!("spec.validationActions[{i}]"), a, &["Audit", "Deny", "Warn"]);
        } else if !seen.insert(*a) {
            e.duplicate(&format!("spec.validationActions[{i}]"), &super::errs::q(a));
        }
    }
    if seen.contains("Deny") && seen.contains("Warn") {
        e.invalid(
            "spec.validationActions",
            &go_strings(get(spec, "validationActions")),
            "must not contain both Deny and Warn (repeating the same validation failure information in the API response and headers serves no purpose)",
        );
    }
    if let Some(p) = get(spec, "paramRef") {
        if get(Some(p), "name").is_some() && get(Some(p), "selector").is_some() {
            e.forbidden("spec.paramRef.name", "name and selector are mutually exclusive");
        }
        if get(Some(p), "name").is_none() && get(Some(p), "selector").is_none() {
            e.required("spec.paramRef", "one of name or selector must be specified");
        }
        one_of(e, Some(p), "parameterNotFoundAction", "spec.paramRef", &["Allow", "Deny"]);
    }
}

#[cfg(test)]
mod tests {
    use crate::registry;
    use serde_json::json;

    fn causes(plural: &str, obj: serde_json::Value) -> Vec<String> {
        let res = registry::find("admissionregistration.k8s.io", "v1", plural).expect("registered");
        let mut obj = obj;
        crate::defaults::apply_defaults(res, &mut obj);
        crate::validation::validate_create(res, &obj)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn webhook_configurations_as_upstream() {
        let c = causes(
            "validatingwebhookconfigurations",
            json!({"metadata": {"name": "v"}, "webhooks": [
                {"name": "short", "clientConfig": {"url": "http://x/"}, "timeoutSeconds": 31,
                 "rules": [{"operations": ["PATCH"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                 "matchConditions": [{"name": "m", "expression": "object.("}]},
                {"name": "ok.example.com", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                 "clientConfig": {"url": "bus:capstan.v1.admission.i.h"}}]}),
        );
        assert!(c.contains(&"webhooks[0].name: Invalid value: \"short\": should be a domain with at least three segments separated by dots".to_string()), "{c:?}");
        assert!(
            c.contains(
                &"webhooks[0].sideEffects: Required value: must specify one of None, NoneOnDryRun"
                    .to_string()
            ),
            "{c:?}"
        );
        assert!(
            c.contains(
                &"webhooks[0].admissionReviewVersions: Required value: must specify one of v1, v1beta1"
                    .to_string()
            ),
            "{c:?}"
        );
        assert!(c.contains(&"webhooks[0].timeoutSeconds: Invalid value: 31: the timeout value must be between 1 and 30 seconds".to_string()), "{c:?}");
        assert!(c.contains(&"webhooks[0].clientConfig.url: Invalid value: \"http://x/\": 'https' is the only allowed URL scheme".to_string()), "{c:?}");
        assert!(
            c.iter()
                .any(|m| m.starts_with("webhooks[0].rules[0].operations[0]: Unsupported value: \"PATCH\"")),
            "{c:?}"
        );
        assert!(
            c.iter().any(|m| m.starts_with(
                "webhooks[0].matchConditions[0].expression: Invalid value: \"object.(\": compilation failed"
            )),
            "{c:?}"
        );
        assert!(!c.iter().any(|m| m.starts_with("webhooks[1]")), "{c:?}");
    }

    #[test]
    fn policies_and_bindings_as_upstream() {
        let c = causes("validatingadmissionpolicies", json!({"metadata": {"name": "p"}, "spec": {}}));
        assert_eq!(
            c,
            vec![
                "spec.validations: Required value: validations or auditAnnotations must contain at least one item",
                "spec.matchConstraints: Required value"
            ]
        );
        let c = causes(
            "validatingadmissionpolicybindings",
            json!({"metadata": {"name": "b"}, "spec": {"policyName": "p", "validationActions": ["Deny", "Warn"]}}),
        );
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(c[0].starts_with("spec.validationActions: Invalid value: []string{\"Deny\", \"Warn\"}: must not contain both Deny and Warn"));
    }
}
