//! The content store (`root/blobs/sha256/<hex>`), the unpacked layers (`root/layers/<hex>`)
//! and the index of pulled images (`root/images.json`).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use futures::{Stream, StreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::reference::{self, canonical_host, repository_name, PullTarget};
use super::unpack::{unpack_layer_blob, UnpackError};
use super::{Credentials, ImageInfo, ImageRuntimeConfig, PullError, PullPolicy, RegistryConfig, StoredImage};

/// Manifest media types the puller accepts (the registry serves OCI manifests only to clients
/// that list the OCI type).
const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const INDEX_TYPES: &[&str] =
    &["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
const CONFIG_TYPES: &[&str] =
    &["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];

/// Upstream's `nodeStatusMaxImages` default: the Node lists at most this many images.
pub const MAX_NODE_IMAGES: usize = 50;
/// Upstream's `MaxNamesPerImageInNodeStatus`.
pub const MAX_NAMES_PER_IMAGE: usize = 5;

/// One entry of a Node's `status.images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeImage {
    /// Repository digests (`repo@sha256:…`), then tags.
    pub names: Vec<String>,
    /// Bytes of its blobs in the content store.
    pub size_bytes: u64,
}

/// The node's image store: pulls images and keeps their blobs and unpacked layers under one
/// root directory. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    config: RegistryConfig,
    index: Mutex<Index>,
    /// Per-key async locks: `image:<ref>`, `blob:<digest>`, `layer:<digest>`.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    unpacked: AtomicU64,
    /// Index key → when a container last asked for the image (first seen: when the store was
    /// opened or the image pulled), for image garbage collection.
    last_used: Mutex<HashMap<String, std::time::SystemTime>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    /// Normalized reference → what it resolved to when last pulled.
    images: BTreeMap<String, ImageRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    /// `<registry>/<repository>`.
    repository: String,
    /// The digest the reference resolved to (index or manifest).
    digest: String,
    /// The platform image manifest's digest.
    manifest_digest: String,
    config_digest: String,
    /// Layer digests, bottom first.
    layers: Vec<String>,
    config: ImageRuntimeConfig,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<IndexEntry>>,
}

impl RawManifest {
    fn is_index(&self) -> bool {
        match &self.media_type {
            Some(t) if !t.is_empty() => INDEX_TYPES.contains(&t.as_str()),
            _ => self.manifests.is_some() && self.layers.is_none(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    digest: String,
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ContainerConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// Why storing a downloaded blob failed.
#[derive(Debug)]
enum BlobError {
    /// The content's digest is not the expected one.
    Mismatch { expected: String, actual: String },
    /// Reading from the registry failed.
    Network(io::Error),
    /// Writing the store failed.
    Storage(io::Error),
}

impl BlobError {
    fn into_pull(self, image: &str, host: &str) -> PullError {
        match self {
            BlobError::Mismatch { expected, actual } => PullError::invalid(
                image,
                format!("digest mismatch: expected {expected}, the registry sent content with {actual}"),
            ),
            BlobError::Network(e) => PullError::network(image, format!("reading from {host}: {e}")),
            BlobError::Storage(e) => PullError::storage(image, e),
        }
    }
}

/// The hex part of a `sha256:<64 hex>` digest; `None` for anything else (which must never be
/// used as a path component).
/// Removes a file or a directory tree; the bytes its files held (0 when it was not there).
fn remove_measured(path: &Path) -> u64 {
    fn size(path: &Path) -> u64 {
        let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
        if !meta.is_dir() {
            return meta.len();
        }
        fs::read_dir(path).into_iter().flatten().flatten().map(|e| size(&e.path())).sum::<u64>() + meta.len()
    }
    let bytes = size(path);
    let removed = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => return 0,
    };
    match removed {
        Ok(()) => bytes,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an unused image's files");
            0
        }
    }
}

fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The architecture name (OCI `platform.architecture`) of this node.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Writes `data` to `path` atomically (temp file in the same directory, then rename).
fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    let res = fs::write(&tmp, data).and_then(|()| fs::rename(&tmp, path));
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Error messages with their causes (reqwest's own message alone says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn lock_ignoring_poison<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ImageStore {
    /// Opens (creating if needed) the store under `root`, loading the index of images pulled
    /// before. Also installs the ring rustls crypto provider if none is installed yet.
    pub fn open(root: &Path, config: RegistryConfig) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        for dir in ["blobs/sha256", "layers", "tmp"] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Leftovers of an interrupted pull.
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).with_context(|| format!("reading {}", tmp.display()))? {
            let path = entry?.path();
            let res = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            if let Err(e) = res {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover of a pull");
            }
        }
        let index_path = root.join("images.json");
        let index = match fs::read(&index_path) {
            Ok(data) => match serde_json::from_slice::<Index>(&data) {
                Ok(index) => index,
                Err(e) => {
                    tracing::warn!(path = %index_path.display(), error = %e, "unreadable image index; starting empty");
                    let _ = fs::rename(&index_path, root.join("images.json.corrupt"));
                    Index::default()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", index_path.display())),
        };
        Ok(ImageStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                config,
                index: Mutex::new(index),
                locks: Mutex::new(HashMap::new()),
                unpacked: AtomicU64::new(0),
                last_used: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// How many layers this store unpacked since it was opened (for tests and metrics).
    pub fn unpacked_layers(&self) -> u64 {
        self.inner.unpacked.load(Ordering::Relaxed)
    }

    /// The image stored locally under `image` (or, for a reference with a digest, any image
    /// of the same repository with that digest), without contacting any registry.
    pub fn local(&self, image: &str) -> Option<ImageInfo> {
        self.local_ref(&reference::parse(image).ok()?)
    }

    /// Makes the image available locally according to `policy` and returns what the runtime
    /// needs. `creds` maps registry hosts to credentials (see
    /// [`parse_docker_config`](super::parse_docker_config)); with a mirror, the mirror's host is
    /// looked up first, then the original registry's.
    pub async fn ensure(
        &self,
        image: &str,
        policy: PullPolicy,
        creds: &HashMap<String, Credentials>,
    ) -> Result<ImageInfo, PullError> {
        let reference = reference::parse(image)?;
        let info = self.ensure_ref(image, &reference, policy, creds).await?;
        lock_ignoring_poison(&self.inner.last_used).insert(reference.whole(), std::time::SystemTime::now());
        Ok(info)
    }

    async fn ensure_ref(
        &self,
        image: &str,
        reference: &Reference,
        policy: PullPolicy,
        creds: &HashMap<String, Credentials>,
    ) -> Result<ImageInfo, PullError> {
        let reference = reference.clone();
        if policy != PullPolicy::Always {
            if let Some(info) = self.local_ref(&reference) {
                return Ok(info);
            }
            if policy == PullPolicy::Never {
                return Err(PullError::never_pull(image));
            }
        }
        let lock = self.lock(format!("image:{}", reference.whole()));
        let _guard = lock.lock().await;
        if policy == PullPolicy::IfNotPresent {
            // Someone else may have pulled it while this call waited.
            if let Some(info) = self.local_ref(&reference) {
                return Ok(info);
            }
        }
        self.pull(image, &reference, creds).await
    }

    /// The images stored, for image garbage collection.
    pub fn images(&self) -> Vec<StoredImage> {
        let index = lock_ignoring_poison(&self.inner.index);
        let mut used = lock_ignoring_poison(&self.inner.last_used);
        let now = std::time::SystemTime::now();
        index
            .images
            .iter()
            .map(|(key, rec)| StoredImage {
                reference: key.clone(),
                image_id: rec.config_digest.clone(),
                last_used: *used.entry(key.clone()).or_insert(now),
            })
            .collect()
    }

    /// The images as a Node's `status.images` lists them, as upstream's kubelet does: one
    /// entry per image ID, named by its repository digests and then its tags (at most
    /// [`MAX_NAMES_PER_IMAGE`]), sized by its blobs in the content store (manifest, config
    /// and compressed layers, as containerd reports an image's size); the
    /// [`MAX_NODE_IMAGES`] largest, largest first.
    pub fn node_images(&self) -> Vec<NodeImage> {
        let records: Vec<(String, ImageRecord)> = {
            let index = lock_ignoring_poison(&self.inner.index);
            index.images.iter().map(|(k, r)| (k.clone(), r.clone())).collect()
        };
        // Image ID → (digests, tags, blobs).
        type Names = (Vec<String>, Vec<String>, std::collections::BTreeSet<String>);
        let mut by_id: BTreeMap<String, Names> = BTreeMap::new();
        for (key, rec) in records {
            let e = by_id.entry(rec.config_digest.clone()).or_default();
            let digest = format!("{}@{}", rec.repository, rec.digest);
            if !e.0.contains(&digest) {
                e.0.push(digest);
            }
            if !key.contains('@') && !e.1.contains(&key) {
                e.1.push(key);
            }
            for d in [&rec.manifest_digest, &rec.config_digest].into_iter().chain(&rec.layers) {
                e.2.insert(d.trim_start_matches("sha256:").to_string());
            }
        }
        let mut out: Vec<NodeImage> = by_id
            .into_values()
            .map(|(digests, tags, blobs)| NodeImage {
                names: digests.into_iter().chain(tags).take(MAX_NAMES_PER_IMAGE).collect(),
                size_bytes: blobs
                    .iter()
                    .filter_map(|hex| std::fs::metadata(self.blob_path(hex)).ok())
                    .map(|m| m.len())
                    .sum(),
            })
            .collect();
        out.sort_by(|a, b| b.size_bytes.cmp(&a.size_bytes).then_with(|| a.names.cmp(&b.names)));
        out.truncate(MAX_NODE_IMAGES);
        out
    }

    /// Removes the image stored under `reference` (an index key, see [`ImageStore::images`])
    /// and every blob and unpacked layer no other stored image uses; returns the bytes freed.
    /// Blobs and layers a pull holds at the moment are kept.
    pub async fn remove(&self, reference: &str) -> io::Result<u64> {
        let lock = self.lock(format!("image:{reference}"));
        let _guard = lock.lock().await;
        let (gone, keep) = {
            let mut index = lock_ignoring_poison(&self.inner.index);
            let Some(gone) = index.images.remove(reference) else { return Ok(0) };
            let data = serde_json::to_vec_pretty(&*index).map_err(io::Error::other)?;
            write_atomically(&self.inner.root.join("images.json"), &data)?;
            let keep: std::collections::HashSet<String> = index
                .images
                .values()
                .flat_map(|r| {
                    [r.digest.clone(), r.manifest_digest.clone(), r.config_digest.clone()]
                        .into_iter()
                        .chain(r.layers.iter().cloned())
                })
                .collect();
            (gone, keep)
        };
        lock_ignoring_poison(&self.inner.last_used).remove(reference);
        let mut freed = 0;
        let blobs =
            [&gone.digest, &gone.manifest_digest, &gone.config_digest].into_iter().chain(gone.layers.iter());
        for digest in blobs {
            let Some(hex) = sha256_hex(digest).filter(|_| !keep.contains(digest)) else { continue };
            for (key, path) in [
                (format!("blob:{digest}"), self.blob_path(hex)),
                (format!("layer:{digest}"), self.layer_dir(hex)),
            ] {
                let lock = self.lock(key);
                let Ok(_held) = lock.try_lock() else { continue };
                freed += remove_measured(&path);
            }
        }
        Ok(freed)
    }

    fn lock(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        lock_ignoring_poison(&self.inner.locks).entry(key).or_default().clone()
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.inner.root.join("blobs/sha256").join(hex)
    }

    fn layer_dir(&self, hex: &str) -> PathBuf {
        self.inner.root.join("layers").join(hex)
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        self.inner.root.join("tmp").join(format!("{what}-{}", uuid::Uuid::new_v4()))
    }

    fn info_for(&self, image_ref: String, rec: &ImageRecord) -> ImageInfo {
        ImageInfo {
            image_ref,
            image_id: rec.config_digest.clone(),
            repo_digest: format!("{}@{}", rec.repository, rec.digest),
            layers: rec.layers.iter().map(|d| self.layer_dir(sha256_hex(d).unwrap_or("invalid"))).collect(),
            config: rec.config.clone(),
        }
    }

    fn local_ref(&self, reference: &Reference) -> Option<ImageInfo> {
        let key = reference.whole();
        let rec = {
            let index = lock_ignoring_poison(&self.inner.index);
            index.images.get(&key).cloned().or_else(|| {
                let digest = reference.digest()?;
                let repo = repository_name(reference);
                index
                    .images
                    .values()
                    .find(|r| r.repository == repo && (r.digest == digest || r.manifest_digest == digest))
                    .cloned()
            })?
        };
        let info = self.info_for(key, &rec);
        info.layers.iter().all(|l| l.is_dir()).then_some(info)
    }

    fn record(&self, key: String, rec: ImageRecord) -> io::Result<()> {
        let mut index = lock_ignoring_poison(&self.inner.index);
        index.images.insert(key, rec);
        let data = serde_json::to_vec_pretty(&*index).map_err(io::Error::other)?;
        write_atomically(&self.inner.root.join("images.json"), &data)
    }

    async fn pull(
        &self,
        image: &str,
        reference: &Reference,
        creds: &HashMap<String, Credentials>,
    ) -> Result<ImageInfo, PullError> {
        let target = reference::pull_target(reference, &self.inner.config);
        let found = creds
            .get(&canonical_host(&target.host))
            .or_else(|| creds.get(&canonical_host(reference.registry())));
        let auth = match found {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let puller = Puller {
            image,
            target: &target,
            auth,
            has_creds: found.is_some(),
            client: client_for(&target).map_err(|e| PullError::network(image, e))?,
        };
        tracing::debug!(image, host = %target.host, plain_http = target.plain_http, "pulling");

        let (body, digest) = puller.manifest(&target.reference).await?;
        self.store_bytes(&digest, &body).map_err(|e| PullError::storage(image, e))?;
        let top: RawManifest = parse_manifest(image, &body)?;
        let (manifest_digest, manifest) = if top.is_index() {
            let arch = host_architecture();
            let entry = top
                .manifests
                .iter()
                .flatten()
                .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
                .ok_or_else(|| {
                    let platforms: Vec<String> = top
                        .manifests
                        .iter()
                        .flatten()
                        .filter_map(|m| m.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture)))
                        .collect();
                    PullError::not_found(
                        image,
                        format!("no linux/{arch} image in the index (it has: {})", platforms.join(", ")),
                    )
                })?;
            if sha256_hex(&entry.digest).is_none() {
                return Err(PullError::invalid(image, format!("unsupported digest {:?}", entry.digest)));
            }
            let (body, child_digest) =
                puller.manifest(&target.reference.clone_with_digest(entry.digest.clone())).await?;
            self.store_bytes(&child_digest, &body).map_err(|e| PullError::storage(image, e))?;
            let manifest = parse_manifest(image, &body)?;
            if manifest.is_index() {
                return Err(PullError::invalid(
                    image,
                    "an image index inside an image index is not supported",
                ));
            }
            (child_digest, manifest)
        } else {
            (digest.clone(), top)
        };

        let config_desc =
            manifest.config.ok_or_else(|| PullError::invalid(image, "the manifest has no config"))?;
        if !config_desc.media_type.is_empty() && !CONFIG_TYPES.contains(&config_desc.media_type.as_str()) {
            return Err(PullError::invalid(
                image,
                format!("not a container image (config media type {})", config_desc.media_type),
            ));
        }
        let layers = manifest.layers.unwrap_or_default();
        if layers.is_empty() {
            return Err(PullError::invalid(image, "the image has no layers"));
        }
        let config_path = self.ensure_blob(&puller, &config_desc).await?;
        let config_bytes = fs::read(&config_path).map_err(|e| PullError::storage(image, e))?;
        let config = parse_config(image, &config_bytes)?;

        let layer_dirs =
            futures::future::try_join_all(layers.iter().map(|l| self.ensure_layer(&puller, l))).await?;
        tracing::debug!(image, layers = layer_dirs.len(), %manifest_digest, "pulled");

        let rec = ImageRecord {
            repository: repository_name(reference),
            digest,
            manifest_digest,
            config_digest: config_desc.digest,
            layers: layers.into_iter().map(|l| l.digest).collect(),
            config,
        };
        let key = reference.whole();
        self.record(key.clone(), rec.clone()).map_err(|e| PullError::storage(image, e))?;
        Ok(self.info_for(key, &rec))
    }

    /// Stores bytes already verified to have digest `digest`.
    fn store_bytes(&self, digest: &str, data: &[u8]) -> io::Result<()> {
        let Some(hex) = sha256_hex(digest) else {
            return Err(io::Error::other(format!("unsupported digest {digest}")));
        };
        let path = self.blob_path(hex);
        if path.exists() {
            return Ok(());
        }
        write_atomically(&path, data)
    }

    /// The blob `desc` in the store, downloaded (and verified) if missing.
    async fn ensure_blob(&self, puller: &Puller<'_>, desc: &Descriptor) -> Result<PathBuf, PullError> {
        let image = puller.image;
        let hex = sha256_hex(&desc.digest)
            .ok_or_else(|| PullError::invalid(image, format!("unsupported digest {:?}", desc.digest)))?;
        let path = self.blob_path(hex);
        if path.exists() {
            return Ok(path);
        }
        let lock = self.lock(format!("blob:{}", desc.digest));
        let _guard = lock.lock().await;
        if path.exists() {
            return Ok(path);
        }
        let stream = puller
            .client
            .pull_blob_stream(&puller.target.reference, desc.digest.as_str())
            .await
            .map_err(|e| puller.error(e))?;
        self.store_stream(&desc.digest, stream).await.map_err(|e| e.into_pull(image, &puller.target.host))
    }

    /// Writes a downloaded blob to the store, verifying its digest (a mismatch leaves nothing).
    async fn store_stream(
        &self,
        expected: &str,
        stream: impl Stream<Item = io::Result<bytes::Bytes>>,
    ) -> Result<PathBuf, BlobError> {
        let Some(hex) = sha256_hex(expected) else {
            return Err(BlobError::Storage(io::Error::other(format!("unsupported digest {expected}"))));
        };
        let tmp = self.tmp_path("blob");
        let res = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(BlobError::Storage)?;
            let mut hasher = Sha256::new();
            let mut stream = std::pin::pin!(stream);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    match e.get_ref().and_then(|inner| inner.downcast_ref::<DigestError>()) {
                        Some(DigestError::VerificationError { expected, actual }) => {
                            BlobError::Mismatch { expected: expected.clone(), actual: actual.clone() }
                        }
                        _ => BlobError::Network(e),
                    }
                })?;
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(BlobError::Storage)?;
            }
            file.flush().await.map_err(BlobError::Storage)?;
            drop(file);
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            if actual != expected {
                return Err(BlobError::Mismatch { expected: expected.to_string(), actual });
            }
            let path = self.blob_path(hex);
            tokio::fs::rename(&tmp, &path).await.map_err(BlobError::Storage)?;
            Ok(path)
        }
        .await;
        if res.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        res
    }

    /// The unpacked directory of layer `desc`, downloading and unpacking it once if missing.
    async fn ensure_layer(&self, puller: &Puller<'_>, desc: &Descriptor) -> Result<PathBuf, PullError> {
        let image = puller.image;
        let hex = sha256_hex(&desc.digest)
            .ok_or_else(|| PullError::invalid(image, format!("unsupported digest {:?}", desc.digest)))?;
        let dir = self.layer_dir(hex);
        if dir.is_dir() {
            return Ok(dir);
        }
        let lock = self.lock(format!("layer:{}", desc.digest));
        let _guard = lock.lock().await;
        if dir.is_dir() {
            return Ok(dir);
        }
        let blob = self.ensure_blob(puller, desc).await?;
        let tmp = self.tmp_path("layer");
        let media_type = desc.media_type.clone();
        let final_dir = dir.clone();
        let res = tokio::task::spawn_blocking(move || {
            let res = unpack_layer_blob(&blob, &media_type, &tmp).and_then(|()| {
                fs::rename(&tmp, &final_dir).map_err(|source| UnpackError::Io {
                    context: "renaming the unpacked layer".into(),
                    source,
                })
            });
            if res.is_err() {
                let _ = fs::remove_dir_all(&tmp);
            }
            res
        })
        .await
        .map_err(|e| PullError::storage(image, format!("unpacking task failed: {e}")))?;
        match res {
            Ok(()) => {
                self.inner.unpacked.fetch_add(1, Ordering::Relaxed);
                Ok(dir)
            }
            Err(e @ (UnpackError::Invalid(_) | UnpackError::Unsupported(_))) => {
                Err(PullError::invalid(image, format!("layer {}: {e}", desc.digest)))
            }
            Err(e) => Err(PullError::storage(image, format!("layer {}: {e}", desc.digest))),
        }
    }
}

/// One pull: the client (with the auth for its registry) and what to report errors against.
struct Puller<'a> {
    image: &'a str,
    target: &'a PullTarget,
    auth: RegistryAuth,
    has_creds: bool,
    client: Client,
}

impl Puller<'_> {
    /// Fetches a manifest and verifies its sha256 digest (against the reference's digest when
    /// it has one). Returns the bytes and their digest.
    async fn manifest(&self, reference: &Reference) -> Result<(bytes::Bytes, String), PullError> {
        let (body, _) =
            self.client.pull_manifest_raw(reference, &self.auth, ACCEPT).await.map_err(|e| self.error(e))?;
        let actual = sha256_digest(&body);
        if let Some(expected) = reference.digest() {
            if sha256_hex(expected).is_none() {
                return Err(PullError::invalid(self.image, format!("unsupported digest {expected}")));
            }
            if actual != expected {
                return Err(BlobError::Mismatch { expected: expected.into(), actual }
                    .into_pull(self.image, &self.target.host));
            }
        }
        Ok((body, actual))
    }

    fn error(&self, err: OciDistributionError) -> PullError {
        let (image, host) = (self.image, self.target.host.as_str());
        let unauthorized = |detail: &str| {
            let who = if self.has_creds {
                format!("{host} rejected the credentials")
            } else {
                format!("no credentials for {host}")
            };
            PullError::unauthorized(image, format!("{detail}; {who}"))
        };
        match err {
            OciDistributionError::UnauthorizedError { .. } => unauthorized("authentication required"),
            OciDistributionError::AuthenticationFailure(m) => {
                unauthorized(&format!("authentication failed: {}", m.trim()))
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let message =
                    envelope.errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; ");
                let has = |codes: &[OciErrorCode]| envelope.errors.iter().any(|e| codes.contains(&e.code));
                if has(&[
                    OciErrorCode::ManifestUnknown,
                    OciErrorCode::NameUnknown,
                    OciErrorCode::BlobUnknown,
                    OciErrorCode::ManifestBlobUnknown,
                    OciErrorCode::NotFound,
                ]) {
                    PullError::not_found(image, message)
                } else if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                    unauthorized(&message)
                } else if has(&[OciErrorCode::NameInvalid, OciErrorCode::TagInvalid]) {
                    PullError::invalid(image, format!("the registry refused the reference: {message}"))
                } else {
                    PullError::network(image, format!("registry {host} failed: {message}"))
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                404 => PullError::not_found(image, format!("{host} answered 404")),
                401 | 403 => unauthorized(&format!("{host} answered {code}")),
                _ => {
                    let message: String = message.trim().chars().take(200).collect();
                    PullError::network(image, format!("registry {host} answered HTTP {code}: {message}"))
                }
            },
            OciDistributionError::ImageManifestNotFoundError(m) => PullError::not_found(image, m),
            OciDistributionError::DigestError(e) => {
                PullError::invalid(image, format!("digest mismatch: {e}"))
            }
            e @ (OciDistributionError::RequestError(_) | OciDistributionError::IoError(_)) => {
                PullError::network(image, format!("cannot reach registry {host}: {}", chain(&e)))
            }
            e @ (OciDistributionError::UnsupportedMediaTypeError(_)
            | OciDistributionError::UnsupportedSchemaVersionError(_)
            | OciDistributionError::ManifestParsingError(_)
            | OciDistributionError::VersionedParsingError(_)
            | OciDistributionError::JsonError(_)
            | OciDistributionError::ManifestEncodingError(_)) => PullError::invalid(image, e),
            e => PullError::network(image, format!("registry {host}: {}", chain(&e))),
        }
    }
}

fn client_for(target: &PullTarget) -> Result<Client, String> {
    let config = ClientConfig {
        protocol: if target.plain_http {
            ClientProtocol::HttpsExcept(vec![target.host.clone()])
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    Client::try_from(config).map_err(|e| format!("cannot create the registry client: {}", chain(&e)))
}

fn parse_manifest(image: &str, body: &[u8]) -> Result<RawManifest, PullError> {
    let m: RawManifest = serde_json::from_slice(body)
        .map_err(|e| PullError::invalid(image, format!("unreadable manifest: {e}")))?;
    if m.schema_version != Some(2) {
        return Err(PullError::invalid(
            image,
            format!("unsupported manifest schema version {:?} (only schema 2 is)", m.schema_version),
        ));
    }
    Ok(m)
}

fn parse_config(image: &str, data: &[u8]) -> Result<ImageRuntimeConfig, PullError> {
    let file: ConfigFile = serde_json::from_slice(data)
        .map_err(|e| PullError::invalid(image, format!("unreadable image config: {e}")))?;
    let c = file.config.unwrap_or_default();
    Ok(ImageRuntimeConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.filter(|s| !s.is_empty()),
        user: c.user.filter(|s| !s.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn temp_store() -> (TempDir, ImageStore) {
        let dir = std::env::temp_dir().join(format!("capstan-store-{}", uuid::Uuid::new_v4()));
        let store = ImageStore::open(&dir, RegistryConfig::default()).unwrap();
        (TempDir(dir), store)
    }

    fn chunks(data: &'static [u8]) -> impl Stream<Item = io::Result<bytes::Bytes>> {
        futures::stream::iter(data.chunks(3).map(|c| Ok(bytes::Bytes::from_static(c))))
    }

    #[tokio::test]
    async fn digest_mismatch_is_rejected_and_leaves_nothing() {
        let (dir, store) = temp_store();
        let good = sha256_digest(b"hello world");
        let path = store.store_stream(&good, chunks(b"hello world")).await.unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"hello world");
        let other = sha256_digest(b"something else");
        match store.store_stream(&other, chunks(b"hello world")).await {
            Err(BlobError::Mismatch { expected, actual }) => {
                assert_eq!(expected, other);
                assert_eq!(actual, good);
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert!(!store.blob_path(sha256_hex(&other).unwrap()).exists());
        assert_eq!(fs::read_dir(dir.0.join("tmp")).unwrap().count(), 0);
        let err = BlobError::Mismatch { expected: other, actual: good }.into_pull("x:1", "h");
        assert!(matches!(err, PullError::Invalid(_)));
        assert!(err.to_string().contains("digest mismatch"), "{err}");
    }

    #[test]
    fn digests_are_validated_before_use_as_paths() {
        assert!(sha256_hex(&format!("sha256:{}", "a".repeat(64))).is_some());
        assert!(sha256_hex(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(sha256_hex("sha256:../../etc").is_none());
        assert!(sha256_hex(&format!("sha512:{}", "a".repeat(128))).is_none());
    }

    #[test]
    fn index_survives_reopen() {
        let (dir, store) = temp_store();
        let layer = format!("sha256:{}", "b".repeat(64));
        fs::create_dir_all(store.layer_dir(sha256_hex(&layer).unwrap())).unwrap();
        let rec = ImageRecord {
            repository: "127.0.0.1:5000/x".into(),
            digest: format!("sha256:{}", "c".repeat(64)),
            manifest_digest: format!("sha256:{}", "c".repeat(64)),
            config_digest: format!("sha256:{}", "d".repeat(64)),
            layers: vec![layer],
            config: ImageRuntimeConfig { cmd: vec!["sh".into()], ..Default::default() },
        };
        store.record("127.0.0.1:5000/x:1".into(), rec).unwrap();
        drop(store);
        let store = ImageStore::open(&dir.0, RegistryConfig::default()).unwrap();
        let info = store.local("127.0.0.1:5000/x:1").unwrap();
        assert_eq!(info.repo_digest, format!("127.0.0.1:5000/x@sha256:{}", "c".repeat(64)));
        assert_eq!(info.config.cmd, vec!["sh"]);
        let by_digest = store.local(&format!("127.0.0.1:5000/x@sha256:{}", "c".repeat(64))).unwrap();
        assert_eq!(by_digest.image_id, info.image_id);
        assert!(store.local("127.0.0.1:5000/x:2").is_none());
    }

    #[test]
    fn node_images_are_named_by_digest_then_tag_largest_first() {
        let (_dir, store) = temp_store();
        let blob = |fill: char, len: usize| {
            let d = format!("sha256:{}", fill.to_string().repeat(64));
            fs::write(store.blob_path(sha256_hex(&d).unwrap()), vec![0u8; len]).unwrap();
            d
        };
        let (small_cfg, small_layer) = (blob('1', 10), blob('2', 100));
        let (big_cfg, big_layer, big_manifest) = (blob('3', 20), blob('4', 5000), blob('5', 7));
        let rec = |repo: &str, digest: &str, cfg: &str, layer: &str| ImageRecord {
            repository: repo.into(),
            digest: digest.into(),
            manifest_digest: digest.into(),
            config_digest: cfg.into(),
            layers: vec![layer.to_string()],
            config: ImageRuntimeConfig::default(),
        };
        let small_digest = format!("sha256:{}", "6".repeat(64));
        store.record("r/small:1".into(), rec("r/small", &small_digest, &small_cfg, &small_layer)).unwrap();
        // One image under two tags: one entry, its digest first, both tags.
        store.record("r/big:1".into(), rec("r/big", &big_manifest, &big_cfg, &big_layer)).unwrap();
        store.record("r/big:latest".into(), rec("r/big", &big_manifest, &big_cfg, &big_layer)).unwrap();
        let got = store.node_images();
        assert_eq!(
            got,
            vec![
                NodeImage {
                    names: vec![format!("r/big@{big_manifest}"), "r/big:1".into(), "r/big:latest".into()],
                    size_bytes: 5027,
                },
                NodeImage {
                    names: vec![format!("r/small@{small_digest}"), "r/small:1".into()],
                    size_bytes: 110
                },
            ]
        );
        assert_eq!(
            serde_json::to_value(&got[1]).unwrap(),
            serde_json::json!({"names": [format!("r/small@{small_digest}"), "r/small:1"], "sizeBytes": 110})
        );
    }

    #[test]
    fn config_parsing() {
        let c = parse_config(
            "x",
            br#"{"architecture":"amd64","config":{"Entrypoint":null,"Cmd":["sh"],"Env":["PATH=/bin"],"WorkingDir":"","User":"65534"}}"#,
        )
        .unwrap();
        assert_eq!(c.cmd, vec!["sh"]);
        assert!(c.entrypoint.is_empty());
        assert_eq!(c.working_dir, None);
        assert_eq!(c.user.as_deref(), Some("65534"));
        assert_eq!(parse_config("x", b"{}").unwrap(), ImageRuntimeConfig::default());
        assert!(matches!(parse_config("x", b"nope"), Err(PullError::Invalid(_))));
    }
}
