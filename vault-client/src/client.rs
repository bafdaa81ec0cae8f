//! The typed async client: one method per endpoint of api.md, plus the verifying operations
//! (downloads checked against their digest and issuer signature, checkpoints against the pinned
//! vault key and the last checkpoint seen).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vault::access::ReuseStatus;
use vault::engine::document::Status;
use vault::engine::events::{Delivery, EventId, NewWebhook, WebhookId, WebhookView};
use vault::engine::grants::{Grant, GrantStatus, NewGrant};
use vault::engine::provenance::{statement, Agency, NewAgency};
use vault::engine::rights::SignedReceipt;
use vault::log::audit::{Entry, Page};
use vault::{AgencyId, Digest, DocType, Document, DocumentId, GrantId, NewDocument, OwnerId, Purpose, Timestamp};

use crate::credentials::AgencyCredentials;
use crate::trust::{needs_proof, open_checkpoint, Checkpoint, Seen, TrustStore};
use crate::Error;

/// Entries asked for per access-log page, and proven per batch (the server's largest page).
pub const LOG_PAGE: u64 = 1_000;

/// Most digests the server takes in one `contents/missing` call.
pub const MISSING_BATCH: usize = 10_000;

/// How the client authenticates. `Debug` never shows a token.
#[derive(Clone)]
pub enum Auth {
    /// No token (the service and audit endpoints only).
    None,
    /// A bearer token made elsewhere (an owner's, from an identity provider; the operator's).
    Bearer(String),
    /// An agency: a fresh token is minted for every call.
    Agency(Arc<AgencyCredentials>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Bearer(_) => f.write_str("Bearer([redacted])"),
            Auth::Agency(c) => f.debug_tuple("Agency").field(&c.agency).field(&c.key_id).finish(),
        }
    }
}

/// A document as the server returns it: the record and its status now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentView {
    /// The record.
    #[serde(flatten)]
    pub document: Document,
    /// `valid`, `expired`, `not_yet_valid` or `revoked`.
    pub status: Status,
}

/// A grant as the server returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    /// The grant.
    #[serde(flatten)]
    pub grant: Grant,
    /// Its status now.
    pub status: GrantStatus,
}

/// One component of a reuse check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// The type asked about.
    pub doc_type: DocType,
    /// `held`, `missing`, `expired`, `revoked` or `not_granted`.
    pub status: ReuseStatus,
    /// The document to reuse when `held`.
    pub document: Option<DocumentView>,
}

/// The answer to an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploaded {
    /// The content's digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// 201 (stored now) rather than 200 (already held).
    #[serde(skip)]
    pub created: bool,
}

/// The vault's public key (`GET /v1/vault-key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultKey {
    /// Key name in signed notes.
    pub name: String,
    /// Ed25519 public key, base64.
    pub public_key: String,
    /// The C2SP verifier key.
    pub note_verifier_key: String,
}

/// A download that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// The record the content belongs to.
    pub document: DocumentView,
    /// Where the content was written, if to a file.
    pub path: Option<PathBuf>,
    /// Bytes received.
    pub size: u64,
    /// Whether an issuer signature was checked against the registry (false: an owner's own,
    /// unsigned upload).
    pub issuer_verified: bool,
}

/// An access-log entry whose leaf is proven included in a verified checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedEntry {
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
    /// The checkpoint size it was proven against.
    pub proven_in: u64,
}

/// A client of one vault server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    auth: Auth,
    audience: String,
    purpose: Option<Purpose>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    code: String,
    message: String,
}

fn path_part(s: &str) -> String {
    // Owner ids contain ':', which is fine in a path segment; ids and types are plain ASCII.
    s.to_owned()
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8700`).
    pub fn new(base: &str, auth: Auth) -> Result<Self, Error> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Invalid(format!("the server address {base:?} must start with http:// or https://")));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("vault-client/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, base, auth, audience: "vault".into(), purpose: None })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sets the audience tokens are minted for (the server's `--audience`).
    pub fn with_audience(mut self, aud: &str) -> Self {
        aud.clone_into(&mut self.audience);
        self
    }

    /// States a purpose (`Vault-Purpose`) on every call: agencies reading an owner's data.
    pub fn with_purpose(mut self, purpose: Option<Purpose>) -> Self {
        self.purpose = purpose;
        self
    }

    /// Whether no purpose is stated.
    pub fn purpose_is_unset(&self) -> bool {
        self.purpose.is_none()
    }

    /// The agency credentials, if the client is an agency.
    pub fn agency(&self) -> Option<&Arc<AgencyCredentials>> {
        match &self.auth {
            Auth::Agency(c) => Some(c),
            _ => None,
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        match &self.auth {
            Auth::None => {}
            Auth::Bearer(t) => r = r.bearer_auth(t),
            Auth::Agency(c) => r = r.bearer_auth(c.token(&self.audience)),
        }
        if let Some(p) = &self.purpose {
            r = r.header("Vault-Purpose", p.as_str());
        }
        r
    }

    async fn send(&self, r: RequestBuilder) -> Result<Response, Error> {
        let resp = r.send().await?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => Err(Error::Api { status, code: e.error.code, message: e.error.message }),
            Err(_) => Err(Error::Api {
                status,
                code: "unknown".into(),
                message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            }),
        }
    }

    async fn json<T: DeserializeOwned>(&self, r: RequestBuilder) -> Result<(StatusCode, T), Error> {
        let resp = self.send(r).await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        let v = serde_json::from_slice(&body).map_err(|e| Error::Protocol(format!("{e} in {}", preview(&body))))?;
        Ok((status, v))
    }

    fn owner_path(owner: &OwnerId, rest: &str) -> String {
        format!("/v1/owners/{}{rest}", path_part(owner.as_str()))
    }

    // ------------------------------------------------------------ service

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Result<(), Error> {
        self.send(self.request(Method::GET, "/healthz")).await.map(|_| ())
    }

    /// `GET /readyz`.
    pub async fn readyz(&self) -> Result<(), Error> {
        self.send(self.request(Method::GET, "/readyz")).await.map(|_| ())
    }

    /// `GET /v1/vault-key`.
    pub async fn vault_key(&self) -> Result<VaultKey, Error> {
        Ok(self.json(self.request(Method::GET, "/v1/vault-key")).await?.1)
    }

    // ------------------------------------------------------------ contents

    /// `POST contents/missing`, in batches of [`MISSING_BATCH`]: the digests to upload.
    pub async fn missing(&self, owner: &OwnerId, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        #[derive(Deserialize)]
        struct Missing {
            missing: Vec<Digest>,
        }
        let mut out = Vec::new();
        for chunk in digests.chunks(MISSING_BATCH) {
            let r = self.request(Method::POST, &Self::owner_path(owner, "/contents/missing"));
            let (_, m): (_, Missing) = self.json(r.json(&json!({ "digests": chunk }))).await?;
            out.extend(m.missing);
        }
        Ok(out)
    }

    /// `PUT contents/{digest}` streaming a file.
    pub async fn upload_file(&self, owner: &OwnerId, digest: &Digest, path: &Path) -> Result<Uploaded, Error> {
        let r = file_body(self.request(Method::PUT, &Self::owner_path(owner, &format!("/contents/{digest}"))), path)
            .await?;
        self.uploaded(r).await
    }

    /// `PUT contents/{digest}` streaming a file, with `Vault-Deposit`: stores the content and
    /// deposits `doc` in one durable step (an extension of the contract, SPEC.md §20). Returns
    /// the document and whether it is new.
    pub async fn upload_and_deposit(
        &self,
        owner: &OwnerId,
        path: &Path,
        doc: &NewDocument,
    ) -> Result<(DocumentView, bool), Error> {
        #[derive(Deserialize)]
        struct Answer {
            document: DocumentView,
        }
        let deposit = serde_json::to_vec(doc).map_err(|e| Error::Invalid(e.to_string()))?;
        let r = file_body(
            self.request(Method::PUT, &Self::owner_path(owner, &format!("/contents/{}", doc.digest)))
                .header("Vault-Deposit", B64URL.encode(deposit)),
            path,
        )
        .await?;
        let (status, a): (_, Answer) = self.json(r).await?;
        Ok((a.document, status == StatusCode::CREATED))
    }

    /// `POST /v1/owners/{owner}/deposits` (an extension, SPEC.md §20): many small contents
    /// stored and deposited in one request and one durable wait. Each item has its own result.
    pub async fn deposit_batch(
        &self,
        owner: &OwnerId,
        items: &[(Vec<u8>, NewDocument)],
    ) -> Result<Vec<Result<(DocumentView, bool), Error>>, Error> {
        #[derive(Deserialize)]
        struct Answer {
            results: Vec<ItemAnswer>,
        }
        #[derive(Deserialize)]
        struct ItemAnswer {
            document: Option<DocumentView>,
            created: Option<bool>,
            status: Option<u16>,
            error: Option<ErrorInner>,
        }
        let mut tar = tar::Builder::new(Vec::new());
        for (i, (data, doc)) in items.iter().enumerate() {
            let body = serde_json::to_vec(doc).map_err(|e| Error::Invalid(e.to_string()))?;
            for (name, bytes) in [(format!("{i}.json"), body.as_slice()), (format!("{i}.bin"), data.as_slice())] {
                let mut h = tar::Header::new_gnu();
                h.set_size(bytes.len() as u64);
                h.set_mode(0o600);
                h.set_cksum();
                tar.append_data(&mut h, name, bytes).map_err(|e| Error::Invalid(e.to_string()))?;
            }
        }
        let body = tar.into_inner().map_err(|e| Error::Invalid(e.to_string()))?;
        let r = self
            .request(Method::POST, &Self::owner_path(owner, "/deposits"))
            .header("Content-Type", "application/x-tar")
            .body(body);
        let (_, a): (_, Answer) = self.json(r).await?;
        if a.results.len() != items.len() {
            return Err(Error::Protocol(format!("{} results for {} documents", a.results.len(), items.len())));
        }
        Ok(a.results
            .into_iter()
            .map(|r| match (r.document, r.error) {
                (Some(d), _) => Ok((d, r.created.unwrap_or(true))),
                (None, Some(e)) => {
                    Err(Error::Api { status: r.status.unwrap_or(400), code: e.code, message: e.message })
                }
                (None, None) => Err(Error::Protocol("a batch result without document or error".into())),
            })
            .collect())
    }

    /// `PUT contents/{digest}` of bytes in memory (the digest is computed here).
    pub async fn upload_bytes(&self, owner: &OwnerId, data: Vec<u8>) -> Result<Uploaded, Error> {
        let digest = Digest::of(&data);
        let r = self
            .request(Method::PUT, &Self::owner_path(owner, &format!("/contents/{digest}")))
            .header("Content-Type", "application/octet-stream")
            .body(data);
        self.uploaded(r).await
    }

    async fn uploaded(&self, r: RequestBuilder) -> Result<Uploaded, Error> {
        let (status, mut u): (_, Uploaded) = self.json(r).await?;
        u.created = status == StatusCode::CREATED;
        Ok(u)
    }

    // ------------------------------------------------------------ documents

    /// `POST documents`: the document and whether it is new (201) rather than an identical
    /// earlier deposit (200).
    pub async fn deposit(&self, owner: &OwnerId, doc: &NewDocument) -> Result<(DocumentView, bool), Error> {
        let r = self.request(Method::POST, &Self::owner_path(owner, "/documents")).json(doc);
        let (status, d) = self.json(r).await?;
        Ok((d, status == StatusCode::CREATED))
    }

    /// Uploads `data` if it is not held, and deposits it; signed when the client is an agency.
    pub async fn deposit_bytes(
        &self,
        owner: &OwnerId,
        data: Vec<u8>,
        mut doc: NewDocument,
    ) -> Result<(DocumentView, bool), Error> {
        let size = data.len() as u64;
        doc.digest = Digest::of(&data);
        if !self.missing(owner, &[doc.digest]).await?.is_empty() {
            self.upload_bytes(owner, data).await?;
        }
        if let Some(c) = self.agency() {
            c.sign(owner, size, &mut doc);
        }
        self.deposit(owner, &doc).await
    }

    /// `GET documents` (optionally of one type).
    pub async fn documents(&self, owner: &OwnerId, doc_type: Option<&DocType>) -> Result<Vec<DocumentView>, Error> {
        #[derive(Deserialize)]
        struct List {
            documents: Vec<DocumentView>,
        }
        let mut r = self.request(Method::GET, &Self::owner_path(owner, "/documents"));
        if let Some(t) = doc_type {
            r = r.query(&[("doc_type", t.as_str())]);
        }
        let (_, l): (_, List) = self.json(r).await?;
        Ok(l.documents)
    }

    /// `GET documents/{id}`.
    pub async fn document(&self, owner: &OwnerId, id: &DocumentId) -> Result<DocumentView, Error> {
        Ok(self.json(self.request(Method::GET, &Self::owner_path(owner, &format!("/documents/{id}")))).await?.1)
    }

    /// `DELETE documents/{id}` (the owner).
    pub async fn delete_document(&self, owner: &OwnerId, id: &DocumentId) -> Result<(), Error> {
        self.send(self.request(Method::DELETE, &Self::owner_path(owner, &format!("/documents/{id}")))).await?;
        Ok(())
    }

    /// `POST documents/{id}/revocation` (the issuer).
    pub async fn revoke_document(&self, owner: &OwnerId, id: &DocumentId, reason: &str) -> Result<DocumentView, Error> {
        let r = self
            .request(Method::POST, &Self::owner_path(owner, &format!("/documents/{id}/revocation")))
            .json(&json!({ "reason": reason }));
        Ok(self.json(r).await?.1)
    }

    /// Checks a record's issuer signature against the agency registry: `Ok(true)` if it is
    /// signed and verifies under a key of the issuer valid at `issued_at`, `Ok(false)` for an
    /// unsigned (owner's own) document, an error otherwise.
    pub async fn verify_issuer(&self, doc: &Document) -> Result<bool, Error> {
        let (Some(issuer), Some(sig)) = (&doc.meta.issuer, &doc.meta.signature) else {
            if doc.verified {
                return Err(Error::Verification(format!(
                    "document {} claims verified but carries no signature",
                    doc.id
                )));
            }
            return Ok(false);
        };
        let agency = self.agency_info(issuer).await?;
        let at = doc.meta.issued_at.ok_or_else(|| Error::Verification("a signed document without issued_at".into()))?;
        let key = agency.key_valid_at(&sig.key_id, at).ok_or_else(|| {
            Error::Verification(format!("issuer {issuer} has no key {} valid at {at}", sig.key_id.as_str()))
        })?;
        let raw = B64.decode(&sig.value).map_err(|_| Error::Verification("the signature is not base64".into()))?;
        let raw: [u8; 64] = raw.try_into().map_err(|_| Error::Verification("the signature is not 64 bytes".into()))?;
        let text = statement(&doc.owner, doc.size, &doc.meta);
        if !key.public_key.verify(text.as_bytes(), &raw) {
            return Err(Error::Verification(format!(
                "the issuer signature of document {} does not verify under {issuer}'s key {}",
                doc.id,
                sig.key_id.as_str()
            )));
        }
        Ok(true)
    }

    /// Downloads a document's content to `dest`, verified: the bytes go to `dest` + `.part`,
    /// are hashed on the way, and only when the digest and size match the record and the
    /// issuer signature verifies does the file appear at `dest`. On any failure nothing is left
    /// at `dest` (and the partial file is removed). An existing `dest` is never replaced (see
    /// [`Client::download_replacing`]); no file is opened through a symbolic link.
    pub async fn download(&self, owner: &OwnerId, id: &DocumentId, dest: &Path) -> Result<Verified, Error> {
        self.download_with(owner, id, dest, false).await
    }

    /// As [`Client::download`], but a verified download replaces a file already at `dest` (a
    /// symbolic link at `dest` is replaced itself, never followed).
    pub async fn download_replacing(&self, owner: &OwnerId, id: &DocumentId, dest: &Path) -> Result<Verified, Error> {
        self.download_with(owner, id, dest, true).await
    }

    async fn download_with(
        &self,
        owner: &OwnerId,
        id: &DocumentId,
        dest: &Path,
        replace: bool,
    ) -> Result<Verified, Error> {
        if !replace && tokio::fs::symlink_metadata(dest).await.is_ok() {
            return Err(exists(dest));
        }
        let document = self.document(owner, id).await?;
        let issuer_verified = self.verify_issuer(&document.document).await?;
        let part = part_path(dest);
        let result = async {
            let size = self.download_to(owner, &document.document, &part).await?;
            if replace {
                // rename(2) replaces what is at `dest`, a link itself rather than its target.
                tokio::fs::rename(&part, dest).await.map_err(Error::io(dest))?;
            } else {
                // A new name for the verified file, failing if anything appeared at `dest`
                // meanwhile (a hard link never replaces); then the `.part` name goes.
                tokio::fs::hard_link(&part, dest).await.map_err(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => exists(dest),
                    _ => Error::io(dest)(e),
                })?;
                let _ = tokio::fs::remove_file(&part).await;
            }
            Ok::<_, Error>(size)
        }
        .await;
        match result {
            Ok(size) => Ok(Verified { document, path: Some(dest.to_path_buf()), size, issuer_verified }),
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                Err(e)
            }
        }
    }

    async fn download_to(&self, owner: &OwnerId, doc: &Document, part: &Path) -> Result<u64, Error> {
        let mut file = create_new(part).await?;
        let resp = self
            .send(self.request(Method::GET, &Self::owner_path(owner, &format!("/documents/{}/content", doc.id))))
            .await?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                Error::Verification(format!("the transfer of document {} broke off: {}", doc.id, Error::from(e)))
            })?;
            size += chunk.len() as u64;
            if size > doc.size {
                return Err(Error::Verification(format!("document {} sent more bytes than its size", doc.id)));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(Error::io(part))?;
        }
        check_content(doc, size, hasher.finalize().into())?;
        file.sync_all().await.map_err(Error::io(part))?;
        Ok(size)
    }

    /// Fetches a document and its content into memory, verified as [`Client::download`] does.
    pub async fn fetch(&self, owner: &OwnerId, id: &DocumentId) -> Result<(Verified, Vec<u8>), Error> {
        let document = self.document(owner, id).await?;
        let issuer_verified = self.verify_issuer(&document.document).await?;
        let resp =
            self.send(self.request(Method::GET, &Self::owner_path(owner, &format!("/documents/{id}/content")))).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Error::Verification(format!("the transfer of document {id} broke off: {}", Error::from(e))))?;
        check_content(&document.document, bytes.len() as u64, Digest::of(&bytes))?;
        let size = bytes.len() as u64;
        Ok((Verified { document, path: None, size, issuer_verified }, bytes.to_vec()))
    }

    // ------------------------------------------------------------ reuse, grants

    /// `POST reuse`.
    pub async fn reuse(
        &self,
        owner: &OwnerId,
        purpose: &Purpose,
        doc_types: &[DocType],
        at: Option<Timestamp>,
    ) -> Result<Vec<Component>, Error> {
        #[derive(Deserialize)]
        struct Reuse {
            components: Vec<Component>,
        }
        let r = self
            .request(Method::POST, &Self::owner_path(owner, "/reuse"))
            .json(&json!({"purpose": purpose, "doc_types": doc_types, "at": at}));
        let (_, c): (_, Reuse) = self.json(r).await?;
        Ok(c.components)
    }

    /// `POST grants` (the owner).
    pub async fn grant(&self, owner: &OwnerId, terms: &NewGrant) -> Result<GrantView, Error> {
        let r = self.request(Method::POST, &Self::owner_path(owner, "/grants")).json(terms);
        Ok(self.json(r).await?.1)
    }

    /// `GET owners/{owner}/grants` (the owner).
    pub async fn grants(&self, owner: &OwnerId) -> Result<Vec<GrantView>, Error> {
        self.grant_list(self.request(Method::GET, &Self::owner_path(owner, "/grants"))).await
    }

    /// `GET /v1/grants`: the grants given to the calling agency.
    pub async fn my_grants(&self) -> Result<Vec<GrantView>, Error> {
        self.grant_list(self.request(Method::GET, "/v1/grants")).await
    }

    async fn grant_list(&self, r: RequestBuilder) -> Result<Vec<GrantView>, Error> {
        #[derive(Deserialize)]
        struct List {
            grants: Vec<GrantView>,
        }
        let (_, l): (_, List) = self.json(r).await?;
        Ok(l.grants)
    }

    /// `DELETE grants/{id}` (the owner).
    pub async fn revoke_grant(&self, owner: &OwnerId, id: &GrantId) -> Result<(), Error> {
        self.send(self.request(Method::DELETE, &Self::owner_path(owner, &format!("/grants/{id}")))).await?;
        Ok(())
    }

    // ------------------------------------------------------------ audit

    /// One page of `GET access-log?after=&limit=` (the owner), unverified: entries with an
    /// index above `after`, ascending, at most `limit`, and the `after` of the next page. The
    /// page is checked to be in order and to make progress.
    pub async fn access_log_page(&self, owner: &OwnerId, after: Option<u64>, limit: u64) -> Result<Page, Error> {
        #[derive(Deserialize)]
        struct Log {
            entries: Vec<Entry>,
            #[serde(default)]
            next: Option<u64>,
        }
        let mut r = self.request(Method::GET, &Self::owner_path(owner, "/access-log")).query(&[("limit", limit)]);
        if let Some(a) = after {
            r = r.query(&[("after", a)]);
        }
        let (_, l): (_, Log) = self.json(r).await?;
        let mut last = after;
        for e in &l.entries {
            if last.is_some_and(|a| e.index <= a) {
                return Err(Error::Protocol(format!("access-log page: entry {} out of order", e.index)));
            }
            last = Some(e.index);
        }
        if l.next.is_some() && (l.entries.is_empty() || l.next < last) {
            return Err(Error::Protocol("access-log page: a `next` that does not follow the page".into()));
        }
        Ok(Page { entries: l.entries, next: l.next })
    }

    /// `GET access-log` (the owner), unverified: every entry, page by page (1,000 a page).
    pub async fn access_log(&self, owner: &OwnerId) -> Result<Vec<Entry>, Error> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.access_log_page(owner, after, LOG_PAGE).await?;
            all.extend(page.entries);
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(all),
            }
        }
    }

    /// Extension `POST access-log/proofs` (the owner; SPEC.md §20): the leaves of the owner's
    /// entries at `indexes` (at most 1,000) with their inclusion paths in the tree of `size`,
    /// unverified: `(index, leaf, path)` in the order asked.
    pub async fn access_log_proofs(
        &self,
        owner: &OwnerId,
        size: u64,
        indexes: &[u64],
    ) -> Result<Vec<(u64, Vec<u8>, Vec<[u8; 32]>)>, Error> {
        #[derive(Deserialize)]
        struct Proof {
            index: u64,
            leaf: String,
            hashes: Vec<String>,
        }
        #[derive(Deserialize)]
        struct Proofs {
            size: u64,
            proofs: Vec<Proof>,
        }
        let r = self
            .request(Method::POST, &Self::owner_path(owner, "/access-log/proofs"))
            .json(&json!({"size": size, "indexes": indexes}));
        let (_, p): (_, Proofs) = self.json(r).await?;
        if p.size != size || p.proofs.len() != indexes.len() || p.proofs.iter().zip(indexes).any(|(p, i)| p.index != *i)
        {
            return Err(Error::Protocol("access-log proofs: not the entries asked for".into()));
        }
        p.proofs
            .into_iter()
            .map(|p| {
                let leaf = B64.decode(p.leaf).map_err(|_| Error::Protocol("a leaf that is not base64".into()))?;
                let path = p.hashes.iter().map(|h| hash32(h)).collect::<Result<_, _>>()?;
                Ok((p.index, leaf, path))
            })
            .collect()
    }

    /// `GET access-log/{index}/leaf`: the leaf bytes.
    pub async fn access_log_leaf(&self, owner: &OwnerId, index: u64) -> Result<Vec<u8>, Error> {
        #[derive(Deserialize)]
        struct Leaf {
            index: u64,
            leaf: String,
        }
        let r = self.request(Method::GET, &Self::owner_path(owner, &format!("/access-log/{index}/leaf")));
        let (_, l): (_, Leaf) = self.json(r).await?;
        if l.index != index {
            return Err(Error::Protocol(format!("asked for leaf {index}, got {}", l.index)));
        }
        B64.decode(l.leaf).map_err(|_| Error::Protocol("a leaf that is not base64".into()))
    }

    /// `GET /v1/audit/checkpoint`: the signed note, unverified.
    pub async fn checkpoint_note(&self) -> Result<String, Error> {
        let resp = self.send(self.request(Method::GET, "/v1/audit/checkpoint")).await?;
        Ok(resp.text().await?)
    }

    /// `GET /v1/audit/proof/inclusion`: leaf hash and path.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<([u8; 32], Vec<[u8; 32]>), Error> {
        #[derive(Deserialize)]
        struct Proof {
            leaf_hash: String,
            hashes: Vec<String>,
        }
        let r = self.request(Method::GET, "/v1/audit/proof/inclusion").query(&[("index", index), ("size", size)]);
        let (_, p): (_, Proof) = self.json(r).await?;
        Ok((hash32(&p.leaf_hash)?, p.hashes.iter().map(|h| hash32(h)).collect::<Result<_, _>>()?))
    }

    /// `GET /v1/audit/proof/consistency`.
    pub async fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>, Error> {
        #[derive(Deserialize)]
        struct Proof {
            hashes: Vec<String>,
        }
        let r = self.request(Method::GET, "/v1/audit/proof/consistency").query(&[("from", from), ("to", to)]);
        let (_, p): (_, Proof) = self.json(r).await?;
        p.hashes.iter().map(|h| hash32(h)).collect()
    }

    /// Fetches the checkpoint and verifies it: signed by the vault key pinned in `trust` (or,
    /// the first time, by the key the server names, which is then pinned), and consistent with
    /// the last checkpoint `trust` saw (an RFC 9162 consistency proof). A rolled-back or forked
    /// log, or a changed vault key, is an [`Error::Verification`]; `trust` then keeps the old
    /// state. On success `trust` remembers the new checkpoint.
    pub async fn verified_checkpoint(&self, trust: &mut TrustStore) -> Result<Checkpoint, Error> {
        let served = self.vault_key().await?.note_verifier_key;
        let seen = trust.seen(&self.base).cloned();
        let pinned = match &seen {
            Some(s) if s.vault_key != served => {
                return Err(Error::Verification(format!(
                    "the server now names another vault key ({served}) than the one pinned ({}); if the operator \
                     really changed it, remove this server from the state file",
                    s.vault_key
                )))
            }
            Some(s) => s.vault_key.clone(),
            None => served,
        };
        let cp = open_checkpoint(&pinned, &self.checkpoint_note().await?)?;
        if let Some(old) = &seen {
            if needs_proof(old, &cp)? {
                let old_root = hash32(&old.root)?;
                let proof = self.consistency_proof(old.size, cp.size).await?;
                if !vault::log::merkle::verify_consistency(old.size, cp.size, &old_root, &cp.root, &proof) {
                    return Err(Error::Verification(format!(
                        "the log is not consistent with the checkpoint seen before (size {} → {}): it was \
                         rewritten",
                        old.size, cp.size
                    )));
                }
            }
        }
        trust.remember(
            &self.base,
            Seen { vault_key: pinned, origin: cp.origin.clone(), size: cp.size, root: B64.encode(cp.root) },
        )?;
        Ok(cp)
    }

    /// The owner's access log with every entry proven: its leaf bytes match the entry, and an
    /// inclusion proof ties the leaf to a checkpoint verified by [`Client::verified_checkpoint`].
    /// The log is read page by page; leaves and proofs come 1,000 entries per request (the
    /// `access-log/proofs` extension), or, from a server without it, one entry at a time with
    /// 16 in flight.
    pub async fn verified_access_log(
        &self,
        owner: &OwnerId,
        trust: &mut TrustStore,
    ) -> Result<(Checkpoint, Vec<VerifiedEntry>), Error> {
        let entries = self.access_log(owner).await?;
        // After the listing, so the checkpoint covers every listed entry.
        let cp = self.verified_checkpoint(trust).await?;
        if let Some(e) = entries.iter().find(|e| e.index >= cp.size) {
            return Err(Error::Verification(format!(
                "entry {} is not covered by the checkpoint (size {})",
                e.index, cp.size
            )));
        }
        let mut out = Vec::with_capacity(entries.len());
        let mut batches = true;
        for chunk in entries.chunks(LOG_PAGE as usize) {
            let indexes: Vec<u64> = chunk.iter().map(|e| e.index).collect();
            let proofs = if batches {
                match self.access_log_proofs(owner, cp.size, &indexes).await {
                    Ok(p) => Some(p),
                    // A server without the extension (api.md has single proofs only).
                    Err(Error::Api { status: 404 | 405, .. }) => None,
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            match proofs {
                Some(proofs) => {
                    for (e, (_, leaf, path)) in chunk.iter().zip(proofs) {
                        prove_entry(e, &leaf, &path, &cp)?;
                        out.push(VerifiedEntry { entry: e.clone(), proven_in: cp.size });
                    }
                }
                None => {
                    batches = false;
                    out.extend(self.prove_one_by_one(owner, chunk, &cp).await?);
                }
            }
        }
        Ok((cp, out))
    }

    /// Proves entries with one leaf and one inclusion-proof request each (api.md's endpoints),
    /// 16 entries in flight, results in order.
    async fn prove_one_by_one(
        &self,
        owner: &OwnerId,
        entries: &[Entry],
        cp: &Checkpoint,
    ) -> Result<Vec<VerifiedEntry>, Error> {
        futures_util::stream::iter(entries)
            .map(|e| async move {
                let leaf = self.access_log_leaf(owner, e.index).await?;
                let (_, path) = self.inclusion_proof(e.index, cp.size).await?;
                prove_entry(e, &leaf, &path, cp)?;
                Ok(VerifiedEntry { entry: e.clone(), proven_in: cp.size })
            })
            .buffered(16)
            .collect::<Vec<Result<VerifiedEntry, Error>>>()
            .await
            .into_iter()
            .collect()
    }

    // ------------------------------------------------------------ owners

    /// `GET export` (the owner) into a file (written to `dest.part`, renamed when complete).
    pub async fn export(&self, owner: &OwnerId, dest: &Path) -> Result<u64, Error> {
        let part = part_path(dest);
        let r: Result<u64, Error> = async {
            let resp = self.send(self.request(Method::GET, &Self::owner_path(owner, "/export"))).await?;
            let mut file = tokio::fs::File::create(&part).await.map_err(Error::io(&part))?;
            let mut body = resp.bytes_stream();
            let mut n = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                n += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(Error::io(&part))?;
            }
            file.sync_all().await.map_err(Error::io(&part))?;
            Ok(n)
        }
        .await;
        match r {
            Ok(n) => {
                tokio::fs::rename(&part, dest).await.map_err(Error::io(dest))?;
                Ok(n)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                Err(e)
            }
        }
    }

    /// `DELETE /v1/owners/{owner}` (the owner or the operator): the signed erasure receipt.
    pub async fn erase(&self, owner: &OwnerId) -> Result<SignedReceipt, Error> {
        Ok(self.json(self.request(Method::DELETE, &Self::owner_path(owner, ""))).await?.1)
    }

    // ------------------------------------------------------------ agencies

    /// `PUT /v1/agencies/{agency}` (the operator): the agency and whether it is new.
    pub async fn put_agency(&self, id: &AgencyId, new: &NewAgency) -> Result<(Agency, bool), Error> {
        let r = self.request(Method::PUT, &format!("/v1/agencies/{}", id.as_str())).json(new);
        let (status, a) = self.json(r).await?;
        Ok((a, status == StatusCode::CREATED))
    }

    /// `GET /v1/agencies`.
    pub async fn agencies(&self) -> Result<Vec<Agency>, Error> {
        #[derive(Deserialize)]
        struct List {
            agencies: Vec<Agency>,
        }
        let (_, l): (_, List) = self.json(self.request(Method::GET, "/v1/agencies")).await?;
        Ok(l.agencies)
    }

    /// `GET /v1/stats/reuse` as JSON (`from`, `to`: `YYYY-MM-DD`, inclusive).
    pub async fn reuse_stats(
        &self,
        by: vault::engine::stats::GroupBy,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<vault::engine::stats::Report, Error> {
        Ok(self.json(self.stats_request(by, from, to, "json")).await?.1)
    }

    /// `GET /v1/stats/reuse` as the server's CSV.
    pub async fn reuse_stats_csv(
        &self,
        by: vault::engine::stats::GroupBy,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<String, Error> {
        Ok(self.send(self.stats_request(by, from, to, "csv")).await?.text().await?)
    }

    fn stats_request(
        &self,
        by: vault::engine::stats::GroupBy,
        from: Option<&str>,
        to: Option<&str>,
        format: &str,
    ) -> RequestBuilder {
        let mut q = vec![("by", by.as_str()), ("format", format)];
        q.extend(from.map(|f| ("from", f)));
        q.extend(to.map(|t| ("to", t)));
        self.request(Method::GET, "/v1/stats/reuse").query(&q)
    }

    /// `GET /v1/agencies/{agency}`.
    pub async fn agency_info(&self, id: &AgencyId) -> Result<Agency, Error> {
        Ok(self.json(self.request(Method::GET, &format!("/v1/agencies/{}", id.as_str()))).await?.1)
    }

    // ------------------------------------------------------------ webhooks (SPEC.md §24)

    fn webhook_path(agency: &AgencyId, id: &WebhookId, rest: &str) -> String {
        format!("/v1/agencies/{}/webhooks/{}{rest}", agency.as_str(), id.as_str())
    }

    /// `PUT /v1/agencies/{agency}/webhooks/{id}` (the operator): the subscription and whether it
    /// is new.
    pub async fn put_webhook(
        &self,
        agency: &AgencyId,
        id: &WebhookId,
        new: &NewWebhook,
    ) -> Result<(WebhookView, bool), Error> {
        let r = self.request(Method::PUT, &Self::webhook_path(agency, id, "")).json(new);
        let (status, w) = self.json(r).await?;
        Ok((w, status == StatusCode::CREATED))
    }

    /// `GET /v1/agencies/{agency}/webhooks/{id}` (the operator): the subscription, its
    /// verifying key and outbox counts.
    pub async fn webhook(&self, agency: &AgencyId, id: &WebhookId) -> Result<WebhookView, Error> {
        Ok(self.json(self.request(Method::GET, &Self::webhook_path(agency, id, ""))).await?.1)
    }

    /// `DELETE /v1/agencies/{agency}/webhooks/{id}` (the operator).
    pub async fn delete_webhook(&self, agency: &AgencyId, id: &WebhookId) -> Result<(), Error> {
        self.send(self.request(Method::DELETE, &Self::webhook_path(agency, id, ""))).await?;
        Ok(())
    }

    /// One page of `GET .../webhooks/{id}/failed?after=&limit=` (the operator): parked events,
    /// oldest first, and the `after` of the next page.
    pub async fn failed_events(
        &self,
        agency: &AgencyId,
        id: &WebhookId,
        after: Option<&EventId>,
        limit: Option<usize>,
    ) -> Result<(Vec<Delivery>, Option<EventId>), Error> {
        #[derive(Deserialize)]
        struct Failed {
            events: Vec<Delivery>,
            next: Option<EventId>,
        }
        let mut q: Vec<(&str, String)> = Vec::new();
        q.extend(after.map(|a| ("after", a.to_string())));
        q.extend(limit.map(|n| ("limit", n.to_string())));
        let r = self.request(Method::GET, &Self::webhook_path(agency, id, "/failed")).query(&q);
        let (_, f): (_, Failed) = self.json(r).await?;
        Ok((f.events, f.next))
    }

    /// `POST .../webhooks/{id}/failed/{event}/redeliver` (the operator): the delivery queued
    /// again.
    pub async fn redeliver(&self, agency: &AgencyId, id: &WebhookId, event: &EventId) -> Result<Delivery, Error> {
        let r = self.request(Method::POST, &Self::webhook_path(agency, id, &format!("/failed/{event}/redeliver")));
        Ok(self.json(r).await?.1)
    }
}

/// Streams the file at `path` as the raw body of `r`.
async fn file_body(r: RequestBuilder, path: &Path) -> Result<RequestBuilder, Error> {
    let file = tokio::fs::File::open(path).await.map_err(Error::io(path))?;
    let len = file.metadata().await.map_err(Error::io(path))?.len();
    Ok(r.header("Content-Type", "application/octet-stream")
        .header("Content-Length", len)
        .body(reqwest::Body::wrap_stream(file_stream(file))))
}

/// A file as a stream of chunks for a request body.
fn file_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

fn exists(dest: &Path) -> Error {
    Error::Invalid(format!("{} exists; not overwriting it (--force replaces it)", dest.display()))
}

/// Creates `path` as a new file (`O_CREAT | O_EXCL`: never through a symbolic link, never an
/// existing file). A leftover `.part` file of an interrupted run is removed first (a link is
/// removed itself, not its target).
async fn create_new(path: &Path) -> Result<tokio::fs::File, Error> {
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    match opts.open(path).await {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            tokio::fs::remove_file(path).await.map_err(Error::io(path))?;
            opts.open(path).await.map_err(Error::io(path))
        }
        other => other.map_err(Error::io(path)),
    }
}

/// A file name for a document's content in a folder of the caller's: the last component of the
/// depositor's `file_name` with every character a file system or a shell could take for
/// something else removed (control and bidirectional-formatting characters, `/ \ : * ? " < > |`),
/// no leading dots (no hidden or `..` names) or spaces, no trailing dots or spaces, not a
/// Windows device name, at most 200 bytes. `None` when nothing usable is left (use the
/// document id).
pub fn safe_file_name(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    let kept: String = last
        .chars()
        .filter(|&c| !c.is_control() && !bidi(c) && !matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|'))
        .collect();
    let trimmed = kept.trim_start_matches(['.', ' ']).trim_end_matches(['.', ' ']);
    let mut out = String::new();
    for c in trimmed.chars() {
        if out.len() + c.len_utf8() > 200 {
            break;
        }
        out.push(c);
    }
    // The cut may end on a dot or space that the trim above kept inside the name.
    out.truncate(out.trim_end_matches(['.', ' ']).len());
    let stem = out.split('.').next().unwrap_or_default().trim_end().to_ascii_uppercase();
    let device = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || (stem.len() == 4
            && (stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.as_bytes()[3].is_ascii_digit());
    (!out.is_empty() && !device).then_some(out)
}

/// `dest` + `.part`.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

fn check_content(doc: &Document, size: u64, digest: Digest) -> Result<(), Error> {
    if size != doc.size || digest != doc.meta.digest {
        return Err(Error::Verification(format!(
            "document {}: received {size} bytes with digest {digest}, the record says {} bytes with digest {}",
            doc.id, doc.size, doc.meta.digest
        )));
    }
    Ok(())
}

/// An entry is proven when its leaf bytes say what the entry says and the leaf is included,
/// at the entry's index, in the tree the verified checkpoint signs.
fn prove_entry(e: &Entry, leaf: &[u8], path: &[[u8; 32]], cp: &Checkpoint) -> Result<(), Error> {
    check_leaf(e, leaf)?;
    if !vault::log::merkle::verify_inclusion(&vault::log::merkle::leaf_hash(leaf), e.index, cp.size, path, &cp.root) {
        return Err(Error::Verification(format!("entry {} is not in the log the checkpoint signs", e.index)));
    }
    Ok(())
}

/// The leaf bytes must say what the entry says (SPEC.md §14: the fields other than the
/// keyed references are in clear).
fn check_leaf(e: &Entry, leaf: &[u8]) -> Result<(), Error> {
    let text = std::str::from_utf8(leaf).map_err(|_| Error::Verification("a leaf that is not UTF-8".into()))?;
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("\u{0}");
    let purpose = e.purpose.as_ref().map(|p| p.as_str()).unwrap_or("");
    let ok = text.starts_with(vault::log::audit::LEAF_VERSION)
        && field("time:") == e.time.to_string()
        && field("actor:") == e.actor
        && field("action:") == e.action
        && field("purpose:") == purpose
        && field("outcome:") == e.outcome;
    if !ok {
        return Err(Error::Verification(format!("entry {}: the leaf bytes say something else", e.index)));
    }
    Ok(())
}

fn hash32(s: &str) -> Result<[u8; 32], Error> {
    let raw = B64.decode(s).map_err(|_| Error::Protocol(format!("{s:?} is not a base64 hash")))?;
    raw.try_into().map_err(|_| Error::Protocol("a hash that is not 32 bytes".into()))
}

fn preview(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn item_9_9_file_names_from_records_are_made_safe() {
        for (given, safe) in [
            ("khai-sinh.pdf", Some("khai-sinh.pdf")),
            ("../../.bashrc", Some("bashrc")),
            ("/etc/passwd", Some("passwd")),
            (".bashrc", Some("bashrc")),
            ("..\\..\\boot.ini", Some("boot.ini")),
            ("a\u{0}b\nc\u{202e}fdp.exe", Some("abcfdp.exe")),
            ("x:y*z?.pdf", Some("xyz.pdf")),
            ("report. . .", Some("report")),
            ("  .hidden", Some("hidden")),
            ("..", None),
            ("...", None),
            ("dir/", None),
            ("", None),
            ("\u{7}", None),
            ("CON", None),
            ("nul.txt", None),
            ("com1.log", None),
            ("console.txt", Some("console.txt")),
        ] {
            assert_eq!(safe_file_name(given).as_deref(), safe, "{given:?}");
        }
        let long = "đ".repeat(300);
        let cut = safe_file_name(&long).unwrap();
        assert!(cut.len() <= 200 && cut.chars().all(|c| c == 'đ'));
    }

    #[test]
    fn review_a_name_cut_to_200_bytes_still_has_no_trailing_dot_or_space() {
        for tail in [". b", " .x", "  y"] {
            let given = format!("{}{tail}", "a".repeat(199));
            let got = safe_file_name(&given).unwrap();
            assert!(got.len() <= 200 && !got.ends_with(['.', ' ']), "{given:?} -> {got:?}");
            assert_eq!(got, "a".repeat(199));
        }
    }

    #[test]
    fn debug_output_never_shows_a_token() {
        let c = Client::new("http://127.0.0.1:1", Auth::Bearer("eyJ.secret.token".into())).unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("[redacted]"));
        assert!(Client::new("ftp://x", Auth::None).is_err());
    }
}
