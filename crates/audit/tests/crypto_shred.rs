//! Personal fields are stored encrypted per subject: a reader with the
//! keys sees them, the database file does not hold them in clear, and
//! destroying a subject's key leaves its events pseudonymous while the
//! chain still verifies.
// A panic is how a test reports a failed step.
#![allow(clippy::unwrap_used)]

mod common;

use audit::{verify, AuditEvent, AuditQuery, Auditor};
use common::{data_dir, quick_config};
use std::net::IpAddr;

fn query_user(user: i64) -> AuditQuery {
    AuditQuery {
        actor_user: Some(user),
        limit: 100,
        ..AuditQuery::default()
    }
}

#[tokio::test]
async fn erasing_a_subject_key_hides_its_fields_and_keeps_the_chain() {
    let dir = data_dir().await;
    let auditor = Auditor::start(dir.path(), quick_config()).await.unwrap();
    let ip: IpAddr = "198.51.100.77".parse().unwrap();
    for (user, email) in [(7, "carol.shred@example.org"), (8, "dave.keep@example.org")] {
        let event = AuditEvent::new("auth.succeeded")
            .user(user)
            .client_ip(ip)
            .user_agent(format!("agent-of-{user}"))
            .meta("subject", email)
            .meta("method", "password");
        auditor.record(event).await.unwrap();
    }
    // A failed login names an address but no user: its key is the
    // address's own subject.
    let failed = AuditEvent::new("auth.failed").meta("subject", "carol.shred@example.org");
    auditor.record(failed).await.unwrap();

    let reader = auditor.reader();
    let page = reader.query(&query_user(7)).await.unwrap();
    let event = &page.events[0];
    assert_eq!(event.client_ip.as_deref(), Some("198.51.100.0"));
    assert_eq!(event.user_agent.as_deref(), Some("agent-of-7"));
    assert_eq!(event.metadata["subject"], "carol.shred@example.org");
    assert_eq!(event.metadata["method"], "password");
    auditor.checkpoint().await.unwrap();

    let db = std::fs::read(dir.path().join(store::DB_FILE)).unwrap();
    let wal = std::fs::read(dir.path().join(format!("{}-wal", store::DB_FILE))).unwrap_or_default();
    for bytes in [&db, &wal] {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains("carol.shred@example.org"),
            "address in clear"
        );
        assert!(!text.contains("agent-of-7"), "user agent in clear");
    }

    // Erase carol: her subject rows go, then the writer's cache.
    let subjects = auditor.pii().subjects_of(7, "carol.shred@example.org");
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join(store::DB_FILE).display()
    ))
    .await
    .unwrap();
    for subject in &subjects {
        let done = sqlx::query("DELETE FROM audit_pii_keys WHERE subject = ?")
            .bind(subject)
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1, "{subject} had a key");
    }
    pool.close().await;
    auditor.pii().forget(&subjects);

    let page = reader.query(&query_user(7)).await.unwrap();
    let event = &page.events[0];
    assert_eq!(event.client_ip.as_deref(), Some(audit::pii::ERASED));
    assert_eq!(event.user_agent.as_deref(), Some(audit::pii::ERASED));
    assert_eq!(event.metadata["subject"], audit::pii::ERASED);
    assert_eq!(event.metadata["method"], "password", "other fields stay");
    let kept = reader.query(&query_user(8)).await.unwrap();
    assert_eq!(kept.events[0].metadata["subject"], "dave.keep@example.org");
    let anonymous = reader
        .query(&AuditQuery {
            kind: Some(audit::TypeFilter::parse("auth.failed").unwrap()),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(anonymous.events[0].metadata["subject"], audit::pii::ERASED);

    auditor.shutdown().await;
    let report = verify(dir.path(), None).await.unwrap();
    assert_eq!(report.fault, None, "the chain covers the ciphertext");
}

#[tokio::test]
async fn masked_mode_stores_only_a_masked_address() {
    let dir = data_dir().await;
    let config = audit::AuditConfig {
        email_mode: audit::EmailMode::Masked,
        ..quick_config()
    };
    let auditor = Auditor::start(dir.path(), config).await.unwrap();
    let event = AuditEvent::new("auth.succeeded")
        .user(3)
        .meta("subject", "erin@example.net");
    auditor.record(event).await.unwrap();
    let page = auditor.reader().query(&query_user(3)).await.unwrap();
    assert_eq!(page.events[0].metadata["subject"], "e***@example.net");
    auditor.shutdown().await;
}

/// Deletes the key rows of `subjects` as an erasure does, through a
/// plain connection, and clears the writer's cache.
async fn erase(dir: &std::path::Path, auditor: &Auditor, subjects: &[String]) {
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.join(store::DB_FILE).display()))
            .await
            .unwrap();
    for subject in subjects {
        sqlx::query("DELETE FROM audit_pii_keys WHERE subject = ?")
            .bind(subject)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    auditor.pii().forget(subjects);
}

#[tokio::test]
async fn another_persons_fields_are_sealed_under_their_key_not_the_actors() {
    let dir = data_dir().await;
    let auditor = Auditor::start(dir.path(), quick_config()).await.unwrap();
    // Admin 1 edits user 2 (Bob), then contains an incident naming Bob's
    // address and a stranger's in one value.
    let edit = AuditEvent::new("user.updated")
        .user(1)
        .client_ip("192.0.2.10".parse().unwrap())
        .user_agent("admin-agent/1")
        .resource("user:2")
        .meta("target_user", 2)
        .meta("target_email", "bob.target@example.org")
        .meta("target_name", "Bob Target-Person");
    let contain = AuditEvent::new("incident.contain")
        .user(1)
        .meta("target", "bob.target@example.org")
        .meta(
            "message",
            "bob.target@example.org and eve.other@example.net",
        );
    auditor.record(edit).await.unwrap();
    auditor.record(contain).await.unwrap();
    auditor.checkpoint().await.unwrap();
    let db = std::fs::read(dir.path().join(store::DB_FILE)).unwrap();
    let wal = std::fs::read(dir.path().join(format!("{}-wal", store::DB_FILE))).unwrap_or_default();
    for bytes in [&db, &wal] {
        let text = String::from_utf8_lossy(bytes);
        for needle in ["bob.target@", "Bob Target-Person", "eve.other@"] {
            assert!(!text.contains(needle), "{needle} in clear");
        }
    }

    // Before: everything reads, and Bob's view withholds the admin's.
    let reader = auditor.reader();
    let page = reader.query(&query_user(1)).await.unwrap();
    let (contain, edit) = (&page.events[0], &page.events[1]);
    assert_eq!(edit.metadata["target_email"], "bob.target@example.org");
    assert_eq!(edit.metadata["target_name"], "Bob Target-Person");
    assert_eq!(
        contain.metadata["message"],
        "bob.target@example.org and eve.other@example.net"
    );
    let bob_view = reader
        .query_as_subject(&query_user(1), 2, "bob.target@example.org")
        .await
        .unwrap();
    let edit_for_bob = &bob_view.events[1];
    assert_eq!(edit_for_bob.metadata["target_name"], "Bob Target-Person");
    assert_eq!(
        edit_for_bob.client_ip.as_deref(),
        Some(audit::pii::WITHHELD)
    );
    assert_eq!(
        edit_for_bob.user_agent.as_deref(),
        Some(audit::pii::WITHHELD)
    );
    assert_eq!(
        bob_view.events[0].metadata["message"],
        audit::pii::WITHHELD,
        "the stranger's address seals it too"
    );

    // Erase Bob: his fields go, the admin's stay.
    let subjects = auditor.pii().subjects_of(2, "bob.target@example.org");
    erase(dir.path(), &auditor, &subjects).await;
    let page = reader.query(&query_user(1)).await.unwrap();
    let (contain, edit) = (&page.events[0], &page.events[1]);
    assert_eq!(edit.metadata["target_email"], audit::pii::ERASED);
    assert_eq!(edit.metadata["target_name"], audit::pii::ERASED);
    assert_eq!(edit.client_ip.as_deref(), Some("192.0.2.0"));
    assert_eq!(edit.user_agent.as_deref(), Some("admin-agent/1"));
    assert_eq!(contain.metadata["target"], audit::pii::ERASED);
    assert_eq!(contain.metadata["message"], audit::pii::ERASED);
    assert_eq!(
        edit.resource.as_deref(),
        Some("user:2"),
        "a pseudonym stays"
    );

    auditor.shutdown().await;
    let report = verify(dir.path(), None).await.unwrap();
    assert_eq!(report.fault, None);
}

#[tokio::test]
async fn an_event_naming_nobody_keeps_only_an_anonymised_client() {
    for (mode, ip, agent) in [
        (audit::Unattributed::Anonymise, "198.51.100.0", "sqlmap/1.7"),
        (
            audit::Unattributed::Keep,
            "198.51.100.23",
            "sqlmap/1.7 (https://sqlmap.org)",
        ),
    ] {
        let dir = data_dir().await;
        let config = audit::AuditConfig {
            ip_mode: audit::IpMode::Full,
            unattributed: mode,
            ..quick_config()
        };
        let auditor = Auditor::start(dir.path(), config).await.unwrap();
        let event = AuditEvent::new("waf.block")
            .client_ip("198.51.100.23".parse().unwrap())
            .user_agent("sqlmap/1.7 (https://sqlmap.org)");
        auditor.record(event).await.unwrap();
        let page = auditor
            .reader()
            .query(&AuditQuery {
                kind: Some(audit::TypeFilter::parse("waf.block").unwrap()),
                limit: 10,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(page.events[0].client_ip.as_deref(), Some(ip), "{mode:?}");
        assert_eq!(page.events[0].user_agent.as_deref(), Some(agent));
        auditor.shutdown().await;
    }
}
