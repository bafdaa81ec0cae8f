//! Bounds on streams (SPEC.md §20): per-principal and total stream slots, and the memory budget
//! of batch-deposit bodies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use vault::access::{Caller, Principal};

use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Bounds on streams, so stalled or unread transfers cannot exhaust the server (SPEC.md §20).
#[derive(Debug)]
pub struct Limits {
    /// Most uploads (content `PUT`s and batch deposits) one principal may have in flight.
    pub uploads_per_principal: usize,
    /// Most downloads (content `GET`s and exports) one principal may have in flight: each holds
    /// a reader thread until its client has taken the last byte (or the idle timeout passes).
    pub downloads_per_principal: usize,
    /// Most streams (uploads and downloads) of all callers together, so that the blocking
    /// threads they hold never starve other calls (below [`BLOCKING_THREADS`]).
    pub streams_total: usize,
    /// A request body that sends no byte for this long, or a response nobody reads for this
    /// long, is aborted.
    pub idle: std::time::Duration,
    /// Streams in flight.
    in_flight: std::sync::Mutex<InFlight>,
    /// Bytes of batch-deposit bodies held in memory, all callers together.
    batch_bytes: AtomicU64,
}

/// Most bytes of batch-deposit bodies the server holds at once, all callers together: 16
/// callers with 16 batches of 64 MiB each could otherwise pin 16 GiB.
const MAX_BATCH_BYTES_IN_FLIGHT: u64 = 256 << 20;

impl Limits {
    /// Limits with these bounds.
    pub fn new(
        uploads_per_principal: usize,
        downloads_per_principal: usize,
        streams_total: usize,
        idle: std::time::Duration,
    ) -> Self {
        Self {
            uploads_per_principal,
            downloads_per_principal,
            streams_total,
            idle,
            in_flight: Default::default(),
            batch_bytes: AtomicU64::new(0),
        }
    }

    /// Takes `n` more bytes of the batch budget for `held`, or refuses with 429 (nothing taken).
    pub(crate) fn take_batch_bytes(&self, held: &mut BatchBytes, n: u64) -> Result<(), ApiError> {
        let taken = self.batch_bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            cur.checked_add(n).filter(|t| *t <= MAX_BATCH_BYTES_IN_FLIGHT)
        });
        match taken {
            Ok(_) => {
                held.n += n;
                Ok(())
            }
            Err(_) => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "the server holds too many batch deposits at the moment; retry later",
            )),
        }
    }
}

/// Bytes of the batch budget one request holds, given back on drop (by whoever holds the
/// body's bytes last: the blocking task that stores them outlives a vanished client).
pub(crate) struct BatchBytes {
    pub(crate) st: Arc<AppState>,
    pub(crate) n: u64,
}

impl Drop for BatchBytes {
    fn drop(&mut self) {
        self.st.limits.batch_bytes.fetch_sub(self.n, Ordering::AcqRel);
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(16, 64, 384, std::time::Duration::from_secs(30))
    }
}

/// The server's blocking-thread pool: streams hold at most `--max-streams` of them (default
/// 384), the rest serve every other call.
pub const BLOCKING_THREADS: usize = 512;

/// Streams in flight: by kind and principal, and all together.
#[derive(Debug, Default)]
struct InFlight {
    by: std::collections::HashMap<(Stream, String), usize>,
    total: usize,
}

/// The kinds of stream a principal's in-flight count is kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Stream {
    /// Content `PUT`s and batch deposits.
    Upload,
    /// Content `GET`s and exports.
    Download,
}

/// One stream slot of a principal, given back on drop.
pub(crate) struct StreamSlot {
    st: Arc<AppState>,
    key: (Stream, String),
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.st.limits.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        m.total = m.total.saturating_sub(1);
        if let Some(n) = m.by.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.by.remove(&self.key);
            }
        }
    }
}

/// Takes a stream slot of `kind` for the caller, or 429 `too_many_requests` (nothing done).
pub(crate) fn stream_slot(st: &Arc<AppState>, caller: &Caller, kind: Stream) -> Result<StreamSlot, ApiError> {
    let who = match &caller.principal {
        Principal::Owner(o) => format!("owner:{o}"),
        Principal::Agency(a) => format!("agency:{a}"),
        Principal::Operator => "operator".to_owned(),
    };
    let (limit, what) = match kind {
        Stream::Upload => (st.limits.uploads_per_principal, "uploads"),
        Stream::Download => (st.limits.downloads_per_principal, "downloads"),
    };
    let key = (kind, who);
    let mut m = st.limits.in_flight.lock().unwrap_or_else(|p| p.into_inner());
    if m.total >= st.limits.streams_total {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "the server has too many uploads and downloads in flight; retry later",
        ));
    }
    let n = m.by.entry(key.clone()).or_default();
    if *n >= limit {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!("at most {limit} {what} at a time per caller; retry later"),
        ));
    }
    *n += 1;
    m.total += 1;
    drop(m);
    Ok(StreamSlot { st: st.clone(), key })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::state::sealed_state;

    #[test]
    fn review_batch_bodies_share_one_memory_budget() {
        let st = sealed_state();
        let limits = &st.limits;
        let mut a = BatchBytes { st: st.clone(), n: 0 };
        limits.take_batch_bytes(&mut a, MAX_BATCH_BYTES_IN_FLIGHT - 10).unwrap();
        {
            let mut b = BatchBytes { st: st.clone(), n: 0 };
            let e = limits.take_batch_bytes(&mut b, 11).unwrap_err();
            assert_eq!((e.status, e.code), (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"));
            limits.take_batch_bytes(&mut b, 10).unwrap();
            assert_eq!(limits.batch_bytes.load(Ordering::Acquire), MAX_BATCH_BYTES_IN_FLIGHT);
        }
        // The finished request gave its bytes back; a refusal took nothing.
        assert_eq!(limits.batch_bytes.load(Ordering::Acquire), MAX_BATCH_BYTES_IN_FLIGHT - 10);
        drop(a);
        assert_eq!(limits.batch_bytes.load(Ordering::Acquire), 0);
        let mut c = BatchBytes { st: st.clone(), n: 0 };
        limits.take_batch_bytes(&mut c, u64::MAX).unwrap_err();
        assert_eq!(c.n, 0);
    }
}
