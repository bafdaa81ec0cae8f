//! `vault-server` as a library: the transport layer ([`http`], with token verification in
//! [`http::auth`]) and the HTTP contract, one file per resource ([`routes`]), used by the
//! `vault-server` binary and by the fuzz targets (`fuzz/`).

pub mod http;
pub mod openapi;
pub mod page;
pub mod routes;
pub mod webhooks;

/// Fuzzing entry point (`fuzz/fuzz_targets/batch_tar.rs`): reads a batch-deposit body exactly
/// as `POST /v1/owners/{owner}/deposits` does, with `max` as the content limit. Returns the
/// number of items, or the status the request would be refused with.
#[doc(hidden)]
pub fn fuzz_batch(body: &[u8], max: u64) -> Result<usize, u16> {
    use axum::response::IntoResponse as _;
    http::batch::items(body, max, routes::documents::MAX_BATCH_ITEMS)
        .map(|items| items.len())
        .map_err(|e| http::ApiError::from(e).into_response().status().as_u16())
}

/// Whether this instance runs the periodic work now (expiries, sweeps, statistics, webhook
/// delivery): of the instances sharing one metadata store, the one holding the store's
/// background lease; always, on the embedded store (SPEC.md §9a "Several instances").
pub async fn runs_background_work(vault: &std::sync::Arc<vault::Vault>) -> bool {
    if !vault.shared_store() {
        return true;
    }
    let v = vault.clone();
    match tokio::task::spawn_blocking(move || v.background_lease()).await {
        Ok(Ok(held)) => held,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot check the background lease");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot check the background lease");
            false
        }
    }
}
