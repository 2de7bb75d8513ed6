//! A fake node agent for tests: serves node sessions on a bus with canned behaviour.
//!
//! - logs: `hello from <container>` (with the options it got), or with `follow` three
//!   lines 100 ms apart; container `sleepy` is rejected with 400 as a kubelet would;
//! - exec: `cat` echoes stdin to stdout until stdin closes; `sh -c 'exit N'` exits N;
//!   `echo ARGS` prints ARGS on stdout and `warn` on stderr; `missing` cannot run;
//!   container `sleepy` is rejected;
//! - attach: like `cat`;
//! - port-forward: echoes each connection's bytes upper-cased; port 81 is refused.

#![allow(dead_code)]

use capstan_bus::sessions::{self, FrameBody, Incoming, SessionKind};
use capstan_bus::Bus;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Serves `node` on `bus` until the bus closes.
pub async fn serve(bus: Arc<dyn Bus>, node: &str) {
    sessions::serve(bus, node, Arc::new(|incoming: Incoming| Box::pin(handle(incoming))))
        .await
        .expect("serve fake node sessions");
}

async fn handle(incoming: Incoming) {
    let req = incoming.request.clone();
    if req.container.as_deref() == Some("sleepy") {
        let m = format!("container \"sleepy\" in pod \"{}\" is waiting to start: ContainerCreating", req.pod);
        let _ = incoming.reject(400, "BadRequest", m).await;
        return;
    }
    let Ok(mut s) = incoming.accept().await else { return };
    let container = req.container.clone().unwrap_or_default();
    match req.kind {
        SessionKind::Log { follow, tail_lines, .. } => {
            if follow {
                for i in 1..=3 {
                    let _ = s.tx.send_data(1, format!("line {i}\n").as_bytes()).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            } else {
                let text = format!("hello from {container} (tailLines={tail_lines:?})\n");
                let _ = s.tx.send_data(1, text.as_bytes()).await;
            }
            let _ = s.tx.send(FrameBody::End).await;
        }
        SessionKind::Exec { command, .. } => {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            match args.as_slice() {
                ["sh", "-c", script] if script.starts_with("exit ") => {
                    let code = script[5..].trim().parse().unwrap_or(1);
                    let _ = s.tx.send(FrameBody::Exit { code, message: None }).await;
                }
                ["echo", rest @ ..] => {
                    let _ = s.tx.send_data(1, format!("{}\n", rest.join(" ")).as_bytes()).await;
                    let _ = s.tx.send_data(2, b"warn\n").await;
                    let _ = s.tx.send(FrameBody::Exit { code: 0, message: None }).await;
                }
                ["cat"] => cat(&mut s).await,
                _ => {
                    let m = format!("exec: \"{}\": executable file not found in $PATH", args.join(" "));
                    let _ = s.tx.send(FrameBody::Exit { code: 127, message: Some(m) }).await;
                }
            }
            let _ = s.tx.send(FrameBody::End).await;
        }
        SessionKind::Attach { .. } => {
            cat(&mut s).await;
            let _ = s.tx.send(FrameBody::End).await;
        }
        SessionKind::PortForward => {
            let mut open = HashSet::new();
            while let Some(f) = s.rx.recv().await {
                match f {
                    FrameBody::Open { stream, port: 81 } => {
                        let m =
                            format!("dial tcp 127.0.0.1:81: connect: connection refused (stream {stream})");
                        let _ = s.tx.send(FrameBody::Error { stream, message: m }).await;
                    }
                    FrameBody::Open { stream, .. } => {
                        open.insert(stream);
                    }
                    FrameBody::Data { stream, data } if open.contains(&stream) => {
                        let _ = s.tx.send_data(stream, &data.to_ascii_uppercase()).await;
                    }
                    FrameBody::Close { stream } if open.remove(&stream) => {
                        let _ = s.tx.send(FrameBody::Close { stream }).await;
                    }
                    FrameBody::End => return,
                    _ => {}
                }
            }
        }
        SessionKind::NodeProxy { path, .. } => {
            let head = r#"{"code": 200, "contentType": "text/plain"}"#;
            let _ = s.tx.send_data(0, head.as_bytes()).await;
            let _ = s.tx.send_data(1, format!("fake-node {path}").as_bytes()).await;
            let _ = s.tx.send(FrameBody::End).await;
        }
    }
}

/// Echoes stdin to stdout until stdin closes, then exits 0.
async fn cat(s: &mut sessions::Session) {
    while let Some(f) = s.rx.recv().await {
        match f {
            FrameBody::Data { stream: 0, data } => {
                let _ = s.tx.send_data(1, &data).await;
            }
            FrameBody::Close { stream: 0 } => break,
            FrameBody::End => return,
            _ => {}
        }
    }
    let _ = s.tx.send(FrameBody::Exit { code: 0, message: None }).await;
}
