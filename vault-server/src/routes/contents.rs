//! Contents: which digests must be uploaded, and streamed uploads (with a one-step deposit).

use std::io;
use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{post, put};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use vault::{Digest, NewDocument};

use crate::http::body::{json_body, ChannelReader};
use crate::http::error::{json_response, ApiError, ApiResult};
use crate::http::extract::OwnerCall;
use crate::http::limits::{stream_slot, Stream};
use crate::http::routing::Route;
use crate::http::state::blocking;
use crate::openapi as oa;
use crate::routes::documents::doc_out;

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

/// The routes of this resource (see [`Route`]).
pub(crate) const ROUTES: &[Route] = &[
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
];
