//! `pods/exec` and `pods/attach` over WebSocket, `v5.channel.k8s.io` (or `v4`): binary
//! messages whose first byte is the channel: 0 stdin, 1 stdout, 2 stderr, 3 the final
//! `Status`, 4 terminal resizes, and (v5 only) 255 "stream closed" signals.

use super::{check_websocket, node_of, offered_protocols, open, pick_container, EndOnDrop, Wording};
use crate::auth::User;
use crate::dispatch::{Query, Target};
use crate::http::Gateway;
use crate::status::{ApiError, ApiResult};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, MessageStream};
use capstan_bus::sessions::{FrameBody, FrameSender, Session, SessionKind};
use serde_json::{json, Value};

/// The WebSocket subprotocol of kubectl 1.30 and later.
pub const V5: &str = "v5.channel.k8s.io";
/// The previous subprotocol: the same channels, without the close signal.
pub const V4: &str = "v4.channel.k8s.io";
/// The largest WebSocket frame accepted from a client.
pub const MAX_WS_FRAME: usize = 1024 * 1024;

const STDIN: u8 = 0;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE_SIGNAL: u8 = 255;

/// What an exec or attach request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The command (exec only).
    pub command: Vec<String>,
    /// Whether stdin is sent.
    pub stdin: bool,
    /// Whether stdout is wanted.
    pub stdout: bool,
    /// Whether stderr is wanted (never with a tty, where it is merged into stdout).
    pub stderr: bool,
    /// Whether a terminal is wanted.
    pub tty: bool,
}

/// The options of an exec (`exec` true) or attach request.
pub fn options(q: &Query, exec: bool) -> ApiResult<Options> {
    let tty = q.flag("tty")?;
    let o = Options {
        command: super::all(q, "command").into_iter().map(str::to_string).collect(),
        stdin: q.flag("stdin")?,
        stdout: q.flag("stdout")?,
        stderr: q.flag("stderr")? && !tty,
        tty,
    };
    if !(o.stdin || o.stdout || o.stderr) {
        return Err(ApiError::BadRequest("you must specify at least 1 of stdin, stdout, stderr".into()));
    }
    if exec && o.command.is_empty() {
        return Err(ApiError::BadRequest(
            "you must specify at least one command for the container (the command query parameter)".into(),
        ));
    }
    Ok(o)
}

/// Everything a request needs before it is upgraded: the pod, its node, the container.
pub struct Checked {
    pod: Value,
    node: String,
    container: String,
    kind: SessionKind,
}

/// Checks a request as far as it can be without the node agent.
pub async fn check(gw: &Gateway, user: &User, q: &Query, t: &Target) -> ApiResult<Checked> {
    let name = t.name.as_deref().unwrap_or("");
    let exec = t.subresource.as_deref() == Some("exec");
    let pod = super::pod(gw, user, t, "create").await?;
    let o = options(q, exec)?;
    let container = pick_container(&pod, name, q.get("container"), Wording::Stream)?;
    let node = node_of(&pod)
        .ok_or_else(|| ApiError::BadRequest(format!("pod {name} does not have a host assigned")))?
        .to_string();
    let kind = if exec {
        SessionKind::Exec {
            command: o.command,
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr,
            tty: o.tty,
        }
    } else {
        SessionKind::Attach { stdin: o.stdin, stdout: o.stdout, stderr: o.stderr, tty: o.tty }
    };
    Ok(Checked { pod, node, container, kind })
}

/// Serves an exec or attach WebSocket upgrade.
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
    let protocol = [V5, V4].into_iter().find(|p| offered.iter().any(|o| o == p)).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "none of the offered WebSocket subprotocols {offered:?} is supported: use {V5} or {V4}"
        ))
    })?;
    let c = check(gw, user, q, t).await?;
    let session = open(gw, &c.node, &c.pod, Some(c.container), c.kind).await?;
    let guard = EndOnDrop::new(session.tx.clone());
    let (resp, ws, msgs) = actix_ws::handle_with_protocols(req, payload, &[protocol])
        .map_err(|e| ApiError::BadRequest(format!("WebSocket handshake failed: {e}")))?;
    actix_rt::spawn(relay(ws, msgs, session, guard, protocol == V5, c.node));
    Ok(resp)
}

/// The channel-3 `Status` for how the process ended.
pub fn exit_status(code: i32, message: Option<&str>) -> Value {
    match (code, message) {
        (_, Some(m)) => {
            json!({"metadata": {}, "status": "Failure", "message": m, "reason": "InternalError", "code": 500})
        }
        (0, None) => json!({"metadata": {}, "status": "Success"}),
        (c, None) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {c}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": c.to_string()}]},
        }),
    }
}

fn channel(ch: u8, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(data.len() + 1);
    m.push(ch);
    m.extend_from_slice(data);
    m
}

#[derive(serde::Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// One client message to the node; an error means the bus failed.
async fn from_client(tx: &FrameSender, msg: &[u8], v5: bool) -> Result<(), capstan_bus::Error> {
    let Some((&ch, data)) = msg.split_first() else { return Ok(()) };
    match ch {
        STDIN if !data.is_empty() => tx.send_data(0, data).await,
        RESIZE => match serde_json::from_slice::<TerminalSize>(data) {
            Ok(s) => tx.send(FrameBody::Resize { width: s.width, height: s.height }).await,
            Err(_) => Ok(()),
        },
        CLOSE_SIGNAL if v5 && data.first() == Some(&STDIN) => tx.send(FrameBody::Close { stream: 0 }).await,
        _ => Ok(()),
    }
}

/// Relays between the client's WebSocket and the node session until either ends.
async fn relay(
    mut ws: actix_ws::Session,
    msgs: MessageStream,
    session: Session,
    mut guard: EndOnDrop,
    v5: bool,
    node: String,
) {
    let Session { mut rx, tx } = session;
    let mut msgs =
        msgs.max_frame_size(MAX_WS_FRAME).aggregate_continuations().max_continuation_size(MAX_WS_FRAME);
    let mut status_sent = false;
    loop {
        tokio::select! {
            m = msgs.recv() => {
                let bytes = match m {
                    Some(Ok(AggregatedMessage::Binary(b))) => b,
                    Some(Ok(AggregatedMessage::Text(t))) => t.into_bytes(),
                    Some(Ok(AggregatedMessage::Ping(p))) => {
                        if ws.pong(&p).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => continue,
                    Some(Ok(AggregatedMessage::Close(_))) => {
                        let _ = ws.close(Some(CloseCode::Normal.into())).await;
                        return;
                    }
                    // The client went away or broke the protocol: the guard ends the session.
                    None | Some(Err(_)) => return,
                };
                if let Err(e) = from_client(&tx, &bytes, v5).await {
                    let m = format!("lost the session with the node agent of {node}: {e}");
                    let _ = ws.binary(channel(STATUS, exit_status(1, Some(&m)).to_string().as_bytes())).await;
                    let _ = ws.close(Some(CloseCode::Normal.into())).await;
                    return;
                }
            }
            f = rx.recv() => match f {
                Some(FrameBody::Data { stream: s @ (1 | 2), data }) => {
                    if ws.binary(channel(s as u8, &data)).await.is_err() {
                        return;
                    }
                }
                Some(FrameBody::Exit { code, message }) if !status_sent => {
                    status_sent = true;
                    let status = exit_status(code, message.as_deref()).to_string();
                    if ws.binary(channel(STATUS, status.as_bytes())).await.is_err() {
                        return;
                    }
                }
                Some(FrameBody::End) | None => {
                    guard.disarm();
                    if !status_sent {
                        let m = format!("the session with the node agent of {node} ended without an exit status");
                        let _ = ws.binary(channel(STATUS, exit_status(1, Some(&m)).to_string().as_bytes())).await;
                    }
                    let _ = ws.close(Some(CloseCode::Normal.into())).await;
                    return;
                }
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Query {
        Query(serde_urlencoded::from_str(s).unwrap())
    }

    #[test]
    fn options_need_a_stream_and_a_command() {
        let o = options(&q("command=sh&command=-c&command=exit%203&stdout=true&stderr=true&tty=true"), true);
        let o = o.unwrap();
        assert_eq!(o.command, ["sh", "-c", "exit 3"]);
        assert!(o.stdout && o.tty && !o.stderr && !o.stdin);
        assert_eq!(options(&q("command=ls"), true).unwrap_err().code(), 400);
        assert_eq!(options(&q("stdout=true"), true).unwrap_err().code(), 400);
        assert!(options(&q("stdout=true&stdin=1"), false).is_ok());
    }

    #[test]
    fn exit_statuses_have_kubectls_shapes() {
        assert_eq!(exit_status(0, None), json!({"metadata": {}, "status": "Success"}));
        let s = exit_status(3, None);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
        let s = exit_status(127, Some("executable file not found"));
        assert_eq!((s["status"].as_str(), s["reason"].as_str()), (Some("Failure"), Some("InternalError")));
    }
}
