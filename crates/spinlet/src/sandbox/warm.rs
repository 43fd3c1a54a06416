//! A warm helper: one sandbox helper started ahead of time, so the slow,
//! app-independent part of a sandboxed start is off the start's path.
//!
//! Measured on a cold start (strace of `serve`, debug build): moving the
//! helper into its cgroup waited 13.8 ms for the kernel (a v1 cgroup
//! migration waits for an RCU grace period on cgroup_threadgroup_rwsem),
//! the helper's exec and start took 9 ms, and the network namespace 0.5 ms;
//! the mounts, capabilities, Landlock and seccomp together took about 2 ms
//! more. None of the first three depends on the app. So the spawner keeps
//! helpers prepared in the background: a network namespace with its
//! dialer, a cgroup with the server's default limits, and a helper exec'd
//! into both, blocked on reading its plan. A start that takes one writes
//! the app's own limits where they differ (before anything of the app
//! runs) and the plan to the helper; the helper then does everything
//! app-specific exactly as on a cold start. The pool is topped up once a
//! start has settled, not while the app starts, so that making helpers
//! never takes the CPU from a starting app.
//!
//! Sites with outbound internet (whose namespace carries a link to the
//! host) and hosts missing the network or cgroup layer start cold.

use super::cgroup::{Cgroup, CgroupHost, CgroupLimits};
use super::plan::NETNS_FD;
use super::{net, sys, HELPER_ARG};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A helper waiting for its plan, already inside its namespace and cgroup.
pub(crate) struct Warm {
    pub child: tokio::process::Child,
    pub netns: OwnedFd,
    pub dialer: net::Dialer,
    pub cgroup: Cgroup,
}

impl Warm {
    /// Stops the helper and removes what it held. Blocking (it waits for
    /// the kernel to empty the cgroup).
    pub(crate) fn discard(mut self) {
        let _ = self.child.start_kill();
        self.dialer.stop();
        self.cgroup.kill_all();
        self.cgroup.remove();
    }
}

/// How many warm helpers a serve keeps ready. Two, because the next one is
/// made only once a start has settled (see `SandboxSpawner::start_settled`):
/// with one, a second start soon after the first (a restart, or two sites
/// waking together) found none ready and started cold. Each costs an idle
/// helper process (about 5 MiB), a network namespace with its dialer
/// thread and spare sockets, and an empty cgroup.
const WARM_HELPERS: usize = 2;

/// After a helper could not be made, how long refills wait before they
/// try again: a start whose spawn fails on such a host is retried by the
/// next request, and each would otherwise start a thread that fails and
/// warns again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Holds up to [`WARM_HELPERS`] warm helpers and makes more in the
/// background.
pub(crate) struct WarmPool {
    slots: Mutex<Vec<Warm>>,
    filling: AtomicBool,
    /// No refill before this, after a helper could not be made.
    not_before: Mutex<Option<Instant>>,
    helper: PathBuf,
    /// The helper's working folder while it waits.
    home: PathBuf,
    cgroups: CgroupHost,
    /// Written into each warm cgroup ahead of time: a start whose app has
    /// the default limits then writes nothing (the first quota writes
    /// into a new cgroup are the slow ones, see `CgroupHost::limit`).
    defaults: CgroupLimits,
}

impl WarmPool {
    pub(crate) fn new(
        helper: PathBuf,
        home: PathBuf,
        cgroups: CgroupHost,
        defaults: CgroupLimits,
    ) -> WarmPool {
        WarmPool {
            slots: Mutex::new(Vec::with_capacity(WARM_HELPERS)),
            filling: AtomicBool::new(false),
            not_before: Mutex::new(None),
            helper,
            home,
            cgroups,
            defaults,
        }
    }

    /// A warm helper, if one is ready and still alive.
    pub(crate) fn take(&self) -> Option<Warm> {
        loop {
            let mut warm = self.lock().pop()?;
            match warm.child.try_wait() {
                Ok(None) => return Some(warm),
                _ => {
                    tracing::warn!("a warm sandbox helper had exited; trying the next");
                    warm.discard();
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts making warm helpers on a thread of its own until the pool is
    /// full, unless it is full, being filled, or the last attempt failed
    /// less than [`RETRY_AFTER`] ago. Needs to run inside the
    /// Tokio runtime (a helper is a `tokio::process::Child`); does nothing
    /// outside.
    pub(crate) fn refill(self: &Arc<Self>) {
        let waiting = self
            .not_before
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| Instant::now() < at);
        if waiting || self.lock().len() >= WARM_HELPERS || self.filling.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.filling.store(false, Ordering::Release);
            return;
        };
        let pool = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("spinlet-warm".into())
            .spawn(move || {
                let _in_runtime = runtime.enter();
                loop {
                    let made = pool.fill();
                    pool.filling.store(false, Ordering::Release);
                    // A start that took a helper and settled after `fill`
                    // saw the pool full, but before `filling` was cleared,
                    // found the flag set and left its refill to this
                    // thread: look again.
                    if made.is_err()
                        || pool.lock().len() >= WARM_HELPERS
                        || pool.filling.swap(true, Ordering::AcqRel)
                    {
                        break;
                    }
                }
            });
        if started.is_err() {
            self.filling.store(false, Ordering::Release);
        }
    }

    /// Makes helpers until the pool is full; stops at the first failure,
    /// after which refills wait [`RETRY_AFTER`].
    fn fill(&self) -> io::Result<()> {
        while self.lock().len() < WARM_HELPERS {
            let warm = self.make().inspect_err(|e| {
                *self.not_before.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now() + RETRY_AFTER);
                tracing::warn!(error = %e, retry_in = ?RETRY_AFTER,
                    "no warm sandbox helper: starts of apps are cold until one is made");
            })?;
            let mut slots = self.lock();
            if slots.len() < WARM_HELPERS {
                slots.push(warm);
            } else {
                drop(slots);
                warm.discard();
            }
        }
        Ok(())
    }

    fn make(&self) -> io::Result<Warm> {
        let (netns, dialer) = net::new_namespace()?;
        let cgroup = self
            .cgroups
            .create(
                &format!("warm-{:016x}", rand::random::<u64>()),
                &self.defaults,
            )
            .inspect_err(|_| dialer.stop())?;
        let mut command = tokio::process::Command::new(&self.helper);
        // Its command line says what it is until it gets a plan.
        command
            .arg(HELPER_ARG)
            .arg("--")
            .arg("(warm)")
            .current_dir(&self.home)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        sys::pass_fd(&mut command, netns.as_raw_fd(), NETNS_FD);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                dialer.stop();
                cgroup.remove();
                return Err(e);
            }
        };
        let warm = Warm {
            child,
            netns,
            dialer,
            cgroup,
        };
        let placed = warm
            .child
            .id()
            .ok_or_else(|| io::Error::other("the warm helper exited at once"))
            .and_then(|pid| warm.cgroup.add_process(pid));
        match placed {
            Ok(()) => Ok(warm),
            Err(e) => {
                warm.discard();
                Err(e)
            }
        }
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        let warms = std::mem::take(self.slots.get_mut().unwrap_or_else(|p| p.into_inner()));
        for warm in warms {
            warm.discard();
        }
    }
}
