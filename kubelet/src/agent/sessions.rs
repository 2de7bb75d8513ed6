//! The node side of logs, exec, attach and port-forward sessions (see
//! `capstan_bus::sessions`): checks the request against the pod as this node runs it, then
//! moves bytes between the session and a log file, a process in a container, or a TCP
//! connection to the pod.

use super::{ContainerView, Deps};
use crate::logs::LogOptions;
use capstan_bus::sessions::{FrameBody, FrameSender, Incoming, SessionKind};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

struct Target {
    id: Option<String>,
    log: std::path::PathBuf,
    previous_log: Option<std::path::PathBuf>,
    done: tokio::sync::watch::Receiver<bool>,
    ip: Option<std::net::IpAddr>,
    tty: bool,
}

/// Finds the pod and container a request names, or the Status to reject it with.
fn target(deps: &Deps, incoming: &Incoming) -> Result<Target, (u16, &'static str, String)> {
    let r = &incoming.request;
    let views = deps.views.lock().unwrap_or_else(|e| e.into_inner());
    let Some(view) = views.get(&format!("{}/{}", r.namespace, r.pod)) else {
        return Err((404, "NotFound", format!("pod {:?} is not running on node {}", r.pod, deps.node)));
    };
    if r.uid.as_ref().is_some_and(|u| *u != view.uid) {
        return Err((
            404,
            "NotFound",
            format!(
                "pod {:?} with uid {} is not on node {}",
                r.pod,
                r.uid.as_deref().unwrap_or(""),
                deps.node
            ),
        ));
    }
    let ip = view.ip;
    let pick = |c: &ContainerView| Target {
        id: c.id.clone(),
        log: c.log.clone(),
        previous_log: c.previous_log.clone(),
        done: c.done.clone(),
        ip,
        tty: c.tty,
    };
    if matches!(r.kind, SessionKind::PortForward) {
        return match view.containers.first() {
            Some(c) => Ok(pick(c)),
            None => Err((400, "BadRequest", format!("pod {} has no containers", r.pod))),
        };
    }
    let name =
        r.container.clone().or_else(|| view.containers.last().map(|c| c.name.clone())).unwrap_or_default();
    match view.containers.iter().find(|c| c.name == name) {
        Some(c) => Ok(pick(c)),
        None => Err((400, "BadRequest", format!("container {name} is not valid for pod {}", r.pod))),
    }
}

/// Serves one session request.
pub async fn handle(deps: Arc<Deps>, incoming: Incoming) {
    if let SessionKind::NodeProxy { method, path } = incoming.request.kind.clone() {
        return node_proxy(&deps, incoming, &method, &path).await;
    }
    let t = match target(&deps, &incoming) {
        Ok(t) => t,
        Err((code, reason, message)) => {
            let _ = incoming.reject(code, reason, message).await;
            return;
        }
    };
    let req = incoming.request.clone();
    let container = req.container.clone().unwrap_or_default();
    match req.kind.clone() {
        SessionKind::Log {
            follow,
            tail_lines,
            timestamps,
            previous,
            since_seconds,
            since_time,
            limit_bytes,
        } => {
            let path = if previous {
                match t.previous_log.clone().filter(|p| p.exists()) {
                    Some(p) => p,
                    None => {
                        let msg = format!(
                            "previous terminated container {container:?} in pod {:?} not found",
                            req.pod
                        );
                        let _ = incoming.reject(400, "BadRequest", msg).await;
                        return;
                    }
                }
            } else if t.log.exists() {
                t.log.clone()
            } else {
                let msg = format!(
                    "container {container:?} in pod {:?} is waiting to start: ContainerCreating",
                    req.pod
                );
                let _ = incoming.reject(400, "BadRequest", msg).await;
                return;
            };
            let since = since_time.and_then(|s| s.parse::<jiff::Timestamp>().ok()).or_else(|| {
                since_seconds.map(|s| jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s))
            });
            let opts = LogOptions { follow: follow && !previous, tail_lines, timestamps, since, limit_bytes };
            let done = if previous { tokio::sync::watch::channel(true).1 } else { t.done.clone() };
            let Ok(mut session) = incoming.accept().await else { return };
            let mut stream = Box::pin(crate::logs::stream_log(path, opts, done));
            loop {
                tokio::select! {
                    chunk = stream.next() => match chunk {
                        Some(Ok(bytes)) => {
                            if session.tx.send_data(1, &bytes).await.is_err() {
                                break;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::debug!("log read failed: {e}");
                            break;
                        }
                        None => break,
                    },
                    frame = session.rx.recv() => match frame {
                        Some(FrameBody::End) | None => return,
                        _ => {}
                    },
                }
            }
            let _ = session.tx.send(FrameBody::End).await;
        }
        SessionKind::Exec { command, stdin, tty, .. } => {
            let Some(id) = t.id.clone() else {
                let msg = format!("container {container:?} in pod {:?} is not running", req.pod);
                let _ = incoming.reject(400, "BadRequest", msg).await;
                return;
            };
            if command.is_empty() {
                let _ = incoming
                    .reject(400, "BadRequest", "you must specify at least one command for the container")
                    .await;
                return;
            }
            let spec = crate::runtime::ExecSpec { args: command, stdin, tty, ..Default::default() };
            let mut proc = match deps.runtime.exec(&id, &spec).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = incoming
                        .reject(500, "InternalError", format!("failed to exec in container: {e}"))
                        .await;
                    return;
                }
            };
            let Ok(mut session) = incoming.accept().await else { return };
            let mut readers = Vec::new();
            if let Some(out) = proc.stdout.take() {
                readers.push(tokio::spawn(copy_out(out, session.tx.clone(), 1)));
            }
            if let Some(err) = proc.stderr.take() {
                readers.push(tokio::spawn(copy_out(err, session.tx.clone(), if tty { 1 } else { 2 })));
            }
            // With a terminal, its output (stdout and stderr in one) is stream 1 and the
            // client's stdin is typed into it.
            let mut terminal = proc.terminal.take();
            if let Some(t) = &terminal {
                match t.try_clone() {
                    Ok(output) => readers.push(tokio::spawn(copy_out(output, session.tx.clone(), 1))),
                    Err(e) => tracing::warn!("reading the exec terminal: {e}"),
                }
            }
            let mut child_stdin = proc.stdin.take();
            let mut client_gone = false;
            let wait = proc.wait();
            tokio::pin!(wait);
            let code = loop {
                tokio::select! {
                    code = &mut wait => break code,
                    frame = session.rx.recv(), if !client_gone => match frame {
                        Some(FrameBody::Data { stream: 0, data }) => {
                            if let Some(w) = child_stdin.as_mut() {
                                if w.write_all(&data).await.is_err() {
                                    child_stdin = None;
                                }
                            }
                            if let Some(t) = terminal.as_mut() {
                                if let Err(e) = t.write_all(&data).await {
                                    tracing::debug!("typing into the exec terminal: {e}");
                                }
                            }
                        }
                        // A terminal has no end of input to pass on (a typed ^D is data).
                        Some(FrameBody::Close { stream: 0 }) => child_stdin = None,
                        Some(FrameBody::Resize { width, height }) => {
                            if let Some(t) = &terminal {
                                if let Err(e) = t.resize(width, height) {
                                    tracing::debug!("resizing the exec terminal: {e}");
                                }
                            }
                        }
                        Some(FrameBody::End) | None => {
                            // The client went away: the process gets EOF (or, on a terminal,
                            // a hangup) and its output goes nowhere.
                            client_gone = true;
                            child_stdin = None;
                            if let Some(t) = &terminal {
                                t.hang_up();
                            }
                        }
                        _ => {}
                    },
                }
            };
            for r in readers {
                let _ = r.await;
            }
            let (code, message) = match code {
                Ok(c) => (c, None),
                Err(e) => (126, Some(e.to_string())),
            };
            let _ = session.tx.send(FrameBody::Exit { code, message }).await;
            let _ = session.tx.send(FrameBody::End).await;
        }
        SessionKind::Attach { stdin, .. } => {
            if t.id.is_none() {
                let msg = format!("container {container:?} in pod {:?} is not running", req.pod);
                let _ = incoming.reject(400, "BadRequest", msg).await;
                return;
            }
            let Ok(mut session) = incoming.accept().await else { return };
            let opts = LogOptions {
                follow: true,
                tail_lines: Some(0),
                timestamps: false,
                since: None,
                limit_bytes: None,
            };
            let mut stream = Box::pin(crate::logs::stream_log(t.log.clone(), opts, t.done.clone()));
            let mut fifo = None;
            if stdin {
                if let Some(id) = t.id.as_deref() {
                    fifo = deps.runtime.open_stdin(id).await.ok();
                }
            }
            loop {
                tokio::select! {
                    chunk = stream.next() => match chunk {
                        Some(Ok(bytes)) => {
                            if session.tx.send_data(1, &bytes).await.is_err() {
                                break;
                            }
                        }
                        _ => break,
                    },
                    frame = session.rx.recv() => match frame {
                        Some(FrameBody::Data { stream: 0, data }) => {
                            if let Some(f) = fifo.as_mut() {
                                if f.write_all(&data).await.is_err() {
                                    fifo = None;
                                }
                            }
                        }
                        Some(FrameBody::Close { stream: 0 }) => fifo = None,
                        Some(FrameBody::Resize { width, height }) if t.tty => {
                            if let Some(id) = t.id.as_deref() {
                                if let Err(e) = deps.runtime.resize(id, width, height).await {
                                    tracing::debug!("resizing the terminal of {id}: {e}");
                                }
                            }
                        }
                        Some(FrameBody::End) | None => return,
                        _ => {}
                    },
                }
            }
            let _ = session.tx.send(FrameBody::Exit { code: 0, message: None }).await;
            let _ = session.tx.send(FrameBody::End).await;
        }
        SessionKind::NodeProxy { .. } => {}
        SessionKind::PortForward => {
            let Some(ip) = t.ip else {
                let _ = incoming
                    .reject(400, "BadRequest", format!("pod {} has no IP address yet", req.pod))
                    .await;
                return;
            };
            let Ok(session) = incoming.accept().await else { return };
            port_forward(ip, session).await;
        }
    }
}

/// Where `/logs/` is served from, as upstream's kubelet.
const LOG_DIR: &str = "/var/log";

/// `nodes/proxy`: the agent's own endpoints, as upstream's kubelet serves them: `/healthz`,
/// `/metrics` (this process's Prometheus metrics), `/metrics/resource` (resource usage,
/// `usage.rs`), `/stats/summary` (the Summary API, `summary.rs`; 503 before the first
/// sample) and `/logs/` (files and directories under
/// `/var/log`, listed as Go's file server lists them). Anything else is 404.
async fn node_proxy(deps: &Deps, incoming: Incoming, method: &str, path: &str) {
    if method != "GET" && method != "HEAD" {
        let _ =
            incoming.reject(405, "MethodNotAllowed", format!("{method} is not supported on {path}")).await;
        return;
    }
    let (code, content_type, body): (u16, &str, Vec<u8>) = match path {
        "/healthz" => (200, "text/plain; charset=utf-8", b"ok".to_vec()),
        "/metrics" => (200, capstan_metrics::CONTENT_TYPE, capstan_metrics::render().into_bytes()),
        "/metrics/resource" => {
            (200, capstan_metrics::CONTENT_TYPE, super::usage::resource_metrics().into_bytes())
        }
        "/stats/summary" | "/stats/summary/" => match super::usage::summary(deps) {
            Some(v) => (200, "application/json", serde_json::to_vec_pretty(&v).unwrap_or_default()),
            None => (503, "text/plain; charset=utf-8", b"no stats sampled yet\n".to_vec()),
        },
        p if p == "/logs" || p.starts_with("/logs/") => match log_file(p.trim_start_matches("/logs")).await {
            Some(r) => r,
            None => (404, "text/plain; charset=utf-8", b"404 page not found\n".to_vec()),
        },
        _ => (404, "text/plain; charset=utf-8", b"404 page not found\n".to_vec()),
    };
    let Ok(mut session) = incoming.accept().await else { return };
    let head = serde_json::json!({"code": code, "contentType": content_type}).to_string();
    if session.tx.send_data(0, head.as_bytes()).await.is_err() {
        return;
    }
    if method == "GET" {
        for chunk in body.chunks(64 * 1024) {
            if session.tx.send_data(1, chunk).await.is_err() {
                return;
            }
        }
    }
    let _ = session.tx.send(FrameBody::End).await;
    // The opener ends too; nothing more to read.
    while let Some(f) = session.rx.recv().await {
        if matches!(f, FrameBody::End) {
            break;
        }
    }
}

/// A file under [`LOG_DIR`], or a directory's listing; `None` when there is none (or the
/// path tries to leave the directory).
async fn log_file(rel: &str) -> Option<(u16, &'static str, Vec<u8>)> {
    if rel.split('/').any(|s| s == "..") {
        return None;
    }
    let path = std::path::Path::new(LOG_DIR).join(rel.trim_start_matches('/'));
    let meta = tokio::fs::metadata(&path).await.ok()?;
    if meta.is_file() {
        // Bounded: the last 8 MiB of a large file.
        const MAX: u64 = 8 << 20;
        let mut f = tokio::fs::File::open(&path).await.ok()?;
        if meta.len() > MAX {
            use tokio::io::AsyncSeekExt;
            f.seek(std::io::SeekFrom::Start(meta.len() - MAX)).await.ok()?;
        }
        let mut body = Vec::new();
        f.read_to_end(&mut body).await.ok()?;
        return Some((200, "text/plain; charset=utf-8", body));
    }
    let mut names = Vec::new();
    let mut dir = tokio::fs::read_dir(&path).await.ok()?;
    while let Ok(Some(e)) = dir.next_entry().await {
        let mut n = e.file_name().to_string_lossy().into_owned();
        if e.file_type().await.is_ok_and(|t| t.is_dir()) {
            n.push('/');
        }
        names.push(n);
    }
    names.sort();
    let mut html =
        String::from("<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n");
    for n in names {
        let esc = n.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&#34;");
        html.push_str(&format!("<a href=\"{esc}\">{esc}</a>\n"));
    }
    html.push_str("</pre>\n");
    Some((200, "text/html; charset=utf-8", html.into_bytes()))
}

async fn copy_out(mut r: impl tokio::io::AsyncRead + Unpin, tx: FrameSender, stream: u32) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send_data(stream, &buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Relays each forwarded connection (stream) to `ip:port` inside the pod's network.
async fn port_forward(ip: std::net::IpAddr, mut session: capstan_bus::sessions::Session) {
    let mut writers: HashMap<u32, mpsc::UnboundedSender<Option<Vec<u8>>>> = HashMap::new();
    while let Some(frame) = session.rx.recv().await {
        match frame {
            FrameBody::Open { stream, port } => {
                let (wtx, mut wrx) = mpsc::unbounded_channel::<Option<Vec<u8>>>();
                writers.insert(stream, wtx);
                let tx = session.tx.clone();
                tokio::spawn(async move {
                    let conn = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        tokio::net::TcpStream::connect((ip, port)),
                    )
                    .await;
                    let sock = match conn {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            let message = format!("error forwarding port {port} to pod {ip}: {e}");
                            let _ = tx.send(FrameBody::Error { stream, message }).await;
                            return;
                        }
                        Err(_) => {
                            let message =
                                format!("error forwarding port {port} to pod {ip}: connection timed out");
                            let _ = tx.send(FrameBody::Error { stream, message }).await;
                            return;
                        }
                    };
                    let (mut rd, mut wr) = sock.into_split();
                    let reader = {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            copy_out(&mut rd, tx.clone(), stream).await;
                            let _ = tx.send(FrameBody::Close { stream }).await;
                        })
                    };
                    while let Some(item) = wrx.recv().await {
                        match item {
                            Some(data) => {
                                if wr.write_all(&data).await.is_err() {
                                    break;
                                }
                            }
                            None => {
                                let _ = wr.shutdown().await;
                                break;
                            }
                        }
                    }
                    let _ = reader.await;
                });
            }
            FrameBody::Data { stream, data } => {
                if let Some(w) = writers.get(&stream) {
                    let _ = w.send(Some(data));
                }
            }
            FrameBody::Close { stream } => {
                if let Some(w) = writers.remove(&stream) {
                    let _ = w.send(None);
                }
            }
            FrameBody::End => break,
            _ => {}
        }
    }
}
