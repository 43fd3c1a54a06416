//! Host services: automatic security updates, the audit daemon and its
//! watches on identity and SSH files, and time synchronisation.

use super::{processes, tool, verdict, Check, Context, Status};

const UPDATES_WHY: &str =
    "most break-ins use holes that already have a fix; security updates must not wait for a human";
const AUDITD_WHY: &str =
    "without the audit daemon, changes to accounts and logins leave no trace on the host";
const WATCH_WHY: &str =
    "writes to these files add users, grant sudo or open SSH; each should leave an audit record";
const TIME_WHY: &str =
    "TLS certificates, TOTP codes, tokens and log timelines all need a correct clock";

/// Files every host should watch.
const WATCHED: &[&str] = &[
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/sudoers",
    "/etc/ssh/sshd_config",
];

pub(super) fn checks(ctx: &Context) -> Vec<Check> {
    let procs = processes(ctx);
    vec![
        unattended_upgrades(ctx),
        auditd(&procs),
        audit_watches(ctx),
        time_sync(&procs),
    ]
}

fn unattended_upgrades(ctx: &Context) -> Check {
    let (id, title) = ("host.unattended_upgrades", "automatic security updates");
    let fix = "apt-get install unattended-upgrades && dpkg-reconfigure -plow unattended-upgrades";
    let conf_dir = ctx.path("/etc/apt/apt.conf.d");
    if !ctx.path("/etc/apt").exists() {
        let detail = format!(
            "{} does not exist: not an apt-based system",
            ctx.path("/etc/apt").display()
        );
        return verdict(id, title, UPDATES_WHY, Status::Unknown, detail, fix);
    }
    let installed = ctx.path("/usr/bin/unattended-upgrade").exists()
        || ctx
            .path("/var/lib/dpkg/info/unattended-upgrades.list")
            .exists();
    let mut enabled = None;
    if let Ok(entries) = std::fs::read_dir(&conf_dir) {
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            for line in text.lines() {
                let line = line.trim();
                if let Some(rest) = line.strip_prefix("APT::Periodic::Unattended-Upgrade") {
                    let value = rest.trim().trim_end_matches(';').trim().trim_matches('"');
                    // Later files override earlier ones, as in apt.
                    enabled = Some((
                        value != "0" && !value.is_empty(),
                        file.display().to_string(),
                    ));
                }
            }
        }
    }
    let (status, detail) = match (installed, enabled) {
        (false, _) => (
            Status::Fail,
            "the unattended-upgrades package is not installed".to_owned(),
        ),
        (true, Some((true, file))) => (Status::Pass, format!("installed and enabled ({file})")),
        (true, Some((false, file))) => (
            Status::Fail,
            format!("installed but switched off in {file}"),
        ),
        (true, None) => (
            Status::Fail,
            format!(
                "installed but APT::Periodic::Unattended-Upgrade is not set in {}",
                conf_dir.display()
            ),
        ),
    };
    verdict(id, title, UPDATES_WHY, status, detail, fix)
}

fn auditd(procs: &Result<Vec<super::Process>, String>) -> Check {
    let (id, title) = ("host.auditd", "audit daemon running");
    let fix = "apt-get install auditd && systemctl enable --now auditd";
    match procs {
        Err(reason) => verdict(id, title, AUDITD_WHY, Status::Unknown, reason.clone(), fix),
        Ok(list) if list.iter().any(|p| p.comm == "auditd") => verdict(
            id,
            title,
            AUDITD_WHY,
            Status::Pass,
            "auditd is running",
            fix,
        ),
        Ok(_) => verdict(
            id,
            title,
            AUDITD_WHY,
            Status::Fail,
            "no auditd process",
            fix,
        ),
    }
}

/// Whether an audit rule line watches `target`.
fn watches(rule: &str, target: &str) -> bool {
    let words: Vec<&str> = rule.split_whitespace().collect();
    words.windows(2).any(|w| {
        let path = match w {
            ["-w", p] => Some(*p),
            ["-F", f] => f.strip_prefix("path=").or_else(|| f.strip_prefix("dir=")),
            _ => None,
        };
        path.is_some_and(|p| {
            p == target
                || (p.ends_with('/') && target.starts_with(p))
                || target.strip_prefix(p).is_some_and(|r| r.starts_with('/'))
        })
    })
}

fn audit_watches(ctx: &Context) -> Check {
    let (id, title) = (
        "host.audit_watches",
        "audit watches on accounts, sudoers and sshd_config",
    );
    let fix = "write `-w /etc/passwd -p wa -k identity` (and the same for the missing files) to /etc/audit/rules.d/90-spinforge.rules, then augenrules --load";
    let mut rules = String::new();
    let mut source = String::new();
    if ctx.live() {
        if let Some(text) = tool("auditctl", &["-l"]) {
            rules = text;
            source = "auditctl -l".into();
        }
    }
    if source.is_empty() {
        let mut files = vec![ctx.path("/etc/audit/audit.rules")];
        let pattern = ctx.path("/etc/audit/rules.d/*.rules");
        if let Some(p) = pattern.to_str() {
            if let Ok(found) = glob::glob(p) {
                files.extend(found.flatten());
            }
        }
        let mut read = Vec::new();
        for file in files.iter().filter(|f| f.exists()) {
            match std::fs::read_to_string(file) {
                Ok(text) => {
                    rules.push_str(&text);
                    rules.push('\n');
                    read.push(file.display().to_string());
                }
                Err(e) => {
                    let detail = format!("cannot read {}: {e}", file.display());
                    return verdict(id, title, WATCH_WHY, Status::Unknown, detail, fix);
                }
            }
        }
        if read.is_empty() {
            let detail = format!(
                "no audit rules at {} or {}",
                files[0].display(),
                pattern.display()
            );
            return verdict(id, title, WATCH_WHY, Status::Fail, detail, fix);
        }
        source = read.join(", ");
    }
    let missing: Vec<&str> = WATCHED
        .iter()
        .filter(|t| {
            !rules
                .lines()
                .any(|r| !r.trim_start().starts_with('#') && watches(r, t))
        })
        .copied()
        .collect();
    if missing.is_empty() {
        verdict(
            id,
            title,
            WATCH_WHY,
            Status::Pass,
            format!("all watched ({source})"),
            fix,
        )
    } else {
        verdict(
            id,
            title,
            WATCH_WHY,
            Status::Fail,
            format!("not watched: {} ({source})", missing.join(", ")),
            fix,
        )
    }
}

fn time_sync(procs: &Result<Vec<super::Process>, String>) -> Check {
    let (id, title) = ("host.time_sync", "time synchronisation");
    let fix = "apt-get install systemd-timesyncd (or chrony) && timedatectl set-ntp true";
    // comm is cut at 15 bytes: systemd-timesyncd shows as systemd-timesyn.
    let daemons = ["chronyd", "systemd-timesyn", "ntpd", "openntpd", "ntpsec"];
    match procs {
        Err(reason) => verdict(id, title, TIME_WHY, Status::Unknown, reason.clone(), fix),
        Ok(list) => match list.iter().find(|p| daemons.contains(&p.comm.as_str())) {
            Some(p) => verdict(
                id,
                title,
                TIME_WHY,
                Status::Pass,
                format!("{} is running", p.comm),
                fix,
            ),
            None => verdict(
                id,
                title,
                TIME_WHY,
                Status::Fail,
                "no chronyd, systemd-timesyncd or ntpd process",
                fix,
            ),
        },
    }
}
