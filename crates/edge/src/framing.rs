//! The connection wrapper that lets the shield's [`FramingScanner`] see
//! HTTP/1 request heads before hyper parses them, so smuggling shapes that
//! hyper would repair (Content-Length with Transfer-Encoding, repeated
//! identical Content-Length) are answered 400 instead (see
//! `shield::framing`). Each refusal is an audit event.
//!
//! After a request that asks for an upgrade (or a CONNECT), the guard
//! hands hyper no more bytes until the service has answered it
//! ([`Watched`] tells it through [`UpgradeAnswer`]): after a 101 (or a 2xx
//! to a CONNECT) the connection carries another protocol and is not
//! scanned; after anything else the next head is.

use futures_util::future::Either;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use shield::framing::{FramingScanner, Scanned, SPOILED_END};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct FramingGuard<T> {
    inner: T,
    scanner: FramingScanner,
    peer: SocketAddr,
    /// After a refused head: what is still to be handed to hyper in place
    /// of the client's bytes; then the input ends.
    spoiled: Option<&'static [u8]>,
    /// Bytes read after a request that asked for an upgrade, not scanned
    /// yet: handed over once its response is known.
    held: Vec<u8>,
    answer: Arc<UpgradeAnswer>,
}

impl<T> FramingGuard<T> {
    /// `answer` is the one the connection's [`Watched`] service gives
    /// (see [`guarded`]).
    fn new(inner: T, peer: SocketAddr, answer: Arc<UpgradeAnswer>) -> FramingGuard<T> {
        FramingGuard {
            inner,
            scanner: FramingScanner::new(),
            peer,
            spoiled: None,
            held: Vec::new(),
            answer,
        }
    }
}

/// Whether the response to a request that asked for an upgrade switched
/// protocols; from the connection's service to its guard.
#[derive(Debug, Default)]
pub struct UpgradeAnswer {
    state: Mutex<AnswerState>,
}

#[derive(Debug, Default)]
struct AnswerState {
    /// The answer, until the guard takes it: true iff it switched.
    switched: Option<bool>,
    /// The guard's read, waiting for the answer.
    reader: Option<Waker>,
}

impl UpgradeAnswer {
    fn set(&self, switched: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.switched = Some(switched);
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.switched.take() {
            Some(switched) => Poll::Ready(switched),
            None => {
                state.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// `io` behind a framing guard, and `service` watched for that guard.
pub fn guarded<I, S>(io: I, peer: SocketAddr, service: S) -> (FramingGuard<I>, Watched<S>) {
    let answer = Arc::<UpgradeAnswer>::default();
    let io = FramingGuard::new(io, peer, answer.clone());
    (
        io,
        Watched {
            inner: service,
            answer,
        },
    )
}

/// A connection's service, telling its guard how each request that asked
/// for an upgrade (an `Upgrade` header, or CONNECT) was answered: switched
/// with a 101, or a 2xx to a CONNECT. Other requests pass untouched.
pub struct Watched<S> {
    inner: S,
    answer: Arc<UpgradeAnswer>,
}

type Answered<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for Watched<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    B: 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Either<S::Future, Answered<Response<B>, S::Error>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let connect = req.method() == Method::CONNECT;
        if !connect && !req.headers().contains_key(header::UPGRADE) {
            return Either::Left(self.inner.call(req));
        }
        let answer = self.answer.clone();
        let response = self.inner.call(req);
        Either::Right(Box::pin(async move {
            let response = response.await;
            let switched = response.as_ref().is_ok_and(|r| {
                r.status() == StatusCode::SWITCHING_PROTOCOLS
                    || (connect && r.status().is_success())
            });
            answer.set(switched);
            response
        }))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = this.spoiled {
            // The refused head's spoiled end, then end of input: hyper
            // answers 400 and closes.
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.spoiled = Some(&rest[n..]);
            return Poll::Ready(Ok(()));
        }
        if this.scanner.awaiting_response() {
            match this.answer.poll_take(cx) {
                Poll::Ready(switched) => this.scanner.answered(switched),
                Poll::Pending => return Poll::Pending,
            }
        }
        let before = buf.filled().len();
        let result = if this.held.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.held.len().min(buf.remaining());
            buf.put_slice(&this.held[..n]);
            this.held.drain(..n);
            Poll::Ready(Ok(()))
        };
        if let Poll::Ready(Ok(())) = &result {
            if !this.scanner.is_done() {
                match this.scanner.scan(&buf.filled()[before..]) {
                    Scanned::Pass => {}
                    Scanned::Refused(refused) => {
                        tracing::warn!(
                            target: "spinforge::audit", event = "shield.framing_refused",
                            peer = %this.peer, reason = refused.reason,
                            "request with smuggling framing refused (400)"
                        );
                        // Keep the head up to its final line feed, drop the
                        // rest, and hand over the spoiled end.
                        this.held.clear();
                        buf.set_filled(before + refused.at);
                        let n = SPOILED_END.len().min(buf.remaining());
                        buf.put_slice(&SPOILED_END[..n]);
                        this.spoiled = Some(&SPOILED_END[n..]);
                    }
                    Scanned::Paused { at } => {
                        // The request that asked for an upgrade is handed
                        // over (at least its last byte: never an empty read,
                        // which hyper would take for the end); what follows
                        // waits for its answer.
                        let keep = before + at;
                        let rest = buf.filled()[keep..].to_vec();
                        this.held.splice(0..0, rest);
                        buf.set_filled(keep);
                    }
                }
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
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
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the guard is told after a CONNECT that the service answers
    /// with `status`, over a real HTTP/1 connection.
    async fn answer_to_connect(status: u16) -> Option<bool> {
        let (mut client, server) = tokio::io::duplex(4096);
        let answer = Arc::<UpgradeAnswer>::default();
        let service = Watched {
            inner: hyper::service::service_fn(move |_req| async move {
                let response = Response::builder()
                    .status(status)
                    .body(crate::body::empty())
                    .expect("response");
                Ok::<_, std::convert::Infallible>(response)
            }),
            answer: answer.clone(),
        };
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), service)
            .with_upgrades();
        let served = tokio::spawn(connection);
        client
            .write_all(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n")
            .await
            .expect("write");
        let mut head = [0u8; 12];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.read_exact(&mut head),
        )
        .await
        .expect("answer in time")
        .expect("read");
        assert_eq!(&head[9..12], status.to_string().as_bytes());
        served.abort();
        let switched = answer.state.lock().expect("lock").switched;
        switched
    }

    #[tokio::test]
    async fn a_connect_counts_as_switched_only_when_answered_2xx() {
        assert_eq!(answer_to_connect(200).await, Some(true));
        assert_eq!(answer_to_connect(405).await, Some(false));
    }
}
