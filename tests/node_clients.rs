//! Clients other than kubectl's everyday commands against the real node (`capstan up` with
//! runc pods, images from a real `docker-registry`): the official Python client's WebSocket
//! port-forward, `kubectl cp`, `kubectl debug` with ephemeral containers, and the proxy
//! subresources. Needs root, runc, the CNI plugins, docker-registry, busybox-static and
//! python3-kubernetes (scripts/deps.sh installs them).

mod common;

use capstan_testkit::{push_busybox_image, Registry, INDEX_HTML};
use common::{client, is_ready, try_pod, wait_for, wait_running, Cluster};
use serde_json::Value;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// A registry with the busybox test image, and a cluster with a Ready real node.
fn node_cluster() -> (Registry, String, Cluster) {
    let reg = Registry::start(None).expect("start docker-registry");
    let image = rt().block_on(push_busybox_image(&reg, "busybox", "1", None)).expect("push the test image");
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
    (reg, image, c)
}

fn apply(c: &Cluster, name: &str, yaml: &str) {
    let f = c.file(name, yaml);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
}

/// A pod `web` (label `app: web`) serving the test page with busybox httpd on port 80.
fn web_pod(c: &Cluster, image: &str) -> Value {
    apply(
        c,
        "web.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {{app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: {image}
    command: ["httpd", "-f", "-p", "80", "-h", "/var/www"]
    ports: [{{name: http, containerPort: 80}}]
"#
        ),
    );
    wait_running(c, "web")
}

/// Runs a Python script (with the kubeconfig as its argument) under a deadline; returns
/// its stdout, failing with both outputs when it fails.
fn python(c: &Cluster, script: &str) -> String {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(&c.kubeconfig)
        .env_remove("KUBECONFIG")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for python3") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(
        status.is_some_and(|s| s.success()),
        "python3 failed or timed out ({status:?}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    stdout
}

/// The Python client's `portforward()` speaks the plain WebSocket channel protocol
/// (`v4.channel.k8s.io`): a GET through it returns the pod's page, and a closed port's
/// error channel carries the node's connection error.
#[test]
fn python_client_port_forward_over_websocket() {
    let (_reg, image, c) = node_cluster();
    web_pod(&c, &image);
    let script = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import portforward

config.load_kube_config(sys.argv[1])
core = client.CoreV1Api()

def fetch(port, request):
    pf = portforward(core.connect_get_namespaced_pod_portforward, "web", "default", ports=str(port))
    sock = pf.socket(port)
    sock.setblocking(True)
    sock.settimeout(20)
    if request:
        sock.sendall(request)
    data = b""
    while True:
        d = sock.recv(65536)
        if not d:
            break
        data += d
    sock.close()
    return data, pf.error(port)

data, err = fetch(80, b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
head, _, body = data.partition(b"\r\n\r\n")
print("STATUS", head.split(b"\r\n")[0].decode())
print("BODY", repr(body.decode()))
print("ERROR80", repr(err))
# Nothing listens on 81: the connection ends, and its error channel says why.
data, err = fetch(81, None)
print("DATA81", repr(data))
print("ERROR81", err)
"#;
    let out = python(&c, script);
    let line = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .unwrap_or_else(|| panic!("no {k} line in {out}"))
            .to_string()
    };
    assert!(line("STATUS").starts_with("HTTP/1.") && line("STATUS").contains(" 200"), "{out}");
    assert_eq!(line("BODY"), format!("{INDEX_HTML:?}").replace('"', "'"), "{out}");
    assert_eq!(line("ERROR80"), "None", "{out}");
    assert_eq!(line("DATA81"), "b''", "{out}");
    let e81 = line("ERROR81");
    assert!(e81.contains("error forwarding port 81") && e81.contains("refused"), "{out}");
}

/// `kubectl cp` both ways (tar through exec, stdin closed by the v5 close signal): a file
/// and a directory into the pod, read back with exec; a file and a directory out of it,
/// compared with what was written.
#[test]
fn kubectl_cp_both_ways() {
    let (_reg, image, c) = node_cluster();
    web_pod(&c, &image);
    let local = c.path().join("cp-src");
    std::fs::create_dir_all(local.join("sub")).unwrap();
    let big: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(local.join("a.txt"), "hello from the host\n").unwrap();
    std::fs::write(local.join("sub/big.txt"), &big).unwrap();

    // Into the pod: one file, then a whole directory.
    let a = local.join("a.txt");
    c.ok(&["cp", a.to_str().unwrap(), "web:/tmp/a.txt"]);
    assert_eq!(c.ok(&["exec", "web", "--", "cat", "/tmp/a.txt"]), "hello from the host\n");
    c.ok(&["cp", local.to_str().unwrap(), "web:/tmp/dir"]);
    assert_eq!(c.ok(&["exec", "web", "--", "cat", "/tmp/dir/a.txt"]), "hello from the host\n");
    let sum = c.ok(&["exec", "web", "--", "wc", "-c", "/tmp/dir/sub/big.txt"]);
    assert_eq!(sum.split_whitespace().next(), Some(big.len().to_string().as_str()), "{sum}");

    // Out of the pod: a file written inside, and the directory copied in above.
    c.ok(&["exec", "web", "--", "sh", "-c", "echo made in the pod > /tmp/out.txt"]);
    let back = c.path().join("out.txt");
    c.ok(&["cp", "web:/tmp/out.txt", back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "made in the pod\n");
    let dir_back = c.path().join("dir-back");
    c.ok(&["cp", "web:/tmp/dir", dir_back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(dir_back.join("a.txt")).unwrap(), "hello from the host\n");
    assert_eq!(std::fs::read_to_string(dir_back.join("sub/big.txt")).unwrap(), big);
    // kubectl 1.35 too, both ways.
    let k135 = client("kubectl-1.35");
    let ok135 = |args: &[&str]| {
        let out = c.kubectl_as(&k135, args, &[], None);
        assert!(out.status.success(), "kubectl 1.35 {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ok135(&["cp", a.to_str().unwrap(), "web:/tmp/a135.txt"]);
    let back135 = c.path().join("a135.txt");
    ok135(&["cp", "web:/tmp/a135.txt", back135.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back135).unwrap(), "hello from the host\n");

    // A missing file. tar (busybox, like GNU tar) complains on stderr, exits 1 and still
    // writes an empty archive to stdout; kubectl cp ends as soon as it has read that archive,
    // racing the goroutine that prints tar's stderr and the exit status, so it may exit 0
    // silently (kubernetes/kubectl#980, both 1.32 and 1.35). What the server owes is exact
    // and checked through exec: the complaint on stderr and the exit code in the status.
    let o = c.kubectl(&["cp", "web:/tmp/nope", c.path().join("nope").to_str().unwrap()]);
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(
        said.is_empty() || said.contains("/tmp/nope: No such file or directory"),
        "kubectl cp of a missing file said something else: {said}"
    );
    let e = c.kubectl(&["exec", "web", "--", "tar", "cf", "-", "/tmp/nope"]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert_eq!(e.status.code(), Some(1), "{err}");
    assert!(err.contains("tar: /tmp/nope: No such file or directory"), "{err}");
    assert!(err.contains("command terminated with exit code 1"), "{err}");
    assert!(!c.path().join("nope").exists());
}

/// Runs `kubectl <args>` on a terminal of its own (util-linux `script`) with `input` typed
/// into it; returns everything the terminal showed.
fn kubectl_on_a_terminal(c: &Cluster, args: &str, input: &str) -> String {
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
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn ephemeral_status(p: &Value, name: &str) -> Value {
    p["status"]["ephemeralContainerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

/// `kubectl debug` adds ephemeral containers through `pods/ephemeralcontainers`; the node
/// starts each once in the pod. With `--target` it sees the target container's processes;
/// with `-it` kubectl attaches to it on a terminal. The pod stays Ready throughout.
#[test]
fn kubectl_debug_runs_ephemeral_containers() {
    let (_reg, image, c) = node_cluster();
    web_pod(&c, &image);

    // Non-interactive, sharing httpd's process namespace: `ps` lists httpd.
    c.ok(&["debug", "web", &format!("--image={image}"), "--target=httpd", "-c", "dbg1", "--", "ps"]);
    let p = wait_for("dbg1 terminated", Duration::from_secs(60), || {
        let p = try_pod(&c, "web")?;
        ephemeral_status(&p, "dbg1")["state"]["terminated"].is_object().then_some(p)
    });
    let st = ephemeral_status(&p, "dbg1");
    assert_eq!(st["state"]["terminated"]["exitCode"], 0, "{st}");
    assert!(st["containerID"].as_str().unwrap_or("").starts_with("runc://"), "{st}");
    let ps = c.ok(&["logs", "web", "-c", "dbg1"]);
    assert!(ps.contains("httpd -f -p 80"), "the target's processes are not visible:\n{ps}");
    assert_eq!(p["spec"]["ephemeralContainers"][0]["targetContainerName"], "httpd", "{p}");
    assert!(is_ready(&p) && p["status"]["containerStatuses"].as_array().map(Vec::len) == Some(1), "{p}");

    // Interactive: kubectl waits for the container to run, then attaches on a terminal.
    let shown = kubectl_on_a_terminal(
        &c,
        &format!("debug -it web --image={image} --target=httpd -c dbg2 -- sh"),
        "echo sum-$((6*7))\nexit\n",
    );
    assert!(shown.contains("sum-42"), "{shown:?}");
    let p = wait_for("dbg2 terminated", Duration::from_secs(30), || {
        let p = try_pod(&c, "web")?;
        ephemeral_status(&p, "dbg2")["state"]["terminated"].is_object().then_some(p)
    });
    assert_eq!(p["spec"]["ephemeralContainers"].as_array().map(Vec::len), Some(2), "{p}");
    assert!(is_ready(&p), "{p}");
    // Ephemeral containers are never restarted.
    assert_eq!(ephemeral_status(&p, "dbg1")["restartCount"], 0, "{p}");

    // kubectl 1.35 adds one the same way.
    let out = c.kubectl_as(
        &client("kubectl-1.35"),
        &["debug", "web", &format!("--image={image}"), "-c", "dbg3", "--", "true"],
        &[],
        None,
    );
    assert!(out.status.success(), "kubectl 1.35 debug: {}", String::from_utf8_lossy(&out.stderr));
    wait_for("dbg3 terminated", Duration::from_secs(30), || {
        let p = try_pod(&c, "web")?;
        (ephemeral_status(&p, "dbg3")["state"]["terminated"]["exitCode"] == 0).then_some(())
    });

    // A name already used in the pod is refused with upstream's message.
    let err = c.fails(&["debug", "web", &format!("--image={image}"), "-c", "httpd", "--", "true"]);
    assert!(err.contains("spec.ephemeralContainers[3].name: Duplicate value: \"httpd\""), "{err}");
}

/// A plain HTTP GET of `path` from `host_port`; returns the body of a 200 answer.
fn http_get(host_port: &str, path: &str) -> Option<String> {
    use std::net::TcpStream;
    let mut s = TcpStream::connect_timeout(&host_port.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    // kubectl proxy accepts only local Host headers (`--accept-hosts`).
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")).then(|| body.to_string())
}

/// `pods/proxy` and `services/proxy` reach the pod through its node: `kubectl get --raw` on
/// `services/web:80/proxy/`, the port by name, `pods/web/proxy/` (first container port),
/// and `kubectl proxy`; a closed port, a missing service port and a service without
/// endpoints are 503 with upstream's messages; RBAC on `pods/proxy` and `services/proxy`.
#[test]
fn proxy_subresources_reach_the_pod() {
    let (_reg, image, c) = node_cluster();
    web_pod(&c, &image);
    apply(
        &c,
        "svc.yaml",
        r#"apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  selector: {app: nothing}
  ports: [{port: 80}]
"#,
    );
    let raw = |path: &str| c.ok(&["get", "--raw", path]);
    let page = wait_for("the page through services/web:80/proxy", Duration::from_secs(30), || {
        let out = c.kubectl(&["get", "--raw", "/api/v1/namespaces/default/services/web:80/proxy/"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(page, INDEX_HTML);
    assert_eq!(raw("/api/v1/namespaces/default/services/web:http/proxy/index.html"), INDEX_HTML);
    assert_eq!(raw("/api/v1/namespaces/default/services/http:web:80/proxy/"), INDEX_HTML);
    assert_eq!(raw("/api/v1/namespaces/default/pods/web/proxy/"), INDEX_HTML);
    assert_eq!(raw("/api/v1/namespaces/default/pods/web:80/proxy/index.html"), INDEX_HTML);
    // The backend's own status comes back.
    let err = c.fails(&["get", "--raw", "/api/v1/namespaces/default/pods/web/proxy/missing.html"]);
    assert!(err.contains("NotFound") || err.contains("404"), "{err}");

    // Failures: 503 with upstream's messages.
    let err = c.fails(&["get", "--raw", "/api/v1/namespaces/default/pods/web:81/proxy/"]);
    assert!(err.contains("error trying to reach service") && err.contains("refused"), "{err}");
    let err = c.fails(&["get", "--raw", "/api/v1/namespaces/default/services/web:9999/proxy/"]);
    assert!(err.contains("no service port 9999 found for service \"web\""), "{err}");
    let err = c.fails(&["get", "--raw", "/api/v1/namespaces/default/services/empty:80/proxy/"]);
    assert!(err.contains("no endpoints available for service \"empty\""), "{err}");
    let err = c.fails(&["get", "--raw", "/api/v1/namespaces/default/pods/nope/proxy/"]);
    assert!(err.contains("pods \"nope\" not found"), "{err}");

    // RBAC: the verb of the method on pods/proxy or services/proxy.
    let err = c.fails(&["get", "--raw", "/api/v1/namespaces/default/services/web:80/proxy/", "--as=bob"]);
    assert!(err.contains("Forbidden") || err.contains("forbidden"), "{err}");
    c.ok(&["create", "role", "svc-proxy", "--verb=get", "--resource=services/proxy"]);
    c.ok(&["create", "rolebinding", "svc-proxy", "--role=svc-proxy", "--user=bob"]);
    let page = wait_for("bob may proxy to services", Duration::from_secs(10), || {
        let out =
            c.kubectl(&["get", "--raw", "/api/v1/namespaces/default/services/web:80/proxy/", "--as=bob"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(page, INDEX_HTML);
    let err = c.fails(&["get", "--raw", "/api/v1/namespaces/default/pods/web/proxy/", "--as=bob"]);
    assert!(err.contains("Forbidden") || err.contains("forbidden"), "{err}");

    // `kubectl proxy` in front of it.
    let mut proxy = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["proxy", "--port=0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl proxy");
    let mut out = proxy.stdout.take().expect("stdout");
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while out.read(&mut b).map(|n| n == 1).unwrap_or(false) && b[0] != b'\n' {
        line.push(b[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let addr = line.rsplit(' ').next().unwrap_or("").trim().to_string();
    let body = http_get(&addr, "/api/v1/namespaces/default/services/web:80/proxy/");
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert_eq!(body.as_deref(), Some(INDEX_HTML), "kubectl proxy said {line:?}");
}
