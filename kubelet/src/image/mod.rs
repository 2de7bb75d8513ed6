//! Images: pull, content store, unpacked layers.
//!
//! [`ImageStore::ensure`] makes an image available on the node: it resolves the reference
//! (docker.io short names, registry mirrors, plain HTTP for loopback and `insecure`
//! registries), authenticates (basic or bearer token, from `imagePullSecrets` parsed with
//! [`parse_docker_config`]), downloads the manifest, config and layer blobs into a
//! content-addressed store (every blob verified against its sha256 digest) and unpacks every
//! layer once into its own directory, with whiteouts in the overlayfs format, so that the
//! runtime can stack the layers as overlay `lowerdir`s.

mod auth;
mod reference;
mod store;
pub mod unpack;

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use auth::{parse_docker_config, Credentials, DockerConfigError};
pub use reference::normalize_reference;
pub use store::ImageStore;

/// When the node agent pulls an image (`container.imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve the reference against the registry on every container start.
    Always,
    /// Pull only when no image is stored locally under that reference.
    IfNotPresent,
    /// Never pull; fail when the image is not stored locally.
    Never,
}

impl PullPolicy {
    /// The policy of a container: its `imagePullPolicy`, or when absent (or not one of the three
    /// known values) the upstream default: `Always` for a `:latest` tag or a reference with
    /// neither tag nor digest, `IfNotPresent` otherwise.
    pub fn from_k8s(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            Some("Never") => PullPolicy::Never,
            _ => {
                let (tag, digest) = reference::tag_and_digest(image);
                match (tag, digest) {
                    (Some("latest"), _) | (None, None) => PullPolicy::Always,
                    _ => PullPolicy::IfNotPresent,
                }
            }
        }
    }
}

/// A pull-through rewrite: pulls of images of `registry` go to `endpoint` instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mirror {
    /// The registry host whose images are mirrored, e.g. `docker.io`.
    pub registry: String,
    /// The mirror's `host[:port]`, e.g. `127.0.0.1:5000`.
    pub endpoint: String,
}

/// Registry settings of the node (from the node configuration file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryConfig {
    /// Registry mirrors: pulls of `registry` are rewritten to `endpoint`.
    pub mirrors: Vec<Mirror>,
    /// Registries (`host[:port]`, or `host` for every port) reached over plain HTTP. Loopback
    /// registries (127.0.0.0/8, ::1, `localhost`) always are.
    pub insecure: Vec<String>,
}

/// What the image config tells the runtime about running a container of the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRuntimeConfig {
    /// `Entrypoint` (empty when unset).
    pub entrypoint: Vec<String>,
    /// `Cmd` (empty when unset).
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=VALUE` strings.
    pub env: Vec<String>,
    /// `WorkingDir`, when set and not empty.
    pub working_dir: Option<String>,
    /// `User` (`user`, `uid`, `user:group` or `uid:gid`), when set and not empty.
    pub user: Option<String>,
}

/// An image available locally: what the runtime needs to run a container of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The normalized reference as requested, e.g. `127.0.0.1:5000/busybox:1` or
    /// `docker.io/library/busybox:latest`.
    pub image_ref: String,
    /// `sha256:<config digest>` (the image ID).
    pub image_id: String,
    /// `<registry>/<repository>@sha256:<manifest digest>`, the digest the reference resolved to
    /// (of the index when the reference names a multi-platform image); it goes to
    /// `containerStatuses[].imageID`.
    pub repo_digest: String,
    /// Unpacked layer directories, bottom layer first.
    pub layers: Vec<PathBuf>,
    /// Entrypoint, command, environment, working directory and user of the image config.
    pub config: ImageRuntimeConfig,
}

/// An image in the store, as image garbage collection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// The index key (the normalized reference it was pulled as).
    pub reference: String,
    /// `sha256:<config digest>` (the image ID).
    pub image_id: String,
    /// When a container last asked for it (or when the store first saw it).
    pub last_used: std::time::SystemTime,
}

/// Why an image could not be made available. `Display` is a complete message meant for the
/// user (it goes to the container's `waiting.message`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    /// The registry does not know the repository, tag or digest.
    #[error("{0}")]
    NotFound(String),
    /// The registry refused the credentials (or their absence).
    #[error("{0}")]
    Unauthorized(String),
    /// The registry could not be reached or failed.
    #[error("{0}")]
    Network(String),
    /// The reference or the image is malformed or unsupported, or a digest did not match.
    #[error("{0}")]
    Invalid(String),
    /// The pull policy is `Never` and the image is not stored locally.
    #[error("{0}")]
    NeverPullNotPresent(String),
    /// The node's image store failed (disk full, permissions...).
    #[error("{0}")]
    Storage(String),
}

impl PullError {
    fn not_found(image: &str, detail: impl std::fmt::Display) -> Self {
        PullError::NotFound(format!(
            "failed to pull \"{image}\": not found: {detail} (check the image name and tag)"
        ))
    }

    fn unauthorized(image: &str, detail: impl std::fmt::Display) -> Self {
        PullError::Unauthorized(format!(
            "failed to pull \"{image}\": unauthorized: {detail} (check the imagePullSecrets)"
        ))
    }

    fn network(image: &str, detail: impl std::fmt::Display) -> Self {
        PullError::Network(format!("failed to pull \"{image}\": {detail}"))
    }

    fn invalid(image: &str, detail: impl std::fmt::Display) -> Self {
        PullError::Invalid(format!("failed to pull \"{image}\": {detail}"))
    }

    fn storage(image: &str, detail: impl std::fmt::Display) -> Self {
        PullError::Storage(format!("failed to pull \"{image}\": local image store: {detail}"))
    }

    fn never_pull(image: &str) -> Self {
        PullError::NeverPullNotPresent(format!(
            "container image \"{image}\" is not present with pull policy of Never"
        ))
    }
}

/// Credentials for the registries an image may come from, keyed by registry host.
pub type CredentialMap = HashMap<String, Credentials>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults_like_upstream() {
        use PullPolicy::*;
        assert_eq!(PullPolicy::from_k8s(None, "busybox"), Always);
        assert_eq!(PullPolicy::from_k8s(None, "busybox:latest"), Always);
        assert_eq!(PullPolicy::from_k8s(None, "busybox:1.36"), IfNotPresent);
        assert_eq!(PullPolicy::from_k8s(None, "127.0.0.1:5000/busybox"), Always);
        assert_eq!(PullPolicy::from_k8s(None, "127.0.0.1:5000/busybox:1"), IfNotPresent);
        let digest = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(PullPolicy::from_k8s(None, &digest), IfNotPresent);
        assert_eq!(PullPolicy::from_k8s(Some("Never"), "busybox"), Never);
        assert_eq!(PullPolicy::from_k8s(Some("IfNotPresent"), "busybox"), IfNotPresent);
        assert_eq!(PullPolicy::from_k8s(Some("Always"), "busybox:1"), Always);
        assert_eq!(PullPolicy::from_k8s(Some(""), "busybox:1"), IfNotPresent);
    }

    #[test]
    fn registry_config_deserializes_with_defaults() {
        let c: RegistryConfig =
            serde_json::from_str(r#"{"mirrors":[{"registry":"docker.io","endpoint":"127.0.0.1:5000"}]}"#)
                .unwrap();
        assert_eq!(c.mirrors[0].endpoint, "127.0.0.1:5000");
        assert!(c.insecure.is_empty());
    }
}
