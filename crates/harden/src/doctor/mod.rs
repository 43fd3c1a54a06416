//! `spinforge doctor`: a read-only audit of the host and of SpinForge's
//! own setup. Every check reads through a root prefix (`--root`), runs no
//! tool that changes anything, and ends as pass, warn, fail or "could not
//! check" with the reason, why it matters and the exact fix. A check that
//! cannot read its input never passes.

mod firewall;
mod host;
mod kernel;
mod platform;
mod ssh;
mod stored;

use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use ssh::{parse_sshd_config, SshdConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    #[serde(rename = "pass")]
    Pass,
    #[serde(rename = "warn")]
    Warn,
    #[serde(rename = "fail")]
    Fail,
    #[serde(rename = "could-not-check")]
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Unknown => "could-not-check",
        }
    }
}

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable id, `area.name`.
    pub id: &'static str,
    pub title: &'static str,
    pub status: Status,
    /// What was found (or why it could not be checked).
    pub detail: String,
    pub why: &'static str,
    /// The exact fix; empty when the check passed.
    pub fix: String,
}

/// The facts about `serve`'s settings the SpinForge checks need, resolved
/// by the binary from its config (flags > env > file > defaults).
#[derive(Debug, Clone)]
pub struct ServeFacts {
    pub listen: SocketAddr,
    pub tls_listen: SocketAddr,
    pub api_listen: SocketAddr,
    /// Whether the API socket itself speaks TLS.
    pub api_tls: bool,
    pub sandbox_enabled: bool,
    pub allow_degraded: bool,
    pub audit_key_dir: Option<PathBuf>,
}

/// What a doctor run looks at.
#[derive(Debug, Clone)]
pub struct Context {
    /// Prefix of every host path; `/` checks this host.
    pub root: PathBuf,
    /// The data directory as the host sees it (read through `root`).
    pub data_dir: PathBuf,
    /// `serve`'s settings, or why they could not be read.
    pub serve: Result<ServeFacts, String>,
    /// "Now", for ages of backups and certificates.
    pub now: time::OffsetDateTime,
}

impl Context {
    /// True when checking this very host: only then are live tools
    /// (`sshd -T`, `nft list ruleset`, the sandbox probe) consulted.
    pub fn live(&self) -> bool {
        self.root == Path::new("/")
    }

    pub fn path(&self, host_path: impl AsRef<Path>) -> PathBuf {
        crate::under(&self.root, host_path)
    }

    pub fn data(&self, rel: &str) -> PathBuf {
        let data = self.path(&self.data_dir);
        if rel.is_empty() {
            data
        } else {
            data.join(rel)
        }
    }
}

/// All checks, and the score.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub summary: Summary,
    /// 0 to 100: pass earns 1, warn ½, fail and could-not-check nothing.
    pub score: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub could_not_check: usize,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Report {
        let mut summary = Summary::default();
        for c in &checks {
            match c.status {
                Status::Pass => summary.pass += 1,
                Status::Warn => summary.warn += 1,
                Status::Fail => summary.fail += 1,
                Status::Unknown => summary.could_not_check += 1,
            }
        }
        let points = summary.pass * 2 + summary.warn;
        let score = if checks.is_empty() {
            0
        } else {
            ((points * 100) as f64 / (checks.len() * 2) as f64).round() as u32
        };
        Report {
            checks,
            summary,
            score,
        }
    }

    pub fn failed(&self) -> bool {
        self.summary.fail > 0
    }

    pub fn get(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }

    /// The report as a table, then the score.
    pub fn table(&self) -> String {
        use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};
        let mut table = Table::new();
        table
            .load_preset(UTF8_BORDERS_ONLY)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(180)
            .set_header(["STATUS", "CHECK", "FOUND", "WHY IT MATTERS", "FIX"]);
        for c in &self.checks {
            table.add_row([
                c.status.as_str().to_uppercase(),
                format!("{}\n{}", c.id, c.title),
                c.detail.clone(),
                c.why.to_owned(),
                if c.fix.is_empty() {
                    "-".into()
                } else {
                    c.fix.clone()
                },
            ]);
        }
        format!(
            "{table}\nscore {}/100: {} pass, {} warn, {} fail, {} could not check\n",
            self.score,
            self.summary.pass,
            self.summary.warn,
            self.summary.fail,
            self.summary.could_not_check
        )
    }
}

/// Runs every check.
pub async fn run(ctx: &Context) -> Report {
    let mut checks = Vec::new();
    checks.extend(kernel::checks(ctx));
    checks.extend(ssh::checks(ctx));
    checks.extend(firewall::checks(ctx));
    checks.extend(host::checks(ctx));
    checks.extend(platform::checks(ctx).await);
    Report::new(checks)
}

// ---- shared helpers ------------------------------------------------------------

/// A check verdict; `fix` is dropped when it passed.
pub(crate) fn verdict(
    id: &'static str,
    title: &'static str,
    why: &'static str,
    status: Status,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check {
        id,
        title,
        status,
        detail: detail.into(),
        why,
        fix: if status == Status::Pass {
            String::new()
        } else {
            fix.into()
        },
    }
}

/// Runs a read-only host tool for at most 10 s; its stdout if it
/// succeeded. Only ever called when checking this host (`live`).
pub(crate) fn tool(program: &str, args: &[&str]) -> Option<String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).ok()?;
        Some(text)
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let text = reader.join().ok()??;
                return status.success().then_some(text);
            }
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// A running process seen in `<root>/proc`.
#[derive(Debug, Clone)]
pub(crate) struct Process {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
    /// Effective uid (`Uid:` in status, second field).
    pub uid: Option<u32>,
    /// Effective and bounding capability sets (`CapEff:`, `CapBnd:`),
    /// one bit per capability number.
    pub cap_eff: Option<u64>,
    pub cap_bnd: Option<u64>,
}

/// The processes in `<root>/proc`, or why they cannot be listed.
pub(crate) fn processes(ctx: &Context) -> Result<Vec<Process>, String> {
    let proc_dir = ctx.path("/proc");
    let entries = std::fs::read_dir(&proc_dir)
        .map_err(|e| format!("cannot list {}: {e}", proc_dir.display()))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = entry.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the process ended meanwhile
        };
        let cmdline = std::fs::read(dir.join("cmdline"))
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue; // the process ended meanwhile
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(str::trim)
        };
        let uid = field("Uid").and_then(|l| l.split_whitespace().nth(1)?.parse().ok());
        let caps = |key| field(key).and_then(|hex| u64::from_str_radix(hex, 16).ok());
        out.push(Process {
            pid: name.to_string_lossy().parse().unwrap_or(0),
            comm: comm.trim().to_owned(),
            cmdline,
            uid,
            cap_eff: caps("CapEff"),
            cap_bnd: caps("CapBnd"),
        });
    }
    if out.is_empty() {
        return Err(format!("no processes under {}", proc_dir.display()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_service_user;
#[cfg(test)]
mod tests_sshd_match;
