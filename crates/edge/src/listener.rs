//! The accept loop shared by the edge and the API socket: HTTP/1.1 and
//! h2c on one port, header-read and idle timeouts on every connection, an
//! optional cap on open connections (in all and per client address),
//! HTTP/2 abuse limits, and a graceful shutdown.
//!
//! It knows nothing about routing: each caller brings its own service.

use crate::idle::IdleTimeout;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
pub use shield::config::Http2Limits;
use shield::conn::ConnectionGate;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Per-connection limits of one listener.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Longest wait for a request's headers, including the first byte and
    /// the time between keep-alive requests.
    pub header_read_timeout: Duration,
    /// A connection with no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// Longest wait for in-flight requests when shutting down.
    pub shutdown_grace: Duration,
    /// At most this many open connections; further clients wait in the
    /// kernel's backlog. `None`: no cap.
    pub max_connections: Option<usize>,
    /// Open connections per client address; a client over it has its new
    /// connection closed at once. `None`: no cap.
    pub per_client: Option<Arc<ConnectionGate>>,
    pub http2: Http2Limits,
}

/// HTTP/1.1 and HTTP/2 with the listener's timeouts and h2 limits.
fn http_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(64 * 1024);
    let h2 = limits.http2;
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_pending_accept_reset_streams(h2.max_pending_reset_streams)
        .max_header_list_size(h2.max_header_list_bytes)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// Serves connections from `listener` with the service `make(peer)` builds
/// for each, until `shutdown` resolves.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    limits: ConnectionLimits,
    open: Option<Gauge>,
    make: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = http_builder(&limits);
    let graceful = GracefulShutdown::new();
    let permits = limits.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    tokio::pin!(shutdown);

    while let Some((io, peer, held)) = admit(&listener, &permits, &limits, &mut shutdown).await {
        let io = crate::framing::FramingGuard::new(io, peer);
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), make(peer))
            .into_owned();
        let connection = graceful.watch(connection);
        let open = open.clone();
        if let Some(gauge) = &open {
            gauge.inc();
        }
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            if let Some(gauge) = open {
                gauge.dec();
            }
            drop(held);
        });
    }

    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace ran out with connections still open");
    }
}

/// What a connection holds while it is open: its place under the global
/// cap and under its client's cap. Dropping it frees both.
type Held = (
    Option<tokio::sync::OwnedSemaphorePermit>,
    Option<shield::conn::ConnectionPermit>,
    Option<SeatTaken>,
);

/// The next connection both caps admit, with its timeouts applied; `None`
/// once `shutdown` resolves. Shared by the HTTP and HTTPS listeners so
/// neither can skip a cap.
async fn admit<Sd: Future<Output = ()> + Unpin>(
    listener: &TcpListener,
    permits: &Option<Arc<Semaphore>>,
    limits: &ConnectionLimits,
    shutdown: &mut Sd,
) -> Option<(IdleTimeout<tokio::net::TcpStream>, SocketAddr, Held)> {
    let seat = Seat::current();
    loop {
        if let Some(seat) = &seat {
            if seat.crowded() {
                // Leave this one to a thread with fewer connections; it
                // is taken here anyway if none has accepted it by then.
                tokio::time::sleep(SPREAD_WAIT).await;
            }
        }
        let permit = match permits {
            Some(permits) => tokio::select! {
                permit = permits.clone().acquire_owned() => permit.ok(),
                () = &mut *shutdown => return None,
            },
            None => None,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut *shutdown => return None,
        };
        let client_permit = match &limits.per_client {
            Some(gate) => match gate.admit(peer.ip()) {
                Some(permit) => Some(permit),
                None => {
                    tracing::debug!(peer = %peer, "connection refused: too many from this client");
                    drop(stream);
                    continue;
                }
            },
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let io = IdleTimeout::new(stream, limits.idle_timeout)
            .with_first_byte_timeout(limits.header_read_timeout);
        let taken = seat.as_ref().map(Seat::take);
        return Some((io, peer, (permit, client_permit, taken)));
    }
}

// ---- HTTPS ----------------------------------------------------------------

/// What the service of one HTTPS connection learns about it.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The SNI the client sent, lower case.
    pub server_name: Option<String>,
}

/// Like [`serve`], with a TLS handshake (bounded by the header-read
/// timeout) before HTTP. A connection that negotiated `acme-tls/1` is a
/// TLS-ALPN-01 validation and is closed right after its handshake.
pub async fn serve_tls<F, S, B>(
    listener: TcpListener,
    limits: ConnectionLimits,
    open: Option<Gauge>,
    acceptor: tokio_rustls::TlsAcceptor,
    make: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(SocketAddr, TlsInfo) -> S + Send + Sync + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Arc::new(http_builder(&limits));
    let make = Arc::new(make);
    let graceful = GracefulShutdown::new();
    let permits = limits.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    tokio::pin!(shutdown);

    while let Some((io, peer, held)) = admit(&listener, &permits, &limits, &mut shutdown).await {
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let make = make.clone();
        let watcher = graceful.watcher();
        let open = open.clone();
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(io)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, "TLS handshake timed out");
                    return;
                }
            };
            let (_, session) = tls.get_ref();
            if session.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                return;
            }
            let info = TlsInfo {
                server_name: session.server_name().map(str::to_ascii_lowercase),
            };
            // The same smuggling guard as on plain HTTP, over the
            // decrypted bytes.
            let tls = crate::framing::FramingGuard::new(tls, peer);
            if let Some(gauge) = &open {
                gauge.inc();
            }
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), make(peer, info))
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            if let Some(gauge) = open {
                gauge.dec();
            }
            drop(held);
        });
    }

    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace ran out with connections still open");
    }
}

// ---- one runtime per thread ---------------------------------------------

/// How many threads [`on_threads`] uses by default: one per CPU this
/// process may run on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Runs `serve` on `threads` threads, each with a current-thread Tokio
/// runtime of its own and its own copy of `listener`'s socket, and returns
/// once every one of them has returned.
///
/// Like nginx's worker processes, each thread serves the connections it
/// accepted from start to end: a request is never handed between threads,
/// and no thread wakes another for it. With the proxy pool lending each
/// thread its own upstream connections, on two cores this served 1.25 to
/// 1.36 times the proxied HTTPS requests per second of one runtime whose
/// worker threads share all connections (docs/BENCHMARKS.md).
///
/// Tasks a request spawns stay on its thread; whatever must outlive a
/// connection (app processes, ACME orders) is spawned on the runtime that
/// owns it, not with `tokio::spawn` from the request.
///
/// Every thread waits on the shared socket. One that holds more than an
/// even share of the open connections waits a moment before accepting,
/// so the others take new connections first.
pub async fn on_threads<F, Fut>(listener: TcpListener, threads: usize, name: &str, serve: F)
where
    F: Fn(TcpListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()>,
{
    let socket = match listener.into_std() {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!(error = %e, listener = name, "cannot hand the listener to its threads");
            return;
        }
    };
    let serve = Arc::new(serve);
    let threads = threads.max(1);
    let spread = Arc::new(Spread {
        open: std::sync::atomic::AtomicUsize::new(0),
        threads,
    });
    let mut running = Vec::new();
    for index in 0..threads {
        let copy = match socket.try_clone() {
            Ok(copy) => copy,
            Err(e) => {
                tracing::error!(error = %e, listener = name, "cannot copy the listening socket");
                break;
            }
        };
        let serve = serve.clone();
        let seat = Seat {
            spread: spread.clone(),
            mine: Arc::default(),
        };
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let thread_name = format!("{name}-{index}");
        let spawned = std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                SEAT.with(|slot| *slot.borrow_mut() = Some(seat));
                run_one(copy, &thread_name, serve.as_ref());
                let _ = done.send(());
            });
        match spawned {
            // A thread that panics drops `done`, which ends the wait too.
            Ok(_) => running.push(finished),
            Err(e) => {
                tracing::error!(error = %e, listener = name, "cannot start a serving thread");
                break;
            }
        }
    }
    if running.is_empty() {
        tracing::error!(listener = name, "no serving thread started");
    }
    drop(socket);
    for finished in running {
        let _ = finished.await;
    }
}

/// How long a thread with more than its share of a listener's connections
/// waits before accepting the next one itself.
const SPREAD_WAIT: Duration = Duration::from_millis(1);

/// How many connections over an even share a thread may hold before it
/// waits. Without slack, clients that open one short connection after
/// another (TLS handshakes) met the wait on most connections: a thread
/// still counts a connection for a moment after its client has gone.
const SPREAD_SLACK: usize = 2;

/// The open connections of one listener served by [`on_threads`].
struct Spread {
    open: std::sync::atomic::AtomicUsize,
    threads: usize,
}

/// One serving thread's place in its listener's [`Spread`].
#[derive(Clone)]
struct Seat {
    spread: Arc<Spread>,
    mine: Arc<std::sync::atomic::AtomicUsize>,
}

thread_local! {
    /// Set on the threads of [`on_threads`] only.
    static SEAT: std::cell::RefCell<Option<Seat>> = const { std::cell::RefCell::new(None) };
}

impl Seat {
    fn current() -> Option<Seat> {
        SEAT.with(|seat| seat.borrow().clone())
    }

    /// True iff this thread holds more than [`SPREAD_SLACK`] connections
    /// over an even share of the open ones (rounded down).
    fn crowded(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let open = self.spread.open.load(Relaxed);
        self.mine.load(Relaxed) > open / self.spread.threads + SPREAD_SLACK
    }

    fn take(&self) -> SeatTaken {
        use std::sync::atomic::Ordering::Relaxed;
        self.spread.open.fetch_add(1, Relaxed);
        self.mine.fetch_add(1, Relaxed);
        SeatTaken(self.clone())
    }
}

/// A connection counted in its thread's [`Seat`] until dropped.
struct SeatTaken(Seat);

impl Drop for SeatTaken {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.spread.open.fetch_sub(1, Relaxed);
        self.0.mine.fetch_sub(1, Relaxed);
    }
}

/// One serving thread: its runtime, the listener registered with it, and
/// `serve` until it returns. In-flight blocking work gets a second to end
/// when the runtime goes.
fn run_one<F, Fut>(socket: std::net::TcpListener, name: &str, serve: &F)
where
    F: Fn(TcpListener) -> Fut,
    Fut: Future<Output = ()>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, thread = name, "cannot start a serving thread's runtime");
            return;
        }
    };
    runtime.block_on(async {
        match TcpListener::from_std(socket) {
            Ok(listener) => serve(listener).await,
            Err(e) => tracing::error!(error = %e, thread = name, "cannot register the listener"),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_thread_over_an_even_share_is_crowded() {
        let spread = Arc::new(Spread {
            open: std::sync::atomic::AtomicUsize::new(0),
            threads: 2,
        });
        let seat = |spread: &Arc<Spread>| Seat {
            spread: spread.clone(),
            mine: Arc::default(),
        };
        let (a, b) = (seat(&spread), seat(&spread));
        assert!(!a.crowded(), "nothing open yet");
        let mut held: Vec<SeatTaken> = (0..3).map(|_| a.take()).collect();
        assert!(!a.crowded(), "three of three is within the slack");
        held.push(a.take());
        assert!(!a.crowded(), "four of four: even share 2, plus 2");
        held.push(a.take());
        assert!(a.crowded(), "five of five: over 2 + 2");
        assert!(!b.crowded());
        let other = b.take();
        assert!(!a.crowded(), "five of six: even share 3, plus 2");
        drop(other);
        assert!(a.crowded());
        held.clear();
        assert_eq!(spread.open.load(Relaxed), 0);
        assert_eq!(a.mine.load(Relaxed), 0);
        assert!(!a.crowded() && !b.crowded());
    }

    /// Every thread serves with a listener of its own, and the whole
    /// returns once each thread's `serve` has.
    #[tokio::test]
    async fn serves_on_its_threads_until_each_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let served = tokio::spawn(on_threads(listener, 2, "edge-test", move |listener| {
            let mut stopped = stopped.clone();
            async move {
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((mut stream, _)) = accepted else { continue };
                            let name = std::thread::current().name().unwrap_or("").to_owned();
                            let _ = stream.write_all(name.as_bytes()).await;
                        }
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                }
            }
        }));
        for _ in 0..4 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut name = String::new();
            stream.read_to_string(&mut name).await.expect("read");
            assert!(
                name == "edge-test-0" || name == "edge-test-1",
                "served by {name:?}"
            );
        }
        assert!(!served.is_finished());
        stop.send(true).expect("stop");
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("returns once every thread has")
            .expect("no panic");
    }
}
