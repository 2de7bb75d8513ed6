//! The NATS backend, on `async-nats` and JetStream.
//!
//! Core publish/subscribe/request map directly onto NATS. The event stream is the JetStream
//! stream [`StreamSettings::name`] (default [`subjects::EVENT_STREAM`]) over
//! `capstan.v1.events.>`; see the crate docs for its configuration and guarantees.
//!
//! An event consumer is an ephemeral pull consumer (no acks, in memory) that this module
//! drives itself, tracking the stream sequence of the last message it handed out. Whenever
//! the consumer may have lost continuity (reconnect, server restart, missed heartbeats, a
//! consumer sequence that skipped, the consumer deleted for inactivity) it is recreated
//! from the next stream sequence, so nothing is lost or repeated while the stream still
//! holds it; if the stream dropped messages the consumer had not read yet, the stream
//! yields [`StreamItem::Gap`].

use crate::{
    subjects, BoxFuture, Bus, Error, EventStream, Message, Result, StartAt, StreamItem, Subscription,
};
use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer},
    stream,
};
use async_nats::{ConnectOptions, Event, HeaderMap, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The header carrying an event's revision (also sent as `Nats-Msg-Id`).
pub const REVISION_HEADER: &str = "Capstan-Revision";
/// Header of the first event appended to a stream the relay had to create again (the
/// server lost its store): the events through this revision are not in the stream, so a
/// consumer starting before it gets a gap and relists.
pub const LOST_THROUGH_HEADER: &str = "Capstan-History-Lost-Through";

/// How many messages one pull request asks for.
const PULL_BATCH: usize = 256;
/// How long one pull request waits on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// The idle heartbeat asked for in pull requests.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a consumer may be silent (no message, heartbeat or status) before it is
/// considered lost and recreated: three missed heartbeats and a margin, so a loaded
/// machine (a heartbeat delayed by seconds) does not recreate healthy consumers.
const STALE_AFTER: Duration = Duration::from_secs(17);
/// The server deletes an event consumer nobody has pulled from for this long.
const CONSUMER_INACTIVE: Duration = Duration::from_secs(60);
/// How often a consumer at most asks the stream whether it dropped messages the consumer
/// skipped over (see [`EventConsumer::validate`]).
const VALIDATE_EVERY: Duration = Duration::from_secs(1);

/// How the client authenticates to the NATS server.
#[derive(Clone)]
pub enum Credentials {
    /// A user name and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// An nkey seed (`SU...`).
    NkeySeed(String),
}

impl Credentials {
    /// Reads a credential file as `capstan bus-config` writes it (`<role>.creds`): the
    /// user's nkey seed (`SU...`) on a line of its own; other lines (comments) are ignored.
    pub fn from_file(path: &std::path::Path) -> Result<Credentials> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Credentials(format!("failed to read {}: {e}", path.display())))?;
        Credentials::parse(&text).ok_or_else(|| {
            Error::Credentials(format!("no user nkey seed (SU...) found in {}", path.display()))
        })
    }

    /// The credential in a file's text, if it holds a user nkey seed.
    pub fn parse(text: &str) -> Option<Credentials> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with("SU") && l.len() > 2 && l.bytes().all(|b| b.is_ascii_alphanumeric()))
            .map(|seed| Credentials::NkeySeed(seed.to_string()))
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::UserPassword { user, .. } => {
                f.debug_struct("UserPassword").field("user", user).field("password", &"<redacted>").finish()
            }
            Credentials::NkeySeed(_) => f.debug_tuple("NkeySeed").field(&"<redacted>").finish(),
        }
    }
}

/// TLS to the NATS server (rustls with the `ring` provider).
///
/// Install `rustls::crypto::ring::default_provider()` as the process default before
/// connecting when more than one rustls provider is compiled in.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// PEM file of the CA certificates to trust; without it the system roots are used.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The JetStream stream holding events.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// The stream name. Default [`subjects::EVENT_STREAM`].
    pub name: String,
    /// Events older than this are dropped. Default 24 h.
    pub max_age: Duration,
    /// At most this many events are kept; the oldest are dropped first. Default 10,000,000.
    pub max_messages: i64,
    /// At most this many bytes are kept (-1: unlimited). Default unlimited.
    pub max_bytes: i64,
    /// How long JetStream remembers message ids (revisions) to drop re-sent events.
    /// Default 2 min.
    pub duplicate_window: Duration,
    /// Keep the stream in memory instead of on disk (tests). Default false.
    pub memory: bool,
    /// Replicas (clustered JetStream). Default 1.
    pub replicas: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            name: subjects::EVENT_STREAM.to_string(),
            max_age: Duration::from_secs(24 * 3600),
            max_messages: 10_000_000,
            max_bytes: -1,
            duplicate_window: Duration::from_secs(120),
            memory: false,
            replicas: 1,
        }
    }
}

/// Settings of a [`NatsBus`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Server URL(s), e.g. `nats://127.0.0.1:4222` (comma-separated for several).
    pub url: String,
    /// The connection name shown by the server (e.g. `capstan-gateway-1`).
    pub name: String,
    /// Credentials, if the server requires them.
    pub credentials: Option<Credentials>,
    /// The prefix of this client's reply inboxes (default `_INBOX`). A locked-down server
    /// lets each role subscribe only to `_INBOX.<identity>.>`
    /// ([`crate::access::inbox_prefix`]).
    pub inbox_prefix: Option<String>,
    /// Create the event stream, or update it to [`Config::stream`], on connect. Only the
    /// gateway (the relay) does; readers' credentials may not change the stream, and their
    /// consumers wait for it to exist. Default true.
    pub manage_stream: bool,
    /// TLS, if wanted; the server must then offer TLS.
    pub tls: Option<TlsConfig>,
    /// Messages buffered per subscription before the client drops them (reported as a
    /// slow consumer). Default 65,536 (the client's own default is far lower).
    pub subscription_capacity: usize,
    /// Timeout of the initial connection. Default 5 s.
    pub connect_timeout: Duration,
    /// Timeout of JetStream API calls and publish acknowledgements. Default 5 s.
    pub jetstream_timeout: Duration,
    /// The event stream, created or updated on connect.
    pub stream: StreamSettings,
}

impl Config {
    /// Default settings for a server URL.
    pub fn new(url: impl Into<String>) -> Config {
        Config {
            url: url.into(),
            name: "capstan".to_string(),
            credentials: None,
            inbox_prefix: None,
            manage_stream: true,
            tls: None,
            subscription_capacity: 65_536,
            connect_timeout: Duration::from_secs(5),
            jetstream_timeout: Duration::from_secs(5),
            stream: StreamSettings::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new("nats://127.0.0.1:4222")
    }
}

/// The bus on a NATS server. Share it behind an `Arc`.
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    stream_name: String,
    /// Counts (re)connections; event consumers recreate themselves when it changes.
    connections: watch::Receiver<u64>,
    /// The highest revision this process knows to be in the stream (a local dedupe guard
    /// that also works beyond JetStream's duplicate window).
    last_appended: Mutex<Option<u64>>,
    /// The stream's settings, when this process manages the stream (creates it again when
    /// it is gone).
    stream_config: Option<jetstream::stream::Config>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus").field("stream", &self.stream_name).finish_non_exhaustive()
    }
}

fn backend(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend(format!("{context}: {e}"))
}

fn on_event(connections: &watch::Sender<u64>, event: Event) {
    match event {
        Event::Connected => {
            tracing::info!("connected to nats");
            connections.send_modify(|n| *n += 1);
        }
        Event::Disconnected => tracing::warn!("disconnected from nats, reconnecting"),
        Event::SlowConsumer(sid) => {
            tracing::warn!(sid, "nats client dropped messages for a slow subscription")
        }
        Event::LameDuckMode => tracing::warn!("nats server entered lame duck mode"),
        Event::ServerError(e) if e.to_string().to_lowercase().contains("permissions violation") => {
            tracing::error!(error = %e, "nats server refused an operation this credential may not do")
        }
        Event::ServerError(e) => tracing::warn!(error = %e, "nats server error"),
        Event::ClientError(e) => tracing::warn!(error = %e, "nats client error"),
        Event::Draining => tracing::info!("nats connection draining"),
        Event::Closed => tracing::info!("nats connection closed"),
    }
}

fn stream_config(s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: s.name.clone(),
        subjects: vec![subjects::all_events()],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: s.max_age,
        max_messages: s.max_messages,
        max_bytes: s.max_bytes,
        duplicate_window: s.duplicate_window,
        storage: if s.memory { stream::StorageType::Memory } else { stream::StorageType::File },
        num_replicas: s.replicas.max(1),
        allow_direct: true,
        description: Some("capstan events: one message per change, message id = revision".to_string()),
        ..Default::default()
    }
}

/// The servers of a URL list: `nats://a:4222,nats://b:4222` (every member of a cluster,
/// so the first connection does not depend on one of them being up; the client also
/// learns the others from the server it reaches).
fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>> {
    let addrs: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>().map_err(|e| Error::Connect {
                url: url.to_string(),
                message: format!("invalid server URL {u}: {e}"),
            })
        })
        .collect::<Result<_>>()?;
    if addrs.is_empty() {
        return Err(Error::Connect { url: url.to_string(), message: "no server URL given".to_string() });
    }
    Ok(addrs)
}

/// How long the stream's creation is retried: a JetStream cluster whose servers start
/// together answers "insufficient resources" or times out until its members agree on a
/// meta leader and enough peers for the replicas.
const STREAM_CREATE_PATIENCE: Duration = Duration::from_secs(30);

async fn create_stream(js: &jetstream::Context, config: &Config) -> Result<()> {
    let deadline = Instant::now() + STREAM_CREATE_PATIENCE;
    let mut delay = Duration::from_millis(100);
    loop {
        match js.create_or_update_stream(stream_config(&config.stream)).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() + delay < deadline && stream_create_may_pass_later(&e) => {
                tracing::info!(stream = %config.stream.name, "event stream not created yet, retrying: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                return Err(backend(&format!("failed to create or update stream {}", config.stream.name), e))
            }
        }
    }
}

/// Errors of a JetStream (cluster) that is still starting; a refused permission or an
/// invalid configuration is final.
fn stream_create_may_pass_later(e: &jetstream::context::CreateStreamError) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    !(text.contains("permission") || text.contains("authorization") || text.contains("invalid"))
}

/// The revision of a stored event: `Capstan-Revision`, else `Nats-Msg-Id`.
fn revision_of(headers: Option<&HeaderMap>) -> Option<u64> {
    let h = headers?;
    h.get(REVISION_HEADER)
        .or_else(|| h.get(async_nats::header::NATS_MESSAGE_ID))
        .and_then(|v| v.as_str().trim().parse().ok())
}

impl NatsBus {
    /// Connects, and creates or updates the event stream.
    pub async fn connect(config: Config) -> Result<NatsBus> {
        let (tx, connections) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let mut opts = match &config.credentials {
            None => ConnectOptions::new(),
            Some(Credentials::UserPassword { user, password }) => {
                ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            Some(Credentials::NkeySeed(seed)) => ConnectOptions::with_nkey(seed.clone()),
        };
        opts = opts
            .name(&config.name)
            .subscription_capacity(config.subscription_capacity.max(1))
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.jetstream_timeout));
        if let Some(prefix) = &config.inbox_prefix {
            opts = opts.custom_inbox_prefix(prefix);
        }
        opts = opts.event_callback(move |event| {
            let tx = tx.clone();
            async move { on_event(&tx, event) }
        });
        if let Some(tls) = &config.tls {
            opts = opts.require_tls(true);
            if let Some(ca) = &tls.ca_file {
                opts = opts.add_root_certificates(ca.clone());
            }
            if let Some((cert, key)) = &tls.client_cert {
                opts = opts.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let servers = server_addrs(&config.url)?;
        let client = opts
            .connect(servers)
            .await
            .map_err(|e| Error::Connect { url: config.url.clone(), message: e.to_string() })?;
        let js = jetstream::ContextBuilder::new().timeout(config.jetstream_timeout).build(client.clone());
        let managed = config.manage_stream.then(|| stream_config(&config.stream));
        if managed.is_some() {
            create_stream(&js, &config).await?;
        }
        Ok(NatsBus {
            client,
            js,
            stream_name: config.stream.name,
            connections,
            last_appended: Mutex::new(None),
            stream_config: managed,
        })
    }

    /// The underlying client, for what the [`Bus`] trait does not cover.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    async fn stream(&self) -> Result<stream::Stream<()>> {
        self.js.get_stream_no_info(&self.stream_name).await.map_err(|e| backend("invalid stream name", e))
    }

    fn cached_last(&self) -> Option<u64> {
        *self.last_appended.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember_appended(&self, revision: u64) {
        let mut last = self.last_appended.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some(last.map_or(revision, |l| l.max(revision)));
    }

    async fn do_append(&self, subject: String, payload: Bytes, revision: u64) -> Result<()> {
        if !subjects::is_event_subject(&subject) {
            return Err(Error::InvalidSubject(subject));
        }
        let last = match self.cached_last() {
            Some(l) => l,
            None => {
                let l = self.do_last_revision().await?;
                self.remember_appended(l);
                l
            }
        };
        if revision <= last {
            return Ok(());
        }
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, revision.to_string().as_str());
        headers.insert(REVISION_HEADER, revision.to_string().as_str());
        let ack = match self.publish(&subject, headers.clone(), payload.clone()).await {
            Err(e)
                if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound
                    && self.stream_config.is_some() =>
            {
                // The server lost the stream (its store was lost or removed): create it
                // again, and say on its first event that the history before is gone.
                tracing::warn!(
                    stream = %self.stream_name,
                    "the event stream is gone; creating it again (events through revision {last} are lost; consumers from before relist)"
                );
                let sc = self.stream_config.clone().unwrap_or_default();
                self.js
                    .create_or_update_stream(sc)
                    .await
                    .map_err(|e| backend(&format!("failed to create stream {}", self.stream_name), e))?;
                headers.insert(LOST_THROUGH_HEADER, last.to_string().as_str());
                self.publish(&subject, headers, payload).await.map_err(|e| publish_error(&subject, e))?
            }
            r => r.map_err(|e| publish_error(&subject, e))?,
        };
        if ack.duplicate {
            tracing::debug!(revision, "event already in the stream, dropped as a duplicate");
        }
        self.remember_appended(revision);
        Ok(())
    }

    async fn publish(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> std::result::Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        self.js.publish_with_headers(subject.to_string(), headers, payload).await?.await
    }

    async fn do_last_revision(&self) -> Result<u64> {
        let stream = self.stream().await?;
        let info = stream.get_info().await.map_err(|e| backend("failed to read event stream info", e))?;
        if info.state.messages == 0 {
            return Ok(0);
        }
        let seq = info.state.last_sequence;
        let msg = stream
            .get_raw_message(seq)
            .await
            .map_err(|e| backend(&format!("failed to read event at stream sequence {seq}"), e))?;
        revision_of(Some(&msg.headers))
            .ok_or_else(|| Error::Backend(format!("event at stream sequence {seq} has no revision header")))
    }

    async fn do_events(&self, filter: String, start: StartAt) -> Result<EventStream> {
        if !subjects::is_valid_pattern(&filter) {
            return Err(Error::InvalidSubject(filter));
        }
        let stream = self.stream().await?;
        let mut connections = self.connections.clone();
        connections.mark_unchanged();
        let (next_seq, min_revision, gap) = start_position(&stream, start).await?;
        let mut consumer = EventConsumer {
            client: self.client.clone(),
            js: self.js.clone(),
            stream,
            filter,
            connections,
            next_seq,
            stream_created: None,
            min_revision,
            consumer: None,
            consumer_seq: 0,
            skipped_from: None,
            last_validation: None,
            pending: VecDeque::new(),
            failures: 0,
        };
        if gap {
            consumer.pending.push_back(StreamItem::Gap);
        }
        // Fail early (bad filter, missing stream) rather than retrying forever.
        consumer.create().await?;
        Ok(Box::pin(futures::stream::unfold(consumer, |mut c| async move {
            let item = c.next().await;
            Some((item, c))
        })))
    }
}

fn publish_error(subject: &str, e: jetstream::context::PublishError) -> Error {
    match e.kind() {
        jetstream::context::PublishErrorKind::TimedOut => Error::Timeout { subject: subject.to_string() },
        _ => backend(&format!("failed to append event on {subject}"), e),
    }
}

/// Where a consumer starts: `(first stream sequence, minimum revision, history missing)`.
async fn start_position(stream: &stream::Stream<()>, start: StartAt) -> Result<(u64, u64, bool)> {
    // The first retained message can be dropped while we search; retry a few times.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let info = stream.get_info().await.map_err(|e| backend("failed to read event stream info", e))?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let r = match start {
            StartAt::New => return Ok((last + 1, 0, false)),
            StartAt::AfterRevision(r) => r,
        };
        if info.state.messages == 0 {
            // Nothing retained: nothing to replay, and nothing to compare `r` with.
            return Ok((last + 1, r, false));
        }
        match search(stream, first, last, r).await {
            Ok((seq, first_revision)) => {
                // History is missing when the limits dropped the start of the stream, or
                // when the stream was created again after the server lost it (its first
                // event says through which revision the history is gone).
                let missing = r.saturating_add(1) < first_revision
                    && (first > 1 || lost_through(stream, first).await?.is_some_and(|l| r < l));
                return Ok((seq, r, missing));
            }
            Err(e) if attempts < 3 => {
                tracing::debug!(error = %e, "event stream changed during the start search, retrying");
            }
            Err(e) => return Err(e),
        }
    }
}

/// The revision through which history is lost, as the event at `seq` (the stream's
/// first) says, if it says so.
async fn lost_through(stream: &stream::Stream<()>, seq: u64) -> Result<Option<u64>> {
    let msg = stream
        .get_raw_message(seq)
        .await
        .map_err(|e| backend(&format!("failed to read event at stream sequence {seq}"), e))?;
    Ok(msg.headers.get(LOST_THROUGH_HEADER).and_then(|v| v.as_str().trim().parse().ok()))
}

/// The first sequence in `first..=last` whose revision is above `r` (`last + 1` if none),
/// and the revision at `first`. Revisions increase with the stream sequence (the relay
/// appends in order), so this is a binary search.
async fn search(stream: &stream::Stream<()>, first: u64, last: u64, r: u64) -> Result<(u64, u64)> {
    let rev_at = |seq: u64| async move {
        let msg = stream
            .get_raw_message(seq)
            .await
            .map_err(|e| backend(&format!("failed to read event at stream sequence {seq}"), e))?;
        revision_of(Some(&msg.headers))
            .ok_or_else(|| Error::Backend(format!("event at stream sequence {seq} has no revision header")))
    };
    let first_revision = rev_at(first).await?;
    if first_revision > r {
        return Ok((first, first_revision));
    }
    if rev_at(last).await? <= r {
        return Ok((last + 1, first_revision));
    }
    // Invariant: rev(lo) <= r < rev(hi).
    let (mut lo, mut hi) = (first, last);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if rev_at(mid).await? <= r {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok((hi, first_revision))
}

/// One live pull consumer: the server-side consumer and the inbox its messages arrive on.
struct Live {
    consumer: PullConsumer,
    inbox: async_nats::Subscriber,
    inbox_subject: String,
    /// Messages still owed by the outstanding pull request.
    outstanding: usize,
    /// When the last message, heartbeat or status arrived.
    last_heard: Instant,
}

/// Drives one event consumer and tracks its position.
struct EventConsumer {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream<()>,
    filter: String,
    connections: watch::Receiver<u64>,
    /// The stream sequence to continue from.
    next_seq: u64,
    /// When the stream this consumer reads was created (nanoseconds since the epoch), as
    /// its info said when the consumer was last (re)created.
    stream_created: Option<i128>,
    /// Events at or below this revision are never handed out (again).
    min_revision: u64,
    consumer: Option<Live>,
    /// The consumer sequence of the last message from the current consumer.
    consumer_seq: u64,
    /// The stream sequence before the earliest skip over sequences not yet checked
    /// against the stream's first sequence.
    skipped_from: Option<u64>,
    last_validation: Option<Instant>,
    pending: VecDeque<StreamItem>,
    failures: u32,
}

enum Step {
    Message(async_nats::Message),
    Reconnected,
    Stale,
    Closed,
}

impl EventConsumer {
    async fn next(&mut self) -> StreamItem {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return item;
            }
            if self.consumer.is_none() {
                if self.failures > 0 {
                    let backoff = Duration::from_millis(100 * 2u64.pow(self.failures.min(5)));
                    tokio::time::sleep(backoff.min(Duration::from_secs(3))).await;
                }
                if let Err(e) = self.create().await {
                    self.failures += 1;
                    tracing::warn!(error = %e, filter = %self.filter, "failed to create event consumer, retrying");
                    continue;
                }
            }
            if let Err(e) = self.pump().await {
                tracing::warn!(error = %e, filter = %self.filter, next_seq = self.next_seq, "event consumer lost, recreating");
                self.drop_consumer();
                self.failures += 1;
            }
        }
    }

    /// Creates the server-side consumer from `next_seq` and sends the first pull.
    async fn create(&mut self) -> Result<()> {
        self.drop_consumer();
        let info =
            self.stream.get_info().await.map_err(|e| backend("failed to read event stream info", e))?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        // A stream created again (the server lost its store) numbers its messages from 1:
        // by the time this consumer comes back the relay may have appended past
        // `next_seq` already, so the sequences alone do not tell; its creation time does.
        let created = info.created.unix_timestamp_nanos();
        let recreated = self.stream_created.is_some_and(|c| c != created);
        self.stream_created = Some(created);
        if recreated || last.saturating_add(1) < self.next_seq {
            // The stream is behind this consumer: it was deleted and created again.
            tracing::warn!(filter = %self.filter, next_seq = self.next_seq, last, "event stream was reset");
            self.pending.push_back(StreamItem::Gap);
            self.next_seq = first;
        } else if first > self.next_seq {
            // Events this consumer had not read yet were dropped by the limits meanwhile.
            tracing::warn!(filter = %self.filter, next_seq = self.next_seq, first, "event stream dropped events before this consumer read them");
            self.pending.push_back(StreamItem::Gap);
            self.next_seq = first;
        }
        self.skipped_from = None;
        let consumer: PullConsumer = self
            .stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: self.next_seq.max(1) },
                ack_policy: AckPolicy::None,
                filter_subject: self.filter.clone(),
                inactive_threshold: CONSUMER_INACTIVE,
                memory_storage: true,
                num_replicas: 1,
                description: Some("capstan event consumer".to_string()),
                ..Default::default()
            })
            .await
            .map_err(|e| backend(&format!("failed to create event consumer for {}", self.filter), e))?;
        let inbox_subject = self.client.new_inbox();
        let inbox = self
            .client
            .subscribe(inbox_subject.clone())
            .await
            .map_err(|e| backend("failed to subscribe to the consumer inbox", e))?;
        self.consumer =
            Some(Live { consumer, inbox, inbox_subject, outstanding: 0, last_heard: Instant::now() });
        self.consumer_seq = 0;
        self.last_validation = None;
        if let Err(e) = self.pull().await {
            self.drop_consumer();
            return Err(e);
        }
        Ok(())
    }

    fn drop_consumer(&mut self) {
        if let Some(live) = self.consumer.take() {
            // Best effort: the server also deletes it after `CONSUMER_INACTIVE`.
            let stream = self.stream.clone();
            let name = live.consumer.cached_info().name.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    stream.delete_consumer(&name).await.ok();
                });
            }
        }
    }

    async fn pull(&mut self) -> Result<()> {
        let Some(live) = self.consumer.as_mut() else { return Ok(()) };
        live.consumer
            .request_batch(
                pull::BatchConfig {
                    batch: PULL_BATCH,
                    expires: Some(PULL_EXPIRES),
                    idle_heartbeat: PULL_HEARTBEAT,
                    ..Default::default()
                },
                live.inbox_subject.clone().into(),
            )
            .await
            .map_err(|e| backend("failed to send a pull request", e))?;
        live.outstanding = PULL_BATCH;
        Ok(())
    }

    /// Waits for the next message, status or event, and handles it.
    async fn pump(&mut self) -> Result<()> {
        let Some(live) = self.consumer.as_mut() else { return Ok(()) };
        let deadline = tokio::time::Instant::from_std(live.last_heard + STALE_AFTER);
        let step = tokio::select! {
            // Drain what already arrived before concluding anything from the timer.
            biased;
            m = live.inbox.next() => m.map_or(Step::Closed, Step::Message),
            changed = self.connections.changed() => {
                if changed.is_err() {
                    return Err(Error::Closed);
                }
                Step::Reconnected
            }
            _ = tokio::time::sleep_until(deadline) => Step::Stale,
        };
        let msg = match step {
            Step::Message(m) => m,
            Step::Reconnected => return Err(Error::Backend("reconnected to nats".to_string())),
            Step::Stale => {
                return Err(Error::Backend("no message or heartbeat from the consumer".to_string()))
            }
            Step::Closed => return Err(Error::Closed),
        };
        live.last_heard = Instant::now();
        match msg.status {
            None | Some(StatusCode::OK) => {}
            Some(StatusCode::IDLE_HEARTBEAT) => {
                // Idle: a good moment to check skipped sequences.
                return self.validate().await;
            }
            Some(StatusCode::TIMEOUT) => {
                // The pull request expired; ask again.
                self.validate().await?;
                return self.pull().await;
            }
            Some(status) => {
                return Err(Error::Backend(format!(
                    "consumer returned status {status}: {}",
                    msg.description.as_deref().unwrap_or("")
                )));
            }
        }
        live.outstanding = live.outstanding.saturating_sub(1);
        let refill = live.outstanding == 0;
        let js_msg = jetstream::Message { message: msg, context: self.js.clone() };
        let (stream_seq, consumer_seq) = {
            let info = js_msg.info().map_err(|e| backend("event without jetstream metadata", e))?;
            (info.stream_sequence, info.consumer_sequence)
        };
        if consumer_seq != self.consumer_seq + 1 {
            return Err(Error::Backend(format!(
                "consumer sequence skipped from {} to {consumer_seq}",
                self.consumer_seq
            )));
        }
        self.consumer_seq = consumer_seq;
        if stream_seq > self.next_seq {
            // Sequences in between did not match the filter, or were dropped by the limits
            // before we read them; `validate` tells which.
            self.skipped_from.get_or_insert(self.next_seq.saturating_sub(1));
        }
        self.next_seq = stream_seq + 1;
        self.failures = 0;
        let message = js_msg.message;
        match revision_of(message.headers.as_ref()) {
            Some(revision) if revision > self.min_revision => {
                self.min_revision = revision;
                self.pending.push_back(StreamItem::Event {
                    subject: message.subject.to_string(),
                    payload: message.payload,
                    revision,
                });
            }
            Some(revision) => {
                tracing::debug!(
                    revision,
                    stream_seq,
                    "skipping an event at or below the consumer's revision"
                );
            }
            None => {
                tracing::warn!(stream_seq, subject = %message.subject, "skipping an event without revision")
            }
        }
        if refill {
            self.validate().await?;
            self.pull().await?;
        } else if self.skipped_from.is_some() {
            self.validate().await?;
        }
        Ok(())
    }

    /// Checks skipped stream sequences: if the stream's first sequence is now past the
    /// earliest skip, messages may have been dropped before this consumer read them, so a
    /// [`StreamItem::Gap`] is queued (after the events already queued; the consumer relists
    /// either way). Rate limited, so a filtered consumer (which skips all the time) costs
    /// at most one stream info request per [`VALIDATE_EVERY`].
    async fn validate(&mut self) -> Result<()> {
        let Some(from) = self.skipped_from else { return Ok(()) };
        if self.last_validation.is_some_and(|t| t.elapsed() < VALIDATE_EVERY) {
            return Ok(());
        }
        let info =
            self.stream.get_info().await.map_err(|e| backend("failed to read event stream info", e))?;
        self.last_validation = Some(Instant::now());
        self.skipped_from = None;
        // Everything below `first` is gone. The consumer handed out everything it wanted up
        // to `from` and has since skipped over sequences it did not receive: if some of
        // those are gone, they may have been dropped before the consumer got to them.
        let first = info.state.first_sequence;
        if first > from + 1 {
            tracing::warn!(filter = %self.filter, from, first, "event stream dropped messages before this consumer read them");
            self.pending.push_back(StreamItem::Gap);
        }
        Ok(())
    }
}

impl Drop for EventConsumer {
    fn drop(&mut self) {
        self.drop_consumer();
    }
}

impl Bus for NatsBus {
    fn publish(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if !subjects::is_valid_subject(&subject) {
                return Err(Error::InvalidSubject(subject));
            }
            self.client
                .publish(subject.clone(), payload)
                .await
                .map_err(|e| backend(&format!("failed to publish on {subject}"), e))
        })
    }

    fn subscribe(&self, subject: String, queue_group: Option<String>) -> BoxFuture<'_, Result<Subscription>> {
        Box::pin(async move {
            if !subjects::is_valid_pattern(&subject) {
                return Err(Error::InvalidSubject(subject));
            }
            let sub = match queue_group {
                None => self.client.subscribe(subject.clone()).await,
                Some(group) => self.client.queue_subscribe(subject.clone(), group).await,
            }
            .map_err(|e| backend(&format!("failed to subscribe to {subject}"), e))?;
            Ok(Box::pin(sub.map(|m| Message {
                subject: m.subject.to_string(),
                payload: m.payload,
                reply: m.reply.map(|r| r.to_string()),
            })) as Subscription)
        })
    }

    fn request(&self, subject: String, payload: Bytes, timeout: Duration) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(async move {
            if !subjects::is_valid_subject(&subject) {
                return Err(Error::InvalidSubject(subject));
            }
            let req = async_nats::Request::new().payload(payload).timeout(Some(timeout));
            match self.client.send_request(subject.clone(), req).await {
                Ok(m) => Ok(m.payload),
                Err(e) => Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => Error::NoResponders { subject },
                    async_nats::RequestErrorKind::TimedOut => Error::Timeout { subject },
                    _ => backend(&format!("request on {subject} failed"), e),
                }),
            }
        })
    }

    fn append_event(&self, subject: String, payload: Bytes, revision: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.do_append(subject, payload, revision))
    }

    fn last_event_revision(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.do_last_revision())
    }

    fn events(&self, filter: String, start: StartAt) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(self.do_events(filter, start))
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn url_lists() {
        assert_eq!(server_addrs("nats://127.0.0.1:4222").map(|v| v.len()).ok(), Some(1));
        let three = server_addrs("nats://127.0.0.1:1, nats://127.0.0.1:2,nats://127.0.0.1:3").ok();
        assert_eq!(three.map(|v| v.len()), Some(3));
        assert!(matches!(server_addrs(" , "), Err(Error::Connect { .. })));
        assert!(matches!(server_addrs("nats://127.0.0.1:notaport"), Err(Error::Connect { .. })));
    }
}
