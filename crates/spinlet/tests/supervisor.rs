//! The supervisor's races, driven through its public API with real app
//! processes (small Python scripts): failed starts, cancelled wakes, a
//! promote during a start, and shutdown against the idle reaper.

use spinlet::manifest;
use spinlet::{
    AppSpec, Launch, PlainSpawner, Spawned, Spawner, State, Supervisor, SupervisorConfig, WakeError,
};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An app that waits `delay` seconds, then serves `/` with its release
/// name; with `exit_code`, it exits at once instead.
fn app(
    dir: &Path,
    release: &str,
    delay: f64,
    exit_code: Option<i32>,
    min_instances: u32,
) -> AppSpec {
    let folder = dir.join(release);
    std::fs::create_dir_all(&folder).expect("mkdir");
    let script = match exit_code {
        Some(code) => format!("import sys\nsys.exit({code})\n"),
        None => format!(
            "import os, time\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\
             time.sleep({delay})\n\
             class H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        \
             self.send_response(200); self.end_headers(); self.wfile.write(b'{release}')\n    \
             def log_message(self, *a): pass\n\
             HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"
        ),
    };
    std::fs::write(folder.join("app.py"), script).expect("write");
    let text = format!(
        "[app]\ncommand = [\"python3\", \"app.py\"]\nstart_timeout_secs = 10\n\
         stop_grace_secs = 1\nmin_instances = {min_instances}\n"
    );
    AppSpec {
        release: release.into(),
        dir: folder,
        manifest: manifest::parse(&text).expect("manifest"),
    }
}

fn supervisor(data: &Path) -> Supervisor {
    supervisor_with(data, Arc::new(PlainSpawner))
}

fn supervisor_with(data: &Path, spawner: Arc<dyn Spawner>) -> Supervisor {
    let mut config = SupervisorConfig::new(data);
    config.crash_limit = 3;
    config.backoff_base = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(50);
    config.reap_interval = Duration::from_millis(50);
    Supervisor::new(config, spawner).expect("supervisor")
}

/// The real [`PlainSpawner`], wrapped to count the starts it hears have
/// settled and, while `refuse` is set, to fail a spawn the way a host
/// that cannot start a process does.
#[derive(Default)]
struct Counting {
    settled: AtomicUsize,
    refuse: AtomicBool,
}

impl Spawner for Counting {
    fn spawn(&self, launch: &Launch) -> std::io::Result<Spawned> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("refused for the test"));
        }
        PlainSpawner.spawn(launch)
    }

    fn start_settled(&self) {
        self.settled.fetch_add(1, Ordering::SeqCst);
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("app.py"))
}

/// Every process whose environment carries a spinlet tag and whose working
/// directory is under `dir`.
fn apps_under(dir: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(Result::ok)
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        if cwd.starts_with(dir) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn failed_starts_count_as_crashes_and_end_in_failed() {
    let dir = tempfile::tempdir().expect("dir");
    let supervisor = supervisor(dir.path());
    supervisor
        .register("a.test", app(dir.path(), "r1", 0.0, Some(1), 0))
        .expect("register");
    for _ in 0..3 {
        let result = supervisor.wake("a.test").await;
        assert!(
            matches!(result, Err(WakeError::Start(_))),
            "a dying app never leases"
        );
    }
    let status = supervisor.status("a.test").expect("status");
    assert_eq!(status.state, State::Failed, "{status:?}");
    assert_eq!(status.restarts, 3);
    assert!(matches!(
        supervisor.wake("a.test").await,
        Err(WakeError::Failed { .. })
    ));
}

#[tokio::test]
async fn every_start_settles_once_whether_it_is_healthy_fails_or_cannot_spawn() {
    let dir = tempfile::tempdir().expect("dir");
    let spawner = Arc::new(Counting::default());
    let supervisor = supervisor_with(dir.path(), spawner.clone());
    supervisor
        .register("ok.test", app(dir.path(), "ok", 0.0, None, 0))
        .expect("register");
    supervisor
        .register("dies.test", app(dir.path(), "dies", 0.0, Some(1), 0))
        .expect("register");

    supervisor.wake("ok.test").await.expect("a healthy start");
    assert_eq!(spawner.settled.load(Ordering::SeqCst), 1, "healthy");

    assert!(matches!(
        supervisor.wake("dies.test").await,
        Err(WakeError::Start(_))
    ));
    assert_eq!(spawner.settled.load(Ordering::SeqCst), 2, "the app died");

    // A spawn that fails returns before any health check: it settles too,
    // so the sandbox's warm pool is topped up after it.
    supervisor
        .register("refused.test", app(dir.path(), "refused", 0.0, None, 0))
        .expect("register");
    spawner.refuse.store(true, Ordering::SeqCst);
    assert!(matches!(
        supervisor.wake("refused.test").await,
        Err(WakeError::Start(_))
    ));
    assert_eq!(
        spawner.settled.load(Ordering::SeqCst),
        3,
        "the spawn failed"
    );
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_wake_whose_caller_gives_up_still_finishes_and_is_tracked() {
    let dir = tempfile::tempdir().expect("dir");
    let supervisor = supervisor(dir.path());
    supervisor
        .register("a.test", app(dir.path(), "r1", 0.5, None, 0))
        .expect("register");
    let gave_up = tokio::time::timeout(Duration::from_millis(50), supervisor.wake("a.test")).await;
    assert!(gave_up.is_err(), "the caller went away mid start");

    wait_until("the start finished", || {
        supervisor
            .status("a.test")
            .is_some_and(|s| s.state == State::Running)
    })
    .await;
    let pid = supervisor
        .status("a.test")
        .and_then(|s| s.pid)
        .expect("pid");
    assert!(alive(pid));
    supervisor.shutdown().await;
    assert!(
        !alive(pid),
        "shutdown stops the instance the abandoned wake started"
    );
}

#[tokio::test]
async fn concurrent_wakes_share_one_start() {
    let dir = tempfile::tempdir().expect("dir");
    let supervisor = supervisor(dir.path());
    supervisor
        .register("a.test", app(dir.path(), "r1", 0.3, None, 0))
        .expect("register");
    let wakes = (0..20).map(|_| {
        let supervisor = supervisor.clone();
        tokio::spawn(async move { supervisor.wake("a.test").await.map(|l| l.addr()) })
    });
    let mut addrs = Vec::new();
    for wake in wakes {
        addrs.push(wake.await.expect("join").expect("lease"));
    }
    addrs.dedup();
    assert_eq!(addrs.len(), 1, "one instance for all: {addrs:?}");
    assert_eq!(apps_under(dir.path()).len(), 1);
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_promote_during_a_start_wins_and_the_stale_instance_is_stopped() {
    let dir = tempfile::tempdir().expect("dir");
    let supervisor = supervisor(dir.path());
    supervisor
        .register("a.test", app(dir.path(), "old", 5.0, None, 0))
        .expect("register");
    // The old release needs 5 s to listen, so the new one (which needs only
    // Python's start-up) is promoted while the old start is still running,
    // even on a loaded machine.
    let waking = {
        let supervisor = supervisor.clone();
        tokio::spawn(async move { supervisor.wake("a.test").await.map(drop) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let candidate = supervisor
        .prepare("a.test", app(dir.path(), "new", 0.0, None, 0))
        .await
        .expect("new");
    supervisor.promote(candidate);

    let woke = waking.await.expect("join");
    assert!(woke.is_err(), "the stale start does not hand out a lease");
    let status = supervisor.status("a.test").expect("status");
    assert_eq!(status.release.as_deref(), Some("new"));
    assert_eq!(status.state, State::Running);
    wait_until("only the new instance runs", || {
        apps_under(dir.path()).len() == 1
    })
    .await;
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_removed_site_leaves_no_process_even_mid_start() {
    let dir = tempfile::tempdir().expect("dir");
    let supervisor = supervisor(dir.path());
    supervisor
        .register("a.test", app(dir.path(), "r1", 0.5, None, 0))
        .expect("register");
    let waking = {
        let supervisor = supervisor.clone();
        tokio::spawn(async move { supervisor.wake("a.test").await.map(drop) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    supervisor.remove("a.test").await;
    assert!(waking.await.expect("join").is_err());
    wait_until("no app is left", || apps_under(dir.path()).is_empty()).await;
}

#[tokio::test]
async fn shutdown_stops_always_on_apps_and_the_reaper_does_not_restart_them() {
    let dir = tempfile::tempdir().expect("dir");
    let supervisor = supervisor(dir.path());
    supervisor
        .register("a.test", app(dir.path(), "r1", 0.0, None, 1))
        .expect("register");
    wait_until("the always-on app runs", || {
        supervisor
            .status("a.test")
            .is_some_and(|s| s.state == State::Running)
    })
    .await;
    supervisor.shutdown().await;
    assert!(apps_under(dir.path()).is_empty());
    // Several reaper intervals later, still nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        apps_under(dir.path()).is_empty(),
        "the reaper restarted an app after shutdown"
    );
}
