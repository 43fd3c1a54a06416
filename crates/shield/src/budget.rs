//! Failure budgets: GCRA like [`crate::rate::KeyedLimiter`], except that a
//! charge can be given back. The hub charges an auth attempt before it
//! runs (so a burst of parallel guesses cannot outrun the count) and gives
//! the charge back when the attempt succeeded, so the budget counts
//! failures, not attempts: a team behind one NAT that logs in correctly
//! never runs it dry. governor has no refund, hence this small own copy.
//!
//! It keeps one theoretical arrival time per key on the shield's clock and
//! nothing else; emergency mode charges the tighter policy's interval.

use crate::clock::ShieldClock;
use crate::rate::{Policy, RateLimited};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

/// Keys kept before idle ones are dropped early (an attacker with more
/// addresses than this is a job for bans).
const MAX_KEYS: usize = 100_000;

/// One policy per key, with refunds.
pub struct FailureBudget<K: Hash + Eq + Clone> {
    policy: Policy,
    emergency_policy: Policy,
    clock: ShieldClock,
    /// Theoretical arrival time per key (ns of the clock's elapsed time).
    tats: Mutex<HashMap<K, u64>>,
}

/// What one charge cost, to give back with [`FailureBudget::refund`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    interval: u64, // ns
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn interval(policy: Policy) -> u64 {
    (nanos(policy.window) / u64::from(policy.limit.max(1))).max(1)
}

impl<K: Hash + Eq + Clone> FailureBudget<K> {
    pub fn new(policy: Policy, emergency_factor: f64, clock: ShieldClock) -> FailureBudget<K> {
        FailureBudget {
            policy,
            emergency_policy: policy.scaled(emergency_factor),
            clock,
            tats: Mutex::new(HashMap::new()),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Charges one attempt of `key`, or refuses it (charging nothing) when
    /// the budget is spent.
    pub fn charge(&self, key: &K, emergency: bool) -> Result<Charge, RateLimited> {
        let policy = if emergency {
            self.emergency_policy
        } else {
            self.policy
        };
        let step = interval(policy);
        let window = nanos(policy.window);
        let now = nanos(self.clock.elapsed());
        let mut tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        if tats.len() >= MAX_KEYS {
            tats.retain(|_, tat| *tat > now);
        }
        let tat = tats.get(key).copied().unwrap_or(now).max(now);
        let next = tat.saturating_add(step);
        if next - now > window {
            return Err(RateLimited {
                policy,
                retry_after: Duration::from_nanos(next - now - window),
            });
        }
        tats.insert(key.clone(), next);
        Ok(Charge { interval: step })
    }

    /// Gives back a charge of `key`: the attempt it paid for succeeded.
    pub fn refund(&self, key: &K, charge: Charge) {
        let now = nanos(self.clock.elapsed());
        let mut tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tat) = tats.get_mut(key) {
            *tat = tat.saturating_sub(charge.interval).max(now);
        }
    }

    /// Forgets keys whose budget is full again.
    pub fn forget_idle(&self) {
        let now = nanos(self.clock.elapsed());
        let mut tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        tats.retain(|_, tat| *tat > now);
        tats.shrink_to_fit();
    }

    /// Keys with state.
    pub fn len(&self) -> usize {
        self.tats.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> (FailureBudget<&'static str>, ShieldClock) {
        let clock = ShieldClock::manual(1_700_000_000);
        (
            FailureBudget::new(Policy::HUB_AUTH, 0.5, clock.clone()),
            clock,
        )
    }

    #[test]
    fn five_failures_spend_the_budget_and_one_comes_back_every_three_minutes() {
        let (budget, clock) = budget();
        for _ in 0..5 {
            budget.charge(&"a", false).expect("within budget");
        }
        let refused = budget.charge(&"a", false).expect_err("sixth");
        assert_eq!(refused.retry_after, Duration::from_secs(180));
        assert!(budget.charge(&"b", false).is_ok(), "keys are apart");
        clock.advance(Duration::from_secs(179));
        assert!(budget.charge(&"a", false).is_err());
        clock.advance(Duration::from_secs(1));
        assert!(budget.charge(&"a", false).is_ok());
    }

    #[test]
    fn refunded_successes_never_spend_the_budget() {
        let (budget, _clock) = budget();
        for _ in 0..50 {
            let charge = budget.charge(&"nat", false).expect("successes are free");
            budget.refund(&"nat", charge);
        }
        for _ in 0..5 {
            budget
                .charge(&"nat", false)
                .expect("the failure budget is whole");
        }
        assert!(budget.charge(&"nat", false).is_err());
    }

    #[test]
    fn emergency_mode_halves_the_budget_and_idle_keys_go() {
        let (budget, clock) = budget();
        budget.charge(&"a", true).expect("1");
        budget.charge(&"a", true).expect("2");
        assert!(budget.charge(&"a", true).is_err());
        assert_eq!(budget.len(), 1);
        clock.advance(Duration::from_secs(900));
        budget.forget_idle();
        assert!(budget.is_empty());
    }
}
