//! Dynamic admission: MutatingAdmissionWebhook and ValidatingAdmissionWebhook, as upstream's
//! `k8s.io/apiserver/pkg/admission/plugin/webhook`.
//!
//! The configurations (`admissionregistration.k8s.io/v1` Mutating- and
//! ValidatingWebhookConfiguration) are read from the watch cache on every write, in name
//! order. A webhook is called when one of its `rules` matches the request (operation, group,
//! version, resource with `*` and `resource/subresource` forms, scope), its
//! `namespaceSelector` matches the namespace's labels, its `objectSelector` matches the new
//! or the old object's labels, and its `matchConditions` (CEL over `object`, `oldObject`,
//! `request`) are all true. The call is an `AdmissionReview` v1 POSTed over HTTPS (reqwest
//! with rustls and ring, no OpenSSL) to `clientConfig.url`, or to a Service resolved to one
//! of its ready endpoints straight from the cache (the TLS name is `<svc>.<ns>.svc`), with
//! `caBundle` as the only trust root (the system's roots without one), bounded by
//! `timeoutSeconds`. A call that fails (refused, timed out, garbage, a patch that does not
//! apply) follows `failurePolicy`: `Ignore` lets the write through, `Fail` refuses it with
//! upstream's `failed calling webhook` internal error. A denial is upstream's Status
//! (`admission webhook "x" denied the request: ...`, code at least 400); warnings go to the
//! client as `Warning` headers; a mutating webhook's `JSONPatch` is applied with the
//! json-patch crate. Mutating webhooks run one after the other (then once more, for those
//! with `reinvocationPolicy: IfNeeded`, when a later one changed the object); validating
//! webhooks run concurrently. A dry-run write calls only webhooks whose `sideEffects` is
//! `None` or `NoneOnDryRun` and is refused for the others, as upstream.
//!
//! Not done as upstream: `matchPolicy: Equivalent` matches the one version capstan serves
//! of a kind (no conversion to another served version), `authorizer.serviceAccount(...)` in
//! `matchConditions` (the `authorizer` variable itself is there, see [`Authz`]), and
//! reinvocation of the built-in plugins.

use super::{Attributes, Context, Operation, Outcome, Plugin};
use crate::status::{ApiError, ApiResult};
use base64::Engine;
use capstan_api::selectors::LabelSelector;
use capstan_api::{meta, registry};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const GROUP: &str = "admissionregistration.k8s.io";

/// Whether admission of `attrs` must skip dynamic admission: the admission configuration
/// kinds themselves are never sent to webhooks or policies (as upstream), so a broken
/// webhook can always be removed.
pub(super) fn exempt(attrs: &Attributes<'_>) -> bool {
    attrs.res.group == GROUP
}

/// Whether one rule (`RuleWithOperations` or `NamedRuleWithOperations`) matches.
pub(super) fn rule_matches(rule: &Value, attrs: &Attributes<'_>) -> bool {
    let list = |k: &str| -> Vec<&str> {
        rule.get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    let has = |k: &str, v: &str| list(k).iter().any(|x| *x == "*" || *x == v);
    if !has("operations", attrs.operation.as_str()) {
        return false;
    }
    if !has("apiGroups", attrs.res.group) || !has("apiVersions", attrs.res.version) {
        return false;
    }
    let resource_ok = list("resources").iter().any(|r| {
        let (res, sub) = r.split_once('/').unwrap_or((r, ""));
        let res_ok = res == "*" || res == attrs.res.plural;
        let sub_ok = match attrs.subresource {
            None => sub.is_empty(),
            Some(s) => sub == "*" || sub == s,
        };
        res_ok && sub_ok
    });
    if !resource_ok {
        return false;
    }
    let names = list("resourceNames");
    if !names.is_empty() && !names.contains(&attrs.name) {
        return false;
    }
    match rule.get("scope").and_then(Value::as_str).unwrap_or("*") {
        // A Namespace is cluster-scoped.
        "Cluster" => !attrs.res.namespaced(),
        "Namespaced" => attrs.res.namespaced(),
        _ => true,
    }
}

fn selector(v: Option<&Value>) -> Result<LabelSelector, String> {
    LabelSelector::from_label_selector_json(v.unwrap_or(&Value::Null))
}

/// Whether `namespaceSelector` matches: the labels of the request's namespace (of the
/// Namespace itself when it is the object); cluster-scoped objects always match.
pub(super) async fn namespace_matches(
    ctx: &Context,
    sel: Option<&Value>,
    attrs: &Attributes<'_>,
    obj: &Value,
) -> ApiResult<bool> {
    let sel = selector(sel).map_err(ApiError::Internal)?;
    if sel.is_empty() {
        return Ok(true);
    }
    if attrs.res.group.is_empty() && attrs.res.kind == "Namespace" {
        let o = if attrs.operation == Operation::Delete { attrs.old.unwrap_or(obj) } else { obj };
        return Ok(sel.matches(&meta::labels(o)));
    }
    let Some(ns) = attrs.namespace.filter(|_| attrs.res.namespaced()) else { return Ok(true) };
    let nss = registry::find("", "v1", "namespaces").expect("namespaces are registered");
    match ctx.get(nss, None, ns).await? {
        Some(n) => Ok(sel.matches(&meta::labels(&n))),
        None => Err(ApiError::namespace_not_found(ns)),
    }
}

/// Whether `objectSelector` matches the new or the old object's labels.
pub(super) fn object_matches(
    sel: Option<&Value>,
    attrs: &Attributes<'_>,
    obj: &Value,
) -> Result<bool, String> {
    let sel = selector(sel)?;
    if sel.is_empty() {
        return Ok(true);
    }
    let new = attrs.operation != Operation::Delete && sel.matches(&meta::labels(obj));
    Ok(new || attrs.old.is_some_and(|o| sel.matches(&meta::labels(o))))
}

/// The `AdmissionRequest` of a write, without `object`/`oldObject` (CEL's `request`).
pub(super) fn request(attrs: &Attributes<'_>, uid: &str) -> Value {
    let r = attrs.res;
    let kind = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let resource = json!({"group": r.group, "version": r.version, "resource": r.plural});
    let options_kind = match attrs.operation {
        Operation::Create => "CreateOptions",
        Operation::Update => "UpdateOptions",
        Operation::Delete => "DeleteOptions",
    };
    let mut user = json!({"username": attrs.user.name, "groups": attrs.user.groups});
    if !attrs.user.uid.is_empty() {
        user["uid"] = json!(attrs.user.uid);
    }
    if !attrs.user.extra.is_empty() {
        user["extra"] = json!(attrs.user.extra);
    }
    let mut req = json!({
        "uid": uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "name": attrs.name,
        "operation": attrs.operation.as_str(),
        "userInfo": user,
        "dryRun": attrs.dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": options_kind},
    });
    if let Some(s) = attrs.subresource {
        req["subResource"] = json!(s);
        req["requestSubResource"] = json!(s);
    }
    if let Some(ns) = attrs.namespace {
        req["namespace"] = json!(ns);
    }
    req
}

/// `object` and `oldObject` as upstream sends them (no `object` on DELETE).
pub(super) fn objects(attrs: &Attributes<'_>, obj: &Value) -> (Value, Value) {
    let with_type = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.entry("apiVersion").or_insert_with(|| json!(attrs.res.api_version()));
            o.entry("kind").or_insert_with(|| json!(attrs.res.kind));
        }
        v
    };
    let new = if attrs.operation == Operation::Delete { Value::Null } else { with_type(obj) };
    let old = attrs.old.map(with_type).unwrap_or(Value::Null);
    (new, old)
}

/// A JSON value as CEL sees it in Kubernetes: integers are `int` (serde would make
/// positive ones `uint`).
pub(super) fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<String, cel::Value> = m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(map)
        }
    }
}

/// The `authorizer` CEL variable (upstream's `library.Authz`): checks made with the API
/// service's authorizer for the request's user. `authorizer.group(g).resource(r)`
/// (`.subresource(s)`, `.namespace(ns)`, `.name(n)`) or `authorizer.path(p)`, then
/// `.check(verb)` gives a decision with `.allowed()`, `.reason()`, `.errored()` and
/// `.error()`; `authorizer.requestResource` is the request's own resource. Not done:
/// `serviceAccount(ns, name)` (checks for another user).
pub(crate) struct Authz {
    /// The API service's authorizer.
    pub authorizer: Arc<dyn crate::auth::Authorizer>,
    /// Whom checks are made for.
    pub user: crate::auth::User,
    /// The request's resource: group, resource, subresource, namespace, name.
    pub request: [String; 5],
}

/// The `authorizer` of a request, when the context has an authorizer.
pub(crate) fn authz_for(ctx: &Context, attrs: &Attributes<'_>) -> Option<Authz> {
    ctx.authorizer().map(|a| Authz {
        authorizer: a.clone(),
        user: attrs.user.clone(),
        request: [
            attrs.res.group.to_string(),
            attrs.res.plural.to_string(),
            attrs.subresource.unwrap_or("").to_string(),
            attrs.namespace.unwrap_or("").to_string(),
            attrs.name.to_string(),
        ],
    })
}

const AUTHZ_FIELDS: [&str; 5] = ["group", "resource", "subresource", "namespace", "name"];

fn cel_str(m: &cel::objects::Map, k: &str) -> String {
    match m.map.get(&cel::objects::Key::String(Arc::new(k.to_string()))) {
        Some(cel::Value::String(s)) => s.to_string(),
        _ => String::new(),
    }
}

fn with_key(this: &cel::Value, k: &str, v: cel::Value) -> cel::Value {
    let mut map: HashMap<String, cel::Value> = HashMap::new();
    if let cel::Value::Map(m) = this {
        for (key, val) in m.map.iter() {
            if let cel::objects::Key::String(s) = key {
                map.insert(s.to_string(), val.clone());
            }
        }
    }
    map.insert(k.to_string(), v);
    cel::Value::from(map)
}

fn add_authorizer(ctx: &mut cel::Context, authz: &Authz) {
    use cel::extractors::This;
    let mut request: HashMap<String, cel::Value> = AUTHZ_FIELDS
        .iter()
        .zip(authz.request.iter())
        .map(|(k, v)| (k.to_string(), cel::Value::String(Arc::new(v.clone()))))
        .collect();
    request.insert("@kind".into(), cel::Value::String(Arc::new("check".into())));
    let mut root: HashMap<String, cel::Value> = HashMap::new();
    root.insert("requestResource".into(), cel::Value::from(request));
    root.insert("@kind".into(), cel::Value::String(Arc::new("check".into())));
    ctx.add_variable_from_value("authorizer", cel::Value::from(root));
    for k in AUTHZ_FIELDS.iter().chain(["path"].iter()) {
        let k = *k;
        let _ = ctx.add_function(k, move |This(this): This<cel::Value>, v: Arc<String>| -> cel::Value {
            with_key(&this, k, cel::Value::String(v))
        });
    }
    let authorizer = authz.authorizer.clone();
    let user = authz.user.clone();
    let _ = ctx.add_function("check", move |This(this): This<cel::Value>, verb: Arc<String>| -> cel::Value {
        let cel::Value::Map(m) = &this else { return cel::Value::Null };
        let path = cel_str(m, "path");
        let attrs = crate::auth::Attributes {
            verb: verb.to_string(),
            group: cel_str(m, "group"),
            resource: cel_str(m, "resource"),
            subresource: cel_str(m, "subresource"),
            namespace: cel_str(m, "namespace"),
            name: cel_str(m, "name"),
            path: (!path.is_empty()).then_some(path),
        };
        let (allowed, reason) = match authorizer.authorize(&user, &attrs) {
            crate::auth::Decision::Allow(r) => (true, r),
            crate::auth::Decision::Deny(r) => (false, r),
        };
        let mut d: HashMap<String, cel::Value> = HashMap::new();
        d.insert("allowed".into(), cel::Value::Bool(allowed));
        d.insert("reason".into(), cel::Value::String(Arc::new(reason)));
        cel::Value::from(d)
    });
    let _ = ctx.add_function("allowed", |This(this): This<cel::Value>| -> cel::Value {
        match &this {
            cel::Value::Map(m) => m
                .map
                .get(&cel::objects::Key::String(Arc::new("allowed".into())))
                .cloned()
                .unwrap_or(cel::Value::Bool(false)),
            _ => cel::Value::Bool(false),
        }
    });
    let _ = ctx.add_function("reason", |This(this): This<cel::Value>| -> cel::Value {
        match &this {
            cel::Value::Map(m) => cel::Value::String(Arc::new(cel_str(m, "reason"))),
            _ => cel::Value::String(Arc::new(String::new())),
        }
    });
    // capstan's authorizer does not fail: a decision is never an error.
    let _ = ctx
        .add_function("errored", |This(_this): This<cel::Value>| -> cel::Value { cel::Value::Bool(false) });
    let _ = ctx.add_function("error", |This(_this): This<cel::Value>| -> cel::Value {
        cel::Value::String(Arc::new(String::new()))
    });
}

/// Evaluates a CEL expression with `vars` bound (the compiled program is cached), and the
/// `authorizer` variable when `authz` is given and the expression uses it.
pub(crate) fn cel_eval_authz(
    expr: &str,
    vars: &[(&str, cel::Value)],
    authz: Option<&Authz>,
) -> Result<cel::Value, String> {
    let program = capstan_api::crd::rules::compile(expr)?;
    // Upstream's per-call cost limit, estimated from the sizes of the values before the run.
    capstan_api::crd::cost::check_call_with(&program, vars)?;
    let mut ctx = capstan_api::crd::rules::context();
    for (name, v) in vars {
        ctx.add_variable_from_value(*name, v.clone());
    }
    if let Some(a) = authz.filter(|_| program.references().has_variable("authorizer")) {
        add_authorizer(&mut ctx, a);
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| program.execute(&ctx)))
        .map_err(|_| "evaluation failed".to_string())?
        .map_err(|e| e.to_string())
}

/// Evaluates `matchConditions`: `Ok(false)` as soon as one is false, `Err` when one cannot
/// be evaluated (the caller applies `failurePolicy`).
pub(super) fn match_conditions(
    conds: Option<&Value>,
    vars: &[(&str, &Value)],
    authz: Option<&Authz>,
) -> Result<bool, String> {
    let vars: Vec<(&str, cel::Value)> = vars.iter().map(|(n, v)| (*n, to_cel(v))).collect();
    for c in conds.and_then(Value::as_array).into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("");
        let expr = c["expression"].as_str().unwrap_or("");
        match cel_eval_authz(expr, &vars, authz) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => return Ok(false),
            Ok(_) => return Err(format!("matchCondition {name:?}: the expression must evaluate to bool")),
            Err(e) => return Err(format!("matchCondition {name:?}: {e}")),
        }
    }
    Ok(true)
}

/// The HTTPS side: one reqwest client per trust root (`caBundle`), and the addresses of
/// Services' endpoints for the resolver.
#[derive(Default)]
pub(crate) struct Http {
    clients: Mutex<HashMap<String, reqwest::Client>>,
    services: Arc<Mutex<HashMap<String, Vec<IpAddr>>>>,
    /// The bus, for hooks at `bus:capstan.v1.admission.<integrator>.<hook>`.
    bus: Option<Arc<dyn capstan_bus::Bus>>,
}

/// The URL scheme of a hook served on the bus.
pub const BUS_SCHEME: &str = "bus:";

/// Resolves `<svc>.<ns>.svc` to the endpoint addresses the plugin found in the cache just
/// before the call; other names through the system resolver.
struct ServiceResolver(Arc<Mutex<HashMap<String, Vec<IpAddr>>>>);

impl reqwest::dns::Resolve for ServiceResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let known = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&host).cloned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match known {
                Some(ips) => ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An error's causes (reqwest's own message only repeats the URL), or its message.
fn chain(e: &dyn std::error::Error) -> String {
    let Some(first) = e.source() else { return e.to_string() };
    let mut s = first.to_string();
    let mut cur = first.source();
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

impl Http {
    fn client(&self, ca_bundle: &str) -> Result<reqwest::Client, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(ca_bundle) {
            return Ok(c.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        if ca_bundle.is_empty() {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        } else {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(ca_bundle)
                .map_err(|e| format!("caBundle is not base64: {e}"))?;
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                let c = c.map_err(|e| format!("caBundle: {e}"))?;
                roots.add(c).map_err(|e| format!("caBundle: {e}"))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .dns_resolver(Arc::new(ServiceResolver(self.services.clone())))
            .no_proxy()
            .build()
            .map_err(|e| chain(&e))?;
        if clients.len() > 256 {
            clients.clear();
        }
        clients.insert(ca_bundle.to_string(), client.clone());
        Ok(client)
    }

    /// The URL of `clientConfig`; a Service is resolved to a ready endpoint now.
    pub(crate) async fn url(&self, ctx: &Context, cc: &Value) -> Result<String, String> {
        if let Some(u) = cc.get("url").and_then(Value::as_str) {
            return Ok(u.to_string());
        }
        let svc = cc.get("service").ok_or("clientConfig has neither url nor service")?;
        let ns = svc["namespace"].as_str().unwrap_or("");
        let name = svc["name"].as_str().unwrap_or("");
        let port = svc["port"].as_i64().unwrap_or(443);
        let path = svc["path"].as_str().unwrap_or("/");
        let services = registry::find("", "v1", "services").expect("services are registered");
        let host = format!("{name}.{ns}.svc");
        let not_found = || format!("service \"{name}\" not found");
        let Some(s) = ctx.get(services, Some(ns), name).await.map_err(|e| e.to_string())? else {
            return Err(not_found());
        };
        let Some(sp) =
            s["spec"]["ports"].as_array().into_iter().flatten().find(|p| p["port"].as_i64() == Some(port))
        else {
            return Err(format!("service \"{name}\" has no port {port}"));
        };
        let port_name = sp["name"].as_str().unwrap_or("");
        match crate::cache::service_endpoints(ctx.cache(), ns, name, port_name) {
            Some((ips, target)) => {
                self.services.lock().unwrap_or_else(|e| e.into_inner()).insert(host.clone(), ips);
                let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
                Ok(format!("https://{host}:{target}{path}"))
            }
            None => Err(format!("no endpoints available for service \"{name}\"")),
        }
    }

    /// POSTs `review`; returns the `response` or why the call failed.
    async fn call(&self, ctx: &Context, w: &Value, review: &Value, uid: &str) -> Result<Value, String> {
        let cc = &w["clientConfig"];
        let timeout = Duration::from_secs(w["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30));
        let url = self.url(ctx, cc).await.map_err(|e| format!("failed to call webhook: {e}"))?;
        if let Some(subject) = url.strip_prefix(BUS_SCHEME) {
            return self.call_bus(subject, timeout, review, uid).await;
        }
        let body = self
            .post_https(&url, cc["caBundle"].as_str().unwrap_or(""), timeout, review)
            .await
            .map_err(|e| format!("failed to call webhook: {e}"))?;
        response_of(&body, uid)
    }

    /// POSTs `body` as JSON to the HTTPS `url` (with `?timeout=Ns`), trusting `ca_bundle`
    /// (the system's roots when empty), within `timeout`; the response body of a 2xx
    /// answer, or why the call failed, worded as Go's HTTP client (`Post "url": ...`).
    pub(crate) async fn post_https(
        &self,
        url: &str,
        ca_bundle: &str,
        timeout: Duration,
        body: &Value,
    ) -> Result<bytes::Bytes, String> {
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}timeout={}s", timeout.as_secs());
        let client = self.client(ca_bundle)?;
        let sent = async {
            let resp = client.post(&url).json(body).send().await.map_err(|e| chain(&e))?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| chain(&e))?;
            Ok::<_, String>((status, body))
        };
        let (status, body) = match tokio::time::timeout(timeout, sent).await {
            Err(_) => return Err(format!("Post \"{url}\": context deadline exceeded")),
            Ok(Err(e)) => return Err(format!("Post \"{url}\": {e}")),
            Ok(Ok(r)) => r,
        };
        if !status.is_success() {
            return Err(format!("the server responded with the status code {}", status.as_u16()));
        }
        Ok(body)
    }

    /// The same exchange as a bus request/reply: the AdmissionReview JSON as payload, the
    /// reply the AdmissionReview with the response. Only `capstan.v1.admission.` subjects
    /// (one per integrator, which only it may serve), so a configuration cannot make the
    /// gateway publish elsewhere.
    async fn call_bus(
        &self,
        subject: &str,
        timeout: Duration,
        review: &Value,
        uid: &str,
    ) -> Result<Value, String> {
        let all = capstan_bus::subjects::admission_all();
        let prefix = all.trim_end_matches('>');
        if !subject.starts_with(prefix)
            || subject.len() == prefix.len()
            || !capstan_bus::subjects::is_valid_subject(subject)
        {
            return Err(format!(
                "failed to call webhook: {subject:?} is not an admission subject ({prefix}<integrator>.<hook>)"
            ));
        }
        let bus = self.bus.as_ref().ok_or("failed to call webhook: this gateway has no bus")?;
        let payload = bytes::Bytes::from(serde_json::to_vec(review).map_err(|e| e.to_string())?);
        let sent = bus.request(subject.to_string(), payload, timeout);
        let body = match tokio::time::timeout(timeout, sent).await {
            Err(_) => {
                return Err(format!(
                    "failed to call webhook: bus request to {subject:?}: context deadline exceeded"
                ))
            }
            Ok(Err(e)) => return Err(format!("failed to call webhook: bus request to {subject:?}: {e}")),
            Ok(Ok(b)) => b,
        };
        response_of(&body, uid)
    }
}

/// The `response` of an AdmissionReview answer, checked as upstream.
fn response_of(body: &[u8], uid: &str) -> Result<Value, String> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| format!("received invalid webhook response: {e}"))?;
    if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
        return Err(
            "received invalid webhook response: expected admission.k8s.io/v1, Kind=AdmissionReview".into()
        );
    }
    let response = review
        .get("response")
        .filter(|r| r.is_object())
        .ok_or("received invalid webhook response: webhook response was absent".to_string())?;
    let got = response["uid"].as_str().unwrap_or("");
    if got != uid {
        return Err(format!("expected response.uid={uid:?}, got {got:?}"));
    }
    Ok(response.clone())
}

/// The error a failed call gives under `failurePolicy: Fail`.
fn call_error(name: &str, reason: &str) -> ApiError {
    ApiError::Relayed {
        code: 500,
        reason: "InternalError".into(),
        message: format!("Internal error occurred: failed calling webhook \"{name}\": {reason}"),
    }
}

/// A denial as upstream's `ToStatusErr`.
fn denial(name: &str, status: Option<&Value>) -> ApiError {
    let s = status.cloned().unwrap_or(Value::Null);
    let code = s["code"].as_u64().map(|c| c as u16).filter(|c| *c >= 400).unwrap_or(400);
    let reason = s["reason"].as_str().unwrap_or("").to_string();
    let msg = s["message"].as_str().unwrap_or("");
    let denied = format!("admission webhook \"{name}\" denied the request");
    let message = if !msg.is_empty() {
        format!("{denied}: {msg}")
    } else if !reason.is_empty() {
        format!("{denied}: {reason}")
    } else {
        format!("{denied} without explanation")
    };
    ApiError::Relayed { code, reason, message }
}

fn ignores_failure(w: &Value) -> bool {
    w["failurePolicy"].as_str() == Some("Ignore")
}

/// Why a webhook is skipped or refused for a dry-run request, upstream's 400.
fn dry_run_check(w: &Value, attrs: &Attributes<'_>) -> ApiResult<()> {
    if attrs.dry_run && !matches!(w["sideEffects"].as_str(), Some("None" | "NoneOnDryRun")) {
        return Err(ApiError::BadRequest(format!(
            "admission webhook {:?} does not support dry run",
            w["name"].as_str().unwrap_or("")
        )));
    }
    Ok(())
}

/// The webhooks of every configuration of `kind`, in configuration name order.
fn configured(ctx: &Context, plural: &str) -> Vec<Value> {
    let res = registry::find(GROUP, "v1", plural).expect("registered");
    let prefix = crate::keys::prefix(res, None);
    let end = capstan_storage::prefix_end(&prefix);
    let (items, _, _) = ctx.cache().list(&prefix, &end, 0, |_| true);
    items.iter().flat_map(|c| c["webhooks"].as_array().cloned().unwrap_or_default()).collect()
}

/// Whether `w` applies to this request (rules, selectors, match conditions). A match
/// condition that fails to evaluate is a call failure: `Err` under `failurePolicy: Fail`,
/// skipped under `Ignore`.
async fn applies(ctx: &Context, w: &Value, attrs: &Attributes<'_>, obj: &Value) -> ApiResult<bool> {
    let rules = w["rules"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if !rules.iter().any(|r| rule_matches(r, attrs)) {
        return Ok(false);
    }
    if !namespace_matches(ctx, w.get("namespaceSelector"), attrs, obj).await? {
        return Ok(false);
    }
    let name = w["name"].as_str().unwrap_or("");
    let fail = |e: String| if ignores_failure(w) { Ok(false) } else { Err(call_error(name, &e)) };
    match object_matches(w.get("objectSelector"), attrs, obj) {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        Err(e) => return fail(e),
    }
    if w.get("matchConditions").is_some() {
        let (new, old) = objects(attrs, obj);
        let req = request(attrs, "");
        match match_conditions(
            w.get("matchConditions"),
            &[("object", &new), ("oldObject", &old), ("request", &req)],
            authz_for(ctx, attrs).as_ref(),
        ) {
            Ok(b) => return Ok(b),
            Err(e) => return fail(e),
        }
    }
    Ok(true)
}

fn review(attrs: &Attributes<'_>, obj: &Value, uid: &str) -> Value {
    let mut req = request(attrs, uid);
    let (new, old) = objects(attrs, obj);
    req["object"] = new;
    req["oldObject"] = old;
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
}

fn collect_warnings(response: &Value, out: &mut Outcome) {
    for w in response["warnings"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        out.warnings.push(w.to_string());
    }
}

/// MutatingAdmissionWebhook.
pub struct MutatingWebhooks {
    http: Arc<Http>,
}

/// ValidatingAdmissionWebhook.
pub struct ValidatingWebhooks {
    http: Arc<Http>,
}

/// The two webhook plugins, sharing their HTTPS clients (and `bus`, for hooks served on
/// the bus).
pub fn plugins(bus: Option<Arc<dyn capstan_bus::Bus>>) -> (MutatingWebhooks, ValidatingWebhooks) {
    let http = Arc::new(Http { bus, ..Http::default() });
    (MutatingWebhooks { http: http.clone() }, ValidatingWebhooks { http })
}

impl MutatingWebhooks {
    /// Calls one mutating webhook and applies its patch; whether it changed `obj`.
    async fn run_one(
        &self,
        ctx: &Context,
        w: &Value,
        attrs: &Attributes<'_>,
        obj: &mut Value,
        out: &mut Outcome,
    ) -> ApiResult<bool> {
        let name = w["name"].as_str().unwrap_or("");
        let uid = uuid::Uuid::new_v4().to_string();
        let response = match self.http.call(ctx, w, &review(attrs, obj, &uid), &uid).await {
            Ok(r) => r,
            Err(e) if ignores_failure(w) => {
                tracing::warn!(webhook = name, error = %e, "failed calling webhook, failing open");
                return Ok(false);
            }
            Err(e) => return Err(call_error(name, &e)),
        };
        collect_warnings(&response, out);
        if response["allowed"] != json!(true) {
            return Err(denial(name, response.get("status")));
        }
        let Some(patch) = response.get("patch").and_then(Value::as_str).filter(|p| !p.is_empty()) else {
            return Ok(false);
        };
        let patched = (|| {
            if response["patchType"].as_str() != Some("JSONPatch") {
                return Err(format!(
                    "unsupported patch type {:?}",
                    response["patchType"].as_str().unwrap_or("")
                ));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(patch)
                .map_err(|e| format!("received undecodable patch in webhook response: {e}"))?;
            let p: json_patch::Patch = serde_json::from_slice(&raw)
                .map_err(|e| format!("received undecodable patch in webhook response: {e}"))?;
            let mut new = obj.clone();
            json_patch::patch(&mut new, &p).map_err(|e| format!("JSON patch failed: {e}"))?;
            // The patched object must still be one of its kind.
            if new.get("metadata").is_some_and(|m| !m.is_object())
                || new["apiVersion"] != obj["apiVersion"]
                || new["kind"] != obj["kind"]
            {
                return Err("the patched object is not of the same kind".to_string());
            }
            Ok(new)
        })();
        match patched {
            Ok(new) => {
                let changed = new != *obj;
                *obj = new;
                Ok(changed)
            }
            Err(e) if ignores_failure(w) => {
                tracing::warn!(webhook = name, error = %e, "webhook patch not applied, failing open");
                Ok(false)
            }
            Err(e) => Err(call_error(name, &e)),
        }
    }
}

impl Plugin for MutatingWebhooks {
    fn name(&self) -> &'static str {
        "MutatingAdmissionWebhook"
    }

    fn admit<'a>(
        &'a self,
        ctx: &'a Context,
        attrs: &'a Attributes<'a>,
        obj: &'a mut Value,
        out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            if exempt(attrs) {
                return Ok(());
            }
            if attrs.operation == Operation::Delete {
                // A delete's object cannot change: the webhooks are asked, their patches
                // ignored.
                return validate_all(&self.http, ctx, attrs, obj, out, "mutatingwebhookconfigurations").await;
            }
            let hooks = configured(ctx, "mutatingwebhookconfigurations");
            // Index of each webhook called, and the number of changes made when it ran.
            let mut called: Vec<(usize, usize)> = Vec::new();
            let mut changes = 0usize;
            for (i, w) in hooks.iter().enumerate() {
                if !applies(ctx, w, attrs, obj).await? {
                    continue;
                }
                dry_run_check(w, attrs)?;
                if self.run_one(ctx, w, attrs, obj, out).await? {
                    changes += 1;
                }
                called.push((i, changes));
            }
            // reinvocationPolicy IfNeeded: once more for a webhook that ran before a later
            // one changed the object.
            for (i, seen) in called {
                let w = &hooks[i];
                if changes > seen && w["reinvocationPolicy"].as_str() == Some("IfNeeded") {
                    self.run_one(ctx, w, attrs, obj, out).await?;
                }
            }
            Ok(())
        })
    }
}

/// Calls every matching webhook of `plural` concurrently; the first denial (in
/// configuration order) refuses the write.
async fn validate_all(
    http: &Http,
    ctx: &Context,
    attrs: &Attributes<'_>,
    obj: &Value,
    out: &mut Outcome,
    plural: &str,
) -> ApiResult<()> {
    let mut hooks = Vec::new();
    for w in configured(ctx, plural) {
        if applies(ctx, &w, attrs, obj).await? {
            dry_run_check(&w, attrs)?;
            hooks.push(w);
        }
    }
    let calls = hooks.iter().map(|w| async move {
        let uid = uuid::Uuid::new_v4().to_string();
        (w, http.call(ctx, w, &review(attrs, obj, &uid), &uid).await)
    });
    let results = futures::future::join_all(calls).await;
    let mut first_err = None;
    for (w, r) in results {
        let name = w["name"].as_str().unwrap_or("");
        match r {
            Ok(response) => {
                collect_warnings(&response, out);
                if response["allowed"] != json!(true) && first_err.is_none() {
                    first_err = Some(denial(name, response.get("status")));
                }
            }
            Err(e) if ignores_failure(w) => {
                tracing::warn!(webhook = name, error = %e, "failed calling webhook, failing open");
            }
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(call_error(name, &e));
                }
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

impl Plugin for ValidatingWebhooks {
    fn name(&self) -> &'static str {
        "ValidatingAdmissionWebhook"
    }

    fn validate<'a>(
        &'a self,
        ctx: &'a Context,
        attrs: &'a Attributes<'a>,
        obj: &'a Value,
        out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            if exempt(attrs) {
                return Ok(());
            }
            validate_all(&self.http, ctx, attrs, obj, out, "validatingwebhookconfigurations").await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::User;

    fn attrs<'a>(op: Operation, plural: &str, sub: Option<&'a str>, user: &'a User) -> Attributes<'a> {
        let res = registry::all().into_iter().find(|r| r.plural == plural).expect("registered");
        Attributes {
            operation: op,
            res,
            subresource: sub,
            namespace: res.namespaced().then_some("default"),
            name: "x",
            user,
            old: None,
            dry_run: false,
        }
    }

    #[test]
    fn rules_match_as_upstream() {
        let u = User::new("u", vec![]);
        let create_cm = attrs(Operation::Create, "configmaps", None, &u);
        let rule = |ops: &str, res: &str, scope: &str| json!({"operations": [ops], "apiGroups": [""], "apiVersions": ["v1"], "resources": [res], "scope": scope});
        assert!(rule_matches(&rule("CREATE", "configmaps", "*"), &create_cm));
        assert!(rule_matches(&rule("*", "*", "Namespaced"), &create_cm));
        assert!(!rule_matches(&rule("*", "*", "Cluster"), &create_cm));
        assert!(!rule_matches(&rule("UPDATE", "configmaps", "*"), &create_cm));
        assert!(!rule_matches(&rule("CREATE", "secrets", "*"), &create_cm));
        let status = attrs(Operation::Update, "pods", Some("status"), &u);
        assert!(!rule_matches(&rule("*", "pods", "*"), &status));
        assert!(rule_matches(&rule("*", "pods/*", "*"), &status));
        assert!(rule_matches(&rule("*", "*/status", "*"), &status));
        assert!(rule_matches(&rule("*", "*/*", "*"), &status));
        assert!(!rule_matches(&rule("*", "pods/log", "*"), &status));
    }

    #[test]
    fn denial_as_upstream() {
        let e = denial("deny.example.com", Some(&json!({"message": "no", "code": 200})));
        assert_eq!(e.code(), 400);
        assert_eq!(e.to_string(), "admission webhook \"deny.example.com\" denied the request: no");
        let e = denial("d", None);
        assert_eq!(e.to_string(), "admission webhook \"d\" denied the request without explanation");
        let e = denial("d", Some(&json!({"code": 403, "reason": "Forbidden"})));
        assert_eq!((e.code(), e.reason()), (403, "Forbidden"));
    }

    #[tokio::test]
    async fn a_service_resolves_to_a_ready_endpoint_and_its_target_port() {
        use capstan_storage::{Op, Precondition, Txn};
        let (ctx, _dir) = crate::admission::testing::context().await;
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "hook", "namespace": "webhooks"},
            "spec": {"ports": [{"name": "metrics", "port": 80}, {"name": "https", "port": 443, "targetPort": 8443}]}});
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "hook-abc", "namespace": "webhooks",
                         "labels": {"kubernetes.io/service-name": "hook"}},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9090}, {"name": "https", "port": 8443}],
            "endpoints": [{"addresses": ["10.0.0.6"], "conditions": {"ready": false}},
                          {"addresses": ["10.0.0.5"], "conditions": {"ready": true}}]});
        for (group, plural, obj) in [("", "services", &svc), ("discovery.k8s.io", "endpointslices", &slice)] {
            let res = registry::find(group, "v1", plural).expect("registered");
            let key = crate::keys::object_key(res, Some("webhooks"), meta::name(obj).unwrap());
            let txn = Txn::single(Op::put(key, crate::service::encode(obj).unwrap(), Precondition::None));
            ctx.store().commit(txn).await.unwrap();
        }
        let rev = ctx.store().current_revision().await.unwrap();
        ctx.cache().wait_for(rev, Duration::from_secs(5)).await.unwrap();
        let http = Http::default();
        let cc =
            json!({"service": {"namespace": "webhooks", "name": "hook", "path": "/validate", "port": 443}});
        assert_eq!(http.url(&ctx, &cc).await.unwrap(), "https://hook.webhooks.svc:8443/validate");
        let ips = http.services.lock().unwrap().get("hook.webhooks.svc").cloned();
        assert_eq!(ips, Some(vec!["10.0.0.5".parse::<IpAddr>().unwrap()]));
        let cc = json!({"service": {"namespace": "webhooks", "name": "hook", "port": 444}});
        assert_eq!(http.url(&ctx, &cc).await.unwrap_err(), "service \"hook\" has no port 444");
        let cc = json!({"service": {"namespace": "webhooks", "name": "missing", "port": 443}});
        assert_eq!(http.url(&ctx, &cc).await.unwrap_err(), "service \"missing\" not found");
    }

    #[test]
    fn match_conditions_see_object_and_request() {
        let obj = json!({"metadata": {"name": "a", "labels": {"skip": "yes"}}});
        let req = json!({"operation": "CREATE"});
        let vars = [("object", &obj), ("oldObject", &Value::Null), ("request", &req)];
        let conds = json!([{"name": "op", "expression": "request.operation == 'CREATE'"}]);
        assert_eq!(match_conditions(Some(&conds), &vars, None), Ok(true));
        let conds = json!([{"name": "skip", "expression": "!('skip' in object.metadata.labels)"}]);
        assert_eq!(match_conditions(Some(&conds), &vars, None), Ok(false));
        let conds = json!([{"name": "bad", "expression": "object.nope.deeper"}]);
        assert!(match_conditions(Some(&conds), &vars, None).is_err());
    }
}
