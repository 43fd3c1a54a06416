//! Full verification of a log, also on a stopped data directory: walks
//! every row in order, recomputes the MAC chain, and checks each signed
//! checkpoint against the row it covers and against the signing key the
//! chain itself recorded. Reports the first fault and its kind.

use crate::chain::{ChainKey, Checkpoint, Row, GENESIS};
use crate::db::{self, OpenMode};
use crate::keys::{self, CHAIN_KEY_FILE};
use crate::AuditError;
use sqlx::SqlitePool;
use std::path::Path;

/// Rows read per query while walking the chain.
const PAGE: i64 = 20_000;

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Rows checked.
    pub rows: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The last sequence number in the log (0: empty).
    pub head: i64,
    /// The first fault, if any; `None` means the log verifies.
    pub fault: Option<Fault>,
}

/// The first place the log stops being what was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The first bad sequence number.
    pub seq: i64,
    pub kind: FaultKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// A row's content no longer matches its MAC.
    Edited,
    /// A row is gone from the middle of the chain.
    Missing,
    /// A row is intact but sits at the wrong place.
    Reordered,
    /// Rows are gone from the end: a checkpoint covers more than exists.
    Truncated,
    /// A checkpoint names a MAC the row at its sequence number lacks.
    CheckpointMismatch,
    /// A checkpoint's signature does not verify under the key the chain
    /// recorded (the signing key was replaced, or the checkpoint forged).
    BadSignature,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Edited => "edited",
            FaultKind::Missing => "missing",
            FaultKind::Reordered => "reordered",
            FaultKind::Truncated => "truncated",
            FaultKind::CheckpointMismatch => "checkpoint-mismatch",
            FaultKind::BadSignature => "bad-signature",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seq {}: {}: {}",
            self.seq,
            self.kind.as_str(),
            self.detail
        )
    }
}

/// Verifies the log of `data_dir` with the keys in `key_dir` (default
/// `DATA/audit`). Opens the database read-only and never writes.
pub async fn verify(data_dir: &Path, key_dir: Option<&Path>) -> Result<Report, AuditError> {
    let default_dir = keys::default_key_dir(data_dir);
    let key_dir = key_dir.unwrap_or(&default_dir);
    let key_path = key_dir.join(CHAIN_KEY_FILE);
    let key_bytes = std::fs::read(&key_path).map_err(|e| AuditError::key(&key_path, e))?;
    let chain_key = ChainKey::new(&key_bytes);

    let pool = db::open(data_dir, OpenMode::ReadOnly).await?;
    let result = walk(&pool, &chain_key, key_dir).await;
    pool.close().await;
    result
}

async fn walk(pool: &SqlitePool, key: &ChainKey, key_dir: &Path) -> Result<Report, AuditError> {
    let mut checkpoints = db::checkpoints(pool).await?;
    match keys::load_last_checkpoint(key_dir) {
        Ok(Some(file)) => {
            // The file may hold a checkpoint the table lost; a different
            // one under the same number is checked as well.
            if !checkpoints.contains(&file) {
                checkpoints.push(file);
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "the last-checkpoint file is unreadable"),
    }
    checkpoints.sort_by_key(|c| c.seq);

    let mut report = Report {
        rows: 0,
        checkpoints: 0,
        head: 0,
        fault: None,
    };
    // Signing keys the chain recorded: (from sequence number, key).
    let mut anchors: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut prev = GENESIS.to_vec();
    let mut expected = 1i64;
    let mut next_checkpoint = 0usize;
    loop {
        let rows = page(pool, expected - 1).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            if let Some(fault) = check_row(pool, key, &row, expected, &prev).await? {
                report.fault = Some(fault);
                return Ok(report);
            }
            if row.kind == "audit.key" {
                if let Some(public) = anchored_key(&row) {
                    anchors.push((row.seq, public));
                }
            }
            while next_checkpoint < checkpoints.len() && checkpoints[next_checkpoint].seq <= row.seq
            {
                let checkpoint = &checkpoints[next_checkpoint];
                next_checkpoint += 1;
                report.checkpoints += 1;
                let fault = check_checkpoint(checkpoint, Some(&row), &anchors);
                if fault.is_some() {
                    report.fault = fault;
                    return Ok(report);
                }
            }
            prev = row.mac;
            expected += 1;
            report.rows += 1;
            report.head = row.seq;
        }
    }
    // Checkpoints beyond the last row: the tail was cut, unless the
    // checkpoint itself is forged.
    if let Some(checkpoint) = checkpoints.get(next_checkpoint) {
        report.checkpoints += 1;
        let fault = check_checkpoint(checkpoint, None, &anchors).unwrap_or(Fault {
            seq: report.head + 1,
            kind: FaultKind::Truncated,
            detail: format!(
                "the log ends at {} but a checkpoint signed for {} covers more",
                report.head, checkpoint.seq
            ),
        });
        report.fault = Some(fault);
    }
    Ok(report)
}

async fn page(pool: &SqlitePool, after: i64) -> Result<Vec<Row>, AuditError> {
    let sql = format!(
        "SELECT {} FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?",
        db::COLUMNS
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after)
        .bind(PAGE)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .iter()
        .map(db::row_from)
        .collect::<Result<Vec<_>, _>>()?)
}

async fn check_row(
    pool: &SqlitePool,
    key: &ChainKey,
    row: &Row,
    expected: i64,
    prev: &[u8],
) -> Result<Option<Fault>, AuditError> {
    if row.seq != expected {
        return Ok(Some(Fault {
            seq: expected,
            kind: FaultKind::Missing,
            detail: format!("row {expected} is missing; the next row is {}", row.seq),
        }));
    }
    if key.mac(&row.prev_mac, row).as_slice() != row.mac.as_slice() {
        return Ok(Some(Fault {
            seq: row.seq,
            kind: FaultKind::Edited,
            detail: "the row does not match its MAC".into(),
        }));
    }
    if row.prev_mac.as_slice() == prev {
        return Ok(None);
    }
    // The row is intact but does not follow the row before it: it was
    // moved, or the row it followed is gone.
    let origin: Option<i64> = sqlx::query_scalar("SELECT seq FROM audit_events WHERE mac = ?")
        .bind(&row.prev_mac)
        .fetch_optional(pool)
        .await?;
    Ok(Some(match origin {
        Some(origin) => Fault {
            seq: row.seq,
            kind: FaultKind::Reordered,
            detail: format!("the row was written after the row now numbered {origin}"),
        },
        None => Fault {
            seq: row.seq,
            kind: FaultKind::Missing,
            detail: "the row it was written after is gone".into(),
        },
    }))
}

/// Checks one checkpoint: signed by the key in force at its sequence
/// number, and naming the MAC that row has.
fn check_checkpoint(
    checkpoint: &Checkpoint,
    row: Option<&Row>,
    anchors: &[(i64, Vec<u8>)],
) -> Option<Fault> {
    let key = anchors
        .iter()
        .rev()
        .find(|(from, _)| *from <= checkpoint.seq)
        .map(|(_, key)| key);
    let signed = key.is_some_and(|key| checkpoint.verify(key));
    if !signed {
        return Some(Fault {
            seq: checkpoint.seq,
            kind: FaultKind::BadSignature,
            detail: format!(
                "the checkpoint (key {}) is not signed by the key the log recorded",
                checkpoint.key_id
            ),
        });
    }
    match row {
        Some(row) if row.seq == checkpoint.seq && row.mac != checkpoint.mac => Some(Fault {
            seq: checkpoint.seq,
            kind: FaultKind::CheckpointMismatch,
            detail: "the row differs from the one the checkpoint signed".into(),
        }),
        _ => None,
    }
}

fn anchored_key(row: &Row) -> Option<Vec<u8>> {
    let meta: serde_json::Value = serde_json::from_str(&row.metadata).ok()?;
    hex::decode(meta.get("public_key")?.as_str()?).ok()
}
