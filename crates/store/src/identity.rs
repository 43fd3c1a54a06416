//! The part of the store that identity needs: customers, users, sessions,
//! API keys, signing keys and failed-login counters. Kept apart from the
//! site and release methods of [`crate::Store`], which requires it.

use crate::*;
use async_trait::async_trait;

#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// Returns the customer with this name, creating it on first use.
    async fn customer_by_name_or_create(&self, name: &str, now: i64) -> Result<Customer>;
    async fn customer_by_id(&self, id: CustomerId) -> Result<Option<Customer>>;

    /// Every user, oldest first.
    async fn list_users(&self) -> Result<Vec<User>>;
    /// Changes a user; [`StoreError::Conflict`] if the new email is taken.
    /// Disabling a user or changing its role or customer also ends every
    /// session of the user, in the same transaction.
    async fn update_user(&self, id: UserId, change: UserChange) -> Result<User>;
    /// Deletes a user; sessions, refresh tokens and API keys go with it.
    async fn delete_user(&self, id: UserId) -> Result<User>;
    /// Stores a confirmed TOTP secret with its recovery code hashes, or
    /// clears both with `None`.
    async fn set_totp(&self, id: UserId, totp: Option<(String, Vec<String>)>) -> Result<()>;
    /// Stores or clears a TOTP secret that waits for its first code.
    async fn set_totp_pending(&self, id: UserId, secret: Option<String>) -> Result<()>;
    async fn totp_pending(&self, id: UserId) -> Result<Option<String>>;
    /// Moves the last accepted TOTP time step forward. Returns false if
    /// `step` is not newer than the stored one (a replayed code).
    async fn advance_totp_step(&self, id: UserId, step: i64) -> Result<bool>;
    /// Removes one recovery code hash; false if it was not there (unknown
    /// or already used).
    async fn take_recovery_code(&self, id: UserId, code_hash: &str) -> Result<bool>;

    /// Creates a session and, for token sessions, its first refresh token,
    /// in one transaction.
    async fn create_session(&self, session: Session, refresh: Option<TokenRecord>) -> Result<()>;
    /// The live session with this id and owner at `now`, with its user.
    async fn session(&self, id: &str, user: UserId, now: i64) -> Result<Option<(Session, User)>>;
    /// The live browser session whose cookie hashes to `secret_hash`.
    async fn browser_session(&self, secret_hash: &str, now: i64)
        -> Result<Option<(Session, User)>>;
    /// Records activity on a session (idle timeout).
    async fn touch_session(&self, id: &str, now: i64) -> Result<()>;
    async fn list_sessions(&self, user: UserId, now: i64) -> Result<Vec<Session>>;
    /// Ends one session and its refresh tokens. Returns false if there was
    /// no such session.
    async fn revoke_session(&self, id: &str) -> Result<bool>;
    /// Ends every session of a user. Returns how many there were.
    async fn revoke_user_sessions(&self, user: UserId) -> Result<u64>;

    async fn insert_api_key(&self, key: ApiKeyRecord) -> Result<()>;
    /// The API key with this hash, revoked or expired or not.
    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>>;
    async fn api_key_by_id(&self, id: &str) -> Result<Option<ApiKeyRecord>>;
    /// A user's keys, or every key with `None`; newest first.
    async fn list_api_keys(&self, user: Option<UserId>) -> Result<Vec<ApiKeyRecord>>;
    /// Marks a key revoked; false if it was unknown or already revoked.
    async fn revoke_api_key(&self, id: &str, now: i64) -> Result<bool>;
    /// Revokes every key of a user. Returns how many.
    async fn revoke_user_api_keys(&self, user: UserId, now: i64) -> Result<u64>;
    async fn touch_api_key(&self, id: &str, now: i64) -> Result<()>;

    /// Signing keys that still verify at `now`, the active one first.
    async fn signing_keys(&self, now: i64) -> Result<Vec<SigningKeyRecord>>;
    /// Makes `key` the only active key; the previous active keys retire at
    /// `retire_at`. One transaction.
    async fn rotate_signing_key(&self, key: SigningKeyRecord, retire_at: i64) -> Result<()>;

    /// Counts one login attempt of `subject`, before its password is
    /// checked, so that parallel guesses cannot outrun the count. Attempts
    /// older than `window` seconds start a new count; reaching `max` locks
    /// the subject until `now + lock`. A success clears the count again.
    async fn record_login_failure(
        &self,
        subject: &str,
        now: i64,
        window: i64,
        max: i64,
        lock: i64,
    ) -> Result<LoginFailures>;
    /// The current failures of a subject (zero when its window has passed).
    async fn login_failures(&self, subject: &str, now: i64, window: i64) -> Result<LoginFailures>;
    /// Forgets the attempts of a subject after a successful login, unless
    /// a lock is in force at `now` (set by attempts running alongside).
    async fn clear_login_failures(&self, subject: &str, now: i64) -> Result<()>;
    /// Gives back one attempt counted by [`Self::record_login_failure`]
    /// (a login that succeeded), never below zero and never while a lock
    /// is in force at `now`.
    async fn forgive_login_attempt(&self, subject: &str, now: i64) -> Result<()>;
    /// Lifts a lock at once (an admin's unlock), with the locks of every
    /// `subject` + U+001F + network key.
    async fn unlock_login(&self, subject: &str) -> Result<()>;
}
