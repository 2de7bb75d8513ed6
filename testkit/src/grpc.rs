//! A gRPC health server (`grpc.health.v1.Health/Check` only) over plaintext HTTP/2, for the
//! node agent's gRPC probes: h2 with the gRPC framing and the two protobuf messages by hand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use bytes::Bytes;

/// `grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING`.
pub const SERVING: u64 = 1;
/// `NOT_SERVING`.
pub const NOT_SERVING: u64 = 2;

#[derive(Default)]
struct State {
    /// Service name → status; a service not listed gets `NOT_FOUND`, as grpc-go's server.
    statuses: Mutex<HashMap<String, u64>>,
    checks: AtomicU64,
}

/// A running health server on its own thread; stopped on drop.
pub struct GrpcHealth {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GrpcHealth {
    /// Listens on `bind` (`127.0.0.1:0`, `0.0.0.0:0`...); the overall service `""` is
    /// SERVING.
    pub fn start(bind: &str) -> anyhow::Result<GrpcHealth> {
        let listener = std::net::TcpListener::bind(bind).with_context(|| format!("binding {bind}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        state.statuses.lock().unwrap_or_else(|e| e.into_inner()).insert(String::new(), SERVING);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                let accept = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else { continue };
                        tokio::spawn(serve(tcp, served.clone()));
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Ok(GrpcHealth { addr, state, stop: Some(stop), thread: Some(thread) })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets a service's status ([`SERVING`], [`NOT_SERVING`], ...).
    pub fn set(&self, service: &str, status: u64) {
        self.state.statuses.lock().unwrap_or_else(|e| e.into_inner()).insert(service.to_string(), status);
    }

    /// How many Check calls were answered.
    pub fn checks(&self) -> u64 {
        self.state.checks.load(Ordering::Relaxed)
    }
}

impl Drop for GrpcHealth {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(tcp: tokio::net::TcpStream, state: Arc<State>) {
    let Ok(mut conn) = h2::server::handshake(tcp).await else { return };
    while let Some(Ok((request, respond))) = conn.accept().await {
        tokio::spawn(answer(request, respond, state.clone()));
    }
}

/// The service named in a framed `HealthCheckRequest`.
fn requested_service(body: &[u8]) -> Option<String> {
    let msg = body.get(5..)?;
    if msg.is_empty() {
        return Some(String::new());
    }
    // Field 1, length-delimited, a one-byte length (test names are short).
    (msg.first() == Some(&0x0a)).then_some(())?;
    let len = usize::from(*msg.get(1)?);
    Some(String::from_utf8_lossy(msg.get(2..2 + len)?).into_owned())
}

async fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    state: Arc<State>,
) {
    let path = request.uri().path().to_string();
    let mut body = request.into_body();
    let mut data = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let head = |status: Option<(u32, &str)>| {
        let mut b = http::Response::builder().status(200).header("content-type", "application/grpc");
        if let Some((code, message)) = status {
            b = b.header("grpc-status", code.to_string()).header("grpc-message", message.replace(' ', "%20"));
        }
        b.body(()).unwrap_or_default()
    };
    if path != "/grpc.health.v1.Health/Check" {
        let _ = respond.send_response(head(Some((12, &format!("unknown method {path}")))), true);
        return;
    }
    state.checks.fetch_add(1, Ordering::Relaxed);
    let service = requested_service(&data).unwrap_or_default();
    let status = state.statuses.lock().unwrap_or_else(|e| e.into_inner()).get(&service).copied();
    let Some(status) = status else {
        let _ = respond.send_response(head(Some((5, "unknown service"))), true);
        return;
    };
    let Ok(mut send) = respond.send_response(head(None), false) else { return };
    let _ = send.send_data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status as u8]), false);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let _ = send.send_trailers(trailers);
}
