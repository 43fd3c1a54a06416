//! Request limits that need only the request head: URI length, header
//! count and size, the declared body size, and the framing rules that
//! stop request smuggling (`Content-Length` next to `Transfer-Encoding`,
//! repeated or malformed `Content-Length`, any coding but a plain
//! `chunked`).
//!
//! hyper already refuses much of this at parse time (bad header names,
//! `Content-Length: +3`, differing duplicate lengths); checking again here
//! costs a few comparisons and keeps the rules true for HTTP/2 too, and
//! for whatever parser sits in front of us next year. A body that grows
//! past the cap while streaming is stopped by the edge's body wrapper.
//!
//! Over HTTP/1, hyper removes a `Content-Length` sent next to
//! `Transfer-Encoding` and folds identical repeated lengths before we see
//! the head; [`crate::framing`] reads the raw head first and makes those
//! shapes a 400 as well.

use crate::Refusal;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Request, Version};

/// Limits on one request. Defaults are in [`crate::config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest request body, in bytes.
    pub max_body_bytes: u64,
    /// Most header fields (each repeat counts).
    pub max_headers: usize,
    /// Largest sum of header name and value lengths, in bytes.
    pub max_header_bytes: usize,
    /// Longest request target (path and query), in bytes.
    pub max_uri_bytes: usize,
}

impl RequestLimits {
    /// Checks the head of `req` against the limits, with `max_body_bytes`
    /// possibly overridden for the site.
    pub fn check<B>(&self, req: &Request<B>, max_body_bytes: u64) -> Result<(), Refusal> {
        let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        if uri_len > self.max_uri_bytes {
            return Err(Refusal::UriTooLong);
        }

        let headers = req.headers();
        if headers.len() > self.max_headers {
            return Err(Refusal::HeadersTooLarge);
        }
        let mut size = 0usize;
        for (name, value) in headers {
            size += name.as_str().len() + value.len();
        }
        if size > self.max_header_bytes {
            return Err(Refusal::HeadersTooLarge);
        }

        let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
        let length = match (lengths.next(), lengths.next()) {
            (None, _) => None,
            (Some(_), Some(_)) => return Err(Refusal::BadFraming("repeated Content-Length")),
            (Some(value), None) => Some(
                parse_length(value.as_bytes())
                    .ok_or(Refusal::BadFraming("malformed Content-Length"))?,
            ),
        };

        let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
        if let Some(coding) = codings.next() {
            if length.is_some() {
                return Err(Refusal::BadFraming(
                    "Content-Length together with Transfer-Encoding",
                ));
            }
            // Exactly `chunked`: every client sends it so, and a variant in
            // case or spelling is what smuggling probes are made of.
            let only_chunked = codings.next().is_none() && coding.as_bytes() == b"chunked";
            if !only_chunked || req.version() != Version::HTTP_11 {
                return Err(Refusal::BadFraming("Transfer-Encoding other than chunked"));
            }
        }

        if length.is_some_and(|n| n > max_body_bytes) {
            return Err(Refusal::BodyTooLarge);
        }
        Ok(())
    }
}

/// Digits only: no sign, no spaces, no list; at most 19 of them.
fn parse_length(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, b| {
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn limits() -> RequestLimits {
        RequestLimits {
            max_body_bytes: 100,
            max_headers: 5,
            max_header_bytes: 200,
            max_uri_bytes: 50,
        }
    }

    fn request(uri: &str, headers: &[(&'static str, &str)]) -> Request<()> {
        let mut req = Request::builder().uri(uri).body(()).expect("request");
        for (name, value) in headers {
            req.headers_mut()
                .append(*name, HeaderValue::from_str(value).expect("value"));
        }
        req
    }

    fn check(req: &Request<()>) -> Result<(), Refusal> {
        limits().check(req, 100)
    }

    #[test]
    fn the_uri_limit_admits_its_length_and_refuses_one_more() {
        let at = format!("/{}", "a".repeat(49));
        assert_eq!(check(&request(&at, &[])), Ok(()));
        let over = format!("/{}", "a".repeat(50));
        assert_eq!(check(&request(&over, &[])), Err(Refusal::UriTooLong));
    }

    #[test]
    fn the_header_count_limit_admits_its_count_and_refuses_one_more() {
        let five = [("x-a", "1"); 5];
        assert_eq!(check(&request("/", &five)), Ok(()));
        let six = [("x-a", "1"); 6];
        assert_eq!(check(&request("/", &six)), Err(Refusal::HeadersTooLarge));
    }

    #[test]
    fn the_header_size_limit_admits_its_size_and_refuses_one_more_byte() {
        // "x-a" is 3 bytes: 3 + 197 = 200.
        let at = "v".repeat(197);
        assert_eq!(check(&request("/", &[("x-a", &at)])), Ok(()));
        let over = "v".repeat(198);
        assert_eq!(
            check(&request("/", &[("x-a", &over)])),
            Err(Refusal::HeadersTooLarge)
        );
    }

    #[test]
    fn the_declared_body_size_is_capped_with_a_site_override() {
        assert_eq!(check(&request("/", &[("content-length", "100")])), Ok(()));
        assert_eq!(
            check(&request("/", &[("content-length", "101")])),
            Err(Refusal::BodyTooLarge)
        );
        let req = request("/", &[("content-length", "101")]);
        assert_eq!(limits().check(&req, 101), Ok(()));
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for headers in [
            &[("content-length", "3"), ("transfer-encoding", "chunked")][..],
            &[("content-length", "3"), ("content-length", "3")][..],
            &[("content-length", "+3")][..],
            &[("content-length", "3, 3")][..],
            &[("content-length", " 3")][..],
            &[("content-length", "")][..],
            &[("content-length", "99999999999999999999")][..],
            &[("transfer-encoding", "gzip, chunked")][..],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ][..],
            &[("transfer-encoding", "xchunked")][..],
            &[("transfer-encoding", "identity")][..],
            &[("transfer-encoding", "Chunked")][..],
            &[("transfer-encoding", "chunked ")][..],
        ] {
            let refusal = check(&request("/", headers)).expect_err("must be refused");
            assert!(matches!(refusal, Refusal::BadFraming(_)), "{headers:?}");
        }
        let ok = [("transfer-encoding", "chunked")];
        assert_eq!(check(&request("/", &ok)), Ok(()));
    }

    #[test]
    fn chunked_is_refused_outside_http_1_1() {
        let mut req = request("/", &[("transfer-encoding", "chunked")]);
        *req.version_mut() = Version::HTTP_10;
        assert!(matches!(check(&req), Err(Refusal::BadFraming(_))));
    }
}
