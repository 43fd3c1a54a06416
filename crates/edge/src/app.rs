//! The edge's view of app processes (spinlets): it asks an [`AppWaker`]
//! for a local address and holds the returned lease until the response
//! body, or the upgraded WebSocket, is done. The edge does not know how
//! apps are started; the hub plugs the supervisor in behind this trait.
//! A sandboxed app lives in its own network namespace: its lease carries
//! an [`AppDialer`] that makes the connection from inside.

use crate::body::{BoxError, EdgeBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

/// Keeps an app instance busy while it exists; dropping it ends the busy
/// period. Also hears the response status, for the app's error count.
pub trait LeaseGuard: Send + Sync + 'static {
    fn record_status(&self, status: u16);

    /// The edge could not connect to the leased address at all.
    fn unreachable(&self) {}
}

pub struct AppLease {
    pub addr: SocketAddr,
    pub guard: Box<dyn LeaseGuard>,
    /// Set when `addr` is only reachable through the dialer (the app's
    /// own network namespace); `None` when the edge can connect directly.
    /// Every lease of one instance must carry the same `Arc` (the edge
    /// keeps one weak handle per instance, alive while any lease is).
    pub dialer: Option<Arc<dyn AppDialer>>,
}

pub type DialFuture =
    Pin<Box<dyn Future<Output = std::io::Result<tokio::net::TcpStream>> + Send + 'static>>;

/// Opens connections to one app instance.
pub trait AppDialer: Send + Sync + 'static {
    /// Unique per instance: pooled connections are kept per key, so one
    /// instance never gets another's connection.
    fn key(&self) -> u64;

    /// A new connection to the instance, within `timeout`.
    fn dial(&self, timeout: Duration) -> DialFuture;
}

/// Why no app instance could take the request.
#[derive(Debug)]
pub enum AppUnavailable {
    /// No app is deployed for the site.
    NotDeployed,
    /// The app keeps crashing; clients should come back later.
    Failing { retry_after: Duration },
    /// The app did not start or become healthy in time.
    StartFailed(String),
}

pub type WakeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<AppLease, AppUnavailable>> + Send + 'a>>;

pub trait AppWaker: Send + Sync + 'static {
    /// Returns a running instance of the site's app, starting it if it is
    /// stopped. Concurrent calls for one site must share one start.
    fn wake<'a>(&'a self, site: &'a str) -> WakeFuture<'a>;
}

/// A response body that holds a lease until the body is finished or
/// dropped, so streaming responses count as activity.
pub(crate) struct LeasedBody {
    pub(crate) inner: EdgeBody,
    pub(crate) _lease: Box<dyn LeaseGuard>,
}

impl Body for LeasedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connector of the edge's pool for sandboxed apps: a request's URI
/// names the instance (`app-KEY.spinlet.invalid`), and the connection is
/// made by that instance's dialer. Entries are weak, so an instance that
/// is gone (no lease holds its dialer) is forgotten.
#[derive(Clone)]
pub(crate) struct AppConnector {
    /// One weak handle per instance: the waker hands every lease of an
    /// instance the same dialer, so the handle stays good while any of its
    /// requests is in flight (one that ends cannot take the dialer away
    /// from another that is still connecting), and dies with the last.
    dialers: Arc<std::sync::Mutex<DialerHandles>>,
    timeout: Duration,
}

/// A weak handle to each instance's dialer, by instance key.
type DialerHandles = HashMap<u64, Weak<dyn AppDialer>>;

/// The reserved top-level name keeps these hosts from ever meaning a real
/// machine.
const APP_HOST_SUFFIX: &str = ".spinlet.invalid";

impl AppConnector {
    pub(crate) fn new(timeout: Duration) -> AppConnector {
        AppConnector {
            dialers: Arc::default(),
            timeout,
        }
    }

    /// Registers the dialer (if its instance is new, or its earlier dialer
    /// is gone) and returns the host name that routes to it.
    pub(crate) fn host_for(&self, dialer: &Arc<dyn AppDialer>) -> String {
        let key = dialer.key();
        let mut dialers = self.dialers.lock().unwrap_or_else(|p| p.into_inner());
        let live = dialers.get(&key).is_some_and(|w| w.strong_count() > 0);
        if !live {
            // Instances with no lease left go.
            dialers.retain(|_, w| w.strong_count() > 0);
            dialers.insert(key, Arc::downgrade(dialer));
        }
        format!("app-{key}{APP_HOST_SUFFIX}")
    }

    fn dialer(&self, host: &str) -> Option<Arc<dyn AppDialer>> {
        let key: u64 = host
            .strip_prefix("app-")?
            .strip_suffix(APP_HOST_SUFFIX)?
            .parse()
            .ok()?;
        let dialers = self.dialers.lock().unwrap_or_else(|p| p.into_inner());
        dialers.get(&key)?.upgrade()
    }
}

impl tower_service::Service<http::Uri> for AppConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let dialer = uri.host().and_then(|h| self.dialer(h));
        let timeout = self.timeout;
        Box::pin(async move {
            let dialer = dialer.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "the app instance is gone")
            })?;
            Ok(hyper_util::rt::TokioIo::new(dialer.dial(timeout).await?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake dialer (this tests the connector's bookkeeping, not
    /// connecting): it only has a key.
    struct Keyed(u64);

    impl AppDialer for Keyed {
        fn key(&self) -> u64 {
            self.0
        }

        fn dial(&self, _timeout: Duration) -> DialFuture {
            Box::pin(async { Err(std::io::Error::other("fake dialer")) })
        }
    }

    #[test]
    fn an_instance_s_dialer_routes_while_any_lease_holds_it_and_is_forgotten_after() {
        let connector = AppConnector::new(Duration::from_secs(1));
        let instance: Arc<dyn AppDialer> = Arc::new(Keyed(7));
        // Two requests' leases of one instance share its dialer.
        let first = Arc::clone(&instance);
        let second = Arc::clone(&instance);
        drop(instance);
        let host = connector.host_for(&first);
        assert_eq!(host, "app-7.spinlet.invalid");
        assert_eq!(connector.host_for(&second), host);
        // The first request ends; the second still connects through it.
        drop(first);
        let found = connector
            .dialer(&host)
            .expect("dialer of a leased instance");
        assert!(Arc::ptr_eq(&found, &second));
        drop(found);
        drop(second);
        assert!(connector.dialer(&host).is_none(), "no lease left");

        // Another instance registers; the dead entry is dropped, and a new
        // dialer under the old key (a new lease) is taken, not refused.
        let other: Arc<dyn AppDialer> = Arc::new(Keyed(8));
        connector.host_for(&other);
        assert_eq!(
            connector
                .dialers
                .lock()
                .expect("lock")
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![8]
        );
        let again: Arc<dyn AppDialer> = Arc::new(Keyed(7));
        assert_eq!(connector.host_for(&again), host);
        let found = connector.dialer(&host).expect("the new dialer");
        assert!(Arc::ptr_eq(&found, &again));
        assert!(connector.dialer("app-9.spinlet.invalid").is_none());
        assert!(connector.dialer("example.com").is_none());
    }
}
