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
        let (kind, name) = res.split_once('.').unwrap_or(("", res));
        let q = container["resources"][kind][name].as_str().unwrap_or("0");
        return Ok(Some(q.to_string()));
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

/// Resolves the user: `securityContext.runAsUser/runAsGroup` (container, then pod) over the
/// image's USER (`uid[:gid]` or names looked up in the image's /etc/passwd and /etc/group).
pub fn user(
    pod: &Value,
    container: &Value,
    image: &ImageDefaults,
    passwd: &dyn Fn(&str) -> Option<String>,
) -> Result<(u32, u32, Vec<u32>), String> {
    let sc = |field: &str| {
        container["securityContext"][field]
            .as_u64()
            .or_else(|| pod["spec"]["securityContext"][field].as_u64())
    };
    let mut uid = 0u32;
    let mut gid: Option<u32> = None;
    if let Some(u) = image.user.as_deref().filter(|u| !u.is_empty()) {
        let (name, group) = match u.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (u, None),
        };
        let passwd_file = passwd("/etc/passwd").unwrap_or_default();
        let group_file = passwd("/etc/group").unwrap_or_default();
        match name.parse::<u32>() {
            Ok(n) => uid = n,
            Err(_) => {
                let entry = passwd_file
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.first() == Some(&name))
                    .ok_or_else(|| {
                        format!("unable to find user {name}: no matching entries in passwd file")
                    })?;
                uid = entry.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
                gid = entry.get(3).and_then(|s| s.parse().ok());
            }
        }
        if let Some(g) = group {
            gid = Some(match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => group_file
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.first() == Some(&g))
                    .and_then(|f| f.get(2).and_then(|s| s.parse().ok()))
                    .ok_or_else(|| format!("unable to find group {g}: no matching entries in group file"))?,
            });
        }
    }
    if let Some(u) = sc("runAsUser") {
        uid = u as u32;
    }
    if let Some(g) = sc("runAsGroup") {
        gid = Some(g as u32);
    }
    let mut extra: Vec<u32> = pod["spec"]["securityContext"]["supplementalGroups"]
        .as_array()
        .map(|a| a.iter().filter_map(|g| g.as_u64().map(|g| g as u32)).collect())
        .unwrap_or_default();
    if let Some(fs) = pod["spec"]["securityContext"]["fsGroup"].as_u64() {
        extra.push(fs as u32);
    }
    Ok((uid, gid.unwrap_or(0), extra))
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

    #[test]
    fn users_and_files() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"securityContext": {"runAsUser": 1000}}});
        let img = ImageDefaults { user: Some("nobody".into()), ..Default::default() };
        let files = |p: &str| {
            Some(if p == "/etc/passwd" { "nobody:x:65534:65534::/:/bin/sh\n" } else { "" }.to_string())
        };
        assert_eq!(
            user(&json!({"metadata": {}, "spec": {}}), &json!({}), &img, &files).unwrap(),
            (65534, 65534, vec![])
        );
        assert_eq!(user(&pod, &json!({}), &img, &files).unwrap().0, 1000);
        assert!(hosts_file(&pod, Some("10.0.0.2")).contains("10.0.0.2\tp\n"));
    }
}
