use super::*;

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("capstan-logtest-{}-{name}", uuid::Uuid::new_v4().simple()))
}

/// A log file removed when dropped.
struct TempLog(PathBuf);

impl TempLog {
    fn new(content: &[u8]) -> TempLog {
        let path = temp_path("log");
        std::fs::write(&path, content).expect("write log");
        TempLog(path)
    }
}

impl Drop for TempLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const SAMPLE: &str = "\
2016-10-06T00:17:09.669794202Z stdout F first line
2016-10-06T00:17:10.000000000Z stderr F an error
not a record at all
2016-10-06T00:17:11.5Z stdout P split 
2016-10-06T00:17:12Z stdout P across 
2016-10-06T00:17:13Z stdout F three records
2016-10-06T00:17:14Z stdout F
2016-10-06T00:17:15Z stdout F last line
";

async fn read(content: &str, opts: LogOptions) -> String {
    let log = TempLog::new(content.as_bytes());
    String::from_utf8(read_log(&log.0, &opts).await.expect("read_log")).expect("utf-8")
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

#[test]
fn records_parse() {
    let r = parse_record(b"2016-10-06T00:17:09.669794202Z stdout F some text").unwrap();
    assert_eq!(
        r,
        Record { timestamp: ts("2016-10-06T00:17:09.669794202Z"), partial: false, content: b"some text" }
    );
    let r = parse_record(b"2016-10-06T00:17:09Z stderr P  two  spaces ").unwrap();
    assert_eq!((r.partial, r.content), (true, &b" two  spaces "[..]));
    assert_eq!(parse_record(b"2016-10-06T00:17:09Z stdout F").unwrap().content, b"");
    assert_eq!(parse_record(b"2016-10-06T00:17:09Z stdout F ").unwrap().content, b"");
    assert!(!parse_record(b"2016-10-06T00:17:09Z stdout F:x y").unwrap().partial);
    for bad in [
        &b""[..],
        b"garbage",
        b"2016-10-06T00:17:09Z stdin F x",
        b"2016-10-06T00:17:09Z stdout X x",
        b"2016-10-06 stdout F x",
        b"2016-10-06T00:17:09Z stdout",
        b"\xff\xfe stdout F x",
    ] {
        assert_eq!(parse_record(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn timestamps_print_with_nine_digits() {
    assert_eq!(format_timestamp(ts("2016-10-06T00:17:09.669794202Z")), "2016-10-06T00:17:09.669794202Z");
    assert_eq!(format_timestamp(ts("2016-10-06T00:17:09Z")), "2016-10-06T00:17:09.000000000Z");
    assert_eq!(format_timestamp(ts("2016-10-06T02:17:09.5+02:00")), "2016-10-06T00:17:09.500000000Z");
}

#[tokio::test]
async fn whole_log_joins_partial_records_and_skips_junk() {
    let out = read(SAMPLE, LogOptions::default()).await;
    assert_eq!(out, "first line\nan error\nsplit across three records\n\nlast line\n");
}

#[tokio::test]
async fn timestamps_prefix_each_line_once() {
    let out = read(SAMPLE, LogOptions { timestamps: true, ..Default::default() }).await;
    assert_eq!(
        out,
        "2016-10-06T00:17:09.669794202Z first line\n\
         2016-10-06T00:17:10.000000000Z an error\n\
         2016-10-06T00:17:11.500000000Z split across three records\n\
         2016-10-06T00:17:14.000000000Z \n\
         2016-10-06T00:17:15.000000000Z last line\n"
    );
}

#[tokio::test]
async fn tail_counts_lines_not_records() {
    let tail = |n| read(SAMPLE, LogOptions { tail_lines: Some(n), ..Default::default() });
    assert_eq!(tail(0).await, "");
    assert_eq!(tail(1).await, "last line\n");
    assert_eq!(tail(2).await, "\nlast line\n");
    assert_eq!(tail(3).await, "split across three records\n\nlast line\n");
    assert_eq!(tail(4).await, "an error\nsplit across three records\n\nlast line\n");
    let all = "first line\nan error\nsplit across three records\n\nlast line\n";
    assert_eq!(tail(5).await, all);
    assert_eq!(tail(500).await, all);
    assert_eq!(tail(-1).await, all);

    // A file ending inside a line (P records, or a last record without its newline).
    let open_line = "2016-10-06T00:17:09Z stdout F a\n2016-10-06T00:17:10Z stdout P b";
    let out = read(open_line, LogOptions { tail_lines: Some(1), ..Default::default() }).await;
    assert_eq!(out, "b");
    let out = read(&format!("{open_line}\n"), LogOptions { tail_lines: Some(1), ..Default::default() }).await;
    assert_eq!(out, "b");
    let unterminated = "2016-10-06T00:17:09Z stdout F a\n2016-10-06T00:17:10Z stdout F b";
    let out = read(unterminated, LogOptions { tail_lines: Some(1), ..Default::default() }).await;
    assert_eq!(out, "b\n");
    assert_eq!(read("", LogOptions { tail_lines: Some(3), ..Default::default() }).await, "");
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What the options should give, computed naively: every record, grouped into lines.
fn reference(content: &[u8], opts: &LogOptions) -> Vec<u8> {
    let records: Vec<Record<'_>> = content.split(|&b| b == b'\n').filter_map(parse_record).collect();
    let mut lines: Vec<Vec<&Record<'_>>> = Vec::new();
    let mut open = false;
    for r in &records {
        if !open {
            lines.push(Vec::new());
        }
        if let Some(line) = lines.last_mut() {
            line.push(r);
        }
        open = r.partial;
    }
    let skip = match opts.tail_lines.and_then(|n| usize::try_from(n).ok()) {
        Some(n) => lines.len().saturating_sub(n),
        None => 0,
    };
    let mut writer = Writer {
        timestamps: opts.timestamps,
        since: opts.since,
        remaining: opts.limit_bytes.and_then(|n| u64::try_from(n).ok()).filter(|&n| n > 0),
        at_line_start: true,
        skipping_line: false,
    };
    let mut out = BytesMut::new();
    'outer: for line in &lines[skip..] {
        for r in line {
            if !writer.record(r, &mut out) {
                break 'outer;
            }
        }
    }
    out.to_vec()
}

#[tokio::test]
async fn tail_of_a_large_file_matches_a_naive_reading() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut content = Vec::new();
    let base = ts("2024-01-01T00:00:00Z");
    for i in 0..30_000u64 {
        let kind = rng.next() % 100;
        let stamp = base.checked_add(jiff::SignedDuration::from_millis(i as i64)).unwrap();
        let stream = if rng.next().is_multiple_of(2) { "stdout" } else { "stderr" };
        let text_len = if rng.next() % 1000 < 3 { 70_000 } else { (rng.next() % 120) as usize };
        let text: String = (0..text_len).map(|j| char::from(b'a' + ((i as usize + j) % 26) as u8)).collect();
        let line = match kind {
            0..=2 => "junk without structure".to_string(),
            3..=22 => format!("{stamp} {stream} P {text}"),
            _ => format!("{stamp} {stream} F {text}"),
        };
        content.extend_from_slice(line.as_bytes());
        content.push(b'\n');
    }
    let log = TempLog::new(&content);
    for n in [0, 1, 2, 3, 7, 100, 1000, 29_999, 40_000] {
        for timestamps in [false, true] {
            let opts = LogOptions { tail_lines: Some(n), timestamps, ..Default::default() };
            let got = read_log(&log.0, &opts).await.expect("read_log");
            assert!(got == reference(&content, &opts), "tail {n} timestamps {timestamps}");
        }
    }
    let since = LogOptions { since: Some(ts("2024-01-01T00:00:25Z")), ..Default::default() };
    assert!(read_log(&log.0, &since).await.unwrap() == reference(&content, &since));
    let limited = LogOptions { limit_bytes: Some(100_001), tail_lines: Some(5000), ..Default::default() };
    let got = read_log(&log.0, &limited).await.unwrap();
    assert_eq!(got.len(), 100_001);
    assert!(got == reference(&content, &limited));
}

#[tokio::test]
async fn since_drops_older_lines() {
    let since = |s: &str| LogOptions { since: Some(ts(s)), ..Default::default() };
    assert_eq!(
        read(SAMPLE, since("2016-10-06T00:17:10Z")).await,
        "an error\nsplit across three records\n\nlast line\n"
    );
    // A line is as old as its first record.
    assert_eq!(read(SAMPLE, since("2016-10-06T00:17:12Z")).await, "\nlast line\n");
    assert_eq!(read(SAMPLE, since("2030-01-01T00:00:00Z")).await, "");
    let with_tail = LogOptions { tail_lines: Some(4), ..since("2016-10-06T00:17:12Z") };
    assert_eq!(read(SAMPLE, with_tail).await, "\nlast line\n");
}

#[tokio::test]
async fn limit_bytes_may_cut_a_line() {
    let limit = |n| LogOptions { limit_bytes: Some(n), ..Default::default() };
    assert_eq!(read(SAMPLE, limit(1)).await, "f");
    assert_eq!(read(SAMPLE, limit(11)).await, "first line\n");
    assert_eq!(read(SAMPLE, limit(15)).await, "first line\nan e");
    assert_eq!(read(SAMPLE, limit(0)).await.len(), 58);
    assert_eq!(read(SAMPLE, limit(-5)).await.len(), 58);
    let stamped = LogOptions { timestamps: true, limit_bytes: Some(35), ..Default::default() };
    assert_eq!(read(SAMPLE, stamped).await, "2016-10-06T00:17:09.669794202Z firs");
}

#[tokio::test]
async fn a_missing_file_is_an_error() {
    let err = read_log(&temp_path("missing"), &LogOptions::default()).await.expect_err("missing");
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}

/// Collects a followed stream in a task, to be awaited later.
fn follow(path: &Path, opts: LogOptions, done: watch::Receiver<bool>) -> tokio::task::JoinHandle<String> {
    let stream = stream_log(path.to_path_buf(), LogOptions { follow: true, ..opts }, done);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        String::from_utf8(out).expect("utf-8")
    })
}

async fn append(path: &Path, data: &str) {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::OpenOptions::new().append(true).open(path).await.expect("open");
    f.write_all(data.as_bytes()).await.expect("append");
    f.flush().await.expect("flush");
}

#[tokio::test]
async fn follow_reads_appends_until_done() {
    let log = TempLog::new(b"2016-10-06T00:17:09Z stdout F old\n");
    let (done_tx, done) = watch::channel(false);
    let all = follow(&log.0, LogOptions::default(), done.clone());
    let new_only = follow(&log.0, LogOptions { tail_lines: Some(0), ..Default::default() }, done.clone());
    let (limit_tx, limit_done) = watch::channel(false);
    let limited = follow(&log.0, LogOptions { limit_bytes: Some(6), ..Default::default() }, limit_done);

    tokio::time::sleep(Duration::from_millis(150)).await;
    append(&log.0, "2016-10-06T00:17:10Z stdout P new \n").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    // A record arriving in two writes.
    append(&log.0, "2016-10-06T00:17:11Z stderr F li").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    append(&log.0, "ne\n").await;
    // The limit ends a followed stream by itself.
    let limited =
        tokio::time::timeout(Duration::from_secs(5), limited).await.expect("limit ends it").unwrap();
    assert_eq!(limited, "old\nne");
    drop(limit_tx);
    assert!(!all.is_finished() && !new_only.is_finished());

    // Written just before done flips: still read.
    append(&log.0, "2016-10-06T00:17:12Z stdout F final\n2016-10-06T00:17:13Z stdout F no newline").await;
    done_tx.send(true).expect("done");
    let all = tokio::time::timeout(Duration::from_secs(5), all).await.expect("ends when done").unwrap();
    assert_eq!(all, "old\nnew line\nfinal\nno newline\n");
    let new_only = tokio::time::timeout(Duration::from_secs(5), new_only).await.expect("ends").unwrap();
    assert_eq!(new_only, "new line\nfinal\nno newline\n");
}

#[tokio::test]
async fn follow_ends_when_the_sender_is_dropped() {
    let log = TempLog::new(b"2016-10-06T00:17:09Z stdout F one\n");
    let (done_tx, done) = watch::channel(false);
    let out = follow(&log.0, LogOptions { timestamps: true, ..Default::default() }, done);
    tokio::time::sleep(Duration::from_millis(150)).await;
    append(&log.0, "2016-10-06T00:17:10Z stdout F two\n").await;
    drop(done_tx);
    let out = tokio::time::timeout(Duration::from_secs(5), out).await.expect("ends").unwrap();
    assert_eq!(out, "2016-10-06T00:17:09.000000000Z one\n2016-10-06T00:17:10.000000000Z two\n");
}

#[tokio::test]
async fn follow_goes_on_across_rotations_without_loss_or_repeats() {
    use crate::runtime::logfile::{remove_all, rotated_entries, RotatingLog, Rotation};
    let path = temp_path("rotating");
    let log =
        std::sync::Arc::new(RotatingLog::open(&path, Rotation { max_size: 16384, max_files: 5 }).unwrap());
    log.write_record(b"2016-10-06T00:17:09Z stdout F line-0\n");
    let (done_tx, done) = watch::channel(false);
    let mut stream =
        Box::pin(stream_log(path.clone(), LogOptions { follow: true, ..Default::default() }, done));
    // The follower has the file open once it returned the first line.
    let mut out = stream.next().await.expect("a chunk").expect("read").to_vec();
    assert_eq!(out, b"line-0\n");
    // Written from a thread, as the shim does: about 11 rotations while the follower reads
    // (a ninth of a file between pauses: it never falls the 4 kept files behind while it
    // waits 100 ms between polls).
    let writer = log.clone();
    let written = tokio::task::spawn_blocking(move || {
        for i in 1..5000 {
            writer.write_record(format!("2016-10-06T00:17:09Z stdout F line-{i}\n").as_bytes());
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        writer.finish();
    });
    let collect = async {
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        out
    };
    let sender = async {
        written.await.unwrap();
        done_tx.send(true).expect("done");
    };
    let (out, ()) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(collect, sender) })
        .await
        .expect("ends");
    let out = String::from_utf8(out).unwrap();
    let expected: String = (0..5000).map(|i| format!("line-{i}\n")).collect();
    assert!(out == expected, "{} lines of 5000, first {:?}", out.lines().count(), out.lines().next());
    let rotated = rotated_entries(&path);
    assert_eq!(rotated.len(), 4, "{rotated:?}");
    remove_all(&path);
}
