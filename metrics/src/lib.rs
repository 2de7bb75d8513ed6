//! Prometheus metrics for every capstan role.
//!
//! One registry per process (the `prometheus` crate's default registry, the Rust port of
//! the Go client that Kubernetes uses, so the text exposition is the same format upstream's
//! components serve). Metrics carry upstream's names where Kubernetes has a counterpart
//! (`apiserver_request_total`, `workqueue_depth`, `scheduler_schedule_attempts_total`,
//! `kubelet_pod_start_duration_seconds`, …) and a `capstan_` prefix where it has none.
//! Each is defined once, next to the code that updates it, through the constructors here,
//! which register it.
//!
//! [`render`] is the text a `/metrics` endpoint answers with: the registered metrics plus
//! the standard `process_*` metrics read from `/proc/self`. The gateway serves it on its
//! HTTPS port (authorized as upstream: `get` on the non-resource URL `/metrics`); the other
//! roles serve it on a plain port with [`serve`] (`--metrics-addr`).

use prometheus::{Encoder, HistogramOpts, Opts, TextEncoder};
pub use prometheus::{Histogram, HistogramVec, IntCounterVec, IntGaugeVec};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The content type of [`render`]'s text (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upstream's buckets for request latencies (`apiserver_request_duration_seconds`).
pub const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0,
    20.0, 30.0, 45.0, 60.0,
];

/// Exponential buckets from 1 ms to about 16 s, for work and queue durations.
pub const WORK_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384,
];

fn register(c: Box<dyn prometheus::core::Collector>, name: &str) {
    if let Err(e) = prometheus::default_registry().register(c) {
        tracing::warn!(metric = name, "failed to register metric: {e}");
    }
}

/// A registered counter family. Names and labels are constants of the code (checked by
/// this crate's tests), so creating one cannot fail on any input.
pub fn counters(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name and labels");
    register(Box::new(c.clone()), name);
    c
}

/// A registered gauge family (see [`counters`]).
pub fn gauges(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name and labels");
    register(Box::new(g.clone()), name);
    g
}

/// A registered histogram family with `buckets` (see [`counters`]).
pub fn histograms(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)
        .expect("valid metric name, labels and buckets");
    register(Box::new(h.clone()), name);
    h
}

/// A registered histogram without labels (see [`counters`]).
pub fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric name and buckets");
    register(Box::new(h.clone()), name);
    h
}

/// The text exposition of every registered metric and the process metrics.
pub fn render() -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&prometheus::default_registry().gather(), &mut buf) {
        tracing::warn!("failed to encode metrics: {e}");
    }
    let mut text = String::from_utf8(buf).unwrap_or_default();
    process_metrics(&mut text);
    text
}

fn gauge_text(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
}

/// `process_*` as the Go client's process collector names them, from `/proc/self`.
fn process_metrics(out: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let ticks = 100.0; // USER_HZ on Linux
    let page = 4096.0;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))
        })
        .unwrap_or(0.0);
    gauge_text(
        out,
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        (field(14) + field(15)) / ticks,
    );
    gauge_text(
        out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        field(24) * page,
    );
    gauge_text(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", field(23));
    gauge_text(
        out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        boot + field(22) / ticks,
    );
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    gauge_text(out, "process_open_fds", "gauge", "Number of open file descriptors.", fds as f64);
}

/// Serves `GET /metrics` (and `/healthz`) over plain HTTP/1.1 on `addr` until the runtime
/// stops; returns the bound address. For the roles without an HTTPS port of their own.
pub async fn serve(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                // Read the request head (bounded); the body, if any, is ignored.
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
                    match tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut buf)).await
                    {
                        Ok(Ok(n)) if n > 0 => req.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let line = String::from_utf8_lossy(&req).lines().next().unwrap_or_default().to_string();
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let path = path.split('?').next().unwrap_or("");
                let (status, ctype, body) = match (method, path) {
                    ("GET", "/metrics") => ("200 OK", CONTENT_TYPE, render()),
                    ("GET", "/healthz" | "/livez" | "/readyz") => ("200 OK", "text/plain", "ok".to_string()),
                    ("GET", _) => ("404 Not Found", "text/plain", "404 page not found\n".to_string()),
                    _ => ("405 Method Not Allowed", "text/plain", "method not allowed\n".to_string()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_register_and_render_in_text_format() {
        let c = counters("capstan_test_requests_total", "Test requests.", &["verb", "code"]);
        c.with_label_values(&["GET", "200"]).inc();
        let h = histograms("capstan_test_duration_seconds", "Test durations.", &["verb"], REQUEST_BUCKETS);
        h.with_label_values(&["GET"]).observe(0.01);
        let g = gauges("capstan_test_depth", "Test depth.", &["name"]);
        g.with_label_values(&["q"]).set(3);
        let text = render();
        assert!(text.contains("# TYPE capstan_test_requests_total counter"), "{text}");
        assert!(text.contains("capstan_test_requests_total{code=\"200\",verb=\"GET\"} 1"), "{text}");
        assert!(text.contains("capstan_test_duration_seconds_bucket{verb=\"GET\",le=\"0.025\"} 1"), "{text}");
        assert!(text.contains("capstan_test_depth{name=\"q\"} 3"), "{text}");
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge"), "{text}");
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(rss > 1e6, "resident memory {rss}");
    }

    #[tokio::test]
    async fn serves_metrics_over_plain_http() {
        let addr = serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("process_open_fds"), "{out}");
    }
}
