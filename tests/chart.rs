//! The Helm chart (`chart/`): `helm lint --strict`, `helm template | kubectl apply --dry-run=server`
//! against `capstan up` for the default values and each `chart/ci/*-values.yaml` (FoundationDB
//! with 3 gateways; node agents with an external NATS),
//! the schema's refusals, and capstan hosting capstan: images built by `scripts/images` from
//! the test build of `capstan` into a loopback registry, `helm install` onto `capstan up`'s
//! real node (simulated nodes in the nested cluster), the nested API through its NodePort from
//! the host with the admin kubeconfig from its Secret, a Deployment rolling out in the nested
//! cluster, `helm upgrade --set controllers.replicas=3`, `helm test`, and `helm uninstall`
//! leaving only the PVCs. Real Helm 4, kubectl, runc, CNI, docker-registry and skopeo.

mod common;

use base64::Engine;
use capstan_testkit::Registry;
use common::{client, wait_for, Cluster};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const NS: &str = "nested";
const REL: &str = "cap";

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("chart")
}

fn helm_in(home: &Path, kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(client("helm"));
    cmd.args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    if let Some(k) = kubeconfig {
        cmd.arg("--kubeconfig").arg(k);
    }
    cmd.output().expect("helm runs")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn helm(c: &Cluster, args: &[&str]) -> Output {
    helm_in(&c.dir.path().join("helm-home"), Some(&c.kubeconfig), args)
}

fn helm_ok(c: &Cluster, args: &[&str]) -> String {
    ok(helm(c, args), &format!("helm {args:?}"))
}

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

/// `kubectl apply --dry-run=server -f -` of `yaml` against `c`.
fn dry_run(c: &Cluster, yaml: &str) -> String {
    let out = c.kubectl_with(&["apply", "--dry-run=server", "-f", "-"], &[], Some(yaml));
    ok(out, "kubectl apply --dry-run=server")
}

#[test]
fn the_chart_lints_renders_and_passes_a_server_dry_run_for_each_ci_values_file() {
    let c = Cluster::start();
    let chart = chart_dir();
    let chart = chart.to_str().expect("utf-8 path");
    let fdb = format!("{chart}/ci/fdb-3-gateways-values.yaml");
    let node_agent = format!("{chart}/ci/node-agent-values.yaml");
    for values in [None, Some(fdb.as_str()), Some(node_agent.as_str())] {
        let mut lint = vec!["lint", chart, "--strict"];
        let mut template = vec!["template", REL, chart, "--namespace", "default"];
        if let Some(v) = values {
            lint.extend(["-f", v]);
            template.extend(["-f", v]);
        }
        let out = helm_ok(&c, &lint);
        assert!(out.contains("0 chart(s) failed"), "{out}");
        let yaml = helm_ok(&c, &template);
        let applied = dry_run(&c, &yaml);
        // Every object the chart renders (hooks and the test included) is accepted.
        let rendered = yaml.matches("\nkind: ").count();
        let accepted = applied.lines().filter(|l| l.contains("(server dry run)")).count();
        assert_eq!(accepted, rendered, "values {values:?}:\n{applied}");
        if values == Some(node_agent.as_str()) {
            assert!(yaml.contains("kind: DaemonSet"), "{yaml}");
            assert!(yaml.contains("--nats-creds=/etc/capstan/bus/node.$(NODE_NAME).creds"), "{yaml}");
            assert!(yaml.contains("--nodes=worker-1,worker-2"), "{yaml}");
            assert!(!yaml.contains("kind: StatefulSet"), "no NATS of its own:\n{yaml}");
            assert!(yaml.contains("nats: nats://nats.example.com:4222"), "{yaml}");
        } else if values.is_some() {
            assert!(yaml.contains("store: fdb:/etc/foundationdb/fdb.cluster"), "{yaml}");
            assert!(yaml.contains("replicas: 3"), "{yaml}");
            assert!(yaml.contains("--nats-stream-replicas=3"), "{yaml}");
            assert!(yaml.contains("routes: ["), "three NATS servers get routes:\n{yaml}");
        } else {
            assert!(yaml.contains("store: redb:/var/lib/capstan/state.redb"), "{yaml}");
            assert!(yaml.contains("kind: PersistentVolumeClaim"), "{yaml}");
        }
    }

    // Wrong values are refused by the schema, naming the value and what is wanted.
    for (set, expect) in [
        ("gateway.replicas=3", "at '/gateway/replicas': maximum: got 3, want 1"),
        ("store=etcd", "at '/store'"),
        ("gateway.service.type=Ingress", "at '/gateway/service/type'"),
        ("controllers.replicas=0", "at '/controllers/replicas': minimum: got 0, want 1"),
        ("nats.replicas=2", "at '/nats/replicas'"),
        ("nodeAgent.enabled=true", "at '/nodeAgent/nodeNames'"),
    ] {
        let out = helm(&c, &["install", REL, chart, "--dry-run=client", "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(err.contains("values don't meet the specifications of the schema"), "{set}: {err}");
        assert!(err.contains(expect), "{set}: {err}");
    }
}

/// Builds the images from the test build of `capstan` and pushes them to `reg`; returns
/// the repository prefix.
fn build_images(reg: &Registry) -> String {
    let prefix = format!("{}/capstan", reg.host());
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/images"))
        .args(["--binary", env!("CARGO_BIN_EXE_capstan"), "--only", "capstan,capstan-nats,capstan-kubectl"])
        .args(["--tag", "test", &prefix])
        .stdin(Stdio::null())
        .output()
        .expect("scripts/images runs");
    let pushed = ok(out, "scripts/images");
    for name in ["capstan", "capstan-nats", "capstan-kubectl"] {
        assert!(pushed.contains(&format!("{prefix}/{name}:test")), "{pushed}");
    }
    prefix
}

/// The nested cluster's admin kubeconfig from its Secret, pointed at `server`.
fn nested_kubeconfig(c: &Cluster, server: &str) -> PathBuf {
    let s = json(c, &["get", "secret", &format!("{REL}-admin-kubeconfig"), "-n", NS]);
    let text = base64::engine::general_purpose::STANDARD
        .decode(s["data"]["kubeconfig"].as_str().expect("a kubeconfig key"))
        .expect("base64");
    let text = String::from_utf8(text).expect("utf-8");
    assert!(text.contains(&format!("server: https://{REL}-gateway.{NS}.svc:443")), "{text}");
    let text = text.replace(&format!("https://{REL}-gateway.{NS}.svc:443"), server);
    c.file("nested.kubeconfig", &text)
}

fn nested(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(common::kubectl_program())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs")
}

fn nested_json(kubeconfig: &Path, args: &[&str]) -> Option<Value> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = nested(kubeconfig, &a);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

fn ready_nodes(kubeconfig: &Path) -> Option<Vec<String>> {
    let v = nested_json(kubeconfig, &["get", "nodes"])?;
    Some(
        v["items"]
            .as_array()?
            .iter()
            .filter(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            })
            .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
            .collect(),
    )
}

/// A plain HTTP GET of `path` on `addr` from the host; the body of a 200.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: nats\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.lines().next()?.contains(" 200 ").then(|| body.to_string())
}

fn describe_namespace(c: &Cluster) -> String {
    let pods = c.kubectl(&["get", "pods,jobs,events", "-n", NS, "-o", "wide"]);
    format!("{}{}", String::from_utf8_lossy(&pods.stdout), String::from_utf8_lossy(&pods.stderr))
}

#[test]
fn capstan_hosts_capstan_through_the_chart() {
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("{:>6.1} s  {what}", started.elapsed().as_secs_f64());
    let reg = Registry::start(None).expect("start docker-registry");
    let prefix = build_images(&reg);
    step("images built");
    let c = Cluster::start_node("");
    // The node registers after `capstan up` is serving.
    let node_ip = wait_for("node-1 Ready with an InternalIP", Duration::from_secs(60), || {
        let out = c.kubectl(&["get", "node", "node-1", "-o", "json"]);
        let n: Value = serde_json::from_slice(&out.stdout).ok()?;
        let ready = n["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let ip = n["status"]["addresses"].as_array()?.iter().find(|a| a["type"] == "InternalIP")?["address"]
            .as_str()?
            .to_string();
        ready.then_some(ip)
    });
    let chart = chart_dir();
    let chart = chart.to_str().expect("utf-8 path");
    let sets = [
        format!("image.repository={prefix}/capstan"),
        format!("nats.image.repository={prefix}/capstan-nats"),
        format!("kubectl.image.repository={prefix}/capstan-kubectl"),
        "image.tag=test".to_string(),
        "nats.image.tag=test".to_string(),
        "kubectl.image.tag=test".to_string(),
        "simNodes.count=3".to_string(),
        "nats.replicas=3".to_string(),
        "gateway.service.type=NodePort".to_string(),
        format!("gateway.extraSANs={{{node_ip}}}"),
    ];
    let mut install =
        vec!["install", REL, chart, "-n", NS, "--create-namespace", "--wait", "--timeout", "5m"];
    for s in &sets {
        install.extend(["--set", s]);
    }
    let out = helm(&c, &install);
    if !out.status.success() {
        panic!(
            "helm install failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            describe_namespace(&c)
        );
    }
    let notes = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(notes.contains("STATUS: deployed"), "{notes}");
    assert!(
        notes.contains(&format!("{REL}-admin-kubeconfig")),
        "the notes say where the kubeconfig is:\n{notes}"
    );

    step("installed");
    // The nested API through its NodePort from the host, as the admin of the Secret.
    let port = json(&c, &["get", "service", &format!("{REL}-gateway"), "-n", NS])["spec"]["ports"][0]
        ["nodePort"]
        .as_u64()
        .expect("a nodePort");
    let kubeconfig = nested_kubeconfig(&c, &format!("https://{node_ip}:{port}"));
    let nodes = wait_for("the nested cluster's three simulated nodes Ready", Duration::from_secs(90), || {
        ready_nodes(&kubeconfig).filter(|n| n.len() == 3)
    });
    assert_eq!(nodes, ["sim-0", "sim-1", "sim-2"]);
    let out = ok(nested(&kubeconfig, &["get", "nodes"]), "kubectl get nodes (nested)");
    assert!(out.contains("sim-0") && out.contains("Ready"), "{out}");
    // The host cluster's node is not the nested cluster's.
    assert!(!out.contains("node-1"), "{out}");

    // A Deployment rolls out on the simulated nodes.
    ok(
        nested(
            &kubeconfig,
            &["create", "deployment", "web", "--image=registry.invalid/web:1", "--replicas=3"],
        ),
        "create deployment (nested)",
    );
    ok(
        nested(&kubeconfig, &["rollout", "status", "deployment/web", "--timeout=120s"]),
        "rollout status (nested)",
    );
    let pods = nested_json(&kubeconfig, &["get", "pods", "-l", "app=web"]).expect("pods");
    let pods = pods["items"].as_array().expect("items");
    assert_eq!(pods.len(), 3);
    assert!(pods.iter().all(|p| p["status"]["phase"] == "Running"
        && p["spec"]["nodeName"].as_str().is_some_and(|n| n.starts_with("sim-"))));

    step("nested deployment rolled out");
    // The pool grows; the upgrade's Secret Job keeps the CA, so the kubeconfig still works.
    let ca_before = json(&c, &["get", "secret", &format!("{REL}-pki"), "-n", NS])["data"]["ca.crt"].clone();
    helm_ok(
        &c,
        &[
            "upgrade",
            REL,
            chart,
            "-n",
            NS,
            "--reuse-values",
            "--set",
            "controllers.replicas=3",
            "--wait",
            "--timeout",
            "5m",
        ],
    );
    let d = json(&c, &["get", "deployment", &format!("{REL}-controllers"), "-n", NS]);
    assert_eq!(d["status"]["readyReplicas"], 3, "{d}");
    assert_eq!(json(&c, &["get", "secret", &format!("{REL}-pki"), "-n", NS])["data"]["ca.crt"], ca_before);
    wait_for("three controller pool members in the nested cluster", Duration::from_secs(60), || {
        let leases = nested_json(&kubeconfig, &["get", "leases", "-n", "kube-system"])?;
        let members = leases["items"]
            .as_array()?
            .iter()
            .filter(|l| {
                l["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("capstan-controllers-member-"))
                    && l["spec"]["holderIdentity"].is_string()
            })
            .count();
        (members >= 3).then_some(())
    });
    step("upgraded to 3 controllers");
    // The bus is a 3-server JetStream cluster holding the event stream in 3 replicas.
    let nats_ip = |i: usize| -> String {
        json(&c, &["get", "pod", &format!("{REL}-nats-{i}"), "-n", NS])["status"]["podIP"]
            .as_str()
            .expect("a pod IP")
            .to_string()
    };
    let routes = wait_for("each NATS server routed to the two others", Duration::from_secs(30), || {
        let v: Value = serde_json::from_str(&http_get(&format!("{}:8222", nats_ip(0)), "/routez")?).ok()?;
        (v["num_routes"] == 2).then_some(v)
    });
    assert_eq!(routes["num_routes"], 2, "{routes}");
    let jsz = http_get(&format!("{}:8222", nats_ip(0)), "/jsz?streams=true").expect("/jsz");
    let jsz: Value = serde_json::from_str(&jsz).expect("/jsz JSON");
    let stream = jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .find(|s| s["name"] == "CAPSTAN_EVENTS")
        .unwrap_or_else(|| panic!("no event stream in {jsz}"));
    // A leader and two followers.
    assert!(stream["cluster"]["leader"].is_string(), "{stream}");
    assert_eq!(stream["cluster"]["replicas"].as_array().map(Vec::len), Some(2), "{stream}");

    // One NATS server killed: the roles reconnect to the others and work goes on.
    c.ok(&[
        "delete",
        "pod",
        &format!("{REL}-nats-0"),
        "-n",
        NS,
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    ok(nested(&kubeconfig, &["scale", "deployment", "web", "--replicas=5"]), "scale deployment (nested)");
    ok(
        nested(&kubeconfig, &["rollout", "status", "deployment/web", "--timeout=120s"]),
        "rollout status after the upgrade (nested)",
    );
    // The roles came back through the Service's name, never by a pod address the servers'
    // certificate does not name (the chart turns off NATS's client advertisement).
    for i in [1, 2] {
        let logs = c.ok(&["logs", "-n", NS, &format!("{REL}-nats-{i}")]);
        assert!(!logs.contains("bad certificate"), "a client dialled a pod address:\n{logs}");
    }

    step("NATS server killed, rollout done");
    // An upgrade that replaces the gateway (the embedded store: the old pod stops before the
    // new one opens the store): how long the API is away, seen from the host.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (stop, kubeconfig) = (stop.clone(), kubeconfig.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ok = nested(&kubeconfig, &["get", "--raw", "/readyz", "--request-timeout=2s"])
                    .status
                    .success();
                seen.push((std::time::Instant::now(), ok));
            }
            seen
        })
    };
    // A name the serving certificate does not carry yet: the upgrade adds it, which issues the
    // certificate again (the Secret Job) and replaces the gateway (it reads it at start).
    let as_new_name = ["--tls-server-name=capstan.example.test", "get", "--raw", "/readyz"];
    assert!(!nested(&kubeconfig, &as_new_name).status.success(), "the name is not in the certificate yet");
    let new_sans = format!("gateway.extraSANs={{{node_ip},capstan.example.test}}");
    helm_ok(
        &c,
        &["upgrade", REL, chart, "-n", NS, "--reuse-values", "--set", &new_sans, "--wait", "--timeout", "5m"],
    );
    wait_for("the API back after the upgrade", Duration::from_secs(60), || {
        nested(&kubeconfig, &["get", "--raw", "/readyz"]).status.success().then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = prober.join().expect("the prober");
    let (mut longest, mut down_since) = (Duration::ZERO, None);
    for (at, ok) in &seen {
        match (ok, down_since) {
            (false, None) => down_since = Some(*at),
            (true, Some(since)) => {
                longest = longest.max(at.duration_since(since));
                down_since = None;
            }
            _ => {}
        }
    }
    eprintln!("gateway replaced by an upgrade: API away for {longest:?} ({} probes)", seen.len());
    assert!(longest < Duration::from_secs(30), "the API was away for {longest:?}");
    ok(nested(&kubeconfig, &as_new_name), "kubectl get --raw /readyz as capstan.example.test");
    assert_eq!(ready_nodes(&kubeconfig).map(|n| n.len()), Some(3), "the nested cluster kept its state");

    step("gateway replaced");
    // helm test: kubectl get --raw /readyz from a pod, through the gateway's Service.
    let out = helm_ok(&c, &["test", REL, "-n", NS, "--timeout", "3m"]);
    assert!(out.contains("Phase:") && out.contains("Succeeded"), "{out}");

    // A Secret of the nested cluster (encrypted at rest with the key on the store's PVC).
    ok(
        nested(&kubeconfig, &["create", "secret", "generic", "kept", "--from-literal=k=v"]),
        "create secret (nested)",
    );

    step("helm test passed");
    // Uninstall: nothing is left but the claims.
    helm_ok(&c, &["uninstall", REL, "-n", NS, "--wait", "--timeout", "3m"]);
    let left = |kinds: &str| -> Vec<String> {
        json(&c, &["get", kinds, "-n", NS])["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or("?"),
                    o["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
            .collect()
    };
    wait_for("the release's objects gone", Duration::from_secs(90), || {
        let l = left("deployments,statefulsets,jobs,pods,services,secrets,serviceaccounts,roles,rolebindings,poddisruptionbudgets");
        let l: Vec<_> = l.into_iter().filter(|o| o != "ServiceAccount/default").collect();
        l.is_empty().then_some(())
    });
    let configmaps = left("configmaps");
    assert_eq!(configmaps, ["ConfigMap/kube-root-ca.crt"]);
    let mut claims = left("persistentvolumeclaims");
    claims.sort();
    assert_eq!(
        claims,
        [
            format!("PersistentVolumeClaim/{REL}-store"),
            format!("PersistentVolumeClaim/data-{REL}-nats-0"),
            format!("PersistentVolumeClaim/data-{REL}-nats-1"),
            format!("PersistentVolumeClaim/data-{REL}-nats-2"),
        ]
    );

    step("uninstalled");
    // Installed again with the same name, the kept claims give back the nested cluster's
    // state, Secrets included (a new CA: a new admin kubeconfig).
    let out = helm(&c, &install);
    assert!(
        out.status.success(),
        "helm install again: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        describe_namespace(&c)
    );
    let port = json(&c, &["get", "service", &format!("{REL}-gateway"), "-n", NS])["spec"]["ports"][0]
        ["nodePort"]
        .as_u64()
        .expect("a nodePort");
    let kubeconfig = nested_kubeconfig(&c, &format!("https://{node_ip}:{port}"));
    wait_for("the nested nodes Ready again", Duration::from_secs(90), || {
        ready_nodes(&kubeconfig).filter(|n| n.len() == 3)
    });
    step("installed again, nodes Ready");
    let kept = nested_json(&kubeconfig, &["get", "secret", "kept"]).expect("the Secret is back");
    assert_eq!(kept["data"]["k"], "dg==", "{kept}");
    let web = nested_json(&kubeconfig, &["get", "deployment", "web"]).expect("the Deployment is back");
    assert_eq!(web["spec"]["replicas"], 5, "{web}");
}
