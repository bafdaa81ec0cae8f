//! The embedded blob store: a directory of write-once files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{io_err, sync_dir, BlobListing, BlobName, BlobRead, BlobStore, NewBlob, StoreError};
use crate::storage::failstop::{Fault, Faults};

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
