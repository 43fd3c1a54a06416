//! Logins that were started and wait for their callback, keyed by `state`.
//!
//! A [`PendingLogin`] holds the secrets of one login (the PKCE verifier and
//! the nonce) between `begin` and `complete`. [`PendingLogins`] is a small
//! in-memory store for them: bounded, with a TTL, and single use.
//!
//! Limitation: the store lives in one process, so a login must finish on
//! the node that started it (a shared store, e.g. Redis with the same
//! hashed keys, would lift this for cluster mode).

use super::OidcError;
use openidconnect::{CsrfToken, Nonce, PkceCodeVerifier};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a started login may take before its callback is refused.
pub const PENDING_LOGIN_TTL: Duration = Duration::from_secs(10 * 60);
/// How many logins [`PendingLogins::new`] keeps waiting at most.
pub const DEFAULT_MAX_PENDING_LOGINS: usize = 10_000;
/// `state` values longer than this are refused without hashing.
const MAX_STATE_LEN: usize = 512;

/// One started login. Its `Debug` shows no secret.
pub struct PendingLogin {
    provider: String,
    state: CsrfToken,
    nonce: Option<Nonce>,
    pkce_verifier: PkceCodeVerifier,
    created_at: Instant,
}

/// The secrets a provider flow needs to finish a login.
pub(super) struct LoginSecrets {
    pub(super) nonce: Option<Nonce>,
    pub(super) pkce_verifier: PkceCodeVerifier,
}

impl PendingLogin {
    pub(super) fn new(
        provider: String,
        state: CsrfToken,
        nonce: Option<Nonce>,
        pkce_verifier: PkceCodeVerifier,
    ) -> PendingLogin {
        PendingLogin {
            provider,
            state,
            nonce,
            pkce_verifier,
            created_at: Instant::now(),
        }
    }

    /// The `state` sent to the provider; the callback must bring it back.
    pub fn state(&self) -> &str {
        self.state.secret()
    }

    /// The name of the provider this login was started with.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// When [`super::OidcClient::begin`] made it.
    pub fn created_at(&self) -> Instant {
        self.created_at
    }

    /// True if and only if the login is older than `ttl` at `now`.
    pub fn is_expired(&self, now: Instant, ttl: Duration) -> bool {
        now.saturating_duration_since(self.created_at) > ttl
    }

    pub(super) fn into_secrets(self) -> LoginSecrets {
        LoginSecrets {
            nonce: self.nonce,
            pkce_verifier: self.pkce_verifier,
        }
    }
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("provider", &self.provider)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// Started logins by the SHA-256 of their `state`.
///
/// Keys are digests, so a lookup compares digests of the attacker's input,
/// never the secret `state` itself, and its timing says nothing useful about
/// a stored state. [`PendingLogins::take`] removes the entry: a state works
/// once. When full, expired entries are dropped first; if it is still full,
/// new logins are refused ([`OidcError::TooManyPendingLogins`]) rather than
/// pushing out logins that users are in the middle of.
#[derive(Debug)]
pub struct PendingLogins {
    entries: Mutex<HashMap<[u8; 32], PendingLogin>>,
    ttl: Duration,
    max: usize,
}

impl Default for PendingLogins {
    fn default() -> Self {
        PendingLogins::new()
    }
}

impl PendingLogins {
    /// [`PENDING_LOGIN_TTL`] and [`DEFAULT_MAX_PENDING_LOGINS`].
    pub fn new() -> PendingLogins {
        PendingLogins::with_limits(PENDING_LOGIN_TTL, DEFAULT_MAX_PENDING_LOGINS)
    }

    /// A store with its own TTL and bound (`max` of 0 refuses everything).
    pub fn with_limits(ttl: Duration, max: usize) -> PendingLogins {
        PendingLogins {
            entries: Mutex::new(HashMap::new()),
            ttl,
            max,
        }
    }

    /// Keeps `pending` until [`PendingLogins::take`] or its TTL.
    pub fn insert(&self, pending: PendingLogin) -> Result<(), OidcError> {
        self.insert_at(pending, Instant::now())
    }

    /// Removes and returns the login started with `state`, if it exists and
    /// has not expired. Any other state is [`OidcError::UnknownState`].
    pub fn take(&self, state: &str) -> Result<PendingLogin, OidcError> {
        self.take_at(state, Instant::now())
    }

    /// How many logins wait (expired ones included until the next insert).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True if and only if no login waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert_at(&self, pending: PendingLogin, now: Instant) -> Result<(), OidcError> {
        let key = digest(pending.state());
        let mut entries = self.lock();
        if entries.len() >= self.max {
            entries.retain(|_, p| !p.is_expired(now, self.ttl));
        }
        if entries.len() >= self.max {
            return Err(OidcError::TooManyPendingLogins);
        }
        entries.insert(key, pending);
        Ok(())
    }

    fn take_at(&self, state: &str, now: Instant) -> Result<PendingLogin, OidcError> {
        if state.is_empty() || state.len() > MAX_STATE_LEN {
            return Err(OidcError::UnknownState);
        }
        let key = digest(state);
        let pending = self.lock().remove(&key).ok_or(OidcError::UnknownState)?;
        if pending.is_expired(now, self.ttl) {
            return Err(OidcError::UnknownState);
        }
        Ok(pending)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], PendingLogin>> {
        // A panic while holding the lock cannot leave a half-written map:
        // every change is one insert, remove or retain.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn digest(state: &str) -> [u8; 32] {
    Sha256::digest(state.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(provider: &str) -> PendingLogin {
        PendingLogin::new(
            provider.to_owned(),
            CsrfToken::new_random(),
            Some(Nonce::new_random()),
            PkceCodeVerifier::new("v".repeat(43)),
        )
    }

    #[test]
    fn a_state_can_be_taken_exactly_once() {
        let store = PendingLogins::new();
        let pending = login("corp");
        let state = pending.state().to_owned();
        store.insert(pending).expect("room");

        let taken = store.take(&state).expect("first take");
        assert_eq!(taken.state(), state);
        assert_eq!(taken.provider(), "corp");
        assert!(matches!(store.take(&state), Err(OidcError::UnknownState)));
        assert!(store.is_empty());
    }

    #[test]
    fn unknown_tampered_empty_and_huge_states_are_refused() {
        let store = PendingLogins::new();
        let pending = login("corp");
        let state = pending.state().to_owned();
        store.insert(pending).expect("room");

        let mut tampered = state.clone();
        tampered.push('x');
        for bad in [
            tampered.as_str(),
            &state[1..],
            "",
            &"a".repeat(MAX_STATE_LEN + 1),
        ] {
            assert!(matches!(store.take(bad), Err(OidcError::UnknownState)));
        }
        // The real one still works: refusals consumed nothing.
        assert!(store.take(&state).is_ok());
    }

    #[test]
    fn an_expired_login_is_refused_and_removed() {
        let store = PendingLogins::with_limits(Duration::from_secs(600), 10);
        let pending = login("corp");
        let state = pending.state().to_owned();
        let started = pending.created_at();
        store.insert(pending).expect("room");

        let later = started + Duration::from_secs(601);
        assert!(matches!(
            store.take_at(&state, later),
            Err(OidcError::UnknownState)
        ));
        assert!(store.is_empty());
    }

    #[test]
    fn a_full_store_drops_expired_logins_then_refuses_new_ones() {
        let store = PendingLogins::with_limits(Duration::from_secs(600), 2);
        let now = Instant::now();
        store.insert_at(login("a"), now).expect("room");
        store.insert_at(login("b"), now).expect("room");
        assert!(matches!(
            store.insert_at(login("c"), now),
            Err(OidcError::TooManyPendingLogins)
        ));
        assert_eq!(store.len(), 2);

        // Once the first two have expired, they make room.
        let later = now + Duration::from_secs(601);
        store
            .insert_at(login("d"), later)
            .expect("room after expiry");
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let pending = login("corp");
        let state = pending.state().to_owned();
        let shown = format!("{pending:?}");
        assert!(!shown.contains(&state));
        assert!(!shown.contains(&"v".repeat(43)));
        assert!(shown.contains("corp"));
    }
}
