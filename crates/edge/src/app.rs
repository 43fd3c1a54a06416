//! The edge's view of app processes (spinlets): it asks an [`AppWaker`]
//! for a local address and holds the returned lease until the response
//! body, or the upgraded WebSocket, is done. The edge does not know how
//! apps are started; the hub plugs the supervisor in behind this trait.
//! A sandboxed app lives in its own network namespace: its lease carries
//! an [`AppDialer`] that makes the connection from inside.

use crate::body::{BoxError, EdgeBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
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
    pub dialer: Option<Arc<dyn AppDialer>>,
}

pub type DialFuture =
    Pin<Box<dyn Future<Output = std::io::Result<tokio::net::TcpStream>> + Send + 'static>>;

/// Opens connections to one app instance.
pub trait AppDialer: Send + Sync + 'static {
    /// Unique per instance, never reused: pooled connections are kept per
    /// key, so one instance never gets another's connection.
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
