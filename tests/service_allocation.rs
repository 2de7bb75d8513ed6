//! Service addresses and node ports on `capstan up`: concurrent creates never share one,
//! taken or out-of-range requests are refused as upstream, and a kill -9 keeps them all.

mod common;

use capstan_bench::client::{Client, Kubeconfig};
use common::Cluster;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

fn service(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"type": "NodePort", "selector": {"app": name}, "ports": [{"port": 80}]}}))
    .unwrap_or_default()
}

/// Every Service's ClusterIP and node ports.
fn allocations(c: &Cluster) -> BTreeMap<String, (String, Vec<u64>)> {
    let list: Value = serde_json::from_str(&c.ok(&["get", "services", "-A", "-o", "json"])).expect("json");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let ports = s["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["nodePort"].as_u64())
                .collect();
            (
                format!(
                    "{}/{}",
                    s["metadata"]["namespace"].as_str().unwrap_or(""),
                    s["metadata"]["name"].as_str().unwrap_or("")
                ),
                (s["spec"]["clusterIP"].as_str().unwrap_or("").to_string(), ports),
            )
        })
        .collect()
}

#[test]
fn concurrent_creates_get_distinct_addresses_that_survive_a_kill() {
    let mut c = Cluster::start();
    let kc = Kubeconfig::load(&c.kubeconfig).expect("kubeconfig");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    // 200 creates from 16 connections at once.
    let codes: Vec<u16> = rt.block_on(async {
        let client = Client::new(&kc).expect("client");
        let mut tasks = Vec::new();
        for t in 0..16 {
            let mut conn = client.open().await.expect("connect");
            tasks.push(tokio::spawn(async move {
                let mut codes = Vec::new();
                for i in (t..200).step_by(16) {
                    let r = conn
                        .request(
                            "POST",
                            "/api/v1/namespaces/default/services",
                            &[("Content-Type", "application/json"), ("Accept", "application/json")],
                            &service(&format!("s{i}")),
                        )
                        .await
                        .expect("request");
                    codes.push(r.status);
                }
                codes
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all
    });
    assert_eq!(codes.len(), 200);
    assert!(codes.iter().all(|c| *c == 201), "{codes:?}");
    let before = allocations(&c);
    let ips: BTreeSet<&String> = before.values().map(|(ip, _)| ip).collect();
    assert_eq!(ips.len(), before.len(), "every Service has its own ClusterIP");
    let ports: Vec<u64> = before.values().flat_map(|(_, p)| p.clone()).collect();
    let distinct: BTreeSet<&u64> = ports.iter().collect();
    assert_eq!(ports.len(), 200);
    assert_eq!(distinct.len(), 200, "every node port is distinct");

    // A requested address or port that is taken, or out of range: 422 as upstream.
    let (ip0, ports0) = before.get("default/s0").cloned().expect("s0");
    let dup = c.file(
        "dup.yaml",
        &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: dup}}\nspec: {{clusterIP: {ip0}, ports: [{{port: 80}}]}}\n"),
    );
    let e = c.fails(&["create", "-f", dup.to_str().unwrap_or("")]);
    assert!(e.contains("provided IP is already allocated"), "{e}");
    let np = c.file(
        "np.yaml",
        &format!("apiVersion: v1\nkind: Service\nmetadata: {{name: np}}\nspec: {{type: NodePort, ports: [{{port: 80, nodePort: {}}}]}}\n", ports0[0]),
    );
    let e = c.fails(&["create", "-f", np.to_str().unwrap_or("")]);
    assert!(e.contains("provided port is already allocated"), "{e}");
    let out = c.file("out.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: out}\nspec: {clusterIP: 10.0.0.5, ports: [{port: 80}]}\n");
    let e = c.fails(&["create", "-f", out.to_str().unwrap_or("")]);
    assert!(e.contains("is not in the valid range. The range of valid IPs is 10.96.0.0/12"), "{e}");

    // kill -9 and restart: the same allocations, still held.
    c.kill9();
    c.restart();
    assert_eq!(allocations(&c), before, "allocations changed across kill -9");
    let e = c.fails(&["create", "-f", dup.to_str().unwrap_or("")]);
    assert!(e.contains("provided IP is already allocated"), "{e}");
    // Deleting frees: the address can be asked for again.
    c.ok(&["delete", "service", "s0"]);
    c.ok(&["create", "-f", dup.to_str().unwrap_or("")]);
}
