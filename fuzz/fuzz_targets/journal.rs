//! The metadata journal's records (vault/src/journal.rs), read back at every open.
//!
//! Input: journal bytes. Properties: `decode` never reads past the input, the intact prefix it
//! reports is exactly the re-encoding of the batches it returns, and the input taken as one
//! record's payload (with a correct length and checksum) decodes to ops that re-encode to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vault::journal::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let (batches, intact) = decode(data);
    assert!(intact <= data.len());
    let again: Vec<u8> = batches.iter().flat_map(|b| encode(b)).collect();
    assert_eq!(again, &data[..intact], "the intact prefix is the re-encoded batches");

    let mut rec = Vec::with_capacity(12 + data.len());
    rec.extend_from_slice(&(data.len() as u32).to_be_bytes());
    rec.extend_from_slice(&blake3::hash(data).as_bytes()[..8]);
    rec.extend_from_slice(data);
    let (batches, intact) = decode(&rec);
    match batches.as_slice() {
        [] => assert_eq!(intact, 0),
        [ops] => {
            assert_eq!(intact, rec.len());
            assert_eq!(encode(ops), rec, "a payload that decodes re-encodes to itself");
        }
        _ => panic!("one record decoded as several"),
    }
});
