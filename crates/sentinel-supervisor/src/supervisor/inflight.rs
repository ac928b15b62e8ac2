//! Requests in flight per backend generation: the proxy holds an [`InFlightGuard`] for the
//! backend it forwards to (taken while it reads the published backend, so a switch can never
//! miss it), and the lifecycle waits for a generation's count to reach zero before it stops
//! that backend (after a reload, or on shutdown), up to a drain deadline.
//!
//! It also keeps each backend death's [`Death`]: how many requests were in flight when the
//! backend died (frozen by whoever notices first, the lifecycle or a request whose answer
//! never came: every such request still holds its guard then) and the lifecycle's word on
//! whether it crashed by itself. The proxy reads it to tell a poison request (the only one in
//! flight at a crash) from bystanders, the restart policy to keep client-caused crashes out of
//! the crash-loop breaker.

use std::collections::BTreeMap;
use tokio::sync::watch;
use tokio::time::Instant;

/// The shared counts (cheap to clone).
#[derive(Debug, Clone)]
pub struct InFlight {
    counts: watch::Sender<BTreeMap<u64, usize>>,
    deaths: watch::Sender<BTreeMap<u64, Death>>,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            counts: watch::Sender::new(BTreeMap::new()),
            deaths: watch::Sender::new(BTreeMap::new()),
        }
    }
}

/// One backend's death, as far as requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Death {
    /// Requests in flight on it when it died.
    pub in_flight: usize,
    /// The lifecycle's word: it crashed by itself (a fault signal), or not (killed, exited);
    /// `None` until the lifecycle has seen the exit.
    pub crashed: Option<bool>,
}

/// Deaths remembered (the newest generations).
const DEATHS_KEPT: usize = 16;

/// One request on one backend generation; dropping it ends it.
#[derive(Debug)]
pub struct InFlightGuard {
    inflight: InFlight,
    generation: u64,
}

impl InFlightGuard {
    /// This request's backend died with it in flight: see [`InFlight::died`].
    pub fn died(&self) -> usize {
        self.inflight.died(self.generation)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl InFlight {
    pub fn new() -> InFlight {
        InFlight::default()
    }

    /// Counts one request on `generation` until the guard drops.
    pub fn enter(&self, generation: u64) -> InFlightGuard {
        self.counts
            .send_modify(|m| *m.entry(generation).or_insert(0) += 1);
        InFlightGuard {
            inflight: self.clone(),
            generation,
        }
    }

    /// The backend of `generation` is gone: freezes how many requests were in flight on it
    /// (the first call for a generation wins) and returns that number.
    pub fn died(&self, generation: u64) -> usize {
        let now = self.count(generation);
        let mut frozen = now;
        self.deaths.send_modify(|m| {
            frozen = m
                .entry(generation)
                .or_insert(Death {
                    in_flight: now,
                    crashed: None,
                })
                .in_flight;
            while m.len() > DEATHS_KEPT {
                m.pop_first();
            }
        });
        frozen
    }

    /// The lifecycle saw the backend of `generation` exit, by a crash of its own or not.
    /// Returns the requests in flight at its death.
    pub fn exited(&self, generation: u64, crashed: bool) -> usize {
        let n = self.died(generation);
        self.deaths.send_modify(|m| {
            if let Some(d) = m.get_mut(&generation) {
                d.crashed = Some(crashed);
            }
        });
        n
    }

    /// Waits (up to `deadline`) for the lifecycle's word on how the backend of `generation`
    /// ended: `Some(true)` when it crashed by itself, `None` when no word came.
    pub async fn crashed(&self, generation: u64, deadline: Instant) -> Option<bool> {
        let mut rx = self.deaths.subscribe();
        let said = |m: &BTreeMap<u64, Death>| m.get(&generation).and_then(|d| d.crashed);
        let _ = tokio::time::timeout_at(deadline, rx.wait_for(|m| said(m).is_some())).await;
        let word = said(&self.deaths.borrow());
        word
    }

    /// Requests on `generation` now.
    pub fn count(&self, generation: u64) -> usize {
        self.counts.borrow().get(&generation).copied().unwrap_or(0)
    }

    /// Requests on every generation now.
    pub fn total(&self) -> usize {
        self.counts.borrow().values().sum()
    }

    /// Waits until `generation` (every generation with `None`) has no request in flight, up
    /// to `deadline`. Returns how many were still in flight then (0 = drained).
    pub async fn drained(&self, generation: Option<u64>, deadline: Instant) -> usize {
        let left = |m: &BTreeMap<u64, usize>| match generation {
            Some(g) => m.get(&g).copied().unwrap_or(0),
            None => m.values().sum(),
        };
        let mut rx = self.counts.subscribe();
        let _ = tokio::time::timeout_at(deadline, rx.wait_for(|m| left(m) == 0)).await;
        let n = left(&self.counts.borrow());
        n
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let generation = self.generation;
        self.inflight.counts.send_modify(|m| {
            if let Some(n) = m.get_mut(&generation) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&generation);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn counts_per_generation_and_waits_for_a_drain() {
        let f = InFlight::new();
        let a = f.enter(1);
        let b = f.enter(1);
        let c = f.enter(2);
        assert_eq!((f.count(1), f.count(2), f.total()), (2, 1, 3));
        drop(a);
        let waiter = {
            let f = f.clone();
            tokio::spawn(async move {
                f.drained(Some(1), Instant::now() + Duration::from_secs(5))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        drop(b);
        assert_eq!(waiter.await.unwrap(), 0);
        // Generation 2 is still busy; a deadline ends the wait with what is left.
        let started = Instant::now();
        let left = f.drained(None, started + Duration::from_secs(3)).await;
        assert_eq!(left, 1);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        drop(c);
        assert_eq!(f.total(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_death_freezes_the_requests_in_flight_once() {
        let f = InFlight::new();
        let a = f.enter(3);
        let b = f.enter(3);
        // The first to notice freezes the count; a bystander that leaves later changes nothing.
        assert_eq!(a.died(), 2);
        drop(b);
        assert_eq!(a.died(), 2);
        let word = {
            let f = f.clone();
            tokio::spawn(async move { f.crashed(3, Instant::now() + Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(f.exited(3, true), 2);
        assert_eq!(word.await.unwrap(), Some(true));
        // No word from the lifecycle: none after the deadline.
        let _c = f.enter(4);
        assert_eq!(f.died(4), 1);
        assert_eq!(
            f.crashed(4, Instant::now() + Duration::from_secs(1)).await,
            None
        );
        // Only the newest deaths are kept.
        for g in 10..40 {
            f.exited(g, false);
        }
        assert_eq!(f.crashed(3, Instant::now()).await, None);
        assert_eq!(f.crashed(39, Instant::now()).await, Some(false));
        drop(a);
    }
}
