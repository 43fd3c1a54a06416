//! The audit log through the real binary: security events of real
//! requests become durable rows that the API and the CLI show, the chain
//! verifies after a clean stop and after SIGKILL, and requests are
//! refused with 503 while the log cannot be written.

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// GET /api/v1/audit with `query`, as the admin.
async fn audit_page(server: &Server, token: &str, query: &str) -> (u16, Value) {
    let response = http()
        .get(format!("{}/api/v1/audit?{query}", server.api_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("audit request");
    status_and_json(response).await
}

/// Polls until the query returns at least one event (writes from
/// background tasks are durable a moment after the answer).
async fn first_event(server: &Server, token: &str, query: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = audit_page(server, token, query).await;
        assert_eq!(status, 200, "{body}");
        if let Some(event) = body["events"].as_array().and_then(|e| e.first()) {
            return event.clone();
        }
        assert!(Instant::now() < deadline, "no event for {query}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A failed login, each for another (unknown) address so that the
/// lockout of five failures per address never answers instead.
async fn failed_login(server: &Server) -> reqwest::Response {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    http()
        .post(format!("{}/api/v1/auth/login", server.api_url()))
        .header("user-agent", "audit-test/1.0")
        .json(&serde_json::json!({ "email": format!("nobody{n}@example.com"), "password": "wrong password" }))
        .send()
        .await
        .expect("login request")
}

fn verify(server: &Server) -> std::process::Output {
    server.cli(
        &[
            "audit",
            "verify",
            "--data-dir",
            server.data_dir.to_str().expect("utf-8 path"),
        ],
        None,
    )
}

#[tokio::test]
async fn a_failed_login_and_a_deploy_are_durable_and_visible_through_the_api() {
    let mut server = Server::start();
    let token = server.admin_token().await;

    let response = failed_login(&server).await;
    assert_eq!(response.status(), 401);
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned();

    let site = server.root.path().join("site");
    write_tree(&site, &[("index.html", b"<h1>audited</h1>")]);
    assert_ok(&server.cli(
        &[
            "deploy",
            site.to_str().expect("utf-8"),
            "--domain",
            "audited.localhost",
        ],
        None,
    ));

    let failed = first_event(&server, &token, "type=auth.failed").await;
    assert_eq!(failed["result"], "failure");
    assert_eq!(failed["request_id"], request_id.as_str());
    // Loopback, anonymised to its /24 by default.
    assert_eq!(failed["client_ip"], "127.0.0.0");
    assert_eq!(failed["user_agent"], "audit-test/1.0");
    assert!(
        !failed.to_string().contains("wrong password"),
        "a password reached the audit log: {failed}"
    );

    let login = first_event(&server, &token, "type=auth.succeeded").await;
    let admin_id = login["actor"]["user_id"].as_i64().expect("admin id");
    let deploy = first_event(&server, &token, "type=site.deploy").await;
    assert_eq!(deploy["result"], "success");
    assert_eq!(deploy["resource"], "site:audited.localhost");
    assert_eq!(deploy["actor"]["user_id"], admin_id);

    // The same events through the CLI, as JSON lines.
    let out = server.cli(&["audit", "list", "--type", "auth.", "--json"], None);
    assert_ok(&out);
    let kinds: Vec<String> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line")["type"].to_string())
        .collect();
    assert!(kinds.contains(&"\"auth.failed\"".to_owned()), "{kinds:?}");
    assert!(
        kinds.contains(&"\"auth.succeeded\"".to_owned()),
        "{kinds:?}"
    );
    assert!(kinds.iter().all(|k| k.starts_with("\"auth.")), "{kinds:?}");

    server.stop();
    let out = verify(&server);
    assert_ok(&out);
    assert!(stdout(&out).starts_with("ok: "), "{}", stdout(&out));
}

#[tokio::test]
async fn audit_verify_passes_after_kill_9_and_after_a_restart() {
    let mut server = Server::start();
    let _token = server.admin_token().await;
    for _ in 0..5 {
        assert_eq!(failed_login(&server).await.status(), 401);
    }
    server.kill9();
    let out = verify(&server);
    assert_ok(&out);

    let mut server = server.restart();
    assert_eq!(failed_login(&server).await.status(), 401);
    server.stop();
    let out = verify(&server);
    assert_ok(&out);
    // anchor, start, login, 5 failures, (killed) start, failure, stop
    let head: i64 = stdout(&out)
        .split("head ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("head in the verify output");
    assert!(head >= 11, "{}", stdout(&out));
}

#[tokio::test]
async fn audit_verify_names_the_bad_row_of_a_tampered_log() {
    let mut server = Server::start();
    let _token = server.admin_token().await;
    assert_eq!(failed_login(&server).await.status(), 401);
    server.stop();

    let db = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(server.data_dir.join("spinforge.db")),
    )
    .await
    .expect("open db");
    for sql in [
        "DROP TRIGGER audit_events_no_update",
        "UPDATE audit_events SET result = 'success' WHERE kind = 'auth.failed'",
    ] {
        sqlx::query(sql).execute(&db).await.expect(sql);
    }
    let seq: i64 = sqlx::query_scalar("SELECT seq FROM audit_events WHERE kind = 'auth.failed'")
        .fetch_one(&db)
        .await
        .expect("the failure row");
    db.close().await;

    let out = verify(&server);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("seq {seq}: edited")),
        "verify said: {stderr}"
    );
}

#[tokio::test]
async fn requests_fail_closed_with_503_while_the_audit_log_cannot_be_written() {
    let config = format!("{LOOPBACK_UPSTREAMS}\n[audit]\nrecord_timeout_ms = 3000\n");
    let mut server = Server::start_with(&config);
    let token = server.admin_token().await;

    // Another process makes the store refuse audit rows.
    let db = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(server.data_dir.join("spinforge.db")),
    )
    .await
    .expect("open db");
    sqlx::query(
        "CREATE TRIGGER audit_refuse BEFORE INSERT ON audit_events \
         BEGIN SELECT RAISE(ABORT, 'attempt to write a readonly database'); END",
    )
    .execute(&db)
    .await
    .expect("trigger");

    let response = failed_login(&server).await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "audit_unavailable");

    let response = http()
        .get(format!("{}/api/v1/sites", server.api_url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sites");
    assert_eq!(response.status(), 503);
    let ready = http()
        .get(format!("{}/readyz", server.api_url()))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let health = http()
        .get(format!("{}/healthz", server.api_url()))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    assert!(
        server.log().contains("the audit log cannot be written"),
        "no alarm in the log"
    );

    // Writes work again: the log recovers by itself and requests pass.
    sqlx::query("DROP TRIGGER audit_refuse")
        .execute(&db)
        .await
        .expect("drop trigger");
    db.close().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = failed_login(&server).await.status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "the audit log never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The refused request's event was kept and stored on recovery.
    let (_, body) = audit_page(&server, &token, "type=auth.failed").await;
    let failures = body["events"].as_array().expect("events").len();
    assert!(failures >= 2, "{body}");
    server.stop();
    assert_ok(&verify(&server));
}

#[tokio::test]
async fn bad_audit_queries_get_a_400_naming_the_field() {
    let server = Server::start();
    let token = server.admin_token().await;
    for (query, field) in [
        ("result=maybe", "result"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("type=Auth%20Failed", "type"),
        ("since=yesterday", "since"),
        ("user=admin", "user"),
        ("cursor=-4", "cursor"),
    ] {
        let (status, body) = audit_page(&server, &token, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    let (status, body) = audit_page(&server, &token, "colour=blue").await;
    assert_eq!(status, 400, "{body}");

    let anonymous = http()
        .get(format!("{}/api/v1/audit", server.api_url()))
        .send()
        .await
        .expect("audit");
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn audit_tail_prints_new_events_as_they_are_stored() {
    let server = Server::start();
    let _token = server.admin_token().await;
    let mut tail = std::process::Command::new(BIN)
        .args([
            "audit",
            "tail",
            "--type",
            "auth.failed",
            "--max",
            "2",
            "--json",
        ])
        .env("SPINFORGE_API", server.api_url())
        .env("XDG_CONFIG_HOME", server.root.path().join("config-home"))
        .env("HOME", server.root.path())
        .env_remove("SPINFORGE_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start audit tail");

    // Fail logins until tail has printed two and exits; it may start
    // following after the first ones.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = tail.try_wait().expect("tail state") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = tail.kill();
            panic!("audit tail did not print two events in time");
        }
        assert_eq!(failed_login(&server).await.status(), 401);
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let out = tail.wait_with_output().expect("tail output");
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|e| e["type"] == "auth.failed"));
    assert!(lines[0]["seq"].as_i64() < lines[1]["seq"].as_i64());
}
