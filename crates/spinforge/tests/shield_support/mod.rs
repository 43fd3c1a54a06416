//! Helpers of the shield's black-box tests: a real Python upstream that
//! reads request bodies and counts what reached it, raw HTTP/1.1 over TCP
//! for shapes no well-behaved client sends, clients bound to a chosen
//! loopback source address, and the debug build's test clock.
//!
//! Everything here talks to servers on 127.0.0.0/8 that the tests start.
#![allow(dead_code)]

use crate::common::*;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr, TcpStream as StdStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The upstream: `GET /count` answers how many other requests arrived;
/// `/login` answers 401; anything else reads the whole body (by length or
/// chunked) and answers `got N`, with the fingerprint headers a typical
/// app server sends.
const UPSTREAM: &str = r#"
import sys, threading, http.server
count = 0
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("X-Powered-By", "PHP/8.1.2")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def handle_any(self):
        global count
        if self.path == "/count":
            with lock:
                return self.answer(200, str(count))
        with lock:
            count += 1
        if self.path == "/login":
            return self.answer(401, "bad password")
        n = 0
        if self.headers.get("Transfer-Encoding", "") == "chunked":
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                n += len(self.rfile.read(size))
                self.rfile.readline()
        else:
            n = len(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        self.answer(200, "got %d" % n)
    do_GET = do_POST = do_PUT = handle_any
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

pub struct Upstream {
    child: Child,
    pub port: u16,
}

impl Upstream {
    pub fn start() -> Upstream {
        let port = crate::common::free_port();
        let child = Command::new("python3")
            .args(["-c", UPSTREAM, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3");
        let mut upstream = Upstream { child, port };
        let deadline = Instant::now() + Duration::from_secs(15);
        while StdStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "upstream did not start");
            if let Ok(Some(status)) = upstream.child.try_wait() {
                panic!("upstream exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        upstream
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests that reached the upstream (other than `/count`).
    pub async fn count(&self) -> u64 {
        let text = http()
            .get(format!("{}/count", self.url()))
            .send()
            .await
            .expect("count")
            .text()
            .await
            .expect("text");
        text.parse().expect("number")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a proxy site through the API.
pub async fn proxy_site(server: &Server, token: &str, domain: &str, upstream: &str) {
    let response = http()
        .post(format!("{}/api/v1/sites", server.api_url()))
        .bearer_auth(token)
        .json(&json!({ "domain": domain, "type": "proxy", "upstream": upstream }))
        .send()
        .await
        .expect("create site");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 201, "{body}");
}

/// Deploys a one-page static site with the CLI (logged in already).
pub fn static_site(server: &Server, domain: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tree(dir.path(), &[("index.html", b"<h1>hello</h1>\n")]);
    let out = server.cli(
        &[
            "deploy",
            dir.path().to_str().expect("utf-8"),
            "--domain",
            domain,
        ],
        None,
    );
    assert_ok(&out);
}

/// A client whose connections come from `source` (any 127.x address).
pub fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .local_address(source.parse::<IpAddr>().expect("ip"))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// GET `path` at `host` through the edge with `client`; extra headers.
pub async fn get(
    server: &Server,
    client: &reqwest::Client,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client.get(server.edge_url(path)).header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("edge request")
}

/// GET `/` at `host` from 127.0.0.1 with no extra headers.
pub async fn plain_get(server: &Server, host: &str) -> reqwest::Response {
    get(server, &client_from("127.0.0.1"), host, "/", &[]).await
}

/// Moves the shield's clock forward (the debug build's test-only route).
pub async fn advance_clock(server: &Server, token: &str, secs: u64) {
    let response = http()
        .post(format!("{}/api/v1/shield/test-clock", server.api_url()))
        .bearer_auth(token)
        .json(&json!({ "advance_secs": secs }))
        .send()
        .await
        .expect("test clock");
    assert_eq!(response.status(), 204);
}

/// Sends `bytes` as-is on a new connection from 127.0.0.1 and returns
/// everything the edge sent until it closed (at most 10 s).
pub async fn raw(edge: SocketAddr, bytes: &[u8]) -> String {
    raw_from(edge, "127.0.0.1", bytes).await
}

pub async fn raw_from(edge: SocketAddr, source: &str, bytes: &[u8]) -> String {
    let mut stream = connect_from(edge, source).await;
    // A refused connection may be closed before the request is written.
    let _ = stream.write_all(bytes).await;
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply));
    match read.await {
        Ok(Ok(_)) => {}
        // A reset after the answer (the edge closed with unread input).
        Ok(Err(_)) => {}
        Err(_) => panic!("the edge did not close the connection in 10 s"),
    }
    String::from_utf8_lossy(&reply).into_owned()
}

pub async fn connect_from(edge: SocketAddr, source: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    let source: IpAddr = source.parse().expect("ip");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source");
    socket.connect(edge).await.expect("connect")
}

/// The status code of a raw HTTP/1.1 answer; 0 when there was none.
pub fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// One header of a raw answer, if present (case-insensitive name).
pub fn header_of<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A GET, PUT or DELETE on the API with the token; status and JSON body.
pub async fn api(
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

/// Waits, bounded, for `needle` in the server log.
pub async fn wait_for_log(server: &Server, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "`{needle}` never appeared in the log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
