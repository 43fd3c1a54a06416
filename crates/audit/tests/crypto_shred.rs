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
