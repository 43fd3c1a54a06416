//! The framing rules hyper cannot be told to enforce. Over HTTP/1, hyper
//! quietly repairs two smuggling shapes before any service sees the
//! request: it drops a `Content-Length` sent together with
//! `Transfer-Encoding` (chunked wins), and it folds repeated identical
//! `Content-Length` lines into one. Both are served with one safe framing,
//! but a proxy in front of us may have framed them the other way, so the
//! rule is to refuse them.
//!
//! [`FramingScanner`] follows the bytes of one connection as they are
//! read, request head by request head (skipping bodies by their declared
//! framing), and says where a head that breaks a rule ends. The edge's
//! connection wrapper then hands hyper [`SPOILED_END`] in place of that
//! head's final line feed and ends the input there: hyper fails to parse
//! the head and answers 400 itself, before any service or upstream sees
//! the request.
//!
//! A request that asks for an upgrade (an `Upgrade` header, or CONNECT)
//! may or may not switch the connection to another protocol, which only
//! its response tells. The scanner pauses after such a request
//! ([`Scanned::Paused`]): the connection wrapper holds back the bytes
//! after it until the response is known, then says
//! [`FramingScanner::answered`]. A refused upgrade is followed on as
//! HTTP/1.
//!
//! Once it cannot follow the connection any more (HTTP/2, a switched
//! protocol, a head or a chunk it does not understand, which hyper
//! refuses anyway) it stops looking: hyper's own rules still hold from
//! there.

/// The largest head followed; past it hyper refuses the head itself.
const MAX_HEAD: usize = 128 * 1024;

/// Why a head was refused.
pub type Reason = &'static str;

/// What replaces the final line feed of a refused head: a NUL where a
/// line feed or a header name must be, then a complete end of head, so
/// hyper parses far enough to fail (it waits while no end is in sight).
pub const SPOILED_END: &[u8] = b"\0\r\n\r\n";

/// A head that broke a framing rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Index, in the bytes just scanned, of the head's final line feed.
    pub at: usize,
    pub reason: Reason,
}

/// What [`FramingScanner::scan`] found in the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned {
    /// Nothing to do: hand all the bytes over.
    Pass,
    /// A head broke a rule; the scanner stops following.
    Refused(Refused),
    /// A request that asked for an upgrade ended at this index: the bytes
    /// from here on were not scanned. Hold them back until
    /// [`FramingScanner::answered`], then scan them.
    Paused { at: usize },
}

#[derive(Debug)]
enum State {
    Head,
    Body(u64),
    Chunk(Chunk),
    /// After a request that asked for an upgrade, until its response says
    /// whether the protocol switched.
    AwaitResponse,
    /// Not followed any more.
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Reading the size line: the size so far, and whether the line is in
    /// its extension part.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; `empty`
    /// while the current line has no bytes but CR.
    Trailer {
        empty: bool,
    },
}

/// Follows one connection's request heads. Cheap: bodies are skipped by
/// length, and only heads are copied (into one reused buffer).
#[derive(Debug)]
pub struct FramingScanner {
    state: State,
    head: Vec<u8>,
    /// The request being followed asked for an upgrade.
    upgrade: bool,
}

impl Default for FramingScanner {
    fn default() -> FramingScanner {
        FramingScanner::new()
    }
}

impl FramingScanner {
    pub fn new() -> FramingScanner {
        FramingScanner {
            state: State::Head,
            head: Vec::new(),
            upgrade: false,
        }
    }

    /// True while a request that asked for an upgrade waits for its
    /// response: no bytes may be scanned (or handed over) until
    /// [`FramingScanner::answered`].
    pub fn awaiting_response(&self) -> bool {
        matches!(self.state, State::AwaitResponse)
    }

    /// The response to the request that asked for an upgrade: with
    /// `switched` (a 101, or a 2xx to a CONNECT) the connection speaks
    /// another protocol from here on and is not followed any more;
    /// otherwise the next head follows.
    pub fn answered(&mut self, switched: bool) {
        if self.awaiting_response() {
            self.upgrade = false;
            self.state = if switched { State::Done } else { State::Head };
        }
    }

    /// The state once a request has ended: the next head, or the wait for
    /// the response of one that asked for an upgrade.
    fn after_request(&self) -> State {
        if self.upgrade {
            State::AwaitResponse
        } else {
            State::Head
        }
    }

    /// True once the scanner has stopped following the connection.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Follows `bytes`, just read from the client. Finds where a head that
    /// breaks a framing rule ends (the scanner stops following then: the
    /// connection ends with the 400), or where a request that asked for
    /// an upgrade ends.
    pub fn scan(&mut self, bytes: &[u8]) -> Scanned {
        let mut i = 0;
        while i < bytes.len() {
            match &mut self.state {
                State::Done => return Scanned::Pass,
                State::AwaitResponse => return Scanned::Paused { at: i },
                State::Body(left) => {
                    let take = (*left).min((bytes.len() - i) as u64);
                    *left -= take;
                    i += take as usize;
                    if *left == 0 {
                        self.state = self.after_request();
                    }
                }
                State::Chunk(chunk) => {
                    let (next, used) = step_chunk(*chunk, &bytes[i..]);
                    i += used;
                    self.state = match next {
                        Some(Some(chunk)) => State::Chunk(chunk),
                        Some(None) => self.after_request(),
                        None => State::Done,
                    };
                }
                State::Head => {
                    // Empty lines before a request line are skipped.
                    if self.head.is_empty() {
                        let blank = bytes[i..]
                            .iter()
                            .take_while(|&&b| b == b'\r' || b == b'\n')
                            .count();
                        i += blank;
                        if i == bytes.len() {
                            break;
                        }
                    }
                    // A line at a time, up to and including its line feed:
                    // one search and one copy instead of a push per byte.
                    let rest = &bytes[i..];
                    let line = match rest.iter().position(|&b| b == b'\n') {
                        Some(end) => &rest[..=end],
                        None => rest,
                    };
                    i += line.len();
                    // One byte past the limit is enough to know the head is
                    // not followed; the buffer is let go then.
                    let room = MAX_HEAD + 1 - self.head.len();
                    self.head.extend_from_slice(&line[..line.len().min(room)]);
                    if self.head.len() > MAX_HEAD {
                        self.head = Vec::new();
                        self.state = State::Done;
                        continue;
                    }
                    let ended = line.ends_with(b"\n")
                        && (self.head.ends_with(b"\n\n") || self.head.ends_with(b"\n\r\n"));
                    if !ended {
                        continue;
                    }
                    let (verdict, upgrade) = judge(&self.head);
                    self.head.clear();
                    self.upgrade = upgrade;
                    match verdict {
                        Verdict::Refuse(reason) => {
                            self.state = State::Done;
                            return Scanned::Refused(Refused { at: i - 1, reason });
                        }
                        Verdict::Length(0) => self.state = self.after_request(),
                        Verdict::Length(n) => self.state = State::Body(n),
                        Verdict::Chunked => {
                            self.state = State::Chunk(Chunk::Size {
                                size: 0,
                                digits: 0,
                                ext: false,
                            })
                        }
                        Verdict::StopFollowing => self.state = State::Done,
                    }
                }
            }
        }
        // A request that ended with the last byte: the next read waits.
        if self.awaiting_response() {
            return Scanned::Paused { at: i };
        }
        Scanned::Pass
    }
}

enum Verdict {
    Refuse(Reason),
    Length(u64),
    Chunked,
    StopFollowing,
}

/// The framing of a request head, and whether it asks for an upgrade.
fn judge(head: &[u8]) -> (Verdict, bool) {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    if request_line.starts_with(b"PRI * HTTP/2.0") {
        return (Verdict::StopFollowing, false);
    }
    let mut lengths = Vec::new();
    let mut codings = Vec::new();
    // A CONNECT asks to switch the connection to a tunnel, as an upgrade
    // does; refused, the connection stays HTTP/1.
    let mut upgrade = request_line.starts_with(b"CONNECT ");
    for line in lines.filter(|l| !l.is_empty()) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return (Verdict::StopFollowing, false);
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths.push(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings.push(value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    (framing(&lengths, &codings), upgrade)
}

fn framing(lengths: &[&[u8]], codings: &[&[u8]]) -> Verdict {
    if !lengths.is_empty() && !codings.is_empty() {
        return Verdict::Refuse("Content-Length together with Transfer-Encoding");
    }
    if lengths.len() > 1 {
        return Verdict::Refuse("repeated Content-Length");
    }
    if let Some(coding) = codings.first() {
        // Anything but one plain `chunked` is refused by the shield's
        // request limits; how hyper then ends the connection is its own.
        return if codings.len() == 1 && *coding == b"chunked" {
            Verdict::Chunked
        } else {
            Verdict::StopFollowing
        };
    }
    match lengths.first() {
        None => Verdict::Length(0),
        Some(value) => match parse_decimal(value) {
            Some(n) => Verdict::Length(n),
            None => Verdict::StopFollowing,
        },
    }
}

fn trim(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

fn parse_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, b| {
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// One step of the chunked body: the next state (`Some(None)`: the body
/// ended; `None`: not understood, stop following) and the bytes used.
fn step_chunk(chunk: Chunk, bytes: &[u8]) -> (Option<Option<Chunk>>, usize) {
    match chunk {
        Chunk::Data(left) => {
            let take = left.min(bytes.len() as u64);
            let next = if take == left {
                Chunk::DataEnd
            } else {
                Chunk::Data(left - take)
            };
            (Some(Some(next)), take as usize)
        }
        Chunk::DataEnd => match bytes[0] {
            b'\r' => (Some(Some(Chunk::DataEnd)), 1),
            b'\n' => (
                Some(Some(Chunk::Size {
                    size: 0,
                    digits: 0,
                    ext: false,
                })),
                1,
            ),
            _ => (None, 0),
        },
        Chunk::Size { size, digits, ext } => {
            let b = bytes[0];
            let next = match b {
                b'\n' if digits == 0 => return (None, 0),
                b'\n' if size == 0 => Chunk::Trailer { empty: true },
                b'\n' => Chunk::Data(size),
                b'\r' => Chunk::Size { size, digits, ext },
                _ if ext => Chunk::Size { size, digits, ext },
                b';' | b' ' | b'\t' => Chunk::Size {
                    size,
                    digits,
                    ext: true,
                },
                _ => {
                    let Some(d) = (b as char).to_digit(16) else {
                        return (None, 0);
                    };
                    // Leading zeros are allowed, however many (hyper
                    // takes them); only a size past u64 is not followed,
                    // and hyper refuses that too.
                    let Some(size) = size
                        .checked_mul(16)
                        .and_then(|size| size.checked_add(u64::from(d)))
                    else {
                        return (None, 0);
                    };
                    Chunk::Size {
                        size,
                        digits: digits.saturating_add(1),
                        ext,
                    }
                }
            };
            (Some(Some(next)), 1)
        }
        Chunk::Trailer { empty } => match bytes[0] {
            b'\n' if empty => (Some(None), 1),
            b'\n' => (Some(Some(Chunk::Trailer { empty: true })), 1),
            b'\r' => (Some(Some(Chunk::Trailer { empty })), 1),
            _ => (Some(Some(Chunk::Trailer { empty: false })), 1),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `input` split into reads of `step` bytes, answering each
    /// request that asked for an upgrade with `switched`; returns the
    /// offset in `input` of each refused head's end, and the reasons.
    fn scan_answering(input: &str, step: usize, switched: bool) -> (Vec<usize>, Vec<Reason>) {
        let mut scanner = FramingScanner::new();
        let (mut ends, mut reasons) = (Vec::new(), Vec::new());
        for (n, piece) in input.as_bytes().chunks(step).enumerate() {
            let mut offset = n * step;
            let mut rest = piece;
            loop {
                match scanner.scan(rest) {
                    Scanned::Pass => break,
                    Scanned::Refused(refused) => {
                        ends.push(offset + refused.at);
                        reasons.push(refused.reason);
                        break;
                    }
                    Scanned::Paused { at } => {
                        assert!(scanner.awaiting_response());
                        scanner.answered(switched);
                        rest = &rest[at..];
                        offset += at;
                        if rest.is_empty() {
                            break;
                        }
                    }
                }
            }
        }
        (ends, reasons)
    }

    fn scan(input: &str, step: usize) -> (Vec<usize>, Vec<Reason>) {
        scan_answering(input, step, false)
    }

    const POST: &str = "POST / HTTP/1.1\r\nHost: a\r\n";

    #[test]
    fn content_length_with_transfer_encoding_is_found_in_any_split() {
        let input = format!(
            "{POST}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        let end = input.find("\r\n\r\n").expect("end") + 3;
        for step in [1, 2, 7, input.len()] {
            let (ends, reasons) = scan(&input, step);
            assert_eq!(
                reasons,
                vec!["Content-Length together with Transfer-Encoding"],
                "step {step}"
            );
            assert_eq!(ends, vec![end], "step {step}");
        }
    }

    /// Heads are followed a line at a time: every split of the lines, of
    /// the blank lines before a request line and of a second request must
    /// find the same end.
    #[test]
    fn blank_lines_before_a_request_and_any_split_find_the_same_head_end() {
        let bad = "content-length: 1\r\nContent-Length: 1\r\n\r\nx";
        let input = format!("\r\n\n{POST}Content-Length: 0\r\n\r\n\r\n{POST}{bad}");
        let end = input.rfind("\r\n\r\n").expect("end") + 3;
        for step in 1..=input.len() {
            let (ends, reasons) = scan(&input, step);
            assert_eq!(reasons, vec!["repeated Content-Length"], "step {step}");
            assert_eq!(ends, vec![end], "step {step}");
        }
    }

    /// A head of the limit's length is followed; one byte more is not,
    /// however it arrives (hyper refuses it on its own), and the buffer
    /// holds no more than the limit and a byte meanwhile.
    #[test]
    fn a_head_past_the_limit_is_not_followed() {
        let bad = "Content-Length: 1\r\nContent-Length: 1\r\n\r\n";
        let head_of = |len: usize| {
            let filler = "a".repeat(len - POST.len() - "X-Filler: \r\n".len() - bad.len());
            format!("{POST}X-Filler: {filler}\r\n{bad}")
        };
        let at_limit = head_of(MAX_HEAD);
        assert_eq!(at_limit.len(), MAX_HEAD);
        for step in [1, 4096, MAX_HEAD] {
            let (ends, reasons) = scan(&at_limit, step);
            assert_eq!(reasons, vec!["repeated Content-Length"], "step {step}");
            assert_eq!(ends, vec![MAX_HEAD - 1], "step {step}");
        }
        let past = head_of(MAX_HEAD + 1);
        for step in [1, 4096, past.len()] {
            let mut scanner = FramingScanner::new();
            for piece in past.as_bytes().chunks(step) {
                assert_eq!(scanner.scan(piece), Scanned::Pass, "step {step}");
                assert!(scanner.head.len() <= MAX_HEAD + 1, "step {step}");
            }
            assert!(scanner.is_done(), "step {step}");
            assert_eq!(
                scanner.head.capacity(),
                0,
                "step {step}: the buffer is kept"
            );
        }
    }

    #[test]
    fn repeated_lengths_are_found_even_when_equal_and_in_any_case() {
        let input = format!("{POST}content-length: 3\r\nCONTENT-LENGTH: 3\r\n\r\nabc");
        assert_eq!(scan(&input, 5).1, vec!["repeated Content-Length"]);
        let bare_lf = format!("{POST}Transfer-Encoding: chunked\nContent-Length: 3\n\n");
        assert_eq!(
            scan(&bare_lf, 3).1,
            vec!["Content-Length together with Transfer-Encoding"]
        );
    }

    #[test]
    fn bodies_are_skipped_so_their_bytes_never_count_as_heads() {
        // A body that looks like a bad head, framed by length and chunked.
        let fake = "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        let by_length = format!(
            "{POST}Content-Length: {}\r\n\r\n{fake}{POST}Content-Length: 0\r\n\r\n",
            fake.len()
        );
        let chunked = format!(
            "{POST}Transfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{fake}\r\n0\r\nX-Trailer: 1\r\n\r\n{POST}\r\n",
            fake.len()
        );
        for input in [by_length, chunked] {
            for step in [1, 3, input.len()] {
                let (_, reasons) = scan(&input, step);
                assert!(reasons.is_empty(), "{input:?} step {step}: {reasons:?}");
            }
        }
        // A bad head after a chunked body is still found.
        let after = format!(
            "{POST}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
             {POST}Content-Length: 1\r\nContent-Length: 1\r\n\r\nx"
        );
        assert_eq!(scan(&after, 4).1, vec!["repeated Content-Length"]);
    }

    #[test]
    fn plain_requests_http2_and_switched_protocols_pass() {
        for input in [
            format!("{POST}Content-Length: 3\r\n\r\nabc"),
            "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(),
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned(),
        ] {
            let (_, reasons) = scan(&input, 2);
            assert!(reasons.is_empty(), "{input:?}");
        }
        // After a 101 the bytes are another protocol's, whatever they
        // look like.
        let switched = "GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\
                        Content-Length: 1\r\nContent-Length: 1\r\n\r\n";
        for step in [1, 5, switched.len()] {
            assert!(
                scan_answering(switched, step, true).1.is_empty(),
                "step {step}"
            );
        }
    }

    #[test]
    fn a_refused_upgrade_does_not_switch_the_rules_off() {
        // The upgrade is answered with a normal response: the connection
        // stays HTTP/1 and the next head is judged as any other.
        let smuggled = format!("{POST}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        for upgrade in [
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n".to_owned(),
            format!("{POST}Upgrade: websocket\r\nContent-Length: 4\r\n\r\nbody"),
            format!("{POST}upgrade: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\n"),
        ] {
            let input = format!("{upgrade}{smuggled}");
            let end = input.len() - 1;
            for step in [1, 3, upgrade.len(), input.len()] {
                let (ends, reasons) = scan(&input, step);
                assert_eq!(
                    reasons,
                    vec!["Content-Length together with Transfer-Encoding"],
                    "{upgrade:?} step {step}"
                );
                assert_eq!(ends, vec![end], "{upgrade:?} step {step}");
            }
        }
    }

    #[test]
    fn a_refused_connect_does_not_switch_the_rules_off() {
        let input = format!(
            "CONNECT a:1 HTTP/1.1\r\nHost: a\r\n\r\n\
             {POST}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        for step in [1, 4, input.len()] {
            assert_eq!(
                scan(&input, step).1,
                vec!["Content-Length together with Transfer-Encoding"],
                "step {step}"
            );
        }
    }

    #[test]
    fn chunk_sizes_with_many_leading_zeros_are_followed() {
        let input = format!(
            "{POST}Transfer-Encoding: chunked\r\n\r\n\
             00000000000000000000001\r\nx\r\n0000\r\n\r\n\
             {POST}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        for step in [1, 5, input.len()] {
            assert_eq!(
                scan(&input, step).1,
                vec!["Content-Length together with Transfer-Encoding"],
                "step {step}"
            );
        }
    }

    #[test]
    fn the_scanner_pauses_right_after_a_request_that_asks_for_an_upgrade() {
        let upgrade = format!("{POST}Upgrade: websocket\r\nContent-Length: 2\r\n\r\nhi");
        let input = format!("{upgrade}GET /next HTTP/1.1\r\n\r\n");
        let mut scanner = FramingScanner::new();
        assert_eq!(
            scanner.scan(input.as_bytes()),
            Scanned::Paused { at: upgrade.len() }
        );
        assert!(scanner.awaiting_response());
        // Nothing is scanned while it waits.
        assert_eq!(scanner.scan(b"xyz"), Scanned::Paused { at: 0 });
        scanner.answered(false);
        assert!(!scanner.awaiting_response());
        assert_eq!(
            scanner.scan(&input.as_bytes()[upgrade.len()..]),
            Scanned::Pass
        );
        // Ending exactly at the end of a read pauses too.
        let mut scanner = FramingScanner::new();
        assert_eq!(
            scanner.scan(upgrade.as_bytes()),
            Scanned::Paused { at: upgrade.len() }
        );
        scanner.answered(true);
        assert!(scanner.is_done());
    }
}
