//! The nftables rules: the table's fixed part, the rules of one Service, and the scripts
//! (`nft -f -` transactions) that build the table from scratch or move one Service's rules
//! from what is programmed to what is wanted.
//!
//! The layout follows kube-proxy's nftables mode (pkg/proxy/nftables): verdict maps keyed
//! by destination address . protocol . port (`service-ips`, `external-ips`) and by
//! protocol . node port (`service-nodeports`) jump to one chain per Service port
//! (`service-<ns>/<name>/<proto>/<port>`), which masquerades what comes from outside the
//! pod network and picks an endpoint at random. Services without endpoints are rejected
//! from filter chains (`no-endpoint-services`, `no-endpoint-nodeports`); masquerading is a
//! mark set on the way in and a `masquerade` in postrouting. Names carry namespace, Service,
//! protocol and port name, so `nft list table` reads as the Services it serves.
//!
//! One difference in shape: upstream gives every endpoint a chain (hairpin masquerade,
//! affinity, DNAT) and picks one with `numgen random mod N vmap`. `nft` looks up every
//! chain of the host for each command it runs, so with 1,000 Services of 10 endpoints
//! (11,000 chains) a one-Service change cost 40-100 ms in `nft` alone. Here a Service port
//! without session affinity has no endpoint chains: one `dnat ip to numgen random mod N map
//! { i : addr . port }` picks the endpoint, and traffic from any of the Service's own
//! endpoints is masqueraded (upstream: only when it lands on itself; the difference is the
//! source address another endpoint of the same Service sees). With `sessionAffinity:
//! ClientIP` the upstream shape is kept: endpoint chains `endpoint-…__<ip>/<port>`, a set
//! of recent clients per endpoint (`affinity-<timeout>-…`, with that timeout) checked
//! before the random choice, and a `numgen … vmap` over the endpoint chains.
//!
//! Unlike upstream, ClusterIPs are matched only for traffic from this node's pods (arriving
//! on its bridge) and from the node itself: two node agents on one host (tests) then never
//! serve each other's pods, and a ClusterIP routed to the node from outside is not served.

use crate::model::{usable, Endpoint, Ipv4Net, PortModel, ServiceModel};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddrV4};

/// The mark bit of packets to masquerade (kube-proxy's default, 0x4000).
pub const MASQUERADE_MARK: &str = "0x00004000";

/// Map: ClusterIP . protocol . port → the Service port's chain.
pub const SERVICE_IPS: &str = "service-ips";
/// Map: external IP (load balancer ingress, `externalIPs`) . protocol . port → the
/// Service port's external chain.
pub const EXTERNAL_IPS: &str = "external-ips";
/// Map: protocol . node port → the Service port's external chain.
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
/// Map: address . protocol . port of a Service port without usable endpoints → reject/drop.
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// Map: protocol . node port without usable endpoints → reject/drop.
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// Set of every ClusterIP served (traffic to one of them that no map matched is rejected).
pub const CLUSTER_IPS: &str = "cluster-ips";

/// What the base part of the table depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The table's name (`capstan`, or `capstan-<bridge>`).
    pub name: String,
    /// This node's pod bridge (traffic arriving on it comes from this node's pods).
    pub bridge: String,
    /// This node's pod CIDR (traffic from outside it is masqueraded).
    pub pod_cidr: Ipv4Net,
    /// The Service CIDR: traffic to an address in it that no rule took is rejected rather
    /// than routed away.
    pub service_cidr: Option<Ipv4Net>,
}

impl Table {
    /// The table's name for a node whose pod bridge is `bridge`: `capstan` for the default
    /// bridge `capstan0`, `capstan-<bridge>` otherwise (so several agents on one host, each
    /// with its own bridge, never touch each other's rules).
    pub fn name_for_bridge(bridge: &str) -> String {
        if bridge == "capstan0" {
            "capstan".into()
        } else {
            format!("capstan-{bridge}")
        }
    }
}

/// An element of a map or set of the table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    /// The map or set.
    pub map: &'static str,
    /// The key, in nft syntax (`10.96.0.10 . udp . 53`).
    pub key: String,
    /// The verdict (`goto <chain>`, `drop`), none for sets.
    pub value: Option<String>,
}

/// Everything one Service owns in the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Chains and their rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Session-affinity sets and their timeouts in seconds.
    pub sets: BTreeMap<String, u32>,
    /// Map and set elements.
    pub elements: BTreeSet<Element>,
}

impl ServiceRules {
    /// Whether the Service has nothing in the table.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.sets.is_empty() && self.elements.is_empty()
    }
}

fn element(map: &'static str, key: String, value: Option<String>) -> Element {
    Element { map, key, value }
}

/// The rules of one Service. `pod_cidr` is this node's pod network; `relays` maps loopback
/// endpoints to the relay that stands in for them (endpoints on loopback without a relay
/// are left out: no pod could reach them).
pub fn service_rules(
    svc: &ServiceModel,
    pod_cidr: Ipv4Net,
    relays: &HashMap<SocketAddrV4, SocketAddrV4>,
) -> ServiceRules {
    let mut out = ServiceRules::default();
    for port in &svc.ports {
        port_rules(svc, port, pod_cidr, relays, &mut out);
    }
    out
}

/// The DNAT target of an endpoint: itself, or its relay when it is on loopback.
fn target(ep: &Endpoint, relays: &HashMap<SocketAddrV4, SocketAddrV4>) -> Option<SocketAddrV4> {
    let addr = SocketAddrV4::new(ep.ip, ep.port);
    if ep.ip.is_loopback() {
        relays.get(&addr).copied()
    } else {
        Some(addr)
    }
}

fn port_rules(
    svc: &ServiceModel,
    p: &PortModel,
    pod_cidr: Ipv4Net,
    relays: &HashMap<SocketAddrV4, SocketAddrV4>,
    out: &mut ServiceRules,
) {
    let proto = p.protocol.nft();
    let port_id = if p.name.is_empty() { p.port.to_string() } else { p.name.clone() };
    let base = format!("{}/{proto}/{port_id}", svc.key);
    let reachable: Vec<Endpoint> =
        p.endpoints.iter().filter(|e| target(e, relays).is_some()).cloned().collect();
    let cluster = usable(&reachable, false);
    let local = usable(&reachable, true);
    let has_endpoints = !cluster.is_empty();
    let external = p.node_port != 0 || !svc.external_ips.is_empty();
    let uses_cluster = !svc.internal_local || (external && !svc.external_local);
    let uses_local = svc.internal_local || (external && svc.external_local);

    let cluster_chain = format!("service-{base}");
    let local_chain = format!("local-{base}");
    let external_chain = format!("external-{base}");
    // The external chain of an `externalTrafficPolicy: Local` Service sends this node's
    // pods and the node itself to every endpoint, as upstream.
    let has_cluster_chain = has_endpoints && (uses_cluster || (external && svc.external_local));
    let has_local_chain = !local.is_empty() && uses_local;
    let (internal_chain, has_internal) =
        if svc.internal_local { (&local_chain, !local.is_empty()) } else { (&cluster_chain, has_endpoints) };
    let (external_policy_chain, has_external) =
        if svc.external_local { (&local_chain, !local.is_empty()) } else { (&cluster_chain, has_endpoints) };
    // No endpoints anywhere: reject at once; only none for this policy: drop, as upstream.
    let no_endpoints = if has_endpoints { "drop" } else { "goto reject-chain" };

    for cip in &svc.cluster_ips {
        out.elements.insert(element(crate::rules::CLUSTER_IPS, cip.to_string(), None));
        let key = format!("{cip} . {proto} . {}", p.port);
        if has_internal {
            out.elements.insert(element(SERVICE_IPS, key, Some(format!("goto {internal_chain}"))));
        } else {
            out.elements.insert(element(NO_ENDPOINT_SERVICES, key, Some(no_endpoints.into())));
        }
    }
    for ip in &svc.external_ips {
        let key = format!("{ip} . {proto} . {}", p.port);
        if has_endpoints {
            out.elements.insert(element(EXTERNAL_IPS, key.clone(), Some(format!("goto {external_chain}"))));
        }
        if !has_external {
            out.elements.insert(element(NO_ENDPOINT_SERVICES, key, Some(no_endpoints.into())));
        }
    }
    if p.node_port != 0 {
        let key = format!("{proto} . {}", p.node_port);
        if has_endpoints {
            out.elements.insert(element(
                SERVICE_NODEPORTS,
                key.clone(),
                Some(format!("goto {external_chain}")),
            ));
        }
        if !has_external {
            out.elements.insert(element(NO_ENDPOINT_NODEPORTS, key, Some(no_endpoints.into())));
        }
    }

    // Traffic from outside the pod network to a ClusterIP is masqueraded, so that the
    // replies come back through this node (the daddr/dport match keeps external traffic
    // that shares a `Local` chain out of it).
    if has_internal {
        let rules = out.chains.entry(internal_chain.clone()).or_default();
        for cip in &svc.cluster_ips {
            rules.push(format!(
                "ip daddr {cip} {proto} dport {} ip saddr != {pod_cidr} jump mark-for-masquerade",
                p.port
            ));
        }
    }
    if has_endpoints && external {
        let mut rules = Vec::new();
        if !svc.external_local {
            rules.push("jump mark-for-masquerade".to_string());
        } else {
            if has_cluster_chain {
                rules.push(format!("ip saddr {pod_cidr} goto {cluster_chain}"));
            }
            rules.push("fib saddr type local jump mark-for-masquerade".to_string());
            if has_cluster_chain {
                rules.push(format!("fib saddr type local goto {cluster_chain}"));
            }
        }
        if has_external {
            rules.push(format!("goto {external_policy_chain}"));
        }
        out.chains.insert(external_chain, rules);
    }

    let endpoint_chain = |e: &Endpoint| format!("endpoint-{base}__{}/{}", e.ip, e.port);
    let affinity_set = |e: &Endpoint, t: u32| format!("affinity-{t}-{base}__{}/{}", e.ip, e.port);
    let dispatch = |chain: &str, eps: &[Endpoint], out: &mut ServiceRules| {
        let rules = out.chains.entry(chain.to_string()).or_default();
        if let Some(t) = svc.affinity_timeout {
            // As upstream: a set of clients per endpoint, checked first; the endpoint's
            // chain remembers the client.
            for e in eps {
                rules.push(format!("ip saddr @{} goto {}", affinity_set(e, t), endpoint_chain(e)));
            }
            let arms: Vec<String> =
                eps.iter().enumerate().map(|(i, e)| format!("{i} : goto {}", endpoint_chain(e))).collect();
            rules.push(format!("numgen random mod {} vmap {{ {} }}", eps.len(), arms.join(", ")));
            return;
        }
        // Without affinity the endpoints need no chains of their own (every chain costs each
        // later `nft` run a lookup): hairpin traffic, from one of the Service's own endpoints,
        // is masqueraded, and one DNAT picks the endpoint at random.
        let own: BTreeSet<Ipv4Addr> = eps.iter().map(|e| e.ip).filter(|ip| !ip.is_loopback()).collect();
        let own: Vec<String> = own.iter().map(Ipv4Addr::to_string).collect();
        match own.len() {
            0 => {}
            1 => rules.push(format!("ip saddr {} jump mark-for-masquerade", own[0])),
            _ => rules.push(format!("ip saddr {{ {} }} jump mark-for-masquerade", own.join(", "))),
        }
        let targets: Vec<SocketAddrV4> = eps.iter().filter_map(|e| target(e, relays)).collect();
        if let [only] = targets[..] {
            rules.push(format!("meta l4proto {proto} dnat ip to {only}"));
        } else {
            let arms: Vec<String> =
                targets.iter().enumerate().map(|(i, t)| format!("{i} : {} . {}", t.ip(), t.port())).collect();
            rules.push(format!(
                "meta l4proto {proto} dnat ip to numgen random mod {} map {{ {} }}",
                targets.len(),
                arms.join(", ")
            ));
        }
    };
    if has_cluster_chain {
        dispatch(&cluster_chain, &cluster, out);
    }
    if has_local_chain {
        dispatch(&local_chain, &local, out);
    }
    let Some(t) = svc.affinity_timeout else { return };
    let mut used: BTreeMap<(Ipv4Addr, u16), &Endpoint> = BTreeMap::new();
    if has_cluster_chain {
        used.extend(cluster.iter().map(|e| ((e.ip, e.port), e)));
    }
    if has_local_chain {
        used.extend(local.iter().map(|e| ((e.ip, e.port), e)));
    }
    for e in used.values() {
        let Some(to) = target(e, relays) else { continue };
        let mut rules = Vec::new();
        if !e.ip.is_loopback() {
            // Hairpin: a pod reaching itself through the Service.
            rules.push(format!("ip saddr {} jump mark-for-masquerade", e.ip));
        }
        let set = affinity_set(e, t);
        rules.push(format!("update @{set} {{ ip saddr }}"));
        out.sets.insert(set, t);
        rules.push(format!("meta l4proto {proto} dnat ip to {to}"));
        out.chains.insert(endpoint_chain(e), rules);
    }
}

/// Appends `line` and a newline.
fn line(out: &mut String, args: std::fmt::Arguments<'_>) {
    let _ = out.write_fmt(args);
    out.push('\n');
}

/// The script that replaces whatever table of this name exists with the fixed part of the
/// table (empty maps, base chains), atomically when run in the same transaction as the
/// Services' rules.
pub fn replace_table_script(t: &Table, out: &mut String) {
    let n = &t.name;
    let br = &t.bridge;
    line(out, format_args!("add table ip {n}"));
    line(out, format_args!("delete table ip {n}"));
    line(out, format_args!("add table ip {n} {{ comment \"capstan service proxy (pod bridge {br})\"; }}"));
    // Filter chains see addresses before DNAT; NAT at dstnat/srcnat; the ClusterIP check
    // after DNAT (priority filter), so it sees only what no rule took.
    let base = [
        ("filter-input", "filter", "input", -110),
        ("filter-forward", "filter", "forward", -110),
        ("filter-output", "filter", "output", -110),
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
        ("cluster-ips-forward", "filter", "forward", 0),
        ("cluster-ips-output", "filter", "output", 0),
    ];
    for (name, kind, hook, prio) in base {
        line(
            out,
            format_args!(
                "add chain ip {n} {name} {{ type {kind} hook {hook} priority {prio}; policy accept; }}"
            ),
        );
    }
    for chain in [
        "services",
        "external-services",
        "endpoints-check",
        "cluster-ips-check",
        "mark-for-masquerade",
        "masquerading",
        "reject-chain",
    ] {
        line(out, format_args!("add chain ip {n} {chain}"));
    }
    line(out, format_args!("add set ip {n} {CLUSTER_IPS} {{ type ipv4_addr; }}"));
    for map in [SERVICE_IPS, EXTERNAL_IPS, NO_ENDPOINT_SERVICES] {
        line(
            out,
            format_args!("add map ip {n} {map} {{ type ipv4_addr . inet_proto . inet_service : verdict; }}"),
        );
    }
    for map in [SERVICE_NODEPORTS, NO_ENDPOINT_NODEPORTS] {
        line(out, format_args!("add map ip {n} {map} {{ type inet_proto . inet_service : verdict; }}"));
    }
    let node_ports = "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport";
    let rules: Vec<(&str, String)> = vec![
        ("filter-input", "ct state new jump endpoints-check".into()),
        ("filter-forward", format!("iifname \"{br}\" ct state new jump endpoints-check")),
        ("filter-output", "ct state new jump endpoints-check".into()),
        ("endpoints-check", format!("ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}")),
        ("endpoints-check", format!("{node_ports} vmap @{NO_ENDPOINT_NODEPORTS}")),
        ("nat-prerouting", format!("iifname \"{br}\" jump services")),
        ("nat-prerouting", format!("iifname != \"{br}\" jump external-services")),
        ("nat-output", "jump services".into()),
        ("services", format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}")),
        ("services", "jump external-services".into()),
        ("external-services", format!("ip daddr . meta l4proto . th dport vmap @{EXTERNAL_IPS}")),
        ("external-services", format!("{node_ports} vmap @{SERVICE_NODEPORTS}")),
        ("cluster-ips-forward", format!("iifname \"{br}\" jump cluster-ips-check")),
        ("cluster-ips-output", "fib daddr type != local jump cluster-ips-check".into()),
        ("cluster-ips-check", format!("ip daddr @{CLUSTER_IPS} reject")),
        ("nat-postrouting", "jump masquerading".into()),
        ("mark-for-masquerade", format!("meta mark set meta mark | {MASQUERADE_MARK}")),
        ("masquerading", format!("meta mark & {MASQUERADE_MARK} == 0 return")),
        ("masquerading", format!("meta mark set meta mark ^ {MASQUERADE_MARK}")),
        ("masquerading", "masquerade fully-random".into()),
        ("reject-chain", "reject".into()),
    ];
    for (chain, rule) in rules {
        line(out, format_args!("add rule ip {n} {chain} {rule}"));
    }
    if let Some(cidr) = t.service_cidr {
        line(out, format_args!("add rule ip {n} cluster-ips-check ip daddr {cidr} reject"));
    }
}

fn set_definition(name: &str, timeout: u32) -> String {
    // `dynamic`: the set is filled from the packet path (`update`).
    format!("{name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}")
}

/// Writes `add element`/`delete element` commands, one per map, at most 1000 elements a
/// command.
fn elements_script<'a>(
    table: &str,
    verb: &str,
    elements: impl Iterator<Item = &'a Element>,
    with_value: bool,
    out: &mut String,
) {
    let mut by_map: BTreeMap<&str, Vec<&Element>> = BTreeMap::new();
    for e in elements {
        by_map.entry(e.map).or_default().push(e);
    }
    for (map, elems) in by_map {
        for chunk in elems.chunks(1000) {
            let items: Vec<String> = chunk
                .iter()
                .map(|e| match (&e.value, with_value) {
                    (Some(v), true) => format!("{} : {v}", e.key),
                    _ => e.key.clone(),
                })
                .collect();
            line(out, format_args!("{verb} element ip {table} {map} {{ {} }}", items.join(", ")));
        }
    }
}

/// Adds everything of `rules` (for a table built in the same transaction).
pub fn add_script<'a>(table: &str, all: impl Iterator<Item = &'a ServiceRules> + Clone, out: &mut String) {
    for r in all.clone() {
        for chain in r.chains.keys() {
            line(out, format_args!("add chain ip {table} {chain}"));
        }
        for (set, timeout) in &r.sets {
            line(out, format_args!("add set ip {table} {}", set_definition(set, *timeout)));
        }
    }
    for r in all.clone() {
        for (chain, rules) in &r.chains {
            for rule in rules {
                line(out, format_args!("add rule ip {table} {chain} {rule}"));
            }
        }
    }
    elements_script(table, "add", all.flat_map(|r| r.elements.iter()), true, out);
}

/// The commands that turn one Service's `old` rules (programmed) into `new` ones, touching
/// only what differs: removed elements are deleted, changed chains flushed and refilled,
/// new ones added. Returns the chains that are no longer used: they are flushed here and
/// must be deleted in a later transaction (kernels before 6.2 release a chain referenced
/// from a map element only a moment after the element goes, as kube-proxy notes).
pub fn diff_script(table: &str, old: &ServiceRules, new: &ServiceRules, out: &mut String) -> Vec<String> {
    elements_script(table, "delete", old.elements.difference(&new.elements), false, out);
    let mut refill = Vec::new();
    for (chain, rules) in &new.chains {
        match old.chains.get(chain) {
            None => {
                // It may still exist, flushed, waiting for deletion.
                line(out, format_args!("add chain ip {table} {chain}"));
                line(out, format_args!("flush chain ip {table} {chain}"));
                refill.push(chain);
            }
            Some(before) if before != rules => {
                line(out, format_args!("flush chain ip {table} {chain}"));
                refill.push(chain);
            }
            Some(_) => {}
        }
    }
    let mut stale = Vec::new();
    for chain in old.chains.keys().filter(|c| !new.chains.contains_key(*c)) {
        line(out, format_args!("flush chain ip {table} {chain}"));
        stale.push(chain.clone());
    }
    for set in old.sets.keys().filter(|s| !new.sets.contains_key(*s)) {
        line(out, format_args!("delete set ip {table} {set}"));
    }
    for (set, timeout) in new.sets.iter().filter(|(s, _)| !old.sets.contains_key(*s)) {
        line(out, format_args!("add set ip {table} {}", set_definition(set, *timeout)));
    }
    for chain in refill {
        for rule in &new.chains[chain] {
            line(out, format_args!("add rule ip {table} {chain} {rule}"));
        }
    }
    elements_script(table, "add", new.elements.difference(&old.elements), true, out);
    stale
}

/// Deletes chains flushed earlier.
pub fn delete_chains_script<'a>(table: &str, chains: impl Iterator<Item = &'a String>, out: &mut String) {
    for chain in chains {
        line(out, format_args!("delete chain ip {table} {chain}"));
    }
}
