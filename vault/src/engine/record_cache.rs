//! Unsealed metadata records, each kept with the sealed bytes it was opened from.
//!
//! A read still fetches the sealed value from the metadata store; only when those bytes are
//! exactly the ones a record was opened from is the opened record reused (no decryption, no
//! JSON parse). That is exact by construction, with no invalidation to get wrong, in this
//! process or across several sharing one store: every write seals a record under a fresh random
//! nonce (SPEC.md §4), so a changed, revoked or counted grant, a revoked document or a deleted
//! record never has the bytes of the one cached. A deleted record is dropped from the cache
//! when its deletion is applied, and erasure empties the cache, so an erased owner's records do
//! not stay in memory (SPEC.md §17); a reader that fetched a record before such a change does
//! not put it back (the change moves the cache's epoch on, and a record fetched in an earlier
//! epoch is returned but not kept).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Most records kept (about 1–3 KiB each).
const CAPACITY: usize = 4096;

type Slot = (Vec<u8>, Arc<dyn Any + Send + Sync>);

/// The cache (see the module documentation).
#[derive(Default)]
pub(crate) struct RecordCache {
    map: Mutex<HashMap<Vec<u8>, Slot>>,
    /// Moved on (under the map's lock) by every eviction and clear.
    epoch: AtomicU64,
}

impl std::fmt::Debug for RecordCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordCache").field("len", &self.lock().len()).finish()
    }
}

impl RecordCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Slot>> {
        // Every update is one insert, remove or clear: a poisoned map is still consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The epoch to read before fetching records from the store (see [`Self::get_or_open`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The record stored at `key` as `sealed` (fetched after `epoch` was read), opened by
    /// `open` unless it was opened from exactly these bytes before; kept only if no eviction
    /// or clear happened since `epoch`.
    pub(crate) fn get_or_open<T: Clone + Send + Sync + 'static>(
        &self,
        epoch: u64,
        key: &[u8],
        sealed: &[u8],
        open: impl FnOnce() -> Option<T>,
    ) -> Option<T> {
        if let Some((bytes, value)) = self.lock().get(key) {
            if bytes.as_slice() == sealed {
                if let Some(v) = value.downcast_ref::<T>() {
                    return Some(v.clone());
                }
            }
        }
        let v = open()?;
        let mut map = self.lock();
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return Some(v);
        }
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(key.to_vec(), (sealed.to_vec(), Arc::new(v.clone())));
        Some(v)
    }

    /// Keeps `value` as the record stored at `key` as `sealed`, which the caller just sealed
    /// and is writing (write-through: a hot record rewritten on every use, such as a grant's
    /// count, is then not opened again by its next reader). Exact for the same reason as every
    /// hit: the entry is used only while the store holds exactly these bytes. The caller holds
    /// the owner's change lock, so an erasure's clear cannot come between.
    pub(crate) fn put<T: Send + Sync + 'static>(&self, key: &[u8], sealed: &[u8], value: T) {
        let mut map = self.lock();
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(key.to_vec(), (sealed.to_vec(), Arc::new(value)));
    }

    /// Forgets every record.
    pub(crate) fn clear(&self) {
        let mut map = self.lock();
        map.clear();
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Forgets the records at `keys` (being deleted).
    pub(crate) fn evict<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) {
        let mut keys = keys.peekable();
        if keys.peek().is_none() {
            return;
        }
        let mut map = self.lock();
        for k in keys {
            map.remove(k);
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_needs_the_same_bytes_and_type() {
        let c = RecordCache::default();
        let mut opened = 0;
        let mut open = |v: u32| {
            opened += 1;
            Some(v)
        };
        let e = c.epoch();
        assert_eq!(c.get_or_open(e, b"k", b"sealed-1", || open(1)), Some(1));
        assert_eq!(c.get_or_open(e, b"k", b"sealed-1", || open(99)), Some(1), "same bytes: reused");
        assert_eq!(c.get_or_open(e, b"k", b"sealed-2", || open(2)), Some(2), "rewritten: opened again");
        assert_eq!(c.get_or_open(e, b"k", b"sealed-2", || Some("other type")), Some("other type"));
        assert_eq!(c.get_or_open::<u32>(e, b"k", b"sealed-3", || None), None, "a record that does not open");
        assert_eq!(opened, 2);
        // A record fetched before an eviction is returned but not kept.
        let before = c.epoch();
        c.evict([&b"other"[..]].into_iter());
        assert_eq!(c.get_or_open(before, b"late", b"s", || Some(7u32)), Some(7));
        assert!(!c.lock().contains_key(&b"late"[..]), "fetched before the eviction: not kept");
        c.put(b"w", b"sealed-w", 5u32);
        assert_eq!(c.get_or_open(c.epoch(), b"w", b"sealed-w", || None::<u32>), Some(5), "written through");
        c.evict([&b"k"[..]].into_iter());
        assert!(!c.lock().contains_key(&b"k"[..]), "evicted");
        c.clear();
        assert_eq!(c.len(), 0);
        let e = c.epoch();
        for i in 0..(CAPACITY as u32 + 10) {
            c.get_or_open(e, &i.to_be_bytes(), b"s", || Some(i));
        }
        assert!(c.len() <= CAPACITY, "bounded");
    }
}
