//! ServiceAccount tokens: JWTs signed with the cluster's ES256 key, as upstream issues them.
//!
//! Two kinds, both verified here:
//! * **bound tokens** (TokenRequest, the `kube-api-access-*` volume): issuer
//!   `https://kubernetes.default.svc.<clusterDomain>`, audiences (default: the issuer),
//!   expiry, and a `kubernetes.io` claim naming the namespace, the ServiceAccount (name and
//!   uid) and the object the token is bound to (a Pod or a Secret, name and uid). Such a
//!   token stops working when that object is gone or replaced.
//! * **legacy tokens** in `kubernetes.io/service-account-token` Secrets: issuer
//!   `kubernetes/serviceaccount`, no expiry, valid while the Secret still holds that token
//!   and the ServiceAccount has the same uid.
//!
//! The key is `<data-dir>/pki/sa.key` (PKCS#8 PEM, P-256), created on first start; its
//! public half is served as a JWKS at `/openid/v1/jwks` with the discovery document at
//! `/.well-known/openid-configuration`, so other systems can verify capstan's tokens. Only
//! ES256 is accepted: `alg: none`, HMAC and every other algorithm are refused before any
//! signature check.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;

/// The issuer of legacy Secret tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// Errors of the token signer.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The key file could not be read, written or parsed.
    #[error("failed to {what} {path}: {detail}")]
    Key {
        /// What was being done.
        what: &'static str,
        /// The key file.
        path: String,
        /// The cause.
        detail: String,
    },
    /// Signing failed.
    #[error("failed to sign a token: {0}")]
    Sign(String),
}

/// The `kubernetes.io` claim of a bound token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KubernetesClaim {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount.
    pub serviceaccount: ObjectRef,
    /// The Pod the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    /// The Secret the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    /// The Node the pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
}

/// A name and uid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObjectRef {
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: String,
}

/// The claims capstan reads from a token (bound or legacy).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: `system:serviceaccount:<ns>:<name>`.
    pub sub: String,
    /// Audiences (a string or a list on the wire).
    #[serde(default, deserialize_with = "audiences", skip_serializing_if = "Vec::is_empty")]
    pub aud: Vec<String>,
    /// Expiry (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The bound token's claim.
    #[serde(default, rename = "kubernetes.io", skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesClaim>,
    /// Legacy: namespace.
    #[serde(
        default,
        rename = "kubernetes.io/serviceaccount/namespace",
        skip_serializing_if = "Option::is_none"
    )]
    pub legacy_namespace: Option<String>,
    /// Legacy: the Secret's name.
    #[serde(
        default,
        rename = "kubernetes.io/serviceaccount/secret.name",
        skip_serializing_if = "Option::is_none"
    )]
    pub legacy_secret: Option<String>,
    /// Legacy: the ServiceAccount's name.
    #[serde(
        default,
        rename = "kubernetes.io/serviceaccount/service-account.name",
        skip_serializing_if = "Option::is_none"
    )]
    pub legacy_sa_name: Option<String>,
    /// Legacy: the ServiceAccount's uid.
    #[serde(
        default,
        rename = "kubernetes.io/serviceaccount/service-account.uid",
        skip_serializing_if = "Option::is_none"
    )]
    pub legacy_sa_uid: Option<String>,
}

fn audiences<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Aud>::deserialize(d)? {
        None => Vec::new(),
        Some(Aud::One(s)) => vec![s],
        Some(Aud::Many(v)) => v,
    })
}

/// Why a token was refused (never shown to the client, who gets a plain 401; logged at
/// debug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// What a verified token says; the caller still checks that the objects it names exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Namespace of the ServiceAccount.
    pub namespace: String,
    /// ServiceAccount name.
    pub name: String,
    /// ServiceAccount uid (empty in a legacy token that has none).
    pub uid: String,
    /// The Pod a bound token is bound to.
    pub pod: Option<ObjectRef>,
    /// The Secret the token is bound to (bound tokens) or stored in (legacy tokens).
    pub secret: Option<ObjectRef>,
    /// The node of the pod.
    pub node: Option<ObjectRef>,
    /// Whether this is a legacy Secret token.
    pub legacy: bool,
    /// The token id, for audit.
    pub jti: Option<String>,
}

/// Signs and verifies ServiceAccount tokens.
pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    issuer: String,
    jwk: Value,
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl TokenSigner {
    /// Loads `<pki>/sa.key`, creating it when missing; tokens name `issuer`.
    pub fn load_or_create(pki_dir: &Path, issuer: &str) -> Result<TokenSigner, TokenError> {
        let path = pki_dir.join("sa.key");
        let err = |what: &'static str, detail: String| TokenError::Key {
            what,
            path: path.display().to_string(),
            detail,
        };
        if !path.exists() {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| err("generate", e.to_string()))?;
            std::fs::create_dir_all(pki_dir).map_err(|e| err("create the directory of", e.to_string()))?;
            let tmp = path.with_extension("tmp");
            write_private(&tmp, key.serialize_pem().as_bytes()).map_err(|e| err("write", e.to_string()))?;
            std::fs::rename(&tmp, &path).map_err(|e| err("write", e.to_string()))?;
        }
        let pem = std::fs::read_to_string(&path).map_err(|e| err("read", e.to_string()))?;
        TokenSigner::from_pem(&pem, issuer).map_err(|detail| err("parse", detail))
    }

    /// A signer from a PKCS#8 PEM P-256 key.
    pub fn from_pem(pem: &str, issuer: &str) -> Result<TokenSigner, String> {
        let key = rcgen::KeyPair::from_pem(pem).map_err(|e| e.to_string())?;
        if !key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            return Err("the key is not an ECDSA P-256 key".into());
        }
        let raw = key.public_key_raw();
        if raw.len() != 65 || raw[0] != 4 {
            return Err("unexpected public key encoding".into());
        }
        let (x, y) = (b64(&raw[1..33]), b64(&raw[33..65]));
        // The key id is the SHA-256 of the public key's SPKI DER, as upstream's.
        let spki: String = key.public_key_pem().lines().filter(|l| !l.starts_with("-----")).collect();
        let spki = base64::engine::general_purpose::STANDARD.decode(spki).map_err(|e| e.to_string())?;
        let kid = b64(ring::digest::digest(&ring::digest::SHA256, &spki).as_ref());
        let encoding = EncodingKey::from_ec_der(&key.serialize_der());
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
        let jwk =
            json!({"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": x, "y": y});
        Ok(TokenSigner { encoding, decoding, kid, issuer: issuer.to_string(), jwk })
    }

    /// The issuer bound tokens name (and the default audience).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The JWKS document.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }

    /// The OpenID discovery document, with the JWKS at `jwks_uri`.
    pub fn discovery(&self, jwks_uri: &str) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| TokenError::Sign(e.to_string()))
    }

    /// A bound token for `namespace/name` (uid `uid`) valid for `seconds`, for `audiences`
    /// (empty: the issuer), bound to `pod` or `secret`. Returns the token and its expiry.
    #[allow(clippy::too_many_arguments)]
    pub fn issue(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: &[String],
        seconds: i64,
        pod: Option<ObjectRef>,
        secret: Option<ObjectRef>,
        node: Option<ObjectRef>,
    ) -> Result<(String, i64), TokenError> {
        let iat = now();
        let exp = iat + seconds;
        let aud = if audiences.is_empty() { vec![self.issuer.clone()] } else { audiences.to_vec() };
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: format!("system:serviceaccount:{namespace}:{name}"),
            aud,
            exp: Some(exp),
            nbf: Some(iat),
            iat: Some(iat),
            jti: Some(uuid::Uuid::new_v4().to_string()),
            kubernetes: Some(KubernetesClaim {
                namespace: namespace.to_string(),
                serviceaccount: ObjectRef { name: name.to_string(), uid: uid.to_string() },
                pod,
                secret,
                node,
            }),
            ..Default::default()
        };
        Ok((self.sign(&claims)?, exp))
    }

    /// A legacy token for the Secret `secret` of ServiceAccount `namespace/name`.
    pub fn issue_legacy(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        secret: &str,
    ) -> Result<String, TokenError> {
        let claims = Claims {
            iss: LEGACY_ISSUER.into(),
            sub: format!("system:serviceaccount:{namespace}:{name}"),
            legacy_namespace: Some(namespace.into()),
            legacy_secret: Some(secret.into()),
            legacy_sa_name: Some(name.into()),
            legacy_sa_uid: Some(uid.into()),
            ..Default::default()
        };
        self.sign(&claims)
    }

    /// Verifies a token's signature and claims for `audiences` (the API's audiences). The
    /// objects it names are not looked up here.
    pub fn verify(&self, token: &str, audiences: &[String]) -> Result<Verified, Invalid> {
        if token.len() > 16 * 1024 || token.split('.').count() != 3 {
            return Err(Invalid("not a JWT".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| Invalid(format!("bad header: {e}")))?;
        if header.alg != Algorithm::ES256 {
            return Err(Invalid(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let mut v = Validation::new(Algorithm::ES256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map_err(|e| Invalid(format!("token rejected: {e}")))?;
        let c = data.claims;
        let t = now();
        const LEEWAY: i64 = 60;
        if c.iss == LEGACY_ISSUER {
            let (Some(ns), Some(name), Some(secret)) =
                (c.legacy_namespace, c.legacy_sa_name, c.legacy_secret)
            else {
                return Err(Invalid("legacy token without its claims".into()));
            };
            if c.sub != format!("system:serviceaccount:{ns}:{name}") {
                return Err(Invalid("subject does not match".into()));
            }
            return Ok(Verified {
                namespace: ns,
                name,
                uid: c.legacy_sa_uid.unwrap_or_default(),
                pod: None,
                secret: Some(ObjectRef { name: secret, uid: String::new() }),
                node: None,
                legacy: true,
                jti: None,
            });
        }
        if c.iss != self.issuer {
            return Err(Invalid(format!("issuer {:?} is not trusted", c.iss)));
        }
        let Some(exp) = c.exp else { return Err(Invalid("bound token without expiry".into())) };
        if t > exp + LEEWAY {
            return Err(Invalid("token has expired".into()));
        }
        if c.nbf.is_some_and(|nbf| t + LEEWAY < nbf) {
            return Err(Invalid("token is not valid yet".into()));
        }
        let wanted = if audiences.is_empty() { vec![self.issuer.clone()] } else { audiences.to_vec() };
        if !c.aud.iter().any(|a| wanted.contains(a)) {
            return Err(Invalid("token audiences are not accepted".into()));
        }
        let Some(k) = c.kubernetes else {
            return Err(Invalid("token without its kubernetes.io claim".into()));
        };
        if c.sub != format!("system:serviceaccount:{}:{}", k.namespace, k.serviceaccount.name) {
            return Err(Invalid("subject does not match".into()));
        }
        Ok(Verified {
            namespace: k.namespace,
            name: k.serviceaccount.name,
            uid: k.serviceaccount.uid,
            pod: k.pod,
            secret: k.secret,
            node: k.node,
            legacy: false,
            jti: c.jti,
        })
    }
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

    fn signer() -> (TokenSigner, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (TokenSigner::load_or_create(dir.path(), ISSUER).unwrap(), dir)
    }

    fn pod() -> Option<ObjectRef> {
        Some(ObjectRef { name: "p".into(), uid: "pod-uid".into() })
    }

    #[test]
    fn bound_tokens_round_trip_and_the_key_persists() {
        let (s, dir) = signer();
        let (tok, exp) = s.issue("ns", "sa", "sa-uid", &[], 3600, pod(), None, None).unwrap();
        assert!(exp > now());
        let v = s.verify(&tok, &[]).unwrap();
        assert_eq!((v.namespace.as_str(), v.name.as_str(), v.uid.as_str()), ("ns", "sa", "sa-uid"));
        assert_eq!(v.pod, pod());
        assert!(!v.legacy);
        // Reloaded from the same file: same key, same kid.
        let again = TokenSigner::load_or_create(dir.path(), ISSUER).unwrap();
        assert_eq!(again.jwks(), s.jwks());
        assert!(again.verify(&tok, &[]).is_ok());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("sa.key")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn audiences_and_expiry_are_checked() {
        let (s, _dir) = signer();
        let (tok, _) = s.issue("ns", "sa", "u", &["vault".into()], 3600, pod(), None, None).unwrap();
        assert!(s.verify(&tok, &[]).is_err(), "audience vault is not the API's");
        assert!(s.verify(&tok, &["vault".into()]).is_ok());
        let (old, _) = s.issue("ns", "sa", "u", &[], -3600, pod(), None, None).unwrap();
        assert_eq!(s.verify(&old, &[]).unwrap_err().0, "token has expired");
    }

    #[test]
    fn forged_tokens_are_refused() {
        let (s, _dir) = signer();
        let (other, _d2) = signer();
        let (tok, _) = s.issue("ns", "sa", "u", &[], 3600, pod(), None, None).unwrap();
        // Signed by another key.
        let (foreign, _) = other.issue("ns", "sa", "u", &[], 3600, pod(), None, None).unwrap();
        assert!(s.verify(&foreign, &[]).is_err());
        let parts: Vec<&str> = tok.split('.').collect();
        // Claims changed after signing.
        let mut claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap(),
        )
        .unwrap();
        claims["sub"] = json!("system:serviceaccount:kube-system:admin");
        claims["kubernetes.io"]["namespace"] = json!("kube-system");
        claims["kubernetes.io"]["serviceaccount"]["name"] = json!("admin");
        let body = b64(claims.to_string().as_bytes());
        assert!(s.verify(&format!("{}.{}.{}", parts[0], body, parts[2]), &[]).is_err());
        // alg none, with and without a signature.
        let none = b64(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(s.verify(&format!("{none}.{}.", parts[1]), &[]).is_err());
        assert!(s.verify(&format!("{none}.{}.{}", parts[1], parts[2]), &[]).is_err());
        // HS256 keyed with the public key (algorithm confusion).
        let jwk = s.jwks();
        let secret = jwk["keys"][0]["x"].as_str().unwrap().as_bytes().to_vec();
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::from_value::<Claims>(claims.clone()).unwrap(),
            &EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert!(s.verify(&hs, &[]).unwrap_err().0.contains("not accepted"));
        // Truncated, garbage, oversized.
        assert!(s.verify(&tok[..tok.len() - 5], &[]).is_err());
        assert!(s.verify("a.b.c", &[]).is_err());
        assert!(s.verify(&"x".repeat(20_000), &[]).is_err());
        assert!(s.verify("", &[]).is_err());
    }

    #[test]
    fn legacy_tokens_name_their_secret() {
        let (s, _dir) = signer();
        let tok = s.issue_legacy("ns", "sa", "uid-1", "sa-token-abc").unwrap();
        let v = s.verify(&tok, &[]).unwrap();
        assert!(v.legacy);
        assert_eq!(v.secret.unwrap().name, "sa-token-abc");
        assert_eq!(v.uid, "uid-1");
    }
}
