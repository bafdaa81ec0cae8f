//! Agencies (issuers and consumers) registered by the operator.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use serde_json::json;
use vault::engine::provenance::{Agency, NewAgency};
use vault::AgencyId;

use crate::http::body::json_body;
use crate::http::error::{json_response, ApiError, ApiResult};
use crate::http::extract::Call;
use crate::http::routing::Route;
use crate::http::state::{blocking, AppState};
use crate::openapi as oa;

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

/// The routes of this resource (see [`Route`]).
pub(crate) const ROUTES: &[Route] = &[
    Route {
        method: "put",
        path: "/v1/agencies/{agency}",
        summary: "Register or replace an agency (the operator)",
        handler: || put(put_agency),
    },
    Route { method: "get", path: "/v1/agencies", summary: "Registered agencies", handler: || get(list_agencies) },
    Route { method: "get", path: "/v1/agencies/{agency}", summary: "One agency", handler: || get(get_agency) },
];
