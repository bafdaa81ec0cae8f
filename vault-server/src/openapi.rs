//! The served `/openapi.json` (OpenAPI 3.1), generated with utoipa from the handlers'
//! `#[utoipa::path]` annotations in [`crate::routes`], the request and response types, and the
//! schemas of the identifier newtypes (vault feature `openapi`). Errors per operation are
//! listed once here (`errors_of`); a test checks that the document and the router's
//! routes ([`crate::routes::all`]) name the same operations.

use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use vault::{Digest, DocType, DocumentId, GrantId, OwnerId, Purpose};

use crate::routes;

/// The error body of every refusal: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "grant_required", "message": "no active grant covers this"}}))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and human text of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code (api.md "Conventions").
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

/// Every error code the service answers with.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 401.
    Unauthenticated,
    /// 403.
    Forbidden,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 400.
    InvalidRequest,
    /// 400.
    DigestMismatch,
    /// 400.
    InvalidSignature,
    /// 400.
    UnknownIssuerKey,
    /// 413.
    TooLarge,
    /// 409.
    Conflict,
    /// 403.
    GrantRequired,
    /// 400.
    PurposeRequired,
    /// 410.
    Gone,
    /// 416.
    InvalidRange,
    /// 429 (with `Retry-After`).
    TooManyRequests,
    /// 503 while the vault opens.
    Sealed,
    /// 503: a non-streaming request took too long.
    Timeout,
    /// 503 after a storage failure (writes refused until restart).
    Unavailable,
    /// 500.
    Internal,
}

/// `{owner}` in the path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OwnerPath {
    /// The owner.
    pub owner: OwnerId,
}

/// `{owner}` and a document `{id}` in the path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OwnerDocPath {
    /// The owner.
    pub owner: OwnerId,
    /// The document id.
    pub id: DocumentId,
}

/// `{owner}` and a grant `{id}` in the path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OwnerGrantPath {
    /// The owner.
    pub owner: OwnerId,
    /// The grant id.
    pub id: GrantId,
}

/// `{owner}` and a content `{digest}` in the path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OwnerDigestPath {
    /// The owner.
    pub owner: OwnerId,
    /// BLAKE3-256 of the content.
    pub digest: Digest,
}

/// `{owner}` and an audit entry `{index}` in the path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OwnerIndexPath {
    /// The owner.
    pub owner: OwnerId,
    /// Global index of the entry in the audit log.
    #[param(minimum = 0)]
    pub index: u64,
}

/// A C2SP tlog-tiles tile path, slashes included: `<L>/<N>` or `<L>/<N>.p/<W>`, `<N>` in
/// zero-padded 3-digit groups with `x` before all but the last (`0/x001/x234/067`).
#[derive(Debug, ToSchema)]
#[schema(value_type = String, pattern = r"^(0|[1-9][0-9]?)(/x[0-9]{3})*/[0-9]{3}(\.p/[1-9][0-9]{0,2})?$")]
pub struct TilePath(pub String);

/// `{tile}` in the path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TileParam {
    /// The tile (`<L>/<N>[.p/<W>]`, C2SP tlog-tiles, tile height 8).
    pub tile: TilePath,
}

/// `{agency}` in the path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AgencyPath {
    /// The agency id.
    pub agency: vault::AgencyId,
}

/// `{agency}` and `{id}` of a webhook subscription.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct WebhookPath {
    /// The agency id.
    pub agency: vault::AgencyId,
    /// The subscription id (`a-z 0-9 . _ -`, 1 to 64 characters).
    pub id: vault::engine::events::WebhookId,
}

/// `{agency}`, `{id}` and `{event}` of a parked event.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RedeliverPath {
    /// The agency id.
    pub agency: vault::AgencyId,
    /// The subscription id.
    pub id: vault::engine::events::WebhookId,
    /// The event id (`webhook-id`).
    pub event: vault::engine::events::EventId,
}

/// `{"events": [...]}`: parked deliveries.
#[derive(Debug, ToSchema)]
pub struct FailedEvents {
    /// Oldest first.
    pub events: Vec<vault::engine::events::Delivery>,
    /// The `after` of the next page, when more follow.
    #[schema(value_type = Option<String>, pattern = "^msg_[0-9a-f]{32}$")]
    pub next: Option<String>,
}

/// Paging of parked events.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FailedQuery {
    /// Only events after this one (`msg_` + 32 hex; the previous page's `next`).
    #[param(pattern = "^msg_[0-9a-f]{32}$")]
    pub after: Option<String>,
    /// At most this many (1 to 1000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// `Vault-Purpose`: why an agency reads an owner's data (required for agencies' reads).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct PurposeHeader {
    /// The procedure code the read is for.
    #[param(rename = "Vault-Purpose")]
    pub vault_purpose: Option<Purpose>,
}

/// `?doc_type=` of a document listing.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DocTypeQuery {
    /// Only documents of this type.
    pub doc_type: Option<DocType>,
}

/// Paging of the access log (api.md v1.1).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Entries with an index above this one.
    #[param(minimum = 0)]
    pub after: Option<u64>,
    /// Most entries in the answer (default and largest 1,000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// `?index=&size=` of an inclusion proof.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InclusionQuery {
    /// The entry's index (below `size`).
    #[param(minimum = 0)]
    pub index: u64,
    /// The tree size the proof is for (at most the log's size).
    #[param(minimum = 0)]
    pub size: u64,
}

/// `?from=&to=` of a consistency proof.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    /// The older tree size.
    #[param(minimum = 0)]
    pub from: u64,
    /// The newer tree size (at most the log's size).
    #[param(minimum = 0)]
    pub to: u64,
}

/// Raw bytes (a content, a tar).
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Binary(pub Vec<u8>);

/// Plain text (a checkpoint note, metrics, `ok`).
#[derive(Debug, ToSchema)]
#[schema(value_type = String)]
pub struct Text(pub String);

/// Body of `contents/missing`.
#[derive(Debug, ToSchema)]
pub struct MissingRequest {
    /// The digests to ask about.
    #[schema(max_items = 10000)]
    pub digests: Vec<Digest>,
}

/// Answer of `contents/missing`.
#[derive(Debug, ToSchema)]
pub struct MissingResponse {
    /// The digests the caller must upload before it deposits about them.
    pub missing: Vec<Digest>,
}

/// Answer of an upload.
#[derive(Debug, ToSchema)]
pub struct StoredContent {
    /// The content's digest.
    pub digest: Digest,
    /// Its size in bytes.
    #[schema(minimum = 0)]
    pub size: u64,
    /// With `Vault-Deposit`: the document deposited in the same step.
    pub document: Option<DocumentOut>,
}

/// A document as returned: the record and its status now.
#[derive(Debug, ToSchema)]
pub struct DocumentOut {
    #[serde(flatten)]
    pub document: vault::Document,
    /// Validity now.
    pub status: vault::Status,
}

/// A grant as returned: the grant and its status now.
#[derive(Debug, ToSchema)]
pub struct GrantOut {
    #[serde(flatten)]
    pub grant: vault::engine::grants::Grant,
    /// `active`, `revoked`, `expired` or `exhausted`.
    pub status: vault::engine::grants::GrantStatus,
}

/// `{"documents": [...]}`.
#[derive(Debug, ToSchema)]
pub struct DocumentList {
    /// The documents.
    pub documents: Vec<DocumentOut>,
}

/// One result of a batch deposit: the stored content and document, or the item's error.
#[derive(Debug, ToSchema)]
pub struct BatchResult {
    /// The content's digest (success).
    pub digest: Option<Digest>,
    /// Its size (success).
    #[schema(minimum = 0)]
    pub size: Option<u64>,
    /// Whether a new document was made (success).
    pub created: Option<bool>,
    /// The document (success).
    pub document: Option<DocumentOut>,
    /// The item's status code (refusal).
    pub status: Option<u16>,
    /// The item's error (refusal).
    pub error: Option<ErrorDetail>,
}

/// `{"results": [...]}`, in the order of the tar.
#[derive(Debug, ToSchema)]
pub struct BatchResponse {
    /// One per item.
    pub results: Vec<BatchResult>,
}

/// Body of a revocation.
#[derive(Debug, ToSchema)]
pub struct RevocationRequest {
    /// Why the issuer revokes it.
    pub reason: String,
}

/// Body of a reuse check.
#[derive(Debug, ToSchema)]
pub struct ReuseRequest {
    /// The procedure code (equal to `Vault-Purpose` for an agency).
    pub purpose: Purpose,
    /// The types the procedure needs.
    pub doc_types: Vec<DocType>,
    /// Validity at this time (default: now).
    pub at: Option<vault::Timestamp>,
}

/// One component of a reuse check.
#[derive(Debug, ToSchema)]
pub struct ComponentOut {
    /// The type asked about.
    pub doc_type: DocType,
    /// What the owner holds of it.
    pub status: vault::access::ReuseStatus,
    /// The document to reuse (when `held`).
    pub document: Option<DocumentOut>,
}

/// `{"components": [...]}`, in the order asked.
#[derive(Debug, ToSchema)]
pub struct ReuseResponse {
    /// One per type asked.
    pub components: Vec<ComponentOut>,
}

/// `{"grants": [...]}`.
#[derive(Debug, ToSchema)]
pub struct GrantList {
    /// The grants.
    pub grants: Vec<GrantOut>,
}

/// One page of the access log.
#[derive(Debug, ToSchema)]
pub struct AccessLog {
    /// Entries about the owner, ascending by index.
    pub entries: Vec<vault::log::audit::Entry>,
    /// The `after` of the next page, or null on the last page.
    #[schema(minimum = 0)]
    pub next: Option<u64>,
}

/// An entry's leaf bytes.
#[derive(Debug, ToSchema)]
pub struct Leaf {
    /// The entry's index.
    #[schema(minimum = 0)]
    pub index: u64,
    /// The leaf bytes, standard base64.
    #[schema(content_encoding = "base64")]
    pub leaf: String,
}

/// Body of the access-log proofs extension.
#[derive(Debug, ToSchema)]
pub struct ProofsRequest {
    /// The tree size the proofs are for (at most the log's size).
    #[schema(minimum = 0)]
    pub size: u64,
    /// Indexes of the owner's entries (1 to 1,000).
    #[schema(min_items = 1, max_items = 1000)]
    pub indexes: Vec<u64>,
}

/// One entry's leaf and inclusion proof.
#[derive(Debug, ToSchema)]
pub struct EntryProof {
    /// The entry's index.
    #[schema(minimum = 0)]
    pub index: u64,
    /// The leaf bytes, standard base64.
    #[schema(content_encoding = "base64")]
    pub leaf: String,
    /// Audit path, standard base64 hashes.
    pub hashes: Vec<String>,
}

/// Answer of the access-log proofs extension.
#[derive(Debug, ToSchema)]
pub struct ProofsResponse {
    /// The tree size every proof is for.
    #[schema(minimum = 0)]
    pub size: u64,
    /// One proof per index asked, in order.
    pub proofs: Vec<EntryProof>,
}

/// An RFC 9162 inclusion proof.
#[derive(Debug, ToSchema)]
pub struct InclusionProof {
    /// SHA-256 leaf hash, standard base64.
    pub leaf_hash: String,
    /// Audit path, standard base64 hashes.
    pub hashes: Vec<String>,
}

/// An RFC 9162 consistency proof.
#[derive(Debug, ToSchema)]
pub struct ConsistencyProof {
    /// Standard base64 hashes.
    pub hashes: Vec<String>,
}

/// `{"agencies": [...]}`.
#[derive(Debug, ToSchema)]
pub struct AgencyList {
    /// Every registered agency.
    pub agencies: Vec<vault::engine::provenance::Agency>,
}

/// The vault's signing key.
#[derive(Debug, ToSchema)]
pub struct VaultKey {
    /// Key name.
    pub name: String,
    /// Ed25519 public key, standard base64 of 32 bytes.
    pub public_key: vault::engine::provenance::PublicKey,
    /// The same key in the C2SP note verifier-key form `<name>+<8 hex>+<base64>`.
    pub note_verifier_key: String,
    /// The key that signs webhook deliveries (a different key), `whpk_` + standard base64
    /// (SPEC.md §24).
    #[schema(pattern = "^whpk_[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")]
    pub webhook_public_key: String,
}

/// The errors an operation can answer, by status (besides 500 `internal`, listed everywhere).
fn errors_of(method: &str, path: &str) -> &'static [(u16, &'static str)] {
    const AUTH: (u16, &str) = (401, "No valid token (`unauthenticated`)");
    const BAD: (u16, &str) = (400, "Malformed request (`invalid_request` and the other 400 codes)");
    const FORBIDDEN: (u16, &str) = (403, "Not allowed (`forbidden`, `grant_required`); never says whether it exists");
    const NOT_FOUND: (u16, &str) = (404, "No such thing (`not_found`)");
    const GONE: (u16, &str) = (410, "Erased (`gone`)");
    const CONFLICT: (u16, &str) = (409, "`conflict`");
    const LARGE: (u16, &str) = (413, "Too large (`too_large`)");
    const BUSY: (u16, &str) =
        (429, "Too many concurrent uploads or downloads (`too_many_requests`; see `Retry-After`)");
    const UNAVAILABLE: (u16, &str) = (503, "The vault is opening (`sealed`), timed out, or refuses writes");
    match (method, path) {
        ("get", "/healthz" | "/metrics" | "/openapi.json") => &[],
        ("get", "/readyz" | "/v1/vault-key" | "/v1/audit/checkpoint") => &[UNAVAILABLE],
        ("get", "/v1/audit/proof/inclusion" | "/v1/audit/proof/consistency") => &[BAD, UNAVAILABLE],
        ("get", "/v1/audit/tile/{tile}") => &[NOT_FOUND, UNAVAILABLE],
        ("put", "/v1/owners/{owner}/contents/{digest}") => &[BAD, AUTH, FORBIDDEN, NOT_FOUND, LARGE, BUSY, UNAVAILABLE],
        ("post", "/v1/owners/{owner}/deposits") => &[BAD, AUTH, FORBIDDEN, CONFLICT, LARGE, BUSY, UNAVAILABLE],
        ("post", "/v1/owners/{owner}/documents") => &[BAD, AUTH, FORBIDDEN, CONFLICT, LARGE, UNAVAILABLE],
        ("get", "/v1/owners/{owner}/documents/{id}/content") => {
            &[BAD, AUTH, FORBIDDEN, NOT_FOUND, GONE, (416, "Unsatisfiable range (`invalid_range`)"), BUSY, UNAVAILABLE]
        }
        ("get", "/v1/owners/{owner}/export") => &[BAD, AUTH, FORBIDDEN, NOT_FOUND, GONE, BUSY, UNAVAILABLE],
        ("put", "/v1/agencies/{agency}") => &[BAD, AUTH, FORBIDDEN, CONFLICT, LARGE, UNAVAILABLE],
        ("get", "/v1/agencies" | "/v1/grants") => &[AUTH, FORBIDDEN, UNAVAILABLE],
        ("get", "/v1/agencies/{agency}") => &[AUTH, NOT_FOUND, UNAVAILABLE],
        ("get", "/v1/stats/reuse") => &[BAD, AUTH, FORBIDDEN, UNAVAILABLE],
        ("put", "/v1/agencies/{agency}/webhooks/{id}") => {
            &[BAD, AUTH, FORBIDDEN, NOT_FOUND, CONFLICT, LARGE, UNAVAILABLE]
        }
        (_, p) if p.starts_with("/v1/agencies/{agency}/webhooks/") => &[BAD, AUTH, FORBIDDEN, NOT_FOUND, UNAVAILABLE],
        (_, p) if p.contains("{id}") || p.contains("{index}") => {
            &[BAD, AUTH, FORBIDDEN, NOT_FOUND, GONE, LARGE, UNAVAILABLE]
        }
        _ => &[BAD, AUTH, FORBIDDEN, NOT_FOUND, GONE, CONFLICT, LARGE, UNAVAILABLE],
    }
}

/// Whether a path needs a token.
fn needs_token(path: &str) -> bool {
    path.starts_with("/v1/") && !path.starts_with("/v1/audit/") && path != "/v1/vault-key"
}

/// Adds the security scheme, the error answers of every operation and the 500 answer.
struct Contract;

impl Modify for Contract {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A compact JWS (alg EdDSA, Ed25519) with claims iss, sub, aud, iat and exp (api.md \
                         \"Authentication\")",
                    ))
                    .build(),
            ),
        );
        let error = |desc: &str| {
            ResponseBuilder::new()
                .description(desc)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"))))
                        .build(),
                )
                .build()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            let ops: [(&str, &mut Option<Operation>); 4] = [
                ("get", &mut item.get),
                ("put", &mut item.put),
                ("post", &mut item.post),
                ("delete", &mut item.delete),
            ];
            for (method, op) in ops {
                let Some(op) = op.as_mut() else { continue };
                if let Some(summary) = routes::all().find(|r| r.method == method && r.path == path).map(|r| r.summary) {
                    op.summary = Some((*summary).to_owned());
                }
                if needs_token(path) {
                    op.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
                }
                for (status, desc) in errors_of(method, path) {
                    op.responses.responses.entry(status.to_string()).or_insert_with(|| RefOr::T(error(desc)));
                }
                op.responses.responses.entry("500".into()).or_insert_with(|| RefOr::T(error("`internal`")));
            }
        }
    }
}

/// The document's skeleton: every annotated handler and the schemas.
#[derive(OpenApi)]
#[openapi(
    info(title = "vault-server", description = "The HTTP contract of vault-server (api.md v1.1): an owner's \
          encrypted documents, consent grants, issuer provenance and a verifiable audit log."),
    paths(
        routes::contents::contents_missing,
        routes::contents::put_content,
        routes::documents::deposit,
        routes::documents::deposit_batch,
        routes::documents::list_documents,
        routes::documents::get_document,
        routes::documents::get_content,
        routes::documents::delete_document,
        routes::documents::revoke_document,
        routes::reuse::reuse,
        routes::grants::create_grant,
        routes::grants::list_grants,
        routes::grants::revoke_grant,
        routes::grants::agency_grants,
        routes::owners::access_log,
        routes::owners::access_log_leaf,
        routes::owners::access_log_proofs,
        routes::audit::checkpoint,
        routes::audit::inclusion,
        routes::audit::consistency,
        routes::audit::tile,
        routes::owners::export,
        routes::owners::erase,
        routes::agencies::put_agency,
        routes::agencies::list_agencies,
        routes::agencies::get_agency,
        routes::webhooks::put_webhook,
        routes::webhooks::get_webhook,
        routes::webhooks::delete_webhook,
        routes::webhooks::failed_events,
        routes::webhooks::redeliver,
        routes::stats::reuse_stats,
        routes::service::vault_key,
        routes::service::healthz,
        routes::service::readyz,
        routes::service::metrics,
        routes::service::openapi_json,
    ),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode, TilePath)),
    modifiers(&Contract)
)]
struct ApiDoc;

/// The OpenAPI 3.1 document as JSON.
pub fn document() -> Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|e| {
        // Cannot happen (the document is plain data); answer a valid, empty document if it does.
        tracing::error!(error = %e, "the OpenAPI document does not serialise");
        serde_json::json!({"openapi": "3.1.0", "info": {"title": "vault-server", "version": "0"}, "paths": {}})
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document names exactly the router's operations, each with a success answer, the
    /// error body and a pattern on every path parameter.
    #[test]
    fn the_document_covers_every_route_with_typed_parameters() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut seen = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(
                    routes::all().any(|r| r.method == method && r.path == path),
                    "{method} {path} is documented but not routed"
                );
                seen += 1;
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.keys().any(|s| s.starts_with('2') || s == "304"), "{method} {path}: no success");
                assert!(responses.contains_key("500"), "{method} {path}");
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if p["in"] == "path" {
                        let schema = &p["schema"];
                        let typed = schema.get("$ref").is_some() || schema["type"] == "integer";
                        assert!(typed, "{method} {path}: path parameter {} is untyped", p["name"]);
                    }
                }
                if needs_token(path) {
                    assert_eq!(op["security"][0]["bearer"], serde_json::json!([]), "{method} {path}");
                }
            }
        }
        assert_eq!(seen, routes::all().count(), "every routed operation is documented");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        assert!(schemas["OwnerId"]["pattern"].as_str().unwrap().contains("citizen:"));
        assert_eq!(schemas["Digest"]["pattern"], "^[0-9a-f]{64}$");
        assert!(schemas["ErrorCode"].to_string().contains("too_many_requests"));
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    }
}
