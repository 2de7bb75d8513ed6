use super::*;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A throw-away self-signed certificate (CN probe-test, P-256) for the HTTPS test.
const TEST_CERT: &str = include_str!("test-cert.pem");
const TEST_KEY: &str = include_str!("test-key.pem");

fn no_headers() -> Vec<(String, String)> {
    Vec::new()
}

const T: Duration = Duration::from_secs(5);

/// Reads a request head; None if the client went away first.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The answer of the test server to a request head.
fn answer(head: &str, port: u16) -> String {
    let path = head.split(' ').nth(1).unwrap_or_default();
    let (status, location) = match path {
        "/fail" => ("500 Internal Server Error", None),
        "/not-found" => ("404 Not Found", None),
        "/redirect" => ("302 Found", Some("/ok".to_string())),
        "/redirect-absolute" => ("301 Moved Permanently", Some(format!("http://127.0.0.1:{port}/ok"))),
        "/redirect-elsewhere" => ("302 Found", Some("http://elsewhere.invalid/ok".to_string())),
        "/redirect-to-failure" => ("307 Temporary Redirect", Some("/fail".to_string())),
        "/loop" => ("302 Found", Some("/loop".to_string())),
        "/dir/relative" => ("302 Found", Some("ok?x=1".to_string())),
        "/no-location" => ("304 Not Modified", None),
        p if p.ends_with("/ok") || p.starts_with("/ok") || p.starts_with("/dir/ok") => ("200 OK", None),
        _ => ("404 Not Found", None),
    };
    let location = location.map(|l| format!("Location: {l}\r\n")).unwrap_or_default();
    format!("HTTP/1.1 {status}\r\n{location}Content-Length: 2\r\nConnection: close\r\n\r\nhi")
}

/// A tiny HTTP server on 127.0.0.1 answering by path; it sends every request head it gets.
async fn http_server() -> (u16, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(head) = read_head(&mut stream).await {
                    let _ = stream.write_all(answer(&head, port).as_bytes()).await;
                    let _ = tx.send(head);
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn http_status_decides() {
    let (port, mut heads) = http_server().await;
    assert_eq!(http_get("127.0.0.1", port, "/ok", false, &no_headers(), T).await, ProbeOutcome::Success);
    let head = heads.recv().await.expect("request");
    assert!(head.starts_with("GET /ok HTTP/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")), "{head}");
    assert!(head.contains("\r\nUser-Agent: kube-probe/1.36\r\n"), "{head}");
    assert!(head.contains("\r\nAccept: */*\r\n"), "{head}");
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");

    assert_eq!(
        http_get("127.0.0.1", port, "/fail", false, &no_headers(), T).await,
        ProbeOutcome::Failure("HTTP probe failed with statuscode: 500".into())
    );
    assert_eq!(
        http_get("127.0.0.1", port, "not-found", false, &no_headers(), T).await,
        ProbeOutcome::Failure("HTTP probe failed with statuscode: 404".into())
    );
    // A path without its slash gets one; spaces are escaped, control characters refused.
    assert_eq!(http_get("127.0.0.1", port, "ok", false, &no_headers(), T).await, ProbeOutcome::Success);
    assert_eq!(
        http_get("127.0.0.1", port, "/ok at all", false, &no_headers(), T).await,
        ProbeOutcome::Success
    );
    let mut lines = Vec::new();
    for _ in 0..4 {
        let head = heads.recv().await.expect("request");
        lines.push(head.lines().next().unwrap_or_default().to_string());
    }
    assert_eq!(
        lines,
        ["GET /fail HTTP/1.1", "GET /not-found HTTP/1.1", "GET /ok HTTP/1.1", "GET /ok%20at%20all HTTP/1.1"]
    );
    assert_eq!(
        http_get("127.0.0.1", port, "/ok\r\nX: y", false, &no_headers(), T).await,
        ProbeOutcome::Failure(format!(
            "Get \"http://127.0.0.1:{port}/ok\r\nX: y\": net/url: invalid control character in URL"
        ))
    );
}

#[tokio::test]
async fn http_headers_can_be_set_and_removed() {
    let (port, mut heads) = http_server().await;
    let headers = vec![
        ("host".to_string(), "example.test".to_string()),
        ("User-Agent".to_string(), "custom/1".to_string()),
        ("Accept".to_string(), String::new()),
        ("X-Probe".to_string(), "yes".to_string()),
        ("Bad\r\nName".to_string(), "x".to_string()),
        ("X-Bad-Value".to_string(), "a\r\nInjected: 1".to_string()),
    ];
    assert_eq!(http_get("127.0.0.1", port, "/ok", false, &headers, T).await, ProbeOutcome::Success);
    let head = heads.recv().await.expect("request");
    assert!(head.contains("\r\nHost: example.test\r\n"), "{head}");
    assert!(head.contains("\r\nUser-Agent: custom/1\r\n"), "{head}");
    assert!(!head.contains("Accept"), "{head}");
    assert!(head.contains("\r\nX-Probe: yes\r\n"), "{head}");
    assert!(!head.contains("Injected") && !head.contains("Bad"), "{head}");
    assert_eq!(head.matches("User-Agent").count(), 1, "{head}");
}

#[tokio::test]
async fn http_redirects() {
    let (port, _heads) = http_server().await;
    let get = |path: &'static str| http_get("127.0.0.1", port, path, false, &[], T);
    assert_eq!(get("/redirect").await, ProbeOutcome::Success);
    assert_eq!(get("/redirect-absolute").await, ProbeOutcome::Success);
    assert_eq!(get("/dir/relative").await, ProbeOutcome::Success);
    // Not followed (another host): a success, as upstream's warning.
    assert_eq!(get("/redirect-elsewhere").await, ProbeOutcome::Success);
    assert_eq!(get("/no-location").await, ProbeOutcome::Success);
    assert_eq!(
        get("/redirect-to-failure").await,
        ProbeOutcome::Failure("HTTP probe failed with statuscode: 500".into())
    );
    assert_eq!(
        get("/loop").await,
        ProbeOutcome::Failure(format!("Get \"http://127.0.0.1:{port}/loop\": stopped after 10 redirects"))
    );
}

#[test]
fn locations_resolve() {
    let base = Target { https: false, host: "10.0.0.1".into(), port: 8080, path: "/a/b?q=1".into() };
    let t =
        |https, host: &str, port, path: &str| Target { https, host: host.into(), port, path: path.into() };
    assert_eq!(base.resolve("/x"), Some(t(false, "10.0.0.1", 8080, "/x")));
    assert_eq!(base.resolve("c#frag"), Some(t(false, "10.0.0.1", 8080, "/a/c")));
    assert_eq!(base.resolve("HTTPS://h.example/p?y"), Some(t(true, "h.example", 443, "/p?y")));
    assert_eq!(base.resolve("http://user@h:81"), Some(t(false, "h", 81, "/")));
    assert_eq!(base.resolve("//[::1]:9/z"), Some(t(false, "::1", 9, "/z")));
    assert_eq!(base.resolve("http://h:x/"), None);
    assert_eq!(base.resolve("http:///"), None);
    assert_eq!(base.resolve("http://[::1/"), None);
    assert_eq!(t(false, "::1", 80, "/p").to_string(), "http://[::1]:80/p");
}

#[test]
fn response_heads_parse() {
    assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nA: b"), Ok(Head { status: 200, location: None }));
    assert_eq!(
        parse_head(b"HTTP/1.0 302\nlocation:  /x \n"),
        Ok(Head { status: 302, location: Some("/x".into()) })
    );
    assert!(parse_head(b"SSH-2.0-OpenSSH").is_err());
    assert!(parse_head(b"HTTP/1.1 2000 OK").is_err());
    assert!(parse_head(b"HTTP/1.1 abc OK").is_err());
    assert!(parse_head(b"").is_err());
}

/// A port nothing listens on (just closed).
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn refused_connections_say_so() {
    let port = closed_port().await;
    assert_eq!(
        http_get("127.0.0.1", port, "/healthz", false, &[], T).await,
        ProbeOutcome::Failure(format!(
            "Get \"http://127.0.0.1:{port}/healthz\": dial tcp 127.0.0.1:{port}: connect: connection refused"
        ))
    );
    assert_eq!(
        tcp_socket("127.0.0.1", port, T).await,
        ProbeOutcome::Failure(format!("dial tcp 127.0.0.1:{port}: connect: connection refused"))
    );
    assert!(matches!(
        http_get("::1", port, "/", false, &[], T).await,
        ProbeOutcome::Failure(m) if m.starts_with(&format!("Get \"http://[::1]:{port}/\": dial tcp [::1]:{port}: connect: "))
    ));
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let started = std::time::Instant::now();
    let outcome = http_get("127.0.0.1", port, "/slow", false, &[], Duration::from_millis(300)).await;
    assert_eq!(
        outcome,
        ProbeOutcome::Failure(format!(
            "Get \"http://127.0.0.1:{port}/slow\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        ))
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // It accepts, so a TCP probe passes.
    assert_eq!(tcp_socket("127.0.0.1", port, T).await, ProbeOutcome::Success);
    holder.abort();
}

#[tokio::test]
async fn a_listener_with_a_full_backlog_times_out_tcp_probes() {
    // Backlog 0 holds one connection; with it taken (never accepted), further SYNs are dropped.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let port = socket.local_addr().expect("addr").port();
    let _listener = socket.listen(0).expect("listen");
    let mut fillers = Vec::new();
    for _ in 0..3 {
        fillers.push(tokio::spawn(TcpStream::connect(("127.0.0.1", port))));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        tcp_socket("127.0.0.1", port, Duration::from_millis(300)).await,
        ProbeOutcome::Failure(format!("dial tcp 127.0.0.1:{port}: i/o timeout"))
    );
    for filler in fillers {
        filler.abort();
    }
}

#[tokio::test]
async fn https_is_not_verified() {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(TEST_CERT.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("cert");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(TEST_KEY.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, mut heads) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                if let Some(head) = read_head(&mut tls).await {
                    let _ = tls.write_all(answer(&head, port).as_bytes()).await;
                    let _ = tls.shutdown().await;
                    let _ = tx.send(head);
                }
            });
        }
    });
    assert_eq!(http_get("127.0.0.1", port, "/ok", true, &[], T).await, ProbeOutcome::Success);
    assert!(heads.recv().await.expect("request").starts_with("GET /ok HTTP/1.1\r\n"));
    assert_eq!(
        http_get("127.0.0.1", port, "/fail", true, &[], T).await,
        ProbeOutcome::Failure("HTTP probe failed with statuscode: 500".into())
    );
    // Plain HTTP to the TLS port: the server hangs up on garbage.
    assert!(!http_get("127.0.0.1", port, "/ok", false, &[], T).await.is_success());
    // TLS to a plain HTTP server (which waits for a request head that never comes).
    let (plain, _heads) = http_server().await;
    assert!(!http_get("127.0.0.1", plain, "/ok", true, &[], Duration::from_millis(300)).await.is_success());
}

#[tokio::test]
async fn names_are_resolved() {
    let (port, _heads) = http_server().await;
    assert_eq!(http_get("localhost", port, "/ok", false, &[], T).await, ProbeOutcome::Success);
    assert_eq!(tcp_socket("localhost", port, T).await, ProbeOutcome::Success);
}

fn timing(success: i32, failure: i32) -> ProbeTiming {
    ProbeTiming { success_threshold: success, failure_threshold: failure, ..Default::default() }
}

fn fail() -> ProbeOutcome {
    ProbeOutcome::Failure("no".into())
}

#[test]
fn readiness_thresholds() {
    let mut p = ProbeState::new(ProbeKind::Readiness, timing(2, 3));
    assert_eq!(p.result(), Some(false));
    assert_eq!(p.record(&ProbeOutcome::Success), None);
    assert_eq!(p.record(&fail()), None); // the run of successes is broken
    assert_eq!(p.record(&ProbeOutcome::Success), None);
    assert_eq!(p.record(&ProbeOutcome::Success), Some(true));
    assert_eq!(p.record(&ProbeOutcome::Success), None); // no change
    assert_eq!(p.result(), Some(true));
    assert_eq!(p.record(&fail()), None);
    assert_eq!(p.record(&fail()), None);
    assert_eq!(p.record(&fail()), Some(false));
    assert_eq!(p.record(&fail()), None);
    // Readiness keeps probing after failing.
    assert!(p.should_probe(Duration::from_secs(100), true));
    assert_eq!(p.record(&ProbeOutcome::Success), None);
    assert_eq!(p.record(&ProbeOutcome::Success), Some(true));
}

#[test]
fn readiness_initially_false_flips_on_first_success_by_default() {
    let mut p = ProbeState::new(ProbeKind::Readiness, ProbeTiming::default());
    assert_eq!(p.record(&fail()), None); // already false
    assert_eq!(p.record(&ProbeOutcome::Success), Some(true));
}

#[test]
fn liveness_fails_after_the_threshold_then_holds() {
    let mut p = ProbeState::new(ProbeKind::Liveness, ProbeTiming::default());
    assert_eq!(p.result(), Some(true));
    assert_eq!(p.record(&ProbeOutcome::Success), None);
    assert_eq!(p.record(&fail()), None);
    assert_eq!(p.record(&fail()), None);
    assert_eq!(p.record(&fail()), Some(false));
    assert!(!p.should_probe(Duration::from_secs(100), true), "on hold until the restart");
    assert_eq!(p.record(&ProbeOutcome::Success), None);
    p.reset();
    assert_eq!(p.result(), Some(true));
    assert!(p.should_probe(Duration::from_secs(100), true));
}

#[test]
fn startup_gates_the_others() {
    let t = ProbeTiming { initial_delay_seconds: 5, failure_threshold: 2, ..Default::default() };
    let mut startup = ProbeState::new(ProbeKind::Startup, t.clone());
    let liveness = ProbeState::new(ProbeKind::Liveness, t.clone());
    assert_eq!(startup.result(), None);
    assert!(!startup.should_probe(Duration::from_millis(4999), false), "initial delay");
    assert!(startup.should_probe(Duration::from_secs(5), false));
    assert!(!liveness.should_probe(Duration::from_secs(5), false), "not before started");
    assert_eq!(startup.record(&fail()), None);
    assert_eq!(startup.record(&ProbeOutcome::Success), Some(true));
    // Started: the startup probe stops, the others run.
    assert!(!startup.should_probe(Duration::from_secs(6), true));
    assert!(liveness.should_probe(Duration::from_secs(6), true));

    let mut failing = ProbeState::new(ProbeKind::Startup, t);
    assert_eq!(failing.record(&fail()), None);
    assert_eq!(failing.record(&fail()), Some(false));
    assert!(!failing.should_probe(Duration::from_secs(60), false));
}

#[test]
fn timing_defaults_and_bad_values() {
    let probe = k8s_openapi::api::core::v1::Probe { period_seconds: Some(3), ..Default::default() };
    let t = ProbeTiming::from_probe(&probe);
    assert_eq!(t, ProbeTiming { period_seconds: 3, ..Default::default() });
    assert_eq!(t.period(), Duration::from_secs(3));
    assert_eq!(t.timeout(), Duration::from_secs(1));
    let bad = ProbeTiming {
        initial_delay_seconds: -4,
        period_seconds: 0,
        timeout_seconds: -1,
        success_threshold: 0,
        failure_threshold: -2,
    };
    assert_eq!(bad.initial_delay(), Duration::ZERO);
    assert_eq!(bad.period(), Duration::from_secs(10));
    assert_eq!(bad.timeout(), Duration::from_secs(1));
    let mut p = ProbeState::new(ProbeKind::Readiness, bad);
    assert!(p.should_probe(Duration::ZERO, true));
    assert_eq!(p.record(&ProbeOutcome::Success), Some(true));
    assert_eq!(p.record(&fail()), None);
    assert_eq!(p.record(&fail()), None);
    assert_eq!(p.record(&fail()), Some(false));
}

#[tokio::test]
async fn grpc_health_probe() {
    let server = capstan_testkit::GrpcHealth::start("127.0.0.1:0").expect("grpc health server");
    let port = server.addr().port();
    assert_eq!(grpc("127.0.0.1", port, "", T).await, ProbeOutcome::Success);
    server.set("db", capstan_testkit::NOT_SERVING);
    assert_eq!(
        grpc("127.0.0.1", port, "db", T).await,
        ProbeOutcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
    );
    server.set("db", capstan_testkit::SERVING);
    assert_eq!(grpc("127.0.0.1", port, "db", T).await, ProbeOutcome::Success);
    assert_eq!(
        grpc("127.0.0.1", port, "other", T).await,
        ProbeOutcome::Failure(
            "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service".into()
        )
    );
    assert_eq!(server.checks(), 4);
    // Nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    match grpc("127.0.0.1", closed_port, "", T).await {
        ProbeOutcome::Failure(m) => assert!(
            m.starts_with(&format!(
                "error: failed to connect service at \"127.0.0.1:{closed_port}\": dial tcp"
            )) && m.contains("connection refused"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    // A server that accepts but never speaks HTTP/2: the timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let out = grpc("127.0.0.1", silent_port, "", Duration::from_millis(300)).await;
    assert_eq!(out, ProbeOutcome::Failure("timeout: health rpc did not complete within 300ms".into()));
    drop(silent);
}

#[test]
fn grpc_messages_by_hand() {
    assert_eq!(grpc_health_request(""), [0, 0, 0, 0, 0]);
    assert_eq!(grpc_health_request("ab"), [0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']);
    assert_eq!(grpc_health_status(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(1));
    // An unknown field before the status is skipped; an empty message is UNKNOWN (0).
    assert_eq!(grpc_health_status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 2]), Ok(2));
    assert_eq!(grpc_health_status(&[0, 0, 0, 0, 0]), Ok(0));
    assert!(grpc_health_status(&[0, 0, 0]).is_err());
}
