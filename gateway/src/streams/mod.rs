//! The pod subresources served by node agents: `pods/log`, `pods/exec`, `pods/attach` and
//! `pods/portforward`. The gateway checks the request and the pod, opens a node session
//! over the bus (`capstan_bus::sessions`) to the agent of `spec.nodeName`, and relays bytes
//! between the client's protocol and the session's frames:
//!
//! - logs: a plain (chunked) `text/plain` response ([`logs`]);
//! - exec and attach: WebSocket with `v5.channel.k8s.io` or `v4.channel.k8s.io` ([`exec`]);
//! - port-forward: SPDY/3.1 tunnelled in WebSocket, `SPDY/3.1+portforward.k8s.io`
//!   ([`portforward`]), or the plain WebSocket channel protocol (`v4.channel.k8s.io`, one
//!   data and one error channel per port: [`wsportforward`]);
//! - `pods/proxy` and `services/proxy`: HTTP relayed over a port-forward session ([`proxy`]).
//!
//! kubectl falls back to SPDY over a plain HTTP upgrade (`POST`, `Upgrade: SPDY/3.1`) when
//! the WebSocket upgrade fails. actix-web hands a handler the raw connection only after a
//! WebSocket (or CONNECT) upgrade, so that fallback is answered with the error the
//! WebSocket attempt got (see [`Failures`]), or 400 when there was none.

pub mod exec;
pub mod logs;
pub mod portforward;
pub mod proxy;
pub mod wsportforward;

use crate::auth::User;
use crate::dispatch::{Query, Target};
use crate::http::Gateway;
use crate::status::{ApiError, ApiResult};
use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};
use capstan_bus::sessions::{self, OpenError, Session, SessionKind, SessionRequest};
use capstan_bus::Bus;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the gateway waits for a node agent to answer a session request.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the error of a failed WebSocket attempt is kept for the SPDY retry.
const FAILURE_TTL: Duration = Duration::from_secs(30);
/// The most failures kept.
const FAILURE_CAP: usize = 1024;

/// Whether `sub` is a subresource of pods this module serves.
pub fn is_node_stream(target: &Target) -> bool {
    target.res.group.is_empty()
        && target.res.kind == "Pod"
        && target.name.is_some()
        && matches!(target.subresource.as_deref(), Some("log" | "exec" | "attach" | "portforward"))
}

/// Errors of recent WebSocket upgrade attempts, by user and URL. kubectl retries a failed
/// WebSocket upgrade as an SPDY `POST` to the same URL and prints the error of that retry,
/// so the retry is answered with the first attempt's error (say, the node agent's
/// rejection) instead of "SPDY is not supported".
#[derive(Default)]
pub struct Failures {
    map: Mutex<HashMap<String, (Instant, ApiError)>>,
}

impl Failures {
    fn key(user: &User, req: &HttpRequest) -> String {
        format!("{}\n{}?{}", user.name, req.path(), req.query_string())
    }

    fn remember(&self, user: &User, req: &HttpRequest, e: &ApiError) {
        let Ok(mut map) = self.map.lock() else { return };
        let now = Instant::now();
        if map.len() >= FAILURE_CAP {
            map.retain(|_, (at, _)| now.duration_since(*at) < FAILURE_TTL);
            if map.len() >= FAILURE_CAP {
                map.clear();
            }
        }
        map.insert(Failures::key(user, req), (now, e.clone()));
    }

    fn take(&self, user: &User, req: &HttpRequest) -> Option<ApiError> {
        let mut map = self.map.lock().ok()?;
        let (at, e) = map.remove(&Failures::key(user, req))?;
        (at.elapsed() < FAILURE_TTL).then_some(e)
    }
}

/// Serves `log`, `exec`, `attach` and `portforward` of a pod.
pub async fn serve(
    req: &HttpRequest,
    payload: web::Payload,
    gw: &Gateway,
    user: &User,
    q: Query,
    t: Target,
) -> ApiResult<HttpResponse> {
    let sub = t.subresource.clone().unwrap_or_default();
    let method = req.method().clone();
    match (sub.as_str(), &method) {
        ("log", &Method::GET) => logs::serve(gw, user, &q, &t).await,
        ("exec" | "attach" | "portforward", &Method::GET) => {
            let r = if sub == "portforward" {
                portforward::serve(req, payload, gw, user, &q, &t).await
            } else {
                exec::serve(req, payload, gw, user, &q, &t).await
            };
            if let Err(e) = &r {
                gw.stream_failures.remember(user, req, e);
            }
            r
        }
        ("exec" | "attach" | "portforward", &Method::POST) => {
            // The SPDY fallback: check what can be checked, so the answer is the real error.
            if sub == "portforward" {
                portforward::check(gw, user, &t).await?;
            } else {
                exec::check(gw, user, &q, &t).await?;
            }
            if let Some(e) = gw.stream_failures.take(user, req) {
                return Err(e);
            }
            Err(ApiError::BadRequest(format!(
                "pods/{sub} is served over WebSocket only ({}); SPDY is not supported by this server",
                if sub == "portforward" {
                    format!(
                        "{}, {}, {}",
                        portforward::PROTOCOL,
                        wsportforward::V4_BINARY,
                        wsportforward::V4_BASE64
                    )
                } else {
                    format!("{}, {}", exec::V5, exec::V4)
                }
            )))
        }
        _ => Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource ({method} pods/{sub})"
        ))),
    }
}

/// The pod of the request, after authorization (`get` for logs, `create` for the rest).
async fn pod(gw: &Gateway, user: &User, t: &Target, verb: &str) -> ApiResult<Value> {
    let name = t.name.as_deref().unwrap_or("");
    let ns = t.namespace.as_deref();
    gw.service.authorize(user, verb, t.res, t.subresource.as_deref(), ns, Some(name))?;
    gw.service.get(&User::system(), t.res, ns, name).await
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// The node the pod is bound to, if any.
fn node_of(pod: &Value) -> Option<&str> {
    str_at(pod, &["spec", "nodeName"]).filter(|n| !n.is_empty())
}

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod.get("spec")
        .and_then(|s| s.get(list))
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).map(str::to_string).collect()
        })
        .unwrap_or_default()
}

/// Which error text to give when a pod has several containers and none was named.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wording {
    /// `pods/log`: every container (init, regular, ephemeral) in one list.
    Log,
    /// exec and attach: the regular containers, then the init containers.
    Stream,
}

/// The container a request is about: the one named (which must exist), else the only
/// one, else the one the `kubectl.kubernetes.io/default-container` annotation names;
/// otherwise 400 in upstream's wording.
fn pick_container(pod: &Value, name: &str, wanted: Option<&str>, wording: Wording) -> ApiResult<String> {
    let regular = names(pod, "containers");
    let init = names(pod, "initContainers");
    let ephemeral = names(pod, "ephemeralContainers");
    let exists = |c: &str| regular.iter().chain(&init).chain(&ephemeral).any(|n| n == c);
    if let Some(c) = wanted.filter(|c| !c.is_empty()) {
        if !exists(c) {
            return Err(ApiError::BadRequest(format!("container {c} is not valid for pod {name}")));
        }
        return Ok(c.to_string());
    }
    match regular.as_slice() {
        [only] => return Ok(only.clone()),
        [] => return Err(ApiError::BadRequest(format!("pod {name} does not have a container"))),
        _ => {}
    }
    if let Some(d) = str_at(pod, &["metadata", "annotations", "kubectl.kubernetes.io/default-container"]) {
        if regular.iter().any(|n| n == d) {
            return Ok(d.to_string());
        }
    }
    Err(ApiError::BadRequest(match wording {
        Wording::Log => {
            let all: Vec<&str> = init.iter().chain(&regular).chain(&ephemeral).map(String::as_str).collect();
            format!("a container name must be specified for pod {name}, choose one of: [{}]", all.join(" "))
        }
        Wording::Stream => {
            let mut m = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                regular.join(" ")
            );
            if !init.is_empty() {
                m.push_str(&format!(" or one of the init containers: [{}]", init.join(" ")));
            }
            m
        }
    }))
}

/// Opens a session to the agent of `node`; a refusal becomes the node's Status, an
/// unreachable agent a 503 naming the node.
async fn open(
    gw: &Gateway,
    node: &str,
    pod: &Value,
    container: Option<String>,
    kind: SessionKind,
) -> ApiResult<Session> {
    let bus: Arc<dyn Bus> = gw.bus.clone().ok_or_else(|| {
        ApiError::Unavailable(format!(
            "the node agent of {node} is not reachable: this gateway runs without a bus"
        ))
    })?;
    let request = SessionRequest {
        session: String::new(),
        namespace: str_at(pod, &["metadata", "namespace"]).unwrap_or("").to_string(),
        pod: str_at(pod, &["metadata", "name"]).unwrap_or("").to_string(),
        uid: str_at(pod, &["metadata", "uid"]).map(str::to_string),
        container,
        kind,
    };
    sessions::open(bus, node, request, OPEN_TIMEOUT).await.map_err(|e| match e {
        OpenError::Rejected { code, reason, message } => {
            let code = if (400..=599).contains(&code) { code } else { 500 };
            ApiError::Relayed { code, reason, message }
        }
        unreachable @ OpenError::Unreachable { .. } => ApiError::Unavailable(unreachable.to_string()),
    })
}

/// Ends a node session when dropped, unless it already ended: the client went away.
struct EndOnDrop {
    tx: Option<sessions::FrameSender>,
}

impl EndOnDrop {
    fn new(tx: sessions::FrameSender) -> EndOnDrop {
        EndOnDrop { tx: Some(tx) }
    }

    /// The session ended (the node said so, or `End` was sent): nothing to do on drop.
    fn disarm(&mut self) {
        self.tx = None;
    }
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if let (Some(tx), Ok(rt)) = (self.tx.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = tx.send(sessions::FrameBody::End).await;
            });
        }
    }
}

/// The values of a repeated query parameter.
fn all<'a>(q: &'a Query, k: &str) -> Vec<&'a str> {
    q.0.iter().filter(|(key, _)| key == k).map(|(_, v)| v.as_str()).collect()
}

/// The protocols offered in `Sec-WebSocket-Protocol` headers.
fn offered_protocols(req: &HttpRequest) -> Vec<String> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Checks that the request is a WebSocket upgrade; 400 otherwise.
fn check_websocket(req: &HttpRequest) -> ApiResult<()> {
    actix_http::ws::verify_handshake(req.head()).map_err(|e| {
        ApiError::BadRequest(format!("Upgrade request required: a WebSocket upgrade was expected ({e})"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: &[&str], init: &[&str], default: Option<&str>) -> Value {
        let c = |n: &[&str]| n.iter().map(|n| json!({"name": n, "image": "x"})).collect::<Vec<_>>();
        let mut p = json!({"metadata": {"name": "p", "namespace": "default"},
                           "spec": {"containers": c(containers), "initContainers": c(init)}});
        if let Some(d) = default {
            p["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/default-container": d});
        }
        p
    }

    #[test]
    fn container_choice_follows_upstream() {
        let one = pod(&["a"], &[], None);
        assert_eq!(pick_container(&one, "p", None, Wording::Log).unwrap(), "a");
        assert_eq!(pick_container(&one, "p", Some("a"), Wording::Log).unwrap(), "a");
        let e = pick_container(&one, "p", Some("x"), Wording::Log).unwrap_err();
        assert_eq!(e.to_string(), "container x is not valid for pod p");
        assert_eq!(e.code(), 400);
        let two = pod(&["a", "b"], &["i"], None);
        assert_eq!(
            pick_container(&two, "p", None, Wording::Log).unwrap_err().to_string(),
            "a container name must be specified for pod p, choose one of: [i a b]"
        );
        assert_eq!(
            pick_container(&two, "p", None, Wording::Stream).unwrap_err().to_string(),
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(pick_container(&two, "p", Some("i"), Wording::Stream).unwrap(), "i");
        let defaulted = pod(&["a", "b"], &[], Some("b"));
        assert_eq!(pick_container(&defaulted, "p", None, Wording::Stream).unwrap(), "b");
        let none = pod(&[], &[], None);
        assert_eq!(
            pick_container(&none, "p", None, Wording::Log).unwrap_err().to_string(),
            "pod p does not have a container"
        );
    }
}
