//! Consent grants: the owner's grants, and the grants given to the calling agency.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use serde::Serialize;
use serde_json::json;
use vault::engine::grants::{Grant, NewGrant};
use vault::{GrantId, Timestamp};

use crate::http::body::json_body;
use crate::http::error::{json_response, ApiError, ApiResult};
use crate::http::extract::{Call, OwnerCall};
use crate::http::routing::Route;
use crate::http::state::blocking;
use crate::openapi as oa;

#[derive(Serialize)]
struct GrantOut<'a> {
    #[serde(flatten)]
    grant: &'a Grant,
    status: vault::engine::grants::GrantStatus,
}

fn grant_out(g: &Grant) -> GrantOut<'_> {
    GrantOut { grant: g, status: g.status(Timestamp::now()) }
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

/// The routes of this resource (see [`Route`]).
pub(crate) const ROUTES: &[Route] = &[
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
];
