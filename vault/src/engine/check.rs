//! `check`: is every record readable, does every record have its blob, is every blob
//! referenced; and with `read_data`, does every blob decrypt and hash to its digest.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::sync::Arc;

use crate::crypto::keys::OwnerKeys;
use crate::crypto::seal::{self, aad};
use crate::crypto::stream::{blob_len, BlobReader};
use crate::engine::document::Document;
use crate::engine::grants::Grant;
use crate::engine::vault::{describe_key, open_record, ContentRecord, OwnerRef, Vault, FORMAT};
use crate::ids::DocumentId;
use crate::storage::layout::{self, inline_key, prefix, KEY_FORMAT};
use crate::storage::BlobName;
use crate::Error;

/// One thing `check` found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a metadata record or a blob file.
    pub location: String,
    /// What is wrong.
    pub what: String,
}

/// The outcome of [`Vault::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Owners seen.
    pub owners: u64,
    /// Document records seen.
    pub documents: u64,
    /// Content records seen.
    pub contents: u64,
    /// Blob files seen.
    pub blobs: u64,
    /// Plaintext bytes decrypted and verified (with `read_data`).
    pub bytes_verified: u64,
    /// Everything found wrong.
    pub problems: Vec<Problem>,
    /// Blobs that no record pointed at, set aside by recovery (not a problem by themselves:
    /// crashes leave them; never deleted automatically).
    pub set_aside: Vec<String>,
    /// On a store whose orphans are collected by age (object storage): blobs without a record
    /// that are younger than [`crate::ORPHAN_AGE_SECS`], perhaps uploads in flight (not a
    /// problem; set aside by `Vault::collect_orphans` once older).
    pub young_unreferenced: u64,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, location: impl Into<String>, what: impl Into<String>) {
        self.problems.push(Problem { location: location.into(), what: what.into() });
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} owners, {} documents, {} contents, {} blobs, {} bytes verified",
            self.owners, self.documents, self.contents, self.blobs, self.bytes_verified
        )?;
        if !self.set_aside.is_empty() {
            writeln!(
                f,
                "{} blobs without a record were set aside by recovery (a put or delete cut short by a crash \
                 leaves them; so does a record lost to damage). They are kept until you decide: delete them \
                 if nothing is missing, or keep them for a restore (SPEC.md §10):",
                self.set_aside.len()
            )?;
            for p in &self.set_aside {
                writeln!(f, "  {p}")?;
            }
        }
        if self.young_unreferenced > 0 {
            writeln!(
                f,
                "{} blobs without a record are younger than an hour: uploads in flight or cut short by a crash, \
                 set aside by the hourly collection once older (SPEC.md §9b)",
                self.young_unreferenced
            )?;
        }
        if self.problems.is_empty() {
            return writeln!(f, "no problems found");
        }
        writeln!(f, "{} problems found:", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  {}: {}", p.location, p.what)?;
        }
        writeln!(
            f,
            "Damaged records and blobs are never served: reads of them fail. Stop writers, keep a copy \
             of the data folder, and restore the damaged items from a backup (see SPEC.md, \"check\")."
        )
    }
}

struct Owner {
    keys: Arc<OwnerKeys>,
}

impl Vault {
    /// Verifies the whole vault; with `read_data`, also decrypts and hashes every blob.
    /// Only storage-level failures are errors; everything found wrong is in the report.
    pub fn check(&self, read_data: bool) -> Result<CheckReport, Error> {
        let mut r = CheckReport::default();
        let meta = self.meta();
        let mut owners: HashMap<OwnerRef, Owner> = HashMap::new();
        // Content records: (owner, name) -> (record, documents seen pointing at it).
        let mut contents: HashMap<(OwnerRef, [u8; 32]), (ContentRecord, u64)> = HashMap::new();
        let mut documents: HashSet<(OwnerRef, DocumentId)> = HashSet::new();
        let mut type_entries: Vec<(Vec<u8>, OwnerRef, [u8; 16], DocumentId)> = Vec::new();
        let mut doc_types: HashMap<(OwnerRef, DocumentId), [u8; 16]> = HashMap::new();

        match meta.get(KEY_FORMAT)? {
            Some(f) if f == FORMAT.as_bytes() => {}
            _ => r.problem("vault record format", "missing or unknown format marker"),
        }

        for item in meta.scan(&[prefix::OWNER]) {
            let (k, v) = item?;
            r.owners += 1;
            let Ok(op) = <OwnerRef>::try_from(&k[1..]) else {
                r.problem(describe_key(&k), "malformed key");
                continue;
            };
            match self.unseal_owner(&k, &v) {
                Ok((key, id)) if self.owner_ref(&id) == op => {
                    owners.insert(op, Owner { keys: Arc::new(OwnerKeys::derive(&key)) });
                }
                _ => r.problem(
                    describe_key(&k),
                    "owner key record fails authentication: this owner's data cannot be read",
                ),
            }
        }

        for item in meta.scan(&[prefix::CONTENT]) {
            let (k, v) = item?;
            r.contents += 1;
            if k.len() != 49 {
                r.problem(describe_key(&k), "malformed key");
                continue;
            }
            let (op, name) = split_ref::<32>(&k);
            let Some(owner) = owners.get(&op) else {
                r.problem(describe_key(&k), "content record of an owner without a readable key");
                continue;
            };
            let Some(rec) = open_record::<ContentRecord>(&owner.keys, &k, &v) else {
                r.problem(describe_key(&k), "content record fails authentication");
                continue;
            };
            if owner.keys.blob_name(&rec.digest) != name {
                r.problem(describe_key(&k), "content record is stored under the wrong name");
            }
            contents.insert((op, name), (rec, 0));
        }

        for item in meta.scan(&[prefix::DOCUMENT]) {
            let (k, v) = item?;
            r.documents += 1;
            if k.len() != 33 {
                r.problem(describe_key(&k), "malformed key");
                continue;
            }
            let (op, id) = split_ref::<16>(&k);
            let id = DocumentId::from_bytes(id);
            let Some(owner) = owners.get(&op) else {
                r.problem(describe_key(&k), "document record of an owner without a readable key");
                continue;
            };
            let Some(doc) = open_record::<Document>(&owner.keys, &k, &v) else {
                r.problem(describe_key(&k), "document record fails authentication");
                continue;
            };
            if doc.id != id || self.owner_ref(&doc.owner) != op {
                r.problem(describe_key(&k), "document record is stored under the wrong key");
            }
            documents.insert((op, id));
            doc_types.insert((op, id), owner.keys.type_tag(&doc.meta.doc_type));
            match contents.get_mut(&(op, owner.keys.blob_name(&doc.meta.digest))) {
                Some((rec, seen)) => {
                    *seen += 1;
                    if rec.size != doc.size {
                        r.problem(describe_key(&k), "document size differs from its content's size");
                    }
                }
                None => r.problem(
                    describe_key(&k),
                    format!("document points at content {} that is not held", doc.meta.digest),
                ),
            }
        }

        for item in meta.scan(&[prefix::TYPE_INDEX]) {
            let (k, v) = item?;
            if k.len() != 49 {
                r.problem(describe_key(&k), "malformed key");
                continue;
            }
            let (op, rest) = split_ref::<32>(&k);
            let mut tag = [0u8; 16];
            tag.copy_from_slice(&rest[..16]);
            let id = DocumentId::from_bytes(rest[16..].try_into().unwrap_or([0; 16]));
            match owners.get(&op) {
                Some(o) if open_record::<()>(&o.keys, &k, &v).is_some() => type_entries.push((k, op, tag, id)),
                _ => r.problem(describe_key(&k), "type index entry fails authentication"),
            }
        }
        for (k, op, tag, id) in &type_entries {
            if doc_types.get(&(*op, *id)) != Some(tag) {
                r.problem(describe_key(k), "type index entry without a matching document");
            }
        }
        for ((op, id), tag) in &doc_types {
            if !type_entries.iter().any(|(_, o, t, i)| o == op && t == tag && i == id) {
                r.problem(
                    describe_key(&layout::document_key(op, id.as_bytes())),
                    "document missing from the type index",
                );
            }
        }

        for item in meta.scan(&[prefix::DEPOSIT_INDEX]) {
            let (k, v) = item?;
            if k.len() != 33 {
                r.problem(describe_key(&k), "malformed key");
                continue;
            }
            let (op, _) = split_ref::<16>(&k);
            match owners.get(&op).and_then(|o| open_record::<DocumentId>(&o.keys, &k, &v)) {
                Some(id) if doc_types.contains_key(&(op, id)) => {}
                Some(_) => r.problem(describe_key(&k), "deposit index entry without its document"),
                None => r.problem(describe_key(&k), "deposit index entry fails authentication"),
            }
        }

        // Grants open with their owner's key; vault-level records with the vault record key.
        for item in meta.scan(&[prefix::GRANT]) {
            let (k, v) = item?;
            let ok = k.len() == 33
                && owners.get(&split_ref::<16>(&k).0).is_some_and(|o| open_record::<Grant>(&o.keys, &k, &v).is_some());
            if !ok {
                r.problem(describe_key(&k), "grant record fails authentication");
            }
        }
        for item in meta.scan(&[prefix::SUPPLY]) {
            let (k, v) = item?;
            let ok = k.len() == 65
                && owners.get(&split_ref::<16>(&k).0).is_some_and(|o| {
                    open_record::<crate::engine::supply::Supply>(&o.keys, &k, &v)
                        .is_some_and(|s| o.keys.blob_name(&s.digest)[..] == k[17..49])
                });
            if !ok {
                r.problem(describe_key(&k), "supply record fails authentication");
            }
        }
        for p in [prefix::AGENCY, prefix::GRANT_BY_AGENCY, prefix::OWNER_ENTRY, prefix::STATS, prefix::STATS_DAY] {
            for item in meta.scan(&[p]) {
                let (k, v) = item?;
                if seal::open(&self.vault_records, &aad(&k), &v).is_err() {
                    r.problem(describe_key(&k), "record fails authentication");
                }
            }
        }
        for (location, what) in self.check_events()? {
            r.problem(location, what);
        }
        for (location, what) in self.check_audit()? {
            r.problem(location, what);
        }

        for item in meta.scan(b"") {
            let (k, _) = item?;
            if !matches!(
                k.first(),
                Some(
                    &(prefix::META
                        | prefix::OWNER
                        | prefix::CONTENT
                        | prefix::DOCUMENT
                        | prefix::TYPE_INDEX
                        | prefix::AGENCY
                        | prefix::USED_KEY
                        | prefix::GRANT
                        | prefix::GRANT_BY_AGENCY
                        | prefix::LEAF
                        | prefix::NODE
                        | prefix::TILE
                        | prefix::OWNER_ENTRY
                        | prefix::DEPOSIT_INDEX
                        | prefix::INLINE_BLOB
                        | prefix::SUPPLY
                        | prefix::STATS
                        | prefix::STATS_DAY
                        | prefix::WEBHOOK
                        | prefix::OUTBOX
                        | prefix::PARKED
                        | prefix::GRANT_EXPIRY
                        | prefix::OUTBOX_DUE
                        | prefix::PARKED_AT)
                )
            ) {
                r.problem(describe_key(&k), "unknown record");
            }
        }

        r.set_aside = self.blobs().set_aside_list()?;
        let listing = self.blobs().list()?;
        for stray in listing.strays {
            r.problem(stray, "unexpected file in the blob folder");
        }
        let on_disk: HashSet<BlobName> = listing.blobs.iter().copied().collect();
        r.blobs = on_disk.len() as u64;
        // Where orphans are collected by age, a young blob without a record may be an upload
        // whose record is about to be written (or another instance's): not a problem yet.
        let old: Option<HashSet<BlobName>> = if self.blobs().orphans_by_age() {
            let cut = crate::Timestamp::now().unix() - crate::ORPHAN_AGE_SECS;
            Some(self.blobs().written_before(cut)?.into_iter().collect())
        } else {
            None
        };
        for name in &listing.blobs {
            if !contents.contains_key(&(name.owner, name.name)) {
                if old.as_ref().is_some_and(|old| !old.contains(name)) {
                    r.young_unreferenced += 1;
                    continue;
                }
                r.problem(
                    self.blobs().describe(name),
                    "blob that no content record points at: its record may have been lost; it is kept (never \
                     deleted automatically)",
                );
            }
        }

        let mut inline = std::collections::BTreeSet::new();
        for item in meta.scan(&[prefix::INLINE_BLOB]) {
            inline.insert(item?.0);
        }
        let mut sorted: Vec<_> = contents.into_iter().collect();
        sorted.sort_by_key(|a| a.0);
        for ((op, n), (rec, seen)) in sorted {
            let name = BlobName { owner: op, name: n };
            let loc = || describe_key(&layout::content_key(&op, &n));
            if seen != rec.refs {
                r.problem(loc(), format!("reference count {} but {} documents point at it", rec.refs, seen));
            }
            let file: Option<Box<dyn crate::storage::BlobRead>> = if rec.inline {
                let ikey = inline_key(&name);
                inline.remove(&ikey);
                if on_disk.contains(&name) {
                    r.problem(self.blobs().describe(&name), "blob file of a content kept inline");
                }
                match meta.get(&ikey)? {
                    Some(b) if b.len() as u64 == blob_len(rec.size) => {
                        Some(Box::new(std::io::Cursor::new(b)) as Box<dyn crate::storage::BlobRead>)
                    }
                    Some(b) => {
                        r.problem(
                            describe_key(&ikey),
                            format!("blob is {} bytes, expected {}", b.len(), blob_len(rec.size)),
                        );
                        continue;
                    }
                    None => {
                        r.problem(describe_key(&ikey), "inline blob is missing");
                        continue;
                    }
                }
            } else {
                if !on_disk.contains(&name) {
                    r.problem(self.blobs().describe(&name), "blob is missing");
                    continue;
                }
                match self.blobs().len(&name)? {
                    Some(len) if len == blob_len(rec.size) => {}
                    Some(len) => {
                        r.problem(
                            self.blobs().describe(&name),
                            format!("blob is {len} bytes, expected {}", blob_len(rec.size)),
                        );
                        continue;
                    }
                    None => {
                        r.problem(self.blobs().describe(&name), "blob is missing");
                        continue;
                    }
                }
                None
            };
            if read_data {
                let Some(owner) = owners.get(&op) else {
                    continue;
                };
                let file = match file {
                    Some(f) => f,
                    None => match self.blobs().open(&name)? {
                        Some(f) => f,
                        None => {
                            r.problem(self.blobs().describe(&name), "blob is missing");
                            continue;
                        }
                    },
                };
                let mut binding = op.to_vec();
                binding.extend_from_slice(rec.digest.as_bytes());
                let ok = BlobReader::open(file, &owner.keys.blob_wrap, &binding, rec.digest).and_then(|mut rd| {
                    let n = std::io::copy(&mut rd, &mut std::io::sink())?;
                    let _ = rd.read(&mut [0u8; 1])?;
                    Ok((n, rd.verified_whole()))
                });
                match ok {
                    Ok((n, true)) if n == rec.size => r.bytes_verified += n,
                    Ok(_) => r.problem(self.blobs().describe(&name), "content does not match its record"),
                    Err(e) if crate::crypto::stream::is_decrypt_error(&e) => {
                        r.problem(self.blobs().describe(&name), "content fails authentication (altered or damaged)")
                    }
                    Err(e) => r.problem(self.blobs().describe(&name), format!("cannot read: {e}")),
                }
            }
        }
        for k in inline {
            r.problem(describe_key(&k), "inline blob that no content record points at");
        }
        Ok(r)
    }
}

fn split_ref<const N: usize>(k: &[u8]) -> (OwnerRef, [u8; N]) {
    let mut op = [0u8; 16];
    op.copy_from_slice(&k[1..17]);
    let mut rest = [0u8; N];
    rest.copy_from_slice(&k[17..17 + N]);
    (op, rest)
}
