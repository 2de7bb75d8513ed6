//! The HTTPS gateway: Kubernetes REST paths, content negotiation, Table output and
//! watch streams on top of the [`ApiService`].

use crate::auth::{Attributes, Decision, User};
use crate::cache::EventKind;
use crate::discovery;
use crate::service::{ApiService, DeleteOptions, FieldValidation, ListOptions, PatchType, WriteOptions};
use crate::status::{success_status, ApiError, ApiResult};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use capstan_api::selectors::{FieldSelector, LabelSelector};
use capstan_api::{meta, registry, ResourceInfo};
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
}

/// The identity a TLS client certificate proved, stored per connection.
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub Option<User>);

fn json_response(code: StatusCode, body: &Value) -> HttpResponse {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    HttpResponse::build(code).content_type("application/json").body(bytes)
}

/// The one place an [`ApiError`] becomes an HTTP response.
pub fn error_response(e: &ApiError) -> HttpResponse {
    let code = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(code, &e.to_status());
    if matches!(e, ApiError::TooManyRequests(_)) {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn with_warnings(mut resp: HttpResponse, warnings: &[String]) -> HttpResponse {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "'"));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn header_str<'a>(req: &'a HttpRequest, name: header::HeaderName) -> &'a str {
    req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Authenticates a request: client certificate first, then a bearer token.
fn authenticate(req: &HttpRequest, gw: &Gateway) -> ApiResult<User> {
    if let Some(PeerIdentity(Some(u))) = req.conn_data::<PeerIdentity>() {
        return Ok(u.clone());
    }
    let auth = header_str(req, header::AUTHORIZATION);
    if let Some(token) = auth.strip_prefix("Bearer ").map(str::trim) {
        if let Some(u) = gw.tokens.get(token) {
            return Ok(u.clone());
        }
    }
    Err(ApiError::Unauthorized)
}

fn query_pairs(req: &HttpRequest) -> ApiResult<Vec<(String, String)>> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> ApiResult<bool> {
        match self.get(k) {
            None | Some("") | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(v) => {
                Err(ApiError::BadRequest(format!("invalid value for {k}: {v:?}: must be true or false")))
            }
        }
    }

    /// Write options; without `fieldManager`, ordinary writes are attributed to the client's
    /// user-agent name (as upstream), apply requires it explicitly.
    fn write_options_for(&self, req: &HttpRequest, apply: bool) -> ApiResult<WriteOptions> {
        let mut o = self.write_options()?;
        if o.field_manager.is_none() && !apply {
            let ua = header_str(req, header::USER_AGENT);
            let name: String =
                ua.split('/').next().unwrap_or("").chars().filter(|c| !c.is_control()).take(128).collect();
            if !name.is_empty() {
                o.field_manager = Some(name);
            }
        }
        Ok(o)
    }

    fn write_options(&self) -> ApiResult<WriteOptions> {
        let dry_run = match self.get("dryRun") {
            None | Some("") => false,
            Some("All") => true,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "dryRun: Unsupported value: \"{other}\": supported values: \"All\""
                )))
            }
        };
        let field_manager = self.get("fieldManager").filter(|s| !s.is_empty()).map(str::to_string);
        if let Some(m) = &field_manager {
            if m.len() > 128 || m.chars().any(|c| c.is_control()) {
                return Err(ApiError::BadRequest(
                    "fieldManager: Invalid value: must be at most 128 printable characters".into(),
                ));
            }
        }
        Ok(WriteOptions {
            dry_run,
            field_manager,
            field_validation: FieldValidation::parse(self.get("fieldValidation").unwrap_or(""))?,
            force: self.flag("force")?,
        })
    }

    fn list_options(&self, res: &ResourceInfo) -> ApiResult<ListOptions> {
        let label_selector = LabelSelector::parse(self.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::BadRequest(format!("unable to parse requirement: {e}")))?;
        let field_selector =
            FieldSelector::parse(self.get("fieldSelector").unwrap_or(""), res.group, res.kind)
                .map_err(ApiError::BadRequest)?;
        let limit = match self.get("limit") {
            None | Some("") => 0,
            Some(l) => {
                l.parse::<i64>().map_err(|_| ApiError::BadRequest(format!("invalid limit: {l:?}")))?.max(0)
                    as usize
            }
        };
        let rvm = self.get("resourceVersionMatch").filter(|s| !s.is_empty()).map(str::to_string);
        if let Some(m) = &rvm {
            if m != "NotOlderThan" && m != "Exact" {
                return Err(ApiError::BadRequest(format!(
                    "resourceVersionMatch: Unsupported value: \"{m}\": supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
        }
        Ok(ListOptions {
            label_selector,
            field_selector,
            limit,
            continue_token: self.get("continue").filter(|s| !s.is_empty()).map(str::to_string),
            resource_version: self.get("resourceVersion").map(str::to_string),
            resource_version_match: rvm,
        })
    }
}

/// Reads the body with the size limit.
async fn read_body(mut payload: web::Payload, limit: usize) -> ApiResult<Bytes> {
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

fn decode_patch(req: &HttpRequest, body: &[u8]) -> ApiResult<(PatchType, Value)> {
    let mt = media_type(req);
    let pt = match mt.as_str() {
        "application/json-patch+json" => PatchType::Json,
        "application/merge-patch+json" => PatchType::Merge,
        "application/strategic-merge-patch+json" => PatchType::Strategic,
        "application/apply-patch+yaml" | "application/apply-patch+json" => PatchType::Apply,
        other => {
            return Err(unsupported_media(
                other,
                "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml",
            ))
        }
    };
    if body.is_empty() {
        return Err(ApiError::BadRequest("the patch body is empty".into()));
    }
    let v = if pt == PatchType::Apply { parse_yaml(body)? } else { parse_json(body)? };
    match (pt, &v) {
        (PatchType::Json, Value::Array(_)) => {}
        (PatchType::Json, _) => {
            return Err(ApiError::BadRequest("json patch must be a list of operations".into()));
        }
        (_, Value::Object(_)) => {}
        _ => return Err(ApiError::BadRequest("patch body must be a JSON object".into())),
    }
    Ok((pt, v))
}

/// What the client accepts back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    Json,
    Table { include_object: bool, include_none: bool },
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
    if !accept.is_empty()
        && !accept.split(',').any(|p| {
            let mt = p.split(';').next().unwrap_or("").trim();
            matches!(
                mt,
                "application/json"
                    | "*/*"
                    | "application/*"
                    | "application/vnd.kubernetes.protobuf"
                    | "application/yaml"
                    | ""
            )
        })
    {
        return Err(ApiError::NotAcceptable(format!(
            "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {accept:?})"
        )));
    }
    Ok(Output::Json)
}

fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

fn table(
    res: &ResourceInfo,
    objs: &[Arc<Value>],
    rv: u64,
    cont: Option<&str>,
    out: Output,
    with_columns: bool,
) -> Value {
    let now = jiff::Timestamp::now();
    let (include_object, include_none) = match out {
        Output::Table { include_object, include_none } => (include_object, include_none),
        Output::Json => (false, false),
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
        Output::Table { .. } => {
            let rv = meta::meta_str(&obj, "resourceVersion").and_then(|s| s.parse().ok()).unwrap_or(0);
            let t = table(res, &[Arc::new(obj)], rv, None, out, true);
            let bytes = serde_json::to_vec(&t).unwrap_or_default();
            HttpResponse::build(code).content_type(TABLE_CT).body(bytes)
        }
    }
}

/// A parsed resource path.
struct Target {
    res: &'static ResourceInfo,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn not_found_path() -> ApiError {
    ApiError::NotFound { message: "the server could not find the requested resource".into(), details: None }
}

fn parse_target(group: &str, version: &str, segs: &[&str]) -> ApiResult<Target> {
    let find = |plural: &str| registry::find(group, version, plural).ok_or_else(not_found_path);
    let target = match segs {
        ["namespaces", ns, plural, rest @ ..]
            if registry::find(group, version, plural).is_some_and(|r| r.namespaced()) =>
        {
            let res = find(plural)?;
            match rest {
                [] => Target { res, namespace: Some(ns.to_string()), name: None, subresource: None },
                [name] => Target {
                    res,
                    namespace: Some(ns.to_string()),
                    name: Some(name.to_string()),
                    subresource: None,
                },
                [name, sub] => Target {
                    res,
                    namespace: Some(ns.to_string()),
                    name: Some(name.to_string()),
                    subresource: Some(sub.to_string()),
                },
                _ => return Err(not_found_path()),
            }
        }
        [plural] => Target { res: find(plural)?, namespace: None, name: None, subresource: None },
        [plural, name] => {
            let res = find(plural)?;
            if res.namespaced() {
                return Err(not_found_path());
            }
            Target { res, namespace: None, name: Some(name.to_string()), subresource: None }
        }
        [plural, name, sub] => {
            let res = find(plural)?;
            if res.namespaced() {
                return Err(not_found_path());
            }
            Target { res, namespace: None, name: Some(name.to_string()), subresource: Some(sub.to_string()) }
        }
        _ => return Err(not_found_path()),
    };
    if let Some(s) = &target.subresource {
        if target.res.subresource(s).is_none() {
            return Err(not_found_path());
        }
    }
    if target.name.as_deref() == Some("") {
        return Err(not_found_path());
    }
    Ok(target)
}

/// The catch-all handler: every request goes through here.
pub async fn dispatch(req: HttpRequest, payload: web::Payload, gw: web::Data<Gateway>) -> HttpResponse {
    match handle(&req, payload, &gw).await {
        Ok(resp) => resp,
        Err(e) => {
            if e.code() >= 500 {
                tracing::warn!(method = %req.method(), path = %req.path(), "request failed: {e}");
            }
            error_response(&e)
        }
    }
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
    let user = authenticate(req, gw)?;
    let q = Query(query_pairs(req)?);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["api"] => return discovery_response(req, true, &gw.server_address),
        ["apis"] => return discovery_response(req, false, &gw.server_address),
        ["api", "v1"] => return plain(discovery::resource_list("", "v1")),
        ["apis", g] => return plain(discovery::legacy_group_doc(g)),
        ["apis", g, v] => return plain(discovery::resource_list(g, v)),
        ["openapi", "v2"] => return Err(not_found_path()),
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
                if q.get("hash") == Some(h) {
                    resp.insert_header((header::CACHE_CONTROL, "public, immutable"));
                }
            }
            return Ok(resp.body(doc.as_ref().clone()));
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found_path()),
    };
    let target = parse_target(group, version, rest)?;
    resource(req, payload, gw, &user, &q, target).await
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
    q: &Query,
    t: Target,
) -> ApiResult<HttpResponse> {
    let svc = &gw.service;
    let res = t.res;
    let ns = t.namespace.as_deref();
    let method = req.method().clone();
    let out = output(req, q)?;
    if !res.stored && !(method == Method::POST && t.name.is_none()) {
        return Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource ({})",
            res.plural
        )));
    }
    match (&method, t.name.as_deref(), t.subresource.as_deref()) {
        // Collections.
        (&Method::GET, None, None) => {
            let opts = q.list_options(res)?;
            if q.flag("watch")? {
                svc.authorize(user, "watch", res, None, ns, None)?;
                return watch(gw, res, ns, opts, q, out);
            }
            let page = svc.list(user, res, ns, &opts).await?;
            let resp = match out {
                Output::Json => {
                    let items: Vec<&Value> = page.items.iter().map(|a| a.as_ref()).collect();
                    let mut md = json!({"resourceVersion": page.revision.to_string()});
                    if let Some(c) = &page.continue_token {
                        md["continue"] = json!(c);
                    }
                    json_response(
                        StatusCode::OK,
                        &json!({"kind": res.list_kind, "apiVersion": res.api_version(), "metadata": md, "items": items}),
                    )
                }
                Output::Table { .. } => {
                    let t = table(res, &page.items, page.revision, page.continue_token.as_deref(), out, true);
                    HttpResponse::Ok().content_type(TABLE_CT).body(serde_json::to_vec(&t).unwrap_or_default())
                }
            };
            Ok(resp)
        }
        (&Method::POST, None, None) => {
            let body = read_body(payload, gw.max_body_bytes).await?;
            let obj = decode_object(req, &body)?;
            if !res.stored {
                return review(gw, user, res, obj);
            }
            let opts = q.write_options_for(req, false)?;
            let r = svc.create(user, res, ns, obj, &opts).await?;
            Ok(with_warnings(object_response(StatusCode::CREATED, res, r.object, out), &r.warnings))
        }
        (&Method::DELETE, None, None) => {
            let body = read_body(payload, gw.max_body_bytes).await?;
            let dopts = delete_options(req, &body, q)?;
            let lopts = q.list_options(res)?;
            let v = svc.delete_collection(user, res, ns, &lopts, &dopts).await?;
            Ok(json_response(StatusCode::OK, &v))
        }
        // Single objects.
        (&Method::GET, Some(name), None) => {
            let obj = svc.get(user, res, ns, name).await?;
            Ok(object_response(StatusCode::OK, res, obj, out))
        }
        (&Method::PUT, Some(name), None | Some("status")) => {
            let status_only = t.subresource.is_some();
            let body = read_body(payload, gw.max_body_bytes).await?;
            let obj = decode_object(req, &body)?;
            let opts = q.write_options_for(req, false)?;
            let r = svc.update(user, res, ns, name, obj, &opts, status_only).await?;
            let code = if r.created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(with_warnings(object_response(code, res, r.object, out), &r.warnings))
        }
        (&Method::PATCH, Some(name), None | Some("status")) => {
            let status_only = t.subresource.is_some();
            let body = read_body(payload, gw.max_body_bytes).await?;
            let (pt, patch) = decode_patch(req, &body)?;
            let opts = q.write_options_for(req, pt == PatchType::Apply)?;
            if pt != PatchType::Apply && q.get("force").is_some() {
                return Err(ApiError::BadRequest(
                    "force: Forbidden: may not be specified for non-apply patch".into(),
                ));
            }
            let r = svc.patch(user, res, ns, name, pt, patch, &opts, status_only).await?;
            let code = if r.created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(with_warnings(object_response(code, res, r.object, out), &r.warnings))
        }
        (&Method::DELETE, Some(name), None) => {
            let body = read_body(payload, gw.max_body_bytes).await?;
            let dopts = delete_options(req, &body, q)?;
            let (obj, _) = svc.delete(user, res, ns, name, &dopts).await?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (&Method::GET, Some(name), Some("status")) => {
            svc.authorize(user, "get", res, Some("status"), ns, Some(name))?;
            let obj = svc.get(&User::system(), res, ns, name).await?;
            Ok(object_response(StatusCode::OK, res, obj, out))
        }
        (&Method::GET, Some(name), Some("scale")) => {
            Ok(json_response(StatusCode::OK, &svc.get_scale(user, res, ns, name).await?))
        }
        (&Method::PUT, Some(name), Some("scale")) => {
            let body = read_body(payload, gw.max_body_bytes).await?;
            let obj = decode_object(req, &body)?;
            let opts = q.write_options_for(req, false)?;
            let v = svc.update_scale(user, res, ns, name, &opts, "update", |_| Ok(obj.clone())).await?;
            Ok(json_response(StatusCode::OK, &v))
        }
        (&Method::PATCH, Some(name), Some("scale")) => {
            let body = read_body(payload, gw.max_body_bytes).await?;
            let (pt, patch) = decode_patch(req, &body)?;
            let opts = q.write_options_for(req, false)?;
            let v = svc
                .update_scale(user, res, ns, name, &opts, "patch", |cur| match pt {
                    PatchType::Json => capstan_api::patch::json_patch(cur, &patch)
                        .map_err(|e| ApiError::BadRequest(e.to_string())),
                    _ => capstan_api::patch::merge_patch(cur, &patch)
                        .map_err(|e| ApiError::BadRequest(e.to_string())),
                })
                .await?;
            Ok(json_response(StatusCode::OK, &v))
        }
        (&Method::POST, Some(name), Some("binding")) => {
            let body = read_body(payload, gw.max_body_bytes).await?;
            let obj = decode_object(req, &body)?;
            let v = svc.bind(user, ns.unwrap_or(""), name, &obj).await?;
            Ok(json_response(StatusCode::CREATED, &v))
        }
        (&Method::POST, Some(name), Some("eviction")) => {
            let body = read_body(payload, gw.max_body_bytes).await?;
            let obj = decode_object(req, &body)?;
            svc.authorize(user, "create", res, Some("eviction"), ns, Some(name))?;
            let dopts = DeleteOptions::from_json(obj.get("deleteOptions"))?;
            svc.delete(&User::system(), res, ns, name, &dopts).await?;
            Ok(json_response(StatusCode::CREATED, &success_status(None)))
        }
        (_, Some(name), Some(sub @ ("log" | "exec" | "attach" | "portforward"))) => {
            svc.authorize(user, if sub == "log" { "get" } else { "create" }, res, Some(sub), ns, Some(name))?;
            let pod = svc.get(&User::system(), res, ns, name).await?;
            let node = pod["spec"].get("nodeName").and_then(Value::as_str).unwrap_or("");
            Err(ApiError::BadRequest(if node.is_empty() {
                format!("pod {name} is not scheduled to a node yet")
            } else {
                format!("the node agent of {node} does not serve {sub} yet")
            }))
        }
        _ => Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource ({} {})",
            method,
            req.path()
        ))),
    }
}

fn delete_options(req: &HttpRequest, body: &[u8], q: &Query) -> ApiResult<DeleteOptions> {
    let v = if body.is_empty() { None } else { Some(decode_object(req, body)?) };
    let mut o = DeleteOptions::from_json(v.as_ref())?;
    if q.get("dryRun") == Some("All") {
        o.dry_run = true;
    }
    if let Some(g) = q.get("gracePeriodSeconds") {
        o.grace_period_seconds =
            Some(g.parse().map_err(|_| ApiError::BadRequest(format!("invalid gracePeriodSeconds: {g:?}")))?);
    }
    if let Some(p) = q.get("propagationPolicy") {
        o.propagation_policy = Some(p.to_string());
    }
    Ok(o)
}

/// SelfSubjectAccessReview and SelfSubjectRulesReview.
fn review(gw: &Gateway, user: &User, res: &ResourceInfo, obj: Value) -> ApiResult<HttpResponse> {
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    let mut out = obj.clone();
    out["apiVersion"] = json!(res.api_version());
    out["kind"] = json!(res.kind);
    if out.get("metadata").is_none() {
        out["metadata"] = json!({});
    }
    match res.kind {
        "SelfSubjectAccessReview" => {
            let (attrs, nonresource) = if let Some(ra) = spec.get("resourceAttributes") {
                let s = |k: &str| ra.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                (
                    Attributes {
                        verb: s("verb"),
                        group: s("group"),
                        resource: s("resource"),
                        subresource: s("subresource"),
                        namespace: s("namespace"),
                        name: s("name"),
                    },
                    false,
                )
            } else if let Some(nr) = spec.get("nonResourceAttributes") {
                let s = |k: &str| nr.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                (
                    Attributes {
                        verb: s("verb"),
                        group: String::new(),
                        resource: s("path"),
                        subresource: String::new(),
                        namespace: String::new(),
                        name: String::new(),
                    },
                    true,
                )
            } else {
                return Err(ApiError::invalid(
                    res.kind,
                    res.group,
                    "",
                    vec![capstan_api::Cause::invalid(
                        "spec.resourceAttributes",
                        "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
                    )],
                ));
            };
            let _ = nonresource;
            let status = match gw.service.decide(user, &attrs) {
                Decision::Allow(r) => json!({"allowed": true, "reason": r}),
                Decision::Deny(r) => json!({"allowed": false, "reason": r}),
            };
            out["status"] = status;
        }
        _ => {
            let probe = Attributes {
                verb: "*".into(),
                group: "*".into(),
                resource: "*".into(),
                subresource: String::new(),
                namespace: spec.get("namespace").and_then(Value::as_str).unwrap_or("").to_string(),
                name: String::new(),
            };
            let all = matches!(gw.service.decide(user, &probe), Decision::Allow(_));
            out["status"] = if all {
                json!({"resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                       "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}], "incomplete": false})
            } else {
                json!({"resourceRules": [], "nonResourceRules": [], "incomplete": false})
            };
        }
    }
    Ok(json_response(StatusCode::CREATED, &out))
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
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

impl WatchState {
    fn render(&mut self, kind: EventKind, obj: &Arc<Value>) -> Bytes {
        match self.out {
            Output::Json => event_line(kind.as_str(), obj),
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
        event_line(
            "BOOKMARK",
            &json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": md}),
        )
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some(b);
            }
            if self.done {
                return None;
            }
            match self.svc.watch_events(self.res, self.ns.as_deref(), &self.opts, self.cursor, 512) {
                Err(e) => {
                    self.done = true;
                    return Some(event_line("ERROR", &e.to_status()));
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
    let mut pending = VecDeque::new();
    let cache = svc.cache().clone();
    let rx = cache.subscribe();
    let mut state_first_table = true;
    let initial = send_initial.unwrap_or(rv.is_empty() || rv == "0");
    let cursor = if initial {
        // Current state as ADDED events, then changes after the snapshot.
        let prefix = crate::keys::prefix(res, ns);
        let end = capstan_storage::prefix_end(&prefix);
        let (items, revision, _) = cache.list(&prefix, &end, 0, |o| {
            opts.label_selector.matches(&meta::labels(o)) && opts.field_selector.matches(o)
        });
        let mut st = WatchState {
            svc: svc.clone(),
            res,
            ns: ns.map(str::to_string),
            opts: opts.clone(),
            cursor: revision,
            pending: VecDeque::new(),
            rx: rx.clone(),
            deadline: tokio::time::Instant::now(),
            bookmarks,
            out,
            first_table: true,
            done: false,
        };
        for o in &items {
            let b = st.render(EventKind::Added, o);
            pending.push_back(b);
        }
        if send_initial == Some(true) && bookmarks {
            pending.push_back(st.bookmark(Some(json!({"k8s.io/initial-events-end": "true"}))));
        }
        state_first_table = st.first_table;
        revision
    } else {
        rv.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("invalid resource version: {rv:?}")))?
    };
    let state = WatchState {
        svc,
        res,
        ns: ns.map(str::to_string),
        opts,
        cursor,
        pending,
        rx,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
        bookmarks,
        out,
        first_table: state_first_table,
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        st.next_chunk().await.map(|b| (Ok::<Bytes, actix_web::Error>(b), st))
    });
    let ct = match out {
        Output::Json => "application/json",
        Output::Table { .. } => TABLE_CT,
    };
    Ok(HttpResponse::Ok()
        .content_type(ct)
        .insert_header((header::CACHE_CONTROL, "no-cache, private"))
        .streaming(stream))
}
