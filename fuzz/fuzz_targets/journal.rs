//! The metadata journal's records (vault/src/storage/journal.rs), read back at every open.
//!
//! Input: journal bytes. Properties: `decode` never panics and never reads past the input; for
//! a format-2 file the intact prefix it reports is exactly the header and the re-encoding of the
//! batches it returns; and the input taken as one record's payload (framed with a correct length
//! and checksums) either decodes to exactly one batch that re-encodes to the same record, or is
//! reported as damage — never as a torn tail or as several records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vault::storage::journal::{decode, encode_packed, frame, Batch, MAGIC};

fn reencode(b: &Batch) -> Vec<u8> {
    let packed: Vec<_> = b.packed.iter().map(|(loc, bytes)| (*loc, bytes.as_slice())).collect();
    frame(encode_packed(&packed, &b.released, &b.ops), b.state.as_ref())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(replay) = decode(data) {
        assert!(replay.intact <= data.len());
        if !replay.legacy && replay.intact > 0 {
            let mut again = MAGIC.to_vec();
            for b in &replay.batches {
                again.extend(reencode(b));
            }
            assert_eq!(again, &data[..replay.intact], "the intact prefix is the re-encoded batches");
        }
    }

    let rec = frame(data.to_vec(), None);
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(&rec);
    match decode(&file) {
        Ok(replay) => {
            assert_eq!(replay.intact, file.len(), "a whole, checksummed record is not a torn tail");
            match replay.batches.as_slice() {
                [b] => assert_eq!(reencode(b), rec, "a record re-encodes to itself"),
                other => panic!("one record decoded as {} batches", other.len()),
            }
        }
        Err(d) => assert_eq!(d.offset, MAGIC.len() as u64, "the damage is the record's"),
    }
});
