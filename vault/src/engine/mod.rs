//! The vault itself: documents, grants, rights, checks, key rotation, provenance, the supply of
//! contents, events and statistics.

pub mod check;
pub mod document;
pub mod events;
pub mod grants;
pub mod provenance;
pub(crate) mod record_cache;
pub mod rights;
pub mod rotation;
pub mod stats;
pub mod supply;
pub(crate) mod vault;
