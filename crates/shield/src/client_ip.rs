//! The one answer to "who is this client": the peer address, or, when the
//! peer is a configured trusted proxy, the address it forwarded. Limits,
//! bans, the WAF, the access log and the audit log all use it.
//!
//! Forwarding headers are read right to left, skipping trusted proxies,
//! so a client can prepend whatever it likes and change nothing. IPv6
//! clients are grouped by prefix (a /64 by default): one host usually owns
//! the whole /64, and counting its addresses apart would let it rotate
//! through 2^64 of them.

use http::HeaderMap;
use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which header a trusted proxy writes the client's address into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, most CDNs).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// Resolves client IPs. Built once from config and shared.
#[derive(Debug, Clone)]
pub struct ClientIpResolver {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
    /// IPv6 addresses are grouped by this many leading bits (1..=128).
    v6_prefix: u8,
}

/// The resolved client of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp {
    /// The client's own address, for logs and forwarding headers.
    pub addr: IpAddr,
    /// The address group limits and bans count against.
    pub key: IpKey,
    /// True iff the peer itself is a trusted proxy.
    pub peer_trusted: bool,
}

/// An address group: an IPv4 address, or an IPv6 prefix. IPv4 is kept in
/// its IPv4-mapped IPv6 form, so one integer type covers both and hashing
/// it is cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey {
    bits: u128,
    /// Prefix length in IPv6 bits: 128 for IPv4 and ungrouped IPv6.
    prefix: u8,
}

const V4_MAPPED: u128 = 0xffff_0000_0000;

impl IpKey {
    /// The key of `addr` with IPv6 grouped by `v6_prefix` bits.
    pub fn new(addr: IpAddr, v6_prefix: u8) -> IpKey {
        match canonical(addr) {
            IpAddr::V4(v4) => IpKey {
                bits: V4_MAPPED | u128::from(u32::from(v4)),
                prefix: 128,
            },
            IpAddr::V6(v6) => {
                let prefix = v6_prefix.clamp(1, 128);
                let mask = u128::MAX << (128 - u32::from(prefix));
                IpKey {
                    bits: u128::from(v6) & mask,
                    prefix,
                }
            }
        }
    }

    /// True iff this group holds `addr` (grouped with the same prefix).
    pub fn contains(&self, addr: IpAddr) -> bool {
        IpKey::new(addr, self.prefix) == *self
    }

    /// The group's first address.
    pub fn addr(&self) -> IpAddr {
        if self.bits >> 32 == V4_MAPPED >> 32 {
            IpAddr::V4(Ipv4Addr::from(self.bits as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.bits))
        }
    }

    pub fn is_ipv4(&self) -> bool {
        matches!(self.addr(), IpAddr::V4(_))
    }
}

/// `1.2.3.4`, `2001:db8::/64`, or a bare IPv6 address when ungrouped.
impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr() {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) if self.prefix == 128 => write!(f, "{v6}"),
            IpAddr::V6(v6) => write!(f, "{v6}/{}", self.prefix),
        }
    }
}

impl ClientIpResolver {
    /// `v6_prefix` is clamped to 1..=128.
    pub fn new(trusted: Vec<IpNet>, header: ForwardedHeader, v6_prefix: u8) -> ClientIpResolver {
        ClientIpResolver {
            trusted,
            header,
            v6_prefix: v6_prefix.clamp(1, 128),
        }
    }

    pub fn v6_prefix(&self) -> u8 {
        self.v6_prefix
    }

    /// The key limits and bans use for `addr`.
    pub fn key(&self, addr: IpAddr) -> IpKey {
        IpKey::new(addr, self.v6_prefix)
    }

    /// True iff `addr` is one of the configured trusted proxies.
    pub fn is_trusted(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        self.trusted.iter().any(|net| net.contains(&addr))
    }

    /// Resolves the client of a request that arrived from `peer`.
    ///
    /// From an untrusted peer the answer is the peer, whatever the headers
    /// say. From a trusted one it is the rightmost forwarded address that
    /// is not itself a trusted proxy; an entry that does not parse stops
    /// the walk at the hop that wrote it, since nothing left of it can be
    /// believed.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> ClientIp {
        let peer = canonical(peer);
        let peer_trusted = self.is_trusted(peer);
        let addr = if peer_trusted {
            self.walk(peer, headers)
        } else {
            peer
        };
        ClientIp {
            addr,
            key: self.key(addr),
            peer_trusted,
        }
    }

    fn walk(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut last = peer;
        let (name, parse): (_, fn(&str) -> Option<IpAddr>) = match self.header {
            ForwardedHeader::XForwardedFor => ("x-forwarded-for", parse_xff_entry),
            ForwardedHeader::Forwarded => ("forwarded", parse_forwarded_element),
        };
        for value in headers.get_all(name).iter().rev() {
            let Ok(value) = value.to_str() else {
                return last;
            };
            for entry in value.rsplit(',') {
                let entry = entry.trim();
                if entry.is_empty() {
                    continue;
                }
                let Some(addr) = parse(entry).map(canonical) else {
                    return last;
                };
                if !self.is_trusted(addr) {
                    return addr;
                }
                last = addr;
            }
        }
        last
    }
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) become plain IPv4.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:80`.
fn parse_xff_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(addr) = entry.parse() {
        return Some(addr);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The `for=` node of one `Forwarded` element, e.g.
/// `for="[2001:db8::1]:80";proto=https`. `unknown` and obfuscated
/// identifiers do not parse.
fn parse_forwarded_element(element: &str) -> Option<IpAddr> {
    let node = element.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let node = node.trim_matches('"');
    parse_xff_entry(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn resolver(trusted: &[&str], header: ForwardedHeader) -> ClientIpResolver {
        let nets = trusted.iter().map(|t| t.parse().expect("cidr")).collect();
        ClientIpResolver::new(nets, header, 64)
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(name, HeaderValue::from_str(v).expect("value"));
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let r = resolver(&[], ForwardedHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &["1.1.1.1"]);
        let client = r.resolve(ip("203.0.113.5"), &h);
        assert_eq!(client.addr, ip("203.0.113.5"));
        assert!(!client.peer_trusted);
    }

    #[test]
    fn forwarded_for_is_read_right_to_left_past_trusted_hops() {
        let r = resolver(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        // The client prepended a lie; the two proxies appended the truth.
        let h = headers("x-forwarded-for", &["6.6.6.6, 198.51.100.7", "10.0.0.2"]);
        let client = r.resolve(ip("10.0.0.1"), &h);
        assert_eq!(client.addr, ip("198.51.100.7"));
        assert!(client.peer_trusted);
    }

    #[test]
    fn an_unparsable_entry_stops_the_walk_at_the_hop_that_wrote_it() {
        let r = resolver(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &["1.2.3.4, garbage, 10.0.0.9"]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &h).addr, ip("10.0.0.9"));
        let none = HeaderMap::new();
        assert_eq!(r.resolve(ip("10.0.0.1"), &none).addr, ip("10.0.0.1"));
    }

    #[test]
    fn ports_and_brackets_are_dropped() {
        assert_eq!(parse_xff_entry("1.2.3.4:80"), Some(ip("1.2.3.4")));
        assert_eq!(parse_xff_entry("[2001:db8::1]:80"), Some(ip("2001:db8::1")));
        assert_eq!(parse_xff_entry("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_xff_entry("1.2.3.4:x"), None);
        assert_eq!(parse_xff_entry("unknown"), None);
    }

    #[test]
    fn the_forwarded_header_is_honoured_when_configured() {
        let r = resolver(&["127.0.0.1/32"], ForwardedHeader::Forwarded);
        let h = headers(
            "forwarded",
            &["for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https"],
        );
        assert_eq!(r.resolve(ip("127.0.0.1"), &h).addr, ip("2001:db8:cafe::17"));
        let h = headers("forwarded", &["for=unknown"]);
        assert_eq!(r.resolve(ip("127.0.0.1"), &h).addr, ip("127.0.0.1"));
        // The other header is ignored entirely.
        let h = headers("x-forwarded-for", &["9.9.9.9"]);
        assert_eq!(r.resolve(ip("127.0.0.1"), &h).addr, ip("127.0.0.1"));
    }

    #[test]
    fn ipv6_addresses_in_one_slash_64_share_a_key() {
        let a = IpKey::new(ip("2001:db8:1:2::1"), 64);
        let b = IpKey::new(ip("2001:db8:1:2:ffff::9"), 64);
        let c = IpKey::new(ip("2001:db8:1:3::1"), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_ne!(
            IpKey::new(ip("2001:db8::1"), 128),
            IpKey::new(ip("2001:db8::2"), 128)
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_is_the_same_client_as_ipv4() {
        let mapped = IpKey::new(ip("::ffff:192.0.2.1"), 64);
        let plain = IpKey::new(ip("192.0.2.1"), 64);
        assert_eq!(mapped, plain);
        assert_eq!(plain.to_string(), "192.0.2.1");
        assert!(plain.is_ipv4());
        assert_ne!(plain, IpKey::new(ip("192.0.2.2"), 64));
    }
}
