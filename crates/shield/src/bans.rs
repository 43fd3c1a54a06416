//! The ban table: address groups refused with 403 before anything else
//! runs. Reads are one atomic pointer load and one hash lookup; writes
//! (rare: a manual ban, a brute-force finding) copy the table and swap it.
//!
//! It does not decide who to ban or write the file; the shield does both.

use crate::client_ip::{ClientIpResolver, IpKey};
use crate::clock::ShieldClock;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// One ban as listed and stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ban {
    /// The banned address group: `1.2.3.4` or `2001:db8::/64`.
    pub ip: String,
    /// Why, in words (`manual`, `failed logins`, ...).
    pub reason: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds; the ban ends at this instant.
    pub expires_at: u64,
}

/// The in-memory table. Cheap to share behind an `Arc`.
pub struct BanTable {
    current: ArcSwap<HashMap<IpKey, Arc<Ban>>>,
    clock: ShieldClock,
}

impl BanTable {
    pub fn new(clock: ShieldClock) -> BanTable {
        BanTable {
            current: ArcSwap::from_pointee(HashMap::new()),
            clock,
        }
    }

    /// True iff `key` is banned now. The hot-path check.
    #[inline]
    pub fn is_banned(&self, key: &IpKey) -> bool {
        let table = self.current.load();
        if table.is_empty() {
            return false;
        }
        match table.get(key) {
            Some(ban) => ban.expires_at > self.clock.unix_now(),
            None => false,
        }
    }

    /// Bans `key` for `ttl` (replacing an earlier ban of it), and returns
    /// the ban as stored.
    // Limitation: each ban copies the table (O(bans)), cheap for bans by
    // hand and by detection, slow for tens of thousands in a burst (a
    // concurrent map on the write side would lift this).
    pub fn ban(&self, key: IpKey, ttl: Duration, reason: &str) -> Ban {
        let now = self.clock.unix_now();
        let ban = Arc::new(Ban {
            ip: key.to_string(),
            reason: reason.to_owned(),
            created_at: now,
            expires_at: now.saturating_add(ttl.as_secs().max(1)),
        });
        self.current.rcu(|old| {
            let mut next = HashMap::clone(old);
            next.insert(key, ban.clone());
            next
        });
        Ban::clone(&ban)
    }

    /// Lifts the ban of `key`; false if there was none.
    pub fn lift(&self, key: &IpKey) -> bool {
        let mut found = false;
        self.current.rcu(|old| {
            found = old.contains_key(key);
            let mut next = HashMap::clone(old);
            next.remove(key);
            next
        });
        found
    }

    /// Bans in force now, soonest to expire first.
    pub fn list(&self) -> Vec<Ban> {
        let now = self.clock.unix_now();
        let mut bans: Vec<Ban> = self
            .current
            .load()
            .values()
            .filter(|b| b.expires_at > now)
            .map(|b| Ban::clone(b))
            .collect();
        bans.sort_by(|a, b| (a.expires_at, &a.ip).cmp(&(b.expires_at, &b.ip)));
        bans
    }

    /// Drops expired bans; returns how many.
    pub fn purge_expired(&self) -> usize {
        let now = self.clock.unix_now();
        let table = self.current.load();
        let expired = table.values().filter(|b| b.expires_at <= now).count();
        if expired > 0 {
            self.current.rcu(|old| {
                let mut next = HashMap::clone(old);
                next.retain(|_, b| b.expires_at > now);
                next
            });
        }
        expired
    }

    /// Loads stored bans, keyed with the current grouping, skipping the
    /// expired and the unreadable ones (which are logged).
    pub fn load(&self, bans: Vec<Ban>, resolver: &ClientIpResolver) {
        let now = self.clock.unix_now();
        let mut table = HashMap::new();
        for ban in bans.into_iter().filter(|b| b.expires_at > now) {
            match parse_target(&ban.ip, resolver) {
                Ok(key) => {
                    table.insert(key, Arc::new(ban));
                }
                Err(e) => tracing::warn!(ip = %ban.ip, error = %e, "stored ban skipped"),
            }
        }
        self.current.store(Arc::new(table));
    }

    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses a ban target as a person types it: an address (`1.2.3.4`,
/// `2001:db8::1`, grouped like any client) or an IPv6 group in the
/// configured prefix length (`2001:db8::/64`).
pub fn parse_target(text: &str, resolver: &ClientIpResolver) -> Result<IpKey, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(resolver.key(addr));
    }
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}` is not an IP address"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{text}` is not an IP address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("`{text}` has a bad prefix length"))?;
    let wanted = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => resolver.v6_prefix(),
    };
    if len != wanted {
        return Err(format!(
            "`{text}`: only single addresses and IPv6 /{} groups can be banned",
            resolver.v6_prefix()
        ));
    }
    Ok(resolver.key(addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_ip::ForwardedHeader;

    fn resolver() -> ClientIpResolver {
        ClientIpResolver::new(Vec::new(), ForwardedHeader::XForwardedFor, 64)
    }

    fn key(s: &str) -> IpKey {
        parse_target(s, &resolver()).expect("target")
    }

    #[test]
    fn a_ban_holds_until_its_ttl_and_not_a_second_longer() {
        let clock = ShieldClock::manual(10_000);
        let table = BanTable::new(clock.clone());
        assert!(!table.is_banned(&key("192.0.2.1")));
        let ban = table.ban(key("192.0.2.1"), Duration::from_secs(3600), "manual");
        assert_eq!(ban.expires_at, 13_600);
        assert!(table.is_banned(&key("192.0.2.1")));
        assert!(!table.is_banned(&key("192.0.2.2")));
        clock.advance(Duration::from_secs(3599));
        assert!(table.is_banned(&key("192.0.2.1")));
        clock.advance(Duration::from_secs(1));
        assert!(!table.is_banned(&key("192.0.2.1")));
        assert!(table.list().is_empty());
        assert_eq!(table.purge_expired(), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn lifting_removes_the_ban_at_once() {
        let table = BanTable::new(ShieldClock::manual(0));
        table.ban(key("2001:db8::1"), Duration::from_secs(60), "manual");
        assert!(table.is_banned(&key("2001:db8::ffff")), "same /64");
        assert!(table.lift(&key("2001:db8::5")));
        assert!(!table.is_banned(&key("2001:db8::1")));
        assert!(!table.lift(&key("2001:db8::1")));
    }

    #[test]
    fn stored_bans_load_back_and_expired_ones_are_dropped() {
        let clock = ShieldClock::manual(500);
        let table = BanTable::new(clock.clone());
        table.ban(key("198.51.100.4"), Duration::from_secs(100), "a");
        table.ban(key("2001:db8:1::/64"), Duration::from_secs(10), "b");
        let saved = table.list();
        assert_eq!(saved[0].ip, "2001:db8:1::/64");

        clock.advance(Duration::from_secs(50));
        let again = BanTable::new(clock);
        again.load(saved, &resolver());
        assert!(again.is_banned(&key("198.51.100.4")));
        assert!(!again.is_banned(&key("2001:db8:1::9")));
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn ban_targets_are_single_addresses_or_whole_groups() {
        assert_eq!(key("2001:db8::/64"), key("2001:db8::77"));
        assert_eq!(key(" 192.0.2.9 "), key("192.0.2.9"));
        for bad in ["", "nope", "10.0.0.0/8", "2001:db8::/48", "1.2.3.4/x"] {
            assert!(parse_target(bad, &resolver()).is_err(), "{bad}");
        }
    }
}
