//! In-memory storage backends that keep apart what was synced and what was not, so that tests
//! can cut the power: [`MemMeta::crash`] and [`MemBlobs::crash`] return the store as a machine
//! would find it after a power loss (only what a completed `sync` covered, plus, for the
//! metadata, any prefix of the batches applied after it, as an append-only journal may keep).
//! They are the reference backends of the storage conformance suite (`tests/store_conformance.rs`)
//! and back power-loss tests of the whole vault. Nothing is kept on disk.

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::{BlobListing, BlobName, BlobRead, BlobStore, MetaStore, NewBlob, Op, ScanIter, StoreError};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update below is whole (a map insert or a replace of the state): a panic elsewhere
    // leaves the state consistent, so a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Default, Clone)]
struct MetaState {
    /// What readers see.
    live: Map,
    /// What the last completed sync made durable.
    durable: Map,
    /// Batches applied since then, in order (a crash keeps a prefix of them).
    unsynced: Vec<Vec<Op>>,
    /// The signed-checkpoint floor (kept outside the database: durable when raised).
    floor: Option<(u64, [u8; 32])>,
}

fn apply_to(map: &mut Map, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Put(k, v) => {
                map.insert(k.clone(), v.clone());
            }
            Op::Delete(k) => {
                map.remove(k);
            }
        }
    }
}

/// An in-memory [`MetaStore`] with power-loss simulation. Clones share one store (a test
/// keeps one to cut the power of the store it handed to a vault).
#[derive(Debug, Default, Clone)]
pub struct MemMeta {
    state: Arc<Mutex<MetaState>>,
}

impl MemMeta {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store after a power loss: what was synced, plus the first `keep_unsynced` batches
    /// applied after the last sync (at most as many as there were).
    pub fn crash(&self, keep_unsynced: usize) -> MemMeta {
        let st = lock(&self.state);
        let mut durable = st.durable.clone();
        for batch in st.unsynced.iter().take(keep_unsynced) {
            apply_to(&mut durable, batch);
        }
        MemMeta {
            state: Arc::new(Mutex::new(MetaState {
                live: durable.clone(),
                durable,
                unsynced: Vec::new(),
                floor: st.floor,
            })),
        }
    }

    /// Batches applied since the last sync.
    pub fn unsynced_batches(&self) -> usize {
        lock(&self.state).unsynced.len()
    }
}

impl MetaStore for MemMeta {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(lock(&self.state).live.get(key).cloned())
    }

    fn scan(&self, prefix: &[u8]) -> ScanIter<'_> {
        let st = lock(&self.state);
        let items: Vec<_> = st
            .live
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| Ok((k.clone(), v.clone())))
            .collect();
        Box::new(items.into_iter())
    }

    fn scan_from(&self, prefix: &[u8], start: &[u8]) -> ScanIter<'_> {
        let st = lock(&self.state);
        let from = if start > prefix { start.to_vec() } else { prefix.to_vec() };
        let items: Vec<_> = st
            .live
            .range(from..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| Ok((k.clone(), v.clone())))
            .collect();
        Box::new(items.into_iter())
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut st = lock(&self.state);
        apply_to(&mut st.live, &ops);
        st.unsynced.push(ops);
        Ok(())
    }

    fn compare_and_swap(&self, key: &[u8], old: Option<&[u8]>, new: Option<Vec<u8>>) -> Result<bool, StoreError> {
        let mut st = lock(&self.state);
        if st.live.get(key).map(Vec::as_slice) != old {
            return Ok(false);
        }
        let op = match new {
            Some(v) => Op::Put(key.to_vec(), v),
            None => Op::Delete(key.to_vec()),
        };
        apply_to(&mut st.live, std::slice::from_ref(&op));
        st.unsynced.push(vec![op]);
        Ok(true)
    }

    fn sync(&self) -> Result<(), StoreError> {
        let mut st = lock(&self.state);
        let batches = std::mem::take(&mut st.unsynced);
        for b in &batches {
            apply_to(&mut st.durable, b);
        }
        Ok(())
    }

    fn signed_floor(&self) -> Option<(u64, [u8; 32])> {
        lock(&self.state).floor
    }

    fn raise_signed_floor(&self, size: u64, root: [u8; 32]) -> Result<(), StoreError> {
        let mut st = lock(&self.state);
        if st.floor.is_none_or(|(s, _)| size > s) {
            st.floor = Some((size, root));
        }
        Ok(())
    }
}

#[derive(Debug, Default, Clone)]
struct BlobState {
    live: HashMap<BlobName, Arc<Vec<u8>>>,
    durable: HashMap<BlobName, Arc<Vec<u8>>>,
    /// Blobs set aside (durable at once, as the embedded store's rename and sync).
    aside: HashMap<BlobName, Arc<Vec<u8>>>,
}

/// An in-memory [`BlobStore`] with power-loss simulation: a committed blob (or a removal) is
/// durable once a later [`BlobStore::sync`] has returned. Clones share one store.
#[derive(Debug, Default, Clone)]
pub struct MemBlobs {
    state: Arc<Mutex<BlobState>>,
}

impl MemBlobs {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store after a power loss: the blobs as the last completed sync left them.
    pub fn crash(&self) -> MemBlobs {
        let st = lock(&self.state);
        MemBlobs {
            state: Arc::new(Mutex::new(BlobState {
                live: st.durable.clone(),
                durable: st.durable.clone(),
                aside: st.aside.clone(),
            })),
        }
    }
}

/// A blob being written: bytes in memory until committed.
struct MemNewBlob {
    buf: Cursor<Vec<u8>>,
    state: Arc<Mutex<BlobState>>,
    owner: [u8; 16],
}

impl Write for MemNewBlob {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for MemNewBlob {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.buf.seek(pos)
    }
}

impl NewBlob for MemNewBlob {
    fn commit(self: Box<Self>, name: &BlobName) -> Result<(), StoreError> {
        if name.owner != self.owner {
            return Err(StoreError::Io {
                what: "committing a blob under another owner".into(),
                source: std::io::Error::other("owner mismatch"),
            });
        }
        lock(&self.state).live.insert(*name, Arc::new(self.buf.into_inner()));
        Ok(())
    }
}

impl BlobStore for MemBlobs {
    fn create(&self, owner: &[u8; 16]) -> Result<Box<dyn NewBlob>, StoreError> {
        Ok(Box::new(MemNewBlob { buf: Cursor::new(Vec::new()), state: self.state.clone(), owner: *owner }))
    }

    fn sync(&self) -> Result<(), StoreError> {
        let mut st = lock(&self.state);
        st.durable = st.live.clone();
        Ok(())
    }

    fn open(&self, name: &BlobName) -> Result<Option<Box<dyn BlobRead>>, StoreError> {
        Ok(lock(&self.state).live.get(name).map(|b| Box::new(Cursor::new(b.as_ref().clone())) as Box<dyn BlobRead>))
    }

    fn len(&self, name: &BlobName) -> Result<Option<u64>, StoreError> {
        Ok(lock(&self.state).live.get(name).map(|b| b.len() as u64))
    }

    fn remove(&self, name: &BlobName) -> Result<(), StoreError> {
        lock(&self.state).live.remove(name);
        Ok(())
    }

    fn remove_owner(&self, owner: &[u8; 16]) -> Result<usize, StoreError> {
        let mut st = lock(&self.state);
        let before = st.live.len();
        st.live.retain(|n, _| &n.owner != owner);
        // Set-aside blobs of the owner go too (as in the other stores).
        st.aside.retain(|n, _| &n.owner != owner);
        Ok(before - st.live.len())
    }

    fn list(&self) -> Result<BlobListing, StoreError> {
        let mut blobs: Vec<BlobName> = lock(&self.state).live.keys().copied().collect();
        blobs.sort();
        Ok(BlobListing { blobs, strays: Vec::new(), unfinished: Vec::new() })
    }

    fn discard_unfinished(&self) -> Result<usize, StoreError> {
        // A blob not committed exists only in its writer's memory.
        Ok(0)
    }

    fn describe(&self, name: &BlobName) -> String {
        format!("memory blob {name:?}")
    }

    fn kind(&self) -> String {
        "memory".into()
    }

    fn set_aside(&self, name: &BlobName) -> Result<bool, StoreError> {
        let mut st = lock(&self.state);
        let Some(b) = st.live.remove(name) else { return Ok(false) };
        st.durable.remove(name);
        st.aside.insert(*name, b);
        Ok(true)
    }

    fn set_aside_list(&self) -> Result<Vec<String>, StoreError> {
        let mut out: Vec<String> = lock(&self.state).aside.keys().map(|n| format!("memory blob {n:?}")).collect();
        out.sort();
        Ok(out)
    }
}
