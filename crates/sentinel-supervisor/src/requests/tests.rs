use super::*;
use crate::governor::Activity;
use std::time::Duration;
use tokio::sync::Semaphore;

/// A registry, the governor's activity and four admission slots.
struct Fixture {
    requests: Requests,
    activity: Activity,
    slots: Arc<Semaphore>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            requests: Requests::default(),
            activity: Activity::new(),
            slots: Arc::new(Semaphore::new(4)),
        }
    }

    /// A ticket, admitted and bound to `generation` when given.
    fn ticket(&self, generation: Option<u64>) -> Ticket {
        let slot = Arc::clone(&self.slots).try_acquire_owned().unwrap();
        let mut t = self.requests.issue(slot, self.activity.begin());
        if let Some(g) = generation {
            t.bind(g);
        }
        t
    }

    /// Everything a ticket holds is free again.
    fn assert_idle(&self) {
        assert_eq!(self.requests.total(), 0);
        assert_eq!(*self.requests.inner.tally.borrow(), Tally::default());
        assert_eq!(self.activity.in_flight(), 0);
        assert_eq!(self.slots.available_permits(), 4);
    }
}

#[tokio::test(start_paused = true)]
async fn the_counts_agree_and_loads_are_activity_but_not_requests() {
    let f = Fixture::new();
    let waiting = f.ticket(None);
    let a = f.ticket(Some(1));
    let b = f.ticket(Some(2));
    // `/status` `in_flight` and the shutdown drain read the same number; the generations
    // count the bound ones; the governor sees each request, and a model load besides.
    assert_eq!(f.requests.total(), 3);
    assert_eq!((f.requests.count(1), f.requests.count(2)), (1, 1));
    assert_eq!(f.activity.in_flight(), 3);
    let loading = f.activity.begin();
    assert_eq!(f.activity.in_flight(), 4);
    assert_eq!(f.requests.total(), 3);
    assert_eq!(4 - f.slots.available_permits(), f.requests.total());
    drop(loading);
    drop((waiting, a, b));
    f.assert_idle();
}

#[tokio::test(start_paused = true)]
async fn dropping_a_ticket_releases_everything_it_held() {
    let f = Fixture::new();
    // The client went away mid-stream: the ticket was sent, heard, and is dropped.
    let t = f.ticket(Some(5));
    t.sent();
    t.progress();
    assert!(f.requests.silent_since(5).is_some());
    drop(t);
    f.assert_idle();
    assert_eq!(f.requests.silent_since(5), None);
    // The backend died: the death is frozen with the ticket in flight, then the ticket goes.
    let t = f.ticket(Some(6));
    t.sent();
    assert_eq!(t.died(), 1);
    drop(t);
    f.assert_idle();
    assert_eq!(f.requests.died(6), 1, "the death stays frozen");
}

#[tokio::test(start_paused = true)]
async fn a_drain_sees_exactly_the_requests_of_its_generation() {
    let f = Fixture::new();
    let mut moving = f.ticket(Some(1));
    let staying = f.ticket(Some(1));
    let other = f.ticket(Some(2));
    let unbound = f.ticket(None);
    let drain = |g: Option<u64>, secs: u64| {
        let r = f.requests.clone();
        tokio::spawn(async move {
            r.drained(g, Instant::now() + Duration::from_secs(secs))
                .await
        })
    };
    let one = drain(Some(1), 60);
    // A retry moves a request to the next backend in one step.
    moving.bind(3);
    assert_eq!(
        (f.requests.count(1), f.requests.count(3)),
        (1, 1),
        "a rebound request counts on its new generation only"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!one.is_finished());
    drop(staying);
    // Generations 2 and 3 and the unbound request do not hold generation 1's drain.
    assert_eq!(one.await.unwrap(), 0);
    // The shutdown drain waits for every request, bound or not, up to its deadline.
    let started = Instant::now();
    assert_eq!(drain(None, 3).await.unwrap(), 3);
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    drop((moving, other, unbound));
    assert_eq!(drain(None, 3).await.unwrap(), 0);
    f.assert_idle();
}

#[tokio::test(start_paused = true)]
async fn a_death_freezes_the_requests_in_flight_once() {
    let f = Fixture::new();
    let a = f.ticket(Some(3));
    let b = f.ticket(Some(3));
    // The first to notice freezes the count; a bystander that leaves later changes nothing.
    assert_eq!(a.died(), 2);
    drop(b);
    assert_eq!(a.died(), 2);
    let word = {
        let r = f.requests.clone();
        tokio::spawn(async move { r.crashed(3, Instant::now() + Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(f.requests.exited(3, true), 2);
    assert_eq!(word.await.unwrap(), Some(true));
    // No word from the lifecycle: none after the deadline.
    let _c = f.ticket(Some(4));
    assert_eq!(f.requests.died(4), 1);
    assert_eq!(
        f.requests
            .crashed(4, Instant::now() + Duration::from_secs(1))
            .await,
        None
    );
    // Only the newest deaths are kept.
    for g in 10..40 {
        f.requests.exited(g, false);
    }
    assert_eq!(f.requests.crashed(3, Instant::now()).await, None);
    assert_eq!(f.requests.crashed(39, Instant::now()).await, Some(false));
    drop(a);
}

#[tokio::test(start_paused = true)]
async fn silence_is_timed_from_sending_and_server_errors_count_in_a_row() {
    let f = Fixture::new();
    let mut t = f.ticket(Some(1));
    assert_eq!(f.requests.silent_since(1), None, "not sent yet");
    t.sent();
    let sent_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(f.requests.silent_since(1), Some(sent_at));
    t.progress();
    assert_eq!(f.requests.silent_since(1), Some(Instant::now()));
    // Bound to the next backend, it is no longer outstanding on the old one.
    t.bind(2);
    assert_eq!(f.requests.silent_since(1), None);
    for status in [500, 500, 200, 503, 500, 502] {
        t.answered(status);
    }
    assert_eq!(f.requests.failures(2), 2);
    f.requests.forget(2);
    assert_eq!(f.requests.failures(2), 0);
}
