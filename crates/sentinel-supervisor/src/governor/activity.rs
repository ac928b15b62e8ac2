//! The activity signal: what the governor counts as work, throttling only while it is above
//! zero and resting otherwise. It is wider than the requests in flight on purpose: each
//! request's ticket (`crate::requests::Ticket`) holds one mark, and a model load or a warm-up
//! (the lifecycle), a build step (`backend::runner`) or a limited program's CPU use (`limit`)
//! takes its own. The requests alone are counted by `crate::requests`, never here.

use std::sync::Arc;
use tokio::sync::watch;

/// A cheap, cloneable handle on the in-flight counter.
#[derive(Clone, Debug, Default)]
pub(crate) struct Activity {
    tx: Arc<watch::Sender<usize>>,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Marks one unit of work (a request's ticket, a model load, a warm-up) as started; it ends
    /// when the guard is dropped.
    pub(crate) fn begin(&self) -> ActivityGuard {
        self.tx.send_modify(|n| *n += 1);
        ActivityGuard {
            tx: Arc::clone(&self.tx),
        }
    }

    /// How many units of work are in flight now (`/status` `busy`).
    pub(crate) fn in_flight(&self) -> usize {
        *self.tx.borrow()
    }

    /// A receiver that wakes whenever the counter changes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<usize> {
        self.tx.subscribe()
    }
}

/// Ends one unit of work on drop.
#[derive(Debug)]
pub(crate) struct ActivityGuard {
    tx: Arc<watch::Sender<usize>>,
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.tx.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_and_notifies() {
        let activity = Activity::new();
        let mut rx = activity.subscribe();
        assert_eq!(activity.in_flight(), 0);
        let a = activity.begin();
        let b = activity.begin();
        assert_eq!(activity.in_flight(), 2);
        rx.changed().await.unwrap();
        drop(a);
        drop(b);
        assert_eq!(activity.in_flight(), 0);
        assert_eq!(*rx.borrow_and_update(), 0);
    }
}
