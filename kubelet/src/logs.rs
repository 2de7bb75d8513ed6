//! The CRI container log format, read side.
//!
//! The runtime's shim writes one record per line:
//! `2016-10-06T00:17:09.669794202Z stdout F some text`: an RFC 3339 timestamp, the stream
//! (`stdout` or `stderr`), a tag (`F`: the record ends a line, whose newline was stripped; `P`: a
//! partial line, continued by the next record) and the content. [`stream_log`] turns such a file
//! back into the container's output as `kubectl logs` expects it from `pods/log`.
//!
//! Lines (below) are the container's lines: the records up to and including an `F` one (or up to
//! the end of the file). A line's timestamp is that of its first record.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use jiff::Timestamp;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::runtime::logfile::{rotated_entries, rotated_name};

/// How often a followed log is polled for appended data.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Read size, forwards and backwards.
const BLOCK: usize = 64 * 1024;
/// Records longer than this are skipped as malformed (the runtime writes at most 16 KiB).
const MAX_RECORD: usize = 1024 * 1024;

/// What to read of a container log (the `pods/log` query parameters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep reading appended data until the container is done.
    pub follow: bool,
    /// Only the last N lines; all when `None` or negative (`Some(0)`: none of those already
    /// written).
    pub tail_lines: Option<i64>,
    /// Prefix each line with its timestamp (RFC 3339, nanoseconds, fixed width) and a space.
    pub timestamps: bool,
    /// Drop lines older than this.
    pub since: Option<Timestamp>,
    /// Stop after this many bytes of output (which may cut a line); no limit when `None` or not
    /// positive.
    pub limit_bytes: Option<i64>,
}

/// Streams a container's output from its CRI log file as `kubectl` expects from `pods/log`: the
/// raw bytes of the content, stdout and stderr interleaved as recorded, partial records joined
/// with their continuation, each line prefixed by its timestamp with `timestamps`, after
/// `tail_lines`, `since` and up to `limit_bytes` (see [`LogOptions`]). Malformed records are
/// skipped.
///
/// With `follow`, the file is polled (every 100 ms) for appended data until `done` is `true` (or
/// its sender is dropped) and the file has been read to its end; a last line without a newline is
/// then emitted too. Without `follow`, the stream ends at the end of the file. When the file at
/// `path` is replaced while followed (the shim rotated it, see
/// [`crate::runtime::logfile`]), the rest of the old file is read, then the new one from its
/// start, so no line is lost or repeated. A log truncated in place is not noticed.
pub fn stream_log(
    path: PathBuf,
    opts: LogOptions,
    done: watch::Receiver<bool>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let reader = LogReader::new(path, opts, done);
    futures::stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        match reader.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(reader))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// Reads a log the way [`stream_log`] does, without following it, into memory.
pub async fn read_log(path: &Path, opts: &LogOptions) -> io::Result<Vec<u8>> {
    let opts = LogOptions { follow: false, ..opts.clone() };
    let (_done_tx, done) = watch::channel(true);
    let mut stream = std::pin::pin!(stream_log(path.to_path_buf(), opts, done));
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// One parsed record.
#[derive(Debug, PartialEq, Eq)]
struct Record<'a> {
    timestamp: Timestamp,
    partial: bool,
    content: &'a [u8],
}

/// Parses `<timestamp> <stdout|stderr> <F|P>[:more tags] <content>` (the content may be missing
/// when empty).
fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let (timestamp, rest) = split_space(line)?;
    let (stream, rest) = split_space(rest)?;
    if stream != b"stdout" && stream != b"stderr" {
        return None;
    }
    let (tags, content) = split_space(rest).unwrap_or((rest, &[]));
    let partial = match tags.split(|&b| b == b':').next()? {
        b"F" => false,
        b"P" => true,
        _ => return None,
    };
    let timestamp = std::str::from_utf8(timestamp).ok()?.parse::<Timestamp>().ok()?;
    Some(Record { timestamp, partial, content })
}

fn split_space(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == b' ')?;
    Some((&s[..i], &s[i + 1..]))
}

/// `2006-01-02T15:04:05.000000000Z`, as the kubelet prints timestamps.
fn format_timestamp(ts: Timestamp) -> String {
    let dt = ts.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond()
    )
}

/// Where the last `n` lines start: scans the file backwards block by block, counting the records
/// that end a line. The file's last line may lack its newline (being written, or the final one).
fn tail_start(file: &mut std::fs::File, n: u64) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    // `buf` holds file[buf_pos..buf_pos + buf.len()].
    let mut buf_pos = len;
    let mut buf: Vec<u8> = Vec::new();
    let mut load_block = |buf_pos: &mut u64, buf: &mut Vec<u8>| -> io::Result<()> {
        let size = (*buf_pos).min(BLOCK as u64);
        *buf_pos -= size;
        let mut block = vec![0; usize::try_from(size).map_err(io::Error::other)?];
        file.seek(SeekFrom::Start(*buf_pos))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(buf);
        *buf = block;
        Ok(())
    };
    load_block(&mut buf_pos, &mut buf)?;
    let ends_with_newline = buf.last() == Some(&b'\n');

    let mut lines_ended = 0u64; // records ending a line seen so far (after the current point)
    let mut trailing_partial: Option<bool> = None; // whether the file ends inside a line
    let mut end = len; // end of the current line, its newline included
    while end > 0 {
        let terminated = end < len || ends_with_newline;
        let content_end = if terminated { end - 1 } else { end };
        // Look backwards for the newline before the line: file[buf_pos..search_end] is unsearched.
        let mut search_end = content_end;
        let mut oversized = false;
        let start = loop {
            let rel = usize::try_from(search_end - buf_pos).map_err(io::Error::other)?;
            if let Some(i) = buf[..rel].iter().rposition(|&b| b == b'\n') {
                break buf_pos + i as u64 + 1;
            }
            if buf_pos == 0 {
                break 0;
            }
            if buf.len() > MAX_RECORD {
                // Too long to be a record: forget its bytes, only find where it starts.
                oversized = true;
                buf.clear();
                search_end = buf_pos;
            }
            load_block(&mut buf_pos, &mut buf)?;
        };
        if !oversized {
            let from = usize::try_from(start - buf_pos).map_err(io::Error::other)?;
            let to = usize::try_from(content_end - buf_pos).map_err(io::Error::other)?;
            if let Some(record) = parse_record(&buf[from..to]) {
                let trailing = *trailing_partial.get_or_insert(record.partial);
                if !record.partial {
                    if lines_ended + u64::from(trailing) == n {
                        return Ok(end);
                    }
                    lines_ended += 1;
                }
            }
        }
        buf.truncate(usize::try_from(start - buf_pos).map_err(io::Error::other)?);
        end = start;
    }
    Ok(0)
}

/// Turns records into output: the line-level decisions (since, timestamp prefix) are taken at a
/// line's first record; the byte limit is applied to the output.
struct Writer {
    timestamps: bool,
    since: Option<Timestamp>,
    remaining: Option<u64>,
    at_line_start: bool,
    skipping_line: bool,
}

impl Writer {
    /// Writes one record's output; false once the byte limit is reached.
    fn record(&mut self, record: &Record<'_>, out: &mut BytesMut) -> bool {
        if self.at_line_start {
            self.skipping_line = self.since.is_some_and(|since| record.timestamp < since);
        }
        let mut more = true;
        if !self.skipping_line {
            if self.at_line_start && self.timestamps {
                let mut prefix = format_timestamp(record.timestamp);
                prefix.push(' ');
                more = self.emit(prefix.as_bytes(), out);
            }
            if more {
                more = self.emit(record.content, out);
            }
            if more && !record.partial {
                more = self.emit(b"\n", out);
            }
        }
        self.at_line_start = !record.partial;
        more
    }

    fn emit(&mut self, data: &[u8], out: &mut BytesMut) -> bool {
        match &mut self.remaining {
            None => {
                out.extend_from_slice(data);
                true
            }
            Some(remaining) => {
                let take = data.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                out.extend_from_slice(&data[..take]);
                *remaining -= take as u64;
                *remaining > 0
            }
        }
    }
}

struct LogReader {
    path: PathBuf,
    follow: bool,
    tail_lines: Option<u64>,
    done: watch::Receiver<bool>,
    file: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>,
    /// Rotated files named after this one were rotated after the file being read was opened
    /// (see [`crate::runtime::logfile`]): the first of them is that file.
    opened_before: PathBuf,
    /// Bytes read that do not make a whole record yet.
    pending: Vec<u8>,
    /// Dropping the bytes of an over-long record until its newline.
    discarding: bool,
    writer: Writer,
    finished: bool,
}

impl LogReader {
    fn new(path: PathBuf, opts: LogOptions, done: watch::Receiver<bool>) -> Self {
        LogReader {
            path,
            follow: opts.follow,
            tail_lines: opts.tail_lines.and_then(|n| u64::try_from(n).ok()),
            done,
            file: None,
            opened_before: PathBuf::new(),
            pending: Vec::new(),
            discarding: false,
            writer: Writer {
                timestamps: opts.timestamps,
                since: opts.since,
                remaining: opts.limit_bytes.and_then(|n| u64::try_from(n).ok()).filter(|&n| n > 0),
                at_line_start: true,
                skipping_line: false,
            },
            finished: false,
        }
    }

    /// Opens the file at the start of the last `tail_lines` lines.
    async fn open(&mut self) -> io::Result<Box<dyn tokio::io::AsyncRead + Unpin + Send>> {
        let path = self.path.clone();
        let tail = self.tail_lines;
        self.opened_before = rotated_name(&path, Timestamp::now());
        let file = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
            let mut file = std::fs::File::open(&path)?;
            if let Some(n) = tail {
                let start = tail_start(&mut file, n)?;
                file.seek(SeekFrom::Start(start))?;
            }
            Ok(file)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    /// The file to read after the one being read, once that was rotated: the next rotated
    /// file (decompressed into memory when the shim already compressed it), or the current
    /// file at the log's path. `None` while the file being read is still the current one (or
    /// the new one is not there yet). Rotated files removed before they were read are lost.
    async fn next_file(&mut self) -> io::Result<Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>> {
        loop {
            let later = self.rotated_since().await?;
            let Some(ours) = later.first().cloned() else { return Ok(None) };
            let Some(entry) = later.get(1) else {
                // Ours is the newest rotated file: the next is the current one, unless the log
                // was rotated again between the listing and the open.
                let Ok(current) = tokio::fs::File::open(&self.path).await else { return Ok(None) };
                if self.rotated_since().await?.len() > 1 {
                    continue;
                }
                self.opened_before = ours;
                return Ok(Some(Box::new(current)));
            };
            let next: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match tokio::fs::File::open(entry).await
            {
                Ok(f) => Box::new(f),
                Err(_) => {
                    // Compressed meanwhile.
                    let mut gz = entry.as_os_str().to_owned();
                    gz.push(".gz");
                    let gz = PathBuf::from(gz);
                    let data = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
                        let mut out = Vec::new();
                        flate2::read::GzDecoder::new(std::fs::File::open(gz)?).read_to_end(&mut out)?;
                        Ok(out)
                    })
                    .await
                    .map_err(io::Error::other)?
                    .unwrap_or_default();
                    Box::new(std::io::Cursor::new(data))
                }
            };
            self.opened_before = ours;
            return Ok(Some(next));
        }
    }

    /// The rotated files rotated after the file being read was opened, oldest first.
    fn rotated_since(&self) -> impl std::future::Future<Output = io::Result<Vec<PathBuf>>> + Send + 'static {
        let (path, after) = (self.path.clone(), self.opened_before.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                rotated_entries(&path).into_iter().filter(|e| *e > after).collect()
            })
            .await
            .map_err(io::Error::other)
        }
    }

    /// Whether the writer of the log is done (or gone).
    fn writer_done(&self) -> bool {
        !self.follow || *self.done.borrow() || self.done.has_changed().is_err()
    }

    /// The next piece of output; `None` at the end.
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if self.finished {
            return Ok(None);
        }
        if self.file.is_none() {
            if self.tail_lines == Some(0) && !self.follow {
                self.finished = true;
                return Ok(None);
            }
            self.file = Some(self.open().await?);
        }
        let mut block = vec![0u8; BLOCK];
        loop {
            // Taken before reading: if the writer was done, what this read finds is all there is.
            let writer_done = self.writer_done();
            let Some(file) = self.file.as_mut() else { return Ok(None) };
            let n = file.read(&mut block).await?;
            let mut out = BytesMut::new();
            if n > 0 {
                self.pending.extend_from_slice(&block[..n]);
                let more = self.process_lines(&mut out);
                if !more {
                    self.finish();
                }
                if !out.is_empty() {
                    return Ok(Some(out.freeze()));
                }
                if !more {
                    return Ok(None);
                }
                continue;
            }
            if self.follow {
                if let Some(next) = self.next_file().await? {
                    // The shim rotated the log: whatever reached the old file came before the
                    // rename, so read it to its end, then go on with the new file from its start.
                    let mut rest = Vec::new();
                    if let Some(old) = self.file.as_mut() {
                        old.read_to_end(&mut rest).await?;
                    }
                    self.pending.extend_from_slice(&rest);
                    let more = self.process_lines(&mut out);
                    self.pending.clear();
                    self.discarding = false;
                    self.file = Some(next);
                    if !more {
                        self.finish();
                    }
                    if !out.is_empty() {
                        return Ok(Some(out.freeze()));
                    }
                    if !more {
                        return Ok(None);
                    }
                    continue;
                }
            }
            if writer_done {
                // A last record without its newline.
                let rest = std::mem::take(&mut self.pending);
                if !self.discarding {
                    if let Some(record) = parse_record(&rest) {
                        self.writer.record(&record, &mut out);
                    }
                }
                self.finish();
                return Ok((!out.is_empty()).then(|| out.freeze()));
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = self.done.changed() => {}
            }
        }
    }

    /// Writes the complete records in `pending`; false once the byte limit is reached.
    fn process_lines(&mut self, out: &mut BytesMut) -> bool {
        let mut consumed = 0;
        let mut more = true;
        while let Some(i) = self.pending[consumed..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[consumed..consumed + i];
            consumed += i + 1;
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            if let Some(record) = parse_record(line) {
                if !self.writer.record(&record, out) {
                    more = false;
                    break;
                }
            }
        }
        self.pending.drain(..consumed);
        if self.pending.len() > MAX_RECORD {
            self.pending.clear();
            self.discarding = true;
        }
        more
    }

    fn finish(&mut self) {
        self.finished = true;
        self.file = None;
        self.pending = Vec::new();
    }
}

#[cfg(test)]
mod tests;
