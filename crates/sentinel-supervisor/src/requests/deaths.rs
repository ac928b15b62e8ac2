//! Backend deaths as far as requests go: how many requests were in flight on a backend when it
//! died (frozen by whoever notices first, the lifecycle or a request whose answer never came:
//! every such request still holds its ticket then) and the lifecycle's word on whether it
//! crashed by itself. The proxy reads it to tell a poison request (the only one in flight at a
//! crash) from bystanders, the restart policy to keep client-caused crashes out of the
//! crash-loop breaker.

use super::Requests;
use std::collections::BTreeMap;
use tokio::time::Instant;

/// One backend's death, as far as requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Death {
    /// Requests in flight on it when it died.
    pub in_flight: usize,
    /// The lifecycle's word: it crashed by itself (a fault signal), or not (killed, exited);
    /// `None` until the lifecycle has seen the exit.
    pub crashed: Option<bool>,
}

/// Deaths remembered (the newest generations).
const DEATHS_KEPT: usize = 16;

impl Requests {
    /// The backend of `generation` is gone: freezes how many requests were in flight on it
    /// (the first call for a generation wins) and returns that number.
    pub(crate) fn died(&self, generation: u64) -> usize {
        let now = self.count(generation);
        let mut frozen = now;
        self.inner.deaths.send_modify(|m| {
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
    pub(crate) fn exited(&self, generation: u64, crashed: bool) -> usize {
        let n = self.died(generation);
        self.inner.deaths.send_modify(|m| {
            if let Some(d) = m.get_mut(&generation) {
                d.crashed = Some(crashed);
            }
        });
        n
    }

    /// Waits (up to `deadline`) for the lifecycle's word on how the backend of `generation`
    /// ended: `Some(true)` when it crashed by itself, `None` when no word came.
    pub(crate) async fn crashed(&self, generation: u64, deadline: Instant) -> Option<bool> {
        let mut rx = self.inner.deaths.subscribe();
        let said = |m: &BTreeMap<u64, Death>| m.get(&generation).and_then(|d| d.crashed);
        let _ = tokio::time::timeout_at(deadline, rx.wait_for(|m| said(m).is_some())).await;
        let word = said(&self.inner.deaths.borrow());
        word
    }
}
