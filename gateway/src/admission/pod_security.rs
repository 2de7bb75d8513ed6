//! PodSecurity: Pod Security Admission as upstream. Each namespace may set
//! `pod-security.kubernetes.io/{enforce,warn,audit}` (privileged|baseline|restricted) and the
//! matching `-version` (`latest`, `v1.x`); the cluster defaults fill what a namespace leaves
//! out. A pod that violates the namespace's `enforce` level is refused (403, upstream's
//! message); one that violates `warn` is admitted with a `Warning`; workload objects with a
//! pod template (Deployment, Job, …) are only warned about, as upstream. `audit` violations
//! are annotated on the request (`pod-security.kubernetes.io/audit-violations`, in warnings
//! for now). Exempt users, namespaces and runtime classes are not checked. Setting a stricter
//! `enforce` label on a namespace warns about the pods already there that would violate it.
//! The checks themselves are [`capstan_api::podsecurity`].

use super::{Attributes, Context, Operation, Outcome, Plugin};
use crate::status::{ApiError, ApiResult};
use capstan_api::podsecurity::{evaluate, pod_spec_of, warning, Level, LevelVersion, Version};
use capstan_api::{meta, registry, Cause};
use futures::future::BoxFuture;
use serde_json::Value;
use std::collections::BTreeMap;

const PREFIX: &str = "pod-security.kubernetes.io/";

/// The cluster-wide defaults and exemptions (upstream's PodSecurityConfiguration).
#[derive(Debug, Clone)]
pub struct Config {
    /// Levels for namespaces without labels.
    pub enforce: LevelVersion,
    /// Default warn level.
    pub warn: LevelVersion,
    /// Default audit level.
    pub audit: LevelVersion,
    /// Users never checked.
    pub exempt_users: Vec<String>,
    /// Namespaces never checked.
    pub exempt_namespaces: Vec<String>,
    /// Runtime classes never checked.
    pub exempt_runtime_classes: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        let privileged = LevelVersion { level: Level::Privileged, version: Version::Latest };
        Config {
            enforce: privileged,
            warn: privileged,
            audit: privileged,
            exempt_users: Vec::new(),
            exempt_namespaces: Vec::new(),
            exempt_runtime_classes: Vec::new(),
        }
    }
}

/// The PodSecurity plugin.
#[derive(Default)]
pub struct PodSecurity {
    config: Config,
}

/// The three policies of a namespace.
struct Policies {
    enforce: LevelVersion,
    warn: LevelVersion,
    audit: LevelVersion,
}

fn policy(
    labels: &BTreeMap<String, String>,
    mode: &str,
    default: LevelVersion,
) -> Result<LevelVersion, String> {
    let level = match labels.get(&format!("{PREFIX}{mode}")) {
        Some(l) => l.parse::<Level>().map_err(|e| format!("{PREFIX}{mode}: Invalid value: \"{l}\": {e}"))?,
        None => default.level,
    };
    let version = match labels.get(&format!("{PREFIX}{mode}-version")) {
        Some(v) => v
            .parse::<Version>()
            .map_err(|e| format!("{PREFIX}{mode}-version: Invalid value: \"{v}\": {e}"))?,
        None => default.version,
    };
    Ok(LevelVersion { level, version })
}

impl PodSecurity {
    /// The plugin with `config`.
    pub fn new(config: Config) -> PodSecurity {
        PodSecurity { config }
    }

    fn policies(&self, labels: &BTreeMap<String, String>) -> Result<Policies, String> {
        Ok(Policies {
            enforce: policy(labels, "enforce", self.config.enforce)?,
            warn: policy(labels, "warn", self.config.warn)?,
            audit: policy(labels, "audit", self.config.audit)?,
        })
    }

    async fn namespace_labels(&self, ctx: &Context, ns: &str) -> ApiResult<BTreeMap<String, String>> {
        let Some(res) = registry::find("", "v1", "namespaces") else { return Ok(BTreeMap::new()) };
        Ok(ctx.get(res, None, ns).await?.map(|o| meta::labels(&o)).unwrap_or_default())
    }

    /// A namespace's labels are validated; a stricter enforce level warns about its pods.
    async fn namespace(
        &self,
        ctx: &Context,
        a: &Attributes<'_>,
        obj: &Value,
        out: &mut Outcome,
    ) -> ApiResult<()> {
        let labels = meta::labels(obj);
        let p = self.policies(&labels).map_err(|m| {
            let (field, msg) = m.split_once(": ").unwrap_or(("", &m));
            ApiError::invalid(
                "Namespace",
                "",
                a.name,
                vec![Cause::invalid(format!("metadata.labels[{field}]"), msg)],
            )
        })?;
        if a.operation != Operation::Update || a.subresource.is_some() {
            return Ok(());
        }
        let before = a.old.map(meta::labels).unwrap_or_default();
        if policy(&before, "enforce", self.config.enforce).ok() == Some(p.enforce)
            || p.enforce.level == Level::Privileged
        {
            return Ok(());
        }
        let Some(pods) = registry::find("", "v1", "pods") else { return Ok(()) };
        let prefix = crate::keys::prefix(pods, Some(a.name));
        let end = capstan_storage::prefix_end(&prefix);
        let (items, _, _) = ctx.cache().list(&prefix, &end, 0, |_| true);
        let mut bad = Vec::new();
        for pod in items.iter().take(1000) {
            let Some((m, s)) = pod_spec_of("Pod", pod) else { continue };
            let v = evaluate(&m, &s, p.enforce);
            if !v.is_empty() {
                bad.push(format!(
                    "{}: {}",
                    meta::name(pod).unwrap_or(""),
                    capstan_api::podsecurity::forbidden_reason(&v)
                ));
            }
        }
        if !bad.is_empty() {
            out.warnings.push(format!(
                "existing pods in namespace \"{}\" violate the new PodSecurity enforce level \"{}\"",
                a.name, p.enforce
            ));
            out.warnings.extend(bad.into_iter().take(10));
        }
        Ok(())
    }
}

impl Plugin for PodSecurity {
    fn name(&self) -> &'static str {
        "PodSecurity"
    }

    fn validate<'a>(
        &'a self,
        ctx: &'a Context,
        a: &'a Attributes<'a>,
        obj: &'a Value,
        out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            if a.operation == Operation::Delete {
                return Ok(());
            }
            if a.is(a.operation, "", "Namespace") {
                return self.namespace(ctx, a, obj, out).await;
            }
            // Only writes of pods and pod templates (and of a pod's ephemeral containers, as
            // upstream), not their status.
            if a.subresource.is_some_and(|s| s != "ephemeralcontainers") {
                return Ok(());
            }
            let Some((m, spec)) = pod_spec_of(a.res.kind, obj) else { return Ok(()) };
            let Some(ns) = a.namespace else { return Ok(()) };
            if self.config.exempt_users.contains(&a.user.name)
                || self.config.exempt_namespaces.iter().any(|n| n == ns)
                || spec
                    .get("runtimeClassName")
                    .and_then(Value::as_str)
                    .is_some_and(|rc| self.config.exempt_runtime_classes.iter().any(|x| x == rc))
            {
                return Ok(());
            }
            // An update that leaves the pod spec alone is not checked again, as upstream.
            if a.operation == Operation::Update {
                if let Some((_, old_spec)) = a.old.and_then(|o| pod_spec_of(a.res.kind, o)) {
                    if old_spec == spec {
                        return Ok(());
                    }
                }
            }
            let labels = self.namespace_labels(ctx, ns).await?;
            let Ok(p) = self.policies(&labels) else {
                // Invalid labels were refused when set; treat what is left as the defaults.
                return Ok(());
            };
            let is_pod = a.res.kind == "Pod";
            if is_pod && p.enforce.level != Level::Privileged {
                let v = evaluate(&m, &spec, p.enforce);
                if !v.is_empty() {
                    return Err(ApiError::Forbidden {
                        message: capstan_api::podsecurity::enforce_message(
                            a.res.plural,
                            a.name,
                            p.enforce,
                            &v,
                        ),
                        details: None,
                    });
                }
            }
            if p.warn.level != Level::Privileged {
                let v = evaluate(&m, &spec, p.warn);
                if !v.is_empty() {
                    out.warnings.push(warning(p.warn, &v));
                }
            }
            // Workloads are warned about the enforce level too (they would create failing pods).
            if !is_pod && p.enforce.level != Level::Privileged && p.enforce != p.warn {
                let v = evaluate(&m, &spec, p.enforce);
                if !v.is_empty() {
                    out.warnings.push(warning(p.enforce, &v));
                }
            }
            if p.audit.level != Level::Privileged {
                let v = evaluate(&m, &spec, p.audit);
                if !v.is_empty() {
                    tracing::info!(
                        user = %a.user.name,
                        resource = a.res.plural,
                        namespace = ns,
                        name = a.name,
                        "PodSecurity audit: {}",
                        capstan_api::podsecurity::violates(p.audit, &v)
                    );
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::testing::{context, put};
    use crate::auth::User;
    use serde_json::json;

    fn pod_attrs<'a>(ns: &'a str, u: &'a User) -> Attributes<'a> {
        Attributes {
            operation: Operation::Create,
            res: registry::find("", "v1", "pods").unwrap(),
            subresource: None,
            namespace: Some(ns),
            name: "p",
            user: u,
            old: None,
            dry_run: false,
        }
    }

    #[tokio::test]
    async fn enforce_warn_and_exemptions() {
        let (ctx, _dir) = context().await;
        put(&ctx, "namespaces", &json!({"metadata": {"name": "strict", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})).await;
        put(&ctx, "namespaces", &json!({"metadata": {"name": "warned", "labels": {"pod-security.kubernetes.io/warn": "baseline"}}})).await;
        put(&ctx, "namespaces", &json!({"metadata": {"name": "open"}})).await;
        let u = User::new("bob", vec![]);
        let privileged = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": true}}]}});
        let p = PodSecurity::default();
        let mut out = Outcome::default();
        let e = p.validate(&ctx, &pod_attrs("strict", &u), &privileged, &mut out).await.unwrap_err();
        assert_eq!(e.code(), 403);
        assert!(e.to_string().starts_with("pods \"p\" is forbidden: violates PodSecurity \"restricted:latest\": privileged (container \"c\" must not set securityContext.privileged=true)"), "{e}");
        assert!(p.validate(&ctx, &pod_attrs("warned", &u), &privileged, &mut out).await.is_ok());
        assert_eq!(out.warnings.len(), 1);
        assert!(
            out.warnings[0].starts_with("would violate PodSecurity \"baseline:latest\": privileged"),
            "{:?}",
            out.warnings
        );
        let mut out = Outcome::default();
        assert!(p.validate(&ctx, &pod_attrs("open", &u), &privileged, &mut out).await.is_ok());
        assert!(out.warnings.is_empty());
        let exempt = PodSecurity::new(Config { exempt_users: vec!["bob".into()], ..Config::default() });
        assert!(exempt.validate(&ctx, &pod_attrs("strict", &u), &privileged, &mut out).await.is_ok());
        // A Deployment is warned, not refused.
        let deploy = json!({"spec": {"template": privileged}});
        let mut a = pod_attrs("strict", &u);
        a.res = registry::find("apps", "v1", "deployments").unwrap();
        let mut out = Outcome::default();
        assert!(p.validate(&ctx, &a, &deploy, &mut out).await.is_ok());
        assert!(
            out.warnings[0].starts_with("would violate PodSecurity \"restricted:latest\""),
            "{:?}",
            out.warnings
        );
        // An ephemeral container added to a pod is checked (its status is not).
        let mut a = pod_attrs("strict", &u);
        let plain = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        a.operation = Operation::Update;
        a.old = Some(&plain);
        a.subresource = Some("ephemeralcontainers");
        let debug = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}],
            "ephemeralContainers": [{"name": "d", "image": "x", "securityContext": {"privileged": true}}]}});
        let mut out = Outcome::default();
        assert_eq!(p.validate(&ctx, &a, &debug, &mut out).await.unwrap_err().code(), 403);
        a.subresource = Some("status");
        assert!(p.validate(&ctx, &a, &debug, &mut out).await.is_ok());
        // Bad labels are refused.
        let ns =
            json!({"metadata": {"name": "x", "labels": {"pod-security.kubernetes.io/enforce": "strictest"}}});
        let na = Attributes {
            res: registry::find("", "v1", "namespaces").unwrap(),
            namespace: None,
            name: "x",
            ..pod_attrs("x", &u)
        };
        assert_eq!(p.validate(&ctx, &na, &ns, &mut out).await.unwrap_err().code(), 422);
    }
}
