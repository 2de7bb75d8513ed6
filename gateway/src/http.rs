//! The HTTPS gateway: Kubernetes REST paths, content negotiation, Table output and
//! watch streams on top of the [`ApiService`].

use crate::auth::User;
use crate::cache::EventKind;
use crate::discovery;
use crate::dispatch::{self, not_found_path, parse_target, Query, Reply, Target, Verb};
use crate::service::{ApiService, ListOptions, PatchType};
use crate::status::{ApiError, ApiResult};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use capstan_api::{meta, ResourceInfo};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Shared state of the HTTP handlers.
pub struct Gateway {
    /// The API service.
    pub service: Arc<ApiService>,
    /// `host:port` clients reach this server at (for legacy discovery).
    pub server_address: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Static bearer tokens.
    pub tokens: HashMap<String, User>,
    /// The bus, for sessions with node agents (logs, exec, attach, port-forward).
    pub bus: Option<Arc<dyn capstan_bus::Bus>>,
    /// Recent failed WebSocket upgrades, for kubectl's SPDY retry.
    pub stream_failures: crate::streams::Failures,
    /// HTTPS clients to extension API servers (APIServices with a Service).
    pub aggregator: Arc<crate::aggregator::Clients>,
    /// The audit log, if one is configured.
    pub audit: Option<Arc<crate::audit::Auditor>>,
    /// The limit on requests worked on at once.
    /// API Priority and Fairness.
    pub flow: crate::flowcontrol::FlowControl,
}

/// Who made a request (after impersonation) and who authenticated, for the audit log.
#[derive(Clone)]
struct AuditIdentity(User, Option<User>);

/// The decoded request body, for the audit log.
#[derive(Clone)]
struct AuditBody(Value);

/// The identity a TLS client certificate proved, stored per connection.
#[derive(Debug, Clone)]
pub enum PeerIdentity {
    /// No certificate.
    None,
    /// A certificate of the cluster CA, valid now.
    Valid(User),
    /// A certificate that failed verification (another CA, expired, not yet valid).
    Invalid(String),
}

fn json_response(code: StatusCode, body: &Value) -> HttpResponse {
    let bytes = crate::status::response_json(body);
    HttpResponse::build(code).content_type("application/json").body(bytes)
}

/// The protobuf media type (`application/vnd.kubernetes.protobuf`).
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
/// The media type of a protobuf watch stream.
const PROTOBUF_WATCH: &str = "application/vnd.kubernetes.protobuf;stream=watch";

/// An object in its protobuf envelope, or in JSON when its kind has no protobuf form
/// (custom resources), as upstream answers such kinds.
fn protobuf_response(code: StatusCode, body: &Value) -> HttpResponse {
    match capstan_api::protobuf::encode(body) {
        Ok(bytes) => HttpResponse::build(code).content_type(PROTOBUF).body(bytes),
        Err(_) => json_response(code, body),
    }
}

/// The one place an [`ApiError`] becomes an HTTP response.
pub fn error_response(e: &ApiError) -> HttpResponse {
    error_response_as(e, false)
}

/// An error as a Status, in protobuf when the client prefers it.
fn error_response_as(e: &ApiError, protobuf: bool) -> HttpResponse {
    let code = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp =
        if protobuf { protobuf_response(code, &e.to_status()) } else { json_response(code, &e.to_status()) };
    match e {
        ApiError::TooManyRequests(_) => {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        ApiError::TooManyRequestsWith { details, .. } => {
            if let Some(n) = details.retry_after_seconds.filter(|n| *n > 0) {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(n));
            }
        }
        _ => {}
    }
    resp
}

fn with_warnings(mut resp: HttpResponse, warnings: &[String]) -> HttpResponse {
    for w in warnings {
        // A quoted-string: backslash and quote escaped, as kubectl (client-go) unescapes them.
        let text = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn header_str(req: &HttpRequest, name: header::HeaderName) -> &str {
    req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Authenticates a request and applies impersonation headers.
async fn authenticate(req: &HttpRequest, gw: &Gateway) -> ApiResult<User> {
    let user = authenticate_credentials(req, gw).await?;
    let mut imp = crate::authn::Impersonation::default();
    for (name, value) in req.headers() {
        let n = name.as_str();
        let Ok(v) = value.to_str() else { continue };
        if n.eq_ignore_ascii_case("impersonate-user") {
            imp.user = Some(v.to_string());
        } else if n.eq_ignore_ascii_case("impersonate-group") {
            imp.groups.push(v.to_string());
        } else if n.eq_ignore_ascii_case("impersonate-uid") {
            imp.uid = Some(v.to_string());
        } else if let Some(key) = n.strip_prefix("impersonate-extra-") {
            let key = percent_decode(key);
            imp.extra.entry(key).or_default().push(v.to_string());
        }
    }
    if imp.is_empty() {
        return Ok(user);
    }
    req.extensions_mut().insert(Authenticated(user.clone()));
    gw.service.impersonate(&user, &imp)
}

/// The authenticated user of an impersonating request.
struct Authenticated(User);

/// Decodes `%XX` escapes (impersonation extra keys are percent-encoded).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(x) =
                std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Authenticates a request's credentials: client certificate first, then a bearer token
/// (static or a ServiceAccount token). A request with a bad credential is 401; one with
/// none is `system:anonymous`.
async fn authenticate_credentials(req: &HttpRequest, gw: &Gateway) -> ApiResult<User> {
    match req.conn_data::<PeerIdentity>() {
        Some(PeerIdentity::Valid(u)) => return Ok(u.clone()),
        Some(PeerIdentity::Invalid(why)) => {
            tracing::debug!("client certificate refused: {why}");
            return Err(ApiError::Unauthorized);
        }
        _ => {}
    }
    let auth = header_str(req, header::AUTHORIZATION);
    if auth.is_empty() {
        return Ok(User::anonymous());
    }
    if let Some(token) = auth.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty()) {
        if let Some(u) = gw.service.authenticate_bearer(&gw.tokens, token).await {
            return Ok(u);
        }
    }
    Err(ApiError::Unauthorized)
}

fn query_pairs(req: &HttpRequest) -> ApiResult<Vec<(String, String)>> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))
}

/// Reads the body with the size limit.
pub(crate) async fn read_body(mut payload: web::Payload, limit: usize) -> ApiResult<Bytes> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("failed to read request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(format!("Request entity too large: limit is {limit}")));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn media_type(req: &HttpRequest) -> String {
    header_str(req, header::CONTENT_TYPE).split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

const ACCEPTED: &str = "application/json, application/yaml, application/vnd.kubernetes.protobuf";

fn unsupported_media(mt: &str, accepted: &str) -> ApiError {
    ApiError::UnsupportedMediaType(format!(
        "the body of the request was in an unknown format - accepted media types include: {accepted}{}",
        if mt.is_empty() { String::new() } else { format!(" (got {mt:?})") }
    ))
}

fn parse_json(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding request body as JSON: {e}")))
}

fn parse_yaml(body: &[u8]) -> ApiResult<Value> {
    serde_yaml_ng::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding request body as YAML: {e}")))
}

/// Decodes an object body (POST, PUT) by its content type.
fn decode_object(req: &HttpRequest, body: &[u8]) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    match media_type(req).as_str() {
        "application/json" | "" => parse_json(body),
        "application/yaml" | "application/x-yaml" | "text/yaml" => parse_yaml(body),
        "application/vnd.kubernetes.protobuf" => capstan_api::protobuf::decode(body).map_err(|e| match e {
            capstan_api::protobuf::ProtobufError::UnsupportedKind { .. } => {
                unsupported_media("application/vnd.kubernetes.protobuf", "application/json, application/yaml")
            }
            other => ApiError::BadRequest(format!("error decoding protobuf request body: {other}")),
        }),
        other => Err(unsupported_media(other, ACCEPTED)),
    }
}

fn decode_patch(pt: PatchType, body: &[u8]) -> ApiResult<Value> {
    let v = if pt == PatchType::Apply { parse_yaml(body)? } else { parse_json(body)? };
    match (pt, &v) {
        (PatchType::Json, Value::Array(_)) => {}
        (PatchType::Json, _) => {
            return Err(ApiError::BadRequest("json patch must be a list of operations".into()));
        }
        (_, Value::Object(_)) => {}
        _ => return Err(ApiError::BadRequest("patch body must be a JSON object".into())),
    }
    Ok(v)
}

/// What the client accepts back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    Json,
    /// `application/vnd.kubernetes.protobuf` (objects, lists, Status, watch frames).
    Protobuf,
    Table {
        include_object: bool,
        include_none: bool,
    },
}

fn output(req: &HttpRequest, q: &Query) -> ApiResult<Output> {
    let accept = header_str(req, header::ACCEPT);
    let wants_table = accept.split(',').any(|part| {
        let p = part.replace(' ', "");
        p.contains("as=Table") && p.contains("g=meta.k8s.io")
    });
    if wants_table {
        let inc = q.get("includeObject").unwrap_or("Metadata");
        return Ok(Output::Table { include_object: inc == "Object", include_none: inc == "None" });
    }
    match negotiate(accept) {
        Some(out) => Ok(out),
        None => Err(ApiError::NotAcceptable(format!(
            "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {accept:?})"
        ))),
    }
}

/// The first media type of `Accept` that is served: protobuf when the client lists it before
/// JSON (client-go's typed clients send `application/vnd.kubernetes.protobuf,application/json`),
/// JSON for anything else acceptable; `None` when nothing is. A protobuf entry that asks for
/// another form (`as=PartialObjectMetadata`) is skipped: those stay JSON, as upstream.
fn negotiate(accept: &str) -> Option<Output> {
    if accept.trim().is_empty() {
        return Some(Output::Json);
    }
    for part in accept.split(',') {
        let mt = part.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match mt.as_str() {
            PROTOBUF if !part.contains("as=") => return Some(Output::Protobuf),
            "application/json" | "*/*" | "application/*" | "application/yaml" | "" => {
                return Some(Output::Json)
            }
            _ => {}
        }
    }
    None
}

/// Whether errors for this request go back in protobuf.
fn prefers_protobuf(req: &HttpRequest) -> bool {
    negotiate(header_str(req, header::ACCEPT)) == Some(Output::Protobuf)
}

fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

fn table(
    res: &ResourceInfo,
    objs: &[crate::cache::Obj],
    rv: u64,
    cont: Option<&str>,
    out: Output,
    with_columns: bool,
) -> Value {
    let now = jiff::Timestamp::now();
    let (include_object, include_none) = match out {
        Output::Table { include_object, include_none } => (include_object, include_none),
        Output::Json | Output::Protobuf => (false, false),
    };
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut row = json!({"cells": capstan_api::table::cells(res, o, now)});
            if include_object {
                row["object"] = (**o).clone();
            } else if !include_none {
                row["object"] = partial_metadata(o);
            }
            row
        })
        .collect();
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "rows": rows,
    });
    if let Some(c) = cont {
        t["metadata"]["continue"] = json!(c);
    }
    let cols: Vec<Value> = if with_columns {
        capstan_api::table::columns(res).iter().map(|c| c.to_json()).collect()
    } else {
        Vec::new()
    };
    t["columnDefinitions"] = Value::Array(cols);
    t
}

const TABLE_CT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

fn object_response(code: StatusCode, res: &ResourceInfo, obj: Value, out: Output) -> HttpResponse {
    match out {
        Output::Json => json_response(code, &obj),
        Output::Protobuf => protobuf_response(code, &obj),
        Output::Table { .. } => {
            let rv = meta::meta_str(&obj, "resourceVersion").and_then(|s| s.parse().ok()).unwrap_or(0);
            let t = table(res, &[Arc::new(obj.into())], rv, None, out, true);
            let bytes = serde_json::to_vec(&t).unwrap_or_default();
            HttpResponse::build(code).content_type(TABLE_CT).body(bytes)
        }
    }
}

/// The catch-all handler: every request goes through here.
pub async fn dispatch(req: HttpRequest, payload: web::Payload, gw: web::Data<Gateway>) -> HttpResponse {
    let received = jiff::Timestamp::now();
    let started = std::time::Instant::now();
    let (resp, status) = match handle(&req, payload, &gw).await {
        Ok(resp) => (resp, None),
        Err(e) => {
            if e.code() >= 500 {
                tracing::warn!(method = %req.method(), path = %req.path(), "request failed: {e}");
            }
            (error_response_as(&e, prefers_protobuf(&req)), Some(e.to_status()))
        }
    };
    let mut resp = resp;
    if let Some(class) = req.extensions().get::<crate::flowcontrol::Classification>() {
        let headers = resp.headers_mut();
        for (name, value) in [
            (crate::flowcontrol::FLOW_SCHEMA_HEADER, &class.flow_schema_uid),
            (crate::flowcontrol::PRIORITY_LEVEL_HEADER, &class.priority_level_uid),
        ] {
            if let Ok(v) = header::HeaderValue::from_str(value) {
                headers.insert(header::HeaderName::from_static(name), v);
            }
        }
    }
    crate::metrics::request(&req, resp.status().as_u16(), started.elapsed());
    match &gw.audit {
        Some(a) => audit(a, &req, resp, status, received).await,
        None => resp,
    }
}

/// Records the request in the audit log; returns the response (rebuilt when its body was
/// read for a RequestResponse entry).
async fn audit(
    a: &crate::audit::Auditor,
    req: &HttpRequest,
    resp: HttpResponse,
    status: Option<Value>,
    received: jiff::Timestamp,
) -> HttpResponse {
    let watch = query_pairs(req)
        .ok()
        .is_some_and(|q| q.iter().any(|(k, v)| k == "watch" && (v == "true" || v == "1")));
    let (object, verb) = crate::audit::object_ref(req.method().as_str(), req.path(), watch);
    let identity = req.extensions().get::<AuditIdentity>().cloned();
    let (user, impersonator) = match identity {
        Some(AuditIdentity(u, i)) => (u, i),
        None => (User::default(), None),
    };
    let mut record = crate::audit::Record {
        user,
        impersonator,
        verb,
        path: req.path().to_string(),
        uri: match req.query_string() {
            "" => req.path().to_string(),
            q => format!("{}?{q}", req.path()),
        },
        object,
        source_ip: req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default(),
        user_agent: header_str(req, header::USER_AGENT).to_string(),
        code: resp.status().as_u16(),
        status,
        request_object: req.extensions().get::<AuditBody>().map(|b| b.0.clone()),
        response_object: None,
        received,
    };
    let mut resp = resp;
    let sized =
        matches!(actix_web::body::MessageBody::size(resp.body()), actix_web::body::BodySize::Sized(_));
    if a.level(&record) >= crate::audit::Level::RequestResponse && sized {
        let (head, body) = resp.into_parts();
        match actix_web::body::to_bytes(body).await {
            Ok(bytes) => {
                record.response_object = serde_json::from_slice(&bytes)
                    .ok()
                    .or_else(|| capstan_api::protobuf::decode(&bytes).ok());
                resp = head.set_body(bytes).map_into_boxed_body();
            }
            Err(_) => resp = head.map_into_boxed_body(),
        }
    }
    a.record(&record);
    resp
}

async fn handle(req: &HttpRequest, payload: web::Payload, gw: &Gateway) -> ApiResult<HttpResponse> {
    let path = req.path().trim_end_matches('/').to_string();
    let path = if path.is_empty() { "/".to_string() } else { path };
    // Public endpoints.
    match (req.method(), path.as_str()) {
        (&Method::GET, "/version") => return Ok(json_response(StatusCode::OK, &discovery::version())),
        (&Method::GET, p) if is_health(p) => {
            return Ok(HttpResponse::Ok().content_type("text/plain; charset=utf-8").body("ok"));
        }
        _ => {}
    }
    let user = authenticate(req, gw).await?;
    if gw.audit.is_some() {
        let original = req.extensions().get::<Authenticated>().map(|a| a.0.clone());
        let impersonator = original.filter(|o| *o != user);
        req.extensions_mut().insert(AuditIdentity(user.clone(), impersonator));
    }
    let q = Query(query_pairs(req)?);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // A seat for the rest of the request. Watches and streams hold none, except a watch
    // that starts with the current state, whose initial events (a LIST's work, rendered
    // before the response starts) are counted as upstream's APF counts a watch's
    // initialization.
    let watch = matches!(q.get("watch"), Some("true" | "1"));
    let initial_events = match q.get("sendInitialEvents") {
        Some(v) => matches!(v, "true" | "1"),
        None => matches!(q.get("resourceVersion"), None | Some("") | Some("0")),
    };
    let (object, verb) = crate::audit::object_ref(req.method().as_str(), &path, watch);
    let stream = object.as_ref().is_some_and(|o| {
        matches!(o.subresource.as_str(), "log" | "exec" | "attach" | "portforward" | "proxy")
    });
    let long_running = (watch && !initial_events) || stream;
    let flow_req = crate::flowcontrol::Request { verb, object, path: path.clone() };
    let (class, seat) = gw.flow.admit(&user, &flow_req, long_running).await;
    req.extensions_mut().insert(class);
    let _seat = seat?;
    // Non-resource paths are authorized by their URL (RBAC nonResourceURLs), as upstream:
    // discovery and OpenAPI for authenticated users, nothing for anonymous ones.
    let resource_request = matches!(segs.as_slice(), ["api", "v1", _, ..] | ["apis", _, _, _, ..]);
    if !resource_request {
        gw.service.authorize_path(&user, &req.method().as_str().to_ascii_lowercase(), &path)?;
    }
    // A group-version an extension API server serves (an APIService with a Service).
    if let ["apis", g, v, ..] = segs.as_slice() {
        if let Some(remote) = crate::aggregator::remote(g, v) {
            return crate::aggregator::proxy(req, payload, gw, &user, remote, &segs, watch).await;
        }
    }
    match segs.as_slice() {
        [".well-known", "openid-configuration"] | ["openid", "v1", "jwks"] => {
            let signer = gw.service.tokens().ok_or_else(not_found_path)?;
            let doc = if segs[0] == "openid" {
                signer.jwks()
            } else {
                signer.discovery(&format!("https://{}/openid/v1/jwks", gw.server_address))
            };
            let body = serde_json::to_vec(&doc).unwrap_or_default();
            let ct = if segs[0] == "openid" { "application/jwk-set+json" } else { "application/json" };
            return Ok(HttpResponse::Ok().content_type(ct).body(body));
        }
        ["metrics"] if req.method() == Method::GET => {
            return Ok(HttpResponse::Ok()
                .content_type(capstan_metrics::CONTENT_TYPE)
                .body(capstan_metrics::render()));
        }
        ["api"] => return discovery_response(req, true, &gw.server_address),
        ["apis"] => return discovery_response(req, false, &gw.server_address),
        ["api", "v1"] => return plain(discovery::resource_list("", "v1")),
        ["apis", g] => return plain(discovery::legacy_group_doc(g)),
        ["apis", g, v] => return plain(discovery::resource_list(g, v)),
        ["openapi", "v2"] => {
            // JSON, or gnostic's protobuf for client-go's `OpenAPISchema()`.
            let doc = capstan_api::openapi::document_v2();
            let accept = header_str(req, header::ACCEPT);
            let protobuf = accept.contains(capstan_api::openapi::V2_PROTOBUF_MEDIA_TYPE);
            let mut resp = HttpResponse::Ok();
            resp.insert_header((header::ETAG, format!("\"{}\"", doc.hash)));
            resp.insert_header((header::VARY, "Accept"));
            return Ok(if protobuf {
                // As upstream's kube-openapi handler: the media type asked for is not a valid
                // Content-Type (Go's mime parser rejects its `@`).
                resp.content_type("application/octet-stream").body(doc.protobuf.as_ref().clone())
            } else {
                resp.content_type("application/json").body(doc.json.as_ref().clone())
            });
        }
        ["openapi", "v3"] => return Ok(json_response(StatusCode::OK, &capstan_api::openapi::index())),
        ["openapi", "v3", rest @ ..] => {
            let (g, v) = match rest {
                ["api", v] => ("", *v),
                ["apis", g, v] => (*g, *v),
                _ => return Err(not_found_path()),
            };
            let doc = capstan_api::openapi::document(g, v).ok_or_else(not_found_path)?;
            let mut resp = HttpResponse::Ok();
            resp.content_type("application/json");
            if let Some(h) = capstan_api::openapi::document_hash(g, v) {
                resp.insert_header((header::ETAG, format!("\"{h}\"")));
                if q.get("hash") == Some(h.as_str()) {
                    resp.insert_header((header::CACHE_CONTROL, "public, immutable"));
                }
            }
            return Ok(resp.body(doc.as_ref().clone()));
        }
        _ => {}
    }
    if let Some((node, p)) = crate::streams::proxy::node_route(&segs, req.path()) {
        return crate::streams::proxy::serve_node(req, gw, &user, &node, &p).await;
    }
    if let Some(r) = crate::streams::proxy::route(&segs, req.path()) {
        return crate::streams::proxy::serve(req, payload, gw, &user, r).await;
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found_path()),
    };
    let target = parse_target(group, version, rest)?;
    preauthorize(req, gw, &user, &q, &target)?;
    resource(req, payload, gw, &user, q, target).await
}

/// Authorizes a resource request before its body is read or decoded, as upstream's
/// authorization filter does: a caller who may not make the request gets 403, not a
/// complaint about its body. (The API service checks again with the exact verb; streams —
/// logs, exec, attach, port-forward — are authorized where they are served.)
fn preauthorize(req: &HttpRequest, gw: &Gateway, user: &User, q: &Query, t: &Target) -> ApiResult<()> {
    if matches!(t.subresource.as_deref(), Some("log" | "exec" | "attach" | "portforward" | "proxy")) {
        return Ok(());
    }
    let watch = matches!(q.get("watch"), Some("true" | "1"));
    // Reads carry no body and the API service authorizes them; a watch needs `watch`.
    if matches!(req.method().as_str(), "GET" | "HEAD") && !watch {
        return Ok(());
    }
    let verb = match (req.method().as_str(), t.name.is_some()) {
        ("GET" | "HEAD", _) if watch => "watch",
        ("GET" | "HEAD", true) => "get",
        ("GET" | "HEAD", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return Ok(()),
    };
    let name = t.name.as_deref().filter(|n| !n.is_empty());
    gw.service.authorize(user, verb, t.res, t.subresource.as_deref(), t.namespace.as_deref(), name)
}

fn is_health(p: &str) -> bool {
    ["/healthz", "/livez", "/readyz"].iter().any(|h| p == *h || p.starts_with(&format!("{h}/")))
}

fn plain(v: Option<Value>) -> ApiResult<HttpResponse> {
    v.map(|v| json_response(StatusCode::OK, &v)).ok_or_else(not_found_path)
}

fn discovery_response(req: &HttpRequest, core: bool, addr: &str) -> ApiResult<HttpResponse> {
    let accept = header_str(req, header::ACCEPT).replace(' ', "");
    if accept.contains("as=APIGroupDiscoveryList")
        && accept.contains("v=v2")
        && accept.contains("g=apidiscovery.k8s.io")
    {
        let body = serde_json::to_vec(&discovery::aggregated(core)).unwrap_or_default();
        return Ok(HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, discovery::AGGREGATED_CONTENT_TYPE))
            .insert_header((header::VARY, "Accept"))
            .body(body));
    }
    let v = if core { discovery::legacy_api(addr) } else { discovery::legacy_apis() };
    Ok(json_response(StatusCode::OK, &v))
}

async fn resource(
    req: &HttpRequest,
    payload: web::Payload,
    gw: &Gateway,
    user: &User,
    q: Query,
    t: Target,
) -> ApiResult<HttpResponse> {
    if crate::streams::is_node_stream(&t) {
        return crate::streams::serve(req, payload, gw, user, q, t).await;
    }
    let res = t.res;
    let out = match output(req, &q)? {
        Output::Protobuf if !capstan_api::protobuf::supports(&res.api_version(), res.kind) => Output::Json,
        out => out,
    };
    let method = req.method().clone();
    let collection = t.name.is_none();
    let verb = match (&method, collection) {
        (&Method::GET, true) if q.flag("watch")? => {
            let opts = q.list_options(res)?;
            gw.service.authorize(user, "watch", res, None, t.namespace.as_deref(), None)?;
            return watch(gw, res, t.namespace.as_deref(), opts, &q, out);
        }
        (&Method::GET, true) => Verb::List,
        (&Method::GET, false) => Verb::Get,
        (&Method::POST, _) => Verb::Create,
        (&Method::PUT, false) => Verb::Update,
        (&Method::PATCH, false) => Verb::Patch(dispatch::patch_type(header_str(req, header::CONTENT_TYPE))?),
        (&Method::DELETE, true) => Verb::DeleteCollection,
        (&Method::DELETE, false) => Verb::Delete,
        _ => {
            return Err(ApiError::MethodNotAllowed(format!(
                "the server does not allow this method on the requested resource ({} {})",
                method,
                req.path()
            )))
        }
    };
    let raw = match verb {
        Verb::Get | Verb::List => Bytes::new(),
        _ => read_body(payload, gw.max_body_bytes).await?,
    };
    let body = match verb {
        Verb::Get | Verb::List => None,
        _ if raw.is_empty() => None,
        Verb::Patch(pt) => Some(decode_patch(pt, &raw)?),
        _ => Some(decode_object(req, &raw)?),
    };
    if gw.audit.is_some() {
        if let Some(b) = &body {
            req.extensions_mut().insert(AuditBody(b.clone()));
        }
    }
    let request = dispatch::Request {
        verb,
        target: t,
        query: q,
        body,
        user_agent: header_str(req, header::USER_AGENT).to_string(),
    };
    match dispatch::dispatch(&gw.service, user, request).await? {
        Reply::Object { code, object, warnings } => {
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            let is_status = object.get("kind").and_then(Value::as_str) == Some("Status");
            let out = if out == Output::Protobuf {
                // Every reply of a protobuf client is protobuf, when its kind has a protobuf form.
                let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or("");
                let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
                if capstan_api::protobuf::supports(api_version, kind) {
                    Output::Protobuf
                } else {
                    Output::Json
                }
            } else if is_status || !matches!(verb, Verb::Get | Verb::Create | Verb::Update | Verb::Patch(_)) {
                Output::Json
            } else {
                out
            };
            Ok(with_warnings(object_response(code, res, object, out), &warnings))
        }
        Reply::List(page) => {
            // Encoding a large list is the heaviest work a request does: it runs on the
            // blocking pool, so the worker thread keeps serving other connections.
            let encoded = actix_web::web::block(move || list_body(res, &page, out))
                .await
                .map_err(|_| ApiError::Internal("the list encoder stopped".into()))?;
            let (ct, bytes) = encoded;
            Ok(HttpResponse::Ok().content_type(ct).body(bytes))
        }
    }
}

/// A JSON list, in upstream's field order, assembled from each item's cached encoding: the
/// items are copied, not serialized again.
fn json_list(res: &ResourceInfo, md: &Value, items: &[crate::cache::Obj]) -> Vec<u8> {
    let size: usize = items.iter().map(|o| o.json().len() + 1).sum();
    let mut out = Vec::with_capacity(size + 256);
    out.extend_from_slice(b"{\"kind\":");
    let _ = serde_json::to_writer(&mut out, res.list_kind);
    out.extend_from_slice(b",\"apiVersion\":");
    let _ = serde_json::to_writer(&mut out, &res.api_version());
    out.extend_from_slice(b",\"metadata\":");
    let _ = serde_json::to_writer(&mut out, md);
    out.extend_from_slice(b",\"items\":[");
    for (i, o) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(o.json());
    }
    out.extend_from_slice(b"]}");
    out
}

/// A page of a list encoded as `out` asks: its content type and bytes.
fn list_body(
    res: &'static ResourceInfo,
    page: &crate::service::ListPage,
    out: Output,
) -> (&'static str, Vec<u8>) {
    let mut md = json!({"resourceVersion": page.revision.to_string()});
    if let Some(c) = &page.continue_token {
        md["continue"] = json!(c);
    }
    match out {
        Output::Protobuf => {
            let items: Vec<&Value> = page.items.iter().map(|a| a.value()).collect();
            let list = json!({"kind": res.list_kind, "apiVersion": res.api_version(), "metadata": md, "items": items});
            match capstan_api::protobuf::encode(&list) {
                Ok(bytes) => (PROTOBUF, bytes),
                Err(_) => ("application/json", serde_json::to_vec(&list).unwrap_or_else(|_| b"{}".to_vec())),
            }
        }
        Output::Json => ("application/json", json_list(res, &md, &page.items)),
        Output::Table { .. } => {
            let t = table(res, &page.items, page.revision, page.continue_token.as_deref(), out, true);
            (TABLE_CT, serde_json::to_vec(&t).unwrap_or_default())
        }
    }
}

struct WatchState {
    svc: Arc<ApiService>,
    res: &'static ResourceInfo,
    ns: Option<String>,
    opts: ListOptions,
    cursor: u64,
    pending: VecDeque<Bytes>,
    rx: tokio::sync::watch::Receiver<u64>,
    deadline: tokio::time::Instant,
    bookmarks: bool,
    out: Output,
    first_table: bool,
    done: bool,
    /// The current objects still to send as ADDED (converted to the watched version when
    /// the first chunk is asked for), and whether the initial-events-end bookmark follows.
    initial: Option<(Vec<crate::cache::Obj>, bool)>,
}

/// A JSON watch event line around an object's cached encoding.
fn cached_event_line(kind: &str, object: &crate::cache::Object) -> Bytes {
    let json = object.json();
    let mut line = Vec::with_capacity(json.len() + kind.len() + 24);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(json);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// One watch event in the stream's encoding: a JSON line, or a length-prefixed protobuf
/// WatchEvent frame.
fn event(out: Output, kind: &str, object: &Value) -> Bytes {
    if out == Output::Protobuf {
        match capstan_api::protobuf::encode_watch_event(kind, object) {
            Ok(frame) => return Bytes::from(frame),
            Err(e) => {
                let status = ApiError::Internal(format!("failed to encode watch event: {e}")).to_status();
                if let Ok(frame) = capstan_api::protobuf::encode_watch_event("ERROR", &status) {
                    return Bytes::from(frame);
                }
            }
        }
    }
    event_line(kind, object)
}

impl WatchState {
    fn render(&mut self, kind: EventKind, obj: &crate::cache::Obj) -> Bytes {
        match self.out {
            Output::Json => cached_event_line(kind.as_str(), obj),
            Output::Protobuf => event(self.out, kind.as_str(), obj),
            Output::Table { .. } => {
                let rv = meta::meta_str(obj, "resourceVersion").and_then(|s| s.parse().ok()).unwrap_or(0);
                let t = table(self.res, std::slice::from_ref(obj), rv, None, self.out, self.first_table);
                self.first_table = false;
                event_line(kind.as_str(), &t)
            }
        }
    }

    fn bookmark(&self, annotations: Option<Value>) -> Bytes {
        let mut md = json!({"resourceVersion": self.cursor.to_string()});
        if let Some(a) = annotations {
            md["annotations"] = a;
        }
        event(
            self.out,
            "BOOKMARK",
            &json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": md}),
        )
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some((items, end_bookmark)) = self.initial.take() {
            match self.svc.served_objs(self.res, items).await {
                Err(e) => {
                    self.done = true;
                    return Some(event(self.out, "ERROR", &e.to_status()));
                }
                Ok(items) => {
                    for o in &items {
                        let b = self.render(EventKind::Added, o);
                        self.pending.push_back(b);
                    }
                }
            }
            if end_bookmark {
                let b = self.bookmark(Some(json!({"k8s.io/initial-events-end": "true"})));
                self.pending.push_back(b);
            }
        }
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some(b);
            }
            if self.done {
                return None;
            }
            match self.svc.watch_events(self.res, self.ns.as_deref(), &self.opts, self.cursor, 512).await {
                Err(e) => {
                    self.done = true;
                    return Some(event(self.out, "ERROR", &e.to_status()));
                }
                Ok((events, scanned)) => {
                    self.cursor = scanned.max(self.cursor);
                    if !events.is_empty() {
                        for (k, obj, _) in events {
                            let b = self.render(k, &obj);
                            self.pending.push_back(b);
                        }
                        continue;
                    }
                }
            }
            let idle = tokio::time::sleep(Duration::from_secs(30));
            tokio::select! {
                r = self.rx.changed() => {
                    if r.is_err() { self.done = true; }
                }
                _ = tokio::time::sleep_until(self.deadline) => { self.done = true; }
                _ = idle => {
                    if self.bookmarks {
                        let b = self.bookmark(None);
                        self.pending.push_back(b);
                    }
                }
            }
        }
    }
}

fn watch(
    gw: &Gateway,
    res: &'static ResourceInfo,
    ns: Option<&str>,
    opts: ListOptions,
    q: &Query,
    out: Output,
) -> ApiResult<HttpResponse> {
    let svc = gw.service.clone();
    let timeout = match q.get("timeoutSeconds") {
        Some(t) => {
            t.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds: {t:?}")))?
        }
        None => 1800,
    };
    let bookmarks = q.flag("allowWatchBookmarks")?;
    let send_initial = match q.get("sendInitialEvents") {
        Some(_) => Some(q.flag("sendInitialEvents")?),
        None => None,
    };
    let rv = opts.resource_version.clone().unwrap_or_default();
    let cache = svc.cache().clone();
    let rx = cache.subscribe();
    let initial = send_initial.unwrap_or(rv.is_empty() || rv == "0");
    let (cursor, initial) = if initial {
        // Current state as ADDED events, then changes after the snapshot.
        let prefix = crate::keys::prefix(res, ns);
        let end = capstan_storage::prefix_end(&prefix);
        let (items, revision, _) = cache.list(&prefix, &end, 0, |o| {
            opts.label_selector.matches(&meta::labels(o)) && opts.field_selector.matches(o)
        });
        (revision, Some((items, send_initial == Some(true) && bookmarks)))
    } else {
        let rv = rv
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv:?}")))?;
        (rv, None)
    };
    let state = WatchState {
        svc,
        res,
        ns: ns.map(str::to_string),
        opts,
        cursor,
        pending: VecDeque::new(),
        rx,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
        bookmarks,
        out,
        first_table: true,
        done: false,
        initial,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        st.next_chunk().await.map(|b| (Ok::<Bytes, actix_web::Error>(b), st))
    });
    let ct = match out {
        Output::Json => "application/json",
        Output::Protobuf => PROTOBUF_WATCH,
        Output::Table { .. } => TABLE_CT,
    };
    Ok(HttpResponse::Ok()
        .content_type(ct)
        .insert_header((header::CACHE_CONTROL, "no-cache, private"))
        .streaming(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_only_when_listed_before_json() {
        assert!(negotiate("application/vnd.kubernetes.protobuf,application/json") == Some(Output::Protobuf));
        assert!(negotiate("application/vnd.kubernetes.protobuf, */*") == Some(Output::Protobuf));
        assert!(negotiate("application/vnd.kubernetes.protobuf;stream=watch") == Some(Output::Protobuf));
        assert!(negotiate("application/json, application/vnd.kubernetes.protobuf") == Some(Output::Json));
        assert!(negotiate("") == Some(Output::Json));
        assert!(negotiate("*/*") == Some(Output::Json));
        // PartialObjectMetadata in protobuf is not served: the JSON that follows is.
        assert!(
            negotiate("application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json")
                == Some(Output::Json)
        );
        assert!(negotiate("text/html").is_none());
    }

    #[test]
    fn lists_and_watch_lines_from_cached_bytes_equal_the_serialized_trees() {
        let res = capstan_api::registry::find("", "v1", "pods").expect("pods");
        let pod = |n: &str| {
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": n, "namespace": "default", "labels": {"app": "a\"b"}},
                   "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        };
        let items: Vec<crate::cache::Obj> = vec![Arc::new(pod("a").into()), Arc::new(pod("b").into())];
        let page = crate::service::ListPage { items, revision: 7, continue_token: Some("tok".into()) };
        let (ct, bytes) = list_body(res, &page, Output::Json);
        assert_eq!(ct, "application/json");
        let got: Value = serde_json::from_slice(&bytes).expect("the list is JSON");
        assert_eq!(
            got,
            json!({"kind": "PodList", "apiVersion": "v1",
                   "metadata": {"resourceVersion": "7", "continue": "tok"},
                   "items": [pod("a"), pod("b")]})
        );
        // Upstream's field order.
        assert!(bytes.starts_with(br#"{"kind":"PodList","apiVersion":"v1","metadata":"#));
        let empty = crate::service::ListPage { items: vec![], revision: 1, continue_token: None };
        let got: Value = serde_json::from_slice(&list_body(res, &empty, Output::Json).1).expect("JSON");
        assert_eq!(got["items"], json!([]));

        let line = cached_event_line("MODIFIED", &pod("a").into());
        assert!(line.ends_with(b"\n"));
        let got: Value = serde_json::from_slice(&line).expect("the event is JSON");
        assert_eq!(got, json!({"type": "MODIFIED", "object": pod("a")}));
    }
}
