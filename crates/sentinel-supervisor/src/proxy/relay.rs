//! The backend's answer on its way to the client: frames pass through as they arrive, each
//! one progress on the request's ticket; the ticket (slot, activity mark, count on its
//! backend's generation, which keeps that backend alive through a drain) is let go when the
//! body ends or is dropped; a backend failure in the middle of an SSE stream becomes a final
//! error event and a clean end. An answer that ended is timed from admission for the spill
//! estimate (`crate::upstream::spill`).

use super::error::ApiError;
use super::outbound::{is_sse, strip_hop_by_hop};
use super::poison::{self, Fingerprint};
use super::retry::CRASH_WORD_WAIT;
use super::AppState;
use crate::requests::Ticket;
use crate::upstream::spill::Spill;
use axum::body::Body;
use axum::http::{header, HeaderValue, Response};
use bytes::Bytes;
use http_body::Frame;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;

/// The client's response to the backend's `answer`, streaming its body while it holds `ticket`.
/// `poison` is where to remember the request if the backend crashes with it alone in flight
/// after the head was sent (llama-server sends a stream's head before it works); `timed`, the
/// service times its end is recorded in, and when it was admitted.
pub(super) fn respond(
    answer: Response<hyper::body::Incoming>,
    ticket: Ticket,
    backend_pid: i32,
    poison: Option<(AppState, Fingerprint)>,
    timed: (Arc<Spill>, Instant),
) -> Response<Body> {
    let (mut head, incoming) = answer.into_parts();
    let headers = &mut head.headers;
    strip_hop_by_hop(headers);
    let sse = is_sse(headers);
    if sse {
        headers.remove(header::CONTENT_LENGTH);
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    let relay = Relay {
        inner: incoming,
        sse,
        ticket: Some(ticket),
        backend_pid,
        poison,
        timed: Some(timed),
    };
    Response::from_parts(head, Body::new(relay))
}

/// The backend's response body with the request's ticket.
struct Relay<B: http_body::Body = hyper::body::Incoming> {
    inner: B,
    sse: bool,
    /// Held until the body ends (`None` after).
    ticket: Option<Ticket>,
    /// The backend's process: when it is gone as the stream fails, the death is noted with
    /// this request in flight (`Requests::died`) before its ticket goes.
    backend_pid: i32,
    poison: Option<(AppState, Fingerprint)>,
    /// Where the answer's service time goes once it ended (`None` after, or untimed).
    timed: Option<(Arc<Spill>, Instant)>,
}

impl<B: http_body::Body> Drop for Relay<B> {
    fn drop(&mut self) {
        // Ended, failed or read to the end: hyper stops polling a body that says it has ended.
        if self.ticket.is_none() || self.inner.is_end_stream() {
            if let Some((spill, admitted)) = self.timed.take() {
                spill.service.record(admitted.elapsed());
            }
        }
    }
}

impl<B: http_body::Body> Relay<B> {
    /// The stream failed: when the backend is gone, its death is noted with this request in
    /// flight, and a request alone on a backend that crashed is remembered as poison.
    fn failed(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let alive = matches!(crate::meter::process_state(self.backend_pid), Some(s) if s != 'Z' && s != 'X');
        if alive {
            return;
        }
        let at_death = ticket.died();
        let Some(generation) = ticket.generation() else {
            return;
        };
        if let Some((state, fp)) = self.poison.take().filter(|_| at_death <= 1) {
            tokio::spawn(async move {
                let waited = Instant::now() + CRASH_WORD_WAIT;
                if state.inflight.crashed(generation, waited).await == Some(true) {
                    poison::remember_crash(&state, generation, Some(&fp), at_death);
                }
            });
        }
    }
}

impl<B> http_body::Body for Relay<B>
where
    B: http_body::Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(ticket) = &this.ticket else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                ticket.progress();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.ticket = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed();
                if this.sse {
                    tracing::warn!(error = %e, "backend failed mid-stream; sending an error event");
                    Poll::Ready(Some(Ok(Frame::data(sse_error_event(&e.to_string())))))
                } else {
                    Poll::Ready(Some(Err(e)))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ticket.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The final event a streaming client gets when the backend dies mid-stream.
fn sse_error_event(detail: &str) -> Bytes {
    ApiError::bad_gateway(format!("the model backend failed mid-stream: {detail}")).sse_event()
}

#[cfg(test)]
mod tests;
