//! The metadata store on PostgreSQL (cargo feature `postgres`): the first step of scale-out
//! (SPEC.md §9a). The same ordered key-value space as the embedded store, in one table
//! `vault_meta(k bytea primary key, v bytea not null)`; values are the sealed bytes the vault
//! hands over, never opened here.
//!
//! - [`MetaStore::apply`] is one statement (so one transaction): each key's last op of the
//!   batch, the deletes and the puts together; [`MetaStore::compare_and_swap`] is one
//!   conditional statement whose row count says whether it swapped (correct between processes:
//!   PostgreSQL re-checks the condition on the row a concurrent writer committed).
//! - Every commit is durable when it returns (`synchronous_commit = on` on every connection,
//!   and the open refuses a server running with `fsync = off`), so [`MetaStore::sync`] does
//!   nothing.
//! - Scans are ordered by key over the prefix's range and read in pages of
//!   [`PgOptions::page_rows`] rows (keyset paging), so memory stays flat however long the scan.
//! - A small pool of connections lets several blocking threads query at once.
//! - On an async executor's worker thread, a read inside the vault's non-blocking section is
//!   refused with [`StoreError::WouldBlock`] (the caller takes its blocking path); any other
//!   call made there hands the worker's other tasks to another thread first
//!   (`tokio::task::block_in_place`), since the `postgres` client blocks.
//! - Several vault instances may share one database ([`MetaStore::shared`], SPEC.md §9a
//!   "Several instances"): the audit sequencer's batches run in transactions that take
//!   [`SEQUENCER_LOCK`] ([`MetaStore::sequenced`]), owners' change locks are session advisory
//!   locks on connections of their own ([`MetaStore::lock`]), and one instance at a time holds
//!   [`BACKGROUND_LOCK`] for the periodic work ([`MetaStore::background_lease`]).

use std::fmt;
use std::str::FromStr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use postgres::{Client, NoTls, Statement};

use crate::storage::{MetaStore, Op, ScanIter, StoreError};

/// The schema version this build writes and reads (`vault_schema_version.version`). Version 2
/// (the tables of version 1) marks a database that instances sharing it use (SPEC.md §9a
/// "Several instances"): builds of version 1, which allowed one instance per database, refuse
/// to open it.
pub const SCHEMA_VERSION: i32 = 2;

/// The lock that builds allowing one instance per database held exclusively for their whole
/// life: the bytes "vault" 0 0 1 as a big-endian integer (advisory locks are per database).
/// Every instance of this build holds it *shared* for its life, so an older build still running
/// makes it refuse to open, and an older build refuses to start beside it.
pub const LEGACY_INSTANCE_LOCK: i64 = 0x7661_756c_7400_0001;
/// The advisory lock held while the schema is created or migrated (instances starting together
/// migrate one at a time): "vault" 0 0 4.
pub const MIGRATION_LOCK: i64 = 0x7661_756c_7400_0004;
/// How long a statement on the background lease's connection may take, and how soon a dead peer
/// is noticed on it (TCP keepalives), so a half-open connection does not keep the lease.
const LEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// The transaction-level advisory lock every audit batch takes first (the sequencer's lease,
/// held for one batch: SPEC.md §14 "The lease"): "vault" 0 0 2.
pub const SEQUENCER_LOCK: i64 = 0x7661_756c_7400_0002;
/// Longest wait for the sequencer's lock of a batch (another instance's batch holds it for a
/// few milliseconds; a dead holder's session ends within about half a minute).
const SEQUENCER_WAIT_SECS: u32 = 45;
const SEQUENCER_WAIT: &str = "SET LOCAL lock_timeout = '45s'";
/// The session advisory lock of the instance that runs the periodic work: "vault" 0 0 3.
pub const BACKGROUND_LOCK: i64 = 0x7661_756c_7400_0003;
/// The first key of the vault's own two-key advisory locks ("vauL"; the second key is the first
/// four bytes of the BLAKE3 hash of the lock's name: `vault-registry`, `vault-outbox`,
/// `vault-stats-rollup`). The two-key space does not meet the one-key one, where owners' change
/// locks are (the first eight bytes of the owner's storage reference).
pub const NAMED_LOCK_CLASS: i32 = 0x7661_754c;
/// Most connections that hold (or wait for) owners' change locks at once.
const LOCK_CONNECTIONS: usize = 64;
/// Longest wait for an owner's change lock held by another instance before the call fails.
const LOCK_TIMEOUT: &str = "60s";

/// How long a query waits for a free pooled connection before it fails.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// The schema, created at open if missing (each statement is idempotent).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS vault_schema_version (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version integer NOT NULL
);
CREATE TABLE IF NOT EXISTS vault_meta (
    k bytea PRIMARY KEY,
    v bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS vault_signed_floor (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    size bigint NOT NULL CHECK (size > 0),
    root bytea NOT NULL CHECK (length(root) = 32)
);
";

/// Settings of a [`PgMeta`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgOptions {
    /// Most connections open at once for queries (besides the one holding the background
    /// lease and those holding owners' change locks).
    pub pool_size: usize,
    /// Rows read per query of a scan.
    pub page_rows: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self { pool_size: 16, page_rows: 1000 }
    }
}

/// The statements every pooled connection has prepared.
struct Statements {
    get: Statement,
    scan_ge: Statement,
    scan_gt: Statement,
    scan_ge_lt: Statement,
    scan_gt_lt: Statement,
    cas_insert: Statement,
    cas_update: Statement,
    cas_delete: Statement,
    batch: Statement,
    sequencer_lock: Statement,
}

struct Conn {
    client: Client,
    st: Statements,
}

impl Conn {
    fn connect(config: &postgres::Config) -> Result<Self, postgres::Error> {
        let mut client = config.connect(NoTls)?;
        // Durability is PostgreSQL's: a commit returns once its WAL is flushed. The
        // compare-and-swap relies on read committed re-checking its condition on the row a
        // concurrent writer committed (SPEC.md §9a), whatever the database's default.
        client.batch_execute("SET synchronous_commit = on; SET default_transaction_isolation = 'read committed'")?;
        let st = Statements {
            get: client.prepare("SELECT v FROM vault_meta WHERE k = $1")?,
            scan_ge: client.prepare("SELECT k, v FROM vault_meta WHERE k >= $1 ORDER BY k LIMIT $2")?,
            scan_gt: client.prepare("SELECT k, v FROM vault_meta WHERE k > $1 ORDER BY k LIMIT $2")?,
            scan_ge_lt: client.prepare("SELECT k, v FROM vault_meta WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3")?,
            scan_gt_lt: client.prepare("SELECT k, v FROM vault_meta WHERE k > $1 AND k < $2 ORDER BY k LIMIT $3")?,
            cas_insert: client.prepare("INSERT INTO vault_meta (k, v) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING")?,
            cas_update: client.prepare("UPDATE vault_meta SET v = $3 WHERE k = $1 AND v = $2")?,
            cas_delete: client.prepare("DELETE FROM vault_meta WHERE k = $1 AND v = $2")?,
            // A whole batch in one statement (one round trip, its own transaction): the keys
            // to delete and the pairs to put, which are disjoint (see `apply`).
            batch: client.prepare(
                "WITH gone AS (DELETE FROM vault_meta WHERE k = ANY($1::bytea[])) \
                 INSERT INTO vault_meta (k, v) SELECT * FROM unnest($2::bytea[], $3::bytea[]) \
                 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
            )?,
            sequencer_lock: client.prepare("SELECT pg_advisory_xact_lock($1)")?,
        };
        Ok(Self { client, st })
    }
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Conn>,
    /// Connections open (idle or lent).
    open: usize,
}

/// A fixed-size pool of connections with their prepared statements. Written here rather than
/// taken from r2d2 (last released in 2022), which would need its own connection manager anyway
/// to keep each connection's prepared statements: this is a mutex, a condition variable and a
/// cap. A connection that saw any error is closed rather than reused.
struct Pool {
    config: postgres::Config,
    state: Mutex<PoolState>,
    freed: Condvar,
    max: usize,
}

struct Lent<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // Every update of the state is a push, a pop or a counter step: a panic elsewhere
        // cannot leave it half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, target: &str) -> Result<Lent<'_>, StoreError> {
        let mut st = self.lock();
        loop {
            if let Some(c) = st.idle.pop() {
                return Ok(Lent { pool: self, conn: Some(c) });
            }
            if st.open < self.max {
                st.open += 1;
                drop(st);
                return match Conn::connect(&self.config) {
                    Ok(c) => Ok(Lent { pool: self, conn: Some(c) }),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(pg_err(&format!("connecting ({target})"), &e))
                    }
                };
            }
            let (next, timeout) = self.freed.wait_timeout(st, POOL_WAIT).unwrap_or_else(|p| p.into_inner());
            st = next;
            if timeout.timed_out() && st.idle.is_empty() && st.open >= self.max {
                return Err(StoreError::Meta(format!(
                    "PostgreSQL ({target}): all {} connections stayed busy for {} s",
                    self.max,
                    POOL_WAIT.as_secs()
                )));
            }
        }
    }
}

impl Lent<'_> {
    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        self.conn.as_mut().ok_or_else(|| StoreError::Meta("PostgreSQL: connection already given back".into()))
    }

    /// Closes the connection instead of giving it back (after an error).
    fn discard(&mut self) {
        if self.conn.take().is_some() {
            self.pool.lock().open -= 1;
            self.pool.freed.notify_one();
        }
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut st = self.pool.lock();
            if c.client.is_closed() {
                st.open -= 1;
            } else {
                st.idle.push(c);
            }
            drop(st);
            self.pool.freed.notify_one();
        }
    }
}

/// Runs `f`, which blocks on the network, where blocking is allowed: as is on a plain thread
/// (or a blocking-pool thread); on a multi-threaded tokio runtime's worker, after handing the
/// worker's other tasks to another thread; on another runtime, on a thread of its own.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(_) => f(),
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

/// A lock wait that ended at `lock_timeout` (SQLSTATE 55P03).
fn lock_not_available(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| *c == postgres::error::SqlState::LOCK_NOT_AVAILABLE)
}

/// A transaction PostgreSQL rolled back whole for a conflict with another one.
fn retryable(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.code().is_some_and(|c| *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE)
}

fn pg_err(what: &str, e: &postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            if let Some(src) = std::error::Error::source(e) {
                s.push_str(&format!(": {src}"));
            }
            s
        }
    };
    StoreError::Meta(format!("PostgreSQL, {what}: {detail}"))
}

/// The first key after every key that starts with `prefix` (exclusive upper bound of its
/// range): the prefix without its trailing 0xFF bytes, with its last byte plus one. None when
/// there is no such key (an empty prefix, or only 0xFF bytes): the range is unbounded above.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A [`MetaStore`] in a PostgreSQL database (SPEC.md §9a).
pub struct PgMeta {
    pool: Pool,
    /// The connection that holds [`BACKGROUND_LOCK`] once this instance takes the lease, and
    /// whether it does.
    instance: Mutex<(Client, bool)>,
    /// Connections for owners' change locks.
    locks: std::sync::Arc<LockPool>,
    /// The signed floor as last read or raised here (raises are monotonic in the database,
    /// whichever instance raises).
    floor: Mutex<Option<(u64, [u8; 32])>>,
    /// Where, for messages: `postgres://user@host:port/db`, never a password.
    target: String,
    page_rows: i64,
}

impl fmt::Debug for PgMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgMeta({})", self.target)
    }
}

/// `postgres://user@host:port/db` of a configuration, without its password.
fn describe(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or(config.get_user().unwrap_or(""))
    )
}

/// `postgres://user@host:port/db` of a connection string, never its password (for logs);
/// `(not a PostgreSQL URL)` if it does not parse.
pub fn describe_url(url: &str) -> String {
    postgres::Config::from_str(url).map_or_else(|_| "(not a PostgreSQL URL)".into(), |c| describe(&c))
}

impl PgMeta {
    /// Opens the store in the database of `url` (`postgres://user[:password]@host:port/db`, or
    /// PostgreSQL's `key=value` form) with the default [`PgOptions`].
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, PgOptions::default())
    }

    /// [`PgMeta::open`] with `options`. Creates the schema if the database has none, refuses a
    /// schema of a newer version and a server with `fsync = off`. Other instances may have the
    /// same database open (SPEC.md §9a "Several instances").
    pub fn open_with(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        let mut config = postgres::Config::from_str(url)
            .map_err(|e| StoreError::Meta(format!("the metadata URL is not a PostgreSQL connection string: {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name("vault");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        dead_peer_detection(&mut config);
        let target = describe(&config);
        off_runtime(|| {
            let err = |what: &str| {
                let what = format!("{what} ({target})");
                move |e: postgres::Error| pg_err(&what, &e)
            };
            let mut instance = config.connect(NoTls).map_err(err("connecting"))?;
            let beside: bool = instance
                .query_one("SELECT pg_try_advisory_lock_shared($1)", &[&LEGACY_INSTANCE_LOCK])
                .and_then(|r| r.try_get(0))
                .map_err(err("checking for an older vault-server"))?;
            if !beside {
                return Err(StoreError::Meta(format!(
                    "the metadata database {target} is held by an older vault-server that allows one instance \
                     per database: stop it (or upgrade it) first"
                )));
            }
            let fsync: String =
                instance.query_one("SHOW fsync", &[]).and_then(|r| r.try_get(0)).map_err(err("reading fsync"))?;
            if fsync != "on" {
                return Err(StoreError::Meta(format!(
                    "PostgreSQL at {target} runs with fsync = {fsync}: its commits are not durable, and the vault \
                     acknowledges a write only once it is durable; set fsync = on"
                )));
            }
            instance
                .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
                .map_err(err("taking the migration lock"))?;
            let migrated = migrate(&mut instance);
            instance
                .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
                .map_err(err("releasing the migration lock"))?;
            migrated.map_err(|e| match e {
                Migration::Pg(e) => pg_err(&format!("creating the schema ({target})"), &e),
                Migration::Newer(v) => StoreError::Meta(format!(
                    "the vault schema in {target} is version {v}, newer than this build's {SCHEMA_VERSION}: \
                     use a newer vault-server"
                )),
            })?;
            bound_statements(&mut instance).map_err(err("setting the statement timeout"))?;
            let floor = read_floor(&mut instance).map_err(|e| match e {
                Some(e) => pg_err(&format!("reading the signed floor ({target})"), &e),
                None => StoreError::Damaged {
                    file: format!("the table vault_signed_floor in {target}"),
                    offset: None,
                    what: "its row is not a size above 0 and a 32-byte root".into(),
                },
            })?;
            Ok(Self {
                pool: Pool {
                    config: config.clone(),
                    state: Mutex::default(),
                    freed: Condvar::new(),
                    max: options.pool_size.max(1),
                },
                instance: Mutex::new((instance, false)),
                locks: std::sync::Arc::new(LockPool {
                    config: config.clone(),
                    idle: Mutex::default(),
                    open: Mutex::new(0),
                    freed: Condvar::new(),
                }),
                floor: Mutex::new(floor),
                target: target.clone(),
                page_rows: i64::try_from(options.page_rows.max(1)).unwrap_or(i64::MAX),
            })
        })
    }

    /// Where the store is (`postgres://user@host:port/db`, no password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `f` on a pooled connection where blocking is allowed. A connection that saw an
    /// error is closed.
    fn run<T: Send>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error> + Send,
    ) -> Result<T, StoreError> {
        off_runtime(|| {
            let mut lent = self.pool.get(&self.target)?;
            let out = f(lent.conn()?);
            if out.is_err() {
                lent.discard();
            }
            out.map_err(|e| pg_err(what, &e))
        })
    }

    /// A read refused in the vault's non-blocking section (see the module's documentation).
    fn refuse_if_nonblocking() -> Result<(), StoreError> {
        if crate::storage::in_nonblocking() {
            return Err(StoreError::WouldBlock);
        }
        Ok(())
    }

    fn page(&self, from: &[u8], inclusive: bool, upper: Option<&[u8]>) -> Result<Vec<Pair>, StoreError> {
        Self::refuse_if_nonblocking()?;
        let limit = self.page_rows;
        self.run("scanning", |c| {
            let rows = match (inclusive, upper) {
                (true, None) => c.client.query(&c.st.scan_ge, &[&from, &limit])?,
                (false, None) => c.client.query(&c.st.scan_gt, &[&from, &limit])?,
                (true, Some(u)) => c.client.query(&c.st.scan_ge_lt, &[&from, &u, &limit])?,
                (false, Some(u)) => c.client.query(&c.st.scan_gt_lt, &[&from, &u, &limit])?,
            };
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
        })
    }

    fn range(&self, from: Vec<u8>, upper: Option<Vec<u8>>) -> ScanIter<'_> {
        Box::new(PgScan { meta: self, from, inclusive: true, upper, page: Vec::new().into_iter(), done: false })
    }
}

impl Drop for PgMeta {
    fn drop(&mut self) {
        // Released at once, rather than when the server notices the connection closed, so
        // another instance can take the background lease right away. Best effort: a failure
        // leaves it to the connection's close.
        let (client, held) = self.instance.get_mut().unwrap_or_else(|p| p.into_inner());
        if *held {
            off_runtime(|| {
                let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&BACKGROUND_LOCK]);
            });
        }
    }
}

/// Every connection notices a dead peer within about half a minute, in both directions: the
/// client's TCP keepalives and user timeout (a dead server), and the server's keepalives and
/// idle-in-transaction timeout, passed as connection options (a dead client: its session, with
/// its advisory locks and any open batch transaction, ends, so another instance takes over).
fn dead_peer_detection(config: &mut postgres::Config) {
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(30));
    let server = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3 \
                  -c idle_in_transaction_session_timeout=60000";
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {server}"),
        _ => server.to_owned(),
    };
    config.options(&options);
}

/// Bounds the statements of the lease's connection (set once the schema is migrated on it).
fn bound_statements(c: &mut Client) -> Result<(), postgres::Error> {
    c.batch_execute(&format!("SET statement_timeout = {}", LEASE_TIMEOUT.as_millis()))
}

/// Connections for owners' change locks, each lent for as long as its lock is held: a session
/// advisory lock belongs to its connection, so it cannot share one with queries. Separate from
/// the query pool, so that holders of locks waiting for a query connection never starve it.
struct LockPool {
    config: postgres::Config,
    idle: Mutex<Vec<Client>>,
    open: Mutex<usize>,
    freed: Condvar,
}

impl LockPool {
    fn take(&self, target: &str) -> Result<Client, StoreError> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                return Ok(c);
            }
            if *open < LOCK_CONNECTIONS {
                *open += 1;
                drop(open);
                let connected = self.config.connect(NoTls).and_then(|mut c| {
                    c.batch_execute(&format!("SET lock_timeout = '{LOCK_TIMEOUT}'"))?;
                    Ok(c)
                });
                return connected.map_err(|e| {
                    self.closed();
                    pg_err(&format!("connecting for a change lock ({target})"), &e)
                });
            }
            let (next, timeout) = self.freed.wait_timeout(open, POOL_WAIT).unwrap_or_else(|p| p.into_inner());
            open = next;
            if timeout.timed_out() && *open >= LOCK_CONNECTIONS {
                return Err(StoreError::Meta(format!(
                    "PostgreSQL ({target}): all {LOCK_CONNECTIONS} change-lock connections stayed busy for {} s",
                    POOL_WAIT.as_secs()
                )));
            }
        }
    }

    fn give_back(&self, c: Client) {
        if c.is_closed() {
            self.closed();
            return;
        }
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        self.freed.notify_one();
    }

    fn closed(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.freed.notify_one();
    }
}

/// An owner's change lock held on a connection of [`LockPool`].
struct HeldLock {
    pool: std::sync::Arc<LockPool>,
    client: Option<Client>,
    key: LockKey,
}

/// The advisory lock of a [`crate::storage::LockName`]: an owner's is the one-key lock of the first
/// eight bytes of its storage reference (a keyed hash); the vault's own are two-key locks in
/// [`NAMED_LOCK_CLASS`], apart from every owner's.
#[derive(Clone, Copy)]
enum LockKey {
    Owner(i64),
    Named(i32),
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let Some(mut c) = self.client.take() else { return };
        let key = self.key;
        let released = off_runtime(|| {
            let r = match key {
                LockKey::Owner(k) => c.query_one("SELECT pg_advisory_unlock($1)", &[&k]),
                LockKey::Named(k) => c.query_one("SELECT pg_advisory_unlock($1, $2)", &[&NAMED_LOCK_CLASS, &k]),
            };
            r.and_then(|r| r.try_get::<_, bool>(0)).unwrap_or(false)
        });
        if released {
            self.pool.give_back(c);
        } else {
            // Closing the connection releases whatever it holds.
            drop(c);
            self.pool.closed();
        }
    }
}

/// Reads inside a sequenced transaction.
struct TxRead<'a, 'b> {
    tx: std::cell::RefCell<&'a mut postgres::Transaction<'b>>,
    get: &'a Statement,
}

impl crate::storage::MetaRead for TxRead<'_, '_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut tx = self.tx.borrow_mut();
        tx.query_opt(self.get, &[&key])
            .and_then(|r| r.map(|r| r.try_get(0)).transpose())
            .map_err(|e| pg_err("reading in a sequenced batch", &e))
    }
}

/// The keys to delete, and the keys and values to put, of a batch.
type SplitBatch<'a> = (Vec<&'a [u8]>, Vec<&'a [u8]>, Vec<&'a [u8]>);

/// A batch as its keys to delete and its pairs to put: each key's last op only, in key order
/// (so that concurrent batches lock the rows they share in one order), so the deletes and the
/// puts touch disjoint keys and run as one statement.
fn split_ops(ops: &[Op]) -> SplitBatch<'_> {
    let mut last: std::collections::BTreeMap<&[u8], Option<&[u8]>> = std::collections::BTreeMap::new();
    for op in ops {
        match op {
            Op::Put(k, v) => last.insert(k.as_slice(), Some(v.as_slice())),
            Op::Delete(k) => last.insert(k.as_slice(), None),
        };
    }
    let mut deletes: Vec<&[u8]> = Vec::new();
    let (mut keys, mut values): (Vec<&[u8]>, Vec<&[u8]>) = (Vec::new(), Vec::new());
    for (k, v) in last {
        match v {
            Some(v) => {
                keys.push(k);
                values.push(v);
            }
            None => deletes.push(k),
        }
    }
    (deletes, keys, values)
}

/// A key and its value.
type Pair = (Vec<u8>, Vec<u8>);

/// A scan in pages: each query reads the next `page_rows` keys after the last one returned.
struct PgScan<'a> {
    meta: &'a PgMeta,
    /// Where the next page starts.
    from: Vec<u8>,
    /// Whether `from` itself belongs to the range (only before the first page).
    inclusive: bool,
    upper: Option<Vec<u8>>,
    page: std::vec::IntoIter<Pair>,
    done: bool,
}

impl Iterator for PgScan<'_> {
    type Item = Result<Pair, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(item) = self.page.next() {
            return Some(Ok(item));
        }
        if self.done {
            return None;
        }
        match self.meta.page(&self.from, self.inclusive, self.upper.as_deref()) {
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
            Ok(rows) => {
                self.done = (rows.len() as i64) < self.meta.page_rows;
                if let Some((last, _)) = rows.last() {
                    self.from = last.clone();
                    self.inclusive = false;
                }
                self.page = rows.into_iter();
                self.page.next().map(Ok)
            }
        }
    }
}

enum Migration {
    Pg(postgres::Error),
    Newer(i32),
}

impl From<postgres::Error> for Migration {
    fn from(e: postgres::Error) -> Self {
        Migration::Pg(e)
    }
}

/// Creates the tables if missing and records (or checks) the schema version, in one
/// transaction.
fn migrate(client: &mut Client) -> Result<(), Migration> {
    let mut tx = client.transaction()?;
    tx.batch_execute(SCHEMA)?;
    let found: Option<i32> =
        tx.query_opt("SELECT version FROM vault_schema_version", &[])?.map(|r| r.try_get(0)).transpose()?;
    match found {
        None => {
            tx.execute("INSERT INTO vault_schema_version (version) VALUES ($1)", &[&SCHEMA_VERSION])?;
        }
        Some(v) if v > SCHEMA_VERSION => return Err(Migration::Newer(v)),
        // Version 1 to 2: the same tables; the number keeps version-1 builds out from now on.
        Some(1) => {
            tx.execute("UPDATE vault_schema_version SET version = $1", &[&SCHEMA_VERSION])?;
        }
        Some(_) => {}
    }
    tx.commit()?;
    Ok(())
}

/// The signed floor's row; `Err(None)` if it does not decode.
fn read_floor(client: &mut Client) -> Result<Option<(u64, [u8; 32])>, Option<postgres::Error>> {
    let Some(row) = client.query_opt("SELECT size, root FROM vault_signed_floor", &[]).map_err(Some)? else {
        return Ok(None);
    };
    let size: i64 = row.try_get(0).map_err(Some)?;
    let root: Vec<u8> = row.try_get(1).map_err(Some)?;
    let size = u64::try_from(size).map_err(|_| None)?;
    let root = <[u8; 32]>::try_from(root.as_slice()).map_err(|_| None)?;
    Ok(Some((size, root)))
}

impl MetaStore for PgMeta {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Self::refuse_if_nonblocking()?;
        self.run("reading", |c| c.client.query_opt(&c.st.get, &[&key])?.map(|r| r.try_get(0)).transpose())
    }

    fn scan(&self, prefix: &[u8]) -> ScanIter<'_> {
        self.range(prefix.to_vec(), prefix_end(prefix))
    }

    fn scan_from(&self, prefix: &[u8], start: &[u8]) -> ScanIter<'_> {
        let from = if start > prefix { start } else { prefix };
        self.range(from.to_vec(), prefix_end(prefix))
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        // The batch's effect is each key's last op (see `split_ops`).
        let (deletes, keys, values) = split_ops(&ops);
        self.run("applying a batch", |c| {
            // A deadlock victim or a serialization failure was rolled back whole (the outcome
            // is known: nothing applied), so it is tried again, a few times.
            let mut tries = 0;
            loop {
                match c.client.execute(&c.st.batch, &[&deletes, &keys, &values]) {
                    Err(e) if tries < 3 && retryable(&e) => tries += 1,
                    other => return other.map(drop),
                }
            }
        })
    }

    fn compare_and_swap(&self, key: &[u8], old: Option<&[u8]>, new: Option<Vec<u8>>) -> Result<bool, StoreError> {
        // One statement each, so one implicit transaction; under concurrent writers PostgreSQL
        // waits for the other's commit and re-checks the condition on the row it left.
        self.run("compare-and-swap", |c| match (old, new) {
            (None, Some(n)) => Ok(c.client.execute(&c.st.cas_insert, &[&key, &n])? == 1),
            (Some(o), Some(n)) => Ok(c.client.execute(&c.st.cas_update, &[&key, &o, &n])? == 1),
            (Some(o), None) => Ok(c.client.execute(&c.st.cas_delete, &[&key, &o])? == 1),
            (None, None) => Ok(c.client.query_opt(&c.st.get, &[&key])?.is_none()),
        })
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Every commit was durable when it returned (synchronous_commit = on, fsync = on).
        Ok(())
    }

    fn signed_floor(&self) -> Option<(u64, [u8; 32])> {
        *self.floor.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn raise_signed_floor(&self, size: u64, root: [u8; 32]) -> Result<(), StoreError> {
        // Held across the write: raises are ordered as the cache records them.
        let mut floor = self.floor.lock().unwrap_or_else(|p| p.into_inner());
        if floor.is_some_and(|(s, _)| size <= s) || size == 0 {
            return Ok(());
        }
        let stored = i64::try_from(size)
            .map_err(|_| StoreError::Meta(format!("audit size {size} does not fit PostgreSQL's bigint")))?;
        self.run("raising the signed floor", |c| {
            c.client.execute(
                "INSERT INTO vault_signed_floor (only_row, size, root) VALUES (true, $1, $2) \
                 ON CONFLICT (only_row) DO UPDATE SET size = EXCLUDED.size, root = EXCLUDED.root \
                 WHERE vault_signed_floor.size < EXCLUDED.size",
                &[&stored, &root.as_slice()],
            )
        })?;
        *floor = Some((size, root));
        Ok(())
    }

    fn close(&self) -> Result<(), StoreError> {
        // Nothing to flush; the background lease goes with its connection when the store drops.
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    fn sequenced(&self, build: &mut crate::storage::SequencedBuild<'_>) -> Result<(), StoreError> {
        off_runtime(|| {
            let mut lent = self.pool.get(&self.target)?;
            // A deadlock victim or a serialization failure was rolled back whole (nothing was
            // applied), so the transaction is run again, `build` included, a few times.
            let mut tries = 0;
            loop {
                let conn = lent.conn()?;
                // Err(Ok(e)): `build` failed (the connection is sound); Err(Err(e)): PostgreSQL did.
                let result = (|| -> Result<(), Result<StoreError, postgres::Error>> {
                    let Conn { client, st } = conn;
                    let mut tx = client.transaction().map_err(Err)?;
                    // The lease for this batch: every other instance's batch waits until the commit,
                    // and one whose holder dies is rolled back with its connection.
                    tx.batch_execute(SEQUENCER_WAIT).map_err(Err)?;
                    tx.execute(&st.sequencer_lock, &[&SEQUENCER_LOCK]).map_err(Err)?;
                    let ops = {
                        let reader = TxRead { tx: std::cell::RefCell::new(&mut tx), get: &st.get };
                        build(&reader).map_err(Ok)?
                    };
                    if !ops.is_empty() {
                        let (deletes, keys, values) = split_ops(&ops);
                        tx.execute(&st.batch, &[&deletes, &keys, &values]).map_err(Err)?;
                    }
                    tx.commit().map_err(Err)
                })();
                match result {
                    Ok(()) => return Ok(()),
                    Err(Ok(e)) => return Err(e),
                    Err(Err(e)) if tries < 3 && retryable(&e) => tries += 1,
                    // Rolled back whole each time: nothing was applied, so the call fails and the
                    // instance goes on.
                    Err(Err(e)) if retryable(&e) => {
                        return Err(StoreError::Unavailable(format!(
                            "PostgreSQL ({}): a sequenced batch was rolled back {} times: {e}",
                            self.target,
                            tries + 1
                        )));
                    }
                    // No lock within the wait: nothing was written, and the call may be tried again.
                    Err(Err(e)) if lock_not_available(&e) => {
                        return Err(StoreError::Unavailable(format!(
                            "PostgreSQL ({}): the audit sequencer's lock was held by another instance for longer than \
                         {SEQUENCER_WAIT_SECS} s",
                            self.target
                        )));
                    }
                    Err(Err(e)) => {
                        lent.discard();
                        return Err(pg_err("writing a sequenced batch", &e));
                    }
                }
            }
        })
    }

    fn lock(&self, name: crate::storage::LockName<'_>) -> Result<Option<crate::storage::RemoteLock>, StoreError> {
        Self::refuse_if_nonblocking()?;
        // Owners' references are keyed hashes already; the vault's own locks have a class of
        // their own, so that no owner's lock is ever one of them.
        let key = match name {
            crate::storage::LockName::Owner(r) => {
                LockKey::Owner(i64::from_be_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]))
            }
            crate::storage::LockName::Named(n) => {
                let h = blake3::hash(n.as_bytes());
                let h = h.as_bytes();
                LockKey::Named(i32::from_be_bytes([h[0], h[1], h[2], h[3]]))
            }
        };
        off_runtime(|| {
            let mut c = self.locks.take(&self.target)?;
            let taken = match key {
                LockKey::Owner(k) => c.execute("SELECT pg_advisory_lock($1)", &[&k]),
                LockKey::Named(k) => c.execute("SELECT pg_advisory_lock($1, $2)", &[&NAMED_LOCK_CLASS, &k]),
            };
            match taken {
                Ok(_) => Ok(Some(crate::storage::RemoteLock(Box::new(HeldLock {
                    pool: self.locks.clone(),
                    client: Some(c),
                    key,
                })))),
                Err(e) => {
                    drop(c);
                    self.locks.closed();
                    let what = match &name {
                        crate::storage::LockName::Owner(_) => "an owner's change lock",
                        crate::storage::LockName::Named(n) => n,
                    };
                    Err(match &name {
                        _ if lock_not_available(&e) => StoreError::Unavailable(format!(
                            "PostgreSQL ({}): {what} was held by another call for longer than {LOCK_TIMEOUT}",
                            self.target
                        )),
                        crate::storage::LockName::Owner(_) => pg_err("taking an owner's change lock", &e),
                        crate::storage::LockName::Named(n) => pg_err(&format!("taking the lock {n}"), &e),
                    })
                }
            }
        })
    }

    fn background_lease(&self) -> Result<bool, StoreError> {
        let mut guard = self.instance.lock().unwrap_or_else(|p| p.into_inner());
        let (client, held) = &mut *guard;
        off_runtime(|| {
            if *held {
                // Still ours while its connection lives.
                if client.simple_query("SELECT 1").is_ok() {
                    return Ok(true);
                }
                *held = false;
            }
            if client.is_closed() || client.simple_query("SELECT 1").is_err() {
                *client = self.pool.config.connect(NoTls).map_err(|e| pg_err("reconnecting", &e))?;
                bound_statements(client).map_err(|e| pg_err("reconnecting", &e))?;
                let beside: bool = client
                    .query_one("SELECT pg_try_advisory_lock_shared($1)", &[&LEGACY_INSTANCE_LOCK])
                    .and_then(|r| r.try_get(0))
                    .map_err(|e| pg_err("checking for an older vault-server", &e))?;
                if !beside {
                    return Ok(false);
                }
            }
            let got: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&BACKGROUND_LOCK])
                .and_then(|r| r.try_get(0))
                .map_err(|e| pg_err("taking the background lease", &e))?;
            *held = got;
            Ok(got)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn the_end_of_a_prefix_range() {
        assert_eq!(prefix_end(b"D"), Some(b"E".to_vec()));
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'Z', 0xff]), Some(b"[".to_vec()));
        assert_eq!(prefix_end(&[b'Z', 0xfe, 0xff, 0xff]), Some(vec![b'Z', 0xff]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
        // Every key with the prefix is below the end, and the end is the least such bound.
        for p in [&b"D"[..], &[b'Z', 0xff], &[1, 0xff, 0xff]] {
            let end = prefix_end(p).unwrap_or_default();
            for tail in [&[][..], &[0], &[0xff; 8]] {
                assert!([p, tail].concat() < end);
            }
        }
    }
}
