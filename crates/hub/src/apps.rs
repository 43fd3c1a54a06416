//! Process sites in the hub: loading a release's manifest into an
//! [`AppSpec`], registering sites with the supervisor at start, and the
//! adapter that lets the edge wake apps without knowing the supervisor.

use crate::error::ApiError;
use crate::Hub;
use edge::{AppDialer, AppLease, AppUnavailable, AppWaker, DialFuture, LeaseGuard, WakeFuture};
use spinlet::manifest;
use spinlet::{AppDial, AppSpec, Lease, StartError, Supervisor, WakeError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::{ReleaseId, Site, SiteKind};

/// Plugs the supervisor into the edge.
pub struct SupervisorWaker {
    supervisor: Supervisor,
}

impl SupervisorWaker {
    pub fn new(supervisor: Supervisor) -> SupervisorWaker {
        SupervisorWaker { supervisor }
    }
}

struct LeaseAdapter(Lease);

impl LeaseGuard for LeaseAdapter {
    fn record_status(&self, status: u16) {
        self.0.record_status(status);
    }
}

/// Lets the edge connect into a sandboxed app's network namespace.
struct DialAdapter(AppDial);

impl AppDialer for DialAdapter {
    fn key(&self) -> u64 {
        self.0.key
    }

    fn dial(&self, timeout: Duration) -> DialFuture {
        let dial = self.0.clone();
        Box::pin(async move { dial.connect(timeout).await })
    }
}

impl AppWaker for SupervisorWaker {
    fn wake<'a>(&'a self, site: &'a str) -> WakeFuture<'a> {
        Box::pin(async move {
            match self.supervisor.wake(site).await {
                Ok(lease) => Ok(AppLease {
                    addr: lease.addr(),
                    dialer: lease
                        .dial()
                        .map(|d| Arc::new(DialAdapter(d)) as Arc<dyn AppDialer>),
                    guard: Box::new(LeaseAdapter(lease)),
                }),
                Err(WakeError::NotDeployed) => Err(AppUnavailable::NotDeployed),
                Err(WakeError::Failed { retry_after, .. }) => {
                    Err(AppUnavailable::Failing { retry_after })
                }
                Err(WakeError::Start(e)) => Err(AppUnavailable::StartFailed(e.message)),
                Err(other) => Err(AppUnavailable::StartFailed(other.to_string())),
            }
        })
    }
}

/// Reads and checks a release's manifest (or detects its command).
/// Client faults become a 400 that names the manifest key.
pub(crate) async fn load_spec(release: &ReleaseId, dir: PathBuf) -> Result<AppSpec, ApiError> {
    let probe = dir.clone();
    let manifest = tokio::task::spawn_blocking(move || manifest::load(&probe))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| {
            if e.is_client_fault() {
                ApiError::invalid("manifest", e.to_string())
            } else {
                ApiError::internal(e)
            }
        })?;
    Ok(AppSpec {
        release: release.0.clone(),
        dir,
        manifest,
    })
}

/// The error a deploy or rollback returns when the new release did not
/// become healthy: the app's fault carries its last log lines.
pub(crate) fn start_failed(error: StartError) -> ApiError {
    if error.host_refused {
        ApiError::Unavailable(error.message)
    } else if error.app_fault {
        ApiError::AppFailed {
            message: error.message,
            log_tail: error.log_tail,
        }
    } else {
        ApiError::internal(error.message)
    }
}

impl Hub {
    pub fn supervisor(&self) -> &Supervisor {
        &self.inner.supervisor
    }

    /// Tells the supervisor what every process site runs. A site whose
    /// release no longer loads is logged and left stopped.
    pub(crate) async fn register_apps(&self, sites: &[Site]) {
        for site in sites.iter().filter(|s| s.kind == SiteKind::Process) {
            let Some(release) = &site.active_release else {
                continue;
            };
            let dir = self.inner.layout.release_dir(site.id, release);
            match load_spec(release, dir).await {
                Ok(spec) => {
                    if let Err(e) = self.inner.supervisor.register(&site.domain, spec) {
                        tracing::warn!(site = %site.domain, error = %e, "app not registered");
                    }
                }
                Err(e) => tracing::warn!(site = %site.domain, error = %e, "app manifest unusable"),
            }
        }
    }
}
