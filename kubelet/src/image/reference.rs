//! Image references: normalization, registry mirrors, plain HTTP or HTTPS.

use std::net::IpAddr;

use oci_client::Reference;

use super::{PullError, RegistryConfig};

/// The normalized form of an image reference, as the node reports it: docker.io short names
/// get their registry, `library/` namespace and `:latest` tag
/// (`busybox` → `docker.io/library/busybox:latest`); a reference with a digest keeps it.
pub fn normalize_reference(image: &str) -> Result<String, PullError> {
    parse(image).map(|r| r.whole())
}

/// Parses and normalizes a reference.
pub(crate) fn parse(image: &str) -> Result<Reference, PullError> {
    let reference = image
        .parse::<Reference>()
        .map_err(|e| PullError::invalid(image, format!("invalid image reference: {e}")))?;
    if reference.repository().bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(PullError::invalid(image, "invalid image reference: repository name must be lowercase"));
    }
    Ok(reference)
}

/// The tag and digest written in a reference, without any defaulting.
pub(crate) fn tag_and_digest(image: &str) -> (Option<&str>, Option<&str>) {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    let tag = last.split_once(':').map(|(_, tag)| tag);
    (tag, digest)
}

/// `<registry>/<repository>` of a reference, e.g. `docker.io/library/busybox`.
pub(crate) fn repository_name(reference: &Reference) -> String {
    format!("{}/{}", reference.registry(), reference.repository())
}

/// Where a reference is pulled from.
#[derive(Debug, Clone)]
pub(crate) struct PullTarget {
    /// The reference to request from the registry (the mirror's, when mirrored).
    pub reference: Reference,
    /// The `host[:port]` connected to.
    pub host: String,
    /// Plain HTTP instead of HTTPS.
    pub plain_http: bool,
}

/// Applies the mirrors of `config` and decides between plain HTTP and HTTPS.
pub(crate) fn pull_target(reference: &Reference, config: &RegistryConfig) -> PullTarget {
    let registry = canonical_host(reference.registry());
    let mirrored = config.mirrors.iter().find(|m| canonical_host(&m.registry) == registry).map(|m| {
        let endpoint = m.endpoint.trim_end_matches('/').to_string();
        let endpoint = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"))
            .unwrap_or(&endpoint)
            .to_string();
        match (reference.tag(), reference.digest()) {
            (_, Some(digest)) => {
                Reference::with_digest(endpoint, reference.repository().into(), digest.into())
            }
            (tag, None) => {
                Reference::with_tag(endpoint, reference.repository().into(), tag.unwrap_or("latest").into())
            }
        }
    });
    let reference = mirrored.unwrap_or_else(|| reference.clone());
    let host = reference.resolve_registry().to_string();
    let plain_http = is_plain_http(&host, &config.insecure);
    PullTarget { reference, host, plain_http }
}

/// Splits `host[:port]` (or `[v6]:port`) into its host part.
fn host_part(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Whether a registry is reached over plain HTTP: loopback addresses, `localhost`, and the
/// registries listed as insecure (`host:port` exactly, or `host` for any port).
pub(crate) fn is_plain_http(host: &str, insecure: &[String]) -> bool {
    let name = host_part(host);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
        return true;
    }
    insecure.iter().any(|i| {
        let i = canonical_host(i);
        i == host || (host_part(&i) == i && i == name)
    })
}

/// The registry host a credentials key or registry name stands for: scheme and path removed,
/// Docker Hub's aliases (`index.docker.io`, `registry-1.docker.io`) mapped to `docker.io`.
pub(crate) fn canonical_host(key: &str) -> String {
    let key = key.trim();
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".into(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Mirror;

    #[test]
    fn normalizes_like_docker() {
        let n = |s: &str| normalize_reference(s).unwrap();
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(n("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("someone/app:v2"), "docker.io/someone/app:v2");
        assert_eq!(n("index.docker.io/library/busybox:1"), "docker.io/library/busybox:1");
        assert_eq!(n("127.0.0.1:5000/busybox:1"), "127.0.0.1:5000/busybox:1");
        assert_eq!(n("localhost/busybox"), "localhost/busybox:latest");
        assert_eq!(n("quay.io/a/b/c:t"), "quay.io/a/b/c:t");
        let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        assert_eq!(n(&format!("busybox@{digest}")), format!("docker.io/library/busybox@{digest}"));
        let pinned = parse(&format!("127.0.0.1:5000/x:1@{digest}")).unwrap();
        assert_eq!(pinned.digest(), Some(digest.as_str()));
        for bad in ["", "UPPER/case", "busybox@sha256:short", "a b", "busybox:"] {
            assert!(matches!(normalize_reference(bad), Err(PullError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn tag_and_digest_without_defaults() {
        assert_eq!(tag_and_digest("busybox"), (None, None));
        assert_eq!(tag_and_digest("127.0.0.1:5000/busybox"), (None, None));
        assert_eq!(tag_and_digest("127.0.0.1:5000/busybox:1"), (Some("1"), None));
        assert_eq!(tag_and_digest("b@sha256:ab"), (None, Some("sha256:ab")));
    }

    #[test]
    fn plain_http_for_loopback_and_insecure() {
        let insecure = vec!["reg.example:5000".to_string(), "plain.example".to_string()];
        assert!(is_plain_http("127.0.0.1:5000", &[]));
        assert!(is_plain_http("127.3.4.5", &[]));
        assert!(is_plain_http("localhost:5000", &[]));
        assert!(is_plain_http("[::1]:5000", &[]));
        assert!(!is_plain_http("10.0.0.1:5000", &[]));
        assert!(!is_plain_http("index.docker.io", &insecure));
        assert!(is_plain_http("reg.example:5000", &insecure));
        assert!(!is_plain_http("reg.example:5001", &insecure));
        assert!(is_plain_http("plain.example:8080", &insecure));
    }

    #[test]
    fn mirrors_rewrite_the_registry() {
        let config = RegistryConfig {
            mirrors: vec![Mirror { registry: "docker.io".into(), endpoint: "127.0.0.1:5000".into() }],
            insecure: vec![],
        };
        let t = pull_target(&parse("busybox:1").unwrap(), &config);
        assert_eq!(t.reference.whole(), "127.0.0.1:5000/library/busybox:1");
        assert_eq!(t.host, "127.0.0.1:5000");
        assert!(t.plain_http);
        let t = pull_target(&parse("quay.io/x/y:1").unwrap(), &config);
        assert_eq!(t.host, "quay.io");
        assert!(!t.plain_http);
        let t = pull_target(&parse("busybox").unwrap(), &RegistryConfig::default());
        assert_eq!(t.host, "index.docker.io");
    }

    #[test]
    fn canonical_hosts() {
        assert_eq!(canonical_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(canonical_host("index.docker.io/v1/"), "docker.io");
        assert_eq!(canonical_host("http://127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(canonical_host("Quay.io"), "quay.io");
    }
}
