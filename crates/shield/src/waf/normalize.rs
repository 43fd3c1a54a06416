//! Turns one raw inspection target into the forms the detectors match on.
//!
//! Decoding runs once per target and every rule shares the result: URL
//! escapes (`%XX`, `%uXXXX`), `\uXXXX` escapes, HTML entities and
//! overlong UTF-8 are undone in rounds until nothing changes. What decoding
//! had to undo is recorded as [`Flags`], because some encodings (double
//! URL encoding, overlong UTF-8, NUL) are anomalies in themselves. This
//! module knows nothing about rules or scores.

use std::borrow::Cow;

/// How many decoding rounds run before the rest is neutralised.
const MAX_ROUNDS: usize = 4;

/// What the normaliser had to undo or repair, as a bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    /// URL escapes were still present after the expected decoding.
    pub const MULTI_URL_ENCODED: Flags = Flags(1);
    /// An overlong UTF-8 sequence was decoded to its ASCII meaning.
    pub const OVERLONG_UTF8: Flags = Flags(1 << 1);
    /// Bytes that are not UTF-8 were replaced by U+FFFD.
    pub const INVALID_UTF8: Flags = Flags(1 << 2);
    /// The value holds a NUL character.
    pub const NUL: Flags = Flags(1 << 3);
    /// `%uXXXX` (IIS-style) escapes were decoded.
    pub const PERCENT_U: Flags = Flags(1 << 4);
    /// `\uXXXX` escapes were decoded.
    pub const BACKSLASH_U: Flags = Flags(1 << 5);
    /// HTML entities were decoded.
    pub const HTML_ENTITY: Flags = Flags(1 << 6);
    /// Encoding layers remained after the round limit and were neutralised.
    pub const EXCESSIVE_ENCODING: Flags = Flags(1 << 7);

    /// Returns true if and only if every bit of `other` is set in `self`.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// Where a raw value came from, which decides what decoding is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A query or urlencoded-form value, still percent-encoded: one URL
    /// decoding with `+` as a space is expected, a second is an anomaly.
    Form,
    /// A path or cookie, still percent-encoded; `+` stays a plus.
    Url,
    /// Already decoded by its container (a JSON string, a multipart field,
    /// a header): further URL escapes are decoded but not an anomaly.
    Decoded,
}

/// One target after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The fully decoded value, valid UTF-8.
    pub text: String,
    /// `text` lower-cased, for case-insensitive rules.
    pub lower: String,
    /// What decoding had to undo.
    pub flags: Flags,
}

impl Normalized {
    /// Returns true if and only if the value cannot match any rule: it is
    /// empty or one token of letters, digits, `_` and `-`, and decoding
    /// found nothing to undo.
    pub fn is_plain(&self) -> bool {
        self.flags == Flags::default()
            && self
                .text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    }
}

/// Decodes `raw` until stable and returns the normalised forms.
///
/// The result is idempotent: normalising `text` again as
/// [`Source::Decoded`] yields the same `text`.
pub fn normalize(raw: &[u8], source: Source) -> Normalized {
    let mut flags = Flags::default();

    // The container's own decoding: expected, so never an anomaly.
    let first: Cow<[u8]> = match source {
        Source::Form => url_decode(raw, true, &mut flags),
        Source::Url => url_decode(raw, false, &mut flags),
        Source::Decoded => Cow::Borrowed(raw),
    };
    let mut text = utf8_repair(&first, &mut flags).into_owned();

    let mut stable = false;
    for _ in 0..MAX_ROUNDS {
        let next = decode_round(&text, source != Source::Decoded, &mut flags);
        match next {
            Some(decoded) => text = decoded,
            None => {
                stable = true;
                break;
            }
        }
    }
    if !stable && decode_round(&text, false, &mut Flags::default()).is_some() {
        flags.insert(Flags::EXCESSIVE_ENCODING);
        text = neutralise(&text);
    }

    if text.contains('\0') {
        flags.insert(Flags::NUL);
    }
    let lower = text.to_lowercase();
    Normalized { text, lower, flags }
}

/// One round of every decoding; `None` if and only if nothing changed.
/// `url_is_anomaly` says whether percent escapes found now are flagged.
fn decode_round(text: &str, url_is_anomaly: bool, flags: &mut Flags) -> Option<String> {
    let mut changed = false;
    let mut current = Cow::Borrowed(text);

    if current.contains('%') {
        let mut round_flags = Flags::default();
        let bytes = url_decode(current.as_bytes(), false, &mut round_flags);
        if let Cow::Owned(bytes) = bytes {
            // A value that is itself URL-encoded was most likely
            // form-encoded, where `+` is a space: decode it that way.
            let bytes = match url_decode(current.as_bytes(), true, &mut Flags::default()) {
                Cow::Owned(with_plus) if with_plus != bytes => with_plus,
                _ => bytes,
            };
            let repaired = utf8_repair(&bytes, &mut round_flags).into_owned();
            if repaired != *current {
                changed = true;
                if url_is_anomaly {
                    round_flags.insert(Flags::MULTI_URL_ENCODED);
                }
                flags.insert(round_flags);
                current = Cow::Owned(repaired);
            }
        }
    }
    if current.contains("\\u") || current.contains("\\U") {
        if let Some(decoded) = backslash_u_decode(&current) {
            changed = true;
            flags.insert(Flags::BACKSLASH_U);
            current = Cow::Owned(decoded);
        }
    }
    if current.contains('&') {
        if let Some(decoded) = html_entity_decode(&current) {
            changed = true;
            flags.insert(Flags::HTML_ENTITY);
            current = Cow::Owned(decoded);
        }
    }
    changed.then(|| current.into_owned())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex4(bytes: &[u8]) -> Option<u32> {
    if bytes.len() < 4 {
        return None;
    }
    bytes[..4]
        .iter()
        .try_fold(0u32, |acc, &b| Some(acc * 16 + u32::from(hex_val(b)?)))
}

/// Decodes `%XX` and `%uXXXX`; a `%` that starts neither stays literal.
/// Returns `Borrowed` if and only if nothing was decoded.
pub fn url_decode<'a>(raw: &'a [u8], plus_is_space: bool, flags: &mut Flags) -> Cow<'a, [u8]> {
    if !(raw.contains(&b'%') || (plus_is_space && raw.contains(&b'+'))) {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            if let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex_val),
                raw.get(i + 2).copied().and_then(hex_val),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
            if matches!(raw.get(i + 1), Some(b'u' | b'U')) {
                if let Some(cp) = raw.get(i + 2..).and_then(hex4) {
                    let c = char::from_u32(cp).unwrap_or('\u{FFFD}');
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    flags.insert(Flags::PERCENT_U);
                    i += 6;
                    continue;
                }
            }
            out.push(b);
        } else if b == b'+' && plus_is_space {
            out.push(b' ');
        } else {
            out.push(b);
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// Makes `bytes` valid UTF-8. Overlong encodings of ASCII (the classic
/// `%c0%ae` dot) become that ASCII character and are flagged; any other
/// invalid sequence becomes U+FFFD and is flagged.
pub fn utf8_repair<'a>(bytes: &'a [u8], flags: &mut Flags) -> Cow<'a, str> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                let (c, used) = overlong_ascii(after).unwrap_or(('\u{FFFD}', 0));
                if used > 0 {
                    flags.insert(Flags::OVERLONG_UTF8);
                    out.push(c);
                    rest = &after[used..];
                } else {
                    flags.insert(Flags::INVALID_UTF8);
                    out.push('\u{FFFD}');
                    let skip = e.error_len().unwrap_or(after.len()).max(1);
                    rest = &after[skip.min(after.len())..];
                }
            }
        }
    }
    Cow::Owned(out)
}

/// Decodes a 2-, 3- or 4-byte overlong form of an ASCII character.
fn overlong_ascii(b: &[u8]) -> Option<(char, usize)> {
    let cont = |x: &u8| x & 0xC0 == 0x80;
    let (cp, used) = match b {
        [l @ (0xC0 | 0xC1), c, ..] if cont(c) => {
            (u32::from(l & 0x1F) << 6 | u32::from(c & 0x3F), 2)
        }
        [0xE0, c1, c2, ..] if cont(c1) && cont(c2) && *c1 < 0xA0 => {
            (u32::from(c1 & 0x3F) << 6 | u32::from(c2 & 0x3F), 3)
        }
        [0xF0, c1, c2, c3, ..] if cont(c1) && cont(c2) && cont(c3) && *c1 < 0x90 => (
            u32::from(c1 & 0x3F) << 12 | u32::from(c2 & 0x3F) << 6 | u32::from(c3 & 0x3F),
            4,
        ),
        _ => return None,
    };
    (cp < 0x80).then(|| (char::from(cp as u8), used))
}

/// Decodes `\uXXXX` escapes (including surrogate pairs); `None` if and
/// only if there were none.
pub fn backslash_u_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut last = 0;
    let mut changed = false;
    while i + 1 < b.len() {
        if b[i] == b'\\' && matches!(b[i + 1], b'u' | b'U') {
            if let Some(hi) = b.get(i + 2..).and_then(hex4) {
                let mut used = 6;
                let cp = if (0xD800..0xDC00).contains(&hi)
                    && b.get(i + 6) == Some(&b'\\')
                    && matches!(b.get(i + 7), Some(b'u' | b'U'))
                {
                    match b.get(i + 8..).and_then(hex4) {
                        Some(lo) if (0xDC00..0xE000).contains(&lo) => {
                            used = 12;
                            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                        }
                        _ => hi,
                    }
                } else {
                    hi
                };
                out.push_str(&s[last..i]);
                out.push(char::from_u32(cp).unwrap_or('\u{FFFD}'));
                i += used;
                last = i;
                changed = true;
                continue;
            }
        }
        i += 1;
    }
    if !changed {
        return None;
    }
    out.push_str(&s[last..]);
    Some(out)
}

/// The named entities attacks use to hide markup and script syntax.
const NAMED_ENTITIES: &[(&str, char)] = &[
    ("lt", '<'),
    ("gt", '>'),
    ("amp", '&'),
    ("quot", '"'),
    ("apos", '\''),
    ("nbsp", ' '),
    ("colon", ':'),
    ("lpar", '('),
    ("rpar", ')'),
    ("sol", '/'),
    ("bsol", '\\'),
    ("tab", '\t'),
    ("newline", '\n'),
    ("semi", ';'),
    ("equals", '='),
    ("grave", '`'),
    ("period", '.'),
    ("comma", ','),
    ("excl", '!'),
    ("num", '#'),
    ("percnt", '%'),
];

/// Decodes `&#NN;`, `&#xHH;` (the `;` optional, as browsers accept) and
/// the named entities above; `None` if and only if there were none.
pub fn html_entity_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut last = 0;
    let mut changed = false;
    while i < b.len() {
        if b[i] != b'&' {
            i += 1;
            continue;
        }
        if let Some((c, used)) = entity_at(&b[i + 1..]) {
            out.push_str(&s[last..i]);
            out.push(c);
            i += 1 + used;
            last = i;
            changed = true;
        } else {
            i += 1;
        }
    }
    if !changed {
        return None;
    }
    out.push_str(&s[last..]);
    Some(out)
}

/// Parses an entity body after `&`: the character and the bytes used.
fn entity_at(b: &[u8]) -> Option<(char, usize)> {
    if b.first() == Some(&b'#') {
        let (hex, start) = match b.get(1) {
            Some(b'x' | b'X') => (true, 2),
            _ => (false, 1),
        };
        let mut cp: u32 = 0;
        let mut j = start;
        while let Some(&d) = b.get(j) {
            let v = if hex {
                hex_val(d)
            } else {
                d.is_ascii_digit().then(|| d - b'0')
            };
            let Some(v) = v else { break };
            cp = cp
                .saturating_mul(if hex { 16 } else { 10 })
                .saturating_add(u32::from(v));
            j += 1;
            if j - start > 8 {
                return None;
            }
        }
        if j == start {
            return None;
        }
        if b.get(j) == Some(&b';') {
            j += 1;
        }
        return Some((char::from_u32(cp).unwrap_or('\u{FFFD}'), j));
    }
    let name_len = b
        .iter()
        .take(8)
        .take_while(|c| c.is_ascii_alphabetic())
        .count();
    if b.get(name_len) != Some(&b';') {
        return None;
    }
    let name = std::str::from_utf8(&b[..name_len])
        .ok()?
        .to_ascii_lowercase();
    NAMED_ENTITIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, c)| (c, name_len + 1))
}

/// Replaces the lead character of every remaining escape with U+FFFD, so
/// that the result no longer decodes. Used only past the round limit.
fn neutralise(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        let rest = &b[i + 1..];
        let starts_escape = match c {
            '%' => {
                url_decode(&b[i..(i + 6).min(b.len())], false, &mut Flags::default()).len()
                    < (6).min(b.len() - i)
            }
            '\\' => {
                matches!(rest.first(), Some(b'u' | b'U')) && rest.get(1..).and_then(hex4).is_some()
            }
            '&' => entity_at(rest).is_some(),
            _ => false,
        };
        out.push(if starts_escape { '\u{FFFD}' } else { c });
    }
    out
}

/// Folds SQL obfuscation: `/* ... */` comments become one space (the body
/// of a MySQL `/*! ... */` comment is kept, since MySQL runs it), and runs
/// of whitespace become one space. Input is expected lower-cased.
pub fn sql_fold(lower: &str) -> Cow<'_, str> {
    if !lower.contains("/*")
        && !lower.contains(|c: char| {
            (c.is_whitespace() && c != ' ') || matches!(c, '+' | '\u{a0}' | '\u{fffd}')
        })
        && !lower.contains("  ")
    {
        return Cow::Borrowed(lower);
    }
    let mut out = String::with_capacity(lower.len());
    let mut rest = lower;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let (body, tail) = match after.find("*/") {
            Some(end) => (&after[..end], &after[end + 2..]),
            None => (after, ""),
        };
        out.push(' ');
        if let Some(exec) = body.strip_prefix('!') {
            out.push_str(exec.trim_start_matches(|c: char| c.is_ascii_digit()));
            out.push(' ');
        }
        rest = tail;
    }
    out.push_str(rest);

    let mut folded = String::with_capacity(out.len());
    let mut space = false;
    for c in out.chars() {
        // `+` is a space once more URL decoding happens downstream; MySQL
        // reads 0xA0 (here U+00A0 or, undecodable, U+FFFD) as a space.
        if c.is_whitespace() || matches!(c, '+' | '\u{a0}' | '\u{fffd}') {
            if !space {
                folded.push(' ');
            }
            space = true;
        } else {
            folded.push(c);
            space = false;
        }
    }
    Cow::Owned(folded)
}

/// Normalises a path for matching: backslashes become `/`, repeated
/// slashes collapse and `./` segments go. `..` segments are kept, since
/// they are what traversal rules look for.
pub fn path_fold(text: &str) -> Cow<'_, str> {
    if !text.contains([
        '\\', '\u{ff0e}', '\u{ff0f}', '\u{ff3c}', '\u{2215}', '\u{2216}', '\u{2044}',
    ]) && !text.contains("//")
        && !text.contains("./")
    {
        return Cow::Borrowed(text);
    }
    // Best-fit mappings (Windows, some decoders) turn these look-alikes
    // into real dots and slashes.
    let replaced: String = text
        .chars()
        .map(|c| match c {
            '\\' | '\u{ff0f}' | '\u{ff3c}' | '\u{2215}' | '\u{2216}' | '\u{2044}' => '/',
            '\u{ff0e}' => '.',
            c => c,
        })
        .collect();
    let kept: Vec<&str> = replaced
        .split('/')
        .enumerate()
        .filter(|&(i, seg)| seg != "." && (i == 0 || !seg.is_empty()))
        .map(|(_, seg)| seg)
        .collect();
    let out = kept.join("/");
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(s: &str) -> Normalized {
        normalize(s.as_bytes(), Source::Form)
    }

    #[test]
    fn form_decoding_turns_plus_into_space_without_an_anomaly() {
        let n = form("a+b%20c");
        assert_eq!(n.text, "a b c");
        assert_eq!(n.flags, Flags::default());
    }

    #[test]
    fn url_source_keeps_plus() {
        assert_eq!(normalize(b"/a+b", Source::Url).text, "/a+b");
    }

    #[test]
    fn double_url_encoding_is_decoded_and_flagged() {
        let n = form("%2527%2520or%25201%253D1");
        assert_eq!(n.text, "' or 1=1");
        assert!(n.flags.contains(Flags::MULTI_URL_ENCODED));
    }

    #[test]
    fn percent_escapes_in_decoded_sources_are_not_an_anomaly() {
        let n = normalize(b"https://x.test/a%20b", Source::Decoded);
        assert_eq!(n.text, "https://x.test/a b");
        assert!(!n.flags.contains(Flags::MULTI_URL_ENCODED));
    }

    #[test]
    fn plus_is_a_space_in_values_that_are_themselves_url_encoded() {
        assert_eq!(normalize(b"1+AND+8%3D3", Source::Decoded).text, "1 AND 8=3");
        assert_eq!(normalize(b"c++ is fun", Source::Decoded).text, "c++ is fun");
        assert_eq!(form("1%2B1").text, "1+1");
    }

    #[test]
    fn percent_u_escapes_are_decoded_and_flagged() {
        let n = form("%u003cscript%u003e");
        assert_eq!(n.text, "<script>");
        assert!(n.flags.contains(Flags::PERCENT_U));
    }

    #[test]
    fn backslash_u_escapes_and_surrogate_pairs_are_decoded() {
        assert_eq!(
            backslash_u_decode("\\u003cb\\u003e").as_deref(),
            Some("<b>")
        );
        assert_eq!(backslash_u_decode("\\ud83d\\ude00").as_deref(), Some("😀"));
        assert_eq!(backslash_u_decode("C:\\users"), None);
    }

    #[test]
    fn html_entities_decimal_hex_and_named_are_decoded() {
        assert_eq!(
            html_entity_decode("&lt;a href=&#106;avascript&colon;&#x61;lert(1)&gt;").as_deref(),
            Some("<a href=javascript:alert(1)>")
        );
        assert_eq!(html_entity_decode("Tom & Jerry &copy"), None);
    }

    #[test]
    fn overlong_utf8_dots_become_dots_and_are_flagged() {
        let n = form("%c0%ae%c0%ae%c0%afetc%c0%afpasswd");
        assert_eq!(n.text, "../etc/passwd");
        assert!(n.flags.contains(Flags::OVERLONG_UTF8));
        let n = form("%e0%80%ae%e0%80%ae/x");
        assert_eq!(n.text, "../x");
    }

    #[test]
    fn invalid_utf8_is_replaced_and_flagged() {
        let n = form("caf%e9");
        assert_eq!(n.text, "caf\u{FFFD}");
        assert!(n.flags.contains(Flags::INVALID_UTF8));
        assert!(!n.flags.contains(Flags::OVERLONG_UTF8));
    }

    #[test]
    fn nul_is_flagged() {
        assert!(form("a%00b").flags.contains(Flags::NUL));
    }

    #[test]
    fn case_folding_lowers_unicode_too() {
        assert_eq!(form("UnIoN SÉLECT").lower, "union sélect");
    }

    #[test]
    fn layers_past_the_round_limit_are_neutralised() {
        let mut s = String::from("<");
        for _ in 0..8 {
            s = s.replace('%', "%25").replace('<', "%3C");
        }
        let n = form(&s);
        assert!(n.flags.contains(Flags::EXCESSIVE_ENCODING));
        assert_eq!(normalize(n.text.as_bytes(), Source::Decoded).text, n.text);
    }

    #[test]
    fn sql_fold_removes_comments_and_keeps_mysql_executable_ones() {
        assert_eq!(sql_fold("union/**/select"), "union select");
        assert_eq!(sql_fold("1/*!50000union*/ \t select"), "1 union select");
        assert_eq!(sql_fold("a\n\nb"), "a b");
        assert_eq!(sql_fold("1\u{a0}union+select"), "1 union select");
        assert_eq!(sql_fold("plain text"), "plain text");
    }

    #[test]
    fn path_fold_handles_backslashes_double_slashes_and_dot_segments() {
        assert_eq!(path_fold("/a//b/./c"), "/a/b/c");
        assert_eq!(
            path_fold("..\\..\\windows\\win.ini"),
            "../../windows/win.ini"
        );
        assert_eq!(path_fold("/a/../b"), "/a/../b");
        assert_eq!(path_fold("././.htaccess"), ".htaccess");
        assert_eq!(path_fold("\u{ff0e}\u{ff0e}\u{2215}etc"), "../etc");
    }

    #[test]
    fn plain_values_are_recognised() {
        assert!(form("hello_world-42").is_plain());
        assert!(!form("hello world").is_plain());
        assert!(!form("a%2527").is_plain());
    }
}
