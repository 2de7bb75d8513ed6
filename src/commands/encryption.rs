//! Encryption at rest: upstream's `EncryptionConfiguration` file (created with a fresh
//! AES-GCM key for Secrets when missing) and the store wrapper it configures.

use anyhow::{bail, Context};
use base64::Engine;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EncryptionConfiguration {
    kind: String,
    #[serde(default)]
    resources: Vec<ResourceConfig>,
}

#[derive(Deserialize)]
struct ResourceConfig {
    resources: Vec<String>,
    providers: Vec<Provider>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Provider {
    aesgcm: Option<KeysProvider>,
    identity: Option<serde_yaml_ng::Value>,
    aescbc: Option<serde_yaml_ng::Value>,
    secretbox: Option<serde_yaml_ng::Value>,
    kms: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
struct KeysProvider {
    keys: Vec<NamedKey>,
}

#[derive(Deserialize)]
struct NamedKey {
    name: String,
    secret: String,
}

/// The store key prefix of a resource named as upstream does (`secrets`,
/// `deployments.apps`).
fn prefix(resource: &str) -> anyhow::Result<Vec<u8>> {
    let (plural, group) = resource.split_once('.').unwrap_or((resource, ""));
    let res = capstan_api::registry::RESOURCES
        .iter()
        .find(|r| r.plural == plural && r.group == group && r.stored)
        .with_context(|| format!("encryption configuration names an unknown resource {resource:?}"))?;
    Ok(capstan_gateway::keys::prefix(res, None))
}

pub(crate) fn create_default(path: &Path) -> anyhow::Result<()> {
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| anyhow::anyhow!("no randomness for an encryption key"))?;
    let text = format!(
        "# Encryption at rest (upstream's EncryptionConfiguration). The first key encrypts;\n\
         # all keys decrypt. To rotate: add a new key first, restart, then remove the old one.\n\
         apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
         - resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - name: key1\n        secret: {}\n  - identity: {{}}\n",
        base64::engine::general_purpose::STANDARD.encode(secret)
    );
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}

/// The store to use, and the encrypting wrapper inside it when there is one.
pub type Wrapped = (Arc<dyn capstan_storage::Store>, Option<Arc<capstan_storage::Encrypted>>);

/// Reads the encryption configuration (`configured`, else `<data_dir>/encryption.yaml`,
/// created on first start) and wraps `store`. Returns the wrapped store and the wrapper
/// (to re-encrypt stale values once running), or `store` unchanged when the configuration
/// encrypts nothing.
pub fn wrap(
    store: Arc<dyn capstan_storage::Store>,
    data_dir: &Path,
    configured: Option<&Path>,
) -> anyhow::Result<Wrapped> {
    let path: PathBuf = match configured {
        Some(p) => p.to_path_buf(),
        None => {
            let p = data_dir.join("encryption.yaml");
            if !p.exists() {
                create_default(&p)?;
            }
            p
        }
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
    let cfg: EncryptionConfiguration = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("invalid encryption configuration {}", path.display()))?;
    if cfg.kind != "EncryptionConfiguration" {
        bail!("invalid encryption configuration {}: kind is {:?}", path.display(), cfg.kind);
    }
    let mut prefixes = Vec::new();
    let mut keys = Vec::new();
    let mut identity = false;
    let mut encrypt = true;
    // capstan takes one key set for every listed resource (the first resource group's).
    if let Some(rc) = cfg.resources.first() {
        for r in &rc.resources {
            prefixes.push(prefix(r)?);
        }
        for (i, p) in rc.providers.iter().enumerate() {
            if p.aescbc.is_some() || p.secretbox.is_some() || p.kms.is_some() {
                bail!("{}: only the aesgcm and identity providers are supported", path.display());
            }
            if let Some(a) = &p.aesgcm {
                for k in &a.keys {
                    let secret = base64::engine::general_purpose::STANDARD
                        .decode(k.secret.trim())
                        .with_context(|| format!("{}: key {:?} is not base64", path.display(), k.name))?;
                    keys.push(
                        capstan_storage::EncryptionKey::new(&k.name, &secret).map_err(anyhow::Error::msg)?,
                    );
                }
            }
            if p.identity.is_some() {
                identity = true;
                if i == 0 {
                    encrypt = false;
                }
            }
        }
    }
    if cfg.resources.len() > 1 {
        bail!("{}: capstan takes one resources entry (list every resource in it)", path.display());
    }
    if keys.is_empty() || prefixes.is_empty() {
        return Ok((store, None));
    }
    let ring = capstan_storage::Keyring::new(keys, identity).map_err(anyhow::Error::msg)?.encrypting(encrypt);
    let enc = Arc::new(capstan_storage::Encrypted::new(store, ring, prefixes));
    Ok((enc.clone(), Some(enc)))
}

/// Re-encrypts values written with an older key (or before encryption), in the background.
pub fn rewrite_stale(enc: Option<Arc<capstan_storage::Encrypted>>) {
    if let Some(enc) = enc {
        tokio::spawn(async move {
            match enc.rewrite_stale().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rewritten = n, "re-encrypted values with the current key"),
                Err(e) => tracing::error!("failed to re-encrypt stored values: {e}"),
            }
        });
    }
}
