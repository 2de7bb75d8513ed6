//! The gateway's pod streams (log, exec, attach, port-forward) against a fake node agent
//! on an in-process bus, driven over real TLS with a minimal HTTP/1.1 and WebSocket client.

#[path = "support/fake_node.rs"]
mod fake_node;

use bytes::BytesMut;
use capstan_gateway::spdy::{self, Frame, HeaderCompressor, HeaderDecompressor, FLAG_FIN};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const TOKEN: &str = "test-token";

struct Harness {
    addr: SocketAddr,
    ca: String,
    _dir: tempfile::TempDir,
}

async fn start() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(capstan_storage::RedbStore::open(&dir.path().join("state.redb")).unwrap());
    let pki = capstan_gateway::pki::Pki::load_or_create(&dir.path().join("pki"), &[]).unwrap();
    let bus: Arc<dyn capstan_bus::Bus> = Arc::new(capstan_bus::InProcBus::new());
    let mut cfg = capstan_gateway::Config::new(pki.clone());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.bus = Some(bus.clone());
    cfg.tokens.insert(TOKEN.into(), capstan_gateway::auth::User::new("admin", vec!["system:masters".into()]));
    let running = capstan_gateway::start(cfg, store).await.unwrap();
    actix_rt::spawn(running.server);
    fake_node::serve(bus, "fake-node").await;
    let pods = capstan_api::registry::find("", "v1", "pods").unwrap();
    let system = capstan_gateway::auth::User::system();
    for (name, node, containers) in [
        ("p", Some("fake-node"), vec!["main"]),
        ("two", Some("fake-node"), vec!["a", "sleepy"]),
        ("pending", None, vec!["main"]),
        ("lost", Some("ghost-node"), vec!["main"]),
    ] {
        let cs: Vec<Value> = containers.iter().map(|c| json!({"name": c, "image": "busybox"})).collect();
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": cs}});
        if let Some(n) = node {
            pod["spec"]["nodeName"] = json!(n);
        }
        running
            .service
            .create(&system, pods, Some("default"), pod, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
    }
    Harness { addr: running.addr, ca: pki.ca_cert, _dir: dir }
}

impl Harness {
    async fn connect(&self) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut self.ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap()
    }

    /// Sends a request; returns the connection with the response head read.
    async fn request(&self, method: &str, path: &str, extra: &[(&str, &str)]) -> Response {
        let mut conn = self.connect().await;
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n", self.addr);
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if method == "POST" {
            head.push_str("Content-Length: 0\r\n");
        }
        head.push_str("\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the response head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let text = String::from_utf8_lossy(&buf[..end]).to_string();
        let mut lines = text.split("\r\n");
        let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Response { status, headers, conn, buf: buf[end + 4..].to_vec() }
    }

    async fn get(&self, path: &str) -> (u16, String, String) {
        let r = self.request("GET", path, &[("Connection", "close")]).await;
        let ct = r.header("content-type").unwrap_or("").to_string();
        let status = r.status;
        (status, ct, String::from_utf8_lossy(&r.body().await).to_string())
    }

    async fn websocket(&self, path: &str, protocol: &str) -> Response {
        self.request(
            "GET",
            path,
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Protocol", protocol),
            ],
        )
        .await
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    conn: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

async fn fill(conn: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>, n: usize) -> bool {
    while buf.len() < n {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
            Err(_) => panic!("timed out reading"),
        }
    }
    true
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body: chunked, by length, or to EOF.
    async fn body(mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    let want = self.buf.len() + 1;
                    assert!(fill(&mut self.conn, &mut self.buf, want).await, "truncated chunk size");
                };
                let size =
                    usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap().trim(), 16)
                        .unwrap();
                self.buf.drain(..line_end + 2);
                assert!(fill(&mut self.conn, &mut self.buf, size + 2).await, "truncated chunk");
                if size == 0 {
                    return out;
                }
                out.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        }
        if let Some(n) = self.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            assert!(fill(&mut self.conn, &mut self.buf, n).await);
            return self.buf[..n].to_vec();
        }
        let _ = self.conn.read_to_end(&mut out).await;
        self.buf.extend(out);
        self.buf
    }

    async fn send_ws(&mut self, opcode: u8, payload: &[u8]) {
        let mut f = vec![0x80 | opcode];
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.conn.write_all(&f).await.unwrap();
    }

    async fn send_binary(&mut self, payload: &[u8]) {
        self.send_ws(2, payload).await
    }

    /// The next WebSocket message: (opcode, payload); `None` at EOF.
    async fn recv_ws(&mut self) -> Option<(u8, Vec<u8>)> {
        if !fill(&mut self.conn, &mut self.buf, 2).await {
            return None;
        }
        let opcode = self.buf[0] & 0x0f;
        assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
        let (len, at) = match self.buf[1] & 0x7f {
            126 => {
                assert!(fill(&mut self.conn, &mut self.buf, 4).await);
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                assert!(fill(&mut self.conn, &mut self.buf, 10).await);
                (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
            }
            n => (n as usize, 2),
        };
        assert!(fill(&mut self.conn, &mut self.buf, at + len).await);
        let payload = self.buf[at..at + len].to_vec();
        self.buf.drain(..at + len);
        Some((opcode, payload))
    }
}

fn status_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not a Status: {body}"))
}

#[actix_rt::test]
async fn logs() {
    let h = start().await;
    let (code, ct, body) = h.get("/api/v1/namespaces/default/pods/p/log?tailLines=5").await;
    assert_eq!(
        (code, ct.as_str(), body.as_str()),
        (200, "text/plain", "hello from main (tailLines=Some(5))\n")
    );
    let (code, _, body) = h.get("/api/v1/namespaces/default/pods/p/log?follow=true").await;
    assert_eq!((code, body.as_str()), (200, "line 1\nline 2\nline 3\n"));
    let (code, _, body) = h.get("/api/v1/namespaces/default/pods/two/log?container=a").await;
    assert_eq!((code, body.as_str()), (200, "hello from a (tailLines=None)\n"));

    let cases = [
        ("two/log", 400, "a container name must be specified for pod two, choose one of: [a sleepy]"),
        ("p/log?container=x", 400, "container x is not valid for pod p"),
        (
            "two/log?container=sleepy",
            400,
            "container \"sleepy\" in pod \"two\" is waiting to start: ContainerCreating",
        ),
        ("p/log?tailLines=-1", 422, "tailLines: Invalid value: -1"),
        ("p/log?sinceSeconds=1&sinceTime=2025-01-01T00:00:00Z", 422, "at most one of"),
        ("p/log?sinceTime=now", 400, "sinceTime"),
        ("nope/log", 404, "pods \"nope\" not found"),
        ("lost/log", 503, "the node agent of ghost-node is not reachable"),
    ];
    for (path, want, text) in cases {
        let (code, _, body) = h.get(&format!("/api/v1/namespaces/default/pods/{path}")).await;
        let s = status_of(&body);
        assert_eq!((code, s["code"].as_u64()), (want, Some(want as u64)), "{path}: {body}");
        assert!(s["message"].as_str().unwrap().contains(text), "{path}: {body}");
    }
    // As upstream: a pod on no node has an empty log.
    let (code, _, body) = h.get("/api/v1/namespaces/default/pods/pending/log").await;
    assert_eq!((code, body.as_str()), (200, ""));
}

/// Reads channel messages until the close frame: (stdout, stderr, status).
async fn exec_output(ws: &mut Response) -> (String, String, Option<Value>) {
    let (mut out, mut err, mut status) = (String::new(), String::new(), None);
    while let Some((op, payload)) = ws.recv_ws().await {
        match op {
            2 => match payload.split_first() {
                Some((1, d)) => out.push_str(&String::from_utf8_lossy(d)),
                Some((2, d)) => err.push_str(&String::from_utf8_lossy(d)),
                Some((3, d)) => status = Some(serde_json::from_slice(d).unwrap()),
                other => panic!("unexpected channel message {other:?}"),
            },
            8 => {
                assert_eq!(&payload[..2], &[0x03, 0xe8], "close code 1000");
                break;
            }
            other => panic!("unexpected opcode {other}"),
        }
    }
    (out, err, status)
}

#[actix_rt::test]
async fn exec_and_attach_over_websocket() {
    let h = start().await;
    let base = "/api/v1/namespaces/default/pods";
    // stdin echoed, closed with the v5 close signal.
    let mut ws = h
        .websocket(
            &format!("{base}/p/exec?command=cat&stdin=true&stdout=true&stderr=true"),
            "v5.channel.k8s.io",
        )
        .await;
    assert_eq!(ws.status, 101);
    assert_eq!(ws.header("sec-websocket-protocol"), Some("v5.channel.k8s.io"));
    ws.send_ws(9, b"").await; // a ping is answered
    assert_eq!(ws.recv_ws().await, Some((10, Vec::new())));
    ws.send_binary(b"\x00hello-stdin\n").await;
    ws.send_binary(b"\x04{\"Width\":100,\"Height\":30}\n").await;
    ws.send_binary(b"\xff\x00").await;
    let (out, _, status) = exec_output(&mut ws).await;
    assert_eq!(out, "hello-stdin\n");
    assert_eq!(status, Some(json!({"metadata": {}, "status": "Success"})));

    // Exit codes, stdout and stderr, over v4 too.
    for proto in ["v5.channel.k8s.io", "v4.channel.k8s.io"] {
        let path = format!("{base}/p/exec?command=sh&command=-c&command=exit%203&stdout=true&stderr=true");
        let mut ws = h.websocket(&path, &format!("{proto}, base64.channel.k8s.io")).await;
        assert_eq!((ws.status, ws.header("sec-websocket-protocol")), (101, Some(proto)));
        let (_, _, status) = exec_output(&mut ws).await;
        let status = status.unwrap();
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
    }
    let mut ws = h
        .websocket(
            &format!("{base}/p/exec?command=echo&command=hi&stdout=true&stderr=true"),
            "v5.channel.k8s.io",
        )
        .await;
    assert_eq!(
        exec_output(&mut ws).await,
        ("hi\n".into(), "warn\n".into(), Some(json!({"metadata": {}, "status": "Success"})))
    );
    let mut ws =
        h.websocket(&format!("{base}/p/exec?command=missing&stdout=true"), "v5.channel.k8s.io").await;
    let status = exec_output(&mut ws).await.2.unwrap();
    assert_eq!(
        (status["status"].as_str(), status["reason"].as_str()),
        (Some("Failure"), Some("InternalError"))
    );

    // attach
    let mut ws = h
        .websocket(&format!("{base}/two/attach?container=a&stdin=true&stdout=true"), "v5.channel.k8s.io")
        .await;
    assert_eq!(ws.status, 101);
    ws.send_binary(b"\x00attached\n").await;
    ws.send_binary(b"\xff\x00").await;
    assert_eq!(exec_output(&mut ws).await.0, "attached\n");

    // Errors before the upgrade are plain Statuses; the SPDY retry gets the same error.
    let cases = [
        ("p/exec?stdout=true", 400, "at least one command"),
        ("p/exec?command=ls", 400, "at least 1 of stdin, stdout, stderr"),
        ("two/exec?command=ls&stdout=true", 400, "choose one of: [a sleepy]"),
        ("two/exec?command=ls&stdout=true&container=sleepy", 400, "is waiting to start"),
        ("pending/exec?command=ls&stdout=true", 400, "pod pending does not have a host assigned"),
        ("nope/attach?stdout=true", 404, "pods \"nope\" not found"),
        ("lost/exec?command=ls&stdout=true", 503, "ghost-node"),
    ];
    for (path, want, text) in cases {
        let path = format!("{base}/{path}");
        let r = h.websocket(&path, "v5.channel.k8s.io").await;
        assert_eq!(r.status, want, "{path}");
        let body = String::from_utf8_lossy(&r.body().await).to_string();
        assert!(status_of(&body)["message"].as_str().unwrap().contains(text), "{path}: {body}");
        let spdy = [
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
        ];
        let r = h.request("POST", &path, &spdy).await;
        assert_eq!(r.status, want, "POST {path}");
        let body = String::from_utf8_lossy(&r.body().await).to_string();
        assert!(status_of(&body)["message"].as_str().unwrap().contains(text), "POST {path}: {body}");
    }
    // A plain GET without an upgrade, and an unsupported subprotocol.
    let (code, _, body) = h.get(&format!("{base}/p/exec?command=ls&stdout=true")).await;
    assert_eq!(code, 400, "{body}");
    let r = h.websocket(&format!("{base}/p/exec?command=ls&stdout=true"), "channel.k8s.io").await;
    assert_eq!(r.status, 400);
}

/// The client side of a tunnelled SPDY connection.
struct SpdyClient {
    ws: Response,
    deflate: HeaderCompressor,
    inflate: HeaderDecompressor,
    buf: BytesMut,
}

impl SpdyClient {
    async fn send(&mut self, f: Frame) {
        let mut b = BytesMut::new();
        spdy::encode(&f, &mut b);
        // Split the frame the way kubectl does, in small messages.
        for piece in b.chunks(3) {
            self.ws.send_binary(piece).await;
        }
    }

    async fn syn(&mut self, id: u32, kind: &str, port: &str, request: &str) {
        let headers =
            self.deflate.compress(&[("streamtype", kind), ("port", port), ("requestid", request)]).unwrap();
        self.send(Frame::SynStream { stream_id: id, associated_id: 0, priority: 0, flags: 0, headers }).await;
    }

    async fn recv(&mut self) -> Frame {
        loop {
            if let Some(f) = spdy::decode(&mut self.buf).unwrap() {
                if let Frame::SynReply { headers, .. } = &f {
                    self.inflate.decompress(headers).unwrap();
                }
                return f;
            }
            let (op, payload) = self.ws.recv_ws().await.expect("connection open");
            assert_eq!(op, 2);
            self.buf.extend_from_slice(&payload);
        }
    }
}

#[actix_rt::test]
async fn port_forward_over_websocket() {
    let h = start().await;
    let path = "/api/v1/namespaces/default/pods/p/portforward";
    let ws = h.websocket(path, "SPDY/3.1+portforward.k8s.io").await;
    assert_eq!((ws.status, ws.header("sec-websocket-protocol")), (101, Some("SPDY/3.1+portforward.k8s.io")));
    let mut c = SpdyClient {
        ws,
        deflate: HeaderCompressor::new(),
        inflate: HeaderDecompressor::new(),
        buf: BytesMut::new(),
    };
    for (request, error_id, data_id) in [("0", 1, 3), ("1", 5, 7)] {
        c.syn(error_id, "error", "80", request).await;
        assert!(matches!(c.recv().await, Frame::SynReply { stream_id, .. } if stream_id == error_id));
        c.send(Frame::Data { stream_id: error_id, flags: FLAG_FIN, data: Default::default() }).await;
        c.syn(data_id, "data", "80", request).await;
        assert!(matches!(c.recv().await, Frame::SynReply { stream_id, .. } if stream_id == data_id));
        c.send(Frame::Data { stream_id: data_id, flags: 0, data: "hello".into() }).await;
        assert_eq!(c.recv().await, Frame::Data { stream_id: data_id, flags: 0, data: "HELLO".into() });
        c.send(Frame::Ping { id: 1 }).await;
        assert_eq!(c.recv().await, Frame::Ping { id: 1 });
        c.send(Frame::Data { stream_id: data_id, flags: FLAG_FIN, data: Default::default() }).await;
        assert_eq!(
            c.recv().await,
            Frame::Data { stream_id: data_id, flags: FLAG_FIN, data: Default::default() }
        );
        assert_eq!(
            c.recv().await,
            Frame::Data { stream_id: error_id, flags: FLAG_FIN, data: Default::default() }
        );
        c.send(Frame::RstStream { stream_id: data_id, status: spdy::RST_CANCEL }).await;
        c.send(Frame::RstStream { stream_id: error_id, status: spdy::RST_CANCEL }).await;
    }
    // A refused port is reported on the error stream.
    c.syn(9, "error", "81", "2").await;
    assert!(matches!(c.recv().await, Frame::SynReply { stream_id: 9, .. }));
    c.syn(11, "data", "81", "2").await;
    assert!(matches!(c.recv().await, Frame::SynReply { stream_id: 11, .. }));
    match c.recv().await {
        Frame::Data { stream_id: 9, flags: 0, data } => {
            assert!(String::from_utf8_lossy(&data).contains("connection refused"))
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(c.recv().await, Frame::Data { stream_id: 9, flags: FLAG_FIN, data: Default::default() });
    assert_eq!(c.recv().await, Frame::Data { stream_id: 11, flags: FLAG_FIN, data: Default::default() });
    // GOAWAY ends it: the server closes the WebSocket.
    c.send(Frame::GoAway { last_good_stream_id: 0, status: spdy::GOAWAY_OK }).await;
    assert_eq!(c.ws.recv_ws().await.map(|m| m.0), Some(8));

    // Errors before the upgrade.
    let r = h
        .websocket("/api/v1/namespaces/default/pods/pending/portforward", "SPDY/3.1+portforward.k8s.io")
        .await;
    assert_eq!(r.status, 400);
    let r = h.websocket(path, "v5.channel.k8s.io").await;
    assert_eq!(r.status, 400);
    let r =
        h.websocket("/api/v1/namespaces/default/pods/lost/portforward", "SPDY/3.1+portforward.k8s.io").await;
    assert_eq!(r.status, 503);
    let r = h
        .request("POST", "/api/v1/namespaces/default/pods/lost/portforward", &[("Upgrade", "SPDY/3.1")])
        .await;
    assert_eq!(r.status, 503);
    // The SPDY retry gets the WebSocket attempt's error once, then "not supported".
    for want in ["requested protocol(s) are not supported", "SPDY is not supported"] {
        let r = h.request("POST", path, &[("Upgrade", "SPDY/3.1")]).await;
        assert_eq!(r.status, 400);
        let body = String::from_utf8_lossy(&r.body().await).to_string();
        assert!(body.contains(want), "{body}");
    }
}
