//! One current-thread runtime per CPU for a listener, as nginx runs one
//! worker process per CPU: each thread serves the connections it accepted
//! from start to end, so a request is not moved between threads and its
//! own work wakes no other thread. The accept loop
//! ([`crate::listener`]) asks [`Seat`] whether its thread holds too many
//! connections before it accepts the next one.
//!
//! The trade-off is that of nginx: no work stealing. CPU-heavy work on a
//! thread (a full handshake; the edge sends WAF passes over bodies past
//! 16 KiB to the blocking pool) holds up the other connections of that
//! thread, and the spread counts connections, not load.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How many threads [`on_threads`] uses by default: one per CPU this
/// process may run on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Blocking work (static file opens, name lookups) of one serving
/// thread's runtime, at most. Tokio's default of 512 would allow 512 per
/// thread and listener.
const MAX_BLOCKING: usize = 64;

/// How long a thread with more than its share of a listener's connections
/// waits before accepting the next one itself.
pub(crate) const SPREAD_WAIT: Duration = Duration::from_millis(1);

/// How many connections over an even share a thread may hold before it
/// waits. Without slack, clients that open one short connection after
/// another (TLS handshakes) met the wait on most connections: a thread
/// still counts a connection for a moment after its client has gone.
const SPREAD_SLACK: usize = 2;

/// The threads serving one listener; [`Serving::wait`] returns once all
/// have ended.
pub struct Serving {
    name: String,
    finished: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl Serving {
    /// Waits until every thread's `serve` has returned and its runtime
    /// has shut down. A thread that panicked is logged.
    pub async fn wait(self) {
        for finished in self.finished {
            if finished.await.is_err() {
                tracing::error!(listener = %self.name, "a serving thread panicked");
            }
        }
    }
}

/// Starts `serve` on `threads` threads, each with a current-thread Tokio
/// runtime of its own and its own copy of `listener`'s socket, and returns
/// once each has its listener registered; an error if none could start.
/// [`Serving::wait`] then waits for them to end.
///
/// Tasks a request spawns stay on its thread; they end once every thread
/// of the listener has finished serving. Whatever must outlive that (app
/// processes, ACME orders) belongs on the runtime that owns it, not
/// spawned with `tokio::spawn` from a request.
///
/// Every thread waits on the shared socket, so each new connection wakes
/// all of a listener's threads and one accepts it. One that holds more
/// than [`SPREAD_SLACK`] connections over an even share waits
/// [`SPREAD_WAIT`] before accepting, so the others take it first.
// Limitation: with many CPUs, waking every thread per new connection
// costs more (EPOLLEXCLUSIVE or SO_REUSEPORT per thread would lift it).
pub async fn on_threads<F, Fut>(
    listener: TcpListener,
    threads: usize,
    name: &str,
    serve: F,
) -> std::io::Result<Serving>
where
    F: Fn(TcpListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()>,
{
    let socket = listener.into_std()?;
    let serve = Arc::new(serve);
    let spread = Arc::new(Spread {
        open: AtomicUsize::new(0),
        live: AtomicUsize::new(0),
        ended: tokio::sync::Notify::new(),
    });
    let mut finished = Vec::new();
    let mut ready = Vec::new();
    for index in 0..threads.max(1) {
        let copy = socket.try_clone()?;
        let serve = serve.clone();
        let seat = Seat {
            spread: spread.clone(),
            mine: Arc::default(),
        };
        let (done, end) = tokio::sync::oneshot::channel::<()>();
        let (started, up) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
        let thread_name = format!("{name}-{index}");
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                run_one(copy, seat, started, serve.as_ref());
                let _ = done.send(());
            })?;
        finished.push(end);
        ready.push(up);
    }
    let serving = Serving {
        name: name.to_owned(),
        finished,
    };
    let mut failure = None;
    for up in ready {
        match up.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(std::io::Error::other("a serving thread panicked")),
        }
    }
    match failure {
        // The others serve on; one thread short is logged, not fatal.
        Some(e) if spread.live.load(Relaxed) > 0 => {
            tracing::error!(error = %e, listener = name, "a serving thread did not start");
            Ok(serving)
        }
        Some(e) => Err(e),
        None => Ok(serving),
    }
}

/// One serving thread: its runtime, the listener registered with it, and
/// `serve` until it returns. In-flight blocking work gets a second to end
/// when the runtime goes. `started` says whether it got as far as serving.
fn run_one<F, Fut>(
    socket: std::net::TcpListener,
    seat: Seat,
    started: tokio::sync::oneshot::Sender<std::io::Result<()>>,
    serve: &F,
) where
    F: Fn(TcpListener) -> Fut,
    Fut: Future<Output = ()>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    runtime.block_on(async {
        let listener = match TcpListener::from_std(socket) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        // Counted as live while it serves, also if `serve` panics.
        let live = seat.spread.live_guard();
        let spread = seat.spread.clone();
        SEAT.with(|slot| *slot.borrow_mut() = Some(seat));
        let _ = started.send(Ok(()));
        serve(listener).await;
        drop(live);
        // Requests still served on other threads may be using upstream
        // connections whose tasks run on this runtime (the pool and the
        // https client are shared): it keeps running them until every
        // thread is done.
        spread.all_done().await;
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
}

/// The open connections of one listener served by [`on_threads`], and how
/// many of its threads serve.
struct Spread {
    open: AtomicUsize,
    live: AtomicUsize,
    /// Told when `live` falls.
    ended: tokio::sync::Notify,
}

impl Spread {
    fn live_guard(self: &Arc<Spread>) -> Live {
        self.live.fetch_add(1, Relaxed);
        Live(self.clone())
    }

    /// Returns once no thread serves any more.
    async fn all_done(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before the check, so a fall in between wakes it.
            ended.as_mut().enable();
            if self.live.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// One serving thread counted in [`Spread::live`] until dropped.
struct Live(Arc<Spread>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0
            .live
            .fetch_sub(1, std::sync::atomic::Ordering::Release);
        self.0.ended.notify_waiters();
    }
}

/// One serving thread's place in its listener's [`Spread`].
#[derive(Clone)]
pub(crate) struct Seat {
    spread: Arc<Spread>,
    mine: Arc<AtomicUsize>,
}

thread_local! {
    /// Set on the threads of [`on_threads`] only.
    static SEAT: std::cell::RefCell<Option<Seat>> = const { std::cell::RefCell::new(None) };
}

impl Seat {
    /// This thread's seat, if it is one of [`on_threads`].
    pub(crate) fn current() -> Option<Seat> {
        SEAT.with(|seat| seat.borrow().clone())
    }

    /// True iff this thread holds more than [`SPREAD_SLACK`] connections
    /// over an even share (rounded down) of the open ones among the
    /// threads still serving.
    pub(crate) fn crowded(&self) -> bool {
        let open = self.spread.open.load(Relaxed);
        let live = self.spread.live.load(Relaxed).max(1);
        self.mine.load(Relaxed) > open / live + SPREAD_SLACK
    }

    pub(crate) fn take(&self) -> SeatTaken {
        self.spread.open.fetch_add(1, Relaxed);
        self.mine.fetch_add(1, Relaxed);
        SeatTaken(self.clone())
    }
}

/// A connection counted in its thread's [`Seat`] until dropped. An
/// upgraded connection (WebSocket) is no longer counted once hyper hands
/// it over.
pub(crate) struct SeatTaken(Seat);

impl Drop for SeatTaken {
    fn drop(&mut self) {
        self.0.spread.open.fetch_sub(1, Relaxed);
        self.0.mine.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn spread(live: usize) -> Arc<Spread> {
        Arc::new(Spread {
            open: AtomicUsize::new(0),
            live: AtomicUsize::new(live),
            ended: tokio::sync::Notify::new(),
        })
    }

    fn seat(spread: &Arc<Spread>) -> Seat {
        Seat {
            spread: spread.clone(),
            mine: Arc::default(),
        }
    }

    #[test]
    fn a_thread_over_an_even_share_is_crowded() {
        let spread = spread(2);
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

    /// A thread that no longer serves does not count: the one left alone
    /// is never crowded.
    #[test]
    fn the_share_is_among_the_threads_still_serving() {
        let spread = spread(0);
        let a = seat(&spread);
        let alive = spread.live_guard();
        let gone = spread.live_guard();
        let held: Vec<SeatTaken> = (0..6).map(|_| a.take()).collect();
        assert!(a.crowded(), "six of six among two");
        drop(gone);
        assert!(!a.crowded(), "six of six, alone");
        drop((held, alive));
        assert_eq!(spread.live.load(Relaxed), 0);
    }

    /// A thread whose `serve` has returned keeps running its runtime's
    /// tasks until every thread is done: a request on another thread may
    /// still need them (a pooled upstream connection's task).
    #[tokio::test]
    async fn a_thread_done_first_keeps_its_tasks_running_for_the_others() {
        use std::sync::Mutex;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (tx, rx) = (
            Arc::new(Mutex::new(Some(tx))),
            Arc::new(Mutex::new(Some(rx))),
        );
        let got = Arc::new(Mutex::new(None));
        let seen = got.clone();
        let serving = on_threads(listener, 2, "handoff", move |_listener| {
            let mut stopped = stopped.clone();
            let first = std::thread::current().name() == Some("handoff-0");
            let (tx, rx, got) = (tx.clone(), rx.clone(), got.clone());
            async move {
                if first {
                    // A task of this runtime that the other thread needs
                    // after this one has stopped serving.
                    let tx = tx.lock().expect("lock").take().expect("sender");
                    let mut later = stopped.clone();
                    tokio::spawn(async move {
                        let _ = later.wait_for(|s| *s).await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = tx.send(42);
                    });
                    let _ = stopped.wait_for(|s| *s).await;
                } else {
                    let rx = rx.lock().expect("lock").take().expect("receiver");
                    let _ = stopped.wait_for(|s| *s).await;
                    let value = tokio::time::timeout(Duration::from_secs(5), rx).await;
                    *got.lock().expect("lock") = Some(value.ok().and_then(Result::ok));
                }
            }
        })
        .await
        .expect("threads start");
        stop.send(true).expect("stop");
        tokio::time::timeout(Duration::from_secs(10), serving.wait())
            .await
            .expect("ends");
        assert_eq!(*seen.lock().expect("lock"), Some(Some(42)));
    }

    /// Every thread serves with a listener of its own, and the whole
    /// ends once each thread's `serve` has.
    #[tokio::test]
    async fn serves_on_its_threads_until_each_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let serving = on_threads(listener, 2, "edge-test", move |listener| {
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
        })
        .await
        .expect("threads start");
        let served = tokio::spawn(serving.wait());
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
            .expect("ends once every thread has")
            .expect("no panic");
    }
}
