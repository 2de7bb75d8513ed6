//! Authentication of bearer tokens and the authentication API: `serviceaccounts/token`
//! (TokenRequest), TokenReview and SelfSubjectReview (`kubectl auth whoami`).
//!
//! A bearer token is a static token (`tokenFile`, upstream's CSV format) or a
//! ServiceAccount JWT ([`crate::tokens`]). A JWT is accepted only while what it names still
//! exists as it was: the ServiceAccount with the same uid, the Pod or Secret it is bound
//! to with the same uid, and for a legacy token the Secret still holding exactly that token.

use crate::admission::Context;
use crate::auth::User;
use crate::service::ApiService;
use crate::status::{ApiError, ApiResult};
use crate::tokens::{Invalid, ObjectRef, TokenSigner, Verified};
use base64::Engine;
use capstan_api::{meta, registry, Cause, ResourceInfo};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Upstream's default and bounds of `expirationSeconds`.
const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;

fn res(plural: &str) -> ApiResult<&'static ResourceInfo> {
    registry::find("", "v1", plural).ok_or_else(|| ApiError::Internal(format!("{plural} are not registered")))
}

/// Reads a static token file: CSV lines `token,user,uid,"group1,group2"` as upstream's
/// `--token-auth-file` (blank lines and `#` comments skipped).
pub fn read_token_file(path: &Path) -> Result<HashMap<String, User>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("failed to read token file {}: {e}", path.display()))?;
    parse_token_file(&text).map_err(|e| format!("invalid token file {}: {e}", path.display()))
}

/// Parses the static token CSV.
pub fn parse_token_file(text: &str) -> Result<HashMap<String, User>, String> {
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_csv(line);
        if fields.len() < 3 {
            return Err(format!("line {}: want token,user,uid[,\"groups\"]", n + 1));
        }
        let (token, name, uid) = (&fields[0], &fields[1], &fields[2]);
        if token.is_empty() || name.is_empty() {
            return Err(format!("line {}: the token and the user name must not be empty", n + 1));
        }
        let groups = fields
            .get(3)
            .map(|g| g.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::to_string).collect())
            .unwrap_or_default();
        let mut user = User::new(name.clone(), groups);
        user.uid = uid.clone();
        out.insert(token.clone(), user);
    }
    Ok(out)
}

/// Splits one CSV line (double quotes group, `""` escapes a quote).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur).trim().to_string()),
            c => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

/// `<id>.<secret>` of a bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`).
fn bootstrap_token_parts(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok =
        |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// The user of a bootstrap token, as upstream's bootstrap token authenticator: the Secret
/// `kube-system/bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token` with that
/// secret, `usage-bootstrap-authentication: "true"` and no past `expiration` makes
/// `system:bootstrap:<id>` in `system:bootstrappers` (plus `auth-extra-groups`).
async fn bootstrap_user(ctx: &Context, id: &str, secret: &str) -> Option<User> {
    let res = res("secrets").ok()?;
    let obj = ctx.get(res, Some("kube-system"), &format!("bootstrap-token-{id}")).await.ok()??;
    if obj.get("type").and_then(Value::as_str) != Some("bootstrap.kubernetes.io/token") {
        return None;
    }
    let field = |k: &str| -> Option<String> {
        let b = obj["data"].get(k).and_then(Value::as_str)?;
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).ok()?).ok()
    };
    // Constant-time comparison of the secret.
    let stored = field("token-secret")?;
    let same = stored.len() == secret.len()
        && stored.bytes().zip(secret.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !same
        || field("token-id").as_deref() != Some(id)
        || field("usage-bootstrap-authentication").as_deref() != Some("true")
    {
        return None;
    }
    if let Some(exp) = field("expiration") {
        let t: jiff::Timestamp = exp.parse().ok()?;
        if t <= jiff::Timestamp::now() {
            return None;
        }
    }
    let mut groups = vec!["system:bootstrappers".to_string()];
    if let Some(extra) = field("auth-extra-groups") {
        groups.extend(
            extra
                .split(',')
                .map(str::trim)
                .filter(|g| g.starts_with("system:bootstrappers:"))
                .map(str::to_string),
        );
    }
    Some(User::new(format!("system:bootstrap:{id}"), groups))
}

/// The user a verified ServiceAccount token stands for, if what it names still exists.
pub async fn service_account_user(ctx: &Context, v: Verified, token: &str) -> Result<User, Invalid> {
    let gone = |what: &str| Invalid(format!("{what} the token names no longer exists"));
    let lookup = |plural: &'static str, name: String| {
        let ns = v.namespace.clone();
        async move {
            let r = res(plural).map_err(|e| Invalid(e.to_string()))?;
            ctx.get(r, Some(&ns), &name).await.map_err(|e| Invalid(e.to_string()))
        }
    };
    let sa = lookup("serviceaccounts", v.name.clone()).await?.ok_or_else(|| gone("the ServiceAccount"))?;
    let sa_uid = meta::meta_str(&sa, "uid").unwrap_or("").to_string();
    if !v.uid.is_empty() && v.uid != sa_uid {
        return Err(Invalid("the ServiceAccount was replaced".into()));
    }
    let mut extra = BTreeMap::new();
    if let Some(p) = &v.pod {
        let pod = lookup("pods", p.name.clone()).await?.ok_or_else(|| gone("the Pod"))?;
        if meta::meta_str(&pod, "uid") != Some(p.uid.as_str()) {
            return Err(Invalid("the Pod the token is bound to was replaced".into()));
        }
        extra.insert("authentication.kubernetes.io/pod-name".to_string(), vec![p.name.clone()]);
        extra.insert("authentication.kubernetes.io/pod-uid".to_string(), vec![p.uid.clone()]);
    }
    if let Some(s) = &v.secret {
        let secret = lookup("secrets", s.name.clone()).await?.ok_or_else(|| gone("the Secret"))?;
        if v.legacy {
            let ty = secret.get("type").and_then(Value::as_str).unwrap_or("");
            let owner =
                meta::string_map(&secret, "annotations").get("kubernetes.io/service-account.name").cloned();
            let stored = secret["data"]
                .get("token")
                .and_then(Value::as_str)
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
            if ty != "kubernetes.io/service-account-token"
                || owner.as_deref() != Some(v.name.as_str())
                || stored.as_deref() != Some(token.as_bytes())
            {
                return Err(Invalid("the Secret no longer holds this token".into()));
            }
        } else if meta::meta_str(&secret, "uid") != Some(s.uid.as_str()) {
            return Err(Invalid("the Secret the token is bound to was replaced".into()));
        }
    }
    if let Some(n) = &v.node {
        extra.insert("authentication.kubernetes.io/node-name".to_string(), vec![n.name.clone()]);
    }
    if let Some(j) = &v.jti {
        extra.insert("authentication.kubernetes.io/credential-id".to_string(), vec![format!("JTI={j}")]);
    }
    let mut user = User::new(
        format!("system:serviceaccount:{}:{}", v.namespace, v.name),
        vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{}", v.namespace)],
    );
    user.uid = sa_uid;
    user.extra = extra;
    Ok(user)
}

/// What an impersonating request asks to be (`Impersonate-*` headers).
#[derive(Debug, Default, Clone)]
pub struct Impersonation {
    /// `Impersonate-User`.
    pub user: Option<String>,
    /// `Impersonate-Group` (repeated).
    pub groups: Vec<String>,
    /// `Impersonate-Uid`.
    pub uid: Option<String>,
    /// `Impersonate-Extra-<key>` (repeated).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Impersonation {
    /// Whether any impersonation header was given.
    pub fn is_empty(&self) -> bool {
        self.user.is_none() && self.groups.is_empty() && self.uid.is_none() && self.extra.is_empty()
    }
}

impl ApiService {
    /// The user `requester` acts as through impersonation headers, each part authorized by
    /// the `impersonate` verb as upstream (users, groups, serviceaccounts, uids,
    /// userextras/<key>); 403 for a part the requester may not take on.
    pub fn impersonate(&self, requester: &User, imp: &Impersonation) -> ApiResult<User> {
        let Some(name) = imp.user.clone().filter(|u| !u.is_empty()) else {
            return Err(ApiError::BadRequest(
                "requested impersonation (groups, uid or extra) without impersonating a user".into(),
            ));
        };
        let check = |group: &str,
                     resource: &str,
                     sub: &str,
                     ns: Option<&str>,
                     target: &str|
         -> ApiResult<()> {
            let attrs = crate::auth::Attributes {
                verb: "impersonate".into(),
                group: group.into(),
                resource: resource.into(),
                subresource: sub.into(),
                namespace: ns.unwrap_or("").into(),
                name: target.into(),
                path: None,
            };
            match self.decide(requester, &attrs) {
                crate::auth::Decision::Allow(_) => Ok(()),
                crate::auth::Decision::Deny(_) => {
                    let what =
                        if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
                    let scope = match ns {
                        Some(n) => format!(" in the namespace \"{n}\""),
                        None => " at the cluster scope".into(),
                    };
                    Err(ApiError::Forbidden {
                        message: format!(
                            "{what} \"{target}\" is forbidden: User \"{}\" cannot impersonate resource \"{resource}{}\" in API group \"{group}\"{scope}",
                            requester.name,
                            if sub.is_empty() { String::new() } else { format!("/{sub}") },
                        ),
                        details: None,
                    })
                }
            }
        };
        let mut groups = imp.groups.clone();
        if let Some(rest) = name.strip_prefix("system:serviceaccount:") {
            let (ns, sa) = rest.split_once(':').unwrap_or(("", rest));
            check("", "serviceaccounts", "", Some(ns), sa)?;
            if imp.groups.is_empty() {
                groups = vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}")];
            }
        } else {
            check("", "users", "", None, &name)?;
        }
        for g in &imp.groups {
            check("", "groups", "", None, g)?;
        }
        if let Some(uid) = &imp.uid {
            check("authentication.k8s.io", "uids", "", None, uid)?;
        }
        for (k, vals) in &imp.extra {
            for v in vals {
                check("authentication.k8s.io", "userextras", k, None, v)?;
            }
        }
        let mut user =
            if name == "system:anonymous" { User::anonymous() } else { User::new(name, Vec::new()) };
        for g in groups {
            if !user.groups.contains(&g) {
                user.groups.push(g);
            }
        }
        user.uid = imp.uid.clone().unwrap_or_default();
        user.extra = imp.extra.clone();
        Ok(user)
    }

    /// The user a bearer token stands for: a static token, a bootstrap token, else a
    /// ServiceAccount JWT.
    pub async fn authenticate_bearer(&self, statics: &HashMap<String, User>, token: &str) -> Option<User> {
        if let Some(u) = statics.get(token) {
            return Some(u.clone());
        }
        if let Some((id, secret)) = bootstrap_token_parts(token) {
            return bootstrap_user(self.context(), id, secret).await;
        }
        let signer = self.tokens()?;
        let verified = match signer.verify(token, &[]) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!("bearer token refused: {e}");
                return None;
            }
        };
        match service_account_user(self.context(), verified, token).await {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::debug!("ServiceAccount token refused: {e}");
                None
            }
        }
    }

    fn signer(&self) -> ApiResult<&TokenSigner> {
        self.tokens().map(|t| t.as_ref()).ok_or_else(|| {
            ApiError::Unavailable(
                "ServiceAccount tokens are not set up on this gateway (no signing key)".into(),
            )
        })
    }

    /// `POST serviceaccounts/<name>/token`: a bound token for the ServiceAccount.
    pub async fn create_token(
        &self,
        user: &User,
        namespace: &str,
        name: &str,
        body: Value,
    ) -> ApiResult<Value> {
        let sa_res = res("serviceaccounts")?;
        self.authorize(user, "create", sa_res, Some("token"), Some(namespace), Some(name))?;
        let signer = self.signer()?;
        let invalid = |field: &str, msg: String| {
            ApiError::invalid("TokenRequest", "authentication.k8s.io", name, vec![Cause::invalid(field, msg)])
        };
        if !body.is_object() {
            return Err(ApiError::BadRequest("TokenRequest: the request body must be a JSON object".into()));
        }
        let spec = body.get("spec").cloned().unwrap_or(json!({}));
        let audiences: Vec<String> = match spec.get("audiences") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            Some(_) => return Err(ApiError::BadRequest("spec.audiences must be a list of strings".into())),
        };
        let seconds = match spec.get("expirationSeconds") {
            None | Some(Value::Null) => DEFAULT_EXPIRATION,
            Some(v) => v
                .as_i64()
                .ok_or_else(|| ApiError::BadRequest("spec.expirationSeconds must be an integer".into()))?,
        };
        if seconds < MIN_EXPIRATION {
            return Err(invalid(
                "spec.expirationSeconds",
                format!("Invalid value: {seconds}: may not specify a duration less than 10 minutes"),
            ));
        }
        if seconds > MAX_EXPIRATION {
            return Err(invalid(
                "spec.expirationSeconds",
                format!("Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds"),
            ));
        }
        let ctx = self.context();
        let sa =
            ctx.get(sa_res, Some(namespace), name).await?.ok_or_else(|| ApiError::not_found(sa_res, name))?;
        let sa_uid = meta::meta_str(&sa, "uid").unwrap_or("").to_string();
        let (mut pod, mut secret, mut node) = (None, None, None);
        if let Some(b) = spec.get("boundObjectRef").filter(|b| !b.is_null()) {
            let kind = b.get("kind").and_then(Value::as_str).unwrap_or("");
            let bname = b.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            let buid = b.get("uid").and_then(Value::as_str).unwrap_or("");
            let plural = match kind {
                "Pod" => "pods",
                "Secret" => "secrets",
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "cannot bind token to object of type {other:?}: supported kinds are Pod and Secret"
                    )))
                }
            };
            let r = res(plural)?;
            let obj =
                ctx.get(r, Some(namespace), &bname).await?.ok_or_else(|| ApiError::not_found(r, &bname))?;
            let uid = meta::meta_str(&obj, "uid").unwrap_or("").to_string();
            if !buid.is_empty() && buid != uid {
                return Err(ApiError::conflict_msg(
                    r,
                    &bname,
                    format!("the UID in the bound object reference ({buid}) does not match the UID in record. The object might have been deleted and then recreated"),
                ));
            }
            let reference = Some(ObjectRef { name: bname.clone(), uid });
            if kind == "Pod" {
                let pod_sa =
                    obj["spec"].get("serviceAccountName").and_then(Value::as_str).unwrap_or("default");
                if pod_sa != name {
                    return Err(ApiError::BadRequest(format!(
                        "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
                    )));
                }
                if let Some(n) = obj["spec"].get("nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())
                {
                    let nres = res("nodes")?;
                    let nuid = ctx
                        .get(nres, None, n)
                        .await?
                        .and_then(|o| meta::meta_str(&o, "uid").map(str::to_string))
                        .unwrap_or_default();
                    node = Some(ObjectRef { name: n.to_string(), uid: nuid });
                }
                pod = reference;
            } else {
                secret = reference;
            }
        }
        // A node asks only for tokens bound to pods running on it (NodeRestriction).
        if let Some(me) = crate::rbac::node::node_name(user) {
            let forbid = |msg: &str| Err(ApiError::forbidden(sa_res, name, msg));
            if pod.is_none() {
                return forbid("node requested token not bound to a pod");
            }
            if node.as_ref().map(|n| n.name.as_str()) != Some(me) {
                return forbid("node requested token bound to a pod scheduled on a different node");
            }
        }
        let (token, exp) = signer
            .issue(namespace, name, &sa_uid, &audiences, seconds, pod, secret, node)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let exp_ts = jiff::Timestamp::from_second(exp).map(|t| t.to_string()).unwrap_or_default();
        let mut out_spec = spec.clone();
        out_spec["expirationSeconds"] = json!(seconds);
        out_spec["audiences"] =
            json!(if audiences.is_empty() { vec![signer.issuer().to_string()] } else { audiences });
        Ok(json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace,
                         "creationTimestamp": jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).map(|t| t.to_string()).unwrap_or_default()},
            "spec": out_spec,
            "status": {"token": token, "expirationTimestamp": exp_ts},
        }))
    }

    /// TokenReview: who a token stands for.
    pub async fn token_review(&self, user: &User, res: &ResourceInfo, body: Value) -> ApiResult<Value> {
        self.authorize(user, "create", res, None, None, None)?;
        let spec = body.get("spec").cloned().unwrap_or(json!({}));
        let token = spec.get("token").and_then(Value::as_str).unwrap_or("");
        if token.is_empty() {
            return Err(ApiError::invalid(res.kind, res.group, "", vec![Cause::required("spec.token")]));
        }
        let audiences: Vec<String> = spec
            .get("audiences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        let result = match self.tokens() {
            None => Err("no token signer".to_string()),
            Some(s) => match s.verify(token, &audiences) {
                Ok(v) => service_account_user(self.context(), v, token).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        let mut out = body.clone();
        out["apiVersion"] = json!("authentication.k8s.io/v1");
        out["kind"] = json!("TokenReview");
        if out.get("metadata").is_none() {
            out["metadata"] = json!({});
        }
        out["status"] = match result {
            Ok(u) => {
                let aud = if audiences.is_empty() {
                    vec![self.tokens().map(|s| s.issuer().to_string()).unwrap_or_default()]
                } else {
                    audiences
                };
                json!({"authenticated": true, "user": u.to_user_info(), "audiences": aud})
            }
            Err(_) => json!({"authenticated": false, "user": {}, "error": "invalid bearer token"}),
        };
        Ok(out)
    }

    /// SelfSubjectReview (`kubectl auth whoami`): the caller's own attributes.
    pub fn self_subject_review(&self, user: &User, body: &Value) -> Value {
        let mut out = json!({
            "kind": "SelfSubjectReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": body.get("metadata").cloned().unwrap_or(json!({})),
            "status": {"userInfo": user.to_user_info()},
        });
        if out["metadata"].get("creationTimestamp").is_none() {
            out["metadata"]["creationTimestamp"] = Value::Null;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_upstreams_csv() {
        let users =
            parse_token_file("# comment\n\nt1,alice,u1\nt2,bob,u2,\"dev,ops\"\n t3 , carol , u3 , \"a\"\n")
                .unwrap();
        assert_eq!(users["t1"].name, "alice");
        assert_eq!(users["t1"].uid, "u1");
        assert_eq!(users["t2"].groups, vec!["dev", "ops", "system:authenticated"]);
        assert_eq!(users["t3"].name, "carol");
        assert!(parse_token_file("only,two").is_err());
        assert!(parse_token_file(",user,uid").is_err());
    }
}
