//! When the audit store refuses writes, `record` fails, the log reports
//! itself unwritable, an alarm is raised, and once writes work again the
//! refused events are stored after all, with the chain intact.
// A panic is how a test reports a failed step.
#![allow(clippy::unwrap_used)]

mod common;

use audit::{AuditEvent, AuditQuery, Auditor, TypeFilter};
use std::time::Duration;

/// Another connection makes the audit table refuse every insert, as a
/// read-only or failing store would. (File modes cannot do this here:
/// tests may run as root, which ignores them.)
async fn refuse_writes(dir: &std::path::Path, refuse: bool) {
    let db = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(dir.join(store::DB_FILE)),
    )
    .await
    .unwrap();
    let sql = if refuse {
        "CREATE TRIGGER audit_refuse BEFORE INSERT ON audit_events \
         BEGIN SELECT RAISE(ABORT, 'attempt to write a readonly database'); END"
    } else {
        "DROP TRIGGER audit_refuse"
    };
    sqlx::query(sql).execute(&db).await.unwrap();
    db.close().await;
}

fn config() -> audit::AuditConfig {
    audit::AuditConfig {
        retry_interval: Duration::from_millis(100),
        record_timeout: Duration::from_secs(2),
        ..common::quick_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_fails_while_the_store_refuses_writes_and_recovers_after() {
    let dir = common::data_dir().await;
    let auditor = Auditor::start(dir.path(), config()).await.unwrap();
    auditor
        .record(AuditEvent::new("auth.login").user(1))
        .await
        .expect("healthy log accepts");
    assert!(auditor.writable());

    refuse_writes(dir.path(), true).await;
    let err = auditor
        .record(AuditEvent::new("auth.failed"))
        .await
        .expect_err("must fail closed");
    assert!(matches!(err, audit::AuditError::Unavailable(_)), "{err}");
    assert!(!auditor.writable());
    // While broken, further events are refused too, not silently kept.
    assert!(auditor
        .record(AuditEvent::new("site.deploy").user(1))
        .await
        .is_err());

    refuse_writes(dir.path(), false).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !auditor.writable() {
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    auditor
        .record(AuditEvent::new("auth.logout").user(1))
        .await
        .expect("recovered log accepts");

    // The refused events were kept for the retry and are stored now.
    let page = auditor
        .reader()
        .query(&AuditQuery {
            kind: Some(TypeFilter::parse("auth.failed").unwrap()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    auditor.shutdown().await;

    let report = audit::verify(dir.path(), None).await.unwrap();
    assert_eq!(report.fault, None);
    // anchor, login, failed, deploy, logout
    assert_eq!(report.head, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_write_its_first_rows_does_not_start() {
    let dir = common::data_dir().await;
    refuse_writes(dir.path(), true).await;
    let err = Auditor::start(dir.path(), config()).await.err();
    assert!(
        err.is_some(),
        "start must fail when the anchor cannot be written"
    );
}
