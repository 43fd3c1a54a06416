//! Masking of secret values in SpinForge's own log lines. Every value this
//! process writes or decrypts is registered here; [`RedactingWriter`]
//! replaces each registered value with `[redacted]` in whatever passes
//! through it (the `tracing` output of `serve` goes through one).
//!
//! Values shorter than [`MIN_MASKED_LEN`] bytes are not masked: replacing
//! every `on` or `1` would make logs unreadable.
// Limitation: values under 4 bytes stay visible if printed (a per-secret
// "mask" flag would let operators opt in).

use aho_corasick::{AhoCorasick, MatchKind};
use std::borrow::Cow;
use std::io::Write;
use std::sync::{LazyLock, PoisonError, RwLock};
use zeroize::Zeroizing;

/// The replacement text.
pub const REDACTED: &str = "[redacted]";
/// Shortest value that is masked.
pub const MIN_MASKED_LEN: usize = 4;

/// The registered values and a matcher over all of them, rebuilt lazily
/// after a registration (a start-up check registers hundreds at once).
#[derive(Default)]
struct Masks {
    values: Vec<Zeroizing<String>>,
    matcher: Option<AhoCorasick>,
}

static MASKS: LazyLock<RwLock<Masks>> = LazyLock::new(|| RwLock::new(Masks::default()));

/// Adds `value` to the values masked in this process's log lines, as
/// written and as it looks escaped inside a JSON string or a `{:?}` of a
/// string (the JSON log and debug-formatted fields print those forms).
pub fn register(value: &str) {
    if value.len() < MIN_MASKED_LEN {
        return;
    }
    let mut forms = vec![Zeroizing::new(value.to_owned())];
    let json = Zeroizing::new(serde_json::to_string(value).unwrap_or_default());
    let debug = Zeroizing::new(format!("{value:?}"));
    for quoted in [&json, &debug] {
        if let Some(inner) = quoted.get(1..quoted.len().saturating_sub(1)) {
            if inner != value && !inner.is_empty() {
                forms.push(Zeroizing::new(inner.to_owned()));
            }
        }
    }
    let mut masks = MASKS.write().unwrap_or_else(PoisonError::into_inner);
    for form in forms {
        if !masks.values.iter().any(|m| m.as_str() == form.as_str()) {
            masks.values.push(form);
            masks.matcher = None;
        }
    }
}

/// `text` with every registered value replaced by `[redacted]`. One pass
/// over the text whatever the number of values; where two overlap, the
/// longest is masked whole.
pub fn redact(text: &str) -> Cow<'_, str> {
    {
        let masks = MASKS.read().unwrap_or_else(PoisonError::into_inner);
        if masks.values.is_empty() {
            return Cow::Borrowed(text);
        }
        if let Some(matcher) = &masks.matcher {
            return replace(matcher, text);
        }
    }
    let mut masks = MASKS.write().unwrap_or_else(PoisonError::into_inner);
    if masks.matcher.is_none() {
        let built = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(masks.values.iter().map(|v| v.as_bytes()));
        match built {
            Ok(matcher) => masks.matcher = Some(matcher),
            // Fail closed: a line that cannot be checked is not shown.
            Err(_) => return Cow::Borrowed(REDACTED),
        }
    }
    match &masks.matcher {
        Some(matcher) => replace(matcher, text),
        None => Cow::Borrowed(REDACTED),
    }
}

fn replace<'a>(matcher: &AhoCorasick, text: &'a str) -> Cow<'a, str> {
    if !matcher.is_match(text) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    matcher.replace_all_with(text, &mut out, |_, _, out| {
        out.push_str(REDACTED);
        true
    });
    Cow::Owned(out)
}

/// Passes writes to `W` with registered values masked. `tracing`'s
/// formatter hands over one whole event per write, so a value is never
/// split across two writes there.
pub struct RedactingWriter<W>(pub W);

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => match redact(text) {
                Cow::Borrowed(_) => self.0.write_all(buf)?,
                Cow::Owned(masked) => self.0.write_all(masked.as_bytes())?,
            },
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_values_are_masked_and_short_ones_are_not() {
        register("s3cr3t-token-for-redact-test");
        register("ab");
        let line = "token=s3cr3t-token-for-redact-test ab";
        assert_eq!(redact(line), "token=[redacted] ab");
        let mut out = Vec::new();
        RedactingWriter(&mut out)
            .write_all(line.as_bytes())
            .expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "token=[redacted] ab"
        );
    }

    #[test]
    fn escaped_forms_of_a_value_are_masked_too() {
        let value = "pa\"ss\\wo\nrd-escaped";
        register(value);
        let json = serde_json::to_string(value).expect("json");
        assert_eq!(redact(&format!("v={json}")), "v=\"[redacted]\"");
        assert_eq!(redact(&format!("v={value:?}")), "v=\"[redacted]\"");
        assert_eq!(redact(&format!("v={value}")), "v=[redacted]");
    }

    #[test]
    fn a_value_inside_a_longer_one_leaves_no_tail() {
        register("qwertzui");
        register("qwertzui-long");
        assert_eq!(
            redact("x qwertzui-long y qwertzui z"),
            "x [redacted] y [redacted] z"
        );
    }
}
