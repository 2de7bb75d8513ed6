//! What the proxy needs from a Service and its EndpointSlices, read from their JSON once
//! (anything malformed is skipped, never a panic).

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// The label that puts a Service outside the proxy: it is served by the node agent's own
/// DNS server (the `kube-dns` Service), not by DNAT rules.
pub const NODE_LOCAL_DNS_LABEL: &str = "capstan.io/node-local-dns";

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Upstream's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// A transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// From the API's spelling (`TCP`, `UDP`, `SCTP`; absent means TCP).
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// nftables' spelling.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One address of one endpoint, with its port for one Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The address.
    pub ip: Ipv4Addr,
    /// The (resolved) target port.
    pub port: u16,
    /// `conditions.ready` (absent means ready).
    pub ready: bool,
    /// `conditions.serving` (absent means the same as ready).
    pub serving: bool,
    /// `conditions.terminating` (absent means not).
    pub terminating: bool,
    /// On this node (`nodeName`).
    pub local: bool,
}

/// One port of a Service with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortModel {
    /// The port's name (empty for a Service's only, unnamed port).
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// The Service port.
    pub port: u16,
    /// The node port (0: none).
    pub node_port: u16,
    /// Every endpoint of this port, once per address and port, sorted.
    pub endpoints: Vec<Endpoint>,
}

/// A Service as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceModel {
    /// `namespace/name`.
    pub key: String,
    /// The IPv4 cluster IPs (none for headless Services).
    pub cluster_ips: Vec<Ipv4Addr>,
    /// Addresses served as "external" destinations: `spec.externalIPs` and the load
    /// balancer's `status.loadBalancer.ingress[].ip`.
    pub external_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` with this timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// The ports.
    pub ports: Vec<PortModel>,
}

/// An IPv4 network (`10.88.0.0/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    /// The network address (host bits cleared).
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Ipv4Net {
    /// Parses `a.b.c.d/n`; `None` when it is not an IPv4 CIDR.
    pub fn parse(s: &str) -> Option<Ipv4Net> {
        let (addr, prefix) = s.trim().split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
        Some(Ipv4Net { addr: Ipv4Addr::from(u32::from(addr) & mask), prefix })
    }

    /// The first host address (the gateway the CNI bridge plugin gives the bridge).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(1))
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Whether a name may go into an nftables chain or set name as it is: the characters of
/// Kubernetes names (`[a-z0-9-.]`), nothing that could end a word in an nft script.
pub fn is_nft_safe(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

fn ipv4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

fn port_number(v: Option<&Value>) -> Option<u16> {
    v.and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0)
}

/// Whether the proxy leaves this Service alone (ExternalName, node-local DNS).
pub fn is_ignored(svc: &Value) -> bool {
    let labels = svc.get("metadata").and_then(|m| m.get("labels"));
    let node_local = labels.and_then(|l| l.get(NODE_LOCAL_DNS_LABEL)).and_then(Value::as_str) == Some("true");
    node_local || str_at(svc, &["spec", "type"]) == Some("ExternalName")
}

/// The Service (`namespace/name`) an EndpointSlice belongs to.
pub fn slice_service_key(slice: &Value) -> Option<String> {
    let ns = str_at(slice, &["metadata", "namespace"])?;
    let name = str_at(slice, &["metadata", "labels", SERVICE_NAME_LABEL]).filter(|n| !n.is_empty())?;
    Some(format!("{ns}/{name}"))
}

/// The proxy's view of `svc` with the endpoints of `slices` (all slices labelled with its
/// name), or `None` when it programs nothing for it (ignored, malformed, no ports).
/// `node` is this node's name (for the traffic policies `Local`).
pub fn service_model(
    key: &str,
    svc: &Value,
    slices: &BTreeMap<String, Arc<Value>>,
    node: &str,
) -> Option<ServiceModel> {
    if is_ignored(svc) {
        return None;
    }
    let (ns, name) = key.split_once('/')?;
    if ns.is_empty() || name.is_empty() || !is_nft_safe(ns) || !is_nft_safe(name) {
        tracing::warn!(service = key, "service proxy: skipping a Service whose name is not a valid name");
        return None;
    }
    let spec = svc.get("spec")?;
    let mut cluster_ips: Vec<Ipv4Addr> = spec
        .get("clusterIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .chain(spec.get("clusterIP").and_then(Value::as_str))
        .filter_map(ipv4)
        .collect();
    cluster_ips.sort();
    cluster_ips.dedup();
    let mut external_ips: Vec<Ipv4Addr> = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(ipv4)
        .collect();
    if str_at(spec, &["type"]) == Some("LoadBalancer") {
        let ingress = svc.get("status").and_then(|s| s.get("loadBalancer")).and_then(|l| l.get("ingress"));
        external_ips.extend(
            ingress
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("ip").and_then(Value::as_str))
                .filter_map(ipv4),
        );
    }
    // Loopback addresses cannot be DNAT targets of external traffic here (no route_localnet).
    external_ips.retain(|ip| !ip.is_loopback() && !ip.is_unspecified());
    external_ips.sort();
    external_ips.dedup();
    let affinity_timeout = (str_at(spec, &["sessionAffinity"]) == Some("ClientIP")).then(|| {
        spec.get("sessionAffinityConfig")
            .and_then(|c| c.get("clientIP"))
            .and_then(|c| c.get("timeoutSeconds"))
            .and_then(Value::as_u64)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let node_ports_allowed = matches!(str_at(spec, &["type"]), Some("NodePort" | "LoadBalancer"));
    let mut ports = Vec::new();
    for p in spec.get("ports").and_then(Value::as_array).into_iter().flatten() {
        let Some(port) = port_number(p.get("port")) else { continue };
        let Some(protocol) = Protocol::parse(p.get("protocol").and_then(Value::as_str)) else { continue };
        let name = p.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        if !is_nft_safe(&name) {
            continue;
        }
        let node_port = if node_ports_allowed { port_number(p.get("nodePort")).unwrap_or(0) } else { 0 };
        let endpoints = port_endpoints(slices, &name, protocol, node);
        ports.push(PortModel { name, protocol, port, node_port, endpoints });
    }
    if ports.is_empty() {
        return None;
    }
    Some(ServiceModel {
        key: key.to_string(),
        cluster_ips,
        external_ips,
        affinity_timeout,
        external_local: str_at(spec, &["externalTrafficPolicy"]) == Some("Local"),
        internal_local: str_at(spec, &["internalTrafficPolicy"]) == Some("Local"),
        ports,
    })
}

/// The endpoints of the Service port `name`/`protocol` across the slices: each slice port of
/// that name and protocol gives the (resolved) target port for the slice's endpoints.
fn port_endpoints(
    slices: &BTreeMap<String, Arc<Value>>,
    name: &str,
    protocol: Protocol,
    node: &str,
) -> Vec<Endpoint> {
    let mut out: BTreeMap<(Ipv4Addr, u16), Endpoint> = BTreeMap::new();
    for slice in slices.values() {
        if slice.get("addressType").and_then(Value::as_str).is_some_and(|t| t != "IPv4") {
            continue;
        }
        let slice_port = slice.get("ports").and_then(Value::as_array).into_iter().flatten().find(|sp| {
            sp.get("name").and_then(Value::as_str).unwrap_or("") == name
                && Protocol::parse(sp.get("protocol").and_then(Value::as_str)) == Some(protocol)
        });
        let Some(port) = slice_port.and_then(|sp| port_number(sp.get("port"))) else { continue };
        for ep in slice.get("endpoints").and_then(Value::as_array).into_iter().flatten() {
            let cond = ep.get("conditions");
            let flag = |k: &str| cond.and_then(|c| c.get(k)).and_then(Value::as_bool);
            let ready = flag("ready").unwrap_or(true);
            let serving = flag("serving").unwrap_or(ready);
            let terminating = flag("terminating").unwrap_or(false);
            let local = ep.get("nodeName").and_then(Value::as_str) == Some(node);
            // Upstream uses the first address of an endpoint.
            let Some(ip) = ep
                .get("addresses")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(Value::as_str)
                .and_then(ipv4)
            else {
                continue;
            };
            let new = Endpoint { ip, port, ready, serving, terminating, local };
            // The same address in two slices (while one is being replaced): the readier wins.
            out.entry((ip, port))
                .and_modify(|e| {
                    if (new.ready, new.serving) > (e.ready, e.serving) {
                        *e = new.clone();
                    }
                })
                .or_insert(new);
        }
    }
    out.into_values().collect()
}

/// Upstream's choice of endpoints: the ready ones; when there are none, the ones that
/// still serve while terminating.
pub fn usable(endpoints: &[Endpoint], only_local: bool) -> Vec<Endpoint> {
    let candidates = endpoints.iter().filter(|e| !only_local || e.local);
    let ready: Vec<Endpoint> = candidates.clone().filter(|e| e.ready).cloned().collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates.filter(|e| e.serving && e.terminating).cloned().collect()
}
