//! What the requests sent to a backend heard back, for the liveness watchdog
//! (`supervisor::liveness`): since when each has been waiting for a byte, and how many answers
//! in a row were server errors.

use super::Requests;
use std::collections::HashMap;
use tokio::time::Instant;

/// The requests sent and not finished, and the server errors in a row, per generation.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Ticket id -> its generation and the time of its last byte (or of sending, before the
    /// first).
    outstanding: HashMap<u64, (u64, Instant)>,
    /// Server errors in a row, per generation (reset by any other answer).
    failures: HashMap<u64, u32>,
}

impl Progress {
    pub(super) fn sent(&mut self, id: u64, generation: u64) {
        self.outstanding.insert(id, (generation, Instant::now()));
    }

    pub(super) fn heard(&mut self, id: u64) {
        if let Some(entry) = self.outstanding.get_mut(&id) {
            entry.1 = Instant::now();
        }
    }

    pub(super) fn answered(&mut self, generation: u64, status: u16) {
        let failures = self.failures.entry(generation).or_insert(0);
        if status >= 500 && status != 503 {
            *failures += 1;
        } else {
            *failures = 0;
        }
    }

    pub(super) fn forget_ticket(&mut self, id: u64) {
        self.outstanding.remove(&id);
    }
}

impl Requests {
    /// Since when the backend of `generation` has been silent on a request sent to it: the
    /// oldest last-byte time among them (`None` when none is outstanding).
    pub(crate) fn silent_since(&self, generation: u64) -> Option<Instant> {
        self.progress()
            .outstanding
            .values()
            .filter(|(g, _)| *g == generation)
            .map(|(_, t)| *t)
            .min()
    }

    /// Server errors in a row from the backend of `generation`.
    pub(crate) fn failures(&self, generation: u64) -> u32 {
        self.progress()
            .failures
            .get(&generation)
            .copied()
            .unwrap_or(0)
    }

    /// Forgets what a finished launch's requests heard (its tickets still count until they end).
    pub(crate) fn forget(&self, generation: u64) {
        let mut progress = self.progress();
        progress.outstanding.retain(|_, (g, _)| *g != generation);
        progress.failures.remove(&generation);
    }
}
