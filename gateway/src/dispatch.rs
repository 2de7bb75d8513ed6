//! One transport-neutral request path: HTTP and bus callers both build a [`Request`] and
//! get a [`Reply`] from [`dispatch`]; only watches, logs and streams are transport-specific.

use crate::auth::User;
use crate::service::{
    ApiService, DeleteOptions, FieldValidation, ListOptions, ListPage, PatchType, WriteOptions,
};
use crate::status::{success_status, ApiError, ApiResult};
use capstan_api::selectors::{FieldSelector, LabelSelector};
use capstan_api::{registry, ResourceInfo};
use serde_json::{json, Value};

/// The verbs of [`dispatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH of the given type.
    Patch(PatchType),
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
}

/// A decoded API request.
pub struct Request {
    /// What to do.
    pub verb: Verb,
    /// Where.
    pub target: Target,
    /// Query parameters.
    pub query: Query,
    /// The decoded body (object, patch or DeleteOptions).
    pub body: Option<Value>,
    /// The client's user-agent (default field manager).
    pub user_agent: String,
}

/// The answer to a [`Request`].
pub enum Reply {
    /// One object (or a Status) with its HTTP code and warnings.
    Object {
        /// HTTP code.
        code: u16,
        /// The object.
        object: Value,
        /// Warnings for the `Warning` header.
        warnings: Vec<String>,
    },
    /// A page of a list.
    List(ListPage),
}

fn object(code: u16, object: Value) -> Reply {
    Reply::Object { code, object, warnings: Vec::new() }
}

/// The patch type named by a content type.
pub fn patch_type(content_type: &str) -> ApiResult<PatchType> {
    match content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"
        ))),
    }
}

fn delete_options(body: Option<&Value>, q: &Query) -> ApiResult<DeleteOptions> {
    let mut o = DeleteOptions::from_json(body)?;
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

fn required_body(body: Option<Value>) -> ApiResult<Value> {
    body.ok_or_else(|| ApiError::BadRequest("the request body is empty".into()))
}

fn method_not_allowed(res: &ResourceInfo) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "the server does not allow this method on the requested resource ({})",
        res.plural
    ))
}

/// Serves one request through the API service.
pub async fn dispatch(svc: &ApiService, user: &User, req: Request) -> ApiResult<Reply> {
    let res = req.target.res;
    if (res.group, res.version, res.kind) == ("autoscaling", "v1", "HorizontalPodAutoscaler") {
        return hpa_v1(svc, user, req).await;
    }
    serve(svc, user, req).await
}

/// `autoscaling/v1` HorizontalPodAutoscalers: the request is served on the stored v2 kind,
/// bodies converted on the way in and replies on the way out (`capstan_api::autoscaling`);
/// a patch is applied to the v1 form of the current object and written back as an update
/// guarded by its resourceVersion. Server-side apply of v1 is refused.
async fn hpa_v1(svc: &ApiService, user: &User, mut req: Request) -> ApiResult<Reply> {
    use capstan_api::autoscaling::{v1_to_v2, v2_to_v1};
    let v2 =
        registry::find("autoscaling", "v2", "horizontalpodautoscalers").expect("autoscaling/v2 is served");
    req.target.res = v2;
    let is_hpa = |v: &Value| v.get("kind").and_then(Value::as_str) == Some("HorizontalPodAutoscaler");
    let reply = if let Verb::Patch(pt) = req.verb {
        if pt == PatchType::Apply {
            return Err(ApiError::UnsupportedMediaType(
                "server-side apply of autoscaling/v1 is not supported by this server: use autoscaling/v2"
                    .into(),
            ));
        }
        let name = req.target.name.clone().ok_or_else(|| method_not_allowed(v2))?;
        let patch = required_body(req.body.take())?;
        let ns = req.target.namespace.clone();
        let mut attempt = 0;
        loop {
            let cur = svc.get(user, v2, ns.as_deref(), &name).await?;
            let old = v2_to_v1(&cur);
            let patched = match pt {
                PatchType::Json => capstan_api::patch::json_patch(&old, &patch),
                _ => capstan_api::patch::merge_patch(&old, &patch),
            }
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            let mut new = v1_to_v2(&patched);
            new["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
            let update = Request {
                verb: Verb::Update,
                target: Target { res: v2, ..req.target.clone() },
                query: req.query.clone(),
                body: Some(new),
                user_agent: req.user_agent.clone(),
            };
            match serve(svc, user, update).await {
                Err(ApiError::Conflict { .. }) if attempt < 5 => attempt += 1,
                r => break r?,
            }
        }
    } else {
        req.body = req.body.map(|b| if is_hpa(&b) { v1_to_v2(&b) } else { b });
        serve(svc, user, req).await?
    };
    Ok(match reply {
        Reply::Object { code, object, warnings } => {
            let object = if is_hpa(&object) { v2_to_v1(&object) } else { object };
            Reply::Object { code, object, warnings }
        }
        Reply::List(mut page) => {
            page.items = page
                .items
                .into_iter()
                .map(|o| std::sync::Arc::new(crate::cache::Object::new(v2_to_v1(&o))))
                .collect();
            Reply::List(page)
        }
    })
}

async fn serve(svc: &ApiService, user: &User, req: Request) -> ApiResult<Reply> {
    let Request { verb, target: t, query: q, body, user_agent } = req;
    let res = t.res;
    let ns = t.namespace.as_deref();
    if crate::usage::serves(res) {
        return match (verb, t.name.as_deref(), t.subresource.as_deref()) {
            (Verb::List, None, None) => {
                Ok(Reply::List(crate::usage::list(svc, user, res, ns, &q.list_options(res)?)?))
            }
            (Verb::Get, Some(name), None) => Ok(object(200, crate::usage::get(svc, user, res, ns, name)?)),
            _ => Err(method_not_allowed(res)),
        };
    }
    if !(res.stored || verb == Verb::Create && t.name.is_none()) {
        return Err(method_not_allowed(res));
    }
    match (verb, t.name.as_deref(), t.subresource.as_deref()) {
        (Verb::List, None, None) => {
            let opts = q.list_options(res)?;
            Ok(Reply::List(svc.list(user, res, ns, &opts).await?))
        }
        (Verb::Create, None, None) => {
            let obj = required_body(body)?;
            if !res.stored {
                return Ok(object(201, crate::reviews::serve(svc, user, res, ns, obj).await?));
            }
            let opts = q.write_options_for(&user_agent, false)?;
            let r = svc.create(user, res, ns, obj, &opts).await?;
            Ok(Reply::Object { code: 201, object: r.object, warnings: r.warnings })
        }
        (Verb::DeleteCollection, None, None) => {
            let dopts = delete_options(body.as_ref(), &q)?;
            let lopts = q.list_options(res)?;
            Ok(object(200, svc.delete_collection(user, res, ns, &lopts, &dopts).await?))
        }
        (Verb::Get, Some(name), None) => Ok(object(200, svc.get(user, res, ns, name).await?)),
        (Verb::Update, Some(name), None | Some("status" | "approval" | "ephemeralcontainers")) => {
            let opts = q.write_options_for(&user_agent, false)?;
            let sub = t.subresource.as_deref();
            let r = svc.update_sub(user, res, ns, name, required_body(body)?, &opts, sub).await?;
            Ok(Reply::Object {
                code: if r.created { 201 } else { 200 },
                object: r.object,
                warnings: r.warnings,
            })
        }
        (Verb::Patch(pt), Some(name), None | Some("status" | "approval" | "ephemeralcontainers")) => {
            let sub = t.subresource.as_deref();
            let opts = q.write_options_for(&user_agent, pt == PatchType::Apply)?;
            if pt != PatchType::Apply && q.get("force").is_some() {
                return Err(ApiError::BadRequest(
                    "force: Forbidden: may not be specified for non-apply patch".into(),
                ));
            }
            let r = svc.patch_sub(user, res, ns, name, pt, required_body(body)?, &opts, sub).await?;
            Ok(Reply::Object {
                code: if r.created { 201 } else { 200 },
                object: r.object,
                warnings: r.warnings,
            })
        }
        (Verb::Delete, Some(name), None) => {
            let dopts = delete_options(body.as_ref(), &q)?;
            let (obj, deleted) = svc.delete(user, res, ns, name, &dopts).await?;
            if !deleted {
                // Deletion is pending (finalizers, graceful termination).
                return Ok(object(202, obj));
            }
            // As upstream: a few kinds return the deleted object, the rest a Status.
            if matches!(
                res.kind,
                "Pod" | "Service" | "ServiceAccount" | "StorageClass" | "PersistentVolume" | "Namespace"
            ) {
                return Ok(object(200, obj));
            }
            let details = json!({
                "name": name,
                "group": res.group,
                "kind": res.plural,
                "uid": obj.get("metadata").and_then(|m| m.get("uid")).cloned().unwrap_or(Value::Null),
            });
            Ok(object(200, success_status(Some(details))))
        }
        (Verb::Get, Some(name), Some(sub @ ("status" | "approval" | "ephemeralcontainers"))) => {
            svc.authorize(user, "get", res, Some(sub), ns, Some(name))?;
            Ok(object(200, svc.get(&User::system(), res, ns, name).await?))
        }
        (Verb::Update, Some(name), Some("finalize")) if res.kind == "Namespace" => {
            // Only spec.finalizers changes; with no finalizer left a deleting namespace goes.
            let obj = required_body(body)?;
            svc.authorize(user, "update", res, Some("finalize"), ns, Some(name))?;
            let finalizers = obj.get("spec").and_then(|s| s.get("finalizers")).cloned().unwrap_or(json!([]));
            let mut patch = json!({"spec": {"finalizers": finalizers}});
            if let Some(rv) = obj
                .get("metadata")
                .and_then(|m| m.get("resourceVersion"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                patch["metadata"] = json!({"resourceVersion": rv});
            }
            let opts = q.write_options_for(&user_agent, false)?;
            let r = svc.patch(&User::system(), res, ns, name, PatchType::Merge, patch, &opts, false).await?;
            Ok(Reply::Object { code: 200, object: r.object, warnings: r.warnings })
        }
        (Verb::Get, Some(name), Some("scale")) => Ok(object(200, svc.get_scale(user, res, ns, name).await?)),
        (Verb::Update, Some(name), Some("scale")) => {
            let obj = required_body(body)?;
            let opts = q.write_options_for(&user_agent, false)?;
            Ok(object(
                200,
                svc.update_scale(user, res, ns, name, &opts, "update", |_| Ok(obj.clone())).await?,
            ))
        }
        (Verb::Patch(pt), Some(name), Some("scale")) => {
            let patch = required_body(body)?;
            let opts = q.write_options_for(&user_agent, false)?;
            let v = svc
                .update_scale(user, res, ns, name, &opts, "patch", |cur| match pt {
                    PatchType::Json => capstan_api::patch::json_patch(cur, &patch)
                        .map_err(|e| ApiError::BadRequest(e.to_string())),
                    _ => capstan_api::patch::merge_patch(cur, &patch)
                        .map_err(|e| ApiError::BadRequest(e.to_string())),
                })
                .await?;
            Ok(object(200, v))
        }
        (Verb::Create, Some(name), Some("token")) if res.kind == "ServiceAccount" => {
            Ok(object(201, svc.create_token(user, ns.unwrap_or(""), name, required_body(body)?).await?))
        }
        (Verb::Create, Some(name), Some("binding")) => {
            Ok(object(201, svc.bind(user, ns.unwrap_or(""), name, &required_body(body)?).await?))
        }
        (Verb::Create, Some(name), Some("eviction")) => {
            let obj = required_body(body)?;
            svc.authorize(user, "create", res, Some("eviction"), ns, Some(name))?;
            Ok(object(201, svc.evict(ns.unwrap_or(""), name, &obj).await?))
        }
        (_, Some(name), Some(sub @ ("log" | "exec" | "attach" | "portforward"))) => {
            svc.authorize(user, if sub == "log" { "get" } else { "create" }, res, Some(sub), ns, Some(name))?;
            svc.get(&User::system(), res, ns, name).await?;
            // The byte streams go through `streams`, which only the HTTP gateway serves.
            Err(ApiError::BadRequest(format!("pods/{sub} is served over HTTPS only, not on this transport")))
        }
        _ => Err(method_not_allowed(res)),
    }
}

/// Query parameters of a request, as ordered pairs.
#[derive(Debug, Clone, Default)]
pub struct Query(pub Vec<(String, String)>);

impl Query {
    /// The first value of `k`.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    /// A boolean parameter.
    pub fn flag(&self, k: &str) -> ApiResult<bool> {
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
    pub fn write_options_for(&self, user_agent: &str, apply: bool) -> ApiResult<WriteOptions> {
        let mut o = self.write_options()?;
        if o.field_manager.is_none() && !apply {
            let ua = user_agent;
            let name: String =
                ua.split('/').next().unwrap_or("").chars().filter(|c| !c.is_control()).take(128).collect();
            if !name.is_empty() {
                o.field_manager = Some(name);
            }
        }
        Ok(o)
    }

    /// `dryRun`, `fieldManager`, `fieldValidation`, `force`.
    pub fn write_options(&self) -> ApiResult<WriteOptions> {
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

    /// Selectors, paging and resourceVersion of a list or watch.
    pub fn list_options(&self, res: &ResourceInfo) -> ApiResult<ListOptions> {
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

/// A parsed resource path.
#[derive(Clone)]
pub struct Target {
    /// Field.
    pub res: &'static ResourceInfo,
    /// Field.
    pub namespace: Option<String>,
    /// Field.
    pub name: Option<String>,
    /// Field.
    pub subresource: Option<String>,
}

/// 404 for paths that name nothing.
pub fn not_found_path() -> ApiError {
    ApiError::NotFound { message: "the server could not find the requested resource".into(), details: None }
}

/// Parses the segments after `/api/v1` or `/apis/<g>/<v>`.
pub fn parse_target(group: &str, version: &str, segs: &[&str]) -> ApiResult<Target> {
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
