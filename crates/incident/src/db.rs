//! The incident tables in the store's SQLite file, through this crate's
//! own small pool (as the audit log does). The schema is migration 0010
//! of the `store` crate; every write that belongs together is one
//! transaction, so an incident is never half opened.

use crate::model::{
    now, rfc3339, Action, ActionKind, ActionState, Incident, IncidentSummary, Indicator,
    IndicatorKind, Severity, Status, TimelineEntry,
};
use crate::IncidentError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Row, Sqlite, Transaction};
use std::path::Path;
use std::time::Duration;

pub(crate) async fn open(data_dir: &Path) -> Result<SqlitePool, IncidentError> {
    let options = SqliteConnectOptions::new()
        .filename(data_dir.join(store::DB_FILE))
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    Ok(SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await?)
}

/// A new timeline line, written with [`add_timeline`].
pub(crate) struct Line<'a> {
    pub kind: &'a str,
    pub actor: &'a str,
    pub summary: &'a str,
    pub event: Option<&'a str>,
}

pub(crate) async fn add_timeline(
    tx: &mut Transaction<'_, Sqlite>,
    id: i64,
    line: Line<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO incident_timeline (incident_id, time, kind, actor, summary, event) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(now())
    .bind(line.kind)
    .bind(line.actor)
    .bind(line.summary)
    .bind(line.event)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE incidents SET updated_at = ? WHERE id = ?")
        .bind(now())
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(crate) async fn add_indicators(
    tx: &mut Transaction<'_, Sqlite>,
    id: i64,
    indicators: &[Indicator],
) -> Result<(), sqlx::Error> {
    for i in indicators {
        sqlx::query(
            "INSERT OR IGNORE INTO incident_indicators (incident_id, kind, value) VALUES (?, ?, ?)",
        )
        .bind(id)
        .bind(i.kind.as_str())
        .bind(&i.value)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The unresolved incident of `group`, if any, with its severity.
pub(crate) async fn open_in_group(
    tx: &mut Transaction<'_, Sqlite>,
    group: &str,
) -> Result<Option<(i64, Severity)>, IncidentError> {
    let row = sqlx::query(
        "SELECT id, severity FROM incidents WHERE group_key = ? AND status != 'resolved' \
         ORDER BY id DESC LIMIT 1",
    )
    .bind(group)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|r| {
        Ok((
            r.try_get("id")?,
            severity(&r.try_get::<String, _>("severity")?)?,
        ))
    })
    .transpose()
}

pub(crate) async fn insert_incident(
    tx: &mut Transaction<'_, Sqlite>,
    title: &str,
    rule: &str,
    severity: Severity,
    group: Option<&str>,
) -> Result<i64, sqlx::Error> {
    let t = now();
    let row = sqlx::query(
        "INSERT INTO incidents (title, rule, severity, status, group_key, opened_at, updated_at) \
         VALUES (?, ?, ?, 'open', ?, ?, ?) RETURNING id",
    )
    .bind(title)
    .bind(rule)
    .bind(severity.as_str())
    .bind(group)
    .bind(t)
    .bind(t)
    .fetch_one(&mut **tx)
    .await?;
    row.try_get("id")
}

pub(crate) async fn set_severity(
    tx: &mut Transaction<'_, Sqlite>,
    id: i64,
    severity: Severity,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE incidents SET severity = ? WHERE id = ?")
        .bind(severity.as_str())
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(crate) async fn set_status(
    tx: &mut Transaction<'_, Sqlite>,
    id: i64,
    status: Status,
) -> Result<(), sqlx::Error> {
    let resolved = (status == Status::Resolved).then(now);
    sqlx::query("UPDATE incidents SET status = ?, resolved_at = ? WHERE id = ?")
        .bind(status.as_str())
        .bind(resolved)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(crate) async fn insert_action(
    tx: &mut Transaction<'_, Sqlite>,
    id: i64,
    kind: ActionKind,
    target: &str,
    state: ActionState,
    actor: &str,
) -> Result<i64, sqlx::Error> {
    let row = sqlx::query(
        "INSERT INTO incident_actions (incident_id, kind, target, state, actor, applied_at) \
         VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(id)
    .bind(kind.as_str())
    .bind(target)
    .bind(state.as_str())
    .bind(actor)
    .bind(now())
    .fetch_one(&mut **tx)
    .await?;
    row.try_get("id")
}

pub(crate) async fn mark_lifted(
    tx: &mut Transaction<'_, Sqlite>,
    action: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE incident_actions SET state = 'lifted', lifted_at = ? WHERE id = ?")
        .bind(now())
        .bind(action)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Active actions of one kind over all incidents (to re-apply at start,
/// or to see whether another incident still holds a target).
pub(crate) async fn active_actions(
    pool: &SqlitePool,
    kind: ActionKind,
) -> Result<Vec<(i64, i64, String)>, IncidentError> {
    let rows = sqlx::query(
        "SELECT id, incident_id, target FROM incident_actions \
         WHERE state = 'active' AND kind = ? ORDER BY id",
    )
    .bind(kind.as_str())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                r.try_get("incident_id")?,
                r.try_get("target")?,
            ))
        })
        .collect()
}

pub(crate) async fn status_of(pool: &SqlitePool, id: i64) -> Result<Option<Status>, IncidentError> {
    let row = sqlx::query("SELECT status FROM incidents WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.map(|r| status(&r.try_get::<String, _>("status")?))
        .transpose()
}

pub(crate) async fn load(pool: &SqlitePool, id: i64) -> Result<Option<Incident>, IncidentError> {
    let Some(row) = sqlx::query(
        "SELECT id, title, rule, severity, status, opened_at, updated_at, resolved_at \
         FROM incidents WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let summary = summary_of(pool, &row).await?;
    let resolved_at: Option<i64> = row.try_get("resolved_at")?;

    let actions = sqlx::query(
        "SELECT id, kind, target, state, actor, applied_at, lifted_at FROM incident_actions \
         WHERE incident_id = ? ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(Action {
            id: r.try_get("id")?,
            kind: ActionKind::parse(&r.try_get::<String, _>("kind")?)
                .ok_or_else(|| IncidentError::Corrupt("action kind".into()))?,
            target: r.try_get("target")?,
            state: ActionState::parse(&r.try_get::<String, _>("state")?)
                .ok_or_else(|| IncidentError::Corrupt("action state".into()))?,
            actor: r.try_get("actor")?,
            applied_at: rfc3339(r.try_get("applied_at")?),
            lifted_at: r.try_get::<Option<i64>, _>("lifted_at")?.map(rfc3339),
        })
    })
    .collect::<Result<Vec<_>, IncidentError>>()?;

    let timeline = sqlx::query(
        "SELECT time, kind, actor, summary, event FROM incident_timeline \
         WHERE incident_id = ? ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(TimelineEntry {
            time: rfc3339(r.try_get("time")?),
            kind: r.try_get("kind")?,
            actor: r.try_get("actor")?,
            summary: r.try_get("summary")?,
            event: r.try_get("event")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;

    Ok(Some(Incident {
        id: summary.id,
        title: summary.title,
        rule: summary.rule,
        severity: summary.severity,
        status: summary.status,
        opened_at: summary.opened_at,
        updated_at: summary.updated_at,
        resolved_at: resolved_at.map(rfc3339),
        indicators: summary.indicators,
        actions,
        timeline,
    }))
}

/// Incidents newest first, optionally of one status, at most `limit`.
pub(crate) async fn list(
    pool: &SqlitePool,
    status: Option<Status>,
    limit: u32,
) -> Result<Vec<IncidentSummary>, IncidentError> {
    let rows = sqlx::query(
        "SELECT id, title, rule, severity, status, opened_at, updated_at FROM incidents \
         WHERE (?1 IS NULL OR status = ?1) ORDER BY id DESC LIMIT ?2",
    )
    .bind(status.map(Status::as_str))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(summary_of(pool, row).await?);
    }
    Ok(out)
}

async fn summary_of(
    pool: &SqlitePool,
    row: &sqlx::sqlite::SqliteRow,
) -> Result<IncidentSummary, IncidentError> {
    let id: i64 = row.try_get("id")?;
    let indicators = sqlx::query(
        "SELECT kind, value FROM incident_indicators WHERE incident_id = ? ORDER BY rowid",
    )
    .bind(id)
    .fetch_all(pool)
    .await?
    .iter()
    .filter_map(|r| {
        let kind = IndicatorKind::parse(r.try_get::<&str, _>("kind").ok()?)?;
        Some(Indicator::new(kind, r.try_get::<String, _>("value").ok()?))
    })
    .collect();
    Ok(IncidentSummary {
        id,
        title: row.try_get("title")?,
        rule: row.try_get("rule")?,
        severity: severity(&row.try_get::<String, _>("severity")?)?,
        status: status(&row.try_get::<String, _>("status")?)?,
        opened_at: rfc3339(row.try_get("opened_at")?),
        updated_at: rfc3339(row.try_get("updated_at")?),
        indicators,
    })
}

fn severity(text: &str) -> Result<Severity, IncidentError> {
    Severity::parse(text).ok_or_else(|| IncidentError::Corrupt(format!("severity {text}")))
}

fn status(text: &str) -> Result<Status, IncidentError> {
    Status::parse(text).ok_or_else(|| IncidentError::Corrupt(format!("status {text}")))
}

/// One incident as a list shows it.
pub(crate) async fn list_one(
    pool: &SqlitePool,
    id: i64,
) -> Result<Option<IncidentSummary>, IncidentError> {
    let row = sqlx::query(
        "SELECT id, title, rule, severity, status, opened_at, updated_at FROM incidents \
         WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    match row {
        Some(row) => Ok(Some(summary_of(pool, &row).await?)),
        None => Ok(None),
    }
}

/// Begins a write transaction that takes the write lock at once. A
/// deferred one that reads first cannot upgrade once another connection
/// (the audit writer, the store) committed meanwhile: SQLite then fails
/// at once instead of waiting out the busy timeout.
pub(crate) async fn begin(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}
