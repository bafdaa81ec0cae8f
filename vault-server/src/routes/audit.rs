//! The public audit log: the signed checkpoint, inclusion and consistency proofs, and tiles.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::json;

use crate::http::error::{json_response, ApiError, ApiResult};
use crate::http::routing::Route;
use crate::http::state::{blocking, AppState};
use crate::openapi as oa;

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
pub(crate) fn u64_param(q: &std::collections::HashMap<String, String>, name: &str) -> Result<u64, ApiError> {
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

/// The routes of this resource (see [`Route`]).
pub(crate) const ROUTES: &[Route] = &[
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
];

#[cfg(test)]
mod tests {
    use super::*;

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
}
