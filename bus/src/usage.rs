//! Resource usage reports: each node agent (and the simulated nodes, for theirs) publishes
//! what its node, pods and containers use on [`node_usage`]`(node)` every few seconds; every
//! gateway subscribes to [`all_node_usage`] and serves the latest report of each node as
//! `metrics.k8s.io/v1beta1` NodeMetrics and PodMetrics (as metrics-server serves what it
//! scrapes from kubelets). Core NATS, at most once: a lost report is replaced by the next.
//!
//! Payload: [`UsageReport`], msgpack with named fields (see `docs/BUS.md`).

use crate::subjects::PREFIX;
use serde::{Deserialize, Serialize};

/// The subject node `node` publishes its usage reports on.
pub fn node_usage(node: &str) -> String {
    format!("{PREFIX}.node.{}.usage", node.replace('.', "_"))
}

/// The pattern gateways subscribe to.
pub fn all_node_usage() -> String {
    format!("{PREFIX}.node.*.usage")
}

/// CPU and memory in use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// CPU, in nanocores, averaged over the report's window.
    pub cpu_nanocores: u64,
    /// The memory working set, in bytes (upstream's: usage minus inactive file pages).
    pub memory_bytes: u64,
}

/// One container's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerUsage {
    /// The container's name in the pod.
    pub name: String,
    /// What it uses.
    pub usage: Usage,
}

/// One pod's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodUsage {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's uid.
    pub uid: String,
    /// Its running containers.
    pub containers: Vec<ContainerUsage>,
}

/// One node's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    /// The node's name.
    pub node: String,
    /// When the later of the two samples was taken (RFC 3339).
    pub timestamp: String,
    /// The window the CPU rates are averaged over, in milliseconds.
    pub window_millis: u64,
    /// The whole node's usage.
    pub node_usage: Usage,
    /// Its pods.
    pub pods: Vec<PodUsage>,
}

impl UsageReport {
    /// The msgpack payload.
    pub fn encode(&self) -> crate::Result<bytes::Bytes> {
        crate::envelope::encode(self)
    }

    /// Decodes a payload.
    pub fn decode(b: &[u8]) -> crate::Result<UsageReport> {
        crate::envelope::decode(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_subjects() {
        let r = UsageReport {
            node: "n.example".into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            window_millis: 5000,
            node_usage: Usage { cpu_nanocores: 5, memory_bytes: 6 },
            pods: vec![PodUsage {
                namespace: "default".into(),
                name: "p".into(),
                uid: "u".into(),
                containers: vec![ContainerUsage { name: "c".into(), usage: Usage::default() }],
            }],
        };
        assert_eq!(UsageReport::decode(&r.encode().unwrap()).unwrap(), r);
        assert_eq!(node_usage("n.example"), "capstan.v1.node.n_example.usage");
        assert!(crate::subjects::matches(&all_node_usage(), &node_usage("n.example")));
    }
}
