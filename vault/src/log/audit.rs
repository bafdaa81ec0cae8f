//! The audit log: an append-only RFC 9162 Merkle log of every access decision, with signed
//! checkpoints (C2SP signed notes), inclusion and consistency proofs.
//!
//! Each entry is a leaf whose bytes carry no personal data in clear: the owner, document and
//! grant appear only as references keyed with a vault secret and the entry's index, so leaves
//! are unlinkable to anyone without the vault's keys. The vault keeps, per owner, a sealed index
//! of that owner's entries (`E` records) so the owner can list them and check each leaf's
//! inclusion. An entry is written in the same atomic batch as the change it records and is
//! durable before the operation returns; if it cannot be written the operation does not happen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Waker};

#[cfg(doc)]
use crate::access::ReadPoll;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::crypto::keys::SecretKey;
use crate::crypto::seal::{self, aad};
use crate::engine::vault::{OwnerRef, Vault};
use crate::ids::{DocumentId, OwnerId, Purpose};
use crate::log::merkle::{self, Hash};
use crate::log::note;
use crate::log::tiles::{self, Edge, TileNodes};
use crate::storage::layout::{self, entry_key, leaf_key, prefix, tile_key, KEY_AUDIT_SIZE};
use crate::storage::Op;
use crate::time::Timestamp;
use crate::Error;

/// Changes computed while no entry can be appended ([`Vault::apply_audited_with`]).
type More<'a> = Box<dyn FnMut() -> Result<Vec<Op>, Error> + Send + 'a>;

/// The first line of every leaf.
pub const LEAF_VERSION: &str = "vault-audit-v1";

/// Most entries the sequencer writes in one batch.
pub const MAX_BATCH: usize = 256;
/// Longest a leader waits for more entries when the previous batch had several.
pub const LINGER: Duration = Duration::from_millis(1);
/// Full tiles kept in memory for proofs (8 KiB each).
const TILE_CACHE: usize = 1024;

/// The right to sequence the log (SPEC.md §14, "The lease"). Checked before every batch.
pub trait Lease: Send + Sync + std::fmt::Debug {
    /// Ok while this instance holds the lease; an error fails the batch (nothing is written).
    fn check(&self) -> Result<(), Error>;
}

/// The embedded backend's lease: the metadata database is opened by one process only (sled's
/// exclusive file lock), so the process that opened the vault holds the lease while it is open.
#[derive(Debug, Default)]
pub struct ProcessLease;

impl Lease for ProcessLease {
    fn check(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// Counters of the sequencer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SequencerStats {
    /// Batches written.
    pub batches: u64,
    /// Entries appended in them.
    pub entries: u64,
}

/// A change and its entry, waiting for the sequencer.
#[derive(Clone)]
struct Request {
    id: u64,
    ops: Vec<Op>,
    draft: Draft,
}

type Answer = Result<(u64, u64), Error>;

#[derive(Default)]
struct Queue {
    pending: Vec<Request>,
    /// A batch is being taken or written (by its leader).
    leading: bool,
    next_id: u64,
    answers: HashMap<u64, Answer>,
    /// The wake-up of each caller waiting for its answer or its turn to lead, by request id:
    /// a leader wakes exactly the callers it answered and the one that leads next, never all.
    waiters: HashMap<u64, Wake>,
    /// Callers waiting on `turn` for the end of a turn ([`Vault::apply_audited_with`]).
    turn_waiters: usize,
    /// Queued calls whose caller went away ([`Vault::abandon_queued`]): their answers are
    /// dropped, and the grant write each carries is reported done once applied.
    abandoned: HashMap<u64, Option<crate::engine::grants::GrantWrite>>,
    /// Grant writes of abandoned calls that are applied (or failed), to report done outside
    /// this lock (the grants lock is taken before it, never after).
    done_grants: Vec<crate::engine::grants::GrantWrite>,
    /// A leader waits on `arrived` for more entries.
    lingering: bool,
    /// The turn was given to an async caller ([`Polled::Lead`]) for [`Vault::lead_queue`].
    lead_given: bool,
    /// Entries in the previous batch (a lone caller does not linger).
    last_batch: usize,
    stats: SequencerStats,
}

/// What [`Vault::poll_queued`] found.
#[derive(Debug)]
pub(crate) enum Polled {
    /// The call's answer: its durability ticket (already durable) and index, or the failure.
    Ready(Answer),
    /// Not yet; the waker will be woken.
    Pending,
    /// Not yet, and no batch is being written: the caller holds the turn and must have
    /// [`Vault::lead_queue`] run.
    Lead,
}

/// A call queued at the sequencer, to be awaited with [`Vault::await_audited`].
#[derive(Debug)]
#[must_use = "a queued call must be awaited"]
pub(crate) struct Queued(u64);

/// The audit log's sequencer and its in-memory state (SPEC.md §14, "Sequencer and tiles").
pub struct AuditState {
    queue: Mutex<Queue>,
    /// Wakes the callers of [`Vault::apply_audited_with`] when a turn ends.
    turn: Condvar,
    /// Wakes a lingering leader when an entry arrives.
    arrived: Condvar,
    /// The right edge; only the leader changes it.
    edge: Mutex<Edge>,
    /// Leaves applied so far (durable once the ticket of the batch is).
    applied: AtomicU64,
    /// Full tiles (immutable) read for proofs.
    cache: Mutex<tiles::TileMap>,
    lease: Box<dyn Lease>,
}

impl Default for AuditState {
    fn default() -> Self {
        Self::with_lease(Box::new(ProcessLease))
    }
}

impl std::fmt::Debug for AuditState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditState").field("applied", &self.applied.load(Ordering::SeqCst)).finish_non_exhaustive()
    }
}

fn relock<'a, T>(r: std::sync::LockResult<MutexGuard<'a, T>>) -> MutexGuard<'a, T> {
    // Every guarded state is updated by whole assignments after the work that can fail, so a
    // panic elsewhere leaves it consistent: a poisoned lock is safe to keep using.
    r.unwrap_or_else(|p| p.into_inner())
}

impl AuditState {
    /// A sequencer that holds `lease`.
    pub fn with_lease(lease: Box<dyn Lease>) -> Self {
        Self {
            queue: Mutex::default(),
            turn: Condvar::new(),
            arrived: Condvar::new(),
            edge: Mutex::default(),
            applied: AtomicU64::new(0),
            cache: Mutex::default(),
            lease,
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        relock(self.queue.lock())
    }

    fn edge(&self) -> MutexGuard<'_, Edge> {
        relock(self.edge.lock())
    }
}

/// Ends a leader's turn even if writing the batch panics: its callers are answered (with a
/// failure if nothing else was) and the next caller may lead.
struct Turn<'a> {
    state: &'a AuditState,
    ids: Vec<u64>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut q = self.state.queue();
        for id in std::mem::take(&mut self.ids) {
            if !q.answers.contains_key(&id) {
                q.answer(id, Err(Error::AuditFailed("the audit sequencer failed".into())));
            }
        }
        q.end_turn(&self.state.turn);
    }
}

/// How a waiting caller is woken: a blocked thread, or an async task.
enum Wake {
    Thread(Arc<Condvar>),
    Task(Waker),
}

impl Wake {
    fn wake(&self) {
        match self {
            Wake::Thread(cv) => cv.notify_one(),
            Wake::Task(w) => w.wake_by_ref(),
        }
    }
}

impl Queue {
    /// Wakes the caller that should lead next: the first queued one. If that is an async
    /// caller, the blocking ones queued behind it are woken too, so that none of them depends
    /// on an executor getting round to it (or on a task that is gone).
    fn wake_next(&self) {
        let mut first_task = true;
        for r in &self.pending {
            match self.waiters.get(&r.id) {
                Some(w @ Wake::Thread(_)) => {
                    w.wake();
                    return;
                }
                Some(w @ Wake::Task(_)) if first_task => {
                    w.wake();
                    first_task = false;
                }
                _ => {}
            }
        }
    }

    /// Records `id`'s answer and wakes its caller (only it).
    fn answer(&mut self, id: u64, a: Answer) {
        if let Some(grant) = self.abandoned.remove(&id) {
            self.done_grants.extend(grant);
            return;
        }
        self.answers.insert(id, a);
        if let Some(w) = self.waiters.get(&id) {
            w.wake();
        }
    }

    /// Ends a turn: wakes the first queued caller (it leads next, or, an async one, has a
    /// leader started) and whoever waits for a turn.
    fn end_turn(&mut self, turn: &Condvar) {
        self.leading = false;
        self.wake_next();
        if self.turn_waiters > 0 {
            turn.notify_all();
        }
    }
}

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The owner of the data.
    Owner,
    /// The operator.
    Operator,
    /// An agency.
    Agency(crate::AgencyId),
    /// A citizen or organisation acting on someone else's data (always refused).
    AnotherOwner,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Owner => f.write_str("owner"),
            Actor::Operator => f.write_str("operator"),
            Actor::Agency(a) => write!(f, "agency:{a}"),
            Actor::AnotherOwner => f.write_str("another-owner"),
        }
    }
}

/// An entry to append.
#[derive(Debug, Clone)]
pub struct Draft {
    /// When.
    pub time: Timestamp,
    /// Who.
    pub actor: Actor,
    /// What (an action name of SPEC.md §14).
    pub action: &'static str,
    /// About whom, if anyone.
    pub owner: Option<OwnerId>,
    /// Which document, if one.
    pub document: Option<DocumentId>,
    /// The stated purpose.
    pub purpose: Option<Purpose>,
    /// The grant used.
    pub grant: Option<String>,
    /// `allowed` or `refused:<error code>`.
    pub outcome: String,
}

/// An entry as the owner's access log shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Entry {
    /// Global index in the log.
    pub index: u64,
    /// When.
    pub time: Timestamp,
    /// `owner`, `operator`, `agency:<id>` or `another-owner`.
    pub actor: String,
    /// Action name.
    pub action: String,
    /// The document concerned.
    pub document: Option<DocumentId>,
    /// The purpose stated.
    pub purpose: Option<Purpose>,
    /// The grant used.
    pub grant: Option<String>,
    /// `allowed` or `refused:<code>`.
    pub outcome: String,
}

/// The audit log could not record an operation, so it was not done; a stopped vault (fail-stop)
/// says so instead.
pub(crate) fn audit_failed(e: Error) -> Error {
    match e {
        Error::FailStopped { .. } => e,
        e => Error::AuditFailed(e.to_string()),
    }
}

/// The log's size as stored at `Maudit-size` (absent: empty).
fn stored_size(v: Option<Vec<u8>>) -> Result<u64, Error> {
    match v {
        None => Ok(0),
        Some(v) => {
            Ok(u64::from_be_bytes(v.as_slice().try_into().map_err(|_| Error::Corrupt("audit log size".into()))?))
        }
    }
}

/// A reference to `what` in leaf `index`: keyed BLAKE3 under the vault's audit reference key.
fn reference(key: &SecretKey, index: u64, what: &str, data: &[u8]) -> String {
    let mut h = blake3::Hasher::new_keyed(key.expose());
    h.update(what.as_bytes());
    h.update(&[0]);
    h.update(&index.to_be_bytes());
    h.update(data);
    h.finalize().to_hex().to_string()
}

/// The bytes of leaf `index` (SPEC.md §14). The actor is written as its name (`owner`,
/// `operator`, `agency:<id>`, `another-owner`): leaves written before `another-owner` existed
/// read and verify unchanged.
pub(crate) fn leaf_text(key: &SecretKey, index: u64, d: &Draft, op: Option<&OwnerRef>) -> String {
    let subject = op.map(|op| reference(key, index, "subject", op)).unwrap_or_default();
    let document = d.document.map(|id| reference(key, index, "document", id.as_bytes())).unwrap_or_default();
    let grant = d.grant.as_ref().map(|g| reference(key, index, "grant", g.as_bytes())).unwrap_or_default();
    format!(
        "{LEAF_VERSION}\ntime:{}\nactor:{}\naction:{}\nsubject:{subject}\ndocument:{document}\npurpose:{}\ngrant:{grant}\noutcome:{}\n",
        d.time,
        d.actor,
        d.action,
        d.purpose.as_ref().map(|p| p.as_str()).unwrap_or_default(),
        d.outcome
    )
}

/// Most entries in one page of an owner's access log, and the default page size.
pub const MAX_PAGE: usize = 1_000;

/// How many entries one page of the access log holds: 1 to [`MAX_PAGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(usize);

impl PageLimit {
    /// The largest page, also the default.
    pub const MAX: PageLimit = PageLimit(MAX_PAGE);

    /// A page size of `n` entries; 0 or more than [`MAX_PAGE`] is `invalid_request`.
    pub fn new(n: u64) -> Result<Self, Error> {
        match usize::try_from(n) {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(Self(n)),
            _ => Err(Error::InvalidRequest(format!("limit must be 1 to {MAX_PAGE}"))),
        }
    }

    /// The number of entries.
    pub fn get(self) -> usize {
        self.0
    }
}

impl Default for PageLimit {
    fn default() -> Self {
        Self::MAX
    }
}

/// One page of an owner's access log, ascending by index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The entries.
    pub entries: Vec<Entry>,
    /// The `after` of the next page (the last index here), or `None` when this is the last.
    pub next: Option<u64>,
}

/// An owner's leaf with its inclusion proof in the tree of `size` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafProof {
    /// Global index of the entry.
    pub index: u64,
    /// The leaf bytes.
    pub leaf: Vec<u8>,
    /// The RFC 9162 audit path, leaf to root.
    pub hashes: Vec<Hash>,
}

/// An inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The leaf's hash.
    pub leaf_hash: Hash,
    /// The audit path, leaf to root.
    pub hashes: Vec<Hash>,
}

impl Vault {
    pub(crate) fn load_audit(&self) -> Result<(), Error> {
        let size = stored_size(self.meta().get(KEY_AUDIT_SIZE)?)?;
        if size > 0 && self.meta().get(&leaf_key(size - 1))?.is_none() {
            return Err(Error::Corrupt(format!("audit log: leaf {} is missing", size - 1)));
        }
        if size > 0 && self.meta().get(&tile_key(0, 0))?.is_none() {
            self.tiles_from_leaves(size)?;
        }
        let edge = Edge::rebuild(size, |l, n| self.meta().get(&tile_key(l, n)))?
            .map_err(|e| Error::Corrupt(format!("audit log: {e}")))?;
        *self.audit.edge() = edge;
        self.audit.applied.store(size, Ordering::SeqCst);
        // The log never shrinks below, nor forks from, a checkpoint it signed.
        if let Some((signed, root)) = self.meta().signed_floor() {
            let behind = |what: String| crate::storage::StoreError::Damaged {
                file: "the audit log in the metadata database".into(),
                offset: None,
                what,
            };
            if size < signed {
                return Err(behind(format!(
                    "it has {size} entries but a checkpoint of {signed} entries was signed: acknowledged entries are lost"
                ))
                .into());
            }
            if merkle::root(&self.tile_nodes(), signed).ok() != Some(root) {
                return Err(behind(format!(
                    "its first {signed} entries no longer hash to the root of the checkpoint signed at that size"
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Converts a log stored before tiles (complete-subtree `N` keys) to tiles, computed from
    /// its leaves, then removes the `N` keys. Written in bounded durable batches with tile 0/0
    /// last: a crash before it reruns the conversion at the next open, one after it leaves only
    /// `N` keys nobody reads.
    fn tiles_from_leaves(&self, size: u64) -> Result<(), Error> {
        const PER_BATCH: usize = 2048;
        let mut edge = Edge::default();
        let mut full = Vec::new();
        for i in 0..size {
            let leaf =
                self.meta().get(&leaf_key(i))?.ok_or_else(|| Error::Corrupt(format!("audit leaf {i} is missing")))?;
            edge.push(merkle::leaf_hash(&leaf), &mut full);
        }
        let mut puts: Vec<Op> =
            full.into_iter().chain(edge.partials(usize::MAX)).map(|(l, n, b)| Op::Put(tile_key(l, n), b)).collect();
        // Tile 0/0 comes first in the list: write it last.
        puts.reverse();
        while !puts.is_empty() {
            let rest = puts.split_off(puts.len().min(PER_BATCH));
            self.apply_durable(std::mem::replace(&mut puts, rest))?;
        }
        let mut deletes = Vec::new();
        for item in self.meta().scan(&[prefix::NODE]) {
            deletes.push(Op::Delete(item?.0));
            if deletes.len() == 64 * PER_BATCH {
                self.apply_durable(std::mem::take(&mut deletes))?;
            }
        }
        if !deletes.is_empty() {
            self.apply_durable(deletes)?;
        }
        Ok(())
    }

    /// Subtree hashes read from the stored tiles (full tiles cached).
    fn tile_nodes(&self) -> TileNodes<impl Fn(u8, u64) -> Option<Arc<Vec<u8>>> + '_> {
        TileNodes::new(move |l, n| self.tile_bytes(l, n))
    }

    /// The stored tile at `level`/`index` as of the latest applied size.
    fn tile_bytes(&self, level: u8, index: u64) -> Option<Arc<Vec<u8>>> {
        if let Some(t) = relock(self.audit.cache.lock()).get(&(level, index)) {
            return Some(t.clone());
        }
        let bytes = Arc::new(self.meta().get(&tile_key(level, index)).ok().flatten()?);
        if bytes.len() == tiles::FULL_BYTES {
            let mut cache = relock(self.audit.cache.lock());
            if cache.len() >= TILE_CACHE {
                cache.clear();
            }
            cache.insert((level, index), bytes.clone());
        }
        Some(bytes)
    }

    fn leaf_bytes(&self, index: u64, d: &Draft, op: Option<&OwnerRef>) -> String {
        leaf_text(&self.audit_refs, index, d, op)
    }

    /// Applies `ops` together with the audit entry `draft` in one atomic batch and returns the
    /// durability ticket and the entry's index. Fails closed: if the entry cannot be built or
    /// written, nothing of `ops` is applied. Concurrent calls share one batch (the sequencer).
    pub(crate) fn apply_audited(&self, ops: Vec<Op>, draft: &Draft) -> Result<(u64, u64), Error> {
        let queued = self.enqueue_audited(ops, draft);
        self.await_audited(queued)
    }

    /// The first half of [`Vault::apply_audited`]: queues `ops` with the entry `draft` and
    /// returns at once. Queued calls are applied in the order they were queued, so a caller
    /// that computes its change under a lock may queue it under that lock and wait outside it
    /// (later callers' changes land after its own). Every queued call must be awaited.
    pub(crate) fn enqueue_audited(&self, ops: Vec<Op>, draft: &Draft) -> Queued {
        let st = &self.audit;
        let mut q = st.queue();
        let id = q.next_id;
        q.next_id += 1;
        q.pending.push(Request { id, ops, draft: draft.clone() });
        if q.lingering {
            st.arrived.notify_one();
        }
        Queued(id)
    }

    /// The second half of [`Vault::apply_audited`]: waits until the queued call is applied (or
    /// failed), leading a batch when no one else is; returns its ticket and index.
    pub(crate) fn await_audited(&self, queued: Queued) -> Result<(u64, u64), Error> {
        let st = &self.audit;
        let id = queued.0;
        // Its own wake-up, used with this sequencer's lock only.
        let wake = Arc::new(Condvar::new());
        let mut q = st.queue();
        loop {
            if let Some(answer) = q.answers.remove(&id) {
                q.waiters.remove(&id);
                return answer;
            }
            // A caller waiting for a turn (erasure) takes the next one and writes this call first.
            if q.leading || q.turn_waiters > 0 {
                q.waiters.insert(id, Wake::Thread(wake.clone()));
                q = relock(wake.wait(q));
                continue;
            }
            q.waiters.remove(&id);
            q.leading = true;
            // Linger (at most LINGER) only when callers are arriving together.
            if q.last_batch > 1 && q.pending.len() < MAX_BATCH {
                q.lingering = true;
                q = match st.arrived.wait_timeout_while(q, LINGER, |q| q.pending.len() < MAX_BATCH) {
                    Ok((q, _)) => q,
                    Err(p) => p.into_inner().0,
                };
                q.lingering = false;
            }
            let take = q.pending.len().min(MAX_BATCH);
            let batch: Vec<Request> = q.pending.drain(..take).collect();
            drop(q);
            self.lead(batch);
            q = st.queue();
        }
    }

    /// [`Vault::await_audited`] without blocking: the answer if it is there; otherwise
    /// registers `cx`'s waker (woken once, with the answer or when this call should lead).
    /// When no batch is being written the caller is given the turn ([`Polled::Lead`]) and must
    /// have [`Vault::lead_queue`] run on a thread that may block (it leads every queued call,
    /// its own included); an async caller never writes or syncs on its executor's thread.
    pub(crate) fn poll_queued(&self, queued: &Queued, cx: &mut Context<'_>) -> Polled {
        let id = queued.0;
        let mut q = self.audit.queue();
        if let Some(answer) = q.answers.remove(&id) {
            q.waiters.remove(&id);
            return Polled::Ready(answer);
        }
        q.waiters.insert(id, Wake::Task(cx.waker().clone()));
        // A caller waiting for a turn (erasure) takes the next one and writes this call first.
        if q.leading || q.turn_waiters > 0 {
            return Polled::Pending;
        }
        q.leading = true;
        q.lead_given = true;
        Polled::Lead
    }

    /// Leads batches until nothing is queued, then ends the turn: run, on a thread that may
    /// block, by whoever [`Vault::poll_read`] gave the turn to (SPEC.md §14). It does not
    /// wait for more entries: the calls queued while a batch is written and synced make the
    /// next one.
    ///
    /// Called when the turn was not given (twice for one [`ReadPoll::Lead`], say), it does
    /// nothing: only the holder of a turn may write.
    pub fn lead_queue(&self) {
        let st = &self.audit;
        {
            let mut q = st.queue();
            if !std::mem::take(&mut q.lead_given) {
                return;
            }
        }
        let mut turn = Turn { state: st, ids: Vec::new() };
        loop {
            let mut q = st.queue();
            // An erasure waiting for a turn gets the next one: under steady load the queue is
            // never empty, and the erasure must not wait for a quiet moment.
            if q.pending.is_empty() || q.turn_waiters > 0 {
                break;
            }
            // No lingering: what arrives while a batch is written and synced is the next batch.
            let take = q.pending.len().min(MAX_BATCH);
            let batch: Vec<Request> = q.pending.drain(..take).collect();
            drop(q);
            turn.ids = batch.iter().map(|r| r.id).collect();
            self.write_and_answer(batch);
            // Answered: the callers may already have taken their answers, which must not come back.
            turn.ids.clear();
        }
        drop(turn);
    }

    /// Writes `batch` as the leader and answers its callers; ends the turn.
    fn lead(&self, batch: Vec<Request>) {
        let mut turn = Turn { state: &self.audit, ids: batch.iter().map(|r| r.id).collect() };
        self.write_and_answer(batch);
        // Answered: the callers may already have taken their answers, which must not come back.
        turn.ids.clear();
        drop(turn);
    }

    /// Writes `batch` (during a turn), makes it durable and answers each of its callers.
    ///
    /// The leader runs the sync itself before answering, so that a caller woken with its answer
    /// finds its ticket durable and returns at once, instead of being woken a second time by
    /// the group commit (one wake-up per call, SPEC.md §14). A failed sync is not reported
    /// here: each caller's own wait for its ticket reports it (fail-stop).
    fn write_and_answer(&self, batch: Vec<Request>) {
        let n = batch.len();
        let ids: Vec<u64> = batch.iter().map(|r| r.id).collect();
        let result = self.write_batch(batch);
        if let Ok((ticket, _)) = &result {
            let _ = self.wait_ticket(*ticket);
        }
        let mut q = self.audit.queue();
        q.last_batch = n;
        match result {
            Ok((ticket, first)) => {
                q.stats.batches += 1;
                q.stats.entries += n as u64;
                for (k, id) in ids.into_iter().enumerate() {
                    q.answer(id, Ok((ticket, first + k as u64)));
                }
            }
            Err(e) => {
                for id in ids {
                    q.answer(id, Err(copy_error(&e)));
                }
            }
        }
        let done = std::mem::take(&mut q.done_grants);
        drop(q);
        for w in done {
            self.grant_done(w);
        }
    }

    /// Gives up waiting for a queued call (its caller went away): the call is still written
    /// with its batch (a queued change is never dropped), its answer is discarded, and `grant`,
    /// the grant write it carries, is reported done once it is applied. If this caller was the
    /// one to lead next, the next one is woken.
    pub(crate) fn abandon_queued(&self, queued: Queued, grant: Option<crate::engine::grants::GrantWrite>) {
        let id = queued.0;
        let mut q = self.audit.queue();
        q.waiters.remove(&id);
        if q.answers.remove(&id).is_some() {
            drop(q);
            if let Some(w) = grant {
                self.grant_done(w);
            }
            return;
        }
        q.abandoned.insert(id, grant);
        if !q.leading {
            q.wake_next();
        }
    }

    /// Appends the batch's entries at the right edge and applies every change, leaf, index
    /// entry, tile and the new size as one atomic batch; returns its ticket and first index.
    ///
    /// On a shared store the batch is built inside the store's sequencer lock
    /// ([`crate::storage::MetaStore::sequenced`], the lease of SPEC.md §14): the stored size is
    /// read first, and if another instance appended since this one's last batch, the edge is
    /// rebuilt from the stored tiles before the entries are placed after it.
    fn write_batch(&self, batch: Vec<Request>) -> Result<(u64, u64), Error> {
        self.write_batch_with(batch, None)
    }

    /// [`Vault::write_batch`], adding to its first request the changes `more` computes while no
    /// other entry can be appended, by any instance: on a shared store inside the sequencer
    /// lock, so that what `more` lists (an owner's entries and events, for an erasure) cannot
    /// gain an entry another instance commits meanwhile.
    fn write_batch_with(&self, mut batch: Vec<Request>, more: Option<More<'_>>) -> Result<(u64, u64), Error> {
        self.audit.lease.check().map_err(audit_failed)?;
        let mut edge = self.audit.edge();
        if !self.meta().shared() {
            if let (Some(mut more), Some(first)) = (more, batch.first_mut()) {
                first.ops.extend(more()?);
            }
            let (ops, next, first) = self.batch_ops(&edge, batch);
            let ticket = self.apply_ticket(ops).map_err(audit_failed)?;
            self.audit.applied.store(next.size(), Ordering::SeqCst);
            *edge = next;
            return Ok((ticket, first));
        }
        let edge: &mut Edge = &mut edge;
        let mut more = more;
        let mut refused: Option<Error> = None;
        let mut placed: Option<(Edge, u64)> = None;
        // The store may run this more than once (a transaction it retried after a deadlock):
        // each run builds the whole batch afresh from what it reads.
        let written = self.apply_sequenced(&mut |r| {
            let size = stored_size(r.get(KEY_AUDIT_SIZE)?)?;
            if size != edge.size() {
                *edge = Edge::rebuild(size, |l, n| r.get(&tile_key(l, n)))?
                    .map_err(|e| Error::Corrupt(format!("audit log: {e}")))?;
            }
            let mut batch = batch.clone();
            // Under the lock: every other instance's entries so far are committed, and no
            // more can be until this batch is.
            if let (Some(more), Some(first)) = (more.as_mut(), batch.first_mut()) {
                match more() {
                    Ok(extra) => first.ops.extend(extra),
                    Err(e) => {
                        refused = Some(e);
                        return Err(Error::InvalidRequest("not written".into()));
                    }
                }
            }
            let (ops, next, first) = self.batch_ops(edge, batch);
            placed = Some((next, first));
            Ok(ops)
        });
        // A failure of `more` is its own (nothing was written), as without a shared store.
        if let Some(e) = refused {
            return Err(e);
        }
        let ticket = written.map_err(audit_failed)?;
        let Some((next, first)) = placed else {
            return Err(audit_failed(Error::Corrupt("the sequenced batch was not built".into())));
        };
        self.audit.applied.fetch_max(next.size(), Ordering::SeqCst);
        *edge = next;
        Ok((ticket, first))
    }

    /// The changes that append `batch` after `edge`: each request's changes, its leaf and its
    /// owner's index entry, the tiles that changed and the new size; with the new edge and the
    /// first entry's index.
    fn batch_ops(&self, edge: &Edge, batch: Vec<Request>) -> (Vec<Op>, Edge, u64) {
        let first = edge.size();
        let mut next = edge.clone();
        let mut ops = Vec::new();
        let mut full = Vec::new();
        let mut top = 0;
        for (k, req) in batch.into_iter().enumerate() {
            let index = first + k as u64;
            ops.extend(req.ops);
            let draft = &req.draft;
            let op = draft.owner.as_ref().map(|o| self.owner_ref(o));
            let leaf = self.leaf_bytes(index, draft, op.as_ref());
            top = top.max(next.push(merkle::leaf_hash(leaf.as_bytes()), &mut full));
            ops.push(Op::Put(leaf_key(index), leaf.into_bytes()));
            if let Some(op) = op {
                let entry = Entry {
                    index,
                    time: draft.time,
                    actor: draft.actor.to_string(),
                    action: draft.action.to_owned(),
                    document: draft.document,
                    purpose: draft.purpose.clone(),
                    grant: draft.grant.clone(),
                    outcome: draft.outcome.clone(),
                };
                let key = entry_key(&op, index);
                let value =
                    seal::seal(&self.vault_records, &aad(&key), &serde_json::to_vec(&entry).unwrap_or_default());
                ops.push(Op::Put(key, value));
            }
        }
        for (l, n, bytes) in full.into_iter().chain(next.partials(top)) {
            ops.push(Op::Put(tile_key(l, n), bytes));
        }
        ops.push(Op::Put(KEY_AUDIT_SIZE.to_vec(), next.size().to_be_bytes().to_vec()));
        (ops, next, first)
    }

    /// [`Vault::apply_audited`], adding the changes `more` returns, computed while no other
    /// entry can be appended (every earlier entry's batch is applied, no later one is). Its
    /// caller leads: it writes what is queued first, then itself alone.
    pub(crate) fn apply_audited_with(
        &self,
        ops: Vec<Op>,
        draft: &Draft,
        more: impl FnMut() -> Result<Vec<Op>, Error> + Send,
    ) -> Result<(u64, u64), Error> {
        let st = &self.audit;
        let mut q = st.queue();
        while q.leading {
            q.turn_waiters += 1;
            q = relock(st.turn.wait(q));
            q.turn_waiters -= 1;
        }
        q.leading = true;
        let queued: Vec<Request> = q.pending.drain(..).collect();
        drop(q);
        // Ends the turn on every path, including a failing or panicking `more`. On a panic it
        // answers (with a failure) the callers not answered yet: those of the batch being
        // written and of the ones after it, never again those answered before.
        let mut turn = Turn { state: st, ids: queued.iter().map(|r| r.id).collect() };
        for chunk in chunks(queued) {
            let n = chunk.len();
            self.write_and_answer(chunk);
            turn.ids.drain(..n);
        }
        let result =
            self.write_batch_with(vec![Request { id: u64::MAX, ops, draft: draft.clone() }], Some(Box::new(more)));
        let mut q = st.queue();
        q.last_batch = 1;
        if result.is_ok() {
            q.stats.batches += 1;
            q.stats.entries += 1;
        }
        drop(q);
        drop(turn);
        result
    }

    /// Counters of the audit sequencer (batches written, entries in them).
    pub fn sequencer_stats(&self) -> SequencerStats {
        self.audit.queue().stats
    }

    /// Appends an entry on its own and waits until it is durable.
    pub(crate) fn audit_now(&self, draft: &Draft) -> Result<u64, Error> {
        let (ticket, index) = self.apply_audited(Vec::new(), draft)?;
        self.wait_ticket(ticket).map_err(audit_failed)?;
        Ok(index)
    }

    /// The number of durable entries in the log.
    pub fn audit_size(&self) -> Result<u64, Error> {
        if self.meta().shared() {
            // Every instance's entries: the stored size (each batch commits durably), never
            // below what this one applied.
            let stored = stored_size(self.meta().get(KEY_AUDIT_SIZE)?)?;
            return Ok(self.audit.applied.fetch_max(stored, Ordering::SeqCst).max(stored));
        }
        let size = self.audit.applied.load(Ordering::SeqCst);
        self.wait_ticket(self.latest_ticket())?;
        Ok(size)
    }

    /// The root hash of the first `size` entries.
    pub fn audit_root(&self, size: u64) -> Result<Hash, Error> {
        if size > self.audit_size()? {
            return Err(Error::InvalidRequest("size is beyond the tree".into()));
        }
        merkle::root(&self.tile_nodes(), size).map_err(|e| Error::Corrupt(e.to_string()))
    }

    /// The C2SP tlog-tile at `level`/`index` (`partial`: the `.p/<W>` form) as the durable log
    /// has it; `not_found` when it does not exist (yet) at the durable size (SPEC.md §14).
    pub fn tile(&self, level: u8, index: u64, partial: Option<usize>) -> Result<Vec<u8>, Error> {
        let missing = Error::NotFound("tile");
        if level > tiles::MAX_LEVEL {
            return Err(missing);
        }
        let width = tiles::width_at(self.audit_size()?, level, index);
        let want = match partial {
            None if width == tiles::WIDTH => tiles::WIDTH,
            Some(w) if (1..tiles::WIDTH).contains(&w) && w <= width => w,
            _ => return Err(missing),
        };
        let bytes = self
            .tile_bytes(level, index)
            .ok_or_else(|| Error::Corrupt(format!("audit tile {level}/{index} is missing")))?;
        bytes
            .get(..want * tiles::HASH)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::Corrupt(format!("audit tile {level}/{index} is short")))
    }

    /// The origin line of this vault's checkpoints.
    pub fn log_origin(&self) -> String {
        format!("vault/{}", hex::encode(&self.signer.public_key()[..8]))
    }

    /// A signed checkpoint (C2SP signed note) covering every entry appended before this call.
    pub fn checkpoint(&self) -> Result<String, Error> {
        Ok(self.checkpoint_with_size()?.1)
    }

    /// [`Vault::checkpoint`] and the tree size it signs, read once: proofs meant to verify
    /// against the checkpoint must be computed for exactly this size (the log may grow between
    /// two reads of the size).
    pub(crate) fn checkpoint_with_size(&self) -> Result<(u64, String), Error> {
        let size = self.audit_size()?;
        let root = merkle::root(&self.tile_nodes(), size).map_err(|e| Error::Corrupt(e.to_string()))?;
        // Never a checkpoint smaller than, or forking from, one signed before; the anchor
        // records a larger one durably before it is handed out.
        let (mut size, mut root) = (size, root);
        if let Some((signed, signed_root)) = self.meta().signed_floor() {
            let refuse = || {
                Error::AuditFailed(format!(
                    "refusing to sign a checkpoint of {size} entries that disagrees with the one of {signed} \
                     entries signed before"
                ))
            };
            match size.cmp(&signed) {
                std::cmp::Ordering::Equal if root != signed_root => return Err(refuse()),
                // A concurrent call signed a larger tree meanwhile: that one covers this call too.
                std::cmp::Ordering::Less => {
                    if signed > self.audit.applied.load(Ordering::SeqCst)
                        || merkle::root(&self.tile_nodes(), signed).ok() != Some(signed_root)
                    {
                        return Err(refuse());
                    }
                    (size, root) = (signed, signed_root);
                }
                _ => {}
            }
        }
        self.meta().raise_signed_floor(size, root)?;
        Ok((size, self.signer.sign_note(&note::checkpoint_text(&self.log_origin(), size, &root))))
    }

    /// The vault's signing key (receipts, checkpoints).
    pub fn signer(&self) -> &note::VaultSigner {
        &self.signer
    }

    /// RFC 9162 inclusion proof of entry `index` in the tree of `size` entries.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<InclusionProof, Error> {
        if size > self.audit_size()? || index >= size {
            return Err(Error::InvalidRequest("index must be below size, and size at most the tree size".into()));
        }
        let leaf = self.leaf(index)?;
        let hashes =
            merkle::inclusion_proof(&self.tile_nodes(), index, size).map_err(|e| Error::Corrupt(e.to_string()))?;
        Ok(InclusionProof { leaf_hash: merkle::leaf_hash(&leaf), hashes })
    }

    /// RFC 9162 consistency proof between the trees of `from` and `to` entries.
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, Error> {
        if to > self.audit_size()? || from > to {
            return Err(Error::InvalidRequest("from must not exceed to, and to at most the tree size".into()));
        }
        merkle::consistency_proof(&self.tile_nodes(), from, to).map_err(|e| Error::Corrupt(e.to_string()))
    }

    /// The bytes of leaf `index`.
    pub fn leaf(&self, index: u64) -> Result<Vec<u8>, Error> {
        self.meta().get(&leaf_key(index))?.ok_or(Error::NotFound("audit entry"))
    }

    /// Every entry about `owner`, oldest first.
    pub fn owner_entries(&self, owner: &OwnerId) -> Result<Vec<Entry>, Error> {
        let op = self.owner_ref(owner);
        let mut out = Vec::new();
        for item in self.meta().scan(&layout::entries_of(&op)) {
            let (k, v) = item?;
            let plain = seal::open(&self.vault_records, &aad(&k), &v)
                .map_err(|_| Error::Corrupt(crate::engine::vault::describe_key(&k)))?;
            out.push(
                serde_json::from_slice(&plain).map_err(|_| Error::Corrupt(crate::engine::vault::describe_key(&k)))?,
            );
        }
        Ok(out)
    }

    /// One page of the entries about `owner`: those with an index above `after` (all, without
    /// it), ascending, at most `limit`. A range scan from the first key wanted: the cost is the
    /// page's, not the log's.
    pub fn owner_entries_page(&self, owner: &OwnerId, after: Option<u64>, limit: PageLimit) -> Result<Page, Error> {
        let op = self.owner_ref(owner);
        let first = match after {
            None => 0,
            Some(a) => match a.checked_add(1) {
                Some(f) => f,
                None => return Ok(Page { entries: Vec::new(), next: None }),
            },
        };
        let mut entries: Vec<Entry> = Vec::with_capacity(limit.get().min(64));
        let mut more = false;
        for item in self.meta().scan_from(&layout::entries_of(&op), &entry_key(&op, first)) {
            let (k, v) = item?;
            if entries.len() == limit.get() {
                more = true;
                break;
            }
            let plain = seal::open(&self.vault_records, &aad(&k), &v)
                .map_err(|_| Error::Corrupt(crate::engine::vault::describe_key(&k)))?;
            entries.push(
                serde_json::from_slice(&plain).map_err(|_| Error::Corrupt(crate::engine::vault::describe_key(&k)))?,
            );
        }
        let next = if more { entries.last().map(|e| e.index) } else { None };
        Ok(Page { entries, next })
    }

    /// The leaves of `owner`'s entries at `indexes`, each with its inclusion proof in the tree
    /// of `size` entries (at most [`MAX_PAGE`] indexes). An index that is not an entry about
    /// `owner` is `not_found`; `size` above the tree, or an index not below it, is
    /// `invalid_request`.
    pub fn owner_leaf_proofs(&self, owner: &OwnerId, size: u64, indexes: &[u64]) -> Result<Vec<LeafProof>, Error> {
        if indexes.is_empty() || indexes.len() > MAX_PAGE {
            return Err(Error::InvalidRequest(format!("indexes must hold 1 to {MAX_PAGE} entries")));
        }
        if size > self.audit_size()? || indexes.iter().any(|&i| i >= size) {
            return Err(Error::InvalidRequest("every index must be below size, and size at most the tree size".into()));
        }
        let nodes = self.tile_nodes();
        indexes
            .iter()
            .map(|&index| {
                self.owner_entry(owner, index)?.ok_or(Error::NotFound("audit entry"))?;
                let leaf = self.leaf(index)?;
                let hashes = merkle::inclusion_proof(&nodes, index, size).map_err(|e| Error::Corrupt(e.to_string()))?;
                Ok(LeafProof { index, leaf, hashes })
            })
            .collect()
    }

    /// Whether entry `index` is about `owner` (for the owner's leaf endpoint).
    pub fn owner_entry(&self, owner: &OwnerId, index: u64) -> Result<Option<Entry>, Error> {
        let key = entry_key(&self.owner_ref(owner), index);
        match self.meta().get(&key)? {
            None => Ok(None),
            Some(v) => {
                let plain = seal::open(&self.vault_records, &aad(&key), &v)
                    .map_err(|_| Error::Corrupt(crate::engine::vault::describe_key(&key)))?;
                Ok(Some(
                    serde_json::from_slice(&plain)
                        .map_err(|_| Error::Corrupt(crate::engine::vault::describe_key(&key)))?,
                ))
            }
        }
    }

    /// Recomputes every stored tile from the leaves (for `check`); returns problems.
    pub(crate) fn check_audit(&self) -> Result<Vec<(String, String)>, Error> {
        let size = self.audit_size()?;
        let mut problems = Vec::new();
        let mut edge = Edge::default();
        let mut expected: HashMap<(u8, u64), Vec<u8>> = HashMap::new();
        let mut full = Vec::new();
        for i in 0..size {
            let Some(leaf) = self.meta().get(&leaf_key(i))? else {
                problems.push((format!("audit leaf {i}"), "missing".to_owned()));
                edge.push([0u8; 32], &mut full);
                continue;
            };
            edge.push(merkle::leaf_hash(&leaf), &mut full);
        }
        for (l, n, bytes) in full.into_iter().chain(edge.partials(usize::MAX)) {
            expected.insert((l, n), bytes);
        }
        for item in self.meta().scan(&[prefix::TILE]) {
            let (k, v) = item?;
            let pos = (k.len() == 10).then(|| {
                let mut n = [0u8; 8];
                n.copy_from_slice(&k[2..]);
                (k[1], u64::from_be_bytes(n))
            });
            match pos.and_then(|p| expected.remove(&p).map(|e| (p, e))) {
                Some((_, e)) if e == v => {}
                Some(((l, n), _)) => {
                    problems.push((format!("audit tile {l}/{n}"), "does not match the leaves".to_owned()))
                }
                None => {
                    problems.push((crate::engine::vault::describe_key(&k), "an audit tile beyond the tree".to_owned()))
                }
            }
        }
        for (l, n) in expected.into_keys() {
            problems.push((format!("audit tile {l}/{n}"), "missing".to_owned()));
        }
        Ok(problems)
    }
}

/// The same failure for another caller of a failed batch.
fn copy_error(e: &Error) -> Error {
    match e {
        Error::FailStopped { reason, outcome_unknown } => {
            Error::FailStopped { reason: reason.clone(), outcome_unknown: *outcome_unknown }
        }
        Error::AuditFailed(m) => Error::AuditFailed(m.clone()),
        e => Error::AuditFailed(e.to_string()),
    }
}

/// Splits queued requests into batches of at most [`MAX_BATCH`].
fn chunks(mut queued: Vec<Request>) -> Vec<Vec<Request>> {
    let mut out = Vec::new();
    while !queued.is_empty() {
        let rest = queued.split_off(queued.len().min(MAX_BATCH));
        out.push(std::mem::replace(&mut queued, rest));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::MasterKey;
    use std::time::Instant;

    fn draft(owner: &OwnerId) -> Draft {
        Draft {
            time: Timestamp::now(),
            actor: Actor::Owner,
            action: "document.list",
            owner: Some(owner.clone()),
            document: None,
            purpose: None,
            grant: None,
            outcome: "allowed".into(),
        }
    }

    /// Waits (bounded) until `n` entries are queued behind the held turn.
    fn until_queued(v: &Vault, n: usize) {
        let start = Instant::now();
        while v.audit.queue().pending.len() < n {
            assert!(start.elapsed() < Duration::from_secs(30), "callers never queued");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn concurrent_callers_get_consecutive_indexes_in_one_batch_and_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let v = Arc::new(Vault::open(dir.path(), &MasterKey::from_bytes([3; 32])).unwrap());
        let owner = OwnerId::parse("citizen:001099012345").unwrap();
        v.audit_now(&draft(&owner)).unwrap();
        let start = v.audit_size().unwrap();
        // Hold the turn as a leader at work would, so that every caller queues behind it.
        v.audit.queue().leading = true;
        const N: usize = 16;
        let callers: Vec<_> = (0..N)
            .map(|_| {
                let (v, owner) = (v.clone(), owner.clone());
                std::thread::spawn(move || v.audit_now(&draft(&owner)).unwrap())
            })
            .collect();
        until_queued(&v, N);
        let (commits, seq) = (v.commit_stats(), v.sequencer_stats());
        v.audit.queue().end_turn(&v.audit.turn);
        let mut got: Vec<u64> = callers.into_iter().map(|t| t.join().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, (start..start + N as u64).collect::<Vec<_>>(), "consecutive and distinct");
        let (commits2, seq2) = (v.commit_stats(), v.sequencer_stats());
        assert_eq!((seq2.batches - seq.batches, seq2.entries - seq.entries), (1, N as u64), "one batch");
        assert_eq!(commits2.written - commits.written, 1, "one atomic metadata write for the batch");
        assert_eq!(commits2.syncs - commits.syncs, 1, "one journal sync for the batch");
        // Each entry is in the log and the owner's index, and the tree verifies.
        let size = v.audit_size().unwrap();
        assert_eq!(size, start + N as u64);
        let root = v.audit_root(size).unwrap();
        for i in got {
            assert_eq!(v.owner_entry(&owner, i).unwrap().unwrap().index, i);
            let p = v.inclusion_proof(i, size).unwrap();
            assert!(merkle::verify_inclusion(&p.leaf_hash, i, size, &p.hashes, &root));
        }
        assert_eq!(root, v.audit.edge().root(), "the edge's root is the stored tree's");
        assert!(v.audit.queue().answers.is_empty(), "every answer was taken, none left behind");
        assert!(v.check(false).unwrap().is_clean());
    }

    #[test]
    fn erasure_style_calls_write_the_queue_first_then_themselves_alone() {
        let dir = tempfile::tempdir().unwrap();
        let v = Arc::new(Vault::open(dir.path(), &MasterKey::from_bytes([4; 32])).unwrap());
        let owner = OwnerId::parse("citizen:001099012345").unwrap();
        v.audit.queue().leading = true;
        let queued: Vec<_> = (0..3)
            .map(|_| {
                let (v, owner) = (v.clone(), owner.clone());
                std::thread::spawn(move || v.audit_now(&draft(&owner)).unwrap())
            })
            .collect();
        until_queued(&v, 3);
        let with = {
            let (v, owner) = (v.clone(), owner.clone());
            std::thread::spawn(move || {
                v.apply_audited_with(Vec::new(), &draft(&owner), || {
                    // Every queued entry is applied before these changes are computed.
                    Ok(vec![Op::Put(b"Mtest-seen".to_vec(), v.owner_entries(&owner)?.len().to_be_bytes().to_vec())])
                })
                .unwrap()
            })
        };
        // Give the erasure-style call time to wait for the turn too (either order is correct).
        std::thread::sleep(Duration::from_millis(20));
        v.audit.queue().end_turn(&v.audit.turn);
        let mut idx: Vec<u64> = queued.into_iter().map(|t| t.join().unwrap()).collect();
        let (ticket, own) = with.join().unwrap();
        v.wait_ticket(ticket).unwrap();
        idx.sort_unstable();
        let seen = v.meta().get(b"Mtest-seen").unwrap().unwrap();
        // Whoever took the turn first, the queued entries come before the call's own, and its
        // changes were computed after they were applied.
        assert_eq!((idx, own), (vec![0, 1, 2], 3));
        assert_eq!(seen, 3usize.to_be_bytes(), "the queue was written before `more` ran");
        assert!(v.audit.queue().answers.is_empty(), "every answer was taken, none left behind");
        assert!(v.check(false).unwrap().is_clean());
    }

    #[test]
    fn a_failed_batch_fails_every_caller_and_leaves_the_edge() {
        let dir = tempfile::tempdir().unwrap();
        let faults = crate::Faults::new();
        let meta = crate::storage::sled::SledMeta::open(&dir.path().join("meta")).unwrap().with_faults(&faults);
        let blobs = crate::storage::files::FsBlobs::open(dir.path().join("blobs")).unwrap();
        let v = Vault::open_with(Box::new(meta), Box::new(blobs), &MasterKey::from_bytes([5; 32]), None).unwrap();
        let owner = OwnerId::parse("citizen:001099012345").unwrap();
        v.audit_now(&draft(&owner)).unwrap();
        let edge = v.audit.edge().clone();
        faults.fail_nth(crate::Fault::JournalWrite, 1);
        assert!(v.apply_audited(vec![Op::Put(b"Mtest".to_vec(), vec![1])], &draft(&owner)).is_err());
        assert_eq!(*v.audit.edge(), edge, "the edge is unchanged");
        assert_eq!(v.audit.applied.load(Ordering::SeqCst), 1);
        assert_eq!(v.meta().get(b"Mtest").unwrap(), None, "nothing of the change was applied");
        assert!(v.audit_now(&draft(&owner)).is_err(), "the vault stopped");
    }

    #[test]
    fn a_log_stored_as_nodes_is_converted_to_tiles_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::from_bytes([6; 32]);
        let owner = OwnerId::parse("citizen:001099012345").unwrap();
        let (size, root) = {
            let v = Vault::open(dir.path(), &master).unwrap();
            for _ in 0..300 {
                v.audit_now(&draft(&owner)).unwrap();
            }
            v.checkpoint().unwrap();
            // Rewrite the tree as the vault stored it before tiles: complete-subtree nodes.
            let size = v.audit_size().unwrap();
            let mut ops: Vec<Op> = v.meta().scan(&[prefix::TILE]).map(|r| Op::Delete(r.unwrap().0)).collect();
            let mut mem: HashMap<(u8, u64), Hash> = HashMap::new();
            for i in 0..size {
                let h = merkle::leaf_hash(&v.leaf(i).unwrap());
                for (l, j, h) in merkle::append_nodes(i, h, |l, j| Ok(mem[&(l, j)])).unwrap() {
                    mem.insert((l, j), h);
                    ops.push(Op::Put(layout::node_key(l, j), h.to_vec()));
                }
            }
            let root = v.audit_root(size).unwrap();
            v.apply_durable(ops).unwrap();
            v.close().unwrap();
            (size, root)
        };
        let v = Vault::open(dir.path(), &master).unwrap();
        assert_eq!(v.audit_root(size).unwrap(), root);
        assert_eq!(v.meta().scan(&[prefix::NODE]).count(), 0, "the node keys are gone");
        assert_eq!(v.tile(0, 0, None).unwrap().len(), tiles::FULL_BYTES);
        assert_eq!(v.tile(0, 1, Some(44)).unwrap().len(), 44 * 32);
        assert!(v.check(true).unwrap().is_clean());
        assert_eq!(v.audit_now(&draft(&owner)).unwrap(), size);
    }

    #[test]
    fn damaged_tiles_are_found_by_check_and_a_short_edge_tile_refuses_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::from_bytes([7; 32]);
        let owner = OwnerId::parse("citizen:001099012345").unwrap();
        {
            let v = Vault::open(dir.path(), &master).unwrap();
            for _ in 0..260 {
                v.audit_now(&draft(&owner)).unwrap();
            }
            // A flipped bit in the full tile: `check` names it.
            let mut full = v.meta().get(&tile_key(0, 0)).unwrap().unwrap();
            full[100] ^= 1;
            v.apply_durable(vec![Op::Put(tile_key(0, 0), full)]).unwrap();
            relock(v.audit.cache.lock()).clear();
            let report = v.check(false).unwrap();
            assert!(report.to_string().contains("audit tile 0/0"), "{report}");
            // The partial tile the edge is rebuilt from loses its last hash.
            let mut part = v.meta().get(&tile_key(0, 1)).unwrap().unwrap();
            part.truncate(part.len() - 32);
            v.apply_durable(vec![Op::Put(tile_key(0, 1), part)]).unwrap();
            v.close().unwrap();
        }
        match Vault::open(dir.path(), &master) {
            Err(Error::Corrupt(m)) => assert!(m.contains("tile 0/1"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    fn noop_cx() -> Context<'static> {
        Context::from_waker(std::task::Waker::noop())
    }

    /// Review finding: under steady load from async callers the leader thread never found the
    /// queue empty, so an erasure (`apply_audited_with`) waited for a quiet moment. It now gets
    /// the next turn.
    #[test]
    fn an_erasure_gets_a_turn_under_steady_async_load() {
        let dir = tempfile::tempdir().unwrap();
        let v = Arc::new(Vault::open(dir.path(), &MasterKey::from_bytes([5; 32])).unwrap());
        let owner = OwnerId::parse("citizen:001099012345").unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The server's leader thread.
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Vault>>();
        let leader = std::thread::spawn(move || {
            for v in rx {
                v.lead_queue();
            }
        });
        // Open-loop traffic: a call every 20 µs, polled once as the server does; `Lead` goes to
        // the leader thread. The answers are abandoned (nobody waits for them).
        let traffic = {
            let (v, owner, stop) = (v.clone(), owner.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let q = v.enqueue_audited(Vec::new(), &draft(&owner));
                    let lead = matches!(v.poll_queued(&q, &mut noop_cx()), Polled::Lead);
                    v.abandon_queued(q, None);
                    if lead {
                        tx.send(v.clone()).unwrap();
                    }
                    std::thread::sleep(Duration::from_micros(20));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        let (v2, owner2) = (v.clone(), owner.clone());
        let erasure = std::thread::spawn(move || v2.apply_audited_with(Vec::new(), &draft(&owner2), || Ok(Vec::new())));
        while !erasure.is_finished() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let got_turn = erasure.is_finished();
        let still_running = !traffic.is_finished();
        stop.store(true, Ordering::SeqCst);
        traffic.join().unwrap();
        erasure.join().unwrap().unwrap();
        leader.join().unwrap();
        assert!(got_turn && still_running, "the erasure waited for the traffic to stop");
        // Whatever was queued is written by the next caller; nothing is left unanswered.
        v.audit_now(&draft(&owner)).unwrap();
        let q = v.audit.queue();
        assert!(q.pending.is_empty() && q.answers.is_empty() && q.abandoned.is_empty(), "nothing left behind");
    }

    /// Review finding: a blocking caller queued behind an async caller whose task is gone was
    /// never woken when the turn ended.
    #[test]
    fn a_blocking_caller_is_not_stranded_behind_a_dead_async_caller() {
        let dir = tempfile::tempdir().unwrap();
        let v = Arc::new(Vault::open(dir.path(), &MasterKey::from_bytes([6; 32])).unwrap());
        let owner = OwnerId::parse("citizen:001099012345").unwrap();
        v.audit.queue().leading = true; // a leader at work
                                        // An async call queued and polled (Pending), then its task vanishes without a trace.
        let x = v.enqueue_audited(Vec::new(), &draft(&owner));
        assert!(matches!(v.poll_queued(&x, &mut noop_cx()), Polled::Pending));
        drop(x);
        let (v2, owner2) = (v.clone(), owner.clone());
        let b = std::thread::spawn(move || v2.audit_now(&draft(&owner2)));
        until_queued(&v, 2);
        std::thread::sleep(Duration::from_millis(20));
        v.audit.queue().end_turn(&v.audit.turn); // the leader ends its turn
        let t0 = Instant::now();
        while !b.is_finished() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(b.is_finished(), "the blocking caller was stranded");
        let index = b.join().unwrap().unwrap();
        assert_eq!(index, 1, "it led the batch: the dead caller's entry first, its own after");
    }
}
