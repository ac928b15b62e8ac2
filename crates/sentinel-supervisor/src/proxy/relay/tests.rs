use super::*;
use crate::governor::Activity;
use crate::requests::Requests;
use http_body_util::BodyExt;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// A relay of `frames` holding a ticket bound to generation 1, with what the ticket holds.
fn relay_of(
    frames: Vec<Result<Frame<Bytes>, hyper::Error>>,
) -> (
    Relay<impl http_body::Body<Data = Bytes, Error = hyper::Error> + Unpin>,
    Requests,
    Activity,
    Arc<Semaphore>,
) {
    let slots = Arc::new(Semaphore::new(1));
    let activity = Activity::new();
    let requests = Requests::default();
    let slot = Arc::clone(&slots).try_acquire_owned().unwrap();
    let mut ticket = requests.issue(slot, activity.begin());
    ticket.bind(1);
    ticket.sent();
    let relay = Relay {
        inner: http_body_util::StreamBody::new(futures_util::stream::iter(frames)),
        sse: true,
        ticket: Some(ticket),
        backend_pid: 0,
        poison: None,
        timed: None,
    };
    (relay, requests, activity, slots)
}

#[tokio::test(start_paused = true)]
async fn a_client_gone_mid_stream_lets_go_of_the_ticket() {
    let frames = (0..3)
        .map(|i| Ok(Frame::data(Bytes::from(format!("data: {i}\n\n")))))
        .collect();
    let (mut relay, requests, activity, slots) = relay_of(frames);
    let first = relay.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: 0\n\n");
    assert_eq!((requests.total(), requests.count(1)), (1, 1));
    assert_eq!(requests.silent_since(1), Some(Instant::now()));
    drop(relay);
    assert_eq!((requests.total(), requests.count(1)), (0, 0));
    assert_eq!(requests.silent_since(1), None);
    assert_eq!(activity.in_flight(), 0);
    assert_eq!(slots.available_permits(), 1);
}

#[test]
fn error_event_is_one_sse_event_with_openai_shape() {
    let e = sse_error_event("connection reset");
    let s = std::str::from_utf8(&e).unwrap();
    assert!(s.starts_with("data: {"));
    assert!(s.ends_with("\n\n"));
    let v: serde_json::Value = serde_json::from_str(s.trim_start_matches("data: ").trim()).unwrap();
    assert_eq!(v["error"]["type"], "server_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("connection reset"));
}

proptest::proptest! {
    /// However the backend's stream is cut into frames, the client gets the same bytes in
    /// the same order, and the ticket (slot, activity, generation count) is let go at the end.
    #[test]
    fn relay_passes_any_chunking_through_unchanged(
        events in proptest::collection::vec("[ -~é🙂]{0,20}", 0..10),
        cuts in proptest::collection::vec(0usize..600, 0..16),
    ) {
        let stream: Vec<u8> = events
            .iter()
            .flat_map(|e| format!("data: {e}\n\n").into_bytes())
            .collect();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut frames = Vec::new();
        let mut at = 0;
        for c in cuts.into_iter().chain(std::iter::once(stream.len())) {
            frames.push(Ok::<_, hyper::Error>(Frame::data(Bytes::copy_from_slice(&stream[at..c]))));
            at = c;
        }
        let (relay, requests, activity, slots) = relay_of(frames);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let out = rt.block_on(relay.collect()).unwrap().to_bytes();
        proptest::prop_assert_eq!(&out[..], &stream[..]);
        proptest::prop_assert_eq!(slots.available_permits(), 1);
        proptest::prop_assert_eq!(activity.in_flight(), 0);
        proptest::prop_assert_eq!(requests.total(), 0);
        proptest::prop_assert_eq!(requests.count(1), 0);
    }
}
