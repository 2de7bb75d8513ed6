//! The API aggregation layer, as upstream's kube-aggregator: `apiregistration.k8s.io/v1`
//! APIService objects for every served group-version, and the proxy to extension API
//! servers.
//!
//! * **Local APIServices.** At start the gateway writes one APIService per built-in
//!   group-version (`v1.` for the core group, `v1.apps`...) with upstream's
//!   `groupPriorityMinimum`/`versionPriority`, `spec.service: null` and the label
//!   `kube-aggregator.kubernetes.io/automanaged: onstart` (upstream's autoregister
//!   controller); versions served by CustomResourceDefinitions get theirs (priority 1000/100,
//!   `automanaged: "true"`) while they are served and lose them when they are not (upstream's
//!   crd-autoregister). Local ones carry `Available=True` (reason `Local`).
//! * **Aggregated APIServices.** One with `spec.service` names a Service (port 443 by
//!   default) whose ready endpoints (from the EndpointSlices in the watch cache) serve the
//!   group-version over HTTPS, verified with `spec.caBundle` (or not at all with
//!   `insecureSkipTLSVerify`) under the name `<service>.<namespace>.svc`. The availability
//!   check GETs `/apis/<group>/<version>` there (upstream's messages: `ServiceNotFound`,
//!   `MissingEndpoints`, `FailedDiscoveryCheck`, or `Passed`), on every change of APIServices,
//!   Services or EndpointSlices and every 10 s; the resource list it reads is what discovery
//!   (`/apis`, aggregated and legacy) shows for that group-version. Every request under
//!   `/apis/<group>/<version>` is authorized here (RBAC on the request's resource
//!   attributes, as upstream) and proxied with the caller's identity in `X-Remote-User` /
//!   `X-Remote-Group` / `X-Remote-Extra-*` (upstream's request-header authentication);
//!   responses, watches included, stream back unchanged.
//!
//! Not done as upstream: the front-proxy client certificate (the extension server cannot
//! verify that the headers come from the gateway), and priority-ordered merging of a group
//! served both locally and by an extension server (the local one wins).

use crate::auth::{Attributes as AuthAttributes, Decision, User};
use crate::http::Gateway;
use crate::service::{ApiService, DeleteOptions, WriteOptions};
use crate::status::{ApiError, ApiResult};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use capstan_api::{meta, registry};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Duration;

/// The label upstream's autoregister controllers put on the APIServices they manage.
pub const AUTOMANAGED: &str = "kube-aggregator.kubernetes.io/automanaged";
/// How often aggregated APIServices are checked besides on changes.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// How long an availability check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// An aggregated group-version: where it is served and what it serves.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The APIService's name.
    pub name: String,
    /// The Service's namespace and name.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The Service port.
    pub port: i64,
    /// `spec.caBundle` (base64 PEM), empty for none.
    pub ca_bundle: String,
    /// `spec.insecureSkipTLSVerify`.
    pub insecure: bool,
    /// `spec.groupPriorityMinimum`, `spec.versionPriority`.
    pub priority: (i64, i64),
    /// The group-version's `APIResourceList`, when the last check read one.
    pub resources: Option<Value>,
}

/// `(group, version)` → the extension server serving it.
static REMOTES: LazyLock<RwLock<BTreeMap<(String, String), Remote>>> =
    LazyLock::new(|| RwLock::new(BTreeMap::new()));

/// The extension server that serves `group/version`, if one does (and it is not served
/// locally).
pub fn remote(group: &str, version: &str) -> Option<Remote> {
    if registry::group_versions().iter().any(|(g, v)| *g == group && *v == version) {
        return None;
    }
    REMOTES.read().unwrap_or_else(|e| e.into_inner()).get(&(group.to_string(), version.to_string())).cloned()
}

/// Every aggregated group-version not served locally, by group priority (highest first),
/// then version priority.
pub fn remotes() -> Vec<Remote> {
    let local = registry::group_versions();
    let map = REMOTES.read().unwrap_or_else(|e| e.into_inner());
    let mut out: Vec<(String, String, Remote)> = map
        .iter()
        .filter(|((g, v), _)| !local.iter().any(|(lg, lv)| lg == g && lv == v))
        .map(|((g, v), r)| (g.clone(), v.clone(), r.clone()))
        .collect();
    out.sort_by(|a, b| {
        (-a.2.priority.0, &a.0, -a.2.priority.1, &a.1).cmp(&(-b.2.priority.0, &b.0, -b.2.priority.1, &b.1))
    });
    out.into_iter().map(|(_, _, r)| r).collect()
}

/// The group and version of a remote, from its APIService name `<version>.<group>`.
pub fn group_version(r: &Remote) -> (String, String) {
    match r.name.split_once('.') {
        Some((v, g)) => (g.to_string(), v.to_string()),
        None => (String::new(), r.name.clone()),
    }
}

/// Upstream's priorities of the built-in group-versions (kube-apiserver's
/// `apiVersionPriorities`); a low default for one it does not list.
fn builtin_priority(group: &str, version: &str) -> (i64, i64) {
    match (group, version) {
        ("", "v1") => (18000, 1),
        ("apiregistration.k8s.io", "v1") => (18000, 15),
        ("apps", "v1") => (17800, 15),
        ("events.k8s.io", "v1") => (17750, 15),
        ("authentication.k8s.io", "v1") => (17700, 15),
        ("authorization.k8s.io", "v1") => (17600, 15),
        ("autoscaling", "v1") => (17500, 15),
        ("autoscaling", "v2") => (17500, 30),
        ("batch", "v1") => (17400, 15),
        ("certificates.k8s.io", "v1") => (17300, 15),
        ("networking.k8s.io", "v1") => (17200, 15),
        ("policy", "v1") => (17100, 15),
        ("rbac.authorization.k8s.io", "v1") => (17000, 15),
        ("storage.k8s.io", "v1") => (16800, 15),
        ("admissionregistration.k8s.io", "v1") => (16700, 15),
        ("apiextensions.k8s.io", "v1") => (16700, 15),
        ("scheduling.k8s.io", "v1") => (16600, 15),
        ("coordination.k8s.io", "v1") => (16500, 15),
        ("node.k8s.io", "v1") => (16300, 15),
        ("discovery.k8s.io", "v1") => (16200, 15),
        ("flowcontrol.apiserver.k8s.io", "v1") => (16100, 21),
        ("resource.k8s.io", "v1") => (15900, 15),
        ("metrics.k8s.io", _) => (100, 100),
        _ => (15000, 9),
    }
}

/// An APIService's name: `<version>.<group>` (`v1.` for the core group).
pub fn name_of(group: &str, version: &str) -> String {
    format!("{version}.{group}")
}

fn apiservices() -> &'static capstan_api::ResourceInfo {
    registry::find("apiregistration.k8s.io", "v1", "apiservices").expect("apiservices are registered")
}

fn local_object(group: &str, version: &str, automanaged: &str, priority: (i64, i64)) -> Value {
    json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": name_of(group, version), "labels": {AUTOMANAGED: automanaged}},
        "spec": {"service": null, "group": group, "version": version,
                 "groupPriorityMinimum": priority.0, "versionPriority": priority.1},
    })
}

fn condition(status: &str, reason: &str, message: &str) -> Value {
    json!({"type": "Available", "status": status,
           "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
           "reason": reason, "message": message})
}

/// Writes the Available condition unless it already says the same (keeping its
/// `lastTransitionTime` while its status stays).
async fn set_available(svc: &ApiService, obj: &Value, mut cond: Value) -> ApiResult<()> {
    let conds = obj["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let old = conds.iter().find(|c| c["type"] == "Available");
    if let Some(old) = old {
        if old["status"] == cond["status"]
            && old["reason"] == cond["reason"]
            && old["message"] == cond["message"]
        {
            return Ok(());
        }
        if old["status"] == cond["status"] {
            cond["lastTransitionTime"] = old["lastTransitionTime"].clone();
        }
    }
    let mut list: Vec<Value> = conds.into_iter().filter(|c| c["type"] != "Available").collect();
    list.push(cond);
    let mut new = obj.clone();
    new["status"] = json!({"conditions": list});
    let name = meta::name(obj).unwrap_or("").to_string();
    let res = apiservices();
    svc.update_sub(&User::system(), res, None, &name, new, &WriteOptions::default(), Some("status")).await?;
    Ok(())
}

/// Writes the built-in group-versions' APIServices, then follows changes.
pub async fn start(service: Arc<ApiService>, http: Arc<Clients>) {
    let res = apiservices();
    let mut seen = Vec::new();
    for r in registry::RESOURCES {
        if seen.contains(&(r.group, r.version)) {
            continue;
        }
        seen.push((r.group, r.version));
        let obj = local_object(r.group, r.version, "onstart", builtin_priority(r.group, r.version));
        match service.create(&User::system(), res, None, obj, &WriteOptions::default()).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => tracing::warn!("failed to register a local APIService: {e}"),
        }
    }
    sync(&service, &http).await;
    tokio::spawn(async move { follow(service, http).await });
}

/// The key prefixes whose changes may change what this controller writes.
fn watched(key: &[u8]) -> bool {
    [
        &b"/registry/apiregistration.k8s.io/apiservices/"[..],
        b"/registry/core/services/",
        b"/registry/discovery.k8s.io/endpointslices/",
        b"/registry/apiextensions.k8s.io/customresourcedefinitions/",
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

async fn follow(service: Arc<ApiService>, http: Arc<Clients>) {
    let cache = service.cache().clone();
    let mut head = cache.subscribe();
    let mut since = cache.revision();
    let mut generation = registry::generation();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ticked = tokio::select! {
            r = head.changed() => { if r.is_err() { return; } false }
            _ = tick.tick() => true,
        };
        let touched = match cache.events_after(since, usize::MAX, |e| watched(&e.key)) {
            Ok((events, scanned)) => {
                since = scanned.max(since);
                !events.is_empty()
            }
            Err(_) => {
                since = cache.revision();
                true
            }
        };
        let g = registry::generation();
        let has_remotes = !REMOTES.read().unwrap_or_else(|e| e.into_inner()).is_empty();
        if touched || g != generation || (ticked && has_remotes) {
            generation = g;
            sync(&service, &http).await;
        }
    }
}

/// One level-triggered pass: CRD-served versions registered, local APIServices available,
/// aggregated ones checked.
async fn sync(service: &ApiService, http: &Clients) {
    let res = apiservices();
    let prefix = crate::keys::prefix(res, None);
    let end = capstan_storage::prefix_end(&prefix);
    let (items, _, _) = service.cache().list(&prefix, &end, 0, |_| true);
    let items: Vec<Value> = items.iter().map(|o| (**o).clone()).collect();
    let system = User::system();
    // crd-autoregister: every custom group-version not also built in.
    let builtin: Vec<(&str, &str)> = registry::RESOURCES.iter().map(|r| (r.group, r.version)).collect();
    let custom: Vec<(&str, &str)> =
        registry::group_versions().into_iter().filter(|gv| !builtin.contains(gv)).collect();
    for (g, v) in &custom {
        let name = name_of(g, v);
        if !items.iter().any(|o| meta::name(o) == Some(name.as_str())) {
            let obj = local_object(g, v, "true", (1000, 100));
            match service.create(&system, res, None, obj, &WriteOptions::default()).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => tracing::warn!(apiservice = name, "failed to register an APIService: {e}"),
            }
        }
    }
    let mut remotes = BTreeMap::new();
    let mut checks = Vec::new();
    for obj in &items {
        let name = meta::name(obj).unwrap_or("").to_string();
        let spec = &obj["spec"];
        let (g, v) = (spec["group"].as_str().unwrap_or(""), spec["version"].as_str().unwrap_or(""));
        let managed = obj["metadata"]["labels"][AUTOMANAGED].as_str() == Some("true");
        if managed && !custom.contains(&(g, v)) {
            match service.delete(&system, res, None, &name, &DeleteOptions::default()).await {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(apiservice = name, "failed to remove an APIService: {e}"),
            }
            continue;
        }
        let Some(svc) = spec.get("service").filter(|s| s.is_object()) else {
            let cond = condition("True", "Local", "Local APIServices are always available");
            if let Err(e) = set_available(service, obj, cond).await {
                if !matches!(e, ApiError::Conflict { .. } | ApiError::NotFound { .. }) {
                    tracing::warn!(apiservice = name, "failed to write an APIService status: {e}");
                }
            }
            continue;
        };
        let remote = Remote {
            name: name.clone(),
            namespace: svc["namespace"].as_str().unwrap_or("").to_string(),
            service: svc["name"].as_str().unwrap_or("").to_string(),
            port: svc["port"].as_i64().unwrap_or(443),
            ca_bundle: spec["caBundle"].as_str().unwrap_or("").to_string(),
            insecure: spec["insecureSkipTLSVerify"].as_bool() == Some(true),
            priority: (
                spec["groupPriorityMinimum"].as_i64().unwrap_or(0),
                spec["versionPriority"].as_i64().unwrap_or(0),
            ),
            resources: None,
        };
        checks.push(async move {
            let (cond, resources) = check(service, http, &remote, g, v).await;
            (obj, cond, Remote { resources, ..remote }, (g.to_string(), v.to_string()))
        });
    }
    for (obj, cond, remote, gv) in futures::future::join_all(checks).await {
        if let Err(e) = set_available(service, obj, cond).await {
            if !matches!(e, ApiError::Conflict { .. } | ApiError::NotFound { .. }) {
                tracing::warn!(apiservice = remote.name, "failed to write an APIService status: {e}");
            }
        }
        remotes.insert(gv, remote);
    }
    *REMOTES.write().unwrap_or_else(|e| e.into_inner()) = remotes;
}

/// Upstream's availability controller for one aggregated APIService: the condition, and
/// the resource list when the extension server answered.
async fn check(service: &ApiService, http: &Clients, r: &Remote, g: &str, v: &str) -> (Value, Option<Value>) {
    let target = match endpoint(service, r).await {
        Ok(t) => t,
        Err((reason, message)) => return (condition("False", reason, &message), None),
    };
    let path = format!("/apis/{g}/{v}");
    let url = format!("https://{}:{}{path}", target.host, target.port);
    let shown = format!("https://{}:{}{path}", target.ips[0], target.port);
    let fail = |why: String| {
        condition(
            "False",
            "FailedDiscoveryCheck",
            &format!("failing or missing response from {shown}: {why}"),
        )
    };
    let client = match http.client(r) {
        Ok(c) => c,
        Err(e) => return (fail(e), None),
    };
    http.resolve(&target);
    let sent = async {
        let resp =
            client.get(&url).header("accept", "application/json").send().await.map_err(|e| chain(&e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| chain(&e))?;
        Ok::<_, String>((status, body))
    };
    match tokio::time::timeout(CHECK_TIMEOUT, sent).await {
        Err(_) => (fail("context deadline exceeded".into()), None),
        Ok(Err(e)) => (fail(format!("Get \"{shown}\": {e}")), None),
        Ok(Ok((status, _))) if !status.is_success() => {
            (fail(format!("bad status from {shown}: {}", status.as_u16())), None)
        }
        Ok(Ok((_, body))) => {
            let list = serde_json::from_slice::<Value>(&body).ok().filter(|l| l["resources"].is_array());
            (condition("True", "Passed", "all checks passed"), list)
        }
    }
}

/// Where an aggregated group-version is served now.
#[derive(Debug, Clone)]
pub struct Target {
    /// `<service>.<namespace>.svc`, the TLS name.
    pub host: String,
    /// Ready endpoint addresses.
    pub ips: Vec<IpAddr>,
    /// The endpoint port.
    pub port: i64,
}

/// Resolves an APIService's Service to its ready endpoints, or upstream's reason and
/// message for why it cannot.
async fn endpoint(service: &ApiService, r: &Remote) -> Result<Target, (&'static str, String)> {
    let services = registry::find("", "v1", "services").expect("services are registered");
    let not_found =
        || ("ServiceNotFound", format!("service/{} in {:?} is not present", r.service, r.namespace));
    let svc = match service.get(&User::system(), services, Some(&r.namespace), &r.service).await {
        Ok(s) => s,
        Err(_) => return Err(not_found()),
    };
    let Some(sp) =
        svc["spec"]["ports"].as_array().into_iter().flatten().find(|p| p["port"].as_i64() == Some(r.port))
    else {
        return Err((
            "ServicePortError",
            format!("service/{} in {:?} is not listening on port {}", r.service, r.namespace, r.port),
        ));
    };
    let port_name = sp["name"].as_str().unwrap_or("").to_string();
    if let Some((ips, port)) =
        crate::cache::service_endpoints(service.cache(), &r.namespace, &r.service, &port_name)
    {
        return Ok(Target { host: format!("{}.{}.svc", r.service, r.namespace), ips, port });
    }
    Err((
        "MissingEndpoints",
        format!(
            "endpoints for service/{} in {:?} have no addresses with port name {port_name:?}",
            r.service, r.namespace
        ),
    ))
}

/// An error's causes (reqwest's own message only repeats the URL), or its message.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// HTTPS clients to extension servers: one per trust setting, resolving
/// `<service>.<namespace>.svc` to the endpoints found last.
#[derive(Default)]
pub struct Clients {
    clients: Mutex<HashMap<(String, bool), reqwest::Client>>,
    hosts: Arc<Mutex<HashMap<String, Vec<IpAddr>>>>,
}

struct Resolver(Arc<Mutex<HashMap<String, Vec<IpAddr>>>>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let known = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(name.as_str()).cloned();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let ips = known.ok_or_else(|| format!("no endpoints known for {host}"))?;
            let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// `insecureSkipTLSVerify`: any certificate is accepted (signatures still checked).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl Clients {
    fn resolve(&self, t: &Target) {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner()).insert(t.host.clone(), t.ips.clone());
    }

    fn client(&self, r: &Remote) -> Result<reqwest::Client, String> {
        let key = (r.ca_bundle.clone(), r.insecure);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let tls = if r.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            if r.ca_bundle.is_empty() {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            } else {
                let pem = base64::engine::general_purpose::STANDARD
                    .decode(&r.ca_bundle)
                    .map_err(|e| format!("caBundle is not base64: {e}"))?;
                for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let c = c.map_err(|e| format!("caBundle: {e}"))?;
                    roots.add(c).map_err(|e| format!("caBundle: {e}"))?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .dns_resolver(Arc::new(Resolver(self.hosts.clone())))
            .connect_timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .map_err(|e| chain(&e))?;
        if clients.len() > 64 {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }
}

use crate::streams::proxy::DROPPED;

/// Upstream's `RequestInfo` for a path under `/apis/<group>/<version>/`: the attributes
/// RBAC decides on.
fn request_attributes(method: &str, group: &str, rest: &[&str], watch: bool) -> AuthAttributes {
    let (namespace, rest): (String, &[&str]) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (ns.to_string(), tail),
        _ => (String::new(), rest),
    };
    let (resource, name, subresource) = match rest {
        [r] => (r.to_string(), String::new(), String::new()),
        [r, n] => (r.to_string(), n.to_string(), String::new()),
        [r, n, s, ..] => (r.to_string(), n.to_string(), s.to_string()),
        [] => (String::new(), String::new(), String::new()),
    };
    let verb = match (method, name.is_empty()) {
        ("GET" | "HEAD", _) if watch => "watch",
        ("GET" | "HEAD", true) => "list",
        ("GET" | "HEAD", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "deletecollection",
        ("DELETE", false) => "delete",
        (m, _) => return AuthAttributes { verb: m.to_ascii_lowercase(), ..attrs(group, &resource) },
    };
    AuthAttributes {
        verb: verb.to_string(),
        group: group.to_string(),
        resource,
        subresource,
        namespace,
        name,
        path: None,
    }
}

fn attrs(group: &str, resource: &str) -> AuthAttributes {
    AuthAttributes {
        verb: String::new(),
        group: group.to_string(),
        resource: resource.to_string(),
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
        path: None,
    }
}

/// Proxies a request under `/apis/<group>/<version>` to its extension server.
pub async fn proxy(
    req: &HttpRequest,
    payload: web::Payload,
    gw: &Gateway,
    user: &User,
    remote: Remote,
    segs: &[&str],
    watch: bool,
) -> ApiResult<HttpResponse> {
    let (group, _) = group_version(&remote);
    let rest = segs.get(3..).unwrap_or(&[]);
    if !rest.is_empty() {
        let a = request_attributes(req.method().as_str(), &group, rest, watch);
        if let Decision::Deny(_) = gw.service.decide(user, &a) {
            let what = if a.subresource.is_empty() {
                a.resource.clone()
            } else {
                format!("{}/{}", a.resource, a.subresource)
            };
            let scope = if a.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace {:?}", a.namespace)
            };
            return Err(ApiError::Forbidden {
                message: format!(
                    "{what}.{group} is forbidden: User {:?} cannot {} resource {what:?} in API group {group:?} {scope}",
                    user.name, a.verb
                ),
                details: None,
            });
        }
    }
    let target = endpoint(&gw.service, &remote).await.map_err(|(_, m)| ApiError::Unavailable(m))?;
    let clients = gw.aggregator.clone();
    let client = clients.client(&remote).map_err(ApiError::Unavailable)?;
    clients.resolve(&target);
    let body = crate::http::read_body(payload, gw.max_body_bytes).await?;
    let url = match req.query_string() {
        "" => format!("https://{}:{}{}", target.host, target.port, req.path()),
        q => format!("https://{}:{}{}?{q}", target.host, target.port, req.path()),
    };
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(|e| ApiError::BadRequest(format!("invalid method: {e}")))?;
    let mut out = client.request(method, &url);
    for (k, v) in req.headers() {
        let n = k.as_str();
        if DROPPED.contains(&n) || n.starts_with("impersonate-") || n.starts_with("x-remote-") {
            continue;
        }
        out = out.header(n, v.as_bytes());
    }
    out = out.header("x-remote-user", user.name.as_str());
    for g in &user.groups {
        out = out.header("x-remote-group", g.as_str());
    }
    let resp = out
        .body(body)
        .send()
        .await
        .map_err(|e| ApiError::Unavailable(format!("error trying to reach service: {}", chain(&e))))?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut builder = HttpResponse::build(status);
    for (k, v) in resp.headers() {
        if DROPPED.contains(&k.as_str()) {
            continue;
        }
        builder.append_header((k.as_str(), v.as_bytes()));
    }
    // Chunk by chunk as they come (a watch streams for as long as the client stays).
    let stream = futures::stream::unfold(Some(resp), |resp| async move {
        let mut resp = resp?;
        match resp.chunk().await {
            Ok(Some(c)) => Some((Ok(c), Some(resp))),
            Ok(None) => None,
            Err(e) => Some((Err(actix_web::error::ErrorBadGateway(e.to_string())), None)),
        }
    });
    Ok(builder.streaming(stream))
}

/// A legacy `APIResourceList` as the resources of aggregated discovery.
pub fn aggregated_resources(group: &str, version: &str, list: &Value) -> Vec<Value> {
    let entries = list["resources"].as_array().cloned().unwrap_or_default();
    let mut out: Vec<Value> = Vec::new();
    for e in entries.iter().filter(|e| !e["name"].as_str().unwrap_or("").contains('/')) {
        let name = e["name"].as_str().unwrap_or("");
        let mut r = json!({
            "resource": name,
            "singularResource": e["singularName"].as_str().unwrap_or(""),
            "responseKind": {"group": e["group"].as_str().unwrap_or(group),
                             "version": e["version"].as_str().unwrap_or(version),
                             "kind": e["kind"].as_str().unwrap_or("")},
            "scope": if e["namespaced"].as_bool() == Some(true) { "Namespaced" } else { "Cluster" },
            "verbs": e["verbs"].clone(),
        });
        for k in ["shortNames", "categories"] {
            if e[k].as_array().is_some_and(|a| !a.is_empty()) {
                r[k] = e[k].clone();
            }
        }
        let subs: Vec<Value> = entries
            .iter()
            .filter_map(|s| {
                let (parent, sub) = s["name"].as_str()?.split_once('/')?;
                (parent == name).then(|| {
                    json!({"subresource": sub,
                           "responseKind": {"group": s["group"].as_str().unwrap_or(group),
                                            "version": s["version"].as_str().unwrap_or(version),
                                            "kind": s["kind"].as_str().unwrap_or("")},
                           "verbs": s["verbs"].clone()})
                })
            })
            .collect();
        if !subs.is_empty() {
            r["subresources"] = Value::Array(subs);
        }
        out.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_attributes_as_upstream() {
        let a = request_attributes("GET", "wardle.example.com", &["namespaces", "ns", "flunders"], false);
        assert_eq!((a.verb.as_str(), a.namespace.as_str(), a.resource.as_str()), ("list", "ns", "flunders"));
        let a = request_attributes("GET", "g", &["namespaces", "ns", "flunders", "f1", "status"], false);
        assert_eq!((a.verb.as_str(), a.name.as_str(), a.subresource.as_str()), ("get", "f1", "status"));
        let a = request_attributes("GET", "g", &["namespaces", "ns"], false);
        assert_eq!((a.verb.as_str(), a.resource.as_str(), a.name.as_str()), ("get", "namespaces", "ns"));
        let a = request_attributes("GET", "g", &["fischers"], true);
        assert_eq!(a.verb, "watch");
        let a = request_attributes("DELETE", "g", &["fischers"], false);
        assert_eq!(a.verb, "deletecollection");
    }

    #[test]
    fn legacy_lists_become_aggregated_resources() {
        let list = json!({"resources": [
            {"name": "flunders", "singularName": "flunder", "namespaced": true, "kind": "Flunder",
             "verbs": ["get", "list"], "shortNames": ["fl"]},
            {"name": "flunders/status", "singularName": "", "namespaced": true, "kind": "Flunder", "verbs": ["get"]}]});
        let r = aggregated_resources("wardle.example.com", "v1alpha1", &list);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0]["scope"], "Namespaced");
        assert_eq!(r[0]["responseKind"]["group"], "wardle.example.com");
        assert_eq!(r[0]["shortNames"][0], "fl");
        assert_eq!(r[0]["subresources"][0]["subresource"], "status");
    }

    #[test]
    fn builtin_names_and_priorities() {
        assert_eq!(name_of("", "v1"), "v1.");
        assert_eq!(name_of("apps", "v1"), "v1.apps");
        assert_eq!(builtin_priority("", "v1"), (18000, 1));
        assert_eq!(builtin_priority("apps", "v1"), (17800, 15));
    }
}
