//! Upstream defaulting for the served kinds.
//!
//! Mirrors `pkg/apis/*/v1/defaults.go` (plus the few values upstream's registry strategies
//! fill in on create, such as a Namespace's `kubernetes` finalizer, a Pod's `Pending` phase
//! and a Job's generated selector). Works on the JSON form in place and is idempotent:
//! a field is only filled when it is missing, `null` or (for enum-like strings) empty.

use crate::ResourceInfo;
use serde_json::{json, Map, Value};

/// Fills in defaults on `obj` (a JSON object of kind `res`), as upstream's defaulting does
/// on create and update.
pub fn apply_defaults(res: &ResourceInfo, obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    if let Some(custom) = res.custom {
        crate::crd::schema::apply_defaults(&custom.schema, obj);
        return;
    }
    match (res.group, res.kind) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crate::crd::default_crd(obj),
        ("", "Pod") => pod(obj),
        ("", "Service") => service(obj),
        ("", "Namespace") => namespace(obj),
        ("", "Secret") => secret(obj),
        ("", "PersistentVolumeClaim") => pvc(obj),
        ("", "PersistentVolume") => pv(obj),
        ("", "Endpoints") => endpoints(obj),
        ("", "LimitRange") => limit_range(obj),
        ("apps", "Deployment") => deployment(obj),
        ("autoscaling", "HorizontalPodAutoscaler") => horizontal_pod_autoscaler(obj),
        ("apps", "ReplicaSet") => replica_set(obj),
        ("", "ReplicationController") => replication_controller(obj),
        ("apps", "StatefulSet") => stateful_set(obj),
        ("apps", "DaemonSet") => daemon_set(obj),
        ("batch", "Job") => job(obj),
        ("batch", "CronJob") => cron_job(obj),
        ("discovery.k8s.io", "EndpointSlice") => endpoint_slice(obj),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => role_binding(obj),
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration") => webhooks(obj, true),
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration") => webhooks(obj, false),
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy") => admission_policy(obj),
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding") => {
            if let Some(spec) = obj.as_object_mut().and_then(|o| existing(o, "spec")) {
                if let Some(m) = existing(spec, "matchResources") {
                    match_resources(m);
                }
                if let Some(p) = existing(spec, "paramRef") {
                    set_str(p, "parameterNotFoundAction", "Deny");
                }
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            if let Some(o) = obj.as_object_mut() {
                set_str(o, "reclaimPolicy", "Delete");
                set_str(o, "volumeBindingMode", "Immediate");
            }
        }
        _ => {}
    }
}

// ---- admissionregistration.k8s.io ----------------------------------------------------------

/// Upstream's webhook defaults: failurePolicy Fail, matchPolicy Equivalent, empty selectors,
/// timeoutSeconds 10, rules' scope `*`, a Service's port 443, reinvocationPolicy Never.
fn webhooks(obj: &mut Value, mutating: bool) {
    let Some(o) = obj.as_object_mut() else { return };
    each(o, "webhooks", |w| {
        set_str(w, "failurePolicy", "Fail");
        set_str(w, "matchPolicy", "Equivalent");
        set(w, "namespaceSelector", json!({}));
        set(w, "objectSelector", json!({}));
        set(w, "timeoutSeconds", json!(10));
        if mutating {
            set_str(w, "reinvocationPolicy", "Never");
        }
        each(w, "rules", |r| set_str(r, "scope", "*"));
        if let Some(svc) = existing(w, "clientConfig").and_then(|c| existing(c, "service")) {
            set(svc, "port", json!(443));
        }
    });
}

fn match_resources(m: &mut Map<String, Value>) {
    set_str(m, "matchPolicy", "Equivalent");
    set(m, "namespaceSelector", json!({}));
    set(m, "objectSelector", json!({}));
    each(m, "resourceRules", |r| set_str(r, "scope", "*"));
    each(m, "excludeResourceRules", |r| set_str(r, "scope", "*"));
}

/// A ValidatingAdmissionPolicy's defaults: failurePolicy Fail, and its match constraints'.
fn admission_policy(obj: &mut Value) {
    let Some(spec) = obj.as_object_mut().and_then(|o| existing(o, "spec")) else { return };
    set_str(spec, "failurePolicy", "Fail");
    if let Some(m) = existing(spec, "matchConstraints") {
        match_resources(m);
    }
}

// ---- small helpers -------------------------------------------------------------------------

/// Whether `m[key]` counts as unset (missing or null).
fn unset(m: &Map<String, Value>, key: &str) -> bool {
    matches!(m.get(key), None | Some(Value::Null))
}

/// Sets `m[key]` to `v` when unset.
/// Upstream's autoscaling/v2 defaults: one minimum replica, 80 % CPU when no metric is
/// given, and, when `behavior` is set, its missing rules filled with the default ones
/// (scale up: no window, 4 pods or 100 % per 15 s, whichever is more; scale down: 300 s
/// window, 100 % per 15 s).
fn horizontal_pod_autoscaler(obj: &mut Value) {
    let Some(spec) = obj.as_object_mut().and_then(|o| existing(o, "spec")) else { return };
    set(spec, "minReplicas", json!(1));
    if spec.get("metrics").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        spec.insert(
            "metrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]),
        );
    }
    let Some(behavior) = existing(spec, "behavior") else { return };
    for (dir, window, policies) in [
        (
            "scaleUp",
            0,
            json!([{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]),
        ),
        ("scaleDown", 300, json!([{"type": "Percent", "value": 100, "periodSeconds": 15}])),
    ] {
        set(behavior, dir, json!({}));
        if let Some(rules) = existing(behavior, dir) {
            set(rules, "stabilizationWindowSeconds", json!(window));
            set_str(rules, "selectPolicy", "Max");
            set(rules, "policies", policies);
        }
    }
}

fn set(m: &mut Map<String, Value>, key: &str, v: Value) {
    if unset(m, key) {
        m.insert(key.to_string(), v);
    }
}

/// Sets a string field when missing, null or empty (Go's zero value).
fn set_str(m: &mut Map<String, Value>, key: &str, v: &str) {
    let empty = match m.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    };
    if empty {
        m.insert(key.to_string(), Value::String(v.to_string()));
    }
}

/// Sets an integer field when missing, null or 0 (Go's zero value for non-pointer ints).
fn set_int_nonzero(m: &mut Map<String, Value>, key: &str, v: i64) {
    let zero = match m.get(key) {
        None | Some(Value::Null) => true,
        Some(n) => n.as_i64() == Some(0),
    };
    if zero {
        m.insert(key.to_string(), json!(v));
    }
}

/// The object at `m[key]`, created empty when unset. `None` when it holds a non-object.
fn child<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    if unset(m, key) {
        m.insert(key.to_string(), Value::Object(Map::new()));
    }
    m.get_mut(key).and_then(Value::as_object_mut)
}

/// The object at `m[key]` if present (never created).
fn existing<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    m.get_mut(key).and_then(Value::as_object_mut)
}

/// Calls `f` on every object element of the array `m[key]`.
fn each(m: &mut Map<String, Value>, key: &str, mut f: impl FnMut(&mut Map<String, Value>)) {
    if let Some(items) = m.get_mut(key).and_then(Value::as_array_mut) {
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            f(item);
        }
    }
}

fn str_of<'a>(m: &'a Map<String, Value>, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Where a pod spec lives, which decides the Pod-only defaults.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SpecKind {
    /// A Pod's own spec: Pod-only defaults (`enableServiceLinks`, requests from limits...).
    Pod,
    /// A template in a workload that runs forever: `restartPolicy` defaults to Always.
    Template,
    /// A Job (or CronJob) template: `restartPolicy` is left for validation to demand.
    JobTemplate,
}

// ---- pods ----------------------------------------------------------------------------------

fn pod(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    if let Some(spec) = child(o, "spec") {
        pod_spec(spec, SpecKind::Pod);
    }
    // The Pod strategy starts every new Pod Pending; the QoS class is computed from the spec.
    let qos = o.get("spec").map(qos_class);
    if let Some(status) = child(o, "status") {
        set_str(status, "phase", "Pending");
        if let Some(q) = qos {
            set_str(status, "qosClass", q);
        }
    }
}

fn pod_spec(spec: &mut Map<String, Value>, kind: SpecKind) {
    set_str(spec, "dnsPolicy", "ClusterFirst");
    if kind != SpecKind::JobTemplate {
        set_str(spec, "restartPolicy", "Always");
    }
    set(spec, "securityContext", json!({}));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set_str(spec, "schedulerName", "default-scheduler");
    // Conversion keeps the deprecated `serviceAccount` and `serviceAccountName` in step.
    let deprecated = str_of(spec, "serviceAccount").to_string();
    if !deprecated.is_empty() {
        set_str(spec, "serviceAccountName", &deprecated);
    }
    if kind == SpecKind::Pod {
        // The ServiceAccount admission plugin.
        set_str(spec, "serviceAccountName", "default");
        set(spec, "enableServiceLinks", Value::Bool(true));
    }
    let sa = str_of(spec, "serviceAccountName").to_string();
    if !sa.is_empty() {
        spec.insert("serviceAccount".into(), Value::String(sa));
    }
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool).unwrap_or(false);
    for key in ["initContainers", "containers", "ephemeralContainers"] {
        each(spec, key, |c| {
            container(c);
            if kind == SpecKind::Pod && key != "ephemeralContainers" {
                requests_from_limits(c);
                if host_network {
                    each(c, "ports", |p| {
                        let cp = p.get("containerPort").cloned().unwrap_or(Value::Null);
                        if !cp.is_null() {
                            set_int_nonzero(p, "hostPort", cp.as_i64().unwrap_or(0));
                        }
                    });
                }
            }
        });
    }
    each(spec, "volumes", volume);
}

fn container(c: &mut Map<String, Value>) {
    set_str(c, "terminationMessagePath", "/dev/termination-log");
    set_str(c, "terminationMessagePolicy", "File");
    let policy = if image_tag_is_latest(str_of(c, "image")) { "Always" } else { "IfNotPresent" };
    set_str(c, "imagePullPolicy", policy);
    set(c, "resources", json!({}));
    each(c, "ports", |p| set_str(p, "protocol", "TCP"));
    each(c, "env", |e| {
        if let Some(fr) = existing(e, "valueFrom").and_then(|vf| existing(vf, "fieldRef")) {
            set_str(fr, "apiVersion", "v1");
        }
    });
    for probe_key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = existing(c, probe_key) {
            probe(p);
        }
    }
    if let Some(lc) = existing(c, "lifecycle") {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = existing(lc, hook).and_then(|h| existing(h, "httpGet")) {
                http_get(h);
            }
        }
    }
}

fn probe(p: &mut Map<String, Value>) {
    set_int_nonzero(p, "timeoutSeconds", 1);
    set_int_nonzero(p, "periodSeconds", 10);
    set_int_nonzero(p, "successThreshold", 1);
    set_int_nonzero(p, "failureThreshold", 3);
    if let Some(h) = existing(p, "httpGet") {
        http_get(h);
    }
    // `GRPCAction.service` is `+default=""` upstream (kubectl describe dereferences it).
    if let Some(g) = existing(p, "grpc") {
        set_str(g, "service", "");
    }
}

fn http_get(h: &mut Map<String, Value>) {
    set_str(h, "path", "/");
    set_str(h, "scheme", "HTTP");
}

/// Whether an image reference has tag `latest`, or neither tag nor digest (upstream's
/// `parsers.ParseImageName`): those pull Always, everything else IfNotPresent.
fn image_tag_is_latest(image: &str) -> bool {
    let (name, has_digest) = match image.split_once('@') {
        Some((n, _)) => (n, true),
        None => (image, false),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => !has_digest,
    }
}

/// SetDefaults_Pod: a container with limits but no requests gets requests = limits.
fn requests_from_limits(c: &mut Map<String, Value>) {
    let Some(res) = existing(c, "resources") else { return };
    let limits = match res.get("limits").and_then(Value::as_object) {
        Some(l) if !l.is_empty() => l.clone(),
        _ => return,
    };
    let Some(requests) = child(res, "requests") else { return };
    for (k, v) in limits {
        requests.entry(k).or_insert(v);
    }
}

fn volume(v: &mut Map<String, Value>) {
    let has_source = v.iter().any(|(k, val)| k != "name" && !val.is_null());
    if !has_source {
        v.insert("emptyDir".into(), json!({}));
    }
    for key in ["configMap", "secret"] {
        if let Some(src) = existing(v, key) {
            set(src, "defaultMode", json!(420));
        }
    }
    if let Some(src) = existing(v, "downwardAPI") {
        set(src, "defaultMode", json!(420));
        downward_items(src);
    }
    if let Some(src) = existing(v, "projected") {
        set(src, "defaultMode", json!(420));
        each(src, "sources", |s| {
            if let Some(d) = existing(s, "downwardAPI") {
                downward_items(d);
            }
            if let Some(t) = existing(s, "serviceAccountToken") {
                set(t, "expirationSeconds", json!(3600));
            }
        });
    }
    if let Some(src) = existing(v, "hostPath") {
        set(src, "type", json!(""));
    }
    if let Some(spec) = existing(v, "ephemeral")
        .and_then(|e| existing(e, "volumeClaimTemplate"))
        .and_then(|t| existing(t, "spec"))
    {
        set_str(spec, "volumeMode", "Filesystem");
    }
}

fn downward_items(src: &mut Map<String, Value>) {
    each(src, "items", |i| {
        if let Some(fr) = existing(i, "fieldRef") {
            set_str(fr, "apiVersion", "v1");
        }
    });
}

/// Upstream's QoS class: BestEffort with no requests or limits anywhere, Guaranteed when
/// every container limits cpu and memory with requests equal to limits, else Burstable.
fn qos_class(spec: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for key in ["initContainers", "containers"] {
        for c in spec.get(key).and_then(Value::as_array).into_iter().flatten() {
            let res = c.get("resources");
            let requests = res.and_then(|r| r.get("requests")).and_then(Value::as_object);
            let limits = res.and_then(|r| r.get("limits")).and_then(Value::as_object);
            let relevant = |m: Option<&Map<String, Value>>| {
                m.map(|m| m.keys().any(|k| k == "cpu" || k == "memory")).unwrap_or(false)
            };
            if relevant(requests) || relevant(limits) {
                any = true;
            }
            for r in ["cpu", "memory"] {
                let l = limits.and_then(|l| l.get(r));
                let q = requests.and_then(|q| q.get(r)).or(l);
                if l.is_none() || q != l {
                    guaranteed = false;
                }
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Applies pod-spec defaults to `spec.template.spec` of `m` (a workload spec).
fn template(spec: &mut Map<String, Value>, kind: SpecKind) {
    if let Some(ps) = child(spec, "template").and_then(|t| child(t, "spec")) {
        pod_spec(ps, kind);
    }
}

// ---- services and networking ---------------------------------------------------------------

fn service(obj: &mut Value) {
    let Some(spec) = obj.as_object_mut().and_then(|o| child(o, "spec")) else { return };
    set_str(spec, "type", "ClusterIP");
    set_str(spec, "sessionAffinity", "None");
    if str_of(spec, "sessionAffinity") == "ClientIP" {
        if let Some(cip) = child(spec, "sessionAffinityConfig").and_then(|c| child(c, "clientIP")) {
            set(cip, "timeoutSeconds", json!(10800));
        }
    }
    each(spec, "ports", |p| {
        set_str(p, "protocol", "TCP");
        let target_unset = match p.get("targetPort") {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(n) => n.as_i64() == Some(0),
        };
        if target_unset {
            if let Some(port) = p.get("port").cloned() {
                p.insert("targetPort".into(), port);
            }
        }
    });
    let ty = str_of(spec, "type").to_string();
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_str(spec, "externalTrafficPolicy", "Cluster");
    }
    if ty != "ExternalName" {
        set_str(spec, "internalTrafficPolicy", "Cluster");
        let headless = str_of(spec, "clusterIP") == "None";
        let no_selector = spec.get("selector").and_then(Value::as_object).map(Map::is_empty).unwrap_or(true);
        let policy = if headless && no_selector { "RequireDualStack" } else { "SingleStack" };
        set_str(spec, "ipFamilyPolicy", policy);
    }
    if ty == "LoadBalancer" {
        set(spec, "allocateLoadBalancerNodePorts", Value::Bool(true));
    }
}

fn endpoints(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    each(o, "subsets", |s| each(s, "ports", |p| set_str(p, "protocol", "TCP")));
}

fn endpoint_slice(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    each(o, "ports", |p| {
        set(p, "name", json!(""));
        set_str(p, "protocol", "TCP");
    });
}

// ---- namespaces, storage, policy -----------------------------------------------------------

fn namespace(obj: &mut Value) {
    let name = crate::meta::name(obj).map(str::to_string);
    let Some(o) = obj.as_object_mut() else { return };
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        if let Some(labels) = child(o, "metadata").and_then(|m| child(m, "labels")) {
            labels.insert("kubernetes.io/metadata.name".into(), Value::String(name));
        }
    }
    if let Some(spec) = child(o, "spec") {
        set(spec, "finalizers", json!(["kubernetes"]));
    }
    if let Some(status) = child(o, "status") {
        set_str(status, "phase", "Active");
    }
}

/// Secret: type Opaque, and `stringData` merged into `data` (upstream's conversion does
/// this, so a stored Secret never has `stringData`).
fn secret(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    set_str(o, "type", "Opaque");
    let Some(Value::Object(string_data)) = o.remove("stringData") else { return };
    if let Some(data) = child(o, "data") {
        for (k, v) in string_data {
            if let Some(text) = v.as_str() {
                data.insert(k, Value::String(base64(text.as_bytes())));
            }
        }
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn pvc_map(o: &mut Map<String, Value>) {
    if let Some(spec) = child(o, "spec") {
        set_str(spec, "volumeMode", "Filesystem");
    }
    if let Some(status) = child(o, "status") {
        set_str(status, "phase", "Pending");
    }
}

fn pvc(obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        pvc_map(o);
    }
}

fn pv(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    if let Some(spec) = child(o, "spec") {
        set_str(spec, "persistentVolumeReclaimPolicy", "Retain");
        set_str(spec, "volumeMode", "Filesystem");
    }
    if let Some(status) = child(o, "status") {
        set_str(status, "phase", "Pending");
    }
}

fn limit_range(obj: &mut Value) {
    let Some(spec) = obj.as_object_mut().and_then(|o| existing(o, "spec")) else { return };
    each(spec, "limits", |item| {
        if str_of(item, "type") != "Container" {
            return;
        }
        let get = |item: &Map<String, Value>, k: &str| {
            item.get(k).and_then(Value::as_object).cloned().unwrap_or_default()
        };
        let mut default = get(item, "default");
        let mut default_request = get(item, "defaultRequest");
        for (k, v) in get(item, "max") {
            default.entry(k).or_insert(v);
        }
        for (k, v) in &default {
            default_request.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for (k, v) in get(item, "min") {
            default_request.entry(k).or_insert(v);
        }
        if !default.is_empty() {
            item.insert("default".into(), Value::Object(default));
        }
        if !default_request.is_empty() {
            item.insert("defaultRequest".into(), Value::Object(default_request));
        }
    });
}

fn role_binding(obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    if let Some(rr) = existing(o, "roleRef") {
        set_str(rr, "apiGroup", "rbac.authorization.k8s.io");
    }
    each(o, "subjects", |s| {
        let kind = str_of(s, "kind");
        if kind == "User" || kind == "Group" {
            set_str(s, "apiGroup", "rbac.authorization.k8s.io");
        }
    });
}

// ---- workloads -----------------------------------------------------------------------------

fn deployment(obj: &mut Value) {
    let Some(spec) = obj.as_object_mut().and_then(|o| child(o, "spec")) else { return };
    set(spec, "replicas", json!(1));
    if let Some(strategy) = child(spec, "strategy") {
        set_str(strategy, "type", "RollingUpdate");
        if str_of(strategy, "type") == "RollingUpdate" {
            if let Some(ru) = child(strategy, "rollingUpdate") {
                set(ru, "maxUnavailable", json!("25%"));
                set(ru, "maxSurge", json!("25%"));
            }
        }
    }
    set(spec, "revisionHistoryLimit", json!(10));
    set(spec, "progressDeadlineSeconds", json!(600));
    template(spec, SpecKind::Template);
}

fn replica_set(obj: &mut Value) {
    let Some(spec) = obj.as_object_mut().and_then(|o| child(o, "spec")) else { return };
    set(spec, "replicas", json!(1));
    template(spec, SpecKind::Template);
}

/// Upstream's `SetDefaults_ReplicationController`: selector and labels from the template's
/// labels when unset, one replica.
fn replication_controller(obj: &mut Value) {
    let labels = obj
        .pointer("/spec/template/metadata/labels")
        .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
        .cloned();
    if let Some(labels) = labels {
        if obj.pointer("/spec/selector").and_then(Value::as_object).is_none_or(Map::is_empty) {
            obj["spec"]["selector"] = labels.clone();
        }
        if obj.pointer("/metadata/labels").and_then(Value::as_object).is_none_or(Map::is_empty) {
            obj["metadata"]["labels"] = labels;
        }
    }
    replica_set(obj);
}

fn stateful_set(obj: &mut Value) {
    let Some(spec) = obj.as_object_mut().and_then(|o| child(o, "spec")) else { return };
    set(spec, "replicas", json!(1));
    set_str(spec, "podManagementPolicy", "OrderedReady");
    if let Some(us) = child(spec, "updateStrategy") {
        if str_of(us, "type").is_empty() {
            us.insert("type".into(), json!("RollingUpdate"));
            set(us, "rollingUpdate", json!({}));
        }
        if str_of(us, "type") == "RollingUpdate" {
            if let Some(ru) = existing(us, "rollingUpdate") {
                set(ru, "partition", json!(0));
            }
        }
    }
    set(spec, "revisionHistoryLimit", json!(10));
    if let Some(p) = child(spec, "persistentVolumeClaimRetentionPolicy") {
        set_str(p, "whenDeleted", "Retain");
        set_str(p, "whenScaled", "Retain");
    }
    each(spec, "volumeClaimTemplates", pvc_map);
    template(spec, SpecKind::Template);
}

fn daemon_set(obj: &mut Value) {
    let Some(spec) = obj.as_object_mut().and_then(|o| child(o, "spec")) else { return };
    if let Some(us) = child(spec, "updateStrategy") {
        set_str(us, "type", "RollingUpdate");
        if str_of(us, "type") == "RollingUpdate" {
            if let Some(ru) = child(us, "rollingUpdate") {
                set(ru, "maxUnavailable", json!(1));
                set(ru, "maxSurge", json!(0));
            }
        }
    }
    set(spec, "revisionHistoryLimit", json!(10));
    template(spec, SpecKind::Template);
}

fn job(obj: &mut Value) {
    let uid = crate::meta::meta_str(obj, "uid").unwrap_or("").to_string();
    let name = crate::meta::name(obj).unwrap_or("").to_string();
    let Some(o) = obj.as_object_mut() else { return };
    let Some(spec) = child(o, "spec") else { return };
    if unset(spec, "completions") && unset(spec, "parallelism") {
        spec.insert("completions".into(), json!(1));
    }
    set(spec, "parallelism", json!(1));
    let per_index = !unset(spec, "backoffLimitPerIndex");
    set(spec, "backoffLimit", json!(if per_index { i64::from(i32::MAX) } else { 6 }));
    set_str(spec, "completionMode", "NonIndexed");
    set(spec, "suspend", Value::Bool(false));
    let has_failure_policy = !unset(spec, "podFailurePolicy");
    if let Some(pfp) = existing(spec, "podFailurePolicy") {
        each(pfp, "rules", |r| each(r, "onPodConditions", |c| set_str(c, "status", "True")));
    }
    let replacement = if has_failure_policy { "Failed" } else { "TerminatingOrFailed" };
    set_str(spec, "podReplacementPolicy", replacement);

    // The Job strategy generates the selector and the matching template labels from the
    // uid unless the user manages the selector.
    let manual = spec.get("manualSelector").and_then(Value::as_bool).unwrap_or(false);
    if !manual && unset(spec, "selector") && !uid.is_empty() {
        spec.insert("selector".into(), json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}));
        if let Some(labels) =
            child(spec, "template").and_then(|t| child(t, "metadata")).and_then(|m| child(m, "labels"))
        {
            for (k, v) in [
                ("batch.kubernetes.io/controller-uid", &uid),
                ("batch.kubernetes.io/job-name", &name),
                ("controller-uid", &uid),
                ("job-name", &name),
            ] {
                labels.entry(k).or_insert_with(|| Value::String(v.clone()));
            }
        }
    }
    template(spec, SpecKind::JobTemplate);

    // A Job without labels takes its template's labels.
    let template_labels = spec
        .get("template")
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .filter(|l| !l.is_empty())
        .cloned();
    if let Some(tl) = template_labels {
        if let Some(meta) = child(o, "metadata") {
            let empty = meta.get("labels").and_then(Value::as_object).map(Map::is_empty).unwrap_or(true);
            if empty {
                meta.insert("labels".into(), Value::Object(tl));
            }
        }
    }
}

fn cron_job(obj: &mut Value) {
    let Some(spec) = obj.as_object_mut().and_then(|o| child(o, "spec")) else { return };
    set_str(spec, "concurrencyPolicy", "Allow");
    set(spec, "suspend", Value::Bool(false));
    set(spec, "successfulJobsHistoryLimit", json!(3));
    set(spec, "failedJobsHistoryLimit", json!(1));
    if let Some(js) = child(spec, "jobTemplate").and_then(|t| child(t, "spec")) {
        template(js, SpecKind::JobTemplate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

    fn defaulted(group: &str, plural: &str, mut v: Value) -> Value {
        let res = find(group, "v1", plural).unwrap();
        apply_defaults(res, &mut v);
        let once = v.clone();
        apply_defaults(res, &mut v);
        assert_eq!(once, v, "defaulting must be idempotent");
        v
    }

    #[test]
    fn pod_defaults() {
        let p = defaulted(
            "",
            "pods",
            json!({"metadata": {"name": "x"}, "spec": {
                "containers": [
                    {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}],
                     "livenessProbe": {"httpGet": {"port": 80}},
                     "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                    {"name": "b", "image": "nginx:1.25", "readinessProbe": {"grpc": {"port": 9000}}},
                    {"name": "c", "image": "reg:5000/x@sha256:abc"},
                    {"name": "d", "image": "reg:5000/x:latest"}
                ],
                "volumes": [{"name": "v"}, {"name": "c", "configMap": {"name": "cm"}}],
                "serviceAccount": "builder"
            }}),
        );
        let s = &p["spec"];
        assert_eq!(s["restartPolicy"], "Always");
        assert_eq!(s["dnsPolicy"], "ClusterFirst");
        assert_eq!(s["terminationGracePeriodSeconds"], 30);
        assert_eq!(s["schedulerName"], "default-scheduler");
        assert_eq!(s["securityContext"], json!({}));
        assert_eq!(s["enableServiceLinks"], true);
        assert_eq!(s["serviceAccountName"], "builder");
        let c = &s["containers"];
        assert_eq!(c[0]["imagePullPolicy"], "Always");
        assert_eq!(c[1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c[2]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c[3]["imagePullPolicy"], "Always");
        assert_eq!(c[0]["ports"][0]["protocol"], "TCP");
        assert_eq!(c[0]["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c[0]["terminationMessagePolicy"], "File");
        assert_eq!(c[0]["resources"]["requests"]["cpu"], "1");
        assert_eq!(c[1]["resources"], json!({}));
        let probe = &c[0]["livenessProbe"];
        assert_eq!(probe["timeoutSeconds"], 1);
        assert_eq!(probe["periodSeconds"], 10);
        assert_eq!(probe["successThreshold"], 1);
        assert_eq!(probe["failureThreshold"], 3);
        assert_eq!(probe["httpGet"]["scheme"], "HTTP");
        assert_eq!(probe["httpGet"]["path"], "/");
        assert_eq!(c[1]["readinessProbe"]["grpc"], json!({"port": 9000, "service": ""}));
        assert_eq!(s["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(s["volumes"][1]["configMap"]["defaultMode"], 420);
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(p["status"]["qosClass"], "Burstable");
    }

    #[test]
    fn deployment_and_job_defaults() {
        let d = defaulted(
            "apps",
            "deployments",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}}),
        );
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        let t = &d["spec"]["template"]["spec"];
        assert_eq!(t["restartPolicy"], "Always");
        assert!(t.get("enableServiceLinks").is_none());

        let j = defaulted(
            "batch",
            "jobs",
            json!({"metadata": {"name": "pi", "uid": "u1"},
                   "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}}),
        );
        assert_eq!(j["spec"]["completions"], 1);
        assert_eq!(j["spec"]["parallelism"], 1);
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert_eq!(j["spec"]["completionMode"], "NonIndexed");
        assert_eq!(j["spec"]["suspend"], false);
        assert_eq!(j["spec"]["podReplacementPolicy"], "TerminatingOrFailed");
        assert!(j["spec"]["template"]["spec"].get("restartPolicy").is_none());
        assert_eq!(j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"], "u1");
        assert_eq!(j["metadata"]["labels"]["job-name"], "pi");
    }

    #[test]
    fn service_and_misc_defaults() {
        let s =
            defaulted("", "services", json!({"spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}}));
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["ipFamilyPolicy"], "SingleStack");
        assert_eq!(s["spec"]["internalTrafficPolicy"], "Cluster");

        let ns = defaulted("", "namespaces", json!({"metadata": {"name": "dev"}}));
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Active");
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "dev");

        let sts = defaulted("apps", "statefulsets", json!({"spec": {}}));
        assert_eq!(
            sts["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
        let ds = defaulted("apps", "daemonsets", json!({"spec": {}}));
        assert_eq!(
            ds["spec"]["updateStrategy"]["rollingUpdate"],
            json!({"maxUnavailable": 1, "maxSurge": 0})
        );
        let cj = defaulted("batch", "cronjobs", json!({"spec": {"schedule": "* * * * *"}}));
        assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(cj["spec"]["successfulJobsHistoryLimit"], 3);
        let sec = defaulted("", "secrets", json!({"stringData": {"a": "hello", "b": "hi"}}));
        assert_eq!(sec["type"], "Opaque");
        assert_eq!(sec["data"], json!({"a": "aGVsbG8=", "b": "aGk="}));
        assert!(sec.get("stringData").is_none());
    }
}
