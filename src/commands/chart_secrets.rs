//! `capstan chart-secrets`: the Secrets a cluster deployed by the Helm chart (`chart/`)
//! needs, written as one `v1` `List` for `kubectl apply`.
//!
//! The chart's pre-install/pre-upgrade Job runs this in an init container, with the Secrets
//! of an earlier install mounted (optional volumes) under `--existing DIR/<secret>/<key>`,
//! and `kubectl apply --server-side` on the result. What exists is kept (the CA, every key,
//! every bus credential); what is missing is made; the serving certificates are issued again
//! when they lack a name asked for now (a new `gateway.extraSANs`). The material is made by
//! the same code as `capstan up` and `capstan bus-config`: [`capstan_gateway::pki::Pki`],
//! the ServiceAccount key of [`capstan_gateway::tokens::TokenSigner`], the encryption
//! configuration of [`super::encryption`] and the credentials of [`super::bus_config`].
//!
//! Secrets (`<release>` is `--release`):
//!
//! | Secret | keys | used by |
//! |---|---|---|
//! | `<release>-pki` | `ca.crt`, `ca.key`, `server.crt`, `server.key`, `admin.crt`, `admin.key`, `sa.key` | gateways (`--pki-dir`) |
//! | `<release>-encryption` | `encryption.yaml` | gateways (`encryptionConfig`) |
//! | `<release>-admin-kubeconfig` | `kubeconfig` | people |
//! | `<release>-bus-<role>` | `<role>.creds`, `ca.crt` | each role: `gateway`, `controllers`, `scheduler`, `sim-nodes` |
//! | `<release>-bus-nodes` | `node.<name>.creds` per node, `ca.crt` | node agents |
//! | `<release>-nats-server` | `server.crt`, `server.key`, `ca.crt`, `auth.conf` | NATS servers |

use super::bus_config;
use super::config::FileConfig;
use anyhow::{bail, Context};
use base64::Engine;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Flags of `capstan chart-secrets`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The Helm release: Secrets are named `<release>-...`.
    #[arg(long)]
    release: String,
    /// The namespace the Secrets go to.
    #[arg(long)]
    namespace: String,
    /// The nested cluster's Service range (the gateways' `serviceCIDR`): its first address
    /// is the `kubernetes` Service's, which the serving certificate must carry.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: String,
    /// The nested cluster's DNS domain (the gateways' `clusterDomain`).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Extra names and addresses of the API's serving certificate (comma-separated).
    #[arg(long, value_delimiter = ',')]
    api_names: Vec<String>,
    /// The API's URL written into the admin kubeconfig.
    #[arg(long)]
    api_server: String,
    /// Names of the NATS servers' certificate (comma-separated).
    #[arg(long, value_delimiter = ',')]
    nats_names: Vec<String>,
    /// Nodes that get a bus credential each (comma-separated).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// Where the Secrets of an earlier run are mounted: `DIR/<secret>/<key>`.
    #[arg(long)]
    existing: Option<PathBuf>,
    /// Labels for every Secret (`key=value`, comma-separated).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// The file to write the `List` to (`-`: standard output).
    #[arg(long)]
    out: PathBuf,
}

/// The roles with a Secret of their own (the nodes share one).
const ROLES: [&str; 4] = ["gateway", "controllers", "scheduler", "sim-nodes"];

const PKI_KEYS: [&str; 7] =
    ["ca.crt", "ca.key", "server.crt", "server.key", "admin.crt", "admin.key", "sa.key"];

/// Copies `existing/<secret>/<key>` to `to/<key>` for each key that exists there.
fn restore(existing: Option<&Path>, secret: &str, keys: &[String], to: &Path) -> anyhow::Result<()> {
    let Some(dir) = existing.map(|e| e.join(secret)) else { return Ok(()) };
    for key in keys {
        let from = dir.join(key);
        if from.is_file() {
            std::fs::copy(&from, to.join(key))
                .with_context(|| format!("failed to copy {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(())
}

/// The `.creds` files under `existing/<secret>`.
fn existing_creds(existing: Option<&Path>, secret: &str) -> Vec<String> {
    let Some(dir) = existing.map(|e| e.join(secret)) else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".creds") && !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

fn read_all(dir: &Path, keys: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    keys.iter()
        .map(|k| {
            let p = dir.join(k);
            let v = std::fs::read(&p).with_context(|| format!("failed to read {}", p.display()))?;
            Ok((k.clone(), base64::engine::general_purpose::STANDARD.encode(v)))
        })
        .collect()
}

fn secret(
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    data: BTreeMap<String, String>,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "type": "Opaque",
        "data": data,
    })
}

fn strings(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut labels = BTreeMap::new();
    for l in args.labels.iter().filter(|l| !l.is_empty()) {
        let Some((k, v)) = l.split_once('=') else { bail!("invalid --labels entry {l:?}: want key=value") };
        labels.insert(k.to_string(), v.to_string());
    }
    let file = FileConfig {
        service_cidr: Some(args.service_cidr.clone()),
        cluster_domain: Some(args.cluster_domain.clone()),
        ..FileConfig::default()
    };
    let network = file.cluster_network()?;
    let existing = args.existing.as_deref();
    let rel = &args.release;
    let work = tempfile::Builder::new()
        .prefix("capstan-chart-secrets-")
        .tempdir()
        .context("failed to make a work directory")?;

    // The PKI: the same files, checks and names as a gateway's `load_or_create`.
    let pki_dir = work.path().join("pki");
    std::fs::create_dir_all(&pki_dir).with_context(|| format!("failed to create {}", pki_dir.display()))?;
    restore(existing, &format!("{rel}-pki"), &strings(&PKI_KEYS), &pki_dir)?;
    // What a gateway listening on 0.0.0.0 checks its certificate for, plus the names asked for.
    let listen: std::net::SocketAddr = "0.0.0.0:6443".parse().context("the listen address")?;
    let mut hosts = file.serving_hosts(listen, &network);
    hosts.extend(args.api_names.iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()));
    let pki = capstan_gateway::pki::Pki::load_or_create(&pki_dir, &hosts)?;
    let issuer = format!("https://kubernetes.default.svc.{}", network.cluster_domain);
    capstan_gateway::tokens::TokenSigner::load_or_create(&pki_dir, &issuer)
        .map_err(|e| anyhow::anyhow!("failed to make the ServiceAccount key: {e}"))?;

    // Encryption at rest: one key for every gateway.
    let enc_dir = work.path().join("encryption");
    std::fs::create_dir_all(&enc_dir).with_context(|| format!("failed to create {}", enc_dir.display()))?;
    restore(existing, &format!("{rel}-encryption"), &strings(&["encryption.yaml"]), &enc_dir)?;
    if !enc_dir.join("encryption.yaml").exists() {
        super::encryption::create_default(&enc_dir.join("encryption.yaml"))?;
    }

    // The bus: `bus-config` into a directory holding the credentials already issued.
    let bus_dir = work.path().join("bus");
    std::fs::create_dir_all(&bus_dir).with_context(|| format!("failed to create {}", bus_dir.display()))?;
    for role in ROLES {
        restore(existing, &format!("{rel}-bus-{role}"), &[format!("{role}.creds")], &bus_dir)?;
    }
    let node_creds = existing_creds(existing, &format!("{rel}-bus-nodes"));
    restore(existing, &format!("{rel}-bus-nodes"), &node_creds, &bus_dir)?;
    let written = bus_config::write(bus_config::Args {
        out: bus_dir.clone(),
        data_dir: work.path().to_path_buf(),
        nodes: args.nodes.clone(),
        integrators: 0,
        integrator_names: Vec::new(),
        listen: "0.0.0.0:4222".into(),
        server_names: args.nats_names.clone(),
        store_dir: Some(work.path().join("jetstream")),
    })?;
    let auth = capstan_bus::access::render_authorization(&written.users, capstan_bus::subjects::EVENT_STREAM);

    let ns = &args.namespace;
    let mut items = vec![
        secret(&format!("{rel}-pki"), ns, &labels, read_all(&pki_dir, &strings(&PKI_KEYS))?),
        secret(
            &format!("{rel}-encryption"),
            ns,
            &labels,
            read_all(&enc_dir, &strings(&["encryption.yaml"]))?,
        ),
        secret(
            &format!("{rel}-admin-kubeconfig"),
            ns,
            &labels,
            BTreeMap::from([(
                "kubeconfig".to_string(),
                base64::engine::general_purpose::STANDARD.encode(pki.admin_kubeconfig(&args.api_server)),
            )]),
        ),
    ];
    for role in ROLES {
        let data = read_all(&bus_dir, &[format!("{role}.creds"), "ca.crt".into()])?;
        items.push(secret(&format!("{rel}-bus-{role}"), ns, &labels, data));
    }
    let mut node_keys: Vec<String> = written
        .users
        .iter()
        .filter(|(r, _)| matches!(r, capstan_bus::access::Role::Node(_)))
        .map(|(r, _)| format!("{}.creds", r.identity()))
        .collect();
    node_keys.push("ca.crt".into());
    items.push(secret(&format!("{rel}-bus-nodes"), ns, &labels, read_all(&bus_dir, &node_keys)?));
    let mut nats = read_all(&bus_dir, &strings(&["server.crt", "server.key", "ca.crt"]))?;
    nats.insert("auth.conf".into(), base64::engine::general_purpose::STANDARD.encode(auth));
    items.push(secret(&format!("{rel}-nats-server"), ns, &labels, nats));

    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let text = serde_json::to_string_pretty(&list).context("failed to encode the Secrets")?;
    if args.out == Path::new("-") {
        println!("{text}");
    } else {
        write_private(&args.out, &text)?;
        eprintln!(
            "capstan chart-secrets: wrote {} Secrets for release {rel} to {} ({} new bus credentials)",
            list["items"].as_array().map_or(0, Vec::len),
            args.out.display(),
            written.created
        );
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to write {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("failed to write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(out: &Path, existing: Option<PathBuf>, api_names: &[&str]) -> Args {
        Args {
            release: "r".into(),
            namespace: "ns".into(),
            service_cidr: "10.96.0.0/12".into(),
            cluster_domain: "cluster.local".into(),
            api_names: api_names.iter().map(|s| s.to_string()).collect(),
            api_server: "https://r-gateway.ns.svc:443".into(),
            nats_names: vec!["r-nats.ns.svc".into()],
            nodes: vec!["n1".into()],
            existing,
            labels: vec!["app.kubernetes.io/instance=r".into()],
            out: out.to_path_buf(),
        }
    }

    fn list(path: &Path) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn data<'a>(l: &'a serde_json::Value, name: &str) -> &'a serde_json::Map<String, serde_json::Value> {
        l["items"].as_array().unwrap().iter().find(|s| s["metadata"]["name"] == name).unwrap()["data"]
            .as_object()
            .unwrap()
    }

    fn decode(v: &serde_json::Value) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()
    }

    /// Mounts a List's Secrets as the chart's Job does: `dir/<secret>/<key>`.
    fn mount(l: &serde_json::Value, dir: &Path) {
        for s in l["items"].as_array().unwrap() {
            let d = dir.join(s["metadata"]["name"].as_str().unwrap());
            std::fs::create_dir_all(&d).unwrap();
            for (k, v) in s["data"].as_object().unwrap() {
                std::fs::write(d.join(k), decode(v)).unwrap();
            }
        }
    }

    #[test]
    fn a_second_run_keeps_every_key_and_reissues_only_what_lacks_a_new_name() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.json");
        run(args(&first, None, &["r-gateway.ns.svc"])).unwrap();
        let a = list(&first);
        let names: Vec<&str> =
            a["items"].as_array().unwrap().iter().map(|s| s["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "r-pki",
                "r-encryption",
                "r-admin-kubeconfig",
                "r-bus-gateway",
                "r-bus-controllers",
                "r-bus-scheduler",
                "r-bus-sim-nodes",
                "r-bus-nodes",
                "r-nats-server"
            ]
        );
        assert_eq!(a["items"][0]["metadata"]["labels"]["app.kubernetes.io/instance"], "r");
        assert!(data(&a, "r-bus-nodes").contains_key("node.n1.creds"));
        let auth = String::from_utf8(decode(&data(&a, "r-nats-server")["auth.conf"])).unwrap();
        assert!(auth.starts_with("authorization {"), "{auth}");
        assert_eq!(auth.matches("nkey:").count(), 5, "four roles and one node: {auth}");
        let kubeconfig = String::from_utf8(decode(&data(&a, "r-admin-kubeconfig")["kubeconfig"])).unwrap();
        assert!(kubeconfig.contains("server: https://r-gateway.ns.svc:443"), "{kubeconfig}");

        // Mounted back, with a new name asked for: keys and credentials stay, the serving
        // certificate is issued again.
        let mounted = dir.path().join("existing");
        mount(&a, &mounted);
        let second = dir.path().join("second.json");
        run(args(&second, Some(mounted), &["r-gateway.ns.svc", "192.0.2.7"])).unwrap();
        let b = list(&second);
        for key in ["ca.crt", "ca.key", "sa.key", "admin.key"] {
            assert_eq!(data(&a, "r-pki")[key], data(&b, "r-pki")[key], "{key} is kept");
        }
        assert_ne!(data(&a, "r-pki")["server.crt"], data(&b, "r-pki")["server.crt"]);
        assert_eq!(data(&a, "r-encryption"), data(&b, "r-encryption"));
        assert_eq!(
            data(&a, "r-bus-controllers")["controllers.creds"],
            data(&b, "r-bus-controllers")["controllers.creds"]
        );
        assert_eq!(data(&a, "r-bus-nodes")["node.n1.creds"], data(&b, "r-bus-nodes")["node.n1.creds"]);

        // What a gateway checks at start: the certificate covers its names, so it can run
        // on the Secret mounted read-only and writes nothing.
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        for (k, v) in data(&b, "r-pki") {
            std::fs::write(pki.join(k), decode(v)).unwrap();
        }
        let file = FileConfig::default();
        let hosts = file.serving_hosts("0.0.0.0:6443".parse().unwrap(), &file.cluster_network().unwrap());
        let before = std::fs::read(pki.join("server.crt")).unwrap();
        capstan_gateway::pki::Pki::load_or_create(&pki, &hosts).unwrap();
        assert_eq!(std::fs::read(pki.join("server.crt")).unwrap(), before, "nothing is reissued");
    }
}
