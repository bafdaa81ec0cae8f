//! The counters behind `/metrics`.

use std::sync::atomic::AtomicU64;

/// Upper bounds (seconds) of the latency histogram buckets.
pub(crate) const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Per route and method: answers by status, and a latency histogram.
#[derive(Debug, Default)]
pub(crate) struct RouteStats {
    pub(crate) by_status: std::collections::BTreeMap<u16, u64>,
    pub(crate) buckets: [u64; BUCKETS.len()],
    pub(crate) count: u64,
    pub(crate) sum: f64,
}

/// Prometheus counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) routes: std::sync::Mutex<std::collections::BTreeMap<(String, String), RouteStats>>,
    /// Requests answered, by status class.
    pub requests: [AtomicU64; 6],
    /// 401 answers.
    pub unauthenticated: AtomicU64,
    /// Content bytes received.
    pub bytes_in: AtomicU64,
    /// Content bytes sent.
    pub bytes_out: AtomicU64,
}
