//! An owner as a whole: the access log (entries, leaves, proofs), the export and erasure.

use std::io;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use vault::access::Caller;
use vault::OwnerId;

use crate::http::body::{json_body, ChannelWriter};
use crate::http::error::{json_response, ApiError, ApiResult};
use crate::http::extract::OwnerCall;
use crate::http::limits::{stream_slot, Stream};
use crate::http::routing::Route;
use crate::http::state::{blocking, AppState};
use crate::openapi as oa;
use crate::routes::audit::u64_param;

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
    path = "/v1/owners/{owner}/export",
    tag = "owners",
    params(oa::OwnerPath),
    responses((status = 200, description = "Everything of the owner, a tar", body = oa::Binary, content_type = "application/x-tar"))
)]
async fn export(OwnerCall { st, caller, owner }: OwnerCall) -> ApiResult {
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], export_body(&st, caller, owner).await?).into_response())
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

/// The routes of this resource (see [`Route`]).
pub(crate) const ROUTES: &[Route] = &[
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
];
