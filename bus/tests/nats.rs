//! `NatsBus` against a real `nats-server` (JetStream, file storage in a temporary directory,
//! loopback only). Each test starts its own server on a free port.

#[path = "common/conformance.rs"]
mod conformance;

use capstan_bus::{subjects, Bus, Error, NatsBus, NatsConfig, StartAt, StreamItem, StreamSettings};
use conformance::{next_item, revision};
use futures::StreamExt;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NATS_SERVER: &str = "/usr/sbin/nats-server";
const DEADLINE: Duration = Duration::from_secs(30);

/// A `nats-server -js` on 127.0.0.1, stopped (by PID) when dropped.
struct Server {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        // `RUST_LOG=capstan_bus=debug` shows what the consumers do.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init()
            .ok();
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let store = dir.path().join("js");
        let mut s = Server { child: None, port, store, _dir: dir };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = self._dir.path().join("nats.log");
        let child = Command::new(NATS_SERVER)
            .args(["-js", "-sd"])
            .arg(&self.store)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-l"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("failed to start nats-server");
        self.child = Some(child);
        wait_listening(self.port, &log);
    }

    /// Stops the server gracefully (SIGTERM to its PID) and waits for it to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
            assert!(status.success());
            child.wait().unwrap();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn config(&self) -> NatsConfig {
        let mut c = NatsConfig::new(self.url());
        c.name = "capstan-bus-test".to_string();
        c
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

fn wait_listening(port: u16, log: &Path) {
    let start = Instant::now();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < DEADLINE,
            "nats-server did not listen on {port}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects, retrying until JetStream is ready or the deadline passes.
async fn connect(config: NatsConfig) -> NatsBus {
    let start = Instant::now();
    loop {
        match NatsBus::connect(config.clone()).await {
            Ok(bus) => return bus,
            Err(e) if start.elapsed() < DEADLINE => {
                eprintln!("connect: {e}, retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("could not connect: {e}"),
        }
    }
}

fn subj(name: &str) -> String {
    subjects::event("", "pods", Some("default"), name)
}

async fn stream_messages(bus: &NatsBus) -> u64 {
    let js = async_nats::jetstream::new(bus.client().clone());
    let mut stream = js.get_stream(subjects::EVENT_STREAM).await.unwrap();
    stream.info().await.unwrap().state.messages
}

async fn consumer_names(bus: &NatsBus) -> Vec<String> {
    let js = async_nats::jetstream::new(bus.client().clone());
    let stream = js.get_stream(subjects::EVENT_STREAM).await.unwrap();
    let mut names: Vec<String> = stream.consumer_names().map(|n| n.unwrap()).collect().await;
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_semantics() {
    let server = Server::start();
    let bus = connect(server.config()).await;
    conformance::run_all(&bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_error_names_the_url() {
    let port = {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = NatsConfig::new(format!("nats://127.0.0.1:{port}"));
    c.connect_timeout = Duration::from_secs(1);
    match NatsBus::connect(c).await {
        Err(Error::Connect { url, .. }) => assert!(url.contains(&port.to_string())),
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_dedupe_and_last_revision() {
    let server = Server::start();
    let bus = connect(server.config()).await;
    assert_eq!(bus.last_event_revision().await.unwrap(), 0);
    bus.append_event(subj("a"), "1".into(), 7).await.unwrap();
    bus.append_event(subj("a"), "1 again".into(), 7).await.unwrap();
    assert_eq!(stream_messages(&bus).await, 1);
    // A second client knows nothing of the first one's appends: JetStream's duplicate
    // window drops the re-sent revision.
    let other = connect(server.config()).await;
    let js = async_nats::jetstream::new(other.client().clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "7");
    headers.insert(capstan_bus::REVISION_HEADER, "7");
    let ack = js.publish_with_headers(subj("a"), headers, "dup".into()).await.unwrap().await.unwrap();
    assert!(ack.duplicate);
    // ...and its own guard drops older revisions once it has read the last one.
    other.append_event(subj("a"), "old".into(), 3).await.unwrap();
    assert_eq!(stream_messages(&bus).await, 1);
    assert_eq!(other.last_event_revision().await.unwrap(), 7);

    other.append_event(subj("b"), "2".into(), 9).await.unwrap();
    assert_eq!(bus.last_event_revision().await.unwrap(), 9);
    let mut s = bus.events(subjects::all_events(), StartAt::AfterRevision(0)).await.unwrap();
    match next_item(&mut s).await {
        StreamItem::Event { payload, revision, .. } => assert_eq!((&payload[..], revision), (&b"1"[..], 7)),
        StreamItem::Gap => panic!("unexpected gap"),
    }
    assert_eq!(revision(&next_item(&mut s).await), 9);
    assert!(tokio::time::timeout(Duration::from_millis(300), s.next()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_the_middle_of_a_long_stream_then_live() {
    let server = Server::start();
    let bus = connect(server.config()).await;
    // Revisions with holes (other writes in the store), two resources interleaved.
    for i in 1..=600u64 {
        let s = if i % 3 == 0 { subjects::event("", "services", Some("x"), "s") } else { subj("p") };
        bus.append_event(s, i.to_string().into_bytes().into(), i * 10).await.unwrap();
    }
    // Between revisions: starts at the next one.
    let mut s = bus.events(subjects::all_events(), StartAt::AfterRevision(3005)).await.unwrap();
    for i in 301..=600u64 {
        assert_eq!(revision(&next_item(&mut s).await), i * 10);
    }
    // Filtered, from an exact revision.
    let mut svc =
        bus.events(subjects::events_of("", "services", None), StartAt::AfterRevision(5400)).await.unwrap();
    for i in (543..=600u64).filter(|i| i % 3 == 0) {
        assert_eq!(revision(&next_item(&mut svc).await), i * 10);
    }
    bus.append_event(subj("p"), "live".into(), 6001).await.unwrap();
    bus.append_event(subjects::event("", "services", Some("x"), "s"), "live".into(), 6002).await.unwrap();
    assert_eq!(revision(&next_item(&mut s).await), 6001);
    assert_eq!(revision(&next_item(&mut s).await), 6002);
    assert_eq!(revision(&next_item(&mut svc).await), 6002);
    // Past the end: nothing, then live.
    let mut tail = bus.events(subjects::all_events(), StartAt::AfterRevision(99_999)).await.unwrap();
    bus.append_event(subj("p"), "later".into(), 100_000).await.unwrap();
    assert_eq!(revision(&next_item(&mut tail).await), 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_when_history_was_dropped_by_the_limits() {
    let server = Server::start();
    let mut config = server.config();
    config.stream = StreamSettings { max_messages: 10, ..StreamSettings::default() };
    let bus = connect(config).await;
    for r in 1..=30 {
        bus.append_event(subj("a"), "x".into(), r).await.unwrap();
    }
    assert_eq!(stream_messages(&bus).await, 10);
    assert_eq!(bus.last_event_revision().await.unwrap(), 30);
    // 21..=30 retained: after 5 misses 6..=20.
    let mut s = bus.events(subjects::all_events(), StartAt::AfterRevision(5)).await.unwrap();
    assert!(matches!(next_item(&mut s).await, StreamItem::Gap));
    for r in 21..=30 {
        assert_eq!(revision(&next_item(&mut s).await), r);
    }
    // After 20 nothing is missing.
    let mut s = bus.events(subjects::all_events(), StartAt::AfterRevision(20)).await.unwrap();
    assert_eq!(revision(&next_item(&mut s).await), 21);
    // A consumer at the tail stays gap-free while the stream keeps dropping old events.
    let mut tail = bus.events(subjects::all_events(), StartAt::AfterRevision(30)).await.unwrap();
    for r in 31..=60 {
        bus.append_event(subj("a"), "x".into(), r).await.unwrap();
        assert_eq!(revision(&next_item(&mut tail).await), r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_limits_are_applied_to_the_stream() {
    let server = Server::start();
    let mut config = server.config();
    config.stream = StreamSettings {
        max_messages: 1234,
        max_age: Duration::from_secs(3600),
        duplicate_window: Duration::from_secs(30),
        ..StreamSettings::default()
    };
    let bus = connect(config.clone()).await;
    let js = async_nats::jetstream::new(bus.client().clone());
    let mut stream = js.get_stream(subjects::EVENT_STREAM).await.unwrap();
    let c = stream.info().await.unwrap().config.clone();
    assert_eq!(c.max_messages, 1234);
    assert_eq!(c.max_age, Duration::from_secs(3600));
    assert_eq!(c.duplicate_window, Duration::from_secs(30));
    assert_eq!(c.subjects, vec![subjects::all_events()]);
    assert_eq!(c.storage, async_nats::jetstream::stream::StorageType::File);
    // Connecting with other limits updates the stream.
    config.stream.max_messages = 99;
    let _again = connect(config).await;
    assert_eq!(stream.info().await.unwrap().config.max_messages, 99);
}

/// Appends, retrying while the server is away (a retried append is deduplicated).
async fn append_retrying(bus: &NatsBus, subject: String, revision: u64) {
    let start = Instant::now();
    loop {
        match bus.append_event(subject.clone(), revision.to_string().into_bytes().into(), revision).await {
            Ok(()) => return,
            Err(e) if start.elapsed() < DEADLINE => {
                eprintln!("append {revision}: {e}, retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("append {revision} failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_survives_a_server_restart() {
    let mut server = Server::start();
    let bus = connect(server.config()).await;
    let mut s = bus.events(subjects::all_events(), StartAt::AfterRevision(0)).await.unwrap();
    for r in 1..=50 {
        bus.append_event(subj("a"), r.to_string().into_bytes().into(), r).await.unwrap();
    }
    for r in 1..=50 {
        assert_eq!(revision(&next_item(&mut s).await), r);
    }

    server.stop();
    server.spawn();
    for r in 51..=100 {
        append_retrying(&bus, subj("a"), r).await;
    }

    // Every event after 50 exactly once and in order; a gap would be allowed (the consumer
    // relists), but then nothing may be repeated either.
    let mut got = Vec::new();
    let mut gaps = 0;
    while got.last() != Some(&100) {
        match tokio::time::timeout(DEADLINE, s.next()).await.expect("no event after the restart") {
            Some(StreamItem::Event { revision, .. }) => got.push(revision),
            Some(StreamItem::Gap) => gaps += 1,
            None => panic!("event stream ended"),
        }
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "events repeated or out of order: {got:?}");
    if gaps == 0 {
        assert_eq!(got, (51..=100).collect::<Vec<_>>(), "events lost without a gap");
    }
    eprintln!("restart: {} events, {gaps} gaps", got.len());
    assert_eq!(gaps, 0, "expected the consumer to resume without a gap (file store kept everything)");
    assert_eq!(bus.last_event_revision().await.unwrap(), 100);
    // A new consumer after the restart sees the whole history.
    let mut all = bus.events(subjects::all_events(), StartAt::AfterRevision(0)).await.unwrap();
    for r in 1..=100 {
        assert_eq!(revision(&next_item(&mut all).await), r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_consumer_stays_quiet_and_live() {
    // An idle consumer keeps its pull request alive through heartbeats: an event appended
    // after a long idle period still arrives, once.
    let server = Server::start();
    let bus = connect(server.config()).await;
    let mut s = bus.events(subjects::all_events(), StartAt::New).await.unwrap();
    let before = consumer_names(&bus).await;
    assert_eq!(before.len(), 1);
    // Longer than a consumer may stay silent before it is presumed lost and recreated.
    assert!(tokio::time::timeout(Duration::from_secs(19), s.next()).await.is_err());
    assert_eq!(consumer_names(&bus).await, before, "the idle consumer was recreated");
    bus.append_event(subj("a"), "x".into(), 1).await.unwrap();
    assert_eq!(revision(&next_item(&mut s).await), 1);
    assert!(tokio::time::timeout(Duration::from_millis(300), s.next()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_store_is_recreated_and_consumers_from_before_get_a_gap() {
    let mut server = Server::start();
    let bus = connect(server.config()).await;
    // A consumer that has seen everything through 20 while the server runs.
    let mut live = bus.events(subjects::all_events(), StartAt::AfterRevision(0)).await.unwrap();
    for r in 1..=30 {
        bus.append_event(subj("a"), r.to_string().into_bytes().into(), r).await.unwrap();
    }
    for r in 1..=20 {
        assert_eq!(revision(&next_item(&mut live).await), r);
    }
    // The server loses its JetStream store: the stream and its history are gone.
    server.stop();
    std::fs::remove_dir_all(&server.store).expect("remove the store");
    server.spawn();
    // The next append creates the stream again (this bus manages it) instead of failing.
    append_retrying(&bus, subj("a"), 31).await;
    assert_eq!(bus.last_event_revision().await.unwrap(), 31);
    // Whoever starts before 30 missed history: a gap (relist), then what the stream has.
    let mut s = bus.events(subjects::all_events(), StartAt::AfterRevision(10)).await.unwrap();
    assert!(matches!(next_item(&mut s).await, StreamItem::Gap));
    assert_eq!(revision(&next_item(&mut s).await), 31);
    // The live consumer had seen through 20 of the lost 30: a gap too, never a silent skip.
    let mut gaps = 0;
    loop {
        match next_item(&mut live).await {
            StreamItem::Gap => gaps += 1,
            StreamItem::Event { revision: r, .. } if r <= 30 => {} // buffered before the loss
            item => {
                assert_eq!(revision(&item), 31);
                break;
            }
        }
    }
    assert_eq!(gaps, 1, "the live consumer must see the lost history as a gap");
    // From 30 on nothing is missing.
    let mut s = bus.events(subjects::all_events(), StartAt::AfterRevision(30)).await.unwrap();
    assert_eq!(revision(&next_item(&mut s).await), 31);
}
