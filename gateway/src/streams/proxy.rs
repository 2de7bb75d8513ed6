//! The proxy subresources `pods/proxy`, `services/proxy` and `nodes/proxy` (see [`serve_node`])
//! (`/api/v1/namespaces/<ns>/pods/<[scheme:]name[:port]>/proxy/<path>`, and the same for
//! services), as upstream's `ResourceLocation`s: a pod's port defaults to its first
//! container port; a service's port (a number or a port name) picks a ready endpoint of that
//! port from the Service's Endpoints, at random. The HTTP request goes to the pod through its
//! node agent — a port-forward session over the bus carrying one connection — so the
//! gateway needs no route to the pod network. RBAC as upstream: the request's verb (GET →
//! `get`, POST → `create`, ...) on `pods/proxy` or `services/proxy`, the name being the
//! path segment (`web:80`).
//!
//! Only `http` backends are reached; responses are streamed back unchanged (upstream also
//! rewrites links in HTML pages, which this does not).

use super::{node_of, open, str_at, EndOnDrop};
use crate::auth::User;
use crate::http::Gateway;
use crate::status::{ApiError, ApiResult};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use capstan_api::registry::{self, ResourceInfo};
use capstan_bus::sessions::{FrameBody, SessionKind};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The session stream that carries the one proxied connection.
const STREAM: u32 = 1;
/// How long the backend may take to answer the request's head.
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Headers not passed on (hop-by-hop ones, and the caller's credentials, which upstream's
/// authentication filter removes before proxying).
pub(crate) const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "authorization",
    "host",
    "content-length",
];

/// A proxy request's parts of the path.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    /// `pods` or `services`.
    pub plural: &'static str,
    /// The namespace.
    pub namespace: String,
    /// `[scheme:]name[:port]`.
    pub id: String,
    /// The path to request from the backend, with its leading `/`.
    pub path: String,
}

/// The proxy request `segs` (of `raw_path`) names, if it is one.
pub fn route(segs: &[&str], raw_path: &str) -> Option<Route> {
    let ["api", "v1", "namespaces", ns, plural, id, "proxy", rest @ ..] = segs else { return None };
    let plural = match *plural {
        "pods" => "pods",
        "services" => "services",
        _ => return None,
    };
    let mut path = format!("/{}", rest.join("/"));
    if !rest.is_empty() && raw_path.ends_with('/') {
        path.push('/');
    }
    Some(Route { plural, namespace: ns.to_string(), id: id.to_string(), path })
}

/// A `nodes/proxy` request (`/api/v1/nodes/<[scheme:]node[:port]>/proxy/<path>`): the
/// node's id and the path on the node.
pub fn node_route(segs: &[&str], raw_path: &str) -> Option<(String, String)> {
    let ["api", "v1", "nodes", id, "proxy", rest @ ..] = segs else { return None };
    let mut path = format!("/{}", rest.join("/"));
    if !rest.is_empty() && raw_path.ends_with('/') {
        path.push('/');
    }
    Some((id.to_string(), path))
}

/// Serves `nodes/proxy` from the node agent's own endpoints (`/healthz`, `/metrics`,
/// `/logs/`), reached over the bus as logs and exec are; RBAC `<verb>` on `nodes/proxy`.
pub async fn serve_node(
    req: &HttpRequest,
    gw: &Gateway,
    user: &User,
    id: &str,
    path: &str,
) -> ApiResult<HttpResponse> {
    let nodes = core("nodes");
    gw.service.authorize(user, &verb(req.method().as_str()), nodes, Some("proxy"), None, Some(id))?;
    let (_, name, _) =
        split_id(id).ok_or_else(|| ApiError::BadRequest(format!("invalid node request {id:?}")))?;
    gw.service.get(&User::system(), nodes, None, name).await?;
    let nobody = serde_json::json!({"metadata": {"namespace": "", "name": ""}});
    let kind = SessionKind::NodeProxy { method: req.method().as_str().to_string(), path: path.to_string() };
    let session = open(gw, name, &nobody, None, kind).await?;
    let capstan_bus::sessions::Session { mut rx, tx } = session;
    let mut guard = EndOnDrop::new(tx);
    let mut head: Option<Value> = None;
    let mut body = bytes::BytesMut::new();
    let deadline = tokio::time::Instant::now() + RESPONSE_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => {
                return Err(ApiError::Unavailable(format!(
                    "error trying to reach node {name}: timed out waiting for the response"
                )))
            }
            Ok(Some(FrameBody::Data { stream: 0, data })) => head = serde_json::from_slice(&data).ok(),
            Ok(Some(FrameBody::Data { data, .. })) => {
                if body.len() + data.len() > gw.max_body_bytes.max(16 << 20) {
                    return Err(ApiError::Unavailable(format!("the response of node {name} is too large")));
                }
                body.extend_from_slice(&data);
            }
            Ok(Some(FrameBody::End) | None) => {
                guard.disarm();
                break;
            }
            Ok(Some(_)) => {}
        }
    }
    let head = head.ok_or_else(|| ApiError::Unavailable(format!("node {name} sent no response")))?;
    let code = head["code"].as_u64().and_then(|c| u16::try_from(c).ok()).unwrap_or(502);
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    let ct = head["contentType"].as_str().unwrap_or("application/octet-stream").to_string();
    Ok(HttpResponse::build(status).content_type(ct).body(body.freeze()))
}

/// Upstream's `SplitSchemeNamePort`: `name`, `name:port` or `scheme:name:port`.
fn split_id(id: &str) -> Option<(&str, &str, &str)> {
    let parts: Vec<&str> = id.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [n] => ("", *n, ""),
        [n, p] => ("", *n, *p),
        [s, n, p] => (*s, *n, *p),
        _ => return None,
    };
    (!name.is_empty() && matches!(scheme, "" | "http" | "https")).then_some((scheme, name, port))
}

/// The RBAC verb of a proxied request (upstream's `RequestInfo` verbs for methods).
fn verb(method: &str) -> String {
    match method {
        "GET" | "HEAD" => "get".into(),
        "POST" => "create".into(),
        "PUT" => "update".into(),
        "PATCH" => "patch".into(),
        "DELETE" => "delete".into(),
        m => m.to_ascii_lowercase(),
    }
}

fn core(plural: &str) -> &'static ResourceInfo {
    registry::find("", "v1", plural).expect("a core resource")
}

/// Serves a proxy request.
pub async fn serve(
    req: &HttpRequest,
    payload: web::Payload,
    gw: &Gateway,
    user: &User,
    r: Route,
) -> ApiResult<HttpResponse> {
    let res = core(r.plural);
    gw.service.authorize(
        user,
        &verb(req.method().as_str()),
        res,
        Some("proxy"),
        Some(&r.namespace),
        Some(&r.id),
    )?;
    let what = if r.plural == "pods" { "pod" } else { "service" };
    let (scheme, name, port) =
        split_id(&r.id).ok_or_else(|| ApiError::BadRequest(format!("invalid {what} request {:?}", r.id)))?;
    if scheme == "https" {
        return Err(ApiError::BadRequest(format!(
            "invalid {what} request {:?}: this server proxies to http backends only",
            r.id
        )));
    }
    let (pod, port) = if r.plural == "pods" {
        let pod = gw.service.get(&User::system(), res, Some(&r.namespace), name).await?;
        let port = if port.is_empty() { first_container_port(&pod).unwrap_or(80) } else { parse_port(port)? };
        (pod, port)
    } else {
        service_endpoint(gw, &r.namespace, name, port, &r.id).await?
    };
    let node = node_of(&pod)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "pod {} does not have a host assigned",
                str_at(&pod, &["metadata", "name"]).unwrap_or(name)
            ))
        })?
        .to_string();
    let body = crate::http::read_body(payload, gw.max_body_bytes).await?;
    forward(req, gw, &node, &pod, port, &r.path, body).await
}

fn parse_port(p: &str) -> ApiResult<u16> {
    p.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::Unavailable(format!("error trying to reach service: invalid port {p:?}")))
}

fn first_container_port(pod: &Value) -> Option<u16> {
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .find_map(|c| c["ports"].as_array()?.first()?["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
}

/// Upstream's service `ResourceLocation`: the service port (by number or name), then a ready
/// address of an Endpoints subset with that port, at random; its pod and the endpoint port.
async fn service_endpoint(
    gw: &Gateway,
    ns: &str,
    name: &str,
    port: &str,
    id: &str,
) -> ApiResult<(Value, u16)> {
    let svc = gw.service.get(&User::system(), core("services"), Some(ns), name).await?;
    let mut port_name = port.to_string();
    if let Ok(n) = port.parse::<i64>() {
        let found = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["port"].as_i64() == Some(n))
            .map(|p| p["name"].as_str().unwrap_or("").to_string());
        port_name = found.ok_or_else(|| {
            ApiError::Unavailable(format!("no service port {n} found for service {name:?}"))
        })?;
    }
    let none = || ApiError::Unavailable(format!("no endpoints available for service {name:?}"));
    let eps = match gw.service.get(&User::system(), core("endpoints"), Some(ns), name).await {
        Ok(e) => e,
        Err(ApiError::NotFound { .. }) => return Err(none()),
        Err(e) => return Err(e),
    };
    let subsets = eps["subsets"].as_array().cloned().unwrap_or_default();
    if subsets.is_empty() {
        return Err(none());
    }
    let mut candidates = Vec::new();
    for ss in &subsets {
        let Some(p) = ss["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str().unwrap_or("") == port_name)
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for a in ss["addresses"].as_array().into_iter().flatten() {
            if a["targetRef"]["kind"] == "Pod" {
                if let Some(pod) = a["targetRef"]["name"].as_str() {
                    candidates.push((pod.to_string(), p));
                }
            }
        }
    }
    // A random start, as upstream (without a new dependency: the clock's nanoseconds).
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0);
    for k in 0..candidates.len() {
        let (pod_name, p) = &candidates[(start + k) % candidates.len()];
        if let Ok(pod) = gw.service.get(&User::system(), core("pods"), Some(ns), pod_name).await {
            return Ok((pod, *p));
        }
    }
    Err(ApiError::Unavailable(format!("no endpoints available for service {id:?}")))
}

/// Sends the request to `port` of the pod through a port-forward session to its node and
/// streams the response back.
async fn forward(
    req: &HttpRequest,
    gw: &Gateway,
    node: &str,
    pod: &Value,
    port: u16,
    path: &str,
    body: Bytes,
) -> ApiResult<HttpResponse> {
    let ip = str_at(pod, &["status", "podIP"]).unwrap_or("").to_string();
    let session = open(gw, node, pod, None, SessionKind::PortForward).await?;
    let guard = EndOnDrop::new(session.tx.clone());
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    session
        .tx
        .send(FrameBody::Open { stream: STREAM, port })
        .await
        .map_err(|e| ApiError::Unavailable(format!("error trying to reach service: {e}")))?;
    actix_rt::spawn(pump(session, theirs, failure.clone(), guard));

    let unreachable = |e: String| {
        let why = failure.lock().ok().and_then(|f| f.clone()).unwrap_or(e);
        ApiError::Unavailable(format!("error trying to reach service: {why}"))
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(ours))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    actix_rt::spawn(async move {
        let _ = conn.await;
    });
    let uri = match req.query_string() {
        "" => path.to_string(),
        q => format!("{path}?{q}"),
    };
    let mut builder = hyper::Request::builder().method(req.method().as_str()).uri(uri);
    for (k, v) in req.headers() {
        if DROPPED.contains(&k.as_str()) || k.as_str().starts_with("impersonate-") {
            continue;
        }
        builder = builder.header(k.as_str(), v.as_bytes());
    }
    let host = if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") };
    let request = builder
        .header("host", host)
        .body(http_body_util::Full::new(body))
        .map_err(|e| ApiError::BadRequest(format!("invalid proxy request: {e}")))?;
    let response = tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| unreachable("timed out waiting for the response".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HttpResponse::build(status);
    for (k, v) in response.headers() {
        if DROPPED.contains(&k.as_str()) {
            continue;
        }
        out.append_header((k.as_str(), v.as_bytes()));
    }
    let stream = response
        .into_body()
        .into_data_stream()
        .map(|r| r.map_err(|e| actix_web::error::ErrorBadGateway(e.to_string())));
    Ok(out.streaming(stream))
}

/// Moves bytes between the local end of the connection and the session's stream; a
/// connection failure reported by the node is kept in `failure`.
async fn pump(
    session: capstan_bus::sessions::Session,
    mut io: tokio::io::DuplexStream,
    failure: Arc<Mutex<Option<String>>>,
    mut guard: EndOnDrop,
) {
    let capstan_bus::sessions::Session { mut rx, tx } = session;
    let mut buf = vec![0u8; 32 * 1024];
    let mut local_open = true;
    loop {
        tokio::select! {
            n = io.read(&mut buf), if local_open => match n {
                Ok(0) | Err(_) => {
                    local_open = false;
                    if tx.send(FrameBody::Close { stream: STREAM }).await.is_err() {
                        return;
                    }
                }
                Ok(n) => {
                    if tx.send_data(STREAM, &buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            f = rx.recv() => match f {
                Some(FrameBody::Data { data, .. }) => {
                    if io.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Some(FrameBody::Close { .. }) => {
                    let _ = io.shutdown().await;
                    break;
                }
                Some(FrameBody::Error { message, .. }) => {
                    if let Ok(mut f) = failure.lock() {
                        *f = Some(message);
                    }
                    break;
                }
                Some(FrameBody::End) | None => {
                    guard.disarm();
                    return;
                }
                Some(_) => {}
            }
        }
    }
    // The backend's side ended: let the rest of the response be read, then end the session.
    let _ = tx.send(FrameBody::End).await;
    guard.disarm();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_ids_as_upstream() {
        let segs = ["api", "v1", "namespaces", "ns", "services", "web:80", "proxy", "a", "b"];
        let r = route(&segs, "/api/v1/namespaces/ns/services/web:80/proxy/a/b/").unwrap();
        assert_eq!(
            r,
            Route { plural: "services", namespace: "ns".into(), id: "web:80".into(), path: "/a/b/".into() }
        );
        let segs = ["api", "v1", "namespaces", "ns", "pods", "p", "proxy"];
        assert_eq!(route(&segs, "/api/v1/namespaces/ns/pods/p/proxy/").unwrap().path, "/");
        assert!(route(&["api", "v1", "namespaces", "ns", "pods", "p", "log"], "").is_none());
        assert!(route(&["api", "v1", "namespaces", "ns", "secrets", "p", "proxy"], "").is_none());
        assert_eq!(split_id("web"), Some(("", "web", "")));
        assert_eq!(split_id("web:http"), Some(("", "web", "http")));
        assert_eq!(split_id("https:web:443"), Some(("https", "web", "443")));
        assert_eq!(split_id("ftp:web:21"), None);
        assert_eq!(split_id(":80"), None);
        assert_eq!(split_id("a:b:c:d"), None);
        let segs = ["api", "v1", "nodes", "n1", "proxy", "logs"];
        assert_eq!(node_route(&segs, "/api/v1/nodes/n1/proxy/logs/"), Some(("n1".into(), "/logs/".into())));
        assert_eq!(node_route(&["api", "v1", "nodes", "n1", "proxy"], "").unwrap().1, "/");
        assert!(node_route(&["api", "v1", "nodes", "n1", "status"], "").is_none());
        assert_eq!(verb("GET"), "get");
        assert_eq!(verb("POST"), "create");
        assert_eq!(verb("OPTIONS"), "options");
    }
}
