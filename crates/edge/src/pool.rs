//! The keep-alive pool for plain `http://` upstreams: idle HTTP/1
//! connections (`h1::Conn`, on which the request's own task speaks) kept
//! per upstream authority in a list per runtime (edge thread), bounded in
//! count (all runtimes together) and age.
//!
//! It only keeps and hands out connections; how a new one is dialled
//! (and which addresses the policy allows, or which sandboxed app's
//! dialer makes it) is the caller's closure, so the route checks stay in
//! `proxy.rs`. TLS upstreams use hyper-util's client instead.

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

use crate::body::{BoxError, EdgeBody};
use crate::h1::{self, Conn, ExchangeError, Outgoing, UpstreamBody};

/// Which idle list a connection belongs to. A connection dialled for a
/// trusted local app never serves a policy-checked site, even at the same
/// address, and one made inside a sandboxed app's network namespace
/// serves only that instance.
#[derive(Debug, Clone)]
pub(crate) struct PoolKey {
    pub authority: http::uri::Authority,
    pub reach: Reach,
}

// Compared and hashed as the exact text of the authority: `Authority`
// hashes itself a lowercased byte at a time (fifteen hasher calls for
// `127.0.0.1:8080`, at every checkout and return). Upstream addresses
// are configured text, so two spellings of one host only mean two idle
// lists.
impl PartialEq for PoolKey {
    fn eq(&self, other: &PoolKey) -> bool {
        self.authority.as_str() == other.authority.as_str() && self.reach == other.reach
    }
}

impl Eq for PoolKey {}

impl std::hash::Hash for PoolKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.authority.as_str().hash(state);
        self.reach.hash(state);
    }
}

/// How a pooled connection was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reach {
    /// To an address the upstream policy allowed.
    Checked,
    /// To a local app on the host's loopback, unchecked.
    Local,
    /// By the dialer of the sandboxed app instance with this key.
    App(u64),
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The runtime whose reactor a connection is registered with (the one
/// that dialled it). With the edge on one runtime per thread, a request
/// on a connection of another runtime would be woken by that thread,
/// through the kernel; so each runtime has an idle list of its own per
/// upstream (under one cap for all).
type Home = Option<tokio::runtime::Id>;

fn here() -> Home {
    tokio::runtime::Handle::try_current().ok().map(|h| h.id())
}

/// The idle connections to one upstream: a list per runtime (a few, one
/// per edge thread), and how many they hold together.
#[derive(Default)]
struct KeyLists {
    idle: usize,
    by_home: Vec<(Home, Vec<Idle>)>,
}

impl KeyLists {
    fn list(&mut self, home: Home) -> Option<&mut Vec<Idle>> {
        let at = self.by_home.iter().position(|(h, _)| *h == home)?;
        Some(&mut self.by_home[at].1)
    }

    /// Drops the connection that has been idle longest, of any runtime.
    fn drop_oldest(&mut self) {
        let oldest = self
            .by_home
            .iter()
            .enumerate()
            .filter_map(|(at, (_, list))| Some((at, list.first()?.since)))
            .min_by_key(|&(_, since)| since);
        if let Some((at, _)) = oldest {
            self.by_home[at].1.remove(0);
            self.idle -= 1;
            if self.by_home[at].1.is_empty() {
                self.by_home.swap_remove(at);
            }
        } else {
            self.idle = 0;
        }
    }

    /// Drops expired and closed connections from every list.
    fn prune(&mut self, usable: impl Fn(&Idle) -> bool) {
        for (_, list) in &mut self.by_home {
            list.retain(&usable);
        }
        self.by_home.retain(|(_, list)| !list.is_empty());
        self.idle = self.by_home.iter().map(|(_, list)| list.len()).sum();
    }
}

struct Lists {
    by_key: HashMap<PoolKey, KeyLists>,
    /// True once the task that closes expired connections runs.
    reaper: bool,
}

// Limitation: only idle connections are bounded; busy ones are not, as
// in hyper-util's client (a per-upstream connection limit with a queue
// would lift it).
pub(crate) struct Http1Pool {
    lists: Mutex<Lists>,
    /// Idle connections kept per key, all runtimes together; more are
    /// closed when they finish.
    max_idle: usize,
    /// An idle connection older than this is closed, not reused.
    idle_timeout: Duration,
}

/// Why [`Http1Pool::send`] got no response.
pub(crate) enum SendError<E> {
    /// Dialling a new connection failed (the closure's error).
    Connect(E),
    /// The exchange failed once the request was on its way.
    Request(ExchangeError),
}

/// Pooled connections a request tries before it dials a new one, when
/// each turns out closed by its upstream (a restarted upstream leaves
/// every idle connection dead; each try costs one round trip).
const REUSE_TRIES: usize = 3;

impl Http1Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Arc<Http1Pool> {
        Arc::new(Http1Pool {
            lists: Mutex::new(Lists {
                by_key: HashMap::new(),
                reaper: false,
            }),
            max_idle,
            idle_timeout,
        })
    }

    /// Sends `req` on an idle connection for `key`, or on a new one from
    /// `dial`. A request that a pooled connection's upstream closed
    /// before answering goes out again on the next one, or a new one, if
    /// it may (see [`Outgoing::may_resend`]): an upstream's keep-alive
    /// may run out just as a request is sent. The response body hands
    /// the connection back once it has ended.
    pub async fn send<E, F>(
        self: &Arc<Self>,
        key: &PoolKey,
        req: Request<EdgeBody>,
        dial: impl FnOnce() -> F,
    ) -> Result<Response<PooledBody>, SendError<E>>
    where
        F: Future<Output = Result<TcpStream, E>>,
    {
        let home = here();
        let mut outgoing = Outgoing::new(req);
        for _ in 0..REUSE_TRIES {
            let Some(conn) = self.checkout(key, home) else {
                break;
            };
            match h1::exchange(conn, &mut outgoing).await {
                Ok(response) => return Ok(self.lend(key, home, response)),
                Err(e) if outgoing.may_resend(&e) => {
                    tracing::debug!(
                        error = %e,
                        "pooled upstream connection was closed; sending again"
                    );
                }
                Err(e) => return Err(SendError::Request(e)),
            }
        }

        // Boxed: a new connection is rare next to a reused one, and its
        // futures would make every request's future larger.
        Box::pin(async move {
            let stream = dial().await.map_err(SendError::Connect)?;
            let response = h1::exchange(Conn::new(stream), &mut outgoing)
                .await
                .map_err(SendError::Request)?;
            Ok(self.lend(key, home, response))
        })
        .await
    }

    /// The newest live idle connection to `key` of runtime `home`. Closed
    /// ones met on the way are dropped; once the newest has expired, all
    /// have.
    fn checkout(&self, key: &PoolKey, home: Home) -> Option<Conn> {
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        let lists = lists.by_key.get_mut(key)?;
        let list = lists.list(home)?;
        let before = list.len();
        let mut found = None;
        while let Some(newest) = list.pop() {
            if newest.since.elapsed() >= self.idle_timeout {
                list.clear();
            } else if !newest.conn.is_closed() {
                found = Some(newest.conn);
                break;
            }
        }
        let taken = before - list.len();
        lists.idle -= taken;
        found
    }

    fn lend(
        self: &Arc<Self>,
        key: &PoolKey,
        home: Home,
        response: Response<UpstreamBody>,
    ) -> Response<PooledBody> {
        response.map(|inner| {
            let mut body = PooledBody {
                inner,
                lent: Some(Lent {
                    pool: Arc::downgrade(self),
                    key: key.clone(),
                    home,
                }),
            };
            // A body that is already over (HEAD, 204, empty) frees the
            // connection now.
            if body.inner.is_end_stream() {
                body.give_back();
            }
            body
        })
    }

    /// Keeps `conn` in runtime `home`'s list for `key`. When the key
    /// already has `max_idle` idle connections, expired or closed ones are
    /// dropped first (left in, they would keep a live one out until the
    /// next sweep), and then the oldest of any runtime: one runtime's idle
    /// connections must not keep the others' out.
    fn give_back(self: &Arc<Self>, key: PoolKey, home: Home, conn: Conn) {
        // It has just ended an exchange cleanly; whether its upstream
        // closed it since is checked when it is taken.
        if self.max_idle == 0 {
            return;
        }
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        let of_key = lists.by_key.entry(key).or_default();
        if of_key.idle >= self.max_idle {
            of_key.prune(|old| self.usable(old));
        }
        while of_key.idle >= self.max_idle {
            of_key.drop_oldest();
        }
        let idle = Idle {
            conn,
            since: Instant::now(),
        };
        match of_key.list(home) {
            Some(list) => list.push(idle),
            None => of_key.by_home.push((home, vec![idle])),
        }
        of_key.idle += 1;
        if !lists.reaper {
            lists.reaper = true;
            tokio::spawn(reap(Arc::downgrade(self), self.idle_timeout));
        }
    }

    /// Closes every idle connection past the idle timeout or closed by
    /// its upstream, and forgets empty lists.
    fn sweep(&self) {
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        lists.by_key.retain(|_, of_key| {
            of_key.prune(|idle| self.usable(idle));
            of_key.idle > 0
        });
    }

    /// True iff `idle` may still be lent: not expired, not closed.
    fn usable(&self, idle: &Idle) -> bool {
        idle.since.elapsed() < self.idle_timeout && !idle.conn.is_closed()
    }

    /// Idle connections to `key`, of all runtimes.
    #[cfg(test)]
    fn idle_count(&self, key: &PoolKey) -> usize {
        let lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        let counted = lists.by_key.get(key).map_or(0, |of_key| of_key.idle);
        let listed = lists.by_key.get(key).map_or(0, |of_key| {
            of_key.by_home.iter().map(|(_, list)| list.len()).sum()
        });
        assert_eq!(counted, listed, "the count agrees with the lists");
        counted
    }
}

/// Sweeps the pool every `period` for as long as the pool exists.
async fn reap(pool: Weak<Http1Pool>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(),
            None => return,
        }
    }
}

/// Where a lent connection goes back to.
struct Lent {
    pool: Weak<Http1Pool>,
    key: PoolKey,
    home: Home,
}

/// An upstream response body that returns its connection to the pool
/// when the exchange ended cleanly. Dropped before its end, it closes the
/// connection: the rest of the response would still be on the wire.
pub(crate) struct PooledBody {
    inner: UpstreamBody,
    lent: Option<Lent>,
}

impl PooledBody {
    /// Returns the connection to the pool if the exchange ended cleanly
    /// (see [`UpstreamBody::take_reusable`]); otherwise it is closed.
    fn give_back(&mut self) {
        if let Some(lent) = self.lent.take() {
            if let (Some(conn), Some(pool)) = (self.inner.take_reusable(), lent.pool.upgrade()) {
                pool.give_back(lent.key, lent.home, conn);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if self.inner.is_end_stream() {
            self.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn pool_keys_are_equal_and_hash_alike_exactly_when_their_text_and_reach_are() {
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        let key = |authority: &str, reach| PoolKey {
            authority: authority.parse().expect("authority"),
            reach,
        };
        let a = key("app.internal:8080", Reach::Checked);
        let same = key("app.internal:8080", Reach::Checked);
        assert_eq!(a, same);
        assert_eq!(hasher.hash_one(&a), hasher.hash_one(&same));
        for other in [
            key("App.internal:8080", Reach::Checked),
            key("app.internal:8081", Reach::Checked),
            key("app.internal:8080", Reach::Local),
            key("app.internal:8080", Reach::App(1)),
        ] {
            assert_ne!(a, other, "{other:?}");
        }
    }

    /// Two edge threads' runtimes, each driven only while it serves a
    /// request, and an upstream on a runtime with threads of its own (kept
    /// alive by the returned runtime). The last value counts accepted
    /// connections.
    fn two_edge_runtimes() -> (
        [tokio::runtime::Runtime; 3],
        std::net::SocketAddr,
        Arc<AtomicUsize>,
    ) {
        let upstream_rt = tokio::runtime::Runtime::new().expect("runtime");
        let (addr, accepted) = upstream_rt.block_on(upstream());
        let edge = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
        };
        ([edge(), edge(), upstream_rt], addr, accepted)
    }

    #[test]
    fn each_runtime_reuses_only_its_own_connections() {
        let ([a, b, _upstream], addr, accepted) = two_edge_runtimes();
        let pool = Http1Pool::new(4, Duration::from_secs(60));
        // A connection of the other runtime is registered with that
        // runtime's reactor, which does not run meanwhile: borrowing it
        // would hang.
        let fetch_on = |rt: &tokio::runtime::Runtime| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), fetch(&pool, addr))
                    .await
                    .expect("served on a connection of this runtime")
            })
        };
        let accepted = || accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(fetch_on(&a), "hello");
        assert_eq!(fetch_on(&b), "hello");
        assert_eq!(accepted(), 2, "b dialled its own");
        for rt in [&a, &b, &a, &b] {
            assert_eq!(fetch_on(rt), "hello");
        }
        assert_eq!(accepted(), 2, "each reused its own");
        assert_eq!(pool.idle_count(&key(addr)), 2);
    }

    #[test]
    fn the_idle_cap_counts_every_runtimes_connections_together() {
        let ([a, b, _upstream], addr, accepted) = two_edge_runtimes();
        let pool = Http1Pool::new(1, Duration::from_secs(60));
        let fetch_on = |rt: &tokio::runtime::Runtime| rt.block_on(fetch(&pool, addr));
        let accepted = || accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(fetch_on(&a), "hello");
        assert_eq!(pool.idle_count(&key(addr)), 1);
        // b's connection takes the one place; a's, idle longer, goes.
        assert_eq!(fetch_on(&b), "hello");
        assert_eq!(pool.idle_count(&key(addr)), 1);
        assert_eq!(accepted(), 2);
        assert_eq!(fetch_on(&b), "hello");
        assert_eq!(accepted(), 2, "b reused its own");
        assert_eq!(fetch_on(&a), "hello");
        assert_eq!(accepted(), 3, "a's was closed");
        assert_eq!(pool.idle_count(&key(addr)), 1);
    }

    /// A real HTTP/1.1 server on loopback, with keep-alive, that answers
    /// every request with `answer` and counts the connections it accepted.
    async fn serve_with<F, Fut, B>(answer: F) -> (std::net::SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let answered = answer(req);
                        async move { Ok::<_, std::convert::Infallible>(answered.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    /// An upstream that answers `hello`.
    async fn upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        serve_with(|_req| async {
            Response::new(http_body_util::Full::new(Bytes::from_static(b"hello")))
        })
        .await
    }

    fn key(addr: std::net::SocketAddr) -> PoolKey {
        PoolKey {
            authority: addr.to_string().parse().expect("authority"),
            reach: Reach::Local,
        }
    }

    fn get() -> Request<EdgeBody> {
        Request::get("/")
            .header("host", "upstream.test")
            .body(crate::body::empty())
            .expect("request")
    }

    async fn fetch(pool: &Arc<Http1Pool>, addr: std::net::SocketAddr) -> Bytes {
        exchange(pool, addr, get()).await
    }

    /// Sends `req` through the pool and reads the whole response body.
    async fn exchange(
        pool: &Arc<Http1Pool>,
        addr: std::net::SocketAddr,
        req: Request<EdgeBody>,
    ) -> Bytes {
        let response = pool
            .send(&key(addr), req, || TcpStream::connect(addr))
            .await
            .map_err(|_| "send failed")
            .expect("response");
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
    }

    #[tokio::test]
    async fn a_finished_response_returns_its_connection_for_the_next_request() {
        let (addr, accepted) = upstream().await;
        let pool = Http1Pool::new(4, Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(fetch(&pool, addr).await, "hello");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(&key(addr)), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_does_not_return_the_connection() {
        let (addr, accepted) = upstream().await;
        let pool = Http1Pool::new(4, Duration::from_secs(60));
        let response = pool
            .send(&key(addr), get(), || TcpStream::connect(addr))
            .await
            .map_err(|_| "send failed")
            .expect("response");
        drop(response);
        assert_eq!(pool.idle_count(&key(addr)), 0);
        assert_eq!(fetch(&pool, addr).await, "hello");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_expired_idle_connection_is_not_reused() {
        let (addr, accepted) = upstream().await;
        let pool = Http1Pool::new(4, Duration::from_millis(50));
        assert_eq!(fetch(&pool, addr).await, "hello");
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(fetch(&pool, addr).await, "hello");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
        // A raw server that answers one request per connection, then
        // closes it without saying so first (as an upstream whose
        // keep-alive timeout ran out).
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            for _ in 0..4 {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(stream);
            }
        });
        let pool = Http1Pool::new(4, Duration::from_secs(60));
        assert_eq!(fetch(&pool, addr).await, "hello");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fetch(&pool, addr).await, "hello");
    }

    /// A raw upstream that takes up to four connections (and counts
    /// them), answers the first request on each `hello` at once without
    /// reading a body, and then leaves the connection to `after`.
    async fn answering_once<F, Fut>(after: F) -> (std::net::SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream) -> Fut + Copy + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            for _ in 0..4 {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                        .await;
                    after(stream).await;
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_get_goes_out_again_when_its_pooled_connection_closes_unanswered() {
        // The second request on each connection is read, and the
        // connection closed without an answer: its keep-alive ran out
        // just as the request came.
        let (addr, accepted) = answering_once(|mut stream| async move {
            let _ = stream.read(&mut [0u8; 1024]).await;
        })
        .await;
        let pool = Http1Pool::new(4, Duration::from_secs(60));
        let accepted = || accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(fetch(&pool, addr).await, "hello");
        assert_eq!(
            fetch(&pool, addr).await,
            "hello",
            "sent again on a new connection"
        );
        assert_eq!(accepted(), 2);
        // A POST may have been acted on: it is not sent twice.
        let post = Request::post("/")
            .header("host", "upstream.test")
            .body(crate::body::empty())
            .expect("request");
        let sent = pool
            .send(&key(addr), post, || TcpStream::connect(addr))
            .await;
        assert!(matches!(
            sent,
            Err(SendError::Request(ExchangeError::Unanswered(_)))
        ));
        assert_eq!(accepted(), 2);
    }

    #[tokio::test]
    async fn bytes_an_idle_connection_receives_never_reach_the_next_request() {
        // After its answer, the upstream sends one nobody asked for, and
        // answers every later request on that connection the same way.
        const EVIL: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil";
        let (addr, accepted) = answering_once(|mut stream| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = stream.write_all(EVIL).await;
            let mut buf = [0u8; 1024];
            for _ in 0..4 {
                if matches!(stream.read(&mut buf).await, Ok(0) | Err(_)) {
                    return;
                }
                let _ = stream.write_all(EVIL).await;
            }
        })
        .await;
        let pool = Http1Pool::new(4, Duration::from_secs(60));
        assert_eq!(fetch(&pool, addr).await, "hello");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(fetch(&pool, addr).await, "hello");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_post_is_not_sent_on_a_connection_closed_while_idle() {
        // A POST is never sent twice, so it must not meet the closed
        // connection at all.
        let (addr, accepted) = answering_once(|stream| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(stream);
        })
        .await;
        let pool = Http1Pool::new(4, Duration::from_secs(60));
        assert_eq!(fetch(&pool, addr).await, "hello");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let post = Request::post("/")
            .header("host", "upstream.test")
            .body(crate::body::empty())
            .expect("request");
        assert_eq!(exchange(&pool, addr, post).await, "hello");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A request body that never ends.
    struct Endless;

    impl Body for Endless {
        type Data = Bytes;
        type Error = crate::body::BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_connection_whose_request_body_never_ended_is_not_reused() {
        // Answers every request at once, without reading its body, and
        // keeps each connection open.
        let (addr, accepted) = answering_once(|stream| async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(stream);
        })
        .await;
        let pool = Http1Pool::new(4, Duration::from_secs(60));
        let streaming = Request::post("/")
            .header("host", "upstream.test")
            .body(Endless.boxed())
            .expect("request");
        let response = pool
            .send(&key(addr), streaming, || TcpStream::connect(addr))
            .await
            .map_err(|_| "send failed")
            .expect("response");
        let body = response.into_body().collect().await.expect("body");
        assert_eq!(body.to_bytes(), "hello");
        // Its request body never ended, so the connection is not reused.
        assert_eq!(pool.idle_count(&key(addr)), 0);

        let second = tokio::time::timeout(Duration::from_secs(5), fetch(&pool, addr));
        assert_eq!(second.await.expect("not stuck behind the body"), "hello");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_body_sent_in_full_keeps_its_connection() {
        let (addr, accepted) = upstream().await;
        let pool = Http1Pool::new(4, Duration::from_secs(60));
        for _ in 0..3 {
            let post = Request::post("/")
                .header("host", "upstream.test")
                .body(crate::body::full("some form data"))
                .expect("request");
            let response = pool
                .send(&key(addr), post, || TcpStream::connect(addr))
                .await
                .map_err(|_| "send failed")
                .expect("response");
            let body = response.into_body().collect().await.expect("body");
            assert_eq!(body.to_bytes(), "hello");
        }
        assert_eq!(pool.idle_count(&key(addr)), 1);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// An upstream that waits a moment, then streams the request body
    /// back as the response body while it is still arriving.
    async fn echo_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        serve_with(|req: Request<Incoming>| async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            Response::new(req.into_body())
        })
        .await
    }

    #[tokio::test]
    async fn big_bodies_stream_both_ways_over_one_pooled_connection() {
        // The request body, the late response and its many chunks all
        // pass through one pooled connection, three times. A lost
        // wake-up would hang here, so the exchange is bounded in time.
        let (addr, accepted) = echo_upstream().await;
        let pool = Http1Pool::new(4, Duration::from_secs(60));
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        for round in 0..3 {
            let chunks: Vec<Result<Frame<Bytes>, BoxError>> = (0..16)
                .map(|_| Ok(Frame::data(Bytes::from(chunk.clone()))))
                .collect();
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
            let post = Request::post("/")
                .header("host", "upstream.test")
                .body(body.boxed())
                .expect("request");
            // Its own task, which only runs again when it is woken (a
            // timeout around the future itself would poll it anyway).
            let pool_ = pool.clone();
            let exchanged = tokio::spawn(async move { exchange(&pool_, addr, post).await });
            let echoed = tokio::time::timeout(Duration::from_secs(10), exchanged)
                .await
                .unwrap_or_else(|_| panic!("round {round} hung"))
                .expect("exchange");
            assert_eq!(echoed.len(), 16 * chunk.len());
            assert!(echoed.chunks(chunk.len()).all(|c| c == chunk.as_slice()));
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(&key(addr)), 1);
    }

    /// An expired idle connection must not hold the only idle place: the
    /// connection that replaces it is kept for the request after.
    #[tokio::test]
    async fn an_expired_idle_connection_does_not_keep_a_live_one_out() {
        let (addr, accepted) = upstream().await;
        let pool = Http1Pool::new(1, Duration::from_millis(300));
        // The sweep runs 300 ms after the first return; the connection is
        // returned again 100 ms later, so it expires at 400 ms, between
        // the sweeps at 300 and 600 ms.
        assert_eq!(fetch(&pool, addr).await, "hello");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fetch(&pool, addr).await, "hello");
        tokio::time::sleep(Duration::from_millis(350)).await;
        // The expired one is replaced; its replacement serves the rest.
        for _ in 0..3 {
            assert_eq!(fetch(&pool, addr).await, "hello");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_per_key() {
        let (addr, _) = upstream().await;
        let pool = Http1Pool::new(2, Duration::from_secs(60));
        let mut open = Vec::new();
        for _ in 0..4 {
            let response = pool
                .send(&key(addr), get(), || TcpStream::connect(addr))
                .await
                .map_err(|_| "send failed")
                .expect("response");
            open.push(response);
        }
        for response in open {
            response.into_body().collect().await.expect("body");
        }
        assert_eq!(pool.idle_count(&key(addr)), 2);
    }
}
