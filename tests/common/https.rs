//! An HTTPS JSON server on 127.0.0.1 for webhook tests (admission and conversion), in a
//! thread of its own, with a certificate of its own CA (rcgen), whose PEM (base64) is the
//! `caBundle` to give capstan, as a user's webhook server would be served.

use base64::Engine;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server answers to one request.
pub struct Reply {
    /// Time to wait before answering.
    pub delay: Duration,
    /// The JSON body (or anything else, for tests of garbage answers).
    pub body: String,
}

impl Reply {
    /// An immediate answer.
    pub fn now(body: String) -> Reply {
        Reply { delay: Duration::ZERO, body }
    }
}

/// Answers a request: its path (without the query) and its JSON body.
pub type Handler = Arc<dyn Fn(&str, &Value) -> Reply + Send + Sync>;

/// The server; stopped on drop. Every request body received is kept, with its target.
pub struct HttpsServer {
    pub port: u16,
    pub ca_bundle: String,
    pub seen: Arc<Mutex<Vec<(String, Value)>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn serve_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    handler: Handler,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, len) = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            break (i + 4, len);
        }
    };
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_string();
    let request: Value = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    seen.lock().unwrap().push((target.to_string(), request.clone()));
    let reply = handler(&path, &request);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let body = reply.body;
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}

/// A TLS acceptor for a server certificate naming `san`, signed by a fresh CA called
/// `ca_name`, and that CA's PEM in base64 (a `caBundle`).
pub fn tls_acceptor(ca_name: &str, san: &str) -> (tokio_rustls::TlsAcceptor, String) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).expect("issuer");
    let params = rcgen::CertificateParams::new(vec![san.to_string()]).expect("params");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca_cert.pem());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    (acceptor, ca_bundle)
}

impl HttpsServer {
    /// Starts a server answering with `handler`.
    pub fn start(handler: Handler) -> HttpsServer {
        let (acceptor, ca_bundle) = tls_acceptor("webhook-test-ca", "127.0.0.1");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let seen2 = seen.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        conn = listener.accept() => {
                            let Ok((tcp, _)) = conn else { continue };
                            let acceptor = acceptor.clone();
                            let seen = seen2.clone();
                            let handler = handler.clone();
                            tokio::spawn(async move {
                                if let Ok(tls) = acceptor.accept(tcp).await {
                                    let _ = serve_one(tls, seen, handler).await;
                                }
                            });
                        }
                    }
                }
            });
        });
        HttpsServer { port, ca_bundle, seen, stop: Some(stop), thread: Some(thread) }
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Stops the server now (the port then refuses connections).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
