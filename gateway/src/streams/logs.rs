//! `GET .../pods/<p>/log`: the container's log from its node agent, as a plain
//! `text/plain` body streamed (chunked) from the session's stream 1 until the node ends the
//! session (with `follow`, when the container stops).

use super::{node_of, open, pick_container, EndOnDrop, Wording};
use crate::auth::User;
use crate::dispatch::{Query, Target};
use crate::http::Gateway;
use crate::status::{ApiError, ApiResult};
use actix_web::HttpResponse;
use bytes::Bytes;
use capstan_api::Cause;
use capstan_bus::sessions::{FrameBody, SessionKind};
use tokio::sync::mpsc;

fn int(q: &Query, k: &str) -> ApiResult<Option<i64>> {
    match q.get(k) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("invalid value for {k}: {v:?}: must be an integer"))),
    }
}

/// The log options of the query, validated as upstream (`PodLogOptions`): malformed
/// values are 400, out-of-range ones 422.
pub fn options(q: &Query, pod: &str) -> ApiResult<SessionKind> {
    let tail_lines = int(q, "tailLines")?;
    let since_seconds = int(q, "sinceSeconds")?;
    let limit_bytes = int(q, "limitBytes")?;
    let since_time = match q.get("sinceTime").filter(|s| !s.is_empty()) {
        None => None,
        Some(t) => {
            t.parse::<jiff::Timestamp>().map_err(|_| {
                ApiError::BadRequest(format!("invalid value for sinceTime: {t:?}: must be an RFC 3339 time"))
            })?;
            Some(t.to_string())
        }
    };
    let mut causes = Vec::new();
    if let Some(n) = tail_lines.filter(|n| *n < 0) {
        causes.push(Cause::invalid(
            "tailLines",
            format!("Invalid value: {n}: must be greater than or equal to 0"),
        ));
    }
    if let Some(n) = limit_bytes.filter(|n| *n < 1) {
        causes.push(Cause::invalid("limitBytes", format!("Invalid value: {n}: must be greater than 0")));
    }
    match (since_seconds, &since_time) {
        (Some(_), Some(_)) => causes.push(Cause::forbidden(
            "sinceSeconds",
            "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified",
        )),
        (Some(n), None) if n < 1 => {
            causes.push(Cause::invalid("sinceSeconds", format!("Invalid value: {n}: must be greater than 0")))
        }
        _ => {}
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid("PodLogOptions", "", pod, causes));
    }
    Ok(SessionKind::Log {
        follow: q.flag("follow")?,
        tail_lines,
        timestamps: q.flag("timestamps")?,
        previous: q.flag("previous")?,
        since_seconds,
        since_time,
        limit_bytes,
    })
}

/// Serves a log request.
pub async fn serve(gw: &Gateway, user: &User, q: &Query, t: &Target) -> ApiResult<HttpResponse> {
    let name = t.name.as_deref().unwrap_or("");
    let pod = super::pod(gw, user, t, "get").await?;
    let kind = options(q, name)?;
    let container = pick_container(&pod, name, q.get("container"), Wording::Log)?;
    let Some(node) = node_of(&pod) else {
        // As upstream: a pod not bound to a node has no log yet; the body is empty.
        return Ok(HttpResponse::Ok().content_type("text/plain").body(Bytes::new()));
    };
    let session = open(gw, node, &pod, Some(container), kind).await?;
    let state = LogStream { rx: session.rx, guard: EndOnDrop::new(session.tx) };
    let body = futures::stream::unfold(state, |mut st| async move {
        let chunk = st.next().await?;
        Some((Ok::<Bytes, actix_web::Error>(chunk), st))
    });
    Ok(HttpResponse::Ok().content_type("text/plain").streaming(body))
}

/// The log bytes of a session. Dropped early (the client went away), it ends the session.
struct LogStream {
    rx: mpsc::Receiver<FrameBody>,
    guard: EndOnDrop,
}

impl LogStream {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            match self.rx.recv().await {
                Some(FrameBody::Data { stream: 1, data }) if !data.is_empty() => {
                    return Some(Bytes::from(data))
                }
                Some(FrameBody::End) | None => {
                    self.guard.disarm();
                    return None;
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
    fn options_are_validated_as_upstream() {
        let k = options(&q("follow=true&tailLines=5&timestamps=true&sinceSeconds=3600&limitBytes=100"), "p");
        assert_eq!(
            k.unwrap(),
            SessionKind::Log {
                follow: true,
                tail_lines: Some(5),
                timestamps: true,
                previous: false,
                since_seconds: Some(3600),
                since_time: None,
                limit_bytes: Some(100),
            }
        );
        let k = options(&q("sinceTime=2025-01-01T00%3A00%3A00Z&previous=true"), "p").unwrap();
        assert!(
            matches!(k, SessionKind::Log { previous: true, since_time: Some(ref t), .. } if t == "2025-01-01T00:00:00Z")
        );
        for bad in ["tailLines=x", "sinceTime=yesterday", "follow=maybe", "limitBytes=1.5"] {
            assert_eq!(options(&q(bad), "p").unwrap_err().code(), 400, "{bad}");
        }
        for bad in [
            "tailLines=-1",
            "limitBytes=0",
            "sinceSeconds=0",
            "sinceSeconds=5&sinceTime=2025-01-01T00:00:00Z",
        ] {
            let e = options(&q(bad), "p").unwrap_err();
            assert_eq!(e.code(), 422, "{bad}");
            assert_eq!(e.to_status()["details"]["kind"], "PodLogOptions");
        }
    }
}
