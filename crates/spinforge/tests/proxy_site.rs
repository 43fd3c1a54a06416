//! Proxy sites through the real edge, in front of upstreams the tests run
//! on 127.0.0.1: a real Python file server, a raw TCP server that echoes
//! what reached it, a WebSocket echo server, a closed port and a silent
//! one. Also the upstream policy and the edge's slow-header cut-off.
//!
//! Every upstream lives only as long as its test; no traffic leaves the
//! loopback interface.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream as StdStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Longest any single upstream or client step may take in these tests.
const STEP: Duration = Duration::from_secs(10);

/// `python3 -m http.server` on a free port, killed when dropped.
struct PythonServer {
    child: Child,
    port: u16,
}

impl PythonServer {
    fn start(dir: &Path) -> PythonServer {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m http.server");
        let mut server = PythonServer { child, port };

        let deadline = Instant::now() + Duration::from_secs(15);
        while StdStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                panic!("python http.server did not accept on port {port}");
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("python http.server exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a test upstream got: the request head as sent, and the body.
struct Received {
    head: String,
    body: Vec<u8>,
}

/// Runs an HTTP/1.1 upstream on 127.0.0.1 that answers every request with
/// `answer(received)` and closes the connection. It stops with the test.
async fn spawn_upstream(answer: fn(Received) -> Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(Ok(received)) = tokio::time::timeout(STEP, read_request(stream)).await {
                    let (received, mut stream) = received;
                    let body = answer(received);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
                         content-length: {}\r\nconnection: close, x-up-hop\r\n\
                         x-up-hop: 1\r\nkeep-alive: timeout=5\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(&body).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Reads one request: the head up to the blank line, then a body framed by
/// `content-length` or chunked transfer coding.
async fn read_request(stream: TcpStream) -> std::io::Result<(Received, TcpStream)> {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push_str(&line);
        if line == "\r\n" || head.len() > 64 * 1024 {
            break;
        }
    }

    let headers = parse_headers(&head);
    let mut body = Vec::new();
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.iter().any(|v| v.contains("chunked")));
    if chunked {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line).await?;
            let size_hex = size_line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            if size == 0 {
                // Trailers, then the final blank line.
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).await?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf).await?;
        }
    } else if let Some(length) = headers.get("content-length") {
        let length: usize = length[0]
            .parse()
            .map_err(|_| std::io::Error::other("bad length"))?;
        body.resize(length, 0);
        reader.read_exact(&mut body).await?;
    }
    Ok((Received { head, body }, reader.into_inner()))
}

/// Header lines of a request or response head, by lower-case name.
fn parse_headers(head: &str) -> HashMap<String, Vec<String>> {
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for line in head.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            headers
                .entry(name.trim().to_ascii_lowercase())
                .or_default()
                .push(value.trim().to_owned());
        }
    }
    headers
}

/// Creates a proxy site through the API; returns the API's status and body.
async fn create_proxy_site(
    server: &Server,
    token: &str,
    domain: &str,
    upstream: &str,
) -> (u16, Value) {
    let response = http()
        .post(format!("{}/api/v1/sites", server.api_url()))
        .bearer_auth(token)
        .json(&json!({ "domain": domain, "type": "proxy", "upstream": upstream }))
        .send()
        .await
        .expect("create site");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

async fn proxy_site(server: &Server, domain: &str, upstream: &str) {
    let token = server.admin_token().await;
    let (status, body) = create_proxy_site(server, &token, domain, upstream).await;
    assert_eq!(status, 201, "{body}");
}

/// Waits, bounded, for `needle` to show up in the server log.
async fn wait_for_log(server: &Server, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if server.log().contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn files_from_a_real_upstream_arrive_intact() {
    let files = tempfile::tempdir().expect("upstream dir");
    let large = pseudo_random(3 * 1024 * 1024, 11);
    write_tree(
        files.path(),
        &[("hello.txt", b"hello from python"), ("big.bin", &large)],
    );
    let python = PythonServer::start(files.path());
    let server = Server::start();
    let upstream = format!("http://127.0.0.1:{}", python.port);
    proxy_site(&server, "py.localhost", &upstream).await;

    let response = server.get("py.localhost", "/hello.txt").await;
    assert_eq!(response.status(), 200);
    let request_id = response
        .headers()
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(!request_id.is_empty());
    assert_eq!(
        response.bytes().await.expect("body").as_ref(),
        b"hello from python"
    );

    let response = server.get("py.localhost", "/big.bin").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let got = response.bytes().await.expect("body");
    assert_eq!(got.len(), large.len());
    assert_eq!(sha256_hex(&got), sha256_hex(&large));

    let response = server.get("py.localhost", "/missing.txt").await;
    assert_eq!(
        response.status(),
        404,
        "the upstream's status passes through"
    );
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_removed() {
    let upstream = spawn_upstream(|received| received.head.into_bytes()).await;
    let server = Server::start();
    proxy_site(&server, "echo.localhost", &format!("http://{upstream}")).await;

    let response = http()
        .get(server.edge_url("/echo?q=1"))
        .header("host", "echo.localhost")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-request-id", "chosen-by-client")
        .header("connection", "close, x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("client-ip", "6.6.6.6")
        .header("x-forwarded-ssl", "on")
        .header("x-end-to-end", "kept")
        .send()
        .await
        .expect("edge request");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("x-up-hop").is_none(),
        "a header the upstream named in Connection reached the client"
    );
    assert!(response.headers().get("keep-alive").is_none());
    let request_id = response
        .headers()
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()
        .expect("ascii")
        .to_owned();
    let head = response.text().await.expect("echoed head");
    let sent = parse_headers(&head);
    let one = |name: &str| -> &str {
        match sent.get(name).map(Vec::as_slice) {
            Some([value]) => value,
            other => panic!("{name}: want exactly one value, got {other:?}\n{head}"),
        }
    };

    assert!(head.starts_with("GET /echo?q=1 HTTP/1.1\r\n"), "{head}");
    assert_eq!(one("x-forwarded-for"), "127.0.0.1", "{head}");
    assert_eq!(one("x-forwarded-proto"), "http");
    assert_eq!(one("x-forwarded-host"), "echo.localhost");
    assert_eq!(one("x-request-id"), request_id);
    assert_ne!(request_id, "chosen-by-client", "an untrusted id was kept");
    assert_eq!(one("x-end-to-end"), "kept");
    for dropped in [
        "x-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "forwarded",
        "client-ip",
        "x-forwarded-ssl",
    ] {
        assert!(
            !sent.contains_key(dropped),
            "{dropped} was forwarded\n{head}"
        );
    }
}

#[tokio::test]
async fn a_trusted_proxy_is_appended_to_forwarded_for_and_names_the_scheme() {
    let upstream = spawn_upstream(|received| received.head.into_bytes()).await;
    let server = Server::start_with(&format!(
        "{LOOPBACK_UPSTREAMS}[edge]\ntrusted_proxies = [\"127.0.0.2/32\"]\n"
    ));
    proxy_site(&server, "echo.localhost", &format!("http://{upstream}")).await;
    let sent = |source: &'static str| {
        let url = server.edge_url("/");
        async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .local_address(source.parse::<std::net::IpAddr>().expect("ip"))
                .timeout(STEP)
                .build()
                .expect("client");
            let response = client
                .get(url)
                .header("host", "echo.localhost")
                .header("x-forwarded-for", "198.51.100.7")
                .header("x-forwarded-proto", "https")
                .send()
                .await
                .expect("edge request");
            assert_eq!(response.status(), 200);
            parse_headers(&response.text().await.expect("echoed head"))
        }
    };
    // From the trusted proxy: its list, then the proxy itself; the scheme
    // the proxy's client used.
    let head = sent("127.0.0.2").await;
    assert_eq!(head["x-forwarded-for"], ["198.51.100.7, 127.0.0.2"]);
    assert_eq!(head["x-forwarded-proto"], ["https"]);
    // From anyone else both are the edge's own view.
    let head = sent("127.0.0.1").await;
    assert_eq!(head["x-forwarded-for"], ["127.0.0.1"]);
    assert_eq!(head["x-forwarded-proto"], ["http"]);
}

#[tokio::test]
async fn a_client_that_goes_away_ends_its_upstream_request() {
    // An upstream that reads a request, never answers, and reports when
    // the request has arrived and when the edge closes the connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let (events_tx, mut events) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let events_tx = events_tx.clone();
            tokio::spawn(async move {
                let Ok(Ok((_, mut stream))) =
                    tokio::time::timeout(STEP, read_request(stream)).await
                else {
                    return;
                };
                let _ = events_tx.send("arrived").await;
                let mut rest = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(120), stream.read_to_end(&mut rest))
                        .await;
                let _ = events_tx.send("closed").await;
            });
        }
    });
    let server = Server::start();
    proxy_site(&server, "slow.localhost", &format!("http://{upstream}")).await;
    let mut client = TcpStream::connect(server.edge).await.expect("connect");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: slow.localhost\r\n\r\n")
        .await
        .expect("write");
    let arrived = tokio::time::timeout(STEP, events.recv()).await;
    assert_eq!(arrived.expect("request in time"), Some("arrived"));
    drop(client);
    // The edge would wait 60 s for the answer (its response timeout); it
    // must give up long before, when it sees its client gone.
    let closed = tokio::time::timeout(STEP, events.recv()).await;
    assert_eq!(
        closed.expect("the upstream request ended when its client went away"),
        Some("closed")
    );
}

#[tokio::test]
async fn an_http_1_0_upstream_does_not_end_the_clients_keep_alive() {
    // Answers each connection once, in HTTP/1.0, and closes it.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(Ok((_, mut stream))) =
                    tokio::time::timeout(STEP, read_request(stream)).await
                {
                    let _ = stream
                        .write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    let server = Server::start();
    proxy_site(&server, "old.localhost", &format!("http://{upstream}")).await;
    let stream = TcpStream::connect(server.edge).await.expect("connect");
    let mut stream = BufReader::new(stream);
    for round in 0..2 {
        stream
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: old.localhost\r\n\r\n")
            .await
            .expect("write");
        let mut status = String::new();
        tokio::time::timeout(STEP, stream.read_line(&mut status))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "round {round}: {status:?}"
        );
        let mut length = 0;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.expect("header");
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().expect("length");
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.expect("body");
        assert_eq!(body, b"ok");
    }
}

/// Size of the uploaded request bodies (bytes).
const UPLOAD: usize = 2 * 1024 * 1024;

#[tokio::test]
async fn request_bodies_stream_to_the_upstream_intact() {
    // The answer also says how the body was framed: many servers read
    // only Content-Length, so a length the client declared must reach
    // the upstream, also for a body past the WAF's inspection window
    // (which passes such a body on without a size of its own).
    let upstream = spawn_upstream(|received| {
        let headers = parse_headers(&received.head);
        let framing = match headers.get("content-length") {
            Some(length) => format!("length {}", length[0]),
            None => "chunked".to_owned(),
        };
        let (len, sha) = (received.body.len(), sha256_hex(&received.body));
        format!("{len} {sha} {framing}").into_bytes()
    })
    .await;
    let server = Server::start();
    proxy_site(&server, "upload.localhost", &format!("http://{upstream}")).await;
    let payload = pseudo_random(UPLOAD, 3);
    let expected = format!("{UPLOAD} {}", sha256_hex(&payload));

    // With a known length.
    let response = http()
        .post(server.edge_url("/upload"))
        .header("host", "upload.localhost")
        .body(payload.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.expect("text"),
        format!("{expected} length {UPLOAD}")
    );

    // Streamed in chunks, with no length up front.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        payload.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let response = http()
        .post(server.edge_url("/upload"))
        .header("host", "upload.localhost")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("streamed post");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.expect("text"),
        format!("{expected} chunked")
    );
}

/// A WebSocket server on 127.0.0.1 that echoes text and binary messages.
async fn spawn_websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                    common::echo_messages(ws).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_messages_echo_through_the_edge() {
    use tokio_tungstenite::tungstenite::Message;

    let upstream = spawn_websocket_echo().await;
    let server = Server::start();
    proxy_site(&server, "ws.localhost", &format!("http://{upstream}")).await;

    let (mut ws, response) = ws_connect(&server, "ws://ws.localhost/chat").await;
    assert_eq!(response.status(), 101);
    assert!(response.headers().contains_key("x-request-id"));

    let binary = pseudo_random(100_000, 5);
    let messages = [
        Message::text("hello through the edge"),
        Message::binary(binary.clone()),
        Message::text("ünïcödé ✓"),
    ];
    echo_then_close(&mut ws, &messages, STEP).await;
}

/// A keep-alive upstream that, like many servers, never reads the body
/// of a GET: it answers each head and reads the next one from what
/// follows, unless the request said `Connection: close` (which HTTP/1.1
/// servers must honour). Returns its address and the request lines it has
/// parsed.
async fn spawn_body_ignoring_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Ok(Some(request_line))) =
                    tokio::time::timeout(STEP, lines.next_line()).await
                {
                    if request_line.is_empty() {
                        continue;
                    }
                    log.lock().expect("log").push(request_line);
                    let mut close = false;
                    while let Ok(Some(line)) = lines.next_line().await {
                        if line.is_empty() {
                            break;
                        }
                        close |= line.eq_ignore_ascii_case("connection: close");
                    }
                    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if write.write_all(answer.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_get_body_cannot_smuggle_a_request_on_a_reused_upstream_connection() {
    let (upstream, seen) = spawn_body_ignoring_upstream().await;
    let server = Server::start();
    let token = server.admin_token().await;
    let upstream_url = format!("http://{upstream}");
    let (status, body) = create_proxy_site(&server, &token, "cl0.localhost", &upstream_url).await;
    assert_eq!(status, 201, "{body}");
    // This test is about the proxy, not the WAF, which might flag the
    // body first.
    server.waf_off(&token, "cl0.localhost").await;

    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: cl0.localhost\r\n\r\n";
    let request = format!(
        "GET / HTTP/1.1\r\nHost: cl0.localhost\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{smuggled}",
        smuggled.len()
    );
    assert_eq!(raw_status(&server, &request).await, 200);
    // Other requests after it, which would reuse a pooled connection.
    for _ in 0..3 {
        assert_eq!(server.get("cl0.localhost", "/after").await.status(), 200);
    }
    let seen = seen.lock().expect("log").clone();
    assert!(
        !seen.iter().any(|line| line.contains("/smuggled")),
        "the body was parsed as a request: {seen:?}"
    );
    assert_eq!(seen.len(), 4, "{seen:?}");
}

/// Sends `head` as-is on a new connection and returns what came back
/// before the edge closed it (at most STEP).
async fn raw_reply(edge: SocketAddr, head: &str) -> String {
    let mut stream = TcpStream::connect(edge).await.expect("connect");
    // A refused connection may be closed before the request is written.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut reply = Vec::new();
    let read = tokio::time::timeout(STEP, stream.read_to_end(&mut reply));
    let _ = read.await.expect("the edge answered or closed in time");
    String::from_utf8_lossy(&reply).into_owned()
}

/// What the edge sent back to a GET for `host` on a new connection.
async fn raw_get(edge: SocketAddr, host: &str) -> String {
    let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    raw_reply(edge, &head).await
}

#[tokio::test]
async fn websockets_count_against_the_per_client_connection_cap() {
    use tokio_tungstenite::tungstenite::Message;

    let upstream = spawn_websocket_echo().await;
    let server = Server::start_with(&format!(
        "{LOOPBACK_UPSTREAMS}[shield]\nmax_connections_per_ip = 2\n"
    ));
    let token = server.admin_token().await;
    let upstream_url = format!("http://{upstream}");
    let (status, body) = create_proxy_site(&server, &token, "ws.localhost", &upstream_url).await;
    assert_eq!(status, 201, "{body}");

    let mut sockets = Vec::new();
    for _ in 0..2 {
        let (mut ws, response) = ws_connect(&server, "ws://ws.localhost/chat").await;
        assert_eq!(response.status(), 101);
        echo_once(&mut ws).await;
        sockets.push(ws);
    }
    // Both are upgraded and open: a third connection is over the cap.
    // Before, an upgraded connection no longer counted.
    assert_eq!(raw_get(server.edge, "ws.localhost").await, "");
    // The gauge agrees with the cap: the two WebSockets are open.
    let metrics = server.metrics(&token).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "spinforge_edge_open_connections 2"),
        "{metrics}"
    );

    // Closing one makes room again.
    let mut ws = sockets.pop().expect("socket");
    ws.close(None).await.expect("close");
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    let deadline = Instant::now() + STEP;
    loop {
        let answer = raw_get(server.edge, "ws.localhost").await;
        if !answer.is_empty() {
            assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after closing a WebSocket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The other one still works.
    let mut ws = sockets.pop().expect("socket");
    echo_then_close(&mut ws, &[Message::text("still here")], STEP).await;
}

#[tokio::test]
async fn websocket_bytes_sent_with_the_handshake_arrive_after_it_in_order() {
    // The edge holds back what follows an upgrade request until the
    // answer is known; a client that sends its first frames right behind
    // the handshake must still have them delivered, in order.
    let upstream = spawn_websocket_echo().await;
    let server = Server::start();
    proxy_site(&server, "early.localhost", &format!("http://{upstream}")).await;
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let frame = |text: &[u8]| {
        // A masked text frame, as clients send them.
        let mut frame = vec![0x81, 0x80 | u8::try_from(text.len()).expect("short")];
        frame.extend(mask);
        frame.extend(text.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        frame
    };
    let mut bytes = b"GET /chat HTTP/1.1\r\nHost: early.localhost\r\nConnection: Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    bytes.extend(frame(b"first"));
    bytes.extend(frame(b"second"));
    let mut stream = TcpStream::connect(server.edge).await.expect("connect");
    stream.write_all(&bytes).await.expect("write");
    // The 101 head, then the two echoed (unmasked) frames.
    let want_tail = [&[0x81u8, 5][..], b"first", &[0x81, 6], b"second"].concat();
    let mut reply = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !reply.ends_with(&want_tail) {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&reply));
            reply.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(STEP, read)
        .await
        .expect("echoes in time");
    let head_end = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head")
        + 4;
    assert!(
        reply.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(&reply[head_end..], &want_tail[..]);
}

/// A WebSocket handshake with the edge for `url` (its host picks the
/// site).
async fn ws_connect(
    server: &Server,
    url: &str,
) -> (
    tokio_tungstenite::WebSocketStream<TcpStream>,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = url.into_client_request().expect("request");
    let stream = TcpStream::connect(server.edge).await.expect("connect edge");
    tokio::time::timeout(STEP, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// One message echoed on `ws`, which stays open.
async fn echo_once<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text("ping")).await.expect("send");
    let echoed = tokio::time::timeout(STEP, ws.next())
        .await
        .expect("echo in time")
        .expect("a message")
        .expect("no error");
    assert_eq!(echoed, Message::text("ping"));
}

#[tokio::test]
async fn a_down_upstream_gets_502_that_names_no_address() {
    let port = free_port();
    let server = Server::start();
    let upstream = format!("http://127.0.0.1:{port}");
    proxy_site(&server, "down.localhost", &upstream).await;

    let response = server.get("down.localhost", "/").await;
    assert_eq!(response.status(), 502);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .expect("type")
            .to_str()
            .expect("ascii"),
        "text/plain; charset=utf-8"
    );
    assert!(response.headers().contains_key("x-request-id"));
    let text = response.text().await.expect("text");
    assert_eq!(text, "502 Bad Gateway\n");
    assert!(!text.contains("127.0.0.1") && !text.contains(&port.to_string()));
    assert!(
        wait_for_log(&server, "proxy request failed").await,
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn a_silent_upstream_gets_504_after_the_response_timeout() {
    // Accepts connections and holds them open without a word.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let server = Server::start_with(&format!("{LOOPBACK_UPSTREAMS}response_timeout_secs = 1\n"));
    proxy_site(&server, "slow.localhost", &format!("http://{upstream}")).await;

    let started = Instant::now();
    let response = server.get("slow.localhost", "/").await;
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < STEP, "took {:?}", started.elapsed());
    let text = response.text().await.expect("text");
    assert_eq!(text, "504 Gateway Timeout\n");
    assert!(!text.contains(&upstream.port().to_string()));
    assert!(
        wait_for_log(&server, "proxy request failed").await,
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn an_upstream_switching_protocols_unasked_gets_502() {
    // Answers any request, upgrade or not, with 101 and holds the
    // connection open.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            if let Ok(Ok((_, mut stream))) = tokio::time::timeout(STEP, read_request(stream)).await
            {
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                          connection: upgrade\r\n\r\n",
                    )
                    .await;
                held.push(stream);
            }
        }
    });
    let server = Server::start();
    proxy_site(&server, "switch.localhost", &format!("http://{upstream}")).await;

    let response = server.get("switch.localhost", "/").await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.text().await.expect("text"), "502 Bad Gateway\n");
    assert!(
        wait_for_log(&server, "switched protocols without an upgrade request").await,
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn a_switch_to_another_protocol_than_the_websocket_asked_for_gets_502() {
    // Answers a WebSocket handshake with a switch to h2c, then echoes
    // whatever arrives (a tunnel would carry the client's next bytes).
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(Ok((_, mut stream))) =
                    tokio::time::timeout(STEP, read_request(stream)).await
                else {
                    return;
                };
                let head = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\
                             connection: upgrade\r\n\r\n";
                if stream.write_all(head).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(Ok(n @ 1..)) = tokio::time::timeout(STEP, stream.read(&mut buf)).await
                {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let server = Server::start();
    proxy_site(&server, "h2c.localhost", &format!("http://{upstream}")).await;

    let mut client = TcpStream::connect(server.edge).await.expect("connect");
    client
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: h2c.localhost\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(STEP, client.read_u8())
            .await
            .expect("an answer in time")
            .unwrap_or_else(|e| panic!("{e} after {:?}", String::from_utf8_lossy(&head)));
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(
        wait_for_log(&server, "another protocol than the WebSocket asked for").await,
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn private_and_metadata_upstreams_are_refused_without_an_allowlist() {
    let port = free_port();
    let server = Server::start_with("");
    let token = server.admin_token().await;
    for (i, upstream) in [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}/"),
        "http://169.254.169.254/".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "http://[::1]:8080/".to_owned(),
        "http://[::ffff:127.0.0.1]/".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        let domain = format!("p{i}.localhost");
        let (status, body) = create_proxy_site(&server, &token, &domain, upstream).await;
        assert_eq!(status, 400, "{upstream}: {body}");
        assert_eq!(body["error"]["code"], "invalid", "{upstream}");
        assert_eq!(body["error"]["field"], "upstream", "{upstream}");
        assert_eq!(server.get(&domain, "/").await.status(), 404);
    }

    // The loopback allowlist does not open the metadata address.
    let server = Server::start();
    let token = server.admin_token().await;
    let (status, body) =
        create_proxy_site(&server, &token, "meta.localhost", "http://169.254.169.254/").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "upstream");
}

/// An edge with a one-second header-read timeout.
fn impatient_server() -> Server {
    Server::start_with(&format!(
        "{LOOPBACK_UPSTREAMS}[edge]\nheader_read_timeout_secs = 1\n"
    ))
}

/// Reads until the edge closes the connection, for at most 10 s from
/// `started`. Returns whatever the edge sent, or `None` if it stayed open.
async fn read_until_closed(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    started: Instant,
) -> Option<String> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let left = Duration::from_secs(10).saturating_sub(started.elapsed());
        match tokio::time::timeout(left, reader.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&answer).into_owned()),
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn slow_request_headers_are_cut_off() {
    let server = impatient_server();
    let stream = TcpStream::connect(server.edge).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();

    // One byte every 200 ms: never idle, never a whole request line.
    let trickle = tokio::spawn(async move {
        let partial = b"GET /a-request-line-that-never-ends-because-the-client-is-slow";
        for byte in partial {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let answer = read_until_closed(&mut reader, started).await;
    trickle.abort();
    let answer = answer.unwrap_or_else(|| {
        panic!(
            "the connection was still open after {:?}",
            started.elapsed()
        )
    });
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "unexpected answer: {answer}"
    );
}

#[tokio::test]
async fn a_connection_that_never_speaks_is_cut_off() {
    let server = impatient_server();
    let mut stream = TcpStream::connect(server.edge).await.expect("connect");
    let started = Instant::now();
    let answer = read_until_closed(&mut stream, started).await;
    assert!(
        answer.is_some(),
        "a silent connection was still open after {:?}",
        started.elapsed()
    );
}

/// Sends `head` as-is over a new connection and returns the status code.
async fn raw_status(server: &Server, head: &str) -> u16 {
    raw_reply(server.edge, head)
        .await
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line")
}

#[tokio::test]
async fn dot_segments_cannot_climb_out_of_an_upstream_base_path() {
    let root = tempfile::tempdir().expect("dir");
    write_tree(
        root.path(),
        &[("base/index.html", b"inside"), ("secret.txt", b"OUTSIDE")],
    );
    let upstream = PythonServer::start(root.path());
    let server = Server::start();
    let token = server.admin_token().await;
    let created = http()
        .post(format!("{}/api/v1/sites", server.api_url()))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "domain": "pb.localhost", "type": "proxy",
            "upstream": format!("http://127.0.0.1:{}/base", upstream.port)
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    assert_eq!(
        server
            .get("pb.localhost", "/index.html")
            .await
            .text()
            .await
            .expect("body"),
        "inside"
    );

    let paths = [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/x/../../secret.txt",
        "/%2E%2E/secret.txt",
    ];
    let head = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: pb.localhost\r\nConnection: close\r\n\r\n")
    };
    // The WAF (on by default) answers 403 to some of these first; this
    // test is about the proxy's own rule, so the site's WAF is off.
    server.waf_off(&token, "pb.localhost").await;
    for path in paths {
        assert_eq!(raw_status(&server, &head(path)).await, 400, "{path}");
    }
}

#[tokio::test]
async fn a_request_with_two_host_headers_is_not_routed() {
    let server = Server::start_in_workspace(&["--demo"]);
    let one = "GET / HTTP/1.1\r\nHost: hello.localhost\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(&server, one).await, 200);
    let two = "GET / HTTP/1.1\r\nHost: hello.localhost\r\nHost: other.localhost\r\n\
               Connection: close\r\n\r\n";
    assert_ne!(raw_status(&server, two).await, 200);
}

#[tokio::test]
async fn connect_is_refused_not_forwarded() {
    // The upstream would answer anything it got with 200.
    let upstream = spawn_upstream(|received| received.head.into_bytes()).await;
    let server = Server::start();
    proxy_site(&server, "tunnel.localhost", &format!("http://{upstream}")).await;
    let get = "GET / HTTP/1.1\r\nHost: tunnel.localhost\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(&server, get).await, 200);
    for target in ["tunnel.localhost:80", "127.0.0.1:22", "example.com:443"] {
        let connect =
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw_status(&server, &connect).await, 405, "{target}");
    }
}
