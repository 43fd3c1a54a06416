//! The SSH server's effective settings: `sshd -T` on this host when it
//! works, else `<root>/etc/ssh/sshd_config` and its `Include`s (globs,
//! relative to /etc/ssh), with sshd's rule that the first value of a
//! keyword wins. Settings inside `Match` blocks apply to some
//! connections only; they are kept apart so a block that weakens a
//! setting is reported.

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
    /// `(keyword, value, where)` set inside `Match` blocks.
    pub conditional: Vec<(String, String, String)>,
    /// AllowUsers/AllowGroups accumulate over lines.
    pub allow_users: Vec<String>,
    pub allow_groups: Vec<String>,
    /// Where the settings came from.
    pub source: String,
}

impl SshdConfig {
    fn get(&self, key: &str) -> Option<&str> {
        self.global.get(key).map(String::as_str)
    }

    /// Values for `key` inside Match blocks, with their place.
    fn in_match<'a>(&'a self, key: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.conditional
            .iter()
            .filter(move |(k, _, _)| k == key)
            .map(|(_, v, at)| (v.as_str(), at.as_str()))
    }

    fn record(&mut self, key: String, value: String, in_match: Option<String>) {
        match key.as_str() {
            "allowusers" => self
                .allow_users
                .extend(value.split_whitespace().map(str::to_owned)),
            "allowgroups" => self
                .allow_groups
                .extend(value.split_whitespace().map(str::to_owned)),
            _ => match in_match {
                Some(at) => self.conditional.push((key, value, at)),
                None => {
                    self.global.entry(key).or_insert(value);
                }
            },
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
    parse_file(root, &main, 0, &mut config)?;
    Ok(config)
}

fn parse_file(
    root: &Path,
    path: &Path,
    depth: usize,
    config: &mut SshdConfig,
) -> Result<(), String> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(format!(
            "{}: includes nest deeper than {MAX_INCLUDE_DEPTH}",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // A Match block runs to the next Match or the end of the file.
    let mut in_match: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), n + 1);
        let Some((key, value)) = split_line(line).map_err(|e| format!("{at}: {e}"))? else {
            continue;
        };
        match key.as_str() {
            "match" => {
                in_match =
                    (!value.eq_ignore_ascii_case("all")).then(|| format!("{at} (Match {value})"));
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
                        if in_match.is_some() {
                            // Included settings inside a Match block are
                            // conditional too.
                            let mut inner = SshdConfig::default();
                            parse_file(root, &file, depth + 1, &mut inner)?;
                            for (k, v) in inner.global {
                                config.record(k, v, in_match.clone());
                            }
                            config.conditional.extend(inner.conditional);
                        } else {
                            parse_file(root, &file, depth + 1, config)?;
                        }
                    }
                }
            }
            _ => config.record(key, value, in_match.clone()),
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
                return Ok(parse_effective(&text));
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
    let mut out = Vec::new();

    // PermitRootLogin: OpenSSH's default is prohibit-password.
    let value = config.get("permitrootlogin").unwrap_or("prohibit-password");
    let mut status = match value {
        "no" => Status::Pass,
        "prohibit-password" | "without-password" | "forced-commands-only" => Status::Warn,
        _ => Status::Fail,
    };
    let mut detail = format!("PermitRootLogin {value} ({src})");
    for (v, at) in config.in_match("permitrootlogin") {
        if v != "no" {
            status = Status::Fail;
            detail.push_str(&format!("; {at} sets {v}"));
        }
    }
    out.push(verdict(
        "ssh.root_login",
        "SSH root login off",
        ROOT_WHY,
        status,
        detail,
        format!("PermitRootLogin no {SSHD_FIX}, then systemctl reload ssh"),
    ));

    let value = config.get("passwordauthentication").unwrap_or("yes");
    let mut status = if value == "no" {
        Status::Pass
    } else {
        Status::Fail
    };
    let mut detail = format!("PasswordAuthentication {value} ({src})");
    for (v, at) in config.in_match("passwordauthentication") {
        if v != "no" {
            status = Status::Fail;
            detail.push_str(&format!("; {at} sets {v}"));
        }
    }
    // With PAM, keyboard-interactive asks for the same password: both
    // must be off. (ChallengeResponseAuthentication is its old name.)
    let kbd = config
        .get("kbdinteractiveauthentication")
        .or_else(|| config.get("challengeresponseauthentication"))
        .unwrap_or("yes");
    if kbd != "no" && config.get("usepam").unwrap_or("no") == "yes" {
        status = Status::Fail;
        detail.push_str(&format!(
            "; KbdInteractiveAuthentication {kbd} with UsePAM yes still asks for passwords"
        ));
    }
    out.push(verdict("ssh.password_auth", "SSH password login off", PASSWORD_WHY, status, detail, format!("PasswordAuthentication no (and KbdInteractiveAuthentication no) {SSHD_FIX}, after installing your key")));

    let raw = config.get("maxauthtries").unwrap_or("6");
    let (status, detail) = match raw.parse::<u32>() {
        Ok(n) if n <= 3 => (Status::Pass, format!("MaxAuthTries {n}")),
        Ok(n) => (Status::Warn, format!("MaxAuthTries {n}")),
        Err(_) => (
            Status::Unknown,
            format!("MaxAuthTries `{raw}` is not a number ({src})"),
        ),
    };
    out.push(verdict(
        "ssh.max_auth_tries",
        "SSH MaxAuthTries 3 or less",
        TRIES_WHY,
        status,
        detail,
        format!("MaxAuthTries 3 {SSHD_FIX}"),
    ));

    let interval = config.get("clientaliveinterval").unwrap_or("0");
    let count = config.get("clientalivecountmax").unwrap_or("3");
    let channel = config.get("channeltimeout").filter(|v| *v != "none");
    let (status, detail) = match (parse_seconds(interval), count.parse::<u64>()) {
        (Some(i), Ok(c)) if i > 0 && c > 0 && i * c <= 3600 => {
            (Status::Pass, format!("ClientAliveInterval {interval}, ClientAliveCountMax {count}"))
        }
        _ if channel.is_some() => (Status::Pass, format!("ChannelTimeout {}", channel.unwrap_or(""))),
        (Some(_), Ok(_)) => (Status::Warn, format!("ClientAliveInterval {interval}, ClientAliveCountMax {count}: no idle timeout of an hour or less")),
        _ => (Status::Unknown, format!("ClientAliveInterval `{interval}` / ClientAliveCountMax `{count}` not understood ({src})")),
    };
    out.push(verdict(
        "ssh.idle_timeout",
        "SSH idle timeout",
        IDLE_WHY,
        status,
        detail,
        format!("ClientAliveInterval 300 and ClientAliveCountMax 2 {SSHD_FIX}"),
    ));

    let (status, detail) = if config.allow_users.is_empty() && config.allow_groups.is_empty() {
        (
            Status::Warn,
            "neither AllowUsers nor AllowGroups is set".to_owned(),
        )
    } else {
        let mut parts = Vec::new();
        if !config.allow_users.is_empty() {
            parts.push(format!("AllowUsers {}", config.allow_users.join(" ")));
        }
        if !config.allow_groups.is_empty() {
            parts.push(format!("AllowGroups {}", config.allow_groups.join(" ")));
        }
        (Status::Pass, parts.join("; "))
    };
    out.push(verdict(
        "ssh.allow_list",
        "SSH AllowUsers/AllowGroups",
        ALLOW_WHY,
        status,
        detail,
        format!("AllowGroups sshusers {SSHD_FIX}, and add the admins to that group"),
    ));
    out
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
