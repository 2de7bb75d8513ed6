//! The backend-generic conformance suite.
//!
//! Every case is a `pub async fn` taking a fresh, empty store (`&dyn Store`) and panicking on
//! a violation, so that one suite checks every backend the same way. `tests/conformance.rs`
//! runs each case as its own test against redb and, when configured, FoundationDB; other
//! backends can call [`run_all`] or walk [`CASES`].
//!
//! Cases never sleep to synchronise: waits use conditions with deadlines. The only sleeps
//! are real delays that let a short lease TTL pass.

use crate::{prefix_end, BoxFuture, ChangeKind, Error, Op, Precondition, Store, Txn};
use futures::future::join_all;
use std::collections::BTreeSet;
use std::time::Duration;

/// A conformance case: runs against a fresh, empty store and panics on a violation.
pub type Case = for<'a> fn(&'a dyn Store) -> BoxFuture<'a, ()>;

/// How long a case waits for something that should happen promptly.
const DEADLINE: Duration = Duration::from_secs(10);

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, by name, in a sensible running order.
        pub const CASES: &[(&str, Case)] = &[
            $((stringify!($name), {
                fn case(s: &dyn Store) -> BoxFuture<'_, ()> {
                    Box::pin($name(s))
                }
                case
            })),*
        ];
    };
}

cases!(
    empty_store,
    crud,
    delete_absent_key,
    preconditions,
    all_or_nothing,
    ops_see_earlier_ops,
    revision_order,
    range_limit_and_more,
    range_snapshot,
    change_log,
    delete_records_final_value,
    compaction,
    leases,
    lease_expiry_takeover,
    concurrent_cas_increments,
    concurrent_updates,
    many_concurrent_commits,
    subscribe_commits,
);

/// Runs every case, each on a store fresh from `make`.
pub async fn run_all(mut make: impl FnMut() -> Box<dyn Store>) {
    for (name, case) in CASES {
        tracing::info!(case = name, "running storage conformance case");
        let store = make();
        case(store.as_ref()).await;
    }
}

fn put(key: &str, value: &str, p: Precondition) -> Op {
    Op::put(key.as_bytes().to_vec(), value.as_bytes().to_vec(), p)
}

fn del(key: &str, p: Precondition) -> Op {
    Op::delete(key.as_bytes().to_vec(), p)
}

async fn commit1(s: &dyn Store, op: Op) -> u64 {
    let r = s.commit(Txn::single(op)).await.expect("commit");
    assert_eq!(r.revisions.len(), 1);
    r.revisions[0]
}

fn expect_precondition(r: crate::Result<crate::CommitResult>, index: usize, current: u64) {
    match r {
        Err(Error::PreconditionFailed { index: i, current: c }) => {
            assert_eq!((i, c), (index, current), "failing op index and current revision");
        }
        other => {
            panic!("expected PreconditionFailed {{ index: {index}, current: {current} }}, got {other:?}")
        }
    }
}

/// A fresh store is empty at revision 0.
pub async fn empty_store(s: &dyn Store) {
    assert_eq!(s.current_revision().await.unwrap(), 0);
    assert_eq!(s.compacted_revision().await.unwrap(), 0);
    assert!(s.get(b"/nope").await.unwrap().is_none());
    let r = s.range(b"", &[0xff], 0).await.unwrap();
    assert!(r.kvs.is_empty() && !r.more);
    assert_eq!(r.revision, 0);
    assert!(s.changes(0, 0).await.unwrap().is_empty());
    assert!(s.get_lease("nope").await.unwrap().is_none());
}

/// Create, read, update, delete, recreate.
pub async fn crud(s: &dyn Store) {
    let r1 = commit1(s, put("/a", "1", Precondition::None)).await;
    assert_eq!(r1, 1, "the first mutation gets revision 1");
    let kv = s.get(b"/a").await.unwrap().expect("present");
    assert_eq!((kv.key.as_slice(), kv.value.as_slice()), (&b"/a"[..], &b"1"[..]));
    assert_eq!((kv.create_revision, kv.mod_revision), (r1, r1));

    let res = s.commit(Txn::single(put("/a", "2", Precondition::None))).await.unwrap();
    let r2 = res.revisions[0];
    assert_eq!(r2, r1 + 1);
    let prev = res.previous[0].clone().expect("previous value");
    assert_eq!((prev.value.as_slice(), prev.mod_revision, prev.create_revision), (&b"1"[..], r1, r1));
    let kv = s.get(b"/a").await.unwrap().expect("present");
    assert_eq!((kv.value.as_slice(), kv.create_revision, kv.mod_revision), (&b"2"[..], r1, r2));
    assert_eq!(s.current_revision().await.unwrap(), r2);

    let res = s.commit(Txn::single(del("/a", Precondition::None))).await.unwrap();
    let r3 = res.revisions[0];
    assert_eq!(r3, r2 + 1);
    assert_eq!(res.previous[0].as_ref().map(|kv| kv.value.clone()), Some(b"2".to_vec()));
    assert!(s.get(b"/a").await.unwrap().is_none());

    let r4 = commit1(s, put("/a", "3", Precondition::Absent)).await;
    let kv = s.get(b"/a").await.unwrap().expect("present");
    assert_eq!((kv.create_revision, kv.mod_revision), (r4, r4), "a recreated key starts over");
    assert_eq!(s.current_revision().await.unwrap(), r4);
}

/// Deleting an absent key without a guard is a no-op with revision 0 and no change.
pub async fn delete_absent_key(s: &dyn Store) {
    let r1 = commit1(s, put("/x", "1", Precondition::None)).await;
    let res = s.commit(Txn::single(del("/missing", Precondition::None))).await.unwrap();
    assert_eq!(res.revisions, vec![0]);
    assert_eq!(res.previous, vec![None]);
    let res = s.commit(Txn::single(del("/missing", Precondition::Absent))).await.unwrap();
    assert_eq!(res.revisions, vec![0]);
    assert_eq!(s.current_revision().await.unwrap(), r1);
    assert_eq!(s.changes(0, 0).await.unwrap().len(), 1);
}

/// Absent, Exists and ModRevision guards, with the failing index and current revision.
pub async fn preconditions(s: &dyn Store) {
    let r1 = commit1(s, put("/k", "1", Precondition::Absent)).await;
    expect_precondition(s.commit(Txn::single(put("/k", "x", Precondition::Absent))).await, 0, r1);
    expect_precondition(s.commit(Txn::single(put("/none", "x", Precondition::Exists))).await, 0, 0);
    expect_precondition(s.commit(Txn::single(put("/none", "x", Precondition::ModRevision(r1)))).await, 0, 0);
    let r2 = commit1(s, put("/k", "2", Precondition::ModRevision(r1))).await;
    assert!(r2 > r1);
    expect_precondition(s.commit(Txn::single(put("/k", "x", Precondition::ModRevision(r1)))).await, 0, r2);
    let r3 = commit1(s, put("/k", "3", Precondition::Exists)).await;
    expect_precondition(s.commit(Txn::single(del("/k", Precondition::ModRevision(r2)))).await, 0, r3);
    expect_precondition(s.commit(Txn::single(del("/k", Precondition::Absent))).await, 0, r3);
    expect_precondition(s.commit(Txn::single(del("/none", Precondition::Exists))).await, 0, 0);
    let before = s.current_revision().await.unwrap();
    assert_eq!(before, r3, "failed transactions consume no revision");
    let r4 = commit1(s, del("/k", Precondition::ModRevision(r3))).await;
    assert_eq!(r4, r3 + 1);
    assert!(s.get(b"/k").await.unwrap().is_none());
    // The failing index is the first op whose guard does not hold.
    let txn = Txn {
        ops: vec![
            put("/p1", "a", Precondition::Absent),
            put("/p2", "b", Precondition::None),
            put("/p1", "c", Precondition::ModRevision(12345)),
        ],
    };
    // /p1 was just created by op 0 of the same transaction at revision r4 + 1.
    expect_precondition(s.commit(txn).await, 2, r4 + 1);
}

/// A transaction with a failing op writes nothing, including for earlier ops.
pub async fn all_or_nothing(s: &dyn Store) {
    let base = commit1(s, put("/base", "0", Precondition::None)).await;
    let txn = Txn {
        ops: vec![
            put("/a", "1", Precondition::Absent),
            put("/b", "1", Precondition::Absent),
            del("/base", Precondition::None),
            put("/c", "1", Precondition::Exists),
        ],
    };
    expect_precondition(s.commit(txn).await, 3, 0);
    assert!(s.get(b"/a").await.unwrap().is_none());
    assert!(s.get(b"/b").await.unwrap().is_none());
    assert!(s.get(b"/base").await.unwrap().is_some());
    assert_eq!(s.current_revision().await.unwrap(), base);
    assert_eq!(s.changes(base, 0).await.unwrap(), vec![]);

    let txn = Txn {
        ops: vec![
            put("/a", "1", Precondition::Absent),
            put("/b", "1", Precondition::Absent),
            del("/zz", Precondition::None),
            del("/base", Precondition::Exists),
        ],
    };
    let res = s.commit(txn).await.unwrap();
    assert_eq!(res.revisions, vec![base + 1, base + 2, 0, base + 3]);
    assert_eq!(res.previous.iter().map(Option::is_some).collect::<Vec<_>>(), vec![false, false, false, true]);
    assert!(s.get(b"/a").await.unwrap().is_some());
    assert!(s.get(b"/base").await.unwrap().is_none());
    assert_eq!(s.changes(base, 0).await.unwrap().len(), 3);
}

/// Ops of one transaction see the effects of earlier ops on the same key.
pub async fn ops_see_earlier_ops(s: &dyn Store) {
    let txn = Txn {
        ops: vec![
            put("/n", "1", Precondition::Absent),
            put("/n", "2", Precondition::Exists),
            put("/n", "3", Precondition::ModRevision(2)),
        ],
    };
    let res = s.commit(txn).await.unwrap();
    assert_eq!(res.revisions, vec![1, 2, 3]);
    assert_eq!(res.previous[0], None);
    assert_eq!(
        res.previous[2].as_ref().map(|kv| (kv.value.clone(), kv.mod_revision)),
        Some((b"2".to_vec(), 2))
    );
    let kv = s.get(b"/n").await.unwrap().expect("present");
    assert_eq!((kv.value.as_slice(), kv.create_revision, kv.mod_revision), (&b"3"[..], 1, 3));
    let ch = s.changes(0, 0).await.unwrap();
    let kinds: Vec<_> = ch.iter().map(|c| (c.revision, c.kind, c.prev_revision)).collect();
    assert_eq!(
        kinds,
        vec![(1, ChangeKind::Create, 0), (2, ChangeKind::Update, 1), (3, ChangeKind::Update, 2)]
    );
    // Put then delete in one transaction.
    let res = s
        .commit(Txn { ops: vec![put("/t", "x", Precondition::Absent), del("/t", Precondition::Exists)] })
        .await
        .unwrap();
    assert_eq!(res.revisions, vec![4, 5]);
    assert!(s.get(b"/t").await.unwrap().is_none());
}

/// Revisions are strictly increasing across commits and consecutive within one.
pub async fn revision_order(s: &dyn Store) {
    let mut last = 0;
    for i in 0..20 {
        let ops = (0..3).map(|j| put(&format!("/r/{i}/{j}"), "v", Precondition::None)).collect();
        let res = s.commit(Txn { ops }).await.unwrap();
        assert_eq!(res.revisions, vec![last + 1, last + 2, last + 3], "per-op consecutive revisions");
        last = res.revisions[2];
        assert_eq!(s.current_revision().await.unwrap(), last);
    }
    let ch = s.changes(0, 0).await.unwrap();
    assert_eq!(ch.len(), 60);
    assert!(ch.windows(2).all(|w| w[1].revision == w[0].revision + 1));
}

/// Range: key order, limit, `more`, bounds, snapshot revision.
pub async fn range_limit_and_more(s: &dyn Store) {
    for k in ["/q", "/r/a", "/r/b", "/r/c", "/r/d", "/r/e", "/s"] {
        commit1(s, put(k, k, Precondition::None)).await;
    }
    let cur = s.current_revision().await.unwrap();
    let end = prefix_end(b"/r/");
    let all = s.range(b"/r/", &end, 0).await.unwrap();
    let keys: Vec<_> = all.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect();
    assert_eq!(keys, vec!["/r/a", "/r/b", "/r/c", "/r/d", "/r/e"]);
    assert!(!all.more);
    assert_eq!(all.revision, cur);
    assert!(all.kvs.iter().all(|kv| kv.value == kv.key && kv.mod_revision <= cur));

    let page = s.range(b"/r/", &end, 2).await.unwrap();
    assert_eq!(page.kvs.len(), 2);
    assert!(page.more);
    assert_eq!(page.kvs[1].key, b"/r/b");
    // Continue after the last key.
    let mut next = page.kvs[1].key.clone();
    next.push(0);
    let page2 = s.range(&next, &end, 2).await.unwrap();
    assert_eq!(
        page2.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        vec![b"/r/c".to_vec(), b"/r/d".to_vec()]
    );
    assert!(page2.more);
    let exact = s.range(b"/r/", &end, 5).await.unwrap();
    assert_eq!(exact.kvs.len(), 5);
    assert!(!exact.more, "a limit equal to the number of keys leaves nothing more");
    // End is exclusive; an empty or inverted range is empty.
    let r = s.range(b"/r/a", b"/r/c", 0).await.unwrap();
    assert_eq!(r.kvs.len(), 2);
    assert!(s.range(b"/r/c", b"/r/c", 0).await.unwrap().kvs.is_empty());
    assert!(s.range(b"/z", b"/a", 0).await.unwrap().kvs.is_empty());
}

/// A range is one consistent snapshot even while writers change the keys it reads.
pub async fn range_snapshot(s: &dyn Store) {
    let writer = async {
        for i in 0..40 {
            let v = i.to_string();
            let ops = vec![put("/snap/x", &v, Precondition::None), put("/snap/y", &v, Precondition::None)];
            s.commit(Txn { ops }).await.unwrap();
        }
    };
    let reader = async {
        for _ in 0..40 {
            let r = s.range(b"/snap/", &prefix_end(b"/snap/"), 0).await.unwrap();
            if r.kvs.is_empty() {
                continue;
            }
            assert_eq!(r.kvs.len(), 2, "both keys are written together");
            assert_eq!(r.kvs[0].value, r.kvs[1].value, "range mixes two snapshots");
            assert!(r.kvs.iter().all(|kv| kv.mod_revision <= r.revision));
            assert_eq!(r.kvs[1].mod_revision, r.revision, "the snapshot revision is the latest commit");
            tokio::task::yield_now().await;
        }
    };
    futures::join!(writer, reader);
}

/// The change log: order, kinds, values, create and previous revisions.
pub async fn change_log(s: &dyn Store) {
    let r1 = commit1(s, put("/c/a", "v1", Precondition::None)).await;
    let r2 = commit1(s, put("/c/a", "v2", Precondition::None)).await;
    let r3 = commit1(s, put("/c/b", "w1", Precondition::None)).await;
    let r4 = commit1(s, del("/c/a", Precondition::None)).await;
    let ch = s.changes(0, 0).await.unwrap();
    let got: Vec<_> = ch
        .iter()
        .map(|c| (c.revision, c.kind, c.key.clone(), c.value.clone(), c.create_revision, c.prev_revision))
        .collect();
    assert_eq!(
        got,
        vec![
            (r1, ChangeKind::Create, b"/c/a".to_vec(), b"v1".to_vec(), r1, 0),
            (r2, ChangeKind::Update, b"/c/a".to_vec(), b"v2".to_vec(), r1, r1),
            (r3, ChangeKind::Create, b"/c/b".to_vec(), b"w1".to_vec(), r3, 0),
            (r4, ChangeKind::Delete, b"/c/a".to_vec(), b"v2".to_vec(), r1, r2),
        ]
    );
    assert_eq!(s.changes(r1, 0).await.unwrap().first().map(|c| c.revision), Some(r2));
    assert_eq!(s.changes(0, 2).await.unwrap().len(), 2);
    assert_eq!(s.changes(r2, 1).await.unwrap().iter().map(|c| c.revision).collect::<Vec<_>>(), vec![r3]);
    assert!(s.changes(r4, 0).await.unwrap().is_empty());
    assert!(s.changes(r4 + 100, 0).await.unwrap().is_empty(), "reading past the end is empty");
}

/// A delete records the stored final value, or the caller's `last_value`.
pub async fn delete_records_final_value(s: &dyn Store) {
    commit1(s, put("/d/a", "stored", Precondition::None)).await;
    commit1(s, put("/d/b", "stored", Precondition::None)).await;
    let r = commit1(s, del("/d/a", Precondition::Exists)).await;
    let op = Op::Delete {
        key: b"/d/b".to_vec(),
        precondition: Precondition::Exists,
        last_value: Some(b"final-with-deletion-timestamp".to_vec()),
    };
    let r2 = commit1(s, op).await;
    let ch = s.changes(r - 1, 0).await.unwrap();
    assert_eq!(ch.len(), 2);
    assert_eq!((ch[0].kind, ch[0].value.as_slice()), (ChangeKind::Delete, &b"stored"[..]));
    assert_eq!((ch[1].revision, ch[1].kind), (r2, ChangeKind::Delete));
    assert_eq!(ch[1].value, b"final-with-deletion-timestamp");
}

/// Compaction removes old log entries; readers behind it get `Compacted`.
pub async fn compaction(s: &dyn Store) {
    for i in 0..10 {
        commit1(s, put(&format!("/k{i}"), "v", Precondition::None)).await;
    }
    assert_eq!(s.compacted_revision().await.unwrap(), 0);
    assert_eq!(s.compact(5).await.unwrap(), 4, "compact(before) removes revisions < before");
    assert_eq!(s.compacted_revision().await.unwrap(), 4);
    let ch = s.changes(4, 0).await.unwrap();
    assert_eq!(ch.iter().map(|c| c.revision).collect::<Vec<_>>(), (5..=10).collect::<Vec<_>>());
    for after in [0, 3] {
        match s.changes(after, 0).await {
            Err(Error::Compacted { requested, oldest }) => {
                assert_eq!((requested, oldest), (after + 1, 5));
            }
            other => panic!("expected Compacted for after={after}, got {other:?}"),
        }
    }
    assert_eq!(s.compact(3).await.unwrap(), 4, "compaction never goes back");
    // Objects are not affected by compaction.
    assert!(s.get(b"/k0").await.unwrap().is_some());
    // Never beyond the current revision.
    assert_eq!(s.compact(1_000).await.unwrap(), 10);
    assert_eq!(s.compacted_revision().await.unwrap(), 10);
    assert!(s.changes(10, 0).await.unwrap().is_empty());
    assert!(matches!(s.changes(9, 0).await, Err(Error::Compacted { .. })));
    let r = commit1(s, put("/after", "v", Precondition::None)).await;
    assert_eq!(r, 11, "the revision counter is unaffected by compaction");
    assert_eq!(s.changes(10, 0).await.unwrap().iter().map(|c| c.revision).collect::<Vec<_>>(), vec![11]);
}

/// Acquire, renew, held by another, release, reacquire with a bigger token.
pub async fn leases(s: &dyn Store) {
    let ttl = Duration::from_secs(30);
    let now = crate::model::now_ms();
    let a = s.acquire_lease("leader", "alice", ttl).await.unwrap();
    assert_eq!((a.name.as_str(), a.holder.as_str()), ("leader", "alice"));
    assert!(a.token >= 1);
    assert!(a.expires_at_ms >= now + 29_000);
    assert_eq!(s.get_lease("leader").await.unwrap(), Some(a.clone()));

    let renewed = s.acquire_lease("leader", "alice", ttl).await.unwrap();
    assert_eq!(renewed.token, a.token, "renewal keeps the fencing token");
    assert!(renewed.expires_at_ms >= a.expires_at_ms);

    match s.acquire_lease("leader", "bob", ttl).await {
        Err(Error::LeaseHeld { name, holder }) => {
            assert_eq!((name.as_str(), holder.as_str()), ("leader", "alice"))
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    // Another lease is independent.
    let other = s.acquire_lease("partition-7", "bob", ttl).await.unwrap();
    assert_eq!(other.holder, "bob");

    // Release by a non-holder or with a wrong token does nothing.
    s.release_lease("leader", "bob", a.token).await.unwrap();
    s.release_lease("leader", "alice", a.token + 7).await.unwrap();
    assert!(matches!(s.acquire_lease("leader", "bob", ttl).await, Err(Error::LeaseHeld { .. })));

    s.release_lease("leader", "alice", a.token).await.unwrap();
    let released = s.get_lease("leader").await.unwrap().expect("a released lease keeps its token");
    assert!(released.expired_at(crate::model::now_ms()));
    let b = s.acquire_lease("leader", "bob", ttl).await.unwrap();
    assert_eq!(b.holder, "bob");
    assert_eq!(b.token, a.token + 1, "a new holder gets the next fencing token");
    s.release_lease("missing", "x", 1).await.unwrap();
    assert!(s.get_lease("missing").await.unwrap().is_none());
}

/// An expired lease is taken over by another holder with a bigger fencing token.
pub async fn lease_expiry_takeover(s: &dyn Store) {
    let short = Duration::from_millis(200);
    let a = s.acquire_lease("relay", "alice", short).await.unwrap();
    assert!(matches!(s.acquire_lease("relay", "bob", short).await, Err(Error::LeaseHeld { .. })));
    // A real delay: let the TTL pass on the wall clock.
    let wait = a.expires_at_ms.saturating_sub(crate::model::now_ms()) + 50;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let b = s.acquire_lease("relay", "bob", Duration::from_secs(30)).await.unwrap();
    assert_eq!(b.holder, "bob");
    assert!(b.token > a.token, "takeover grows the fencing token");
    match s.acquire_lease("relay", "alice", short).await {
        Err(Error::LeaseHeld { holder, .. }) => assert_eq!(holder, "bob"),
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    assert_eq!(s.get_lease("relay").await.unwrap().map(|l| l.holder), Some("bob".to_string()));
}

/// 8 concurrent workers × 200 compare-and-swap increments of one key lose no update.
pub async fn concurrent_cas_increments(s: &dyn Store) {
    const WORKERS: u64 = 8;
    const PER_WORKER: u64 = 200;
    commit1(s, put("/counter", "0", Precondition::Absent)).await;
    let worker = |_: u64| async move {
        let mut conflicts = 0u64;
        for _ in 0..PER_WORKER {
            loop {
                let kv = s.get(b"/counter").await.unwrap().expect("counter exists");
                let n: u64 = String::from_utf8_lossy(&kv.value).parse().expect("counter value");
                let op = put("/counter", &(n + 1).to_string(), Precondition::ModRevision(kv.mod_revision));
                match s.commit(Txn::single(op)).await {
                    Ok(_) => break,
                    Err(Error::PreconditionFailed { index: 0, current }) => {
                        assert!(current > kv.mod_revision);
                        conflicts += 1;
                    }
                    Err(e) => panic!("unexpected commit error: {e}"),
                }
            }
        }
        conflicts
    };
    let conflicts: u64 = join_all((0..WORKERS).map(worker)).await.into_iter().sum();
    tracing::debug!(conflicts, "cas increments done");
    let kv = s.get(b"/counter").await.unwrap().expect("counter exists");
    assert_eq!(kv.value, (WORKERS * PER_WORKER).to_string().into_bytes(), "lost update");
    assert_eq!(kv.mod_revision, 1 + WORKERS * PER_WORKER);
    let ch = s.changes(0, 0).await.unwrap();
    assert_eq!(ch.len() as u64, 1 + WORKERS * PER_WORKER);
}

/// A counter with a limit kept by [`Op::Update`]: 8 workers × 50 concurrent increments
/// of one key, each in a transaction with a put of its own key, never conflict; past the
/// limit the update refuses, the transaction fails with `Refused` naming the op and its
/// put is not written; an update of an absent key fails its precondition.
pub async fn concurrent_updates(s: &dyn Store) {
    const WORKERS: u64 = 8;
    const PER_WORKER: u64 = 50;
    const LIMIT: u64 = 300;
    commit1(s, put("/limited", "0", Precondition::Absent)).await;
    let increment = crate::Update::new(|v: &[u8]| {
        let n: u64 = String::from_utf8_lossy(v).parse().map_err(|_| "not a number".to_string())?;
        if n >= LIMIT {
            return Err(format!("{n} is the limit"));
        }
        Ok((n + 1).to_string().into_bytes())
    });
    let worker = |w: u64| {
        let increment = increment.clone();
        async move {
            let (mut ok, mut refused) = (0u64, 0u64);
            for i in 0..PER_WORKER {
                let txn = Txn {
                    ops: vec![
                        put(&format!("/items/{w}-{i:03}"), "x", Precondition::Absent),
                        Op::Update { key: b"/limited".to_vec(), update: increment.clone() },
                    ],
                };
                match s.commit(txn).await {
                    Ok(r) => {
                        assert_eq!(r.revisions.len(), 2);
                        assert_eq!(r.revisions[1], r.revisions[0] + 1);
                        ok += 1;
                    }
                    Err(Error::Refused { index: 1, message }) => {
                        assert_eq!(message, format!("{LIMIT} is the limit"));
                        refused += 1;
                    }
                    Err(e) => panic!("unexpected commit error: {e}"),
                }
            }
            (ok, refused)
        }
    };
    let results = join_all((0..WORKERS).map(worker)).await;
    let ok: u64 = results.iter().map(|r| r.0).sum();
    let refused: u64 = results.iter().map(|r| r.1).sum();
    assert_eq!((ok, refused), (LIMIT, WORKERS * PER_WORKER - LIMIT));
    let kv = s.get(b"/limited").await.unwrap().expect("counter exists");
    assert_eq!(kv.value, LIMIT.to_string().into_bytes(), "lost or extra update");
    let items = s.range(b"/items/", &prefix_end(b"/items/"), 0).await.unwrap();
    assert_eq!(items.kvs.len() as u64, LIMIT, "a refused transaction wrote its put");
    assert_eq!(s.current_revision().await.unwrap(), 1 + 2 * LIMIT, "refused transactions took revisions");
    let absent = Op::Update { key: b"/nothing".to_vec(), update: increment };
    expect_precondition(s.commit(Txn::single(absent)).await, 0, 0);
}

/// 500 concurrent single-op commits all succeed with distinct, gap-free revisions.
pub async fn many_concurrent_commits(s: &dyn Store) {
    const N: u64 = 500;
    let results = join_all((0..N).map(|i| async move {
        s.commit(Txn::single(put(&format!("/many/{i:04}"), &i.to_string(), Precondition::Absent)))
            .await
            .map(|r| r.revisions[0])
    }))
    .await;
    let revs: BTreeSet<u64> = results.into_iter().map(|r| r.expect("commit")).collect();
    assert_eq!(revs.len() as u64, N, "revisions are distinct");
    assert_eq!(revs.iter().copied().collect::<Vec<_>>(), (1..=N).collect::<Vec<_>>());
    assert_eq!(s.current_revision().await.unwrap(), N);
    let all = s.range(b"/many/", &prefix_end(b"/many/"), 0).await.unwrap();
    assert_eq!(all.kvs.len() as u64, N);
    let mods: BTreeSet<u64> = all.kvs.iter().map(|kv| kv.mod_revision).collect();
    assert_eq!(mods, revs);
}

/// `subscribe_commits` reports the latest revision after commits through the handle.
pub async fn subscribe_commits(s: &dyn Store) {
    let mut rx = s.subscribe_commits();
    assert_eq!(*rx.borrow_and_update(), 0);
    let r = commit1(s, put("/w", "1", Precondition::None)).await;
    let seen = tokio::time::timeout(DEADLINE, rx.wait_for(|v| *v >= r))
        .await
        .expect("notified before the deadline")
        .map(|v| *v)
        .expect("store alive");
    assert_eq!(seen, r);
    // Several commits; the receiver catches up to the last.
    let mut last = r;
    for i in 0..5 {
        last = commit1(s, put("/w", &i.to_string(), Precondition::None)).await;
    }
    let seen = tokio::time::timeout(DEADLINE, rx.wait_for(|v| *v >= last))
        .await
        .expect("notified before the deadline")
        .map(|v| *v)
        .expect("store alive");
    assert_eq!(seen, last);
    // A failed transaction does not notify with a new revision.
    let _ = s.commit(Txn::single(put("/w", "x", Precondition::Absent))).await;
    assert_eq!(*rx.borrow(), last);
    // A fresh subscriber starts at the current revision.
    assert_eq!(*s.subscribe_commits().borrow(), last);
}
