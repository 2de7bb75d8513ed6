//! Namespaces and Nodes: no generation, status kept on create. A DELETE of a namespace
//! with `spec.finalizers` makes it Terminating; the namespace controller empties it and
//! removes its finalizer through `namespaces/<name>/finalize`; it goes when both finalizer
//! lists are empty.

use super::{Deletion, Strategy};
use crate::service::DeleteOptions;
use serde_json::{json, Value};

/// The strategy of Namespaces.
pub struct NamespaceStrategy;

fn spec_finalizers(obj: &Value) -> bool {
    obj["spec"].get("finalizers").and_then(Value::as_array).is_some_and(|a| !a.is_empty())
}

impl Strategy for NamespaceStrategy {
    fn uses_generation(&self) -> bool {
        false
    }

    fn keeps_status_on_create(&self) -> bool {
        true
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Active"});
    }

    fn deletion(&self, obj: &Value, _opts: &DeleteOptions) -> Deletion {
        if spec_finalizers(obj) {
            Deletion::Graceful(0)
        } else {
            Deletion::Immediate
        }
    }

    fn mark_deleting(&self, obj: &mut Value) {
        obj["status"]["phase"] = json!("Terminating");
    }

    fn may_remove(&self, obj: &Value) -> bool {
        !spec_finalizers(obj)
    }
}

/// The strategy of Nodes.
pub struct NodeStrategy;

impl Strategy for NodeStrategy {
    fn uses_generation(&self) -> bool {
        false
    }

    fn keeps_status_on_create(&self) -> bool {
        true
    }
}
