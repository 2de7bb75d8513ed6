//! The image layer against a real `docker-registry` (started per test on a free port).
//! Needs root (layers keep ownership, whiteouts are device nodes) and the Debian packages
//! docker-registry, apache2-utils (htpasswd) and busybox-static.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use capstan_kubelet::image::{
    parse_docker_config, Credentials, ImageInfo, ImageStore, Mirror, PullError, PullPolicy, RegistryConfig,
};
use capstan_testkit::{push_busybox_image, push_busybox_image_as, ImageFormat, Registry, INDEX_HTML};

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("capstan-image-test-{}", uuid_like()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn no_creds() -> HashMap<String, Credentials> {
    HashMap::new()
}

fn open(dir: &Path) -> ImageStore {
    ImageStore::open(dir, RegistryConfig::default()).unwrap()
}

/// The unpacked busybox layer works: the binary runs, links and special modes are in place.
fn check_busybox_layer(info: &ImageInfo) {
    assert_eq!(info.layers.len(), 1, "{info:?}");
    let layer = &info.layers[0];
    let busybox = layer.join("bin/busybox");
    let meta = std::fs::metadata(&busybox).unwrap();
    assert!(meta.permissions().mode() & 0o111 != 0, "busybox is not executable");
    let out = Command::new(&busybox).args(["echo", "hello from the layer"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from the layer\n");
    assert_eq!(std::fs::read_link(layer.join("bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!(std::fs::metadata(layer.join("bin/ls")).unwrap().ino(), meta.ino(), "ls is a hard link");
    assert!(meta.nlink() >= 3);
    assert_eq!(std::fs::metadata(layer.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
    assert_eq!(std::fs::read_to_string(layer.join("var/www/index.html")).unwrap(), INDEX_HTML);
    assert!(std::fs::read_to_string(layer.join("etc/passwd")).unwrap().contains(":65534:"));
    assert_eq!(info.config.cmd, vec!["sh"]);
    assert!(info.config.env.iter().any(|e| e.starts_with("PATH=")), "{:?}", info.config.env);
    assert!(
        info.config.env.iter().any(|e| e == "CAPSTAN_TEST_PLATFORM=linux/amd64"),
        "{:?}",
        info.config.env
    );
    assert!(is_digest(&info.image_id), "{}", info.image_id);
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_image_pull_policies_and_restart() {
    let registry = Registry::start(None).unwrap();
    let image = push_busybox_image(&registry, "busybox", "1", None).await.unwrap();
    assert_eq!(image, format!("{}/busybox:1", registry.host()));
    let dir = TempDir::new();
    let store = open(&dir.0);

    // Never, with nothing local.
    let err = store.ensure(&image, PullPolicy::Never, &no_creds()).await.unwrap_err();
    assert!(matches!(err, PullError::NeverPullNotPresent(_)), "{err:?}");
    assert!(err.to_string().contains(&image), "{err}");

    let info = store.ensure(&image, PullPolicy::IfNotPresent, &no_creds()).await.unwrap();
    check_busybox_layer(&info);
    assert_eq!(info.image_ref, image);
    let (repo, digest) = info.repo_digest.split_once('@').unwrap();
    assert_eq!(repo, format!("{}/busybox", registry.host()));
    assert!(is_digest(digest), "{}", info.repo_digest);
    assert!(info.layers[0].starts_with(&dir.0));
    assert_eq!(store.unpacked_layers(), 1);

    // Present now: IfNotPresent and Never answer from the store.
    assert_eq!(store.ensure(&image, PullPolicy::IfNotPresent, &no_creds()).await.unwrap(), info);
    assert_eq!(store.ensure(&image, PullPolicy::Never, &no_creds()).await.unwrap(), info);
    // Pinned by digest: found locally too.
    let pinned = format!("{}/busybox@{digest}", registry.host());
    let by_digest = store.ensure(&pinned, PullPolicy::Never, &no_creds()).await.unwrap();
    assert_eq!(by_digest.image_id, info.image_id);

    // Unknown tag.
    let missing = format!("{}/busybox:nope", registry.host());
    let err = store.ensure(&missing, PullPolicy::IfNotPresent, &no_creds()).await.unwrap_err();
    assert!(matches!(err, PullError::NotFound(_)), "{err:?}");
    assert!(err.to_string().contains("not found"), "{err}");

    // Always re-resolves the tag: re-pushed as a Docker v2 manifest, it has another digest.
    push_busybox_image_as(&registry, "busybox", "1", None, ImageFormat::DockerV2).await.unwrap();
    let again = store.ensure(&image, PullPolicy::Always, &no_creds()).await.unwrap();
    assert_ne!(again.repo_digest, info.repo_digest);
    check_busybox_layer(&again);
    assert_eq!(again.image_id, info.image_id, "same config");
    // Its layer is gzip-compressed: another blob, another layer directory.
    assert_ne!(again.layers, info.layers);
    assert_eq!(store.unpacked_layers(), 2);

    // The registry goes away: IfNotPresent still works, also after a restart of the store.
    drop(registry);
    assert_eq!(store.ensure(&image, PullPolicy::IfNotPresent, &no_creds()).await.unwrap(), again);
    drop(store);
    let store = open(&dir.0);
    assert_eq!(store.ensure(&image, PullPolicy::IfNotPresent, &no_creds()).await.unwrap(), again);
    assert_eq!(store.ensure(&image, PullPolicy::Never, &no_creds()).await.unwrap(), again);
    let err = store.ensure(&image, PullPolicy::Always, &no_creds()).await.unwrap_err();
    assert!(matches!(err, PullError::Network(_)), "{err:?}");
    assert_eq!(store.unpacked_layers(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_v2_manifests_and_multi_platform_indexes() {
    let registry = Registry::start(None).unwrap();
    let dir = TempDir::new();
    let store = open(&dir.0);
    let mut digests = Vec::new();
    for (name, format) in [
        ("docker-v2", ImageFormat::DockerV2),
        ("oci-index", ImageFormat::OciIndex),
        ("docker-list", ImageFormat::DockerManifestList),
    ] {
        let image = push_busybox_image_as(&registry, name, "v1", None, format).await.unwrap();
        let info = store
            .ensure(&image, PullPolicy::IfNotPresent, &no_creds())
            .await
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
        // check_busybox_layer asserts the linux/amd64 config was picked from the indexes.
        check_busybox_layer(&info);
        digests.push(info.repo_digest.split_once('@').unwrap().1.to_string());
    }
    digests.dedup();
    assert_eq!(digests.len(), 3);
    // The three share one gzip layer blob: unpacked once.
    assert_eq!(store.unpacked_layers(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_registry_needs_the_right_credentials() {
    let registry = Registry::start(Some(("capstan", "s3cret"))).unwrap();
    let host = registry.host();
    let image =
        push_busybox_image(&registry, "private/busybox", "1", Some(("capstan", "s3cret"))).await.unwrap();
    let dir = TempDir::new();
    let store = open(&dir.0);

    let err = store.ensure(&image, PullPolicy::IfNotPresent, &no_creds()).await.unwrap_err();
    assert!(matches!(err, PullError::Unauthorized(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&format!("failed to pull \"{image}\": unauthorized")), "{text}");
    assert!(text.contains("imagePullSecrets"), "{text}");

    let wrong =
        HashMap::from([(host.clone(), Credentials { username: "capstan".into(), password: "nope".into() })]);
    let err = store.ensure(&image, PullPolicy::IfNotPresent, &wrong).await.unwrap_err();
    assert!(matches!(err, PullError::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("rejected the credentials"), "{err}");

    // The right ones, the way the agent gets them: a kubernetes.io/dockerconfigjson Secret.
    let secret = format!(r#"{{"auths":{{"http://{host}":{{"username":"capstan","password":"s3cret"}}}}}}"#);
    let creds = parse_docker_config(secret.as_bytes()).unwrap();
    let info = store.ensure(&image, PullPolicy::IfNotPresent, &creds).await.unwrap();
    check_busybox_layer(&info);
    // Always with the right credentials re-resolves fine; with none it is refused.
    store.ensure(&image, PullPolicy::Always, &creds).await.unwrap();
    let err = store.ensure(&image, PullPolicy::Always, &no_creds()).await.unwrap_err();
    assert!(matches!(err, PullError::Unauthorized(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_io_through_a_mirror() {
    let registry = Registry::start(None).unwrap();
    push_busybox_image(&registry, "library/busybox", "1", None).await.unwrap();
    let dir = TempDir::new();
    let config = RegistryConfig {
        mirrors: vec![Mirror { registry: "docker.io".into(), endpoint: registry.host() }],
        insecure: vec![],
    };
    let store = ImageStore::open(&dir.0, config).unwrap();
    let info =
        store.ensure("docker.io/library/busybox:1", PullPolicy::IfNotPresent, &no_creds()).await.unwrap();
    check_busybox_layer(&info);
    assert_eq!(info.image_ref, "docker.io/library/busybox:1");
    assert!(info.repo_digest.starts_with("docker.io/library/busybox@sha256:"), "{}", info.repo_digest);
    // The short name is the same image.
    let short = store.ensure("busybox:1", PullPolicy::Never, &no_creds()).await.unwrap();
    assert_eq!(short, info);
    let short = store.ensure("busybox:1", PullPolicy::Always, &no_creds()).await.unwrap();
    assert_eq!(short, info);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ensures_unpack_once() {
    let registry = Registry::start(None).unwrap();
    let image = push_busybox_image(&registry, "busybox", "concurrent", None).await.unwrap();
    for policy in [PullPolicy::IfNotPresent, PullPolicy::Always] {
        let dir = TempDir::new();
        let store = open(&dir.0);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (store, image) = (store.clone(), image.clone());
                tokio::spawn(async move { store.ensure(&image, policy, &HashMap::new()).await })
            })
            .collect();
        let mut infos = Vec::new();
        for t in tasks {
            infos.push(t.await.unwrap().unwrap());
        }
        assert!(infos.windows(2).all(|w| w[0] == w[1]), "{policy:?}");
        check_busybox_layer(&infos[0]);
        assert_eq!(store.unpacked_layers(), 1, "{policy:?}");
        // No leftovers of the concurrent work.
        assert_eq!(std::fs::read_dir(dir.0.join("tmp")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(dir.0.join("layers")).unwrap().count(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_references_and_unreachable_registries() {
    let dir = TempDir::new();
    let store = open(&dir.0);
    let err = store.ensure("Not A Reference", PullPolicy::IfNotPresent, &no_creds()).await.unwrap_err();
    assert!(matches!(err, PullError::Invalid(_)), "{err:?}");
    // A loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let image = format!("127.0.0.1:{port}/x:1");
    let err = store.ensure(&image, PullPolicy::IfNotPresent, &no_creds()).await.unwrap_err();
    assert!(matches!(err, PullError::Network(_)), "{err:?}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

/// The unpacked whiteouts do what overlayfs layers need: stacked as lower layers, a `.wh.`
/// file hides the file below and `.wh..wh..opq` hides the directory's lower contents.
#[test]
fn whiteouts_hide_lower_files_in_a_real_overlay() {
    use capstan_kubelet::image::unpack::unpack_layer;
    fn layer(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in files {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(content.len() as u64);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, content.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }
    let dir = TempDir::new();
    let (lower, upper, merged) = (dir.0.join("l1"), dir.0.join("l2"), dir.0.join("merged"));
    let base = [("etc/motd", "hi"), ("etc/keep", "k"), ("cache/a", "a"), ("cache/b", "b")];
    unpack_layer(&layer(&base)[..], &lower).unwrap();
    let top = [("etc/.wh.motd", ""), ("cache/.wh..wh..opq", ""), ("cache/c", "c")];
    unpack_layer(&layer(&top)[..], &upper).unwrap();
    std::fs::create_dir(&merged).unwrap();
    let options = format!("lowerdir={}:{}", upper.display(), lower.display());
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(options.as_str()),
    )
    .unwrap();
    let list = |d: &str| {
        let mut names: Vec<String> = std::fs::read_dir(merged.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let (etc, cache) = (list("etc"), list("cache"));
    nix::mount::umount(&merged).unwrap();
    assert_eq!(etc, vec!["keep"]);
    assert_eq!(cache, vec!["c"]);
}
