//! The offline verifier of an owner's export (vault::engine::rights::verify_export, used by
//! vault-client's `vault verify`).
//!
//! Input: the vault's verifier key on the first line, then the export tar. Property: no panic,
//! no hang, bounded memory; every failure is a `Malformed` or `Invalid` error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let Ok(key) = std::str::from_utf8(&data[..split]) else { return };
    let tar = data.get(split + 1..).unwrap_or_default();
    let _ = vault_client::verify_export(tar, key);
});
