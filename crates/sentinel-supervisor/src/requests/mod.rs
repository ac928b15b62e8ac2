//! Where a request is counted: one [`Ticket`] per request the proxy admits, from its admission
//! slot to the end of its answer's body, in one registry, [`Requests`].
//!
//! The ticket holds the admission slot and the governor's activity mark, and it is counted on
//! the backend generation it is bound to. Everything that needs to know about requests in flight
//! reads this registry instead of keeping a count of its own, so no two readings can disagree:
//!
//! - `/status` `in_flight` and the shutdown drain: [`Requests::total`] (tickets issued, requests
//!   only);
//! - the drain of one backend after a reload or before it stops: [`Requests::count`] and
//!   [`Requests::drained`] (tickets bound to that generation);
//! - the liveness watchdog: [`Requests::silent_since`] and [`Requests::failures`] (what the
//!   tickets sent to a generation heard back, see [`progress`]);
//! - poison requests and the restart policy: [`Requests::died`], [`Requests::exited`] and
//!   [`Requests::crashed`] (how many were in flight when a backend died, see [`deaths`]).
//!
//! The governor's [`Activity`](crate::governor::Activity) is wider on purpose: a request *or* a
//! model load or warm-up. A ticket holds one of its marks; loads and warm-ups take their own.

pub(crate) mod deaths;
pub(crate) mod progress;
#[cfg(test)]
mod tests;
mod ticket;

pub(crate) use deaths::Death;
pub(crate) use ticket::Ticket;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::time::Instant;

/// The registry of the requests in flight (cheap to clone: every clone is the same registry).
#[derive(Debug, Clone, Default)]
pub(crate) struct Requests {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The counts, published whenever a ticket is issued, bound or ends (not on progress, so
    /// a waiting drain is not woken by every streamed frame).
    tally: watch::Sender<Tally>,
    /// What the tickets sent to each generation heard back, for the watchdog.
    progress: Mutex<progress::Progress>,
    /// Each backend death as far as requests go.
    deaths: watch::Sender<BTreeMap<u64, Death>>,
    next_id: AtomicU64,
}

/// The requests in flight: all of them, and those bound to each backend generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Tally {
    /// Tickets issued and not ended: every request holding an admission slot.
    issued: usize,
    /// Tickets bound to each generation (a request waiting for a backend is bound to none).
    on: BTreeMap<u64, usize>,
}

impl Tally {
    /// Requests on `generation`, or on every generation and none with `None`.
    fn left(&self, generation: Option<u64>) -> usize {
        match generation {
            Some(g) => self.on.get(&g).copied().unwrap_or(0),
            None => self.issued,
        }
    }
}

impl Requests {
    /// Requests in flight now, on any backend or waiting for one: `/status` `in_flight`.
    pub(crate) fn total(&self) -> usize {
        self.inner.tally.borrow().issued
    }

    /// Requests bound to the backend of `generation` now.
    pub(crate) fn count(&self, generation: u64) -> usize {
        self.inner.tally.borrow().left(Some(generation))
    }

    /// Waits until `generation` (every request with `None`) has no request in flight, up to
    /// `deadline`. Returns how many were still in flight then (0 = drained).
    pub(crate) async fn drained(&self, generation: Option<u64>, deadline: Instant) -> usize {
        let mut rx = self.inner.tally.subscribe();
        let _ = tokio::time::timeout_at(deadline, rx.wait_for(|t| t.left(generation) == 0)).await;
        let left = self.inner.tally.borrow().left(generation);
        left
    }

    /// Moves one ticket's count from `from` to `to` in one step, so a drain never sees it on
    /// neither generation.
    fn rebind(&self, from: Option<u64>, to: Option<u64>) {
        self.inner.tally.send_modify(|t| {
            if let Some(g) = from {
                release(&mut t.on, g);
            }
            if let Some(g) = to {
                *t.on.entry(g).or_insert(0) += 1;
            }
        });
    }

    /// A ticket ended (its answer's body ended or was dropped).
    fn end(&self, id: u64, generation: Option<u64>) {
        self.progress().forget_ticket(id);
        self.inner.tally.send_modify(|t| {
            t.issued = t.issued.saturating_sub(1);
            if let Some(g) = generation {
                release(&mut t.on, g);
            }
        });
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, progress::Progress> {
        self.inner
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One request less on generation `g` (its entry goes at zero).
fn release(on: &mut BTreeMap<u64, usize>, g: u64) {
    if let Some(n) = on.get_mut(&g) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            on.remove(&g);
        }
    }
}
