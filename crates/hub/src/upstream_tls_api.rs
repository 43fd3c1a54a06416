//! Per-site upstream TLS under `/api/v1/sites/{domain}/upstream-tls`: a
//! proxy site's own CA for its `https://` upstream, and its own client
//! certificate for upstreams that demand mutual TLS.
//!
//! The client key is stored only sealed (purpose `upstream-client-key`,
//! bound to the domain) and never leaves the hub: no response, log line,
//! error or audit event carries it. The edge gets a ready rustls
//! configuration per site ([`edge::proxy::SiteTls`]). A site without
//! settings uses the serve configuration's `proxy.upstream_*` settings.
//! Client certificates near their end, the sites' and the configuration's,
//! are audited ([`UpstreamTls::watch_expiry`]).

use crate::access::Caller;
use crate::api::ApiJson;
use crate::certs::MAX_PEM_BYTES;
use crate::error::{ApiError, ErrorBody};
use crate::Hub;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use edge::proxy::SiteTls;
use edge::tls;
use identity::Permission;
use rustls_pki_types::{pem::PemObject, CertificateDer};
use secrets::{KeyId, KeyKind, Secrets};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::{SiteKind, SiteUpstreamTls, Store, UpstreamClientCert};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The routes, to be nested under `/api/v1`.
pub fn routes() -> Router<Hub> {
    Router::new().route(
        "/sites/{domain}/upstream-tls",
        get(show).put(set).delete(clear),
    )
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(show, set, clear),
    components(schemas(UpstreamTlsView, ClientCertView, UpstreamTlsRequest))
)]
pub struct UpstreamTlsDoc;

/// The hub side of per-site upstream TLS: the store, the sealing keys
/// and the edge's per-site map. `serve` adds it as a request extension.
pub struct UpstreamTls {
    store: Arc<dyn Store>,
    secrets: Secrets,
    sites: SiteTls,
    /// Versions handed to the edge; every change gets a new one, so the
    /// edge never keeps a pool made from an older setting.
    version: AtomicI64,
}

/// What GET shows: never the key, only facts about the certificate.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpstreamTlsView {
    pub domain: String,
    /// True iff the site trusts its own CA certificates besides the
    /// system's roots.
    pub ca_set: bool,
    /// The site's client certificate, if it has one.
    pub client_cert: Option<ClientCertView>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClientCertView {
    pub subject: String,
    pub issuer: String,
    /// RFC 3339, UTC.
    pub not_after: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpstreamTlsRequest {
    /// PEM: one or more CA certificates to trust for the upstream.
    #[serde(default)]
    upstream_ca: Option<String>,
    /// PEM: the client certificate chain (with `upstream_client_key`).
    #[serde(default)]
    upstream_client_cert: Option<String>,
    /// PEM private key of the client certificate. Stored sealed; never
    /// shown again.
    #[serde(default)]
    upstream_client_key: Option<String>,
}

/// A checked setting, ready to store and to hand to the edge.
struct Checked {
    config: rustls::ClientConfig,
    client: Option<ClientCertView>,
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// How long before a site's upstream client certificate ends the warnings
/// start: 30 days, as ACME renews the edge's own certificates.
const EXPIRY_WARNING_SECS: i64 = 30 * 24 * 3600;

/// How soon the expiry check tries again when the store cannot list the
/// sites' settings.
const RETRY: Duration = Duration::from_secs(300);

/// Whose upstream client certificate an expiry warning is about.
#[derive(Debug, Clone, Copy)]
enum Holder<'a> {
    Site(&'a str),
    /// `proxy.upstream_client_cert` in the configuration file.
    Global,
}

/// Audits `site.upstream_tls_expiring` (a site's certificate) or
/// `proxy.upstream_tls_expiring` (the configuration's) when the leaf of
/// `chain_pem` ends within [`EXPIRY_WARNING_SECS`] of `now`, has ended, or
/// is not valid yet: an upstream refuses the edge for the last two. The
/// subject goes in as a string, which the log prints escaped: it is the
/// certificate maker's text.
/// True iff it audited.
fn warn_if_expiring(holder: Holder<'_>, chain_pem: &str, now: i64) -> bool {
    let Some((view, not_before, not_after)) = leaf_facts(chain_pem) else {
        return false;
    };
    let left = not_after - now;
    if left > EXPIRY_WARNING_SECS && not_before <= now {
        return false;
    }
    let days_left = left.max(0) / 86_400;
    let message = if left <= 0 {
        "the upstream client certificate has expired; set a new one"
    } else if not_before > now {
        "the upstream client certificate is not valid yet"
    } else {
        "the upstream client certificate expires soon; set a new one"
    };
    match holder {
        Holder::Site(domain) => {
            tracing::warn!(target: "spinforge::audit", event = "site.upstream_tls_expiring",
                result = "failure", site = %domain, subject = view.subject.as_str(),
                not_after = %view.not_after, days_left, "{message}");
        }
        Holder::Global => {
            tracing::warn!(target: "spinforge::audit", event = "proxy.upstream_tls_expiring",
                result = "failure", resource = "config:proxy.upstream_client_cert",
                subject = view.subject.as_str(), not_after = %view.not_after, days_left,
                "{message}");
        }
    }
    true
}

/// Subject, issuer and validity (not before, not after; unix seconds)
/// of a chain's first certificate.
fn leaf_facts(chain_pem: &str) -> Option<(ClientCertView, i64, i64)> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).ok()?;
    let validity = parsed.validity();
    let view = ClientCertView {
        subject: parsed.subject().to_string(),
        issuer: parsed.issuer().to_string(),
        not_after: rfc3339(validity.not_after.timestamp()),
    };
    Some((
        view,
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// Checks a setting at `now` (unix seconds). Errors name the field and
/// the rule and never quote the input.
fn check(
    ca_pem: Option<&str>,
    client: Option<(&str, &str)>,
    now: i64,
) -> Result<Checked, ApiError> {
    for (field, text) in [
        ("upstream_ca", ca_pem),
        ("upstream_client_cert", client.map(|c| c.0)),
        ("upstream_client_key", client.map(|c| c.1)),
    ] {
        if text.is_some_and(|t| t.len() > MAX_PEM_BYTES) {
            return Err(ApiError::invalid(
                field,
                format!("must be at most {MAX_PEM_BYTES} bytes"),
            ));
        }
    }
    if let Some((chain_pem, _)) = client {
        crate::certs::no_private_key("upstream_client_cert", chain_pem)?;
    }
    if let Some(pem) = ca_pem {
        crate::certs::no_private_key("upstream_ca", pem)?;
        let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
        let certs = certs.ok().filter(|c| !c.is_empty()).ok_or_else(|| {
            ApiError::invalid(
                "upstream_ca",
                "must be PEM text with at least one certificate",
            )
        })?;
        for cert in &certs {
            if x509_parser::parse_x509_certificate(cert).is_err() {
                return Err(ApiError::invalid(
                    "upstream_ca",
                    "holds a certificate that does not parse as X.509",
                ));
            }
        }
    }
    let client_view = match client {
        None => None,
        Some((chain_pem, key_pem)) => {
            tls::certified_key(chain_pem, key_pem).map_err(|e| match e {
                tls::TlsError::NoCertificate => {
                    ApiError::invalid("upstream_client_cert", "must be a PEM certificate chain")
                }
                tls::TlsError::NoKey => {
                    ApiError::invalid("upstream_client_key", "must be a PEM private key")
                }
                _ => ApiError::invalid(
                    "upstream_client_key",
                    "must be the private key of upstream_client_cert",
                ),
            })?;
            let (view, not_before, not_after) = leaf_facts(chain_pem).ok_or_else(|| {
                ApiError::invalid(
                    "upstream_client_cert",
                    "the first certificate does not parse as X.509",
                )
            })?;
            if not_after <= now {
                return Err(ApiError::invalid(
                    "upstream_client_cert",
                    format!("the certificate expired on {}", view.not_after),
                ));
            }
            if not_before > now {
                return Err(ApiError::invalid(
                    "upstream_client_cert",
                    format!(
                        "the certificate is not valid before {}",
                        rfc3339(not_before)
                    ),
                ));
            }
            Some(view)
        }
    };
    let config = tls::upstream_client_config(ca_pem, client).map_err(|e| match e {
        tls::TlsError::NoCertificate => ApiError::invalid(
            "upstream_ca",
            "must be PEM text with at least one certificate",
        ),
        _ if client.is_none() => {
            ApiError::invalid("upstream_ca", "holds an unusable CA certificate")
        }
        _ => ApiError::invalid(
            "upstream_client_cert",
            "cannot be used as a TLS client certificate",
        ),
    })?;
    Ok(Checked {
        config,
        client: client_view,
    })
}

/// A configuration that trusts nothing: every `https://` handshake fails.
/// A site whose stored setting cannot be used gets it, so it never falls
/// back to the global client certificate or to weaker trust.
fn refusing_config() -> Result<rustls::ClientConfig, ApiError> {
    let provider = tls::default_upstream_client_config()
        .crypto_provider()
        .clone();
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
        .map_err(ApiError::internal)
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn key_id(domain: &str) -> KeyId {
    KeyId::new(KeyKind::UpstreamClientKey, domain)
}

impl UpstreamTls {
    pub fn new(store: Arc<dyn Store>, secrets: Secrets, sites: SiteTls) -> UpstreamTls {
        UpstreamTls {
            store,
            secrets,
            sites,
            version: AtomicI64::new(0),
        }
    }

    fn next_version(&self) -> i64 {
        self.version.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Hands every stored setting to the edge. A setting that no longer
    /// opens or parses is logged and audited as `site.upstream_tls`
    /// `result = "failure"`, and that site's `https://` upstream is
    /// refused until the setting is set again (fail closed). Returns how
    /// many sites have their own setting.
    pub async fn load(&self) -> Result<usize, ApiError> {
        let rows = self.store.list_upstream_tls().await?;
        for row in &rows {
            let config = match self.config_of(row).await {
                Ok(config) => config,
                Err(reason) => {
                    tracing::error!(target: "spinforge::audit", event = "site.upstream_tls",
                        action = "load", result = "failure", site = %row.domain,
                        reason = %reason, "stored upstream TLS setting is unusable; \
                        the site's https upstream is refused");
                    refusing_config()?
                }
            };
            self.sites.set(&row.domain, config, self.next_version());
        }
        Ok(rows.len())
    }

    /// Checks every site's upstream client certificate, and `global` (the
    /// configuration's, as PEM), now and then every `every`, auditing
    /// those that end within 30 days, have ended or are not valid yet
    /// (see `warn_if_expiring`), so that an operator hears of it before
    /// the upstream starts refusing the edge.
    pub fn watch_expiry(self: Arc<Self>, global: Option<String>, every: Duration) {
        tokio::spawn(async move {
            loop {
                if let Some(chain) = &global {
                    warn_if_expiring(Holder::Global, chain, now());
                }
                // The sites' settings, retried sooner than a day while the
                // store cannot list them.
                let rows = loop {
                    match self.store.list_upstream_tls().await {
                        Ok(rows) => break rows,
                        Err(e) => {
                            tracing::warn!(error = %e,
                                "cannot list upstream TLS settings to check their expiry");
                            tokio::time::sleep(every.clamp(Duration::from_secs(1), RETRY)).await;
                        }
                    }
                };
                for row in &rows {
                    if let Some(client) = &row.client {
                        warn_if_expiring(Holder::Site(&row.domain), &client.chain_pem, now());
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    /// The edge configuration of a stored row. The error names the site
    /// and the rule, never key material.
    async fn config_of(&self, row: &SiteUpstreamTls) -> Result<rustls::ClientConfig, String> {
        let key = match &row.client {
            None => None,
            Some(client) => {
                let plain = self
                    .secrets
                    .open_key(&key_id(&row.domain), &client.key)
                    .await
                    .map_err(|e| e.to_string())?;
                Some(plain)
            }
        };
        let key_pem = match &key {
            None => None,
            Some(plain) => Some(
                std::str::from_utf8(plain)
                    .map_err(|_| "the client key is not PEM text".to_owned())?,
            ),
        };
        let client = row
            .client
            .as_ref()
            .map(|c| c.chain_pem.as_str())
            .zip(key_pem);
        // A stored certificate that has expired since still loads: the
        // upstream, not the edge, decides whether it is acceptable.
        // `watch_expiry` audits it.
        tls::upstream_client_config(row.ca_pem.as_deref(), client)
            .map_err(|e| format!("the stored setting is unusable: {e}"))
    }

    /// What GET shows for `domain`.
    async fn view(&self, domain: &str) -> Result<UpstreamTlsView, ApiError> {
        let row = self.store.upstream_tls(domain).await?;
        Ok(UpstreamTlsView {
            domain: domain.to_owned(),
            ca_set: row.as_ref().is_some_and(|r| r.ca_pem.is_some()),
            client_cert: row
                .as_ref()
                .and_then(|r| r.client.as_ref())
                .and_then(|c| leaf_facts(&c.chain_pem))
                .map(|(view, _, _)| view),
        })
    }
}

/// The caller's user id, as the audit log's `user` field takes it.
fn user(caller: &Caller) -> String {
    caller.0.user_id.to_string()
}

/// The site, if the caller may act on it with `permission` and it is a
/// site that has upstreams.
async fn proxy_site(
    hub: &Hub,
    caller: &Caller,
    permission: Permission,
    domain: &str,
) -> Result<store::Site, ApiError> {
    let site = hub.site_for(caller, permission, domain).await?;
    if !matches!(site.kind, SiteKind::Proxy | SiteKind::Balancer) {
        return Err(ApiError::invalid(
            "domain",
            "upstream TLS applies to proxy and balancer sites only",
        ));
    }
    Ok(site)
}

/// The site's upstream TLS setting; the client key is never shown.
#[utoipa::path(get, path = "/api/v1/sites/{domain}/upstream-tls", tag = "sites",
    params(("domain" = String, Path)),
    responses((status = 200, body = UpstreamTlsView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn show(
    State(hub): State<Hub>,
    caller: Caller,
    Extension(upstream): Extension<Arc<UpstreamTls>>,
    Path(domain): Path<String>,
) -> Result<Json<UpstreamTlsView>, ApiError> {
    let site = proxy_site(&hub, &caller, Permission::SitesRead, &domain).await?;
    Ok(Json(upstream.view(&site.domain).await?))
}

/// Sets the site's CA and/or client certificate (both replace any earlier
/// setting). Nothing changes when a check fails.
#[utoipa::path(put, path = "/api/v1/sites/{domain}/upstream-tls", tag = "sites",
    params(("domain" = String, Path)), request_body = UpstreamTlsRequest,
    responses((status = 200, body = UpstreamTlsView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn set(
    State(hub): State<Hub>,
    caller: Caller,
    Extension(upstream): Extension<Arc<UpstreamTls>>,
    Path(domain): Path<String>,
    ApiJson(req): ApiJson<UpstreamTlsRequest>,
) -> Result<Json<UpstreamTlsView>, ApiError> {
    let site = proxy_site(&hub, &caller, Permission::SitesUpdate, &domain).await?;
    // Under the site's lock, and the site looked up again: a delete that
    // ran in between must not leave this setting in the edge for a later
    // site of the same name, and two writes reach store and edge in order.
    let _guard = hub.site_lock(&site.domain).await;
    let site = proxy_site(&hub, &caller, Permission::SitesUpdate, &site.domain).await?;
    let checked =
        checked_request(&req).and_then(|client| check(req.upstream_ca.as_deref(), client, now()));
    let checked = match checked {
        Ok(checked) => checked,
        Err(e) => {
            tracing::info!(target: "spinforge::audit", event = "site.upstream_tls",
                action = "set", result = "failure", site = %site.domain,
                user = %user(&caller), reason = %e, "upstream TLS setting refused");
            return Err(e);
        }
    };

    let client = match (&req.upstream_client_cert, &req.upstream_client_key) {
        (Some(chain_pem), Some(key_pem)) => {
            let key = upstream
                .secrets
                .seal_key(&key_id(&site.domain), key_pem.as_bytes())
                .await
                .map_err(crate::secrets_api::api_error)?;
            Some(UpstreamClientCert {
                chain_pem: chain_pem.clone(),
                key,
            })
        }
        _ => None,
    };
    let row = SiteUpstreamTls {
        domain: site.domain.clone(),
        ca_pem: req.upstream_ca.clone(),
        client,
        updated_at: now(),
    };
    upstream.store.put_upstream_tls(&row).await?;
    upstream
        .sites
        .set(&site.domain, checked.config, upstream.next_version());

    let subject = checked.client.as_ref().map(|c| c.subject.as_str());
    tracing::info!(target: "spinforge::audit", event = "site.upstream_tls",
        action = "set", result = "success", site = %site.domain, user = %user(&caller),
        ca_set = row.ca_pem.is_some(), client_cert_subject = subject.unwrap_or("-"),
        "upstream TLS setting changed");
    if let Some(client) = &row.client {
        warn_if_expiring(Holder::Site(&site.domain), &client.chain_pem, now());
    }
    Ok(Json(UpstreamTlsView {
        domain: site.domain,
        ca_set: row.ca_pem.is_some(),
        client_cert: checked.client,
    }))
}

/// The client pair of a request: both or neither, and at least one part
/// set overall.
fn checked_request(req: &UpstreamTlsRequest) -> Result<Option<(&str, &str)>, ApiError> {
    let client = match (&req.upstream_client_cert, &req.upstream_client_key) {
        (Some(cert), Some(key)) => Some((cert.as_str(), key.as_str())),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ApiError::invalid(
                "upstream_client_key",
                "is required with upstream_client_cert",
            ))
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "upstream_client_cert",
                "is required with upstream_client_key",
            ))
        }
    };
    if client.is_none() && req.upstream_ca.is_none() {
        return Err(ApiError::invalid(
            "upstream_ca",
            "set upstream_ca and/or upstream_client_cert with upstream_client_key \
             (DELETE clears the setting)",
        ));
    }
    Ok(client)
}

/// Clears the site's setting: its upstream is verified with the global
/// configuration (or the system's roots) again.
#[utoipa::path(delete, path = "/api/v1/sites/{domain}/upstream-tls", tag = "sites",
    params(("domain" = String, Path)),
    responses((status = 200, body = UpstreamTlsView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn clear(
    State(hub): State<Hub>,
    caller: Caller,
    Extension(upstream): Extension<Arc<UpstreamTls>>,
    Path(domain): Path<String>,
) -> Result<Json<UpstreamTlsView>, ApiError> {
    let site = proxy_site(&hub, &caller, Permission::SitesUpdate, &domain).await?;
    let _guard = hub.site_lock(&site.domain).await;
    let had = upstream.store.clear_upstream_tls(&site.domain).await?;
    upstream.sites.clear(&site.domain);
    tracing::info!(target: "spinforge::audit", event = "site.upstream_tls",
        action = "clear", result = "success", site = %site.domain, user = %user(&caller),
        had_setting = had, "upstream TLS setting cleared");
    Ok(Json(UpstreamTlsView {
        domain: site.domain,
        ca_set: false,
        client_cert: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(e: ApiError) -> (&'static str, String) {
        match e {
            ApiError::Invalid { field, message } => (field, message),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_pem_and_a_foreign_key_are_refused_naming_the_field() {
        let (cert, key) = tls::self_signed(&["client.test"], "client").expect("gen");
        let (_, other_key) = tls::self_signed(&["other.test"], "other").expect("gen");
        assert!(check(Some(&cert), Some((&cert, &key)), now()).is_ok());

        let (f, _) = field(check(Some("not pem"), None, now()).err().expect("bad ca"));
        assert_eq!(f, "upstream_ca");
        let (f, _) = field(
            check(None, Some(("junk", &key)), now())
                .err()
                .expect("bad cert"),
        );
        assert_eq!(f, "upstream_client_cert");
        let (f, _) = field(
            check(None, Some((&cert, "junk")), now())
                .err()
                .expect("bad key"),
        );
        assert_eq!(f, "upstream_client_key");
        let (f, message) = field(
            check(None, Some((&cert, &other_key)), now())
                .err()
                .expect("mismatch"),
        );
        assert_eq!(f, "upstream_client_key");
        assert_eq!(message, "must be the private key of upstream_client_cert");
    }

    #[test]
    fn a_certificate_field_holding_a_private_key_is_refused() {
        let (cert, key) = tls::self_signed(&["client.test"], "client").expect("gen");
        let combined = format!("{cert}{key}");
        let (f, message) = field(
            check(None, Some((&combined, &key)), now())
                .err()
                .expect("combined client file"),
        );
        assert_eq!(f, "upstream_client_cert");
        assert_eq!(message, "must hold certificates only, not a private key");
        let (f, _) = field(
            check(Some(&combined), None, now())
                .err()
                .expect("combined CA"),
        );
        assert_eq!(f, "upstream_ca");
    }

    #[test]
    fn an_expired_client_certificate_is_refused() {
        let (cert, key) = tls::self_signed(&["client.test"], "client").expect("gen");
        // rcgen's default validity ends in 4096; pretend it is later.
        let later = OffsetDateTime::new_utc(
            time::Date::from_calendar_date(4100, time::Month::January, 1).expect("date"),
            time::Time::MIDNIGHT,
        )
        .unix_timestamp();
        let (f, message) = field(
            check(None, Some((&cert, &key)), later)
                .err()
                .expect("expired"),
        );
        assert_eq!(f, "upstream_client_cert");
        assert!(
            message.starts_with("the certificate expired on 4096-"),
            "{message}"
        );
    }

    #[test]
    fn expiry_warnings_start_thirty_days_before_the_end() {
        let (cert, _) = tls::self_signed(&["client.test"], "client").expect("gen");
        let (_, _, not_after) = leaf_facts(&cert).expect("facts");
        let day = 86_400;
        let site = Holder::Site("a.test");
        assert!(!warn_if_expiring(site, &cert, not_after - 31 * day));
        assert!(warn_if_expiring(site, &cert, not_after - 29 * day));
        assert!(warn_if_expiring(site, &cert, not_after + day));
        assert!(!warn_if_expiring(site, "not pem", not_after));
        assert!(warn_if_expiring(Holder::Global, &cert, not_after - day));
        // Not valid yet (rcgen's certificates start in 1975).
        let (_, not_before, _) = leaf_facts(&cert).expect("facts");
        assert!(warn_if_expiring(site, &cert, not_before - day));
        assert!(!warn_if_expiring(
            Holder::Global,
            &cert,
            not_after - 31 * day
        ));
    }
}
