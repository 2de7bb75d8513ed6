//! Image garbage collection by disk usage, as upstream's kubelet (`pkg/kubelet/images/
//! image_gc_manager.go`): every period the usage of the filesystem holding the image store
//! is measured (statvfs); when it is at or above the high threshold, images no pod on this
//! node uses are removed, least recently used first and only when unused for at least the
//! minimum age, until the bytes freed bring usage to the low threshold. The Node gets an
//! Event: `FreedDiskSpace` (Normal, capstan's: what was removed) and, when not enough could be
//! freed, upstream's Warnings `FreeDiskSpaceFailed` and `ImageGCFailed`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use capstan_actors::events::Recorder;
use capstan_actors::informer::Informer;
use serde_json::{json, Value};

use crate::image::ImageStore;

/// Image garbage collection settings (upstream's `imageGCHighThresholdPercent`,
/// `imageGCLowThresholdPercent`, `imageMinimumGCAge`, and its fixed 5 minute period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGcConfig {
    /// Collect when usage is at or above this percentage; 100 turns collection off.
    pub high_threshold_percent: u8,
    /// Collect down to this percentage.
    pub low_threshold_percent: u8,
    /// Images unused for less than this are kept.
    pub minimum_age: Duration,
    /// How often usage is checked.
    pub period: Duration,
}

impl Default for ImageGcConfig {
    fn default() -> Self {
        ImageGcConfig {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
            minimum_age: Duration::from_secs(120),
            period: Duration::from_secs(300),
        }
    }
}

/// Capacity and available bytes of the filesystem holding `path`.
pub fn fs_usage(path: &Path) -> std::io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frag = st.fragment_size() as u64;
    Ok((st.blocks() as u64 * frag, st.blocks_available() as u64 * frag))
}

/// Bytes to free for a filesystem of `capacity` with `available` left, or 0 when usage is
/// below the high threshold (upstream's arithmetic).
pub fn amount_to_free(cfg: &ImageGcConfig, capacity: u64, available: u64) -> u64 {
    if capacity == 0 || cfg.high_threshold_percent >= 100 {
        return 0;
    }
    let usage_percent = 100 - (available.min(capacity) as u128 * 100 / capacity as u128) as u64;
    if usage_percent < u64::from(cfg.high_threshold_percent) {
        return 0;
    }
    (capacity as u128 * u128::from(100 - cfg.low_threshold_percent.min(100)) / 100)
        .saturating_sub(available as u128) as u64
}

/// The images of every container (init, app, ephemeral) of the pods given.
fn pod_images(pods: &[Arc<Value>]) -> Vec<String> {
    let mut out = Vec::new();
    for p in pods {
        for list in ["initContainers", "containers", "ephemeralContainers"] {
            for c in p["spec"][list].as_array().into_iter().flatten() {
                if let Some(i) = c["image"].as_str() {
                    out.push(i.to_string());
                }
            }
        }
    }
    out
}

/// The least time between two failure Warnings (upstream's default GC period): with a
/// short `imageGCPeriodSeconds` a failing collection would otherwise warn every period and
/// use up the Node's event budget, so its `FreedDiskSpace` events were dropped.
const WARNING_INTERVAL: Duration = Duration::from_secs(300);

/// One pass: measures, and removes images when over the high threshold. `last_warning` is
/// when this node last warned that not enough could be freed.
pub async fn collect(
    cfg: &ImageGcConfig,
    images: &ImageStore,
    pods: &Informer,
    recorder: &Recorder,
    node: &str,
    last_warning: &mut Option<std::time::Instant>,
) {
    let root = images.root().to_path_buf();
    let usage = tokio::task::spawn_blocking(move || fs_usage(&root)).await;
    let (capacity, available) = match usage {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            tracing::warn!("image garbage collection: cannot measure the image filesystem: {e}");
            return;
        }
        Err(_) => return,
    };
    let wanted = amount_to_free(cfg, capacity, available);
    if wanted == 0 {
        return;
    }
    // In use: any image a pod on this node names, by reference and by image ID.
    let in_use_refs = pod_images(&pods.list());
    let in_use_ids: HashSet<String> =
        in_use_refs.iter().filter_map(|r| images.local(r)).map(|i| i.image_id).collect();
    let mut candidates: Vec<_> =
        images.images().into_iter().filter(|i| !in_use_ids.contains(&i.image_id)).collect();
    candidates.sort_by_key(|i| i.last_used);
    let now = SystemTime::now();
    let (mut freed, mut removed) = (0u64, Vec::new());
    for image in candidates {
        if freed >= wanted {
            break;
        }
        if now.duration_since(image.last_used).unwrap_or_default() < cfg.minimum_age {
            continue;
        }
        // A pod may have been bound to it since the list was taken.
        if pod_images(&pods.list())
            .iter()
            .any(|r| images.local(r).is_some_and(|i| i.image_id == image.image_id))
        {
            continue;
        }
        match images.remove(&image.reference).await {
            Ok(bytes) => {
                tracing::info!(image = %image.reference, bytes, "image garbage collection removed an unused image");
                freed += bytes;
                removed.push(image.reference);
            }
            Err(e) => {
                tracing::warn!(image = %image.reference, "image garbage collection: cannot remove: {e}")
            }
        }
    }
    let node_ref = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "uid": node}});
    if !removed.is_empty() {
        let message = format!(
            "freed {freed} bytes by removing {} unused images: {}",
            removed.len(),
            removed.join(", ")
        );
        recorder.event(&node_ref, "Normal", "FreedDiskSpace", &message).await;
    }
    if freed < wanted && last_warning.is_none_or(|t| t.elapsed() >= WARNING_INTERVAL) {
        *last_warning = Some(std::time::Instant::now());
        let message = format!(
            "Failed to garbage collect required amount of images. Attempted to free {wanted} bytes, but only found {freed} bytes eligible to free."
        );
        recorder.event(&node_ref, "Warning", "FreeDiskSpaceFailed", &message).await;
        recorder.event(&node_ref, "Warning", "ImageGCFailed", &message).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let cfg =
            ImageGcConfig { high_threshold_percent: 85, low_threshold_percent: 80, ..Default::default() };
        assert_eq!(amount_to_free(&cfg, 1000, 200), 0); // 80 % used
        assert_eq!(amount_to_free(&cfg, 1000, 150), 50); // 85 %: down to 80 %
        assert_eq!(amount_to_free(&cfg, 1000, 0), 200); // 20 % must be free
        let off = ImageGcConfig { high_threshold_percent: 100, ..cfg };
        assert_eq!(amount_to_free(&off, 1000, 0), 0);
        let all = ImageGcConfig { high_threshold_percent: 1, low_threshold_percent: 0, ..cfg };
        assert_eq!(amount_to_free(&all, 1000, 980), 20);
        assert_eq!(amount_to_free(&all, 0, 0), 0);
    }

    #[test]
    fn images_of_every_container_kind() {
        let p = Arc::new(json!({"spec": {
            "initContainers": [{"image": "a"}],
            "containers": [{"image": "b"}, {"name": "x"}],
            "ephemeralContainers": [{"image": "c"}]
        }}));
        assert_eq!(pod_images(&[p]), ["a", "b", "c"]);
    }
}
