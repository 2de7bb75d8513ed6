//! Backend-independent pieces: record encodings, transaction planning and lease rules.
//!
//! Both backends read the current state of the keys a [`Txn`] touches, hand it to [`plan`]
//! and, when the plan succeeds, write what it says. Keeping this logic in one place is what
//! makes the two backends behave identically under the conformance suite.

use crate::{Change, ChangeKind, CommitResult, Error, KeyValue, Lease, Op, Precondition, Result, Txn};
use std::collections::HashMap;

/// Version byte of the object record encoding.
const OBJECT_FORMAT_V1: u8 = 1;
/// Length of the fixed object record header: version, create revision, mod revision.
pub(crate) const OBJECT_HEADER_LEN: usize = 1 + 8 + 8;

/// A stored object: its revisions and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub create_revision: u64,
    pub mod_revision: u64,
    pub value: Vec<u8>,
}

impl Stored {
    pub(crate) fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        }
    }
}

/// Encodes an object record: `[1u8][create_revision u64 BE][mod_revision u64 BE][value]`.
pub(crate) fn encode_object(create_revision: u64, mod_revision: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OBJECT_HEADER_LEN + value.len());
    out.push(OBJECT_FORMAT_V1);
    out.extend_from_slice(&create_revision.to_be_bytes());
    out.extend_from_slice(&mod_revision.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// Decodes an object record written by [`encode_object`].
pub(crate) fn decode_object(key: &[u8], raw: &[u8]) -> Result<Stored> {
    if raw.len() < OBJECT_HEADER_LEN || raw[0] != OBJECT_FORMAT_V1 {
        return Err(Error::Backend(format!(
            "corrupt object record for key {} ({} bytes)",
            String::from_utf8_lossy(key),
            raw.len()
        )));
    }
    Ok(Stored {
        create_revision: read_u64(&raw[1..9]),
        mod_revision: read_u64(&raw[9..17]),
        value: raw[OBJECT_HEADER_LEN..].to_vec(),
    })
}

/// Reads a big-endian u64 from exactly 8 bytes (callers check the length).
fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Decodes a big-endian u64 stored on its own (revision counters, log keys).
#[cfg_attr(not(feature = "fdb"), allow(dead_code))]
pub(crate) fn decode_u64(what: &str, raw: &[u8]) -> Result<u64> {
    if raw.len() != 8 {
        return Err(Error::Backend(format!("corrupt {what}: expected 8 bytes, found {}", raw.len())));
    }
    Ok(read_u64(raw))
}

/// Encodes a change-log entry as named msgpack.
pub(crate) fn encode_change(c: &Change) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(c).map_err(|e| Error::Backend(format!("failed to encode change: {e}")))
}

/// Decodes a change-log entry.
pub(crate) fn decode_change(raw: &[u8]) -> Result<Change> {
    rmp_serde::from_slice(raw).map_err(|e| Error::Backend(format!("corrupt change record: {e}")))
}

/// Encodes a lease as named msgpack.
pub(crate) fn encode_lease(l: &Lease) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(l).map_err(|e| Error::Backend(format!("failed to encode lease: {e}")))
}

/// Decodes a lease.
pub(crate) fn decode_lease(raw: &[u8]) -> Result<Lease> {
    rmp_serde::from_slice(raw).map_err(|e| Error::Backend(format!("corrupt lease record: {e}")))
}

/// What a successful [`plan`] wants written.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The answer to the caller.
    pub result: CommitResult,
    /// Final state of every touched key (`None`: delete), in first-touch order.
    pub writes: Vec<(Vec<u8>, Option<Stored>)>,
    /// Change-log entries, in revision order.
    pub changes: Vec<Change>,
    /// The revision counter after this transaction.
    pub last_revision: u64,
}

/// The distinct keys a transaction touches, in first-touch order.
pub(crate) fn touched_keys(txn: &Txn) -> Vec<Vec<u8>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for op in &txn.ops {
        if seen.insert(op.key()) {
            out.push(op.key().to_vec());
        }
    }
    out
}

/// Evaluates `txn` against `current` (the stored state of every key in [`touched_keys`])
/// with the revision counter at `revision`. Ops see the effects of earlier ops of the same
/// transaction. Fails with [`Error::PreconditionFailed`] without side effects.
pub(crate) fn plan(txn: &Txn, mut current: HashMap<Vec<u8>, Option<Stored>>, revision: u64) -> Result<Plan> {
    let mut rev = revision;
    let mut revisions = Vec::with_capacity(txn.ops.len());
    let mut previous = Vec::with_capacity(txn.ops.len());
    let mut changes = Vec::new();
    for (index, op) in txn.ops.iter().enumerate() {
        let key = op.key();
        let cur = current.get(key).cloned().flatten();
        let cur_mod = cur.as_ref().map_or(0, |s| s.mod_revision);
        let ok = match op.precondition() {
            Precondition::None => true,
            Precondition::Absent => cur.is_none(),
            Precondition::Exists => cur.is_some(),
            Precondition::ModRevision(r) => cur.is_some() && cur_mod == r,
        };
        if !ok {
            return Err(Error::PreconditionFailed { index, current: cur_mod });
        }
        previous.push(cur.clone().map(|s| s.into_kv(key.to_vec())));
        let value = match op {
            Op::Put { value, .. } => value.clone(),
            Op::Update { update, .. } => {
                let old = cur.as_ref().map_or(&[][..], |s| s.value.as_slice());
                (update.0)(old).map_err(|message| Error::Refused { index, message })?
            }
            Op::Delete { last_value, .. } => {
                match cur {
                    None => revisions.push(0),
                    Some(s) => {
                        rev += 1;
                        changes.push(Change {
                            revision: rev,
                            kind: ChangeKind::Delete,
                            key: key.to_vec(),
                            value: last_value.clone().unwrap_or(s.value),
                            create_revision: s.create_revision,
                            prev_revision: s.mod_revision,
                        });
                        current.insert(key.to_vec(), None);
                        revisions.push(rev);
                    }
                }
                continue;
            }
        };
        rev += 1;
        let (kind, create_revision) = match &cur {
            Some(s) => (ChangeKind::Update, s.create_revision),
            None => (ChangeKind::Create, rev),
        };
        changes.push(Change {
            revision: rev,
            kind,
            key: key.to_vec(),
            value: value.clone(),
            create_revision,
            prev_revision: cur_mod,
        });
        current.insert(key.to_vec(), Some(Stored { create_revision, mod_revision: rev, value }));
        revisions.push(rev);
    }
    let writes = if changes.is_empty() {
        Vec::new()
    } else {
        touched_keys(txn)
            .into_iter()
            .map(|k| {
                let v = current.remove(&k).flatten();
                (k, v)
            })
            .collect()
    };
    Ok(Plan { result: CommitResult { revisions, previous }, writes, changes, last_revision: rev })
}

/// Rough number of bytes a transaction will write (objects plus change log).
pub(crate) fn txn_write_bytes(txn: &Txn) -> usize {
    txn.ops
        .iter()
        .map(|op| match op {
            Op::Put { key, value, .. } => 2 * (key.len() + value.len()) + 64,
            Op::Delete { key, last_value, .. } => {
                2 * key.len() + last_value.as_ref().map_or(0, Vec::len) + 64
            }
            // The new value is not known yet; updates are meant for small values.
            Op::Update { key, .. } => 2 * key.len() + 4096,
        })
        .sum()
}

/// The lease rules: free, expired or same holder → granted; a new holder gets the next
/// fencing token; otherwise [`Error::LeaseHeld`].
pub(crate) fn acquire(
    existing: Option<Lease>,
    name: &str,
    holder: &str,
    ttl_ms: u64,
    now_ms: u64,
) -> Result<Lease> {
    let expires_at_ms = now_ms.saturating_add(ttl_ms);
    let token = match existing {
        None => 1,
        Some(l) if l.holder == holder => l.token,
        Some(l) if l.expired_at(now_ms) => l.token + 1,
        Some(l) => return Err(Error::LeaseHeld { name: name.to_string(), holder: l.holder }),
    };
    Ok(Lease { name: name.to_string(), holder: holder.to_string(), token, expires_at_ms })
}

/// The release rule: when `holder` holds the lease with `token`, the lease is kept (so the
/// fencing token keeps growing) but marked expired. Returns the lease to store, if any.
pub(crate) fn release(existing: Option<Lease>, holder: &str, token: u64) -> Option<Lease> {
    match existing {
        Some(l) if l.holder == holder && l.token == token && l.expires_at_ms != 0 => {
            Some(Lease { expires_at_ms: 0, ..l })
        }
        _ => None,
    }
}
