//! Extractors of authenticated calls: [`Call`] (a verified token) and [`OwnerCall`] (plus the
//! path's `{owner}`).

use std::sync::Arc;

use axum::extract::Path;
use vault::access::Caller;
use vault::OwnerId;

use crate::http::error::ApiError;
use crate::http::state::AppState;

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
pub(crate) struct OwnerCall {
    pub(crate) st: Arc<AppState>,
    pub(crate) caller: Caller,
    pub(crate) owner: OwnerId,
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
