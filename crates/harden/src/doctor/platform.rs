//! SpinForge's own setup: where the API listens, permissions of the data
//! directory and master key, the service user and the sandbox. The checks
//! of what the data directory holds are in `stored`. Never writes.

use super::{processes, stored, verdict, Check, Context, Process, Status};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::ConnectOptions;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

const API_WHY: &str = "the admin API accepts logins and deploys; in plain HTTP on a public address, tokens cross the network readable";
const KEY_WHY: &str =
    "the master key decrypts every stored secret; anyone who can read it owns them all";
const DATA_WHY: &str = "the data directory holds the database, releases and keys; other users must not read or change it";
const USER_WHY: &str = "a process that does not need root must not have it; one that does should keep only the capabilities it uses";
const SANDBOX_WHY: &str =
    "apps are untrusted code; each missing sandbox layer is a way out of an app";

pub(super) async fn checks(ctx: &Context) -> Vec<Check> {
    let store = open_store(ctx).await;
    let mut out = vec![
        api_exposure(ctx),
        master_key(ctx),
        data_dir(ctx),
        service_user(ctx),
        sandbox(ctx),
    ];
    out.push(stored::certificates(ctx, &store).await);
    out.push(stored::degraded(ctx, &store).await);
    out.push(stored::audit_chain(ctx).await);
    out.push(stored::backup(ctx));
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
    let sandbox_on = ctx.serve.as_ref().map(|s| s.sandbox_enabled).ok();

    // The running serve is the truth; the unit only says what the next
    // start will do.
    let running: Vec<Process> = processes(ctx)
        .map(|list| list.into_iter().filter(is_serve).collect())
        .unwrap_or_default();
    if !running.is_empty() {
        let verdicts: Vec<(Status, String)> = running
            .iter()
            .map(|p| judge_process(p, sandbox_on))
            .collect();
        let status = verdicts
            .iter()
            .map(|(s, _)| *s)
            .max_by_key(|s| severity_rank(*s))
            .unwrap_or(Status::Unknown);
        let detail: Vec<String> = verdicts.into_iter().map(|(_, d)| d).collect();
        return verdict(id, title, USER_WHY, status, detail.join("; "), fix);
    }

    let unit = [
        "/etc/systemd/system/spinforge.service",
        "/lib/systemd/system/spinforge.service",
        "/usr/lib/systemd/system/spinforge.service",
    ]
    .iter()
    .map(|p| ctx.path(p))
    .find_map(|p| Some((std::fs::read_to_string(&p).ok()?, p)));
    let Some((text, path)) = unit else {
        let detail = "no spinforge.service unit and no running `spinforge serve` found";
        return verdict(id, title, USER_WHY, Status::Unknown, detail, fix);
    };
    let user = unit_value(&text, "User").unwrap_or("root");
    let root = user == "root" || user == "0";
    let source = format!("serve is not running; {} has User={user}", path.display());
    let bounded = unit_value(&text, "CapabilityBoundingSet").filter(|v| !v.is_empty());
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

/// True for a `spinforge serve` process.
fn is_serve(p: &Process) -> bool {
    let program = p.cmdline.first().map(|a| a.rsplit('/').next().unwrap_or(a));
    program == Some("spinforge") && p.cmdline.iter().skip(1).any(|a| a == "serve")
}

/// Orders verdicts from best to worst, "could not check" counting as
/// worse than a warning and better than a failure.
fn severity_rank(status: Status) -> u8 {
    match status {
        Status::Pass => 0,
        Status::Warn => 1,
        Status::Unknown => 2,
        Status::Fail => 3,
    }
}

/// A running serve judged by its `/proc/PID/status`: its effective uid,
/// and the capabilities it holds (non-root: `CapEff`) or could ever hold
/// (root: `CapBnd`, the bounding set).
fn judge_process(p: &Process, sandbox_on: Option<bool>) -> (Status, String) {
    let who = format!("serve (pid {})", p.pid);
    let (Some(uid), Some(eff), Some(bnd)) = (p.uid, p.cap_eff, p.cap_bnd) else {
        return (
            Status::Unknown,
            format!("{who}: /proc/{}/status lacks Uid, CapEff or CapBnd", p.pid),
        );
    };
    if uid != 0 {
        let bind = capability_bit("CAP_NET_BIND_SERVICE");
        let extra = eff & !bind;
        return if extra == 0 {
            let held = if eff == 0 {
                "none".to_owned()
            } else {
                capability_names(eff).join(" ")
            };
            (
                Status::Pass,
                format!("{who} runs as uid {uid}; effective capabilities: {held}"),
            )
        } else {
            (
                Status::Warn,
                format!(
                    "{who} runs as uid {uid} but holds {}",
                    capability_names(extra).join(" ")
                ),
            )
        };
    }
    if sandbox_on == Some(false) {
        return (
            Status::Fail,
            format!("{who} runs as root, but the sandbox is off: nothing needs root"),
        );
    }
    let needed = crate::install::SUPERVISOR_CAPS
        .iter()
        .fold(0, |mask, name| mask | capability_bit(name));
    let extra = bnd & !needed;
    // Every capability up to CAP_AUDIT_READ (Linux 3.16): an unbounded
    // root process.
    let everything = (1u64 << 38) - 1;
    if extra == 0 {
        (
            Status::Pass,
            format!(
                "{who} runs as root for the spinlet sandbox; bounding set: {}",
                capability_names(bnd).join(" ")
            ),
        )
    } else if bnd & everything == everything {
        (
            Status::Warn,
            format!("{who} runs as root with every capability (CapBnd {bnd:016x})"),
        )
    } else {
        (
            Status::Warn,
            format!(
                "{who} runs as root; its bounding set also holds {}, which the sandbox does not need",
                capability_names(extra).join(" ")
            ),
        )
    }
}

/// The bit of a capability named like `CAP_KILL` (0 if unknown).
fn capability_bit(name: &str) -> u64 {
    name.parse::<caps::Capability>()
        .map_or(0, |c| 1u64 << c.index())
}

/// The names of the capabilities set in `mask`, by number; bits the
/// `caps` crate does not know are shown as `cap_N`.
fn capability_names(mask: u64) -> Vec<String> {
    let known: std::collections::HashMap<u8, String> = caps::all()
        .into_iter()
        .map(|c| (c.index(), c.to_string()))
        .collect();
    (0..64u8)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| known.get(&bit).cloned().unwrap_or(format!("cap_{bit}")))
        .collect()
}

/// The sandbox layers this host lacks, or why they cannot be probed.
pub(super) fn missing_layers(
    ctx: &Context,
) -> Result<(Vec<&'static str>, Vec<&'static str>), String> {
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
