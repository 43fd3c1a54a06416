//! The lifecycle of process sites through the real `serve`: an app starts
//! on the first request (once, however many race), stops when idle but not
//! while a request or WebSocket is open, is restarted after a crash and
//! marked failed after a crash loop, is stopped gracefully or killed, and
//! leaves no process behind when `serve` restarts or dies. Each test writes
//! a small Python app, so every behaviour can be provoked on purpose.

mod common;

use common::*;
use flate2::write::GzEncoder;
use flate2::Compression;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::Write;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, MutexGuard};

/// How often a waiting test looks again.
const POLL: Duration = Duration::from_millis(200);

/// The test app, on Python's standard library only. `/` answers with its
/// pid and port, `/slow` after 4 s, `/crash` by dying, `/ws` is a
/// WebSocket echo (short messages). `EXIT_AFTER_SECS` makes it die by
/// itself that long after it starts; `IGNORE_TERM` makes it ignore SIGTERM.
const APP_PY: &str = r#"
import base64, hashlib, json, os, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ["PORT"])
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, payload):
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            self.reply({"ok": True})
        elif self.path == "/":
            self.reply({"pid": os.getpid(), "port": PORT})
        elif self.path == "/slow":
            time.sleep(4)
            self.reply({"pid": os.getpid(), "slept_secs": 4})
        elif self.path == "/crash":
            os._exit(1)
        elif self.path == "/ws":
            self.echo()
        else:
            print(f"no route for {self.path}", flush=True)
            self.send_error(404)

    def echo(self):
        key = self.headers["Sec-WebSocket-Key"] + WS_GUID
        accept = base64.b64encode(hashlib.sha1(key.encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.close_connection = True
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(self.rfile.read(2), "big")
            elif length == 127:
                length = int.from_bytes(self.rfile.read(8), "big")
            mask = self.rfile.read(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 0x8:
                self.wfile.write(bytes([0x88, len(data)]) + data)
                return
            if opcode in (0x1, 0x2) and len(data) < 126:
                self.wfile.write(bytes([0x80 | opcode, len(data)]) + data)

    def log_message(self, fmt, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def stop(*_):
    print("stopping: got SIGTERM", flush=True)
    sys.exit(0)


if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, stop)
server = Server((os.environ["HOST"], PORT), Handler)
if os.environ.get("EXIT_AFTER_SECS"):
    timer = threading.Timer(float(os.environ["EXIT_AFTER_SECS"]), os._exit, args=(1,))
    timer.daemon = True
    timer.start()
print(f"listening on port {PORT} as pid {os.getpid()}", flush=True)
server.serve_forever()
"#;

/// One release of the test app: [`APP_PY`] and its manifest.
struct App {
    /// Extra lines for `[app]`.
    settings: Vec<String>,
    /// Lines for `[env]`.
    env: Vec<String>,
}

impl App {
    fn new() -> App {
        App {
            settings: Vec::new(),
            env: Vec::new(),
        }
    }

    fn set(mut self, line: &str) -> App {
        self.settings.push(line.to_owned());
        self
    }

    fn env(mut self, name: &str, value: &str) -> App {
        self.env.push(format!("{name} = {value:?}"));
        self
    }

    fn manifest(&self) -> String {
        let mut text =
            String::from("[app]\ncommand = [\"python3\", \"app.py\"]\nhealth_path = \"/health\"\n");
        for line in &self.settings {
            text.push_str(line);
            text.push('\n');
        }
        if !self.env.is_empty() {
            text.push_str("\n[env]\n");
            for line in &self.env {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    fn write_to(&self, dir: &Path) {
        let manifest = self.manifest();
        write_tree(
            dir,
            &[
                ("app.py", APP_PY.as_bytes()),
                ("spinforge.toml", manifest.as_bytes()),
            ],
        );
    }

    /// The release as the tar.gz the upload endpoint takes.
    fn bundle(&self) -> Vec<u8> {
        let manifest = self.manifest();
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in [("app.py", APP_PY), ("spinforge.toml", &manifest)] {
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
}

/// Tests here take turns. Every `serve` hands out app ports from the same
/// range, and a port is only free-checked, not held, until the app binds
/// it: two servers starting apps at one moment could hand out one port
/// twice and health-check each other's app.
static TURN: Mutex<()> = Mutex::const_new(());

/// A server with an admin token, whose apps die with it: on drop, `serve`
/// gets SIGTERM (so it stops its apps) and any process still running in
/// its data directory is then killed, so a failed test leaves nothing.
struct Host {
    server: Option<Server>,
    token: String,
    /// The canonical data directory: apps run in release folders under it.
    data_dir: PathBuf,
    /// Keeps the data directory until the leftovers are reaped.
    _root: Arc<tempfile::TempDir>,
    _turn: MutexGuard<'static, ()>,
}

impl Deref for Host {
    type Target = Server;

    fn deref(&self) -> &Server {
        self.server.as_ref().expect("serve is running")
    }
}

impl DerefMut for Host {
    fn deref_mut(&mut self) -> &mut Server {
        self.server.as_mut().expect("serve is running")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server.stop();
        }
        for pid in app_pids(&self.data_dir) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

impl Host {
    async fn start() -> Host {
        let turn = TURN.lock().await;
        let server = Server::start();
        let token = server.admin_token().await;
        let data_dir = std::fs::canonicalize(&server.data_dir).expect("data dir");
        Host {
            _root: server.root.clone(),
            server: Some(server),
            token,
            data_dir,
            _turn: turn,
        }
    }

    /// Stops `serve` with SIGTERM and waits for it to exit, without
    /// starting a new one: what is still running now, the old serve left.
    fn stop_serve(&mut self) {
        self.server.as_mut().expect("serve").stop();
    }

    /// Stops `serve` with SIGTERM (if it still runs) and starts it again on
    /// the same data directory.
    async fn restart_serve(&mut self) {
        let server = self.server.take().expect("serve").restart();
        self.token = login(&server).await;
        self.server = Some(server);
    }

    fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        http()
            .request(method, format!("{}/api/v1{path}", self.api_url()))
            .bearer_auth(&self.token)
    }

    /// Creates the process site and deploys `app` to it.
    async fn deploy_new(&self, domain: &str, app: &App) {
        let created = self
            .api(reqwest::Method::POST, "/sites")
            .json(&json!({ "domain": domain, "type": "process" }))
            .send()
            .await
            .expect("create site");
        let status = created.status();
        assert_eq!(status, 201, "{}", created.text().await.expect("body"));
        self.deploy(domain, app).await;
    }

    async fn deploy(&self, domain: &str, app: &App) {
        let uploaded = self
            .api(reqwest::Method::POST, &format!("/sites/{domain}/releases"))
            .body(app.bundle())
            .send()
            .await
            .expect("upload");
        let status = uploaded.status();
        let body = uploaded.text().await.expect("body");
        assert_eq!(status, 201, "deploy to {domain}: {body}");
    }

    /// The `spinlet` part of the site's status.
    async fn spinlet(&self, domain: &str) -> Value {
        let response = self
            .api(reqwest::Method::GET, &format!("/sites/{domain}/status"))
            .send()
            .await
            .expect("status");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        body["spinlet"].clone()
    }

    async fn app_log(&self, domain: &str) -> Vec<String> {
        let response = self
            .api(
                reqwest::Method::GET,
                &format!("/sites/{domain}/logs?lines=5000&since=10m"),
            )
            .send()
            .await
            .expect("logs");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        body["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .map(|line| line.as_str().expect("line").to_owned())
            .collect()
    }

    async fn restart_app(&self, domain: &str) {
        let response = self
            .api(reqwest::Method::POST, &format!("/sites/{domain}/restart"))
            .send()
            .await
            .expect("restart");
        assert_eq!(response.status(), 204);
    }

    /// GET through the edge; the body as JSON, or as a string if it is not.
    async fn visit(&self, domain: &str, path: &str) -> (u16, Value) {
        let response = self.get(domain, path).await;
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// Visits `/`, which must answer 200, and returns the serving pid.
    async fn pid_serving(&self, domain: &str) -> u64 {
        let (status, body) = self.visit(domain, "/").await;
        assert_eq!(status, 200, "{domain}: {body}");
        body["pid"].as_u64().expect("pid in the answer")
    }

    async fn wait_for_state(&self, domain: &str, state: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let spinlet = self.spinlet(domain).await;
            if spinlet["state"] == state {
                return spinlet;
            }
            assert!(
                Instant::now() < deadline,
                "{domain} not {state} within {within:?}: {spinlet}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn wait_for_log(&self, domain: &str, needle: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let lines = self.app_log(domain).await;
            if lines.iter().any(|line| line.contains(needle)) {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "no `{needle}` in the log of {domain}:\n{}",
                lines.join("\n")
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// True iff `pid` is a test app running in this server's data directory
    /// (a pid the kernel gave to something else since does not count).
    fn alive(&self, pid: u64) -> bool {
        is_app(&self.data_dir, pid)
    }

    async fn wait_gone(&self, pid: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.alive(pid) {
            assert!(
                Instant::now() < deadline,
                "app pid {pid} still runs after {within:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `/` is served by a pid other than `old`, and returns it.
    async fn wait_for_new_pid(&self, domain: &str, old: u64, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.visit(domain, "/").await;
            let pid = body["pid"].as_u64();
            if status == 200 && pid.is_some_and(|pid| pid != old) {
                return pid.expect("pid");
            }
            assert!(
                Instant::now() < deadline,
                "{domain} not served by a new process within {within:?}: {status} {body}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

async fn login(server: &Server) -> String {
    let response = http()
        .post(format!("{}/api/v1/auth/login", server.api_url()))
        .json(&json!({ "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD }))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    body["access_token"].as_str().expect("token").to_owned()
}

/// True iff `pid` runs the test app with its working directory under
/// `data_dir`. A zombie (its cmdline and cwd are gone) does not count: it
/// runs nothing, and an init that never reaps would keep it forever.
fn is_app(data_dir: &Path, pid: u64) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    if !proc.exists() {
        return false;
    }
    let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
    let in_data_dir =
        std::fs::read_link(proc.join("cwd")).is_ok_and(|cwd| cwd.starts_with(data_dir));
    in_data_dir && String::from_utf8_lossy(&cmdline).contains("app.py")
}

/// Every test app running under `data_dir`.
fn app_pids(data_dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u64> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid| is_app(data_dir, *pid))
        .collect();
    pids.sort_unstable();
    pids
}

fn pid_of(spinlet: &Value) -> u64 {
    spinlet["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {spinlet}"))
}

fn port_of(spinlet: &Value) -> u64 {
    spinlet["port"]
        .as_u64()
        .unwrap_or_else(|| panic!("no port in {spinlet}"))
}

// ---- starting --------------------------------------------------------------

#[tokio::test]
async fn a_stopped_app_starts_on_the_first_request() {
    const SITE: &str = "cold.localhost";
    let host = Host::start().await;
    let dir = tempfile::tempdir().expect("app dir");
    App::new().write_to(dir.path());
    let path = dir.path().to_str().expect("utf-8 path");
    assert_ok(&host.cli(
        &["deploy", path, "--domain", SITE, "--type", "process"],
        None,
    ));
    let deployed = host.spinlet(SITE).await;
    assert_eq!(deployed["state"], "running", "{deployed}");
    let first = pid_of(&deployed);

    host.restart_app(SITE).await;
    let stopped = host.spinlet(SITE).await;
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert!(stopped["pid"].is_null(), "{stopped}");
    host.wait_gone(first, Duration::from_secs(10)).await;

    let (status, body) = host.visit(SITE, "/").await;
    assert_eq!(status, 200, "{body}");
    let second = body["pid"].as_u64().expect("pid");
    assert_ne!(second, first, "a new process answered");
    let running = host.spinlet(SITE).await;
    assert_eq!(running["state"], "running", "{running}");
    assert_eq!(pid_of(&running), second);
    assert!(host.alive(second));
}

#[tokio::test]
async fn fifty_concurrent_first_requests_share_one_start() {
    const SITE: &str = "flight.localhost";
    let host = Host::start().await;
    host.deploy_new(SITE, &App::new()).await;
    host.restart_app(SITE).await;
    assert_eq!(host.spinlet(SITE).await["state"], "stopped");

    let client = http();
    let requests = (0..50).map(|_| {
        let request = client.get(host.edge_url("/")).header("host", SITE).send();
        async move {
            let response = request.await.expect("edge request");
            let status = response.status().as_u16();
            let text = response.text().await.expect("body");
            (status, text)
        }
    });
    let answers = futures_util::future::join_all(requests).await;

    let mut pids = HashSet::new();
    for (status, text) in &answers {
        assert_eq!(*status, 200, "{text}");
        let body: Value = serde_json::from_str(text).expect("json");
        pids.insert(body["pid"].as_u64().expect("pid"));
    }
    assert_eq!(pids.len(), 1, "answered by {pids:?}");
    let starts = host
        .app_log(SITE)
        .await
        .iter()
        .filter(|line| line.contains("started release"))
        .count();
    assert_eq!(
        starts, 2,
        "one start for the deploy, one for all 50 requests"
    );
    let running: HashSet<u64> = app_pids(&host.data_dir).into_iter().collect();
    assert_eq!(running, pids);
}

// ---- stopping when idle ----------------------------------------------------

#[tokio::test]
async fn an_idle_app_is_stopped_and_started_again_on_the_next_request() {
    const SITE: &str = "idle.localhost";
    let host = Host::start().await;
    host.deploy_new(SITE, &App::new().set("idle_timeout_secs = 2"))
        .await;
    let first = host.pid_serving(SITE).await;

    host.wait_for_state(SITE, "stopped", Duration::from_secs(20))
        .await;
    host.wait_gone(first, Duration::from_secs(10)).await;

    let second = host.pid_serving(SITE).await;
    assert_ne!(second, first);
    let running = host.spinlet(SITE).await;
    assert_eq!(running["state"], "running", "{running}");
    assert_eq!(pid_of(&running), second);
    assert_eq!(
        running["restarts"], 0,
        "an idle stop is not a crash: {running}"
    );
}

#[tokio::test]
async fn min_instances_keeps_the_app_running_and_starts_it_without_a_request() {
    const SITE: &str = "always.localhost";
    let mut host = Host::start().await;
    let app = App::new()
        .set("idle_timeout_secs = 2")
        .set("min_instances = 1");
    host.deploy_new(SITE, &app).await;
    let first = pid_of(
        &host
            .wait_for_state(SITE, "running", Duration::from_secs(20))
            .await,
    );

    // Three times the idle timeout, and never a request: the same process.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let spinlet = host.spinlet(SITE).await;
        assert_eq!(spinlet["state"], "running", "{spinlet}");
        assert_eq!(pid_of(&spinlet), first, "{spinlet}");
        tokio::time::sleep(POLL).await;
    }
    assert!(host.alive(first));

    // A restart brings it back by itself.
    host.restart_app(SITE).await;
    let second = pid_of(
        &host
            .wait_for_state(SITE, "running", Duration::from_secs(20))
            .await,
    );
    assert_ne!(second, first);
    assert!(host.alive(second));

    // So does a new `serve`; the old one stops its app itself.
    host.stop_serve();
    assert!(!host.alive(second), "the old serve left pid {second}");
    host.restart_serve().await;
    let third = pid_of(
        &host
            .wait_for_state(SITE, "running", Duration::from_secs(30))
            .await,
    );
    assert_ne!(third, second);
    assert!(host.alive(third));
}

#[tokio::test]
async fn a_long_request_keeps_the_app_awake_past_the_idle_timeout() {
    const SITE: &str = "slow.localhost";
    let host = Host::start().await;
    host.deploy_new(SITE, &App::new().set("idle_timeout_secs = 2"))
        .await;

    let slow = tokio::spawn(
        http()
            .get(host.edge_url("/slow"))
            .header("host", SITE)
            .send(),
    );
    // The pid that took the request, once it is in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let spinlet = host.spinlet(SITE).await;
        if spinlet["in_flight"] == 1 {
            break pid_of(&spinlet);
        }
        assert!(
            Instant::now() < deadline,
            "the slow request never arrived: {spinlet}"
        );
        tokio::time::sleep(POLL).await;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !slow.is_finished() {
        let spinlet = host.spinlet(SITE).await;
        if slow.is_finished() {
            break;
        }
        assert_eq!(
            spinlet["state"], "running",
            "stopped mid-request: {spinlet}"
        );
        assert_eq!(pid_of(&spinlet), pid, "{spinlet}");
        assert!(Instant::now() < deadline, "the slow request never ended");
        tokio::time::sleep(POLL).await;
    }

    let response = slow.await.expect("join").expect("slow request");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["pid"], pid, "{body}");
    assert_eq!(body["slept_secs"], 4, "{body}");
}

#[tokio::test]
async fn an_open_websocket_keeps_the_app_awake_past_the_idle_timeout() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    const SITE: &str = "ws.localhost";
    const STEP: Duration = Duration::from_secs(20);
    let host = Host::start().await;
    host.deploy_new(SITE, &App::new().set("idle_timeout_secs = 2"))
        .await;

    let request = format!("ws://{SITE}/ws")
        .into_client_request()
        .expect("request");
    let stream = tokio::net::TcpStream::connect(host.edge)
        .await
        .expect("connect edge");
    let handshake = tokio::time::timeout(STEP, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("handshake in time");
    let (mut ws, response) = match handshake {
        Ok(done) => done,
        Err(e) => panic!(
            "handshake: {e}\napp log:\n{}",
            host.app_log(SITE).await.join("\n")
        ),
    };
    assert_eq!(response.status(), 101);
    let pid = pid_of(&host.spinlet(SITE).await);

    // Three times the idle timeout with a silent but open socket.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let spinlet = host.spinlet(SITE).await;
        assert_eq!(
            spinlet["state"], "running",
            "stopped under a WebSocket: {spinlet}"
        );
        assert_eq!(pid_of(&spinlet), pid, "{spinlet}");
        tokio::time::sleep(POLL).await;
    }
    let message = Message::text("still there?");
    ws.send(message.clone()).await.expect("send");
    let echoed = tokio::time::timeout(STEP, ws.next())
        .await
        .expect("echo in time")
        .expect("socket open")
        .expect("message");
    assert_eq!(echoed, message);

    ws.close(None).await.expect("close");
    let deadline = Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(None | Some(Err(_))) => break,
            Err(_) => panic!("the WebSocket did not finish closing"),
        }
    }
    // Once the connection is gone nothing holds the app, and it goes idle.
    drop(ws);
    host.wait_for_state(SITE, "stopped", Duration::from_secs(20))
        .await;
    host.wait_gone(pid, Duration::from_secs(10)).await;
}

// ---- crashes ---------------------------------------------------------------

#[tokio::test]
async fn a_crashed_app_is_restarted_with_a_new_pid() {
    const SITE: &str = "crash.localhost";
    let host = Host::start().await;
    host.deploy_new(SITE, &App::new()).await;
    let first = host.pid_serving(SITE).await;

    let (status, body) = host.visit(SITE, "/crash").await;
    assert!((500..600).contains(&status), "{status} {body}");

    let second = host
        .wait_for_new_pid(SITE, first, Duration::from_secs(15))
        .await;
    let spinlet = host.spinlet(SITE).await;
    assert_eq!(spinlet["state"], "running", "{spinlet}");
    assert_eq!(pid_of(&spinlet), second);
    assert!(
        spinlet["restarts"].as_u64().expect("restarts") >= 1,
        "{spinlet}"
    );
    host.wait_gone(first, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn an_app_that_keeps_crashing_fails_until_it_is_restarted() {
    const SITE: &str = "loop.localhost";
    let host = Host::start().await;
    host.deploy_new(SITE, &App::new().env("EXIT_AFTER_SECS", "1"))
        .await;

    // It dies a second after each start until the supervisor gives up.
    let deadline = Instant::now() + Duration::from_secs(90);
    let refused = loop {
        let response = host.get(SITE, "/").await;
        if response.status() == 503 {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "never marked failed: {}",
            host.spinlet(SITE).await
        );
        tokio::time::sleep(POLL).await;
    };
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .expect("Retry-After on a failed app")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    let failed = host.spinlet(SITE).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let reason = failed["failed_reason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "{failed}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !host.log().contains("spinlet.failed") {
        assert!(Instant::now() < deadline, "no audit line:\n{}", host.log());
        tokio::time::sleep(POLL).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app_pids(&host.data_dir).is_empty() {
        assert!(Instant::now() < deadline, "a failed app still runs");
        tokio::time::sleep(POLL).await;
    }

    host.restart_app(SITE).await;
    let cleared = host.spinlet(SITE).await;
    assert_eq!(cleared["state"], "stopped", "{cleared}");
    assert!(cleared["failed_reason"].is_null(), "{cleared}");

    host.deploy(SITE, &App::new()).await;
    host.pid_serving(SITE).await;
    let fixed = host.spinlet(SITE).await;
    assert_eq!(fixed["state"], "running", "{fixed}");
}

// ---- stopping gracefully ---------------------------------------------------

#[tokio::test]
async fn an_app_that_ignores_sigterm_is_killed_after_its_grace_period() {
    const SITE: &str = "stubborn.localhost";
    let host = Host::start().await;
    let app = App::new()
        .set("stop_grace_secs = 1")
        .env("IGNORE_TERM", "1");
    host.deploy_new(SITE, &app).await;
    let pid = host.pid_serving(SITE).await;

    host.restart_app(SITE).await;
    host.wait_gone(pid, Duration::from_secs(10)).await;
    let exited = format!("pid {pid} exited");
    let lines = host
        .wait_for_log(SITE, &exited, Duration::from_secs(10))
        .await;
    let exit = lines
        .iter()
        .find(|line| line.contains(&exited))
        .expect("exit line");
    assert!(exit.contains("signal: 9"), "{exit}");
    assert!(
        lines.iter().any(|line| line.contains("ignored SIGTERM")),
        "{}",
        lines.join("\n")
    );
}

#[tokio::test]
async fn an_app_that_handles_sigterm_logs_its_stopping_line_and_exits_cleanly() {
    const SITE: &str = "polite.localhost";
    let host = Host::start().await;
    host.deploy_new(SITE, &App::new()).await;
    let pid = host.pid_serving(SITE).await;

    host.restart_app(SITE).await;
    host.wait_gone(pid, Duration::from_secs(10)).await;
    // The app's stdout and SpinForge's notes are separate streams, so the
    // two lines may be written in either order; exit status 0 proves the
    // handler ran before the process ended.
    let exited = format!("pid {pid} exited");
    host.wait_for_log(
        SITE,
        "stdout stopping: got SIGTERM",
        Duration::from_secs(10),
    )
    .await;
    let lines = host
        .wait_for_log(SITE, &exited, Duration::from_secs(10))
        .await;
    let exit = lines
        .iter()
        .find(|line| line.contains(&exited))
        .expect("exit line");
    assert!(exit.contains("exit status: 0"), "{exit}");
    assert!(
        !lines.iter().any(|line| line.contains("ignored SIGTERM")),
        "{}",
        lines.join("\n")
    );
}

// ---- serve restarts --------------------------------------------------------

const SITES: [&str; 2] = ["one.localhost", "two.localhost"];

/// Deploys the two sites and wakes both; returns their pids.
async fn two_running_apps(host: &Host) -> Vec<u64> {
    let mut pids = Vec::new();
    for site in SITES {
        host.deploy_new(site, &App::new()).await;
        pids.push(host.pid_serving(site).await);
    }
    for pid in &pids {
        assert!(host.alive(*pid));
    }
    pids
}

#[tokio::test]
async fn a_serve_restart_leaves_no_app_running() {
    let mut host = Host::start().await;
    let old = two_running_apps(&host).await;

    // Checked before a new serve starts: it would reap leftovers itself.
    host.stop_serve();
    for pid in &old {
        assert!(!host.alive(*pid), "serve exited but pid {pid} runs on");
    }
    host.restart_serve().await;

    for site in SITES {
        let pid = host.pid_serving(site).await;
        assert!(!old.contains(&pid));
        assert!(host.alive(pid));
    }
}

#[tokio::test]
async fn apps_left_by_a_killed_serve_are_reaped_by_the_next_one() {
    let mut host = Host::start().await;
    let old = two_running_apps(&host).await;

    host.kill9();
    for pid in &old {
        assert!(
            host.alive(*pid),
            "SIGKILL to serve should not reach pid {pid}"
        );
    }
    host.restart_serve().await;
    for pid in &old {
        host.wait_gone(*pid, Duration::from_secs(10)).await;
    }

    for site in SITES {
        let pid = host.pid_serving(site).await;
        assert!(!old.contains(&pid));
        assert!(host.alive(pid));
    }
    assert_eq!(app_pids(&host.data_dir).len(), SITES.len());
}

#[tokio::test]
async fn apps_get_distinct_ports_and_free_ones_after_a_serve_restart() {
    let mut host = Host::start().await;
    two_running_apps(&host).await;
    let mut ports = Vec::new();
    for site in SITES {
        let spinlet = host.spinlet(site).await;
        let (status, body) = host.visit(site, "/").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["port"].as_u64(), Some(port_of(&spinlet)), "{body}");
        ports.push(port_of(&spinlet));
    }
    assert_ne!(ports[0], ports[1]);

    // With serve down, something else takes the first app's port.
    host.stop();
    let taken = u16::try_from(ports[0]).expect("port");
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", taken))
        .expect("the port is free once serve stopped its app");
    host.restart_serve().await;

    let mut again = Vec::new();
    for site in SITES {
        let (status, body) = host.visit(site, "/").await;
        assert_eq!(status, 200, "{body}");
        let port = port_of(&host.spinlet(site).await);
        assert_eq!(body["port"].as_u64(), Some(port), "{body}");
        again.push(port);
    }
    assert_ne!(again[0], again[1]);
    assert!(
        !again.contains(&ports[0]),
        "{again:?} includes the taken port"
    );
}
