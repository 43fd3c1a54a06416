//! The one response body type the edge speaks, and small constructors.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response the edge writes has this body: full, empty, a file
/// stream or an upstream's streaming body.
pub type EdgeBody = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> EdgeBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> EdgeBody {
    Empty::new().map_err(|never| match never {}).boxed()
}
