//! The batch-deposit body (`POST /v1/owners/{owner}/deposits`, a tar of deposit body and
//! content pairs), read exactly as the server reads it, before any vault call.
//!
//! Property: no panic, no hang, bounded memory (libFuzzer's -rss_limit_mb and -malloc_limit_mb
//! catch a body that makes the parser allocate far more than it holds); a refusal is a 4xx.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The content limit the harness runs with (the server's is configurable).
const MAX: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Err(status) = vault_server::fuzz_batch(data, MAX) {
        assert!((400..500).contains(&status), "a bad batch is the caller's error, not {status}");
    }
});
