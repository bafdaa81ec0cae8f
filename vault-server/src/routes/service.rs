//! Service endpoints: the vault's signing key, liveness, readiness, metrics and `/openapi.json`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::http::error::{json_response, ApiError, ApiResult};
use crate::http::metrics::BUCKETS;
use crate::http::routing::Route;
use crate::http::state::AppState;
use crate::openapi as oa;

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
    let mut out = crate::routes::stats::prometheus(&reuse);
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

/// The OpenAPI 3.1 document, generated from the handlers' annotations (see [`crate::openapi`]).
pub fn openapi() -> Value {
    crate::openapi::document()
}

/// The routes of this resource (see [`Route`]).
pub(crate) const ROUTES: &[Route] = &[
    Route { method: "get", path: "/v1/vault-key", summary: "The vault's signing key", handler: || get(vault_key) },
    Route { method: "get", path: "/healthz", summary: "Liveness", handler: || get(healthz) },
    Route { method: "get", path: "/readyz", summary: "Readiness", handler: || get(readyz) },
    Route { method: "get", path: "/metrics", summary: "Prometheus metrics", handler: || get(metrics) },
    Route { method: "get", path: "/openapi.json", summary: "This document", handler: || get(openapi_json) },
];
