//! The two narrow storage interfaces the vault core is written against, and the embedded
//! implementations: sled for metadata, a directory of write-once files for blobs.
//!
//! A scale-out backend implements these two traits: `pg_store::PgMeta` (cargo feature
//! `postgres`) keeps the metadata in PostgreSQL, `s3_store::S3Blobs` (feature `s3`) the blobs in
//! object storage. A metadata store that several processes share says so
//! ([`MetaStore::shared`]) and provides what one process otherwise keeps in memory: the audit
//! sequencer's lock ([`MetaStore::sequenced`]), owners' change locks ([`MetaStore::lock`]) and
//! the background lease ([`MetaStore::background_lease`]) (SPEC.md §9a "Several instances").
//! The core never holds plaintext in either: values reaching a [`MetaStore`] are sealed, blobs
//! reaching a [`BlobStore`] are encrypted.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::storage::failstop::{Fault, Faults};

pub mod commit;
pub mod failstop;
#[cfg(feature = "embedded")]
pub mod journal;
pub mod mem_store;
#[cfg(feature = "postgres")]
pub mod pg_store;
#[cfg(feature = "s3")]
pub mod s3_store;

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

/// The embedded metadata store: one sled tree, made durable by a journal.
///
/// sled 0.34 flushes on its own only every 500 ms, and its `flush` stalls concurrent writers.
/// So every batch is first appended to a checksummed journal (`vault-journal` in the sled
/// folder) and then applied to sled, under one lock; [`MetaStore::sync`] is one `fdatasync` of
/// the journal. At open the journal is replayed into sled, sled is flushed and the journal
/// emptied; it is also emptied after a sled flush whenever it outgrows
/// [`crate::storage::journal::CHECKPOINT_BYTES`]. Every value is sealed besides, so corruption is
/// detected rather than served (SPEC.md §9).
#[cfg(feature = "embedded")]
pub struct SledMeta {
    db: sled::Db,
    dir: PathBuf,
    journal: std::sync::Mutex<crate::storage::journal::Journal>,
    /// Handle used to sync the journal without holding its lock.
    sync_file: File,
    replayed: usize,
    /// The anchor as last written (its state part is the last checkpoint's).
    anchor: std::sync::Mutex<Anchor>,
    /// The first failed journal write, sled apply or sync: every later write and sync is
    /// refused (fail-stop, SPEC.md §8).
    stopped: std::sync::OnceLock<String>,
    faults: Faults,
}

#[cfg(feature = "embedded")]
impl fmt::Debug for SledMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SledMeta")
    }
}

#[cfg(feature = "embedded")]
fn sled_err(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { .. } => StoreError::Damaged {
            file: "the sled database".into(),
            offset: None,
            what: format!("sled found damaged data ({e})"),
        },
        other => StoreError::Meta(other.to_string()),
    }
}

#[cfg(feature = "embedded")]
fn batch_of(ops: &[Op]) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for op in ops {
        match op {
            Op::Put(k, v) => batch.insert(k.as_slice(), v.as_slice()),
            Op::Delete(k) => batch.remove(k.as_slice()),
        }
    }
    batch
}

/// sled's segment size for new databases.
#[cfg(feature = "embedded")]
const SEGMENT_SIZE: usize = 8 << 20;

/// The name of the journal file inside the sled folder.
#[cfg(feature = "embedded")]
pub const JOURNAL_FILE: &str = "vault-journal";
/// The name of the anchor file inside the sled folder.
#[cfg(feature = "embedded")]
pub const ANCHOR_FILE: &str = "vault-anchor";

#[cfg(feature = "embedded")]
const ANCHOR_MAGIC: &[u8; 8] = b"VLTANCH1";
#[cfg(feature = "embedded")]
const ANCHOR_LEN: usize = 112;
#[cfg(feature = "embedded")]
const STATE_CONTEXT: &str = "vault 2026-12-02 metadata state digest v1";

/// What is kept outside the database to find it rolled back (SPEC.md §8, "The anchor"): the
/// store's state at the last checkpoint, and the largest audit checkpoint ever signed.
#[cfg(feature = "embedded")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Anchor {
    /// Change sequence, key count and state digest at the last checkpoint.
    pub state: crate::storage::journal::State,
    /// Size of the largest signed audit checkpoint.
    pub signed_size: u64,
    /// Its root.
    pub signed_root: [u8; 32],
}

#[cfg(feature = "embedded")]
impl Anchor {
    /// The file's bytes: magic, sequence, count, digest, signed size, signed root, and the first
    /// 16 bytes of BLAKE3 of all of these (integers big-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ANCHOR_LEN);
        out.extend_from_slice(ANCHOR_MAGIC);
        out.extend_from_slice(&self.state.seq.to_be_bytes());
        out.extend_from_slice(&self.state.count.to_be_bytes());
        out.extend_from_slice(&self.state.digest);
        out.extend_from_slice(&self.signed_size.to_be_bytes());
        out.extend_from_slice(&self.signed_root);
        let check = blake3::hash(&out);
        out.extend_from_slice(&check.as_bytes()[..16]);
        out
    }

    /// Parses the file's bytes; None if they are not an intact anchor.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != ANCHOR_LEN || &b[..8] != ANCHOR_MAGIC || blake3::hash(&b[..96]).as_bytes()[..16] != b[96..] {
            return None;
        }
        let u = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let arr = |i: usize| <[u8; 32]>::try_from(&b[i..i + 32]).unwrap_or_default();
        Some(Self {
            state: crate::storage::journal::State { seq: u(8), count: u(16), digest: arr(24) },
            signed_size: u(56),
            signed_root: arr(64),
        })
    }

    fn read(path: &Path) -> Result<Option<Self>, StoreError> {
        match fs::read(path) {
            Ok(b) => Self::decode(&b).map(Some).ok_or_else(|| StoreError::Damaged {
                file: path.display().to_string(),
                offset: None,
                what: "the anchor file fails its checksum".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", path)(e)),
        }
    }

    /// Replaces the file atomically: temp file, fsync, rename, fsync of the folder.
    fn write(&self, path: &Path) -> Result<(), StoreError> {
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(&self.encode()).and_then(|()| f.sync_all()).map_err(io_err("writing", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("renaming into", path))?;
        path.parent().map_or(Ok(()), sync_dir)
    }
}

/// The hash of one key and value in the state digest.
#[cfg(feature = "embedded")]
fn pair_hash(key: &[u8], value: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(STATE_CONTEXT);
    h.update(&(key.len() as u64).to_be_bytes());
    h.update(key);
    h.update(value);
    *h.finalize().as_bytes()
}

#[cfg(feature = "embedded")]
fn xor_into(d: &mut [u8; 32], h: &[u8; 32]) {
    for (a, b) in d.iter_mut().zip(h) {
        *a ^= b;
    }
}

/// Key count and state digest of the whole database (a full scan).
#[cfg(feature = "embedded")]
fn scan_state(db: &sled::Db) -> Result<(u64, [u8; 32]), StoreError> {
    let mut count = 0u64;
    let mut digest = [0u8; 32];
    for item in db.iter() {
        let (k, v) = item.map_err(sled_err)?;
        count += 1;
        xor_into(&mut digest, &pair_hash(&k, &v));
    }
    Ok((count, digest))
}

#[cfg(feature = "embedded")]
impl SledMeta {
    /// Opens (or creates) the database in `dir`, replaying its journal and checking the result
    /// against the anchor and the journal's recorded state ([`StoreError::Damaged`] if the
    /// journal is damaged or the database lost or altered changes).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // Durability is the journal's: sled is flushed at checkpoints only, never in the
        // background. 8 MiB segments keep inline blobs (up to 32 KiB) inside sled's pages
        // instead of one sled blob file per page; a database made with sled's default segment
        // size (before inline blobs) keeps it, as sled requires.
        let config = || sled::Config::new().path(dir).flush_every_ms(None);
        let is_locked = |e: &sled::Error| matches!(e, sled::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock || io.to_string().contains("lock"));
        let open = || match config().segment_size(SEGMENT_SIZE).open() {
            Err(sled::Error::Unsupported(_)) => config().open(),
            other => other,
        };
        // sled's own threads of a database just closed in this process let go of its file lock
        // a moment after the close returns (longer on a loaded machine): a reopen waits up to
        // 10 s for them before it reports the folder as in use.
        let held = |e: &sled::Error| matches!(e, sled::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock);
        let mut db = open();
        for _ in 0..1000 {
            match &db {
                Err(e) if held(e) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    db = open();
                }
                _ => break,
            }
        }
        let db = db.map_err(|e| match e {
            ref e if is_locked(e) => StoreError::Locked(dir.display().to_string()),
            sled::Error::Io(io) => io_err("opening the sled database in", dir)(io),
            other => StoreError::Damaged {
                file: format!("the sled database in {}", dir.display()),
                offset: None,
                what: format!("sled cannot open it ({other}); one of its files (conf, db, snap.*) is damaged"),
            },
        })?;
        let anchor_path = dir.join(ANCHOR_FILE);
        let anchor = Anchor::read(&anchor_path)?;
        let path = dir.join(JOURNAL_FILE);
        let (mut journal, replay) = crate::storage::journal::Journal::open(&path)?;
        let damaged = |what: String| StoreError::Damaged { file: path.display().to_string(), offset: None, what };
        // The state the database must be in after replay: the last record's, or the anchor's.
        let mut expected = anchor.map(|a| a.state);
        let mut prev: Option<u64> = None;
        for b in &replay.batches {
            let Some(st) = b.state else { continue };
            match (prev, anchor) {
                (Some(p), _) if st.seq != p + 1 => {
                    return Err(damaged(format!("record of change {} follows change {p}", st.seq)));
                }
                (None, Some(a)) if st.seq > a.state.seq + 1 => {
                    return Err(damaged(format!(
                        "the journal starts at change {} but the anchor is at change {}: changes in between are missing",
                        st.seq, a.state.seq
                    )));
                }
                _ => {}
            }
            prev = Some(st.seq);
            if expected.is_none_or(|e| st.seq >= e.seq) {
                expected = Some(st);
            }
        }
        if let (Some(p), Some(a)) = (prev, anchor) {
            if p < a.state.seq {
                return Err(damaged(format!(
                    "the journal ends at change {p} but the anchor recorded change {}: records are missing",
                    a.state.seq
                )));
            }
        }
        let replayed = replay.batches.len();
        for b in &replay.batches {
            db.apply_batch(batch_of(&b.ops)).map_err(sled_err)?;
        }
        let (count, digest) = scan_state(&db)?;
        if let Some(e) = expected {
            if (e.count, e.digest) != (count, digest) {
                return Err(StoreError::Damaged {
                    file: format!("the sled database in {}", dir.display()),
                    offset: None,
                    what: format!(
                        "it holds {count} records that differ from the state recorded at change {} ({} records) \
                         in {} and {}: it lost or altered acknowledged changes (a damaged or rolled-back \
                         database)",
                        e.seq,
                        e.count,
                        anchor_path.display(),
                        path.display()
                    ),
                });
            }
        }
        journal.state = crate::storage::journal::State { seq: expected.map_or(0, |e| e.seq), count, digest };
        let meta = Self {
            db,
            dir: dir.to_owned(),
            sync_file: journal.sync_handle().map_err(io_err("opening journal", &path))?,
            journal: std::sync::Mutex::new(journal),
            replayed,
            anchor: std::sync::Mutex::new(anchor.unwrap_or_default()),
            stopped: std::sync::OnceLock::new(),
            faults: Faults::default(),
        };
        if replayed > 0 || anchor.is_none() {
            meta.checkpoint()?;
        }
        Ok(meta)
    }

    /// Injects the failures armed in `faults` (tests of fail-stop).
    pub fn with_faults(mut self, faults: &Faults) -> Self {
        self.faults = faults.clone();
        self
    }

    /// Refuses writes once a write or sync failed.
    fn running(&self) -> Result<(), StoreError> {
        match self.stopped.get() {
            Some(reason) => Err(StoreError::Stopped(reason.clone())),
            None => Ok(()),
        }
    }

    /// Stops the store after the failure `e` (the first one is kept) and returns it.
    fn stop(&self, e: StoreError) -> StoreError {
        let _ = self.stopped.set(e.to_string());
        e
    }

    /// Batches replayed from the journal at open (0 after a clean close).
    pub fn replayed(&self) -> usize {
        self.replayed
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, crate::storage::journal::Journal> {
        // A panic while appending leaves at worst a torn record, which replay ignores.
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn anchor_lock(&self) -> std::sync::MutexGuard<'_, Anchor> {
        // The anchor is replaced whole, after its file is written.
        self.anchor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state after `ops` are applied to the current one (call under the journal lock).
    fn next_state(
        &self,
        cur: &crate::storage::journal::State,
        ops: &[Op],
    ) -> Result<crate::storage::journal::State, StoreError> {
        let mut s = *cur;
        s.seq += 1;
        let mut seen: std::collections::HashMap<&[u8], Option<&[u8]>> = std::collections::HashMap::new();
        for op in ops {
            let (key, new) = match op {
                Op::Put(k, v) => (k.as_slice(), Some(v.as_slice())),
                Op::Delete(k) => (k.as_slice(), None),
            };
            let old = match seen.get(key) {
                Some(v) => v.map(<[u8]>::to_vec),
                None => self.db.get(key).map_err(sled_err)?.map(|v| v.to_vec()),
            };
            if let Some(old) = old {
                xor_into(&mut s.digest, &pair_hash(key, &old));
                s.count = s.count.saturating_sub(1);
            }
            if let Some(new) = new {
                xor_into(&mut s.digest, &pair_hash(key, new));
                s.count += 1;
            }
            seen.insert(key, new);
        }
        Ok(s)
    }

    /// Writes a record of `ops` (with the state after them) to the journal and then runs `f`
    /// on sled, atomically with respect to other writers; checkpoints when the journal is large.
    /// Any failure stops the store: a record journaled but not applied is replayed at the next
    /// open (durable once journaled).
    fn journaled<T>(
        &self,
        j: &mut crate::storage::journal::Journal,
        ops: &[Op],
        payload: Vec<u8>,
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.running()?;
        let state = self.next_state(&j.state, ops)?;
        let path = j.path().to_owned();
        j.append(&crate::storage::journal::frame(payload, Some(&state)), &self.faults)
            .map_err(|e| self.stop(io_err("writing journal", &path)(e)))?;
        j.state = state;
        let out = if self.faults.hit(Fault::MetaApply) {
            Err(StoreError::Meta(Faults::error(Fault::MetaApply).to_string()))
        } else {
            f()
        };
        let out = out.map_err(|e| self.stop(e))?;
        if j.len() > crate::storage::journal::CHECKPOINT_BYTES {
            self.checkpoint_locked(j)?;
        }
        Ok(out)
    }

    /// Flushes sled, writes the anchor, then empties the journal (in that order, so a crash
    /// between any two steps leaves a journal and an anchor that agree with the database).
    fn checkpoint_locked(&self, j: &mut crate::storage::journal::Journal) -> Result<(), StoreError> {
        self.running()?;
        self.db.flush().map_err(|e| self.stop(sled_err(e)))?;
        let mut anchor = self.anchor_lock();
        let next = Anchor { state: j.state, ..*anchor };
        next.write(&self.dir.join(ANCHOR_FILE)).map_err(|e| self.stop(e))?;
        *anchor = next;
        drop(anchor);
        let path = j.path().to_owned();
        j.truncate().map_err(|e| self.stop(io_err("emptying journal", &path)(e)))
    }

    /// Flushes sled and empties the journal (used at a clean close). Refused once the store
    /// has stopped: the journal is then left for the next open to replay.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let mut j = self.journal();
        self.checkpoint_locked(&mut j)
    }
}

#[cfg(feature = "embedded")]
impl MetaStore for SledMeta {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(sled_err)?.map(|v| v.to_vec()))
    }

    fn scan(&self, prefix: &[u8]) -> ScanIter<'_> {
        Box::new(self.db.scan_prefix(prefix).map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(sled_err)))
    }

    fn scan_from(&self, prefix: &[u8], start: &[u8]) -> ScanIter<'_> {
        let prefix = prefix.to_vec();
        Box::new(
            self.db
                .range(start.to_vec()..)
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(sled_err))
                .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))),
        )
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let payload = crate::storage::journal::encode_ops(&ops);
        let mut j = self.journal();
        self.journaled(&mut j, &ops, payload, || self.db.apply_batch(batch_of(&ops)).map_err(sled_err))
    }

    fn compare_and_swap(&self, key: &[u8], old: Option<&[u8]>, new: Option<Vec<u8>>) -> Result<bool, StoreError> {
        // Under the journal lock, which every write holds: the value cannot change between this
        // read and the write, and the record is journaled before sled sees the change (so sled
        // is never ahead of its journal).
        let mut j = self.journal();
        self.running()?;
        if self.db.get(key).map_err(sled_err)?.as_deref() != old {
            return Ok(false);
        }
        let op = match new {
            Some(v) => Op::Put(key.to_vec(), v),
            None => Op::Delete(key.to_vec()),
        };
        let ops = [op];
        let payload = crate::storage::journal::encode_ops(&ops);
        self.journaled(&mut j, &ops, payload, || self.db.apply_batch(batch_of(&ops)).map_err(sled_err))?;
        Ok(true)
    }

    fn close(&self) -> Result<(), StoreError> {
        self.checkpoint()
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Never retried after a failure: the pages it could not write may be gone.
        self.running()?;
        let synced = if self.faults.hit(Fault::JournalSync) {
            Err(Faults::error(Fault::JournalSync))
        } else {
            self.sync_file.sync_data()
        };
        synced.map_err(|source| self.stop(StoreError::Io { what: "syncing the metadata journal".into(), source }))
    }

    fn signed_floor(&self) -> Option<(u64, [u8; 32])> {
        let a = self.anchor_lock();
        (a.signed_size > 0).then_some((a.signed_size, a.signed_root))
    }

    fn raise_signed_floor(&self, size: u64, root: [u8; 32]) -> Result<(), StoreError> {
        let mut anchor = self.anchor_lock();
        if size <= anchor.signed_size {
            return Ok(());
        }
        let next = Anchor { signed_size: size, signed_root: root, ..*anchor };
        next.write(&self.dir.join(ANCHOR_FILE))?;
        *anchor = next;
        Ok(())
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

/// Blobs as files: `blobs/<first 2 hex of owner ref>/<owner ref hex>/<name hex>`, written as
/// `<random hex>.tmp` in the same directory, then renamed into place; made durable by
/// [`BlobStore::sync`]. One directory per owner keeps an owner's blobs together (erasure
/// removes one directory) and spreads concurrent writers over directories; renames never cross
/// directories (no file-system-wide rename lock).
#[derive(Debug)]
pub struct FsBlobs {
    root: PathBuf,
    /// The blob folder, open for the life of the store: `syncfs` reports a write-back error
    /// only to descriptors opened before it happened, so a fresh one per sync could miss it.
    #[cfg(target_os = "linux")]
    root_dir: File,
    /// A sync failed: every later one fails too (fail-stop, SPEC.md §8).
    stopped: AtomicBool,
    faults: Faults,
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing directory", dir))
}

/// Creates `dir` and any missing parents, syncing each parent whose entries changed.
fn create_dir_durable(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_err("creating directory", dir)(e)),
    }
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

impl FsBlobs {
    /// Uses `root` for blobs.
    pub fn open(root: PathBuf) -> Result<Self, StoreError> {
        create_dir_durable(&root)?;
        #[cfg(target_os = "linux")]
        let root_dir = File::open(&root).map_err(io_err("opening", &root))?;
        Ok(Self {
            root,
            #[cfg(target_os = "linux")]
            root_dir,
            stopped: AtomicBool::new(false),
            faults: Faults::default(),
        })
    }

    /// Injects the failures armed in `faults` (tests of fail-stop).
    pub fn with_faults(mut self, faults: &Faults) -> Self {
        self.faults = faults.clone();
        self
    }

    #[cfg(target_os = "linux")]
    fn syncfs(&self) -> io::Result<()> {
        rustix::fs::syncfs(&self.root_dir).map_err(io::Error::from)
    }

    #[cfg(not(target_os = "linux"))]
    fn syncfs(&self) -> io::Result<()> {
        // Each commit synced its file and directory (PER_FILE_SYNC).
        Ok(())
    }

    fn owner_dir(root: &Path, owner: &[u8; 16]) -> PathBuf {
        let o = hex::encode(owner);
        root.join(&o[..2]).join(o)
    }

    fn path(&self, name: &BlobName) -> PathBuf {
        Self::owner_dir(&self.root, &name.owner).join(hex::encode(name.name))
    }

    /// Where blobs without a record are kept: `orphans/` beside the blob folder.
    fn orphans(&self) -> PathBuf {
        self.root.with_file_name("orphans")
    }
}

/// On Linux, `sync` is one `syncfs(2)` that covers every blob written since the last one (file
/// contents, new directories and renames), so concurrent puts share it. Elsewhere each commit
/// syncs its file and directory itself.
const PER_FILE_SYNC: bool = !cfg!(target_os = "linux");

const TMP_SUFFIX: &str = ".tmp";

struct FsNewBlob {
    file: File,
    path: PathBuf,
    dir: PathBuf,
    owner: [u8; 16],
    committed: bool,
}

impl Write for FsNewBlob {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.file.write(b)
    }
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        self.file.write_all(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for FsNewBlob {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

impl NewBlob for FsNewBlob {
    fn commit(mut self: Box<Self>, name: &BlobName) -> Result<(), StoreError> {
        if name.owner != self.owner {
            return Err(StoreError::Meta("a blob must be committed under the owner it was created for".into()));
        }
        let dest = self.dir.join(hex::encode(name.name));
        if PER_FILE_SYNC {
            self.file.sync_all().map_err(io_err("syncing", &self.path))?;
        }
        fs::rename(&self.path, &dest).map_err(io_err("renaming into", &dest))?;
        self.committed = true;
        if PER_FILE_SYNC {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl Drop for FsNewBlob {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: an unfinished blob left behind (a failure here, or a crash) is
            // removed by `discard_unfinished` at the next open after an unclean shutdown.
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl BlobStore for FsBlobs {
    fn create(&self, owner: &[u8; 16]) -> Result<Box<dyn NewBlob>, StoreError> {
        let dir = Self::owner_dir(&self.root, owner);
        if !dir.is_dir() {
            if PER_FILE_SYNC {
                create_dir_durable(&dir)?;
            } else {
                // Made durable, with the blob, by the next `sync` (syncfs).
                fs::create_dir_all(&dir).map_err(io_err("creating directory", &dir))?;
            }
        }
        let path = dir.join(format!("{}{TMP_SUFFIX}", hex::encode(crate::crypto::keys::random_array::<16>())));
        let open = || OpenOptions::new().write(true).read(true).create_new(true).open(&path);
        let file = match open() {
            // An erasure of the owner removed the (empty) folder meanwhile: make it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if PER_FILE_SYNC {
                    create_dir_durable(&dir)?;
                } else {
                    fs::create_dir_all(&dir).map_err(io_err("creating directory", &dir))?;
                }
                open()
            }
            r => r,
        }
        .map_err(io_err("creating", &path))?;
        Ok(Box::new(FsNewBlob { file, path, dir, owner: *owner, committed: false }))
    }

    fn sync(&self) -> Result<(), StoreError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(StoreError::Stopped(format!("an earlier sync of {} failed", self.root.display())));
        }
        let synced = if self.faults.hit(Fault::BlobSync) { Err(Faults::error(Fault::BlobSync)) } else { self.syncfs() };
        synced.map_err(|e| {
            self.stopped.store(true, Ordering::SeqCst);
            io_err("syncing the file system of", &self.root)(e)
        })
    }

    fn open(&self, name: &BlobName) -> Result<Option<Box<dyn BlobRead>>, StoreError> {
        let path = self.path(name);
        match File::open(&path) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("opening", &path)(e)),
        }
    }

    fn len(&self, name: &BlobName) -> Result<Option<u64>, StoreError> {
        let path = self.path(name);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading metadata of", &path)(e)),
        }
    }

    fn remove_owner(&self, owner: &[u8; 16]) -> Result<usize, StoreError> {
        // Blobs of the owner set aside (§10) go too: encrypted under the keys the erasure
        // destroyed, they are the owner's all the same.
        let aside = self.orphans().join(hex::encode(owner));
        match fs::remove_dir_all(&aside) {
            Ok(()) => sync_dir(&self.orphans())?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &aside)(e)),
        }
        let dir = Self::owner_dir(&self.root, owner);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err("listing", &dir)(e)),
        };
        // Committed blobs go; blobs still being written stay: they belong to uploads that will
        // be committed under the owner's next key (or dropped), never under the erased one.
        let mut n = 0;
        for f in rd {
            let path = f.map_err(io_err("listing", &dir))?.path();
            if is_unfinished(&path) {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &path)(e)),
            }
        }
        sync_dir(&dir)?;
        match fs::remove_dir(&dir) {
            Ok(()) => {
                if let Some(parent) = dir.parent() {
                    sync_dir(parent)?;
                }
            }
            // An upload started meanwhile: the folder stays, empty of this owner's blobs.
            Err(_) if dir.is_dir() => {}
            Err(e) => return Err(io_err("removing", &dir)(e)),
        }
        Ok(n)
    }

    fn remove(&self, name: &BlobName) -> Result<(), StoreError> {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => path.parent().map_or(Ok(()), sync_dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    fn list(&self) -> Result<BlobListing, StoreError> {
        let mut out = BlobListing::default();
        let read = |p: &Path| fs::read_dir(p).map_err(io_err("listing", p));
        for fan in read(&self.root)? {
            let fan = fan.map_err(io_err("listing", &self.root))?.path();
            let fan_name = fan.file_name().and_then(|s| s.to_str()).unwrap_or("").to_owned();
            if !fan.is_dir() || fan_name.len() != 2 {
                out.strays.push(fan.display().to_string());
                continue;
            }
            for owner in read(&fan)? {
                let owner = owner.map_err(io_err("listing", &fan))?.path();
                let owner_ref = match parse_hex_name::<16>(&owner) {
                    Some(r) if owner.is_dir() && hex::encode(r).starts_with(&fan_name) => r,
                    _ => {
                        out.strays.push(owner.display().to_string());
                        continue;
                    }
                };
                for f in read(&owner)? {
                    let f = f.map_err(io_err("listing", &owner))?.path();
                    match parse_hex_name::<32>(&f) {
                        Some(name) if f.is_file() => out.blobs.push(BlobName { owner: owner_ref, name }),
                        _ if is_unfinished(&f) => out.unfinished.push(f),
                        _ => out.strays.push(f.display().to_string()),
                    }
                }
            }
        }
        Ok(out)
    }

    fn discard_unfinished(&self) -> Result<usize, StoreError> {
        let unfinished = self.list()?.unfinished;
        for p in &unfinished {
            fs::remove_file(p).map_err(io_err("removing", p))?;
        }
        Ok(unfinished.len())
    }

    fn describe(&self, name: &BlobName) -> String {
        self.path(name).display().to_string()
    }

    fn kind(&self) -> String {
        "files".into()
    }

    fn set_aside(&self, name: &BlobName) -> Result<bool, StoreError> {
        let from = self.path(name);
        let dir = self.orphans().join(hex::encode(name.owner));
        create_dir_durable(&dir)?;
        let to = dir.join(hex::encode(name.name));
        fs::rename(&from, &to).map_err(io_err("setting aside", &from))?;
        sync_dir(&dir)?;
        from.parent().map_or(Ok(()), sync_dir)?;
        Ok(true)
    }

    fn set_aside_list(&self) -> Result<Vec<String>, StoreError> {
        let root = self.orphans();
        let mut out = Vec::new();
        let owners = match fs::read_dir(&root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("listing", &root)(e)),
        };
        for o in owners {
            let o = o.map_err(io_err("listing", &root))?.path();
            for f in fs::read_dir(&o).map_err(io_err("listing", &o))? {
                out.push(f.map_err(io_err("listing", &o))?.path().display().to_string());
            }
        }
        out.sort();
        Ok(out)
    }
}

fn is_unfinished(p: &Path) -> bool {
    p.file_name()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_suffix(TMP_SUFFIX))
        .is_some_and(|stem| stem.len() == 32 && stem.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn parse_hex_name<const N: usize>(p: &Path) -> Option<[u8; N]> {
    let s = p.file_name()?.to_str()?;
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_database_made_with_sleds_default_segment_size_still_opens() {
        let dir = std::env::temp_dir().join(format!("vault-sled-compat-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        {
            let db = sled::Config::new().path(&dir).open().unwrap();
            db.insert(b"Mold", b"value".to_vec()).unwrap();
            db.flush().unwrap();
        }
        let meta = SledMeta::open(&dir).unwrap();
        assert_eq!(meta.get(b"Mold").unwrap().as_deref(), Some(&b"value"[..]));
        drop(meta);
        fs::remove_dir_all(&dir).unwrap();
    }
}
