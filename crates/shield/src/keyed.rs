//! Who a rate limit counts a request against, the hub's own limits, and
//! the watch that turns sustained refusals into one audit event.
//!
//! A request is counted against its credential only when the credential
//! is *valid* (an API key the identity service accepted, or a logged-in
//! user); everything else, invalid keys included, counts against the
//! client's address. So rotating made-up keys buys nothing: they all land
//! in the one bucket of the address that sends them.

use crate::budget::FailureBudget;
use crate::client_ip::IpKey;
use crate::clock::ShieldClock;
use crate::rate::{Decision, KeyedLimiter, Policy, RateLimited};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bucket a request is counted in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// The client's address (its IPv6 group).
    Ip(IpKey),
    /// A valid credential: `key:<id>` for API keys, `user:<id>` for people.
    Credential(Arc<str>),
    /// An account named at login (a normalised e-mail address).
    Account(Arc<str>),
}

impl std::fmt::Display for RateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateKey::Ip(ip) => write!(f, "ip:{ip}"),
            RateKey::Credential(c) => f.write_str(c),
            RateKey::Account(a) => write!(f, "account:{a}"),
        }
    }
}

impl RateKey {
    /// The bucket's name in audit events: an address bucket is named
    /// `ip` only, its address goes in [`RateKey::audit_client_ip`] so the
    /// audit log anonymises it as configured.
    pub fn audit_bucket(&self) -> String {
        match self {
            RateKey::Ip(_) => "ip".to_owned(),
            other => other.to_string(),
        }
    }

    /// The address (the group's first one) of an address bucket, for the
    /// audit event's `client_ip`; empty for other buckets.
    pub fn audit_client_ip(&self) -> String {
        match self {
            RateKey::Ip(ip) => ip.addr().to_string(),
            _ => String::new(),
        }
    }
}

/// Checks an API key the edge saw and answers the bucket it counts in when
/// the key is valid. `serve` wires it to the identity service and answers
/// the key's account (`user:<id>`), so all keys of one user share a bucket.
pub type KeyVerifier =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Option<String>> + Send>> + Send + Sync>;

/// How long the edge trusts a verified key without asking again.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// Most verified keys remembered at once; past it the cache starts over.
const KEY_CACHE_MAX: usize = 10_000;

/// A verified key's id and when it was verified (Unix seconds).
type Verified = (Arc<str>, u64);

/// Verified API keys by the SHA-256 of the key (the secret itself is not
/// kept), with the time they were verified.
#[derive(Default)]
pub(crate) struct KeyCache {
    entries: Mutex<HashMap<[u8; 32], Verified>>,
}

impl KeyCache {
    pub(crate) fn digest(key: &str) -> [u8; 32] {
        Sha256::digest(key.as_bytes()).into()
    }

    pub(crate) fn get(&self, digest: &[u8; 32], now: u64) -> Option<Arc<str>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (id, at) = entries.get(digest)?;
        (now.saturating_sub(*at) < KEY_CACHE_TTL.as_secs()).then(|| id.clone())
    }

    pub(crate) fn put(&self, digest: [u8; 32], id: Arc<str>, now: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= KEY_CACHE_MAX {
            entries.clear();
        }
        entries.insert(digest, (id, now));
    }
}

/// The API key of a request, if it carries one: `Authorization: Bearer
/// sf_...` (bounded in length; a longer one is not a key).
pub fn bearer_api_key(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let key = bearer_credential(value)?;
    (key.starts_with("sf_") && key.len() <= 128).then_some(key)
}

/// The credential of an `Authorization: Bearer ...` value. The scheme name
/// is case-insensitive (RFC 9110, section 11.1), so `bearer` works too.
pub fn bearer_credential(value: &str) -> Option<&str> {
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
}

/// The hub's limits: the auth endpoints' failure budget and the refresh
/// limit per address, and the API per credential or address. Accounts
/// are the identity service's business (its lockout is keyed by account
/// and source network, so a stranger cannot lock the owner out).
pub(crate) struct HubLimits {
    pub(crate) auth_failures: FailureBudget<RateKey>,
    pub(crate) refresh: KeyedLimiter<RateKey>,
    pub(crate) api: KeyedLimiter<RateKey>,
}

impl HubLimits {
    pub(crate) fn new(
        auth: Policy,
        refresh: Policy,
        api: Policy,
        factor: f64,
        clock: &ShieldClock,
    ) -> HubLimits {
        HubLimits {
            auth_failures: FailureBudget::new(auth, factor, clock.clone()),
            refresh: KeyedLimiter::new(refresh, factor, clock.clone()),
            api: KeyedLimiter::new(api, factor, clock.clone()),
        }
    }

    pub(crate) fn forget_idle(&self) {
        self.auth_failures.forget_idle();
        self.refresh.forget_idle();
        self.api.forget_idle();
    }
}

/// Turns refusals into the `rate.abuse` audit event: a key refused more
/// than `threshold` times within a minute is abusing the limit, and is
/// reported at most once per ten minutes.
pub(crate) struct AbuseWatch {
    refusals: KeyedLimiter<RateKey>,
    reports: KeyedLimiter<RateKey>,
}

impl AbuseWatch {
    pub(crate) fn new(threshold: u32, clock: &ShieldClock) -> AbuseWatch {
        AbuseWatch {
            refusals: KeyedLimiter::new(Policy::per_minute(threshold), 1.0, clock.clone()),
            reports: KeyedLimiter::new(
                Policy {
                    limit: 1,
                    window: Duration::from_secs(600),
                },
                1.0,
                clock.clone(),
            ),
        }
    }

    /// Counts one refusal of `key` under `scope` (which limit refused)
    /// and writes the audit event when the refusals become sustained.
    pub(crate) fn refused(&self, scope: &'static str, key: &RateKey, limit: &RateLimited) {
        if matches!(self.refusals.check(key, false), Decision::Allowed { .. }) {
            return;
        }
        if matches!(self.reports.check(key, false), Decision::Allowed { .. }) {
            tracing::warn!(
                target: "spinforge::audit", event = "rate.abuse",
                scope, bucket = %key.audit_bucket(), client_ip = %key.audit_client_ip(),
                limit = limit.policy.limit,
                window_secs = limit.policy.window.as_secs(),
                "sustained requests past a rate limit"
            );
        }
    }

    pub(crate) fn forget_idle(&self) {
        self.refusals.forget_idle();
        self.reports.forget_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn bearer_keys_are_found_only_in_their_form() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer_api_key(&h), None);
        h.insert("authorization", "Bearer sf_abc".parse().expect("value"));
        assert_eq!(bearer_api_key(&h), Some("sf_abc"));
        h.insert("authorization", "Bearer eyJhbGciOi".parse().expect("value"));
        assert_eq!(bearer_api_key(&h), None, "a JWT is not an API key");
        h.insert("authorization", "Basic sf_abc".parse().expect("value"));
        assert_eq!(bearer_api_key(&h), None);
        h.insert("authorization", "bearer sf_abc".parse().expect("value"));
        assert_eq!(
            bearer_api_key(&h),
            Some("sf_abc"),
            "the scheme is case-insensitive"
        );
        h.insert("authorization", "BEARER  sf_abc ".parse().expect("value"));
        assert_eq!(bearer_api_key(&h), Some("sf_abc"));
        h.insert("authorization", "Bearersf_abc".parse().expect("value"));
        assert_eq!(bearer_api_key(&h), None);
        let long = format!("Bearer sf_{}", "a".repeat(200));
        h.insert("authorization", long.parse().expect("value"));
        assert_eq!(bearer_api_key(&h), None);
    }

    #[test]
    fn the_key_cache_forgets_after_its_ttl_and_keeps_no_secret() {
        let cache = KeyCache::default();
        let d = KeyCache::digest("sf_secret");
        cache.put(d, Arc::from("key:1"), 100);
        assert_eq!(cache.get(&d, 100).as_deref(), Some("key:1"));
        assert_eq!(
            cache.get(&d, 100 + KEY_CACHE_TTL.as_secs() - 1).as_deref(),
            Some("key:1")
        );
        assert_eq!(cache.get(&d, 100 + KEY_CACHE_TTL.as_secs()), None);
        assert_eq!(cache.get(&KeyCache::digest("sf_other"), 100), None);
    }

    #[test]
    fn abuse_is_reported_past_the_threshold_once_per_ten_minutes() {
        let clock = ShieldClock::manual(0);
        let watch = AbuseWatch::new(3, &clock);
        let key = RateKey::Ip(IpKey::new("192.0.2.1".parse::<IpAddr>().expect("ip"), 64));
        let limit = RateLimited {
            policy: Policy::per_minute(1),
            retry_after: Duration::from_secs(60),
        };
        // Three refusals are within the threshold; the fourth is abuse and
        // uses up the report; the fifth is not reported again.
        for _ in 0..3 {
            watch.refused("edge", &key, &limit);
        }
        assert!(matches!(
            watch.reports.check(&key, false),
            Decision::Allowed { .. }
        ));
        let watch = AbuseWatch::new(3, &clock);
        for _ in 0..4 {
            watch.refused("edge", &key, &limit);
        }
        assert!(matches!(
            watch.reports.check(&key, false),
            Decision::Refused(_)
        ));
    }
}
