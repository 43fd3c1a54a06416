//! Who is calling: password hashing, login, and bearer tokens.
//!
//! This is the platform core's minimal identity: admins log in with email
//! and password and get an opaque access token and a rotating refresh
//! token. The hub only sees the [`Identity`] interface, so the full design
//! (roles with ownership, API keys, OIDC) replaces the inside, not callers.
#![forbid(unsafe_code)]

pub mod oidc;
mod password;
pub mod totp;

pub use password::{hash_password, verify_password, PasswordPolicy};

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::{NewUser, Role, Store, StoreError, TokenKind, TokenRecord, User, UserId};

/// Why an identity operation failed, and whose fault it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The client: wrong email or password. Deliberately says which of the
    /// two it was in neither message nor timing.
    #[error("invalid email or password")]
    BadCredentials,
    /// The client: a missing, unknown, expired or revoked token.
    #[error("invalid or expired token")]
    BadToken,
    /// The client: the input breaks a rule; names the field.
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    /// The client: the email already belongs to a user.
    #[error("a user with this email already exists")]
    EmailTaken,
    /// Our side.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for IdentityError {
    fn from(e: StoreError) -> IdentityError {
        match e {
            StoreError::Conflict("email") => IdentityError::EmailTaken,
            other => IdentityError::Internal(other.to_string()),
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: UserId,
    pub email: String,
    pub role: Role,
    /// The login session the token belongs to.
    pub session: String,
}

/// A freshly issued pair. The token strings exist only here, on their way
/// to the client; the store keeps their hashes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub password: PasswordPolicy,
}

impl Default for IdentityConfig {
    fn default() -> IdentityConfig {
        IdentityConfig {
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(14 * 24 * 3600),
            password: PasswordPolicy::default(),
        }
    }
}

#[derive(Clone)]
pub struct Identity {
    store: Arc<dyn Store>,
    config: IdentityConfig,
    /// Hashed once at start; verified against for unknown emails so that a
    /// miss costs the same as a wrong password.
    decoy_hash: Arc<String>,
}

impl Identity {
    pub async fn new(
        store: Arc<dyn Store>,
        config: IdentityConfig,
    ) -> Result<Identity, IdentityError> {
        let mut decoy = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut decoy);
        let decoy_hash = hash_password(hex::encode(decoy)).await?;
        Ok(Identity {
            store,
            config,
            decoy_hash: Arc::new(decoy_hash),
        })
    }

    /// Creates a user after checking the email and password rules.
    pub async fn create_user(
        &self,
        email: &str,
        password: String,
        role: Role,
    ) -> Result<User, IdentityError> {
        let email = normalize_email(email)?;
        self.config.password.check(&password, &email)?;
        let password_hash = hash_password(password).await?;
        let user = self
            .store
            .create_user(NewUser {
                email,
                password_hash,
                role,
                created_at: now(),
            })
            .await?;
        Ok(user)
    }

    /// Checks an email and password and issues a new token pair.
    pub async fn login(
        &self,
        email: &str,
        password: String,
    ) -> Result<(User, TokenPair), IdentityError> {
        let user = match normalize_email(email) {
            Ok(email) => self.store.user_by_email(&email).await?,
            Err(_) => None,
        };
        let hash = match &user {
            Some(u) => u.password_hash.clone(),
            None => self.decoy_hash.as_ref().clone(),
        };
        let matches = verify_password(password, hash).await?;
        let user = match user {
            Some(user) if matches => user,
            _ => return Err(IdentityError::BadCredentials),
        };
        let family = random_token();
        let (pair, access, refresh) = self.new_pair(user.id, &family);
        self.store.insert_token(access).await?;
        self.store.insert_token(refresh).await?;
        Ok((user, pair))
    }

    /// Exchanges a refresh token for a new pair. A refresh token works
    /// once; presenting a used one revokes its whole session.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, IdentityError> {
        let hash = token_hash(refresh_token);
        let record = self
            .store
            .find_token(&hash, TokenKind::Refresh, now())
            .await?
            .ok_or(IdentityError::BadToken)?;
        if record.used {
            // A used token came back: someone holds a copy. End the session.
            self.store.revoke_family(&record.family).await?;
            return Err(IdentityError::BadToken);
        }
        let (pair, access, refresh) = self.new_pair(record.user_id, &record.family);
        match self
            .store
            .rotate_tokens(&hash, now(), access, refresh)
            .await
        {
            Ok(()) => Ok(pair),
            Err(StoreError::NotFound) => {
                // A concurrent use of the same refresh token won the race:
                // treat it as reuse and end the session.
                self.store.revoke_family(&record.family).await?;
                Err(IdentityError::BadToken)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Ends the caller's session: every token of its family.
    pub async fn logout(&self, principal: &Principal) -> Result<(), IdentityError> {
        self.store.revoke_family(&principal.session).await?;
        Ok(())
    }

    /// Resolves a bearer access token to its user.
    pub async fn authenticate(&self, bearer: &str) -> Result<Principal, IdentityError> {
        if bearer.is_empty() || bearer.len() > 256 {
            return Err(IdentityError::BadToken);
        }
        // The lookup is by hash, so comparing never touches the secret.
        let record = self
            .store
            .find_token(&token_hash(bearer), TokenKind::Access, now())
            .await?
            .ok_or(IdentityError::BadToken)?;
        let user = self
            .store
            .user_by_id(record.user_id)
            .await?
            .ok_or(IdentityError::BadToken)?;
        Ok(Principal {
            user_id: user.id,
            email: user.email,
            role: user.role,
            session: record.family,
        })
    }

    fn new_pair(&self, user: UserId, family: &str) -> (TokenPair, TokenRecord, TokenRecord) {
        let access_token = format!("sfa_{}", random_token());
        let refresh_token = format!("sfr_{}", random_token());
        let at = now();
        let access = TokenRecord {
            hash: token_hash(&access_token),
            user_id: user,
            kind: TokenKind::Access,
            family: family.to_owned(),
            expires_at: at + self.config.access_ttl.as_secs() as i64,
            used: false,
        };
        let refresh = TokenRecord {
            hash: token_hash(&refresh_token),
            user_id: user,
            kind: TokenKind::Refresh,
            family: family.to_owned(),
            expires_at: at + self.config.refresh_ttl.as_secs() as i64,
            used: false,
        };
        let pair = TokenPair {
            access_token,
            refresh_token,
            token_type: "Bearer",
            expires_in: self.config.access_ttl.as_secs(),
        };
        (pair, access, refresh)
    }
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

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::SqliteStore;

    async fn fixture() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("store");
        let identity = Identity::new(Arc::new(store), IdentityConfig::default())
            .await
            .expect("id");
        (dir, identity)
    }

    #[tokio::test]
    async fn login_fails_the_same_way_for_unknown_user_and_wrong_password() {
        let (_d, id) = fixture().await;
        id.create_user(
            "Admin@Example.com",
            "correct horse battery".into(),
            Role::Admin,
        )
        .await
        .expect("create");
        let wrong = id
            .login("admin@example.com", "wrong password!!".into())
            .await;
        let unknown = id
            .login("nobody@example.com", "correct horse battery".into())
            .await;
        assert_eq!(
            wrong.err().map(|e| e.to_string()),
            unknown.err().map(|e| e.to_string())
        );
        let (user, pair) = id
            .login("ADMIN@example.com", "correct horse battery".into())
            .await
            .expect("login");
        assert_eq!(user.email, "admin@example.com");
        let who = id
            .authenticate(&pair.access_token)
            .await
            .expect("authenticate");
        assert_eq!(who.user_id, user.id);
    }

    #[tokio::test]
    async fn reusing_a_refresh_token_ends_the_session() {
        let (_d, id) = fixture().await;
        id.create_user("a@example.com", "correct horse battery".into(), Role::Admin)
            .await
            .expect("create");
        let (_, first) = id
            .login("a@example.com", "correct horse battery".into())
            .await
            .expect("login");
        let second = id.refresh(&first.refresh_token).await.expect("refresh");
        assert!(matches!(
            id.refresh(&first.refresh_token).await,
            Err(IdentityError::BadToken)
        ));
        // The second pair was issued before the reuse but is in the same
        // family: it is now dead too.
        assert!(id.authenticate(&second.access_token).await.is_err());
        assert!(id.refresh(&second.refresh_token).await.is_err());
    }

    #[tokio::test]
    async fn logout_revokes_the_access_token() {
        let (_d, id) = fixture().await;
        id.create_user("a@example.com", "correct horse battery".into(), Role::Admin)
            .await
            .expect("create");
        let (_, pair) = id
            .login("a@example.com", "correct horse battery".into())
            .await
            .expect("login");
        let who = id.authenticate(&pair.access_token).await.expect("auth");
        id.logout(&who).await.expect("logout");
        assert!(id.authenticate(&pair.access_token).await.is_err());
    }

    #[test]
    fn emails_are_checked_and_lower_cased() {
        assert_eq!(normalize_email(" A@B.io ").expect("ok"), "a@b.io");
        for bad in [
            "", "a", "a@b", "@b.io", "a@@b.io", "a b@c.io", "a@.io", "a@b.io.",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
    }
}
