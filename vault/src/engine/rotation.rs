//! Master-key rotation: re-wraps the index key, the signing key and every owner key under a new
//! master key, without re-encrypting any blob or record. Resumable: every step is idempotent,
//! and a marker sealed under the new key says a rotation is under way, so a crash at any point
//! is finished by running the rotation again with the same two keys. The old key is retired
//! only after every wrapped key has been verified to open under the new one.

use crate::crypto::keys::MasterKey;
use crate::crypto::seal::{self, aad};
use crate::storage::layout::{prefix, KEY_INDEX_KEY, KEY_ROTATION, KEY_SIGNING};
use crate::storage::{MetaStore, Op};
use crate::Error;

const WRAPPED: [&[u8]; 2] = [KEY_INDEX_KEY, KEY_SIGNING];
/// Records re-wrapped per durable batch.
const BATCH: usize = 16;

/// What a rotation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// Whether an interrupted rotation was resumed.
    pub resumed: bool,
    /// Wrapped keys re-wrapped by this run.
    pub rewrapped: u64,
    /// Wrapped keys already under the new key (from an interrupted run).
    pub already_new: u64,
}

/// Rotates the master key of the (closed) vault in `dir` from `old` to `new`.
#[cfg(feature = "embedded")]
pub fn rotate_master_key(dir: &std::path::Path, old: &MasterKey, new: &MasterKey) -> Result<RotationReport, Error> {
    let meta = crate::storage::sled::SledMeta::open(&dir.join("meta"))?;
    rotate(&meta, old, new)
}

/// [`rotate_master_key`] over any metadata store (the blob store is not touched).
pub fn rotate(meta: &dyn MetaStore, old: &MasterKey, new: &MasterKey) -> Result<RotationReport, Error> {
    let old_wrap = old.wrap_key();
    let new_wrap = new.wrap_key();
    let mut report = RotationReport::default();
    match meta.get(KEY_ROTATION)? {
        Some(marker) => {
            seal::open(&new_wrap, &aad(KEY_ROTATION), &marker).map_err(|_| {
                Error::InvalidRequest("a rotation to a different new key is under way; resume it with that key".into())
            })?;
            report.resumed = true;
        }
        None => {
            if old == new {
                return Err(Error::InvalidRequest("the new master key equals the old one".into()));
            }
            let index = meta.get(WRAPPED[0])?.ok_or_else(|| Error::Corrupt("vault has no index key".into()))?;
            seal::open(&old_wrap, &aad(WRAPPED[0]), &index).map_err(|_| Error::WrongMasterKey)?;
            meta.apply(vec![Op::Put(KEY_ROTATION.to_vec(), seal::seal(&new_wrap, &aad(KEY_ROTATION), b"rotating"))])?;
            meta.sync()?;
        }
    }
    // Owner keys first, then the vault's own keys; every record under exactly one of the keys.
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for item in meta.scan(&[prefix::OWNER]) {
        keys.push(item?.0);
    }
    keys.extend(WRAPPED.iter().map(|k| k.to_vec()));
    let mut batch = Vec::new();
    for key in &keys {
        let Some(value) = meta.get(key)? else { continue };
        if seal::open(&new_wrap, &aad(key), &value).is_ok() {
            report.already_new += 1;
            continue;
        }
        let plain = seal::open(&old_wrap, &aad(key), &value).map_err(|_| {
            Error::Corrupt(format!("{} opens with neither key", crate::engine::vault::describe_key(key)))
        })?;
        batch.push(Op::Put(key.clone(), seal::seal(&new_wrap, &aad(key), &plain)));
        report.rewrapped += 1;
        if batch.len() == BATCH {
            meta.apply(std::mem::take(&mut batch))?;
            meta.sync()?;
        }
    }
    meta.apply(batch)?;
    meta.sync()?;
    // Verify everything under the new key before retiring the old one.
    for key in &keys {
        if let Some(value) = meta.get(key)? {
            seal::open(&new_wrap, &aad(key), &value).map_err(|_| {
                Error::Corrupt(format!("{} does not open with the new key", crate::engine::vault::describe_key(key)))
            })?;
        }
    }
    meta.apply(vec![Op::Delete(KEY_ROTATION.to_vec())])?;
    meta.sync()?;
    Ok(report)
}
