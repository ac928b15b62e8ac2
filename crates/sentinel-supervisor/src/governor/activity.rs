//! The activity signal: one in-flight counter shared by the proxy (which admits requests), the
//! supervisor (which counts a model load as activity) and the governor (which throttles only
//! while the counter is above zero and rests otherwise).

use std::sync::Arc;
use tokio::sync::watch;

/// A cheap, cloneable handle on the in-flight counter.
#[derive(Clone, Debug)]
pub struct Activity {
    tx: Arc<watch::Sender<usize>>,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(0);
        Self { tx: Arc::new(tx) }
    }

    /// Marks one unit of work as started; it ends when the guard is dropped.
    pub fn begin(&self) -> ActivityGuard {
        self.tx.send_modify(|n| *n += 1);
        ActivityGuard {
            tx: Arc::clone(&self.tx),
        }
    }

    /// How many units of work are in flight now.
    pub fn in_flight(&self) -> usize {
        *self.tx.borrow()
    }

    /// A receiver that wakes whenever the counter changes.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.tx.subscribe()
    }
}

/// Ends one unit of work on drop.
#[derive(Debug)]
pub struct ActivityGuard {
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
