//! Fail-closed API requests. [`Audited`] wraps the API service: it
//! refuses requests with 503 while the log cannot be written, gives each
//! request an id, and makes the request's audit events (from [`crate::AuditLayer`])
//! wait for their commit; if one is not committed, the answer becomes a
//! 503 as well. `/healthz` and `/metrics` are never refused.

use crate::event::AuditEvent;
use crate::Auditor;
use http::{header, HeaderValue, Request, Response, StatusCode};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::oneshot;

type Ack = oneshot::Receiver<Result<(), String>>;

tokio::task_local! {
    static SCOPE: Arc<RequestScope>;
}

/// What an API request contributes to the audit events it causes.
pub struct RequestScope {
    pub request_id: String,
    pub client_ip: IpAddr,
    pub user_agent: Option<String>,
    /// The authenticated caller, once the API has checked its credential.
    caller: Mutex<Option<ScopeCaller>>,
    /// The tenant owning the resource the request acts on, once loaded.
    resource_customer: Mutex<Option<String>>,
    acks: Mutex<Vec<Ack>>,
}

/// The authenticated caller of a request: who acted, in which role, with
/// which API key (its id, never the key), on behalf of which customer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeCaller {
    pub user_id: i64,
    pub role: String,
    pub api_key_id: Option<String>,
    /// `None` for platform admins, whose events name the customer of the
    /// resource they act on themselves.
    pub customer: Option<String>,
}

impl RequestScope {
    /// Fills what the event left empty.
    pub(crate) fn fill(&self, event: &mut AuditEvent) {
        event
            .request_id
            .get_or_insert_with(|| self.request_id.clone());
        event.client_ip.get_or_insert(self.client_ip);
        if event.user_agent.is_none() {
            event.user_agent.clone_from(&self.user_agent);
        }
        if event.customer.is_none() {
            event.customer.clone_from(
                &self
                    .resource_customer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
        }
        let caller = self.caller.lock().unwrap_or_else(|p| p.into_inner());
        let Some(caller) = caller.as_ref() else {
            return;
        };
        // Role and key describe the caller, so they are filled only when
        // the event's actor is the caller (or unnamed).
        if event.actor.user_id.is_none_or(|id| id == caller.user_id) {
            event.actor.user_id = Some(caller.user_id);
            event.actor.role.get_or_insert_with(|| caller.role.clone());
            if event.actor.api_key_id.is_none() {
                event.actor.api_key_id.clone_from(&caller.api_key_id);
            }
        }
        // A tenant's caller only ever acts within its own tenant.
        if event.customer.is_none() {
            event.customer.clone_from(&caller.customer);
        }
    }

    /// Records the tenant owning the resource the request acts on; later
    /// audit events of the request that name no customer get it.
    pub fn set_resource_customer(&self, customer: String) {
        *self
            .resource_customer
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(customer);
    }

    /// Records the authenticated caller; every later audit event of this
    /// request gets its role, API key id and customer where it names none.
    pub fn set_caller(&self, caller: ScopeCaller) {
        *self.caller.lock().unwrap_or_else(|p| p.into_inner()) = Some(caller);
    }

    pub(crate) fn wait_for(&self, ack: Ack) {
        self.acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ack);
    }
}

/// The scope of the request being handled on this task, if any.
pub fn current() -> Option<Arc<RequestScope>> {
    SCOPE.try_with(Arc::clone).ok()
}

/// The API service, audited. Make one per connection with the peer's IP.
#[derive(Clone)]
pub struct Audited<S> {
    inner: S,
    auditor: Auditor,
    peer: IpAddr,
}

impl<S> Audited<S> {
    pub fn new(inner: S, auditor: Auditor, peer: IpAddr) -> Audited<S> {
        Audited {
            inner,
            auditor,
            peer,
        }
    }
}

impl<S, B, R> tower_service::Service<Request<B>> for Audited<S>
where
    S: tower_service::Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: From<String> + Send + 'static,
    B: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.uri().path();
        if path == "/healthz" || path == "/metrics" {
            return Box::pin(self.inner.call(req));
        }
        let request_id = uuid::Uuid::now_v7().simple().to_string();
        if !self.auditor.writable() {
            tracing::error!(target: "spinforge::alarm", alarm = "audit", path = %path,
                request_id = %request_id, "request refused: the audit log cannot be written");
            return Box::pin(std::future::ready(Ok(unavailable(&request_id))));
        }
        let scope = Arc::new(RequestScope {
            request_id,
            client_ip: self.peer,
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            caller: Mutex::new(None),
            resource_customer: Mutex::new(None),
            acks: Mutex::new(Vec::new()),
        });
        // The clone is the one that was polled ready (tower's idiom).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let timeout = self.auditor.record_timeout();
        Box::pin(async move {
            let future = SCOPE.scope(scope.clone(), async move { inner.call(req).await });
            let mut response = future.await?;
            let acks = std::mem::take(&mut *scope.acks.lock().unwrap_or_else(|p| p.into_inner()));
            for ack in acks {
                let committed = matches!(tokio::time::timeout(timeout, ack).await, Ok(Ok(Ok(()))));
                if !committed {
                    tracing::error!(target: "spinforge::alarm", alarm = "audit",
                        request_id = %scope.request_id,
                        "answer replaced by 503: its audit event was not stored");
                    return Ok(unavailable(&scope.request_id));
                }
            }
            if let Ok(value) = HeaderValue::from_str(&scope.request_id) {
                response.headers_mut().insert("x-request-id", value);
            }
            Ok(response)
        })
    }
}

/// The API's error shape for a refusal because of the audit log.
fn unavailable<R: From<String>>(request_id: &str) -> Response<R> {
    let body = serde_json::json!({
        "error": {
            "code": "audit_unavailable",
            "message": "the audit log cannot be written; the request was refused",
        }
    })
    .to_string();
    let mut response = Response::new(R::from(body));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", value);
    }
    response
}
