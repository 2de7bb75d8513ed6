//! Registry credentials from `imagePullSecrets` (`kubernetes.io/dockerconfigjson`).

use std::collections::HashMap;
use std::fmt;

use base64::Engine;
use serde_json::Value;

use super::reference::canonical_host;

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password (or token used as a password).
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A `.dockerconfigjson` (or legacy `.dockercfg`) that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid docker config: {0}")]
pub struct DockerConfigError(String);

/// Parses the data of a `kubernetes.io/dockerconfigjson` Secret
/// (`{"auths":{"host":{"username":..,"password":..}}}` or `{"auths":{"host":{"auth":
/// base64("user:pass")}}}`; the legacy `.dockercfg` form without `auths` too) into registry
/// host → credentials. Keys may be `host[:port]`, `https://host/...` or Docker Hub's
/// `https://index.docker.io/v1/` (which becomes `docker.io`). Entries with no usable
/// credentials (e.g. only an identity token) are skipped.
pub fn parse_docker_config(json: &[u8]) -> Result<HashMap<String, Credentials>, DockerConfigError> {
    let value: Value = serde_json::from_slice(json).map_err(|e| DockerConfigError(e.to_string()))?;
    let Value::Object(top) = value else {
        return Err(DockerConfigError("not a JSON object".into()));
    };
    let auths = match top.get("auths") {
        Some(Value::Object(auths)) => auths.clone(),
        Some(_) => return Err(DockerConfigError("\"auths\" is not an object".into())),
        None => top,
    };
    let mut out = HashMap::new();
    for (key, entry) in auths {
        let Value::Object(entry) = entry else {
            return Err(DockerConfigError(format!("entry {key:?} is not an object")));
        };
        let text = |name: &str| entry.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
        let auth = text("auth");
        let creds = if !auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| DockerConfigError(format!("entry {key:?}: auth is not base64: {e}")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| DockerConfigError(format!("entry {key:?}: auth is not UTF-8")))?;
            let Some((username, password)) = decoded.split_once(':') else {
                return Err(DockerConfigError(format!("entry {key:?}: auth is not \"user:password\"")));
            };
            Credentials { username: username.into(), password: password.into() }
        } else {
            let (username, password) = (text("username"), text("password"));
            if username.is_empty() && password.is_empty() {
                continue;
            }
            Credentials { username, password }
        };
        let host = canonical_host(&key);
        if !host.is_empty() {
            out.insert(host, creds);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_username_password_and_auth_forms() {
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:s3:cr=t");
        let json = format!(
            r#"{{"auths":{{
                "127.0.0.1:5000":{{"username":"alice","password":"pw"}},
                "https://index.docker.io/v1/":{{"auth":"{auth}"}},
                "https://quay.io/some/path":{{"username":"q","password":"p","auth":""}},
                "tokenonly.example":{{"identitytoken":"x"}}
            }}}}"#
        );
        let m = parse_docker_config(json.as_bytes()).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m["127.0.0.1:5000"], Credentials { username: "alice".into(), password: "pw".into() });
        assert_eq!(m["docker.io"], Credentials { username: "bob".into(), password: "s3:cr=t".into() });
        assert_eq!(m["quay.io"].username, "q");
        assert!(!format!("{:?}", m["quay.io"]).contains("\"p\""));
    }

    #[test]
    fn legacy_dockercfg_and_errors() {
        let m = parse_docker_config(br#"{"index.docker.io/v1/":{"username":"u","password":"p"}}"#).unwrap();
        assert_eq!(m["docker.io"].password, "p");
        assert!(parse_docker_config(b"not json").is_err());
        assert!(parse_docker_config(b"[]").is_err());
        assert!(parse_docker_config(br#"{"auths":{"h":{"auth":"!!!"}}}"#).is_err());
        let no_colon = base64::engine::general_purpose::STANDARD.encode("nocolon");
        let json = format!(r#"{{"auths":{{"h":{{"auth":"{no_colon}"}}}}}}"#);
        assert!(parse_docker_config(json.as_bytes()).is_err());
        assert!(parse_docker_config(br#"{"auths":{}}"#).unwrap().is_empty());
    }
}
