//! API keys by scope, enforced by one layer per route group before any extractor runs (so an
//! unauthenticated request gets 401 before its body is read), and a token bucket per key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tongban_features::io::fnv1a;

use super::problem::ApiError;
use crate::app::AppState;
use crate::config::ApiKeys;

/// What a key may do; the operator key holds every scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Portal,
    Ingest,
    Operator,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Portal => "portal",
            Scope::Ingest => "ingest",
            Scope::Operator => "operator",
        }
    }
}

/// Compares in time independent of where the strings differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff));
    }
    diff == 0
}

/// The scopes a presented key holds.
fn scopes(keys: &ApiKeys, key: &str) -> Vec<Scope> {
    let has = |list: &[String]| list.iter().fold(false, |acc, k| acc | ct_eq(k.as_bytes(), key.as_bytes()));
    if has(&keys.operator) {
        return vec![Scope::Portal, Scope::Ingest, Scope::Operator];
    }
    let mut out = Vec::new();
    if has(&keys.portal) {
        out.push(Scope::Portal);
    }
    if has(&keys.ingest) {
        out.push(Scope::Ingest);
    }
    out
}

/// True when `key` is one of the operator keys (the console's log-in).
pub fn is_operator_key(keys: &ApiKeys, key: &str) -> bool {
    scopes(keys, key).contains(&Scope::Operator)
}

/// Token buckets per API key (by a hash of the key, never the key itself).
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<u64, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes a token from `key`'s bucket: `rate` tokens a second, at most `rate` stored; 0 is
    /// no limit.
    fn take(&self, key: &str, rate: u32) -> Result<(), ApiError> {
        let rate = f64::from(rate);
        if rate == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("no panics while holding the lock");
        if buckets.len() > 10_000 {
            // Only configured keys reach here, so this bounds memory against a misconfiguration.
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs() < 60);
        }
        let (tokens, at) = buckets.entry(fnv1a(key.as_bytes())).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens < 1.0 {
            return Err(ApiError::rate_limited());
        }
        *tokens -= 1.0;
        Ok(())
    }
}

/// Checks the `x-api-key` header for `scope`, then the key's rate.
pub fn authorize(state: &AppState, headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
    let rate = state.settings.rate_per_key;
    if state.settings.keys.is_open() {
        // Without keys, one bucket for everyone: a client cannot mint itself new buckets.
        return state.limiter.take("", rate);
    }
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).ok_or_else(ApiError::unauthorized)?;
    let held = scopes(&state.settings.keys, key);
    if held.is_empty() {
        Err(ApiError::unauthorized())
    } else if held.contains(&scope) {
        state.limiter.take(key, rate)
    } else {
        Err(ApiError::forbidden())
    }
}

async fn require(state: &AppState, scope: Scope, req: Request, next: Next) -> Response {
    match authorize(state, req.headers(), scope) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The layer of the portal routes.
pub async fn portal(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    require(&state, Scope::Portal, req, next).await
}

/// The layer of the ingest routes.
pub async fn ingest(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    require(&state, Scope::Ingest, req, next).await
}

/// The layer of the operator routes.
pub async fn operator(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    require(&state, Scope::Operator, req, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole_strings_and_debug_never_prints_them() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret2"));
        assert!(!ct_eq(b"", b"x"));
        let keys = ApiKeys { portal: vec!["p-key".into()], ingest: vec![], operator: vec!["o-key".into()] };
        assert_eq!(scopes(&keys, "p-key"), vec![Scope::Portal]);
        assert_eq!(scopes(&keys, "o-key").len(), 3);
        assert!(scopes(&keys, "nope").is_empty());
        let dbg = format!("{keys:?}");
        assert!(!dbg.contains("p-key") && !dbg.contains("o-key"), "{dbg}");
    }

    #[test]
    fn a_bucket_holds_one_seconds_worth() {
        let l = RateLimiter::default();
        assert!(l.take("k", 2).is_ok() && l.take("k", 2).is_ok());
        assert_eq!(l.take("k", 2).unwrap_err().code, super::super::problem::ProblemCode::RateLimited);
        assert!(l.take("other", 2).is_ok(), "buckets are per key");
        assert!((0..100).all(|_| l.take("k", 0).is_ok()), "0 is no limit");
    }
}
