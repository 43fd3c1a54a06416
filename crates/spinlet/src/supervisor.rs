//! The supervisor: one slot per process site, each moving through
//! stopped → starting → running → draining → stopped, or failed.
//!
//! It starts an app on the first request (once, however many requests
//! race), stops it when idle, restarts it with backoff when it crashes,
//! and swaps releases by starting the new one beside the old one. It does
//! not know about HTTP routing or the store: the hub tells it what each
//! site runs, and the edge asks it for an address.

use crate::logs::{AppLog, LogConfig};
use crate::manifest::{self, Manifest};
use crate::ports::Ports;
use crate::sandbox::{self, Confinement, SandboxUsage, SiteSandbox};
use crate::spawn::{Launch, Spawned, Spawner};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use secrecy::SecretString;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Loopback ports handed to apps.
    pub ports: RangeInclusive<u16>,
    /// Per-site log folders live under here.
    pub logs_dir: PathBuf,
    /// Running processes are recorded here, so a restarted `serve` can
    /// reap what a killed one left behind.
    pub state_file: PathBuf,
    /// This many crashes within `crash_window` mark a site failed.
    pub crash_limit: usize,
    pub crash_window: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Longest wait for an old release's in-flight requests after a swap.
    pub drain_timeout: Duration,
    /// How often idle apps are looked for.
    pub reap_interval: Duration,
    pub log: LogConfig,
}

impl SupervisorConfig {
    pub fn new(data_dir: &Path) -> SupervisorConfig {
        let base = data_dir.join("spinlets");
        SupervisorConfig {
            ports: 20000..=29999,
            logs_dir: base.join("logs"),
            state_file: base.join("running.json"),
            crash_limit: 5,
            crash_window: Duration::from_secs(120),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            reap_interval: Duration::from_millis(500),
            log: LogConfig::default(),
        }
    }
}

/// What a site runs: one release folder and its manifest.
#[derive(Debug, Clone)]
pub struct AppSpec {
    pub release: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Stopped,
    Starting,
    Running,
    Draining,
    Failed,
}

/// Why a request could not be given an app instance.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WakeError {
    /// The site is not a process site the supervisor knows.
    #[error("no app is deployed for this site")]
    NotDeployed,
    /// The app crashed too often; it stays down until a deploy, rollback
    /// or restart.
    #[error("the app is failing: {reason}")]
    Failed {
        reason: String,
        retry_after: Duration,
    },
    /// The app did not start or did not become healthy in time.
    #[error("{0}")]
    Start(StartError),
}

/// A start that did not end in a healthy app, with the app's last log
/// lines so the person deploying sees why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StartError {
    pub message: String,
    pub log_tail: Vec<String>,
    /// True iff the app itself is at fault (bad command, crash, never
    /// healthy); false when we could not spawn it for our own reasons.
    pub app_fault: bool,
    /// True iff this host refused to start apps (a sandbox layer it lacks).
    pub host_refused: bool,
}

/// The live numbers of one site's app.
#[derive(Debug, Clone, Serialize)]
pub struct SpinletStatus {
    pub state: State,
    pub release: Option<String>,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub uptime_secs: Option<u64>,
    pub last_request_secs_ago: Option<u64>,
    pub in_flight: usize,
    pub requests: u64,
    pub errors: u64,
    pub restarts: u64,
    pub memory_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub failed_reason: Option<String>,
    /// How apps are isolated on this server (`sandboxed`, or what is
    /// missing).
    pub isolation: String,
    /// Limits in force and current use of the shown instance's sandbox.
    pub sandbox: Option<SandboxUsage>,
}

/// Holds an instance busy for one request (or one WebSocket): it is not
/// idle-stopped or drained away while a lease exists.
pub struct Lease {
    instance: Arc<Instance>,
    slot: Arc<Slot>,
    clock: Instant,
}

impl Lease {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.instance.port))
    }

    /// How to reach the instance when it lives in its own network
    /// namespace; `None` when `addr` is reachable from the host.
    pub fn dial(&self) -> Option<AppDial> {
        let dialer = self.instance.confinement.as_ref()?.dialer()?;
        Some(AppDial {
            key: self.instance.serial,
            dialer,
            addr: self.addr(),
        })
    }

    /// Counts the response status; 5xx count as app errors.
    pub fn record_status(&self, status: u16) {
        if status >= 500 {
            self.slot.lock().errors += 1;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.instance.touch(self.clock);
        self.instance.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Connects to one sandboxed instance from inside its network namespace.
#[derive(Clone)]
pub struct AppDial {
    /// Unique per instance for the supervisor's lifetime; a connection
    /// pool keyed by it never hands one instance's connection to another.
    pub key: u64,
    dialer: Arc<sandbox::Dialer>,
    addr: SocketAddr,
}

impl AppDial {
    pub async fn connect(&self, timeout: Duration) -> std::io::Result<tokio::net::TcpStream> {
        sandbox::connect(Some(&self.dialer), self.addr, timeout).await
    }
}

/// A started, healthy instance of a new release that is not serving yet.
pub struct Candidate {
    slot: Arc<Slot>,
    instance: Arc<Instance>,
    spec: AppSpec,
}

struct Instance {
    release: String,
    /// Unique per instance (see [`AppDial::key`]).
    serial: u64,
    pid: u32,
    port: u16,
    /// The sandbox's hold on the host; `None` for a plain process.
    confinement: Option<Arc<Confinement>>,
    started: Instant,
    /// Milliseconds since the supervisor's clock began.
    last_active_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// Set before an intentional stop, so the exit is not a crash.
    stopping: AtomicBool,
    exited: watch::Receiver<bool>,
    idle_timeout: Duration,
    stop_grace: Duration,
    scale_to_zero: bool,
}

impl Instance {
    fn touch(&self, clock: Instant) {
        let now = clock.elapsed().as_millis() as u64;
        self.last_active_ms.fetch_max(now, Ordering::AcqRel);
    }

    fn has_exited(&self) -> bool {
        *self.exited.borrow()
    }
}

struct Slot {
    domain: String,
    log: AppLog,
    /// Single flight: one start at a time per site.
    state: Mutex<SlotState>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SlotState {
    /// Takes the current and draining instances out, for stopping.
    fn take_instances(&mut self) -> Vec<Arc<Instance>> {
        self.current
            .take()
            .into_iter()
            .chain(self.draining.drain(..))
            .collect()
    }
}

#[derive(Default)]
struct SlotState {
    spec: Option<AppSpec>,
    current: Option<Arc<Instance>>,
    draining: Vec<Arc<Instance>>,
    /// The start in progress, if any; every waiter watches the same one.
    starting: Option<watch::Receiver<Option<StartOutcome>>>,
    /// Bumped by promote, remove, restart and shutdown: a start that began
    /// under an older generation must not install its instance.
    generation: u64,
    failed: Option<String>,
    crashes: VecDeque<Instant>,
    not_before: Option<Instant>,
    requests: u64,
    errors: u64,
    restarts: u64,
    last_request: Option<Instant>,
}

#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

/// The shared result of one start attempt.
type StartOutcome = Result<(), StartError>;

/// A site's secrets as environment variables (name, value).
pub type SecretVars = Vec<(String, SecretString)>;

/// What [`SecretEnv::load`] returns: `Err` is a message that names the
/// problem without any value.
pub type SecretEnvFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<SecretVars, String>> + Send + 'a>>;

/// A site's secrets as environment variables, read at every start
/// (issue 8). The hub plugs the secret store in here; on `Err` the start
/// fails.
pub trait SecretEnv: Send + Sync + 'static {
    fn load<'a>(&'a self, site: &'a str) -> SecretEnvFuture<'a>;
}

struct Inner {
    /// Set by `shutdown`: no new starts, and the reaper stops.
    shutting_down: AtomicBool,
    config: SupervisorConfig,
    spawner: Arc<dyn Spawner>,
    ports: Ports,
    clock: Instant,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// pid → tag of every process we run, mirrored to the state file.
    running: Mutex<HashMap<u32, String>>,
    /// Source of instance serials.
    serials: AtomicU64,
    /// Where each start reads its site's secrets; none means no secrets.
    secret_env: std::sync::OnceLock<Arc<dyn SecretEnv>>,
    /// The runtime the supervisor was made on. Its tasks (starts, stops,
    /// drains, the reaper) run there even when a request served on an
    /// edge thread's own runtime sets them off, so they outlive it.
    runtime: tokio::runtime::Handle,
}

/// How long a failed site tells clients to wait.
const FAILED_RETRY_AFTER: Duration = Duration::from_secs(30);

impl Supervisor {
    /// Creates the supervisor and reaps processes a previous, killed
    /// `serve` left running. Call from within a tokio runtime.
    pub fn new(config: SupervisorConfig, spawner: Arc<dyn Spawner>) -> std::io::Result<Supervisor> {
        std::fs::create_dir_all(&config.logs_dir)?;
        reap_leftovers(&config.state_file);
        let supervisor = Supervisor {
            inner: Arc::new(Inner {
                ports: Ports::new(config.ports.clone()),
                shutting_down: AtomicBool::new(false),
                config,
                spawner,
                clock: Instant::now(),
                slots: Mutex::new(HashMap::new()),
                running: Mutex::new(HashMap::new()),
                serials: AtomicU64::new(1),
                secret_env: std::sync::OnceLock::new(),
                runtime: tokio::runtime::Handle::current(),
            }),
        };
        supervisor.persist();
        let weak = Arc::downgrade(&supervisor.inner);
        supervisor.spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let interval = inner.config.reap_interval;
                Supervisor { inner }.reap_idle();
                tokio::time::sleep(interval).await;
            }
        });
        Ok(supervisor)
    }

    /// Spawns `task` on the supervisor's own runtime, whichever runtime
    /// the caller runs on.
    fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.runtime.spawn(task)
    }

    /// Plugs in the secret store; every later start reads the site's
    /// secrets from it. Only the first call counts.
    pub fn set_secret_env(&self, source: Arc<dyn SecretEnv>) {
        let _ = self.inner.secret_env.set(source);
    }

    fn slot(&self, domain: &str) -> Option<Arc<Slot>> {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .cloned()
    }

    fn slot_or_create(&self, domain: &str) -> std::io::Result<Arc<Slot>> {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(domain) {
            return Ok(slot.clone());
        }
        let log = AppLog::open(
            &self.inner.config.logs_dir.join(domain),
            self.inner.config.log.clone(),
        )?;
        let slot = Arc::new(Slot {
            domain: domain.to_owned(),
            log,
            state: Mutex::new(SlotState::default()),
        });
        slots.insert(domain.to_owned(), slot.clone());
        Ok(slot)
    }

    /// Tells the supervisor what a site runs, without starting it unless
    /// its manifest asks for a minimum instance. Used at start-up.
    pub fn register(&self, domain: &str, spec: AppSpec) -> std::io::Result<()> {
        let slot = self.slot_or_create(domain)?;
        let always_on = spec.manifest.min_instances > 0;
        slot.lock().spec = Some(spec);
        if always_on {
            self.wake_in_background(domain);
        }
        Ok(())
    }

    /// Returns a lease on a running instance of the site's app, starting
    /// it first if needed. Concurrent callers share one start.
    pub async fn wake(&self, domain: &str) -> Result<Lease, WakeError> {
        let slot = self.slot(domain).ok_or(WakeError::NotDeployed)?;
        if let Some(lease) = self.lease_if_running(&slot)? {
            return Ok(lease);
        }
        let mut attempt = self.join_start(&slot)?;
        let outcome = match attempt.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_) => None,
        };
        match outcome {
            Some(Ok(())) => self.lease_if_running(&slot)?.ok_or(WakeError::NotDeployed),
            Some(Err(error)) => Err(WakeError::Start(error)),
            None => Err(WakeError::NotDeployed),
        }
    }

    /// Joins the slot's start in progress, or begins one. The start runs
    /// in its own task, so a waiter that goes away (a client hanging up
    /// mid cold start) cannot leave a half-started process behind.
    fn join_start(
        &self,
        slot: &Arc<Slot>,
    ) -> Result<watch::Receiver<Option<StartOutcome>>, WakeError> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(WakeError::NotDeployed);
        }
        let mut state = slot.lock();
        if let Some(attempt) = &state.starting {
            return Ok(attempt.clone());
        }
        let spec = state.spec.clone().ok_or(WakeError::NotDeployed)?;
        let (done_tx, done_rx) = watch::channel(None);
        state.starting = Some(done_rx.clone());
        let generation = state.generation;
        let not_before = state.not_before;
        drop(state);

        let supervisor = self.clone();
        let slot = slot.clone();
        self.spawn(async move {
            if let Some(not_before) = not_before {
                // A crash backoff is running; wait it out (it is never
                // longer than the configured maximum).
                tokio::time::sleep_until(not_before.into()).await;
            }
            let started = supervisor.start_instance(&slot, &spec).await;
            let outcome = supervisor.finish_start(&slot, generation, started).await;
            let _ = done_tx.send(Some(outcome));
        });
        Ok(done_rx)
    }

    /// Installs a started instance, unless the slot moved on meanwhile
    /// (promoted, removed, restarted, shut down), in which case the instance
    /// is stopped. A failed start counts as a crash.
    async fn finish_start(
        &self,
        slot: &Arc<Slot>,
        generation: u64,
        started: Result<Arc<Instance>, StartError>,
    ) -> StartOutcome {
        let stale = {
            let mut state = slot.lock();
            state.starting = None;
            let stale =
                state.generation != generation || self.inner.shutting_down.load(Ordering::Acquire);
            match &started {
                Ok(instance) if !stale => {
                    state.current = Some(instance.clone());
                    state.not_before = None;
                }
                Ok(_) => {}
                Err(error) if error.app_fault && !stale => {
                    self.record_crash(&slot.domain, &slot.log, &mut state, &error.message);
                }
                Err(_) => {}
            }
            stale
        };
        match started {
            Ok(instance) if stale => {
                self.stop_instance(slot, &instance).await;
                Err(StartError {
                    message: "the site changed while its app was starting".into(),
                    log_tail: Vec::new(),
                    app_fault: false,
                    host_refused: false,
                })
            }
            Ok(_) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Counts a crash: sets the backoff before the next start, or marks the
    /// site failed once the crash limit is reached within the window.
    /// Returns true iff a restart should follow.
    fn record_crash(
        &self,
        domain: &str,
        log: &AppLog,
        state: &mut SlotState,
        description: &str,
    ) -> bool {
        let now = Instant::now();
        let window = self.inner.config.crash_window;
        state.crashes.push_back(now);
        while state
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            state.crashes.pop_front();
        }
        state.restarts += 1;
        if state.crashes.len() >= self.inner.config.crash_limit {
            let reason = format!(
                "crashed {} times within {} s; last: {description}",
                state.crashes.len(),
                window.as_secs()
            );
            tracing::warn!(target: "spinforge::audit", event = "spinlet.failed",
                site = %domain, reason = %reason, "app marked failed");
            log.note(&format!("marked failed: {reason}"));
            state.failed = Some(reason);
            return false;
        }
        let exponent = state.crashes.len().saturating_sub(1).min(16) as u32;
        let backoff = self
            .inner
            .config
            .backoff_base
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.inner.config.backoff_max);
        state.not_before = Some(now + backoff);
        tracing::warn!(site = %domain, backoff_ms = backoff.as_millis() as u64,
            "spinlet crashed; restarting after backoff");
        true
    }

    fn lease_if_running(&self, slot: &Arc<Slot>) -> Result<Option<Lease>, WakeError> {
        let mut state = slot.lock();
        if let Some(reason) = &state.failed {
            return Err(WakeError::Failed {
                reason: reason.clone(),
                retry_after: FAILED_RETRY_AFTER,
            });
        }
        let Some(instance) = state.current.clone().filter(|i| !i.has_exited()) else {
            return Ok(None);
        };
        instance.in_flight.fetch_add(1, Ordering::AcqRel);
        instance.touch(self.inner.clock);
        state.requests += 1;
        state.last_request = Some(Instant::now());
        Ok(Some(Lease {
            instance,
            slot: slot.clone(),
            clock: self.inner.clock,
        }))
    }

    fn wake_in_background(&self, domain: &str) {
        let supervisor = self.clone();
        let domain = domain.to_owned();
        self.spawn(async move {
            match supervisor.wake(&domain).await {
                Ok(lease) => drop(lease),
                Err(e) => tracing::warn!(site = %domain, error = %e, "background start failed"),
            }
        });
    }

    /// Starts a new release beside whatever runs now and waits until it is
    /// healthy. Nothing is switched yet: see [`Supervisor::promote`].
    pub async fn prepare(&self, domain: &str, spec: AppSpec) -> Result<Candidate, StartError> {
        let slot = self.slot_or_create(domain).map_err(|e| StartError {
            message: format!("cannot open the app log: {e}"),
            log_tail: Vec::new(),
            app_fault: false,
            host_refused: false,
        })?;
        let instance = self.start_instance(&slot, &spec).await?;
        Ok(Candidate {
            slot,
            instance,
            spec,
        })
    }

    /// Switches the site to a prepared release. The old instance keeps its
    /// in-flight requests and stops once they are done.
    pub fn promote(&self, candidate: Candidate) {
        let Candidate {
            slot,
            instance,
            spec,
        } = candidate;
        let old = {
            let mut state = slot.lock();
            state.generation += 1;
            state.spec = Some(spec);
            state.failed = None;
            state.crashes.clear();
            state.not_before = None;
            let old = state.current.replace(instance.clone());
            if let Some(old) = &old {
                state.draining.push(old.clone());
            }
            old
        };
        slot.log
            .note(&format!("release {} now serves", instance.release));
        tracing::info!(site = %slot.domain, release = %instance.release, pid = instance.pid,
            "spinlet promoted");
        if let Some(old) = old {
            let supervisor = self.clone();
            self.spawn(async move { supervisor.drain(slot, old).await });
        }
    }

    /// Stops a prepared instance that will not be promoted.
    pub async fn discard(&self, candidate: Candidate) {
        self.stop_instance(&candidate.slot, &candidate.instance)
            .await;
    }

    /// Stops every instance of a site and forgets it.
    pub async fn remove(&self, domain: &str) {
        let slot = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(domain);
        if let Some(slot) = slot {
            let instances = {
                let mut state = slot.lock();
                state.generation += 1;
                state.spec = None;
                state.take_instances()
            };
            for instance in instances {
                self.stop_instance(&slot, &instance).await;
            }
            // A later site with the same domain must not see these logs,
            // nor this one's data: nothing is written after the close.
            slot.log.close().await;
            let spawner = self.inner.spawner.clone();
            let site = domain.to_owned();
            let _ = tokio::task::spawn_blocking(move || spawner.forget_site(&site)).await;
            let logs = self.inner.config.logs_dir.join(domain);
            if let Err(e) = std::fs::remove_dir_all(&logs) {
                tracing::warn!(site = %domain, error = %e, "app logs not removed");
            }
        }
    }

    /// The site's own sandbox settings (`None`: no sandbox on this
    /// server). Blocking file I/O; call off the async threads.
    pub fn site_sandbox(&self, domain: &str) -> std::io::Result<Option<SiteSandbox>> {
        self.inner.spawner.site_sandbox(domain)
    }

    /// Stores the site's sandbox settings; they apply from the app's next
    /// start. Blocking file I/O; call off the async threads.
    pub fn set_site_sandbox(&self, domain: &str, settings: &SiteSandbox) -> std::io::Result<()> {
        self.inner.spawner.set_site_sandbox(domain, settings)
    }

    /// Stops every instance of a site and forgets what it runs until the
    /// next [`Supervisor::register`], keeping its logs and data: for an
    /// incident that isolates the site. Returns true iff the site is known.
    pub async fn suspend(&self, domain: &str) -> bool {
        let Some(slot) = self.slot(domain) else {
            return false;
        };
        let instances = {
            let mut state = slot.lock();
            state.generation += 1;
            state.spec = None;
            state.take_instances()
        };
        for instance in instances {
            self.stop_instance(&slot, &instance).await;
        }
        true
    }

    /// Stops the site's app (it starts again on the next request) and
    /// clears a failed state.
    pub async fn restart(&self, domain: &str) -> Result<(), WakeError> {
        let slot = self.slot(domain).ok_or(WakeError::NotDeployed)?;
        let (current, always_on) = {
            let mut state = slot.lock();
            state.generation += 1;
            state.failed = None;
            state.crashes.clear();
            state.not_before = None;
            let always_on = state
                .spec
                .as_ref()
                .is_some_and(|s| s.manifest.min_instances > 0);
            (state.current.take(), always_on)
        };
        if let Some(instance) = current {
            self.stop_instance(&slot, &instance).await;
        }
        if always_on {
            self.wake_in_background(domain);
        }
        Ok(())
    }

    /// Stops every app gracefully; for `serve`'s shutdown.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        let slots: Vec<Arc<Slot>> = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut stops = Vec::new();
        let mut starts = Vec::new();
        for slot in slots {
            let instances = {
                let mut state = slot.lock();
                state.generation += 1;
                starts.extend(state.starting.clone());
                state.take_instances()
            };
            for instance in instances {
                let supervisor = self.clone();
                let slot = slot.clone();
                stops.push(
                    self.spawn(async move { supervisor.stop_instance(&slot, &instance).await }),
                );
            }
        }
        for stop in stops {
            let _ = stop.await;
        }
        // Starts still in flight see the new generation and stop what they
        // started; wait for them so nothing outlives `serve`.
        for mut start in starts {
            let wait = start.wait_for(Option::is_some);
            let _ = tokio::time::timeout(Duration::from_secs(15), wait).await;
        }
    }

    pub fn status(&self, domain: &str) -> Option<SpinletStatus> {
        let slot = self.slot(domain)?;
        let state = slot.lock();
        let live = state.current.as_ref().filter(|i| !i.has_exited());
        let phase = if state.failed.is_some() {
            State::Failed
        } else if state.starting.is_some() {
            State::Starting
        } else if live.is_some() {
            State::Running
        } else if !state.draining.is_empty() {
            State::Draining
        } else {
            State::Stopped
        };
        let shown = live.or(state.draining.first());
        let (memory_bytes, cpu_seconds) = shown.map_or((None, None), |i| proc_usage(i.pid));
        let sandbox = shown
            .and_then(|i| i.confinement.as_ref())
            .map(|c| c.usage());
        // The whole sandbox (every process of the app) when there is one.
        let memory_bytes = sandbox
            .as_ref()
            .and_then(|s| s.memory_bytes)
            .or(memory_bytes);
        Some(SpinletStatus {
            state: phase,
            release: state.spec.as_ref().map(|s| s.release.clone()),
            pid: shown.map(|i| i.pid),
            port: shown.map(|i| i.port),
            uptime_secs: shown.map(|i| i.started.elapsed().as_secs()),
            last_request_secs_ago: state.last_request.map(|t| t.elapsed().as_secs()),
            in_flight: shown.map_or(0, |i| i.in_flight.load(Ordering::Acquire)),
            requests: state.requests,
            errors: state.errors,
            restarts: state.restarts,
            memory_bytes,
            cpu_seconds,
            failed_reason: state.failed.clone(),
            isolation: self.inner.spawner.describe(),
            sandbox,
        })
    }

    /// The site's captured app log.
    pub fn log(&self, domain: &str) -> Option<AppLog> {
        self.slot(domain).map(|s| s.log.clone())
    }

    async fn start_instance(
        &self,
        slot: &Arc<Slot>,
        spec: &AppSpec,
    ) -> Result<Arc<Instance>, StartError> {
        let ours = |message: String| StartError {
            message,
            log_tail: Vec::new(),
            app_fault: false,
            host_refused: false,
        };
        let argv = &spec.manifest.command;
        let first = argv
            .first()
            .ok_or_else(|| ours("the manifest has no command".into()))?;
        let program = manifest::resolve_program(&spec.dir, first).map_err(|e| StartError {
            message: e.to_string(),
            log_tail: Vec::new(),
            app_fault: true,
            host_refused: false,
        })?;
        // Secrets first: an app never starts without all of them.
        let secret_env = match self.inner.secret_env.get() {
            Some(source) => match source.load(&slot.domain).await {
                Ok(env) => env,
                Err(message) => {
                    slot.log.note(&format!("not started: {message}"));
                    return Err(ours(format!(
                        "the site's secrets are unavailable: {message}"
                    )));
                }
            },
            None => Vec::new(),
        };
        slot.log
            .set_masks(secret_env.iter().map(|(_, v)| v.clone()).collect());
        let port = self
            .inner
            .ports
            .allocate()
            .ok_or_else(|| ours("no free port for the app".into()))?;

        let mut env: Vec<(String, String)> = spec
            .manifest
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.push(("PORT".into(), port.to_string()));
        env.push(("HOST".into(), "127.0.0.1".into()));
        let launch = Launch {
            site: slot.domain.clone(),
            release: spec.release.clone(),
            dir: spec.dir.clone(),
            program,
            args: argv[1..].to_vec(),
            env,
            secret_env,
            port,
            limits: spec.manifest.limits.clone(),
            tag: random_tag(),
        };
        let settled = Settled(self.inner.spawner.as_ref());
        let Spawned {
            mut child,
            confinement,
        } = match self.inner.spawner.spawn(&launch) {
            Ok(spawned) => spawned,
            Err(e) => {
                self.inner.ports.release(port);
                slot.log.note(&format!(
                    "could not start {}: {e}",
                    launch.program.display()
                ));
                return Err(StartError {
                    message: format!("could not start the app: {e}"),
                    log_tail: slot.log.tail(20).unwrap_or_default(),
                    app_fault: matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                    ),
                    host_refused: e.kind() == std::io::ErrorKind::Unsupported,
                });
            }
        };
        let confinement = confinement.map(Arc::new);
        let Some(pid) = child.id().filter(|pid| *pid > 0) else {
            // Never signal group 0: that would be serve's own group.
            self.inner.ports.release(port);
            if let Some(confinement) = confinement {
                let _ = tokio::task::spawn_blocking(move || confinement.release()).await;
            }
            return Err(ours("the app exited before it could be tracked".into()));
        };
        let captures = slot.log.capture(child.stdout.take(), child.stderr.take());
        slot.log.note(&format!(
            "started release {} as pid {pid} on port {port}",
            spec.release
        ));
        self.track(pid, &launch.tag);

        let (exit_tx, exit_rx) = watch::channel(false);
        let instance = Arc::new(Instance {
            release: spec.release.clone(),
            serial: self.inner.serials.fetch_add(1, Ordering::Relaxed),
            pid,
            port,
            confinement,
            started: Instant::now(),
            last_active_ms: AtomicU64::new(self.inner.clock.elapsed().as_millis() as u64),
            in_flight: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            exited: exit_rx,
            idle_timeout: spec.manifest.idle_timeout,
            stop_grace: spec.manifest.stop_grace,
            scale_to_zero: spec.manifest.min_instances == 0,
        });
        let supervisor = self.clone();
        let (monitor_slot, monitor_instance) = (slot.clone(), instance.clone());
        self.spawn(async move {
            let status = child.wait().await;
            let _ = exit_tx.send(true);
            supervisor
                .on_exit(&monitor_slot, &monitor_instance, status)
                .await;
        });

        let deadline = Instant::now() + spec.manifest.start_timeout;
        let healthy = wait_healthy(&instance, spec.manifest.health_path.as_deref(), deadline).await;
        drop(settled);
        match healthy {
            Ok(()) => {
                tracing::info!(site = %slot.domain, release = %spec.release, pid, port,
                    "spinlet healthy");
                Ok(instance)
            }
            Err(reason) => {
                slot.log.note(&reason);
                self.stop_instance(slot, &instance).await;
                // The app's last words may still be in its pipes: let the
                // capture finish (the pipes close with the process group)
                // and reach the file before the tail is read.
                let drained = join_all(captures);
                let _ = tokio::time::timeout(Duration::from_secs(2), drained).await;
                slot.log.flush().await;
                Err(StartError {
                    message: reason,
                    log_tail: slot.log.tail(20).unwrap_or_default(),
                    app_fault: true,
                    host_refused: false,
                })
            }
        }
    }

    async fn on_exit(
        &self,
        slot: &Arc<Slot>,
        instance: &Arc<Instance>,
        status: std::io::Result<std::process::ExitStatus>,
    ) {
        self.untrack(instance.pid);
        // Children of the app may outlive it; the group goes with it, and
        // with a sandbox everything in its cgroup (setsid escapes too).
        let _ = killpg(Pid::from_raw(instance.pid as i32), Signal::SIGKILL);
        let mut description = match &status {
            Ok(s) => format!("pid {} exited: {s}", instance.pid),
            Err(e) => format!("pid {} could not be waited for: {e}", instance.pid),
        };
        if let Some(confinement) = instance.confinement.clone() {
            if confinement.oom_killed() {
                let limit_mib = confinement.memory_limit() >> 20;
                description.push_str(&format!(
                    " (killed by the out-of-memory killer at its {limit_mib} MiB limit)"
                ));
                tracing::warn!(target: "spinforge::audit", event = "spinlet.oom_killed",
                    site = %slot.domain, pid = instance.pid, limit_mib, "app hit its memory limit");
            }
            let _ = tokio::task::spawn_blocking(move || confinement.release()).await;
        }
        // Only now: the port is free once nothing of the instance is left.
        self.inner.ports.release(instance.port);
        slot.log.note(&description);
        if instance.stopping.load(Ordering::Acquire) {
            return;
        }

        // An exit nobody asked for is a crash.
        let restart = {
            let mut state = slot.lock();
            let was_current = state
                .current
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, instance));
            state.draining.retain(|d| !Arc::ptr_eq(d, instance));
            if !was_current {
                return;
            }
            state.current = None;
            self.record_crash(&slot.domain, &slot.log, &mut state, &description)
        };
        if restart && !self.inner.shutting_down.load(Ordering::Acquire) {
            self.wake_in_background(&slot.domain);
        }
    }

    /// SIGTERM to the process group, the grace period, then SIGKILL.
    async fn stop_instance(&self, slot: &Arc<Slot>, instance: &Arc<Instance>) {
        instance.stopping.store(true, Ordering::Release);
        if instance.has_exited() {
            return;
        }
        let group = Pid::from_raw(instance.pid as i32);
        slot.log.note(&format!("stopping pid {}", instance.pid));
        let _ = killpg(group, Signal::SIGTERM);
        let mut exited = instance.exited.clone();
        let graceful = tokio::time::timeout(instance.stop_grace, exited.wait_for(|done| *done))
            .await
            .is_ok();
        if !graceful {
            slot.log
                .note(&format!("pid {} ignored SIGTERM; killing it", instance.pid));
            let _ = killpg(group, Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), exited.wait_for(|d| *d)).await;
        }
    }

    async fn drain(&self, slot: Arc<Slot>, old: Arc<Instance>) {
        let deadline = Instant::now() + self.inner.config.drain_timeout;
        while old.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop_instance(&slot, &old).await;
        slot.lock().draining.retain(|d| !Arc::ptr_eq(d, &old));
    }

    /// Stops apps that have been idle for their timeout, and starts
    /// always-on apps that are down.
    fn reap_idle(&self) {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return;
        }
        let now_ms = self.inner.clock.elapsed().as_millis() as u64;
        let slots: Vec<Arc<Slot>> = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for slot in slots {
            let mut state = slot.lock();
            let Some(current) = state.current.clone() else {
                let always_on = state
                    .spec
                    .as_ref()
                    .is_some_and(|s| s.manifest.min_instances > 0);
                if always_on
                    && state.failed.is_none()
                    && state.starting.is_none()
                    && state.not_before.is_none_or(|t| Instant::now() >= t)
                {
                    drop(state);
                    self.wake_in_background(&slot.domain);
                }
                continue;
            };
            let idle_ms = now_ms.saturating_sub(current.last_active_ms.load(Ordering::Acquire));
            let idle = current.scale_to_zero
                && current.in_flight.load(Ordering::Acquire) == 0
                && Duration::from_millis(idle_ms) >= current.idle_timeout;
            if !idle {
                continue;
            }
            state.current = None;
            drop(state);
            tracing::info!(site = %slot.domain, pid = current.pid, "spinlet idle; stopping");
            slot.log.note("idle; stopping");
            let supervisor = self.clone();
            self.spawn(async move { supervisor.stop_instance(&slot, &current).await });
        }
    }

    fn track(&self, pid: u32, tag: &str) {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid, tag.to_owned());
        self.persist();
    }

    fn untrack(&self, pid: u32) {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
        self.persist();
    }

    /// Writes the running set to the state file (temp file, then rename).
    fn persist(&self) {
        // Held across the write and the rename, so an older snapshot can
        // never replace a newer one.
        let running = self.inner.running.lock().unwrap_or_else(|p| p.into_inner());
        let path = &self.inner.config.state_file;
        let tmp = path.with_extension("json.tmp");
        let write = serde_json::to_vec(&*running)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = write {
            tracing::warn!(error = %e, "cannot record running spinlets");
        }
    }
}

/// Kills every process that carries a tag a previous `serve` recorded in
/// its environment: the apps it left, and their children, even when the
/// app itself already died. A recycled pid belonging to something else
/// carries no such tag and is left alone.
fn reap_leftovers(state_file: &Path) {
    let Ok(bytes) = std::fs::read(state_file) else {
        return;
    };
    let Ok(recorded) = serde_json::from_slice::<HashMap<u32, String>>(&bytes) else {
        return;
    };
    if recorded.is_empty() {
        return;
    }
    let markers: Vec<String> = recorded
        .values()
        .map(|tag| format!("SPINFORGE_SPINLET={tag}"))
        .collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let ours = environ
            .split(|b| *b == 0)
            .any(|var| markers.iter().any(|m| var == m.as_bytes()));
        if ours {
            tracing::warn!(
                pid,
                "reaping an app process left running by a previous serve"
            );
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn random_tag() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Tells the spawner that a start settled ([`Spawner::start_settled`])
/// when dropped: after the health check, or on any other way out of the
/// start (a spawn error, the app gone at once, the start's future
/// dropped).
struct Settled<'a>(&'a dyn Spawner);

impl Drop for Settled<'_> {
    fn drop(&mut self) {
        self.0.start_settled();
    }
}

/// Waits until the app answers: its health path with a 2xx or 3xx, or,
/// with no health path, its port accepting a connection.
async fn wait_healthy(
    instance: &Instance,
    health_path: Option<&str>,
    deadline: Instant,
) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, instance.port));
    let dialer = instance.confinement.as_ref().and_then(|c| c.dialer());
    let started = Instant::now();
    loop {
        if instance.has_exited() {
            return Err("the app exited before it became healthy".into());
        }
        if probe(dialer.as_deref(), addr, health_path).await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(match health_path {
                Some(path) => format!("the app did not answer {path} with success in time"),
                None => format!("the app did not listen on port {} in time", instance.port),
            });
        }
        // A refused loopback connect costs microseconds, so poll densely
        // while a fast app is most likely to come up: the poll interval is
        // added straight onto every cold start.
        let delay = if started.elapsed() < Duration::from_secs(3) {
            5
        } else {
            50
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}

async fn probe(
    dialer: Option<&sandbox::Dialer>,
    addr: SocketAddr,
    health_path: Option<&str>,
) -> bool {
    let attempt = async {
        let mut stream = sandbox::connect(dialer, addr, Duration::from_secs(2))
            .await
            .ok()?;
        let Some(path) = health_path else {
            return Some(true);
        };
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        // "HTTP/1.1 200"
        let code = std::str::from_utf8(&head[9..12])
            .ok()?
            .parse::<u16>()
            .ok()?;
        Some((200..400).contains(&code))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(true))
    )
}

async fn join_all(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}

/// Resident memory and CPU time of a process, from /proc.
fn proc_usage(pid: u32) -> (Option<u64>, Option<f64>) {
    let memory = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        });
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime
            // are the 14th and 15th fields of the whole line.
            let rest = &s[s.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks: u64 =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
            Some(ticks as f64 / per_second as f64)
        });
    (memory, cpu)
}
