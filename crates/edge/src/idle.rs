//! An I/O wrapper that fails a connection after a stretch with no bytes
//! moving in either direction. It covers what hyper's header-read timeout
//! does not: stalled bodies, quiet upgraded (WebSocket) connections, and a
//! client that connects and never sends its first byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub struct IdleTimeout<T> {
    inner: T,
    timeout: Duration,
    /// The wait for the first byte read, when it differs from `timeout`;
    /// `None` once a byte has arrived.
    first_byte_timeout: Option<Duration>,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
    /// Whatever must live exactly as long as the connection.
    _holding: Option<Box<dyn std::any::Any + Send>>,
}

impl<T> IdleTimeout<T> {
    pub fn new(inner: T, timeout: Duration) -> IdleTimeout<T> {
        let now = Instant::now();
        IdleTimeout {
            inner,
            timeout,
            first_byte_timeout: None,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
            _holding: None,
        }
    }

    /// Keeps `value` until the connection is dropped. The connection's
    /// permits (its place under the connection caps) live here rather
    /// than in the task that serves HTTP on it: an upgraded (WebSocket)
    /// connection leaves that task but keeps this I/O, so it still counts.
    pub fn holding(mut self, value: impl std::any::Any + Send) -> IdleTimeout<T> {
        self._holding = Some(Box::new(value));
        self
    }

    /// Fails the connection if its first byte takes longer than `timeout`.
    ///
    /// The server needs this because hyper starts its header-read timer
    /// only once the first bytes have told HTTP/1 from HTTP/2 apart: a
    /// client that sends nothing would otherwise wait out the idle timeout.
    pub fn with_first_byte_timeout(mut self, timeout: Duration) -> IdleTimeout<T> {
        self.first_byte_timeout = Some(timeout);
        self
    }

    /// Called when the inner I/O is pending: returns an error iff the idle
    /// deadline has passed. Activity costs one `Instant::now()` and no
    /// timer reset: activity only moves the deadline later, so the timer
    /// may stay set to an earlier one, and is re-armed when it fires
    /// early (at most once per idle period), or when the deadline moved
    /// before it (the first byte's own, shorter wait).
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.first_byte_timeout.unwrap_or(self.timeout);
        let deadline = self.last_activity + limit;
        if self.timer.deadline() > deadline {
            self.timer.as_mut().reset(deadline);
        }
        loop {
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if self.timer.deadline() >= deadline => {
                    return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "connection idle"))
                }
                // Fired for an older deadline: wait for the real one.
                Poll::Ready(()) => self.timer.as_mut().reset(deadline),
            }
        }
    }
}

use std::future::Future;

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let filled = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.last_activity = Instant::now();
                if buf.filled().len() > filled {
                    this.first_byte_timeout = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_expired(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.last_activity = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_expired(cx).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // One buffer with bytes (rustls flushing one TLS record, the usual
        // case) goes out with `send`: the kernel's writev path costs more
        // per call (the iovec import and the file layer).
        let mut filled = bufs.iter().filter(|buf| !buf.is_empty());
        let written = match (filled.next(), filled.next()) {
            (Some(only), None) => Pin::new(&mut this.inner).poll_write(cx, only),
            _ => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
        };
        match written {
            Poll::Ready(result) => {
                this.last_activity = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_expired(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn vectored_writes_deliver_every_byte_in_order() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut conn = IdleTimeout::new(a, Duration::from_secs(10));
        // One buffer with bytes among empty ones goes out whole.
        let one = [
            io::IoSlice::new(b""),
            io::IoSlice::new(b"record"),
            io::IoSlice::new(b""),
        ];
        assert_eq!(conn.write_vectored(&one).await.expect("write"), 6);
        // Several: whatever one write took, the rest follows in order.
        let several = [io::IoSlice::new(b"head "), io::IoSlice::new(b"body")];
        let n = conn.write_vectored(&several).await.expect("write");
        assert!(n > 0);
        conn.write_all(&b"head body"[n..]).await.expect("rest");
        let mut got = vec![0u8; "recordhead body".len()];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(got, b"recordhead body");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_times_out_and_a_busy_one_does_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = IdleTimeout::new(a, Duration::from_secs(10));
        let mut buf = [0u8; 4];

        b.write_all(b"ping").await.expect("write");
        tokio::time::advance(Duration::from_secs(8)).await;
        a.read_exact(&mut buf)
            .await
            .expect("data arrives before the deadline");

        tokio::time::advance(Duration::from_secs(8)).await;
        b.write_all(b"pong").await.expect("write");
        a.read_exact(&mut buf)
            .await
            .expect("activity pushed the deadline out");

        let err = a
            .read(&mut buf)
            .await
            .expect_err("silence ends the connection");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_late_first_byte_silence_gets_the_full_idle_timeout() {
        // The read waits for the first byte under its 2 s deadline; the
        // byte comes at 1 s. The timer then still runs for that earlier
        // deadline, fires early, and must wait on for the idle timeout
        // counted from the byte, not end the connection.
        let (a, mut b) = tokio::io::duplex(64);
        let mut conn = IdleTimeout::new(a, Duration::from_secs(120))
            .with_first_byte_timeout(Duration::from_secs(2));
        let started = Instant::now();
        let mut byte = [0u8; 1];
        let send = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            b.write_all(b"G").await.expect("write");
        };
        let (read, ()) = tokio::join!(conn.read_exact(&mut byte), send);
        read.expect("the first byte came in time");
        let err = conn
            .read(&mut byte)
            .await
            .expect_err("silence ends the connection");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(121));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_byte_has_its_own_shorter_deadline() {
        let (a, _b) = tokio::io::duplex(64);
        let mut silent = IdleTimeout::new(a, Duration::from_secs(120))
            .with_first_byte_timeout(Duration::from_secs(2));
        let started = Instant::now();
        let err = silent
            .read(&mut [0u8; 4])
            .await
            .expect_err("a client that never speaks is cut off");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        let (a, mut b) = tokio::io::duplex(64);
        let mut talker = IdleTimeout::new(a, Duration::from_secs(120))
            .with_first_byte_timeout(Duration::from_secs(2));
        let mut byte = [0u8; 1];
        b.write_all(b"G").await.expect("write");
        talker.read_exact(&mut byte).await.expect("first byte");
        tokio::time::advance(Duration::from_secs(60)).await;
        b.write_all(b"E").await.expect("write");
        talker
            .read_exact(&mut byte)
            .await
            .expect("after the first byte only the idle timeout applies");
    }
}
