//! The data types exchanged with a [`crate::Store`].

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the put that created the key (kept across updates).
    pub create_revision: u64,
    /// Revision of the last put.
    pub mod_revision: u64,
}

/// The result of a range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResult {
    /// Keys in order.
    pub kvs: Vec<KeyValue>,
    /// The revision of the snapshot the keys were read at.
    pub revision: u64,
    /// Whether more keys were left in the range past `limit`.
    pub more: bool,
}

/// A guard on one op of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No condition.
    None,
    /// The key must not exist.
    Absent,
    /// The key must exist (any revision).
    Exists,
    /// The key must exist with exactly this mod revision.
    ModRevision(u64),
}

/// A change of a stored value computed when its transaction commits, from the value as it
/// is then: the new value, or why the transaction must not commit (see [`Op::Update`]).
/// It may run more than once (a backend retries) and must only compute.
#[derive(Clone)]
pub struct Update(pub std::sync::Arc<UpdateFn>);

/// The function of an [`Update`]: the stored value to the new one, or why not.
pub type UpdateFn = dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync;

impl Update {
    /// Wraps `f`.
    pub fn new(f: impl Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static) -> Update {
        Update(std::sync::Arc::new(f))
    }
}

impl std::fmt::Debug for Update {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Update(..)")
    }
}

impl PartialEq for Update {
    fn eq(&self, other: &Update) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Update {}

/// One mutation in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write `value` at `key`.
    Put {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
        /// Guard.
        precondition: Precondition,
    },
    /// Delete `key`. `last_value` is recorded in the change log as the final state of the
    /// deleted object (so watchers can see what was deleted); when `None`, the stored value
    /// is recorded. Deleting an absent key with `Precondition::None` is a no-op that gets no
    /// revision (its slot in [`CommitResult::revisions`] is 0).
    Delete {
        /// Key.
        key: Vec<u8>,
        /// Guard.
        precondition: Precondition,
        /// The value to record in the change log for this delete.
        last_value: Option<Vec<u8>>,
    },
    /// Rewrite the value of `key`, which must exist, with `update` applied to the value it
    /// has when the transaction commits (after earlier ops of the same transaction), as a
    /// put. When `update` refuses, the transaction fails with [`crate::Error::Refused`] and
    /// writes nothing; when the key is absent, with [`crate::Error::PreconditionFailed`].
    /// Concurrent updates of one key thus never conflict: each sees the one before (a
    /// counter with a limit, for instance).
    Update {
        /// Key.
        key: Vec<u8>,
        /// The change.
        update: Update,
    },
}

impl Op {
    /// A put.
    pub fn put(key: Vec<u8>, value: Vec<u8>, precondition: Precondition) -> Op {
        Op::Put { key, value, precondition }
    }

    /// A delete that records the stored value as the final state.
    pub fn delete(key: Vec<u8>, precondition: Precondition) -> Op {
        Op::Delete { key, precondition, last_value: None }
    }

    /// The key this op touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } | Op::Update { key, .. } => key,
        }
    }

    /// The op's guard.
    pub fn precondition(&self) -> Precondition {
        match self {
            Op::Put { precondition, .. } | Op::Delete { precondition, .. } => *precondition,
            Op::Update { .. } => Precondition::Exists,
        }
    }
}

/// An all-or-nothing group of ops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// The ops, applied in order.
    pub ops: Vec<Op>,
}

impl Txn {
    /// A transaction of one op.
    pub fn single(op: Op) -> Txn {
        Txn { ops: vec![op] }
    }
}

/// The outcome of a successful commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitResult {
    /// The revision given to each op, in op order (0 for a delete of an absent key).
    pub revisions: Vec<u64>,
    /// For each op, the key's previous value and mod revision, if it existed.
    pub previous: Vec<Option<KeyValue>>,
}

/// Whether a change wrote or removed a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// The key was created (it did not exist before).
    Create,
    /// The key existed and was overwritten.
    Update,
    /// The key was removed.
    Delete,
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The revision of this mutation.
    pub revision: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// The key.
    #[serde(with = "serde_bytes_compat")]
    pub key: Vec<u8>,
    /// The new value, or for a delete the final value of the object.
    #[serde(with = "serde_bytes_compat")]
    pub value: Vec<u8>,
    /// The key's create revision (for a delete: of the deleted object).
    pub create_revision: u64,
    /// The key's mod revision before this change (0 when it did not exist).
    pub prev_revision: u64,
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Lease name.
    pub name: String,
    /// Current holder.
    pub holder: String,
    /// Fencing token: grows each time the holder changes.
    pub token: u64,
    /// Expiry as milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

impl Lease {
    /// Whether the lease has expired at `now_ms`.
    pub fn expired_at(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }
}

/// Milliseconds since the Unix epoch, from the wall clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds in a duration, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Serializes byte vectors as msgpack binary rather than arrays of integers.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}
