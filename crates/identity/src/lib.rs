//! Who is calling, and what they may do: passwords, logins with lockout,
//! sessions (bearer tokens and browser cookies), EdDSA access tokens,
//! refresh tokens, API keys, and the permission model in [`permission`].
//!
//! The hub sees only [`Identity`] and [`Principal`]; it never reads tokens
//! or hashes itself. Audit events for authentication decisions are written
//! here, where the decision is made.
#![forbid(unsafe_code)]

mod apikey;
pub mod jwt;
pub mod lockout;
pub mod oidc;
mod password;
pub mod permission;
mod second_factor;
mod throttle;
pub mod totp;

pub use apikey::{ApiKeyGrant, NewApiKey, API_KEY_PREFIX};
pub use password::{hash_password, verify_password, PasswordPolicy};
pub use permission::{
    authorize, role_permissions, AuthMethod, Denied, Permission, PermissionSet, Principal, Resource,
};
pub use second_factor::{SecondFactor, TotpEnrolment};

use arc_swap::ArcSwap;
use base64::Engine;
use rand::RngCore;
use secrets::{KeyId, KeyKind};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::SigningKeyRecord;
use store::{
    CustomerId, NewUser, Role, Session, SessionKind, Store, StoreError, TokenKind, TokenRecord,
    User, UserChange, UserId,
};
use subtle::ConstantTimeEq;

/// Why an identity operation failed, and whose fault it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The client: wrong email or password. Deliberately says which of the
    /// two it was in neither message nor timing.
    #[error("invalid email or password")]
    BadCredentials,
    /// The client: too many failed logins for this account or address.
    #[error("too many failed logins; try again in {retry_after} seconds")]
    Locked { retry_after: u64 },
    /// The client: a missing, unknown, expired or revoked token.
    #[error("invalid or expired token")]
    BadToken,
    /// The client: the input breaks a rule; names the field.
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    /// The client: the email already belongs to a user.
    #[error("a user with this email already exists")]
    EmailTaken,
    /// The client: the password was right, but the account has a second
    /// factor and none was given.
    #[error("this account needs a TOTP code or a recovery code")]
    SecondFactorRequired,
    /// The client: the TOTP or recovery code was wrong or already used.
    #[error("invalid or already used second-factor code")]
    SecondFactorFailed,
    /// The client asked for rights it does not hold itself.
    #[error("{0}")]
    Escalation(String),
    /// The client named a user, key or session that does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Our side.
    #[error("internal error: {0}")]
    Internal(String),
    /// The operator's setup or stored data: a token signing key cannot be
    /// sealed or opened (wrong master key, altered row, key service
    /// down). Names the key, never its material.
    #[error("{0}")]
    SigningKey(#[from] secrets::SecretsError),
}

impl From<StoreError> for IdentityError {
    fn from(e: StoreError) -> IdentityError {
        match e {
            StoreError::Conflict("email") => IdentityError::EmailTaken,
            StoreError::NotFound => IdentityError::NotFound("user"),
            other => IdentityError::Internal(other.to_string()),
        }
    }
}

/// A freshly issued pair. The token strings exist only here, on their way
/// to the client; the store keeps the refresh token's hash.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// A new browser session: the cookie value (secret) and its CSRF token.
pub struct BrowserLogin {
    pub cookie: String,
    pub csrf_token: String,
    pub session: Session,
}

/// Where a request came from, for throttling and the audit trail.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    /// Already cut to a sane length by [`ClientInfo::new`].
    pub user_agent: Option<String>,
    /// The `sf_device` cookie, if the request carried one (see
    /// [`lockout`]).
    pub device: Option<lockout::DeviceProof>,
}

impl ClientInfo {
    pub fn new(ip: Option<IpAddr>, user_agent: Option<&str>) -> ClientInfo {
        let user_agent = user_agent.map(|ua| {
            ua.chars()
                .filter(|c| !c.is_control())
                .take(256)
                .collect::<String>()
        });
        ClientInfo {
            ip,
            user_agent,
            device: None,
        }
    }

    /// This client with the device proof it sent.
    pub fn with_device(mut self, proof: Option<&str>) -> ClientInfo {
        self.device = proof.and_then(lockout::DeviceProof::new);
        self
    }

    fn ip_text(&self) -> String {
        self.ip.map(|ip| ip.to_string()).unwrap_or_default()
    }
}

/// Failed logins allowed per window before the account locks, and for how
/// long it then stays locked.
#[derive(Debug, Clone)]
pub struct LockoutPolicy {
    pub max_failures: u32,
    pub window: Duration,
    pub lock_for: Duration,
}

impl Default for LockoutPolicy {
    fn default() -> LockoutPolicy {
        LockoutPolicy {
            max_failures: 5,
            window: Duration::from_secs(5 * 60),
            lock_for: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// A browser session ends after this long without a request.
    pub browser_idle: Duration,
    /// A browser session ends this long after login, active or not.
    pub browser_absolute: Duration,
    /// Longest life an API key may be given.
    pub api_key_max_ttl: Duration,
    pub issuer: String,
    pub audience: String,
    pub password: PasswordPolicy,
    pub lockout: LockoutPolicy,
    /// Admins without a second factor may do nothing but enrol one.
    pub require_totp_for_admins: bool,
}

impl Default for IdentityConfig {
    fn default() -> IdentityConfig {
        IdentityConfig {
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            browser_idle: Duration::from_secs(30 * 60),
            browser_absolute: Duration::from_secs(12 * 3600),
            api_key_max_ttl: Duration::from_secs(365 * 24 * 3600),
            issuer: "spinforge".into(),
            audience: "spinforge-api".into(),
            password: PasswordPolicy::default(),
            lockout: LockoutPolicy::default(),
            require_totp_for_admins: false,
        }
    }
}

/// A request to create a user. No `Debug`: it holds a password.
pub struct UserSpec {
    pub email: String,
    pub password: String,
    pub role: Role,
    /// The customer's name; created on first use. Required unless the
    /// role is admin.
    pub customer: Option<String>,
    pub display_name: Option<String>,
}

#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

/// Whether a login checks the user's second factor inside the lockout's
/// accounting (a login), or only the password (re-confirming a password).
enum FactorCheck<'a> {
    Required(Option<&'a SecondFactor>),
    Skip,
}

struct Inner {
    store: Arc<dyn Store>,
    config: IdentityConfig,
    /// Hashed once at start; verified against for unknown emails so that a
    /// miss costs the same as a wrong password.
    decoy_hash: String,
    keys: ArcSwap<jwt::KeyRing>,
    /// Seals and opens the signing keys' private halves; `None` for host
    /// commands that manage users and never sign a token.
    secrets: Option<secrets::Secrets>,
    ip_failures: throttle::IpThrottle,
    device_key: lockout::DeviceKey,
}

impl Identity {
    /// Opens the signing keys with `secrets` (creating the first one on a
    /// new data directory) and prepares the login decoy. Fails if the
    /// active signing key does not open: a server must not run with a
    /// key it cannot use, nor replace one it cannot read.
    pub async fn new(
        store: Arc<dyn Store>,
        config: IdentityConfig,
        secrets: secrets::Secrets,
    ) -> Result<Identity, IdentityError> {
        let identity = Identity::build(store, config, Some(secrets)).await?;
        identity.reload_keys().await?;
        if !identity.inner.keys.load().has_active_key() {
            identity.rotate_signing_key().await?;
        }
        Ok(identity)
    }

    /// For host commands (`admin create`) that manage users on a data
    /// directory and never sign tokens: no signing key is opened or made,
    /// so no master key is needed.
    pub async fn without_signing(
        store: Arc<dyn Store>,
        config: IdentityConfig,
    ) -> Result<Identity, IdentityError> {
        Identity::build(store, config, None).await
    }

    async fn build(
        store: Arc<dyn Store>,
        config: IdentityConfig,
        secrets: Option<secrets::Secrets>,
    ) -> Result<Identity, IdentityError> {
        let mut decoy = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut decoy);
        let decoy_hash = hash_password(hex::encode(decoy)).await?;
        let ring = jwt::KeyRing::new(&[], &config.issuer, &config.audience);
        let identity = Identity {
            inner: Arc::new(Inner {
                ip_failures: throttle::IpThrottle::new(config.lockout.window),
                device_key: lockout::DeviceKey::generate(),
                store,
                config,
                decoy_hash,
                keys: ArcSwap::from_pointee(ring),
                secrets,
            }),
        };
        Ok(identity)
    }

    pub fn config(&self) -> &IdentityConfig {
        &self.inner.config
    }

    fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    // ---- users ------------------------------------------------------------

    /// Creates a user after checking the email, password and customer
    /// rules. The customer is created on first use.
    pub async fn create_user(&self, spec: UserSpec) -> Result<User, IdentityError> {
        let email = normalize_email(&spec.email)?;
        let customer = match (spec.role, spec.customer.as_deref()) {
            (_, Some(name)) => Some(self.customer_named(name).await?),
            (Role::Admin, None) => None,
            (_, None) => {
                return Err(IdentityError::Invalid {
                    field: "customer",
                    rule: "is required for developers and viewers".into(),
                })
            }
        };
        let display_name = spec
            .display_name
            .as_deref()
            .map(check_display_name)
            .transpose()?;
        self.inner.config.password.check(&spec.password, &email)?;
        let password_hash = hash_password(spec.password).await?;
        let user = self
            .store()
            .create_user(NewUser {
                email,
                password_hash,
                role: spec.role,
                customer,
                display_name,
                created_at: now(),
            })
            .await?;
        Ok(user)
    }

    /// Resolves a customer name to its id, creating it on first use.
    pub async fn customer_named(&self, name: &str) -> Result<CustomerId, IdentityError> {
        let name = check_customer_name(name)?;
        Ok(self
            .store()
            .customer_by_name_or_create(&name, now())
            .await?
            .id)
    }

    /// Changes a user. Passwords are checked and hashed here; every other
    /// rule (who may change what) is the caller's.
    pub async fn update_user(
        &self,
        id: UserId,
        email: Option<&str>,
        password: Option<String>,
        change: UserChange,
    ) -> Result<User, IdentityError> {
        let mut change = change;
        if let Some(email) = email {
            change.email = Some(normalize_email(email)?);
        }
        if let Some(Some(name)) = &change.display_name {
            change.display_name = Some(Some(check_display_name(name)?));
        }
        if let Some(password) = password {
            let user = self
                .store()
                .user_by_id(id)
                .await?
                .ok_or(IdentityError::NotFound("user"))?;
            let email = change.email.as_deref().unwrap_or(&user.email);
            self.inner.config.password.check(&password, email)?;
            change.password_hash = Some(hash_password(password).await?);
        }
        Ok(self.store().update_user(id, change).await?)
    }

    // ---- login ------------------------------------------------------------

    /// Checks an email and password under the brute-force rules and, on
    /// success, starts a session. Unknown emails and wrong passwords fail
    /// the same way, take the same time and lock the same way. Failures
    /// lock per account *and source network*; an account-wide ceiling
    /// then admits only devices with a proof (see [`lockout`]).
    async fn check_login(
        &self,
        email: &str,
        password: String,
        factor: FactorCheck<'_>,
        client: &ClientInfo,
    ) -> Result<User, IdentityError> {
        let lockout = &self.inner.config.lockout;
        let window = lockout.window.as_secs() as i64;
        let lock_for = lockout.lock_for.as_secs() as i64;
        // A malformed address is counted like any unknown one.
        let subject = normalize_email(email).unwrap_or_else(|_| email.trim().to_lowercase());
        let subject: String = subject.chars().take(254).collect();
        let net = lockout::source_net(client.ip);
        let at_net = lockout::network_subject(&subject, &net);

        // The account-wide guard: past its ceiling, only a device that
        // logged in to this account before may try.
        let account = self.store().login_failures(&subject, now(), window).await?;
        let account_locked_before = account.locked_until;
        let known_device = client
            .device
            .as_ref()
            .is_some_and(|d| self.inner.device_key.verify(d, &subject, now()));
        if let Some(until) = account.locked_until {
            if !known_device {
                audit_lock("auth.failed", &subject, &net, "account", client);
                return Err(IdentityError::Locked {
                    retry_after: (until - now()).max(1) as u64,
                });
            }
            audit_device_proof_used(&subject, &net, client);
        }

        // The attempt is counted before the password is checked: a burst
        // of parallel guesses from one network gets at most
        // `max_failures` checks. The lock is set by the first attempt
        // past the limit.
        let max = i64::from(lockout.max_failures);
        let attempt = self
            .store()
            .record_login_failure(&at_net, now(), window, max + 1, lock_for)
            .await?;
        if attempt.failures > max || attempt.locked_until.is_some() {
            if attempt.failures == max + 1 {
                audit_lock("auth.locked", &subject, &net, "network", client);
            } else {
                audit_lock("auth.failed", &subject, &net, "network", client);
            }
            let until = attempt.locked_until.unwrap_or(now() + lock_for);
            return Err(IdentityError::Locked {
                retry_after: (until - now()).max(1) as u64,
            });
        }
        let ip_failures = client
            .ip
            .map_or(0, |ip| self.inner.ip_failures.failures(ip));
        let network_failures = u32::try_from(attempt.failures - 1).unwrap_or(0);
        let delay = throttle::delay_after(ip_failures.max(network_failures));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }

        // The account-wide count is also taken before the password is
        // checked, so a parallel burst from many networks cannot outrun the
        // ceiling; a complete success (password and second factor) gives
        // its attempt back, so only failures add up.
        let ceiling = i64::from(lockout::account_ceiling(lockout.max_failures));
        let account = self
            .store()
            .record_login_failure(&subject, now(), window, ceiling, lock_for)
            .await?;
        if account.failures == ceiling {
            audit_lock("auth.locked", &subject, &net, "account", client);
        }
        if account.failures > ceiling {
            if !known_device {
                // In flight past the ceiling: refused before the hash.
                audit_lock("auth.failed", &subject, &net, "account", client);
                let until = account.locked_until.unwrap_or(now() + lock_for);
                return Err(IdentityError::Locked {
                    retry_after: (until - now()).max(1) as u64,
                });
            }
            // The lock was not set yet when the guard above looked; said
            // once per attempt either way.
            if account_locked_before.is_none() {
                audit_device_proof_used(&subject, &net, client);
            }
        }

        let user = self.store().user_by_email(&subject).await?;
        let hash = match &user {
            Some(u) => u.password_hash.clone(),
            None => self.inner.decoy_hash.clone(),
        };
        let matches = verify_password(password, hash).await?;
        match user {
            Some(user) if matches && !user.disabled => {
                if let FactorCheck::Required(factor) = factor {
                    // A wrong code with the right password stays counted,
                    // per network and per account, like a wrong password:
                    // the second factor is what guards a leaked password.
                    if let Err(e) = self.check_second_factor(&user, factor, client).await {
                        if matches!(e, IdentityError::SecondFactorFailed) {
                            if let Some(ip) = client.ip {
                                self.inner.ip_failures.record_failure(ip);
                            }
                        }
                        return Err(e);
                    }
                }
                self.store().clear_login_failures(&at_net, now()).await?;
                self.store().forgive_login_attempt(&subject, now()).await?;
                if let Some(ip) = client.ip {
                    self.inner.ip_failures.clear(ip);
                }
                Ok(user)
            }
            _ => {
                if let Some(ip) = client.ip {
                    self.inner.ip_failures.record_failure(ip);
                }
                audit_auth("auth.failed", &subject, client, "login failed");
                Err(IdentityError::BadCredentials)
            }
        }
    }

    /// A device proof for the account `email` (the `sf_device` cookie),
    /// to hand out after a successful password login; see [`lockout`].
    pub fn issue_device_proof(&self, email: &str) -> String {
        let subject = normalize_email(email).unwrap_or_else(|_| email.trim().to_lowercase());
        self.inner.device_key.issue(&subject, now())
    }

    /// Checks the password of a signed-in user (before a change that needs
    /// it) under the same throttling, lockout and audit as a login.
    pub async fn confirm_password(
        &self,
        user: &User,
        password: String,
        client: &ClientInfo,
    ) -> Result<(), IdentityError> {
        self.check_login(&user.email, password, FactorCheck::Skip, client)
            .await
            .map(|_| ())
    }

    /// Lifts the login lock of an email address at once.
    pub async fn unlock(&self, email: &str) -> Result<(), IdentityError> {
        let subject = normalize_email(email)?;
        self.store().unlock_login(&subject).await?;
        Ok(())
    }

    /// Logs in for bearer tokens: a new token session with an access JWT
    /// and a refresh token.
    pub async fn login(
        &self,
        email: &str,
        password: String,
        factor: Option<&SecondFactor>,
        client: &ClientInfo,
    ) -> Result<(User, TokenPair), IdentityError> {
        let user = self
            .check_login(email, password, FactorCheck::Required(factor), client)
            .await?;
        let pair = self.start_token_session(&user, client).await?;
        audit_success(&user, client, "token login");
        Ok((user, pair))
    }

    /// Starts a token session for a user whose identity was already proven
    /// (password, or single sign-on).
    pub async fn start_token_session(
        &self,
        user: &User,
        client: &ClientInfo,
    ) -> Result<TokenPair, IdentityError> {
        let at = now();
        let session = Session {
            id: random_token(),
            user_id: user.id,
            kind: SessionKind::Token,
            secret_hash: None,
            created_at: at,
            last_seen_at: at,
            expires_at: at + self.inner.config.refresh_ttl.as_secs() as i64,
            client_ip: client.ip.map(|ip| ip.to_string()),
            user_agent: client.user_agent.clone(),
        };
        let (pair, refresh) = self.new_pair(user.id, &session.id)?;
        self.store().create_session(session, Some(refresh)).await?;
        Ok(pair)
    }

    /// Logs in for a browser: a cookie session with idle and absolute
    /// timeouts, and its CSRF token.
    pub async fn login_browser(
        &self,
        email: &str,
        password: String,
        factor: Option<&SecondFactor>,
        client: &ClientInfo,
    ) -> Result<(User, BrowserLogin), IdentityError> {
        let user = self
            .check_login(email, password, FactorCheck::Required(factor), client)
            .await?;
        let login = self.start_browser_session(&user, client).await?;
        audit_success(&user, client, "browser login");
        Ok((user, login))
    }

    // ---- single sign-on (oidc api) ----

    /// Starts a browser session for a user whose identity was already
    /// proven by single sign-on: the same cookie session, idle and absolute
    /// timeouts and CSRF token as [`Identity::login_browser`].
    pub async fn start_browser_session(
        &self,
        user: &User,
        client: &ClientInfo,
    ) -> Result<BrowserLogin, IdentityError> {
        let cookie = format!("sfc_{}", random_token());
        let at = now();
        let session = Session {
            id: random_token(),
            user_id: user.id,
            kind: SessionKind::Browser,
            secret_hash: Some(token_hash(&cookie)),
            created_at: at,
            last_seen_at: at,
            expires_at: at + self.inner.config.browser_absolute.as_secs() as i64,
            client_ip: client.ip.map(|ip| ip.to_string()),
            user_agent: client.user_agent.clone(),
        };
        self.store().create_session(session.clone(), None).await?;
        let csrf_token = csrf_token_for(&cookie);
        Ok(BrowserLogin {
            cookie,
            csrf_token,
            session,
        })
    }

    /// A fresh 256-bit random token, URL-safe (for single sign-on login ids).
    pub fn new_secret_token() -> String {
        random_token()
    }

    // ---- end single sign-on ----

    /// Exchanges a refresh token for a new pair. A refresh token works
    /// once; presenting a spent one ends its whole session.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client: &ClientInfo,
    ) -> Result<TokenPair, IdentityError> {
        if refresh_token.len() > 256 {
            return Err(IdentityError::BadToken);
        }
        let hash = token_hash(refresh_token);
        let record = self
            .store()
            .find_token(&hash, TokenKind::Refresh, now())
            .await?
            .ok_or(IdentityError::BadToken)?;
        if record.used {
            // A spent token came back: someone holds a copy. End the session.
            self.store().revoke_family(&record.family).await?;
            audit_reuse(&record, client);
            return Err(IdentityError::BadToken);
        }
        let Some((_, user)) = self
            .store()
            .session(&record.family, record.user_id, now())
            .await?
        else {
            return Err(IdentityError::BadToken);
        };
        if user.disabled {
            return Err(IdentityError::BadToken);
        }
        let (pair, refresh) = self.new_pair(record.user_id, &record.family)?;
        match self.store().rotate_refresh(&hash, now(), refresh).await {
            Ok(()) => Ok(pair),
            Err(StoreError::NotFound) => {
                // A concurrent use of the same refresh token won the race:
                // that is reuse too.
                self.store().revoke_family(&record.family).await?;
                audit_reuse(&record, client);
                Err(IdentityError::BadToken)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Ends the caller's session. API keys have none: revoke the key.
    pub async fn logout(&self, principal: &Principal) -> Result<(), IdentityError> {
        if let Some(session) = &principal.session {
            self.store().revoke_family(session).await?;
        }
        Ok(())
    }

    // ---- authentication ---------------------------------------------------

    /// Resolves a bearer credential: an API key (`sf_…`) or an access JWT.
    pub async fn authenticate(&self, bearer: &str) -> Result<Principal, IdentityError> {
        if bearer.starts_with(API_KEY_PREFIX) {
            return self.authenticate_api_key(bearer).await;
        }
        let claims = self
            .inner
            .keys
            .load()
            .verify(bearer)
            .map_err(|_| IdentityError::BadToken)?;
        let user_id = claims
            .sub
            .parse::<i64>()
            .map(UserId)
            .map_err(|_| IdentityError::BadToken)?;
        // The token is only as good as its session: logout, revocation,
        // deletion and disabling take effect at once.
        let (session, user) = self
            .store()
            .session(&claims.sid, user_id, now())
            .await?
            .ok_or(IdentityError::BadToken)?;
        if user.disabled || session.kind != SessionKind::Token {
            return Err(IdentityError::BadToken);
        }
        Ok(principal_of(&user, Some(session.id), AuthMethod::Bearer))
    }

    /// Resolves a browser session cookie, enforcing its idle timeout.
    pub async fn authenticate_cookie(&self, cookie: &str) -> Result<Principal, IdentityError> {
        if cookie.is_empty() || cookie.len() > 256 {
            return Err(IdentityError::BadToken);
        }
        let at = now();
        let (session, user) = self
            .store()
            .browser_session(&token_hash(cookie), at)
            .await?
            .ok_or(IdentityError::BadToken)?;
        let idle = self.inner.config.browser_idle.as_secs() as i64;
        if user.disabled || session.last_seen_at + idle <= at {
            return Err(IdentityError::BadToken);
        }
        // One write a minute at most, not one per request.
        if at - session.last_seen_at >= 60 {
            self.store().touch_session(&session.id, at).await?;
        }
        Ok(principal_of(&user, Some(session.id), AuthMethod::Cookie))
    }

    /// True iff `token` is the CSRF token of the browser session `cookie`.
    pub fn csrf_matches(&self, cookie: &str, token: &str) -> bool {
        let expected = csrf_token_for(cookie);
        bool::from(expected.as_bytes().ct_eq(token.as_bytes()))
    }

    /// The CSRF token of a browser session.
    pub fn csrf_token(&self, cookie: &str) -> String {
        csrf_token_for(cookie)
    }

    // ---- sessions ---------------------------------------------------------

    pub async fn sessions(&self, user: UserId) -> Result<Vec<Session>, IdentityError> {
        Ok(self.store().list_sessions(user, now()).await?)
    }

    /// Ends one of `owner`'s sessions. A session of someone else is "not
    /// found", like one that does not exist.
    pub async fn revoke_session(&self, owner: UserId, id: &str) -> Result<(), IdentityError> {
        let owned = self
            .store()
            .list_sessions(owner, now())
            .await?
            .iter()
            .any(|s| s.id == id);
        if !owned || !self.store().revoke_session(id).await? {
            return Err(IdentityError::NotFound("session"));
        }
        Ok(())
    }

    /// Ends every session of a user; their API keys stay.
    pub async fn revoke_all_sessions(&self, user: UserId) -> Result<u64, IdentityError> {
        Ok(self.store().revoke_user_sessions(user).await?)
    }

    // ---- signing keys -----------------------------------------------------

    /// The public keys that verify access tokens, as a JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        self.inner.keys.load().jwks().clone()
    }

    /// Adds a new active signing key. The previous keys keep verifying
    /// until every token they signed has expired, then retire.
    pub async fn rotate_signing_key(&self) -> Result<String, IdentityError> {
        let at = now();
        let key = jwt::generate_key().map_err(IdentityError::Internal)?;
        let kid = key.kid.clone();
        let private = key
            .private_key
            .as_ref()
            .ok_or_else(|| IdentityError::Internal("a new key has no private half".into()))?;
        let sealed = self
            .sealer()?
            .seal_key(&KeyId::new(KeyKind::SigningKey, &kid), private)
            .await?;
        let record = SigningKeyRecord {
            kid: kid.clone(),
            private_key: sealed,
            public_key: key.public_key.clone(),
            created_at: at,
            active: true,
            retired_at: None,
        };
        let retire_at = at + self.inner.config.access_ttl.as_secs() as i64 + 60;
        self.store().rotate_signing_key(record, retire_at).await?;
        self.reload_keys().await?;
        tracing::info!(kid = %kid, "token signing key rotated");
        Ok(kid)
    }

    /// Re-reads the signing keys, dropping retired ones. Only the active
    /// key's private half is opened; the others only verify.
    pub async fn reload_keys(&self) -> Result<(), IdentityError> {
        let records = self.store().signing_keys(now()).await?;
        let mut keys = Vec::with_capacity(records.len());
        for record in records {
            let private_key = if record.active {
                let id = KeyId::new(KeyKind::SigningKey, &record.kid);
                Some(self.sealer()?.open_key(&id, &record.private_key).await?)
            } else {
                None
            };
            keys.push(jwt::RingKey {
                kid: record.kid,
                public_key: record.public_key,
                active: record.active,
                retired_at: record.retired_at,
                private_key,
            });
        }
        let config = &self.inner.config;
        let ring = jwt::KeyRing::new(&keys, &config.issuer, &config.audience);
        self.inner.keys.store(Arc::new(ring));
        Ok(())
    }

    fn sealer(&self) -> Result<&secrets::Secrets, IdentityError> {
        self.inner.secrets.as_ref().ok_or_else(|| {
            IdentityError::Internal("signing keys are managed by `spinforge serve`".into())
        })
    }

    fn new_pair(
        &self,
        user: UserId,
        session: &str,
    ) -> Result<(TokenPair, TokenRecord), IdentityError> {
        let config = &self.inner.config;
        let at = now();
        let claims = jwt::claims_for(
            user,
            session,
            &config.issuer,
            &config.audience,
            at,
            config.access_ttl,
        );
        let access_token = self
            .inner
            .keys
            .load()
            .sign(&claims)
            .ok_or_else(|| IdentityError::Internal("no active signing key".into()))?;
        let refresh_token = format!("sfr_{}", random_token());
        let refresh = TokenRecord {
            hash: token_hash(&refresh_token),
            user_id: user,
            kind: TokenKind::Refresh,
            family: session.to_owned(),
            expires_at: at + config.refresh_ttl.as_secs() as i64,
            used: false,
        };
        let pair = TokenPair {
            access_token,
            refresh_token,
            token_type: "Bearer",
            expires_in: config.access_ttl.as_secs(),
        };
        Ok((pair, refresh))
    }
}

/// The principal of a user with its role's full permissions.
fn principal_of(user: &User, session: Option<String>, method: AuthMethod) -> Principal {
    Principal {
        user_id: user.id,
        email: user.email.clone(),
        role: user.role,
        customer: user.customer,
        permissions: role_permissions(user.role),
        session,
        api_key: None,
        sites: None,
        method,
        second_factor: user.totp_secret.is_some(),
    }
}

pub(crate) fn audit_auth(event: &'static str, subject: &str, client: &ClientInfo, message: &str) {
    // Only a well-formed address is logged, and escaped: the field is
    // attacker input, and people paste passwords into it.
    let subject = match normalize_email(subject) {
        Ok(email) => email,
        Err(_) => "(malformed email)".to_owned(),
    };
    tracing::info!(
        target: "spinforge::audit", event, subject = ?subject, client_ip = %client.ip_text(),
        user_agent = client.user_agent.as_deref().unwrap_or(""), "{message}"
    );
}

/// A login attempt for `subject` let past the account-wide lock only
/// because its device proof verified. The proof itself is not logged;
/// the attempt's outcome follows as its own event.
fn audit_device_proof_used(subject: &str, net: &str, client: &ClientInfo) {
    let subject = normalize_email(subject).unwrap_or_else(|_| "(malformed email)".to_owned());
    tracing::info!(
        target: "spinforge::audit", event = "auth.device_proof_used", subject = ?subject,
        scope = "account", network = %net, client_ip = %client.ip_text(),
        user_agent = client.user_agent.as_deref().unwrap_or(""),
        "login attempt admitted past the account lock by a device proof"
    );
}

/// A login refused, or a lock set, for `subject`: `scope` says which
/// counter (`network`: this account from this network; `account`: the
/// account-wide ceiling, which devices with a proof pass).
fn audit_lock(event: &'static str, subject: &str, net: &str, scope: &str, client: &ClientInfo) {
    let subject = normalize_email(subject).unwrap_or_else(|_| "(malformed email)".to_owned());
    tracing::info!(
        target: "spinforge::audit", event, subject = ?subject, scope, network = %net,
        client_ip = %client.ip_text(),
        user_agent = client.user_agent.as_deref().unwrap_or(""),
        "login refused: locked ({scope})"
    );
}

fn audit_success(user: &User, client: &ClientInfo, message: &str) {
    tracing::info!(
        target: "spinforge::audit", event = "auth.succeeded", user = %user.id,
        subject = ?user.email, client_ip = %client.ip_text(),
        user_agent = client.user_agent.as_deref().unwrap_or(""), "{message}"
    );
}

fn audit_reuse(record: &TokenRecord, client: &ClientInfo) {
    tracing::info!(
        target: "spinforge::audit", event = "auth.refresh_reuse", user = %record.user_id,
        client_ip = %client.ip_text(),
        user_agent = client.user_agent.as_deref().unwrap_or(""),
        "a spent refresh token was presented; its session is revoked"
    );
}

/// Lower-cases and checks an email address: one `@`, a dot in the domain,
/// no spaces or control characters, at most 254 bytes.
pub fn normalize_email(email: &str) -> Result<String, IdentityError> {
    let email = email.trim();
    let invalid = |rule: &str| IdentityError::Invalid {
        field: "email",
        rule: rule.to_owned(),
    };
    if email.is_empty() || email.len() > 254 {
        return Err(invalid("must be 1 to 254 characters"));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("must not contain spaces or control characters"));
    }
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.') =>
        {
            Ok(email.to_lowercase())
        }
        _ => Err(invalid("must look like name@example.com")),
    }
}

/// A customer name: 1 to 64 letters, digits, spaces, `-`, `_` or `.`.
fn check_customer_name(name: &str) -> Result<String, IdentityError> {
    let name = name.trim();
    let ok = (1..=64).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'));
    if !ok {
        return Err(IdentityError::Invalid {
            field: "customer",
            rule: "must be 1 to 64 letters, digits, spaces, '-', '_' or '.'".into(),
        });
    }
    Ok(name.to_owned())
}

fn check_display_name(name: &str) -> Result<String, IdentityError> {
    let name = name.trim();
    if name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(IdentityError::Invalid {
            field: "name",
            rule: "must be at most 100 characters without control characters".into(),
        });
    }
    Ok(name.to_owned())
}

fn csrf_token_for(cookie: &str) -> String {
    // Derived from the cookie, which a foreign page cannot read: nothing to
    // store, and it dies with the session.
    let mut hasher = Sha256::new();
    hasher.update(b"spinforge-csrf\0");
    hasher.update(cookie.as_bytes());
    hex::encode(hasher.finalize())
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests;
