//! Helm 4 (fetched by `scripts/deps.sh test`) with the chart `helm create` writes, on
//! `capstan up`'s real node: install (the Deployment becomes Ready through its probes on the
//! named port `http`, the Service answers), `helm test` (the chart's own test pod, `busybox`
//! from docker.io through a mirror on the test registry, fetches the Service by name),
//! upgrade, rollback, uninstall, and the name reused after the uninstall.

mod common;

use capstan_testkit::{push_busybox_image, push_web_image, Registry, INDEX_HTML};
use common::{client, wait_for, Cluster};
use serde_json::Value;
use std::io::{Read, Write};
use std::process::{Command, Output};
use std::time::Duration;

fn helm(c: &Cluster, args: &[&str]) -> Output {
    let home = c.dir.path().join("helm-home");
    Command::new(client("helm"))
        .args(args)
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("helm runs")
}

fn helm_ok(c: &Cluster, args: &[&str]) -> String {
    let out = helm(c, args);
    assert!(
        out.status.success(),
        "helm {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

/// The page the Service's ClusterIP serves, fetched from the host (the node's proxy).
fn fetch(ip: &str) -> Option<String> {
    let addr = format!("{ip}:80").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: demo\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.lines().next()?.contains(" 200 ").then(|| body.to_string())
}

fn releases(c: &Cluster) -> usize {
    json(c, &["get", "secrets", "-l", "owner=helm,name=demo"])["items"].as_array().map_or(0, Vec::len)
}

#[test]
fn the_chart_helm_create_writes_installs_upgrades_rolls_back_and_uninstalls() {
    let reg = Registry::start(None).expect("start docker-registry");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let image = rt.block_on(push_web_image(&reg, "web", "1")).expect("push the web image");
    let repository = image.trim_end_matches(":1").to_string();
    // The chart's test pod runs `busybox` (docker.io/library/busybox:latest): the node pulls
    // it from the test registry as docker.io's mirror.
    rt.block_on(push_busybox_image(&reg, "library/busybox", "latest", None)).expect("push busybox");
    let c = Cluster::start_node(&format!(
        "registries:\n  mirrors: [{{registry: docker.io, endpoint: \"{}\"}}]",
        reg.host()
    ));
    let chart = c.dir.path().join("demo");
    let out = Command::new(client("helm")).arg("create").arg(&chart).output().expect("helm create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let chart = chart.to_str().unwrap();
    let set_image = [format!("image.repository={repository}"), "image.tag=1".to_string()];

    let install = |c: &Cluster| {
        helm_ok(
            c,
            &[
                "install",
                "demo",
                chart,
                "--set",
                &set_image[0],
                "--set",
                &set_image[1],
                "--wait",
                "--timeout",
                "3m",
            ],
        )
    };
    let out = install(&c);
    assert!(out.contains("STATUS: deployed"), "{out}");
    let d = json(&c, &["get", "deployment", "demo"]);
    assert_eq!(d["status"]["readyReplicas"], 1, "{d}");
    // The probes name their port (`port: http`): the pod is Ready only if they pass.
    let pod = &json(&c, &["get", "pods", "-l", "app.kubernetes.io/instance=demo"])["items"][0];
    let ready = pod["status"]["conditions"].as_array().into_iter().flatten().find(|x| x["type"] == "Ready");
    assert_eq!(ready.map(|r| r["status"].clone()), Some(Value::from("True")), "{pod}");
    assert_eq!(pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"], "http");
    let ip = json(&c, &["get", "service", "demo"])["spec"]["clusterIP"].as_str().unwrap().to_string();
    let page = wait_for("the Service answers from the host", Duration::from_secs(20), || fetch(&ip));
    assert_eq!(page, INDEX_HTML);

    // `helm test`: the chart's test-connection pod `wget`s `demo:80` (cluster DNS, the
    // Service's routing from a pod) and must succeed.
    let out = helm_ok(&c, &["test", "demo", "--timeout", "2m"]);
    assert!(out.contains("TEST SUITE:") && out.contains("Phase:          Succeeded"), "{out}");
    let t = json(&c, &["get", "pod", "demo-test-connection"]);
    assert_eq!(t["status"]["phase"], "Succeeded", "{t}");

    helm_ok(
        &c,
        &["upgrade", "demo", chart, "--reuse-values", "--set", "replicaCount=2", "--wait", "--timeout", "3m"],
    );
    assert_eq!(json(&c, &["get", "deployment", "demo"])["status"]["readyReplicas"], 2);
    helm_ok(&c, &["rollback", "demo", "1", "--wait", "--timeout", "3m"]);
    wait_for("one replica after the rollback", Duration::from_secs(60), || {
        let d = json(&c, &["get", "deployment", "demo"]);
        (d["spec"]["replicas"] == 1 && d["status"]["replicas"] == 1).then_some(())
    });
    let list = helm_ok(&c, &["list", "-o", "json"]);
    let list: Value = serde_json::from_str(&list).expect("helm list JSON");
    assert_eq!(list[0]["revision"], "3", "{list}");
    assert_eq!(releases(&c), 3);

    let out = helm_ok(&c, &["uninstall", "demo", "--wait", "--timeout", "2m"]);
    assert!(out.contains("uninstalled"), "{out}");
    assert!(!c.kubectl(&["get", "deployment", "demo"]).status.success());
    assert!(!c.kubectl(&["get", "service", "demo"]).status.success());
    assert_eq!(releases(&c), 0, "the release records are purged");

    // The name is free again.
    let out = install(&c);
    assert!(out.contains("STATUS: deployed"), "{out}");
    helm_ok(&c, &["uninstall", "demo", "--wait", "--timeout", "2m"]);
}
