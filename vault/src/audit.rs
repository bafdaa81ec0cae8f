//! The audit log: an append-only RFC 9162 Merkle log of every access decision, with signed
//! checkpoints (C2SP signed notes), inclusion and consistency proofs.
//!
//! Each entry is a leaf whose bytes carry no personal data in clear: the owner, document and
//! grant appear only as references keyed with a vault secret and the entry's index, so leaves
//! are unlinkable to anyone without the vault's keys. The vault keeps, per owner, a sealed index
//! of that owner's entries (`E` records) so the owner can list them and check each leaf's
//! inclusion. An entry is written in the same atomic batch as the change it records and is
//! durable before the operation returns; if it cannot be written the operation does not happen.

use serde::{Deserialize, Serialize};

use crate::ids::{DocumentId, OwnerId, Purpose};
use crate::keys::SecretKey;
use crate::merkle::{self, Hash, MerkleError, Nodes};
use crate::note;
use crate::store::Op;
use crate::time::Timestamp;
use crate::vault::{aad, key_of, prefix, OwnerRef, Vault};
use crate::{seal, Error};

/// The first line of every leaf.
pub const LEAF_VERSION: &str = "vault-audit-v1";
const KEY_SIZE: &[u8] = b"Maudit-size";

/// In-memory state of the log, guarded by the vault's audit mutex.
#[derive(Debug, Default)]
pub struct AuditState {
    /// Leaves applied so far (durable once the ticket of the last append is).
    pub size: u64,
}

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The owner of the data.
    Owner,
    /// The operator.
    Operator,
    /// An agency.
    Agency(crate::AgencyId),
    /// A citizen or organisation acting on someone else's data (always refused).
    AnotherOwner,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Owner => f.write_str("owner"),
            Actor::Operator => f.write_str("operator"),
            Actor::Agency(a) => write!(f, "agency:{a}"),
            Actor::AnotherOwner => f.write_str("another-owner"),
        }
    }
}

/// An entry to append.
#[derive(Debug, Clone)]
pub struct Draft {
    /// When.
    pub time: Timestamp,
    /// Who.
    pub actor: Actor,
    /// What (an action name of SPEC.md §14).
    pub action: &'static str,
    /// About whom, if anyone.
    pub owner: Option<OwnerId>,
    /// Which document, if one.
    pub document: Option<DocumentId>,
    /// The stated purpose.
    pub purpose: Option<Purpose>,
    /// The grant used.
    pub grant: Option<String>,
    /// `allowed` or `refused:<error code>`.
    pub outcome: String,
}

/// An entry as the owner's access log shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Entry {
    /// Global index in the log.
    pub index: u64,
    /// When.
    pub time: Timestamp,
    /// `owner`, `operator`, `agency:<id>` or `another-owner`.
    pub actor: String,
    /// Action name.
    pub action: String,
    /// The document concerned.
    pub document: Option<DocumentId>,
    /// The purpose stated.
    pub purpose: Option<Purpose>,
    /// The grant used.
    pub grant: Option<String>,
    /// `allowed` or `refused:<code>`.
    pub outcome: String,
}

/// The audit log could not record an operation, so it was not done; a stopped vault (fail-stop)
/// says so instead.
fn audit_failed(e: Error) -> Error {
    match e {
        Error::FailStopped { .. } => e,
        e => Error::AuditFailed(e.to_string()),
    }
}

fn leaf_key(index: u64) -> Vec<u8> {
    key_of(prefix::LEAF, &[&index.to_be_bytes()])
}

fn node_key(level: u8, index: u64) -> Vec<u8> {
    key_of(prefix::NODE, &[&[level], &index.to_be_bytes()])
}

fn entry_key(op: &OwnerRef, index: u64) -> Vec<u8> {
    key_of(prefix::OWNER_ENTRY, &[op, &index.to_be_bytes()])
}

/// A reference to `what` in leaf `index`: keyed BLAKE3 under the vault's audit reference key.
fn reference(key: &SecretKey, index: u64, what: &str, data: &[u8]) -> String {
    let mut h = blake3::Hasher::new_keyed(key.expose());
    h.update(what.as_bytes());
    h.update(&[0]);
    h.update(&index.to_be_bytes());
    h.update(data);
    h.finalize().to_hex().to_string()
}

/// The bytes of leaf `index` (SPEC.md §14). The actor is written as its name (`owner`,
/// `operator`, `agency:<id>`, `another-owner`): leaves written before `another-owner` existed
/// read and verify unchanged.
pub(crate) fn leaf_text(key: &SecretKey, index: u64, d: &Draft, op: Option<&OwnerRef>) -> String {
    let subject = op.map(|op| reference(key, index, "subject", op)).unwrap_or_default();
    let document = d.document.map(|id| reference(key, index, "document", id.as_bytes())).unwrap_or_default();
    let grant = d.grant.as_ref().map(|g| reference(key, index, "grant", g.as_bytes())).unwrap_or_default();
    format!(
        "{LEAF_VERSION}\ntime:{}\nactor:{}\naction:{}\nsubject:{subject}\ndocument:{document}\npurpose:{}\ngrant:{grant}\noutcome:{}\n",
        d.time,
        d.actor,
        d.action,
        d.purpose.as_ref().map(|p| p.as_str()).unwrap_or_default(),
        d.outcome
    )
}

/// Most entries in one page of an owner's access log, and the default page size.
pub const MAX_PAGE: usize = 1_000;

/// How many entries one page of the access log holds: 1 to [`MAX_PAGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(usize);

impl PageLimit {
    /// The largest page, also the default.
    pub const MAX: PageLimit = PageLimit(MAX_PAGE);

    /// A page size of `n` entries; 0 or more than [`MAX_PAGE`] is `invalid_request`.
    pub fn new(n: u64) -> Result<Self, Error> {
        match usize::try_from(n) {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(Self(n)),
            _ => Err(Error::InvalidRequest(format!("limit must be 1 to {MAX_PAGE}"))),
        }
    }

    /// The number of entries.
    pub fn get(self) -> usize {
        self.0
    }
}

impl Default for PageLimit {
    fn default() -> Self {
        Self::MAX
    }
}

/// One page of an owner's access log, ascending by index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The entries.
    pub entries: Vec<Entry>,
    /// The `after` of the next page (the last index here), or `None` when this is the last.
    pub next: Option<u64>,
}

/// An owner's leaf with its inclusion proof in the tree of `size` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafProof {
    /// Global index of the entry.
    pub index: u64,
    /// The leaf bytes.
    pub leaf: Vec<u8>,
    /// The RFC 9162 audit path, leaf to root.
    pub hashes: Vec<Hash>,
}

struct VaultNodes<'a>(&'a Vault);

impl Nodes for VaultNodes<'_> {
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
        self.0
            .meta()
            .get(&node_key(level, index))
            .ok()
            .flatten()
            .and_then(|v| <Hash>::try_from(v.as_slice()).ok())
            .ok_or(MerkleError::MissingNode { level, index })
    }
}

/// An inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The leaf's hash.
    pub leaf_hash: Hash,
    /// The audit path, leaf to root.
    pub hashes: Vec<Hash>,
}

impl Vault {
    pub(crate) fn load_audit(&self) -> Result<(), Error> {
        let size = match self.meta().get(KEY_SIZE)? {
            None => 0,
            Some(v) => {
                u64::from_be_bytes(v.as_slice().try_into().map_err(|_| Error::Corrupt("audit log size".into()))?)
            }
        };
        if size > 0 && self.meta().get(&leaf_key(size - 1))?.is_none() {
            return Err(Error::Corrupt(format!("audit log: leaf {} is missing", size - 1)));
        }
        // The log never shrinks below, nor forks from, a checkpoint it signed.
        if let Some((signed, root)) = self.meta().signed_floor() {
            let behind = |what: String| crate::store::StoreError::Damaged {
                file: "the audit log in the metadata database".into(),
                offset: None,
                what,
            };
            if size < signed {
                return Err(behind(format!(
                    "it has {size} entries but a checkpoint of {signed} entries was signed: acknowledged entries are lost"
                ))
                .into());
            }
            if merkle::root(&VaultNodes(self), signed).ok() != Some(root) {
                return Err(behind(format!(
                    "its first {signed} entries no longer hash to the root of the checkpoint signed at that size"
                ))
                .into());
            }
        }
        self.audit_state().size = size;
        Ok(())
    }

    fn audit_state(&self) -> std::sync::MutexGuard<'_, AuditState> {
        // The state is one counter, updated only after a successful apply.
        self.audit.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn leaf_bytes(&self, index: u64, d: &Draft, op: Option<&OwnerRef>) -> String {
        leaf_text(&self.audit_refs, index, d, op)
    }

    /// Applies `ops` together with the audit entry `draft` in one atomic batch and returns the
    /// durability ticket and the entry's index. Fails closed: if the entry cannot be built or
    /// written, nothing of `ops` is applied.
    pub(crate) fn apply_audited(&self, ops: Vec<Op>, draft: &Draft) -> Result<(u64, u64), Error> {
        self.apply_audited_with(ops, draft, || Ok(Vec::new()))
    }

    /// [`Vault::apply_audited`], adding the changes `more` returns, computed while no other
    /// entry can be appended (every earlier entry's batch is applied, no later one is).
    pub(crate) fn apply_audited_with(
        &self,
        mut ops: Vec<Op>,
        draft: &Draft,
        more: impl FnOnce() -> Result<Vec<Op>, Error>,
    ) -> Result<(u64, u64), Error> {
        let mut state = self.audit_state();
        ops.extend(more()?);
        let index = state.size;
        let op = draft.owner.as_ref().map(|o| self.owner_ref(o));
        let leaf = self.leaf_bytes(index, draft, op.as_ref());
        let nodes = VaultNodes(self);
        let new_nodes = merkle::append_nodes(index, merkle::leaf_hash(leaf.as_bytes()), |l, i| nodes.node(l, i))
            .map_err(|e| Error::AuditFailed(e.to_string()))?;
        ops.push(Op::Put(leaf_key(index), leaf.into_bytes()));
        for (level, i, h) in new_nodes {
            ops.push(Op::Put(node_key(level, i), h.to_vec()));
        }
        ops.push(Op::Put(KEY_SIZE.to_vec(), (index + 1).to_be_bytes().to_vec()));
        if let Some(op) = op {
            let entry = Entry {
                index,
                time: draft.time,
                actor: draft.actor.to_string(),
                action: draft.action.to_owned(),
                document: draft.document,
                purpose: draft.purpose.clone(),
                grant: draft.grant.clone(),
                outcome: draft.outcome.clone(),
            };
            let key = entry_key(&op, index);
            let value = seal::seal(&self.vault_records, &aad(&key), &serde_json::to_vec(&entry).unwrap_or_default());
            ops.push(Op::Put(key, value));
        }
        let ticket = self.apply_ticket(ops).map_err(audit_failed)?;
        state.size = index + 1;
        Ok((ticket, index))
    }

    /// Appends an entry on its own and waits until it is durable.
    pub(crate) fn audit_now(&self, draft: &Draft) -> Result<u64, Error> {
        let (ticket, index) = self.apply_audited(Vec::new(), draft)?;
        self.wait_ticket(ticket).map_err(audit_failed)?;
        Ok(index)
    }

    /// The number of durable entries in the log.
    pub fn audit_size(&self) -> Result<u64, Error> {
        let size = self.audit_state().size;
        self.wait_ticket(self.latest_ticket())?;
        Ok(size)
    }

    /// The root hash of the first `size` entries.
    pub fn audit_root(&self, size: u64) -> Result<Hash, Error> {
        if size > self.audit_size()? {
            return Err(Error::InvalidRequest("size is beyond the tree".into()));
        }
        merkle::root(&VaultNodes(self), size).map_err(|e| Error::Corrupt(e.to_string()))
    }

    /// The origin line of this vault's checkpoints.
    pub fn log_origin(&self) -> String {
        format!("vault/{}", hex::encode(&self.signer.public_key()[..8]))
    }

    /// A signed checkpoint (C2SP signed note) covering every entry appended before this call.
    pub fn checkpoint(&self) -> Result<String, Error> {
        Ok(self.checkpoint_with_size()?.1)
    }

    /// [`Vault::checkpoint`] and the tree size it signs, read once: proofs meant to verify
    /// against the checkpoint must be computed for exactly this size (the log may grow between
    /// two reads of the size).
    pub(crate) fn checkpoint_with_size(&self) -> Result<(u64, String), Error> {
        let size = self.audit_size()?;
        let root = merkle::root(&VaultNodes(self), size).map_err(|e| Error::Corrupt(e.to_string()))?;
        // Never a checkpoint smaller than, or forking from, one signed before; the anchor
        // records a larger one durably before it is handed out.
        let (mut size, mut root) = (size, root);
        if let Some((signed, signed_root)) = self.meta().signed_floor() {
            let refuse = || {
                Error::AuditFailed(format!(
                    "refusing to sign a checkpoint of {size} entries that disagrees with the one of {signed} \
                     entries signed before"
                ))
            };
            match size.cmp(&signed) {
                std::cmp::Ordering::Equal if root != signed_root => return Err(refuse()),
                // A concurrent call signed a larger tree meanwhile: that one covers this call too.
                std::cmp::Ordering::Less => {
                    if signed > self.audit_state().size
                        || merkle::root(&VaultNodes(self), signed).ok() != Some(signed_root)
                    {
                        return Err(refuse());
                    }
                    (size, root) = (signed, signed_root);
                }
                _ => {}
            }
        }
        self.meta().raise_signed_floor(size, root)?;
        Ok((size, self.signer.sign_note(&note::checkpoint_text(&self.log_origin(), size, &root))))
    }

    /// The vault's signing key (receipts, checkpoints).
    pub fn signer(&self) -> &note::VaultSigner {
        &self.signer
    }

    /// RFC 9162 inclusion proof of entry `index` in the tree of `size` entries.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<InclusionProof, Error> {
        if size > self.audit_size()? || index >= size {
            return Err(Error::InvalidRequest("index must be below size, and size at most the tree size".into()));
        }
        let leaf = self.leaf(index)?;
        let hashes =
            merkle::inclusion_proof(&VaultNodes(self), index, size).map_err(|e| Error::Corrupt(e.to_string()))?;
        Ok(InclusionProof { leaf_hash: merkle::leaf_hash(&leaf), hashes })
    }

    /// RFC 9162 consistency proof between the trees of `from` and `to` entries.
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, Error> {
        if to > self.audit_size()? || from > to {
            return Err(Error::InvalidRequest("from must not exceed to, and to at most the tree size".into()));
        }
        merkle::consistency_proof(&VaultNodes(self), from, to).map_err(|e| Error::Corrupt(e.to_string()))
    }

    /// The bytes of leaf `index`.
    pub fn leaf(&self, index: u64) -> Result<Vec<u8>, Error> {
        self.meta().get(&leaf_key(index))?.ok_or(Error::NotFound("audit entry"))
    }

    /// Every entry about `owner`, oldest first.
    pub fn owner_entries(&self, owner: &OwnerId) -> Result<Vec<Entry>, Error> {
        let op = self.owner_ref(owner);
        let mut out = Vec::new();
        for item in self.meta().scan(&key_of(prefix::OWNER_ENTRY, &[&op])) {
            let (k, v) = item?;
            let plain = seal::open(&self.vault_records, &aad(&k), &v)
                .map_err(|_| Error::Corrupt(crate::vault::describe_key(&k)))?;
            out.push(serde_json::from_slice(&plain).map_err(|_| Error::Corrupt(crate::vault::describe_key(&k)))?);
        }
        Ok(out)
    }

    /// One page of the entries about `owner`: those with an index above `after` (all, without
    /// it), ascending, at most `limit`. A range scan from the first key wanted: the cost is the
    /// page's, not the log's.
    pub fn owner_entries_page(&self, owner: &OwnerId, after: Option<u64>, limit: PageLimit) -> Result<Page, Error> {
        let op = self.owner_ref(owner);
        let first = match after {
            None => 0,
            Some(a) => match a.checked_add(1) {
                Some(f) => f,
                None => return Ok(Page { entries: Vec::new(), next: None }),
            },
        };
        let mut entries: Vec<Entry> = Vec::with_capacity(limit.get().min(64));
        let mut more = false;
        for item in self.meta().scan_from(&key_of(prefix::OWNER_ENTRY, &[&op]), &entry_key(&op, first)) {
            let (k, v) = item?;
            if entries.len() == limit.get() {
                more = true;
                break;
            }
            let plain = seal::open(&self.vault_records, &aad(&k), &v)
                .map_err(|_| Error::Corrupt(crate::vault::describe_key(&k)))?;
            entries.push(serde_json::from_slice(&plain).map_err(|_| Error::Corrupt(crate::vault::describe_key(&k)))?);
        }
        let next = if more { entries.last().map(|e| e.index) } else { None };
        Ok(Page { entries, next })
    }

    /// The leaves of `owner`'s entries at `indexes`, each with its inclusion proof in the tree
    /// of `size` entries (at most [`MAX_PAGE`] indexes). An index that is not an entry about
    /// `owner` is `not_found`; `size` above the tree, or an index not below it, is
    /// `invalid_request`.
    pub fn owner_leaf_proofs(&self, owner: &OwnerId, size: u64, indexes: &[u64]) -> Result<Vec<LeafProof>, Error> {
        if indexes.is_empty() || indexes.len() > MAX_PAGE {
            return Err(Error::InvalidRequest(format!("indexes must hold 1 to {MAX_PAGE} entries")));
        }
        if size > self.audit_size()? || indexes.iter().any(|&i| i >= size) {
            return Err(Error::InvalidRequest("every index must be below size, and size at most the tree size".into()));
        }
        let nodes = VaultNodes(self);
        indexes
            .iter()
            .map(|&index| {
                self.owner_entry(owner, index)?.ok_or(Error::NotFound("audit entry"))?;
                let leaf = self.leaf(index)?;
                let hashes = merkle::inclusion_proof(&nodes, index, size).map_err(|e| Error::Corrupt(e.to_string()))?;
                Ok(LeafProof { index, leaf, hashes })
            })
            .collect()
    }

    /// Whether entry `index` is about `owner` (for the owner's leaf endpoint).
    pub fn owner_entry(&self, owner: &OwnerId, index: u64) -> Result<Option<Entry>, Error> {
        let key = entry_key(&self.owner_ref(owner), index);
        match self.meta().get(&key)? {
            None => Ok(None),
            Some(v) => {
                let plain = seal::open(&self.vault_records, &aad(&key), &v)
                    .map_err(|_| Error::Corrupt(crate::vault::describe_key(&key)))?;
                Ok(Some(serde_json::from_slice(&plain).map_err(|_| Error::Corrupt(crate::vault::describe_key(&key)))?))
            }
        }
    }

    /// Recomputes every stored tree node from the leaves (for `check`); returns problems.
    pub(crate) fn check_audit(&self) -> Result<Vec<(String, String)>, Error> {
        let size = self.audit_size()?;
        let mut problems = Vec::new();
        let mut mem: std::collections::HashMap<(u8, u64), Hash> = Default::default();
        for i in 0..size {
            let Some(leaf) = self.meta().get(&leaf_key(i))? else {
                problems.push((format!("audit leaf {i}"), "missing".to_owned()));
                continue;
            };
            let computed = merkle::append_nodes(i, merkle::leaf_hash(&leaf), |l, j| {
                mem.get(&(l, j)).copied().ok_or(MerkleError::MissingNode { level: l, index: j })
            });
            let Ok(computed) = computed else { continue };
            for (l, j, h) in computed {
                mem.insert((l, j), h);
                if VaultNodes(self).node(l, j).ok() != Some(h) {
                    problems.push((format!("audit tree node {l}/{j}"), "does not match the leaves".to_owned()));
                }
            }
        }
        Ok(problems)
    }
}
