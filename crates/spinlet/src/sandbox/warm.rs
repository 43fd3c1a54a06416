//! A warm helper: one sandbox helper started ahead of time, so the slow,
//! app-independent part of a sandboxed start is off the start's path.
//!
//! Measured on a cold start (strace of `serve`, debug build): moving the
//! helper into its cgroup waited 13.8 ms for the kernel (a v1 cgroup
//! migration waits for an RCU grace period on cgroup_threadgroup_rwsem),
//! the helper's exec and start took 9 ms, and the network namespace 0.5 ms;
//! the mounts, capabilities, Landlock and seccomp together took about 2 ms
//! more. None of the first three depends on the app. So after each start
//! the spawner prepares the next one in the background: a network
//! namespace with its dialer, an empty cgroup, and a helper exec'd into
//! both, blocked on reading its plan. A start that takes it writes the
//! app's limits into the cgroup (before anything of the app runs) and the
//! plan to the helper; the helper then does everything app-specific
//! exactly as on a cold start.
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

/// Holds at most one warm helper and makes the next one in the background.
pub(crate) struct WarmPool {
    slot: Mutex<Option<Warm>>,
    filling: AtomicBool,
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
            slot: Mutex::new(None),
            filling: AtomicBool::new(false),
            helper,
            home,
            cgroups,
            defaults,
        }
    }

    /// The warm helper, if one is ready and still alive.
    pub(crate) fn take(&self) -> Option<Warm> {
        let mut warm = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        match warm.child.try_wait() {
            Ok(None) => Some(warm),
            _ => {
                tracing::warn!("the warm sandbox helper had exited; starting cold");
                warm.discard();
                None
            }
        }
    }

    /// Starts making the next warm helper on a thread of its own, unless
    /// one is ready or being made. Needs to run inside the Tokio runtime
    /// (the helper is a `tokio::process::Child`); does nothing outside.
    pub(crate) fn refill(self: &Arc<Self>) {
        if self
            .slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
            || self.filling.swap(true, Ordering::AcqRel)
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
                match pool.make() {
                    Ok(warm) => {
                        let mut slot = pool.slot.lock().unwrap_or_else(|p| p.into_inner());
                        if slot.is_none() {
                            *slot = Some(warm);
                        } else {
                            drop(slot);
                            warm.discard();
                        }
                    }
                    Err(e) => tracing::warn!(error = %e,
                        "no warm sandbox helper: the next start of an app is a cold one"),
                }
                pool.filling.store(false, Ordering::Release);
            });
        if started.is_err() {
            self.filling.store(false, Ordering::Release);
        }
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
        let warm = self
            .slot
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(warm) = warm {
            warm.discard();
        }
    }
}
