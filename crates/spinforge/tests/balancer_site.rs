//! Balancer sites end to end: real upstreams (Python's http.server) behind
//! the edge, round robin and least connections, and active health checks
//! that take a dead upstream out and put it back when it returns.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `python3 -m http.server` serving one file that names the upstream.
struct Upstream {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Upstream {
    fn start(name: &str) -> Upstream {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("index.html"), name).expect("write");
        std::fs::write(dir.path().join("health"), "ok").expect("write");
        let port = free_port();
        let child = spawn_http_server(dir.path(), port);
        let upstream = Upstream { child, port, dir };
        upstream.wait_ready();
        upstream
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.stop();
        self.child = spawn_http_server(self.dir.path(), self.port);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "upstream did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_http_server(dir: &std::path::Path, port: u16) -> Child {
    Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3")
}

async fn create(server: &Server, token: &str, body: Value) -> reqwest::Response {
    http()
        .post(format!("{}/api/v1/sites", server.api_url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("create")
}

async fn body_of(server: &Server, host: &str) -> (u16, String) {
    let response = server.get(host, "/").await;
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test]
async fn round_robin_spreads_requests_and_health_checks_move_traffic() {
    let server = Server::start();
    let token = server.admin_token().await;
    let a = Upstream::start("upstream-a");
    let mut b = Upstream::start("upstream-b");
    let response = create(
        &server,
        &token,
        json!({
            "domain": "lb.localhost", "type": "balancer",
            "upstreams": [a.url(), b.url()],
            "strategy": "round_robin", "health_path": "/health", "health_interval_secs": 1
        }),
    )
    .await;
    assert_eq!(response.status(), 201);
    let site: Value = response.json().await.expect("json");
    assert_eq!(site["balancer"]["strategy"], "round_robin");

    let mut seen = Vec::new();
    for _ in 0..6 {
        let (status, body) = body_of(&server, "lb.localhost").await;
        assert_eq!(status, 200);
        seen.push(body);
    }
    assert_eq!(
        seen.iter().filter(|b| *b == "upstream-a").count(),
        3,
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|b| *b == "upstream-b").count(),
        3,
        "{seen:?}"
    );

    // b dies. Until a failed request or health check takes it out, some
    // requests may still reach it and fail; after that, ten in a row must
    // all go to a, and then twenty more without a single failure.
    b.stop();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut consecutive_a = 0;
    while consecutive_a < 10 {
        assert!(
            Instant::now() < deadline,
            "traffic never settled on the live upstream"
        );
        let (status, body) = body_of(&server, "lb.localhost").await;
        if status == 200 && body == "upstream-a" {
            consecutive_a += 1;
        } else {
            consecutive_a = 0;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for _ in 0..20 {
        assert_eq!(
            body_of(&server, "lb.localhost").await,
            (200, "upstream-a".into())
        );
    }
    assert!(server.log().contains("taken out") || server.log().contains("failed its health check"));

    // b comes back and is put back in.
    b.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(
            Instant::now() < deadline,
            "the recovered upstream was never used again"
        );
        let (_, body) = body_of(&server, "lb.localhost").await;
        if body == "upstream-b" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.log().contains("back in"), "{}", server.log());
}

#[tokio::test]
async fn with_every_upstream_down_the_edge_answers_503() {
    let server = Server::start();
    let token = server.admin_token().await;
    let mut a = Upstream::start("upstream-a");
    let body = json!({
        "domain": "down.localhost", "type": "balancer",
        "upstreams": [a.url()], "health_interval_secs": 1
    });
    assert_eq!(create(&server, &token, body).await.status(), 201);
    assert_eq!(
        body_of(&server, "down.localhost").await,
        (200, "upstream-a".into())
    );
    a.stop();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = body_of(&server, "down.localhost").await;
        assert!(
            !body.contains("127.0.0.1"),
            "error pages name no upstream: {body}"
        );
        if status == 503 {
            break;
        }
        assert_eq!(
            status, 502,
            "before the check notices, a failed connect is a 502"
        );
        assert!(Instant::now() < deadline, "never reached 503");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn least_conn_and_the_cli_create_a_balancer() {
    let server = Server::start();
    server.create_admin_and_login();
    let a = Upstream::start("upstream-a");
    let b = Upstream::start("upstream-b");
    let out = server.cli(
        &[
            "deploy",
            "--domain",
            "lc.localhost",
            "--type",
            "balancer",
            "--upstream",
            &a.url(),
            "--upstream",
            &b.url(),
            "--strategy",
            "least_conn",
            "--json",
        ],
        None,
    );
    assert_ok(&out);
    let site: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(site["balancer"]["strategy"], "least_conn");
    assert_eq!(
        site["balancer"]["upstreams"].as_array().map(Vec::len),
        Some(2)
    );
    // With no concurrency, least connections still serves every request.
    for _ in 0..4 {
        let (status, body) = body_of(&server, "lc.localhost").await;
        assert_eq!(status, 200);
        assert!(body == "upstream-a" || body == "upstream-b");
    }
}

#[tokio::test]
async fn bad_balancer_settings_are_refused_by_field() {
    let server = Server::start_with("");
    let token = server.admin_token().await;
    let cases = [
        (
            json!({"domain": "x.localhost", "type": "balancer"}),
            "upstreams",
        ),
        (
            json!({"domain": "x.localhost", "type": "balancer", "upstreams": []}),
            "upstreams",
        ),
        (
            json!({"domain": "x.localhost", "type": "balancer",
                   "upstreams": ["http://127.0.0.1:1"]}),
            "upstreams",
        ),
        (
            json!({"domain": "x.localhost", "type": "balancer",
                   "upstreams": ["http://169.254.169.254/"]}),
            "upstreams",
        ),
        (
            json!({"domain": "x.localhost", "type": "balancer",
                   "upstreams": ["http://93.184.216.34/"], "strategy": "random"}),
            "strategy",
        ),
        (
            json!({"domain": "x.localhost", "type": "balancer",
                   "upstreams": ["http://93.184.216.34/"], "health_path": "health"}),
            "health_path",
        ),
        (
            json!({"domain": "x.localhost", "type": "balancer",
                   "upstreams": ["http://93.184.216.34/"], "health_interval_secs": 0}),
            "health_interval_secs",
        ),
        (
            json!({"domain": "x.localhost", "type": "static",
                   "upstreams": ["http://93.184.216.34/"]}),
            "upstreams",
        ),
    ];
    for (body, field) in cases {
        let response = create(&server, &token, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"]["field"], field, "{body}: {error}");
    }
    let sites: Value = http()
        .get(format!("{}/api/v1/sites", server.api_url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(sites, json!([]), "no refused site was stored");
}
