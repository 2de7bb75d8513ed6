//! Container resource limits and their derivation from a Kubernetes `ResourceRequirements`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};

/// The CFS period the kubelet uses for CPU limits, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest `cpu.shares` the kernel accepts (and the kubelet's value for "no request").
pub const MIN_CPU_SHARES: u64 = 2;
/// The largest `cpu.shares` the kernel accepts.
pub const MAX_CPU_SHARES: u64 = 262_144;
/// The smallest CFS quota the kernel accepts, in microseconds.
pub const MIN_CPU_QUOTA_US: i64 = 1_000;
/// The pids limit [`Resources::from_k8s`] gives every container.
pub const DEFAULT_PIDS_LIMIT: i64 = 4096;

/// cgroup limits of one container (`linux.resources` of its OCI config). `None` = no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// `cpu.shares` (relative weight; 1024 = one CPU).
    pub cpu_shares: Option<u64>,
    /// CFS quota in microseconds per `cpu_period`.
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds.
    pub cpu_period: Option<u64>,
    /// Memory limit in bytes (memory+swap gets the same value: no swap).
    pub memory_limit: Option<i64>,
    /// Maximum number of processes/threads.
    pub pids_limit: Option<i64>,
}

impl Resources {
    /// The kubelet's conversions: `cpu.shares = max(2, milliCPU * 1024 / 1000)` from the CPU
    /// request (the CPU limit when there is no request, as the API server's defaulting would
    /// make it; 2 when neither is set); the CPU limit becomes a CFS quota of
    /// `milliCPU * 100000 / 1000` µs (at least 1000) per 100000 µs period; the memory limit in
    /// bytes; the pids limit [`DEFAULT_PIDS_LIMIT`]. Unparsable quantities count as unset.
    pub fn from_k8s(requirements: Option<&ResourceRequirements>) -> Resources {
        let get = |map: Option<&BTreeMap<String, Quantity>>, key: &str| {
            map.and_then(|m| m.get(key)).map(|q| q.0.clone())
        };
        let requests = requirements.and_then(|r| r.requests.as_ref());
        let limits = requirements.and_then(|r| r.limits.as_ref());
        let cpu_request = get(requests, "cpu").and_then(|q| parse_quantity_milli(&q));
        let cpu_limit = get(limits, "cpu").and_then(|q| parse_quantity_milli(&q));
        let memory_limit = get(limits, "memory").and_then(|q| parse_quantity_bytes(&q));

        let cpu_shares = Some(milli_cpu_to_shares(cpu_request.or(cpu_limit).unwrap_or(0)));
        let (cpu_quota, cpu_period) = match cpu_limit {
            Some(milli) if milli > 0 => (Some(milli_cpu_to_quota(milli)), Some(CPU_PERIOD_US)),
            _ => (None, None),
        };
        Resources {
            cpu_shares,
            cpu_quota,
            cpu_period,
            memory_limit: memory_limit.filter(|m| *m > 0),
            pids_limit: Some(DEFAULT_PIDS_LIMIT),
        }
    }
}

/// `cpu.shares` for a CPU request in millicores (the kubelet's `MilliCPUToShares`).
pub fn milli_cpu_to_shares(milli_cpu: i64) -> u64 {
    if milli_cpu <= 0 {
        return MIN_CPU_SHARES;
    }
    let shares = (milli_cpu as u128 * 1024 / 1000) as u64;
    shares.clamp(MIN_CPU_SHARES, MAX_CPU_SHARES)
}

/// CFS quota (µs per [`CPU_PERIOD_US`]) for a CPU limit in millicores (`MilliCPUToQuota`).
pub fn milli_cpu_to_quota(milli_cpu: i64) -> i64 {
    let quota = (milli_cpu as i128 * CPU_PERIOD_US as i128 / 1000).min(i64::MAX as i128) as i64;
    quota.max(MIN_CPU_QUOTA_US)
}

/// Kubernetes quantities in thousandths (`"250m"` → 250) and whole units (`"128Mi"` →
/// bytes), rounded up as upstream; the one parser shared with the scheduler.
pub use capstan_api::quantity::{parse_milli as parse_quantity_milli, parse_value as parse_quantity_bytes};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity_milli("250m"), Some(250));
        assert_eq!(parse_quantity_milli("1"), Some(1000));
        assert_eq!(parse_quantity_milli("1.5"), Some(1500));
        assert_eq!(parse_quantity_milli("0.0001"), Some(1));
        assert_eq!(parse_quantity_milli("2e3"), Some(2_000_000));
        assert_eq!(parse_quantity_milli("100u"), Some(1));
        assert_eq!(parse_quantity_bytes("128Mi"), Some(128 << 20));
        assert_eq!(parse_quantity_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_quantity_bytes("1.5Ki"), Some(1536));
        assert_eq!(parse_quantity_bytes("1k"), Some(1000));
        assert_eq!(parse_quantity_bytes("-1"), Some(-1));
        for bad in ["", "abc", "1.2.3", "1Zi", "1e", "m"] {
            assert_eq!(parse_quantity_bytes(bad), None, "{bad}");
        }
        // Too large for i64: saturates, as the scheduler counts it.
        assert_eq!(parse_quantity_bytes("99999999999999999999999Ei"), Some(i64::MAX));
    }

    #[test]
    fn from_k8s_conversions() {
        let none = Resources::from_k8s(None);
        assert_eq!(none.cpu_shares, Some(2));
        assert_eq!(none.cpu_quota, None);
        assert_eq!(none.memory_limit, None);
        assert_eq!(none.pids_limit, Some(DEFAULT_PIDS_LIMIT));

        let q = |s: &str| Quantity(s.to_string());
        let req = ResourceRequirements {
            requests: Some([("cpu".to_string(), q("250m"))].into()),
            limits: Some([("cpu".to_string(), q("500m")), ("memory".to_string(), q("64Mi"))].into()),
            ..Default::default()
        };
        let r = Resources::from_k8s(Some(&req));
        assert_eq!(r.cpu_shares, Some(256));
        assert_eq!(r.cpu_quota, Some(50_000));
        assert_eq!(r.cpu_period, Some(100_000));
        assert_eq!(r.memory_limit, Some(64 << 20));

        let limit_only = ResourceRequirements {
            limits: Some([("cpu".to_string(), q("1m"))].into()),
            ..Default::default()
        };
        let r = Resources::from_k8s(Some(&limit_only));
        assert_eq!(r.cpu_shares, Some(2));
        assert_eq!(r.cpu_quota, Some(MIN_CPU_QUOTA_US));
        assert_eq!(milli_cpu_to_shares(1000), 1024);
        assert_eq!(milli_cpu_to_shares(1_000_000), MAX_CPU_SHARES);
    }
}
