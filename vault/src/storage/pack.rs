//! Pack files: where the embedded metadata store ([`crate::storage::sled::SledMeta`]) keeps the bytes
//! of small blobs (the `"B"` values of SPEC.md §8, "Inline blobs"), so that sled holds a
//! 40-byte locator per small content instead of the content itself (SPEC.md §8, "Packs").
//!
//! A pack is an append-only file `meta/packs/<id as 8 hex digits>.pack`: the magic
//! `"VLTPACK1"`, then the values, back to back. A value is written once, at the end of the
//! current pack, under the journal's lock, and the journal record of its batch carries the same
//! bytes (op `0x04`), so the pack needs no sync of its own before an acknowledgement: the
//! journal's `fdatasync` makes the batch durable, replay rewrites the bytes at their place after
//! a crash, and the packs are synced at every checkpoint, before the journal is emptied.
//!
//! A value that is deleted (or replaced) is overwritten with zeros as soon as the sync (or the
//! checkpoint) that makes its deletion durable has run, and that pack is synced then: the bytes
//! of a deleted or erased content are gone from the packs when the call that removed it
//! returns. Only a range that still holds the value its locator was made for is zeroed. A pack
//! holding less than half live bytes is compacted: its live values are written again at the end
//! of the current pack (journaled like any put), and the emptied file is removed at the next
//! checkpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::storage::StoreError;

/// The first byte of the metadata keys whose values are kept in packs (inline blobs, §6).
pub const BLOB_KEY_PREFIX: u8 = crate::storage::layout::prefix::INLINE_BLOB;
/// The folder of the packs, inside the sled folder.
pub const PACK_DIR: &str = "packs";
/// The first bytes of a pack file.
pub const PACK_MAGIC: &[u8; 8] = b"VLTPACK1";
/// The first bytes of a locator (a stored blob starts with `"VAULTBLB"`, so the two never mix).
pub const LOCATOR_MAGIC: &[u8; 8] = b"VAULTPAK";
/// Bytes of an encoded [`Locator`].
pub const LOCATOR_LEN: usize = 40;
/// A pack stops taking values once it holds this many bytes (the next value opens a new pack).
pub const PACK_TARGET: u64 = 256 << 20;
/// Dead bytes below which a pack is not worth compacting (an almost empty current pack is not
/// replaced by a new one at every sweep).
pub const MIN_DEAD: u64 = 64 << 10;
/// Values up to this size are packed; a larger one is kept in sled whole (it can never be
/// mistaken for a locator, whose length is [`LOCATOR_LEN`]). Inline blobs are at most 32,896
/// bytes.
pub const MAX_PACKED: usize = 1 << 20;

/// Whether values of `key` are kept in packs.
pub fn is_blob_key(key: &[u8]) -> bool {
    key.first() == Some(&BLOB_KEY_PREFIX)
}

/// Where a value is in the packs, and a check of its bytes. Encoded (big-endian) as
/// `"VAULTPAK" | pack id (u32) | offset (u64) | length (u32) | BLAKE3(value)[..16]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Locator {
    /// The pack's id (its file name).
    pub pack: u32,
    /// Byte offset of the value in the pack.
    pub offset: u64,
    /// Length of the value.
    pub len: u32,
    /// The first 16 bytes of the value's BLAKE3 hash.
    pub check: [u8; 16],
}

impl Locator {
    /// The locator of `value` written at `offset` of pack `pack`.
    pub fn of(pack: u32, offset: u64, value: &[u8]) -> Self {
        let mut check = [0u8; 16];
        check.copy_from_slice(&blake3::hash(value).as_bytes()[..16]);
        Self { pack, offset, len: value.len() as u32, check }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LOCATOR_LEN);
        out.extend_from_slice(LOCATOR_MAGIC);
        out.extend_from_slice(&self.pack.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.check);
        out
    }

    /// Parses a stored value: `None` if it is not a locator (a value stored whole).
    pub fn decode(v: &[u8]) -> Option<Self> {
        if v.len() != LOCATOR_LEN || !v.starts_with(LOCATOR_MAGIC) {
            return None;
        }
        let pack = u32::from_be_bytes(v[8..12].try_into().ok()?);
        let offset = u64::from_be_bytes(v[12..20].try_into().ok()?);
        let len = u32::from_be_bytes(v[20..24].try_into().ok()?);
        let check: [u8; 16] = v[24..40].try_into().ok()?;
        Some(Self { pack, offset, len, check })
    }

    /// Whether `value` is the value this locator was made for.
    pub fn matches(&self, value: &[u8]) -> bool {
        value.len() == self.len as usize && blake3::hash(value).as_bytes()[..16] == self.check
    }

    fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }

    /// Whether a pack could hold this range (a damaged locator may claim any length or offset).
    fn plausible(&self) -> bool {
        self.len as usize <= MAX_PACKED && self.offset <= (i64::MAX as u64) - MAX_PACKED as u64
    }
}

/// Writes all of `buf` at `offset` (positioned: the file's cursor is not used).
#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn write_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_write(file, buf, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

fn io_err(what: impl std::fmt::Display, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let what = format!("{what} {}", path.display());
    move |source| StoreError::Io { what, source }
}

/// A pack file name.
fn file_name(id: u32) -> String {
    format!("{id:08x}.pack")
}

/// The id of a pack file name.
fn parse_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".pack")?;
    (hex.len() == 8).then(|| u32::from_str_radix(hex, 16).ok()).flatten()
}

#[derive(Debug)]
struct Current {
    id: u32,
    file: File,
    len: u64,
}

#[derive(Debug, Default)]
struct Books {
    /// Live bytes per pack.
    live: HashMap<u32, u64>,
    /// Packs written or zeroed since their last sync.
    dirty: BTreeSet<u32>,
    /// Values deleted but not yet zeroed, with the journal length once their deletion was
    /// journaled: they are zeroed after a sync that started at or after that length.
    released: Vec<(u64, Locator)>,
    /// Packs that hold nothing live any more: removed at the next checkpoint.
    retired: BTreeSet<u32>,
}

/// The packs of one sled folder.
#[derive(Debug)]
pub struct Packs {
    dir: PathBuf,
    current: Mutex<Current>,
    books: Mutex<Books>,
    /// Read handles, opened on first use.
    readers: RwLock<Readers>,
}

/// The cache of read handles.
#[derive(Debug, Default)]
struct Readers {
    open: HashMap<u32, Arc<File>>,
    /// Packs removed (or being removed): their handles are never cached again (pack ids are
    /// never reused while the store is open).
    removed: std::collections::HashSet<u32>,
}

/// What [`Packs::stats`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Pack files.
    pub packs: usize,
    /// Bytes of all pack files.
    pub bytes: u64,
    /// Bytes of live values.
    pub live: u64,
}

impl Packs {
    /// Opens the packs of `sled_dir` (creating the folder), appending after the newest one.
    pub fn open(sled_dir: &Path) -> Result<Self, StoreError> {
        let dir = sled_dir.join(PACK_DIR);
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let mut newest: Option<(u32, u64)> = None;
        for entry in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let Some(id) = entry.file_name().to_str().and_then(parse_name) else { continue };
            let len = entry.metadata().map_err(io_err("reading", &entry.path()))?.len();
            if newest.is_none_or(|(n, _)| id > n) {
                newest = Some((id, len));
            }
        }
        let current = match newest {
            Some((id, len)) if len < PACK_TARGET => Self::open_file(&dir, id)?,
            Some((id, _)) => Self::create_file(&dir, id + 1)?,
            None => Self::create_file(&dir, 1)?,
        };
        Ok(Self {
            dir,
            current: Mutex::new(current),
            books: Mutex::new(Books::default()),
            readers: RwLock::new(Readers::default()),
        })
    }

    fn path(&self, id: u32) -> PathBuf {
        self.dir.join(file_name(id))
    }

    fn open_file(dir: &Path, id: u32) -> Result<Current, StoreError> {
        let path = dir.join(file_name(id));
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io_err("opening", &path))?;
        let len = file.metadata().map_err(io_err("reading", &path))?.len();
        if len < PACK_MAGIC.len() as u64 {
            // A pack whose header never reached the disk holds nothing yet.
            write_at(&file, PACK_MAGIC, 0).map_err(io_err("writing", &path))?;
        }
        Ok(Current { id, file, len: len.max(PACK_MAGIC.len() as u64) })
    }

    fn create_file(dir: &Path, id: u32) -> Result<Current, StoreError> {
        let path = dir.join(file_name(id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("creating", &path))?;
        write_at(&file, PACK_MAGIC, 0).map_err(io_err("writing", &path))?;
        // The new file's directory entry must survive with the pack's first values: the folder
        // is synced at the checkpoint too, but a journal replay after a crash recreates the file
        // anyway (it rewrites every value the journal holds).
        Ok(Current { id, file, len: PACK_MAGIC.len() as u64 })
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Current> {
        // Every write is a positioned write; a panic leaves at worst unreferenced bytes.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `value` to the current pack (a new one once it is full); not synced.
    pub fn append(&self, value: &[u8]) -> Result<Locator, StoreError> {
        let mut cur = self.lock_current();
        if cur.len > PACK_MAGIC.len() as u64 && cur.len + value.len() as u64 > PACK_TARGET {
            // The full pack is synced at the next checkpoint like any other (it is dirty).
            *cur = Self::create_file(&self.dir, cur.id + 1)?;
        }
        let loc = Locator::of(cur.id, cur.len, value);
        let path = self.path(cur.id);
        write_at(&cur.file, value, cur.len).map_err(io_err("writing pack", &path))?;
        cur.len += value.len() as u64;
        let mut books = self.lock_books();
        books.dirty.insert(loc.pack);
        *books.live.entry(loc.pack).or_default() += u64::from(loc.len);
        Ok(loc)
    }

    /// Writes `value` where `loc` says (journal replay after a crash, whose page writes may not
    /// all have reached the disk). Counts nothing: [`Packs::account`] runs after replay.
    pub fn rewrite(&self, loc: &Locator, value: &[u8]) -> Result<(), StoreError> {
        let mut cur = self.lock_current();
        let path = self.path(loc.pack);
        if loc.pack == cur.id {
            write_at(&cur.file, value, loc.offset).map_err(io_err("writing pack", &path))?;
            cur.len = cur.len.max(loc.end());
        } else {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err("opening", &path))?;
            write_at(&file, PACK_MAGIC, 0).map_err(io_err("writing", &path))?;
            write_at(&file, value, loc.offset).map_err(io_err("writing pack", &path))?;
            if loc.pack > cur.id {
                // The journal knew a newer pack than the folder shows: append there from now on.
                drop(file);
                *cur = Self::open_file(&self.dir, loc.pack)?;
            }
        }
        drop(cur);
        self.lock_books().dirty.insert(loc.pack);
        Ok(())
    }

    /// Records the live values (every locator in the store), after open and replay.
    pub fn account(&self, live: impl Iterator<Item = Locator>) {
        let mut books = self.lock_books();
        books.live.clear();
        for loc in live {
            *books.live.entry(loc.pack).or_default() += u64::from(loc.len);
        }
    }

    /// Reads the value at `loc`: `None` if its pack is missing; a value cut short (a damaged
    /// pack) is returned as far as it goes, for the blob's authentication to refuse.
    pub fn read(&self, loc: &Locator) -> Result<Option<Vec<u8>>, StoreError> {
        if !loc.plausible() {
            // A damaged locator: nothing that large, or that far, was packed.
            return Ok(Some(Vec::new()));
        }
        let Some(file) = self.reader(loc.pack)? else { return Ok(None) };
        let mut buf = vec![0u8; loc.len as usize];
        let mut got = 0;
        while got < buf.len() {
            match read_at(&file, &mut buf[got..], loc.offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("reading pack", &self.path(loc.pack))(e)),
            }
        }
        buf.truncate(got);
        Ok(Some(buf))
    }

    fn reader(&self, id: u32) -> Result<Option<Arc<File>>, StoreError> {
        if let Some(f) = self.readers.read().unwrap_or_else(|p| p.into_inner()).open.get(&id) {
            return Ok(Some(f.clone()));
        }
        let path = self.path(id);
        let file = match File::open(&path) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        // `remove_retired` marks a pack removed, and drops its handle, under this lock before
        // it unlinks the file: a handle opened before the unlink is never cached after that (it
        // would keep a removed pack's disk space allocated for as long as the store is open).
        let mut readers = self.readers.write().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = readers.open.get(&id) {
            return Ok(Some(f.clone()));
        }
        if !readers.removed.contains(&id) {
            readers.open.insert(id, file.clone());
        }
        Ok(Some(file))
    }

    /// A value at `loc` is deleted (or replaced) by a batch whose journal record ends at
    /// `journal_len`: it is zeroed once a sync covering that record has run.
    pub fn release(&self, loc: Locator, journal_len: u64) {
        let mut books = self.lock_books();
        let live = books.live.entry(loc.pack).or_default();
        *live = live.saturating_sub(u64::from(loc.len));
        books.released.push((journal_len, loc));
    }

    /// After a journal sync that started when the journal was `synced_len` long: zeroes every
    /// value released by a record up to there, and syncs the packs it zeroed.
    pub fn after_sync(&self, synced_len: u64) -> Result<(), StoreError> {
        let due: Vec<Locator> = {
            let mut books = self.lock_books();
            if books.released.is_empty() {
                return Ok(());
            }
            let (due, later): (Vec<_>, Vec<_>) = books.released.drain(..).partition(|(at, _)| *at <= synced_len);
            books.released = later;
            due.into_iter().map(|(_, l)| l).collect()
        };
        self.zero(&due)
    }

    /// Zeroes the values at `locs` and syncs their packs.
    pub fn zero(&self, locs: &[Locator]) -> Result<(), StoreError> {
        let mut packs: BTreeMap<u32, Vec<&Locator>> = BTreeMap::new();
        for l in locs {
            packs.entry(l.pack).or_default().push(l);
        }
        let current = self.lock_current().id;
        for (id, locs) in packs {
            let path = self.path(id);
            let file = match OpenOptions::new().write(true).open(&path) {
                Ok(f) => f,
                // Removed already (compacted away): nothing left to zero.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("opening", &path)(e)),
            };
            for l in locs {
                // Only the value the locator was made for is zeroed: a damaged locator must not
                // destroy the values around it (its own bytes then stay, and `check` reports it).
                if !l.plausible() || !self.read(l)?.is_some_and(|b| l.matches(&b)) {
                    continue;
                }
                write_at(&file, &vec![0u8; l.len as usize], l.offset).map_err(io_err("zeroing pack", &path))?;
            }
            file.sync_data().map_err(io_err("syncing pack", &path))?;
            let mut books = self.lock_books();
            if id != current && books.live.get(&id).copied().unwrap_or(0) == 0 {
                books.retired.insert(id);
            }
        }
        Ok(())
    }

    /// Makes every pack written since the last call durable (before a checkpoint empties the
    /// journal that could rewrite them), with the folder.
    pub fn sync(&self) -> Result<(), StoreError> {
        let dirty: Vec<u32> = std::mem::take(&mut self.lock_books().dirty).into_iter().collect();
        for id in &dirty {
            let path = self.path(*id);
            match File::open(&path) {
                Ok(f) => f.sync_data().map_err(io_err("syncing pack", &path))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("opening", &path)(e)),
            }
        }
        if !dirty.is_empty() {
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err("syncing", &self.dir))?;
        }
        Ok(())
    }

    /// Removes the packs that hold nothing live (after a checkpoint emptied the journal, so no
    /// replay can write into them again). Returns how many were removed.
    pub fn remove_retired(&self) -> Result<usize, StoreError> {
        let retired: Vec<u32> = std::mem::take(&mut self.lock_books().retired).into_iter().collect();
        let current = self.lock_current().id;
        let mut removed = 0;
        for id in retired.into_iter().filter(|id| *id != current) {
            if self.lock_books().live.get(&id).copied().unwrap_or(0) > 0 {
                continue;
            }
            // Before the unlink, and without holding the lock across it (see `reader`).
            {
                let mut readers = self.readers.write().unwrap_or_else(|p| p.into_inner());
                readers.removed.insert(id);
                readers.open.remove(&id);
            }
            let path = self.path(id);
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &path)(e)),
            }
        }
        Ok(removed)
    }

    /// Whether some pack waits for a checkpoint to be removed.
    pub fn has_retired(&self) -> bool {
        !self.lock_books().retired.is_empty()
    }

    /// The packs that hold less than half live bytes (if the current one is among them, a new
    /// pack becomes current); the non-current ones with nothing live are retired instead.
    pub fn sparse(&self) -> Result<Vec<u32>, StoreError> {
        let current = self.lock_current().id;
        let sizes = self.sizes()?;
        let mut books = self.lock_books();
        let mut out = Vec::new();
        for (id, size) in sizes {
            let live = books.live.get(&id).copied().unwrap_or(0);
            if id != current && live == 0 {
                // Nothing live (its values were deleted before a restart): removed at the next
                // checkpoint.
                books.retired.insert(id);
            } else if live * 2 < size && size - live >= MIN_DEAD {
                out.push(id);
            }
        }
        drop(books);
        if out.contains(&current) {
            // The values moved out of the current pack go to a new one.
            let mut cur = self.lock_current();
            if cur.id == current {
                *cur = Self::create_file(&self.dir, current + 1)?;
            }
        }
        Ok(out)
    }

    /// Every pack's id and length.
    fn sizes(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))? {
            let entry = entry.map_err(io_err("listing", &self.dir))?;
            let Some(id) = entry.file_name().to_str().and_then(parse_name) else { continue };
            out.push((id, entry.metadata().map_err(io_err("reading", &entry.path()))?.len()));
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Pack files, their bytes and the live bytes in them.
    pub fn stats(&self) -> Result<PackStats, StoreError> {
        let sizes = self.sizes()?;
        let live = self.lock_books().live.values().sum();
        Ok(PackStats { packs: sizes.len(), bytes: sizes.iter().map(|(_, s)| s).sum(), live })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn locators_round_trip(pack: u32, offset: u64, value in proptest::collection::vec(any::<u8>(), 0..300)) {
            let loc = Locator::of(pack, offset, &value);
            let enc = loc.encode();
            prop_assert_eq!(enc.len(), LOCATOR_LEN);
            prop_assert_eq!(Locator::decode(&enc), Some(loc));
            prop_assert!(loc.matches(&value));
        }

        #[test]
        fn other_values_are_not_locators(v in proptest::collection::vec(any::<u8>(), 0..100)) {
            if !(v.len() == LOCATOR_LEN && v.starts_with(LOCATOR_MAGIC)) {
                prop_assert_eq!(Locator::decode(&v), None);
            }
        }
    }

    #[test]
    fn the_locator_test_vector_of_spec_section_8() {
        let loc = Locator::of(1, 8, b"abc");
        assert_eq!(
            hex::encode(loc.encode()),
            "5641554c5450414b00000001000000000000000800000003\
             6437b3ac38465133ffb63b75273a8db5"
        );
    }

    #[test]
    fn a_stored_blob_is_never_read_as_a_locator() {
        let mut blob = b"VAULTBLB".to_vec();
        blob.resize(LOCATOR_LEN, 0);
        assert_eq!(Locator::decode(&blob), None);
    }

    #[test]
    fn append_read_zero_and_retire() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path()).unwrap();
        let a = packs.append(b"first value").unwrap();
        let b = packs.append(b"second").unwrap();
        assert_eq!(a.offset, 8);
        assert_eq!(b.offset, 8 + 11);
        assert_eq!(packs.read(&a).unwrap().unwrap(), b"first value");
        packs.release(a, 100);
        // Not before a sync that covers the deletion.
        packs.after_sync(99).unwrap();
        assert_eq!(packs.read(&a).unwrap().unwrap(), b"first value");
        packs.after_sync(100).unwrap();
        assert_eq!(packs.read(&a).unwrap().unwrap(), vec![0u8; 11]);
        assert_eq!(packs.read(&b).unwrap().unwrap(), b"second");
        let raw = std::fs::read(dir.path().join(PACK_DIR).join(file_name(1))).unwrap();
        assert!(!raw.windows(11).any(|w| w == b"first value"));
    }

    #[test]
    fn a_removed_pack_keeps_no_cached_handle_while_reads_race_its_removal() {
        for _ in 0..100 {
            let dir = tempfile::tempdir().unwrap();
            let packs = Arc::new(Packs::open(dir.path()).unwrap());
            let a = packs.append(&vec![7u8; 100 * 1024]).unwrap();
            packs.release(a, 1);
            packs.after_sync(1).unwrap();
            // Pack 1 is sparse and current: a new pack becomes current, the next call retires 1.
            assert_eq!(packs.sparse().unwrap(), vec![1]);
            packs.sparse().unwrap();
            assert!(packs.has_retired());
            // The zeroing read pack 1 (and cached its handle): the racing read opens it afresh.
            packs.readers.write().unwrap().open.clear();
            let start = Arc::new(std::sync::Barrier::new(2));
            let reader = {
                let (packs, start) = (packs.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    packs.read(&a).unwrap();
                })
            };
            start.wait();
            assert_eq!(packs.remove_retired().unwrap(), 1);
            reader.join().unwrap();
            assert!(!dir.path().join(PACK_DIR).join(file_name(1)).exists());
            assert!(!packs.readers.read().unwrap().open.contains_key(&1), "a handle to a removed pack was cached");
        }
    }

    #[test]
    fn a_full_pack_rolls_over_and_reopening_appends_to_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let packs = Packs::open(dir.path()).unwrap();
        let a = packs.append(b"x").unwrap();
        drop(packs);
        let packs = Packs::open(dir.path()).unwrap();
        let b = packs.append(b"y").unwrap();
        assert_eq!((a.pack, b.pack, b.offset), (1, 1, 9));
        assert_eq!(parse_name("0000000a.pack"), Some(10));
        assert_eq!(parse_name("a.pack"), None);
    }
}
