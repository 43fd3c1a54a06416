//! Splits arbitrary input into a content type, a target and a body and
//! runs the whole engine on it: the body parsers (urlencoded, JSON,
//! multipart, text) and every detector must never panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shield::waf::{Oversize, RequestView, SiteWafConfig, Waf};

const TYPES: &[&str] = &[
    "application/x-www-form-urlencoded",
    "application/json",
    "multipart/form-data; boundary=AaB03x",
    "text/plain; charset=utf-8",
    "application/xml",
];

fuzz_target!(|data: &[u8]| {
    static WAF: OnceLock<Waf> = OnceLock::new();
    let waf = WAF.get_or_init(|| Waf::new().expect("rules compile"));
    let Some((&selector, rest)) = data.split_first() else { return };
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let target = String::from_utf8_lossy(&rest[..split]);
    let body = rest.get(split + 1..).unwrap_or_default();
    let ctype = TYPES[usize::from(selector) % TYPES.len()];
    let headers: [(&str, &[u8]); 2] = [("Content-Type", ctype.as_bytes()), ("Cookie", body)];
    let req = RequestView { method: "POST", target: &target, headers: &headers, body };
    let site = SiteWafConfig {
        paranoia: selector % 4 + 1,
        body_limit: 4096,
        oversize: if selector & 0x80 == 0 { Oversize::InspectPrefix } else { Oversize::Refuse },
        ..Default::default()
    };
    let _ = waf.inspect(&req, &site);
});
