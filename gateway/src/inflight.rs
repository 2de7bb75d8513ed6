//! Overload protection: a limit on the requests the API service works on at once, as
//! upstream's max-in-flight filter (the predecessor of API Priority and Fairness, which is
//! not built yet). Requests over the limit wait in a bounded queue, in arrival order, for
//! at most [`QUEUE_WAIT`]; a full queue or a longer wait is 429 TooManyRequests with
//! `Retry-After: 1`, as upstream. Exempt, as upstream's `exempt` priority level: health
//! checks (answered before authentication), users in `system:masters`, and long-running
//! requests (watches, logs, exec, attach, port-forward, proxy), which hold no seat — but a
//! watch that begins with the current state holds one while its initial events are made.
//!
//! The limit keeps CPU-heavy requests (large LISTs) from crowding out everything else on
//! the server's few worker threads: with it an admin's write stays fast under a flood.

use crate::auth::User;
use crate::status::{ApiError, ApiResult};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a request may wait for a seat.
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);

static INFLIGHT: LazyLock<capstan_metrics::IntGaugeVec> = LazyLock::new(|| {
    capstan_metrics::gauges(
        "apiserver_current_inflight_requests",
        "Maximal number of currently used inflight request limit of this apiserver per request kind in last second.",
        &["request_kind"],
    )
});

static QUEUED: LazyLock<capstan_metrics::IntGaugeVec> = LazyLock::new(|| {
    capstan_metrics::gauges(
        "apiserver_current_inqueue_requests",
        "Maximal number of queued requests in this apiserver per request kind in last second.",
        &["request_kind"],
    )
});

static REJECTED: LazyLock<capstan_metrics::IntCounterVec> = LazyLock::new(|| {
    capstan_metrics::counters(
        "apiserver_dropped_requests_total",
        "Number of requests dropped with 'Try again later' response.",
        &["request_kind"],
    )
});

/// The limiter.
pub struct Inflight {
    seats: std::sync::Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// A seat, released when dropped.
pub struct Seat {
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if self.permit.is_some() {
            INFLIGHT.with_label_values(&["readOnly"]).dec();
        }
    }
}

impl Inflight {
    /// At most `limit` requests at once (0: no limit), `max_waiting` queued.
    pub fn new(limit: usize, max_waiting: usize) -> Inflight {
        let seats = if limit == 0 { Semaphore::MAX_PERMITS } else { limit };
        Inflight {
            seats: std::sync::Arc::new(Semaphore::new(seats)),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// A seat for a request of `user`; `long_running` requests and `system:masters` pass
    /// without one.
    pub async fn seat(&self, user: &User, long_running: bool) -> ApiResult<Seat> {
        if long_running || user.in_group("system:masters") {
            return Ok(Seat { permit: None });
        }
        let permit = match self.seats.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(rejected());
                }
                QUEUED.with_label_values(&["readOnly"]).inc();
                let got = tokio::time::timeout(QUEUE_WAIT, self.seats.clone().acquire_owned()).await;
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                QUEUED.with_label_values(&["readOnly"]).dec();
                match got {
                    Ok(Ok(p)) => p,
                    _ => return Err(rejected()),
                }
            }
        };
        INFLIGHT.with_label_values(&["readOnly"]).inc();
        Ok(Seat { permit: Some(permit) })
    }
}

fn rejected() -> ApiError {
    REJECTED.with_label_values(&["readOnly"]).inc();
    ApiError::TooManyRequests("Too many requests, please try again later.".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seats_queue_and_reject_when_full() {
        let f = Inflight::new(1, 1);
        let user = User::new("u", vec!["system:authenticated".into()]);
        let admin = User::new("a", vec!["system:masters".into()]);
        let first = f.seat(&user, false).await.unwrap();
        // Exempt ones pass while the only seat is taken.
        let _a = f.seat(&admin, false).await.unwrap();
        let _w = f.seat(&user, true).await.unwrap();
        // One may queue; the next is refused at once.
        let f = std::sync::Arc::new(f);
        let (f2, u2) = (f.clone(), user.clone());
        let queued = tokio::spawn(async move { f2.seat(&u2, false).await.map(|_| ()) });
        while f.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let e = f.seat(&user, false).await.err().expect("refused");
        assert_eq!(e.code(), 429);
        drop(first);
        assert!(queued.await.unwrap().is_ok(), "the queued request gets the seat");
    }
}
