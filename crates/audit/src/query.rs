//! Reading the log: filters, newest-first pages with a cursor, and the
//! view of an event the API and the CLI show. Who may read which events
//! is decided by the caller, which sets [`AuditQuery::customer`].

use crate::chain::Row;
use crate::db::{self, OpenMode};
use crate::event::{valid_type, Outcome};
use crate::pii::Vault;
use crate::AuditError;
use serde::Serialize;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use std::path::Path;
use std::sync::Arc;

/// Most events one page may hold.
pub const MAX_LIMIT: u32 = 1000;

/// A filter on the event type: one type, or every type under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeFilter {
    Exact(String),
    /// A prefix ending in `.`, e.g. `auth.`.
    Prefix(String),
}

impl TypeFilter {
    /// `auth.failed` is exact; `auth.` or `auth` (one word) is a prefix.
    pub fn parse(text: &str) -> Result<TypeFilter, AuditError> {
        let rule = "must be an event type like auth.failed, or a prefix like auth.";
        if let Some(stem) = text.strip_suffix('.') {
            return if valid_type(&format!("{stem}.x")) {
                Ok(TypeFilter::Prefix(text.to_owned()))
            } else {
                Err(AuditError::invalid("type", rule))
            };
        }
        if valid_type(text) {
            Ok(TypeFilter::Exact(text.to_owned()))
        } else if valid_type(&format!("{text}.x")) {
            Ok(TypeFilter::Prefix(format!("{text}.")))
        } else {
            Err(AuditError::invalid("type", rule))
        }
    }
}

/// Which events to read. Every filter is optional; they combine with AND.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub kind: Option<TypeFilter>,
    pub actor_user: Option<i64>,
    pub result: Option<Outcome>,
    pub resource: Option<String>,
    /// Microseconds since the epoch, inclusive.
    pub since_us: Option<i64>,
    /// Microseconds since the epoch, exclusive.
    pub until_us: Option<i64>,
    /// Newest first, only events older than this sequence number (the
    /// cursor of the previous page).
    pub before: Option<i64>,
    /// Oldest first, only events newer than this sequence number (for
    /// following the log).
    pub after: Option<i64>,
    /// The page size, 1 to [`MAX_LIMIT`].
    pub limit: u32,
    /// Only events about this customer. The hub sets it for callers that
    /// may see their own customer's events only.
    pub customer: Option<String>,
}

/// One page of events and the cursor of the next, if there may be one.
#[derive(Debug, Serialize)]
pub struct Page {
    pub events: Vec<EventView>,
    /// Pass as `cursor` (newest-first pages) or `after` (following).
    pub next_cursor: Option<String>,
}

/// An event as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventView {
    pub seq: i64,
    /// RFC 3339, UTC, microseconds.
    pub time: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub actor: ActorView,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub resource: Option<String>,
    pub action: Option<String>,
    pub result: String,
    pub request_id: Option<String>,
    pub session_id: Option<String>,
    pub customer: Option<String>,
    pub metadata: serde_json::Value,
    /// Hex of the row's chain MAC.
    pub mac: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActorView {
    pub user_id: Option<i64>,
    pub role: Option<String>,
    pub api_key_id: Option<String>,
}

impl From<Row> for EventView {
    fn from(row: Row) -> EventView {
        EventView {
            seq: row.seq,
            time: format_time(row.time_us),
            kind: row.kind,
            actor: ActorView {
                user_id: row.actor_user,
                role: row.actor_role,
                api_key_id: row.actor_key,
            },
            client_ip: row.client_ip,
            user_agent: row.user_agent,
            resource: row.resource,
            action: row.action,
            result: row.result,
            request_id: row.request_id,
            session_id: row.session_id,
            customer: row.customer,
            metadata: serde_json::from_str(&row.metadata)
                .unwrap_or(serde_json::Value::String(row.metadata)),
            mac: hex::encode(&row.mac),
        }
    }
}

fn format_time(time_us: i64) -> String {
    let nanos = i128::from(time_us) * 1000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| time_us.to_string())
}

/// Parses a point in time: RFC 3339, or an age like `30s`, `15m`, `24h`,
/// `7d` counted back from `now_us`. Returns microseconds since the epoch.
pub fn parse_time(text: &str, field: &'static str, now_us: i64) -> Result<i64, AuditError> {
    let rule = "must be RFC 3339 (2026-01-31T12:00:00Z) or an age like 30s, 15m, 24h, 7d";
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok((t.unix_timestamp_nanos() / 1000) as i64);
    }
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at(split);
    let seconds: i64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(AuditError::invalid(field, rule)),
    };
    let count: i64 = number
        .parse()
        .ok()
        .filter(|n| (0..=36_500 * 86_400).contains(n))
        .ok_or_else(|| AuditError::invalid(field, rule))?;
    Ok(now_us - count * seconds * 1_000_000)
}

fn empty() -> Page {
    Page {
        events: Vec::new(),
        next_cursor: None,
    }
}

/// Read access to the log; cheap to clone.
#[derive(Clone)]
pub struct AuditReader {
    pool: SqlitePool,
    /// Opens the personal fields; `None` leaves them sealed.
    pii: Option<Arc<Vault>>,
}

impl AuditReader {
    pub(crate) fn new(pool: SqlitePool, pii: Option<Arc<Vault>>) -> AuditReader {
        AuditReader { pool, pii }
    }

    /// Opens the log of a (possibly stopped) data directory read-only.
    pub async fn open_read_only(data_dir: &Path) -> Result<AuditReader, AuditError> {
        let key_dir = crate::keys::default_key_dir(data_dir);
        // Without the key file the personal fields stay sealed.
        let pii = Vault::load(&key_dir, false).ok().map(Arc::new);
        Ok(AuditReader::new(
            db::open(data_dir, OpenMode::ReadOnly).await?,
            pii,
        ))
    }

    /// One page of events matching `query`, every personal field opened
    /// whose key still exists.
    pub async fn query(&self, query: &AuditQuery) -> Result<Page, AuditError> {
        self.query_opening(query, None).await
    }

    /// [`AuditReader::query`] as the person `user` (with address
    /// `email`) may see it: only their own personal fields are opened,
    /// everyone else's read [`crate::pii::WITHHELD`]. For exports.
    pub async fn query_as_subject(
        &self,
        query: &AuditQuery,
        user: i64,
        email: &str,
    ) -> Result<Page, AuditError> {
        let subjects = match &self.pii {
            Some(pii) => pii.subjects_of(user, email),
            None => Vec::new(),
        };
        self.query_opening(query, Some(&subjects)).await
    }

    async fn query_opening(
        &self,
        query: &AuditQuery,
        only: Option<&[String]>,
    ) -> Result<Page, AuditError> {
        let select = format!("SELECT {} FROM audit_events WHERE 1 = 1", db::COLUMNS);
        let Some(mut sql) = self.statement(query, select).await? else {
            return Ok(empty());
        };
        let rows = sql.build().fetch_all(&self.pool).await?;
        let mut rows: Vec<Row> = rows.iter().map(db::row_from).collect::<Result<_, _>>()?;
        if let Some(pii) = &self.pii {
            pii.open_rows(&self.pool, &mut rows, only).await?;
        }
        let events: Vec<EventView> = rows.into_iter().map(EventView::from).collect();
        let next_cursor = (events.len() == query.limit as usize)
            .then(|| events.last().map(|e| e.seq.to_string()))
            .flatten();
        Ok(Page {
            events,
            next_cursor,
        })
    }

    /// SQLite's plan for `query`, one line per step (`EXPLAIN QUERY
    /// PLAN`), e.g. `SEARCH audit_events USING INDEX audit_events_actor
    /// (actor_user=?)`; empty when the query needs no statement. For
    /// checking that every filter walks an index in seq order.
    pub async fn plan(&self, query: &AuditQuery) -> Result<Vec<String>, AuditError> {
        let select = format!(
            "EXPLAIN QUERY PLAN SELECT {} FROM audit_events WHERE 1 = 1",
            db::COLUMNS
        );
        let Some(mut sql) = self.statement(query, select).await? else {
            return Ok(Vec::new());
        };
        let rows = sql.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| sqlx::Row::try_get::<String, _>(row, "detail").map_err(AuditError::from))
            .collect()
    }

    /// The statement for `query` after `select` (which ends in a WHERE
    /// clause), or `None` when no row can match.
    async fn statement(
        &self,
        query: &AuditQuery,
        select: String,
    ) -> Result<Option<QueryBuilder<Sqlite>>, AuditError> {
        if !(1..=MAX_LIMIT).contains(&query.limit) {
            return Err(AuditError::invalid(
                "limit",
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
        if query.before.is_some() && query.after.is_some() {
            return Err(AuditError::invalid(
                "cursor",
                "give either cursor or after, not both",
            ));
        }
        let ascending = query.after.is_some();
        let mut sql = QueryBuilder::<Sqlite>::new(select);
        match &query.kind {
            Some(TypeFilter::Exact(kind)) => {
                sql.push(" AND kind = ").push_bind(kind.clone());
            }
            Some(TypeFilter::Prefix(prefix)) if prefix.matches('.').count() == 1 => {
                // A whole category: the expression index of the schema.
                sql.push(" AND substr(kind, 1, instr(kind, '.')) = ")
                    .push_bind(prefix.clone());
            }
            Some(TypeFilter::Prefix(prefix)) => {
                // Types are [a-z0-9_.]: every type under `auth.token.`
                // sorts before `auth.token/`.
                // Limitation: this range is sorted, not walked in seq
                // order; deep prefixes are rare (an index per depth would
                // lift it).
                let mut upper = prefix.clone();
                upper.pop();
                upper.push('/');
                sql.push(" AND kind >= ")
                    .push_bind(prefix.clone())
                    .push(" AND kind < ")
                    .push_bind(upper);
            }
            None => {}
        }
        if let Some(user) = query.actor_user {
            sql.push(" AND actor_user = ").push_bind(user);
        }
        if let Some(result) = query.result {
            sql.push(" AND result = ").push_bind(result.as_str());
        }
        if let Some(resource) = &query.resource {
            sql.push(" AND resource = ").push_bind(resource.clone());
        }
        if let Some(customer) = &query.customer {
            sql.push(" AND customer = ").push_bind(customer.clone());
        }
        // Time bounds become sequence bounds with one seek each: the
        // writer keeps time non-decreasing along seq, so the rows in
        // [since, until) are exactly those in [first seq at or after
        // since, first seq at or after until).
        if let Some(since) = query.since_us {
            match self.first_seq_at(since).await? {
                Some(seq) => sql.push(" AND seq >= ").push_bind(seq),
                None => return Ok(None),
            };
        }
        if let Some(until) = query.until_us {
            if let Some(seq) = self.first_seq_at(until).await? {
                sql.push(" AND seq < ").push_bind(seq);
            }
        }
        if let Some(before) = query.before {
            sql.push(" AND seq < ").push_bind(before);
        }
        if let Some(after) = query.after {
            sql.push(" AND seq > ").push_bind(after);
        }
        sql.push(if ascending {
            " ORDER BY seq ASC LIMIT "
        } else {
            " ORDER BY seq DESC LIMIT "
        })
        .push_bind(i64::from(query.limit));
        Ok(Some(sql))
    }

    /// The first row at or after `time_us`.
    async fn first_seq_at(&self, time_us: i64) -> Result<Option<i64>, AuditError> {
        Ok(sqlx::query_scalar(
            "SELECT seq FROM audit_events WHERE time >= ? ORDER BY time, seq LIMIT 1",
        )
        .bind(time_us)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The newest sequence number, 0 for an empty log.
    pub async fn head(&self) -> Result<i64, AuditError> {
        Ok(db::head(&self.pool).await?.map_or(0, |(seq, _)| seq))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_single_word_type_is_a_prefix() {
        assert_eq!(
            TypeFilter::parse("auth").unwrap(),
            TypeFilter::Prefix("auth.".into())
        );
        assert_eq!(
            TypeFilter::parse("auth.").unwrap(),
            TypeFilter::Prefix("auth.".into())
        );
        assert_eq!(
            TypeFilter::parse("auth.failed").unwrap(),
            TypeFilter::Exact("auth.failed".into())
        );
        assert!(TypeFilter::parse("auth'--").is_err());
        assert!(TypeFilter::parse("").is_err());
    }

    #[test]
    fn ages_count_back_from_now() {
        let now = 10_000_000_000;
        assert_eq!(parse_time("30s", "since", now).unwrap(), now - 30_000_000);
        assert_eq!(parse_time("2h", "since", now).unwrap(), now - 7_200_000_000);
        assert_eq!(
            parse_time("1970-01-01T00:00:01Z", "since", now).unwrap(),
            1_000_000
        );
        assert!(parse_time("soon", "since", now).is_err());
        assert!(parse_time("-5m", "since", now).is_err());
    }
}
