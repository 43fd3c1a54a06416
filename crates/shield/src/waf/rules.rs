//! The rule catalogue: every rule's id, class, severity and paranoia
//! level, in one table, plus the helpers detectors share.
//!
//! Detectors decide whether a rule matches; this table decides what a
//! match is worth. Ids are grouped by class: 1xxx protocol, 2xxx SQL
//! injection, 3xxx XSS, 4xxx path traversal and file inclusion, 5xxx
//! command and code injection, 6xxx scanners, 7xxx server-side
//! template and expression-language injection.

use std::fmt;

/// What kind of attack a rule detects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Protocol,
    Sqli,
    Xss,
    Lfi,
    Cmdi,
    Scanner,
    Ssti,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Protocol => "protocol",
            Class::Sqli => "sqli",
            Class::Xss => "xss",
            Class::Lfi => "lfi",
            Class::Cmdi => "cmdi",
            Class::Scanner => "scanner",
            Class::Ssti => "ssti",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much a match adds to the request's anomaly score, as in the CRS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Notice,
    Warning,
    Error,
    Critical,
}

impl Severity {
    /// The anomaly score a match adds (CRS defaults: 2, 3, 4, 5).
    pub fn score(self) -> u32 {
        match self {
            Severity::Notice => 2,
            Severity::Warning => 3,
            Severity::Error => 4,
            Severity::Critical => 5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Notice => "notice",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

/// One rule of the catalogue.
#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: u32,
    pub class: Class,
    pub severity: Severity,
    /// The lowest paranoia level (1–4) at which the rule runs.
    pub paranoia: u8,
    pub description: &'static str,
}

const fn r(
    id: u32,
    class: Class,
    severity: Severity,
    paranoia: u8,
    description: &'static str,
) -> Rule {
    Rule {
        id,
        class,
        severity,
        paranoia,
        description,
    }
}

use Class::*;
use Severity::*;

/// Every rule the engine knows, sorted by id.
pub static RULES: &[Rule] = &[
    r(
        1001,
        Protocol,
        Critical,
        1,
        "request body does not parse as its declared type",
    ),
    r(
        1002,
        Protocol,
        Critical,
        1,
        "request declares a charset the WAF cannot read",
    ),
    r(1003, Protocol, Critical, 1, "overlong UTF-8 encoding"),
    r(1004, Protocol, Critical, 1, "NUL character in a value"),
    r(
        1005,
        Protocol,
        Warning,
        2,
        "value is URL-encoded more than once",
    ),
    r(1006, Protocol, Notice, 3, "value is not valid UTF-8"),
    r(
        1007,
        Protocol,
        Warning,
        1,
        "encoded ? or # in the path hides a query",
    ),
    r(
        1008,
        Protocol,
        Warning,
        1,
        "request target carries a #fragment",
    ),
    r(1009, Protocol, Warning, 1, "IIS-style %u encoding"),
    r(
        1010,
        Protocol,
        Critical,
        1,
        "encoding nested deeper than the decoding limit",
    ),
    r(
        1011,
        Protocol,
        Critical,
        1,
        "request body exceeds the inspection limit",
    ),
    r(
        2001,
        Sqli,
        Critical,
        1,
        "SQL injection found by libinjection fingerprint",
    ),
    r(2002, Sqli, Critical, 1, "UNION SELECT"),
    r(2003, Sqli, Critical, 1, "time-based blind SQL function"),
    r(
        2004,
        Sqli,
        Critical,
        1,
        "boolean tautology after a quote or number",
    ),
    r(2005, Sqli, Critical, 1, "stacked SQL statement"),
    r(
        2006,
        Sqli,
        Critical,
        1,
        "SQL schema probe, file access or error-based function",
    ),
    r(2007, Sqli, Warning, 2, "SQL comment after a quote"),
    r(2008, Sqli, Error, 2, "SQL keyword with operator characters"),
    r(
        2009,
        Sqli,
        Critical,
        1,
        "SQL subquery or ORDER BY column probe",
    ),
    r(
        3001,
        Xss,
        Critical,
        1,
        "XSS found by libinjection's HTML5 tokenizer",
    ),
    r(3002, Xss, Critical, 1, "script element"),
    r(
        3003,
        Xss,
        Critical,
        1,
        "event handler attribute in markup or after a quote",
    ),
    r(3004, Xss, Critical, 1, "script-running URI scheme"),
    r(
        3005,
        Xss,
        Critical,
        1,
        "element that loads or runs active content",
    ),
    r(
        3006,
        Xss,
        Critical,
        1,
        "DOM sink or script call after breaking out of a string",
    ),
    r(3007, Xss, Critical, 1, "client-side template expression"),
    r(3008, Xss, Warning, 2, "HTML tag"),
    r(4001, Lfi, Critical, 1, "directory traversal"),
    r(4002, Lfi, Critical, 1, "access to a sensitive system file"),
    r(4003, Lfi, Critical, 1, "stream wrapper or file URI"),
    r(4004, Lfi, Warning, 1, "one ../ inside a value"),
    r(4005, Lfi, Warning, 2, "mention of a sensitive path"),
    r(
        5001,
        Cmdi,
        Critical,
        1,
        "shell command after a command separator",
    ),
    r(
        5002,
        Cmdi,
        Critical,
        1,
        "shell command substitution or expansion",
    ),
    r(
        5003,
        Cmdi,
        Critical,
        1,
        "absolute path to a shell or system binary",
    ),
    r(5004, Cmdi, Critical, 1, "Shellshock function definition"),
    r(5005, Cmdi, Critical, 1, "value is a shell command line"),
    r(5006, Cmdi, Critical, 1, "PHP or server-side code execution"),
    r(5007, Cmdi, Critical, 1, "Windows command interpreter"),
    r(
        6001,
        Scanner,
        Critical,
        1,
        "User-Agent of a known attack scanner",
    ),
    r(
        7001,
        Ssti,
        Critical,
        1,
        "Jinja/Twig template expression probing or walking objects",
    ),
    r(7002, Ssti, Critical, 1, "ERB tag running Ruby code"),
    r(
        7003,
        Ssti,
        Critical,
        1,
        "Java expression language or FreeMarker/Velocity code",
    ),
    r(7004, Ssti, Critical, 1, "Log4j JNDI lookup"),
];

/// The catalogue entry for `id`.
///
/// Detectors only report ids from [`RULES`]; an unknown id is a bug in
/// this crate, never caused by input, and falls back to the first rule.
pub fn rule(id: u32) -> &'static Rule {
    match RULES.binary_search_by_key(&id, |r| r.id) {
        Ok(i) => &RULES[i],
        Err(_) => {
            debug_assert!(false, "unknown rule id {id}");
            &RULES[0]
        }
    }
}

/// Compiles a rule pattern for matching lower-cased bytes: ASCII
/// classes and word boundaries only, so the lazy DFA never has to fall
/// back to the slower engines on non-ASCII input.
pub fn compile(pattern: &str) -> Result<regex::bytes::Regex, regex::Error> {
    regex::bytes::RegexBuilder::new(pattern)
        .unicode(false)
        .build()
}

/// One rule match inside one target, before scoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub rule: u32,
    /// Byte range in the target's normalised text that matched (best
    /// effort: the whole value when the detector has no position).
    pub at: std::ops::Range<usize>,
    /// Extra explanation, e.g. a libinjection fingerprint.
    pub detail: Option<String>,
}

impl Hit {
    pub fn new(rule: u32, at: std::ops::Range<usize>) -> Hit {
        Hit {
            rule,
            at,
            detail: None,
        }
    }
}

/// Longest fragment an audit event or verdict carries, in characters.
pub const FRAGMENT_MAX: usize = 64;

/// The matched part of `text`, widened a little for context, capped at
/// [`FRAGMENT_MAX`] characters, with control characters shown as `?` and
/// tokens that look like keys or ids (see `looks_secret`) replaced by
/// `[redacted]`. A token is judged by all of it in `text`, not only by
/// its part in the widened window: a token cut by the widening shows none
/// of its characters.
pub fn redact_fragment(text: &str, at: &std::ops::Range<usize>) -> String {
    let start = floor_char(text, at.start.saturating_sub(8));
    let end = floor_char(text, (at.end + 8).min(text.len())).max(start);

    let mut out = String::new();
    let mut run = start..start;
    let flush = |run: &std::ops::Range<usize>, out: &mut String| {
        if run.is_empty() {
            return;
        }
        // The whole token the shown part belongs to (as far as it
        // matters: up to TOKEN_LOOK characters on each side).
        let start = text[..run.start]
            .char_indices()
            .rev()
            .take_while(|&(i, _)| in_token(text, i))
            .take(TOKEN_LOOK)
            .last()
            .map_or(run.start, |(i, _)| i);
        let end = text[run.end..]
            .char_indices()
            .take_while(|&(i, _)| in_token(text, run.end + i))
            .take(TOKEN_LOOK)
            .last()
            .map_or(run.end, |(i, c)| run.end + i + c.len_utf8());
        if looks_secret(&text[start..end]) {
            out.push_str("[redacted]");
        } else {
            out.push_str(&text[run.clone()]);
        }
    };
    for (i, c) in text[start..end].char_indices() {
        let i = start + i;
        if in_token(text, i) {
            if run.is_empty() {
                run = i..i;
            }
            run.end = i + c.len_utf8();
            continue;
        }
        flush(&run, &mut out);
        run = i..i;
        out.push(if c.is_control() { '?' } else { c });
    }
    flush(&run, &mut out);
    if out.chars().count() > FRAGMENT_MAX {
        out = out.chars().take(FRAGMENT_MAX - 1).collect();
        out.push('…');
    }
    out
}

/// Tokens of at least this many characters may be secrets.
const TOKEN_MIN: usize = 16;

/// How far past the shown part a token is followed.
const TOKEN_LOOK: usize = 64;

/// True iff `token` looks like a key or an id: 16 or more letters and
/// digits in a row, or 16 or more characters with a digit among them (a
/// UUID, a key with `-` or `_`). Names such as `information_schema` stay
/// readable: what the WAF matched must show.
fn looks_secret(token: &str) -> bool {
    let longest_plain = token
        .split(['-', '_'])
        .map(|part| part.chars().count())
        .max()
        .unwrap_or(0);
    longest_plain >= TOKEN_MIN
        || (token.chars().count() >= TOKEN_MIN && token.chars().any(|c| c.is_ascii_digit()))
}

/// True iff the character at byte `i` of `text` belongs to a token (key,
/// session id, UUID): a letter or digit, or a single `-` or `_` between
/// two of them. A `--` (an SQL comment) is not part of one.
fn in_token(text: &str, i: usize) -> bool {
    let Some(c) = text[i..].chars().next() else {
        return false;
    };
    if c.is_alphanumeric() {
        return true;
    }
    if c != '-' && c != '_' {
        return false;
    }
    let before = text[..i].chars().next_back();
    let after = text[i + c.len_utf8()..].chars().next();
    before.is_some_and(char::is_alphanumeric) && after.is_some_and(char::is_alphanumeric)
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_sorted_unique_and_levels_are_valid() {
        assert!(RULES.windows(2).all(|w| w[0].id < w[1].id));
        assert!(RULES.iter().all(|r| (1..=4).contains(&r.paranoia)));
        assert_eq!(rule(2001).class, Class::Sqli);
    }

    #[test]
    fn fragments_are_capped_and_redact_long_tokens() {
        let text = "x=' or 1=1 -- token=abcdefghijklmnopqrstuvwxyz0123\n";
        let f = redact_fragment(text, &(0..text.len()));
        assert!(f.contains("[redacted]"), "{f}");
        assert!(!f.contains("abcdefghijkl"));
        assert!(f.ends_with('?'));
        // A token the widening cuts shows none of its characters, on
        // either side of the match.
        let secret = "Zq7Xw2Lp9Rt4Vn8K";
        let text = format!("auth={secret}' OR 1=1--{secret}");
        let at = text.find('\'').expect("quote")..text.find("--").expect("comment") + 2;
        let f = redact_fragment(&text, &at);
        assert_eq!(f, "[redacted]' OR 1=1--[redacted]");
        // A UUID's groups are short, the UUID is not.
        let text = "q=550e8400-e29b-41d4-a716-446655440000' OR 1=1--";
        let at = text.find('\'').expect("quote")..text.len();
        assert_eq!(redact_fragment(text, &at), "[redacted]' OR 1=1--");
        // Names joined by `_` stay readable, as does what `--` separates.
        let text = "x' union select table_name from information_schema.tables--";
        let at = 0..text.len();
        assert!(redact_fragment(text, &at).contains("information_schema"));
        let text = "abcdefgh--ijklmnop";
        assert_eq!(redact_fragment(text, &(8..10)), text);
        // Short words around the match stay readable.
        let text = "name=bob' OR 1=1-- x";
        let f = redact_fragment(text, &(8..18));
        assert_eq!(f, "name=bob' OR 1=1-- x");
        let long = "<".repeat(500);
        assert_eq!(
            redact_fragment(&long, &(0..500)).chars().count(),
            FRAGMENT_MAX
        );
    }
}
