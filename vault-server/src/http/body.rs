//! Request and response bodies: JSON bodies (Content-Type and size checked), a blocking reader
//! over an uploaded body, and blocking writers feeding streamed responses.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use serde::Deserialize;

use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Largest JSON body accepted.
const MAX_JSON: usize = 2 << 20;

/// Reads a JSON body (Content-Type must be JSON; size limited).
pub(crate) async fn json_body<T: for<'de> Deserialize<'de>>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    json_body_limited(headers, body, MAX_JSON).await
}

/// [`json_body`] with a smaller limit than [`MAX_JSON`].
pub(crate) async fn json_body_limited<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.trim().to_ascii_lowercase().starts_with("application/json") {
        return Err(ApiError::invalid("send Content-Type: application/json"));
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "the JSON body is too large"))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("malformed JSON body: {e}")))
}

/// The sending end of a streamed response fed by a blocking reader: a send waits at most the
/// idle timeout for the client to take data, so an unread response gives its thread back.
pub(crate) struct Feed {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
    rt: tokio::runtime::Handle,
    idle: std::time::Duration,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl Feed {
    /// Sends one item from a blocking thread; false when the response is gone or unread.
    pub(crate) fn send(&self, item: Result<Bytes, io::Error>) -> bool {
        matches!(self.rt.block_on(tokio::time::timeout(self.idle, self.tx.send(item))), Ok(Ok(())))
    }

    /// Aborts the response with `e`, after the bytes already sent had their chance to leave:
    /// an error frame that reaches the HTTP layer together with the head would close the
    /// connection before the head is written, and the client could not tell a broken transfer
    /// from an unreachable server. Waits (at most the idle timeout) until the queued chunks are
    /// taken, then a moment for them to be written.
    pub(crate) fn abort(self, e: io::Error) {
        let drained = async {
            while self.tx.capacity() < self.tx.max_capacity() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        let _ = self.rt.block_on(tokio::time::timeout(self.idle, drained));
        self.send(Err(e));
    }

    /// Marks the response complete: only then does its body end cleanly.
    pub(crate) fn finish(self) {
        self.done.store(true, Ordering::Release);
    }
}

/// A response body fed from a blocking thread through a [`Feed`]. If the feeder stops without
/// [`Feed::finish`] (an error, an unread response), the body ends with an error, never cleanly.
pub(crate) fn fed_body(st: &AppState) -> (Feed, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(4);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feed = Feed { tx, rt: tokio::runtime::Handle::current(), idle: st.limits.idle, done: done.clone() };
    let stream = futures_util::stream::unfold(Some(rx), move |rx| {
        let done = done.clone();
        async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(item) => Some((item, Some(rx))),
                None if done.load(Ordering::Acquire) => None,
                None => Some((Err(io::Error::other("the response was aborted")), None)),
            }
        }
    });
    (feed, Body::from_stream(stream))
}

/// Marks the reader's error when the body passes the size limit.
#[derive(Debug, thiserror::Error)]
#[error("the content is larger than the server accepts")]
pub(crate) struct TooLarge;

/// A blocking `Read` over body chunks sent from the async side.
pub(crate) struct ChannelReader {
    pub(crate) rx: tokio::sync::mpsc::Receiver<Result<Bytes, io::Error>>,
    pub(crate) current: Bytes,
    pub(crate) seen: u64,
    pub(crate) max: u64,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(b)) => {
                    self.seen += b.len() as u64;
                    if self.seen > self.max {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, TooLarge));
                    }
                    self.current = b;
                }
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Body chunk size of an export.
const EXPORT_CHUNK: usize = 256 * 1024;

/// A blocking [`Write`] into a bounded channel of response-body chunks. A write fails (and so
/// the producer stops) once the reader is gone, or when it has taken nothing for the timeout.
pub(crate) struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
    rt: tokio::runtime::Handle,
    buf: Vec<u8>,
    timeout: std::time::Duration,
    /// A chunk was handed to the response: errors from here on abort it.
    pub(crate) started: bool,
}

impl ChannelWriter {
    pub(crate) fn new(
        tx: tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
        rt: tokio::runtime::Handle,
        timeout: std::time::Duration,
    ) -> Self {
        ChannelWriter { tx, rt, buf: Vec::with_capacity(EXPORT_CHUNK), timeout, started: false }
    }

    /// Hands one item to the response (from a blocking thread, never an async one).
    pub(crate) fn send(&mut self, item: Result<Bytes, io::Error>) -> io::Result<()> {
        use tokio::sync::mpsc::error::SendTimeoutError;
        match self.rt.block_on(self.tx.send_timeout(item, self.timeout)) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(_)) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "the reader of the export took nothing"))
            }
            Err(SendTimeoutError::Closed(_)) => {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "the reader of the export is gone"))
            }
        }
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(EXPORT_CHUNK)));
        self.started = true;
        self.send(Ok(chunk))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(EXPORT_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= EXPORT_CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An export response that is never read, or whose reader went away, stops its producer
    /// (the blocking thread) instead of holding it forever.
    #[test]
    fn item_10_5_export_writer_stops_when_its_reader_is_gone_or_idle() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let chunk = vec![7u8; EXPORT_CHUNK];
        // Read: every byte arrives, in order.
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let mut w = ChannelWriter::new(tx, rt.handle().clone(), std::time::Duration::from_secs(30));
        let reader = rt.spawn(async move {
            let mut n = 0;
            while let Some(Ok(b)) = rx.recv().await {
                n += Bytes::len(&b);
            }
            n
        });
        for _ in 0..10 {
            w.write_all(&chunk).unwrap();
        }
        w.write_all(b"tail").unwrap();
        w.flush().unwrap();
        assert!(w.started);
        drop(w);
        assert_eq!(rt.block_on(reader).unwrap(), 10 * EXPORT_CHUNK + 4);
        // The reader is gone: the next chunk fails at once.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        drop(rx);
        let mut w = ChannelWriter::new(tx, rt.handle().clone(), std::time::Duration::from_secs(3600));
        let e = w.write_all(&chunk).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        // Never read: once the channel is full, a write gives up after the timeout.
        let (tx, _rx) = tokio::sync::mpsc::channel(4);
        let mut w = ChannelWriter::new(tx, rt.handle().clone(), std::time::Duration::from_millis(50));
        let e = (0..10).map(|_| w.write_all(&chunk)).find_map(Result::err).unwrap();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
