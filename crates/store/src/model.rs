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
int_id!(CustomerId);

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

    /// Reads a role name from a request: `None` for anything else.
    pub fn from_name(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "developer" => Some(Role::Developer),
            "viewer" => Some(Role::Viewer),
            _ => None,
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
    /// `None` only for platform admins.
    pub customer: Option<CustomerId>,
    pub display_name: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub password_hash: String,
    pub role: Role,
    /// The tenant the user belongs to; `None` for platform admins.
    pub customer: Option<CustomerId>,
    pub display_name: Option<String>,
    /// A disabled user cannot log in, and its tokens stop working.
    pub disabled: bool,
    /// Base32 TOTP secret once the second factor is confirmed.
    pub totp_secret: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// A tenant: the owner of sites and the home of users.
#[derive(Debug, Clone, Serialize)]
pub struct Customer {
    pub id: CustomerId,
    pub name: String,
    pub created_at: i64,
}

/// A partial update of a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub email: Option<String>,
    pub password_hash: Option<String>,
    pub role: Option<Role>,
    pub customer: Option<Option<CustomerId>>,
    pub display_name: Option<Option<String>>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// A bearer-token login (CLI, scripts): access JWT plus refresh token.
    Token,
    /// A browser login held in an HttpOnly cookie.
    Browser,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Token => "token",
            SessionKind::Browser => "browser",
        }
    }

    pub(crate) fn parse(s: &str) -> SessionKind {
        match s {
            "browser" => SessionKind::Browser,
            _ => SessionKind::Token,
        }
    }
}

/// One login of a user.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    /// Random and not secret: it names the session in tokens and lists.
    pub id: String,
    pub user_id: UserId,
    pub kind: SessionKind,
    /// Hex SHA-256 of a browser session's cookie; never the cookie.
    #[serde(skip)]
    pub secret_hash: Option<String>,
    pub created_at: i64,
    pub last_seen_at: i64,
    /// Absolute end, Unix seconds.
    pub expires_at: i64,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A stored API key. The key itself exists only once, in the answer to
/// its creation; this holds its hash.
#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    /// Public id, shown in lists and used to revoke.
    pub id: String,
    pub key_hash: String,
    pub user_id: UserId,
    pub name: String,
    /// Permission names.
    pub permissions: Vec<String>,
    /// Site domains the key is limited to; `None` for all of the owner's.
    pub sites: Option<Vec<String>>,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// An Ed25519 key that signs access tokens.
#[derive(Debug, Clone)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// The PKCS#8 document, sealed (purpose `signing-key`, name = kid).
    pub private_key: crate::Sealed,
    /// The raw 32-byte public key.
    pub public_key: Vec<u8>,
    pub created_at: i64,
    pub active: bool,
    /// When the key stops verifying; `None` while active.
    pub retired_at: Option<i64>,
}

/// What one more failed login did to its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailures {
    /// Failures inside the current window, this one included.
    pub failures: i64,
    /// Set when the subject is locked, Unix seconds.
    pub locked_until: Option<i64>,
}

/// Stored tokens are refresh tokens only: access tokens are signed JWTs
/// and are checked without the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Refresh,
}

impl TokenKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
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
    /// The tenant that owns the site; `None` for platform sites.
    pub customer: Option<CustomerId>,
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
    pub customer: Option<CustomerId>,
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
