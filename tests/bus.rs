//! The event stream on a real nats-server: an integrator's subscriber written from
//! docs/BUS.md, and no gap or duplicate across a NATS outage.

mod common;

use capstan_bus::{Bus, EventEnvelope, StartAt, StreamItem};
use common::nats::Nats;
use common::{wait_for, Cluster};
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
