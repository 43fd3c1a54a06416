//! Tampering with a stopped log, as someone with write access to the
//! database file but not to the key files would: each change is reported
//! at the first sequence number it broke, with the right kind of fault.
// A panic is how a test reports a failed step.
#![allow(clippy::unwrap_used)]

mod common;

use audit::chain::SigningKey;
use audit::keys::{LAST_CHECKPOINT_FILE, SIGNING_KEY_FILE};
use audit::{verify, FaultKind};
use common::{attacker, exec, written_log};
use sqlx::Row;

/// 100 events after the key anchor: rows 1..=101.
const EVENTS: usize = 100;
const HEAD: i64 = EVENTS as i64 + 1;

async fn fault_of(dir: &std::path::Path) -> (i64, FaultKind) {
    let report = verify(dir, None).await.expect("verify runs");
    let fault = report.fault.expect("a fault is reported");
    (fault.seq, fault.kind)
}

#[tokio::test]
async fn an_untouched_log_verifies() {
    let dir = written_log(EVENTS).await;
    let report = verify(dir.path(), None).await.unwrap();
    assert_eq!(report.fault, None);
    assert_eq!(report.rows, HEAD as u64);
    assert_eq!(report.head, HEAD);
    assert!(report.checkpoints >= 1);
}

#[tokio::test]
async fn an_edited_row_is_reported_at_its_sequence() {
    let dir = written_log(EVENTS).await;
    let db = attacker(dir.path()).await;
    exec(
        &db,
        "UPDATE audit_events SET result = 'denied' WHERE seq = 50",
    )
    .await;
    db.close().await;
    assert_eq!(fault_of(dir.path()).await, (50, FaultKind::Edited));
}

#[tokio::test]
async fn an_edited_metadata_value_is_reported() {
    let dir = written_log(EVENTS).await;
    let db = attacker(dir.path()).await;
    exec(
        &db,
        "UPDATE audit_events SET metadata = '{\"note\":\"nothing here\"}' WHERE seq = 77",
    )
    .await;
    db.close().await;
    assert_eq!(fault_of(dir.path()).await, (77, FaultKind::Edited));
}

#[tokio::test]
async fn a_deleted_middle_row_is_reported_as_missing() {
    let dir = written_log(EVENTS).await;
    let db = attacker(dir.path()).await;
    exec(&db, "DELETE FROM audit_events WHERE seq = 50").await;
    db.close().await;
    assert_eq!(fault_of(dir.path()).await, (50, FaultKind::Missing));
}

#[tokio::test]
async fn a_deleted_row_hidden_by_renumbering_is_still_missing() {
    let dir = written_log(EVENTS).await;
    let db = attacker(dir.path()).await;
    exec(&db, "DELETE FROM audit_events WHERE seq = 50").await;
    // Close the gap: every later row moves down by one.
    exec(
        &db,
        "UPDATE audit_events SET seq = -(seq - 1) WHERE seq > 50",
    )
    .await;
    exec(&db, "UPDATE audit_events SET seq = -seq WHERE seq < 0").await;
    db.close().await;
    assert_eq!(fault_of(dir.path()).await, (50, FaultKind::Missing));
}

#[tokio::test]
async fn the_last_ten_rows_deleted_are_caught_by_the_checkpoint() {
    let dir = written_log(EVENTS).await;
    let db = attacker(dir.path()).await;
    exec(&db, "DELETE FROM audit_events WHERE seq > 91").await;
    db.close().await;
    assert_eq!(fault_of(dir.path()).await, (92, FaultKind::Truncated));
}

#[tokio::test]
async fn a_cut_tail_is_caught_even_with_the_checkpoint_rows_deleted() {
    let dir = written_log(EVENTS).await;
    let db = attacker(dir.path()).await;
    exec(&db, "DELETE FROM audit_events WHERE seq > 91").await;
    exec(&db, "DELETE FROM audit_checkpoints").await;
    db.close().await;
    // The last checkpoint also lives in a file beside the keys.
    assert_eq!(fault_of(dir.path()).await, (92, FaultKind::Truncated));
}

#[tokio::test]
async fn swapped_rows_are_reported_as_reordered() {
    let dir = written_log(EVENTS).await;
    let db = attacker(dir.path()).await;
    exec(&db, "UPDATE audit_events SET seq = -1 WHERE seq = 40").await;
    exec(&db, "UPDATE audit_events SET seq = 40 WHERE seq = 41").await;
    exec(&db, "UPDATE audit_events SET seq = 41 WHERE seq = -1").await;
    db.close().await;
    assert_eq!(fault_of(dir.path()).await, (40, FaultKind::Reordered));
}

#[tokio::test]
async fn a_replaced_checkpoint_key_is_reported_at_the_checkpoint_it_signed() {
    let dir = written_log(EVENTS).await;
    let key_dir = dir.path().join("audit");

    // The attacker cuts the tail, installs a key of their own and signs a
    // checkpoint over the shortened log with it, in the table and file.
    let db = attacker(dir.path()).await;
    exec(&db, "DELETE FROM audit_events WHERE seq > 91").await;
    exec(&db, "DELETE FROM audit_checkpoints").await;
    let mac: Vec<u8> = sqlx::query("SELECT mac FROM audit_events WHERE seq = 91")
        .fetch_one(&db)
        .await
        .unwrap()
        .get("mac");
    let pkcs8 = SigningKey::generate_pkcs8().unwrap();
    std::fs::write(key_dir.join(SIGNING_KEY_FILE), &pkcs8).unwrap();
    let forged = SigningKey::from_pkcs8(&pkcs8)
        .unwrap()
        .sign(91, &mac, 1_800_000_000_000_000);
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, mac, time, key_id, signature) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(forged.seq)
    .bind(&forged.mac)
    .bind(forged.time_us)
    .bind(&forged.key_id)
    .bind(&forged.signature)
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    std::fs::remove_file(key_dir.join(LAST_CHECKPOINT_FILE)).unwrap();

    assert_eq!(fault_of(dir.path()).await, (91, FaultKind::BadSignature));
}

#[tokio::test]
async fn a_restart_after_a_cut_tail_records_an_alert_and_keeps_the_evidence() {
    let dir = written_log(EVENTS).await;
    let db = attacker(dir.path()).await;
    exec(&db, "DELETE FROM audit_events WHERE seq > 91").await;
    db.close().await;

    let auditor = audit::Auditor::start(dir.path(), common::quick_config())
        .await
        .unwrap();
    let reader = auditor.reader();
    let page = reader
        .query(&audit::AuditQuery {
            kind: Some(audit::TypeFilter::Exact("security.alert".into())),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    auditor.shutdown().await;
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].seq, 92);
    assert_eq!(page.events[0].metadata["checkpoint_seq"], HEAD);
    // New rows chain on (the alert is row 92), but the checkpoint signed
    // for row 101 still shows that the log is shorter than it was.
    assert_eq!(fault_of(dir.path()).await, (93, FaultKind::Truncated));
}

#[tokio::test]
async fn verify_without_the_chain_key_is_an_error_not_a_pass() {
    let dir = written_log(3).await;
    std::fs::remove_file(dir.path().join("audit").join("chain.key")).unwrap();
    let err = verify(dir.path(), None).await.unwrap_err();
    assert!(err.to_string().contains("chain.key"), "{err}");
}
