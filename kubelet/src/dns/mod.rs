//! Cluster DNS, served by every node agent (as NodeLocal DNSCache does upstream, but with
//! the records themselves): the agent follows Services and EndpointSlices through its
//! informers into an [`records::Index`], answers names under the cluster domain (and the
//! reverse names of ClusterIPs and headless endpoints) from it, and forwards every other
//! name to the node's resolvers. Answers come from the local cache, so they keep coming
//! while the API is down; names under the cluster domain are never forwarded.
//!
//! * [`records`]: the records and the lookup (Kubernetes DNS specification, CoreDNS's
//!   NXDOMAIN/NODATA and TTL of 5 s);
//! * [`handler`]: one message in, an answer (or "forward") out; never panics on input;
//! * [`forward`]: raw-packet forwarding with id rewriting, retries and SERVFAIL;
//! * [`server`]: the address made local on the agent's interface, UDP and TCP port 53;
//! * [`resolv`]: the node's resolv.conf and each pod's by `dnsPolicy`.
//!
//! ```
//! use capstan_kubelet::dns::nth_address;
//! assert_eq!(nth_address("10.96.0.0/12", 10).unwrap().to_string(), "10.96.0.10");
//! ```

pub mod forward;
pub mod handler;
pub mod records;
pub mod resolv;
pub mod server;

use capstan_actors::informer::{Change, Informer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// The default service CIDR.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
/// The default cluster domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// The interface that holds the cluster DNS address.
pub const DEFAULT_INTERFACE: &str = "capstan-dns";

/// Parses `a.b.c.d/len` (or an IPv6 CIDR) into its network address and prefix length.
pub fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = cidr.split_once('/').ok_or_else(|| format!("invalid CIDR {cidr:?}: no prefix length"))?;
    let ip: IpAddr = ip.parse().map_err(|_| format!("invalid CIDR {cidr:?}: bad address"))?;
    let len: u8 = len.parse().map_err(|_| format!("invalid CIDR {cidr:?}: bad prefix length"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("invalid CIDR {cidr:?}: prefix length over {max}"));
    }
    Ok((ip, len))
}

/// The `n`th address of a CIDR (the network address is the 0th): the cluster DNS Service
/// has the 10th of the service CIDR, the `kubernetes` Service the 1st.
pub fn nth_address(cidr: &str, n: u32) -> Result<IpAddr, String> {
    let (ip, len) = parse_cidr(cidr)?;
    match ip {
        IpAddr::V4(v4) => {
            let host_bits = 32 - u32::from(len);
            if host_bits < 32 && u64::from(n) >= (1u64 << host_bits) {
                return Err(format!("the CIDR {cidr} has no address number {n}"));
            }
            let mask = if len == 0 { 0 } else { u32::MAX << host_bits };
            Ok(IpAddr::V4(Ipv4Addr::from((u32::from(v4) & mask) + n)))
        }
        IpAddr::V6(v6) => {
            let host_bits = 128 - u32::from(len);
            if host_bits < 32 && u64::from(n) >= (1u64 << host_bits) {
                return Err(format!("the CIDR {cidr} has no address number {n}"));
            }
            let mask = if len == 0 { 0 } else { u128::MAX << host_bits };
            Ok(IpAddr::V6(Ipv6Addr::from((u128::from(v6) & mask) + u128::from(n))))
        }
    }
}

/// Parses an upstream resolver: `IP` (port 53), `IP:PORT` or `[IPv6]:PORT`.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse().map_err(|_| format!("invalid DNS upstream {s:?} (want IP or IP:PORT)"))
}

/// Settings of the node's cluster DNS server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Whether the node serves cluster DNS (pods get the node's resolv.conf otherwise).
    pub enabled: bool,
    /// The port (53; another only for benchmarks and tests on loopback).
    pub port: u16,
    /// The interface the agent puts the address on.
    pub interface: String,
    /// Upstream resolvers; empty: the node's resolv.conf's nameservers, without loopback.
    pub upstreams: Vec<SocketAddr>,
    /// Worker threads (0: one per CPU, at most 4).
    pub workers: usize,
    /// Where the lock files of served addresses go.
    pub lock_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            enabled: true,
            port: 53,
            interface: DEFAULT_INTERFACE.into(),
            upstreams: Vec::new(),
            workers: 0,
            lock_dir: PathBuf::from(server::LOCK_DIR),
        }
    }
}

/// A running cluster DNS.
pub struct ClusterDnsServer {
    /// The records.
    pub index: Arc<RwLock<records::Index>>,
    /// The sockets' state.
    pub running: server::Running,
}

/// Starts the cluster DNS for `domain` at `address`, fed by the `services` and
/// `endpoint_slices` informers (already started), forwarding to the upstreams of `cfg`
/// or else those of the node's resolv.conf at `host_resolv`.
pub fn start(
    cfg: &Config,
    address: IpAddr,
    domain: &str,
    host_resolv: &std::path::Path,
    services: &Arc<Informer>,
    endpoint_slices: &Arc<Informer>,
) -> Result<ClusterDnsServer, String> {
    let index = Arc::new(RwLock::new(records::Index::new(domain, address)?));
    let ix = index.clone();
    services.on_change(Arc::new(move |c: &Change| {
        let mut ix = ix.write().unwrap_or_else(|e| e.into_inner());
        match c {
            Change::Applied { new, .. } => ix.set_service(new, true),
            Change::Deleted(old) => ix.set_service(old, false),
        }
    }));
    let ix = index.clone();
    endpoint_slices.on_change(Arc::new(move |c: &Change| {
        let mut ix = ix.write().unwrap_or_else(|e| e.into_inner());
        match c {
            Change::Applied { new, .. } => ix.set_slice(new, true),
            Change::Deleted(old) => ix.set_slice(old, false),
        }
    }));
    let upstreams = if cfg.upstreams.is_empty() {
        let found = resolv::upstreams(&resolv::ResolvConf::read(host_resolv));
        if found.is_empty() {
            tracing::warn!(
                "no usable upstream resolver in {} (loopback ones are skipped): names outside the cluster get SERVFAIL",
                host_resolv.display()
            );
        }
        found
    } else {
        cfg.upstreams.clone()
    };
    let workers = if cfg.workers == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4)
    } else {
        cfg.workers
    };
    let running = server::spawn(
        server::ServerConfig {
            address,
            port: cfg.port,
            interface: cfg.interface.clone(),
            upstreams,
            workers,
            lock_dir: cfg.lock_dir.clone(),
        },
        handler::Handler::new(index.clone()),
    );
    Ok(ClusterDnsServer { index, running })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(nth_address("10.96.0.0/12", 10).unwrap().to_string(), "10.96.0.10");
        assert_eq!(nth_address("10.96.3.7/12", 1).unwrap().to_string(), "10.96.0.1");
        assert_eq!(nth_address("10.0.0.0/30", 3).unwrap().to_string(), "10.0.0.3");
        assert!(nth_address("10.0.0.0/30", 4).is_err());
        assert_eq!(nth_address("fd00:96::/108", 10).unwrap().to_string(), "fd00:96::a");
        assert!(nth_address("10.96.0.0", 10).is_err());
        assert!(nth_address("10.96.0.0/33", 10).is_err());
        assert!(nth_address("x/12", 10).is_err());
        assert_eq!(parse_upstream("10.0.0.2").unwrap().to_string(), "10.0.0.2:53");
        assert_eq!(parse_upstream("127.0.0.1:5353").unwrap().to_string(), "127.0.0.1:5353");
        assert!(parse_upstream("dns.example").is_err());
    }
}
