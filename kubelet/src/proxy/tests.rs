use super::model::{service_model, Ipv4Net};
use super::rules::{self, diff_script, service_rules, Element, ServiceRules, Table};
use super::*;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddrV4;

fn cidr(s: &str) -> Ipv4Net {
    Ipv4Net::parse(s).expect("cidr")
}

fn table() -> Table {
    Table {
        name: "capstan-cpt1".into(),
        bridge: "cpt1".into(),
        pod_cidr: cidr("10.123.1.0/24"),
        service_cidr: Some(cidr("10.96.0.0/12")),
    }
}

fn service(name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "default", "resourceVersion": "1"}, "spec": spec})
}

fn web() -> Value {
    service(
        "web",
        json!({"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80, "targetPort": "www"}]}),
    )
}

fn endpoint(ip: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Value {
    json!({"addresses": [ip], "nodeName": node,
           "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
}

fn slice(name: &str, svc: &str, port: u16, endpoints: Vec<Value>) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn slices_of(list: Vec<Value>) -> BTreeMap<String, Arc<Value>> {
    list.into_iter()
        .map(|s| (s["metadata"]["name"].as_str().unwrap_or("").to_string(), Arc::new(s)))
        .collect()
}

fn rules_for(svc: &Value, slices: Vec<Value>) -> ServiceRules {
    let key = format!("default/{}", svc["metadata"]["name"].as_str().unwrap_or(""));
    let model = service_model(&key, svc, &slices_of(slices), "node-1").expect("a model");
    service_rules(&model, cidr("10.123.1.0/24"), &HashMap::new())
}

fn el(map: &'static str, key: &str, value: Option<&str>) -> Element {
    Element { map, key: key.into(), value: value.map(str::to_string) }
}

const SVC: &str = "service-default/web/tcp/http";

/// The last rule of a chain (the DNAT or the endpoint choice).
fn dnat<'a>(r: &'a ServiceRules, chain: &str) -> &'a str {
    r.chains.get(chain).and_then(|c| c.last()).map(String::as_str).unwrap_or("")
}
const EP5: &str = "endpoint-default/web/tcp/http__10.123.1.5/8080";
const EP6: &str = "endpoint-default/web/tcp/http__10.123.1.6/8080";

#[test]
fn the_rules_of_a_cluster_ip_service() {
    let r = rules_for(
        &web(),
        vec![slice(
            "web-a",
            "web",
            8080,
            vec![
                endpoint("10.123.1.6", "node-1", true, true, false),
                endpoint("10.123.1.5", "node-2", true, true, false),
            ],
        )],
    );
    let expected_chains: BTreeMap<String, Vec<String>> = [(
        SVC.to_string(),
        vec![
            "ip daddr 10.96.0.20 tcp dport 80 ip saddr != 10.123.1.0/24 jump mark-for-masquerade".to_string(),
            "ip saddr { 10.123.1.5, 10.123.1.6 } jump mark-for-masquerade".to_string(),
            "meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.123.1.5 . 8080, 1 : 10.123.1.6 . 8080 }"
                .to_string(),
        ],
    )]
    .into_iter()
    .collect();
    assert_eq!(r.chains, expected_chains);
    let expected_elements = [
        el(rules::CLUSTER_IPS, "10.96.0.20", None),
        el(rules::SERVICE_IPS, "10.96.0.20 . tcp . 80", Some(&format!("goto {SVC}"))),
    ];
    assert_eq!(r.elements, expected_elements.into_iter().collect());
    assert!(r.sets.is_empty());

    // As a script on a fresh table: every chain before any rule or element that names it.
    let mut script = String::new();
    rules::add_script("capstan-cpt1", [&r].into_iter(), &mut script);
    let first_rule = script.find("add rule").expect("rules");
    assert!(script[..first_rule].contains(&format!("add chain ip capstan-cpt1 {SVC}")), "{script}");
    assert!(script.contains(&format!(
        "add element ip capstan-cpt1 service-ips {{ 10.96.0.20 . tcp . 80 : goto {SVC} }}"
    )));
}

#[test]
fn only_ready_endpoints_then_serving_terminating_ones_then_reject() {
    let eps = vec![
        endpoint("10.123.1.5", "node-1", true, true, false),
        endpoint("10.123.1.6", "node-1", false, true, true),
        endpoint("10.123.1.7", "node-1", false, false, false),
    ];
    let r = rules_for(&web(), vec![slice("web-a", "web", 8080, eps)]);
    assert_eq!(dnat(&r, SVC), "meta l4proto tcp dnat ip to 10.123.1.5:8080", "only the ready endpoint");

    let eps = vec![
        endpoint("10.123.1.6", "node-1", false, true, true),
        endpoint("10.123.1.7", "node-1", false, false, false),
    ];
    let r = rules_for(&web(), vec![slice("web-a", "web", 8080, eps)]);
    assert_eq!(
        dnat(&r, SVC),
        "meta l4proto tcp dnat ip to 10.123.1.6:8080",
        "serving terminating ones when none is ready"
    );

    let eps = vec![endpoint("10.123.1.7", "node-1", false, false, false)];
    let r = rules_for(&web(), vec![slice("web-a", "web", 8080, eps)]);
    assert!(r.chains.is_empty());
    assert_eq!(
        r.elements,
        [
            el(rules::CLUSTER_IPS, "10.96.0.20", None),
            el(rules::NO_ENDPOINT_SERVICES, "10.96.0.20 . tcp . 80", Some("goto reject-chain")),
        ]
        .into_iter()
        .collect()
    );
}

#[test]
fn named_ports_take_their_number_from_each_slice() {
    // Two slices for two pod templates whose port `www` is a different number.
    let svc = service(
        "web",
        json!({"clusterIP": "10.96.0.20", "ports": [
            {"name": "http", "port": 80, "targetPort": "www"},
            {"name": "dns", "port": 53, "protocol": "UDP"}]}),
    );
    let mut b = slice("web-b", "web", 9090, vec![endpoint("10.123.1.6", "node-1", true, true, false)]);
    b["ports"] = json!([{"name": "http", "port": 9090, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]);
    let r = rules_for(
        &svc,
        vec![slice("web-a", "web", 8080, vec![endpoint("10.123.1.5", "node-1", true, true, false)]), b],
    );
    assert_eq!(
        dnat(&r, SVC),
        "meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.123.1.5 . 8080, 1 : 10.123.1.6 . 9090 }"
    );
    assert_eq!(dnat(&r, "service-default/web/udp/dns"), "meta l4proto udp dnat ip to 10.123.1.6:5353");
    assert!(r.elements.contains(&el(
        rules::SERVICE_IPS,
        "10.96.0.20 . udp . 53",
        Some("goto service-default/web/udp/dns")
    )));
}

#[test]
fn session_affinity_uses_a_set_per_endpoint() {
    let mut svc = web();
    svc["spec"]["sessionAffinity"] = json!("ClientIP");
    svc["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 60}});
    let r = rules_for(
        &svc,
        vec![slice("web-a", "web", 8080, vec![endpoint("10.123.1.5", "node-1", true, true, false)])],
    );
    let set = "affinity-60-default/web/tcp/http__10.123.1.5/8080";
    assert_eq!(r.sets.get(set), Some(&60));
    assert!(r.chains[SVC].contains(&format!("ip saddr @{set} goto {EP5}")));
    assert!(r.chains[EP5].contains(&format!("update @{set} {{ ip saddr }}")));
    // The session rule comes before the random choice.
    let pos = |s: &str| r.chains[SVC].iter().position(|x| x.starts_with(s));
    assert!(pos("ip saddr @") < pos("numgen"));
}

#[test]
fn node_ports_load_balancers_and_external_traffic_policy_local() {
    let mut svc = web();
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["ports"][0]["nodePort"] = json!(30080);
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}, {"ip": "127.0.0.1"}]}});
    let eps = vec![
        endpoint("10.123.1.5", "node-1", true, true, false),
        endpoint("10.123.1.6", "node-2", true, true, false),
    ];
    let r = rules_for(&svc, vec![slice("web-a", "web", 8080, eps)]);
    let ext = "external-default/web/tcp/http";
    let local = "local-default/web/tcp/http";
    assert!(r.elements.contains(&el(rules::SERVICE_NODEPORTS, "tcp . 30080", Some(&format!("goto {ext}")))));
    assert!(r.elements.contains(&el(
        rules::EXTERNAL_IPS,
        "192.0.2.2 . tcp . 80",
        Some(&format!("goto {ext}"))
    )));
    assert!(!r.elements.iter().any(|e| e.key.starts_with("127.")), "no loopback load balancer address");
    assert_eq!(
        r.chains[ext],
        vec![
            format!("ip saddr 10.123.1.0/24 goto {SVC}"),
            "fib saddr type local jump mark-for-masquerade".to_string(),
            format!("fib saddr type local goto {SVC}"),
            format!("goto {local}"),
        ]
    );
    // Outside traffic keeps its source and goes to this node's endpoint only.
    assert_eq!(
        r.chains[local],
        vec![
            "ip saddr 10.123.1.5 jump mark-for-masquerade".to_string(),
            "meta l4proto tcp dnat ip to 10.123.1.5:8080".to_string()
        ]
    );
    assert!(dnat(&r, SVC).contains("10.123.1.6 . 8080"), "the cluster chain has both endpoints");

    // No endpoint on this node: external traffic is dropped, pods still get the others.
    let r = rules_for(
        &svc,
        vec![slice("web-a", "web", 8080, vec![endpoint("10.123.1.6", "node-2", true, true, false)])],
    );
    assert!(!r.chains.contains_key(local));
    assert!(r.elements.contains(&el(rules::NO_ENDPOINT_NODEPORTS, "tcp . 30080", Some("drop"))));
    assert!(r.elements.contains(&el(rules::SERVICE_NODEPORTS, "tcp . 30080", Some(&format!("goto {ext}")))));
    assert!(r.elements.contains(&el(
        rules::SERVICE_IPS,
        "10.96.0.20 . tcp . 80",
        Some(&format!("goto {SVC}"))
    )));
}

#[test]
fn internal_traffic_policy_local() {
    let mut svc = web();
    svc["spec"]["internalTrafficPolicy"] = json!("Local");
    let eps = vec![
        endpoint("10.123.1.5", "node-1", true, true, false),
        endpoint("10.123.1.6", "node-2", true, true, false),
    ];
    let r = rules_for(&svc, vec![slice("web-a", "web", 8080, eps)]);
    let local = "local-default/web/tcp/http";
    assert!(r.elements.contains(&el(
        rules::SERVICE_IPS,
        "10.96.0.20 . tcp . 80",
        Some(&format!("goto {local}"))
    )));
    assert_eq!(
        dnat(&r, local),
        "meta l4proto tcp dnat ip to 10.123.1.5:8080",
        "the other node's endpoint is not used"
    );
    assert!(!r.chains.contains_key(SVC));

    let r = rules_for(
        &svc,
        vec![slice("web-a", "web", 8080, vec![endpoint("10.123.1.6", "node-2", true, true, false)])],
    );
    assert!(r.elements.contains(&el(rules::NO_ENDPOINT_SERVICES, "10.96.0.20 . tcp . 80", Some("drop"))));
    assert!(r.chains.is_empty());
}

#[test]
fn loopback_endpoints_go_through_their_relay_and_node_local_dns_is_left_alone() {
    let svc =
        service("kubernetes", json!({"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443}]}));
    let mut s = slice("kubernetes", "kubernetes", 6443, vec![json!({"addresses": ["127.0.0.1"]})]);
    s["ports"] = json!([{"name": "https", "port": 6443, "protocol": "TCP"}]);
    let model = service_model("default/kubernetes", &svc, &slices_of(vec![s]), "node-1").expect("model");
    let without = service_rules(&model, cidr("10.123.1.0/24"), &HashMap::new());
    assert!(without.chains.is_empty(), "no relay: the loopback endpoint is unusable");
    let relays: HashMap<SocketAddrV4, SocketAddrV4> =
        [("127.0.0.1:6443".parse().expect("addr"), "10.123.1.1:40000".parse().expect("addr"))]
            .into_iter()
            .collect();
    let with = service_rules(&model, cidr("10.123.1.0/24"), &relays);
    let chain = "service-default/kubernetes/tcp/https";
    assert_eq!(dnat(&with, chain), "meta l4proto tcp dnat ip to 10.123.1.1:40000");
    assert!(!with.chains[chain].iter().any(|r| r.contains("ip saddr 127.")), "no hairpin rule for loopback");

    let mut dns = service(
        "kube-dns",
        json!({"clusterIP": "10.96.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}),
    );
    dns["metadata"]["labels"] = json!({"capstan.io/node-local-dns": "true"});
    assert!(service_model("default/kube-dns", &dns, &BTreeMap::new(), "node-1").is_none());
}

#[test]
fn names_that_are_not_kubernetes_names_are_refused() {
    let svc = service("web; flush ruleset", json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}));
    assert!(service_model("default/web; flush ruleset", &svc, &BTreeMap::new(), "n").is_none());
    let svc = service("web", json!({"clusterIP": "10.96.0.20", "ports": [{"name": "a b", "port": 80}]}));
    assert!(service_model("default/web", &svc, &BTreeMap::new(), "n").is_none());
    // Malformed fields are skipped, not a panic.
    let svc = service(
        "web",
        json!({"clusterIP": 7, "ports": [{"port": "x"}, {"port": 70000}, {"port": 80, "protocol": "ICMP"}]}),
    );
    assert!(service_model("default/web", &svc, &BTreeMap::new(), "n").is_none());
}

#[test]
fn a_changed_endpoint_rewrites_only_what_differs() {
    let before = rules_for(
        &web(),
        vec![slice(
            "web-a",
            "web",
            8080,
            vec![
                endpoint("10.123.1.5", "n", true, true, false),
                endpoint("10.123.1.6", "n", true, true, false),
            ],
        )],
    );
    let after = rules_for(
        &web(),
        vec![slice(
            "web-a",
            "web",
            8080,
            vec![
                endpoint("10.123.1.5", "n", true, true, false),
                endpoint("10.123.1.7", "n", true, true, false),
            ],
        )],
    );
    let mut script = String::new();
    let stale = diff_script("t", &before, &after, &mut script);
    assert!(stale.is_empty());
    let lines: Vec<&str> = script.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!("flush chain ip t {SVC}").as_str(),
            &format!("add rule ip t {SVC} ip daddr 10.96.0.20 tcp dport 80 ip saddr != 10.123.1.0/24 jump mark-for-masquerade"),
            &format!("add rule ip t {SVC} ip saddr {{ 10.123.1.5, 10.123.1.7 }} jump mark-for-masquerade"),
            &format!("add rule ip t {SVC} meta l4proto tcp dnat ip to numgen random mod 2 map {{ 0 : 10.123.1.5 . 8080, 1 : 10.123.1.7 . 8080 }}"),
        ],
        "{script}"
    );

    // With session affinity each endpoint has a chain and a set: a replaced endpoint's chain
    // is flushed (deleted later), its set deleted, the new one's added.
    let sticky = |eps: Vec<Value>| {
        let mut svc = web();
        svc["spec"]["sessionAffinity"] = json!("ClientIP");
        rules_for(&svc, vec![slice("web-a", "web", 8080, eps)])
    };
    let b = sticky(vec![
        endpoint("10.123.1.5", "n", true, true, false),
        endpoint("10.123.1.6", "n", true, true, false),
    ]);
    let a = sticky(vec![
        endpoint("10.123.1.5", "n", true, true, false),
        endpoint("10.123.1.7", "n", true, true, false),
    ]);
    let mut script = String::new();
    assert_eq!(diff_script("t", &b, &a, &mut script), vec![EP6.to_string()]);
    let ep7 = "endpoint-default/web/tcp/http__10.123.1.7/8080";
    for expected in [
        format!("add chain ip t {ep7}"),
        format!("flush chain ip t {EP6}"),
        "delete set ip t affinity-10800-default/web/tcp/http__10.123.1.6/8080".to_string(),
        "add set ip t affinity-10800-default/web/tcp/http__10.123.1.7/8080 { type ipv4_addr; flags dynamic,timeout; timeout 10800s; }".to_string(),
        format!("add rule ip t {ep7} meta l4proto tcp dnat ip to 10.123.1.7:8080"),
    ] {
        assert!(script.lines().any(|l| l == expected), "missing {expected:?} in\n{script}");
    }
    assert!(
        !script.lines().any(|l| l.contains(&format!("ip t {EP5}"))),
        "the unchanged endpoint's chain is not touched:\n{script}"
    );
    // The set goes only after the chains that use it are flushed.
    let pos = |needle: &str| script.find(needle).unwrap_or(usize::MAX);
    assert!(pos(&format!("flush chain ip t {EP6}")) < pos("delete set"));
    assert!(pos(&format!("flush chain ip t {SVC}")) < pos("delete set"));

    // Unchanged: nothing to do. Removed: its elements go, its chains are flushed (deleted later).
    let mut none = String::new();
    assert!(diff_script("t", &after, &after, &mut none).is_empty() && none.is_empty());
    let mut gone = String::new();
    let stale = diff_script("t", &after, &ServiceRules::default(), &mut gone);
    assert_eq!(stale, vec![SVC.to_string()]);
    assert!(gone.starts_with("delete element ip t cluster-ips { 10.96.0.20 }\ndelete element ip t service-ips { 10.96.0.20 . tcp . 80 }\n"), "{gone}");
    assert!(!gone.contains("add "), "{gone}");

    // Endpoints all gone: the map element moves from service-ips to no-endpoint-services.
    let mut empty = String::new();
    let no_eps = rules_for(&web(), vec![slice("web-a", "web", 8080, vec![])]);
    diff_script("t", &after, &no_eps, &mut empty);
    assert!(empty.contains("delete element ip t service-ips { 10.96.0.20 . tcp . 80 }"), "{empty}");
    assert!(
        empty.contains("add element ip t no-endpoint-services { 10.96.0.20 . tcp . 80 : goto reject-chain }"),
        "{empty}"
    );
}

#[test]
fn load_balancer_status_adds_and_removes_this_nodes_address() {
    let ip: Ipv4Addr = "192.0.2.2".parse().expect("ip");
    let mut svc = web();
    svc["spec"]["type"] = json!("LoadBalancer");
    let updated = load_balancer_update(&svc, ip, |_| false).expect("an update");
    assert_eq!(updated["status"]["loadBalancer"]["ingress"], json!([{"ip": "192.0.2.2", "ipMode": "VIP"}]));
    assert!(load_balancer_update(&updated, ip, |_| false).is_none(), "already there");
    // Port 80 on this address is another Service's: stays pending.
    assert!(load_balancer_update(&svc, ip, |k| k == "192.0.2.2 . tcp . 80").is_none());
    // No longer a load balancer: the address goes.
    let mut back = updated.clone();
    back["spec"]["type"] = json!("ClusterIP");
    let cleared = load_balancer_update(&back, ip, |_| false).expect("an update");
    assert_eq!(cleared["status"]["loadBalancer"], json!({}));
    // Someone else's class.
    svc["spec"]["loadBalancerClass"] = json!("example.com/lb");
    assert!(load_balancer_update(&svc, ip, |_| false).is_none());
}

/// A stand-in for `nft` that records each script it is given (one file per run).
fn recording_nft(dir: &std::path::Path) -> Nft {
    let program = dir.join("nft");
    std::fs::write(
        &program,
        format!("#!/bin/sh\nn=$(ls {d} | wc -l)\ncat > {d}/run-$n\n", d = dir.join("runs").display()),
    )
    .expect("write");
    std::fs::create_dir_all(dir.join("runs")).expect("mkdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    Nft::at(&program)
}

fn runs(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0.. {
        match std::fs::read_to_string(dir.join("runs").join(format!("run-{i}"))) {
            Ok(s) => out.push(s),
            Err(_) => return out,
        }
    }
    out
}

#[tokio::test]
async fn the_proxier_rebuilds_once_then_touches_only_changed_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut p = Proxier::new(table(), "node-1", recording_nft(dir.path()), None);
    for i in 0..50 {
        let name = format!("svc{i}");
        let svc = service(
            &name,
            json!({"clusterIP": format!("10.96.1.{i}"), "ports": [{"name": "http", "port": 80}]}),
        );
        p.service_changed(&format!("default/{name}"), Some(Arc::new(svc)));
        let s = slice(
            &format!("{name}-x"),
            &name,
            8080,
            vec![endpoint(&format!("10.123.1.{}", i + 10), "n", true, true, false)],
        );
        p.slice_changed(&format!("default/{name}-x"), Some(Arc::new(s)));
    }
    let report = p.sync().await.expect("full sync");
    assert!(report.full);
    let all = runs(dir.path());
    assert_eq!(all.len(), 1);
    assert!(
        all[0].starts_with("add table ip capstan-cpt1\ndelete table ip capstan-cpt1\n"),
        "atomic replace"
    );
    assert_eq!(all[0].matches("add chain ip capstan-cpt1 service-default/").count(), 50);
    assert!(!p.has_work());

    // One endpoint changes: one small transaction about svc7 alone.
    let s = slice("svc7-x", "svc7", 8080, vec![endpoint("10.123.1.99", "n", true, true, false)]);
    p.slice_changed("default/svc7-x", Some(Arc::new(s.clone())));
    let report = p.sync().await.expect("sync");
    assert!(!report.full);
    assert_eq!(report.changed, 1);
    let all = runs(dir.path());
    assert_eq!(all.len(), 2);
    for l in all[1].lines() {
        assert!(l.contains("default/svc7/"), "only svc7 is touched: {l}");
    }
    // The same slice again (a resync): nothing to run.
    p.slice_changed("default/svc7-x", Some(Arc::new(s)));
    assert!(!p.has_work());
    // Deleting the Service removes its elements; its chains are deleted a moment later.
    p.service_changed("default/svc7", None);
    p.sync().await.expect("sync");
    assert!(p.programmed("default/svc7").is_none());
    assert_eq!(p.stale_chains(), 1);
    assert_eq!(p.delete_stale(Duration::ZERO).await.expect("delete"), 1);
    let all = runs(dir.path());
    assert_eq!(all.len(), 4);
    let mut deleted: Vec<&str> = all[3].lines().collect();
    deleted.sort();
    assert_eq!(deleted, vec!["delete chain ip capstan-cpt1 service-default/svc7/tcp/http"]);
}

#[tokio::test]
async fn two_services_never_share_an_element() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut p = Proxier::new(table(), "node-1", recording_nft(dir.path()), None);
    let lb = |name: &str| {
        let mut s = service(
            name,
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.7", "ports": [{"name": "http", "port": 80, "nodePort": 30001}]}),
        );
        s["spec"]["clusterIP"] = json!(if name == "a" { "10.96.0.7" } else { "10.96.0.8" });
        s["spec"]["ports"][0]["nodePort"] = json!(if name == "a" { 30001 } else { 30002 });
        s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}});
        s
    };
    for name in ["a", "b"] {
        p.service_changed(&format!("default/{name}"), Some(Arc::new(lb(name))));
        let s = slice(&format!("{name}-x"), name, 8080, vec![endpoint("10.123.1.5", "n", true, true, false)]);
        p.slice_changed(&format!("default/{name}-x"), Some(Arc::new(s)));
    }
    p.sync().await.expect("sync");
    assert_eq!(p.holder(rules::EXTERNAL_IPS, "192.0.2.2 . tcp . 80"), Some("default/a"));
    assert!(p.elements_of("default/b", rules::EXTERNAL_IPS).is_empty());
    // When a gives it up, b gets it.
    p.service_changed("default/a", None);
    p.sync().await.expect("sync");
    p.sync().await.expect("sync");
    assert_eq!(p.holder(rules::EXTERNAL_IPS, "192.0.2.2 . tcp . 80"), Some("default/b"));
}

/// The generated scripts are valid nftables: checked by the real `nft -c` (no change made)
/// where it is installed and may talk to the kernel.
#[tokio::test]
async fn scripts_pass_nft_check() {
    let Ok(nft) = Nft::find() else { return };
    let mut svc = web();
    svc["spec"]["type"] = json!("LoadBalancer");
    svc["spec"]["ports"] = json!([
        {"name": "http", "port": 80, "nodePort": 30080},
        {"name": "sctp", "port": 90, "protocol": "SCTP", "nodePort": 30090}]);
    svc["spec"]["sessionAffinity"] = json!("ClientIP");
    svc["spec"]["externalTrafficPolicy"] = json!("Local");
    svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}});
    let mut s = slice(
        "web-a",
        "web",
        8080,
        vec![
            endpoint("10.123.1.5", "node-1", true, true, false),
            endpoint("10.123.1.6", "node-2", true, true, false),
        ],
    );
    s["ports"] = json!([{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "sctp", "port": 9090, "protocol": "SCTP"}]);
    let r = rules_for(&svc, vec![s]);
    let mut script = String::new();
    rules::replace_table_script(&table(), &mut script);
    rules::add_script("capstan-cpt1", [&r].into_iter(), &mut script);
    let out = tokio::process::Command::new(nft_path(&nft))
        .args(["-c", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = out else { return };
    use tokio::io::AsyncWriteExt;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await.expect("write");
    }
    let out = child.wait_with_output().await.expect("nft -c");
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Operation not permitted") {
        return; // not root: nothing to check against
    }
    assert!(out.status.success(), "nft -c refused the script: {err}\n{script}");
}

fn nft_path(_: &Nft) -> &'static str {
    if std::path::Path::new("/usr/sbin/nft").exists() {
        "/usr/sbin/nft"
    } else {
        "nft"
    }
}
