//! The middleware around every request: request ids, the deadline of non-streaming requests,
//! one structured log line, and the metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;
use crate::http::metrics::BUCKETS;
use crate::http::state::AppState;

/// Deadline of a non-streaming request.
pub(crate) const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The method as a metrics and log label: one of the standard methods, or `other` (so made-up
/// methods cannot grow `/metrics`).
fn method_label(m: &axum::http::Method) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"];
    KNOWN.iter().find(|k| **k == m.as_str()).copied().unwrap_or("other")
}

/// Request ids, one structured log line per request, and the metrics.
pub(crate) async fn observe(st: Arc<AppState>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let start = std::time::Instant::now();
    let method = method_label(req.method()).to_owned();
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("(unmatched)", |p| p.as_str()).to_owned();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            format!("{:08x}-{n:x}", std::process::id())
        });
    // Streams (uploads, downloads, exports) may legitimately take long; everything else gets a
    // deadline so a stuck request cannot hold a connection and a worker forever.
    // A batch deposit bounds its own body (idle timeout and 30 s, both 408).
    let streaming = route.ends_with("/content")
        || route.contains("/contents/")
        || route.ends_with("/export")
        || route.ends_with("/deposits");
    let mut resp = if streaming {
        next.run(req).await
    } else {
        match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request took too long; retry")
                .into_response(),
        }
    };
    let status = resp.status().as_u16();
    let secs = start.elapsed().as_secs_f64();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let class = (status / 100).saturating_sub(1).min(5) as usize;
    st.metrics.requests[class].fetch_add(1, Ordering::Relaxed);
    {
        let mut routes = st.metrics.routes.lock().unwrap_or_else(|p| p.into_inner());
        let rs = routes.entry((route.clone(), method.clone())).or_default();
        *rs.by_status.entry(status).or_default() += 1;
        if let Some(i) = BUCKETS.iter().position(|le| secs <= *le) {
            rs.buckets[i] += 1;
        }
        rs.count += 1;
        rs.sum += secs;
    }
    // No headers are logged: tokens never reach the log.
    tracing::info!(request_id = %request_id, method = %method, route = %route, status, ms = secs * 1e3, "request");
    resp
}
