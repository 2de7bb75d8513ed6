//! `ValidatePodSpec` and `ValidatePodTemplateSpec`.

use super::errs::{ar, get, int, ob, q, st, Errs};
use super::meta;
use super::names;
use serde_json::Value;
use std::collections::HashSet;

/// Where a pod spec sits, which changes a few rules.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctx {
    /// A Pod's own spec.
    Pod,
    /// A template of a long-running workload.
    Template,
    /// A Job template: an empty `restartPolicy` is left to the Job rules.
    JobTemplate,
}

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

/// Validates a `PodTemplateSpec` at `path` (`spec.template`).
pub(crate) fn template(e: &mut Errs, t: Option<&Value>, path: &str, ctx: Ctx) {
    let Some(t) = t.filter(|t| t.is_object()) else {
        e.required(path, "");
        return;
    };
    let m = t.get("metadata");
    meta::labels(e, m.and_then(|m| m.get("labels")), &format!("{path}.metadata.labels"));
    meta::annotations(e, m.and_then(|m| m.get("annotations")), &format!("{path}.metadata.annotations"));
    spec(e, t.get("spec"), &format!("{path}.spec"), ctx);
}

/// Validates a `PodSpec` at `path` (`spec` or `spec.template.spec`).
pub(crate) fn spec(e: &mut Errs, s: Option<&Value>, path: &str, ctx: Ctx) {
    let vols = volumes(e, s, path);
    let containers = ar(s, "containers");
    let init = ar(s, "initContainers");
    let mut names: HashSet<&str> = HashSet::new();
    let host_network = s.and_then(|s| s.get("hostNetwork")).and_then(Value::as_bool) == Some(true);
    for (i, c) in init.iter().enumerate() {
        container(e, c, &format!("{path}.initContainers[{i}]"), &vols, &mut names, true, host_network);
    }
    if containers.is_empty() {
        e.required(&format!("{path}.containers"), "");
    }
    for (i, c) in containers.iter().enumerate() {
        container(e, c, &format!("{path}.containers[{i}]"), &vols, &mut names, false, host_network);
    }
    if ctx == Ctx::Pod && !ar(s, "ephemeralContainers").is_empty() {
        e.forbidden(&format!("{path}.ephemeralContainers"), "cannot be set on create");
    }

    let restart = st(s, "restartPolicy");
    if !(restart.is_empty() && ctx == Ctx::JobTemplate) {
        one_of(
            e,
            &format!("{path}.restartPolicy"),
            restart,
            &["Always", "OnFailure", "Never"],
            ctx != Ctx::JobTemplate,
        );
    }
    let dns = st(s, "dnsPolicy");
    one_of(
        e,
        &format!("{path}.dnsPolicy"),
        dns,
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        false,
    );
    if dns == "None" && get(s, "dnsConfig").is_none() {
        e.required(&format!("{path}.dnsConfig"), "must provide `dnsConfig` when `dnsPolicy` is None");
    }
    if let Some(ads) = int(s, "activeDeadlineSeconds") {
        if !(1..=i64::from(i32::MAX)).contains(&ads) {
            e.invalid(
                &format!("{path}.activeDeadlineSeconds"),
                &ads.to_string(),
                "must be between 1 and 2147483647, inclusive",
            );
        }
    }
    meta::labels(e, s.and_then(|s| s.get("nodeSelector")), &format!("{path}.nodeSelector"));
    for (key, check) in [
        ("serviceAccountName", names::dns1123_subdomain as fn(&str) -> Vec<String>),
        ("nodeName", names::dns1123_subdomain),
        ("hostname", names::dns1123_label),
        ("subdomain", names::dns1123_label),
    ] {
        let v = st(s, key);
        if !v.is_empty() {
            e.invalid_msgs(&format!("{path}.{key}"), v, check(v));
        }
    }
    for (i, t) in ar(s, "tolerations").iter().enumerate() {
        toleration(e, t, &format!("{path}.tolerations[{i}]"));
    }
}

/// An enum-like string: `Required` when empty and `required`, `Unsupported` when unknown.
pub(crate) fn one_of(e: &mut Errs, path: &str, v: &str, valid: &[&str], required: bool) {
    if v.is_empty() {
        if required {
            e.required(path, "");
        }
    } else if !valid.contains(&v) {
        e.not_supported(path, v, valid);
    }
}

const VOLUME_SOURCES: &[&str] = &[
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "gitRepo",
    "glusterfs",
    "hostPath",
    "image",
    "iscsi",
    "nfs",
    "persistentVolumeClaim",
    "photonPersistentDisk",
    "portworxVolume",
    "projected",
    "quobyte",
    "rbd",
    "scaleIO",
    "secret",
    "storageos",
    "vsphereVolume",
];

fn volumes<'a>(e: &mut Errs, s: Option<&'a Value>, path: &str) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for (i, v) in ar(s, "volumes").iter().enumerate() {
        let p = format!("{path}.volumes[{i}]");
        let name = st(Some(v), "name");
        if name.is_empty() {
            e.required(&format!("{p}.name"), "");
        } else {
            e.invalid_msgs(&format!("{p}.name"), name, names::dns1123_label(name));
            if !seen.insert(name) {
                e.duplicate(&format!("{p}.name"), &q(name));
            }
        }
        let sources: Vec<&str> =
            VOLUME_SOURCES.iter().copied().filter(|k| v.get(*k).is_some_and(|x| !x.is_null())).collect();
        match sources.as_slice() {
            [] => e.required(&p, "must specify a volume type"),
            [_, rest @ ..] => {
                for k in rest {
                    e.forbidden(&format!("{p}.{k}"), "may not specify more than 1 volume type");
                }
            }
        }
        let src = |k: &str| get(Some(v), k);
        if let Some(cm) = src("configMap") {
            if st(Some(cm), "name").is_empty() {
                e.required(&format!("{p}.configMap.name"), "");
            }
            default_mode(e, cm, &format!("{p}.configMap.defaultMode"));
        }
        if let Some(sec) = src("secret") {
            if st(Some(sec), "secretName").is_empty() {
                e.required(&format!("{p}.secret.secretName"), "");
            }
            default_mode(e, sec, &format!("{p}.secret.defaultMode"));
        }
        if let Some(hp) = src("hostPath") {
            if st(Some(hp), "path").is_empty() {
                e.required(&format!("{p}.hostPath.path"), "");
            }
        }
        if let Some(pvc) = src("persistentVolumeClaim") {
            if st(Some(pvc), "claimName").is_empty() {
                e.required(&format!("{p}.persistentVolumeClaim.claimName"), "");
            }
        }
    }
    seen
}

fn default_mode(e: &mut Errs, src: &Value, path: &str) {
    if let Some(m) = int(Some(src), "defaultMode") {
        if !(0..=0o777).contains(&m) {
            e.invalid(path, &m.to_string(), "must be a number between 0 and 0777 (octal), both inclusive");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn container<'a>(
    e: &mut Errs,
    c: &'a Value,
    p: &str,
    vols: &HashSet<&str>,
    names_seen: &mut HashSet<&'a str>,
    init: bool,
    host_network: bool,
) {
    let c = Some(c);
    let name = st(c, "name");
    if name.is_empty() {
        e.required(&format!("{p}.name"), "");
    } else {
        e.invalid_msgs(&format!("{p}.name"), name, names::dns1123_label(name));
        if !names_seen.insert(name) {
            e.duplicate(&format!("{p}.name"), &q(name));
        }
    }
    let image = st(c, "image");
    if image.is_empty() {
        e.required(&format!("{p}.image"), "");
    } else if image.trim() != image {
        e.invalid_str(&format!("{p}.image"), image, "must not have leading or trailing whitespace");
    }
    one_of(
        e,
        &format!("{p}.imagePullPolicy"),
        st(c, "imagePullPolicy"),
        &["Always", "IfNotPresent", "Never"],
        false,
    );
    one_of(
        e,
        &format!("{p}.terminationMessagePolicy"),
        st(c, "terminationMessagePolicy"),
        &["File", "FallbackToLogsOnError"],
        false,
    );
    // allowPrivilegeEscalation: false cannot go with privileged or CAP_SYS_ADMIN.
    if let Some(sc) = c.and_then(|c| c.get("securityContext")).filter(|v| v.is_object()) {
        if sc.get("allowPrivilegeEscalation").and_then(Value::as_bool) == Some(false) {
            if sc.get("privileged").and_then(Value::as_bool) == Some(true) {
                e.invalid(
                    &format!("{p}.securityContext"),
                    "core.SecurityContext{...}",
                    "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
                );
            }
            let adds = sc.get("capabilities").and_then(|c| c.get("add")).and_then(Value::as_array);
            if adds.is_some_and(|a| a.iter().any(|x| x.as_str() == Some("CAP_SYS_ADMIN"))) {
                e.invalid(
                    &format!("{p}.securityContext"),
                    "core.SecurityContext{...}",
                    "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
                );
            }
        }
    }
    let sidecar = st(c, "restartPolicy") == "Always";
    if init {
        one_of(e, &format!("{p}.restartPolicy"), st(c, "restartPolicy"), &["Always"], false);
    }

    // Ports.
    let mut port_names = HashSet::new();
    for (i, port) in ar(c, "ports").iter().enumerate() {
        let pp = format!("{p}.ports[{i}]");
        let port = Some(port);
        let pname = st(port, "name");
        if !pname.is_empty() {
            e.invalid_msgs(&format!("{pp}.name"), pname, names::port_name(pname));
            if !port_names.insert(pname) {
                e.duplicate(&format!("{pp}.name"), &q(pname));
            }
        }
        let cp = int(port, "containerPort").unwrap_or(0);
        if cp == 0 {
            e.required(&format!("{pp}.containerPort"), "");
        } else if let Some(m) = names::port_num(cp) {
            e.invalid(&format!("{pp}.containerPort"), &cp.to_string(), m);
        }
        let hp = int(port, "hostPort").unwrap_or(0);
        if hp != 0 {
            if let Some(m) = names::port_num(hp) {
                e.invalid(&format!("{pp}.hostPort"), &hp.to_string(), m);
            } else if host_network && hp != cp {
                e.invalid(
                    &format!("{pp}.hostPort"),
                    &hp.to_string(),
                    "must match `containerPort` when `hostNetwork` is true",
                );
            }
        }
        one_of(e, &format!("{pp}.protocol"), st(port, "protocol"), PROTOCOLS, false);
    }

    // Environment.
    for (i, env) in ar(c, "env").iter().enumerate() {
        let ep = format!("{p}.env[{i}]");
        let env = Some(env);
        let ename = st(env, "name");
        if ename.is_empty() {
            e.required(&format!("{ep}.name"), "");
        } else {
            e.invalid_msgs(&format!("{ep}.name"), ename, names::env_var_name(ename));
        }
        if get(env, "valueFrom").is_some() && !st(env, "value").is_empty() {
            e.invalid(&format!("{ep}.valueFrom"), "\"\"", "may not be specified when `value` is not empty");
        }
    }

    // Volume mounts.
    let mut mount_paths = HashSet::new();
    for (i, m) in ar(c, "volumeMounts").iter().enumerate() {
        let mp = format!("{p}.volumeMounts[{i}]");
        let m = Some(m);
        let vname = st(m, "name");
        if vname.is_empty() {
            e.required(&format!("{mp}.name"), "");
        } else if !vols.contains(vname) {
            e.not_found(&format!("{mp}.name"), &q(vname));
        }
        let path = st(m, "mountPath");
        if path.is_empty() {
            e.required(&format!("{mp}.mountPath"), "");
        } else if !mount_paths.insert(path) {
            e.invalid_str(&format!("{mp}.mountPath"), path, "must be unique");
        }
    }

    resources(e, get(c, "resources"), &format!("{p}.resources"));

    for probe_key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(pr) = get(c, probe_key) else { continue };
        let pp = format!("{p}.{probe_key}");
        if init && !sidecar {
            e.forbidden(&pp, "may not be set for init containers without restartPolicy=Always");
            continue;
        }
        probe(e, pr, &pp, probe_key != "readinessProbe");
    }
}

fn probe(e: &mut Errs, pr: &Value, p: &str, success_must_be_one: bool) {
    let handlers: Vec<&str> =
        ["exec", "httpGet", "tcpSocket", "grpc"].into_iter().filter(|k| get(Some(pr), k).is_some()).collect();
    match handlers.as_slice() {
        [] => e.required(p, "must specify a handler type"),
        [_, rest @ ..] => {
            for k in rest {
                e.forbidden(&format!("{p}.{k}"), "may not specify more than 1 handler type");
            }
        }
    }
    for k in
        ["initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold"]
    {
        e.nonnegative(Some(pr), k, &format!("{p}.{k}"));
    }
    if success_must_be_one {
        if let Some(v) = int(Some(pr), "successThreshold").filter(|v| *v != 1) {
            e.invalid(&format!("{p}.successThreshold"), &v.to_string(), "must be 1");
        }
    }
    if let Some(port) = get(Some(pr), "httpGet").and_then(|h| h.get("port")) {
        port_num_or_name(e, port, &format!("{p}.httpGet.port"));
    }
    if let Some(port) = get(Some(pr), "tcpSocket").and_then(|h| h.get("port")) {
        port_num_or_name(e, port, &format!("{p}.tcpSocket.port"));
    }
}

/// `ValidatePortNumOrName`.
pub(crate) fn port_num_or_name(e: &mut Errs, port: &Value, p: &str) {
    match port {
        Value::String(s) => {
            if s.is_empty() {
                e.invalid(p, "\"\"", "must contain at least one letter or number (a-z, 0-9)");
            } else {
                e.invalid_msgs(p, s, names::port_name(s));
            }
        }
        n => {
            let n = n.as_i64().unwrap_or(0);
            if let Some(m) = names::port_num(n) {
                e.invalid(p, &n.to_string(), m);
            }
        }
    }
}

const STANDARD_CONTAINER_RESOURCES: &[&str] = &["cpu", "memory", "ephemeral-storage"];

fn resources(e: &mut Errs, r: Option<&Value>, p: &str) {
    let limits = ob(r, "limits");
    let requests = ob(r, "requests");
    for (which, m) in [("limits", limits), ("requests", requests)] {
        let Some(m) = m else { continue };
        for (name, qty) in m {
            let fp = format!("{p}.{which}[{name}]");
            let standard =
                STANDARD_CONTAINER_RESOURCES.contains(&name.as_str()) || name.starts_with("hugepages-");
            let extended = name.contains('/') && !name.contains("kubernetes.io/");
            if !standard && !extended {
                let msgs = names::qualified_name(name);
                if msgs.is_empty() {
                    e.invalid_str(&fp, name, "must be a standard resource for containers");
                } else {
                    e.invalid_msgs(&fp, name, msgs);
                }
            }
            let qs = qty.as_str().map(str::to_string).unwrap_or_else(|| qty.to_string());
            match names::quantity(&qs) {
                None => e.invalid_str(
                    &fp,
                    &qs,
                    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                ),
                Some(v) if v < 0.0 => e.invalid_str(&fp, &qs, "must be greater than or equal to 0"),
                Some(_) => {}
            }
        }
    }
    let (Some(limits), Some(requests)) = (limits, requests) else { return };
    for (name, req) in requests {
        let Some(lim) = limits.get(name) else { continue };
        let (rs, ls) = (req.as_str().unwrap_or(""), lim.as_str().unwrap_or(""));
        let (Some(rv), Some(lv)) = (names::quantity(rs), names::quantity(ls)) else { continue };
        let overcommit =
            !name.starts_with("hugepages-") && (!name.contains('/') || name.contains("kubernetes.io/"));
        let rp = format!("{p}.requests");
        if !overcommit && rv != lv {
            e.invalid_str(&rp, rs, &format!("must be equal to {name} limit of {ls}"));
        } else if rv > lv {
            e.invalid_str(&rp, rs, &format!("must be less than or equal to {name} limit of {ls}"));
        }
    }
}

fn toleration(e: &mut Errs, t: &Value, p: &str) {
    let t = Some(t);
    let key = st(t, "key");
    let op = st(t, "operator");
    if !key.is_empty() {
        e.invalid_msgs(&format!("{p}.key"), key, names::qualified_name(key));
    }
    if key.is_empty() && op != "Exists" {
        e.invalid_str(
            &format!("{p}.operator"),
            op,
            "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
        );
    }
    if get(t, "tolerationSeconds").is_some() && st(t, "effect") != "NoExecute" {
        e.invalid_str(
            &format!("{p}.effect"),
            st(t, "effect"),
            "effect must be 'NoExecute' when `tolerationSeconds` is set",
        );
    }
    match op {
        "" | "Equal" => {
            let v = st(t, "value");
            e.invalid_msgs(&format!("{p}.operator"), v, names::label_value(v));
        }
        "Exists" => {
            let v = st(t, "value");
            if !v.is_empty() {
                e.invalid_str(&format!("{p}.operator"), v, "value must be empty when `operator` is 'Exists'");
            }
        }
        other => e.not_supported(&format!("{p}.operator"), other, &["Equal", "Exists"]),
    }
    one_of(
        e,
        &format!("{p}.effect"),
        st(t, "effect"),
        &["NoSchedule", "PreferNoSchedule", "NoExecute"],
        false,
    );
}

/// Fields an ephemeral container may not set (upstream's allow-list, inverted).
const EPHEMERAL_FORBIDDEN: &[&str] = &[
    "ports",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "resources",
    "resizePolicy",
    "restartPolicy",
];

/// `ValidatePodEphemeralContainersUpdate`: the rules of `pods/ephemeralcontainers` writes.
/// Existing ephemeral containers stay as they are; new ones have unique names among all the
/// pod's containers, no ports, probes, lifecycle, resources or restart policy, no subPath
/// mounts, and a `targetContainerName` naming one of the pod's containers.
pub fn ephemeral_update(old: &Value, new: &Value) -> Vec<crate::Cause> {
    let mut e = Errs::default();
    let (os, ns) = (old.get("spec"), new.get("spec"));
    let list = ar(ns, "ephemeralContainers");
    for o in ar(os, "ephemeralContainers") {
        let name = st(Some(o), "name");
        match list.iter().find(|n| st(Some(n), "name") == name) {
            None => e.forbidden(
                "spec.ephemeralContainers",
                &format!("existing ephemeral containers {} may not be removed\n", q(name)),
            ),
            Some(n) if n != o => e.forbidden(
                "spec.ephemeralContainers",
                &format!("existing ephemeral containers {} may not be changed", q(name)),
            ),
            Some(_) => {}
        }
    }
    let regular: Vec<&str> =
        ar(ns, "initContainers").iter().chain(ar(ns, "containers")).map(|c| st(Some(c), "name")).collect();
    let mut seen: HashSet<&str> = regular.iter().copied().collect();
    for (i, c) in list.iter().enumerate() {
        let p = format!("spec.ephemeralContainers[{i}]");
        let cv = Some(c);
        let name = st(cv, "name");
        if name.is_empty() {
            e.required(&format!("{p}.name"), "");
        } else {
            e.invalid_msgs(&format!("{p}.name"), name, names::dns1123_label(name));
            if !seen.insert(name) {
                e.duplicate(&format!("{p}.name"), &q(name));
            }
        }
        if st(cv, "image").is_empty() {
            e.required(&format!("{p}.image"), "");
        }
        for f in EPHEMERAL_FORBIDDEN {
            // Zero values (`resources: {}` as kubectl sends) count as unset, as upstream.
            let set = get(cv, f).is_some_and(|v| match v {
                Value::Null => false,
                Value::Object(m) => !m.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::String(s) => !s.is_empty(),
                _ => true,
            });
            if set {
                e.forbidden(&format!("{p}.{f}"), "cannot be set for an Ephemeral Container");
            }
        }
        for (j, m) in ar(cv, "volumeMounts").iter().enumerate() {
            if !st(Some(m), "subPath").is_empty() {
                e.forbidden(
                    &format!("{p}.volumeMounts[{j}].subPath"),
                    "cannot be set for an Ephemeral Container",
                );
            }
        }
        let target = st(cv, "targetContainerName");
        if !target.is_empty() && !regular.contains(&target) {
            e.not_found(&format!("{p}.targetContainerName"), &q(target));
        }
    }
    e.0
}

#[cfg(test)]
mod ephemeral_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ephemeral_container_rules_are_upstreams() {
        let old = json!({"spec": {"containers": [{"name": "c", "image": "x"}],
                                  "ephemeralContainers": [{"name": "e1", "image": "x"}]}});
        let ok = json!({"spec": {"containers": [{"name": "c", "image": "x"}],
            "ephemeralContainers": [{"name": "e1", "image": "x"},
                                    {"name": "e2", "image": "x", "resources": {}, "targetContainerName": "c"}]}});
        assert!(ephemeral_update(&old, &ok).is_empty());
        let bad = json!({"spec": {"containers": [{"name": "c", "image": "x"}],
            "ephemeralContainers": [{"name": "c", "image": "", "ports": [{"containerPort": 80}],
                                     "targetContainerName": "nope"}]}});
        let msgs: Vec<String> =
            ephemeral_update(&old, &bad).iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        assert_eq!(
            msgs,
            [
                "spec.ephemeralContainers: Forbidden: existing ephemeral containers \"e1\" may not be removed\n",
                "spec.ephemeralContainers[0].name: Duplicate value: \"c\"",
                "spec.ephemeralContainers[0].image: Required value",
                "spec.ephemeralContainers[0].ports: Forbidden: cannot be set for an Ephemeral Container",
                "spec.ephemeralContainers[0].targetContainerName: Not found: \"nope\"",
            ]
        );
    }
}
