//! Automatic certificates over ACME (instant-acme): one order at a time
//! per domain, only for domains that exist as sites, renewal before
//! expiry with jitter, and exponential backoff after failures. The backoff
//! is kept in the store, so a restart waits it out instead of ordering
//! again at once.
//!
//! Orders start from two places: a TLS hello for a site without a
//! certificate (through the edge's queue) and a periodic check of every
//! site. Challenges are answered by the edge: HTTP-01 on its HTTP
//! listener, TLS-ALPN-01 on its TLS listener.

use crate::certs::{self, Certs};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rand::Rng;
use secrets::{KeyId, KeyKind};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{AcmeBackoff, CertSource};
use tokio::sync::mpsc;

/// Which challenge the edge answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Challenge {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// `[acme]` settings. Off unless `enabled`.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    pub enabled: bool,
    /// The ACME directory URL.
    pub directory: String,
    /// Contact URIs (`mailto:...`) for the account.
    pub contact: Vec<String>,
    /// A PEM CA certificate to trust for the directory instead of the
    /// system roots (a test CA such as pebble's).
    pub ca_bundle: Option<PathBuf>,
    pub challenge: Challenge,
    /// Renewal starts this long before expiry (minus jitter).
    pub renew_before: Duration,
    /// How often every site's certificate is checked.
    pub check_interval: Duration,
    /// The first retry delay after a failure; it doubles per failure.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// After this many failures in a row, `cert.renew_failed` is audited.
    pub alert_after_failures: u32,
}

impl Default for AcmeConfig {
    fn default() -> AcmeConfig {
        AcmeConfig {
            enabled: false,
            directory: "https://acme-v02.api.letsencrypt.org/directory".into(),
            contact: Vec::new(),
            ca_bundle: None,
            challenge: Challenge::Http01,
            renew_before: Duration::from_secs(30 * 24 * 3600),
            check_interval: Duration::from_secs(3600),
            backoff_initial: Duration::from_secs(60),
            backoff_max: Duration::from_secs(24 * 3600),
            alert_after_failures: 3,
        }
    }
}

/// Failures in a row of one domain and when it may be tried again.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    next_try: Instant,
}

/// The ACME worker; cheap to clone.
#[derive(Clone)]
pub struct Acme {
    inner: Arc<Inner>,
}

struct Inner {
    certs: Certs,
    config: AcmeConfig,
    /// Domains with an order under way: a second request waits its turn.
    in_flight: Mutex<HashSet<String>>,
    backoff: Mutex<HashMap<String, Backoff>>,
    account: tokio::sync::Mutex<Option<Account>>,
}

/// Frees a domain's in-flight slot however its order ends.
struct Slot {
    acme: Acme,
    domain: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut set) = self.acme.inner.in_flight.lock() {
            set.remove(&self.domain);
        }
    }
}

impl Acme {
    /// Starts the worker: restores the stored backoff, then plugs the
    /// on-demand queue into the edge and runs the periodic check. Fails
    /// iff the stored backoff cannot be read: ordering without it could
    /// start the storm it exists to prevent.
    pub async fn start(
        certs: Certs,
        config: AcmeConfig,
        routes: edge::Routes,
    ) -> Result<Acme, store::StoreError> {
        let backoff = restore_backoff(certs.store().as_ref()).await?;
        let acme = Acme {
            inner: Arc::new(Inner {
                certs,
                config,
                in_flight: Mutex::default(),
                backoff: Mutex::new(backoff),
                account: tokio::sync::Mutex::new(None),
            }),
        };
        let (tx, mut rx) = mpsc::channel::<String>(256);
        let routes_store = acme.inner.certs.store().clone();
        let names = Arc::new(Mutex::new(HashSet::<String>::new()));
        let known = names.clone();
        acme.inner.certs.tls().on_missing_cert(
            tx,
            Arc::new(move |name| {
                routes.snapshot().is_exact(name)
                    || known.lock().map(|n| n.contains(name)).unwrap_or(false)
            }),
        );
        let worker = acme.clone();
        tokio::spawn(async move {
            while let Some(domain) = rx.recv().await {
                worker.ensure(&domain);
            }
        });
        let periodic = acme.clone();
        tokio::spawn(async move {
            loop {
                match routes_store.list_sites().await {
                    Ok(sites) => {
                        let set: HashSet<String> = sites.iter().map(|s| s.domain.clone()).collect();
                        if let Ok(mut n) = names.lock() {
                            *n = set.clone();
                        }
                        for domain in set {
                            periodic.check(&domain).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "ACME check cannot list sites"),
                }
                tokio::time::sleep(periodic.inner.config.check_interval).await;
            }
        });
        Ok(acme)
    }

    /// Orders a certificate for `domain` if it has none or it is due for
    /// renewal.
    async fn check(&self, domain: &str) {
        let due = match self.inner.certs.store().cert(domain).await {
            Ok(None) => true,
            Ok(Some(record)) => {
                let config = &self.inner.config;
                // Jitter: up to a tenth of the window earlier, so many
                // certificates issued together do not renew together.
                let window = config.renew_before.as_secs() as i64;
                let jitter = rand::thread_rng().gen_range(0..=window / 10);
                record.not_after - certs::now() <= window + jitter
            }
            Err(e) => {
                tracing::warn!(domain, error = %e, "cannot read the stored certificate");
                false
            }
        };
        if due {
            self.ensure(domain);
        }
    }

    /// Starts an order for `domain` unless one is under way or its
    /// backoff has not run out.
    fn ensure(&self, domain: &str) {
        if let Ok(backoff) = self.inner.backoff.lock() {
            if backoff
                .get(domain)
                .is_some_and(|b| b.next_try > Instant::now())
            {
                return;
            }
        }
        let Ok(mut in_flight) = self.inner.in_flight.lock() else {
            return;
        };
        if !in_flight.insert(domain.to_owned()) {
            return;
        }
        drop(in_flight);
        let slot = Slot {
            acme: self.clone(),
            domain: domain.to_owned(),
        };
        let acme = self.clone();
        tokio::spawn(async move {
            let domain = slot.domain.clone();
            let result = acme.order(&domain).await;
            acme.record(&domain, result).await;
            drop(slot);
        });
    }

    /// Counts a success or a failure, in memory and in the store; fails
    /// closed to the old certificate.
    async fn record(&self, domain: &str, result: Result<(), String>) {
        let store = self.inner.certs.store();
        match result {
            Ok(()) => {
                if let Ok(mut backoff) = self.inner.backoff.lock() {
                    backoff.remove(domain);
                }
                if let Err(e) = store.clear_acme_backoff(domain).await {
                    tracing::warn!(domain, error = %e, "cannot clear the stored ACME backoff");
                }
            }
            Err(reason) => {
                let config = &self.inner.config;
                let Ok(failures) = self.inner.backoff.lock().map(|mut backoff| {
                    let failures = backoff.get(domain).map_or(0, |b| b.failures) + 1;
                    let next_try = Instant::now() + backoff_delay(config, failures);
                    backoff.insert(domain.to_owned(), Backoff { failures, next_try });
                    failures
                }) else {
                    return;
                };
                let delay = backoff_delay(config, failures);
                let stored = AcmeBackoff {
                    domain: domain.to_owned(),
                    failures,
                    next_attempt: certs::now().saturating_add(whole_secs(delay)),
                };
                // Limitation: a store that fails here leaves the backoff in
                // memory only, so a restart before it ends may order again
                // (a store that has stopped writing has bigger problems).
                if let Err(e) = store.put_acme_backoff(&stored, certs::now()).await {
                    tracing::warn!(domain, error = %e, "cannot store the ACME backoff");
                }
                tracing::warn!(domain, failures, retry_in_ms = delay.as_millis() as u64,
                    reason = %reason, "ACME order failed");
                if failures >= config.alert_after_failures {
                    tracing::warn!(target: "spinforge::audit", event = "cert.renew_failed",
                        result = "failure", site = domain, failures, reason = %reason,
                        "certificate issuance keeps failing");
                }
            }
        }
    }

    /// The account for the directory: stored credentials (sealed, bound to
    /// the directory URL), or a new account that is sealed and stored
    /// before it is used. Stored credentials that do not open are an
    /// error naming the directory: a new account never replaces them.
    async fn account(&self) -> Result<Account, String> {
        let mut slot = self.inner.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let config = &self.inner.config;
        let builder = || match &config.ca_bundle {
            Some(path) => Account::builder_with_root(path),
            None => Account::builder(),
        };
        let store = self.inner.certs.store();
        let secrets = self.inner.certs.secrets();
        let id = KeyId::new(KeyKind::AcmeAccount, &config.directory);
        let stored = store
            .acme_account(&config.directory)
            .await
            .map_err(|e| e.to_string())?;
        let account = match stored {
            Some(sealed) => {
                let json = secrets
                    .open_key(&id, &sealed)
                    .await
                    .map_err(|e| e.to_string())?;
                let credentials: AccountCredentials = serde_json::from_slice(&json)
                    .map_err(|e| format!("stored account of {}: {e}", config.directory))?;
                builder()
                    .map_err(|e| e.to_string())?
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| e.to_string())?
            }
            None => {
                let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder()
                    .map_err(|e| e.to_string())?
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        config.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let json = zeroize::Zeroizing::new(
                    serde_json::to_vec(&credentials).map_err(|e| e.to_string())?,
                );
                let sealed = secrets
                    .seal_key(&id, &json)
                    .await
                    .map_err(|e| e.to_string())?;
                store
                    .put_acme_account(&config.directory, &sealed, certs::now())
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(directory = %config.directory, "ACME account created");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// One order, start to installed certificate.
    async fn order(&self, domain: &str) -> Result<(), String> {
        let account = self.account().await?;
        let tls = self.inner.certs.tls();
        let identifiers = [Identifier::Dns(domain.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(domain, order = order.url(), "ACME order placed");

        let kind = match self.inner.config.challenge {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut published: Vec<String> = Vec::new();
        let answered = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(|e| e.to_string())?;
                if authz.status == AuthorizationStatus::Valid {
                    continue;
                }
                let mut challenge = authz
                    .challenge(kind.clone())
                    .ok_or_else(|| format!("the CA offers no {kind:?} challenge"))?;
                let key_auth = challenge.key_authorization();
                match kind {
                    ChallengeType::TlsAlpn01 => {
                        let key =
                            edge::tls::alpn_challenge_cert(domain, key_auth.digest().as_ref())
                                .map_err(|e| e.to_string())?;
                        tls.add_alpn_challenge(domain, key);
                    }
                    _ => {
                        tls.add_http_challenge(&challenge.token, key_auth.as_str());
                        published.push(challenge.token.clone());
                    }
                }
                challenge.set_ready().await.map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        }
        .await;
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(60));
        let ready = match answered {
            Ok(()) => order.poll_ready(&retries).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        for token in &published {
            tls.remove_http_challenge(token);
        }
        tls.remove_alpn_challenge(domain);
        match ready? {
            OrderStatus::Ready => {}
            other => return Err(format!("order is {other:?}, not ready")),
        }

        let key_pem = order.finalize().await.map_err(|e| e.to_string())?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| e.to_string())?;
        let checked = certs::check(domain, &chain_pem, &key_pem, certs::now())
            .map_err(|e| format!("the issued certificate is unusable: {e}"))?;
        let info = self
            .inner
            .certs
            .install(domain, &chain_pem, &key_pem, checked, CertSource::Acme)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(target: "spinforge::audit", event = "cert.issued", result = "success",
            site = domain, issuer = %info.issuer, not_after = %info.not_after,
            "certificate issued over ACME");
        Ok(())
    }
}

/// The stored backoff of every domain, as waits from now. A next attempt
/// already past is due at once.
async fn restore_backoff(
    store: &dyn store::Store,
) -> Result<HashMap<String, Backoff>, store::StoreError> {
    let now = certs::now();
    let mut restored = HashMap::new();
    for row in store.list_acme_backoff().await? {
        let wait = Duration::from_secs(u64::try_from(row.next_attempt - now).unwrap_or(0));
        tracing::info!(domain = %row.domain, failures = row.failures,
            retry_in_secs = wait.as_secs(), "ACME backoff restored");
        let backoff = Backoff {
            failures: row.failures,
            next_try: Instant::now() + wait,
        };
        restored.insert(row.domain, backoff);
    }
    Ok(restored)
}

/// `delay` in whole seconds, rounded up, so a stored next attempt is never
/// earlier than the one in memory.
fn whole_secs(delay: Duration) -> i64 {
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// The wait after the `failures`-th failure in a row: the initial delay,
/// doubled per further failure, at most the maximum.
fn backoff_delay(config: &AcmeConfig, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1));
    config
        .backoff_initial
        .saturating_mul(factor)
        .min(config.backoff_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_failure_up_to_the_maximum() {
        let config = AcmeConfig {
            backoff_initial: Duration::from_secs(60),
            backoff_max: Duration::from_secs(600),
            ..AcmeConfig::default()
        };
        let secs: Vec<u64> = (1..=6)
            .map(|n| backoff_delay(&config, n).as_secs())
            .collect();
        assert_eq!(secs, [60, 120, 240, 480, 600, 600]);
        assert_eq!(backoff_delay(&config, 200).as_secs(), 600);
    }

    #[test]
    fn stored_waits_round_up_to_whole_seconds() {
        assert_eq!(whole_secs(Duration::from_millis(1000)), 1);
        assert_eq!(whole_secs(Duration::from_millis(1001)), 2);
        assert_eq!(whole_secs(Duration::ZERO), 0);
    }
}
