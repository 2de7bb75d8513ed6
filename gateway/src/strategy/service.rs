//! Services: ClusterIP and NodePort allocation, atomic with the Service's write.
//!
//! Every address or port a Service holds is a key of its own in the store,
//! `/capstan/alloc/serviceips/<ip>` and `/capstan/alloc/nodeports/<port>` (value:
//! `<namespace>/<name>`), written in the same transaction as the Service with
//! `Precondition::Absent`. Two writers racing for one address (also through two gateways
//! on one store) cannot both commit: the loser's transaction fails as a whole and it picks
//! again, or, when its client asked for that address, gets 422 as upstream ("provided IP is
//! already allocated"). A Service's keys are deleted in the transaction that removes it or
//! changes its type. The keys are outside `/registry/`, so neither the watch cache nor the
//! event relay sees them.
//!
//! As upstream's allocators, automatic picks avoid the lower band of each range (kept for
//! addresses asked for by name, such as `kubernetes` at the first address and `kube-dns` at
//! the tenth), and [`repair`] reconciles the keys with the stored Services at start.

use super::{Reservations, Strategy};
use crate::admission::Context;
use crate::status::{ApiError, ApiResult};
use capstan_api::{meta, Cause};
use capstan_storage::{Op, Precondition};
use futures::future::BoxFuture;
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

/// Prefix of the ClusterIP reservation keys.
pub const IP_PREFIX: &[u8] = b"/capstan/alloc/serviceips/";
/// Prefix of the NodePort reservation keys.
pub const PORT_PREFIX: &[u8] = b"/capstan/alloc/nodeports/";

/// The ranges Services are given addresses and ports from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceNetwork {
    /// The service CIDR (`serviceCIDR`, default 10.96.0.0/12).
    pub cidr: Ipv4Net,
    /// The NodePort range (`nodePortRange`, default 30000-32767).
    pub node_ports: RangeInclusive<u16>,
}

impl Default for ServiceNetwork {
    fn default() -> ServiceNetwork {
        ServiceNetwork {
            cidr: Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 12).unwrap_or_default(),
            node_ports: 30000..=32767,
        }
    }
}

impl ServiceNetwork {
    /// Parses `serviceCIDR` and `nodePortRange` (`30000-32767`).
    pub fn parse(cidr: &str, node_ports: &str) -> Result<ServiceNetwork, String> {
        let net: Ipv4Net = cidr
            .trim()
            .parse()
            .map_err(|e| format!("invalid serviceCIDR {cidr:?}: {e} (want e.g. 10.96.0.0/12)"))?;
        let net = net.trunc();
        if net.prefix_len() > 28 {
            return Err(format!("serviceCIDR {cidr:?} is too small: it needs at least 16 addresses (/28)"));
        }
        let (a, b) = node_ports
            .split_once('-')
            .ok_or_else(|| format!("invalid nodePortRange {node_ports:?} (want e.g. 30000-32767)"))?;
        let parse = |s: &str| {
            s.trim()
                .parse::<u16>()
                .map_err(|_| format!("invalid nodePortRange {node_ports:?}: {s:?} is not a port"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a == 0 || b < a {
            return Err(format!(
                "invalid nodePortRange {node_ports:?}: want FIRST-LAST with 0 < FIRST <= LAST"
            ));
        }
        Ok(ServiceNetwork { cidr: net, node_ports: a..=b })
    }

    /// The n-th address of the range (1: the `kubernetes` Service, 10: `kube-dns`).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()).wrapping_add(n))
    }

    fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.cidr.prefix_len()))
    }

    /// Offsets automatic picks start from: upstream's lower band, min(max(16, size/16), 256).
    fn ip_band(&self) -> u64 {
        (self.size() / 16).clamp(16, 256)
    }

    fn port_band(&self) -> u64 {
        let size = u64::from(self.node_ports.end() - self.node_ports.start()) + 1;
        (size / 32).clamp(16, 128).min(size / 2)
    }
}

fn ip_key(ip: &str) -> Vec<u8> {
    [IP_PREFIX, ip.as_bytes()].concat()
}

fn port_key(port: u16) -> Vec<u8> {
    [PORT_PREFIX, port.to_string().as_bytes()].concat()
}

fn random_u64() -> u64 {
    let b = *uuid::Uuid::new_v4().as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[8], b[9]])
}

fn owner(obj: &Value) -> String {
    format!("{}/{}", meta::namespace(obj).unwrap_or(""), meta::name(obj).unwrap_or(""))
}

fn service_type(obj: &Value) -> &str {
    obj["spec"].get("type").and_then(Value::as_str).unwrap_or("ClusterIP")
}

fn cluster_ip(obj: &Value) -> Option<&str> {
    obj["spec"].get("clusterIP").and_then(Value::as_str).filter(|s| !s.is_empty() && *s != "None")
}

fn wants_node_ports(obj: &Value) -> bool {
    matches!(service_type(obj), "NodePort" | "LoadBalancer")
}

/// The node ports a Service holds, with the field each is in.
fn node_ports(obj: &Value) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    if let Some(ports) = obj["spec"].get("ports").and_then(Value::as_array) {
        for (i, p) in ports.iter().enumerate() {
            if let Some(n) = p.get("nodePort").and_then(Value::as_u64).filter(|n| *n > 0) {
                out.push((format!("spec.ports[{i}].nodePort"), n as u16));
            }
        }
    }
    if let Some(n) = obj["spec"].get("healthCheckNodePort").and_then(Value::as_u64).filter(|n| *n > 0) {
        out.push(("spec.healthCheckNodePort".into(), n as u16));
    }
    out
}

/// As upstream's `dropTypeDependentFields`: when the type changes to one without them, the
/// allocated values the client left as they were (ClusterIPs for ExternalName, node ports
/// for ClusterIP, the health check port unless LoadBalancer with Local traffic) go.
fn drop_type_dependent_fields(new: &mut Value, old: &Value) {
    if service_type(new) == "ExternalName" && service_type(old) != "ExternalName" {
        let unchanged = |f: &str| {
            let v = new["spec"].get(f);
            v.is_none_or(|v| v.is_null() || v.as_str() == Some("")) || v == old["spec"].get(f)
        };
        if unchanged("clusterIP") && unchanged("clusterIPs") {
            if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                    spec.remove(f);
                }
            }
        }
    }
    if wants_node_ports(old) && !wants_node_ports(new) {
        let old_ports = old["spec"].get("ports").and_then(Value::as_array).cloned().unwrap_or_default();
        if let Some(ports) = new["spec"].get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                let n = p.get("nodePort").cloned();
                if n.as_ref().is_some_and(|n| old_ports.iter().any(|o| o.get("nodePort") == Some(n))) {
                    if let Some(m) = p.as_object_mut() {
                        m.remove("nodePort");
                    }
                }
            }
        }
    }
    let local_lb = |o: &Value| {
        service_type(o) == "LoadBalancer"
            && o["spec"].get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local")
    };
    if local_lb(old)
        && !local_lb(new)
        && new["spec"].get("healthCheckNodePort") == old["spec"].get("healthCheckNodePort")
    {
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("healthCheckNodePort");
        }
    }
}

/// The strategy of Services.
pub struct ServiceStrategy {
    network: ServiceNetwork,
}

impl ServiceStrategy {
    /// A strategy allocating from `network`.
    pub fn new(network: ServiceNetwork) -> ServiceStrategy {
        ServiceStrategy { network }
    }

    /// The ranges.
    pub fn network(&self) -> &ServiceNetwork {
        &self.network
    }

    fn invalid(obj: &Value, field: &str, message: String) -> ApiError {
        ApiError::invalid("Service", "", meta::name(obj).unwrap_or(""), vec![Cause::invalid(field, message)])
    }

    fn ip_taken(obj: &Value, ip: &str) -> ApiError {
        Self::invalid(
            obj,
            "spec.clusterIPs",
            format!("Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated"),
        )
    }

    fn port_taken(obj: &Value, field: &str, port: u16) -> ApiError {
        Self::invalid(obj, field, format!("Invalid value: {port}: provided port is already allocated"))
    }

    async fn held_by_other(ctx: &Context, key: &[u8], me: &str) -> ApiResult<bool> {
        Ok(match ctx.store().get(key).await? {
            Some(kv) => kv.value != me.as_bytes(),
            None => false,
        })
    }

    async fn pick_ip(&self, ctx: &Context) -> ApiResult<String> {
        let size = self.network.size();
        let band = self.network.ip_band();
        // Usable offsets: [band, size - 1) (no network or broadcast address).
        let span = size.saturating_sub(1).saturating_sub(band);
        if span == 0 {
            return Err(ApiError::Internal("failed to allocate a serviceIP: range is full".into()));
        }
        for _ in 0..16 {
            let ip = self.network.nth((band + random_u64() % span) as u32).to_string();
            if ctx.store().get(&ip_key(&ip)).await?.is_none() {
                return Ok(ip);
            }
        }
        // Crowded: look at what is taken.
        let end = capstan_storage::prefix_end(IP_PREFIX);
        let taken: HashSet<Vec<u8>> =
            ctx.store().range(IP_PREFIX, &end, 0).await?.kvs.into_iter().map(|kv| kv.key).collect();
        let start = random_u64() % span;
        for i in 0..span {
            let ip = self.network.nth((band + (start + i) % span) as u32).to_string();
            if !taken.contains(&ip_key(&ip)) {
                return Ok(ip);
            }
        }
        Err(ApiError::Internal("failed to allocate a serviceIP: range is full".into()))
    }

    async fn pick_port(&self, ctx: &Context, also_taken: &HashSet<u16>) -> ApiResult<u16> {
        let first = u64::from(*self.network.node_ports.start());
        let size = u64::from(*self.network.node_ports.end()) - first + 1;
        let band = self.network.port_band();
        let span = size - band;
        for _ in 0..16 {
            let p = (first + band + random_u64() % span) as u16;
            if !also_taken.contains(&p) && ctx.store().get(&port_key(p)).await?.is_none() {
                return Ok(p);
            }
        }
        let end = capstan_storage::prefix_end(PORT_PREFIX);
        let taken: HashSet<Vec<u8>> =
            ctx.store().range(PORT_PREFIX, &end, 0).await?.kvs.into_iter().map(|kv| kv.key).collect();
        let start = random_u64() % size;
        for i in 0..size {
            let p = (first + (start + i) % size) as u16;
            if !also_taken.contains(&p) && !taken.contains(&port_key(p)) {
                return Ok(p);
            }
        }
        Err(ApiError::Internal("failed to allocate a nodePort: range is full".into()))
    }

    /// Fills in the Service's addresses and ports and returns the reservations (and
    /// releases) to commit with it.
    pub async fn reserve(
        &self,
        ctx: &Context,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> ApiResult<Reservations> {
        let me = owner(obj);
        let mut r = Reservations { ops: Vec::new(), on_conflict: Vec::new() };
        let ty = service_type(obj).to_string();
        // ClusterIP.
        let old_ip = old.and_then(cluster_ip).map(str::to_string);
        if ty == "ExternalName" {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                    spec.remove(f);
                }
            }
        } else {
            let want = obj["spec"].get("clusterIP").and_then(Value::as_str).unwrap_or("").to_string();
            if want == "None" {
                obj["spec"]["clusterIPs"] = json!(["None"]);
            } else {
                let (ip, requested) = if want.is_empty() {
                    match &old_ip {
                        Some(ip) => (ip.clone(), true),
                        None => (self.pick_ip(ctx).await?, false),
                    }
                } else {
                    (want, true)
                };
                if old_ip.as_deref() != Some(ip.as_str()) {
                    if requested {
                        let in_range = ip.parse::<Ipv4Addr>().is_ok_and(|a| {
                            self.network.cidr.contains(&a)
                                && a != self.network.cidr.network()
                                && a != self.network.cidr.broadcast()
                        });
                        if !in_range {
                            return Err(Self::invalid(
                                obj,
                                "spec.clusterIPs",
                                format!(
                                    "Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                                    self.network.cidr
                                ),
                            ));
                        }
                        if Self::held_by_other(ctx, &ip_key(&ip), &me).await? {
                            return Err(Self::ip_taken(obj, &ip));
                        }
                    }
                    r.ops.push(Op::put(ip_key(&ip), me.clone().into_bytes(), Precondition::Absent));
                    r.on_conflict.push(requested.then(|| Self::ip_taken(obj, &ip)));
                }
                obj["spec"]["clusterIP"] = json!(ip);
                obj["spec"]["clusterIPs"] = json!([ip]);
            }
            obj["spec"]["ipFamilies"] = json!(["IPv4"]);
            if obj["spec"].get("ipFamilyPolicy").is_none_or(Value::is_null) {
                obj["spec"]["ipFamilyPolicy"] = json!("SingleStack");
            }
        }
        if let Some(ip) = old_ip.filter(|ip| cluster_ip(obj) != Some(ip.as_str())) {
            r.ops.push(Op::delete(ip_key(&ip), Precondition::None));
            r.on_conflict.push(None);
        }
        // Node ports.
        let held: BTreeMap<u16, String> =
            old.map(node_ports).unwrap_or_default().into_iter().map(|(f, p)| (p, f)).collect();
        if !wants_node_ports(obj) {
            if let Some(ports) = obj["spec"].get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    if let Some(m) = p.as_object_mut() {
                        m.remove("nodePort");
                    }
                }
            }
        }
        let local_lb = ty == "LoadBalancer"
            && obj["spec"].get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local");
        if !local_lb {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("healthCheckNodePort");
            }
        }
        // Ports the client named: a conflict on one of them is the client's to resolve.
        let requested: HashSet<u16> = node_ports(obj).into_iter().map(|(_, p)| p).collect();
        if wants_node_ports(obj) {
            let mut mine = requested.clone();
            let count = obj["spec"].get("ports").and_then(Value::as_array).map_or(0, Vec::len);
            for i in 0..count {
                if obj["spec"]["ports"][i].get("nodePort").and_then(Value::as_u64).is_none_or(|n| n == 0) {
                    // A port number used for TCP and UDP alike may share one node port.
                    let port = obj["spec"]["ports"][i].get("port").cloned();
                    let sibling = (0..i)
                        .find(|&j| obj["spec"]["ports"][j].get("port").cloned() == port)
                        .and_then(|j| obj["spec"]["ports"][j].get("nodePort").and_then(Value::as_u64));
                    let p = match sibling {
                        Some(p) => p as u16,
                        None => self.pick_port(ctx, &mine).await?,
                    };
                    mine.insert(p);
                    obj["spec"]["ports"][i]["nodePort"] = json!(p);
                }
            }
            if local_lb
                && obj["spec"].get("healthCheckNodePort").and_then(Value::as_u64).is_none_or(|n| n == 0)
            {
                let p = self.pick_port(ctx, &mine).await?;
                obj["spec"]["healthCheckNodePort"] = json!(p);
            }
        }
        let mut reserved = HashSet::new();
        for (field, port) in node_ports(obj) {
            if !reserved.insert(port) || held.contains_key(&port) {
                continue;
            }
            if !self.network.node_ports.contains(&port) {
                return Err(Self::invalid(
                    obj,
                    &field,
                    format!(
                        "Invalid value: {port}: provided port is not in the valid range. The range of valid ports is {}-{}",
                        self.network.node_ports.start(),
                        self.network.node_ports.end()
                    ),
                ));
            }
            if requested.contains(&port) && Self::held_by_other(ctx, &port_key(port), &me).await? {
                return Err(Self::port_taken(obj, &field, port));
            }
            r.ops.push(Op::put(port_key(port), me.clone().into_bytes(), Precondition::Absent));
            r.on_conflict.push(requested.contains(&port).then(|| Self::port_taken(obj, &field, port)));
        }
        for port in held.keys() {
            if !reserved.contains(port) {
                r.ops.push(Op::delete(port_key(*port), Precondition::None));
                r.on_conflict.push(None);
            }
        }
        if obj.get("status").is_none_or(Value::is_null) {
            obj["status"] = json!({"loadBalancer": {}});
        }
        Ok(r)
    }
}

impl Strategy for ServiceStrategy {
    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        drop_type_dependent_fields(new, old);
        if service_type(new) == "ExternalName" {
            return;
        }
        // Allocated addresses stay unless the client names them.
        for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            let empty = new["spec"].get(f).is_none_or(|v| v.is_null() || v.as_str() == Some(""));
            if empty {
                if let Some(v) = old["spec"].get(f) {
                    new["spec"][f] = v.clone();
                }
            }
        }
        // So do node ports of ports that stay, when the client leaves them out (as upstream's
        // patchAllocatedValues), as long as the type still has node ports.
        if wants_node_ports(new) && wants_node_ports(old) {
            let old_ports = old["spec"].get("ports").and_then(Value::as_array).cloned().unwrap_or_default();
            if let Some(ports) = new["spec"].get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    if p.get("nodePort").and_then(Value::as_u64).is_some_and(|n| n > 0) {
                        continue;
                    }
                    let same = old_ports.iter().find(|o| {
                        o.get("port") == p.get("port")
                            && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                                == p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                    });
                    if let Some(n) = same.and_then(|o| o.get("nodePort")).filter(|n| !n.is_null()) {
                        p["nodePort"] = n.clone();
                    }
                }
            }
            if new["spec"].get("healthCheckNodePort").is_none_or(Value::is_null) {
                if let Some(h) = old["spec"].get("healthCheckNodePort").filter(|h| !h.is_null()) {
                    new["spec"]["healthCheckNodePort"] = h.clone();
                }
            }
        }
    }

    fn allocate<'a>(
        &'a self,
        ctx: &'a Context,
        obj: &'a mut Value,
        old: Option<&'a Value>,
    ) -> BoxFuture<'a, ApiResult<Reservations>> {
        Box::pin(async move { self.reserve(ctx, obj, old).await })
    }

    fn release(&self, obj: &Value) -> Vec<Op> {
        let mut ops = Vec::new();
        if let Some(ip) = cluster_ip(obj) {
            ops.push(Op::delete(ip_key(ip), Precondition::None));
        }
        let mut seen = HashSet::new();
        for (_, p) in node_ports(obj) {
            if seen.insert(p) {
                ops.push(Op::delete(port_key(p), Precondition::None));
            }
        }
        ops
    }
}

/// Reconciles the reservation keys with the stored Services (as upstream's repair
/// controllers): reserves what a Service holds without a key (objects written before keys
/// existed) and frees keys no Service holds. Runs once at start.
pub async fn repair(ctx: &Context) -> ApiResult<()> {
    let Some(svc) = capstan_api::registry::find("", "v1", "services") else { return Ok(()) };
    let prefix = crate::keys::prefix(svc, None);
    let end = capstan_storage::prefix_end(&prefix);
    let services = ctx.store().range(&prefix, &end, 0).await?;
    let mut want: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    for kv in services.kvs {
        let Some(obj) = crate::cache::decode_stored(&kv.value, kv.mod_revision) else { continue };
        let me = owner(&obj);
        if let Some(ip) = cluster_ip(&obj) {
            want.insert(ip_key(ip), me.clone());
        }
        for (_, p) in node_ports(&obj) {
            want.insert(port_key(p), me.clone());
        }
    }
    let mut ops = Vec::new();
    for prefix in [IP_PREFIX, PORT_PREFIX] {
        let end = capstan_storage::prefix_end(prefix);
        for kv in ctx.store().range(prefix, &end, 0).await?.kvs {
            match want.remove(&kv.key) {
                Some(me) if me.as_bytes() == kv.value.as_slice() => {}
                Some(me) => {
                    ops.push(Op::put(kv.key, me.into_bytes(), Precondition::ModRevision(kv.mod_revision)))
                }
                None => ops.push(Op::delete(kv.key, Precondition::ModRevision(kv.mod_revision))),
            }
        }
    }
    for (key, me) in want {
        ops.push(Op::put(key, me.into_bytes(), Precondition::Absent));
    }
    if ops.is_empty() {
        return Ok(());
    }
    tracing::info!(changes = ops.len(), "repaired Service address and port reservations");
    // One op at a time: a concurrent Service write may have touched a key meanwhile, and
    // that write's own reservation is the truth then.
    for op in ops {
        match ctx.store().commit(capstan_storage::Txn::single(op)).await {
            Ok(_) | Err(capstan_storage::Error::PreconditionFailed { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges() {
        let n = ServiceNetwork::parse("10.96.0.0/12", "30000-32767").unwrap();
        assert_eq!(n, ServiceNetwork::default());
        assert_eq!(n.nth(1).to_string(), "10.96.0.1");
        assert_eq!(n.nth(10).to_string(), "10.96.0.10");
        assert_eq!(n.ip_band(), 256);
        assert_eq!(n.port_band(), 86);
        let small = ServiceNetwork::parse("10.0.0.7/24", "30000-30010").unwrap();
        assert_eq!(small.cidr.to_string(), "10.0.0.0/24");
        assert_eq!(small.ip_band(), 16);
        assert!(ServiceNetwork::parse("10.0.0.0/30", "1-2").is_err());
        assert!(ServiceNetwork::parse("nope", "1-2").is_err());
        assert!(ServiceNetwork::parse("10.0.0.0/16", "5-2").is_err());
        assert!(ServiceNetwork::parse("10.0.0.0/16", "0-2").is_err());
    }
}
