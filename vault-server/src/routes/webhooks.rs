//! Webhook subscriptions (SPEC.md §24), managed by the operator: subscribe, look up,
//! unsubscribe, and the parked events of a subscription (list, redeliver). The delivery worker
//! is [`crate::webhooks`].

use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post, put};
use serde_json::json;
use vault::engine::events::{EventId, NewWebhook, WebhookId};
use vault::AgencyId;

use crate::http::body::json_body_limited;
use crate::http::error::{json_response, ApiError, ApiResult};
use crate::http::extract::Call;
use crate::http::routing::Route;
use crate::http::state::blocking;
use crate::openapi as oa;

/// Largest subscription body accepted.
pub const MAX_WEBHOOK_BODY: usize = 16 * 1024;

fn ids(agency: &str, id: &str) -> Result<(AgencyId, WebhookId), ApiError> {
    let a = AgencyId::parse(agency).map_err(|e| ApiError::invalid(e.to_string()))?;
    let w = WebhookId::parse(id).map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok((a, w))
}

/// Subscribe an agency (the operator).
#[utoipa::path(
    put,
    path = "/v1/agencies/{agency}/webhooks/{id}",
    tag = "webhooks",
    params(oa::WebhookPath),
    request_body(content = vault::engine::events::NewWebhook, content_type = "application/json"),
    responses(
        (status = 201, description = "Subscribed", body = vault::engine::events::WebhookView),
        (status = 200, description = "Replaced", body = vault::engine::events::WebhookView),
    )
)]
async fn put_webhook(
    Call { st, caller }: Call,
    Path((agency, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (agency, id) = ids(&agency, &id)?;
    let v = st.vault()?;
    // Only the operator's body is read: anyone else gets 403 whatever they send.
    let (w, c) = (v.clone(), caller.clone());
    blocking(move || w.may_put_webhook_as(&c)).await?;
    let new: NewWebhook = json_body_limited(&headers, body, MAX_WEBHOOK_BODY).await?;
    let policy = st.webhooks.policy;
    let (view, created) = blocking(move || {
        let (_, created) = v.put_webhook_as(&caller, &agency, &id, new, &policy)?;
        Ok((v.webhook_as(&caller, &agency, &id)?, created))
    })
    .await?;
    Ok(json_response(if created { StatusCode::CREATED } else { StatusCode::OK }, &view))
}

/// One subscription, its verifying key and outbox counts (the operator).
#[utoipa::path(
    get,
    path = "/v1/agencies/{agency}/webhooks/{id}",
    tag = "webhooks",
    params(oa::WebhookPath),
    responses((status = 200, description = "The subscription", body = vault::engine::events::WebhookView))
)]
async fn get_webhook(Call { st, caller }: Call, Path((agency, id)): Path<(String, String)>) -> ApiResult {
    let (agency, id) = ids(&agency, &id)?;
    let v = st.vault()?;
    let view = blocking(move || v.webhook_as(&caller, &agency, &id)).await?;
    Ok(json_response(StatusCode::OK, &view))
}

/// Unsubscribe; waiting and parked events of the subscription go too (the operator).
#[utoipa::path(
    delete,
    path = "/v1/agencies/{agency}/webhooks/{id}",
    tag = "webhooks",
    params(oa::WebhookPath),
    responses((status = 204, description = "Deleted"))
)]
async fn delete_webhook(Call { st, caller }: Call, Path((agency, id)): Path<(String, String)>) -> ApiResult {
    let (agency, id) = ids(&agency, &id)?;
    let v = st.vault()?;
    blocking(move || v.delete_webhook_as(&caller, &agency, &id)).await?;
    Ok(axum::response::IntoResponse::into_response(StatusCode::NO_CONTENT))
}

/// Parked events: failed for the whole retry window (the operator).
#[utoipa::path(
    get,
    path = "/v1/agencies/{agency}/webhooks/{id}/failed",
    tag = "webhooks",
    params(oa::WebhookPath, oa::FailedQuery),
    responses((status = 200, description = "The parked events, oldest first, paged", body = oa::FailedEvents))
)]
async fn failed_events(
    Call { st, caller }: Call,
    Path((agency, id)): Path<(String, String)>,
    q: Result<
        axum::extract::Query<std::collections::HashMap<String, String>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> ApiResult {
    let (agency, id) = ids(&agency, &id)?;
    let axum::extract::Query(q) = q.map_err(|_| ApiError::invalid("a malformed query string"))?;
    let after = match q.get("after") {
        Some(a) => {
            Some(vault::engine::events::EventId::parse(a).map_err(|e| ApiError::invalid(format!("after: {e}")))?)
        }
        None => None,
    };
    let limit = match q.get("limit") {
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::invalid("limit: a whole number from 1 to 1000"))?,
        None => 100,
    };
    let v = st.vault()?;
    let (events, next) = blocking(move || v.failed_events_as(&caller, &agency, &id, after.as_ref(), limit)).await?;
    Ok(json_response(StatusCode::OK, &json!({"events": events, "next": next})))
}

/// Put a parked event back in the outbox for a fresh retry window, same event id (the operator).
#[utoipa::path(
    post,
    path = "/v1/agencies/{agency}/webhooks/{id}/failed/{event}/redeliver",
    tag = "webhooks",
    params(oa::RedeliverPath),
    responses((status = 202, description = "Queued again", body = vault::engine::events::Delivery))
)]
async fn redeliver(Call { st, caller }: Call, Path((agency, id, event)): Path<(String, String, String)>) -> ApiResult {
    let (agency, id) = ids(&agency, &id)?;
    let event = EventId::parse(&event).map_err(|_| ApiError::not_found())?;
    let v = st.vault()?;
    let d = blocking(move || v.redeliver_as(&caller, &agency, &id, &event)).await?;
    Ok(json_response(StatusCode::ACCEPTED, &d))
}

/// The routes of this resource (see [`Route`]).
pub(crate) const ROUTES: &[Route] = &[
    Route {
        method: "put",
        path: "/v1/agencies/{agency}/webhooks/{id}",
        summary: "Subscribe the agency to events (the operator)",
        handler: || put(put_webhook),
    },
    Route {
        method: "get",
        path: "/v1/agencies/{agency}/webhooks/{id}",
        summary: "One subscription, its verifying key and outbox counts",
        handler: || get(get_webhook),
    },
    Route {
        method: "delete",
        path: "/v1/agencies/{agency}/webhooks/{id}",
        summary: "Unsubscribe (waiting and parked events go too)",
        handler: || delete(delete_webhook),
    },
    Route {
        method: "get",
        path: "/v1/agencies/{agency}/webhooks/{id}/failed",
        summary: "Parked events of a subscription",
        handler: || get(failed_events),
    },
    Route {
        method: "post",
        path: "/v1/agencies/{agency}/webhooks/{id}/failed/{event}/redeliver",
        summary: "Queue a parked event again (same event id, fresh retry window)",
        handler: || post(redeliver),
    },
];
