//! The cluster's certificates: a CA, the serving certificate and the admin client
//! certificate, created once under `<data-dir>/pki` and reused on later starts.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// Errors while creating or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// File I/O failed.
    #[error("failed to {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error("failed to {what}: {source}")]
    Cert {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A PEM file held no usable item.
    #[error("no {what} found in {path}")]
    Missing {
        /// What was missing.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
}

/// PEM-encoded material of the cluster.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The directory holding the files.
    pub dir: PathBuf,
    /// CA certificate (PEM).
    pub ca_cert: String,
    /// CA key (PEM).
    pub ca_key: String,
    /// Serving certificate (PEM).
    pub server_cert: String,
    /// Serving key (PEM).
    pub server_key: String,
    /// Admin client certificate (PEM).
    pub admin_cert: String,
    /// Admin client key (PEM).
    pub admin_key: String,
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io { what: "read", path: path.into(), source })
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    std::fs::write(path, contents).map_err(|source| PkiError::Io {
        what: "write",
        path: path.into(),
        source,
    })?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|source| PkiError::Io { what: "set permissions on", path: path.into(), source })?;
    }
    Ok(())
}

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Cert { what, source }
}

/// Signs a client certificate for `user` in `groups` with the CA.
pub fn issue_client_cert(
    ca_cert: &str,
    ca_key: &str,
    user: &str,
    groups: &[&str],
) -> Result<(String, String), PkiError> {
    let ca_key = KeyPair::from_pem(ca_key).map_err(cert_err("parse the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, ca_key).map_err(cert_err("parse the CA certificate"))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(cert_err("build client certificate"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, user);
    for g in groups {
        dn.push(DnType::OrganizationName, *g);
    }
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key = KeyPair::generate().map_err(cert_err("generate client key"))?;
    let cert = params.signed_by(&key, &issuer).map_err(cert_err("sign client certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Signs a serving certificate named `common_name` with the CA, valid for `localhost`,
/// `127.0.0.1`, `::1` and each of `hosts` (DNS names or IP addresses); returns the
/// certificate and key (PEM).
pub fn issue_server_cert(
    ca_cert: &str,
    ca_key: &str,
    common_name: &str,
    hosts: &[String],
) -> Result<(String, String), PkiError> {
    let key_pair = KeyPair::from_pem(ca_key).map_err(cert_err("parse the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, key_pair).map_err(cert_err("parse the CA certificate"))?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    for h in hosts {
        if !names.contains(h) && !h.is_empty() && h != "0.0.0.0" {
            names.push(h.clone());
        }
    }
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(cert_err("build serving certificate"))?;
    params.subject_alt_names = names
        .iter()
        .filter_map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Some(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().ok().map(SanType::DnsName),
        })
        .collect();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key = KeyPair::generate().map_err(cert_err("generate serving key"))?;
    let cert = params.signed_by(&key, &issuer).map_err(cert_err("sign serving certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Whether the PEM certificate's subject alternative names include every one of `hosts`.
fn covers(pem: &str, hosts: &[String]) -> bool {
    let Some(Ok(der)) = rustls_pemfile::certs(&mut pem.as_bytes()).next() else { return false };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else { return false };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return false };
    let mut names = Vec::new();
    for n in &san.value.general_names {
        match n {
            x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(b) => {
                let ip = match b.len() {
                    4 => <[u8; 4]>::try_from(*b).map(std::net::IpAddr::from).ok(),
                    16 => <[u8; 16]>::try_from(*b).map(std::net::IpAddr::from).ok(),
                    _ => None,
                };
                names.extend(ip.map(|i| i.to_string()));
            }
            _ => {}
        }
    }
    hosts.iter().filter(|h| !h.is_empty() && h.as_str() != "0.0.0.0").all(|h| names.contains(h))
}

/// The names the serving certificate carries for in-cluster clients: the `kubernetes`
/// Service's DNS names in `cluster_domain` and its ClusterIP.
pub fn kubernetes_service_names(cluster_domain: &str, service_ip: std::net::Ipv4Addr) -> Vec<String> {
    vec![
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{cluster_domain}"),
        service_ip.to_string(),
    ]
}

impl Pki {
    /// Loads the PKI from `dir`, creating what is missing. `hosts` are the extra names and
    /// addresses the serving certificate must cover (besides localhost and 127.0.0.1).
    pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<Pki, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            what: "create",
            path: dir.into(),
            source,
        })?;
        let p = |f: &str| dir.join(f);
        if !p("ca.crt").exists() || !p("ca.key").exists() {
            let mut params =
                CertificateParams::new(Vec::<String>::new()).map_err(cert_err("build CA certificate"))?;
            params.distinguished_name.push(DnType::CommonName, "capstan-ca");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2036, 1, 1);
            let key = KeyPair::generate().map_err(cert_err("generate CA key"))?;
            let cert = params.self_signed(&key).map_err(cert_err("self-sign CA certificate"))?;
            write(&p("ca.key"), &key.serialize_pem(), true)?;
            write(&p("ca.crt"), &cert.pem(), false)?;
            // A new CA invalidates the leaf certificates.
            for f in ["server.crt", "server.key", "admin.crt", "admin.key"] {
                let _ = std::fs::remove_file(p(f));
            }
        }
        let ca_cert = read(&p("ca.crt"))?;
        let ca_key = read(&p("ca.key"))?;
        // A serving certificate that lacks a name asked for now (a new listen address, the
        // `kubernetes` Service's names after an upgrade) is issued again.
        if p("server.crt").exists() && !covers(&read(&p("server.crt"))?, hosts) {
            let _ = std::fs::remove_file(p("server.crt"));
        }
        if !p("server.crt").exists() || !p("server.key").exists() {
            let mut names = Vec::new();
            if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
                let h = h.trim();
                if !h.is_empty() {
                    names.push(h.to_string());
                }
            }
            names.extend(hosts.iter().cloned());
            let (cert, key) = issue_server_cert(&ca_cert, &ca_key, "capstan-apiserver", &names)?;
            write(&p("server.key"), &key, true)?;
            write(&p("server.crt"), &cert, false)?;
        }
        if !p("admin.crt").exists() || !p("admin.key").exists() {
            let (cert, key) = issue_client_cert(&ca_cert, &ca_key, "admin", &["system:masters"])?;
            write(&p("admin.key"), &key, true)?;
            write(&p("admin.crt"), &cert, false)?;
        }
        Ok(Pki {
            dir: dir.to_path_buf(),
            server_cert: read(&p("server.crt"))?,
            server_key: read(&p("server.key"))?,
            admin_cert: read(&p("admin.crt"))?,
            admin_key: read(&p("admin.key"))?,
            ca_cert,
            ca_key,
        })
    }

    /// A kubeconfig for the admin user against `server` (an `https://` URL).
    pub fn admin_kubeconfig(&self, server: &str) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: capstan\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: capstan\n  context:\n    cluster: capstan\n    user: admin\n    namespace: default\ncurrent-context: capstan\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\npreferences: {{}}\n",
            b64(&self.ca_cert),
            b64(&self.admin_cert),
            b64(&self.admin_key),
        )
    }
}
