//! The part of the store that privacy needs: consent records and their
//! history, and erasing a user's personal data in one transaction. What
//! counts as personal data, and the audit log's keys, are decided by the
//! caller; this trait only changes rows.

use crate::*;
use async_trait::async_trait;
use serde::Serialize;

/// What a consent is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    Necessary,
    Functional,
    Analytics,
    Marketing,
}

impl Purpose {
    pub const ALL: [Purpose; 4] = [
        Purpose::Necessary,
        Purpose::Functional,
        Purpose::Analytics,
        Purpose::Marketing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Necessary => "necessary",
            Purpose::Functional => "functional",
            Purpose::Analytics => "analytics",
            Purpose::Marketing => "marketing",
        }
    }

    /// Parses one of the four purpose names, exactly.
    pub fn parse(text: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

/// One act of giving (`granted`) or withdrawing a consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRecord {
    pub id: i64,
    pub user_id: UserId,
    pub purpose: Purpose,
    pub granted: bool,
    /// Seconds since the Unix epoch.
    pub time: i64,
    /// Anonymised by the caller before it gets here.
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

/// What an erasure should remove besides the user's own rows.
#[derive(Debug, Clone)]
pub struct Erasure {
    pub user: UserId,
    /// Sites deleted with the user (with their releases and routes).
    pub sites: Vec<SiteId>,
    /// Rows of `audit_pii_keys` to destroy.
    pub audit_key_subjects: Vec<String>,
}

/// What an erasure removed.
#[derive(Debug, Clone)]
pub struct Erased {
    pub user: User,
    pub sites: Vec<Site>,
    pub consents: u64,
    pub sessions: u64,
    pub api_keys: u64,
    pub audit_keys: u64,
}

#[async_trait]
pub trait PrivacyStore: Send + Sync + 'static {
    /// Appends a consent record; `id` of the argument is ignored.
    async fn record_consent(&self, consent: ConsentRecord) -> Result<ConsentRecord>;
    /// Every consent record of a user, oldest first.
    async fn consent_history(&self, user: UserId) -> Result<Vec<ConsentRecord>>;
    /// The newest record of a user for `purpose`, if any.
    async fn current_consent(
        &self,
        user: UserId,
        purpose: Purpose,
    ) -> Result<Option<ConsentRecord>>;
    /// Deletes the user with everything that names it (sessions, tokens,
    /// API keys, consents, failed-login counters under its address), the
    /// listed sites and audit keys, in one transaction with
    /// `secure_delete` on, so freed pages hold no copy. Sites not listed
    /// lose their owner; releases lose their author.
    async fn erase_user(&self, erasure: Erasure) -> Result<Erased>;
    /// Copies the write-ahead log into the database file and empties it,
    /// so no page image of erased rows stays in it. False if a reader
    /// kept part of it from being emptied.
    async fn truncate_wal(&self) -> Result<bool>;
}
