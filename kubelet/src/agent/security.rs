//! From a pod's and a container's `securityContext` to what the runtime applies, as
//! upstream's kubelet computes it (`pkg/securitycontext`, `pkg/kubelet/kuberuntime`) and
//! hands it to the runtime over CRI. Pure functions.
//!
//! * **Merge**: the pod's `runAsUser`, `runAsGroup`, `runAsNonRoot`, `seLinuxOptions` and
//!   `seccompProfile` apply to every container; a container's own field wins
//!   ([`effective`]). `capabilities`, `privileged`, `readOnlyRootFilesystem`,
//!   `allowPrivilegeEscalation` and `procMount` exist only on containers.
//! * **runAsNonRoot** is checked against the effective user before the container is
//!   created ([`verify_run_as_non_root`]), with upstream's messages; a failure is the
//!   container's `CreateContainerConfigError`.
//! * **Runtime settings** ([`runtime_security`]): capabilities added and dropped,
//!   `no_new_privs` when `allowPrivilegeEscalation` is false (never for privileged
//!   containers or ones adding `CAP_SYS_ADMIN`, which API validation forbids anyway),
//!   seccomp (container's profile, else the pod's, else the node's default: capstan's is
//!   `RuntimeDefault`, upstream's `Unconfined`), `Localhost` profiles under the node's
//!   `seccomp/` directory, masked paths by `procMount`, the pod's sysctls.
//! * **Sysctls** are admitted as upstream's kubelet does by default: only the safe set
//!   ([`SAFE_SYSCTLS`]), and no network sysctl in a `hostNetwork` pod; anything else
//!   rejects the pod (phase Failed, reason [`SYSCTL_FORBIDDEN`]).

use crate::runtime::security::{DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS};
use crate::runtime::{SeccompProfile, Security};
use k8s_openapi::api::core::v1::{PodSecurityContext, SecurityContext};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// The pod status reason of a pod rejected for its sysctls (upstream's).
pub const SYSCTL_FORBIDDEN: &str = "SysctlForbidden";

/// upstream's safe sysctls: namespaced and isolated, so any pod may set them.
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// The node's security settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSecurity {
    /// Run containers that name no seccomp profile under `RuntimeDefault` (capstan's
    /// default, secure by default) instead of `Unconfined` (upstream's default; node config
    /// `seccompDefault: false`).
    pub seccomp_default: bool,
    /// Where `Localhost` seccomp profiles are (`<node data dir>/seccomp`).
    pub seccomp_root: PathBuf,
}

/// The pod's `securityContext` (empty when absent or unreadable).
pub fn pod_context(pod: &Value) -> Result<PodSecurityContext, String> {
    match pod["spec"].get("securityContext") {
        None | Some(Value::Null) => Ok(PodSecurityContext::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("invalid pod securityContext: {e}")),
    }
}

/// The container's effective security context: the pod's fields that apply to
/// containers, overridden by the container's own (upstream's
/// `DetermineEffectiveSecurityContext`, plus `seccompProfile`, which the kubelet resolves
/// the same way).
pub fn effective(pod: &Value, container: &Value) -> Result<SecurityContext, String> {
    let pod_sc = pod_context(pod)?;
    let mut eff = SecurityContext {
        run_as_user: pod_sc.run_as_user,
        run_as_group: pod_sc.run_as_group,
        run_as_non_root: pod_sc.run_as_non_root,
        se_linux_options: pod_sc.se_linux_options,
        seccomp_profile: pod_sc.seccomp_profile,
        app_armor_profile: pod_sc.app_armor_profile,
        ..Default::default()
    };
    let c: SecurityContext = match container.get("securityContext") {
        None | Some(Value::Null) => return Ok(eff),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| format!("invalid securityContext of container {:?}: {e}", container["name"]))?,
    };
    macro_rules! over {
        ($($f:ident),*) => { $( if c.$f.is_some() { eff.$f = c.$f; } )* };
    }
    over!(
        se_linux_options,
        capabilities,
        privileged,
        run_as_user,
        run_as_group,
        run_as_non_root,
        read_only_root_filesystem,
        allow_privilege_escalation,
        proc_mount,
        seccomp_profile,
        app_armor_profile
    );
    Ok(eff)
}

/// The image's user as the kubelet reads it (`getImageUser`): a numeric user (the part
/// before `:`) is a uid, anything else a name; no user is root (uid 0).
pub fn image_user(user: Option<&str>) -> (Option<i64>, String) {
    let user = user.unwrap_or("");
    let name = user.split(':').next().unwrap_or("");
    if name.is_empty() {
        return (Some(0), String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

/// `<name>_<namespace>(<uid>)`, upstream's `format.Pod`.
pub fn pod_desc(pod: &Value) -> String {
    let md = &pod["metadata"];
    let s = |k: &str| md[k].as_str().unwrap_or("").to_string();
    format!("{}_{}({})", s("name"), s("namespace"), s("uid"))
}

/// Checks `runAsNonRoot` against the effective user (upstream's `verifyRunAsNonRoot`,
/// messages verbatim): `image_uid`/`image_username` as [`image_user`] gives them.
pub fn verify_run_as_non_root(
    pod: &Value,
    container_name: &str,
    eff: &SecurityContext,
    image_uid: Option<i64>,
    image_username: &str,
) -> Result<(), String> {
    if eff.run_as_non_root != Some(true) {
        return Ok(());
    }
    let desc = pod_desc(pod);
    if let Some(uid) = eff.run_as_user {
        if uid == 0 {
            return Err(format!(
                "container's runAsUser breaks non-root policy (pod: {desc:?}, container: {container_name})"
            ));
        }
        return Ok(());
    }
    match image_uid {
        None if !image_username.is_empty() => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({image_username}), cannot verify user is non-root (pod: {desc:?}, container: {container_name})"
        )),
        Some(0) => Err(format!(
            "container has runAsNonRoot and image will run as root (pod: {desc:?}, container: {container_name})"
        )),
        Some(uid) if !(0..=i32::MAX as i64).contains(&uid) => Err(format!(
            "container has runAsNonRoot and image has an invalid user id ({uid}). (Must be 1-({})): must be between 0 and {}, inclusive (pod: {desc:?}, container: {container_name})",
            i32::MAX,
            i32::MAX
        )),
        _ => Ok(()),
    }
}

/// A `Localhost` profile's file: `localhostProfile` is relative to the node's seccomp
/// directory and may not leave it.
fn localhost_profile(root: &Path, name: Option<&str>) -> Result<PathBuf, String> {
    let name = name.unwrap_or("");
    let rel = Path::new(name);
    if name.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!(
            "invalid seccomp localhostProfile {name:?}: must be a relative path under the node's seccomp directory"
        ));
    }
    Ok(root.join(rel))
}

/// The runtime settings of a container whose effective context is `eff`, in pod `pod`.
/// `sysctls`: the pod's admitted sysctls ([`admit_sysctls`]).
pub fn runtime_security(
    eff: &SecurityContext,
    sysctls: &BTreeMap<String, String>,
    node: &NodeSecurity,
) -> Result<Security, String> {
    let privileged = eff.privileged == Some(true);
    let caps = eff.capabilities.clone().unwrap_or_default();
    let add = caps.add.unwrap_or_default();
    let drop = caps.drop.unwrap_or_default();
    let adds_sys_admin = add.iter().any(|c| {
        let c = c.to_ascii_uppercase();
        c == "SYS_ADMIN" || c == "CAP_SYS_ADMIN"
    });
    let no_new_privs = eff.allow_privilege_escalation == Some(false) && !privileged && !adds_sys_admin;
    let seccomp =
        match eff.seccomp_profile.as_ref().map(|p| (p.type_.as_str(), p.localhost_profile.as_deref())) {
            Some(("Unconfined", _)) => SeccompProfile::Unconfined,
            Some(("RuntimeDefault", _)) => SeccompProfile::RuntimeDefault,
            Some(("Localhost", name)) => {
                SeccompProfile::Localhost(localhost_profile(&node.seccomp_root, name)?)
            }
            Some((other, _)) => return Err(format!("unknown seccomp profile type {other:?}")),
            None if node.seccomp_default => SeccompProfile::RuntimeDefault,
            None => SeccompProfile::Unconfined,
        };
    let unmasked = eff.proc_mount.as_deref() == Some("Unmasked");
    let paths =
        |list: &[&str]| if unmasked { Vec::new() } else { list.iter().map(|s| s.to_string()).collect() };
    Ok(Security {
        privileged,
        add_capabilities: add,
        drop_capabilities: drop,
        no_new_privs,
        seccomp,
        readonly_rootfs: eff.read_only_root_filesystem == Some(true),
        masked_paths: paths(DEFAULT_MASKED_PATHS),
        readonly_paths: paths(DEFAULT_READONLY_PATHS),
        sysctls: sysctls.clone(),
    })
}

/// A sysctl name with `/` separators in its dotted form (upstream's
/// `convertSysctlVariableToDotsSeparator`: `net/ipv4/conf/eth0.100/x` is
/// `net.ipv4.conf.eth0/100.x`).
fn dotted(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|c| {
                if c == '/' {
                    '.'
                } else if c == '.' {
                    '/'
                } else {
                    c
                }
            })
            .collect(),
        _ => name.to_string(),
    }
}

/// The pod's sysctls if the node admits them (upstream's default allowlist: the safe set,
/// none of the network ones with `hostNetwork`), else the rejection message
/// (`forbidden sysctl: "kernel.msgmax" not allowlisted`).
pub fn admit_sysctls(pod: &Value) -> Result<BTreeMap<String, String>, String> {
    let pod_sc = pod_context(pod)?;
    let host_net = pod["spec"]["hostNetwork"].as_bool() == Some(true);
    let host_ipc = pod["spec"]["hostIPC"].as_bool() == Some(true);
    let mut out = BTreeMap::new();
    for s in pod_sc.sysctls.unwrap_or_default() {
        let name = dotted(&s.name);
        if !SAFE_SYSCTLS.contains(&name.as_str()) {
            return Err(format!("forbidden sysctl: {name:?} not allowlisted"));
        }
        if name.starts_with("net.") && host_net {
            return Err(format!("forbidden sysctl: {name:?} not allowed with host net enabled"));
        }
        if name.starts_with("kernel.") && host_ipc {
            return Err(format!("forbidden sysctl: {name:?} not allowed with host ipc enabled"));
        }
        out.insert(name, s.value);
    }
    Ok(out)
}

/// The pod's `fsGroup` and whether its volumes are changed only when their root does not
/// match already (`fsGroupChangePolicy: OnRootMismatch`).
pub fn fs_group(pod: &Value) -> Result<Option<(u32, bool)>, String> {
    let sc = pod_context(pod)?;
    let Some(g) = sc.fs_group else { return Ok(None) };
    let g = u32::try_from(g).map_err(|_| format!("invalid fsGroup {g}"))?;
    Ok(Some((g, sc.fs_group_change_policy.as_deref() == Some("OnRootMismatch"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> NodeSecurity {
        NodeSecurity { seccomp_default: true, seccomp_root: PathBuf::from("/var/lib/capstan/node/seccomp") }
    }

    fn pod(sc: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u-1"}, "spec": {"securityContext": sc}})
    }

    #[test]
    fn container_fields_win_over_the_pod() {
        let p = pod(json!({
            "runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true,
            "seccompProfile": {"type": "Unconfined"}, "fsGroup": 2000,
        }));
        let c = json!({"name": "c", "securityContext": {"runAsUser": 2000, "seccompProfile": {"type": "RuntimeDefault"}}});
        let eff = effective(&p, &c).unwrap();
        assert_eq!(
            (eff.run_as_user, eff.run_as_group, eff.run_as_non_root),
            (Some(2000), Some(3000), Some(true))
        );
        assert_eq!(eff.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let plain = effective(&p, &json!({"name": "c"})).unwrap();
        assert_eq!(plain.run_as_user, Some(1000));
        assert_eq!(plain.seccomp_profile.unwrap().type_, "Unconfined");
        assert_eq!(effective(&json!({"spec": {}}), &json!({})).unwrap(), SecurityContext::default());
        assert!(effective(&pod(json!({"runAsUser": "x"})), &c).is_err());
    }

    #[test]
    fn run_as_non_root_messages() {
        let p = pod(json!({"runAsNonRoot": true}));
        let eff = effective(&p, &json!({"name": "c"})).unwrap();
        let (uid, name) = image_user(None);
        assert_eq!(
            verify_run_as_non_root(&p, "c", &eff, uid, &name).unwrap_err(),
            "container has runAsNonRoot and image will run as root (pod: \"p_ns(u-1)\", container: c)"
        );
        let (uid, name) = image_user(Some("nobody"));
        assert_eq!(
            verify_run_as_non_root(&p, "c", &eff, uid, &name).unwrap_err(),
            "container has runAsNonRoot and image has non-numeric user (nobody), cannot verify user is non-root (pod: \"p_ns(u-1)\", container: c)"
        );
        let (uid, name) = image_user(Some("65534:65534"));
        assert!(verify_run_as_non_root(&p, "c", &eff, uid, &name).is_ok());
        let root = effective(&p, &json!({"securityContext": {"runAsUser": 0}})).unwrap();
        assert_eq!(
            verify_run_as_non_root(&p, "c", &root, Some(1000), "").unwrap_err(),
            "container's runAsUser breaks non-root policy (pod: \"p_ns(u-1)\", container: c)"
        );
        let user = effective(&p, &json!({"securityContext": {"runAsUser": 10}})).unwrap();
        assert!(verify_run_as_non_root(&p, "c", &user, Some(0), "").is_ok());
        // Not asked: anything goes.
        assert!(verify_run_as_non_root(&p, "c", &SecurityContext::default(), Some(0), "").is_ok());
        let off = effective(&p, &json!({"securityContext": {"runAsNonRoot": false}})).unwrap();
        assert!(verify_run_as_non_root(&p, "c", &off, Some(0), "").is_ok());
    }

    #[test]
    fn runtime_settings() {
        let hardened = json!({"securityContext": {
            "capabilities": {"drop": ["ALL"]}, "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
        }});
        let s = runtime_security(&effective(&pod(json!({})), &hardened).unwrap(), &BTreeMap::new(), &node())
            .unwrap();
        assert_eq!(s.drop_capabilities, ["ALL"]);
        assert!(s.no_new_privs && s.readonly_rootfs && !s.privileged);
        // No profile named: the node's default.
        assert_eq!(s.seccomp, SeccompProfile::RuntimeDefault);
        let upstream = NodeSecurity { seccomp_default: false, ..node() };
        let s = runtime_security(&SecurityContext::default(), &BTreeMap::new(), &upstream).unwrap();
        assert_eq!(s.seccomp, SeccompProfile::Unconfined);
        assert!(!s.no_new_privs);
        assert_eq!(s.masked_paths.len(), DEFAULT_MASKED_PATHS.len());
        // Privileged or CAP_SYS_ADMIN: privilege escalation stays allowed.
        for sc in [
            json!({"privileged": true, "allowPrivilegeEscalation": false}),
            json!({"capabilities": {"add": ["SYS_ADMIN"]}, "allowPrivilegeEscalation": false}),
        ] {
            let eff = effective(&pod(json!({})), &json!({"securityContext": sc})).unwrap();
            assert!(!runtime_security(&eff, &BTreeMap::new(), &node()).unwrap().no_new_privs);
        }
        let local = effective(
            &pod(json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/audit.json"}})),
            &json!({"securityContext": {"procMount": "Unmasked"}}),
        )
        .unwrap();
        let s = runtime_security(&local, &BTreeMap::new(), &node()).unwrap();
        assert_eq!(
            s.seccomp,
            SeccompProfile::Localhost(PathBuf::from("/var/lib/capstan/node/seccomp/profiles/audit.json"))
        );
        assert!(s.masked_paths.is_empty() && s.readonly_paths.is_empty());
        let escape = effective(
            &pod(json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "../../etc/x"}})),
            &json!({}),
        )
        .unwrap();
        assert!(runtime_security(&escape, &BTreeMap::new(), &node())
            .unwrap_err()
            .contains("localhostProfile"));
    }

    #[test]
    fn sysctls_and_fs_group() {
        let ok = pod(json!({"sysctls": [
            {"name": "net.ipv4.ip_local_port_range", "value": "1024 65000"},
            {"name": "kernel/shm_rmid_forced", "value": "1"},
        ]}));
        let s = admit_sysctls(&ok).unwrap();
        assert_eq!(s["kernel.shm_rmid_forced"], "1");
        assert_eq!(s["net.ipv4.ip_local_port_range"], "1024 65000");
        let unsafe_ = pod(json!({"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}));
        assert_eq!(
            admit_sysctls(&unsafe_).unwrap_err(),
            "forbidden sysctl: \"kernel.msgmax\" not allowlisted"
        );
        let mut host = ok.clone();
        host["spec"]["hostNetwork"] = json!(true);
        assert_eq!(
            admit_sysctls(&host).unwrap_err(),
            "forbidden sysctl: \"net.ipv4.ip_local_port_range\" not allowed with host net enabled"
        );
        assert_eq!(dotted("net/ipv4/conf/eth0.100/forwarding"), "net.ipv4.conf.eth0/100.forwarding");
        assert_eq!(fs_group(&pod(json!({"fsGroup": 2000}))).unwrap(), Some((2000, false)));
        assert_eq!(
            fs_group(&pod(json!({"fsGroup": 5, "fsGroupChangePolicy": "OnRootMismatch"}))).unwrap(),
            Some((5, true))
        );
        assert_eq!(fs_group(&pod(json!({}))).unwrap(), None);
    }
}
