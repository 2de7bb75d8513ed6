//! The Pod Security Standards as a pure function, as upstream's Pod Security Admission
//! (`k8s.io/pod-security-admission/policy`) evaluates them.
//!
//! [`evaluate`] checks a pod's `metadata` and `spec` (a Pod, or the pod template of a
//! workload: [`pod_spec_of`]) against a [`LevelVersion`] (`restricted:latest`,
//! `baseline:v1.25`...) and returns the [`Violation`]s, each with upstream's forbidden
//! reason and detail, in upstream's order (baseline checks, then restricted ones, each
//! group by check id). [`forbidden_detail`], [`enforce_message`] and [`warning`] build
//! upstream's messages from them:
//!
//! ```
//! use capstan_api::podsecurity::{enforce_message, evaluate_pod, LevelVersion};
//! let pod = serde_json::json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c"}]}});
//! let lv: LevelVersion = "restricted:latest".parse().unwrap();
//! let v = evaluate_pod(&pod, lv);
//! assert!(enforce_message("pods", "x", lv, &v).starts_with(
//!     "pods \"x\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false \
//!      (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities"
//! ));
//! ```
//!
//! Versions: each check applies from the policy version upstream introduced it in, and
//! changes with it (sysctls added in 1.27, 1.29 and 1.32; Windows pods exempt from the
//! restricted capability, privilege escalation and seccomp checks from 1.25; probe and
//! lifecycle hosts checked from 1.34). `latest` is this crate's Kubernetes version, 1.34;
//! a newer version is evaluated as `latest`. At `restricted`, a restricted check replaces
//! the baseline check it supersedes (`restrictedVolumes` → `hostPathVolumes`,
//! `capabilities_restricted` → `capabilities_baseline`, `seccompProfile_restricted` →
//! `seccompProfile_baseline`). The user-namespace relaxations upstream offers behind an
//! option are not offered (capstan's nodes do not run user-namespaced pods).

use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// The newest policy version this crate knows (`latest`): Kubernetes 1.34.
pub const LATEST_MINOR: u32 = 34;

/// A Pod Security Standards level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Anything goes.
    Privileged,
    /// Known privilege escalations are prevented.
    Baseline,
    /// Current pod hardening best practice.
    Restricted,
}

impl Level {
    /// The label value: `privileged`, `baseline`, `restricted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// A level or version that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not `privileged`, `baseline` or `restricted`.
    #[error("must be one of privileged, baseline, restricted")]
    Level(String),
    /// Not `latest` or `v1.<minor>`.
    #[error("must be \"latest\" or \"v1.x\"")]
    Version(String),
}

impl FromStr for Level {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Level, PolicyError> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            _ => Err(PolicyError::Level(s.to_string())),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy version: `latest` or `v1.<minor>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// The newest policy.
    Latest,
    /// The policy of Kubernetes 1.`minor`.
    V1(u32),
}

impl Version {
    /// The minor version the checks are chosen by (`latest` and newer versions are
    /// [`LATEST_MINOR`]).
    pub fn effective_minor(self) -> u32 {
        match self {
            Version::Latest => LATEST_MINOR,
            Version::V1(m) => m.min(LATEST_MINOR),
        }
    }
}

impl FromStr for Version {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Version, PolicyError> {
        if s == "latest" {
            return Ok(Version::Latest);
        }
        let minor = s.strip_prefix("v1.").ok_or_else(|| PolicyError::Version(s.to_string()))?;
        let canonical = minor == "0" || (!minor.starts_with('0') && !minor.is_empty());
        match minor.parse::<u32>() {
            Ok(m) if canonical && minor.bytes().all(|b| b.is_ascii_digit()) => Ok(Version::V1(m)),
            _ => Err(PolicyError::Version(s.to_string())),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::V1(m) => write!(f, "v1.{m}"),
        }
    }
}

/// A level at a version, written `restricted:latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LevelVersion {
    /// The level.
    pub level: Level,
    /// The version.
    pub version: Version,
}

impl FromStr for LevelVersion {
    type Err = PolicyError;
    /// `level` or `level:version` (version `latest` when left out).
    fn from_str(s: &str) -> Result<LevelVersion, PolicyError> {
        let (level, version) = s.split_once(':').unwrap_or((s, "latest"));
        Ok(LevelVersion { level: level.parse()?, version: version.parse()? })
    }
}

impl fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level, self.version)
    }
}

/// One failed check: upstream's forbidden reason (`host namespaces`) and detail
/// (`hostNetwork=true`; may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The check's id (`hostNamespaces`).
    pub check: &'static str,
    /// Short, always shown: `allowPrivilegeEscalation != false`.
    pub reason: String,
    /// The specifics: `container "c" must set securityContext.allowPrivilegeEscalation=false`.
    pub detail: String,
}

/// `reason (detail), reason (detail)`: upstream's `ForbiddenDetail`.
pub fn forbidden_detail(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| if v.detail.is_empty() { v.reason.clone() } else { format!("{} ({})", v.reason, v.detail) })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `reason, reason`: upstream's `ForbiddenReason` (for a namespace's many pods).
pub fn forbidden_reason(violations: &[Violation]) -> String {
    violations.iter().map(|v| v.reason.as_str()).collect::<Vec<_>>().join(", ")
}

/// The enforce failure, as upstream words the rejection of a request:
/// `pods "x" is forbidden: violates PodSecurity "restricted:latest": ...` (`resource`
/// is the plural resource name, `pods` or `deployments.apps`...).
pub fn enforce_message(resource: &str, name: &str, lv: LevelVersion, violations: &[Violation]) -> String {
    format!("{resource} {} is forbidden: {}", go_quote(name), violates(lv, violations))
}

/// `violates PodSecurity "restricted:latest": ...` (the reason inside the Forbidden status).
pub fn violates(lv: LevelVersion, violations: &[Violation]) -> String {
    format!("violates PodSecurity {}: {}", go_quote(&lv.to_string()), forbidden_detail(violations))
}

/// The warning (and audit annotation) text: `would violate PodSecurity "restricted:latest": ...`.
pub fn warning(lv: LevelVersion, violations: &[Violation]) -> String {
    format!("would violate PodSecurity {}: {}", go_quote(&lv.to_string()), forbidden_detail(violations))
}

/// The pod metadata and spec an object carries, as upstream's default pod spec
/// extractor finds them: a Pod's own; the template of a ReplicationController,
/// ReplicaSet, Deployment, StatefulSet, DaemonSet or Job; a CronJob's job template's.
pub fn pod_spec_of(kind: &str, object: &Value) -> Option<(Value, Value)> {
    let template = match kind {
        "Pod" => object,
        "ReplicationController" | "ReplicaSet" | "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
            object.get("spec")?.get("template")?
        }
        "CronJob" => object.get("spec")?.get("jobTemplate")?.get("spec")?.get("template")?,
        "PodTemplate" => object.get("template")?,
        _ => return None,
    };
    Some((
        template.get("metadata").cloned().unwrap_or(Value::Null),
        template.get("spec").cloned().unwrap_or(Value::Null),
    ))
}

/// [`evaluate`] on a Pod object.
pub fn evaluate_pod(pod: &Value, lv: LevelVersion) -> Vec<Violation> {
    evaluate(&pod["metadata"], &pod["spec"], lv)
}

type CheckFn = fn(&Value, &Value) -> Option<Violation>;

/// A check: its id, level, the function from each minimum minor version on, and the
/// baseline check it replaces at `restricted`.
struct Check {
    id: &'static str,
    restricted: bool,
    versions: &'static [(u32, CheckFn)],
    overrides: Option<&'static str>,
}

const CHECKS: &[Check] = &[
    Check { id: "appArmorProfile", restricted: false, versions: &[(0, app_armor_profile)], overrides: None },
    Check {
        id: "capabilities_baseline",
        restricted: false,
        versions: &[(0, capabilities_baseline)],
        overrides: None,
    },
    Check { id: "hostNamespaces", restricted: false, versions: &[(0, host_namespaces)], overrides: None },
    Check { id: "hostPathVolumes", restricted: false, versions: &[(0, host_path_volumes)], overrides: None },
    Check { id: "hostPorts", restricted: false, versions: &[(0, host_ports)], overrides: None },
    Check {
        id: "hostProbesAndHostLifecycle",
        restricted: false,
        versions: &[(34, host_probes_and_lifecycle)],
        overrides: None,
    },
    Check { id: "privileged", restricted: false, versions: &[(0, privileged)], overrides: None },
    Check { id: "procMount", restricted: false, versions: &[(0, proc_mount)], overrides: None },
    Check { id: "seLinuxOptions", restricted: false, versions: &[(0, se_linux_options)], overrides: None },
    Check {
        id: "seccompProfile_baseline",
        restricted: false,
        versions: &[(0, seccomp_baseline_annotations), (19, seccomp_baseline)],
        overrides: None,
    },
    Check {
        id: "sysctls",
        restricted: false,
        versions: &[(0, sysctls_1_0), (27, sysctls_1_27), (29, sysctls_1_29), (32, sysctls_1_32)],
        overrides: None,
    },
    Check {
        id: "windowsHostProcess",
        restricted: false,
        versions: &[(0, windows_host_process)],
        overrides: None,
    },
    Check {
        id: "allowPrivilegeEscalation",
        restricted: true,
        versions: &[(8, allow_privilege_escalation), (25, allow_privilege_escalation_1_25)],
        overrides: None,
    },
    Check {
        id: "capabilities_restricted",
        restricted: true,
        versions: &[(22, capabilities_restricted), (25, capabilities_restricted_1_25)],
        overrides: Some("capabilities_baseline"),
    },
    Check {
        id: "restrictedVolumes",
        restricted: true,
        versions: &[(0, restricted_volumes)],
        overrides: Some("hostPathVolumes"),
    },
    Check { id: "runAsNonRoot", restricted: true, versions: &[(0, run_as_non_root)], overrides: None },
    Check { id: "runAsUser", restricted: true, versions: &[(23, run_as_user)], overrides: None },
    Check {
        id: "seccompProfile_restricted",
        restricted: true,
        versions: &[(19, seccomp_restricted), (25, seccomp_restricted_1_25)],
        overrides: Some("seccompProfile_baseline"),
    },
];

/// The function of `check` at minor version `minor`, if the check exists then.
fn at(check: &Check, minor: u32) -> Option<CheckFn> {
    check.versions.iter().rev().find(|(min, _)| *min <= minor).map(|(_, f)| *f)
}

/// Evaluates a pod's `metadata` and `spec` against `lv`: the violations, in upstream's
/// order; empty when the pod is allowed (always at `privileged`).
pub fn evaluate(metadata: &Value, spec: &Value, lv: LevelVersion) -> Vec<Violation> {
    if lv.level == Level::Privileged {
        return Vec::new();
    }
    let minor = lv.version.effective_minor();
    let restricted = lv.level == Level::Restricted;
    let overridden: BTreeSet<&str> = if restricted {
        CHECKS.iter().filter(|c| c.restricted && at(c, minor).is_some()).filter_map(|c| c.overrides).collect()
    } else {
        BTreeSet::new()
    };
    let mut baseline: Vec<&Check> = CHECKS.iter().filter(|c| !c.restricted).collect();
    let mut restricted_checks: Vec<&Check> = CHECKS.iter().filter(|c| c.restricted).collect();
    baseline.sort_by_key(|c| c.id);
    restricted_checks.sort_by_key(|c| c.id);
    let checks = baseline.into_iter().chain(restricted_checks.into_iter().filter(|_| restricted));
    checks
        .filter(|c| !overridden.contains(c.id))
        .filter_map(|c| at(c, minor).map(|f| (c.id, f)))
        .filter_map(|(id, f)| f(metadata, spec).map(|v| Violation { check: id, ..v }))
        .collect()
}

// ---- helpers (upstream's visitContainers, joinQuote, pluralize) ----

/// Go's `%q` for the strings that occur here.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `"a", "b"` (names as upstream quotes them: plainly, between double quotes).
fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return String::new();
    }
    format!("\"{}\"", items.iter().map(|s| s.as_ref()).collect::<Vec<_>>().join("\", \""))
}

fn pluralize<'a>(singular: &'a str, plural: &'a str, n: usize) -> &'a str {
    if n == 1 {
        singular
    } else {
        plural
    }
}

fn violation(reason: impl Into<String>, detail: impl Into<String>) -> Option<Violation> {
    Some(Violation { check: "", reason: reason.into(), detail: detail.into() })
}

/// Init containers, containers and ephemeral containers, in that order.
fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |k| spec.get(k).and_then(Value::as_array).into_iter().flatten())
}

fn name(c: &Value) -> &str {
    c.get("name").and_then(Value::as_str).unwrap_or("")
}

/// `container "a"` / `containers "a", "b"`.
fn containers_phrase<S: AsRef<str>>(names: &[S]) -> String {
    format!("{} {}", pluralize("container", "containers", names.len()), join_quote(names))
}

fn sc(c: &Value) -> &Value {
    c.get("securityContext").unwrap_or(&Value::Null)
}

fn pod_sc(spec: &Value) -> &Value {
    spec.get("securityContext").unwrap_or(&Value::Null)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k)).and_then(Value::as_str)
}

fn bool_at(v: &Value, path: &[&str]) -> Option<bool> {
    path.iter().try_fold(v, |v, k| v.get(*k)).and_then(Value::as_bool)
}

fn strings_at<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn is_windows(spec: &Value) -> bool {
    str_at(spec, &["os", "name"]) == Some("windows")
}

fn sorted(set: BTreeSet<String>) -> Vec<String> {
    set.into_iter().collect()
}

// ---- baseline checks ----

/// `appArmorProfile`: only RuntimeDefault or Localhost, by field or by the deprecated
/// annotations (`runtime/default`, `localhost/*`, empty).
fn app_armor_profile(metadata: &Value, spec: &Value) -> Option<Violation> {
    let allowed = |t: Option<&str>| matches!(t, Some("RuntimeDefault") | Some("Localhost"));
    let mut setters: Vec<String> = Vec::new();
    let mut bad_values = BTreeSet::new();
    if let Some(p) = pod_sc(spec).get("appArmorProfile").filter(|p| !p.is_null()) {
        let t = str_at(p, &["type"]);
        if !allowed(t) {
            setters.push("pod".into());
            bad_values.insert(t.unwrap_or("").to_string());
        }
    }
    let mut bad_containers = Vec::new();
    for c in containers(spec) {
        if let Some(p) = sc(c).get("appArmorProfile").filter(|p| !p.is_null()) {
            let t = str_at(p, &["type"]);
            if !allowed(t) {
                bad_containers.push(name(c));
                bad_values.insert(t.unwrap_or("").to_string());
            }
        }
    }
    if !bad_containers.is_empty() {
        setters.push(containers_phrase(&bad_containers));
    }
    let mut annotations: Vec<String> = metadata
        .get("annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("container.apparmor.security.beta.kubernetes.io/"))
        .filter_map(|(k, v)| {
            let v = v.as_str().unwrap_or("");
            let ok = v.is_empty() || v == "runtime/default" || v.starts_with("localhost/");
            (!ok).then(|| format!("{k}={}", go_quote(v)))
        })
        .collect();
    annotations.sort();
    let mut values = sorted(bad_values);
    if !annotations.is_empty() {
        setters.push(pluralize("annotation", "annotations", annotations.len()).to_string());
        values.extend(annotations);
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        pluralize("forbidden AppArmor profile", "forbidden AppArmor profiles", values.len()),
        format!("{} must not set AppArmor profile type to {}", setters.join(" and "), join_quote(&values)),
    )
}

const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// `capabilities_baseline`: adds only from the default set.
fn capabilities_baseline(_: &Value, spec: &Value) -> Option<Violation> {
    let mut bad_containers = Vec::new();
    let mut caps = BTreeSet::new();
    for c in containers(spec) {
        let added = strings_at(sc(c), &["capabilities", "add"]);
        let bad: Vec<&str> = added.into_iter().filter(|a| !BASELINE_CAPABILITIES.contains(a)).collect();
        if !bad.is_empty() {
            bad_containers.push(name(c));
            caps.extend(bad.into_iter().map(String::from));
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    violation(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&bad_containers),
            join_quote(&sorted(caps))
        ),
    )
}

/// `hostNamespaces`: no hostNetwork, hostPID, hostIPC.
fn host_namespaces(_: &Value, spec: &Value) -> Option<Violation> {
    let set: Vec<&str> =
        [("hostNetwork", "hostNetwork=true"), ("hostPID", "hostPID=true"), ("hostIPC", "hostIPC=true")]
            .into_iter()
            .filter(|(k, _)| bool_at(spec, &[k]) == Some(true))
            .map(|(_, s)| s)
            .collect();
    if set.is_empty() {
        return None;
    }
    violation("host namespaces", set.join(", "))
}

fn volumes(spec: &Value) -> impl Iterator<Item = &Value> {
    spec.get("volumes").and_then(Value::as_array).into_iter().flatten()
}

fn has(v: &Value, key: &str) -> bool {
    v.get(key).is_some_and(|x| !x.is_null())
}

/// `hostPathVolumes`: no hostPath volumes.
fn host_path_volumes(_: &Value, spec: &Value) -> Option<Violation> {
    let bad: Vec<&str> = volumes(spec).filter(|v| has(v, "hostPath")).map(name).collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "hostPath volumes",
        format!("{} {}", pluralize("volume", "volumes", bad.len()), join_quote(&bad)),
    )
}

/// `hostPorts`: no hostPort.
fn host_ports(_: &Value, spec: &Value) -> Option<Violation> {
    let mut bad_containers = Vec::new();
    let mut ports = BTreeSet::new();
    for c in containers(spec) {
        let mut bad = false;
        for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
            if let Some(hp) = p.get("hostPort").and_then(Value::as_i64).filter(|hp| *hp != 0) {
                bad = true;
                ports.insert(hp.to_string());
            }
        }
        if bad {
            bad_containers.push(name(c));
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let ports = sorted(ports);
    violation(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad_containers),
            pluralize("uses", "use", bad_containers.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.join(", ")
        ),
    )
}

/// `hostProbesAndHostLifecycle` (1.34): no `host` in probes' and lifecycle handlers'
/// httpGet and tcpSocket.
fn host_probes_and_lifecycle(_: &Value, spec: &Value) -> Option<Violation> {
    let mut bad_containers = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for c in containers(spec) {
        let handlers = [
            c.get("livenessProbe"),
            c.get("readinessProbe"),
            c.get("startupProbe"),
            c.get("lifecycle").and_then(|l| l.get("postStart")),
            c.get("lifecycle").and_then(|l| l.get("preStop")),
        ];
        for h in handlers.into_iter().flatten() {
            for kind in ["httpGet", "tcpSocket"] {
                if let Some(host) = str_at(h, &[kind, "host"]).filter(|h| !h.is_empty()) {
                    bad_containers.insert(name(c).to_string());
                    hosts.insert(host.to_string());
                }
            }
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let (bad_containers, hosts) = (sorted(bad_containers), sorted(hosts));
    violation(
        "probe or lifecycle host",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad_containers),
            pluralize("uses", "use", bad_containers.len()),
            pluralize("probe or lifecycle host", "probe or lifecycle hosts", hosts.len()),
            join_quote(&hosts)
        ),
    )
}

/// `privileged`: no privileged containers.
fn privileged(_: &Value, spec: &Value) -> Option<Violation> {
    let bad: Vec<&str> =
        containers(spec).filter(|c| bool_at(sc(c), &["privileged"]) == Some(true)).map(name).collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "privileged",
        format!("{} must not set securityContext.privileged=true", containers_phrase(&bad)),
    )
}

/// `procMount`: Default only.
fn proc_mount(_: &Value, spec: &Value) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for c in containers(spec) {
        if let Some(t) = str_at(sc(c), &["procMount"]).filter(|t| *t != "Default") {
            bad.push(name(c));
            types.insert(t.to_string());
        }
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_phrase(&bad),
            join_quote(&sorted(types))
        ),
    )
}

/// `seLinuxOptions`: type empty, `container_t`, `container_init_t` or `container_kvm_t`;
/// no user, no role.
fn se_linux_options(_: &Value, spec: &Value) -> Option<Violation> {
    const TYPES: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t"];
    let mut bad_types = BTreeSet::new();
    let (mut set_user, mut set_role) = (false, false);
    let mut check = |opts: &Value| -> bool {
        let t = str_at(opts, &["type"]).unwrap_or("");
        let mut ok = true;
        if !TYPES.contains(&t) {
            ok = false;
            bad_types.insert(t.to_string());
        }
        if !str_at(opts, &["user"]).unwrap_or("").is_empty() {
            ok = false;
            set_user = true;
        }
        if !str_at(opts, &["role"]).unwrap_or("").is_empty() {
            ok = false;
            set_role = true;
        }
        ok
    };
    let mut setters: Vec<String> = Vec::new();
    if let Some(o) = pod_sc(spec).get("seLinuxOptions").filter(|o| !o.is_null()) {
        if !check(o) {
            setters.push("pod".into());
        }
    }
    let mut bad_containers = Vec::new();
    for c in containers(spec) {
        if let Some(o) = sc(c).get("seLinuxOptions").filter(|o| !o.is_null()) {
            if !check(o) {
                bad_containers.push(name(c));
            }
        }
    }
    if !bad_containers.is_empty() {
        setters.push(containers_phrase(&bad_containers));
    }
    if setters.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    if !bad_types.is_empty() {
        let types = sorted(bad_types);
        data.push(format!("{} {}", pluralize("type", "types", types.len()), join_quote(&types)));
    }
    if set_user {
        data.push("user may not be set".to_string());
    }
    if set_role {
        data.push("role may not be set".to_string());
    }
    violation(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters.join(" and "),
            data.join("; ")
        ),
    )
}

/// `seccompProfile_baseline` before 1.19: the alpha annotations.
fn seccomp_baseline_annotations(metadata: &Value, spec: &Value) -> Option<Violation> {
    let annotations = metadata.get("annotations").unwrap_or(&Value::Null);
    let ok = |v: &str| v == "runtime/default" || v == "docker/default" || v.starts_with("localhost/");
    let mut bad = BTreeSet::new();
    let mut check = |key: String| {
        if let Some(v) = annotations.get(&key).and_then(Value::as_str) {
            if !ok(v) {
                bad.insert(format!("{key}={}", go_quote(v)));
            }
        }
    };
    check("seccomp.security.alpha.kubernetes.io/pod".to_string());
    for c in containers(spec) {
        check(format!("container.seccomp.security.alpha.kubernetes.io/{}", name(c)));
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!("forbidden {} {}", pluralize("annotation", "annotations", bad.len()), sorted(bad).join(", ")),
    )
}

fn seccomp_type(v: &Value) -> Option<&str> {
    v.get("seccompProfile").filter(|p| !p.is_null()).map(|p| str_at(p, &["type"]).unwrap_or(""))
}

fn valid_seccomp(t: &str) -> bool {
    t == "RuntimeDefault" || t == "Localhost"
}

/// Shared by the seccomp checks: (bad setters, bad values, containers without a profile,
/// whether the pod set a valid one).
fn seccomp_setters(spec: &Value) -> (Vec<String>, BTreeSet<String>, Vec<&str>, bool) {
    let mut setters = Vec::new();
    let mut values = BTreeSet::new();
    let mut pod_set = false;
    if let Some(t) = seccomp_type(pod_sc(spec)) {
        if valid_seccomp(t) {
            pod_set = true;
        } else {
            setters.push("pod".to_string());
            values.insert(t.to_string());
        }
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in containers(spec) {
        match seccomp_type(sc(c)) {
            Some(t) if !valid_seccomp(t) => {
                explicit.push(name(c));
                values.insert(t.to_string());
            }
            Some(_) => {}
            None if !pod_set => implicit.push(name(c)),
            None => {}
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    (setters, values, implicit, pod_set)
}

fn bad_seccomp(setters: &[String], values: BTreeSet<String>) -> Option<Violation> {
    violation(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            setters.join(" and "),
            join_quote(&sorted(values))
        ),
    )
}

/// `seccompProfile_baseline` (1.19): if set, RuntimeDefault or Localhost.
fn seccomp_baseline(_: &Value, spec: &Value) -> Option<Violation> {
    let (setters, values, _, _) = seccomp_setters(spec);
    if setters.is_empty() {
        return None;
    }
    bad_seccomp(&setters, values)
}

const SYSCTLS_1_0: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
];
const SYSCTLS_1_27: &[&str] = &["net.ipv4.ip_local_reserved_ports"];
const SYSCTLS_1_29: &[&str] = &[
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
const SYSCTLS_1_32: &[&str] = &["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"];

fn sysctls(spec: &Value, allowed: &[&[&str]]) -> Option<Violation> {
    let bad: Vec<&str> = pod_sc(spec)
        .get("sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .filter(|n| !allowed.iter().any(|set| set.contains(n)))
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation("forbidden sysctls", bad.join(", "))
}

fn sysctls_1_0(_: &Value, spec: &Value) -> Option<Violation> {
    sysctls(spec, &[SYSCTLS_1_0])
}

fn sysctls_1_27(_: &Value, spec: &Value) -> Option<Violation> {
    sysctls(spec, &[SYSCTLS_1_0, SYSCTLS_1_27])
}

fn sysctls_1_29(_: &Value, spec: &Value) -> Option<Violation> {
    sysctls(spec, &[SYSCTLS_1_0, SYSCTLS_1_27, SYSCTLS_1_29])
}

fn sysctls_1_32(_: &Value, spec: &Value) -> Option<Violation> {
    sysctls(spec, &[SYSCTLS_1_0, SYSCTLS_1_27, SYSCTLS_1_29, SYSCTLS_1_32])
}

/// `windowsHostProcess`: no hostProcess.
fn windows_host_process(_: &Value, spec: &Value) -> Option<Violation> {
    let host_process = |v: &Value| bool_at(v, &["windowsOptions", "hostProcess"]) == Some(true);
    let mut setters = Vec::new();
    if host_process(pod_sc(spec)) {
        setters.push("pod".to_string());
    }
    let bad: Vec<&str> = containers(spec).filter(|c| host_process(sc(c))).map(name).collect();
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "hostProcess",
        format!("{} must not set securityContext.windowsOptions.hostProcess=true", setters.join(" and ")),
    )
}

// ---- restricted checks ----

/// `allowPrivilegeEscalation`: false on every container.
fn allow_privilege_escalation(_: &Value, spec: &Value) -> Option<Violation> {
    let bad: Vec<&str> = containers(spec)
        .filter(|c| bool_at(sc(c), &["allowPrivilegeEscalation"]) != Some(false))
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "allowPrivilegeEscalation != false",
        format!("{} must set securityContext.allowPrivilegeEscalation=false", containers_phrase(&bad)),
    )
}

/// From 1.25, Windows pods are exempt.
fn allow_privilege_escalation_1_25(metadata: &Value, spec: &Value) -> Option<Violation> {
    if is_windows(spec) {
        return None;
    }
    allow_privilege_escalation(metadata, spec)
}

/// `capabilities_restricted`: drop ALL, add nothing but NET_BIND_SERVICE.
fn capabilities_restricted(_: &Value, spec: &Value) -> Option<Violation> {
    let mut missing_drop = Vec::new();
    let mut adding = Vec::new();
    let mut forbidden = BTreeSet::new();
    for c in containers(spec) {
        let caps = sc(c).get("capabilities").filter(|c| !c.is_null());
        let Some(caps) = caps else {
            missing_drop.push(name(c));
            continue;
        };
        if !strings_at(caps, &["drop"]).contains(&"ALL") {
            missing_drop.push(name(c));
        }
        let bad: Vec<&str> =
            strings_at(caps, &["add"]).into_iter().filter(|a| *a != "NET_BIND_SERVICE").collect();
        if !bad.is_empty() {
            adding.push(name(c));
            forbidden.extend(bad.into_iter().map(String::from));
        }
    }
    let mut details = Vec::new();
    if !missing_drop.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&missing_drop)
        ));
    }
    if !adding.is_empty() {
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding),
            join_quote(&sorted(forbidden))
        ));
    }
    if details.is_empty() {
        return None;
    }
    violation("unrestricted capabilities", details.join("; "))
}

fn capabilities_restricted_1_25(metadata: &Value, spec: &Value) -> Option<Violation> {
    if is_windows(spec) {
        return None;
    }
    capabilities_restricted(metadata, spec)
}

/// Volume sources the restricted level allows.
const ALLOWED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The restricted volume sources, in the order upstream tells them apart.
const RESTRICTED_VOLUMES: &[&str] = &[
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "nfs",
    "iscsi",
    "glusterfs",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
];

/// `restrictedVolumes`: only the allowed volume sources.
fn restricted_volumes(_: &Value, spec: &Value) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for v in volumes(spec) {
        if ALLOWED_VOLUMES.iter().any(|k| has(v, k)) {
            continue;
        }
        bad.push(name(v));
        types.insert(RESTRICTED_VOLUMES.iter().find(|k| has(v, k)).copied().unwrap_or("unknown").to_string());
    }
    if bad.is_empty() {
        return None;
    }
    let types = sorted(types);
    violation(
        "restricted volume types",
        format!(
            "{} {} {} {} {}",
            pluralize("volume", "volumes", bad.len()),
            join_quote(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize("restricted volume type", "restricted volume types", types.len()),
            join_quote(&types)
        ),
    )
}

/// `runAsNonRoot`: true, on the pod or on every container; never false.
fn run_as_non_root(_: &Value, spec: &Value) -> Option<Violation> {
    let mut setters = Vec::new();
    let mut pod_true = false;
    match bool_at(pod_sc(spec), &["runAsNonRoot"]) {
        Some(false) => setters.push("pod".to_string()),
        Some(true) => pod_true = true,
        None => {}
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in containers(spec) {
        match bool_at(sc(c), &["runAsNonRoot"]) {
            Some(false) => explicit.push(name(c)),
            Some(true) => {}
            None if !pod_true => implicit.push(name(c)),
            None => {}
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    if !setters.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!("{} must not set securityContext.runAsNonRoot=false", setters.join(" and ")),
        );
    }
    if !implicit.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!("pod or {} must set securityContext.runAsNonRoot=true", containers_phrase(&implicit)),
        );
    }
    None
}

/// `runAsUser` (1.23): never 0.
fn run_as_user(_: &Value, spec: &Value) -> Option<Violation> {
    let zero = |v: &Value| v.get("runAsUser").and_then(Value::as_i64) == Some(0);
    let mut setters = Vec::new();
    if zero(pod_sc(spec)) {
        setters.push("pod".to_string());
    }
    let bad: Vec<&str> = containers(spec).filter(|c| zero(sc(c))).map(name).collect();
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    if setters.is_empty() {
        return None;
    }
    violation("runAsUser=0", format!("{} must not set runAsUser=0", setters.join(" and ")))
}

/// `seccompProfile_restricted` (1.19): RuntimeDefault or Localhost on the pod or on every
/// container.
fn seccomp_restricted(_: &Value, spec: &Value) -> Option<Violation> {
    let (setters, values, implicit, _) = seccomp_setters(spec);
    if !setters.is_empty() {
        return bad_seccomp(&setters, values);
    }
    if !implicit.is_empty() {
        return violation(
            "seccompProfile",
            format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&implicit)
            ),
        );
    }
    None
}

fn seccomp_restricted_1_25(metadata: &Value, spec: &Value) -> Option<Violation> {
    if is_windows(spec) {
        return None;
    }
    seccomp_restricted(metadata, spec)
}

#[cfg(test)]
mod tests;
