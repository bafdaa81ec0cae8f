//! `GET /v1/stats/reuse` (JSON, or CSV for the national monitoring system) and the reuse
//! totals of `/metrics` (SPEC.md §23).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse as _;
use axum::routing::get;
use vault::engine::stats::{Counters, Day, GroupBy};

use crate::http::error::{json_response, ApiError, ApiResult};
use crate::http::routing::Route;
use crate::http::state::{blocking, AppState};

/// `?from=&to=&by=&format=` of the reuse statistics.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// First day counted (UTC), `YYYY-MM-DD`, inclusive; default: the first day with counts.
    #[param(format = Date)]
    pub from: Option<String>,
    /// Last day counted (UTC), `YYYY-MM-DD`, inclusive; default: today.
    #[param(format = Date)]
    pub to: Option<String>,
    /// Grouping of the rows (default `procedure`).
    pub by: Option<GroupBy>,
    /// `json` (default) or `csv`; `Accept: text/csv` also asks for CSV.
    #[param(pattern = "^(json|csv)$")]
    pub format: Option<String>,
}

fn day(q: &HashMap<String, String>, name: &str) -> Result<Option<Day>, ApiError> {
    q.get(name).map(|s| Day::parse(s)).transpose().map_err(ApiError::from)
}

/// Reuse statistics: aggregates only (the operator: all; an agency: what it did).
#[utoipa::path(
    get,
    path = "/v1/stats/reuse",
    tag = "stats",
    params(StatsQuery),
    responses(
        (status = 200, description = "Aggregates by the grouping asked (CSV with `Accept: text/csv` or `format=csv`: \
         a header `<by>,reuse_checks,…` and one line per row)", body = vault::engine::stats::Report,
         content_type = "application/json"),
    )
)]
async fn reuse_stats(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult {
    let caller = st.caller(&headers)?;
    let by = GroupBy::parse(q.get("by").map_or("procedure", String::as_str))?;
    let (from, to) = (day(&q, "from")?, day(&q, "to")?);
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(vault::Error::InvalidRequest("from must not be after to".into()).into());
        }
    }
    let accept_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.split(',').any(|m| m.trim().to_ascii_lowercase().starts_with("text/csv")));
    let csv = match q.get("format").map(String::as_str) {
        None => accept_csv,
        Some("csv") => true,
        Some("json") => false,
        Some(_) => return Err(vault::Error::InvalidRequest("format must be json or csv".into()).into()),
    };
    let v = st.vault()?;
    let report =
        blocking(move || v.reuse_stats_as(&caller, vault::engine::stats::Query { from, to, by, agency: None })).await?;
    if csv {
        let name = format!("attachment; filename=\"reuse-{}-{}-{}.csv\"", by.as_str(), report.from, report.to);
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, name)],
            report.to_csv(),
        )
            .into_response())
    } else {
        Ok(json_response(StatusCode::OK, &report))
    }
}

/// The reuse totals as Prometheus counters: a fixed set of series (five statuses).
pub(crate) fn prometheus(c: &Counters) -> String {
    let mut out = String::from(
        "# HELP vault_reuse_checks_total Reuse checks answered.\n# TYPE vault_reuse_checks_total counter\n",
    );
    out.push_str(&format!("vault_reuse_checks_total {}\n", c.reuse_checks));
    out.push_str(
        "# HELP vault_reuse_components_total Components of reuse checks, by answer.\n# TYPE vault_reuse_components_total counter\n",
    );
    for (status, n) in [
        ("held", c.held),
        ("missing", c.missing),
        ("expired", c.expired),
        ("revoked", c.revoked),
        ("not_granted", c.not_granted),
    ] {
        out.push_str(&format!("vault_reuse_components_total{{status=\"{status}\"}} {n}\n"));
    }
    out.push_str(&format!(
        "# HELP vault_reuse_content_reads_total Document contents served.\n# TYPE vault_reuse_content_reads_total counter\nvault_reuse_content_reads_total {}\n\
         # HELP vault_dedup_bytes_not_uploaded_total Bytes not uploaded thanks to dedup.\n# TYPE vault_dedup_bytes_not_uploaded_total counter\nvault_dedup_bytes_not_uploaded_total {}\n",
        c.content_reads, c.bytes_not_uploaded
    ));
    out
}

/// Folds the reuse tallies into their day rollups every `every` (SPEC.md §23), so that a query
/// reads rollups, not a day's worth of tallies.
pub async fn fold_every(vault: Arc<vault::Vault>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !crate::runs_background_work(&vault).await {
            continue;
        }
        let v = vault.clone();
        match tokio::task::spawn_blocking(move || v.fold_reuse_stats()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "folding the reuse statistics failed"),
            Err(e) => tracing::error!(error = %e, "folding the reuse statistics failed"),
        }
    }
}

/// The routes of this resource (see [`Route`]).
pub(crate) const ROUTES: &[Route] = &[Route {
    method: "get",
    path: "/v1/stats/reuse",
    summary: "Reuse statistics (?from=&to=&by=procedure|agency|doc_type|month; CSV)",
    handler: || get(reuse_stats),
}];
