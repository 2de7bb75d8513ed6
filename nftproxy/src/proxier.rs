//! The proxier: the Services and EndpointSlices seen so far, what is programmed for each
//! Service, and the syncs that bring the table from the one to the other.
//!
//! A change marks its Service dirty; a sync computes the dirty Services' rules, diffs them
//! with what is programmed and runs all the diffs as one `nft -f -` transaction. The first
//! sync (and any sync after a failed transaction) replaces the whole table in one
//! transaction. Chains a Service no longer uses are flushed at once and deleted a second
//! later ([`Proxier::delete_stale`]).

use crate::model::{service_model, slice_service_key, Ipv4Net};
use crate::nft::Nft;
use crate::relay::Relays;
use crate::rules::{self, Element, ServiceRules, Table};
use crate::ProxyError;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An element's identity in the table (two Services may not both hold it).
type ElementKey = (&'static str, String);

/// What a sync did.
#[derive(Debug, Default, Clone)]
pub struct SyncReport {
    /// The Services looked at (`namespace/name`).
    pub services: Vec<String>,
    /// Whether the whole table was rebuilt.
    pub full: bool,
    /// How many Services' rules changed.
    pub changed: usize,
    /// The size of the script run.
    pub script_bytes: usize,
}

/// The proxier's state. Not shared: one task owns it.
pub struct Proxier {
    table: Table,
    node: String,
    nft: Nft,
    services: HashMap<String, Arc<Value>>,
    /// Service key → slice name → slice.
    slices: HashMap<String, BTreeMap<String, Arc<Value>>>,
    /// Slice key (`namespace/name`) → the Service it was filed under.
    slice_service: HashMap<String, String>,
    programmed: HashMap<String, ServiceRules>,
    claims: HashMap<ElementKey, String>,
    /// Services some of whose elements another Service holds: looked at again when an
    /// element is given up.
    conflicted: BTreeSet<String>,
    /// Rules nft refused for a Service (not tried again until they change).
    refused: HashMap<String, ServiceRules>,
    dirty: BTreeSet<String>,
    stale: HashMap<String, Instant>,
    relays: Option<Relays>,
    /// The loopback endpoints each Service holds a relay for.
    held: HashMap<String, BTreeSet<SocketAddrV4>>,
    full_needed: bool,
}

impl Proxier {
    /// A proxier programming `table` for node `node`. Without `relays`, endpoints on
    /// loopback are left out.
    pub fn new(table: Table, node: &str, nft: Nft, relays: Option<Relays>) -> Proxier {
        Proxier {
            table,
            node: node.to_string(),
            nft,
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_service: HashMap::new(),
            programmed: HashMap::new(),
            claims: HashMap::new(),
            conflicted: BTreeSet::new(),
            refused: HashMap::new(),
            dirty: BTreeSet::new(),
            stale: HashMap::new(),
            relays,
            held: HashMap::new(),
            full_needed: true,
        }
    }

    /// The table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// A Service was added or changed (`Some`), or deleted (`None`).
    pub fn service_changed(&mut self, key: &str, svc: Option<Arc<Value>>) {
        match svc {
            Some(s) => {
                if self.services.get(key).is_some_and(|old| same_spec_and_status(old, &s)) {
                    return;
                }
                self.services.insert(key.to_string(), s);
            }
            None => {
                if self.services.remove(key).is_none() {
                    return;
                }
            }
        }
        self.dirty.insert(key.to_string());
    }

    /// An EndpointSlice (key `namespace/name`) was added or changed (`Some`), or deleted.
    pub fn slice_changed(&mut self, slice_key: &str, slice: Option<Arc<Value>>) {
        let name = slice_key.split_once('/').map(|(_, n)| n).unwrap_or(slice_key).to_string();
        let new_service = slice.as_deref().and_then(slice_service_key);
        if let Some(old_service) = self.slice_service.remove(slice_key) {
            if Some(&old_service) != new_service.as_ref() {
                if let Some(m) = self.slices.get_mut(&old_service) {
                    m.remove(&name);
                    if m.is_empty() {
                        self.slices.remove(&old_service);
                    }
                }
                self.dirty.insert(old_service);
            }
        }
        if let (Some(service), Some(slice)) = (new_service, slice) {
            self.slice_service.insert(slice_key.to_string(), service.clone());
            let m = self.slices.entry(service.clone()).or_default();
            if m.get(&name).is_some_and(|old| {
                old.get("endpoints") == slice.get("endpoints") && old.get("ports") == slice.get("ports")
            }) {
                return;
            }
            m.insert(name, slice);
            self.dirty.insert(service);
        }
    }

    /// Looks at a Service again at the next sync.
    pub fn mark_dirty(&mut self, key: &str) {
        self.dirty.insert(key.to_string());
    }

    /// Whether a sync has something to do.
    pub fn has_work(&self) -> bool {
        self.full_needed || !self.dirty.is_empty()
    }

    /// Asks for the whole table to be rebuilt at the next sync.
    pub fn request_full_sync(&mut self) {
        self.full_needed = true;
    }

    /// The Service's object, as last seen.
    pub fn service(&self, key: &str) -> Option<&Arc<Value>> {
        self.services.get(key)
    }

    /// What is programmed for a Service.
    pub fn programmed(&self, key: &str) -> Option<&ServiceRules> {
        self.programmed.get(key)
    }

    /// The Service holding an element (e.g. an external IP . protocol . port), if any.
    pub fn holder(&self, map: &'static str, key: &str) -> Option<&str> {
        self.claims.get(&(map, key.to_string())).map(String::as_str)
    }

    /// Chains flushed and waiting to be deleted.
    pub fn stale_chains(&self) -> usize {
        self.stale.len()
    }

    /// Brings the table up to date: the whole table on the first sync (or after a failed
    /// transaction), else only the dirty Services.
    pub async fn sync(&mut self) -> Result<SyncReport, ProxyError> {
        if self.full_needed {
            return self.full_sync().await;
        }
        self.sync_dirty().await
    }

    /// The rules a Service should have (empty when it is gone or has nothing to serve),
    /// starting relays for its loopback endpoints.
    fn desired(&mut self, key: &str) -> (ServiceRules, BTreeSet<SocketAddrV4>) {
        let Some(svc) = self.services.get(key) else { return Default::default() };
        let empty = BTreeMap::new();
        let slices = self.slices.get(key).unwrap_or(&empty);
        let Some(model) = service_model(key, svc, slices, &self.node) else { return Default::default() };
        let mut wanted = BTreeSet::new();
        let mut relays = HashMap::new();
        if let Some(r) = self.relays.as_mut() {
            let held = self.held.get(key);
            for p in model.ports.iter().filter(|p| p.protocol == crate::model::Protocol::Tcp) {
                for e in p.endpoints.iter().filter(|e| e.ip.is_loopback()) {
                    let target = SocketAddrV4::new(e.ip, e.port);
                    if wanted.contains(&target) {
                        continue;
                    }
                    if held.is_some_and(|h| h.contains(&target)) {
                        wanted.insert(target);
                        continue;
                    }
                    match r.acquire(target) {
                        Ok(_) => {
                            wanted.insert(target);
                        }
                        Err(e) => tracing::warn!(service = key, %target, "cannot start a relay: {e}"),
                    }
                }
            }
            relays = r.addresses();
        }
        (rules::service_rules(&model, self.table.pod_cidr, &relays), wanted)
    }

    /// Drops the elements of `rules` that another Service holds (or took earlier in this
    /// batch, `taken`), noting the conflict.
    fn drop_conflicts(
        &mut self,
        key: &str,
        rules: &mut ServiceRules,
        taken: &mut HashMap<ElementKey, String>,
    ) {
        let mut conflict = false;
        rules.elements.retain(|e| {
            let id = (e.map, e.key.clone());
            let holder = self.claims.get(&id).or_else(|| taken.get(&id));
            match holder {
                Some(h) if h != key => {
                    tracing::warn!(service = key, holder = %h, "service proxy: {} {} is already served for another Service", e.map, e.key);
                    conflict = true;
                    false
                }
                _ => {
                    taken.insert(id, key.to_string());
                    true
                }
            }
        });
        if conflict {
            self.conflicted.insert(key.to_string());
        } else {
            self.conflicted.remove(key);
        }
    }

    /// Records a Service's rules as programmed: claims, relays held.
    fn commit(&mut self, key: &str, rules: ServiceRules, wanted: BTreeSet<SocketAddrV4>) {
        let old = self.programmed.remove(key).unwrap_or_default();
        let mut released = false;
        for e in old.elements.difference(&rules.elements) {
            let id = (e.map, e.key.clone());
            if self.claims.get(&id).map(String::as_str) == Some(key) {
                self.claims.remove(&id);
                released = true;
            }
        }
        for e in &rules.elements {
            self.claims.insert((e.map, e.key.clone()), key.to_string());
        }
        for c in rules.chains.keys() {
            self.stale.remove(c);
        }
        if released {
            // Someone may be waiting for what was given up.
            let waiting: Vec<String> = self.conflicted.iter().filter(|k| *k != key).cloned().collect();
            self.dirty.extend(waiting);
        }
        self.release_relays(key, &wanted);
        self.refused.remove(key);
        if !rules.is_empty() {
            self.programmed.insert(key.to_string(), rules);
        }
    }

    fn release_relays(&mut self, key: &str, wanted: &BTreeSet<SocketAddrV4>) {
        let old = self.held.remove(key).unwrap_or_default();
        if let Some(r) = self.relays.as_mut() {
            for t in old.difference(wanted) {
                r.release(*t);
            }
        }
        if !wanted.is_empty() {
            self.held.insert(key.to_string(), wanted.clone());
        }
    }

    async fn sync_dirty(&mut self) -> Result<SyncReport, ProxyError> {
        let keys: Vec<String> = std::mem::take(&mut self.dirty).into_iter().collect();
        let mut script = String::new();
        let mut plans = Vec::new();
        let mut taken = HashMap::new();
        for key in &keys {
            let (mut new, wanted) = self.desired(key);
            self.drop_conflicts(key, &mut new, &mut taken);
            if self.refused.get(key) == Some(&new) {
                self.release_relays_unused(key, &wanted);
                continue;
            }
            let empty = ServiceRules::default();
            let old = self.programmed.get(key).unwrap_or(&empty);
            if *old == new {
                self.release_relays(key, &wanted);
                continue;
            }
            let stale = rules::diff_script(&self.table.name, old, &new, &mut script);
            plans.push((key.clone(), new, wanted, stale));
        }
        let report =
            SyncReport { services: keys, full: false, changed: plans.len(), script_bytes: script.len() };
        if script.is_empty() {
            return Ok(report);
        }
        if let Err(e) = self.nft.run(&script).await {
            // What is in the kernel is not what we think (or a Service's rules are refused):
            // rebuild everything, which also isolates a refused Service.
            tracing::warn!("service proxy: incremental update failed, rebuilding the table: {e}");
            self.full_needed = true;
            self.dirty.extend(report.services.iter().cloned());
            for (key, _, wanted, _) in plans {
                self.release_relays_unused(&key, &wanted);
            }
            return Err(e);
        }
        let now = Instant::now();
        for (key, new, wanted, stale) in plans {
            for c in stale {
                self.stale.insert(c, now);
            }
            self.commit(&key, new, wanted);
        }
        Ok(report)
    }

    /// Keeps relays a Service already held and releases the ones it no longer wants, without
    /// programming anything.
    fn release_relays_unused(&mut self, key: &str, wanted: &BTreeSet<SocketAddrV4>) {
        let held = self.held.get(key).cloned().unwrap_or_default();
        let keep: BTreeSet<SocketAddrV4> = held.union(wanted).copied().collect();
        self.release_relays(key, &keep);
    }

    async fn full_sync(&mut self) -> Result<SyncReport, ProxyError> {
        self.dirty.clear();
        self.claims.clear();
        self.conflicted.clear();
        let mut keys: Vec<String> = self.services.keys().cloned().collect();
        keys.extend(self.programmed.keys().cloned());
        keys.extend(self.held.keys().cloned());
        keys.sort();
        keys.dedup();
        let mut all: Vec<(String, ServiceRules, BTreeSet<SocketAddrV4>)> = Vec::new();
        let mut taken = HashMap::new();
        for key in &keys {
            let (mut rules, wanted) = self.desired(key);
            self.drop_conflicts(key, &mut rules, &mut taken);
            all.push((key.clone(), rules, wanted));
        }
        let mut script = String::new();
        rules::replace_table_script(&self.table, &mut script);
        rules::add_script(&self.table.name, all.iter().map(|(_, r, _)| r), &mut script);
        let report =
            SyncReport { services: keys, full: true, changed: all.len(), script_bytes: script.len() };
        self.programmed.clear();
        self.claims.clear();
        self.stale.clear();
        match self.nft.run(&script).await {
            Ok(()) => {
                for (key, rules, wanted) in all {
                    self.commit(&key, rules, wanted);
                }
                self.refused.clear();
                self.full_needed = false;
                Ok(report)
            }
            Err(e) => {
                tracing::warn!("service proxy: rebuilding the table failed, trying Service by Service: {e}");
                let mut base = String::new();
                rules::replace_table_script(&self.table, &mut base);
                self.nft.run(&base).await?;
                self.full_needed = false;
                let empty = ServiceRules::default();
                for (key, rules, wanted) in all {
                    let mut one = String::new();
                    rules::diff_script(&self.table.name, &empty, &rules, &mut one);
                    if one.is_empty() {
                        self.commit(&key, rules, wanted);
                        continue;
                    }
                    match self.nft.run(&one).await {
                        Ok(()) => self.commit(&key, rules, wanted),
                        Err(e) => {
                            tracing::warn!(service = %key, "service proxy: nft refused this Service's rules: {e}");
                            self.release_relays(&key, &wanted);
                            self.refused.insert(key, rules);
                        }
                    }
                }
                Ok(report)
            }
        }
    }

    /// Deletes the chains flushed at least `age` ago. A failed deletion forgets them (they
    /// are empty; the next rebuild removes them).
    pub async fn delete_stale(&mut self, age: Duration) -> Result<usize, ProxyError> {
        let now = Instant::now();
        let due: Vec<String> = self
            .stale
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= age)
            .map(|(c, _)| c.clone())
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        let mut script = String::new();
        rules::delete_chains_script(&self.table.name, due.iter(), &mut script);
        for c in &due {
            self.stale.remove(c);
        }
        self.nft.run(&script).await?;
        Ok(due.len())
    }

    /// How many Services have rules.
    pub fn programmed_services(&self) -> usize {
        self.programmed.len()
    }

    /// The pod CIDR the rules use.
    pub fn pod_cidr(&self) -> Ipv4Net {
        self.table.pod_cidr
    }

    /// The elements programmed for a Service in one map.
    pub fn elements_of(&self, key: &str, map: &str) -> Vec<Element> {
        self.programmed
            .get(key)
            .map(|r| r.elements.iter().filter(|e| e.map == map).cloned().collect())
            .unwrap_or_default()
    }
}

/// Whether two versions of a Service differ only in what the proxy does not read
/// (metadata other than labels, e.g. a resourceVersion bump).
fn same_spec_and_status(a: &Value, b: &Value) -> bool {
    a.get("spec") == b.get("spec")
        && a.get("status") == b.get("status")
        && a.get("metadata").and_then(|m| m.get("labels")) == b.get("metadata").and_then(|m| m.get("labels"))
}
