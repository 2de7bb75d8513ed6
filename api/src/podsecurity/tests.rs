//! Every check with allowed and forbidden pods; texts as upstream's tests expect them.

use super::*;
use serde_json::json;

fn lv(s: &str) -> LevelVersion {
    s.parse().unwrap()
}

/// The violations of `spec` (with `metadata`) at `level`.
fn eval_meta(level: &str, metadata: Value, spec: Value) -> Vec<(String, String)> {
    evaluate(&metadata, &spec, lv(level)).into_iter().map(|v| (v.reason, v.detail)).collect()
}

fn eval(level: &str, spec: Value) -> Vec<(String, String)> {
    eval_meta(level, json!({}), spec)
}

/// The one violation of check `check` at `level`, if any.
fn only(level: &str, check: &str, metadata: Value, spec: Value) -> Option<(String, String)> {
    evaluate(&metadata, &spec, lv(level)).into_iter().find(|v| v.check == check).map(|v| (v.reason, v.detail))
}

fn pair(reason: &str, detail: &str) -> Option<(String, String)> {
    Some((reason.to_string(), detail.to_string()))
}

/// A pod that passes restricted:latest.
fn restricted_pod() -> Value {
    json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "image": "x", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
        }}],
        "volumes": [{"name": "v", "emptyDir": {}}, {"name": "p", "projected": {"sources": []}}],
    })
}

fn with(mut base: Value, path: &[&str], value: Value) -> Value {
    let mut cur = &mut base;
    for p in &path[..path.len() - 1] {
        cur = if let Ok(i) = p.parse::<usize>() { &mut cur[i] } else { &mut cur[*p] };
    }
    cur[path[path.len() - 1]] = value;
    base
}

#[test]
fn parse_and_display() {
    assert_eq!(lv("restricted").to_string(), "restricted:latest");
    assert_eq!(lv("baseline:v1.25").to_string(), "baseline:v1.25");
    assert_eq!(lv("baseline:v1.0").version, Version::V1(0));
    for bad in [
        "root",
        "restricted:v2.1",
        "restricted:v1.01",
        "restricted:v1.",
        "restricted:1.25",
        "restricted:v1.x",
    ] {
        assert!(bad.parse::<LevelVersion>().is_err(), "{bad} parsed");
    }
    assert_eq!(
        "nope".parse::<Level>().unwrap_err().to_string(),
        "must be one of privileged, baseline, restricted"
    );
    assert_eq!(Version::V1(99).effective_minor(), LATEST_MINOR);
}

#[test]
fn restricted_pod_passes_everything_and_privileged_allows_anything() {
    assert!(eval("restricted:latest", restricted_pod()).is_empty());
    for v in 0..=LATEST_MINOR + 2 {
        assert!(eval(&format!("restricted:v1.{v}"), restricted_pod()).is_empty(), "v1.{v}");
    }
    let worst =
        json!({"hostNetwork": true, "containers": [{"name": "c", "securityContext": {"privileged": true}}]});
    assert!(eval("privileged:latest", worst.clone()).is_empty());
    assert_eq!(eval("baseline:latest", worst).len(), 2);
}

#[test]
fn the_whole_message_in_upstream_order() {
    let pod = json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let l = lv("restricted:latest");
    let v = evaluate_pod(&pod, l);
    assert_eq!(
        enforce_message("pods", "x", l, &v),
        "pods \"x\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false \
         (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities \
         (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or \
         container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must \
         set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
    assert!(warning(l, &v)
        .starts_with("would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation"));
    assert_eq!(
        forbidden_reason(&v),
        "allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"
    );
    // Baseline checks come before restricted ones, each group by check id.
    let spec =
        json!({"hostPID": true, "containers": [{"name": "c", "securityContext": {"privileged": true}}]});
    let checks: Vec<&str> = evaluate(&json!({}), &spec, lv("restricted")).iter().map(|v| v.check).collect();
    assert_eq!(
        checks,
        [
            "hostNamespaces",
            "privileged",
            "allowPrivilegeEscalation",
            "capabilities_restricted",
            "runAsNonRoot",
            "seccompProfile_restricted"
        ]
    );
}

#[test]
fn pod_specs_of_workloads() {
    let deploy =
        json!({"spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": []}}}});
    let (md, spec) = pod_spec_of("Deployment", &deploy).unwrap();
    assert_eq!(md["labels"]["a"], "b");
    assert!(spec["containers"].is_array());
    let cron = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"hostPID": true}}}}}});
    assert_eq!(pod_spec_of("CronJob", &cron).unwrap().1["hostPID"], true);
    assert!(pod_spec_of("ConfigMap", &json!({})).is_none());
    assert!(pod_spec_of("Deployment", &json!({"spec": {}})).is_none());
}

#[test]
fn app_armor_profile() {
    let ok = json!({"securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "a", "securityContext": {"appArmorProfile": {"type": "Localhost", "localhostProfile": "p"}}}]});
    assert_eq!(only("baseline", "appArmorProfile", json!({}), ok), None);
    let bad = json!({"securityContext": {"appArmorProfile": {"type": "Unconfined"}},
        "containers": [{"name": "a", "securityContext": {"appArmorProfile": {"type": "Unconfined"}}},
                       {"name": "b", "securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}}}]});
    let md = json!({"annotations": {
        "container.apparmor.security.beta.kubernetes.io/a": "unconfined",
        "container.apparmor.security.beta.kubernetes.io/b": "runtime/default",
    }});
    assert_eq!(
        only("baseline", "appArmorProfile", md, bad),
        pair(
            "forbidden AppArmor profiles",
            r#"pod and container "a" and annotation must not set AppArmor profile type to "Unconfined", "container.apparmor.security.beta.kubernetes.io/a="unconfined"""#
        )
    );
}

#[test]
fn capabilities_baseline() {
    let spec = json!({"containers": [
        {"name": "a", "securityContext": {"capabilities": {"add": ["CHOWN", "NET_RAW"]}}},
        {"name": "b", "securityContext": {"capabilities": {"add": ["SYS_ADMIN", "NET_RAW"]}}},
        {"name": "c", "securityContext": {"capabilities": {"add": ["KILL"]}}},
    ]});
    assert_eq!(
        only("baseline", "capabilities_baseline", json!({}), spec.clone()),
        pair(
            "non-default capabilities",
            r#"containers "a", "b" must not include "NET_RAW", "SYS_ADMIN" in securityContext.capabilities.add"#
        )
    );
    // At restricted, capabilities_restricted replaces it.
    assert_eq!(only("restricted", "capabilities_baseline", json!({}), spec), None);
    let ok = json!({"containers": [{"name": "a", "securityContext": {"capabilities": {"add": ["AUDIT_WRITE", "SETUID"]}}}]});
    assert_eq!(only("baseline", "capabilities_baseline", json!({}), ok), None);
}

#[test]
fn host_namespaces_paths_and_ports() {
    let spec = json!({"hostNetwork": true, "hostPID": true, "hostIPC": true, "containers": []});
    assert_eq!(
        only("baseline", "hostNamespaces", json!({}), spec),
        pair("host namespaces", "hostNetwork=true, hostPID=true, hostIPC=true")
    );
    assert_eq!(only("baseline", "hostNamespaces", json!({}), json!({"hostNetwork": false})), None);

    let vols = json!({"volumes": [{"name": "a", "hostPath": {"path": "/"}}, {"name": "b", "emptyDir": {}},
        {"name": "c", "hostPath": {"path": "/x"}}]});
    assert_eq!(
        only("baseline", "hostPathVolumes", json!({}), vols.clone()),
        pair("hostPath volumes", r#"volumes "a", "c""#)
    );
    // At restricted, restrictedVolumes replaces it.
    assert_eq!(only("restricted", "hostPathVolumes", json!({}), vols), None);
    assert_eq!(
        only("baseline", "hostPathVolumes", json!({}), json!({"volumes": [{"name": "b", "emptyDir": {}}]})),
        None
    );

    let ports = json!({"initContainers": [{"name": "i", "ports": [{"containerPort": 1, "hostPort": 10}]}],
        "containers": [{"name": "a", "ports": [{"hostPort": 0, "containerPort": 80}]},
        {"name": "b", "ports": [{"containerPort": 8080, "hostPort": 8080}, {"hostPort": 9090}]}]});
    assert_eq!(
        only("baseline", "hostPorts", json!({}), ports),
        pair("hostPort", r#"containers "i", "b" use hostPorts 10, 8080, 9090"#)
    );
    let one = json!({"containers": [{"name": "a", "ports": [{"hostPort": 53}]}]});
    assert_eq!(
        only("baseline", "hostPorts", json!({}), one),
        pair("hostPort", r#"container "a" uses hostPort 53"#)
    );
}

#[test]
fn host_probes_and_lifecycle_from_1_34() {
    let spec = json!({"containers": [
        {"name": "b", "livenessProbe": {"httpGet": {"host": "10.0.0.1", "port": 80}},
         "lifecycle": {"preStop": {"tcpSocket": {"host": "example.com", "port": 1}}}},
        {"name": "a", "readinessProbe": {"tcpSocket": {"host": "10.0.0.1", "port": 1}}},
        {"name": "ok", "startupProbe": {"httpGet": {"host": "", "port": 80}}},
    ]});
    assert_eq!(
        only("baseline:v1.34", "hostProbesAndHostLifecycle", json!({}), spec.clone()),
        pair(
            "probe or lifecycle host",
            r#"containers "a", "b" use probe or lifecycle hosts "10.0.0.1", "example.com""#
        )
    );
    assert_eq!(only("baseline:v1.33", "hostProbesAndHostLifecycle", json!({}), spec), None);
}

#[test]
fn privileged_and_proc_mount() {
    let spec = json!({"containers": [{"name": "a", "securityContext": {"privileged": true}},
        {"name": "b", "securityContext": {"privileged": false}}]});
    assert_eq!(
        only("baseline", "privileged", json!({}), spec),
        pair("privileged", r#"container "a" must not set securityContext.privileged=true"#)
    );
    let pm = json!({"containers": [{"name": "a", "securityContext": {"procMount": "Unmasked"}},
        {"name": "b", "securityContext": {"procMount": "Default"}}, {"name": "c", "securityContext": {"procMount": "Other"}}]});
    assert_eq!(
        only("baseline", "procMount", json!({}), pm),
        pair(
            "procMount",
            r#"containers "a", "c" must not set securityContext.procMount to "Other", "Unmasked""#
        )
    );
    assert_eq!(only("baseline", "procMount", json!({}), json!({"containers": [{"name": "a"}]})), None);
}

#[test]
fn se_linux_options() {
    let spec = json!({"securityContext": {"seLinuxOptions": {"type": "bad_t", "user": "u"}},
        "containers": [{"name": "a", "securityContext": {"seLinuxOptions": {"role": "r"}}},
        {"name": "b", "securityContext": {"seLinuxOptions": {"type": "container_t", "level": "s0"}}}]});
    assert_eq!(
        only("baseline", "seLinuxOptions", json!({}), spec),
        pair(
            "seLinuxOptions",
            r#"pod and container "a" set forbidden securityContext.seLinuxOptions: type "bad_t"; user may not be set; role may not be set"#
        )
    );
    let user_only = json!({"securityContext": {"seLinuxOptions": {"user": "u"}}});
    assert_eq!(
        only("baseline", "seLinuxOptions", json!({}), user_only),
        pair("seLinuxOptions", "pod set forbidden securityContext.seLinuxOptions: user may not be set")
    );
}

#[test]
fn seccomp_baseline_by_version() {
    let spec = json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}},
        "containers": [{"name": "a", "securityContext": {"seccompProfile": {"type": "Unconfined"}}},
        {"name": "b", "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "x"}}}]});
    assert_eq!(
        only("baseline:v1.19", "seccompProfile_baseline", json!({}), spec.clone()),
        pair(
            "seccompProfile",
            r#"pod and container "a" must not set securityContext.seccompProfile.type to "Unconfined""#
        )
    );
    // Before 1.19 the alpha annotations are checked instead of the fields.
    assert_eq!(only("baseline:v1.18", "seccompProfile_baseline", json!({}), spec.clone()), None);
    let md = json!({"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined",
        "container.seccomp.security.alpha.kubernetes.io/b": "localhost/x"}});
    assert_eq!(
        only("baseline:v1.18", "seccompProfile_baseline", md, spec),
        pair(
            "seccompProfile",
            r#"forbidden annotation seccomp.security.alpha.kubernetes.io/pod="unconfined""#
        )
    );
    assert_eq!(
        only("baseline", "seccompProfile_baseline", json!({}), json!({"containers": [{"name": "a"}]})),
        None
    );
}

#[test]
fn sysctls_by_version() {
    let spec = json!({"securityContext": {"sysctls": [
        {"name": "net.ipv4.tcp_rmem", "value": "1"}, {"name": "kernel.msgmax", "value": "1"},
        {"name": "net.ipv4.tcp_keepalive_time", "value": "1"}, {"name": "net.ipv4.ip_local_reserved_ports", "value": "1"},
        {"name": "kernel.shm_rmid_forced", "value": "1"},
    ]}});
    let at = |v: &str| only(v, "sysctls", json!({}), spec.clone()).map(|p| p.1);
    assert_eq!(at("baseline:latest").as_deref(), Some("kernel.msgmax"));
    assert_eq!(at("baseline:v1.31").as_deref(), Some("net.ipv4.tcp_rmem, kernel.msgmax"));
    assert_eq!(
        at("baseline:v1.28").as_deref(),
        Some("net.ipv4.tcp_rmem, kernel.msgmax, net.ipv4.tcp_keepalive_time")
    );
    assert_eq!(
        at("baseline:v1.26").as_deref(),
        Some(
            "net.ipv4.tcp_rmem, kernel.msgmax, net.ipv4.tcp_keepalive_time, net.ipv4.ip_local_reserved_ports"
        )
    );
    assert_eq!(only("baseline", "sysctls", json!({}), spec).unwrap().0, "forbidden sysctls");
    let ok = json!({"securityContext": {"sysctls": [{"name": "net.ipv4.ping_group_range", "value": "0 1"}]}});
    assert_eq!(only("baseline", "sysctls", json!({}), ok), None);
}

#[test]
fn windows_host_process() {
    let spec = json!({"securityContext": {"windowsOptions": {"hostProcess": true}},
        "containers": [{"name": "a", "securityContext": {"windowsOptions": {"hostProcess": true}}},
        {"name": "b", "securityContext": {"windowsOptions": {"hostProcess": false}}}]});
    assert_eq!(
        only("baseline", "windowsHostProcess", json!({}), spec),
        pair(
            "hostProcess",
            r#"pod and container "a" must not set securityContext.windowsOptions.hostProcess=true"#
        )
    );
}

#[test]
fn allow_privilege_escalation() {
    let spec = json!({"containers": [{"name": "a"}, {"name": "b", "securityContext": {}},
        {"name": "c", "securityContext": {"allowPrivilegeEscalation": true}},
        {"name": "d", "securityContext": {"allowPrivilegeEscalation": false}}]});
    assert_eq!(
        only("restricted", "allowPrivilegeEscalation", json!({}), spec.clone()),
        pair(
            "allowPrivilegeEscalation != false",
            r#"containers "a", "b", "c" must set securityContext.allowPrivilegeEscalation=false"#
        )
    );
    // Not a baseline check; not before 1.8; Windows pods exempt from 1.25.
    assert_eq!(only("baseline", "allowPrivilegeEscalation", json!({}), spec.clone()), None);
    assert_eq!(only("restricted:v1.7", "allowPrivilegeEscalation", json!({}), spec.clone()), None);
    let windows = with(spec, &["os"], json!({"name": "windows"}));
    assert_eq!(only("restricted:v1.25", "allowPrivilegeEscalation", json!({}), windows.clone()), None);
    assert!(only("restricted:v1.24", "allowPrivilegeEscalation", json!({}), windows).is_some());
}

#[test]
fn capabilities_restricted() {
    let spec = json!({"containers": [
        {"name": "a", "securityContext": {"capabilities": {"add": ["FOO", "BAR"]}}},
        {"name": "b", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE", "BAZ"], "drop": ["NET_RAW"]}}},
        {"name": "c", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE", "CHOWN"], "drop": ["ALL", "FOO"]}}},
        {"name": "d", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}}},
    ]});
    assert_eq!(
        only("restricted", "capabilities_restricted", json!({}), spec.clone()),
        pair(
            "unrestricted capabilities",
            r#"containers "a", "b" must set securityContext.capabilities.drop=["ALL"]; containers "a", "b", "c" must not include "BAR", "BAZ", "CHOWN", "FOO" in securityContext.capabilities.add"#
        )
    );
    // Before 1.22 the baseline check applies at restricted too.
    assert_eq!(only("restricted:v1.21", "capabilities_restricted", json!({}), spec.clone()), None);
    assert!(only("restricted:v1.21", "capabilities_baseline", json!({}), spec.clone()).is_some());
    let windows = with(spec, &["os"], json!({"name": "windows"}));
    assert_eq!(only("restricted:v1.25", "capabilities_restricted", json!({}), windows), None);
    let no_context = json!({"containers": [{"name": "a"}]});
    assert_eq!(
        only("restricted", "capabilities_restricted", json!({}), no_context),
        pair(
            "unrestricted capabilities",
            r#"container "a" must set securityContext.capabilities.drop=["ALL"]"#
        )
    );
}

#[test]
fn restricted_volumes() {
    let spec = json!({"volumes": [
        {"name": "a", "hostPath": {"path": "/"}}, {"name": "b", "nfs": {}}, {"name": "c", "emptyDir": {}},
        {"name": "d", "configMap": {"name": "x"}}, {"name": "e", "secret": {}}, {"name": "f", "csi": {}},
        {"name": "g", "persistentVolumeClaim": {}}, {"name": "h", "ephemeral": {}}, {"name": "i", "image": {}},
        {"name": "j", "downwardAPI": {}}, {"name": "k", "projected": {}}, {"name": "l", "somethingNew": {}},
        {"name": "m", "gitRepo": {}},
    ]});
    assert_eq!(
        only("restricted", "restrictedVolumes", json!({}), spec),
        pair(
            "restricted volume types",
            r#"volumes "a", "b", "l", "m" use restricted volume types "gitRepo", "hostPath", "nfs", "unknown""#
        )
    );
    let one = json!({"volumes": [{"name": "a", "hostPath": {"path": "/"}}]});
    assert_eq!(
        only("restricted", "restrictedVolumes", json!({}), one),
        pair("restricted volume types", r#"volume "a" uses restricted volume type "hostPath""#)
    );
}

#[test]
fn run_as_non_root() {
    let explicit = json!({"securityContext": {"runAsNonRoot": false}, "containers": [
        {"name": "a", "securityContext": {"runAsNonRoot": false}}, {"name": "b", "securityContext": {"runAsNonRoot": true}}]});
    assert_eq!(
        only("restricted", "runAsNonRoot", json!({}), explicit),
        pair(
            "runAsNonRoot != true",
            r#"pod and container "a" must not set securityContext.runAsNonRoot=false"#
        )
    );
    let implicit = json!({"containers": [{"name": "a"}, {"name": "b", "securityContext": {"runAsNonRoot": true}},
        {"name": "c", "securityContext": {}}]});
    assert_eq!(
        only("restricted", "runAsNonRoot", json!({}), implicit),
        pair(
            "runAsNonRoot != true",
            r#"pod or containers "a", "c" must set securityContext.runAsNonRoot=true"#
        )
    );
    let pod_level = json!({"securityContext": {"runAsNonRoot": true}, "containers": [{"name": "a"}]});
    assert_eq!(only("restricted", "runAsNonRoot", json!({}), pod_level), None);
}

#[test]
fn run_as_user() {
    let spec = json!({"securityContext": {"runAsUser": 0}, "initContainers": [{"name": "i", "securityContext": {"runAsUser": 0}}],
        "containers": [{"name": "a", "securityContext": {"runAsUser": 0}}, {"name": "b", "securityContext": {"runAsUser": 1000}}]});
    assert_eq!(
        only("restricted", "runAsUser", json!({}), spec.clone()),
        pair("runAsUser=0", r#"pod and containers "i", "a" must not set runAsUser=0"#)
    );
    assert_eq!(only("restricted:v1.22", "runAsUser", json!({}), spec), None);
    assert_eq!(
        only("restricted", "runAsUser", json!({}), json!({"securityContext": {"runAsUser": 1}})),
        None
    );
}

#[test]
fn seccomp_restricted() {
    let no_explicit = json!({"containers": [{"name": "a"}]});
    assert_eq!(
        only("restricted", "seccompProfile_restricted", json!({}), no_explicit.clone()),
        pair(
            "seccompProfile",
            r#"pod or container "a" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost""#
        )
    );
    let windows = with(no_explicit.clone(), &["os"], json!({"name": "windows"}));
    assert_eq!(only("restricted", "seccompProfile_restricted", json!({}), windows), None);
    assert_eq!(only("restricted:v1.18", "seccompProfile_restricted", json!({}), no_explicit), None);
    let pod_bad =
        json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}, "containers": [{"name": "a"}]});
    assert_eq!(
        only("restricted", "seccompProfile_restricted", json!({}), pod_bad.clone()),
        pair("seccompProfile", r#"pod must not set securityContext.seccompProfile.type to "Unconfined""#)
    );
    // It replaces the baseline seccomp check at restricted.
    assert_eq!(only("restricted", "seccompProfile_baseline", json!({}), pod_bad), None);
    let containers_bad = json!({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}, "containers": [
        {"name": "a"}, {"name": "b", "securityContext": {}},
        {"name": "c", "securityContext": {"seccompProfile": {"type": "Unconfined"}}},
        {"name": "d", "securityContext": {"seccompProfile": {"type": "Unconfined"}}},
        {"name": "e", "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}]});
    assert_eq!(
        only("restricted", "seccompProfile_restricted", json!({}), containers_bad),
        pair(
            "seccompProfile",
            r#"containers "c", "d" must not set securityContext.seccompProfile.type to "Unconfined""#
        )
    );
    let fallthrough = json!({"containers": [{"name": "a"}, {"name": "b", "securityContext": {}},
        {"name": "d", "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}]});
    assert_eq!(
        only("restricted", "seccompProfile_restricted", json!({}), fallthrough),
        pair(
            "seccompProfile",
            r#"pod or containers "a", "b" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost""#
        )
    );
}

#[test]
fn ephemeral_containers_are_checked() {
    let spec = with(
        restricted_pod(),
        &["ephemeralContainers"],
        json!([{"name": "debug", "securityContext": {"privileged": true}}]),
    );
    let got = eval("baseline", spec);
    assert_eq!(
        got,
        vec![pair("privileged", r#"container "debug" must not set securityContext.privileged=true"#).unwrap()]
    );
    // Garbage where objects belong is no panic, only what it means.
    assert!(eval("restricted", json!({"containers": "x", "volumes": 3, "securityContext": []})).is_empty());
    assert!(!eval("restricted", json!({"containers": [7]})).is_empty());
}
