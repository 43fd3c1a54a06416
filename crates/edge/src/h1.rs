//! HTTP/1.1 exchanges on the pool's plain upstream connections. The
//! request's own task writes the request and reads the answer: there is
//! no connection task and no channel between the two.
//!
//! hyper's client connection is a task of its own that takes each
//! request through a channel and hands the answer back through another;
//! on the keep-alive proxy path that hand-off (two task wake-ups and the
//! channels' signalling per request) was the largest cost left above
//! nginx. The head is parsed by httparse (hyper's own parser), and the
//! framing follows RFC 9112 strictly: an answer whose length is unclear
//! either ends its connection or fails, and a connection is only reused
//! after an answer that ended exactly where its framing said.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use std::fmt::{self, Write as _};
use std::io::{self, Write as _};
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::body::{BoxError, EdgeBody};

/// Header lines an answer may have (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Bytes an answer's head may take: status line and headers.
const MAX_HEAD: usize = 64 * 1024;
/// Informational (1xx) answers skipped before the final one.
const MAX_INFORMATIONAL: usize = 16;
/// Bytes a chunk-size line may take, with its extensions.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Bytes a chunked answer's trailer section may take.
const MAX_TRAILERS: usize = 16 * 1024;
/// Bytes of a request body's first frame copied to go out with its head.
const COALESCE: usize = 16 * 1024;
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

/// A request on its way to an upstream: its head, which is written
/// again if a pooled connection turns out closed, and its body.
pub(crate) struct Outgoing {
    head: Vec<u8>,
    body: Option<Sending>,
    /// A HEAD request: its answer has no body, whatever it declares.
    head_only: bool,
    /// The request asked the upstream to close the connection after it.
    close: bool,
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
            let length = body.size_hint().exact();
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

/// True iff the comma-separated list `value` holds `token`, in any case.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// A request body being written, chunked when `left` is `None`.
struct Sending {
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
enum Stopped {
    /// The upstream stopped taking it (it may have answered already).
    Upstream,
    /// The body itself failed: the client went away, or the cap.
    Body(BoxError),
}

impl Sending {
    /// Writes the body until it has all been written, or until the body
    /// or the socket has nothing to go on with.
    fn poll_send(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), Stopped>> {
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
    fn poll_first(
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
            match parse(&mut conn.buf, head_only)? {
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
    let finished = body
        .as_ref()
        .is_none_or(|b| b.ended && b.pending.is_empty());
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

/// A parsed head.
enum Parsed {
    /// A 1xx other than 101, skipped.
    Informational,
    Final(Answer),
}

struct Answer {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    /// The head allows another request on the connection after it.
    reusable: bool,
}

/// Parses the head at the start of `buf` and takes it out, or returns
/// `None` if it has not all arrived.
fn parse(buf: &mut BytesMut, head_only: bool) -> Result<Option<Parsed>, ExchangeError> {
    // Where each name and value lies in `buf`, so the values can share
    // the head's bytes instead of each being copied.
    // (A head is at most MAX_HEAD bytes, so u32 offsets; the array is
    // set for every parse and kept small.)
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let (len, code, version, count) = {
        // Uninitialized: filling 100 empty headers per answer cost more
        // than parsing the few that are there.
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
            Ok(_) => return Err(ExchangeError::Invalid("the head is too large")),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ExchangeError::Invalid("too many header lines"))
            }
            Err(_) => return Err(ExchangeError::Invalid("malformed head")),
        };
        let base = buf.as_ptr() as usize;
        // Both within the head, so below MAX_HEAD.
        let at = |part: &[u8]| {
            let start = (part.as_ptr() as usize - base) as u32;
            (start, start + part.len() as u32)
        };
        for (span, header) in spans.iter_mut().zip(parsed.headers.iter()) {
            let (name_start, name_end) = at(header.name.as_bytes());
            let (value_start, value_end) = at(header.value);
            *span = (name_start, name_end, value_start, value_end);
        }
        (len, parsed.code, parsed.version, parsed.headers.len())
    };
    let head = buf.split_to(len).freeze();
    let status = code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(ExchangeError::Invalid("bad status code"))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Some(Parsed::Informational));
    }
    let mut headers = HeaderMap::with_capacity(count);
    for &(name_start, name_end, value_start, value_end) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[name_start as usize..name_end as usize])
            .map_err(|_| ExchangeError::Invalid("bad header name"))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(value_start as usize..value_end as usize))
                .map_err(|_| ExchangeError::Invalid("bad header value"))?;
        headers.append(name, value);
    }
    let version = match version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let keep_alive = keeps_alive(&headers, version);
    let (framing, clear) = framing(&headers, status, head_only, version)?;
    // Transfer-Encoding overrides a Content-Length, which then does not
    // describe the body the client gets: it must not reach the client.
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
    }
    Ok(Some(Parsed::Final(Answer {
        status,
        version,
        headers,
        framing,
        reusable: keep_alive && clear && status != StatusCode::SWITCHING_PROTOCOLS,
    })))
}

/// True iff the connection may carry another request after this answer:
/// HTTP/1.1 unless it says `close`, HTTP/1.0 only if it says `keep-alive`.
fn keeps_alive(headers: &HeaderMap, version: Version) -> bool {
    let says = |token: &[u8]| {
        headers
            .get_all(CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), token))
    };
    match version {
        Version::HTTP_11 => !says(b"close"),
        _ => says(b"keep-alive"),
    }
}

/// How the answer's body is delimited (RFC 9112 6.3), and whether that is
/// clear enough to reuse the connection after it. The only transfer
/// coding taken is `chunked`, from HTTP/1.1: another (gzip, ...) would
/// reach the client still coded and unlabelled once the hop-by-hop
/// header is gone, and HTTP/1.0 has none (RFC 9112 6.1). nginx refuses
/// both too.
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    head_only: bool,
    version: Version,
) -> Result<(Framing, bool), ExchangeError> {
    let has_codings = headers.contains_key(TRANSFER_ENCODING);
    if has_codings && version == Version::HTTP_10 {
        return Err(ExchangeError::Invalid(
            "transfer-encoding in an HTTP/1.0 answer",
        ));
    }
    if head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Length(0), true));
    }
    let has_length = headers.contains_key(CONTENT_LENGTH);
    if has_codings {
        let mut codings = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii);
        let only_chunked = codings
            .next()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        if !only_chunked {
            return Err(ExchangeError::Invalid(
                "a transfer coding other than chunked",
            ));
        }
        // With a Content-Length as well, Transfer-Encoding wins, and the
        // connection is closed after (RFC 9112 6.3, item 3).
        return Ok((Framing::Chunked(Chunk::Size), !has_length));
    }
    if has_length {
        return Ok((Framing::Length(content_length(headers)?), true));
    }
    Ok((Framing::UntilClose, false))
}

/// The one length all Content-Length lines and list items agree on.
fn content_length(headers: &HeaderMap) -> Result<u64, ExchangeError> {
    let mut length = None;
    let items = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii);
    for item in items {
        let valid = !item.is_empty() && item.len() <= 18 && item.iter().all(u8::is_ascii_digit);
        let value = valid
            .then(|| std::str::from_utf8(item).ok()?.parse::<u64>().ok())
            .flatten()
            .ok_or(ExchangeError::Invalid("bad content-length"))?;
        if length.is_some_and(|l| l != value) {
            return Err(ExchangeError::Invalid("conflicting content-lengths"));
        }
        length = Some(value);
    }
    length.ok_or(ExchangeError::Invalid("bad content-length"))
}

/// Where the answer's body ends.
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// At the end of the connection.
    UntilClose,
}

/// Where a chunked body's decoder stands.
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk with this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// In the trailer section, this many bytes into it.
    Trailers(usize),
    Done,
}

/// What the decoder found in the buffer.
enum Decoded {
    Data(Bytes),
    /// More bytes are needed.
    More,
    End,
}

impl Framing {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ExchangeError> {
        match self {
            Framing::Length(0) => Ok(Decoded::End),
            Framing::Length(left) => Ok(take(buf, left).map_or(Decoded::More, Decoded::Data)),
            Framing::UntilClose if buf.is_empty() => Ok(Decoded::More),
            Framing::UntilClose => Ok(Decoded::Data(buf.split().freeze())),
            Framing::Chunked(chunk) => chunk.decode(buf),
        }
    }

    /// True iff nothing of the body is left.
    fn is_done(&self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunk::Done))
    }
}

/// Up to `left` bytes from the front of `buf`, or `None` if it is empty.
fn take(buf: &mut BytesMut, left: &mut u64) -> Option<Bytes> {
    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
    if n == 0 {
        return None;
    }
    *left -= n as u64;
    Some(buf.split_to(n).freeze())
}

/// The length of the line at the start of `buf`, without its CRLF, or
/// `None` if it has not all arrived. A bare LF is an error.
fn line(buf: &[u8], max: usize) -> Result<Option<usize>, ExchangeError> {
    let window = &buf[..buf.len().min(max)];
    match window.iter().position(|b| *b == b'\n') {
        Some(end) if end > 0 && window[end - 1] == b'\r' => Ok(Some(end - 1)),
        Some(_) => Err(ExchangeError::Invalid("a chunked line without CRLF")),
        None if buf.len() >= max => Err(ExchangeError::Invalid("a chunked line is too long")),
        None => Ok(None),
    }
}

impl Chunk {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ExchangeError> {
        loop {
            match self {
                Chunk::Size => {
                    let Some(end) = line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Decoded::More);
                    };
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 2);
                    *self = if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    let Some(data) = take(buf, left) else {
                        return Ok(Decoded::More);
                    };
                    if *left == 0 {
                        *self = Chunk::DataEnd;
                    }
                    return Ok(Decoded::Data(data));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ExchangeError::Invalid("a chunk without its CRLF"));
                    }
                    buf.advance(2);
                    *self = Chunk::Size;
                }
                // Limitation: trailers are read and dropped, as nginx
                // drops an upstream's (a trailers frame for a client that
                // sent `TE: trailers` would pass them on).
                Chunk::Trailers(seen) => {
                    let room = MAX_TRAILERS.saturating_sub(*seen);
                    let Some(end) = line(buf, room)? else {
                        return Ok(Decoded::More);
                    };
                    buf.advance(end + 2);
                    if end == 0 {
                        *self = Chunk::Done;
                    } else {
                        *seen += end + 2;
                    }
                }
                Chunk::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// The size on a chunk-size line: hex digits, then optional extensions
/// after `;` (ignored), with spaces or tabs between. A CR anywhere in
/// the line is an error.
fn chunk_size(line: &[u8]) -> Result<u64, ExchangeError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let gap = line[digits..]
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    let rest = &line[digits + gap..];
    let extensions_ok = (rest.is_empty() || rest[0] == b';') && !line.contains(&b'\r');
    if digits == 0 || digits > 15 || !extensions_ok {
        return Err(ExchangeError::Invalid("bad chunk size"));
    }
    let hex = std::str::from_utf8(&line[..digits])
        .map_err(|_| ExchangeError::Invalid("bad chunk size"))?;
    u64::from_str_radix(hex, 16).map_err(|_| ExchangeError::Invalid("bad chunk size"))
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
    use super::*;
    use http_body_util::BodyExt;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A raw upstream on loopback that accepts one connection, reads what
    /// arrives until `request_end` has been seen, writes `answer`, then
    /// holds the connection open for a moment (or closes it at once if
    /// `answer` is empty). Returns what it read, and how much of that the
    /// first read brought.
    async fn scripted(
        request_end: &'static [u8],
        answer: &'static [u8],
    ) -> (SocketAddr, tokio::task::JoinHandle<(Vec<u8>, usize)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            let mut first = None;
            let mut buf = [0u8; 4096];
            while !seen.windows(request_end.len()).any(|w| w == request_end) {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
                first.get_or_insert(seen.len());
            }
            if !answer.is_empty() {
                stream.write_all(answer).await.expect("answer");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let first = first.unwrap_or(0);
            (seen, first)
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
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::data(Bytes::from_static(b" world!"))),
        ];
        let streamed = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
        // The client's own framing headers are replaced, not forwarded.
        let req = Request::post("/upload")
            .header("host", "upstream.test")
            .header("content-length", "999")
            .header("transfer-encoding", "gzip")
            .body(streamed.boxed())
            .expect("request");
        let (status, body, reusable) = send(addr, req).await.expect("answer");
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(body.expect("body"), "");
        assert!(reusable);
        let (seen, _) = served.await.expect("served");
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
        let (seen, first_read) = served.await.expect("served");
        assert_eq!(
            String::from_utf8_lossy(&seen),
            "PUT / HTTP/1.1\r\nhost: upstream.test\r\ncontent-length: 9\r\n\r\nform data",
        );
        assert_eq!(
            first_read,
            seen.len(),
            "head and a small body go out in one write"
        );
    }

    #[tokio::test]
    async fn a_chunked_answer_is_decoded_and_its_connection_kept() {
        let (addr, _served) = scripted(
            b"\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;name=value\r\nhello\r\n6 ; x\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
        )
        .await;
        let (status, body, reusable) = send(addr, get()).await.expect("answer");
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
        let (addr, _served) = scripted(
            b"\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
              HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        )
        .await;
        let (status, body, reusable) = send(addr, get()).await.expect("answer");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.expect("body"), "ok");
        assert!(reusable);
    }

    #[tokio::test]
    async fn bytes_after_an_answer_keep_its_connection_from_reuse() {
        // A second answer nobody asked for, right behind the first: on a
        // reused connection it would be the next client's answer.
        let (addr, _served) = scripted(
            b"\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok\
              HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil",
        )
        .await;
        let (_, body, reusable) = send(addr, get()).await.expect("answer");
        assert_eq!(body.expect("body"), "ok");
        assert!(!reusable);
    }

    #[tokio::test]
    async fn an_answer_until_close_is_read_to_its_end_and_not_reused() {
        let (addr, _served) = scripted(b"\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nuntil the end").await;
        let (_, body, reusable) = send(addr, get()).await.expect("answer");
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
        let (addr, _served) = scripted(b"\r\n\r\n", big).await;
        let error = send(addr, get()).await.expect_err("too large");
        assert!(
            matches!(error, ExchangeError::Invalid("the head is too large")),
            "{error}"
        );

        let (addr, _served) = scripted(b"\r\n\r\n", b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n").await;
        let error = send(addr, get()).await.expect_err("malformed");
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

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    /// The framing `headers` give a 200 answer to a GET: its kind, its
    /// length if known, and whether the connection may be reused.
    fn framed(
        pairs: &[(&'static str, &'static str)],
    ) -> Result<(&'static str, u64, bool), &'static str> {
        match framing(&headers(pairs), StatusCode::OK, false, Version::HTTP_11) {
            Ok((Framing::Length(n), clear)) => Ok(("length", n, clear)),
            Ok((Framing::Chunked(_), clear)) => Ok(("chunked", 0, clear)),
            Ok((Framing::UntilClose, clear)) => Ok(("close", 0, clear)),
            Err(ExchangeError::Invalid(why)) => Err(why),
            Err(_) => Err("other"),
        }
    }

    #[test]
    fn the_answer_framing_follows_rfc_9112() {
        assert_eq!(framed(&[("content-length", "5")]), Ok(("length", 5, true)));
        assert_eq!(
            framed(&[("content-length", "5, 5")]),
            Ok(("length", 5, true))
        );
        assert_eq!(
            framed(&[("content-length", "5"), ("content-length", "5")]),
            Ok(("length", 5, true))
        );
        for bad in ["5, 6", "+5", "-1", "0x5", "", "5 5", "99999999999999999999"] {
            assert!(framed(&[("content-length", bad)]).is_err(), "{bad:?}");
        }
        assert_eq!(
            framed(&[("content-length", "5"), ("content-length", "6")]),
            Err("conflicting content-lengths")
        );
        assert_eq!(
            framed(&[("transfer-encoding", "chunked")]),
            Ok(("chunked", 0, true))
        );
        assert_eq!(
            framed(&[("transfer-encoding", "Chunked")]),
            Ok(("chunked", 0, true))
        );
        // Transfer-Encoding wins over Content-Length; the connection ends.
        assert_eq!(
            framed(&[("transfer-encoding", "chunked"), ("content-length", "5")]),
            Ok(("chunked", 0, false))
        );
        for other in [
            "gzip",
            "gzip, chunked",
            "chunked, gzip",
            "chunked, chunked",
            "",
        ] {
            assert_eq!(
                framed(&[("transfer-encoding", other)]),
                Err("a transfer coding other than chunked"),
                "{other:?}"
            );
        }
        let chunked = headers(&[("transfer-encoding", "chunked")]);
        assert!(matches!(
            framing(&chunked, StatusCode::OK, false, Version::HTTP_10),
            Err(ExchangeError::Invalid(
                "transfer-encoding in an HTTP/1.0 answer"
            ))
        ));
        assert_eq!(framed(&[]), Ok(("close", 0, false)));
        // No body, whatever is declared: a HEAD's answer, 204, 304.
        let declared = headers(&[("content-length", "5")]);
        for (status, head_only) in [
            (StatusCode::OK, true),
            (StatusCode::NO_CONTENT, false),
            (StatusCode::NOT_MODIFIED, false),
        ] {
            let (framing, clear) =
                framing(&declared, status, head_only, Version::HTTP_11).expect("framed");
            assert!(matches!(framing, Framing::Length(0)) && clear, "{status}");
        }
    }

    #[test]
    fn keep_alive_depends_on_the_version_and_connection_header() {
        assert!(keeps_alive(&headers(&[]), Version::HTTP_11));
        assert!(!keeps_alive(
            &headers(&[("connection", "Close")]),
            Version::HTTP_11
        ));
        assert!(!keeps_alive(&headers(&[]), Version::HTTP_10));
        assert!(keeps_alive(
            &headers(&[("connection", "keep-alive")]),
            Version::HTTP_10
        ));
    }

    #[test]
    fn chunk_sizes_are_strict_hex() {
        assert_eq!(chunk_size(b"A").ok(), Some(10));
        assert_eq!(chunk_size(b"5;name=value").ok(), Some(5));
        assert_eq!(chunk_size(b"5 ;x").ok(), Some(5));
        assert_eq!(chunk_size(b"5\t;x").ok(), Some(5));
        for bad in [
            &b""[..],
            b"g",
            b"5 junk",
            b"-5",
            b"1234567890abcdef",
            b"5;a\rb",
            b"5\r;x",
            b"5\r",
            b"5\x0c",
        ] {
            assert!(
                chunk_size(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Decodes `wire` as one chunked body in pieces of `step` bytes.
    fn dechunk(wire: &[u8], step: usize) -> Result<Vec<u8>, &'static str> {
        let mut chunk = Chunk::Size;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                match chunk.decode(&mut buf) {
                    Ok(Decoded::Data(data)) => out.extend_from_slice(&data),
                    Ok(Decoded::More) => break,
                    Ok(Decoded::End) => return Ok(out),
                    Err(ExchangeError::Invalid(why)) => return Err(why),
                    Err(_) => return Err("other"),
                }
            }
        }
        Err("unfinished")
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_cut() {
        let wire = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\ntrailer: x\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            assert_eq!(
                dechunk(wire, step).as_deref(),
                Ok(&b"abc0123456789abcdef"[..]),
                "step {step}"
            );
        }
        assert_eq!(
            dechunk(b"3\nabc\r\n0\r\n\r\n", 64),
            Err("a chunked line without CRLF")
        );
        assert_eq!(
            dechunk(b"3\r\nabcX\r\n0\r\n\r\n", 64),
            Err("a chunk without its CRLF")
        );
        let mut long = b"1;".to_vec();
        long.resize(MAX_CHUNK_LINE + 10, b'x');
        assert_eq!(dechunk(&long, 64), Err("a chunked line is too long"));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILERS / 10 + 1 {
            trailers.extend_from_slice(b"x-t: 1234\r\n");
        }
        assert_eq!(dechunk(&trailers, 512), Err("a chunked line is too long"));
    }
}
