//! SpinForge's own setup: where the API listens, permissions of the data
//! directory and master key, the service user, the sandbox, certificates,
//! degraded sites, the audit chain and backups. Reads the store
//! read-only; never writes to the data directory.

use super::{processes, verdict, Check, Context, Status};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Row};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const API_WHY: &str = "the admin API accepts logins and deploys; in plain HTTP on a public address, tokens cross the network readable";
const KEY_WHY: &str =
    "the master key decrypts every stored secret; anyone who can read it owns them all";
const DATA_WHY: &str = "the data directory holds the database, releases and keys; other users must not read or change it";
const USER_WHY: &str = "a process that does not need root must not have it; one that does should keep only the capabilities it uses";
const SANDBOX_WHY: &str =
    "apps are untrusted code; each missing sandbox layer is a way out of an app";
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

pub(super) async fn checks(ctx: &Context) -> Vec<Check> {
    let store = open_store(ctx).await;
    let mut out = vec![
        api_exposure(ctx),
        master_key(ctx),
        data_dir(ctx),
        service_user(ctx),
        sandbox(ctx),
    ];
    out.push(certificates(ctx, &store).await);
    out.push(degraded(ctx, &store).await);
    out.push(audit_chain(ctx).await);
    out.push(backup(ctx));
    if let Ok(conn) = store {
        let _ = sqlx::Connection::close(conn).await;
    }
    out
}

async fn open_store(ctx: &Context) -> Result<SqliteConnection, String> {
    let path = ctx.data(store::DB_FILE);
    if !path.exists() {
        return Err(format!("no store at {}", path.display()));
    }
    SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true)
        .connect()
        .await
        .map_err(|e| format!("cannot open {} read-only: {e}", path.display()))
}

fn api_exposure(ctx: &Context) -> Check {
    let (id, title) = ("spinforge.api_exposure", "API on loopback or TLS");
    let fix = "set api_listen = \"127.0.0.1:9080\" in the config and publish the API through the edge on an admin domain (TLS)";
    match &ctx.serve {
        Err(reason) => verdict(id, title, API_WHY, Status::Unknown, reason.clone(), fix),
        Ok(s) if s.api_listen.ip().is_loopback() => verdict(
            id,
            title,
            API_WHY,
            Status::Pass,
            format!("API on {}", s.api_listen),
            fix,
        ),
        Ok(s) if s.api_tls => verdict(
            id,
            title,
            API_WHY,
            Status::Pass,
            format!("API on {} over TLS", s.api_listen),
            fix,
        ),
        Ok(s) => verdict(
            id,
            title,
            API_WHY,
            Status::Fail,
            format!("API on {} in plain HTTP", s.api_listen),
            fix,
        ),
    }
}

fn master_key(ctx: &Context) -> Check {
    let (id, title) = (
        "spinforge.master_key",
        "master key file mode 0600, folder 0700",
    );
    let key = ctx.data("secrets/master.key");
    let dir = ctx.data("secrets");
    let fix = format!(
        "chmod 0700 {} && chmod 0600 {}",
        dir.display(),
        key.display()
    );
    let key_meta = match std::fs::symlink_metadata(&key) {
        Ok(m) => m,
        Err(e) => {
            let detail = format!("cannot inspect {}: {e}", key.display());
            return verdict(id, title, KEY_WHY, Status::Unknown, detail, fix);
        }
    };
    let dir_meta = match std::fs::metadata(&dir) {
        Ok(m) => m,
        Err(e) => {
            let detail = format!("cannot inspect {}: {e}", dir.display());
            return verdict(id, title, KEY_WHY, Status::Unknown, detail, fix);
        }
    };
    let key_mode = key_meta.permissions().mode() & 0o7777;
    let dir_mode = dir_meta.permissions().mode() & 0o7777;
    let mut problems = Vec::new();
    if key_meta.file_type().is_symlink() {
        problems.push("the key is a symlink".to_owned());
    }
    if key_mode & 0o077 != 0 {
        problems.push(format!("key mode {key_mode:04o}"));
    }
    if dir_mode & 0o077 != 0 {
        problems.push(format!("folder mode {dir_mode:04o}"));
    }
    if key_meta.uid() != dir_meta.uid() {
        problems.push(format!(
            "key owned by uid {}, folder by uid {}",
            key_meta.uid(),
            dir_meta.uid()
        ));
    }
    if problems.is_empty() {
        verdict(
            id,
            title,
            KEY_WHY,
            Status::Pass,
            format!("key {key_mode:04o}, folder {dir_mode:04o}"),
            fix,
        )
    } else {
        verdict(id, title, KEY_WHY, Status::Fail, problems.join("; "), fix)
    }
}

fn data_dir(ctx: &Context) -> Check {
    let (id, title) = ("spinforge.data_dir", "data directory closed to other users");
    let dir = ctx.data("");
    let fix = format!(
        "chmod 0700 {0} && chmod 0600 {0}/{1}*",
        dir.display(),
        store::DB_FILE
    );
    let meta = match std::fs::metadata(&dir) {
        Ok(m) => m,
        Err(e) => {
            let detail = format!("cannot inspect {}: {e}", dir.display());
            return verdict(id, title, DATA_WHY, Status::Unknown, detail, fix);
        }
    };
    let mode = meta.permissions().mode() & 0o7777;
    let mut status = Status::Pass;
    let mut detail = vec![format!("{} mode {mode:04o}", dir.display())];
    if mode & 0o007 != 0 {
        status = Status::Fail;
        detail.push("other users have access".into());
    } else if mode & 0o020 != 0 {
        status = Status::Fail;
        detail.push("its group may write".into());
    } else if mode & 0o050 != 0 {
        status = Status::Warn;
        detail.push("its group may read".into());
    }
    let db = dir.join(store::DB_FILE);
    if let Ok(m) = std::fs::metadata(&db) {
        let db_mode = m.permissions().mode() & 0o7777;
        if db_mode & 0o077 != 0 && mode & 0o005 != 0 {
            status = Status::Fail;
            detail.push(format!(
                "{} mode {db_mode:04o} is readable by others",
                store::DB_FILE
            ));
        }
    }
    verdict(id, title, DATA_WHY, status, detail.join("; "), fix)
}

/// A unit's `Key=value`, last one winning as in systemd.
fn unit_value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

fn service_user(ctx: &Context) -> Check {
    let (id, title) = (
        "spinforge.service_user",
        "runs as its own user where possible",
    );
    let fix = "spinforge install --systemd (bounded capabilities) or --unprivileged (own user, no app sandbox)";
    let unit = [
        "/etc/systemd/system/spinforge.service",
        "/lib/systemd/system/spinforge.service",
        "/usr/lib/systemd/system/spinforge.service",
    ]
    .iter()
    .map(|p| ctx.path(p))
    .find_map(|p| Some((std::fs::read_to_string(&p).ok()?, p)));
    let running = processes(ctx).ok().and_then(|list| {
        list.into_iter().find(|p| {
            p.cmdline.first().is_some_and(|a| a.ends_with("spinforge"))
                && p.cmdline.iter().any(|a| a == "serve")
        })
    });
    let sandbox_on = ctx.serve.as_ref().map(|s| s.sandbox_enabled).ok();
    let bounded = unit
        .as_ref()
        .and_then(|(text, _)| unit_value(text, "CapabilityBoundingSet"))
        .filter(|v| !v.is_empty());
    let (root, source) = match (&running, &unit) {
        (Some(p), _) => match p.uid {
            Some(uid) => (uid == 0, format!("serve runs as uid {uid}")),
            None => (true, "serve runs, uid unknown".to_owned()),
        },
        (None, Some((text, path))) => {
            let user = unit_value(text, "User").unwrap_or("root");
            (
                user == "root" || user == "0",
                format!("{} has User={user}", path.display()),
            )
        }
        (None, None) => {
            let detail = "no spinforge.service unit and no running `spinforge serve` found";
            return verdict(id, title, USER_WHY, Status::Unknown, detail, fix);
        }
    };
    let (status, detail) = match (root, sandbox_on, bounded) {
        (false, _, _) => (Status::Pass, source),
        (true, Some(false), _) => (
            Status::Fail,
            format!("{source}, but the sandbox is off: nothing needs root"),
        ),
        (true, _, Some(caps)) => (
            Status::Pass,
            format!("{source}: root for the spinlet sandbox, capabilities bounded to {caps}"),
        ),
        (true, _, None) => (Status::Warn, format!("{source} with every capability")),
    };
    verdict(id, title, USER_WHY, status, detail, fix)
}

/// The sandbox layers this host lacks, or why they cannot be probed.
fn missing_layers(ctx: &Context) -> Result<(Vec<&'static str>, Vec<&'static str>), String> {
    if !ctx.live() {
        return Err("the sandbox probe reads the running kernel; skipped under --root".into());
    }
    let layers = spinlet::sandbox::check();
    let required = layers
        .iter()
        .filter(|l| l.required && !l.supported)
        .map(|l| l.layer)
        .collect();
    let optional = layers
        .iter()
        .filter(|l| !l.required && !l.supported)
        .map(|l| l.layer)
        .collect();
    Ok((required, optional))
}

fn sandbox(ctx: &Context) -> Check {
    let (id, title) = ("spinforge.sandbox", "sandbox layers available");
    let fix = "run serve as root (spinforge install --systemd) on a kernel with namespaces, seccomp and cgroups; see spinforge sandbox check";
    if let Ok(s) = &ctx.serve {
        if !s.sandbox_enabled {
            return verdict(
                id,
                title,
                SANDBOX_WHY,
                Status::Fail,
                "[sandbox] enabled = false: apps run as plain processes",
                "set [sandbox] enabled = true",
            );
        }
    }
    match missing_layers(ctx) {
        Err(reason) => verdict(id, title, SANDBOX_WHY, Status::Unknown, reason, fix),
        Ok((required, optional)) if required.is_empty() => {
            let detail = if optional.is_empty() {
                "every layer is available".to_owned()
            } else {
                format!(
                    "required layers available; optional missing: {}",
                    optional.join(", ")
                )
            };
            verdict(id, title, SANDBOX_WHY, Status::Pass, detail, fix)
        }
        Ok((required, _)) => verdict(
            id,
            title,
            SANDBOX_WHY,
            Status::Fail,
            format!("missing: {}", required.join(", ")),
            fix,
        ),
    }
}

/// A time as RFC 3339 text or Unix seconds.
fn parse_time(text: &str) -> Option<OffsetDateTime> {
    if let Ok(secs) = text.trim().parse::<i64>() {
        return OffsetDateTime::from_unix_timestamp(secs).ok();
    }
    OffsetDateTime::parse(text.trim(), &Rfc3339).ok()
}

async fn certificates(ctx: &Context, store: &Result<SqliteConnection, String>) -> Check {
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

async fn degraded(ctx: &Context, store: &Result<SqliteConnection, String>) -> Check {
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
    match missing_layers(ctx) {
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

async fn audit_chain(ctx: &Context) -> Check {
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

fn backup(ctx: &Context) -> Check {
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
