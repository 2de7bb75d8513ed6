//! The admission chain: plugins that may change (mutating) or refuse (validating) a write
//! after it was authorized, decoded and prepared by its kind's strategy, and before it is
//! committed.
//!
//! As upstream, every plugin first gets its mutating turn ([`Plugin::admit`]) in chain
//! order, then the kind's strategy validates the result, then every plugin gets its
//! validating turn ([`Plugin::validate`]) in the same order. The order is upstream's
//! (`kube-apiserver --enable-admission-plugins`, `AllOrderedPlugins`); [`Chain::standard`]
//! lists the plugins capstan has. A plugin can add warnings and store operations that
//! commit in the same transaction as the object, so what it reserves cannot drift from
//! what was written (the ResourceQuota plugin commits its charges itself, batched per
//! namespace, before the object, as upstream).
//!
//! Plugins read cluster state through a [`Context`] (the watch cache, falling back to the
//! store), never through their own connections; each is unit-tested on a temporary store.

pub mod certificates;
mod default_tolerations;
mod limit_ranger;
mod namespace_lifecycle;
mod node_restriction;
pub mod pod_security;
pub mod policy;
mod priority;
mod resource_quota;
mod service_account;
mod storage;
pub mod webhook;

pub use default_tolerations::DefaultTolerationSeconds;
pub use limit_ranger::LimitRanger;
pub use namespace_lifecycle::{NamespaceLifecycle, SYSTEM_NAMESPACES};
pub use node_restriction::NodeRestriction;
pub use priority::Priority;
pub use resource_quota::ResourceQuota;
pub use service_account::ServiceAccount;
pub use storage::{DefaultStorageClass, StorageObjectInUseProtection};

use crate::auth::User;
use crate::cache::{decode_stored, Cache};
use crate::keys;
use crate::status::ApiResult;
use crate::strategy::Reservations;
use capstan_api::ResourceInfo;
use capstan_storage::Store;
use futures::future::BoxFuture;
use serde_json::Value;
use std::sync::Arc;

/// What a request does, as admission sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// POST, or an apply that creates.
    Create,
    /// PUT or PATCH.
    Update,
    /// DELETE.
    Delete,
}

impl Operation {
    /// Upstream's name (`CREATE`, `UPDATE`, `DELETE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// The attributes of a write under admission.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The operation.
    pub operation: Operation,
    /// The resource.
    pub res: &'a ResourceInfo,
    /// The subresource (`status`, `binding`, `scale`...), if any.
    pub subresource: Option<&'a str>,
    /// The namespace (None for cluster-scoped resources).
    pub namespace: Option<&'a str>,
    /// The object's name.
    pub name: &'a str,
    /// Who asks.
    pub user: &'a User,
    /// The stored object (updates and deletes).
    pub old: Option<&'a Value>,
    /// `dryRun=All`: plugins must not have side effects.
    pub dry_run: bool,
}

impl Attributes<'_> {
    /// Whether this is `operation` on the main resource of `group`/`kind`.
    pub fn is(&self, operation: Operation, group: &str, kind: &str) -> bool {
        self.operation == operation
            && self.subresource.is_none()
            && self.res.group == group
            && self.res.kind == kind
    }
}

/// What plugins add to a write besides changes to the object.
#[derive(Default)]
pub struct Outcome {
    /// Warnings for the client (`Warning` headers).
    pub warnings: Vec<String>,
    /// Store operations committed with the object.
    pub reservations: Reservations,
}

impl Outcome {
    /// The reservations of both turns (warnings are the caller's to collect).
    pub fn merged(&self, other: &Outcome) -> Outcome {
        let mut reservations = Reservations::default();
        for o in [self, other] {
            reservations.ops.extend(o.reservations.ops.iter().cloned());
            reservations.on_conflict.extend(o.reservations.on_conflict.iter().cloned());
        }
        Outcome { warnings: Vec::new(), reservations }
    }
}

/// Read access to cluster state for plugins and strategies.
#[derive(Clone)]
pub struct Context {
    store: Arc<dyn Store>,
    cache: Arc<Cache>,
    /// The API service's authorizer, for the `authorizer` CEL variable of policies.
    authorizer: Option<Arc<dyn crate::auth::Authorizer>>,
}

impl Context {
    /// A context over the store and its watch cache.
    pub fn new(store: Arc<dyn Store>, cache: Arc<Cache>) -> Context {
        Context { store, cache, authorizer: None }
    }

    /// The same context, whose policies can make authorization checks with `authorizer`.
    pub fn with_authorizer(mut self, authorizer: Arc<dyn crate::auth::Authorizer>) -> Context {
        self.authorizer = Some(authorizer);
        self
    }

    /// The authorizer policies check with, if any.
    pub fn authorizer(&self) -> Option<&Arc<dyn crate::auth::Authorizer>> {
        self.authorizer.as_ref()
    }

    /// The store (for reservation keys and reads that must be current).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The watch cache.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// One object: from the cache, or from the store when the cache does not have it yet
    /// (an object created a moment ago).
    pub async fn get(
        &self,
        res: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<Option<Value>> {
        let key = keys::object_key(res, namespace, name);
        if let Some(v) = self.cache.get(&key) {
            return Ok(Some((*v).clone()));
        }
        self.get_live(res, namespace, name).await
    }

    /// One object, read from the store.
    pub async fn get_live(
        &self,
        res: &ResourceInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<Option<Value>> {
        let key = keys::object_key(res, namespace, name);
        match self.store.get(&key).await? {
            None => Ok(None),
            Some(kv) => decode_stored(&kv.value, kv.mod_revision).map(Some).ok_or_else(|| {
                crate::status::ApiError::Internal("stored object could not be decoded".into())
            }),
        }
    }
}

/// An admission plugin. Both turns default to "no opinion".
pub trait Plugin: Send + Sync {
    /// Upstream's name of the plugin (`NamespaceLifecycle`...).
    fn name(&self) -> &'static str;

    /// The mutating turn: may change `obj` (for deletes, the stored object; changes are
    /// ignored).
    fn admit<'a>(
        &'a self,
        _ctx: &'a Context,
        _attrs: &'a Attributes<'a>,
        _obj: &'a mut Value,
        _out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async { Ok(()) })
    }

    /// The validating turn: may refuse the write.
    fn validate<'a>(
        &'a self,
        _ctx: &'a Context,
        _attrs: &'a Attributes<'a>,
        _obj: &'a Value,
        _out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// The ordered admission plugins.
#[derive(Clone, Default)]
pub struct Chain {
    plugins: Vec<Arc<dyn Plugin>>,
}

impl Chain {
    /// A chain of `plugins`, in the order given.
    pub fn new(plugins: Vec<Arc<dyn Plugin>>) -> Chain {
        Chain { plugins }
    }

    /// capstan's plugins in upstream's order: NamespaceLifecycle, ServiceAccount (without a
    /// token signer: see [`Chain::configured`]), DefaultTolerationSeconds,
    /// DefaultStorageClass, StorageObjectInUseProtection.
    pub fn standard() -> Chain {
        Chain::new(vec![
            Arc::new(NamespaceLifecycle::default()),
            Arc::new(ServiceAccount::default()),
            Arc::new(DefaultTolerationSeconds::from_env()),
            Arc::new(DefaultStorageClass),
            Arc::new(StorageObjectInUseProtection),
        ])
    }

    /// The gateway's chain: NamespaceLifecycle, LimitRanger, ServiceAccount (filling legacy
    /// token Secrets with `signer` and the cluster `ca`), NodeRestriction, PodSecurity,
    /// Priority, DefaultTolerationSeconds, DefaultStorageClass, StorageObjectInUseProtection, then
    /// `validating` (RBAC escalation checks...), the mutating webhooks, ValidatingAdmissionPolicy
    /// ([`policy`]), the validating webhooks ([`webhook`]; hooks at `bus:` URLs are called over
    /// `bus`), and
    /// ResourceQuota last, in upstream's order.
    pub fn configured(
        signer: Option<Arc<crate::tokens::TokenSigner>>,
        ca: String,
        pod_security: pod_security::Config,
        validating: Vec<Arc<dyn Plugin>>,
        bus: Option<Arc<dyn capstan_bus::Bus>>,
    ) -> Chain {
        let mut plugins: Vec<Arc<dyn Plugin>> = vec![
            Arc::new(NamespaceLifecycle::default()),
            Arc::new(LimitRanger),
            Arc::new(ServiceAccount::new(signer, ca)),
            Arc::new(NodeRestriction),
            Arc::new(pod_security::PodSecurity::new(pod_security)),
            Arc::new(Priority),
            Arc::new(DefaultTolerationSeconds::from_env()),
            Arc::new(DefaultStorageClass),
            Arc::new(StorageObjectInUseProtection),
        ];
        plugins.extend(validating);
        // Dynamic admission after the built-in plugins, ResourceQuota last (upstream's
        // MutatingAdmissionWebhook, ValidatingAdmissionPolicy, ValidatingAdmissionWebhook,
        // ResourceQuota).
        let (mutating, validating) = webhook::plugins(bus);
        plugins.push(Arc::new(mutating));
        plugins.push(Arc::new(policy::ValidatingAdmissionPolicy));
        plugins.push(Arc::new(validating));
        plugins.push(Arc::new(ResourceQuota));
        Chain::new(plugins)
    }

    /// The chain with `plugin` appended.
    pub fn with(mut self, plugin: Arc<dyn Plugin>) -> Chain {
        self.plugins.push(plugin);
        self
    }

    /// The plugins' names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    /// Every plugin's mutating turn, in order.
    pub async fn admit(
        &self,
        ctx: &Context,
        attrs: &Attributes<'_>,
        obj: &mut Value,
        out: &mut Outcome,
    ) -> ApiResult<()> {
        for p in &self.plugins {
            p.admit(ctx, attrs, obj, out).await?;
        }
        Ok(())
    }

    /// Every plugin's validating turn, in order.
    pub async fn validate(
        &self,
        ctx: &Context,
        attrs: &Attributes<'_>,
        obj: &Value,
        out: &mut Outcome,
    ) -> ApiResult<()> {
        for p in &self.plugins {
            p.validate(ctx, attrs, obj, out).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A temporary store and cache for plugin tests.

    use super::Context;
    use crate::cache::Cache;
    use crate::service::encode;
    use capstan_storage::{Op, Precondition, RedbStore, Store, Txn};
    use serde_json::Value;
    use std::sync::Arc;

    /// A context over a fresh redb store in a temporary directory (kept alive by the
    /// returned guard).
    pub async fn context() -> (Context, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.path().join("s.redb")).expect("open store"));
        let cache = Cache::start(store.clone(), 1000).await.expect("start cache");
        (Context::new(store, cache), dir)
    }

    /// Writes `obj` of resource `plural` (core group) directly to the store.
    pub async fn put(ctx: &Context, plural: &str, obj: &Value) {
        let res = capstan_api::registry::find("", "v1", plural).expect("registered");
        let ns = capstan_api::meta::namespace(obj);
        let key = crate::keys::object_key(res, ns, capstan_api::meta::name(obj).unwrap_or(""));
        ctx.store()
            .commit(Txn::single(Op::put(key, encode(obj).expect("encode"), Precondition::None)))
            .await
            .expect("commit");
    }
}
