//! The embedded metadata store: one sled tree made durable by the journal, and the anchor kept
//! outside it to find the database rolled back (SPEC.md §8, §9).

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{io_err, sync_dir, MetaStore, Op, ScanIter, StoreError};
use crate::storage::failstop::{Fault, Faults};

/// The embedded metadata store: one sled tree, made durable by a journal.
///
/// sled 0.34 flushes on its own only every 500 ms, and its `flush` stalls concurrent writers.
/// So every batch is first appended to a checksummed journal (`vault-journal` in the sled
/// folder) and then applied to sled, under one lock; [`MetaStore::sync`] is one `fdatasync` of
/// the journal. At open the journal is replayed into sled, sled is flushed and the journal
/// emptied; it is also emptied after a sled flush whenever it outgrows
/// [`crate::storage::journal::CHECKPOINT_BYTES`]. Every value is sealed besides, so corruption is
/// detected rather than served (SPEC.md §9).
pub struct SledMeta {
    db: sled::Db,
    /// Held (write) while a batch is applied to sled key by key, and (read) by every lookup
    /// and every step of a scan from outside the journal lock: no reader sees a batch half
    /// applied. sled's own `apply_batch` would give the same, but it seals and writes sled's log
    /// buffer twice as each batch starts (two `pwrite`s and `sync_file_range`s per batch, on
    /// sled's I/O threads), and the journal, not sled, makes a batch durable and atomic across a
    /// crash (replay applies it again whole).
    visible: std::sync::RwLock<()>,
    /// A batch was applied only in part (an error or a panic part way): set under `visible`'s
    /// write lock, it stops the store and refuses every later read (the next open replays the
    /// whole record).
    torn: std::sync::atomic::AtomicBool,
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
    /// The bytes of small blobs (`B` values): sled holds their locators (SPEC.md §8, "Packs").
    packs: crate::storage::pack::Packs,
}

impl fmt::Debug for SledMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SledMeta")
    }
}

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

/// A sled iterator whose every step holds the store's visibility lock for reading (see
/// `SledMeta::visible`), and fails once a batch was applied only in part.
struct Visible<'a, I> {
    meta: &'a SledMeta,
    inner: I,
    /// The store was found torn: the error was returned once, and the scan has ended.
    ended: bool,
}

impl<I: Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> Iterator for Visible<'_, I> {
    type Item = Result<(sled::IVec, sled::IVec), StoreError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        let _read = self.meta.visible.read().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.meta.whole() {
            self.ended = true;
            return Some(Err(e));
        }
        self.inner.next().map(|r| r.map_err(sled_err))
    }
}

/// Marks the store torn and stops it unless the batch being applied is finished (see
/// `SledMeta::apply_visible`; it runs on an error's early return and on a panic's unwinding).
struct Applying<'a> {
    meta: &'a SledMeta,
    done: bool,
}

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.meta.torn.store(true, std::sync::atomic::Ordering::SeqCst);
            // An error return is stopped with its own error by the caller (`journaled`); a
            // panic has no caller to do it.
            if std::thread::panicking() {
                let _ = self.meta.stop(StoreError::Meta("a batch was applied to sled only in part".into()));
            }
        }
    }
}

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
const SEGMENT_SIZE: usize = 8 << 20;

/// The name of the journal file inside the sled folder.
pub const JOURNAL_FILE: &str = "vault-journal";
/// The name of the anchor file inside the sled folder.
pub const ANCHOR_FILE: &str = "vault-anchor";

const ANCHOR_MAGIC: &[u8; 8] = b"VLTANCH1";
const ANCHOR_LEN: usize = 112;
const STATE_CONTEXT: &str = "vault 2026-12-02 metadata state digest v1";

/// What is kept outside the database to find it rolled back (SPEC.md §8, "The anchor"): the
/// store's state at the last checkpoint, and the largest audit checkpoint ever signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Anchor {
    /// Change sequence, key count and state digest at the last checkpoint.
    pub state: crate::storage::journal::State,
    /// Size of the largest signed audit checkpoint.
    pub signed_size: u64,
    /// Its root.
    pub signed_root: [u8; 32],
}

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
fn pair_hash(key: &[u8], value: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(STATE_CONTEXT);
    h.update(&(key.len() as u64).to_be_bytes());
    h.update(key);
    h.update(value);
    *h.finalize().as_bytes()
}

fn xor_into(d: &mut [u8; 32], h: &[u8; 32]) {
    for (a, b) in d.iter_mut().zip(h) {
        *a ^= b;
    }
}

/// Key count and state digest of the whole database (a full scan).
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

/// Folders whose store this process closed, and when (sled's threads release the file lock a
/// moment after the close: a reopen soon after waits for them).
static CLOSED: std::sync::Mutex<Vec<(PathBuf, std::time::Instant)>> = std::sync::Mutex::new(Vec::new());

/// How long after a close a reopen of the same folder waits for its lock.
const CLOSED_RECENTLY: std::time::Duration = std::time::Duration::from_secs(60);

fn folder_id(dir: &Path) -> PathBuf {
    fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned())
}

fn recently_closed(dir: &Path) -> bool {
    let id = folder_id(dir);
    let closed = CLOSED.lock().unwrap_or_else(|p| p.into_inner());
    closed.iter().any(|(d, at)| *d == id && at.elapsed() < CLOSED_RECENTLY)
}

impl Drop for SledMeta {
    fn drop(&mut self) {
        let id = folder_id(&self.dir);
        let mut closed = CLOSED.lock().unwrap_or_else(|p| p.into_inner());
        closed.retain(|(d, at)| *d != id && at.elapsed() < CLOSED_RECENTLY);
        closed.push((id, std::time::Instant::now()));
    }
}

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
        // sled reports a lock another handle holds as an `Other` I/O error that names the lock
        // and the inner `WouldBlock` (any other failure to lock, say ENOLCK, is not "in use").
        let is_locked = |e: &sled::Error| {
            matches!(e, sled::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock || {
                let s = io.to_string();
                s.contains("could not acquire lock") && s.contains("WouldBlock")
            })
        };
        let open = || match config().segment_size(SEGMENT_SIZE).open() {
            Err(sled::Error::Unsupported(_)) => config().open(),
            other => other,
        };
        // sled's own threads of a database this process closed let go of its file lock a
        // moment after the close returns (longer on a loaded machine): a reopen of a folder
        // closed here in the last minute waits up to 10 s for them. A lock held otherwise (by
        // another process) is reported at once.
        let mut db = open();
        if db.as_ref().is_err_and(is_locked) && recently_closed(dir) {
            for _ in 0..1000 {
                match &db {
                    Err(e) if is_locked(e) => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        db = open();
                    }
                    _ => break,
                }
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
        let packs = crate::storage::pack::Packs::open(dir)?;
        // Values the replayed batches deleted: zeroed before the replay is checkpointed.
        let mut dropped = Vec::new();
        for b in &replay.batches {
            // The pack bytes first (a crash may have lost their pages), then the locators.
            for (loc, bytes) in &b.packed {
                packs.rewrite(loc, bytes)?;
            }
            // What the batch released, as its record says: sled may already hold the batch (it
            // writes its buffers by itself, and a checkpoint may have flushed it before a crash
            // stopped the zeroing), so what it held before cannot be read back there.
            dropped.extend(b.released.iter().copied());
            // And what each op replaces, in order, as sled holds it (for records written before
            // releases were journaled; a locator found both ways is zeroed once, harmlessly).
            let mut now: std::collections::HashMap<&[u8], Option<crate::storage::pack::Locator>> =
                std::collections::HashMap::new();
            for op in &b.ops {
                let (key, new) = match op {
                    Op::Put(k, v) => (k.as_slice(), crate::storage::pack::Locator::decode(v)),
                    Op::Delete(k) => (k.as_slice(), None),
                };
                if !crate::storage::pack::is_blob_key(key) {
                    continue;
                }
                let prior = match now.get(key) {
                    Some(l) => *l,
                    None => db.get(key).map_err(sled_err)?.and_then(|v| crate::storage::pack::Locator::decode(&v)),
                };
                dropped.extend(prior);
                now.insert(key, new);
            }
            db.apply_batch(batch_of(&b.ops)).map_err(sled_err)?;
        }
        let (count, digest) = scan_state(&db)?;
        let mut live = Vec::new();
        for item in db.scan_prefix([crate::storage::pack::BLOB_KEY_PREFIX]) {
            let (_, v) = item.map_err(sled_err)?;
            live.extend(crate::storage::pack::Locator::decode(&v));
        }
        // A value deleted and then written again at the same place is live, not dropped.
        if !dropped.is_empty() {
            let live: std::collections::HashSet<&crate::storage::pack::Locator> = live.iter().collect();
            dropped.retain(|d| !live.contains(d));
        }
        packs.account(live.into_iter());
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
            visible: std::sync::RwLock::new(()),
            torn: std::sync::atomic::AtomicBool::new(false),
            dir: dir.to_owned(),
            sync_file: journal.sync_handle().map_err(io_err("opening journal", &path))?,
            journal: std::sync::Mutex::new(journal),
            replayed,
            anchor: std::sync::Mutex::new(anchor.unwrap_or_default()),
            stopped: std::sync::OnceLock::new(),
            faults: Faults::default(),
            packs,
        };
        // Deleted before the crash, durably (their records were synced): their bytes go before
        // the checkpoint below syncs the packs and empties the journal, so that a crash in
        // between cannot leave the bytes replay rewrote durable with no record left to zero them.
        meta.packs.zero(&dropped)?;
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
        // The packs first: once the journal is emptied they are the only copy of their bytes.
        self.packs.sync().map_err(|e| self.stop(e))?;
        self.db.flush().map_err(|e| self.stop(sled_err(e)))?;
        // Every journaled deletion is durable in sled now: the values it released are zeroed
        // before the journal that records it is emptied (a crash after this leaves no
        // deletion whose bytes nothing would zero).
        self.packs.after_sync(u64::MAX).map_err(|e| self.stop(e))?;
        let mut anchor = self.anchor_lock();
        let next = Anchor { state: j.state, ..*anchor };
        next.write(&self.dir.join(ANCHOR_FILE)).map_err(|e| self.stop(e))?;
        *anchor = next;
        drop(anchor);
        let path = j.path().to_owned();
        j.truncate().map_err(|e| self.stop(io_err("emptying journal", &path)(e)))?;
        // No journal record can write into a retired pack any more.
        self.packs.remove_retired().map_err(|e| self.stop(e))?;
        Ok(())
    }

    /// Applies journaled `ops` to sled, key by key, with no reader in between (see `visible`).
    /// Under the journal lock (the only writer). A failure part way stops the store, and the
    /// next open replays the whole record.
    fn apply_visible(&self, ops: &[Op]) -> Result<(), StoreError> {
        let _write = self.visible.write().unwrap_or_else(|p| p.into_inner());
        // Dropped before the write lock: a batch cut short is marked torn before any reader
        // can look.
        let mut applying = Applying { meta: self, done: false };
        for op in ops {
            if self.faults.hit(Fault::MetaApplyPart) {
                return Err(StoreError::Meta(Faults::error(Fault::MetaApplyPart).to_string()));
            }
            match op {
                Op::Put(k, v) => self.db.insert(k.as_slice(), v.as_slice()).map(drop),
                Op::Delete(k) => self.db.remove(k.as_slice()).map(drop),
            }
            .map_err(sled_err)?;
        }
        applying.done = true;
        Ok(())
    }

    /// Refuses reads once a batch was applied only in part (they could see half of it).
    fn whole(&self) -> Result<(), StoreError> {
        if self.torn.load(std::sync::atomic::Ordering::SeqCst) {
            self.running()?;
            return Err(StoreError::Stopped("a batch was applied to sled only in part".into()));
        }
        Ok(())
    }

    /// sled's value of `key`, never from a batch half applied.
    fn visible_get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        let _read = self.visible.read().unwrap_or_else(|p| p.into_inner());
        self.whole()?;
        self.db.get(key).map_err(sled_err)
    }

    /// The value of blob key `key` from its sled value `v`: the pack's bytes for a locator
    /// (`None` if its pack is gone), the value itself for one stored whole (before packs, or too
    /// large to pack).
    ///
    /// A compaction may move the value between the read of its locator and the read of its
    /// bytes (the old range is then zeroed, its pack removed): bytes that fail the locator's
    /// check, or a missing pack, send the read back to sled for the current locator. With the
    /// same locator, the bytes are returned as they are (damaged: the blob's authentication
    /// refuses them, so they are reported by `check` and never served).
    fn unpack(&self, key: &[u8], mut v: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        use crate::storage::pack::Locator;
        let mut tries = 0;
        loop {
            let Some(loc) = Locator::decode(&v) else { return Ok(Some(v)) };
            let read = self.packs.read(&loc);
            if matches!(&read, Ok(Some(bytes)) if loc.matches(bytes)) {
                return read;
            }
            tries += 1;
            match self.visible_get(key)? {
                // Moved: read it where it is now (a move happens once per compaction).
                Some(now) if *now != *v && tries < 16 => v = now.to_vec(),
                // Deleted meanwhile.
                None => return Ok(None),
                Some(_) => return read,
            }
        }
    }

    fn unpack_pair(&self, r: Result<(sled::IVec, sled::IVec), StoreError>) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let (k, v) = r?;
        if !crate::storage::pack::is_blob_key(&k) {
            return Ok((k.to_vec(), v.to_vec()));
        }
        // A locator whose pack is missing is returned as it is: it fails as a blob, and `check`
        // reports it.
        let v = self.unpack(&k, v.to_vec())?.unwrap_or_else(|| v.to_vec());
        Ok((k.to_vec(), v))
    }

    /// Applies `ops` under the journal lock: blob values are appended to the current pack and
    /// replaced by their locators, the record carries their bytes, and the values they replace
    /// or delete are released (zeroed after the next sync).
    fn apply_locked(&self, j: &mut crate::storage::journal::Journal, ops: Vec<Op>) -> Result<(), StoreError> {
        use crate::storage::pack::{is_blob_key, Locator};
        self.running()?;
        let mut packed: Vec<(Locator, Vec<u8>)> = Vec::new();
        let mut released: Vec<Locator> = Vec::new();
        let mut now: std::collections::HashMap<Vec<u8>, Option<Locator>> = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let key = match &op {
                Op::Put(k, _) | Op::Delete(k) => k,
            };
            if !is_blob_key(key) {
                out.push(op);
                continue;
            }
            let prior = match now.get(key) {
                Some(l) => *l,
                None => self.db.get(key).map_err(sled_err)?.and_then(|v| Locator::decode(&v)),
            };
            released.extend(prior);
            match op {
                Op::Put(k, v) if v.len() > crate::storage::pack::MAX_PACKED => {
                    now.insert(k.clone(), None);
                    out.push(Op::Put(k, v));
                }
                Op::Put(k, v) => {
                    let loc = if self.faults.hit(Fault::PackWrite) {
                        Err(StoreError::Io { what: "writing pack".into(), source: Faults::error(Fault::PackWrite) })
                    } else {
                        self.packs.append(&v)
                    }
                    .map_err(|e| self.stop(e))?;
                    now.insert(k.clone(), Some(loc));
                    out.push(Op::Put(k, loc.encode()));
                    packed.push((loc, v));
                }
                Op::Delete(k) => {
                    now.insert(k.clone(), None);
                    out.push(Op::Delete(k));
                }
            }
        }
        let refs: Vec<(Locator, &[u8])> = packed.iter().map(|(l, v)| (*l, v.as_slice())).collect();
        let payload = crate::storage::journal::encode_packed(&refs, &released, &out);
        self.journaled(j, &out, payload, || self.apply_visible(&out))?;
        let seq = j.state.seq;
        for l in released {
            self.packs.release(l, seq);
        }
        Ok(())
    }

    /// Rewrites the live values of packs that hold less than half live bytes at the end of the
    /// current pack (journaled like any put); the emptied packs are zeroed after the next sync
    /// and removed at the checkpoint this runs at the end. Returns the values moved.
    pub fn compact_packs(&self) -> Result<u64, StoreError> {
        let sparse = self.packs.sparse()?;
        if sparse.is_empty() {
            if self.packs.has_retired() {
                self.checkpoint()?;
            }
            return Ok(0);
        }
        let mut keys = Vec::new();
        for item in self.db.scan_prefix([crate::storage::pack::BLOB_KEY_PREFIX]) {
            let (k, v) = item.map_err(sled_err)?;
            if crate::storage::pack::Locator::decode(&v).is_some_and(|l| sparse.contains(&l.pack)) {
                keys.push(k);
            }
        }
        let mut moved = 0;
        for chunk in keys.chunks(64) {
            let mut j = self.journal();
            let mut ops = Vec::new();
            for k in chunk {
                // Under the journal lock: a value deleted or replaced meanwhile is left alone.
                let Some(v) = self.db.get(k).map_err(sled_err)? else { continue };
                let Some(loc) = crate::storage::pack::Locator::decode(&v) else { continue };
                if !sparse.contains(&loc.pack) {
                    continue;
                }
                // Unreadable (a damaged locator, a failed read): left where it is, for `check`.
                let Ok(Some(bytes)) = self.packs.read(&loc) else { continue };
                if !loc.matches(&bytes) {
                    // Damaged: moving it would hide the damage from `check` behind a new check.
                    continue;
                }
                ops.push(Op::Put(k.to_vec(), bytes));
            }
            moved += ops.len() as u64;
            if !ops.is_empty() {
                self.apply_locked(&mut j, ops)?;
            }
        }
        self.sync()?;
        self.checkpoint()?;
        Ok(moved)
    }

    /// The packs' files, bytes and live bytes.
    pub fn pack_stats(&self) -> Result<crate::storage::pack::PackStats, StoreError> {
        self.packs.stats()
    }

    /// Flushes sled and empties the journal (used at a clean close). Refused once the store
    /// has stopped: the journal is then left for the next open to replay.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let mut j = self.journal();
        self.checkpoint_locked(&mut j)
    }
}

impl MetaStore for SledMeta {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.visible_get(key)? {
            Some(v) if crate::storage::pack::is_blob_key(key) => self.unpack(key, v.to_vec()),
            v => Ok(v.map(|v| v.to_vec())),
        }
    }

    fn scan(&self, prefix: &[u8]) -> ScanIter<'_> {
        let inner = self.db.scan_prefix(prefix);
        Box::new(Visible { meta: self, inner, ended: false }.map(|r| self.unpack_pair(r)))
    }

    fn scan_from(&self, prefix: &[u8], start: &[u8]) -> ScanIter<'_> {
        let prefix = prefix.to_vec();
        Box::new(
            Visible { meta: self, inner: self.db.range(start.to_vec()..), ended: false }
                .map(|r| self.unpack_pair(r))
                .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))),
        )
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut j = self.journal();
        self.apply_locked(&mut j, ops)
    }

    fn compare_and_swap(&self, key: &[u8], old: Option<&[u8]>, new: Option<Vec<u8>>) -> Result<bool, StoreError> {
        // Under the journal lock, which every write holds: the value cannot change between this
        // read and the write, and the record is journaled before sled sees the change (so sled
        // is never ahead of its journal).
        if crate::storage::pack::is_blob_key(key) {
            // Blob values are written by batches only (their stored form is a locator).
            return Err(StoreError::Meta("compare-and-swap of a packed blob value".into()));
        }
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
        self.journaled(&mut j, &ops, payload, || self.apply_visible(&ops))?;
        Ok(true)
    }

    fn close(&self) -> Result<(), StoreError> {
        self.checkpoint()
    }

    fn compact(&self) -> Result<u64, StoreError> {
        self.compact_packs()
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Never retried after a failure: the pages it could not write may be gone.
        self.running()?;
        // Every record up to this change is in the file before the sync starts.
        let covered = self.journal().state.seq;
        let synced = if self.faults.hit(Fault::JournalSync) {
            Err(Faults::error(Fault::JournalSync))
        } else {
            self.sync_file.sync_data()
        };
        synced.map_err(|source| self.stop(StoreError::Io { what: "syncing the metadata journal".into(), source }))?;
        // Deletions are durable now: the deleted values' bytes go before anyone is told.
        self.packs.after_sync(covered).map_err(|e| self.stop(e))
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

    #[test]
    fn no_reader_sees_a_batch_half_applied() {
        // Each batch puts A = n and then B = n: a reader that finds A = n must find B ≥ n.
        let dir = tempfile::tempdir().unwrap();
        let meta = SledMeta::open(dir.path()).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let num = |v: Option<Vec<u8>>| v.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let a = num(meta.get(b"Ma").unwrap());
                        let b = num(meta.get(b"Mb").unwrap());
                        assert!(b >= a, "a half-applied batch was seen: A = {a}, B = {b}");
                        let pairs: Vec<_> = meta.scan(b"M").map(Result::unwrap).collect();
                        if let [(_, a), (_, b)] = pairs.as_slice() {
                            let (a, b) = (num(Some(a.clone())), num(Some(b.clone())));
                            assert!(b >= a, "a scan saw a half-applied batch: A = {a}, B = {b}");
                        }
                    }
                });
            }
            for n in 1..=3000u64 {
                let v = n.to_be_bytes().to_vec();
                meta.apply(vec![Op::Put(b"Ma".to_vec(), v.clone()), Op::Put(b"Mb".to_vec(), v)]).unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }

    #[test]
    fn a_batch_applied_in_part_stops_the_store_and_refuses_reads_until_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::new();
        let meta = SledMeta::open(dir.path()).unwrap().with_faults(&faults);
        meta.apply(vec![Op::Put(b"Ma".to_vec(), b"0".to_vec()), Op::Put(b"Mb".to_vec(), b"0".to_vec())]).unwrap();
        meta.sync().unwrap();
        faults.fail_nth(Fault::MetaApplyPart, 2);
        assert!(meta
            .apply(vec![Op::Put(b"Ma".to_vec(), b"1".to_vec()), Op::Put(b"Mb".to_vec(), b"1".to_vec())])
            .is_err());
        // Half of it is in sled (Ma = 1, Mb = 0): no read may see that.
        assert!(matches!(meta.get(b"Ma"), Err(StoreError::Stopped(_))));
        assert!(matches!(meta.get(b"Mb"), Err(StoreError::Stopped(_))));
        // A scan reports it once and ends (a caller that skips errors is not left spinning).
        let steps: Vec<_> = meta.scan(b"M").collect();
        assert!(matches!(steps.as_slice(), [Err(StoreError::Stopped(_))]), "{steps:?}");
        let steps: Vec<_> = meta.scan_from(b"M", b"Ma").collect();
        assert!(matches!(steps.as_slice(), [Err(StoreError::Stopped(_))]), "{steps:?}");
        assert!(matches!(meta.apply(vec![Op::Delete(b"Ma".to_vec())]), Err(StoreError::Stopped(_))));
        assert!(meta.checkpoint().is_err(), "a checkpoint would empty the journal that holds the batch");
        let _ = meta.sync();
        drop(meta);
        // The record was journaled: the reopen applies it whole.
        let meta = SledMeta::open(dir.path()).unwrap();
        assert_eq!(meta.get(b"Ma").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(meta.get(b"Mb").unwrap().as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn a_panic_part_way_through_an_apply_stops_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SledMeta::open(dir.path()).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _write = meta.visible.write().unwrap();
            let _applying = Applying { meta: &meta, done: false };
            panic!("part way");
        }));
        assert!(r.is_err());
        assert!(matches!(meta.get(b"Ma"), Err(StoreError::Stopped(_))));
        assert!(meta.apply(vec![Op::Delete(b"Ma".to_vec())]).is_err());
    }

    /// sled opened directly, waiting for a just-closed store's threads to let go of the lock.
    fn raw_sled(dir: &Path) -> sled::Db {
        for _ in 0..1000 {
            match sled::Config::new().path(dir).segment_size(SEGMENT_SIZE).open() {
                Ok(db) => return db,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        panic!("sled never let go of {}", dir.display());
    }

    #[test]
    fn a_reopen_after_a_close_waits_for_the_lock_to_be_released() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledMeta::open(dir.path()).unwrap());
        // A holder of the lock that lets go a moment later (as sled's threads of the store just
        // closed do).
        let held = raw_sled(dir.path());
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        let meta = SledMeta::open(dir.path()).unwrap();
        release.join().unwrap();
        drop(meta);
    }

    #[test]
    fn a_folder_in_use_by_another_holder_is_reported_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let _held = sled::Config::new().path(dir.path()).segment_size(SEGMENT_SIZE).open().unwrap();
        // Never closed by a store of this process: the open takes the path without the wait.
        assert!(!recently_closed(dir.path()));
        assert!(matches!(SledMeta::open(dir.path()), Err(StoreError::Locked(_))));
    }

    /// A copy of a store's folder as a crash would leave it at this instant (files only).
    fn snapshot(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                snapshot(&e.path(), &to.join(e.file_name()));
            } else {
                fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    fn packs_hold(dir: &Path, needle: &[u8]) -> bool {
        fs::read_dir(dir.join(crate::storage::pack::PACK_DIR))
            .unwrap()
            .any(|e| fs::read(e.unwrap().path()).unwrap().windows(needle.len()).any(|w| w == needle))
    }

    const SECRET: &[u8] = b"a deleted value that must not outlive a crash";

    /// Puts `key` = SECRET, checkpoints, applies `change`, and copies the folder as a crash
    /// would leave it after a checkpoint flushed sled but before it zeroed the released values
    /// (or after sled wrote its buffers by itself): sled holds the change, the journal too.
    fn crash_with_sled_ahead(key: &[u8], change: Op) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let meta = SledMeta::open(dir.path()).unwrap();
        meta.apply(vec![Op::Put(key.to_vec(), SECRET.to_vec())]).unwrap();
        meta.checkpoint().unwrap();
        meta.apply(vec![change]).unwrap();
        meta.sync_file.sync_data().unwrap();
        meta.db.flush().unwrap();
        let copy = tempfile::tempdir().unwrap();
        let crashed = copy.path().join("crashed");
        snapshot(dir.path(), &crashed);
        drop(meta);
        assert!(packs_hold(&crashed, SECRET), "the crash left the bytes (else this tests nothing)");
        (copy, crashed)
    }

    #[test]
    fn a_replayed_delete_zeroes_its_value_when_sled_already_holds_the_delete() {
        let (_copy, crashed) = crash_with_sled_ahead(b"Bsecret", Op::Delete(b"Bsecret".to_vec()));
        let meta = SledMeta::open(&crashed).unwrap();
        assert_eq!(meta.get(b"Bsecret").unwrap(), None);
        assert!(!packs_hold(&crashed, SECRET), "a replayed delete left its value's bytes");
    }

    #[test]
    fn a_replayed_replacement_zeroes_the_old_value_when_sled_already_holds_it() {
        let (_copy, crashed) = crash_with_sled_ahead(b"Bk", Op::Put(b"Bk".to_vec(), b"the new value".to_vec()));
        let meta = SledMeta::open(&crashed).unwrap();
        assert_eq!(meta.get(b"Bk").unwrap().as_deref(), Some(&b"the new value"[..]));
        assert!(!packs_hold(&crashed, SECRET), "a replayed replacement left the old value's bytes");
    }
}
