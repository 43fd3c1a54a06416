//! The `[shield]` section of the config file, with every default in one
//! place. Unknown keys are an error, like everywhere else in the file.

use crate::client_ip::ForwardedHeader;
use crate::headers::HeaderSettings;
use ipnet::IpNet;
use std::path::PathBuf;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShieldConfig {
    /// Master switch of every stage below (client IPs are still resolved).
    /// Only for measuring the shield's cost; never turn it off in production.
    pub enabled: bool,
    /// Which header trusted proxies (`[edge] trusted_proxies`) write.
    pub client_ip_header: ForwardedHeader,
    /// IPv6 clients are grouped by this prefix length for limits and bans.
    pub ipv6_prefix: u8,
    /// Clients that skip rate limits, detection and bans (and the WAF).
    pub allowlist: Vec<IpNet>,

    /// Largest request body, in bytes (sites may set their own).
    pub max_body_bytes: u64,
    pub max_headers: usize,
    /// Sum of header name and value lengths, in bytes.
    pub max_header_bytes: usize,
    /// Longest path and query, in bytes.
    pub max_uri_bytes: usize,
    /// Open connections per client address (0: no cap).
    pub max_connections_per_ip: u32,
    pub h2_max_concurrent_streams: u32,
    /// Streams a client may open and reset before the server has accepted
    /// them (HTTP/2 rapid reset).
    pub h2_max_pending_reset_streams: usize,
    /// Largest header block, in bytes: bounds CONTINUATION floods.
    pub h2_max_header_list_bytes: u32,

    /// Requests per minute per client across the edge (0: no edge-wide
    /// limit). Sites add their own limits on top.
    pub rate_per_minute: u32,
    /// The highest per-minute rate a site owner may set.
    pub site_rate_ceiling_per_minute: u32,
    /// Emergency mode multiplies every rate limit by this (0 < f <= 1).
    pub emergency_factor: f64,

    /// Failed logins allowed per window before a ban.
    pub failed_logins: u32,
    pub failed_login_window_secs: u64,
    /// Requests per minute per client before an audit event.
    pub requests_per_minute: u32,
    /// 4xx/5xx responses per minute per client before an audit event.
    pub errors_per_minute: u32,
    /// Also ban for request floods / error floods (brute force always bans).
    pub ban_on_request_flood: bool,
    pub ban_on_error_flood: bool,
    pub ban_ttl_secs: u64,

    /// Mirror bans into an nftables set (see docs/CONFIGURATION.md).
    pub nftables: bool,
    pub nftables_table: String,
    pub nftables_set_v4: String,
    pub nftables_set_v6: String,

    pub headers: HeaderSettings,

    // ---- web-application firewall (issue #7) ----
    /// WAF blocks per minute per client before a ban.
    pub waf_blocks_per_minute: u32,
    /// Ban at once on a block that includes a critical-severity rule
    /// (SQL injection, XSS, command injection, traversal).
    pub waf_ban_on_critical: bool,

    // ---- hub limits and sustained abuse (issue #6, branch shield2) ----
    /// Hub auth endpoints (login, browser login, setup, TOTP
    /// confirmation, single sign-on callback and code exchange): this many
    /// *failed* requests per `hub_auth_window_secs`, per client address.
    /// Successes cost nothing; accounts are guarded by the identity
    /// lockout.
    pub hub_auth_limit: u32,
    pub hub_auth_window_secs: u64,
    /// `POST /auth/refresh`: this many requests per `hub_auth_window_secs`
    /// per client address, successful or not (a client refreshes about
    /// once per access-token life, so a busy NAT needs room).
    pub hub_refresh_limit: u32,
    /// Every hub API route: this many requests per minute, per valid
    /// credential, else per client address.
    pub hub_api_per_minute: u32,
    /// A client refused by a rate limit more than this many times in a
    /// minute is abusing it: one `rate.abuse` audit event per ten minutes.
    pub abuse_refusals_per_minute: u32,

    /// Where bans, emergency mode and site policies are kept; `serve` sets
    /// it to a file in the data directory. `None`: memory only.
    #[serde(skip)]
    pub state_file: Option<PathBuf>,
}

impl Default for ShieldConfig {
    fn default() -> ShieldConfig {
        ShieldConfig {
            enabled: true,
            client_ip_header: ForwardedHeader::XForwardedFor,
            ipv6_prefix: 64,
            allowlist: Vec::new(),
            max_body_bytes: 10 * 1024 * 1024,
            max_headers: 50,
            max_header_bytes: 32 * 1024,
            max_uri_bytes: 8 * 1024,
            max_connections_per_ip: 256,
            h2_max_concurrent_streams: 100,
            h2_max_pending_reset_streams: 20,
            h2_max_header_list_bytes: 64 * 1024,
            rate_per_minute: 6000,
            site_rate_ceiling_per_minute: 60_000,
            emergency_factor: 0.1,
            failed_logins: 5,
            failed_login_window_secs: 300,
            requests_per_minute: 1000,
            errors_per_minute: 50,
            ban_on_request_flood: false,
            ban_on_error_flood: false,
            ban_ttl_secs: 3600,
            nftables: false,
            nftables_table: "spinforge".into(),
            nftables_set_v4: "banned4".into(),
            nftables_set_v6: "banned6".into(),
            headers: HeaderSettings::default(),
            waf_blocks_per_minute: 20,
            waf_ban_on_critical: false,
            hub_auth_limit: 5,
            hub_auth_window_secs: 15 * 60,
            hub_refresh_limit: 300,
            hub_api_per_minute: 100,
            abuse_refusals_per_minute: 60,
            state_file: None,
        }
    }
}

/// HTTP/2 limits the edge's listener applies to each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    pub max_concurrent_streams: u32,
    /// Rapid reset: streams opened and reset before being accepted.
    pub max_pending_reset_streams: usize,
    /// CONTINUATION floods: the largest header block, in bytes.
    pub max_header_list_bytes: u32,
}

impl Default for Http2Limits {
    fn default() -> Http2Limits {
        let c = ShieldConfig::default();
        c.http2()
    }
}

impl ShieldConfig {
    pub fn http2(&self) -> Http2Limits {
        Http2Limits {
            max_concurrent_streams: self.h2_max_concurrent_streams,
            max_pending_reset_streams: self.h2_max_pending_reset_streams,
            max_header_list_bytes: self.h2_max_header_list_bytes,
        }
    }

    /// Checks values serde cannot; the error names the field and the rule.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_headers", self.max_headers as u64),
            ("max_header_bytes", self.max_header_bytes as u64),
            ("max_uri_bytes", self.max_uri_bytes as u64),
            (
                "h2_max_concurrent_streams",
                u64::from(self.h2_max_concurrent_streams),
            ),
            (
                "h2_max_header_list_bytes",
                u64::from(self.h2_max_header_list_bytes),
            ),
            (
                "site_rate_ceiling_per_minute",
                u64::from(self.site_rate_ceiling_per_minute),
            ),
            ("failed_logins", u64::from(self.failed_logins)),
            ("failed_login_window_secs", self.failed_login_window_secs),
            ("requests_per_minute", u64::from(self.requests_per_minute)),
            ("errors_per_minute", u64::from(self.errors_per_minute)),
            ("ban_ttl_secs", self.ban_ttl_secs),
            (
                "waf_blocks_per_minute",
                u64::from(self.waf_blocks_per_minute),
            ),
            ("hub_auth_limit", u64::from(self.hub_auth_limit)),
            ("hub_auth_window_secs", self.hub_auth_window_secs),
            ("hub_refresh_limit", u64::from(self.hub_refresh_limit)),
            ("hub_api_per_minute", u64::from(self.hub_api_per_minute)),
            (
                "abuse_refusals_per_minute",
                u64::from(self.abuse_refusals_per_minute),
            ),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("shield.{field} must be at least 1"));
        }
        if !(self.emergency_factor > 0.0 && self.emergency_factor <= 1.0) {
            return Err("shield.emergency_factor must be above 0 and at most 1".into());
        }
        if self.max_headers > 100 {
            // hyper parses at most 100 header fields and refuses more itself.
            return Err("shield.max_headers must be at most 100".into());
        }
        if !(1..=128).contains(&self.ipv6_prefix) {
            return Err("shield.ipv6_prefix must be between 1 and 128".into());
        }
        for (field, name) in [
            ("nftables_table", &self.nftables_table),
            ("nftables_set_v4", &self.nftables_set_v4),
            ("nftables_set_v6", &self.nftables_set_v6),
        ] {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(format!(
                    "shield.{field} must be 1 to 64 letters, digits, `_` or `-`"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_the_issue_numbers() {
        let c = ShieldConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(c.max_headers, 50);
        assert_eq!((c.failed_logins, c.failed_login_window_secs), (5, 300));
        assert_eq!((c.requests_per_minute, c.errors_per_minute), (1000, 50));
        assert_eq!(c.ban_ttl_secs, 3600);
        assert!(c.allowlist.is_empty());
        assert_eq!((c.hub_auth_limit, c.hub_auth_window_secs), (5, 900));
        assert_eq!(c.hub_api_per_minute, 100);
    }

    #[test]
    fn bad_values_name_their_field() {
        let c = ShieldConfig {
            emergency_factor: 1.5,
            ..ShieldConfig::default()
        };
        assert!(c
            .validate()
            .expect_err("refused")
            .contains("emergency_factor"));
        let c = ShieldConfig {
            max_headers: 0,
            ..ShieldConfig::default()
        };
        assert!(c.validate().expect_err("refused").contains("max_headers"));
        let c = ShieldConfig {
            nftables_set_v4: "x; rm -rf /".into(),
            ..ShieldConfig::default()
        };
        assert!(c
            .validate()
            .expect_err("refused")
            .contains("nftables_set_v4"));
    }
}
