//! The real node: `capstan up` with its node agent running pods on `runc`, images pulled
//! from a real `docker-registry` on loopback, the pod network from the CNI plugins, driven
//! by the real kubectl. Needs root, runc, containernetworking-plugins, docker-registry and
//! busybox-static (scripts/deps.sh installs them).

mod common;

use capstan_testkit::{push_busybox_image, Registry};
use common::{is_ready, try_pod, wait_for, wait_running, Cluster};
use serde_json::Value;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// A registry with the busybox test image; returns it and the image reference.
fn registry_with_image(auth: Option<(&str, &str)>) -> (Registry, String) {
    let reg = Registry::start(auth).expect("start docker-registry");
    let image = rt().block_on(push_busybox_image(&reg, "busybox", "1", auth)).expect("push the test image");
    (reg, image)
}

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

fn pod(c: &Cluster, name: &str) -> Value {
    json(c, &["get", "pod", name])
}

fn container_status(p: &Value, name: &str) -> Value {
    p["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

fn apply(c: &Cluster, name: &str, yaml: &str) {
    let f = c.file(name, yaml);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
}

/// A plain HTTP GET from the host; returns the body.
fn http_get(addr: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}

fn simple_pod(name: &str, image: &str, command: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", {command:?}]
{extra}"#
    )
}

#[test]
fn deployment_serves_http_and_streams_work() {
    let (_reg, image) = registry_with_image(None);
    let c = Cluster::start_node("");
    wait_for("node-1 Ready", Duration::from_secs(30), || {
        let n = c.kubectl(&["get", "node", "node-1", "-o", "json"]);
        let v: Value = serde_json::from_slice(&n.stdout).ok()?;
        v["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    });
    // nodes/proxy reaches the node agent over the bus, as logs and exec do.
    assert_eq!(c.ok(&["get", "--raw", "/api/v1/nodes/node-1/proxy/healthz"]), "ok");
    let metrics = c.ok(&["get", "--raw", "/api/v1/nodes/node-1/proxy/metrics"]);
    assert!(metrics.contains("# TYPE "), "{metrics}");
    let logs = c.ok(&["get", "--raw", "/api/v1/nodes/node-1/proxy/logs/"]);
    assert!(logs.contains("<pre>"), "{logs}");
    let err = c.fails(&["get", "--raw", "/api/v1/nodes/node-1/proxy/logs/../etc/passwd"]);
    assert!(err.contains("NotFound") || err.contains("not found"), "{err}");
    let err = c.fails(&["get", "--raw", "/api/v1/nodes/nope/proxy/healthz"]);
    assert!(err.contains("nodes \"nope\" not found"), "{err}");
    let deploy = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: httpd
        image: {image}
        command: ["httpd", "-f", "-v", "-p", "80", "-h", "/var/www"]
        ports: [{{containerPort: 80}}]
"#
    );
    apply(&c, "web.yaml", &deploy);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let pods = json(&c, &["get", "pods", "-l", "app=web"]);
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 2);
    // The node agent timed both starts (upstream's kubelet_pod_start_duration_seconds).
    let metrics = c.ok(&["get", "--raw", "/metrics"]);
    let starts = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kubelet_pod_start_duration_seconds_count "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(starts.is_some_and(|n| n >= 2), "pod starts in /metrics: {starts:?}");
    let mut ips = Vec::new();
    for p in &items {
        assert_eq!(p["status"]["phase"], "Running");
        let ip = p["status"]["podIP"].as_str().expect("pod IP").to_string();
        let body =
            wait_for(&format!("HTTP from {ip}"), Duration::from_secs(20), || http_get(&format!("{ip}:80")));
        assert_eq!(body, "capstan test page\n", "the page from {ip}");
        let cs = container_status(p, "httpd");
        assert!(cs["containerID"].as_str().unwrap_or("").starts_with("runc://"), "{cs}");
        assert!(cs["imageID"].as_str().unwrap_or("").contains("@sha256:"), "{cs}");
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1]);
    let name = items[0]["metadata"]["name"].as_str().unwrap().to_string();

    // logs: httpd -v logs each request to stderr ("<client>: response:200").
    let logs = wait_for("httpd request log", Duration::from_secs(10), || {
        let l = c.ok(&["logs", &name]);
        l.contains("response:200").then_some(l)
    });
    assert!(logs.lines().all(|l| l.ends_with("response:200")), "{logs}");

    // exec: the pod name and the exit code.
    let out = c.kubectl(&["exec", &name, "--", "sh", "-c", "echo $HOSTNAME; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), name);
    // exec -i: stdin reaches the process.
    let out = c.kubectl_with(&["exec", "-i", &name, "--", "cat"], &[], Some("hello through stdin\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello through stdin\n");

    // port-forward, then a GET on the local port returns the page.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut pf = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["port-forward", &format!("pod/{name}"), &format!("{port}:80")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl port-forward");
    let body = wait_for("a page through port-forward", Duration::from_secs(20), || {
        http_get(&format!("127.0.0.1:{port}"))
    });
    assert_eq!(body, "capstan test page\n");
    let _ = pf.kill();
    let _ = pf.wait();

    // Deleting the deployment stops every pod and frees its network.
    c.ok(&["delete", "deployment", "web"]);
    wait_for("pods gone", Duration::from_secs(60), || {
        json(&c, &["get", "pods", "-l", "app=web"])["items"]
            .as_array()
            .is_some_and(|a| a.is_empty())
            .then_some(())
    });
    for ip in ips {
        assert!(
            http_get(&format!("{ip}:80")).is_none_or(|b| b != "capstan test page\n"),
            "{ip} still serves"
        );
    }
}

#[test]
fn logs_follow_previous_and_restarts() {
    let (_reg, image) = registry_with_image(None);
    let c = Cluster::start_node("crashLoopBackoffSeconds: 1");
    // Prints a numbered line each start, then fails: restarted with a growing back-off.
    let yaml =
        simple_pod("crash", &image, "echo start-$(date +%s%N); sleep 0.2; echo to-stderr >&2; exit 1", "");
    apply(&c, "crash.yaml", &yaml);
    let mut seen: Vec<(u64, Instant)> = Vec::new();
    wait_for("4 restarts", Duration::from_secs(60), || {
        let p = try_pod(&c, "crash")?;
        let n = container_status(&p, "main")["restartCount"].as_u64().unwrap_or(0);
        if seen.last().is_none_or(|(m, _)| *m != n) {
            seen.push((n, Instant::now()));
        }
        (n >= 4).then_some(())
    });
    // Gaps between restarts grow (back-off 1 s, 2 s, 4 s after the first): from the first
    // restart seen to the fourth at least 1 + 2 + 4 s pass, less how late the first was
    // seen. A loaded machine only stretches gaps, so this lower bound cannot fail because
    // of load; with a back-off that does not grow it would be ≈ 3.6 s.
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(gaps.len() >= 3, "{seen:?}");
    let first = seen.iter().find(|(n, _)| *n >= 1).map(|(_, t)| *t);
    let fourth = seen.iter().find(|(n, _)| *n >= 4).map(|(_, t)| *t);
    let span = fourth.zip(first).map(|(b, a)| b - a).unwrap_or_default();
    assert!(span >= Duration::from_secs(5), "back-off did not grow: {gaps:?}");
    let p = pod(&c, "crash");
    let cs = container_status(&p, "main");
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1, "{cs}");
    assert_eq!(cs["lastState"]["terminated"]["reason"], "Error", "{cs}");
    let describe = c.ok(&["describe", "pod", "crash"]);
    assert!(describe.contains("Restart Count:"), "{describe}");
    let prev = c.ok(&["logs", "crash", "--previous"]);
    assert!(prev.starts_with("start-") && prev.contains("to-stderr"), "{prev}");

    // logs -f follows a running container until it ends.
    let yaml = simple_pod(
        "counter",
        &image,
        "for i in 1 2 3 4 5; do echo line-$i; sleep 0.3; done",
        "  restartPolicy: Never\n",
    );
    apply(&c, "counter.yaml", &yaml);
    wait_for("counter started", Duration::from_secs(30), || {
        try_pod(&c, "counter").filter(|p| p["status"]["phase"] != "Pending").map(|_| ())
    });
    let out = c.ok(&["logs", "-f", "counter"]);
    assert_eq!(out, "line-1\nline-2\nline-3\nline-4\nline-5\n");
    let p = wait_for("counter Succeeded", Duration::from_secs(30), || {
        try_pod(&c, "counter").filter(|p| p["status"]["phase"] == "Succeeded")
    });
    assert_eq!(container_status(&p, "main")["state"]["terminated"]["reason"], "Completed");
    // A finished pod keeps its reported IP but gives its network back.
    assert!(p["status"]["podIP"].is_string(), "{p}");
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    wait_for("the finished pod's netns released", Duration::from_secs(10), || {
        let left = std::fs::read_dir("/run/netns")
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().contains(&uid)));
        (!left.unwrap_or(false)).then_some(())
    });
    assert_eq!(c.ok(&["logs", "counter", "--tail=2"]), "line-4\nline-5\n");
    let ts = c.ok(&["logs", "counter", "--timestamps", "--tail=1"]);
    assert!(ts.ends_with("Z line-5\n") && ts.starts_with("20"), "{ts}");
}

#[test]
fn probes_oom_and_init_containers() {
    let (_reg, image) = registry_with_image(None);
    let c = Cluster::start_node("crashLoopBackoffSeconds: 1");
    // Liveness: healthy while /tmp/healthy exists; it is removed after 2 s.
    let live = simple_pod(
        "live",
        &image,
        "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 1000",
        r#"    livenessProbe:
      exec: {command: ["test", "-f", "/tmp/healthy"]}
      periodSeconds: 1
      failureThreshold: 2
"#,
    );
    apply(&c, "live.yaml", &live);
    // Readiness: an HTTP probe that succeeds only once the page exists (after 3 s); its
    // port is named, as the chart `helm create` writes (`port: http`).
    let ready = simple_pod(
        "ready",
        &image,
        "mkdir -p /tmp/www; httpd -p 8080 -h /tmp/www; sleep 3; echo ok > /tmp/www/ready; sleep 1000",
        r#"    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /ready, port: http}
      periodSeconds: 1
"#,
    );
    apply(&c, "ready.yaml", &ready);
    // Memory limit: allocating 64 MiB under a 16 MiB limit.
    let oom = simple_pod(
        "oom",
        &image,
        "dd if=/dev/zero of=/dev/null bs=64M count=1",
        "    resources:\n      limits: {memory: 16Mi}\n  restartPolicy: Never\n",
    );
    apply(&c, "oom.yaml", &oom);
    // An init container writes what the main container reads.
    let init = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: init
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{{name: shared, emptyDir: {{}}}}]
  initContainers:
  - name: setup
    image: {image}
    command: ["sh", "-c", "echo from-init > /shared/msg"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "cat /shared/msg; sleep 1000"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
"#
    );
    apply(&c, "init.yaml", &init);

    let p = wait_for("oom OOMKilled", Duration::from_secs(60), || {
        try_pod(&c, "oom").filter(|p| p["status"]["phase"] == "Failed")
    });
    let term = &container_status(&p, "main")["state"]["terminated"];
    assert_eq!(term["reason"], "OOMKilled", "{term}");
    assert_eq!(term["exitCode"], 137, "{term}");

    // Not ready at first, ready once the page exists.
    let p = wait_for("ready Running", Duration::from_secs(30), || {
        try_pod(&c, "ready").filter(|p| p["status"]["phase"] == "Running")
    });
    // The page appears 3 s after the start: the first Running status is not Ready.
    assert!(!is_ready(&p), "Ready before its readiness probe passed: {p}");
    assert_eq!(container_status(&p, "main")["ready"], false);
    wait_for("ready Ready", Duration::from_secs(30), || try_pod(&c, "ready").filter(is_ready));

    let p = wait_for("live restarted by its liveness probe", Duration::from_secs(60), || {
        try_pod(&c, "live").filter(|p| container_status(p, "main")["restartCount"].as_u64() >= Some(1))
    });
    assert!(!container_status(&p, "main")["lastState"]["terminated"].is_null(), "{p}");
    let events = c.ok(&["get", "events", "--field-selector", "involvedObject.name=live"]);
    assert!(events.contains("Unhealthy") && events.contains("Liveness probe failed"), "{events}");

    wait_running(&c, "init");
    let p = pod(&c, "init");
    let init_cs = &p["status"]["initContainerStatuses"][0];
    assert_eq!(init_cs["state"]["terminated"]["reason"], "Completed", "{init_cs}");
    assert_eq!(c.ok(&["logs", "init"]), "from-init\n");
    assert_eq!(c.ok(&["logs", "init", "-c", "setup"]), "");
}

#[test]
fn volumes_are_visible_inside() {
    let (_reg, image) = registry_with_image(None);
    let c = Cluster::start_node("");
    c.ok(&["create", "configmap", "cfg", "--from-literal=greeting=hello", "--from-literal=other=x"]);
    c.ok(&["create", "secret", "generic", "sec", "--from-literal=password=hunter2"]);
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: vols
  labels: {{app: vols, tier: test}}
  annotations: {{note: hi}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {{name: cfg, configMap: {{name: cfg, items: [{{key: greeting, path: sub/greeting.txt}}]}}}}
  - {{name: sec, secret: {{secretName: sec, defaultMode: 0400}}}}
  - {{name: scratch, emptyDir: {{}}}}
  - name: info
    downwardAPI:
      items:
      - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
      - {{path: name, fieldRef: {{fieldPath: metadata.name}}}}
      - {{path: namespace, fieldRef: {{fieldPath: metadata.namespace}}}}
      - {{path: annotations, fieldRef: {{fieldPath: metadata.annotations}}}}
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "echo scratch-ok > /scratch/f; sleep 1000"]
    env:
    - {{name: FROM_CM, valueFrom: {{configMapKeyRef: {{name: cfg, key: greeting}}}}}}
    volumeMounts:
    - {{name: cfg, mountPath: /etc/cfg}}
    - {{name: sec, mountPath: /etc/sec}}
    - {{name: scratch, mountPath: /scratch}}
    - {{name: info, mountPath: /etc/info}}
"#
    );
    apply(&c, "vols.yaml", &yaml);
    wait_running(&c, "vols");
    let exec = |cmd: &str| c.ok(&["exec", "vols", "--", "sh", "-c", cmd]);
    assert_eq!(exec("cat /etc/cfg/sub/greeting.txt"), "hello");
    assert_eq!(exec("ls /etc/cfg"), "sub\n", "only the listed key");
    assert_eq!(exec("cat /etc/sec/password"), "hunter2");
    // A link through ..data, as upstream: the file behind it has the mode.
    assert_eq!(exec("stat -L -c %a /etc/sec/password"), "400\n");
    assert_eq!(
        wait_for("emptyDir file", Duration::from_secs(10), || {
            let o = exec("cat /scratch/f 2>/dev/null");
            (!o.is_empty()).then_some(o)
        }),
        "scratch-ok\n"
    );
    assert_eq!(exec("cat /etc/info/labels"), "app=\"vols\"\ntier=\"test\"");
    assert_eq!(exec("cat /etc/info/name"), "vols");
    assert_eq!(exec("cat /etc/info/namespace"), "default");
    assert_eq!(
        exec("cat /etc/info/annotations").lines().find(|l| l.starts_with("note=")),
        Some("note=\"hi\"")
    );
    assert_eq!(exec("echo $FROM_CM"), "hello\n");
    let denied = c.kubectl(&["exec", "vols", "--", "sh", "-c", "echo x > /etc/cfg/new"]);
    assert!(!denied.status.success(), "configMap volumes are read-only");

    // hostNetwork: the container shares the host's network namespace.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let host = simple_pod(
        "hostnet",
        &image,
        &format!("httpd -f -p 127.0.0.1:{port} -h /var/www"),
        "  hostNetwork: true\n",
    );
    apply(&c, "hostnet.yaml", &host);
    let p = wait_running(&c, "hostnet");
    assert_eq!(p["status"]["podIP"], p["status"]["hostIP"], "{p}");
    let body = wait_for("the host-network pod's page", Duration::from_secs(20), || {
        http_get(&format!("127.0.0.1:{port}"))
    });
    assert_eq!(body, "capstan test page\n");
}

/// Everything of a pod on the host, by its uid.
fn host_traces(c: &Cluster, uid: &str) -> Vec<String> {
    let mut found = Vec::new();
    let netns = std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().contains(uid)));
    if netns.unwrap_or(false) {
        found.push("netns".into());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if mountinfo.contains(uid) {
        found.push("mounts".into());
    }
    let cg = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in cg.lines().filter(|l| l.contains(" - cgroup ")) {
        if let Some(mp) = line.split_whitespace().nth(4) {
            let out =
                Command::new("find").arg(mp).args(["-maxdepth", "3", "-name", &format!("*{uid}*")]).output();
            if out.is_ok_and(|o| !o.stdout.is_empty()) {
                found.push(format!("cgroup under {mp}"));
            }
        }
    }
    let ps = Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if ps.is_ok_and(|p| p.contains(uid)) {
        found.push("processes".into());
    }
    let net = c.path().join("node/network");
    let out = Command::new("grep").args(["-rl", uid]).arg(&net).output();
    if out.is_ok_and(|o| !o.stdout.is_empty()) {
        found.push("IP reservation".into());
    }
    found
}

#[test]
fn delete_cleans_up_and_restart_adopts() {
    let (_reg, image) = registry_with_image(None);
    let mut c = Cluster::start_node("");
    apply(&c, "keep.yaml", &simple_pod("keep", &image, "echo started; sleep 1000", ""));
    apply(&c, "gone.yaml", &simple_pod("gone", &image, "sleep 1000", ""));
    let keep = wait_running(&c, "keep");
    let gone = wait_running(&c, "gone");
    let gone_uid = gone["metadata"]["uid"].as_str().unwrap().to_string();
    assert!(!host_traces(&c, &gone_uid).is_empty(), "a running pod leaves traces");
    c.ok(&["delete", "pod", "gone"]);
    wait_for("gone's traces removed", Duration::from_secs(30), || {
        let t = host_traces(&c, &gone_uid);
        t.is_empty().then_some(()).or_else(|| {
            eprintln!("still there: {t:?}");
            None
        })
    });

    // kill -9 the whole `capstan up` (agent included) and start it again: the container
    // keeps running and is adopted, not started twice.
    let id_before = container_status(&keep, "main")["containerID"].clone();
    let uid = keep["metadata"]["uid"].as_str().unwrap().to_string();
    let runc_root = c.path().join("node/runc");
    let count = |uid: &str| {
        let out = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["list", "-q"])
            .output()
            .expect("runc list");
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(uid)).count()
    };
    assert_eq!(count(&uid), 1);
    c.kill9();
    assert_eq!(count(&uid), 1, "the container survives the agent");
    c.restart();
    let p = wait_for("keep reported again after the restart", Duration::from_secs(30), || {
        let p = try_pod(&c, "keep")?;
        (p["status"]["phase"] == "Running" && is_ready(&p)).then_some(p)
    });
    // Give the agent several supervision rounds to (wrongly) start a second one.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert_eq!(count(&uid), 1, "no duplicate container");
        std::thread::sleep(Duration::from_millis(200));
    }
    let cs = container_status(&p, "main");
    assert_eq!(cs["containerID"], id_before, "{cs}");
    assert_eq!(cs["restartCount"], 0, "{cs}");
    assert_eq!(c.ok(&["logs", "keep"]), "started\n");
}

#[test]
fn image_pull_secrets() {
    let (reg, image) = registry_with_image(Some(("alice", "s3cret")));
    let c = Cluster::start_node("");
    let server = reg.host();
    c.ok(&[
        "create",
        "secret",
        "docker-registry",
        "good",
        &format!("--docker-server={server}"),
        "--docker-username=alice",
        "--docker-password=s3cret",
    ]);
    c.ok(&[
        "create",
        "secret",
        "docker-registry",
        "bad",
        &format!("--docker-server={server}"),
        "--docker-username=alice",
        "--docker-password=wrong",
    ]);
    // Always: an image already pulled for another pod does not bypass the credentials.
    let with_secret = |name: &str, secret: &str| {
        simple_pod(
            name,
            &image,
            "sleep 1000",
            &format!("    imagePullPolicy: Always\n  imagePullSecrets: [{{name: {secret}}}]\n"),
        )
    };
    apply(&c, "good.yaml", &with_secret("good", "good"));
    apply(&c, "bad.yaml", &with_secret("bad", "bad"));
    wait_running(&c, "good");
    let mut reasons = Vec::new();
    let p = wait_for("bad in ImagePullBackOff", Duration::from_secs(60), || {
        let p = try_pod(&c, "bad")?;
        let w = container_status(&p, "main")["state"]["waiting"].clone();
        if let Some(r) = w["reason"].as_str() {
            if reasons.last().map(String::as_str) != Some(r) {
                reasons.push(r.to_string());
            }
        }
        (w["reason"] == "ImagePullBackOff").then_some(p)
    });
    // ErrImagePull comes first; it may pass between two polls of a loaded machine, but its
    // event stays.
    let events = c.ok(&["get", "events", "--field-selector", "involvedObject.name=bad", "-o", "json"]);
    let failed_pull = serde_json::from_str::<Value>(&events).ok().is_some_and(|e| {
        e["items"].as_array().into_iter().flatten().any(|e| {
            e["reason"] == "Failed"
                && e["message"].as_str().is_some_and(|m| m.to_lowercase().contains("unauthorized"))
        })
    });
    assert!(reasons.contains(&"ErrImagePull".to_string()) || failed_pull, "{reasons:?} {events}");
    let msg = container_status(&p, "main")["state"]["waiting"]["message"].as_str().unwrap_or("").to_string();
    assert!(msg.contains(&image) && msg.to_lowercase().contains("unauthorized"), "{msg}");
    let describe = c.ok(&["describe", "pod", "bad"]);
    assert!(describe.contains("ImagePullBackOff"), "{describe}");
}

fn node_ready_condition(c: &Cluster) -> Option<Value> {
    let out = c.kubectl(&["get", "node", "node-1", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready").cloned()
}

#[test]
fn a_node_without_runc_or_cni_says_what_to_install() {
    for (setting, package) in
        [("runc: /nonexistent/runc", "runc"), ("cniBinDir: /nonexistent/cni", "containernetworking-plugins")]
    {
        let c = Cluster::start_node(setting);
        let ready = wait_for("node-1 registered", Duration::from_secs(30), || node_ready_condition(&c));
        assert_eq!(ready["status"], "False", "{ready}");
        let msg = ready["message"].as_str().unwrap_or("");
        assert!(msg.contains(&format!("install the Debian package `{package}`")), "{msg}");
        // It stays NotReady: the scheduler places nothing there.
        c.ok(&["run", "p", "--image=busybox", "--restart=Never"]);
        let describe = wait_for("p FailedScheduling", Duration::from_secs(30), || {
            let d = c.ok(&["describe", "pod", "p"]);
            d.contains("FailedScheduling").then_some(d)
        });
        assert!(
            describe.contains("node(s) had untolerated taint") || describe.contains("not ready"),
            "{describe}"
        );
    }
}

/// Runs `kubectl <args>` on a terminal of its own (util-linux `script`; the terminal is 100
/// columns by 40 rows) with `input` typed into it; returns the exit status (`script -e`
/// passes kubectl's on; 124 if it took over 60 s) and everything the terminal showed.
fn kubectl_on_a_terminal(c: &Cluster, args: &str, input: &str) -> (Option<i32>, String) {
    let command = format!(
        "stty rows 40 cols 100; exec kubectl --kubeconfig {} --cache-dir {} {args}",
        c.kubeconfig.display(),
        c.path().join("kube-cache").display()
    );
    let mut child = Command::new("timeout")
        .args(["60", "script", "-qec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) is installed");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("typing");
    drop(stdin);
    let out = child.wait_with_output().expect("script runs");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), format!("{shown}{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn terminals_for_exec_and_containers() {
    let (_reg, image) = registry_with_image(None);
    let c = Cluster::start_node("");
    apply(&c, "shell.yaml", &simple_pod("shell", &image, "sleep 1000", ""));
    // A container on a terminal: its output is the log's stdout; attach types into it.
    let script = r#"tty; echo term=$TERM; while read x; do [ "$x" = q ] && exit 5; echo "got-$x"; done"#;
    let extra = "    stdin: true\n    tty: true\n  restartPolicy: Never\n";
    apply(&c, "tty.yaml", &simple_pod("tty", &image, script, extra));
    wait_running(&c, "shell");

    // `exec -it`: the process runs on a terminal of kubectl's size (kubectl sends it once the
    // session is up: the process waits for it, at most 10 s; busybox `stty size` prints
    // nothing for a 0x0 terminal) and its exit code comes back.
    let size_then_exit =
        "tty; i=0; until s=$(stty size 2>/dev/null) && [ -n \"$s\" ] && [ \"$s\" != \"0 0\" ]; \
                          do i=$((i+1)); [ $i -ge 100 ] && break; sleep 0.1; done; echo \"size=$s\"; exit 4";
    let (code, shown) = kubectl_on_a_terminal(&c, &format!("exec -it shell -- sh -c '{size_then_exit}'"), "");
    assert!(shown.contains("/dev/pts/"), "no terminal: {shown:?}");
    assert!(shown.contains("size=40 100"), "kubectl's terminal size did not arrive: {shown:?}");
    assert_eq!(code, Some(4), "{shown:?}");
    // Without -t there is no terminal, as before.
    let out = c.kubectl(&["exec", "shell", "--", "sh", "-c", "tty; true"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "not a tty\n");

    wait_running(&c, "tty");
    let logs = wait_for("the tty container's first lines", Duration::from_secs(20), || {
        let l = c.ok(&["logs", "tty"]);
        l.contains("term=xterm").then_some(l)
    });
    assert!(logs.starts_with("/dev/pts/0\r\nterm=xterm\r\n"), "{logs:?}");
    let (_, shown) = kubectl_on_a_terminal(&c, "attach -it tty", "hello\nq\n");
    assert!(shown.contains("got-hello"), "{shown:?}");
    let p = wait_for("tty Failed", Duration::from_secs(30), || {
        try_pod(&c, "tty").filter(|p| p["status"]["phase"] == "Failed")
    });
    assert_eq!(container_status(&p, "main")["state"]["terminated"]["exitCode"], 5, "{p}");
}

/// A pod with a native sidecar (an init container with `restartPolicy: Always`), lifecycle
/// hooks and a memory-backed emptyDir, as charts write them: the sidecar runs before the next
/// init container and through the pod's life, `postStart` runs at start, `preStop` before
/// SIGTERM, the sidecar is stopped after the main container and its logs stream; a Job
/// completes even though its sidecar never exits; a Deployment with a sidecar rolls out.
#[test]
fn sidecars_lifecycle_hooks_and_memory_volumes() {
    let (_reg, image) = registry_with_image(None);
    let c = Cluster::start_node("");
    let log_dir = c.dir.path().join("hooklog");
    let log_dir = log_dir.to_str().unwrap();
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: app
spec:
  terminationGracePeriodSeconds: 10
  volumes:
  - {{name: shared, emptyDir: {{medium: Memory, sizeLimit: 16Mi}}}}
  - {{name: host, hostPath: {{path: {log_dir}, type: DirectoryOrCreate}}}}
  initContainers:
  - name: sidecar
    image: {image}
    restartPolicy: Always
    command: ["sh", "-c", "echo sidecar-up > /shared/sidecar; echo sidecar-log-line; trap 'echo sidecar-stopped >> /host/log; exit 0' TERM; while true; do sleep 0.2; done"]
    startupProbe:
      exec: {{command: ["test", "-f", "/shared/sidecar"]}}
      periodSeconds: 1
    volumeMounts: [{{name: shared, mountPath: /shared}}, {{name: host, mountPath: /host}}]
  - name: setup
    image: {image}
    command: ["sh", "-c", "cat /shared/sidecar > /shared/seen-by-init"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "trap 'echo main-term >> /host/log; exit 0' TERM; while true; do sleep 0.2; done"]
    lifecycle:
      postStart:
        exec: {{command: ["sh", "-c", "echo poststart > /shared/poststart"]}}
      preStop:
        exec: {{command: ["sh", "-c", "echo prestop >> /host/log"]}}
    volumeMounts: [{{name: shared, mountPath: /shared}}, {{name: host, mountPath: /host}}]
---
apiVersion: batch/v1
kind: Job
metadata:
  name: job
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 2
      initContainers:
      - name: proxy
        image: {image}
        restartPolicy: Always
        command: ["sleep", "1000"]
      containers:
      - name: main
        image: {image}
        command: ["sh", "-c", "echo done"]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: meshed
spec:
  replicas: 1
  selector: {{matchLabels: {{app: meshed}}}}
  template:
    metadata: {{labels: {{app: meshed}}}}
    spec:
      terminationGracePeriodSeconds: 2
      initContainers:
      - name: proxy
        image: {image}
        restartPolicy: Always
        command: ["sh", "-c", "touch /tmp/ready; while true; do sleep 0.2; done"]
        readinessProbe:
          exec: {{command: ["test", "-f", "/tmp/ready"]}}
          periodSeconds: 1
      containers:
      - name: main
        image: {image}
        command: ["sh", "-c", "while true; do sleep 0.2; done"]
"#
    );
    apply(&c, "app.yaml", &yaml);
    let p = wait_running(&c, "app");
    let side = p["status"]["initContainerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "sidecar").cloned())
        .unwrap_or_default();
    assert!(side["state"]["running"].is_object(), "the sidecar runs on: {side}");
    assert_eq!(side["started"], true, "{side}");
    let exec = |cmd: &str| c.ok(&["exec", "app", "-c", "main", "--", "sh", "-c", cmd]);
    assert_eq!(
        exec("cat /shared/seen-by-init"),
        "sidecar-up\n",
        "the sidecar ran before the next init container"
    );
    assert_eq!(exec("cat /shared/poststart"), "poststart\n");
    let mounts = exec("cat /proc/mounts");
    let shared = mounts.lines().find(|l| l.split(' ').nth(1) == Some("/shared")).unwrap_or_default();
    assert!(shared.starts_with("tmpfs /shared tmpfs") && shared.contains("size=16384k"), "{mounts}");
    let sa = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/var/run/secrets/kubernetes.io/serviceaccount"))
        .unwrap_or_default();
    assert!(sa.starts_with("tmpfs "), "the token volume is memory-backed: {mounts}");

    let logs = c.ok(&["logs", "app", "-c", "sidecar"]);
    assert_eq!(logs, "sidecar-log-line\n", "the sidecar's logs");

    c.ok(&["wait", "--for=condition=complete", "job/job", "--timeout=60s"]);
    let pods = c.ok(&["get", "pods", "-l", "job-name=job", "-o", "json"]);
    let pods: serde_json::Value = serde_json::from_str(&pods).expect("pods JSON");
    let job = &pods["items"][0];
    assert_eq!(job["status"]["phase"], "Succeeded", "{job}");
    let proxy = &job["status"]["initContainerStatuses"][0];
    assert!(proxy["state"]["terminated"].is_object(), "its sidecar was stopped: {proxy}");
    let out = c.ok(&["rollout", "status", "deployment/meshed", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");

    c.ok(&["delete", "pod", "app", "--wait=true", "--timeout=60s"]);
    let log = std::fs::read_to_string(std::path::Path::new(log_dir).join("log")).unwrap_or_default();
    assert_eq!(log, "prestop\nmain-term\nsidecar-stopped\n", "preStop, then SIGTERM, then the sidecar");
    let left = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    assert!(
        !left.contains(&p["metadata"]["uid"].as_str().unwrap().to_string()),
        "the pod's tmpfs is unmounted"
    );
}

/// Files under `root` (recursively) whose path contains `part`.
fn files_under(root: &std::path::Path, part: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(p);
            } else if p.to_string_lossy().contains(part) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn container_logs_rotate_by_size_and_follow_across_rotations() {
    const LINES: u32 = 200_000; // 100 bytes each: 20 MB of output
    let (_reg, image) = registry_with_image(None);
    let c = Cluster::start_node("containerLogMaxSize: 2Mi\ncontainerLogMaxFiles: 5");
    // Waits for /tmp/go, then prints 20 MB in 20 bursts of 1 MB, then a last line.
    let burst = format!(
        "echo ready; while [ ! -e /tmp/go ]; do sleep 0.1; done; \
         for j in $(seq 0 19); do awk -v j=$j 'BEGIN {{ for (i = 1; i <= {per}; i++) \
         printf \"line-%07d-%s\\n\", j * {per} + i, \"{pad}\" }}'; sleep 0.25; done; echo last-line",
        per = LINES / 20,
        pad = "x".repeat(100 - 14 - 1),
    );
    apply(&c, "rot.yaml", &simple_pod("rot", &image, &burst, "  restartPolicy: Never\n"));
    wait_running(&c, "rot");
    // A follower started before the burst.
    let mut follower = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["logs", "-f", "rot"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line == "ready" {
                let _ = tx.send(line.clone());
            }
            lines.push(line);
        }
        lines
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("the follower sees the first line");
    c.ok(&["exec", "rot", "--", "touch", "/tmp/go"]);
    let p = wait_for("rot Succeeded", Duration::from_secs(180), || {
        try_pod(&c, "rot").filter(|p| p["status"]["phase"] == "Succeeded")
    });
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    wait_for("the follower ends", Duration::from_secs(60), || reader.is_finished().then_some(()));
    let lines = reader.join().expect("reader");
    let _ = follower.wait();
    // Every line exactly once, in order.
    assert_eq!(lines.first().map(String::as_str), Some("ready"));
    assert_eq!(lines.last().map(String::as_str), Some("last-line"), "{} lines", lines.len());
    assert_eq!(lines.len() as u32, LINES + 2, "lost or repeated lines");
    for (i, l) in lines[1..=LINES as usize].iter().enumerate() {
        assert!(l.starts_with(&format!("line-{:07}-", i + 1)), "line {i}: {l}");
    }
    // On disk: at most 5 files, the current one under 2Mi, older rotated ones compressed.
    let files = files_under(c.dir.path(), &format!("_rot_{uid}/main/0.log"));
    assert!((2..=5).contains(&files.len()), "{files:?}");
    let current = files.iter().find(|f| f.ends_with("0.log")).expect("the current log");
    assert!(std::fs::metadata(current).unwrap().len() <= 2 << 20);
    let gz = files.iter().filter(|f| f.to_string_lossy().ends_with(".gz")).count();
    assert!(gz >= 1 && gz == files.len() - 2, "all rotated files but the newest compressed: {files:?}");
    // kubectl logs reads the current file.
    assert_eq!(c.ok(&["logs", "rot", "--tail=1"]), "last-line\n");
    let tail2 = c.ok(&["logs", "rot", "--tail=2"]);
    assert!(tail2.starts_with(&format!("line-{LINES:07}-")), "{tail2}");
}

#[test]
fn grpc_probes() {
    let (_reg, image) = registry_with_image(None);
    let c = Cluster::start_node("");
    // The health server runs in the test on the host; a hostNetwork pod's IP is the host's.
    let health = capstan_testkit::GrpcHealth::start("0.0.0.0:0").expect("grpc health server");
    let port = health.addr().port();
    health.set("live", capstan_testkit::SERVING);
    let probes = format!(
        "    readinessProbe:\n      grpc: {{port: {port}}}\n      periodSeconds: 1\n      failureThreshold: 1\n\
         \x20   livenessProbe:\n      grpc: {{port: {port}, service: live}}\n      periodSeconds: 1\n      failureThreshold: 2\n\
         \x20 hostNetwork: true\n"
    );
    apply(&c, "grpc.yaml", &simple_pod("grpc", &image, "sleep 3600", &probes));
    wait_for("grpc Ready", Duration::from_secs(60), || try_pod(&c, "grpc").filter(is_ready));
    assert!(health.checks() >= 2, "{}", health.checks());
    // Readiness follows the overall status.
    health.set("", capstan_testkit::NOT_SERVING);
    wait_for("grpc not Ready", Duration::from_secs(30), || try_pod(&c, "grpc").filter(|p| !is_ready(p)));
    let events = c.ok(&["get", "events", "--field-selector", "involvedObject.name=grpc"]);
    assert!(events.contains("service unhealthy (responded with \"NOT_SERVING\")"), "{events}");
    health.set("", capstan_testkit::SERVING);
    wait_for("grpc Ready again", Duration::from_secs(30), || try_pod(&c, "grpc").filter(is_ready));
    // Liveness on its named service: the container is restarted.
    health.set("live", capstan_testkit::NOT_SERVING);
    wait_for("a restart", Duration::from_secs(60), || {
        let p = try_pod(&c, "grpc")?;
        (container_status(&p, "main")["restartCount"].as_u64() >= Some(1)).then_some(())
    });
    let describe = c.ok(&["describe", "pod", "grpc"]);
    assert!(describe.contains("failed liveness probe, will be restarted"), "{describe}");
}

#[test]
fn unused_images_are_garbage_collected_over_the_threshold() {
    let (reg, image) = registry_with_image(None);
    let web = rt().block_on(capstan_testkit::push_web_image(&reg, "web", "1")).expect("push the web image");
    // Any usage crosses 1 %: every image no pod uses is removed at the next check.
    let c = Cluster::start_node(
        "imageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0\nimageMinimumGCAgeSeconds: 0\nimageGCPeriodSeconds: 1",
    );
    apply(&c, "keep.yaml", &simple_pod("keep", &image, "sleep 3600", ""));
    apply(&c, "web.yaml", &simple_pod("web", &web, "sleep 3600", ""));
    wait_running(&c, "keep");
    wait_running(&c, "web");
    let index = || -> String {
        files_under(c.dir.path(), "images.json")
            .iter()
            .find(|f| f.ends_with("images/images.json"))
            .and_then(|f| std::fs::read_to_string(f).ok())
            .unwrap_or_default()
    };
    let both = index();
    assert!(both.contains("/busybox:1") && both.contains("/web:1"), "{both}");
    c.ok(&["delete", "pod", "web", "--wait=true"]);
    let after = wait_for("the unused image removed", Duration::from_secs(30), || {
        let i = index();
        (!i.contains("/web:1")).then_some(i)
    });
    assert!(after.contains("/busybox:1"), "the image in use stays: {after}");
    let events = wait_for("a FreedDiskSpace event", Duration::from_secs(20), || {
        let e = c.ok(&["get", "events", "-A", "--field-selector", "reason=FreedDiskSpace"]);
        e.contains("/web:1").then_some(e)
    });
    assert!(events.contains("Node") || events.contains("node/"), "{events}");
    // The pod using the kept image still runs, and a new pod of the removed one pulls it again.
    assert_eq!(pod(&c, "keep")["status"]["phase"], "Running");
    apply(&c, "web2.yaml", &simple_pod("web2", &web, "sleep 3600", ""));
    wait_running(&c, "web2");
}

#[test]
fn memory_pressure_evicts_best_effort_pods_first() {
    let (_reg, image) = registry_with_image(None);
    // Any node is below a threshold of all its memory: pressure from the first check on.
    let c = Cluster::start_node(
        "evictionHard:\n  memory.available: \"100%\"\nevictionMonitoringPeriodSeconds: 3",
    );
    let guaranteed = simple_pod(
        "guaranteed",
        &image,
        "sleep 3600",
        "    resources:\n      limits: {cpu: 100m, memory: 64Mi}\n",
    );
    let best_effort = simple_pod("best-effort", &image, "sleep 3600", "");
    // Both in one apply: both are the node's pods when the eviction manager first ranks them.
    apply(&c, "pods.yaml", &format!("{guaranteed}\n---\n{best_effort}"));
    let condition = wait_for("MemoryPressure=True", Duration::from_secs(30), || {
        let n = json(&c, &["get", "node", "node-1"]);
        n["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "MemoryPressure" && c["status"] == "True")
            .cloned()
    });
    assert_eq!(condition["reason"], "KubeletHasInsufficientMemory", "{condition}");
    // The node lifecycle controller taints it (TaintNodesByCondition): new pods stay away.
    wait_for("the memory-pressure taint", Duration::from_secs(30), || {
        let n = json(&c, &["get", "node", "node-1"]);
        n["spec"]["taints"]
            .as_array()?
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/memory-pressure" && t["effect"] == "NoSchedule")
            .then_some(())
    });
    let evicted = |name: &str| {
        wait_for(&format!("{name} evicted"), Duration::from_secs(60), || {
            try_pod(&c, name).filter(|p| p["status"]["phase"] == "Failed")
        })
    };
    let be = evicted("best-effort");
    assert_eq!(be["status"]["reason"], "Evicted", "{be}");
    let message = be["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("The node was low on resource: memory. Threshold quantity: 100%"),
        "{message}"
    );
    let g = evicted("guaranteed");
    assert_eq!(g["status"]["reason"], "Evicted", "{g}");
    // BestEffort went first: its Evicted event is older (one eviction per 3 s period).
    let when = |name: &str| {
        let events = json(
            &c,
            &["get", "events", "--field-selector", &format!("involvedObject.name={name},reason=Evicted")],
        );
        events["items"][0]["firstTimestamp"].as_str().map(str::to_string).expect("an Evicted event")
    };
    let (be_at, g_at) = (when("best-effort"), when("guaranteed"));
    assert!(be_at < g_at, "best-effort evicted at {be_at}, guaranteed at {g_at}");
    // As upstream, an evicted pod's containers report how they ended, so kubectl's STATUS
    // shows the container's reason (`Error`), and the pod's reason stays `Evicted`.
    let be = json(&c, &["get", "pod", "best-effort"]);
    assert_eq!(be["status"]["reason"], "Evicted", "{be}");
    assert!(be["status"]["containerStatuses"][0]["state"]["terminated"].is_object(), "{be}");
}

#[test]
fn soft_pid_pressure_evicts_after_its_grace_period_with_a_grace_period() {
    let (_reg, image) = registry_with_image(None);
    // Every node has fewer pids available than all of them: PID pressure from the first
    // check on, as a soft threshold with a 15 s grace period (time for the pod to start);
    // evicted pods get up to 20 s to stop.
    let c = Cluster::start_node(
        "evictionHard: {memory.available: \"\"}\nevictionSoft: {pid.available: \"100%\"}\n\
         evictionSoftGracePeriod: {pid.available: 15s}\nevictionMaxPodGracePeriod: 20\n\
         evictionMonitoringPeriodSeconds: 1",
    );
    // It traps SIGTERM and exits 0: a graceful stop ends with 0, a kill with 137. (It
    // tolerates the pid-pressure taint the node lifecycle controller puts on the node.)
    let toleration =
        "  tolerations:\n  - {key: node.kubernetes.io/pid-pressure, operator: Exists, effect: NoSchedule}\n";
    let graceful =
        simple_pod("graceful", &image, "trap 'exit 0' TERM; while :; do sleep 1; done", toleration);
    apply(&c, "graceful.yaml", &graceful);
    wait_running(&c, "graceful");
    let condition = wait_for("PIDPressure=True", Duration::from_secs(30), || {
        let n = json(&c, &["get", "node", "node-1"]);
        n["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PIDPressure" && c["status"] == "True")
            .cloned()
    });
    assert_eq!(condition["reason"], "KubeletHasInsufficientPID", "{condition}");
    assert_eq!(condition["message"], "kubelet has insufficient PID available", "{condition}");
    let p = wait_for("graceful evicted", Duration::from_secs(60), || {
        try_pod(&c, "graceful").filter(|p| p["status"]["phase"] == "Failed")
    });
    assert_eq!(p["status"]["reason"], "Evicted", "{p}");
    let message = p["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("The node was low on resource: pids. Threshold quantity: 100%, available: "),
        "{message}"
    );
    let exit = &p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"];
    assert_eq!(exit, 0, "stopped with SIGTERM and its grace period, not killed: {p}");
    // Not before the soft threshold had been crossed for its grace period.
    let events =
        json(&c, &["get", "events", "--field-selector", "involvedObject.name=graceful,reason=Evicted"]);
    let evicted_at = events["items"][0]["firstTimestamp"].as_str().expect("an Evicted event").to_string();
    let since = condition["lastTransitionTime"].as_str().unwrap().to_string();
    // RFC 3339 in whole seconds (`2026-12-03T20:25:13Z`): seconds of the day, a day later
    // when the date moved on.
    let secs = |t: &str| -> i64 {
        let hms: Vec<i64> = t[11..19].split(':').map(|x| x.parse().expect("a time")).collect();
        hms[0] * 3600 + hms[1] * 60 + hms[2]
    };
    let day = if evicted_at[..10] == since[..10] { 0 } else { 86_400 };
    assert!(secs(&evicted_at) + day - secs(&since) >= 14, "pressure since {since}, evicted at {evicted_at}");
}
