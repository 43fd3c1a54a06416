//! The SSH server's effective settings: `sshd -T` on this host when it
//! works, else `<root>/etc/ssh/sshd_config` and its `Include`s (globs,
//! relative to /etc/ssh), with sshd's rule that the first value of a
//! keyword wins. A `Match` block's settings apply to the connections that
//! meet its criteria, until the next `Match` or the end of its file, and
//! override the global ones for them: each check judges the global value
//! and warns when a block weakens it. `Match all` applies to everyone, so
//! its values are the global ones. Blocks are read from the files even
//! when `sshd -T` gave the global values (it evaluates no Match without
//! `-C`).

use super::{tool, verdict, Check, Context, Status};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Include nesting sshd itself allows, roughly; deeper is refused.
const MAX_INCLUDE_DEPTH: usize = 16;

/// Effective sshd settings; keywords lowercase.
#[derive(Debug, Default, Clone)]
pub struct SshdConfig {
    /// First value of each keyword outside `Match` blocks.
    pub global: HashMap<String, String>,
    /// The `Match` blocks, in file order.
    pub blocks: Vec<MatchBlock>,
    /// AllowUsers/AllowGroups accumulate over lines.
    pub allow_users: Vec<String>,
    pub allow_groups: Vec<String>,
    /// Where the settings came from.
    pub source: String,
}

/// One `Match` block.
#[derive(Debug, Default, Clone)]
pub struct MatchBlock {
    /// The criteria as written, e.g. `User deploy`.
    pub criteria: String,
    /// `file:line` of the `Match` line.
    pub at: String,
    /// `Match all`: the block applies to every connection.
    pub all: bool,
    /// First value of each keyword inside the block.
    pub settings: HashMap<String, String>,
    /// An allow list in a block replaces the global one for its
    /// connections.
    pub allow_users: Vec<String>,
    pub allow_groups: Vec<String>,
}

impl MatchBlock {
    fn place(&self) -> String {
        format!("Match {} ({})", self.criteria, self.at)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }
}

impl SshdConfig {
    /// What every connection gets unless a conditional block says
    /// otherwise: the first `Match all` value, else the global one.
    fn get(&self, key: &str) -> Option<&str> {
        self.blocks
            .iter()
            .filter(|b| b.all)
            .find_map(|b| b.get(key))
            .or_else(|| self.global.get(key).map(String::as_str))
    }

    /// What connections that `block` matches get.
    fn get_in<'a>(&'a self, block: &'a MatchBlock, key: &str) -> Option<&'a str> {
        block.get(key).or_else(|| self.get(key))
    }

    /// The blocks that apply to some connections only.
    fn conditional(&self) -> impl Iterator<Item = &MatchBlock> {
        self.blocks.iter().filter(|b| !b.all)
    }

    /// The allow lists every connection is held to: a `Match all` block's
    /// if it has one, else the global ones.
    fn allow_lists(&self) -> (&[String], &[String]) {
        self.blocks
            .iter()
            .filter(|b| b.all)
            .find(|b| !b.allow_users.is_empty() || !b.allow_groups.is_empty())
            .map_or((&self.allow_users, &self.allow_groups), |b| {
                (&b.allow_users, &b.allow_groups)
            })
    }

    fn record(&mut self, key: String, value: String, block: Option<usize>) {
        let words = || value.split_whitespace().map(str::to_owned);
        match (block.and_then(|i| self.blocks.get_mut(i)), key.as_str()) {
            (Some(b), "allowusers") => b.allow_users.extend(words()),
            (Some(b), "allowgroups") => b.allow_groups.extend(words()),
            (Some(b), _) => {
                b.settings.entry(key).or_insert(value);
            }
            (None, "allowusers") => self.allow_users.extend(words()),
            (None, "allowgroups") => self.allow_groups.extend(words()),
            (None, _) => {
                self.global.entry(key).or_insert(value);
            }
        }
    }
}

/// Splits a config line into keyword and value per sshd_config(5):
/// whitespace or one `=` separates them; double quotes group.
fn split_line(line: &str) -> Result<Option<(String, String)>, String> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return Ok(None);
    }
    if t.matches('"').count() % 2 != 0 {
        return Err("unbalanced double quote".into());
    }
    let end = t
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(t.len());
    let key = t[..end].to_ascii_lowercase();
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!(
            "`{}` is not a keyword",
            &t[..end.max(1).min(t.len())]
        ));
    }
    let rest = t[end..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
    if rest.is_empty() {
        return Err(format!("`{key}` has no value"));
    }
    Ok(Some((key, rest.trim_matches('"').to_owned())))
}

/// Parses `<root>/etc/ssh/sshd_config` and its includes.
pub fn parse_sshd_config(root: &Path) -> Result<SshdConfig, String> {
    let main = crate::under(root, "/etc/ssh/sshd_config");
    let mut config = SshdConfig {
        source: main.display().to_string(),
        ..SshdConfig::default()
    };
    parse_file(root, &main, 0, &mut config, None)?;
    Ok(config)
}

/// Parses one file; `outer` is the Match block an `Include` of it sits
/// in. A block opened in this file ends with it: sshd restores the
/// including file's context after an include.
fn parse_file(
    root: &Path,
    path: &Path,
    depth: usize,
    config: &mut SshdConfig,
    outer: Option<usize>,
) -> Result<(), String> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(format!(
            "{}: includes nest deeper than {MAX_INCLUDE_DEPTH}",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut block = outer;
    for (n, line) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), n + 1);
        let Some((key, value)) = split_line(line).map_err(|e| format!("{at}: {e}"))? else {
            continue;
        };
        match key.as_str() {
            "match" => {
                let criteria: Vec<&str> = value.split_whitespace().collect();
                let all = criteria
                    .first()
                    .is_some_and(|c| c.eq_ignore_ascii_case("all"));
                if all && criteria.len() > 1 {
                    return Err(format!(
                        "{at}: `Match all` cannot be combined with other criteria"
                    ));
                }
                config.blocks.push(MatchBlock {
                    criteria: criteria.join(" "),
                    at,
                    all,
                    ..MatchBlock::default()
                });
                block = Some(config.blocks.len() - 1);
            }
            "include" => {
                for pattern in value.split_whitespace() {
                    let host = if pattern.starts_with('/') {
                        PathBuf::from(pattern)
                    } else {
                        Path::new("/etc/ssh").join(pattern)
                    };
                    let full = crate::under(root, &host);
                    let full = full
                        .to_str()
                        .ok_or_else(|| format!("{at}: path is not UTF-8"))?;
                    let mut matches: Vec<PathBuf> = glob::glob(full)
                        .map_err(|e| format!("{at}: bad Include pattern `{pattern}`: {e}"))?
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("{at}: {e}"))?;
                    matches.sort();
                    for file in matches {
                        parse_file(root, &file, depth + 1, config, block)?;
                    }
                }
            }
            _ => config.record(key, value, block),
        }
    }
    Ok(())
}

/// `sshd -T` output: one `keyword value` per line, defaults included.
fn parse_effective(text: &str) -> SshdConfig {
    let mut config = SshdConfig {
        source: "sshd -T".into(),
        ..SshdConfig::default()
    };
    for line in text.lines() {
        if let Some((k, v)) = line.trim().split_once(' ') {
            config.record(k.to_ascii_lowercase(), v.trim().to_owned(), None);
        }
    }
    config
}

fn load(ctx: &Context) -> Result<SshdConfig, String> {
    if ctx.live() {
        if let Some(text) = tool("sshd", &["-T"]) {
            if !text.trim().is_empty() {
                let mut config = parse_effective(&text);
                // Limitation: a file sshd accepts but this parser does not
                // leaves the Match blocks out (`sshd -T -C` per user and
                // address would list them, but needs each connection's
                // details).
                if let Ok(files) = parse_sshd_config(&ctx.root) {
                    config.blocks = files.blocks;
                }
                return Ok(config);
            }
        }
    }
    let main = ctx.path("/etc/ssh/sshd_config");
    if !main.exists() {
        return Err(format!("no SSH server config at {}", main.display()));
    }
    parse_sshd_config(&ctx.root)
}

const ROOT_WHY: &str =
    "root is the first account every SSH brute-forcer tries; log in as a user and escalate";
const PASSWORD_WHY: &str = "passwords can be guessed and phished; keys cannot be brute-forced";
const TRIES_WHY: &str = "fewer attempts per connection slow down password and key guessing";
const IDLE_WHY: &str = "forgotten sessions stay open and usable on an unattended terminal";
const ALLOW_WHY: &str = "an allow list keeps service and forgotten accounts from logging in at all";
const SSHD_FIX: &str = "in /etc/ssh/sshd_config.d/90-hardening.conf";

pub(super) fn checks(ctx: &Context) -> Vec<Check> {
    let config = match load(ctx) {
        Ok(config) => config,
        Err(reason) => {
            let ids: [(&'static str, &'static str, &'static str); 5] = [
                ("ssh.root_login", "SSH root login off", ROOT_WHY),
                ("ssh.password_auth", "SSH password login off", PASSWORD_WHY),
                (
                    "ssh.max_auth_tries",
                    "SSH MaxAuthTries 3 or less",
                    TRIES_WHY,
                ),
                ("ssh.idle_timeout", "SSH idle timeout", IDLE_WHY),
                ("ssh.allow_list", "SSH AllowUsers/AllowGroups", ALLOW_WHY),
            ];
            return ids
                .into_iter()
                .map(|(id, title, why)| {
                    verdict(
                        id,
                        title,
                        why,
                        Status::Unknown,
                        reason.clone(),
                        "make the SSH config readable, then run doctor again",
                    )
                })
                .collect();
        }
    };
    let src = &config.source;
    vec![
        root_login(&config, src),
        password_auth(&config, src),
        max_auth_tries(&config, src),
        idle_timeout(&config, src),
        allow_list(&config),
    ]
}

/// A check of the global value, then of each conditional Match block:
/// a block that `weakens` the global value turns a pass into a warning
/// (a failure stays a failure) and is named in the detail.
fn with_blocks(
    config: &SshdConfig,
    mut status: Status,
    mut detail: String,
    weakens: impl Fn(&MatchBlock) -> Option<String>,
) -> (Status, String) {
    for block in config.conditional() {
        if let Some(what) = weakens(block) {
            if status == Status::Pass {
                status = Status::Warn;
            }
            detail.push_str(&format!("; {} sets {what}", block.place()));
        }
    }
    (status, detail)
}

/// PermitRootLogin values from safest to weakest.
fn root_login_rank(value: &str) -> u8 {
    match value {
        "no" => 0,
        "forced-commands-only" => 1,
        "prohibit-password" | "without-password" => 2,
        _ => 3,
    }
}

fn root_login(config: &SshdConfig, src: &str) -> Check {
    // OpenSSH's default is prohibit-password.
    let value = config.get("permitrootlogin").unwrap_or("prohibit-password");
    let status = match root_login_rank(value) {
        0 => Status::Pass,
        1 | 2 => Status::Warn,
        _ => Status::Fail,
    };
    let (status, detail) = with_blocks(
        config,
        status,
        format!("PermitRootLogin {value} ({src})"),
        |b| {
            let v = b.get("permitrootlogin")?;
            (root_login_rank(v) > root_login_rank(value)).then(|| format!("PermitRootLogin {v}"))
        },
    );
    verdict(
        "ssh.root_login",
        "SSH root login off",
        ROOT_WHY,
        status,
        detail,
        format!(
            "PermitRootLogin no {SSHD_FIX} and in every Match block, then systemctl reload ssh"
        ),
    )
}

/// Whether connections with these settings can log in with a password:
/// PasswordAuthentication, or keyboard-interactive through PAM, which
/// asks for the same password (ChallengeResponseAuthentication is its
/// old name; UsePAM is global only).
fn password_login(config: &SshdConfig, block: Option<&MatchBlock>) -> (bool, bool) {
    let get = |key| match block {
        Some(b) => config.get_in(b, key),
        None => config.get(key),
    };
    let password = get("passwordauthentication").unwrap_or("yes") != "no";
    let kbd = get("kbdinteractiveauthentication")
        .or_else(|| get("challengeresponseauthentication"))
        .unwrap_or("yes")
        != "no";
    let pam = config.get("usepam").unwrap_or("no") == "yes";
    (password, kbd && pam)
}

fn password_auth(config: &SshdConfig, src: &str) -> Check {
    let value = config.get("passwordauthentication").unwrap_or("yes");
    let (password, kbd_pam) = password_login(config, None);
    let mut status = if password { Status::Fail } else { Status::Pass };
    let mut detail = format!("PasswordAuthentication {value} ({src})");
    if kbd_pam {
        status = Status::Fail;
        let kbd = config
            .get("kbdinteractiveauthentication")
            .or_else(|| config.get("challengeresponseauthentication"))
            .unwrap_or("yes");
        detail.push_str(&format!(
            "; KbdInteractiveAuthentication {kbd} with UsePAM yes still asks for passwords"
        ));
    }
    let (status, detail) = with_blocks(config, status, detail, |b| {
        let (p, k) = password_login(config, Some(b));
        if p && !password {
            Some("PasswordAuthentication yes".to_owned())
        } else if k && !kbd_pam {
            Some("KbdInteractiveAuthentication yes (with UsePAM yes)".to_owned())
        } else {
            None
        }
    });
    verdict("ssh.password_auth", "SSH password login off", PASSWORD_WHY, status, detail, format!("PasswordAuthentication no (and KbdInteractiveAuthentication no) {SSHD_FIX} and in every Match block, after installing your key"))
}

fn max_auth_tries(config: &SshdConfig, src: &str) -> Check {
    let raw = config.get("maxauthtries").unwrap_or("6");
    let (status, detail) = match raw.parse::<u32>() {
        Ok(n) => with_blocks(
            config,
            if n <= 3 { Status::Pass } else { Status::Warn },
            format!("MaxAuthTries {n}"),
            |b| {
                let v = b.get("maxauthtries")?;
                match v.parse::<u32>() {
                    Ok(m) if m <= n || m <= 3 => None,
                    Ok(m) => Some(format!("MaxAuthTries {m}")),
                    Err(_) => Some(format!("MaxAuthTries `{v}`, not a number")),
                }
            },
        ),
        Err(_) => (
            Status::Unknown,
            format!("MaxAuthTries `{raw}` is not a number ({src})"),
        ),
    };
    verdict(
        "ssh.max_auth_tries",
        "SSH MaxAuthTries 3 or less",
        TRIES_WHY,
        status,
        detail,
        format!("MaxAuthTries 3 {SSHD_FIX}"),
    )
}

/// Whether idle sessions end within an hour: `Some(true)` yes,
/// `Some(false)` no, `None` values not understood.
fn idle_ends(interval: &str, count: &str, channel: Option<&str>) -> Option<bool> {
    if channel.is_some_and(|c| c != "none") {
        return Some(true);
    }
    let i = parse_seconds(interval)?;
    let c = count.parse::<u64>().ok()?;
    Some(i > 0 && c > 0 && i * c <= 3600)
}

fn idle_timeout(config: &SshdConfig, src: &str) -> Check {
    let interval = config.get("clientaliveinterval").unwrap_or("0");
    let count = config.get("clientalivecountmax").unwrap_or("3");
    let channel = config.get("channeltimeout");
    let status = match idle_ends(interval, count, channel) {
        Some(true) => Status::Pass,
        Some(false) => Status::Warn,
        None => Status::Unknown,
    };
    let detail = match (status, channel.filter(|c| *c != "none")) {
        (Status::Pass, Some(c)) if parse_seconds(interval) == Some(0) => format!("ChannelTimeout {c}"),
        (Status::Pass, _) => format!("ClientAliveInterval {interval}, ClientAliveCountMax {count}"),
        (Status::Warn, _) => format!("ClientAliveInterval {interval}, ClientAliveCountMax {count}: no idle timeout of an hour or less"),
        _ => format!("ClientAliveInterval `{interval}` / ClientAliveCountMax `{count}` not understood ({src})"),
    };
    let (status, detail) = if status == Status::Pass {
        with_blocks(config, status, detail, |b| {
            let i = config.get_in(b, "clientaliveinterval").unwrap_or("0");
            let c = config.get_in(b, "clientalivecountmax").unwrap_or("3");
            let ch = config.get_in(b, "channeltimeout");
            let touched = [
                "clientaliveinterval",
                "clientalivecountmax",
                "channeltimeout",
            ]
            .iter()
            .any(|k| b.get(k).is_some());
            (touched && idle_ends(i, c, ch) != Some(true))
                .then(|| format!("ClientAliveInterval {i}, ClientAliveCountMax {c}"))
        })
    } else {
        (status, detail)
    };
    verdict(
        "ssh.idle_timeout",
        "SSH idle timeout",
        IDLE_WHY,
        status,
        detail,
        format!("ClientAliveInterval 300 and ClientAliveCountMax 2 {SSHD_FIX}"),
    )
}

fn allow_list(config: &SshdConfig) -> Check {
    let (users, groups) = config.allow_lists();
    let (status, detail) = if users.is_empty() && groups.is_empty() {
        (
            Status::Warn,
            "neither AllowUsers nor AllowGroups is set for every connection".to_owned(),
        )
    } else {
        let mut parts = Vec::new();
        if !users.is_empty() {
            parts.push(format!("AllowUsers {}", users.join(" ")));
        }
        if !groups.is_empty() {
            parts.push(format!("AllowGroups {}", groups.join(" ")));
        }
        (Status::Pass, parts.join("; "))
    };
    // A block's list replaces the global one for its connections; it
    // weakens it when it lets in a name the global list does not.
    let (status, detail) = with_blocks(config, status, detail, |b| {
        let wider = |mine: &[String], global: &[String]| {
            !mine.is_empty() && mine.iter().any(|n| !global.contains(n))
        };
        match (wider(&b.allow_users, users), wider(&b.allow_groups, groups)) {
            (true, _) => Some(format!("AllowUsers {}", b.allow_users.join(" "))),
            (_, true) => Some(format!("AllowGroups {}", b.allow_groups.join(" "))),
            _ => None,
        }
    });
    verdict(
        "ssh.allow_list",
        "SSH AllowUsers/AllowGroups",
        ALLOW_WHY,
        status,
        detail,
        format!("AllowGroups sshusers {SSHD_FIX}, and add the admins to that group"),
    )
}

/// sshd time values: `300`, `5m`, `1h30m`.
fn parse_seconds(text: &str) -> Option<u64> {
    if let Ok(n) = text.parse() {
        return Some(n);
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return None,
        };
        total += number.parse::<u64>().ok()? * unit;
        number.clear();
    }
    if !number.is_empty() {
        total += number.parse::<u64>().ok()?;
    }
    Some(total)
}
