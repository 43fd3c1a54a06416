//! Shield: what runs on every edge request before routing, and what the
//! hub reuses for its own endpoints. It owns the client-IP model, request
//! limits, rate limits, security headers, behaviour detection, the ban
//! table and emergency mode. The ordered list of request stages lives in
//! [`pipeline`]; the web-application firewall is [`waf`]. It knows nothing
//! about routes, files or upstreams.
#![forbid(unsafe_code)]

pub mod bans;
pub mod budget;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod conn;
pub mod detect;
pub mod error;
pub mod firewall;
pub mod framing;
pub mod headers;
pub mod keyed;
pub mod limits;
pub mod pipeline;
pub mod rate;
pub mod waf;

pub use client_ip::{ClientIp, ClientIpResolver, IpKey};
pub use clock::ShieldClock;
pub use config::ShieldConfig;
pub use error::{Refusal, ShieldError};
pub use headers::Origin;
pub use keyed::{bearer_api_key, bearer_credential, KeyVerifier, RateKey};
pub use pipeline::{Admitted, AuthReceipt, Shield, SitePolicy, Stage, REQUEST_STAGES};
pub use rate::RateLimited;
