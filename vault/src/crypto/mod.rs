//! Cryptography: key material, sealed records, the STREAM blob format and bearer tokens.

pub mod keys;
pub mod seal;
pub mod stream;
pub mod token;
