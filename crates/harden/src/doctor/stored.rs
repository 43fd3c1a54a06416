//! What SpinForge's data directory holds, read without changing it:
//! certificates near expiry, app sites running with a degraded sandbox,
//! the audit chain, and the last recorded backup.

use super::{verdict, Check, Context, Status};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Row};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const CERT_WHY: &str = "an expired certificate takes the site down for every visitor";
const DEGRADED_WHY: &str =
    "an app running without the full sandbox can reach more of the host than it should";
const CHAIN_WHY: &str =
    "a broken audit chain means records were changed or removed; it must be investigated";
const BACKUP_WHY: &str =
    "without a recent backup a disk failure or a mistake loses sites, users and keys";

/// Certificates expiring within this many days fail; within the second,
/// warn.
const CERT_FAIL_DAYS: i64 = 7;
const CERT_WARN_DAYS: i64 = 21;
/// Backups older than this many days warn, and fail past the second.
const BACKUP_WARN_DAYS: i64 = 2;
const BACKUP_FAIL_DAYS: i64 = 7;

/// A time as RFC 3339 text or Unix seconds.
fn parse_time(text: &str) -> Option<OffsetDateTime> {
    if let Ok(secs) = text.trim().parse::<i64>() {
        return OffsetDateTime::from_unix_timestamp(secs).ok();
    }
    OffsetDateTime::parse(text.trim(), &Rfc3339).ok()
}

pub(super) async fn certificates(ctx: &Context, store: &Result<SqliteConnection, String>) -> Check {
    let (id, title) = ("spinforge.certificates", "certificates not near expiry");
    let fix = "renew them: spinforge certs list shows each; check that ACME can reach the domain on port 80";
    let Ok(_) = store else {
        let reason = store.as_ref().err().cloned().unwrap_or_default();
        return verdict(id, title, CERT_WHY, Status::Unknown, reason, fix);
    };
    // The certificate table belongs to the TLS feature; read it only if it
    // is there, by its columns rather than its exact name.
    let path = ctx.data(store::DB_FILE);
    let mut conn = match SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true)
        .connect()
        .await
    {
        Ok(c) => c,
        Err(e) => {
            return verdict(
                id,
                title,
                CERT_WHY,
                Status::Unknown,
                format!("cannot open {}: {e}", path.display()),
                fix,
            )
        }
    };
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%cert%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    let mut table = None;
    for t in tables {
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?)")
            .bind(&t)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
        if columns.iter().any(|c| c == "domain") && columns.iter().any(|c| c == "not_after") {
            table = Some(t);
            break;
        }
    }
    let Some(table) = table else {
        return verdict(
            id,
            title,
            CERT_WHY,
            Status::Unknown,
            "the store has no certificate table (domain, not_after)",
            fix,
        );
    };
    // The name came from sqlite_master and is quoted, never from input.
    let query = format!(
        "SELECT domain, CAST(not_after AS TEXT) FROM \"{}\"",
        table.replace('"', "\"\"")
    );
    let rows = match sqlx::query(sqlx::AssertSqlSafe(query))
        .fetch_all(&mut conn)
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            return verdict(
                id,
                title,
                CERT_WHY,
                Status::Unknown,
                format!("cannot read {table}: {e}"),
                fix,
            )
        }
    };
    let _ = sqlx::Connection::close(conn).await;
    if rows.is_empty() {
        return verdict(
            id,
            title,
            CERT_WHY,
            Status::Pass,
            "no certificates stored",
            fix,
        );
    }
    let mut worst: Option<(i64, String)> = None;
    for row in rows {
        let domain: String = row.try_get(0).unwrap_or_default();
        let raw: Option<String> = row.try_get(1).ok();
        let Some(not_after) = raw.as_deref().and_then(parse_time) else {
            let detail = format!(
                "certificate of {domain}: not_after `{}` is not a time",
                raw.unwrap_or_default()
            );
            return verdict(id, title, CERT_WHY, Status::Unknown, detail, fix);
        };
        let days = (not_after - ctx.now).whole_days();
        if worst.as_ref().is_none_or(|(d, _)| days < *d) {
            worst = Some((days, domain));
        }
    }
    let Some((days, domain)) = worst else {
        return verdict(
            id,
            title,
            CERT_WHY,
            Status::Pass,
            "no certificates stored",
            fix,
        );
    };
    let status = match days {
        d if d < CERT_FAIL_DAYS => Status::Fail,
        d if d < CERT_WARN_DAYS => Status::Warn,
        _ => Status::Pass,
    };
    let detail = if days < 0 {
        format!("{domain} expired {} days ago", -days)
    } else {
        format!("soonest: {domain} in {days} days")
    };
    verdict(id, title, CERT_WHY, status, detail, fix)
}

pub(super) async fn degraded(ctx: &Context, store: &Result<SqliteConnection, String>) -> Check {
    let (id, title) = (
        "spinforge.degraded_sites",
        "no site runs with a degraded sandbox",
    );
    let fix = "set [sandbox] allow_degraded = false (and enabled = true), fix the missing layers, and restart serve";
    let serve = match &ctx.serve {
        Ok(s) => s,
        Err(reason) => {
            return verdict(
                id,
                title,
                DEGRADED_WHY,
                Status::Unknown,
                reason.clone(),
                fix,
            )
        }
    };
    if store.is_err() {
        let reason = store.as_ref().err().cloned().unwrap_or_default();
        return verdict(id, title, DEGRADED_WHY, Status::Unknown, reason, fix);
    }
    let path = ctx.data(store::DB_FILE);
    let count = async {
        let mut conn = SqliteConnectOptions::new()
            .filename(&path)
            .read_only(true)
            .connect()
            .await?;
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM sites WHERE kind = 'process'")
            .fetch_one(&mut conn)
            .await?
            .try_get(0)?;
        let _ = sqlx::Connection::close(conn).await;
        Ok::<i64, sqlx::Error>(n)
    }
    .await;
    let apps = match count {
        Ok(n) => n,
        Err(e) => {
            return verdict(
                id,
                title,
                DEGRADED_WHY,
                Status::Unknown,
                format!("cannot count app sites in {}: {e}", path.display()),
                fix,
            )
        }
    };
    if apps == 0 {
        return verdict(
            id,
            title,
            DEGRADED_WHY,
            Status::Pass,
            "no app (process) sites",
            fix,
        );
    }
    if !serve.sandbox_enabled {
        return verdict(
            id,
            title,
            DEGRADED_WHY,
            Status::Fail,
            format!("{apps} app site(s) run without any sandbox ([sandbox] enabled = false)"),
            fix,
        );
    }
    if !serve.allow_degraded {
        return verdict(
            id,
            title,
            DEGRADED_WHY,
            Status::Pass,
            format!("{apps} app site(s); allow_degraded is off, so apps never start degraded"),
            fix,
        );
    }
    match super::platform::missing_layers(ctx) {
        Err(reason) => verdict(
            id,
            title,
            DEGRADED_WHY,
            Status::Unknown,
            format!("allow_degraded is on and {reason}"),
            fix,
        ),
        Ok((missing, _)) if missing.is_empty() => verdict(
            id,
            title,
            DEGRADED_WHY,
            Status::Warn,
            format!("allow_degraded is on; {apps} app site(s) have every layer today"),
            fix,
        ),
        Ok((missing, _)) => verdict(
            id,
            title,
            DEGRADED_WHY,
            Status::Fail,
            format!("{apps} app site(s) run without: {}", missing.join(", ")),
            fix,
        ),
    }
}

pub(super) async fn audit_chain(ctx: &Context) -> Check {
    let (id, title) = ("spinforge.audit_chain", "audit chain verifies");
    let data = ctx.data("");
    let key_dir = ctx
        .serve
        .as_ref()
        .ok()
        .and_then(|s| s.audit_key_dir.clone())
        .map(|k| ctx.path(k));
    let fix = format!("spinforge audit verify --data-dir {} shows the first bad record; investigate it as an incident", ctx.data_dir.display());
    match audit::verify(&data, key_dir.as_deref()).await {
        Ok(report) => match report.fault {
            None => verdict(
                id,
                title,
                CHAIN_WHY,
                Status::Pass,
                format!("{} rows, {} checkpoints", report.rows, report.checkpoints),
                fix,
            ),
            Some(fault) => verdict(
                id,
                title,
                CHAIN_WHY,
                Status::Fail,
                format!("fails at {fault}"),
                fix,
            ),
        },
        Err(e) => verdict(id, title, CHAIN_WHY, Status::Unknown, e.to_string(), fix),
    }
}

pub(super) fn backup(ctx: &Context) -> Check {
    let (id, title) = ("spinforge.backup", "a recent backup exists");
    let log = ctx.data("backups.jsonl");
    let fix = format!(
        "spinforge backup --data-dir {}, and schedule it daily",
        ctx.data_dir.display()
    );
    let text = match std::fs::read_to_string(&log) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return verdict(
                id,
                title,
                BACKUP_WHY,
                Status::Fail,
                format!("no backup recorded ({} does not exist)", log.display()),
                fix,
            )
        }
        Err(e) => {
            return verdict(
                id,
                title,
                BACKUP_WHY,
                Status::Unknown,
                format!("cannot read {}: {e}", log.display()),
                fix,
            )
        }
    };
    let Some((n, last)) = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .last()
    else {
        return verdict(
            id,
            title,
            BACKUP_WHY,
            Status::Fail,
            format!("no backup recorded ({} is empty)", log.display()),
            fix,
        );
    };
    let at = format!("{}:{}", log.display(), n + 1);
    let entry: serde_json::Value = match serde_json::from_str(last) {
        Ok(v) => v,
        Err(e) => {
            return verdict(
                id,
                title,
                BACKUP_WHY,
                Status::Unknown,
                format!("{at}: not JSON: {e}"),
                fix,
            )
        }
    };
    let Some(time) = entry
        .get("time")
        .and_then(|t| t.as_str())
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
    else {
        return verdict(
            id,
            title,
            BACKUP_WHY,
            Status::Unknown,
            format!("{at}: `time` is missing or not RFC 3339"),
            fix,
        );
    };
    let file = entry.get("file").and_then(|f| f.as_str()).unwrap_or("");
    let age = (ctx.now - time).whole_hours();
    let days = age / 24;
    let mut status = match days {
        d if d >= BACKUP_FAIL_DAYS => Status::Fail,
        d if d >= BACKUP_WARN_DAYS => Status::Warn,
        _ => Status::Pass,
    };
    let mut detail = format!("last backup {age} hours ago: {file}");
    if status == Status::Pass && !file.is_empty() && !ctx.path(file).exists() {
        status = Status::Warn;
        detail.push_str(" (the file is no longer there)");
    }
    verdict(id, title, BACKUP_WHY, status, detail, fix)
}
