//! Bulk deposit: many files, skipping what the vault already holds.
//!
//! Items are taken in batches. For each batch the files are hashed (in parallel), the server is
//! asked once per owner which contents are missing (`contents/missing`, up to 10,000 digests a
//! call), only those are uploaded (several uploads in flight, each content once), and every item
//! is deposited (signed when the client is an agency). Deposits are idempotent on the server
//! (owner + digest + type + reference + issuer), so a re-run creates no duplicates.
//!
//! A journal file records every acknowledged upload and deposit as it happens. After an
//! interruption, a re-run does not upload again what was acknowledged (an agency's upload that
//! was not yet deposited still counts as missing on the server, which reveals nothing about
//! contents a caller cannot read) and skips deposits already acknowledged for contents the
//! server still reports held.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use vault::{Digest, DocType, NewDocument, OwnerId, Purpose, Timestamp};

use crate::{Client, Error};

/// One file to deposit and what to say about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The file.
    pub file: PathBuf,
    /// Whose document it is.
    pub owner: OwnerId,
    /// Document type.
    pub doc_type: DocType,
    /// Title (default: the file name).
    #[serde(default)]
    pub title: Option<String>,
    /// Media type (default: guessed from the extension).
    #[serde(default)]
    pub media_type: Option<String>,
    /// File name offered on download (default: the file's name).
    #[serde(default)]
    pub file_name: Option<String>,
    /// Document number or dossier code.
    #[serde(default)]
    pub reference: Option<String>,
    /// When issued (agencies; default: now).
    #[serde(default)]
    pub issued_at: Option<Timestamp>,
    /// Start of validity.
    #[serde(default)]
    pub valid_from: Option<Timestamp>,
    /// End of validity.
    #[serde(default)]
    pub valid_until: Option<Timestamp>,
    /// The procedure that produced it.
    #[serde(default)]
    pub procedure: Option<Purpose>,
}

impl Item {
    fn new_document(&self, digest: Digest) -> NewDocument {
        let name = self.file.file_name().map(|n| n.to_string_lossy().into_owned());
        NewDocument {
            digest,
            doc_type: self.doc_type.clone(),
            title: self.title.clone().or_else(|| name.clone()).unwrap_or_else(|| self.doc_type.as_str().to_owned()),
            media_type: self.media_type.clone().unwrap_or_else(|| guess_media_type(&self.file).to_owned()),
            file_name: self.file_name.clone().or(name),
            issuer: None,
            issued_at: self.issued_at,
            valid_from: self.valid_from,
            valid_until: self.valid_until,
            reference: self.reference.clone(),
            procedure: self.procedure.clone(),
            signature: None,
        }
    }
}

/// A media type from the file extension (`application/octet-stream` if unknown).
pub fn guess_media_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("pdf") => "application/pdf",
        Some("txt") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("tif" | "tiff") => "image/tiff",
        Some("zip") => "application/zip",
        Some("docx") => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        Some("xlsx") => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        _ => "application/octet-stream",
    }
}

/// Reads a manifest: CSV with a header row (columns named as [`Item`]'s fields; `file`,
/// `owner` and `doc_type` required, empty cells are absent values), or a JSON array of such
/// objects. Relative file paths are taken from the manifest's folder.
pub fn read_manifest(path: &Path) -> Result<Vec<Item>, Error> {
    let base = path.parent().unwrap_or(Path::new("."));
    let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let bad = |line: String, e: &dyn std::fmt::Display| Error::Invalid(format!("{}{line}: {e}", path.display()));
    let mut items: Vec<Item> = if is_json {
        let data = std::fs::read(path).map_err(Error::io(path))?;
        serde_json::from_slice(&data).map_err(|e| bad(String::new(), &e))?
    } else {
        let mut r =
            csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(path).map_err(|e| bad(String::new(), &e))?;
        let headers = r.headers().map_err(|e| bad(String::new(), &e))?.clone();
        let mut out = Vec::new();
        for (n, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| bad(format!(":{}", n + 2), &e))?;
            // Empty cells are absent values; the typed fields then parse like JSON.
            let mut obj = serde_json::Map::new();
            for (h, v) in headers.iter().zip(rec.iter()) {
                if !v.is_empty() {
                    obj.insert(h.to_owned(), serde_json::Value::String(v.to_owned()));
                }
            }
            out.push(
                serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| bad(format!(":{}", n + 2), &e))?,
            );
        }
        out
    };
    for it in &mut items {
        if it.file.is_relative() {
            it.file = base.join(&it.file);
        }
    }
    Ok(items)
}

/// What a file's deposit came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Uploaded and deposited.
    Uploaded,
    /// The content was held already: nothing uploaded.
    Held,
    /// Failed (see the summary).
    Failed,
}

/// Progress reports (the command line draws a bar from them).
pub trait Progress: Send + Sync {
    /// Called once with the totals.
    fn start(&self, _files: u64, _bytes: u64) {}
    /// Called when a file is done.
    fn file_done(&self, _bytes: u64, _outcome: Outcome) {}
}

/// No progress reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;
impl Progress for Quiet {}

/// Settings of a bulk deposit.
#[derive(Debug, Clone)]
pub struct Options {
    /// Uploads and deposits in flight.
    pub concurrency: usize,
    /// Items hashed and negotiated together.
    pub batch: usize,
    /// The journal file (none: nothing remembered between runs).
    pub journal: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self { concurrency: 16, batch: 20_000, journal: None }
    }
}

/// The result of a bulk deposit.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Files in the run.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files whose content was uploaded.
    pub uploaded_files: u64,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
    /// Files whose content was held already (not uploaded).
    pub held_files: u64,
    /// Documents created.
    pub deposited: u64,
    /// Deposits that matched an existing document (nothing created).
    pub already_deposited: u64,
    /// Files that failed, with why.
    pub failed: Vec<(PathBuf, String)>,
    /// Seconds the run took.
    pub seconds: f64,
}

/// The journal of acknowledged uploads and deposits.
#[derive(Debug, Default)]
struct Journal {
    file: Option<Mutex<std::fs::File>>,
    uploaded: Mutex<HashSet<(String, Digest)>>,
    deposited: Mutex<HashSet<String>>,
}

fn deposit_key(owner: &OwnerId, d: &NewDocument) -> String {
    let mut h = blake3::Hasher::new();
    for p in [d.doc_type.as_str(), d.reference.as_deref().unwrap_or(""), d.issuer.as_ref().map_or("", |a| a.as_str())] {
        h.update(&(p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    format!("{} {} {}", owner, d.digest, h.finalize().to_hex())
}

impl Journal {
    fn open(path: Option<&Path>) -> Result<Self, Error> {
        let Some(path) = path else { return Ok(Self::default()) };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        let j = Self::default();
        if let Ok(f) = std::fs::File::open(path) {
            // A line torn by a kill is ignored (its operation is simply done again).
            for line in std::io::BufReader::new(f).lines() {
                let line = line.map_err(Error::io(path))?;
                let mut parts = line.splitn(2, ' ');
                match (parts.next(), parts.next()) {
                    (Some("U"), Some(rest)) => {
                        if let Some((o, d)) = rest.split_once(' ') {
                            if let Ok(d) = Digest::parse(d) {
                                lock(&j.uploaded).insert((o.to_owned(), d));
                            }
                        }
                    }
                    (Some("D"), Some(rest)) if rest.split(' ').count() == 3 => {
                        lock(&j.deposited).insert(rest.to_owned());
                    }
                    _ => {}
                }
            }
        }
        // Owner ids are personal data: the journal is readable by its user only.
        let mut o = std::fs::OpenOptions::new();
        o.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut file = o.open(path).map_err(Error::io(path))?;
        // End a torn last line, so the next record starts on a line of its own.
        let len = file.metadata().map_err(Error::io(path))?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            let mut r = std::fs::File::open(path).map_err(Error::io(path))?;
            std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(len - 1)).map_err(Error::io(path))?;
            std::io::Read::read_exact(&mut r, &mut last).map_err(Error::io(path))?;
            if last != *b"\n" {
                file.write_all(b"\n").map_err(Error::io(path))?;
            }
        }
        Ok(Self { file: Some(Mutex::new(file)), ..j })
    }

    fn write(&self, line: &str) {
        if let Some(f) = &self.file {
            // One write per line with O_APPEND: lines never interleave. A failed journal write
            // only costs a repeated upload on a re-run, so it does not fail the deposit.
            let _ = lock(f).write_all(format!("{line}\n").as_bytes());
        }
    }

    fn was_uploaded(&self, owner: &OwnerId, d: &Digest) -> bool {
        lock(&self.uploaded).contains(&(owner.to_string(), *d))
    }

    fn uploaded(&self, owner: &OwnerId, d: &Digest) {
        if lock(&self.uploaded).insert((owner.to_string(), *d)) {
            self.write(&format!("U {owner} {d}"));
        }
    }

    fn was_deposited(&self, key: &str) -> bool {
        lock(&self.deposited).contains(key)
    }

    fn deposited(&self, key: String) {
        self.write(&format!("D {key}"));
        lock(&self.deposited).insert(key);
    }
}

/// Locks a mutex; a poisoned one (a panicking holder) still holds consistent sets.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An owner's contents and the server's answer about which are missing.
type OwnerAnswer = (OwnerId, HashMap<Digest, Vec<Hashed>>, Result<HashSet<Digest>, Error>);

/// A hashed item.
struct Hashed {
    item: Item,
    digest: Digest,
    size: u64,
}

/// Deposits `items` (see the module documentation).
pub async fn deposit(client: &Client, items: Vec<Item>, opts: &Options, progress: &dyn Progress) -> Summary {
    let started = std::time::Instant::now();
    let mut summary = Summary::default();
    let sizes: Vec<u64> = items.iter().map(|i| std::fs::metadata(&i.file).map(|m| m.len()).unwrap_or(0)).collect();
    summary.files = items.len() as u64;
    summary.bytes = sizes.iter().sum();
    progress.start(summary.files, summary.bytes);
    let journal = match Journal::open(opts.journal.as_deref()) {
        Ok(j) => Arc::new(j),
        Err(e) => {
            summary.failed.push((opts.journal.clone().unwrap_or_default(), e.to_string()));
            return summary;
        }
    };
    if client.agency().is_some() && client.purpose_is_unset() {
        let msg = "an agency states a purpose to ask which contents are held: set --purpose (VAULT_PURPOSE)";
        summary.failed.extend(items.into_iter().map(|i| (i.file, msg.to_owned())));
        return summary;
    }
    let mut items = items.into_iter();
    loop {
        let batch: Vec<Item> = items.by_ref().take(opts.batch.max(1)).collect();
        if batch.is_empty() {
            break;
        }
        run_batch(client, batch, opts, &journal, progress, &mut summary).await;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary
}

async fn run_batch(
    client: &Client,
    batch: Vec<Item>,
    opts: &Options,
    journal: &Arc<Journal>,
    progress: &dyn Progress,
    summary: &mut Summary,
) {
    // Small files are bound by open/read latency more than by hashing: more readers than cores.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2) * 4;
    let hashed: Vec<Result<Hashed, (Item, Error)>> = stream::iter(batch)
        .map(|item| async move {
            let path = item.file.clone();
            let r = tokio::task::spawn_blocking(move || -> Result<(Digest, u64), Error> {
                let mut f = std::fs::File::open(&path).map_err(Error::io(&path))?;
                let size = f.metadata().map_err(Error::io(&path))?.len();
                Ok((crate::digest_reader(&mut f).map_err(Error::io(&path))?, size))
            })
            .await;
            match r {
                Ok(Ok((digest, size))) => Ok(Hashed { item, digest, size }),
                Ok(Err(e)) => Err((item, e)),
                Err(e) => Err((item, Error::Invalid(format!("hashing failed: {e}")))),
            }
        })
        .buffered(workers)
        .collect()
        .await;
    // Group by owner and by content: each content is uploaded once.
    let mut by_owner: HashMap<OwnerId, HashMap<Digest, Vec<Hashed>>> = HashMap::new();
    for h in hashed {
        match h {
            Ok(h) => by_owner.entry(h.item.owner.clone()).or_default().entry(h.digest).or_default().push(h),
            Err((item, e)) => {
                progress.file_done(0, Outcome::Failed);
                summary.failed.push((item.file, e.to_string()));
            }
        }
    }
    // One `contents/missing` conversation per owner, several owners at once.
    let answers: Vec<OwnerAnswer> = stream::iter(by_owner)
        .map(|(owner, contents)| async move {
            let digests: Vec<Digest> = contents.keys().copied().collect();
            let missing = client.missing(&owner, &digests).await.map(|m| m.into_iter().collect());
            (owner, contents, missing)
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    let mut groups = Vec::new();
    for (owner, contents, missing) in answers {
        let missing = match missing {
            Ok(m) => m,
            Err(e) => {
                for h in contents.into_values().flatten() {
                    progress.file_done(h.size, Outcome::Failed);
                    summary.failed.push((h.item.file, e.to_string()));
                }
                continue;
            }
        };
        for (digest, items) in contents {
            groups.push((owner.clone(), missing.contains(&digest), items));
        }
    }
    // Small new contents travel in batches (one request and one durable wait for many); the
    // other documents about the same contents follow once those are held.
    let mut small: HashMap<OwnerId, Vec<Hashed>> = HashMap::new();
    let mut rest = Vec::new();
    for (owner, missing, mut items) in groups {
        let batchable = missing
            && items.first().is_some_and(|h| h.size <= BATCH_CONTENT_MAX && !journal.was_uploaded(&owner, &h.digest));
        if batchable && !items.is_empty() {
            let first = items.remove(0);
            small.entry(owner.clone()).or_default().push(first);
            if !items.is_empty() {
                rest.push((owner, false, items));
            }
        } else {
            rest.push((owner, missing, items));
        }
    }
    let batches: Vec<(OwnerId, Vec<Hashed>)> = small
        .into_iter()
        .flat_map(|(owner, mut items)| {
            let mut out = Vec::new();
            while !items.is_empty() {
                let tail = items.split_off(items.len().min(BATCH_ITEMS));
                out.push((owner.clone(), std::mem::replace(&mut items, tail)));
            }
            out
        })
        .collect();
    let batch_results: Vec<GroupResult> = stream::iter(batches)
        .map(|(owner, items)| {
            let journal = journal.clone();
            async move { deposit_small_batch(client, &owner, items, &journal, progress).await }
        })
        // A batch holds up to 64 contents twice (read, then in the request body): 12 in flight
        // (at most ~50 MiB of contents) keep the server's two cores busy (it stores one batch's
        // documents one after another), where 4 left it waiting: 2,011 → 3,745 files/s on the
        // small corpus (BENCHMARKS.md), peak memory 54 → 68 MiB.
        .buffer_unordered(opts.concurrency.clamp(1, BATCHES_IN_FLIGHT))
        .collect()
        .await;
    let groups = rest;
    let results: Vec<GroupResult> = stream::iter(groups)
        .map(|(owner, missing, items)| {
            let journal = journal.clone();
            async move { deposit_group(client, &owner, missing, items, &journal, progress).await }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    for r in batch_results.into_iter().chain(results) {
        summary.uploaded_files += r.uploaded_files;
        summary.uploaded_bytes += r.uploaded_bytes;
        summary.held_files += r.held_files;
        summary.deposited += r.deposited;
        summary.already_deposited += r.already_deposited;
        summary.failed.extend(r.failed);
    }
}

#[derive(Default)]
struct GroupResult {
    uploaded_files: u64,
    uploaded_bytes: u64,
    held_files: u64,
    deposited: u64,
    already_deposited: u64,
    failed: Vec<(PathBuf, String)>,
}

/// Contents up to this size are sent in batches.
const BATCH_CONTENT_MAX: u64 = 32 * 1024;
/// Documents per batch request.
const BATCH_ITEMS: usize = 64;
/// Batch requests in flight at most.
const BATCHES_IN_FLIGHT: usize = 12;

/// Stores and deposits small new contents of one owner in one batch request.
async fn deposit_small_batch(
    client: &Client,
    owner: &OwnerId,
    items: Vec<Hashed>,
    journal: &Journal,
    progress: &dyn Progress,
) -> GroupResult {
    let mut r = GroupResult::default();
    let mut sent = Vec::with_capacity(items.len());
    let mut bodies = Vec::with_capacity(items.len());
    for h in items {
        match tokio::fs::read(&h.item.file).await {
            // The file changed since it was hashed: the server would refuse it anyway.
            Ok(data) if data.len() as u64 == h.size => {
                let mut doc = h.item.new_document(h.digest);
                if let Some(c) = client.agency() {
                    c.sign(owner, h.size, &mut doc);
                }
                bodies.push((data, doc));
                sent.push(h);
            }
            Ok(_) => {
                progress.file_done(h.size, Outcome::Failed);
                r.failed.push((h.item.file, "the file changed while being deposited".into()));
            }
            Err(e) => {
                progress.file_done(h.size, Outcome::Failed);
                r.failed.push((h.item.file.clone(), Error::io(&h.item.file)(e).to_string()));
            }
        }
    }
    if sent.is_empty() {
        return r;
    }
    match client.deposit_batch(owner, &bodies).await {
        Ok(results) => {
            for ((h, (_, doc)), res) in sent.into_iter().zip(bodies).zip(results) {
                match res {
                    Ok((_, created)) => {
                        journal.uploaded(owner, &h.digest);
                        journal.deposited(deposit_key(owner, &doc));
                        r.uploaded_files += 1;
                        r.uploaded_bytes += h.size;
                        if created {
                            r.deposited += 1;
                        } else {
                            r.already_deposited += 1;
                        }
                        progress.file_done(h.size, Outcome::Uploaded);
                    }
                    Err(e) => {
                        progress.file_done(h.size, Outcome::Failed);
                        r.failed.push((h.item.file, e.to_string()));
                    }
                }
            }
        }
        Err(e) => {
            for h in sent {
                progress.file_done(h.size, Outcome::Failed);
                r.failed.push((h.item.file, e.to_string()));
            }
        }
    }
    r
}

/// Uploads one content if needed and deposits every item about it.
async fn deposit_group(
    client: &Client,
    owner: &OwnerId,
    missing: bool,
    items: Vec<Hashed>,
    journal: &Journal,
    progress: &dyn Progress,
) -> GroupResult {
    let mut r = GroupResult::default();
    let Some(first) = items.first() else { return r };
    let (digest, size) = (first.digest, first.size);
    let mut uploaded = false;
    // Held by the server, or acknowledged in an earlier run (an agency's upload that was not
    // deposited yet still reads as missing): no upload.
    let mut need_upload = missing && !journal.was_uploaded(owner, &digest);
    for h in items {
        let mut doc = h.item.new_document(h.digest);
        if let Some(c) = client.agency() {
            doc.issuer = Some(c.agency.clone());
        }
        let key = deposit_key(owner, &doc);
        if !missing && journal.was_deposited(&key) {
            r.already_deposited += 1;
            r.held_files += 1;
            progress.file_done(h.size, Outcome::Held);
            continue;
        }
        // Signed only when it is sent.
        if let Some(c) = client.agency() {
            c.sign(owner, h.size, &mut doc);
        }
        let result = async {
            if need_upload {
                // One request stores the content and deposits the document.
                let answer = client.upload_and_deposit(owner, &h.item.file, &doc).await?;
                journal.uploaded(owner, &digest);
                need_upload = false;
                uploaded = true;
                r.uploaded_files += 1;
                r.uploaded_bytes += size;
                return Ok(answer);
            }
            match client.deposit(owner, &doc).await {
                // The journal said uploaded, but the server no longer holds it: upload again.
                Err(Error::Api { status: 409, .. }) if !uploaded => {
                    let answer = client.upload_and_deposit(owner, &h.item.file, &doc).await?;
                    journal.uploaded(owner, &digest);
                    uploaded = true;
                    r.uploaded_files += 1;
                    r.uploaded_bytes += size;
                    Ok(answer)
                }
                other => other,
            }
        }
        .await;
        match result {
            Ok((_, created)) => {
                journal.deposited(key);
                if created {
                    r.deposited += 1;
                } else {
                    r.already_deposited += 1;
                }
                let outcome = if uploaded { Outcome::Uploaded } else { Outcome::Held };
                if !uploaded {
                    r.held_files += 1;
                }
                progress.file_done(h.size, outcome);
            }
            Err(e) => {
                progress.file_done(h.size, Outcome::Failed);
                r.failed.push((h.item.file, e.to_string()));
            }
        }
        // Later items about the same content were not uploaded by this group.
        uploaded = false;
    }
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn csv_and_json_manifests_parse_with_paths_from_the_manifest_folder() {
        let dir = std::env::temp_dir().join(format!("vault-client-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("m.csv");
        std::fs::write(
            &csv,
            "file,owner,doc_type,title,reference,issued_at\n\
             a.pdf,citizen:001099012345,giay-khai-sinh,Giấy khai sinh,123/2024,2024-05-06T07:08:09Z\n\
             sub/b.txt,org:0101234567,cccd,,,\n",
        )
        .unwrap();
        let items = read_manifest(&csv).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].file, dir.join("a.pdf"));
        assert_eq!(items[0].title.as_deref(), Some("Giấy khai sinh"));
        assert_eq!(items[1].title, None);
        assert_eq!(items[1].reference, None);
        let doc = items[1].new_document(Digest::of(b"x"));
        assert_eq!(doc.title, "b.txt");
        assert_eq!(doc.media_type, "text/plain; charset=utf-8");

        let json = dir.join("m.json");
        std::fs::write(&json, r#"[{"file": "/abs/c.pdf", "owner": "citizen:001099012345", "doc_type": "cccd"}]"#)
            .unwrap();
        let items = read_manifest(&json).unwrap();
        assert_eq!(items[0].file, PathBuf::from("/abs/c.pdf"));

        for bad in [
            "file,owner,doc_type\na.pdf,citizen:12,cccd\n", // malformed owner
            "file,owner\na.pdf,citizen:001099012345\n",     // no doc_type
            "file,owner,doc_type,issued_at\na,citizen:001099012345,cccd,2024-05-06\n", // not RFC 3339 Z
        ] {
            std::fs::write(&csv, bad).unwrap();
            let e = read_manifest(&csv).unwrap_err().to_string();
            assert!(e.contains("m.csv:2"), "{e}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_journal_survives_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("vault-client-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j.log");
        let owner = OwnerId::parse("citizen:001099012345").unwrap();
        let d = Digest::of(b"a");
        {
            let j = Journal::open(Some(&path)).unwrap();
            j.uploaded(&owner, &d);
        }
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"U citizen:0010990").unwrap();
        let j = Journal::open(Some(&path)).unwrap();
        assert!(j.was_uploaded(&owner, &d));
        assert!(!j.was_uploaded(&owner, &Digest::of(b"b")));
        j.uploaded(&owner, &Digest::of(b"b"));
        drop(j);
        let j = Journal::open(Some(&path)).unwrap();
        assert!(j.was_uploaded(&owner, &Digest::of(b"b")));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
