//! Upstream validation for the served kinds. Errors are [`Cause`]s; the gateway answers
//! them with 422 Invalid.
//!
//! Field paths and messages follow upstream's `field.ErrorList` rendering (`ErrorBody`):
//! `Required value`, `Invalid value: "Foo_bar": a lowercase RFC 1123 subdomain must...`,
//! `Unsupported value: "X": supported values: "SCTP", "TCP", "UDP"`, and so on. The checks
//! mirror `pkg/apis/core/validation`, `pkg/apis/apps/validation`,
//! `pkg/apis/batch/validation`, `pkg/apis/rbac/validation` and apimachinery's name rules,
//! run on objects that have already been defaulted.

pub(crate) mod admission;
pub(crate) mod errs;
mod kinds;
mod meta;
mod names;
mod pod;
mod update;

pub use pod::ephemeral_update as ephemeral_containers_update;

use crate::{Cause, ResourceInfo};
use serde_json::Value;

/// Validates an object about to be created.
pub fn validate_create(res: &ResourceInfo, obj: &Value) -> Vec<Cause> {
    let mut e = errs::Errs::default();
    if let Some(custom) = res.custom {
        meta::object_meta(&mut e, obj, kinds::name_rule(res.group, res.kind), res.namespaced());
        e.0.extend(crate::crd::schema::validate(&custom.schema, obj));
    } else if res.stored {
        let rule = kinds::name_rule(res.group, res.kind);
        meta::object_meta(&mut e, obj, rule, res.namespaced());
        kinds::validate(&mut e, res.group, res.kind, obj);
        if res.group == "apiextensions.k8s.io" {
            e.0.extend(crate::crd::validate_crd(obj));
        }
    } else {
        review(&mut e, res.kind, obj);
    }
    e.0
}

/// Validates an update of `old` to `new` (including immutable fields).
pub fn validate_update(res: &ResourceInfo, old: &Value, new: &Value) -> Vec<Cause> {
    if let Some(custom) = res.custom {
        let mut e = errs::Errs::default();
        meta::object_meta(&mut e, new, kinds::name_rule(res.group, res.kind), res.namespaced());
        e.0.extend(crate::crd::schema::validate_update(&custom.schema, new, Some(old)));
        return e.0;
    }
    let mut causes = validate_create(res, new);
    if res.group == "apiextensions.k8s.io" && res.custom.is_none() {
        causes.extend(
            crate::crd::validate_crd_update(old, new)
                .into_iter()
                .filter(|c| c.message.ends_with("field is immutable")),
        );
    }
    if res.stored && res.custom.is_none() {
        let mut e = errs::Errs::default();
        update::validate(&mut e, res.group, res.kind, old, new);
        if res.kind == "Pod" && res.group.is_empty() {
            // Ephemeral containers are added through their own subresource; on a plain
            // update an unchanged list is fine.
            causes.retain(|c| c.field != "spec.ephemeralContainers");
        }
        causes.extend(e.0);
    }
    causes
}

/// The access reviews: exactly one kind of attributes.
fn review(e: &mut errs::Errs, kind: &str, obj: &Value) {
    if kind != "SelfSubjectAccessReview" {
        return;
    }
    let spec = obj.get("spec");
    let ra = errs::get(spec, "resourceAttributes");
    let nra = errs::get(spec, "nonResourceAttributes");
    match (ra, nra) {
        (Some(_), Some(n)) => e.invalid(
            "spec.nonResourceAttributes",
            &errs::json_value(Some(n)),
            "cannot be specified in combination with resourceAttributes",
        ),
        (None, None) => e.invalid(
            "spec.resourceAttributes",
            "\"null\"",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
