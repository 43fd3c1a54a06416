//! Open connections per client address, checked when a connection is
//! accepted (so once per connection, never per request). Trusted proxies
//! and allowlisted clients are not counted: many clients share them.

use crate::client_ip::{ClientIpResolver, IpKey};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub struct ConnectionGate {
    max_per_client: u32,
    resolver: ClientIpResolver,
    allowlist: Vec<IpNet>,
    open: Mutex<HashMap<IpKey, u32>>,
}

/// Held for as long as the connection is open.
pub struct ConnectionPermit {
    gate: Option<(Arc<ConnectionGate>, IpKey)>,
}

impl ConnectionGate {
    pub fn new(
        max_per_client: u32,
        resolver: ClientIpResolver,
        allowlist: Vec<IpNet>,
    ) -> ConnectionGate {
        ConnectionGate {
            max_per_client,
            resolver,
            allowlist,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A permit for one more connection from `peer`, or `None` when the
    /// peer already has the maximum open.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<ConnectionPermit> {
        if self.resolver.is_trusted(peer) || self.allowlist.iter().any(|n| n.contains(&peer)) {
            return Some(ConnectionPermit { gate: None });
        }
        let key = self.resolver.key(peer);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.max_per_client {
            return None;
        }
        *count += 1;
        Some(ConnectionPermit {
            gate: Some((self.clone(), key)),
        })
    }

    /// Connections counted for `peer`'s group now.
    pub fn open_for(&self, peer: IpAddr) -> u32 {
        let key = self.resolver.key(peer);
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&key).copied().unwrap_or(0)
    }
}

impl std::fmt::Debug for ConnectionGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionGate")
            .field("max_per_client", &self.max_per_client)
            .finish_non_exhaustive()
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Some((gate, key)) = self.gate.take() {
            let mut open = gate.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = open.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_ip::ForwardedHeader;

    fn gate(trusted: &[&str]) -> Arc<ConnectionGate> {
        let trusted = trusted.iter().map(|t| t.parse().expect("cidr")).collect();
        let resolver = ClientIpResolver::new(trusted, ForwardedHeader::XForwardedFor, 64);
        Arc::new(ConnectionGate::new(2, resolver, Vec::new()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_client_gets_its_maximum_and_one_more_after_closing_one() {
        let g = gate(&[]);
        let a = g.admit(ip("192.0.2.1")).expect("first");
        let _b = g.admit(ip("192.0.2.1")).expect("second");
        assert!(g.admit(ip("192.0.2.1")).is_none(), "third refused");
        assert!(g.admit(ip("192.0.2.2")).is_some(), "others unaffected");
        drop(a);
        assert_eq!(g.open_for(ip("192.0.2.1")), 1);
        assert!(g.admit(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn one_ipv6_slash_64_is_one_client_and_trusted_proxies_are_free() {
        let g = gate(&["10.0.0.0/8"]);
        let _a = g.admit(ip("2001:db8::1")).expect("first");
        let _b = g.admit(ip("2001:db8::2")).expect("second");
        assert!(g.admit(ip("2001:db8::3")).is_none());
        let proxies: Vec<_> = (0..5).map(|_| g.admit(ip("10.0.0.1"))).collect();
        assert!(proxies.iter().all(Option::is_some));
        assert_eq!(g.open_for(ip("10.0.0.1")), 0);
    }
}
