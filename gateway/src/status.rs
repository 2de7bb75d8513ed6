//! Errors of the API service, and their one mapping to a Kubernetes `Status`.

use capstan_api::{Cause, ResourceInfo};
use serde_json::{json, Value};

/// An API error. Every variant maps to one HTTP code and `Status.reason`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 401.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403.
    #[error("{message}")]
    Forbidden {
        /// Message.
        message: String,
        /// Resource details.
        details: Option<Details>,
    },
    /// 404.
    #[error("{message}")]
    NotFound {
        /// Message.
        message: String,
        /// Resource details.
        details: Option<Details>,
    },
    /// 405.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 406.
    #[error("{0}")]
    NotAcceptable(String),
    /// 409 AlreadyExists.
    #[error("{message}")]
    AlreadyExists {
        /// Message.
        message: String,
        /// Resource details.
        details: Details,
    },
    /// 409 Conflict.
    #[error("{message}")]
    Conflict {
        /// Message.
        message: String,
        /// Resource details (with causes for server-side apply conflicts).
        details: Details,
    },
    /// 410 Expired.
    #[error("{0}")]
    Expired(String),
    /// 413.
    #[error("{0}")]
    TooLarge(String),
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422.
    #[error("{message}")]
    Invalid {
        /// Message.
        message: String,
        /// Kind, name and causes.
        details: Details,
    },
    /// 429.
    #[error("{0}")]
    TooManyRequests(String),
    /// 429 with causes and a retry hint (the eviction subresource's budget refusals).
    #[error("{message}")]
    TooManyRequestsWith {
        /// Message.
        message: String,
        /// Causes and `retryAfterSeconds`.
        details: Details,
    },
    /// 500.
    #[error("{0}")]
    Internal(String),
    /// 503.
    #[error("{0}")]
    Unavailable(String),
    /// 504.
    #[error("{0}")]
    Timeout(String),
    /// An error another component (a node agent) answered with, passed on with its own
    /// HTTP code and `Status.reason`.
    #[error("{message}")]
    Relayed {
        /// HTTP code.
        code: u16,
        /// `Status.reason`.
        reason: String,
        /// Message.
        message: String,
    },
}

/// `Status.details`.
#[derive(Debug, Clone, Default)]
pub struct Details {
    /// Object name.
    pub name: String,
    /// API group.
    pub group: String,
    /// Resource (plural) for most reasons, Kind for Invalid.
    pub kind: String,
    /// Causes.
    pub causes: Vec<(String, String, String)>,
    /// Retry hint.
    pub retry_after_seconds: Option<u32>,
}

impl Details {
    fn to_json(&self) -> Value {
        let mut d = serde_json::Map::new();
        if !self.name.is_empty() {
            d.insert("name".into(), json!(self.name));
        }
        if !self.group.is_empty() {
            d.insert("group".into(), json!(self.group));
        }
        if !self.kind.is_empty() {
            d.insert("kind".into(), json!(self.kind));
        }
        if !self.causes.is_empty() {
            let causes: Vec<Value> = self
                .causes
                .iter()
                .map(|(reason, message, field)| {
                    let mut c = json!({"reason": reason, "message": message});
                    if !field.is_empty() {
                        c["field"] = json!(field);
                    }
                    c
                })
                .collect();
            d.insert("causes".into(), Value::Array(causes));
        }
        if let Some(r) = self.retry_after_seconds {
            d.insert("retryAfterSeconds".into(), json!(r));
        }
        Value::Object(d)
    }
}

fn res_details(res: &ResourceInfo, name: &str) -> Details {
    Details {
        name: name.to_string(),
        group: res.group.to_string(),
        kind: res.plural.to_string(),
        ..Default::default()
    }
}

impl ApiError {
    /// `pods "x" not found`.
    pub fn not_found(res: &ResourceInfo, name: &str) -> ApiError {
        ApiError::NotFound {
            message: format!("{} \"{}\" not found", res.group_resource(), name),
            details: Some(res_details(res, name)),
        }
    }

    /// `namespaces "x" not found`.
    pub fn namespace_not_found(ns: &str) -> ApiError {
        ApiError::NotFound {
            message: format!("namespaces \"{ns}\" not found"),
            details: Some(Details { name: ns.into(), kind: "namespaces".into(), ..Default::default() }),
        }
    }

    /// `deployments.apps "web" already exists`.
    pub fn already_exists(res: &ResourceInfo, name: &str) -> ApiError {
        ApiError::AlreadyExists {
            message: format!("{} \"{}\" already exists", res.group_resource(), name),
            details: res_details(res, name),
        }
    }

    /// The optimistic-concurrency conflict.
    pub fn conflict(res: &ResourceInfo, name: &str) -> ApiError {
        ApiError::Conflict {
            message: format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                res.group_resource(),
                name
            ),
            details: res_details(res, name),
        }
    }

    /// A conflict with a custom message.
    pub fn conflict_msg(res: &ResourceInfo, name: &str, message: String) -> ApiError {
        ApiError::Conflict { message, details: res_details(res, name) }
    }

    /// 422 with causes; kubectl prints the causes.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let list: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let message = if list.len() == 1 {
            format!("{kind} \"{name}\" is invalid: {}", list[0])
        } else {
            format!("{kind} \"{name}\" is invalid: [{}]", list.join(", "))
        };
        ApiError::Invalid {
            message,
            details: Details {
                name: name.to_string(),
                group: group.to_string(),
                kind: kind.to_string(),
                causes: causes.into_iter().map(|c| (c.reason.to_string(), c.message, c.field)).collect(),
                retry_after_seconds: None,
            },
        }
    }

    /// 403 in upstream's wording.
    pub fn forbidden(res: &ResourceInfo, name: &str, reason: &str) -> ApiError {
        let what = if name.is_empty() {
            res.group_resource()
        } else {
            format!("{} \"{}\"", res.group_resource(), name)
        };
        ApiError::Forbidden {
            message: format!("{what} is forbidden: {reason}"),
            details: Some(res_details(res, name)),
        }
    }

    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden { .. } => 403,
            ApiError::NotFound { .. } => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::NotAcceptable(_) => 406,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => 409,
            ApiError::Expired(_) => 410,
            ApiError::TooLarge(_) => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Invalid { .. } => 422,
            ApiError::TooManyRequests(_) | ApiError::TooManyRequestsWith { .. } => 429,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_) => 503,
            ApiError::Timeout(_) => 504,
            ApiError::Relayed { code, .. } => *code,
        }
    }

    /// `Status.reason`.
    pub fn reason(&self) -> &str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::NotFound { .. } => "NotFound",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::NotAcceptable(_) => "NotAcceptable",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Expired(_) => "Expired",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::TooManyRequests(_) | ApiError::TooManyRequestsWith { .. } => "TooManyRequests",
            ApiError::Internal(_) => "InternalError",
            ApiError::Unavailable(_) => "ServiceUnavailable",
            ApiError::Timeout(_) => "Timeout",
            ApiError::Relayed { reason, .. } => reason,
        }
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            ApiError::Forbidden { details, .. } | ApiError::NotFound { details, .. } => details.clone(),
            ApiError::AlreadyExists { details, .. }
            | ApiError::Conflict { details, .. }
            | ApiError::Invalid { details, .. }
            | ApiError::TooManyRequestsWith { details, .. } => Some(details.clone()),
            ApiError::TooManyRequests(_) => {
                Some(Details { retry_after_seconds: Some(1), ..Default::default() })
            }
            _ => None,
        };
        if let Some(d) = details {
            s["details"] = d.to_json();
        }
        s
    }
}

impl From<capstan_storage::Error> for ApiError {
    fn from(e: capstan_storage::Error) -> ApiError {
        match e {
            capstan_storage::Error::Compacted { requested, oldest } => {
                ApiError::Expired(format!("too old resource version: {requested} ({oldest})"))
            }
            capstan_storage::Error::TooLarge(m) => ApiError::TooLarge(m),
            capstan_storage::Error::Closed => ApiError::Unavailable("storage is shutting down".into()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// A success `Status` (for deletes of collections and such).
pub fn success_status(details: Option<Value>) -> Value {
    let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

/// Field orders of upstream's Go structs, which its JSON encoder follows.
const STATUS_ORDER: &[&str] =
    &["kind", "apiVersion", "metadata", "status", "message", "reason", "details", "code"];
const LIST_META_ORDER: &[&str] = &["selfLink", "resourceVersion", "continue", "remainingItemCount"];
const DETAILS_ORDER: &[&str] = &["name", "group", "kind", "uid", "causes", "retryAfterSeconds"];
const CAUSE_ORDER: &[&str] = &["reason", "message", "field"];

/// Writes the object `v` with the keys of `order` first, in that order, then any others
/// (sorted); `child` gives the order of a key's object (or array of objects) value.
fn write_ordered(
    out: &mut Vec<u8>,
    v: &Value,
    order: &[&str],
    child: &dyn Fn(&str) -> &'static [&'static str],
) {
    let Some(m) = v.as_object() else {
        let _ = serde_json::to_writer(&mut *out, v);
        return;
    };
    out.push(b'{');
    let rest = m.keys().filter(|k| !order.contains(&k.as_str())).map(String::as_str);
    let mut first = true;
    for k in order.iter().copied().chain(rest) {
        let Some(val) = m.get(k) else { continue };
        if !first {
            out.push(b',');
        }
        first = false;
        let _ = serde_json::to_writer(&mut *out, k);
        out.push(b':');
        let sub = child(k);
        match val {
            Value::Array(items) if !sub.is_empty() => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_ordered(out, item, sub, &|_| &[]);
                }
                out.push(b']');
            }
            _ => write_ordered(out, val, sub, &|k| if k == "causes" { CAUSE_ORDER } else { &[] }),
        }
    }
    out.push(b'}');
}

/// A `v1` Status as upstream's JSON encoder writes it: the Go struct's field order (`kind`,
/// `apiVersion`, `metadata`, `status`, `message`, `reason`, `details`, `code`; details and
/// causes likewise) and a trailing newline, so clients comparing bodies byte for byte see
/// upstream's. `None` for anything else.
pub fn status_json(v: &Value) -> Option<Vec<u8>> {
    if v.get("kind").and_then(Value::as_str) != Some("Status")
        || v.get("apiVersion").and_then(Value::as_str) != Some("v1")
    {
        return None;
    }
    let mut out = Vec::with_capacity(256);
    write_ordered(&mut out, v, STATUS_ORDER, &|k| match k {
        "metadata" => LIST_META_ORDER,
        "details" => DETAILS_ORDER,
        _ => &[],
    });
    out.push(b'\n');
    Some(go_escape(out))
}

/// A JSON response body: a `v1` Status as [`status_json`] writes it; any other object with
/// `kind` and `apiVersion` first, then `metadata`, as upstream's types put them (the rest
/// keeps serde_json's key order).
pub fn response_json(v: &Value) -> Vec<u8> {
    if let Some(b) = status_json(v) {
        return b;
    }
    if v.get("kind").is_none() {
        return serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    }
    let mut out = Vec::with_capacity(1024);
    write_ordered(&mut out, v, &["kind", "apiVersion", "metadata"], &|_| &[]);
    out
}

/// Go's JSON encoder escapes `<`, `>`, `&`, U+2028 and U+2029 inside strings (they occur
/// nowhere else in JSON), as `\u003c` and so on.
fn go_escape(out: Vec<u8>) -> Vec<u8> {
    let special = |b: &[u8]| matches!(b, [b'<' | b'>' | b'&', ..] | [0xE2, 0x80, 0xA8 | 0xA9, ..]);
    if !(0..out.len()).any(|i| special(&out[i..])) {
        return out;
    }
    let mut esc = Vec::with_capacity(out.len() + 16);
    let mut i = 0;
    while i < out.len() {
        match &out[i..] {
            [b'<', ..] => esc.extend_from_slice(b"\\u003c"),
            [b'>', ..] => esc.extend_from_slice(b"\\u003e"),
            [b'&', ..] => esc.extend_from_slice(b"\\u0026"),
            [0xE2, 0x80, 0xA8, ..] => {
                esc.extend_from_slice(b"\\u2028");
                i += 2;
            }
            [0xE2, 0x80, 0xA9, ..] => {
                esc.extend_from_slice(b"\\u2029");
                i += 2;
            }
            [b, ..] => esc.push(*b),
            [] => break,
        }
        i += 1;
    }
    esc
}

/// Result alias for the API service.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_status() {
        let pods = capstan_api::registry::find("", "v1", "pods").unwrap();
        let s = ApiError::not_found(pods, "x").to_status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["message"], "pods \"x\" not found");
        assert_eq!(s["details"]["kind"], "pods");
    }

    /// Bodies recorded from upstream API servers (in public client logs and tests).
    #[test]
    fn status_bodies_are_upstreams_bytes() {
        let jobs = capstan_api::registry::find("batch", "v1", "jobs").unwrap();
        let pvs = capstan_api::registry::find("", "v1", "persistentvolumes").unwrap();
        let body = |e: ApiError| String::from_utf8(status_json(&e.to_status()).unwrap()).unwrap();
        assert_eq!(
            body(ApiError::already_exists(jobs, "pipeline-19ee700c-fix6")),
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"jobs.batch \\\"pipeline-19ee700c-fix6\\\" already exists\",\"reason\":\"AlreadyExists\",\"details\":{\"name\":\"pipeline-19ee700c-fix6\",\"group\":\"batch\",\"kind\":\"jobs\"},\"code\":409}\n"
        );
        assert_eq!(
            body(ApiError::already_exists(pvs, "mysql-instance-pv")),
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"persistentvolumes \\\"mysql-instance-pv\\\" already exists\",\"reason\":\"AlreadyExists\",\"details\":{\"name\":\"mysql-instance-pv\",\"kind\":\"persistentvolumes\"},\"code\":409}\n"
        );
        let s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "a <b> & c"});
        assert_eq!(
            String::from_utf8(status_json(&s).unwrap()).unwrap(),
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"a \\u003cb\\u003e \\u0026 c\"}\n"
        );
        assert!(status_json(&json!({"kind": "Pod", "apiVersion": "v1"})).is_none());
        let pod =
            json!({"apiVersion": "v1", "kind": "Pod", "spec": {"b": 1, "a": 2}, "metadata": {"name": "p"}});
        assert_eq!(
            String::from_utf8(response_json(&pod)).unwrap(),
            r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p"},"spec":{"a":2,"b":1}}"#
        );
    }

    #[test]
    fn invalid_status_lists_causes() {
        let s = ApiError::invalid("ConfigMap", "", "Bad_Name", vec![Cause::invalid("metadata.name", "x")])
            .to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["details"]["kind"], "ConfigMap");
        assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");
    }
}
