//! Incident response end to end through the real `serve`: a brute-force
//! run locks an account, which opens a HIGH incident; the policy bans the
//! source IP at the edge; a signed webhook reaches a receiver on loopback
//! and an e-mail reaches a real SMTP server (PyPI aiosmtpd); the CLI
//! resolves it. Isolating a process site stops its app and makes the edge
//! answer 503; lifting restores it. Bad input changes nothing.

mod common;
#[path = "incident_support/mod.rs"]
mod incident_support;

use common::*;
use incident_support::{SmtpServer, WebhookReceiver};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The webhook secret of the test config.
const HOOK_SECRET: &str = "incident-test-secret-0123456789";
/// The address the brute-force run comes from.
const ATTACKER: &str = "127.0.0.7";
const VICTIM: &str = "victim@example.com";

fn config(hook: &str, smtp_port: u16) -> String {
    format!(
        "{LOOPBACK_UPSTREAMS}
[identity]
lockout_max_failures = 3

[incidents.policy]
ban_ips_at = \"high\"

[[incidents.webhooks]]
url = \"{hook}\"
secret = \"{HOOK_SECRET}\"
attempts = 3
backoff_ms = 100

[incidents.email]
smtp_host = \"127.0.0.1\"
smtp_port = {smtp_port}
tls = \"none\"
from = \"SpinForge <spinforge@example.com>\"

[[incidents.email.recipients]]
address = \"oncall@example.com\"
min_severity = \"high\"

[[incidents.email.recipients]]
address = \"only-critical@example.com\"
min_severity = \"critical\"
"
    )
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().expect("ip"))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn api(
    server: &Server,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http()
        .request(method, format!("{}/api/v1{path}", server.api_url()))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    status_and_json(request.send().await.expect("api request")).await
}

/// Waits for the incident that has `ip` as an indicator and `status`.
async fn incident_with(server: &Server, token: &str, ip: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, list) = api(server, token, reqwest::Method::GET, "/incidents", None).await;
        assert_eq!(code, 200, "{list}");
        let found = list.as_array().expect("list").iter().find(|i| {
            i["status"] == status
                && i["indicators"]
                    .as_array()
                    .is_some_and(|inds| inds.iter().any(|x| x["kind"] == "ip" && x["value"] == ip))
        });
        if let Some(found) = found {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {status} incident for {ip}: {list}\nlog:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    hex::encode(aws_lc_rs::hmac::sign(&key, message).as_ref())
}

#[tokio::test]
async fn brute_force_lockout_opens_an_incident_bans_the_source_notifies_and_resolves() {
    let Some(python) = incident_support::python() else {
        return;
    };
    let scratch = tempfile::tempdir().expect("tempdir");
    let smtp = SmtpServer::start(&python, scratch.path());
    // The receiver refuses the first two deliveries: each notification
    // gets 3 tries, so every one still arrives, by retry.
    let hook = WebhookReceiver::start(2).await;
    let server = Server::start_with(&config(&hook.url(), smtp.port));
    let token = server.admin_token().await;

    // The brute-force run: wrong passwords from one address until the
    // account locks (3 allowed, the 4th attempt locks).
    let attacker = client_from(ATTACKER);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = attacker
            .post(format!("{}/api/v1/auth/login", server.api_url()))
            .json(&json!({"email": VICTIM, "password": "guess-guess-guess"}))
            .send()
            .await
            .expect("login attempt");
        statuses.push(response.status().as_u16());
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 429],
        "the 4th attempt is locked out"
    );

    // The lockout opened a HIGH incident, and the policy contained it.
    let summary = incident_with(&server, &token, ATTACKER, "contained").await;
    let id = summary["id"].as_i64().expect("id");
    let (code, incident) = api(
        &server,
        &token,
        reqwest::Method::GET,
        &format!("/incidents/{id}"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(incident["severity"], "high");
    assert_eq!(incident["rule"], "brute_force");
    let indicators = incident["indicators"].as_array().expect("indicators");
    assert!(
        indicators.contains(&json!({"kind": "user", "value": VICTIM})),
        "{incident}"
    );
    let actions = incident["actions"].as_array().expect("actions");
    assert_eq!(actions.len(), 1, "{incident}");
    assert_eq!(actions[0]["kind"], "ban_ip");
    assert_eq!(actions[0]["target"], ATTACKER);
    assert_eq!(actions[0]["state"], "active");
    assert_eq!(actions[0]["actor"], "policy");
    let kinds: Vec<&str> = incident["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|t| t["kind"].as_str())
        // Deliveries land on the timeline as they finish, in any order.
        .filter(|kind| *kind != "notify")
        .collect();
    assert_eq!(&kinds[..2], ["open", "contain"], "{incident}");

    // The ban holds at the edge for the attacker only.
    let banned = attacker
        .get(server.edge_url("/"))
        .header("host", "nosuch.localhost")
        .send()
        .await
        .expect("edge");
    assert_eq!(banned.status(), 403, "the attacker is banned");
    let other = server.get("nosuch.localhost", "/").await;
    assert_eq!(other.status(), 404, "everyone else still reaches the edge");
    let (_, bans) = api(&server, &token, reqwest::Method::GET, "/bans", None).await;
    assert!(
        bans["bans"]
            .as_array()
            .expect("bans")
            .iter()
            .any(|b| b["ip"] == ATTACKER && b["reason"] == format!("incident {id}")),
        "{bans}"
    );

    // A signed webhook arrived: the signature is HMAC-SHA256 of
    // "TIMESTAMP.BODY" under the configured secret.
    let (delivery, body) = hook
        .wait_for("incident.open", Duration::from_secs(15))
        .await;
    assert_eq!(body["incident"]["id"], id);
    assert_eq!(body["incident"]["severity"], "high");
    let timestamp = delivery.timestamp.expect("timestamp header");
    let mut signed = timestamp.clone().into_bytes();
    signed.push(b'.');
    signed.extend_from_slice(&delivery.body);
    assert_eq!(
        delivery.signature.as_deref(),
        Some(format!("v1={}", hmac_hex(HOOK_SECRET.as_bytes(), &signed)).as_str())
    );
    let sent_at: u64 = timestamp.parse().expect("unix seconds");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        now.abs_diff(sent_at) < 300,
        "timestamp {sent_at} is now-ish ({now})"
    );
    assert_eq!(hook.refused(), 2, "the first deliveries were refused");
    let (_, contained) = hook
        .wait_for("incident.contain", Duration::from_secs(15))
        .await;
    assert_eq!(contained["incident"]["status"], "contained");

    // The e-mail reached the real SMTP server, for the HIGH recipient only.
    let mail = smtp
        .wait_for(&format!("incident #{id}"), Duration::from_secs(20))
        .await;
    assert!(mail.contains("oncall@example.com"), "{mail}");
    assert!(!mail.contains("only-critical@example.com"), "{mail}");
    assert!(mail.contains("HIGH"), "{mail}");
    assert!(mail.contains(ATTACKER), "{mail}");

    // Both deliveries are noted on the incident's timeline.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, now) = api(
            &server,
            &token,
            reqwest::Method::GET,
            &format!("/incidents/{id}"),
            None,
        )
        .await;
        let notes: Vec<String> = now["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .filter(|t| t["kind"] == "notify")
            .filter_map(|t| t["summary"].as_str().map(str::to_owned))
            .collect();
        let webhook = notes
            .iter()
            .any(|n| n.starts_with("webhook to 127.0.0.1 delivered"));
        let email = notes
            .iter()
            .any(|n| n.starts_with("e-mail sent to 1 recipient"));
        if webhook && email {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries not on the timeline: {notes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The log never shows the webhook secret.
    assert!(!server.log().contains(HOOK_SECRET));

    // Resolved through the CLI.
    let out = server.cli(
        &[
            "incidents",
            "resolve",
            &id.to_string(),
            "--note",
            "attacker banned; no access gained",
        ],
        None,
    );
    assert_ok(&out);
    let out = server.cli(&["incidents", "show", &id.to_string(), "--json"], None);
    assert_ok(&out);
    let shown: Value = serde_json::from_str(&stdout(&out)).expect("show --json");
    assert_eq!(shown["status"], "resolved");
    let last = shown["timeline"]
        .as_array()
        .and_then(|t| t.iter().rev().find(|l| l["kind"] != "notify"))
        .cloned();
    assert_eq!(
        last.as_ref().map(|l| l["kind"].clone()),
        Some(json!("resolve"))
    );
    assert_eq!(
        last.map(|l| l["summary"].clone()),
        Some(json!("attacker banned; no access gained"))
    );
    let (_, resolved) = hook
        .wait_for("incident.resolve", Duration::from_secs(15))
        .await;
    assert_eq!(resolved["incident"]["id"], id);

    // Each step is in the audit log.
    let (code, audit) = api(
        &server,
        &token,
        reqwest::Method::GET,
        "/audit?type=incident.&limit=100",
        None,
    )
    .await;
    assert_eq!(code, 200);
    let types: Vec<&str> = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    for wanted in ["incident.open", "incident.contain", "incident.resolve"] {
        assert!(types.contains(&wanted), "{wanted} missing from {types:?}");
    }
}

/// A process app on the standard library: `/` answers with its pid.
const APP_PY: &str = r#"
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

fn app_bundle() -> Vec<u8> {
    use std::io::Write;
    let manifest = "[app]\ncommand = [\"python3\", \"app.py\"]\nhealth_path = \"/\"\n";
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in [("app.py", APP_PY), ("spinforge.toml", manifest)] {
        let mut header = tar::Header::new_gnu();
        header.set_path(name).expect("path");
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append(&header, data.as_bytes()).expect("append");
    }
    let tar = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    gz.finish().expect("gzip")
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test]
async fn isolating_a_site_stops_its_app_serves_503_and_lifting_restores_it() {
    let server = Server::start();
    let token = server.admin_token().await;
    let domain = "isolate.localhost";
    let (code, body) = api(
        &server,
        &token,
        reqwest::Method::POST,
        "/sites",
        Some(json!({"domain": domain, "type": "process"})),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = upload(&server, &token, domain, app_bundle()).await;
    assert_eq!(code, 201, "{body}");

    let response = server.get(domain, "/").await;
    assert_eq!(response.status(), 200);
    let served: Value = response.json().await.expect("json");
    let pid = served["pid"].as_u64().expect("pid");
    assert!(alive(pid));

    // Opened by hand with the site as indicator, then isolated by command.
    let (code, incident) = api(
        &server,
        &token,
        reqwest::Method::POST,
        "/incidents",
        Some(json!({
            "title": "Web shell found in uploads",
            "severity": "critical",
            "indicators": [{"kind": "site", "value": domain}]
        })),
    )
    .await;
    assert_eq!(code, 201, "{incident}");
    assert_eq!(incident["status"], "open");
    let id = incident["id"].as_i64().expect("id");
    let (code, contained) = api(
        &server,
        &token,
        reqwest::Method::POST,
        &format!("/incidents/{id}/contain"),
        Some(json!({"action": "isolate_site"})),
    )
    .await;
    assert_eq!(code, 200, "{contained}");
    assert_eq!(contained["status"], "contained");
    let action = contained["actions"][0]["id"].as_i64().expect("action id");

    // The app is stopped, the edge answers 503, deploys are refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "app {pid} still runs after isolation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = server.get(domain, "/").await;
    assert_eq!(response.status(), 503);
    assert!(response.text().await.expect("body").contains("maintenance"));
    let (code, refused) = upload(&server, &token, domain, app_bundle()).await;
    assert_eq!(code, 409, "{refused}");
    assert_eq!(refused["error"]["field"], "site");
    assert!(!alive(pid), "a refused deploy starts nothing");

    // Lifted: the site serves again from a fresh app process.
    let (code, lifted) = api(
        &server,
        &token,
        reqwest::Method::POST,
        &format!("/incidents/{id}/actions/{action}/lift"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{lifted}");
    assert_eq!(lifted["actions"][0]["state"], "lifted");
    assert_eq!(lifted["status"], "open");
    let response = server.get(domain, "/").await;
    assert_eq!(response.status(), 200);
    let served: Value = response.json().await.expect("json");
    assert_ne!(
        served["pid"].as_u64(),
        Some(pid),
        "a new app process serves"
    );
    let (code, body) = upload(&server, &token, domain, app_bundle()).await;
    assert_eq!(code, 201, "deploys work again: {body}");
}

#[tokio::test]
async fn bad_incident_input_gets_clear_errors_and_changes_nothing() {
    let server = Server::start();
    let token = server.admin_token().await;
    let (code, incident) = api(
        &server,
        &token,
        reqwest::Method::POST,
        "/incidents",
        Some(json!({"title": "Suspicious login", "severity": "medium",
                    "indicators": [{"kind": "ip", "value": "192.0.2.44"}]})),
    )
    .await;
    assert_eq!(code, 201, "{incident}");
    let id = incident["id"].as_i64().expect("id");
    let before = api(
        &server,
        &token,
        reqwest::Method::GET,
        &format!("/incidents/{id}"),
        None,
    )
    .await;

    let cases = [
        (
            "/incidents/999/contain",
            json!({"action": "ban_ip"}),
            404,
            None,
        ),
        (
            "/incidents/abc/contain",
            json!({"action": "ban_ip"}),
            400,
            Some("id"),
        ),
        (
            &*format!("/incidents/{id}/contain"),
            json!({"action": "nuke"}),
            400,
            Some("action"),
        ),
        (
            &*format!("/incidents/{id}/contain"),
            json!({"action": "ban_ip", "target": "not-an-ip"}),
            400,
            Some("target"),
        ),
        (
            &*format!("/incidents/{id}/contain"),
            json!({"action": "isolate_site"}),
            400,
            Some("target"),
        ),
        (
            &*format!("/incidents/{id}/contain"),
            json!({"action": "disable_user", "target": "nobody@example.com"}),
            400,
            Some("target"),
        ),
        (
            &*format!("/incidents/{id}/resolve"),
            json!({"note": "  "}),
            400,
            Some("note"),
        ),
        (
            &*format!("/incidents/{id}/actions/5/lift"),
            json!({}),
            404,
            None,
        ),
        (
            "/incidents",
            json!({"title": "x", "severity": "severe"}),
            400,
            Some("severity"),
        ),
    ];
    for (path, body, status, field) in cases {
        let (code, answer) = api(&server, &token, reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(code, status, "{path}: {answer}");
        if let Some(field) = field {
            assert_eq!(answer["error"]["field"], field, "{path}: {answer}");
        }
        assert!(answer["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let (code, missing) = api(
        &server,
        &token,
        reqwest::Method::GET,
        "/incidents/999",
        None,
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(missing["error"]["message"], "incident not found");

    let after = api(
        &server,
        &token,
        reqwest::Method::GET,
        &format!("/incidents/{id}"),
        None,
    )
    .await;
    assert_eq!(before, after, "refused requests changed the incident");
    let (_, list) = api(&server, &token, reqwest::Method::GET, "/incidents", None).await;
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "the bad open created nothing"
    );
    let (_, bans) = api(&server, &token, reqwest::Method::GET, "/bans", None).await;
    assert_eq!(bans, json!({"bans": []}));

    // The CLI says the same, with exit code 1.
    let out = server.cli(&["incidents", "contain", "999", "--action", "ban-ip"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("incident not found"));
    let out = server.cli(&["incidents", "show", &id.to_string(), "--json"], None);
    assert_ok(&out);
}
