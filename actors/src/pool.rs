//! Controller pools: N `capstan controllers` processes share the work.
//!
//! Objects map to P partitions by a hash of `namespace/name`. Members announce themselves
//! with a member Lease and claim partition Leases (coordination.k8s.io, namespace
//! `kube-system`) through the API, every write guarded by resourceVersion. All members
//! compute the same assignment from the live member list (partition i goes to member
//! i mod n of the sorted list); a member releases partitions it should no longer own and
//! claims the ones it should, taking over a partition whose holder stopped renewing after
//! the lease duration. A member only reconciles keys of partitions it holds; when it gains
//! partitions, its informers replay their caches so the new keys are reconciled.

use crate::client::{gvr, ApiClient, ClientError};
use crate::informer::Informers;
use crate::runtime::Partition;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Namespace of the pool's leases.
pub const NAMESPACE: &str = "kube-system";
const MEMBER_PREFIX: &str = "capstan-controllers-member-";
const PARTITION_PREFIX: &str = "capstan-controllers-partition-";

/// Settings of a pool member.
#[derive(Debug, Clone)]
pub struct Config {
    /// This member's id (unique in the pool).
    pub member: String,
    /// Number of partitions (the same for every member).
    pub partitions: u32,
    /// Lease duration: a member that stops renewing loses its partitions after this.
    pub lease_duration: Duration,
}

/// The partition of a key (FNV-1a of `namespace/name`, modulo `partitions`).
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as u32
}

/// The partitions member `index` of `members` should hold.
pub fn assignment(partitions: u32, members: usize, index: usize) -> HashSet<u32> {
    if members == 0 {
        return HashSet::new();
    }
    (0..partitions).filter(|p| (*p as usize) % members == index).collect()
}

fn now_micro() -> String {
    let now = jiff::Timestamp::now();
    // MicroTime: RFC 3339 with microseconds.
    let micros = now.as_microsecond();
    jiff::Timestamp::from_microsecond(micros).map(|t| format!("{t:.6}")).unwrap_or_else(|_| now.to_string())
}

fn renewed_within(lease: &Value, within: Duration) -> bool {
    let Some(t) = lease["spec"].get("renewTime").and_then(Value::as_str) else { return false };
    let Ok(ts) = t.parse::<jiff::Timestamp>() else { return false };
    let age = jiff::Timestamp::now().duration_since(ts);
    age.as_secs_f64() < within.as_secs_f64()
}

fn holder(lease: &Value) -> &str {
    lease["spec"].get("holderIdentity").and_then(Value::as_str).unwrap_or("")
}

/// A running pool member; [`Member::partition`] is the filter controllers use.
pub struct Member {
    owned: Arc<RwLock<HashSet<u32>>>,
    partitions: u32,
}

impl Member {
    /// The key filter for [`crate::controllers::Ctx::partition`].
    pub fn partition(&self) -> Partition {
        let owned = self.owned.clone();
        let p = self.partitions;
        Arc::new(move |key: &str| {
            owned.read().unwrap_or_else(|e| e.into_inner()).contains(&partition_of(key, p))
        })
    }

    /// The partitions held now.
    pub fn owned(&self) -> HashSet<u32> {
        self.owned.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Joins the pool and keeps membership and partition leases current.
pub fn join(client: ApiClient, informers: Arc<Informers>, config: Config) -> Member {
    let owned = Arc::new(RwLock::new(HashSet::new()));
    let member = Member { owned: owned.clone(), partitions: config.partitions };
    tokio::spawn(run(client, informers, config, owned));
    member
}

async fn upsert_lease(
    client: &ApiClient,
    name: &str,
    holder_id: &str,
    duration: Duration,
    current: Option<&Value>,
) -> Result<Value, ClientError> {
    let spec = json!({
        "holderIdentity": holder_id,
        "leaseDurationSeconds": duration.as_secs(),
        "renewTime": now_micro(),
    });
    match current {
        None => {
            let mut l = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec});
            l["spec"]["acquireTime"] = l["spec"]["renewTime"].clone();
            client.create(gvr::LEASES, Some(NAMESPACE), l).await
        }
        Some(cur) => {
            let mut l = cur.clone();
            if holder(cur) != holder_id {
                l["spec"]["acquireTime"] = spec["renewTime"].clone();
                let transitions = cur["spec"].get("leaseTransitions").and_then(Value::as_i64).unwrap_or(0);
                l["spec"]["leaseTransitions"] = json!(transitions + 1);
            }
            l["spec"]["holderIdentity"] = spec["holderIdentity"].clone();
            l["spec"]["leaseDurationSeconds"] = spec["leaseDurationSeconds"].clone();
            l["spec"]["renewTime"] = spec["renewTime"].clone();
            client.update(gvr::LEASES, Some(NAMESPACE), l).await
        }
    }
}

async fn run(client: ApiClient, informers: Arc<Informers>, config: Config, owned: Arc<RwLock<HashSet<u32>>>) {
    let member_lease = format!("{MEMBER_PREFIX}{}", config.member);
    let period = (config.lease_duration / 4).max(Duration::from_millis(200));
    loop {
        if let Err(e) = tick(&client, &informers, &config, &owned, &member_lease).await {
            tracing::debug!(member = %config.member, "pool membership round failed: {e}");
        }
        tokio::time::sleep(period).await;
    }
}

async fn tick(
    client: &ApiClient,
    informers: &Informers,
    config: &Config,
    owned: &RwLock<HashSet<u32>>,
    member_lease: &str,
) -> Result<(), ClientError> {
    let (leases, _) = client.list_all(gvr::LEASES, Some(NAMESPACE), None).await?;
    let find = |name: &str| leases.iter().find(|l| l["metadata"]["name"].as_str() == Some(name));
    // Announce this member.
    upsert_lease(client, member_lease, &config.member, config.lease_duration, find(member_lease)).await?;
    let mut members: Vec<String> = leases
        .iter()
        .filter(|l| l["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(MEMBER_PREFIX)))
        .filter(|l| renewed_within(l, config.lease_duration))
        .map(|l| holder(l).to_string())
        .collect();
    if !members.contains(&config.member) {
        members.push(config.member.clone());
    }
    members.sort();
    members.dedup();
    let index = members.iter().position(|m| *m == config.member).unwrap_or(0);
    let want = assignment(config.partitions, members.len(), index);
    let mut now_owned = HashSet::new();
    for p in 0..config.partitions {
        let name = format!("{PARTITION_PREFIX}{p}");
        let cur = find(&name);
        let mine = cur.is_some_and(|l| holder(l) == config.member);
        let free = cur.is_none_or(|l| holder(l).is_empty() || !renewed_within(l, config.lease_duration));
        if want.contains(&p) {
            if mine || free {
                match upsert_lease(client, &name, &config.member, config.lease_duration, cur).await {
                    Ok(_) => {
                        now_owned.insert(p);
                    }
                    Err(e) if e.is_conflict() || e.is_already_exists() => {}
                    Err(e) => return Err(e),
                }
            }
        } else if mine {
            // Hand it over: clear the holder so its new owner can claim it at once.
            if let Some(l) = cur {
                let mut l = l.clone();
                l["spec"]["holderIdentity"] = json!("");
                match client.update(gvr::LEASES, Some(NAMESPACE), l).await {
                    Ok(_) => {}
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let gained = {
        let mut o = owned.write().unwrap_or_else(|e| e.into_inner());
        let gained = now_owned.iter().any(|p| !o.contains(p));
        if *o != now_owned {
            tracing::info!(member = %config.member, partitions = ?{ let mut v: Vec<_> = now_owned.iter().copied().collect(); v.sort(); v }, "pool partitions changed");
        }
        *o = now_owned;
        gained
    };
    if gained {
        informers.resync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cover_everything_once() {
        for members in 1..5 {
            let mut all: Vec<u32> = (0..members).flat_map(|i| assignment(16, members, i)).collect();
            all.sort();
            assert_eq!(all, (0..16).collect::<Vec<_>>());
        }
        assert!(partition_of("default/web", 16) < 16);
        assert_eq!(partition_of("default/web", 16), partition_of("default/web", 16));
    }

    #[test]
    fn renewal_window() {
        let fresh = json!({"spec": {"renewTime": now_micro()}});
        assert!(renewed_within(&fresh, Duration::from_secs(10)));
        let old = json!({"spec": {"renewTime": "2020-01-01T00:00:00.000000Z"}});
        assert!(!renewed_within(&old, Duration::from_secs(10)));
        assert!(!renewed_within(&json!({}), Duration::from_secs(10)));
    }
}
