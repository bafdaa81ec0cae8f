//! Principal-aware, audited operations: the one place that decides who may do what.
//!
//! Every method here takes a [`Caller`] (who, and for agencies the stated purpose), decides
//! (`visibility`, `readable_document`), performs the operation and appends exactly one audit entry about the
//! owner, whether the call was allowed or refused (SPEC.md §14). The HTTP service uses only
//! these methods; the methods without a caller on [`Vault`] are the trusted embedding API and
//! are not audited.

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::crypto::seal::aad;
use crate::engine::document::{Document, NewDocument, Status};
use crate::engine::grants::{Grant, GrantStatus, NewGrant};
use crate::engine::provenance::{Agency, NewAgency};
use crate::engine::supply::By;
use crate::engine::vault::{describe_key, seal_record, ContentReader, OwnerCtx, Stored, Vault};
use crate::ids::{AgencyId, Digest, DocType, DocumentId, GrantId, OwnerId, Purpose};
use crate::log::audit::{Actor, Draft, Entry, LeafProof, Page, PageLimit};
use crate::storage::layout;
use crate::storage::Op;
use crate::time::Timestamp;
use crate::Error;

/// Most digests in one `contents/missing` question.
pub const MAX_MISSING: usize = 10_000;
/// Most document types in one reuse check.
pub const MAX_REUSE_TYPES: usize = 1_000;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An owner (citizen or company representative), authenticated by an identity provider.
    Owner(OwnerId),
    /// A dossier system, authenticated with one of its registered keys.
    Agency(AgencyId),
    /// The operator.
    Operator,
}

/// A caller and the purpose it states (`Vault-Purpose`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// The stated purpose (procedure code), for agency reads.
    pub purpose: Option<Purpose>,
}

impl Caller {
    /// An owner acting on their own data.
    pub fn owner(id: OwnerId) -> Self {
        Self { principal: Principal::Owner(id), purpose: None }
    }

    /// An agency stating a purpose.
    pub fn agency(id: AgencyId, purpose: Option<Purpose>) -> Self {
        Self { principal: Principal::Agency(id), purpose }
    }

    /// The operator.
    pub fn operator() -> Self {
        Self { principal: Principal::Operator, purpose: None }
    }

    /// Who acted, as the audit log names it, on the data of `owner` (if the call is about
    /// one): a citizen or organisation is the `owner` only of their own data; on anyone
    /// else's (or on no one's, such as the agency registry) they are `another-owner`.
    fn actor(&self, owner: Option<&OwnerId>) -> Actor {
        match &self.principal {
            Principal::Owner(me) if Some(me) == owner => Actor::Owner,
            Principal::Owner(_) => Actor::AnotherOwner,
            Principal::Agency(a) => Actor::Agency(a.clone()),
            Principal::Operator => Actor::Operator,
        }
    }
}

/// Per-type answer of a reuse check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ReuseStatus {
    /// A valid document is held: drop the component from the form.
    Held,
    /// Nothing usable (none, or only not-yet-valid ones).
    Missing,
    /// The newest one has expired.
    Expired,
    /// The newest one was revoked.
    Revoked,
    /// The caller's grant does not cover this type (nothing is revealed about it).
    NotGranted,
}

/// One component of a reuse check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// The type asked about.
    pub doc_type: DocType,
    /// What the owner holds of it.
    pub status: ReuseStatus,
    /// The document to reuse, when `held`.
    pub document: Option<Document>,
}

/// What a caller may see of an owner's documents.
enum Visibility {
    /// Everything (the owner).
    All,
    /// An agency: what its active grants for the purpose cover, and what it issued.
    Agency { agency: AgencyId, grants: Vec<Grant> },
}

impl Visibility {
    fn sees(&self, doc: &Document) -> bool {
        match self {
            Visibility::All => true,
            Visibility::Agency { agency, grants } => {
                doc.meta.issuer.as_ref() == Some(agency) || grants.iter().any(|g| g.covers(doc))
            }
        }
    }

    /// The grant that covers `doc`, if access to it rests on one.
    fn grant_for(&self, doc: &Document) -> Option<&Grant> {
        match self {
            Visibility::All => None,
            Visibility::Agency { grants, .. } => grants.iter().find(|g| g.covers(doc)),
        }
    }

    fn first_grant(&self) -> Option<String> {
        match self {
            Visibility::Agency { grants, .. } => grants.first().map(|g| g.id.to_string()),
            Visibility::All => None,
        }
    }
}

/// Who supplies uploaded bytes, for the possession rule (an operator never gets this far).
fn by(caller: &Caller) -> By<'_> {
    match &caller.principal {
        Principal::Agency(a) => By::Agency(a),
        Principal::Owner(_) | Principal::Operator => By::Owner,
    }
}

/// Reuse ordering: issuer-verified first, then newest `issued_at`, then newest deposit.
fn reuse_rank(d: &Document) -> (bool, Option<Timestamp>, Timestamp) {
    (d.verified, d.meta.issued_at, d.deposited_at)
}

/// An audited read started by [`Vault::start_content_as`] or [`Vault::start_document_as`]:
/// decided, its entry queued at the audit sequencer. Poll it with [`Vault::poll_read`] and end
/// it with [`Vault::finish_read`], or give it up with [`Vault::abandon_read`]; one dropped
/// otherwise leaves its grant's counted use pending until the vault is reopened.
#[must_use = "a started read must be finished"]
#[derive(Debug)]
pub struct QueuedRead<T> {
    result: Result<T, Error>,
    queued: crate::log::audit::Queued,
    /// The grant write queued with the entry (key, sequence), reported done at the finish.
    grant: Option<crate::engine::grants::GrantWrite>,
    answer: Option<Result<(u64, u64), Error>>,
}

/// A read decided and its entry queued: the value, the queued call and the grant write it
/// carries (key, sequence), if any.
type DecidedRead<T> = Result<(T, crate::log::audit::Queued, Option<crate::engine::grants::GrantWrite>), Error>;

/// How a non-blocking start of an audited read went.
#[derive(Debug)]
pub enum Started<T> {
    /// Decided and queued: poll it, then finish it.
    Queued(QueuedRead<T>),
    /// Deciding would wait (a lock, a file): make the blocking call instead. Nothing was done.
    Blocking,
}

/// What [`Vault::poll_read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPoll {
    /// Answered: call [`Vault::finish_read`].
    Ready,
    /// Not yet: the waker will be woken.
    Pending,
    /// Not yet, and this caller was given the audit sequencer's turn: run
    /// [`Vault::lead_queue`] on a thread that may block, then poll again.
    Lead,
}

impl Vault {
    fn draft(&self, caller: &Caller, owner: Option<&OwnerId>, action: &'static str) -> Draft {
        Draft {
            time: Timestamp::now(),
            actor: caller.actor(owner),
            action,
            owner: owner.cloned(),
            document: None,
            purpose: caller.purpose.clone(),
            grant: None,
            outcome: "allowed".into(),
        }
    }

    pub(crate) fn draft_for(&self, caller: &Caller, owner: Option<&OwnerId>, action: &'static str) -> Draft {
        self.draft(caller, owner, action)
    }

    pub(crate) fn refuse_for<T>(&self, draft: Draft, e: Error) -> Result<T, Error> {
        self.refuse(draft, e)
    }

    /// Records a refusal (or a failure) and returns the error.
    fn refuse<T>(&self, mut draft: Draft, e: Error) -> Result<T, Error> {
        if matches!(e, Error::AuditFailed(_)) {
            return Err(e);
        }
        draft.outcome = format!("refused:{}", e.code());
        self.audit_now(&draft)?;
        Err(e)
    }

    /// Runs `f`; on error, records the refusal. `f` records the allowed entry itself (in the
    /// batch of its change, or with `audit_now` for reads).
    fn audited<T>(&self, draft: Draft, f: impl FnOnce(&mut Draft) -> Result<T, Error>) -> Result<T, Error> {
        let mut d = draft;
        match f(&mut d) {
            Ok(v) => Ok(v),
            Err(e) => self.refuse(d, e),
        }
    }

    fn registered_agency(&self, a: &AgencyId) -> Result<Agency, Error> {
        self.agency(a)?.ok_or(Error::Forbidden)
    }

    /// The caller must be this owner.
    fn require_owner(caller: &Caller, owner: &OwnerId) -> Result<(), Error> {
        match &caller.principal {
            Principal::Owner(o) if o == owner => Ok(()),
            _ => Err(Error::Forbidden),
        }
    }

    /// What the caller may read of `owner`'s documents (agency reads need a purpose).
    fn visibility(
        &self,
        caller: &Caller,
        owner: &OwnerId,
        o: Option<&OwnerCtx>,
        at: Timestamp,
    ) -> Result<Visibility, Error> {
        match &caller.principal {
            Principal::Owner(id) if id == owner => Ok(Visibility::All),
            Principal::Owner(_) | Principal::Operator => Err(Error::Forbidden),
            Principal::Agency(a) => {
                self.registered_agency(a)?;
                let purpose = caller.purpose.as_ref().ok_or(Error::PurposeRequired)?;
                let grants = match o {
                    Some(o) => self.active_grants(o, a, purpose, at)?,
                    None => Vec::new(),
                };
                Ok(Visibility::Agency { agency: a.clone(), grants })
            }
        }
    }

    /// Stores uploaded content for `owner` (the owner, or any registered agency for a deposit
    /// that follows). An agency's upload records that it supplied these bytes for this owner
    /// (SPEC.md §14); it is reported as newly stored unless that agency had supplied it before,
    /// and does the same work whether the owner held it or not, so the answer reveals nothing.
    pub fn upload_as(
        &self,
        caller: &Caller,
        owner: &OwnerId,
        source: impl Read,
        expected: Option<Digest>,
    ) -> Result<Stored, Error> {
        self.audited(self.draft(caller, Some(owner), "content.upload"), |d| {
            match &caller.principal {
                Principal::Owner(o) if o == owner => {}
                Principal::Agency(a) => {
                    self.registered_agency(a)?;
                }
                _ => return Err(Error::Forbidden),
            }
            self.put_content_with(owner, source, expected, Some(d), by(caller))
        })
    }

    /// The digests the caller must upload: for the owner, those not held; for an agency, those
    /// it has not itself supplied for this owner or that are no longer held (a grant does not
    /// count), so the answer reveals nothing of what the owner holds.
    pub fn missing_as(&self, caller: &Caller, owner: &OwnerId, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        self.audited(self.draft(caller, Some(owner), "content.missing"), |d| {
            if digests.len() > MAX_MISSING {
                return Err(Error::InvalidRequest(format!("at most {MAX_MISSING} digests per request")));
            }
            let o = self.owner(owner, false)?;
            let vis = self.visibility(caller, owner, o.as_deref(), Timestamp::now())?;
            let missing = match (vis, &o) {
                (Visibility::All, _) => self.missing(owner, digests)?,
                (Visibility::Agency { agency, .. }, Some(o)) => {
                    let mut out = Vec::new();
                    for x in digests {
                        if !(self.held(o, x)? && self.supply_of(o, x, &agency)?.is_some()) {
                            out.push(*x);
                        }
                    }
                    out
                }
                (Visibility::Agency { .. }, None) => digests.to_vec(),
            };
            // Bytes the caller need not upload: the sizes of the digests it may skip.
            let mut skipped = 0u64;
            if let Some(o) = &o {
                let missing: std::collections::HashSet<&Digest> = missing.iter().collect();
                let mut seen = std::collections::HashSet::new();
                for x in digests.iter().filter(|x| !missing.contains(x) && seen.insert(**x)) {
                    skipped += self.held_size(o, x)?.unwrap_or(0);
                }
            }
            self.audit_now_with(self.saved_tally(d, skipped), d)?;
            Ok(missing)
        })
    }

    /// Deposits a document. The owner deposits unverified documents (no issuer, no signature);
    /// an agency deposits only as itself, with a signature that must verify.
    pub fn deposit_as_caller(&self, caller: &Caller, owner: &OwnerId, new: NewDocument) -> Result<Document, Error> {
        Ok(self.deposit_as(caller, owner, new)?.0)
    }

    /// [`Vault::deposit_as_caller`], also telling whether the document is new: a deposit
    /// identical (owner, digest, type, reference, issuer) to a live one returns that one and
    /// `false`, so re-running a bulk deposit creates no duplicates.
    pub fn deposit_as(&self, caller: &Caller, owner: &OwnerId, new: NewDocument) -> Result<(Document, bool), Error> {
        let id = DocumentId::random();
        let mut draft = self.draft(caller, Some(owner), "document.deposit");
        draft.document = Some(id);
        self.audited(draft, |d| {
            let verify = self.deposit_rules(caller, owner, &new)?;
            let o = self.owner(owner, false)?.ok_or_else(|| {
                Error::Conflict(format!("content {} is not held for this owner; upload it first", new.digest))
            })?;
            self.deposit_inner(&o, new, verify, id, Timestamp::now(), Some(d), by(caller))
        })
    }

    /// Uploads a content and deposits a document about it in one step (the one-call deposit of
    /// a dossier system); same rules as [`Vault::upload_as`] and [`Vault::deposit_as`]. Returns
    /// whether the document is new (a repeat of a live deposit returns that one).
    pub fn put_document_as(
        &self,
        caller: &Caller,
        owner: &OwnerId,
        source: impl Read,
        new: NewDocument,
    ) -> Result<(Stored, Document, bool), Error> {
        let id = DocumentId::random();
        let mut draft = self.draft(caller, Some(owner), "document.deposit");
        draft.document = Some(id);
        self.audited(draft, |d| {
            let verify = self.deposit_rules(caller, owner, &new)?;
            self.put_document_with(owner, source, new, verify, id, Some(d), by(caller))
        })
    }

    /// [`Vault::put_document_as`] for many documents of one owner, each with its own rules,
    /// result and audit entry, made durable together with one wait before anything is
    /// returned (the outer error means none of it may be relied on).
    pub fn put_documents_as<R: Read>(
        &self,
        caller: &Caller,
        owner: &OwnerId,
        items: Vec<(R, NewDocument)>,
    ) -> Result<Vec<Result<crate::engine::vault::Put, Error>>, Error> {
        self.deferred(|| {
            items.into_iter().map(|(source, new)| self.put_document_as(caller, owner, source, new)).collect()
        })
    }

    /// Whether the caller may deposit for `owner` at all (the owner, or a registered agency):
    /// checked before a batch deposit's body is read. A refusal is audited (`document.deposit`).
    pub fn may_deposit_as(&self, caller: &Caller, owner: &OwnerId) -> Result<(), Error> {
        match &caller.principal {
            Principal::Owner(o) if o == owner => Ok(()),
            Principal::Agency(a) if self.agency(a)?.is_some() => Ok(()),
            _ => self.refuse(self.draft(caller, Some(owner), "document.deposit"), Error::Forbidden),
        }
    }

    /// Who may deposit what; returns whether the signature must be verified.
    fn deposit_rules(&self, caller: &Caller, owner: &OwnerId, new: &NewDocument) -> Result<bool, Error> {
        match &caller.principal {
            Principal::Owner(o) if o == owner => {
                if new.issuer.is_some() || new.signature.is_some() {
                    return Err(Error::InvalidRequest("an owner's own deposit has no issuer and no signature".into()));
                }
                Ok(false)
            }
            Principal::Agency(a) => {
                self.registered_agency(a)?;
                if new.issuer.as_ref() != Some(a) {
                    return Err(Error::Forbidden);
                }
                Ok(true)
            }
            _ => Err(Error::Forbidden),
        }
    }

    /// Lists documents: all for the owner; for an agency, those its active grants for the
    /// stated purpose cover and those it issued.
    pub fn documents_as(
        &self,
        caller: &Caller,
        owner: &OwnerId,
        doc_type: Option<&DocType>,
    ) -> Result<Vec<Document>, Error> {
        self.audited(self.draft(caller, Some(owner), "document.list"), |d| {
            let o = self.owner(owner, false)?;
            let vis = self.visibility(caller, owner, o.as_deref(), Timestamp::now())?;
            let docs: Vec<Document> =
                self.documents(owner, doc_type)?.into_iter().filter(|doc| vis.sees(doc)).collect();
            if let Visibility::Agency { grants, agency } = &vis {
                let issued_any = docs.iter().any(|doc| doc.meta.issuer.as_ref() == Some(agency));
                let erased = o.is_none() && self.erased(owner)?;
                if grants.is_empty() && !issued_any && !erased {
                    return Err(Error::GrantRequired);
                }
            }
            d.grant = vis.first_grant();
            self.audit_now(d)?;
            Ok(docs)
        })
    }

    /// One document's record. For an agency, a document it may not read and a document that
    /// does not exist get the same answer (`grant_required`).
    pub fn document_as(&self, caller: &Caller, owner: &OwnerId, id: &DocumentId) -> Result<Document, Error> {
        let mut draft = self.draft(caller, Some(owner), "document.read");
        draft.document = Some(*id);
        let read = self.queue_read(draft, |d| self.decide_document_read(caller, owner, id, d))?;
        self.finish_read(read)
    }

    /// Decides a record read and queues its entry (the blocking and the async reads share it).
    fn decide_document_read(
        &self,
        caller: &Caller,
        owner: &OwnerId,
        id: &DocumentId,
        d: &mut Draft,
    ) -> DecidedRead<Document> {
        let doc = self.readable_document(caller, owner, id, d)?;
        Ok((doc, self.enqueue_audited(Vec::new(), d), None))
    }

    fn readable_document(
        &self,
        caller: &Caller,
        owner: &OwnerId,
        id: &DocumentId,
        d: &mut Draft,
    ) -> Result<Document, Error> {
        let o = self.owner(owner, false)?;
        let vis = self.visibility(caller, owner, o.as_deref(), Timestamp::now())?;
        let found = match &o {
            Some(o) => match self.document_of(o, id) {
                Ok(doc) => Some(doc),
                Err(Error::NotFound(_)) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        match (found, &vis) {
            (Some(doc), vis) if vis.sees(&doc) => {
                d.grant = vis.grant_for(&doc).map(|g| g.id.to_string());
                Ok(doc)
            }
            (_, Visibility::All) => Err(Error::NotFound("document")),
            // After erasure an agency learns that, and only that (api.md "Export and erasure").
            (_, Visibility::Agency { .. }) if o.is_none() && self.erased(owner)? => Err(Error::NotFound("document")),
            (_, Visibility::Agency { .. }) => Err(Error::GrantRequired),
        }
    }

    /// Whether the owner's data was erased and no new vault was started since (the caller
    /// checks that the owner has no key): the first of the owner's access-log entries is then
    /// the erasure's own, which erasure keeps while it removes every earlier one.
    fn erased(&self, owner: &OwnerId) -> Result<bool, Error> {
        let op = self.owner_ref(owner);
        let Some(item) = self.meta().scan(&layout::entries_of(&op)).next() else { return Ok(false) };
        let (k, v) = item?;
        let plain = crate::crypto::seal::open(&self.vault_records, &aad(&k), &v)
            .map_err(|_| Error::Corrupt(describe_key(&k)))?;
        let e: Entry = serde_json::from_slice(&plain).map_err(|_| Error::Corrupt(describe_key(&k)))?;
        Ok(e.action == "owner.erase" && e.outcome == "allowed")
    }

    /// Opens a document's content. An agency's read counts against its grant's `max_uses`
    /// (documents it issued do not need a grant and count against none).
    pub fn content_as(
        &self,
        caller: &Caller,
        owner: &OwnerId,
        id: &DocumentId,
    ) -> Result<(Document, ContentReader), Error> {
        let mut draft = self.draft(caller, Some(owner), "document.content");
        draft.document = Some(*id);
        let read = self.queue_read(draft, |d| self.decide_content_read(caller, owner, id, d))?;
        self.finish_read(read)
    }

    /// Decides a content read and queues its entry, with the grant's counted use when it reads
    /// under a grant (the blocking and the async reads share it).
    fn decide_content_read(
        &self,
        caller: &Caller,
        owner: &OwnerId,
        id: &DocumentId,
        d: &mut Draft,
    ) -> DecidedRead<(Document, ContentReader)> {
        let doc = self.readable_document(caller, owner, id, d)?;
        let o = self.owner(owner, false)?.ok_or(Error::NotFound("document"))?;
        let reader = self.open_content_of(&o, &doc.meta.digest)?;
        let issued_by_caller = matches!(&caller.principal, Principal::Agency(a) if doc.meta.issuer.as_ref() == Some(a));
        let tally = self.read_tally(d, &doc.meta.doc_type);
        match (&d.grant, issued_by_caller) {
            (Some(gid), false) => {
                let gid = GrantId::parse(gid).map_err(|_| Error::GrantRequired)?;
                let (queued, write) = self.queue_grant_use(&o, &gid, d, tally)?;
                Ok(((doc, reader), queued, Some(write)))
            }
            _ => Ok(((doc, reader), self.enqueue_audited(vec![tally], d), None)),
        }
    }

    /// Decides a grant's use and queues the counted grant with the entry at the sequencer; the
    /// caller awaits the call, then reports the grant write done (`grant_write_done(key, seq)`,
    /// done by [`Vault::finish_read`]).
    fn queue_grant_use(
        &self,
        o: &OwnerCtx,
        id: &GrantId,
        d: &Draft,
        tally: Op,
    ) -> Result<(crate::log::audit::Queued, crate::engine::grants::GrantWrite), Error> {
        Ok({
            // The check and the count are one step under the lock, so max_uses is never
            // exceeded. The write is queued at the sequencer under the lock (writes of a grant
            // are applied in the order they were computed) and awaited outside it, so
            // concurrent reads share one batch and one sync. Under the owner's change lock
            // with its current keys (an erasure since `o` was resolved took the grant with it;
            // one that starts later writes every queued call before its own changes).
            let decided = o;
            let (mut owner_guard, o) = self.owner_for_change(&decided.id, false)?;
            let o = &*o.ok_or(Error::GrantRequired)?;
            // The read was decided, and its content opened, under `decided`: if the owner was
            // erased (and perhaps started afresh) since, that content is gone, and so is the grant.
            if o.keys.records != decided.keys.records {
                return Err(Error::GrantRequired);
            }
            let mut pending = self.grants_lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut g = self.grant_for_change(&pending, o, id)?.ok_or(Error::GrantRequired)?;
            if g.status(Timestamp::now()) != GrantStatus::Active {
                return Err(Error::GrantRequired);
            }
            g.uses += 1;
            let key = crate::engine::grants::grant_key(&o.op, id);
            let value = seal_record(&o.keys, &key, &g);
            let exhausted =
                if g.terms.max_uses == Some(g.uses) { self.grant_exhausted_ops(&g, d.time)? } else { Vec::new() };
            // The grant is rewritten on every use: its next readers find it opened (kept only
            // once nothing can fail before it is queued).
            self.cache_written(&key, &value, g.clone());
            let mut ops = vec![Op::Put(key.clone(), value), tally];
            ops.extend(exhausted);
            let seq = pending.queued(key.clone(), g);
            // The in-process lock ends here (this instance's later changes of the grant are
            // applied after this one, in queue order); the store's lock is held until it is
            // applied, for the other instances'.
            let write = crate::engine::grants::GrantWrite { key, seq, _lock: owner_guard.take_remote() };
            (self.enqueue_audited(ops, d), write)
        })
    }

    /// [`Vault::content_as`] for an async caller: decides the read without waiting (for an
    /// erasure's lock, or for a blob file: those give [`Started::Blocking`], and the caller
    /// uses `content_as`) and queues its audit entry (and the grant's counted use, or the
    /// refusal) at the sequencer. The caller polls it with [`Vault::poll_read`] and ends it with
    /// [`Vault::finish_read`], which returns what `content_as` would have: the read is allowed
    /// only once its entry is durable. Only contents held in the metadata store (small ones)
    /// are started this way.
    pub fn start_content_as(
        &self,
        caller: &Caller,
        owner: &OwnerId,
        id: &DocumentId,
    ) -> Started<(Document, ContentReader)> {
        let mut draft = self.draft(caller, Some(owner), "document.content");
        draft.document = Some(*id);
        self.start_read(draft, |d| self.decide_content_read(caller, owner, id, d))
    }

    /// [`Vault::document_as`] for an async caller, as [`Vault::start_content_as`] is for
    /// `content_as`.
    pub fn start_document_as(&self, caller: &Caller, owner: &OwnerId, id: &DocumentId) -> Started<Document> {
        let mut draft = self.draft(caller, Some(owner), "document.read");
        draft.document = Some(*id);
        self.start_read(draft, |d| self.decide_document_read(caller, owner, id, d))
    }

    /// Runs the decision `f` of an audited read in a non-blocking section (see
    /// [`Vault::queue_read`]); one that would wait is not started.
    fn start_read<T>(&self, draft: Draft, f: impl FnOnce(&mut Draft) -> DecidedRead<T>) -> Started<T> {
        crate::storage::nonblocking(|| match self.queue_read(draft, f) {
            Ok(read) => Started::Queued(read),
            Err(_) => Started::Blocking,
        })
    }

    /// Runs the decision `f` of an audited read: an allowed read is queued by `f` itself; a
    /// refusal is queued here (the entry `refused:<code>`). Only a decision that would block
    /// ([`Error::WouldBlock`]) or could not be audited is an error (nothing was queued).
    fn queue_read<T>(
        &self,
        draft: Draft,
        f: impl FnOnce(&mut Draft) -> DecidedRead<T>,
    ) -> Result<QueuedRead<T>, Error> {
        let mut d = draft;
        match f(&mut d) {
            Ok((value, queued, grant)) => Ok(QueuedRead { result: Ok(value), queued, grant, answer: None }),
            Err(e @ (Error::WouldBlock | Error::AuditFailed(_))) => Err(e),
            Err(e) => {
                d.outcome = format!("refused:{}", e.code());
                let queued = self.enqueue_audited(Vec::new(), &d);
                Ok(QueuedRead { result: Err(e), queued, grant: None, answer: None })
            }
        }
    }

    /// Polls a started read: [`ReadPoll::Ready`] once its entry is durable (or failed), then
    /// call [`Vault::finish_read`]. [`ReadPoll::Pending`] registers `cx`'s waker.
    /// [`ReadPoll::Lead`]: no batch is being written, so the caller must have
    /// [`Vault::lead_queue`] run on a thread that may block (and poll again).
    pub fn poll_read<T>(&self, read: &mut QueuedRead<T>, cx: &mut std::task::Context<'_>) -> ReadPoll {
        if read.answer.is_some() {
            return ReadPoll::Ready;
        }
        match self.poll_queued(&read.queued, cx) {
            crate::log::audit::Polled::Ready(a) => {
                read.answer = Some(a);
                ReadPoll::Ready
            }
            crate::log::audit::Polled::Pending => ReadPoll::Pending,
            crate::log::audit::Polled::Lead => ReadPoll::Lead,
        }
    }

    /// Gives up a started read whose caller went away (an async task dropped before it
    /// finished): its entry (and the grant's counted use) is still written, nothing is
    /// returned. A started read must be either finished or abandoned.
    pub fn abandon_read<T>(&self, read: QueuedRead<T>) {
        let QueuedRead { queued, grant, answer, .. } = read;
        match answer {
            Some(_) => {
                drop(queued);
                if let Some(w) = grant {
                    self.grant_done(w);
                }
            }
            None => self.abandon_queued(queued, grant),
        }
    }

    /// Ends a started read: what the blocking call would have returned. Returns at once after
    /// [`ReadPoll::Ready`]; before it, it blocks until the entry is durable.
    pub fn finish_read<T>(&self, read: QueuedRead<T>) -> Result<T, Error> {
        let QueuedRead { result, queued, grant, answer } = read;
        let answer = match answer {
            Some(a) => {
                drop(queued);
                a
            }
            None => self.await_audited(queued),
        };
        if let Some(w) = grant {
            self.grant_done(w);
        }
        let (ticket, _) = answer.map_err(crate::log::audit::audit_failed)?;
        // The leader made the batch durable before answering: this does not wait.
        self.wait_ticket(ticket).map_err(crate::log::audit::audit_failed)?;
        result
    }

    /// Deletes a document (the owner only).
    pub fn delete_as(&self, caller: &Caller, owner: &OwnerId, id: &DocumentId) -> Result<(), Error> {
        let mut draft = self.draft(caller, Some(owner), "document.delete");
        draft.document = Some(*id);
        self.audited(draft, |d| {
            Self::require_owner(caller, owner)?;
            let o = self.owner(owner, false)?.ok_or(Error::NotFound("document"))?;
            self.delete_inner(&o, id, Some(d))
        })
    }

    /// Revokes a document (its issuing agency only). Anyone else, and an unknown document, get
    /// `forbidden`.
    pub fn revoke_as(
        &self,
        caller: &Caller,
        owner: &OwnerId,
        id: &DocumentId,
        reason: &str,
    ) -> Result<Document, Error> {
        let mut draft = self.draft(caller, Some(owner), "document.revoke");
        draft.document = Some(*id);
        self.audited(draft, |d| {
            let Principal::Agency(a) = &caller.principal else { return Err(Error::Forbidden) };
            self.registered_agency(a)?;
            let o = self.owner(owner, false)?.ok_or(Error::Forbidden)?;
            let doc =
                self.document_of(&o, id)
                    .map_err(|e| if matches!(e, Error::NotFound(_)) { Error::Forbidden } else { e })?;
            if doc.meta.issuer.as_ref() != Some(a) {
                return Err(Error::Forbidden);
            }
            self.revoke_inner(&o, id, reason, Timestamp::now(), Some(d))
        })
    }

    /// The reuse check: per document type, whether the owner holds a valid document of it
    /// (api.md "Reuse check"). `purpose` is the procedure the check is for; an agency must
    /// state the same purpose and hold an active grant for it.
    pub fn reuse_as(
        &self,
        caller: &Caller,
        owner: &OwnerId,
        purpose: &Purpose,
        doc_types: &[DocType],
        at: Option<Timestamp>,
    ) -> Result<Vec<Component>, Error> {
        self.audited(self.draft(caller, Some(owner), "reuse.check"), |d| {
            if doc_types.len() > MAX_REUSE_TYPES {
                return Err(Error::InvalidRequest(format!("at most {MAX_REUSE_TYPES} document types per check")));
            }
            let now = Timestamp::now();
            let at = at.unwrap_or(now);
            let o = self.owner(owner, false)?;
            let vis = self.visibility(caller, owner, o.as_deref(), now)?;
            let mut erased = false;
            if let Visibility::Agency { grants, .. } = &vis {
                if caller.purpose.as_ref() != Some(purpose) {
                    return Err(Error::InvalidRequest("the body's purpose must equal the Vault-Purpose header".into()));
                }
                erased = o.is_none() && self.erased(owner)?;
                if grants.is_empty() && !erased {
                    return Err(Error::GrantRequired);
                }
            }
            d.grant = vis.first_grant();
            let all = self.documents(owner, None)?;
            let mut out = Vec::with_capacity(doc_types.len());
            for t in doc_types {
                let mut docs: Vec<&Document> =
                    all.iter().filter(|doc| &doc.meta.doc_type == t && vis.sees(doc)).collect();
                let type_granted = match &vis {
                    Visibility::All => true,
                    Visibility::Agency { grants, .. } => erased || grants.iter().any(|g| g.terms.doc_types.contains(t)),
                };
                if !type_granted && docs.is_empty() {
                    out.push(Component { doc_type: t.clone(), status: ReuseStatus::NotGranted, document: None });
                    continue;
                }
                docs.sort_by_key(|doc| std::cmp::Reverse(reuse_rank(doc)));
                let held = docs.iter().find(|doc| doc.status(at) == Status::Valid);
                let component = match held {
                    Some(doc) => {
                        Component { doc_type: t.clone(), status: ReuseStatus::Held, document: Some((*doc).clone()) }
                    }
                    None => {
                        // The newest document that is not merely not-yet-valid decides.
                        let newest = docs
                            .iter()
                            .filter(|doc| doc.status(at) != Status::NotYetValid)
                            .max_by_key(|doc| (doc.meta.issued_at, doc.deposited_at));
                        let status = match newest.map(|doc| doc.status(at)) {
                            Some(Status::Expired) => ReuseStatus::Expired,
                            Some(Status::Revoked) => ReuseStatus::Revoked,
                            _ => ReuseStatus::Missing,
                        };
                        Component { doc_type: t.clone(), status, document: None }
                    }
                };
                out.push(component);
            }
            self.audit_now_with(vec![self.reuse_tally(d, purpose, &out)], d)?;
            Ok(out)
        })
    }

    /// Grants an agency access (the owner only).
    pub fn grant_as(&self, caller: &Caller, owner: &OwnerId, terms: NewGrant) -> Result<Grant, Error> {
        let mut draft = self.draft(caller, Some(owner), "grant.create");
        draft.purpose = Some(terms.purpose.clone());
        self.audited(draft, |d| {
            Self::require_owner(caller, owner)?;
            let (owner_guard, o) = self.owner_for_change(owner, true)?;
            let o = o.ok_or(Error::NotFound("owner"))?;
            let (g, ops) = self.grant_ops(&o, terms, Timestamp::now())?;
            d.grant = Some(g.id.to_string());
            let (ticket, _) = self.apply_audited(ops, d)?;
            drop(owner_guard);
            self.wait_ticket(ticket)?;
            Ok(g)
        })
    }

    /// The owner's grants, revoked ones included (the owner only).
    pub fn grants_as(&self, caller: &Caller, owner: &OwnerId) -> Result<Vec<Grant>, Error> {
        self.audited(self.draft(caller, Some(owner), "grant.list"), |d| {
            Self::require_owner(caller, owner)?;
            let grants = match self.owner(owner, false)? {
                Some(o) => self.grants_of(&o)?,
                None => Vec::new(),
            };
            self.audit_now(d)?;
            Ok(grants)
        })
    }

    /// Revokes a grant (the owner only); effective for the very next call. Revoking a revoked
    /// grant changes nothing.
    pub fn revoke_grant_as(&self, caller: &Caller, owner: &OwnerId, id: &GrantId) -> Result<(), Error> {
        let mut draft = self.draft(caller, Some(owner), "grant.revoke");
        draft.grant = Some(id.to_string());
        self.audited(draft, |d| {
            Self::require_owner(caller, owner)?;
            let (_owner_guard, o) = self.owner_for_change(owner, false)?;
            let o = o.ok_or(Error::NotFound("grant"))?;
            let (queued, key, seq) = {
                let mut pending = self.grants_lock.lock().unwrap_or_else(|p| p.into_inner());
                let mut g = self.grant_for_change(&pending, &o, id)?.ok_or(Error::NotFound("grant"))?;
                let mut events = Vec::new();
                if g.revoked_at.is_none() {
                    let now = Timestamp::now();
                    g.revoked_at = Some(now);
                    events = self.grant_revoked_ops(&o.op, &g, now)?;
                }
                let key = crate::engine::grants::grant_key(&o.op, id);
                let value = seal_record(&o.keys, &key, &g);
                let seq = pending.queued(key.clone(), g);
                let mut ops = vec![Op::Put(key.clone(), value)];
                ops.extend(events);
                (self.enqueue_audited(ops, d), key, seq)
            };
            let applied = self.await_audited(queued);
            self.grant_write_done(&key, seq);
            self.wait_ticket(applied?.0)
        })
    }

    /// The grants given to the calling agency (`forbidden` for anyone else).
    pub fn agency_grants_as(&self, caller: &Caller) -> Result<Vec<Grant>, Error> {
        let Principal::Agency(a) = &caller.principal else { return Err(Error::Forbidden) };
        self.registered_agency(a)?;
        self.grants_to(a)
    }

    /// The owner's access log (the owner only; reading it is not itself logged).
    pub fn access_log_as(&self, caller: &Caller, owner: &OwnerId) -> Result<Vec<Entry>, Error> {
        Self::require_owner(caller, owner)?;
        self.owner_entries(owner)
    }

    /// One page of the owner's access log (the owner only; not itself logged): entries with an
    /// index above `after`, ascending, at most `limit`, and the `after` of the next page.
    pub fn access_log_page_as(
        &self,
        caller: &Caller,
        owner: &OwnerId,
        after: Option<u64>,
        limit: PageLimit,
    ) -> Result<Page, Error> {
        Self::require_owner(caller, owner)?;
        self.owner_entries_page(owner, after, limit)
    }

    /// The leaves of the owner's entries at `indexes` with their inclusion proofs in the tree of
    /// `size` entries (the owner only; not itself logged; at most 1,000 indexes).
    pub fn access_log_proofs_as(
        &self,
        caller: &Caller,
        owner: &OwnerId,
        size: u64,
        indexes: &[u64],
    ) -> Result<Vec<LeafProof>, Error> {
        Self::require_owner(caller, owner)?;
        self.owner_leaf_proofs(owner, size, indexes)
    }

    /// The leaf bytes of one of the owner's entries (the owner only).
    pub fn access_log_leaf_as(&self, caller: &Caller, owner: &OwnerId, index: u64) -> Result<Vec<u8>, Error> {
        Self::require_owner(caller, owner)?;
        self.owner_entry(owner, index)?.ok_or(Error::NotFound("audit entry"))?;
        self.leaf(index)
    }

    /// Registers or replaces an agency (the operator only); logged.
    pub fn put_agency_as(&self, caller: &Caller, id: &AgencyId, new: NewAgency) -> Result<(Agency, bool), Error> {
        self.audited(self.draft(caller, None, "agency.put"), |d| {
            if caller.principal != Principal::Operator {
                return Err(Error::Forbidden);
            }
            self.put_agency_with(id, new, Timestamp::now(), Some(d))
        })
    }
}
