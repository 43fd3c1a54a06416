//! Masking of secret values in SpinForge's own log lines. Every value this
//! process writes or decrypts is registered here; [`RedactingWriter`]
//! replaces each registered value with `[redacted]` in whatever passes
//! through it (the `tracing` output of `serve` goes through one).
//!
//! Values shorter than [`MIN_MASKED_LEN`] bytes are not masked: replacing
//! every `on` or `1` would make logs unreadable.
// Limitation: values under 4 bytes stay visible if printed (a per-secret
// "mask" flag would let operators opt in).

use std::borrow::Cow;
use std::io::Write;
use std::sync::{LazyLock, PoisonError, RwLock};
use zeroize::Zeroizing;

/// The replacement text.
pub const REDACTED: &str = "[redacted]";
/// Shortest value that is masked.
pub const MIN_MASKED_LEN: usize = 4;

static MASKS: LazyLock<RwLock<Vec<Zeroizing<String>>>> = LazyLock::new(|| RwLock::new(Vec::new()));

/// Adds `value` to the values masked in this process's log lines.
pub fn register(value: &str) {
    if value.len() < MIN_MASKED_LEN {
        return;
    }
    let mut masks = MASKS.write().unwrap_or_else(PoisonError::into_inner);
    if !masks.iter().any(|m| m.as_str() == value) {
        masks.push(Zeroizing::new(value.to_owned()));
        // Longest first, so a value that contains another is masked whole.
        masks.sort_by_key(|m| std::cmp::Reverse(m.len()));
    }
}

/// `text` with every registered value replaced by `[redacted]`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let masks = MASKS.read().unwrap_or_else(PoisonError::into_inner);
    mask_with(text, masks.iter().map(|m| m.as_str()))
}

/// `text` with each of `values` (longest first is best) replaced.
pub fn mask_with<'a, 'b>(text: &'a str, values: impl Iterator<Item = &'b str>) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    for value in values {
        if value.len() >= MIN_MASKED_LEN && out.contains(value) {
            out = Cow::Owned(out.replace(value, REDACTED));
        }
    }
    out
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
    fn a_value_inside_a_longer_one_leaves_no_tail() {
        let values = ["abcdefgh-long", "abcdefgh"];
        assert_eq!(
            mask_with("x abcdefgh-long y abcdefgh", values.into_iter()),
            "x [redacted] y [redacted]"
        );
    }
}
