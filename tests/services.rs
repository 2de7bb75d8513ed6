//! Services on the real node: the node agent's service proxy programs nftables rules (its own
//! table, per pod bridge) for ClusterIP, NodePort and LoadBalancer Services; pods and the
//! host reach busybox httpd backends through them. Real runc, CNI, nft and kubectl. Needs
//! root and the packages scripts/deps.sh installs (nftables among them).

mod common;

use capstan_testkit::{push_busybox_image, Registry};
use common::{wait_for, Cluster};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

fn registry_with_image() -> (Registry, String) {
    let reg = Registry::start(None).expect("start docker-registry");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let image = rt.block_on(push_busybox_image(&reg, "busybox", "1", None)).expect("push the test image");
    (reg, image)
}

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

fn try_json(c: &Cluster, args: &[&str]) -> Option<Value> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = c.kubectl(&a);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

fn apply(c: &Cluster, name: &str, yaml: &str) {
    let f = c.file(name, yaml);
    c.ok(&["apply", "-f", f.to_str().expect("utf-8 path")]);
}

fn wait_node_ready(c: &Cluster) {
    wait_for("node-1 Ready", Duration::from_secs(30), || {
        let v = try_json(c, &["get", "node", "node-1"])?;
        v["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    });
}

fn wait_running(c: &Cluster, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = try_json(c, &["get", "pod", name]);
        let ready = p.as_ref().is_some_and(|p| {
            p["status"]["phase"] == "Running"
                && p["status"]["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        });
        if ready {
            return;
        }
        if Instant::now() > deadline {
            let d = c.kubectl(&["describe", "pod", name]);
            panic!("pod {name} not Running after 60 s:\n{}", String::from_utf8_lossy(&d.stdout));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The nftables table of the test cluster's node (named after its bridge).
fn table_of(c: &Cluster) -> String {
    let config = std::fs::read_to_string(c.path().join("capstan.yaml")).expect("the node config");
    let bridge = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("bridge: "))
        .expect("a bridge in the node config")
        .trim()
        .to_string();
    format!("capstan-{bridge}")
}

fn nft_json(table: &str) -> Option<Value> {
    let out = Command::new("nft").args(["-j", "list", "table", "ip", table]).output().expect("nft runs");
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

/// The table as (chains, rules per chain, map elements), with relay ports and dynamic
/// affinity entries left out, so that two listings can be compared.
#[derive(Debug, PartialEq, Eq)]
struct Listing {
    chains: BTreeSet<String>,
    rules: BTreeMap<String, Vec<String>>,
    elements: BTreeMap<String, BTreeSet<String>>,
}

fn listing(table: &str) -> Option<Listing> {
    let v = nft_json(table)?;
    let mut l = Listing { chains: BTreeSet::new(), rules: BTreeMap::new(), elements: BTreeMap::new() };
    for item in v["nftables"].as_array()? {
        if let Some(ch) = item.get("chain") {
            l.chains.insert(ch["name"].as_str()?.to_string());
        }
        if let Some(r) = item.get("rule") {
            let chain = r["chain"].as_str()?.to_string();
            // The relay of the `kubernetes` Service listens on a new port after a restart.
            if chain.contains("default/kubernetes") && r["expr"].to_string().contains("dnat") {
                continue;
            }
            l.rules.entry(chain).or_default().push(r["expr"].to_string());
        }
        for kind in ["map", "set"] {
            if let Some(m) = item.get(kind) {
                let name = m["name"].as_str()?.to_string();
                if name.starts_with("affinity-") {
                    continue;
                }
                let elems = m["elem"]
                    .as_array()
                    .map(|a| a.iter().map(Value::to_string).collect())
                    .unwrap_or_default();
                l.elements.insert(name, elems);
            }
        }
    }
    Some(l)
}

/// The rules and elements that belong to Services (not the table's fixed part).
fn service_traces(l: &Listing) -> Vec<String> {
    let mut out: Vec<String> = l
        .chains
        .iter()
        // A Service's chains have a namespace/name in their name; the fixed chains do not.
        .filter(|c| c.contains('/'))
        .cloned()
        .collect();
    for (map, elems) in &l.elements {
        out.extend(elems.iter().map(|e| format!("{map}: {e}")));
    }
    out
}

fn exec(c: &Cluster, pod: &str, script: &str) -> std::process::Output {
    c.kubectl(&["exec", pod, "--", "sh", "-c", script])
}

/// `n` requests from `pod` to `url`; the bodies, one per line.
fn requests_from(c: &Cluster, pod: &str, url: &str, n: usize) -> Vec<String> {
    let script = format!("for i in $(seq {n}); do busybox timeout 5 wget -qO- {url} || echo FAILED; done");
    let out = exec(c, pod, &script);
    assert!(out.status.success(), "exec failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// A plain HTTP GET from the host; the body.
fn http_get(addr: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    (status.starts_with("HTTP/1.") && status.contains(" 200 ")).then(|| body.trim().to_string())
}

/// The names of the running, not deleting pods of `selector`, once there are `n` and no others.
fn pod_names(c: &Cluster, selector: &str, n: usize) -> BTreeSet<String> {
    wait_for(&format!("{n} pods {selector} and no others"), Duration::from_secs(60), || {
        let pods = try_json(c, &["get", "pods", "-l", selector])?;
        let items = pods["items"].as_array()?;
        let running: BTreeSet<String> = items
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running")
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        (items.len() == n && running.len() == n).then_some(running)
    })
}

fn cluster_ip(c: &Cluster, svc: &str) -> String {
    json(c, &["get", "service", svc])["spec"]["clusterIP"].as_str().expect("a clusterIP").to_string()
}

/// Waits until the table sends `ip . tcp . port` somewhere (the rules are in place).
fn wait_for_rule(table: &str, map: &str, key: &str) {
    wait_for(&format!("{key} in {map} of {table}"), Duration::from_secs(20), || {
        let l = listing(table)?;
        l.elements.get(map)?.iter().any(|e| e.contains(key)).then_some(())
    });
}

/// The `httpd` command of the backends: each serves its own host name (the pod's name).
const SERVE_HOSTNAME: &str = "hostname > /var/www/index.html; exec httpd -f -p 80 -h /var/www";

fn client_pod(c: &Cluster, image: &str, name: &str, labels: &str) {
    apply(
        c,
        &format!("{name}.yaml"),
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", {SERVE_HOSTNAME:?}]\n"
        ),
    );
    wait_running(c, name);
}

#[test]
fn services_route_from_pods_the_node_and_outside() {
    let (_reg, image) = registry_with_image();
    let mut c = Cluster::start_node("");
    let table = table_of(&c);
    wait_node_ready(&c);
    let node_ip = json(&c, &["get", "node", "node-1"])["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .expect("an InternalIP")
        .to_string();

    c.ok(&[
        "create",
        "deployment",
        "web",
        "--image",
        &image,
        "--replicas=3",
        "--",
        "sh",
        "-c",
        SERVE_HOSTNAME,
    ]);
    c.ok(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"terminationGracePeriodSeconds":1}}}}"#,
    ]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    c.ok(&["expose", "deployment", "web", "--port", "80"]);
    client_pod(&c, &image, "client", "role: client");
    let backends = pod_names(&c, "app=web", 3);
    let ip = cluster_ip(&c, "web");
    wait_for_rule(&table, "service-ips", &format!("\"{ip}\""));

    // 60 requests from a pod reach all three backends, each answering with its name.
    let bodies = requests_from(&c, "client", &format!("http://{ip}"), 60);
    assert_eq!(bodies.len(), 60, "{bodies:?}");
    let seen: BTreeSet<String> = bodies.iter().cloned().collect();
    assert_eq!(seen, backends, "every answer is a backend's name and all three answer");

    // By name, through the node's cluster DNS and the proxy, as a user would.
    for name in ["web", "web.default", "web.default.svc.cluster.local"] {
        let body = wait_for(&format!("http://{name} from a pod"), Duration::from_secs(30), || {
            requests_from(&c, "client", &format!("http://{name}"), 1)
                .into_iter()
                .find(|b| backends.contains(b))
        });
        assert!(backends.contains(&body), "{name}: {body}");
    }

    // The ClusterIP from the node itself.
    let body =
        wait_for("the ClusterIP from the host", Duration::from_secs(10), || http_get(&format!("{ip}:80")));
    assert!(backends.contains(&body), "{body}");

    // NodePort on the node's address, from the host.
    c.ok(&["expose", "deployment", "web", "--name", "web-np", "--type", "NodePort", "--port", "80"]);
    let node_port =
        json(&c, &["get", "service", "web-np"])["spec"]["ports"][0]["nodePort"].as_u64().expect("a nodePort");
    let body = wait_for("the NodePort from the host", Duration::from_secs(20), || {
        http_get(&format!("{node_ip}:{node_port}"))
    });
    assert!(backends.contains(&body), "{body}");

    // LoadBalancer: the node's address in its status, serving the Service port there.
    c.ok(&[
        "expose",
        "deployment",
        "web",
        "--name",
        "web-lb",
        "--type",
        "LoadBalancer",
        "--port",
        "8081",
        "--target-port",
        "80",
    ]);
    let lb_ip = wait_for("status.loadBalancer.ingress", Duration::from_secs(20), || {
        let s = try_json(&c, &["get", "service", "web-lb"])?;
        s["status"]["loadBalancer"]["ingress"][0]["ip"].as_str().map(str::to_string)
    });
    assert_eq!(lb_ip, node_ip);
    let body = wait_for("the load balancer from the host", Duration::from_secs(20), || {
        http_get(&format!("{lb_ip}:8081"))
    });
    assert!(backends.contains(&body), "{body}");

    // sessionAffinity: ClientIP keeps one client on one backend.
    c.ok(&[
        "expose",
        "deployment",
        "web",
        "--name",
        "web-sticky",
        "--port",
        "80",
        "--session-affinity",
        "ClientIP",
    ]);
    let sticky = cluster_ip(&c, "web-sticky");
    wait_for_rule(&table, "service-ips", &format!("\"{sticky}\""));
    let bodies = requests_from(&c, "client", &format!("http://{sticky}"), 20);
    let seen: BTreeSet<&String> = bodies.iter().collect();
    assert_eq!(seen.len(), 1, "one backend for one client: {bodies:?}");
    assert!(backends.contains(bodies[0].as_str()), "{bodies:?}");

    // Hairpin: a pod reaches itself through its own Service.
    client_pod(&c, &image, "selfie", "app: selfie");
    c.ok(&["expose", "pod", "selfie", "--port", "80"]);
    let own = cluster_ip(&c, "selfie");
    wait_for_rule(&table, "service-ips", &format!("\"{own}\""));
    assert_eq!(requests_from(&c, "selfie", &format!("http://{own}"), 3), vec!["selfie"; 3]);

    // Scaled to zero: refused at once (not a hang), and back again.
    c.ok(&["scale", "deployment", "web", "--replicas=0"]);
    wait_for("web's endpoints gone", Duration::from_secs(60), || {
        let l = listing(&table)?;
        l.elements.get("no-endpoint-services")?.iter().any(|e| e.contains(&format!("\"{ip}\""))).then_some(())
    });
    let started = Instant::now();
    let out = exec(&c, "client", &format!("busybox timeout 5 wget -qO- http://{ip}; echo rc=$?"));
    let elapsed = started.elapsed();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("refused") && text.contains("rc=1"), "{text}");
    assert!(elapsed < Duration::from_secs(2), "the request failed after {elapsed:?}: {text}");
    c.ok(&["scale", "deployment", "web", "--replicas=3"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    let backends = pod_names(&c, "app=web", 3);
    let body = wait_for("web answering again", Duration::from_secs(20), || {
        let b = requests_from(&c, "client", &format!("http://{ip}"), 1).pop()?;
        backends.contains(&b).then_some(b)
    });
    assert!(backends.contains(&body));

    // kill -9 and restart: the table is rebuilt from scratch, identical, without duplicates.
    let before = listing(&table).expect("the table");
    c.kill9();
    c.restart();
    let after = wait_for("the rebuilt table", Duration::from_secs(30), || {
        let l = listing(&table)?;
        (service_traces(&l).len() == service_traces(&before).len()).then_some(l)
    });
    for (chain, rules) in &after.rules {
        let unique: BTreeSet<&String> = rules.iter().collect();
        assert_eq!(unique.len(), rules.len(), "duplicate rules in {chain}: {rules:?}");
    }
    // The `kubernetes` Service's relay (its endpoint is on loopback) listens on a new port
    // after a restart: `listing` leaves that rule out.
    assert_eq!(after, before);
    let body = wait_for("web after the restart", Duration::from_secs(20), || http_get(&format!("{ip}:80")));
    assert!(backends.contains(&body));

    // Everything deleted: no rule of any Service remains (but the `kubernetes` Service's,
    // which the gateway keeps).
    let kubernetes_ip = format!("\"{}\"", cluster_ip(&c, "kubernetes"));
    c.ok(&["delete", "service", "web", "web-np", "web-lb", "web-sticky", "selfie"]);
    c.ok(&["delete", "deployment", "web"]);
    wait_for("no Service rules left", Duration::from_secs(20), || {
        let l = listing(&table)?;
        let left: Vec<String> = service_traces(&l)
            .into_iter()
            .filter(|t| !t.contains("default/kubernetes") && !t.contains(&kubernetes_ip))
            .collect();
        left.is_empty().then_some(()).or_else(|| {
            eprintln!("still there: {left:?}");
            None
        })
    });

    // node-reset (run when the cluster is dropped) removes the table.
    drop(c);
    assert!(nft_json(&table).is_none(), "the table {table} is still there after node-reset");
}

/// A Service without selector whose endpoint is `127.0.0.1:<port>`, and its EndpointSlice.
fn loopback_service(name: &str, port: u16, target: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  ports:\n  - name: main\n    port: {port}\n    targetPort: {target}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: main\n  port: {target}\n  protocol: TCP\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions: {{ready: true}}\n"
    )
}

/// An HTTP server on 127.0.0.1 (a thread) answering every request with `body`.
fn loopback_http_server(body: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.read(&mut buf);
            let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
    });
    port
}

#[test]
fn loopback_endpoints_are_reached_through_a_relay() {
    let (_reg, image) = registry_with_image();
    let c = Cluster::start_node("");
    let table = table_of(&c);
    wait_node_ready(&c);
    client_pod(&c, &image, "client", "role: client");

    // A server on the host's loopback, behind a Service: pods get its page through the relay.
    let port = loopback_http_server("hello from the host's loopback\n");
    apply(&c, "loopy.yaml", &loopback_service("loopy", 80, port));
    let ip = cluster_ip(&c, "loopy");
    wait_for_rule(&table, "service-ips", &format!("\"{ip}\""));
    assert_eq!(
        requests_from(&c, "client", &format!("http://{ip}"), 3),
        vec!["hello from the host's loopback"; 3]
    );
    // And so does the node itself.
    assert_eq!(http_get(&format!("{ip}:80")).as_deref(), Some("hello from the host's loopback"));

    // The `kubernetes` Service, which the gateway writes: the API of `capstan up` listens on
    // 127.0.0.1, so its endpoint is on loopback too.
    let api_port: u16 =
        c.url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).expect("a port");
    let ip = cluster_ip(&c, "kubernetes");
    wait_for_rule(&table, "service-ips", &format!("\"{ip}\""));
    // busybox's own TLS client (used when there is no `openssl` to run, as in the test image)
    // sends no signature algorithms, which the API's TLS (rustls) refuses with a handshake
    // alert. The same client straight to the API from the host gets the same answer: the API
    // is what answers through the Service.
    let wget = "busybox wget --no-check-certificate -S -O- https://{}/version 2>&1; true";
    let from_pod = exec(&c, "client", &wget.replace("{}", &ip));
    let from_pod = String::from_utf8_lossy(&from_pod.stdout).to_string();
    let direct = Command::new("/bin/busybox")
        .args([
            "wget",
            "--no-check-certificate",
            "-S",
            "-O-",
            &format!("https://127.0.0.1:{api_port}/version"),
        ])
        .env("PATH", "/nonexistent")
        .output()
        .expect("busybox");
    let direct =
        format!("{}{}", String::from_utf8_lossy(&direct.stdout), String::from_utf8_lossy(&direct.stderr));
    let answer = |text: &str| -> Option<String> {
        text.lines()
            .find(|l| l.contains("HTTP/1.1 ") || l.contains("TLS error from peer"))
            .map(|l| l.trim().to_string())
    };
    assert!(answer(&direct).is_some(), "the API answers busybox wget somehow: {direct}");
    assert_eq!(answer(&from_pod), answer(&direct), "through the Service: {from_pod}\ndirect: {direct}");
}

#[test]
fn the_service_proxy_can_be_turned_off() {
    let c = Cluster::start_node("serviceProxy: false");
    let table = table_of(&c);
    wait_node_ready(&c);
    apply(&c, "quiet.yaml", &loopback_service("quiet", 80, 8080));
    // An absence can only be watched for a while: a proxy syncs within milliseconds.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(nft_json(&table).is_none(), "a node without the service proxy has no table");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The status kubectl `-v=6` logged for a GET of `url` (exactly that URL, or with a query).
fn status_of<'a>(log: &'a str, url: &str) -> Option<&'a str> {
    let line = log.lines().find(|l| {
        l.contains("GET")
            && [format!("{url} "), format!("{url}?"), format!("{url}\"")]
                .iter()
                .any(|u| l.contains(u.as_str()))
    })?;
    ["200 OK", "401 Unauthorized", "403 Forbidden", "404 Not Found"].into_iter().find(|s| line.contains(s))
}

/// The API from inside a pod, as in-cluster clients reach it: the `kubernetes` Service that
/// the gateway creates (10.96.0.1:443, its endpoint the API's loopback address under
/// `capstan up`, so through the proxy's relay), the pod's mounted ServiceAccount token and
/// CA, verified TLS. busybox's TLS client cannot talk to rustls (it sends no
/// signature_algorithms extension; see `loopback_endpoints_are_reached_through_a_relay`), so
/// the client in the pod is the real kubectl (a static Go binary) mounted from the host by a
/// hostPath volume, running with its in-cluster configuration.
#[test]
fn a_pod_reaches_the_api_with_its_service_account() {
    let (_reg, image) = registry_with_image();
    let c = Cluster::start_node("");
    let table = table_of(&c);
    wait_node_ready(&c);
    let api_port: u16 =
        c.url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).expect("a port");

    // The gateway's `kubernetes` Service and its slice, and the node's rule for it.
    let svc = json(&c, &["get", "service", "kubernetes"]);
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1", "{svc}");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443, "{svc}");
    let slice = json(&c, &["get", "endpointslice", "kubernetes"]);
    assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1", "{slice}");
    assert_eq!(slice["ports"][0]["port"], api_port, "{slice}");
    wait_for_rule(&table, "service-ips", "\"10.96.0.1\"");

    let kubectl = std::fs::canonicalize("/usr/bin/kubectl").expect("kubectl is installed");
    apply(
        &c,
        "api-client.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: api-client\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: main\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n    volumeMounts:\n    - {{name: kubectl, mountPath: /usr/local/bin/kubectl, readOnly: true}}\n  volumes:\n  - name: kubectl\n    hostPath: {{path: {}, type: File}}\n",
            kubectl.display()
        ),
    );
    wait_running(&c, "api-client");

    // What the pod was given: the Service's address in its environment, token and CA.
    let out = exec(
        &c,
        "api-client",
        "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; ls /var/run/secrets/kubernetes.io/serviceaccount",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("10.96.0.1:443\n"), "{text}");
    for f in ["ca.crt", "namespace", "token"] {
        assert!(text.lines().any(|l| l == f), "no {f} in the pod's serviceaccount volume: {text}");
    }

    // kubectl in the pod, in-cluster (token and CA from the volume, server from the
    // environment); `-v=6` logs each request's URL and status.
    let in_pod = |args: &str| -> String {
        let out = exec(&c, "api-client", &format!("HOME=/tmp kubectl -v=6 {args} 2>&1; echo rc=$?"));
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let api = in_pod("get --raw /api");
    assert_eq!(status_of(&api, "https://10.96.0.1:443/api"), Some("200 OK"), "{api}");
    assert!(api.contains("\"kind\":\"APIVersions\"") && api.contains("rc=0"), "{api}");

    // The same through the Service's DNS name, the certificate checked for that name.
    let token = "/var/run/secrets/kubernetes.io/serviceaccount/token";
    let ca = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
    let by_name = in_pod(&format!(
        "--server https://kubernetes.default.svc --certificate-authority {ca} --token \"$(cat {token})\" get --raw /api"
    ));
    assert_eq!(status_of(&by_name, "https://kubernetes.default.svc/api"), Some("200 OK"), "{by_name}");
    assert!(by_name.contains("rc=0"), "{by_name}");

    // Authorized as the pod's ServiceAccount: no pods until a RoleBinding grants them.
    let pods = "get --raw /api/v1/namespaces/default/pods";
    let pods_url = "https://10.96.0.1:443/api/v1/namespaces/default/pods";
    let denied = in_pod(pods);
    assert_eq!(status_of(&denied, pods_url), Some("403 Forbidden"), "{denied}");
    assert!(denied.contains("system:serviceaccount:default:default") && denied.contains("rc=1"), "{denied}");
    c.ok(&["create", "rolebinding", "r", "--clusterrole=view", "--serviceaccount=default:default"]);
    let allowed = wait_for("the pod's token allowed to list pods", Duration::from_secs(10), || {
        let out = in_pod(pods);
        out.contains("rc=0").then_some(out)
    });
    assert_eq!(status_of(&allowed, pods_url), Some("200 OK"), "{allowed}");
    assert!(
        allowed.contains("\"kind\":\"PodList\"") && allowed.contains("\"name\":\"api-client\""),
        "{allowed}"
    );
}
