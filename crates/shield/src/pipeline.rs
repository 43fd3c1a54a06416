//! The shield as the edge sees it: one handle that screens each request
//! through an ordered list of stages, finishes each response, and owns
//! the state operators change (bans, emergency mode, site policies).
//!
//! [`REQUEST_STAGES`] is the one place the order lives. Each stage has a
//! safe default from [`ShieldConfig`]; the WAF plugs in as one more stage.

use crate::bans::{self, Ban, BanTable};
use crate::client_ip::{ClientIp, ClientIpResolver, IpKey};
use crate::clock::ShieldClock;
use crate::config::{Http2Limits, ShieldConfig};
use crate::conn::ConnectionGate;
use crate::detect::{Detector, Finding, Thresholds};
use crate::firewall::Nftables;
use crate::headers::{Origin, SecurityHeaders};
use crate::keyed::{AbuseWatch, HubLimits, KeyCache, KeyVerifier, RateKey};
use crate::limits::RequestLimits;
use crate::rate::{Decision, KeyedLimiter, Policy, RateLimited};
use crate::waf::{self, Mode, RequestView, Severity, SiteWafConfig, Waf};
use crate::{Refusal, ShieldError};
use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue, Request};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// One step of screening a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Banned clients get 403 before anything else is looked at.
    BanTable,
    /// URI, header and declared body sizes; framing (smuggling) rules.
    RequestLimits,
    /// The edge-wide and the site's GCRA limits, per client.
    RateLimit,
    /// Counts the request toward the flood window.
    Behaviour,
    /// Picks the site's web-application firewall settings. The inspection
    /// itself runs in [`Shield::inspect`] once the edge has buffered the
    /// body up to the site's inspection limit.
    Waf,
}

/// The order requests are screened in. Allowlisted clients skip every
/// stage but [`Stage::RequestLimits`], which protects the parser and the
/// upstream rather than judging the client.
pub const REQUEST_STAGES: [Stage; 5] = [
    Stage::BanTable,
    Stage::RequestLimits,
    Stage::RateLimit,
    Stage::Behaviour,
    Stage::Waf,
];

/// The largest WAF body inspection limit a site may set, in bytes: the
/// edge holds this much of each inspected body in memory.
pub const SITE_MAX_WAF_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The largest body cap a site may set for itself, in bytes.
pub const SITE_MAX_BODY_CEILING: u64 = 1024 * 1024 * 1024;

/// What a site owner may set for their site. Unset fields use the
/// edge-wide defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitePolicy {
    /// Requests per minute per client, at most the admin's ceiling.
    pub rate_per_minute: Option<u32>,
    /// Largest request body, in bytes.
    pub max_body_bytes: Option<u64>,
    /// The site's Content-Security-Policy; an empty string sends none.
    pub csp: Option<String>,
    /// The site's web-application firewall; unset: block at paranoia 1
    /// with the engine's defaults ([`SiteWafConfig::default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waf: Option<SiteWafConfig>,
}

/// A site's WAF settings as configured and one paranoia level higher for
/// emergency mode, built once when the policy changes.
struct WafSite {
    normal: Arc<SiteWafConfig>,
    boosted: Arc<SiteWafConfig>,
}

impl WafSite {
    fn new(config: SiteWafConfig) -> WafSite {
        let boosted = SiteWafConfig {
            paranoia: (config.paranoia + 1).min(4),
            ..config.clone()
        };
        WafSite {
            normal: Arc::new(config),
            boosted: Arc::new(boosted),
        }
    }

    /// The settings to inspect with, or `None` when the WAF is off.
    fn pick(&self, emergency: bool) -> Option<Arc<SiteWafConfig>> {
        if self.normal.mode == Mode::Off {
            return None;
        }
        Some(
            if emergency {
                &self.boosted
            } else {
                &self.normal
            }
            .clone(),
        )
    }
}

/// A site policy, ready for the request path.
pub struct SiteShield {
    pub policy: SitePolicy,
    limiter: Option<KeyedLimiter<RateKey>>,
    /// `Some(None)`: the site turned CSP off.
    csp: Option<Option<HeaderValue>>,
    waf: WafSite,
}

/// A hub auth attempt's charge, from [`Shield::charge_hub_auth`]; hand it
/// to [`Shield::hub_auth_succeeded`] when the attempt succeeded.
#[derive(Debug)]
pub struct AuthReceipt(Option<(RateKey, crate::budget::Charge)>);

/// The outcome of screening an admitted request.
#[derive(Clone)]
pub struct Admitted {
    /// Stop the body after this many bytes (`u64::MAX`: no cap).
    pub body_limit: u64,
    /// True iff the client is on the allowlist.
    pub allowlisted: bool,
    site: Option<Arc<SiteShield>>,
    /// The WAF settings to inspect this request with; `None`: not
    /// inspected (WAF off, client allowlisted, or shield disabled).
    waf: Option<Arc<SiteWafConfig>>,
}

impl Admitted {
    /// The WAF settings the request will be inspected with, if any. The
    /// edge buffers up to `body_limit` bytes of the body (plus one, to
    /// see that it is longer) before calling [`Shield::inspect`].
    pub fn waf(&self) -> Option<&SiteWafConfig> {
        self.waf.as_deref()
    }
}

/// What the shield keeps across restarts.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct State {
    bans: Vec<Ban>,
    emergency: bool,
    sites: BTreeMap<String, SitePolicy>,
}

/// A cheap-to-clone handle to the shield.
#[derive(Clone)]
pub struct Shield {
    inner: Arc<Inner>,
}

struct Inner {
    enabled: bool,
    resolver: ClientIpResolver,
    allowlist: Vec<IpNet>,
    limits: RequestLimits,
    edge_rate: Option<KeyedLimiter<RateKey>>,
    sites: ArcSwap<HashMap<Arc<str>, Arc<SiteShield>>>,
    /// The compiled rule set, shared by every site.
    waf: Waf,
    /// The WAF settings of sites without their own.
    default_waf: WafSite,
    waf_ban_on_critical: bool,
    bans: BanTable,
    detector: Detector,
    headers: SecurityHeaders,
    emergency: AtomicBool,
    emergency_factor: f64,
    site_rate_ceiling: u32,
    ban_ttl: Duration,
    ban_on_request_flood: bool,
    ban_on_error_flood: bool,
    gate: Option<Arc<ConnectionGate>>,
    http2: Http2Limits,
    firewall: Option<Nftables>,
    clock: ShieldClock,
    state_file: Option<PathBuf>,
    /// Serialises writes of the state file.
    save_lock: Mutex<()>,
    /// Set when an automatic ban awaits saving by [`Shield::maintain`].
    dirty: AtomicBool,
    // ---- keyed limits (branch shield2) ----
    hub: HubLimits,
    abuse: AbuseWatch,
    key_cache: KeyCache,
    key_verifier: OnceLock<KeyVerifier>,
}

impl std::fmt::Debug for Shield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shield")
            .field("enabled", &self.inner.enabled)
            .field("bans", &self.inner.bans.len())
            .finish_non_exhaustive()
    }
}

impl Shield {
    /// Builds the shield from validated config and loads its state file.
    /// A state file that exists but does not parse is an error: starting
    /// without the bans it holds would fail open.
    pub fn new(
        config: &ShieldConfig,
        trusted_proxies: Vec<IpNet>,
        clock: ShieldClock,
    ) -> Result<Shield, String> {
        config.validate()?;
        let headers = SecurityHeaders::new(&config.headers)?;
        let resolver =
            ClientIpResolver::new(trusted_proxies, config.client_ip_header, config.ipv6_prefix);
        let factor = config.emergency_factor;
        let edge_rate = (config.rate_per_minute > 0).then(|| {
            KeyedLimiter::new(
                Policy::per_minute(config.rate_per_minute),
                factor,
                clock.clone(),
            )
        });
        let thresholds = Thresholds {
            failed_logins: Policy {
                limit: config.failed_logins,
                window: Duration::from_secs(config.failed_login_window_secs),
            },
            requests: Policy::per_minute(config.requests_per_minute),
            errors: Policy::per_minute(config.errors_per_minute),
            waf_blocks: Policy::per_minute(config.waf_blocks_per_minute),
        };
        let waf = Waf::new().map_err(|e| format!("WAF rules do not compile: {e}"))?;
        let gate = (config.enabled && config.max_connections_per_ip > 0).then(|| {
            Arc::new(ConnectionGate::new(
                config.max_connections_per_ip,
                resolver.clone(),
                config.allowlist.clone(),
            ))
        });
        let firewall = config.nftables.then(|| Nftables {
            table: config.nftables_table.clone(),
            set_v4: config.nftables_set_v4.clone(),
            set_v6: config.nftables_set_v6.clone(),
        });
        let shield = Shield {
            inner: Arc::new(Inner {
                enabled: config.enabled,
                limits: RequestLimits {
                    max_body_bytes: config.max_body_bytes,
                    max_headers: config.max_headers,
                    max_header_bytes: config.max_header_bytes,
                    max_uri_bytes: config.max_uri_bytes,
                },
                edge_rate,
                sites: ArcSwap::from_pointee(HashMap::new()),
                waf,
                default_waf: WafSite::new(SiteWafConfig::default()),
                waf_ban_on_critical: config.waf_ban_on_critical,
                bans: BanTable::new(clock.clone()),
                detector: Detector::new(thresholds, clock.clone()),
                headers,
                emergency: AtomicBool::new(false),
                emergency_factor: factor,
                site_rate_ceiling: config.site_rate_ceiling_per_minute,
                ban_ttl: Duration::from_secs(config.ban_ttl_secs),
                ban_on_request_flood: config.ban_on_request_flood,
                ban_on_error_flood: config.ban_on_error_flood,
                allowlist: config.allowlist.clone(),
                resolver,
                gate,
                http2: config.http2(),
                firewall,
                clock: clock.clone(),
                state_file: config.state_file.clone(),
                save_lock: Mutex::new(()),
                dirty: AtomicBool::new(false),
                hub: HubLimits::new(
                    Policy {
                        limit: config.hub_auth_limit,
                        window: Duration::from_secs(config.hub_auth_window_secs),
                    },
                    Policy {
                        limit: config.hub_refresh_limit,
                        window: Duration::from_secs(config.hub_auth_window_secs),
                    },
                    Policy::per_minute(config.hub_api_per_minute),
                    factor,
                    &clock,
                ),
                abuse: AbuseWatch::new(config.abuse_refusals_per_minute, &clock),
                key_cache: KeyCache::default(),
                key_verifier: OnceLock::new(),
            }),
        };
        shield.load()?;
        Ok(shield)
    }

    fn load(&self) -> Result<(), String> {
        let Some(path) = &self.inner.state_file else {
            return Ok(());
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let state: State = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a valid shield state file: {e}", path.display()))?;
        self.inner.bans.load(state.bans, &self.inner.resolver);
        self.inner
            .emergency
            .store(state.emergency, Ordering::Relaxed);
        let mut sites = HashMap::new();
        for (domain, policy) in state.sites {
            match self.build_site(policy) {
                Ok(site) => {
                    sites.insert(Arc::from(domain), Arc::new(site));
                }
                Err(e) => tracing::warn!(site = %domain, error = %e, "stored site policy skipped"),
            }
        }
        self.inner.sites.store(Arc::new(sites));
        tracing::info!(
            bans = self.inner.bans.len(),
            emergency = state.emergency,
            "shield state loaded"
        );
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    pub fn clock(&self) -> &ShieldClock {
        &self.inner.clock
    }

    pub fn resolver(&self) -> &ClientIpResolver {
        &self.inner.resolver
    }

    /// The client of a request that arrived from `peer`.
    #[inline]
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> ClientIp {
        self.inner.resolver.resolve(peer, headers)
    }

    /// The per-client connection cap, when one is configured.
    pub fn connection_gate(&self) -> Option<Arc<ConnectionGate>> {
        self.inner.gate.clone()
    }

    pub fn http2_limits(&self) -> Http2Limits {
        self.inner.http2
    }

    /// True iff `addr` is on the shared allowlist (the WAF reads it too).
    #[inline]
    pub fn is_allowlisted(&self, addr: IpAddr) -> bool {
        let list = &self.inner.allowlist;
        !list.is_empty() && list.iter().any(|net| net.contains(&addr))
    }

    /// True iff the ban table refuses `client`: its address (group) is
    /// banned and it is not `allowlisted` (as [`Shield::is_allowlisted`]
    /// answers for it, which the caller may have at hand).
    fn ban_refuses(&self, client: &ClientIp, allowlisted: bool) -> bool {
        !allowlisted && self.inner.bans.is_banned(&client.key)
    }

    // ---- the request path ---------------------------------------------

    /// Runs [`REQUEST_STAGES`] in order for a request to `site`, with
    /// rate limits keyed by the client's address.
    pub fn screen<B>(
        &self,
        client: &ClientIp,
        req: &Request<B>,
        site: Option<&str>,
    ) -> Result<Admitted, Refusal> {
        self.screen_as(client, None, req, site)
    }

    /// [`Shield::screen`], with rate limits keyed by `credential` (the id
    /// of a valid API key, from [`Shield::verified_key`]) when there is one.
    pub fn screen_as<B>(
        &self,
        client: &ClientIp,
        credential: Option<&Arc<str>>,
        req: &Request<B>,
        site: Option<&str>,
    ) -> Result<Admitted, Refusal> {
        let inner = &*self.inner;
        if !inner.enabled {
            return Ok(Admitted {
                body_limit: u64::MAX,
                allowlisted: false,
                site: None,
                waf: None,
            });
        }
        let allowlisted = self.is_allowlisted(client.addr);
        let site = match site {
            Some(site) => {
                let sites = inner.sites.load();
                if sites.is_empty() {
                    None
                } else {
                    sites.get(site).cloned()
                }
            }
            None => None,
        };
        let emergency = inner.emergency.load(Ordering::Relaxed);
        let mut waf = None;

        for stage in REQUEST_STAGES {
            match stage {
                Stage::BanTable => {
                    if self.ban_refuses(client, allowlisted) {
                        return Err(Refusal::Banned);
                    }
                }
                Stage::RequestLimits => {
                    let cap = site
                        .as_ref()
                        .and_then(|s| s.policy.max_body_bytes)
                        .unwrap_or(inner.limits.max_body_bytes);
                    inner.limits.check(req, cap)?;
                }
                Stage::RateLimit if !allowlisted => {
                    let limiters = [
                        inner.edge_rate.as_ref(),
                        site.as_ref().and_then(|s| s.limiter.as_ref()),
                    ];
                    let key = match credential {
                        Some(id) => RateKey::Credential(id.clone()),
                        None => RateKey::Ip(client.key),
                    };
                    for limiter in limiters.into_iter().flatten() {
                        if let Decision::Refused(r) = limiter.check(&key, emergency) {
                            inner.abuse.refused("edge", &key, &r);
                            // Refused requests still count toward the flood
                            // window: that is what makes abuse "sustained".
                            if let Some(finding) = inner.detector.request(client.key) {
                                self.report(client.key, finding, inner.ban_on_request_flood);
                            }
                            return Err(Refusal::RateLimited(r));
                        }
                    }
                }
                // Limitation: health checks stay out of the counters only
                // when their source is allowlisted (an exempt-path list
                // would lift this).
                Stage::Behaviour if !allowlisted => {
                    if let Some(finding) = inner.detector.request(client.key) {
                        self.report(client.key, finding, inner.ban_on_request_flood);
                    }
                }
                Stage::Waf if !allowlisted => {
                    let settings = site.as_ref().map_or(&inner.default_waf, |s| &s.waf);
                    waf = settings.pick(emergency);
                }
                Stage::RateLimit | Stage::Behaviour | Stage::Waf => {}
            }
        }

        let body_limit = site
            .as_ref()
            .and_then(|s| s.policy.max_body_bytes)
            .unwrap_or(inner.limits.max_body_bytes);
        Ok(Admitted {
            body_limit,
            allowlisted,
            site,
            waf,
        })
    }

    /// Runs the web-application firewall on an admitted request whose
    /// body (up to the inspection limit) is in `view`. Writes the audit
    /// event when the threshold is reached; a block also counts toward
    /// the client's ban (at once for critical severity when configured).
    pub fn inspect(
        &self,
        client: &ClientIp,
        admitted: &Admitted,
        view: &RequestView<'_>,
        site: &str,
        request_id: &str,
    ) -> Result<(), Refusal> {
        let Some(config) = &admitted.waf else {
            return Ok(());
        };
        let verdict = self.inner.waf.inspect(view, config);
        verdict.audit(site, request_id, client.addr);
        if verdict.decision != waf::Decision::Block {
            return Ok(());
        }
        let critical = verdict
            .matches
            .iter()
            .any(|m| m.rule.severity == Severity::Critical);
        if critical && self.inner.waf_ban_on_critical {
            self.report(client.key, Finding::WafCritical, true);
        } else if let Some(finding) = self.inner.detector.waf_block(client.key) {
            self.report(client.key, finding, true);
        }
        Err(Refusal::WafBlocked)
    }

    /// Finishes a response: security headers, fingerprints removed, and
    /// the status counted toward the client's error window. `admitted` is
    /// `None` for the shield's own refusals, which are not counted again.
    /// `https` turns on HSTS (the TLS listener passes true).
    pub fn finish(
        &self,
        client: &ClientIp,
        admitted: Option<&Admitted>,
        origin: Origin,
        https: bool,
        status: u16,
        headers: &mut HeaderMap,
    ) {
        let inner = &*self.inner;
        if !inner.enabled {
            return;
        }
        let site_csp = admitted
            .and_then(|a| a.site.as_ref())
            .and_then(|s| s.csp.as_ref())
            .map(Option::as_ref);
        inner.headers.apply(headers, origin, https, site_csp);

        let Some(admitted) = admitted else {
            return;
        };
        if admitted.allowlisted {
            return;
        }
        // Limitation: a 401 from a site counts as a failed login; a site
        // whose login answers 200 with an error page is not seen (a hook
        // for the site to report failures would lift this).
        if status == 401 {
            if let Some(finding) = inner.detector.failed_login(client.key) {
                self.report(client.key, finding, true);
            }
        }
        if let Some(finding) = inner.detector.response(client.key, status) {
            self.report(client.key, finding, inner.ban_on_error_flood);
        }
    }

    /// Counts a failed login from `addr` (the hub calls this for its own
    /// login endpoint); past the threshold the client is banned.
    pub fn record_failed_login(&self, addr: IpAddr) {
        if !self.inner.enabled || self.is_allowlisted(addr) {
            return;
        }
        let key = self.inner.resolver.key(addr);
        if let Some(finding) = self.inner.detector.failed_login(key) {
            self.report(key, finding, true);
        }
    }

    /// Raises the audit event of a finding (once per client and finding
    /// in a while) and bans when `ban` says so.
    fn report(&self, key: IpKey, finding: Finding, ban: bool) {
        let inner = &*self.inner;
        if ban {
            if inner.bans.is_banned(&key) {
                return;
            }
            let entry = inner.bans.ban(key, inner.ban_ttl, finding.as_str());
            if let Some(nft) = &inner.firewall {
                nft.run(nft.add_args(&key, inner.ban_ttl));
            }
            inner.dirty.store(true, Ordering::Relaxed);
            tracing::warn!(
                target: "spinforge::audit", event = "shield.ban",
                client_ip = %key, reason = finding.as_str(), actor = "shield",
                expires_at = entry.expires_at, "client banned automatically"
            );
        } else if inner.detector.first_report(key, finding) {
            tracing::warn!(
                target: "spinforge::audit", event = "shield.abuse",
                client_ip = %key, finding = finding.as_str(),
                "sustained abuse from a client"
            );
        }
    }

    /// Housekeeping, called every few seconds: drops expired bans and idle
    /// limiter state, and saves automatic bans.
    pub fn maintain(&self) {
        let inner = &*self.inner;
        inner.bans.purge_expired();
        inner.detector.forget_idle();
        if let Some(limiter) = &inner.edge_rate {
            limiter.forget_idle();
        }
        inner.hub.forget_idle();
        inner.abuse.forget_idle();
        for site in inner.sites.load().values() {
            if let Some(limiter) = &site.limiter {
                limiter.forget_idle();
            }
        }
        if inner.dirty.swap(false, Ordering::Relaxed) {
            if let Err(e) = self.save() {
                inner.dirty.store(true, Ordering::Relaxed);
                tracing::error!(error = %e, "automatic bans not saved");
            }
        }
    }

    // ---- keyed limits: API keys at the edge, the hub's limits (shield2) ----

    /// Sets how the edge checks API keys (once; `serve` wires it to the
    /// identity service). Without one, every request is keyed by address.
    pub fn set_key_verifier(&self, verifier: KeyVerifier) {
        if self.inner.key_verifier.set(verifier).is_err() {
            tracing::warn!("the shield's API key verifier was already set; kept the first");
        }
    }

    /// The id of the valid API key a request carries, if it carries one:
    /// what its rate limits are keyed by. Verified keys are remembered
    /// (by their hash) for [`crate::keyed::KEY_CACHE_TTL`]; an invalid key
    /// answers `None`, so its requests count against the address.
    ///
    /// A banned client's key is not looked up: its request is refused
    /// anyway, and each made-up key would cost the store a query.
    // Limitation: a revoked key keeps its own bucket for up to the cache
    // TTL (30 s); it gains no access by it, only its own rate bucket
    // (revocation pushing to the shield would lift this).
    pub async fn verified_key(&self, client: &ClientIp, headers: &HeaderMap) -> Option<Arc<str>> {
        let inner = &*self.inner;
        if !inner.enabled {
            return None;
        }
        let key = crate::keyed::bearer_api_key(headers)?;
        if self.ban_refuses(client, self.is_allowlisted(client.addr)) {
            return None;
        }
        let verifier = inner.key_verifier.get()?;
        let digest = KeyCache::digest(key);
        let now = inner.clock.unix_now();
        if let Some(id) = inner.key_cache.get(&digest, now) {
            return Some(id);
        }
        let id: Arc<str> = Arc::from(verifier(key.to_owned()).await?);
        inner.key_cache.put(digest, id.clone(), now);
        Some(id)
    }

    fn hub_check(
        &self,
        scope: &'static str,
        limiter: &KeyedLimiter<RateKey>,
        key: &RateKey,
    ) -> Result<(), RateLimited> {
        match limiter.check(key, self.emergency()) {
            Decision::Allowed { .. } => Ok(()),
            Decision::Refused(r) => {
                self.hub_refused(scope, key, &r);
                Err(r)
            }
        }
    }

    fn hub_refused(&self, scope: &'static str, key: &RateKey, r: &RateLimited) {
        self.inner.abuse.refused(scope, key, r);
        tracing::info!(
            target: "spinforge::audit", event = "ratelimit.refused", scope,
            bucket = %key.audit_bucket(), client_ip = %key.audit_client_ip(),
            retry_after = r.retry_after_secs(), "request refused by a rate limit"
        );
    }

    /// Charges an attempt at a hub auth endpoint (login and the like) from
    /// `addr` to its failure budget; refused once the budget is spent.
    /// Give the receipt to [`Shield::hub_auth_succeeded`] when the attempt
    /// succeeded, so only failures count. Allowlisted clients skip it.
    pub fn charge_hub_auth(&self, addr: IpAddr) -> Result<AuthReceipt, RateLimited> {
        let inner = &*self.inner;
        if !inner.enabled || self.is_allowlisted(addr) {
            return Ok(AuthReceipt(None));
        }
        let key = RateKey::Ip(inner.resolver.key(addr));
        match inner.hub.auth_failures.charge(&key, self.emergency()) {
            Ok(charge) => Ok(AuthReceipt(Some((key, charge)))),
            Err(r) => {
                self.hub_refused("hub_auth", &key, &r);
                Err(r)
            }
        }
    }

    /// Gives back the charge of a hub auth attempt that succeeded.
    pub fn hub_auth_succeeded(&self, receipt: AuthReceipt) {
        if let Some((key, charge)) = receipt.0 {
            self.inner.hub.auth_failures.refund(&key, charge);
        }
    }

    /// Counts a token refresh from `addr` against the refresh limit.
    pub fn check_hub_refresh(&self, addr: IpAddr) -> Result<(), RateLimited> {
        let inner = &*self.inner;
        if !inner.enabled || self.is_allowlisted(addr) {
            return Ok(());
        }
        let ip = RateKey::Ip(inner.resolver.key(addr));
        self.hub_check("hub_refresh", &inner.hub.refresh, &ip)
    }

    /// Counts a hub API request: against `credential` (`user:<id>` or
    /// `key:<id>`) when the caller proved one, else against `addr`.
    pub fn check_hub_api(&self, addr: IpAddr, credential: Option<&str>) -> Result<(), RateLimited> {
        let inner = &*self.inner;
        if !inner.enabled || self.is_allowlisted(addr) {
            return Ok(());
        }
        let key = match credential {
            Some(c) => RateKey::Credential(Arc::from(c)),
            None => RateKey::Ip(inner.resolver.key(addr)),
        };
        self.hub_check("hub_api", &inner.hub.api, &key)
    }

    /// The hub's policies, for documentation and tests: (auth, API).
    pub fn hub_policies(&self) -> (Policy, Policy) {
        (
            self.inner.hub.auth_failures.policy(),
            self.inner.hub.api.policy(),
        )
    }

    // ---- operator state ------------------------------------------------

    pub fn bans(&self) -> Vec<Ban> {
        self.inner.bans.list()
    }

    /// Bans `target` (an address, or an IPv6 group) for `ttl` (default:
    /// the configured ban TTL), audited as done by `actor`.
    pub fn ban(
        &self,
        target: &str,
        ttl: Option<Duration>,
        reason: &str,
        actor: &str,
    ) -> Result<Ban, ShieldError> {
        let key = bans::parse_target(target, &self.inner.resolver).map_err(|message| {
            ShieldError::Invalid {
                field: "ip",
                message,
            }
        })?;
        let ttl = ttl.unwrap_or(self.inner.ban_ttl);
        if ttl.is_zero() || ttl > Duration::from_secs(366 * 24 * 3600) {
            return Err(ShieldError::Invalid {
                field: "ttl_secs",
                message: "must be between 1 second and 366 days".into(),
            });
        }
        let reason = reason.trim();
        if reason.len() > 200 || reason.chars().any(char::is_control) {
            return Err(ShieldError::Invalid {
                field: "reason",
                message: "must be at most 200 characters, without control characters".into(),
            });
        }
        let reason = if reason.is_empty() { "manual" } else { reason };
        let ban = self.inner.bans.ban(key, ttl, reason);
        if let Some(nft) = &self.inner.firewall {
            nft.run(nft.add_args(&key, ttl));
        }
        self.save()?;
        tracing::warn!(
            target: "spinforge::audit", event = "shield.ban",
            client_ip = %key, reason, actor, expires_at = ban.expires_at, "client banned"
        );
        Ok(ban)
    }

    /// Lifts the ban of `target`, audited as done by `actor`.
    pub fn lift(&self, target: &str, actor: &str) -> Result<(), ShieldError> {
        let key = bans::parse_target(target, &self.inner.resolver).map_err(|message| {
            ShieldError::Invalid {
                field: "ip",
                message,
            }
        })?;
        if !self.inner.bans.lift(&key) {
            return Err(ShieldError::NotFound("ban"));
        }
        if let Some(nft) = &self.inner.firewall {
            nft.run(nft.delete_args(&key));
        }
        self.save()?;
        tracing::warn!(
            target: "spinforge::audit", event = "shield.unban",
            client_ip = %key, actor, "ban lifted"
        );
        Ok(())
    }

    pub fn emergency(&self) -> bool {
        self.inner.emergency.load(Ordering::Relaxed)
    }

    /// The WAF reads this: true while emergency mode is on, meaning one
    /// paranoia level higher than configured.
    #[inline]
    pub fn paranoia_boost(&self) -> bool {
        self.emergency()
    }

    pub fn emergency_factor(&self) -> f64 {
        self.inner.emergency_factor
    }

    /// Switches emergency mode, audited as done by `actor`.
    pub fn set_emergency(&self, on: bool, actor: &str) -> Result<(), ShieldError> {
        let was = self.inner.emergency.swap(on, Ordering::Relaxed);
        self.save()?;
        if was != on {
            tracing::warn!(
                target: "spinforge::audit", event = "shield.emergency",
                on, factor = self.inner.emergency_factor, actor,
                "emergency mode switched {}", if on { "on" } else { "off" }
            );
        }
        Ok(())
    }

    pub fn site_policy(&self, site: &str) -> Option<SitePolicy> {
        self.inner.sites.load().get(site).map(|s| s.policy.clone())
    }

    /// Sets (or with `None`, removes) a site's policy, audited.
    // Limitation: deleting a site does not remove its policy here; a new
    // site of the same domain inherits it (the hub calling this with
    // `None` on delete would lift this).
    pub fn set_site_policy(
        &self,
        site: &str,
        policy: Option<SitePolicy>,
        actor: &str,
    ) -> Result<(), ShieldError> {
        let built = policy.clone().map(|p| self.build_site(p)).transpose()?;
        let built = built.map(Arc::new);
        self.inner.sites.rcu(|old| {
            let mut next = HashMap::clone(old);
            match &built {
                Some(site_shield) => next.insert(Arc::from(site), site_shield.clone()),
                None => next.remove(site),
            };
            next
        });
        self.save()?;
        tracing::info!(
            target: "spinforge::audit", event = "shield.site_policy",
            site, actor, policy = ?policy, "site shield policy changed"
        );
        Ok(())
    }

    fn build_site(&self, policy: SitePolicy) -> Result<SiteShield, ShieldError> {
        let ceiling = self.inner.site_rate_ceiling;
        if let Some(rate) = policy.rate_per_minute {
            if rate == 0 || rate > ceiling {
                return Err(ShieldError::Invalid {
                    field: "rate_per_minute",
                    message: format!("must be between 1 and the ceiling of {ceiling}"),
                });
            }
        }
        if let Some(max) = policy.max_body_bytes {
            if max == 0 || max > SITE_MAX_BODY_CEILING {
                return Err(ShieldError::Invalid {
                    field: "max_body_bytes",
                    message: format!("must be between 1 and {SITE_MAX_BODY_CEILING}"),
                });
            }
        }
        let csp = match policy.csp.as_deref().map(str::trim) {
            None => None,
            Some("") => Some(None),
            Some(text) => Some(Some(HeaderValue::from_str(text).map_err(|_| {
                ShieldError::Invalid {
                    field: "csp",
                    message: "is not a valid header value".into(),
                }
            })?)),
        };
        let waf = policy.waf.clone().unwrap_or_default();
        waf.validate().map_err(|e| ShieldError::Invalid {
            field: match e {
                waf::ConfigError::Paranoia(_) => "waf.paranoia",
                waf::ConfigError::Threshold => "waf.threshold",
                _ => "waf.exclusions",
            },
            message: e.to_string(),
        })?;
        if !(1..=SITE_MAX_WAF_BODY_LIMIT).contains(&waf.body_limit) {
            return Err(ShieldError::Invalid {
                field: "waf.body_limit",
                message: format!("must be between 1 and {SITE_MAX_WAF_BODY_LIMIT}"),
            });
        }
        if let Some(h) = waf.headers.iter().find(|h| {
            h.is_empty()
                || http::HeaderName::from_bytes(h.as_bytes())
                    .map_or(true, |n| n.as_str() != h.as_str())
        }) {
            return Err(ShieldError::Invalid {
                field: "waf.headers",
                message: format!("{h:?} is not a lower-case header name"),
            });
        }
        let limiter = policy.rate_per_minute.map(|rate| {
            KeyedLimiter::new(
                Policy::per_minute(rate),
                self.inner.emergency_factor,
                self.inner.clock.clone(),
            )
        });
        Ok(SiteShield {
            policy,
            limiter,
            csp,
            waf: WafSite::new(waf),
        })
    }

    /// Writes the state file: a temporary file, synced, then renamed, so
    /// a crash leaves the old or the new state, never half of one.
    pub fn save(&self) -> Result<(), ShieldError> {
        let Some(path) = &self.inner.state_file else {
            return Ok(());
        };
        let _guard = self
            .inner
            .save_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let state = State {
            bans: self.inner.bans.list(),
            emergency: self.emergency(),
            sites: self
                .inner
                .sites
                .load()
                .iter()
                .map(|(domain, site)| (domain.to_string(), site.policy.clone()))
                .collect(),
        };
        let text =
            serde_json::to_vec_pretty(&state).map_err(|e| ShieldError::Persist(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, &text)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| ShieldError::Persist(format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    fn config() -> ShieldConfig {
        ShieldConfig {
            rate_per_minute: 10,
            max_connections_per_ip: 0,
            ..ShieldConfig::default()
        }
    }

    fn shield(config: &ShieldConfig) -> Shield {
        Shield::new(
            config,
            vec!["10.0.0.0/8".parse().expect("cidr")],
            ShieldClock::manual(1_000),
        )
        .expect("shield")
    }

    fn get(xff: Option<&str>) -> Request<()> {
        let mut req = Request::builder().uri("/").body(()).expect("request");
        if let Some(xff) = xff {
            req.headers_mut().insert(
                HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_str(xff).expect("value"),
            );
        }
        req
    }

    fn screen(
        s: &Shield,
        peer: &str,
        req: &Request<()>,
        site: Option<&str>,
    ) -> Result<(), Refusal> {
        let client = s.resolve(peer.parse().expect("ip"), req.headers());
        s.screen(&client, req, site).map(|_| ())
    }

    #[test]
    fn a_banned_clients_api_key_is_not_looked_up() {
        use std::future::Future;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::{Context, Poll, Waker};
        let s = shield(&config());
        let lookups = Arc::new(AtomicUsize::new(0));
        let counted = lookups.clone();
        s.set_key_verifier(Arc::new(move |_key| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            // Every key is valid and new, so nothing comes from the cache.
            Box::pin(std::future::ready(Some(format!("key:{n}"))))
        }));
        let verified = |peer: &str, key: &str| {
            let mut headers = HeaderMap::new();
            let value = format!("Bearer {key}");
            headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&value).expect("value"),
            );
            let client = s.resolve(peer.parse().expect("ip"), &headers);
            let future = std::pin::pin!(s.verified_key(&client, &headers));
            match future.poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(id) => id,
                Poll::Pending => panic!("the verifier answers at once"),
            }
        };
        assert_eq!(verified("192.0.2.1", "sf_one").as_deref(), Some("key:0"));
        s.ban("192.0.2.1", None, "", "test").expect("ban");
        assert_eq!(verified("192.0.2.1", "sf_two"), None);
        assert_eq!(verified("192.0.2.1", "sf_three"), None);
        assert_eq!(lookups.load(Ordering::SeqCst), 1, "no lookup once banned");
        // Others are still looked up.
        assert_eq!(verified("192.0.2.2", "sf_four").as_deref(), Some("key:1"));
    }

    #[test]
    fn the_ban_table_comes_first_and_spoofed_headers_do_not_escape_it() {
        let s = shield(&config());
        s.ban("192.0.2.1", None, "", "test").expect("ban");
        // Even a request that would break a limit gets the ban's 403.
        let mut huge = get(Some("198.51.100.1"));
        huge.headers_mut()
            .insert("content-length", HeaderValue::from_static("999999999999"));
        assert_eq!(screen(&s, "192.0.2.1", &huge, None), Err(Refusal::Banned));
        // Through a trusted proxy the forwarded address is the client.
        assert_eq!(
            screen(&s, "10.0.0.1", &get(Some("192.0.2.1")), None),
            Err(Refusal::Banned)
        );
        assert_eq!(
            screen(&s, "10.0.0.1", &get(Some("192.0.2.9")), None),
            Ok(())
        );
        s.lift("192.0.2.1", "test").expect("lift");
        assert_eq!(screen(&s, "192.0.2.1", &get(None), None), Ok(()));
        assert!(matches!(
            s.lift("192.0.2.1", "test"),
            Err(ShieldError::NotFound(_))
        ));
    }

    #[test]
    fn the_edge_rate_limit_refuses_the_eleventh_and_emergency_tightens_it() {
        let s = shield(&config());
        for _ in 0..10 {
            assert_eq!(screen(&s, "192.0.2.1", &get(None), None), Ok(()));
        }
        let Err(Refusal::RateLimited(r)) = screen(&s, "192.0.2.1", &get(None), None) else {
            panic!("the eleventh request must be rate limited");
        };
        assert_eq!(r.policy.limit, 10);

        s.set_emergency(true, "test").expect("emergency on");
        assert!(s.paranoia_boost());
        assert_eq!(screen(&s, "192.0.2.2", &get(None), None), Ok(()));
        assert!(matches!(
            screen(&s, "192.0.2.2", &get(None), None),
            Err(Refusal::RateLimited(_))
        ));
        s.set_emergency(false, "test").expect("emergency off");
        for _ in 0..9 {
            assert_eq!(screen(&s, "192.0.2.2", &get(None), None), Ok(()));
        }
    }

    #[test]
    fn allowlisted_clients_skip_bans_and_limits_but_not_framing_rules() {
        let c = ShieldConfig {
            allowlist: vec!["192.0.2.0/24".parse().expect("cidr")],
            ..config()
        };
        let s = shield(&c);
        s.ban("192.0.2.1", None, "", "test").expect("ban");
        for _ in 0..50 {
            assert_eq!(screen(&s, "192.0.2.1", &get(None), None), Ok(()));
        }
        let mut bad = get(None);
        bad.headers_mut()
            .insert("content-length", HeaderValue::from_static("+3"));
        assert!(matches!(
            screen(&s, "192.0.2.1", &bad, None),
            Err(Refusal::BadFraming(_))
        ));
    }

    #[test]
    fn a_site_policy_adds_its_own_limit_within_the_ceiling() {
        let c = ShieldConfig {
            rate_per_minute: 0,
            site_rate_ceiling_per_minute: 100,
            ..config()
        };
        let s = shield(&c);
        let over = SitePolicy {
            rate_per_minute: Some(101),
            ..SitePolicy::default()
        };
        let err = s
            .set_site_policy("a.test", Some(over), "t")
            .expect_err("over ceiling");
        assert!(matches!(
            err,
            ShieldError::Invalid {
                field: "rate_per_minute",
                ..
            }
        ));
        let policy = SitePolicy {
            rate_per_minute: Some(3),
            max_body_bytes: Some(5),
            csp: None,
            waf: None,
        };
        s.set_site_policy("a.test", Some(policy), "t").expect("set");
        for _ in 0..3 {
            assert_eq!(screen(&s, "192.0.2.1", &get(None), Some("a.test")), Ok(()));
        }
        assert!(screen(&s, "192.0.2.1", &get(None), Some("a.test")).is_err());
        assert_eq!(screen(&s, "192.0.2.1", &get(None), Some("b.test")), Ok(()));
        let mut body = get(None);
        body.headers_mut()
            .insert("content-length", HeaderValue::from_static("6"));
        assert_eq!(
            screen(&s, "192.0.2.9", &body, Some("a.test")),
            Err(Refusal::BodyTooLarge)
        );
        assert_eq!(screen(&s, "192.0.2.9", &body, Some("b.test")), Ok(()));
    }

    #[test]
    fn the_waf_stage_picks_the_sites_settings_boosted_in_emergency() {
        let c = ShieldConfig {
            allowlist: vec!["192.0.2.200/32".parse().expect("cidr")],
            rate_per_minute: 0,
            ..config()
        };
        let s = shield(&c);
        let pick = |peer: &str, site: &str| {
            let req = get(None);
            let client = s.resolve(peer.parse().expect("ip"), req.headers());
            let admitted = s.screen(&client, &req, Some(site)).expect("admitted");
            admitted.waf().map(|w| (w.mode, w.paranoia))
        };
        assert_eq!(pick("192.0.2.1", "a.test"), Some((Mode::Block, 1)));
        assert_eq!(pick("192.0.2.200", "a.test"), None, "allowlisted");
        let detect = SitePolicy {
            waf: Some(SiteWafConfig {
                mode: Mode::Detect,
                paranoia: 4,
                ..SiteWafConfig::default()
            }),
            ..SitePolicy::default()
        };
        s.set_site_policy("a.test", Some(detect), "t").expect("set");
        assert_eq!(pick("192.0.2.1", "a.test"), Some((Mode::Detect, 4)));
        s.set_emergency(true, "t").expect("on");
        assert_eq!(pick("192.0.2.1", "a.test"), Some((Mode::Detect, 4)));
        assert_eq!(pick("192.0.2.1", "b.test"), Some((Mode::Block, 2)));
        let off = SitePolicy {
            waf: Some(SiteWafConfig {
                mode: Mode::Off,
                ..SiteWafConfig::default()
            }),
            ..SitePolicy::default()
        };
        s.set_site_policy("a.test", Some(off), "t").expect("set");
        assert_eq!(pick("192.0.2.1", "a.test"), None);
        let huge = SitePolicy {
            waf: Some(SiteWafConfig {
                body_limit: SITE_MAX_WAF_BODY_LIMIT + 1,
                ..SiteWafConfig::default()
            }),
            ..SitePolicy::default()
        };
        assert!(matches!(
            s.set_site_policy("a.test", Some(huge), "t"),
            Err(ShieldError::Invalid {
                field: "waf.body_limit",
                ..
            })
        ));
        assert_eq!(pick("192.0.2.1", "a.test"), None, "unchanged");
    }

    #[test]
    fn brute_force_bans_at_the_sixth_failed_login() {
        let s = shield(&config());
        let ip: IpAddr = "192.0.2.77".parse().expect("ip");
        for _ in 0..5 {
            s.record_failed_login(ip);
        }
        assert!(s.bans().is_empty());
        s.record_failed_login(ip);
        let bans = s.bans();
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].ip, "192.0.2.77");
        assert_eq!(bans[0].reason, "failed logins");
        assert_eq!(bans[0].expires_at, 1_000 + 3600);
    }

    #[test]
    fn state_survives_a_new_shield_on_the_same_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = ShieldConfig {
            state_file: Some(dir.path().join("shield.json")),
            ..config()
        };
        let s = shield(&c);
        s.ban("2001:db8::1", Some(Duration::from_secs(60)), "spam", "t")
            .expect("ban");
        s.set_emergency(true, "t").expect("emergency");
        s.set_site_policy("a.test", Some(SitePolicy::default()), "t")
            .expect("policy");
        drop(s);
        let again = shield(&c);
        assert!(again.emergency());
        assert_eq!(again.bans()[0].ip, "2001:db8::/64");
        assert_eq!(again.site_policy("a.test"), Some(SitePolicy::default()));

        std::fs::write(dir.path().join("shield.json"), "{nope").expect("write");
        let err = Shield::new(&c, Vec::new(), ShieldClock::manual(0)).expect_err("corrupt");
        assert!(err.contains("not a valid shield state file"), "{err}");
    }

    #[test]
    fn bad_operator_input_names_the_field_and_changes_nothing() {
        let s = shield(&config());
        for (target, ttl, reason, field) in [
            ("nope", None, "", "ip"),
            ("192.0.2.1", Some(Duration::ZERO), "", "ttl_secs"),
            ("192.0.2.1", None, "a\nb", "reason"),
        ] {
            match s.ban(target, ttl, reason, "t") {
                Err(ShieldError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected a refusal naming {field}, got {other:?}"),
            }
        }
        assert!(s.bans().is_empty());
    }

    #[test]
    fn a_disabled_shield_admits_everything_and_adds_no_headers() {
        let c = ShieldConfig {
            enabled: false,
            ..config()
        };
        let s = shield(&c);
        s.ban("192.0.2.1", None, "", "t").expect("ban");
        assert_eq!(screen(&s, "192.0.2.1", &get(None), None), Ok(()));
        let client = s.resolve("192.0.2.1".parse().expect("ip"), &HeaderMap::new());
        let mut h = HeaderMap::new();
        s.finish(&client, None, Origin::Static, false, 200, &mut h);
        assert!(h.is_empty());
    }
}
