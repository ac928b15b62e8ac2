//! The one guard a request holds while it is in flight: see [`Ticket`].

use super::Requests;
use crate::governor::ActivityGuard;
use std::sync::atomic::Ordering;
use tokio::sync::OwnedSemaphorePermit;

/// One request from its admission to the end of its answer's body. Dropping it (the body
/// ended, the client went away, the backend died) lets go of everything at once: the admission
/// slot, the governor's activity mark, its count on its backend's generation and its progress.
#[derive(Debug)]
pub(crate) struct Ticket {
    requests: Requests,
    id: u64,
    /// The backend generation it is counted on (`None` while it waits for a backend).
    generation: Option<u64>,
    /// Held for the ticket's life: a slot taken from admission frees when the request ends.
    _slot: OwnedSemaphorePermit,
    /// Held for the ticket's life: the governor throttles while any request runs.
    _busy: ActivityGuard,
}

impl Requests {
    /// Issues the ticket of a request that holds `slot` (its admission permit) and `busy` (its
    /// activity mark for the governor); both are let go with the ticket.
    pub(crate) fn issue(&self, slot: OwnedSemaphorePermit, busy: ActivityGuard) -> Ticket {
        self.inner.tally.send_modify(|t| t.issued += 1);
        Ticket {
            requests: self.clone(),
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            generation: None,
            _slot: slot,
            _busy: busy,
        }
    }
}

impl Ticket {
    /// Counts the request on the backend of `generation` (and no longer on the one before).
    /// Call it while the published backend is read, so a drain that starts after a switch
    /// sees the request. The request is not outstanding for the watchdog until [`Ticket::sent`].
    pub(crate) fn bind(&mut self, generation: u64) {
        self.requests.progress().forget_ticket(self.id);
        self.requests.rebind(self.generation, Some(generation));
        self.generation = Some(generation);
    }

    /// The backend generation the request is counted on.
    pub(crate) fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// The request was sent to its backend: the watchdog's silence clock starts now.
    pub(crate) fn sent(&self) {
        if let Some(g) = self.generation {
            self.requests.progress().sent(self.id, g);
        }
    }

    /// A byte (the response head or a body frame) came from the backend.
    pub(crate) fn progress(&self) {
        self.requests.progress().heard(self.id);
    }

    /// The backend answered with `status`: a server error counts towards its failures in a
    /// row, anything else resets them.
    pub(crate) fn answered(&self, status: u16) {
        if let Some(g) = self.generation {
            self.requests.progress().answered(g, status);
        }
    }

    /// This request's backend died with it in flight: how many requests were in flight on it
    /// (see [`Requests::died`]); 0 when it was bound to none.
    pub(crate) fn died(&self) -> usize {
        self.generation.map_or(0, |g| self.requests.died(g))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.requests.end(self.id, self.generation);
    }
}
