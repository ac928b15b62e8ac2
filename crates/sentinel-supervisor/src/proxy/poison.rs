//! Poison requests: a request that a backend died while serving, alone or at a second death,
//! is not sent to another backend (one such request crashed two backends in 3 s before this
//! existed). Its [`Fingerprint`] (route, the names and sizes of its fields, a hash of the body
//! in canonical JSON) is kept for `proxy.poison_ttl`, and an identical request is refused with
//! 400 before it reaches a backend, as osquery's watchdog bans a query that broke its worker.
//! Requests sent again after a crash with several in flight go one at a time, so the poison
//! among them is alone at the next crash. The log shows a fingerprint's route and fields,
//! never the content.

use super::error::ApiError;
use super::AppState;
use crate::supervisor::state::BackendInfo;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Fingerprints kept at most; the oldest go first beyond it.
const MAX_ENTRIES: usize = 4096;

/// What identifies a request without keeping its content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    pub route: &'static str,
    /// Field names (sorted) and the size of each value as compact JSON.
    pub fields: Vec<(String, usize)>,
    /// SHA-256 of the whole body as canonical JSON (keys sorted, no whitespace).
    pub hash: [u8; 32],
}

impl Fingerprint {
    /// The fingerprint of a body already parsed into `obj`, sent to `route`.
    pub(crate) fn of(route: &'static str, obj: &Map<String, Value>) -> Fingerprint {
        let mut fields: Vec<(String, usize)> = obj
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::to_vec(v).map_or(0, |b| b.len())))
            .collect();
        fields.sort();
        let mut hasher = Sha256::new();
        hasher.update(route.as_bytes());
        // `serde_json::Map` is ordered by key: the same object always serializes the same way.
        let canonical: Map<String, Value> = obj
            .iter()
            .map(|(k, v)| (k.clone(), canonicalize(v)))
            .collect();
        hasher.update(serde_json::to_vec(&Value::Object(canonical)).unwrap_or_default());
        Fingerprint {
            route,
            fields,
            hash: hasher.finalize().into(),
        }
    }

    /// `name(size), ...` for the log.
    pub(crate) fn describe_fields(&self) -> String {
        self.fields
            .iter()
            .map(|(k, n)| format!("{k}({n} B)"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A short id for the log (the first 8 bytes of the hash, hex).
    pub(crate) fn short(&self) -> String {
        hex::encode(&self.hash[..8])
    }
}

/// Objects nested anywhere with their keys in order, whatever serde_json's map does.
fn canonicalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut sorted: Vec<(&String, &Value)> = m.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                sorted
                    .into_iter()
                    .map(|(k, v)| (k.clone(), canonicalize(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(canonicalize).collect()),
        other => other.clone(),
    }
}

/// The fingerprints of requests that killed a backend, each until it expires.
#[derive(Debug, Default)]
pub(crate) struct PoisonList {
    entries: Mutex<HashMap<Fingerprint, Instant>>,
    /// Held by a request sent again after a crash it was in flight at, until its answer
    /// starts: suspects go one at a time, so the poison among them crashes the next backend
    /// alone and the bystanders are answered.
    suspects: tokio::sync::Mutex<()>,
}

impl PoisonList {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Fingerprint, Instant>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers `fp` for `ttl` from now.
    pub(crate) fn remember(&self, fp: &Fingerprint, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.lock();
        entries.retain(|_, until| *until > now);
        if entries.len() >= MAX_ENTRIES {
            if let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, u)| **u)
                .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(fp.clone(), now + ttl);
    }

    /// How long `fp` is still refused (`None`: not poisoned, or expired).
    pub(crate) fn refused_for(&self, fp: &Fingerprint) -> Option<Duration> {
        let now = Instant::now();
        let mut entries = self.lock();
        match entries.get(fp) {
            Some(until) if *until > now => Some(*until - now),
            Some(_) => {
                entries.remove(fp);
                None
            }
            None => None,
        }
    }

    /// Waits for the turn of a request sent again after a crash (see `suspects`).
    pub(crate) async fn suspect_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.suspects.lock().await
    }

    /// Fingerprints remembered now (expired ones included until the next write).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 400 before admission for a request identical to one a backend died serving.
pub(super) fn refuse(state: &AppState, fp: &Fingerprint) -> Result<(), ApiError> {
    let Some(left) = state.poison.refused_for(fp) else {
        return Ok(());
    };
    state.metrics.poison_refused();
    tracing::warn!(route = fp.route, fields = %fp.describe_fields(), fingerprint = %fp.short(), "refused: identical to a request a backend died serving");
    Err(ApiError::invalid_request(
        "poison_request",
        format!(
            "An identical request made the model backend die; it is refused for another {} (proxy.poison_ttl). Change the request, or ask the operator to look at the backend's crash in the log.",
            humantime::format_duration(Duration::from_secs(left.as_secs().max(1)))
        ),
    ))
}

/// Remembers the request the backend of `backend` died serving and answers it.
pub(super) fn poisoned(
    state: &AppState,
    backend: &BackendInfo,
    fp: Option<&Fingerprint>,
    at_death: usize,
) -> ApiError {
    let ttl = remember_crash(state, backend.generation, fp, at_death);
    let why = if at_death <= 1 {
        "it was the only request in flight"
    } else {
        "it was in flight at two crashes"
    };
    ApiError::invalid_request(
        "backend_died_on_request",
        format!(
            "The model backend crashed while serving this request ({why}); it is not sent again, and identical requests are refused for {} (proxy.poison_ttl).",
            humantime::format_duration(ttl)
        ),
    )
}

/// Counts and remembers a request the backend of `generation` crashed serving; returns for
/// how long it is refused.
pub(super) fn remember_crash(
    state: &AppState,
    generation: u64,
    fp: Option<&Fingerprint>,
    at_death: usize,
) -> Duration {
    let ttl = state.live().config.poison_ttl;
    state.metrics.request_poisoned();
    if let Some(fp) = fp {
        state.poison.remember(fp, ttl);
        tracing::error!(generation, route = fp.route, fields = %fp.describe_fields(), fingerprint = %fp.short(), in_flight = at_death, ttl = ?ttl, "the backend crashed while serving this request: not sent again; identical requests are refused");
    }
    ttl
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fp(v: Value) -> Fingerprint {
        Fingerprint::of("/v1/chat/completions", v.as_object().unwrap())
    }

    #[test]
    fn key_order_and_whitespace_do_not_change_a_fingerprint() {
        let a: Value =
            serde_json::from_str(r#"{"b": {"y": 1, "x": [2, {"q": 1, "p": 0}]}, "a": "s"}"#)
                .unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":"s","b":{"x":[2,{"p":0,"q":1}],"y":1}}"#).unwrap();
        assert_eq!(fp(a.clone()), fp(b));
        assert_ne!(
            fp(a),
            fp(json!({"a": "t", "b": {"y": 1, "x": [2, {"q": 1, "p": 0}]}}))
        );
        let f = fp(json!({"messages": [], "grammar": "root ::= x"}));
        assert_eq!(f.describe_fields(), "grammar(12 B), messages(2 B)");
        assert!(!f.describe_fields().contains("root"));
        assert_ne!(
            Fingerprint::of("/v1/completions", json!({"a": 1}).as_object().unwrap()),
            fp(json!({"a": 1}))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fingerprint_is_refused_until_it_expires() {
        let list = PoisonList::default();
        let f = fp(json!({"grammar": "x"}));
        assert_eq!(list.refused_for(&f), None);
        list.remember(&f, Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(list.refused_for(&f), Some(Duration::from_secs(6)));
        assert_eq!(list.refused_for(&fp(json!({"grammar": "y"}))), None);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(list.refused_for(&f), None);
        assert!(list.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_list_is_bounded_and_lets_the_oldest_go() {
        let list = PoisonList::default();
        let first = fp(json!({"n": 0}));
        list.remember(&first, Duration::from_secs(100));
        tokio::time::advance(Duration::from_millis(1)).await;
        for i in 1..=MAX_ENTRIES {
            list.remember(&fp(json!({ "n": i })), Duration::from_secs(100));
        }
        assert_eq!(list.len(), MAX_ENTRIES);
        assert_eq!(list.refused_for(&first), None);
    }
}
