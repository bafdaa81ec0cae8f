//! Reuse statistics for the national monitoring system (SPEC.md §23): exact aggregates of reuse
//! checks, their components, content reads and the bytes dedup saved, by procedure, agency,
//! document type or month. Aggregates only: no owner, no document.
//!
//! Exactness without a read-modify-write race: every audited change that counts writes one
//! new, never-rewritten *tally* record (`S` ‖ day ‖ 16 random bytes) as an extra op of the
//! change's own audit batch, so the count is durable exactly when the change is. A query sums
//! the rollups of the days asked. Every query first folds the tallies written since the last one
//! into their day's *rollup* (`R` ‖ day), under `ROLLUP`: the fold adds the tallies it read to
//! the rollup and deletes exactly those tallies, in one atomic batch, so a tally applied while a
//! fold runs is folded by the next one, never lost or counted twice, and each tally is read once.
//! Tallies and rollups are keyed by neither owner nor document, so erasure leaves them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::macros::format_description;

use crate::access::{Caller, Component, Principal, ReuseStatus};
use crate::crypto::seal::{self, aad};
use crate::engine::vault::Vault;
use crate::ids::{AgencyId, DocType, Purpose};
use crate::log::audit::{Actor, Draft};
use crate::storage::layout::{self, key_of, prefix};
use crate::storage::Op;
use crate::time::Timestamp;
use crate::Error;

/// Serialises rollups with queries (one writer of `R` keys at a time; tallies are never
/// rewritten, so changes do not take it).
static ROLLUP: Mutex<()> = Mutex::new(());
/// `ROLLUP` across the processes sharing a store (SPEC.md §9a "Several instances"): a fold reads
/// a rollup and rewrites it, so two at once would count tallies twice or lose them.
const ROLLUP_LOCK: &str = "vault-stats-rollup";

/// Most tallies one fold batch deletes.
const FOLD_BATCH: usize = 10_000;

/// The counters of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Counters {
    /// Reuse checks answered.
    #[serde(default)]
    pub reuse_checks: u64,
    /// Components (document types) asked about in them.
    #[serde(default)]
    pub components: u64,
    /// Components held: reused instead of asked again.
    #[serde(default)]
    pub held: u64,
    /// Components with nothing usable.
    #[serde(default)]
    pub missing: u64,
    /// Components whose newest document had expired.
    #[serde(default)]
    pub expired: u64,
    /// Components whose newest document was revoked.
    #[serde(default)]
    pub revoked: u64,
    /// Components the caller's grant does not cover.
    #[serde(default)]
    pub not_granted: u64,
    /// Document contents served.
    #[serde(default)]
    pub content_reads: u64,
    /// Bytes not uploaded thanks to dedup: uploads of content already held, and digests a
    /// `contents/missing` answer let the caller skip.
    #[serde(default)]
    pub bytes_not_uploaded: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.reuse_checks += o.reuse_checks;
        self.components += o.components;
        self.held += o.held;
        self.missing += o.missing;
        self.expired += o.expired;
        self.revoked += o.revoked;
        self.not_granted += o.not_granted;
        self.content_reads += o.content_reads;
        self.bytes_not_uploaded += o.bytes_not_uploaded;
    }

    /// The CSV header of [`Counters::csv`].
    pub const CSV_HEADER: &'static str =
        "reuse_checks,components,held,missing,expired,revoked,not_granted,content_reads,bytes_not_uploaded";

    /// The counters as CSV fields, in [`Counters::CSV_HEADER`] order.
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{}",
            self.reuse_checks,
            self.components,
            self.held,
            self.missing,
            self.expired,
            self.revoked,
            self.not_granted,
            self.content_reads,
            self.bytes_not_uploaded
        )
    }
}

/// What a tally is about: the acting agency (none for an owner), the procedure, the type.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Cell {
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    agency: Option<String>,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    procedure: Option<String>,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    doc_type: Option<String>,
}

type Cells = BTreeMap<Cell, Counters>;

/// A calendar day (UTC), as days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day(i64);

const DATE: &[time::format_description::BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]");

impl Day {
    /// The day of `t`.
    pub fn of(t: Timestamp) -> Self {
        Self(t.unix().div_euclid(86_400))
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let d = time::Date::parse(s, DATE)
            .map_err(|_| Error::InvalidRequest(format!("{s:?} is not a date (YYYY-MM-DD)")))?;
        Ok(Self(d.midnight().assume_utc().unix_timestamp().div_euclid(86_400)))
    }

    fn date(self) -> Option<time::Date> {
        time::OffsetDateTime::from_unix_timestamp(self.0.saturating_mul(86_400)).ok().map(|t| t.date())
    }

    /// `YYYY-MM`.
    fn month(self) -> String {
        self.date().map(|d| format!("{:04}-{:02}", d.year(), u8::from(d.month()))).unwrap_or_default()
    }

    fn key_bytes(self) -> [u8; 8] {
        // Offset so that key order is day order for every representable day.
        (self.0 as u64 ^ (1 << 63)).to_be_bytes()
    }

    fn from_key(b: &[u8]) -> Option<Self> {
        Some(Self((u64::from_be_bytes(b.get(1..9)?.try_into().ok()?) ^ (1 << 63)) as i64))
    }
}

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.date() {
            Some(d) => write!(f, "{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
            None => write!(f, "day {}", self.0),
        }
    }
}

/// How rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum GroupBy {
    /// By procedure code (`Vault-Purpose`, the reuse check's `purpose`).
    Procedure,
    /// By acting agency (none: the owner acting).
    Agency,
    /// By document type (none: counts not about one type, such as whole checks).
    DocType,
    /// By calendar month, `YYYY-MM`.
    Month,
}

impl GroupBy {
    /// Parses `procedure`, `agency`, `doc_type` or `month`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "procedure" => Ok(Self::Procedure),
            "agency" => Ok(Self::Agency),
            "doc_type" => Ok(Self::DocType),
            "month" => Ok(Self::Month),
            _ => Err(Error::InvalidRequest("by must be procedure, agency, doc_type or month".into())),
        }
    }

    /// The name [`GroupBy::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Procedure => "procedure",
            Self::Agency => "agency",
            Self::DocType => "doc_type",
            Self::Month => "month",
        }
    }
}

/// One row of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Row {
    /// The group's value (procedure code, agency id, document type or `YYYY-MM`); `null` for
    /// counts without one (an owner's own calls have no agency, a whole check no type).
    pub group: Option<String>,
    /// The counters.
    #[serde(flatten)]
    pub counters: Counters,
}

/// A reuse-statistics report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Report {
    /// First day counted (UTC), inclusive.
    pub from: String,
    /// Last day counted (UTC), inclusive.
    pub to: String,
    /// The grouping.
    pub by: GroupBy,
    /// The groups, ordered by value (`null` first).
    pub rows: Vec<Row>,
    /// All rows together.
    pub total: Counters,
}

impl Report {
    /// The report as CSV (RFC 4180): a header `<by>,<counters…>`, one line per row, no total.
    pub fn to_csv(&self) -> String {
        let mut out = format!("{},{}\r\n", self.by.as_str(), Counters::CSV_HEADER);
        for r in &self.rows {
            let g = r.group.as_deref().unwrap_or("");
            // Group values are identifiers (no comma, quote or line break), quoted anyway if not.
            let g =
                if g.contains([',', '"', '\r', '\n']) { format!("\"{}\"", g.replace('"', "\"\"")) } else { g.into() };
            out.push_str(&format!("{g},{}\r\n", r.counters.csv()));
        }
        out
    }
}

/// A query: days `from..=to`, grouped `by`, only what `agency` did if given.
#[derive(Debug, Clone)]
pub struct Query {
    /// First day, inclusive (none: from the first tally).
    pub from: Option<Day>,
    /// Last day, inclusive (none: today).
    pub to: Option<Day>,
    /// The grouping.
    pub by: GroupBy,
    /// Only the rows of this agency.
    pub agency: Option<AgencyId>,
}

fn cell_of(d: &Draft, procedure: Option<&Purpose>, doc_type: Option<&DocType>) -> Cell {
    Cell {
        agency: match &d.actor {
            Actor::Agency(a) => Some(a.to_string()),
            _ => None,
        },
        procedure: procedure.or(d.purpose.as_ref()).map(|p| p.as_str().to_owned()),
        doc_type: doc_type.map(|t| t.as_str().to_owned()),
    }
}

impl Vault {
    fn tally_op(&self, d: &Draft, cells: &Cells) -> Op {
        let key = layout::stats_tally_key(&Day::of(d.time).key_bytes(), &crate::crypto::keys::random_array::<16>());
        let cells: Vec<(&Cell, &Counters)> = cells.iter().collect();
        let value = seal::seal(&self.vault_records, &aad(&key), &serde_json::to_vec(&cells).unwrap_or_default());
        Op::Put(key, value)
    }

    /// The tally of a reuse check (an extra op for its audit batch).
    pub(crate) fn reuse_tally(&self, d: &Draft, procedure: &Purpose, components: &[Component]) -> Op {
        let mut cells = Cells::new();
        cells.entry(cell_of(d, Some(procedure), None)).or_default().reuse_checks += 1;
        for c in components {
            let e = cells.entry(cell_of(d, Some(procedure), Some(&c.doc_type))).or_default();
            e.components += 1;
            match c.status {
                ReuseStatus::Held => e.held += 1,
                ReuseStatus::Missing => e.missing += 1,
                ReuseStatus::Expired => e.expired += 1,
                ReuseStatus::Revoked => e.revoked += 1,
                ReuseStatus::NotGranted => e.not_granted += 1,
            }
        }
        self.tally_op(d, &cells)
    }

    /// The tally of one content read.
    pub(crate) fn read_tally(&self, d: &Draft, doc_type: &DocType) -> Op {
        let mut cells = Cells::new();
        cells.entry(cell_of(d, None, Some(doc_type))).or_default().content_reads += 1;
        self.tally_op(d, &cells)
    }

    /// The tally of `bytes` not uploaded thanks to dedup (none when zero).
    pub(crate) fn saved_tally(&self, d: &Draft, bytes: u64) -> Vec<Op> {
        if bytes == 0 {
            return Vec::new();
        }
        let mut cells = Cells::new();
        cells.entry(cell_of(d, None, None)).or_default().bytes_not_uploaded += bytes;
        vec![self.tally_op(d, &cells)]
    }

    /// The plaintext size of a held content, if held.
    pub(crate) fn held_size(
        &self,
        o: &crate::engine::vault::OwnerCtx,
        digest: &crate::Digest,
    ) -> Result<Option<u64>, Error> {
        let key = layout::content_key(&o.op, &o.blob(digest).name);
        Ok(self.get_sealed::<crate::engine::vault::ContentRecord>(&o.keys, &key)?.map(|r| r.size))
    }

    /// Appends the audit entry `d` with `ops` (tallies) in its batch and waits until durable:
    /// `audit_now` with extra ops.
    pub(crate) fn audit_now_with(&self, ops: Vec<Op>, d: &Draft) -> Result<u64, Error> {
        let (ticket, index) = self.apply_audited(ops, d)?;
        self.wait_ticket(ticket).map_err(|e| match e {
            Error::FailStopped { .. } => e,
            e => Error::AuditFailed(e.to_string()),
        })?;
        Ok(index)
    }

    fn open_cells(&self, k: &[u8], v: &[u8]) -> Result<Vec<(Cell, Counters)>, Error> {
        let plain = seal::open(&self.vault_records, &aad(k), v)
            .map_err(|_| Error::Corrupt(crate::engine::vault::describe_key(k)))?;
        serde_json::from_slice(&plain).map_err(|_| Error::Corrupt(crate::engine::vault::describe_key(k)))
    }

    /// Folds every tally into its day's rollup (under `ROLLUP`).
    fn roll_up(&self) -> Result<(), Error> {
        let mut day: Option<(Day, Cells, Vec<Vec<u8>>)> = None;
        let flush = |this: &Self, day: Option<(Day, Cells, Vec<Vec<u8>>)>| -> Result<(), Error> {
            let Some((d, mut cells, keys)) = day else { return Ok(()) };
            let rkey = layout::stats_day_key(&d.key_bytes());
            if let Some(v) = this.meta().get(&rkey)? {
                for (c, n) in this.open_cells(&rkey, &v)? {
                    cells.entry(c).or_default().add(&n);
                }
            }
            let list: Vec<(&Cell, &Counters)> = cells.iter().collect();
            let value = seal::seal(&this.vault_records, &aad(&rkey), &serde_json::to_vec(&list).unwrap_or_default());
            let mut ops: Vec<Op> = keys.into_iter().map(Op::Delete).collect();
            ops.push(Op::Put(rkey, value));
            this.apply_ticket(ops)?;
            Ok(())
        };
        for item in self.meta().scan(&[prefix::STATS]) {
            let (k, v) = item?;
            let d = Day::from_key(&k).ok_or_else(|| Error::Corrupt(crate::engine::vault::describe_key(&k)))?;
            // One batch per day, and at most FOLD_BATCH tallies per batch.
            if day.as_ref().is_some_and(|(cur, _, keys)| *cur != d || keys.len() >= FOLD_BATCH) {
                flush(self, day.take())?;
            }
            let (_, cells, keys) = day.get_or_insert_with(|| (d, Cells::new(), Vec::new()));
            for (c, n) in self.open_cells(&k, &v)? {
                cells.entry(c).or_default().add(&n);
            }
            keys.push(k);
        }
        flush(self, day)?;
        // Durable before a query answers from it (the fold is atomic either way).
        self.wait_ticket(self.latest_ticket())
    }

    /// The reuse statistics `q` asks for (SPEC.md §23).
    pub fn reuse_stats(&self, q: &Query) -> Result<Report, Error> {
        let today = Day::of(Timestamp::now());
        let to = q.to.unwrap_or(today);
        let _g = ROLLUP.lock().unwrap_or_else(|p| p.into_inner());
        let _remote = self.meta().lock(crate::storage::LockName::Named(ROLLUP_LOCK))?;
        self.roll_up()?;
        let mut groups: BTreeMap<Option<String>, Counters> = BTreeMap::new();
        let mut first: Option<Day> = None;
        let mut add = |d: Day, cells: Vec<(Cell, Counters)>| {
            if q.from.is_some_and(|f| d < f) || d > to {
                return;
            }
            for (c, n) in cells {
                if q.agency.as_ref().is_some_and(|a| c.agency.as_deref() != Some(a.as_str())) {
                    continue;
                }
                first = Some(first.map_or(d, |f: Day| f.min(d)));
                let g = match q.by {
                    GroupBy::Procedure => c.procedure,
                    GroupBy::Agency => c.agency,
                    GroupBy::DocType => c.doc_type,
                    GroupBy::Month => Some(d.month()),
                };
                groups.entry(g).or_default().add(&n);
            }
        };
        let start = q.from.map(|f| f.key_bytes()).unwrap_or([0; 8]);
        for p in [prefix::STATS_DAY, prefix::STATS] {
            for item in self.meta().scan_from(&[p], &key_of(p, &[&start])) {
                let (k, v) = item?;
                let d = Day::from_key(&k).ok_or_else(|| Error::Corrupt(crate::engine::vault::describe_key(&k)))?;
                if d > to {
                    break;
                }
                add(d, self.open_cells(&k, &v)?);
            }
        }
        let mut total = Counters::default();
        let rows = groups
            .into_iter()
            .map(|(group, counters)| {
                total.add(&counters);
                Row { group, counters }
            })
            .collect();
        let from = q.from.or(first).unwrap_or(to);
        Ok(Report { from: from.to_string(), to: to.to_string(), by: q.by, rows, total })
    }

    /// [`Vault::reuse_stats`] for a caller: the operator sees everything, an agency only what
    /// it did (its own procedures' checks and reads), an owner nothing (`forbidden`).
    pub fn reuse_stats_as(&self, caller: &Caller, mut q: Query) -> Result<Report, Error> {
        match &caller.principal {
            Principal::Operator => {}
            Principal::Agency(a) => {
                self.agency(a)?.ok_or(Error::Forbidden)?;
                q.agency = Some(a.clone());
            }
            Principal::Owner(_) => return Err(Error::Forbidden),
        }
        self.reuse_stats(&q)
    }

    /// Folds the tallies written so far into their day rollups, so that the next query reads
    /// only rollups (the server runs it every minute; every query does it too).
    pub fn fold_reuse_stats(&self) -> Result<(), Error> {
        let _g = ROLLUP.lock().unwrap_or_else(|p| p.into_inner());
        let _remote = self.meta().lock(crate::storage::LockName::Named(ROLLUP_LOCK))?;
        self.roll_up()
    }

    /// Every counter ever (for the server's metrics).
    pub fn reuse_totals(&self) -> Result<Counters, Error> {
        Ok(self.reuse_stats(&Query { from: None, to: None, by: GroupBy::Month, agency: None })?.total)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn days_parse_print_and_order_as_keys() {
        let d = Day::parse("2026-03-01").unwrap();
        assert_eq!(d.to_string(), "2026-03-01");
        assert_eq!(d.month(), "2026-03");
        assert_eq!(Day::of(Timestamp::parse("2026-03-01T23:59:59Z").unwrap()), d);
        let before = Day::parse("1969-12-31").unwrap();
        assert!(before.key_bytes() < d.key_bytes());
        assert_eq!(Day::from_key(&[&[b'S'][..], &d.key_bytes()].concat()), Some(d));
        assert!(Day::parse("2026-3-1").is_err());
        assert!(GroupBy::parse("owner").is_err());
    }

    #[test]
    fn csv_has_a_header_and_one_line_per_group() {
        let r = Report {
            from: "2026-01-01".into(),
            to: "2026-01-31".into(),
            by: GroupBy::Procedure,
            rows: vec![
                Row { group: None, counters: Counters { content_reads: 2, ..Default::default() } },
                Row {
                    group: Some("1.0001".into()),
                    counters: Counters { reuse_checks: 1, held: 3, ..Default::default() },
                },
            ],
            total: Counters::default(),
        };
        assert_eq!(
            r.to_csv(),
            "procedure,reuse_checks,components,held,missing,expired,revoked,not_granted,content_reads,bytes_not_uploaded\r\n\
             ,0,0,0,0,0,0,0,2,0\r\n1.0001,1,0,3,0,0,0,0,0,0\r\n"
        );
    }

    fn draft_at(t: Timestamp, agency: &str) -> Draft {
        Draft {
            time: t,
            actor: Actor::Agency(AgencyId::parse(agency).unwrap()),
            action: "reuse.check",
            owner: None,
            document: None,
            purpose: Some(Purpose::parse("1.1").unwrap()),
            grant: None,
            outcome: "allowed".into(),
        }
    }

    fn component(t: &str, status: ReuseStatus) -> Component {
        Component { doc_type: DocType::parse(t).unwrap(), status, document: None }
    }

    fn q(by: GroupBy) -> Query {
        Query { from: None, to: None, by, agency: None }
    }

    #[test]
    fn past_days_fold_into_rollups_and_late_tallies_are_folded_too() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::open(dir.path(), &crate::MasterKey::generate()).unwrap();
        let yesterday = Timestamp::now().plus_seconds(-86_400);
        let comps = [component("cccd", ReuseStatus::Held), component("so-ho-khau", ReuseStatus::Missing)];
        for _ in 0..3 {
            v.apply_ticket(vec![v.reuse_tally(
                &draft_at(yesterday, "ubnd-a"),
                &Purpose::parse("1.1").unwrap(),
                &comps,
            )])
            .unwrap();
        }
        v.apply_ticket(vec![v.reuse_tally(
            &draft_at(Timestamp::now(), "ubnd-b"),
            &Purpose::parse("1.1").unwrap(),
            &comps,
        )])
        .unwrap();
        let r = v.reuse_stats(&q(GroupBy::Agency)).unwrap();
        assert_eq!(r.total.reuse_checks, 4);
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.from, Day::of(yesterday).to_string());
        // Every tally is folded: one rollup per day.
        assert_eq!(v.meta().scan(&[prefix::STATS]).count(), 0);
        assert_eq!(v.meta().scan(&[prefix::STATS_DAY]).count(), 2);
        // A late tally of yesterday is folded by the next query, added to the rollup.
        v.apply_ticket(vec![v.reuse_tally(&draft_at(yesterday, "ubnd-a"), &Purpose::parse("1.1").unwrap(), &comps)])
            .unwrap();
        let r = v.reuse_stats(&q(GroupBy::DocType)).unwrap();
        assert_eq!(r.total, Counters { reuse_checks: 5, components: 10, held: 5, missing: 5, ..Default::default() });
        assert_eq!(v.meta().scan(&[prefix::STATS]).count(), 0);
        assert_eq!(v.meta().scan(&[prefix::STATS_DAY]).count(), 2);
        let only_b =
            v.reuse_stats(&Query { agency: Some(AgencyId::parse("ubnd-b").unwrap()), ..q(GroupBy::Month) }).unwrap();
        assert_eq!(only_b.total.reuse_checks, 1);
        assert!(v.check(false).unwrap().is_clean());
    }

    /// SPEC.md §23's figure: 10,000 owners' worth of statistics (one reuse check of five
    /// components and one content read per owner: 20,000 tallies of one day). Prints the time of
    /// the first query (which folds the 20,000 tallies) and of the next ones (which answer from
    /// the rollup); run with
    /// `cargo test -p vault --release --lib stats::tests::figure -- --ignored --nocapture`.
    #[test]
    #[ignore = "a printed figure, not a check"]
    fn figure_query_of_ten_thousand_owners() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::open(dir.path(), &crate::MasterKey::generate()).unwrap();
        let p = Purpose::parse("1.1").unwrap();
        let comps: Vec<Component> = ["cccd", "giay-khai-sinh", "so-ho-khau", "bang-lai", "ho-chieu"]
            .iter()
            .enumerate()
            .map(|(i, t)| component(t, if i % 2 == 0 { ReuseStatus::Held } else { ReuseStatus::Missing }))
            .collect();
        let doc = DocType::parse("cccd").unwrap();
        for i in 0..10_000u32 {
            let d = draft_at(Timestamp::now(), &format!("ubnd-{}", i % 20));
            v.apply_ticket(vec![v.reuse_tally(&d, &p, &comps), v.read_tally(&d, &doc)]).unwrap();
        }
        v.wait_ticket(v.latest_ticket()).unwrap();
        for label in ["first query (folds 20,000 tallies)", "next query (from the rollup)", "next query, by procedure"]
        {
            let by = if label.ends_with("procedure") { GroupBy::Procedure } else { GroupBy::Agency };
            let start = std::time::Instant::now();
            let r = v.reuse_stats(&q(by)).unwrap();
            println!(
                "stats, 10,000 owners, {label}: {:?} ({} rows, {} checks)",
                start.elapsed(),
                r.rows.len(),
                r.total.reuse_checks
            );
        }
    }
}
