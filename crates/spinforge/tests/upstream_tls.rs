//! Per-site upstream TLS (issue #10, "Upstreams"): a proxy site gets its
//! own CA and client certificate for an `https://` upstream that demands
//! mutual TLS. The upstream is a real `openssl s_server` with
//! `-Verify 1 -verify_return_error` on 127.0.0.1, its certificates from a
//! private CA made here with rcgen. WebSockets reach an `https://`
//! upstream too: a tungstenite echo server behind rustls.

mod common;
mod keys_support;

use common::{assert_ok, http, stdout, Server};
use secrets::KeyKind;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const PASSPHRASE: &str = "a long enough passphrase\n";

/// A private CA that signs ECDSA P-256 leaves.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `name`, valid from `from_days` to
    /// `until_days` relative to now.
    fn issue(&self, name: &str, from_days: i64, until_days: i64) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from_days);
        params.not_after = now + time::Duration::days(until_days);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// `openssl s_server` on 127.0.0.1 that serves files from its directory
/// and ends the handshake unless the client shows a certificate from
/// `client_ca`.
struct MutualTlsUpstream {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for MutualTlsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MutualTlsUpstream {
    fn start(server_ca: &Ca, client_ca: &Ca, body: &str) -> MutualTlsUpstream {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = server_ca.issue("127.0.0.1", -1, 30);
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text);
        write("server.crt", &cert).expect("cert");
        write("server.key", &key).expect("key");
        write("client-ca.pem", &client_ca.pem).expect("client ca");
        write("hello.txt", body).expect("body");
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", "127.0.0.1:0", "-cert", "server.crt"])
            .args(["-key", "server.key", "-CAfile", "client-ca.pem"])
            .args(["-Verify", "1", "-verify_return_error", "-WWW"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let port = lines
            .by_ref()
            .take(10)
            .map_while(Result::ok)
            .find_map(|line| {
                let addr = line.strip_prefix("ACCEPT ")?;
                addr.rsplit(':').next()?.parse().ok()
            })
            .expect("s_server prints ACCEPT with its port");
        // Keep reading its output so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        MutualTlsUpstream {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

async fn create_proxy_site(server: &Server, token: &str, domain: &str, upstream: &str) {
    let response = http()
        .post(format!("{}/api/v1/sites", server.api_url()))
        .bearer_auth(token)
        .json(&serde_json::json!({ "domain": domain, "type": "proxy", "upstream": upstream }))
        .send()
        .await
        .expect("create site");
    assert_eq!(response.status(), 201);
}

/// Sends `method` to the site's upstream-TLS route; status and JSON.
async fn upstream_tls(
    server: &Server,
    token: &str,
    method: reqwest::Method,
    domain: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let url = format!("{}/api/v1/sites/{domain}/upstream-tls", server.api_url());
    let mut request = http().request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    common::status_and_json(request.send().await.expect("upstream-tls")).await
}

fn write_pem(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write pem");
    path.to_str().expect("utf-8").to_owned()
}

/// The base64 body lines of a PEM key: none may show up anywhere.
fn key_lines(key_pem: &str) -> Vec<&str> {
    key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect()
}

fn assert_no_key(what: &str, text: &str, key_pem: &str) {
    for line in key_lines(key_pem) {
        assert!(!text.contains(line), "{what} shows the client key");
    }
}

#[tokio::test]
async fn a_site_reaches_a_mutual_tls_upstream_with_its_own_ca_and_client_certificate() {
    let upstream_ca = Ca::new("upstream CA");
    let client_ca = Ca::new("client CA");
    let body = format!("mutual tls upstream {}\n", std::process::id());
    let upstream = MutualTlsUpstream::start(&upstream_ca, &client_ca, &body);
    let (client_cert, client_key) = client_ca.issue("edge.client.test", -1, 30);

    let server = Server::start();
    server.create_admin_and_login();
    let token = server.login_token().await;
    create_proxy_site(&server, &token, "tenant-a.test", &upstream.url()).await;
    create_proxy_site(&server, &token, "tenant-b.test", &upstream.url()).await;

    // No setting: the private CA is unknown, verification refuses it.
    assert_eq!(
        server.get("tenant-a.test", "/hello.txt").await.status(),
        502
    );
    assert!(
        server.log_shows("UnknownIssuer").await,
        "the log says why the upstream was refused"
    );

    // The CA only: the handshake is verified, but the upstream wants a
    // client certificate and ends it.
    let ca_only = serde_json::json!({ "upstream_ca": upstream_ca.pem });
    let (status, view) = upstream_tls(
        &server,
        &token,
        reqwest::Method::PUT,
        "tenant-a.test",
        Some(ca_only),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["ca_set"], true);
    assert!(view["client_cert"].is_null());
    assert_eq!(
        server.get("tenant-a.test", "/hello.txt").await.status(),
        502
    );

    // The CA and the client certificate, set with the CLI: 200 with the
    // upstream's body, without a restart.
    let files = tempfile::tempdir().expect("tmp");
    let ca_file = write_pem(files.path(), "ca.pem", &upstream_ca.pem);
    let cert_file = write_pem(files.path(), "client.crt", &client_cert);
    let key_file = write_pem(files.path(), "client.key", &client_key);
    let out = server.cli(
        &["certs", "upstream-tls", "tenant-a.test", "--ca", &ca_file],
        None,
    );
    assert_ok(&out);
    let out = server.cli(
        &[
            "certs",
            "upstream-tls",
            "tenant-a.test",
            "--ca",
            &ca_file,
            "--client-cert",
            &cert_file,
            "--client-key",
            &key_file,
        ],
        None,
    );
    assert_ok(&out);
    let said = stdout(&out);
    assert!(said.contains("CN=edge.client.test"), "{said}");
    assert_no_key("the CLI", &said, &client_key);
    let response = server.get("tenant-a.test", "/hello.txt").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), body);

    // Another site on the same upstream, trusting the same CA, does not
    // get tenant a's certificate: its handshake verifies, and the
    // upstream then ends it for want of a client certificate.
    let (status, view) = upstream_tls(
        &server,
        &token,
        reqwest::Method::PUT,
        "tenant-b.test",
        Some(serde_json::json!({ "upstream_ca": upstream_ca.pem })),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        server.get("tenant-b.test", "/hello.txt").await.status(),
        502
    );

    // GET and the CLI show facts about the certificate, never the key.
    let (status, view) =
        upstream_tls(&server, &token, reqwest::Method::GET, "tenant-a.test", None).await;
    assert_eq!(status, 200);
    assert_eq!(view["ca_set"], true);
    assert_eq!(view["client_cert"]["subject"], "CN=edge.client.test");
    assert_eq!(view["client_cert"]["issuer"], "CN=client CA");
    assert!(view["client_cert"]["not_after"].as_str().is_some());
    assert_no_key("GET", &view.to_string(), &client_key);
    let out = server.cli(&["certs", "upstream-tls", "tenant-a.test", "--json"], None);
    assert_ok(&out);
    assert_no_key("the CLI's JSON", &stdout(&out), &client_key);

    // The key is stored sealed, bound to the site, and opens to itself.
    let opened = keys_support::open_stored(
        &server.data_dir,
        KeyKind::UpstreamClientKey,
        "tenant-a.test",
    )
    .await;
    assert_eq!(opened, client_key.as_bytes());

    // The setting survives a restart.
    let server = server.restart();
    let response = server.get("tenant-a.test", "/hello.txt").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), body);
    assert_eq!(
        server.get("tenant-b.test", "/hello.txt").await.status(),
        502
    );

    // ... and a backup and restore.
    let work = tempfile::tempdir().expect("work");
    let file = work.path().join("backup.tar.gz");
    let data = server.data_dir.to_str().expect("utf-8").to_owned();
    let out = server.cli(
        &[
            "backup",
            "--data-dir",
            &data,
            "--out",
            file.to_str().expect("utf-8"),
            "--passphrase-stdin",
        ],
        Some(PASSPHRASE),
    );
    assert_ok(&out);
    let root = std::sync::Arc::new(tempfile::tempdir().expect("restore root"));
    let target = root.path().join("data");
    let out = server.cli(
        &[
            "restore",
            file.to_str().expect("utf-8"),
            "--data-dir",
            target.to_str().expect("utf-8"),
            "--passphrase-stdin",
        ],
        Some(PASSPHRASE),
    );
    assert_ok(&out);

    // Clearing sends the site back to the global configuration (none
    // here): the private CA is unknown again.
    let token = server.login_token().await;
    let (status, view) = upstream_tls(
        &server,
        &token,
        reqwest::Method::DELETE,
        "tenant-a.test",
        None,
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        server.get("tenant-a.test", "/hello.txt").await.status(),
        502
    );
    assert!(server.log_shows("upstream TLS setting cleared").await);
    assert_no_key("the log", &server.log(), &client_key);
    drop(server);

    let restored = Server::start_at(root);
    let response = restored.get("tenant-a.test", "/hello.txt").await;
    assert_eq!(
        response.status(),
        200,
        "the restored store keeps the setting"
    );
    assert_eq!(response.text().await.expect("body"), body);
    assert_no_key("the restored server's log", &restored.log(), &client_key);

    // Deleting the site takes its setting out of the edge too: a new site
    // of the same name (maybe another customer's) on the same upstream
    // does not present tenant a's certificate or trust its CA.
    let token = restored.login_token().await;
    let response = http()
        .delete(format!("{}/api/v1/sites/tenant-a.test", restored.api_url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("delete site");
    assert!(response.status().is_success(), "{}", response.status());
    create_proxy_site(&restored, &token, "tenant-a.test", &upstream.url()).await;
    assert_eq!(
        restored.get("tenant-a.test", "/hello.txt").await.status(),
        502
    );
}

#[tokio::test]
async fn bad_upstream_tls_input_gets_a_clear_error_and_changes_nothing() {
    let ca = Ca::new("some CA");
    let (cert, key) = ca.issue("client.test", -1, 30);
    let (_, other_key) = ca.issue("other.test", -1, 30);
    let (expired_cert, expired_key) = ca.issue("old.test", -30, -1);

    let server = Server::start();
    server.create_admin_and_login();
    let token = server.login_token().await;
    create_proxy_site(&server, &token, "bad-input.test", "https://127.0.0.1:9").await;
    let good = serde_json::json!({ "upstream_ca": ca.pem });
    let (status, _) = upstream_tls(
        &server,
        &token,
        reqwest::Method::PUT,
        "bad-input.test",
        Some(good),
    )
    .await;
    assert_eq!(status, 200);

    let cases = [
        (
            serde_json::json!({ "upstream_ca": "not a certificate" }),
            "upstream_ca",
        ),
        (
            serde_json::json!({ "upstream_client_cert": "garbage", "upstream_client_key": key }),
            "upstream_client_cert",
        ),
        (
            serde_json::json!({ "upstream_client_cert": cert, "upstream_client_key": other_key }),
            "upstream_client_key",
        ),
        (
            serde_json::json!({ "upstream_client_cert": cert }),
            "upstream_client_key",
        ),
        (
            serde_json::json!({
                "upstream_client_cert": expired_cert, "upstream_client_key": expired_key
            }),
            "upstream_client_cert",
        ),
        // A combined certificate-and-key file would store the key in the
        // clear: refused, in either certificate field.
        (
            serde_json::json!({
                "upstream_client_cert": format!("{cert}{key}"), "upstream_client_key": key
            }),
            "upstream_client_cert",
        ),
        (
            serde_json::json!({ "upstream_ca": format!("{}{key}", ca.pem) }),
            "upstream_ca",
        ),
    ];
    for (body, field) in cases {
        let (status, error) = upstream_tls(
            &server,
            &token,
            reqwest::Method::PUT,
            "bad-input.test",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["field"], field, "{error}");
        assert_no_key("an error", &error.to_string(), &key);
        assert_no_key("an error", &error.to_string(), &other_key);
    }
    let (_, error) = upstream_tls(
        &server,
        &token,
        reqwest::Method::PUT,
        "bad-input.test",
        Some(serde_json::json!({ "upstream_client_cert": cert, "upstream_client_key": other_key })),
    )
    .await;
    assert_eq!(
        error["error"]["message"],
        "upstream_client_key: must be the private key of upstream_client_cert"
    );
    let (_, error) = upstream_tls(
        &server,
        &token,
        reqwest::Method::PUT,
        "bad-input.test",
        Some(serde_json::json!({
            "upstream_client_cert": expired_cert, "upstream_client_key": expired_key
        })),
    )
    .await;
    let message = error["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("upstream_client_cert: the certificate expired on "),
        "{message}"
    );

    // Nothing changed: still the CA only.
    let (status, view) = upstream_tls(
        &server,
        &token,
        reqwest::Method::GET,
        "bad-input.test",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(view["ca_set"], true);
    assert!(view["client_cert"].is_null(), "{view}");
    assert!(server.log_shows("upstream TLS setting refused").await);
    assert_no_key("the log", &server.log(), &other_key);
    assert_no_key("the log", &server.log(), &expired_key);

    // A static site has no upstream: refused, naming the domain.
    let response = http()
        .post(format!("{}/api/v1/sites", server.api_url()))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "domain": "files.test" }))
        .send()
        .await
        .expect("create static site");
    assert_eq!(response.status(), 201);
    let good = serde_json::json!({ "upstream_ca": ca.pem });
    let (status, error) = upstream_tls(
        &server,
        &token,
        reqwest::Method::PUT,
        "files.test",
        Some(good),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["field"], "domain");

    // A deleted site's setting goes with it: a later site of the same
    // name (maybe another customer's) starts without it.
    let full = serde_json::json!({
        "upstream_ca": ca.pem, "upstream_client_cert": cert, "upstream_client_key": key
    });
    let (status, _) = upstream_tls(
        &server,
        &token,
        reqwest::Method::PUT,
        "bad-input.test",
        Some(full),
    )
    .await;
    assert_eq!(status, 200);
    let response = http()
        .delete(format!("{}/api/v1/sites/bad-input.test", server.api_url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("delete site");
    assert!(response.status().is_success(), "{}", response.status());
    create_proxy_site(&server, &token, "bad-input.test", "https://127.0.0.1:9").await;
    let (status, view) = upstream_tls(
        &server,
        &token,
        reqwest::Method::GET,
        "bad-input.test",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(view["ca_set"], false, "{view}");
    assert!(view["client_cert"].is_null(), "{view}");
}

/// A WebSocket echo server behind TLS on 127.0.0.1, with a certificate for
/// 127.0.0.1 from `ca`. Returns its port.
async fn spawn_tls_websocket_echo(ca: &Ca) -> u16 {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let (cert, key) = ca.issue("127.0.0.1", -1, 30);
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate");
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                if let Ok(ws) = tokio_tungstenite::accept_async(tls).await {
                    common::echo_messages(ws).await;
                }
            });
        }
    });
    port
}

/// The edge's answer to a WebSocket handshake for `url`, and the socket
/// when it upgraded.
async fn websocket_through_edge(
    server: &Server,
    url: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = url.into_client_request().expect("request");
    let stream = tokio::net::TcpStream::connect(server.edge)
        .await
        .expect("connect edge");
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .expect("handshake in time")
    .map(|(ws, response)| {
        assert_eq!(response.status(), 101);
        ws
    })
}

#[tokio::test]
async fn websockets_reach_an_https_upstream_verified_with_the_site_ca() {
    use tokio_tungstenite::tungstenite::{Error, Message};

    let ca = Ca::new("websocket upstream CA");
    let port = spawn_tls_websocket_echo(&ca).await;
    let server = Server::start();
    server.create_admin_and_login();
    let token = server.login_token().await;
    create_proxy_site(
        &server,
        &token,
        "wss.test",
        &format!("https://127.0.0.1:{port}"),
    )
    .await;

    // The private CA is unknown: the upgrade is refused with 502, and the
    // log says why.
    match websocket_through_edge(&server, "ws://wss.test/chat").await {
        Err(Error::Http(response)) => assert_eq!(response.status(), 502),
        Err(other) => panic!("expected a 502 answer, got {other}"),
        Ok(_) => panic!("an unverified upstream was reached"),
    }
    assert!(
        server.log_shows("UnknownIssuer").await,
        "the log says why the upstream was refused"
    );

    // With the site's CA the handshake verifies, and messages echo.
    let (status, view) = upstream_tls(
        &server,
        &token,
        reqwest::Method::PUT,
        "wss.test",
        Some(serde_json::json!({ "upstream_ca": ca.pem })),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    let mut ws = websocket_through_edge(&server, "ws://wss.test/chat")
        .await
        .expect("upgraded");
    let messages = [
        Message::text("hello over TLS to the upstream"),
        Message::binary(vec![7u8; 70_000]),
    ];
    common::echo_then_close(&mut ws, &messages, Duration::from_secs(10)).await;
}

/// The `site.upstream_tls_expiring` events for `domain` in the audit log.
async fn expiry_events(server: &Server, token: &str, domain: &str) -> Vec<serde_json::Value> {
    let url = format!(
        "{}/api/v1/audit?type=site.upstream_tls_expiring&resource=site:{domain}",
        server.api_url()
    );
    let response = http()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("audit");
    let (status, body) = common::status_and_json(response).await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

/// Polls until `domain` has at least `n` expiry events (the audit writer
/// makes an event durable a moment after it happens).
async fn wait_for_expiry_events(
    server: &Server,
    token: &str,
    domain: &str,
    n: usize,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = expiry_events(server, token, domain).await;
        if events.len() >= n {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} expiry events for {domain}: {events:?}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_client_certificate_near_its_end_is_audited_when_set_and_at_start() {
    let ca = Ca::new("client CA");
    let (soon_cert, soon_key) = ca.issue("soon.client.test", -1, 5);
    let (later_cert, later_key) = ca.issue("later.client.test", -1, 90);
    let server = Server::start();
    server.create_admin_and_login();
    let token = server.login_token().await;
    // The upstream is never reached: only the setting matters here.
    for domain in ["soon.test", "later.test"] {
        create_proxy_site(&server, &token, domain, "https://127.0.0.1:9").await;
    }
    for (domain, cert, key) in [
        ("soon.test", &soon_cert, &soon_key),
        ("later.test", &later_cert, &later_key),
    ] {
        let body = serde_json::json!({
            "upstream_ca": ca.pem,
            "upstream_client_cert": cert,
            "upstream_client_key": key,
        });
        let (status, view) =
            upstream_tls(&server, &token, reqwest::Method::PUT, domain, Some(body)).await;
        assert_eq!(status, 200, "{view}");
    }

    // Setting a certificate that ends in 5 days is audited at once.
    let events = wait_for_expiry_events(&server, &token, "soon.test", 1).await;
    let event = &events[0];
    assert_eq!(event["result"], "failure", "{event}");
    assert_eq!(
        event["metadata"]["subject"], "CN=soon.client.test",
        "{event}"
    );
    // Five days from the issue, less the seconds since then.
    let days_left = event["metadata"]["days_left"].as_i64();
    assert!(matches!(days_left, Some(4 | 5)), "{event}");
    assert_no_key("the audit event", &event.to_string(), &soon_key);

    // A restart checks every stored setting again.
    let server = server.restart();
    let token = server.login_token().await;
    wait_for_expiry_events(&server, &token, "soon.test", 2).await;
    // One with 90 days left is not warned about, then or now. The check
    // at start goes through the sites by domain, later.test before
    // soon.test, and the audit log keeps their order: an event for it
    // would be stored by now.
    assert!(expiry_events(&server, &token, "later.test")
        .await
        .is_empty());
}

#[tokio::test]
async fn the_configured_client_certificate_near_its_end_is_audited_at_start() {
    let ca = Ca::new("client CA");
    let (cert, key) = ca.issue("global.client.test", -1, 3);
    let files = tempfile::tempdir().expect("tmp");
    let cert_file = write_pem(files.path(), "client.crt", &cert);
    let key_file = write_pem(files.path(), "client.key", &key);
    let server = Server::start_with(&format!(
        "[proxy]\nupstream_client_cert = {cert_file:?}\nupstream_client_key = {key_file:?}\n"
    ));
    server.create_admin_and_login();
    let token = server.login_token().await;

    let url = format!(
        "{}/api/v1/audit?type=proxy.upstream_tls_expiring",
        server.api_url()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let event = loop {
        let response = http()
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("audit");
        let (status, body) = common::status_and_json(response).await;
        assert_eq!(status, 200, "{body}");
        if let Some(event) = body["events"].as_array().and_then(|e| e.first()) {
            break event.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no expiry event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(event["result"], "failure", "{event}");
    assert_eq!(
        event["resource"], "config:proxy.upstream_client_cert",
        "{event}"
    );
    assert_eq!(
        event["metadata"]["subject"], "CN=global.client.test",
        "{event}"
    );
    assert_no_key("the audit event", &event.to_string(), &key);
}
