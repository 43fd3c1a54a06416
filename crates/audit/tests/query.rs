//! Filters and cursor pagination over 100,000 stored events: each filter
//! walked page by page must return exactly the events the generator made
//! that match it, newest first, each once.
// A panic is how a test reports a failed step.
#![allow(clippy::unwrap_used)]

mod common;

use audit::{AuditEvent, AuditQuery, AuditReader, Auditor, Outcome, TypeFilter};

const EVENTS: usize = 100_000;
const TYPES: [&str; 6] = [
    "auth.login",
    "auth.failed",
    "auth.locked",
    "site.deploy",
    "site.delete",
    "apikey.create",
];
/// Base time of the generated events, one millisecond apart:
/// 2030-01-01: after any real event, since the log keeps time from
/// going back along the chain.
const BASE_US: i64 = 1_893_456_000_000_000;

/// What the generator made for event `i` (stored at seq `i + 2`: row 1
/// is the key anchor).
struct Made {
    seq: i64,
    kind: &'static str,
    user: i64,
    result: Outcome,
    resource: String,
    customer: String,
    time_us: i64,
}

fn made(i: usize) -> Made {
    let kind = TYPES[i % TYPES.len()];
    Made {
        seq: i as i64 + 2,
        kind,
        user: (i % 7) as i64,
        result: match i % 5 {
            0 => Outcome::Failure,
            1 => Outcome::Denied,
            _ => Outcome::Success,
        },
        resource: format!("site:s{}.example", i % 13),
        customer: format!("c{}", i % 3),
        time_us: BASE_US + i as i64 * 1000,
    }
}

async fn filled_log() -> (tempfile::TempDir, Auditor) {
    let dir = common::data_dir().await;
    let auditor = Auditor::start(dir.path(), common::quick_config())
        .await
        .unwrap();
    for i in 0..EVENTS {
        let m = made(i);
        let mut event = AuditEvent::new(m.kind)
            .user(m.user)
            .result(m.result)
            .resource(m.resource)
            .customer(m.customer);
        event.time_us = m.time_us;
        auditor.submit_wait(event).await.unwrap();
    }
    auditor.checkpoint().await.unwrap();
    (dir, auditor)
}

/// Every seq the query returns, page by page, checking the order.
async fn walk(reader: &AuditReader, mut query: AuditQuery) -> Vec<i64> {
    let mut seqs = Vec::new();
    let mut pages = 0;
    loop {
        let page = reader.query(&query).await.unwrap();
        pages += 1;
        assert!(
            pages <= EVENTS / query.limit as usize + 2,
            "pagination loops"
        );
        seqs.extend(page.events.iter().map(|e| e.seq));
        match page.next_cursor {
            Some(cursor) => query.before = Some(cursor.parse().unwrap()),
            None => break,
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats"
    );
    seqs
}

fn expected(keep: impl Fn(&Made) -> bool) -> Vec<i64> {
    let mut seqs: Vec<i64> = (0..EVENTS).map(made).filter(keep).map(|m| m.seq).collect();
    seqs.reverse();
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_pages_over_100k_events_return_exactly_the_matches() {
    let (_dir, auditor) = filled_log().await;
    let reader = auditor.reader();
    assert_eq!(reader.head().await.unwrap(), EVENTS as i64 + 1);

    let base = AuditQuery {
        limit: 1000,
        ..Default::default()
    };

    let by_prefix = AuditQuery {
        kind: Some(TypeFilter::parse("auth.").unwrap()),
        actor_user: Some(3),
        ..base.clone()
    };
    let want = expected(|m| m.kind.starts_with("auth.") && m.user == 3);
    assert!(want.len() > 5_000);
    assert_eq!(walk(&reader, by_prefix).await, want);

    // Checked in the widened subject indexes (migration 0012).
    let exact_user = AuditQuery {
        kind: Some(TypeFilter::parse("site.delete").unwrap()),
        actor_user: Some(5),
        limit: 300,
        ..base.clone()
    };
    let want = expected(|m| m.kind == "site.delete" && m.user == 5);
    assert!(want.len() > 2_000);
    assert_eq!(walk(&reader, exact_user).await, want);

    let customer_prefix = AuditQuery {
        kind: Some(TypeFilter::parse("site.").unwrap()),
        customer: Some("c1".into()),
        ..base.clone()
    };
    let want = expected(|m| m.kind.starts_with("site.") && m.customer == "c1");
    assert!(want.len() > 10_000);
    assert_eq!(walk(&reader, customer_prefix).await, want);

    let exact = AuditQuery {
        kind: Some(TypeFilter::parse("auth.failed").unwrap()),
        result: Some(Outcome::Denied),
        limit: 250,
        ..base.clone()
    };
    let want = expected(|m| m.kind == "auth.failed" && m.result == Outcome::Denied);
    assert_eq!(walk(&reader, exact).await, want);

    let resource = AuditQuery {
        resource: Some("site:s7.example".into()),
        customer: Some("c1".into()),
        ..base.clone()
    };
    let want = expected(|m| m.resource == "site:s7.example" && m.customer == "c1");
    assert_eq!(walk(&reader, resource).await, want);

    let since = BASE_US + 40_000 * 1000;
    let until = BASE_US + 45_500 * 1000;
    let window = AuditQuery {
        since_us: Some(since),
        until_us: Some(until),
        ..base.clone()
    };
    let want = expected(|m| m.time_us >= since && m.time_us < until);
    assert_eq!(want.len(), 5_500);
    assert_eq!(walk(&reader, window).await, want);

    auditor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_with_after_returns_newer_events_oldest_first() {
    let dir = common::written_log(30).await;
    let reader = AuditReader::open_read_only(dir.path()).await.unwrap();
    let page = reader
        .query(&AuditQuery {
            after: Some(25),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let seqs: Vec<i64> = page.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![26, 27, 28, 29, 30, 31]);
    assert_eq!(page.next_cursor, None);
}

#[tokio::test]
async fn bad_query_values_name_their_field() {
    let dir = common::written_log(1).await;
    let reader = AuditReader::open_read_only(dir.path()).await.unwrap();
    let err = reader
        .query(&AuditQuery {
            limit: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("limit:"), "{err}");
    let err = TypeFilter::parse("auth' OR 1=1 --").unwrap_err();
    assert!(err.to_string().starts_with("type:"), "{err}");
}

/// Every query shape the API and the CLI issue walks one index (or the
/// table itself) in seq order: SQLite never collects the matches to sort
/// them, so a page costs what it reads, not what the filter matches.
#[tokio::test]
async fn every_query_shape_walks_an_index_in_seq_order() {
    let dir = common::written_log(3).await;
    let reader = AuditReader::open_read_only(dir.path()).await.unwrap();
    let kind = |t: &str| Some(TypeFilter::parse(t).unwrap());
    let base = AuditQuery {
        limit: 100,
        ..Default::default()
    };
    // (shape, query, the index or scan its plan must name)
    let shapes: Vec<(&str, AuditQuery, &str)> = vec![
        ("no filter", base.clone(), "SCAN audit_events"),
        (
            "exact type",
            AuditQuery {
                kind: kind("auth.failed"),
                ..base.clone()
            },
            "INDEX audit_events_kind (kind=?)",
        ),
        (
            "type prefix",
            AuditQuery {
                kind: kind("auth."),
                ..base.clone()
            },
            "INDEX audit_events_category (<expr>=?)",
        ),
        (
            "user",
            AuditQuery {
                actor_user: Some(7),
                ..base.clone()
            },
            "INDEX audit_events_actor (actor_user=?)",
        ),
        (
            "exact type + user",
            AuditQuery {
                kind: kind("auth.failed"),
                actor_user: Some(7),
                ..base.clone()
            },
            "INDEX audit_events_actor (actor_user=?)",
        ),
        (
            "type prefix + user, cursor",
            AuditQuery {
                kind: kind("auth."),
                actor_user: Some(7),
                before: Some(500),
                ..base.clone()
            },
            "INDEX audit_events_actor (actor_user=? AND seq<?)",
        ),
        (
            "resource",
            AuditQuery {
                resource: Some("site:a".into()),
                ..base.clone()
            },
            "INDEX audit_events_resource (resource=?)",
        ),
        (
            "resource + exact type",
            AuditQuery {
                resource: Some("site:a".into()),
                kind: kind("site.deploy"),
                ..base.clone()
            },
            "INDEX audit_events_resource (resource=?)",
        ),
        (
            "result",
            AuditQuery {
                result: Some(Outcome::Denied),
                ..base.clone()
            },
            "SCAN audit_events",
        ),
        (
            "customer + type prefix",
            AuditQuery {
                customer: Some("c1".into()),
                kind: kind("site."),
                ..base.clone()
            },
            // Either index yields seq order; SQLite picks which.
            "INDEX audit_events_",
        ),
        (
            "customer + user + result",
            AuditQuery {
                customer: Some("c1".into()),
                actor_user: Some(7),
                result: Some(Outcome::Failure),
                ..base.clone()
            },
            "INDEX audit_events_",
        ),
        (
            "time range + type prefix",
            AuditQuery {
                since_us: Some(0),
                until_us: Some(i64::MAX),
                kind: kind("auth."),
                ..base.clone()
            },
            "INDEX audit_events_category (<expr>=? AND seq>?",
        ),
        (
            "exact type, deep cursor",
            AuditQuery {
                kind: kind("auth.failed"),
                before: Some(2),
                ..base.clone()
            },
            "INDEX audit_events_kind (kind=? AND seq<?)",
        ),
        (
            "user, following oldest first",
            AuditQuery {
                actor_user: Some(7),
                after: Some(2),
                ..base.clone()
            },
            "INDEX audit_events_actor (actor_user=? AND seq>?)",
        ),
    ];
    for (shape, query, names) in shapes {
        let plan = reader.plan(&query).await.unwrap();
        assert_eq!(plan.len(), 1, "{shape}: one step, no sort: {plan:?}");
        assert!(plan[0].contains(names), "{shape}: {plan:?} lacks {names:?}");
    }
}
