//! Per-kind create validation.

use super::errs::{ar, get, go_int_or_string, go_map, go_selector, go_strings, int, ob, st, Errs};
use super::meta::{self, NameRule};
use super::names;
use super::pod::{self, one_of, Ctx};
use serde_json::Value;
use std::collections::HashSet;

/// The name rule upstream applies to a kind.
pub(crate) fn name_rule(group: &str, kind: &str) -> NameRule {
    match (group, kind) {
        ("", "Namespace") => NameRule::Label,
        ("", "Service") => NameRule::Dns1035,
        ("rbac.authorization.k8s.io", _) | ("apiregistration.k8s.io", _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

/// Kind-specific checks of `obj` (metadata is checked by the caller).
pub(crate) fn validate(e: &mut Errs, group: &str, kind: &str, obj: &Value) {
    let spec = obj.get("spec");
    match (group, kind) {
        ("", "Pod") => pod::spec(e, spec, "spec", Ctx::Pod),
        ("", "Service") => service(e, spec),
        ("", "ConfigMap") => config_map(e, obj),
        ("", "Secret") => secret(e, obj),
        ("", "PersistentVolumeClaim") => pvc_spec(e, spec, "spec"),
        ("", "PersistentVolume") => pv(e, spec),
        ("", "Namespace") => {
            for f in ar(spec, "finalizers") {
                let f = f.as_str().unwrap_or("");
                e.invalid_msgs("spec.finalizers", f, names::qualified_name(f));
            }
        }
        ("", "Event") => event(e, obj),
        ("", "Endpoints") => {
            for (i, ss) in ar(Some(obj), "subsets").iter().enumerate() {
                for (j, p) in ar(Some(ss), "ports").iter().enumerate() {
                    let port = int(Some(p), "port").unwrap_or(0);
                    if let Some(m) = names::port_num(port) {
                        e.invalid(&format!("subsets[{i}].ports[{j}].port"), &port.to_string(), m);
                    }
                    one_of(
                        e,
                        &format!("subsets[{i}].ports[{j}].protocol"),
                        st(Some(p), "protocol"),
                        &["SCTP", "TCP", "UDP"],
                        false,
                    );
                }
            }
        }
        ("policy", "PodDisruptionBudget") => pod_disruption_budget(e, spec),
        ("autoscaling", "HorizontalPodAutoscaler") => horizontal_pod_autoscaler(e, spec),
        ("apps", "Deployment") => deployment(e, spec),
        ("apps", "ReplicaSet") => replica_set(e, spec),
        ("", "ReplicationController") => replication_controller(e, spec),
        ("apps", "StatefulSet") => stateful_set(e, spec),
        ("apps", "DaemonSet") => daemon_set(e, spec),
        ("apps", "ControllerRevision") => e.nonnegative(Some(obj), "revision", "revision"),
        ("batch", "Job") => job_spec(e, spec, "spec", true),
        ("batch", "CronJob") => cron_job(e, obj),
        ("coordination.k8s.io", "Lease") => {
            if let Some(d) = int(spec, "leaseDurationSeconds").filter(|d| *d <= 0) {
                e.invalid("spec.leaseDurationSeconds", &d.to_string(), "must be greater than 0");
            }
            e.nonnegative(spec, "leaseTransitions", "spec.leaseTransitions");
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            one_of(e, "addressType", st(Some(obj), "addressType"), &["IPv4", "IPv6", "FQDN"], true);
        }
        ("rbac.authorization.k8s.io", "Role") => rules(e, obj, true),
        ("rbac.authorization.k8s.io", "ClusterRole") if get(Some(obj), "aggregationRule").is_none() => {
            rules(e, obj, false)
        }
        ("rbac.authorization.k8s.io", "RoleBinding") => binding(e, obj, true),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => binding(e, obj, false),
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration") => {
            super::admission::webhook_configuration(e, obj, true)
        }
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration") => {
            super::admission::webhook_configuration(e, obj, false)
        }
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy") => super::admission::policy(e, obj),
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding") => {
            super::admission::binding(e, obj)
        }
        ("apiregistration.k8s.io", "APIService") => api_service(e, obj),
        ("storage.k8s.io", "StorageClass") => {
            let prov = st(Some(obj), "provisioner");
            if prov.is_empty() {
                e.required("provisioner", "");
            } else {
                e.invalid_msgs("provisioner", prov, names::qualified_name(&prov.to_lowercase()));
            }
            one_of(e, "reclaimPolicy", st(Some(obj), "reclaimPolicy"), &["Delete", "Retain"], false);
            one_of(
                e,
                "volumeBindingMode",
                st(Some(obj), "volumeBindingMode"),
                &["Immediate", "WaitForFirstConsumer"],
                false,
            );
        }
        _ => {}
    }
}

/// kube-aggregator's `ValidateAPIService`.
fn api_service(e: &mut Errs, obj: &Value) {
    let spec = get(Some(obj), "spec");
    let (group, version) = (st(spec, "group"), st(spec, "version"));
    let name = st(get(Some(obj), "metadata"), "name");
    let required = format!("{version}.{group}");
    if !name.is_empty() && name != required {
        e.invalid_str(
            "metadata.name",
            name,
            &format!("must be `spec.version+\".\"+spec.group`: {required:?}"),
        );
    }
    if group.is_empty() && version != "v1" {
        e.required("spec.group", "only v1 may have an empty group and it better be legacy kube");
    }
    if !group.is_empty() {
        e.invalid_msgs("spec.group", group, names::dns1123_subdomain(group));
    }
    e.invalid_msgs("spec.version", version, names::dns1035_label(version));
    let gpm = int(spec, "groupPriorityMinimum").unwrap_or(0);
    if gpm <= 0 || gpm > 20000 {
        e.invalid("spec.groupPriorityMinimum", &gpm.to_string(), "must be positive and less than 20000");
    }
    let vp = int(spec, "versionPriority").unwrap_or(0);
    if vp <= 0 || vp > 1000 {
        e.invalid("spec.versionPriority", &vp.to_string(), "must be positive and less than 1000");
    }
    let ca = st(spec, "caBundle");
    let insecure = get(spec, "insecureSkipTLSVerify").and_then(Value::as_bool) == Some(true);
    let Some(svc) = get(spec, "service").filter(|s| s.is_object()) else {
        if !ca.is_empty() {
            let n = base64_len(ca);
            e.invalid_str(
                "spec.caBundle",
                &format!("{n} bytes"),
                "local APIServices may not have a caBundle",
            );
        }
        if insecure {
            e.invalid(
                "spec.insecureSkipTLSVerify",
                "true",
                "local APIServices may not have insecureSkipTLSVerify",
            );
        }
        return;
    };
    if st(Some(svc), "namespace").is_empty() {
        e.required("spec.service.namespace", "");
    }
    if st(Some(svc), "name").is_empty() {
        e.required("spec.service.name", "");
    }
    let port = int(Some(svc), "port").unwrap_or(443);
    if !(1..=65535).contains(&port) {
        e.invalid(
            "spec.service.port",
            &port.to_string(),
            "port is not valid: must be between 1 and 65535, inclusive",
        );
    }
    if insecure && !ca.is_empty() {
        e.invalid("spec.insecureSkipTLSVerify", "true", "may not be true if caBundle is present");
    }
}

/// The length of the bytes a base64 string encodes.
fn base64_len(b64: &str) -> usize {
    let t = b64.trim_end_matches('=');
    t.len() * 3 / 4
}

// ---- workloads -----------------------------------------------------------------------------

/// Selector present, valid and non-empty; returns it when usable for matching.
fn selector<'a>(e: &mut Errs, spec: Option<&'a Value>, empty_msg: &str) -> Option<&'a Value> {
    let Some(sel) = get(spec, "selector") else {
        e.required("spec.selector", "");
        return None;
    };
    meta::label_selector(e, sel, "spec.selector");
    if meta::selector_empty(sel) {
        e.invalid("spec.selector", &go_selector(Some(sel)), empty_msg);
        return None;
    }
    Some(sel)
}

/// The template's labels must satisfy the selector.
fn template_matches(e: &mut Errs, sel: Option<&Value>, template: Option<&Value>, path: &str) {
    let (Some(sel), Some(t)) = (sel, template) else { return };
    let labels = t.get("metadata").and_then(|m| m.get("labels"));
    if !meta::selector_matches(sel, labels.and_then(Value::as_object)) {
        e.invalid(
            &format!("{path}.metadata.labels"),
            &go_map(labels),
            "`selector` does not match template `labels`",
        );
    }
}

fn restart_always(e: &mut Errs, template: Option<&Value>, path: &str) {
    let rp = st(template.and_then(|t| t.get("spec")), "restartPolicy");
    if !rp.is_empty() && rp != "Always" {
        e.not_supported(&format!("{path}.spec.restartPolicy"), rp, &["Always"]);
    }
}

fn workload_common(e: &mut Errs, spec: Option<&Value>, empty_msg: &str) {
    e.nonnegative(spec, "replicas", "spec.replicas");
    e.nonnegative(spec, "minReadySeconds", "spec.minReadySeconds");
    e.nonnegative(spec, "revisionHistoryLimit", "spec.revisionHistoryLimit");
    let sel = selector(e, spec, empty_msg);
    let template = get(spec, "template");
    pod::template(e, template, "spec.template", Ctx::Template);
    template_matches(e, sel, template, "spec.template");
    restart_always(e, template, "spec.template");
}

fn deployment(e: &mut Errs, spec: Option<&Value>) {
    workload_common(e, spec, "empty selector is invalid for deployment");
    let template = get(spec, "template");
    if get(template.and_then(|t| t.get("spec")), "activeDeadlineSeconds").is_some() {
        e.forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in ReplicaSet is not Supported",
        );
    }
    let strategy = get(spec, "strategy");
    let ty = st(strategy, "type");
    one_of(e, "spec.strategy.type", ty, &["Recreate", "RollingUpdate"], false);
    let ru = get(strategy, "rollingUpdate");
    if ty == "Recreate" && ru.is_some() {
        e.forbidden("spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'");
    }
    if ty == "RollingUpdate" {
        if let Some(ru) = ru {
            rolling_update(e, ru, "spec.strategy.rollingUpdate");
        }
    }
    if let Some(pds) = int(spec, "progressDeadlineSeconds") {
        if pds < 0 {
            e.invalid("spec.progressDeadlineSeconds", &pds.to_string(), "must be greater than or equal to 0");
        } else if pds <= int(spec, "minReadySeconds").unwrap_or(0) {
            e.invalid(
                "spec.progressDeadlineSeconds",
                &pds.to_string(),
                "must be greater than minReadySeconds",
            );
        }
    }
}

/// The value of an int-or-percent (`percent` of 100 for strings).
fn int_or_percent(v: Option<&Value>) -> Option<(i64, bool)> {
    match v? {
        Value::String(s) => s.strip_suffix('%').and_then(|n| n.parse().ok()).map(|n| (n, true)),
        n => n.as_i64().map(|n| (n, false)),
    }
}

fn positive_int_or_percent(e: &mut Errs, v: Option<&Value>, p: &str) {
    match v {
        Some(Value::String(s)) => {
            let ok =
                s.strip_suffix('%').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                e.invalid(
                    p,
                    &go_int_or_string(v),
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                );
            }
        }
        Some(n) if n.as_i64().unwrap_or(0) < 0 => {
            e.invalid(p, &go_int_or_string(v), "must be greater than or equal to 0");
        }
        _ => {}
    }
}

/// Upstream's `validateHorizontalPodAutoscalerSpec` (autoscaling/v2).
fn horizontal_pod_autoscaler(e: &mut Errs, spec: Option<&Value>) {
    let min = int(spec, "minReplicas");
    let max = int(spec, "maxReplicas").unwrap_or(0);
    if let Some(m) = min.filter(|m| *m < 1) {
        e.invalid("spec.minReplicas", &m.to_string(), "must be greater than or equal to 1");
    }
    if max < 1 {
        e.invalid("spec.maxReplicas", &max.to_string(), "must be greater than 0");
    }
    if min.is_some_and(|m| max < m) {
        e.invalid("spec.maxReplicas", &max.to_string(), "must be greater than or equal to `minReplicas`");
    }
    let r = get(spec, "scaleTargetRef");
    for key in ["kind", "name"] {
        let v = st(r, key);
        let p = format!("spec.scaleTargetRef.{key}");
        if v.is_empty() {
            e.required(&p, "");
        } else {
            e.invalid_msgs(&p, v, names::path_segment_name(v));
        }
    }
    for (i, m) in ar(spec, "metrics").iter().enumerate() {
        let p = format!("spec.metrics[{i}]");
        let ty = st(Some(m), "type");
        let source = match ty {
            "" => {
                e.required(&format!("{p}.type"), "must specify a metric source type");
                continue;
            }
            "Resource" => "resource",
            "ContainerResource" => "containerResource",
            "Pods" => "pods",
            "Object" => "object",
            "External" => "external",
            other => {
                e.not_supported(
                    &format!("{p}.type"),
                    other,
                    &["ContainerResource", "External", "Object", "Pods", "Resource"],
                );
                continue;
            }
        };
        let Some(src) = get(Some(m), source) else {
            e.required(&format!("{p}.{source}"), "must populate information for the given metric source");
            continue;
        };
        let sp = format!("{p}.{source}");
        if matches!(source, "resource" | "containerResource") && st(Some(src), "name").is_empty() {
            e.required(&format!("{sp}.name"), "must specify a resource name");
        }
        if source == "containerResource" && st(Some(src), "container").is_empty() {
            e.required(&format!("{sp}.container"), "must specify a container");
        }
        let target = get(Some(src), "target");
        let tp = format!("{sp}.target");
        match st(target, "type") {
            "" => e.required(&format!("{tp}.type"), "must specify a metric target type"),
            "Utilization" | "Value" | "AverageValue" => {}
            other => e.not_supported(&format!("{tp}.type"), other, &["AverageValue", "Utilization", "Value"]),
        }
        if let Some(u) = int(target, "averageUtilization").filter(|u| *u < 1) {
            e.invalid(&format!("{tp}.averageUtilization"), &u.to_string(), "must be greater than 0");
        }
        if st(target, "type") == "Utilization" && int(target, "averageUtilization").is_none() {
            e.required(
                &format!("{tp}.averageUtilization"),
                "must set either a target raw value or a target utilization",
            );
        }
    }
    for dir in ["scaleUp", "scaleDown"] {
        let Some(rules) = get(get(spec, "behavior"), dir) else { continue };
        let p = format!("spec.behavior.{dir}");
        if let Some(w) = int(Some(rules), "stabilizationWindowSeconds") {
            if w < 0 {
                e.invalid(
                    &format!("{p}.stabilizationWindowSeconds"),
                    &w.to_string(),
                    "must be greater than or equal to zero",
                );
            } else if w > 3600 {
                e.invalid(
                    &format!("{p}.stabilizationWindowSeconds"),
                    &w.to_string(),
                    "must be less than or equal to 3600",
                );
            }
        }
        one_of(
            e,
            &format!("{p}.selectPolicy"),
            st(Some(rules), "selectPolicy"),
            &["Disabled", "Max", "Min"],
            false,
        );
        for (j, pol) in ar(Some(rules), "policies").iter().enumerate() {
            let pp = format!("{p}.policies[{j}]");
            one_of(e, &format!("{pp}.type"), st(Some(pol), "type"), &["Percent", "Pods"], true);
            let v = int(Some(pol), "value").unwrap_or(0);
            if v <= 0 {
                e.invalid(&format!("{pp}.value"), &v.to_string(), "must be greater than zero");
            }
            let ps = int(Some(pol), "periodSeconds").unwrap_or(0);
            if ps <= 0 {
                e.invalid(&format!("{pp}.periodSeconds"), &ps.to_string(), "must be greater than zero");
            } else if ps > 1800 {
                e.invalid(
                    &format!("{pp}.periodSeconds"),
                    &ps.to_string(),
                    "must be less than or equal to 1800",
                );
            }
        }
    }
}

/// Upstream's `ValidatePodDisruptionBudgetSpec`.
fn pod_disruption_budget(e: &mut Errs, spec: Option<&Value>) {
    let min = get(spec, "minAvailable");
    let max = get(spec, "maxUnavailable");
    if min.is_some() && max.is_some() {
        e.invalid(
            "spec",
            "policy.PodDisruptionBudgetSpec{...}",
            "minAvailable and maxUnavailable cannot be both set",
        );
    }
    for (v, p) in [(min, "spec.minAvailable"), (max, "spec.maxUnavailable")] {
        positive_int_or_percent(e, v, p);
        if let Some((n, true)) = int_or_percent(v) {
            if n > 100 {
                e.invalid(p, &go_int_or_string(v), "must not be greater than 100%");
            }
        }
    }
    if let Some(sel) = get(spec, "selector") {
        meta::label_selector(e, sel, "spec.selector");
    }
    one_of(
        e,
        "spec.unhealthyPodEvictionPolicy",
        st(spec, "unhealthyPodEvictionPolicy"),
        &["AlwaysAllow", "IfHealthyBudget"],
        false,
    );
}

fn rolling_update(e: &mut Errs, ru: &Value, p: &str) {
    let mu = get(Some(ru), "maxUnavailable");
    let ms = get(Some(ru), "maxSurge");
    positive_int_or_percent(e, mu, &format!("{p}.maxUnavailable"));
    positive_int_or_percent(e, ms, &format!("{p}.maxSurge"));
    let zero = |v: Option<&Value>| int_or_percent(v).is_none_or(|(n, _)| n == 0);
    if zero(mu) && zero(ms) {
        e.invalid(&format!("{p}.maxUnavailable"), &go_int_or_string(mu), "may not be 0 when `maxSurge` is 0");
    }
    if let Some((n, true)) = int_or_percent(mu) {
        if n > 100 {
            e.invalid(&format!("{p}.maxUnavailable"), &go_int_or_string(mu), "must not be greater than 100%");
        }
    }
}

fn replica_set(e: &mut Errs, spec: Option<&Value>) {
    workload_common(e, spec, "empty selector is invalid for deployment");
    if get(get(spec, "template").and_then(|t| t.get("spec")), "activeDeadlineSeconds").is_some() {
        e.forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in ReplicaSet is not Supported",
        );
    }
}

/// Upstream's `ValidateReplicationControllerSpec`: a non-empty label-map selector the
/// template's labels match, a template restarting Always, a valid pod spec.
fn replication_controller(e: &mut Errs, spec: Option<&Value>) {
    e.nonnegative(spec, "replicas", "spec.replicas");
    e.nonnegative(spec, "minReadySeconds", "spec.minReadySeconds");
    let sel = ob(spec, "selector");
    if sel.is_none_or(|m| m.is_empty()) {
        e.required("spec.selector", "");
    }
    let Some(t) = get(spec, "template") else {
        e.required("spec.template", "");
        return;
    };
    if let Some(sel) = sel.filter(|m| !m.is_empty()) {
        let labels = get(get(Some(t), "metadata"), "labels");
        let ok = sel.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
        if !ok {
            e.invalid(
                "spec.template.metadata.labels",
                &go_map(labels),
                "`selector` does not match template `labels`",
            );
        }
    }
    pod::template(e, Some(t), "spec.template", Ctx::Template);
    restart_always(e, Some(t), "spec.template");
}

/// The StatefulSet spec with a volume for each volumeClaimTemplate its pods will get.
fn stateful_set_claim_volumes(spec: &Value) -> Value {
    let mut spec = spec.clone();
    let claims: Vec<String> = ar(Some(&spec), "volumeClaimTemplates")
        .iter()
        .filter_map(|t| t.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")).and_then(Value::as_object_mut)
    {
        let vols = ps.entry("volumes").or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(vols) = vols {
            for c in claims {
                if !vols.iter().any(|v| v.get("name").and_then(Value::as_str) == Some(c.as_str())) {
                    vols.push(serde_json::json!({"name": c, "persistentVolumeClaim": {"claimName": c}}));
                }
            }
        }
    }
    spec
}

fn stateful_set(e: &mut Errs, spec: Option<&Value>) {
    // Mounts may name a volumeClaimTemplate: the controller adds those volumes to each pod
    // (upstream does not check the template's mounts against its volumes at all).
    let with_claims = spec.map(stateful_set_claim_volumes);
    workload_common(e, with_claims.as_ref(), "empty selector is invalid for statefulset");
    if get(get(spec, "template").and_then(|t| t.get("spec")), "activeDeadlineSeconds").is_some() {
        e.forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in StatefulSet is not Supported",
        );
    }
    let pmp = st(spec, "podManagementPolicy");
    if !pmp.is_empty() && pmp != "OrderedReady" && pmp != "Parallel" {
        e.invalid_str("spec.podManagementPolicy", pmp, "must be 'OrderedReady' or 'Parallel'");
    }
    let us = get(spec, "updateStrategy");
    let ty = st(us, "type");
    match ty {
        "" | "RollingUpdate" => {
            if let Some(ru) = get(us, "rollingUpdate") {
                e.nonnegative(Some(ru), "partition", "spec.updateStrategy.rollingUpdate.partition");
            }
        }
        "OnDelete" => {
            if get(us, "rollingUpdate").is_some() {
                e.invalid(
                    "spec.updateStrategy.rollingUpdate",
                    &super::errs::json_value(get(us, "rollingUpdate")),
                    "only allowed for updateStrategy 'RollingUpdate'",
                );
            }
        }
        other => e.invalid_str("spec.updateStrategy", other, "must be 'RollingUpdate' or 'OnDelete'"),
    }
    let retention = get(spec, "persistentVolumeClaimRetentionPolicy");
    for k in ["whenDeleted", "whenScaled"] {
        one_of(
            e,
            &format!("spec.persistentVolumeClaimRetentionPolicy.{k}"),
            st(retention, k),
            &["Retain", "Delete"],
            false,
        );
    }
    e.nonnegative(get(spec, "ordinals"), "start", "spec.ordinals.start");
    for (i, t) in ar(spec, "volumeClaimTemplates").iter().enumerate() {
        let name = st(t.get("metadata"), "name");
        let p = format!("spec.volumeClaimTemplates[{i}].metadata.name");
        if name.is_empty() {
            e.required(&p, "name or generateName is required");
        } else {
            e.invalid_msgs(&p, name, names::dns1123_subdomain(name));
        }
    }
}

fn daemon_set(e: &mut Errs, spec: Option<&Value>) {
    e.nonnegative(spec, "minReadySeconds", "spec.minReadySeconds");
    e.nonnegative(spec, "revisionHistoryLimit", "spec.revisionHistoryLimit");
    let sel = selector(e, spec, "empty selector is invalid for daemonset");
    let template = get(spec, "template");
    pod::template(e, template, "spec.template", Ctx::Template);
    template_matches(e, sel, template, "spec.template");
    restart_always(e, template, "spec.template");
    if get(template.and_then(|t| t.get("spec")), "activeDeadlineSeconds").is_some() {
        e.forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in DaemonSet is not Supported",
        );
    }
    let us = get(spec, "updateStrategy");
    match st(us, "type") {
        "" | "OnDelete" => {}
        "RollingUpdate" => match get(us, "rollingUpdate") {
            None => e.required("spec.updateStrategy.rollingUpdate", ""),
            Some(ru) => rolling_update(e, ru, "spec.updateStrategy.rollingUpdate"),
        },
        other => e.not_supported("spec.updateStrategy", other, &["OnDelete", "RollingUpdate"]),
    }
}

/// `ValidateJobSpec` at `path` (`spec` or `spec.jobTemplate.spec`).
pub(crate) fn job_spec(e: &mut Errs, spec: Option<&Value>, path: &str, is_job: bool) {
    for k in
        ["parallelism", "completions", "activeDeadlineSeconds", "backoffLimit", "ttlSecondsAfterFinished"]
    {
        e.nonnegative(spec, k, &format!("{path}.{k}"));
    }
    let mode = st(spec, "completionMode");
    one_of(e, &format!("{path}.completionMode"), mode, &["NonIndexed", "Indexed"], false);
    if mode == "Indexed" && get(spec, "completions").is_none() {
        e.required(&format!("{path}.completions"), "when completion mode is Indexed");
    }
    one_of(
        e,
        &format!("{path}.podReplacementPolicy"),
        st(spec, "podReplacementPolicy"),
        &["Failed", "TerminatingOrFailed"],
        false,
    );
    let template = get(spec, "template");
    let tpath = format!("{path}.template");
    pod::template(e, template, &tpath, Ctx::JobTemplate);
    if let Some(sel) = get(spec, "selector") {
        meta::label_selector(e, sel, &format!("{path}.selector"));
        if is_job {
            template_matches(e, Some(sel), template, &tpath);
        }
    }
    let rp = st(template.and_then(|t| t.get("spec")), "restartPolicy");
    if rp != "OnFailure" && rp != "Never" {
        e.not_supported(&format!("{tpath}.spec.restartPolicy"), rp, &["OnFailure", "Never"]);
    }
}

fn cron_job(e: &mut Errs, obj: &Value) {
    let spec = obj.get("spec");
    let name = st(obj.get("metadata"), "name");
    if name.len() > 52 {
        e.invalid_str("metadata.name", name, "must be no more than 52 characters");
    }
    let schedule = st(spec, "schedule");
    if schedule.is_empty() {
        e.required("spec.schedule", "");
    } else if schedule.contains("TZ") {
        e.invalid_str(
            "spec.schedule",
            schedule,
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        );
    } else if !schedule.starts_with('@') {
        let fields = schedule.split_whitespace().count();
        if fields != 5 {
            e.invalid_str(
                "spec.schedule",
                schedule,
                &format!("expected exactly 5 fields, found {fields}: {schedule}"),
            );
        }
    }
    one_of(
        e,
        "spec.concurrencyPolicy",
        st(spec, "concurrencyPolicy"),
        &["Allow", "Forbid", "Replace"],
        false,
    );
    for k in ["startingDeadlineSeconds", "successfulJobsHistoryLimit", "failedJobsHistoryLimit"] {
        e.nonnegative(spec, k, &format!("spec.{k}"));
    }
    let jt = get(spec, "jobTemplate");
    let jm = jt.and_then(|t| t.get("metadata"));
    meta::labels(e, jm.and_then(|m| m.get("labels")), "spec.jobTemplate.metadata.labels");
    meta::annotations(e, jm.and_then(|m| m.get("annotations")), "spec.jobTemplate.metadata.annotations");
    job_spec(e, jt.and_then(|t| t.get("spec")), "spec.jobTemplate.spec", false);
}

// ---- core ----------------------------------------------------------------------------------

fn service(e: &mut Errs, spec: Option<&Value>) {
    let ty = st(spec, "type");
    one_of(e, "spec.type", ty, &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"], false);
    let cluster_ip = st(spec, "clusterIP");
    let headless = cluster_ip == "None";
    let ports = ar(spec, "ports");
    if ty == "ExternalName" {
        let name = st(spec, "externalName");
        if name.is_empty() {
            e.required("spec.externalName", "");
        } else {
            let trimmed = name.strip_suffix('.').unwrap_or(name);
            e.invalid_msgs("spec.externalName", name, names::dns1123_subdomain(trimmed));
        }
        if !cluster_ip.is_empty() {
            e.forbidden("spec.clusterIPs", "may not be set for ExternalName services");
        }
    } else if ports.is_empty() && !headless {
        e.required("spec.ports", "");
    }
    if !cluster_ip.is_empty() && !headless && !names::is_ip(cluster_ip) {
        e.invalid_str(
            "spec.clusterIPs[0]",
            cluster_ip,
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        );
    }
    let require_name = ports.len() > 1;
    let mut port_names = HashSet::new();
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        let p = Some(p);
        let name = st(p, "name");
        if name.is_empty() {
            if require_name {
                e.required(&format!("{pp}.name"), "");
            }
        } else {
            e.invalid_msgs(&format!("{pp}.name"), name, names::dns1123_label(name));
            if !port_names.insert(name) {
                e.duplicate(&format!("{pp}.name"), &super::errs::q(name));
            }
        }
        let port = int(p, "port").unwrap_or(0);
        if let Some(m) = names::port_num(port) {
            e.invalid(&format!("{pp}.port"), &port.to_string(), m);
        }
        let proto = st(p, "protocol");
        one_of(e, &format!("{pp}.protocol"), proto, &["SCTP", "TCP", "UDP"], false);
        if let Some(tp) = get(p, "targetPort") {
            pod::port_num_or_name(e, tp, &format!("{pp}.targetPort"));
        }
        let node_port = int(p, "nodePort").unwrap_or(0);
        if node_port != 0 {
            if ty == "ClusterIP" || ty.is_empty() {
                e.forbidden(&format!("{pp}.nodePort"), "may not be used when `type` is 'ClusterIP'");
            } else if let Some(m) = names::port_num(node_port) {
                e.invalid(&format!("{pp}.nodePort"), &node_port.to_string(), m);
            }
        }
        if !seen.insert((port, proto)) {
            e.duplicate(
                &pp,
                &format!(
                    "core.ServicePort{{Name:\"\", Protocol:{}, AppProtocol:(*string)(nil), Port:{port}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:\"\"}}, NodePort:0}}",
                    super::errs::q(proto)
                ),
            );
        }
    }
    one_of(e, "spec.sessionAffinity", st(spec, "sessionAffinity"), &["ClientIP", "None"], false);
    one_of(e, "spec.internalTrafficPolicy", st(spec, "internalTrafficPolicy"), &["Cluster", "Local"], false);
    one_of(e, "spec.externalTrafficPolicy", st(spec, "externalTrafficPolicy"), &["Cluster", "Local"], false);
    one_of(
        e,
        "spec.ipFamilyPolicy",
        st(spec, "ipFamilyPolicy"),
        &["SingleStack", "PreferDualStack", "RequireDualStack"],
        false,
    );
    meta::labels(e, spec.and_then(|s| s.get("selector")), "spec.selector");
}

const MAX_SECRET_SIZE: usize = 1024 * 1024;

/// Decoded length of base64 text.
fn b64_len(s: &str) -> usize {
    let pad = s.bytes().rev().take_while(|b| *b == b'=').count();
    (s.len() / 4 * 3).saturating_sub(pad)
        + match s.len() % 4 {
            2 => 1,
            3 => 2,
            _ => 0,
        }
}

fn config_map(e: &mut Errs, obj: &Value) {
    let data = ob(Some(obj), "data");
    let binary = ob(Some(obj), "binaryData");
    let mut total = 0usize;
    for (k, v) in data.into_iter().flatten() {
        let p = format!("data[{k}]");
        e.invalid_msgs(&p, k, names::config_map_key(k));
        if binary.is_some_and(|b| b.contains_key(k)) {
            e.invalid_str(&p, k, "duplicate of key present in binaryData");
        }
        total += v.as_str().map_or(0, str::len);
    }
    for (k, v) in binary.into_iter().flatten() {
        let p = format!("binaryData[{k}]");
        e.invalid_msgs(&p, k, names::config_map_key(k));
        if data.is_some_and(|d| d.contains_key(k)) {
            e.invalid_str(&p, k, "duplicate of key present in data");
        }
        total += v.as_str().map_or(0, b64_len);
    }
    if total > MAX_SECRET_SIZE {
        e.too_long("", MAX_SECRET_SIZE);
    }
}

fn secret(e: &mut Errs, obj: &Value) {
    let data = ob(Some(obj), "data");
    let mut total = 0usize;
    for (k, v) in data.into_iter().flatten() {
        e.invalid_msgs(&format!("data[{k}]"), k, names::config_map_key(k));
        total += v.as_str().map_or(0, b64_len);
    }
    for (k, v) in ob(Some(obj), "stringData").into_iter().flatten() {
        e.invalid_msgs(&format!("stringData[{k}]"), k, names::config_map_key(k));
        total += v.as_str().map_or(0, str::len);
    }
    if total > MAX_SECRET_SIZE {
        e.too_long("data", MAX_SECRET_SIZE);
    }
    let has = |k: &str| {
        data.is_some_and(|d| d.contains_key(k))
            || ob(Some(obj), "stringData").is_some_and(|d| d.contains_key(k))
    };
    match st(Some(obj), "type") {
        "kubernetes.io/service-account-token" => {
            let ann = obj.get("metadata").and_then(|m| m.get("annotations"));
            if st(ann, "kubernetes.io/service-account.name").is_empty() {
                e.required("metadata.annotations[kubernetes.io/service-account.name]", "");
            }
        }
        "kubernetes.io/dockercfg" if !has(".dockercfg") => e.required("data[.dockercfg]", ""),
        "kubernetes.io/dockerconfigjson" if !has(".dockerconfigjson") => {
            e.required("data[.dockerconfigjson]", "")
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            e.required("data[username]", "");
            e.required("data[password]", "");
        }
        "kubernetes.io/ssh-auth" if !has("ssh-privatekey") => e.required("data[ssh-privatekey]", ""),
        "kubernetes.io/tls" => {
            if !has("tls.key") {
                e.required("data[tls.key]", "");
            }
            if !has("tls.crt") {
                e.required("data[tls.crt]", "");
            }
        }
        _ => {}
    }
}

const ACCESS_MODES: &[&str] = &["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"];

/// `ValidatePersistentVolumeClaimSpec`.
pub(crate) fn pvc_spec(e: &mut Errs, spec: Option<&Value>, path: &str) {
    let modes = ar(spec, "accessModes");
    if modes.is_empty() {
        e.required(&format!("{path}.accessModes"), "at least 1 access mode is required");
    }
    for m in modes {
        let m = m.as_str().unwrap_or("");
        if !ACCESS_MODES.contains(&m) {
            e.not_supported(&format!("{path}.accessModes"), m, ACCESS_MODES);
        }
    }
    let storage =
        ob(get(spec, "resources"), "requests").and_then(|r| r.get("storage")).and_then(Value::as_str);
    match storage {
        None => e.required(&format!("{path}.resources[storage]"), ""),
        Some(s) => match names::quantity(s) {
            Some(v) if v > 0.0 => {}
            _ => e.invalid_str(&format!("{path}.resources[storage]"), s, "must be greater than zero"),
        },
    }
    one_of(e, &format!("{path}.volumeMode"), st(spec, "volumeMode"), &["Block", "Filesystem"], false);
}

/// The persistent volume source keys of a PV spec.
pub(crate) const PV_SOURCES: &[&str] = &[
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "csi",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "glusterfs",
    "hostPath",
    "iscsi",
    "local",
    "nfs",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "rbd",
    "scaleIO",
    "storageos",
    "vsphereVolume",
];

fn pv(e: &mut Errs, spec: Option<&Value>) {
    if ob(spec, "capacity").is_none_or(|c| c.is_empty()) {
        e.required("spec.capacity", "");
    }
    let modes = ar(spec, "accessModes");
    if modes.is_empty() {
        e.required("spec.accessModes", "");
    }
    for m in modes {
        let m = m.as_str().unwrap_or("");
        if !ACCESS_MODES.contains(&m) {
            e.not_supported("spec.accessModes", m, ACCESS_MODES);
        }
    }
    let sources: Vec<&str> = PV_SOURCES.iter().copied().filter(|k| get(spec, k).is_some()).collect();
    match sources.as_slice() {
        [] => e.required("spec", "must specify a volume type"),
        [_, rest @ ..] => {
            for k in rest {
                e.forbidden(&format!("spec.{k}"), "may not specify more than 1 volume type");
            }
        }
    }
    one_of(
        e,
        "spec.persistentVolumeReclaimPolicy",
        st(spec, "persistentVolumeReclaimPolicy"),
        &["Delete", "Recycle", "Retain"],
        false,
    );
    one_of(e, "spec.volumeMode", st(spec, "volumeMode"), &["Block", "Filesystem"], false);
}

fn event(e: &mut Errs, obj: &Value) {
    let ns = st(obj.get("metadata"), "namespace");
    let involved_ns = st(obj.get("involvedObject"), "namespace");
    let mismatch = if involved_ns.is_empty() { !ns.is_empty() && ns != "default" } else { ns != involved_ns };
    if mismatch {
        e.invalid_str("involvedObject.namespace", involved_ns, "does not match event.namespace");
    }
}

// ---- rbac ----------------------------------------------------------------------------------

fn rules(e: &mut Errs, obj: &Value, namespaced: bool) {
    for (i, r) in ar(Some(obj), "rules").iter().enumerate() {
        let p = format!("rules[{i}]");
        let r = Some(r);
        if ar(r, "verbs").is_empty() {
            e.required(&format!("{p}.verbs"), "verbs must contain at least one value");
        }
        let urls = ar(r, "nonResourceURLs");
        if !urls.is_empty() {
            let v = go_strings(get(r, "nonResourceURLs"));
            if namespaced {
                e.invalid(
                    &format!("{p}.nonResourceURLs"),
                    &v,
                    "namespaced rules cannot apply to non-resource URLs",
                );
            }
            if !ar(r, "apiGroups").is_empty()
                || !ar(r, "resources").is_empty()
                || !ar(r, "resourceNames").is_empty()
            {
                e.invalid(
                    &format!("{p}.nonResourceURLs"),
                    &v,
                    "rules cannot apply to both regular resources and non-resource URLs",
                );
            }
            continue;
        }
        if ar(r, "apiGroups").is_empty() {
            e.required(&format!("{p}.apiGroups"), "resource rules must supply at least one api group");
        }
        if ar(r, "resources").is_empty() {
            e.required(&format!("{p}.resources"), "resource rules must supply at least one resource");
        }
    }
}

fn binding(e: &mut Errs, obj: &Value, namespaced: bool) {
    let rr = obj.get("roleRef");
    let kinds: &[&str] = if namespaced { &["Role", "ClusterRole"] } else { &["ClusterRole"] };
    let kind = st(rr, "kind");
    if !kinds.contains(&kind) {
        e.not_supported("roleRef.kind", kind, kinds);
    }
    let group = st(rr, "apiGroup");
    if group != "rbac.authorization.k8s.io" {
        e.not_supported("roleRef.apiGroup", group, &["rbac.authorization.k8s.io"]);
    }
    let name = st(rr, "name");
    if name.is_empty() {
        e.required("roleRef.name", "");
    } else {
        e.invalid_msgs("roleRef.name", name, names::path_segment_name(name));
    }
    for (i, s) in ar(Some(obj), "subjects").iter().enumerate() {
        let p = format!("subjects[{i}]");
        let s = Some(s);
        let sname = st(s, "name");
        if sname.is_empty() {
            e.required(&format!("{p}.name"), "");
        }
        match st(s, "kind") {
            "ServiceAccount" => {
                if !sname.is_empty() {
                    e.invalid_msgs(&format!("{p}.name"), sname, names::dns1123_subdomain(sname));
                }
                let g = st(s, "apiGroup");
                if !g.is_empty() {
                    e.not_supported(&format!("{p}.apiGroup"), g, &[""]);
                }
                if !namespaced && st(s, "namespace").is_empty() {
                    e.required(&format!("{p}.namespace"), "");
                }
            }
            "User" | "Group" => {
                let g = st(s, "apiGroup");
                if g != "rbac.authorization.k8s.io" {
                    e.not_supported(&format!("{p}.apiGroup"), g, &["rbac.authorization.k8s.io"]);
                }
            }
            other => e.not_supported(&format!("{p}.kind"), other, &["ServiceAccount", "User", "Group"]),
        }
    }
}
