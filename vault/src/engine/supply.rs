//! Possession before deposit (SPEC.md §13, §14): which agency supplied which content for which
//! owner, the bound on what one agency may hold pending, and the sweep that removes agency
//! uploads no document uses within [`PENDING_LIFETIME_SECS`].
//!
//! A *supply record* says "agency A supplied the bytes of digest D for owner O at time T". It
//! is written in the same atomic batch as the upload's content record (or as the one-step
//! deposit), under `"P"` + owner ref + blob name + agency tag (SPEC.md §6), sealed with the
//! owner's records key. An agency deposits, and `contents/missing` answers it "held", only on
//! the strength of such a record; a digest and a size are never enough.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::engine::vault::{open_record, ContentRecord, OwnerCtx, Vault};
use crate::ids::{AgencyId, Digest};
use crate::storage::layout::{self, inline_key, prefix};
use crate::storage::Op;
use crate::time::Timestamp;
use crate::Error;

/// How long an agency's upload may wait for a document that uses it (api.md: 24 hours).
pub const PENDING_LIFETIME_SECS: i64 = 24 * 3600;

/// Who supplies a content: decides the possession bookkeeping of a put.
#[derive(Debug, Clone, Copy)]
pub(crate) enum By<'a> {
    /// The owner, or the trusted embedding API.
    Owner,
    /// A registered agency (for a deposit that follows, or in the same step).
    Agency(&'a AgencyId),
}

/// One supply record (sealed with the owner's records key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Supply {
    pub agency: AgencyId,
    pub digest: Digest,
    pub size: u64,
    /// The latest time the agency supplied these bytes.
    pub supplied_at: Timestamp,
    /// A document deposited by this agency uses the content (the upload is no longer pending).
    #[serde(default)]
    pub used: bool,
}

impl Supply {
    /// Pending: no document of this agency uses it yet.
    pub fn pending(&self) -> bool {
        !self.used
    }

    fn expired(&self, now: Timestamp) -> bool {
        self.supplied_at.plus_seconds(PENDING_LIFETIME_SECS) <= now
    }
}

/// The key of a supply record: owner ref (16), the content's blob name (32, a keyed hash of the
/// digest), and a keyed tag of the agency id (16). Neither id appears in clear; the records of
/// one content are one prefix scan.
pub(crate) fn supply_key(o: &OwnerCtx, digest: &Digest, agency: &AgencyId) -> Vec<u8> {
    layout::supply_key(&o.op, &o.keys.blob_name(digest), &agency_tag(o, agency))
}

/// The prefix of every supply record of one content.
pub(crate) fn supply_prefix(o: &OwnerCtx, digest: &Digest) -> Vec<u8> {
    layout::supplies_of(&o.op, &o.keys.blob_name(digest))
}

fn agency_tag(o: &OwnerCtx, agency: &AgencyId) -> [u8; 16] {
    // The deposit-tag key over a two-part input with its own label: no deposit tag (four parts)
    // has this encoding.
    o.keys.deposit_tag(&[b"\0vault-supply-v1\0", agency.as_str().as_bytes()])
}

/// The most one agency may hold pending (uploads no document of it uses yet), over all owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimits {
    /// Most pending uploads.
    pub max_count: u64,
    /// Most pending bytes (plaintext sizes).
    pub max_bytes: u64,
}

impl Default for PendingLimits {
    fn default() -> Self {
        Self { max_count: 100_000, max_bytes: 10 << 30 }
    }
}

/// Pending agency uploads, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingStats {
    /// Agency uploads no document uses yet.
    pub pending_uploads: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// Pending uploads removed by the sweep since the vault was opened.
    pub removed_uploads: u64,
    /// Their bytes.
    pub removed_bytes: u64,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Supply records removed (expired pending uploads, and records whose content is gone).
    pub claims_removed: u64,
    /// Contents removed with them (no owner upload, document or other claim needed them).
    pub contents_removed: u64,
    /// Plaintext bytes of the contents removed.
    pub bytes_removed: u64,
}

#[derive(Debug, Default)]
struct Counts {
    /// Whether `by_agency` has been computed from storage.
    loaded: bool,
    by_agency: HashMap<AgencyId, (u64, u64)>,
    removed_uploads: u64,
    removed_bytes: u64,
}

/// In-memory bookkeeping of pending uploads: per-agency counts (recomputed from storage at
/// each sweep, adjusted as uploads come and go in between) and the limits.
#[derive(Debug, Default)]
pub(crate) struct SupplyState {
    counts: Mutex<Counts>,
    limits: Mutex<PendingLimits>,
}

impl SupplyState {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Plain counters: a poisoned lock holds nothing half-updated that matters.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Vault {
    /// Sets the most one agency may hold pending (default 100,000 uploads, 10 GiB).
    pub fn set_pending_limits(&self, limits: PendingLimits) {
        *self.supply.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// Pending agency uploads now (as counted since the last sweep) and removed ones.
    pub fn pending_stats(&self) -> Result<PendingStats, Error> {
        self.ensure_counted()?;
        let c = self.supply.counts();
        let (n, b) = c.by_agency.values().fold((0u64, 0u64), |(n, b), (cn, cb)| (n + cn, b + cb));
        Ok(PendingStats {
            pending_uploads: n,
            pending_bytes: b,
            removed_uploads: c.removed_uploads,
            removed_bytes: c.removed_bytes,
        })
    }

    fn ensure_counted(&self) -> Result<(), Error> {
        if !self.supply.counts().loaded {
            self.sweep_inner(None)?;
        }
        Ok(())
    }

    /// Refuses a new pending upload of `size` bytes by `agency` beyond its limits
    /// ([`Error::TooManyPending`]).
    pub(crate) fn check_pending_room(&self, agency: &AgencyId, size: u64) -> Result<(), Error> {
        self.ensure_counted()?;
        let limits = *self.supply.limits.lock().unwrap_or_else(|p| p.into_inner());
        let (n, b) = self.supply.counts().by_agency.get(agency).copied().unwrap_or((0, 0));
        if n.saturating_add(1) > limits.max_count || b.saturating_add(size) > limits.max_bytes {
            return Err(Error::TooManyPending(format!(
                "this agency holds {n} uploads ({b} bytes) that no document uses yet; deposit or wait for them to expire"
            )));
        }
        Ok(())
    }

    /// Adjusts the pending counts of `agency` by one upload of `size` bytes.
    pub(crate) fn count_pending(&self, agency: &AgencyId, size: u64, added: bool) {
        let mut c = self.supply.counts();
        let e = c.by_agency.entry(agency.clone()).or_default();
        if added {
            e.0 += 1;
            e.1 += size;
        } else {
            e.0 = e.0.saturating_sub(1);
            e.1 = e.1.saturating_sub(size);
        }
    }

    /// The supply record of `agency` for `digest`, if any.
    pub(crate) fn supply_of(&self, o: &OwnerCtx, digest: &Digest, agency: &AgencyId) -> Result<Option<Supply>, Error> {
        let s: Option<Supply> = self.get_sealed(&o.keys, &supply_key(o, digest, agency))?;
        Ok(s.filter(|s| &s.agency == agency && &s.digest == digest))
    }

    /// The supply record to write when `agency` supplies `digest` (`size` bytes) now, used by a
    /// document of it or not; with the change in pending count it makes (+1, 0 or -1).
    pub(crate) fn supply_op(
        &self,
        o: &OwnerCtx,
        digest: &Digest,
        size: u64,
        agency: &AgencyId,
        used: bool,
        prior: Option<&Supply>,
    ) -> (Op, i8) {
        let was_pending = prior.is_some_and(Supply::pending);
        let s = Supply {
            agency: agency.clone(),
            digest: *digest,
            size,
            supplied_at: crate::time::Timestamp::now(),
            used: used || prior.is_some_and(|p| p.used),
        };
        let delta = i8::from(s.pending()) - i8::from(was_pending);
        let key = supply_key(o, digest, agency);
        (Op::Put(key.clone(), crate::engine::vault::seal_record(&o.keys, &key, &s)), delta)
    }

    /// Applies a pending-count change made by [`Vault::supply_op`].
    pub(crate) fn apply_pending_delta(&self, agency: &AgencyId, size: u64, delta: i8) {
        match delta {
            1 => self.count_pending(agency, size, true),
            -1 => self.count_pending(agency, size, false),
            _ => {}
        }
    }

    /// Removes agency uploads that no document uses within [`PENDING_LIFETIME_SECS`] of their
    /// last supply, as of `now`: the supply record always; the content record and its bytes
    /// only if no owner upload, no document and no other agency's supply record needs them.
    /// Also drops supply records whose content or owner is gone, and recounts what is pending.
    pub fn sweep_pending(&self, now: Timestamp) -> Result<SweepReport, Error> {
        self.sweep_inner(Some(now))
    }

    fn sweep_inner(&self, now: Option<Timestamp>) -> Result<SweepReport, Error> {
        let mut report = SweepReport::default();
        let mut totals: HashMap<AgencyId, (u64, u64)> = HashMap::new();
        let mut items = Vec::new();
        for item in self.meta().scan(&[prefix::SUPPLY]) {
            items.push(item?);
        }
        for (k, v) in items {
            if k.len() != 65 {
                continue;
            }
            let mut op = [0u8; 16];
            op.copy_from_slice(&k[1..17]);
            let Some(o) = self.owner_by_ref(&op)? else {
                // The owner was erased: nothing of theirs may stay.
                if now.is_some() {
                    self.apply_durable(vec![Op::Delete(k)])?;
                    report.claims_removed += 1;
                }
                continue;
            };
            let Some(s) = open_record::<Supply>(&o.keys, &k, &v) else { continue };
            let keep = match now {
                None => true,
                Some(now) => !s.expired(now) || (s.used && self.content_refs(&o, &s.digest)? > 0),
            };
            if keep {
                if s.pending() {
                    let e = totals.entry(s.agency.clone()).or_default();
                    e.0 += 1;
                    e.1 += s.size;
                }
                continue;
            }
            if let Some(now) = now {
                if self.remove_supply(&o, &k, &s, now, &mut report)? {
                    if s.pending() {
                        let mut c = self.supply.counts();
                        c.removed_uploads += 1;
                        c.removed_bytes += s.size;
                    }
                } else if s.pending() {
                    let e = totals.entry(s.agency.clone()).or_default();
                    e.0 += 1;
                    e.1 += s.size;
                }
            }
        }
        let mut c = self.supply.counts();
        c.by_agency = totals;
        c.loaded = true;
        Ok(report)
    }

    fn content_refs(&self, o: &OwnerCtx, digest: &Digest) -> Result<u64, Error> {
        let ckey = layout::content_key(&o.op, &o.keys.blob_name(digest));
        Ok(self.get_sealed::<ContentRecord>(&o.keys, &ckey)?.map_or(0, |r| r.refs))
    }

    /// Removes one expired supply record (and the content, if nothing else needs it), under the
    /// content's stripe. Returns false if the record changed meanwhile (supplied again).
    fn remove_supply(
        &self,
        o: &OwnerCtx,
        key: &[u8],
        seen: &Supply,
        now: Timestamp,
        report: &mut SweepReport,
    ) -> Result<bool, Error> {
        let name = o.blob(&seen.digest);
        // On a shared store the owner's lock in the store first, as every change takes it: a
        // deposit at another instance may use the content meanwhile.
        let _remote = self.meta().lock(crate::storage::LockName::Owner(&o.op))?;
        let _guard = self.stripe_of(&name);
        let current: Option<Supply> = self.get_sealed(&o.keys, key)?;
        if current.as_ref() != Some(seen) {
            return Ok(false);
        }
        let ckey = layout::content_key(&o.op, &name.name);
        let rec: Option<ContentRecord> = self.get_sealed(&o.keys, &ckey)?;
        if rec.as_ref().is_some_and(|r| r.refs > 0) && seen.used && seen.expired(now) {
            // A document uses it again (deposited meanwhile): keep the record.
            return Ok(false);
        }
        let mut ops = vec![Op::Delete(key.to_vec())];
        let mut remove_blob = None;
        if let Some(rec) = rec {
            let others =
                self.meta().scan(&supply_prefix(o, &seen.digest)).filter_map(Result::ok).any(|(k, _)| k != key);
            if rec.agency_only && rec.refs == 0 && !others {
                ops.push(Op::Delete(ckey));
                if rec.inline {
                    ops.push(Op::Delete(inline_key(&name)));
                } else {
                    remove_blob = Some(name);
                }
                report.contents_removed += 1;
                report.bytes_removed += rec.size;
            }
        }
        self.apply_durable(ops)?;
        if let Some(name) = remove_blob {
            self.blobs().remove(&name)?;
        }
        report.claims_removed += 1;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::access::Caller;
    use crate::crypto::keys::MasterKey;
    use crate::OwnerId;

    /// Moves a supply record's time back by `secs`, as if it had been supplied that long ago.
    fn age(v: &Vault, owner: &OwnerId, digest: &Digest, agency: &AgencyId, secs: i64) {
        let o = v.owner(owner, false).unwrap().unwrap();
        let mut s = v.supply_of(&o, digest, agency).unwrap().unwrap();
        s.supplied_at = s.supplied_at.plus_seconds(-secs);
        let key = supply_key(&o, digest, agency);
        v.apply_durable(vec![Op::Put(key.clone(), crate::engine::vault::seal_record(&o.keys, &key, &s))]).unwrap();
    }

    #[test]
    fn item_9_3_another_agencys_pending_upload_keeps_shared_content() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::open(dir.path(), &MasterKey::from_bytes([1; 32])).unwrap();
        let owner = OwnerId::parse("citizen:000000000001").unwrap();
        let (a, b) = (AgencyId::parse("ubnd-a").unwrap(), AgencyId::parse("ubnd-b").unwrap());
        for id in [&a, &b] {
            let new = crate::engine::provenance::NewAgency { name: id.to_string(), keys: vec![] };
            v.put_agency_as(&Caller::operator(), id, new).unwrap();
        }
        let data = vec![7u8; 50_000];
        let d = Digest::of(&data);
        for id in [&a, &b] {
            let c = Caller::agency(id.clone(), None);
            v.upload_as(&c, &owner, data.as_slice(), Some(d)).unwrap();
        }
        age(&v, &owner, &d, &a, PENDING_LIFETIME_SECS + 60);
        let now = Timestamp::now();
        // A's claim goes; the content stays for B's pending upload.
        let r = v.sweep_pending(now).unwrap();
        assert_eq!((r.claims_removed, r.contents_removed), (1, 0));
        assert!(v.holds(&owner, &d).unwrap());
        let o = v.owner(&owner, false).unwrap().unwrap();
        assert!(v.supply_of(&o, &d, &a).unwrap().is_none());
        assert!(v.supply_of(&o, &d, &b).unwrap().is_some());
        assert_eq!(v.pending_stats().unwrap().pending_uploads, 1);
        // Then B's expires too: the content goes with it.
        age(&v, &owner, &d, &b, PENDING_LIFETIME_SECS + 60);
        let r = v.sweep_pending(now).unwrap();
        assert_eq!((r.claims_removed, r.contents_removed, r.bytes_removed), (1, 1, 50_000));
        assert!(!v.holds(&owner, &d).unwrap());
        assert!(v.check(true).unwrap().is_clean());
    }
}
