//! The metadata journal: an append-only file of checksummed change batches that makes
//! metadata durable with one `fdatasync`, shared by every writer (group commit), instead of
//! sled's `flush`, which stalls concurrent writers while it runs.
//!
//! Record format (all integers big-endian):
//!
//! ```text
//! length of payload (u32) | first 8 bytes of BLAKE3(payload) | payload
//! payload = one or more ops: 0x01 | key length (u32) | key | value length (u32) | value   (put)
//!                            0x02 | key length (u32) | key                               (delete)
//! ```
//!
//! A batch is written to the journal and applied to sled under one lock, so the journal is the
//! exact order of changes. At open, every intact record is re-applied to sled (puts and deletes
//! of whole values are idempotent), sled is flushed and the journal emptied. The first torn or
//! damaged record ends the replay: it and everything after were never acknowledged (an
//! acknowledgement waits for the `fdatasync` that covers its record). When the journal grows
//! past [`CHECKPOINT_BYTES`], sled is flushed and the journal emptied (a checkpoint).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::failstop::{Fault, Faults};
use crate::store::Op;

/// Journal size that triggers a checkpoint.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Largest payload a record may claim (a damaged length is not trusted further).
const MAX_RECORD: usize = 256 << 20;

const PUT: u8 = 1;
const DELETE: u8 = 2;

/// Encodes one batch as a record.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    let mut payload = Vec::new();
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
    let mut rec = Vec::with_capacity(12 + payload.len());
    rec.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    rec.extend_from_slice(&blake3::hash(&payload).as_bytes()[..8]);
    rec.extend_from_slice(&payload);
    rec
}

/// Decodes the records of a journal; stops at the first torn or damaged one. Returns the
/// batches and the number of bytes that were intact.
pub fn decode(data: &[u8]) -> (Vec<Vec<Op>>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while data.len() - pos >= 12 {
        let len = u32::from_be_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        if len > MAX_RECORD || data.len() - pos - 12 < len {
            break;
        }
        let payload = &data[pos + 12..pos + 12 + len];
        if blake3::hash(payload).as_bytes()[..8] != data[pos + 4..pos + 12] {
            break;
        }
        let Some(ops) = decode_payload(payload) else { break };
        out.push(ops);
        pos += 12 + len;
    }
    (out, pos)
}

fn decode_payload(mut p: &[u8]) -> Option<Vec<Op>> {
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
    let mut ops = Vec::new();
    while !p.is_empty() {
        let tag = take(&mut p, 1)?[0];
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
    Some(ops)
}

/// The open journal file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes of records.
    len: u64,
    /// An append failed: the file may end in a torn record, and a record appended behind it
    /// would be hidden from replay, so nothing more is appended until the journal is reopened
    /// (whose replay drops the torn tail).
    failed: bool,
}

impl Journal {
    /// Opens (creating) the journal and returns it with the batches to replay.
    pub fn open(path: &Path) -> io::Result<(Self, Vec<Vec<Op>>)> {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let (batches, intact) = decode(&data);
        // A torn record after the intact ones is cut off, so appends follow the last good one.
        file.set_len(intact as u64)?;
        file.seek(SeekFrom::Start(intact as u64))?;
        Ok((Self { path: path.to_owned(), file, len: intact as u64, failed: false }, batches))
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

    /// Whether the journal is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
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
        self.file.sync_all()?;
        self.len = 0;
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

    fn same(a: &[Vec<Op>], b: &[Vec<Op>]) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    proptest! {
        #[test]
        fn round_trip_and_torn_tails(batches in proptest::collection::vec(proptest::collection::vec(op(), 1..5), 0..8), cut in any::<usize>(), flip in any::<usize>()) {
            let mut data = Vec::new();
            let mut ends = vec![0usize];
            for b in &batches {
                data.extend(encode(b));
                ends.push(data.len());
            }
            let (decoded, intact) = decode(&data);
            prop_assert!(same(&decoded, &batches));
            prop_assert_eq!(intact, data.len());
            // A torn tail keeps exactly the whole records before the cut.
            let cut = if data.is_empty() { 0 } else { cut % data.len() };
            let (partial, _) = decode(&data[..cut]);
            let whole = ends.iter().filter(|&&e| e <= cut).count() - 1;
            prop_assert!(same(&partial, &batches[..whole]));
            // A flipped bit ends the replay at the damaged record, never yields altered ops.
            if !data.is_empty() {
                let mut bad = data.clone();
                let bit = flip % (bad.len() * 8);
                bad[bit / 8] ^= 1 << (bit % 8);
                let (got, _) = decode(&bad);
                let damaged = ends.iter().filter(|&&e| e <= bit / 8).count() - 1;
                prop_assert!(got.len() <= damaged || same(&got[..damaged], &batches[..damaged]));
                prop_assert!(same(&got, &batches[..got.len()]));
            }
        }
    }
}
