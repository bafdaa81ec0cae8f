//! Reuse statistics through the library: exact counts, who sees what, restart and erasure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use common::*;
use vault::access::Caller;
use vault::engine::grants::NewGrant;
use vault::engine::provenance::NewAgency;
use vault::engine::stats::{Counters, GroupBy, Query, Report};
use vault::{AgencyId, DocType, Error, Purpose, Timestamp, Vault};

fn agency(s: &str) -> AgencyId {
    AgencyId::parse(s).unwrap()
}

fn purpose(s: &str) -> Purpose {
    Purpose::parse(s).unwrap()
}

fn types(ts: &[&str]) -> Vec<DocType> {
    ts.iter().map(|t| DocType::parse(t).unwrap()).collect()
}

fn grant(grantee: &str, p: &str, ts: &[&str]) -> NewGrant {
    NewGrant {
        grantee: agency(grantee),
        purpose: purpose(p),
        purpose_text: "Đăng ký kết hôn".into(),
        doc_types: types(ts),
        documents: vec![],
        expires_at: Timestamp::now().plus_seconds(3600),
        max_uses: None,
    }
}

fn query(by: GroupBy) -> Query {
    Query { from: None, to: None, by, agency: None }
}

fn row<'a>(r: &'a Report, group: Option<&str>) -> &'a Counters {
    &r.rows
        .iter()
        .find(|row| row.group.as_deref() == group)
        .unwrap_or_else(|| panic!("no row {group:?} in {r:?}"))
        .counters
}

#[test]
fn counts_are_exact_scoped_and_survive_erasure_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    let op = Caller::operator();
    for a in ["ubnd-a", "ubnd-b"] {
        v.put_agency_as(&op, &agency(a), NewAgency { name: a.into(), keys: vec![] }).unwrap();
    }
    let o = owner(1);
    let oc = Caller::owner(o.clone());
    let a_doc = put_doc(&v, &o, b"birth certificate", "giay-khai-sinh");
    let mut expired = new_doc(vault::Digest::of(b"old id"), "cccd");
    expired.valid_until = Some(Timestamp::parse("2020-01-01T00:00:00Z").unwrap());
    v.put_content_bytes(&o, b"old id").unwrap();
    v.deposit(&o, expired).unwrap();
    v.grant_as(&oc, &o, grant("ubnd-a", "1.1", &["giay-khai-sinh", "cccd", "so-ho-khau"])).unwrap();
    v.grant_as(&oc, &o, grant("ubnd-b", "2.2", &["cccd"])).unwrap();

    let a = Caller::agency(agency("ubnd-a"), Some(purpose("1.1")));
    let b = Caller::agency(agency("ubnd-b"), Some(purpose("2.2")));
    v.reuse_as(&a, &o, &purpose("1.1"), &types(&["giay-khai-sinh", "cccd", "so-ho-khau"]), None).unwrap();
    v.reuse_as(&b, &o, &purpose("2.2"), &types(&["cccd", "giay-khai-sinh"]), None).unwrap();
    v.content_as(&a, &o, &a_doc.id).unwrap();
    // A refused call counts nothing.
    let c = Caller::agency(agency("ubnd-b"), Some(purpose("9.9")));
    assert!(v.reuse_as(&c, &o, &purpose("9.9"), &types(&["cccd"]), None).is_err());
    // Dedup: a held upload and a skipped digest, by the owner.
    v.upload_as(&oc, &o, &b"birth certificate"[..], None).unwrap();
    let unknown = vault::Digest::of(b"never stored");
    v.missing_as(&oc, &o, &[a_doc.meta.digest, unknown]).unwrap();

    let check = |v: &Vault| {
        let r = v.reuse_stats_as(&op, query(GroupBy::Procedure)).unwrap();
        let p1 = row(&r, Some("1.1"));
        assert_eq!(
            *p1,
            Counters {
                reuse_checks: 1,
                components: 3,
                held: 1,
                missing: 1,
                expired: 1,
                content_reads: 1,
                ..Default::default()
            }
        );
        let p2 = row(&r, Some("2.2"));
        // ubnd-b's grant does not cover giay-khai-sinh.
        assert_eq!(*p2, Counters { reuse_checks: 1, components: 2, expired: 1, not_granted: 1, ..Default::default() });
        let none = row(&r, None);
        let len = b"birth certificate".len() as u64;
        // The owner's own calls have no procedure.
        assert_eq!(*none, Counters { bytes_not_uploaded: 2 * len, ..Default::default() });
        assert_eq!(r.total.reuse_checks, 2);
        assert_eq!(r.total.components, 5);

        let by_type = v.reuse_stats_as(&op, query(GroupBy::DocType)).unwrap();
        assert_eq!(row(&by_type, Some("cccd")).expired, 2);
        assert_eq!(row(&by_type, Some("giay-khai-sinh")).content_reads, 1);
        let by_agency = v.reuse_stats_as(&op, query(GroupBy::Agency)).unwrap();
        assert_eq!(row(&by_agency, Some("ubnd-a")).components, 3);
        assert_eq!(row(&by_agency, None).bytes_not_uploaded, 2 * len);
        let by_month = v.reuse_stats_as(&op, query(GroupBy::Month)).unwrap();
        assert_eq!(by_month.rows.len(), 1);
        assert_eq!(by_month.total, r.total);

        // An agency sees only what it did; an owner nothing.
        let mine = v.reuse_stats_as(&a, query(GroupBy::Procedure)).unwrap();
        assert_eq!(mine.rows.len(), 1, "{mine:?}");
        assert_eq!(mine.rows[0].group.as_deref(), Some("1.1"));
        assert_eq!(mine.total.content_reads, 1);
        assert!(matches!(v.reuse_stats_as(&oc, query(GroupBy::Procedure)), Err(Error::Forbidden)));
        // A range that ends before today holds nothing.
        let past = Query {
            from: Some(vault::engine::stats::Day::parse("2001-01-01").unwrap()),
            to: Some(vault::engine::stats::Day::parse("2001-12-31").unwrap()),
            ..query(GroupBy::Procedure)
        };
        let past = v.reuse_stats_as(&op, past).unwrap();
        assert!(past.rows.is_empty());
        assert_eq!((past.from.as_str(), past.to.as_str()), ("2001-01-01", "2001-12-31"));
        // Aggregates only: neither the owner nor a document appears.
        let text = serde_json::to_string(&r).unwrap() + &r.to_csv();
        assert!(!text.contains(o.as_str()) && !text.contains(&a_doc.id.to_string()));
    };
    check(&v);
    v.erase_as(&oc, &o).unwrap();
    check(&v);
    assert!(v.check(false).unwrap().is_clean());
    drop(v);
    let v = Vault::open(dir.path(), &master()).unwrap();
    check(&v);
}

#[test]
fn concurrent_checks_are_all_counted() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    v.put_agency_as(&Caller::operator(), &agency("ubnd-a"), NewAgency { name: "A".into(), keys: vec![] }).unwrap();
    let owners: Vec<_> = (0..4).map(owner).collect();
    for o in &owners {
        put_doc(&v, o, o.as_str().as_bytes(), "cccd");
        v.grant_as(&Caller::owner(o.clone()), o, grant("ubnd-a", "1.1", &["cccd"])).unwrap();
    }
    let a = Caller::agency(agency("ubnd-a"), Some(purpose("1.1")));
    std::thread::scope(|s| {
        for t in 0..8 {
            let (v, a, o) = (&v, &a, &owners[t % owners.len()]);
            s.spawn(move || {
                for _ in 0..25 {
                    v.reuse_as(a, o, &purpose("1.1"), &types(&["cccd", "so-ho-khau"]), None).unwrap();
                }
            });
        }
    });
    let r = v.reuse_stats(&query(GroupBy::Procedure)).unwrap();
    assert_eq!(
        r.total,
        Counters { reuse_checks: 200, components: 400, held: 200, not_granted: 200, ..Default::default() }
    );
}
