//! Pod volumes on the node: emptyDir, hostPath, configMap, secret, downwardAPI, projected
//! (of those sources), and claims (persistentVolumeClaim and ephemeral, resolved to their
//! local or hostPath volume by [`super::localpath`]), laid out under the pod's directory
//! (claims: where their volume lives) and bind-mounted into its containers, with
//! `subPath`/`subPathExpr` for every type.
//!
//! Key → path semantics follow upstream: without `items` every key becomes a file named
//! after it; with `items` only the listed keys, at their `path` (subdirectories allowed,
//! no `..`), each with its `mode` or the volume's `defaultMode` (0644). A missing
//! ConfigMap or Secret (or key) fails the pod's start unless marked optional.
//!
//! configMap, secret, downwardAPI and projected volumes are written as upstream's
//! `AtomicWriter` does: the files live in a timestamped directory `..<time>`, `..data` is a
//! symlink to it, and every top-level name is a symlink through `..data`. An update
//! ([`refresh`], run by the pod actor while the pod runs) writes a new timestamped
//! directory, renames a new `..data` symlink over the old one (one atomic step, so a reader
//! sees all old or all new files), fixes the top-level links and removes the old directory.
//! A `subPath` mount binds the file it resolved at container start, so it is not updated,
//! as upstream.
//!
//! Memory-backed, as upstream: an emptyDir with `medium: Memory` is a tmpfs (its
//! `sizeLimit` the tmpfs size), and secret and projected volumes are written to a tmpfs, so
//! no secret reaches the node's disk. The pod's cleanup unmounts them.
//!
//! With the pod's `fsGroup`, emptyDir, configMap, secret, downwardAPI and projected
//! volumes are given to that group as upstream's `SetVolumeOwnership` does
//! ([`set_ownership`]): every file and directory gets group `fsGroup` and at least
//! group read-write (emptyDir) or group read (the others), directories also group
//! execute and setgid, so files created later inherit the group. With
//! `fsGroupChangePolicy: OnRootMismatch` a volume whose root already matches is left as
//! it is. hostPath volumes are never changed.

use super::spec::{field_ref, EnvSources};
use base64::Engine;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// A `serviceAccountToken` source of a projected volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSource {
    /// The volume's name.
    pub volume: String,
    /// The file's path inside the volume.
    pub path: String,
    /// The audience asked for (None: the API's).
    pub audience: Option<String>,
    /// The lifetime asked for (upstream's default 3600 s, at least 600).
    pub seconds: i64,
    /// The volume's file mode.
    pub mode: u32,
}

/// The `serviceAccountToken` sources of a pod's projected volumes.
pub fn token_sources(pod: &Value) -> Vec<TokenSource> {
    let mut out = Vec::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let Some(name) = v["name"].as_str() else { continue };
        let dm = mode(&v["projected"]["defaultMode"], 0o644);
        for s in v["projected"]["sources"].as_array().into_iter().flatten() {
            let t = &s["serviceAccountToken"];
            if !t.is_object() {
                continue;
            }
            out.push(TokenSource {
                volume: name.to_string(),
                path: t["path"].as_str().unwrap_or("token").to_string(),
                audience: t["audience"].as_str().filter(|a| !a.is_empty()).map(str::to_string),
                seconds: t["expirationSeconds"].as_i64().unwrap_or(3600).max(600),
                mode: dm,
            });
        }
    }
    out
}

/// Writes a token file atomically (a new file renamed over the old one), so a container
/// never reads half a token while it is refreshed.
pub fn write_token(pod_dir: &Path, src: &TokenSource, token: &[u8]) -> Result<(), String> {
    let mut dir = pod_dir.join("volumes").join(&src.volume);
    // Into the files `..data` names now (see the module docs).
    if dir.join("..data").exists() {
        dir = dir.join("..data");
    }
    let rel = safe_relative(&src.path)?;
    let dest = dir.join(&rel);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("failed to create {}: {e}", parent.display()))?;
    }
    let tmp = dest.with_extension("capstan-new");
    std::fs::write(&tmp, token).map_err(|e| format!("failed to write {}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(src.mode))
        .map_err(|e| format!("failed to chmod {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &dest).map_err(|e| format!("failed to replace {}: {e}", dest.display()))
}

/// ConfigMaps and Secrets a pod refers to, fetched before its start.
#[derive(Debug, Default)]
pub struct Sources {
    /// ConfigMap data by name (binaryData decoded into the same map as lossy UTF-8 is not
    /// done: binary data is kept separately).
    pub config_maps: HashMap<String, BTreeMap<String, String>>,
    /// Secret data by name, decoded.
    pub secrets: HashMap<String, BTreeMap<String, String>>,
    /// Raw bytes for keys that are not valid UTF-8 (binaryData, binary secrets).
    pub binary: HashMap<(String, String, String), Vec<u8>>,
    /// ServiceAccount tokens by `<volume>/<path>`.
    pub tokens: HashMap<String, Vec<u8>>,
}

impl EnvSources for Sources {
    fn config_map(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.config_maps.get(name)
    }
    fn secret(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.secrets.get(name)
    }
}

impl Sources {
    /// Adds a fetched ConfigMap.
    pub fn add_config_map(&mut self, name: &str, obj: &Value) {
        let mut data = BTreeMap::new();
        for (k, v) in obj.get("data").and_then(Value::as_object).into_iter().flatten() {
            data.insert(k.clone(), v.as_str().unwrap_or("").to_string());
        }
        for (k, v) in obj.get("binaryData").and_then(Value::as_object).into_iter().flatten() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or(""))
                .unwrap_or_default();
            data.insert(k.clone(), String::from_utf8_lossy(&bytes).into_owned());
            self.binary.insert(("configmap".into(), name.into(), k.clone()), bytes);
        }
        self.config_maps.insert(name.to_string(), data);
    }

    /// Adds a fetched Secret.
    pub fn add_secret(&mut self, name: &str, obj: &Value) {
        let mut data = BTreeMap::new();
        for (k, v) in obj.get("data").and_then(Value::as_object).into_iter().flatten() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or(""))
                .unwrap_or_default();
            data.insert(k.clone(), String::from_utf8_lossy(&bytes).into_owned());
            self.binary.insert(("secret".into(), name.into(), k.clone()), bytes);
        }
        for (k, v) in obj.get("stringData").and_then(Value::as_object).into_iter().flatten() {
            data.insert(k.clone(), v.as_str().unwrap_or("").to_string());
        }
        self.secrets.insert(name.to_string(), data);
    }

    fn bytes(&self, kind: &str, name: &str, key: &str) -> Option<Vec<u8>> {
        if let Some(b) = self.binary.get(&(kind.to_string(), name.to_string(), key.to_string())) {
            return Some(b.clone());
        }
        let map = if kind == "configmap" { self.config_maps.get(name) } else { self.secrets.get(name) };
        map.and_then(|m| m.get(key)).map(|s| s.as_bytes().to_vec())
    }
}

/// The names of the ConfigMaps and Secrets a pod refers to (volumes, env, envFrom).
pub fn referenced(pod: &Value) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    let add = |list: &mut Vec<String>, n: Option<&str>| {
        if let Some(n) = n.filter(|n| !n.is_empty()) {
            if !list.iter().any(|x| x == n) {
                list.push(n.to_string());
            }
        }
    };
    let spec = &pod["spec"];
    for v in spec["volumes"].as_array().into_iter().flatten() {
        add(&mut cms, v["configMap"]["name"].as_str());
        add(&mut secrets, v["secret"]["secretName"].as_str());
        for s in v["projected"]["sources"].as_array().into_iter().flatten() {
            add(&mut cms, s["configMap"]["name"].as_str());
            add(&mut secrets, s["secret"]["name"].as_str());
        }
    }
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                add(&mut cms, e["valueFrom"]["configMapKeyRef"]["name"].as_str());
                add(&mut secrets, e["valueFrom"]["secretKeyRef"]["name"].as_str());
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                add(&mut cms, e["configMapRef"]["name"].as_str());
                add(&mut secrets, e["secretRef"]["name"].as_str());
            }
        }
    }
    for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        add(&mut secrets, s["name"].as_str());
    }
    (cms, secrets)
}

fn safe_relative(p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    if p.is_empty() || path.is_absolute() || path.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("invalid volume item path {p:?}: must be relative and must not contain '..'"));
    }
    Ok(path.to_path_buf())
}

/// The files of a projected volume: relative path → (bytes, mode).
type Files = BTreeMap<String, (Vec<u8>, u32)>;

fn put(files: &mut Files, rel: &str, data: &[u8], mode: u32) -> Result<(), String> {
    let p = safe_relative(rel)?;
    files.insert(p.to_string_lossy().into_owned(), (data.to_vec(), mode));
    Ok(())
}

fn write_file(dir: &Path, rel: &str, data: &[u8], mode: u32) -> Result<(), String> {
    let path = dir.join(safe_relative(rel)?);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("failed to create {}: {e}", parent.display()))?;
    }
    std::fs::write(&path, data).map_err(|e| format!("failed to write {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("failed to chmod {}: {e}", path.display()))
}

fn mode(v: &Value, default: u32) -> u32 {
    v.as_u64().map(|m| m as u32 & 0o777).unwrap_or(default)
}

/// Writes the keys of a ConfigMap or Secret into `dir` by upstream's key → path rules.
fn project_keys(
    files: &mut Files,
    kind: &str,
    name: &str,
    src: &Value,
    default_mode: u32,
    sources: &Sources,
) -> Result<(), String> {
    let optional = src["optional"].as_bool() == Some(true);
    let data = if kind == "configmap" { sources.config_maps.get(name) } else { sources.secrets.get(name) };
    let Some(data) = data else {
        return if optional { Ok(()) } else { Err(format!("{kind} \"{name}\" not found")) };
    };
    match src["items"].as_array() {
        Some(items) => {
            for it in items {
                let key = it["key"].as_str().unwrap_or("");
                let path = it["path"].as_str().unwrap_or(key);
                match sources.bytes(kind, name, key) {
                    Some(b) => put(files, path, &b, mode(&it["mode"], default_mode))?,
                    None if optional => {}
                    None if kind == "configmap" => {
                        return Err(format!("configmap references non-existent config key: {key}"))
                    }
                    None => return Err(format!("references non-existent secret key: {key}")),
                }
            }
        }
        None => {
            for key in data.keys() {
                if let Some(b) = sources.bytes(kind, name, key) {
                    put(files, key, &b, default_mode)?;
                }
            }
        }
    }
    Ok(())
}

fn project_downward(
    files: &mut Files,
    items: &Value,
    default_mode: u32,
    pod: &Value,
    node: &str,
) -> Result<(), String> {
    for it in items.as_array().into_iter().flatten() {
        let path = it["path"].as_str().unwrap_or("");
        let value = if let Some(f) = it["fieldRef"]["fieldPath"].as_str() {
            field_ref(pod, f, node).unwrap_or_default()
        } else if let Some(r) = it["resourceFieldRef"]["resource"].as_str() {
            let cname = it["resourceFieldRef"]["containerName"].as_str().unwrap_or("");
            let container = pod["spec"]["containers"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some(cname)))
                .ok_or_else(|| format!("downwardAPI item {path:?}: no container {cname:?}"))?;
            super::spec::resource_field_value(container, r, it["resourceFieldRef"].get("divisor"))?
        } else {
            continue;
        };
        put(files, path, value.as_bytes(), mode(&it["mode"], default_mode))?;
    }
    Ok(())
}

/// The files of a configMap, secret, downwardAPI or projected volume; `None` for other
/// volume types.
fn projected_files(v: &Value, pod: &Value, node: &str, sources: &Sources) -> Option<Result<Files, String>> {
    let name = v["name"].as_str().unwrap_or("");
    let mut files = Files::new();
    let r = if let Some(cm) = v.get("configMap") {
        let n = cm["name"].as_str().unwrap_or("");
        project_keys(&mut files, "configmap", n, cm, mode(&cm["defaultMode"], 0o644), sources)
    } else if let Some(sec) = v.get("secret") {
        let n = sec["secretName"].as_str().unwrap_or("");
        project_keys(&mut files, "secret", n, sec, mode(&sec["defaultMode"], 0o644), sources)
    } else if let Some(d) = v.get("downwardAPI") {
        project_downward(&mut files, &d["items"], mode(&d["defaultMode"], 0o644), pod, node)
    } else if let Some(p) = v.get("projected") {
        let dm = mode(&p["defaultMode"], 0o644);
        let mut r = Ok(());
        for s in p["sources"].as_array().into_iter().flatten() {
            r = if let Some(cm) = s.get("configMap") {
                project_keys(&mut files, "configmap", cm["name"].as_str().unwrap_or(""), cm, dm, sources)
            } else if let Some(sec) = s.get("secret") {
                project_keys(&mut files, "secret", sec["name"].as_str().unwrap_or(""), sec, dm, sources)
            } else if let Some(d) = s.get("downwardAPI") {
                project_downward(&mut files, &d["items"], dm, pod, node)
            } else if let Some(t) = s.get("serviceAccountToken") {
                let path = t["path"].as_str().unwrap_or("token");
                match sources.tokens.get(&format!("{name}/{path}")) {
                    Some(token) => put(&mut files, path, token, dm),
                    None => Err(format!("volume {name:?}: no ServiceAccount token was issued for {path:?}")),
                }
            } else {
                Ok(())
            };
            if r.is_err() {
                break;
            }
        }
        r
    } else {
        return None;
    };
    Some(r.map(|()| files))
}

/// What `..data` of `dir` holds now, as [`Files`] (None when the layout is missing).
fn current_files(dir: &Path, want: &Files) -> Option<Files> {
    let data = dir.join("..data");
    std::fs::read_link(&data).ok()?;
    let mut out = Files::new();
    fn walk(base: &Path, rel: &Path, out: &mut Files) {
        let Ok(rd) = std::fs::read_dir(base.join(rel)) else { return };
        for e in rd.flatten() {
            let r = rel.join(e.file_name());
            let full = base.join(&r);
            if full.is_dir() {
                walk(base, &r, out);
            } else if let (Ok(b), Ok(m)) = (std::fs::read(&full), std::fs::metadata(&full)) {
                out.insert(r.to_string_lossy().into_owned(), (b, m.permissions().mode() & 0o777));
            }
        }
    }
    walk(&data, Path::new(""), &mut out);
    // Ownership changes (fsGroup) widen modes: compare the bytes, and modes only by what
    // was asked for.
    let same = out.len() == want.len()
        && out.iter().all(|(k, (b, m))| want.get(k).is_some_and(|(wb, wm)| wb == b && m & wm == *wm));
    same.then_some(out)
}

/// Writes `files` into `dir` atomically (see the module docs). Returns false when `dir`
/// already held exactly these files.
pub(crate) fn atomic_write(dir: &Path, files: &Files) -> Result<bool, String> {
    if current_files(dir, files).is_some() {
        return Ok(false);
    }
    let now = jiff::Timestamp::now();
    let stamp = format!("..{}.{:09}", now.strftime("%Y_%m_%d_%H_%M_%S"), now.subsec_nanosecond());
    let ts = dir.join(&stamp);
    std::fs::create_dir_all(&ts).map_err(|e| format!("failed to create {}: {e}", ts.display()))?;
    std::fs::set_permissions(&ts, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("failed to chmod {}: {e}", ts.display()))?;
    for (rel, (data, m)) in files {
        write_file(&ts, rel, data, *m)?;
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(|e| format!("failed to link {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("..data"))
        .map_err(|e| format!("failed to swap {}: {e}", dir.join("..data").display()))?;
    // Top-level names: a link through ..data for each, none for names that went away.
    let top: std::collections::BTreeSet<String> =
        files.keys().filter_map(|k| k.split('/').next().map(str::to_string)).collect();
    for t in &top {
        let link = dir.join(t);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(t), &link)
                .map_err(|e| format!("failed to link {}: {e}", link.display()))?;
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.starts_with("..") && !top.contains(&n) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != stamp.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

/// Rewrites the configMap, secret, downwardAPI and projected volumes of a running pod whose
/// sources changed (upstream's periodic volume remount). Returns the names of the volumes
/// updated.
pub fn refresh(
    pod: &Value,
    pod_dir: &Path,
    node: &str,
    sources: &Sources,
    fs_group: Option<(u32, bool)>,
) -> Result<Vec<String>, String> {
    let mut changed = Vec::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let Some(name) = v["name"].as_str() else { continue };
        let Some(files) = projected_files(v, pod, node, sources) else { continue };
        let dir = pod_dir.join("volumes").join(name);
        if !dir.join("..data").exists() {
            continue;
        }
        if atomic_write(&dir, &files?)? {
            if let Some((gid, _)) = fs_group {
                set_ownership(&dir, gid, true, false)?;
            }
            changed.push(name.to_string());
        }
    }
    Ok(changed)
}

/// Group read-write, as upstream's `rwMask`.
const RW_MASK: u32 = 0o660;
/// Group read, as upstream's `roMask`.
const RO_MASK: u32 = 0o440;
/// Execute for owner and group on directories, as upstream's `execMask`.
const EXEC_MASK: u32 = 0o110;
const SETGID: u32 = 0o2000;

/// Whether a volume root needs its ownership changed (upstream's
/// `requiresPermissionChange`, used with `OnRootMismatch`).
fn requires_change(root: &Path, gid: u32, readonly: bool) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(root) else { return true };
    if meta.gid() != gid || !meta.is_dir() {
        return true;
    }
    let wanted = if readonly { RO_MASK } else { RW_MASK } | EXEC_MASK;
    meta.mode() & wanted != wanted || meta.mode() & SETGID == 0
}

/// Gives everything under `dir` to group `gid` (upstream's `SetVolumeOwnership`): the
/// owner is kept, the group set, modes widened by group read-write (`readonly`: read),
/// directories also by execute and setgid; symlinks get the group but no chmod. With
/// `on_root_mismatch` nothing changes when the root already matches.
pub fn set_ownership(dir: &Path, gid: u32, readonly: bool, on_root_mismatch: bool) -> Result<(), String> {
    if on_root_mismatch && !requires_change(dir, gid, readonly) {
        return Ok(());
    }
    fn walk(path: &Path, gid: u32, mask: u32) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let meta =
            std::fs::symlink_metadata(path).map_err(|e| format!("failed to stat {}: {e}", path.display()))?;
        std::os::unix::fs::lchown(path, None, Some(gid))
            .map_err(|e| format!("failed to chown {}: {e}", path.display()))?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let mut mode = meta.mode() & 0o7777 | mask;
        if meta.is_dir() {
            mode |= SETGID | EXEC_MASK;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("failed to chmod {}: {e}", path.display()))?;
        if meta.is_dir() {
            let entries =
                std::fs::read_dir(path).map_err(|e| format!("failed to read {}: {e}", path.display()))?;
            for entry in entries {
                let entry = entry.map_err(|e| format!("failed to read {}: {e}", path.display()))?;
                walk(&entry.path(), gid, mask)?;
            }
        }
        Ok(())
    }
    walk(dir, gid, if readonly { RO_MASK } else { RW_MASK })
}

/// Mounts a tmpfs (mode 0777, `size` bytes or the kernel's default of half the memory) on
/// `dir`, unless one is there already (the pod was prepared before an agent restart).
fn tmpfs(dir: &Path, size: Option<u64>) -> Result<(), String> {
    use nix::mount::MsFlags;
    if crate::runtime::mounts::is_mounted(dir).unwrap_or(false) {
        return Ok(());
    }
    let mut data = "mode=0777".to_string();
    if let Some(size) = size {
        data.push_str(&format!(",size={size}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| format!("failed to mount a tmpfs on {}: {e}", dir.display()))
}

/// Unmounts every volume of a pod that is a mount (tmpfs) under `pod_dir`.
pub fn unmount_all(pod_dir: &Path) -> Result<(), String> {
    let found =
        crate::runtime::mounts::mounts_under(pod_dir).map_err(|e| format!("reading mountinfo: {e}"))?;
    for m in found {
        crate::runtime::mounts::unmount(&m).map_err(|e| format!("unmounting {}: {e}", m.display()))?;
    }
    Ok(())
}

/// A hostPath source checked (and created) by its `type`, as upstream's.
pub fn host_path(p: &Path, kind: &str) -> Result<PathBuf, String> {
    match kind {
        "DirectoryOrCreate" => {
            std::fs::create_dir_all(p).map_err(|e| format!("failed to create {}: {e}", p.display()))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| format!("failed to chmod {}: {e}", p.display()))?
        }
        "Directory" if !p.is_dir() => {
            return Err(format!("hostPath type check failed: {} is not a directory", p.display()))
        }
        "File" if !p.is_file() => {
            return Err(format!("hostPath type check failed: {} is not a file", p.display()))
        }
        "FileOrCreate" if !p.exists() => {
            std::fs::write(p, b"").map_err(|e| format!("failed to create {}: {e}", p.display()))?
        }
        _ => {}
    }
    Ok(p.to_path_buf())
}

/// Creates every volume of `pod` under `pod_dir/volumes` and returns name → host path.
/// `fs_group`: the pod's `fsGroup` and whether its change policy is `OnRootMismatch`.
/// `claims`: the pod's persistent and ephemeral volumes, resolved by
/// [`super::localpath::resolve`].
pub fn prepare(
    pod: &Value,
    pod_dir: &Path,
    node: &str,
    sources: &Sources,
    fs_group: Option<(u32, bool)>,
    claims: &HashMap<String, super::localpath::ClaimVolume>,
) -> Result<HashMap<String, PathBuf>, String> {
    let mut out = HashMap::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let Some(name) = v["name"].as_str() else { continue };
        let dir = pod_dir.join("volumes").join(name);
        let fresh = |d: &Path| -> Result<(), String> {
            std::fs::create_dir_all(d).map_err(|e| format!("failed to create {}: {e}", d.display()))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| format!("failed to chmod {}: {e}", d.display()))
        };
        let path = if let Some(ed) = v.get("emptyDir") {
            fresh(&dir)?;
            if ed["medium"].as_str() == Some("Memory") {
                let size = ed["sizeLimit"].as_str().and_then(capstan_api::quantity::parse_value);
                tmpfs(&dir, size.and_then(|s| u64::try_from(s).ok()))?;
            }
            dir
        } else if let Some(hp) = v.get("hostPath") {
            host_path(Path::new(hp["path"].as_str().unwrap_or("")), hp["type"].as_str().unwrap_or(""))?
        } else if v.get("persistentVolumeClaim").is_some() || v.get("ephemeral").is_some() {
            let c = claims.get(name).ok_or_else(|| format!("volume {name:?}: its claim was not resolved"))?;
            if !c.ownership {
                out.insert(name.to_string(), c.path.clone());
                continue;
            }
            c.path.clone()
        } else if let Some(files) = projected_files(v, pod, node, sources) {
            let files = files?;
            fresh(&dir)?;
            if v.get("secret").is_some() || v.get("projected").is_some() {
                tmpfs(&dir, None)?;
            }
            atomic_write(&dir, &files)?;
            dir
        } else {
            let kind =
                v.as_object().and_then(|o| o.keys().find(|k| *k != "name").cloned()).unwrap_or_default();
            return Err(format!("volume {name:?}: volume type {kind:?} is not supported by this node"));
        };
        if let Some((gid, on_root_mismatch)) = fs_group {
            if v.get("hostPath").is_none() {
                let writable = v.get("emptyDir").is_some()
                    || v.get("persistentVolumeClaim").is_some()
                    || v.get("ephemeral").is_some();
                let readonly = !writable;
                set_ownership(&path, gid, readonly, on_root_mismatch)
                    .map_err(|e| format!("volume {name:?}: failed to apply fsGroup {gid}: {e}"))?;
            }
        }
        out.insert(name.to_string(), path);
    }
    Ok(out)
}

/// A bind mount for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Path in the container.
    pub destination: String,
    /// Path on the host.
    pub source: PathBuf,
    /// Read-only.
    pub read_only: bool,
}

/// The container's volume mounts as bind mounts (`subPath`, or `subPathExpr` expanded
/// with the container's environment `env` as upstream: `$(VAR)`, unknown names kept,
/// resolved and created if missing). A claim's `readOnly` makes every mount of it
/// read-only.
pub fn mounts(
    pod: &Value,
    container: &Value,
    volumes: &HashMap<String, PathBuf>,
    env: &[(String, String)],
) -> Result<Vec<BindMount>, String> {
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    let mut out = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = m["name"].as_str().unwrap_or("");
        let Some(base) = volumes.get(name) else {
            return Err(format!("volume mount {name:?} refers to a volume the pod does not have"));
        };
        let spec = pod["spec"]["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"].as_str() == Some(name)));
        let implied_ro = spec.is_some_and(|v| {
            v.get("configMap").is_some()
                || v.get("secret").is_some()
                || v.get("downwardAPI").is_some()
                || v.get("projected").is_some()
                || v["persistentVolumeClaim"]["readOnly"].as_bool() == Some(true)
        });
        let mut source = base.clone();
        let sub = match m["subPathExpr"].as_str().filter(|s| !s.is_empty()) {
            Some(expr) => Some(super::spec::expand(expr, &vars)),
            None => m["subPath"].as_str().filter(|s| !s.is_empty()).map(str::to_string),
        };
        if let Some(sub) = sub.as_deref() {
            source =
                source.join(safe_relative(sub).map_err(|e| format!("volume mount {name:?}: subPath: {e}"))?);
            if !source.exists() {
                std::fs::create_dir_all(&source)
                    .map_err(|e| format!("failed to create subPath {sub}: {e}"))?;
            }
        }
        out.push(BindMount {
            destination: m["mountPath"].as_str().unwrap_or("").to_string(),
            source,
            read_only: m["readOnly"].as_bool() == Some(true) || implied_ro,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn projects_volumes() {
        let tmp = std::env::temp_dir().join(format!("capstan-vol-{}", std::process::id()));
        let pod = json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "x"}},
            "spec": {"volumes": [
                {"name": "cfg", "configMap": {"name": "cm"}},
                {"name": "sel", "configMap": {"name": "cm", "items": [{"key": "a", "path": "sub/aa", "mode": 0o600}]}},
                {"name": "sec", "secret": {"secretName": "s", "defaultMode": 0o400}},
                {"name": "down", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                {"name": "scratch", "emptyDir": {}},
            ]},
        });
        let mut src = Sources::default();
        src.add_config_map("cm", &json!({"data": {"a": "1", "b": "2"}}));
        src.add_secret("s", &json!({"data": {"pw": "aHVudGVyMg=="}}));
        let vols = prepare(&pod, &tmp, "n", &src, None, &HashMap::new()).unwrap();
        assert_eq!(std::fs::read_to_string(vols["cfg"].join("b")).unwrap(), "2");
        let aa = vols["sel"].join("sub/aa");
        assert_eq!(std::fs::read_to_string(&aa).unwrap(), "1");
        assert_eq!(std::fs::metadata(&aa).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!vols["sel"].join("b").exists());
        assert_eq!(std::fs::read_to_string(vols["sec"].join("pw")).unwrap(), "hunter2");
        assert_eq!(std::fs::read_to_string(vols["down"].join("labels")).unwrap(), "app=\"x\"");
        assert!(vols["scratch"].is_dir());
        let c = json!({"volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "scratch", "mountPath": "/s"}]});
        let m = mounts(&pod, &c, &vols, &[]).unwrap();
        assert!(m[0].read_only && !m[1].read_only);
        let bad =
            json!({"metadata": {}, "spec": {"volumes": [{"name": "x", "configMap": {"name": "nope"}}]}});
        assert_eq!(
            prepare(&bad, &tmp, "n", &src, None, &HashMap::new()).unwrap_err(),
            "configmap \"nope\" not found"
        );
        let trav = json!({"metadata": {}, "spec": {"volumes": [{"name": "x", "configMap": {"name": "cm", "items": [{"key": "a", "path": "../x"}]}}]}});
        assert!(prepare(&trav, &tmp, "n", &src, None, &HashMap::new()).unwrap_err().contains(".."));
        // The secret volume is a tmpfs (as root): unmount it, or every run leaves one behind.
        unmount_all(&tmp).unwrap();
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn updates_swap_atomically() {
        let tmp = std::env::temp_dir().join(format!("capstan-vol-swap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let pod = json!({"metadata": {"name": "p", "labels": {"v": "1"}}, "spec": {"volumes": [
            {"name": "cfg", "configMap": {"name": "cm"}},
            {"name": "down", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
        ]}});
        let mut src = Sources::default();
        src.add_config_map("cm", &json!({"data": {"a": "1", "b": "2"}}));
        let vols = prepare(&pod, &tmp, "n", &src, None, &HashMap::new()).unwrap();
        let cfg = &vols["cfg"];
        assert_eq!(std::fs::read_link(cfg.join("a")).unwrap(), Path::new("..data/a"));
        let first = std::fs::read_link(cfg.join("..data")).unwrap();
        assert!(first.to_string_lossy().starts_with(".."));
        // Nothing changed: nothing rewritten.
        assert!(refresh(&pod, &tmp, "n", &src, None).unwrap().is_empty());
        // A changed value and a removed key: one swap, the old directory gone.
        let mut src = Sources::default();
        src.add_config_map("cm", &json!({"data": {"a": "10"}}));
        let pod2 = json!({"metadata": {"name": "p", "labels": {"v": "2"}}, "spec": pod["spec"].clone()});
        assert_eq!(refresh(&pod2, &tmp, "n", &src, None).unwrap(), ["cfg", "down"]);
        assert_eq!(std::fs::read_to_string(cfg.join("a")).unwrap(), "10");
        assert!(std::fs::symlink_metadata(cfg.join("b")).is_err());
        assert!(!cfg.join(&first).exists());
        assert_eq!(std::fs::read_to_string(vols["down"].join("labels")).unwrap(), "v=\"2\"");
        // A refreshed token is written into the files ..data names; with the sources
        // holding it too, a later sync leaves the volume alone.
        let pod3 = json!({"metadata": {"name": "p"}, "spec": {"volumes": [
            {"name": "api", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
        ]}});
        let dir3 = tmp.join("tok");
        let mut src = Sources::default();
        src.tokens.insert("api/token".into(), b"t1".to_vec());
        let mut files = Files::new();
        put(&mut files, "token", b"t1", 0o644).unwrap();
        std::fs::create_dir_all(dir3.join("volumes/api")).unwrap();
        atomic_write(&dir3.join("volumes/api"), &files).unwrap();
        let ts = &token_sources(&pod3)[0];
        write_token(&dir3, ts, b"t2").unwrap();
        assert_eq!(std::fs::read_to_string(dir3.join("volumes/api/token")).unwrap(), "t2");
        assert!(std::fs::symlink_metadata(dir3.join("volumes/api/token")).unwrap().file_type().is_symlink());
        src.tokens.insert("api/token".into(), b"t2".to_vec());
        assert!(refresh(&pod3, &dir3, "n", &src, None).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn fs_group_ownership() {
        use std::os::unix::fs::MetadataExt;
        let tmp = std::env::temp_dir().join(format!("capstan-fsgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let pod = json!({"metadata": {"name": "p"}, "spec": {"volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "cfg", "configMap": {"name": "cm", "items": [{"key": "a", "path": "sub/a", "mode": 0o600}]}},
        ]}});
        let mut src = Sources::default();
        src.add_config_map("cm", &json!({"data": {"a": "1"}}));
        let vols = prepare(&pod, &tmp, "n", &src, Some((2000, false)), &HashMap::new()).unwrap();
        let stat = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            (m.gid(), m.mode() & 0o7777)
        };
        // emptyDir: 0777 widened by setgid (upstream's 2777 for a fresh emptyDir).
        assert_eq!(stat(&vols["scratch"]), (2000, 0o2777));
        // configMap: read-only group access, directories group-executable and setgid.
        assert_eq!(stat(&vols["cfg"].join("sub/a")), (2000, 0o640));
        assert_eq!(stat(&vols["cfg"].join("sub")).0, 2000);
        assert_eq!(stat(&vols["cfg"].join("sub")).1 & 0o2550, 0o2550);
        // OnRootMismatch: a matching root is left alone, a mismatching one changed.
        let f = vols["scratch"].join("later");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        set_ownership(&vols["scratch"], 2000, false, true).unwrap();
        // (Created in a setgid directory: the group is inherited, the mode not widened.)
        assert_eq!(stat(&f), (2000, 0o600));
        set_ownership(&vols["scratch"], 3000, false, true).unwrap();
        assert_eq!(stat(&f), (3000, 0o660));
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
