//! Owner rights: erasure (crypto-shredding, then deletion) and export (one verifiable tar).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::access::{Caller, Principal};
use crate::engine::document::Document;
use crate::engine::grants::Grant;
use crate::engine::provenance::{statement, Agency};
use crate::engine::vault::Vault;
use crate::ids::{Digest, OwnerId};
use crate::log::audit::Entry;
use crate::log::merkle;
use crate::log::note::{parse_checkpoint, NoteVerifier};
use crate::storage::layout::{self, key_of, prefix};
use crate::storage::Op;
use crate::time::Timestamp;
use crate::Error;

/// The first line of an erasure receipt.
pub const ERASURE_VERSION: &str = "vault-erasure-receipt-v1";
/// The `format` of an export manifest.
pub const EXPORT_FORMAT: &str = "vault-export-v1";

/// A receipt signed by the vault's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedReceipt {
    /// The signed text.
    pub text: String,
    /// Ed25519 signature over `text`, base64.
    pub signature: String,
    /// The vault's verifier key (C2SP form).
    pub key: String,
}

impl Vault {
    fn signed_receipt(&self, text: String) -> SignedReceipt {
        let signature = B64.encode(self.signer().sign(text.as_bytes()));
        SignedReceipt { text, signature, key: self.signer().verifier_key() }
    }

    /// Erases an owner (the owner, or the operator): destroys the owner key in one atomic,
    /// durable change (every content becomes unreadable at once), removes every record, grant
    /// and access-log entry but the erasure's own, then deletes the blob files before
    /// returning. The audit log stays verifiable. New uploads start a fresh vault.
    pub fn erase_as(&self, caller: &Caller, owner: &OwnerId) -> Result<SignedReceipt, Error> {
        let draft = self.draft_for(caller, Some(owner), "owner.erase");
        let allowed =
            matches!(&caller.principal, Principal::Owner(o) if o == owner) || caller.principal == Principal::Operator;
        if !allowed {
            return self.refuse_for(draft, Error::Forbidden);
        }
        let op = self.owner_ref(owner);
        // Exclusive: no change of this owner is between resolving its keys and applying its
        // batch, and none can start until the erasure is done, blobs included (SPEC.md §17).
        let _exclusive = self.owner_exclusive(&op)?;
        let o = self.owner_locked(owner, false)?;
        let (mut documents, mut contents, mut grants) = (0u64, 0u64, 0u64);
        let mut ops = vec![Op::Delete(layout::owner_key(&op))];
        if let Some(o) = &o {
            // `owner.erased` to every agency with a grant or a signed document of the owner.
            let owner_grants = self.grants_of(o)?;
            let mut docs: Vec<Document> = Vec::new();
            for item in self.meta().scan(&layout::documents_of(&op)) {
                let (k, v) = item?;
                if let Some(d) = crate::engine::vault::open_record::<Document>(&o.keys, &k, &v) {
                    docs.push(d);
                }
            }
            ops.extend(self.owner_erased_ops(&op, owner, &owner_grants, &docs, draft.time)?);
            for g in owner_grants {
                ops.push(Op::Delete(layout::agency_grant_key(g.terms.grantee.as_str().as_bytes(), g.id.as_bytes())));
                grants += 1;
            }
        }
        for (p, counter) in [
            (prefix::CONTENT, Some(&mut contents)),
            (prefix::DOCUMENT, Some(&mut documents)),
            (prefix::TYPE_INDEX, None),
            (prefix::DEPOSIT_INDEX, None),
            (prefix::INLINE_BLOB, None),
            (prefix::GRANT, None),
            (prefix::SUPPLY, None),
        ] {
            let mut n = 0;
            for item in self.meta().scan(&key_of(p, &[&op])) {
                ops.push(Op::Delete(item?.0));
                n += 1;
            }
            if let Some(c) = counter {
                *c = n;
            }
        }
        // Access-log entries are appended without the owner's lock (reads are logged too): they
        // are listed while no entry can be appended, so every entry before the erasure's goes.
        let outbox = self.outbox_lock()?;
        let entries = || -> Result<Vec<Op>, Error> {
            let mut ops = Vec::new();
            for item in self.meta().scan(&layout::entries_of(&op)) {
                ops.push(Op::Delete(item?.0));
            }
            // The owner's events too, at the turn: a change queued before the erasure (a grant
            // use's `grant.exhausted`) is applied by then, and its event goes with the rest.
            ops.extend(self.owner_outbox_purge_locked(owner)?);
            Ok(ops)
        };
        let applied = self.apply_audited_with(ops, &draft, entries);
        drop(outbox);
        // The deleted events are no longer waiting: counted again when next needed.
        self.forget_waiting_counts();
        let (ticket, index) = applied?;
        self.wait_ticket(ticket)?;
        self.forget_owner(&op);
        // Still exclusive: no grant write of this owner can be queued, and the ones queued
        // before are applied (and deleted above); none may be read back by a fresh vault.
        self.grants_lock.lock().unwrap_or_else(|p| p.into_inner()).forget_prefix(&layout::grants_of(&op));
        // Still exclusive: a fresh owner's first blob cannot be committed before this.
        self.blobs().remove_owner(&op)?;
        let now = Timestamp::now();
        Ok(self.signed_receipt(format!(
            "{ERASURE_VERSION}\nowner:{owner}\nerased_at:{now}\ndocuments:{documents}\ncontents:{contents}\ngrants:{grants}\nlog_index:{index}\n"
        )))
    }

    /// Writes the owner's export (the owner only) as a tar stream: `manifest.json`,
    /// `documents/<id>`, `audit/entries.json` (with inclusion proofs) and `audit/checkpoint`.
    pub fn export_as(&self, caller: &Caller, owner: &OwnerId, out: impl Write) -> Result<(), Error> {
        let draft = self.draft_for(caller, Some(owner), "owner.export");
        if !matches!(&caller.principal, Principal::Owner(o) if o == owner) {
            return self.refuse_for(draft, Error::Forbidden);
        }
        // The export's own entry first, so the checkpoint and proofs cover it.
        self.audit_now(&draft)?;
        // One snapshot of the log: every proof below is for the size the checkpoint signs.
        let (size, checkpoint) = self.checkpoint_with_size()?;
        let documents = self.documents(owner, None)?;
        let grants = match self.owner(owner, false)? {
            Some(o) => self.grants_of(&o)?,
            None => Vec::new(),
        };
        let mut agencies = BTreeMap::new();
        for d in &documents {
            if let Some(a) = &d.meta.issuer {
                if let Some(reg) = self.agency(a)? {
                    agencies.insert(a.to_string(), reg);
                }
            }
        }
        let manifest = Manifest {
            format: EXPORT_FORMAT.into(),
            owner: owner.clone(),
            exported_at: Timestamp::now(),
            vault_key: self.signer().verifier_key(),
            documents: documents
                .iter()
                .map(|d| ExportedDocument {
                    statement: d.meta.signature.as_ref().map(|_| statement(&d.owner, d.size, &d.meta)),
                    document: d.clone(),
                })
                .collect(),
            grants,
            agencies,
        };
        let mut entries = Vec::new();
        for e in self.owner_entries(owner)? {
            if e.index >= size {
                continue;
            }
            let leaf = self.leaf(e.index)?;
            let proof = self.inclusion_proof(e.index, size)?;
            entries.push(ExportedEntry {
                leaf: B64.encode(&leaf),
                inclusion: ExportedInclusion { size, hashes: proof.hashes.iter().map(|h| B64.encode(h)).collect() },
                entry: e,
            });
        }
        let manifest_bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        let entries_bytes = serde_json::to_vec_pretty(&entries).unwrap_or_default();
        // A signed list of every member's hash makes the whole export tamper-evident.
        let mut listing = format!("{EXPORT_FORMAT}\nowner:{owner}\n");
        listing.push_str(&format!("manifest.json {}\n", sha256_hex(&manifest_bytes)));
        listing.push_str(&format!("audit/entries.json {}\n", sha256_hex(&entries_bytes)));
        listing.push_str(&format!("audit/checkpoint {}\n", sha256_hex(checkpoint.as_bytes())));
        for d in &documents {
            listing.push_str(&format!("documents/{} blake3:{}\n", d.id, d.meta.digest));
        }
        let signature = self.signer().sign_note(&listing);
        let mut tar = tar::Builder::new(out);
        let io = |e: std::io::Error| Error::from(e);
        append_bytes(&mut tar, "manifest.json", &manifest_bytes).map_err(io)?;
        for d in &documents {
            let mut reader = self.open_document_content(owner, &d.id)?.1;
            let mut header = tar::Header::new_gnu();
            header.set_size(d.size);
            header.set_mode(0o600);
            header.set_mtime(d.deposited_at.unix().max(0) as u64);
            header.set_cksum();
            // The reader fails (and so the export fails) if the content does not authenticate.
            tar.append_data(&mut header, format!("documents/{}", d.id), &mut reader).map_err(io)?;
        }
        append_bytes(&mut tar, "audit/entries.json", &entries_bytes).map_err(io)?;
        append_bytes(&mut tar, "audit/checkpoint", checkpoint.as_bytes()).map_err(io)?;
        append_bytes(&mut tar, SIGNATURE_MEMBER, signature.as_bytes()).map_err(io)?;
        tar.into_inner().map_err(io)?.flush().map_err(io)?;
        Ok(())
    }
}

/// The member holding the vault's signed note over every other member's hash.
pub const SIGNATURE_MEMBER: &str = "export-signature";

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, path: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o600);
    header.set_cksum();
    tar.append_data(&mut header, path, data)
}

/// `manifest.json` of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `vault-export-v1`.
    pub format: String,
    /// Whose export.
    pub owner: OwnerId,
    /// When.
    pub exported_at: Timestamp,
    /// The vault's verifier key (checkpoints, receipts).
    pub vault_key: String,
    /// Every document, with the statement its issuer signed (for signed ones).
    pub documents: Vec<ExportedDocument>,
    /// Every grant, revoked ones included.
    pub grants: Vec<Grant>,
    /// The registrations of the issuers of the documents, for offline signature checks.
    pub agencies: BTreeMap<String, Agency>,
}

/// A document in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedDocument {
    /// The record.
    #[serde(flatten)]
    pub document: Document,
    /// The signed statement, for issuer-signed documents.
    pub statement: Option<String>,
}

/// An access-log entry in the export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedEntry {
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
    /// Leaf bytes, base64.
    pub leaf: String,
    /// Inclusion proof against the export's checkpoint.
    pub inclusion: ExportedInclusion,
}

/// An inclusion proof in the export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedInclusion {
    /// Tree size of the checkpoint.
    pub size: u64,
    /// Audit path, base64.
    pub hashes: Vec<String>,
}

/// What an export contained, once verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// The owner.
    pub owner: OwnerId,
    /// Documents (contents checked against their digests).
    pub documents: usize,
    /// Of which issuer-signed and verified offline.
    pub signed_documents: usize,
    /// Access-log entries (each included in the checkpoint).
    pub entries: usize,
    /// Tree size of the checkpoint.
    pub tree_size: u64,
}

/// Why an export did not verify.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Not a readable tar, or a member is missing or malformed.
    #[error("malformed export: {0}")]
    Malformed(String),
    /// Something does not verify.
    #[error("export does not verify: {0}")]
    Invalid(String),
}

/// Verifies an export offline against the vault's verifier key: the checkpoint's signature,
/// every entry's inclusion, every content's digest and size, every issuer signature.
pub fn verify_export(mut input: impl Read, vault_key: &str) -> Result<ExportSummary, ExportError> {
    let bad = |m: &str| ExportError::Invalid(m.to_owned());
    let malformed = |m: String| ExportError::Malformed(m);
    let verifier = NoteVerifier::parse(vault_key).map_err(|e| malformed(e.to_string()))?;
    let mut manifest: Option<Manifest> = None;
    let mut entries: Option<Vec<ExportedEntry>> = None;
    let mut checkpoint: Option<String> = None;
    let mut contents: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
    let mut hashes: BTreeMap<String, String> = BTreeMap::new();
    let mut signature: Option<String> = None;
    let mut archive = tar::Archive::new(&mut input);
    for member in archive.entries().map_err(|e| malformed(e.to_string()))? {
        let mut member = member.map_err(|e| malformed(e.to_string()))?;
        let path = member.path().map_err(|e| malformed(e.to_string()))?.to_string_lossy().into_owned();
        let small = |m: &mut tar::Entry<'_, _>| -> Result<Vec<u8>, ExportError> {
            if m.size() > 256 << 20 {
                return Err(ExportError::Malformed(format!("{path} is too large")));
            }
            let mut v = Vec::new();
            m.read_to_end(&mut v).map_err(|e| ExportError::Malformed(e.to_string()))?;
            Ok(v)
        };
        match path.as_str() {
            "manifest.json" => {
                let b = small(&mut member)?;
                hashes.insert(path.clone(), sha256_hex(&b));
                manifest = Some(serde_json::from_slice(&b).map_err(|e| malformed(e.to_string()))?)
            }
            "audit/entries.json" => {
                let b = small(&mut member)?;
                hashes.insert(path.clone(), sha256_hex(&b));
                entries = Some(serde_json::from_slice(&b).map_err(|e| malformed(e.to_string()))?)
            }
            "audit/checkpoint" => {
                let b = small(&mut member)?;
                hashes.insert(path.clone(), sha256_hex(&b));
                checkpoint = Some(String::from_utf8(b).map_err(|e| malformed(e.to_string()))?)
            }
            SIGNATURE_MEMBER => {
                signature = Some(String::from_utf8(small(&mut member)?).map_err(|e| malformed(e.to_string()))?)
            }
            p if p.starts_with("documents/") => {
                let mut h = blake3::Hasher::new();
                let n = std::io::copy(&mut member, &mut h).map_err(|e| malformed(e.to_string()))?;
                contents.insert(p["documents/".len()..].to_owned(), (h.finalize().into(), n));
            }
            other => return Err(malformed(format!("unexpected member {other}"))),
        }
    }
    let manifest = manifest.ok_or_else(|| malformed("no manifest.json".into()))?;
    let entries = entries.ok_or_else(|| malformed("no audit/entries.json".into()))?;
    let checkpoint = checkpoint.ok_or_else(|| malformed("no audit/checkpoint".into()))?;
    let signature = signature.ok_or_else(|| malformed(format!("no {SIGNATURE_MEMBER}")))?;
    let listing = verifier.verify(&signature).map_err(|_| bad("the export is not signed by the vault key"))?;
    let mut expected = format!("{EXPORT_FORMAT}\nowner:{}\n", manifest.owner);
    for name in ["manifest.json", "audit/entries.json", "audit/checkpoint"] {
        expected.push_str(&format!("{name} {}\n", hashes.get(name).map(String::as_str).unwrap_or_default()));
    }
    for d in &manifest.documents {
        expected.push_str(&format!("documents/{} blake3:{}\n", d.document.id, d.document.meta.digest));
    }
    if listing != expected {
        return Err(bad("a member differs from what the vault signed"));
    }
    if manifest.format != EXPORT_FORMAT {
        return Err(malformed(format!("unknown format {}", manifest.format)));
    }
    let text = verifier.verify(&checkpoint).map_err(|_| bad("the checkpoint is not signed by the vault key"))?;
    let (_, tree_size, root) = parse_checkpoint(text).map_err(|e| malformed(e.to_string()))?;
    for e in &entries {
        let leaf = B64.decode(&e.leaf).map_err(|_| malformed("leaf is not base64".into()))?;
        let hashes: Vec<merkle::Hash> = e
            .inclusion
            .hashes
            .iter()
            .map(|h| B64.decode(h).ok().and_then(|v| <merkle::Hash>::try_from(v.as_slice()).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| malformed("proof hash is not base64 of 32 bytes".into()))?;
        if e.inclusion.size != tree_size
            || !merkle::verify_inclusion(&merkle::leaf_hash(&leaf), e.entry.index, tree_size, &hashes, &root)
        {
            return Err(bad(&format!("audit entry {} is not in the checkpoint's tree", e.entry.index)));
        }
        let text = String::from_utf8_lossy(&leaf);
        let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(str::to_owned));
        if field("time") != Some(e.entry.time.to_string())
            || field("actor").as_deref() != Some(e.entry.actor.as_str())
            || field("action").as_deref() != Some(e.entry.action.as_str())
            || field("outcome").as_deref() != Some(e.entry.outcome.as_str())
        {
            return Err(bad(&format!("audit entry {} differs from its leaf", e.entry.index)));
        }
    }
    let mut signed = 0;
    for d in &manifest.documents {
        let doc = &d.document;
        if doc.owner != manifest.owner {
            return Err(bad("a document of another owner"));
        }
        let (digest, size) =
            contents.remove(&doc.id.to_string()).ok_or_else(|| bad(&format!("document {} has no content", doc.id)))?;
        if digest != doc.meta.digest || size != doc.size {
            return Err(bad(&format!("the content of document {} does not match its digest", doc.id)));
        }
        if doc.verified {
            let sig = doc.meta.signature.as_ref().ok_or_else(|| bad("a verified document without a signature"))?;
            let issuer = doc.meta.issuer.as_ref().ok_or_else(|| bad("a verified document without an issuer"))?;
            let at = doc.meta.issued_at.ok_or_else(|| bad("a verified document without issued_at"))?;
            let agency = manifest.agencies.get(issuer.as_str()).ok_or_else(|| bad("the issuer's keys are missing"))?;
            let key = agency
                .keys
                .iter()
                .find(|k| k.id == sig.key_id && k.valid_at(at))
                .ok_or_else(|| bad("no issuer key valid at issued_at"))?;
            let st = statement(&doc.owner, doc.size, &doc.meta);
            if d.statement.as_deref() != Some(st.as_str()) {
                return Err(bad(&format!("the statement of document {} differs from its record", doc.id)));
            }
            let raw: [u8; 64] = B64
                .decode(&sig.value)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| bad("malformed signature"))?;
            if !key.public_key.verify(st.as_bytes(), &raw) {
                return Err(bad(&format!("the issuer signature of document {} does not verify", doc.id)));
            }
            signed += 1;
        }
    }
    if let Some(extra) = contents.keys().next() {
        return Err(bad(&format!("content {extra} has no record")));
    }
    Ok(ExportSummary {
        owner: manifest.owner,
        documents: manifest.documents.len(),
        signed_documents: signed,
        entries: entries.len(),
        tree_size,
    })
}
