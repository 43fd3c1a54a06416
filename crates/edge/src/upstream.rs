//! Proxy upstreams: parsing the operator's URL, and the policy that keeps
//! a proxy site from reaching private, loopback or metadata addresses.
//!
//! The policy is applied twice: when a site is saved (IP literals and a
//! first DNS lookup) and again on every connect, through [`PolicyResolver`],
//! so a name that later resolves to a private address (DNS rebinding) is
//! still refused.

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A parsed upstream URL: `http[s]://host[:port][/base]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port`, as sent in the `Host` header.
    pub authority: http::uri::Authority,
    pub host: String,
    pub port: u16,
    /// The path prefix requests are placed under, without a trailing `/`.
    pub base_path: String,
    /// `https://`: the edge speaks TLS to it and verifies its certificate.
    pub tls: bool,
    /// `authority` as a `Host` header value, made once here so that no
    /// proxied request has to copy it.
    pub host_header: http::HeaderValue,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamError {
    #[error("upstream must be an absolute http:// or https:// URL")]
    NotHttpUrl,
    #[error("upstream URL must not carry credentials, a query or a fragment")]
    ExtraParts,
    #[error(
        "upstream address {0} is in a private, loopback or metadata range that is not allowlisted"
    )]
    Forbidden(IpAddr),
    #[error("upstream host {0} does not resolve")]
    Unresolvable(String),
}

impl Upstream {
    /// Parses an operator's upstream URL, `http://` or `https://`.
    pub fn parse(url: &str) -> Result<Upstream, UpstreamError> {
        let uri: http::Uri = url.parse().map_err(|_| UpstreamError::NotHttpUrl)?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(UpstreamError::NotHttpUrl),
        };
        let authority = uri.authority().ok_or(UpstreamError::NotHttpUrl)?.clone();
        if authority.as_str().contains('@') || uri.query().is_some() || url.contains('#') {
            return Err(UpstreamError::ExtraParts);
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(UpstreamError::NotHttpUrl);
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let host_header = host_header(&authority);
        Ok(Upstream {
            authority,
            host,
            port,
            base_path,
            tls,
            host_header,
        })
    }

    /// An upstream on a local address the edge itself chose (an app).
    pub fn local(addr: SocketAddr) -> Upstream {
        let authority = addr
            .to_string()
            .parse()
            .unwrap_or_else(|_| http::uri::Authority::from_static("127.0.0.1"));
        let host_header = host_header(&authority);
        Upstream {
            authority,
            host: addr.ip().to_string(),
            port: addr.port(),
            base_path: String::new(),
            tls: false,
            host_header,
        }
    }

    /// The IP if the host is a literal address.
    pub fn literal_ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// An authority is always a valid header value: `Authority` admits only
/// URI characters.
fn host_header(authority: &http::uri::Authority) -> http::HeaderValue {
    http::HeaderValue::from_str(authority.as_str())
        .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"))
}

/// Which upstream addresses a proxy site may reach.
#[derive(Debug, Clone, Default)]
pub struct UpstreamPolicy {
    /// Ranges an admin has explicitly allowed despite being special.
    pub allow: Vec<IpNet>,
}

impl UpstreamPolicy {
    /// True iff `ip` is a public address or inside an allowlisted range.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allow.iter().any(|net| net.contains(&ip)) || !is_special(ip)
    }

    /// Checks a parsed upstream now: a literal IP directly, a name by
    /// resolving it. Every address a name resolves to must be permitted.
    pub async fn check(&self, upstream: &Upstream) -> Result<(), UpstreamError> {
        if let Some(ip) = upstream.literal_ip() {
            return if self.permits(ip) {
                Ok(())
            } else {
                Err(UpstreamError::Forbidden(ip))
            };
        }
        let addrs = tokio::net::lookup_host((upstream.host.as_str(), upstream.port))
            .await
            .map_err(|_| UpstreamError::Unresolvable(upstream.host.clone()))?;
        let mut any = false;
        for addr in addrs {
            any = true;
            if !self.permits(addr.ip()) {
                return Err(UpstreamError::Forbidden(addr.ip()));
            }
        }
        if any {
            Ok(())
        } else {
            Err(UpstreamError::Unresolvable(upstream.host.clone()))
        }
    }
}

/// An IPv4-mapped IPv6 address is judged as the IPv4 address it carries.
/// So are the IPv6 forms that carry an IPv4 address a router may unwrap:
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4
/// (`2002:AABB:CCDD::/48`).
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let embedded = |hi: u16, lo: u16| {
        IpAddr::V4(std::net::Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        ))
    };
    let compatible = s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1);
    // IPv4-translated, ::ffff:0:a.b.c.d (RFC 2765).
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return embedded(s[6], s[7]);
    }
    if compatible || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]) {
        return embedded(s[6], s[7]);
    }
    if s[0] == 0x2002 {
        return embedded(s[1], s[2]);
    }
    ip
}

/// Loopback, private, link-local, shared (CGNAT), unspecified, multicast,
/// documentation and cloud metadata addresses.
fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (b == 18 || b == 19)) // benchmarking, 198.18.0.0/15
                || a >= 240
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local, includes fd00:ec2::254
                || (first & 0xffc0) == 0xfe80 // link local
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || (first == 0x2001 && v6.segments()[1] == 0) // Teredo, 2001::/32
                || (first == 0x64 && v6.segments()[1] == 0xff9b) // NAT64, incl. local-use /48
                || v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0xa9fe, 0xa9fe)
            // NAT64 metadata
        }
    }
}

/// A DNS resolver for the proxy's connector that drops every address the
/// policy does not permit, and fails if none is left.
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    policy: Arc<UpstreamPolicy>,
}

impl PolicyResolver {
    pub fn new(policy: Arc<UpstreamPolicy>) -> PolicyResolver {
        PolicyResolver { policy }
    }
}

type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower_service::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = found.filter(|a| policy.permits(a.ip())).collect();
            if allowed.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "upstream resolves only to addresses the policy forbids",
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn special_ranges_are_refused_by_default() {
        let policy = UpstreamPolicy::default();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "::ffff:0:7f00:1",
            "198.18.0.1",
            "64:ff9b:1::1",
            "2001:0:4136:e378::1",
        ] {
            assert!(!policy.permits(ip(bad)), "{bad} should be refused");
        }
        assert!(policy.permits(ip("93.184.216.34")));
        assert!(policy.permits(ip("2606:4700::1")));
    }

    #[test]
    fn an_allowlisted_range_is_permitted() {
        let policy = UpstreamPolicy {
            allow: vec!["127.0.0.0/8".parse().expect("net")],
        };
        assert!(policy.permits(ip("127.0.0.1")));
        assert!(policy.permits(ip("::ffff:127.0.0.2")));
        assert!(!policy.permits(ip("10.0.0.1")));
    }

    #[test]
    fn upstream_urls_parse_strictly() {
        let up = Upstream::parse("http://127.0.0.1:9000/app/").expect("parse");
        assert_eq!(up.host, "127.0.0.1");
        assert_eq!(up.port, 9000);
        assert_eq!(up.base_path, "/app");
        assert_eq!(
            Upstream::parse("ftp://x").err(),
            Some(UpstreamError::NotHttpUrl)
        );
        assert_eq!(
            Upstream::parse("/relative").err(),
            Some(UpstreamError::NotHttpUrl)
        );
        assert_eq!(
            Upstream::parse("http://u:p@host/").err(),
            Some(UpstreamError::ExtraParts)
        );
        assert_eq!(
            Upstream::parse("http://host/?a=1").err(),
            Some(UpstreamError::ExtraParts)
        );
        assert_eq!(Upstream::parse("http://[::1]:80").expect("v6").host, "::1");
    }

    #[tokio::test]
    async fn check_refuses_a_name_that_resolves_to_loopback() {
        let up = Upstream::parse("http://localhost:1/").expect("parse");
        let got = UpstreamPolicy::default().check(&up).await;
        assert!(matches!(got, Err(UpstreamError::Forbidden(_))), "{got:?}");
    }
}
