//! The one HTTP client every provider call goes through.
//!
//! reqwest with rustls; it follows no redirects (a redirect at a provider
//! must not send our code or client secret somewhere else, nor turn into
//! SSRF), times out, and reads at most [`MAX_BODY`] bytes of a response.
//! It plugs into `openidconnect`/`oauth2` through their async client trait.

use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The largest response body read from a provider (bytes).
pub(super) const MAX_BODY: usize = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a provider request failed. Names the URL without its query.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("request to {url} failed: {reason}")]
    Send { url: String, reason: String },
    #[error("response from {url} is larger than {MAX_BODY} bytes")]
    TooLarge { url: String },
}

#[derive(Clone)]
pub(super) struct ProviderHttp {
    client: reqwest::Client,
}

impl ProviderHttp {
    pub(super) fn new() -> Result<ProviderHttp, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("SpinForge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ProviderHttp { client })
    }

    /// Sends `request` and reads the whole (capped) response.
    pub(super) async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let shown = shown_url(&parts.uri);
        let failed = |e: reqwest::Error| HttpError::Send {
            url: shown.clone(),
            reason: error_chain(&e.without_url()),
        };

        let mut response = self
            .client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(failed)?;
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(HttpError::TooLarge { url: shown });
        }
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(HttpError::TooLarge { url: shown });
            }
            bytes.extend_from_slice(&chunk);
        }

        let mut out = http::Response::new(bytes);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

impl<'c> AsyncHttpClient<'c> for ProviderHttp {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

/// The URL without its query, which could one day carry something secret.
fn shown_url(uri: &http::Uri) -> String {
    let mut shown = String::new();
    if let Some(scheme) = uri.scheme_str() {
        shown.push_str(scheme);
        shown.push_str("://");
    }
    if let Some(authority) = uri.authority() {
        shown.push_str(authority.as_str());
    }
    shown.push_str(uri.path());
    shown
}

/// An error and its sources on one line.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
