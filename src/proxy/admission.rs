//! Admission: at most `slots` requests in flight to the backend, a bounded FIFO queue behind
//! them with a wait timeout, and 429 beyond that.

use super::error::ApiError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue_len: usize,
}

/// Decrements the waiting count however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);
impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    pub fn new(slots: usize, queue_len: usize) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            waiting: AtomicUsize::new(0),
            queue_len,
        }
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Takes a slot, waiting in FIFO order until `deadline`; 429 when the queue is full or
    /// the wait runs out.
    pub async fn admit(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(p) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue_len {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(ApiError::queue_full());
        }
        let _waiting = Waiting(&self.waiting);
        let started = Instant::now();
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
