//! What the incident tests run against: a real SMTP server (PyPI
//! `aiosmtpd`, from a venv) writing each message into a maildir, and a
//! small HTTP receiver on loopback that keeps every webhook delivery.
//!
//! The python comes from `SPINFORGE_TEST_SMTP_PYTHON` (what `.ci/run`
//! sets), else from a venv made under the target dir with pip.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Exact version, also pinned in `.ci/run`.
pub const AIOSMTPD: &str = "aiosmtpd==1.4.6";

/// The python with aiosmtpd, or `None` (said loudly) when this host has
/// no python3 with venv support; never `None` under CI.
pub fn python() -> Option<PathBuf> {
    static PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    PYTHON.get_or_init(find_or_install).clone()
}

fn find_or_install() -> Option<PathBuf> {
    super::common::pip_tool("SPINFORGE_TEST_SMTP_PYTHON", AIOSMTPD, "python")
}

/// A real SMTP server on 127.0.0.1 that stores each message it accepts
/// in `maildir/new`. Killed on drop.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    pub maildir: PathBuf,
}

impl SmtpServer {
    pub fn start(python: &Path, dir: &Path) -> SmtpServer {
        let maildir = dir.join("maildir");
        let port = crate::common::free_port();
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start aiosmtpd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        SmtpServer {
            child,
            port,
            maildir,
        }
    }

    /// The raw messages received so far.
    pub fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect()
    }

    /// Waits up to `within` for a message containing `needle`.
    pub async fn wait_for(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self.messages().into_iter().find(|m| m.contains(needle)) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no e-mail with {needle:?} within {within:?}; got {:?}",
                self.messages()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One webhook delivery as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    pub body: Vec<u8>,
}

/// An HTTP server on 127.0.0.1 that answers 503 to its first
/// `fail_first` POSTs (to provoke retries), 200 to the rest, and keeps
/// what it accepted. It stops when the test's runtime ends.
pub struct WebhookReceiver {
    pub addr: std::net::SocketAddr,
    received: Arc<Mutex<Vec<Delivery>>>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

impl WebhookReceiver {
    pub async fn start(fail_first: usize) -> WebhookReceiver {
        use axum::http::StatusCode;
        use axum::routing::post;
        use std::sync::atomic::Ordering;
        let received = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sink = received.clone();
        let refusals = refused.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let (sink, refusals) = (sink.clone(), refusals.clone());
                    async move {
                        let refuse = refusals
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                (n < fail_first).then_some(n + 1)
                            })
                            .is_ok();
                        if refuse {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        let header = |name: &str| {
                            headers
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        sink.lock().expect("lock").push(Delivery {
                            timestamp: header("x-spinforge-timestamp"),
                            signature: header("x-spinforge-signature"),
                            body: body.to_vec(),
                        });
                        StatusCode::OK
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver {
            addr,
            received,
            refused,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// How many POSTs were answered 503.
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.received.lock().expect("lock").clone()
    }

    /// Waits up to `within` for a delivery whose JSON `type` is `kind`.
    pub async fn wait_for(&self, kind: &str, within: Duration) -> (Delivery, serde_json::Value) {
        let deadline = Instant::now() + within;
        loop {
            for d in self.deliveries() {
                let body: serde_json::Value =
                    serde_json::from_slice(&d.body).expect("webhook body is JSON");
                if body["type"] == kind {
                    return (d, body);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} webhook within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
