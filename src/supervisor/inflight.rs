//! Requests in flight per backend generation: the proxy holds an [`InFlightGuard`] for the
//! backend it forwards to (taken while it reads the published backend, so a switch can never
//! miss it), and the lifecycle waits for a generation's count to reach zero before it stops
//! that backend (after a reload, or on shutdown), up to a drain deadline.

use std::collections::BTreeMap;
use tokio::sync::watch;
use tokio::time::Instant;

/// The shared counts (cheap to clone).
#[derive(Debug, Clone)]
pub struct InFlight {
    counts: watch::Sender<BTreeMap<u64, usize>>,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            counts: watch::Sender::new(BTreeMap::new()),
        }
    }
}

/// One request on one backend generation; dropping it ends it.
#[derive(Debug)]
pub struct InFlightGuard {
    counts: watch::Sender<BTreeMap<u64, usize>>,
    generation: u64,
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
            counts: self.counts.clone(),
            generation,
        }
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
        self.counts.send_modify(|m| {
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
}
