//! Keeps this process's registry of kinds in step with the established
//! CustomResourceDefinitions, so the controllers that walk every kind (the namespace
//! controller emptying a namespace, the garbage collector resolving an owner) know custom
//! kinds in a `capstan controllers` process too. (In `capstan up` the gateway installs the
//! same resources in the same registry; installing is idempotent.)

use super::Ctx;
use crate::client::Gvr;
use crate::informer::Change;
use capstan_api::{crd, meta, registry};
use serde_json::Value;
use std::sync::Arc;

/// CustomResourceDefinitions.
pub const CRDS: Gvr = Gvr::new("apiextensions.k8s.io", "v1", "customresourcedefinitions");

fn established(crd: &Value) -> bool {
    crd["status"]["conditions"]
        .as_array()
        .is_some_and(|l| l.iter().any(|c| c["type"] == "Established" && c["status"] == "True"))
}

/// Follows CRDs: an established one is installed, a removed one uninstalled.
pub fn start(ctx: &Ctx) {
    let informer = ctx.informers.get(CRDS);
    informer.on_change(Arc::new(|change: &Change| match change {
        Change::Applied { new, .. } if established(new) => {
            let name = meta::name(new).unwrap_or("");
            registry::install_custom(name, &crd::fingerprint(new), || crd::resources_of(new));
        }
        Change::Applied { .. } => {}
        Change::Deleted(old) => {
            registry::remove_custom(meta::name(old).unwrap_or(""));
        }
    }));
}
