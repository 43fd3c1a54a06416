//! Brute-force defence: growing delays per client IP (in memory) and per
//! account (in the store, through the caller), and the delay schedule both
//! share. Lockouts themselves are counted in the store so they survive a
//! restart.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures before delays start.
const FREE_FAILURES: u32 = 2;
/// The first delay, doubled with each further failure.
const BASE_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(8);
/// At most this many addresses are tracked; past it, the stalest half is
/// dropped (an attacker with that many addresses is a job for the shield).
const MAX_TRACKED: usize = 100_000;

/// The delay owed before the next login attempt after `failures` recent
/// failures: none for the first few, then doubling up to a cap.
pub fn delay_after(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES - 1).min(16);
    (BASE_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
}

/// The key an address is counted under: IPv6 clients by their /64, as a
/// single host usually holds a whole /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// Recent failed logins per client address.
pub struct IpThrottle {
    window: Duration,
    entries: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl IpThrottle {
    pub fn new(window: Duration) -> IpThrottle {
        IpThrottle {
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Failures of this address inside the window.
    pub fn failures(&self, ip: IpAddr) -> u32 {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(&client_key(ip)) {
            Some((count, last)) if last.elapsed() < self.window => *count,
            _ => 0,
        }
    }

    pub fn record_failure(&self, ip: IpAddr) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_TRACKED {
            let window = self.window;
            entries.retain(|_, (_, last)| last.elapsed() < window / 2);
        }
        let entry = entries.entry(client_key(ip)).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = Instant::now();
    }

    pub fn clear(&self, ip: IpAddr) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&client_key(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_start_after_the_free_failures_and_double_to_a_cap() {
        assert_eq!(delay_after(0), Duration::ZERO);
        assert_eq!(delay_after(2), Duration::ZERO);
        assert_eq!(delay_after(3), Duration::from_millis(250));
        assert_eq!(delay_after(4), Duration::from_millis(500));
        assert_eq!(delay_after(5), Duration::from_secs(1));
        assert_eq!(delay_after(40), MAX_DELAY);
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        let throttle = IpThrottle::new(Duration::from_secs(300));
        throttle.record_failure(a);
        throttle.record_failure(b);
        assert_eq!(throttle.failures(a), 2);
        assert_eq!(throttle.failures(c), 0);
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(
            client_key(mapped),
            "10.0.0.1".parse::<IpAddr>().expect("ip")
        );
        throttle.clear(b);
        assert_eq!(throttle.failures(a), 0);
    }
}
