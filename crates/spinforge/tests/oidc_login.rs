//! Single sign-on end to end: the real `spinforge serve`, configured with a
//! `[[identity.oidc]]` provider, against a real OpenID provider on loopback
//! (PyPI `oidc-provider-mock`, run with the python of [`oidc_support`],
//! which says when the tests skip).
//!
//! The browser is reqwest with no automatic redirects: each redirect is
//! followed by hand, and cookies are carried by hand. The provider's user
//! claims (`email`, `email_verified`) are set with its `PUT /users/{sub}`;
//! its login form takes the `sub`.
//!
//! The configured redirect URL is the public one a reverse proxy would
//! serve (`PUBLIC`); the test plays that proxy and sends the callback's
//! path and query to the server's real API address, which is only known
//! once the server has started.

mod common;
// The identity crate's venv helper, shared rather than copied.
#[path = "../../identity/tests/oidc_python/mod.rs"]
mod oidc_support;

use common::{http, status_and_json, Server, ADMIN_EMAIL};
use reqwest::header;
use reqwest::Url;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const PUBLIC: &str = "http://127.0.0.1:9";
const CLIENT_SECRET: &str = "sso-test-secret-4b1d";

/// A running provider on 127.0.0.1; killed when dropped.
struct Provider {
    _child: tokio::process::Child,
    port: u16,
}

impl Provider {
    async fn start(python: &Path) -> Provider {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = tokio::process::Command::new(python)
            .args(["-m", "oidc_provider_mock", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start oidc-provider-mock");
        let provider = Provider {
            _child: child,
            port,
        };
        let ready = format!("{}/.well-known/openid-configuration", provider.issuer());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http().get(&ready).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "{ready} not ready after 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        provider
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn set_user(&self, sub: &str, claims: Value) {
        let status = http()
            .put(format!("{}/users/{sub}", self.issuer()))
            .json(&claims)
            .send()
            .await
            .expect("PUT /users")
            .status();
        assert_eq!(status, 204, "setting claims of {sub}");
    }
}

/// The provider, and the server configured for it with the client secret
/// in a file (as operators should) and `example.com` as the only domain.
async fn setup() -> Option<(Provider, Server)> {
    let python = oidc_support::python()?;
    let provider = Provider::start(&python).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("corp-secret");
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).expect("write secret");
    let config = format!(
        "{}\n[[identity.oidc]]\nname = \"corp\"\nkind = \"oidc\"\nissuer_url = \"{}\"\n\
         client_id = \"spinforge\"\nclient_secret_file = {:?}\n\
         redirect_url = \"{PUBLIC}/api/v1/auth/oidc/corp/callback\"\n\
         allowed_email_domains = [\"example.com\"]\n",
        common::LOOPBACK_UPSTREAMS,
        provider.issuer(),
        secret_file.to_str().expect("utf-8"),
    );
    let server = Server::start_with(&config);
    // The secret file is read at start; it may go now.
    drop(dir);
    assert!(
        server.log_shows("single sign-on provider ready").await,
        "provider not discovered:\n{}",
        server.log()
    );
    assert!(
        !server.log().contains(CLIENT_SECRET),
        "client secret in the log"
    );
    Some((provider, server))
}

fn query(url: &Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .expect("Location")
        .to_owned()
}

/// `name=value` of the Set-Cookie for `name`.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<(String, String)> {
    r.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let pair = v.split(';').next().expect("pair").to_owned();
            (pair, v.to_owned())
        })
}

/// Logs in as `sub` at the provider's form; returns where it sends the
/// browser back to.
async fn approve_at_provider(authorize: &str, sub: &str) -> Url {
    let page = http().get(authorize).send().await.expect("GET authorize");
    assert_eq!(page.status(), 200, "the provider shows its login form");
    assert!(page.text().await.expect("form").contains("name=\"sub\""));
    let answer = http()
        .post(authorize)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("sub={sub}"))
        .send()
        .await
        .expect("POST authorize");
    assert_eq!(answer.status(), 302, "the provider redirects back");
    let back = Url::parse(&location(&answer)).expect("callback URL");
    assert!(
        back.as_str()
            .starts_with(&format!("{PUBLIC}/api/v1/auth/oidc/corp/callback?")),
        "{back}"
    );
    back
}

/// A browser login up to the provider's redirect back: the callback (on
/// the real API address) and the state cookie `start` set.
struct BrowserLogin {
    callback: String,
    state_cookie: String,
}

async fn browser_login(server: &Server, sub: &str) -> BrowserLogin {
    let start = http()
        .get(format!("{}/api/v1/auth/oidc/corp/start", server.api_url()))
        .send()
        .await
        .expect("start");
    assert_eq!(start.status(), 302);
    let (state_cookie, full) = set_cookie(&start, "sf_oidc_state").expect("state cookie");
    assert!(
        full.contains("HttpOnly") && full.contains("SameSite=Lax"),
        "{full}"
    );
    let authorize = location(&start);
    let url = Url::parse(&authorize).expect("authorize URL");
    assert!(authorize.starts_with(&http_issuer(&url)));
    assert_eq!(
        format!("sf_oidc_state={}", query(&url)["state"]),
        state_cookie
    );
    assert!(!authorize.contains(CLIENT_SECRET));
    let back = approve_at_provider(&authorize, sub).await;
    BrowserLogin {
        callback: format!(
            "{}{}?{}",
            server.api_url(),
            back.path(),
            back.query().unwrap_or("")
        ),
        state_cookie,
    }
}

fn http_issuer(url: &Url) -> String {
    format!("http://127.0.0.1:{}", url.port().expect("port"))
}

async fn finish(login: &BrowserLogin) -> reqwest::Response {
    http()
        .get(&login.callback)
        .header(header::COOKIE, &login.state_cookie)
        .send()
        .await
        .expect("callback")
}

async fn create_user(server: &Server, admin: &str, email: &str) {
    let r = http()
        .post(format!("{}/api/v1/users", server.api_url()))
        .bearer_auth(admin)
        .json(&json!({ "email": email, "password": "sso users need one too 81", "role": "developer", "customer": "acme" }))
        .send()
        .await
        .expect("create user");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
}

async fn refused(r: reqwest::Response, status: u16, needle: &str) {
    let (got, body) = status_and_json(r).await;
    assert_eq!(got, status, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

#[tokio::test]
async fn browser_login_links_only_known_verified_allowed_emails() {
    let Some((provider, server)) = setup().await else {
        return;
    };
    let admin = server.admin_token().await;
    create_user(&server, &admin, "dev@other.test").await;
    create_user(&server, &admin, "gone@example.com").await;

    // A known, verified email: session cookie, redirect to `/`, whoami.
    provider
        .set_user(
            "alice",
            json!({ "email": "Admin@Example.com", "email_verified": true }),
        )
        .await;
    let login = browser_login(&server, "alice").await;
    let done = finish(&login).await;
    assert_eq!(done.status(), 303);
    assert_eq!(location(&done), "/");
    let (session, full) = set_cookie(&done, "sf_session").expect("session cookie");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(full.contains(flag), "{full} lacks {flag}");
    }
    let (cleared, _) = set_cookie(&done, "sf_oidc_state").expect("state cookie cleared");
    assert_eq!(cleared, "sf_oidc_state=");
    let (status, me) = status_and_json(
        http()
            .get(format!("{}/api/v1/whoami", server.api_url()))
            .header(header::COOKIE, &session)
            .send()
            .await
            .expect("whoami"),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"]["email"], ADMIN_EMAIL);
    assert_eq!(me["method"], "cookie");
    assert!(server.log_shows("auth.succeeded").await);
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("auth.succeeded") && l.contains("sso"))
        .expect("sso success audit line");
    assert!(
        line.contains("corp") && line.contains("127.0.0.1"),
        "{line}"
    );

    // The same callback again: its state is spent.
    refused(finish(&login).await, 400, "already used").await;

    // An email no account has.
    provider
        .set_user(
            "bob",
            json!({ "email": "nobody@example.com", "email_verified": true }),
        )
        .await;
    let login = browser_login(&server, "bob").await;
    refused(finish(&login).await, 403, "no account has the email").await;

    // An email the provider does not vouch for.
    provider
        .set_user(
            "mallory",
            json!({ "email": ADMIN_EMAIL, "email_verified": false }),
        )
        .await;
    let login = browser_login(&server, "mallory").await;
    refused(finish(&login).await, 403, "not verified").await;

    // An existing account, but outside the allowed domains.
    provider
        .set_user(
            "dev",
            json!({ "email": "dev@other.test", "email_verified": true }),
        )
        .await;
    let login = browser_login(&server, "dev").await;
    refused(
        finish(&login).await,
        403,
        "domain other.test is not allowed",
    )
    .await;

    // A disabled account.
    let users: Value = http()
        .get(format!("{}/api/v1/users", server.api_url()))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("users")
        .json()
        .await
        .expect("json");
    let gone = users
        .as_array()
        .expect("list")
        .iter()
        .find(|u| u["email"] == "gone@example.com")
        .expect("gone@example.com")["id"]
        .clone();
    let r = http()
        .patch(format!("{}/api/v1/users/{gone}", server.api_url()))
        .bearer_auth(&admin)
        .json(&json!({ "disabled": true }))
        .send()
        .await
        .expect("disable");
    assert_eq!(r.status(), 200);
    provider
        .set_user(
            "gone",
            json!({ "email": "gone@example.com", "email_verified": true }),
        )
        .await;
    let login = browser_login(&server, "gone").await;
    refused(finish(&login).await, 403, "disabled").await;

    // A callback brought to a browser that did not start the login
    // (login CSRF): refused, and the state is spent all the same.
    provider
        .set_user(
            "alice",
            json!({ "email": ADMIN_EMAIL, "email_verified": true }),
        )
        .await;
    let login = browser_login(&server, "alice").await;
    let foreign = http().get(&login.callback).send().await.expect("callback");
    refused(foreign, 403, "browser that started it").await;
    refused(finish(&login).await, 400, "already used").await;

    let log = server.log();
    let failures = log
        .lines()
        .filter(|l| l.contains("auth.failed") && l.contains("sso"))
        .count();
    assert_eq!(failures, 7, "one auth.failed per refusal:\n{log}");
    assert!(!log.contains(CLIENT_SECRET));
}

#[tokio::test]
async fn cli_login_polls_once_for_a_token_pair() {
    let Some((provider, server)) = setup().await else {
        return;
    };
    server.admin_token().await;
    provider
        .set_user(
            "alice",
            json!({ "email": ADMIN_EMAIL, "email_verified": true }),
        )
        .await;

    let (status, start) = status_and_json(
        http()
            .get(format!(
                "{}/api/v1/auth/oidc/corp/start?format=json",
                server.api_url()
            ))
            .send()
            .await
            .expect("start"),
    )
    .await;
    assert_eq!(status, 200, "{start}");
    let login_id = start["login_id"].as_str().expect("login_id");
    assert!(login_id.len() >= 43, "256-bit id");
    let poll_url = format!(
        "{}{}",
        server.api_url(),
        start["poll_url"].as_str().expect("poll")
    );
    assert!(poll_url.ends_with(login_id));
    let poll =
        || async { status_and_json(http().get(&poll_url).send().await.expect("poll")).await };

    let (status, waiting) = poll().await;
    assert_eq!((status, waiting["status"].as_str()), (202, Some("pending")));

    // The user opens the link in any browser: no state cookie involved.
    let back = approve_at_provider(start["authorize_url"].as_str().expect("url"), "alice").await;
    let callback = format!(
        "{}{}?{}",
        server.api_url(),
        back.path(),
        back.query().unwrap_or("")
    );
    let (status, done) =
        status_and_json(http().get(&callback).send().await.expect("callback")).await;
    assert_eq!(
        (status, done["status"].as_str()),
        (200, Some("ok")),
        "{done}"
    );

    let (status, pair) = poll().await;
    assert_eq!(status, 200, "{pair}");
    let access = pair["access_token"].as_str().expect("access token");
    assert!(pair["refresh_token"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    let (status, me) = status_and_json(
        http()
            .get(format!("{}/api/v1/whoami", server.api_url()))
            .bearer_auth(access)
            .send()
            .await
            .expect("whoami"),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"]["email"], ADMIN_EMAIL);

    // Single use: the pair is handed out once.
    let (status, _) = poll().await;
    assert_eq!(status, 404);
    // An id nobody was given.
    let (status, _) = status_and_json(
        http()
            .get(format!(
                "{}/api/v1/auth/oidc/poll/{}",
                server.api_url(),
                "A".repeat(43)
            ))
            .send()
            .await
            .expect("poll"),
    )
    .await;
    assert_eq!(status, 404);

    // A refused CLI login is reported to the poller, once.
    provider
        .set_user(
            "bob",
            json!({ "email": "nobody@example.com", "email_verified": true }),
        )
        .await;
    let (_, start) = status_and_json(
        http()
            .get(format!(
                "{}/api/v1/auth/oidc/corp/start?format=json",
                server.api_url()
            ))
            .send()
            .await
            .expect("start"),
    )
    .await;
    let back = approve_at_provider(start["authorize_url"].as_str().expect("url"), "bob").await;
    let callback = format!(
        "{}{}?{}",
        server.api_url(),
        back.path(),
        back.query().unwrap_or("")
    );
    refused(
        http().get(&callback).send().await.expect("callback"),
        403,
        "no account",
    )
    .await;
    let poll_url = format!(
        "{}{}",
        server.api_url(),
        start["poll_url"].as_str().expect("poll")
    );
    refused(
        http().get(&poll_url).send().await.expect("poll"),
        403,
        "no account",
    )
    .await;
    let (status, _) = status_and_json(http().get(&poll_url).send().await.expect("poll")).await;
    assert_eq!(status, 404);

    // An unknown provider and a bad format are clear errors.
    let r = http()
        .get(format!("{}/api/v1/auth/oidc/nope/start", server.api_url()))
        .send()
        .await
        .expect("start");
    assert_eq!(r.status(), 404);
    let (status, body) = status_and_json(
        http()
            .get(format!(
                "{}/api/v1/auth/oidc/corp/start?format=xml",
                server.api_url()
            ))
            .send()
            .await
            .expect("start"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("format"))
    );
}

#[tokio::test]
async fn cli_login_with_sso_prints_a_link_and_stores_the_session() {
    use tokio::io::AsyncBufReadExt;
    let Some((provider, server)) = setup().await else {
        return;
    };
    server.admin_token().await;
    provider
        .set_user(
            "alice",
            json!({ "email": ADMIN_EMAIL, "email_verified": true }),
        )
        .await;
    // A fresh config home: the login below is the only one stored.
    let home = tempfile::tempdir().expect("tempdir");
    let mut cli = tokio::process::Command::new(common::BIN)
        .args(["login", "--sso", "corp"])
        .env("SPINFORGE_API", server.api_url())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("HOME", home.path())
        .env_remove("SPINFORGE_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spinforge login --sso");
    let mut lines = tokio::io::BufReader::new(cli.stdout.take().expect("stdout")).lines();
    let link = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the CLI prints the link in time")
        .expect("read")
        .expect("a line");
    let back = approve_at_provider(&link, "alice").await;
    let callback = format!(
        "{}{}?{}",
        server.api_url(),
        back.path(),
        back.query().unwrap_or("")
    );
    let r = http().get(&callback).send().await.expect("callback");
    assert_eq!(r.status(), 200);
    let done = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the CLI finishes in time")
        .expect("read")
        .expect("a line");
    assert_eq!(
        done,
        format!("logged in to {} as {ADMIN_EMAIL}", server.api_url())
    );
    assert!(cli.wait().await.expect("wait").success());

    let whoami = std::process::Command::new(common::BIN)
        .args(["whoami"])
        .env("SPINFORGE_API", server.api_url())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("HOME", home.path())
        .env_remove("SPINFORGE_TOKEN")
        .output()
        .expect("spinforge whoami");
    common::assert_ok(&whoami);
    assert!(common::stdout(&whoami).contains(ADMIN_EMAIL));
}
