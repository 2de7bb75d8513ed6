//! The storage error type.

/// Result alias for storage operations.
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The precondition of op number `index` in a transaction did not hold; nothing was
    /// written. `current` is the key's mod revision at that moment (0 when absent).
    #[error("precondition failed for op {index} (current revision {current})")]
    PreconditionFailed {
        /// Index of the failing op in the transaction.
        index: usize,
        /// The key's current mod revision, 0 when the key is absent.
        current: u64,
    },
    /// The [`crate::Op::Update`] number `index` of a transaction refused the stored value;
    /// nothing was written.
    #[error("{message}")]
    Refused {
        /// Index of the refusing op in the transaction.
        index: usize,
        /// Why, in the update's words.
        message: String,
    },
    /// The requested revisions are older than the compaction point.
    #[error("revision {requested} has been compacted (oldest available {oldest})")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision still available.
        oldest: u64,
    },
    /// The lease is held by someone else.
    #[error("lease {name} is held by {holder}")]
    LeaseHeld {
        /// Lease name.
        name: String,
        /// Current holder.
        holder: String,
    },
    /// A transaction was too large for the backend.
    #[error("transaction too large: {0}")]
    TooLarge(String),
    /// The backend failed (I/O, corruption, network).
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
}

impl Error {
    /// Whether retrying the same operation later might succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Backend(_) | Error::Closed)
    }
}
