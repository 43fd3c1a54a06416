//! Incident containment rotates a site's secrets (issue 9), through the
//! real `serve`, CLI and a real Python app: after `incidents contain
//! --action rotate-secrets` every stored version is sealed again under a
//! fresh data key, the app is restarted and no longer sees the old
//! values, `secrets list` shows them as rotation required, a new value
//! ends that for its name, a restart of `serve` keeps the rest withheld,
//! and lifting the action hands the rest back. Each step is on the
//! incident's timeline and in the audit log, never with a value.

mod common;

use common::*;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, Instant};

/// The test app: answers `/` with its pid and the SHA-256 of every secret
/// it was given (names API_TOKEN and S_*), so the test checks the values
/// without the app echoing them.
const APP_PY: &str = r#"
import hashlib, json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAMES = sorted(k for k in os.environ if k == "API_TOKEN" or k.startswith("S_"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/health":
            body = b"ok"
        else:
            seen = {k: hashlib.sha256(os.environ[k].encode()).hexdigest() for k in NAMES}
            body = json.dumps({"pid": os.getpid(), "secrets": seen}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

const MANIFEST: &str = "[app]\ncommand = [\"python3\", \"app.py\"]\nhealth_path = \"/health\"\n";

fn app_bundle() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in [("app.py", APP_PY), ("spinforge.toml", MANIFEST)] {
        let mut header = tar::Header::new_gnu();
        header.set_path(name).expect("path");
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append(&header, data.as_bytes()).expect("append");
    }
    let tar = tar.into_inner().expect("tar");
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&tar).expect("gzip");
    gz.finish().expect("gzip")
}

/// A value no file or log could contain by chance.
fn planted(tag: &str) -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos() as u64;
    format!("sk_{tag}_{}", hex::encode(pseudo_random(12, seed)))
}

fn sha(value: &str) -> String {
    sha256_hex(value.as_bytes())
}

fn cli_json(server: &Server, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = server.cli(&args, None);
    assert_ok(&out);
    serde_json::from_str(&stdout(&out)).expect("json output")
}

fn set_secret(server: &Server, domain: &str, name: &str, value: &str) {
    let out = server.cli(&["secrets", "set", domain, name], Some(value));
    assert_ok(&out);
}

/// What the app reports: its pid, and secret name → SHA-256 of its value.
async fn app_view(server: &Server, domain: &str) -> (u64, Value) {
    let response = server.get(domain, "/").await;
    let status = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).expect("json");
    (view["pid"].as_u64().expect("pid"), view["secrets"].clone())
}

/// Name → (rotation_required, rotation_incident) from `secrets list`.
fn listed_states(server: &Server, domain: &str) -> Vec<(String, bool, Option<i64>)> {
    let listed = cli_json(server, &["secrets", "list", domain]);
    listed["secrets"]
        .as_array()
        .expect("secrets")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("name").to_owned(),
                s["rotation_required"].as_bool().expect("rotation_required"),
                s["rotation_incident"].as_i64(),
            )
        })
        .collect()
}

/// Every stored version's sealed blobs, in a stable order.
async fn sealed_rows(server: &Server) -> Vec<(String, i64, Vec<u8>, Vec<u8>)> {
    let db = server.data_dir.join("spinforge.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.expect("db");
    let rows: Vec<(String, i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT name, version, wrapped_key, ciphertext FROM secret_versions ORDER BY name, version",
    )
    .fetch_all(&pool)
    .await
    .expect("rows");
    pool.close().await;
    rows
}

/// The audit events of `kind`, newest first, polled until at least `n`
/// exist (ten seconds at most).
async fn audit_events(server: &Server, token: &str, kind: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = http()
            .get(format!("{}/api/v1/audit?type={kind}", server.api_url()))
            .bearer_auth(token)
            .send()
            .await
            .expect("audit");
        let (status, body) = status_and_json(response).await;
        assert_eq!(status, 200, "{body}");
        let events: Vec<Value> = body["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["type"] == kind)
            .cloned()
            .collect();
        if events.len() >= n {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{} {kind} events, wanted {n}: {body}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn timeline(incident: &Value) -> Vec<String> {
    incident["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|t| format!("{} {}", t["kind"].as_str().unwrap_or(""), t["summary"]))
        .collect()
}

#[tokio::test]
async fn containment_rotates_a_sites_secrets_withholds_them_and_a_lift_hands_them_back() {
    let server = Server::start();
    let token = server.admin_token().await;
    let domain = "rotate.localhost";
    let created = http()
        .post(format!("{}/api/v1/sites", server.api_url()))
        .bearer_auth(&token)
        .json(&json!({ "domain": domain, "type": "process" }))
        .send()
        .await
        .expect("create site");
    assert_eq!(created.status(), 201);
    let first_token = planted("first");
    let api_token = planted("token");
    let db_password = planted("db");
    set_secret(&server, domain, "API_TOKEN", &first_token);
    set_secret(&server, domain, "API_TOKEN", &api_token);
    set_secret(&server, domain, "S_DB", &db_password);
    let (status, body) = upload(&server, &token, domain, app_bundle()).await;
    assert_eq!(status, 201, "{body}");

    let (pid_before, seen) = app_view(&server, domain).await;
    assert_eq!(seen["API_TOKEN"], sha(&api_token));
    assert_eq!(seen["S_DB"], sha(&db_password));
    let before = sealed_rows(&server).await;
    assert_eq!(before.len(), 3, "two versions of API_TOKEN, one of S_DB");

    // Bad input first: a site that does not exist changes nothing.
    let incident = cli_json(
        &server,
        &[
            "incidents",
            "open",
            "Leaked environment in a crash dump",
            "--severity",
            "high",
            "--indicator",
            &format!("site={domain}"),
        ],
    );
    let id = incident["id"].as_i64().expect("incident id");
    let response = http()
        .post(format!(
            "{}/api/v1/incidents/{id}/contain",
            server.api_url()
        ))
        .bearer_auth(&token)
        .json(&json!({"action": "rotate_secrets", "target": "nowhere.localhost"}))
        .send()
        .await
        .expect("contain");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "target", "{body}");
    assert_eq!(sealed_rows(&server).await, before);
    assert!(listed_states(&server, domain).iter().all(|(_, r, _)| !r));

    // Contained through the CLI, against the incident's site indicator.
    let id_text = id.to_string();
    let contained = cli_json(
        &server,
        &[
            "incidents",
            "contain",
            &id_text,
            "--action",
            "rotate-secrets",
        ],
    );
    assert_eq!(contained["status"], "contained", "{contained}");
    let action = &contained["actions"][0];
    assert_eq!(action["kind"], "rotate_secrets");
    assert_eq!(action["target"], domain);
    assert_eq!(action["state"], "active");
    let action_id = action["id"].as_i64().expect("action id").to_string();

    // Every stored version is sealed again: new wrapped data key and new
    // ciphertext for each row, the old version too.
    let after = sealed_rows(&server).await;
    assert_eq!(after.len(), before.len());
    for (old, new) in before.iter().zip(&after) {
        assert_eq!((&old.0, old.1), (&new.0, new.1));
        assert_ne!(old.2, new.2, "{} v{}: same wrapped key", old.0, old.1);
        assert_ne!(old.3, new.3, "{} v{}: same ciphertext", old.0, old.1);
    }

    // The app was restarted and runs without the old values.
    let (pid_rotated, seen) = app_view(&server, domain).await;
    assert_ne!(pid_rotated, pid_before, "a new app process serves");
    assert_eq!(seen, json!({}), "the app still sees rotated secrets");
    assert_eq!(
        listed_states(&server, domain),
        vec![
            ("API_TOKEN".to_owned(), true, Some(id)),
            ("S_DB".to_owned(), true, Some(id)),
        ]
    );
    let out = server.cli(&["secrets", "list", domain], None);
    assert!(
        stdout(&out).contains(&format!("rotation required (incident {id})")),
        "{}",
        stdout(&out)
    );

    // Each step is on the timeline.
    let lines = timeline(&contained);
    for needle in [
        "fresh data keys",
        "withheld from app starts until a new value is set: API_TOKEN, S_DB",
        "stopped the site's app",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("contain") && l.contains(needle)),
            "{needle} not in {lines:#?}"
        );
    }

    // A new value from the third party ends the rotation for its name.
    let new_token = planted("new");
    set_secret(&server, domain, "API_TOKEN", &new_token);
    assert_eq!(
        listed_states(&server, domain),
        vec![
            ("API_TOKEN".to_owned(), false, None),
            ("S_DB".to_owned(), true, Some(id)),
        ]
    );
    assert_ok(&server.cli(&["restart", domain], None));
    let (_, seen) = app_view(&server, domain).await;
    assert_eq!(seen, json!({ "API_TOKEN": sha(&new_token) }));

    // What is withheld stays withheld across a restart of serve.
    let server = server.restart();
    let (_, seen) = app_view(&server, domain).await;
    assert_eq!(seen, json!({ "API_TOKEN": sha(&new_token) }));
    let token = server.login_token().await;
    // The CLI's login belongs to the old API address.
    assert_ok(&server.cli(
        &["login", "--email", ADMIN_EMAIL, "--password-stdin"],
        Some(ADMIN_PASSWORD),
    ));

    // Lifted: S_DB is handed back, the app restarts and sees it again.
    let lifted = cli_json(&server, &["incidents", "lift", &id_text, &action_id]);
    assert_eq!(lifted["actions"][0]["state"], "lifted", "{lifted}");
    assert_eq!(lifted["status"], "open");
    let lines = timeline(&lifted);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("lift") && l.contains("handed back to app starts: S_DB")),
        "{lines:#?}"
    );
    let (_, seen) = app_view(&server, domain).await;
    assert_eq!(
        seen,
        json!({ "API_TOKEN": sha(&new_token), "S_DB": sha(&db_password) })
    );
    assert!(listed_states(&server, domain).iter().all(|(_, r, _)| !r));

    // Audited: the rotation, the lift, the restarts and the start that
    // read the secrets with S_DB withheld; never a value.
    let rotate = audit_events(&server, &token, "secret.rotate", 1).await;
    let lift = audit_events(&server, &token, "secret.rotation_lift", 1).await;
    let restarts = audit_events(&server, &token, "site.restart", 2).await;
    let contain = audit_events(&server, &token, "incident.contain", 1).await;
    let reads = audit_events(&server, &token, "secret.read", 1).await;
    let rotate_text = rotate[0].to_string();
    assert!(rotate_text.contains("API_TOKEN,S_DB"), "{rotate_text}");
    assert!(lift[0].to_string().contains("S_DB"), "{}", lift[0]);
    assert!(
        reads.iter().any(|e| {
            let text = e.to_string();
            text.contains("withheld") && text.contains("S_DB")
        }),
        "no start audited S_DB as withheld: {reads:#?}"
    );
    let all = [rotate, lift, restarts, contain, reads].concat();
    for value in [&first_token, &api_token, &db_password, &new_token] {
        for event in &all {
            assert!(!event.to_string().contains(value.as_str()), "{event}");
        }
        assert!(
            !server.log().contains(value.as_str()),
            "serve's log shows it"
        );
    }
}
