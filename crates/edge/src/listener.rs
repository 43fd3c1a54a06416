//! The accept loop shared by the edge and the API socket: HTTP/1.1 and
//! h2c on one port, or over TLS the protocol ALPN chose (the HTTP/2
//! preface read under the header-read timeout), header-read and idle
//! timeouts on every connection, an optional cap on open connections (in
//! all and per client address), HTTP/2 abuse limits, and a graceful
//! shutdown (`crate::shutdown`).
//!
//! It knows nothing about routing: each caller brings its own service.

use crate::framing::guarded;
use crate::idle::IdleTimeout;
use crate::shutdown::{until_stopped, Stop};
use crate::threads::{Seat, SeatTaken, SPREAD_WAIT};
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::gauge::Gauge;
pub use shield::config::Http2Limits;
use shield::conn::ConnectionGate;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

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

/// Connections the kernel queues for a listener until they are accepted.
/// tokio, like the standard library, asks for 128, which a burst of new
/// clients overflows: the kernel then drops their SYNs and they retry a
/// second later. nginx asks for 511; the kernel caps the value at
/// `net.core.somaxconn`.
pub const BACKLOG: u32 = 1024;

/// A listening socket on `addr` with [`BACKLOG`] (and `SO_REUSEADDR`, as
/// `TcpListener::bind` sets it). Needs a Tokio runtime.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

// hyper's HTTP/1 and HTTP/2 builders and hyper-util's views of them in
// its auto builder are different types with the same setters; one list
// of settings for all.
macro_rules! http1_settings {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout($limits.header_read_timeout)
            .max_buf_size(64 * 1024)
        // Limitation: a client that shuts down its sending side after its
        // request (`nc -N`) may get no answer: hyper closes when it reads
        // the FIN while the request is in flight. Allowing half-closure
        // would stop hyper from noticing clients that go away (their
        // upstream request would run to the response timeout); nginx
        // answers 499 there too.
    };
}

macro_rules! http2_settings {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .max_concurrent_streams($limits.http2.max_concurrent_streams)
            .max_pending_accept_reset_streams($limits.http2.max_pending_reset_streams)
            .max_header_list_size($limits.http2.max_header_list_bytes)
            .keep_alive_interval(Some(Duration::from_secs(30)))
    };
}

/// HTTP/1.1 and HTTP/2 with the listener's timeouts and h2 limits, told
/// apart by the first bytes a client sends (the HTTP/2 preface): for
/// plain HTTP, where a client may speak HTTP/2 with prior knowledge.
fn http_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    http1_settings!(builder.http1(), limits);
    http2_settings!(builder.http2(), limits);
    builder
}

/// The HTTP/1.1 side of [`http_builder`] alone, and the HTTP/2 side: over
/// TLS, ALPN has chosen the protocol before the first byte (HTTP/2 over
/// TLS requires ALPN, RFC 9113 section 3.2), so nothing is sniffed. The
/// HTTP/2 preface is read under the header-read timeout first.
// Limitation: on plain HTTP an HTTP/2 client with prior knowledge has no
// timeout for its preface, which hyper-util's sniff reads; only the idle
// timeout applies, per byte (reading the first bytes here, as over TLS,
// would lift it).
fn tls_builders(limits: &ConnectionLimits) -> (http1::Builder, http2::Builder<TokioExecutor>) {
    let mut h1 = http1::Builder::new();
    http1_settings!(&mut h1, limits);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    http2_settings!(&mut h2, limits);
    (h1, h2)
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
    let connections = TaskTracker::new();
    let stop = Stop::default();
    let permits = limits.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    tokio::pin!(shutdown);

    while let Some((io, peer)) = admit(&listener, &permits, &limits, &open, &mut shutdown).await {
        let (io, service) = guarded(io, peer, make(peer));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let stop = stop.clone();
        connections.spawn(async move {
            let ended = until_stopped(connection, &stop, |c| c.graceful_shutdown()).await;
            if let Err(e) = ended {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }

    drop(listener);
    stop.stop();
    connections.close();
    if tokio::time::timeout(limits.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace ran out with connections still open");
    }
}

/// What a connection holds while it is open, upgraded or not: its place
/// under the global cap, under its client's cap, in its serving thread's
/// count (on the threads of [`crate::threads::on_threads`]) and in the
/// open-connections gauge. Its I/O keeps it ([`IdleTimeout::holding`]);
/// dropping it frees all four.
type Held = (
    Option<tokio::sync::OwnedSemaphorePermit>,
    Option<shield::conn::ConnectionPermit>,
    Option<SeatTaken>,
    Option<Counted>,
);

/// One connection in the open-connections gauge, for as long as it lives.
struct Counted(Gauge);

impl Counted {
    fn new(gauge: &Gauge) -> Counted {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The next connection both caps admit, with its timeouts applied and
/// its [`Held`] places; `None` once `shutdown` resolves. Shared by the
/// HTTP and HTTPS listeners so neither can skip a cap.
async fn admit<Sd: Future<Output = ()> + Unpin>(
    listener: &TcpListener,
    permits: &Option<Arc<Semaphore>>,
    limits: &ConnectionLimits,
    open: &Option<Gauge>,
    shutdown: &mut Sd,
) -> Option<(IdleTimeout<tokio::net::TcpStream>, SocketAddr)> {
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
        let taken = seat.as_ref().map(Seat::take);
        let counted = open.as_ref().map(Counted::new);
        let held: Held = (permit, client_permit, taken, counted);
        let io = IdleTimeout::new(stream, limits.idle_timeout)
            .with_first_byte_timeout(limits.header_read_timeout)
            .holding(held);
        return Some((io, peer));
    }
}

// ---- HTTPS ----------------------------------------------------------------

/// What the service of one HTTPS connection learns about it.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The SNI the client sent, lower case.
    pub server_name: Option<String>,
}

/// What an HTTP/2 client sends first (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// True iff `io` sends the HTTP/2 preface within `timeout` (the
/// header-read timeout) and before the listener stops.
async fn preface<I: AsyncRead + Unpin>(io: &mut I, timeout: Duration, stop: &Stop) -> bool {
    let mut first = [0u8; PREFACE.len()];
    tokio::select! {
        read = tokio::time::timeout(timeout, io.read_exact(&mut first)) => {
            matches!(read, Ok(Ok(_))) && first == *PREFACE
        }
        () = stop.stopped() => false,
    }
}

/// `inner`, whose reads first give back `head` (bytes already taken from
/// it and checked).
struct Replayed<I> {
    head: &'static [u8],
    inner: I,
}

impl<I> Replayed<I> {
    fn new(inner: I, head: &'static [u8]) -> Replayed<I> {
        Replayed { head, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Replayed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.head.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.head.len().min(buf.remaining());
        buf.put_slice(&this.head[..n]);
        this.head = &this.head[n..];
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Replayed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
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
    let builders = Arc::new(tls_builders(&limits));
    let make = Arc::new(make);
    let connections = TaskTracker::new();
    let stop = Stop::default();
    let permits = limits.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    tokio::pin!(shutdown);

    while let Some((io, peer)) = admit(&listener, &permits, &limits, &open, &mut shutdown).await {
        let acceptor = acceptor.clone();
        let builders = builders.clone();
        let make = make.clone();
        let stop = stop.clone();
        let handshake_timeout = limits.header_read_timeout;
        connections.spawn(async move {
            // A shutdown ends a handshake still under way.
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(io));
            let accepted = tokio::select! {
                accepted = handshake => accepted,
                () = stop.stopped() => return,
            };
            let tls = match accepted {
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
            let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
            let info = TlsInfo {
                server_name: session.server_name().map(str::to_ascii_lowercase),
            };
            // The same smuggling guard as on plain HTTP, over the
            // decrypted bytes.
            let (mut tls, service) = guarded(tls, peer, make(peer, info));
            let (h1_builder, h2_builder) = &*builders;
            let ended = if h2 {
                // hyper's HTTP/2 server waits for the preface without a
                // deadline, and a stop does not end that wait.
                // Limitation: one that sends the preface and then no
                // SETTINGS still holds a shutdown for the grace (hyper
                // waits for SETTINGS alike); reading the first frame here
                // too would lift it.
                if !preface(&mut tls, handshake_timeout, &stop).await {
                    tracing::debug!(peer = %peer, "no HTTP/2 preface in time");
                    return;
                }
                let io = TokioIo::new(Replayed::new(tls, PREFACE));
                let connection = h2_builder.serve_connection(io, service);
                until_stopped(connection, &stop, |c| c.graceful_shutdown()).await
            } else {
                let io = TokioIo::new(tls);
                let connection = h1_builder.serve_connection(io, service).with_upgrades();
                until_stopped(connection, &stop, |c| c.graceful_shutdown()).await
            };
            if let Err(e) = ended {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }

    drop(listener);
    stop.stop();
    connections.close();
    if tokio::time::timeout(limits.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace ran out with connections still open");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections waiting in the kernel's accept queue of the listening
    /// socket on 127.0.0.1 at `port` (`/proc/net/tcp` shows it as the
    /// receive queue of a socket in state LISTEN, 0A).
    fn queued(port: u16) -> Option<u32> {
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        let local = format!("0100007F:{port:04X}");
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) != Some(&local.as_str()) || fields.get(3) != Some(&"0A") {
                return None;
            }
            let (_tx, rx) = fields.get(4)?.split_once(':')?;
            u32::from_str_radix(rx, 16).ok()
        })
    }

    #[tokio::test]
    async fn a_burst_of_clients_waits_in_the_queue_instead_of_being_dropped() {
        // Past 129 (tokio's backlog of 128, plus one) the kernel would
        // drop the SYNs of the rest, whose connects would then hang in
        // retries. The kernel caps any backlog at net.core.somaxconn
        // (4096 since Linux 5.4; 128 before, where this cannot show it).
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .expect("somaxconn")
            .trim()
            .parse()
            .expect("number");
        if somaxconn < 130 {
            eprintln!("skipped: net.core.somaxconn is {somaxconn}, below tokio's 128 + 1");
            return;
        }
        let clients = somaxconn.min(300);
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..clients {
            connects.spawn(tokio::net::TcpStream::connect(addr));
        }
        let mut open = Vec::new();
        let all = async {
            while let Some(connected) = connects.join_next().await {
                open.push(connected.expect("task").expect("connect"));
            }
        };
        tokio::time::timeout(Duration::from_secs(20), all)
            .await
            .expect("every client connected without being accepted");
        assert_eq!(queued(addr.port()), Some(clients));
        drop(listener);
    }
}
