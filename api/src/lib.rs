//! capstan's resource model, with no I/O.
//!
//! Objects travel through capstan as `serde_json::Value` in their Kubernetes JSON form;
//! every served kind is listed in the [`registry`] with a typed round trip through its
//! `k8s-openapi` struct, which checks field types. On top of that this crate offers:
//!
//! * [`crd`]: CustomResourceDefinitions: the resources a CRD serves, structural schema
//!   pruning, defaulting and validation, printer columns;
//! * [`defaults`]: upstream defaulting (port protocol, restartPolicy, Deployment strategy...);
//! * [`validation`]: upstream validation, answered as a list of [`Cause`]s;
//! * [`selectors`]: label selectors (equality and set-based) and field selectors;
//! * [`patch`]: JSON merge patch, JSON patch and strategic merge patch;
//! * [`ssa`]: server-side apply with `managedFields`;
//! * [`table`]: conversion to `meta.k8s.io/v1` Table rows with upstream's columns;
//! * [`meta`]: small helpers to read and write `metadata` on a JSON object;
//! * [`protobuf`]: decoding of the protobuf request bodies kubectl's typed clients send;
//! * [`openapi`]: the OpenAPI v3 documents (`/openapi/v3`) built from the registry;
//! * [`podsecurity`]: the Pod Security Standards checks (upstream's Pod Security Admission
//!   policy) with upstream's messages.
//!
//! ```
//! let pods = capstan_api::registry::find("", "v1", "pods").unwrap();
//! assert_eq!(pods.kind, "Pod");
//! let sel = capstan_api::selectors::LabelSelector::parse("app=web,tier in (a,b)").unwrap();
//! let labels = [("app".to_string(), "web".to_string()), ("tier".to_string(), "a".to_string())]
//!     .into_iter().collect();
//! assert!(sel.matches(&labels));
//! ```

pub mod autoscaling;
pub mod crd;
pub mod defaults;
pub mod disruption;
pub mod meta;
pub mod openapi;
pub mod patch;
pub mod podrefs;
pub mod podsecurity;
pub mod protobuf;
pub mod quantity;
pub mod quota;
pub mod registry;
pub mod selectors;
pub mod ssa;
pub mod table;
pub mod validation;

pub use registry::{ResourceInfo, Scope};

/// One reason an object is invalid, as in a Kubernetes `Status`'s `details.causes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueForbidden`,
    /// `FieldValueNotSupported`, `FieldValueDuplicate`, `FieldValueTooLong`...
    pub reason: &'static str,
    /// The JSON path of the field, e.g. `metadata.name` or `spec.containers[0].image`.
    pub field: String,
    /// A message a person can act on, e.g. `Required value`.
    pub message: String,
}

impl Cause {
    /// A `FieldValueRequired` cause.
    pub fn required(field: impl Into<String>) -> Cause {
        Cause { reason: "FieldValueRequired", field: field.into(), message: "Required value".into() }
    }

    /// A `FieldValueInvalid` cause; `message` should start with the offending value,
    /// as upstream does: `Invalid value: "Foo": a lowercase RFC 1123 subdomain must...`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Cause {
        Cause { reason: "FieldValueInvalid", field: field.into(), message: message.into() }
    }

    /// A `FieldValueForbidden` cause.
    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Cause {
        Cause { reason: "FieldValueForbidden", field: field.into(), message: message.into() }
    }

    /// A `FieldValueNotSupported` cause.
    pub fn not_supported(field: impl Into<String>, message: impl Into<String>) -> Cause {
        Cause { reason: "FieldValueNotSupported", field: field.into(), message: message.into() }
    }
}
