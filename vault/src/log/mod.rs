//! The audit log: entries and their sequencer, the RFC 9162 Merkle tree, tiles, proofs and
//! signed checkpoints.

pub mod audit;
pub mod merkle;
pub mod note;
pub mod tiles;
