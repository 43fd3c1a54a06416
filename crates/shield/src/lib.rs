//! Edge protection for SpinForge: request limits, rate limits, the WAF and
//! the ban table, applied by the edge before a request is routed.
#![forbid(unsafe_code)]

pub mod waf;
