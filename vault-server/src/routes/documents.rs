//! Documents: deposits (one, or many in a batch), listing, reading a document and its content
//! (ranges, ETag, streaming), deletion and revocation.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vault::access::Caller;
use vault::{DocType, Document, DocumentId, NewDocument, OwnerId, Timestamp, Vault};

use crate::http::body::{fed_body, json_body};
use crate::http::error::{json_response, ApiError, ApiResult};
use crate::http::extract::OwnerCall;
use crate::http::limits::{stream_slot, BatchBytes, Stream, StreamSlot};
use crate::http::middleware::REQUEST_TIMEOUT;
use crate::http::routing::Route;
use crate::http::state::{blocking, AppState};
use crate::openapi as oa;

/// A document as the contract shows it: the record plus `status` now.
#[derive(Serialize)]
pub(crate) struct DocOut<'a> {
    #[serde(flatten)]
    doc: &'a Document,
    status: vault::Status,
}

pub(crate) fn doc_out(doc: &Document) -> DocOut<'_> {
    DocOut { doc, status: doc.status(Timestamp::now()) }
}

#[utoipa::path(
    post,
    path = "/v1/owners/{owner}/documents",
    tag = "documents",
    params(oa::OwnerPath),
    request_body(content = vault::NewDocument, content_type = "application/json"),
    responses((status = 201, description = "Deposited", body = oa::DocumentOut), (status = 200, description = "The same deposit again: the existing document", body = oa::DocumentOut))
)]
async fn deposit(OwnerCall { st, caller, owner }: OwnerCall, headers: HeaderMap, body: Body) -> ApiResult {
    let new: NewDocument = json_body(&headers, body).await?;
    let v = st.vault()?;
    let (doc, created) = blocking(move || v.deposit_as(&caller, &owner, new)).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json_response(status, &doc_out(&doc)))
}

/// Largest body of a batch deposit.
const MAX_BATCH_BODY: usize = 64 << 20;
/// Most documents in a batch deposit.
pub const MAX_BATCH_ITEMS: usize = 1000;

/// Extension: many one-step deposits (upload + deposit) in one request and one durable wait.
/// The caller is authorised before the body is read; the body (at most 64 MiB) is held once and
/// the strict reader of [`crate::http::batch`] hands out ranges of it, never allocating from a size a
/// header declares.
#[utoipa::path(
    post,
    path = "/v1/owners/{owner}/deposits",
    tag = "documents",
    params(oa::OwnerPath),
    request_body(content = oa::Binary, content_type = "application/x-tar"),
    responses((status = 200, description = "One result per item", body = oa::BatchResponse))
)]
async fn deposit_batch(OwnerCall { st, caller, owner }: OwnerCall, headers: HeaderMap, body: Body) -> ApiResult {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.trim().eq_ignore_ascii_case("application/x-tar") {
        return Err(ApiError::invalid("send Content-Type: application/x-tar"));
    }
    let v = st.vault()?;
    let (c, o) = (caller.clone(), owner.clone());
    blocking(move || v.may_deposit_as(&c, &o)).await?;
    // Held by the blocking task that stores the batch (it outlives a client that goes away).
    let slot = stream_slot(&st, &caller, Stream::Upload)?;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "a batch is at most 64 MiB; send large contents with PUT",
        )
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BATCH_BODY as u64) {
        return Err(too_large());
    }
    // Read frame by frame: a body that sends nothing for the idle timeout is 408 (as for a
    // content PUT), and so is one that is not all there within REQUEST_TIMEOUT (the bound on
    // how long a batch may hold up to 64 MiB of memory, as before; never a 5xx for the client's
    // pace). The route is exempt from the 30 s request deadline of `observe` for this reason.
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    // Held until the answer is made (the items are slices of the body).
    let mut held = BatchBytes { st: st.clone(), n: 0 };
    loop {
        let wait = st.limits.idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, stream.next()).await {
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "a batch body must arrive within 30 s; send smaller batches",
                ));
            }
            Err(_) => return Err(ApiError::idle()),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ApiError::invalid(format!("the request body failed: {e}"))),
            Ok(Some(Ok(chunk))) => {
                if buf.len() + chunk.len() > MAX_BATCH_BODY {
                    return Err(too_large());
                }
                st.limits.take_batch_bytes(&mut held, chunk.len() as u64)?;
                buf.extend_from_slice(&chunk);
            }
        }
    }
    let bytes = Bytes::from(buf);
    st.metrics.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    let v = st.vault()?;
    let max = st.max_content;
    let results = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let (_slot, _held) = (slot, held);
        let items: Vec<(io::Cursor<Bytes>, NewDocument)> = crate::http::batch::items(&bytes, max, MAX_BATCH_ITEMS)?
            .into_iter()
            .map(|(range, new)| (io::Cursor::new(bytes.slice(range)), new))
            .collect();
        Ok(v.put_documents_as(&caller, &owner, items)?)
    })
    .await
    .map_err(ApiError::internal)??;
    let out: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            Ok((stored, doc, created)) => {
                json!({"digest": stored.digest, "size": stored.size, "created": created, "document": doc_out(&doc)})
            }
            Err(e) => {
                let e = ApiError::from(e);
                json!({"status": e.status.as_u16(), "error": {"code": e.code, "message": e.message}})
            }
        })
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "results": out })))
}

#[derive(Deserialize)]
struct ListQuery {
    doc_type: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/owners/{owner}/documents",
    tag = "documents",
    params(oa::OwnerPath, oa::DocTypeQuery, oa::PurposeHeader),
    responses((status = 200, description = "The documents the caller may see", body = oa::DocumentList))
)]
async fn list_documents(OwnerCall { st, caller, owner }: OwnerCall, Query(q): Query<ListQuery>) -> ApiResult {
    let t = q.doc_type.map(|t| DocType::parse(&t)).transpose().map_err(|e| ApiError::invalid(e.to_string()))?;
    let v = st.vault()?;
    let docs = blocking(move || v.documents_as(&caller, &owner, t.as_ref())).await?;
    let out: Vec<_> = docs.iter().map(doc_out).collect();
    Ok(json_response(StatusCode::OK, &json!({"documents": out})))
}

fn doc_id(s: &str) -> Result<DocumentId, ApiError> {
    DocumentId::parse(s).map_err(|_| ApiError::not_found())
}

#[utoipa::path(
    get,
    path = "/v1/owners/{owner}/documents/{id}",
    tag = "documents",
    params(oa::OwnerDocPath, oa::PurposeHeader),
    responses((status = 200, description = "The document", body = oa::DocumentOut))
)]
async fn get_document(OwnerCall { st, caller, owner }: OwnerCall, Path((_, id)): Path<(String, String)>) -> ApiResult {
    let id = doc_id(&id)?;
    let v = st.vault()?;
    let doc = match v.start_document_as(&caller, &owner, &id) {
        vault::access::Started::Queued(read) => finished(v, read).await?,
        vault::access::Started::Blocking => blocking(move || v.document_as(&caller, &owner, &id)).await?,
    };
    Ok(json_response(StatusCode::OK, &doc_out(&doc)))
}

/// Waits, without holding a thread, until a started read's audit entry is durable, and
/// finishes it (SPEC.md §14: the sequencer answers a batch's callers once it is synced). The
/// wait runs as its own task, so a client that goes away does not leave the call unfinished.
async fn finished<T: Send + 'static>(v: Arc<Vault>, read: vault::access::QueuedRead<T>) -> Result<T, ApiError> {
    /// Abandons the read if the task is dropped before it finished (runtime shutdown).
    struct Unfinished<T>(Arc<Vault>, Option<vault::access::QueuedRead<T>>);
    impl<T> Drop for Unfinished<T> {
        fn drop(&mut self) {
            if let Some(read) = self.1.take() {
                self.0.abandon_read(read);
            }
        }
    }
    let task = tokio::spawn(async move {
        let mut held = Unfinished(v.clone(), Some(read));
        loop {
            let polled = std::future::poll_fn(|cx| match held.1.as_mut() {
                Some(read) => match v.poll_read(read, cx) {
                    vault::access::ReadPoll::Pending => std::task::Poll::Pending,
                    p => std::task::Poll::Ready(Some(p)),
                },
                None => std::task::Poll::Ready(None),
            })
            .await;
            match (polled, held.1.take()) {
                (Some(vault::access::ReadPoll::Lead), read) => {
                    held.1 = read;
                    lead(&v);
                }
                (_, Some(read)) => return v.finish_read(read),
                (_, None) => return Err(vault::Error::AuditFailed("the read was given up".into())),
            }
        }
    });
    match task.await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// Has the audit sequencer's queue led on the leader thread (which may block: it writes and
/// syncs), started at the first use; a plain thread, so it runs while the async runtime shuts
/// down too, and every turn given to an async caller ends.
fn lead(v: &Arc<Vault>) {
    static LEADER: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Arc<Vault>>>> = std::sync::OnceLock::new();
    let tx = LEADER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Vault>>();
        std::thread::Builder::new()
            .name("audit-leader".into())
            .spawn(move || {
                for v in rx {
                    // A panic inside ends the turn (the sequencer answers its callers with a
                    // failure); the thread goes on leading.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| v.lead_queue()));
                }
            })
            .ok()
            .map(|_| tx)
    });
    let sent = tx.as_ref().is_some_and(|tx| tx.send(v.clone()).is_ok());
    if !sent {
        // No leader thread (it could not be started): lead on a blocking-pool thread.
        let v = v.clone();
        tokio::task::spawn_blocking(move || v.lead_queue());
    }
}

/// Parses a single `bytes=` range against `size`: `Ok(None)` = whole content, `Err` = 416.
fn parse_range(h: Option<&HeaderValue>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = h.and_then(|v| v.to_str().ok()).and_then(|s| s.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: served whole
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 || size == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size - 1)
        }
        (s, "") => (s.parse().map_err(|_| ())?, size.saturating_sub(1)),
        (s, e) => {
            let (s, e): (u64, u64) = (s.parse().map_err(|_| ())?, e.parse().map_err(|_| ())?);
            if e < s {
                return Err(());
            }
            (s, e.min(size.saturating_sub(1)))
        }
    };
    if start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// A deposited content (HTML, SVG, ...) must never run in the vault's origin: no sniffing, and a
/// sandbox for anything a browser might render.
fn content_safety(h: &mut HeaderMap) {
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
}

#[utoipa::path(
    get,
    path = "/v1/owners/{owner}/documents/{id}/content",
    tag = "documents",
    params(oa::OwnerDocPath, oa::PurposeHeader, ("Range" = Option<String>, Header, description = "One `bytes=` range"), ("If-None-Match" = Option<String>, Header, description = "The ETag held")),
    responses((status = 200, description = "The bytes (Content-Type = the media type)", body = oa::Binary, content_type = "*/*", headers(("ETag" = String, description = "The digest, quoted"))), (status = 206, description = "The range asked", body = oa::Binary, content_type = "*/*", headers(("Content-Range" = String))), (status = 304, description = "Not modified (ETag matched)"))
)]
async fn get_content(
    OwnerCall { st, caller, owner }: OwnerCall,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let id = doc_id(&id)?;
    let v = st.vault()?;
    // Taken before the read is decided (and audited, and counted against a grant's uses), so
    // a refusal here costs the caller nothing; held by the blocking threads that decide and
    // then read (they outlive a client that goes away).
    let slot = stream_slot(&st, &caller, Stream::Download)?;
    let if_none_match = headers.get(header::IF_NONE_MATCH).cloned();
    let range_h = headers.get(header::RANGE).cloned();
    // Thread hand-offs were the read path's main cost (issue #11's profile: most time in futex
    // wake-ups, not in crypto). A small content is decided here without blocking and awaited
    // without a thread; otherwise one blocking hop decides, audits and, for a small content or
    // range, reads it whole and authenticates it.
    let started = v.start_content_as(&caller, &owner, &id);
    let got = match started {
        // A small content held in the metadata store: decided without blocking, audited while
        // this task waits without holding a thread, then read from memory.
        vault::access::Started::Queued(read) => {
            let (doc, reader) = finished(v, read).await?;
            decide_content(doc, reader, if_none_match, range_h, slot).map_err(ApiError::from)?
        }
        vault::access::Started::Blocking => {
            blocking(move || {
                let (doc, reader) = v.content_as(&caller, &owner, &id)?;
                decide_content(doc, reader, if_none_match, range_h, slot)
            })
            .await?
        }
    };
    let (doc, etag, range, start, len, body) = match got {
        Got::NotModified(etag) => {
            let mut resp = (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
            content_safety(resp.headers_mut());
            return Ok(resp);
        }
        Got::BadRange(size) => {
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "invalid_range",
                format!("the range is outside the content's {size} bytes"),
            ))
        }
        Got::Small { doc, etag, range, start, bytes } => {
            st.metrics.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            let len = bytes.len() as u64;
            (doc, etag, range, start, len, Body::from(bytes))
        }
        Got::Large { doc, reader, slot, etag, range, start, len } => {
            let body = streamed_content(&st, slot, *reader, doc.id, start, len, range.is_none());
            (doc, etag, range, start, len, body)
        }
    };
    let size = doc.size;
    let status = if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&doc.meta.media_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::ETAG, HeaderValue::from_str(&etag).map_err(ApiError::internal)?);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    content_safety(h);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if status == StatusCode::PARTIAL_CONTENT {
        let cr = format!("bytes {}-{}/{}", start, start + len - 1, size);
        h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&cr).map_err(ApiError::internal)?);
    }
    Ok(resp)
}

/// What to answer for an allowed content read: 304, 416, or the bytes (a small content or
/// range read whole and authenticated, a large one handed to a streaming reader).
fn decide_content(
    doc: vault::Document,
    mut reader: vault::ContentReader,
    if_none_match: Option<HeaderValue>,
    range_h: Option<HeaderValue>,
    slot: StreamSlot,
) -> Result<Got, vault::Error> {
    let etag = format!("\"{}\"", doc.meta.digest);
    if if_none_match
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return Ok(Got::NotModified(etag));
    }
    let size = doc.size;
    let Ok(range) = parse_range(range_h.as_ref(), size) else {
        return Ok(Got::BadRange(size));
    };
    let (start, len) = match range {
        Some((s, e)) => (s, e - s + 1),
        None => (0, size),
    };
    if len > SMALL_CONTENT {
        return Ok(Got::Large { doc, reader: Box::new(reader), slot, etag, range, start, len });
    }
    // Small: read (and authenticate) all of it first, then answer in one body frame; a
    // content that fails authentication is an ordinary error answer, not a broken stream.
    let _slot = slot;
    let mut out = Vec::with_capacity(len as usize);
    let read = reader.seek(SeekFrom::Start(start)).and_then(|_| {
        if range.is_none() {
            // The whole content: read to its end, so the digest is checked.
            reader.read_to_end(&mut out)
        } else {
            (&mut reader).take(len).read_to_end(&mut out)
        }
    });
    if let Err(e) = read {
        let e = vault::Error::from(e);
        tracing::error!(document = %doc.id, error = %e, "content failed while reading");
        return Err(e);
    }
    Ok(Got::Small { doc, etag, range, start, bytes: out })
}

/// What [`get_content`] decided.
enum Got {
    NotModified(String),
    BadRange(u64),
    Small {
        doc: vault::Document,
        etag: String,
        range: Option<(u64, u64)>,
        start: u64,
        bytes: Vec<u8>,
    },
    Large {
        doc: vault::Document,
        reader: Box<vault::ContentReader>,
        slot: StreamSlot,
        etag: String,
        range: Option<(u64, u64)>,
        start: u64,
        len: u64,
    },
}

/// Contents (or ranges) up to this size are read whole, then sent in one body frame.
const SMALL_CONTENT: u64 = 64 * 1024;

/// Streams `len` bytes of a content from `start` out of a blocking reader thread (which holds
/// the caller's download slot until it is done). A whole read (`whole`) continues to the end so
/// the digest is checked before the last bytes go; a content that fails authentication aborts
/// the response, never ends it cleanly.
fn streamed_content(
    st: &Arc<AppState>,
    slot: StreamSlot,
    mut reader: vault::ContentReader,
    doc: vault::DocumentId,
    start: u64,
    len: u64,
    whole: bool,
) -> Body {
    let (feed, body) = fed_body(st);
    let st = st.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        if let Err(e) = reader.seek(SeekFrom::Start(start)) {
            feed.send(Err(e));
            return;
        }
        let mut left = len;
        let mut buf = vec![0u8; 256 * 1024];
        while left > 0 || (whole && start == 0) {
            let want = buf.len().min(left.max(1) as usize);
            match reader.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    let n = n.min(left as usize);
                    left -= n as u64;
                    st.metrics.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    if n > 0 && !feed.send(Ok(Bytes::copy_from_slice(&buf[..n]))) {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(document = %doc, error = %e, "content failed authentication while streaming; response aborted");
                    feed.abort(e);
                    return;
                }
            }
        }
        feed.finish();
    });
    body
}

#[utoipa::path(
    delete,
    path = "/v1/owners/{owner}/documents/{id}",
    tag = "documents",
    params(oa::OwnerDocPath),
    responses((status = 204, description = "Deleted"))
)]
async fn delete_document(
    OwnerCall { st, caller, owner }: OwnerCall,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult {
    let id = doc_id(&id)?;
    let v = st.vault()?;
    blocking(move || v.delete_as(&caller, &owner, &id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct RevocationBody {
    reason: String,
}

#[utoipa::path(
    post,
    path = "/v1/owners/{owner}/documents/{id}/revocation",
    tag = "documents",
    params(oa::OwnerDocPath),
    request_body(content = oa::RevocationRequest, content_type = "application/json"),
    responses((status = 200, description = "Revoked", body = oa::DocumentOut))
)]
async fn revoke_document(
    OwnerCall { st, caller, owner }: OwnerCall,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let id = doc_id(&id)?;
    let b: RevocationBody = json_body(&headers, body).await?;
    let v = st.vault()?;
    let doc = blocking(move || v.revoke_as(&caller, &owner, &id, &b.reason)).await?;
    Ok(json_response(StatusCode::OK, &doc_out(&doc)))
}

/// A whole content streamed to `caller` (the page's downloads): under a download slot, like the
/// API's, and given up when nobody reads it for `--stream-idle-timeout`.
pub(crate) async fn content_body(
    st: &Arc<AppState>,
    caller: Caller,
    owner: OwnerId,
    id: vault::DocumentId,
) -> Result<(vault::Document, Body), ApiError> {
    let v = st.vault()?;
    let slot = stream_slot(st, &caller, Stream::Download)?;
    let (doc, reader) = blocking(move || v.content_as(&caller, &owner, &id)).await?;
    let body = streamed_content(st, slot, reader, doc.id, 0, doc.size, true);
    Ok((doc, body))
}

/// The routes of this resource (see [`Route`]).
pub(crate) const ROUTES: &[Route] = &[
    Route {
        method: "post",
        path: "/v1/owners/{owner}/documents",
        summary: "Deposit a document about a held content (201; 200 with the existing document for a repeat)",
        handler: || post(deposit),
    },
    Route {
        method: "get",
        path: "/v1/owners/{owner}/documents",
        summary: "List documents (optionally ?doc_type=)",
        handler: || get(list_documents),
    },
    Route {
        method: "post",
        path: "/v1/owners/{owner}/deposits",
        summary: "Extension: many one-step deposits (a tar of deposit body + content pairs), one durable wait",
        handler: || post(deposit_batch),
    },
    Route {
        method: "get",
        path: "/v1/owners/{owner}/documents/{id}",
        summary: "One document",
        handler: || get(get_document),
    },
    Route {
        method: "delete",
        path: "/v1/owners/{owner}/documents/{id}",
        summary: "Delete a document (the owner)",
        handler: || delete(delete_document),
    },
    Route {
        method: "get",
        path: "/v1/owners/{owner}/documents/{id}/content",
        summary: "A document's content (Range, ETag)",
        handler: || get(get_content),
    },
    Route {
        method: "post",
        path: "/v1/owners/{owner}/documents/{id}/revocation",
        summary: "Revoke a document (its issuer)",
        handler: || post(revoke_document),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some(&h("bytes=0-9")), 100), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some(&h("bytes=90-")), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some(&h("bytes=-10")), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some(&h("bytes=-1000")), 100), Ok(Some((0, 99))));
        assert_eq!(parse_range(Some(&h("bytes=50-1000")), 100), Ok(Some((50, 99))));
        assert_eq!(parse_range(Some(&h("bytes=0-1,5-6")), 100), Ok(None));
        for bad in ["bytes=100-", "bytes=5-1", "bytes=-0", "bytes=x-1", "bytes=1"] {
            assert_eq!(parse_range(Some(&h(bad)), 100), Err(()), "{bad}");
        }
        assert_eq!(parse_range(Some(&h("bytes=0-0")), 0), Err(()));
        assert_eq!(parse_range(Some(&h("items=0-1")), 100), Ok(None));
    }
}
