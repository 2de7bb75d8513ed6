//! The service proxy: kube-proxy's job inside the node agent.
//!
//! It follows Services and EndpointSlices through informers and programs one nftables
//! table it owns ([`rules`] describes the layout, modelled on kube-proxy's nftables mode),
//! named per pod bridge ([`Table::name_for_bridge`]: `capstan` for the default bridge,
//! `capstan-<bridge>` otherwise). The first sync replaces the table in one transaction (so a
//! restarted agent leaves no duplicates); after that a change to a Service or its slices
//! rewrites only that Service's chains and map elements, in one `nft -f -` transaction
//! together with whatever else changed meanwhile ([`Proxier`]).
//!
//! Besides the rules it:
//! - relays endpoints on loopback (the API of `capstan up`, as the `kubernetes` Service's
//!   endpoint) from the pod bridge's address ([`relay`]);
//! - serves `type: LoadBalancer` Services as NodePorts plus the node's address, which it
//!   adds to `status.loadBalancer.ingress` (as k3s's ServiceLB; a port another LoadBalancer
//!   Service already serves on this node leaves the Service pending, and Services with a
//!   `loadBalancerClass` are left to their controller);
//! - leaves alone Services labelled `capstan.io/node-local-dns: "true"` (the cluster DNS
//!   the agent serves itself) and ExternalName Services.
//!
//! Not done (as upstream's nftables mode, or not yet): NodePorts on 127.0.0.1 (they would
//! need `route_localnet`), IPv6, clearing UDP conntrack entries of removed endpoints,
//! `loadBalancerSourceRanges`, topology hints.

pub use capstan_nftproxy::{
    model, nft, relay, rules, Nft, Proxier, ProxyError, ServiceRules, SyncReport, Table,
};

use capstan_actors::client::{gvr, ApiClient};
use capstan_actors::informer::{key_of, split_key, Change, Informer};
use model::Ipv4Net;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Settings of the service proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The node's name (endpoints with this `nodeName` are local).
    pub node_name: String,
    /// The node's address, written into `status.loadBalancer.ingress` of LoadBalancer
    /// Services (none: no load balancer status is written).
    pub node_ip: Option<Ipv4Addr>,
    /// The pod bridge (its name picks the table's; traffic on it is this node's pods').
    pub bridge: String,
    /// The node's pod CIDR.
    pub pod_cidr: String,
    /// The Service CIDR (traffic to an address in it that matches no Service is
    /// rejected, not routed away); none to skip that check.
    pub service_cidr: Option<String>,
}

impl ProxyConfig {
    /// The table these settings describe.
    pub fn table(&self) -> Result<Table, ProxyError> {
        let pod_cidr = Ipv4Net::parse(&self.pod_cidr).ok_or_else(|| {
            ProxyError::Invalid(format!("pod CIDR {:?} is not an IPv4 CIDR", self.pod_cidr))
        })?;
        let service_cidr = match &self.service_cidr {
            Some(c) => Some(
                Ipv4Net::parse(c)
                    .ok_or_else(|| ProxyError::Invalid(format!("service CIDR {c:?} is not an IPv4 CIDR")))?,
            ),
            None => None,
        };
        if !model::is_nft_safe(&self.bridge) || self.bridge.is_empty() {
            return Err(ProxyError::Invalid(format!(
                "bridge name {:?} is not a valid interface name",
                self.bridge
            )));
        }
        Ok(Table {
            name: Table::name_for_bridge(&self.bridge),
            bridge: self.bridge.clone(),
            pod_cidr,
            service_cidr,
        })
    }
}

enum Msg {
    Service(Change),
    Slice(Change),
    LoadBalancerWritten { key: String, ok: bool },
    Recheck(String),
}

/// Starts the service proxy on the current tokio runtime, following the `services` and
/// EndpointSlice (`slices`) informers (shared with the cluster DNS; the caller starts them).
/// Errors when `nft` is missing or the settings are bad; after that it keeps trying (a
/// failed transaction is retried with back-off).
pub fn start(
    client: ApiClient,
    services: &Arc<Informer>,
    slices: &Arc<Informer>,
    cfg: ProxyConfig,
) -> Result<(), ProxyError> {
    let nft = Nft::find()?;
    let table = cfg.table()?;
    let relays = relay::Relays::new(table.pod_cidr.gateway());
    let proxier = Proxier::new(table.clone(), &cfg.node_name, nft, Some(relays));
    let (tx, rx) = mpsc::unbounded_channel();
    let (services, slices) = (services.clone(), slices.clone());
    let t = tx.clone();
    services.on_change(Arc::new(move |c: &Change| {
        let _ = t.send(Msg::Service(c.clone()));
    }));
    let t = tx.clone();
    slices.on_change(Arc::new(move |c: &Change| {
        let _ = t.send(Msg::Slice(c.clone()));
    }));
    tokio::spawn(async move {
        // The relay for loopback endpoints listens on the bridge's address: make sure the
        // bridge has it before the first pod does (the CNI bridge plugin reuses it).
        let gateway = format!("{}/{}", table.pod_cidr.gateway(), table.pod_cidr.prefix);
        if let Err(e) = crate::network::ensure_bridge(&table.bridge, &gateway).await {
            tracing::warn!("service proxy: cannot create the pod bridge {}: {e}", table.bridge);
        }
        services.wait_synced().await;
        slices.wait_synced().await;
        run(proxier, rx, tx, client, cfg.node_ip).await;
    });
    Ok(())
}

/// Removes the proxy's table of a node whose pod bridge is `bridge` (`capstan node-reset`).
/// Nothing to do when there is no table or no `nft`.
pub async fn reset(bridge: &str) -> Result<(), ProxyError> {
    let nft = match Nft::find() {
        Ok(n) => n,
        Err(ProxyError::Missing) => return Ok(()),
        Err(e) => return Err(e),
    };
    let table = Table::name_for_bridge(bridge);
    if nft.list_table(&table).await?.is_some() {
        nft.delete_table(&table).await?;
    }
    Ok(())
}

/// The proxy's loop: apply changes, sync, write load balancer status, delete stale chains.
async fn run(
    mut p: Proxier,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    tx: mpsc::UnboundedSender<Msg>,
    client: ApiClient,
    node_ip: Option<Ipv4Addr>,
) {
    let node_ip = node_ip.filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
    if node_ip.is_none() {
        tracing::warn!(
            "service proxy: the node has no routable address; LoadBalancer Services get no status"
        );
    }
    let mut backoff = Duration::from_millis(200);
    let mut retry_at: Option<Instant> = None;
    let mut writing: HashSet<String> = HashSet::new();
    let stale_age = Duration::from_secs(1);
    loop {
        while let Ok(m) = rx.try_recv() {
            handle(&mut p, m, &mut writing);
        }
        let now = Instant::now();
        if p.has_work() && retry_at.is_none_or(|t| now >= t) {
            let started = std::time::Instant::now();
            match p.sync().await {
                Ok(report) => {
                    if report.changed > 0 {
                        tracing::debug!(
                            full = report.full,
                            changed = report.changed,
                            bytes = report.script_bytes,
                            ms = started.elapsed().as_millis() as u64,
                            "service proxy: rules synced"
                        );
                    }
                    retry_at = None;
                    backoff = Duration::from_millis(200);
                    if let Some(ip) = node_ip {
                        for key in &report.services {
                            load_balancer_status(&p, key, ip, &client, &tx, &mut writing);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("service proxy: sync failed (retrying in {backoff:?}): {e}");
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
            continue;
        }
        if p.stale_chains() > 0 {
            if let Err(e) = p.delete_stale(stale_age).await {
                tracing::debug!("service proxy: deleting unused chains failed: {e}");
            }
        }
        let mut wake = Instant::now() + Duration::from_secs(3600);
        if p.stale_chains() > 0 {
            wake = wake.min(Instant::now() + stale_age);
        }
        if let Some(t) = retry_at {
            wake = wake.min(t);
        }
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => handle(&mut p, m, &mut writing),
                None => return,
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

fn handle(p: &mut Proxier, m: Msg, writing: &mut HashSet<String>) {
    match m {
        Msg::Service(c) => {
            let key = key_of(c.object());
            match c {
                Change::Applied { new, .. } => p.service_changed(&key, Some(new)),
                Change::Deleted(_) => p.service_changed(&key, None),
            }
        }
        Msg::Slice(c) => {
            let key = key_of(c.object());
            match c {
                Change::Applied { new, .. } => p.slice_changed(&key, Some(new)),
                Change::Deleted(_) => p.slice_changed(&key, None),
            }
        }
        Msg::LoadBalancerWritten { key, ok } => {
            writing.remove(&key);
            if !ok {
                p.mark_dirty(&key);
            }
        }
        Msg::Recheck(key) => p.mark_dirty(&key),
    }
}

/// The Service with this node's address added to (or removed from)
/// `status.loadBalancer.ingress`, when that needs to change.
pub fn load_balancer_update(
    svc: &Value,
    node_ip: Ipv4Addr,
    port_taken: impl Fn(&str) -> bool,
) -> Option<Value> {
    let spec = svc.get("spec")?;
    let is_lb = spec.get("type").and_then(Value::as_str) == Some("LoadBalancer")
        && spec.get("loadBalancerClass").and_then(Value::as_str).is_none_or(str::is_empty);
    let deleting = svc.get("metadata").and_then(|m| m.get("deletionTimestamp")).is_some_and(|d| !d.is_null());
    let ip = node_ip.to_string();
    let wants = is_lb
        && !deleting
        && spec.get("ports").and_then(Value::as_array).into_iter().flatten().all(|p| {
            let proto = model::Protocol::parse(p.get("protocol").and_then(Value::as_str))
                .unwrap_or(model::Protocol::Tcp);
            let port = p.get("port").and_then(Value::as_u64).unwrap_or(0);
            !port_taken(&format!("{ip} . {} . {port}", proto.nft()))
        });
    let ingress: Vec<Value> = svc
        .get("status")
        .and_then(|s| s.get("loadBalancer"))
        .and_then(|l| l.get("ingress"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let has = ingress.iter().any(|i| i.get("ip").and_then(Value::as_str) == Some(ip.as_str()));
    let new_ingress: Vec<Value> = if wants && !has {
        let mut v = ingress;
        v.push(json!({"ip": ip, "ipMode": "VIP"}));
        v
    } else if !wants && has {
        ingress.into_iter().filter(|i| i.get("ip").and_then(Value::as_str) != Some(ip.as_str())).collect()
    } else {
        return None;
    };
    let mut obj = svc.clone();
    obj["status"]["loadBalancer"] =
        if new_ingress.is_empty() { json!({}) } else { json!({"ingress": new_ingress}) };
    Some(obj)
}

fn load_balancer_status(
    p: &Proxier,
    key: &str,
    node_ip: Ipv4Addr,
    client: &ApiClient,
    tx: &mpsc::UnboundedSender<Msg>,
    writing: &mut HashSet<String>,
) {
    if writing.contains(key) {
        return;
    }
    let Some(svc) = p.service(key) else { return };
    let taken = |element: &str| p.holder(rules::EXTERNAL_IPS, element).is_some_and(|h| h != key);
    let Some(obj) = load_balancer_update(svc, node_ip, taken) else { return };
    writing.insert(key.to_string());
    let (client, tx, key) = (client.clone(), tx.clone(), key.to_string());
    tokio::spawn(async move {
        let (ns, _) = split_key(&key);
        let ok = match client.update_status(gvr::SERVICES, ns, obj).await {
            Ok(_) => true,
            // A newer version is on its way to the informer, or the Service is gone.
            Err(e) if e.is_conflict() || e.is_not_found() => true,
            Err(e) => {
                tracing::warn!(service = %key, "service proxy: cannot write the load balancer status: {e}");
                let tx = tx.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let _ = tx.send(Msg::Recheck(key));
                });
                true
            }
        };
        let _ = tx.send(Msg::LoadBalancerWritten { key, ok });
    });
}

#[cfg(test)]
mod tests;
