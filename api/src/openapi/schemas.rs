//! `components.schemas` of one group-version document, generated from the `k8s-openapi`
//! types' `schemars::JsonSchema` impls and post-processed into OpenAPI 3.0.

use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{json, Map, Value};

use crate::registry::ResourceInfo;

/// Prefix of every `$ref` into `components.schemas`.
pub(crate) const REF_PREFIX: &str = "#/components/schemas/";

/// Upstream name of `metav1.Status`.
pub(crate) const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
/// Upstream name of `metav1.DeleteOptions`.
pub(crate) const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
/// Upstream name of `metav1.Patch` (the PATCH request body).
pub(crate) const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
/// Upstream name of `metav1.ListMeta`.
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";

/// A group, version and kind.
pub(crate) type Gvk = (&'static str, &'static str, &'static str);

/// A fresh generator producing OpenAPI 3.0 schemas with `$ref`s into
/// `#/components/schemas/`.
fn generator() -> SchemaGenerator {
    SchemaSettings::openapi3().with(|s| s.meta_schema = None).into_generator()
}

/// Adds the schema of kind `(group, version, kind)` (and everything it references) to the
/// generator, returning its `components.schemas` key, or `None` for a kind this module has
/// no type for.
fn add_kind(gen: &mut SchemaGenerator, group: &str, version: &str, kind: &str) -> Option<String> {
    use k8s_openapi::api::{
        admissionregistration::v1 as admreg, apps::v1 as apps, authentication::v1 as authn,
        authorization::v1 as authz, autoscaling::v1 as autoscaling, batch::v1 as batch,
        certificates::v1 as certificates, coordination::v1 as coordination, core::v1 as core,
        discovery::v1 as discovery, networking::v1 as networking, policy::v1 as policy, rbac::v1 as rbac,
        scheduling::v1 as scheduling, storage::v1 as storage,
    };

    macro_rules! kinds {
        ($($g:literal, $v:literal, $k:literal => $ty:ty;)*) => {
            match (group, version, kind) {
                $(($g, $v, $k) => gen.subschema_for::<$ty>(),)*
                _ => return None,
            }
        };
    }

    let schema = kinds! {
        "", "v1", "Namespace" => core::Namespace;
        "", "v1", "Pod" => core::Pod;
        "", "v1", "Node" => core::Node;
        "", "v1", "Service" => core::Service;
        "", "v1", "Endpoints" => core::Endpoints;
        "", "v1", "ConfigMap" => core::ConfigMap;
        "", "v1", "ReplicationController" => core::ReplicationController;
        "", "v1", "Secret" => core::Secret;
        "", "v1", "ServiceAccount" => core::ServiceAccount;
        "", "v1", "Event" => core::Event;
        "", "v1", "PersistentVolume" => core::PersistentVolume;
        "", "v1", "PersistentVolumeClaim" => core::PersistentVolumeClaim;
        "", "v1", "ResourceQuota" => core::ResourceQuota;
        "", "v1", "LimitRange" => core::LimitRange;
        "apps", "v1", "Deployment" => apps::Deployment;
        "apps", "v1", "ReplicaSet" => apps::ReplicaSet;
        "apps", "v1", "StatefulSet" => apps::StatefulSet;
        "apps", "v1", "DaemonSet" => apps::DaemonSet;
        "apps", "v1", "ControllerRevision" => apps::ControllerRevision;
        "autoscaling", "v1", "Scale" => autoscaling::Scale;
        "autoscaling", "v1", "HorizontalPodAutoscaler" => autoscaling::HorizontalPodAutoscaler;
        "autoscaling", "v2", "HorizontalPodAutoscaler" => k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
        "batch", "v1", "Job" => batch::Job;
        "batch", "v1", "CronJob" => batch::CronJob;
        "coordination.k8s.io", "v1", "Lease" => coordination::Lease;
        "discovery.k8s.io", "v1", "EndpointSlice" => discovery::EndpointSlice;
        "rbac.authorization.k8s.io", "v1", "Role" => rbac::Role;
        "rbac.authorization.k8s.io", "v1", "RoleBinding" => rbac::RoleBinding;
        "rbac.authorization.k8s.io", "v1", "ClusterRole" => rbac::ClusterRole;
        "rbac.authorization.k8s.io", "v1", "ClusterRoleBinding" => rbac::ClusterRoleBinding;
        "storage.k8s.io", "v1", "StorageClass" => storage::StorageClass;
        "policy", "v1", "PodDisruptionBudget" => policy::PodDisruptionBudget;
        "admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration" => admreg::MutatingWebhookConfiguration;
        "admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration" => admreg::ValidatingWebhookConfiguration;
        "admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy" => admreg::ValidatingAdmissionPolicy;
        "admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicyBinding" => admreg::ValidatingAdmissionPolicyBinding;
        "scheduling.k8s.io", "v1", "PriorityClass" => scheduling::PriorityClass;
        "flowcontrol.apiserver.k8s.io", "v1", "FlowSchema" => k8s_openapi::api::flowcontrol::v1::FlowSchema;
        "flowcontrol.apiserver.k8s.io", "v1", "PriorityLevelConfiguration" => k8s_openapi::api::flowcontrol::v1::PriorityLevelConfiguration;
        "networking.k8s.io", "v1", "Ingress" => networking::Ingress;
        "networking.k8s.io", "v1", "IngressClass" => networking::IngressClass;
        "networking.k8s.io", "v1", "NetworkPolicy" => networking::NetworkPolicy;
        "apiregistration.k8s.io", "v1", "APIService" => k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
        "apiextensions.k8s.io", "v1", "CustomResourceDefinition" => k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        "authorization.k8s.io", "v1", "SelfSubjectAccessReview" => authz::SelfSubjectAccessReview;
        "authorization.k8s.io", "v1", "SelfSubjectRulesReview" => authz::SelfSubjectRulesReview;
        "authorization.k8s.io", "v1", "SubjectAccessReview" => authz::SubjectAccessReview;
        "authorization.k8s.io", "v1", "LocalSubjectAccessReview" => authz::LocalSubjectAccessReview;
        "authentication.k8s.io", "v1", "TokenReview" => authn::TokenReview;
        "certificates.k8s.io", "v1", "CertificateSigningRequest" => certificates::CertificateSigningRequest;
        "authentication.k8s.io", "v1", "SelfSubjectReview" => authn::SelfSubjectReview;
    };
    ref_name(schema.as_value())
}

/// The `components.schemas` key a `{"$ref": ...}` schema points at.
fn ref_name(schema: &Value) -> Option<String> {
    schema.get("$ref")?.as_str()?.strip_prefix(REF_PREFIX).map(str::to_string)
}

/// `{"group": .., "kind": .., "version": ..}`.
pub(crate) fn gvk_object(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "kind": kind, "version": version})
}

/// The schemas of one group-version document and the names its paths refer to.
pub(crate) struct Components {
    /// `components.schemas`.
    pub schemas: Map<String, Value>,
    /// Schema key of each kind that has one.
    pub kind_names: Vec<(Gvk, String)>,
    /// Schema key of each stored kind's list type.
    pub list_names: Vec<(Gvk, String)>,
}

impl Components {
    /// Schema key of a kind, if it has a schema.
    pub fn kind(&self, gvk: Gvk) -> Option<&str> {
        self.kind_names.iter().find(|(k, _)| *k == gvk).map(|(_, n)| n.as_str())
    }

    /// Schema key of a kind's list type, if it has one.
    pub fn list(&self, gvk: Gvk) -> Option<&str> {
        self.list_names.iter().find(|(k, _)| *k == gvk).map(|(_, n)| n.as_str())
    }
}

/// Builds the schemas for the resources of one group-version (and the kinds their `status` and
/// `scale` subresources answer with).
pub(crate) fn components(group: &str, version: &str, resources: &[&ResourceInfo]) -> Components {
    let mut gen = generator();

    // Kinds served in this document, in a stable order without duplicates.
    let mut kinds: Vec<Gvk> = Vec::new();
    for r in resources {
        let own = (r.group, r.version, r.kind);
        if !kinds.contains(&own) {
            kinds.push(own);
        }
        for s in r.subresources {
            let sub = (s.group, s.version, s.kind);
            if matches!(s.name, "status" | "scale") && !kinds.contains(&sub) {
                kinds.push(sub);
            }
        }
    }

    let mut kind_names = Vec::new();
    let mut customs: Vec<(String, Value)> = Vec::new();
    for &gvk in &kinds {
        if let Some(r) = resources.iter().find(|r| r.custom.is_some() && (r.group, r.version, r.kind) == gvk)
        {
            let name = custom_name(r);
            customs.push((name.clone(), custom_schema(r)));
            kind_names.push((gvk, name));
        } else if let Some(name) = add_kind(&mut gen, gvk.0, gvk.1, gvk.2) {
            kind_names.push((gvk, name));
        }
    }
    if !customs.is_empty() {
        gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
    }
    gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
    gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>();
    gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Patch>();
    let any_stored = resources.iter().any(|r| r.stored);
    if any_stored {
        gen.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta>();
    }

    let mut schemas = gen.take_definitions(true);
    for schema in schemas.values_mut() {
        to_openapi30(schema);
    }
    for (name, schema) in customs {
        schemas.insert(name, schema);
    }

    // Top-level kinds carry their GVK as a list. k8s-openapi marks their `metadata` required
    // (its Rust field is not optional); upstream does not, and `kubectl explain` shows it.
    for ((g, v, k), name) in &kind_names {
        set_gvk(&mut schemas, name, vec![gvk_object(g, v, k)]);
        unrequire_metadata(&mut schemas, name);
    }
    set_gvk(&mut schemas, STATUS, vec![gvk_object("", "v1", "Status")]);
    let mut delete_gvks = vec![gvk_object("", "v1", "DeleteOptions")];
    if !group.is_empty() {
        delete_gvks.push(gvk_object(group, version, "DeleteOptions"));
    }
    set_gvk(&mut schemas, DELETE_OPTIONS, delete_gvks);

    // List types: k8s-openapi has a generic `List<T>` without a schema, so write them.
    let mut list_names = Vec::new();
    for r in resources.iter().filter(|r| r.stored) {
        let gvk = (r.group, r.version, r.kind);
        let Some(item) = kind_names.iter().find(|(k, _)| *k == gvk).map(|(_, n)| n) else {
            continue;
        };
        let name = match item.rsplit_once('.') {
            Some((prefix, _)) => format!("{prefix}.{}", r.list_kind),
            None => r.list_kind.to_string(),
        };
        if schemas.contains_key(&name) {
            continue;
        }
        schemas.insert(name.clone(), list_schema(r, item));
        list_names.push((gvk, name));
    }

    Components { schemas, kind_names, list_names }
}

/// Upstream's name of a custom kind's schema: the group reversed, the version, the kind
/// (`com.example.stable.v1.CronTab`).
fn custom_name(r: &ResourceInfo) -> String {
    let mut parts: Vec<&str> = r.group.split('.').collect();
    parts.reverse();
    format!("{}.{}.{}", parts.join("."), r.version, r.kind)
}

/// A custom kind's published schema: its `openAPIV3Schema` with `apiVersion`, `kind` and
/// `metadata` (a reference to ObjectMeta) filled in, as upstream publishes it.
fn custom_schema(r: &ResourceInfo) -> Value {
    let mut schema = r
        .custom
        .map(|c| c.schema.clone())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    let Some(obj) = schema.as_object_mut() else { return schema };
    let props = obj.entry("properties").or_insert_with(|| json!({}));
    if let Some(props) = props.as_object_mut() {
        props.insert(
            "apiVersion".into(),
            json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"}),
        );
        props.insert(
            "kind".into(),
            json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"}),
        );
        props.insert(
            "metadata".into(),
            json!({"allOf": [{"$ref": format!("{REF_PREFIX}io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")}],
                   "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}),
        );
    }
    schema
}

/// Sets `x-kubernetes-group-version-kind` on a schema, if present.
fn set_gvk(schemas: &mut Map<String, Value>, name: &str, gvks: Vec<Value>) {
    if let Some(Value::Object(obj)) = schemas.get_mut(name) {
        obj.insert("x-kubernetes-group-version-kind".to_string(), Value::Array(gvks));
    }
}

/// Removes `metadata` from a schema's `required` list (and the list if it ends up empty).
fn unrequire_metadata(schemas: &mut Map<String, Value>, name: &str) {
    let Some(Value::Object(obj)) = schemas.get_mut(name) else {
        return;
    };
    if let Some(Value::Array(required)) = obj.get_mut("required") {
        required.retain(|f| f != "metadata");
        if required.is_empty() {
            obj.remove("required");
        }
    }
}

/// The schema of `<Kind>List`, as upstream writes it.
fn list_schema(r: &ResourceInfo, item: &str) -> Value {
    json!({
        "description": format!("{} is a list of {} objects.", r.list_kind, r.kind),
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources",
                "type": "string",
            },
            "items": {
                "description": format!("List of {}.", r.plural),
                "type": "array",
                "items": {"$ref": format!("{REF_PREFIX}{item}")},
            },
            "kind": {
                "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
                "type": "string",
            },
            "metadata": {
                "allOf": [{"$ref": format!("{REF_PREFIX}{LIST_META}")}],
                "description": "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
            },
        },
        "required": ["items"],
        "x-kubernetes-group-version-kind": [gvk_object(r.group, r.version, r.list_kind)],
    })
}

/// Rewrites JSON Schema constructs OpenAPI 3.0 cannot express, in a schema and its subschemas:
/// `type` lists (a `null` member becomes `nullable: true`), `const` (becomes a one-value
/// `enum`), `examples` (the first becomes `example`), boolean subschemas, and the JSON Schema
/// bookkeeping keywords (`$schema`, `$id`, `$defs`, `definitions`).
pub(crate) fn to_openapi30(schema: &mut Value) {
    let Value::Object(obj) = schema else {
        // A bare `true`/`false` schema: OpenAPI 3.0 wants an object.
        if let Value::Bool(b) = schema {
            *schema = if *b { json!({}) } else { json!({"not": {}}) };
        }
        return;
    };

    if let Some(Value::Array(types)) = obj.get("type").cloned() {
        let non_null: Vec<Value> = types.iter().filter(|t| t.as_str() != Some("null")).cloned().collect();
        if non_null.len() != types.len() {
            obj.insert("nullable".to_string(), Value::Bool(true));
        }
        match non_null.as_slice() {
            [single] => {
                obj.insert("type".to_string(), single.clone());
            }
            _ => {
                obj.remove("type");
            }
        }
    }
    if let Some(c) = obj.remove("const") {
        obj.insert("enum".to_string(), Value::Array(vec![c]));
    }
    if let Some(Value::Array(examples)) = obj.remove("examples") {
        if let Some(first) = examples.into_iter().next() {
            obj.insert("example".to_string(), first);
        }
    }
    for key in ["$schema", "$id", "$defs", "definitions"] {
        obj.remove(key);
    }

    // Subschemas held in a map of name to schema.
    for key in ["properties", "patternProperties"] {
        if let Some(Value::Object(map)) = obj.get_mut(key) {
            for sub in map.values_mut() {
                to_openapi30(sub);
            }
        }
    }
    // Subschemas held in a list.
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(list)) = obj.get_mut(key) {
            for sub in list.iter_mut() {
                to_openapi30(sub);
            }
        }
    }
    // Single subschemas (a boolean `additionalProperties` is valid OpenAPI 3.0).
    for key in ["items", "not", "additionalProperties"] {
        match obj.get_mut(key) {
            Some(Value::Bool(_)) if key == "additionalProperties" => {}
            Some(Value::Array(list)) if key == "items" => {
                // Tuple validation: 3.0 has no equivalent, keep the first item's schema.
                let mut first = list.first().cloned().unwrap_or_else(|| json!({}));
                to_openapi30(&mut first);
                obj.insert(key.to_string(), first);
            }
            Some(sub) => to_openapi30(sub),
            None => {}
        }
    }
}

/// Every `$ref` target in `value`, for consistency checks.
#[cfg(test)]
pub(crate) fn refs(value: &Value, out: &mut std::collections::BTreeSet<String>) {
    match value {
        Value::Object(obj) => {
            for (k, v) in obj {
                if k == "$ref" {
                    if let Some(s) = v.as_str() {
                        out.insert(s.to_string());
                    }
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Array(list) => {
            for v in list {
                refs(v, out);
            }
        }
        _ => {}
    }
}
