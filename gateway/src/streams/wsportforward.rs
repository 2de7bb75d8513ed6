//! `pods/portforward` over plain WebSocket: the channel protocol the official Python client
//! and older client-go speak (upstream's kubelet `portforward/websocket.go`). The ports are
//! fixed by the request (`?ports=80&ports=8080`); port *i* gets channel `2i` for its data
//! (both ways) and channel `2i+1` for its errors (server to client). Every message starts
//! with its channel byte; the first message on each channel is the port, two bytes little
//! endian. With `v4.base64.channel.k8s.io` messages are text: the channel as an ASCII digit,
//! then the bytes in base64. One connection to each port is made when the WebSocket opens;
//! the WebSocket closes when every port's connection has ended.

use super::{check_websocket, open, EndOnDrop};
use crate::auth::User;
use crate::dispatch::{Query, Target};
use crate::http::Gateway;
use crate::status::{ApiError, ApiResult};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, MessageStream};
use base64::Engine;
use capstan_bus::sessions::{FrameBody, Session, SessionKind};

/// Binary channels.
pub const V4_BINARY: &str = "v4.channel.k8s.io";
/// Text channels carrying base64.
pub const V4_BASE64: &str = "v4.base64.channel.k8s.io";
/// The most ports one request may forward (two channels each, channel numbers are bytes).
const MAX_PORTS: usize = 127;

/// The subprotocol to answer with, from the client's offer in its order (as upstream's
/// `wsstream` handshake); no offer means binary channels with no subprotocol.
pub fn negotiate(offered: &[String]) -> ApiResult<&'static str> {
    if offered.is_empty() {
        return Ok("");
    }
    offered.iter().find_map(|p| [V4_BINARY, V4_BASE64].into_iter().find(|s| s == p)).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "requested protocol(s) are not supported: [{}]; supports [{V4_BINARY} {V4_BASE64}]",
            offered.join(" ")
        ))
    })
}

/// The ports of the request: `ports` values, each possibly a comma-separated list.
pub fn ports(q: &Query) -> ApiResult<Vec<u16>> {
    let values = super::all(q, "ports");
    if values.is_empty() {
        return Err(ApiError::BadRequest("query parameter \"port\" is required".into()));
    }
    let mut ports = Vec::new();
    for v in values {
        if v.is_empty() {
            return Err(ApiError::BadRequest("query parameter \"port\" cannot be empty".into()));
        }
        for p in v.split(',') {
            let port = p
                .parse::<u16>()
                .map_err(|e| ApiError::BadRequest(format!("unable to parse {v:?} as a port: {e}")))?;
            if port < 1 {
                return Err(ApiError::BadRequest(format!("port {v:?} must be > 0")));
            }
            ports.push(port);
        }
    }
    if ports.len() > MAX_PORTS {
        return Err(ApiError::BadRequest(format!(
            "too many ports: {} (at most {MAX_PORTS} per connection)",
            ports.len()
        )));
    }
    Ok(ports)
}

/// Serves a port-forward WebSocket upgrade that asked for the channel protocol.
pub async fn serve(
    req: &HttpRequest,
    payload: web::Payload,
    gw: &Gateway,
    user: &User,
    q: &Query,
    t: &Target,
    offered: &[String],
) -> ApiResult<HttpResponse> {
    check_websocket(req)?;
    let protocol = negotiate(offered)?;
    let ports = ports(q)?;
    let (pod, node) = super::portforward::check(gw, user, t).await?;
    let session = open(gw, &node, &pod, None, SessionKind::PortForward).await?;
    let guard = EndOnDrop::new(session.tx.clone());
    let protocols: &[&str] = if protocol.is_empty() { &[] } else { &[protocol] };
    let (resp, ws, msgs) = actix_ws::handle_with_protocols(req, payload, protocols)
        .map_err(|e| ApiError::BadRequest(format!("WebSocket handshake failed: {e}")))?;
    actix_rt::spawn(relay(ws, msgs, session, guard, Channels::new(ports, protocol == V4_BASE64)));
    Ok(resp)
}

/// A message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A binary message.
    Binary(Vec<u8>),
    /// A text message (base64 channels).
    Text(String),
}

/// What one step of [`Channels`] sends.
#[derive(Debug, Default)]
pub struct Output {
    /// Messages for the client.
    pub to_client: Vec<Message>,
    /// Frames for the node.
    pub to_node: Vec<FrameBody>,
    /// Every port is done: close the WebSocket after sending the rest.
    pub done: bool,
}

/// The channels of one port-forward WebSocket: port *i* is node session stream *i*.
/// Transport-free, so that it can be tested without a network.
pub struct Channels {
    ports: Vec<u16>,
    base64: bool,
    /// Whether port *i*'s connection still runs.
    live: Vec<bool>,
}

impl Channels {
    /// The channels for `ports`.
    pub fn new(ports: Vec<u16>, base64: bool) -> Channels {
        let live = vec![true; ports.len()];
        Channels { ports, base64, live }
    }

    fn message(&self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut s = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            s.push(char::from(b'0' + channel));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Message::Text(s)
        } else {
            let mut m = Vec::with_capacity(1 + data.len());
            m.push(channel);
            m.extend_from_slice(data);
            Message::Binary(m)
        }
    }

    /// The start: each channel's port prefix to the client, one connection per port to the
    /// node.
    pub fn start(&self) -> Output {
        let mut out = Output::default();
        for (i, port) in self.ports.iter().enumerate() {
            let prefix = port.to_le_bytes();
            out.to_client.push(self.message((2 * i) as u8, &prefix));
            out.to_client.push(self.message((2 * i + 1) as u8, &prefix));
            out.to_node.push(FrameBody::Open { stream: i as u32, port: *port });
        }
        out.done = self.ports.is_empty();
        out
    }

    /// A message from the client: data for a port's connection. Messages on error
    /// channels, unknown channels or for ended connections are dropped, as upstream.
    pub fn client_message(&self, msg: &[u8]) -> Vec<FrameBody> {
        let Some((&first, rest)) = msg.split_first() else { return Vec::new() };
        let (channel, data) = if self.base64 {
            let Some(channel) = first.checked_sub(b'0') else { return Vec::new() };
            match base64::engine::general_purpose::STANDARD.decode(rest) {
                Ok(d) => (channel, d),
                Err(_) => return Vec::new(),
            }
        } else {
            (first, rest.to_vec())
        };
        let port = usize::from(channel / 2);
        if channel % 2 != 0 || port >= self.ports.len() || !self.live[port] || data.is_empty() {
            return Vec::new();
        }
        vec![FrameBody::Data { stream: port as u32, data }]
    }

    fn end_port(&mut self, port: usize, out: &mut Output) {
        self.live[port] = false;
        out.to_node.push(FrameBody::Close { stream: port as u32 });
        if self.live.iter().all(|l| !l) {
            out.to_node.push(FrameBody::End);
            out.done = true;
        }
    }

    /// A frame from the node.
    pub fn node_frame(&mut self, frame: FrameBody) -> Output {
        let mut out = Output::default();
        match frame {
            FrameBody::Data { stream, data } => {
                let port = stream as usize;
                if self.live.get(port) == Some(&true) {
                    out.to_client.push(self.message((2 * port) as u8, &data));
                }
            }
            FrameBody::Close { stream } => {
                let port = stream as usize;
                if self.live.get(port) == Some(&true) {
                    self.end_port(port, &mut out);
                }
            }
            FrameBody::Error { stream, message } => {
                let port = stream as usize;
                if self.live.get(port) == Some(&true) {
                    out.to_client.push(self.message((2 * port + 1) as u8, message.as_bytes()));
                    self.end_port(port, &mut out);
                }
            }
            FrameBody::End => out.done = true,
            FrameBody::Open { .. } | FrameBody::Resize { .. } | FrameBody::Exit { .. } | FrameBody::Ping => {}
        }
        out
    }
}

async fn send(ws: &mut actix_ws::Session, m: Message) -> bool {
    match m {
        Message::Binary(b) => ws.binary(b).await.is_ok(),
        Message::Text(t) => ws.text(t).await.is_ok(),
    }
}

/// Relays between the client's WebSocket and the node session until either ends.
async fn relay(
    mut ws: actix_ws::Session,
    msgs: MessageStream,
    session: Session,
    mut guard: EndOnDrop,
    mut ch: Channels,
) {
    let Session { mut rx, tx } = session;
    let mut msgs = msgs
        .max_frame_size(super::exec::MAX_WS_FRAME)
        .aggregate_continuations()
        .max_continuation_size(super::exec::MAX_WS_FRAME);
    let mut out = ch.start();
    loop {
        for f in out.to_node.drain(..) {
            if f == FrameBody::End {
                guard.disarm();
            }
            if tx.send(f).await.is_err() {
                let _ = ws.close(Some(CloseCode::Away.into())).await;
                return;
            }
        }
        for m in out.to_client.drain(..) {
            if !send(&mut ws, m).await {
                return;
            }
        }
        if out.done {
            let _ = ws.close(Some(CloseCode::Normal.into())).await;
            return;
        }
        out = tokio::select! {
            m = msgs.recv() => match m {
                Some(Ok(AggregatedMessage::Binary(b))) => {
                    Output { to_node: ch.client_message(&b), ..Output::default() }
                }
                Some(Ok(AggregatedMessage::Text(t))) => {
                    Output { to_node: ch.client_message(t.as_bytes()), ..Output::default() }
                }
                Some(Ok(AggregatedMessage::Ping(p))) => {
                    if ws.pong(&p).await.is_err() {
                        return;
                    }
                    Output::default()
                }
                Some(Ok(AggregatedMessage::Pong(_))) => Output::default(),
                Some(Ok(AggregatedMessage::Close(_))) => {
                    let _ = ws.close(Some(CloseCode::Normal.into())).await;
                    return;
                }
                // The client went away or broke the protocol: the guard ends the session.
                None | Some(Err(_)) => return,
            },
            f = rx.recv() => match f {
                Some(FrameBody::End) | None => {
                    guard.disarm();
                    Output { done: true, ..Output::default() }
                }
                Some(f) => ch.node_frame(f),
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Query {
        Query(serde_urlencoded::from_str(s).unwrap())
    }

    #[test]
    fn ports_and_protocols_as_upstream() {
        assert_eq!(ports(&q("ports=80&ports=8080,9090")).unwrap(), [80, 8080, 9090]);
        assert_eq!(ports(&q("")).unwrap_err().to_string(), "query parameter \"port\" is required");
        assert_eq!(ports(&q("ports=0")).unwrap_err().code(), 400);
        assert_eq!(ports(&q("ports=http")).unwrap_err().code(), 400);
        assert_eq!(ports(&q("ports=70000")).unwrap_err().code(), 400);
        let offer = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // The Python client offers v5 first; port-forward has no v5, so v4 is chosen.
        assert_eq!(negotiate(&offer(&["v5.channel.k8s.io", V4_BINARY])).unwrap(), V4_BINARY);
        assert_eq!(negotiate(&offer(&[V4_BASE64, V4_BINARY])).unwrap(), V4_BASE64);
        assert_eq!(negotiate(&[]).unwrap(), "");
        assert_eq!(negotiate(&offer(&["chat"])).unwrap_err().code(), 400);
    }

    #[test]
    fn two_ports_binary() {
        let mut ch = Channels::new(vec![80, 8080], false);
        let out = ch.start();
        assert_eq!(
            out.to_client,
            [
                Message::Binary(vec![0, 80, 0]),
                Message::Binary(vec![1, 80, 0]),
                Message::Binary(vec![2, 0x90, 0x1f]),
                Message::Binary(vec![3, 0x90, 0x1f]),
            ]
        );
        assert_eq!(
            out.to_node,
            [FrameBody::Open { stream: 0, port: 80 }, FrameBody::Open { stream: 1, port: 8080 }]
        );
        assert_eq!(ch.client_message(b"\x02GET /"), [FrameBody::Data { stream: 1, data: b"GET /".to_vec() }]);
        // Error channels, unknown channels and empty messages carry nothing to the pod.
        assert!(ch.client_message(b"\x01x").is_empty());
        assert!(ch.client_message(b"\x09x").is_empty());
        assert!(ch.client_message(b"").is_empty());
        let out = ch.node_frame(FrameBody::Data { stream: 1, data: b"OK".to_vec() });
        assert_eq!(out.to_client, [Message::Binary(b"\x02OK".to_vec())]);
        let out = ch.node_frame(FrameBody::Error { stream: 0, message: "connection refused".into() });
        assert_eq!(out.to_client, [Message::Binary(b"\x01connection refused".to_vec())]);
        assert_eq!(out.to_node, [FrameBody::Close { stream: 0 }]);
        assert!(!out.done);
        assert!(ch.client_message(b"\x00late").is_empty());
        let out = ch.node_frame(FrameBody::Close { stream: 1 });
        assert!(out.done && out.to_client.is_empty());
        assert_eq!(out.to_node, [FrameBody::Close { stream: 1 }, FrameBody::End]);
    }

    #[test]
    fn base64_channels() {
        let mut ch = Channels::new(vec![80], true);
        assert_eq!(ch.start().to_client, [Message::Text("0UAA=".into()), Message::Text("1UAA=".into())]);
        assert_eq!(ch.client_message(b"0aGk="), [FrameBody::Data { stream: 0, data: b"hi".to_vec() }]);
        assert!(ch.client_message(b"0!!!").is_empty());
        let out = ch.node_frame(FrameBody::Data { stream: 0, data: b"hi".to_vec() });
        assert_eq!(out.to_client, [Message::Text("0aGk=".into())]);
    }
}
