//! The JSON log (`--log-format json`) through the real binary: a planted
//! secret value that JSON must escape (a quote and a backslash) reaches
//! the access log through a request path, and is masked there; with
//! `--log-pii masked` personal fields are masked as in the text log; and
//! every line stays one JSON object.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` as-is on a new connection and returns the status line.
async fn raw_status(server: &Server, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(server.edge)
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
    read.await.expect("answer in time").expect("read");
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or("").to_owned()
}

/// The server's log as JSON objects, once a line matching `wanted`
/// exists (ten seconds at most).
async fn json_lines_once(server: &Server, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<Value> = server
            .log()
            .lines()
            .map(|line| {
                let value: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                assert!(value.is_object(), "not an object: {line}");
                value
            })
            .collect();
        if lines.iter().any(&wanted) {
            return lines;
        }
        assert!(Instant::now() < deadline, "no such line in {lines:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_planted_secret_never_appears_in_the_json_log_and_personal_data_is_masked() {
    let server = Server::start_with_flags(
        LOOPBACK_UPSTREAMS,
        &["--log-format", "json", "--log-pii", "masked"],
    );
    let token = server.admin_token().await;
    let domain = "json-log.localhost";
    let created = http()
        .post(format!("{}/api/v1/sites", server.api_url()))
        .bearer_auth(&token)
        .json(&json!({ "domain": domain, "type": "static" }))
        .send()
        .await
        .expect("create site");
    assert_eq!(created.status(), 201);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos() as u64;
    let secret = format!("sk_json_{}\"q\\b", hex::encode(pseudo_random(12, seed)));
    let out = server.cli(&["secrets", "set", domain, "API_TOKEN"], Some(&secret));
    assert_ok(&out);

    // The value reaches the access log through the request path, where
    // JSON escapes its quote and backslash.
    let status = raw_status(
        &server,
        &format!("GET /probe/{secret} HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 "), "{status}");
    // A failed login: the audit event names the address and the client.
    let response = http()
        .post(format!("{}/api/v1/auth/login", server.api_url()))
        .header("user-agent", "probe-agent/1.0")
        .json(&json!({"email": "victim.person@example.com", "password": "not the password"}))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), 401);

    let is_probe = |l: &Value| {
        l["target"] == "spinforge::access"
            && l["path"].as_str().is_some_and(|p| p.starts_with("/probe/"))
    };
    json_lines_once(&server, is_probe).await;
    let lines = json_lines_once(&server, |l| l["event"] == "auth.failed").await;

    // The probe was logged, with the value masked.
    let probe = lines.iter().find(|l| is_probe(l)).expect("probe line");
    assert_eq!(probe["path"], "/probe/[redacted]", "{probe}");
    // Nowhere in the log, as written or in any escaped form.
    let log = server.log();
    let escaped = serde_json::to_string(&secret).expect("json");
    let escaped = &escaped[1..escaped.len() - 1];
    let debug = format!("{secret:?}");
    let debug = &debug[1..debug.len() - 1];
    for form in [secret.as_str(), escaped, debug] {
        assert!(!log.contains(form), "{form} in the log");
    }
    // The part before the quote would show a cut-off copy.
    assert!(!log.contains(&secret[..secret.len() - 4]));

    // Personal data masked as in the text log.
    let failed = lines
        .iter()
        .find(|l| l["event"] == "auth.failed")
        .expect("auth.failed line");
    assert_eq!(failed["subject"], "v***@example.com", "{failed}");
    assert_eq!(failed["client_ip"], "127.0.0.0", "{failed}");
    assert!(failed.get("user_agent").is_none(), "{failed}");
    assert!(!log.contains("victim.person@example.com"));
    assert!(!log.contains("probe-agent/1.0"));
}
