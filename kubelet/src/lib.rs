//! capstan's node agent (`capstan kubelet`, and the node inside `capstan up`).
//!
//! Layers, bottom up:
//! * [`image`]: pulls OCI images from registries into a content store and unpacks their
//!   layers once, shared by every container;
//! * [`runtime`]: OCI bundles for `runc`, the per-container shim that owns a container's
//!   stdio (CRI log file) and exit code, cgroups and the overlayfs root filesystem;
//! * [`network`]: a network namespace per pod wired by the standard CNI plugins;
//! * [`logs`]: the CRI log format (read side: tail, since, timestamps, limit, follow);
//! * [`probes`]: httpGet and tcpSocket probe checks;
//! * [`dns`]: the cluster DNS server (records from the agent's informers, forwarding
//!   for the rest) and pods' resolv.conf;
//! * [`proxy`]: the service proxy (kube-proxy's job): Services and EndpointSlices as rules in
//!   an nftables table the agent owns.
//!
//! The agent itself (node registration, one actor per pod, sessions for logs, exec,
//! attach and port-forward over the bus) sits on top of these.

pub mod agent;
pub mod dns;
pub mod image;
pub mod logs;
pub mod network;
pub mod probes;
pub mod proxy;
pub mod runtime;
