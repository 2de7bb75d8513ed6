//! The audit log: one `audit.k8s.io/v1` Event per request, as JSON lines, at the level the
//! policy gives (None, Metadata, Request, RequestResponse), in a file rotated by size.
//!
//! The policy is upstream's `audit.k8s.io/v1` `Policy`: the first rule whose users,
//! userGroups, verbs, resources (group, resources incl. `resource/subresource`,
//! resourceNames), namespaces and nonResourceURLs all match decides the level; no match
//! is `None`. One entry per request, at stage `ResponseComplete` (for watches and other
//! streams: when the response starts). Lines are written by a thread of their own, in
//! request order, so a slow disk never holds up a request; the file is rotated when it
//! would pass `maxSizeMB`, keeping `maxBackups` older files as `<path>.1` (newest) …
//! `<path>.N`.

use crate::auth::User;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// How much of a request is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Default)]
pub enum Level {
    /// Not recorded.
    #[default]
    None,
    /// Who, what, when, and the response code.
    Metadata,
    /// Metadata and the request body.
    Request,
    /// Metadata and both bodies.
    RequestResponse,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
}

/// An audit policy.
#[derive(Debug, Clone, Deserialize)]
pub struct Policy {
    #[serde(default)]
    rules: Vec<Rule>,
}

impl Policy {
    /// Everything at `level`.
    pub fn all(level: Level) -> Policy {
        Policy {
            rules: vec![Rule {
                level,
                users: Vec::new(),
                user_groups: Vec::new(),
                verbs: Vec::new(),
                resources: Vec::new(),
                namespaces: Vec::new(),
                non_resource_urls: Vec::new(),
            }],
        }
    }

    /// Parses an `audit.k8s.io/v1` Policy (YAML or JSON).
    pub fn parse(text: &str) -> Result<Policy, String> {
        let v: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("invalid audit policy: {e}"))?;
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind != "Policy" {
            return Err(format!("invalid audit policy: kind is {kind:?}, want Policy"));
        }
        serde_json::from_value(v).map_err(|e| format!("invalid audit policy: {e}"))
    }

    /// The level of a request.
    pub fn level(&self, r: &Record) -> Level {
        for rule in &self.rules {
            if !rule.users.is_empty() && !rule.users.contains(&r.user.name) {
                continue;
            }
            if !rule.user_groups.is_empty() && !r.user.groups.iter().any(|g| rule.user_groups.contains(g)) {
                continue;
            }
            if !rule.verbs.is_empty() && !rule.verbs.contains(&r.verb) {
                continue;
            }
            match &r.object {
                Some(o) => {
                    if !rule.non_resource_urls.is_empty() && rule.resources.is_empty() {
                        continue;
                    }
                    if !rule.namespaces.is_empty() && !rule.namespaces.contains(&o.namespace) {
                        continue;
                    }
                    if !rule.resources.is_empty() && !rule.resources.iter().any(|g| group_matches(g, o)) {
                        continue;
                    }
                }
                None => {
                    if !rule.resources.is_empty() || !rule.namespaces.is_empty() {
                        continue;
                    }
                    if !rule.non_resource_urls.is_empty()
                        && !rule.non_resource_urls.iter().any(|u| {
                            u == "*"
                                || *u == r.path
                                || (u.ends_with('*') && r.path.starts_with(&u[..u.len() - 1]))
                        })
                    {
                        continue;
                    }
                }
            }
            return rule.level;
        }
        Level::None
    }
}

fn group_matches(g: &GroupResources, o: &ObjectRef) -> bool {
    if g.group != o.group {
        return false;
    }
    let combined = if o.subresource.is_empty() {
        o.resource.clone()
    } else {
        format!("{}/{}", o.resource, o.subresource)
    };
    let resource_ok = g.resources.is_empty()
        || g.resources.iter().any(|r| {
            *r == combined
                || *r == "*"
                || (r.starts_with("*/") && r[2..] == o.subresource)
                || (r.ends_with("/*") && r[..r.len() - 2] == o.resource)
        });
    resource_ok && (g.resource_names.is_empty() || g.resource_names.contains(&o.name))
}

/// The object a resource request is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectRef {
    /// Resource (plural).
    pub resource: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// API group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Subresource.
    pub subresource: String,
}

/// Reads the object reference and the Kubernetes verb of a request from its method, path
/// and query (None for non-resource requests).
pub fn object_ref(method: &str, path: &str, watch: bool) -> (Option<ObjectRef>, String) {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return (None, method.to_ascii_lowercase()),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() => (*ns, more),
        _ => ("", rest),
    };
    let (resource, name, sub) = match rest {
        [r] => (*r, "", ""),
        [r, n] => (*r, *n, ""),
        [r, n, s, ..] => (*r, *n, *s),
        [] => return (None, method.to_ascii_lowercase()),
    };
    // `namespaces/<ns>` names the namespace itself.
    let (namespace, name) =
        if resource == "namespaces" && namespace.is_empty() { (name, name) } else { (namespace, name) };
    let verb = match (method, name.is_empty()) {
        ("GET" | "HEAD", true) if watch => "watch",
        ("GET" | "HEAD", true) => "list",
        ("GET" | "HEAD", false) if watch => "watch",
        ("GET" | "HEAD", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "deletecollection",
        ("DELETE", false) => "delete",
        (m, _) => return (None, m.to_ascii_lowercase()),
    };
    let o = ObjectRef {
        resource: resource.into(),
        namespace: namespace.into(),
        name: name.into(),
        group: group.into(),
        version: version.into(),
        subresource: sub.into(),
    };
    (Some(o), verb.into())
}

/// One request, as the gateway saw it.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// The acting user (after impersonation).
    pub user: User,
    /// The authenticated user when it impersonated `user`.
    pub impersonator: Option<User>,
    /// Kubernetes verb.
    pub verb: String,
    /// The path (no query).
    pub path: String,
    /// Path and query.
    pub uri: String,
    /// The object reference of a resource request.
    pub object: Option<ObjectRef>,
    /// Client address.
    pub source_ip: String,
    /// `User-Agent`.
    pub user_agent: String,
    /// Response code.
    pub code: u16,
    /// The response's Status (reason, message) for failures.
    pub status: Option<Value>,
    /// The request body, when the level records it.
    pub request_object: Option<Value>,
    /// The response body, when the level records it.
    pub response_object: Option<Value>,
    /// When the request arrived.
    pub received: jiff::Timestamp,
}

/// Where and how the audit log is written.
#[derive(Debug, Clone)]
pub struct Config {
    /// The log file.
    pub path: PathBuf,
    /// The policy.
    pub policy: Policy,
    /// Rotate before the file passes this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub max_backups: u32,
}

/// The audit log writer.
pub struct Auditor {
    policy: Policy,
    tx: std::sync::Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Auditor {
    /// Writes what is queued before returning.
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn ts(t: jiff::Timestamp) -> String {
    format!("{:.6}", t).replace("+00:00", "Z")
}

impl Auditor {
    /// Opens (creates) the log and starts its writer thread.
    pub fn start(cfg: Config) -> std::io::Result<Auditor> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = open(&cfg.path)?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let (path, max, backups) = (cfg.path.clone(), cfg.max_bytes.max(1024), cfg.max_backups);
        let writer = std::thread::Builder::new().name("audit".into()).spawn(move || {
            let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
            while let Ok(line) = rx.recv() {
                if size > 0 && size + line.len() as u64 > max {
                    let _ = file.flush();
                    rotate(&path, backups);
                    match open(&path) {
                        Ok(f) => {
                            file = f;
                            size = 0;
                        }
                        Err(e) => tracing::error!("failed to reopen the audit log {}: {e}", path.display()),
                    }
                }
                if let Err(e) = file.write_all(&line) {
                    tracing::error!("failed to write the audit log {}: {e}", path.display());
                }
                size += line.len() as u64;
            }
        })?;
        Ok(Auditor { policy: cfg.policy, tx: std::sync::Mutex::new(Some(tx)), writer: Some(writer) })
    }

    /// The level `r` is recorded at (to decide which bodies to keep).
    pub fn level(&self, r: &Record) -> Level {
        self.policy.level(r)
    }

    /// Records a finished request.
    pub fn record(&self, r: &Record) {
        let level = self.policy.level(r);
        if level == Level::None {
            return;
        }
        let mut e = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": level.as_str(),
            "auditID": uuid::Uuid::new_v4().to_string(),
            "stage": "ResponseComplete",
            "requestURI": r.uri,
            "verb": r.verb,
            "user": r.user.to_user_info(),
            "sourceIPs": [r.source_ip],
            "userAgent": r.user_agent,
            "responseStatus": {"metadata": {}, "code": r.code},
            "requestReceivedTimestamp": ts(r.received),
            "stageTimestamp": ts(jiff::Timestamp::now()),
            "annotations": {"authorization.k8s.io/decision": if r.code == 403 { "forbid" } else { "allow" }},
        });
        if let Some(imp) = &r.impersonator {
            e["impersonatedUser"] = r.user.to_user_info();
            e["user"] = imp.to_user_info();
        }
        if let Some(o) = &r.object {
            let mut or = json!({"resource": o.resource, "apiVersion": o.version});
            for (k, v) in [
                ("namespace", &o.namespace),
                ("name", &o.name),
                ("apiGroup", &o.group),
                ("subresource", &o.subresource),
            ] {
                if !v.is_empty() {
                    or[k] = json!(v);
                }
            }
            e["objectRef"] = or;
        }
        if let Some(s) = &r.status {
            for k in ["status", "reason", "message"] {
                if let Some(v) = s.get(k) {
                    e["responseStatus"][k] = v.clone();
                }
            }
        }
        if level >= Level::Request {
            if let Some(b) = &r.request_object {
                e["requestObject"] = b.clone();
            }
        }
        if level >= Level::RequestResponse {
            if let Some(b) = &r.response_object {
                e["responseObject"] = b.clone();
            }
        }
        let mut line = serde_json::to_vec(&e).unwrap_or_default();
        line.push(b'\n');
        if let Ok(tx) = self.tx.lock() {
            if let Some(tx) = tx.as_ref() {
                let _ = tx.send(line);
            }
        }
    }
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

fn rotate(path: &Path, backups: u32) {
    let name = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    if backups == 0 {
        let _ = std::fs::remove_file(path);
        return;
    }
    let _ = std::fs::remove_file(name(backups));
    for n in (1..backups).rev() {
        let _ = std::fs::rename(name(n), name(n + 1));
    }
    let _ = std::fs::rename(path, name(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user: &str, method: &str, path: &str) -> Record {
        let (object, verb) = object_ref(method, path, false);
        Record {
            user: User::new(user, vec!["devs".into()]),
            verb,
            path: path.into(),
            uri: path.into(),
            object,
            code: 200,
            ..Default::default()
        }
    }

    #[test]
    fn requests_read_as_upstream() {
        let (o, v) = object_ref("GET", "/api/v1/namespaces/dev/pods/web/log", false);
        assert_eq!(v, "get");
        let o = o.unwrap();
        assert_eq!(
            (o.resource.as_str(), o.namespace.as_str(), o.name.as_str(), o.subresource.as_str()),
            ("pods", "dev", "web", "log")
        );
        assert_eq!(object_ref("GET", "/apis/apps/v1/deployments", true).1, "watch");
        assert_eq!(object_ref("DELETE", "/api/v1/namespaces/dev/pods", false).1, "deletecollection");
        let (ns, v) = object_ref("DELETE", "/api/v1/namespaces/dev", false);
        assert_eq!(v, "delete");
        assert_eq!(ns.unwrap().namespace, "dev");
        assert_eq!(object_ref("GET", "/healthz", false), (None, "get".to_string()));
    }

    #[test]
    fn first_matching_rule_decides() {
        let p = Policy::parse(
            r#"
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: None
  users: ["system:kube-proxy"]
- level: RequestResponse
  resources: [{group: "", resources: ["secrets"]}]
- level: Request
  verbs: [create]
  namespaces: [dev]
- level: None
  nonResourceURLs: ["/healthz*"]
- level: Metadata
"#,
        )
        .unwrap();
        assert_eq!(p.level(&record("system:kube-proxy", "GET", "/api/v1/pods")), Level::None);
        assert_eq!(
            p.level(&record("bob", "GET", "/api/v1/namespaces/dev/secrets/s")),
            Level::RequestResponse
        );
        assert_eq!(p.level(&record("bob", "POST", "/api/v1/namespaces/dev/configmaps")), Level::Request);
        assert_eq!(p.level(&record("bob", "POST", "/api/v1/namespaces/prod/configmaps")), Level::Metadata);
        assert_eq!(p.level(&record("bob", "GET", "/healthz/ready")), Level::None);
        assert_eq!(p.level(&record("bob", "GET", "/version")), Level::Metadata);
        assert!(Policy::parse("kind: Nope").is_err());
    }

    #[test]
    fn lines_rotate_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let a = Auditor::start(Config {
            path: path.clone(),
            policy: Policy::all(Level::Metadata),
            max_bytes: 2048,
            max_backups: 2,
        })
        .unwrap();
        for i in 0..40 {
            a.record(&record(&format!("user-{i}"), "GET", "/api/v1/pods"));
        }
        drop(a); // writes everything queued
        let current = std::fs::read_to_string(&path).unwrap();
        let first: Value = serde_json::from_str(current.lines().next().unwrap()).unwrap();
        assert_eq!(first["kind"], "Event");
        assert_eq!(first["verb"], "list");
        assert!(std::fs::metadata(&path).unwrap().len() <= 2048 + 600);
        assert!(dir.path().join("audit.log.1").exists() && dir.path().join("audit.log.2").exists());
        assert!(!dir.path().join("audit.log.3").exists(), "only two backups are kept");
    }
}
