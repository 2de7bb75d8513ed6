//! Probe checks: httpGet, tcpSocket and grpc, and the threshold logic around them.
//!
//! The checks follow the kubelet's (`pkg/probe/http`, `pkg/probe/tcp`): an HTTP probe succeeds
//! on a status in 200..400, sends `User-Agent: kube-probe/1.36` and `Accept: */*` unless the probe
//! sets them (an empty value removes them), uses no keep-alive, no compression and no proxy, and
//! does not verify HTTPS certificates. Redirects to the same host name (any port or scheme) are
//! followed, at most 10; a redirect elsewhere is not followed and counts as a success (upstream
//! reports it as a warning, which is a success). The response body is not read. Failure
//! messages read like upstream's (Go's) errors.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `User-Agent` of probes (upstream: `kube-probe/<major>.<minor>` of the kubelet).
pub const USER_AGENT: &str = "kube-probe/1.36";

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 10;
/// Longest response head read.
const MAX_HEAD: usize = 64 * 1024;

/// The result of one probe check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The check passed.
    Success,
    /// The check failed; why, as the kubelet words it (it goes into the pod's events).
    Failure(String),
}

impl ProbeOutcome {
    /// Whether this is a success.
    pub fn is_success(&self) -> bool {
        matches!(self, ProbeOutcome::Success)
    }
}

/// A zero timeout means the Kubernetes default, 1 s.
fn effective_timeout(timeout: Duration) -> Duration {
    if timeout.is_zero() {
        Duration::from_secs(1)
    } else {
        timeout
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Go's wording of a system error (`connection refused`...).
fn os_error_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => e.to_string(),
    }
}

/// Connects to `host:port` (an IP address or a name, every address tried in turn); the error
/// reads like Go's `dial tcp` errors.
async fn dial(host: &str, port: u16) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => match tokio::net::lookup_host((host, port)).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => return Err(format!("dial tcp: lookup {host}: {e}")),
        },
    };
    let mut last = format!("dial tcp: lookup {host}: no such host");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("dial tcp {addr}: connect: {}", os_error_text(&e)),
        }
    }
    Err(last)
}

/// The tcpSocket check: a TCP connection to `host:port` within `timeout` (0: 1 s). Failures read
/// `dial tcp 10.88.0.5:8080: connect: connection refused` or `dial tcp 10.88.0.5:8080: i/o
/// timeout`.
pub async fn tcp_socket(host: &str, port: u16, timeout: Duration) -> ProbeOutcome {
    match tokio::time::timeout(effective_timeout(timeout), dial(host, port)).await {
        Ok(Ok(_stream)) => ProbeOutcome::Success,
        Ok(Err(msg)) => ProbeOutcome::Failure(msg),
        Err(_) => ProbeOutcome::Failure(format!("dial tcp {}: i/o timeout", host_port(host, port))),
    }
}

/// A `grpc` probe: the standard `grpc.health.v1.Health/Check` call for `service` over
/// plaintext HTTP/2 (h2 with the 5-byte gRPC message framing and the two-field protobuf
/// messages written by hand), as upstream's `pkg/probe/grpc`: success only on `SERVING`; the
/// failure messages are upstream's.
pub async fn grpc(host: &str, port: u16, service: &str, timeout: Duration) -> ProbeOutcome {
    let timeout = effective_timeout(timeout);
    let addr = host_port(host, port);
    let go_timeout = go_duration(timeout);
    let call = async {
        let tcp = dial(host, port).await.map_err(GrpcError::Connect)?;
        let (client, conn) =
            h2::client::handshake(tcp).await.map_err(|e| GrpcError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        grpc_health_check(client, &addr, service).await
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => ProbeOutcome::Failure(format!("timeout: health rpc did not complete within {go_timeout}")),
        Ok(Err(GrpcError::Connect(e))) => {
            ProbeOutcome::Failure(format!("error: failed to connect service at {addr:?}: {e}"))
        }
        Ok(Err(GrpcError::Status(12, message))) => ProbeOutcome::Failure(format!(
            "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {message}"
        )),
        Ok(Err(GrpcError::Status(4, _))) => {
            ProbeOutcome::Failure(format!("timeout: health rpc did not complete within {go_timeout}"))
        }
        Ok(Err(GrpcError::Status(code, message))) => ProbeOutcome::Failure(format!(
            "error: health rpc probe failed: rpc error: code = {} desc = {message}",
            grpc_code_name(code)
        )),
        Ok(Err(GrpcError::Protocol(e))) => {
            ProbeOutcome::Failure(format!("error: health rpc probe failed: {e}"))
        }
        Ok(Ok(1)) => ProbeOutcome::Success,
        Ok(Ok(status)) => ProbeOutcome::Failure(format!(
            "service unhealthy (responded with {:?})",
            match status {
                0 => "UNKNOWN".to_string(),
                2 => "NOT_SERVING".to_string(),
                3 => "SERVICE_UNKNOWN".to_string(),
                n => n.to_string(),
            }
        )),
    }
}

/// A duration as Go's `time.Duration` prints it (`1s`, `1.5s`, `300ms`).
fn go_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

enum GrpcError {
    Connect(String),
    /// A gRPC status other than OK: code and message.
    Status(u32, String),
    Protocol(String),
}

/// gRPC's names of its status codes (as Go's `codes.Code` prints them).
fn grpc_code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(code as usize).copied().unwrap_or("Unknown")
}

/// `HealthCheckRequest { string service = 1; }` in a gRPC message frame.
pub fn grpc_health_request(service: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    framed
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(data: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` of a framed `HealthCheckResponse { ServingStatus status = 1; }` (unknown
/// fields skipped).
pub fn grpc_health_status(body: &[u8]) -> Result<u64, String> {
    let (flag, rest) = body.split_first().ok_or("empty response")?;
    if *flag != 0 {
        return Err("compressed response".into());
    }
    let len = rest.get(..4).ok_or("short response")?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let msg = rest.get(4..4 + len).ok_or("short response")?;
    let (mut pos, mut status) = (0, 0);
    while pos < msg.len() {
        let key = get_varint(msg, &mut pos).ok_or("bad message")?;
        match (key >> 3, key & 7) {
            (1, 0) => status = get_varint(msg, &mut pos).ok_or("bad message")?,
            (_, 0) => {
                get_varint(msg, &mut pos).ok_or("bad message")?;
            }
            (_, 1) => pos += 8,
            (_, 5) => pos += 4,
            (_, 2) => {
                let n = get_varint(msg, &mut pos).ok_or("bad message")? as usize;
                pos += n;
            }
            _ => return Err("bad message".into()),
        }
    }
    Ok(status)
}

/// gRPC's percent-encoding of `grpc-message`.
fn grpc_message(headers: &http::HeaderMap) -> String {
    let raw = headers.get("grpc-message").map(|v| v.as_bytes()).unwrap_or_default();
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let Ok(b) = u8::from_str_radix(std::str::from_utf8(&raw[i + 1..i + 3]).unwrap_or("zz"), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// One unary Health/Check; the serving status.
async fn grpc_health_check(
    client: h2::client::SendRequest<bytes::Bytes>,
    addr: &str,
    service: &str,
) -> Result<u64, GrpcError> {
    let proto = |e: h2::Error| GrpcError::Protocol(e.to_string());
    let mut client = client.ready().await.map_err(proto)?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", USER_AGENT)
        .body(())
        .map_err(|e| GrpcError::Protocol(e.to_string()))?;
    let (response, mut send) = client.send_request(request, false).map_err(proto)?;
    send.send_data(bytes::Bytes::from(grpc_health_request(service)), true).map_err(proto)?;
    let response = response.await.map_err(proto)?;
    let (head, mut body) = response.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(GrpcError::Protocol(format!(
            "unexpected HTTP status code received from server: {}",
            head.status.as_u16()
        )));
    }
    // Trailers-only: the status is in the headers.
    if let Some(code) = grpc_status(&head.headers).filter(|c| *c != 0) {
        return Err(GrpcError::Status(code, grpc_message(&head.headers)));
    }
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(proto)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
        if data.len() > MAX_HEAD {
            return Err(GrpcError::Protocol("response too long".into()));
        }
    }
    let trailers = body.trailers().await.map_err(proto)?.unwrap_or_default();
    match grpc_status(&trailers).or_else(|| grpc_status(&head.headers)) {
        Some(0) => {}
        Some(code) => return Err(GrpcError::Status(code, grpc_message(&trailers))),
        None => return Err(GrpcError::Protocol("server closed the stream without sending trailers".into())),
    }
    grpc_health_status(&data).map_err(GrpcError::Protocol)
}

/// A request target.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", host_port(&self.host, self.port), self.path)
    }
}

impl Target {
    /// Where a `Location` header points, relative to this target.
    fn resolve(&self, location: &str) -> Option<Target> {
        let location = location.split('#').next().unwrap_or_default().trim();
        let lower = location.to_ascii_lowercase();
        let (https, rest) = if lower.starts_with("http://") {
            (false, &location[7..])
        } else if lower.starts_with("https://") {
            (true, &location[8..])
        } else if let Some(rest) = location.strip_prefix("//") {
            (self.https, rest)
        } else if location.starts_with('/') {
            return Some(Target { path: location.to_string(), ..self.clone() });
        } else if location.is_empty() {
            return Some(self.clone());
        } else {
            // Relative to the current path's directory.
            let path = self.path.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            let dir = if dir.is_empty() { "/" } else { dir };
            return Some(Target { path: format!("{dir}{location}"), ..self.clone() });
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let authority = authority.rsplit('@').next().unwrap_or_default();
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => default_port,
                None => return None,
            };
            (host.to_string(), port)
        } else {
            match authority.split_once(':') {
                Some((host, p)) => {
                    (host.to_string(), if p.is_empty() { default_port } else { p.parse().ok()? })
                }
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return None;
        }
        let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        Some(Target { https, host, port, path })
    }
}

/// The status and `Location` of a response.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    location: Option<String>,
}

/// Parses a response head (up to the empty line, excluded).
fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/") || code.len() != 3 {
        return Err(format!("malformed HTTP response {status_line:?}"));
    }
    let status = code.parse::<u16>().map_err(|_| format!("malformed HTTP status code {code:?}"))?;
    let location = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("location"))
        .map(|(_, value)| value.trim().to_string());
    Ok(Head { status, location })
}

/// The headers of a probe request: the probe's, with `Host`, `User-Agent` and `Accept` defaulted.
fn request_bytes(target: &Target, headers: &[(String, String)], keep_host: bool) -> Vec<u8> {
    let valid = |(name, value): &&(String, String)| {
        !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
            && !value.bytes().any(|b| b == b'\r' || b == b'\n')
    };
    let find = |wanted: &str| headers.iter().filter(valid).find(|(n, _)| n.eq_ignore_ascii_case(wanted));
    let mut req = format!("GET {} HTTP/1.1\r\n", target.path.replace(' ', "%20"));
    let host = match find("host") {
        Some((_, value)) if keep_host && !value.is_empty() => value.clone(),
        _ => host_port(&target.host, target.port),
    };
    req.push_str(&format!("Host: {host}\r\n"));
    for (name, default) in [("User-Agent", USER_AGENT), ("Accept", "*/*")] {
        match find(name) {
            None => req.push_str(&format!("{name}: {default}\r\n")),
            Some((_, value)) if value.is_empty() => {}
            Some(_) => {} // sent with the others below
        }
    }
    for (name, value) in headers.iter().filter(valid) {
        if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("connection") || value.is_empty() {
            continue;
        }
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    req.into_bytes()
}

/// Sends the request and reads the response head.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, request: &[u8]) -> Result<Head, String> {
    stream.write_all(request).await.map_err(|e| format!("write: {}", os_error_text(&e)))?;
    stream.flush().await.map_err(|e| format!("write: {}", os_error_text(&e)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.map_err(|e| format!("read: {}", os_error_text(&e)))?;
        if n == 0 {
            return Err(if head.is_empty() { "EOF".into() } else { "unexpected EOF".into() });
        }
        // Search from a little before the new data, in case the blank line straddles reads.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            return parse_head(&head[..from + i]);
        }
        if let Some(i) = head[from..].windows(2).position(|w| w == b"\n\n") {
            return parse_head(&head[..from + i]);
        }
        if head.len() > MAX_HEAD {
            return Err("net/http: response headers too long".into());
        }
    }
}

/// One request to `target`; the error without the `Get "url": ` prefix.
async fn request(target: &Target, headers: &[(String, String)], keep_host: bool) -> Result<Head, String> {
    if target.path.chars().any(char::is_control) {
        return Err("net/url: invalid control character in URL".into());
    }
    let mut tcp = dial(&target.host, target.port).await?;
    let request = request_bytes(target, headers, keep_host);
    if target.https {
        let connector = tls_connector()?;
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| format!("tls: invalid server name {:?}: {e}", target.host))?;
        let mut tls = connector.connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?;
        exchange(&mut tls, &request).await
    } else {
        exchange(&mut tcp, &request).await
    }
}

/// The httpGet check: `GET <scheme>://<host>:<port><path>` with the probe's headers, within
/// `timeout` (0: 1 s, for the whole exchange including redirects). Success is a status in
/// 200..400 (see the module's documentation for redirects). Failures read like upstream's:
/// `HTTP probe failed with statuscode: 500`, `Get "http://10.88.0.5:8080/healthz": dial tcp
/// 10.88.0.5:8080: connect: connection refused`, `Get "...": context deadline exceeded
/// (Client.Timeout exceeded while awaiting headers)`.
pub async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    scheme_https: bool,
    headers: &[(String, String)],
    timeout: Duration,
) -> ProbeOutcome {
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let first = Target { https: scheme_https, host: host.to_string(), port, path };
    let check = async {
        let mut target = first.clone();
        let mut keep_host = true;
        let mut redirects = 0;
        loop {
            let head = match request(&target, headers, keep_host).await {
                Ok(head) => head,
                Err(msg) => return ProbeOutcome::Failure(format!("Get \"{target}\": {msg}")),
            };
            if !(200..400).contains(&head.status) {
                return ProbeOutcome::Failure(format!("HTTP probe failed with statuscode: {}", head.status));
            }
            let Some(location) = head.location.filter(|_| head.status >= 300) else {
                return ProbeOutcome::Success;
            };
            let Some(next) = target.resolve(&location) else {
                return ProbeOutcome::Failure(format!(
                    "Get \"{target}\": failed to parse Location header {location:?}"
                ));
            };
            if !next.host.eq_ignore_ascii_case(&first.host) {
                // Not followed: a warning upstream, which counts as a success.
                tracing::debug!(url = %first, %location, "probe terminated redirects");
                return ProbeOutcome::Success;
            }
            if redirects >= MAX_REDIRECTS {
                return ProbeOutcome::Failure(format!(
                    "Get \"{next}\": stopped after {MAX_REDIRECTS} redirects"
                ));
            }
            redirects += 1;
            // Go keeps a request's own Host header only across relative redirects.
            keep_host = keep_host && !location.contains("://") && !location.starts_with("//");
            target = next;
        }
    };
    match tokio::time::timeout(effective_timeout(timeout), check).await {
        Ok(outcome) => outcome,
        Err(_) => ProbeOutcome::Failure(format!(
            "Get \"{first}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// A TLS client that does not verify the server's certificate (as upstream's probes).
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth();
        Ok(Arc::new(config))
    });
    config.clone().map(tokio_rustls::TlsConnector::from)
}

/// Accepts any certificate; still checks the handshake signatures made with its key.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Which probe of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Failing restarts the container.
    Liveness,
    /// Failing takes the pod out of its Services' endpoints.
    Readiness,
    /// Until it succeeds, the other two do not run; failing restarts the container.
    Startup,
}

/// A probe's timing and thresholds (the fields of a `Probe`), with the Kubernetes defaults
/// (0, 10, 1, 1, 3). Values below the minimum (1 for all but the initial delay) count as the
/// default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTiming {
    /// Seconds after the container started before the first check.
    pub initial_delay_seconds: i32,
    /// Seconds between checks.
    pub period_seconds: i32,
    /// Seconds a check may take.
    pub timeout_seconds: i32,
    /// Consecutive successes that make a failed probe succeed.
    pub success_threshold: i32,
    /// Consecutive failures that make a succeeded probe fail.
    pub failure_threshold: i32,
}

impl Default for ProbeTiming {
    fn default() -> Self {
        ProbeTiming {
            initial_delay_seconds: 0,
            period_seconds: 10,
            timeout_seconds: 1,
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
}

impl ProbeTiming {
    /// The timing of a Kubernetes `Probe`, defaults for the fields it leaves out.
    pub fn from_probe(probe: &k8s_openapi::api::core::v1::Probe) -> Self {
        let d = ProbeTiming::default();
        ProbeTiming {
            initial_delay_seconds: probe.initial_delay_seconds.unwrap_or(d.initial_delay_seconds),
            period_seconds: probe.period_seconds.unwrap_or(d.period_seconds),
            timeout_seconds: probe.timeout_seconds.unwrap_or(d.timeout_seconds),
            success_threshold: probe.success_threshold.unwrap_or(d.success_threshold),
            failure_threshold: probe.failure_threshold.unwrap_or(d.failure_threshold),
        }
    }

    fn at_least_one(value: i32, default: i32) -> u32 {
        u32::try_from(if value >= 1 { value } else { default }).unwrap_or(1)
    }

    /// The delay before the first check.
    pub fn initial_delay(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.initial_delay_seconds).unwrap_or(0))
    }

    /// The time between checks.
    pub fn period(&self) -> Duration {
        Duration::from_secs(u64::from(Self::at_least_one(self.period_seconds, 10)))
    }

    /// The time a check may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(Self::at_least_one(self.timeout_seconds, 1)))
    }

    fn success_threshold(&self) -> u32 {
        Self::at_least_one(self.success_threshold, 1)
    }

    fn failure_threshold(&self) -> u32 {
        Self::at_least_one(self.failure_threshold, 3)
    }
}

/// The state of one probe of one container instance, as upstream's probe worker keeps it: the
/// agent asks [`ProbeState::should_probe`] every period, runs the check if so and hands the
/// outcome to [`ProbeState::record`], which says when the probe's result flips.
///
/// Initial results: readiness `false`, liveness `true`, startup unknown (`None`). A result
/// changes after `success_threshold` consecutive successes or `failure_threshold` consecutive
/// failures. A liveness or startup probe that fails stops (is "on hold") until [`reset`] for the
/// container's next instance, as the container is going to be restarted.
///
/// [`reset`]: ProbeState::reset
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeState {
    kind: ProbeKind,
    timing: ProbeTiming,
    result: Option<bool>,
    last: Option<bool>,
    run: u32,
    on_hold: bool,
}

impl ProbeState {
    /// A probe of a new container instance.
    pub fn new(kind: ProbeKind, timing: ProbeTiming) -> Self {
        let result = match kind {
            ProbeKind::Liveness => Some(true),
            ProbeKind::Readiness => Some(false),
            ProbeKind::Startup => None,
        };
        ProbeState { kind, timing, result, last: None, run: 0, on_hold: false }
    }

    /// Which probe this is.
    pub fn kind(&self) -> ProbeKind {
        self.kind
    }

    /// The timing it was made with.
    pub fn timing(&self) -> &ProbeTiming {
        &self.timing
    }

    /// The current result: `Some(true)` succeeded (ready, alive, started), `Some(false)` failed,
    /// `None` not known yet (a startup probe before its first verdict).
    pub fn result(&self) -> Option<bool> {
        self.result
    }

    /// Whether a check is due now, the container having run for `running_for` and `started`
    /// saying whether it has started (its startup probe succeeded, or it has none). Startup
    /// probes run only before, the others only after; none before the initial delay (whole
    /// seconds, as upstream) nor while on hold.
    pub fn should_probe(&self, running_for: Duration, started: bool) -> bool {
        let delay = u64::try_from(self.timing.initial_delay_seconds).unwrap_or(0);
        !self.on_hold && running_for.as_secs() >= delay && (self.kind == ProbeKind::Startup) != started
    }

    /// Takes a check's outcome; returns the new result when it changes.
    pub fn record(&mut self, outcome: &ProbeOutcome) -> Option<bool> {
        if self.on_hold {
            return None;
        }
        let success = outcome.is_success();
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let threshold =
            if success { self.timing.success_threshold() } else { self.timing.failure_threshold() };
        if self.run < threshold {
            return None;
        }
        let changed = self.result != Some(success);
        self.result = Some(success);
        if !success && self.kind != ProbeKind::Readiness {
            self.on_hold = true;
            self.run = 0;
        }
        changed.then_some(success)
    }

    /// Back to the initial state, for the container's next instance.
    pub fn reset(&mut self) {
        *self = ProbeState::new(self.kind, self.timing.clone());
    }
}

#[cfg(test)]
mod tests;
