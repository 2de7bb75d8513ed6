//! Descriptor tables: for each covered message type, field number → JSON name and kind.
//!
//! Every field number below was checked against upstream `generated.proto`
//! (`k8s.io/api/{core,apps,authorization,authentication}/v1`,
//! `k8s.io/apimachinery/pkg/{apis/meta/v1,runtime,util/intstr,api/resource}`).
//! Fields of a covered message that are not listed here are skipped on decode.

/// How a field's value is represented on the wire and in JSON.
#[derive(Clone, Copy)]
pub(super) enum Ty {
    /// `string`, a JSON string.
    Str,
    /// `bytes`, a base64 JSON string. No covered field is a plain `bytes` yet (only map values).
    #[allow(dead_code)]
    Bytes,
    /// `int32` (varint), a JSON number.
    I32,
    /// `int64` (varint), a JSON number.
    I64,
    /// `bool` (varint), a JSON boolean.
    Bool,
    /// A nested message, a JSON object.
    Msg(&'static Msg),
    /// A nested message whose fields are inlined into the parent JSON object
    /// (Go's `json:",inline"` embedding, e.g. `LocalObjectReference` in key selectors).
    Inline(&'static Msg),
    /// `metav1.Time` {seconds=1, nanos=2}, an RFC 3339 JSON string (seconds precision).
    Time,
    /// `resource.Quantity` {string=1}, a JSON string.
    Quantity,
    /// `intstr.IntOrString` {type=1, intVal=2, strVal=3}, a JSON number or string.
    IntOrString,
    /// `map<string, string>`, a JSON object of strings.
    MapStr,
    /// `map<string, bytes>`, a JSON object of base64 strings.
    MapBytes,
    /// `map<string, Quantity>`, a JSON object of quantity strings.
    MapQuantity,
}

/// When a field is emitted into JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Card {
    /// A Go value field with `omitempty`: a zero scalar is omitted (Go's marshaller writes
    /// zero values on the wire for non-pointer fields). Messages are emitted when present.
    Opt,
    /// A Go pointer field (`*int32`, `*bool`, `*string`): emitted whenever present on the
    /// wire, even with a zero value (e.g. `replicas: 0`).
    Ptr,
    /// A repeated field, a JSON array (omitted when empty).
    Rep,
}

/// One field of a message.
pub(super) struct Field {
    pub num: u32,
    pub name: &'static str,
    pub ty: Ty,
    pub card: Card,
}

/// A message type.
pub(super) struct Msg {
    pub name: &'static str,
    pub fields: &'static [Field],
}

impl Msg {
    pub(super) fn field(&self, num: u32) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.num == num)
    }
}

const fn f(num: u32, name: &'static str, ty: Ty) -> Field {
    Field { num, name, ty, card: Card::Opt }
}
const fn p(num: u32, name: &'static str, ty: Ty) -> Field {
    Field { num, name, ty, card: Card::Ptr }
}
const fn r(num: u32, name: &'static str, ty: Ty) -> Field {
    Field { num, name, ty, card: Card::Rep }
}

use Ty::{Bool, Inline, IntOrString, MapBytes, MapQuantity, MapStr, Msg as M, Quantity, Str, Time, I32, I64};

/// The top-level kinds this module can decode, by (apiVersion, kind).
pub(super) fn lookup(api_version: &str, kind: &str) -> Option<&'static Msg> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => &NAMESPACE,
        ("v1", "ConfigMap") => &CONFIG_MAP,
        ("v1", "Secret") => &SECRET,
        ("apps/v1", "Deployment") => &DEPLOYMENT,
        ("v1", "ServiceAccount") => &SERVICE_ACCOUNT,
        ("certificates.k8s.io/v1", "CertificateSigningRequest") => &CSR,
        ("authentication.k8s.io/v1", "TokenRequest") => &TOKEN_REQUEST,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => &SELF_SUBJECT_REVIEW,
        ("rbac.authorization.k8s.io/v1", "Role") => &ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => &CLUSTER_ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => &ROLE_BINDING,
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => &ROLE_BINDING_CLUSTER,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => &SELF_SUBJECT_ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => &SELF_SUBJECT_RULES_REVIEW,
        _ => return None,
    })
}

// ---- runtime ----

/// `runtime.TypeMeta` (apiVersion=1, kind=2), inside the `runtime.Unknown` envelope.
pub(super) static TYPE_META: Msg =
    Msg { name: "TypeMeta", fields: &[f(1, "apiVersion", Str), f(2, "kind", Str)] };

// ---- meta/v1 ----

pub(super) static OBJECT_META: Msg = Msg {
    name: "ObjectMeta",
    fields: &[
        f(1, "name", Str),
        f(2, "generateName", Str),
        f(3, "namespace", Str),
        f(4, "selfLink", Str),
        f(5, "uid", Str),
        f(6, "resourceVersion", Str),
        f(7, "generation", I64),
        f(8, "creationTimestamp", Time),
        p(9, "deletionTimestamp", Time),
        p(10, "deletionGracePeriodSeconds", I64),
        f(11, "labels", MapStr),
        f(12, "annotations", MapStr),
        r(13, "ownerReferences", M(&OWNER_REFERENCE)),
        r(14, "finalizers", Str),
    ],
};

static OWNER_REFERENCE: Msg = Msg {
    name: "OwnerReference",
    fields: &[
        f(1, "kind", Str),
        f(3, "name", Str),
        f(4, "uid", Str),
        f(5, "apiVersion", Str),
        p(6, "controller", Bool),
        p(7, "blockOwnerDeletion", Bool),
    ],
};

static LABEL_SELECTOR: Msg = Msg {
    name: "LabelSelector",
    fields: &[f(1, "matchLabels", MapStr), r(2, "matchExpressions", M(&LABEL_SELECTOR_REQUIREMENT))],
};

static LABEL_SELECTOR_REQUIREMENT: Msg = Msg {
    name: "LabelSelectorRequirement",
    fields: &[f(1, "key", Str), f(2, "operator", Str), r(3, "values", Str)],
};

// ---- core/v1: Namespace, ConfigMap, Secret ----

static NAMESPACE: Msg = Msg {
    name: "Namespace",
    fields: &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&NAMESPACE_SPEC)),
        f(3, "status", M(&NAMESPACE_STATUS)),
    ],
};

static NAMESPACE_SPEC: Msg = Msg { name: "NamespaceSpec", fields: &[r(1, "finalizers", Str)] };

static NAMESPACE_STATUS: Msg = Msg {
    name: "NamespaceStatus",
    fields: &[f(1, "phase", Str), r(2, "conditions", M(&NAMESPACE_CONDITION))],
};

static NAMESPACE_CONDITION: Msg = Msg {
    name: "NamespaceCondition",
    fields: &[
        f(1, "type", Str),
        f(2, "status", Str),
        f(4, "lastTransitionTime", Time),
        f(5, "reason", Str),
        f(6, "message", Str),
    ],
};

static CONFIG_MAP: Msg = Msg {
    name: "ConfigMap",
    fields: &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "data", MapStr),
        f(3, "binaryData", MapBytes),
        p(4, "immutable", Bool),
    ],
};

static SECRET: Msg = Msg {
    name: "Secret",
    fields: &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "data", MapBytes),
        f(3, "type", Str),
        f(4, "stringData", MapStr),
        p(5, "immutable", Bool),
    ],
};

// ---- core/v1: pod template ----

static POD_TEMPLATE_SPEC: Msg =
    Msg { name: "PodTemplateSpec", fields: &[f(1, "metadata", M(&OBJECT_META)), f(2, "spec", M(&POD_SPEC))] };

static POD_SPEC: Msg = Msg {
    name: "PodSpec",
    fields: &[
        r(2, "containers", M(&CONTAINER)),
        f(3, "restartPolicy", Str),
        p(4, "terminationGracePeriodSeconds", I64),
        p(5, "activeDeadlineSeconds", I64),
        f(6, "dnsPolicy", Str),
        f(7, "nodeSelector", MapStr),
        f(8, "serviceAccountName", Str),
        f(9, "serviceAccount", Str),
        f(10, "nodeName", Str),
        f(11, "hostNetwork", Bool),
        f(12, "hostPID", Bool),
        f(13, "hostIPC", Bool),
        f(14, "securityContext", M(&POD_SECURITY_CONTEXT)),
        r(15, "imagePullSecrets", M(&LOCAL_OBJECT_REFERENCE)),
        f(16, "hostname", Str),
        f(17, "subdomain", Str),
        f(19, "schedulerName", Str),
        r(20, "initContainers", M(&CONTAINER)),
        p(21, "automountServiceAccountToken", Bool),
        f(24, "priorityClassName", Str),
        p(25, "priority", I32),
        p(27, "shareProcessNamespace", Bool),
        r(28, "readinessGates", M(&POD_READINESS_GATE)),
        p(29, "runtimeClassName", Str),
        p(30, "enableServiceLinks", Bool),
        p(31, "preemptionPolicy", Str),
        f(32, "overhead", MapQuantity),
        p(35, "setHostnameAsFQDN", Bool),
        f(36, "os", M(&POD_OS)),
        p(37, "hostUsers", Bool),
        r(38, "schedulingGates", M(&POD_SCHEDULING_GATE)),
        f(40, "resources", M(&RESOURCE_REQUIREMENTS)),
    ],
};

static POD_SECURITY_CONTEXT: Msg = Msg {
    name: "PodSecurityContext",
    fields: &[
        f(1, "seLinuxOptions", M(&SE_LINUX_OPTIONS)),
        p(2, "runAsUser", I64),
        p(3, "runAsNonRoot", Bool),
        r(4, "supplementalGroups", I64),
        p(5, "fsGroup", I64),
        p(6, "runAsGroup", I64),
        p(9, "fsGroupChangePolicy", Str),
        f(10, "seccompProfile", M(&SECCOMP_PROFILE)),
        p(12, "supplementalGroupsPolicy", Str),
        p(13, "seLinuxChangePolicy", Str),
    ],
};

static SECURITY_CONTEXT: Msg = Msg {
    name: "SecurityContext",
    fields: &[
        p(2, "privileged", Bool),
        f(3, "seLinuxOptions", M(&SE_LINUX_OPTIONS)),
        p(4, "runAsUser", I64),
        p(5, "runAsNonRoot", Bool),
        p(6, "readOnlyRootFilesystem", Bool),
        p(7, "allowPrivilegeEscalation", Bool),
        p(8, "runAsGroup", I64),
        p(9, "procMount", Str),
        f(11, "seccompProfile", M(&SECCOMP_PROFILE)),
    ],
};

static SE_LINUX_OPTIONS: Msg = Msg {
    name: "SELinuxOptions",
    fields: &[f(1, "user", Str), f(2, "role", Str), f(3, "type", Str), f(4, "level", Str)],
};

static SECCOMP_PROFILE: Msg =
    Msg { name: "SeccompProfile", fields: &[f(1, "type", Str), p(2, "localhostProfile", Str)] };

static LOCAL_OBJECT_REFERENCE: Msg = Msg { name: "LocalObjectReference", fields: &[f(1, "name", Str)] };

static POD_READINESS_GATE: Msg = Msg { name: "PodReadinessGate", fields: &[f(1, "conditionType", Str)] };

static POD_OS: Msg = Msg { name: "PodOS", fields: &[f(1, "name", Str)] };

static POD_SCHEDULING_GATE: Msg = Msg { name: "PodSchedulingGate", fields: &[f(1, "name", Str)] };

static CONTAINER: Msg = Msg {
    name: "Container",
    fields: &[
        f(1, "name", Str),
        f(2, "image", Str),
        r(3, "command", Str),
        r(4, "args", Str),
        f(5, "workingDir", Str),
        r(6, "ports", M(&CONTAINER_PORT)),
        r(7, "env", M(&ENV_VAR)),
        f(8, "resources", M(&RESOURCE_REQUIREMENTS)),
        f(13, "terminationMessagePath", Str),
        f(14, "imagePullPolicy", Str),
        f(15, "securityContext", M(&SECURITY_CONTEXT)),
        f(16, "stdin", Bool),
        f(17, "stdinOnce", Bool),
        f(18, "tty", Bool),
        r(19, "envFrom", M(&ENV_FROM_SOURCE)),
        f(20, "terminationMessagePolicy", Str),
        r(23, "resizePolicy", M(&CONTAINER_RESIZE_POLICY)),
        p(24, "restartPolicy", Str),
    ],
};

static CONTAINER_PORT: Msg = Msg {
    name: "ContainerPort",
    fields: &[
        f(1, "name", Str),
        f(2, "hostPort", I32),
        f(3, "containerPort", I32),
        f(4, "protocol", Str),
        f(5, "hostIP", Str),
    ],
};

static CONTAINER_RESIZE_POLICY: Msg =
    Msg { name: "ContainerResizePolicy", fields: &[f(1, "resourceName", Str), f(2, "restartPolicy", Str)] };

static ENV_VAR: Msg = Msg {
    name: "EnvVar",
    fields: &[f(1, "name", Str), f(2, "value", Str), f(3, "valueFrom", M(&ENV_VAR_SOURCE))],
};

static ENV_VAR_SOURCE: Msg = Msg {
    name: "EnvVarSource",
    fields: &[
        f(1, "fieldRef", M(&OBJECT_FIELD_SELECTOR)),
        f(2, "resourceFieldRef", M(&RESOURCE_FIELD_SELECTOR)),
        f(3, "configMapKeyRef", M(&KEY_SELECTOR)),
        f(4, "secretKeyRef", M(&KEY_SELECTOR)),
    ],
};

static OBJECT_FIELD_SELECTOR: Msg =
    Msg { name: "ObjectFieldSelector", fields: &[f(1, "apiVersion", Str), f(2, "fieldPath", Str)] };

static RESOURCE_FIELD_SELECTOR: Msg = Msg {
    name: "ResourceFieldSelector",
    fields: &[f(1, "containerName", Str), f(2, "resource", Str), f(3, "divisor", Quantity)],
};

/// `ConfigMapKeySelector` and `SecretKeySelector` share this layout.
static KEY_SELECTOR: Msg = Msg {
    name: "KeySelector",
    fields: &[
        f(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)),
        f(2, "key", Str),
        p(3, "optional", Bool),
    ],
};

static ENV_FROM_SOURCE: Msg = Msg {
    name: "EnvFromSource",
    fields: &[f(1, "prefix", Str), f(2, "configMapRef", M(&ENV_SOURCE)), f(3, "secretRef", M(&ENV_SOURCE))],
};

/// `ConfigMapEnvSource` and `SecretEnvSource` share this layout.
static ENV_SOURCE: Msg = Msg {
    name: "EnvSource",
    fields: &[f(1, "localObjectReference", Inline(&LOCAL_OBJECT_REFERENCE)), p(2, "optional", Bool)],
};

static RESOURCE_REQUIREMENTS: Msg = Msg {
    name: "ResourceRequirements",
    fields: &[f(1, "limits", MapQuantity), f(2, "requests", MapQuantity), r(3, "claims", M(&RESOURCE_CLAIM))],
};

static RESOURCE_CLAIM: Msg =
    Msg { name: "ResourceClaim", fields: &[f(1, "name", Str), f(2, "request", Str)] };

// ---- apps/v1: Deployment ----

static DEPLOYMENT: Msg = Msg {
    name: "Deployment",
    fields: &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&DEPLOYMENT_SPEC)),
        f(3, "status", M(&DEPLOYMENT_STATUS)),
    ],
};

static DEPLOYMENT_SPEC: Msg = Msg {
    name: "DeploymentSpec",
    fields: &[
        p(1, "replicas", I32),
        f(2, "selector", M(&LABEL_SELECTOR)),
        f(3, "template", M(&POD_TEMPLATE_SPEC)),
        f(4, "strategy", M(&DEPLOYMENT_STRATEGY)),
        f(5, "minReadySeconds", I32),
        p(6, "revisionHistoryLimit", I32),
        f(7, "paused", Bool),
        p(9, "progressDeadlineSeconds", I32),
        p(10, "podReplacementPolicy", Str),
    ],
};

static DEPLOYMENT_STRATEGY: Msg = Msg {
    name: "DeploymentStrategy",
    fields: &[f(1, "type", Str), f(2, "rollingUpdate", M(&ROLLING_UPDATE_DEPLOYMENT))],
};

static ROLLING_UPDATE_DEPLOYMENT: Msg = Msg {
    name: "RollingUpdateDeployment",
    fields: &[f(1, "maxUnavailable", IntOrString), f(2, "maxSurge", IntOrString)],
};

static DEPLOYMENT_STATUS: Msg = Msg {
    name: "DeploymentStatus",
    fields: &[
        f(1, "observedGeneration", I64),
        f(2, "replicas", I32),
        f(3, "updatedReplicas", I32),
        f(4, "availableReplicas", I32),
        f(5, "unavailableReplicas", I32),
        r(6, "conditions", M(&DEPLOYMENT_CONDITION)),
        f(7, "readyReplicas", I32),
        p(8, "collisionCount", I32),
        p(9, "terminatingReplicas", I32),
    ],
};

static DEPLOYMENT_CONDITION: Msg = Msg {
    name: "DeploymentCondition",
    fields: &[
        f(1, "type", Str),
        f(2, "status", Str),
        f(4, "reason", Str),
        f(5, "message", Str),
        f(6, "lastUpdateTime", Time),
        f(7, "lastTransitionTime", Time),
    ],
};

// ---- core/v1: ServiceAccount ----

static SERVICE_ACCOUNT: Msg = Msg {
    name: "ServiceAccount",
    fields: &[
        f(1, "metadata", M(&OBJECT_META)),
        r(2, "secrets", M(&OBJECT_REFERENCE)),
        r(3, "imagePullSecrets", M(&LOCAL_OBJECT_REFERENCE_SA)),
        p(4, "automountServiceAccountToken", Bool),
    ],
};

static OBJECT_REFERENCE: Msg = Msg {
    name: "ObjectReference",
    fields: &[
        f(1, "kind", Str),
        f(2, "namespace", Str),
        f(3, "name", Str),
        f(4, "uid", Str),
        f(5, "apiVersion", Str),
        f(6, "resourceVersion", Str),
        f(7, "fieldPath", Str),
    ],
};

static LOCAL_OBJECT_REFERENCE_SA: Msg = Msg { name: "LocalObjectReference", fields: &[f(1, "name", Str)] };

// ---- certificates.k8s.io/v1 ----

static CSR: Msg = Msg {
    name: "CertificateSigningRequest",
    fields: &[f(1, "metadata", M(&OBJECT_META)), f(2, "spec", M(&CSR_SPEC)), f(3, "status", M(&CSR_STATUS))],
};

static CSR_SPEC: Msg = Msg {
    name: "CertificateSigningRequestSpec",
    fields: &[
        f(1, "request", Ty::Bytes),
        f(2, "username", Str),
        f(3, "uid", Str),
        r(4, "groups", Str),
        r(5, "usages", Str),
        f(7, "signerName", Str),
        p(8, "expirationSeconds", I32),
    ],
};

static CSR_STATUS: Msg = Msg {
    name: "CertificateSigningRequestStatus",
    fields: &[r(1, "conditions", M(&CSR_CONDITION)), f(2, "certificate", Ty::Bytes)],
};

static CSR_CONDITION: Msg = Msg {
    name: "CertificateSigningRequestCondition",
    fields: &[
        f(1, "type", Str),
        f(6, "status", Str),
        f(2, "reason", Str),
        f(3, "message", Str),
        f(4, "lastUpdateTime", Time),
        f(5, "lastTransitionTime", Time),
    ],
};

// ---- rbac.authorization.k8s.io/v1 ----

static POLICY_RULE: Msg = Msg {
    name: "PolicyRule",
    fields: &[
        r(1, "verbs", Str),
        r(2, "apiGroups", Str),
        r(3, "resources", Str),
        r(4, "resourceNames", Str),
        r(5, "nonResourceURLs", Str),
    ],
};

static ROLE: Msg =
    Msg { name: "Role", fields: &[f(1, "metadata", M(&OBJECT_META)), r(2, "rules", M(&POLICY_RULE))] };

static CLUSTER_ROLE: Msg = Msg {
    name: "ClusterRole",
    fields: &[
        f(1, "metadata", M(&OBJECT_META)),
        r(2, "rules", M(&POLICY_RULE)),
        f(3, "aggregationRule", M(&AGGREGATION_RULE)),
    ],
};

static AGGREGATION_RULE: Msg =
    Msg { name: "AggregationRule", fields: &[r(1, "clusterRoleSelectors", M(&LABEL_SELECTOR))] };

static SUBJECT: Msg = Msg {
    name: "Subject",
    fields: &[f(1, "kind", Str), f(2, "apiGroup", Str), f(3, "name", Str), f(4, "namespace", Str)],
};

static ROLE_REF: Msg =
    Msg { name: "RoleRef", fields: &[f(1, "apiGroup", Str), f(2, "kind", Str), f(3, "name", Str)] };

static ROLE_BINDING: Msg = Msg {
    name: "RoleBinding",
    fields: &[
        f(1, "metadata", M(&OBJECT_META)),
        r(2, "subjects", M(&SUBJECT)),
        f(3, "roleRef", M(&ROLE_REF)),
    ],
};

static ROLE_BINDING_CLUSTER: Msg = Msg {
    name: "ClusterRoleBinding",
    fields: &[
        f(1, "metadata", M(&OBJECT_META)),
        r(2, "subjects", M(&SUBJECT)),
        f(3, "roleRef", M(&ROLE_REF)),
    ],
};

// ---- authentication.k8s.io/v1: SelfSubjectReview ----

static SELF_SUBJECT_REVIEW: Msg =
    Msg { name: "SelfSubjectReview", fields: &[f(1, "metadata", M(&OBJECT_META))] };

// ---- authentication.k8s.io/v1: TokenRequest ----

static TOKEN_REQUEST: Msg = Msg {
    name: "TokenRequest",
    fields: &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&TOKEN_REQUEST_SPEC)),
        f(3, "status", M(&TOKEN_REQUEST_STATUS)),
    ],
};

static TOKEN_REQUEST_SPEC: Msg = Msg {
    name: "TokenRequestSpec",
    fields: &[
        r(1, "audiences", Str),
        f(3, "boundObjectRef", M(&BOUND_OBJECT_REFERENCE)),
        p(4, "expirationSeconds", I64),
    ],
};

static BOUND_OBJECT_REFERENCE: Msg = Msg {
    name: "BoundObjectReference",
    fields: &[f(1, "kind", Str), f(2, "apiVersion", Str), f(3, "name", Str), f(4, "uid", Str)],
};

static TOKEN_REQUEST_STATUS: Msg =
    Msg { name: "TokenRequestStatus", fields: &[f(1, "token", Str), f(2, "expirationTimestamp", Time)] };

// ---- authorization.k8s.io/v1: SelfSubjectAccessReview, SelfSubjectRulesReview ----

static SELF_SUBJECT_ACCESS_REVIEW: Msg = Msg {
    name: "SelfSubjectAccessReview",
    fields: &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&SELF_SUBJECT_ACCESS_REVIEW_SPEC)),
        f(3, "status", M(&SUBJECT_ACCESS_REVIEW_STATUS)),
    ],
};

static SELF_SUBJECT_ACCESS_REVIEW_SPEC: Msg = Msg {
    name: "SelfSubjectAccessReviewSpec",
    fields: &[
        f(1, "resourceAttributes", M(&RESOURCE_ATTRIBUTES)),
        f(2, "nonResourceAttributes", M(&NON_RESOURCE_ATTRIBUTES)),
    ],
};

static RESOURCE_ATTRIBUTES: Msg = Msg {
    name: "ResourceAttributes",
    fields: &[
        f(1, "namespace", Str),
        f(2, "verb", Str),
        f(3, "group", Str),
        f(4, "version", Str),
        f(5, "resource", Str),
        f(6, "subresource", Str),
        f(7, "name", Str),
        f(8, "fieldSelector", M(&FIELD_SELECTOR_ATTRIBUTES)),
        f(9, "labelSelector", M(&LABEL_SELECTOR_ATTRIBUTES)),
    ],
};

static FIELD_SELECTOR_ATTRIBUTES: Msg = Msg {
    name: "FieldSelectorAttributes",
    fields: &[f(1, "rawSelector", Str), r(2, "requirements", M(&FIELD_SELECTOR_REQUIREMENT))],
};

static FIELD_SELECTOR_REQUIREMENT: Msg = Msg {
    name: "FieldSelectorRequirement",
    fields: &[f(1, "key", Str), f(2, "operator", Str), r(3, "values", Str)],
};

static LABEL_SELECTOR_ATTRIBUTES: Msg = Msg {
    name: "LabelSelectorAttributes",
    fields: &[f(1, "rawSelector", Str), r(2, "requirements", M(&LABEL_SELECTOR_REQUIREMENT))],
};

static NON_RESOURCE_ATTRIBUTES: Msg =
    Msg { name: "NonResourceAttributes", fields: &[f(1, "path", Str), f(2, "verb", Str)] };

static SUBJECT_ACCESS_REVIEW_STATUS: Msg = Msg {
    name: "SubjectAccessReviewStatus",
    fields: &[f(1, "allowed", Bool), f(2, "reason", Str), f(3, "evaluationError", Str), f(4, "denied", Bool)],
};

static SELF_SUBJECT_RULES_REVIEW: Msg = Msg {
    name: "SelfSubjectRulesReview",
    fields: &[
        f(1, "metadata", M(&OBJECT_META)),
        f(2, "spec", M(&SELF_SUBJECT_RULES_REVIEW_SPEC)),
        f(3, "status", M(&SUBJECT_RULES_REVIEW_STATUS)),
    ],
};

static SELF_SUBJECT_RULES_REVIEW_SPEC: Msg =
    Msg { name: "SelfSubjectRulesReviewSpec", fields: &[f(1, "namespace", Str)] };

static SUBJECT_RULES_REVIEW_STATUS: Msg = Msg {
    name: "SubjectRulesReviewStatus",
    fields: &[
        r(1, "resourceRules", M(&RESOURCE_RULE)),
        r(2, "nonResourceRules", M(&NON_RESOURCE_RULE)),
        f(3, "incomplete", Bool),
        f(4, "evaluationError", Str),
    ],
};

static RESOURCE_RULE: Msg = Msg {
    name: "ResourceRule",
    fields: &[r(1, "verbs", Str), r(2, "apiGroups", Str), r(3, "resources", Str), r(4, "resourceNames", Str)],
};

static NON_RESOURCE_RULE: Msg =
    Msg { name: "NonResourceRule", fields: &[r(1, "verbs", Str), r(2, "nonResourceURLs", Str)] };
