//! Path traversal and local file inclusion: `..` segments (after the
//! normaliser undid encodings and overlong dots), sensitive system files
//! and stream wrappers.
//!
//! Context decides severity: a value that is a relative path climbing
//! out (`../..`, or starting with `../`) is an attack, while one `../`
//! inside prose (a markdown link to a sibling file) only adds a warning.

use regex::bytes::Regex;

use super::normalize::path_fold;
use super::rules::{compile, Hit};
use super::targets::Target;

pub struct Lfi {
    climb: Regex,
    one_up: Regex,
    strong_file: Regex,
    weak_file: Regex,
    weak_anywhere: Regex,
    wrapper: Regex,
}

/// Files whose mention in a parameter is never innocent.
/// `etc` and `passwd` may be joined by any odd separator (a broken
/// escape, a best-fit character, a literal `0x2f`), not only `/`.
const STRONG_FILES: &str = r"etc(?:[^\w\s]|0x[25][cf]){1,16}(?:passwd|shadow|master\.passwd|gshadow)\b|proc/(?:self|\d+)/(?:environ|cmdline|fd|maps|mem|status|cwd|root|exe)|\b(?:win|system)\.ini\b|\bboot\.ini\b|\.htpasswd\b|\bautoexec\.bat\b|windows/system32/|winnt/(?:win\.ini|system32)|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|\.ssh/authorized_keys|\.bash_history\b";

/// Files that are sensitive, but also named in ordinary talk.
const WEAK_FILES: &str = r"etc/[a-z][\w.-]*|(?:var|opt|usr|proc|sys|root|dev|boot|srv)/|(?:apache\d?|httpd|nginx|lampp|xampp|wamp)/logs?/|[a-z]:/(?:windows|winnt|program files|inetpub|xampp|wamp|apache)|\.htaccess\b|\.git/|\.svn/|\.env\b|\bweb\.config\b|\bwp-config\.php\b|\bphp\.ini\b|\bhttpd\.conf\b|\bnginx\.conf\b|usr/local/|\bdesktop\.ini\b|windows/|winnt/|inetpub/|\.aws/credentials|\bconfig\.php\b";

impl Lfi {
    pub fn new() -> Result<Lfi, regex::Error> {
        Ok(Lfi {
            climb: compile(
                r"(?:^|[^\w.])\.{2,}(?:/|$)[^\n]*?\.{2,}(?:/|$)|^\s*\.{2,}(?:/|$)|^[a-z]:/?\.\.(?:/|$)",
            )?,
            one_up: compile(r"(?:^|[^\w.])\.\.(?:/|$)")?,
            strong_file: compile(STRONG_FILES)?,
            weak_file: compile(&format!(
                r"^\s*(?:file:/*|[a-z]:/|/|(?:\.\./)+)?(?:{WEAK_FILES})|\.\./(?:{WEAK_FILES})"
            ))?,
            weak_anywhere: compile(WEAK_FILES)?,
            wrapper: compile(
                r"\b(?:php|zip|phar|expect|glob|compress\.zlib|compress\.bzip2|ogg|rar|ssh2(?:\.\w+)?|zlib)://|^\s*file:/|^\s*data:[^,]*;base64,|php://(?:filter|input|fd|memory|temp)",
            )?,
        })
    }

    /// Appends the traversal rules that match `t` at paranoia `pl`.
    pub fn check(&self, t: &Target, pl: u8, hits: &mut Vec<Hit>) {
        let lower = &t.value.lower;
        if !lower.contains(['.', '/', '\\', ':']) {
            return;
        }
        let folded = path_fold(lower);
        let whole = 0..t.value.text.len();

        if self.climb.is_match(folded.as_bytes()) {
            hits.push(Hit::new(4001, whole.clone()));
        } else if self.one_up.is_match(folded.as_bytes()) {
            hits.push(Hit::new(4004, whole.clone()));
        }
        if self.strong_file.is_match(folded.as_bytes())
            || self.weak_file.is_match(folded.as_bytes())
        {
            hits.push(Hit::new(4002, whole.clone()));
        } else if pl >= 2 && self.weak_anywhere.is_match(folded.as_bytes()) {
            hits.push(Hit::new(4005, whole.clone()));
        }
        if self.wrapper.is_match(lower.as_bytes()) {
            hits.push(Hit::new(4003, whole));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waf::normalize::{normalize, Source};
    use crate::waf::targets::Location;

    fn ids(raw: &str, pl: u8) -> Vec<u32> {
        let t = Target {
            location: Location::Query,
            name: "f".into(),
            value: normalize(raw.as_bytes(), Source::Form),
        };
        let mut hits = Vec::new();
        Lfi::new().expect("rules compile").check(&t, pl, &mut hits);
        hits.into_iter().map(|h| h.rule).collect()
    }

    #[test]
    fn encoded_and_backslash_traversal_is_found() {
        assert!(ids("..%2f..%2f..%2fetc%2fpasswd", 1).contains(&4001));
        assert!(ids("..\\..\\windows\\win.ini", 1).contains(&4001));
        assert!(ids("%252e%252e%252f%252e%252e%252fx", 1).contains(&4001));
    }

    #[test]
    fn overlong_utf8_dots_are_traversal() {
        assert!(ids("%c0%ae%c0%ae/%c0%ae%c0%ae/etc/hosts", 1).contains(&4001));
    }

    #[test]
    fn sensitive_files_and_wrappers_are_found() {
        assert!(ids("/etc/passwd", 1).contains(&4002));
        assert!(ids("php://filter/convert.base64-encode/resource=index.php", 1).contains(&4003));
        assert!(ids("/var/log/apache2/access.log", 1).contains(&4002));
    }

    #[test]
    fn one_relative_link_in_prose_is_only_a_warning() {
        let ids = ids("see [the docs](../docs/setup.md) for details", 1);
        assert_eq!(ids, vec![4004]);
    }

    #[test]
    fn talk_about_config_files_is_not_an_attack_at_level_one() {
        assert!(ids("edit your nginx.conf and the .env file, then restart", 1).is_empty());
        assert!(ids("edit your nginx.conf and the .env file, then restart", 2).contains(&4005));
    }
}
