//! The platform's durable state: users, tokens, sites, releases and routes.
//!
//! Everything else talks to storage through the [`Store`] trait, so the
//! embedded SQLite backend here and a PostgreSQL backend later are
//! interchangeable. This crate owns the schema and its migrations; it does
//! not know about HTTP, files on disk or the edge.
#![forbid(unsafe_code)]

mod certs;
mod identity;
mod model;
mod privacy;
mod sealed;
mod sqlite;
mod sqlite_identity;
mod sqlite_privacy;
mod upstream_tls;

pub use certs::{AcmeBackoff, CertRecord, CertSource, CertStore, HttpsMode, SiteTls};
pub use identity::IdentityStore;
pub use model::*;
pub use privacy::{ConsentRecord, Erased, Erasure, PrivacyStore, Purpose};
pub use sealed::Sealed;
pub use sqlite::{SqliteStore, DB_FILE};
pub use upstream_tls::{SiteUpstreamTls, UpstreamClientCert, UpstreamTlsStore};

use async_trait::async_trait;

/// What can go wrong when reading or writing state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The row the caller named does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken; the string names the conflicting field.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// Our side: the database itself failed.
    #[error("database error: {0}")]
    Backend(#[from] sqlx::Error),
    /// Our side: a stored value does not decode.
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    /// Our side: migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The single interface to durable state.
///
/// Every method that changes more than one row does so in one transaction,
/// so a crash at any moment leaves either the old or the new state.
#[async_trait]
pub trait Store:
    IdentityStore + PrivacyStore + CertStore + UpstreamTlsStore + Send + Sync + 'static
{
    /// Number of users; zero means the platform is not set up yet.
    async fn count_users(&self) -> Result<i64>;
    /// Creates a user; [`StoreError::Conflict`] if the email is taken.
    async fn create_user(&self, user: NewUser) -> Result<User>;
    async fn user_by_email(&self, email: &str) -> Result<Option<User>>;
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>>;

    /// Stores a token by its hash.
    async fn insert_token(&self, token: TokenRecord) -> Result<()>;
    /// Looks up a token of the given kind that has not expired at `now`,
    /// used or not.
    async fn find_token(
        &self,
        hash: &str,
        kind: TokenKind,
        now: i64,
    ) -> Result<Option<TokenRecord>>;
    /// Replaces a refresh token with a new one, in one transaction, marking
    /// the old one used. Returns [`StoreError::NotFound`] if `old_refresh`
    /// is no longer valid (already used, expired or revoked).
    async fn rotate_refresh(&self, old_refresh: &str, now: i64, refresh: TokenRecord)
        -> Result<()>;
    /// Ends a login session: its row and every token of its family.
    async fn revoke_family(&self, family: &str) -> Result<()>;

    /// Creates a site; [`StoreError::Conflict`] if the domain is taken. A
    /// proxy site gets its route at once; a static site once it has a
    /// release.
    async fn create_site(&self, site: NewSite) -> Result<Site>;
    async fn site_by_domain(&self, domain: &str) -> Result<Option<Site>>;
    async fn list_sites(&self) -> Result<Vec<Site>>;
    /// Changes a site's settings and its route together.
    async fn update_site(&self, domain: &str, change: SiteChange) -> Result<Site>;
    /// Deletes a site with its releases and route. Returns the deleted site.
    async fn delete_site(&self, domain: &str) -> Result<Site>;

    /// Records a release and makes it the active one, with its route, in one
    /// transaction.
    async fn insert_release(&self, release: &Release) -> Result<()>;
    /// Makes an existing release of the site active again (rollback).
    async fn activate_release(&self, site: SiteId, release: &ReleaseId) -> Result<Site>;
    /// A site's releases, newest first.
    async fn list_releases(&self, site: SiteId) -> Result<Vec<Release>>;
    /// Every release id the store knows, for sweeping stray folders.
    async fn all_release_ids(&self) -> Result<Vec<(SiteId, ReleaseId)>>;
    /// Deletes release rows that are not active.
    async fn delete_releases(&self, site: SiteId, ids: &[ReleaseId]) -> Result<()>;

    /// Everything the edge serves.
    async fn list_routes(&self) -> Result<Vec<RouteRecord>>;
    /// What the edge serves for one domain, if anything.
    async fn route(&self, domain: &str) -> Result<Option<RouteRecord>>;

    /// Runs the backend's own consistency check; `Ok(())` iff it passes.
    async fn integrity_check(&self) -> Result<(), String>;
}
