//! ServiceAccount: a pod runs as a ServiceAccount (`default` unless it names one) that must
//! exist, and gets the `kube-api-access-<random>` projected volume (a bound token refreshed
//! by the node agent, the cluster CA from the `kube-root-ca.crt` ConfigMap, the namespace)
//! mounted at `/var/run/secrets/kubernetes.io/serviceaccount` in every container, unless the
//! pod or its ServiceAccount sets `automountServiceAccountToken: false` or a container
//! already mounts that path.
//!
//! It also fills legacy `kubernetes.io/service-account-token` Secrets on create (upstream's
//! token controller does this a moment later; here it happens in the same write): the
//! ServiceAccount's uid annotation, `token`, `ca.crt` and `namespace`.

use super::{Attributes, Context, Operation, Outcome, Plugin};
use crate::status::{ApiError, ApiResult};
use crate::tokens::TokenSigner;
use base64::Engine;
use capstan_api::{meta, registry};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::Arc;

/// Where the token volume is mounted.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The token lifetime the volume asks for (upstream's 3607 s).
const TOKEN_SECONDS: i64 = 3607;

/// The ServiceAccount plugin.
#[derive(Default)]
pub struct ServiceAccount {
    signer: Option<Arc<TokenSigner>>,
    ca: String,
}

impl ServiceAccount {
    /// The plugin; with a signer and the cluster CA it also fills legacy token Secrets.
    pub fn new(signer: Option<Arc<TokenSigner>>, ca: String) -> ServiceAccount {
        ServiceAccount { signer, ca }
    }

    async fn pod(&self, ctx: &Context, a: &Attributes<'_>, obj: &mut Value) -> ApiResult<()> {
        let named =
            obj["spec"].get("serviceAccountName").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
        if !named {
            // The deprecated alias wins when set, as upstream's defaulting.
            let alias = obj["spec"]
                .get("serviceAccount")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_string();
            obj["spec"]["serviceAccountName"] = json!(alias);
        }
        let sa_name = obj["spec"]["serviceAccountName"].as_str().unwrap_or("default").to_string();
        let ns = a.namespace.unwrap_or("");
        let sa_res = registry::find("", "v1", "serviceaccounts")
            .ok_or_else(|| ApiError::Internal("serviceaccounts are not registered".into()))?;
        let sa = ctx.get(sa_res, Some(ns), &sa_name).await?;
        // The `default` account is made by a controller moments after its namespace; a pod
        // created in between is admitted (its token is requested once the account exists)
        // rather than refused as upstream does, so `create namespace` + `run` just works.
        if sa.is_none() && sa_name != "default" {
            return Err(ApiError::forbidden(
                a.res,
                a.name,
                &format!(
                    "error looking up service account {ns}/{sa_name}: serviceaccount \"{sa_name}\" not found"
                ),
            ));
        }
        let pod_says = obj["spec"].get("automountServiceAccountToken").and_then(Value::as_bool);
        let sa_says =
            sa.as_ref().and_then(|s| s.get("automountServiceAccountToken")).and_then(Value::as_bool);
        if pod_says.or(sa_says) == Some(false) {
            return Ok(());
        }
        let mounted = ["initContainers", "containers"].iter().any(|k| {
            obj["spec"].get(*k).and_then(Value::as_array).is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.get("volumeMounts").and_then(Value::as_array).is_some_and(|ms| {
                        ms.iter().any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH))
                    })
                })
            })
        });
        if mounted {
            return Ok(());
        }
        let existing = obj["spec"].get("volumes").and_then(Value::as_array).and_then(|vs| {
            vs.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .find(|n| n.starts_with("kube-api-access-"))
                .map(str::to_string)
        });
        let name = match existing {
            Some(n) => n,
            None => {
                let name = format!("kube-api-access-{}", suffix());
                let volume = json!({
                    "name": name,
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": TOKEN_SECONDS, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                            {"downwardAPI": {"items": [{"path": "namespace",
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                        ],
                    },
                });
                let spec = obj["spec"]
                    .as_object_mut()
                    .ok_or_else(|| ApiError::BadRequest("pod spec must be an object".into()))?;
                let vols = spec.entry("volumes").or_insert_with(|| json!([]));
                if vols.is_null() {
                    *vols = json!([]);
                }
                if let Some(list) = vols.as_array_mut() {
                    list.push(volume);
                }
                name
            }
        };
        for k in ["initContainers", "containers"] {
            if let Some(cs) = obj["spec"].get_mut(k).and_then(Value::as_array_mut) {
                for c in cs {
                    let Some(c) = c.as_object_mut() else { continue };
                    let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
                    if mounts.is_null() {
                        *mounts = json!([]);
                    }
                    if let Some(list) = mounts.as_array_mut() {
                        list.push(json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH}));
                    }
                }
            }
        }
        Ok(())
    }

    async fn token_secret(&self, ctx: &Context, a: &Attributes<'_>, obj: &mut Value) -> ApiResult<()> {
        if obj.get("type").and_then(Value::as_str) != Some("kubernetes.io/service-account-token") {
            return Ok(());
        }
        let Some(signer) = &self.signer else { return Ok(()) };
        let ns = a.namespace.unwrap_or("");
        let annotations = meta::string_map(obj, "annotations");
        let Some(sa_name) = annotations.get("kubernetes.io/service-account.name").cloned() else {
            return Ok(()); // validation names the missing annotation
        };
        let sa_res = registry::find("", "v1", "serviceaccounts")
            .ok_or_else(|| ApiError::Internal("serviceaccounts are not registered".into()))?;
        let Some(sa) = ctx.get(sa_res, Some(ns), &sa_name).await? else {
            return Err(ApiError::forbidden(
                a.res,
                a.name,
                &format!(
                    "error looking up service account {ns}/{sa_name}: serviceaccount \"{sa_name}\" not found"
                ),
            ));
        };
        let uid = meta::meta_str(&sa, "uid").unwrap_or("").to_string();
        let token =
            signer.issue_legacy(ns, &sa_name, &uid, a.name).map_err(|e| ApiError::Internal(e.to_string()))?;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        obj["metadata"]["annotations"]["kubernetes.io/service-account.uid"] = json!(uid);
        if !obj.get("data").is_some_and(Value::is_object) {
            obj["data"] = json!({});
        }
        obj["data"]["token"] = json!(b64(&token));
        obj["data"]["namespace"] = json!(b64(ns));
        if !self.ca.is_empty() {
            obj["data"]["ca.crt"] = json!(b64(&self.ca));
        }
        Ok(())
    }
}

fn suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

impl Plugin for ServiceAccount {
    fn name(&self) -> &'static str {
        "ServiceAccount"
    }

    fn admit<'a>(
        &'a self,
        ctx: &'a Context,
        a: &'a Attributes<'a>,
        obj: &'a mut Value,
        _out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            if a.is(Operation::Create, "", "Pod") {
                return self.pod(ctx, a, obj).await;
            }
            if a.is(Operation::Create, "", "Secret") {
                return self.token_secret(ctx, a, obj).await;
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

    fn attrs<'a>(plural: &str, name: &'a str, u: &'a User) -> Attributes<'a> {
        Attributes {
            operation: Operation::Create,
            res: registry::find("", "v1", plural).unwrap(),
            subresource: None,
            namespace: Some("default"),
            name,
            user: u,
            old: None,
            dry_run: false,
        }
    }

    #[tokio::test]
    async fn pods_get_an_account_and_its_token_volume() {
        let (ctx, _dir) = context().await;
        let u = User::system();
        put(
            &ctx,
            "serviceaccounts",
            &json!({"metadata": {"name": "builder", "namespace": "default", "uid": "u1"}}),
        )
        .await;
        put(&ctx, "serviceaccounts", &json!({"metadata": {"name": "quiet", "namespace": "default"}, "automountServiceAccountToken": false})).await;
        let p = ServiceAccount::default();
        let a = attrs("pods", "p", &u);
        let mut out = Outcome::default();
        let mut pod = json!({"spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "i"}]}});
        p.admit(&ctx, &a, &mut pod, &mut out).await.unwrap();
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        let vol = &pod["spec"]["volumes"][0];
        let name = vol["name"].as_str().unwrap();
        assert!(name.starts_with("kube-api-access-") && name.len() == 21, "{name}");
        assert_eq!(vol["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(vol["projected"]["sources"][1]["configMap"]["name"], "kube-root-ca.crt");
        for k in ["containers", "initContainers"] {
            assert_eq!(
                pod["spec"][k][0]["volumeMounts"][0],
                json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH})
            );
        }
        // Opted out by the pod, by the account, or mounted by hand: no volume.
        let mut off = json!({"spec": {"automountServiceAccountToken": false, "containers": [{"name": "a"}]}});
        p.admit(&ctx, &a, &mut off, &mut out).await.unwrap();
        assert!(off["spec"].get("volumes").is_none());
        let mut quiet = json!({"spec": {"serviceAccountName": "quiet", "containers": [{"name": "a"}]}});
        p.admit(&ctx, &a, &mut quiet, &mut out).await.unwrap();
        assert!(quiet["spec"].get("volumes").is_none());
        let mut own = json!({"spec": {"containers": [{"name": "a", "volumeMounts": [{"name": "x", "mountPath": MOUNT_PATH}]}]}});
        p.admit(&ctx, &a, &mut own, &mut out).await.unwrap();
        assert!(own["spec"].get("volumes").is_none());
        // A named account must exist.
        let mut missing = json!({"spec": {"serviceAccountName": "ghost", "containers": [{"name": "a"}]}});
        let e = p.admit(&ctx, &a, &mut missing, &mut out).await.unwrap_err();
        assert_eq!(e.code(), 403);
        assert_eq!(
            e.to_string(),
            "pods \"p\" is forbidden: error looking up service account default/ghost: serviceaccount \"ghost\" not found"
        );
    }

    #[tokio::test]
    async fn legacy_token_secrets_are_filled() {
        let (ctx, dir) = context().await;
        let signer = Arc::new(
            TokenSigner::load_or_create(dir.path(), "https://kubernetes.default.svc.cluster.local").unwrap(),
        );
        put(
            &ctx,
            "serviceaccounts",
            &json!({"metadata": {"name": "builder", "namespace": "default", "uid": "u1"}}),
        )
        .await;
        let p = ServiceAccount::new(Some(signer.clone()), "CA".into());
        let u = User::system();
        let a = attrs("secrets", "builder-token", &u);
        let mut out = Outcome::default();
        let mut s = json!({"type": "kubernetes.io/service-account-token",
                           "metadata": {"annotations": {"kubernetes.io/service-account.name": "builder"}}});
        p.admit(&ctx, &a, &mut s, &mut out).await.unwrap();
        assert_eq!(s["metadata"]["annotations"]["kubernetes.io/service-account.uid"], "u1");
        let tok =
            base64::engine::general_purpose::STANDARD.decode(s["data"]["token"].as_str().unwrap()).unwrap();
        let v = signer.verify(std::str::from_utf8(&tok).unwrap(), &[]).unwrap();
        assert!(v.legacy);
        assert_eq!(v.secret.unwrap().name, "builder-token");
        assert_eq!(s["data"]["ca.crt"], base64::engine::general_purpose::STANDARD.encode("CA"));
    }
}
