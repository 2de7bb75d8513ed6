//! `capstan bus-config`: a ready nats-server configuration and one credential per role.
//!
//! Writes into `--out DIR`:
//! - `nats.conf`: TLS on the client port, JetStream with its store directory, and one user
//!   nkey per role with the subject permissions of [`capstan_bus::access`];
//! - `ca.crt` (the cluster CA, to verify the server), `server.crt`, `server.key`;
//! - `<identity>.creds` for each role (the user nkey seed, mode 0600): `gateway`,
//!   `controllers`, `scheduler`, `sim-nodes`, `node.<name>` (dots as `_`) for each node,
//!   and one per integrator (read-only).
//!
//! The directory is the source of truth: a credential already there is kept (its seed is
//! reused) and stays in `nats.conf`, so running it again with another `--nodes` adds those
//! nodes; deleting a `.creds` file and running it again revokes that credential.

use anyhow::{bail, Context};
use capstan_bus::access::{self, Role, ServerConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Flags of `capstan bus-config`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory to write `nats.conf`, the certificates and the credentials into.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// The cluster's data directory: the CA under `<data-dir>/pki` signs the server
    /// certificate (it is created when missing).
    #[arg(long, env = "CAPSTAN_DATA_DIR", default_value = ".capstan")]
    pub(crate) data_dir: PathBuf,
    /// Node names that get a credential each (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) nodes: Vec<String>,
    /// How many read-only integrator credentials (`integrator-1.creds`, ...).
    #[arg(long, default_value_t = 1)]
    pub(crate) integrators: usize,
    /// Named read-only integrator credentials (comma-separated), besides `--integrators`.
    #[arg(long, value_delimiter = ',')]
    pub(crate) integrator_names: Vec<String>,
    /// The client port's address.
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub(crate) listen: String,
    /// Extra DNS names or addresses the server certificate must carry (comma-separated),
    /// e.g. the name clients use to reach the server.
    #[arg(long, value_delimiter = ',')]
    pub(crate) server_names: Vec<String>,
    /// JetStream's store directory (default `<out>/jetstream`).
    #[arg(long)]
    pub(crate) store_dir: Option<PathBuf>,
}

fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("failed to write {}", path.display()))?;
    f.write_all(contents.as_bytes()).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}

/// The role a credential file's stem stands for, if it is one.
fn role_of_stem(stem: &str) -> Option<Role> {
    Some(match stem {
        "gateway" => Role::Gateway,
        "controllers" => Role::Controllers,
        "scheduler" => Role::Scheduler,
        "sim-nodes" => Role::SimNodes,
        _ => match stem.strip_prefix("node.") {
            Some(token) => {
                let name = token.replace('_', ".");
                if !access::valid_node_name(&name) {
                    return None;
                }
                Role::Node(name)
            }
            None if access::valid_integrator_name(stem) => Role::Integrator(stem.to_string()),
            None => return None,
        },
    })
}

/// The seed of an existing credential, or a new one written to `path`.
fn credential(path: &Path) -> anyhow::Result<(nkeys::KeyPair, bool)> {
    if path.exists() {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
        let Some(capstan_bus::NatsCredentials::NkeySeed(seed)) = capstan_bus::NatsCredentials::parse(&text)
        else {
            bail!("{} holds no user nkey seed; delete it to issue a new credential", path.display());
        };
        let kp = nkeys::KeyPair::from_seed(&seed)
            .map_err(|e| anyhow::anyhow!("invalid nkey seed in {}: {e}", path.display()))?;
        return Ok((kp, false));
    }
    let kp = nkeys::KeyPair::new_user();
    let seed = kp.seed().map_err(|e| anyhow::anyhow!("failed to encode an nkey seed: {e}"))?;
    write_file(path, &format!("{seed}\n"), true)?;
    Ok((kp, true))
}

/// What [`write`] produced: the roles with a credential, each with its public nkey.
pub(crate) struct Written {
    /// The roles, by identity.
    pub users: Vec<(Role, String)>,
    /// How many credentials were new.
    pub created: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let out = args.out.clone();
    let written = write(args)?;
    println!(
        "wrote {} with {} credentials ({} new): {}",
        out.join("nats.conf").display(),
        written.users.len(),
        written.created,
        written.users.iter().map(|(r, _)| format!("{}.creds", r.identity())).collect::<Vec<_>>().join(", ")
    );
    println!("start the server with: nats-server -c {}", out.join("nats.conf").display());
    Ok(())
}

/// Writes the configuration, certificates and credentials `args` ask for into `args.out`.
pub(crate) fn write(args: Args) -> anyhow::Result<Written> {
    let mut roles: BTreeMap<String, Role> = BTreeMap::new();
    for role in [Role::Gateway, Role::Controllers, Role::Scheduler, Role::SimNodes] {
        roles.insert(role.identity(), role);
    }
    for n in args.nodes.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if !access::valid_node_name(n) {
            bail!("invalid node name {n:?}: want a DNS subdomain (lowercase letters, digits, '-' and '.')");
        }
        let role = Role::Node(n.to_string());
        roles.insert(role.identity(), role);
    }
    let mut integrators: Vec<String> = (1..=args.integrators).map(|i| format!("integrator-{i}")).collect();
    integrators.extend(args.integrator_names.iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()));
    for n in integrators {
        if !access::valid_integrator_name(&n) {
            bail!("invalid integrator name {n:?}: want letters, digits and '-', not a role's name");
        }
        roles.insert(n.clone(), Role::Integrator(n));
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("failed to create {}", args.out.display()))?;
    let out = args.out.canonicalize().with_context(|| format!("failed to resolve {}", args.out.display()))?;
    // Credentials already in the directory stay valid.
    for entry in std::fs::read_dir(&out).with_context(|| format!("failed to list {}", out.display()))? {
        let entry = entry.with_context(|| format!("failed to list {}", out.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(role) = name.strip_suffix(".creds").and_then(role_of_stem) {
            roles.insert(role.identity(), role);
        }
    }

    let (host, _port) = args
        .listen
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        .with_context(|| format!("invalid --listen {:?} (want HOST:PORT)", args.listen))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let pki = capstan_gateway::pki::Pki::load_or_create(&args.data_dir.join("pki"), &[])?;
    let mut names: Vec<String> = args.server_names.iter().map(|s| s.trim().to_string()).collect();
    names.push(host);
    let (cert, key) =
        capstan_gateway::pki::issue_server_cert(&pki.ca_cert, &pki.ca_key, "capstan-nats", &names)?;
    write_file(&out.join("ca.crt"), &pki.ca_cert, false)?;
    write_file(&out.join("server.crt"), &cert, false)?;
    write_file(&out.join("server.key"), &key, true)?;

    let mut users = Vec::new();
    let mut created = 0;
    for (identity, role) in &roles {
        let (kp, new) = credential(&out.join(format!("{identity}.creds")))?;
        created += usize::from(new);
        users.push((role.clone(), kp.public_key()));
    }
    let store_dir = args.store_dir.unwrap_or_else(|| out.join("jetstream"));
    std::fs::create_dir_all(&store_dir)
        .with_context(|| format!("failed to create {}", store_dir.display()))?;
    let store_dir = store_dir.canonicalize().unwrap_or(store_dir);
    let conf = access::render_server_config(&ServerConfig {
        listen: args.listen.clone(),
        cert_file: out.join("server.crt").display().to_string(),
        key_file: out.join("server.key").display().to_string(),
        store_dir: store_dir.display().to_string(),
        stream: capstan_bus::subjects::EVENT_STREAM.to_string(),
        users: users.clone(),
    });
    write_file(&out.join("nats.conf"), &conf, false)?;
    Ok(Written { users, created })
}
