//! The `/v1` HTTP contract of api.md, the service endpoints, and the one place that maps
//! errors to status codes and bodies ([`ApiError`]).

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vault::access::{Caller, Component, Principal};
use vault::engine::grants::{Grant, NewGrant};
use vault::engine::provenance::{Agency, NewAgency};
use vault::{
    AgencyId, Digest, DocType, Document, DocumentId, GrantId, NewDocument, OwnerId, Purpose, Timestamp, Vault,
};

use crate::auth::{authenticate, AuthConfig};
use crate::openapi as oa;

/// Shared state of the service.
#[derive(Debug)]
pub struct AppState {
    /// The vault, once opened and recovered (until then every call answers 503 `sealed`).
    pub vault: std::sync::OnceLock<Arc<Vault>>,
    /// Token verification settings.
    pub auth: AuthConfig,
    /// Largest content accepted.
    pub max_content: u64,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Per-principal upload limits and stream timeouts.
    pub limits: Limits,
    /// Webhook delivery settings and the URL policy (SPEC.md §24).
    pub webhooks: crate::webhooks::WebhookConfig,
}

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
    fn take_batch_bytes(&self, held: &mut BatchBytes, n: u64) -> Result<(), ApiError> {
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
struct BatchBytes {
    st: Arc<AppState>,
    n: u64,
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
enum Stream {
    /// Content `PUT`s and batch deposits.
    Upload,
    /// Content `GET`s and exports.
    Download,
}

/// One stream slot of a principal, given back on drop.
struct StreamSlot {
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
fn stream_slot(st: &Arc<AppState>, caller: &Caller, kind: Stream) -> Result<StreamSlot, ApiError> {
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

/// The sending end of a streamed response fed by a blocking reader: a send waits at most the
/// idle timeout for the client to take data, so an unread response gives its thread back.
struct Feed {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
    rt: tokio::runtime::Handle,
    idle: std::time::Duration,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl Feed {
    /// Sends one item from a blocking thread; false when the response is gone or unread.
    fn send(&self, item: Result<Bytes, io::Error>) -> bool {
        matches!(self.rt.block_on(tokio::time::timeout(self.idle, self.tx.send(item))), Ok(Ok(())))
    }

    /// Aborts the response with `e`, after the bytes already sent had their chance to leave:
    /// an error frame that reaches the HTTP layer together with the head would close the
    /// connection before the head is written, and the client could not tell a broken transfer
    /// from an unreachable server. Waits (at most the idle timeout) until the queued chunks are
    /// taken, then a moment for them to be written.
    fn abort(self, e: io::Error) {
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
    fn finish(self) {
        self.done.store(true, Ordering::Release);
    }
}

/// A response body fed from a blocking thread through a [`Feed`]. If the feeder stops without
/// [`Feed::finish`] (an error, an unread response), the body ends with an error, never cleanly.
fn fed_body(st: &AppState) -> (Feed, Body) {
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

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Per route and method: answers by status, and a latency histogram.
#[derive(Debug, Default)]
struct RouteStats {
    by_status: std::collections::BTreeMap<u16, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Prometheus counters.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: std::sync::Mutex<std::collections::BTreeMap<(String, String), RouteStats>>,
    /// Requests answered, by status class.
    pub requests: [AtomicU64; 6],
    /// 401 answers.
    pub unauthenticated: AtomicU64,
    /// Content bytes received.
    pub bytes_in: AtomicU64,
    /// Content bytes sent.
    pub bytes_out: AtomicU64,
}

/// Deadline of a non-streaming request.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest JSON body accepted.
const MAX_JSON: usize = 2 << 20;

/// An error answer: status, code and message of api.md's error body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// The HTTP status of this answer (the citizen's page maps library errors through here too).
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The message of this answer.
    pub fn message(&self) -> &str {
        &self.message
    }
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub(crate) fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such thing")
    }
    fn idle() -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "timeout", "the request body stalled; send it again")
    }
    fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!(error = %message, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the operator can see it in the server log",
        )
    }
}

/// The one mapping from library errors to the contract's status codes.
impl From<vault::Error> for ApiError {
    fn from(e: vault::Error) -> Self {
        use vault::Error as E;
        if let E::Source(io) = &e {
            if io.get_ref().is_some_and(|i| i.is::<TooLarge>()) {
                return Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "the content is larger than the server accepts",
                );
            }
        }
        let status = match e.code() {
            "invalid_request" | "digest_mismatch" | "invalid_signature" | "unknown_issuer_key" | "purpose_required" => {
                StatusCode::BAD_REQUEST
            }
            "forbidden" | "grant_required" => StatusCode::FORBIDDEN,
            "not_found" => StatusCode::NOT_FOUND,
            "conflict" => StatusCode::CONFLICT,
            "gone" => StatusCode::GONE,
            "too_many_requests" => StatusCode::TOO_MANY_REQUESTS,
            "sealed" | "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => return Self::internal(&e),
        };
        if let vault::Error::Store(vault::StoreError::Unavailable(_)) = &e {
            // The store's own message names endpoints, buckets and keyed names: logged, not sent.
            tracing::warn!(error = %e, "blob store unavailable");
            return Self::new(status, e.code(), "the blob store is unavailable; retry later".to_owned());
        }
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<crate::batch::BatchError> for ApiError {
    fn from(e: crate::batch::BatchError) -> Self {
        use crate::batch::BatchError as E;
        match &e {
            E::Malformed(_) => Self::invalid(e.to_string()),
            E::TooLarge(_) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

pub(crate) type ApiResult = Result<Response, ApiError>;

pub(crate) fn json_response(status: StatusCode, v: &impl Serialize) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// Runs blocking vault work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, vault::Error> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(e)),
    }
}

impl AppState {
    /// The vault, or 503 `sealed` while it is still opening (recovery after a crash).
    pub fn vault(&self) -> Result<Arc<Vault>, ApiError> {
        self.vault.get().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sealed",
                "the vault is still opening (recovery); retry shortly",
            )
        })
    }

    pub(crate) fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let vault = self.vault()?;
        let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let principal = authenticate(&self.auth, &vault, auth, Timestamp::now().unix()).map_err(|e| {
            self.metrics.unauthenticated.fetch_add(1, Ordering::Relaxed);
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.0)
        })?;
        let purpose = match headers.get("vault-purpose") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| Purpose::parse(s.trim()).ok())
                    .ok_or_else(|| ApiError::invalid("Vault-Purpose must be a procedure code"))?,
            ),
        };
        let purpose = if matches!(principal, Principal::Agency(_)) { purpose } else { None };
        Ok(Caller { principal, purpose })
    }
}

/// An authenticated call: the state and who is calling (401 `unauthenticated` otherwise).
pub(crate) struct Call {
    pub(crate) st: Arc<AppState>,
    pub(crate) caller: Caller,
}

impl axum::extract::FromRequestParts<Arc<AppState>> for Call {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, st: &Arc<AppState>) -> Result<Self, ApiError> {
        let caller = st.caller(&parts.headers)?;
        Ok(Call { st: st.clone(), caller })
    }
}

/// An authenticated call about the owner in the path's `{owner}` (400 if malformed).
struct OwnerCall {
    st: Arc<AppState>,
    caller: Caller,
    owner: OwnerId,
}

impl axum::extract::FromRequestParts<Arc<AppState>> for OwnerCall {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, st: &Arc<AppState>) -> Result<Self, ApiError> {
        let Call { st, caller } = Call::from_request_parts(parts, st).await?;
        let Path(params) = Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, &st)
            .await
            .map_err(|_| ApiError::not_found())?;
        let owner = owner_of(params.get("owner").map(String::as_str).unwrap_or_default())?;
        Ok(OwnerCall { st, caller, owner })
    }
}

fn owner_of(s: &str) -> Result<OwnerId, ApiError> {
    OwnerId::parse(s).map_err(|e| ApiError::invalid(e.to_string()))
}

/// Reads a JSON body (Content-Type must be JSON; size limited).
async fn json_body<T: for<'de> Deserialize<'de>>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
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

/// A document as the contract shows it: the record plus `status` now.
#[derive(Serialize)]
struct DocOut<'a> {
    #[serde(flatten)]
    doc: &'a Document,
    status: vault::Status,
}

fn doc_out(doc: &Document) -> DocOut<'_> {
    DocOut { doc, status: doc.status(Timestamp::now()) }
}

#[derive(Serialize)]
struct GrantOut<'a> {
    #[serde(flatten)]
    grant: &'a Grant,
    status: vault::engine::grants::GrantStatus,
}

fn grant_out(g: &Grant) -> GrantOut<'_> {
    GrantOut { grant: g, status: g.status(Timestamp::now()) }
}

#[derive(Serialize)]
struct ComponentOut<'a> {
    doc_type: &'a DocType,
    status: vault::access::ReuseStatus,
    document: Option<DocOut<'a>>,
}

// ---------------------------------------------------------------- contents

#[derive(Deserialize)]
struct MissingBody {
    digests: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/v1/owners/{owner}/contents/missing",
    tag = "contents",
    params(oa::OwnerPath, oa::PurposeHeader),
    request_body(content = oa::MissingRequest, content_type = "application/json"),
    responses((status = 200, description = "The digests the caller must upload first", body = oa::MissingResponse))
)]
async fn contents_missing(OwnerCall { st, caller, owner }: OwnerCall, headers: HeaderMap, body: Body) -> ApiResult {
    let b: MissingBody = json_body(&headers, body).await?;
    if b.digests.len() > vault::access::MAX_MISSING {
        return Err(ApiError::invalid("at most 10,000 digests per request"));
    }
    let digests = b
        .digests
        .iter()
        .map(|d| Digest::parse(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let v = st.vault()?;
    let missing = blocking(move || v.missing_as(&caller, &owner, &digests)).await?;
    Ok(json_response(StatusCode::OK, &json!({"missing": missing})))
}

/// Marks the reader's error when the body passes the size limit.
#[derive(Debug, thiserror::Error)]
#[error("the content is larger than the server accepts")]
struct TooLarge;

/// A blocking `Read` over body chunks sent from the async side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, io::Error>>,
    current: Bytes,
    seen: u64,
    max: u64,
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

#[utoipa::path(
    put,
    path = "/v1/owners/{owner}/contents/{digest}",
    tag = "contents",
    params(oa::OwnerDigestPath, ("Vault-Deposit" = Option<String>, Header, description = "Extension: base64url (no padding) of a deposit body, to deposit in the same step")),
    request_body(content = oa::Binary, content_type = "application/octet-stream"),
    responses((status = 201, description = "Stored", body = oa::StoredContent), (status = 200, description = "Already held (or the same document again)", body = oa::StoredContent))
)]
async fn put_content(
    OwnerCall { st, caller, owner }: OwnerCall,
    Path((_, digest)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let digest = Digest::parse(&digest).map_err(|e| ApiError::invalid(e.to_string()))?;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.max_content) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the content is larger than the server accepts",
        ));
    }
    // Extension: `Vault-Deposit` (base64url of a deposit body) stores the content and deposits
    // the document in one durable step (SPEC.md §20).
    let deposit = match headers.get("vault-deposit") {
        None => None,
        Some(h) => {
            let raw =
                h.to_str().ok().and_then(|t| B64URL.decode(t.trim()).ok()).ok_or_else(|| {
                    ApiError::invalid("Vault-Deposit must be base64url (no padding) of a deposit body")
                })?;
            let new: NewDocument = serde_json::from_slice(&raw)
                .map_err(|e| ApiError::invalid(format!("Vault-Deposit is not a deposit body: {e}")))?;
            if new.digest != digest {
                return Err(ApiError::invalid("the Vault-Deposit digest differs from the content's"));
            }
            Some(new)
        }
    };
    // Held by the blocking task that stores the upload (it outlives a client that goes away).
    let slot = stream_slot(&st, &caller, Stream::Upload)?;
    let v = st.vault()?;
    let idle = st.limits.idle;
    // No blocking thread is taken before the first body byte (or the body's end) arrives, and
    // a body that stalls for the idle timeout is aborted (nothing is stored).
    let mut stream = body.into_data_stream();
    let mut next = tokio::time::timeout(idle, stream.next()).await.map_err(|_| ApiError::idle())?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let reader = ChannelReader { rx, current: Bytes::new(), seen: 0, max: st.max_content };
    let task = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        match deposit {
            None => v.upload_as(&caller, &owner, reader, Some(digest)).map(|s| (s, None)),
            Some(new) => v.put_document_as(&caller, &owner, reader, new).map(|(s, d, c)| (s, Some((d, c)))),
        }
    });
    let mut received = 0u64;
    let mut stalled = false;
    while let Some(chunk) = next {
        let item = chunk.map_err(|e| io::Error::other(e.to_string()));
        if let Ok(b) = &item {
            received += b.len() as u64;
        }
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            break;
        }
        next = match tokio::time::timeout(idle, stream.next()).await {
            Ok(n) => n,
            Err(_) => {
                stalled = true;
                let _ = tx.send(Err(io::Error::new(io::ErrorKind::TimedOut, "the request body stalled"))).await;
                break;
            }
        };
    }
    drop(tx);
    st.metrics.bytes_in.fetch_add(received, Ordering::Relaxed);
    let result = task.await.map_err(ApiError::internal)?;
    if stalled {
        return Err(ApiError::idle());
    }
    let (stored, doc) = result?;
    Ok(match doc {
        None => {
            let status = if stored.created { StatusCode::CREATED } else { StatusCode::OK };
            json_response(status, &json!({"digest": stored.digest, "size": stored.size}))
        }
        Some((doc, created)) => {
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            json_response(status, &json!({"digest": stored.digest, "size": stored.size, "document": doc_out(&doc)}))
        }
    })
}

// ---------------------------------------------------------------- documents

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
/// the strict reader of [`crate::batch`] hands out ranges of it, never allocating from a size a
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
        let items: Vec<(io::Cursor<Bytes>, NewDocument)> = crate::batch::items(&bytes, max, MAX_BATCH_ITEMS)?
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

// ---------------------------------------------------------------- reuse, grants

#[derive(Deserialize)]
struct ReuseBody {
    purpose: Purpose,
    doc_types: Vec<DocType>,
    #[serde(default)]
    at: Option<Timestamp>,
}

#[utoipa::path(
    post,
    path = "/v1/owners/{owner}/reuse",
    tag = "reuse",
    params(oa::OwnerPath, oa::PurposeHeader),
    request_body(content = oa::ReuseRequest, content_type = "application/json"),
    responses((status = 200, description = "Per type asked, in order", body = oa::ReuseResponse))
)]
async fn reuse(OwnerCall { st, caller, owner }: OwnerCall, headers: HeaderMap, body: Body) -> ApiResult {
    let b: ReuseBody = json_body(&headers, body).await?;
    let v = st.vault()?;
    let components: Vec<Component> =
        blocking(move || v.reuse_as(&caller, &owner, &b.purpose, &b.doc_types, b.at)).await?;
    let out: Vec<_> = components
        .iter()
        .map(|c| ComponentOut { doc_type: &c.doc_type, status: c.status, document: c.document.as_ref().map(doc_out) })
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"components": out})))
}

#[utoipa::path(
    post,
    path = "/v1/owners/{owner}/grants",
    tag = "grants",
    params(oa::OwnerPath),
    request_body(content = vault::engine::grants::NewGrant, content_type = "application/json"),
    responses((status = 201, description = "The grant, with its signed receipt", body = oa::GrantOut))
)]
async fn create_grant(OwnerCall { st, caller, owner }: OwnerCall, headers: HeaderMap, body: Body) -> ApiResult {
    let terms: NewGrant = json_body(&headers, body).await?;
    let v = st.vault()?;
    let g = blocking(move || v.grant_as(&caller, &owner, terms)).await?;
    Ok(json_response(StatusCode::CREATED, &grant_out(&g)))
}

#[utoipa::path(
    get,
    path = "/v1/owners/{owner}/grants",
    tag = "grants",
    params(oa::OwnerPath),
    responses((status = 200, description = "The owner's grants", body = oa::GrantList))
)]
async fn list_grants(OwnerCall { st, caller, owner }: OwnerCall) -> ApiResult {
    let v = st.vault()?;
    let grants = blocking(move || v.grants_as(&caller, &owner)).await?;
    let out: Vec<_> = grants.iter().map(grant_out).collect();
    Ok(json_response(StatusCode::OK, &json!({"grants": out})))
}

#[utoipa::path(
    delete,
    path = "/v1/owners/{owner}/grants/{id}",
    tag = "grants",
    params(oa::OwnerGrantPath),
    responses((status = 204, description = "Revoked"))
)]
async fn revoke_grant(OwnerCall { st, caller, owner }: OwnerCall, Path((_, id)): Path<(String, String)>) -> ApiResult {
    let id = GrantId::parse(&id).map_err(|_| ApiError::not_found())?;
    let v = st.vault()?;
    blocking(move || v.revoke_grant_as(&caller, &owner, &id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    get,
    path = "/v1/grants",
    tag = "grants",
    responses((status = 200, description = "Grants given to the calling agency", body = oa::GrantList))
)]
async fn agency_grants(Call { st, caller }: Call) -> ApiResult {
    let v = st.vault()?;
    let grants = blocking(move || v.agency_grants_as(&caller)).await?;
    let out: Vec<_> = grants.iter().map(grant_out).collect();
    Ok(json_response(StatusCode::OK, &json!({"grants": out})))
}

// ---------------------------------------------------------------- audit

#[utoipa::path(
    get,
    path = "/v1/owners/{owner}/access-log",
    tag = "audit",
    params(oa::OwnerPath, oa::PageQuery),
    responses((status = 200, description = "Entries about the owner", body = oa::AccessLog))
)]
async fn access_log(
    OwnerCall { st, caller, owner }: OwnerCall,
    q: Result<Query<std::collections::HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|_| ApiError::invalid("a malformed query string"))?;
    let after = q.get("after").map(|_| u64_param(&q, "after")).transpose()?;
    let limit = match q.get("limit") {
        None => vault::log::audit::PageLimit::default(),
        Some(_) => vault::log::audit::PageLimit::new(u64_param(&q, "limit")?)?,
    };
    let v = st.vault()?;
    let page = blocking(move || v.access_log_page_as(&caller, &owner, after, limit)).await?;
    Ok(json_response(StatusCode::OK, &page))
}

/// Extension (SPEC.md §20): the leaves of many of the owner's entries with their inclusion
/// proofs, in one call.
#[utoipa::path(
    post,
    path = "/v1/owners/{owner}/access-log/proofs",
    tag = "audit",
    params(oa::OwnerPath),
    request_body(content = oa::ProofsRequest, content_type = "application/json"),
    responses((status = 200, description = "Leaves and inclusion proofs, in the order asked", body = oa::ProofsResponse))
)]
async fn access_log_proofs(OwnerCall { st, caller, owner }: OwnerCall, headers: HeaderMap, body: Body) -> ApiResult {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ask {
        size: u64,
        indexes: Vec<u64>,
    }
    let ask: Ask = json_body(&headers, body).await?;
    let v = st.vault()?;
    let size = ask.size;
    let proofs = blocking(move || v.access_log_proofs_as(&caller, &owner, ask.size, &ask.indexes)).await?;
    let out: Vec<Value> = proofs
        .iter()
        .map(|p| {
            let hashes: Vec<String> = p.hashes.iter().map(|h| B64.encode(h)).collect();
            json!({"index": p.index, "leaf": B64.encode(&p.leaf), "hashes": hashes})
        })
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"size": size, "proofs": out})))
}

#[utoipa::path(
    get,
    path = "/v1/owners/{owner}/access-log/{index}/leaf",
    tag = "audit",
    params(oa::OwnerIndexPath),
    responses((status = 200, description = "The entry's leaf bytes", body = oa::Leaf))
)]
async fn access_log_leaf(
    OwnerCall { st, caller, owner }: OwnerCall,
    Path((_, index)): Path<(String, String)>,
) -> ApiResult {
    let index: u64 = index.parse().map_err(|_| ApiError::not_found())?;
    let v = st.vault()?;
    let leaf = blocking(move || v.access_log_leaf_as(&caller, &owner, index)).await?;
    Ok(json_response(StatusCode::OK, &json!({"index": index, "leaf": B64.encode(leaf)})))
}

#[utoipa::path(
    get,
    path = "/v1/audit/checkpoint",
    tag = "audit",
    responses((status = 200, description = "C2SP signed note", body = oa::Text, content_type = "text/plain"))
)]
async fn checkpoint(State(st): State<Arc<AppState>>) -> ApiResult {
    let v = st.vault()?;
    let note = blocking(move || v.checkpoint()).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/audit/tile/{tile}",
    tag = "audit",
    params(oa::TileParam),
    responses(
        (status = 200, description = "The tile: its 32-byte hashes, concatenated (8,192 bytes when full)",
         body = oa::Binary, content_type = "application/octet-stream"),
        (status = 404, description = "No such tile at the durable tree size, a malformed path, or an entry \
         bundle (`not_found`)", body = oa::ErrorBody)
    )
)]
async fn tile(State(st): State<Arc<AppState>>, Path(path): Path<String>) -> ApiResult {
    // C2SP tlog-tiles paths in their one canonical form; anything else is no tile.
    let (level, index, width) = vault::log::tiles::parse_path(&path).ok_or_else(ApiError::not_found)?;
    let v = st.vault()?;
    let bytes = blocking(move || v.tile(level, index, width)).await?;
    let mut resp = ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response();
    if width.is_none() {
        // A full tile never changes.
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    }
    Ok(resp)
}

/// A numeric query parameter: decimal digits, 0 to 2^63 − 1 (OpenAPI's `int64`, as
/// `/openapi.json` declares it; no index or size of the log comes near it).
fn u64_param(q: &std::collections::HashMap<String, String>, name: &str) -> Result<u64, ApiError> {
    q.get(name)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| ApiError::invalid(format!("query parameter {name} must be a whole number from 0 to 2^63-1")))
}

#[utoipa::path(
    get,
    path = "/v1/audit/proof/inclusion",
    tag = "audit",
    params(oa::InclusionQuery),
    responses((status = 200, description = "RFC 9162 inclusion proof", body = oa::InclusionProof))
)]
async fn inclusion(
    State(st): State<Arc<AppState>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> ApiResult {
    let (index, size) = (u64_param(&q, "index")?, u64_param(&q, "size")?);
    let v = st.vault()?;
    let p = blocking(move || v.inclusion_proof(index, size)).await?;
    let hashes: Vec<String> = p.hashes.iter().map(|h| B64.encode(h)).collect();
    Ok(json_response(StatusCode::OK, &json!({"leaf_hash": B64.encode(p.leaf_hash), "hashes": hashes})))
}

#[utoipa::path(
    get,
    path = "/v1/audit/proof/consistency",
    tag = "audit",
    params(oa::ConsistencyQuery),
    responses((status = 200, description = "RFC 9162 consistency proof", body = oa::ConsistencyProof))
)]
async fn consistency(
    State(st): State<Arc<AppState>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> ApiResult {
    let (from, to) = (u64_param(&q, "from")?, u64_param(&q, "to")?);
    let v = st.vault()?;
    let p = blocking(move || v.consistency_proof(from, to)).await?;
    let hashes: Vec<String> = p.iter().map(|h| B64.encode(h)).collect();
    Ok(json_response(StatusCode::OK, &json!({"hashes": hashes})))
}

// ---------------------------------------------------------------- owners

#[utoipa::path(
    get,
    path = "/v1/owners/{owner}/export",
    tag = "owners",
    params(oa::OwnerPath),
    responses((status = 200, description = "Everything of the owner, a tar", body = oa::Binary, content_type = "application/x-tar"))
)]
async fn export(OwnerCall { st, caller, owner }: OwnerCall) -> ApiResult {
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], export_body(&st, caller, owner).await?).into_response())
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

/// The owner's export as a streamed body (the API's and the page's): the caller's download slot
/// is held until the last chunk is taken. An error before the first byte is an ordinary error.
pub(crate) async fn export_body(st: &Arc<AppState>, caller: Caller, owner: OwnerId) -> Result<Body, ApiError> {
    let v = st.vault()?;
    let slot = stream_slot(st, &caller, Stream::Download)?;
    // Streamed as it is built: tar blocks go straight from the decrypting readers into a bounded
    // channel of body chunks. No plaintext ever touches a file (SPEC.md §18).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(4);
    let rt = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || -> Result<(), vault::Error> {
        let _slot = slot;
        let mut w = ChannelWriter::new(tx, rt, EXPORT_SEND_TIMEOUT);
        match v.export_as(&caller, &owner, &mut w) {
            Ok(()) => Ok(()),
            // Nothing went out yet: an ordinary error response.
            Err(e) if !w.started => Err(e),
            Err(e) => {
                // Headers are sent: abort the response, never end it cleanly.
                tracing::error!(error = %e, "export failed while streaming; response aborted");
                let _ = w.send(Err(io::Error::other("the export failed")));
                Ok(())
            }
        }
    });
    let Some(first) = rx.recv().await else {
        // The writer is gone without a chunk: the export failed before its first byte.
        return match task.await {
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(())) => Err(ApiError::internal("the export produced nothing")),
            Err(e) => Err(ApiError::internal(e)),
        };
    };
    let stream = futures_util::stream::unfold((Some(first), rx), |(first, mut rx)| async move {
        match first {
            Some(item) => Some((item, (None, rx))),
            None => rx.recv().await.map(|item| (item, (None, rx))),
        }
    });
    Ok(Body::from_stream(stream))
}

/// How long an export waits for its reader to take the next chunk before it gives up, so a
/// response that is never read cannot hold a blocking thread forever.
const EXPORT_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Body chunk size of an export.
const EXPORT_CHUNK: usize = 256 * 1024;

/// A blocking [`Write`] into a bounded channel of response-body chunks. A write fails (and so
/// the producer stops) once the reader is gone, or when it has taken nothing for the timeout.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
    rt: tokio::runtime::Handle,
    buf: Vec<u8>,
    timeout: std::time::Duration,
    /// A chunk was handed to the response: errors from here on abort it.
    started: bool,
}

impl ChannelWriter {
    fn new(
        tx: tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
        rt: tokio::runtime::Handle,
        timeout: std::time::Duration,
    ) -> Self {
        ChannelWriter { tx, rt, buf: Vec::with_capacity(EXPORT_CHUNK), timeout, started: false }
    }

    /// Hands one item to the response (from a blocking thread, never an async one).
    fn send(&mut self, item: Result<Bytes, io::Error>) -> io::Result<()> {
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

static COUNTER: AtomicU64 = AtomicU64::new(0);

#[utoipa::path(
    delete,
    path = "/v1/owners/{owner}",
    tag = "owners",
    params(oa::OwnerPath),
    responses((status = 200, description = "The signed erasure receipt", body = vault::engine::rights::SignedReceipt))
)]
async fn erase(OwnerCall { st, caller, owner }: OwnerCall) -> ApiResult {
    let v = st.vault()?;
    let receipt = blocking(move || v.erase_as(&caller, &owner)).await?;
    Ok(json_response(StatusCode::OK, &receipt))
}

// ---------------------------------------------------------------- agencies

#[utoipa::path(
    put,
    path = "/v1/agencies/{agency}",
    tag = "agencies",
    params(oa::AgencyPath),
    request_body(content = vault::engine::provenance::NewAgency, content_type = "application/json"),
    responses((status = 201, description = "Registered", body = vault::engine::provenance::Agency), (status = 200, description = "Replaced", body = vault::engine::provenance::Agency))
)]
async fn put_agency(
    Call { st, caller }: Call,
    Path(agency): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let id = AgencyId::parse(&agency).map_err(|e| ApiError::invalid(e.to_string()))?;
    let new: NewAgency = json_body(&headers, body).await?;
    let v = st.vault()?;
    let (a, created) = blocking(move || v.put_agency_as(&caller, &id, new)).await?;
    Ok(json_response(if created { StatusCode::CREATED } else { StatusCode::OK }, &a))
}

#[utoipa::path(
    get,
    path = "/v1/agencies",
    tag = "agencies",
    responses((status = 200, description = "Every registered agency", body = oa::AgencyList))
)]
async fn list_agencies(State(st): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult {
    st.caller(&headers)?;
    let v = st.vault()?;
    let all: Vec<Agency> = blocking(move || v.agencies()).await?;
    Ok(json_response(StatusCode::OK, &json!({"agencies": all})))
}

#[utoipa::path(
    get,
    path = "/v1/agencies/{agency}",
    tag = "agencies",
    params(oa::AgencyPath),
    responses((status = 200, description = "The agency", body = vault::engine::provenance::Agency))
)]
async fn get_agency(State(st): State<Arc<AppState>>, Path(agency): Path<String>, headers: HeaderMap) -> ApiResult {
    st.caller(&headers)?;
    let id = AgencyId::parse(&agency).map_err(|_| ApiError::not_found())?;
    let v = st.vault()?;
    let a = blocking(move || v.agency(&id)).await?.ok_or_else(ApiError::not_found)?;
    Ok(json_response(StatusCode::OK, &a))
}

// ---------------------------------------------------------------- service

#[utoipa::path(
    get,
    path = "/v1/vault-key",
    tag = "service",
    responses((status = 200, description = "The vault's signing key", body = oa::VaultKey))
)]
async fn vault_key(State(st): State<Arc<AppState>>) -> ApiResult {
    let v = st.vault()?;
    let s = v.signer();
    Ok(json_response(
        StatusCode::OK,
        &json!({"name": s.name(), "public_key": B64.encode(s.public_key()), "note_verifier_key": s.verifier_key(),
                "webhook_public_key": v.webhook_public_key()}),
    ))
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    responses((status = 200, description = "Prometheus text format", body = oa::Text, content_type = "text/plain"))
)]
async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let m = &st.metrics;
    let (c, b, q) = match st.vault.get() {
        Some(v) => (v.commit_stats(), v.blob_commit_stats(), v.sequencer_stats()),
        None => (Default::default(), Default::default(), Default::default()),
    };
    // Pending agency uploads (SPEC.md §14): counted in memory, recounted by each sweep.
    let p = match st.vault.get() {
        Some(v) => {
            let v = v.clone();
            tokio::task::spawn_blocking(move || v.pending_stats()).await.ok().and_then(Result::ok).unwrap_or_default()
        }
        None => Default::default(),
    };
    // Reuse statistics (SPEC.md §23): durable, so they survive restarts.
    let reuse = match st.vault.get() {
        Some(v) => {
            let v = v.clone();
            tokio::task::spawn_blocking(move || v.reuse_totals()).await.ok().and_then(Result::ok).unwrap_or_default()
        }
        None => Default::default(),
    };
    let mut out = crate::stats::prometheus(&reuse);
    out.push_str(&crate::webhooks::prometheus(st.vault.get().map_or(0, |v| v.outbox_full_total())));
    out.push_str("# HELP vault_http_requests_total HTTP requests answered, by status class.\n# TYPE vault_http_requests_total counter\n");
    for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx", "other"].iter().enumerate() {
        out.push_str(&format!(
            "vault_http_requests_total{{class=\"{class}\"}} {}\n",
            m.requests[i].load(Ordering::Relaxed)
        ));
    }
    out.push_str(&format!(
        "# TYPE vault_http_unauthenticated_total counter\nvault_http_unauthenticated_total {}\n\
         # TYPE vault_content_bytes_in_total counter\nvault_content_bytes_in_total {}\n\
         # TYPE vault_content_bytes_out_total counter\nvault_content_bytes_out_total {}\n\
         # HELP vault_metadata_changes_total Metadata batches applied (audit appends included).\n# TYPE vault_metadata_changes_total counter\nvault_metadata_changes_total {}\n\
         # HELP vault_metadata_syncs_total Journal syncs (group commits).\n# TYPE vault_metadata_syncs_total counter\nvault_metadata_syncs_total {}\n\
         # TYPE vault_blob_commits_total counter\nvault_blob_commits_total {}\n# TYPE vault_blob_syncs_total counter\nvault_blob_syncs_total {}\n",
        m.unauthenticated.load(Ordering::Relaxed),
        m.bytes_in.load(Ordering::Relaxed),
        m.bytes_out.load(Ordering::Relaxed),
        c.written,
        c.syncs,
        b.written,
        b.syncs
    ));
    out.push_str(&format!(
        "# HELP vault_audit_batches_total Batches the audit sequencer wrote (one metadata change each).
# TYPE vault_audit_batches_total counter
vault_audit_batches_total {}
\
         # HELP vault_audit_entries_total Audit entries appended in those batches.
# TYPE vault_audit_entries_total counter
vault_audit_entries_total {}
",
        q.batches, q.entries
    ));
    out.push_str(&format!(
        "# HELP vault_pending_uploads Agency uploads no document uses yet.\n# TYPE vault_pending_uploads gauge\nvault_pending_uploads {}\n\
         # TYPE vault_pending_bytes gauge\nvault_pending_bytes {}\n\
         # HELP vault_pending_removed_total Pending agency uploads removed after 24 hours.\n# TYPE vault_pending_removed_total counter\nvault_pending_removed_total {}\n\
         # TYPE vault_pending_removed_bytes_total counter\nvault_pending_removed_bytes_total {}\n",
        p.pending_uploads, p.pending_bytes, p.removed_uploads, p.removed_bytes
    ));
    out.push_str("# HELP vault_http_route_requests_total Answers by route, method and status.\n# TYPE vault_http_route_requests_total counter\n");
    let routes = m.routes.lock().unwrap_or_else(|p| p.into_inner());
    for ((route, method), rs) in routes.iter() {
        for (status, n) in &rs.by_status {
            out.push_str(&format!(
                "vault_http_route_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}\n"
            ));
        }
    }
    out.push_str("# HELP vault_http_request_duration_seconds Time to the response head, by route.\n# TYPE vault_http_request_duration_seconds histogram\n");
    for ((route, method), rs) in routes.iter() {
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += rs.buckets[i];
            out.push_str(&format!("vault_http_request_duration_seconds_bucket{{route=\"{route}\",method=\"{method}\",le=\"{le}\"}} {cumulative}\n"));
        }
        out.push_str(&format!(
            "vault_http_request_duration_seconds_bucket{{route=\"{route}\",method=\"{method}\",le=\"+Inf\"}} {}\nvault_http_request_duration_seconds_sum{{route=\"{route}\",method=\"{method}\"}} {}\nvault_http_request_duration_seconds_count{{route=\"{route}\",method=\"{method}\"}} {}\n",
            rs.count, rs.sum, rs.count
        ));
    }
    drop(routes);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "service",
    responses((status = 200, description = "Ready", body = oa::Text, content_type = "text/plain"))
)]
async fn readyz(State(st): State<Arc<AppState>>) -> ApiResult {
    if let Some(reason) = st.vault()?.fail_stopped() {
        // Fail-stop (SPEC.md §8): writes are refused until a restart runs recovery.
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the vault stopped accepting writes after a storage failure ({reason}); restart the server"),
        ));
    }
    Ok("ready\n".into_response())
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "service",
    responses((status = 200, description = "Alive", body = oa::Text, content_type = "text/plain"))
)]
async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "service",
    responses((status = 200, description = "This document", body = Object))
)]
async fn openapi_json() -> Response {
    json_response(StatusCode::OK, &openapi())
}

async fn fallback() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").into_response()
}

/// 405 with the `Allow` header that RFC 9110 requires (the route's methods).
async fn method_not_allowed(allow: HeaderValue) -> Response {
    let mut resp =
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
            .into_response();
    resp.headers_mut().insert(header::ALLOW, allow);
    resp
}

/// One route of the HTTP contract, declared once: the source of the router, of the summaries
/// and the operation check of `/openapi.json` ([`crate::openapi`]) and of the `Allow` lists of
/// 405 answers.
#[derive(Clone, Copy)]
pub struct Route {
    /// The method, lower case (`get`, `put`, `post`, `delete`).
    pub method: &'static str,
    /// The path, with `{parameters}` as axum and OpenAPI write them.
    pub path: &'static str,
    /// A one-line summary (the OpenAPI operation's).
    pub summary: &'static str,
    /// The handler as a method router.
    handler: fn() -> MethodRouter<Arc<AppState>>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method.to_ascii_uppercase(), self.path)
    }
}

/// Every route (see [`Route`]).
pub const ROUTES: &[Route] = &[
    Route {
        method: "post",
        path: "/v1/owners/{owner}/contents/missing",
        summary: "Which of these digests must be uploaded",
        handler: || post(contents_missing),
    },
    Route {
        method: "put",
        path: "/v1/owners/{owner}/contents/{digest}",
        summary: "Upload a content (raw bytes, streamed); with Vault-Deposit, deposit it in the same step",
        handler: || put(put_content),
    },
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
    Route {
        method: "post",
        path: "/v1/owners/{owner}/reuse",
        summary: "Reuse check for a procedure's document types",
        handler: || post(reuse),
    },
    Route {
        method: "post",
        path: "/v1/owners/{owner}/grants",
        summary: "Grant an agency access (the owner)",
        handler: || post(create_grant),
    },
    Route {
        method: "get",
        path: "/v1/owners/{owner}/grants",
        summary: "The owner's grants",
        handler: || get(list_grants),
    },
    Route {
        method: "delete",
        path: "/v1/owners/{owner}/grants/{id}",
        summary: "Revoke a grant (the owner)",
        handler: || delete(revoke_grant),
    },
    Route {
        method: "get",
        path: "/v1/grants",
        summary: "Grants given to the calling agency",
        handler: || get(agency_grants),
    },
    Route {
        method: "get",
        path: "/v1/owners/{owner}/access-log",
        summary: "Audit entries about the owner, paged (?after=&limit=; next)",
        handler: || get(access_log),
    },
    Route {
        method: "get",
        path: "/v1/owners/{owner}/access-log/{index}/leaf",
        summary: "The leaf bytes of one entry",
        handler: || get(access_log_leaf),
    },
    Route {
        method: "post",
        path: "/v1/owners/{owner}/access-log/proofs",
        summary: "Extension: leaves and inclusion proofs of up to 1,000 of the owner's entries ({size, indexes})",
        handler: || post(access_log_proofs),
    },
    Route {
        method: "get",
        path: "/v1/audit/checkpoint",
        summary: "Signed checkpoint (C2SP signed note)",
        handler: || get(checkpoint),
    },
    Route {
        method: "get",
        path: "/v1/audit/proof/inclusion",
        summary: "RFC 9162 inclusion proof (?index=&size=)",
        handler: || get(inclusion),
    },
    Route {
        method: "get",
        path: "/v1/audit/proof/consistency",
        summary: "RFC 9162 consistency proof (?from=&to=)",
        handler: || get(consistency),
    },
    Route {
        method: "get",
        path: "/v1/audit/tile/{tile}",
        summary: "A C2SP tlog-tiles hash tile (<L>/<N>[.p/<W>], no token)",
        handler: || get(tile),
    },
    Route {
        method: "get",
        path: "/v1/owners/{owner}/export",
        summary: "Everything of the owner as a verifiable tar",
        handler: || get(export),
    },
    Route {
        method: "delete",
        path: "/v1/owners/{owner}",
        summary: "Erase the owner (crypto-shredding)",
        handler: || delete(erase),
    },
    Route {
        method: "put",
        path: "/v1/agencies/{agency}",
        summary: "Register or replace an agency (the operator)",
        handler: || put(put_agency),
    },
    Route { method: "get", path: "/v1/agencies", summary: "Registered agencies", handler: || get(list_agencies) },
    Route { method: "get", path: "/v1/agencies/{agency}", summary: "One agency", handler: || get(get_agency) },
    Route {
        method: "put",
        path: "/v1/agencies/{agency}/webhooks/{id}",
        summary: "Subscribe the agency to events (the operator)",
        handler: || put(crate::webhooks::put_webhook),
    },
    Route {
        method: "get",
        path: "/v1/agencies/{agency}/webhooks/{id}",
        summary: "One subscription, its verifying key and outbox counts",
        handler: || get(crate::webhooks::get_webhook),
    },
    Route {
        method: "delete",
        path: "/v1/agencies/{agency}/webhooks/{id}",
        summary: "Unsubscribe (waiting and parked events go too)",
        handler: || delete(crate::webhooks::delete_webhook),
    },
    Route {
        method: "get",
        path: "/v1/agencies/{agency}/webhooks/{id}/failed",
        summary: "Parked events of a subscription",
        handler: || get(crate::webhooks::failed_events),
    },
    Route {
        method: "post",
        path: "/v1/agencies/{agency}/webhooks/{id}/failed/{event}/redeliver",
        summary: "Queue a parked event again (same event id, fresh retry window)",
        handler: || post(crate::webhooks::redeliver),
    },
    Route {
        method: "get",
        path: "/v1/stats/reuse",
        summary: "Reuse statistics (?from=&to=&by=procedure|agency|doc_type|month; CSV)",
        handler: || get(crate::stats::reuse_stats),
    },
    Route { method: "get", path: "/v1/vault-key", summary: "The vault's signing key", handler: || get(vault_key) },
    Route { method: "get", path: "/healthz", summary: "Liveness", handler: || get(healthz) },
    Route { method: "get", path: "/readyz", summary: "Readiness", handler: || get(readyz) },
    Route { method: "get", path: "/metrics", summary: "Prometheus metrics", handler: || get(metrics) },
    Route { method: "get", path: "/openapi.json", summary: "This document", handler: || get(openapi_json) },
];

/// The OpenAPI 3.1 document, generated from the handlers' annotations (see [`crate::openapi`]).
pub fn openapi() -> Value {
    crate::openapi::document()
}

/// The method as a metrics and log label: one of the standard methods, or `other` (so made-up
/// methods cannot grow `/metrics`).
fn method_label(m: &axum::http::Method) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"];
    KNOWN.iter().find(|k| **k == m.as_str()).copied().unwrap_or("other")
}

/// Request ids, one structured log line per request, and the metrics.
async fn observe(st: Arc<AppState>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
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

/// The router: every route of [`ROUTES`], JSON errors for unknown routes and methods, metrics.
pub fn router(state: Arc<AppState>) -> Router {
    let mut by_path: Vec<(&str, MethodRouter<Arc<AppState>>)> = Vec::new();
    for route in ROUTES {
        let (path, h) = (route.path, (route.handler)());
        match by_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, mr)) => {
                let old = std::mem::replace(mr, MethodRouter::new());
                *mr = old.merge(h);
            }
            None => by_path.push((path, h)),
        }
    }
    let mut r = Router::new();
    for (path, mr) in by_path {
        let mut methods: Vec<String> =
            ROUTES.iter().filter(|r| r.path == path).map(|r| r.method.to_ascii_uppercase()).collect();
        if methods.iter().any(|m| m == "GET") {
            methods.push("HEAD".into());
        }
        let allow = HeaderValue::from_str(&methods.join(", ")).unwrap_or(HeaderValue::from_static(""));
        // A tile path holds slashes (`<L>/<N>[.p/<W>]`): routed as a wildcard, documented as one
        // parameter.
        let routed = path.replace("{tile}", "{*tile}");
        r = r.route(&routed, mr.fallback(move || method_not_allowed(allow.clone())));
    }
    let counting = state.clone();
    r.fallback(fallback)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            let st = counting.clone();
            async move { observe(st, req, next).await }
        }))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    fn sealed_state() -> Arc<AppState> {
        Arc::new(AppState {
            vault: std::sync::OnceLock::new(),
            auth: AuthConfig {
                audience: "vault".into(),
                max_lifetime: 3600,
                operator: None,
                providers: Default::default(),
                cache: Default::default(),
            },
            max_content: 1 << 20,
            metrics: Metrics::default(),
            limits: Limits::default(),
            webhooks: Default::default(),
        })
    }

    #[test]
    fn numeric_query_parameters_stay_within_int64() {
        let q = |v: &str| std::collections::HashMap::from([("after".to_owned(), v.to_owned())]);
        assert_eq!(u64_param(&q("0"), "after").unwrap(), 0);
        assert_eq!(u64_param(&q("9223372036854775807"), "after").unwrap(), i64::MAX as u64);
        for bad in ["9223372036854775808", "18446744073709551615", "-1", "+1", "", "1e3", " 1", "0x10"] {
            let e = u64_param(&q(bad), "after").unwrap_err();
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad:?}");
        }
        assert!(u64_param(&Default::default(), "after").is_err());
    }

    async fn status_and_code(app: Router, method: &str, uri: &str) -> (u16, String) {
        let req = axum::http::Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let code =
            serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
        (status, code.unwrap_or_default())
    }

    #[tokio::test]
    async fn while_the_vault_opens_readyz_says_503_and_calls_are_sealed() {
        let st = sealed_state();
        assert_eq!(status_and_code(router(st.clone()), "GET", "/healthz").await.0, 200);
        assert_eq!(status_and_code(router(st.clone()), "GET", "/readyz").await, (503, "sealed".into()));
        assert_eq!(status_and_code(router(st.clone()), "GET", "/v1/audit/checkpoint").await, (503, "sealed".into()));
        assert_eq!(status_and_code(router(st.clone()), "GET", "/v1/agencies").await, (503, "sealed".into()));
        assert_eq!(status_and_code(router(st.clone()), "GET", "/nowhere").await, (404, "not_found".into()));
        let openapi = status_and_code(router(st), "GET", "/openapi.json").await;
        assert_eq!(openapi.0, 200);
    }

    async fn metrics_len(st: &Arc<AppState>) -> usize {
        let req = axum::http::Request::builder().uri("/metrics").body(Body::empty()).unwrap();
        let resp = router(st.clone()).oneshot(req).await.unwrap();
        axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap().len()
    }

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

    #[tokio::test]
    async fn item_9_8_made_up_methods_and_paths_do_not_grow_metrics() {
        let st = sealed_state();
        let send = |i: u32| {
            let st = st.clone();
            async move {
                for (method, uri) in [
                    (format!("M{i}X"), format!("/made/up/{i}")),
                    (format!("Q{i}"), "/healthz".to_owned()),
                    ("GET".to_owned(), format!("/nowhere/{i}")),
                    ("POST".to_owned(), format!("/v1/owners/x{i}/nothing")),
                ] {
                    status_and_code(router(st.clone()), &method, &uri).await;
                }
            }
        };
        for i in 0..20 {
            send(i).await;
        }
        // (The first call to /metrics adds its own series.)
        metrics_len(&st).await;
        let before = metrics_len(&st).await;
        for i in 20..1020 {
            send(i).await;
        }
        let after = metrics_len(&st).await;
        // Only the counts' digits may grow; 4,000 distinct methods and paths add no series.
        assert!(after < before + 512, "metrics grew from {before} to {after} bytes");
        let req = axum::http::Request::builder().uri("/metrics").body(Body::empty()).unwrap();
        let text = axum::body::to_bytes(router(st).oneshot(req).await.unwrap().into_body(), 1 << 24).await.unwrap();
        let text = String::from_utf8(text.to_vec()).unwrap();
        assert!(!text.contains("M500X") && !text.contains("/nowhere/") && text.contains("method=\"other\""));
    }

    #[tokio::test]
    async fn item_10_3_after_a_failed_sync_readyz_and_writes_answer_503() {
        use vault::storage::{files::FsBlobs, sled::SledMeta};
        let dir = tempfile::tempdir().unwrap();
        let faults = vault::Faults::new();
        let meta = SledMeta::open(&dir.path().join("meta")).unwrap().with_faults(&faults);
        let blobs = FsBlobs::open(dir.path().join("blobs")).unwrap().with_faults(&faults);
        let master = vault::MasterKey::from_bytes([7; 32]);
        let v = Vault::open_with(Box::new(meta), Box::new(blobs), &master, Some(dir.path().join("OPEN"))).unwrap();
        let op = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let mut st = sealed_state();
        Arc::get_mut(&mut st).unwrap().auth.operator = Some(op.verifying_key());
        let _ = st.vault.set(Arc::new(v));
        let now = Timestamp::now().unix();
        let claims = vault::crypto::token::Claims {
            kid: "operator",
            iss: "operator",
            sub: "operator",
            aud: "vault",
            iat: now,
            exp: now + 600,
        };
        let token = format!("Bearer {}", vault::crypto::token::mint(&op, &claims));
        let call = |method: &str, uri: &str, body: Option<Value>| {
            let mut req = axum::http::Request::builder().method(method).uri(uri).header(header::AUTHORIZATION, &token);
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap();
            let app = router(st.clone());
            async move {
                let resp = app.oneshot(req).await.unwrap();
                let status = resp.status().as_u16();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
                let v = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
                (status, v["error"]["code"].as_str().unwrap_or_default().to_owned())
            }
        };
        let agency = |name: &str| json!({"name": name, "keys": []});
        assert_eq!(call("GET", "/readyz", None).await.0, 200);
        assert_eq!(call("PUT", "/v1/agencies/before", Some(agency("Before"))).await.0, 201);
        faults.fail_nth(vault::Fault::JournalSync, 1);
        assert_eq!(call("PUT", "/v1/agencies/failing", Some(agency("Failing"))).await, (503, "unavailable".into()));
        assert_eq!(call("GET", "/readyz", None).await, (503, "unavailable".into()));
        assert_eq!(call("PUT", "/v1/agencies/after", Some(agency("After"))).await, (503, "unavailable".into()));
        // Reads go on.
        assert_eq!(call("GET", "/v1/agencies/before", None).await.0, 200);
        assert_eq!(call("GET", "/v1/vault-key", None).await.0, 200);
        assert_eq!(call("GET", "/healthz", None).await.0, 200);
    }

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

    /// Found by schemathesis (`allow_header_conformance`): a 405 must name the route's methods.
    #[tokio::test]
    async fn a_wrong_method_answers_405_with_the_allow_header() {
        let req = axum::http::Request::builder()
            .method("PATCH")
            .uri("/v1/owners/citizen:001099012345/documents")
            .body(Body::empty())
            .unwrap();
        let resp = router(sealed_state()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[header::ALLOW], "POST, GET, HEAD");
    }

    /// Each route's declared method is the one its handler answers: a route whose `method` and
    /// `handler` disagreed would answer its own method with 405 (and name a wrong one in
    /// `Allow` and in `/openapi.json`).
    #[tokio::test]
    async fn every_route_answers_its_declared_method() {
        for r in ROUTES {
            let mut path = String::new();
            let mut rest = r.path;
            while let Some(open) = rest.find('{') {
                path.push_str(&rest[..open]);
                let close = open + rest[open..].find('}').unwrap();
                path.push_str(if &rest[open..=close] == "{tile}" { "0/000" } else { "x" });
                rest = &rest[close + 1..];
            }
            path.push_str(rest);
            let req = axum::http::Request::builder()
                .method(r.method.to_ascii_uppercase().as_str())
                .uri(&path)
                .body(Body::empty())
                .unwrap();
            let resp = router(sealed_state()).oneshot(req).await.unwrap();
            assert_ne!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{r:?}");
        }
    }
}
