//! The two narrow storage interfaces the vault core is written against, and the embedded
//! implementations: sled for metadata, a directory of write-once files for blobs.
//!
//! A scale-out backend (SQL for metadata, object storage for blobs) implements these two traits
//! and nothing else. The core never holds plaintext in either: values reaching a [`MetaStore`]
//! are sealed, blobs reaching a [`BlobStore`] are encrypted.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

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
    /// Another process holds the data folder.
    #[error("the data folder {0} is in use by another process")]
    Locked(String),
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
}

/// The embedded metadata store: one sled tree, made durable by a journal.
///
/// sled 0.34 flushes on its own only every 500 ms, and its `flush` stalls concurrent writers.
/// So every batch is first appended to a checksummed journal (`vault-journal` in the sled
/// folder) and then applied to sled, under one lock; [`MetaStore::sync`] is one `fdatasync` of
/// the journal. At open the journal is replayed into sled, sled is flushed and the journal
/// emptied; it is also emptied after a sled flush whenever it outgrows
/// [`crate::journal::CHECKPOINT_BYTES`]. Every value is sealed besides, so corruption is
/// detected rather than served (SPEC.md §9).
pub struct SledMeta {
    db: sled::Db,
    journal: std::sync::Mutex<crate::journal::Journal>,
    /// Handle used to sync the journal without holding its lock.
    sync_file: File,
    replayed: usize,
}

impl fmt::Debug for SledMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SledMeta")
    }
}

fn sled_err(e: sled::Error) -> StoreError {
    StoreError::Meta(e.to_string())
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

impl SledMeta {
    /// Opens (or creates) the database in `dir`, replaying its journal.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // Durability is the journal's: sled is flushed at checkpoints only, never in the
        // background. 8 MiB segments keep inline blobs (up to 32 KiB) inside sled's pages
        // instead of one sled blob file per page; a database made with sled's default segment
        // size (before inline blobs) keeps it, as sled requires.
        let config = || sled::Config::new().path(dir).flush_every_ms(None);
        let db = match config().segment_size(SEGMENT_SIZE).open() {
            Err(sled::Error::Unsupported(_)) => config().open(),
            other => other,
        };
        let db = db.map_err(|e| match e {
            sled::Error::Io(ref io) if io.kind() == io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
                StoreError::Locked(dir.display().to_string())
            }
            other => sled_err(other),
        })?;
        let path = dir.join(JOURNAL_FILE);
        let (mut journal, batches) = crate::journal::Journal::open(&path).map_err(io_err("opening journal", &path))?;
        let replayed = batches.len();
        for ops in &batches {
            db.apply_batch(batch_of(ops)).map_err(sled_err)?;
        }
        if replayed > 0 {
            db.flush().map_err(sled_err)?;
            journal.truncate().map_err(io_err("emptying journal", &path))?;
        }
        let sync_file = journal.sync_handle().map_err(io_err("opening journal", &path))?;
        Ok(Self { db, journal: std::sync::Mutex::new(journal), sync_file, replayed })
    }

    /// Batches replayed from the journal at open (0 after a clean close).
    pub fn replayed(&self) -> usize {
        self.replayed
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, crate::journal::Journal> {
        // A panic while appending leaves at worst a torn record, which replay ignores.
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `record` to the journal and then runs `f` on sled, atomically with respect to
    /// other writers; checkpoints when the journal is large.
    fn journaled<T>(&self, record: Option<&[u8]>, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut j = self.journal();
        if let Some(rec) = record {
            let path = j.path().to_owned();
            j.append(rec).map_err(io_err("writing journal", &path))?;
        }
        let out = f()?;
        if j.len() > crate::journal::CHECKPOINT_BYTES {
            self.db.flush().map_err(sled_err)?;
            let path = j.path().to_owned();
            j.truncate().map_err(io_err("emptying journal", &path))?;
        }
        Ok(out)
    }

    /// Flushes sled and empties the journal (used at a clean close).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let mut j = self.journal();
        self.db.flush().map_err(sled_err)?;
        let path = j.path().to_owned();
        j.truncate().map_err(io_err("emptying journal", &path))
    }
}

impl MetaStore for SledMeta {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(sled_err)?.map(|v| v.to_vec()))
    }

    fn scan(&self, prefix: &[u8]) -> ScanIter<'_> {
        Box::new(self.db.scan_prefix(prefix).map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(sled_err)))
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let record = crate::journal::encode(&ops);
        self.journaled(Some(&record), || self.db.apply_batch(batch_of(&ops)).map_err(sled_err))
    }

    fn compare_and_swap(&self, key: &[u8], old: Option<&[u8]>, new: Option<Vec<u8>>) -> Result<bool, StoreError> {
        // Under the journal lock: the outcome is journaled only if the swap happened.
        let mut j = self.journal();
        let swapped = self.db.compare_and_swap(key, old, new.clone()).map_err(sled_err)?.is_ok();
        if swapped {
            let op = match new {
                Some(v) => Op::Put(key.to_vec(), v),
                None => Op::Delete(key.to_vec()),
            };
            let path = j.path().to_owned();
            j.append(&crate::journal::encode(&[op])).map_err(io_err("writing journal", &path))?;
        }
        Ok(swapped)
    }

    fn close(&self) -> Result<(), StoreError> {
        self.checkpoint()
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.sync_file
            .sync_data()
            .map_err(|source| StoreError::Io { what: "syncing the metadata journal".into(), source })
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
        Ok(Self { root })
    }

    fn owner_dir(root: &Path, owner: &[u8; 16]) -> PathBuf {
        let o = hex::encode(owner);
        root.join(&o[..2]).join(o)
    }

    fn path(&self, name: &BlobName) -> PathBuf {
        Self::owner_dir(&self.root, &name.owner).join(hex::encode(name.name))
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
        let path = dir.join(format!("{}{TMP_SUFFIX}", hex::encode(crate::keys::random_array::<16>())));
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
        #[cfg(target_os = "linux")]
        {
            let root = File::open(&self.root).map_err(io_err("opening", &self.root))?;
            rustix::fs::syncfs(&root).map_err(|e| io_err("syncing the file system of", &self.root)(e.into()))?;
        }
        Ok(())
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
