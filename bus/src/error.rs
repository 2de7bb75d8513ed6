//! The bus error type.

/// Result alias for bus operations.
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting to the NATS server failed.
    #[error("failed to connect to nats at {url}: {message}")]
    Connect {
        /// Server URL.
        url: String,
        /// Cause.
        message: String,
    },
    /// A credential file could not be read or holds no credential.
    #[error("invalid nats credentials: {0}")]
    Credentials(String),
    /// No reply within the timeout.
    #[error("request on {subject} timed out")]
    Timeout {
        /// Subject.
        subject: String,
    },
    /// No one is subscribed to the request subject.
    #[error("no responders on {subject}")]
    NoResponders {
        /// Subject.
        subject: String,
    },
    /// Encoding a payload failed.
    #[error("failed to encode payload: {0}")]
    Encode(String),
    /// Decoding a payload failed.
    #[error("failed to decode payload: {0}")]
    Decode(String),
    /// An invalid subject or pattern.
    #[error("invalid subject {0:?}")]
    InvalidSubject(String),
    /// The backend failed (network, JetStream).
    #[error("bus backend failed: {0}")]
    Backend(String),
    /// The bus was shut down.
    #[error("bus is closed")]
    Closed,
}

impl Error {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. } | Error::NoResponders { .. } | Error::Backend(_) | Error::Connect { .. }
        )
    }
}
