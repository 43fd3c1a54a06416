//! An HTTP/1.1 client for the pool's plain upstream connections, spoken
//! by the request's own task (no connection task and no channel, which
//! hyper's client costs per request): it writes the request, reads the
//! answer as the client takes it, and frees the connection only after an
//! answer that ended exactly where its framing said. It does not dial,
//! pool, speak TLS or upgrade: `pool.rs`, `proxy.rs` and hyper do.

mod head;
mod request;

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::body::BoxError;
use head::{parse, Decoded, Framing, Parsed};
pub(crate) use request::Outgoing;
use request::{Sending, Stopped};

/// True iff the comma-separated list `value` holds `token`, in any case.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Informational (1xx) answers skipped before the final one.
const MAX_INFORMATIONAL: usize = 16;
/// Free room in the read buffer before each read.
const READ_ROOM: usize = 8 * 1024;

/// An open connection to an upstream and the bytes read from it but not
/// yet used (empty whenever the connection is idle).
pub(crate) struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

impl Conn {
    pub fn new(io: TcpStream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// True iff the upstream closed this idle connection, sent bytes no
    /// request asked for, or it failed. No syscall unless the socket
    /// became readable after its last read.
    pub fn is_closed(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                !matches!(self.io.try_read(&mut probe),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more of the answer into the buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_ROOM);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// Why an exchange got no usable answer.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// Writing the request head failed: the upstream got nothing usable.
    Unsent(io::Error),
    /// The connection ended before any byte of an answer.
    Unanswered(io::Error),
    /// The request body failed: the client's side, or the body cap.
    Body(BoxError),
    /// Reading the answer failed part-way.
    Read(io::Error),
    /// The answer broke HTTP/1.1.
    Invalid(&'static str),
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExchangeError::Unsent(e) => write!(f, "sending the request failed: {e}"),
            ExchangeError::Unanswered(e) => {
                write!(
                    f,
                    "the upstream closed the connection without an answer: {e}"
                )
            }
            ExchangeError::Body(_) => f.write_str("the request body failed"),
            ExchangeError::Read(e) => write!(f, "reading the answer failed: {e}"),
            ExchangeError::Invalid(why) => write!(f, "invalid answer from the upstream: {why}"),
        }
    }
}

impl std::error::Error for ExchangeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExchangeError::Body(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// Sends `request` on `conn` and reads the head of its answer. Its body
/// keeps going while the answer streams: the upstream may read the one
/// as it writes the other.
pub(crate) async fn exchange(
    mut conn: Conn,
    request: &mut Outgoing,
) -> Result<Response<UpstreamBody>, ExchangeError> {
    let written = match request.body.as_mut() {
        None => conn.io.write_all(&request.head).await,
        Some(body) => {
            // Taken, not copied: once its body is touched, a request is
            // never sent again (see `may_resend`).
            let mut first = std::mem::take(&mut request.head);
            // A first frame not at hand yet follows the head later.
            let taken = std::future::poll_fn(|cx| match body.poll_first(cx, &mut first) {
                Poll::Pending => Poll::Ready(Ok(())),
                done => done,
            });
            if let Err(Stopped::Body(e)) = taken.await {
                return Err(ExchangeError::Body(e));
            }
            conn.io.write_all(&first).await
        }
    };
    written.map_err(ExchangeError::Unsent)?;
    let mut stopped_taking = false;
    let mut informational = 0;
    let mut scanned = 0;
    let head_only = request.head_only;
    let sending = &mut request.body;
    let answer = std::future::poll_fn(|cx| {
        if let Some(body) = sending.as_mut().filter(|_| !stopped_taking) {
            match body.poll_send(&mut conn.io, cx) {
                Poll::Ready(Err(Stopped::Body(e))) => {
                    return Poll::Ready(Err(ExchangeError::Body(e)))
                }
                // Its answer, if it has one, is still read.
                Poll::Ready(Err(Stopped::Upstream)) => stopped_taking = true,
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        loop {
            match parse(&mut conn.buf, head_only, &mut scanned)? {
                Some(Parsed::Informational) => {
                    informational += 1;
                    if informational > MAX_INFORMATIONAL {
                        return Poll::Ready(Err(ExchangeError::Invalid(
                            "too many informational answers",
                        )));
                    }
                    continue;
                }
                Some(Parsed::Final(answer)) => return Poll::Ready(Ok(answer)),
                None => {}
            }
            let nothing_yet = conn.buf.is_empty() && informational == 0;
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if nothing_yet => {
                    return Poll::Ready(Err(ExchangeError::Unanswered(
                        io::ErrorKind::UnexpectedEof.into(),
                    )))
                }
                Ok(0) => {
                    return Poll::Ready(Err(ExchangeError::Invalid(
                        "the connection ended inside the head",
                    )))
                }
                Ok(_) => {}
                Err(e) if nothing_yet => return Poll::Ready(Err(ExchangeError::Unanswered(e))),
                Err(e) => return Poll::Ready(Err(ExchangeError::Read(e))),
            }
        }
    })
    .await?;

    // A body written to its end needs nothing more; one the upstream
    // stopped taking, or not yet ended, keeps the connection from reuse
    // (the rest of it could be read as a next request).
    let body = request.body.take();
    let finished = body.as_ref().is_none_or(Sending::is_written);
    let upstream = UpstreamBody {
        conn: Some(conn),
        ended: answer.framing.is_done(),
        framing: answer.framing,
        sending: if finished || stopped_taking {
            None
        } else {
            body
        },
        reusable: answer.reusable && !request.close && !stopped_taking,
    };
    let mut response = Response::new(upstream);
    *response.status_mut() = answer.status;
    *response.version_mut() = answer.version;
    *response.headers_mut() = answer.headers;
    Ok(response)
}

/// An answer's body, read from its connection as the client takes it.
/// While it streams, the rest of the request body is still written.
pub(crate) struct UpstreamBody {
    /// `None` once the exchange failed.
    conn: Option<Conn>,
    framing: Framing,
    sending: Option<Sending>,
    /// The connection may carry another request once this body ends.
    reusable: bool,
    ended: bool,
}

impl UpstreamBody {
    /// The connection, if the exchange ended cleanly and it may carry
    /// another request: the answer ended where its framing said, nothing
    /// followed it, and the request body was written to its end.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        let clean = self.ended
            && self.reusable
            && self.sending.is_none()
            && self.conn.as_ref().is_some_and(|c| c.buf.is_empty());
        if clean {
            self.conn.take()
        } else {
            None
        }
    }

    fn fail(&mut self, error: ExchangeError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.ended = true;
        Poll::Ready(Some(Err(error.into())))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(sending) = &mut this.sending {
            match sending.poll_send(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => this.sending = None,
                // The upstream stopped reading; its answer goes on.
                Poll::Ready(Err(Stopped::Upstream)) => {
                    this.sending = None;
                    this.reusable = false;
                }
                Poll::Ready(Err(Stopped::Body(e))) => return this.fail(ExchangeError::Body(e)),
                Poll::Pending => {}
            }
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing.decode(&mut conn.buf) {
                Err(e) => return this.fail(e),
                Ok(Decoded::Data(data)) => {
                    this.ended = this.framing.is_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.framing, Framing::UntilClose) => {
                    this.ended = true;
                    this.reusable = false;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail(ExchangeError::Read(io::ErrorKind::UnexpectedEof.into()))
                }
                Ok(_) => {}
                Err(e) => return this.fail(ExchangeError::Read(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::head::MAX_HEAD;
    use super::*;
    use crate::body::EdgeBody;
    use http::header::CONTENT_LENGTH;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A raw upstream on loopback that accepts one connection, reads what
    /// arrives until `request_end` has been seen, writes `answer`, then
    /// holds the connection open for a moment (or closes it at once if
    /// `answer` is empty). Returns what it read.
    async fn scripted(
        request_end: &'static [u8],
        answer: &'static [u8],
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(request_end.len()).any(|w| w == request_end) {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            if !answer.is_empty() {
                stream.write_all(answer).await.expect("answer");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            seen
        });
        (addr, served)
    }

    fn get() -> Request<EdgeBody> {
        Request::get("/path?q=1")
            .header("host", "upstream.test")
            .body(crate::body::empty())
            .expect("request")
    }

    /// Sends `req` on a new connection to `addr`; the answer's status,
    /// its whole body, and whether the connection could be reused.
    async fn send(
        addr: SocketAddr,
        req: Request<EdgeBody>,
    ) -> Result<(StatusCode, Result<Bytes, String>, bool), ExchangeError> {
        let (parts, body, reusable) = send_for_parts(addr, req).await?;
        Ok((parts.status, body, reusable))
    }

    /// [`send`]s a GET to an upstream that answers it with `answer`.
    async fn answered(
        answer: &'static [u8],
    ) -> Result<(StatusCode, Result<Bytes, String>, bool), ExchangeError> {
        let (addr, _served) = scripted(b"\r\n\r\n", answer).await;
        send(addr, get()).await
    }

    /// As [`send`], with the whole head of the answer.
    async fn send_for_parts(
        addr: SocketAddr,
        req: Request<EdgeBody>,
    ) -> Result<(http::response::Parts, Result<Bytes, String>, bool), ExchangeError> {
        let conn = Conn::new(TcpStream::connect(addr).await.expect("connect"));
        let response = exchange(conn, &mut Outgoing::new(req)).await?;
        let (parts, mut body) = response.into_parts();
        let mut data = Vec::new();
        let outcome = loop {
            match body.frame().await {
                None => break Ok(Bytes::from(data)),
                Some(Ok(frame)) => data.extend_from_slice(&frame.into_data().unwrap_or_default()),
                Some(Err(e)) => break Err(e.to_string()),
            }
        };
        Ok((parts, outcome, body.take_reusable().is_some()))
    }

    #[tokio::test]
    async fn the_request_goes_out_with_its_own_framing() {
        let (addr, served) = scripted(b"0\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n").await;
        // A body with no size of its own and no declared length goes
        // chunked; the client's other framing headers are not forwarded.
        let req = Request::post("/upload")
            .header("host", "upstream.test")
            .header("transfer-encoding", "gzip")
            .body(streamed())
            .expect("request");
        let (status, body, reusable) = send(addr, req).await.expect("answer");
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(body.expect("body"), "");
        assert!(reusable);
        let seen = served.await.expect("served");
        assert_eq!(
            String::from_utf8_lossy(&seen),
            "POST /upload HTTP/1.1\r\nhost: upstream.test\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\n7\r\n world!\r\n0\r\n\r\n"
        );

        let (addr, served) = scripted(b"data", b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let req = Request::put("/")
            .header("host", "upstream.test")
            .body(crate::body::full("form data"))
            .expect("request");
        let (_, body, _) = send(addr, req).await.expect("answer");
        assert_eq!(body.expect("body"), "");
        assert_eq!(
            String::from_utf8_lossy(&served.await.expect("served")),
            "PUT / HTTP/1.1\r\nhost: upstream.test\r\ncontent-length: 9\r\n\r\nform data",
        );
    }

    #[test]
    fn a_small_body_at_hand_goes_out_with_the_head() {
        let req = Request::put("/")
            .header("host", "upstream.test")
            .body(crate::body::full("form data"))
            .expect("request");
        let mut outgoing = Outgoing::new(req);
        let mut first = outgoing.head.clone();
        let body = outgoing.body.as_mut().expect("a body");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            body.poll_first(&mut cx, &mut first),
            Poll::Ready(Ok(()))
        ));
        assert!(first.ends_with(b"content-length: 9\r\n\r\nform data"));
        assert!(body.is_written(), "nothing is left to write after the head");
    }

    /// "hello world!" in two frames, with no size of its own (as a body
    /// the WAF has read and passes on).
    fn streamed() -> EdgeBody {
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::data(Bytes::from_static(b" world!"))),
        ];
        http_body_util::StreamBody::new(futures_util::stream::iter(chunks)).boxed()
    }

    #[tokio::test]
    async fn a_declared_length_goes_out_with_a_body_that_has_no_size() {
        let (addr, served) = scripted(b"world!", b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let req = Request::post("/upload")
            .header("host", "upstream.test")
            .header("content-length", "12")
            .body(streamed())
            .expect("request");
        let (_, _, reusable) = send(addr, req).await.expect("answer");
        assert!(reusable);
        let seen = served.await.expect("served");
        assert_eq!(
            String::from_utf8_lossy(&seen),
            "POST /upload HTTP/1.1\r\nhost: upstream.test\r\ncontent-length: 12\r\n\r\n\
             hello world!"
        );

        // A body shorter than declared fails; nothing is answered for it.
        let (addr, _served) = scripted(b"world!", b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let req = Request::post("/upload")
            .header("host", "upstream.test")
            .header("content-length", "999")
            .body(streamed())
            .expect("request");
        let error = send(addr, req).await.expect_err("short body");
        assert!(matches!(error, ExchangeError::Body(_)), "{error}");

        // One longer than declared: the upstream gets the declared bytes
        // and no more, then the connection ends; nothing is smuggled.
        let (addr, served) = scripted(b"hello", b"").await;
        let req = Request::post("/upload")
            .header("host", "upstream.test")
            .header("content-length", "5")
            .body(streamed())
            .expect("request");
        let error = send(addr, req).await.expect_err("long body");
        assert!(matches!(error, ExchangeError::Body(_)), "{error}");
        let seen = served.await.expect("served");
        assert!(
            seen.ends_with(b"content-length: 5\r\n\r\nhello"),
            "{}",
            String::from_utf8_lossy(&seen)
        );
    }

    #[tokio::test]
    async fn a_head_that_arrives_a_byte_at_a_time_is_read_whole() {
        // Split everywhere, also inside the blank line that ends it.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let _ = stream.read(&mut [0u8; 1024]).await;
            let answer = b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 2, 2\r\n\r\nok";
            for byte in answer {
                stream.write_all(&[*byte]).await.expect("write");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        let (parts, body, reusable) = send_for_parts(addr, get()).await.expect("answer");
        assert_eq!(parts.headers["x-a"], "1");
        // A list of equal lengths goes on as one.
        assert_eq!(parts.headers[CONTENT_LENGTH], "2");
        assert_eq!(body.expect("body"), "ok");
        assert!(reusable);
    }

    #[tokio::test]
    async fn a_chunked_answer_is_decoded_and_its_connection_kept() {
        let (status, body, reusable) = answered(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
        )
        .await
        .expect("answer");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.expect("body"), "hello world");
        assert!(reusable);
    }

    #[tokio::test]
    async fn a_content_length_beside_transfer_encoding_is_dropped() {
        let (addr, _served) = scripted(
            b"\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n\
              2\r\nok\r\n0\r\n\r\n",
        )
        .await;
        let (parts, body, reusable) = send_for_parts(addr, get()).await.expect("answer");
        assert!(parts.headers.get(CONTENT_LENGTH).is_none());
        assert_eq!(body.expect("body"), "ok");
        assert!(!reusable, "the connection ends after it");
    }

    #[tokio::test]
    async fn a_request_that_asked_to_close_does_not_keep_its_connection() {
        let (addr, _served) = scripted(
            b"\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        )
        .await;
        let req = Request::get("/")
            .header("host", "upstream.test")
            .header("connection", "close")
            .body(crate::body::empty())
            .expect("request");
        let (_, body, reusable) = send(addr, req).await.expect("answer");
        assert_eq!(body.expect("body"), "ok");
        assert!(!reusable);
    }

    #[tokio::test]
    async fn informational_answers_are_skipped() {
        let (status, body, reusable) = answered(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
              HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        )
        .await
        .expect("answer");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.expect("body"), "ok");
        assert!(reusable);
    }

    #[tokio::test]
    async fn bytes_after_an_answer_keep_its_connection_from_reuse() {
        // A second answer nobody asked for, right behind the first: on a
        // reused connection it would be the next client's answer.
        let (_, body, reusable) = answered(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok\
              HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil",
        )
        .await
        .expect("answer");
        assert_eq!(body.expect("body"), "ok");
        assert!(!reusable);
    }

    #[tokio::test]
    async fn an_answer_until_close_is_read_to_its_end_and_not_reused() {
        let (_, body, reusable) = answered(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
            .await
            .expect("answer");
        assert_eq!(body.expect("body"), "until the end");
        assert!(!reusable);
    }

    #[tokio::test]
    async fn an_answer_cut_short_fails_its_body() {
        let (addr, _served) = scripted(
            b"\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        )
        .await;
        let conn = Conn::new(TcpStream::connect(addr).await.expect("connect"));
        let response = exchange(conn, &mut Outgoing::new(get()))
            .await
            .expect("head");
        // The upstream holds the connection 300 ms, then closes it.
        let collected =
            tokio::time::timeout(Duration::from_secs(5), response.into_body().collect());
        let error = collected.await.expect("ends").expect_err("a short body");
        assert!(
            error.to_string().contains("reading the answer failed"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_oversized_or_malformed_head_is_refused() {
        let mut big = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        big.resize(MAX_HEAD + 100, b'a');
        let big: &'static [u8] = Box::leak(big.into_boxed_slice());
        let error = answered(big).await.expect_err("too large");
        assert!(
            matches!(error, ExchangeError::Invalid("the head is too large")),
            "{error}"
        );

        let error = answered(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n")
            .await
            .expect_err("malformed");
        assert!(
            matches!(error, ExchangeError::Invalid("malformed head")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_connection_closed_without_an_answer_is_reported_as_unanswered() {
        let (addr, served) = scripted(b"\r\n\r\n", b"").await;
        let error = send(addr, get()).await.expect_err("no answer");
        assert!(matches!(error, ExchangeError::Unanswered(_)), "{error}");
        served.await.expect("served");
        let outgoing = Outgoing::new(get());
        assert!(outgoing.may_resend(&error), "a GET may go out again");
        let post = Request::post("/")
            .body(crate::body::empty())
            .expect("request");
        assert!(!Outgoing::new(post).may_resend(&error), "a POST may not");
    }
}
