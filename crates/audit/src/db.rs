//! The audit tables in the store's SQLite file, reached through the log's
//! own connections: the writer needs its own fsync setting and batching,
//! and `verify` must open a stopped data directory read-only. The schema
//! itself is a migration of the `store` crate.

use crate::chain::{Checkpoint, Row};
use crate::AuditError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row as _, Sqlite};
use std::path::Path;
use std::time::Duration;

/// Rows per INSERT statement: 17 parameters each, far below SQLite's cap.
const ROWS_PER_INSERT: usize = 64;

/// The columns a [`Row`] is read from, in one place.
pub(crate) const COLUMNS: &str = "seq, time, kind, actor_user, actor_role, actor_key, \
     client_ip, user_agent, resource, action, result, request_id, session_id, customer, \
     metadata, prev_mac, mac";

/// How the log's connections open the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Writer and readers; commits are fsynced if `fsync` is set.
    Write { fsync: bool },
    /// Readers only (verify, list on a stopped directory).
    ReadOnly,
}

pub(crate) async fn open(data_dir: &Path, mode: OpenMode) -> Result<SqlitePool, AuditError> {
    open_with_cache(data_dir, mode, None).await
}

/// WAL pages after which the writer's commit also copies the WAL back
/// into the database file (SQLite's default is 1,000). A batch dirties
/// one leaf page per distinct user, resource and customer, so at 1,000
/// nearly every commit paid for a WAL checkpoint; at 16,384 (64 MiB with
/// 4 KiB pages) a hot page written by many commits is copied back once.
/// Durability does not depend on it: a commit is durable when its WAL
/// frames are (see [`OpenMode::Write`]).
pub(crate) const WRITER_WAL_AUTOCHECKPOINT: u32 = 16_384;

/// Page cache of each reader connection, in MiB.
pub(crate) const READER_CACHE_MIB: u32 = 32;

/// The writer's own connection: one, so its large page cache is paid
/// for once, with the WAL checkpointed in big steps.
pub(crate) async fn open_writer(
    data_dir: &Path,
    fsync: bool,
    cache_mib: u32,
) -> Result<SqlitePool, AuditError> {
    open_pool(data_dir, OpenMode::Write { fsync }, Some(cache_mib), 1).await
}

/// [`open`] with a page cache of `cache_mib` MiB per connection (SQLite's
/// default, 2 MiB, when `None`).
pub(crate) async fn open_with_cache(
    data_dir: &Path,
    mode: OpenMode,
    cache_mib: Option<u32>,
) -> Result<SqlitePool, AuditError> {
    open_pool(data_dir, mode, cache_mib, 4).await
}

async fn open_pool(
    data_dir: &Path,
    mode: OpenMode,
    cache_mib: Option<u32>,
    connections: u32,
) -> Result<SqlitePool, AuditError> {
    let path = data_dir.join(store::DB_FILE);
    if !path.exists() {
        return Err(AuditError::NoStore(data_dir.display().to_string()));
    }
    let mut options = SqliteConnectOptions::new()
        .filename(&path)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    options = match mode {
        // FULL fsyncs the WAL at every commit, so an acknowledged batch
        // survives a power loss; NORMAL survives a killed process only.
        OpenMode::Write { fsync: true } => options.synchronous(SqliteSynchronous::Full),
        OpenMode::Write { fsync: false } => options.synchronous(SqliteSynchronous::Normal),
        OpenMode::ReadOnly => options.read_only(true),
    };
    if let Some(mib) = cache_mib.filter(|m| *m > 0) {
        // Negative: a size in KiB rather than a page count.
        options = options.pragma("cache_size", format!("-{}", u64::from(mib) * 1024));
    }
    if connections == 1 && matches!(mode, OpenMode::Write { .. }) {
        options = options.pragma("wal_autocheckpoint", WRITER_WAL_AUTOCHECKPOINT.to_string());
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await
        .map_err(AuditError::Storage)?;
    let exists: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_events'",
    )
    .fetch_optional(&pool)
    .await?;
    if exists.is_none() {
        return Err(AuditError::NoStore(data_dir.display().to_string()));
    }
    Ok(pool)
}

/// Appends rows whose MACs are already computed, in one transaction.
/// New subject keys (see [`crate::pii`]) are stored in the same
/// transaction as the rows they protect.
pub(crate) async fn append(
    pool: &SqlitePool,
    rows: &[Row],
    fresh_keys: &[(String, Vec<u8>)],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for (subject, wrapped) in fresh_keys {
        sqlx::query("INSERT INTO audit_pii_keys (subject, wrapped, created_at) VALUES (?, ?, ?)")
            .bind(subject)
            .bind(wrapped)
            .bind(crate::event::now_us())
            .execute(&mut *tx)
            .await?;
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut insert =
            QueryBuilder::<Sqlite>::new(format!("INSERT INTO audit_events ({COLUMNS}) "));
        insert.push_values(chunk, |mut b, row| {
            b.push_bind(row.seq)
                .push_bind(row.time_us)
                .push_bind(&row.kind)
                .push_bind(row.actor_user)
                .push_bind(&row.actor_role)
                .push_bind(&row.actor_key)
                .push_bind(&row.client_ip)
                .push_bind(&row.user_agent)
                .push_bind(&row.resource)
                .push_bind(&row.action)
                .push_bind(&row.result)
                .push_bind(&row.request_id)
                .push_bind(&row.session_id)
                .push_bind(&row.customer)
                .push_bind(&row.metadata)
                .push_bind(&row.prev_mac)
                .push_bind(&row.mac);
        });
        insert.build().execute(&mut *tx).await?;
    }
    tx.commit().await
}

pub(crate) fn row_from(r: &SqliteRow) -> Result<Row, sqlx::Error> {
    Ok(Row {
        seq: r.try_get("seq")?,
        time_us: r.try_get("time")?,
        kind: r.try_get("kind")?,
        actor_user: r.try_get("actor_user")?,
        actor_role: r.try_get("actor_role")?,
        actor_key: r.try_get("actor_key")?,
        client_ip: r.try_get("client_ip")?,
        user_agent: r.try_get("user_agent")?,
        resource: r.try_get("resource")?,
        action: r.try_get("action")?,
        result: r.try_get("result")?,
        request_id: r.try_get("request_id")?,
        session_id: r.try_get("session_id")?,
        customer: r.try_get("customer")?,
        metadata: r.try_get("metadata")?,
        prev_mac: r.try_get("prev_mac")?,
        mac: r.try_get("mac")?,
    })
}

/// The newest row's number and MAC, if the log has rows.
pub(crate) async fn head(pool: &SqlitePool) -> Result<Option<(i64, Vec<u8>)>, sqlx::Error> {
    let row = sqlx::query("SELECT seq, mac FROM audit_events ORDER BY seq DESC LIMIT 1")
        .fetch_optional(pool)
        .await?;
    row.map(|r| Ok((r.try_get("seq")?, r.try_get("mac")?)))
        .transpose()
}

/// Lets SQLite refresh the planner's statistics where they are missing or
/// stale, on a sample (cheap even on millions of rows). Without them the
/// planner cannot tell a selective filter index from a broad one.
pub(crate) async fn refresh_statistics(pool: &SqlitePool) {
    for sql in ["PRAGMA analysis_limit = 1000", "PRAGMA optimize = 0x10002"] {
        if let Err(e) = sqlx::query(sql).execute(pool).await {
            tracing::debug!(error = %e, "audit statistics not refreshed");
            return;
        }
    }
}

/// The time of row `seq`, if it exists.
pub(crate) async fn time_at(pool: &SqlitePool, seq: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT time FROM audit_events WHERE seq = ?")
        .bind(seq)
        .fetch_optional(pool)
        .await
}

/// The MAC of row `seq`, if it exists.
pub(crate) async fn mac_at(pool: &SqlitePool, seq: i64) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT mac FROM audit_events WHERE seq = ?")
        .bind(seq)
        .fetch_optional(pool)
        .await
}

/// The public key recorded by the newest `audit.key` row, hex-encoded.
pub(crate) async fn anchored_key(pool: &SqlitePool) -> Result<Option<String>, sqlx::Error> {
    let meta: Option<String> = sqlx::query_scalar(
        "SELECT metadata FROM audit_events WHERE kind = 'audit.key' ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(meta.and_then(|m| {
        serde_json::from_str::<serde_json::Value>(&m)
            .ok()?
            .get("public_key")?
            .as_str()
            .map(str::to_owned)
    }))
}

pub(crate) async fn insert_checkpoint(
    pool: &SqlitePool,
    checkpoint: &Checkpoint,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT OR REPLACE INTO audit_checkpoints (seq, mac, time, key_id, signature) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(checkpoint.seq)
    .bind(&checkpoint.mac)
    .bind(checkpoint.time_us)
    .bind(&checkpoint.key_id)
    .bind(&checkpoint.signature)
    .execute(pool)
    .await?;
    Ok(())
}

/// Every checkpoint in the table, oldest first.
pub(crate) async fn checkpoints(pool: &SqlitePool) -> Result<Vec<Checkpoint>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT seq, mac, time, key_id, signature FROM audit_checkpoints ORDER BY seq")
            .fetch_all(pool)
            .await?;
    rows.iter()
        .map(|r| {
            Ok(Checkpoint {
                seq: r.try_get("seq")?,
                mac: r.try_get("mac")?,
                time_us: r.try_get("time")?,
                key_id: r.try_get("key_id")?,
                signature: r.try_get("signature")?,
            })
        })
        .collect()
}
