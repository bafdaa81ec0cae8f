//! `vault-server` as a library: the HTTP contract ([`api`]) and token verification ([`auth`]),
//! used by the `vault-server` binary and by the fuzz targets (`fuzz/`).

pub mod api;
pub mod auth;
pub mod batch;
pub mod openapi;
pub mod page;
pub mod stats;
pub mod webhooks;

/// Fuzzing entry point (`fuzz/fuzz_targets/batch_tar.rs`): reads a batch-deposit body exactly
/// as `POST /v1/owners/{owner}/deposits` does, with `max` as the content limit. Returns the
/// number of items, or the status the request would be refused with.
#[doc(hidden)]
pub fn fuzz_batch(body: &[u8], max: u64) -> Result<usize, u16> {
    use axum::response::IntoResponse as _;
    batch::items(body, max, api::MAX_BATCH_ITEMS)
        .map(|items| items.len())
        .map_err(|e| api::ApiError::from(e).into_response().status().as_u16())
}
