//! From a pod's container spec and its image to what the runtime runs: argv, environment,
//! user, working directory. Pure functions, as upstream's kubelet computes them.

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// The parts of an image's config a container start needs.
#[derive(Debug, Clone, Default)]
pub struct ImageDefaults {
    /// ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// CMD.
    pub cmd: Vec<String>,
    /// ENV (`K=V`).
    pub env: Vec<String>,
    /// WORKDIR.
    pub working_dir: Option<String>,
    /// USER.
    pub user: Option<String>,
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
}

/// Expands `$(VAR)` references as upstream does: a defined variable is replaced, `$$` is an
/// escaped `$`, an undefined reference stays as written.
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if bytes[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    if let Some(v) = vars.get(name) {
                        out.push_str(v);
                        i += 3 + end;
                        continue;
                    }
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

/// The argv: `command` replaces the ENTRYPOINT, `args` the CMD (a `command` without `args`
/// drops the CMD too), with `$(VAR)` expanded from the container's environment.
pub fn argv(
    container: &Value,
    image: &ImageDefaults,
    env: &[(String, String)],
) -> Result<Vec<String>, String> {
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    let command = strings(container.get("command"));
    let args = strings(container.get("args"));
    let mut argv: Vec<String> = match (command, args) {
        (Some(c), Some(a)) => c.into_iter().chain(a).collect(),
        (Some(c), None) => c,
        (None, Some(a)) => image.entrypoint.iter().cloned().chain(a).collect(),
        (None, None) => image.entrypoint.iter().chain(image.cmd.iter()).cloned().collect(),
    };
    argv = argv.iter().map(|a| expand(a, &vars)).collect();
    if argv.is_empty() {
        return Err(
            "no command specified: the container has no command and its image no entrypoint or cmd".into()
        );
    }
    Ok(argv)
}

/// Looks up ConfigMap and Secret data for `valueFrom` and `envFrom` (fetched beforehand).
pub trait EnvSources {
    /// The data of a ConfigMap (`None` when it does not exist).
    fn config_map(&self, name: &str) -> Option<&BTreeMap<String, String>>;
    /// The decoded data of a Secret (`None` when it does not exist).
    fn secret(&self, name: &str) -> Option<&BTreeMap<String, String>>;
}

/// The value of a `fieldRef` (downward API) path.
pub fn field_ref(pod: &Value, path: &str, node_name: &str) -> Option<String> {
    let md = &pod["metadata"];
    let s = |v: &Value| v.as_str().map(str::to_string);
    match path {
        "metadata.name" => s(&md["name"]),
        "metadata.namespace" => s(&md["namespace"]),
        "metadata.uid" => s(&md["uid"]),
        "spec.nodeName" => Some(node_name.to_string()),
        "spec.serviceAccountName" => s(&pod["spec"]["serviceAccountName"]),
        "status.podIP" => s(&pod["status"]["podIP"]),
        "status.hostIP" => s(&pod["status"]["hostIP"]),
        "metadata.labels" => Some(map_lines(&md["labels"])),
        "metadata.annotations" => Some(map_lines(&md["annotations"])),
        _ => {
            for (prefix, field) in
                [("metadata.labels['", "labels"), ("metadata.annotations['", "annotations")]
            {
                if let Some(key) = path.strip_prefix(prefix).and_then(|r| r.strip_suffix("']")) {
                    return md[field].get(key).and_then(Value::as_str).map(str::to_string);
                }
            }
            None
        }
    }
}

/// Labels or annotations in the downward API file format: `key="value"` lines, sorted.
pub fn map_lines(map: &Value) -> String {
    let mut lines: Vec<String> = map
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    format!("{k}={}", serde_json::to_string(v.as_str().unwrap_or("")).unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default();
    lines.sort();
    lines.join("\n")
}

/// The environment, in order: the image's ENV, HOSTNAME, the Service variables
/// (`services`, see [`super::service_env`]), `envFrom`, `env` (later wins); `$(VAR)` in
/// `env` values expanded from what precedes them.
pub fn environment(
    pod: &Value,
    container: &Value,
    image: &ImageDefaults,
    node_name: &str,
    sources: &dyn EnvSources,
    services: &[(String, String)],
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(e) = env.iter_mut().find(|(ek, _)| *ek == k) {
            e.1 = v;
        } else {
            env.push((k, v));
        }
    };
    let hostname = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
    set(&mut env, "PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    for kv in &image.env {
        if let Some((k, v)) = kv.split_once('=') {
            set(&mut env, k.to_string(), v.to_string());
        }
    }
    set(&mut env, "HOSTNAME".into(), hostname);
    for (k, v) in services {
        set(&mut env, k.clone(), v.clone());
    }
    for from in container.get("envFrom").and_then(Value::as_array).into_iter().flatten() {
        let prefix = from.get("prefix").and_then(Value::as_str).unwrap_or("");
        let (data, kind, src) = if let Some(cm) = from.get("configMapRef") {
            let name = cm["name"].as_str().unwrap_or("");
            (sources.config_map(name), "configmap", cm)
        } else if let Some(sec) = from.get("secretRef") {
            let name = sec["name"].as_str().unwrap_or("");
            (sources.secret(name), "secret", sec)
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    set(&mut env, format!("{prefix}{k}"), v.clone());
                }
            }
            None if src.get("optional").and_then(Value::as_bool) == Some(true) => {}
            None => return Err(format!("{kind} \"{}\" not found", src["name"].as_str().unwrap_or(""))),
        }
    }
    for e in container.get("env").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = e.get("name").and_then(Value::as_str) else { continue };
        let value = if let Some(v) = e.get("value").and_then(Value::as_str) {
            let vars: HashMap<String, String> = env.iter().cloned().collect();
            expand(v, &vars)
        } else if let Some(from) = e.get("valueFrom") {
            match env_value_from(pod, container, from, node_name, sources)? {
                Some(v) => v,
                None => continue,
            }
        } else {
            String::new()
        };
        set(&mut env, name.to_string(), value);
    }
    Ok(env)
}

fn env_value_from(
    pod: &Value,
    container: &Value,
    from: &Value,
    node_name: &str,
    sources: &dyn EnvSources,
) -> Result<Option<String>, String> {
    if let Some(f) = from.get("fieldRef") {
        let path = f["fieldPath"].as_str().unwrap_or("");
        return Ok(Some(field_ref(pod, path, node_name).unwrap_or_default()));
    }
    if let Some(r) = from.get("resourceFieldRef") {
        let res = r["resource"].as_str().unwrap_or("");
        return resource_field_value(container, res, r.get("divisor")).map(Some);
    }
    for (key, kind) in [("configMapKeyRef", "configmap"), ("secretKeyRef", "secret")] {
        if let Some(r) = from.get(key) {
            let name = r["name"].as_str().unwrap_or("");
            let k = r["key"].as_str().unwrap_or("");
            let optional = r.get("optional").and_then(Value::as_bool) == Some(true);
            let data = if kind == "configmap" { sources.config_map(name) } else { sources.secret(name) };
            return match data.and_then(|d| d.get(k)) {
                Some(v) => Ok(Some(v.clone())),
                None if optional => Ok(None),
                None if data.is_none() => Err(format!("{kind} \"{name}\" not found")),
                None => Err(format!(
                    "couldn't find key {k} in {kind} {}/{name}",
                    pod["metadata"]["namespace"].as_str().unwrap_or("")
                )),
            };
        }
    }
    Ok(None)
}

/// A container's resource as the downward API gives it (upstream's
/// `ExtractContainerResourceValue`): `limits.cpu`, `requests.cpu`, `limits.memory`,
/// `requests.memory`, `limits.ephemeral-storage`, `requests.ephemeral-storage` (also
/// `hugepages-*`), divided by `divisor` (default `1`) and rounded up; an unset limit is the
/// node's allocatable, an unset request 0 (a request defaults to the limit when only the
/// limit is set, as admission does).
pub fn resource_field_value(
    container: &Value,
    resource: &str,
    divisor: Option<&Value>,
) -> Result<String, String> {
    use capstan_api::quantity::parse_milli;
    let (kind, name) = resource.split_once('.').unwrap_or(("", resource));
    if !matches!(kind, "limits" | "requests")
        || !(matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-"))
    {
        return Err(format!("unsupported container resource: {resource:?}"));
    }
    let divisor = match divisor {
        None | Some(Value::Null) => 1000,
        Some(d) => {
            let text = match d {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            match parse_milli(&text) {
                Some(m) if m > 0 => m,
                _ => return Err(format!("invalid divisor {text:?} for {resource}")),
            }
        }
    };
    let res = &container["resources"];
    let set = |k: &str| res[k][name].as_str().and_then(parse_milli);
    let milli = match kind {
        "limits" => set("limits").or_else(|| crate::agent::node::allocatable_milli(name)).unwrap_or(0),
        _ => set("requests").or_else(|| set("limits")).unwrap_or(0),
    };
    // ceil(value / divisor), both in thousandths.
    let v = if milli <= 0 { 0 } else { (milli as i128 + divisor as i128 - 1) / divisor as i128 };
    Ok(v.to_string())
}

/// The ids a container's process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups, sorted, the primary group included (as containerd sets them).
    pub additional_gids: Vec<u32>,
}

/// `name:x:uid:gid:...` lines as (name, uid, gid).
fn passwd_entries(text: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some((*f.first()?, f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
    })
}

/// `name:x:gid:member,member` lines as (name, gid, members).
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let members = f.get(3).map(|m| m.split(',').filter(|m| !m.is_empty()).collect()).unwrap_or_default();
        Some((*f.first()?, f.get(2)?.parse().ok()?, members))
    })
}

/// Resolves the user as kubelet and containerd do together: the effective
/// `runAsUser`/`runAsGroup` (container over pod, see [`super::security::effective`]) over
/// the image's USER (`uid[:gid]` or names looked up in the image's /etc/passwd and
/// /etc/group, read through `files`); a uid's primary group comes from /etc/passwd (0 when
/// it has no entry). Supplementary groups: the groups of /etc/group that list the user
/// (unless `supplementalGroupsPolicy: Strict`), the pod's `supplementalGroups` and
/// `fsGroup`, and the primary group.
pub fn user(
    eff: &k8s_openapi::api::core::v1::SecurityContext,
    pod_sc: &k8s_openapi::api::core::v1::PodSecurityContext,
    image: &ImageDefaults,
    files: &dyn Fn(&str) -> Option<String>,
) -> Result<UserIds, String> {
    let passwd_file = files("/etc/passwd").unwrap_or_default();
    let group_file = files("/etc/group").unwrap_or_default();
    let id = |v: i64, what: &str| u32::try_from(v).map_err(|_| format!("invalid {what} {v}"));
    let by_uid =
        |uid: u32| passwd_entries(&passwd_file).find(|e| e.1 == uid).map(|(n, _, g)| (n.to_string(), g));
    let (uid, mut gid, username) = match eff.run_as_user {
        Some(u) => {
            let uid = id(u, "runAsUser")?;
            let entry = by_uid(uid);
            (uid, entry.as_ref().map(|e| e.1).unwrap_or(0), entry.map(|e| e.0))
        }
        None => {
            let u = image.user.as_deref().unwrap_or("");
            let (name, group) = match u.split_once(':') {
                Some((a, b)) => (a, Some(b)),
                None => (u, None),
            };
            let (uid, gid, username) = if name.is_empty() {
                (0, by_uid(0).map(|e| e.1).unwrap_or(0), by_uid(0).map(|e| e.0))
            } else if let Ok(n) = name.parse::<u32>() {
                let entry = by_uid(n);
                (n, entry.as_ref().map(|e| e.1).unwrap_or(0), entry.map(|e| e.0))
            } else {
                let (_, uid, gid) = passwd_entries(&passwd_file).find(|e| e.0 == name).ok_or_else(|| {
                    format!("unable to find user {name}: no matching entries in passwd file")
                })?;
                (uid, gid, Some(name.to_string()))
            };
            let gid = match group.filter(|g| !g.is_empty()) {
                None => gid,
                Some(g) => match g.parse::<u32>() {
                    Ok(n) => n,
                    Err(_) => {
                        group_entries(&group_file).find(|e| e.0 == g).map(|e| e.1).ok_or_else(|| {
                            format!("unable to find group {g}: no matching entries in group file")
                        })?
                    }
                },
            };
            (uid, gid, username)
        }
    };
    if let Some(g) = eff.run_as_group {
        gid = id(g, "runAsGroup")?;
    }
    let mut extra: Vec<u32> = Vec::new();
    if pod_sc.supplemental_groups_policy.as_deref() != Some("Strict") {
        if let Some(name) = username.as_deref() {
            extra.extend(
                group_entries(&group_file).filter(|g| g.0 != name && g.2.contains(&name)).map(|g| g.1),
            );
        }
    }
    for g in pod_sc.supplemental_groups.iter().flatten() {
        extra.push(id(*g, "supplemental group")?);
    }
    if let Some(g) = pod_sc.fs_group {
        extra.push(id(g, "fsGroup")?);
    }
    extra.push(gid);
    extra.sort_unstable();
    extra.dedup();
    Ok(UserIds { uid, gid, additional_gids: extra })
}

/// `/etc/hosts` for a pod (as the kubelet writes it).
pub fn hosts_file(pod: &Value, pod_ip: Option<&str>) -> String {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let hostname = pod["spec"]["hostname"].as_str().unwrap_or(name);
    let mut s = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = pod_ip {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    for alias in pod["spec"]["hostAliases"].as_array().into_iter().flatten() {
        let names = strings(alias.get("hostnames")).unwrap_or_default().join("\t");
        if let Some(ip) = alias["ip"].as_str() {
            s.push_str(&format!("{ip}\t{names}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resource_field_refs_divide_and_round_up_as_upstream() {
        let c = json!({"resources": {"limits": {"cpu": "500m", "memory": "64Mi"},
                                     "requests": {"memory": "32Mi"}}});
        let v = |r: &str, d: Option<Value>| resource_field_value(&c, r, d.as_ref());
        assert_eq!(v("limits.cpu", None).unwrap(), "1");
        assert_eq!(v("limits.cpu", Some(json!("1m"))).unwrap(), "500");
        assert_eq!(v("limits.memory", Some(json!("1Mi"))).unwrap(), "64");
        assert_eq!(v("limits.memory", None).unwrap(), (64u64 << 20).to_string());
        assert_eq!(v("requests.memory", Some(json!("1Mi"))).unwrap(), "32");
        // A request without a value takes the limit's; one without either is 0.
        assert_eq!(v("requests.cpu", Some(json!("1m"))).unwrap(), "500");
        assert_eq!(v("requests.ephemeral-storage", None).unwrap(), "0");
        // An unset limit is the node's allocatable.
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        assert_eq!(v("limits.ephemeral-storage", Some(json!("1Gi"))).unwrap(), "100");
        let none = json!({});
        assert_eq!(resource_field_value(&none, "limits.cpu", None).unwrap(), cpus.to_string());
        assert!(v("limits.cpu", Some(json!("0"))).unwrap_err().contains("invalid divisor"));
        assert!(v("limits.gpu", None).unwrap_err().contains("unsupported container resource"));
    }

    struct NoSources;
    impl EnvSources for NoSources {
        fn config_map(&self, _: &str) -> Option<&BTreeMap<String, String>> {
            None
        }
        fn secret(&self, _: &str) -> Option<&BTreeMap<String, String>> {
            None
        }
    }

    #[test]
    fn argv_rules() {
        let img =
            ImageDefaults { entrypoint: vec!["/ep".into()], cmd: vec!["c1".into()], ..Default::default() };
        let env = vec![("X".to_string(), "1".to_string())];
        assert_eq!(argv(&json!({}), &img, &env).unwrap(), ["/ep", "c1"]);
        assert_eq!(argv(&json!({"args": ["a"]}), &img, &env).unwrap(), ["/ep", "a"]);
        assert_eq!(argv(&json!({"command": ["sh"]}), &img, &env).unwrap(), ["sh"]);
        assert_eq!(
            argv(&json!({"command": ["sh"], "args": ["$(X)", "$$(X)", "$(Y)"]}), &img, &env).unwrap(),
            ["sh", "1", "$(X)", "$(Y)"]
        );
        assert!(argv(&json!({}), &ImageDefaults::default(), &env).is_err());
    }

    #[test]
    fn env_and_downward() {
        let pod =
            json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"b": "2", "a": "1"}}, "spec": {}});
        let c = json!({"env": [
            {"name": "A", "value": "x"}, {"name": "B", "value": "$(A)y"},
            {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ]});
        let img = ImageDefaults { env: vec!["PATH=/bin".into(), "Z=9".into()], ..Default::default() };
        let services =
            vec![("WEB_SERVICE_HOST".to_string(), "10.96.1.1".to_string()), ("A".into(), "svc".into())];
        let env = environment(&pod, &c, &img, "node", &NoSources, &services).unwrap();
        let m: HashMap<_, _> = env.into_iter().collect();
        assert_eq!(m["PATH"], "/bin");
        assert_eq!(m["B"], "xy");
        assert_eq!(m["N"], "ns");
        assert_eq!(m["HOSTNAME"], "p");
        // Service variables are there; the container's own env wins.
        assert_eq!(m["WEB_SERVICE_HOST"], "10.96.1.1");
        assert_eq!(m["A"], "x");
        assert_eq!(field_ref(&pod, "metadata.labels", "n").unwrap(), "a=\"1\"\nb=\"2\"");
        let missing = json!({"envFrom": [{"configMapRef": {"name": "cm"}}]});
        assert_eq!(
            environment(&pod, &missing, &img, "n", &NoSources, &[]).unwrap_err(),
            "configmap \"cm\" not found"
        );
    }

    fn ids(uid: u32, gid: u32, additional_gids: &[u32]) -> UserIds {
        UserIds { uid, gid, additional_gids: additional_gids.to_vec() }
    }

    #[test]
    fn users_and_files() {
        use k8s_openapi::api::core::v1::{PodSecurityContext, SecurityContext};
        let pod = json!({"metadata": {"name": "p"}, "spec": {"securityContext": {"runAsUser": 1000}}});
        let img = ImageDefaults { user: Some("nobody".into()), ..Default::default() };
        let files = |p: &str| {
            Some(match p {
                "/etc/passwd" => "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
                _ => "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nweb:x:33:app,other\nadm:x:4:root\n",
            }
            .to_string())
        };
        let none = (SecurityContext::default(), PodSecurityContext::default());
        assert_eq!(user(&none.0, &none.1, &img, &files).unwrap(), ids(65534, 65534, &[65534]));
        // No image user: root, with root's groups.
        assert_eq!(user(&none.0, &none.1, &ImageDefaults::default(), &files).unwrap(), ids(0, 0, &[0, 4]));
        // runAsUser: its passwd entry's group and the groups listing it.
        let sc = SecurityContext { run_as_user: Some(1000), ..Default::default() };
        assert_eq!(user(&sc, &none.1, &img, &files).unwrap(), ids(1000, 1000, &[33, 1000]));
        // runAsGroup, supplementalGroups and fsGroup; Strict leaves out /etc/group.
        let sc = SecurityContext { run_as_user: Some(1000), run_as_group: Some(3000), ..Default::default() };
        let mut pod_sc = PodSecurityContext {
            supplemental_groups: Some(vec![4000]),
            fs_group: Some(2000),
            ..Default::default()
        };
        assert_eq!(user(&sc, &pod_sc, &img, &files).unwrap(), ids(1000, 3000, &[33, 2000, 3000, 4000]));
        pod_sc.supplemental_groups_policy = Some("Strict".into());
        assert_eq!(user(&sc, &pod_sc, &img, &files).unwrap(), ids(1000, 3000, &[2000, 3000, 4000]));
        // A uid with no passwd entry: group 0; numeric uid:gid from the image.
        let sc = SecurityContext { run_as_user: Some(4242), ..Default::default() };
        assert_eq!(user(&sc, &none.1, &img, &files).unwrap(), ids(4242, 0, &[0]));
        let numeric = ImageDefaults { user: Some("7:app".into()), ..Default::default() };
        assert_eq!(user(&none.0, &none.1, &numeric, &files).unwrap(), ids(7, 1000, &[1000]));
        let missing = ImageDefaults { user: Some("ghost".into()), ..Default::default() };
        assert!(user(&none.0, &none.1, &missing, &files).unwrap_err().contains("unable to find user ghost"));
        assert!(hosts_file(&pod, Some("10.0.0.2")).contains("10.0.0.2\tp\n"));
    }
}
