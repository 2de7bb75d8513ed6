//! `pods/portforward` over WebSocket-tunnelled SPDY (`SPDY/3.1+portforward.k8s.io`): the
//! payloads of the client's binary messages, concatenated, are a SPDY/3 byte stream. Each
//! forwarded connection is a pair of SPDY streams sharing a `requestid` header: an error
//! stream (where a failure is reported as text) and a data stream (the connection's
//! bytes), which maps to one session stream opened with [`FrameBody::Open`]; the session
//! stream number is the SPDY data stream id.

use super::{check_websocket, node_of, offered_protocols, open, EndOnDrop};
use crate::auth::User;
use crate::dispatch::{Query, Target};
use crate::http::Gateway;
use crate::spdy::{self, Frame, HeaderCompressor, HeaderDecompressor, FLAG_FIN};
use crate::status::{ApiError, ApiResult};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, MessageStream};
use bytes::{Bytes, BytesMut};
use capstan_bus::sessions::{FrameBody, Session, SessionKind};
use serde_json::Value;
use std::collections::HashMap;

/// The WebSocket subprotocol kubectl offers for port-forward.
pub const PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The largest data frame payload sent to the client.
const CHUNK: usize = 32 * 1024;

/// Checks a request as far as it can be without the node agent: the pod and its node.
pub async fn check(gw: &Gateway, user: &User, t: &Target) -> ApiResult<(Value, String)> {
    let name = t.name.as_deref().unwrap_or("");
    let pod = super::pod(gw, user, t, "create").await?;
    let node = node_of(&pod)
        .ok_or_else(|| ApiError::BadRequest(format!("pod {name} does not have a host assigned")))?
        .to_string();
    Ok((pod, node))
}

/// Serves a port-forward WebSocket upgrade: SPDY tunnelled in WebSocket when the client
/// offers [`PROTOCOL`], else the channel protocol of [`super::wsportforward`].
pub async fn serve(
    req: &HttpRequest,
    payload: web::Payload,
    gw: &Gateway,
    user: &User,
    q: &Query,
    t: &Target,
) -> ApiResult<HttpResponse> {
    check_websocket(req)?;
    let offered = offered_protocols(req);
    if !offered.iter().any(|p| p == PROTOCOL) {
        // Not kubectl's tunnel: the plain WebSocket channel protocol, as upstream's kubelet.
        return super::wsportforward::serve(req, payload, gw, user, q, t, &offered).await;
    }
    let (pod, node) = check(gw, user, t).await?;
    let session = open(gw, &node, &pod, None, SessionKind::PortForward).await?;
    let guard = EndOnDrop::new(session.tx.clone());
    let (resp, ws, msgs) = actix_ws::handle_with_protocols(req, payload, &[PROTOCOL])
        .map_err(|e| ApiError::BadRequest(format!("WebSocket handshake failed: {e}")))?;
    actix_rt::spawn(tunnel(ws, msgs, session, guard));
    Ok(resp)
}

/// Relays between the client's tunnelled SPDY and the node session until either ends.
async fn tunnel(mut ws: actix_ws::Session, msgs: MessageStream, session: Session, mut guard: EndOnDrop) {
    let Session { mut rx, tx } = session;
    let mut msgs = msgs
        .max_frame_size(super::exec::MAX_WS_FRAME)
        .aggregate_continuations()
        .max_continuation_size(super::exec::MAX_WS_FRAME);
    let mut fwd = Forwarder::default();
    loop {
        let out = tokio::select! {
            m = msgs.recv() => match m {
                Some(Ok(AggregatedMessage::Binary(b))) => fwd.client_bytes(&b),
                Some(Ok(AggregatedMessage::Ping(p))) => {
                    if ws.pong(&p).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Ok(AggregatedMessage::Text(_) | AggregatedMessage::Pong(_))) => continue,
                Some(Ok(AggregatedMessage::Close(_))) => {
                    let _ = ws.close(Some(CloseCode::Normal.into())).await;
                    return;
                }
                None | Some(Err(_)) => return,
            },
            f = rx.recv() => match f {
                Some(FrameBody::End) | None => {
                    guard.disarm();
                    fwd.finish()
                }
                Some(f) => fwd.node_frame(f),
            }
        };
        for f in out.to_node {
            if f == FrameBody::End {
                guard.disarm();
            }
            if tx.send(f).await.is_err() {
                let _ = ws.close(Some(CloseCode::Away.into())).await;
                return;
            }
        }
        if !out.to_client.is_empty() && ws.binary(out.to_client.freeze()).await.is_err() {
            return;
        }
        if out.done {
            let _ = ws.close(Some(CloseCode::Normal.into())).await;
            return;
        }
    }
}

/// What one step of a [`Forwarder`] sends.
#[derive(Debug, Default)]
pub struct Output {
    /// SPDY bytes for the client.
    pub to_client: BytesMut,
    /// Frames for the node.
    pub to_node: Vec<FrameBody>,
    /// The connection is over: close it after sending the rest.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

#[derive(Debug)]
struct Stream {
    kind: Kind,
    request: String,
    /// The client sent FIN (or reset the stream).
    client_closed: bool,
    /// The gateway sent FIN.
    server_closed: bool,
}

/// The SPDY side of one port-forward connection: a state machine fed with the client's
/// bytes and the node's frames, answering with bytes for the client and frames for the
/// node. Transport-free, so that it can be tested without a network.
#[derive(Default)]
pub struct Forwarder {
    buf: BytesMut,
    inflate: HeaderDecompressor,
    deflate: HeaderCompressor,
    streams: HashMap<u32, Stream>,
    /// `requestid` to (error stream, data stream).
    requests: HashMap<String, (Option<u32>, Option<u32>)>,
    last_stream: u32,
    done: bool,
}

impl Forwarder {
    /// Handles bytes from the client (any split of the SPDY byte stream).
    pub fn client_bytes(&mut self, bytes: &[u8]) -> Output {
        let mut out = Output::default();
        if self.done {
            out.done = true;
            return out;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            match spdy::decode(&mut self.buf) {
                Ok(Some(frame)) => {
                    if let Err(e) = self.client_frame(frame, &mut out) {
                        tracing::debug!("port-forward: {e}; closing the connection");
                        self.fail(&mut out);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("port-forward: {e}; closing the connection");
                    self.fail(&mut out);
                }
            }
            if out.done {
                break;
            }
        }
        out
    }

    /// Ends the connection for a protocol error: GOAWAY, and the node session ends.
    fn fail(&mut self, out: &mut Output) {
        self.send(
            out,
            Frame::GoAway { last_good_stream_id: self.last_stream, status: spdy::GOAWAY_PROTOCOL_ERROR },
        );
        out.to_node.push(FrameBody::End);
        out.done = true;
        self.done = true;
    }

    /// The node session ended: say goodbye to the client.
    pub fn finish(&mut self) -> Output {
        let mut out = Output::default();
        if !self.done {
            self.send(
                &mut out,
                Frame::GoAway { last_good_stream_id: self.last_stream, status: spdy::GOAWAY_OK },
            );
        }
        out.done = true;
        self.done = true;
        out
    }

    fn send(&self, out: &mut Output, frame: Frame) {
        spdy::encode(&frame, &mut out.to_client);
    }

    fn client_frame(&mut self, frame: Frame, out: &mut Output) -> Result<(), spdy::Error> {
        match frame {
            Frame::SynStream { stream_id, flags, headers, .. } => {
                let headers = self.inflate.decompress(&headers)?;
                self.syn_stream(stream_id, flags, &headers, out)?;
            }
            // Header blocks share one zlib stream: decompress even the ones not needed.
            Frame::SynReply { headers, .. } | Frame::Headers { headers, .. } => {
                self.inflate.decompress(&headers)?;
            }
            Frame::Data { stream_id, flags, data } => self.client_data(stream_id, flags, data, out),
            Frame::RstStream { stream_id, .. } => {
                if let Some(s) = self.streams.remove(&stream_id) {
                    if s.kind == Kind::Data && !s.client_closed {
                        out.to_node.push(FrameBody::Close { stream: stream_id });
                    }
                    self.forget(&s.request, stream_id);
                }
            }
            Frame::Ping { id } => self.send(out, Frame::Ping { id }),
            Frame::GoAway { .. } => {
                out.to_node.push(FrameBody::End);
                out.done = true;
                self.done = true;
            }
            Frame::Settings | Frame::WindowUpdate { .. } | Frame::Other { .. } => {}
        }
        Ok(())
    }

    fn forget(&mut self, request: &str, stream_id: u32) {
        if let Some((e, d)) = self.requests.get_mut(request) {
            if *e == Some(stream_id) {
                *e = None;
            }
            if *d == Some(stream_id) {
                *d = None;
            }
            if e.is_none() && d.is_none() {
                self.requests.remove(request);
            }
        }
    }

    fn syn_stream(
        &mut self,
        id: u32,
        flags: u8,
        headers: &spdy::Headers,
        out: &mut Output,
    ) -> Result<(), spdy::Error> {
        if id.is_multiple_of(2) || self.streams.contains_key(&id) {
            self.send(out, Frame::RstStream { stream_id: id, status: spdy::RST_PROTOCOL_ERROR });
            return Ok(());
        }
        self.last_stream = self.last_stream.max(id);
        let kind = match spdy::header(headers, "streamtype") {
            Some("error") => Kind::Error,
            Some("data") => Kind::Data,
            _ => {
                self.send(out, Frame::RstStream { stream_id: id, status: spdy::RST_PROTOCOL_ERROR });
                return Ok(());
            }
        };
        // Old clients pair the streams by id (data = error + 2) instead of a request id.
        let request = match spdy::header(headers, "requestid") {
            Some(r) => r.to_string(),
            None if kind == Kind::Error => id.to_string(),
            None => id.saturating_sub(2).to_string(),
        };
        let reply = self.deflate.compress(&[])?;
        self.send(out, Frame::SynReply { stream_id: id, flags: 0, headers: reply });
        let client_closed = flags & FLAG_FIN != 0;
        self.streams
            .insert(id, Stream { kind, request: request.clone(), client_closed, server_closed: false });
        let pair = self.requests.entry(request.clone()).or_default();
        match kind {
            Kind::Error => pair.0 = Some(id),
            Kind::Data => pair.1 = Some(id),
        }
        if kind == Kind::Data {
            let port_text = spdy::header(headers, "port").unwrap_or("");
            match port_text.parse::<u16>() {
                Ok(port) if port > 0 => {
                    out.to_node.push(FrameBody::Open { stream: id, port });
                    if client_closed {
                        out.to_node.push(FrameBody::Close { stream: id });
                    }
                }
                _ => {
                    let message = if port_text.is_empty() {
                        "port is required".to_string()
                    } else {
                        format!("invalid port {port_text:?}: must be an integer from 1 to 65535")
                    };
                    self.report_error(&request, &message, out);
                }
            }
        }
        Ok(())
    }

    fn client_data(&mut self, id: u32, flags: u8, data: Bytes, out: &mut Output) {
        let Some(s) = self.streams.get_mut(&id) else {
            self.send(out, Frame::RstStream { stream_id: id, status: spdy::RST_INVALID_STREAM });
            return;
        };
        if s.client_closed {
            return;
        }
        if s.kind == Kind::Data && !data.is_empty() {
            out.to_node.push(FrameBody::Data { stream: id, data: data.to_vec() });
        }
        if flags & FLAG_FIN != 0 {
            s.client_closed = true;
            if s.kind == Kind::Data {
                out.to_node.push(FrameBody::Close { stream: id });
            }
        }
    }

    /// Sends FIN on stream `id` unless it was sent already.
    fn close_stream(&mut self, id: u32, out: &mut Output) {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.server_closed {
                s.server_closed = true;
                self.send(out, Frame::Data { stream_id: id, flags: FLAG_FIN, data: Bytes::new() });
            }
        }
    }

    /// Reports a failure of `request` on its error stream, then closes both its streams.
    fn report_error(&mut self, request: &str, message: &str, out: &mut Output) {
        let Some(&(error, data)) = self.requests.get(request) else { return };
        if let Some(e) = error {
            if self.streams.get(&e).is_some_and(|s| !s.server_closed) {
                self.send(
                    out,
                    Frame::Data { stream_id: e, flags: 0, data: Bytes::from(message.to_string()) },
                );
            }
            self.close_stream(e, out);
        } else {
            tracing::debug!(request, "port-forward error with no error stream to report it on: {message}");
        }
        if let Some(d) = data {
            self.close_stream(d, out);
        }
    }

    /// Handles a frame from the node.
    pub fn node_frame(&mut self, frame: FrameBody) -> Output {
        let mut out = Output::default();
        if self.done {
            out.done = true;
            return out;
        }
        match frame {
            FrameBody::Data { stream, data } => {
                if self.streams.get(&stream).is_some_and(|s| s.kind == Kind::Data && !s.server_closed) {
                    for f in spdy::data_frames(stream, &data, CHUNK, false) {
                        self.send(&mut out, f);
                    }
                }
            }
            FrameBody::Close { stream } => {
                // The pod's side of the connection ended: FIN the data stream, and the error
                // stream with no error.
                if let Some(request) = self.streams.get(&stream).map(|s| s.request.clone()) {
                    let error = self.requests.get(&request).and_then(|p| p.0);
                    self.close_stream(stream, &mut out);
                    if let Some(e) = error {
                        self.close_stream(e, &mut out);
                    }
                }
            }
            FrameBody::Error { stream, message } => {
                if let Some(request) = self.streams.get(&stream).map(|s| s.request.clone()) {
                    self.report_error(&request, &message, &mut out);
                }
            }
            FrameBody::End => return self.finish(),
            FrameBody::Open { .. } | FrameBody::Resize { .. } | FrameBody::Exit { .. } | FrameBody::Ping => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client side of the SPDY dialogue, as kubectl speaks it.
    struct Client {
        deflate: HeaderCompressor,
        inflate: HeaderDecompressor,
        buf: BytesMut,
    }

    impl Client {
        fn new() -> Client {
            Client {
                deflate: HeaderCompressor::new(),
                inflate: HeaderDecompressor::new(),
                buf: BytesMut::new(),
            }
        }

        fn syn(&mut self, id: u32, kind: &str, port: &str, request: &str) -> BytesMut {
            let h = self
                .deflate
                .compress(&[("streamtype", kind), ("port", port), ("requestid", request)])
                .unwrap();
            let mut b = BytesMut::new();
            spdy::encode(
                &Frame::SynStream { stream_id: id, associated_id: 0, priority: 0, flags: 0, headers: h },
                &mut b,
            );
            b
        }

        fn frames(&mut self, bytes: &[u8]) -> Vec<Frame> {
            self.buf.extend_from_slice(bytes);
            let mut v = Vec::new();
            while let Some(f) = spdy::decode(&mut self.buf).unwrap() {
                if let Frame::SynReply { headers, .. } = &f {
                    assert!(self.inflate.decompress(headers).unwrap().is_empty());
                }
                v.push(f);
            }
            v
        }
    }

    fn enc(f: Frame) -> BytesMut {
        let mut b = BytesMut::new();
        spdy::encode(&f, &mut b);
        b
    }

    #[test]
    fn one_connection_end_to_end() {
        let mut fwd = Forwarder::default();
        let mut c = Client::new();
        // The error stream, fed one byte at a time.
        let syn = c.syn(1, "error", "80", "0");
        let mut replies = Vec::new();
        for b in syn.iter() {
            let out = fwd.client_bytes(&[*b]);
            assert!(out.to_node.is_empty());
            replies.extend(c.frames(&out.to_client));
        }
        assert!(matches!(replies[..], [Frame::SynReply { stream_id: 1, .. }]));
        let out = fwd.client_bytes(&enc(Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::new() }));
        assert!(out.to_client.is_empty() && out.to_node.is_empty());
        // The data stream opens the node stream.
        let out = fwd.client_bytes(&c.syn(3, "data", "80", "0"));
        assert!(matches!(c.frames(&out.to_client)[..], [Frame::SynReply { stream_id: 3, .. }]));
        assert_eq!(out.to_node, [FrameBody::Open { stream: 3, port: 80 }]);
        let out = fwd.client_bytes(&enc(Frame::Data {
            stream_id: 3,
            flags: 0,
            data: Bytes::from_static(b"GET /"),
        }));
        assert_eq!(out.to_node, [FrameBody::Data { stream: 3, data: b"GET /".to_vec() }]);
        // A ping is echoed.
        let out = fwd.client_bytes(&enc(Frame::Ping { id: 1 }));
        assert_eq!(c.frames(&out.to_client), [Frame::Ping { id: 1 }]);
        // The pod answers and closes: data, FIN on data, FIN on error.
        let out = fwd.node_frame(FrameBody::Data { stream: 3, data: b"OK".to_vec() });
        assert_eq!(
            c.frames(&out.to_client),
            [Frame::Data { stream_id: 3, flags: 0, data: Bytes::from_static(b"OK") }]
        );
        let out = fwd.node_frame(FrameBody::Close { stream: 3 });
        assert_eq!(
            c.frames(&out.to_client),
            [
                Frame::Data { stream_id: 3, flags: FLAG_FIN, data: Bytes::new() },
                Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::new() },
            ]
        );
        // The client half-closes, then resets both streams.
        let out = fwd.client_bytes(&enc(Frame::Data { stream_id: 3, flags: FLAG_FIN, data: Bytes::new() }));
        assert_eq!(out.to_node, [FrameBody::Close { stream: 3 }]);
        let mut rst = enc(Frame::RstStream { stream_id: 3, status: spdy::RST_CANCEL });
        rst.extend_from_slice(&enc(Frame::RstStream { stream_id: 1, status: spdy::RST_CANCEL }));
        let out = fwd.client_bytes(&rst);
        assert!(out.to_node.is_empty() && out.to_client.is_empty());
        assert!(fwd.streams.is_empty() && fwd.requests.is_empty());
        // A second connection on the same SPDY connection, whose port fails.
        let mut both = c.syn(5, "error", "81", "1");
        both.extend_from_slice(&c.syn(7, "data", "81", "1"));
        let out = fwd.client_bytes(&both);
        assert_eq!(c.frames(&out.to_client).len(), 2);
        assert_eq!(out.to_node, [FrameBody::Open { stream: 7, port: 81 }]);
        let out = fwd.node_frame(FrameBody::Error { stream: 7, message: "connection refused".into() });
        assert_eq!(
            c.frames(&out.to_client),
            [
                Frame::Data { stream_id: 5, flags: 0, data: Bytes::from_static(b"connection refused") },
                Frame::Data { stream_id: 5, flags: FLAG_FIN, data: Bytes::new() },
                Frame::Data { stream_id: 7, flags: FLAG_FIN, data: Bytes::new() },
            ]
        );
        // A reset before the pod closed tells the node.
        let out = fwd.client_bytes(&enc(Frame::RstStream { stream_id: 7, status: spdy::RST_CANCEL }));
        assert_eq!(out.to_node, [FrameBody::Close { stream: 7 }]);
        let out = fwd.finish();
        assert!(out.done);
        assert!(matches!(c.frames(&out.to_client)[..], [Frame::GoAway { last_good_stream_id: 7, .. }]));
    }

    #[test]
    fn bad_input_ends_the_connection() {
        let mut fwd = Forwarder::default();
        let mut c = Client::new();
        let out = fwd.client_bytes(&c.syn(3, "data", "http", "0"));
        // Replied, no node stream, no error stream to report on: the data stream is FINned.
        assert!(out.to_node.is_empty());
        assert_eq!(c.frames(&out.to_client).len(), 2);
        let out = fwd.client_bytes(&c.syn(4, "data", "80", "1"));
        assert!(matches!(c.frames(&out.to_client)[..], [Frame::RstStream { stream_id: 4, .. }]));
        let mut garbage = enc(Frame::SynStream {
            stream_id: 9,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: Bytes::from_static(b"not zlib"),
        });
        garbage.extend_from_slice(b"\x80\x03\x00\x01");
        let out = fwd.client_bytes(&garbage);
        assert!(out.done);
        assert_eq!(out.to_node, [FrameBody::End]);
        assert!(matches!(
            c.frames(&out.to_client)[..],
            [Frame::GoAway { status: spdy::GOAWAY_PROTOCOL_ERROR, .. }]
        ));
        assert!(fwd.client_bytes(b"more").done);
    }
}
