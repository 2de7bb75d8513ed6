//! Tests with the real CNI plugins (root, `containernetworking-plugins`, `iproute2`,
//! `busybox-static`). Each test has its own bridge, subnet, namespace prefix and state directory,
//! and removes them all, on failure too.

use super::*;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static NEXT_SUBNET: AtomicU8 = AtomicU8::new(0);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A pod network of its own: bridge `cpt<rand>`, subnet `10.234.<n>.0/<prefix_len>`, state in a
/// temporary directory. Dropping it tears down every pod it knows of, deletes the bridge and the
/// directory.
struct Fixture {
    net: PodNetwork,
    third_octet: u8,
    rand: String,
}

impl Fixture {
    fn new(prefix_len: u8) -> Fixture {
        let rand = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        // Spread over the /16 from a random start, so that concurrent test processes rarely meet.
        let start = u8::from_str_radix(&rand[..2], 16).unwrap_or(0);
        let third_octet = start.wrapping_add(NEXT_SUBNET.fetch_add(37, Ordering::Relaxed));
        let config = NetworkConfig {
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
            state_dir: std::env::temp_dir().join(format!("capstan-nettest-{rand}")),
            bridge: format!("cpt{rand}"),
            subnet: format!("10.234.{third_octet}.0/{prefix_len}"),
            netns_prefix: format!("cpt{rand}-"),
            mtu: None,
        };
        let net = PodNetwork::new(config).expect("pod network");
        Fixture { net, third_octet, rand }
    }

    /// A pod id unique to this fixture (the plugins' iptables chains are named after it).
    fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.rand)
    }

    fn gateway(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 234, self.third_octet, 1))
    }

    fn ipam_file(&self, ip: IpAddr) -> PathBuf {
        self.net.config().state_dir.join("ipam").join(NETWORK_NAME).join(ip.to_string())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // In a thread of its own: this may run inside a runtime (or while unwinding from one).
        let net = self.net.clone();
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                for id in net.list().await.unwrap_or_default() {
                    if let Err(e) = net.teardown(&id).await {
                        eprintln!("cleanup: teardown {id}: {e}");
                    }
                }
                if let Err(e) = reset_egress(&net.config().bridge).await {
                    eprintln!("cleanup: egress table: {e}");
                }
            });
            let config = net.config();
            let _ = std::process::Command::new("ip").args(["link", "delete", &config.bridge]).output();
            let _ = std::fs::remove_dir_all(&config.state_dir);
        });
        let _ = cleanup.join();
    }
}

/// A process inside a pod's namespace, killed when dropped.
fn spawn_in(netns: &str, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("ip netns exec")
}

/// `busybox httpd` serving `body` as /index.html on port 8080 inside the namespace.
fn serve(netns: &str, dir: &Path, body: &str) -> tokio::process::Child {
    std::fs::create_dir_all(dir).expect("web dir");
    std::fs::write(dir.join("index.html"), body).expect("index.html");
    spawn_in(netns, &["busybox", "httpd", "-f", "-p", "8080", "-h", &dir.to_string_lossy()])
}

/// GET /index.html from the host, retried for a few seconds while the server starts; the body.
async fn http_get_body(ip: IpAddr, port: u16) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect((ip, port)).await?;
            stream.write_all(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n").await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            std::io::Result::Ok(String::from_utf8_lossy(&response).into_owned())
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(response)) if response.starts_with("HTTP/1.") => {
                return response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
            }
            Ok(Ok(response)) => last = response,
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timeout".into(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no HTTP answer from {ip}:{port}: {last}");
}

#[tokio::test]
async fn pods_get_distinct_ips_and_reach_each_other() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let fx = Fixture::new(24);
    let a = fx.net.setup(&fx.id("pod-a"), &[]).await.expect("setup a");
    let b = fx.net.setup(&fx.id("pod-b"), &[]).await.expect("setup b");
    assert_ne!(a.ip, b.ip);
    for pod in [&a, &b] {
        match pod.ip {
            IpAddr::V4(v4) => assert_eq!(v4.octets()[..3], [10, 234, fx.third_octet], "{pod:?}"),
            IpAddr::V6(_) => panic!("IPv6 address {pod:?}"),
        }
        assert!(pod.netns_path.exists(), "{pod:?}");
        assert_eq!(pod.netns_path, Path::new(NETNS_DIR).join(&pod.netns_name));
        assert!(fx.ipam_file(pod.ip).exists());
    }
    assert_eq!(fx.net.get(&fx.id("pod-a")), Some(a.clone()));
    assert_eq!(fx.net.list().await.unwrap(), vec![fx.id("pod-a"), fx.id("pod-b")]);

    // Host → pod.
    let web = fx.net.config().state_dir.join("www-a");
    let body = format!("hello from pod a {}\n", fx.rand);
    let mut server = serve(&a.netns_name, &web, &body);
    assert_eq!(http_get_body(a.ip, 8080).await, body);

    // Pod → pod.
    let url = format!("http://{}:8080/index.html", a.ip);
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", &b.netns_name, "busybox", "timeout", "5", "wget", "-qO-", &url])
        .output()
        .await
        .expect("wget");
    assert!(out.status.success(), "wget: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), body);
    server.kill().await.expect("kill httpd");

    // Teardown removes the namespace and gives the IP back; twice is fine.
    fx.net.teardown(&fx.id("pod-a")).await.expect("teardown a");
    assert!(!a.netns_path.exists());
    assert!(!fx.ipam_file(a.ip).exists());
    assert_eq!(fx.net.get(&fx.id("pod-a")), None);
    fx.net.teardown(&fx.id("pod-a")).await.expect("second teardown a");
    fx.net.teardown(&fx.id("never-was")).await.expect("teardown of nothing");
    assert_eq!(fx.net.list().await.unwrap(), vec![fx.id("pod-b")]);
    fx.net.teardown(&fx.id("pod-b")).await.expect("teardown b");
    assert!(!b.netns_path.exists());
    assert!(fx.net.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn setup_is_idempotent_and_survives_a_restart() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let fx = Fixture::new(24);
    let first = fx.net.setup(&fx.id("pod-x"), &[]).await.expect("setup");
    assert_eq!(fx.net.setup(&fx.id("pod-x"), &[]).await.expect("setup again"), first);

    // A new agent on the same state directory.
    let restarted = PodNetwork::new(fx.net.config().clone()).expect("new pod network");
    assert_eq!(restarted.get(&fx.id("pod-x")), Some(first.clone()));
    assert_eq!(restarted.setup(&fx.id("pod-x"), &[]).await.expect("setup after restart"), first);
    assert_eq!(restarted.list().await.unwrap(), vec![fx.id("pod-x")]);
    restarted.teardown(&fx.id("pod-x")).await.expect("teardown after restart");
    assert!(!first.netns_path.exists());
    assert!(!fx.ipam_file(first.ip).exists());

    // A namespace with our prefix and no record (a crash before the record) is listed and removed.
    let stray = format!("{}{}", fx.net.config().netns_prefix, fx.id("stray"));
    let out = std::process::Command::new("ip").args(["netns", "add", &stray]).output().expect("ip");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fx.net.list().await.unwrap(), vec![fx.id("stray")]);
    fx.net.teardown(&fx.id("stray")).await.expect("teardown stray");
    assert!(!Path::new(NETNS_DIR).join(&stray).exists());

    // A namespace that vanished (a reboot empties /run): setup again, from scratch.
    let again = fx.net.setup(&fx.id("pod-y"), &[]).await.expect("setup y");
    let out =
        std::process::Command::new("ip").args(["netns", "delete", &again.netns_name]).output().expect("ip");
    assert!(out.status.success());
    let redone = fx.net.setup(&fx.id("pod-y"), &[]).await.expect("setup y again");
    assert!(redone.netns_path.exists());
    assert!(fx.ipam_file(redone.ip).exists());
    if redone.ip != again.ip {
        assert!(!fx.ipam_file(again.ip).exists(), "the old IP was released");
    }
    fx.net.teardown(&fx.id("pod-y")).await.expect("teardown y");
    let out =
        std::process::Command::new("iptables-save").args(["-t", "nat"]).output().expect("iptables-save");
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(!rules.contains(&fx.id("pod-y")), "masquerade rules left behind:\n{rules}");
}

#[test]
fn iptables_rules_split_into_words() {
    let rule =
        r#"-A POSTROUTING -s 10.88.0.3/32 -m comment --comment "name: \"capstan\" id: \"p\"" -j CNI-eb61"#;
    let words = split_iptables_words(rule).unwrap();
    assert_eq!(words.len(), 10);
    assert_eq!(words[7], r#"name: "capstan" id: "p""#);
    assert_eq!(words[9], "CNI-eb61");
    assert_eq!(split_iptables_words(r#"-A X "unterminated"#), None);
    assert_eq!(split_iptables_words(""), Some(vec![]));
}

/// A network namespace outside the pod network (`198.18.<n>.2/30`, reached from the host
/// over a veth pair at `198.18.<n>.1`); removed when dropped.
struct Outside {
    netns: String,
    veth: String,
}

impl Outside {
    fn new(fx: &Fixture) -> Outside {
        let netns = format!("cpt{}-out", fx.rand);
        let veth = format!("cpo{}", &fx.rand[..6]);
        let n = fx.third_octet;
        let out = Outside { netns: netns.clone(), veth: veth.clone() };
        let run = |args: &[&str]| {
            let o = std::process::Command::new("ip").args(args).output().expect("ip");
            assert!(o.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
        };
        run(&["netns", "add", &netns]);
        run(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns]);
        run(&["addr", "add", &format!("198.18.{n}.1/30"), "dev", &veth]);
        run(&["link", "set", &veth, "up"]);
        run(&["-n", &netns, "addr", "add", &format!("198.18.{n}.2/30"), "dev", "eth0"]);
        run(&["-n", &netns, "link", "set", "eth0", "up"]);
        run(&["-n", &netns, "link", "set", "lo", "up"]);
        out
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "delete", &self.veth]).output();
        let _ = std::process::Command::new("ip").args(["netns", "delete", &self.netns]).output();
    }
}

#[tokio::test]
async fn egress_is_masqueraded_by_one_rule_for_the_subnet() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    if capstan_nftproxy::Nft::find().is_err() {
        eprintln!("skipped: needs nft");
        return;
    }
    let fx = Fixture::new(24);
    let id = fx.id("pod-out");
    let pod = fx.net.setup(&id, &[]).await.expect("setup");
    // One nft rule for the subnet, no per-pod iptables chain.
    let table = egress_table(&fx.net.config().bridge);
    let nft = capstan_nftproxy::Nft::find().expect("nft");
    let listed = nft.list_table(&table).await.expect("nft list").expect("the egress table");
    let subnet = &fx.net.config().subnet;
    assert!(
        listed.contains(&format!("ip saddr {subnet} ip daddr != {{ {subnet}, 224.0.0.0/4 }} masquerade")),
        "{listed}"
    );
    let record = fx.net.read_record(&id).await.expect("record").expect("a record");
    assert_eq!(record.bridge["ipMasq"], false);
    let nat =
        std::process::Command::new("iptables-save").args(["-t", "nat"]).output().expect("iptables-save");
    assert!(!String::from_utf8_lossy(&nat.stdout).contains(&id), "per-pod masquerade rules made");

    // A server outside the pod network sees the node's address, not the pod's.
    let outside = Outside::new(&fx);
    let root = fx.net.config().state_dir.join("www-out");
    std::fs::create_dir_all(root.join("cgi-bin")).expect("cgi-bin");
    let cgi = root.join("cgi-bin/ip");
    std::fs::write(&cgi, "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\"\n")
        .expect("cgi");
    std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut server =
        spawn_in(&outside.netns, &["busybox", "httpd", "-f", "-p", "8080", "-h", &root.to_string_lossy()]);
    let url = format!("http://198.18.{}.2:8080/cgi-bin/ip", fx.third_octet);
    let mut seen = String::new();
    for _ in 0..50 {
        let out = tokio::process::Command::new("ip")
            .args(["netns", "exec", &pod.netns_name, "busybox", "timeout", "5", "wget", "-qO-", &url])
            .output()
            .await
            .expect("wget");
        if out.status.success() {
            // busybox httpd gives IPv4 peers as `[::ffff:a.b.c.d]`.
            let text = String::from_utf8_lossy(&out.stdout);
            seen = text.trim().trim_start_matches("[::ffff:").trim_end_matches(']').to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill().await.expect("kill httpd");
    assert_eq!(seen, format!("198.18.{}.1", fx.third_octet), "pod {} went out unmasqueraded", pod.ip);
    drop(outside);

    fx.net.teardown(&id).await.expect("teardown");
    reset_egress(&fx.net.config().bridge).await.expect("reset");
    assert!(nft.list_table(&table).await.expect("nft list").is_none());
}

#[tokio::test]
async fn host_ports_are_forwarded_and_removed() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let fx = Fixture::new(24);
    let host_port = 20000 + u16::from_str_radix(&fx.rand[..4], 16).unwrap_or(0) % 20000;
    let ports = [HostPort {
        host_port,
        container_port: 8080,
        protocol: "TCP".into(),
        host_ip: Some(fx.gateway().to_string()),
    }];
    let pod = fx.net.setup(&fx.id("pod-hp"), &ports).await.expect("setup with host port");
    let web = fx.net.config().state_dir.join("www-hp");
    let body = format!("via host port {}\n", fx.rand);
    let mut server = serve(&pod.netns_name, &web, &body);
    assert_eq!(http_get_body(pod.ip, 8080).await, body);
    // The bridge's address is one of the host's: the portmap DNAT of locally made connections.
    assert_eq!(http_get_body(fx.gateway(), host_port).await, body);
    server.kill().await.expect("kill httpd");

    let rules = || {
        let out =
            std::process::Command::new("iptables-save").args(["-t", "nat"]).output().expect("iptables-save");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(rules().contains(&format!("--dport {host_port}")));
    fx.net.teardown(&fx.id("pod-hp")).await.expect("teardown");
    assert!(!rules().contains(&format!("--dport {host_port}")), "portmap rules left behind");
}

#[tokio::test]
async fn a_failed_setup_is_undone_and_says_why() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // A /30 has one address for pods (.1 is the gateway).
    let fx = Fixture::new(30);
    let first = fx.net.setup(&fx.id("pod-1"), &[]).await.expect("setup 1");
    let err = fx.net.setup(&fx.id("pod-2"), &[]).await.expect_err("no address left");
    let msg = err.to_string();
    assert!(
        msg.contains("CNI plugin bridge ADD failed") && msg.contains("no IP addresses available"),
        "{msg}"
    );
    assert_eq!(fx.net.get(&fx.id("pod-2")), None);
    assert!(!Path::new(NETNS_DIR)
        .join(format!("{}{}", fx.net.config().netns_prefix, fx.id("pod-2")))
        .exists());
    assert_eq!(fx.net.list().await.unwrap(), vec![fx.id("pod-1")]);
    fx.net.teardown(&fx.id("pod-1")).await.expect("teardown");
    assert!(!first.netns_path.exists());
}

#[tokio::test]
async fn bad_input_is_refused() {
    let dir = std::env::temp_dir().join(format!("capstan-nettest-{}", uuid::Uuid::new_v4().simple()));
    let config =
        NetworkConfig { cni_bin_dir: dir.join("no-cni"), state_dir: dir.clone(), ..Default::default() };
    let err = PodNetwork::new(config).expect_err("missing plugins");
    assert_eq!(
        err.to_string(),
        format!(
            "CNI plugin {}/no-cni/bridge is missing: install the Debian package `containernetworking-plugins`",
            dir.display()
        )
    );
    assert!(!dir.exists());

    if !Path::new("/usr/lib/cni/bridge").exists() {
        return;
    }
    let bad = |config: NetworkConfig| PodNetwork::new(config).expect_err("bad config").to_string();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    let base = NetworkConfig {
        state_dir: dir.clone(),
        bridge: format!("cpt{}", &rand[..8]),
        netns_prefix: format!("cpt{}-", &rand[..8]),
        ..Default::default()
    };
    assert!(bad(NetworkConfig { subnet: "10.0.0.0".into(), ..base.clone() }).contains("not a CIDR"));
    assert!(bad(NetworkConfig { bridge: "a-very-long-bridge-name".into(), ..base.clone() })
        .contains("bridge name"));
    assert!(bad(NetworkConfig { netns_prefix: "../x".into(), ..base.clone() }).contains("prefix"));

    let net = PodNetwork::new(base).expect("pod network");
    for id in ["", "../x", "-a", "a b", ".hidden"] {
        assert!(matches!(net.setup(id, &[]).await, Err(NetworkError::Invalid(_))), "{id:?}");
        assert!(matches!(net.teardown(id).await, Err(NetworkError::Invalid(_))), "{id:?}");
        assert_eq!(net.get(id), None);
    }
    let udp_bad = [HostPort { host_port: 80, container_port: 80, protocol: "sctp".into(), host_ip: None }];
    assert!(matches!(net.setup("ok", &udp_bad).await, Err(NetworkError::Invalid(_))));
    let ip_bad =
        [HostPort { host_port: 80, container_port: 80, protocol: "tcp".into(), host_ip: Some("x".into()) }];
    assert!(matches!(net.setup("ok", &ip_bad).await, Err(NetworkError::Invalid(_))));
    assert!(net.list().await.unwrap().is_empty());
    std::fs::remove_dir_all(&dir).expect("remove state dir");
}
