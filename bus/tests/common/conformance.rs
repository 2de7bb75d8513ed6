//! Semantics every [`Bus`] backend must share. Compiled into the library's unit tests (for
//! `InProcBus`) and into `tests/nats.rs` (for `NatsBus`); each check uses its own subjects
//! and revisions above the bus's last one, so they can run one after another on one bus.

use capstan_bus::{subjects, Bus, Error, EventStream, StartAt, StreamItem};
use futures::StreamExt;
use std::collections::HashSet;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// Runs every check, in order, on one bus.
pub async fn run_all(bus: &dyn Bus) {
    wildcards(bus).await;
    queue_groups(bus).await;
    request_reply(bus).await;
    no_responders_and_timeout(bus).await;
    event_replay_dedupe_and_live(bus).await;
    event_start_new_and_filter(bus).await;
}

async fn recv(sub: &mut capstan_bus::Subscription) -> capstan_bus::Message {
    tokio::time::timeout(T, sub.next())
        .await
        .expect("timed out waiting for a message")
        .expect("subscription ended")
}

async fn nothing_more(sub: &mut capstan_bus::Subscription) {
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
        panic!("unexpected message on {}", m.subject);
    }
}

/// The next item of an event stream, within the test timeout.
pub async fn next_item(s: &mut EventStream) -> StreamItem {
    tokio::time::timeout(T, s.next())
        .await
        .expect("timed out waiting for an event")
        .expect("event stream ended")
}

/// The revision of an event item; panics on a gap.
pub fn revision(item: &StreamItem) -> u64 {
    match item {
        StreamItem::Event { revision, .. } => *revision,
        StreamItem::Gap => panic!("unexpected gap"),
    }
}

pub async fn wildcards(bus: &dyn Bus) {
    let mut one = bus.subscribe("wc.*.x".into(), None).await.unwrap();
    let mut rest = bus.subscribe("wc.>".into(), None).await.unwrap();
    let mut exact = bus.subscribe("wc.a.y".into(), None).await.unwrap();
    for s in ["wc.a.x", "wc.a.y", "wc.a.b.x", "other.a.x"] {
        bus.publish(s.into(), s.as_bytes().to_vec().into()).await.unwrap();
    }
    let m = recv(&mut one).await;
    assert_eq!(m.subject, "wc.a.x");
    assert_eq!(&m.payload[..], b"wc.a.x");
    assert!(m.reply.is_none());
    let got: Vec<String> =
        vec![recv(&mut rest).await.subject, recv(&mut rest).await.subject, recv(&mut rest).await.subject];
    assert_eq!(got, vec!["wc.a.x", "wc.a.y", "wc.a.b.x"]);
    assert_eq!(recv(&mut exact).await.subject, "wc.a.y");
    nothing_more(&mut one).await;
    nothing_more(&mut rest).await;
    nothing_more(&mut exact).await;
}

pub async fn queue_groups(bus: &dyn Bus) {
    let mut a = bus.subscribe("qg.work".into(), Some("workers".into())).await.unwrap();
    let mut b = bus.subscribe("qg.work".into(), Some("workers".into())).await.unwrap();
    let mut plain = bus.subscribe("qg.work".into(), None).await.unwrap();
    const N: usize = 40;
    for i in 0..N {
        bus.publish("qg.work".into(), i.to_string().into_bytes().into()).await.unwrap();
    }
    for i in 0..N {
        assert_eq!(recv(&mut plain).await.payload, i.to_string().into_bytes());
    }
    let mut seen = HashSet::new();
    let (mut from_a, mut from_b) = (0, 0);
    while seen.len() < N {
        let m = tokio::select! {
            m = a.next() => { from_a += 1; m }
            m = b.next() => { from_b += 1; m }
            _ = tokio::time::sleep(T) => panic!("timed out: the group got {} of {N}", seen.len()),
        };
        let m = m.expect("subscription ended");
        assert!(seen.insert(m.payload.clone()), "message delivered twice within the group");
    }
    nothing_more(&mut a).await;
    nothing_more(&mut b).await;
    assert_eq!(from_a + from_b, N);
    assert!(from_a > 0 && from_b > 0, "one member got everything: {from_a}/{from_b}");
}

pub async fn request_reply(bus: &dyn Bus) {
    let mut svc = bus.subscribe("rr.echo".into(), Some("svc".into())).await.unwrap();
    let reply = bus.request("rr.echo".into(), "ping".into(), T);
    let serve = async {
        let m = recv(&mut svc).await;
        assert_eq!(&m.payload[..], b"ping");
        let to = m.reply.expect("a request carries a reply subject");
        let mut answer = b"pong:".to_vec();
        answer.extend_from_slice(&m.payload);
        bus.publish(to, answer.into()).await.unwrap();
    };
    let (got, ()) = tokio::join!(reply, serve);
    assert_eq!(&got.unwrap()[..], b"pong:ping");
}

pub async fn no_responders_and_timeout(bus: &dyn Bus) {
    let err = bus.request("rr.nobody".into(), "x".into(), T).await.unwrap_err();
    assert!(matches!(err, Error::NoResponders { ref subject } if subject == "rr.nobody"), "{err:?}");
    assert!(err.is_retryable());
    let _silent = bus.subscribe("rr.silent".into(), None).await.unwrap();
    let err = bus.request("rr.silent".into(), "x".into(), Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { ref subject } if subject == "rr.silent"), "{err:?}");
}

pub async fn event_replay_dedupe_and_live(bus: &dyn Bus) {
    let base = bus.last_event_revision().await.unwrap();
    let subj = subjects::event("", "configmaps", Some("replay"), "a");
    let filter = subjects::events_of("", "configmaps", Some("replay"));
    bus.append_event(subj.clone(), "1".into(), base + 1).await.unwrap();
    bus.append_event(subj.clone(), "2".into(), base + 2).await.unwrap();
    // A re-sent revision is stored once; an older one is ignored.
    bus.append_event(subj.clone(), "2 again".into(), base + 2).await.unwrap();
    bus.append_event(subj.clone(), "3".into(), base + 3).await.unwrap();
    bus.append_event(subj.clone(), "1 again".into(), base + 1).await.unwrap();
    assert_eq!(bus.last_event_revision().await.unwrap(), base + 3);

    let mut s = bus.events(filter.clone(), StartAt::AfterRevision(base + 1)).await.unwrap();
    match next_item(&mut s).await {
        StreamItem::Event { subject, payload, revision } => {
            assert_eq!(subject, subj);
            assert_eq!(&payload[..], b"2");
            assert_eq!(revision, base + 2);
        }
        StreamItem::Gap => panic!("unexpected gap"),
    }
    assert_eq!(revision(&next_item(&mut s).await), base + 3);
    // Then live.
    bus.append_event(subj.clone(), "4".into(), base + 4).await.unwrap();
    assert_eq!(revision(&next_item(&mut s).await), base + 4);

    // From the beginning of this test's events: all four, once each.
    let mut all = bus.events(filter, StartAt::AfterRevision(base)).await.unwrap();
    for r in 1..=4 {
        assert_eq!(revision(&next_item(&mut all).await), base + r);
    }
    // Nothing after the last one.
    let mut none = bus.events(subjects::all_events(), StartAt::AfterRevision(base + 4)).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(200), none.next()).await.is_err());
}

pub async fn event_start_new_and_filter(bus: &dyn Bus) {
    let base = bus.last_event_revision().await.unwrap();
    let pods = subjects::event("", "pods", Some("fil"), "p");
    let svcs = subjects::event("", "services", Some("fil"), "s");
    bus.append_event(pods.clone(), "old".into(), base + 1).await.unwrap();
    let mut s = bus.events(subjects::events_of("", "pods", Some("fil")), StartAt::New).await.unwrap();
    bus.append_event(svcs.clone(), "svc".into(), base + 2).await.unwrap();
    bus.append_event(pods.clone(), "new".into(), base + 3).await.unwrap();
    match next_item(&mut s).await {
        StreamItem::Event { subject, payload, revision } => {
            assert_eq!((subject.as_str(), &payload[..], revision), (pods.as_str(), &b"new"[..], base + 3));
        }
        StreamItem::Gap => panic!("unexpected gap"),
    }
    // Events of every pod in every namespace, from the start of this test.
    let mut any =
        bus.events(subjects::events_of("", "pods", None), StartAt::AfterRevision(base)).await.unwrap();
    assert_eq!(revision(&next_item(&mut any).await), base + 1);
    assert_eq!(revision(&next_item(&mut any).await), base + 3);
}
