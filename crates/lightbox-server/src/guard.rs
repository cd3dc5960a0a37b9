//! What every request passes: draining (503), bearer tokens (401), the per-client rate limit
//! (429) and the access log, which names the route pattern, never the path's UIDs or the query
//! (patient names and IDs are PHI).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::api::error;

/// A token bucket per client address.
pub(crate) struct RateLimiter {
    per_second: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        Self { per_second: f64::from(per_second.max(1)), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token for `ip`; false when its bucket is empty.
    fn allow(&self, ip: IpAddr) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let burst = self.per_second * 2.0;
        let now = Instant::now();
        if buckets.len() > 10_000 {
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs() < 60);
        }
        let (tokens, at) = buckets.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Paths anyone may read: a load balancer's health probe and the API's description.
fn open_path(path: &str) -> bool {
    path == "/health" || path == "/openapi.json"
}

/// Compares in time that does not depend on where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) async fn guard(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "(no route)".to_owned(), |p| p.as_str().to_owned());
    let path = request.uri().path().to_owned();
    let response = if state.draining.load(Ordering::SeqCst) && path != "/health" {
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "draining", "the server is shutting down; try another node");
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    } else if !open_path(&path) && !state.config.token_hashes.is_empty() && !authorised(&state, &request) {
        let mut r = error(StatusCode::UNAUTHORIZED, "unauthorised", "a valid bearer token is needed");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    } else if !state.limiter.allow(peer.ip()) {
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests from this client");
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    } else {
        next.run(request).await
    };
    tracing::info!(
        target: "lightbox::access",
        method = %method,
        route = %route,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
    );
    response.into_response()
}

fn authorised(state: &AppState, request: &Request) -> bool {
    let Some(token) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let hash = crate::token_hash(token.trim());
    state.config.token_hashes.iter().any(|h| same(&h.to_ascii_lowercase(), &hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_refills() {
        let limiter = RateLimiter::new(5);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let allowed = (0..20).filter(|_| limiter.allow(ip)).count();
        assert_eq!(allowed, 10, "a burst of twice the rate");
        std::thread::sleep(std::time::Duration::from_millis(450));
        assert!(limiter.allow(ip), "tokens come back with time");
        assert!(limiter.allow([10, 0, 0, 1].into()), "another client has its own bucket");
    }

    #[test]
    fn token_comparison_needs_the_whole_token() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
