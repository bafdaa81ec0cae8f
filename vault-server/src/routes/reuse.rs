//! The reuse check for a procedure's document types.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serde_json::json;
use vault::access::Component;
use vault::{DocType, Purpose, Timestamp};

use crate::http::body::json_body;
use crate::http::error::{json_response, ApiResult};
use crate::http::extract::OwnerCall;
use crate::http::routing::Route;
use crate::http::state::blocking;
use crate::openapi as oa;
use crate::routes::documents::{doc_out, DocOut};

#[derive(Serialize)]
struct ComponentOut<'a> {
    doc_type: &'a DocType,
    status: vault::access::ReuseStatus,
    document: Option<DocOut<'a>>,
}

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

/// The routes of this resource (see [`Route`]).
pub(crate) const ROUTES: &[Route] = &[Route {
    method: "post",
    path: "/v1/owners/{owner}/reuse",
    summary: "Reuse check for a procedure's document types",
    handler: || post(reuse),
}];
