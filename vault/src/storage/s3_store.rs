//! Blobs in S3-compatible object storage (AWS S3, Ceph RGW, MinIO, Garage, ...), through the
//! `object_store` crate (its signer, retries and multipart protocol; nothing hand-written).
//! Feature `s3`. SPEC.md §9b.
//!
//! Layout under `s3://bucket/prefix`: `prefix/blobs/<owner ref hex>/<name hex>` for blobs and
//! `prefix/orphans/<owner ref hex>/<name hex>` for blobs set aside. A blob is written to a spool
//! file in a local folder first (the blob format writes its header last, at offset 0), then
//! uploaded on [`NewBlob::commit`]: one `PUT` up to [`MULTIPART_THRESHOLD`], a multipart upload of
//! [`PART_SIZE`] parts above it, read from the spool file one part at a time, so memory stays flat
//! whatever the size. An object store acknowledges a `PUT` (or the completion of a multipart
//! upload) only once it is durable, so a committed blob is durable when `commit` returns and
//! [`BlobStore::sync`] has nothing left to do. Reads are ranged `GET`s with a read-ahead buffer
//! of [`READ_AHEAD`] bytes (the first one also gives the size: no `HEAD`): a `Seek` costs
//! nothing until the next read.
//!
//! The trait is blocking; the store runs its requests on a small runtime of its own and waits
//! for them on a channel, so it may be called from any thread (the vault calls it from blocking
//! threads; in a non-blocking section it never reaches a blob).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload, WriteMultipart};

use crate::storage::{BlobListing, BlobName, BlobRead, BlobStore, NewBlob, StoreError};

/// Blobs up to this size are uploaded with one `PUT`; larger ones in parts.
pub const MULTIPART_THRESHOLD: u64 = 8 * 1024 * 1024;
/// The size of each part of a multipart upload (S3's minimum is 5 MiB, except the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// How much a reader fetches per ranged `GET`.
pub const READ_AHEAD: usize = 4 * 1024 * 1024;
/// Spool files end so; anything else in the spool folder is left alone.
const SPOOL_SUFFIX: &str = ".spool";

/// A failed request: the store is unavailable (or refused), the call changed nothing. The text
/// names the request; the server logs it and tells its client only that the store is unavailable.
fn s3_err(what: impl fmt::Display) -> impl FnOnce(object_store::Error) -> StoreError {
    move |e| StoreError::Unavailable(format!("object storage: {what}: {e}"))
}

/// Uploads at once, for all writers together: each holds up to about two parts in memory.
pub const MAX_CONCURRENT_UPLOADS: usize = 16;

/// A counting semaphore for the uploads (blocking callers).
#[derive(Default)]
struct Slots {
    used: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl Slots {
    fn take(self: &Arc<Self>) -> SlotGuard {
        // A poisoned count is still a count: the guard below only adds and subtracts one.
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used >= MAX_CONCURRENT_UPLOADS {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += 1;
        SlotGuard(self.clone())
    }
}

struct SlotGuard(Arc<Slots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut used = self.0.used.lock().unwrap_or_else(|p| p.into_inner());
        *used -= 1;
        self.0.freed.notify_one();
    }
}

/// The object that claims a prefix for one vault (SPEC.md §9b).
const CLAIM: &str = "vault-id";

fn io_err(what: impl fmt::Display) -> impl FnOnce(io::Error) -> StoreError {
    move |source| StoreError::Io { what: what.to_string(), source }
}

/// Where an S3 blob store is: `s3://bucket` or `s3://bucket/prefix`.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Location {
    bucket: String,
    prefix: String,
}

impl fmt::Display for S3Location {
    /// `s3://bucket` or `s3://bucket/prefix`: the form `--blobs` takes, and the store's
    /// [`BlobStore::kind`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix.as_str() {
            "" => write!(f, "s3://{}", self.bucket),
            p => write!(f, "s3://{}/{p}", self.bucket),
        }
    }
}

impl fmt::Debug for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl S3Location {
    /// The object path of `rest` under the prefix.
    fn path(&self, rest: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(rest)
        } else {
            ObjPath::from(format!("{}/{rest}", self.prefix))
        }
    }

    /// Where the blob `name` is.
    fn blob_path(&self, name: &BlobName) -> ObjPath {
        self.path(&format!("blobs/{}/{}", hex::encode(name.owner), hex::encode(name.name)))
    }
}

impl S3Location {
    /// Parses `s3://bucket[/prefix]`. The bucket follows S3's naming rules (3–63 characters of
    /// lower-case letters, digits, `-` and `.`); the prefix is path segments of letters, digits,
    /// `-`, `_` and `.` (no empty, `.` or `..` segment).
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        let bad = |why: &str| StoreError::Meta(format!("blob store location {s:?}: {why}"));
        let rest = s.strip_prefix("s3://").ok_or_else(|| bad("must start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_end_matches('/');
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && bucket.as_bytes()[0].is_ascii_alphanumeric()
            && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
        if !bucket_ok {
            return Err(bad("the bucket name must be 3-63 lower-case letters, digits, '-' or '.'"));
        }
        if prefix.len() > 512 {
            return Err(bad("the prefix is longer than 512 bytes"));
        }
        if !prefix.is_empty() {
            for seg in prefix.split('/') {
                let ok = !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
                if !ok {
                    return Err(bad("each prefix segment must be letters, digits, '-', '_' or '.'"));
                }
            }
        }
        Ok(Self { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

/// Blobs in an S3-compatible bucket. Connection settings are the usual `AWS_*` environment
/// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`
/// for a store other than AWS, `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).
pub struct S3Blobs {
    store: Arc<dyn ObjectStore>,
    loc: S3Location,
    spool: PathBuf,
    /// Always `Some` until dropped (taken by `Drop` to shut it down without blocking).
    rt: Option<tokio::runtime::Runtime>,
    /// `rt`'s handle.
    handle: tokio::runtime::Handle,
    slots: Arc<Slots>,
}

impl Drop for S3Blobs {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which tokio forbids inside async code (the
        // store may be dropped there); every request was awaited already, so nothing is lost.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl fmt::Debug for S3Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Blobs").field("location", &self.loc).field("spool", &self.spool).finish()
    }
}

impl S3Blobs {
    /// Opens the store at `location` with the settings of the `AWS_*` environment variables;
    /// blobs being written are spooled in `spool` (created if missing; use a folder on a local
    /// disk with room for the largest concurrent uploads). Checks that the bucket answers.
    pub fn open(location: &str, spool: PathBuf) -> Result<Self, StoreError> {
        Self::open_with(location, spool, &[])
    }

    /// [`S3Blobs::open`] with settings that override the environment's, by `object_store`'s
    /// names (`endpoint`, `region`, `access_key_id`, `secret_access_key`, `allow_http`, ...).
    pub fn open_with(location: &str, spool: PathBuf, settings: &[(&str, &str)]) -> Result<Self, StoreError> {
        let loc = S3Location::parse(location)?;
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&loc.bucket);
        for (k, v) in settings {
            let key = k.parse().map_err(s3_err(format_args!("setting {k}")))?;
            b = b.with_config(key, *v);
        }
        let store = b.build().map_err(s3_err(format_args!("configuring {loc:?}")))?;
        Self::with_store(Arc::new(store), loc, spool)
    }

    /// [`S3Blobs::open`] over any `object_store` implementation (tests use this with explicit
    /// settings).
    pub fn with_store(store: Arc<dyn ObjectStore>, loc: S3Location, spool: PathBuf) -> Result<Self, StoreError> {
        fs::create_dir_all(&spool).map_err(io_err(format_args!("creating spool folder {}", spool.display())))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vault-s3")
            .enable_all()
            .build()
            .map_err(io_err("starting the object-storage runtime"))?;
        let handle = rt.handle().clone();
        let s = Self { store, loc, spool, rt: Some(rt), handle, slots: Arc::default() };
        // One listing request: a wrong endpoint, bucket or key fails here, not at the first upload.
        let probe = s.path("blobs");
        let store = s.store.clone();
        s.run(async move { store.list(Some(&probe)).next().await.transpose().map(|_| ()) })?
            .map_err(s3_err(format_args!("listing {:?}", s.loc)))?;
        Ok(s)
    }

    fn run<F>(&self, fut: F) -> Result<F::Output, StoreError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        wait(&self.handle(), fut)
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }

    /// The blob `name` is absent: is it, or is the bucket gone? A `HEAD` in a missing bucket is
    /// a bare 404 too, which must not read as "no such blob": a listing of the blob's own key
    /// answers (empty) only if the bucket is there.
    fn confirm_absent(&self, name: &BlobName) -> Result<(), StoreError> {
        let (store, p) = (self.store.clone(), self.blob_path(name));
        match self.run(async move { store.list(Some(&p)).next().await.transpose() })? {
            Ok(_) => Ok(()),
            Err(e) => Err(StoreError::Unavailable(format!(
                "object storage: {} is missing and its bucket does not answer a listing: the bucket is gone or \
                 misrouted ({e})",
                self.describe(name)
            ))),
        }
    }

    fn path(&self, rest: &str) -> ObjPath {
        self.loc.path(rest)
    }

    fn blob_path(&self, name: &BlobName) -> ObjPath {
        self.loc.blob_path(name)
    }

    fn orphan_path(&self, name: &BlobName) -> ObjPath {
        self.path(&format!("orphans/{}/{}", hex::encode(name.owner), hex::encode(name.name)))
    }

    /// Every object under `rest/`, as paths relative to it.
    fn list_under(&self, rest: &str) -> Result<Vec<String>, StoreError> {
        let base = self.path(rest);
        let store = self.store.clone();
        let b = base.clone();
        let metas = self
            .run(async move {
                let mut out = Vec::new();
                let mut s = store.list(Some(&b));
                while let Some(m) = s.next().await {
                    out.push(m?.location);
                }
                Ok::<_, object_store::Error>(out)
            })?
            .map_err(s3_err(format_args!("listing {base}")))?;
        let strip = format!("{base}/");
        Ok(metas.into_iter().map(|p| p.as_ref().strip_prefix(&strip).unwrap_or(p.as_ref()).to_owned()).collect())
    }

    fn delete(&self, p: ObjPath) -> Result<(), StoreError> {
        let store = self.store.clone();
        let what = format!("deleting {p}");
        match self.run(async move { store.delete(&p).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_err(what)(e)),
        }
    }
}

fn parse_blob(rel: &str) -> Option<BlobName> {
    let (o, n) = rel.split_once('/')?;
    let mut owner = [0u8; 16];
    let mut name = [0u8; 32];
    hex::decode_to_slice(o, &mut owner).ok()?;
    hex::decode_to_slice(n, &mut name).ok()?;
    // Only the canonical (lower-case) spelling is a blob.
    (hex::encode(owner) == o && hex::encode(name) == n).then_some(BlobName { owner, name })
}

struct S3NewBlob {
    file: File,
    path: PathBuf,
    owner: [u8; 16],
    store: Arc<dyn ObjectStore>,
    loc: S3Location,
    rt: tokio::runtime::Handle,
    slots: Arc<Slots>,
}

impl Write for S3NewBlob {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.file.write(b)
    }
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        self.file.write_all(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for S3NewBlob {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

/// Runs `fut` on the store's runtime and waits for it from this (any) thread.
fn wait<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| StoreError::Meta("object storage: the request task ended without an answer".into()))
}

impl NewBlob for S3NewBlob {
    fn commit(mut self: Box<Self>, name: &BlobName) -> Result<(), StoreError> {
        if name.owner != self.owner {
            return Err(StoreError::Meta("a blob must be committed under the owner it was created for".into()));
        }
        let dest = self.loc.blob_path(name);
        let what = format!("uploading {dest}");
        let _slot = self.slots.take();
        let len = self.file.seek(SeekFrom::End(0)).map_err(io_err(format_args!("reading {}", self.path.display())))?;
        self.file.seek(SeekFrom::Start(0)).map_err(io_err(format_args!("reading {}", self.path.display())))?;
        let store = self.store.clone();
        if len <= MULTIPART_THRESHOLD {
            let mut all = Vec::with_capacity(len as usize);
            self.file.read_to_end(&mut all).map_err(io_err(format_args!("reading {}", self.path.display())))?;
            wait(&self.rt, async move { store.put(&dest, PutPayload::from(all)).await })?.map_err(s3_err(&what))?;
        } else {
            let d = dest.clone();
            let upload = wait(&self.rt, async move { store.put_multipart(&d).await })?.map_err(s3_err(&what))?;
            // One part in flight at a time beside the one being read: memory stays at about two
            // parts whatever the blob's size.
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = Vec::with_capacity(PART_SIZE);
            let outcome: Result<(), StoreError> = loop {
                buf.clear();
                let n = match (&mut self.file).take(PART_SIZE as u64).read_to_end(&mut buf) {
                    Ok(n) => n,
                    Err(e) => break Err(io_err(format_args!("reading {}", self.path.display()))(e)),
                };
                if n == 0 {
                    break Ok(());
                }
                let (w, r) = wait(&self.rt, async move {
                    let r = writer.wait_for_capacity(1).await;
                    (writer, r)
                })?;
                writer = w;
                if let Err(e) = r {
                    break Err(s3_err(&what)(e));
                }
                // `write` hands a full part to a task of the store's runtime.
                let _in_runtime = self.rt.enter();
                writer.write(&buf[..n]);
            };
            match outcome {
                Ok(()) => {
                    wait(&self.rt, async move { writer.finish().await })?.map_err(s3_err(&what))?;
                }
                Err(e) => {
                    let _ = wait(&self.rt, async move { writer.abort().await });
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl Drop for S3NewBlob {
    fn drop(&mut self) {
        // The spool file goes in any case: committed, it is uploaded; not, it is discarded.
        // Best effort; a crash leaves it to `discard_unfinished`.
        let _ = fs::remove_file(&self.path);
    }
}

/// A range being fetched: where it starts and ends, and the task fetching it.
type Fetch = (u64, u64, tokio::task::JoinHandle<Result<Vec<u8>, object_store::Error>>);

/// A blob read with ranged `GET`s. Read in order, the next range is fetched while this one is
/// consumed (two requests in flight at most, two ranges held at most).
struct S3Read {
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    rt: tokio::runtime::Handle,
    size: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
    /// The read-ahead of the range after `buf`, once reads went on past one range.
    next: Option<Fetch>,
}

impl S3Read {
    fn fetch(&self, start: u64) -> Fetch {
        let end = (start + READ_AHEAD as u64).min(self.size);
        let (store, path) = (self.store.clone(), self.path.clone());
        let task = self.rt.spawn(async move { store.get_range(&path, start..end).await.map(|b| b.to_vec()) });
        (start, end, task)
    }
}

impl Drop for S3Read {
    fn drop(&mut self) {
        if let Some((_, _, task)) = self.next.take() {
            task.abort();
        }
    }
}

impl Read for S3Read {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || self.pos >= self.size {
            return Ok(0);
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        let in_buf = self.pos >= self.buf_start && self.pos < buf_end;
        if !in_buf {
            // In order (this read starts where the last range ended): read ahead from now on.
            let sequential = !self.buf.is_empty() && self.pos == buf_end;
            let (start, end, task) = match self.next.take() {
                Some(f) if f.0 == self.pos => f,
                other => {
                    if let Some((_, _, task)) = other {
                        task.abort();
                    }
                    self.fetch(self.pos)
                }
            };
            let bytes = wait(&self.rt, task)
                .map_err(|e| io::Error::other(e.to_string()))?
                .map_err(|e| io::Error::other(format!("object storage: reading {}: {e}", self.path)))?
                .map_err(|e| io::Error::other(format!("object storage: reading {}: {e}", self.path)))?;
            if bytes.len() as u64 != end - start {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("object storage: {} is shorter than it was", self.path),
                ));
            }
            self.buf = bytes;
            self.buf_start = start;
            if sequential && end < self.size {
                self.next = Some(self.fetch(end));
            }
        }
        let off = (self.pos - self.buf_start) as usize;
        let n = out.len().min(self.buf.len() - off);
        out[..n].copy_from_slice(&self.buf[off..off + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for S3Read {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.pos = p;
        Ok(p)
    }
}

impl BlobStore for S3Blobs {
    fn create(&self, owner: &[u8; 16]) -> Result<Box<dyn NewBlob>, StoreError> {
        let path = self.spool.join(format!("{}{SPOOL_SUFFIX}", hex::encode(crate::crypto::keys::random_array::<16>())));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(format_args!("creating {}", path.display())))?;
        Ok(Box::new(S3NewBlob {
            file,
            path,
            owner: *owner,
            store: self.store.clone(),
            loc: self.loc.clone(),
            rt: self.handle(),
            slots: self.slots.clone(),
        }))
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Every commit was acknowledged by the store only once durable.
        Ok(())
    }

    fn open(&self, name: &BlobName) -> Result<Option<Box<dyn BlobRead>>, StoreError> {
        // One ranged GET of the first `READ_AHEAD` bytes: its answer gives the object's size
        // too (Content-Range), so a blob that fits is read with one request, not a HEAD and a GET.
        let path = self.blob_path(name);
        let (store, p) = (self.store.clone(), path.clone());
        let first = self.run(async move {
            let opts = GetOptions { range: Some(GetRange::Bounded(0..READ_AHEAD as u64)), ..GetOptions::default() };
            let got = store.get_opts(&p, opts).await?;
            let (size, range) = (got.meta.size, got.range.clone());
            let bytes = got.bytes().await?;
            Ok::<_, object_store::Error>((size, range, bytes.to_vec()))
        })?;
        match first {
            Ok((size, range, buf)) => {
                if range.start != 0 || buf.len() as u64 != range.end - range.start {
                    return Err(StoreError::Unavailable(format!(
                        "object storage: {} answered bytes {range:?} for its first range",
                        self.describe(name)
                    )));
                }
                Ok(Some(Box::new(S3Read {
                    store: self.store.clone(),
                    path,
                    rt: self.handle(),
                    size,
                    pos: 0,
                    buf,
                    buf_start: 0,
                    next: None,
                })))
            }
            Err(object_store::Error::NotFound { .. }) => self.confirm_absent(name).map(|()| None),
            Err(e) => Err(s3_err(format_args!("opening {path}"))(e)),
        }
    }

    fn len(&self, name: &BlobName) -> Result<Option<u64>, StoreError> {
        let path = self.blob_path(name);
        let (store, p) = (self.store.clone(), path.clone());
        match self.run(async move { store.head(&p).await })? {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => self.confirm_absent(name).map(|()| None),
            Err(e) => Err(s3_err(format_args!("reading the size of {path}"))(e)),
        }
    }

    fn remove(&self, name: &BlobName) -> Result<(), StoreError> {
        self.delete(self.blob_path(name))
    }

    fn remove_owner(&self, owner: &[u8; 16]) -> Result<usize, StoreError> {
        let o = hex::encode(owner);
        // The owner's blobs, then any of theirs set aside: all encrypted under keys the erasure
        // destroyed, all gone with it. One bulk request per thousand (DeleteObjects).
        let blobs: Vec<ObjPath> = self
            .list_under(&format!("blobs/{o}"))?
            .into_iter()
            .map(|rel| self.path(&format!("blobs/{o}/{rel}")))
            .collect();
        let aside =
            self.list_under(&format!("orphans/{o}"))?.into_iter().map(|rel| self.path(&format!("orphans/{o}/{rel}")));
        let n = blobs.len();
        let all: Vec<ObjPath> = blobs.into_iter().chain(aside).collect();
        let store = self.store.clone();
        let what = format!("erasing the blobs of {}", self.describe_base(&format!("blobs/{o}")));
        self.run(async move {
            let locations = futures_util::stream::iter(all.into_iter().map(Ok)).boxed();
            let mut deleted = store.delete_stream(locations);
            while let Some(r) = deleted.next().await {
                match r {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })?
        .map_err(s3_err(what))?;
        Ok(n)
    }

    fn list(&self) -> Result<BlobListing, StoreError> {
        let mut out = BlobListing::default();
        for rel in self.list_under("blobs")? {
            match parse_blob(&rel) {
                Some(b) => out.blobs.push(b),
                None => out.strays.push(format!("{}/{rel}", self.describe_base("blobs"))),
            }
        }
        let rd = fs::read_dir(&self.spool).map_err(io_err(format_args!("listing {}", self.spool.display())))?;
        for e in rd {
            let p = e.map_err(io_err(format_args!("listing {}", self.spool.display())))?.path();
            if p.extension().and_then(|x| x.to_str()) == Some(&SPOOL_SUFFIX[1..]) {
                out.unfinished.push(p);
            }
        }
        Ok(out)
    }

    fn discard_unfinished(&self) -> Result<usize, StoreError> {
        let unfinished = self.list()?.unfinished;
        for p in &unfinished {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format_args!("removing {}", p.display()))(e)),
            }
        }
        Ok(unfinished.len())
    }

    fn describe(&self, name: &BlobName) -> String {
        format!("s3://{}/{}", self.loc.bucket, self.blob_path(name))
    }

    fn kind(&self) -> String {
        self.loc.to_string()
    }

    fn claim(&self, id: &str, create: bool) -> Result<(), StoreError> {
        let path = self.path(CLAIM);
        let read = |s: &Self| -> Result<Option<Vec<u8>>, StoreError> {
            let (store, p) = (s.store.clone(), path.clone());
            match s.run(async move { store.get(&p).await?.bytes().await })? {
                Ok(b) => Ok(Some(b.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(s3_err(format_args!("reading {path}"))(e)),
            }
        };
        match read(self)? {
            None if !create => return Ok(()),
            Some(b) if b != id.as_bytes() => return Err(StoreError::ClaimedByAnother(self.kind())),
            _ => {}
        }
        if read(self)?.is_none() {
            // Two vaults claiming at once: both write, the last write stays, and the read
            // below tells the other one.
            let (store, p, body) = (self.store.clone(), path.clone(), id.as_bytes().to_vec());
            self.run(async move { store.put(&p, PutPayload::from(body)).await })?
                .map_err(s3_err(format_args!("writing {path}")))?;
        }
        match read(self)? {
            Some(b) if b == id.as_bytes() => Ok(()),
            _ => Err(StoreError::ClaimedByAnother(self.kind())),
        }
    }

    fn set_aside(&self, name: &BlobName) -> Result<bool, StoreError> {
        let (from, to) = (self.blob_path(name), self.orphan_path(name));
        let store = self.store.clone();
        let what = format!("setting aside {from}");
        let f = from.clone();
        match self.run(async move { store.copy(&f, &to).await })? {
            Ok(()) => {}
            // Gone meanwhile (deleted with its content): nothing to set aside.
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(s3_err(&what)(e)),
        }
        self.delete(from)?;
        Ok(true)
    }

    fn orphans_by_age(&self) -> bool {
        // A listing of a large bucket at every unclean open is slow and costly, and would take
        // another writer's blob between its upload and its record.
        true
    }

    fn written_before(&self, unix_secs: i64) -> Result<Vec<BlobName>, StoreError> {
        let base = self.path("blobs");
        let (store, b) = (self.store.clone(), base.clone());
        let metas = self
            .run(async move {
                let mut out = Vec::new();
                let mut s = store.list(Some(&b));
                while let Some(m) = s.next().await {
                    let m = m?;
                    if m.last_modified.timestamp() < unix_secs {
                        out.push(m.location);
                    }
                }
                Ok::<_, object_store::Error>(out)
            })?
            .map_err(s3_err(format_args!("listing {base}")))?;
        let strip = format!("{base}/");
        Ok(metas.iter().filter_map(|p| p.as_ref().strip_prefix(&strip).and_then(parse_blob)).collect())
    }

    fn set_aside_list(&self) -> Result<Vec<String>, StoreError> {
        let base = self.describe_base("orphans");
        Ok(self.list_under("orphans")?.into_iter().map(|rel| format!("{base}/{rel}")).collect())
    }
}

impl S3Blobs {
    fn describe_base(&self, rest: &str) -> String {
        format!("s3://{}/{}", self.loc.bucket, self.path(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_strictly() {
        let l = S3Location::parse("s3://vault-blobs/province/hn").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("vault-blobs", "province/hn"));
        assert_eq!(S3Location::parse("s3://vault-blobs/").unwrap().prefix, "");
        assert_eq!(S3Location::parse("s3://vault-blobs").unwrap().prefix, "");
        for bad in [
            "vault-blobs",
            "http://vault-blobs",
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://-dash",
            "s3://b_b_b",
            "s3://bucket/../x",
            "s3://bucket/a//b",
            "s3://bucket/a b",
            "s3://bucket/%2e%2e",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_canonical_blob_paths_are_blobs() {
        let owner = [0xabu8; 16];
        let name = [0x01u8; 32];
        let rel = format!("{}/{}", hex::encode(owner), hex::encode(name));
        assert_eq!(parse_blob(&rel), Some(BlobName { owner, name }));
        assert_eq!(parse_blob(&rel.to_uppercase()), None);
        assert_eq!(parse_blob(&format!("{rel}/x")), None);
        assert_eq!(parse_blob(&hex::encode(owner)), None);
    }
}
