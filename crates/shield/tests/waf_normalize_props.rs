//! Property tests for the WAF normaliser and request splitter: they end,
//! never panic, and normalising twice changes nothing.

use proptest::prelude::*;
use shield::waf::normalize::{normalize, Source};
use shield::waf::{RequestView, SiteWafConfig, Waf};

/// Bytes biased towards the characters decoders care about.
fn encoded_bytes() -> impl Strategy<Value = Vec<u8>> {
    let interesting = prop::sample::select(vec![
        b'%', b'u', b'U', b'\\', b'&', b'#', b';', b'x', b'2', b'5', b'e', b'c', b'0', b'a', b'f',
        b'+', b'.', b'/', b'l', b't', 0xC0, 0xAE, 0xE0, 0x80, 0xFF, 0x00,
    ]);
    prop::collection::vec(prop_oneof![3 => interesting, 1 => any::<u8>()], 0..256)
}

fn waf() -> &'static Waf {
    static WAF: std::sync::OnceLock<Waf> = std::sync::OnceLock::new();
    WAF.get_or_init(|| Waf::new().expect("rules compile"))
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![Just(Source::Form), Just(Source::Url), Just(Source::Decoded)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn normalisation_terminates_and_is_idempotent(raw in encoded_bytes(), src in source()) {
        let once = normalize(&raw, src);
        let twice = normalize(once.text.as_bytes(), Source::Decoded);
        prop_assert_eq!(&twice.text, &once.text);
        prop_assert_eq!(&twice.lower, &once.lower);
    }

    #[test]
    fn arbitrary_requests_never_panic(
        target in "/[ -~]{0,60}",
        ctype in prop::sample::select(vec![
            "application/json", "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xx", "text/plain", "application/octet-stream",
            "multipart/form-data", "application/json; charset=utf-7",
        ]),
        body in encoded_bytes(),
    ) {
        let headers: [(&str, &[u8]); 2] = [("Content-Type", ctype.as_bytes()), ("Cookie", b"a=%c0%ae; b")];
        let req = RequestView { method: "POST", target: &target, headers: &headers, body: &body };
        let v = waf().inspect(&req, &SiteWafConfig { body_limit: 128, ..Default::default() });
        prop_assert!(v.score >= v.matches.len() as u32 * 2);
    }
}
