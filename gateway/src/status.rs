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

    #[test]
    fn invalid_status_lists_causes() {
        let s = ApiError::invalid("ConfigMap", "", "Bad_Name", vec![Cause::invalid("metadata.name", "x")])
            .to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["details"]["kind"], "ConfigMap");
        assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");
    }
}
