//! The `x-request-id` every request that crosses the edge carries: kept
//! from a trusted proxy when it is well formed, otherwise made here.
//!
//! An id is held as a header value from the start, so the log line, the
//! upstream request and the response all share one buffer instead of
//! each formatting or copying it.

use bytes::Bytes;
use http::HeaderValue;
use std::fmt;

/// One request's id. Cloning it copies no bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id a trusted proxy sent, iff it is 1-128 characters of letters,
    /// digits, `-`, `_` and `.`.
    pub fn trusted(value: &HeaderValue) -> Option<RequestId> {
        let text = value.to_str().ok()?;
        is_valid(text).then(|| RequestId(value.clone()))
    }

    /// A new id: the process's random prefix and a counter, both in hex.
    pub fn generate(prefix: u64, counter: u64) -> RequestId {
        // 16 + 8 digits; a counter past 2^32 takes a few more. Written by
        // hand: the formatting machinery cost more than the rest of this.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let counter_digits = (16 - counter.leading_zeros() as usize / 4).max(8);
        let mut text = Vec::with_capacity(16 + counter_digits);
        let mut push = |value: u64, digits: usize| {
            for nibble in (0..digits).rev() {
                text.push(HEX[(value >> (nibble * 4)) as usize & 0xf]);
            }
        };
        push(prefix, 16);
        push(counter, counter_digits);
        let value = HeaderValue::from_maybe_shared(Bytes::from(text))
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
        RequestId(value)
    }

    pub fn as_str(&self) -> &str {
        // Both constructors admit only ASCII, so this never falls back.
        self.0.to_str().unwrap_or("-")
    }

    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    pub fn into_header_value(self) -> HeaderValue {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_valid(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_accept_only_safe_characters() {
        assert!(is_valid("abc-123_x.y"));
        assert!(!is_valid(""));
        assert!(!is_valid("a b"));
        assert!(!is_valid("a\"b"));
        assert!(!is_valid(&"a".repeat(129)));
    }

    #[test]
    fn a_trusted_id_is_kept_only_when_well_formed() {
        let kept = RequestId::trusted(&HeaderValue::from_static("lb-42.x")).expect("valid");
        assert_eq!(kept.as_str(), "lb-42.x");
        assert!(RequestId::trusted(&HeaderValue::from_static("a;b")).is_none());
    }

    #[test]
    fn generated_ids_are_prefix_and_counter_in_hex() {
        let id = RequestId::generate(0xabc, 0x1f);
        assert_eq!(id.as_str(), "0000000000000abc0000001f");
        assert_eq!(id.header_value(), "0000000000000abc0000001f");
        let wide = RequestId::generate(1, 1 << 36);
        assert_eq!(wide.as_str(), "00000000000000011000000000");
        let full = RequestId::generate(u64::MAX, u64::MAX - 1);
        assert_eq!(full.as_str(), "fffffffffffffffffffffffffffffffe");
        assert_eq!(
            RequestId::generate(0, 0).as_str(),
            "000000000000000000000000"
        );
    }
}
