//! Rate limits: GCRA (governor) per key, with the shield's injectable
//! clock, an emergency twin, and the refusal headers of the IETF
//! `RateLimit` draft. The edge keys by client IP; the hub reuses the same
//! type for its auth endpoints and its API (see [`Policy::HUB_AUTH`] and
//! [`Policy::HUB_API`]).
//!
//! A policy of `limit` per `window` lets a fresh key spend `limit` at once
//! and earns one back every `window / limit`, which is GCRA's smooth
//! version of a sliding window.

use crate::clock::ShieldClock;
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderName, HeaderValue};
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

/// At most `limit` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub limit: u32,
    #[serde(with = "secs")]
    pub window: Duration,
}

impl Policy {
    /// Hub login and similar: 5 per 15 minutes, per IP and per account.
    pub const HUB_AUTH: Policy = Policy {
        limit: 5,
        window: Duration::from_secs(15 * 60),
    };
    /// Hub API: 100 per minute.
    pub const HUB_API: Policy = Policy {
        limit: 100,
        window: Duration::from_secs(60),
    };

    pub const fn per_minute(limit: u32) -> Policy {
        Policy {
            limit,
            window: Duration::from_secs(60),
        }
    }

    /// This policy with its limit multiplied by `factor`, never below 1.
    pub fn scaled(self, factor: f64) -> Policy {
        let limit = (f64::from(self.limit) * factor).floor();
        Policy {
            limit: (limit as u32).max(1),
            window: self.window,
        }
    }

    fn quota(self) -> Quota {
        let limit = NonZeroU32::new(self.limit).unwrap_or(NonZeroU32::MIN);
        let per_cell = (self.window / limit.get()).max(Duration::from_nanos(1));
        Quota::with_period(per_cell)
            .unwrap_or_else(|| Quota::per_second(limit))
            .allow_burst(limit)
    }
}

type Gcra<K> = RateLimiter<K, DashMapStateStore<K>, ShieldClock, StateInformationMiddleware>;

/// One policy applied per key, with a tighter twin for emergency mode.
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    policy: Policy,
    emergency_policy: Policy,
    normal: Gcra<K>,
    emergency: Gcra<K>,
    clock: ShieldClock,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed {
        /// Requests left before the next refusal.
        remaining: u32,
    },
    Refused(RateLimited),
}

/// A refusal, with what the client needs to back off properly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// The policy that refused (already scaled in emergency mode).
    pub policy: Policy,
    /// How long until one more request would be allowed.
    pub retry_after: Duration,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `emergency_factor` scales the limit when [`KeyedLimiter::check`] is
    /// told emergency mode is on.
    pub fn new(policy: Policy, emergency_factor: f64, clock: ShieldClock) -> KeyedLimiter<K> {
        let emergency_policy = policy.scaled(emergency_factor);
        KeyedLimiter {
            policy,
            emergency_policy,
            normal: RateLimiter::dashmap_with_clock(policy.quota(), clock.clone())
                .with_middleware(),
            emergency: RateLimiter::dashmap_with_clock(emergency_policy.quota(), clock.clone())
                .with_middleware(),
            clock,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Counts one request for `key` and says whether it may proceed.
    pub fn check(&self, key: &K, emergency: bool) -> Decision {
        let (gcra, policy) = if emergency {
            (&self.emergency, self.emergency_policy)
        } else {
            (&self.normal, self.policy)
        };
        match gcra.check_key(key) {
            Ok(snapshot) => Decision::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Decision::Refused(RateLimited {
                policy,
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
        }
    }

    /// Forgets keys whose buckets are full again, and returns the memory.
    /// Call it now and then; a key that comes back starts fresh, which is
    /// exactly the state it had.
    pub fn forget_idle(&self) {
        for gcra in [&self.normal, &self.emergency] {
            gcra.retain_recent();
            gcra.shrink_to_fit();
        }
    }

    /// Keys with state (normal and emergency together).
    pub fn len(&self) -> usize {
        self.normal.len() + self.emergency.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RateLimited {
    /// Whole seconds to wait, rounded up so a client that obeys is never
    /// refused again for being early.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }

    /// `Retry-After`, `RateLimit-Policy` and `RateLimit` (draft-ietf-
    /// httpapi-ratelimit-headers) for a 429 response.
    pub fn headers(&self) -> [(HeaderName, HeaderValue); 3] {
        let wait = self.retry_after_secs();
        let policy = format!(
            "\"default\";q={};w={}",
            self.policy.limit,
            self.policy.window.as_secs()
        );
        let state = format!("\"default\";r=0;t={wait}");
        [
            (http::header::RETRY_AFTER, HeaderValue::from(wait)),
            (
                HeaderName::from_static("ratelimit-policy"),
                HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("\"default\"")),
            ),
            (
                HeaderName::from_static("ratelimit"),
                HeaderValue::from_str(&state).unwrap_or(HeaderValue::from_static("\"default\"")),
            ),
        ]
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(policy: Policy) -> (KeyedLimiter<&'static str>, ShieldClock) {
        let clock = ShieldClock::manual(0);
        (KeyedLimiter::new(policy, 0.1, clock.clone()), clock)
    }

    fn allowed(d: Decision) -> bool {
        matches!(d, Decision::Allowed { .. })
    }

    #[test]
    fn auth_policy_allows_five_per_fifteen_minutes_and_refuses_the_sixth() {
        let (l, clock) = limiter(Policy::HUB_AUTH);
        for n in 1..=5 {
            assert!(allowed(l.check(&"ip", false)), "attempt {n}");
        }
        let Decision::Refused(refusal) = l.check(&"ip", false) else {
            panic!("the sixth attempt must be refused");
        };
        assert_eq!(refusal.retry_after, Duration::from_secs(180));
        assert_eq!(refusal.retry_after_secs(), 180);

        // Another key is untouched.
        assert!(allowed(l.check(&"other", false)));

        // One attempt is earned back every 3 minutes, not before.
        clock.advance(Duration::from_secs(179));
        assert!(!allowed(l.check(&"ip", false)));
        clock.advance(Duration::from_secs(1));
        assert!(allowed(l.check(&"ip", false)));
        assert!(!allowed(l.check(&"ip", false)));

        // After the whole window the full burst is back.
        clock.advance(Duration::from_secs(15 * 60));
        for _ in 0..5 {
            assert!(allowed(l.check(&"ip", false)));
        }
        assert!(!allowed(l.check(&"ip", false)));
    }

    #[test]
    fn api_policy_allows_exactly_one_hundred_per_minute() {
        let (l, _clock) = limiter(Policy::HUB_API);
        for n in 0..100 {
            let Decision::Allowed { remaining } = l.check(&"k", false) else {
                panic!("request {n} refused");
            };
            assert_eq!(remaining, 99 - n);
        }
        assert!(!allowed(l.check(&"k", false)));
    }

    #[test]
    fn emergency_mode_scales_the_limit_and_normal_mode_restores_it() {
        let (l, _clock) = limiter(Policy::per_minute(100));
        for _ in 0..10 {
            assert!(allowed(l.check(&"k", true)));
        }
        let Decision::Refused(r) = l.check(&"k", true) else {
            panic!("the eleventh emergency request must be refused");
        };
        assert_eq!(r.policy.limit, 10);
        assert!(allowed(l.check(&"k2", false)));
        for _ in 0..99 {
            assert!(allowed(l.check(&"k2", false)));
        }
        assert!(!allowed(l.check(&"k2", false)));
    }

    #[test]
    fn scaling_never_goes_below_one() {
        assert_eq!(Policy::per_minute(5).scaled(0.1).limit, 1);
        assert_eq!(Policy::per_minute(1000).scaled(0.1).limit, 100);
    }

    #[test]
    fn refusal_headers_follow_the_ietf_draft() {
        let r = RateLimited {
            policy: Policy::per_minute(60),
            retry_after: Duration::from_millis(1500),
        };
        let [(n1, v1), (n2, v2), (n3, v3)] = r.headers();
        assert_eq!((n1.as_str(), v1.to_str().ok()), ("retry-after", Some("2")));
        assert_eq!(
            (n2.as_str(), v2.to_str().ok()),
            ("ratelimit-policy", Some("\"default\";q=60;w=60"))
        );
        assert_eq!(
            (n3.as_str(), v3.to_str().ok()),
            ("ratelimit", Some("\"default\";r=0;t=2"))
        );
    }

    #[test]
    fn idle_keys_are_forgotten_once_their_bucket_is_full_again() {
        let (l, clock) = limiter(Policy::per_minute(10));
        l.check(&"a", false);
        l.check(&"b", false);
        assert_eq!(l.len(), 2);
        clock.advance(Duration::from_secs(61));
        l.forget_idle();
        assert_eq!(l.len(), 0);
    }
}
