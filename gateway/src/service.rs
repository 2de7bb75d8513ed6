//! The API service: one code path for every caller (HTTP and the bus).
//!
//! A write goes: authorize → decode (typed round trip, unknown fields) → the kind's
//! [`Strategy`] prepares it (server-owned fields) → defaults → admission's mutating turn →
//! the strategy validates (422) → admission's validating turn → the strategy's reservations
//! (Service addresses) → one store transaction guarded by the object's revision (409 on
//! conflict) carrying the object and every reservation. POST and an apply that creates share
//! one create path ([`ApiService::create_object`]). Reads of single objects go to the
//! store; lists and watches are served from the [`Cache`].

use crate::admission::{self, Attributes, Chain, Operation, Outcome};
use crate::auth::{Attributes as AuthAttributes, Authorizer, Decision, User};
use crate::cache::{decode_stored, Cache, Event, EventKind, Obj};
use crate::keys;
use crate::status::{success_status, ApiError, ApiResult};
use crate::strategy::{Deletion, Reservations, ServiceNetwork, Strategies, Strategy};
use capstan_api::selectors::{FieldSelector, LabelSelector};
use capstan_api::{meta, registry, ResourceInfo};
use capstan_storage::{Op, Precondition, Store, Txn};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

pub use crate::admission::SYSTEM_NAMESPACES;

/// How unknown fields in a request body are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and warn.
    #[default]
    Warn,
    /// Reject the request with 400.
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter.
    pub fn parse(s: &str) -> ApiResult<FieldValidation> {
        match s {
            "" | "Warn" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            "Strict" => Ok(FieldValidation::Strict),
            other => Err(ApiError::BadRequest(format!(
                "fieldValidation parameter unsupported: {other}; supported values: Ignore, Warn, Strict"
            ))),
        }
    }
}

/// Options of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `dryRun=All`: do everything except persisting.
    pub dry_run: bool,
    /// `fieldManager`.
    pub field_manager: Option<String>,
    /// `fieldValidation`.
    pub field_validation: FieldValidation,
    /// `force` (server-side apply).
    pub force: bool,
}

/// `DeleteOptions`.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `dryRun: ["All"]`.
    pub dry_run: bool,
    /// `gracePeriodSeconds`.
    pub grace_period_seconds: Option<i64>,
    /// `propagationPolicy`.
    pub propagation_policy: Option<String>,
    /// `preconditions.uid`.
    pub precondition_uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub precondition_rv: Option<String>,
}

impl DeleteOptions {
    /// Reads a `DeleteOptions` body (may be empty), merged with query parameters.
    pub fn from_json(body: Option<&Value>) -> ApiResult<DeleteOptions> {
        let mut o = DeleteOptions::default();
        let Some(b) = body else { return Ok(o) };
        if b.is_null() {
            return Ok(o);
        }
        if !b.is_object() {
            return Err(ApiError::BadRequest("DeleteOptions must be a JSON object".into()));
        }
        if let Some(d) = b.get("dryRun") {
            let arr = d.as_array().ok_or_else(|| ApiError::BadRequest("dryRun must be a list".into()))?;
            for v in arr {
                match v.as_str() {
                    Some("All") => o.dry_run = true,
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "dryRun: unsupported value {other:?}; supported values: \"All\""
                        )))
                    }
                }
            }
        }
        if let Some(g) = b.get("gracePeriodSeconds").filter(|v| !v.is_null()) {
            o.grace_period_seconds = Some(
                g.as_i64()
                    .ok_or_else(|| ApiError::BadRequest("gracePeriodSeconds must be an integer".into()))?,
            );
        }
        if let Some(p) = b.get("propagationPolicy").filter(|v| !v.is_null()) {
            let p = p
                .as_str()
                .ok_or_else(|| ApiError::BadRequest("propagationPolicy must be a string".into()))?;
            if !matches!(p, "Orphan" | "Background" | "Foreground") {
                return Err(ApiError::BadRequest(format!(
                    "propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                )));
            }
            o.propagation_policy = Some(p.to_string());
        }
        if let Some(pre) = b.get("preconditions").filter(|v| !v.is_null()) {
            o.precondition_uid = pre.get("uid").and_then(Value::as_str).map(str::to_string);
            o.precondition_rv = pre.get("resourceVersion").and_then(Value::as_str).map(str::to_string);
        }
        Ok(o)
    }
}

/// Options of a list or watch.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Parsed `labelSelector`.
    pub label_selector: LabelSelector,
    /// Parsed `fieldSelector`.
    pub field_selector: FieldSelector,
    /// `limit` (0: none).
    pub limit: usize,
    /// `continue`.
    pub continue_token: Option<String>,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub resource_version_match: Option<String>,
}

/// A page of a list.
pub struct ListPage {
    /// The items, with resourceVersion set.
    pub items: Vec<Obj>,
    /// The revision of the list.
    pub revision: u64,
    /// The continue token, when more items remain.
    pub continue_token: Option<String>,
}

/// One event of a watch: its type, the object, and the revision.
pub type WatchEvent = (EventKind, Obj, u64);

/// The patch types of `PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml`.
    Apply,
}

/// The result of a write: the object, whether it was created, and warnings.
pub struct WriteResult {
    /// The object as stored (or as it would be, under dry run).
    pub object: Value,
    /// Whether the write created the object (201).
    pub created: bool,
    /// Warnings for the `Warning` header.
    pub warnings: Vec<String>,
}

/// The API service.
pub struct ApiService {
    store: Arc<dyn Store>,
    cache: Arc<Cache>,
    authorizer: Arc<dyn Authorizer>,
    ctx: admission::Context,
    strategies: Strategies,
    admission: Chain,
    tokens: Option<Arc<crate::tokens::TokenSigner>>,
    csr_signer: Option<Arc<crate::csr::Signer>>,
    conversion: crate::conversion::Converter,
}

const MAX_UPDATE_RETRIES: usize = 32;

fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    // metav1.Time has whole seconds.
    jiff::Timestamp::from_second(now.as_second()).map(|t| t.to_string()).unwrap_or_else(|_| now.to_string())
}

fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4();
    bytes.as_bytes().iter().take(n).map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char).collect()
}

fn parse_rv(s: &str) -> ApiResult<u64> {
    s.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("invalid resource version: {s:?}")))
}

/// Continue tokens: base64 of `{"rv":N,"start":"<key suffix>"}`.
fn encode_continue(revision: u64, next_key: &[u8]) -> String {
    use base64::Engine;
    let body = json!({"rv": revision, "start": String::from_utf8_lossy(next_key)});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body.to_string())
}

fn decode_continue(token: &str) -> ApiResult<(u64, Vec<u8>)> {
    use base64::Engine;
    let bad = || ApiError::BadRequest("continue key is not valid: illegal base64 data".into());
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    Ok((rv, start.as_bytes().to_vec()))
}

/// Paths of fields present in `input` but dropped by the typed round trip.
fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>, depth: usize) {
    if depth > 64 || out.len() > 32 {
        return;
    }
    match (input, output) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(w) => unknown_fields(v, w, &p, out, depth + 1),
                    None => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, w)) in a.iter().zip(b.iter()).enumerate() {
                unknown_fields(v, w, &format!("{path}[{i}]"), out, depth + 1);
            }
        }
        _ => {}
    }
}

/// `served` (an object converted to the version of a request) with the metadata of `from`:
/// conversion keeps metadata, so a change of metadata alone needs no second conversion.
fn with_metadata_of(served: &Value, from: &Value) -> Value {
    let mut out = served.clone();
    if let Some(m) = from.get("metadata") {
        out["metadata"] = m.clone();
    }
    out
}

fn spec_of(obj: &Value) -> Value {
    // Everything except metadata and status counts as "spec" for generation purposes.
    match obj.as_object() {
        Some(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => Value::Null,
    }
}

impl ApiService {
    /// A service over `store`, answering lists and watches from `cache`, with the standard
    /// admission chain and the default Service ranges.
    pub fn new(store: Arc<dyn Store>, cache: Arc<Cache>, authorizer: Arc<dyn Authorizer>) -> ApiService {
        let ctx = admission::Context::new(store.clone(), cache.clone()).with_authorizer(authorizer.clone());
        ApiService {
            store,
            cache,
            authorizer,
            ctx,
            strategies: Strategies::default(),
            admission: Chain::standard(),
            tokens: None,
            csr_signer: None,
            conversion: crate::conversion::Converter::new(),
        }
    }

    /// Signs approved CertificateSigningRequests with `signer` (the cluster CA).
    pub fn with_csr_signer(mut self, signer: Arc<crate::csr::Signer>) -> ApiService {
        self.csr_signer = Some(signer);
        self
    }

    /// Signs and verifies ServiceAccount tokens with `signer`.
    pub fn with_tokens(mut self, signer: Arc<crate::tokens::TokenSigner>) -> ApiService {
        self.tokens = Some(signer);
        self
    }

    /// The ServiceAccount token signer, if this gateway has the key.
    pub fn tokens(&self) -> Option<&Arc<crate::tokens::TokenSigner>> {
        self.tokens.as_ref()
    }

    /// Replaces the admission chain.
    pub fn with_admission(mut self, chain: Chain) -> ApiService {
        self.admission = chain;
        self
    }

    /// Allocates Service addresses and node ports from `network`.
    pub fn with_service_network(mut self, network: ServiceNetwork) -> ApiService {
        self.strategies = Strategies::new(network);
        self
    }

    /// The Service address ranges.
    pub fn service_network(&self) -> &ServiceNetwork {
        self.strategies.service_network()
    }

    /// The admission plugins, in order.
    pub fn admission_plugins(&self) -> Vec<&'static str> {
        self.admission.names()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The watch cache.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Checks authorization; 403 in upstream's wording when denied.
    pub fn authorize(
        &self,
        user: &User,
        verb: &str,
        res: &ResourceInfo,
        subresource: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> ApiResult<()> {
        let attrs = AuthAttributes {
            verb: verb.to_string(),
            group: res.group.to_string(),
            resource: res.plural.to_string(),
            subresource: subresource.unwrap_or("").to_string(),
            namespace: namespace.unwrap_or("").to_string(),
            name: name.unwrap_or("").to_string(),
            path: None,
        };
        match self.authorizer.authorize(user, &attrs) {
            Decision::Allow(_) => Ok(()),
            Decision::Deny(_) => {
                let what = match subresource {
                    Some(s) => format!("{}/{}", res.plural, s),
                    None => res.plural.to_string(),
                };
                let scope = match namespace {
                    Some(ns) if res.namespaced() => format!(" in the namespace \"{ns}\""),
                    _ => " at the cluster scope".to_string(),
                };
                Err(ApiError::forbidden(
                    res,
                    name.unwrap_or(""),
                    &format!(
                        "User \"{}\" cannot {} resource \"{}\" in API group \"{}\"{}",
                        user.name, verb, what, res.group, scope
                    ),
                ))
            }
        }
    }

    /// Checks authorization of a non-resource URL; 403 in upstream's wording.
    pub fn authorize_path(&self, user: &User, verb: &str, path: &str) -> ApiResult<()> {
        let attrs = AuthAttributes {
            verb: verb.to_string(),
            group: String::new(),
            resource: String::new(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
            path: Some(path.to_string()),
        };
        match self.authorizer.authorize(user, &attrs) {
            Decision::Allow(_) => Ok(()),
            Decision::Deny(_) => Err(ApiError::Forbidden {
                message: format!("forbidden: User \"{}\" cannot {verb} path \"{path}\"", user.name),
                details: None,
            }),
        }
    }

    /// What `user` may do in `namespace` (SelfSubjectRulesReview).
    pub fn rules(&self, user: &User, namespace: &str) -> crate::auth::RuleList {
        self.authorizer.rules(user, namespace)
    }

    /// The authorizer's raw decision (for access reviews).
    pub fn decide(&self, user: &User, attrs: &AuthAttributes) -> Decision {
        self.authorizer.authorize(user, attrs)
    }

    /// The admission context (cluster state as plugins and strategies read it).
    pub fn context(&self) -> &admission::Context {
        &self.ctx
    }

    async fn read(&self, key: &[u8]) -> ApiResult<Option<(Value, u64)>> {
        match self.store.get(key).await? {
            None => Ok(None),
            Some(kv) => match decode_stored(&kv.value, kv.mod_revision) {
                Some(v) => Ok(Some((v, kv.mod_revision))),
                None => Err(ApiError::Internal("stored object could not be decoded".into())),
            },
        }
    }

    /// A custom object as the version of `res` serves it (see [`crate::conversion`]);
    /// built-in objects as they are.
    async fn served(&self, res: &ResourceInfo, obj: Value) -> ApiResult<Value> {
        if res.custom.is_none() || obj.get("apiVersion").and_then(Value::as_str) == Some(&res.api_version()) {
            return Ok(obj);
        }
        let mut out = self.conversion.convert(&self.ctx, res, vec![obj], res.version).await?;
        Ok(out.pop().unwrap_or(Value::Null))
    }

    /// Cached objects as the version of `res` serves them: those in another version are
    /// converted together (one webhook call for a whole list).
    pub async fn served_objs(&self, res: &ResourceInfo, mut items: Vec<Obj>) -> ApiResult<Vec<Obj>> {
        if res.custom.is_none() {
            return Ok(items);
        }
        let want = res.api_version();
        let todo: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].get("apiVersion").and_then(Value::as_str) != Some(want.as_str()))
            .collect();
        if todo.is_empty() {
            return Ok(items);
        }
        let values = todo.iter().map(|&i| Value::clone(&items[i])).collect();
        let converted = self.conversion.convert(&self.ctx, res, values, res.version).await?;
        for (i, v) in todo.into_iter().zip(converted) {
            items[i] = Arc::new(v.into());
        }
        Ok(items)
    }

    /// A custom object written through `res` in its CRD's storage version; `None` when it
    /// is stored as it is (built-in kinds, or written in the storage version).
    async fn to_storage(&self, res: &ResourceInfo, obj: &Value) -> ApiResult<Option<Value>> {
        match res.custom {
            Some(c) if c.storage_version != res.version && obj.is_object() => {
                let mut out =
                    self.conversion.convert(&self.ctx, res, vec![obj.clone()], c.storage_version).await?;
                Ok(out.pop())
            }
            _ => Ok(None),
        }
    }

    fn check_namespace_arg(res: &ResourceInfo, namespace: Option<&str>) -> ApiResult<()> {
        if res.namespaced() && namespace.is_none() {
            return Err(ApiError::BadRequest(format!(
                "the server could not find the requested resource: {} must be addressed in a namespace",
                res.plural
            )));
        }
        Ok(())
    }

    /// GET of one object.
    pub async fn get(
        &self,
        user: &User,
        res: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<Value> {
        self.authorize(user, "get", res, None, namespace, Some(name))?;
        Self::check_namespace_arg(res, namespace)?;
        let key = keys::object_key(res, namespace, name);
        match self.read(&key).await? {
            Some((v, _)) => self.served(res, v).await,
            None => Err(ApiError::not_found(res, name)),
        }
    }

    /// LIST, from the watch cache, with selectors and paging.
    pub async fn list(
        &self,
        user: &User,
        res: &ResourceInfo,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<ListPage> {
        self.authorize(user, "list", res, None, namespace, None)?;
        let mut start = keys::prefix(res, namespace);
        let end = capstan_storage::prefix_end(&start);
        let mut min_rev = None;
        if let Some(tok) = &opts.continue_token {
            let (rv, next) = decode_continue(tok)?;
            if !next.starts_with(&start) {
                return Err(ApiError::BadRequest(
                    "continue key is not valid: it does not match this request".into(),
                ));
            }
            start = next;
            min_rev = Some(rv);
        }
        // Consistency: unset resourceVersion means "most recent": wait for the cache to
        // catch up to the store. "0" means any; N means not older than N.
        let target = match (opts.resource_version.as_deref(), min_rev) {
            (_, Some(rv)) => Some(rv),
            (None, None) | (Some(""), None) => Some(self.store.current_revision().await?),
            (Some("0"), None) => None,
            (Some(rv), None) => Some(parse_rv(rv)?),
        };
        if let Some(t) = target {
            self.cache.wait_for(t, Duration::from_secs(3)).await?;
        }
        let name = opts.field_selector.exact_name().map(str::to_string);
        let filter = |obj: &Value| {
            if let Some(n) = &name {
                if meta::name(obj) != Some(n) {
                    return false;
                }
            }
            opts.label_selector.matches(&meta::labels(obj)) && opts.field_selector.matches(obj)
        };
        // A continued list, or `resourceVersionMatch=Exact`, is served at exactly its
        // revision, as upstream (an etcd snapshot read there): later pages do not see
        // writes made after the first.
        let exact = match (min_rev, opts.resource_version_match.as_deref()) {
            (Some(rv), _) => Some(rv),
            (None, Some("Exact")) => target,
            _ => None,
        };
        let (items, revision, next) = match exact {
            Some(at) if at < self.cache.revision() => {
                let (items, next) =
                    self.snapshot_list(&start, &end, at, opts.limit, filter).await.map_err(|e| match e {
                        ApiError::Expired(_) if min_rev.is_some() => ApiError::Expired(
                            "The provided continue parameter is too old to display a consistent list result. \
                             You can start a new list without the continue parameter, or use the continue value from the 410 response."
                                .into(),
                        ),
                        ApiError::Expired(_) => ApiError::Expired(format!(
                            "The resourceVersion for the provided list is too old (resourceVersion {at})"
                        )),
                        e => e,
                    })?;
                (items, at, next)
            }
            _ => self.cache.list(&start, &end, opts.limit, filter),
        };
        // Continued pages report the revision of the first page, as upstream.
        let revision = min_rev.unwrap_or(revision);
        let items = self.served_objs(res, items).await?;
        Ok(ListPage { items, revision, continue_token: next.map(|k| encode_continue(revision, &k)) })
    }

    /// The objects with keys in `[start, end)` as they were at revision `at`, accepted by
    /// `filter`, at most `limit`: the watch cache's current objects with every change after
    /// `at` undone from the store's change log (the value a key had at `at` is the change
    /// at its previous mod revision, or, for a delete, the deleted value). 410 when the
    /// change log no longer reaches back to `at`.
    async fn snapshot_list(
        &self,
        start: &[u8],
        end: &[u8],
        at: u64,
        limit: usize,
        filter: impl Fn(&Value) -> bool,
    ) -> ApiResult<(Vec<Obj>, Option<Vec<u8>>)> {
        let (current, now) = self.cache.entries(start, end);
        let mut objects: std::collections::BTreeMap<Vec<u8>, Obj> = current.into_iter().collect();
        // The first change of each key after `at`, up to the cache's revision.
        let mut first: std::collections::BTreeMap<Vec<u8>, capstan_storage::Change> = Default::default();
        let mut after = at;
        'read: while after < now {
            let changes = self.store.changes(after, 4096).await?;
            if changes.is_empty() {
                break;
            }
            for c in changes {
                if c.revision > now {
                    break 'read;
                }
                after = c.revision;
                if c.key.as_slice() >= start && c.key.as_slice() < end && !first.contains_key(&c.key) {
                    first.insert(c.key.clone(), c);
                }
            }
        }
        for (key, c) in first {
            objects.remove(&key);
            let value = match c.kind {
                capstan_storage::ChangeKind::Create => None,
                capstan_storage::ChangeKind::Delete => Some(c.value),
                capstan_storage::ChangeKind::Update => {
                    // The value written at the previous mod revision.
                    let before = self.store.changes(c.prev_revision.saturating_sub(1), 64).await?;
                    let found = before.into_iter().find(|b| b.revision == c.prev_revision && b.key == key);
                    Some(
                        found
                            .map(|b| b.value)
                            .ok_or_else(|| ApiError::Expired(format!("too old resource version: {at}")))?,
                    )
                }
            };
            if let Some(v) = value.and_then(|v| crate::cache::decode_stored(&v, c.prev_revision)) {
                objects.insert(key, Arc::new(v.into()));
            }
        }
        let mut out = Vec::new();
        let mut next = None;
        for (k, v) in objects {
            if filter(&v) {
                if limit > 0 && out.len() == limit {
                    next = Some(k);
                    break;
                }
                out.push(v);
            }
        }
        Ok((out, next))
    }

    /// Decodes, checks and normalises a request body for `res`.
    fn decode_body(
        res: &ResourceInfo,
        body: Value,
        validation: FieldValidation,
        warnings: &mut Vec<String>,
    ) -> ApiResult<Value> {
        if !body.is_object() {
            return Err(ApiError::BadRequest(format!(
                "{} in version \"{}\" cannot be handled as a {}: the body must be a JSON object",
                res.kind, res.version, res.kind
            )));
        }
        if let Some(k) = body.get("kind").and_then(Value::as_str) {
            if k != res.kind {
                return Err(ApiError::BadRequest(format!(
                    "the API version in the data ({}) does not match the expected API version ({}) or kind {k} does not match {}",
                    body.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
                    res.api_version(),
                    res.kind
                )));
            }
        }
        if let Some(av) = body.get("apiVersion").and_then(Value::as_str) {
            if av != res.api_version() {
                return Err(ApiError::BadRequest(format!(
                    "the API version in the data ({av}) does not match the expected API version ({})",
                    res.api_version()
                )));
            }
        }
        let input = body.clone();
        let mut out = (res.round_trip)(body).map_err(|e| {
            ApiError::BadRequest(format!(
                "{} in version \"{}\" cannot be handled as a {}: {}",
                res.kind, res.version, res.kind, e
            ))
        })?;
        if let Some(custom) = res.custom.filter(|c| c.schema.is_object()) {
            // Pruning: what the schema does not name goes (reported below as unknown).
            let mut pruned = Vec::new();
            capstan_api::crd::schema::prune(&custom.schema, &mut out, &mut pruned);
        }
        if validation != FieldValidation::Ignore {
            let mut unknown = Vec::new();
            unknown_fields(&input, &out, "", &mut unknown, 0);
            unknown.retain(|f| f != "status" || !input["status"].as_object().is_some_and(|m| m.is_empty()));
            if !unknown.is_empty() {
                if validation == FieldValidation::Strict {
                    let list: Vec<String> =
                        unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
                    return Err(ApiError::BadRequest(format!(
                        "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                        res.kind,
                        res.version,
                        res.kind,
                        list.join(", ")
                    )));
                }
                for f in unknown {
                    warnings.push(format!("unknown field \"{f}\""));
                }
            }
        }
        if let Some(o) = out.as_object_mut() {
            o.insert("apiVersion".into(), json!(res.api_version()));
            o.insert("kind".into(), json!(res.kind));
        }
        Ok(out)
    }

    fn invalid(res: &ResourceInfo, obj: &Value, causes: Vec<capstan_api::Cause>) -> ApiResult<()> {
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(res.kind, res.group, meta::name(obj).unwrap_or(""), causes))
        }
    }

    /// The generic create-time preparation: identity, timestamps, generation, status.
    fn prepare_create(res: &ResourceInfo, strategy: &dyn Strategy, obj: &mut Value, now: &str) {
        if let Some(m) = meta::metadata_mut(obj) {
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now));
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("selfLink");
            if strategy.uses_generation() {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        if res.has_status() && !strategy.keeps_status_on_create() {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        strategy.prepare_for_create(obj);
    }

    /// What follows a committed write: a change to authorization objects counts for the
    /// next request (read-your-writes for RBAC through this gateway).
    async fn after_commit(&self, res: &ResourceInfo, name: &str, revision: u64) {
        if res.group == "rbac.authorization.k8s.io" {
            self.authorizer.settle(revision).await;
        }
        if res.group == "certificates.k8s.io" && self.csr_signer.is_some() {
            Box::pin(self.csr_followup(res, name)).await;
        }
    }

    /// After a write to a CertificateSigningRequest: approve a node client request
    /// automatically when its requestor may, sign an approved request (or mark it Failed).
    /// Each step is a write of its own, which comes back here; a request that is decided
    /// and issued ends it.
    async fn csr_followup(&self, res: &ResourceInfo, name: &str) {
        let Some(signer) = self.csr_signer.clone() else { return };
        let system = User::system();
        let Ok(obj) = self.get(&system, res, None, name).await else { return };
        let conds = obj["status"].get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        let has = |t: &str| conds.iter().any(|c| c.get("type").and_then(Value::as_str) == Some(t));
        let issued = obj["status"].get("certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
        if issued || has("Denied") || has("Failed") {
            return;
        }
        let mut status = obj.clone();
        let sub = if !has("Approved") {
            if !crate::csr::auto_approvable(&obj, |u, a| self.authorizer.authorize(u, a)) {
                return;
            }
            let mut c = conds.clone();
            c.push(crate::csr::condition(
                "Approved",
                "AutoApproved",
                "Auto approving kubelet client certificate after SubjectAccessReview.",
            ));
            status["status"]["conditions"] = json!(c);
            "approval"
        } else {
            match signer.sign(&obj) {
                Ok(pem) => {
                    use base64::Engine;
                    status["status"]["certificate"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(pem));
                }
                Err(why) => {
                    let mut c = conds.clone();
                    c.push(crate::csr::condition("Failed", "SignerValidationFailure", &why));
                    status["status"]["conditions"] = json!(c);
                }
            }
            "status"
        };
        if let Err(e) =
            self.update_sub(&system, res, None, name, status, &WriteOptions::default(), Some(sub)).await
        {
            tracing::warn!(
                csr = name,
                "failed to {} a certificate signing request: {e}",
                if sub == "approval" { "approve" } else { "sign" }
            );
        }
    }

    /// Commits `ops` (the object's op first, then reservations) of a write of `name`; on a
    /// failed precondition of a reservation, the error it names, or `Ok(None)` to prepare
    /// the write again. A reservation that refuses when it commits (a quota's charge) is a
    /// 403 with its reason.
    async fn commit_write(
        &self,
        (res, name): (&ResourceInfo, &str),
        ops: Vec<Op>,
        reservations: &[Option<ApiError>],
    ) -> ApiResult<CommitOutcome> {
        match self.store.commit(Txn { ops }).await {
            Ok(r) => Ok(CommitOutcome::Committed(r.revisions.first().copied().unwrap_or(0))),
            Err(capstan_storage::Error::PreconditionFailed { index: 0, .. }) => {
                Ok(CommitOutcome::ObjectChanged)
            }
            Err(capstan_storage::Error::PreconditionFailed { index, .. }) => {
                match reservations.get(index - 1).cloned().flatten() {
                    Some(e) => Err(e),
                    None => Ok(CommitOutcome::Retry),
                }
            }
            Err(capstan_storage::Error::Refused { message, .. }) => {
                Err(ApiError::forbidden(res, name, &message))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// POST: creates an object.
    pub async fn create(
        &self,
        user: &User,
        res: &ResourceInfo,
        namespace: Option<&str>,
        body: Value,
        opts: &WriteOptions,
    ) -> ApiResult<WriteResult> {
        self.authorize(user, "create", res, None, namespace, None)?;
        if !res.has_verb("create") {
            return Err(ApiError::MethodNotAllowed(format!(
                "create is not supported on resources of kind {:?}",
                res.plural
            )));
        }
        Self::check_namespace_arg(res, namespace)?;
        let mut warnings = Vec::new();
        let obj = Self::decode_body(res, body, opts.field_validation, &mut warnings)?;
        self.create_object(user, res, namespace, obj, opts, warnings).await
    }

    /// The one create path, behind POST and an apply that creates: `obj` is decoded; the
    /// strategy prepares it, admission and validation run, and it is committed with its
    /// reservations.
    pub async fn create_object(
        &self,
        user: &User,
        res: &ResourceInfo,
        namespace: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
        mut warnings: Vec<String>,
    ) -> ApiResult<WriteResult> {
        let started = std::time::Instant::now();
        if res.custom.is_some_and(|c| crate::crds::is_terminating(c.crd)) {
            return Err(ApiError::MethodNotAllowed(
                "create not allowed while custom resource definition is terminating".into(),
            ));
        }
        // Namespace in body must agree with the URL.
        if res.namespaced() {
            let url_ns = namespace.unwrap_or("");
            match meta::namespace(&obj) {
                Some(ns) if !ns.is_empty() && ns != url_ns => return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request"
                        .into(),
                )),
                _ => meta::set_meta_str(&mut obj, "namespace", url_ns),
            }
        } else {
            meta::remove_meta(&mut obj, "namespace");
        }
        if meta::name(&obj).unwrap_or("").is_empty() {
            if let Some(g) =
                meta::meta_str(&obj, "generateName").filter(|g| !g.is_empty()).map(str::to_string)
            {
                meta::set_meta_str(&mut obj, "name", &format!("{g}{}", random_suffix(5)));
            }
        }
        let name = meta::name(&obj).unwrap_or("").to_string();
        let namespace = namespace.filter(|_| res.namespaced());
        let strategy = self.strategies.of(res);
        let now = now_rfc3339();
        // Identity first: defaulting derives Job selectors from the uid.
        Self::prepare_create(res, strategy, &mut obj, &now);
        capstan_api::defaults::apply_defaults(res, &mut obj);
        let attrs = Attributes {
            operation: Operation::Create,
            res,
            subresource: None,
            namespace,
            name: &name,
            user,
            old: None,
            dry_run: opts.dry_run,
        };
        let mut out = Outcome::default();
        self.admission.admit(&self.ctx, &attrs, &mut obj, &mut out).await?;
        // What plugins added (containers, volumes) gets its defaults too.
        capstan_api::defaults::apply_defaults(res, &mut obj);
        Self::invalid(res, &obj, strategy.validate_create(res, &obj))?;
        if let Some(m) = &opts.field_manager {
            capstan_api::ssa::record_update(None, &mut obj, m, &now);
        }
        warnings.append(&mut out.warnings);
        let key = keys::object_key(res, namespace, &name);
        for attempt in 0..MAX_UPDATE_RETRIES {
            let mut obj = obj.clone();
            // The validating turn runs again on every attempt: what a plugin reserves (a
            // quota's usage) is read afresh after a conflict.
            let mut checked = Outcome::default();
            self.admission.validate(&self.ctx, &attrs, &obj, &mut checked).await?;
            if attempt == 0 {
                warnings.append(&mut checked.warnings);
            }
            let out = out.merged(&checked);
            let reserved = strategy.allocate(&self.ctx, &mut obj, None).await?;
            if opts.dry_run {
                if self.store.get(&key).await?.is_some() {
                    return Err(ApiError::already_exists(res, &name));
                }
                return Ok(WriteResult { object: obj, created: true, warnings });
            }
            let stored = self.to_storage(res, &obj).await?;
            let (ops, on_conflict) = with_reservations(
                Op::put(key.clone(), encode(stored.as_ref().unwrap_or(&obj))?, Precondition::Absent),
                reserved,
                &out,
            );
            let committing = std::time::Instant::now();
            let outcome = self.commit_write((res, &name), ops, &on_conflict).await;
            create_stats::record(committing - started, committing.elapsed());
            match outcome? {
                CommitOutcome::Committed(rev) => {
                    self.after_commit(res, &name, rev).await;
                    let Some(mut stored) = stored else {
                        meta::set_meta_str(&mut obj, "resourceVersion", &rev.to_string());
                        return Ok(WriteResult { object: obj, created: true, warnings });
                    };
                    meta::set_meta_str(&mut stored, "resourceVersion", &rev.to_string());
                    // The response is the stored object as the request's version serves it.
                    let object = self.served(res, stored).await?;
                    return Ok(WriteResult { object, created: true, warnings });
                }
                CommitOutcome::ObjectChanged => return Err(ApiError::already_exists(res, &name)),
                CommitOutcome::Retry => continue,
            }
        }
        Err(ApiError::conflict(res, &name))
    }

    /// The read-modify-write loop behind update, patch and the subresources (`status`,
    /// `scale`, `binding`, `finalize`). `mutate` gets the current object (None when absent)
    /// and returns the new one and whether the caller pinned a resourceVersion (then a
    /// conflict is returned instead of retrying). With `allow_create`, a missing object is
    /// created through [`ApiService::create_object`].
    #[allow(clippy::too_many_arguments)]
    async fn guaranteed_update<F>(
        &self,
        user: &User,
        res: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        opts: &WriteOptions,
        allow_create: bool,
        mut mutate: F,
    ) -> ApiResult<WriteResult>
    where
        F: FnMut(Option<&Value>, &mut Vec<String>) -> ApiResult<(Value, bool)>,
    {
        Self::check_namespace_arg(res, namespace)?;
        // `approval` (CertificateSigningRequests) writes status conditions, like `status`.
        let status_only = matches!(subresource, Some("status" | "approval"));
        // `pods/binding` sets spec.nodeName, a change pod updates may not make: the pod is
        // validated as if it had already been bound.
        let binding = subresource == Some("binding");
        // `pods/ephemeralcontainers` changes spec.ephemeralContainers and nothing else.
        let ephemeral = subresource == Some("ephemeralcontainers");
        let strategy = self.strategies.of(res);
        let key = keys::object_key(res, namespace, name);
        for _ in 0..MAX_UPDATE_RETRIES {
            let mut warnings = Vec::new();
            let current = self.read(&key).await?;
            let Some((old, old_rev)) = current else {
                if !allow_create {
                    return Err(ApiError::not_found(res, name));
                }
                self.authorize(user, "create", res, None, namespace, Some(name))?;
                let (obj, _) = mutate(None, &mut warnings)?;
                let nm = meta::name(&obj).unwrap_or("").to_string();
                if nm != name {
                    return Err(ApiError::BadRequest(format!(
                        "the name of the object ({nm}) does not match the name on the URL ({name})"
                    )));
                }
                match self.create_object(user, res, namespace, obj, opts, warnings).await {
                    // Created meanwhile: update it instead.
                    Err(ApiError::AlreadyExists { .. }) => continue,
                    other => return other,
                }
            };
            let old = self.served(res, old).await?;
            let (mut new, pinned) = mutate(Some(&old), &mut warnings)?;
            // Identity and server-owned metadata come from the stored object.
            if let Some(rv) = meta::meta_str(&new, "resourceVersion").filter(|s| !s.is_empty()) {
                if parse_rv(rv).ok() != Some(old_rev) {
                    return Err(ApiError::conflict(res, name));
                }
            }
            if meta::name(&new).is_some_and(|n| n != name) {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    meta::name(&new).unwrap_or("")
                )));
            }
            if let Some(uid) = meta::meta_str(&new, "uid").filter(|u| !u.is_empty()) {
                if Some(uid) != meta::meta_str(&old, "uid") {
                    return Err(ApiError::conflict_msg(
                        res,
                        name,
                        format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                            meta::meta_str(&old, "uid").unwrap_or("")
                        ),
                    ));
                }
            }
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
            ] {
                match old.get("metadata").and_then(|m| m.get(f)) {
                    Some(v) => {
                        if let Some(m) = meta::metadata_mut(&mut new) {
                            m.insert(f.to_string(), v.clone());
                        }
                    }
                    None => meta::remove_meta(&mut new, f),
                }
            }
            if status_only {
                // Only status changes: everything else from the stored object.
                let status = new.get("status").cloned();
                let mut merged = old.clone();
                match status {
                    Some(s) => merged["status"] = s,
                    None => {
                        if let Some(o) = merged.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
                new = merged;
            } else if ephemeral {
                let list = new.get("spec").and_then(|s| s.get("ephemeralContainers")).cloned();
                let mut merged = old.clone();
                match list {
                    Some(l) => merged["spec"]["ephemeralContainers"] = l,
                    None => {
                        if let Some(o) = merged["spec"].as_object_mut() {
                            o.remove("ephemeralContainers");
                        }
                    }
                }
                new = merged;
            } else if res.has_status() {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(o) = new.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
            strategy.prepare_for_update(&mut new, &old);
            capstan_api::defaults::apply_defaults(res, &mut new);
            if strategy.uses_generation() {
                let g = meta::generation(&old).max(1);
                let g = if spec_of(&old) != spec_of(&new) { g + 1 } else { g };
                if let Some(m) = meta::metadata_mut(&mut new) {
                    m.insert("generation".into(), json!(g));
                }
            }
            // A deleting object may lose finalizers but not gain new ones.
            let deleting =
                old.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|v| !v.is_null());
            if deleting {
                let old_f = meta::finalizers(&old);
                if meta::finalizers(&new).iter().any(|f| !old_f.contains(f)) {
                    return Err(ApiError::invalid(
                        res.kind,
                        res.group,
                        name,
                        vec![capstan_api::Cause::forbidden(
                            "metadata.finalizers",
                            "no new finalizers can be added if the object is being deleted",
                        )],
                    ));
                }
            }
            meta::remove_meta(&mut new, "resourceVersion");
            if binding {
                // As upstream's binding: the pod is now scheduled.
                let mut conds: Vec<Value> = new["status"]
                    .get("conditions")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter(|c| c["type"] != "PodScheduled").cloned().collect())
                    .unwrap_or_default();
                conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                                  "lastTransitionTime": now_rfc3339()}));
                new["status"]["conditions"] = Value::Array(conds);
            }
            let attrs = Attributes {
                operation: Operation::Update,
                res,
                subresource,
                namespace: namespace.filter(|_| res.namespaced()),
                name,
                user,
                old: Some(&old),
                dry_run: opts.dry_run,
            };
            let mut out = Outcome::default();
            self.admission.admit(&self.ctx, &attrs, &mut new, &mut out).await?;
            if binding {
                let mut bound = old.clone();
                bound["spec"]["nodeName"] = new["spec"]["nodeName"].clone();
                Self::invalid(res, &new, strategy.validate_update(res, &bound, &new))?;
            } else if ephemeral {
                // Validated as an update that had the new list already, plus upstream's
                // rules for the list itself.
                let mut with_list = old.clone();
                with_list["spec"]["ephemeralContainers"] = new["spec"]["ephemeralContainers"].clone();
                let mut causes = strategy.validate_update(res, &with_list, &new);
                causes.extend(capstan_api::validation::ephemeral_containers_update(&old, &new));
                Self::invalid(res, &new, causes)?;
            } else {
                Self::invalid(res, &new, strategy.validate_update(res, &old, &new))?;
            }
            self.admission.validate(&self.ctx, &attrs, &new, &mut out).await?;
            warnings.append(&mut out.warnings);
            if let Some(m) = &opts.field_manager {
                capstan_api::ssa::record_update(Some(&old), &mut new, m, &now_rfc3339());
            }
            let mut old_cmp = old.clone();
            meta::remove_meta(&mut old_cmp, "resourceVersion");
            if new == old_cmp {
                // No-op writes keep the resourceVersion (as upstream).
                return Ok(WriteResult { object: old, created: false, warnings });
            }
            let finished = deleting && meta::finalizers(&new).is_empty() && strategy.may_remove(&new);
            // What is stored: the new object in the storage version.
            let (stored, (ops, on_conflict)) = if finished {
                let stored = self.to_storage(res, &new).await?;
                let release = Reservations { ops: strategy.release(&new), ..Default::default() };
                let op = Op::Delete {
                    key: key.clone(),
                    precondition: Precondition::ModRevision(old_rev),
                    last_value: Some(encode(stored.as_ref().unwrap_or(&new))?),
                };
                (stored, with_reservations(op, release, &Outcome::default()))
            } else {
                let reserved = strategy.allocate(&self.ctx, &mut new, Some(&old)).await?;
                let stored = self.to_storage(res, &new).await?;
                let op = Op::put(
                    key.clone(),
                    encode(stored.as_ref().unwrap_or(&new))?,
                    Precondition::ModRevision(old_rev),
                );
                (stored, with_reservations(op, reserved, &out))
            };
            if opts.dry_run {
                meta::set_meta_str(&mut new, "resourceVersion", &old_rev.to_string());
                return Ok(WriteResult { object: new, created: false, warnings });
            }
            match self.commit_write((res, name), ops, &on_conflict).await? {
                CommitOutcome::Committed(rev) => {
                    self.after_commit(res, name, rev).await;
                    meta::set_meta_str(&mut new, "resourceVersion", &rev.to_string());
                    let object = match stored {
                        Some(mut stored) if !finished => {
                            // The stored object as the request's version serves it.
                            meta::set_meta_str(&mut stored, "resourceVersion", &rev.to_string());
                            self.served(res, stored).await?
                        }
                        _ => new,
                    };
                    return Ok(WriteResult { object, created: false, warnings });
                }
                CommitOutcome::ObjectChanged if pinned => return Err(ApiError::conflict(res, name)),
                CommitOutcome::ObjectChanged | CommitOutcome::Retry => continue,
            }
        }
        Err(ApiError::conflict(res, name))
    }

    /// PUT: replaces an object (or its status with `status_only`).
    #[allow(clippy::too_many_arguments)]
    pub async fn update(
        &self,
        user: &User,
        res: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        opts: &WriteOptions,
        status_only: bool,
    ) -> ApiResult<WriteResult> {
        self.update_sub(user, res, namespace, name, body, opts, status_only.then_some("status")).await
    }

    /// PUT of an object or of one of its status-like subresources (`status`, `approval`).
    #[allow(clippy::too_many_arguments)]
    pub async fn update_sub(
        &self,
        user: &User,
        res: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        opts: &WriteOptions,
        subresource: Option<&str>,
    ) -> ApiResult<WriteResult> {
        self.authorize(user, "update", res, subresource, namespace, Some(name))?;
        let mut warnings = Vec::new();
        let obj = Self::decode_body(res, body, opts.field_validation, &mut warnings)?;
        if meta::name(&obj).unwrap_or("").is_empty() {
            return Err(ApiError::BadRequest("name is required in the object's metadata".into()));
        }
        if res.namespaced() {
            if let Some(ns) = meta::namespace(&obj).filter(|n| !n.is_empty()) {
                if Some(ns) != namespace {
                    return Err(ApiError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ));
                }
            }
        }
        let pinned = meta::meta_str(&obj, "resourceVersion").is_some_and(|s| !s.is_empty());
        let mut r = self
            .guaranteed_update(user, res, namespace, name, subresource, opts, false, |_, _| {
                Ok((obj.clone(), pinned))
            })
            .await?;
        r.warnings.extend(warnings);
        Ok(r)
    }

    /// PATCH of the object (or its status).
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        user: &User,
        res: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        patch_type: PatchType,
        patch: Value,
        opts: &WriteOptions,
        status_only: bool,
    ) -> ApiResult<WriteResult> {
        self.patch_sub(user, res, namespace, name, patch_type, patch, opts, status_only.then_some("status"))
            .await
    }

    /// PATCH of an object or of one of its status-like subresources (`status`, `approval`).
    #[allow(clippy::too_many_arguments)]
    pub async fn patch_sub(
        &self,
        user: &User,
        res: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        patch_type: PatchType,
        patch: Value,
        opts: &WriteOptions,
        subresource: Option<&str>,
    ) -> ApiResult<WriteResult> {
        self.authorize(user, "patch", res, subresource, namespace, Some(name))?;
        let manager = opts.field_manager.clone().unwrap_or_default();
        if patch_type == PatchType::Apply {
            if manager.is_empty() {
                return Err(ApiError::BadRequest(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into(),
                ));
            }
            if !patch.is_object() {
                return Err(ApiError::BadRequest("apply patch must be an object".into()));
            }
        }
        let now = now_rfc3339();
        let validation = opts.field_validation;
        let allow_create = patch_type == PatchType::Apply;
        let pinned = patch
            .get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        let mut inner_opts = opts.clone();
        if patch_type == PatchType::Apply {
            // Apply records ownership itself.
            inner_opts.field_manager = None;
        }
        self.guaranteed_update(
            user,
            res,
            namespace,
            name,
            subresource,
            &inner_opts,
            allow_create,
            |current, warnings| {
                let patched = match (patch_type, current) {
                    (PatchType::Apply, cur) => {
                        let mut applied = Self::decode_body(res, patch.clone(), validation, warnings)?;
                        if let Some(ns) = namespace.filter(|_| res.namespaced()) {
                            meta::set_meta_str(&mut applied, "namespace", ns);
                        }
                        capstan_api::ssa::apply(
                            cur, &applied, &manager, opts.force, &now, res.group, res.kind,
                        )
                        .map_err(|e| ssa_error(res, name, e))?
                    }
                    (_, None) => return Err(ApiError::not_found(res, name)),
                    (PatchType::Merge, Some(cur)) => {
                        capstan_api::patch::merge_patch(cur, &patch).map_err(patch_error)?
                    }
                    (PatchType::Json, Some(cur)) => {
                        capstan_api::patch::json_patch(cur, &patch).map_err(patch_error)?
                    }
                    (PatchType::Strategic, Some(cur)) => {
                        capstan_api::patch::strategic_merge_patch(cur, &patch, res.group, res.kind)
                            .map_err(patch_error)?
                    }
                };
                let decoded = if patch_type == PatchType::Apply {
                    patched
                } else {
                    Self::decode_body(res, patched, FieldValidation::Ignore, warnings)?
                };
                Ok((decoded, pinned))
            },
        )
        .await
    }

    /// DELETE of one object.
    pub async fn delete(
        &self,
        user: &User,
        res: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<(Value, bool)> {
        self.authorize(user, "delete", res, None, namespace, Some(name))?;
        Self::check_namespace_arg(res, namespace)?;
        let key = keys::object_key(res, namespace, name);
        for _ in 0..MAX_UPDATE_RETRIES {
            let Some((obj, rev)) = self.read(&key).await? else {
                return Err(ApiError::not_found(res, name));
            };
            // A custom object as the request's version shows it (admission and the
            // response); what is written stays in the storage version.
            let served = match res.custom {
                Some(_) => Some(self.served(res, obj.clone()).await?),
                None => None,
            };
            let show = |v: Value| match &served {
                Some(s) => with_metadata_of(s, &v),
                None => v,
            };
            let attrs = Attributes {
                operation: Operation::Delete,
                res,
                subresource: None,
                namespace: namespace.filter(|_| res.namespaced()),
                name,
                user,
                old: Some(served.as_ref().unwrap_or(&obj)),
                dry_run: opts.dry_run,
            };
            let mut out = Outcome::default();
            let mut asked = served.clone().unwrap_or_else(|| obj.clone());
            self.admission.admit(&self.ctx, &attrs, &mut asked, &mut out).await?;
            self.admission.validate(&self.ctx, &attrs, served.as_ref().unwrap_or(&obj), &mut out).await?;
            if let Some(uid) = &opts.precondition_uid {
                if meta::meta_str(&obj, "uid") != Some(uid.as_str()) {
                    return Err(ApiError::conflict_msg(
                        res,
                        name,
                        format!(
                            "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                            res.group_resource(),
                            meta::meta_str(&obj, "uid").unwrap_or("")
                        ),
                    ));
                }
            }
            if let Some(prv) = &opts.precondition_rv {
                if parse_rv(prv).ok() != Some(rev) {
                    return Err(ApiError::conflict_msg(
                        res,
                        name,
                        format!(
                            "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: ResourceVersion in precondition: {prv}, ResourceVersion in object meta: {rev}",
                            res.group_resource()
                        ),
                    ));
                }
            }
            let mut finalizers = meta::finalizers(&obj);
            let already_deleting =
                obj.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|v| !v.is_null());
            // Orphan and Foreground propagation are carried out by the garbage collector, which
            // removes these finalizers when done (as upstream).
            let gc_finalizer = match opts.propagation_policy.as_deref() {
                Some("Orphan") => Some("orphan"),
                Some("Foreground") => Some("foregroundDeletion"),
                _ => None,
            };
            let mut finalizers_changed = false;
            if let Some(f) = gc_finalizer.filter(|_| !already_deleting) {
                if !finalizers.iter().any(|x| x == f) {
                    finalizers.push(f.to_string());
                    finalizers_changed = true;
                }
            }
            let strategy = self.strategies.of(res);
            let deletion = strategy.deletion(&obj, opts);
            if !finalizers.is_empty() || deletion != Deletion::Immediate {
                // Graceful: mark and keep.
                let mut new = obj.clone();
                if !already_deleting {
                    if let Some(m) = meta::metadata_mut(&mut new) {
                        m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                        let grace = match deletion {
                            Deletion::Graceful(g) => g,
                            Deletion::Immediate => 0,
                        };
                        m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                    }
                    if finalizers_changed {
                        if let Some(m) = meta::metadata_mut(&mut new) {
                            m.insert("finalizers".into(), json!(finalizers));
                        }
                    }
                    strategy.mark_deleting(&mut new);
                }
                if opts.dry_run {
                    return Ok((show(new), false));
                }
                if already_deleting {
                    return Ok((show(obj), false));
                }
                meta::remove_meta(&mut new, "resourceVersion");
                let op = Op::put(key.clone(), encode(&new)?, Precondition::ModRevision(rev));
                let Some(nrev) = self.commit_one(op).await? else { continue };
                meta::set_meta_str(&mut new, "resourceVersion", &nrev.to_string());
                return Ok((show(new), false));
            }
            if opts.dry_run {
                return Ok((show(obj), true));
            }
            let mut last = obj.clone();
            meta::remove_meta(&mut last, "resourceVersion");
            let op = Op::Delete {
                key: key.clone(),
                precondition: Precondition::ModRevision(rev),
                last_value: Some(encode(&last)?),
            };
            let mut ops = vec![op];
            ops.extend(strategy.release(&obj));
            match self.commit_write((res, name), ops, &[]).await? {
                CommitOutcome::Committed(nrev) => {
                    self.after_commit(res, name, nrev).await;
                    meta::set_meta_str(&mut last, "resourceVersion", &nrev.to_string());
                    return Ok((show(last), true));
                }
                CommitOutcome::ObjectChanged | CommitOutcome::Retry => continue,
            }
        }
        Err(ApiError::conflict(res, name))
    }

    /// Commits one op; `Ok(None)` when its precondition failed.
    async fn commit_one(&self, op: Op) -> ApiResult<Option<u64>> {
        match self.store.commit(Txn::single(op)).await {
            Ok(r) => Ok(Some(r.revisions.first().copied().unwrap_or(0))),
            Err(capstan_storage::Error::PreconditionFailed { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// DELETE of a collection.
    pub async fn delete_collection(
        &self,
        user: &User,
        res: &ResourceInfo,
        namespace: Option<&str>,
        list_opts: &ListOptions,
        opts: &DeleteOptions,
    ) -> ApiResult<Value> {
        self.authorize(user, "deletecollection", res, None, namespace, None)?;
        let page = self.list(user, res, namespace, list_opts).await?;
        let mut items = Vec::new();
        for item in page.items {
            let Some(n) = meta::name(&item) else { continue };
            let ns = meta::namespace(&item);
            match self.delete(user, res, ns.or(namespace), n, opts).await {
                Ok((obj, _)) => items.push(obj),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(json!({"kind": res.list_kind, "apiVersion": res.api_version(), "metadata": {}, "items": items}))
    }

    /// GET of the scale subresource.
    pub async fn get_scale(
        &self,
        user: &User,
        res: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<Value> {
        self.authorize(user, "get", res, Some("scale"), namespace, Some(name))?;
        let key = keys::object_key(res, namespace, name);
        let Some((obj, _)) = self.read(&key).await? else { return Err(ApiError::not_found(res, name)) };
        let obj = self.served(res, obj).await?;
        Ok(to_scale(res, &obj))
    }

    /// PUT or PATCH of the scale subresource: `f` turns the current Scale into the new one.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_scale(
        &self,
        user: &User,
        res: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
        opts: &WriteOptions,
        verb: &str,
        f: impl Fn(&Value) -> ApiResult<Value>,
    ) -> ApiResult<Value> {
        self.authorize(user, verb, res, Some("scale"), namespace, Some(name))?;
        let r = self
            .guaranteed_update(user, res, namespace, name, Some("scale"), opts, false, |cur, _| {
                let Some(cur) = cur else { return Err(ApiError::not_found(res, name)) };
                let scale = f(&to_scale(res, cur))?;
                let replicas =
                    scale.get("spec").and_then(|s| s.get("replicas")).and_then(Value::as_i64).unwrap_or(0);
                if replicas < 0 {
                    return Err(ApiError::invalid(
                        "Scale",
                        "autoscaling",
                        name,
                        vec![capstan_api::Cause::invalid(
                            "spec.replicas",
                            format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                        )],
                    ));
                }
                let pinned = scale
                    .get("metadata")
                    .and_then(|m| m.get("resourceVersion"))
                    .and_then(Value::as_str)
                    .is_some_and(|rv| !rv.is_empty() && Some(rv) != meta::meta_str(cur, "resourceVersion"));
                if pinned {
                    return Err(ApiError::conflict(res, name));
                }
                let mut new = cur.clone();
                match res.custom.and_then(|c| c.scale.as_ref()) {
                    Some(paths) => set_path(&mut new, &paths.spec_replicas, json!(replicas)),
                    None => new["spec"]["replicas"] = json!(replicas),
                }
                Ok((new, false))
            })
            .await?;
        Ok(to_scale(res, &r.object))
    }

    /// `pods/binding`: assigns a pod to a node.
    pub async fn bind(&self, user: &User, namespace: &str, name: &str, body: &Value) -> ApiResult<Value> {
        let Some(pods) = registry::find("", "v1", "pods") else {
            return Err(ApiError::Internal("pods not registered".into()));
        };
        self.authorize(user, "create", pods, Some("binding"), Some(namespace), Some(name))?;
        let node = body
            .get("target")
            .and_then(|t| t.get("name"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid("Binding", "", name, vec![capstan_api::Cause::required("target.name")])
            })?
            .to_string();
        self.guaranteed_update(user, pods, Some(namespace), name, Some("binding"), &WriteOptions::default(), false, |cur, _| {
            let Some(cur) = cur else { return Err(ApiError::not_found(pods, name)) };
            if cur["spec"].get("nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) {
                return Err(ApiError::conflict_msg(
                    pods,
                    name,
                    format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{}\"", cur["spec"]["nodeName"].as_str().unwrap_or("")),
                ));
            }
            let mut new = cur.clone();
            new["spec"]["nodeName"] = json!(node);
            Ok((new, false))
        })
        .await?;
        Ok(success_status(None))
    }

    /// Events for a watch of `res` in `namespace` after `revision`, with selectors applied
    /// (including the transitions that make an object enter or leave the selection); custom
    /// objects converted to the watched version (one conversion call per batch).
    pub async fn watch_events(
        &self,
        res: &ResourceInfo,
        namespace: Option<&str>,
        opts: &ListOptions,
        after: u64,
        max: usize,
    ) -> ApiResult<(Vec<WatchEvent>, u64)> {
        let prefix = keys::prefix(res, namespace);
        let matches =
            |obj: &Value| opts.label_selector.matches(&meta::labels(obj)) && opts.field_selector.matches(obj);
        let (events, scanned) =
            self.cache.events_after(after, max, |e: &Event| e.key.starts_with(&prefix))?;
        let mut out = Vec::new();
        for e in events {
            let now = matches(&e.object);
            let before = e.prev.as_deref().is_some_and(|p| matches(p));
            let kind = match (e.kind, before, now) {
                (EventKind::Deleted, _, true) => Some(EventKind::Deleted),
                (EventKind::Deleted, true, false) => Some(EventKind::Deleted),
                (EventKind::Added, _, true) => Some(EventKind::Added),
                (EventKind::Modified, true, true) => Some(EventKind::Modified),
                (EventKind::Modified, false, true) => Some(EventKind::Added),
                (EventKind::Modified, true, false) => Some(EventKind::Deleted),
                _ => None,
            };
            if let Some(k) = kind {
                out.push((k, e.object.clone(), e.revision));
            }
        }
        if res.custom.is_some() && !out.is_empty() {
            let objs = out.iter().map(|(_, o, _)| o.clone()).collect();
            let objs = self.served_objs(res, objs).await?;
            for (e, o) in out.iter_mut().zip(objs) {
                e.1 = o;
            }
        }
        Ok((out, scanned))
    }
}

/// Where creates spend their time, logged at `debug` about once a second under load:
/// preparation (decode, defaults, validation, namespace check, encode) vs. waiting for the
/// store's commit.
mod create_stats {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    static COUNT: AtomicU64 = AtomicU64::new(0);
    static PREPARE_NS: AtomicU64 = AtomicU64::new(0);
    static COMMIT_NS: AtomicU64 = AtomicU64::new(0);
    static SINCE: Mutex<Option<Instant>> = Mutex::new(None);

    pub(super) fn record(prepare: Duration, commit: Duration) {
        COUNT.fetch_add(1, Ordering::Relaxed);
        PREPARE_NS.fetch_add(prepare.as_nanos() as u64, Ordering::Relaxed);
        COMMIT_NS.fetch_add(commit.as_nanos() as u64, Ordering::Relaxed);
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let Ok(mut since) = SINCE.try_lock() else { return };
        let start = *since.get_or_insert_with(Instant::now);
        if start.elapsed() < Duration::from_secs(1) {
            return;
        }
        *since = Some(Instant::now());
        let n = COUNT.swap(0, Ordering::Relaxed).max(1);
        let prepare = PREPARE_NS.swap(0, Ordering::Relaxed) as f64 / n as f64 / 1e6;
        let commit = COMMIT_NS.swap(0, Ordering::Relaxed) as f64 / n as f64 / 1e6;
        tracing::debug!(
            creates = n,
            prepare_avg_ms = format_args!("{prepare:.3}"),
            commit_wait_avg_ms = format_args!("{commit:.3}"),
            "create stages"
        );
    }
}

/// Sets the value at a dotted path, creating objects on the way.
fn set_path(obj: &mut Value, dotted: &str, value: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = dotted.split('.').filter(|p| !p.is_empty()).collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        if i + 1 == parts.len() {
            cur[*p] = value;
            return;
        }
        cur = &mut cur[*p];
    }
}

fn to_scale(res: &ResourceInfo, obj: &Value) -> Value {
    let (replicas, status_replicas, selector) = match res.custom.and_then(|c| c.scale.as_ref()) {
        Some(paths) => (
            meta::path(obj, &paths.spec_replicas).and_then(Value::as_i64).unwrap_or(0),
            meta::path(obj, &paths.status_replicas).and_then(Value::as_i64).unwrap_or(0),
            // A custom kind's selector path holds the selector as a string already.
            paths
                .label_selector
                .as_deref()
                .and_then(|p| meta::path(obj, p))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        ),
        None => (
            obj["spec"].get("replicas").and_then(Value::as_i64).unwrap_or(0),
            obj["status"].get("replicas").and_then(Value::as_i64).unwrap_or(0),
            obj["spec"]
                .get("selector")
                .map(|s| {
                    // A ReplicationController's selector is a plain label map.
                    let s = if res.kind == "ReplicationController" {
                        json!({"matchLabels": s})
                    } else {
                        s.clone()
                    };
                    capstan_api::selectors::LabelSelector::from_label_selector_json(&s)
                        .map(|ls| ls.to_string())
                        .unwrap_or_default()
                })
                .unwrap_or_default(),
        ),
    };
    let m = obj.get("metadata").cloned().unwrap_or(Value::Object(Map::new()));
    let mut md = Map::new();
    for f in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = m.get(f) {
            md.insert(f.into(), v.clone());
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": md,
        "spec": {"replicas": replicas},
        "status": {"replicas": status_replicas, "selector": selector},
    })
}

fn patch_error(e: capstan_api::patch::PatchError) -> ApiError {
    match e {
        capstan_api::patch::PatchError::Malformed(m) => ApiError::BadRequest(m),
        capstan_api::patch::PatchError::Failed(m) => ApiError::Invalid {
            message: m.clone(),
            details: crate::status::Details {
                causes: vec![("FieldValueInvalid".into(), m, String::new())],
                ..Default::default()
            },
        },
    }
}

fn ssa_error(res: &ResourceInfo, name: &str, e: capstan_api::ssa::ApplyError) -> ApiError {
    match e {
        capstan_api::ssa::ApplyError::Invalid(m) => ApiError::BadRequest(m),
        capstan_api::ssa::ApplyError::Conflicts(cs) => {
            let lines: Vec<String> = cs
                .iter()
                .map(|c| format!("conflict with \"{}\" using {}: {}", c.manager, c.api_version, c.field))
                .collect();
            let message = if lines.len() == 1 {
                format!("Apply failed with 1 conflict: {}", lines[0])
            } else {
                format!("Apply failed with {} conflicts: {}", lines.len(), lines.join("\n"))
            };
            ApiError::Conflict {
                message,
                details: crate::status::Details {
                    name: name.to_string(),
                    group: res.group.to_string(),
                    kind: res.plural.to_string(),
                    causes: cs
                        .into_iter()
                        .map(|c| {
                            (
                                "FieldManagerConflict".to_string(),
                                format!("conflict with \"{}\" using {}", c.manager, c.api_version),
                                c.field,
                            )
                        })
                        .collect(),
                    retry_after_seconds: None,
                },
            }
        }
    }
}

/// Encodes an object for the store (msgpack, named fields).
pub fn encode(obj: &Value) -> ApiResult<Vec<u8>> {
    rmp_serde::to_vec_named(obj).map_err(|e| ApiError::Internal(format!("failed to encode object: {e}")))
}

/// How a commit of a write ended.
enum CommitOutcome {
    /// Committed at this revision.
    Committed(u64),
    /// The object's own precondition failed: it exists (create) or changed (update).
    ObjectChanged,
    /// A reservation was taken meanwhile: prepare the write again.
    Retry,
}

/// The transaction of a write: the object's op, then the strategy's reservations, then the
/// plugins'; and per reservation the error its failed precondition means.
fn with_reservations(
    object: Op,
    strategy: Reservations,
    plugins: &Outcome,
) -> (Vec<Op>, Vec<Option<ApiError>>) {
    let mut ops = vec![object];
    ops.extend(strategy.ops);
    ops.extend(plugins.reservations.ops.iter().cloned());
    let mut on_conflict = strategy.on_conflict;
    on_conflict.extend(plugins.reservations.on_conflict.iter().cloned());
    (ops, on_conflict)
}

mod eviction;

#[cfg(test)]
mod tests;
