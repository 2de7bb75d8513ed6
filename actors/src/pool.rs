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
//!
//! A partition is never handled by two members at once on purpose: a member stops
//! handling a partition *before* it writes the release, and a member that could not renew
//! a partition's lease for three quarters of the lease duration (cut off from the API,
//! paused, or its rounds slowed down by a busy machine) stops handling that partition —
//! checked on every key, not only once per round — before anyone else may take it over. Writes of a stale
//! owner that still race fail on their resourceVersion precondition anyway.
//!
//! Failover after a member dies: its leases expire `lease_duration` after its last
//! renewal; the survivors notice on their next round (every `lease_duration / 4`) and
//! claim its partitions at once (no other partition moves), so everything is held again
//! within `lease_duration × 1.25` — 3.75 s with `--lease-seconds 3`.
//!
//! Metrics: `capstan_controller_pool_partition_owned{partition}` (1 while held),
//! `capstan_controller_pool_keys_total{partition}` (keys this member accepted to
//! reconcile), `capstan_controller_pool_members` (live members seen) and
//! `capstan_controller_pool_partition_changes_total`.

use crate::client::{gvr, ApiClient, ClientError};
use crate::informer::Informers;
use crate::runtime::Partition;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

struct PoolMetrics {
    owned: capstan_metrics::IntGaugeVec,
    keys: capstan_metrics::IntCounterVec,
    members: capstan_metrics::IntGaugeVec,
    changes: capstan_metrics::IntCounterVec,
}

static METRICS: LazyLock<PoolMetrics> = LazyLock::new(|| PoolMetrics {
    owned: capstan_metrics::gauges(
        "capstan_controller_pool_partition_owned",
        "Whether this pool member holds the partition (1) or not (0)",
        &["partition"],
    ),
    keys: capstan_metrics::counters(
        "capstan_controller_pool_keys_total",
        "Keys of the partition this pool member accepted to reconcile",
        &["partition"],
    ),
    members: capstan_metrics::gauges(
        "capstan_controller_pool_members",
        "Live members of the controller pool this member sees",
        &["member"],
    ),
    changes: capstan_metrics::counters(
        "capstan_controller_pool_partition_changes_total",
        "Times the set of partitions this member holds changed",
        &["member"],
    ),
});

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

/// Who should hold each partition: `members` are the live members, sorted;
/// `holders[p]` the live holder of partition p, if any. Every member computes the same
/// plan from the same leases. Shares: P/n each, one more for the first P mod n members;
/// a live holder keeps its partitions (lowest first) up to its share; the others go, in
/// partition order, to the first member with room.
pub fn plan(members: &[String], holders: &[Option<String>]) -> Vec<String> {
    let n = members.len();
    if n == 0 {
        return vec![String::new(); holders.len()];
    }
    let p = holders.len();
    let share = |i: usize| p / n + usize::from(i < p % n);
    let mut count = vec![0usize; n];
    let mut out: Vec<Option<usize>> = vec![None; p];
    for (part, h) in holders.iter().enumerate() {
        if let Some(i) = h.as_ref().and_then(|h| members.iter().position(|m| m == h)) {
            if count[i] < share(i) {
                count[i] += 1;
                out[part] = Some(i);
            }
        }
    }
    for slot in out.iter_mut().filter(|o| o.is_none()) {
        if let Some(i) = (0..n).find(|i| count[*i] < share(*i)) {
            count[i] += 1;
            *slot = Some(i);
        }
    }
    out.into_iter().map(|o| o.map(|i| members[i].clone()).unwrap_or_default()).collect()
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
    owned: Arc<Owned>,
    partitions: u32,
    fence: Duration,
}

/// The partitions held, each with when its lease was last renewed (the request's start).
type Owned = RwLock<HashMap<u32, Instant>>;

/// How long after a renewal this member still handles a partition: ¾ of the lease, so it
/// stops before others may take the partition over.
fn fence(lease_duration: Duration) -> Duration {
    lease_duration * 3 / 4
}

impl Member {
    /// The key filter for [`crate::controllers::Ctx::partition`].
    pub fn partition(&self) -> Partition {
        let owned = self.owned.clone();
        let p = self.partitions;
        let fence = self.fence;
        Arc::new(move |key: &str| {
            let part = partition_of(key, p);
            let mine = owned
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&part)
                .is_some_and(|renewed| renewed.elapsed() < fence);
            if mine {
                METRICS.keys.with_label_values(&[&part.to_string()]).inc();
            }
            mine
        })
    }

    /// The partitions held now.
    pub fn owned(&self) -> HashSet<u32> {
        let o = self.owned.read().unwrap_or_else(|e| e.into_inner());
        o.iter().filter(|(_, t)| t.elapsed() < self.fence).map(|(p, _)| *p).collect()
    }
}

/// Joins the pool and keeps membership and partition leases current.
pub fn join(client: ApiClient, informers: Arc<Informers>, config: Config) -> Member {
    let owned = Arc::new(RwLock::new(HashMap::new()));
    let member =
        Member { owned: owned.clone(), partitions: config.partitions, fence: fence(config.lease_duration) };
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

async fn run(client: ApiClient, informers: Arc<Informers>, config: Config, owned: Arc<Owned>) {
    let member_lease = format!("{MEMBER_PREFIX}{}", config.member);
    let period = (config.lease_duration / 4).max(Duration::from_millis(200));
    for p in 0..config.partitions {
        METRICS.owned.with_label_values(&[&p.to_string()]).set(0);
    }
    // When this member last renewed the leases of everything it holds.
    let mut renewed = Instant::now();
    // Rounds start every period; a round that took longer delays the next, not more.
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match tick(&client, &informers, &config, &owned, &member_lease).await {
            Ok(()) => renewed = Instant::now(),
            Err(e) => {
                tracing::debug!(member = %config.member, "pool membership round failed: {e}");
                // Others may take our partitions once the leases expire: stop first.
                if renewed.elapsed() >= fence(config.lease_duration) {
                    let dropped = set_owned(&owned, HashMap::new(), &config.member);
                    if dropped {
                        tracing::warn!(member = %config.member, "could not renew the pool leases for {:?}: stopped handling every partition", renewed.elapsed());
                    }
                }
            }
        }
    }
}

/// Replaces the held set; says whether it changed.
fn set_owned(owned: &Owned, now_owned: HashMap<u32, Instant>, member: &str) -> bool {
    let mut o = owned.write().unwrap_or_else(|e| e.into_inner());
    let before: HashSet<u32> = o.keys().copied().collect();
    let after: HashSet<u32> = now_owned.keys().copied().collect();
    *o = now_owned;
    if before == after {
        return false;
    }
    for p in before.difference(&after) {
        METRICS.owned.with_label_values(&[&p.to_string()]).set(0);
    }
    for p in after.difference(&before) {
        METRICS.owned.with_label_values(&[&p.to_string()]).set(1);
    }
    let mut v: Vec<u32> = after.iter().copied().collect();
    v.sort();
    tracing::info!(member = %member, partitions = ?v, "pool partitions changed");
    METRICS.changes.with_label_values(&[member]).inc();
    true
}

async fn tick(
    client: &ApiClient,
    informers: &Informers,
    config: &Config,
    owned: &Owned,
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
    METRICS.members.with_label_values(&[&config.member]).set(members.len() as i64);
    let live_holders: Vec<Option<String>> = (0..config.partitions)
        .map(|p| {
            find(&format!("{PARTITION_PREFIX}{p}"))
                .filter(|l| renewed_within(l, config.lease_duration))
                .map(|l| holder(l).to_string())
                .filter(|h| members.contains(h))
        })
        .collect();
    let want: HashSet<u32> = plan(&members, &live_holders)
        .iter()
        .enumerate()
        .filter(|(_, m)| **m == config.member)
        .map(|(p, _)| p as u32)
        .collect();
    let mut now_owned = HashMap::new();
    for p in 0..config.partitions {
        let name = format!("{PARTITION_PREFIX}{p}");
        let cur = find(&name);
        let mine = cur.is_some_and(|l| holder(l) == config.member);
        let free = cur.is_none_or(|l| holder(l).is_empty() || !renewed_within(l, config.lease_duration));
        if want.contains(&p) {
            if mine || free {
                let sent = Instant::now();
                match upsert_lease(client, &name, &config.member, config.lease_duration, cur).await {
                    Ok(_) => {
                        now_owned.insert(p, sent);
                    }
                    Err(e) if e.is_conflict() || e.is_already_exists() => {}
                    Err(e) => return Err(e),
                }
            }
        } else if mine {
            // Stop handling it, then hand it over: clear the holder so its new owner can
            // claim it at once.
            {
                let mut o = owned.write().unwrap_or_else(|e| e.into_inner());
                if o.remove(&p).is_some() {
                    METRICS.owned.with_label_values(&[&p.to_string()]).set(0);
                }
            }
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
        let o = owned.read().unwrap_or_else(|e| e.into_inner());
        // New, or back after its fence ran out (keys were skipped meanwhile).
        let fence = fence(config.lease_duration);
        now_owned.keys().any(|p| o.get(p).is_none_or(|t| t.elapsed() >= fence))
    };
    set_owned(owned, now_owned, &config.member);
    if gained {
        informers.resync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn partitions_cover_everything_once_and_evenly() {
        for n in 1..5 {
            let members = names(n);
            let got = plan(&members, &vec![None; 16]);
            for m in &members {
                let c = got.iter().filter(|h| *h == m).count();
                assert!(c == 16 / n || c == 16 / n + 1, "{m} got {c} of 16 with {n} members");
            }
            assert!(got.iter().all(|h| members.contains(h)));
        }
        assert!(partition_of("default/web", 16) < 16);
        assert_eq!(partition_of("default/web", 16), partition_of("default/web", 16));
        assert_eq!(plan(&[], &[None, None]), vec![String::new(), String::new()]);
    }

    #[test]
    fn a_leaving_member_moves_only_its_partitions() {
        let three = names(3);
        let before = plan(&three, &vec![None; 16]);
        // m1 dies: its leases expire, the others keep theirs.
        let two = vec!["m0".to_string(), "m2".to_string()];
        let holders: Vec<Option<String>> =
            before.iter().map(|h| Some(h.clone()).filter(|h| h != "m1")).collect();
        let after = plan(&two, &holders);
        for (p, h) in before.iter().enumerate() {
            if h != "m1" {
                assert_eq!(&after[p], h, "partition {p} moved though its holder lives");
            }
        }
        for m in &two {
            assert_eq!(after.iter().filter(|h| *h == m).count(), 8);
        }
        // A member joining takes only what it gets; everyone ends with a fair share.
        let holders: Vec<Option<String>> = after.iter().cloned().map(Some).collect();
        let again = plan(&three, &holders);
        let moved = again.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(again.iter().filter(|h| *h == "m1").count(), moved);
        assert!((5..=6).contains(&moved), "{moved} partitions moved to the new member");
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
