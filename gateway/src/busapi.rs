//! The API service on the bus: request/reply on `capstan.v1.api.<identity>`, served by
//! every gateway in one queue group through the same [`dispatch`] path as HTTP.
//!
//! The caller's identity is the last subject token(s). With NATS, each role's credentials
//! may publish only to its own subject (`capstan_bus::access`, enforced by the server as
//! `capstan bus-config` configures it), so the subject is proof of identity; the
//! in-process bus is trusted. Replies go only to `_INBOX.…` subjects.

use crate::auth::User;
use crate::dispatch::{self, parse_target, Query, Reply, Verb};
use crate::service::ApiService;
use crate::status::{ApiError, ApiResult};
use capstan_bus::{subjects, ApiRequest, ApiResponse, Bus, Message};
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;

/// The caller's identity in a request subject `capstan.v1.api.<identity>`; `None` for any
/// other subject.
pub fn identity_of(subject: &str) -> Option<&str> {
    subject
        .strip_prefix(subjects::PREFIX)
        .and_then(|s| s.strip_prefix(".api."))
        .filter(|i| subjects::is_valid_subject(i))
}

/// The user a bus identity stands for.
pub fn user_for_identity(identity: &str) -> User {
    match identity.split_once('.') {
        // Subject tokens cannot hold dots: node agents send theirs as `_` (node names,
        // DNS subdomains, never contain `_`). A node is authorized as a node: the Node
        // authorizer and NodeRestriction confine it to itself and its pods.
        Some(("node", name)) => {
            User::new(format!("system:node:{}", name.replace('_', ".")), vec!["system:nodes".into()])
        }
        _ => match identity {
            // The controllers: everything but impersonation, approval and signing
            // (`system:capstan:controllers`).
            "controllers" => User::new("system:kube-controller-manager", vec!["system:authenticated".into()]),
            // The scheduler has upstream's system:kube-scheduler and system:volume-scheduler
            // roles and nothing more.
            "scheduler" => User::new("system:kube-scheduler", vec!["system:authenticated".into()]),
            // The simulated nodes: their nodes, leases, pods' status and volumes
            // (`system:capstan:sim-nodes`).
            "sim-nodes" => User::new("system:capstan:sim-nodes", vec!["system:authenticated".into()]),
            // No role of capstan's: whatever RBAC grants that user, no more.
            other => User::new(format!("system:bus:{other}"), Vec::new()),
        },
    }
}

fn verb(req: &ApiRequest) -> ApiResult<Verb> {
    Ok(match req.verb.as_str() {
        "get" => Verb::Get,
        "list" => Verb::List,
        "create" => Verb::Create,
        "update" => Verb::Update,
        "patch" => Verb::Patch(dispatch::patch_type(req.content_type.as_deref().unwrap_or(""))?),
        "delete" => Verb::Delete,
        "deletecollection" => Verb::DeleteCollection,
        other => return Err(ApiError::BadRequest(format!("unsupported verb {other:?} on the bus"))),
    })
}

/// Serves one decoded request.
pub async fn serve(svc: &ApiService, user: &User, req: ApiRequest) -> ApiResponse {
    match serve_inner(svc, user, req).await {
        Ok(r) => r,
        Err(e) => ApiResponse { code: e.code(), body: e.to_status() },
    }
}

async fn serve_inner(svc: &ApiService, user: &User, req: ApiRequest) -> ApiResult<ApiResponse> {
    let verb = verb(&req)?;
    let mut segs: Vec<&str> = Vec::new();
    if let Some(ns) = req.namespace.as_deref().filter(|n| !n.is_empty()) {
        segs.extend(["namespaces", ns]);
    }
    segs.push(&req.resource);
    if let Some(n) = req.name.as_deref() {
        segs.push(n);
    }
    if let Some(s) = req.subresource.as_deref() {
        segs.push(s);
    }
    let target = parse_target(&req.group, &req.version, &segs)?;
    let r = dispatch::Request {
        verb,
        target,
        query: Query(req.query),
        body: req.body,
        user_agent: String::new(),
    };
    let res = r.target.res;
    Ok(match dispatch::dispatch(svc, user, r).await? {
        Reply::Object { code, object, .. } => ApiResponse { code, body: object },
        Reply::List(page) => {
            let items: Vec<&Value> = page.items.iter().map(|a| a.value()).collect();
            let mut md = json!({"resourceVersion": page.revision.to_string()});
            if let Some(c) = &page.continue_token {
                md["continue"] = json!(c);
            }
            ApiResponse {
                code: 200,
                body: json!({"kind": res.list_kind, "apiVersion": res.api_version(), "metadata": md, "items": items}),
            }
        }
    })
}

async fn handle(bus: Arc<dyn Bus>, svc: Arc<ApiService>, msg: Message) {
    let Some(reply) = msg.reply else { return };
    // The reply goes out with the gateway's own permissions: only to an inbox, never to a
    // subject the caller chose to have the gateway publish on (a node session, the stream).
    if !reply.starts_with("_INBOX.") {
        tracing::warn!(subject = %msg.subject, reply = %reply, "dropping a bus API request whose reply subject is not an inbox");
        return;
    }
    let Some(identity) = identity_of(&msg.subject) else {
        // A JetStream push consumer can deliver stream messages onto any subject, keeping
        // their own (`capstan.v1.events.…`) subject: such a message is no request.
        tracing::warn!(subject = %msg.subject, "dropping a message on the API subjects that is no API request");
        return;
    };
    let user = user_for_identity(identity);
    let resp = match ApiRequest::from_bytes(&msg.payload) {
        Ok(req) => serve(&svc, &user, req).await,
        Err(e) => {
            let err = ApiError::BadRequest(format!("failed to decode bus request: {e}"));
            ApiResponse { code: err.code(), body: err.to_status() }
        }
    };
    match resp.to_bytes() {
        Ok(b) => {
            if let Err(e) = bus.publish(reply, b).await {
                tracing::warn!("failed to send a bus API reply: {e}");
            }
        }
        Err(e) => tracing::warn!("failed to encode a bus API reply: {e}"),
    }
}

/// Serves API requests from the bus until the subscription ends.
pub async fn run(bus: Arc<dyn Bus>, svc: Arc<ApiService>) -> capstan_bus::Result<()> {
    let mut sub = bus.subscribe(subjects::api_all(), Some(subjects::API_QUEUE.to_string())).await?;
    while let Some(msg) = sub.next().await {
        tokio::spawn(handle(bus.clone(), svc.clone(), msg));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_only_from_request_subjects() {
        assert_eq!(identity_of("capstan.v1.api.controllers"), Some("controllers"));
        assert_eq!(identity_of("capstan.v1.api.node.a_b"), Some("node.a_b"));
        assert_eq!(identity_of("capstan.v1.api."), None);
        assert_eq!(identity_of("capstan.v1.events.core.pods.default.x"), None);
        assert_eq!(identity_of("capstan.v1.apix.controllers"), None);
        assert_eq!(user_for_identity("node.a_b").name, "system:node:a.b");
        assert_eq!(user_for_identity("integrator-1").groups, vec!["system:authenticated".to_string()]);
        assert!(!user_for_identity("controllers").groups.contains(&"system:masters".to_string()));
        assert!(!user_for_identity("sim-nodes").groups.contains(&"system:masters".to_string()));
        assert!(!user_for_identity("scheduler").groups.contains(&"system:masters".to_string()));
    }
}
