//! Leader election on a `coordination.k8s.io` Lease, as upstream's `--leader-elect`
//! (client-go `leaderelection`): several replicas of a role run, one holds the Lease and
//! works, the others wait as hot standbys and take over when it stops renewing.
//!
//! The scheduler uses it (Lease `kube-system/kube-scheduler`, upstream's name): two
//! schedulers that each bind from their own cache could both fill the last room on a node,
//! because a binding is guarded by the pod's resourceVersion, not the node's. With the
//! Lease only one decides at a time, so no node is overcommitted.
//!
//! * A candidate takes the Lease when it is absent, has no holder, or its record has not
//!   changed for `leaseDurationSeconds` as this candidate observed it (upstream's rule,
//!   which needs no synchronised clocks) or by its `renewTime` (a candidate that starts
//!   after the holder died need not wait a whole duration more).
//! * The holder renews every `retry_period`; every write carries the Lease's
//!   resourceVersion, so of two candidates only one wins.
//! * A holder that could not renew for `renew_deadline` (shorter than the lease
//!   duration) has lost: [`Leader::lost`] returns, and the role exits rather than keep
//!   working while someone else may have taken over (upstream's process exits too).
//! * [`Leader::release`] on a clean shutdown clears the holder so a standby takes over at
//!   once.

use crate::client::{gvr, ApiClient, ClientError};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Settings of an election.
#[derive(Debug, Clone)]
pub struct Config {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease: String,
    /// This candidate's identity (unique among the candidates).
    pub identity: String,
    /// How long a Lease that is not renewed stays held (upstream default 15 s).
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before giving up (upstream 10 s).
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the holder renews (upstream 2 s).
    pub retry_period: Duration,
}

impl Config {
    /// Upstream's proportions for a lease duration: renew deadline ⅔, retry period ⅛.
    pub fn new(namespace: &str, lease: &str, identity: &str, lease_duration: Duration) -> Config {
        Config {
            namespace: namespace.to_string(),
            lease: lease.to_string(),
            identity: identity.to_string(),
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: (lease_duration / 8).max(Duration::from_millis(100)),
        }
    }
}

fn now_micro() -> String {
    let micros = jiff::Timestamp::now().as_microsecond();
    jiff::Timestamp::from_microsecond(micros).map(|t| format!("{t:.6}")).unwrap_or_default()
}

fn holder(lease: &Value) -> &str {
    lease["spec"].get("holderIdentity").and_then(Value::as_str).unwrap_or("")
}

fn duration_of(lease: &Value, default: Duration) -> Duration {
    lease["spec"]
        .get("leaseDurationSeconds")
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .unwrap_or(default)
}

fn renew_age(lease: &Value) -> Option<Duration> {
    let t = lease["spec"].get("renewTime").and_then(Value::as_str)?;
    let ts = t.parse::<jiff::Timestamp>().ok()?;
    let age = jiff::Timestamp::now().duration_since(ts).as_secs_f64();
    Some(Duration::from_secs_f64(age.max(0.0)))
}

/// What a candidate remembers of the record it last saw: upstream's observed time.
struct Observed {
    version: String,
    at: Instant,
}

/// A candidate or holder of one Lease.
struct Elector {
    client: ApiClient,
    cfg: Config,
    observed: Option<Observed>,
}

impl Elector {
    /// One try: Ok(true) when this candidate holds (or just renewed) the Lease.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, ClientError> {
        let cfg = &self.cfg;
        let now = now_micro();
        let spec = json!({
            "holderIdentity": cfg.identity,
            "leaseDurationSeconds": cfg.lease_duration.as_secs().max(1),
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": 0,
        });
        let cur = match self.client.get(gvr::LEASES, Some(&cfg.namespace), &cfg.lease).await {
            Ok(l) => l,
            Err(e) if e.is_not_found() => {
                let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.lease, "namespace": cfg.namespace}, "spec": spec});
                return match self.client.create(gvr::LEASES, Some(&cfg.namespace), lease).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.is_already_exists() || e.is_conflict() => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let version = cur["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
        if self.observed.as_ref().is_none_or(|o| o.version != version) {
            self.observed = Some(Observed { version, at: Instant::now() });
        }
        let held_by = holder(&cur);
        let mine = held_by == cfg.identity;
        if !mine && !held_by.is_empty() {
            let duration = duration_of(&cur, cfg.lease_duration);
            let unchanged_for = self.observed.as_ref().map(|o| o.at.elapsed()).unwrap_or_default();
            let expired = unchanged_for >= duration || renew_age(&cur).is_some_and(|age| age >= duration);
            if !expired {
                return Ok(false);
            }
        }
        let mut next = cur.clone();
        next["spec"]["holderIdentity"] = json!(cfg.identity);
        next["spec"]["leaseDurationSeconds"] = spec["leaseDurationSeconds"].clone();
        next["spec"]["renewTime"] = json!(now);
        if !mine {
            next["spec"]["acquireTime"] = json!(now);
            let transitions = cur["spec"].get("leaseTransitions").and_then(Value::as_i64).unwrap_or(0);
            next["spec"]["leaseTransitions"] = json!(transitions + 1);
        }
        match self.client.update(gvr::LEASES, Some(&cfg.namespace), next).await {
            Ok(l) => {
                let version = l["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
                self.observed = Some(Observed { version, at: Instant::now() });
                Ok(true)
            }
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The holder of a Lease, renewing it in the background.
pub struct Leader {
    lost: watch::Receiver<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    client: ApiClient,
    cfg: Config,
}

/// Waits until this candidate holds the Lease, then renews it in the background (a
/// tokio task of the current runtime) until it is lost or released.
pub async fn acquire(client: ApiClient, cfg: Config) -> Leader {
    let mut e = Elector { client: client.clone(), cfg: cfg.clone(), observed: None };
    loop {
        match e.try_acquire_or_renew().await {
            Ok(true) => break,
            Ok(false) => {}
            Err(err) => tracing::debug!(lease = %cfg.lease, "failed to acquire the lease: {err}"),
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
    tracing::info!(lease = %cfg.lease, identity = %cfg.identity, "acquired the leader lease");
    let (lost_tx, lost) = watch::channel(false);
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(e.cfg.retry_period) => {}
            }
            match e.try_acquire_or_renew().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    tracing::warn!(lease = %e.cfg.lease, "the leader lease was taken by another candidate");
                    let _ = lost_tx.send(true);
                    return;
                }
                Err(err) => tracing::debug!(lease = %e.cfg.lease, "failed to renew the lease: {err}"),
            }
            if renewed.elapsed() >= e.cfg.renew_deadline {
                tracing::warn!(lease = %e.cfg.lease, "could not renew the leader lease for {:?}", renewed.elapsed());
                let _ = lost_tx.send(true);
                return;
            }
        }
    });
    Leader { lost, stop: Some(stop), client, cfg }
}

impl Leader {
    /// Returns when the Lease is lost (not renewed within the deadline, or taken).
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }

    /// Stops renewing and clears the holder so a standby takes over at once.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if *self.lost.borrow() {
            return;
        }
        let cfg = &self.cfg;
        if let Ok(mut cur) = self.client.get(gvr::LEASES, Some(&cfg.namespace), &cfg.lease).await {
            if holder(&cur) == cfg.identity {
                cur["spec"]["holderIdentity"] = json!("");
                cur["spec"]["leaseDurationSeconds"] = json!(1);
                if let Err(e) = self.client.update(gvr::LEASES, Some(&cfg.namespace), cur).await {
                    tracing::debug!(lease = %cfg.lease, "failed to release the lease: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportions_and_record_fields() {
        let c = Config::new("kube-system", "kube-scheduler", "a", Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert!(c.retry_period < c.renew_deadline && c.renew_deadline < c.lease_duration);
        let l = json!({"spec": {"holderIdentity": "a", "leaseDurationSeconds": 3, "renewTime": now_micro()}});
        assert_eq!(holder(&l), "a");
        assert_eq!(duration_of(&l, Duration::from_secs(15)), Duration::from_secs(3));
        assert!(renew_age(&l).is_some_and(|a| a < Duration::from_secs(3)));
        let old = json!({"spec": {"renewTime": "2020-01-01T00:00:00.000000Z"}});
        assert!(renew_age(&old).is_some_and(|a| a > Duration::from_secs(3600)));
        assert_eq!(holder(&json!({})), "");
    }
}
