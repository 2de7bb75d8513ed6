//! A small HTTPS/1.1 keep-alive client for capstan.
//!
//! One [`Connection`] is one TLS connection carrying sequential requests. Responses are
//! framed by `Content-Length`, `Transfer-Encoding: chunked` or the end of the connection;
//! [`Connection::stream`] hands the body over piece by piece (for watches, line by line).
//! [`Connection::send_raw`] writes arbitrary bytes, even invalid HTTP, and
//! [`Connection::read_response`] reads whatever answer comes back.
//!
//! TLS is rustls with the `ring` provider only; the CA and the client certificate come from
//! a kubeconfig ([`Kubeconfig`]). [`Connection::plain`] speaks the same HTTP/1.1 over plain
//! TCP, for local peers such as etcd's HTTP/JSON gateway.

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Largest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_LINE: usize = 4096;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or lacks something.
    #[error("invalid kubeconfig: {0}")]
    Kubeconfig(String),
    /// TLS set-up failed.
    #[error("tls: {0}")]
    Tls(String),
    /// A socket operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server's answer is not valid HTTP/1.1.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server closed the connection before a complete response.
    #[error("connection closed by the server")]
    Closed,
}

/// Result of the client.
pub type Result<T> = std::result::Result<T, Error>;

/// What a kubeconfig says about reaching the server of its current context.
#[derive(Debug, Clone)]
pub struct Kubeconfig {
    /// Server URL (`https://host:port`).
    pub server: String,
    /// PEM of the certificate authority.
    pub ca_pem: Vec<u8>,
    /// PEM of the client certificate, if any.
    pub client_cert_pem: Option<Vec<u8>>,
    /// PEM of the client key, if any.
    pub client_key_pem: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct RawKubeconfig {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context", default)]
    current_context: String,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    cluster: RawCluster,
}

#[derive(Deserialize)]
struct RawCluster {
    server: String,
    #[serde(rename = "certificate-authority-data", default)]
    ca_data: Option<String>,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: RawUser,
}

#[derive(Deserialize, Default)]
struct RawUser {
    #[serde(rename = "client-certificate-data", default)]
    cert_data: Option<String>,
    #[serde(rename = "client-key-data", default)]
    key_data: Option<String>,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: RawContext,
}

#[derive(Deserialize)]
struct RawContext {
    cluster: String,
    #[serde(default)]
    user: String,
}

fn b64(what: &str, s: &str) -> Result<Vec<u8>> {
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean)
        .map_err(|e| Error::Kubeconfig(format!("{what} is not valid base64: {e}")))
}

impl Kubeconfig {
    /// Reads and parses a kubeconfig file.
    pub fn load(path: &Path) -> Result<Kubeconfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Kubeconfig(format!("failed to read {}: {e}", path.display())))?;
        Kubeconfig::parse(&text)
    }

    /// Parses kubeconfig YAML and resolves its current context (or its only cluster and user).
    pub fn parse(text: &str) -> Result<Kubeconfig> {
        let raw: RawKubeconfig =
            serde_yaml_ng::from_str(text).map_err(|e| Error::Kubeconfig(format!("not valid yaml: {e}")))?;
        let ctx = raw.contexts.iter().find(|c| c.name == raw.current_context).map(|c| &c.context);
        let cluster = match ctx {
            Some(c) => raw.clusters.iter().find(|n| n.name == c.cluster),
            None => raw.clusters.first(),
        }
        .ok_or_else(|| Error::Kubeconfig("no cluster for the current context".into()))?;
        let user = match ctx {
            Some(c) => raw.users.iter().find(|n| n.name == c.user),
            None => raw.users.first(),
        };
        let ca = cluster
            .cluster
            .ca_data
            .as_deref()
            .ok_or_else(|| Error::Kubeconfig("no certificate-authority-data".into()))?;
        let (cert, key) = match user {
            Some(u) => (
                u.user.cert_data.as_deref().map(|s| b64("client-certificate-data", s)).transpose()?,
                u.user.key_data.as_deref().map(|s| b64("client-key-data", s)).transpose()?,
            ),
            None => (None, None),
        };
        Ok(Kubeconfig {
            server: cluster.cluster.server.clone(),
            ca_pem: b64("certificate-authority-data", ca)?,
            client_cert_pem: cert,
            client_key_pem: key,
        })
    }

    /// The same server and CA without a client certificate (an anonymous client).
    pub fn without_client_cert(&self) -> Kubeconfig {
        Kubeconfig { client_cert_pem: None, client_key_pem: None, ..self.clone() }
    }
}

/// Splits `https://host:port/...` into host and port.
fn host_port(server: &str) -> Result<(String, u16)> {
    let rest = server
        .strip_prefix("https://")
        .ok_or_else(|| Error::Kubeconfig(format!("server {server:?} is not an https:// url")))?;
    let authority = rest.split('/').next().unwrap_or("");
    let bad = || Error::Kubeconfig(format!("server {server:?} has an invalid host or port"));
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once(']').ok_or_else(bad)?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad())?,
        None => 443,
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

/// Connection settings shared by all connections to one server (TLS config, address).
#[derive(Clone)]
pub struct Client {
    tls: TlsConnector,
    addr: String,
    server_name: ServerName<'static>,
    host_header: Arc<str>,
}

impl Client {
    /// Builds the TLS configuration (ring provider, the kubeconfig's CA and client certificate).
    pub fn new(kc: &Kubeconfig) -> Result<Client> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut kc.ca_pem.as_slice()) {
            let c = c.map_err(|e| Error::Tls(format!("failed to read the ca certificate: {e}")))?;
            roots.add(c).map_err(|e| Error::Tls(format!("failed to add the ca certificate: {e}")))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let mut cfg = match (&kc.client_cert_pem, &kc.client_key_pem) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert.as_slice())
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| Error::Tls(format!("failed to read the client certificate: {e}")))?;
                let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key.as_slice())
                    .map_err(|e| Error::Tls(format!("failed to read the client key: {e}")))?
                    .ok_or_else(|| Error::Tls("no private key in client-key-data".into()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Tls(format!("invalid client certificate: {e}")))?
            }
            _ => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let (host, port) = host_port(&kc.server)?;
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| Error::Kubeconfig(format!("invalid server name {host:?}: {e}")))?;
        let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(Client {
            tls: TlsConnector::from(Arc::new(cfg)),
            host_header: Arc::from(addr.as_str()),
            addr,
            server_name,
        })
    }

    /// Builds a client for `kc` and opens one connection.
    pub async fn connect(kc: &Kubeconfig) -> Result<Connection> {
        Client::new(kc)?.open().await
    }

    /// Opens a new TLS connection (TCP_NODELAY set).
    pub async fn open(&self) -> Result<Connection> {
        let tcp = TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        let stream = self.tls.connect(self.server_name.clone(), tcp).await?;
        Ok(Connection {
            stream: Io::Tls(Box::new(stream)),
            buf: BytesMut::with_capacity(16 * 1024),
            out: Vec::with_capacity(4096),
            host: self.host_header.clone(),
            closed: false,
        })
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How the rest of a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Length(u64),
    Chunked { left: u64, need_crlf: bool },
    UntilClose,
    Done,
}

/// A status line and headers.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

/// The bytes under a connection: TLS, or plain TCP for local peers.
enum Io {
    Tls(Box<TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One keep-alive HTTP/1.1 connection (HTTPS, or plain TCP from [`Connection::plain`]).
pub struct Connection {
    stream: Io,
    buf: BytesMut,
    out: Vec<u8>,
    host: Arc<str>,
    closed: bool,
}

impl Connection {
    /// Opens a plain-TCP keep-alive connection to `addr` (`host:port`), for local peers such
    /// as etcd's HTTP/JSON gateway.
    pub async fn plain(addr: &str) -> Result<Connection> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Connection {
            stream: Io::Plain(tcp),
            buf: BytesMut::with_capacity(16 * 1024),
            out: Vec::with_capacity(4096),
            host: Arc::from(addr),
            closed: false,
        })
    }

    /// Whether the server announced it closes the connection (or did).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sends one request and reads the whole response. `headers` override the defaults
    /// (`Host`, `User-Agent`, `Content-Length`) when they name the same header.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        let sent = self.send_request(method, path, headers, body).await;
        let resp = self.read_response(method == "HEAD").await;
        match (sent, resp) {
            (_, Ok(r)) => Ok(r),
            (Err(e), Err(_)) => Err(e),
            (Ok(()), Err(e)) => Err(e),
        }
    }

    /// Sends a request and returns its response head, leaving the body to be streamed.
    pub async fn stream(
        mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Stream> {
        self.send_request(method, path, headers, body).await?;
        let head = self.read_head().await?;
        let body = self.framing(&head, method == "HEAD")?;
        Ok(Stream { conn: self, status: head.status, headers: head.headers, body, line: BytesMut::new() })
    }

    /// Writes one request (without reading the response).
    pub async fn send_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<()> {
        let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if !has("host") {
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(self.host.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !has("user-agent") {
            out.extend_from_slice(b"User-Agent: capstan-bench/0.1\r\n");
        }
        for (k, v) in headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let framed = has("content-length") || has("transfer-encoding");
        if !framed && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH")) {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        // Small bodies go out in the same write as the head; big ones after it.
        let r = if body.len() <= 64 * 1024 {
            out.extend_from_slice(body);
            self.write_flush(&out, &[]).await
        } else {
            self.write_flush(&out, body).await
        };
        self.out = out;
        r
    }

    async fn write_flush(&mut self, a: &[u8], b: &[u8]) -> Result<()> {
        self.stream.write_all(a).await?;
        if !b.is_empty() {
            self.stream.write_all(b).await?;
        }
        self.stream.flush().await?;
        Ok(())
    }

    /// Writes arbitrary bytes to the connection (for malformed requests).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_flush(bytes, &[]).await
    }

    /// Reads one complete response (`head_request`: the request was HEAD, so no body).
    pub async fn read_response(&mut self, head_request: bool) -> Result<Response> {
        let head = self.read_head().await?;
        let mut body = self.framing(&head, head_request)?;
        let mut out = Vec::new();
        while let Some(b) = self.next_body(&mut body).await? {
            out.extend_from_slice(&b);
        }
        Ok(Response { status: head.status, headers: head.headers, body: out })
    }

    /// Reads more bytes into the buffer; `Ok(false)` at the end of the stream.
    async fn fill(&mut self) -> Result<bool> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => {
                self.closed = true;
                Ok(false)
            }
            Ok(_) => Ok(true),
            // A peer that closes without close_notify.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.closed = true;
                Ok(false)
            }
            Err(e) => {
                self.closed = true;
                Err(e.into())
            }
        }
    }

    /// Reads up to and including the next CRLF (or LF); returns the line without it.
    async fn read_line(&mut self, limit: usize) -> Result<Bytes> {
        let mut scanned = 0;
        loop {
            if let Some(i) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + i;
                let mut line = self.buf.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                return Ok(line.freeze());
            }
            scanned = self.buf.len();
            if scanned > limit {
                return Err(Error::Protocol("line too long".into()));
            }
            if !self.fill().await? {
                return Err(Error::Closed);
            }
        }
    }

    async fn read_head(&mut self) -> Result<Head> {
        loop {
            let end = loop {
                if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                    break i;
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(Error::Protocol("response head too large".into()));
                }
                if !self.fill().await? {
                    return Err(Error::Closed);
                }
            };
            let head = self.buf.split_to(end + 4);
            let text = std::str::from_utf8(&head[..end])
                .map_err(|_| Error::Protocol("response head is not utf-8".into()))?;
            let mut lines = text.split("\r\n");
            let status_line = lines.next().unwrap_or("");
            let mut parts = status_line.splitn(3, ' ');
            let version = parts.next().unwrap_or("");
            if !version.starts_with("HTTP/1.") {
                return Err(Error::Protocol(format!("bad status line {status_line:?}")));
            }
            let status: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::Protocol(format!("bad status line {status_line:?}")))?;
            let mut headers = Vec::new();
            for l in lines {
                let (k, v) =
                    l.split_once(':').ok_or_else(|| Error::Protocol(format!("bad header line {l:?}")))?;
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            if find_header(&headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
                || version == "HTTP/1.0"
            {
                self.closed = true;
            }
            return Ok(Head { status, headers });
        }
    }

    fn framing(&self, head: &Head, head_request: bool) -> Result<Body> {
        if head_request || head.status == 204 || head.status == 304 || head.status == 101 {
            return Ok(Body::Done);
        }
        if find_header(&head.headers, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            return Ok(Body::Chunked { left: 0, need_crlf: false });
        }
        match find_header(&head.headers, "content-length") {
            Some(v) => {
                v.parse().map(Body::Length).map_err(|_| Error::Protocol(format!("bad content-length {v:?}")))
            }
            None => Ok(Body::UntilClose),
        }
    }

    /// The next piece of the body, `None` at its end.
    async fn next_body(&mut self, body: &mut Body) -> Result<Option<Bytes>> {
        loop {
            match *body {
                Body::Done => return Ok(None),
                Body::Length(0) => {
                    *body = Body::Done;
                    return Ok(None);
                }
                Body::Length(n) => {
                    if self.buf.is_empty() && !self.fill().await? {
                        return Err(Error::Closed);
                    }
                    let take = (n as usize).min(self.buf.len());
                    *body = Body::Length(n - take as u64);
                    return Ok(Some(self.buf.split_to(take).freeze()));
                }
                Body::UntilClose => {
                    if self.buf.is_empty() && !self.fill().await? {
                        *body = Body::Done;
                        return Ok(None);
                    }
                    return Ok(Some(self.buf.split().freeze()));
                }
                Body::Chunked { left: _, need_crlf: true } => {
                    let l = self.read_line(MAX_LINE).await?;
                    if !l.is_empty() {
                        return Err(Error::Protocol("missing crlf after chunk".into()));
                    }
                    *body = Body::Chunked { left: 0, need_crlf: false };
                }
                Body::Chunked { left: 0, need_crlf: false } => {
                    let l = self.read_line(MAX_LINE).await?;
                    let size_text = std::str::from_utf8(&l)
                        .ok()
                        .map(|s| s.split(';').next().unwrap_or("").trim())
                        .unwrap_or("");
                    let size = u64::from_str_radix(size_text, 16)
                        .map_err(|_| Error::Protocol(format!("bad chunk size line {l:?}")))?;
                    if size == 0 {
                        // Trailers up to an empty line.
                        while !self.read_line(MAX_LINE).await?.is_empty() {}
                        *body = Body::Done;
                        return Ok(None);
                    }
                    *body = Body::Chunked { left: size, need_crlf: false };
                }
                Body::Chunked { left, need_crlf: false } => {
                    if self.buf.is_empty() && !self.fill().await? {
                        return Err(Error::Closed);
                    }
                    let take = (left as usize).min(self.buf.len());
                    let rest = left - take as u64;
                    *body = Body::Chunked { left: rest, need_crlf: rest == 0 };
                    return Ok(Some(self.buf.split_to(take).freeze()));
                }
            }
        }
    }

    /// Closes the connection (TLS close_notify, then TCP shutdown).
    pub async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response whose body is read incrementally (a watch).
pub struct Stream {
    conn: Connection,
    /// HTTP status code.
    pub status: u16,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    body: Body,
    line: BytesMut,
}

impl Stream {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The next piece of the body as it arrives; `None` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if !self.line.is_empty() {
            return Ok(Some(self.line.split().freeze()));
        }
        self.conn.next_body(&mut self.body).await
    }

    /// The next line of the body without its `\n`; a last unterminated line is returned at
    /// the end; `None` after that.
    pub async fn next_line(&mut self) -> Result<Option<Bytes>> {
        loop {
            if let Some(i) = self.line.iter().position(|&b| b == b'\n') {
                let mut l = self.line.split_to(i + 1);
                l.truncate(i);
                return Ok(Some(l.freeze()));
            }
            match self.conn.next_body(&mut self.body).await? {
                Some(b) => self.line.extend_from_slice(&b),
                None if self.line.is_empty() => return Ok(None),
                None => return Ok(Some(self.line.split().freeze())),
            }
        }
    }

    /// The connection back, once the body has been read to its end and the server keeps
    /// the connection open.
    pub fn into_connection(self) -> Option<Connection> {
        (self.body == Body::Done && self.line.is_empty() && !self.conn.closed).then_some(self.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_and_port() {
        assert_eq!(host_port("https://127.0.0.1:6443").unwrap(), ("127.0.0.1".into(), 6443));
        assert_eq!(host_port("https://[::1]:8443/x").unwrap(), ("::1".into(), 8443));
        assert_eq!(host_port("https://example.com").unwrap(), ("example.com".into(), 443));
        assert!(host_port("http://x:1").is_err());
        assert!(host_port("https://x:abc").is_err());
    }

    #[test]
    fn parses_kubeconfig() {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    certificate-authority-data: {}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b("ca"),
            b("cert"),
            b("key")
        );
        let kc = Kubeconfig::parse(&text).unwrap();
        assert_eq!(kc.server, "https://127.0.0.1:1");
        assert_eq!(kc.ca_pem, b"ca");
        assert_eq!(kc.client_cert_pem.as_deref(), Some(&b"cert"[..]));
        assert_eq!(kc.client_key_pem.as_deref(), Some(&b"key"[..]));
        assert!(kc.without_client_cert().client_cert_pem.is_none());
    }
}
