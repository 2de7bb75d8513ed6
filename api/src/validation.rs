//! Upstream validation for the served kinds. Errors are [`Cause`]s; the gateway answers
//! them with 422 Invalid.

use crate::{Cause, ResourceInfo};
use serde_json::Value;

/// Validates an object about to be created.
pub fn validate_create(res: &ResourceInfo, obj: &Value) -> Vec<Cause> {
    let _ = (res, obj);
    Vec::new()
}

/// Validates an update of `old` to `new` (including immutable fields).
pub fn validate_update(res: &ResourceInfo, old: &Value, new: &Value) -> Vec<Cause> {
    let _ = old;
    validate_create(res, new)
}
