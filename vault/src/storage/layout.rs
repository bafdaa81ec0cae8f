//! The layout of the metadata store (SPEC.md §6, "Metadata keys"): the one-byte prefixes of
//! its keys, the fixed keys of the vault's own records (prefix `M`), and the functions that
//! build keys.

use crate::storage::BlobName;

/// Key prefixes of the metadata store (SPEC.md, "Metadata keys").
pub(crate) mod prefix {
    pub const META: u8 = b'M';
    pub const OWNER: u8 = b'O';
    pub const CONTENT: u8 = b'C';
    pub const DOCUMENT: u8 = b'D';
    pub const TYPE_INDEX: u8 = b'T';
    pub const AGENCY: u8 = b'A';
    pub const USED_KEY: u8 = b'U';
    pub const GRANT: u8 = b'G';
    pub const GRANT_BY_AGENCY: u8 = b'H';
    pub const LEAF: u8 = b'L';
    pub const NODE: u8 = b'N';
    pub const TILE: u8 = b'X';
    pub const OWNER_ENTRY: u8 = b'E';
    pub const DEPOSIT_INDEX: u8 = b'I';
    pub const INLINE_BLOB: u8 = b'B';
    pub const SUPPLY: u8 = b'P';
    /// Reuse-statistics tallies (`stats.rs`).
    pub const STATS: u8 = b'S';
    /// Reuse-statistics day rollups (`stats.rs`).
    pub const STATS_DAY: u8 = b'R';
    /// Webhook subscriptions (`events.rs`).
    pub const WEBHOOK: u8 = b'W';
    /// The event outbox: deliveries waiting or retrying (`events.rs`).
    pub const OUTBOX: u8 = b'Q';
    /// Parked deliveries (`events.rs`).
    pub const PARKED: u8 = b'F';
    /// Grants whose `grant.expired` event is still to be emitted (`events.rs`).
    pub const GRANT_EXPIRY: u8 = b'K';
    /// The outbox's due-time index: one entry per `Q` record, by subscription and
    /// `next_attempt` (`events.rs`).
    pub const OUTBOX_DUE: u8 = b'Y';
    /// The parked deliveries' retention index: one entry per `F` record, by subscription and
    /// `parked_at` (`events.rs`).
    pub const PARKED_AT: u8 = b'Z';
}

/// The format this vault was created with ([`crate::FORMAT`]).
pub(crate) const KEY_FORMAT: &[u8] = b"Mformat";
/// The index key, wrapped by the master key.
pub(crate) const KEY_INDEX_KEY: &[u8] = b"Mindex-key";
/// The vault's signing key, wrapped by the master key.
pub(crate) const KEY_SIGNING: &[u8] = b"Msigning-key";
/// Which blob store the vault was created over ([`crate::storage::BlobStore::kind`], plain UTF-8).
pub(crate) const KEY_BLOB_STORE: &[u8] = b"Mblob-store";
/// The size of the audit log (big-endian `u64`).
pub(crate) const KEY_AUDIT_SIZE: &[u8] = b"Maudit-size";
/// Present once the outbox records of versions before the indexes were indexed (plain `1`).
pub(crate) const KEY_OUTBOX_INDEXED: &[u8] = b"Moutbox-indexed";
/// Rewritten (16 random bytes) with every change of a subscription: on a shared store an
/// instance reloads its subscriptions when it finds another value here (SPEC.md §9a).
pub(crate) const KEY_WEBHOOKS_VERSION: &[u8] = b"Mwebhooks-version";
/// Present while a rotation is under way (sealed under the new master wrap key).
pub(crate) const KEY_ROTATION: &[u8] = b"Mrotation";

/// A metadata key: `prefix` followed by `parts`.
pub(crate) fn key_of(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![prefix];
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// The metadata key of an inline blob.
pub(crate) fn inline_key(name: &BlobName) -> Vec<u8> {
    key_of(prefix::INLINE_BLOB, &[&name.owner, &name.name])
}

/// `O` owner ref: an owner's wrapped keys.
pub(crate) fn owner_key(op: &[u8]) -> Vec<u8> {
    key_of(prefix::OWNER, &[op])
}

/// `C` owner ref, blob name: a content record.
pub(crate) fn content_key(op: &[u8], name: &[u8]) -> Vec<u8> {
    key_of(prefix::CONTENT, &[op, name])
}

/// `D` owner ref, document id: a document.
pub(crate) fn document_key(op: &[u8], id: &[u8]) -> Vec<u8> {
    key_of(prefix::DOCUMENT, &[op, id])
}

/// `D` owner ref: the prefix of an owner's documents.
pub(crate) fn documents_of(op: &[u8]) -> Vec<u8> {
    key_of(prefix::DOCUMENT, &[op])
}

/// `T` owner ref, type tag, document id: an entry of the type index.
pub(crate) fn type_index_key(op: &[u8], tag: &[u8], id: &[u8]) -> Vec<u8> {
    key_of(prefix::TYPE_INDEX, &[op, tag, id])
}

/// `T` owner ref, type tag: the prefix of an owner's documents of one type.
pub(crate) fn type_index_of(op: &[u8], tag: &[u8]) -> Vec<u8> {
    key_of(prefix::TYPE_INDEX, &[op, tag])
}

/// `I` owner ref, deposit tag: an entry of the deposit index.
pub(crate) fn deposit_index_key(op: &[u8], tag: &[u8]) -> Vec<u8> {
    key_of(prefix::DEPOSIT_INDEX, &[op, tag])
}

/// `L` index: a leaf of the audit log.
pub(crate) fn leaf_key(index: u64) -> Vec<u8> {
    key_of(prefix::LEAF, &[&index.to_be_bytes()])
}

/// `X` level, index: a tile of the audit log.
pub(crate) fn tile_key(level: u8, index: u64) -> Vec<u8> {
    key_of(prefix::TILE, &[&[level], &index.to_be_bytes()])
}

/// `N` level, index: a node of the audit log's tree (kept by earlier versions; only tests still
/// write one).
#[cfg(test)]
pub(crate) fn node_key(level: u8, index: u64) -> Vec<u8> {
    key_of(prefix::NODE, &[&[level], &index.to_be_bytes()])
}

/// `E` owner ref, index: an owner's entry of the audit log.
pub(crate) fn entry_key(op: &[u8], index: u64) -> Vec<u8> {
    key_of(prefix::OWNER_ENTRY, &[op, &index.to_be_bytes()])
}

/// `E` owner ref: the prefix of an owner's entries.
pub(crate) fn entries_of(op: &[u8]) -> Vec<u8> {
    key_of(prefix::OWNER_ENTRY, &[op])
}

/// `G` owner ref, grant id: a grant.
pub(crate) fn grant_key(op: &[u8], id: &[u8]) -> Vec<u8> {
    key_of(prefix::GRANT, &[op, id])
}

/// `G` owner ref: the prefix of an owner's grants.
pub(crate) fn grants_of(op: &[u8]) -> Vec<u8> {
    key_of(prefix::GRANT, &[op])
}

/// `H` agency id, 0, grant id: the grants-by-agency index.
pub(crate) fn agency_grant_key(agency: &[u8], id: &[u8]) -> Vec<u8> {
    key_of(prefix::GRANT_BY_AGENCY, &[agency, &[0], id])
}

/// `H` agency id, 0: the prefix of an agency's grants.
pub(crate) fn agency_grants_of(agency: &[u8]) -> Vec<u8> {
    key_of(prefix::GRANT_BY_AGENCY, &[agency, &[0]])
}

/// `P` owner ref, blob name, agency tag: a supply record.
pub(crate) fn supply_key(op: &[u8], name: &[u8], agency_tag: &[u8]) -> Vec<u8> {
    key_of(prefix::SUPPLY, &[op, name, agency_tag])
}

/// `P` owner ref, blob name: the prefix of every supply record of one content.
pub(crate) fn supplies_of(op: &[u8], name: &[u8]) -> Vec<u8> {
    key_of(prefix::SUPPLY, &[op, name])
}

/// `W` agency id, 0, subscription id: a webhook subscription.
pub(crate) fn webhook_key(agency: &[u8], id: &[u8]) -> Vec<u8> {
    key_of(prefix::WEBHOOK, &[agency, &[0], id])
}

/// `K` expiry time (8 bytes, in key order), owner ref, grant id: a grant whose expiry event is
/// still to be emitted.
pub(crate) fn grant_expiry_key(time: &[u8], op: &[u8], id: &[u8]) -> Vec<u8> {
    key_of(prefix::GRANT_EXPIRY, &[time, op, id])
}

/// `R` day: a day's rollup of the reuse statistics.
pub(crate) fn stats_day_key(day: &[u8]) -> Vec<u8> {
    key_of(prefix::STATS_DAY, &[day])
}

/// `A` agency id: an agency's registration.
pub(crate) fn agency_key(agency: &[u8]) -> Vec<u8> {
    key_of(prefix::AGENCY, &[agency])
}

/// `U` agency id, `/`, key id: marks that a key id signed a stored document.
pub(crate) fn used_key(agency: &[u8], key: &[u8]) -> Vec<u8> {
    key_of(prefix::USED_KEY, &[agency, b"/", key])
}

/// `S` day, 16 random bytes: one reuse-statistics tally.
pub(crate) fn stats_tally_key(day: &[u8], random: &[u8]) -> Vec<u8> {
    key_of(prefix::STATS, &[day, random])
}

/// `p` (`Q`, `F`, `Y` or `Z`) agency id, 0, subscription id, 0: the prefix of one subscription's
/// records under `p`.
pub(crate) fn outbox_prefix(p: u8, agency: &[u8], id: &[u8]) -> Vec<u8> {
    key_of(p, &[agency, &[0], id, &[0]])
}

/// `p` (`Q` or `F`) agency id, 0, subscription id, 0, event id: a delivery.
pub(crate) fn outbox_key(p: u8, agency: &[u8], id: &[u8], event: &[u8]) -> Vec<u8> {
    key_of(p, &[agency, &[0], id, &[0], event])
}

/// `p` (`Y` or `Z`) agency id, 0, subscription id, 0, time (8 bytes, in key order), event id:
/// an entry of a delivery index.
pub(crate) fn outbox_index_key(p: u8, agency: &[u8], id: &[u8], time: &[u8], event: &[u8]) -> Vec<u8> {
    key_of(p, &[agency, &[0], id, &[0], time, event])
}
