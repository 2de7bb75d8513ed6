//! The event stream on a real nats-server: an integrator's subscriber written from
//! docs/BUS.md, no gap or duplicate across a NATS outage, and a rollout over a 3-server
//! NATS cluster (stream replicas 3) that loses a server midway.

mod common;

use capstan_bus::{Bus, EventEnvelope, StartAt, StreamItem};
use common::nats::{Nats, NatsCluster};
use common::{wait_for, Cluster, Role};
use futures::StreamExt;
use std::time::Duration;

#[test]
fn python_subscriber_written_from_bus_md() {
    let nats = Nats::start();
    let c = Cluster::start_with(&["--nats", &nats.url()]);
    c.ok(&["run", "bus-pod", "--image=busybox", "--restart=Never"]);
    c.ok(&["delete", "pod", "bus-pod", "--wait=false"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/bus_subscriber.py");
    let out = std::process::Command::new("python3")
        .args([script, &nats.url(), "bus-pod"])
        .output()
        .expect("python3 runs (scripts/deps.sh test installs nats-py and msgpack)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "subscriber failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(events.first().map(|e| e["type"].clone()), Some("ADDED".into()), "{stdout}");
    assert_eq!(events.last().map(|e| e["type"].clone()), Some("DELETED".into()), "{stdout}");
    for e in &events {
        assert_eq!(e["kind"], "Pod");
        assert_eq!(e["namespace"], "default");
        assert_eq!(e["subject"], "capstan.v1.events.core.pods.default.bus-pod");
    }
    let revs: Vec<u64> = events.iter().filter_map(|e| e["revision"].as_u64()).collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "revisions not increasing: {revs:?}");
}

/// Reads the whole event stream up to `target` and returns the revisions seen.
fn stream_revisions(url: &str, target: u64) -> Vec<u64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let bus =
            capstan_bus::NatsBus::connect(capstan_bus::NatsConfig::new(url)).await.expect("connect to nats");
        let mut s =
            bus.events("capstan.v1.events.>".into(), StartAt::AfterRevision(0)).await.expect("event stream");
        let mut revs = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while revs.last().copied().unwrap_or(0) < target {
            let item = tokio::time::timeout_at(deadline, s.next())
                .await
                .expect("stream reached the target revision");
            match item {
                Some(StreamItem::Event { payload, revision, .. }) => {
                    let env = EventEnvelope::from_bytes(&payload).expect("envelope decodes");
                    assert_eq!(env.revision, revision);
                    revs.push(revision);
                }
                Some(StreamItem::Gap) => panic!("gap in the event stream after {:?}", revs.last()),
                None => panic!("event stream ended"),
            }
        }
        revs
    })
}

/// Creates a ConfigMap and returns its resourceVersion.
fn create_configmap(c: &Cluster, name: &str) -> u64 {
    c.ok(&["create", "configmap", name, "--from-literal=k=v", "-o", "jsonpath={.metadata.resourceVersion}"])
        .trim()
        .parse()
        .expect("numeric resourceVersion")
}

#[test]
fn nats_outage_leaves_no_gap_or_duplicate() {
    let mut nats = Nats::start();
    let c = Cluster::start_with(&["--nats", &nats.url()]);
    let mut written = Vec::new();
    for i in 0..5 {
        written.push(create_configmap(&c, &format!("before-{i}")));
    }
    nats.stop();
    // The API keeps working over HTTP while the bus is down.
    for i in 0..5 {
        written.push(create_configmap(&c, &format!("during-{i}")));
    }
    c.ok(&["create", "namespace", "made-during-outage"]);
    std::thread::sleep(Duration::from_secs(10)); // the outage itself, not synchronisation
    nats.restart();
    let last = create_configmap(&c, "after");
    written.push(last);
    let revs = stream_revisions(&nats.url(), last);
    // Every object change is there once, in order. Revisions of records that are not API
    // objects (Service address reservations) are not events, so the numbers may skip.
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "the stream must hold revisions once, in order: {revs:?}");
    for w in &written {
        assert!(revs.contains(w), "revision {w} of a ConfigMap written by the test is missing: {revs:?}");
    }
    assert!(revs.len() as u64 + 2 >= last, "only the two bootstrap reservations may be missing: {revs:?}");
    // The controllers converge after the outage: the namespace made while NATS was down
    // gets its default ServiceAccount.
    wait_for("default ServiceAccount in made-during-outage", Duration::from_secs(60), || {
        c.kubectl(&["get", "sa", "default", "-n", "made-during-outage"]).status.success().then_some(())
    });
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 6
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 2, maxUnavailable: 1}
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
"#;

/// Every message of the event stream in stream order, read one by one from a server of
/// the cluster: (stream sequence, revision); and the stream's replica count.
fn raw_stream(url: &str) -> (Vec<(u64, u64)>, usize) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let client = async_nats::connect(url).await.expect("connect to nats");
        let js = async_nats::jetstream::new(client);
        let mut stream =
            js.get_stream(capstan_bus::subjects::EVENT_STREAM).await.expect("the event stream exists");
        let info = stream.info().await.expect("stream info").clone();
        let mut out = Vec::new();
        for seq in info.state.first_sequence..=info.state.last_sequence {
            let msg = stream.get_raw_message(seq).await.expect("read a stored event");
            let rev = msg
                .headers
                .get(capstan_bus::REVISION_HEADER)
                .and_then(|v| v.as_str().parse().ok())
                .expect("every event carries its revision");
            out.push((seq, rev));
        }
        (out, info.config.num_replicas)
    })
}

/// A 3-server NATS cluster (routes on loopback) with the event stream replicated 3
/// times. The gateway gets every server's URL; the controllers, scheduler and simulated
/// nodes only the first server's and learn the others from it. That first server is
/// `kill -9`ed in the middle of a rolling update: every role moves to a survivor, the
/// rollout completes, and the stream holds every revision once, in order — including
/// the final revision of every object the rollout left.
#[test]
fn rollout_survives_losing_a_server_of_a_nats_cluster() {
    let mut cluster = NatsCluster::start(3);
    let first = cluster.url(0);
    let gw = Cluster::start_gateway(&["--nats", &cluster.urls(), "--nats-stream-replicas", "3"]);
    let _controllers = Role::start(&["controllers", "--nats", &first]);
    let _scheduler = Role::start(&["scheduler", "--nats", &first]);
    let _nodes = Role::start(&["sim-nodes", "--nats", &first, "--count", "3"]);
    let f = gw.file("web.yaml", DEPLOYMENT);
    gw.ok(&["apply", "-f", f.to_str().unwrap()]);
    gw.ok(&["rollout", "status", "deploy/web", "--timeout=120s"]);
    gw.ok(&["set", "image", "deploy/web", "nginx=nginx:1.28"]);
    wait_for("the rollout to start", Duration::from_secs(60), || {
        let images =
            gw.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.containers[0].image}"]);
        images.contains("nginx:1.28").then_some(())
    });
    cluster.kill9(0);
    gw.ok(&["rollout", "status", "deploy/web", "--timeout=180s"]);
    let images =
        gw.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.containers[0].image}"]);
    assert_eq!(images.split_whitespace().filter(|i| *i == "nginx:1.28").count(), 6, "{images}");
    // The objects' final revisions, written after the server died, are in the stream.
    let versions = gw.ok(&[
        "get",
        "deploy,rs,pods",
        "-o",
        "jsonpath={range .items[*]}{.metadata.resourceVersion}{\"\\n\"}{end}",
    ]);
    let wanted: Vec<u64> = versions.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(wanted.len() >= 8, "{versions}");
    let last = *wanted.iter().max().expect("versions");
    let (events, replicas) =
        wait_for("the stream to hold the last revision", Duration::from_secs(30), || {
            let (events, replicas) = raw_stream(&cluster.url(1));
            events.last().is_some_and(|(_, r)| *r >= last).then_some((events, replicas))
        });
    assert_eq!(replicas, 3);
    let revs: Vec<u64> = events.iter().map(|(_, r)| *r).collect();
    let dup = revs.windows(2).find(|w| w[0] >= w[1]);
    assert!(
        dup.is_none(),
        "the stream holds a revision twice or out of order: {dup:?} in {} events",
        revs.len()
    );
    let set: std::collections::HashSet<u64> = revs.iter().copied().collect();
    for w in &wanted {
        assert!(set.contains(w), "revision {w} is missing from the stream");
    }
}
