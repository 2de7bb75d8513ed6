//! Per-kind strategies: what the API service does differently for one kind.
//!
//! As upstream's registry strategies (`pkg/registry/<group>/<kind>/strategy.go`): a
//! strategy prepares an object for create and update (server-owned fields, status reset),
//! validates it, says whether `metadata.generation` tracks the spec, how a DELETE proceeds,
//! and which extra store operations a write carries (address allocations, committed in the
//! same transaction as the object). Kinds without special needs use [`Generic`]; the
//! others have a file each: `pod.rs`, `service.rs`, `namespace.rs`.
//!
//! A strategy runs after decoding and defaulting and before admission's mutating plugins;
//! its validation runs after them (so what a plugin changes is validated too), then the
//! validating plugins, then the commit (see `service.rs`).

mod namespace;
mod pod;
pub mod service;

use crate::admission::Context;
use crate::service::DeleteOptions;
use crate::status::{ApiError, ApiResult};
use capstan_api::{Cause, ResourceInfo};
use capstan_storage::Op;
use futures::future::BoxFuture;
use serde_json::Value;

pub use service::ServiceNetwork;

/// Store operations a write carries besides the object itself, and for each the error to
/// answer when its precondition fails (`None`: prepare the write again).
#[derive(Default)]
pub struct Reservations {
    /// The ops, committed in the object's transaction after the object's own op.
    pub ops: Vec<Op>,
    /// Per op: the error when its precondition fails.
    pub on_conflict: Vec<Option<ApiError>>,
}

/// How a DELETE of an object proceeds when it has no finalizers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// Removed at once.
    Immediate,
    /// Marked (`deletionTimestamp`, `deletionGracePeriodSeconds` = the value) and kept until
    /// a component finishes it: a node agent stopping a pod, the namespace controller.
    Graceful(i64),
}

/// What the API service does differently for one kind. Every method has the generic
/// behaviour as its default.
pub trait Strategy: Send + Sync {
    /// Whether `metadata.generation` counts spec changes.
    fn uses_generation(&self) -> bool {
        true
    }

    /// Kind-specific preparation of a new object, after the generic one (identity,
    /// timestamps, generation, status cleared when the kind has a status subresource).
    fn prepare_for_create(&self, _obj: &mut Value) {}

    /// Whether a create keeps the `status` the client sent (Namespace and Node do, though
    /// they have a status subresource).
    fn keeps_status_on_create(&self) -> bool {
        false
    }

    /// Kind-specific preparation of an update, after the generic one (identity from the
    /// stored object, status from the stored object on main-resource writes).
    fn prepare_for_update(&self, _new: &mut Value, _old: &Value) {}

    /// Validation of a new object.
    fn validate_create(&self, res: &ResourceInfo, obj: &Value) -> Vec<Cause> {
        capstan_api::validation::validate_create(res, obj)
    }

    /// Validation of an update (including immutable fields).
    fn validate_update(&self, res: &ResourceInfo, old: &Value, new: &Value) -> Vec<Cause> {
        capstan_api::validation::validate_update(res, old, new)
    }

    /// Store operations committed with the write of `obj` (`old`: the stored object on an
    /// update), e.g. address reservations; may fill allocated values into `obj`. Called
    /// again with fresh state when the commit's precondition on one of them failed.
    fn allocate<'a>(
        &'a self,
        _ctx: &'a Context,
        _obj: &'a mut Value,
        _old: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<Reservations>> {
        Box::pin(async { Ok(Reservations::default()) })
    }

    /// Store operations committed with the removal of `obj` (releases of its reservations).
    fn release(&self, _obj: &Value) -> Vec<Op> {
        Vec::new()
    }

    /// How a DELETE without finalizers proceeds.
    fn deletion(&self, _obj: &Value, _opts: &DeleteOptions) -> Deletion {
        Deletion::Immediate
    }

    /// Changes made to an object when its graceful deletion starts (a namespace becomes
    /// Terminating).
    fn mark_deleting(&self, _obj: &mut Value) {}

    /// Whether a deleting object whose finalizers are all gone may be removed (a namespace
    /// also waits for its `spec.finalizers`).
    fn may_remove(&self, _obj: &Value) -> bool {
        true
    }
}

/// The strategy of kinds without special needs.
pub struct Generic {
    generation: bool,
}

impl Strategy for Generic {
    fn uses_generation(&self) -> bool {
        self.generation
    }
}

/// CustomResourceDefinitions: created with the `customresourcecleanup` finalizer, so that
/// deleting one removes its objects first (`crate::crds`).
pub struct CrdStrategy;

impl Strategy for CrdStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        let mut finalizers = capstan_api::meta::finalizers(obj);
        if !finalizers.iter().any(|f| f == capstan_api::crd::CLEANUP_FINALIZER) {
            finalizers.push(capstan_api::crd::CLEANUP_FINALIZER.to_string());
        }
        if let Some(m) = capstan_api::meta::metadata_mut(obj) {
            m.insert("finalizers".into(), serde_json::json!(finalizers));
        }
    }
}

/// The strategies of every kind.
pub struct Strategies {
    generic: Generic,
    plain: Generic,
    pod: pod::PodStrategy,
    service: service::ServiceStrategy,
    namespace: namespace::NamespaceStrategy,
    node: namespace::NodeStrategy,
    crd: CrdStrategy,
}

impl Strategies {
    /// The strategies; Services allocate from `network`.
    pub fn new(network: ServiceNetwork) -> Strategies {
        Strategies {
            generic: Generic { generation: true },
            plain: Generic { generation: false },
            pod: pod::PodStrategy,
            service: service::ServiceStrategy::new(network),
            namespace: namespace::NamespaceStrategy,
            node: namespace::NodeStrategy,
            crd: CrdStrategy,
        }
    }

    /// The Service address ranges.
    pub fn service_network(&self) -> &ServiceNetwork {
        self.service.network()
    }

    /// The strategy for `res`.
    pub fn of(&self, res: &ResourceInfo) -> &dyn Strategy {
        match (res.group, res.kind) {
            ("", "Pod") => &self.pod,
            ("", "Service") => &self.service,
            ("", "Namespace") => &self.namespace,
            ("", "Node") => &self.node,
            ("apiextensions.k8s.io", "CustomResourceDefinition") if res.custom.is_none() => &self.crd,
            // Kinds without a spec, whose generation upstream leaves unset.
            ("", "ConfigMap" | "Secret" | "Event" | "Endpoints" | "ServiceAccount")
            | ("events.k8s.io", "Event")
            | ("discovery.k8s.io", "EndpointSlice")
            | ("coordination.k8s.io", "Lease") => &self.plain,
            _ => &self.generic,
        }
    }
}

impl Default for Strategies {
    fn default() -> Strategies {
        Strategies::new(ServiceNetwork::default())
    }
}
