//! Plain values that cross the [`crate::Store`] boundary.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! int_id {
    ($name:ident) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

int_id!(UserId);
int_id!(SiteId);

/// A release id: a UUIDv7 in text form, so ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReleaseId(pub String);

impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Developer,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
        }
    }

    pub(crate) fn parse(s: &str) -> Role {
        match s {
            "admin" => Role::Admin,
            "developer" => Role::Developer,
            // The schema's CHECK allows nothing else; the least privilege is
            // the safe reading of anything unexpected.
            _ => Role::Viewer,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    /// An Argon2id PHC string, never a password.
    pub password_hash: String,
    pub role: Role,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub password_hash: String,
    pub role: Role,
    /// Unix seconds.
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Access,
    Refresh,
}

impl TokenKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TokenKind::Access => "access",
            TokenKind::Refresh => "refresh",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// Hex SHA-256 of the token.
    pub hash: String,
    pub user_id: UserId,
    pub kind: TokenKind,
    /// All tokens issued from one login share a family.
    pub family: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// True iff this refresh token was already exchanged.
    pub used: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteKind {
    /// Files from the active release, served by the edge.
    Static,
    /// Requests forwarded to an approved upstream URL.
    Proxy,
    /// An app process (spinlet) run from the active release.
    Process,
    /// Requests spread over several approved upstreams.
    Balancer,
}

impl SiteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteKind::Static => "static",
            SiteKind::Proxy => "proxy",
            SiteKind::Process => "process",
            SiteKind::Balancer => "balancer",
        }
    }

    pub(crate) fn parse(s: &str) -> SiteKind {
        match s {
            "proxy" => SiteKind::Proxy,
            "process" => SiteKind::Process,
            "balancer" => SiteKind::Balancer,
            _ => SiteKind::Static,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewSite {
    /// Already normalised and validated by the caller.
    pub domain: String,
    pub kind: SiteKind,
    /// `None` when the server itself created the site (the demo).
    pub owner: Option<UserId>,
    pub upstream: Option<String>,
    pub balancer: Option<BalancerConfig>,
    pub spa: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Site {
    pub id: SiteId,
    pub domain: String,
    pub kind: SiteKind,
    pub owner: Option<UserId>,
    pub upstream: Option<String>,
    pub balancer: Option<BalancerConfig>,
    pub spa: bool,
    pub active_release: Option<ReleaseId>,
    pub created_at: i64,
}

/// How a balancer site picks an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    RoundRobin,
    LeastConn,
}

/// A balancer site's settings. Stored as JSON; checked by the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerConfig {
    pub upstreams: Vec<String>,
    pub strategy: Strategy,
    /// Path probed on each upstream; `None` probes by connecting only.
    pub health_path: Option<String>,
    pub health_interval_secs: u64,
}

/// A partial update of a site; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct SiteChange {
    pub upstream: Option<String>,
    pub balancer: Option<BalancerConfig>,
    pub spa: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Release {
    pub id: ReleaseId,
    pub site_id: SiteId,
    /// Hex SHA-256 of the uploaded bundle as received.
    pub sha256: String,
    /// Unpacked size in bytes.
    pub size_bytes: i64,
    pub file_count: i64,
    /// `None` when the server itself deployed it (the demo).
    pub created_by: Option<UserId>,
    pub created_at: i64,
}

/// One row of the route table: what the edge serves for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRecord {
    pub domain: String,
    pub site_id: SiteId,
    pub kind: SiteKind,
    pub release_id: Option<ReleaseId>,
    pub upstream: Option<String>,
    pub balancer: Option<BalancerConfig>,
    pub spa: bool,
}
