//! Consent grants: owner → agency, for a purpose, over document types and/or documents, until
//! an expiry, optionally for a number of content reads; revocable at once. Each grant carries a
//! consent receipt signed by the vault's key (format in SPEC.md §15).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::crypto::seal::{self, aad};
use crate::engine::document::{check_text, Document};
use crate::engine::vault::{seal_record, OwnerCtx, OwnerRef, Vault};
use crate::ids::{AgencyId, DocType, DocumentId, GrantId, OwnerId, Purpose};
use crate::storage::layout;
use crate::storage::Op;
use crate::time::Timestamp;
use crate::Error;

/// The first line of every consent receipt.
pub const RECEIPT_VERSION: &str = "vault-consent-receipt-v1";
/// Longest grant, in seconds (366 days).
pub const MAX_GRANT_SECONDS: i64 = 366 * 24 * 3600;
/// Most document types or documents in one grant.
pub const MAX_GRANT_ITEMS: usize = 100;

/// What an owner grants (the request body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewGrant {
    /// The agency receiving access.
    pub grantee: AgencyId,
    /// The procedure the access is for.
    pub purpose: Purpose,
    /// A human explanation shown to the owner (at most 1000 characters).
    #[serde(default)]
    pub purpose_text: String,
    /// Document types covered.
    #[serde(default)]
    pub doc_types: Vec<DocType>,
    /// Specific documents covered.
    #[serde(default)]
    pub documents: Vec<DocumentId>,
    /// End of the grant (exclusive).
    pub expires_at: Timestamp,
    /// Content reads allowed; `None` = unlimited.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_uses: Option<u64>,
}

/// A consent receipt: the grant's terms as text, signed by the vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Receipt {
    /// The signed text (SPEC.md §15).
    pub text: String,
    /// Ed25519 signature over `text`, standard base64.
    pub signature: String,
    /// The vault's verifier key (C2SP form) that signed it.
    pub key: String,
}

/// A stored grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Grant {
    /// The grant id.
    pub id: GrantId,
    /// The owner who granted.
    pub owner: OwnerId,
    /// The terms.
    #[serde(flatten)]
    pub terms: NewGrant,
    /// When granted.
    pub created_at: Timestamp,
    /// Content reads made under it.
    pub uses: u64,
    /// When revoked, if revoked.
    pub revoked_at: Option<Timestamp>,
    /// The signed consent receipt.
    pub receipt: Receipt,
}

/// State of a grant at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum GrantStatus {
    /// Usable.
    Active,
    /// Revoked by the owner.
    Revoked,
    /// Past `expires_at`.
    Expired,
    /// Every allowed content read is used.
    Exhausted,
}

impl Grant {
    /// Status at `at`.
    pub fn status(&self, at: Timestamp) -> GrantStatus {
        if self.revoked_at.is_some() {
            GrantStatus::Revoked
        } else if at >= self.terms.expires_at {
            GrantStatus::Expired
        } else if self.terms.max_uses.is_some_and(|m| self.uses >= m) {
            GrantStatus::Exhausted
        } else {
            GrantStatus::Active
        }
    }

    /// Whether the grant covers a document (by its type or by its id).
    pub fn covers(&self, doc: &Document) -> bool {
        self.terms.doc_types.contains(&doc.meta.doc_type) || self.terms.documents.contains(&doc.id)
    }
}

/// The receipt text of a grant.
pub fn receipt_text(g: &Grant) -> String {
    let join = |v: Vec<String>| v.join(",");
    format!(
        "{RECEIPT_VERSION}\ngrant:{}\nowner:{}\ngrantee:{}\npurpose:{}\npurpose_text:{}\ndoc_types:{}\ndocuments:{}\nexpires_at:{}\nmax_uses:{}\ncreated_at:{}\n",
        g.id,
        g.owner,
        g.terms.grantee,
        g.terms.purpose,
        g.terms.purpose_text,
        join(g.terms.doc_types.iter().map(|t| t.to_string()).collect()),
        join(g.terms.documents.iter().map(|d| d.to_string()).collect()),
        g.terms.expires_at,
        g.terms.max_uses.map(|m| m.to_string()).unwrap_or_default(),
        g.created_at,
    )
}

/// Verifies a receipt against the vault's Ed25519 public key.
pub fn verify_receipt(r: &Receipt, vault_key: &[u8; 32]) -> bool {
    let Ok(sig) = B64.decode(&r.signature) else { return false };
    let Ok(sig) = <[u8; 64]>::try_from(sig.as_slice()) else { return false };
    crate::engine::provenance::PublicKey::from_bytes(*vault_key).is_ok_and(|k| k.verify(r.text.as_bytes(), &sig))
}

/// Grant writes queued at the audit sequencer and perhaps not applied yet, by grant key: the
/// grant as the latest one leaves it. Grant changes are computed under `grants_lock` from
/// these (else from the store), queued under it and awaited outside it; the sequencer applies
/// queued calls in order, so what is stored only ever catches up with what is here, and no use
/// or revocation is lost while writers wait for their batch (SPEC.md §14).
#[derive(Debug, Default)]
pub(crate) struct PendingGrants {
    next: u64,
    by_key: std::collections::HashMap<Vec<u8>, (u64, Grant)>,
}

impl PendingGrants {
    /// Records a queued write of `g` at `key`; its sequence number, for `grant_write_done`.
    pub(crate) fn queued(&mut self, key: Vec<u8>, g: Grant) -> u64 {
        self.next += 1;
        self.by_key.insert(key, (self.next, g));
        self.next
    }

    /// Forgets every queued write under `prefix` (an erased owner's grants: called by the
    /// erasure while it still holds the owner exclusively, so none can be queued meanwhile).
    pub(crate) fn forget_prefix(&mut self, prefix: &[u8]) {
        self.by_key.retain(|k, _| !k.starts_with(prefix));
    }
}

/// A grant write queued at the audit sequencer: its key and sequence number (for
/// [`Vault::grant_write_done`]) and, on a shared store, the owner's lock in the store, held
/// until the write is applied so that no other instance computes a change of the grant from
/// the value before it (SPEC.md §9a "Several instances").
#[derive(Debug)]
pub(crate) struct GrantWrite {
    pub(crate) key: Vec<u8>,
    pub(crate) seq: u64,
    pub(crate) _lock: Option<crate::storage::RemoteLock>,
}

pub(crate) fn grant_key(op: &OwnerRef, id: &GrantId) -> Vec<u8> {
    layout::grant_key(op, id.as_bytes())
}

fn agency_index_key(agency: &AgencyId, id: &GrantId) -> Vec<u8> {
    layout::agency_grant_key(agency.as_str().as_bytes(), id.as_bytes())
}

impl Vault {
    /// Validates and builds a grant and the changes that store it.
    pub(crate) fn grant_ops(&self, o: &OwnerCtx, terms: NewGrant, now: Timestamp) -> Result<(Grant, Vec<Op>), Error> {
        check_text("purpose_text", &terms.purpose_text, 1000)?;
        if terms.doc_types.is_empty() && terms.documents.is_empty() {
            return Err(Error::InvalidRequest("a grant covers at least one document type or document".into()));
        }
        if terms.doc_types.len() > MAX_GRANT_ITEMS || terms.documents.len() > MAX_GRANT_ITEMS {
            return Err(Error::InvalidRequest(format!(
                "a grant lists at most {MAX_GRANT_ITEMS} types and {MAX_GRANT_ITEMS} documents"
            )));
        }
        if terms.expires_at <= now {
            return Err(Error::InvalidRequest("expires_at is in the past".into()));
        }
        if terms.expires_at.unix() - now.unix() > MAX_GRANT_SECONDS {
            return Err(Error::InvalidRequest("a grant lasts at most 366 days".into()));
        }
        if terms.max_uses == Some(0) {
            return Err(Error::InvalidRequest("max_uses must be at least 1 (or null)".into()));
        }
        if self.agency(&terms.grantee)?.is_none() {
            return Err(Error::InvalidRequest(format!("grantee {} is not a registered agency", terms.grantee)));
        }
        for d in &terms.documents {
            // `document_of`, not `document`: the caller holds the owner's change lock.
            if self.document_of(o, d).is_err() {
                return Err(Error::InvalidRequest(format!("document {d} is not one of this owner's documents")));
            }
        }
        let mut g = Grant {
            id: GrantId::random(),
            owner: o.id.clone(),
            terms,
            created_at: now,
            uses: 0,
            revoked_at: None,
            receipt: Receipt { text: String::new(), signature: String::new(), key: self.signer().verifier_key() },
        };
        g.receipt.text = receipt_text(&g);
        g.receipt.signature = B64.encode(self.signer().sign(g.receipt.text.as_bytes()));
        let gkey = grant_key(&o.op, &g.id);
        let hkey = agency_index_key(&g.terms.grantee, &g.id);
        let mut ops = vec![
            Op::Put(gkey.clone(), seal_record(&o.keys, &gkey, &g)),
            Op::Put(hkey.clone(), seal::seal(&self.vault_records, &aad(&hkey), &o.op)),
        ];
        // The grantee's `grant.created` event and the expiry record, in the same batch.
        ops.extend(self.grant_created_ops(&o.op, &g)?);
        Ok((g, ops))
    }

    /// One grant of an owner.
    pub(crate) fn grant_of(&self, o: &OwnerCtx, id: &GrantId) -> Result<Option<Grant>, Error> {
        self.get_sealed(&o.keys, &grant_key(&o.op, id))
    }

    /// The grant as its latest queued write leaves it (`pending` is the guarded content of
    /// `grants_lock`, which the caller holds), else as stored.
    pub(crate) fn grant_for_change(
        &self,
        pending: &PendingGrants,
        o: &OwnerCtx,
        id: &GrantId,
    ) -> Result<Option<Grant>, Error> {
        match pending.by_key.get(&grant_key(&o.op, id)) {
            Some((_, g)) => Ok(Some(g.clone())),
            None => self.grant_of(o, id),
        }
    }

    /// Forgets the queued grant write `seq` once it is applied (or failed), unless a later
    /// write of the same grant replaced it.
    pub(crate) fn grant_write_done(&self, key: &[u8], seq: u64) {
        let mut pending = self.grants_lock.lock().unwrap_or_else(|p| p.into_inner());
        if pending.by_key.get(key).is_some_and(|(s, _)| *s == seq) {
            pending.by_key.remove(key);
        }
    }

    /// [`Vault::grant_write_done`] for a [`GrantWrite`], then releases what it holds.
    pub(crate) fn grant_done(&self, w: GrantWrite) {
        self.grant_write_done(&w.key, w.seq);
    }

    /// Every grant of an owner, oldest first (revoked ones included).
    pub(crate) fn grants_of(&self, o: &OwnerCtx) -> Result<Vec<Grant>, Error> {
        let mut out: Vec<Grant> = Vec::new();
        let epoch = self.records_epoch();
        for item in self.meta().scan(&layout::grants_of(&o.op)) {
            let (k, v) = item?;
            out.push(
                self.open_cached(epoch, &o.keys, &k, &v)
                    .ok_or_else(|| Error::Corrupt(crate::engine::vault::describe_key(&k)))?,
            );
        }
        out.sort_by_key(|g| (g.created_at, g.id));
        Ok(out)
    }

    /// Every grant given to `agency`, across owners.
    pub fn grants_to(&self, agency: &AgencyId) -> Result<Vec<Grant>, Error> {
        let mut out = Vec::new();
        for item in self.meta().scan(&layout::agency_grants_of(agency.as_str().as_bytes())) {
            let (k, v) = item?;
            let op = seal::open(&self.vault_records, &aad(&k), &v)
                .map_err(|_| Error::Corrupt(crate::engine::vault::describe_key(&k)))?;
            let op: OwnerRef =
                op.as_slice().try_into().map_err(|_| Error::Corrupt(crate::engine::vault::describe_key(&k)))?;
            let id = GrantId::from_bytes(
                k[k.len() - 16..].try_into().map_err(|_| Error::Corrupt(crate::engine::vault::describe_key(&k)))?,
            );
            // An erased owner's grants are gone with the owner key.
            let Some(o) = self.owner_by_ref(&op)? else { continue };
            if let Some(g) = self.grant_of(&o, &id)? {
                out.push(g);
            }
        }
        out.sort_by_key(|g| (g.created_at, g.id));
        Ok(out)
    }

    /// Active grants of `o` to `agency` for `purpose` at `at`.
    pub(crate) fn active_grants(
        &self,
        o: &OwnerCtx,
        agency: &AgencyId,
        purpose: &Purpose,
        at: Timestamp,
    ) -> Result<Vec<Grant>, Error> {
        Ok(self
            .grants_of(o)?
            .into_iter()
            .filter(|g| {
                &g.terms.grantee == agency && &g.terms.purpose == purpose && g.status(at) == GrantStatus::Active
            })
            .collect())
    }
}
