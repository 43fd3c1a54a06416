//! Builds a real audit log in a temporary data directory (the store's own
//! migrations, the real writer) and opens the database the way an
//! attacker with file access would: a plain SQLite connection.
#![allow(dead_code)]

use audit::{AuditConfig, AuditEvent, Auditor};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use std::path::Path;

pub async fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store::SqliteStore::open(dir.path()).await.expect("store");
    store.close().await;
    dir
}

pub fn quick_config() -> AuditConfig {
    AuditConfig {
        fsync: false,
        ..AuditConfig::default()
    }
}

/// A log holding the key anchor (seq 1) and `n` deploy events (seq 2..),
/// checkpointed and shut down cleanly.
pub async fn written_log(n: usize) -> tempfile::TempDir {
    let dir = data_dir().await;
    let auditor = Auditor::start(dir.path(), quick_config())
        .await
        .expect("start");
    for i in 0..n {
        let event = AuditEvent::new("site.deploy")
            .user((i % 5) as i64)
            .resource(format!("site:s{i}.example"));
        auditor.submit_wait(event).await.expect("queued");
    }
    auditor.shutdown().await;
    dir
}

/// A raw connection with the append-only triggers dropped, as an
/// attacker would start.
pub async fn attacker(dir: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new().filename(dir.join(store::DB_FILE));
    let pool = SqlitePool::connect_with(options).await.expect("open db");
    for sql in [
        "DROP TRIGGER audit_events_no_update",
        "DROP TRIGGER audit_events_no_delete",
    ] {
        sqlx::query(sql).execute(&pool).await.expect("drop trigger");
    }
    pool
}

pub async fn exec(pool: &SqlitePool, sql: &'static str) {
    sqlx::query(sql).execute(pool).await.expect(sql);
}
