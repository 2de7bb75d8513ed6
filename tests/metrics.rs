//! Prometheus metrics: the gateway's `/metrics` (authorized as upstream) and every other
//! role's plain `--metrics-addr`, checked with the Prometheus project's own text-format
//! parser (Python `prometheus_client`).

mod common;

use common::{Cluster, Mode};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Parses `text` with `prometheus_client.parser`; returns `family sample-count` lines, or
/// panics with the parser's complaint.
fn parse(text: &str, what: &str) -> Vec<String> {
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families\n\
                  for f in text_string_to_metric_families(sys.stdin.read()):\n    print(f.name, f.type, len(f.samples))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write metrics");
    let out = child.wait_with_output().expect("python3 finishes");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the metrics of {what}: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// `GET url` over plain HTTP/1.1; the body.
fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (addr, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to the metrics port");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(conn, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = String::new();
    conn.read_to_string(&mut out).expect("read the answer");
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// The value of the first sample line starting with `prefix` whose labels contain all `has`.
fn sample(text: &str, prefix: &str, has: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(prefix) && has.iter().all(|h| l.contains(h)))
        .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100)); // polling a condition
    }
}

#[test]
fn the_gateway_serves_request_metrics_to_those_allowed() {
    let c = Mode::InProcess.cluster(1, &[]);
    c.ok(&["create", "deployment", "web", "--image=nginx", "--replicas=2"]);
    c.ok(&["get", "pods"]);
    wait_for("the deployment's pods to be scheduled", || {
        c.ok(&["get", "pods", "-o", "jsonpath={.items[*].spec.nodeName}"]).split_whitespace().count() == 2
    });
    let text = c.ok(&["get", "--raw", "/metrics"]);
    let families = parse(&text, "the gateway");
    for name in [
        "apiserver_request counter",
        "apiserver_request_duration_seconds histogram",
        "workqueue_adds counter",
        "workqueue_depth gauge",
        "scheduler_schedule_attempts counter",
        "capstan_storage_commit_duration_seconds histogram",
        "process_resident_memory_bytes gauge",
    ] {
        let (family, kind) = name.rsplit_once(' ').unwrap_or_default();
        assert!(
            families.iter().any(|f| f.starts_with(&format!("{family} {kind}"))),
            "no {family} of type {kind} in {families:?}"
        );
    }
    // kubectl's LIST of pods and the Deployment's POST, with upstream's labels.
    let lists = sample(
        &text,
        "apiserver_request_total{",
        &[
            "verb=\"LIST\"",
            "resource=\"pods\"",
            "scope=\"namespace\"",
            "code=\"200\"",
            "component=\"apiserver\"",
        ],
    );
    assert!(lists.is_some_and(|n| n >= 1.0), "no LIST of pods counted:\n{text}");
    let posts = sample(
        &text,
        "apiserver_request_total{",
        &["verb=\"POST\"", "group=\"apps\"", "resource=\"deployments\"", "code=\"201\""],
    );
    assert_eq!(posts, Some(1.0), "one POST of a deployment:\n{text}");
    let scheduled = sample(&text, "scheduler_schedule_attempts_total{", &["result=\"scheduled\""]);
    assert!(scheduled.is_some_and(|n| n >= 2.0), "two pods scheduled:\n{text}");
    let adds = sample(&text, "workqueue_adds_total{", &["name=\"replicaset\""]);
    assert!(adds.is_some_and(|n| n >= 1.0), "the ReplicaSet controller's queue:\n{text}");
    // A 404 is counted with its code too.
    c.fails(&["get", "configmap", "missing"]);
    let text = c.ok(&["get", "--raw", "/metrics"]);
    let missing = sample(
        &text,
        "apiserver_request_total{",
        &["verb=\"GET\"", "resource=\"configmaps\"", "code=\"404\""],
    );
    assert_eq!(missing, Some(1.0), "{text}");

    // As upstream: a user needs `get` on the non-resource URL /metrics (system:monitoring).
    let denied = c.kubectl(&["get", "--raw", "/metrics", "--as=jane"]);
    assert!(!denied.status.success());
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("forbidden") && err.contains("/metrics"), "{err}");
    let allowed = c.kubectl(&["get", "--raw", "/metrics", "--as=prom", "--as-group=system:monitoring"]);
    assert!(allowed.status.success(), "{}", String::from_utf8_lossy(&allowed.stderr));
}

#[test]
fn every_role_serves_metrics_on_its_own_port() {
    let c = Cluster::start_multiprocess(1, &[("CAPSTAN_METRICS_ADDR", "127.0.0.1:0")]);
    c.ok(&["create", "deployment", "web", "--image=nginx", "--replicas=1"]);
    wait_for("the pod to run", || {
        c.ok(&["get", "pods", "-o", "jsonpath={.items[*].status.phase}"]) == "Running"
    });
    let urls: Vec<&str> = c.roles().iter().filter_map(|r| r.metrics_url()).collect();
    assert_eq!(urls.len(), 3, "controllers, scheduler and sim-nodes say where their metrics are");
    let mut seen = Vec::new();
    for url in urls {
        let text = http_get(url);
        let families = parse(&text, url);
        assert!(families.iter().any(|f| f.starts_with("process_cpu_seconds counter")), "{families:?}");
        seen.push(text);
    }
    let all = seen.join("\n");
    assert!(sample(&all, "scheduler_schedule_attempts_total{", &["result=\"scheduled\""])
        .is_some_and(|n| n >= 1.0));
    assert!(
        sample(&all, "workqueue_adds_total{", &["name=\"deployment\""]).is_some_and(|n| n >= 1.0),
        "{all}"
    );
    // The gateway's own: requests from the other roles over the bus are not HTTP requests,
    // but kubectl's are.
    let gw = c.ok(&["get", "--raw", "/metrics"]);
    parse(&gw, "the gateway");
    assert!(sample(&gw, "apiserver_request_total{", &["verb=\"POST\"", "resource=\"deployments\""]).is_some());
}
