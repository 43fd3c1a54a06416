//! Request limits through the real edge: each limit at its boundary both
//! ways, bodies capped while they stream, smuggling shapes refused and
//! never forwarded, slow clients cut off while others are served, the
//! per-client connection cap, and the security headers on every answer.
//!
//! Upstreams are Python servers on 127.0.0.1 that the tests start.

mod common;
mod shield_support;

use common::*;
use shield_support::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Small limits, so each boundary is cheap to reach.
const LIMITS: &str = "[shield]
max_headers = 20
max_header_bytes = 2048
max_uri_bytes = 256
max_body_bytes = 1000
max_connections_per_ip = 8
";

/// A server with the small limits, a static site `static.localhost` and a
/// proxy site `echo.localhost` in front of a fresh upstream.
async fn limited_server(extra: &str) -> (Server, Upstream, String) {
    let server = Server::start_with(&format!("{LOOPBACK_UPSTREAMS}{LIMITS}{extra}"));
    let token = server.admin_token().await;
    let upstream = Upstream::start();
    static_site(&server, "static.localhost");
    proxy_site(&server, &token, "echo.localhost", &upstream.url()).await;
    (server, upstream, token)
}

fn get_head(host: &str, target: &str, extra: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn the_uri_limit_admits_its_length_and_refuses_one_byte_more() {
    let (server, _upstream, _token) = limited_server("").await;
    let at = format!("/{}", "a".repeat(255));
    let answer = raw(
        server.edge,
        get_head("static.localhost", &at, "").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 404, "{answer}");
    let over = format!("/{}", "a".repeat(256));
    let answer = raw(
        server.edge,
        get_head("static.localhost", &over, "").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 414, "{answer}");
}

#[tokio::test]
async fn the_header_count_and_size_limits_are_exact() {
    let (server, _upstream, _token) = limited_server("").await;
    // Host and Connection are two; 18 more make the limit of 20.
    let headers = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
    let answer = raw(
        server.edge,
        get_head("static.localhost", "/", &headers(18)).as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let answer = raw(
        server.edge,
        get_head("static.localhost", "/", &headers(19)).as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 431, "{answer}");

    // Sizes count names and values: host 4+16, connection 10+5, x-pad 5+v.
    let pad = |v: usize| format!("X-Pad: {}\r\n", "p".repeat(v));
    let fits = 2048 - (4 + 16) - (10 + 5) - 5;
    let answer = raw(
        server.edge,
        get_head("static.localhost", "/", &pad(fits)).as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let answer = raw(
        server.edge,
        get_head("static.localhost", "/", &pad(fits + 1)).as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 431, "{answer}");
}

fn post_with_length(host: &str, len: usize) -> Vec<u8> {
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len}\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b'x', len));
    request
}

fn post_chunked(host: &str, chunks: &[usize]) -> Vec<u8> {
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes();
    for &len in chunks {
        request.extend(format!("{len:x}\r\n").into_bytes());
        request.extend(std::iter::repeat_n(b'x', len));
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    request
}

#[tokio::test]
async fn the_body_cap_is_exact_for_declared_and_streamed_bodies() {
    let (server, upstream, token) = limited_server("").await;

    let answer = raw(server.edge, &post_with_length("echo.localhost", 1000)).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.ends_with("got 1000"), "{answer}");
    let before = upstream.count().await;
    let answer = raw(server.edge, &post_with_length("echo.localhost", 1001)).await;
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert_eq!(
        upstream.count().await,
        before,
        "a declared oversize body is never forwarded"
    );

    // No length up front: the cap stops the stream itself.
    let answer = raw(server.edge, &post_chunked("echo.localhost", &[600, 400])).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.ends_with("got 1000"), "{answer}");
    let answer = raw(server.edge, &post_chunked("echo.localhost", &[600, 401])).await;
    assert_eq!(status_of(&answer), 413, "{answer}");

    // A site may raise its own cap.
    let (status, body) = api(
        &server,
        &token,
        reqwest::Method::PUT,
        "/sites/echo.localhost/shield",
        Some(serde_json::json!({ "max_body_bytes": 1500 })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer = raw(server.edge, &post_with_length("echo.localhost", 1500)).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let answer = raw(server.edge, &post_with_length("echo.localhost", 1501)).await;
    assert_eq!(status_of(&answer), 413, "{answer}");
}

#[tokio::test]
async fn smuggling_shapes_are_refused_and_never_reach_the_upstream() {
    let (server, upstream, _token) = limited_server("").await;
    let start = "POST /x HTTP/1.1\r\nHost: echo.localhost\r\n";
    let shapes: &[&str] = &[
        "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Content-Length: +3\r\n\r\nabc",
        "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "Content-Length: 3, 3\r\n\r\nabc",
        "Content-Length: 0x3\r\n\r\nabc",
        "Bad Header: x\r\nContent-Length: 0\r\n\r\n",
        "X-Bad\u{1}: x\r\nContent-Length: 0\r\n\r\n",
        "X(y): z\r\nContent-Length: 0\r\n\r\n",
    ];
    for shape in shapes {
        let answer = raw(server.edge, format!("{start}{shape}").as_bytes()).await;
        assert_eq!(status_of(&answer), 400, "{shape:?} got: {answer}");
    }
    let old =
        "POST /x HTTP/1.0\r\nHost: echo.localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(status_of(&raw(server.edge, old.as_bytes()).await), 400);
    assert_eq!(
        upstream.count().await,
        0,
        "no refused shape reached the upstream"
    );

    // hyper repairs these two shapes (chunked wins over a Content-Length;
    // identical repeated lengths are folded) before any service sees the
    // request; the edge's framing guard reads the raw head first and makes
    // them a 400 too. Each is sent with a second request smuggled behind
    // it, split over several writes, and in any header case.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: echo.localhost\r\n\r\n";
    for shape in [
        "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "transfer-encoding: chunked\r\ncontent-length: 0\r\n\r\n0\r\n\r\n",
        "Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "Content-Length: 3\r\ncontent-length: 3\r\nConnection: close\r\n\r\nabc",
    ] {
        let answer = raw(server.edge, format!("{start}{shape}{smuggled}").as_bytes()).await;
        assert_eq!(status_of(&answer), 400, "{shape:?} got: {answer}");
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "a second request was served: {answer}"
        );
        let mut stream = connect_from(server.edge, "127.0.0.1").await;
        let request = format!("{start}{shape}");
        for piece in request.as_bytes().chunks(7) {
            // The edge answers and closes as soon as the head is complete.
            if stream.write_all(piece).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut reply),
        )
        .await;
        let reply = String::from_utf8_lossy(&reply);
        assert_eq!(status_of(&reply), 400, "{shape:?} in pieces got: {reply}");
    }
    assert_eq!(
        upstream.count().await,
        0,
        "no refused shape reached the upstream"
    );
    assert!(server.log_shows("shield.framing_refused").await);
    // A good request on a kept-alive connection, then a bad one: the
    // guard follows the first body and still finds the second head.
    let first = "POST /x HTTP/1.1\r\nHost: echo.localhost\r\nContent-Length: 3\r\n\r\nabc";
    let second = "POST /x HTTP/1.1\r\nHost: echo.localhost\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nz";
    let answer = raw(server.edge, format!("{first}{second}").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("got 3"), "{answer}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    assert_eq!(upstream.count().await, 1, "only the good request arrived");

    // The plain forms still work, so the refusals are about the shapes.
    let answer = raw(server.edge, &post_chunked("echo.localhost", &[3])).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let answer = raw(server.edge, &post_with_length("echo.localhost", 3)).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
}

#[tokio::test]
async fn an_upgrade_answered_without_switching_keeps_the_framing_rules_on() {
    let (server, upstream, _token) = limited_server("").await;
    // Each asks for an upgrade the upstream (plain HTTP) does not grant:
    // the connection stays HTTP/1, so the head behind it is judged as any
    // other. Before, one Upgrade header switched the guard off and hyper
    // repaired the smuggled shape and forwarded it.
    let smuggled = "POST /x HTTP/1.1\r\nHost: echo.localhost\r\nContent-Length: 3\r\n\
                    Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    // (request, its status, whether it reaches the upstream)
    let upgrades = [
        (
            "POST /x HTTP/1.1\r\nHost: echo.localhost\r\nUpgrade: h2c\r\nContent-Length: 3\r\n\r\nabc",
            200,
            true,
        ),
        (
            "GET /x HTTP/1.1\r\nHost: echo.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            200,
            true,
        ),
        // A CONNECT asks for a tunnel in the same way; the edge refuses it.
        ("CONNECT a:1 HTTP/1.1\r\nHost: echo.localhost\r\n\r\n", 405, false),
    ];
    let mut arrived = 0;
    for (upgrade, status, reaches) in upgrades {
        let answer = raw(server.edge, format!("{upgrade}{smuggled}").as_bytes()).await;
        assert_eq!(status_of(&answer), status, "{upgrade:?} got: {answer}");
        assert!(answer.contains("HTTP/1.1 400"), "{upgrade:?} got: {answer}");
        arrived += u64::from(reaches);
        assert_eq!(
            upstream.count().await,
            arrived,
            "the smuggled request arrived: {answer}"
        );
    }
}

#[tokio::test]
async fn slow_clients_are_cut_off_while_others_keep_being_served() {
    let (server, _upstream, _token) =
        limited_server("[edge]\nheader_read_timeout_secs = 1\n").await;
    let started = Instant::now();

    // Five clients trickle one header byte every 200 ms.
    let mut slow = Vec::new();
    for _ in 0..5 {
        let edge = server.edge;
        slow.push(tokio::spawn(async move {
            let mut stream = connect_from(edge, "127.0.0.1").await;
            let head =
                b"GET / HTTP/1.1\r\nHost: static.localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
            for byte in head {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest));
            let _ = read.await;
            Instant::now()
        }));
    }

    // During the attack, a normal client is served again and again.
    let mut served = 0;
    while slow.iter().any(|t| !t.is_finished()) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the attack never ended"
        );
        let response = server.get("static.localhost", "/").await;
        assert_eq!(response.status(), 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served >= 5,
        "only {served} requests were served during the attack"
    );
    for task in slow {
        let cut_at = task.await.expect("join");
        // The header-read timeout is 1 s; the trickle would take 9 s.
        assert!(
            cut_at.duration_since(started) < Duration::from_secs(5),
            "a slow client kept its connection for {:?}",
            cut_at.duration_since(started)
        );
    }
}

#[tokio::test]
async fn a_client_gets_its_connection_cap_and_not_one_more() {
    let server = Server::start_with(&format!(
        "{LOOPBACK_UPSTREAMS}[shield]\nmax_connections_per_ip = 3\n"
    ));
    server.create_admin_and_login();
    static_site(&server, "static.localhost");
    let token = server.login_token().await;

    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect_from(server.edge, "127.0.0.1").await);
    }
    // A connect returns once the kernel has the connection; wait until
    // the edge has taken all three, or the fourth could be taken first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .metrics(&token)
        .await
        .lines()
        .any(|l| l == "spinforge_edge_open_connections 3")
    {
        assert!(Instant::now() < deadline, "the edge never took the three");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The fourth from the same address is closed without an answer...
    let answer = raw_from(
        server.edge,
        "127.0.0.1",
        get_head("static.localhost", "/", "").as_bytes(),
    )
    .await;
    assert_eq!(answer, "", "the fourth connection was served");
    // ...while another client address is served...
    let answer = raw_from(
        server.edge,
        "127.0.0.2",
        get_head("static.localhost", "/", "").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    // ...and closing one of the three makes room again.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = raw_from(
            server.edge,
            "127.0.0.1",
            get_head("static.localhost", "/", "").as_bytes(),
        )
        .await;
        if status_of(&answer) == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after closing a connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_answer_carries_security_headers_and_no_fingerprints() {
    let (server, _upstream, _token) = limited_server("").await;

    let page = server.get("static.localhost", "/").await;
    assert_eq!(page.status(), 200);
    let h = page.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "SAMEORIGIN");
    assert_eq!(h["referrer-policy"], "strict-origin-when-cross-origin");
    assert!(h.contains_key("permissions-policy"));
    let csp = h["content-security-policy"].to_str().expect("ascii");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(
        !h.contains_key("strict-transport-security"),
        "HSTS over plain HTTP"
    );
    assert!(!h.contains_key("server"));

    // The upstream says it is Python and PHP; the client never learns it.
    let proxied = server.get("echo.localhost", "/").await;
    assert_eq!(proxied.status(), 200);
    let h = proxied.headers();
    assert!(!h.contains_key("server"), "{h:?}");
    assert!(!h.contains_key("x-powered-by"), "{h:?}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(
        !h.contains_key("content-security-policy"),
        "CSP is off for proxied apps"
    );

    // The edge's own refusal pages name nothing internal either.
    let over = format!("/{}", "a".repeat(300));
    let refused = server.get("static.localhost", &over).await;
    assert_eq!(refused.status(), 414);
    assert_eq!(refused.headers()["x-content-type-options"], "nosniff");
    assert!(!refused.headers().contains_key("server"));
    let text = refused.text().await.expect("text");
    assert_eq!(text, "414 URI Too Long\n");
}
