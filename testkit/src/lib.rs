//! capstan's test kit: a real local registry (`docker-registry`, Debian's Distribution 2.8),
//! a busybox test image built without network and pushed to it, and a real `dnsmasq`
//! answering from a hosts file on loopback (the outside resolver of the DNS tests and the
//! peer of `capstan-bench dns`). Shared by the node
//! agent's tests, the integration tests (`tests/`) and the benchmarks (`bench/`), so none of
//! them depends on another's crate for it.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let registry = capstan_testkit::Registry::start(None)?;
//! let image = capstan_testkit::push_busybox_image(&registry, "busybox", "1", None).await?;
//! assert!(image.ends_with("/busybox:1"));
//! # Ok(())
//! # }
//! ```

mod grpc;
pub use grpc::{GrpcHealth, NOT_SERVING, SERVING};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

/// A `docker-registry serve` process on a free 127.0.0.1 port, with filesystem storage in a
/// temporary directory. Dropping it kills the process and removes the directory.
pub struct Registry {
    /// Where the registry listens (plain HTTP).
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_dir(tag: &str) -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "capstan-{tag}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `GET /v2/` over plain HTTP: the status code, if a registry answered.
fn probe_v2(addr: SocketAddr) -> Option<u16> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    conn.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).ok()?;
    if !response.to_ascii_lowercase().contains("docker-distribution-api-version") {
        return None;
    }
    response.split_whitespace().nth(1)?.parse().ok()
}

impl Registry {
    /// Starts the real `docker-registry serve` on a free 127.0.0.1 port with filesystem storage
    /// in a temporary directory and waits (with a deadline) until `GET /v2/` answers. With
    /// `Some((user, password))` the registry requires HTTP basic auth (htpasswd, bcrypt).
    pub fn start(auth: Option<(&str, &str)>) -> anyhow::Result<Registry> {
        let mut last_error = anyhow!("not started");
        for _ in 0..3 {
            match Self::try_start(auth) {
                Ok(r) => return Ok(r),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    fn try_start(auth: Option<(&str, &str)>) -> anyhow::Result<Registry> {
        let dir = temp_dir("registry")?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: capstan-test-secret\n",
            dir.join("data").display()
        );
        if let Some((user, password)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .context("running htpasswd (apache2-utils)")?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let file = dir.join("htpasswd");
            std::fs::write(&file, &out.stdout)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: capstan-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (Debian package docker-registry)")?;
        let mut registry = Registry { addr, child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = registry.child.try_wait()? {
                let log = std::fs::read_to_string(registry.dir.join("registry.log")).unwrap_or_default();
                bail!("docker-registry exited ({status}): {log}");
            }
            match probe_v2(addr) {
                Some(200) if auth.is_none() => return Ok(registry),
                Some(401) if auth.is_some() => return Ok(registry),
                _ => {}
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(registry.dir.join("registry.log")).unwrap_or_default();
                bail!("docker-registry did not answer on {addr} within 30 s: {log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The registry's temporary directory (storage, config, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The manifest format [`push_busybox_image_as`] pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// An OCI image manifest with an uncompressed layer (fast to pull in debug builds).
    Oci,
    /// A Docker v2 schema 2 manifest with a gzip layer.
    DockerV2,
    /// An OCI image index with a linux/arm64 and a linux/amd64 image (in that order), with a gzip
    /// layer.
    OciIndex,
    /// A Docker manifest list with a linux/arm64 and a linux/amd64 image (in that order), with a
    /// gzip layer.
    DockerManifestList,
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The page busybox `httpd -h /var/www` serves from the test image.
pub const INDEX_HTML: &str = "capstan test page\n";

/// Applets installed as hard links to `/bin/busybox` (the others are symlinks), so that both
/// kinds of links are exercised.
const HARDLINKED_APPLETS: &[&str] = &["ls", "cat"];

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The busybox layer as an uncompressed tar. Deterministic, built once per process.
fn busybox_tar() -> anyhow::Result<&'static [u8]> {
    static TAR: OnceLock<Vec<u8>> = OnceLock::new();
    if let Some(tar) = TAR.get() {
        return Ok(tar);
    }
    let tar = build_busybox_tar()?;
    Ok(TAR.get_or_init(|| tar))
}

/// The busybox layer gzip-compressed (built only when needed: zlib in a debug build takes a
/// second for it, and as long again to decompress on every pull).
fn busybox_gzip() -> anyhow::Result<&'static [u8]> {
    static GZ: OnceLock<Vec<u8>> = OnceLock::new();
    if let Some(gz) = GZ.get() {
        return Ok(gz);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(busybox_tar()?)?;
    let gz = gz.finish()?;
    Ok(GZ.get_or_init(|| gz))
}

fn build_busybox_tar() -> anyhow::Result<Vec<u8>> {
    let busybox =
        std::fs::read("/bin/busybox").context("reading /bin/busybox (Debian package busybox-static)")?;
    let list = Command::new("/bin/busybox").arg("--list").output().context("busybox --list")?;
    let mut applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(String::from)
        .collect();
    for needed in ["sh", "sleep", "httpd"] {
        if !applets.iter().any(|a| a == needed) {
            applets.push(needed.into());
        }
    }
    applets.sort();
    applets.dedup();

    let mtime = 1_700_000_000;
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_size(size);
        h
    };
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("var", 0o755),
        ("var/www", 0o755),
    ] {
        b.append_data(&mut header(tar::EntryType::Directory, mode, 0), format!("{dir}/"), std::io::empty())?;
    }
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o755, busybox.len() as u64),
        "bin/busybox",
        &busybox[..],
    )?;
    for applet in &applets {
        let path = format!("bin/{applet}");
        if HARDLINKED_APPLETS.contains(&applet.as_str()) {
            b.append_link(&mut header(tar::EntryType::Link, 0o755, 0), &path, "bin/busybox")?;
        } else {
            b.append_link(&mut header(tar::EntryType::Symlink, 0o777, 0), &path, "busybox")?;
        }
    }
    let files: [(&str, &str, u32); 4] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
            0o644,
        ),
        ("etc/group", "root:x:0:\nnobody:x:65534:\n", 0o644),
        ("etc/hostname", "capstan-test\n", 0o644),
        ("var/www/index.html", INDEX_HTML, 0o644),
    ];
    for (path, content, mode) in files {
        b.append_data(
            &mut header(tar::EntryType::Regular, mode, content.len() as u64),
            path,
            content.as_bytes(),
        )?;
    }
    Ok(b.into_inner()?)
}

fn config_json(architecture: &str, diff_id: &str, cmd: &[&str]) -> Vec<u8> {
    serde_json::json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": architecture,
        "os": "linux",
        "config": {
            "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                format!("CAPSTAN_TEST_PLATFORM=linux/{architecture}"),
            ],
            "Cmd": cmd,
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": "2024-01-01T00:00:00Z", "created_by": "capstan testing: busybox-static" }],
    })
    .to_string()
    .into_bytes()
}

fn manifest_json(media_type: &str, config: (&str, &[u8]), layer: (&str, &str, usize)) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": { "mediaType": config.0, "digest": sha256_digest(config.1), "size": config.1.len() },
        "layers": [{ "mediaType": layer.0, "digest": layer.1, "size": layer.2 }],
    })
    .to_string()
    .into_bytes()
}

/// Builds the busybox test image (no network: `/bin/busybox` from busybox-static, a link per
/// applet, `/etc/passwd` with root and nobody (65534), `/etc/group`, `/tmp` 1777,
/// `/var/www/index.html` = [`INDEX_HTML`]; config `Cmd ["sh"]`, `Env PATH=...`) and pushes it to
/// `registry` as `name:tag` with an OCI manifest. Returns `127.0.0.1:PORT/name:tag`.
pub async fn push_busybox_image(
    registry: &Registry,
    name: &str,
    tag: &str,
    creds: Option<(&str, &str)>,
) -> anyhow::Result<String> {
    push_busybox_image_as(registry, name, tag, creds, ImageFormat::Oci).await
}

/// The busybox test image whose command serves `/var/www` on port 80 in the foreground
/// (`httpd -f -p 80`): a stand-in for the nginx image of the chart `helm create` writes, which
/// runs with no command of its own and is probed on `/` at its named port `http`.
pub async fn push_web_image(registry: &Registry, name: &str, tag: &str) -> anyhow::Result<String> {
    push_image(registry, name, tag, None, ImageFormat::Oci, &["httpd", "-f", "-p", "80", "-h", "/var/www"])
        .await
}

/// [`push_busybox_image`] with a choice of manifest format.
pub async fn push_busybox_image_as(
    registry: &Registry,
    name: &str,
    tag: &str,
    creds: Option<(&str, &str)>,
    format: ImageFormat,
) -> anyhow::Result<String> {
    push_image(registry, name, tag, creds, format, &["sh"]).await
}

async fn push_image(
    registry: &Registry,
    name: &str,
    tag: &str,
    creds: Option<(&str, &str)>,
    format: ImageFormat,
    cmd: &[&str],
) -> anyhow::Result<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let host = registry.host();
    let client = Client::try_from(ClientConfig { protocol: ClientProtocol::Http, ..Default::default() })?;
    if let Some((user, password)) = creds {
        client.store_auth_if_needed(&host, &RegistryAuth::Basic(user.into(), password.into())).await;
    }
    let by_tag = Reference::with_tag(host.clone(), name.into(), tag.into());
    let tar = busybox_tar()?;
    let diff_id = sha256_digest(tar);
    let docker = matches!(format, ImageFormat::DockerV2 | ImageFormat::DockerManifestList);
    let (layer, layer_type) = match format {
        ImageFormat::Oci => (tar, OCI_LAYER_TAR),
        ImageFormat::OciIndex => (busybox_gzip()?, OCI_LAYER_GZIP),
        ImageFormat::DockerV2 | ImageFormat::DockerManifestList => (busybox_gzip()?, DOCKER_LAYER),
    };
    let (manifest_type, config_type) =
        if docker { (DOCKER_MANIFEST, DOCKER_CONFIG) } else { (OCI_MANIFEST, OCI_CONFIG) };
    let layer_digest = sha256_digest(layer);
    client
        .push_blob(&by_tag, layer.to_vec(), &layer_digest)
        .await
        .with_context(|| format!("pushing the layer to {host}/{name}"))?;

    let mut images = Vec::new();
    let architectures: &[&str] = match format {
        ImageFormat::Oci | ImageFormat::DockerV2 => &["amd64"],
        ImageFormat::OciIndex | ImageFormat::DockerManifestList => &["arm64", "amd64"],
    };
    for arch in architectures {
        let config = config_json(arch, &diff_id, cmd);
        client
            .push_blob(&by_tag, config.clone(), &sha256_digest(&config))
            .await
            .with_context(|| format!("pushing the config to {host}/{name}"))?;
        let manifest =
            manifest_json(manifest_type, (config_type, &config), (layer_type, &layer_digest, layer.len()));
        images.push((*arch, manifest));
    }
    let (top, top_type) = if let [(_, manifest)] = &images[..] {
        (manifest.clone(), manifest_type)
    } else {
        let mut entries = Vec::new();
        for (arch, manifest) in &images {
            let digest = sha256_digest(manifest);
            let by_digest = Reference::with_digest(host.clone(), name.into(), digest.clone());
            client
                .push_manifest_raw(&by_digest, manifest.clone(), manifest_type.parse()?)
                .await
                .with_context(|| format!("pushing the {arch} manifest to {host}/{name}"))?;
            entries.push(serde_json::json!({
                "mediaType": manifest_type,
                "digest": digest,
                "size": manifest.len(),
                "platform": { "architecture": arch, "os": "linux" },
            }));
        }
        let index_type = if docker { DOCKER_LIST } else { OCI_INDEX };
        let index = serde_json::json!({ "schemaVersion": 2, "mediaType": index_type, "manifests": entries });
        (index.to_string().into_bytes(), index_type)
    };
    client
        .push_manifest_raw(&by_tag, top, top_type.parse()?)
        .await
        .with_context(|| format!("pushing {host}/{name}:{tag}"))?;
    Ok(format!("{host}/{name}:{tag}"))
}

/// A real `dnsmasq` (Debian's `dnsmasq-base`) on 127.0.0.1 and a free port, answering only
/// from a hosts file (no upstream, no /etc/hosts, authoritative for the domains given): the
/// "outside world" of cluster DNS tests and the peer of the DNS benchmark. Dropping it kills
/// the process and removes its directory.
pub struct Dnsmasq {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq answering `hosts` (`(name, ipv4)`), with NXDOMAIN for other names
    /// under `local_domains`; waits until it answers.
    pub fn start(hosts: &[(&str, &str)], local_domains: &[&str]) -> anyhow::Result<Dnsmasq> {
        let mut last_error = anyhow!("not started");
        for _ in 0..3 {
            match Self::try_start(hosts, local_domains) {
                Ok(d) => return Ok(d),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    fn try_start(hosts: &[(&str, &str)], local_domains: &[&str]) -> anyhow::Result<Dnsmasq> {
        let dir = temp_dir("dnsmasq")?;
        let hosts_file = dir.join("hosts");
        let text: String = hosts.iter().map(|(n, ip)| format!("{ip} {n}\n")).collect();
        std::fs::write(&hosts_file, text)?;
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = Command::new(dnsmasq_binary());
        cmd.args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts"])
            .arg(format!("--addn-hosts={}", hosts_file.display()))
            .args(["--listen-address=127.0.0.1", "--bind-interfaces", "--user=root", "--group=root"])
            // Answers carry a TTL of 30 s, as a real upstream's would (dnsmasq's default for
            // its hosts file is 0, which nothing may keep).
            .args(["--pid-file=", "--cache-size=1000", "--dns-forward-max=1000", "--local-ttl=30"])
            .arg(format!("--port={port}"));
        for d in local_domains {
            cmd.arg(format!("--local=/{d}/"));
        }
        let log = std::fs::File::create(dir.join("dnsmasq.log"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dnsmasq (Debian package dnsmasq-base)")?;
        let mut d = Dnsmasq { addr, child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        let probe = hosts.first().map(|(n, _)| *n).unwrap_or("localhost");
        loop {
            if let Some(status) = d.child.try_wait()? {
                let log = std::fs::read_to_string(d.dir.join("dnsmasq.log")).unwrap_or_default();
                bail!("dnsmasq exited ({status}): {log}");
            }
            if dns_query(addr, probe, hickory_proto::rr::RecordType::A, false).is_ok() {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("dnsmasq did not answer on {addr} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn dnsmasq_binary() -> &'static str {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("dnsmasq")
}

/// Asks `server` one question over UDP (or TCP) and returns the decoded answer
/// (2 s timeout).
pub fn dns_query(
    server: SocketAddr,
    name: &str,
    qtype: hickory_proto::rr::RecordType,
    tcp: bool,
) -> anyhow::Result<hickory_proto::op::Message> {
    use hickory_proto::op::{Message, Query};
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    let mut n = hickory_proto::rr::Name::from_ascii(name)?;
    n.set_fqdn(true);
    q.add_query(Query::query(n, qtype));
    let bytes = q.to_vec()?;
    let timeout = Duration::from_secs(2);
    let answer = if tcp {
        let mut s = TcpStream::connect_timeout(&server, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        let mut msg = (bytes.len() as u16).to_be_bytes().to_vec();
        msg.extend_from_slice(&bytes);
        s.write_all(&msg)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf)?;
        buf
    } else {
        let local: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
        let s = std::net::UdpSocket::bind(local)?;
        s.set_read_timeout(Some(timeout))?;
        s.send_to(&bytes, server)?;
        let mut buf = vec![0u8; 65535];
        let n = s.recv(&mut buf)?;
        buf.truncate(n);
        buf
    };
    let m = Message::from_vec(&answer).map_err(|e| anyhow!("undecodable answer from {server}: {e}"))?;
    if m.metadata.id != q.metadata.id {
        bail!("answer from {server} has id {} for question {}", m.metadata.id, q.metadata.id);
    }
    Ok(m)
}
