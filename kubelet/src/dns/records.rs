//! The cluster's DNS records, kept from Service and EndpointSlice changes, and the lookup
//! that turns a question into an answer, per the Kubernetes DNS specification
//! (schema 1.1.0) and CoreDNS's `kubernetes` plugin where the specification is silent:
//!
//! * `<svc>.<ns>.svc.<zone>`: A/AAAA → the ClusterIPs; a headless Service → its ready
//!   endpoints (NXDOMAIN when it has none); an ExternalName Service → a CNAME;
//! * `<hostname>.<svc>.<ns>.svc.<zone>` (headless): the endpoint with that hostname, or
//!   with that dashed IP (`10-1-2-3`) when it has none;
//! * `_<port>._<proto>.<svc>.<ns>.svc.<zone>` SRV for named ports (per ready endpoint for
//!   headless Services);
//! * `<a>-<b>-<c>-<d>.<ns>.pod.<zone>` A (CoreDNS's `pods insecure`);
//! * PTR for ClusterIPs and headless endpoint IPs (other reverse names are not ours);
//! * `dns-version.<zone>` TXT, the zone's SOA and NS.
//!
//! A name that exists without records of the asked type is NODATA (NOERROR with the SOA),
//! a name that does not exist is NXDOMAIN; every TTL is [`TTL`] seconds, as CoreDNS's.

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Time to live of every record (CoreDNS's default).
pub const TTL: u32 = 5;
/// The schema version served at `dns-version.<zone>`.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// The label linking an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A port of a Service or of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Its name (may be empty).
    pub name: String,
    /// Lowercase protocol: `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The number.
    pub port: u16,
}

/// One endpoint address of an EndpointSlice.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The address.
    pub ip: IpAddr,
    /// The endpoint's hostname, if set (StatefulSet pods).
    pub hostname: Option<String>,
    /// Whether it is ready (an absent condition counts as ready).
    pub ready: bool,
    /// The slice's ports.
    pub ports: Arc<[Port]>,
}

impl Endpoint {
    /// The endpoint's DNS label: its hostname, or its IP with dashes.
    pub fn label(&self) -> String {
        match &self.hostname {
            Some(h) => h.to_ascii_lowercase(),
            None => dashed(&self.ip),
        }
    }
}

fn dashed(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    ExternalName(Name),
}

#[derive(Debug, Clone)]
struct Service {
    kind: Kind,
    ports: Vec<Port>,
    publish_not_ready: bool,
}

#[derive(Debug, Clone)]
struct Slice {
    /// `ns/service`.
    service: String,
    endpoints: Vec<Endpoint>,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Not a name this server is authoritative for: forward it.
    NotOurs,
    /// The name exists: these records (none = NODATA), plus additional records.
    Answer {
        /// Answer section.
        answers: Vec<Record>,
        /// Additional section (the A records of SRV targets).
        additionals: Vec<Record>,
    },
    /// The name does not exist.
    NxDomain,
    /// An ExternalName Service: the CNAME, and the target to resolve for the asked type.
    Alias {
        /// The CNAME record.
        cname: Box<Record>,
        /// Its target.
        target: Name,
    },
}

impl Outcome {
    fn records(answers: Vec<Record>) -> Outcome {
        Outcome::Answer { answers, additionals: Vec::new() }
    }

    fn nodata() -> Outcome {
        Outcome::records(Vec::new())
    }
}

/// The records of one cluster, built from Services and EndpointSlices.
pub struct Index {
    zone: Name,
    zone_labels: Vec<String>,
    dns_ip: IpAddr,
    services: HashMap<String, Service>,
    slices: HashMap<String, Slice>,
    /// `ns/service` → the keys of its slices.
    slices_of: HashMap<String, BTreeSet<String>>,
    /// Services per namespace (a namespace with Services exists as a name).
    namespaces: HashMap<String, usize>,
    /// Reverse records: IP → names.
    ptr: HashMap<IpAddr, BTreeSet<String>>,
    serial: u32,
    /// Bumped on every change (answers cached by the server are of one generation).
    generation: Arc<AtomicU64>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn key_of(obj: &Value) -> Option<String> {
    let ns = str_at(obj, &["metadata", "namespace"])?;
    let name = str_at(obj, &["metadata", "name"])?;
    Some(format!("{}/{}", ns.to_ascii_lowercase(), name.to_ascii_lowercase()))
}

fn ports_of(v: Option<&Value>) -> Vec<Port> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.get("port")?.as_u64()?).ok()?;
            Some(Port {
                name: p.get("name").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase(),
                protocol: p.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_ascii_lowercase(),
                port,
            })
        })
        .collect()
}

fn parse_service(obj: &Value) -> Option<Service> {
    let spec = obj.get("spec")?;
    let ty = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP");
    let kind = if ty == "ExternalName" {
        let target = spec.get("externalName").and_then(Value::as_str).filter(|t| !t.is_empty())?;
        let mut name = Name::from_ascii(target.trim_end_matches('.')).ok()?;
        name.set_fqdn(true);
        Kind::ExternalName(name)
    } else {
        let mut ips: Vec<String> = spec
            .get("clusterIPs")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if ips.is_empty() {
            ips.extend(spec.get("clusterIP").and_then(Value::as_str).map(str::to_string));
        }
        if ips.iter().any(|i| i == "None") {
            Kind::Headless
        } else {
            let parsed: Vec<IpAddr> = ips.iter().filter_map(|i| i.parse().ok()).collect();
            if parsed.is_empty() {
                // Not allocated yet: no records.
                return None;
            }
            Kind::ClusterIp(parsed)
        }
    };
    Some(Service {
        kind,
        ports: ports_of(spec.get("ports")),
        publish_not_ready: spec.get("publishNotReadyAddresses").and_then(Value::as_bool) == Some(true),
    })
}

fn parse_slice(obj: &Value) -> Option<(String, Slice)> {
    let key = key_of(obj)?;
    let ns = str_at(obj, &["metadata", "namespace"])?.to_ascii_lowercase();
    let svc = str_at(obj, &["metadata", "labels", SERVICE_NAME_LABEL])?.to_ascii_lowercase();
    let ports: Arc<[Port]> = ports_of(obj.get("ports")).into();
    let mut endpoints = Vec::new();
    for ep in obj.get("endpoints").and_then(Value::as_array).into_iter().flatten() {
        let ready = ep.get("conditions").and_then(|c| c.get("ready")).and_then(Value::as_bool) != Some(false);
        let hostname =
            ep.get("hostname").and_then(Value::as_str).filter(|h| !h.is_empty()).map(str::to_ascii_lowercase);
        for a in ep.get("addresses").and_then(Value::as_array).into_iter().flatten() {
            if let Some(ip) = a.as_str().and_then(|s| s.parse::<IpAddr>().ok()) {
                endpoints.push(Endpoint { ip, hostname: hostname.clone(), ready, ports: ports.clone() });
            }
        }
    }
    Some((key, Slice { service: format!("{ns}/{svc}"), endpoints }))
}

/// The IP a reverse name (`4.3.2.1.in-addr.arpa`, nibbles under `ip6.arpa`) stands for;
/// `labels` are lowercase, without the `in-addr.arpa`/`ip6.arpa` suffix.
fn reverse_ip(labels: &[String], v6: bool) -> Option<IpAddr> {
    if v6 {
        if labels.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, l) in labels.iter().rev().enumerate() {
            let nib = u8::from_str_radix(l, 16).ok().filter(|_| l.len() == 1)?;
            bytes[i / 2] |= if i % 2 == 0 { nib << 4 } else { nib };
        }
        Some(IpAddr::V6(Ipv6Addr::from(bytes)))
    } else {
        if labels.len() != 4 {
            return None;
        }
        let mut octets = [0u8; 4];
        for (i, l) in labels.iter().rev().enumerate() {
            if l.is_empty() || l.len() > 3 || (l.len() > 1 && l.starts_with('0')) {
                return None;
            }
            octets[i] = l.parse().ok()?;
        }
        Some(IpAddr::V4(Ipv4Addr::from(octets)))
    }
}

fn ip_record(owner: &Name, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner.clone(), TTL, data)
}

fn wants(qtype: RecordType, ip: &IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

impl Index {
    /// An empty index for `zone` (the cluster domain, e.g. `cluster.local`) served at
    /// `dns_ip` (the address of `ns.dns.<zone>`).
    pub fn new(zone: &str, dns_ip: IpAddr) -> Result<Index, String> {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        let mut name =
            Name::from_ascii(&zone).map_err(|e| format!("invalid cluster domain {zone:?}: {e}"))?;
        name.set_fqdn(true);
        if zone.is_empty() {
            return Err("the cluster domain is empty".into());
        }
        Ok(Index {
            zone: name,
            zone_labels: zone.split('.').map(str::to_string).collect(),
            dns_ip,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            namespaces: HashMap::new(),
            ptr: HashMap::new(),
            serial: serial_now(),
            generation: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The generation counter: bumped on every change of the records.
    pub fn generation(&self) -> Arc<AtomicU64> {
        self.generation.clone()
    }

    fn touch(&mut self) {
        self.serial = self.serial.wrapping_add(1).max(serial_now());
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The zone's apex.
    pub fn zone(&self) -> &Name {
        &self.zone
    }

    /// Number of Services with records.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// Applies a Service that was added or changed (`Some`) or deleted (`None`).
    pub fn set_service(&mut self, obj: &Value, present: bool) {
        let Some(key) = key_of(obj) else { return };
        self.touch();
        let before = self.ptr_of(&key);
        let parsed = if present { parse_service(obj) } else { None };
        let existed = match parsed {
            Some(s) => self.services.insert(key.clone(), s).is_some(),
            None => self.services.remove(&key).is_some(),
        };
        let exists = self.services.contains_key(&key);
        if existed != exists {
            let ns = key.split('/').next().unwrap_or("").to_string();
            let n = self.namespaces.entry(ns.clone()).or_insert(0);
            if exists {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.namespaces.remove(&ns);
                }
            }
        }
        self.reindex_ptr(&key, before);
    }

    /// Applies an EndpointSlice that was added or changed (`Some`) or deleted (`None`).
    pub fn set_slice(&mut self, obj: &Value, present: bool) {
        let Some(key) = key_of(obj) else { return };
        self.touch();
        let old_service = self.slices.get(&key).map(|s| s.service.clone());
        let parsed = if present { parse_slice(obj) } else { None };
        let new_service = parsed.as_ref().map(|(_, s)| s.service.clone());
        let mut touched: Vec<String> = old_service.iter().chain(new_service.iter()).cloned().collect();
        touched.dedup();
        let before: Vec<(String, Vec<(IpAddr, String)>)> =
            touched.iter().map(|s| (s.clone(), self.ptr_of(s))).collect();
        if let Some(old) = &old_service {
            if let Some(set) = self.slices_of.get_mut(old) {
                set.remove(&key);
                if set.is_empty() {
                    self.slices_of.remove(old);
                }
            }
        }
        match parsed {
            Some((_, slice)) => {
                self.slices_of.entry(slice.service.clone()).or_default().insert(key.clone());
                self.slices.insert(key, slice);
            }
            None => {
                self.slices.remove(&key);
            }
        }
        for (svc, b) in before {
            self.reindex_ptr(&svc, b);
        }
    }

    /// Endpoints of a Service, over all its slices.
    fn endpoints<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
            .flat_map(|s| s.endpoints.iter())
    }

    fn ready_endpoints<'a>(&'a self, key: &str, svc: &Service) -> Vec<&'a Endpoint> {
        let all = svc.publish_not_ready;
        self.endpoints(key).filter(|e| all || e.ready).collect()
    }

    fn fqdn(&self, parts: &[&str]) -> Option<Name> {
        let mut s = parts.join(".");
        s.push('.');
        s.push_str(&self.zone_labels.join("."));
        s.push('.');
        Name::from_ascii(&s).ok()
    }

    /// The reverse records a Service contributes.
    fn ptr_of(&self, key: &str) -> Vec<(IpAddr, String)> {
        let Some(svc) = self.services.get(key) else { return Vec::new() };
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let zone = self.zone_labels.join(".");
        match &svc.kind {
            Kind::ClusterIp(ips) => ips.iter().map(|ip| (*ip, format!("{name}.{ns}.svc.{zone}."))).collect(),
            Kind::Headless => self
                .ready_endpoints(key, svc)
                .into_iter()
                .map(|e| (e.ip, format!("{}.{name}.{ns}.svc.{zone}.", e.label())))
                .collect(),
            Kind::ExternalName(_) => Vec::new(),
        }
    }

    fn reindex_ptr(&mut self, key: &str, before: Vec<(IpAddr, String)>) {
        let after = self.ptr_of(key);
        if before == after {
            return;
        }
        for (ip, name) in &before {
            if let Some(set) = self.ptr.get_mut(ip) {
                set.remove(name);
                if set.is_empty() {
                    self.ptr.remove(ip);
                }
            }
        }
        for (ip, name) in after {
            self.ptr.entry(ip).or_default().insert(name);
        }
    }

    /// The zone's SOA record (for the authority section of NODATA and NXDOMAIN answers).
    pub fn soa(&self) -> Record {
        let mname = self.fqdn(&["ns", "dns"]).unwrap_or_else(|| self.zone.clone());
        let rname = self.fqdn(&["hostmaster"]).unwrap_or_else(|| self.zone.clone());
        Record::from_rdata(
            self.zone.clone(),
            TTL,
            RData::SOA(SOA::new(mname, rname, self.serial, 7200, 1800, 86400, TTL)),
        )
    }

    /// Whether `name` (any case) is the zone or under it.
    pub fn in_zone(&self, name: &Name) -> bool {
        self.zone.zone_of(name)
    }

    /// Answers `qname`/`qtype`. `qname` keeps the asker's case in the records' owner names.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Outcome {
        let labels: Vec<String> =
            qname.iter().map(|l| String::from_utf8_lossy(l).to_ascii_lowercase()).collect();
        let z = self.zone_labels.len();
        if labels.len() >= z && labels[labels.len() - z..] == self.zone_labels[..] {
            return self.lookup_zone(qname, &labels[..labels.len() - z], qtype);
        }
        let n = labels.len();
        if n >= 2 && labels[n - 1] == "arpa" && (labels[n - 2] == "in-addr" || labels[n - 2] == "ip6") {
            let ip = reverse_ip(&labels[..n - 2], labels[n - 2] == "ip6");
            if let Some(names) = ip.and_then(|ip| self.ptr.get(&ip)) {
                if qtype != RecordType::PTR && qtype != RecordType::ANY {
                    return Outcome::nodata();
                }
                let answers = names
                    .iter()
                    .filter_map(|t| Name::from_ascii(t).ok())
                    .map(|t| Record::from_rdata(qname.clone(), TTL, RData::PTR(PTR(t))))
                    .collect();
                return Outcome::records(answers);
            }
        }
        Outcome::NotOurs
    }

    fn lookup_zone(&self, qname: &Name, p: &[String], qtype: RecordType) -> Outcome {
        let any = qtype == RecordType::ANY;
        let k = p.len();
        if k == 0 {
            let mut answers = Vec::new();
            if qtype == RecordType::SOA || any {
                answers.push(self.soa());
            }
            if qtype == RecordType::NS || any {
                if let Some(ns) = self.fqdn(&["ns", "dns"]) {
                    answers.push(Record::from_rdata(self.zone.clone(), TTL, RData::NS(NS(ns))));
                }
            }
            return Outcome::records(answers);
        }
        let last = p[k - 1].as_str();
        match (last, k) {
            ("dns-version", 1) => {
                let answers = if qtype == RecordType::TXT || any {
                    vec![Record::from_rdata(
                        qname.clone(),
                        TTL,
                        RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
                    )]
                } else {
                    Vec::new()
                };
                Outcome::records(answers)
            }
            ("dns", 1) => Outcome::nodata(),
            ("dns", 2) if p[0] == "ns" => {
                let answers =
                    if wants(qtype, &self.dns_ip) { vec![ip_record(qname, self.dns_ip)] } else { Vec::new() };
                Outcome::records(answers)
            }
            ("svc", 1) | ("pod", 1) | ("pod", 2) => Outcome::nodata(),
            ("svc", 2) => {
                if self.namespaces.contains_key(&p[0]) {
                    Outcome::nodata()
                } else {
                    Outcome::NxDomain
                }
            }
            ("svc", 3) => self.lookup_service(qname, &p[1], &p[0], qtype),
            ("svc", 4) => self.lookup_endpoint(qname, &p[2], &p[1], &p[0], qtype),
            ("svc", 5) if p[0].starts_with('_') && p[1].starts_with('_') => {
                self.lookup_srv(qname, &p[3], &p[2], Some((&p[0][1..], &p[1][1..])), qtype)
            }
            ("pod", 3) => {
                let ip = if p[0].contains('.') || p[0].contains(':') {
                    None
                } else {
                    p[0].replace('-', ".")
                        .parse::<Ipv4Addr>()
                        .map(IpAddr::V4)
                        .ok()
                        .or_else(|| p[0].replace('-', ":").parse::<Ipv6Addr>().ok().map(IpAddr::V6))
                };
                match ip {
                    Some(ip) if wants(qtype, &ip) => Outcome::records(vec![ip_record(qname, ip)]),
                    Some(_) => Outcome::nodata(),
                    None => Outcome::NxDomain,
                }
            }
            _ => Outcome::NxDomain,
        }
    }

    fn lookup_service(&self, qname: &Name, ns: &str, name: &str, qtype: RecordType) -> Outcome {
        let key = format!("{ns}/{name}");
        let Some(svc) = self.services.get(&key) else { return Outcome::NxDomain };
        if qtype == RecordType::SRV {
            return self.lookup_srv(qname, ns, name, None, qtype);
        }
        match &svc.kind {
            Kind::ExternalName(target) => {
                let cname = Record::from_rdata(qname.clone(), TTL, RData::CNAME(CNAME(target.clone())));
                if qtype == RecordType::CNAME || qtype == RecordType::ANY {
                    Outcome::records(vec![cname])
                } else {
                    Outcome::Alias { cname: Box::new(cname), target: target.clone() }
                }
            }
            Kind::ClusterIp(ips) => Outcome::records(
                ips.iter().filter(|ip| wants(qtype, ip)).map(|ip| ip_record(qname, *ip)).collect(),
            ),
            Kind::Headless => {
                let ready = self.ready_endpoints(&key, svc);
                if ready.is_empty() {
                    return Outcome::NxDomain;
                }
                let mut seen = BTreeSet::new();
                let answers = ready
                    .iter()
                    .filter(|e| wants(qtype, &e.ip) && seen.insert(e.ip))
                    .map(|e| ip_record(qname, e.ip))
                    .collect();
                Outcome::records(answers)
            }
        }
    }

    fn lookup_endpoint(&self, qname: &Name, ns: &str, name: &str, label: &str, qtype: RecordType) -> Outcome {
        let key = format!("{ns}/{name}");
        let Some(svc) = self.services.get(&key) else { return Outcome::NxDomain };
        if let Some(proto) = label.strip_prefix('_') {
            // `_tcp.<svc>...`: an empty non-terminal when the Service has ports of it.
            let has = svc.ports.iter().any(|p| p.protocol == proto && !p.name.is_empty());
            return if has { Outcome::nodata() } else { Outcome::NxDomain };
        }
        if svc.kind != Kind::Headless {
            return Outcome::NxDomain;
        }
        let found: Vec<&Endpoint> =
            self.ready_endpoints(&key, svc).into_iter().filter(|e| e.label() == label).collect();
        if found.is_empty() {
            return Outcome::NxDomain;
        }
        let mut seen = BTreeSet::new();
        Outcome::records(
            found
                .iter()
                .filter(|e| wants(qtype, &e.ip) && seen.insert(e.ip))
                .map(|e| ip_record(qname, e.ip))
                .collect(),
        )
    }

    /// SRV records of a Service: for one named port (`port` = (name, proto)) or, for a
    /// query of the Service's own name, for all its ports.
    fn lookup_srv(
        &self,
        qname: &Name,
        ns: &str,
        name: &str,
        port: Option<(&str, &str)>,
        qtype: RecordType,
    ) -> Outcome {
        let key = format!("{ns}/{name}");
        let Some(svc) = self.services.get(&key) else { return Outcome::NxDomain };
        let matches = |p: &Port| match port {
            Some((n, proto)) => !p.name.is_empty() && p.name == n && p.protocol == proto,
            None => true,
        };
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        match &svc.kind {
            Kind::ExternalName(_) => return Outcome::NxDomain,
            Kind::ClusterIp(ips) => {
                let Some(target) = self.fqdn(&[name, ns, "svc"]) else { return Outcome::NxDomain };
                let ports: Vec<&Port> = svc.ports.iter().filter(|p| matches(p)).collect();
                if ports.is_empty() {
                    return Outcome::NxDomain;
                }
                for p in ports {
                    answers.push(Record::from_rdata(
                        qname.clone(),
                        TTL,
                        RData::SRV(SRV::new(0, 100, p.port, target.clone())),
                    ));
                }
                additionals.extend(ips.iter().map(|ip| ip_record(&target, *ip)));
            }
            Kind::Headless => {
                let mut found = false;
                let mut targets = BTreeSet::new();
                for e in self.ready_endpoints(&key, svc) {
                    let label = e.label();
                    let Some(target) = self.fqdn(&[&label, name, ns, "svc"]) else { continue };
                    for p in e.ports.iter().filter(|p| matches(p)) {
                        found = true;
                        answers.push(Record::from_rdata(
                            qname.clone(),
                            TTL,
                            RData::SRV(SRV::new(0, 100, p.port, target.clone())),
                        ));
                    }
                    if targets.insert((label, e.ip)) {
                        additionals.push(ip_record(&target, e.ip));
                    }
                }
                if !found {
                    // A named port the Service declares but no ready endpoint serves yet.
                    let declared = svc.ports.iter().any(&matches);
                    return if declared { Outcome::nodata() } else { Outcome::NxDomain };
                }
            }
        }
        if qtype != RecordType::SRV && qtype != RecordType::ANY {
            return Outcome::nodata();
        }
        answers.dedup();
        Outcome::Answer { answers, additionals }
    }
}

/// A SOA serial: seconds since the epoch, as CoreDNS's.
fn serial_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn index() -> Index {
        let mut ix = Index::new("cluster.local", "10.96.0.10".parse().unwrap()).unwrap();
        ix.set_service(
            &json!({"metadata": {"namespace": "default", "name": "web"},
                    "spec": {"clusterIP": "10.96.5.5", "clusterIPs": ["10.96.5.5"],
                             "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 81}]}}),
            true,
        );
        ix.set_service(
            &json!({"metadata": {"namespace": "db", "name": "pg"},
                    "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
            true,
        );
        ix.set_slice(
            &json!({"metadata": {"namespace": "db", "name": "pg-abc",
                                 "labels": {"kubernetes.io/service-name": "pg"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
                    "endpoints": [
                        {"addresses": ["10.88.0.5"], "hostname": "pg-0", "conditions": {"ready": true}},
                        {"addresses": ["10.88.0.6"], "conditions": {"ready": true}},
                        {"addresses": ["10.88.0.7"], "hostname": "pg-2", "conditions": {"ready": false}}]}),
            true,
        );
        ix.set_service(
            &json!({"metadata": {"namespace": "default", "name": "ext"},
                    "spec": {"type": "ExternalName", "externalName": "example.org"}}),
            true,
        );
        ix
    }

    fn ips(o: &Outcome) -> Vec<String> {
        match o {
            Outcome::Answer { answers, .. } => answers
                .iter()
                .map(|r| match &r.data {
                    RData::A(a) => a.0.to_string(),
                    RData::AAAA(a) => a.0.to_string(),
                    RData::PTR(p) => p.0.to_string(),
                    RData::SRV(s) => format!("{} {}", s.port, s.target),
                    other => format!("{other:?}"),
                })
                .collect(),
            other => panic!("not an answer: {other:?}"),
        }
    }

    #[test]
    fn services_and_endpoints() {
        let ix = index();
        let q = |n: &str, t| ix.lookup(&name(n), t);
        assert_eq!(ips(&q("web.default.svc.cluster.local.", RecordType::A)), ["10.96.5.5"]);
        assert_eq!(ips(&q("WEB.Default.svc.Cluster.Local.", RecordType::A)), ["10.96.5.5"]);
        assert_eq!(q("web.default.svc.cluster.local.", RecordType::AAAA), Outcome::nodata());
        assert_eq!(q("nope.default.svc.cluster.local.", RecordType::A), Outcome::NxDomain);
        assert_eq!(q("default.svc.cluster.local.", RecordType::A), Outcome::nodata());
        assert_eq!(q("nons.svc.cluster.local.", RecordType::A), Outcome::NxDomain);
        assert_eq!(q("svc.cluster.local.", RecordType::A), Outcome::nodata());
        assert_eq!(q("x.cluster.local.", RecordType::A), Outcome::NxDomain);
        assert_eq!(q("example.org.", RecordType::A), Outcome::NotOurs);
        // Headless: ready endpoints only; hostnames and dashed IPs.
        assert_eq!(ips(&q("pg.db.svc.cluster.local.", RecordType::A)), ["10.88.0.5", "10.88.0.6"]);
        assert_eq!(ips(&q("pg-0.pg.db.svc.cluster.local.", RecordType::A)), ["10.88.0.5"]);
        assert_eq!(ips(&q("10-88-0-6.pg.db.svc.cluster.local.", RecordType::A)), ["10.88.0.6"]);
        assert_eq!(q("pg-2.pg.db.svc.cluster.local.", RecordType::A), Outcome::NxDomain);
        assert_eq!(q("pg-0.pg.db.svc.cluster.local.", RecordType::AAAA), Outcome::nodata());
        // SRV.
        assert_eq!(
            ips(&q("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV)),
            ["80 web.default.svc.cluster.local."]
        );
        assert_eq!(q("_http._udp.web.default.svc.cluster.local.", RecordType::SRV), Outcome::NxDomain);
        assert_eq!(q("_http._tcp.web.default.svc.cluster.local.", RecordType::A), Outcome::nodata());
        assert_eq!(
            ips(&q("_pg._tcp.pg.db.svc.cluster.local.", RecordType::SRV)),
            ["5432 pg-0.pg.db.svc.cluster.local.", "5432 10-88-0-6.pg.db.svc.cluster.local."]
        );
        // PTR.
        assert_eq!(ips(&q("5.5.96.10.in-addr.arpa.", RecordType::PTR)), ["web.default.svc.cluster.local."]);
        assert_eq!(ips(&q("5.0.88.10.in-addr.arpa.", RecordType::PTR)), ["pg-0.pg.db.svc.cluster.local."]);
        assert_eq!(q("9.9.9.10.in-addr.arpa.", RecordType::PTR), Outcome::NotOurs);
        // ExternalName.
        match q("ext.default.svc.cluster.local.", RecordType::A) {
            Outcome::Alias { target, .. } => assert_eq!(target, name("example.org.")),
            other => panic!("{other:?}"),
        }
        // Pods, version, apex.
        assert_eq!(ips(&q("10-1-2-3.default.pod.cluster.local.", RecordType::A)), ["10.1.2.3"]);
        assert_eq!(q("10-1-2.default.pod.cluster.local.", RecordType::A), Outcome::NxDomain);
        assert!(
            matches!(q("dns-version.cluster.local.", RecordType::TXT), Outcome::Answer { answers, .. } if answers.len() == 1)
        );
        assert!(
            matches!(q("cluster.local.", RecordType::SOA), Outcome::Answer { answers, .. } if answers.len() == 1)
        );
        assert_eq!(ips(&q("ns.dns.cluster.local.", RecordType::A)), ["10.96.0.10"]);
    }

    #[test]
    fn changes_and_deletes() {
        let mut ix = index();
        let slice = json!({"metadata": {"namespace": "db", "name": "pg-abc",
                                        "labels": {"kubernetes.io/service-name": "pg"}}});
        ix.set_slice(&slice, false);
        assert_eq!(ix.lookup(&name("pg.db.svc.cluster.local."), RecordType::A), Outcome::NxDomain);
        assert_eq!(ix.lookup(&name("5.0.88.10.in-addr.arpa."), RecordType::PTR), Outcome::NotOurs);
        let web = json!({"metadata": {"namespace": "default", "name": "web"}});
        ix.set_service(&web, false);
        assert_eq!(ix.lookup(&name("web.default.svc.cluster.local."), RecordType::A), Outcome::NxDomain);
        assert_eq!(ix.lookup(&name("5.5.96.10.in-addr.arpa."), RecordType::PTR), Outcome::NotOurs);
        // The namespace still has `ext`.
        assert_eq!(ix.lookup(&name("default.svc.cluster.local."), RecordType::A), Outcome::nodata());
        ix.set_service(&json!({"metadata": {"namespace": "default", "name": "ext"}}), false);
        assert_eq!(ix.lookup(&name("default.svc.cluster.local."), RecordType::A), Outcome::NxDomain);
        assert_eq!(ix.services(), 1);
    }

    #[test]
    fn reverse_names() {
        let l = |s: &str| s.split('.').map(str::to_string).collect::<Vec<_>>();
        assert_eq!(reverse_ip(&l("4.3.2.1"), false), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(reverse_ip(&l("04.3.2.1"), false), None);
        assert_eq!(reverse_ip(&l("3.2.1"), false), None);
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2";
        assert_eq!(reverse_ip(&l(v6), true), Some("2001:db8::1".parse().unwrap()));
    }
}
