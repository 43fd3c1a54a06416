//! Security headers on every edge response, and the removal of headers
//! that tell an attacker which software and version sit behind the edge.
//!
//! Values are parsed once from config; applying them clones a few header
//! values (static ones for the defaults) and allocates nothing.

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

/// Where a response came from, which decides the defaults it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Files the edge served itself.
    Static,
    /// An upstream or app answered; its own security headers are kept.
    Proxied,
    /// The edge's own pages: refusals, 404 for unknown hosts, 502/503.
    Edge,
}

/// The parsed security-header policy. Build with [`SecurityHeaders::new`].
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    hsts: Option<HeaderValue>,
    csp_static: Option<HeaderValue>,
    csp_proxied: Option<HeaderValue>,
    frame_options: Option<HeaderValue>,
    referrer_policy: Option<HeaderValue>,
    permissions_policy: Option<HeaderValue>,
    nosniff: bool,
}

/// Settings as written in config; an empty string turns a header off.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderSettings {
    /// Sent on HTTPS responses only.
    pub hsts: String,
    /// Content-Security-Policy of static sites.
    pub csp_static: String,
    /// Content-Security-Policy of proxied sites and apps (off by default:
    /// the app knows what it loads).
    pub csp_proxied: String,
    pub frame_options: String,
    pub referrer_policy: String,
    pub permissions_policy: String,
    pub nosniff: bool,
}

const DEFAULT_HSTS: &str = "max-age=31536000";
const DEFAULT_CSP_STATIC: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' \
                                  'unsafe-inline'; object-src 'none'; base-uri 'self'; \
                                  frame-ancestors 'self'";
const DEFAULT_FRAME_OPTIONS: &str = "SAMEORIGIN";
const DEFAULT_REFERRER_POLICY: &str = "strict-origin-when-cross-origin";
const DEFAULT_PERMISSIONS_POLICY: &str = "camera=(), microphone=(), geolocation=(), payment=()";

/// The default values, which become static header values: cloning one
/// for a response touches no shared count, where a value parsed from
/// config text is reference-counted, and both edge threads would bump
/// the same count for every response.
const DEFAULT_VALUES: [&str; 5] = [
    DEFAULT_HSTS,
    DEFAULT_CSP_STATIC,
    DEFAULT_FRAME_OPTIONS,
    DEFAULT_REFERRER_POLICY,
    DEFAULT_PERMISSIONS_POLICY,
];

impl Default for HeaderSettings {
    fn default() -> HeaderSettings {
        HeaderSettings {
            // includeSubDomains and preload are per site and opt-in (the
            // edge adds them): one tenant must not pin its neighbours.
            hsts: DEFAULT_HSTS.into(),
            csp_static: DEFAULT_CSP_STATIC.into(),
            csp_proxied: String::new(),
            frame_options: DEFAULT_FRAME_OPTIONS.into(),
            referrer_policy: DEFAULT_REFERRER_POLICY.into(),
            permissions_policy: DEFAULT_PERMISSIONS_POLICY.into(),
            nosniff: true,
        }
    }
}

/// Response headers that only name software, versions or the proxies
/// and caches behind the edge (`Via: 1.1 varnish (Varnish/7.1)`).
static FINGERPRINTS: [HeaderName; 12] = [
    header::SERVER,
    header::VIA,
    HeaderName::from_static("x-powered-by"),
    HeaderName::from_static("x-aspnet-version"),
    HeaderName::from_static("x-aspnetmvc-version"),
    HeaderName::from_static("x-generator"),
    HeaderName::from_static("x-runtime"),
    HeaderName::from_static("x-version"),
    HeaderName::from_static("x-varnish"),
    HeaderName::from_static("x-backend-server"),
    HeaderName::from_static("x-drupal-cache"),
    HeaderName::from_static("x-mod-pagespeed"),
];

static PERMISSIONS_POLICY: HeaderName = HeaderName::from_static("permissions-policy");

impl SecurityHeaders {
    /// Parses `settings`; the error names the field whose value is not a
    /// valid header value.
    pub fn new(settings: &HeaderSettings) -> Result<SecurityHeaders, String> {
        let value = |field: &str, text: &str| -> Result<Option<HeaderValue>, String> {
            let text = text.trim();
            if text.is_empty() {
                return Ok(None);
            }
            if let Some(default) = DEFAULT_VALUES.iter().find(|d| **d == text) {
                return Ok(Some(HeaderValue::from_static(default)));
            }
            HeaderValue::from_str(text)
                .map(Some)
                .map_err(|_| format!("shield.headers.{field}: not a valid header value"))
        };
        Ok(SecurityHeaders {
            hsts: value("hsts", &settings.hsts)?,
            csp_static: value("csp_static", &settings.csp_static)?,
            csp_proxied: value("csp_proxied", &settings.csp_proxied)?,
            frame_options: value("frame_options", &settings.frame_options)?,
            referrer_policy: value("referrer_policy", &settings.referrer_policy)?,
            permissions_policy: value("permissions_policy", &settings.permissions_policy)?,
            nosniff: settings.nosniff,
        })
    }

    /// Strips fingerprints and sets the security headers. A proxied
    /// response keeps the security headers its app set; `site_csp`
    /// (a site's own policy; `Some(None)`: none) overrides the default.
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        origin: Origin,
        https: bool,
        site_csp: Option<Option<&HeaderValue>>,
    ) {
        // One pass over the names notes which of them are there: most
        // responses carry none or one (`Server`), and removing a header
        // that is not there still hashes its name for the lookup.
        let mut present = [false; FINGERPRINTS.len()];
        for name in headers.keys() {
            // All but two of them start with `x-`: most names are passed
            // over without a comparison with each.
            let text = name.as_str();
            if !(text.starts_with("x-") || text == "server" || text == "via") {
                continue;
            }
            if let Some(slot) = FINGERPRINTS.iter().position(|known| known == name) {
                present[slot] = true;
            }
        }
        for (name, _) in FINGERPRINTS.iter().zip(present).filter(|(_, there)| *there) {
            headers.remove(name);
        }
        // Room for the headers below at once: an upstream's answer is
        // parsed into a map sized for its own few headers, which would
        // otherwise grow (rehash and move) once or twice here.
        headers.reserve(8);
        let keep_app_values = origin == Origin::Proxied;
        // One lookup per header: the entry both answers whether the app
        // set it and takes the value.
        let set = |headers: &mut HeaderMap, name: &HeaderName, value: Option<&HeaderValue>| {
            if let Some(value) = value {
                match headers.entry(name) {
                    Entry::Vacant(slot) => {
                        slot.insert(value.clone());
                    }
                    Entry::Occupied(_) if keep_app_values => {}
                    Entry::Occupied(mut slot) => {
                        slot.insert(value.clone());
                    }
                }
            }
        };

        if https {
            set(
                headers,
                &header::STRICT_TRANSPORT_SECURITY,
                self.hsts.as_ref(),
            );
        }
        if self.nosniff {
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
        }
        set(
            headers,
            &header::X_FRAME_OPTIONS,
            self.frame_options.as_ref(),
        );
        set(
            headers,
            &header::REFERRER_POLICY,
            self.referrer_policy.as_ref(),
        );
        set(
            headers,
            &PERMISSIONS_POLICY,
            self.permissions_policy.as_ref(),
        );
        let csp = match (site_csp, origin) {
            (Some(site), _) => {
                headers.remove(header::CONTENT_SECURITY_POLICY);
                site
            }
            (None, Origin::Static | Origin::Edge) => self.csp_static.as_ref(),
            (None, Origin::Proxied) => self.csp_proxied.as_ref(),
        };
        set(headers, &header::CONTENT_SECURITY_POLICY, csp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SecurityHeaders {
        SecurityHeaders::new(&HeaderSettings::default()).expect("defaults parse")
    }

    fn upstream_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::SERVER,
            HeaderValue::from_static("Apache/2.4.1 (Debian)"),
        );
        h.insert("x-powered-by", HeaderValue::from_static("PHP/8.1"));
        h.insert(
            header::VIA,
            HeaderValue::from_static("1.1 varnish (Varnish/7.1)"),
        );
        h.insert("x-varnish", HeaderValue::from_static("32770 3"));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h
    }

    #[test]
    fn proxied_responses_lose_fingerprints_and_keep_their_own_policies() {
        let mut h = upstream_headers();
        policy().apply(&mut h, Origin::Proxied, false, None);
        assert!(h.get(header::SERVER).is_none());
        assert!(h.get("x-powered-by").is_none());
        assert!(h.get(header::VIA).is_none());
        assert!(h.get("x-varnish").is_none());
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(
            h[header::REFERRER_POLICY],
            "strict-origin-when-cross-origin"
        );
        assert!(
            h.get(header::CONTENT_SECURITY_POLICY).is_none(),
            "off for apps"
        );
        assert!(
            h.get(header::STRICT_TRANSPORT_SECURITY).is_none(),
            "plain HTTP"
        );
    }

    /// A default spelled out in config, even with spaces around it, is
    /// the same header as the default itself; another value is its own.
    #[test]
    fn a_configured_default_is_the_default() {
        let defaults = policy();
        let spelled_out = SecurityHeaders::new(&HeaderSettings {
            hsts: format!("  {DEFAULT_HSTS} "),
            frame_options: DEFAULT_FRAME_OPTIONS.to_owned(),
            ..HeaderSettings::default()
        })
        .expect("parses");
        let own = SecurityHeaders::new(&HeaderSettings {
            hsts: "max-age=60".into(),
            ..HeaderSettings::default()
        })
        .expect("parses");
        let applied = |policy: &SecurityHeaders| {
            let mut h = HeaderMap::new();
            policy.apply(&mut h, Origin::Static, true, None);
            h
        };
        assert_eq!(applied(&spelled_out), applied(&defaults));
        assert_eq!(
            applied(&own)[header::STRICT_TRANSPORT_SECURITY],
            "max-age=60"
        );
    }

    /// Each name alone, and every one twice: the pass over the names must
    /// mark every one it finds, and removal takes all its lines.
    #[test]
    fn every_fingerprint_is_removed_alone_or_repeated() {
        for name in &FINGERPRINTS {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static("v"));
            h.append(name, HeaderValue::from_static("w"));
            policy().apply(&mut h, Origin::Proxied, false, None);
            assert!(h.get(name).is_none(), "{name} was kept");
        }
        let mut h = upstream_headers();
        for name in &FINGERPRINTS {
            h.append(name, HeaderValue::from_static("v"));
        }
        policy().apply(&mut h, Origin::Proxied, false, None);
        for name in &FINGERPRINTS {
            assert!(h.get(name).is_none(), "{name} was kept");
        }
    }

    #[test]
    fn static_responses_get_the_default_csp_and_hsts_only_over_https() {
        let mut h = HeaderMap::new();
        policy().apply(&mut h, Origin::Static, true, None);
        assert!(h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii")
            .contains("frame-ancestors 'self'"));
        assert_eq!(h[header::X_FRAME_OPTIONS], "SAMEORIGIN");
        assert!(h[header::STRICT_TRANSPORT_SECURITY]
            .to_str()
            .expect("ascii")
            .starts_with("max-age="));
        assert!(h.contains_key("permissions-policy"));
    }

    #[test]
    fn a_site_csp_overrides_the_default_and_can_turn_it_off() {
        let custom = HeaderValue::from_static("default-src 'none'");
        let mut h = HeaderMap::new();
        policy().apply(&mut h, Origin::Static, false, Some(Some(&custom)));
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], "default-src 'none'");
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("x"),
        );
        policy().apply(&mut h, Origin::Proxied, false, Some(None));
        assert!(h.get(header::CONTENT_SECURITY_POLICY).is_none());
    }

    #[test]
    fn an_empty_setting_turns_a_header_off_and_a_bad_one_is_named() {
        let settings = HeaderSettings {
            referrer_policy: String::new(),
            ..HeaderSettings::default()
        };
        let mut h = HeaderMap::new();
        SecurityHeaders::new(&settings)
            .expect("parse")
            .apply(&mut h, Origin::Static, false, None);
        assert!(h.get(header::REFERRER_POLICY).is_none());
        let bad = HeaderSettings {
            frame_options: "a\nb".into(),
            ..HeaderSettings::default()
        };
        let err = SecurityHeaders::new(&bad).expect_err("newline refused");
        assert!(err.contains("shield.headers.frame_options"), "{err}");
    }
}
