//! Tools to measure and stress a running capstan API server.
//!
//! [`client`] is a small HTTPS/1.1 keep-alive client (tokio + rustls with the `ring`
//! provider) that loads an admin kubeconfig, sends ordinary or raw requests and streams
//! watch responses line by line. The `capstan-bench` binary uses it to measure create
//! throughput, read latency, watch delivery latency and server memory; the root
//! package's `tests/malformed.rs` uses it to send malformed requests.
//!
//! ```no_run
//! # async fn run() -> Result<(), capstan_bench::client::Error> {
//! use capstan_bench::client::{Client, Kubeconfig};
//! let kc = Kubeconfig::load(std::path::Path::new("/tmp/capstan/admin.kubeconfig"))?;
//! let mut conn = Client::connect(&kc).await?;
//! let resp = conn.request("GET", "/api/v1/namespaces", &[], b"").await?;
//! assert_eq!(resp.status, 200);
//! # Ok(()) }
//! ```

pub mod client;
pub mod watch;

/// The `capstan` binary the benchmarks start: next to this binary, else `capstan` on PATH.
pub fn default_capstan() -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("capstan")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| std::path::PathBuf::from("capstan"))
}
