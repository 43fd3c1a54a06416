//! The quick start and the CLI's whole site lifecycle, end to end: the
//! real binary, the real CLI, real HTTP through the edge.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn demo_serves_the_bundled_example() {
    let server = Server::start_in_workspace(&["--demo"]);
    let response = server.get("hello.localhost", "/").await;
    assert_eq!(response.status(), 200);
    let expected = std::fs::read_to_string(workspace_root().join("examples/hello/index.html"))
        .expect("example");
    assert_eq!(response.text().await.expect("body"), expected);
    // First start with no users prints how to make the first admin.
    assert!(
        server.log().contains("spinforge admin create --data-dir"),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn first_start_has_no_open_door() {
    let server = Server::start();
    let sites = http()
        .get(format!("{}/api/v1/sites", server.api_url()))
        .send()
        .await
        .expect("get");
    assert_eq!(sites.status(), 401);
    let body: Value = sites.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unauthorized");

    // The setup token from the log creates the first admin exactly once.
    let log = server.log();
    let token = log
        .split("one-time setup token: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("setup token in the log")
        .to_owned();
    let setup = |token: String| {
        let url = format!("{}/api/v1/setup", server.api_url());
        async move {
            http()
                .post(url)
                .json(&serde_json::json!({
                    "token": token, "email": "first@example.com",
                    "password": "a long enough passphrase"
                }))
                .send()
                .await
                .expect("setup")
                .status()
        }
    };
    assert_eq!(setup("sfs_wrong".into()).await, 403);
    assert_eq!(setup(token.clone()).await, 201);
    assert_eq!(setup(token).await, 403, "the setup token works once");
}

#[tokio::test]
async fn the_setup_token_says_setup_is_done_once_an_admin_exists() {
    let server = Server::start();
    // The token is announced just after the listeners are up.
    assert!(server.log_shows("one-time setup token: ").await);
    let token = server
        .log()
        .split("one-time setup token: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("setup token in the log")
        .to_owned();
    // The operator made the admin on the host instead.
    server.create_admin_and_login();
    let response = http()
        .post(format!("{}/api/v1/setup", server.api_url()))
        .json(&serde_json::json!({
            "token": token, "email": "second@example.com",
            "password": "a long enough passphrase"
        }))
        .send()
        .await
        .expect("setup");
    assert_eq!(response.status().as_u16(), 409);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["field"], "token", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("setup is already done")),
        "{body}"
    );
}

#[tokio::test]
async fn cli_deploys_lists_rolls_back_and_deletes_a_site() {
    let server = Server::start();
    server.create_admin_and_login();
    let site = tempfile::tempdir().expect("site dir");
    write_tree(
        site.path(),
        &[("index.html", b"<h1>v1</h1>"), ("css/a.css", b"body{}")],
    );

    let out = server.cli(
        &[
            "deploy",
            site.path().to_str().expect("path"),
            "--domain",
            "hello.localhost",
        ],
        None,
    );
    assert_ok(&out);
    assert!(
        stdout(&out).contains("deployed hello.localhost"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        server
            .get("hello.localhost", "/")
            .await
            .text()
            .await
            .expect("v1"),
        "<h1>v1</h1>"
    );

    write_tree(site.path(), &[("index.html", b"<h1>v2</h1>")]);
    assert_ok(&server.cli(
        &[
            "deploy",
            site.path().to_str().expect("path"),
            "--domain",
            "hello.localhost",
        ],
        None,
    ));
    assert_eq!(
        server
            .get("hello.localhost", "/")
            .await
            .text()
            .await
            .expect("v2"),
        "<h1>v2</h1>"
    );

    let out = server.cli(&["releases", "hello.localhost", "--json"], None);
    assert_ok(&out);
    let releases: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(releases.len(), 2);
    assert_eq!(releases[0]["active"], true, "newest first and active");
    assert_eq!(releases[1]["active"], false);
    assert_eq!(releases[0]["file_count"], 2);

    assert_ok(&server.cli(&["rollback", "hello.localhost"], None));
    assert_eq!(
        server
            .get("hello.localhost", "/")
            .await
            .text()
            .await
            .expect("rb"),
        "<h1>v1</h1>"
    );
    let v2 = releases[0]["id"].as_str().expect("id");
    assert_ok(&server.cli(&["rollback", "hello.localhost", v2], None));
    assert_eq!(
        server
            .get("hello.localhost", "/")
            .await
            .text()
            .await
            .expect("fw"),
        "<h1>v2</h1>"
    );

    let out = server.cli(&["sites", "list", "--json"], None);
    assert_ok(&out);
    let sites: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0]["domain"], "hello.localhost");
    assert_eq!(sites[0]["active_release"], v2);

    let out = server.cli(&["sites", "show", "hello.localhost", "--json"], None);
    assert_ok(&out);
    let shown: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(shown["type"], "static");

    assert_ok(&server.cli(&["sites", "delete", "hello.localhost"], None));
    assert_eq!(server.get("hello.localhost", "/").await.status(), 404);
    assert!(server.release_dirs(1).is_empty(), "release files are gone");
    let out = server.cli(&["sites", "show", "hello.localhost"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[tokio::test]
async fn only_the_newest_releases_are_kept() {
    let server = Server::start_with(&format!("keep_releases = 2\n{LOOPBACK_UPSTREAMS}"));
    server.create_admin_and_login();
    let site = tempfile::tempdir().expect("site dir");
    for n in 1..=4 {
        write_tree(site.path(), &[("index.html", format!("v{n}").as_bytes())]);
        assert_ok(&server.cli(
            &[
                "deploy",
                site.path().to_str().expect("p"),
                "--domain",
                "keep.localhost",
            ],
            None,
        ));
    }
    let out = server.cli(&["releases", "keep.localhost", "--json"], None);
    let releases: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(releases.len(), 2);
    assert_eq!(
        server.release_dirs(1).len(),
        2,
        "pruned releases leave no folder"
    );
    assert_eq!(
        server
            .get("keep.localhost", "/")
            .await
            .text()
            .await
            .expect("body"),
        "v4"
    );
}

#[tokio::test]
async fn cli_usage_errors_exit_2_and_refusals_exit_1() {
    let server = Server::start();
    let out = server.cli(&["deploy"], None);
    assert_eq!(out.status.code(), Some(2));
    let out = server.cli(&["sites", "list"], None);
    assert_eq!(out.status.code(), Some(1), "not logged in");
    assert!(String::from_utf8_lossy(&out.stderr).contains("spinforge login"));
    let out = server.cli(
        &["login", "--email", ADMIN_EMAIL, "--password-stdin"],
        Some("wrong password here"),
    );
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn the_stored_login_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start();
    server.create_admin_and_login();
    let path = server.root.path().join("config-home/spinforge/login.json");
    let mode = std::fs::metadata(&path)
        .expect("login file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(path.parent().expect("dir"))
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(
        dir_mode & 0o077,
        0,
        "the folder is not group or world readable"
    );
}

#[tokio::test]
async fn api_serves_health_metrics_and_openapi() {
    let server = Server::start_in_workspace(&["--demo"]);
    let client = http();
    let get = |path: &str| client.get(format!("{}{path}", server.api_url())).send();
    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
    assert_eq!(get("/readyz").await.expect("readyz").status(), 200);

    server.get("hello.localhost", "/").await;
    server.get("nobody.localhost", "/").await;
    // Metrics name every site: they need a login with system:metrics.
    assert_eq!(get("/metrics").await.expect("metrics").status(), 401);
    let token = server.admin_token().await;
    let metrics = server.metrics(&token).await;
    assert!(
        metrics.contains(r#"spinforge_edge_requests_total{site="hello.localhost",status="200"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"spinforge_edge_requests_total{site="-",status="404"} 1"#));
    assert!(metrics.contains("spinforge_edge_request_duration_seconds_bucket"));
    // The demo deploys examples/: the static page, the Python app and the
    // Node app (the test machines have python3 and node).
    assert!(
        metrics.contains(r#"spinforge_deploys_total{result="ok"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains("spinforge_edge_open_connections"));

    let wrong = client
        .put(format!("{}/api/v1/sites", server.api_url()))
        .send()
        .await
        .expect("put");
    assert_eq!(wrong.status(), 405);
    let body: Value = wrong
        .json()
        .await
        .expect("a wrong method still gets the JSON error shape");
    assert_eq!(body["error"]["code"], "method_not_allowed");

    let doc: Value = get("/api/v1/openapi.json")
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    for path in [
        "/api/v1/sites",
        "/api/v1/sites/{domain}/releases",
        "/api/v1/auth/login",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
}

#[tokio::test]
async fn a_silent_api_connection_is_closed_by_the_header_timeout() {
    use tokio::io::AsyncReadExt;
    let server = Server::start_with("[edge]\nheader_read_timeout_secs = 1\n");
    let mut stream = tokio::net::TcpStream::connect(server.api)
        .await
        .expect("connect");
    let mut buf = [0u8; 64];
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the API kept a silent client: {read:?}"
    );
}

#[tokio::test]
async fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start();
    let mode = std::fs::metadata(&server.data_dir)
        .expect("data dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}
