//! Node sessions: the byte streams of `pods/log`, `exec`, `attach` and `portforward`
//! between a gateway and the node agent that runs the pod (DESIGN.md §2, node-directed
//! traffic). The gateway never needs a network route to a node.
//!
//! # Protocol (version `v1`; see `docs/BUS.md`)
//!
//! 1. The opener (a gateway) picks a unique session id, subscribes to
//!    [`session_down`]`(node, id)`, and sends a [`SessionRequest`] as a request on
//!    [`node_sessions`]`(node)`.
//! 2. The node answers with a [`SessionReply`]: `Rejected` carries the HTTP status the
//!    gateway returns (e.g. 400 "container x is not valid for pod y"); `Accepted` is sent
//!    only after the node subscribed to [`session_up`]`(node, id)`, so no frame is lost.
//! 3. Both sides then send [`Frame`]s (msgpack, named fields) on their subject: the opener
//!    on `up`, the node on `down`. Frames carry a per-direction sequence number from 1; a
//!    receiver that sees a gap ends the session with an error (core NATS is at most once).
//! 4. Either side ends the session with [`FrameBody::End`]. Both sides send
//!    [`FrameBody::Ping`] every [`PING_INTERVAL`]; a side that hears nothing for
//!    [`IDLE_TIMEOUT`] treats the session as ended (the peer died).
//!
//! Streams inside a session are numbered by the session kind: for exec and attach,
//! 0 = stdin, 1 = stdout, 2 = stderr (the channel numbers of `v5.channel.k8s.io`); for logs,
//! 1 = the log bytes; for port-forward, one stream per forwarded connection, opened by the
//! opener with [`FrameBody::Open`].

use crate::subjects::PREFIX;
use crate::{Bus, Error, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often each side pings an idle session.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long a side waits without hearing anything before it gives the session up.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest data payload a sender should put into one frame.
pub const MAX_CHUNK: usize = 32 * 1024;

/// The subject a node agent serves session requests on.
pub fn node_sessions(node: &str) -> String {
    format!("{PREFIX}.node.{}.sessions", node.replace('.', "_"))
}

/// The subject the opener sends frames on. Session subjects live under the node's own
/// subjects, so the bus permissions that confine a node's credential to
/// `capstan.v1.node.<node>.…` keep it out of every other node's sessions.
pub fn session_up(node: &str, id: &str) -> String {
    format!("{PREFIX}.node.{}.session.{id}.up", node.replace('.', "_"))
}

/// The subject the node sends frames on.
pub fn session_down(node: &str, id: &str) -> String {
    format!("{PREFIX}.node.{}.session.{id}.down", node.replace('.', "_"))
}

/// What a session is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum SessionKind {
    /// `pods/log`.
    #[serde(rename_all = "camelCase")]
    Log {
        /// Keep streaming until the container stops.
        follow: bool,
        /// Only the last N lines.
        tail_lines: Option<i64>,
        /// Prefix each line with its timestamp.
        timestamps: bool,
        /// The previous (terminated) instance of the container.
        previous: bool,
        /// Only lines newer than this many seconds.
        since_seconds: Option<i64>,
        /// Only lines at or after this RFC 3339 time.
        since_time: Option<String>,
        /// Stop after this many bytes.
        limit_bytes: Option<i64>,
    },
    /// `pods/exec`.
    #[serde(rename_all = "camelCase")]
    Exec {
        /// The command and its arguments.
        command: Vec<String>,
        /// Whether the client sends stdin.
        stdin: bool,
        /// Whether the client wants stdout.
        stdout: bool,
        /// Whether the client wants stderr.
        stderr: bool,
        /// Whether a terminal was asked for.
        tty: bool,
    },
    /// `pods/attach`.
    #[serde(rename_all = "camelCase")]
    Attach {
        /// Whether the client sends stdin.
        stdin: bool,
        /// Whether the client wants stdout.
        stdout: bool,
        /// Whether the client wants stderr.
        stderr: bool,
        /// Whether a terminal was asked for.
        tty: bool,
    },
    /// `pods/portforward`.
    PortForward,
    /// `nodes/proxy`: one request to the node agent's own endpoints (`/healthz`,
    /// `/metrics`, `/logs/...`). The agent answers with a JSON head
    /// `{"code": .., "contentType": ..}` on stream 0, the body on stream 1, then `End`. The
    /// request's `namespace` and `pod` are empty.
    #[serde(rename_all = "camelCase")]
    NodeProxy {
        /// The HTTP method.
        method: String,
        /// The path on the node, with its leading `/` (no query).
        path: String,
    },
}

/// A session request, sent by the opener on [`node_sessions`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRequest {
    /// The session id (unique; a NATS token: letters, digits, `-`).
    pub session: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's uid as the opener saw it (the node rejects a different pod of that name).
    pub uid: Option<String>,
    /// The container (already defaulted by the opener when the pod has one).
    pub container: Option<String>,
    /// What the session is for.
    #[serde(flatten)]
    pub kind: SessionKind,
}

/// The node's answer to a [`SessionRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum SessionReply {
    /// The node subscribed to the `up` subject; frames may flow.
    Accepted,
    /// The node refused; the gateway answers with this HTTP status.
    Rejected {
        /// HTTP status code.
        code: u16,
        /// Kubernetes Status reason (`BadRequest`, `NotFound`...).
        reason: String,
        /// A message a person can act on.
        message: String,
    },
}

/// One frame of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// Sequence number, from 1, per direction.
    pub seq: u64,
    /// The content.
    pub body: FrameBody,
}

/// The content of a frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum FrameBody {
    /// Bytes on a stream.
    Data {
        /// The stream.
        stream: u32,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The sender will write no more on this stream (EOF).
    Close {
        /// The stream.
        stream: u32,
    },
    /// Port-forward: the opener starts a connection to `port` as `stream`.
    Open {
        /// The new stream.
        stream: u32,
        /// The pod's port.
        port: u16,
    },
    /// Port-forward: the connection on `stream` failed.
    Error {
        /// The stream.
        stream: u32,
        /// Why.
        message: String,
    },
    /// Terminal size (exec and attach with a tty).
    Resize {
        /// Columns.
        width: u16,
        /// Rows.
        height: u16,
    },
    /// Exec and attach: the process ended with this exit code (0 = success); `message`
    /// explains a failure to run it at all.
    Exit {
        /// Exit code.
        code: i32,
        /// Why the process could not run, if it could not.
        message: Option<String>,
    },
    /// Keep-alive.
    Ping,
    /// The session is over.
    End,
}

/// Why opening a session failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The node refused, with this HTTP status.
    #[error("{message}")]
    Rejected {
        /// HTTP status code.
        code: u16,
        /// Status reason.
        reason: String,
        /// Message.
        message: String,
    },
    /// No agent serves the node, or it did not answer.
    #[error("the node agent of {node} is not reachable: {cause}")]
    Unreachable {
        /// The node.
        node: String,
        /// The bus error.
        cause: Error,
    },
}

/// Sends frames on one direction of a session. Cheap to clone.
#[derive(Clone)]
pub struct FrameSender {
    bus: Arc<dyn Bus>,
    subject: Arc<str>,
    /// The last sequence number sent; held across the publish so that frames from
    /// concurrent tasks (stdout and stderr readers) leave in sequence order.
    seq: Arc<tokio::sync::Mutex<u64>>,
}

impl FrameSender {
    fn new(bus: Arc<dyn Bus>, subject: String) -> FrameSender {
        FrameSender { bus, subject: subject.into(), seq: Arc::new(tokio::sync::Mutex::new(0)) }
    }

    /// Sends one frame.
    pub async fn send(&self, body: FrameBody) -> Result<()> {
        let mut seq = self.seq.lock().await;
        let bytes = rmp_serde::to_vec_named(&Frame { seq: *seq + 1, body })
            .map_err(|e| Error::Encode(e.to_string()))?;
        self.bus.publish(self.subject.to_string(), Bytes::from(bytes)).await?;
        *seq += 1;
        Ok(())
    }

    /// Sends `data` on `stream`, split into frames of at most [`MAX_CHUNK`] bytes.
    pub async fn send_data(&self, stream: u32, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(MAX_CHUNK) {
            self.send(FrameBody::Data { stream, data: chunk.to_vec() }).await?;
        }
        Ok(())
    }
}

/// One side of an open session: frames from the peer arrive on `rx` (a final
/// [`FrameBody::End`] when the peer ends it, dies or a frame was lost); `tx` sends.
pub struct Session {
    /// Frames from the peer, without pings. Ends after an `End`.
    pub rx: mpsc::Receiver<FrameBody>,
    /// Frames to the peer.
    pub tx: FrameSender,
}

/// A session request received by a node, to accept or reject.
pub struct Incoming {
    /// The request.
    pub request: SessionRequest,
    node: Arc<str>,
    bus: Arc<dyn Bus>,
    reply: Option<String>,
}

impl Incoming {
    /// Accepts: subscribes to the opener's frames, then answers `Accepted`.
    pub async fn accept(mut self) -> Result<Session> {
        let up = session_up(&self.node, &self.request.session);
        let sub = self.bus.subscribe(up.clone(), None).await?;
        let tx = FrameSender::new(self.bus.clone(), session_down(&self.node, &self.request.session));
        let rx = pump(sub, up, tx.clone());
        self.answer(&SessionReply::Accepted).await?;
        Ok(Session { rx, tx })
    }

    /// Rejects with an HTTP status.
    pub async fn reject(mut self, code: u16, reason: &str, message: impl Into<String>) -> Result<()> {
        self.answer(&SessionReply::Rejected { code, reason: reason.into(), message: message.into() }).await
    }

    async fn answer(&mut self, reply: &SessionReply) -> Result<()> {
        let Some(to) = self.reply.take() else { return Ok(()) };
        let bytes = rmp_serde::to_vec_named(reply).map_err(|e| Error::Encode(e.to_string()))?;
        self.bus.publish(to, Bytes::from(bytes)).await
    }
}

fn new_session_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}{:08x}", h.finish(), std::process::id())
}

/// Opens a session to the agent of `node`. `request.session` is replaced by a fresh id.
pub async fn open(
    bus: Arc<dyn Bus>,
    node: &str,
    mut request: SessionRequest,
    timeout: Duration,
) -> std::result::Result<Session, OpenError> {
    request.session = new_session_id();
    let unreachable = |cause| OpenError::Unreachable { node: node.to_string(), cause };
    let down = session_down(node, &request.session);
    let sub = bus.subscribe(down.clone(), None).await.map_err(unreachable)?;
    let payload = rmp_serde::to_vec_named(&request).map_err(|e| unreachable(Error::Encode(e.to_string())))?;
    let answer =
        bus.request(node_sessions(node), Bytes::from(payload), timeout).await.map_err(unreachable)?;
    let reply: SessionReply =
        rmp_serde::from_slice(&answer).map_err(|e| unreachable(Error::Decode(e.to_string())))?;
    match reply {
        SessionReply::Accepted => {
            let tx = FrameSender::new(bus, session_up(node, &request.session));
            let rx = pump(sub, down, tx.clone());
            Ok(Session { rx, tx })
        }
        SessionReply::Rejected { code, reason, message } => {
            Err(OpenError::Rejected { code, reason, message })
        }
    }
}

/// Serves session requests for `node`: calls `handler` for each, on its own task. Returns
/// once subscribed; the serving task runs until the bus closes.
pub async fn serve(
    bus: Arc<dyn Bus>,
    node: &str,
    handler: Arc<dyn Fn(Incoming) -> BoxFuture<'static, ()> + Send + Sync>,
) -> Result<()> {
    let subject = node_sessions(node);
    let mut sub = bus.subscribe(subject.clone(), None).await?;
    let node: Arc<str> = node.into();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if msg.subject != subject {
                // A JetStream push consumer can deliver stream messages here under their
                // own subject: no session request.
                tracing::warn!(subject = %msg.subject, "dropping a message that is no session request");
                continue;
            }
            let request: SessionRequest = match rmp_serde::from_slice(&msg.payload) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable session request");
                    continue;
                }
            };
            let incoming = Incoming { request, node: node.clone(), bus: bus.clone(), reply: msg.reply };
            tokio::spawn(handler(incoming));
        }
    });
    Ok(())
}

/// Forwards decoded frames from a subscription to a channel, checking sequence numbers,
/// dropping pings, pinging the peer while the channel is open, and ending the session when
/// the peer is silent for [`IDLE_TIMEOUT`].
fn pump(mut sub: crate::Subscription, subject: String, tx: FrameSender) -> mpsc::Receiver<FrameBody> {
    let (out, rx) = mpsc::channel(256);
    let pinger = {
        let out = out.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(PING_INTERVAL) => {}
                    _ = out.closed() => break,
                }
                if tx.send(FrameBody::Ping).await.is_err() {
                    break;
                }
            }
        })
    };
    tokio::spawn(async move {
        let mut expected = 1u64;
        loop {
            let msg = match tokio::time::timeout(IDLE_TIMEOUT, sub.next()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(_) => {
                    tracing::debug!("session peer silent for {IDLE_TIMEOUT:?}; ending");
                    break;
                }
            };
            if msg.subject != subject {
                // Delivered by a JetStream push consumer under its own subject: no frame.
                tracing::warn!(subject = %msg.subject, "dropping a message that is no session frame");
                continue;
            }
            let frame: Frame = match rmp_serde::from_slice(&msg.payload) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable session frame; ending the session");
                    break;
                }
            };
            if frame.seq != expected {
                tracing::warn!(expected, got = frame.seq, "session frame lost; ending the session");
                break;
            }
            expected += 1;
            match frame.body {
                FrameBody::Ping => continue,
                FrameBody::End => break,
                body => {
                    if out.send(body).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = out.send(FrameBody::End).await;
        pinger.abort();
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InProcBus;

    fn exec_request() -> SessionRequest {
        SessionRequest {
            session: String::new(),
            namespace: "default".into(),
            pod: "p".into(),
            uid: None,
            container: Some("c".into()),
            kind: SessionKind::Exec {
                command: vec!["cat".into()],
                stdin: true,
                stdout: true,
                stderr: true,
                tty: false,
            },
        }
    }

    #[tokio::test]
    async fn echo_session_and_rejection() {
        let bus: Arc<dyn Bus> = Arc::new(InProcBus::new());
        serve(
            bus.clone(),
            "node-1",
            Arc::new(|incoming: Incoming| {
                Box::pin(async move {
                    if incoming.request.pod != "p" {
                        let msg = format!("pods \"{}\" not found", incoming.request.pod);
                        incoming.reject(404, "NotFound", msg).await.unwrap();
                        return;
                    }
                    let mut s = incoming.accept().await.unwrap();
                    while let Some(f) = s.rx.recv().await {
                        match f {
                            FrameBody::Data { stream: 0, data } => s.tx.send_data(1, &data).await.unwrap(),
                            FrameBody::Close { stream: 0 } => {
                                s.tx.send(FrameBody::Exit { code: 3, message: None }).await.unwrap();
                                s.tx.send(FrameBody::End).await.unwrap();
                            }
                            FrameBody::End => break,
                            _ => {}
                        }
                    }
                })
            }),
        )
        .await
        .unwrap();

        let mut s = open(bus.clone(), "node-1", exec_request(), Duration::from_secs(5)).await.unwrap();
        let big = vec![7u8; MAX_CHUNK * 2 + 5];
        s.tx.send_data(0, &big).await.unwrap();
        s.tx.send(FrameBody::Close { stream: 0 }).await.unwrap();
        let mut got = Vec::new();
        let mut exit = None;
        while let Some(f) = s.rx.recv().await {
            match f {
                FrameBody::Data { stream: 1, data } => got.extend(data),
                FrameBody::Exit { code, .. } => exit = Some(code),
                FrameBody::End => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, big);
        assert_eq!(exit, Some(3));

        let mut req = exec_request();
        req.pod = "q".into();
        match open(bus.clone(), "node-1", req, Duration::from_secs(5)).await {
            Err(OpenError::Rejected { code: 404, message, .. }) => assert!(message.contains("\"q\"")),
            other => panic!("unexpected {:?}", other.err()),
        }
        match open(bus, "node-2", exec_request(), Duration::from_secs(1)).await {
            Err(OpenError::Unreachable { node, .. }) => assert_eq!(node, "node-2"),
            other => panic!("unexpected {:?}", other.err()),
        }
    }

    #[test]
    fn frames_round_trip() {
        for body in [
            FrameBody::Data { stream: 3, data: vec![0, 1, 255] },
            FrameBody::Open { stream: 1, port: 80 },
            FrameBody::Exit { code: 137, message: Some("x".into()) },
            FrameBody::End,
        ] {
            let f = Frame { seq: 9, body };
            let bytes = rmp_serde::to_vec_named(&f).unwrap();
            assert_eq!(rmp_serde::from_slice::<Frame>(&bytes).unwrap(), f);
        }
        let r = exec_request();
        let bytes = rmp_serde::to_vec_named(&r).unwrap();
        assert_eq!(rmp_serde::from_slice::<SessionRequest>(&bytes).unwrap(), r);
    }
}
