//! The API client actors use: requests to the API service over the bus.

use capstan_bus::{subjects, ApiRequest, ApiResponse, Bus};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// A failed API call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error Status.
    #[error("{code} {reason}: {message}")]
    Api {
        /// HTTP-like code.
        code: u16,
        /// Status reason (`NotFound`, `Conflict`...).
        reason: String,
        /// Status message.
        message: String,
    },
    /// The bus failed (timeout, no gateway).
    #[error("bus request failed: {0}")]
    Bus(String),
}

impl ClientError {
    /// 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { code: 404, .. })
    }

    /// 409 Conflict (not AlreadyExists).
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClientError::Api { code: 409, reason, .. } if reason == "Conflict")
    }

    /// 409 AlreadyExists.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, ClientError::Api { code: 409, reason, .. } if reason == "AlreadyExists")
    }

    /// 410 Expired.
    pub fn is_expired(&self) -> bool {
        matches!(self, ClientError::Api { code: 410, .. })
    }
}

/// Result alias for API calls.
pub type Result<T> = std::result::Result<T, ClientError>;

/// Names a resource: group, version, plural.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gvr {
    /// Group.
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Plural resource name.
    pub resource: &'static str,
}

impl Gvr {
    /// A resource.
    pub const fn new(group: &'static str, version: &'static str, resource: &'static str) -> Gvr {
        Gvr { group, version, resource }
    }
}

/// Well-known resources.
pub mod gvr {
    use super::Gvr;
    /// Pods.
    pub const PODS: Gvr = Gvr::new("", "v1", "pods");
    /// Nodes.
    pub const NODES: Gvr = Gvr::new("", "v1", "nodes");
    /// Namespaces.
    pub const NAMESPACES: Gvr = Gvr::new("", "v1", "namespaces");
    /// Services.
    pub const SERVICES: Gvr = Gvr::new("", "v1", "services");
    /// Endpoints.
    pub const ENDPOINTS: Gvr = Gvr::new("", "v1", "endpoints");
    /// Events.
    pub const EVENTS: Gvr = Gvr::new("", "v1", "events");
    /// ServiceAccounts.
    pub const SERVICE_ACCOUNTS: Gvr = Gvr::new("", "v1", "serviceaccounts");
    /// ConfigMaps.
    pub const CONFIG_MAPS: Gvr = Gvr::new("", "v1", "configmaps");
    /// Deployments.
    pub const DEPLOYMENTS: Gvr = Gvr::new("apps", "v1", "deployments");
    /// ReplicaSets.
    pub const REPLICA_SETS: Gvr = Gvr::new("apps", "v1", "replicasets");
    /// StatefulSets.
    pub const STATEFUL_SETS: Gvr = Gvr::new("apps", "v1", "statefulsets");
    /// DaemonSets.
    pub const DAEMON_SETS: Gvr = Gvr::new("apps", "v1", "daemonsets");
    /// ControllerRevisions.
    pub const CONTROLLER_REVISIONS: Gvr = Gvr::new("apps", "v1", "controllerrevisions");
    /// Jobs.
    pub const JOBS: Gvr = Gvr::new("batch", "v1", "jobs");
    /// CronJobs.
    pub const CRON_JOBS: Gvr = Gvr::new("batch", "v1", "cronjobs");
    /// Leases.
    pub const LEASES: Gvr = Gvr::new("coordination.k8s.io", "v1", "leases");
    /// EndpointSlices.
    pub const ENDPOINT_SLICES: Gvr = Gvr::new("discovery.k8s.io", "v1", "endpointslices");
    /// PersistentVolumes.
    pub const PERSISTENT_VOLUMES: Gvr = Gvr::new("", "v1", "persistentvolumes");
    /// PersistentVolumeClaims.
    pub const PERSISTENT_VOLUME_CLAIMS: Gvr = Gvr::new("", "v1", "persistentvolumeclaims");
    /// StorageClasses.
    pub const STORAGE_CLASSES: Gvr = Gvr::new("storage.k8s.io", "v1", "storageclasses");
}

/// A cheap-to-clone API client on the bus. `identity` picks the request subject
/// (`controllers`, `scheduler`, `node.<name>`).
#[derive(Clone)]
pub struct ApiClient {
    bus: Arc<dyn Bus>,
    subject: String,
    timeout: Duration,
}

/// A page of a list.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// Items.
    pub items: Vec<Value>,
    /// The list's resourceVersion.
    pub resource_version: u64,
    /// The continue token, if more remain.
    pub continue_token: Option<String>,
}

impl ApiClient {
    /// A client speaking as `identity`.
    pub fn new(bus: Arc<dyn Bus>, identity: &str) -> ApiClient {
        ApiClient { bus, subject: subjects::api_request(identity), timeout: Duration::from_secs(10) }
    }

    /// The bus this client talks over.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// Sends a raw request.
    pub async fn call(&self, req: ApiRequest) -> Result<Value> {
        let payload = req.to_bytes().map_err(|e| ClientError::Bus(e.to_string()))?;
        let reply = self
            .bus
            .request(self.subject.clone(), payload, self.timeout)
            .await
            .map_err(|e| ClientError::Bus(e.to_string()))?;
        let resp = ApiResponse::from_bytes(&reply).map_err(|e| ClientError::Bus(e.to_string()))?;
        if resp.code >= 400 {
            return Err(ClientError::Api {
                code: resp.code,
                reason: resp.body.get("reason").and_then(Value::as_str).unwrap_or("").to_string(),
                message: resp.body.get("message").and_then(Value::as_str).unwrap_or("").to_string(),
            });
        }
        Ok(resp.body)
    }

    fn req(verb: &str, r: Gvr, ns: Option<&str>, name: Option<&str>) -> ApiRequest {
        ApiRequest {
            verb: verb.into(),
            group: r.group.into(),
            version: r.version.into(),
            resource: r.resource.into(),
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
            ..Default::default()
        }
    }

    /// A request on a subresource (`scale`...) of one object.
    pub fn subresource_request(verb: &str, r: Gvr, ns: Option<&str>, name: &str, sub: &str) -> ApiRequest {
        ApiRequest { subresource: Some(sub.into()), ..Self::req(verb, r, ns, Some(name)) }
    }

    /// GET one object.
    pub async fn get(&self, r: Gvr, ns: Option<&str>, name: &str) -> Result<Value> {
        self.call(Self::req("get", r, ns, Some(name))).await
    }

    /// One page of a list.
    pub async fn list_page(
        &self,
        r: Gvr,
        ns: Option<&str>,
        label_selector: Option<&str>,
        limit: usize,
        continue_token: Option<&str>,
    ) -> Result<ListPage> {
        let mut req = Self::req("list", r, ns, None);
        if let Some(l) = label_selector {
            req.query.push(("labelSelector".into(), l.into()));
        }
        if limit > 0 {
            req.query.push(("limit".into(), limit.to_string()));
        }
        if let Some(c) = continue_token {
            req.query.push(("continue".into(), c.into()));
        }
        let v = self.call(req).await?;
        let items = match v.get("items") {
            Some(Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        };
        let md = v.get("metadata");
        Ok(ListPage {
            items,
            resource_version: md
                .and_then(|m| m.get("resourceVersion"))
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            continue_token: md
                .and_then(|m| m.get("continue"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        })
    }

    /// Every object (paged), with the list's resourceVersion.
    pub async fn list_all(
        &self,
        r: Gvr,
        ns: Option<&str>,
        label_selector: Option<&str>,
    ) -> Result<(Vec<Value>, u64)> {
        let mut items = Vec::new();
        let mut cont: Option<String> = None;
        let mut rv = 0;
        loop {
            let page = self.list_page(r, ns, label_selector, 500, cont.as_deref()).await?;
            if rv == 0 {
                rv = page.resource_version;
            }
            items.extend(page.items);
            match page.continue_token {
                Some(c) => cont = Some(c),
                None => return Ok((items, rv)),
            }
        }
    }

    /// POST.
    pub async fn create(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value> {
        let mut req = Self::req("create", r, ns, None);
        req.body = Some(obj);
        self.call(req).await
    }

    /// PUT (with the object's resourceVersion as precondition).
    pub async fn update(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value> {
        let name =
            obj.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("").to_string();
        let mut req = Self::req("update", r, ns, Some(&name));
        req.body = Some(obj);
        self.call(req).await
    }

    /// PUT of the status subresource.
    pub async fn update_status(&self, r: Gvr, ns: Option<&str>, obj: Value) -> Result<Value> {
        let name =
            obj.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("").to_string();
        let mut req = Self::req("update", r, ns, Some(&name));
        req.subresource = Some("status".into());
        req.body = Some(obj);
        self.call(req).await
    }

    /// PATCH with a content type (`application/merge-patch+json`...), optionally of a
    /// subresource.
    pub async fn patch(
        &self,
        r: Gvr,
        ns: Option<&str>,
        name: &str,
        content_type: &str,
        patch: Value,
        subresource: Option<&str>,
    ) -> Result<Value> {
        let mut req = Self::req("patch", r, ns, Some(name));
        req.content_type = Some(content_type.into());
        req.subresource = subresource.map(str::to_string);
        req.body = Some(patch);
        self.call(req).await
    }

    /// JSON merge patch of the main resource.
    pub async fn merge_patch(&self, r: Gvr, ns: Option<&str>, name: &str, patch: Value) -> Result<Value> {
        self.patch(r, ns, name, "application/merge-patch+json", patch, None).await
    }

    /// DELETE with a propagation policy (`Background`, `Foreground`, `Orphan`).
    pub async fn delete(
        &self,
        r: Gvr,
        ns: Option<&str>,
        name: &str,
        propagation: Option<&str>,
    ) -> Result<Value> {
        let mut req = Self::req("delete", r, ns, Some(name));
        if let Some(p) = propagation {
            req.body = Some(json!({"propagationPolicy": p}));
        }
        self.call(req).await
    }

    /// DELETE with a uid precondition (deletes only that incarnation of the object).
    pub async fn delete_uid(
        &self,
        r: Gvr,
        ns: Option<&str>,
        name: &str,
        uid: &str,
        grace: Option<i64>,
    ) -> Result<Value> {
        let mut req = Self::req("delete", r, ns, Some(name));
        let mut body = json!({"preconditions": {"uid": uid}});
        if let Some(g) = grace {
            body["gracePeriodSeconds"] = json!(g);
        }
        req.body = Some(body);
        self.call(req).await
    }

    /// `serviceaccounts/<name>/token`: a token for the ServiceAccount bound to the pod
    /// `pod` (name, uid), for `audience` (None: the API's), valid `seconds`. Returns the
    /// token and its expiry (seconds since the epoch).
    pub async fn request_token(
        &self,
        ns: &str,
        service_account: &str,
        audience: Option<&str>,
        seconds: i64,
        pod: (&str, &str),
    ) -> Result<(String, i64)> {
        let mut req = Self::req("create", gvr::SERVICE_ACCOUNTS, Some(ns), Some(service_account));
        req.subresource = Some("token".into());
        let mut spec = json!({
            "expirationSeconds": seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.0, "uid": pod.1},
        });
        if let Some(a) = audience {
            spec["audiences"] = json!([a]);
        }
        req.body =
            Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}));
        let out = self.call(req).await?;
        let token = out["status"]["token"].as_str().unwrap_or("").to_string();
        let expiry = out["status"]["expirationTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second())
            .unwrap_or(0);
        if token.is_empty() {
            return Err(ClientError::Bus("the token request answered without a token".into()));
        }
        Ok((token, expiry))
    }

    /// `pods/binding`: assigns a pod to a node.
    pub async fn bind(&self, ns: &str, pod: &str, node: &str) -> Result<Value> {
        let mut req = Self::req("create", gvr::PODS, Some(ns), Some(pod));
        req.subresource = Some("binding".into());
        req.body = Some(json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }));
        self.call(req).await
    }
}
