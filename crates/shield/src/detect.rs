//! Behaviour detection: per client, failed logins, requests and error
//! responses over moving windows. Each window is a GCRA bucket (the same
//! governor type as the rate limits), so "more than N in a window" costs
//! one atomic update per event and forgets idle clients by itself.
//!
//! The detector only reports findings; the shield decides whether a
//! finding bans and writes the audit event.

use crate::client_ip::IpKey;
use crate::clock::ShieldClock;
use crate::rate::{Decision, KeyedLimiter, Policy};
use std::time::Duration;

/// What a client was caught doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Finding {
    /// More failed logins than the window allows.
    BruteForce,
    /// More requests than the window allows.
    RequestFlood,
    /// More 4xx/5xx responses than the window allows.
    ErrorFlood,
    /// More WAF blocks than the window allows.
    WafAttacks,
    /// One WAF block of critical severity (when configured to ban at once).
    WafCritical,
}

impl Finding {
    pub fn as_str(self) -> &'static str {
        match self {
            Finding::BruteForce => "failed logins",
            Finding::RequestFlood => "request flood",
            Finding::ErrorFlood => "error flood",
            Finding::WafAttacks => "waf blocks",
            Finding::WafCritical => "waf critical",
        }
    }
}

/// Thresholds: each is "at most `limit` in `window`".
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub failed_logins: Policy,
    pub requests: Policy,
    pub errors: Policy,
    pub waf_blocks: Policy,
}

pub struct Detector {
    failed_logins: KeyedLimiter<IpKey>,
    requests: KeyedLimiter<IpKey>,
    errors: KeyedLimiter<IpKey>,
    waf_blocks: KeyedLimiter<IpKey>,
    /// One report per client and finding per five minutes, so a flood
    /// raises one audit event, not one per request.
    reported: KeyedLimiter<(IpKey, Finding)>,
}

impl Detector {
    pub fn new(thresholds: Thresholds, clock: ShieldClock) -> Detector {
        // Emergency mode tightens limits, not detection: factor 1.
        let window = |policy| KeyedLimiter::new(policy, 1.0, clock.clone());
        Detector {
            failed_logins: window(thresholds.failed_logins),
            requests: window(thresholds.requests),
            errors: window(thresholds.errors),
            waf_blocks: window(thresholds.waf_blocks),
            reported: KeyedLimiter::new(
                Policy {
                    limit: 1,
                    window: Duration::from_secs(300),
                },
                1.0,
                clock,
            ),
        }
    }

    /// Counts a request; reports a flood when it is over the threshold.
    pub fn request(&self, key: IpKey) -> Option<Finding> {
        self.count(&self.requests, key, Finding::RequestFlood)
    }

    /// Counts a response status; 4xx and 5xx are errors.
    pub fn response(&self, key: IpKey, status: u16) -> Option<Finding> {
        if status < 400 {
            return None;
        }
        self.count(&self.errors, key, Finding::ErrorFlood)
    }

    /// Counts a failed login.
    pub fn failed_login(&self, key: IpKey) -> Option<Finding> {
        self.count(&self.failed_logins, key, Finding::BruteForce)
    }

    /// Counts a WAF block.
    pub fn waf_block(&self, key: IpKey) -> Option<Finding> {
        self.count(&self.waf_blocks, key, Finding::WafAttacks)
    }

    fn count(&self, window: &KeyedLimiter<IpKey>, key: IpKey, finding: Finding) -> Option<Finding> {
        match window.check(&key, false) {
            Decision::Allowed { .. } => None,
            Decision::Refused(_) => Some(finding),
        }
    }

    /// True the first time a finding is raised for a client in a while:
    /// the caller writes the audit event only then.
    pub fn first_report(&self, key: IpKey, finding: Finding) -> bool {
        matches!(
            self.reported.check(&(key, finding), false),
            Decision::Allowed { .. }
        )
    }

    pub fn forget_idle(&self) {
        self.failed_logins.forget_idle();
        self.requests.forget_idle();
        self.errors.forget_idle();
        self.waf_blocks.forget_idle();
        self.reported.forget_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn detector() -> (Detector, ShieldClock) {
        let clock = ShieldClock::manual(0);
        let thresholds = Thresholds {
            failed_logins: Policy {
                limit: 5,
                window: Duration::from_secs(300),
            },
            requests: Policy::per_minute(1000),
            errors: Policy::per_minute(50),
            waf_blocks: Policy::per_minute(20),
        };
        (Detector::new(thresholds, clock.clone()), clock)
    }

    fn key(s: &str) -> IpKey {
        IpKey::new(s.parse::<IpAddr>().expect("ip"), 64)
    }

    #[test]
    fn the_sixth_failed_login_in_five_minutes_is_brute_force() {
        let (d, clock) = detector();
        for _ in 0..5 {
            assert_eq!(d.failed_login(key("192.0.2.1")), None);
        }
        assert_eq!(d.failed_login(key("192.0.2.1")), Some(Finding::BruteForce));
        assert_eq!(d.failed_login(key("192.0.2.2")), None);
        clock.advance(Duration::from_secs(300));
        for _ in 0..5 {
            assert_eq!(d.failed_login(key("192.0.2.1")), None);
        }
    }

    #[test]
    fn request_and_error_floods_trip_one_past_their_thresholds() {
        let (d, _clock) = detector();
        let k = key("2001:db8::1");
        for _ in 0..1000 {
            assert_eq!(d.request(k), None);
        }
        assert_eq!(d.request(k), Some(Finding::RequestFlood));
        for _ in 0..100 {
            assert_eq!(d.response(k, 200), None, "successes never count");
        }
        for _ in 0..50 {
            assert_eq!(d.response(k, 404), None);
        }
        assert_eq!(d.response(k, 502), Some(Finding::ErrorFlood));
    }

    #[test]
    fn a_finding_is_reported_once_per_five_minutes() {
        let (d, clock) = detector();
        let k = key("192.0.2.7");
        assert!(d.first_report(k, Finding::ErrorFlood));
        assert!(!d.first_report(k, Finding::ErrorFlood));
        assert!(d.first_report(k, Finding::RequestFlood));
        clock.advance(Duration::from_secs(300));
        assert!(d.first_report(k, Finding::ErrorFlood));
    }
}
