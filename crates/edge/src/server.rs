//! The edge's request path: accept connections, find the route for the
//! Host, serve static files or proxy, and write one access-log line.
//!
//! This module holds the order of the request phases in one place; the
//! shield's own stages, in their order, are in `shield::pipeline`. It
//! never touches the database: routes arrive through [`Routes`].

use crate::app::{AppUnavailable, AppWaker};
use crate::body::{self, BoxError, EdgeBody};
use crate::listener::{self, ConnectionLimits};
use crate::metrics::{EdgeMetrics, RequestLabels, SiteLabel, SiteName};
use crate::proxy::{self, ClientContext, Proxy, ProxyConfig};
use crate::request_id::RequestId;
use crate::routes::{Route, Routes, Target};
use crate::tls::{HttpsMode, Tls};
use crate::upstream::UpstreamPolicy;
use crate::{host, static_files};
use bytes::BytesMut;
use futures_util::{stream, StreamExt, TryStreamExt};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use ipnet::IpNet;
use shield::waf::RequestView;
use shield::{Admitted, ClientIp, Origin, Refusal, Shield};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Peers whose `X-Forwarded-For` (or `Forwarded`) and `x-request-id`
    /// are believed. The shield's client-IP resolver is built from these.
    pub trusted_proxies: Vec<IpNet>,
    /// Longest wait for a request's headers, including between keep-alive
    /// requests.
    pub header_read_timeout: Duration,
    /// A connection with no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// Longest wait for in-flight requests when shutting down.
    pub shutdown_grace: Duration,
    pub proxy: ProxyConfig,
    pub upstream_policy: UpstreamPolicy,
}

impl Default for EdgeConfig {
    fn default() -> EdgeConfig {
        EdgeConfig {
            trusted_proxies: Vec::new(),
            header_read_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(10),
            proxy: ProxyConfig::default(),
            upstream_policy: UpstreamPolicy::default(),
        }
    }
}

/// The edge: a cheap-to-clone handle shared by every connection.
#[derive(Clone)]
pub struct Edge {
    inner: Arc<Inner>,
}

struct Inner {
    routes: Routes,
    proxy: Proxy,
    metrics: EdgeMetrics,
    config: EdgeConfig,
    shield: Shield,
    /// Random per process, so request ids from two runs never collide.
    id_prefix: u64,
    id_counter: AtomicU64,
    /// Starts app processes on demand; unset until the hub plugs it in.
    apps: OnceLock<Arc<dyn AppWaker>>,
    /// Certificates, ACME answers and HTTPS settings; unset: HTTP only.
    tls: OnceLock<Tls>,
}

impl Edge {
    /// The shield must have been built with `config.trusted_proxies`.
    pub fn new(config: EdgeConfig, routes: Routes, metrics: EdgeMetrics, shield: Shield) -> Edge {
        let policy = Arc::new(config.upstream_policy.clone());
        let proxy = Proxy::new(config.proxy.clone(), policy);
        Edge {
            inner: Arc::new(Inner {
                routes,
                proxy,
                metrics,
                config,
                shield,
                id_prefix: rand::random(),
                id_counter: AtomicU64::new(0),
                apps: OnceLock::new(),
                tls: OnceLock::new(),
            }),
        }
    }

    pub fn routes(&self) -> &Routes {
        &self.inner.routes
    }

    pub fn shield(&self) -> &Shield {
        &self.inner.shield
    }

    /// Accepts connections on `listener` until `shutdown` resolves, then
    /// lets in-flight requests finish for up to the shutdown grace.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let config = &self.inner.config;
        let shield = &self.inner.shield;
        let limits = ConnectionLimits {
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            shutdown_grace: config.shutdown_grace,
            max_connections: None,
            per_client: shield.connection_gate(),
            http2: shield.http2_limits(),
        };
        let open = Some(self.inner.metrics.open_connections.clone());
        let make = |peer: SocketAddr| {
            let edge = self.clone();
            service_fn(move |req| {
                let edge = edge.clone();
                // Boxed: hyper keeps the request's future, which is large,
                // and would move it by value otherwise.
                Box::pin(async move {
                    Ok::<_, std::convert::Infallible>(edge.handle(req, peer, false, None).await)
                })
            })
        };
        listener::serve(listener, limits, open, make, shutdown).await;
    }

    /// Plugs in the TLS state (certificates, ACME answers, HTTPS
    /// settings). Set once, before serving.
    pub fn set_tls(&self, tls: Tls) {
        if self.inner.tls.set(tls).is_err() {
            tracing::warn!("TLS state was already set; keeping the first");
        }
    }

    pub fn tls(&self) -> Option<&Tls> {
        self.inner.tls.get()
    }

    /// Like [`Edge::serve`], over TLS with `config`.
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()>,
    ) {
        let config_ = &self.inner.config;
        let shield = &self.inner.shield;
        let limits = ConnectionLimits {
            header_read_timeout: config_.header_read_timeout,
            idle_timeout: config_.idle_timeout,
            shutdown_grace: config_.shutdown_grace,
            max_connections: None,
            per_client: shield.connection_gate(),
            http2: shield.http2_limits(),
        };
        let open = Some(self.inner.metrics.open_connections.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let edge = self.clone();
        let make = move |peer: SocketAddr, info: listener::TlsInfo| {
            let edge = edge.clone();
            let sni: Option<Arc<str>> = info
                .server_name
                .and_then(|name| host::normalize(&name))
                .map(Into::into);
            service_fn(move |req: Request<Incoming>| {
                let edge = edge.clone();
                let sni = sni.clone();
                Box::pin(async move {
                    let response = edge.handle(req, peer, true, sni.as_deref()).await;
                    Ok::<_, std::convert::Infallible>(response)
                })
            })
        };
        listener::serve_tls(listener, limits, open, acceptor, make, shutdown).await;
    }

    /// Serves one request. Never fails: every problem is a response.
    ///
    /// The phases, in order: resolve the client, keep or make the request
    /// id, find the route, screen with the shield (bans first), serve,
    /// finish the response (shield headers and counters), log.
    ///
    /// `sni` is the server name of the TLS connection, normalised like a
    /// Host, if it sent one.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        https: bool,
        sni: Option<&str>,
    ) -> Response<EdgeBody> {
        let started = Instant::now();
        let inner = &self.inner;
        let shield = &inner.shield;
        let client = shield.resolve(peer.ip(), req.headers());
        let request_id = self.request_id(&req, client.peer_trusted);
        let method = req.method().clone();
        // Shares the parsed request's buffer: no copy of the path.
        let uri = req.uri().clone();
        let path = uri.path();
        let requested_host = req
            .uri()
            .host()
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .and_then(host::normalize);

        // Two Host headers: a proxy in front might route by the other one.
        let requested_host = if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
            None
        } else {
            requested_host
        };

        // ACME HTTP-01 answers come before routing: the validator asks
        // for a site that may not serve anything yet.
        if !https {
            if let Some(answer) = self.acme_answer(path) {
                return answer;
            }
        }

        let snapshot = inner.routes.snapshot();
        let route = requested_host
            .as_deref()
            .and_then(|h| snapshot.lookup(h))
            .cloned();
        drop(snapshot);
        let site = route.as_ref().map(|r| r.site.clone());

        // Rate limits count a valid API key's requests against the key.
        let credential = shield.verified_key(&client, req.headers()).await;
        let admitted = shield.screen_as(&client, credential.as_ref(), &req, site.as_deref());
        let (mut response, origin) = match (&admitted, route) {
            (Err(refusal), _) => {
                tracing::debug!(request_id = %request_id, client_ip = %client.addr,
                    refusal = %refusal, "request refused by the shield");
                (refusal_page(refusal), Origin::Edge)
            }
            // The edge is no forward proxy: forwarding a CONNECT would
            // send the upstream `CONNECT /`, and a tunnel would relay to
            // whatever address the client named.
            (Ok(_), _) if method == Method::CONNECT => (connect_refused(), Origin::Edge),
            (Ok(_), None) => (not_found(), Origin::Edge),
            (Ok(admitted), Some(route)) => 'routed: {
                if let Some(page) = self.misdirected(sni, requested_host.as_deref(), &route) {
                    break 'routed (page, Origin::Edge);
                }
                if !https {
                    let host = requested_host.as_deref().unwrap_or(&route.site);
                    if let Some(page) = self.plain_http_policy(&req, host, &route.site) {
                        break 'routed (page, Origin::Edge);
                    }
                }
                let req = match self
                    .firewall(req, admitted, &client, &route.site, &request_id)
                    .await
                {
                    Ok(req) => req,
                    Err(page) => break 'routed (page, Origin::Edge),
                };
                let ctx = ClientContext {
                    client_ip: client.addr,
                    peer_trusted: client.peer_trusted,
                    peer: peer.ip(),
                    host: requested_host.as_deref().unwrap_or(""),
                    request_id: &request_id,
                    https,
                    body_limit: admitted.body_limit,
                    site: &route.site,
                };
                match &route.target {
                    Target::Static { root, spa } => {
                        let response = Box::pin(static_files::serve(
                            root,
                            *spa,
                            &method,
                            path,
                            req.headers(),
                        ))
                        .await;
                        (response, Origin::Static)
                    }
                    Target::Proxy { upstream } => {
                        let result = inner.proxy.forward(req, upstream, ctx).await;
                        (
                            self.proxied(result, &route.site, &request_id),
                            Origin::Proxied,
                        )
                    }
                    Target::Balancer { pool } => match pool.pick() {
                        Some((upstream, lease)) => {
                            let result = Box::pin(inner.proxy.forward_leased(
                                req,
                                &upstream,
                                ctx,
                                Box::new(lease),
                            ))
                            .await;
                            (
                                self.proxied(result, &route.site, &request_id),
                                Origin::Proxied,
                            )
                        }
                        None => {
                            tracing::warn!(site = %route.site, request_id = %request_id,
                                "no healthy upstream");
                            let page = proxy::error_page(StatusCode::SERVICE_UNAVAILABLE);
                            (page, Origin::Edge)
                        }
                    },
                    Target::App => (
                        Box::pin(self.to_app(req, &route.site, ctx)).await,
                        Origin::Proxied,
                    ),
                    Target::Maintenance => (maintenance_page(), Origin::Edge),
                }
            }
        };

        let status = response.status().as_u16();
        shield.finish(
            &client,
            admitted.as_ref().ok(),
            origin,
            https,
            status,
            response.headers_mut(),
        );
        if https {
            self.hsts_extras(site.as_deref(), response.headers_mut());
        }
        let elapsed = started.elapsed();
        let site_label = site.as_deref().unwrap_or("-");
        let labels = RequestLabels {
            site: site.clone().map_or_else(SiteName::none, SiteName),
            status,
        };
        inner.metrics.requests.get_or_create(&labels).inc();
        inner.metrics.latency.observe(elapsed.as_secs_f64());
        tracing::info!(
            target: "spinforge::access",
            request_id = %request_id,
            client_ip = %client.addr,
            method = %method,
            host = requested_host.as_deref().unwrap_or("-"),
            path = %path,
            status,
            site = site_label,
            duration_us = elapsed.as_micros() as u64,
        );
        // Last, so the id moves into the response instead of being copied.
        response.headers_mut().insert(
            HeaderName::from_static("x-request-id"),
            request_id.into_header_value(),
        );
        response
    }

    /// 421 Misdirected Request iff the request came over a TLS
    /// connection whose SNI names another site than its Host: the
    /// certificate the client checked was not the one of the site it asks
    /// for. Host equal to the SNI, or both served by the same site (two
    /// names under one wildcard), pass; so does a connection without SNI.
    /// A client that reused a connection for another name (HTTP/2
    /// coalescing) retries on a fresh one.
    fn misdirected(
        &self,
        sni: Option<&str>,
        host: Option<&str>,
        route: &Route,
    ) -> Option<Response<EdgeBody>> {
        let sni = sni?;
        let host = host?;
        if sni == host {
            return None;
        }
        let snapshot = self.inner.routes.snapshot();
        if snapshot.lookup(sni).is_some_and(|r| r.site == route.site) {
            return None;
        }
        tracing::debug!(sni = %sni, host, site = %route.site, "SNI and Host name different sites");
        Some(proxy::error_page(StatusCode::MISDIRECTED_REQUEST))
    }

    /// The WAF stage: buffers the body up to the site's inspection limit
    /// (one byte more shows that it is longer), inspects, and gives back
    /// the request with the buffered bytes put back in front of the rest
    /// of the body. Requests without a body are not buffered at all.
    async fn firewall(
        &self,
        req: Request<Incoming>,
        admitted: &Admitted,
        client: &ClientIp,
        site: &str,
        request_id: &RequestId,
    ) -> Result<Request<EdgeBody>, Response<EdgeBody>> {
        let request_id = request_id.as_str();
        let Some(config) = admitted.waf() else {
            return Ok(req.map(|b| b.map_err(Into::into).boxed()));
        };
        let (mut parts, mut incoming) = req.into_parts();
        let mut buffered = BytesMut::new();
        let mut trailers = None;
        let mut ended = incoming.is_end_stream();
        while !ended && buffered.len() <= config.body_limit {
            match incoming.frame().await {
                None => ended = true,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => buffered.extend_from_slice(&data),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Some(Err(e)) => {
                    tracing::debug!(request_id, error = %e, "request body failed while buffered");
                    return Err(proxy::error_page(StatusCode::BAD_REQUEST));
                }
            }
        }
        let buffered = buffered.freeze();
        let shield = &self.inner.shield;
        let verdict = if buffered.len() <= INSPECT_IN_PLACE {
            inspect(
                shield, client, admitted, &parts, &buffered, site, request_id,
            )
        } else {
            // A large body takes milliseconds to inspect: off this
            // thread, whose other connections would wait meanwhile (the
            // edge's threads do not steal work from each other).
            let (shield, client, admitted) = (shield.clone(), *client, admitted.clone());
            let (site, id, body) = (site.to_owned(), request_id.to_owned(), buffered.clone());
            let inspected = tokio::task::spawn_blocking(move || {
                let verdict = inspect(&shield, &client, &admitted, &parts, &body, &site, &id);
                (parts, verdict)
            })
            .await;
            match inspected {
                Ok((back, verdict)) => {
                    parts = back;
                    verdict
                }
                Err(e) => {
                    // Fail closed: a request the WAF could not finish
                    // with is not forwarded.
                    tracing::error!(request_id, error = %e, "WAF inspection failed");
                    return Err(proxy::error_page(StatusCode::INTERNAL_SERVER_ERROR));
                }
            }
        };
        if let Err(refusal) = verdict {
            tracing::debug!(request_id, client_ip = %client.addr, refusal = %refusal,
                "request refused by the shield");
            return Err(waf_page(request_id));
        }
        let body = match (ended, trailers) {
            (true, None) if buffered.is_empty() => body::empty(),
            (true, None) => body::full(buffered),
            (true, Some(trailers)) => {
                let frames = [Ok(Frame::data(buffered)), Ok(Frame::trailers(trailers))];
                BodyExt::boxed(StreamBody::new(stream::iter(frames)))
            }
            (false, _) => {
                let rest = TryStreamExt::map_err(BodyStream::new(incoming), BoxError::from);
                let head = stream::iter([Ok::<_, BoxError>(Frame::data(buffered))]);
                BodyExt::boxed(StreamBody::new(head.chain(rest)))
            }
        };
        Ok(Request::from_parts(parts, body))
    }

    /// Wakes the site's app if needed and forwards to it.
    async fn to_app(
        &self,
        req: Request<EdgeBody>,
        site: &str,
        ctx: ClientContext<'_>,
    ) -> Response<EdgeBody> {
        let request_id = ctx.request_id.clone();
        let Some(waker) = self.inner.apps.get() else {
            return proxy::error_page(StatusCode::SERVICE_UNAVAILABLE);
        };
        match waker.wake(site).await {
            Ok(lease) => {
                let result = self.inner.proxy.forward_to_app(req, lease, ctx).await;
                self.proxied(result, site, &request_id)
            }
            Err(AppUnavailable::Failing { retry_after }) => {
                let mut response = proxy::error_page(StatusCode::SERVICE_UNAVAILABLE);
                let seconds = HeaderValue::from(retry_after.as_secs().max(1));
                response.headers_mut().insert(header::RETRY_AFTER, seconds);
                response
            }
            Err(AppUnavailable::NotDeployed) => proxy::error_page(StatusCode::SERVICE_UNAVAILABLE),
            Err(AppUnavailable::StartFailed(reason)) => {
                tracing::warn!(site, request_id = %request_id, error = %reason,
                    "app did not start");
                let label = SiteLabel {
                    site: SiteName(Arc::from(site)),
                };
                self.inner
                    .metrics
                    .upstream_errors
                    .get_or_create(&label)
                    .inc();
                proxy::error_page(StatusCode::BAD_GATEWAY)
            }
        }
    }

    /// Turns a proxy outcome into the response, logging and counting a
    /// failure.
    fn proxied(
        &self,
        result: Result<Response<EdgeBody>, proxy::ProxyError>,
        site: &str,
        request_id: &RequestId,
    ) -> Response<EdgeBody> {
        let request_id = request_id.as_str();
        match result {
            Ok(response) => response,
            Err(e @ (proxy::ProxyError::DotSegments | proxy::ProxyError::BodyTooLarge)) => {
                tracing::debug!(site, request_id, error = %e, "request refused");
                proxy::error_page(e.status())
            }
            Err(e) => {
                tracing::warn!(site, request_id, error = %e, "proxy request failed");
                let label = SiteLabel {
                    site: SiteName(Arc::from(site)),
                };
                self.inner
                    .metrics
                    .upstream_errors
                    .get_or_create(&label)
                    .inc();
                proxy::error_page(e.status())
            }
        }
    }

    /// The key authorization of a pending HTTP-01 challenge at `path`.
    fn acme_answer(&self, path: &str) -> Option<Response<EdgeBody>> {
        let token = path.strip_prefix("/.well-known/acme-challenge/")?;
        let answer = self.inner.tls.get()?.http_challenge(token)?;
        let mut response = Response::new(body::full(answer));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        Some(response)
    }

    /// A plain-HTTP request to `host` (of `site`) with a certificate: the
    /// site's mode decides between a 308 to HTTPS, a 403, or serving it.
    fn plain_http_policy<B>(
        &self,
        req: &Request<B>,
        host: &str,
        site: &str,
    ) -> Option<Response<EdgeBody>> {
        let tls = self.inner.tls.get()?;
        if !tls.has_cert(host) {
            return None;
        }
        match tls.site(site).mode {
            HttpsMode::Both => None,
            HttpsMode::HttpsOnly => {
                let mut page = Response::new(body::full("this site is served over HTTPS only\n"));
                *page.status_mut() = StatusCode::FORBIDDEN;
                Some(page)
            }
            HttpsMode::Redirect => {
                let port = match tls.https_port() {
                    443 => String::new(),
                    port => format!(":{port}"),
                };
                let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                let location = format!("https://{host}{port}{target}");
                let mut page = Response::new(body::empty());
                *page.status_mut() = StatusCode::PERMANENT_REDIRECT;
                if let Ok(value) = HeaderValue::from_str(&location) {
                    page.headers_mut().insert(header::LOCATION, value);
                }
                Some(page)
            }
        }
    }

    /// Adds the site's opt-in HSTS directives to the shield's header.
    fn hsts_extras(&self, site: Option<&str>, headers: &mut http::HeaderMap) {
        let (Some(site), Some(tls)) = (site, self.inner.tls.get()) else {
            return;
        };
        let settings = tls.site(site);
        if !(settings.hsts_include_subdomains || settings.hsts_preload) {
            return;
        }
        let Some(base) = headers
            .get(header::STRICT_TRANSPORT_SECURITY)
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        let mut value = base.to_owned();
        if settings.hsts_include_subdomains && !value.contains("includeSubDomains") {
            value.push_str("; includeSubDomains");
        }
        if settings.hsts_preload && !value.contains("preload") {
            value.push_str("; preload");
        }
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, value);
        }
    }

    /// Plugs in what starts app processes. Set once, before serving.
    pub fn set_app_waker(&self, waker: Arc<dyn AppWaker>) {
        if self.inner.apps.set(waker).is_err() {
            tracing::warn!("app waker was already set; keeping the first");
        }
    }

    /// Keeps a well-formed `x-request-id` from a trusted proxy; otherwise
    /// makes a new one.
    fn request_id(&self, req: &Request<Incoming>, peer_trusted: bool) -> RequestId {
        let trusted = peer_trusted
            .then(|| req.headers().get("x-request-id"))
            .flatten()
            .and_then(RequestId::trusted);
        trusted.unwrap_or_else(|| {
            let n = self.inner.id_counter.fetch_add(1, Ordering::Relaxed);
            RequestId::generate(self.inner.id_prefix, n)
        })
    }
}

/// Bodies up to this size are inspected on the request's own thread;
/// larger ones on the blocking pool.
const INSPECT_IN_PLACE: usize = 16 * 1024;

/// The WAF's verdict on a request head and its buffered body.
fn inspect(
    shield: &Shield,
    client: &ClientIp,
    admitted: &Admitted,
    parts: &http::request::Parts,
    body: &[u8],
    site: &str,
    request_id: &str,
) -> Result<(), Refusal> {
    let headers: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect();
    let view = RequestView {
        method: parts.method.as_str(),
        target: parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
        headers: &headers,
        body,
    };
    shield.inspect(client, admitted, &view, site, request_id)
}

/// The page of an isolated site: 503, not cached, retry much later.
fn maintenance_page() -> Response<EdgeBody> {
    let mut response = Response::new(body::full(
        "<!doctype html><title>Maintenance</title>\n\
         <h1>503 Service Unavailable</h1>\n\
         <p>This site is temporarily offline for maintenance.</p>\n",
    ));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3600"));
    response
}

/// The page for a request the shield refused: the status, its reason,
/// and the back-off headers of a rate limit. It names nothing internal.
fn refusal_page(refusal: &Refusal) -> Response<EdgeBody> {
    let mut response = proxy::error_page(refusal.status());
    let headers = response.headers_mut();
    if let Refusal::RateLimited(limit) = refusal {
        for (name, value) in limit.headers() {
            headers.insert(name, value);
        }
    }
    if refusal.closes_connection() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The answer to a WAF block: 403 with the request id, nothing else, so
/// the client learns no rule and the operator can find the audit event.
fn waf_page(request_id: &str) -> Response<EdgeBody> {
    let mut response = Response::new(body::full(format!("{request_id}\n")));
    *response.status_mut() = StatusCode::FORBIDDEN;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// 405 to a CONNECT, with the methods the edge does pass on.
fn connect_refused() -> Response<EdgeBody> {
    let mut response = proxy::error_page(StatusCode::METHOD_NOT_ALLOWED);
    response.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    response
}

fn not_found() -> Response<EdgeBody> {
    let mut response = Response::new(body::full("404 Not Found\n"));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
