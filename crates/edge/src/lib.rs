//! The edge: the gateway every deployed domain is served through.
//!
//! It owns listeners, host routing, static files and reverse proxying. It
//! reads routes from an in-memory table that the hub swaps atomically; it
//! never talks to the store on the request path.
#![forbid(unsafe_code)]

pub mod app;
pub mod balancer;
pub mod body;
mod framing;
mod h1;
pub mod host;
mod idle;
pub mod listener;
pub mod metrics;
mod pool;
pub mod proxy;
pub mod request_id;
pub mod routes;
pub mod server;
mod shutdown;
pub mod static_files;
pub mod threads;
pub mod tls;
pub mod upstream;
pub mod upstream_tls;

pub use app::{AppDialer, AppLease, AppUnavailable, AppWaker, DialFuture, LeaseGuard, WakeFuture};
pub use metrics::EdgeMetrics;
pub use routes::{Route, RouteTable, Routes, Target};
pub use server::{Edge, EdgeConfig};
pub use upstream::{Upstream, UpstreamError, UpstreamPolicy};
