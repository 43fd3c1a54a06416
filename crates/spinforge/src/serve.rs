//! `spinforge serve`: opens the store, starts the hub and binds the edge
//! and API listeners, then runs until SIGINT or SIGTERM.

use crate::cli::{LogFormat, LogPii, ServeArgs};
use crate::config::{self, Settings};
use anyhow::Context;
use edge::listener::ConnectionLimits;
use edge::{Edge, EdgeMetrics, Routes};
use hub::apps::SupervisorWaker;
use hub::{Hub, Layout};
use hyper_util::service::TowerToHyperService;
use identity::Identity;
use prometheus_client::registry::Registry;
use spinlet::{Supervisor, SupervisorConfig};
use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use store::SqliteStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::Layer;

pub fn init_logging(format: LogFormat, pii: LogPii) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPINFORGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        // Secret values this process knows are masked in every line.
        .with_writer(|| secrets::redact::RedactingWriter(std::io::stderr()));
    let fmt = match format {
        LogFormat::Text if pii == LogPii::Masked => {
            fmt.fmt_fields(masked_fields()).with_filter(filter).boxed()
        }
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        // JSON log masking (branch rotator).
        // Secret values inside JSON strings are escaped, and personal
        // fields need their names: the JSON writer masks each event
        // object, field by field.
        LogFormat::Json => {
            let masked = pii == LogPii::Masked;
            fmt.json()
                .flatten_event(true)
                .with_writer(move || crate::json_log::JsonLogWriter::new(std::io::stderr(), masked))
                .with_filter(filter)
                .boxed()
        }
    };
    // The audit layer has its own filter: SPINFORGE_LOG=warn must not
    // keep audit events out of the audit log.
    tracing_subscriber::registry()
        .with(fmt)
        .with(audit::AuditLayer.with_filter(audit::AuditLayer::filter()))
        .init();
}

/// The text log's fields with personal data masked: each field as
/// `name=value` (the message bare), passed through
/// [`audit::pii::mask_log_value`].
fn masked_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let name = field.name();
        let text = format!("{value:?}");
        let shown = audit::pii::mask_log_value(name, &text);
        match (name, shown) {
            ("message", _) => write!(w, "{text}"),
            (_, Some(None)) => Ok(()),
            (_, Some(Some(masked))) => write!(w, "{name}={masked}"),
            (_, None) => write!(w, "{name}={text}"),
        }
    })
    .delimited(" ")
}

/// Open connections the API socket takes at once; more wait in the backlog.
const API_MAX_CONNECTIONS: usize = 256;

/// Raises the soft limit on open files to the hard limit: every client
/// connection, upstream connection and app pipe is a descriptor.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, "cannot raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format, args.log_pii);
    raise_open_files_limit();
    let settings = config::resolve(&args)?;
    std::fs::create_dir_all(&settings.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            settings.data_dir.display()
        )
    })?;
    // The store holds password hashes and the releases hold the sites'
    // files: no other local user needs to read any of it.
    std::fs::set_permissions(&settings.data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", settings.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&settings.data_dir)?;
    tracing::info!("data directory: {}", data_dir.display());

    let store = Arc::new(
        SqliteStore::open(&data_dir)
            .await
            .context("cannot open the store")?,
    );
    // ---- audit log: durable before anything can cause an event ----------
    let auditor = audit::Auditor::start(&data_dir, settings.audit.clone())
        .await
        .context("cannot start the audit log")?;
    audit::install(auditor.clone());
    audit::record(
        audit::AuditEvent::new("system.start")
            .resource("spinforge")
            .meta("version", env!("CARGO_PKG_VERSION")),
    )
    .await
    .context("cannot write to the audit log")?;
    // ---- end audit log ---------------------------------------------------

    // ---- secrets (issue 8): every stored secret must decrypt -------------
    let secrets = secrets::Secrets::open(&data_dir, &settings.secrets)
        .await
        .context("cannot open the secret store; no app will start with broken secrets")?;
    tracing::info!(
        master_key = %secrets.active_master_key()?,
        source = %secrets.master_key_origin(),
        "secret store ready"
    );
    // ---- end secrets -----------------------------------------------------

    // The active token signing key must open with this master key.
    let identity = Identity::new(store.clone(), settings.identity.clone(), secrets.clone())
        .await
        .context("cannot open the token signing key; serve does not start without it")?;
    let mut registry = Registry::default();
    let routes = Routes::default();
    let shield = start_shield(&settings, &data_dir)?;
    // ---- shield: edge rate limits keyed by valid API keys (shield2) ----
    let verifier_identity = identity.clone();
    // The edge asks from its serving threads' runtimes. The lookup runs on
    // this one, so whatever the store's pool spawns for it lives here and
    // not on an edge thread; it is aborted if the request goes away first.
    let main_runtime = tokio::runtime::Handle::current();
    shield.set_key_verifier(Arc::new(move |key: String| {
        let identity = verifier_identity.clone();
        let lookup = main_runtime.spawn(async move {
            let principal = identity.authenticate(&key).await.ok()?;
            // One bucket per account, not per key: every key of a user
            // shares it, so minting more keys buys no more requests.
            principal
                .api_key
                .map(|_| format!("user:{}", principal.user_id.0))
        });
        let lookup = tokio_util::task::AbortOnDropHandle::new(lookup);
        Box::pin(async move { lookup.await.ok().flatten() })
    }));
    // ---- end shield2 ----
    let edge = Edge::new(
        settings.edge.clone(),
        routes.clone(),
        EdgeMetrics::new(&mut registry),
        shield.clone(),
    );
    let spawner = crate::sandbox::spawner(&settings.sandbox, &data_dir)?;
    let supervisor = Supervisor::new(SupervisorConfig::new(&data_dir), spawner)
        .context("cannot start the app supervisor")?;
    edge.set_app_waker(Arc::new(SupervisorWaker::new(supervisor.clone())));
    supervisor.set_secret_env(Arc::new(hub::secrets_api::StoreSecretEnv {
        store: store.clone(),
        secrets: secrets.clone(),
    }));
    let hub = Hub::start(
        store.clone(),
        identity,
        routes,
        Layout::new(&data_dir),
        settings.hub.clone(),
        supervisor.clone(),
        registry,
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot start the hub: {e}"))?;
    // Hub::start has loaded the route table from the store.
    tracing::info!(
        routes = edge.routes().snapshot().len(),
        "route table loaded"
    );

    if args.demo {
        deploy_examples(&hub, Path::new("examples")).await;
    }
    let incidents = start_incidents(&settings, &data_dir, &hub, &shield, &secrets).await?;

    // ---- TLS: certificates, ACME, dev CA ----------------------------------
    let tls = edge::tls::Tls::new().map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
    edge.set_tls(tls.clone());
    hub.attach_tls(tls.clone());
    let certs = Arc::new(hub::certs::Certs::new(
        store.clone(),
        tls.clone(),
        secrets.clone(),
    ));
    let loaded = certs
        .load()
        .await
        .map_err(|e| anyhow::anyhow!("cannot load certificates: {e}"))?;
    tracing::info!(certificates = loaded, "certificates loaded");
    if args.dev_tls {
        start_dev_tls(&tls, &data_dir)?;
    }
    if settings.acme.enabled {
        hub::acme::Acme::start(
            (*certs).clone(),
            settings.acme.clone(),
            edge.routes().clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot load the ACME backoff: {e}"))?;
        tracing::info!(directory = %settings.acme.directory, "ACME certificates enabled");
    }
    // ---- end TLS -----------------------------------------------------------

    // ---- upstream TLS per proxy site (upstreamtls) -------------------------
    let site_tls = settings.edge.proxy.site_tls.clone();
    hub.attach_upstream_tls(site_tls.clone());
    let upstream_tls = Arc::new(hub::upstream_tls_api::UpstreamTls::new(
        store.clone(),
        secrets.clone(),
        site_tls,
    ));
    let own = upstream_tls
        .load()
        .await
        .map_err(|e| anyhow::anyhow!("cannot load upstream TLS settings: {e}"))?;
    tracing::info!(sites = own, "per-site upstream TLS loaded");
    // Once a day, as certificates are counted in days.
    upstream_tls.clone().watch_expiry(
        settings.upstream_client_cert_pem.clone(),
        std::time::Duration::from_secs(24 * 3600),
    );
    // ---- end upstream TLS --------------------------------------------------

    let (stop_tx, stop_rx) = watch::channel(false);
    let edge_listener = bind(&settings, settings.listen, "edge").await?;
    let api_listener = bind(&settings, settings.api_listen, "API").await?;
    // HTTPS is announced first: the test harness reads the addresses in
    // this order.
    // ACME's TLS-ALPN-01 and the dev CA need the listener before any
    // certificate exists.
    let https_now = args.dev_tls || settings.acme.enabled;
    let tls_task = start_https(&settings, https_now, &edge, &tls, stop_rx.clone()).await?;
    tracing::info!("edge listening on http://{}", edge_listener.local_addr()?);
    tracing::info!("API listening on http://{}", api_listener.local_addr()?);
    announce_setup(&hub, &data_dir).await;

    let edge_serving =
        edge::threads::on_threads(edge_listener, edge::threads::default_threads(), "edge", {
            let (edge, stop) = (edge.clone(), stop_rx.clone());
            move |listener| edge.clone().serve(listener, wait_for(stop.clone()))
        })
        .await
        .context("cannot start the edge's serving threads")?;
    let edge_task = tokio::spawn(edge_serving.wait());
    // Single sign-on: providers that fail discovery are logged and left out.
    let sso = Arc::new(hub::oidc_api::Sso::discover(settings.oidc.clone()).await);
    let api = hub::router(hub.clone())
        .layer(axum::Extension(shield.clone()))
        .layer(axum::Extension(auditor.reader()))
        .layer(axum::Extension(incidents))
        .layer(axum::Extension(sso))
        .layer(axum::Extension(secrets.clone()))
        .layer(axum::Extension(certs))
        .layer(axum::Extension(upstream_tls));
    let api_auditor = auditor.clone();
    // The API gets the edge's accept loop: header-read and idle timeouts,
    // and a cap on connections, so idle clients of the API cannot use up
    // the file descriptors the edge needs too.
    let api_limits = ConnectionLimits {
        header_read_timeout: settings.edge.header_read_timeout,
        idle_timeout: settings.edge.idle_timeout,
        shutdown_grace: settings.edge.shutdown_grace,
        max_connections: Some(API_MAX_CONNECTIONS),
        per_client: None,
        http2: shield.http2_limits(),
    };
    let api_task = tokio::spawn(edge::listener::serve(
        api_listener,
        api_limits,
        None,
        // Each request learns its TCP peer (throttling, audit), is refused
        // while the audit log cannot be written, and is answered only once
        // its audit events are stored.
        move |peer| {
            let api = axum::Extension(hub::access::PeerAddr(peer)).layer(api.clone());
            TowerToHyperService::new(audit::http::Audited::new(
                api,
                api_auditor.clone(),
                peer.ip(),
            ))
        },
        wait_for(stop_rx),
    ));

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = edge_task.await;
    let _ = tls_task.await;
    supervisor.shutdown().await;
    let _ = api_task.await;
    let _ = audit::record(audit::AuditEvent::new("system.stop").resource("spinforge")).await;
    auditor.shutdown().await;
    secrets.close().await;
    store.close().await;
    Ok(())
}

// ---- TLS ----

/// Binds the HTTPS listener now when its address was configured or a
/// certificate exists; otherwise once the first certificate arrives.
async fn start_https(
    settings: &Settings,
    now: bool,
    edge: &Edge,
    tls: &edge::tls::Tls,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let config = tls
        .server_config()
        .map_err(|e| anyhow::anyhow!("TLS configuration: {e}"))?;
    let addr = settings.tls_listen;
    if now || settings.tls_listen_explicit || tls.cert_count() > 0 {
        let listener = bind(settings, addr, "edge HTTPS").await?;
        let local = listener.local_addr()?;
        tls.set_https_port(local.port());
        tracing::info!("edge listening on https://{local}");
        let serving = serve_tls_threads(edge.clone(), listener, config, stop)
            .await
            .context("cannot start the edge's HTTPS serving threads")?;
        return Ok(tokio::spawn(serving.wait()));
    }
    tracing::info!("HTTPS ({addr}) waits for the first certificate");
    let (edge, tls) = (edge.clone(), tls.clone());
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        while tls.cert_count() == 0 {
            tokio::select! {
                _ = tick.tick() => {}
                () = wait_for(stop.clone()) => return,
            }
        }
        match edge::listener::bind(addr) {
            Ok(listener) => {
                if let Ok(local) = listener.local_addr() {
                    tls.set_https_port(local.port());
                    tracing::info!("edge listening on https://{local}");
                }
                match serve_tls_threads(edge, listener, config, stop).await {
                    Ok(serving) => serving.wait().await,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the edge's HTTPS serving threads")
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, %addr, "cannot bind the edge HTTPS listener"),
        }
    }))
}

/// Starts serving HTTPS on one thread per CPU, each with a runtime of its
/// own (see `edge::threads`), until `stop`.
async fn serve_tls_threads(
    edge: Edge,
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<edge::threads::Serving> {
    let threads = edge::threads::default_threads();
    edge::threads::on_threads(listener, threads, "edge-tls", move |listener| {
        edge.clone()
            .serve_tls(listener, config.clone(), wait_for(stop.clone()))
    })
    .await
}

/// `--dev-tls`: serves `localhost` names with certificates of the local
/// development CA, and says how to trust that CA.
fn start_dev_tls(tls: &edge::tls::Tls, data_dir: &Path) -> anyhow::Result<()> {
    let ca = edge::tls::DevCa::load_or_create(&data_dir.join("dev-ca"))
        .map_err(|e| anyhow::anyhow!("--dev-tls: {e}"))?;
    tracing::warn!(
        "--dev-tls: localhost names are served with certificates of the local development \
         CA {ca}, which can vouch only for localhost names and loopback addresses and is \
         replaced after a year. To trust it: curl --cacert {ca} ...; system-wide on Debian: \
         cp {ca} /usr/local/share/ca-certificates/spinforge-dev.crt && update-ca-certificates; \
         in a browser, import it as an authority. Use it for development only.",
        ca = ca.ca_path.display()
    );
    tls.set_dev_ca(ca);
    Ok(())
}

// ---- shield ----

/// Builds the shield with its state file in the data directory, and
/// starts its housekeeping (expired bans, idle limiter keys, saving
/// automatic bans) every few seconds.
fn start_shield(settings: &Settings, data_dir: &Path) -> anyhow::Result<shield::Shield> {
    let mut config = settings.shield.clone();
    config.state_file = Some(data_dir.join("shield").join("state.json"));
    let shield = shield::Shield::new(
        &config,
        settings.edge.trusted_proxies.clone(),
        shield::ShieldClock::system(),
    )
    .map_err(|e| anyhow::anyhow!("cannot start the shield: {e}"))?;
    if !shield.enabled() {
        tracing::warn!("shield is disabled: no limits, bans or security headers at the edge");
    }
    let housekeeping = shield.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            let shield = housekeeping.clone();
            let _ = tokio::task::spawn_blocking(move || shield.maintain()).await;
        }
    });
    Ok(shield)
}

// ---- incidents ----

/// Starts incident response: detection on the audit tap, containment
/// through the shield, identity, the hub's site isolation and the secret
/// store's rotation.
async fn start_incidents(
    settings: &Settings,
    data_dir: &Path,
    hub: &Hub,
    shield: &shield::Shield,
    secrets: &secrets::Secrets,
) -> anyhow::Result<incident::Incidents> {
    let rotator = hub::secret_rotation::HubSecretRotator {
        hub: hub.clone(),
        secrets: secrets.clone(),
    };
    let responders = incident::Responders {
        shield: shield.clone(),
        identity: hub.identity().clone(),
        store: hub.store().clone(),
        sites: Arc::new(hub::incident_api::HubSites(hub.clone())),
        secrets: Some(Arc::new(rotator)),
        ban_ttl: std::time::Duration::from_secs(settings.incidents.policy.ban_ttl_secs),
    };
    let incidents = incident::Incidents::start(data_dir, settings.incidents.clone(), responders)
        .await
        .context("cannot start incident response")?;
    incidents.watch(audit::subscribe());
    Ok(incidents)
}

async fn bind(
    _settings: &Settings,
    addr: std::net::SocketAddr,
    what: &str,
) -> anyhow::Result<TcpListener> {
    edge::listener::bind(addr).with_context(|| format!("cannot bind the {what} to {addr}"))
}

async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// With no users yet, says how to create the first admin, and prints a
/// one-time setup token. The token is printed once and lives in memory
/// only, so a restart makes a new one.
async fn announce_setup(hub: &Hub, data_dir: &Path) {
    match hub.issue_setup_token().await {
        Ok(Some(token)) => {
            tracing::warn!(
                "no admin exists yet. Create one on this host with:\n    \
                 spinforge admin create --data-dir {} --email you@example.com\n\
                 or POST {{\"token\",\"email\",\"password\"}} to /api/v1/setup with the \
                 one-time setup token: {token}",
                data_dir.display()
            );
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "could not check for users"),
    }
}

/// `--demo`: deploys each folder of `examples/` as `NAME.localhost`,
/// unless that site already has a release.
async fn deploy_examples(hub: &Hub, examples: &Path) {
    let Ok(entries) = std::fs::read_dir(examples) else {
        tracing::warn!("--demo: no ./examples folder here; nothing to deploy");
        return;
    };
    let mut dirs: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    dirs.sort();
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let domain = format!("{name}.localhost");
        let Some(kind) = example_kind(&dir) else {
            tracing::info!(site = %domain, "--demo: neither a web page nor an app; skipped");
            continue;
        };
        if let Err(e) = deploy_example(hub, &dir, &domain, kind).await {
            tracing::warn!(site = %domain, error = %e, "--demo: example not deployed");
        }
    }
}

/// An app folder (a manifest, or a detectable start command whose program
/// this host has) is a process site; a folder with an `index.html` is a
/// static site; anything else is skipped.
fn example_kind(dir: &Path) -> Option<store::SiteKind> {
    match spinlet::manifest::load(dir) {
        Ok(_) => Some(store::SiteKind::Process),
        Err(_) if dir.join("index.html").is_file() => Some(store::SiteKind::Static),
        Err(e) => {
            tracing::info!(dir = %dir.display(), reason = %e, "--demo: not an app here");
            None
        }
    }
}

async fn deploy_example(
    hub: &Hub,
    dir: &Path,
    domain: &str,
    kind: store::SiteKind,
) -> anyhow::Result<()> {
    let existing = hub.store().site_by_domain(domain).await?;
    if existing
        .as_ref()
        .is_some_and(|s| s.active_release.is_some())
    {
        tracing::info!(site = %domain, "--demo: already deployed");
        return Ok(());
    }
    if existing.is_none() {
        let spec = hub::sites::SiteSpec {
            domain: domain.to_owned(),
            kind,
            upstream: None,
            balancer: None,
            spa: false,
        };
        hub.create_site(None, None, spec)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let bundle = crate::pack::pack_to_vec(dir)?;
    let release = hub
        .deploy(domain, None, axum::body::Body::from(bundle))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(site = %domain, release = %release.id, "--demo: deployed {}", dir.display());
    Ok(())
}
