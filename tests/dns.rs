//! Cluster DNS served by the node agent, pods' resolv.conf by dnsPolicy and Service
//! environment variables: `capstan up` with its real node (runc, CNI), the real kubectl,
//! busybox's `nslookup` inside pods, and a real `dnsmasq` on loopback as the "outside"
//! resolver the node forwards to. Each cluster serves DNS on its own address (node config
//! `dns.address`, on its own interface), so tests can run side by side.

mod common;

use capstan_testkit::{dns_query, push_busybox_image, Dnsmasq, Registry};
use common::{wait_for, Cluster, Role};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn registry_with_image() -> (Registry, String) {
    let reg = Registry::start(None).expect("start docker-registry");
    let image = rt().block_on(push_busybox_image(&reg, "busybox", "1", None)).expect("push the test image");
    (reg, image)
}

/// A number for this test's own DNS address and interface.
fn unique() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    (std::process::id() * 13 + N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) % 250 + 1
}

/// The outside world: `www.example.test` and `api.example.test`, NXDOMAIN for the rest of
/// `example.test`.
fn upstream() -> Dnsmasq {
    Dnsmasq::start(
        &[("www.example.test", "192.0.2.80"), ("api.example.test", "192.0.2.81")],
        &["example.test"],
    )
    .expect("start dnsmasq")
}

/// The `node.dns` section of a cluster serving DNS at `ip` and forwarding to `upstream`.
fn dns_yaml(n: u32, ip: &str, upstream: SocketAddr) -> String {
    format!("dns:\n  address: {ip}\n  interface: cpdns{n}\n  upstreams: [\"{upstream}\"]\n")
}

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

fn apply(c: &Cluster, name: &str, yaml: &str) {
    let f = c.file(name, yaml);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Waits until the pod is Running and Ready; returns it.
fn wait_running(c: &Cluster, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = c.kubectl(&["get", "pod", name, "-o", "json"]);
        if let Some(p) = serde_json::from_slice::<Value>(&out.stdout).ok().filter(is_ready) {
            return p;
        }
        if Instant::now() > deadline {
            let d = c.kubectl(&["describe", "pod", name]);
            panic!("pod {name} not Ready after 90 s:\n{}", String::from_utf8_lossy(&d.stdout));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn node_ready(c: &Cluster) {
    wait_for("node-1 Ready", Duration::from_secs(30), || {
        let n = c.kubectl(&["get", "node", "node-1", "-o", "json"]);
        let v: Value = serde_json::from_slice(&n.stdout).ok()?;
        v["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    });
}

/// `kubectl exec POD -- ARGS`: (success, stdout + stderr).
fn exec(c: &Cluster, pod: &str, args: &[&str]) -> (bool, String) {
    let mut a = vec!["exec", pod, "--"];
    a.extend_from_slice(args);
    let out = c.kubectl(&a);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs `nslookup` in the pod until its output contains every one of `want`.
fn nslookup_until(c: &Cluster, pod: &str, args: &[&str], want: &[&str]) -> String {
    let mut cmd = vec!["nslookup"];
    cmd.extend_from_slice(args);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, last) = exec(c, pod, &cmd);
        if want.iter().all(|w| last.contains(w)) {
            return last;
        }
        assert!(Instant::now() < deadline, "nslookup {args:?} in {pod} never showed {want:?}; last:\n{last}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The address `name` resolves to inside the pod, through the C library's resolver
/// (busybox `ping` prints it before probing; the probe's TTL of 1 ends it at the node).
fn resolve_in_pod(c: &Cluster, pod: &str, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out) = exec(c, pod, &["ping", "-c", "1", "-W", "1", "-t", "1", name]);
        let ip = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("PING {name} (")))
            .and_then(|rest| rest.split(')').next())
            .map(str::to_string);
        if let Some(ip) = ip {
            return ip;
        }
        assert!(Instant::now() < deadline, "{name} does not resolve in {pod}:\n{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asks the node's DNS directly until `check` accepts the answer.
fn query_until(dns: SocketAddr, name: &str, t: RecordType, check: impl Fn(&Message) -> bool) -> Message {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = match dns_query(dns, name, t, false) {
            Ok(m) if check(&m) => return m,
            other => format!("{other:?}"),
        };
        assert!(Instant::now() < deadline, "no fitting answer for {name} {t} from {dns}; last: {last:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn a_records(m: &Message) -> Vec<String> {
    a_of(&m.answers)
}

fn a_of(records: &[hickory_proto::rr::Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn pod_ip(c: &Cluster, name: &str) -> String {
    json(c, &["get", "pod", name])["status"]["podIP"].as_str().expect("pod IP").to_string()
}

fn service_ip(c: &Cluster, name: &str) -> String {
    json(c, &["get", "service", name])["spec"]["clusterIP"].as_str().expect("cluster IP").to_string()
}

fn client_pod(image: &str, name: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 1
{extra_spec}  containers:
  - name: main
    image: {image}
    command: ["sleep", "3600"]
"#
    )
}

#[test]
fn cluster_names_resolve_in_pods_and_the_rest_is_forwarded() {
    let (_reg, image) = registry_with_image();
    let up = upstream();
    let n = unique();
    let ip = format!("10.254.{n}.10");
    let dns: SocketAddr = format!("{ip}:53").parse().unwrap();
    let c = Cluster::start_node(&dns_yaml(n, &ip, up.addr));
    node_ready(&c);
    // The gateway wrote kube-dns (tenth address of the service CIDR, no selector, marked as
    // served by every node) and kubernetes (the first) at start; the node's DNS answers for
    // both from its informers.
    let kube_dns = json(&c, &["get", "service", "kube-dns", "-n", "kube-system"]);
    assert_eq!(kube_dns["spec"]["clusterIP"], "10.96.0.10");
    assert_eq!(kube_dns["metadata"]["labels"]["capstan.io/node-local-dns"], "true");
    let m = query_until(dns, "kube-dns.kube-system.svc.cluster.local", RecordType::A, |m| {
        a_records(m) == ["10.96.0.10"]
    });
    assert!(m.metadata.authoritative);
    assert_eq!(m.answers[0].ttl, 5);
    query_until(dns, "kubernetes.default.svc.cluster.local", RecordType::A, |m| {
        a_records(m) == ["10.96.0.1"]
    });
    // Its named ports as SRV.
    let m =
        dns_query(dns, "_dns._udp.kube-dns.kube-system.svc.cluster.local", RecordType::SRV, false).unwrap();
    assert!(matches!(&m.answers[..], [r] if matches!(&r.data, RData::SRV(s) if s.port == 53)), "{m:?}");

    let apps = format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: None
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80}}
---
apiVersion: v1
kind: Service
metadata:
  name: front
spec:
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: 80}}
  - {{name: metrics, port: 8080, protocol: UDP}}
---
apiVersion: v1
kind: Service
metadata:
  name: ext
spec:
  type: ExternalName
  externalName: www.example.test
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: web
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: {image}
        command: ["httpd", "-f", "-p", "80", "-h", "/var/www"]
        ports: [{{name: http, containerPort: 80}}]
"#
    );
    apply(&c, "apps.yaml", &apps);
    apply(&c, "client.yaml", &client_pod(&image, "client", ""));
    wait_running(&c, "client");
    wait_running(&c, "web-0");
    wait_running(&c, "web-1");
    let (web0, web1) = (pod_ip(&c, "web-0"), pod_ip(&c, "web-1"));
    let front = service_ip(&c, "front");

    // The pod's resolv.conf points at the node's DNS with the cluster search path.
    let (_, resolv) = exec(&c, "client", &["cat", "/etc/resolv.conf"]);
    assert!(resolv.contains(&format!("nameserver {ip}\n")), "{resolv}");
    assert!(resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"), "{resolv}");
    assert!(resolv.contains("options ndots:5"), "{resolv}");

    // From inside a pod, through the pod's own resolver (glibc: search path, ndots:5), as
    // an application resolves: a StatefulSet pod by hostname.subdomain, a Service by short
    // name, name.namespace, name.namespace.svc and the full name. (busybox `ping` prints
    // the address it resolved; with TTL 1 its probe dies at the node.)
    assert_eq!(resolve_in_pod(&c, "client", "web-0.web"), web0);
    assert_eq!(resolve_in_pod(&c, "client", "web-1.web.default.svc.cluster.local"), web1);
    for name in ["front", "front.default", "front.default.svc", "front.default.svc.cluster.local"] {
        assert_eq!(resolve_in_pod(&c, "client", name), front, "{name}");
    }
    // busybox's nslookup asks the server itself (search domains only for dotless names).
    nslookup_until(&c, "client", &["web-0.web.default.svc.cluster.local"], &[&web0]);
    nslookup_until(&c, "client", &["front"], &["front.default.svc.cluster.local", &front]);
    // The headless Service: both ready pods.
    nslookup_until(&c, "client", &["web"], &[&web0, &web1]);
    // ExternalName: the CNAME and the target's address from upstream.
    nslookup_until(&c, "client", &["ext"], &["www.example.test", "192.0.2.80"]);
    // A name outside the cluster goes to the node's resolver (dnsmasq on loopback).
    nslookup_until(&c, "client", &["www.example.test"], &["192.0.2.80"]);
    // SRV from inside the pod, for the headless Service's named port.
    nslookup_until(
        &c,
        "client",
        &["-type=srv", "_http._tcp.web.default.svc.cluster.local"],
        &["web-0.web.default.svc.cluster.local", "web-1.web.default.svc.cluster.local"],
    );
    // A missing Service: NXDOMAIN, and nslookup fails.
    let (ok, out) = exec(&c, "client", &["nslookup", "missing.default.svc.cluster.local"]);
    assert!(!ok && out.contains("NXDOMAIN"), "{out}");

    // The same server asked directly (UDP and TCP).
    let m = dns_query(dns, "_http._tcp.front.default.svc.cluster.local", RecordType::SRV, false).unwrap();
    let srv: Vec<(u16, String)> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.port, s.target.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(srv, [(80, "front.default.svc.cluster.local.".to_string())]);
    assert_eq!(a_of(&m.additionals), [front.as_str()]);
    let m = dns_query(dns, "_http._tcp.web.default.svc.cluster.local", RecordType::SRV, true).unwrap();
    let mut targets: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(format!("{} {}", s.port, s.target)),
            _ => None,
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        ["80 web-0.web.default.svc.cluster.local.", "80 web-1.web.default.svc.cluster.local."]
    );
    // A port by its protocol too; a port the Service does not have: NXDOMAIN.
    let m = dns_query(dns, "_metrics._udp.front.default.svc.cluster.local", RecordType::SRV, false).unwrap();
    assert!(matches!(&m.answers[0].data, RData::SRV(s) if s.port == 8080));
    let m = dns_query(dns, "_metrics._tcp.front.default.svc.cluster.local", RecordType::SRV, false).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // NXDOMAIN vs NODATA.
    let m = dns_query(dns, "missing.default.svc.cluster.local", RecordType::A, false).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    let m = dns_query(dns, "front.default.svc.cluster.local", RecordType::AAAA, false).unwrap();
    assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::NoError, 0));
    // PTR for a ClusterIP and for a headless endpoint.
    let rev = |ip: &str| format!("{}.in-addr.arpa", ip.split('.').rev().collect::<Vec<_>>().join("."));
    let m = dns_query(dns, &rev(&front), RecordType::PTR, false).unwrap();
    assert!(
        matches!(&m.answers[0].data, RData::PTR(p) if p.0.to_string() == "front.default.svc.cluster.local.")
    );
    let m = dns_query(dns, &rev(&web0), RecordType::PTR, false).unwrap();
    assert!(
        matches!(&m.answers[0].data, RData::PTR(p) if p.0.to_string() == "web-0.web.default.svc.cluster.local.")
    );
    // Forwarded over TCP too; a name upstream does not know is its NXDOMAIN.
    let m = dns_query(dns, "api.example.test", RecordType::A, true).unwrap();
    assert_eq!(a_records(&m), ["192.0.2.81"]);
    let m = dns_query(dns, "nope.example.test", RecordType::A, false).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // Names under the cluster domain are never forwarded, whatever their shape.
    let m = dns_query(dns, "www.example.test.cluster.local", RecordType::A, false).unwrap();
    assert_eq!((m.metadata.response_code, m.metadata.authoritative), (ResponseCode::NXDomain, true));

    // A deleted pod leaves the headless records; a deleted Service leaves no name.
    c.ok(&["scale", "statefulset", "web", "--replicas=1"]);
    query_until(dns, "web.default.svc.cluster.local", RecordType::A, |m| a_records(m) == [web0.clone()]);
    c.ok(&["delete", "service", "front"]);
    query_until(dns, "front.default.svc.cluster.local", RecordType::A, |m| {
        m.metadata.response_code == ResponseCode::NXDomain
    });
}

#[test]
fn resolv_conf_follows_dns_policy_and_pods_get_service_variables() {
    let (_reg, image) = registry_with_image();
    let up = upstream();
    let n = unique();
    let ip = format!("10.254.{n}.10");
    let dns: SocketAddr = format!("{ip}:53").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host_resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &host_resolv,
        "nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch corp.test\noptions edns0\n",
    )
    .unwrap();
    let yaml = format!("resolvConf: {}\n{}", host_resolv.display(), dns_yaml(n, &ip, up.addr));
    let c = Cluster::start_node(&yaml);
    node_ready(&c);

    // Services first (as upstream, variables are taken when a container starts); the
    // gateway made `kubernetes` at start.
    let services = r#"apiVersion: v1
kind: Service
metadata:
  name: alpha-api
spec:
  ports:
  - {name: http, port: 8080}
  - {name: stats, port: 9125, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata:
  name: nothing-here
spec:
  clusterIP: None
  ports:
  - {port: 1}
"#;
    apply(&c, "services.yaml", services);
    let alpha = service_ip(&c, "alpha-api");
    let kubernetes = service_ip(&c, "kubernetes");
    // The node has seen them once its DNS answers for them.
    query_until(dns, "alpha-api.default.svc.cluster.local", RecordType::A, |m| {
        a_records(m) == [alpha.clone()]
    });
    query_until(dns, "kubernetes.default.svc.cluster.local", RecordType::A, |m| {
        a_records(m) == [kubernetes.clone()]
    });

    let pods = [
        ("first", "".to_string()),
        ("host-default", "  dnsPolicy: Default\n".to_string()),
        (
            "none",
            "  dnsPolicy: None\n  dnsConfig:\n    nameservers: [192.0.2.99]\n    searches: [a.test]\n    options:\n    - {name: ndots, value: \"2\"}\n".to_string(),
        ),
        (
            "merged",
            "  dnsConfig:\n    searches: [extra.test]\n    options:\n    - {name: ndots, value: \"3\"}\n    - {name: rotate}\n".to_string(),
        ),
        ("hostnet", "  hostNetwork: true\n".to_string()),
        ("hostnet-cluster", "  hostNetwork: true\n  dnsPolicy: ClusterFirstWithHostNet\n".to_string()),
        ("nolinks", "  enableServiceLinks: false\n".to_string()),
    ];
    for (name, extra) in &pods {
        apply(&c, &format!("{name}.yaml"), &client_pod(&image, name, extra));
    }
    let override_env = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: override
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sleep", "3600"]
    env:
    - {{name: ALPHA_API_SERVICE_HOST, value: mine}}
    - {{name: FROM_SERVICE, value: "$(ALPHA_API_SERVICE_PORT)"}}
"#
    );
    apply(&c, "override.yaml", &override_env);
    let resolv = |pod: &str| {
        wait_running(&c, pod);
        let (ok, out) = exec(&c, pod, &["cat", "/etc/resolv.conf"]);
        assert!(ok, "{out}");
        out
    };
    let cluster_first = format!(
        "search default.svc.cluster.local svc.cluster.local cluster.local corp.test\nnameserver {ip}\noptions ndots:5\n"
    );
    assert_eq!(resolv("first"), cluster_first);
    // Default: the node's file, without the loopback stub a pod cannot reach.
    assert_eq!(resolv("host-default"), "search corp.test\nnameserver 192.0.2.53\noptions edns0\n");
    assert_eq!(resolv("none"), "search a.test\nnameserver 192.0.2.99\noptions ndots:2\n");
    assert_eq!(
        resolv("merged"),
        format!("search default.svc.cluster.local svc.cluster.local cluster.local corp.test extra.test\nnameserver {ip}\noptions ndots:3 rotate\n")
    );
    // hostNetwork with ClusterFirst gets the node's file as it is (its loopback is the node's).
    assert_eq!(
        resolv("hostnet"),
        "search corp.test\nnameserver 127.0.0.53\nnameserver 192.0.2.53\noptions edns0\n"
    );
    assert_eq!(resolv("hostnet-cluster"), cluster_first);
    // The host-network pod reaches the cluster DNS too.
    nslookup_until(&c, "hostnet-cluster", &["alpha-api"], &[&alpha]);

    // Service variables.
    let env = |pod: &str| -> std::collections::HashMap<String, String> {
        let (ok, out) = exec(&c, pod, &["env"]);
        assert!(ok, "{out}");
        out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let e = env("first");
    assert_eq!(e["ALPHA_API_SERVICE_HOST"], alpha);
    assert_eq!(e["ALPHA_API_SERVICE_PORT"], "8080");
    assert_eq!(e["ALPHA_API_SERVICE_PORT_HTTP"], "8080");
    assert_eq!(e["ALPHA_API_SERVICE_PORT_STATS"], "9125");
    assert_eq!(e["ALPHA_API_PORT"], format!("tcp://{alpha}:8080"));
    assert_eq!(e["ALPHA_API_PORT_8080_TCP"], format!("tcp://{alpha}:8080"));
    assert_eq!(e["ALPHA_API_PORT_8080_TCP_PROTO"], "tcp");
    assert_eq!(e["ALPHA_API_PORT_8080_TCP_PORT"], "8080");
    assert_eq!(e["ALPHA_API_PORT_8080_TCP_ADDR"], alpha);
    assert_eq!(e["ALPHA_API_PORT_9125_UDP"], format!("udp://{alpha}:9125"));
    assert_eq!(e["KUBERNETES_SERVICE_HOST"], kubernetes);
    assert_eq!(e["KUBERNETES_SERVICE_PORT"], "443");
    assert_eq!(e["KUBERNETES_PORT_443_TCP"], format!("tcp://{kubernetes}:443"));
    // A headless Service has no variables.
    assert!(!e.keys().any(|k| k.starts_with("NOTHING_HERE")), "{e:?}");
    // enableServiceLinks: false keeps only the kubernetes ones.
    let e = env("nolinks");
    assert!(!e.keys().any(|k| k.starts_with("ALPHA_API")), "{e:?}");
    assert_eq!(e["KUBERNETES_SERVICE_HOST"], kubernetes);
    // The container's own env wins and may refer to Service variables.
    wait_running(&c, "override");
    let e = env("override");
    assert_eq!(e["ALPHA_API_SERVICE_HOST"], "mine");
    assert_eq!(e["FROM_SERVICE"], "8080");
    assert_eq!(e["ALPHA_API_PORT_8080_TCP_ADDR"], alpha);
}

/// The node agent as its own process (`capstan kubelet`) next to a multi-process cluster;
/// `capstan node-reset` on drop.
struct Kubelet {
    role: Option<Role>,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.role = None;
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args(["node-reset", "--data-dir"])
            .arg(self.dir.path())
            .arg("--config")
            .arg(&self.config)
            .env("CAPSTAN_LOG", "warn")
            .output();
    }
}

#[test]
fn dns_keeps_answering_while_the_api_is_down() {
    let up = upstream();
    let n = unique();
    let ip = format!("10.254.{n}.10");
    let dns: SocketAddr = format!("{ip}:53").parse().unwrap();
    let mut c = Cluster::start_multiprocess(0, &[]);
    let nats = c.nats_url().expect("a NATS cluster");
    let dir = tempfile::Builder::new().prefix("capstan-kubelet-").tempdir().unwrap();
    let config = dir.path().join("capstan.yaml");
    let node_yaml: String = format!(
        "bridge: cpk{n}\npodCIDR: 10.124.{n}.0/24\ncgroupParent: /capstan-test-dns-{n}\n{}",
        dns_yaml(n, &ip, up.addr)
    )
    .lines()
    .map(|l| format!("  {l}\n"))
    .collect();
    std::fs::write(&config, format!("node:\n  name: node-dns\n{node_yaml}")).unwrap();
    let data_dir = dir.path().to_str().unwrap().to_string();
    let kubelet = Kubelet {
        role: Some(Role::start(&[
            "kubelet",
            "--nats",
            &nats,
            "--data-dir",
            &data_dir,
            "--config",
            config.to_str().unwrap(),
        ])),
        dir,
        config,
    };
    apply(&c, "svc.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: steady\nspec:\n  ports:\n  - {name: http, port: 80}\n");
    let steady = service_ip(&c, "steady");
    query_until(dns, "steady.default.svc.cluster.local", RecordType::A, |m| a_records(m) == [steady.clone()]);

    // The API goes away; the node's DNS still answers from its cache, cluster names and
    // forwarded ones, and still says NXDOMAIN for what does not exist.
    c.kill9();
    assert!(c.kubectl(&["get", "services"]).status.code() != Some(0), "the API is down");
    for _ in 0..3 {
        let m = dns_query(dns, "steady.default.svc.cluster.local", RecordType::A, false).unwrap();
        assert_eq!(a_records(&m), [steady.as_str()]);
        let m = dns_query(dns, "_http._tcp.steady.default.svc.cluster.local", RecordType::SRV, true).unwrap();
        assert_eq!(m.answers.len(), 1);
        let m = dns_query(dns, "gone.default.svc.cluster.local", RecordType::A, false).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = dns_query(dns, "www.example.test", RecordType::A, false).unwrap();
        assert_eq!(a_records(&m), ["192.0.2.80"]);
        std::thread::sleep(Duration::from_millis(500));
    }

    // Back again: a change made afterwards reaches the node's records.
    c.restart();
    apply(
        &c,
        "svc2.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: later\nspec:\n  ports:\n  - {port: 80}\n",
    );
    let later = service_ip(&c, "later");
    query_until(dns, "later.default.svc.cluster.local", RecordType::A, |m| a_records(m) == [later.clone()]);
    drop(kubelet);
    // node-reset took the address and the interface away.
    let out = std::process::Command::new("ip").args(["link", "show", &format!("cpdns{n}")]).output().unwrap();
    assert!(!out.status.success(), "the DNS interface is left after node-reset");
}
