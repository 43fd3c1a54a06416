//! A request on its way to an upstream: its head serialized once, and
//! its body written with the length it declares or chunked, while the
//! answer is read. It does not read answers.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request};
use http_body::Body;
use std::fmt::Write as _;
use std::io::Write as _;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::{has_token, ExchangeError};
use crate::body::{BoxError, EdgeBody};

/// Bytes of a request body's first frame copied to go out with its head.
const COALESCE: usize = 16 * 1024;

/// A request on its way to an upstream: its head, which is written
/// again if a pooled connection turns out closed, and its body.
pub(crate) struct Outgoing {
    pub(super) head: Vec<u8>,
    pub(super) body: Option<Sending>,
    /// A HEAD request: its answer has no body, whatever it declares.
    pub(super) head_only: bool,
    /// The request asked the upstream to close the connection after it.
    pub(super) close: bool,
    /// The method may be sent twice (RFC 9110 9.2.2).
    idempotent: bool,
}

impl Outgoing {
    /// Serializes `req`, whose URI is in origin form. Its own framing
    /// headers are replaced: the body is sent with the length it knows,
    /// or chunked.
    pub fn new(req: Request<EdgeBody>) -> Outgoing {
        let (parts, body) = req.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let size: usize = parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        let mut head = Vec::with_capacity(parts.method.as_str().len() + target.len() + size + 64);
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &parts.headers {
            if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        let body = if body.is_end_stream() {
            // A method that carries content says it has none.
            if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                head.extend_from_slice(b"content-length: 0\r\n");
            }
            None
        } else {
            // The body's own length, or else the one the client declared:
            // a body the WAF read and passes on again knows none, and
            // many servers read only Content-Length (a body that turns
            // out another length fails, see `Sending::encode`).
            let declared = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let length = body.size_hint().exact().or(declared);
            match length {
                Some(length) => {
                    let _ = write!(head, "content-length: {length}\r\n");
                }
                None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            }
            Some(Sending {
                body,
                left: length,
                pending: Bytes::new(),
                started: false,
                ended: false,
            })
        };
        head.extend_from_slice(b"\r\n");
        let close = parts
            .headers
            .get_all(CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"close"));
        Outgoing {
            head,
            body,
            head_only: parts.method == Method::HEAD,
            close,
            idempotent: matches!(
                parts.method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            ),
        }
    }

    /// True iff the request may go out again after `failure`: nothing of
    /// its body has been taken, and either its head never left, or it
    /// left without an answer and the method may be sent twice.
    pub fn may_resend(&self, failure: &ExchangeError) -> bool {
        let body_untouched = self.body.as_ref().is_none_or(|body| !body.started);
        body_untouched
            && match failure {
                ExchangeError::Unsent(_) => true,
                ExchangeError::Unanswered(_) => self.idempotent,
                _ => false,
            }
    }
}

/// A request body being written, chunked when `left` is `None`.
pub(super) struct Sending {
    body: EdgeBody,
    /// Bytes the declared length still expects.
    left: Option<u64>,
    /// Encoded bytes of the current frame not yet written.
    pending: Bytes,
    /// A frame has been taken from the body.
    started: bool,
    /// The body has ended; `pending` holds its last bytes.
    ended: bool,
}

/// Why a request body stopped before its end.
pub(super) enum Stopped {
    /// The upstream stopped taking it (it may have answered already).
    Upstream,
    /// The body itself failed: the client went away, or the cap.
    Body(BoxError),
}

impl Sending {
    /// True iff the whole body has been written.
    pub(super) fn is_written(&self) -> bool {
        self.ended && self.pending.is_empty()
    }

    /// Writes the body until it has all been written, or until the body
    /// or the socket has nothing to go on with.
    pub(super) fn poll_send(
        &mut self,
        io: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Stopped>> {
        loop {
            while !self.pending.is_empty() {
                let written =
                    ready!(Pin::new(&mut *io).poll_write(cx, &self.pending)).map_err(|e| {
                        tracing::debug!(error = %e, "the upstream stopped taking the request body");
                        Stopped::Upstream
                    })?;
                if written == 0 {
                    return Poll::Ready(Err(Stopped::Upstream));
                }
                self.pending.advance(written);
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_next(cx))?;
        }
    }

    /// Takes the body's next frame into `pending`, encoded.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Stopped>> {
        self.started = true;
        let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Err(Stopped::Body(e))),
            None => return Poll::Ready(self.end()),
        };
        // Limitation: request trailers are not forwarded (written after
        // the last chunk of a chunked body, they could be).
        if let Ok(data) = frame.into_data() {
            self.pending = self.encode(data)?;
        }
        // A body that knows its end needs no further poll to say so.
        if self.body.is_end_stream() {
            self.end()?;
        }
        Poll::Ready(Ok(()))
    }

    /// Appends to `head` the body's first frame if it is at hand and
    /// small, so that most requests with a body go out in one write:
    /// some servers answer a head read alone before its body arrives,
    /// and then close the connection rather than wait for it.
    pub(super) fn poll_first(
        &mut self,
        cx: &mut Context<'_>,
        head: &mut Vec<u8>,
    ) -> Poll<Result<(), Stopped>> {
        ready!(self.poll_next(cx))?;
        if self.pending.len() <= COALESCE {
            head.extend_from_slice(&self.pending);
            self.pending.clear();
        }
        Poll::Ready(Ok(()))
    }

    /// `data` as it goes on the wire.
    fn encode(&mut self, data: Bytes) -> Result<Bytes, Stopped> {
        if data.is_empty() {
            return Ok(data);
        }
        match &mut self.left {
            Some(left) => {
                let len = data.len() as u64;
                if len > *left {
                    return Err(Stopped::Body(
                        "the request body is longer than its declared length".into(),
                    ));
                }
                *left -= len;
                Ok(data)
            }
            None => {
                let mut chunk = BytesMut::with_capacity(data.len() + 20);
                let _ = write!(chunk, "{:x}\r\n", data.len());
                chunk.extend_from_slice(&data);
                chunk.extend_from_slice(b"\r\n");
                Ok(chunk.freeze())
            }
        }
    }

    /// Marks the body ended, queueing the last chunk of a chunked one.
    fn end(&mut self) -> Result<(), Stopped> {
        self.ended = true;
        match self.left {
            Some(0) => Ok(()),
            Some(_) => Err(Stopped::Body(
                "the request body is shorter than its declared length".into(),
            )),
            None => {
                let mut last = BytesMut::from(&self.pending[..]);
                last.extend_from_slice(b"0\r\n\r\n");
                self.pending = last.freeze();
                Ok(())
            }
        }
    }
}
