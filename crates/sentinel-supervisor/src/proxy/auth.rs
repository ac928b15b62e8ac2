//! Optional API keys: `Authorization: Bearer KEY` or `x-api-key: KEY`, compared in constant
//! time.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Default)]
pub(crate) struct Keys(Vec<Vec<u8>>);

impl Keys {
    pub(crate) fn new(keys: Vec<String>) -> Keys {
        Keys(keys.into_iter().map(String::into_bytes).collect())
    }

    pub(crate) fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether the request carries an accepted key (always true when no key is configured).
    pub(crate) fn allows(&self, headers: &HeaderMap) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        [bearer, x_api_key]
            .into_iter()
            .flatten()
            .any(|given| self.matches(given.as_bytes()))
    }

    fn matches(&self, given: &[u8]) -> bool {
        // Check every key so timing does not reveal which one was close.
        self.0.iter().fold(0u8, |acc, k| {
            acc | u8::from(bool::from(k.as_slice().ct_eq(given)))
        }) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn accepts_bearer_and_x_api_key() {
        let keys = Keys::new(vec!["k1".into(), "secret-2".into()]);
        assert!(keys.required());
        assert!(keys.allows(&headers(&[("authorization", "Bearer k1")])));
        assert!(keys.allows(&headers(&[("authorization", "bearer   secret-2")])));
        assert!(keys.allows(&headers(&[("x-api-key", "secret-2")])));
        assert!(!keys.allows(&headers(&[("authorization", "Bearer k2")])));
        assert!(!keys.allows(&headers(&[("authorization", "k1")])));
        assert!(!keys.allows(&headers(&[("x-api-key", "secret")])));
        assert!(!keys.allows(&HeaderMap::new()));
    }

    #[test]
    fn no_keys_means_open() {
        assert!(Keys::default().allows(&HeaderMap::new()));
    }
}
