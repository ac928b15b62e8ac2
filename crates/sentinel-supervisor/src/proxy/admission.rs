//! Admission: at most `slots` requests in flight to the backend, a bounded FIFO queue behind
//! them with a wait timeout, and 429 beyond that. A reload resizes both while requests run.
//! While paused (on battery with `cpus_on_battery = 0`, see [`crate::situation`]) every new
//! request waits in the queue; those already admitted finish.

use super::error::ApiError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Admission {
    slots: Arc<Semaphore>,
    /// How many permits the semaphore is meant to hold (held ones included).
    size: std::sync::Mutex<usize>,
    waiting: AtomicUsize,
    queue_len: AtomicUsize,
    /// True while new requests must wait (the situation's pause).
    paused: tokio::sync::watch::Sender<bool>,
}

/// Decrements the waiting count however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);
impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    pub(crate) fn new(slots: usize, queue_len: usize) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            size: std::sync::Mutex::new(slots.max(1)),
            waiting: AtomicUsize::new(0),
            queue_len: AtomicUsize::new(queue_len),
            paused: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Changes the number of slots and the queue's length. Fewer slots take effect as the
    /// requests holding the extra ones finish (none is cut). Call it within the runtime.
    pub(crate) fn resize(&self, slots: usize, queue_len: usize) {
        self.queue_len.store(queue_len, Ordering::Relaxed);
        let slots = slots.max(1);
        let mut size = self
            .size
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slots > *size {
            self.slots.add_permits(slots - *size);
        } else if slots < *size {
            let excess = *size - slots;
            let left = excess - self.slots.forget_permits(excess);
            if left > 0 {
                // Held by requests now: retire them as they come back.
                let semaphore = Arc::clone(&self.slots);
                tokio::spawn(async move {
                    if let Ok(permits) = semaphore.acquire_many_owned(left as u32).await {
                        permits.forget();
                    }
                });
            }
        }
        *size = slots;
    }

    /// Holds new requests in the queue (`true`) or lets them through again.
    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused
            .send_if_modified(|p| std::mem::replace(p, paused) != paused);
    }

    /// Slots held now, and slots in all (for the spill decision's queue estimate).
    pub(crate) fn load(&self) -> (usize, usize) {
        let size = *self
            .size
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (size.saturating_sub(self.slots.available_permits()), size)
    }

    /// Requests waiting for a slot now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Takes a slot, waiting in FIFO order until `deadline`; 429 when the queue is full or
    /// the wait runs out.
    pub(crate) async fn admit(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, ApiError> {
        let mut paused = self.paused.subscribe();
        if !*paused.borrow_and_update() {
            if let Ok(p) = Arc::clone(&self.slots).try_acquire_owned() {
                return Ok(p);
            }
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue_len.load(Ordering::Relaxed) {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(ApiError::queue_full());
        }
        let _waiting = Waiting(&self.waiting);
        let started = Instant::now();
        if tokio::time::timeout_at(deadline, paused.wait_for(|p| !*p))
            .await
            .is_err()
        {
            return Err(ApiError::queue_timeout(started.elapsed()));
        }
        match tokio::time::timeout_at(deadline, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_closed)) => Err(ApiError::unavailable("the proxy is shutting down")),
            Err(_) => Err(ApiError::queue_timeout(started.elapsed())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn deadline_in(d: Duration) -> Instant {
        Instant::now() + d
    }

    #[tokio::test(start_paused = true)]
    async fn slots_queue_and_overflow() {
        let a = Admission::new(1, 1);
        let far = deadline_in(Duration::from_secs(60));
        let first = a.admit(far).await.unwrap();
        let a = Arc::new(a);
        let a2 = Arc::clone(&a);
        let queued = tokio::spawn(async move { a2.admit(far).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(a.waiting(), 1);
        // The queue (length 1) is full: the next one is refused at once.
        let err = a.admit(far).await.unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.code, "queue_full");
        drop(first);
        queued.await.unwrap().unwrap();
        assert_eq!(a.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_new_requests_in_the_queue_until_it_ends() {
        let a = Arc::new(Admission::new(1, 2));
        a.set_paused(true);
        let far = deadline_in(Duration::from_secs(60));
        let a2 = Arc::clone(&a);
        let held = tokio::spawn(async move { a2.admit(far).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(a.waiting(), 1);
        assert!(!held.is_finished());
        // A short deadline runs out while paused.
        let short = deadline_in(Duration::from_millis(100));
        assert_eq!(a.admit(short).await.unwrap_err().code, "queue_timeout");
        a.set_paused(false);
        held.await.unwrap().unwrap();
        assert_eq!(a.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn resizing_adds_slots_at_once_and_removes_them_as_they_free_up() {
        let a = Admission::new(1, 0);
        let far = deadline_in(Duration::from_secs(60));
        let first = a.admit(far).await.unwrap();
        a.resize(2, 0);
        let second = a.admit(far).await.unwrap();
        assert_eq!(a.admit(far).await.unwrap_err().code, "queue_full");
        // Back to one slot while both are held: nothing is cut, and once both are back only
        // one can be taken.
        a.resize(1, 0);
        drop(first);
        drop(second);
        tokio::task::yield_now().await;
        let only = a.admit(far).await.unwrap();
        assert_eq!(a.admit(far).await.unwrap_err().code, "queue_full");
        drop(only);
        // A longer queue lets a request wait.
        a.resize(1, 1);
        let _held = a.admit(far).await.unwrap();
        let short = deadline_in(Duration::from_millis(100));
        assert_eq!(a.admit(short).await.unwrap_err().code, "queue_timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_times_out_with_429() {
        let a = Admission::new(1, 10);
        let _held = a.admit(deadline_in(Duration::from_secs(1))).await.unwrap();
        let err = a
            .admit(deadline_in(Duration::from_secs(2)))
            .await
            .unwrap_err();
        assert_eq!(err.code, "queue_timeout");
        assert!(err.retry_after.is_some());
        assert_eq!(a.waiting(), 0);
    }
}
