//! Reverse proxying to a site's upstream: streaming bodies both ways, a
//! keep-alive pool, hop-by-hop headers removed, forwarding headers set,
//! and WebSocket upgrades spliced through on a dedicated connection.

use crate::app::{AppDialer, AppLease, LeaseGuard, LeasedBody};
use crate::body::{self, EdgeBody};
use crate::pool::{self, Http1Pool, PoolKey, Reach};
use crate::request_id::RequestId;
use crate::upstream::{PolicyResolver, Upstream, UpstreamPolicy};
use crate::upstream_tls::{SiteTlsEntry, SiteUpstreamTls};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub connect_timeout: Duration,
    /// How long to wait for the upstream's response headers.
    pub response_timeout: Duration,
    /// Idle upstream connections kept per host.
    pub pool_max_idle: usize,
    /// How `https://` upstreams are verified (and the client certificate
    /// for mutual TLS). `None`: the system's roots, no client certificate.
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
    /// Proxy sites' own upstream TLS, which replaces `upstream_tls` for
    /// them; the hub keeps it current.
    pub site_tls: SiteTls,
}

/// The pool for `https://` and `http://` upstreams reached through the
/// upstream policy.
pub type PooledClient = Client<HttpsConnector<HttpConnector<PolicyResolver>>, EdgeBody>;

/// Per-site upstream TLS, with the proxy's pool type.
pub type SiteTls = SiteUpstreamTls<PooledClient>;

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            pool_max_idle: 64,
            upstream_tls: None,
            site_tls: SiteTls::default(),
        }
    }
}

/// Why a proxied request got no upstream response. Every variant is the
/// upstream's fault or the policy's refusal, never the client's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    #[error("upstream address refused by policy")]
    Forbidden,
    #[error("could not connect to upstream: {0}")]
    Connect(String),
    #[error("upstream did not answer in time")]
    Timeout,
    #[error("upstream failed: {0}")]
    Upstream(String),
    /// The client: a path with `.` or `..` segments (also encoded), which
    /// an upstream that normalises paths would resolve outside the site's
    /// base path.
    #[error("request path has dot segments")]
    DotSegments,
    /// The client: the body streamed past the shield's size cap.
    #[error("request body too large")]
    BodyTooLarge,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::DotSegments => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// What the edge knows about the client, for the forwarding headers.
pub struct ClientContext<'a> {
    pub client_ip: IpAddr,
    /// True iff the peer is a trusted proxy, so its `X-Forwarded-For`
    /// (extended with its address) and its `X-Forwarded-Proto` are kept.
    pub peer_trusted: bool,
    /// The address the connection came from.
    pub peer: IpAddr,
    /// The normalised host the client asked for.
    pub host: &'a str,
    pub request_id: &'a RequestId,
    /// The client came over TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// The body is cut off after this many bytes (`u64::MAX`: no cap).
    pub body_limit: u64,
    /// The route's site, which picks its upstream TLS settings.
    pub site: &'a str,
}

pub struct Proxy {
    /// Plain `http://` upstreams: sites and apps, sandboxed or not.
    plain: Arc<Http1Pool>,
    /// `https://` upstreams without a site setting of their own.
    client: PooledClient,
    /// That pool's TLS configuration, also used by WebSocket upgrades to
    /// such upstreams.
    tls: Arc<ClientConfig>,
    policy: Arc<UpstreamPolicy>,
    config: ProxyConfig,
}

/// How a request's upstream connection is made.
enum Route<'a> {
    /// Through the pool, addresses checked against the upstream policy.
    Checked,
    /// Through the pool, unchecked: a local app on the host's loopback.
    Trusted,
    /// Through the pool, each connection made by a sandboxed app
    /// instance's dialer inside its network namespace.
    App(&'a Arc<dyn AppDialer>),
}

impl Proxy {
    pub fn new(config: ProxyConfig, policy: Arc<UpstreamPolicy>) -> Proxy {
        let tls = Arc::new(upstream_tls_config(&config));
        let client = pooled_client(&config, &policy, ClientConfig::clone(&tls));
        Proxy {
            plain: Http1Pool::new(config.pool_max_idle, POOL_IDLE_TIMEOUT),
            client,
            tls,
            policy,
            config,
        }
    }

    pub async fn forward(
        &self,
        req: Request<EdgeBody>,
        upstream: &Upstream,
        ctx: ClientContext<'_>,
    ) -> Result<Response<EdgeBody>, ProxyError> {
        // Names go through the policy resolver at connect time; literals
        // skip DNS, so they are checked here against the current policy.
        if let Some(ip) = upstream.literal_ip() {
            if !self.policy.permits(ip) {
                return Err(ProxyError::Forbidden);
            }
        }
        self.send(req, upstream, ctx, None, Route::Checked).await
    }

    /// Like [`Proxy::forward`], holding `guard` for the whole exchange and
    /// telling it the response status (balancer members use this).
    pub async fn forward_leased(
        &self,
        req: Request<EdgeBody>,
        upstream: &Upstream,
        ctx: ClientContext<'_>,
        guard: Box<dyn LeaseGuard>,
    ) -> Result<Response<EdgeBody>, ProxyError> {
        if let Some(ip) = upstream.literal_ip() {
            if !self.policy.permits(ip) {
                guard.record_status(StatusCode::BAD_GATEWAY.as_u16());
                return Err(ProxyError::Forbidden);
            }
        }
        self.send(req, upstream, ctx, Some(Leased(guard)), Route::Checked)
            .await
    }

    /// Forwards to a local app instance. The policy does not apply: the
    /// address came from our own supervisor, not from a site's settings.
    /// The lease is held until the response body or WebSocket ends. A
    /// sandboxed app is reached through its lease's dialer.
    pub async fn forward_to_app(
        &self,
        req: Request<EdgeBody>,
        lease: AppLease,
        ctx: ClientContext<'_>,
    ) -> Result<Response<EdgeBody>, ProxyError> {
        let upstream = Upstream::local(lease.addr);
        let route = match &lease.dialer {
            Some(dialer) => Route::App(dialer),
            None => Route::Trusted,
        };
        self.send(req, &upstream, ctx, Some(Leased(lease.guard)), route)
            .await
    }

    async fn send(
        &self,
        mut req: Request<EdgeBody>,
        upstream: &Upstream,
        ctx: ClientContext<'_>,
        lease: Option<Leased>,
        route: Route<'_>,
    ) -> Result<Response<EdgeBody>, ProxyError> {
        if has_dot_segments(req.uri().path()) {
            if let Some(Leased(guard)) = &lease {
                guard.record_status(StatusCode::BAD_REQUEST.as_u16());
            }
            return Err(ProxyError::DotSegments);
        }
        let upgrade = websocket_upgrade(req.headers());
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, incoming) = req.into_parts();

        parts.uri = upstream_uri(std::mem::take(&mut parts.uri), upstream)?;
        parts.version = Version::HTTP_11;
        prepare_request_headers(&mut parts.headers, upstream, &ctx, upgrade.as_ref());
        // Many servers never read the body of a GET (or HEAD, ...): on a
        // reused connection they would parse it as the next request (a
        // CL.0 desync, which smuggles a request past the edge's checks).
        // Such a request gets a connection that is closed after it.
        // Limitation: a POST to an endpoint that ignores its body (a
        // redirect, a static file) is not covered; closing after every
        // request with a body would cost POSTs their pooled connections.
        if !http_body::Body::is_end_stream(&incoming)
            && upgrade.is_none()
            && ignored_body(&parts.method)
        {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // The declared length was checked by the shield; this stops a
        // chunked body that grows past the cap while it streams. A body
        // that has already ended cannot grow.
        let body = if ctx.body_limit == u64::MAX || http_body::Body::is_end_stream(&incoming) {
            incoming
        } else {
            let limit = usize::try_from(ctx.body_limit).unwrap_or(usize::MAX);
            http_body_util::Limited::new(incoming, limit).boxed()
        };
        let outgoing = Request::from_parts(parts, body);

        let site_tls = match route {
            Route::Checked => self.config.site_tls.choose(ctx.site),
            Route::Trusted | Route::App(_) => None,
        };
        let result = match client_upgrade {
            None => self
                .send_pooled(outgoing, upstream, &route, site_tls.as_deref())
                .await
                .and_then(refuse_unasked_switch),
            Some(on_client) => {
                Box::pin(self.send_upgrade(
                    outgoing,
                    upstream,
                    &route,
                    site_tls.as_deref(),
                    on_client,
                ))
                .await
            }
        };
        attach(result, lease)
    }

    async fn send_pooled(
        &self,
        req: Request<EdgeBody>,
        upstream: &Upstream,
        route: &Route<'_>,
        site_tls: Option<&SiteTlsEntry<PooledClient>>,
    ) -> Result<Sent, ProxyError> {
        let reach = match route {
            Route::App(dialer) => Reach::App(dialer.key()),
            _ if upstream.tls => {
                let request = match site_tls {
                    Some(site) => site
                        .client(|tls| pooled_client(&self.config, &self.policy, tls))
                        .request(req),
                    None => self.client.request(req),
                };
                return Box::pin(self.send_legacy(request)).await;
            }
            Route::Trusted => Reach::Local,
            Route::Checked => Reach::Checked,
        };

        // Plain HTTP/1: the own pool. Its connections are dialled with
        // the same policy check as WebSocket upgrades.
        let (mut parts, body) = req.into_parts();
        parts.uri = origin_form(std::mem::take(&mut parts.uri));
        let req = Request::from_parts(parts, body);
        let key = PoolKey {
            authority: upstream.authority.clone(),
            reach,
        };
        // Limitation: one connect timeout covers all of a name's
        // addresses, tried in turn, where the https client splits it
        // between them (a happy-eyeballs dialler would lift it).
        let dial = || async {
            let connect = self.connect(upstream, route);
            match tokio::time::timeout(self.config.connect_timeout, connect).await {
                Err(_) => Err(ProxyError::Connect("connect timed out".into())),
                // A name that resolves only to refused addresses is a
                // failed connect, as the resolver of the https client
                // reports it.
                Ok(Err(ProxyError::Forbidden)) => Err(ProxyError::Connect(
                    "upstream resolves only to addresses the policy forbids".into(),
                )),
                Ok(result) => result,
            }
        };
        let sent = self.plain.send(&key, req, dial);
        let response = match tokio::time::timeout(self.config.response_timeout, sent).await {
            Err(_) => return Err(ProxyError::Timeout),
            Ok(Err(pool::SendError::Connect(e))) => return Err(e),
            Ok(Err(pool::SendError::Request(e))) if body_too_large(&e) => {
                return Err(ProxyError::BodyTooLarge)
            }
            Ok(Err(pool::SendError::Request(e))) => {
                return Err(ProxyError::Upstream(error_chain(&e)))
            }
            Ok(Ok(response)) => response,
        };
        Ok(relayed(response))
    }

    /// Sends through hyper-util's client: `https://` upstreams.
    async fn send_legacy(
        &self,
        request: hyper_util::client::legacy::ResponseFuture,
    ) -> Result<Sent, ProxyError> {
        let sent = tokio::time::timeout(self.config.response_timeout, request);
        let response = match sent.await {
            Err(_) => return Err(ProxyError::Timeout),
            Ok(Err(e)) if e.is_connect() => return Err(ProxyError::Connect(error_chain(&e))),
            Ok(Err(e)) if body_too_large(&e) => return Err(ProxyError::BodyTooLarge),
            Ok(Err(e)) => return Err(ProxyError::Upstream(error_chain(&e))),
            Ok(Ok(response)) => response,
        };
        Ok(relayed(response))
    }

    /// A WebSocket handshake gets its own upstream connection, since the
    /// connection leaves the pool once upgraded. To an `https://`
    /// upstream it speaks TLS with the same configuration as the site's
    /// pool: the site's own, or the default.
    async fn send_upgrade(
        &self,
        mut req: Request<EdgeBody>,
        upstream: &Upstream,
        route: &Route<'_>,
        site_tls: Option<&SiteTlsEntry<PooledClient>>,
        on_client: hyper::upgrade::OnUpgrade,
    ) -> Result<Sent, ProxyError> {
        // A bare connection writes the URI as given, and the absolute form
        // is meant for proxies: upstreams expect `/path?query`, as the pool
        // sends it. The Host header already names the upstream.
        let origin_form = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        *req.uri_mut() = origin_form
            .parse()
            .map_err(|_| ProxyError::Upstream("bad upstream URI".into()))?;
        // One deadline for the TCP connection and the TLS handshake.
        let deadline = tokio::time::Instant::now() + self.config.connect_timeout;
        let stream = tokio::time::timeout_at(deadline, self.connect(upstream, route))
            .await
            .map_err(|_| ProxyError::Timeout)??;
        if upstream.tls && !matches!(route, Route::App(_)) {
            let config = site_tls.map_or(&*self.tls, SiteTlsEntry::config);
            let stream = tokio::time::timeout_at(deadline, tls_connect(config, upstream, stream))
                .await
                .map_err(|_| ProxyError::Timeout)??;
            return self.upgrade_over(stream, req, on_client).await;
        }
        self.upgrade_over(stream, req, on_client).await
    }

    /// Sends the upgrade request over `stream` and relays the answer; on
    /// 101 the client's and the upstream's connections are handed over.
    async fn upgrade_over<S>(
        &self,
        stream: S,
        req: Request<EdgeBody>,
        on_client: hyper::upgrade::OnUpgrade,
    ) -> Result<Sent, ProxyError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::Connect(error_chain(&e)))?;
        tokio::spawn(connection.with_upgrades());

        let sent = tokio::time::timeout(self.config.response_timeout, sender.send_request(req));
        let mut response = match sent.await {
            Err(_) => return Err(ProxyError::Timeout),
            Ok(Err(e)) => return Err(ProxyError::Upstream(error_chain(&e))),
            Ok(Ok(response)) => response,
        };
        // The client asked for a WebSocket and nothing else: a switch to
        // another protocol would open the tunnel all the same, and what the
        // client sends next would reach the upstream as raw bytes, past
        // the framing guard and the WAF.
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && !websocket_accepted(response.headers())
        {
            return Err(ProxyError::Upstream(
                "the upstream switched to another protocol than the WebSocket asked for".into(),
            ));
        }
        let upgrade = (response.status() == StatusCode::SWITCHING_PROTOCOLS)
            .then(|| (on_client, hyper::upgrade::on(&mut response)));
        let (mut parts, incoming) = response.into_parts();
        let upgrade_headers = upgrade.is_some().then(|| {
            (
                parts.headers.get(header::UPGRADE).cloned(),
                parts.headers.get(header::CONNECTION).cloned(),
            )
        });
        strip_hop_by_hop(&mut parts.headers);
        if let Some((upgrade, connection)) = upgrade_headers {
            if let Some(v) = upgrade {
                parts.headers.insert(header::UPGRADE, v);
            }
            if let Some(v) = connection {
                parts.headers.insert(header::CONNECTION, v);
            }
        }
        let response = Response::from_parts(parts, incoming.map_err(Into::into).boxed());
        Ok(Sent { response, upgrade })
    }

    async fn connect(
        &self,
        upstream: &Upstream,
        route: &Route<'_>,
    ) -> Result<tokio::net::TcpStream, ProxyError> {
        let trusted = match route {
            Route::App(dialer) => {
                return dialer
                    .dial(self.config.connect_timeout)
                    .await
                    .map_err(|e| ProxyError::Connect(e.to_string()));
            }
            Route::Trusted => true,
            Route::Checked => false,
        };
        let addrs = tokio::net::lookup_host((upstream.host.as_str(), upstream.port))
            .await
            .map_err(|e| ProxyError::Connect(e.to_string()))?;
        let mut last = ProxyError::Forbidden;
        for addr in addrs.filter(|a| trusted || self.policy.permits(a.ip())) {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = ProxyError::Connect(e.to_string()),
            }
        }
        Err(last)
    }
}

/// A TLS connection over `stream` to `upstream`, verified with `config`
/// and offering HTTP/1.1 only, which a WebSocket upgrade speaks.
async fn tls_connect(
    config: &ClientConfig,
    upstream: &Upstream,
    stream: tokio::net::TcpStream,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ProxyError> {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // `host` has no brackets around an IPv6 literal (see Upstream::parse),
    // so an address is verified as an address.
    let name = rustls::pki_types::ServerName::try_from(upstream.host.clone())
        .map_err(|_| ProxyError::Upstream("the upstream host is not a TLS server name".into()))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|e| ProxyError::Connect(error_chain(&e)))
}

/// A pool whose connections resolve names through the upstream policy
/// and speak TLS with `tls` to `https://` upstreams.
fn pooled_client(
    config: &ProxyConfig,
    policy: &Arc<UpstreamPolicy>,
    tls: ClientConfig,
) -> PooledClient {
    let mut connector = HttpConnector::new_with_resolver(PolicyResolver::new(policy.clone()));
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(config.pool_max_idle)
        .build(connector)
}

/// How long an idle upstream connection is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The rustls client configuration for `https://` upstreams: the
/// operator's, or the system's roots without a client certificate. The
/// one place that chooses it.
fn upstream_tls_config(config: &ProxyConfig) -> ClientConfig {
    match &config.upstream_tls {
        Some(tls) => ClientConfig::clone(tls),
        None => crate::tls::default_upstream_client_config(),
    }
}

/// `uri` with only its path and query, as an HTTP/1 connection to an
/// origin server sends it. Shares the buffer; allocates nothing.
fn origin_form(uri: Uri) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(
        uri.into_parts()
            .path_and_query
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

/// The absolute URI the pool sends `uri`'s path and query to: the
/// upstream's scheme and authority, its base path in front. Only a base
/// path costs a new buffer; otherwise every part is shared with the
/// parsed request and the site's route.
fn upstream_uri(uri: Uri, upstream: &Upstream) -> Result<Uri, ProxyError> {
    let bad = |_| ProxyError::Upstream("bad upstream URI".into());
    let scheme = if upstream.tls {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    let authority = upstream.authority.clone();
    let path_and_query = uri
        .into_parts()
        .path_and_query
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let path_and_query = if upstream.base_path.is_empty() {
        path_and_query
    } else {
        let joined = format!("{}{path_and_query}", upstream.base_path);
        PathAndQuery::from_maybe_shared(bytes::Bytes::from(joined)).map_err(bad)?
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).map_err(|_| ProxyError::Upstream("bad upstream URI".into()))
}

/// An upstream response, and the two halves of a WebSocket upgrade when
/// the upstream agreed to one.
struct Sent {
    response: Response<EdgeBody>,
    upgrade: Option<(hyper::upgrade::OnUpgrade, hyper::upgrade::OnUpgrade)>,
}

/// An upstream's response as the client gets it: hop-by-hop headers
/// removed, the body boxed, no upgrade. Its HTTP version is the edge's
/// own: an HTTP/1.0 upstream's answer would otherwise go out as HTTP/1.0
/// and end the client's keep-alive connection.
fn relayed<B>(response: Response<B>) -> Sent
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<body::BoxError>,
{
    let (mut parts, incoming) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::default();
    Sent {
        response: Response::from_parts(parts, incoming.map_err(Into::into).boxed()),
        upgrade: None,
    }
}

/// A 101 answers only an upgrade the client asked for. To any other
/// request it is the upstream's error: no tunnel would open, and the
/// client would get a bare 101 and a closed connection.
fn refuse_unasked_switch(sent: Sent) -> Result<Sent, ProxyError> {
    if sent.response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::Upstream(
            "the upstream switched protocols without an upgrade request".into(),
        ));
    }
    Ok(sent)
}

/// An app lease riding along with a proxied request.
struct Leased(Box<dyn LeaseGuard>);

/// Starts the WebSocket splice if there is one, and makes the lease live
/// exactly as long as the exchange: the splice, or the response body.
fn attach(
    result: Result<Sent, ProxyError>,
    lease: Option<Leased>,
) -> Result<Response<EdgeBody>, ProxyError> {
    let sent = match result {
        Ok(sent) => sent,
        Err(e) => {
            if let Some(Leased(guard)) = &lease {
                if matches!(e, ProxyError::Connect(_)) {
                    guard.unreachable();
                }
                guard.record_status(e.status().as_u16());
            }
            return Err(e);
        }
    };
    let Sent {
        mut response,
        upgrade,
    } = sent;
    if let Some(Leased(guard)) = &lease {
        guard.record_status(response.status().as_u16());
    }
    match (upgrade, lease) {
        (Some((on_client, on_upstream)), lease) => {
            tokio::spawn(async move {
                splice(on_client, on_upstream).await;
                drop(lease);
            });
        }
        (None, Some(Leased(guard))) => {
            let body = std::mem::replace(response.body_mut(), body::empty());
            *response.body_mut() = LeasedBody {
                inner: body,
                _lease: guard,
            }
            .boxed();
        }
        (None, None) => {}
    }
    Ok(response)
}

/// Copies bytes both ways between the client's and the upstream's
/// upgraded connections until either side closes.
async fn splice(on_client: hyper::upgrade::OnUpgrade, on_upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(on_client, on_upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}

/// True iff a path segment is `.` or `..`, plainly or percent-encoded.
fn has_dot_segments(path: &str) -> bool {
    path.split('/').any(|segment| {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        decoded == "." || decoded == ".."
    })
}

/// Returns the `Upgrade` value iff the request asks for a WebSocket.
fn websocket_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade = headers.get(header::UPGRADE)?;
    let is_websocket = upgrade
        .to_str()
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    (wants_upgrade && is_websocket).then(|| upgrade.clone())
}

/// True iff a 101's one `Upgrade` header names the WebSocket protocol.
fn websocket_accepted(headers: &HeaderMap) -> bool {
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    let upgrade = upgrades.next();
    upgrades.next().is_none()
        && upgrade
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Where `name` is in [`HOP_BY_HOP`], or one past its end for `Upgrade`.
/// One match on the text: comparing every name of a message with nine
/// header names cost more than the rest of the removal.
fn hop_slot(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => HOP_BY_HOP.len(),
        _ => return None,
    })
}

/// Removes hop-by-hop headers: the fixed list, `Upgrade`, and every header
/// the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names notes which of them are there: most
    // messages carry none, the rest one or two (`Connection: keep-alive`),
    // and removing a header that is not there still costs a lookup.
    // The last slot is `Upgrade`.
    let mut present = [false; HOP_BY_HOP.len() + 1];
    let mut any = false;
    for slot in headers.keys().filter_map(hop_slot) {
        present[slot] = true;
        any = true;
    }
    if !any {
        return;
    }
    // Most `Connection` headers name nothing beyond the fixed list
    // (`keep-alive`, `close`): then nothing is collected and nothing
    // allocated.
    let mut named: Vec<HeaderName> = Vec::new();
    // Bytes, not text: a value with one non-ASCII byte elsewhere must not
    // hide the names it lists.
    let tokens = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii);
    for token in tokens {
        let removed_anyway = token.eq_ignore_ascii_case(b"close")
            || token.eq_ignore_ascii_case(header::UPGRADE.as_str().as_bytes())
            || HOP_BY_HOP
                .iter()
                .any(|name| token.eq_ignore_ascii_case(name.as_str().as_bytes()));
        if removed_anyway {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token) {
            named.push(name);
        }
    }
    for name in &named {
        headers.remove(name);
    }
    let fixed = HOP_BY_HOP.iter().chain([&header::UPGRADE]);
    for (name, _) in fixed.zip(present).filter(|(_, there)| *there) {
        headers.remove(name);
    }
}

fn prepare_request_headers(
    headers: &mut HeaderMap,
    upstream: &Upstream,
    ctx: &ClientContext<'_>,
    upgrade: Option<&HeaderValue>,
) {
    // Every line of it: a proxy may add its own line (HAProxy's
    // `option forwardfor`) rather than extend the client's.
    let prior_forwarded_for = if ctx.peer_trusted {
        joined(headers, "x-forwarded-for")
    } else {
        None
    };
    strip_hop_by_hop(headers);
    // Room for the headers set below at once: the map hyper parsed a
    // request into is sized for the client's few headers and would
    // otherwise grow (rehash and move) once or twice here.
    headers.reserve(8);
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade.clone());
    }

    // One buffer for the client's address, shared by both headers.
    let client_ip = ip_header_value(ctx.client_ip);
    // A trusted proxy's list gets the proxy itself appended, as each
    // proxy appends the address it heard from.
    match prior_forwarded_for {
        Some(mut list) => {
            list.extend_from_slice(format!(", {}", ctx.peer).as_bytes());
            if let Ok(value) = HeaderValue::from_bytes(&list) {
                headers.insert(HeaderName::from_static("x-forwarded-for"), value);
            }
        }
        None => {
            if let Some(value) = &client_ip {
                headers.insert(HeaderName::from_static("x-forwarded-for"), value.clone());
            }
        }
    }
    // Other ways clients claim an address or scheme; only a trusted
    // proxy's count.
    // One pass over the names first: most requests carry none of them.
    if !ctx.peer_trusted
        && headers
            .keys()
            .any(|name| CLAIMED_ADDRESS.contains(&name.as_str()))
    {
        for name in CLAIMED_ADDRESS {
            headers.remove(name);
        }
    }
    // Names with an underscore are dropped, as nginx does by default: CGI
    // and WSGI servers turn `-` and `_` into the same variable, so
    // `X_Forwarded_For` would reach an app as our `X-Forwarded-For`.
    if headers.keys().any(|name| name.as_str().contains('_')) {
        let underscored: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().contains('_'))
            .cloned()
            .collect();
        for name in underscored {
            headers.remove(name);
        }
    }
    if let Some(value) = client_ip {
        headers.insert(HeaderName::from_static("x-real-ip"), value);
    }
    // The scheme the client used: a trusted proxy that terminated TLS
    // says so; otherwise the edge's own listener.
    let proto = match ctx.peer_trusted.then(|| claimed_proto(headers)).flatten() {
        Some(proto) => proto,
        None if ctx.https => "https",
        None => "http",
    };
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    );
    set(headers, "x-forwarded-host", ctx.host);
    headers.insert(
        HeaderName::from_static("x-request-id"),
        ctx.request_id.header_value().clone(),
    );
    headers.insert(header::HOST, upstream.host_header.clone());
}

/// Every value of header `name`, joined by `, ` as one list (as bytes: a
/// line that is not text must not lose the others); `None` without one.
fn joined(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    let mut all = headers.get_all(name).iter();
    let mut list = all.next()?.as_bytes().to_vec();
    for value in all {
        list.extend_from_slice(b", ");
        list.extend_from_slice(value.as_bytes());
    }
    Some(list)
}

/// The scheme the trusted proxy says the client used: the last element of
/// the last `X-Forwarded-Proto` line, or without that header, the `proto=`
/// of the last `Forwarded` element; only `http` or `https`. The last is
/// what the proxy next to the edge wrote; earlier ones may come from the
/// client. A header that is present but unusable gives no scheme (the
/// edge's own is used) rather than falling back to the other header,
/// which the client may have sent.
fn claimed_proto(headers: &HeaderMap) -> Option<&'static str> {
    let known = |value: &str| {
        let value = value.trim().trim_matches('"');
        if value.eq_ignore_ascii_case("https") {
            Some("https")
        } else if value.eq_ignore_ascii_case("http") {
            Some("http")
        } else {
            None
        }
    };
    let last_line = |name: &str| headers.get_all(name).iter().next_back();
    if let Some(line) = last_line("x-forwarded-proto") {
        return known(last_element(line.to_str().ok()?)?);
    }
    let forwarded = last_element(last_line("forwarded")?.to_str().ok()?)?;
    split_unquoted(forwarded, ';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("proto")
            .then(|| known(value))?
    })
}

/// The last non-empty element of a comma-separated list, commas inside
/// quoted strings not counting.
fn last_element(list: &str) -> Option<&str> {
    split_unquoted(list, ',')
        .filter(|element| !element.trim().is_empty())
        .last()
}

/// `text` split at `separator` where it is not inside a quoted string.
fn split_unquoted(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    text.split(move |c: char| {
        if escaped {
            escaped = false;
            return false;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ => return c == separator && !quoted,
        }
        false
    })
}

/// Methods whose request body many servers leave unread.
fn ignored_body(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::DELETE,
    ]
    .contains(method)
}

/// Headers in which a client names its own address, a proxy's view of it
/// (`Forwarded`, `X-Forwarded-Server`, `X-Forwarded-Prefix`: the path the
/// app is mounted at), or the scheme it came over: dropped unless a
/// trusted proxy sent them. Frameworks read these (Rails
/// `X-Forwarded-Ssl`, PHP apps `Client-IP`), so a client on plain HTTP
/// could claim HTTPS or another address past the edge's own
/// `X-Forwarded-*` headers.
const CLAIMED_ADDRESS: [&str; 22] = [
    "true-client-ip",
    "x-client-ip",
    "client-ip",
    "x-cluster-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-proxyuser-ip",
    "forwarded-for",
    "x-forwarded",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "cf-connecting-ip",
    "fastly-client-ip",
    "forwarded",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-protocol",
    "x-scheme",
    "x-url-scheme",
    "front-end-https",
];

/// An address as a header value, formatted on the stack.
fn ip_header_value(ip: IpAddr) -> Option<HeaderValue> {
    use std::io::Write as _;
    // An IPv4 address by hand: through the formatting machinery it cost
    // about as much as all the other forwarding headers together.
    if let IpAddr::V4(v4) = ip {
        let mut buf = [0u8; 15];
        let mut len = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                buf[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                buf[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                buf[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            buf[len] = b'0' + octet % 10;
            len += 1;
        }
        return HeaderValue::from_bytes(&buf[..len]).ok();
    }
    // The longest text form, an IPv6 address with an IPv4 tail, is 45.
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    write!(cursor, "{ip}").ok()?;
    let len = usize::try_from(cursor.position()).ok()?;
    HeaderValue::from_bytes(&buf[..len]).ok()
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// True iff the error chain holds the body cap's error.
fn body_too_large(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The plain page for a failed proxy request. It names no upstream.
pub fn error_page(status: StatusCode) -> Response<EdgeBody> {
    let text = format!(
        "{} {}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    static REQUEST_ID: std::sync::LazyLock<RequestId> = std::sync::LazyLock::new(|| {
        RequestId::trusted(&HeaderValue::from_static("abc")).expect("valid id")
    });

    fn ctx(trusted: bool) -> ClientContext<'static> {
        ClientContext {
            client_ip: "203.0.113.9".parse().expect("ip"),
            peer_trusted: trusted,
            peer: if trusted { "10.0.0.2" } else { "203.0.113.9" }
                .parse()
                .expect("ip"),
            host: "app.example.com",
            request_id: &REQUEST_ID,
            https: false,
            body_limit: u64::MAX,
            site: "app.example.com",
        }
    }

    #[test]
    fn the_upstream_uri_keeps_path_and_query_under_the_base_path() {
        let plain = Upstream::parse("http://10.0.0.1:9000").expect("upstream");
        let uri: Uri = "/a/b?x=1&y=%20".parse().expect("uri");
        let got = upstream_uri(uri.clone(), &plain).expect("uri");
        assert_eq!(got, "http://10.0.0.1:9000/a/b?x=1&y=%20");

        let based = Upstream::parse("https://backend.example:8443/app/").expect("upstream");
        let got = upstream_uri(uri, &based).expect("uri");
        assert_eq!(got, "https://backend.example:8443/app/a/b?x=1&y=%20");

        let absolute: Uri = "http://client.example/p?q".parse().expect("uri");
        let got = upstream_uri(absolute, &plain).expect("uri");
        assert_eq!(
            got, "http://10.0.0.1:9000/p?q",
            "the client's authority is dropped"
        );

        let authority_only: Uri = "client.example:443".parse().expect("uri");
        let got = upstream_uri(authority_only, &based).expect("uri");
        assert_eq!(got, "https://backend.example:8443/app/");
    }

    #[test]
    fn forwarding_headers_name_the_client_scheme_and_upstream() {
        let upstream = Upstream::parse("http://10.0.0.1:9000").expect("upstream");
        let mut map = headers(&[("host", "app.example.com")]);
        let over_tls = ClientContext {
            https: true,
            client_ip: "2001:db8:ffff:ffff:ffff:ffff:255.255.255.255"
                .parse()
                .expect("ip"),
            ..ctx(false)
        };
        prepare_request_headers(&mut map, &upstream, &over_tls, None);
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(
            map["x-forwarded-for"],
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(map["x-real-ip"], map["x-forwarded-for"]);
        assert_eq!(map["host"], "10.0.0.1:9000");

        let mut map = HeaderMap::new();
        prepare_request_headers(&mut map, &upstream, &ctx(false), None);
        assert_eq!(map["x-forwarded-proto"], "http");
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut map);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key("accept"));

        let mut map = headers(&[
            ("connection", "close"),
            ("connection", "Upgrade, X-Other"),
            ("upgrade", "h2c"),
            ("x-other", "1"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut map);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key("x-kept"));
    }

    #[test]
    fn only_one_websocket_upgrade_header_accepts_the_switch() {
        for (value, accepted) in [
            ("websocket", true),
            (" WebSocket ", true),
            ("h2c", false),
            ("websocket, h2c", false),
            ("", false),
        ] {
            let map = headers(&[("upgrade", value)]);
            assert_eq!(websocket_accepted(&map), accepted, "{value:?}");
        }
        assert!(!websocket_accepted(&HeaderMap::new()));
        let twice = headers(&[("upgrade", "websocket"), ("upgrade", "websocket")]);
        assert!(!websocket_accepted(&twice));
    }

    #[test]
    fn hop_slots_match_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_slot(name), Some(i), "{name}");
        }
        assert_eq!(hop_slot(&header::UPGRADE), Some(HOP_BY_HOP.len()));
        assert_eq!(hop_slot(&header::HOST), None);
        assert_eq!(hop_slot(&HeaderName::from_static("x-connection")), None);
    }

    #[test]
    fn ip_header_values_read_as_the_address_does() {
        let octets = [0u8, 1, 9, 10, 99, 100, 101, 199, 200, 249, 250, 255];
        for a in octets {
            for b in octets {
                let ip = IpAddr::from([a, b, 255 - a, 7]);
                let value = ip_header_value(ip).expect("value");
                assert_eq!(value.to_str().expect("text"), ip.to_string());
            }
        }
        for text in ["::1", "2001:db8::7", "::ffff:192.0.2.1", "fe80::1:2:3:4"] {
            let ip: IpAddr = text.parse().expect("ip");
            assert_eq!(
                ip_header_value(ip).expect("value").to_str().ok(),
                Some(text)
            );
        }
    }

    /// Each name alone, and all at once: the pass over the names must
    /// mark every one it finds.
    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        let names = HOP_BY_HOP.iter().chain([&header::UPGRADE]);
        for name in names.clone() {
            let mut map = headers(&[(name.as_str(), "1"), ("x-kept", "1")]);
            strip_hop_by_hop(&mut map);
            assert!(!map.contains_key(name), "{name} was kept");
            assert_eq!(map.len(), 1, "{name}: {map:?}");
        }
        let mut map = HeaderMap::new();
        for name in names {
            map.append(name, HeaderValue::from_static("1"));
            map.append(name, HeaderValue::from_static("2"));
        }
        map.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut map);
        assert_eq!(map.len(), 1, "{map:?}");
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_forwarded_for() {
        let upstream = Upstream::parse("http://10.0.0.1:9000").expect("upstream");
        let mut map = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        prepare_request_headers(&mut map, &upstream, &ctx(false), None);
        assert_eq!(map["x-forwarded-for"], "203.0.113.9");
        assert!(!map.contains_key("forwarded"));
        assert_eq!(map["host"], "10.0.0.1:9000");
        assert_eq!(map["x-forwarded-host"], "app.example.com");
        assert_eq!(map["x-request-id"], "abc");
    }

    #[test]
    fn a_trusted_peer_extends_forwarded_for() {
        let upstream = Upstream::parse("http://10.0.0.1:9000").expect("upstream");
        let mut map = headers(&[("x-forwarded-for", "1.2.3.4")]);
        prepare_request_headers(&mut map, &upstream, &ctx(true), None);
        // The proxy's list, then the proxy itself.
        assert_eq!(map["x-forwarded-for"], "1.2.3.4, 10.0.0.2");
        // A proxy that adds a line of its own instead of extending.
        let mut map = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.7"),
        ]);
        prepare_request_headers(&mut map, &upstream, &ctx(true), None);
        let all: Vec<_> = map.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["6.6.6.6, 203.0.113.7, 10.0.0.2"]);
        // A line that is not text does not cost the others.
        let mut map = headers(&[("x-forwarded-for", "203.0.113.7")]);
        map.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff").expect("value"),
        );
        prepare_request_headers(&mut map, &upstream, &ctx(true), None);
        assert_eq!(
            map["x-forwarded-for"].as_bytes(),
            b"203.0.113.7, \xff, 10.0.0.2"
        );
    }

    #[test]
    fn only_a_trusted_peer_says_which_scheme_the_client_used() {
        let upstream = Upstream::parse("http://10.0.0.1:9000").expect("upstream");
        let proto = |pairs: &[(&str, &str)], trusted: bool| {
            let mut map = headers(pairs);
            prepare_request_headers(&mut map, &upstream, &ctx(trusted), None);
            map["x-forwarded-proto"].to_str().expect("ascii").to_owned()
        };
        assert_eq!(proto(&[("x-forwarded-proto", "https")], true), "https");
        assert_eq!(
            proto(&[("forwarded", "for=1.2.3.4;proto=https")], true),
            "https"
        );
        assert_eq!(
            proto(
                &[("forwarded", "for=5.6.7.8, for=1.2.3.4; Proto=\"HTTPS\"")],
                true
            ),
            "https"
        );
        // The proxy next to the edge wrote the last element; earlier ones
        // may be the client's, on one line or on lines of their own.
        assert_eq!(proto(&[("x-forwarded-proto", "https, http")], true), "http");
        let two_lines = [
            ("x-forwarded-proto", "https"),
            ("x-forwarded-proto", "http"),
        ];
        assert_eq!(proto(&two_lines, true), "http");
        assert_eq!(
            proto(
                &[("forwarded", "proto=https, for=1.2.3.4;proto=http")],
                true
            ),
            "http"
        );
        // Empty elements do not count; quoted commas do not split.
        assert_eq!(proto(&[("x-forwarded-proto", "https,")], true), "https");
        assert_eq!(
            proto(&[("forwarded", "for=1.2.3.4;proto=https;by=\"a,b\"")], true),
            "https"
        );
        // A present but unusable X-Forwarded-Proto does not fall back to a
        // Forwarded header the client may have sent.
        let mut map = headers(&[("x-forwarded-proto", "http"), ("forwarded", "proto=https")]);
        map.append(
            "x-forwarded-proto",
            HeaderValue::from_bytes(b"\xff").expect("value"),
        );
        prepare_request_headers(&mut map, &upstream, &ctx(true), None);
        assert_eq!(map["x-forwarded-proto"], "http");
        // Nothing usable: the edge's own scheme (plain HTTP here).
        assert_eq!(proto(&[("x-forwarded-proto", "gopher")], true), "http");
        assert_eq!(proto(&[], true), "http");
        // From anyone else the claim is ignored.
        assert_eq!(proto(&[("x-forwarded-proto", "https")], false), "http");
        assert_eq!(proto(&[("forwarded", "proto=https")], false), "http");
    }

    #[test]
    fn dot_segments_are_found_plain_and_encoded() {
        for bad in [
            "/../x",
            "/a/..",
            "/%2e%2e/x",
            "/%2E%2e/x",
            "/./x",
            "/%2e/x",
            "/a/../../b",
        ] {
            assert!(has_dot_segments(bad), "{bad}");
        }
        for good in ["/", "/a/b", "/..a/b", "/a../b", "/.well-known/x", "/a.b/c"] {
            assert!(!has_dot_segments(good), "{good}");
        }
    }

    #[test]
    fn client_claims_of_an_address_are_dropped_and_x_real_ip_is_ours() {
        let upstream = Upstream::parse("http://10.0.0.1:9000").expect("upstream");
        let mut map = headers(&[
            ("x-real-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("x-client-ip", "6.6.6.6"),
            ("x-forwarded-port", "1"),
        ]);
        prepare_request_headers(&mut map, &upstream, &ctx(false), None);
        assert_eq!(map["x-real-ip"], "203.0.113.9");
        for gone in ["true-client-ip", "x-client-ip", "x-forwarded-port"] {
            assert!(!map.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn header_names_with_an_underscore_are_not_forwarded() {
        let upstream = Upstream::parse("http://10.0.0.1:9000").expect("upstream");
        let mut map = headers(&[
            ("x_forwarded_for", "6.6.6.6"),
            ("x_real_ip", "6.6.6.6"),
            ("x-app-token", "kept"),
        ]);
        prepare_request_headers(&mut map, &upstream, &ctx(true), None);
        assert!(!map.contains_key("x_forwarded_for"));
        assert!(!map.contains_key("x_real_ip"));
        assert_eq!(map["x-app-token"], "kept");
        assert_eq!(map["x-real-ip"], "203.0.113.9");
    }

    #[test]
    fn a_connection_value_with_a_non_ascii_byte_still_names_its_headers() {
        let mut map = HeaderMap::new();
        map.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-hop-secret, \xff").expect("value"),
        );
        map.insert("x-hop-secret", HeaderValue::from_static("internal"));
        map.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut map);
        assert!(!map.contains_key("x-hop-secret"));
        assert!(!map.contains_key(header::CONNECTION));
        assert_eq!(map["x-kept"], "1");
    }

    /// Each name alone: the one pass over the names must see every one.
    #[test]
    fn each_claimed_address_header_alone_is_dropped_from_an_untrusted_peer() {
        let upstream = Upstream::parse("http://10.0.0.1:9000").expect("upstream");
        for name in CLAIMED_ADDRESS {
            let mut map = headers(&[(name, "6.6.6.6")]);
            prepare_request_headers(&mut map, &upstream, &ctx(false), None);
            assert!(!map.contains_key(name), "{name}");
            let mut kept = headers(&[(name, "6.6.6.6")]);
            prepare_request_headers(&mut kept, &upstream, &ctx(true), None);
            assert!(kept.contains_key(name), "{name} from a trusted proxy");
        }
    }

    #[test]
    fn only_websocket_upgrades_are_passed_through() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(websocket_upgrade(&ws).is_some());
        let h2c = headers(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        assert!(websocket_upgrade(&h2c).is_none());
        let no_conn = headers(&[("upgrade", "websocket")]);
        assert!(websocket_upgrade(&no_conn).is_none());
    }
}
