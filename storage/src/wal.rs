//! The write-ahead log of the embedded store.
//!
//! Every group commit of the redb backend that changes anything is one [`Record`], appended
//! to the current segment file and made durable with one `fdatasync` before any caller is
//! answered. The redb tree is then brought up to date without an fsync of its own; it is
//! made durable only at checkpoints, after which the segments it covers are deleted. On
//! open, the records past the tree's last durable record are replayed.
//!
//! # Files
//!
//! A directory beside the redb file (`state.redb` → `state.wal/`) holds segments named by
//! the sequence number of their first record, `{seq:020}.wal`. Only the newest segment is
//! appended to.
//!
//! # Record encoding (little-endian)
//!
//! ```text
//! [body length u32][crc32 of body u32][body]
//! body: [seq u64][revision u64][compacted u64]
//!       [change count u32] ([len u32][named msgpack Change])*
//!       [lease count u32]  ([name len u32][name][len u32][named msgpack Lease])*
//! ```
//!
//! `revision` and `compacted` are the counters after the record. Sequence numbers grow by
//! one per record. A body length of 0 marks the end of the log (the rest of a segment may be
//! zeros). Reading stops at the first record that is cut short, fails its checksum or does
//! not follow its predecessor's sequence number: that is a torn or corrupt tail, which is
//! truncated away (with a warning naming the file, offset and bytes dropped) together with
//! any later segment. A torn tail can only hold records whose callers were never answered,
//! because a caller is answered only after the `fdatasync` of its record returned.

use crate::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Size of the record header: body length and checksum.
const HEADER_LEN: usize = 8;
/// Largest body accepted when reading; a larger length is a corrupt header.
const MAX_BODY: usize = 1 << 30;
/// Bytes of the fixed part of a body: seq, revision, compacted.
const FIXED_LEN: usize = 24;

/// One record: everything one group commit changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// Sequence number (one more than the previous record's).
    pub seq: u64,
    /// The revision counter after this record.
    pub revision: u64,
    /// The compaction point after this record.
    pub compacted: u64,
    /// Change-log entries as stored in the `changes` table (named msgpack), in revision
    /// order; the objects table follows from them.
    pub changes: Vec<Vec<u8>>,
    /// Leases written: name and named msgpack value.
    pub leases: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// Appends the framed record to `out`.
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.revision.to_le_bytes());
        out.extend_from_slice(&self.compacted.to_le_bytes());
        put_len(out, self.changes.len())?;
        for c in &self.changes {
            put_len(out, c.len())?;
            out.extend_from_slice(c);
        }
        put_len(out, self.leases.len())?;
        for (name, raw) in &self.leases {
            put_len(out, name.len())?;
            out.extend_from_slice(name.as_bytes());
            put_len(out, raw.len())?;
            out.extend_from_slice(raw);
        }
        let body_len = out.len() - start - HEADER_LEN;
        if body_len > MAX_BODY {
            return Err(Error::TooLarge(format!("write-ahead log record of {body_len} bytes")));
        }
        let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
        out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Decodes a body whose checksum matched.
    fn decode(body: &[u8]) -> Option<Record> {
        let mut r = Reader { b: body };
        let mut rec = Record { seq: r.u64()?, revision: r.u64()?, compacted: r.u64()?, ..Record::default() };
        let n = r.u32()?;
        for _ in 0..n {
            let len = r.u32()? as usize;
            rec.changes.push(r.bytes(len)?.to_vec());
        }
        let n = r.u32()?;
        for _ in 0..n {
            let len = r.u32()? as usize;
            let name = String::from_utf8(r.bytes(len)?.to_vec()).ok()?;
            let len = r.u32()? as usize;
            rec.leases.push((name, r.bytes(len)?.to_vec()));
        }
        r.b.is_empty().then_some(rec)
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) -> Result<()> {
    let n = u32::try_from(n).map_err(|_| Error::TooLarge(format!("write-ahead log field of {n} bytes")))?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

/// A cursor over a record body.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
}

/// The log: the segment being appended to, and the older ones not yet checkpointed.
pub(crate) struct Wal {
    dir: PathBuf,
    /// The segment being appended to.
    file: File,
    path: PathBuf,
    /// Bytes of whole, durable records in `file`.
    len: u64,
    /// Older segments, still needed until the next checkpoint.
    older: Vec<PathBuf>,
    /// Sequence number of the next record.
    next_seq: u64,
    /// A failed append may have left bytes past `len`: cut them before the next append.
    dirty: bool,
    buf: Vec<u8>,
}

/// What [`Wal::open`] found.
pub(crate) struct Opened {
    pub wal: Wal,
    /// Records with a sequence number greater than the caller's `applied`, in order.
    pub records: Vec<Record>,
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Backend(format!("{context}: {e}"))
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// The log directory for the redb file at `db_path`.
pub(crate) fn dir_for(db_path: &Path) -> PathBuf {
    db_path.with_extension("wal")
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("failed to sync directory {}", dir.display())))
}

impl Wal {
    /// Opens the log in `dir` (creating it), reads every segment, truncates a torn or
    /// corrupt tail, and returns the records after `applied` (the last record the redb tree
    /// holds durably). Appends go to a new segment after the last record found.
    pub(crate) fn open(dir: &Path, applied: u64) -> Result<Opened> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("failed to create {}", dir.display())))?;
        let mut segments: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(format!("failed to list {}", dir.display())))? {
            let entry = entry.map_err(io_err(format!("failed to list {}", dir.display())))?;
            let name = entry.file_name();
            let Some(seq) = name.to_str().and_then(|n| n.strip_suffix(".wal")).and_then(|n| n.parse().ok())
            else {
                continue;
            };
            segments.push((seq, entry.path()));
        }
        segments.sort();

        let mut records = Vec::new();
        let mut last: Option<u64> = None;
        let mut keep: Vec<PathBuf> = Vec::new();
        let mut cut = false;
        for (first, path) in segments {
            if cut {
                tracing::warn!(file = %path.display(), "removing write-ahead log segment after a torn or corrupt tail");
                std::fs::remove_file(&path)
                    .map_err(io_err(format!("failed to remove {}", path.display())))?;
                continue;
            }
            let data = std::fs::read(&path).map_err(io_err(format!("failed to read {}", path.display())))?;
            let mut off = 0usize;
            let mut expect = last.map(|l| l + 1).unwrap_or(first);
            let end = loop {
                let Some(header) = data.get(off..off + HEADER_LEN) else {
                    break (off < data.len()).then_some("a cut-short record header");
                };
                let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
                let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
                if body_len == 0 {
                    // End of the log; the rest must be zeros (preallocated or never written).
                    break data[off..].iter().any(|b| *b != 0).then_some("bytes after the end mark");
                }
                if !(FIXED_LEN..=MAX_BODY).contains(&body_len) {
                    break Some("an impossible record length");
                }
                let Some(body) = data.get(off + HEADER_LEN..off + HEADER_LEN + body_len) else {
                    break Some("a cut-short record");
                };
                if crc32fast::hash(body) != crc {
                    break Some("a checksum mismatch");
                }
                let Some(rec) = Record::decode(body) else {
                    break Some("an undecodable record");
                };
                if rec.seq != expect {
                    break Some("a sequence number out of order");
                }
                expect += 1;
                last = Some(rec.seq);
                if rec.seq > applied {
                    records.push(rec);
                }
                off += HEADER_LEN + body_len;
            };
            if let Some(why) = end {
                tracing::warn!(
                    file = %path.display(),
                    offset = off,
                    dropped_bytes = data.len() - off,
                    reason = why,
                    "write-ahead log has a torn or corrupt tail; truncating it at the last whole record"
                );
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(format!("failed to open {}", path.display())))?;
                f.set_len(off as u64).map_err(io_err(format!("failed to truncate {}", path.display())))?;
                f.sync_all().map_err(io_err(format!("failed to sync {}", path.display())))?;
                cut = true;
            }
            keep.push(path);
        }
        let last = last.unwrap_or(0);
        if let Some(first) = records.first() {
            if first.seq != applied + 1 {
                return Err(Error::Backend(format!(
                    "write-ahead log in {} starts at record {} but the tree holds only up to {applied}",
                    dir.display(),
                    first.seq
                )));
            }
        }
        let next_seq = last.max(applied) + 1;
        let path = dir.join(segment_name(next_seq));
        // A segment of that name can only be an empty leftover (its records would have
        // been read above); start it afresh.
        keep.retain(|p| *p != path);
        let file = File::create(&path).map_err(io_err(format!("failed to create {}", path.display())))?;
        sync_dir(dir)?;
        Ok(Opened {
            wal: Wal {
                dir: dir.to_path_buf(),
                file,
                path,
                len: 0,
                older: keep,
                next_seq,
                dirty: false,
                buf: Vec::new(),
            },
            records,
        })
    }

    /// The sequence number the next record must carry.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes in the current segment.
    pub(crate) fn segment_len(&self) -> u64 {
        self.len
    }

    /// Appends `rec` (whose `seq` must be [`Wal::next_seq`]) and waits until it is durable.
    /// On failure nothing of it remains in the log (the partial write is cut off), so the
    /// caller can fail the group commit and go on.
    pub(crate) fn append(&mut self, rec: &Record) -> Result<()> {
        debug_assert_eq!(rec.seq, self.next_seq);
        if self.dirty {
            self.cut()?;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let r = rec.encode_into(&mut buf).and_then(|()| {
            self.dirty = true;
            self.file
                .write_all_at(&buf, self.len)
                .and_then(|()| self.file.sync_data())
                .map_err(io_err(format!("failed to append to the write-ahead log {}", self.path.display())))
        });
        match r {
            Ok(()) => {
                self.len += buf.len() as u64;
                self.next_seq += 1;
                self.dirty = false;
            }
            Err(_) if self.dirty => {
                // Best effort now; retried before the next append.
                let _ = self.cut();
            }
            Err(_) => {}
        }
        if buf.capacity() <= 16 << 20 {
            self.buf = buf;
        }
        r
    }

    /// Cuts the current segment back to its last whole record.
    fn cut(&mut self) -> Result<()> {
        self.file
            .set_len(self.len)
            .and_then(|()| self.file.sync_data())
            .map_err(io_err(format!("failed to truncate the write-ahead log {}", self.path.display())))?;
        self.dirty = false;
        Ok(())
    }

    /// After a checkpoint made every record so far durable in the tree: starts a new
    /// segment and deletes the old ones.
    pub(crate) fn rotate(&mut self) -> Result<()> {
        let path = self.dir.join(segment_name(self.next_seq));
        if path != self.path {
            let file = File::create(&path).map_err(io_err(format!("failed to create {}", path.display())))?;
            sync_dir(&self.dir)?;
            let old = std::mem::replace(&mut self.path, path);
            self.file = file;
            self.len = 0;
            self.dirty = false;
            self.older.push(old);
        }
        for p in self.older.drain(..) {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %p.display(), error = %e, "failed to remove a checkpointed write-ahead log segment");
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn rec(seq: u64) -> Record {
        Record {
            seq,
            revision: seq * 2,
            compacted: 0,
            changes: vec![format!("change-{seq}").into_bytes()],
            leases: vec![("l".into(), b"lease".to_vec())],
        }
    }

    #[test]
    fn records_round_trip_and_replay_after_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 0).unwrap().wal;
        for s in 1..=5 {
            w.append(&rec(s)).unwrap();
        }
        drop(w);
        let o = Wal::open(dir.path(), 2).unwrap();
        assert_eq!(o.records, (3..=5).map(rec).collect::<Vec<_>>());
        assert_eq!(o.wal.next_seq(), 6);
    }

    #[test]
    fn rotation_keeps_only_the_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 0).unwrap().wal;
        w.append(&rec(1)).unwrap();
        w.append(&rec(2)).unwrap();
        drop(w);
        // Reopened: the old segment's records are replayed by the caller, then checkpointed.
        let mut o = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(o.records.len(), 2);
        o.wal.rotate().unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(segment_name(3))]);
    }

    #[test]
    fn torn_tail_is_truncated_at_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 0).unwrap().wal;
        for s in 1..=3 {
            w.append(&rec(s)).unwrap();
        }
        let (path, whole) = (w.path.clone(), w.len);
        drop(w);
        // A torn fourth record: half of it written.
        let mut buf = Vec::new();
        rec(4).encode_into(&mut buf).unwrap();
        let f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        (&f).write_all(&buf[..buf.len() / 2]).unwrap();
        drop(f);
        let o = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(o.records, (1..=3).map(rec).collect::<Vec<_>>());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        assert_eq!(o.wal.next_seq(), 4);
    }

    #[test]
    fn corrupt_record_and_later_segments_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 0).unwrap().wal;
        for s in 1..=3 {
            w.append(&rec(s)).unwrap();
        }
        let first = w.path.clone();
        // A later segment that must go once the first one's tail is found corrupt.
        let later = dir.path().join(segment_name(4));
        let mut buf = Vec::new();
        rec(4).encode_into(&mut buf).unwrap();
        std::fs::write(&later, &buf).unwrap();
        drop(w);
        // Flip a byte in the body of record 2.
        let mut data = std::fs::read(&first).unwrap();
        let second = data.len() / 3 + HEADER_LEN + 2;
        data[second] ^= 0xff;
        std::fs::write(&first, &data).unwrap();
        let o = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(o.records, vec![rec(1)]);
        assert!(!later.exists(), "the segment after the corrupt tail is removed");
        assert_eq!(o.wal.next_seq(), 2);
    }

    #[test]
    fn zero_filled_tail_is_a_clean_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 0).unwrap().wal;
        w.append(&rec(1)).unwrap();
        let path = w.path.clone();
        drop(w);
        let f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        (&f).write_all(&[0u8; 4096]).unwrap();
        drop(f);
        let o = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(o.records, vec![rec(1)]);
    }

    #[test]
    fn a_gap_between_tree_and_log_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), 4).unwrap().wal;
        assert_eq!(w.next_seq(), 5);
        w.append(&rec(5)).unwrap();
        drop(w);
        assert!(Wal::open(dir.path(), 3).is_err(), "record 4 is in neither the tree nor the log");
        assert_eq!(Wal::open(dir.path(), 4).unwrap().records, vec![rec(5)]);
    }
}
