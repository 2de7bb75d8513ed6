//! The real kubectl's `logs`, `exec` and `port-forward` through the gateway to a fake node
//! agent served from this test process on a real nats-server (the gateway reaches nodes
//! over the bus only).

mod common;
#[path = "../gateway/tests/support/fake_node.rs"]
mod fake_node;

use common::nats::Nats;
use common::Cluster;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  nodeName: fake-node
  containers:
  - name: main
    image: busybox
    ports:
    - containerPort: 80
";

/// Serves `fake-node` sessions on the NATS bus until dropped.
fn fake_node(url: &str) -> tokio::runtime::Runtime {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let bus =
            capstan_bus::NatsBus::connect(capstan_bus::NatsConfig::new(url)).await.expect("connect to nats");
        fake_node::serve(Arc::new(bus), "fake-node").await;
    });
    rt
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn kubectl_logs_exec_and_port_forward() {
    let nats = Nats::start();
    // No Node object: a long grace keeps the pod from being collected as an orphan.
    let c = Cluster::start_env(&["--nats", &nats.url()], &[("CAPSTAN_NODE_GRACE_SECONDS", "3600")]);
    let _node = fake_node(&nats.url());
    let pod = c.file("pod.yaml", POD);
    c.ok(&["apply", "-f", pod.to_str().unwrap()]);

    // logs
    assert_eq!(c.ok(&["logs", "p"]), "hello from main (tailLines=None)\n");
    assert_eq!(c.ok(&["logs", "p", "--tail=5"]), "hello from main (tailLines=Some(5))\n");
    assert_eq!(c.ok(&["logs", "-f", "p"]), "line 1\nline 2\nline 3\n");
    let err = c.fails(&["logs", "p", "-c", "nope"]);
    assert!(err.contains("container nope is not valid for pod p"), "{err}");

    // exec: exit codes, stdin, stdout and stderr
    let out = c.kubectl(&["exec", "p", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("command terminated with exit code 3"), "{}", text(&out.stderr));
    let out = c.kubectl_with(&["exec", "-i", "p", "--", "cat"], &[], Some("hi\n"));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    let out = c.kubectl(&["exec", "p", "--", "echo", "hello", "there"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!((text(&out.stdout), text(&out.stderr)), ("hello there\n".into(), "warn\n".into()));
    let err = c.fails(&["exec", "p", "-c", "nope", "--", "ls"]);
    assert!(err.contains("container nope is not valid for pod p"), "{err}");

    // port-forward (kubectl checks the phase itself)
    c.ok(&[
        "patch",
        "pod",
        "p",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ]);
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
    let mut pf = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .arg("--cache-dir")
        .arg(c.dir.path().join("kube-cache"))
        .args(["port-forward", "--address", "127.0.0.1", "pod/p", &format!("{port}:80")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let stdout = pf.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(30));
    let forwarding = line.as_deref().is_ok_and(|l| l.starts_with("Forwarding from 127.0.0.1"));
    if !forwarding {
        let _ = pf.kill();
        let mut e = String::new();
        let _ = pf.stderr.take().unwrap().read_to_string(&mut e);
        panic!("kubectl port-forward did not start: {line:?}\n{e}");
    }
    for round in 0..2 {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect to the forwarded port");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(format!("hello {round}\n").as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).expect("read the reply");
        assert_eq!(got, format!("HELLO {round}\n"));
    }
    let _ = pf.kill();
    let _ = pf.wait();

    // nodes/proxy: the node agent answers over the bus (a Node object must exist).
    let node = c.file("node.yaml", "apiVersion: v1\nkind: Node\nmetadata:\n  name: fake-node\n");
    c.ok(&["apply", "-f", node.to_str().unwrap()]);
    assert_eq!(c.ok(&["get", "--raw", "/api/v1/nodes/fake-node/proxy/healthz"]), "fake-node /healthz");
    assert_eq!(c.ok(&["get", "--raw", "/api/v1/nodes/fake-node/proxy/logs/"]), "fake-node /logs/");
}
