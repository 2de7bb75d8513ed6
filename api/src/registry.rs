//! The resource registry: every kind capstan serves, with the facts discovery, routing,
//! storage keys and decoding need.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, RwLock};

/// Whether a resource lives in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Namespaced resource.
    Namespaced,
    /// Cluster-scoped resource.
    Cluster,
}

/// A subresource of a resource (`pods/status`, `deployments/scale`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subresource {
    /// Name, e.g. `status`.
    pub name: &'static str,
    /// Group of the kind it answers with.
    pub group: &'static str,
    /// Version of the kind it answers with.
    pub version: &'static str,
    /// Kind it answers with.
    pub kind: &'static str,
    /// Verbs it supports.
    pub verbs: &'static [&'static str],
}

/// Round-trips a JSON object through its typed model: checks field types and normalises.
pub type RoundTrip = fn(Value) -> Result<Value, serde_json::Error>;

/// One served resource.
#[derive(Debug, Clone, Copy)]
pub struct ResourceInfo {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Kind of the list type.
    pub list_kind: &'static str,
    /// Plural resource name, used in URLs.
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Short names (`po`, `deploy`...).
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Scope.
    pub scope: Scope,
    /// Verbs.
    pub verbs: &'static [&'static str],
    /// Subresources.
    pub subresources: &'static [Subresource],
    /// Whether objects are stored (false for review-style resources that only answer a
    /// create).
    pub stored: bool,
    /// Typed round trip.
    pub round_trip: RoundTrip,
    /// For a version of a CustomResourceDefinition: its schema, columns and subresources.
    pub custom: Option<&'static crate::crd::CustomResource>,
}

impl ResourceInfo {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, or `pods` for the core group (as in upstream error messages).
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether the resource is namespaced.
    pub fn namespaced(&self) -> bool {
        self.scope == Scope::Namespaced
    }

    /// The subresource called `name`, if any.
    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Whether `verb` is allowed on the main resource.
    pub fn has_verb(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }

    /// Whether the kind has a status subresource (main-resource writes then ignore status).
    pub fn has_status(&self) -> bool {
        self.subresource("status").is_some()
    }
}

fn rt<T: Serialize + DeserializeOwned>(v: Value) -> Result<Value, serde_json::Error> {
    let typed: T = serde_json::from_value(v)?;
    serde_json::to_value(typed)
}

/// Verbs of an ordinary stored resource.
pub const ALL_VERBS: &[&str] =
    &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];
const CREATE_ONLY: &[&str] = &["create"];

const fn status(group: &'static str, version: &'static str, kind: &'static str) -> Subresource {
    Subresource { name: "status", group, version, kind, verbs: STATUS_VERBS }
}
const fn scale() -> Subresource {
    Subresource { name: "scale", group: "autoscaling", version: "v1", kind: "Scale", verbs: STATUS_VERBS }
}

macro_rules! res {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, $ty:ty,
     short = [$($short:expr),*], cats = [$($cat:expr),*], $scope:ident, subs = [$($sub:expr),*]) => {
        ResourceInfo {
            group: $group,
            version: $version,
            kind: $kind,
            list_kind: concat!($kind, "List"),
            plural: $plural,
            singular: $singular,
            short_names: &[$($short),*],
            categories: &[$($cat),*],
            scope: Scope::$scope,
            verbs: ALL_VERBS,
            subresources: &[$($sub),*],
            stored: true,
            round_trip: rt::<$ty>,
            custom: None,
        }
    };
}

/// A review-style resource: answers a create, is not stored.
macro_rules! review {
    ($group:expr, $kind:expr, $plural:expr, $singular:expr, $ty:ty, $scope:ident) => {
        ResourceInfo {
            group: $group,
            version: "v1",
            kind: $kind,
            list_kind: concat!($kind, "List"),
            plural: $plural,
            singular: $singular,
            short_names: &[],
            categories: &[],
            scope: Scope::$scope,
            verbs: CREATE_ONLY,
            subresources: &[],
            stored: false,
            round_trip: rt::<$ty>,
            custom: None,
        }
    };
}

/// A `metrics.k8s.io/v1beta1` kind: get and list only, not stored.
macro_rules! metrics {
    ($kind:expr, $plural:expr, $singular:expr, $scope:ident) => {
        ResourceInfo {
            group: METRICS_GROUP,
            version: "v1beta1",
            kind: $kind,
            list_kind: concat!($kind, "List"),
            plural: $plural,
            singular: $singular,
            short_names: &[],
            categories: &[],
            scope: Scope::$scope,
            verbs: &["get", "list"],
            subresources: &[],
            stored: false,
            round_trip: Ok,
            custom: None,
        }
    };
}

/// The resource metrics group (`kubectl top`, the HorizontalPodAutoscaler).
pub const METRICS_GROUP: &str = "metrics.k8s.io";

use k8s_openapi::api::{
    admissionregistration::v1 as admreg, apps::v1 as apps, authentication::v1 as authn,
    authorization::v1 as authz, autoscaling::v2 as autoscaling, batch::v1 as batch,
    certificates::v1 as certificates, coordination::v1 as coordination, core::v1 as core,
    discovery::v1 as discovery, flowcontrol::v1 as flowcontrol, networking::v1 as networking,
    policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as scheduling, storage::v1 as storage,
};

use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1 as apireg;

/// An APIService's round trip keeps `spec.service: null` (upstream's `Service` field has no
/// `omitempty`: a local APIService shows `service: null`).
fn api_service_rt(v: Value) -> Result<Value, serde_json::Error> {
    let mut out = rt::<apireg::APIService>(v)?;
    if let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut) {
        spec.entry("service").or_insert(Value::Null);
    }
    Ok(out)
}

const POD_SUBS: &[Subresource] = &[
    status("", "v1", "Pod"),
    Subresource { name: "binding", group: "", version: "v1", kind: "Binding", verbs: CREATE_ONLY },
    Subresource { name: "eviction", group: "policy", version: "v1", kind: "Eviction", verbs: CREATE_ONLY },
    Subresource { name: "log", group: "", version: "v1", kind: "Pod", verbs: &["get"] },
    Subresource { name: "exec", group: "", version: "v1", kind: "PodExecOptions", verbs: &["create", "get"] },
    Subresource {
        name: "attach",
        group: "",
        version: "v1",
        kind: "PodAttachOptions",
        verbs: &["create", "get"],
    },
    Subresource {
        name: "portforward",
        group: "",
        version: "v1",
        kind: "PodPortForwardOptions",
        verbs: &["create", "get"],
    },
    Subresource { name: "ephemeralcontainers", group: "", version: "v1", kind: "Pod", verbs: STATUS_VERBS },
    Subresource { name: "proxy", group: "", version: "v1", kind: "PodProxyOptions", verbs: PROXY_VERBS },
];
const PROXY_VERBS: &[&str] = &["create", "delete", "get", "patch", "update"];

/// Every resource capstan serves, in discovery order.
pub static RESOURCES: &[ResourceInfo] = &[
    // core/v1
    res!(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        core::Namespace,
        short = ["ns"],
        cats = [],
        Cluster,
        subs = [
            status("", "v1", "Namespace"),
            Subresource { name: "finalize", group: "", version: "v1", kind: "Namespace", verbs: &["update"] }
        ]
    ),
    ResourceInfo {
        group: "",
        version: "v1",
        kind: "Pod",
        list_kind: "PodList",
        plural: "pods",
        singular: "pod",
        short_names: &["po"],
        categories: &["all"],
        scope: Scope::Namespaced,
        verbs: ALL_VERBS,
        subresources: POD_SUBS,
        stored: true,
        round_trip: rt::<core::Pod>,
        custom: None,
    },
    res!(
        "",
        "v1",
        "Node",
        "nodes",
        "node",
        core::Node,
        short = ["no"],
        cats = [],
        Cluster,
        subs = [status("", "v1", "Node")]
    ),
    res!(
        "",
        "v1",
        "Service",
        "services",
        "service",
        core::Service,
        short = ["svc"],
        cats = ["all"],
        Namespaced,
        subs = [
            status("", "v1", "Service"),
            Subresource {
                name: "proxy",
                group: "",
                version: "v1",
                kind: "ServiceProxyOptions",
                verbs: PROXY_VERBS
            }
        ]
    ),
    res!(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        "endpoints",
        core::Endpoints,
        short = ["ep"],
        cats = [],
        Namespaced,
        subs = []
    ),
    res!(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        core::ConfigMap,
        short = ["cm"],
        cats = [],
        Namespaced,
        subs = []
    ),
    res!("", "v1", "Secret", "secrets", "secret", core::Secret, short = [], cats = [], Namespaced, subs = []),
    res!(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        core::ServiceAccount,
        short = ["sa"],
        cats = [],
        Namespaced,
        subs = [Subresource {
            name: "token",
            group: "authentication.k8s.io",
            version: "v1",
            kind: "TokenRequest",
            verbs: CREATE_ONLY
        }]
    ),
    res!("", "v1", "Event", "events", "event", core::Event, short = ["ev"], cats = [], Namespaced, subs = []),
    res!(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        core::PersistentVolume,
        short = ["pv"],
        cats = [],
        Cluster,
        subs = [status("", "v1", "PersistentVolume")]
    ),
    res!(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        core::PersistentVolumeClaim,
        short = ["pvc"],
        cats = [],
        Namespaced,
        subs = [status("", "v1", "PersistentVolumeClaim")]
    ),
    res!(
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        "resourcequota",
        core::ResourceQuota,
        short = ["quota"],
        cats = [],
        Namespaced,
        subs = [status("", "v1", "ResourceQuota")]
    ),
    res!(
        "",
        "v1",
        "LimitRange",
        "limitranges",
        "limitrange",
        core::LimitRange,
        short = ["limits"],
        cats = [],
        Namespaced,
        subs = []
    ),
    res!(
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        "replicationcontroller",
        core::ReplicationController,
        short = ["rc"],
        cats = ["all"],
        Namespaced,
        subs = [status("", "v1", "ReplicationController"), scale()]
    ),
    // apiregistration.k8s.io/v1 (listed first among the groups, as upstream's aggregator
    // orders groups by priority and its own group has the highest)
    ResourceInfo {
        round_trip: api_service_rt,
        ..res!(
            "apiregistration.k8s.io",
            "v1",
            "APIService",
            "apiservices",
            "apiservice",
            apireg::APIService,
            short = [],
            cats = ["api-extensions"],
            Cluster,
            subs = [status("apiregistration.k8s.io", "v1", "APIService")]
        )
    },
    // apps/v1
    res!(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        apps::Deployment,
        short = ["deploy"],
        cats = ["all"],
        Namespaced,
        subs = [status("apps", "v1", "Deployment"), scale()]
    ),
    res!(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        apps::ReplicaSet,
        short = ["rs"],
        cats = ["all"],
        Namespaced,
        subs = [status("apps", "v1", "ReplicaSet"), scale()]
    ),
    res!(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        apps::StatefulSet,
        short = ["sts"],
        cats = ["all"],
        Namespaced,
        subs = [status("apps", "v1", "StatefulSet"), scale()]
    ),
    res!(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        apps::DaemonSet,
        short = ["ds"],
        cats = ["all"],
        Namespaced,
        subs = [status("apps", "v1", "DaemonSet")]
    ),
    res!(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        apps::ControllerRevision,
        short = [],
        cats = [],
        Namespaced,
        subs = []
    ),
    // autoscaling/v2 (stored) and v1 (converted on the way in and out, `autoscaling.rs`)
    res!(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        autoscaling::HorizontalPodAutoscaler,
        short = ["hpa"],
        cats = ["all"],
        Namespaced,
        subs = [status("autoscaling", "v2", "HorizontalPodAutoscaler")]
    ),
    res!(
        "autoscaling",
        "v1",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler,
        short = ["hpa"],
        cats = ["all"],
        Namespaced,
        subs = [status("autoscaling", "v1", "HorizontalPodAutoscaler")]
    ),
    // batch/v1
    res!(
        "batch",
        "v1",
        "Job",
        "jobs",
        "job",
        batch::Job,
        short = [],
        cats = ["all"],
        Namespaced,
        subs = [status("batch", "v1", "Job")]
    ),
    res!(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        "cronjob",
        batch::CronJob,
        short = ["cj"],
        cats = ["all"],
        Namespaced,
        subs = [status("batch", "v1", "CronJob")]
    ),
    // coordination.k8s.io/v1
    res!(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        coordination::Lease,
        short = [],
        cats = [],
        Namespaced,
        subs = []
    ),
    // discovery.k8s.io/v1
    res!(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        discovery::EndpointSlice,
        short = [],
        cats = [],
        Namespaced,
        subs = []
    ),
    // rbac.authorization.k8s.io/v1
    res!(
        "certificates.k8s.io",
        "v1",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        "certificatesigningrequest",
        certificates::CertificateSigningRequest,
        short = ["csr"],
        cats = [],
        Cluster,
        subs = [
            status("certificates.k8s.io", "v1", "CertificateSigningRequest"),
            Subresource {
                name: "approval",
                group: "certificates.k8s.io",
                version: "v1",
                kind: "CertificateSigningRequest",
                verbs: STATUS_VERBS
            }
        ]
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        "role",
        rbac::Role,
        short = [],
        cats = [],
        Namespaced,
        subs = []
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        rbac::RoleBinding,
        short = [],
        cats = [],
        Namespaced,
        subs = []
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        rbac::ClusterRole,
        short = [],
        cats = [],
        Cluster,
        subs = []
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        rbac::ClusterRoleBinding,
        short = [],
        cats = [],
        Cluster,
        subs = []
    ),
    // apiextensions.k8s.io/v1
    res!(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        "customresourcedefinition",
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        short = ["crd", "crds"],
        cats = ["api-extensions"],
        Cluster,
        subs = [status("apiextensions.k8s.io", "v1", "CustomResourceDefinition")]
    ),
    // storage.k8s.io/v1
    res!(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        "storageclass",
        storage::StorageClass,
        short = ["sc"],
        cats = [],
        Cluster,
        subs = []
    ),
    // policy/v1
    res!(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        policy::PodDisruptionBudget,
        short = ["pdb"],
        cats = [],
        Namespaced,
        subs = [status("policy", "v1", "PodDisruptionBudget")]
    ),
    // flowcontrol.apiserver.k8s.io/v1 (API Priority and Fairness)
    res!(
        "flowcontrol.apiserver.k8s.io",
        "v1",
        "FlowSchema",
        "flowschemas",
        "flowschema",
        flowcontrol::FlowSchema,
        short = [],
        cats = [],
        Cluster,
        subs = [status("flowcontrol.apiserver.k8s.io", "v1", "FlowSchema")]
    ),
    res!(
        "flowcontrol.apiserver.k8s.io",
        "v1",
        "PriorityLevelConfiguration",
        "prioritylevelconfigurations",
        "prioritylevelconfiguration",
        flowcontrol::PriorityLevelConfiguration,
        short = [],
        cats = [],
        Cluster,
        subs = [status("flowcontrol.apiserver.k8s.io", "v1", "PriorityLevelConfiguration")]
    ),
    // scheduling.k8s.io/v1
    res!(
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
        "priorityclass",
        scheduling::PriorityClass,
        short = ["pc"],
        cats = [],
        Cluster,
        subs = []
    ),
    // networking.k8s.io/v1
    res!(
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        "ingress",
        networking::Ingress,
        short = ["ing"],
        cats = [],
        Namespaced,
        subs = [status("networking.k8s.io", "v1", "Ingress")]
    ),
    res!(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        "ingressclass",
        networking::IngressClass,
        short = [],
        cats = [],
        Cluster,
        subs = []
    ),
    res!(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        networking::NetworkPolicy,
        short = ["netpol"],
        cats = [],
        Namespaced,
        subs = []
    ),
    // admissionregistration.k8s.io/v1
    res!(
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        "mutatingwebhookconfiguration",
        admreg::MutatingWebhookConfiguration,
        short = [],
        cats = ["api-extensions"],
        Cluster,
        subs = []
    ),
    res!(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        "validatingwebhookconfiguration",
        admreg::ValidatingWebhookConfiguration,
        short = [],
        cats = ["api-extensions"],
        Cluster,
        subs = []
    ),
    res!(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
        "validatingadmissionpolicy",
        admreg::ValidatingAdmissionPolicy,
        short = [],
        cats = ["api-extensions"],
        Cluster,
        subs = [status("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy")]
    ),
    res!(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
        "validatingadmissionpolicybinding",
        admreg::ValidatingAdmissionPolicyBinding,
        short = [],
        cats = ["api-extensions"],
        Cluster,
        subs = []
    ),
    // authentication.k8s.io/v1 and authorization.k8s.io/v1: reviews answer a create and
    // are not stored.
    review!(
        "authentication.k8s.io",
        "TokenReview",
        "tokenreviews",
        "tokenreview",
        authn::TokenReview,
        Cluster
    ),
    review!(
        "authentication.k8s.io",
        "SelfSubjectReview",
        "selfsubjectreviews",
        "selfsubjectreview",
        authn::SelfSubjectReview,
        Cluster
    ),
    review!(
        "authorization.k8s.io",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        authz::SelfSubjectAccessReview,
        Cluster
    ),
    review!(
        "authorization.k8s.io",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        authz::SelfSubjectRulesReview,
        Cluster
    ),
    review!(
        "authorization.k8s.io",
        "SubjectAccessReview",
        "subjectaccessreviews",
        "subjectaccessreview",
        authz::SubjectAccessReview,
        Cluster
    ),
    review!(
        "authorization.k8s.io",
        "LocalSubjectAccessReview",
        "localsubjectaccessreviews",
        "localsubjectaccessreview",
        authz::LocalSubjectAccessReview,
        Namespaced
    ),
    // metrics.k8s.io/v1beta1: resource usage the node agents report, answered from the
    // gateway's memory (as metrics-server answers from its own), never stored.
    metrics!("NodeMetrics", "nodes", "nodemetrics", Cluster),
    metrics!("PodMetrics", "pods", "podmetrics", Namespaced),
];

/// Finds a resource by group, version and plural name (built-in or custom).
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
        .or_else(|| custom().find(|r| r.group == group && r.version == version && r.plural == plural))
}

/// Finds a resource by group and kind (any version; a custom kind's storage version first).
pub fn find_kind(group: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().find(|r| r.group == group && r.kind == kind).or_else(|| {
        let mut found: Vec<&'static ResourceInfo> =
            custom().filter(|r| r.group == group && r.kind == kind).collect();
        found.sort_by_key(|r| r.custom.is_none_or(|c| c.storage_version != r.version));
        found.first().copied()
    })
}

/// The served group/versions, in discovery order: `("", "v1")` first, custom ones last.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    // Custom group-versions: by group, each group's versions most preferred first (as
    // upstream orders a group's versions, whichever CRDs serve them).
    let mut groups: Vec<&'static str> = Vec::new();
    let mut custom_gvs: Vec<(&'static str, &'static str)> = Vec::new();
    for r in custom() {
        if !groups.contains(&r.group) {
            groups.push(r.group);
        }
        if !out.contains(&(r.group, r.version)) && !custom_gvs.contains(&(r.group, r.version)) {
            custom_gvs.push((r.group, r.version));
        }
    }
    custom_gvs.sort_by(|a, b| {
        let pos = |g: &str| groups.iter().position(|x| *x == g);
        (pos(a.0), crate::crd::version_priority(a.1)).cmp(&(pos(b.0), crate::crd::version_priority(b.1)))
    });
    out.extend(custom_gvs);
    out
}

/// Every served resource: the built-in ones, then the custom ones.
pub fn all() -> Vec<&'static ResourceInfo> {
    RESOURCES.iter().chain(custom()).collect()
}

// ---- the dynamic part: resources of established CustomResourceDefinitions ------------------

/// The resources of one CRD and what they were built from.
struct Installed {
    fingerprint: String,
    resources: Vec<&'static ResourceInfo>,
}

/// CRD name → its resources. Infos are leaked: each lives as long as the process, which
/// bounds the cost to one set per distinct CRD spec ever served.
static CUSTOM: LazyLock<RwLock<BTreeMap<String, Installed>>> = LazyLock::new(|| RwLock::new(BTreeMap::new()));
/// Bumped on every change of the custom resources (discovery and OpenAPI caches key on it).
static GENERATION: AtomicU64 = AtomicU64::new(0);

fn custom() -> impl Iterator<Item = &'static ResourceInfo> {
    let map = CUSTOM.read().unwrap_or_else(|e| e.into_inner());
    let list: Vec<&'static ResourceInfo> = map.values().flat_map(|i| i.resources.iter().copied()).collect();
    list.into_iter()
}

/// Installs (or replaces) the resources of the CRD `crd_name`; `build` runs only when
/// `fingerprint` differs from what is installed. Returns whether anything changed.
pub fn install_custom(crd_name: &str, fingerprint: &str, build: impl FnOnce() -> Vec<ResourceInfo>) -> bool {
    let mut map = CUSTOM.write().unwrap_or_else(|e| e.into_inner());
    if map.get(crd_name).is_some_and(|i| i.fingerprint == fingerprint) {
        return false;
    }
    let resources = build().into_iter().map(|r| &*Box::leak(Box::new(r))).collect();
    map.insert(crd_name.to_string(), Installed { fingerprint: fingerprint.to_string(), resources });
    GENERATION.fetch_add(1, Ordering::SeqCst);
    true
}

/// Stops serving the resources of the CRD `crd_name`. Returns whether it was served.
pub fn remove_custom(crd_name: &str) -> bool {
    let mut map = CUSTOM.write().unwrap_or_else(|e| e.into_inner());
    let removed = map.remove(crd_name).is_some();
    if removed {
        GENERATION.fetch_add(1, Ordering::SeqCst);
    }
    removed
}

/// The names of the CRDs whose resources are served.
pub fn custom_crds() -> Vec<String> {
    CUSTOM.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
}

/// A number that changes whenever the set of custom resources changes.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}

/// Splits an `apiVersion` into group and version.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(find("apps", "v1", "deployments").map(|r| r.kind), Some("Deployment"));
        assert!(find("", "v1", "deployments").is_none());
        assert_eq!(find_kind("", "Pod").map(|r| r.plural), Some("pods"));
        assert_eq!(group_versions()[0], ("", "v1"));
        assert_eq!(split_api_version("apps/v1"), ("apps", "v1"));
        assert_eq!(split_api_version("v1"), ("", "v1"));
    }

    #[test]
    fn plurals_are_unique_per_group_version() {
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                let same = a.group == b.group && a.version == b.version && a.plural == b.plural;
                assert!(!same, "{}", a.plural);
                // Two versions of one kind share its storage (autoscaling v1 and v2).
                if a.group == b.group && a.plural == b.plural {
                    assert_eq!(a.kind, b.kind);
                }
            }
        }
    }

    #[test]
    fn round_trip_rejects_wrong_types() {
        let pod = find("", "v1", "pods").unwrap();
        let bad = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": "x"}});
        assert!((pod.round_trip)(bad).is_err());
    }
}
