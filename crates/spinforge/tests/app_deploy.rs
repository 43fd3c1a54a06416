//! Process sites end to end: the bundled example apps, start commands
//! detected without a manifest, redeploys under load, releases and
//! manifests that are refused, captured logs, the app's environment and
//! its status. Real binary, real CLI, real apps, real HTTP through the edge.
//!
//! Every server here is stopped with SIGTERM when its test ends, so the
//! supervisor stops the apps it started; nothing outlives a test.

mod common;

use common::*;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest wait for one app-level step (a start, a log line, a switch) on
/// a busy two-core machine.
const STEP: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

// ---- the server ------------------------------------------------------------

/// A test server that is stopped with SIGTERM when dropped, even when the
/// test panics: `serve` then stops its apps. (The harness's own drop sends
/// SIGKILL, which would leave the apps running.)
struct AppServer(Server);

impl AppServer {
    fn start() -> AppServer {
        AppServer(Server::start())
    }

    /// A server with a logged-in CLI and an API token.
    async fn with_admin() -> (AppServer, String) {
        let server = AppServer::start();
        let token = server.admin_token().await;
        (server, token)
    }
}

impl Deref for AppServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.0
    }
}

impl DerefMut for AppServer {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.0
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.0.stop();
    }
}

// ---- apps ------------------------------------------------------------------

/// A Python app that answers every GET with its version and pid as JSON,
/// and `/env` with its whole environment.
const VERSIONED_APP: &str = r#"import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = @VERSION@

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/env":
            body = dict(os.environ)
        else:
            body = {"version": VERSION, "pid": os.getpid()}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

ThreadingHTTPServer.request_queue_size = 128
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"#;

const VERSIONED_MANIFEST: &str =
    "[app]\ncommand = [\"python3\", \"app.py\"]\nhealth_path = \"/health\"\n";

fn versioned_app(version: u32) -> String {
    VERSIONED_APP.replace("@VERSION@", &version.to_string())
}

/// Writes the versioned app into `dir`, with `manifest` beside it.
fn write_versioned(dir: &Path, version: u32, manifest: &str) {
    write_tree(
        dir,
        &[
            ("app.py", versioned_app(version).as_bytes()),
            ("spinforge.toml", manifest.as_bytes()),
        ],
    );
}

/// A folder holding the versioned app at `version`.
fn versioned_dir(version: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("app dir");
    write_versioned(dir.path(), version, VERSIONED_MANIFEST);
    dir
}

/// A gzip-compressed tar of `files`, each a regular file with mode 0644.
fn bundle(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        builder
            .append_data(&mut header, path, content.as_bytes())
            .expect("append");
    }
    builder.into_inner().expect("tar").finish().expect("gzip")
}

// ---- CLI and API helpers ---------------------------------------------------

/// `spinforge deploy DIR --domain DOMAIN --type process`.
fn deploy(server: &Server, dir: &Path, domain: &str) -> Output {
    let dir = dir.to_str().expect("utf-8 path");
    server.cli(
        &["deploy", dir, "--domain", domain, "--type", "process"],
        None,
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the CLI with `--json` and parses what it printed.
fn cli_json(server: &Server, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = server.cli(&args, None);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).expect("CLI JSON")
}

/// The lines `spinforge logs` printed.
fn cli_logs(server: &Server, args: &[&str]) -> Vec<String> {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let out = server.cli(&all, None);
    assert_ok(&out);
    stdout(&out).lines().map(str::to_owned).collect()
}

/// Status and JSON body (the raw text as a JSON string if it is not JSON).
async fn api_get(server: &Server, token: &str, path: &str) -> (u16, Value) {
    let response = http()
        .get(format!("{}/api/v1{path}", server.api_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    status_and_json(response).await
}

/// GET through the edge; the status and the body as JSON.
async fn edge_json(server: &Server, host: &str, path: &str) -> (u16, Value) {
    status_and_json(server.get(host, path).await).await
}

/// The version the site's app answers with, asserting a 200.
async fn served_version(server: &Server, host: &str) -> u64 {
    let (status, body) = edge_json(server, host, "/").await;
    assert_eq!(status, 200, "{body}");
    body["version"].as_u64().expect("version")
}

/// Polls `probe` every 100 ms until it gives `Some`, for at most `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The id of the one site folder in the data directory.
fn only_site_id(server: &Server) -> i64 {
    let ids: Vec<i64> = std::fs::read_dir(server.data_dir.join("sites"))
        .expect("sites folder")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0]
}

/// The spinlet part of `spinforge status DOMAIN --json`.
fn spinlet_status(server: &Server, domain: &str) -> Value {
    let status = cli_json(server, &["status", domain]);
    assert_eq!(status["ready"], true, "{status}");
    let site = &status["sites"][0];
    assert_eq!(site["site"]["domain"], domain, "{status}");
    site["spinlet"].clone()
}

/// True iff a process with this pid exists.
fn process_exists(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

// ---- the bundled examples --------------------------------------------------

#[tokio::test]
async fn python_example_serves_the_greeting_from_its_manifest() {
    let server = AppServer::start();
    server.create_admin_and_login();
    let example = workspace_root().join("examples/python-app");
    let out = deploy(&server, &example, "py.localhost");
    assert_ok(&out);
    assert!(
        stdout(&out).contains("deployed py.localhost"),
        "{}",
        stdout(&out)
    );

    let manifest: toml::Table = std::fs::read_to_string(example.join("spinforge.toml"))
        .expect("manifest")
        .parse()
        .expect("toml");
    let greeting = manifest["env"]["GREETING"].as_str().expect("GREETING");
    let (status, body) = edge_json(&server, "py.localhost", "/").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], greeting);
    let (status, body) = edge_json(&server, "py.localhost", "/health").await;
    assert_eq!((status, body), (200, json!({ "ok": true })));

    // A body goes through the edge to the app.
    let response = http()
        .post(server.edge_url("/upload"))
        .header("host", "py.localhost")
        .body(vec![b'a'; 1000])
        .send()
        .await
        .expect("post");
    assert_eq!(
        status_and_json(response).await,
        (200, json!({ "received": 1000 }))
    );

    // The same app with another GREETING in its manifest says the new one:
    // the message really comes from the manifest's [env].
    let copy = tempfile::tempdir().expect("copy");
    let toml = std::fs::read_to_string(example.join("spinforge.toml")).expect("manifest");
    let changed = toml.replace(greeting, "greetings from the second release");
    assert_ne!(changed, toml);
    let app = std::fs::read(example.join("app.py")).expect("app.py");
    write_tree(
        copy.path(),
        &[("app.py", &app), ("spinforge.toml", changed.as_bytes())],
    );
    assert_ok(&deploy(&server, copy.path(), "py.localhost"));
    let (status, body) = edge_json(&server, "py.localhost", "/").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "greetings from the second release");
}

#[tokio::test]
async fn node_example_serves_http_and_echoes_websocket_messages_through_the_edge() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let server = AppServer::start();
    server.create_admin_and_login();
    let example = workspace_root().join("examples/node-app");
    assert_ok(&deploy(&server, &example, "node.localhost"));

    let (status, body) = edge_json(&server, "node.localhost", "/").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "hello from a Node spinlet");

    let request = "ws://node.localhost/ws"
        .into_client_request()
        .expect("request");
    let stream = tokio::net::TcpStream::connect(server.edge)
        .await
        .expect("connect edge");
    let (mut ws, response) =
        tokio::time::timeout(STEP, tokio_tungstenite::client_async(request, stream))
            .await
            .expect("handshake in time")
            .expect("handshake");
    assert_eq!(response.status(), 101);

    // The binary message is long enough for the 64-bit length form.
    let messages = [
        Message::text("hello through the edge"),
        Message::binary(pseudo_random(70_000, 7)),
        Message::text("ünïcödé ✓"),
    ];
    echo_then_close(&mut ws, &messages, STEP).await;
}

#[tokio::test]
async fn compiled_rust_example_is_detected_as_a_single_executable_and_runs() {
    let build = tempfile::tempdir().expect("build dir");
    let binary = build.path().join("app");
    let compiled = std::process::Command::new("rustc")
        .args(["-O", "examples/rust-app/main.rs", "-o"])
        .arg(&binary)
        .current_dir(workspace_root())
        .output()
        .expect("run rustc");
    assert_ok(&compiled);
    let entries: Vec<_> = std::fs::read_dir(build.path())
        .expect("build dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(entries, ["app"], "only the executable is deployed");

    let server = AppServer::start();
    server.create_admin_and_login();
    assert_ok(&deploy(&server, build.path(), "rust.localhost"));

    let response = server.get("rust.localhost", "/").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let pid: u64 = text
        .strip_prefix("hello from a compiled spinlet (pid ")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("unexpected body: {text}"));

    let spinlet = spinlet_status(&server, "rust.localhost");
    assert_eq!(spinlet["state"], "running", "{spinlet}");
    assert_eq!(
        spinlet["pid"], pid,
        "the status names the process that answered"
    );
}

// ---- start commands without a manifest ----------------------------------

#[tokio::test]
async fn a_folder_with_only_main_py_is_detected_and_served() {
    let server = AppServer::start();
    server.create_admin_and_login();
    let dir = tempfile::tempdir().expect("app dir");
    let main_py = r#"import os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"detected main.py"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;
    write_tree(dir.path(), &[("main.py", main_py.as_bytes())]);
    assert_ok(&deploy(&server, dir.path(), "mainpy.localhost"));

    let response = server.get("mainpy.localhost", "/anything").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "detected main.py");
}

#[tokio::test]
async fn a_package_json_start_script_is_detected_and_served() {
    let server = AppServer::start();
    server.create_admin_and_login();
    let dir = tempfile::tempdir().expect("app dir");
    let package = r#"{"name": "detected", "private": true, "scripts": {"start": "node index.js"}}"#;
    let index = r#"require('http')
  .createServer((req, res) => res.end('started by npm start: ' + req.url))
  .listen(Number(process.env.PORT), process.env.HOST);
"#;
    write_tree(
        dir.path(),
        &[
            ("package.json", package.as_bytes()),
            ("index.js", index.as_bytes()),
        ],
    );
    assert_ok(&deploy(&server, dir.path(), "npm.localhost"));

    let response = server.get("npm.localhost", "/x").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.expect("body"),
        "started by npm start: /x"
    );
}

// ---- redeploys -------------------------------------------------------------

/// One request of the load loop: when it was sent (since the loop began)
/// and the version that answered, or what went wrong.
struct Sample {
    worker: usize,
    sent: Duration,
    outcome: Result<u64, String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redeploys_under_continuous_load_drop_no_request_and_never_go_back() {
    const DOMAIN: &str = "load.localhost";
    const WORKERS: usize = 2;
    const MAX_REQUESTS: usize = 2000;
    const MAX_LOAD: Duration = Duration::from_secs(20);
    // Between one worker's requests: two workers stay under 100 requests a
    // second, so the request cap and the time cap are about the same.
    const PAUSE: Duration = Duration::from_millis(20);

    let server = AppServer::start();
    server.create_admin_and_login();
    let dir = tempfile::tempdir().expect("app dir");
    write_versioned(dir.path(), 1, VERSIONED_MANIFEST);
    assert_ok(&deploy(&server, dir.path(), DOMAIN));
    assert_eq!(served_version(&server, DOMAIN).await, 1);

    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (stop, sent, samples) = (stop.clone(), sent.clone(), samples.clone());
        let url = server.edge_url("/");
        workers.push(tokio::spawn(async move {
            let client = http();
            while !stop.load(Ordering::Acquire)
                && began.elapsed() < MAX_LOAD
                && sent.fetch_add(1, Ordering::AcqRel) < MAX_REQUESTS
            {
                let at = began.elapsed();
                let outcome = match client.get(&url).header("host", DOMAIN).send().await {
                    Ok(response) if response.status() == 200 => {
                        match response.json::<Value>().await {
                            Ok(body) => body["version"]
                                .as_u64()
                                .ok_or_else(|| format!("no version in {body}")),
                            Err(e) => Err(format!("body: {e}")),
                        }
                    }
                    Ok(response) => Err(format!("HTTP {}", response.status())),
                    Err(e) => Err(format!("transport: {e}")),
                };
                let sample = Sample {
                    worker,
                    sent: at,
                    outcome,
                };
                samples.lock().expect("samples").push(sample);
                tokio::time::sleep(PAUSE).await;
            }
        }));
    }

    // Deploy v2, wait until the load sees it, then deploy v3 and let the
    // load run on v3 for a moment. `deployed[n]` is when vN's deploy
    // returned, measured like the samples.
    let seen = |version: u64| {
        let samples = samples.clone();
        async move {
            let samples = samples.lock().expect("samples");
            samples
                .iter()
                .any(|s| s.outcome.as_ref().ok() == Some(&version))
                .then_some(())
        }
    };
    let mut deployed = [Duration::ZERO; 4];
    for version in [2, 3] {
        write_versioned(dir.path(), version, VERSIONED_MANIFEST);
        let out = tokio::task::block_in_place(|| deploy(&server, dir.path(), DOMAIN));
        deployed[version as usize] = began.elapsed();
        assert_ok(&out);
        eventually(&format!("the load sees v{version}"), MAX_LOAD, || {
            seen(u64::from(version))
        })
        .await;
    }
    let after_v3 = samples.lock().expect("samples").len() + 20;
    eventually("20 more requests on v3", MAX_LOAD, || {
        let samples = samples.clone();
        async move { (samples.lock().expect("samples").len() >= after_v3).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Release);
    for worker in workers {
        worker.await.expect("load worker");
    }

    let samples = samples.lock().expect("samples");
    let failures: Vec<String> = samples
        .iter()
        .filter_map(|s| {
            let error = s.outcome.as_ref().err()?;
            Some(format!("{:?}: {error}", s.sent))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during redeploys; first: {:?}",
        failures.len(),
        samples.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(samples.len() <= MAX_REQUESTS);
    assert_eq!(samples[0].outcome.as_ref().ok(), Some(&1));
    let last = samples.last().expect("samples");
    assert_eq!(last.outcome.as_ref().ok(), Some(&3), "the load ends on v3");

    // Each worker's answers only ever move forward, and nothing sent after
    // a deploy returned is answered by an older version.
    for worker in 0..WORKERS {
        let versions: Vec<u64> = samples
            .iter()
            .filter(|s| s.worker == worker)
            .filter_map(|s| s.outcome.as_ref().ok().copied())
            .collect();
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "worker {worker} went back: {versions:?}"
        );
    }
    for sample in samples.iter() {
        let version = *sample.outcome.as_ref().expect("no failures");
        let newest_deployed = (1..=3u64)
            .filter(|v| deployed[*v as usize] <= sample.sent)
            .max()
            .unwrap_or(1);
        assert!(
            (newest_deployed..=3).contains(&version),
            "sent at {:?}, after v{newest_deployed} was deployed, answered by v{version}",
            sample.sent
        );
    }
}

// ---- refused releases ------------------------------------------------------

/// A server with one process site whose first release (the versioned app
/// at v1) is active, and a snapshot of everything a refused release must
/// leave alone.
struct Fixture {
    server: AppServer,
    token: String,
    site_id: i64,
    site: Value,
    releases: Value,
    dirs: Vec<String>,
    spinlet_release: Value,
}

impl Fixture {
    const DOMAIN: &'static str = "app.localhost";

    async fn with_v1() -> Fixture {
        let (server, token) = AppServer::with_admin().await;
        let v1 = versioned_dir(1);
        assert_ok(&deploy(&server, v1.path(), Fixture::DOMAIN));

        let site_id = only_site_id(&server);
        let (_, site) = api_get(&server, &token, &format!("/sites/{}", Fixture::DOMAIN)).await;
        let (_, releases) = api_get(
            &server,
            &token,
            &format!("/sites/{}/releases", Fixture::DOMAIN),
        )
        .await;
        assert_eq!(releases.as_array().map(Vec::len), Some(1), "{releases}");
        assert_eq!(releases[0]["active"], true);
        assert_eq!(site["active_release"], releases[0]["id"]);
        let dirs = server.release_dirs(site_id);
        assert_eq!(dirs.len(), 1);
        let spinlet_release = releases[0]["id"].clone();
        let fixture = Fixture {
            server,
            token,
            site_id,
            site,
            releases,
            dirs,
            spinlet_release,
        };
        fixture.assert_unchanged("after the first deploy").await;
        fixture
    }

    /// v1 still serves and is still the only release, on disk too.
    async fn assert_unchanged(&self, case: &str) {
        let server = &self.server;
        let (status, body) = edge_json(server, Fixture::DOMAIN, "/").await;
        assert_eq!(status, 200, "{case}: {body}");
        assert_eq!(body["version"], 1, "{case}: v1 no longer serves");

        let path = format!("/sites/{}", Fixture::DOMAIN);
        let site = api_get(server, &self.token, &path).await;
        assert_eq!(site, (200, self.site.clone()), "{case}: the site changed");
        let releases = api_get(server, &self.token, &format!("{path}/releases")).await;
        assert_eq!(
            releases,
            (200, self.releases.clone()),
            "{case}: the releases changed"
        );
        let (_, status) = api_get(server, &self.token, &format!("{path}/status")).await;
        assert_eq!(
            status["spinlet"]["release"], self.spinlet_release,
            "{case}: the supervisor runs another release"
        );
        assert_eq!(
            server.release_dirs(self.site_id),
            self.dirs,
            "{case}: release folders changed"
        );
        assert_eq!(server.tmp_entries(), 0, "{case}: tmp/ is not empty");
    }

    /// Deploys `files` with the CLI and through the API; both must fail
    /// with the app's fault, show the line `marker` the app printed, and
    /// change nothing.
    async fn refuse_failing_app(&self, case: &str, files: &[(&str, &str)], marker: &str) {
        let dir = tempfile::tempdir().expect("app dir");
        let owned: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (*p, c.as_bytes())).collect();
        write_tree(dir.path(), &owned);

        let out = deploy(&self.server, dir.path(), Fixture::DOMAIN);
        assert_eq!(out.status.code(), Some(1), "{case}: {}", stderr(&out));
        let said = stderr(&out);
        assert!(said.contains("HTTP 422"), "{case}: {said}");
        assert!(
            said.contains("last lines of the app's log"),
            "{case}: {said}"
        );
        assert!(
            said.contains(marker),
            "{case}: the app's output is missing: {said}"
        );
        self.assert_unchanged(&format!("{case} (CLI)")).await;

        let (status, body) =
            upload(&self.server, &self.token, Fixture::DOMAIN, bundle(files)).await;
        assert_eq!(status, 422, "{case}: {body}");
        assert_eq!(body["error"]["code"], "app_failed", "{case}: {body}");
        let tail = body["error"]["log_tail"].as_array().expect("log_tail");
        assert!(
            tail.iter()
                .any(|line| line.as_str().is_some_and(|l| l.contains(marker))),
            "{case}: the app's output is not in the log tail: {body}"
        );
        self.assert_unchanged(&format!("{case} (API)")).await;
    }
}

#[tokio::test]
async fn a_release_whose_app_exits_at_once_is_refused_and_the_old_one_keeps_serving() {
    let fixture = Fixture::with_v1().await;
    let manifest = r#"[app]
command = ["sh", "-c", "echo exiting-at-once-marker; echo and-on-stderr >&2; exit 3"]
"#;
    fixture
        .refuse_failing_app(
            "exits at once",
            &[("spinforge.toml", manifest)],
            "exiting-at-once-marker",
        )
        .await;
}

#[tokio::test]
async fn a_release_whose_app_never_listens_is_refused_after_its_start_timeout() {
    let fixture = Fixture::with_v1().await;
    let manifest = r#"[app]
command = ["sh", "-c", "echo never-listening-marker; exec sleep 120"]
start_timeout_secs = 2
"#;
    let started = Instant::now();
    fixture
        .refuse_failing_app(
            "never listens",
            &[("spinforge.toml", manifest)],
            "never-listening-marker",
        )
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "two deploys each waited out the 2 s start timeout"
    );
}

// ---- rollback --------------------------------------------------------------

#[tokio::test]
async fn rollback_starts_the_earlier_release_healthy_and_serves_it() {
    const DOMAIN: &str = "rb.localhost";
    let server = AppServer::start();
    server.create_admin_and_login();
    let dir = versioned_dir(1);
    assert_ok(&deploy(&server, dir.path(), DOMAIN));
    let (_, first) = edge_json(&server, DOMAIN, "/").await;
    assert_eq!(first["version"], 1);
    write_versioned(dir.path(), 2, VERSIONED_MANIFEST);
    assert_ok(&deploy(&server, dir.path(), DOMAIN));
    assert_eq!(served_version(&server, DOMAIN).await, 2);

    let releases = cli_json(&server, &["releases", DOMAIN]);
    let v2 = releases[0]["id"].as_str().expect("v2 id").to_owned();
    let v1 = releases[1]["id"].as_str().expect("v1 id").to_owned();
    assert_eq!(releases[0]["active"], true);

    let out = server.cli(&["rollback", DOMAIN], None);
    assert_ok(&out);
    assert!(stdout(&out).contains(&v1), "{}", stdout(&out));
    let (status, body) = edge_json(&server, DOMAIN, "/").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1);
    assert_ne!(body["pid"], first["pid"], "v1 runs in a fresh process");
    let spinlet = spinlet_status(&server, DOMAIN);
    assert_eq!(spinlet["release"], v1.as_str(), "{spinlet}");
    assert_eq!(spinlet["state"], "running", "{spinlet}");

    // The rollback started v1 again, the way a deploy does.
    let started = format!("started release {v1} as pid");
    let log = cli_logs(&server, &[DOMAIN, "-n", "500"]);
    assert_eq!(
        log.iter().filter(|l| l.contains(&started)).count(),
        2,
        "{log:#?}"
    );

    assert_ok(&server.cli(&["rollback", DOMAIN, &v2], None));
    assert_eq!(served_version(&server, DOMAIN).await, 2);
    let releases = cli_json(&server, &["releases", DOMAIN]);
    assert_eq!(releases[0]["id"], v2.as_str());
    assert_eq!(releases[0]["active"], true);
    assert_eq!(releases[1]["active"], false);
}

// ---- bad manifests ---------------------------------------------------------

#[tokio::test]
async fn bad_manifests_are_refused_with_400_naming_the_key_and_change_nothing() {
    let fixture = Fixture::with_v1().await;
    let app = versioned_app(2);
    let command = "command = [\"python3\", \"app.py\"]";
    let cases = [
        (
            "unknown key",
            format!("[app]\n{command}\ncomand = [\"python3\", \"app.py\"]\n"),
            vec!["app.comand", "unknown key"],
        ),
        (
            "out of range",
            format!("[app]\n{command}\nidle_timeout_secs = 0\n"),
            vec!["app.idle_timeout_secs", "between 1 and"],
        ),
        (
            "command not in the bundle",
            "[app]\ncommand = [\"./nope\"]\n".to_owned(),
            vec!["./nope", "not in the bundle"],
        ),
        (
            "reserved env name",
            format!("[app]\n{command}\n[env]\nPORT = \"9999\"\n"),
            vec!["env.PORT", "reserved"],
        ),
    ];
    for (case, manifest, words) in &cases {
        let files = [
            ("app.py", app.as_str()),
            ("spinforge.toml", manifest.as_str()),
        ];
        let (status, body) = upload(
            &fixture.server,
            &fixture.token,
            Fixture::DOMAIN,
            bundle(&files),
        )
        .await;
        assert_eq!(status, 400, "{case}: {body}");
        assert_eq!(body["error"]["code"], "invalid", "{case}: {body}");
        assert_eq!(body["error"]["field"], "manifest", "{case}: {body}");
        let message = body["error"]["message"].as_str().expect("message");
        for word in words {
            assert!(message.contains(word), "{case}: {message}");
        }
        fixture.assert_unchanged(case).await;
    }

    // The CLI passes the message on and exits 1.
    let dir = tempfile::tempdir().expect("app dir");
    write_tree(
        dir.path(),
        &[
            ("app.py", app.as_bytes()),
            ("spinforge.toml", cases[0].1.as_bytes()),
        ],
    );
    let out = deploy(&fixture.server, dir.path(), Fixture::DOMAIN);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("`app.comand`"), "{}", stderr(&out));
    assert!(stderr(&out).contains("HTTP 400"), "{}", stderr(&out));
    fixture.assert_unchanged("unknown key (CLI)").await;
}

// ---- logs ------------------------------------------------------------------

/// True iff `stamp` looks like `2026-12-04T15:00:00.123Z`.
fn is_utc_millis_timestamp(stamp: &str) -> bool {
    let shape = "dddd-dd-ddTdd:dd:dd.dddZ";
    stamp.len() == shape.len()
        && stamp.chars().zip(shape.chars()).all(|(c, s)| match s {
            'd' => c.is_ascii_digit(),
            other => c == other,
        })
}

/// The stream name of the first line carrying `text`, after checking the
/// line's timestamp.
fn stream_of(lines: &[String], text: &str) -> Option<String> {
    let line = lines.iter().find(|l| l.ends_with(text))?;
    let mut words = line.split_whitespace();
    let stamp = words.next()?;
    assert!(is_utc_millis_timestamp(stamp), "{line}");
    words.next().map(str::to_owned)
}

#[tokio::test]
async fn app_stdout_and_stderr_reach_spinforge_logs_with_timestamps_and_streams() {
    const DOMAIN: &str = "logs.localhost";
    let server = AppServer::start();
    server.create_admin_and_login();
    let app = r#"import os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

print("hello on stdout", flush=True)
print("trouble on stderr", file=sys.stderr, flush=True)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        print("served " + self.path, flush=True)
        print("warned " + self.path, file=sys.stderr, flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;
    let dir = tempfile::tempdir().expect("app dir");
    write_tree(dir.path(), &[("app.py", app.as_bytes())]);
    assert_ok(&deploy(&server, dir.path(), DOMAIN));

    let lines = cli_logs(&server, &[DOMAIN]);
    assert_eq!(
        stream_of(&lines, "hello on stdout").as_deref(),
        Some("stdout"),
        "{lines:#?}"
    );
    assert_eq!(
        stream_of(&lines, "trouble on stderr").as_deref(),
        Some("stderr"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" spinforge started release ")),
        "SpinForge's own notes are there too: {lines:#?}"
    );

    // A request's output shows up within a few seconds.
    assert_eq!(server.get(DOMAIN, "/ping").await.status(), 204);
    eventually("the request's log lines", STEP, || async {
        let lines = cli_logs(&server, &[DOMAIN]);
        let out = stream_of(&lines, "served /ping");
        let err = stream_of(&lines, "warned /ping");
        (out.as_deref() == Some("stdout") && err.as_deref() == Some("stderr")).then_some(())
    })
    .await;

    let recent = cli_logs(&server, &[DOMAIN, "--since", "10m"]);
    for text in ["hello on stdout", "trouble on stderr", "served /ping"] {
        assert!(
            recent.iter().any(|l| l.ends_with(text)),
            "--since 10m lost {text}: {recent:#?}"
        );
    }
    let last = cli_logs(&server, &[DOMAIN, "-n", "1"]);
    assert_eq!(last.len(), 1, "{last:#?}");

    // Lines older than the window are left out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = cli_logs(&server, &[DOMAIN, "--since", "1s"]);
    assert!(
        !window.iter().any(|l| l.ends_with("hello on stdout")),
        "{window:#?}"
    );
    let out = server.cli(&["logs", DOMAIN, "--since", "yesterday"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("since"), "{}", stderr(&out));
}

/// Total bytes of the files in `dir`.
fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_app_output_is_rotated_within_the_disk_cap_and_the_app_stays_responsive() {
    const DOMAIN: &str = "flood.localhost";
    // Three files of 10 MiB at most (app.log, .1, .2), and some slack.
    const CAP: u64 = 3 * 10 * MIB + MIB;
    let server = AppServer::start();
    server.create_admin_and_login();
    // About 30 MiB of 1 KiB lines, written as fast as the pipe takes them.
    let app = r#"import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LINES = 30 * 1024
state = {"written": 0, "done": False}

def flood():
    filler = "x" * 1000
    for n in range(LINES):
        sys.stdout.write("flood %08d %s\n" % (n, filler))
        state["written"] = n + 1
    sys.stdout.write("flood finished\n")
    sys.stdout.flush()
    state["done"] = True

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        data = json.dumps(state).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
threading.Thread(target=flood, daemon=True).start()
server.serve_forever()
"#;
    let dir = tempfile::tempdir().expect("app dir");
    write_tree(dir.path(), &[("app.py", app.as_bytes())]);
    assert_ok(&deploy(&server, dir.path(), DOMAIN));

    let logs = server.data_dir.join("spinlets/logs").join(DOMAIN);
    let mut largest = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        largest = largest.max(folder_bytes(&logs));
        let (status, body) = edge_json(&server, DOMAIN, "/").await;
        assert_eq!(status, 200, "the app stopped answering: {body}");
        if body["done"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flood did not finish in time: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Until the last line is on disk (or the folder stops growing, if the
    // writer had to drop lines), keep measuring.
    let mut previous = u64::MAX;
    eventually("the log writer catches up", STEP, || {
        let server = &server;
        let logs = &logs;
        let size = folder_bytes(logs);
        largest = largest.max(size);
        let stable = size == previous;
        previous = size;
        async move {
            let lines = tokio::task::block_in_place(|| cli_logs(server, &[DOMAIN, "-n", "3"]));
            let finished = lines.iter().any(|l| l.ends_with("flood finished"));
            (finished || stable).then_some(())
        }
    })
    .await;
    largest = largest.max(folder_bytes(&logs));

    assert!(
        largest <= CAP,
        "the log folder reached {largest} bytes, over the {CAP}-byte cap"
    );
    assert!(
        logs.join("app.log.1").exists(),
        "30 MiB of output rotated app.log at least once"
    );
    assert!(
        !logs.join("app.log.3").exists(),
        "only two rotated files are kept"
    );
    let (status, body) = edge_json(&server, DOMAIN, "/").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["written"], 30 * 1024);
}

// ---- environment and status ----------------------------------------------

#[tokio::test]
async fn manifest_env_reaches_the_app_beside_port_and_host_and_nothing_else_leaks() {
    const DOMAIN: &str = "env.localhost";
    let server = AppServer::start();
    server.create_admin_and_login();
    let manifest = format!(
        "{VERSIONED_MANIFEST}[env]\nGREETING = \"hello from the manifest\"\nWORKERS = 4\n\
         DEBUG = false\n"
    );
    let dir = tempfile::tempdir().expect("app dir");
    write_versioned(dir.path(), 1, &manifest);
    assert_ok(&deploy(&server, dir.path(), DOMAIN));

    let (status, env) = edge_json(&server, DOMAIN, "/env").await;
    assert_eq!(status, 200, "{env}");
    assert_eq!(env["GREETING"], "hello from the manifest");
    assert_eq!(env["WORKERS"], "4");
    assert_eq!(env["DEBUG"], "false");
    assert_eq!(env["HOST"], "127.0.0.1");
    let port: u16 = env["PORT"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .expect("PORT");
    let spinlet = spinlet_status(&server, DOMAIN);
    assert_eq!(spinlet["port"], port, "the app listens where it was told");

    // `serve` runs with SPINFORGE_LOG and cargo's variables; the app gets
    // none of them.
    let names: Vec<&String> = env.as_object().expect("env").keys().collect();
    assert!(
        !names
            .iter()
            .any(|n| *n == "SPINFORGE_LOG" || n.starts_with("CARGO")),
        "the server's environment leaked into the app: {names:?}"
    );
}

#[tokio::test]
async fn status_json_shows_the_running_spinlet_its_pid_port_and_requests() {
    const DOMAIN: &str = "status.localhost";
    const REQUESTS: u64 = 5;
    let mut server = AppServer::start();
    server.create_admin_and_login();
    let dir = versioned_dir(1);
    assert_ok(&deploy(&server, dir.path(), DOMAIN));

    let mut pids = Vec::new();
    for _ in 0..REQUESTS {
        let (status, body) = edge_json(&server, DOMAIN, "/").await;
        assert_eq!(status, 200, "{body}");
        pids.push(body["pid"].as_u64().expect("pid"));
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "one instance served every request");

    let status = cli_json(&server, &["status", DOMAIN]);
    let site = &status["sites"][0];
    assert_eq!(site["site"]["type"], "process", "{status}");
    let spinlet = &site["spinlet"];
    assert_eq!(spinlet["state"], "running", "{spinlet}");
    assert_eq!(spinlet["release"], site["site"]["active_release"]);
    assert_eq!(spinlet["pid"], pids[0], "{spinlet}");
    let port = spinlet["port"].as_u64().expect("port");
    assert!((1..=65535).contains(&port), "{spinlet}");
    let requests = spinlet["requests"].as_u64().expect("requests");
    assert!(requests >= REQUESTS, "{requests} < {REQUESTS}: {spinlet}");
    assert_eq!(spinlet["errors"], 0, "{spinlet}");
    assert!(spinlet["uptime_secs"].is_u64(), "{spinlet}");

    // The table form names the state too.
    let out = server.cli(&["status", DOMAIN], None);
    assert_ok(&out);
    assert!(stdout(&out).contains("running"), "{}", stdout(&out));

    // Stopping the server stops the app.
    server.stop();
    let pid = pids[0];
    let deadline = Instant::now() + STEP;
    while process_exists(pid) {
        assert!(
            Instant::now() < deadline,
            "app pid {pid} outlived the server"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
