//! An upstream answer's head and the framing of its body: parsing the
//! status line and headers (httparse), deciding by RFC 9112 where the
//! body ends and whether the connection may carry another request, and
//! decoding chunked bodies. It reads from a buffer and does no I/O.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};

use super::{has_token, ExchangeError};

/// How many headers the edge may add to an answer on its way out.
const EDGE_ADDS: usize = 8;

#[cfg(test)]
thread_local! {
    /// Full parses of a head by httparse on this thread (tests count
    /// them to show a dribbled head is not parsed after every read).
    pub(super) static FULL_PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Header lines an answer may have (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Bytes an answer's head may take: status line and headers.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Bytes a chunk-size line may take, with its extensions.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Bytes a chunked answer's trailer section may take.
const MAX_TRAILERS: usize = 16 * 1024;

/// A parsed head.
pub(super) enum Parsed {
    /// A 1xx other than 101, skipped.
    Informational,
    Final(Answer),
}

pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    pub(super) framing: Framing,
    /// The head allows another request on the connection after it.
    pub(super) reusable: bool,
}

/// Parses the head at the start of `buf` and takes it out, or returns
/// `None` if it has not all arrived.
///
/// `scanned` is how much of `buf` earlier calls saw without finding the
/// head's end (0 to start): a head that arrives a few bytes at a time is
/// parsed again only once its end may be among the new bytes, not from
/// its start after every read, which would cost time quadratic in its
/// length.
pub(super) fn parse(
    buf: &mut BytesMut,
    head_only: bool,
    scanned: &mut usize,
) -> Result<Option<Parsed>, ExchangeError> {
    // httparse skips empty lines before a status line; each would look
    // like a head's end below, and a run of them sent a byte at a time
    // would have the whole buffer parsed after every read. nginx refuses
    // such an answer too.
    if buf.first().is_some_and(|b| matches!(b, b'\r' | b'\n')) {
        return Err(ExchangeError::Invalid(
            "an empty line before the status line",
        ));
    }
    if *scanned > 0 && !may_end_head(buf, *scanned) {
        *scanned = buf.len();
        if buf.len() >= MAX_HEAD {
            return Err(ExchangeError::Invalid("the head is too large"));
        }
        return Ok(None);
    }
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
        #[cfg(test)]
        FULL_PARSES.with(|n| n.set(n.get() + 1));
        let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                *scanned = buf.len();
                return Ok(None);
            }
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
    *scanned = 0;
    let status = code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(ExchangeError::Invalid("bad status code"))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Some(Parsed::Informational));
    }
    // Room for what the edge adds to every answer (security headers,
    // request id): growing the map there would rehash and move it.
    let mut headers = HeaderMap::with_capacity(count + EDGE_ADDS);
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
    // describe the body the client gets: it must not reach the client. A
    // length given as a list of equal values goes on as one value.
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
    } else if is_list(&headers, CONTENT_LENGTH) {
        let length = content_length(&headers)?;
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    Ok(Some(Parsed::Final(Answer {
        status,
        version,
        headers,
        framing,
        reusable: keep_alive && clear && status != StatusCode::SWITCHING_PROTOCOLS,
    })))
}

/// True iff `\n\n` or `\n\r\n`, one of which ends every head, ends
/// in `buf[from..]`: the search starts two bytes before `from`, in case
/// one began in the bytes seen before.
fn may_end_head(buf: &[u8], from: usize) -> bool {
    let new = &buf[from.saturating_sub(2).min(buf.len())..];
    new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n")
}

/// True iff header `name` has more than one line, or a comma in its one.
fn is_list(headers: &HeaderMap, name: http::header::HeaderName) -> bool {
    let mut values = headers.get_all(&name).iter();
    let first = values.next();
    values.next().is_some() || first.is_some_and(|v| v.as_bytes().contains(&b','))
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
/// header is gone (nginx 1.23 and later refuse it too), and HTTP/1.0
/// has none (RFC 9112 6.1).
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
    let has_length = headers.contains_key(CONTENT_LENGTH);
    if head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // No body, but a declared length still has to be one.
        if has_length && !has_codings {
            content_length(headers)?;
        }
        return Ok((Framing::Length(0), true));
    }
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
pub(super) enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// At the end of the connection.
    UntilClose,
}

/// Where a chunked body's decoder stands.
pub(super) enum Chunk {
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
pub(super) enum Decoded {
    Data(Bytes),
    /// More bytes are needed.
    More,
    End,
}

impl Framing {
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ExchangeError> {
        match self {
            Framing::Length(0) => Ok(Decoded::End),
            Framing::Length(left) => Ok(take(buf, left).map_or(Decoded::More, Decoded::Data)),
            Framing::UntilClose if buf.is_empty() => Ok(Decoded::More),
            Framing::UntilClose => Ok(Decoded::Data(buf.split().freeze())),
            Framing::Chunked(chunk) => chunk.decode(buf),
        }
    }

    /// True iff nothing of the body is left.
    pub(super) fn is_done(&self) -> bool {
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
// Limitation: a line that arrives a few bytes at a time is searched from
// its start after each read; `max` (4 KiB for a chunk-size line, what is
// left of 16 KiB of trailers) bounds that cost, which remembering how far
// the search got would remove.
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_head_is_found_however_its_end_is_cut() {
        let wire = b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\nbody";
        for step in 1..=wire.len() {
            let mut buf = BytesMut::new();
            let mut scanned = 0;
            let mut found = None;
            for piece in wire.chunks(step) {
                buf.extend_from_slice(piece);
                if let Some(Parsed::Final(answer)) =
                    parse(&mut buf, false, &mut scanned).expect("parses")
                {
                    found = Some(answer);
                    break;
                }
            }
            let answer = found.unwrap_or_else(|| panic!("step {step}: no head"));
            assert_eq!(answer.headers["x-a"], "1", "step {step}");
            // Only the head was taken: what is left is the body's start.
            assert!(b"body".starts_with(&buf), "step {step}");
        }
        // A head that never ends is refused at the cap, also a byte at a
        // time.
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        let mut scanned = 0;
        let refused = (0..MAX_HEAD).find_map(|_| {
            buf.extend_from_slice(b"a");
            parse(&mut buf, false, &mut scanned).err()
        });
        assert!(matches!(
            refused,
            Some(ExchangeError::Invalid("the head is too large"))
        ));
    }

    #[test]
    fn a_dribbled_head_is_parsed_whole_only_once_its_end_may_be_there() {
        let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..200 {
            wire.extend_from_slice(format!("x-h{i}: {}\r\n", "v".repeat(30)).as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        let mut buf = BytesMut::new();
        let mut scanned = 0;
        FULL_PARSES.with(|n| n.set(0));
        let mut outcome = Ok(None);
        for byte in &wire {
            buf.extend_from_slice(&[*byte]);
            outcome = parse(&mut buf, false, &mut scanned);
            if !matches!(outcome, Ok(None)) {
                break;
            }
        }
        // 200 lines are too many; what counts is that it was found out
        // once, at the end, not after each of the 8,000 bytes.
        assert!(matches!(
            outcome,
            Err(ExchangeError::Invalid("too many header lines"))
        ));
        assert!(FULL_PARSES.with(|n| n.get()) <= 2);
    }

    #[test]
    fn an_empty_line_before_the_status_line_is_refused() {
        for wire in [&b"\r\nHTTP/1.1 200 OK\r\n\r\n"[..], b"\n", b"\r"] {
            let mut scanned = 0;
            let refused = parse(&mut BytesMut::from(wire), false, &mut scanned);
            assert!(
                matches!(
                    refused,
                    Err(ExchangeError::Invalid(
                        "an empty line before the status line"
                    ))
                ),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn a_declared_length_without_a_body_must_still_be_a_number() {
        let bad = headers(&[("content-length", "abc")]);
        let framed = framing(&bad, StatusCode::NOT_MODIFIED, false, Version::HTTP_11);
        assert!(matches!(framed, Err(ExchangeError::Invalid(_))));
        let good = headers(&[("content-length", "1234")]);
        let framed = framing(&good, StatusCode::OK, true, Version::HTTP_11);
        assert!(matches!(framed, Ok((Framing::Length(0), true))));
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
