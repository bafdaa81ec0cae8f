//! The signed-in pages: My documents, Sharing, Access log, My data (export, erase).
//!
//! Each handler makes exactly the library calls the matching API handlers make, as the owner;
//! SPEC.md §22 lists which audit entries each page writes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use vault::engine::grants::{Grant, GrantStatus, NewGrant};
use vault::{AgencyId, DocType, Document, DocumentId, GrantId, Purpose, Status, Timestamp};

use super::i18n::{end_of_local_day, start_of_local_day, K};
use super::{Ctx, PageState};
use crate::http::ApiError;

/// Access-log entries per page.
const LOG_PAGE: u64 = 50;

pub(super) fn routes() -> Router<Arc<PageState>> {
    Router::new()
        .route("/page/documents", get(documents))
        .route("/page/documents/{id}", get(document))
        .route("/page/documents/{id}/content", get(content))
        .route("/page/documents/{id}/delete", post(delete))
        .route("/page/sharing", get(sharing))
        .route("/page/sharing/review", post(review))
        .route("/page/sharing/confirm", post(confirm))
        .route("/page/sharing/{id}/receipt", get(receipt))
        .route("/page/sharing/{id}/revoke", post(revoke))
        .route("/page/access-log", get(access_log))
        .route("/page/account", get(account))
        .route("/page/export", post(export))
        .route("/page/erase", post(erase))
}

/// Runs blocking library work off the async threads; errors map as in the API.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, vault::Error> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::from(vault::Error::Corrupt(format!("task failed: {e}")))),
    }
}

/// A submitted form (`application/x-www-form-urlencoded`), keeping repeated names.
struct FormData(Vec<(String, String)>);

impl FormData {
    fn parse(body: &Bytes) -> Self {
        let text = String::from_utf8_lossy(body);
        let pairs = reqwest::Url::parse(&format!("http://x/?{text}"))
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default();
        Self(pairs)
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
    fn all<'a>(&'a self, k: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(n, _)| n == k).map(|(_, v)| v.as_str())
    }
}

fn query(uri: &axum::http::Uri) -> FormData {
    FormData::parse(&Bytes::copy_from_slice(uri.query().unwrap_or("").as_bytes()))
}

fn csrf_field(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf()); }
}

fn status_text(ctx: &Ctx, s: Status) -> &'static str {
    ctx.t(match s {
        Status::Valid => K::Valid,
        Status::Expired => K::Expired,
        Status::Revoked => K::Revoked,
        Status::NotYetValid => K::NotYetValid,
    })
}

fn grant_status_text(ctx: &Ctx, s: GrantStatus) -> &'static str {
    ctx.t(match s {
        GrantStatus::Active => K::Active,
        GrantStatus::Revoked => K::Revoked,
        GrantStatus::Expired => K::Expired,
        GrantStatus::Exhausted => K::Exhausted,
    })
}

/// Agency names by id (the registry; not an audited read, as `GET /v1/agencies` is not).
async fn agency_names(ctx: &Ctx) -> Vec<(AgencyId, String)> {
    let Ok(v) = ctx.st.app.vault() else { return Vec::new() };
    blocking(move || v.agencies()).await.map(|a| a.into_iter().map(|a| (a.id, a.name)).collect()).unwrap_or_default()
}

fn name_of(names: &[(AgencyId, String)], id: &str) -> String {
    names.iter().find(|(a, _)| a.as_str() == id).map(|(_, n)| n.clone()).unwrap_or_else(|| id.to_owned())
}

fn provenance(ctx: &Ctx, d: &Document, names: &[(AgencyId, String)]) -> Markup {
    match (&d.meta.issuer, d.verified) {
        (Some(a), true) => {
            html! { span.ok { (ctx.t(K::SignedBy)) " " (name_of(names, a.as_str())) ", " (ctx.t(K::Verified)) } }
        }
        _ => html! { span { (ctx.t(K::OwnUpload)) } },
    }
}

fn validity(ctx: &Ctx, d: &Document) -> String {
    match (d.meta.valid_from, d.meta.valid_until) {
        (None, None) => "—".into(),
        (f, u) => format!(
            "{} – {}",
            f.map(|t| ctx.lang.date(t)).unwrap_or_default(),
            u.map(|t| ctx.lang.date(t)).unwrap_or_default()
        ),
    }
}

async fn documents(ctx: Ctx) -> Response {
    let Some((owner, caller)) = ctx.owner() else { return ctx.signed_out() };
    let Ok(v) = ctx.st.app.vault() else { return ctx.error(StatusCode::SERVICE_UNAVAILABLE, ctx.t(K::Unavailable)) };
    let docs = match blocking(move || v.documents_as(&caller, &owner, None)).await {
        Ok(d) => d,
        Err(e) => return ctx.vault_error(e),
    };
    let names = agency_names(&ctx).await;
    let now = Timestamp::now();
    let body = html! {
        @if docs.is_empty() { p { (ctx.t(K::NoDocuments)) } }
        @else {
            table {
                thead { tr {
                    th { (ctx.t(K::Type)) } th { (ctx.t(K::Title)) } th { (ctx.t(K::Issuer)) }
                    th { (ctx.t(K::Validity)) } th { (ctx.t(K::Status)) } th { (ctx.t(K::Details)) }
                } }
                tbody {
                    @for d in &docs {
                        tr {
                            td data-label=(ctx.t(K::Type)) { (d.meta.doc_type.as_str()) }
                            td data-label=(ctx.t(K::Title)) { (d.meta.title) }
                            td data-label=(ctx.t(K::Issuer)) { (provenance(&ctx, d, &names)) }
                            td data-label=(ctx.t(K::Validity)) { (validity(&ctx, d)) }
                            td data-label=(ctx.t(K::Status)) { (status_text(&ctx, d.status(now))) }
                            td { a href={ "/page/documents/" (d.id.to_string()) } { (ctx.t(K::Details)) span.hint { " — " (d.meta.title) } } }
                        }
                    }
                }
            }
        }
    };
    ctx.page(StatusCode::OK, ctx.t(K::MyDocuments), body)
}

async fn document(ctx: Ctx, Path(id): Path<String>) -> Response {
    let Some((owner, caller)) = ctx.owner() else { return ctx.signed_out() };
    let Ok(id) = DocumentId::parse(&id) else { return ctx.error(StatusCode::NOT_FOUND, ctx.t(K::NotFound)) };
    let Ok(v) = ctx.st.app.vault() else { return ctx.error(StatusCode::SERVICE_UNAVAILABLE, ctx.t(K::Unavailable)) };
    let d = match blocking(move || v.document_as(&caller, &owner, &id)).await {
        Ok(d) => d,
        Err(e) => return ctx.vault_error(e),
    };
    let names = agency_names(&ctx).await;
    let m = &d.meta;
    let body = html! {
        dl {
            dt { (ctx.t(K::Type)) } dd { (m.doc_type.as_str()) }
            dt { (ctx.t(K::Issuer)) } dd { (provenance(&ctx, &d, &names)) }
            dt { (ctx.t(K::Status)) } dd { (status_text(&ctx, d.status(Timestamp::now()))) }
            dt { (ctx.t(K::Validity)) } dd { (validity(&ctx, &d)) }
            @if let Some(t) = m.issued_at { dt { (ctx.t(K::IssuedAt)) } dd { (ctx.lang.datetime(t)) } }
            @if let Some(r) = &m.reference { dt { (ctx.t(K::Reference)) } dd { (r) } }
            @if let Some(p) = &m.procedure { dt { (ctx.t(K::ProcedureCode)) } dd { (p.as_str()) } }
            dt { (ctx.t(K::MediaType)) } dd { (m.media_type) }
            dt { (ctx.t(K::Size)) } dd { (d.size) }
            dt { (ctx.t(K::ContentDigest)) } dd { code { (m.digest.to_string()) } }
            dt { (ctx.t(K::DepositedAt)) } dd { (ctx.lang.datetime(d.deposited_at)) }
            @if let Some(r) = &d.revocation { dt { (ctx.t(K::Revoked)) } dd { (ctx.lang.datetime(r.at)) ": " (r.reason) } }
        }
        p { a href={ "/page/documents/" (d.id.to_string()) "/content?view=1" } { (ctx.t(K::View)) } }
        form method="get" action={ "/page/documents/" (d.id.to_string()) "/content" } {
            button type="submit" { (ctx.t(K::Download)) }
        }
        @if !d.verified && m.issuer.is_none() {
            form method="post" action={ "/page/documents/" (d.id.to_string()) "/delete" } {
                (csrf_field(&ctx))
                button.danger type="submit" { (ctx.t(K::Delete)) }
            }
        }
    };
    ctx.page(StatusCode::OK, &d.meta.title, body)
}

/// A file name safe in a `Content-Disposition` header: ASCII letters, digits, `.-_` only.
fn safe_name(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || ".-_".contains(c) { c } else { '_' }).collect();
    let s = s.trim_matches('.').to_owned();
    if s.is_empty() {
        "document".into()
    } else {
        s.chars().take(100).collect()
    }
}

/// Media types a browser shows without running anything: only these are shown inline.
const INLINE_TYPES: &[&str] = &["application/pdf", "image/png", "image/jpeg", "image/gif", "image/webp", "text/plain"];

/// Whether `media_type` may be shown inline (`?view=1`); anything else always downloads.
fn viewable(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    INLINE_TYPES.contains(&essence.as_str())
}

/// `?view=1` shows the content in the browser (`inline`) when its type is one a browser shows
/// without running anything (`INLINE_TYPES`), otherwise it downloads; either way it is
/// sandboxed, loads nothing and is never sniffed or framed, so it cannot run as active content
/// on the page's origin. Streamed under the caller's download slot, as the API's contents.
async fn content(ctx: Ctx, Path(id): Path<String>, uri: axum::http::Uri) -> Response {
    let view = query(&uri).get("view") == Some("1");
    let Some((owner, caller)) = ctx.owner() else { return ctx.signed_out() };
    let Ok(id) = DocumentId::parse(&id) else { return ctx.error(StatusCode::NOT_FOUND, ctx.t(K::NotFound)) };
    let (doc, body) = match crate::routes::documents::content_body(&ctx.st.app, caller, owner, id).await {
        Ok(x) => x,
        Err(e) => return ctx.vault_error(e),
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&doc.meta.media_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    // Never active content on the page's origin: no script, no form, no fetch, no frame.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(doc.size));
    let name = safe_name(doc.meta.file_name.as_deref().unwrap_or(&doc.meta.title));
    let disposition = if view && viewable(&doc.meta.media_type) { "inline" } else { "attachment" };
    if let Ok(v) = HeaderValue::from_str(&format!("{disposition}; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

async fn delete(ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let f = FormData::parse(&body);
    if !ctx.csrf_ok(f.get("csrf")) {
        return ctx.csrf_refused();
    }
    let Some((owner, caller)) = ctx.owner() else { return ctx.signed_out() };
    let Ok(id) = DocumentId::parse(&id) else { return ctx.error(StatusCode::NOT_FOUND, ctx.t(K::NotFound)) };
    let Ok(v) = ctx.st.app.vault() else { return ctx.error(StatusCode::SERVICE_UNAVAILABLE, ctx.t(K::Unavailable)) };
    match blocking(move || v.delete_as(&caller, &owner, &id)).await {
        Ok(()) => Redirect::to("/page/documents").into_response(),
        Err(e) => ctx.vault_error(e),
    }
}

// ---------------------------------------------------------------- sharing

async fn sharing(ctx: Ctx) -> Response {
    let Some((owner, caller)) = ctx.owner() else { return ctx.signed_out() };
    let Ok(v) = ctx.st.app.vault() else { return ctx.error(StatusCode::SERVICE_UNAVAILABLE, ctx.t(K::Unavailable)) };
    let (o2, c2, v2) = (owner.clone(), caller.clone(), v.clone());
    let grants = match blocking(move || v.grants_as(&caller, &owner)).await {
        Ok(g) => g,
        Err(e) => return ctx.vault_error(e),
    };
    let docs = match blocking(move || v2.documents_as(&c2, &o2, None)).await {
        Ok(d) => d,
        Err(e) => return ctx.vault_error(e),
    };
    let names = agency_names(&ctx).await;
    let now = Timestamp::now();
    let body = html! {
        h2 { (ctx.t(K::Grants)) }
        @if grants.is_empty() { p { (ctx.t(K::NoGrants)) } }
        @else {
            table {
                thead { tr {
                    th { (ctx.t(K::Agency)) } th { (ctx.t(K::ProcedureCode)) } th { (ctx.t(K::ExpiresOn)) }
                    th { (ctx.t(K::Status)) } th { (ctx.t(K::Uses)) } th { (ctx.t(K::Receipt)) } th { (ctx.t(K::Revoke)) }
                } }
                tbody {
                    @for g in &grants { (grant_row(&ctx, g, &names, now)) }
                }
            }
        }
        h2 { (ctx.t(K::NewGrant)) }
        form method="post" action="/page/sharing/review" {
            (csrf_field(&ctx))
            label for="grantee" { (ctx.t(K::Agency)) }
            select #grantee name="grantee" required {
                @for (id, name) in &names { option value=(id.as_str()) { (name) } }
            }
            label for="purpose" { (ctx.t(K::ProcedureCode)) }
            input #purpose name="purpose" required placeholder="1.001193";
            label for="purpose_text" { (ctx.t(K::Purpose)) }
            textarea #purpose_text name="purpose_text" rows="2" {}
            label for="doc_types" { (ctx.t(K::DocumentTypes)) }
            input #doc_types name="doc_types" aria-describedby="doc_types_hint";
            p #doc_types_hint.hint { (ctx.t(K::DocumentTypesHint)) }
            @if !docs.is_empty() {
                fieldset {
                    legend { (ctx.t(K::Documents)) }
                    @for d in &docs {
                        div {
                            input type="checkbox" name="documents" value=(d.id.to_string()) id={ "doc-" (d.id.to_string()) };
                            label.inline for={ "doc-" (d.id.to_string()) } { (d.meta.title) " (" (d.meta.doc_type.as_str()) ")" }
                        }
                    }
                }
            }
            label for="expires" { (ctx.t(K::ExpiresOn)) }
            input #expires type="date" name="expires" required;
            label for="max_uses" { (ctx.t(K::MaximumUses)) }
            input #max_uses type="number" name="max_uses" min="1";
            button type="submit" { (ctx.t(K::Share)) }
        }
    };
    ctx.page(StatusCode::OK, ctx.t(K::Sharing), body)
}

fn grant_row(ctx: &Ctx, g: &Grant, names: &[(AgencyId, String)], now: Timestamp) -> Markup {
    let s = g.status(now);
    let id = g.id.to_string();
    let label = format!("{} — {}", name_of(names, g.terms.grantee.as_str()), g.terms.purpose.as_str());
    html! {
        tr {
            td data-label=(ctx.t(K::Agency)) { (name_of(names, g.terms.grantee.as_str())) }
            td data-label=(ctx.t(K::ProcedureCode)) { (g.terms.purpose.as_str()) br; span.hint { (g.terms.purpose_text) } }
            td data-label=(ctx.t(K::ExpiresOn)) { (ctx.lang.datetime(g.terms.expires_at)) }
            td data-label=(ctx.t(K::Status)) { (grant_status_text(ctx, s)) }
            td data-label=(ctx.t(K::Uses)) {
                (g.uses) " / " @if let Some(m) = g.terms.max_uses { (m) } @else { (ctx.t(K::Unlimited)) }
            }
            td { a href={ "/page/sharing/" (id) "/receipt" } { (ctx.t(K::Receipt)) span.hint { " — " (label) } } }
            td {
                @if s == GrantStatus::Active {
                    form.inline method="post" action={ "/page/sharing/" (id) "/revoke" } {
                        (csrf_field(ctx))
                        button.danger type="submit" aria-describedby={ "g-" (id) } { (ctx.t(K::Revoke)) }
                        span.hint id={ "g-" (id) } { " " (label) }
                    }
                }
            }
        }
    }
}

/// Reads the sharing form into grant terms (the review and the confirmation read the same).
fn terms_of(ctx: &Ctx, f: &FormData) -> Result<NewGrant, String> {
    let bad = |what: K| format!("{}: {}", ctx.t(K::Invalid), ctx.t(what));
    let grantee = AgencyId::parse(f.get("grantee").unwrap_or("").trim()).map_err(|_| bad(K::Agency))?;
    let purpose = Purpose::parse(f.get("purpose").unwrap_or("").trim()).map_err(|_| bad(K::ProcedureCode))?;
    let purpose_text = f.get("purpose_text").unwrap_or("").trim().to_owned();
    let doc_types = f
        .get("doc_types")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(DocType::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad(K::DocumentTypes))?;
    let documents =
        f.all("documents").map(DocumentId::parse).collect::<Result<Vec<_>, _>>().map_err(|_| bad(K::Documents))?;
    let expires_at = end_of_local_day(f.get("expires").unwrap_or("")).ok_or_else(|| bad(K::ExpiresOn))?;
    let max_uses = match f.get("max_uses").map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| bad(K::MaximumUses))?),
    };
    if doc_types.is_empty() && documents.is_empty() {
        return Err(bad(K::DocumentTypes));
    }
    Ok(NewGrant { grantee, purpose, purpose_text, doc_types, documents, expires_at, max_uses })
}

async fn review(ctx: Ctx, body: Bytes) -> Response {
    let f = FormData::parse(&body);
    if !ctx.csrf_ok(f.get("csrf")) {
        return ctx.csrf_refused();
    }
    let Some((owner, caller)) = ctx.owner() else { return ctx.signed_out() };
    let terms = match terms_of(&ctx, &f) {
        Ok(t) => t,
        Err(msg) => return ctx.error(StatusCode::BAD_REQUEST, &msg),
    };
    let Ok(v) = ctx.st.app.vault() else { return ctx.error(StatusCode::SERVICE_UNAVAILABLE, ctx.t(K::Unavailable)) };
    // The documents the grant would reach today, shown by title (one `document.list` entry).
    let docs = match blocking(move || v.documents_as(&caller, &owner, None)).await {
        Ok(d) => d,
        Err(e) => return ctx.vault_error(e),
    };
    let reached: Vec<&Document> =
        docs.iter().filter(|d| terms.documents.contains(&d.id) || terms.doc_types.contains(&d.meta.doc_type)).collect();
    let names = agency_names(&ctx).await;
    let body = html! {
        p { (ctx.t(K::ReviewIntro)) }
        dl {
            dt { (ctx.t(K::Agency)) } dd { (name_of(&names, terms.grantee.as_str())) " (" (terms.grantee.as_str()) ")" }
            dt { (ctx.t(K::ProcedureCode)) } dd { (terms.purpose.as_str()) }
            dt { (ctx.t(K::Purpose)) } dd { (terms.purpose_text) }
            dt { (ctx.t(K::DocumentTypes)) } dd { (terms.doc_types.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")) }
            dt { (ctx.t(K::Reaches)) } dd { ul { @for d in &reached { li { (d.meta.title) " (" (d.meta.doc_type.as_str()) ")" } } } }
            dt { (ctx.t(K::ExpiresOn)) } dd { (ctx.lang.datetime(terms.expires_at)) }
            dt { (ctx.t(K::MaximumUses)) } dd { @if let Some(m) = terms.max_uses { (m) } @else { (ctx.t(K::Unlimited)) } }
        }
        form method="post" action="/page/sharing/confirm" {
            (csrf_field(&ctx))
            @for (k, v) in &f.0 {
                @if k != "csrf" { input type="hidden" name=(k) value=(v); }
            }
            button type="submit" { (ctx.t(K::Confirm)) }
        }
        p { a href="/page/sharing" { (ctx.t(K::Back)) } }
    };
    ctx.page(StatusCode::OK, ctx.t(K::Review), body)
}

async fn confirm(ctx: Ctx, body: Bytes) -> Response {
    let f = FormData::parse(&body);
    if !ctx.csrf_ok(f.get("csrf")) {
        return ctx.csrf_refused();
    }
    let Some((owner, caller)) = ctx.owner() else { return ctx.signed_out() };
    let terms = match terms_of(&ctx, &f) {
        Ok(t) => t,
        Err(msg) => return ctx.error(StatusCode::BAD_REQUEST, &msg),
    };
    let Ok(v) = ctx.st.app.vault() else { return ctx.error(StatusCode::SERVICE_UNAVAILABLE, ctx.t(K::Unavailable)) };
    match blocking(move || v.grant_as(&caller, &owner, terms)).await {
        Ok(_) => Redirect::to("/page/sharing").into_response(),
        Err(e) => ctx.vault_error(e),
    }
}

async fn receipt(ctx: Ctx, Path(id): Path<String>) -> Response {
    let Some((owner, caller)) = ctx.owner() else { return ctx.signed_out() };
    let Ok(id) = GrantId::parse(&id) else { return ctx.error(StatusCode::NOT_FOUND, ctx.t(K::NotFound)) };
    let Ok(v) = ctx.st.app.vault() else { return ctx.error(StatusCode::SERVICE_UNAVAILABLE, ctx.t(K::Unavailable)) };
    // As the API: the receipt is part of the owner's grant list (one `grant.list` entry).
    let grants = match blocking(move || v.grants_as(&caller, &owner)).await {
        Ok(g) => g,
        Err(e) => return ctx.vault_error(e),
    };
    let Some(g) = grants.into_iter().find(|g| g.id == id) else {
        return ctx.error(StatusCode::NOT_FOUND, ctx.t(K::NotFound));
    };
    let body = serde_json::to_vec_pretty(&g.receipt).unwrap_or_default();
    let name = format!("attachment; filename=\"consent-receipt-{}.json\"", g.id);
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&name) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

async fn revoke(ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let f = FormData::parse(&body);
    if !ctx.csrf_ok(f.get("csrf")) {
        return ctx.csrf_refused();
    }
    let Some((owner, caller)) = ctx.owner() else { return ctx.signed_out() };
    let Ok(id) = GrantId::parse(&id) else { return ctx.error(StatusCode::NOT_FOUND, ctx.t(K::NotFound)) };
    let Ok(v) = ctx.st.app.vault() else { return ctx.error(StatusCode::SERVICE_UNAVAILABLE, ctx.t(K::Unavailable)) };
    match blocking(move || v.revoke_grant_as(&caller, &owner, &id)).await {
        Ok(()) => Redirect::to("/page/sharing").into_response(),
        Err(e) => ctx.vault_error(e),
    }
}

// ---------------------------------------------------------------- access log

/// Whether every entry shown is proven: the server signs a checkpoint, verifies its own
/// signature on it, asks for the inclusion proof of each entry in that tree, and checks each
/// proof against the checkpoint's root and each leaf against the entry shown.
fn prove(
    v: &vault::Vault,
    caller: &vault::access::Caller,
    owner: &vault::OwnerId,
    entries: &[vault::log::audit::Entry],
) -> Result<bool, vault::Error> {
    let note = v.checkpoint()?;
    let Ok(verifier) = vault::log::note::NoteVerifier::parse(&v.signer().verifier_key()) else { return Ok(false) };
    let Ok(text) = verifier.verify(&note) else { return Ok(false) };
    let Ok((_, size, root)) = vault::log::note::parse_checkpoint(text) else { return Ok(false) };
    let indexes: Vec<u64> = entries.iter().map(|e| e.index).collect();
    if indexes.iter().any(|i| *i >= size) {
        return Ok(false);
    }
    let proofs = v.access_log_proofs_as(caller, owner, size, &indexes)?;
    if proofs.len() != entries.len() {
        return Ok(false);
    }
    Ok(proofs.iter().zip(entries).all(|(p, e)| {
        let leaf = String::from_utf8_lossy(&p.leaf);
        let fields_match = leaf.contains(&format!("\ntime:{}\n", e.time))
            && leaf.contains(&format!("\naction:{}\n", e.action))
            && leaf.contains(&format!("\noutcome:{}\n", e.outcome))
            && leaf.contains(&format!("\nactor:{}\n", e.actor));
        p.index == e.index
            && fields_match
            && vault::log::merkle::verify_inclusion(
                &vault::log::merkle::leaf_hash(&p.leaf),
                p.index,
                size,
                &p.hashes,
                &root,
            )
    }))
}

/// The access-log filter of a page: by agency, by local dates (inclusive).
#[derive(Debug, Default, Clone)]
struct LogFilter {
    agency: Option<AgencyId>,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
}

impl LogFilter {
    /// Reads `agency`, `from` and `to` (`YYYY-MM-DD`, Vietnam's days); empty means no filter.
    /// `None` when one is malformed or `from` is after `to`.
    fn parse(q: &FormData) -> Option<Self> {
        let given = |k| q.get(k).map(str::trim).filter(|v| !v.is_empty());
        let agency = match given("agency") {
            None => None,
            Some(a) => Some(AgencyId::parse(a).ok()?),
        };
        let from = match given("from") {
            None => None,
            Some(d) => Some(start_of_local_day(d)?),
        };
        let to = match given("to") {
            None => None,
            Some(d) => Some(end_of_local_day(d)?),
        };
        if let (Some(f), Some(t)) = (from, to) {
            if f > t {
                return None;
            }
        }
        Some(Self { agency, from, to })
    }

    fn matches(&self, e: &vault::log::audit::Entry) -> bool {
        self.agency.as_ref().is_none_or(|a| e.actor.strip_prefix("agency:") == Some(a.as_str()))
            && self.from.is_none_or(|f| e.time >= f)
            && self.to.is_none_or(|t| e.time <= t)
    }
}

/// Most entries one access-log page reads looking for ones that match its filter: a filter
/// that matches little shows fewer on a page and a "Next page" that searches on from there.
const LOG_SCAN: usize = 2_000;
/// How far (seconds) an entry's time may run ahead of a later entry's: a scan with `to` stops
/// at the first entry later than `to` by more than this.
const LOG_TIME_SLACK: i64 = 300;
/// Entries read from the library at a time while filtering.
const LOG_CHUNK: u64 = 500;

/// One page of the owner's log that matches `filter`: at most [`LOG_PAGE`] entries with an index
/// above `after`, and the `after` of the next page when the log may hold more.
fn filtered_page(
    v: &vault::Vault,
    caller: &vault::access::Caller,
    owner: &vault::OwnerId,
    after: Option<u64>,
    filter: &LogFilter,
) -> Result<(Vec<vault::log::audit::Entry>, Option<u64>), vault::Error> {
    scan_log(v, caller, owner, after, filter, ScanLimits { page: LOG_PAGE, scan: LOG_SCAN, chunk: LOG_CHUNK })
}

/// How much one access-log page shows, reads at most, and reads at a time.
#[derive(Debug, Clone, Copy)]
struct ScanLimits {
    page: u64,
    scan: usize,
    chunk: u64,
}

fn scan_log(
    v: &vault::Vault,
    caller: &vault::access::Caller,
    owner: &vault::OwnerId,
    after: Option<u64>,
    filter: &LogFilter,
    ScanLimits { page: page_size, scan, chunk }: ScanLimits,
) -> Result<(Vec<vault::log::audit::Entry>, Option<u64>), vault::Error> {
    let mut shown = Vec::new();
    let mut cursor = after;
    let mut scanned = 0usize;
    loop {
        let page = v.access_log_page_as(caller, owner, cursor, vault::log::audit::PageLimit::new(chunk)?)?;
        let read_before = scanned;
        let mut entries = page.entries.into_iter().peekable();
        while let Some(e) = entries.next() {
            scanned += 1;
            cursor = Some(e.index);
            // Entries come in index order, and their times follow it to within the time a call
            // waits to be sequenced: well past `to`, nothing later can match.
            if filter.to.is_some_and(|t| e.time > t.plus_seconds(LOG_TIME_SLACK)) {
                return Ok((shown, None));
            }
            if filter.matches(&e) {
                shown.push(e);
            }
            let more = entries.peek().is_some() || page.next.is_some();
            if shown.len() as u64 == page_size || scanned >= scan {
                return Ok((shown, if more { cursor } else { None }));
            }
        }
        // An empty page never says there is more; if it did, this must not loop on it.
        if page.next.is_none() || scanned == read_before {
            return Ok((shown, None));
        }
    }
}

async fn access_log(ctx: Ctx, uri: axum::http::Uri) -> Response {
    let Some((owner, caller)) = ctx.owner() else { return ctx.signed_out() };
    let q = query(&uri);
    let after = match q.get("after").map(str::trim).filter(|a| !a.is_empty()) {
        None => None,
        Some(a) => match a.parse::<u64>() {
            Ok(a) => Some(a),
            Err(_) => return ctx.error(StatusCode::BAD_REQUEST, ctx.t(K::BadFilter)),
        },
    };
    let Some(filter) = LogFilter::parse(&q) else { return ctx.error(StatusCode::BAD_REQUEST, ctx.t(K::BadFilter)) };
    let agency = filter.agency.as_ref().map(|a| a.as_str().to_owned());
    let Ok(v) = ctx.st.app.vault() else { return ctx.error(StatusCode::SERVICE_UNAVAILABLE, ctx.t(K::Unavailable)) };
    let r = blocking(move || {
        let (shown, next) = filtered_page(&v, &caller, &owner, after, &filter)?;
        let proven = !shown.is_empty() && prove(&v, &caller, &owner, &shown)?;
        Ok((shown, next, proven))
    })
    .await;
    let (entries, next, proven) = match r {
        Ok(x) => x,
        Err(e) => return ctx.vault_error(e),
    };
    let names = agency_names(&ctx).await;
    let who = |actor: &str| -> String {
        match actor {
            "owner" => ctx.t(K::You).into(),
            "operator" => ctx.t(K::Operator).into(),
            a => a.strip_prefix("agency:").map(|id| name_of(&names, id)).unwrap_or_else(|| a.to_owned()),
        }
    };
    let keep = |k: &str| q.get(k).unwrap_or("").to_owned();
    let body = html! {
        form method="get" action="/page/access-log" {
            label for="agency" { (ctx.t(K::Agency)) }
            select #agency name="agency" {
                option value="" { (ctx.t(K::AnyAgency)) }
                @for (id, name) in &names {
                    option value=(id.as_str()) selected[agency.as_deref() == Some(id.as_str())] { (name) }
                }
            }
            label for="from" { (ctx.t(K::From)) }
            input #from type="date" name="from" value=(keep("from"));
            label for="to" { (ctx.t(K::To)) }
            input #to type="date" name="to" value=(keep("to"));
            button type="submit" { (ctx.t(K::Filter)) }
        }
        @if entries.is_empty() { p { (ctx.t(K::NoEntries)) } }
        @else {
            @if proven { p.proof role="status" { "✓ " (ctx.t(K::Proven)) } }
            @else { p.noproof role="status" { (ctx.t(K::NotProven)) } }
            table {
                thead { tr {
                    th { (ctx.t(K::When)) } th { (ctx.t(K::Who)) } th { (ctx.t(K::Action)) } th { (ctx.t(K::Document)) }
                    th { (ctx.t(K::ProcedureCode)) } th { (ctx.t(K::Grant)) } th { (ctx.t(K::Outcome)) }
                } }
                tbody {
                    @for e in &entries {
                        @let refused = e.outcome != "allowed";
                        tr.refused[refused] {
                            td data-label=(ctx.t(K::When)) { (ctx.lang.datetime(e.time)) }
                            td data-label=(ctx.t(K::Who)) { (who(&e.actor)) }
                            td data-label=(ctx.t(K::Action)) { (e.action) }
                            td data-label=(ctx.t(K::Document)) { @if let Some(d) = &e.document { code { (d.to_string()) } } }
                            td data-label=(ctx.t(K::ProcedureCode)) { @if let Some(p) = &e.purpose { (p.as_str()) } }
                            td data-label=(ctx.t(K::Grant)) { @if let Some(g) = &e.grant { code { (g) } } }
                            td data-label=(ctx.t(K::Outcome)) {
                                @if refused { "⚠ " (ctx.t(K::Refused)) " (" (e.outcome.trim_start_matches("refused:")) ")" }
                                @else { (ctx.t(K::Allowed)) }
                            }
                        }
                    }
                }
            }
        }
        nav.pages aria-label=(ctx.t(K::AccessLog)) {
            @if after.is_some() {
                a rel="first" href=(log_link(None, &keep)) { (ctx.t(K::FirstPage)) }
                " "
            }
            @if let Some(n) = next {
                a rel="next" href=(log_link(Some(n), &keep)) { (ctx.t(K::Next)) }
            }
        }
    };
    ctx.page(StatusCode::OK, ctx.t(K::AccessLog), body)
}

/// A link to a page of the access log under the same filter (values percent-encoded).
fn log_link(after: Option<u64>, keep: &dyn Fn(&str) -> String) -> String {
    let Ok(mut url) = reqwest::Url::parse("http://x/page/access-log") else { return "/page/access-log".into() };
    {
        let mut pairs = url.query_pairs_mut();
        if let Some(a) = after {
            pairs.append_pair("after", &a.to_string());
        }
        for k in ["agency", "from", "to"] {
            pairs.append_pair(k, &keep(k));
        }
    }
    format!("/page/access-log?{}", url.query().unwrap_or(""))
}

// ---------------------------------------------------------------- export, erase

async fn account(ctx: Ctx) -> Response {
    if ctx.owner().is_none() {
        return ctx.signed_out();
    }
    let body = html! {
        h2 { (ctx.t(K::ExportMyData)) }
        p { (ctx.t(K::ExportIntro)) }
        form method="post" action="/page/export" {
            (csrf_field(&ctx))
            button type="submit" { (ctx.t(K::ExportMyData)) }
        }
        h2 { (ctx.t(K::EraseMyVault)) }
        p.warn { (ctx.t(K::EraseIntro)) }
        form method="post" action="/page/erase" {
            (csrf_field(&ctx))
            label for="confirm" { (ctx.t(K::EraseType)) ": " strong { (ctx.t(K::EraseWord)) } }
            input #confirm name="confirm" required autocomplete="off";
            button.danger type="submit" { (ctx.t(K::EraseMyVault)) }
        }
    };
    ctx.page(StatusCode::OK, ctx.t(K::MyData), body)
}

async fn export(ctx: Ctx, body: Bytes) -> Response {
    let f = FormData::parse(&body);
    if !ctx.csrf_ok(f.get("csrf")) {
        return ctx.csrf_refused();
    }
    let Some((owner, caller)) = ctx.owner() else { return ctx.signed_out() };
    // Streamed as it is built, exactly as the API's export (the same bounded channel and the
    // same download slot per owner): nothing of it is held in memory whole.
    let tar = match crate::routes::owners::export_body(&ctx.st.app, caller, owner).await {
        Ok(b) => b,
        Err(e) => return ctx.vault_error(e),
    };
    let mut resp = (StatusCode::OK, tar).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"my-vault.tar\""));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn erase(ctx: Ctx, body: Bytes) -> Response {
    let f = FormData::parse(&body);
    if !ctx.csrf_ok(f.get("csrf")) {
        return ctx.csrf_refused();
    }
    let Some((owner, caller)) = ctx.owner() else { return ctx.signed_out() };
    let typed = f.get("confirm").unwrap_or("").trim();
    // Either language's word is accepted: the person may have switched language meanwhile.
    if typed != super::Lang::Vi.t(K::EraseWord) && typed != super::Lang::En.t(K::EraseWord) {
        return ctx.error(StatusCode::BAD_REQUEST, &format!("{} {}", ctx.t(K::EraseType), ctx.t(K::EraseWord)));
    }
    let Ok(v) = ctx.st.app.vault() else { return ctx.error(StatusCode::SERVICE_UNAVAILABLE, ctx.t(K::Unavailable)) };
    match blocking(move || v.erase_as(&caller, &owner)).await {
        Ok(r) => {
            let body = html! {
                p role="status" { (ctx.t(K::Erased)) }
                h2 { (ctx.t(K::EraseReceipt)) }
                pre { (r.text) }
                dl { dt { "signature" } dd { code { (r.signature) } } dt { "key" } dd { code { (r.key) } } }
            };
            ctx.page(StatusCode::OK, ctx.t(K::EraseMyVault), body)
        }
        Err(e) => ctx.vault_error(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn only_passive_media_types_are_shown_inline() {
        for t in ["application/pdf", "image/PNG", "text/plain; charset=utf-8", " image/jpeg "] {
            assert!(super::viewable(t), "{t}");
        }
        for t in
            ["text/html", "image/svg+xml", "application/xhtml+xml", "text/xml", "application/javascript", "", "pdf"]
        {
            assert!(!super::viewable(t), "{t}");
        }
    }

    use super::*;
    use vault::access::Caller;
    use vault::OwnerId;

    /// Every page of the log under `filter`, in order, as (indexes shown, next).
    fn pages(v: &vault::Vault, owner: &OwnerId, filter: &LogFilter, l: ScanLimits) -> Vec<(Vec<u64>, Option<u64>)> {
        let caller = Caller::owner(owner.clone());
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let (shown, next) = scan_log(v, &caller, owner, after, filter, l).unwrap();
            out.push((shown.iter().map(|e| e.index).collect(), next));
            match next {
                Some(n) => after = Some(n),
                None => return out,
            }
        }
    }

    #[test]
    fn the_filtered_log_pages_through_every_match_once_and_its_scan_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault::Vault::open(dir.path(), &vault::MasterKey::from_bytes([5; 32])).unwrap();
        let owner = OwnerId::parse("citizen:001099012345").unwrap();
        let caller = Caller::owner(owner.clone());
        // Twelve entries by the owner (each listing writes one `document.list`).
        for _ in 0..12 {
            v.documents_as(&caller, &owner, None).unwrap();
        }
        let all: Vec<u64> = v.access_log_as(&caller, &owner).unwrap().iter().map(|e| e.index).collect();
        assert_eq!(all.len(), 12);
        let none = LogFilter::default();
        // Pages of 5, read 3 at a time: 5 + 5 + 2, each entry once, in order; the last page
        // says there is no more.
        let p = pages(&v, &owner, &none, ScanLimits { page: 5, scan: 100, chunk: 3 });
        let sizes: Vec<usize> = p.iter().map(|(s, _)| s.len()).collect();
        assert_eq!(sizes, [5, 5, 2]);
        assert_eq!(p.iter().flat_map(|(s, _)| s.clone()).collect::<Vec<_>>(), all);
        assert_eq!(p.last().unwrap().1, None);
        // A page that ends exactly at the log's end says so (no empty page after it).
        let p = pages(&v, &owner, &none, ScanLimits { page: 6, scan: 100, chunk: 4 });
        assert_eq!(p.iter().map(|(s, _)| s.len()).collect::<Vec<_>>(), [6, 6]);
        // A filter that matches nothing reads at most `scan` entries a page, then hands on.
        let agency = LogFilter { agency: Some(AgencyId::parse("so-gd").unwrap()), ..Default::default() };
        let p = pages(&v, &owner, &agency, ScanLimits { page: 5, scan: 7, chunk: 3 });
        assert_eq!(p, vec![(vec![], Some(all[6])), (vec![], None)]);
        // A period after every entry, and one holding all of them.
        let later = LogFilter { from: Some(Timestamp::now().plus_seconds(86_400)), ..Default::default() };
        assert_eq!(pages(&v, &owner, &later, ScanLimits { page: 50, scan: 100, chunk: 500 }), vec![(vec![], None)]);
        let now = LogFilter { to: Some(Timestamp::now().plus_seconds(60)), ..Default::default() };
        assert_eq!(pages(&v, &owner, &now, ScanLimits { page: 50, scan: 100, chunk: 500 }), vec![(all.clone(), None)]);
        // A period that ended long before every entry: the scan stops at the first entry, not
        // after `scan` entries and a "Next page".
        let long_ago = LogFilter { to: Some(Timestamp::parse("2000-01-01T00:00:00Z").unwrap()), ..Default::default() };
        assert_eq!(pages(&v, &owner, &long_ago, ScanLimits { page: 5, scan: 7, chunk: 3 }), vec![(vec![], None)]);
    }

    #[test]
    fn a_log_filter_is_parsed_or_refused_whole() {
        let q = |s: &str| FormData::parse(&Bytes::copy_from_slice(s.as_bytes()));
        let f = LogFilter::parse(&q("agency=so-gd&from=2026-01-02&to=2026-01-02")).unwrap();
        assert_eq!(f.agency.unwrap().as_str(), "so-gd");
        // Vietnam's day: 2026-01-02 00:00 +07:00 is 2026-01-01T17:00:00Z.
        assert_eq!(f.from.unwrap().to_string(), "2026-01-01T17:00:00Z");
        assert_eq!(f.to.unwrap().to_string(), "2026-01-02T16:59:59Z");
        assert!(LogFilter::parse(&q("agency=&from=&to=")).unwrap().agency.is_none());
        for bad in ["from=2026-02-30", "to=02/01/2026", "agency=So%20GD", "from=2026-01-03&to=2026-01-02"] {
            assert!(LogFilter::parse(&q(bad)).is_none(), "{bad}");
        }
    }
}
