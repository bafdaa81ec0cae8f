//! The vault: owners, contents and documents on top of the two storage traits.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::keys::{MasterKey, OwnerKeys, SecretKey};
use crate::crypto::seal::{self, aad, Unsealable};
use crate::crypto::stream::{BlobReader, BlobWriter, Finished};
use crate::engine::document::{Document, NewDocument, Revocation};
use crate::engine::supply::By;
use crate::error::Error;
use crate::ids::{Digest, DocType, DocumentId, OwnerId};
use crate::log::audit::Draft;
use crate::log::note::VaultSigner;
use crate::storage::commit::{CommitStats, GroupCommit};
use crate::storage::layout::{
    self, inline_key, prefix, KEY_BLOB_STORE, KEY_FORMAT, KEY_INDEX_KEY, KEY_ROTATION, KEY_SIGNING,
};
use crate::storage::{in_nonblocking, BlobName, BlobRead, BlobStore, MetaStore, NewBlob, Op};
use crate::time::Timestamp;

/// The format this build writes and reads.
pub const FORMAT: &str = "vault-format-2";
/// The format before packs (SPEC.md §8, "Packs"): read, and marked [`FORMAT`] at open (older
/// builds then refuse the folder instead of misreading its locators).
const FORMAT_1: &str = "vault-format-1";
const STRIPES: usize = 256;
/// Read size for streaming puts.
const READ_BUF: usize = 64 * 1024;

/// One stored document of [`Vault::put_documents`]: the content, the document, and whether the
/// document is new.
pub type Put = (Stored, Document, bool);

thread_local! {
    /// `Some(max ticket)` while this thread runs a [`Vault::put_documents`] batch.
    static DEFERRED: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Blobs up to this many bytes (contents up to about 32 KiB) are kept in the metadata store,
/// written in the same atomic batch as their content record (SPEC.md §8, "Inline blobs").
pub const INLINE_MAX: usize = 32 * 1024 + 128;

/// Where a new blob is written: in memory while it is small, spilled to a blob file of the
/// [`BlobStore`] once it outgrows [`INLINE_MAX`].
pub(crate) enum Spill<'a> {
    Mem { buf: io::Cursor<Vec<u8>>, store: &'a dyn BlobStore, owner: OwnerRef },
    File(Box<dyn NewBlob>),
}

impl Write for Spill<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Spill::Mem { buf, store, owner } = self {
            let end = buf.position().saturating_add(data.len() as u64);
            if end.max(buf.get_ref().len() as u64) <= INLINE_MAX as u64 {
                return buf.write(data);
            }
            // Too big for the metadata store: move what is written to a blob file, at the same
            // position (the header is written last, at the start).
            let mut file = store.create(owner).map_err(io::Error::other)?;
            file.write_all(buf.get_ref())?;
            file.seek(SeekFrom::Start(buf.position()))?;
            *self = Spill::File(file);
        }
        match self {
            Spill::File(f) => f.write(data),
            Spill::Mem { buf, .. } => buf.write(data),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Spill::File(f) => f.flush(),
            Spill::Mem { .. } => Ok(()),
        }
    }
}

impl Seek for Spill<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match self {
            Spill::File(f) => f.seek(pos),
            Spill::Mem { buf, .. } => buf.seek(pos),
        }
    }
}
/// The id this vault claims its blob store with ([`BlobStore::claim`]): 16 bytes of a key
/// derived from the index key, in hex (it tells nothing of the key).
fn claim_id(index_key: &SecretKey) -> String {
    hex::encode(&index_key.derive(crate::crypto::keys::ctx::BLOB_STORE_CLAIM).expose()[..16])
}

/// How old a blob without a record must be before [`Vault::collect_orphans`] sets it aside.
pub const ORPHAN_AGE_SECS: i64 = 3600;

/// The key name of the vault's signing key in signed notes.
pub const VAULT_KEY_NAME: &str = "vault";

/// The pseudonymous 16-byte reference of an owner in storage.
pub type OwnerRef = [u8; 16];

/// An owner's unwrapped keys, cached while the vault is open.
#[derive(Debug)]
pub(crate) struct OwnerCtx {
    pub op: OwnerRef,
    pub id: OwnerId,
    pub keys: OwnerKeys,
}

impl OwnerCtx {
    pub fn blob(&self, digest: &Digest) -> BlobName {
        BlobName { owner: self.op, name: self.keys.blob_name(digest) }
    }
    pub fn binding(&self, digest: &Digest) -> Vec<u8> {
        let mut b = self.op.to_vec();
        b.extend_from_slice(digest.as_bytes());
        b
    }
}

/// What the vault knows about one stored content (sealed in the metadata store).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ContentRecord {
    pub digest: Digest,
    pub size: u64,
    /// Documents that point at this content.
    pub refs: u64,
    pub stored_at: Timestamp,
    /// The blob is kept in the metadata store (`B` key), not as a file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inline: bool,
    /// Only agencies uploaded it (never the owner): once no document and no agency's pending
    /// upload needs it, the sweep removes it (SPEC.md §14, "Possession before deposit").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agency_only: bool,
}

/// The result of storing a content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// BLAKE3 of the content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// False if the owner already held this content (nothing was written).
    pub created: bool,
}

/// A content opened for reading: `Read` + `Seek` over the plaintext. Reading it whole, in
/// order, also checks its BLAKE3 digest; any failure is the opaque decryption error.
pub type ContentReader = BlobReader<Box<dyn BlobRead>>;

/// An open vault. Share it between threads with `Arc`; every method takes `&self`.
pub struct Vault {
    meta: Box<dyn MetaStore>,
    blobs: Box<dyn BlobStore>,
    master_wrap: SecretKey,
    index_key: SecretKey,
    /// Seals vault-level records (the agency registry, audit index entries).
    pub(crate) vault_records: SecretKey,
    /// Keys the references in audit leaves.
    pub(crate) audit_refs: SecretKey,
    /// The vault's Ed25519 key: checkpoints and receipts.
    pub(crate) signer: VaultSigner,
    /// Audit-log appends: the tree size, held while an index is assigned and its nodes written.
    pub(crate) audit: crate::log::audit::AuditState,
    /// Serialises registry changes.
    registry: Mutex<()>,
    /// Agency registrations read so far (and absences), dropped on change.
    pub(crate) agency_cache: Mutex<HashMap<crate::ids::AgencyId, Option<crate::engine::provenance::Agency>>>,
    /// Serialises grant changes (use counts, revocations) and holds the grant writes queued at
    /// the audit sequencer but perhaps not applied yet (`grants::PendingGrants`).
    pub(crate) grants_lock: Mutex<crate::engine::grants::PendingGrants>,
    commit: GroupCommit,
    /// Group commit of blob syncs (one `syncfs` for a batch of new blobs).
    blob_commit: GroupCommit,
    owners: RwLock<HashMap<OwnerRef, Arc<OwnerCtx>>>,
    /// Per-owner change locks (striped by owner reference): every change of an owner's records
    /// holds its stripe shared from re-resolving the owner's keys to applying its batch; an
    /// erasure holds it exclusively (SPEC.md §17, "Serialisation").
    owner_locks: Vec<RwLock<()>>,
    stripes: Vec<Mutex<()>>,
    /// Present while open; its presence at open means the last session did not close cleanly.
    open_marker: Option<PathBuf>,
    recovered: RecoveryReport,
    /// Set by the first failed write or sync of the journal or the blob store (SPEC.md §8).
    fail: crate::storage::failstop::FailStop,
    /// Pending agency uploads: counts and limits.
    pub(crate) supply: crate::engine::supply::SupplyState,
    /// Unsealed records by key and sealed bytes (exact: see `record_cache`).
    records: crate::engine::record_cache::RecordCache,
    /// Webhook subscriptions (cached).
    pub(crate) events: crate::engine::events::EventState,
    /// Signs webhook deliveries.
    pub(crate) webhook_signer: crate::engine::events::WebhookSigner,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("meta", &self.meta).field("blobs", &self.blobs).finish_non_exhaustive()
    }
}

/// The keys a batch deletes (their records leave the record cache once it is applied).
fn deleted_keys(ops: &[Op]) -> Vec<Vec<u8>> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Delete(k) => Some(k.clone()),
            Op::Put(..) => None,
        })
        .collect()
}

/// What [`Vault::apply_sequenced`] runs under the store's sequencer lock.
pub(crate) type SequencedChanges<'a> = dyn FnMut(&dyn crate::storage::MetaRead) -> Result<Vec<Op>, Error> + Send + 'a;

/// An owner's change lock held by a change ([`Vault::owner_for_change`]): in-process, and on a
/// shared store in the store too. The store's lock is released first.
pub(crate) struct ChangeGuard<'a> {
    remote: Option<crate::storage::RemoteLock>,
    _local: RwLockReadGuard<'a, ()>,
}

impl ChangeGuard<'_> {
    /// Takes the store's lock out of the guard, for a caller that must hold it until its
    /// change is applied after the in-process lock is released (a grant's counted use).
    pub(crate) fn take_remote(&mut self) -> Option<crate::storage::RemoteLock> {
        self.remote.take()
    }
}

/// An owner's change lock held exclusively (erasure), as [`ChangeGuard`].
pub(crate) struct ExclusiveGuard<'a> {
    _remote: Option<crate::storage::RemoteLock>,
    _local: RwLockWriteGuard<'a, ()>,
}

/// What opening the vault had to clean up after an unclean shutdown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Whether the previous session ended without closing the vault.
    pub unclean: bool,
    /// Unfinished blob files (`*.tmp`) removed.
    pub unfinished_removed: usize,
    /// Blob files that no record pointed at (written by a put that never returned, or left
    /// by a delete cut short), moved to `orphans/`: never deleted (SPEC.md §10).
    pub orphans_set_aside: usize,
}

fn not_held(digest: &Digest) -> Error {
    Error::Conflict(format!("content {digest} is not held for this owner; upload it first"))
}

fn corrupt(key: &[u8]) -> Error {
    Error::Corrupt(describe_key(key))
}

/// A human description of a metadata key (no secrets: keys hold only pseudonyms and tags).
pub(crate) fn describe_key(key: &[u8]) -> String {
    match key.first() {
        Some(&prefix::OWNER) => format!("owner record {}", hex::encode(&key[1..])),
        Some(&prefix::CONTENT) if key.len() == 49 => {
            format!("content record {}/{}", hex::encode(&key[1..17]), hex::encode(&key[17..]))
        }
        Some(&prefix::DOCUMENT) if key.len() == 33 => {
            format!("document record {}/{}", hex::encode(&key[1..17]), hex::encode(&key[17..]))
        }
        Some(&prefix::TYPE_INDEX) => format!("type index entry {}", hex::encode(&key[1..])),
        Some(&prefix::META) => format!("vault record {}", String::from_utf8_lossy(&key[1..])),
        Some(&prefix::AGENCY) => format!("agency record {}", String::from_utf8_lossy(&key[1..])),
        Some(&prefix::USED_KEY) => format!("key-use marker {}", String::from_utf8_lossy(&key[1..])),
        Some(&prefix::GRANT) => format!("grant record {}", hex::encode(&key[1..])),
        Some(&prefix::GRANT_BY_AGENCY) => format!("grant index entry {}", hex::encode(&key[1..])),
        Some(&prefix::LEAF) => format!("audit leaf {}", hex::encode(&key[1..])),
        Some(&prefix::NODE) => format!("audit tree node {}", hex::encode(&key[1..])),
        Some(&prefix::TILE) => format!("audit tile {}", hex::encode(&key[1..])),
        Some(&prefix::DEPOSIT_INDEX) => format!("deposit index entry {}", hex::encode(&key[1..])),
        Some(&prefix::INLINE_BLOB) => format!("inline blob {}", hex::encode(&key[1..])),
        Some(&prefix::SUPPLY) => format!("supply record {}", hex::encode(&key[1..])),
        Some(&prefix::OWNER_ENTRY) => format!("access-log entry {}", hex::encode(&key[1..])),
        Some(&prefix::WEBHOOK) => format!("webhook subscription {}", String::from_utf8_lossy(&key[1..])),
        Some(&prefix::OUTBOX) => format!("outbox event {}", hex::encode(&key[1..])),
        Some(&prefix::PARKED) => format!("parked event {}", hex::encode(&key[1..])),
        Some(&prefix::GRANT_EXPIRY) => format!("grant expiry record {}", hex::encode(&key[1..])),
        Some(&prefix::OUTBOX_DUE) => format!("outbox due-time index entry {}", hex::encode(&key[1..])),
        Some(&prefix::PARKED_AT) => format!("parked event index entry {}", hex::encode(&key[1..])),
        _ => format!("unknown metadata key {}", hex::encode(key)),
    }
}

impl Vault {
    /// Opens the vault in `dir`, creating it if the folder is new or empty.
    ///
    /// A wrong master key for an existing vault is [`Error::WrongMasterKey`], checked before
    /// anything is written. After an unclean shutdown, unfinished and unreferenced blob files
    /// (from puts that never returned) are removed; see [`Vault::recovery`].
    #[cfg(feature = "embedded")]
    pub fn open(dir: &Path, master: &MasterKey) -> Result<Self, Error> {
        let io = |what: &str| {
            let what = format!("{what} {}", dir.display());
            move |source| crate::storage::StoreError::Io { what, source }
        };
        fs::create_dir_all(dir).map_err(io("creating data folder"))?;
        let meta = crate::storage::sled::SledMeta::open(&dir.join("meta"))?;
        let blobs = crate::storage::files::FsBlobs::open(dir.join("blobs"))?;
        Self::open_with(Box::new(meta), Box::new(blobs), master, Some(dir.join("OPEN")))
    }

    /// Opens a vault over any storage backends. `open_marker` is a file whose presence marks
    /// an unclean shutdown (None: always run recovery).
    pub fn open_with(
        meta: Box<dyn MetaStore>,
        blobs: Box<dyn BlobStore>,
        master: &MasterKey,
        open_marker: Option<PathBuf>,
    ) -> Result<Self, Error> {
        let master_wrap = master.wrap_key();
        if meta.get(KEY_ROTATION)?.is_some() {
            return Err(Error::RotationInProgress);
        }
        let sealed_index = meta.get(KEY_INDEX_KEY)?;
        let existed = sealed_index.is_some();
        let index_key = match sealed_index {
            Some(sealed) => {
                let mut format = meta.get(KEY_FORMAT)?.unwrap_or_default();
                if format == FORMAT_1.as_bytes() {
                    // Format 2 only adds packed blob values; the key is right (checked below)
                    // before the mark is changed.
                    let raw =
                        seal::open(&master_wrap, &aad(KEY_INDEX_KEY), &sealed).map_err(|_| Error::WrongMasterKey)?;
                    drop(raw);
                    meta.apply(vec![Op::Put(KEY_FORMAT.to_vec(), FORMAT.as_bytes().to_vec())])?;
                    meta.sync()?;
                    format = FORMAT.as_bytes().to_vec();
                }
                if format != FORMAT.as_bytes() {
                    return Err(Error::UnsupportedFormat {
                        found: String::from_utf8_lossy(&format).into_owned(),
                        expected: FORMAT,
                    });
                }
                let raw = seal::open(&master_wrap, &aad(KEY_INDEX_KEY), &sealed).map_err(|_| Error::WrongMasterKey)?;
                let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| corrupt(KEY_INDEX_KEY))?;
                SecretKey::from_bytes(bytes)
            }
            None => {
                if let Some(first) = meta.scan(b"").next() {
                    let (k, _) = first?;
                    return Err(Error::Corrupt(format!(
                        "vault has records but no index key (first: {})",
                        describe_key(&k)
                    )));
                }
                // A blob store another vault claimed is refused before anything is written.
                let key = SecretKey::generate();
                blobs.claim(&claim_id(&key), false)?;
                // An empty database over existing blobs is a lost database, not a new vault: a
                // new vault key would silently replace the old one.
                let listing = blobs.list()?;
                if !listing.blobs.is_empty() || !blobs.set_aside_list()?.is_empty() {
                    return Err(crate::storage::StoreError::Damaged {
                        file: "the metadata database".into(),
                        offset: None,
                        what: format!(
                            "it is empty (no vault key) but the blob store holds {} blobs: refusing to create \
                             a new vault key over existing data",
                            listing.blobs.len()
                        ),
                    }
                    .into());
                }
                // Claimed before anything is written: if another vault claimed it meanwhile, this
                // database stays empty.
                blobs.claim(&claim_id(&key), true)?;
                // The blob store is recorded in the same batch as the key (no vault without it).
                meta.apply(vec![
                    Op::Put(KEY_FORMAT.to_vec(), FORMAT.as_bytes().to_vec()),
                    Op::Put(KEY_INDEX_KEY.to_vec(), seal::seal(&master_wrap, &aad(KEY_INDEX_KEY), key.expose())),
                    Op::Put(KEY_BLOB_STORE.to_vec(), blobs.kind().into_bytes()),
                ])?;
                meta.sync()?;
                key
            }
        };
        // A vault is opened only over the blob store it was created with: over another, every
        // content would be "missing" (or, worse, a later upload would mix two stores).
        let given = blobs.kind();
        let claimed = match meta.get(KEY_BLOB_STORE)? {
            Some(recorded) if recorded == given.as_bytes() => existed,
            Some(recorded) => {
                return Err(crate::storage::StoreError::WrongBlobStore {
                    recorded: String::from_utf8_lossy(&recorded).into_owned(),
                    given,
                }
                .into())
            }
            None => {
                // Vaults made before the record existed all kept their blobs in files.
                if existed && given != "files" {
                    return Err(crate::storage::StoreError::WrongBlobStore { recorded: "files".into(), given }.into());
                }
                meta.apply(vec![Op::Put(KEY_BLOB_STORE.to_vec(), given.into_bytes())])?;
                meta.sync()?;
                true
            }
        };
        // An existing vault checks its claim at every open (and makes it, if it predates claims).
        if claimed {
            blobs.claim(&claim_id(&index_key), true)?;
        }
        let seed: Zeroizing<[u8; 32]> = match meta.get(KEY_SIGNING)? {
            Some(sealed) => {
                let raw = seal::open(&master_wrap, &aad(KEY_SIGNING), &sealed).map_err(|_| corrupt(KEY_SIGNING))?;
                Zeroizing::new(raw.as_slice().try_into().map_err(|_| corrupt(KEY_SIGNING))?)
            }
            None => {
                let seed = SecretKey::generate();
                meta.apply(vec![Op::Put(
                    KEY_SIGNING.to_vec(),
                    seal::seal(&master_wrap, &aad(KEY_SIGNING), seed.expose()),
                )])?;
                meta.sync()?;
                Zeroizing::new(*seed.expose())
            }
        };
        let signer = VaultSigner::new(VAULT_KEY_NAME, &seed);
        let webhook_signer = crate::engine::events::WebhookSigner::derive(&seed);
        let vault_records = index_key.derive(crate::crypto::keys::ctx::VAULT_RECORDS);
        let audit_refs = index_key.derive(crate::crypto::keys::ctx::AUDIT_REFS);
        let mut vault = Vault {
            vault_records,
            audit_refs,
            signer,
            audit: crate::log::audit::AuditState::default(),
            registry: Mutex::new(()),
            agency_cache: Mutex::new(HashMap::new()),
            grants_lock: Mutex::default(),
            meta,
            blobs,
            master_wrap,
            index_key,
            commit: GroupCommit::default(),
            blob_commit: GroupCommit::default(),
            owners: RwLock::new(HashMap::new()),
            owner_locks: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            open_marker,
            recovered: RecoveryReport::default(),
            fail: Default::default(),
            supply: Default::default(),
            records: Default::default(),
            events: Default::default(),
            webhook_signer,
        };
        vault.recover()?;
        vault.load_audit()?;
        Ok(vault)
    }

    fn recover(&mut self) -> Result<(), Error> {
        let unclean = match &self.open_marker {
            Some(m) => m.exists(),
            None => true,
        };
        let mut report = RecoveryReport { unclean, ..Default::default() };
        if unclean {
            // Puts that never returned leave unfinished temp files, or (a crash between the
            // blob's rename and its record) a complete blob nothing points at. Neither was
            // acknowledged, but a blob is never deleted because a record is missing (the record
            // may be what was lost): it is set aside for the operator.
            report.unfinished_removed = self.blobs.discard_unfinished()?;
            // (A store whose orphans are found by age is not listed here: `collect_orphans`.)
            let listed = if self.blobs.orphans_by_age() { Vec::new() } else { self.blobs.list()?.blobs };
            for name in listed {
                let key = layout::content_key(&name.owner, &name.name);
                if self.meta.get(&key)?.is_none() && self.blobs.set_aside(&name)? {
                    report.orphans_set_aside += 1;
                }
            }
        }
        if let Some(m) = &self.open_marker {
            File::create(m).and_then(|f| f.sync_all()).map_err(|source| crate::storage::StoreError::Io {
                what: format!("writing {}", m.display()),
                source,
            })?;
            if let Some(dir) = m.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(|source| crate::storage::StoreError::Io {
                    what: format!("syncing {}", dir.display()),
                    source,
                })?;
            }
        }
        self.recovered = report;
        Ok(())
    }

    /// What opening had to recover.
    pub fn recovery(&self) -> RecoveryReport {
        self.recovered
    }

    /// Sets aside the blobs last written more than [`ORPHAN_AGE_SECS`] before `now` that no
    /// content record points at, for a blob store whose orphans are found by age (object
    /// storage, SPEC.md §9b); nothing for the others, whose orphans the recovery at an unclean
    /// open finds. A blob is written before its record, within the same commit: one older than
    /// the age without a record is an upload whose record was never written (a crash, a lost
    /// answer). Returns how many were set aside. The server runs it hourly.
    pub fn collect_orphans(&self, now: Timestamp) -> Result<usize, Error> {
        if !self.blobs.orphans_by_age() {
            return Ok(0);
        }
        let mut n = 0;
        for name in self.blobs.written_before(now.unix() - ORPHAN_AGE_SECS)? {
            // Under the name's stripe: no commit of the same content runs meanwhile.
            let _stripe = self.stripe(&name);
            let key = layout::content_key(&name.owner, &name.name);
            if self.meta.get(&key)?.is_none() && self.blobs.set_aside(&name)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Reclaims the space of deleted small contents in the embedded store's pack files (a pack
    /// holding less than half live bytes is rewritten; SPEC.md §8, "Packs"). Returns how many
    /// values were moved; nothing for other stores. The server runs it with every sweep.
    pub fn compact_storage(&self) -> Result<u64, Error> {
        self.fail.check()?;
        // A failed write of the compaction has stopped the store itself (the next write of the
        // vault trips then); a value it could not read is skipped. Neither stops the vault here.
        Ok(self.meta.compact()?)
    }

    /// The first storage failure, once the vault has stopped accepting writes (fail-stop,
    /// SPEC.md §8): every write then fails with [`Error::FailStopped`] until the vault is
    /// reopened, which runs recovery. Reads go on.
    pub fn fail_stopped(&self) -> Option<&str> {
        self.fail.reason()
    }

    /// Calls `hook` once with the reason when the vault stops accepting writes (at once if it
    /// already has). Only the first hook set is kept.
    pub fn on_fail_stop(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        self.fail.set_hook(Box::new(hook));
    }

    /// Group-commit counters of the metadata store (changes applied, syncs run).
    pub fn commit_stats(&self) -> CommitStats {
        self.commit.stats()
    }

    /// Group-commit counters of the blob store (blobs committed, syncs run).
    pub fn blob_commit_stats(&self) -> CommitStats {
        self.blob_commit.stats()
    }

    pub(crate) fn meta(&self) -> &dyn MetaStore {
        self.meta.as_ref()
    }

    pub(crate) fn blobs(&self) -> &dyn BlobStore {
        self.blobs.as_ref()
    }

    /// Serialises registry changes (read-check-write of an agency record).
    pub(crate) fn registry_lock(&self) -> MutexGuard<'_, ()> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies changes and waits until they are durable.
    pub(crate) fn apply_durable(&self, ops: Vec<Op>) -> Result<(), Error> {
        let ticket = self.apply(ops)?;
        self.durable(ticket)
    }

    /// [`Vault::apply_durable`] in two steps, so a caller can release its lock between them
    /// (the change is visible at once, durable once [`Vault::durable_after`] returns).
    pub(crate) fn apply_visible(&self, ops: Vec<Op>) -> Result<u64, Error> {
        self.apply(ops)
    }

    /// Waits until the change of `ticket` ([`Vault::apply_visible`]) is durable.
    pub(crate) fn durable_after(&self, ticket: u64) -> Result<(), Error> {
        self.durable(ticket)
    }

    /// [`Vault::stripe`] for other modules.
    pub(crate) fn stripe_of(&self, name: &BlobName) -> MutexGuard<'_, ()> {
        self.stripe(name)
    }

    fn stripe(&self, name: &BlobName) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a poisoned stripe has no state to be inconsistent.
        self.stripes[usize::from(name.name[0])].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn durable(&self, ticket: u64) -> Result<(), Error> {
        // Inside `put_documents` on this thread: remember the ticket, wait once at the end.
        if DEFERRED.with(|d| d.get().map(|t| d.set(Some(t.max(ticket))))).is_some() {
            return Ok(());
        }
        // A failed sync stops the vault; the writes it covered are of unknown outcome.
        self.commit.wait_durable(ticket, || self.meta.sync()).map_err(|e| self.fail.trip("syncing the metadata", e))
    }

    /// Stores contents and records documents about them (each as [`Vault::put_document`] does)
    /// and waits for durability once for the whole batch: a bulk ingest costs one shared
    /// journal sync per batch instead of one per document. Nothing is acknowledged before the
    /// whole batch is durable: the outer error means none of it may be relied on; otherwise each
    /// item has its own result (with whether the document is new, as for a repeated deposit).
    pub fn put_documents<R: Read>(
        &self,
        items: Vec<(OwnerId, R, NewDocument)>,
    ) -> Result<Vec<Result<Put, Error>>, Error> {
        self.deferred(|| {
            items
                .into_iter()
                .map(|(owner, source, new)| {
                    self.put_document_with(&owner, source, new, false, DocumentId::random(), None, By::Owner)
                })
                .collect()
        })
    }

    /// Runs `f` with durable waits deferred on this thread, then waits once for everything it
    /// applied (and everything applied before), before returning its result.
    pub(crate) fn deferred<T>(&self, f: impl FnOnce() -> T) -> Result<T, Error> {
        /// Restores immediate durability on this thread, even on a panic.
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                DEFERRED.with(|d| d.set(None));
            }
        }
        DEFERRED.with(|d| d.set(Some(0)));
        let reset = Reset;
        let out = f();
        let ticket = DEFERRED.with(|d| d.get()).unwrap_or(0).max(self.commit.latest());
        drop(reset);
        self.durable(ticket)?;
        Ok(out)
    }

    /// Applies changes and returns the ticket to wait on.
    fn apply(&self, ops: Vec<Op>) -> Result<u64, Error> {
        self.fail.check()?;
        // A failed apply may have been journaled (then the next open replays it): its outcome
        // is unknown, never "failed".
        let deleted = deleted_keys(&ops);
        let applied = self.meta.apply(ops);
        // After the change is applied: a reader that fetched a deleted record before it does
        // not put it back in the cache (the epoch moved on).
        self.records.evict(deleted.iter().map(Vec::as_slice));
        applied.map_err(|e| match e {
            // The sequencer's lock was not had in time: nothing was written (the outcome is
            // known), so the call fails and the vault goes on.
            e @ crate::storage::StoreError::Unavailable(_) => Error::Store(e),
            e => self.fail.trip("writing the metadata", e),
        })?;
        Ok(self.commit.written())
    }

    /// [`Vault::apply`] of the changes `build` computes under the store's sequencer lock
    /// ([`MetaStore::sequenced`]; the audit log's batches on a shared store). An error of
    /// `build` applies nothing and is returned as is; a failed write stops the vault as
    /// [`Vault::apply`]'s does.
    pub(crate) fn apply_sequenced(&self, build: &mut SequencedChanges<'_>) -> Result<u64, Error> {
        self.fail.check()?;
        let mut refused: Option<Error> = None;
        let mut deleted: Vec<Vec<u8>> = Vec::new();
        let applied = self.meta.sequenced(&mut |r| match build(r) {
            Ok(ops) => {
                deleted = deleted_keys(&ops);
                Ok(ops)
            }
            Err(e) => {
                refused = Some(e);
                Err(crate::storage::StoreError::Meta("the batch was not built".into()))
            }
        });
        if let Some(e) = refused {
            return Err(e);
        }
        self.records.evict(deleted.iter().map(Vec::as_slice));
        applied.map_err(|e| match e {
            // The sequencer's lock was not had in time: nothing was written (the outcome is
            // known), so the call fails and the vault goes on.
            e @ crate::storage::StoreError::Unavailable(_) => Error::Store(e),
            e => self.fail.trip("writing the metadata", e),
        })?;
        Ok(self.commit.written())
    }

    /// [`Vault::apply`] for other modules.
    pub(crate) fn apply_ticket(&self, ops: Vec<Op>) -> Result<u64, Error> {
        self.apply(ops)
    }

    /// Waits until everything up to `ticket` is durable.
    pub(crate) fn wait_ticket(&self, ticket: u64) -> Result<(), Error> {
        self.durable(ticket)
    }

    /// The ticket covering everything applied so far.
    pub(crate) fn latest_ticket(&self) -> u64 {
        self.commit.latest()
    }

    pub(crate) fn owner_ref(&self, owner: &OwnerId) -> OwnerRef {
        let h = blake3::keyed_hash(self.index_key.expose(), owner.as_str().as_bytes());
        let mut op = [0u8; 16];
        op.copy_from_slice(&h.as_bytes()[..16]);
        op
    }

    pub(crate) fn unseal_owner(&self, key: &[u8], sealed: &[u8]) -> Result<(SecretKey, OwnerId), Unsealable> {
        let raw = seal::open(&self.master_wrap, &aad(key), sealed)?;
        if raw.len() < 32 {
            return Err(Unsealable);
        }
        let mut k = [0u8; 32];
        k.copy_from_slice(&raw[..32]);
        let id = std::str::from_utf8(&raw[32..]).ok().and_then(|s| OwnerId::parse(s).ok()).ok_or(Unsealable)?;
        Ok((SecretKey::from_bytes(k), id))
    }

    /// Drops an erased owner's keys from the cache (under the owner's exclusive change lock).
    pub(crate) fn forget_owner(&self, op: &OwnerRef) {
        self.owners.write().unwrap_or_else(|p| p.into_inner()).remove(op);
        // No erased record stays in memory (unreachable anyway: its bytes are gone).
        self.records.clear();
    }

    /// The owner's keys as kept in memory (never on a shared store).
    fn cached_owner(&self, op: &OwnerRef) -> Option<Arc<OwnerCtx>> {
        if self.meta.shared() {
            return None;
        }
        self.owners.read().unwrap_or_else(|p| p.into_inner()).get(op).cloned()
    }

    /// The owner of a storage reference, if the owner key exists.
    pub(crate) fn owner_by_ref(&self, op: &OwnerRef) -> Result<Option<Arc<OwnerCtx>>, Error> {
        if let Some(ctx) = self.cached_owner(op) {
            return Ok(Some(ctx));
        }
        let key = layout::owner_key(op);
        let Some(sealed) = self.meta.get(&key)? else { return Ok(None) };
        let (_, id) = self.unseal_owner(&key, &sealed).map_err(|_| corrupt(&key))?;
        self.owner(&id, false)
    }

    /// The owner's keys; with `create`, makes the owner if new (durable with the caller's next
    /// ticket). Only for reading, or for a change that calls [`Vault::owner_for_change`] again
    /// before it applies: an erasure may destroy these keys as soon as this returns.
    pub(crate) fn owner(&self, owner: &OwnerId, create: bool) -> Result<Option<Arc<OwnerCtx>>, Error> {
        let _shared = self.owner_shared(&self.owner_ref(owner))?;
        self.owner_locked(owner, create)
    }

    /// The owner's change lock, shared: held by every change of the owner's records from
    /// resolving the owner's keys until its batch is applied. Never taken twice on one thread
    /// (a waiting erasure would deadlock it): functions that hold it call
    /// [`Vault::owner_locked`], not [`Vault::owner`].
    ///
    /// In a [`nonblocking`](crate::storage::nonblocking) section a lock held by an erasure is [`Error::WouldBlock`].
    fn owner_shared(&self, op: &OwnerRef) -> Result<RwLockReadGuard<'_, ()>, Error> {
        let lock = &self.owner_locks[usize::from(op[0])];
        if in_nonblocking() {
            return match lock.try_read() {
                Ok(g) => Ok(g),
                // The guarded data is `()`: a poisoned lock has no state to be inconsistent.
                Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => Err(Error::WouldBlock),
            };
        }
        Ok(lock.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The owner's change lock, exclusive (erasure); on a shared store with the owner's lock in
    /// the store (see [`Vault::owner_for_change`]).
    pub(crate) fn owner_exclusive(&self, op: &OwnerRef) -> Result<ExclusiveGuard<'_>, Error> {
        let local = self.owner_locks[usize::from(op[0])].write().unwrap_or_else(|p| p.into_inner());
        let remote = self.meta.lock(crate::storage::LockName::Owner(op))?;
        Ok(ExclusiveGuard { _remote: remote, _local: local })
    }

    /// Whether several instances may share the metadata store ([`MetaStore::shared`]).
    pub fn shared_store(&self) -> bool {
        self.meta.shared()
    }

    /// Whether this instance runs the periodic work now ([`MetaStore::background_lease`]):
    /// always on a store one process owns; on a shared one, at one instance at a time.
    pub fn background_lease(&self) -> Result<bool, Error> {
        Ok(self.meta.background_lease()?)
    }

    /// Starts a change of the owner's records: takes the owner's change lock (shared) and
    /// returns it with the owner's current keys. Keys resolved before this call may belong to
    /// an owner erased meanwhile; from here until the guard drops they cannot be, so a batch
    /// sealed with the returned keys and applied under the guard never outlives their key.
    /// After an erasure, `create` starts a fresh owner (new key).
    ///
    /// On a shared store the guard holds the owner's lock in the store too (taken after the
    /// in-process one, so no two locks are ever taken in the other order), and every change
    /// is applied before its guard drops, so changes of one owner made at several instances
    /// are serialised as those of one instance are (SPEC.md §9a "Several instances").
    pub(crate) fn owner_for_change(
        &self,
        owner: &OwnerId,
        create: bool,
    ) -> Result<(ChangeGuard<'_>, Option<Arc<OwnerCtx>>), Error> {
        let op = self.owner_ref(owner);
        let local = self.owner_shared(&op)?;
        let remote = self.meta.lock(crate::storage::LockName::Owner(&op))?;
        let o = self.owner_locked(owner, create)?;
        Ok((ChangeGuard { remote, _local: local }, o))
    }

    /// [`Vault::owner`] for a caller holding the owner's change lock (shared or exclusive).
    pub(crate) fn owner_locked(&self, owner: &OwnerId, create: bool) -> Result<Option<Arc<OwnerCtx>>, Error> {
        let op = self.owner_ref(owner);
        if let Some(ctx) = self.cached_owner(&op) {
            return Ok(Some(ctx));
        }
        let key = layout::owner_key(&op);
        let owner_key = loop {
            match self.meta.get(&key)? {
                Some(sealed) => {
                    let (k, id) = self.unseal_owner(&key, &sealed).map_err(|_| corrupt(&key))?;
                    if &id != owner {
                        return Err(corrupt(&key));
                    }
                    break k;
                }
                None if !create => return Ok(None),
                None => {
                    let k = SecretKey::generate();
                    let mut plain = Zeroizing::new(k.expose().to_vec());
                    plain.extend_from_slice(owner.as_str().as_bytes());
                    let sealed = seal::seal(&self.master_wrap, &aad(&key), &plain);
                    self.fail.check()?;
                    let swapped = self
                        .meta
                        .compare_and_swap(&key, None, Some(sealed))
                        .map_err(|e| self.fail.trip("writing the metadata", e))?;
                    if swapped {
                        self.commit.written();
                        break k;
                    }
                    // Another thread created it first: use theirs.
                }
            }
        };
        let ctx = Arc::new(OwnerCtx { op, id: owner.clone(), keys: OwnerKeys::derive(&owner_key) });
        // On a shared store another instance may erase the owner at any time: its keys are
        // read from the store every time, never kept (SPEC.md §9a "Several instances").
        if self.meta.shared() {
            return Ok(Some(ctx));
        }
        // The map's values are immutable once inserted; a poisoned lock cannot hold a half-made entry.
        let mut map = self.owners.write().unwrap_or_else(|p| p.into_inner());
        Ok(Some(map.entry(op).or_insert(ctx).clone()))
    }

    pub(crate) fn get_sealed<T: for<'de> Deserialize<'de> + Clone + Send + Sync + 'static>(
        &self,
        keys: &OwnerKeys,
        key: &[u8],
    ) -> Result<Option<T>, Error> {
        let epoch = self.records.epoch();
        match self.meta.get(key)? {
            None => Ok(None),
            Some(v) => Ok(Some(self.open_cached(epoch, keys, key, &v).ok_or_else(|| corrupt(key))?)),
        }
    }

    /// Keeps a record just sealed for writing in the record cache (see `RecordCache::put`).
    pub(crate) fn cache_written<T: Send + Sync + 'static>(&self, key: &[u8], sealed: &[u8], value: T) {
        self.records.put(key, sealed, value);
    }

    /// The record cache's epoch, to read before fetching records to open with
    /// [`Vault::open_cached`].
    pub(crate) fn records_epoch(&self) -> u64 {
        self.records.epoch()
    }

    /// [`open_record`], reusing the record opened from exactly these sealed bytes before
    /// (fetched after `epoch` was read).
    pub(crate) fn open_cached<T: for<'de> Deserialize<'de> + Clone + Send + Sync + 'static>(
        &self,
        epoch: u64,
        keys: &OwnerKeys,
        key: &[u8],
        sealed: &[u8],
    ) -> Option<T> {
        self.records.get_or_open(epoch, key, sealed, || open_record(keys, key, sealed))
    }

    fn content_key(o: &OwnerCtx, name: &BlobName) -> Vec<u8> {
        layout::content_key(&o.op, &name.name)
    }

    /// Whether the owner holds a content.
    pub fn holds(&self, owner: &OwnerId, digest: &Digest) -> Result<bool, Error> {
        let Some(o) = self.owner(owner, false)? else {
            return Ok(false);
        };
        Ok(self.meta.get(&Self::content_key(&o, &o.blob(digest)))?.is_some())
    }

    /// The digests among `digests` that the owner does not hold, in the order given.
    pub fn missing(&self, owner: &OwnerId, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        let Some(o) = self.owner(owner, false)? else {
            return Ok(digests.to_vec());
        };
        let mut out = Vec::new();
        for d in digests {
            if !self.held(&o, d)? {
                out.push(*d);
            }
        }
        Ok(out)
    }

    /// Stores a content read from `source`, encrypting while hashing. With `expected`, the
    /// content must hash to it ([`Error::DigestMismatch`] otherwise, leaving nothing behind),
    /// and if the owner already holds it the bytes are only hashed, never encrypted or written.
    /// Returns once the content is durable.
    pub fn put_content(&self, owner: &OwnerId, source: impl Read, expected: Option<Digest>) -> Result<Stored, Error> {
        self.put_content_with(owner, source, expected, None, By::Owner)
    }

    /// [`Vault::put_content`], recording `audit` with the change. An agency's upload is always
    /// encrypted and written, held or not (then discarded if held), so held and new uploads
    /// cost the same; it records the agency's supply of the content (SPEC.md §14).
    pub(crate) fn put_content_with(
        &self,
        owner: &OwnerId,
        mut source: impl Read,
        expected: Option<Digest>,
        audit: Option<&Draft>,
        by: By<'_>,
    ) -> Result<Stored, Error> {
        let o = self.owner_or_create(owner)?;
        if let (Some(want), By::Owner) = (expected, by) {
            if self.held(&o, &want)? {
                let (actual, size) = hash_source(&mut source)?;
                if actual != want {
                    return Err(Error::DigestMismatch { expected: want, actual });
                }
                return self.owner_keeps(&o, want, size, audit);
            }
        }
        let fin = self.encrypt(&o, source, expected)?;
        Ok(self.commit_blob(&o, fin, None, audit, by)?.0)
    }

    /// The answer for content the owner uploads while it is held: if only agencies had
    /// uploaded it, it is now the owner's too (the sweep no longer removes it).
    fn owner_keeps(&self, o: &OwnerCtx, digest: Digest, size: u64, audit: Option<&Draft>) -> Result<Stored, Error> {
        let name = o.blob(&digest);
        let key = Self::content_key(o, &name);
        // On a shared store the owner's lock in the store first (then the stripe, the order of
        // every change): a deposit at another instance may change the record meanwhile.
        let _remote = self.meta.lock(crate::storage::LockName::Owner(&o.op))?;
        let guard = self.stripe(&name);
        match self.get_sealed::<ContentRecord>(&o.keys, &key)? {
            Some(mut rec) if rec.agency_only => {
                rec.agency_only = false;
                let ticket = self.apply_opt(vec![Op::Put(key.clone(), seal_record(&o.keys, &key, &rec))], audit)?;
                drop(guard);
                self.durable(ticket)?;
                Ok(Stored { digest, size, created: false })
            }
            _ => {
                drop(guard);
                self.held_answer(digest, size, audit)
            }
        }
    }

    /// Stores a content held in memory. Held content costs one BLAKE3 pass and nothing else.
    pub fn put_content_bytes(&self, owner: &OwnerId, data: &[u8]) -> Result<Stored, Error> {
        let digest = Digest::of(data);
        let o = self.owner_or_create(owner)?;
        if self.held(&o, &digest)? {
            return self.owner_keeps(&o, digest, data.len() as u64, None);
        }
        let fin = self.encrypt(&o, data, Some(digest))?;
        Ok(self.commit_blob(&o, fin, None, None, By::Owner)?.0)
    }

    /// Stores the content of a file. The file is hashed first; held content is not read again.
    /// A file that changes while it is being stored fails with [`Error::DigestMismatch`].
    pub fn put_content_file(&self, owner: &OwnerId, path: &Path) -> Result<Stored, Error> {
        let mut f = File::open(path).map_err(Error::Source)?;
        let (digest, size) = hash_source(&mut f)?;
        let o = self.owner_or_create(owner)?;
        if self.held(&o, &digest)? {
            return self.owner_keeps(&o, digest, size, None);
        }
        f.seek(SeekFrom::Start(0)).map_err(Error::Source)?;
        let fin = self.encrypt(&o, f, Some(digest))?;
        Ok(self.commit_blob(&o, fin, None, None, By::Owner)?.0)
    }

    pub(crate) fn held(&self, o: &OwnerCtx, digest: &Digest) -> Result<bool, Error> {
        Ok(self.meta.get(&Self::content_key(o, &o.blob(digest)))?.is_some())
    }

    fn held_answer(&self, digest: Digest, size: u64, audit: Option<&Draft>) -> Result<Stored, Error> {
        match audit {
            Some(d) => {
                self.audit_now_with(self.saved_tally(d, size), d)?;
            }
            None => self.durable(self.commit.latest())?,
        }
        Ok(Stored { digest, size, created: false })
    }

    /// Applies `ops`, with the audit entry if there is one; returns the ticket to wait on.
    fn apply_opt(&self, ops: Vec<Op>, audit: Option<&Draft>) -> Result<u64, Error> {
        match audit {
            Some(d) => Ok(self.apply_audited(ops, d)?.0),
            None => self.apply(ops),
        }
    }

    /// Encrypts `source` into an uncommitted blob, checking the digest if one is expected.
    fn encrypt(
        &self,
        o: &OwnerCtx,
        mut source: impl Read,
        expected: Option<Digest>,
    ) -> Result<Finished<Spill<'_>>, Error> {
        // Refused before anything is written once the vault has stopped.
        self.fail.check()?;
        let mem = Spill::Mem { buf: io::Cursor::new(Vec::new()), store: self.blobs.as_ref(), owner: o.op };
        let mut w = BlobWriter::new(mem)?;
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Source(e)),
            };
            w.update(&buf[..n])?;
        }
        let fin = w.finish()?;
        if let Some(want) = expected {
            if fin.digest() != want {
                return Err(Error::DigestMismatch { expected: want, actual: fin.digest() });
            }
        }
        Ok(fin)
    }

    pub(crate) fn owner_or_create(&self, owner: &OwnerId) -> Result<Arc<OwnerCtx>, Error> {
        self.owner(owner, true)?.ok_or(Error::NotFound("owner"))
    }

    /// Records a new blob (or finds its content stored meanwhile by a concurrent put) and, with
    /// `doc`, a document about it (issuer-verified when its flag is set), in one atomic batch
    /// and one durable wait. For an agency, the batch also records its supply of the content
    /// (used when `doc` is set), and a held content's fresh blob is written in full before it
    /// is discarded, so held and new uploads do the same work.
    fn commit_blob(
        &self,
        o: &OwnerCtx,
        fin: Finished<Spill<'_>>,
        doc: Option<(NewDocument, bool, DocumentId)>,
        audit: Option<&Draft>,
        by: By<'_>,
    ) -> Result<(Stored, Option<(Document, bool)>), Error> {
        // The content was encrypted without the lock (a long upload must not hold up an
        // erasure); its key is wrapped only here, under the lock, with the owner's current keys:
        // after an erasure that is a fresh owner, and the upload lands there (SPEC.md §17).
        let (owner_guard, o) = self.owner_for_change(&o.id, true)?;
        let o = &*o.ok_or(Error::NotFound("owner"))?;
        let digest = fin.digest();
        let size = fin.size();
        let mut ops = Vec::with_capacity(6);
        if let Some((new, true, _)) = &doc {
            // Before anything is stored: a bad signature leaves nothing behind.
            ops.push(self.verify_issuer(&o.id, size, new)?);
        }
        let name = o.blob(&digest);
        let key = Self::content_key(o, &name);
        let guard = self.stripe(&name);
        let prior = match by {
            By::Agency(a) => self.supply_of(o, &digest, a)?,
            By::Owner => None,
        };
        let supply = match by {
            By::Agency(a) => {
                let (op, delta) = self.supply_op(o, &digest, size, a, doc.is_some(), prior.as_ref());
                if delta > 0 {
                    self.check_pending_room(a, size)?;
                }
                Some((a, op, delta))
            }
            By::Owner => None,
        };
        let mut owner_takes = false;
        let (mut rec, created) = match self.get_sealed::<ContentRecord>(&o.keys, &key)? {
            // Stored meanwhile by a concurrent put (or, for an agency, held already): the new
            // blob is dropped (and deleted).
            Some(mut rec) => {
                if supply.is_some() {
                    // The same work as a new blob: header, the blob sync, then discard.
                    if let Spill::File(unused) = fin.write_header(&o.keys.blob_wrap, &o.binding(&digest))? {
                        drop(unused);
                        self.blobs.sync()?;
                    }
                }
                owner_takes = matches!(by, By::Owner) && rec.agency_only;
                rec.agency_only &= !owner_takes;
                (rec, false)
            }
            None => {
                let inline = match fin.write_header(&o.keys.blob_wrap, &o.binding(&digest))? {
                    // Small: the blob goes into the same atomic batch as its record.
                    Spill::Mem { buf, .. } => {
                        ops.push(Op::Put(inline_key(&name), buf.into_inner()));
                        true
                    }
                    Spill::File(pending) => {
                        self.fail.check()?;
                        pending.commit(&name).map_err(|e| match e {
                            // The store could not take the blob (object storage unreachable,
                            // refused): nothing points at it, so the request fails and the vault
                            // goes on; a failed local write still stops writes (SPEC.md §8).
                            e @ crate::storage::StoreError::Unavailable(_) => Error::Store(e),
                            e => self.fail.trip("writing a blob", e),
                        })?;
                        // The blob must be durable before the record that points at it can be.
                        let blob_ticket = self.blob_commit.written();
                        self.blob_commit
                            .wait_durable(blob_ticket, || self.blobs.sync())
                            .map_err(|e| self.fail.trip("syncing the blob store", e))?;
                        false
                    }
                };
                let agency_only = supply.is_some();
                (ContentRecord { digest, size, refs: 0, stored_at: Timestamp::now(), inline, agency_only }, true)
            }
        };
        // An agency is told "created" unless it had itself supplied these bytes before.
        let stored = Stored { digest, size, created: created || (supply.is_some() && prior.is_none()) };
        let (agency, delta) = match supply {
            Some((a, op, delta)) => {
                ops.push(op);
                (Some(a), delta)
            }
            None => (None, 0),
        };
        let done = |ticket: u64| -> Result<(), Error> {
            if let Some(a) = agency {
                self.apply_pending_delta(a, size, delta);
            }
            self.durable(ticket)
        };
        if doc.is_none() && !created {
            if agency.is_none() && !owner_takes {
                drop(guard);
                drop(owner_guard);
                return Ok((self.held_answer(digest, size, audit)?, None));
            }
            ops.push(Op::Put(key.clone(), seal_record(&o.keys, &key, &rec)));
            let ticket = self.apply_opt(ops, audit)?;
            drop(guard);
            drop(owner_guard);
            done(ticket)?;
            return Ok((stored, None));
        }
        // Stored meanwhile by a concurrent put, possibly the same deposit: no duplicate.
        if let (false, Some((new, _, _))) = (created, &doc) {
            if let Some(existing) = self.existing_deposit(o, new)? {
                let mut d = audit.cloned();
                if let Some(d) = d.as_mut() {
                    d.document = Some(existing.id);
                }
                ops.retain(|op| !matches!(op, Op::Put(k, _) if k.first() == Some(&prefix::USED_KEY)));
                let ticket = self.apply_opt(ops, d.as_ref())?;
                drop(guard);
                drop(owner_guard);
                done(ticket)?;
                return Ok((stored, Some((existing, false))));
            }
        }
        let document = doc
            .map(|plan| self.document_ops(o, &mut rec, plan, Timestamp::now(), &mut ops).map(|d| (d, true)))
            .transpose()?;
        ops.push(Op::Put(key.clone(), seal_record(&o.keys, &key, &rec)));
        let ticket = self.apply_opt(ops, audit)?;
        drop(guard);
        drop(owner_guard);
        done(ticket)?;
        Ok((stored, document))
    }

    /// A new document about `rec`'s content: counts the reference and adds the record and
    /// index entry to `ops` (the caller adds the updated content record).
    fn document_ops(
        &self,
        o: &OwnerCtx,
        rec: &mut ContentRecord,
        (new, verified, id): (NewDocument, bool, DocumentId),
        now: Timestamp,
        ops: &mut Vec<Op>,
    ) -> Result<Document, Error> {
        let doc = Document {
            id,
            owner: o.id.clone(),
            size: rec.size,
            deposited_at: now,
            verified,
            revocation: None,
            meta: new,
        };
        rec.refs += 1;
        let dkey = layout::document_key(&o.op, doc.id.as_bytes());
        let tkey = layout::type_index_key(&o.op, &o.keys.type_tag(&doc.meta.doc_type), doc.id.as_bytes());
        ops.push(Op::Put(dkey.clone(), seal_record(&o.keys, &dkey, &doc)));
        ops.push(Op::Put(tkey.clone(), seal_record(&o.keys, &tkey, &())));
        let ikey = deposit_key(o, &doc.meta);
        ops.push(Op::Put(ikey.clone(), seal_record(&o.keys, &ikey, &doc.id)));
        // The issuer's `document.deposited` event, in the same batch (signed documents only).
        ops.extend(self.document_event_ops(&doc, crate::engine::events::EventType::DocumentDeposited, now)?);
        Ok(doc)
    }

    /// Stores a content and records a document about it in one step: one durable wait instead
    /// of two. `new.digest` is the digest the content must have ([`Error::DigestMismatch`]
    /// otherwise, leaving nothing behind). Held content is only hashed. The document is
    /// unverified; see [`Vault::put_signed_document`].
    pub fn put_document(
        &self,
        owner: &OwnerId,
        source: impl Read,
        new: NewDocument,
    ) -> Result<(Stored, Document), Error> {
        let (stored, doc, _) =
            self.put_document_with(owner, source, new, false, DocumentId::random(), None, By::Owner)?;
        Ok((stored, doc))
    }

    /// [`Vault::put_document`] for an issuer-signed document: the signature is checked against
    /// the agency registry (a key of the issuer valid at `issued_at`) before anything is stored,
    /// and the document is recorded as verified.
    pub fn put_signed_document(
        &self,
        owner: &OwnerId,
        source: impl Read,
        new: NewDocument,
    ) -> Result<(Stored, Document), Error> {
        let (stored, doc, _) =
            self.put_document_with(owner, source, new, true, DocumentId::random(), None, By::Owner)?;
        Ok((stored, doc))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn put_document_with(
        &self,
        owner: &OwnerId,
        mut source: impl Read,
        new: NewDocument,
        verify: bool,
        id: DocumentId,
        audit: Option<&Draft>,
        by: By<'_>,
    ) -> Result<(Stored, Document, bool), Error> {
        new.validate()?;
        let o = self.owner_or_create(owner)?;
        let want = new.digest;
        // An agency's bytes are always encrypted (held or not), so timing tells nothing.
        if matches!(by, By::Owner) && self.held(&o, &want)? {
            let (actual, size) = hash_source(&mut source)?;
            if actual != want {
                return Err(Error::DigestMismatch { expected: want, actual });
            }
            let (doc, created) = self.deposit_inner(&o, new, verify, id, Timestamp::now(), audit, by)?;
            return Ok((Stored { digest: want, size, created: false }, doc, created));
        }
        let fin = self.encrypt(&o, source, Some(want))?;
        let (stored, doc) = self.commit_blob(&o, fin, Some((new, verify, id)), audit, by)?;
        let (doc, created) = doc.ok_or_else(|| Error::Conflict("document was not recorded".into()))?;
        Ok((stored, doc, created))
    }

    /// Records a document about a content the owner already holds ([`Error::Conflict`] if
    /// not). The document is unverified (see [`Vault::deposit_signed`]). Returns once the record
    /// is durable.
    pub fn deposit(&self, owner: &OwnerId, new: NewDocument) -> Result<Document, Error> {
        let o = self.owner(owner, false)?.ok_or_else(|| not_held(&new.digest))?;
        Ok(self.deposit_inner(&o, new, false, DocumentId::random(), Timestamp::now(), None, By::Owner)?.0)
    }

    /// [`Vault::deposit`] of an issuer-signed document: the signature must verify under a key
    /// of the issuer valid at `issued_at`; the document is recorded as verified.
    pub fn deposit_signed(&self, owner: &OwnerId, new: NewDocument) -> Result<Document, Error> {
        let o = self.owner(owner, false)?.ok_or_else(|| not_held(&new.digest))?;
        Ok(self.deposit_inner(&o, new, true, DocumentId::random(), Timestamp::now(), None, By::Owner)?.0)
    }

    /// Records a document; returns it and whether it is new. A deposit identical in owner,
    /// digest, type, reference and issuer to a live, unrevoked document returns that document
    /// instead (`false`): re-running a bulk deposit creates no duplicates (SPEC.md §8).
    ///
    /// An agency deposits only about bytes it supplied itself for this owner (its supply
    /// record): otherwise the answer is the same `conflict` as for content not held at all, and
    /// it comes before the signature is looked at, so nothing tells the two apart.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn deposit_inner(
        &self,
        o: &OwnerCtx,
        new: NewDocument,
        verify: bool,
        id: DocumentId,
        now: Timestamp,
        audit: Option<&Draft>,
        by: By<'_>,
    ) -> Result<(Document, bool), Error> {
        new.validate()?;
        // Under the owner's change lock with its current keys: an erasure since `o` was
        // resolved took the content with it.
        let (owner_guard, o) = self.owner_for_change(&o.id, false)?;
        let o = &*o.ok_or_else(|| not_held(&new.digest))?;
        let name = o.blob(&new.digest);
        let ckey = Self::content_key(o, &name);
        // The stripe serialises deposits of one content, so two identical deposits racing each
        // other still make one document.
        let guard = self.stripe(&name);
        let mut rec: ContentRecord = self.get_sealed(&o.keys, &ckey)?.ok_or_else(|| not_held(&new.digest))?;
        let mut ops = Vec::with_capacity(7);
        let mut used = None;
        if let By::Agency(a) = by {
            let supply = self.supply_of(o, &new.digest, a)?.ok_or_else(|| not_held(&new.digest))?;
            if supply.pending() {
                let mut s = supply.clone();
                s.used = true;
                let skey = crate::engine::supply::supply_key(o, &new.digest, a);
                used = Some((a, supply.size, Op::Put(skey.clone(), seal_record(&o.keys, &skey, &s))));
            }
        }
        if verify {
            ops.push(self.verify_issuer(&o.id, rec.size, &new)?);
        }
        if let Some(doc) = self.existing_deposit(o, &new)? {
            let ticket = self.audit_repeat(&doc, audit)?;
            drop(guard);
            drop(owner_guard);
            self.durable(ticket)?;
            return Ok((doc, false));
        }
        let doc = self.document_ops(o, &mut rec, (new, verify, id), now, &mut ops)?;
        ops.push(Op::Put(ckey.clone(), seal_record(&o.keys, &ckey, &rec)));
        let used = used.map(|(a, size, op)| {
            ops.push(op);
            (a, size)
        });
        let ticket = self.apply_opt(ops, audit)?;
        drop(guard);
        drop(owner_guard);
        if let Some((a, size)) = used {
            self.count_pending(a, size, false);
        }
        self.durable(ticket)?;
        Ok((doc, true))
    }

    /// The live, unrevoked document a deposit repeats, if any (call under the content's
    /// stripe lock).
    fn existing_deposit(&self, o: &OwnerCtx, new: &NewDocument) -> Result<Option<Document>, Error> {
        let Some(existing) = self.get_sealed::<DocumentId>(&o.keys, &deposit_key(o, new))? else {
            return Ok(None);
        };
        match self.document_of(o, &existing) {
            Ok(doc) if doc.revocation.is_none() => Ok(Some(doc)),
            Ok(_) | Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records the audit entry of a repeated deposit (naming the document it returns).
    fn audit_repeat(&self, doc: &Document, audit: Option<&Draft>) -> Result<u64, Error> {
        let mut d = audit.cloned();
        if let Some(d) = d.as_mut() {
            d.document = Some(doc.id);
        }
        self.apply_opt(Vec::new(), d.as_ref())
    }

    /// One document of an owner.
    pub fn document(&self, owner: &OwnerId, id: &DocumentId) -> Result<Document, Error> {
        let o = self.owner(owner, false)?.ok_or(Error::NotFound("document"))?;
        self.document_of(&o, id)
    }

    pub(crate) fn document_of(&self, o: &OwnerCtx, id: &DocumentId) -> Result<Document, Error> {
        let key = layout::document_key(&o.op, id.as_bytes());
        let doc: Document = self.get_sealed(&o.keys, &key)?.ok_or(Error::NotFound("document"))?;
        if doc.owner != o.id || doc.id != *id {
            return Err(corrupt(&key));
        }
        Ok(doc)
    }

    /// The owner's documents, optionally of one type, oldest deposit first.
    pub fn documents(&self, owner: &OwnerId, doc_type: Option<&DocType>) -> Result<Vec<Document>, Error> {
        let Some(o) = self.owner(owner, false)? else {
            return Ok(Vec::new());
        };
        let mut docs = Vec::new();
        match doc_type {
            None => {
                let epoch = self.records_epoch();
                for item in self.meta.scan(&layout::documents_of(&o.op)) {
                    let (k, v) = item?;
                    let doc: Document = self.open_cached(epoch, &o.keys, &k, &v).ok_or_else(|| corrupt(&k))?;
                    if doc.owner != o.id {
                        return Err(corrupt(&k));
                    }
                    docs.push(doc);
                }
            }
            Some(t) => {
                for item in self.meta.scan(&layout::type_index_of(&o.op, &o.keys.type_tag(t))) {
                    let (k, _) = item?;
                    let id = DocumentId::from_bytes(k[33..].try_into().map_err(|_| corrupt(&k))?);
                    let doc = self.document_of(&o, &id)?;
                    if &doc.meta.doc_type == t {
                        docs.push(doc);
                    }
                }
            }
        }
        docs.sort_by_key(|d| (d.deposited_at, d.id));
        Ok(docs)
    }

    /// Deletes a document; deleting the last document of a content deletes the content.
    pub fn delete_document(&self, owner: &OwnerId, id: &DocumentId) -> Result<(), Error> {
        let o = self.owner(owner, false)?.ok_or(Error::NotFound("document"))?;
        self.delete_inner(&o, id, None)
    }

    pub(crate) fn delete_inner(&self, o: &OwnerCtx, id: &DocumentId, audit: Option<&Draft>) -> Result<(), Error> {
        // Held until the blob is gone: an erasure cannot interleave (SPEC.md §17).
        let (_owner_guard, o) = self.owner_for_change(&o.id, false)?;
        let o = &*o.ok_or(Error::NotFound("document"))?;
        let doc = self.document_of(o, id)?;
        let name = o.blob(&doc.meta.digest);
        let ckey = Self::content_key(o, &name);
        // Held until the blob is gone, so a concurrent put of the same content cannot have its
        // fresh blob removed by this delete.
        let _guard = self.stripe(&name);
        // Re-read under the lock: a concurrent delete may have won.
        self.document_of(o, id)?;
        let mut rec: ContentRecord = self.get_sealed(&o.keys, &ckey)?.ok_or_else(|| corrupt(&ckey))?;
        rec.refs = rec.refs.saturating_sub(1);
        let dkey = layout::document_key(&o.op, id.as_bytes());
        let tkey = layout::type_index_key(&o.op, &o.keys.type_tag(&doc.meta.doc_type), id.as_bytes());
        let mut last = rec.refs == 0;
        // An agency's upload still waiting for its document keeps the content (the sweep
        // removes it later); otherwise the supply records go with the content.
        let mut dropped_supplies = Vec::new();
        if last {
            let now = Timestamp::now();
            let mut supplies = Vec::new();
            for item in self.meta.scan(&crate::engine::supply::supply_prefix(o, &doc.meta.digest)) {
                let (k, v) = item?;
                supplies.push((k.clone(), open_record::<crate::engine::supply::Supply>(&o.keys, &k, &v)));
            }
            let waiting = supplies.iter().any(|(_, s)| {
                s.as_ref().is_some_and(|s| {
                    s.pending() && now < s.supplied_at.plus_seconds(crate::engine::supply::PENDING_LIFETIME_SECS)
                })
            });
            if waiting {
                last = false;
                rec.agency_only = true;
            } else {
                dropped_supplies = supplies;
            }
        }
        let content_op =
            if last { Op::Delete(ckey.clone()) } else { Op::Put(ckey.clone(), seal_record(&o.keys, &ckey, &rec)) };
        let mut ops = vec![Op::Delete(dkey), Op::Delete(tkey), content_op];
        if last && rec.inline {
            ops.push(Op::Delete(inline_key(&name)));
        }
        for (k, _) in &dropped_supplies {
            ops.push(Op::Delete(k.clone()));
        }
        let ikey = deposit_key(o, &doc.meta);
        if self.get_sealed::<DocumentId>(&o.keys, &ikey)? == Some(*id) {
            ops.push(Op::Delete(ikey));
        }
        let ticket = self.apply_opt(ops, audit)?;
        for s in dropped_supplies.into_iter().filter_map(|(_, s)| s).filter(crate::engine::supply::Supply::pending) {
            self.count_pending(&s.agency, s.size, false);
        }
        self.durable(ticket)?;
        if last && !rec.inline {
            self.blobs.remove(&name)?;
        }
        Ok(())
    }

    /// Marks a document revoked (by its issuer; authorisation is the caller's business).
    pub fn revoke_document(
        &self,
        owner: &OwnerId,
        id: &DocumentId,
        reason: &str,
        at: Timestamp,
    ) -> Result<Document, Error> {
        let o = self.owner(owner, false)?.ok_or(Error::NotFound("document"))?;
        self.revoke_inner(&o, id, reason, at, None)
    }

    pub(crate) fn revoke_inner(
        &self,
        o: &OwnerCtx,
        id: &DocumentId,
        reason: &str,
        at: Timestamp,
        audit: Option<&Draft>,
    ) -> Result<Document, Error> {
        crate::engine::document::check_text("reason", reason, crate::engine::document::MAX_TEXT)?;
        let (owner_guard, o) = self.owner_for_change(&o.id, false)?;
        let o = &*o.ok_or(Error::NotFound("document"))?;
        let key = layout::document_key(&o.op, id.as_bytes());
        let digest = self.document_of(o, id)?.meta.digest;
        // The same stripe as delete_document, so a revocation cannot resurrect a deleted record.
        let guard = self.stripe(&o.blob(&digest));
        let mut doc = self.document_of(o, id)?;
        if doc.revocation.is_some() {
            return Err(Error::Conflict("the document is already revoked".into()));
        }
        doc.revocation = Some(Revocation { at, reason: reason.to_owned() });
        let mut ops = vec![Op::Put(key.clone(), seal_record(&o.keys, &key, &doc))];
        // The issuer's `document.revoked` event, in the same batch (signed documents only).
        ops.extend(self.document_event_ops(
            &doc,
            crate::engine::events::EventType::DocumentRevoked,
            Timestamp::now(),
        )?);
        let ticket = self.apply_opt(ops, audit)?;
        drop(guard);
        drop(owner_guard);
        self.durable(ticket)?;
        Ok(doc)
    }

    /// Opens a held content for reading.
    pub fn open_content(&self, owner: &OwnerId, digest: &Digest) -> Result<ContentReader, Error> {
        let o = self.owner(owner, false)?.ok_or(Error::NotFound("content"))?;
        self.open_content_of(&o, digest)
    }

    pub(crate) fn open_content_of(&self, o: &OwnerCtx, digest: &Digest) -> Result<ContentReader, Error> {
        let name = o.blob(digest);
        let ckey = Self::content_key(o, &name);
        let rec: ContentRecord = self.get_sealed(&o.keys, &ckey)?.ok_or(Error::NotFound("content"))?;
        if rec.digest != *digest {
            return Err(corrupt(&ckey));
        }
        let file: Box<dyn BlobRead> = if rec.inline {
            let ikey = inline_key(&name);
            Box::new(io::Cursor::new(self.meta.get(&ikey)?.ok_or_else(|| corrupt(&ikey))?))
        } else if in_nonblocking() {
            // A blob file's header is read from disk: not in a non-blocking section.
            return Err(Error::WouldBlock);
        } else {
            self.blobs
                .open(&name)?
                .ok_or_else(|| Error::Corrupt(format!("blob {} is missing", self.blobs.describe(&name))))?
        };
        let reader = BlobReader::open(file, &o.keys.blob_wrap, &o.binding(digest), *digest)?;
        if reader.size() != rec.size {
            return Err(Error::Decrypt(crate::crypto::stream::DecryptError));
        }
        Ok(reader)
    }

    /// Opens a document's content for reading.
    pub fn open_document_content(&self, owner: &OwnerId, id: &DocumentId) -> Result<(Document, ContentReader), Error> {
        let o = self.owner(owner, false)?.ok_or(Error::NotFound("document"))?;
        let doc = self.document_of(&o, id)?;
        let reader = self.open_content_of(&o, &doc.meta.digest)?;
        Ok((doc, reader))
    }

    /// Reads a whole content into memory (verified against its digest).
    pub fn read_content(&self, owner: &OwnerId, digest: &Digest) -> Result<Vec<u8>, Error> {
        let mut r = self.open_content(owner, digest)?;
        let mut out = Vec::with_capacity(usize::try_from(r.size()).unwrap_or(0).min(1 << 30));
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Makes everything durable and marks the vault closed cleanly.
    pub fn close(mut self) -> Result<(), Error> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<(), Error> {
        // Stopped: no checkpoint, and the open marker stays, so the next open replays the
        // journal and runs recovery.
        self.fail.check()?;
        self.meta.close()?;
        if let Some(m) = self.open_marker.take() {
            fs::remove_file(&m).map_err(|source| crate::storage::StoreError::Io {
                what: format!("removing {}", m.display()),
                source,
            })?;
        }
        Ok(())
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        // Errors here leave the open marker in place, so the next open runs recovery.
        let _ = self.close_inner();
    }
}

fn hash_source(source: &mut impl Read) -> Result<(Digest, u64), Error> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut size = 0u64;
    loop {
        match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Source(e)),
        }
    }
    Ok((hasher.finalize().into(), size))
}

/// The deposit-index key of a document: a keyed tag of owner, digest, type, reference and
/// issuer (SPEC.md §8), so the index reveals none of them.
fn deposit_key(o: &OwnerCtx, m: &NewDocument) -> Vec<u8> {
    let issuer = m.issuer.as_ref().map_or("", |a| a.as_str());
    let reference = m.reference.as_deref().unwrap_or("");
    let parts: [&[u8]; 4] =
        [m.digest.as_bytes(), m.doc_type.as_str().as_bytes(), reference.as_bytes(), issuer.as_bytes()];
    layout::deposit_index_key(&o.op, &o.keys.deposit_tag(&parts))
}

pub(crate) fn seal_record<T: Serialize>(keys: &OwnerKeys, key: &[u8], value: &T) -> Vec<u8> {
    // Serialising these plain data types to JSON cannot fail (no maps with non-string keys,
    // no failing Serialize impls).
    let plain = Zeroizing::new(serde_json::to_vec(value).unwrap_or_default());
    seal::seal(&keys.records, &aad(key), &plain)
}

pub(crate) fn open_record<T: for<'de> Deserialize<'de>>(keys: &OwnerKeys, key: &[u8], sealed: &[u8]) -> Option<T> {
    let plain = seal::open(&keys.records, &aad(key), sealed).ok()?;
    serde_json::from_slice(&plain).ok()
}
