//! Payloads on the bus. All are msgpack with named fields (`rmp_serde::to_vec_named`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An event of the event stream: `{type, revision, object}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The store revision of the change; also the object's `metadata.resourceVersion`.
    pub revision: u64,
    /// The object after the change (for `DELETED`, its final state), in its Kubernetes
    /// JSON form.
    pub object: Value,
}

/// A request to the API service over the bus. Mirrors one HTTP request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiRequest {
    /// `get`, `list`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: String,
    /// API group (`""` for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Resource (plural).
    pub resource: String,
    /// Namespace, if any.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Object name, if any.
    #[serde(default)]
    pub name: Option<String>,
    /// Subresource (`status`, `scale`, `binding`, `eviction`), if any.
    #[serde(default)]
    pub subresource: Option<String>,
    /// Query parameters as in HTTP (`labelSelector`, `fieldSelector`, `limit`, `continue`,
    /// `resourceVersion`, `dryRun`, `fieldManager`, `force`, `fieldValidation`).
    #[serde(default)]
    pub query: Vec<(String, String)>,
    /// For `patch`: the patch content type (`application/merge-patch+json`...).
    #[serde(default)]
    pub content_type: Option<String>,
    /// The body (object, patch or DeleteOptions).
    #[serde(default)]
    pub body: Option<Value>,
}

/// The reply: an HTTP-like status code and a body (the object, a list, or a `Status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiResponse {
    /// HTTP status code.
    pub code: u16,
    /// The body.
    pub body: Value,
}

/// Encodes a payload as named msgpack.
pub fn encode<T: Serialize>(v: &T) -> crate::Result<bytes::Bytes> {
    rmp_serde::to_vec_named(v).map(bytes::Bytes::from).map_err(|e| crate::Error::Encode(e.to_string()))
}

/// Decodes a named msgpack payload.
pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> crate::Result<T> {
    rmp_serde::from_slice(b).map_err(|e| crate::Error::Decode(e.to_string()))
}

impl EventEnvelope {
    /// Encodes the envelope.
    pub fn to_bytes(&self) -> crate::Result<bytes::Bytes> {
        encode(self)
    }

    /// Decodes an envelope.
    pub fn from_bytes(b: &[u8]) -> crate::Result<EventEnvelope> {
        decode(b)
    }
}

impl ApiRequest {
    /// Encodes the request.
    pub fn to_bytes(&self) -> crate::Result<bytes::Bytes> {
        encode(self)
    }

    /// Decodes a request.
    pub fn from_bytes(b: &[u8]) -> crate::Result<ApiRequest> {
        decode(b)
    }
}

impl ApiResponse {
    /// Encodes the response.
    pub fn to_bytes(&self) -> crate::Result<bytes::Bytes> {
        encode(self)
    }

    /// Decodes a response.
    pub fn from_bytes(b: &[u8]) -> crate::Result<ApiResponse> {
        decode(b)
    }
}
