//! The two narrow storage interfaces the vault core is written against, and their
//! implementations: the embedded ones, sled for metadata ([`sled`]) and a directory of
//! write-once files for blobs ([`files`]), and one in memory for tests ([`mem_store`]).
//!
//! A scale-out backend implements these two traits: `pg_store::PgMeta` (cargo feature
//! `postgres`) keeps the metadata in PostgreSQL, `s3_store::S3Blobs` (feature `s3`) the blobs in
//! object storage. A metadata store that several processes share says so
//! ([`MetaStore::shared`]) and provides what one process otherwise keeps in memory: the audit
//! sequencer's lock ([`MetaStore::sequenced`]), owners' change locks ([`MetaStore::lock`]) and
//! the background lease ([`MetaStore::background_lease`]) (SPEC.md §9a "Several instances").
//! The core never holds plaintext in either: values reaching a [`MetaStore`] are sealed, blobs
//! reaching a [`BlobStore`] are encrypted.

use std::cell::Cell;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

pub mod commit;
pub mod failstop;
pub mod files;
#[cfg(feature = "embedded")]
pub mod journal;
pub(crate) mod layout;
pub mod mem_store;
#[cfg(feature = "embedded")]
pub mod pack;
#[cfg(feature = "postgres")]
pub mod pg_store;
#[cfg(feature = "s3")]
pub mod s3_store;
#[cfg(feature = "embedded")]
pub mod sled;

/// A failure of a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An operating-system I/O error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, and where.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// The metadata database reported an error.
    #[error("metadata store: {0}")]
    Meta(String),
    /// The vault was created over another blob store than the one it is being opened with.
    #[error(
        "this vault's blobs are in {recorded}, but it is being opened with {given}: nothing was opened \
         (give the blob store it was created with, SPEC.md §9b)"
    )]
    WrongBlobStore {
        /// The store recorded at creation.
        recorded: String,
        /// The store given now.
        given: String,
    },
    /// The blob store belongs to another vault (its claim marker names another vault, §9b).
    #[error(
        "the blob store {0} is claimed by another vault: nothing was opened (give each vault its own bucket prefix)"
    )]
    ClaimedByAnother(String),
    /// A remote store could not be reached or refused the request (object storage down, a
    /// throttle, a credential refused); nothing was changed by the failed call. The request
    /// fails; the vault goes on (unlike [`StoreError::Stopped`]).
    #[error("the blob store is unavailable: {0}")]
    Unavailable(String),
    /// Another process holds the data folder.
    #[error("the data folder {0} is in use by another process")]
    Locked(String),
    /// The read would block and the caller asked not to (the vault's non-blocking section on
    /// an async executor's thread); it becomes [`crate::Error::WouldBlock`].
    #[error("the metadata read would block")]
    WouldBlock,
    /// A file of the data folder is damaged, or the database is behind (or ahead of) the state
    /// its anchor and journal recorded. Nothing was changed (SPEC.md §10).
    #[error(
        "{file}{} is damaged: {what}. The vault was not opened and nothing was changed. Stop, copy the data \
         folder aside, and restore it from a backup; SPEC.md §10 (\"When the vault refuses to open\") \
         explains the other choices",
        offset.map(|o| format!(" (at byte {o})")).unwrap_or_default()
    )]
    Damaged {
        /// The damaged file or database.
        file: String,
        /// Where in it, if known.
        offset: Option<u64>,
        /// What is wrong.
        what: String,
    },
    /// An earlier write or sync failed, so this store refuses writes until it is reopened
    /// (fail-stop, SPEC.md §8).
    #[error("writes are refused since an earlier storage failure ({0}); reopen to run recovery")]
    Stopped(String),
}

fn io_err(what: impl fmt::Display, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let what = format!("{what} {}", path.display());
    move |source| StoreError::Io { what, source }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing directory", dir))
}

thread_local! {
    /// Set while this thread runs a [`nonblocking`] section.
    static NONBLOCKING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` on this thread with waits refused: where the vault would wait for an owner's change
/// lock held by an erasure, or read a blob file, it returns [`crate::Error::WouldBlock`]
/// instead. Used to decide an audited read on an async executor's thread
/// (`Vault::start_content_as`); the metadata store's own reads and its short-held locks are not
/// counted as waits.
pub(crate) fn nonblocking<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            NONBLOCKING.with(|n| n.set(self.0));
        }
    }
    let _reset = Reset(NONBLOCKING.with(|n| n.replace(true)));
    f()
}

/// Whether this thread runs a [`nonblocking`] section (a backend whose reads block on the
/// network refuses them there with [`StoreError::WouldBlock`]).
pub(crate) fn in_nonblocking() -> bool {
    NONBLOCKING.with(Cell::get)
}

/// An iterator over key-value pairs of a metadata scan.
pub type ScanIter<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + 'a>;

/// One change of an atomic batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Set a key to a value.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Vec<u8>),
}

/// An ordered key-value store for (sealed) metadata.
pub trait MetaStore: Send + Sync + fmt::Debug {
    /// The value of a key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every key and value whose key starts with `prefix`, in key order.
    fn scan(&self, prefix: &[u8]) -> ScanIter<'_>;
    /// Like [`MetaStore::scan`], from the first key at or after `start` (a key with `prefix`):
    /// a range scan. This default filters a prefix scan; a backend that can seek should.
    fn scan_from(&self, prefix: &[u8], start: &[u8]) -> ScanIter<'_> {
        let start = start.to_vec();
        Box::new(self.scan(prefix).filter(move |r| r.as_ref().map_or(true, |(k, _)| *k >= start)))
    }
    /// Applies all changes atomically (all or none survive a crash). Not yet durable.
    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError>;
    /// Sets `key` to `new` if its value is `old` (None = absent); true if it was set.
    fn compare_and_swap(&self, key: &[u8], old: Option<&[u8]>, new: Option<Vec<u8>>) -> Result<bool, StoreError>;
    /// Makes every change applied before this call durable.
    fn sync(&self) -> Result<(), StoreError>;
    /// Reclaims space of deleted values where the store keeps dead space (the embedded store's
    /// packs, SPEC.md §8 "Packs"); returns how many values it moved. Nothing by default.
    fn compact(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    /// Makes everything durable before the store is closed (a clean shutdown).
    fn close(&self) -> Result<(), StoreError> {
        self.sync()
    }
    /// The largest audit checkpoint ever signed (size, root), as kept outside the database;
    /// None if the store keeps none.
    fn signed_floor(&self) -> Option<(u64, [u8; 32])> {
        None
    }
    /// Durably records a checkpoint about to be signed, if larger than the floor.
    fn raise_signed_floor(&self, _size: u64, _root: [u8; 32]) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether several processes may use this store at once (PostgreSQL, SPEC.md §9a "Several
    /// instances"). The vault then takes its owners' change locks in the store as well
    /// ([`MetaStore::lock`]), reads the audit log's head inside each batch
    /// ([`MetaStore::sequenced`]) and keeps no record in memory that it does not check against
    /// the store's bytes first.
    fn shared(&self) -> bool {
        false
    }
    /// Runs `build` while holding the store's sequencer lock, which excludes every other
    /// sequenced call of every process sharing the store, and applies the changes it returns
    /// atomically with that lock still held; `build` reads through the reader it is given
    /// (which sees every earlier sequenced call's changes). An error from `build` applies
    /// nothing. `build` may be run more than once (a store may retry a transaction the
    /// database rolled back whole); each run must return the whole change for what it read. This default, for a store one process owns, runs `build` on the store itself
    /// (the caller's own sequencer is the only one) and applies its changes as
    /// [`MetaStore::apply`] does.
    fn sequenced(&self, build: &mut SequencedBuild<'_>) -> Result<(), StoreError> {
        let ops = build(&ReadThrough(self))?;
        self.apply(ops)
    }
    /// Takes the lock `name` in the store, excluding every process sharing it; held until the
    /// guard drops. None from a store one process owns (its in-process locks suffice).
    fn lock(&self, _name: LockName<'_>) -> Result<Option<RemoteLock>, StoreError> {
        Ok(None)
    }
    /// Whether this process holds (or has just taken) the background lease: of the processes
    /// sharing a store, one runs the periodic work (expiries, sweeps, webhook delivery). A
    /// holder that dies loses it, and the next call elsewhere takes it. Always true for a store
    /// one process owns.
    fn background_lease(&self) -> Result<bool, StoreError> {
        Ok(true)
    }
}

/// What a [`MetaStore::sequenced`] call runs under the sequencer lock: reads, then the changes.
pub type SequencedBuild<'a> = dyn FnMut(&dyn MetaRead) -> Result<Vec<Op>, StoreError> + Send + 'a;

/// Reads of a [`MetaStore::sequenced`] call.
pub trait MetaRead {
    /// The value of a key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

/// Reads straight from a store.
struct ReadThrough<'a, S: ?Sized>(&'a S);

impl<S: MetaStore + ?Sized> MetaRead for ReadThrough<'_, S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(key)
    }
}

/// The name of a lock in a shared store ([`MetaStore::lock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockName<'a> {
    /// An owner's change lock, by the owner's storage reference.
    Owner(&'a [u8; 16]),
    /// A lock of the vault's own (the agency registry, the event outbox).
    Named(&'static str),
}

/// A lock held in a shared store ([`MetaStore::lock`]), released when dropped.
pub struct RemoteLock(pub Box<dyn Send>);

impl fmt::Debug for RemoteLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RemoteLock")
    }
}

/// Where a blob lives: the owner's pseudonymous reference and the content's keyed name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobName {
    /// The owner's reference (keyed hash of the owner id).
    pub owner: [u8; 16],
    /// The content's storage name (keyed hash of the digest under the owner's name key).
    pub name: [u8; 32],
}

impl fmt::Debug for BlobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", hex::encode(self.owner), hex::encode(self.name))
    }
}

/// A blob being written: write it, then [`NewBlob::commit`]; dropping it discards it.
pub trait NewBlob: Write + Seek + Send {
    /// Puts the complete blob in place under `name` (replacing any blob of that name). It is
    /// durable once a [`BlobStore::sync`] that starts after this call returns.
    fn commit(self: Box<Self>, name: &BlobName) -> Result<(), StoreError>;
}

/// A stored blob opened for reading.
pub trait BlobRead: Read + Seek + Send {}
impl<T: Read + Seek + Send> BlobRead for T {}

/// Write-once storage of encrypted blobs.
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Starts a new blob of `owner`.
    fn create(&self, owner: &[u8; 16]) -> Result<Box<dyn NewBlob>, StoreError>;
    /// Makes every blob committed before this call durable, contents and names.
    fn sync(&self) -> Result<(), StoreError>;
    /// Opens a blob; `Ok(None)` if there is none of that name.
    fn open(&self, name: &BlobName) -> Result<Option<Box<dyn BlobRead>>, StoreError>;
    /// The length of a blob; `Ok(None)` if there is none of that name.
    fn len(&self, name: &BlobName) -> Result<Option<u64>, StoreError>;
    /// Removes a blob (absent is fine).
    fn remove(&self, name: &BlobName) -> Result<(), StoreError>;
    /// Removes every blob of an owner (erasure); returns how many there were.
    fn remove_owner(&self, owner: &[u8; 16]) -> Result<usize, StoreError>;
    /// Every stored blob, plus what is in the folder that is not a blob.
    fn list(&self) -> Result<BlobListing, StoreError>;
    /// Discards blobs that were started and never committed (after a crash; not while blobs
    /// are being written).
    fn discard_unfinished(&self) -> Result<usize, StoreError>;
    /// A place to name in reports.
    fn describe(&self, name: &BlobName) -> String;
    /// Which store this is, recorded in the metadata at a vault's creation (`"Mblob-store"`,
    /// SPEC.md §6) so that a vault is never opened over another store than its own: `"files"`
    /// for the embedded store (wherever its folder is), `"s3://bucket/prefix"` for object
    /// storage (whatever the endpoint).
    fn kind(&self) -> String;
    /// Claims the store for the vault `id` ([`StoreError::ClaimedByAnother`] if another vault
    /// did; with `create` false, only checks that no other vault did): a store that others
    /// could share (a bucket prefix) keeps a marker; a folder inside the data folder needs none.
    fn claim(&self, _id: &str, _create: bool) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether blobs that no record points at are found by age ([`BlobStore::written_before`],
    /// `Vault::collect_orphans`) rather than by listing every blob at an unclean open: true for
    /// a store that is large or shared while blobs are being written (object storage).
    fn orphans_by_age(&self) -> bool {
        false
    }
    /// The blobs last written before `unix_secs` (only for a store whose orphans are found by
    /// age; others return none).
    fn written_before(&self, _unix_secs: i64) -> Result<Vec<BlobName>, StoreError> {
        Ok(Vec::new())
    }
    /// Moves a blob that no record points at out of the blob folder, keeping it until an
    /// operator decides (SPEC.md §10); false if this store cannot (the blob stays in place).
    fn set_aside(&self, _name: &BlobName) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Where the blobs set aside so far are.
    fn set_aside_list(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
}

/// What [`BlobStore::list`] found.
#[derive(Debug, Default)]
pub struct BlobListing {
    /// Well-named blobs.
    pub blobs: Vec<BlobName>,
    /// Paths that do not belong in the blob folder.
    pub strays: Vec<String>,
    /// Blobs being written (or left unfinished by a crash).
    pub unfinished: Vec<PathBuf>,
}
