//! The metadata journal: an append-only file of checksummed change batches that makes
//! metadata durable with one `fdatasync`, shared by every writer (group commit), instead of
//! sled's `flush`, which stalls concurrent writers while it runs.
//!
//! File format 2 (all integers big-endian; SPEC.md §8, "The metadata journal"):
//!
//! ```text
//! file    = "VLTJRNL2" | record*
//! record  = length of payload (u32) | first 4 bytes of BLAKE3("vault-journal-v2 length" | length)
//!           | first 8 bytes of BLAKE3(payload) | payload
//! payload = pack data*: 0x04 | pack id (u32) | offset (u64) | length (u32) | bytes
//!           then releases*: 0x05 | locator (40 bytes, `pack.rs`)
//!           then ops*: 0x01 | key length (u32) | key | value length (u32) | value   (put)
//!                      0x02 | key length (u32) | key                               (delete)
//!           then, optionally, 0x03 | sequence (u64) | key count (u64) | state digest (32)
//! ```
//!
//! The groups come in that order (a pack-data op after a release, put or delete, or a release
//! after a put or delete, is damage), so that a record has exactly one encoding. The store
//! writes the state op in every record; format-2 records without one (`encode`) are read too.
//!
//! A pack-data op carries the bytes of a small blob written to a pack (`pack.rs`) by the same
//! batch, whose put op stores the blob's locator: replay writes the bytes at their place again.
//! A release names the locator of a packed value the batch deletes or replaces: replay zeroes
//! its range (if it still holds that value) whatever the database already holds, so a crash
//! never leaves a deleted value's bytes behind.
//!
//! The length check makes a damaged length detectable, so replay can tell a *torn tail* (the
//! last write, cut short by a crash: fewer bytes than a header, a header whose record runs past
//! the end of the file, or only zero bytes) from *damage* (a header or record that fails its
//! checksum while its bytes are all there). A torn tail was never acknowledged (acknowledgements
//! wait for the `fdatasync` covering their record) and is cut off; damage refuses the open,
//! naming the file and offset, because records after it, or the damaged one, may have been
//! acknowledged. The state op carries the store's change sequence and its state digest after the
//! batch (see `storage/sled.rs`), so a database behind its journal is found after replay. Format 1
//! (no file header, 12-byte record header without the length check, no state op) is still read.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::storage::failstop::{Fault, Faults};
use crate::storage::{Op, StoreError};

/// Journal size that triggers a checkpoint.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Largest payload a record may claim (a damaged length is not trusted further).
const MAX_RECORD: usize = 256 << 20;
/// The first bytes of a format-2 journal.
pub const MAGIC: &[u8; 8] = b"VLTJRNL2";
/// Bytes of a format-2 record header.
const HEADER: usize = 16;
/// Zero bytes ending the file, reaching into a record, that make it a torn tail rather than
/// damage (a single damaged byte cannot make such a run: records end in a random digest).
const ZERO_TAIL: usize = 32;

const PUT: u8 = 1;
const DELETE: u8 = 2;
const STATE: u8 = 3;
const PACK_DATA: u8 = 4;
const RELEASE: u8 = 5;

/// The metadata store's state after a batch: how many changes were ever applied, how many keys
/// it holds and the digest of all its pairs (`storage/sled.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct State {
    /// Batches applied since the store was created.
    pub seq: u64,
    /// Keys in the store.
    pub count: u64,
    /// XOR of the pair hashes of every key and value.
    pub digest: [u8; 32],
}

/// One replayed record.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The changes.
    pub ops: Vec<Op>,
    /// The store's state after them (absent in format 1).
    pub state: Option<State>,
    /// Bytes the batch wrote to packs, with where (pack-data ops).
    pub packed: Vec<(crate::storage::pack::Locator, Vec<u8>)>,
    /// Packed values the batch deleted or replaced (release ops).
    pub released: Vec<crate::storage::pack::Locator>,
}

/// Where and how a journal is damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the damaged record (or header) in the file.
    pub offset: u64,
    /// What is wrong there.
    pub what: &'static str,
}

/// What [`decode`] found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Intact records, in order.
    pub batches: Vec<Batch>,
    /// Bytes that were intact (everything after them is a torn tail).
    pub intact: usize,
    /// The file is in format 1 (no header).
    pub legacy: bool,
}

fn length_check(len: u32) -> [u8; 4] {
    let mut h = blake3::Hasher::new();
    h.update(b"vault-journal-v2 length");
    h.update(&len.to_be_bytes());
    let mut out = [0u8; 4];
    out.copy_from_slice(&h.finalize().as_bytes()[..4]);
    out
}

/// Encodes the ops of a batch (the payload without its state op).
pub fn encode_ops(ops: &[Op]) -> Vec<u8> {
    encode_packed(&[], &[], ops)
}

/// Encodes the pack data a batch wrote, the packed values it released, then its ops (the
/// payload without its state op).
pub fn encode_packed(
    packed: &[(crate::storage::pack::Locator, &[u8])],
    released: &[crate::storage::pack::Locator],
    ops: &[Op],
) -> Vec<u8> {
    let mut payload = Vec::new();
    for (loc, bytes) in packed {
        payload.push(PACK_DATA);
        payload.extend_from_slice(&loc.pack.to_be_bytes());
        payload.extend_from_slice(&loc.offset.to_be_bytes());
        payload.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        payload.extend_from_slice(bytes);
    }
    for loc in released {
        payload.push(RELEASE);
        payload.extend_from_slice(&loc.encode());
    }
    for op in ops {
        match op {
            Op::Put(k, v) => {
                payload.push(PUT);
                payload.extend_from_slice(&(k.len() as u32).to_be_bytes());
                payload.extend_from_slice(k);
                payload.extend_from_slice(&(v.len() as u32).to_be_bytes());
                payload.extend_from_slice(v);
            }
            Op::Delete(k) => {
                payload.push(DELETE);
                payload.extend_from_slice(&(k.len() as u32).to_be_bytes());
                payload.extend_from_slice(k);
            }
        }
    }
    payload
}

/// Frames encoded ops (and the state after them) as a format-2 record.
pub fn frame(mut payload: Vec<u8>, state: Option<&State>) -> Vec<u8> {
    if let Some(s) = state {
        payload.push(STATE);
        payload.extend_from_slice(&s.seq.to_be_bytes());
        payload.extend_from_slice(&s.count.to_be_bytes());
        payload.extend_from_slice(&s.digest);
    }
    let len = payload.len() as u32;
    let mut rec = Vec::with_capacity(HEADER + payload.len());
    rec.extend_from_slice(&len.to_be_bytes());
    rec.extend_from_slice(&length_check(len));
    rec.extend_from_slice(&blake3::hash(&payload).as_bytes()[..8]);
    rec.extend_from_slice(&payload);
    rec
}

/// Encodes one batch as a format-2 record without a state op.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    frame(encode_ops(ops), None)
}

/// Decodes a journal file: every intact record, then either the end, a torn tail (cut off), or
/// damage (an error: the file must not be replayed as if it ended there).
pub fn decode(data: &[u8]) -> Result<Replay, Damage> {
    if data.iter().all(|&b| b == 0) || (data.len() < MAGIC.len() && MAGIC.starts_with(data)) {
        // New, or a header write cut short: nothing was ever recorded.
        return Ok(Replay::default());
    }
    if data.starts_with(MAGIC) {
        return decode_v2(data);
    }
    let header_like = data.len() >= MAGIC.len() && data[1..MAGIC.len()] == MAGIC[1..];
    if data[0] <= 0x0f && !header_like {
        return decode_v1(data);
    }
    Err(Damage { offset: 0, what: "the file header is not a known journal format" })
}

fn decode_v2(data: &[u8]) -> Result<Replay, Damage> {
    let mut out = Replay::default();
    let mut pos = MAGIC.len();
    // Where the run of zero bytes that ends the file starts: a file system may extend a file
    // before writing its data, so a crash can leave zeros where the last records were going.
    let zeros_from = data.len() - data.iter().rev().take_while(|&&b| b == 0).count();
    let zero_tail = |end: usize| data.len() - zeros_from >= ZERO_TAIL && zeros_from < end;
    while pos < data.len() {
        let rest = &data[pos..];
        let damage = |what| Damage { offset: pos as u64, what };
        // Torn tails: a partial header, zeros where the file grew without its data, or a record
        // running past the end of the file (with an intact header).
        if rest.len() < HEADER || rest.iter().all(|&b| b == 0) {
            break;
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if rest[4..8] != length_check(len) {
            if zero_tail(pos + HEADER) {
                break;
            }
            return Err(damage("a record header fails its checksum"));
        }
        let len = len as usize;
        if len > MAX_RECORD {
            return Err(damage("a record claims an impossible length"));
        }
        if rest.len() - HEADER < len {
            break;
        }
        let payload = &rest[HEADER..HEADER + len];
        if blake3::hash(payload).as_bytes()[..8] != rest[8..16] {
            if zero_tail(pos + HEADER + len) {
                break;
            }
            return Err(damage("a complete record fails its checksum"));
        }
        let batch = decode_payload(payload).ok_or(damage("a record's checksum holds but its changes do not decode"))?;
        out.batches.push(batch);
        pos += HEADER + len;
    }
    out.intact = pos;
    Ok(out)
}

fn decode_v1(data: &[u8]) -> Result<Replay, Damage> {
    let mut out = Replay { legacy: true, ..Default::default() };
    let mut pos = 0;
    while data.len() - pos >= 12 {
        let damage = |what| Damage { offset: pos as u64, what };
        let len = u32::from_be_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        if len > MAX_RECORD || data.len() - pos - 12 < len {
            break;
        }
        let payload = &data[pos + 12..pos + 12 + len];
        if blake3::hash(payload).as_bytes()[..8] != data[pos + 4..pos + 12] {
            return Err(damage("a complete record fails its checksum"));
        }
        let batch = decode_payload(payload).ok_or(damage("a record's checksum holds but its changes do not decode"))?;
        if batch.state.is_some() {
            return Err(damage("a format-1 record carries a state"));
        }
        if !batch.packed.is_empty() || !batch.released.is_empty() {
            // Format 1 predates packs.
            return Err(damage("a format-1 record carries pack data or releases"));
        }
        out.batches.push(batch);
        pos += 12 + len;
    }
    out.intact = pos;
    Ok(out)
}

fn decode_payload(mut p: &[u8]) -> Option<Batch> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if p.len() < n {
            return None;
        }
        let (a, b) = p.split_at(n);
        *p = b;
        Some(a)
    }
    fn len(p: &mut &[u8]) -> Option<usize> {
        let b = take(p, 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn u64_of(p: &mut &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(take(p, 8)?.try_into().ok()?))
    }
    let mut ops = Vec::new();
    let mut state = None;
    let mut packed = Vec::new();
    let mut released = Vec::new();
    while !p.is_empty() {
        let tag = take(&mut p, 1)?[0];
        if tag == RELEASE {
            // After pack data, before the ops (as `encode_packed` writes them).
            if !ops.is_empty() {
                return None;
            }
            released.push(crate::storage::pack::Locator::decode(take(&mut p, crate::storage::pack::LOCATOR_LEN)?)?);
            continue;
        }
        if tag == PACK_DATA {
            // Pack data comes before the batch's releases and ops (as `encode_packed` writes
            // them), so that a record has exactly one encoding.
            if !ops.is_empty() || !released.is_empty() {
                return None;
            }
            let pack = u32::from_be_bytes(take(&mut p, 4)?.try_into().ok()?);
            let offset = u64_of(&mut p)?;
            let n = len(&mut p)?;
            let bytes = take(&mut p, n)?.to_vec();
            offset.checked_add(n as u64)?;
            packed.push((crate::storage::pack::Locator::of(pack, offset, &bytes), bytes));
            continue;
        }
        if tag == STATE {
            let seq = u64_of(&mut p)?;
            let count = u64_of(&mut p)?;
            let digest: [u8; 32] = take(&mut p, 32)?.try_into().ok()?;
            state = Some(State { seq, count, digest });
            // The state op is the last of its record.
            if !p.is_empty() {
                return None;
            }
            break;
        }
        let n = len(&mut p)?;
        let key = take(&mut p, n)?.to_vec();
        match tag {
            PUT => {
                let n = len(&mut p)?;
                ops.push(Op::Put(key, take(&mut p, n)?.to_vec()));
            }
            DELETE => ops.push(Op::Delete(key)),
            _ => return None,
        }
    }
    Some(Batch { ops, state, packed, released })
}

/// The open journal file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes of the file (header and records).
    len: u64,
    /// The store's state after the last record (kept under the journal's lock).
    pub state: State,
    /// An append failed: the file may end in a torn record, and a record appended behind it
    /// would be hidden from replay, so nothing more is appended until the journal is reopened
    /// (whose replay drops the torn tail).
    failed: bool,
}

fn damaged(path: &Path, d: &Damage) -> StoreError {
    StoreError::Damaged {
        file: path.display().to_string(),
        offset: Some(d.offset),
        what: format!(
            "{}, and it is not a torn last write (records after it, or the record itself, may have been \
             acknowledged)",
            d.what
        ),
    }
}

impl Journal {
    /// Opens (creating) the journal and returns it with the batches to replay. Damage (anything
    /// but a torn tail) is [`StoreError::Damaged`], naming the file and offset; nothing is
    /// changed then.
    pub fn open(path: &Path) -> Result<(Self, Replay), StoreError> {
        let io = |what: &'static str| {
            let what = format!("{what} {}", path.display());
            move |source| StoreError::Io { what, source }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io("opening journal"))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io("reading journal"))?;
        let replay = decode(&data).map_err(|d| damaged(path, &d))?;
        let mut journal = Self { path: path.to_owned(), file, len: 0, state: State::default(), failed: false };
        if replay.intact == 0 || replay.legacy {
            // New (or format 1, replayed and emptied by the caller before any append): start a
            // format-2 file.
            if replay.batches.is_empty() {
                journal.truncate().map_err(io("starting journal"))?;
            } else {
                journal.len = replay.intact as u64;
            }
        } else {
            // A torn record after the intact ones is cut off, so appends follow the last good one.
            journal.file.set_len(replay.intact as u64).map_err(io("cutting the torn tail of journal"))?;
            journal.file.seek(SeekFrom::Start(replay.intact as u64)).map_err(io("opening journal"))?;
            journal.len = replay.intact as u64;
        }
        Ok((journal, replay))
    }

    /// Appends a record (not yet durable). After a failed append every later one fails too
    /// (fail-stop): the failed record may be torn, and it must stay the journal's last.
    pub fn append(&mut self, record: &[u8], faults: &Faults) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier append to the journal failed; reopen the vault to recover"));
        }
        let written = if faults.hit(Fault::JournalWrite) {
            // An injected torn write: part of the record reaches the file.
            self.file.write_all(&record[..record.len() / 2]).and(Err(Faults::error(Fault::JournalWrite)))
        } else {
            self.file.write_all(record)
        };
        if let Err(e) = written {
            self.failed = true;
            return Err(e);
        }
        self.len += record.len() as u64;
        Ok(())
    }

    /// Bytes in the journal.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the journal holds no records.
    pub fn is_empty(&self) -> bool {
        self.len <= MAGIC.len() as u64
    }

    /// A second handle to the file, to sync without holding the journal's lock.
    pub fn sync_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Empties the journal (after everything in it is durable elsewhere).
    pub fn truncate(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier append to the journal failed; reopen the vault to recover"));
        }
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(MAGIC)?;
        self.file.sync_all()?;
        self.len = MAGIC.len() as u64;
        Ok(())
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op() -> impl Strategy<Value = Op> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..40);
        prop_oneof![(bytes(), bytes()).prop_map(|(k, v)| Op::Put(k, v)), bytes().prop_map(Op::Delete)]
    }

    fn same(a: &[Batch], b: &[Vec<Op>]) -> bool {
        let a: Vec<&Vec<Op>> = a.iter().map(|x| &x.ops).collect();
        format!("{a:?}") == format!("{:?}", b.iter().collect::<Vec<_>>())
    }

    fn file_of(batches: &[Vec<Op>]) -> (Vec<u8>, Vec<usize>) {
        let mut data = MAGIC.to_vec();
        let mut ends = vec![data.len()];
        for (i, b) in batches.iter().enumerate() {
            let state = State { seq: i as u64 + 1, count: 7, digest: *blake3::hash(&[i as u8]).as_bytes() };
            data.extend(frame(encode_ops(b), Some(&state)));
            ends.push(data.len());
        }
        (data, ends)
    }

    proptest! {
        #[test]
        fn round_trip_and_torn_tails(batches in proptest::collection::vec(proptest::collection::vec(op(), 1..5), 0..8), cut in any::<usize>(), flip in any::<usize>()) {
            let (data, ends) = file_of(&batches);
            let r = decode(&data).unwrap();
            prop_assert!(same(&r.batches, &batches));
            prop_assert_eq!(r.intact, data.len());
            for (i, b) in r.batches.iter().enumerate() {
                prop_assert_eq!(b.state.map(|s| s.seq), Some(i as u64 + 1));
            }
            // A torn tail keeps exactly the whole records before the cut.
            let cut = cut % (data.len() + 1);
            let partial = decode(&data[..cut]).unwrap();
            let whole = ends.iter().filter(|&&e| e <= cut).count().saturating_sub(1);
            prop_assert!(same(&partial.batches, &batches[..whole]));
            // So does a torn tail the file system filled with zeros.
            let mut zeroed = data[..cut.max(MAGIC.len())].to_vec();
            zeroed.resize(cut.max(MAGIC.len()) + ZERO_TAIL + 64, 0);
            let z = decode(&zeroed).unwrap();
            let zwhole = ends.iter().filter(|&&e| e <= cut.max(MAGIC.len())).count() - 1;
            prop_assert!(same(&z.batches, &batches[..zwhole]));
            // A flipped bit anywhere is damage, never a shorter journal.
            let mut bad = data.clone();
            let bit = flip % (bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            let err = decode(&bad).unwrap_err();
            let record_start = ends.iter().rev().find(|&&e| e <= bit / 8).copied().unwrap_or(0);
            prop_assert!(err.offset as usize == record_start || err.offset == 0, "{:?} at bit {}", err, bit);
        }

        #[test]
        fn pack_data_round_trips(ops in proptest::collection::vec(op(), 0..4), packed in proptest::collection::vec((any::<u32>(), 0..u64::MAX / 2, proptest::collection::vec(any::<u8>(), 0..64)), 0..4), released in proptest::collection::vec((any::<u32>(), 0..u64::MAX / 2, proptest::collection::vec(any::<u8>(), 0..64)), 0..3)) {
            let rel: Vec<crate::storage::pack::Locator> =
                released.iter().map(|(p, o, b)| crate::storage::pack::Locator::of(*p, *o, b)).collect();
            let locs: Vec<(crate::storage::pack::Locator, &[u8])> =
                packed.iter().map(|(p, o, b)| (crate::storage::pack::Locator::of(*p, *o, b), b.as_slice())).collect();
            let state = State { seq: 1, count: 2, digest: [3; 32] };
            let mut data = MAGIC.to_vec();
            data.extend(frame(encode_packed(&locs, &rel, &ops), Some(&state)));
            let r = decode(&data).unwrap();
            prop_assert_eq!(r.batches.len(), 1);
            let b = &r.batches[0];
            prop_assert_eq!(format!("{:?}", b.ops), format!("{ops:?}"));
            prop_assert_eq!(b.state, Some(state));
            let got: Vec<(crate::storage::pack::Locator, &[u8])> = b.packed.iter().map(|(l, v)| (*l, v.as_slice())).collect();
            prop_assert_eq!(got, locs);
            prop_assert_eq!(&b.released, &rel);
        }

        #[test]
        fn pack_data_after_an_op_is_damage(op in op(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            // The one encoding puts pack data first: the same op and pack data swapped around
            // is refused, so a decoded record always re-encodes to its own bytes.
            let loc = crate::storage::pack::Locator::of(1, 8, &bytes);
            let mut payload = encode_ops(std::slice::from_ref(&op));
            payload.extend(encode_packed(&[(loc, &bytes)], &[], &[]));
            let mut data = MAGIC.to_vec();
            data.extend(frame(payload, None));
            prop_assert!(decode(&data).is_err());
        }

        #[test]
        fn a_release_out_of_its_place_is_damage(op in op(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let loc = crate::storage::pack::Locator::of(1, 8, &bytes);
            // A release after an op, and pack data after a release, are refused.
            for payload in [
                [encode_ops(std::slice::from_ref(&op)), encode_packed(&[], &[loc], &[])].concat(),
                [encode_packed(&[], &[loc], &[]), encode_packed(&[(loc, &bytes)], &[], &[])].concat(),
            ] {
                let mut data = MAGIC.to_vec();
                data.extend(frame(payload, None));
                prop_assert!(decode(&data).is_err());
            }
            // A release whose 40 bytes are not a locator is refused.
            let mut payload = vec![RELEASE];
            payload.extend_from_slice(&[0u8; crate::storage::pack::LOCATOR_LEN]);
            let mut data = MAGIC.to_vec();
            data.extend(frame(payload, None));
            prop_assert!(decode(&data).is_err());
        }

        #[test]
        fn a_format_1_record_with_pack_data_or_a_release_is_damage(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let loc = crate::storage::pack::Locator::of(1, 8, &bytes);
            for payload in [encode_packed(&[(loc, &bytes)], &[], &[]), encode_packed(&[], &[loc], &[])] {
                let mut data = Vec::new();
                data.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                data.extend_from_slice(&blake3::hash(&payload).as_bytes()[..8]);
                data.extend(payload);
                prop_assert!(decode(&data).is_err());
            }
        }

        #[test]
        fn format_1_journals_are_still_replayed(batches in proptest::collection::vec(proptest::collection::vec(op(), 1..5), 1..8), cut in any::<usize>()) {
            let mut data = Vec::new();
            for b in &batches {
                let payload = encode_ops(b);
                data.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                data.extend_from_slice(&blake3::hash(&payload).as_bytes()[..8]);
                data.extend(payload);
            }
            let r = decode(&data).unwrap();
            prop_assert!(r.legacy);
            prop_assert!(same(&r.batches, &batches));
            let cut = cut % data.len();
            prop_assert!(decode(&data[..cut]).is_ok());
        }
    }

    #[test]
    fn item_10_6_a_damaged_record_before_valid_ones_is_damage_not_a_torn_tail() {
        let batches: Vec<Vec<Op>> = (0..4u8).map(|i| vec![Op::Put(vec![b'k', i], vec![i; 50])]).collect();
        let (data, ends) = file_of(&batches);
        // Bytes of the second record's length: format 1 took a larger length for a torn tail
        // and silently dropped records 2 to 4.
        for byte in ends[1]..ends[1] + HEADER {
            let mut bad = data.clone();
            bad[byte] ^= 0x40;
            assert_eq!(decode(&bad).unwrap_err().offset, ends[1] as u64, "byte {byte}");
        }
        // The last record, complete but damaged, is damage too.
        let mut bad = data.clone();
        bad[ends[4] - 1] ^= 1;
        assert_eq!(decode(&bad).unwrap_err().offset, ends[3] as u64);
        // Cut short, it is a torn tail: the first three are replayed.
        assert_eq!(decode(&data[..ends[4] - 1]).unwrap().batches.len(), 3);
    }
}
