//! TLS termination: the rustls server configuration, the certificate
//! chosen per SNI from a map the hub swaps without a restart, the ACME
//! challenge answers, and each site's HTTP-to-HTTPS settings.
//!
//! It parses nothing an operator uploads (the hub checks certificates
//! before they get here) and orders nothing: a TLS hello for a known site
//! without a certificate only sends its name to the hub's ACME queue.

use arc_swap::ArcSwap;
use rustls::crypto::aws_lc_rs::{self as provider, cipher_suite};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::mpsc;

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Session ids the server remembers for TLS 1.2 resumption without tickets.
const SESSION_CACHE_ENTRIES: usize = 20_000;

/// How a site answers plain HTTP while it has a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpsMode {
    /// 308 to the same URL over HTTPS.
    #[default]
    Redirect,
    /// Serve over both.
    Both,
    /// Refuse plain HTTP with 403.
    HttpsOnly,
}

/// One site's HTTPS settings. HSTS extras are opt-in: a tenant's HSTS
/// must never pin the subdomains of a domain it does not control alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SiteHttps {
    pub mode: HttpsMode,
    pub hsts_include_subdomains: bool,
    pub hsts_preload: bool,
}

/// Answers whether a name exists as a site (so it may be ordered).
pub type IsSite = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The TLS state the edge reads on every handshake and the hub writes:
/// cheap to clone, every map behind an atomic pointer swap.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Arc<CryptoProvider>,
    /// Domain (lower case, or `*.suffix`) → certificate.
    certs: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// Served for no or unknown SNI; names no customer domain.
    fallback: Arc<CertifiedKey>,
    /// TLS-ALPN-01 validation certificates by domain.
    alpn_challenges: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01 token → key authorization.
    http_challenges: Mutex<HashMap<String, String>>,
    sites: ArcSwap<HashMap<String, SiteHttps>>,
    /// Names of known sites whose hello found no certificate; the hub's
    /// ACME worker reads them. Unset while ACME is off.
    wanted: Mutex<Option<mpsc::Sender<String>>>,
    /// Decides whether a name may be ordered (a site exists for it).
    is_site: Mutex<Option<IsSite>>,
    /// The public HTTPS port redirects point at.
    https_port: std::sync::atomic::AtomicU16,
    /// `--dev-tls`: signs certificates for `localhost` names.
    dev_ca: OnceLock<DevCa>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("certs", &self.inner.certs.load().len())
            .finish_non_exhaustive()
    }
}

/// Why a certificate and key cannot be used; the hub turns it into the
/// API's error with the field name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Client (operator) input: no PEM certificate in the text.
    #[error("no PEM certificate found")]
    NoCertificate,
    /// Client (operator) input: no PEM private key in the text.
    #[error("no PEM private key found")]
    NoKey,
    /// Client (operator) input: the key is not one rustls can sign with,
    /// or it does not belong to the first certificate.
    #[error("{0}")]
    Key(String),
    /// Our side: a generated certificate failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
}

/// Parses a PEM chain (leaf first) and a PEM private key into a
/// certificate rustls can serve, checking that the key matches the leaf.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::NoKey)?;
    let provider = provider::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            TlsError::Key("the private key does not match the certificate".into())
        }
        other => TlsError::Key(format!("the private key cannot be used: {other}")),
    })
}

/// The self-signed TLS-ALPN-01 validation certificate (RFC 8737): the
/// domain as its only name and the key authorization's SHA-256 digest in
/// the critical acmeIdentifier extension. Built without the key-match
/// check, whose certificate parser refuses that unknown critical
/// extension; the key is the one generated here.
pub fn alpn_challenge_cert(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(gen)?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate().map_err(gen)?;
    let cert = params.self_signed(&key).map_err(gen)?;
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = provider::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// A fresh ECDSA P-256 self-signed certificate for `names`, as PEM
/// (certificate, key).
pub fn self_signed(names: &[&str], common_name: &str) -> Result<(String, String), TlsError> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// How long a development CA is valid from its creation.
const DEV_CA_LIFETIME: time::Duration = time::Duration::days(365);

/// A stored development CA with less than this left is replaced at start,
/// so each leaf it signs can get its whole lifetime.
const DEV_CA_RENEW_BEFORE: time::Duration = time::Duration::days(30);

/// How long a development leaf certificate is valid (at most: never past
/// its CA).
const DEV_LEAF_LIFETIME: time::Duration = time::Duration::days(30);

/// A leaf with less than this left is issued anew on its next hello.
const DEV_LEAF_RENEW_BEFORE: time::Duration = time::Duration::days(10);

/// The distinguished name, CA settings and limits of the development CA;
/// the same every run, so a stored key re-creates the same issuer.
///
/// Its Name Constraints permit only `localhost` and names under it (a DNS
/// constraint covers the name and every name below it) and the loopback
/// addresses: were its key ever stolen from a machine that trusts it, it
/// could not vouch for any real site.
fn dev_ca_params(
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> Result<rcgen::CertificateParams, TlsError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "SpinForge development CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.name_constraints = Some(rcgen::NameConstraints {
        permitted_subtrees: vec![
            rcgen::GeneralSubtree::DnsName("localhost".into()),
            rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V4([127, 0, 0, 0], [255, 0, 0, 0])),
            rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V6(
                std::net::Ipv6Addr::LOCALHOST.octets(),
                [0xff; 16],
            )),
        ],
        excluded_subtrees: Vec::new(),
    });
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

/// Certificates the development CA issues at most; more names get the
/// default certificate.
const DEV_CERTS_MAX: usize = 1024;

/// `serve --dev-tls`: a local CA whose certificate and key live in a
/// folder of the data directory (made on first use, key mode 0600). It
/// signs a certificate for each `localhost` name on its first hello: a
/// `*.localhost` wildcard would not do, since TLS clients refuse
/// wildcards directly under a one-label name.
///
/// The CA lives a year and is name-constrained to `localhost`; leaves
/// live 30 days and are issued anew before they run out.
pub struct DevCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
    /// Where the CA certificate is, for the operator to trust.
    pub ca_path: std::path::PathBuf,
    /// The end of the CA's validity; no leaf outlives it.
    not_after: time::OffsetDateTime,
    /// The leaves issued so far: name → end of validity.
    leaves: Mutex<HashMap<String, time::OffsetDateTime>>,
}

/// Why a stored development CA is not used again.
enum Stale {
    Expiring(time::OffsetDateTime),
    Unconstrained,
}

impl DevCa {
    /// Loads the CA from `dir`, or makes one there. A stored CA that has
    /// (nearly) run out, or that predates the Name Constraints, is
    /// replaced, with a log line saying so.
    pub fn load_or_create(dir: &std::path::Path) -> Result<DevCa, TlsError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |e: std::io::Error| TlsError::Generate(format!("{}: {e}", dir.display()));
        let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let ca_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        std::fs::create_dir_all(dir).map_err(io)?;

        let now = time::OffsetDateTime::now_utc();
        let mut stored = None;
        if key_path.is_file() && ca_path.is_file() {
            let ca_pem = std::fs::read_to_string(&ca_path).map_err(io)?;
            let (not_after, constrained) = dev_ca_facts(&ca_pem)?;
            let stale = if not_after - now < DEV_CA_RENEW_BEFORE {
                Some(Stale::Expiring(not_after))
            } else if !constrained {
                Some(Stale::Unconstrained)
            } else {
                None
            };
            match stale {
                None => {
                    let pem = std::fs::read_to_string(&key_path).map_err(io)?;
                    let key = rcgen::KeyPair::from_pem(&pem).map_err(gen)?;
                    stored = Some((key, ca_pem, not_after));
                }
                Some(Stale::Expiring(end)) => tracing::warn!(
                    ca = %ca_path.display(), not_after = %end,
                    "--dev-tls: the development CA has expired or expires within 30 days; \
                     generating a new one. Trust the new CA and remove the old one from \
                     your trust stores"
                ),
                Some(Stale::Unconstrained) => tracing::warn!(
                    ca = %ca_path.display(),
                    "--dev-tls: the development CA predates the localhost-only name \
                     constraint, so it could vouch for any site; generating a new one. \
                     Remove the old one from every trust store you added it to"
                ),
            }
        }
        let (ca_key, ca_pem, not_after) = match stored {
            Some(stored) => stored,
            None => {
                let key = rcgen::KeyPair::generate().map_err(gen)?;
                let not_after = now + DEV_CA_LIFETIME;
                let cert = dev_ca_params(now - time::Duration::hours(1), not_after)?
                    .self_signed(&key)
                    .map_err(gen)?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&key_path)
                    .map_err(io)?;
                std::io::Write::write_all(&mut file, key.serialize_pem().as_bytes()).map_err(io)?;
                std::fs::write(&ca_path, cert.pem()).map_err(io)?;
                tracing::info!(ca = %ca_path.display(), not_after = %not_after,
                    "--dev-tls: new development CA");
                (key, cert.pem(), not_after)
            }
        };
        // The issuer only lends its name and key to the leaves; the
        // validity given here is not used.
        Ok(DevCa {
            issuer: rcgen::Issuer::new(dev_ca_params(now, not_after)?, ca_key),
            ca_pem,
            ca_path,
            not_after,
            leaves: Mutex::default(),
        })
    }

    /// A certificate for `name`, signed by this CA, chain included, valid
    /// for [`DEV_LEAF_LIFETIME`] or until the CA ends, whichever is first.
    pub fn issue(&self, name: &str) -> Result<CertifiedKey, TlsError> {
        let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let now = time::OffsetDateTime::now_utc();
        if self.not_after <= now + time::Duration::hours(1) {
            // Limitation: a server left running past its CA's end serves
            // no new development leaves (a restart makes a new CA; renewing
            // the CA in place would lift it).
            return Err(TlsError::Generate(
                "the development CA has expired; restart serve --dev-tls to replace it".into(),
            ));
        }
        let not_after = (now + DEV_LEAF_LIFETIME).min(self.not_after);
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(gen)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.not_before = now - time::Duration::hours(1);
        params.not_after = not_after;
        let key = rcgen::KeyPair::generate().map_err(gen)?;
        let leaf = params.signed_by(&key, &self.issuer).map_err(gen)?;
        let chain = format!("{}{}", leaf.pem(), self.ca_pem);
        let certified = certified_key(&chain, &key.serialize_pem())?;
        if let Ok(mut leaves) = self.leaves.lock() {
            leaves.insert(name.to_owned(), not_after);
        }
        Ok(certified)
    }

    /// True iff this CA issued the certificate of `name` and it is due
    /// for renewal.
    fn renewal_due(&self, name: &str) -> bool {
        let now = time::OffsetDateTime::now_utc();
        self.leaves
            .lock()
            .ok()
            .and_then(|leaves| leaves.get(name).copied())
            .is_some_and(|end| end - now < DEV_LEAF_RENEW_BEFORE)
    }
}

/// The end of validity of a stored CA certificate, and whether it carries
/// Name Constraints.
fn dev_ca_facts(pem: &str) -> Result<(time::OffsetDateTime, bool), TlsError> {
    let unreadable = || TlsError::Generate("the stored development CA is unreadable".into());
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| unreadable())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|_| unreadable())?;
    let end = cert.validity().not_after.timestamp();
    let not_after = time::OffsetDateTime::from_unix_timestamp(end).map_err(|_| unreadable())?;
    let constrained = cert.name_constraints().ok().flatten().is_some();
    Ok((not_after, constrained))
}

/// True iff `name` is `localhost` or under it (RFC 6761).
fn is_localhost(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

impl Tls {
    /// Starts with no certificates and a freshly generated default one.
    pub fn new() -> Result<Tls, TlsError> {
        // `invalid` is reserved (RFC 6761): it can never be a customer's.
        let (cert, key) = self_signed(&["spinforge.invalid"], "SpinForge default certificate")?;
        let fallback = Arc::new(certified_key(&cert, &key)?);
        Ok(Tls {
            inner: Arc::new(Inner {
                provider: Arc::new(strict_provider()),
                certs: ArcSwap::default(),
                fallback,
                alpn_challenges: ArcSwap::default(),
                http_challenges: Mutex::default(),
                sites: ArcSwap::default(),
                wanted: Mutex::default(),
                is_site: Mutex::default(),
                https_port: std::sync::atomic::AtomicU16::new(443),
                dev_ca: OnceLock::new(),
            }),
        })
    }

    /// The rustls configuration of the HTTPS listener: TLS 1.2 and 1.3,
    /// AEAD suites only, ALPN h2 then http/1.1, rotating ticket keys.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        // acme-tls/1 last: only an ACME validator offers it, and such a
        // connection is closed after the handshake.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        // Ticket keys rotate every few hours; the previous key still
        // decrypts for one more period.
        config.ticketer = provider::Ticketer::new()?;
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        config.max_early_data_size = 0;
        Ok(Arc::new(config))
    }

    /// `--dev-tls`: `localhost` names without a certificate get one from
    /// `ca` on their first hello.
    pub fn set_dev_ca(&self, ca: DevCa) {
        let _ = self.inner.dev_ca.set(ca);
    }

    /// Issues and keeps a development certificate for a `localhost` name.
    fn dev_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let ca = self.inner.dev_ca.get()?;
        let certs = self.inner.certs.load();
        if !is_localhost(name) || (certs.len() >= DEV_CERTS_MAX && !certs.contains_key(name)) {
            return None;
        }
        match ca.issue(name) {
            Ok(key) => {
                let key = Arc::new(key);
                self.set_cert(name, key.clone());
                Some(key)
            }
            Err(e) => {
                tracing::warn!(name, error = %e, "development certificate failed");
                None
            }
        }
    }

    /// Replaces the certificate of `domain` (or `*.suffix`).
    pub fn set_cert(&self, domain: &str, key: Arc<CertifiedKey>) {
        let domain = domain.to_ascii_lowercase();
        self.inner.certs.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(domain.clone(), key.clone());
            map
        });
    }

    /// Forgets the certificate and HTTPS settings of a deleted site, so a
    /// later site of the same name (perhaps another customer's) never gets
    /// them.
    pub fn forget_site(&self, domain: &str) {
        let domain = domain.to_ascii_lowercase();
        self.inner.certs.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(&domain);
            map
        });
        self.inner.sites.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(&domain);
            map
        });
    }

    /// True iff a certificate (exact or wildcard) covers `host`.
    pub fn has_cert(&self, host: &str) -> bool {
        lookup(&self.inner.certs.load(), host).is_some()
    }

    /// The number of domains with a certificate.
    pub fn cert_count(&self) -> usize {
        self.inner.certs.load().len()
    }

    /// Replaces every site's HTTPS settings at once.
    pub fn set_sites(&self, sites: HashMap<String, SiteHttps>) {
        self.inner.sites.store(Arc::new(sites));
    }

    /// One site's settings; the default for a site without its own.
    pub fn site(&self, domain: &str) -> SiteHttps {
        self.inner
            .sites
            .load()
            .get(domain)
            .copied()
            .unwrap_or_default()
    }

    /// Sets the public HTTPS port that redirects name (443 is left out).
    pub fn set_https_port(&self, port: u16) {
        self.inner
            .https_port
            .store(port, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn https_port(&self) -> u16 {
        self.inner
            .https_port
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Publishes the answer to an HTTP-01 challenge.
    pub fn add_http_challenge(&self, token: &str, key_authorization: &str) {
        if let Ok(mut map) = self.inner.http_challenges.lock() {
            map.insert(token.to_owned(), key_authorization.to_owned());
        }
    }

    pub fn remove_http_challenge(&self, token: &str) {
        if let Ok(mut map) = self.inner.http_challenges.lock() {
            map.remove(token);
        }
    }

    /// The key authorization for an HTTP-01 token, if one is pending.
    pub fn http_challenge(&self, token: &str) -> Option<String> {
        self.inner
            .http_challenges
            .lock()
            .ok()
            .and_then(|map| map.get(token).cloned())
    }

    /// Publishes the validation certificate of a TLS-ALPN-01 challenge.
    pub fn add_alpn_challenge(&self, domain: &str, key: Arc<CertifiedKey>) {
        let domain = domain.to_ascii_lowercase();
        self.inner.alpn_challenges.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(domain.clone(), key.clone());
            map
        });
    }

    pub fn remove_alpn_challenge(&self, domain: &str) {
        let domain = domain.to_ascii_lowercase();
        self.inner.alpn_challenges.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(&domain);
            map
        });
    }

    /// Turns on on-demand ordering: a hello for a name that `is_site`
    /// accepts and no certificate covers is sent to `wanted` (dropped
    /// when the queue is full; the hub's periodic check catches up).
    pub fn on_missing_cert(&self, wanted: mpsc::Sender<String>, is_site: IsSite) {
        if let Ok(mut slot) = self.inner.wanted.lock() {
            *slot = Some(wanted);
        }
        if let Ok(mut slot) = self.inner.is_site.lock() {
            *slot = Some(is_site);
        }
    }

    fn want(&self, name: &str) {
        let is_site = self.inner.is_site.lock().ok().and_then(|s| s.clone());
        let Some(is_site) = is_site else {
            return;
        };
        // Only names that exist as sites: an unknown SNI never orders.
        if !is_site(name) {
            return;
        }
        if let Ok(slot) = self.inner.wanted.lock() {
            if let Some(tx) = slot.as_ref() {
                let _ = tx.try_send(name.to_owned());
            }
        }
    }
}

/// The TLS client configuration of `https://` upstreams: the system's
/// trusted roots plus `extra_ca_pem` (an operator's private CA), and a
/// client certificate for mutual TLS when given. Verification is always
/// on; there is no switch to turn it off.
pub fn upstream_client_config(
    extra_ca_pem: Option<&str>,
    client_cert: Option<(&str, &str)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = system_roots().clone();
    if let Some(pem) = extra_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|_| TlsError::NoCertificate)?;
            roots
                .add(cert)
                .map_err(|e| TlsError::Key(format!("the CA certificate is unusable: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsError::NoCertificate);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(strict_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Generate(e.to_string()))?
        .with_root_certificates(roots);
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((chain_pem, key_pem)) => {
            let checked = certified_key(chain_pem, key_pem)?;
            let key =
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::NoKey)?;
            builder
                .with_client_auth_cert(checked.cert, key)
                .map_err(|e| TlsError::Key(e.to_string()))?
        }
    };
    Ok(config)
}

/// The system's trusted roots, read once per process: they are a bundle
/// or a folder of files, and every handler that builds a configuration
/// (an upstream TLS setting saved through the API) would otherwise read
/// them again on the async runtime. serve reads them at start, when it
/// builds its default upstream client; an update of the system's store
/// takes effect at the next start.
fn system_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable or unparsable entries are skipped, as the system's
        // own tools do; what remains is what the host trusts.
        let (added, _skipped) =
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if added == 0 {
            // https:// upstreams then verify only against an operator's
            // CA; every other one is refused (fail closed).
            tracing::warn!("no trusted roots found in the system's certificate store");
        } else {
            tracing::debug!(roots = added, "read the system's trusted roots");
        }
        roots
    })
}

/// [`upstream_client_config`] with the system's roots only.
pub fn default_upstream_client_config() -> rustls::ClientConfig {
    // Without a CA or client certificate to read, the only step that
    // could fail is the protocol versions, which the provider supports.
    #[allow(clippy::expect_used)]
    upstream_client_config(None, None).expect("TLS 1.2 and 1.3 with the aws-lc-rs provider")
}

/// The aws-lc-rs provider with the AEAD suites only, spelled out so a
/// provider default that grows a CBC suite cannot slip in.
fn strict_provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..provider::default_provider()
    }
}

/// Exact name first, then the wildcard one label up.
fn lookup(map: &HashMap<String, Arc<CertifiedKey>>, host: &str) -> Option<Arc<CertifiedKey>> {
    if let Some(key) = map.get(host) {
        return Some(key.clone());
    }
    let (_, parent) = host.split_once('.')?;
    map.get(&format!("*.{parent}")).cloned()
}

impl ResolvesServerCert for Tls {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme {
            // A validator gets the challenge certificate or nothing.
            let name = name?;
            return self.inner.alpn_challenges.load().get(&name).cloned();
        }
        let Some(name) = name else {
            return Some(self.inner.fallback.clone());
        };
        let dev_ca = self.inner.dev_ca.get();
        match lookup(&self.inner.certs.load(), &name) {
            // A development leaf near its end is issued anew; should that
            // fail, the old one serves while it lasts.
            Some(key) if dev_ca.is_some_and(|ca| ca.renewal_due(&name)) => {
                Some(self.dev_cert(&name).unwrap_or(key))
            }
            Some(key) => Some(key),
            None if self.inner.dev_ca.get().is_some() && is_localhost(&name) => Some(
                self.dev_cert(&name)
                    .unwrap_or_else(|| self.inner.fallback.clone()),
            ),
            None => {
                self.want(&name);
                Some(self.inner.fallback.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_for(name: &str) -> Arc<CertifiedKey> {
        let (cert, key) = self_signed(&[name], name).expect("generate");
        Arc::new(certified_key(&cert, &key).expect("parse"))
    }

    #[test]
    fn lookup_prefers_the_exact_name_then_one_wildcard_level() {
        let mut map = HashMap::new();
        let exact = key_for("a.example.test");
        let wild = key_for("*.example.test");
        map.insert("a.example.test".to_owned(), exact.clone());
        map.insert("*.example.test".to_owned(), wild.clone());
        assert!(Arc::ptr_eq(
            &lookup(&map, "a.example.test").expect("exact"),
            &exact
        ));
        assert!(Arc::ptr_eq(
            &lookup(&map, "b.example.test").expect("wild"),
            &wild
        ));
        assert!(lookup(&map, "x.b.example.test").is_none());
        assert!(lookup(&map, "example.test").is_none());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (cert, _) = self_signed(&["a.test"], "a").expect("generate");
        let (_, other_key) = self_signed(&["a.test"], "a").expect("generate");
        let err = certified_key(&cert, &other_key).expect_err("mismatch");
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(matches!(
            certified_key("junk", &other_key),
            Err(TlsError::NoCertificate)
        ));
    }

    #[test]
    fn the_server_config_offers_only_tls12_and_tls13_aead_suites() {
        let tls = Tls::new().expect("tls");
        let config = tls.server_config().expect("config");
        let suites = &config.crypto_provider().cipher_suites;
        assert_eq!(suites.len(), 9);
        for suite in suites {
            let name = format!("{:?}", suite.suite());
            assert!(name.contains("GCM") || name.contains("CHACHA20"), "{name}");
        }
        assert_eq!(config.alpn_protocols[0], b"h2");
    }
}
